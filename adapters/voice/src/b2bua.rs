//! The call engine: a back-to-back user agent that answers trunk calls, runs the
//! IVR, hands callers to core through [`CallRouting`], rings agents' registered
//! phones when core says so (one phone, or every ring-all offer at once as parallel
//! forks: the first to answer is bridged, the others get CANCEL), bridges and records
//! the two legs, overflows a caller who waited too long to an external number
//! through a trunk, adds a supervisor's phone as a third leg (listen-in or barge),
//! and serves the registrar. One task owns all signalling state; media runs in
//! per-leg tasks.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rsip::{Method, Request, Response};
use tokio::sync::{mpsc, oneshot, watch};

use crate::call::{CallInfo, CallOutcome, CallRouting, CallTicket, Side};
use crate::call_reports::CallReports;
use crate::config::{IvrFlowConfig, OutboundTransport, QueueVoiceConfig, TrunkConfig, VoiceConfig};
use crate::ivr::{IvrAction, IvrInput, IvrSession};
use crate::media::dtmf::parse_info_body;
use crate::media::player::{tone, PromptStore};
use crate::media_session::{bind_rtp, spawn_leg, spawn_recorder, LegId, MediaCommand, MediaEvent, MediaHandle, Recorder};
use crate::metrics::{voice_stats, VoiceStats};
use crate::registrar::{CredentialStore, InlineCredentials, Registrar, RemoteBinding};
use crate::sdp::{self, Codec, Direction, Negotiated};
use crate::sip::dialog::Dialog;
use crate::sip::message::{make_header, new_branch, random_token, response_to, to_bytes, HeaderLookup, NameAddr, SipUri};
use crate::sip::transaction::{AnswerAction, AnswerRetransmitter, LayerEvent, Peer, TransactionKey, TransactionLayer};
use crate::sip::validate::{unsupported_requirements, Essentials};
use crate::sip::Transport;
use crate::transport::{Inbound, SipTransport};
use crate::{Result, VoiceError};

/// Methods we accept (`Allow` header).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REGISTER";

/// Payload type we offer for telephone-event.
const TELEPHONE_EVENT_PT: u8 = 101;

/// How long a key going down holds a menu's digit timer (its digit comes within
/// `LOST_END_AFTER` of the last packet; this is a ceiling for a key held down).
const KEY_PRESS_HOLD: Duration = Duration::from_secs(2);

/// Commands from core (through [`VoiceEngineHandle`]).
#[derive(Debug)]
enum Command {
    RingAgent { call_id: String, agent: String, offer_id: String },
    StopRinging { call_id: String, offer_id: String },
    Announce { call_id: String, position: u32, wait: Duration },
    Hangup { call_id: String },
    IsRegistered { user: String, reply: oneshot::Sender<bool> },
    ReleaseAgent { call_id: String },
    Hold { call_id: String, on: bool },
    ToVoicemail { call_id: String, prompt: Option<String>, max: Duration, silence: Option<Duration> },
    Supervise { call_id: String, target: SupervisorTarget, barge: bool, reply: oneshot::Sender<std::result::Result<Supervision, String>> },
    Overflow { call_id: String },
}

/// Whose phone a supervisor leg rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorTarget {
    /// A SIP user registered with our registrar (the supervisor's agent record or an
    /// extension given in the request).
    Registered(String),
    /// A SIP URI reached directly (`sip:user@host:port`, UDP).
    Uri(String),
}

/// What a supervise request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Supervision {
    /// The supervisor's phone is ringing; it joins when answered.
    Ringing,
    /// The supervisor was already on the call; the mode changed (listen ↔ barge).
    ModeChanged,
}

/// Results of spawned routing calls.
#[derive(Debug)]
enum Internal {
    /// `reports` is the call's queue, for the abandon if the call ended meanwhile.
    Enqueued { call_id: String, result: std::result::Result<CallTicket, String>, reports: CallReports },
}

/// Handle for core: ring agents, announce positions, hang up, stop the engine.
#[derive(Debug, Clone)]
pub struct VoiceEngineHandle {
    commands: mpsc::UnboundedSender<Command>,
    shutdown: Arc<watch::Sender<bool>>,
    udp_addr: Option<SocketAddr>,
    tcp_addr: Option<SocketAddr>,
}

impl VoiceEngineHandle {
    /// Rings `agent`'s registered phone for queued call `call_id`. The result comes
    /// back through [`CallRouting::call_event`] (answered, no-answer, busy, unreachable).
    pub fn ring_agent(&self, call_id: &str, agent: &str, offer_id: &str) -> Result<()> {
        self.send(Command::RingAgent { call_id: call_id.into(), agent: agent.into(), offer_id: offer_id.into() })
    }

    /// Withdraws an offer that is still ringing (sends CANCEL); no event follows.
    pub fn stop_ringing(&self, call_id: &str, offer_id: &str) -> Result<()> {
        self.send(Command::StopRinging { call_id: call_id.into(), offer_id: offer_id.into() })
    }

    /// Plays the position / estimated-wait announcement to a queued caller.
    pub fn announce_position(&self, call_id: &str, position: u32, estimated_wait: Duration) -> Result<()> {
        self.send(Command::Announce { call_id: call_id.into(), position, wait: estimated_wait })
    }

    /// Ends a call from the hub side (e.g. queue max wait without voicemail).
    pub fn hangup(&self, call_id: &str) -> Result<()> {
        self.send(Command::Hangup { call_id: call_id.into() })
    }

    /// Blind transfer / re-queue: ends a bridged agent leg (BYE) and puts the caller
    /// back on music on hold, waiting for the next [`Self::ring_agent`]. The current
    /// recording is closed; the next bridge records into a new file. No event follows.
    pub fn release_agent(&self, call_id: &str) -> Result<()> {
        self.send(Command::ReleaseAgent { call_id: call_id.into() })
    }

    /// Hub-side hold of a bridged call: the caller hears music on hold and neither
    /// party's audio is relayed (`on = false` resumes).
    pub fn hold(&self, call_id: &str, on: bool) -> Result<()> {
        self.send(Command::Hold { call_id: call_id.into(), on })
    }

    /// Sends a queued caller to voicemail (e.g. queue max wait exceeded): optional
    /// prompt, beep, then a mono recording of at most `max` that also ends on `#` and,
    /// when given, after `silence` without speech; reported through
    /// [`CallRouting::voicemail`].
    pub fn to_voicemail(&self, call_id: &str, prompt: Option<String>, max: Duration, silence: Option<Duration>) -> Result<()> {
        self.send(Command::ToVoicemail { call_id: call_id.into(), prompt, max, silence })
    }

    /// Supervisor listen-in (`barge = false`: the supervisor hears caller and agent
    /// mixed, nobody hears the supervisor) or barge (`true`: the supervisor is also
    /// mixed into what caller and agent hear) on a bridged call. The supervisor's phone
    /// is called as a third leg; its BYE leaves the call up, the call's end BYEs it.
    /// Progress is reported through [`CallRouting::call_event`].
    pub async fn supervise(
        &self,
        call_id: &str,
        target: SupervisorTarget,
        barge: bool,
    ) -> Result<std::result::Result<Supervision, String>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Supervise { call_id: call_id.into(), target, barge, reply })?;
        rx.await.map_err(|_| VoiceError::Stopped)
    }

    /// Whether `user` has a live registration (for agent presence).
    pub async fn is_registered(&self, user: &str) -> Result<bool> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::IsRegistered { user: user.into(), reply })?;
        rx.await.map_err(|_| VoiceError::Stopped)
    }

    /// Bound SIP UDP address.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// Bound SIP TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Hangs up every call and stops the engine.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.commands.send(cmd).map_err(|_| VoiceError::Stopped)
    }
}

/// Builds and starts the engine.
#[derive(Debug)]
pub struct VoiceEngine;

impl VoiceEngine {
    /// Validates the config, binds the listeners and starts the engine task.
    pub async fn start(
        config: VoiceConfig,
        routing: Arc<dyn CallRouting>,
        credentials: Arc<dyn CredentialStore>,
    ) -> Result<VoiceEngineHandle> {
        config.validate()?;
        let (inbound_tx, inbound_rx) = mpsc::channel(1024);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let transport =
            SipTransport::bind(config.udp_listen, config.tcp_listen, config.max_message_size, inbound_tx, shutdown_rx.clone()).await?;
        let bound_ip = transport.udp_addr().or(transport.tcp_addr()).map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let local_ip = config.public_ip.unwrap_or(if bound_ip.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { bound_ip });
        let prompts = PromptStore::load(&config.prompts_dir);
        tracing::info!(prompts = prompts.len(), udp = ?transport.udp_addr(), tcp = ?transport.tcp_addr(), "Voice engine started.");
        let moh = config
            .music_on_hold
            .as_deref()
            .filter(|n| prompts.has(n))
            .map(|n| prompts.get(n))
            .unwrap_or_else(|| crate::media::player::MusicOnHold::new(None).pattern());
        let mut trunk_credentials = InlineCredentials::default();
        for t in &config.trunks {
            if let (Some(u), Some(p)) = (&t.digest_user, &t.digest_password) {
                use secrecy::ExposeSecret;
                trunk_credentials.insert(u, p.expose_secret());
            }
        }
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let handle = VoiceEngineHandle {
            commands: commands_tx,
            shutdown: Arc::new(shutdown_tx),
            udp_addr: transport.udp_addr(),
            tcp_addr: transport.tcp_addr(),
        };
        let engine = Engine {
            layer: TransactionLayer::new(config.timers.timers(), config.max_message_size),
            registrar: Registrar::new(config.registrar.clone()),
            flows: config.ivr_flows.iter().map(|(k, v)| (k.clone(), Arc::new(v.clone()))).collect(),
            cfg: Arc::new(config),
            credentials,
            trunk_credentials,
            routing,
            transport,
            prompts: Arc::new(prompts),
            moh,
            local_ip,
            calls: HashMap::new(),
            by_sip_call_id: HashMap::new(),
            by_leg: HashMap::new(),
            client_tx: HashMap::new(),
            pending_voicemails: HashMap::new(),
            next_leg: 1,
            media_tx,
            internal_tx,
            deferred: Vec::new(),
        };
        tokio::spawn(engine.run(inbound_rx, commands_rx, media_rx, internal_rx, shutdown_rx));
        Ok(handle)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ivr,
    Enqueuing,
    Queued,
    Voicemail,
    Bridged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegState {
    Ringing,
    Cancelling,
    Answered,
}

/// What an outgoing (UAC) leg is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OutRole {
    /// An agent's phone rung for a core offer (several at once for ring-all).
    Agent { offer_id: String },
    /// An external number dialled through a trunk (queue overflow).
    External { number: String },
    /// A supervisor listening in (`barge = false`) or barging in.
    Supervisor { barge: bool },
}

/// Where an outgoing leg's INVITE goes.
#[derive(Debug)]
struct DialTarget {
    /// Request-URI.
    uri: rsip::Uri,
    /// Next hop (the registration's source for phones, the trunk for numbers).
    peer: Peer,
    /// SIP user, number or URI user (logs and events).
    user: String,
    /// `To` header value.
    to: String,
}

/// Why an outgoing leg failed before it was answered.
#[derive(Debug, Clone)]
enum LegFailure {
    NoAnswer,
    Busy,
    Unreachable(String),
}

#[derive(Debug)]
struct CallerLeg {
    dialog: Dialog,
    peer: Peer,
    media: MediaHandle,
    answer: Option<(AnswerRetransmitter, Peer)>,
    sdp_version: u64,
    session_id: u64,
    codec: Codec,
    telephone_event: Option<u8>,
    /// We offered SDP in our 2xx to an offerless INVITE; the answer comes in the ACK.
    pending_offer: Option<PendingOffer>,
}

/// Our SDP offer sent in a 2xx to an INVITE without SDP (RFC 3261 §13.2.1, RFC 3264 §4:
/// the answer must come in the ACK).
#[derive(Debug)]
struct PendingOffer {
    /// The IVR flow to start once the answer is in (a late-offer initial INVITE): until
    /// then we do not know where to send the prompt's audio.
    flow: Option<Arc<IvrFlowConfig>>,
}

/// An outgoing leg: an agent's phone, an external number or a supervisor's phone.
#[derive(Debug)]
struct OutLeg {
    /// SIP user, number or URI called (logs and events).
    user: String,
    role: OutRole,
    invite: Request,
    invite_key: TransactionKey,
    peer: Peer,
    media: MediaHandle,
    dialog: Option<Dialog>,
    ring_deadline: Option<Instant>,
    state: LegState,
    sip_call_id: String,
    reported_ringing: bool,
    answer: Option<(AnswerRetransmitter, Peer)>,
    sdp_version: u64,
    /// We offered SDP in our 2xx to the phone's offerless re-INVITE; the answer comes
    /// in the ACK.
    offer_pending: bool,
}

impl OutLeg {
    /// A leg that can be bridged to the caller (agent or external party).
    fn is_party(&self) -> bool {
        !matches!(self.role, OutRole::Supervisor { .. })
    }

    fn offer_id(&self) -> Option<&str> {
        match &self.role {
            OutRole::Agent { offer_id } => Some(offer_id),
            _ => None,
        }
    }

    /// Stops a ringing leg: marks it cancelling and returns its CANCEL (RFC 3261 §9.1).
    fn cancel(&mut self) -> (Request, Peer) {
        self.state = LegState::Cancelling;
        self.ring_deadline = None;
        (cancel_for(&self.invite), self.peer)
    }

    /// The request that ends the leg where it stands: CANCEL while ringing, BYE once
    /// answered, nothing while a CANCEL is under way.
    fn hangup(&mut self, vias: &Vias) -> Option<(Request, Peer)> {
        match self.state {
            LegState::Ringing => Some(self.cancel()),
            LegState::Answered => {
                let peer = self.peer;
                self.dialog.as_mut().and_then(|d| d.request(Method::Bye, vias.get(peer.transport), "", None)).map(|r| (r, peer))
            }
            LegState::Cancelling => None,
        }
    }

    /// The report for a failure before answer (agents' offers end in core; the
    /// others are informational).
    fn failure(&self, why: LegFailure) -> CallOutcome {
        match (&self.role, why) {
            (OutRole::Agent { offer_id }, LegFailure::NoAnswer) => CallOutcome::NoAnswer { offer_id: offer_id.clone() },
            (OutRole::Agent { offer_id }, LegFailure::Busy) => CallOutcome::Busy { offer_id: offer_id.clone() },
            (OutRole::Agent { offer_id }, LegFailure::Unreachable(reason)) => {
                CallOutcome::Unreachable { offer_id: offer_id.clone(), reason }
            }
            (OutRole::External { number }, why) => CallOutcome::ExternalFailed { number: number.clone(), reason: why.describe() },
            (OutRole::Supervisor { .. }, why) => CallOutcome::SupervisorFailed { user: self.user.clone(), reason: why.describe() },
        }
    }
}

impl LegFailure {
    fn describe(self) -> String {
        match self {
            LegFailure::NoAnswer => "no answer".into(),
            LegFailure::Busy => "busy".into(),
            LegFailure::Unreachable(r) => r,
        }
    }
}

struct Call {
    id: String,
    info: CallInfo,
    phase: Phase,
    ivr: Option<IvrSession>,
    caller: CallerLeg,
    /// Outgoing legs: ringing forks, the bridged party, a supervisor.
    legs: Vec<OutLeg>,
    ticket: Option<CallTicket>,
    digit_deadline: Option<Instant>,
    recorder: Option<Recorder>,
    hangup_after_prompt: bool,
    voicemail: Option<Voicemail>,
    /// Ring requests (user, offer) that arrived while core was still enqueueing.
    pending_rings: Vec<(String, String)>,
    /// When to dial the queue's overflow number (set on enqueue, cleared once tried).
    overflow_at: Option<Instant>,
    /// Overflow calls made for this caller so far.
    overflow_attempts: u32,
    /// Caller and bridged party mix their inputs (a supervisor barged in).
    mixing: bool,
    /// Bridges so far (recording file names get a suffix after the first).
    bridges: u32,
    /// Hub-side hold active.
    held: bool,
    /// This call's reports to core, applied in order (see [`crate::call_reports`]).
    reports: CallReports,
}

#[derive(Debug)]
struct Voicemail {
    path: PathBuf,
    max: Duration,
    silence: Option<Duration>,
    started: bool,
}

impl Call {
    /// The answered agent or external leg bridged to the caller.
    fn bridged(&self) -> Option<&OutLeg> {
        self.legs.iter().find(|l| l.is_party() && l.state == LegState::Answered)
    }

    fn leg_by_key(&self, key: &TransactionKey) -> Option<usize> {
        self.legs.iter().position(|l| &l.invite_key == key)
    }

    fn leg_by_sip_call_id(&self, sip_call_id: &str) -> Option<usize> {
        self.legs.iter().position(|l| l.sip_call_id == sip_call_id)
    }

    fn leg_mut(&mut self, sip_call_id: &str) -> Option<&mut OutLeg> {
        self.legs.iter_mut().find(|l| l.sip_call_id == sip_call_id)
    }
}

#[derive(Debug, Clone)]
enum ClientPurpose {
    /// The INVITE of an outgoing leg of this call.
    LegInvite(String),
    Other,
}

struct Engine {
    cfg: Arc<VoiceConfig>,
    layer: TransactionLayer,
    registrar: Registrar,
    credentials: Arc<dyn CredentialStore>,
    trunk_credentials: InlineCredentials,
    routing: Arc<dyn CallRouting>,
    transport: SipTransport,
    prompts: Arc<PromptStore>,
    moh: Arc<[i16]>,
    flows: HashMap<String, Arc<IvrFlowConfig>>,
    local_ip: IpAddr,
    calls: HashMap<String, Call>,
    /// SIP Call-ID → (engine call id, leg side).
    by_sip_call_id: HashMap<String, (String, Side)>,
    by_leg: HashMap<LegId, (String, Side)>,
    client_tx: HashMap<TransactionKey, ClientPurpose>,
    /// Voicemail legs whose file is still being closed → the call to report, and where.
    pending_voicemails: HashMap<LegId, (CallInfo, CallReports)>,
    next_leg: LegId,
    media_tx: mpsc::UnboundedSender<MediaEvent>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    /// Commands postponed until their call is ready (ring requests during enqueue).
    deferred: Vec<Command>,
}

impl Engine {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut media: mpsc::UnboundedReceiver<MediaEvent>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                Some(msg) = inbound.recv() => self.on_inbound(msg).await,
                Some(cmd) = commands.recv() => self.on_command(cmd).await,
                Some(ev) = media.recv() => self.on_media(ev),
                Some(ev) = internal.recv() => self.on_internal(ev),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    // Digits (and prompt ends) already received come before any timer: a
                    // menu's digit timeout must not beat a digit that arrived in time.
                    while let Ok(ev) = media.try_recv() {
                        self.on_media(ev);
                    }
                    self.on_timer();
                }
                _ = shutdown.changed() => break,
            }
            for cmd in std::mem::take(&mut self.deferred) {
                self.on_command(cmd).await;
            }
        }
        let ids: Vec<String> = self.calls.keys().cloned().collect();
        for id in ids {
            self.end_call(&id, Side::Hub);
        }
        // This engine's registrations leave the process-wide gauge with it.
        VoiceStats::add(&voice_stats().registrations, -(self.registrar.registered_users() as i64));
        tracing::info!("Voice engine stopped.");
    }

    fn now() -> Instant {
        Instant::now()
    }

    fn next_deadline(&self) -> Instant {
        let mut d = Self::now() + Duration::from_secs(1);
        if let Some(t) = self.layer.next_deadline() {
            d = d.min(t);
        }
        for c in self.calls.values() {
            for t in
                [c.digit_deadline, c.caller.answer.as_ref().map(|(a, _)| a.next_deadline()), c.overflow_at].into_iter().flatten().chain(
                    c.legs.iter().flat_map(|l| [l.ring_deadline, l.answer.as_ref().map(|(r, _)| r.next_deadline())].into_iter().flatten()),
                )
            {
                d = d.min(t);
            }
        }
        d
    }

    fn emit(&mut self, events: Vec<LayerEvent>) -> Vec<LayerEvent> {
        let mut rest = Vec::new();
        for e in events {
            match e {
                LayerEvent::Send { peer, bytes } => self.transport.send(peer, bytes),
                LayerEvent::Dropped { reason, malformed } => {
                    if malformed {
                        VoiceStats::inc(&voice_stats().sip_parse_errors);
                    }
                    tracing::debug!(%reason, "SIP message dropped.");
                }
                other => rest.push(other),
            }
        }
        rest
    }

    fn respond(&mut self, key: &TransactionKey, response: Response) {
        let events = self.layer.respond(key, response, Self::now());
        let _ = self.emit(events);
    }

    fn reply(&mut self, key: &TransactionKey, req: &Request, code: u16, extra: Vec<rsip::Header>) {
        let tag = random_token();
        let resp = response_to(req, code, Some(&tag), extra, Vec::new());
        self.respond(key, resp);
    }

    fn send_request(&mut self, req: Request, peer: Peer, purpose: ClientPurpose) -> TransactionKey {
        let (key, events) = self.layer.send_request(req, peer, Self::now());
        if !matches!(purpose, ClientPurpose::Other) || !events.is_empty() {
            self.client_tx.insert(key.clone(), purpose);
        }
        let _ = self.emit(events);
        key
    }

    fn via(&self, transport: Transport) -> String {
        let port = match transport {
            Transport::Udp => self.transport.udp_addr(),
            Transport::Tcp => self.transport.tcp_addr(),
        }
        .map(|a| a.port())
        .unwrap_or(5060);
        format!("SIP/2.0/{} {}", transport.via_token(), host_port(self.local_ip, port))
    }

    fn contact(&self, transport: Transport) -> String {
        let port = match transport {
            Transport::Udp => self.transport.udp_addr(),
            Transport::Tcp => self.transport.tcp_addr(),
        }
        .map(|a| a.port())
        .unwrap_or(5060);
        let t = if transport == Transport::Tcp { ";transport=tcp" } else { "" };
        format!("sip:switchboard@{}{t}", host_port(self.local_ip, port))
    }

    async fn on_inbound(&mut self, msg: Inbound) {
        VoiceStats::inc(&voice_stats().sip_in);
        let events = self.layer.on_message(&msg.data, msg.peer, Self::now());
        for e in self.emit(events) {
            match e {
                LayerEvent::Request { key, request, info, source } => self.on_request(key, request, *info, source).await,
                LayerEvent::Ack { info, request, .. } => self.on_ack(&request, &info),
                LayerEvent::Response { key, response, info } => self.on_response(key, response, &info),
                LayerEvent::StrayResponse { info, .. } => self.on_stray_2xx(&info),
                LayerEvent::Timeout { key } => self.on_tx_timeout(key),
                LayerEvent::Send { .. } | LayerEvent::Dropped { .. } => {}
            }
        }
    }

    async fn on_request(&mut self, key: TransactionKey, req: Request, info: Essentials, source: Peer) {
        // RFC 3261 §8.2.2.3 / RFC 3262: we implement no extension, in particular not
        // 100rel, so anything in Require is answered 420 listing it in Unsupported.
        let unsupported = unsupported_requirements(&req);
        if !unsupported.is_empty() {
            let h = make_header("Unsupported", unsupported.join(", "));
            self.reply(&key, &req, 420, vec![h]);
            return;
        }
        match req.method {
            Method::Register => {
                let before = self.registrar.registered_users() as i64;
                let resp = self.registrar.handle_register(&req, &info, source, Self::now(), self.credentials.as_ref());
                VoiceStats::add(&voice_stats().registrations, self.registrar.registered_users() as i64 - before);
                self.respond(&key, resp);
            }
            Method::Options => {
                let extra = vec![
                    make_header("Allow", ALLOW),
                    make_header("Accept", "application/sdp"),
                    make_header("Server", self.cfg.user_agent.clone()),
                ];
                self.reply(&key, &req, 200, extra);
            }
            Method::Invite if info.to.tag().is_none() => self.on_new_invite(key, req, info, source).await,
            Method::Invite => self.on_reinvite(key, req, info),
            Method::Bye => self.on_bye(key, req, info),
            Method::Cancel => self.on_cancel(key, req, info),
            Method::Info => self.on_info(key, req, info),
            _ => self.reply(&key, &req, 405, vec![make_header("Allow", ALLOW)]),
        }
    }

    fn trunk_for(&self, req: &Request, source: Peer) -> std::result::Result<&TrunkConfig, Response> {
        if let Some(t) = self.cfg.trunk_for_source(source.addr.ip()) {
            return Ok(t);
        }
        if !self.cfg.trunks.iter().any(|t| t.digest_user.is_some()) {
            return Err(response_to(req, 403, Some(&random_token()), Vec::new(), Vec::new()));
        }
        match self.registrar.authenticate(req, &random_token(), &self.trunk_credentials) {
            Ok(user) => self
                .cfg
                .trunks
                .iter()
                .find(|t| t.digest_user.as_deref() == Some(user.as_str()))
                .ok_or_else(|| response_to(req, 403, Some(&random_token()), Vec::new(), Vec::new())),
            Err(challenge) => Err(*challenge),
        }
    }

    async fn on_new_invite(&mut self, key: TransactionKey, req: Request, info: Essentials, source: Peer) {
        let trunk = match self.trunk_for(&req, source) {
            Ok(t) => t.clone(),
            Err(resp) => {
                self.respond(&key, resp);
                return;
            }
        };
        let dialled = SipUri::parse(&req.uri.to_string()).and_then(|u| u.user).unwrap_or_default();
        let Some(flow) = trunk.dids.get(&dialled).or(trunk.default_flow.as_ref()).and_then(|f| self.flows.get(f)).cloned() else {
            self.reply(&key, &req, 404, Vec::new());
            return;
        };
        let ip = self.rtp_bind_ip();
        let socket = match bind_rtp(ip, self.cfg.rtp_port_min, self.cfg.rtp_port_max).await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "No RTP port for an inbound call.");
                self.reply(&key, &req, 503, Vec::new());
                return;
            }
        };
        let local_rtp = SocketAddr::new(self.local_ip, socket.local_addr().map(|a| a.port()).unwrap_or(0));
        let session_id = rand::random::<u32>() as u64;
        // RFC 3261 §13.2.1 / RFC 3264 §4: an INVITE without SDP (late offer, e.g. from a
        // PBX or gateway) gets our offer in the 2xx; the caller answers in the ACK.
        let late_offer = req.body().iter().all(u8::is_ascii_whitespace);
        let (neg, answer) = if late_offer {
            let offer = sdp::render(local_rtp, session_id, 1, &[Codec::Pcmu, Codec::Pcma], Some(TELEPHONE_EVENT_PT), Direction::SendRecv);
            (None, offer)
        } else {
            match sdp::answer_offer(req.body(), local_rtp, session_id, 1) {
                Ok((neg, answer)) => (Some(neg), answer),
                Err(error) => {
                    tracing::info!(%error, "Inbound INVITE with unusable SDP.");
                    self.reply(&key, &req, 488, vec![make_header("Warning", "304 switchboard \"PCMU or PCMA required\"")]);
                    return;
                }
            }
        };
        let tag = random_token();
        let Some(dialog) = Dialog::as_uas(&req, &info, &tag) else {
            self.reply(&key, &req, 400, Vec::new());
            return;
        };
        let leg_id = self.next_leg();
        let media = spawn_leg(leg_id, socket, local_rtp, self.moh.clone(), self.media_tx.clone());
        media.command(MediaCommand::SignallingFrom(source.addr.ip()));
        if let Some(neg) = neg {
            media.command(MediaCommand::SetRemote(neg));
        }
        let call_id = info.call_id.clone();
        let resp = self.answer_response(&req, &tag, source.transport, answer);
        let peer = self.layer.peer_of(&key).unwrap_or(source);
        let bytes = to_bytes(&resp.clone().into());
        self.respond(&key, resp);
        let retransmit = AnswerRetransmitter::new(bytes, peer.transport.is_reliable(), self.layer.timers(), Self::now());
        let caller = NameAddr::parse(&info.from.uri).map(|a| a.uri).unwrap_or_default();
        let caller_user = SipUri::parse(&caller).and_then(|u| u.user).unwrap_or(caller);
        let call = Call {
            id: call_id.clone(),
            info: CallInfo {
                call_id: call_id.clone(),
                trunk: trunk.name.clone(),
                caller: caller_user,
                caller_name: info.from.display.clone(),
                dialled,
                queue: String::new(),
                requirements: Vec::new(),
                ivr_path: Vec::new(),
                answered_at: chrono::Utc::now(),
            },
            phase: Phase::Ivr,
            ivr: None,
            caller: CallerLeg {
                // Our requests (BYE) follow the route set of a record-routing proxy.
                peer: dialog.next_hop(peer),
                dialog,
                media,
                answer: Some((retransmit, peer)),
                sdp_version: 1,
                session_id,
                codec: neg.map_or(Codec::Pcmu, |n| n.codec),
                telephone_event: neg.and_then(|n| n.telephone_event),
                pending_offer: late_offer.then(|| PendingOffer { flow: Some(flow.clone()) }),
            },
            legs: Vec::new(),
            ticket: None,
            digit_deadline: None,
            recorder: None,
            hangup_after_prompt: false,
            voicemail: None,
            pending_rings: Vec::new(),
            overflow_at: None,
            overflow_attempts: 0,
            mixing: false,
            bridges: 0,
            held: false,
            reports: CallReports::spawn(self.routing.clone(), call_id.clone()),
        };
        tracing::info!(call_id = %call_id, trunk = %trunk.name, dialled = %call.info.dialled, "Inbound call answered.");
        self.by_sip_call_id.insert(call_id.clone(), (call_id.clone(), Side::Caller));
        self.by_leg.insert(leg_id, (call_id.clone(), Side::Caller));
        self.calls.insert(call_id.clone(), call);
        VoiceStats::inc(&voice_stats().calls_offered);
        VoiceStats::add(&voice_stats().active_calls, 1);
        if !late_offer {
            self.start_ivr(&call_id, flow);
        }
    }

    fn start_ivr(&mut self, call_id: &str, flow: Arc<IvrFlowConfig>) {
        let (session, actions) = IvrSession::start(flow, chrono::Utc::now());
        if let Some(c) = self.calls.get_mut(call_id) {
            c.ivr = Some(session);
        }
        self.run_ivr_actions(call_id, actions);
    }

    fn answer_response(&self, req: &Request, tag: &str, transport: Transport, sdp_body: String) -> Response {
        let extra = vec![
            make_header("Contact", format!("<{}>", self.contact(transport))),
            make_header("Allow", ALLOW),
            make_header("Server", self.cfg.user_agent.clone()),
            make_header("Content-Type", "application/sdp"),
        ];
        response_to(req, 200, Some(tag), extra, sdp_body.into_bytes())
    }

    fn rtp_bind_ip(&self) -> IpAddr {
        self.transport.udp_addr().or(self.transport.tcp_addr()).map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    fn next_leg(&mut self) -> LegId {
        self.next_leg += 1;
        self.next_leg
    }

    fn run_ivr_actions(&mut self, call_id: &str, actions: Vec<IvrAction>) {
        for action in actions {
            let prompts = self.prompts.clone();
            let Some(call) = self.calls.get_mut(call_id) else {
                return;
            };
            match action {
                IvrAction::StopPlayback => call.caller.media.command(MediaCommand::StopPlayback),
                IvrAction::Play(names) => {
                    let samples = names.iter().map(|n| prompts.get(n)).collect();
                    call.caller.media.command(MediaCommand::Play(samples));
                }
                IvrAction::CollectDigit { timeout } => call.digit_deadline = Some(Self::now() + timeout),
                IvrAction::Enqueue { queue, requirements } => {
                    call.phase = Phase::Enqueuing;
                    call.info.queue = queue;
                    call.info.requirements = requirements;
                    call.info.ivr_path = call.ivr.as_ref().map(|s| s.path().to_vec()).unwrap_or_default();
                    call.caller.media.command(MediaCommand::Moh(true));
                    let info = call.info.clone();
                    let routing = self.routing.clone();
                    let tx = self.internal_tx.clone();
                    let call_id = call_id.to_string();
                    let reports = call.reports.clone();
                    tokio::spawn(async move {
                        let result = routing.enqueue_call(info).await.map_err(|e| e.0);
                        if let Err(e) = tx.send(Internal::Enqueued { call_id, result, reports }) {
                            // The engine stopped: nobody will hang this caller up but its end.
                            if let Internal::Enqueued { call_id, result: Ok(ticket), reports } = e.0 {
                                tracing::warn!(%call_id, "Engine gone while enqueueing; abandoning.");
                                reports.abandon(ticket);
                            }
                        }
                    });
                }
                IvrAction::Voicemail { prompt, max } => {
                    call.phase = Phase::Voicemail;
                    let mut samples: Vec<Arc<[i16]>> = prompt.iter().map(|p| prompts.get(p)).collect();
                    samples.push(Arc::from(tone(1000.0, 400, 8000)));
                    call.caller.media.command(MediaCommand::Play(samples));
                    let path = self.cfg.voicemail_dir.join(format!("{}.wav", file_safe(call_id)));
                    // Recording starts when the beep has played (PromptFinished).
                    call.voicemail = Some(Voicemail { path, max, silence: None, started: false });
                    call.digit_deadline = None;
                    call.info.queue.clear();
                    call.info.ivr_path = call.ivr.take().map(|s| s.path().to_vec()).unwrap_or_default();
                }
                IvrAction::Hangup => {
                    tracing::info!(call_id = %call_id, "IVR flow hung up (hangup node, or no valid choice).");
                    self.end_call(call_id, Side::Hub);
                    return;
                }
            }
        }
    }
}

impl Engine {
    fn on_media(&mut self, ev: MediaEvent) {
        let leg = match &ev {
            MediaEvent::PromptFinished(l, _) | MediaEvent::KeyDown(l) | MediaEvent::Digit(l, _) | MediaEvent::RecordingDone(l, _, _) => *l,
        };
        if let MediaEvent::RecordingDone(_, path, how) = &ev {
            if let Some((call_id, _)) = self.by_leg.get(&leg).cloned() {
                // Time limit, `#` or silence: hang up; the recording is reported below.
                tracing::info!(call_id = %call_id, end = ?how, "Voicemail recorded.");
                self.end_call(&call_id, Side::Hub);
            }
            if let Some((info, reports)) = self.pending_voicemails.remove(&leg) {
                reports.voicemail(info, path.clone());
            }
            return;
        }
        let Some((call_id, side)) = self.by_leg.get(&leg).cloned() else {
            return;
        };
        match ev {
            MediaEvent::Digit(_, d) if side == Side::Caller => self.on_digit(&call_id, d),
            MediaEvent::KeyDown(_) if side == Side::Caller => self.on_key_down(&call_id),
            MediaEvent::Digit(..) | MediaEvent::KeyDown(_) => {}
            MediaEvent::PromptFinished(_, plays) if side == Side::Caller => {
                // A prompt that ended as a barge-in replaced it is not the new prompt's end.
                if self.calls.get(&call_id).is_some_and(|c| c.caller.media.plays_sent() == plays) {
                    self.on_prompt_finished(&call_id);
                }
            }
            MediaEvent::PromptFinished(..) => {}
            MediaEvent::RecordingDone(..) => {}
        }
    }

    fn on_digit(&mut self, call_id: &str, digit: char) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Some(ivr) = call.ivr.as_mut().filter(|i| !i.is_done()) else {
            tracing::debug!(call_id = %call_id, %digit, phase = ?call.phase, "Digit after the IVR ignored.");
            return;
        };
        call.digit_deadline = None;
        let actions = ivr.on_input(IvrInput::Digit(digit), chrono::Utc::now());
        self.run_ivr_actions(call_id, actions);
    }

    /// A key is going down: the menu's digit timer waits for its digit (which the
    /// receiver reports at the latest `LOST_END_AFTER` after the key's last packet).
    fn on_key_down(&mut self, call_id: &str) {
        if let Some(deadline) = self.calls.get_mut(call_id).and_then(|c| c.digit_deadline.as_mut()) {
            *deadline = (*deadline).max(Self::now() + KEY_PRESS_HOLD);
        }
    }

    fn on_prompt_finished(&mut self, call_id: &str) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if call.hangup_after_prompt {
            self.end_call(call_id, Side::Hub);
            return;
        }
        if let Some(vm) = call.voicemail.as_mut() {
            if !vm.started {
                vm.started = true;
                call.caller.media.command(MediaCommand::RecordMono { path: vm.path.clone(), max: vm.max, silence: vm.silence });
            }
            return;
        }
        if let Some(ivr) = call.ivr.as_mut() {
            let actions = ivr.on_input(IvrInput::PromptFinished, chrono::Utc::now());
            self.run_ivr_actions(call_id, actions);
        }
    }

    fn on_internal(&mut self, ev: Internal) {
        match ev {
            Internal::Enqueued { call_id, result, reports } => {
                let Some(call) = self.calls.get_mut(&call_id) else {
                    // The caller hung up while core was enqueueing: abandon at once.
                    if let Ok(ticket) = result {
                        tracing::info!(call_id = %call_id, "Call ended while being enqueued; abandoning it.");
                        reports.abandon(ticket);
                    }
                    return;
                };
                match result {
                    Ok(ticket) => {
                        tracing::info!(call_id = %call_id, queue = %call.info.queue, "Call enqueued.");
                        call.ticket = Some(ticket);
                        if call.phase == Phase::Enqueuing {
                            call.phase = Phase::Queued;
                        }
                        if let Some(rule) = self.cfg.queues.get(&call.info.queue).filter(|r| r.overflow_number.is_some()) {
                            call.overflow_at = Some(Self::now() + Duration::from_secs(rule.overflow_after_secs));
                        }
                        for (agent, offer_id) in std::mem::take(&mut call.pending_rings) {
                            self.deferred.push(Command::RingAgent { call_id: call_id.clone(), agent, offer_id });
                        }
                    }
                    Err(error) => {
                        tracing::warn!(call_id = %call_id, %error, "Enqueue failed; hanging up.");
                        call.hangup_after_prompt = true;
                        call.caller.media.command(MediaCommand::Moh(false));
                        let p = self.prompts.get("technical-difficulties");
                        call.caller.media.command(MediaCommand::Play(vec![p]));
                    }
                }
            }
        }
    }

    fn on_timer(&mut self) {
        let now = Self::now();
        let events = self.layer.on_timer(now);
        for e in self.emit(events) {
            if let LayerEvent::Timeout { key } = e {
                self.on_tx_timeout(key);
            }
        }
        let before = self.registrar.registered_users() as i64;
        self.registrar.expire(now);
        VoiceStats::add(&voice_stats().registrations, self.registrar.registered_users() as i64 - before);
        let ids: Vec<String> = self.calls.keys().cloned().collect();
        for id in ids {
            let Some(call) = self.calls.get_mut(&id) else {
                continue;
            };
            // §13.3.1.4: retransmit our 2xx until the ACK; give up after 64·T1.
            let mut give_up = false;
            if let Some((r, peer)) = call.caller.answer.as_mut() {
                match r.on_timer(now) {
                    Some(AnswerAction::Resend(b)) => self.transport.send(*peer, b),
                    Some(AnswerAction::GiveUp) => give_up = true,
                    None => {}
                }
            }
            let mut supervisor_gone = None;
            for leg in call.legs.iter_mut() {
                let party = leg.is_party();
                let Some((r, peer)) = leg.answer.as_mut() else { continue };
                match r.on_timer(now) {
                    Some(AnswerAction::Resend(b)) => self.transport.send(*peer, b),
                    // A supervisor's phone that stopped answering costs only its own leg.
                    Some(AnswerAction::GiveUp) if !party => supervisor_gone = Some(leg.sip_call_id.clone()),
                    Some(AnswerAction::GiveUp) => give_up = true,
                    None => {}
                }
            }
            if let Some(leg) = supervisor_gone {
                self.drop_leg(&id, &leg, true);
                continue;
            }
            if give_up {
                tracing::info!(call_id = %id, "No ACK for our 2xx within 64*T1; ending call.");
                self.end_call(&id, Side::Hub);
                continue;
            }
            if call.digit_deadline.is_some_and(|d| d <= now) {
                call.digit_deadline = None;
                if let Some(ivr) = call.ivr.as_mut() {
                    let actions = ivr.on_input(IvrInput::Timeout, chrono::Utc::now());
                    self.run_ivr_actions(&id, actions);
                }
                continue;
            }
            if call.overflow_at.is_some_and(|t| t <= now) {
                call.overflow_at = None;
                self.deferred.push(Command::Overflow { call_id: id.clone() });
            }
            let expired: Vec<String> =
                call.legs.iter().filter(|l| l.ring_deadline.is_some_and(|d| d <= now)).map(|l| l.sip_call_id.clone()).collect();
            for leg in expired {
                self.ring_no_answer(&id, &leg);
            }
        }
    }

    fn vias(&self) -> Vias {
        Vias { udp: self.via(Transport::Udp), tcp: self.via(Transport::Tcp) }
    }
}

/// Our Via sent-by per transport, computed before mutable borrows of the call table.
struct Vias {
    udp: String,
    tcp: String,
}

impl Vias {
    fn get(&self, t: Transport) -> &str {
        match t {
            Transport::Udp => &self.udp,
            Transport::Tcp => &self.tcp,
        }
    }
}

/// Tells core about a call event through the call's ordered report queue (signalling
/// never waits on core, and a later event never overtakes an earlier one).
fn report(call: &Call, event: CallOutcome) {
    match call.ticket.clone() {
        Some(ticket) => call.reports.event(ticket, event),
        None => tracing::debug!(call_id = %call.id, ?event, "Call event before core knew the call; not reported."),
    }
}

impl Engine {
    /// Ring timeout of one outgoing leg: CANCEL it (RFC 3261 §9.1) and report.
    fn ring_no_answer(&mut self, call_id: &str, sip_call_id: &str) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Some(i) = call.leg_by_sip_call_id(sip_call_id) else {
            return;
        };
        let leg = &mut call.legs[i];
        leg.ring_deadline = None;
        if leg.state != LegState::Ringing {
            return;
        }
        let (cancel, peer) = leg.cancel();
        tracing::info!(call_id = %call_id, user = %leg.user, "Ring-no-answer; cancelling.");
        let event = leg.failure(LegFailure::NoAnswer);
        report(call, event);
        self.send_request(cancel, peer, ClientPurpose::Other);
    }

    /// CANCELs every ringing agent or external fork except `keep`, without reports:
    /// core settles those offers itself (accepting one ring-all offer cancels the
    /// others without penalty; a status change releases them).
    fn cancel_forks(&mut self, call_id: &str, keep: Option<&str>) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let cancels: Vec<(Request, Peer)> = call
            .legs
            .iter_mut()
            .filter(|l| l.is_party() && l.state == LegState::Ringing && Some(l.sip_call_id.as_str()) != keep)
            .map(OutLeg::cancel)
            .collect();
        for (cancel, peer) in cancels {
            self.send_request(cancel, peer, ClientPurpose::Other);
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::RingAgent { call_id, agent, offer_id } => self.ring_agent(&call_id, &agent, &offer_id).await,
            Command::StopRinging { call_id, offer_id } => {
                let Some(call) = self.calls.get_mut(&call_id) else {
                    return;
                };
                let Some(leg) = call.legs.iter_mut().find(|l| l.offer_id() == Some(offer_id.as_str()) && l.state == LegState::Ringing)
                else {
                    return;
                };
                let (cancel, peer) = leg.cancel();
                self.send_request(cancel, peer, ClientPurpose::Other);
            }
            Command::Announce { call_id, position, wait } => {
                let Some(call) = self.calls.get(&call_id) else {
                    return;
                };
                if call.phase != Phase::Queued {
                    return;
                }
                let mut names = vec!["position".to_string()];
                names.extend(number_prompts(position));
                names.push("estimated-wait".to_string());
                let minutes = u32::try_from(wait.as_secs().div_ceil(60)).unwrap_or(u32::MAX).max(1);
                names.extend(number_prompts(minutes));
                names.push(if minutes == 1 { "minute" } else { "minutes" }.to_string());
                let samples = names.iter().map(|n| self.prompts.get(n)).collect();
                call.caller.media.command(MediaCommand::Play(samples));
            }
            Command::Hangup { call_id } => self.end_call(&call_id, Side::Hub),
            Command::IsRegistered { user, reply } => {
                let here = self.registrar.lookup(&user, Self::now()).is_some();
                let _ = reply.send(here || self.credentials.remote_binding(&user).is_some());
            }
            Command::ReleaseAgent { call_id } => self.release_agent(&call_id),
            Command::Hold { call_id, on } => self.hold(&call_id, on),
            Command::ToVoicemail { call_id, prompt, max, silence } => {
                let Some(call) = self.calls.get(&call_id) else {
                    return;
                };
                if !matches!(call.phase, Phase::Queued | Phase::Enqueuing | Phase::Ivr) {
                    return;
                }
                let legs: Vec<String> = call.legs.iter().map(|l| l.sip_call_id.clone()).collect();
                self.cancel_forks(&call_id, None);
                for leg in legs {
                    self.drop_leg(&call_id, &leg, false);
                }
                if let Some(call) = self.calls.get_mut(&call_id) {
                    call.overflow_at = None;
                    call.caller.media.command(MediaCommand::Moh(false));
                    call.caller.media.command(MediaCommand::StopPlayback);
                }
                self.run_ivr_actions(&call_id, vec![IvrAction::Voicemail { prompt, max }]);
                if let Some(vm) = self.calls.get_mut(&call_id).and_then(|c| c.voicemail.as_mut()) {
                    vm.silence = silence;
                }
            }
            Command::Supervise { call_id, target, barge, reply } => {
                let result = self.supervise(&call_id, target, barge).await;
                let _ = reply.send(result);
            }
            Command::Overflow { call_id } => self.overflow(&call_id).await,
        }
    }

    async fn ring_agent(&mut self, call_id: &str, user: &str, offer_id: &str) {
        let unreachable = |reason: &str| CallOutcome::Unreachable { offer_id: offer_id.to_string(), reason: reason.to_string() };
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if call.phase == Phase::Enqueuing {
            // Core can offer before the enqueue result reached this task: ring once it has.
            call.pending_rings.push((user.to_string(), offer_id.to_string()));
            return;
        }
        let call = &*call;
        if call.legs.iter().any(|l| l.offer_id() == Some(offer_id)) {
            return; // already ringing for this offer
        }
        if call.phase != Phase::Queued || call.bridged().is_some() {
            let withdrawn = CallOutcome::Withdrawn { offer_id: offer_id.to_string(), reason: "call is not waiting for an agent".into() };
            report(call, withdrawn);
            return;
        }
        // A phone registered with this node, or (cluster) with another node: its binding
        // is published in the database and the INVITE goes to it directly.
        let binding = match self.registrar.lookup(user, Self::now()) {
            Some(b) => RemoteBinding { contact: b.contact.clone(), peer: b.peer },
            None => match self.credentials.remote_binding(user) {
                Some(b) => b,
                None => {
                    report(call, unreachable("agent phone not registered"));
                    return;
                }
            },
        };
        let Ok(uri) = rsip::Uri::try_from(binding.contact.as_str()) else {
            report(call, unreachable("unusable contact"));
            return;
        };
        let to = format!("<sip:{}@{}>", sip_user_safe(user), host_port(self.local_ip, 0));
        let role = OutRole::Agent { offer_id: offer_id.to_string() };
        let ring = Duration::from_secs(self.cfg.ring_timeout_secs);
        let target = DialTarget { uri, peer: binding.peer, user: user.to_string(), to };
        if let Err(reason) = self.dial(call_id, target, role, ring).await {
            if let Some(call) = self.calls.get(call_id) {
                report(call, unreachable(reason));
            }
        }
    }

    /// Sends the INVITE of a new outgoing leg of `call_id` (RTP port, SDP offer with
    /// PCMU and PCMA, media task) and tracks it as ringing for `ring`.
    async fn dial(&mut self, call_id: &str, target: DialTarget, role: OutRole, ring: Duration) -> std::result::Result<(), &'static str> {
        let DialTarget { uri, peer, user, to } = target;
        let socket = bind_rtp(self.rtp_bind_ip(), self.cfg.rtp_port_min, self.cfg.rtp_port_max).await.map_err(|_| "no RTP port")?;
        let Some(call) = self.calls.get(call_id) else {
            return Ok(());
        };
        let local_rtp = SocketAddr::new(self.local_ip, socket.local_addr().map(|a| a.port()).unwrap_or(0));
        let offer = sdp::render(
            local_rtp,
            rand::random::<u32>() as u64,
            1,
            &[Codec::Pcmu, Codec::Pcma],
            Some(TELEPHONE_EVENT_PT),
            Direction::SendRecv,
        );
        let transport = peer.transport;
        let sip_call_id = format!("{}@{}", uuid::Uuid::new_v4(), self.local_ip);
        let from_user = sip_user_safe(&call.info.caller);
        let mut display = call.info.caller_name.clone().unwrap_or_else(|| call.info.caller.clone()).replace(['"', '\\'], "");
        if let OutRole::Supervisor { barge } = role {
            display = format!("{}: {display}", if barge { "Barge" } else { "Listen" });
        }
        let host = host_port(self.local_ip, 0);
        let mut headers = rsip::Headers::default();
        headers.push(make_header("Via", format!("{};branch={};rport", self.via(transport), new_branch())));
        headers.push(make_header("Max-Forwards", "70"));
        headers.push(make_header("From", format!("\"{display}\" <sip:{from_user}@{host}>;tag={}", random_token())));
        headers.push(make_header("To", to));
        headers.push(make_header("Call-ID", sip_call_id.clone()));
        headers.push(make_header("CSeq", "1 INVITE"));
        headers.push(make_header("Contact", format!("<{}>", self.contact(transport))));
        headers.push(make_header("Allow", ALLOW));
        headers.push(make_header("User-Agent", self.cfg.user_agent.clone()));
        headers.push(make_header("X-Switchboard-Call-ID", call_id.to_string()));
        headers.push(make_header("Content-Type", "application/sdp"));
        let invite = Request { method: Method::Invite, uri, version: rsip::Version::V2, headers, body: offer.into_bytes() };
        let leg_id = self.next_leg();
        let media = spawn_leg(leg_id, socket, local_rtp, self.moh.clone(), self.media_tx.clone());
        media.command(MediaCommand::SignallingFrom(peer.addr.ip()));
        let key = self.send_request(invite.clone(), peer, ClientPurpose::LegInvite(call_id.to_string()));
        tracing::info!(call_id = %call_id, user = %user, role = ?role, "Calling an outgoing leg.");
        self.by_leg.insert(leg_id, (call_id.to_string(), Side::Agent));
        self.by_sip_call_id.insert(sip_call_id.clone(), (call_id.to_string(), Side::Agent));
        if let Some(call) = self.calls.get_mut(call_id) {
            call.legs.push(OutLeg {
                user,
                role,
                invite,
                invite_key: key,
                peer,
                media,
                dialog: None,
                ring_deadline: Some(Self::now() + ring),
                state: LegState::Ringing,
                sip_call_id,
                reported_ringing: false,
                answer: None,
                sdp_version: 1,
                offer_pending: false,
            });
        }
        Ok(())
    }

    /// Adds a supervisor's phone to a bridged call, or changes the mode of the one there.
    async fn supervise(&mut self, call_id: &str, target: SupervisorTarget, barge: bool) -> std::result::Result<Supervision, String> {
        let Some(call) = self.calls.get_mut(call_id) else {
            return Err("the call has ended".into());
        };
        if call.phase != Phase::Bridged || call.bridged().is_none() {
            return Err("the call is not connected to an agent".into());
        }
        if let Some(leg) = call.legs.iter_mut().find(|l| !l.is_party()) {
            if leg.state != LegState::Answered {
                return Err("a supervisor's phone is already ringing for this call".into());
            }
            leg.role = OutRole::Supervisor { barge };
            tracing::info!(call_id = %call_id, barge, "Supervisor mode changed.");
            self.rewire(call_id, &[]);
            return Ok(Supervision::ModeChanged);
        }
        let (uri, peer, user) = match target {
            SupervisorTarget::Registered(user) => {
                let binding = self.registrar.lookup(&user, Self::now()).cloned().ok_or("the supervisor's phone is not registered")?;
                let uri =
                    rsip::Uri::try_from(binding.contact.as_str()).map_err(|_| "the supervisor's phone registered an unusable contact")?;
                (uri, binding.peer, user)
            }
            SupervisorTarget::Uri(text) => {
                let parsed = SipUri::parse(&text).filter(|u| u.scheme == "sip").ok_or("not a sip: URI")?;
                let ip: IpAddr = parsed.host.trim_matches(['[', ']']).parse().map_err(|_| "the SIP URI must name an IP address")?;
                if parsed
                    .params
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case("transport") && v.as_deref().is_some_and(|v| !v.eq_ignore_ascii_case("udp")))
                {
                    return Err("only UDP is supported for a supervisor URI".into());
                }
                let uri = rsip::Uri::try_from(text.as_str()).map_err(|_| "not a valid SIP URI")?;
                let peer = Peer { addr: SocketAddr::new(ip, parsed.port.unwrap_or(5060)), transport: Transport::Udp };
                (uri, peer, parsed.user.unwrap_or(parsed.host))
            }
        };
        let to = format!("<{uri}>");
        let ring = Duration::from_secs(self.cfg.ring_timeout_secs);
        self.dial(call_id, DialTarget { uri, peer, user, to }, OutRole::Supervisor { barge }, ring).await.map_err(str::to_string)?;
        Ok(Supervision::Ringing)
    }

    /// The queue's overflow time passed: dial its external number through the trunk,
    /// in parallel with any agent still being rung (the first to answer is bridged).
    async fn overflow(&mut self, call_id: &str) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        if call.phase != Phase::Queued || call.bridged().is_some() || call.legs.iter().any(|l| matches!(l.role, OutRole::External { .. })) {
            return;
        }
        let Some(rule) = self.cfg.queues.get(&call.info.queue).cloned() else {
            return;
        };
        let Some((number, trunk, peer)) = overflow_route(&self.cfg, &rule) else {
            tracing::warn!(call_id = %call_id, queue = %call.info.queue, "Overflow configured without a trunk outbound address.");
            return;
        };
        let param = if peer.transport == Transport::Tcp { ";transport=tcp" } else { "" };
        let Ok(uri) = rsip::Uri::try_from(format!("sip:{}@{}{param}", sip_user_safe(&number), peer.addr).as_str()) else {
            return;
        };
        if let Some(call) = self.calls.get_mut(call_id) {
            call.overflow_attempts += 1;
        }
        tracing::info!(call_id = %call_id, %number, %trunk, "Queue overflow: calling the external number.");
        let to = format!("<{uri}>");
        let ring = Duration::from_secs(rule.overflow_ring_secs);
        let target = DialTarget { uri, peer, user: number.clone(), to };
        if let Err(reason) = self.dial(call_id, target, OutRole::External { number: number.clone() }, ring).await {
            if let Some(call) = self.calls.get(call_id) {
                report(call, CallOutcome::ExternalFailed { number, reason: reason.into() });
            }
            self.retry_overflow(call_id);
        }
    }

    /// After a failed overflow call: if the caller still waits for an agent, calls the
    /// number again after the queue's `overflow_retry_secs`, up to `overflow_attempts`.
    fn retry_overflow(&mut self, call_id: &str) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Some(rule) = self.cfg.queues.get(&call.info.queue) else {
            return;
        };
        let waiting = call.phase == Phase::Queued && call.bridged().is_none();
        if waiting && rule.overflow_retry_secs > 0 && call.overflow_attempts < rule.overflow_attempts {
            tracing::info!(call_id = %call_id, attempts = call.overflow_attempts, retry_secs = rule.overflow_retry_secs, "Overflow call failed; retrying later.");
            call.overflow_at = Some(Self::now() + Duration::from_secs(rule.overflow_retry_secs));
        }
    }

    fn on_response(&mut self, key: TransactionKey, resp: Response, info: &Essentials) {
        let Some(ClientPurpose::LegInvite(call_id)) = self.client_tx.get(&key).cloned() else {
            return;
        };
        let code = resp.status_code.code();
        if code >= 200 {
            self.client_tx.remove(&key);
        }
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Some(i) = call.leg_by_key(&key) else {
            return;
        };
        let leg = &mut call.legs[i];
        match code {
            180 | 183 if !leg.reported_ringing => {
                leg.reported_ringing = true;
                if let Some(offer_id) = leg.offer_id() {
                    let ev = CallOutcome::Ringing { offer_id: offer_id.to_string() };
                    report(call, ev);
                }
            }
            100..=199 => {}
            200..=299 => {
                let sip_call_id = leg.sip_call_id.clone();
                self.on_leg_answer(&call_id, &sip_call_id, &resp, info);
            }
            _ => {
                let why = match code {
                    486 | 600 | 603 => LegFailure::Busy,
                    _ if leg.is_party() && leg.offer_id().is_some() => LegFailure::Unreachable(format!("agent phone answered {code}")),
                    _ => LegFailure::Unreachable(format!("answered {code}")),
                };
                let ev = leg.failure(why);
                // After our CANCEL (ring-no-answer, a fork that lost) the 487 needs no report.
                let report_it = leg.state == LegState::Ringing;
                let sip_call_id = leg.sip_call_id.clone();
                if report_it {
                    report(call, ev);
                }
                self.drop_leg(&call_id, &sip_call_id, false);
            }
        }
    }

    fn on_leg_answer(&mut self, call_id: &str, sip_call_id: &str, resp: &Response, info: &Essentials) {
        let vias = self.vias();
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Some(i) = call.leg_by_sip_call_id(sip_call_id) else {
            return;
        };
        let leg = &mut call.legs[i];
        if leg.dialog.is_some() {
            return; // a 2xx retransmission: re-ACKed via on_stray_2xx
        }
        let Some(mut dialog) = Dialog::as_uac(&leg.invite, resp, info) else {
            return;
        };
        // With a route set (a proxy such as the edge record-routed the INVITE), the ACK
        // and every later request of the leg go to its first hop.
        leg.peer = dialog.next_hop(leg.peer);
        let via = vias.get(leg.peer.transport).to_string();
        let invite_cseq = 1;
        let ack = dialog.request(Method::Ack, &via, "", Some(invite_cseq));
        let neg = sdp::SessionDescription::parse(resp.body()).and_then(|s| sdp::negotiate(&s));
        let peer = leg.peer;
        let cancelled = leg.state == LegState::Cancelling;
        leg.ring_deadline = None;
        leg.dialog = Some(dialog);
        if let Some(ack) = ack {
            self.transport.send(peer, to_bytes(&ack.into()));
        }
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let wanted = if call.legs[i].is_party() {
            call.phase == Phase::Queued && call.bridged().is_none()
        } else {
            call.phase == Phase::Bridged && call.bridged().is_some()
        };
        let leg = &call.legs[i];
        let neg = match neg {
            Ok(n) if !cancelled && wanted => n,
            other => {
                // Answered too late (after CANCEL, another fork won, the call moved on) or
                // with unusable SDP: hang up that leg.
                if !cancelled {
                    let reason = if other.is_err() { "phone answered with unusable SDP" } else { "call no longer waiting for this leg" };
                    let ev = leg.failure(LegFailure::Unreachable(reason.into()));
                    report(call, ev);
                }
                self.drop_leg(call_id, sip_call_id, true);
                return;
            }
        };
        let leg = &mut call.legs[i];
        leg.state = LegState::Answered;
        leg.media.command(MediaCommand::SetRemote(neg));
        let ev = match &leg.role {
            OutRole::Supervisor { barge } => {
                // The supervisor hears a mix of both parties (and, barging, is heard).
                leg.media.command(MediaCommand::Mix(true));
                let ev = CallOutcome::SupervisorJoined { user: leg.user.clone(), barge: *barge };
                tracing::info!(call_id = %call_id, supervisor = %leg.user, barge, "Supervisor joined.");
                report(call, ev);
                self.rewire(call_id, &[]);
                return;
            }
            OutRole::Agent { offer_id } => {
                VoiceStats::inc(&voice_stats().calls_answered);
                CallOutcome::Answered { offer_id: offer_id.clone(), agent: leg.user.clone() }
            }
            OutRole::External { number } => CallOutcome::ExternalAnswered { number: number.clone() },
        };
        let caller_media = call.caller.media.clone();
        let agent_media = leg.media.clone();
        caller_media.command(MediaCommand::Moh(false));
        caller_media.command(MediaCommand::StopPlayback);
        caller_media.command(MediaCommand::RelayTo(Some(agent_media.relay_input())));
        agent_media.command(MediaCommand::RelayTo(Some(caller_media.relay_input())));
        call.bridges += 1;
        call.overflow_at = None;
        let name = if call.bridges == 1 { file_safe(call_id) } else { format!("{}-{}", file_safe(call_id), call.bridges) };
        let path = self.cfg.recordings_dir.join(format!("{name}.wav"));
        if let Some(rec) = spawn_recorder(path) {
            caller_media.command(MediaCommand::Tap(Some((rec.mixer.clone(), true))));
            agent_media.command(MediaCommand::Tap(Some((rec.mixer.clone(), false))));
            call.recorder = Some(rec);
        }
        call.phase = Phase::Bridged;
        tracing::info!(call_id = %call_id, user = %call.legs[i].user, "Call answered; legs bridged.");
        report(call, ev);
        // Ring-all and overflow forks that lost the race stop ringing.
        self.cancel_forks(call_id, Some(sip_call_id));
    }

    /// Recomputes who hears whom on a bridged call: every answered supervisor gets a
    /// copy of the caller's and the bridged party's audio (mixed in its leg); a barging
    /// supervisor's audio is copied to both, which then mix their inputs. `gone` lists
    /// legs that left and must get no more copies.
    fn rewire(&mut self, call_id: &str, gone: &[LegId]) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let caller = call.caller.media.clone();
        let party = call.bridged().map(|l| l.media.clone());
        let supervisors: Vec<(MediaHandle, bool)> = call
            .legs
            .iter()
            .filter(|l| l.state == LegState::Answered)
            .filter_map(|l| match l.role {
                OutRole::Supervisor { barge } => Some((l.media.clone(), barge)),
                _ => None,
            })
            .collect();
        for id in gone {
            caller.command(MediaCommand::CopyTo(*id, None));
            if let Some(p) = &party {
                p.command(MediaCommand::CopyTo(*id, None));
            }
        }
        let barging = party.is_some() && supervisors.iter().any(|(_, b)| *b);
        if barging != call.mixing {
            call.mixing = barging;
            caller.command(MediaCommand::Mix(barging));
            if let Some(p) = &party {
                p.command(MediaCommand::Mix(barging));
            }
        }
        for (sup, barge) in &supervisors {
            caller.command(MediaCommand::CopyTo(sup.id, Some(sup.relay_input())));
            sup.command(MediaCommand::CopyTo(caller.id, barge.then(|| caller.relay_input())));
            if let Some(p) = &party {
                p.command(MediaCommand::CopyTo(sup.id, Some(sup.relay_input())));
                sup.command(MediaCommand::CopyTo(p.id, barge.then(|| p.relay_input())));
            }
        }
    }

    /// Blind transfer: a bridged call goes back to waiting (agent leg ended with BYE;
    /// a supervisor leg ends with it).
    fn release_agent(&mut self, call_id: &str) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if call.phase != Phase::Bridged {
            return;
        }
        call.phase = Phase::Queued;
        call.held = false;
        if let Some(rec) = call.recorder.take() {
            let _ = rec.stop.send(());
        }
        call.caller.media.command(MediaCommand::Tap(None));
        tracing::info!(call_id = %call_id, "Agent leg released; caller waits again.");
        if let Some(leg) = call.bridged().map(|l| l.sip_call_id.clone()) {
            self.drop_leg(call_id, &leg, true);
        }
    }

    /// Hub-side hold: music on hold to the caller, no relay either way.
    fn hold(&mut self, call_id: &str, on: bool) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Some(agent) = call.bridged() else {
            return;
        };
        if call.phase != Phase::Bridged || call.held == on {
            return;
        }
        let (caller, agent) = (call.caller.media.clone(), agent.media.clone());
        call.held = on;
        if on {
            caller.command(MediaCommand::RelayTo(None));
            agent.command(MediaCommand::RelayTo(None));
            caller.command(MediaCommand::Moh(true));
        } else {
            caller.command(MediaCommand::Moh(false));
            caller.command(MediaCommand::RelayTo(Some(agent.relay_input())));
            agent.command(MediaCommand::RelayTo(Some(caller.relay_input())));
        }
        tracing::info!(call_id = %call_id, on, "Hub-side hold.");
    }

    /// Ends one outgoing leg (BYE when `bye` and it has a dialog) and forgets it. When
    /// the bridged party leaves, the caller is back on hold music and supervision ends.
    fn drop_leg(&mut self, call_id: &str, sip_call_id: &str, bye: bool) {
        let vias = self.vias();
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Some(i) = call.leg_by_sip_call_id(sip_call_id) else {
            return;
        };
        let mut dropped = vec![(call.legs.remove(i), bye)];
        let was_bridge = dropped[0].0.is_party() && dropped[0].0.state == LegState::Answered;
        let overflow_failed = matches!(dropped[0].0.role, OutRole::External { .. }) && dropped[0].0.state != LegState::Answered;
        if was_bridge {
            call.caller.media.command(MediaCommand::RelayTo(None));
            call.caller.media.command(MediaCommand::Moh(true));
            if std::mem::take(&mut call.mixing) {
                call.caller.media.command(MediaCommand::Mix(false));
            }
            // Supervision is of a conversation with an agent: it ends with it.
            let (supervisors, rest): (Vec<OutLeg>, Vec<OutLeg>) = std::mem::take(&mut call.legs).into_iter().partition(|l| !l.is_party());
            call.legs = rest;
            dropped.extend(supervisors.into_iter().map(|l| (l, true)));
        }
        let mut requests = Vec::new();
        let mut gone = Vec::new();
        let mut left = Vec::new();
        for (mut leg, bye) in dropped {
            if was_bridge && !leg.is_party() && leg.state == LegState::Answered {
                left.push(CallOutcome::SupervisorLeft { user: leg.user.clone() });
            }
            if bye {
                requests.extend(leg.hangup(&vias));
            }
            leg.media.command(MediaCommand::Stop);
            self.by_leg.remove(&leg.media.id);
            self.by_sip_call_id.remove(&leg.sip_call_id);
            gone.push(leg.media.id);
        }
        for (req, peer) in requests {
            self.send_request(req, peer, ClientPurpose::Other);
        }
        if let Some(call) = self.calls.get(call_id) {
            for ev in left {
                report(call, ev);
            }
        }
        self.rewire(call_id, &gone);
        if overflow_failed {
            self.retry_overflow(call_id);
        }
    }

    fn on_stray_2xx(&mut self, info: &Essentials) {
        // A retransmitted 2xx means our ACK was lost: ACK again (§13.2.2.4).
        let Some((call_id, Side::Agent)) = self.by_sip_call_id.get(&info.call_id).cloned() else {
            return;
        };
        let vias = self.vias();
        let via = |t: Transport| vias.get(t).to_string();
        let Some(leg) = self.calls.get_mut(&call_id).and_then(|c| c.leg_mut(&info.call_id)) else {
            return;
        };
        let peer = leg.peer;
        let ack = leg.dialog.as_mut().and_then(|d| d.request(Method::Ack, &via(peer.transport), "", Some(info.cseq)));
        if let Some(ack) = ack {
            self.transport.send(peer, to_bytes(&ack.into()));
        }
    }

    fn on_tx_timeout(&mut self, key: TransactionKey) {
        let Some(ClientPurpose::LegInvite(call_id)) = self.client_tx.remove(&key) else {
            return;
        };
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let Some(i) = call.leg_by_key(&key) else {
            return;
        };
        let leg = &call.legs[i];
        if leg.state == LegState::Ringing {
            let reason = if leg.offer_id().is_some() { "agent phone did not respond" } else { "no response" };
            let ev = leg.failure(LegFailure::Unreachable(reason.into()));
            report(call, ev);
        }
        let sip_call_id = leg.sip_call_id.clone();
        self.drop_leg(&call_id, &sip_call_id, false);
    }

    fn on_ack(&mut self, req: &Request, info: &Essentials) {
        let Some((call_id, side)) = self.by_sip_call_id.get(&info.call_id).cloned() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        // RFC 3264 §4: when our 2xx carried the offer, the ACK carries the answer.
        let answer = || sdp::SessionDescription::parse(req.body()).and_then(|s| sdp::negotiate(&s));
        match side {
            Side::Caller => {
                call.caller.answer = None;
                let Some(pending) = call.caller.pending_offer.take() else {
                    return;
                };
                match answer() {
                    Ok(neg) => {
                        call.caller.media.command(MediaCommand::SetRemote(neg));
                        call.caller.codec = neg.codec;
                        call.caller.telephone_event = neg.telephone_event;
                        if let Some(flow) = pending.flow {
                            tracing::info!(call_id = %call_id, "Late-offer call: answer received in the ACK.");
                            self.start_ivr(&call_id, flow);
                        }
                    }
                    // RFC 3261 §13.2.1: an ACK without an acceptable answer leaves the
                    // session without media; a new call is ended with BYE.
                    Err(error) if pending.flow.is_some() => {
                        tracing::info!(call_id = %call_id, %error, "Late-offer call: no usable SDP answer in the ACK; hanging up.");
                        self.end_call(&call_id, Side::Hub);
                    }
                    Err(error) => tracing::info!(call_id = %call_id, %error, "No usable SDP answer in the ACK; media unchanged."),
                }
            }
            _ => {
                let Some(leg) = call.leg_mut(&info.call_id) else {
                    return;
                };
                leg.answer = None;
                if std::mem::take(&mut leg.offer_pending) {
                    match answer() {
                        Ok(neg) => leg.media.command(MediaCommand::SetRemote(neg)),
                        Err(error) => tracing::info!(call_id = %call_id, %error, "No usable SDP answer in the ACK; media unchanged."),
                    }
                }
            }
        }
    }

    fn on_reinvite(&mut self, key: TransactionKey, req: Request, info: Essentials) {
        let Some((call_id, side)) = self.by_sip_call_id.get(&info.call_id).cloned() else {
            self.reply(&key, &req, 481, Vec::new());
            return;
        };
        let contact = self.contact(Transport::Udp);
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        // RFC 3261 §14.2 / RFC 5407 §3.1.5: while our previous 2xx is not ACKed the
        // offer/answer exchange is still open, so a new INVITE is a glare: 491.
        let (pending, dialog_ok) = match side {
            Side::Caller => (
                call.caller.answer.is_some(),
                call.caller.dialog.matches(&info) && call.caller.dialog.on_remote_request(&req, &info).is_ok(),
            ),
            _ => match call.leg_mut(&info.call_id).and_then(|a| {
                let pending = a.answer.is_some();
                a.dialog.as_mut().map(|d| (pending, d))
            }) {
                Some((pending, d)) => (pending, d.on_remote_request(&req, &info).is_ok()),
                None => (false, false),
            },
        };
        if !dialog_ok {
            self.reply(&key, &req, 500, vec![make_header("Retry-After", "1")]);
            return;
        }
        if pending {
            self.reply(&key, &req, 491, Vec::new());
            return;
        }
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let (media, other, local_tag, session_id, version, codec, te) = match side {
            Side::Caller => {
                call.caller.sdp_version += 1;
                (
                    call.caller.media.clone(),
                    call.bridged().map(|a| a.media.clone()),
                    call.caller.dialog.id.local_tag.clone(),
                    call.caller.session_id,
                    call.caller.sdp_version,
                    Some(call.caller.codec),
                    call.caller.telephone_event,
                )
            }
            _ => {
                // Only the bridged party's hold puts the caller on music; a supervisor's does not.
                let other = call.bridged().is_some_and(|l| l.sip_call_id == info.call_id).then(|| call.caller.media.clone());
                let Some(agent) = call.leg_mut(&info.call_id) else {
                    return;
                };
                agent.sdp_version += 1;
                let tag = agent.dialog.as_ref().map(|d| d.id.local_tag.clone()).unwrap_or_default();
                (agent.media.clone(), other, tag, 1, agent.sdp_version, None, Some(TELEPHONE_EVENT_PT))
            }
        };
        let offerless = req.body().iter().all(u8::is_ascii_whitespace);
        let body = if offerless {
            // Offerless re-INVITE: we offer in the 2xx, the answer comes in the ACK.
            sdp::render(media.local, session_id, version, &[codec.unwrap_or(Codec::Pcmu)], te, Direction::SendRecv)
        } else {
            match sdp::SessionDescription::parse(req.body()).and_then(|s| sdp::negotiate(&s)) {
                Ok(neg) => {
                    let hold = neg.is_hold();
                    media.command(MediaCommand::SetRemote(Negotiated { codec: codec.unwrap_or(neg.codec), ..neg }));
                    // Hold: the other party hears music on hold until resumed.
                    if let Some(other) = &other {
                        if call.phase == Phase::Bridged {
                            other.command(MediaCommand::Moh(hold));
                        }
                    }
                    tracing::info!(call_id = %call_id, hold, "Re-INVITE accepted.");
                    sdp::render(
                        media.local,
                        session_id,
                        version,
                        &[codec.unwrap_or(neg.codec)],
                        neg.telephone_event,
                        neg.direction.answer(),
                    )
                }
                Err(_) => {
                    self.reply(&key, &req, 488, Vec::new());
                    return;
                }
            }
        };
        let mut extra = vec![
            make_header("Contact", format!("<{contact}>")),
            make_header("Allow", ALLOW),
            make_header("Content-Type", "application/sdp"),
        ];
        extra.push(make_header("Server", self.cfg.user_agent.clone()));
        let resp = response_to(&req, 200, Some(&local_tag), extra, body.into_bytes());
        let peer = self.layer.peer_of(&key);
        let bytes = to_bytes(&resp.clone().into());
        self.respond(&key, resp);
        if let Some(peer) = peer {
            let r = AnswerRetransmitter::new(bytes, peer.transport.is_reliable(), self.layer.timers(), Self::now());
            if let Some(call) = self.calls.get_mut(&call_id) {
                match side {
                    Side::Caller => call.caller.answer = Some((r, peer)),
                    _ => {
                        if let Some(a) = call.leg_mut(&info.call_id) {
                            a.answer = Some((r, peer));
                        }
                    }
                }
            }
        }
        // Offerless re-INVITE: our 2xx carried the offer, so the ACK carries the answer.
        if offerless {
            if let Some(call) = self.calls.get_mut(&call_id) {
                match side {
                    Side::Caller => call.caller.pending_offer = Some(PendingOffer { flow: None }),
                    _ => {
                        if let Some(a) = call.leg_mut(&info.call_id) {
                            a.offer_pending = true;
                        }
                    }
                }
            }
        }
    }

    fn on_bye(&mut self, key: TransactionKey, req: Request, info: Essentials) {
        let Some((call_id, side)) = self.by_sip_call_id.get(&info.call_id).cloned() else {
            self.reply(&key, &req, 481, Vec::new());
            return;
        };
        self.reply(&key, &req, 200, Vec::new());
        if side == Side::Agent {
            let Some(call) = self.calls.get(&call_id) else {
                return;
            };
            let Some(leg) = call.leg_by_sip_call_id(&info.call_id).map(|i| &call.legs[i]) else {
                return;
            };
            let is_bridge = call.phase == Phase::Bridged && leg.is_party() && leg.state == LegState::Answered;
            if !is_bridge {
                // A supervisor left (the call goes on), or a leg that never got bridged
                // hung up (the caller stays queued).
                if !leg.is_party() && leg.state == LegState::Answered {
                    tracing::info!(call_id = %call_id, supervisor = %leg.user, "Supervisor left.");
                    report(call, CallOutcome::SupervisorLeft { user: leg.user.clone() });
                }
                self.drop_leg(&call_id, &info.call_id, false);
                return;
            }
        }
        self.end_call(&call_id, side);
    }

    fn on_cancel(&mut self, key: TransactionKey, req: Request, info: Essentials) {
        let invite_key = key.cancelled_invite();
        if !self.layer.is_pending(&invite_key) {
            // §9.2: no matching pending INVITE: 481; answered already: 200, no effect.
            let code = if self.by_sip_call_id.contains_key(&info.call_id) { 200 } else { 481 };
            self.reply(&key, &req, code, Vec::new());
            return;
        }
        self.reply(&key, &req, 200, Vec::new());
        let mut invite = req.clone();
        invite.method = Method::Invite;
        let tag = random_token();
        let mut resp = response_to(&invite, 487, Some(&tag), Vec::new(), Vec::new());
        for h in resp.headers.iter_mut() {
            if let rsip::Header::CSeq(c) = h {
                use rsip::headers::UntypedHeader;
                c.replace(format!("{} INVITE", info.cseq));
            }
        }
        self.respond(&invite_key, resp);
        if let Some((call_id, _)) = self.by_sip_call_id.get(&info.call_id).cloned() {
            self.end_call(&call_id, Side::Caller);
        }
    }

    fn on_info(&mut self, key: TransactionKey, req: Request, info: Essentials) {
        let Some((call_id, side)) = self.by_sip_call_id.get(&info.call_id).cloned() else {
            self.reply(&key, &req, 481, Vec::new());
            return;
        };
        let ct = req.value_of("Content-Type").unwrap_or_default().to_string();
        let digit = parse_info_body(&ct, req.body());
        self.reply(&key, &req, if digit.is_some() || req.body().is_empty() { 200 } else { 415 }, Vec::new());
        if let (Some(d), Side::Caller) = (digit, side) {
            self.on_digit(&call_id, d);
        }
    }

    /// Tears a call down: BYE/CANCEL to the legs still up, media stopped, core told.
    fn end_call(&mut self, call_id: &str, by: Side) {
        let vias = self.vias();
        let via = |t: Transport| vias.get(t).to_string();
        let Some(mut call) = self.calls.remove(call_id) else {
            return;
        };
        let mut requests = Vec::new();
        if by != Side::Caller {
            let t = call.caller.peer.transport;
            if let Some(bye) = call.caller.dialog.request(Method::Bye, &via(t), "", None) {
                requests.push((bye, call.caller.peer));
            }
        }
        let mut agent_answered = false;
        for leg in call.legs.iter_mut() {
            let bridged = leg.is_party() && leg.state == LegState::Answered;
            agent_answered |= bridged;
            // Every leg still up is ended, except the bridged party that hung up.
            if !(bridged && by == Side::Agent) {
                requests.extend(leg.hangup(&vias));
            }
            leg.media.command(MediaCommand::Stop);
            self.by_leg.remove(&leg.media.id);
            self.by_sip_call_id.remove(&leg.sip_call_id);
        }
        call.caller.media.command(MediaCommand::Stop);
        self.by_leg.remove(&call.caller.media.id);
        self.by_sip_call_id.remove(&call.id);
        for (req, peer) in requests {
            self.send_request(req, peer, ClientPurpose::Other);
        }
        tracing::info!(call_id = %call_id, by = ?by, phase = ?call.phase, "Call ended.");
        VoiceStats::add(&voice_stats().active_calls, -1);
        // Abandoned: the caller hung up before any agent (or external party) answered,
        // in the IVR or the queue; a voicemail is a message left, not an abandon.
        if by == Side::Caller && !agent_answered && call.phase != Phase::Voicemail && call.voicemail.is_none() {
            VoiceStats::inc(&voice_stats().calls_abandoned);
        }
        let ticket = call.ticket.clone();
        if call.voicemail.is_some_and(|v| v.started) {
            // Reported when the media task has closed the file (RecordingDone).
            self.pending_voicemails.insert(call.caller.media.id, (call.info.clone(), call.reports.clone()));
            return;
        }
        // Queued behind every earlier report of this call (an answer a moment ago).
        match (call.phase, ticket) {
            (Phase::Bridged, Some(ticket)) if agent_answered => call.reports.ended_recorded(ticket, by, call.recorder.take()),
            (Phase::Queued | Phase::Enqueuing | Phase::Bridged, Some(ticket)) if by == Side::Caller => call.reports.abandon(ticket),
            (_, Some(ticket)) => call.reports.event(ticket, CallOutcome::Ended { by, recording: None }),
            // Hung up in the IVR: no interaction; the nodes visited go to the IVR report.
            (Phase::Ivr, None) if by == Side::Caller => {
                let mut info = call.info.clone();
                info.ivr_path = call.ivr.as_ref().map(|s| s.path_at_hangup()).unwrap_or_default();
                call.reports.hung_up_in_ivr(info);
            }
            // Enqueueing (abandoned when core's answer arrives), or ended by the hub in the IVR.
            (_, None) => {}
        }
    }
}

/// §9.1: CANCEL mirrors the INVITE's Request-URI, Call-ID, From, To, CSeq number
/// and top Via (same branch), with Max-Forwards and Route copied.
fn cancel_for(invite: &Request) -> Request {
    let mut headers = rsip::Headers::default();
    if let Some(via) = invite.value_of("Via") {
        headers.push(make_header("Via", via));
    }
    headers.push(make_header("Max-Forwards", "70"));
    for name in ["From", "To", "Call-ID"] {
        if let Some(v) = invite.value_of(name) {
            headers.push(make_header(name, v));
        }
    }
    let n = invite.value_of("CSeq").and_then(|c| c.split_whitespace().next()).unwrap_or("1").to_string();
    headers.push(make_header("CSeq", format!("{n} CANCEL")));
    for r in invite.values_of("Route") {
        headers.push(make_header("Route", r));
    }
    Request { method: Method::Cancel, uri: invite.uri.clone(), version: rsip::Version::V2, headers, body: Vec::new() }
}

/// `ip:port` with IPv6 brackets; port 0 means "no port".
fn host_port(ip: IpAddr, port: u16) -> String {
    let host = match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    if port == 0 {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// Keeps characters safe in a file name.
fn file_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Whether `c` may stand unescaped in a SIP user part (RFC 3261 §25.1: unreserved
/// characters and the user-safe marks).
pub(crate) fn sip_user_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c)
}

/// Keeps characters allowed unescaped in a SIP user part.
fn sip_user_safe(s: &str) -> String {
    let cleaned: String = s.chars().filter(|c| sip_user_char(*c)).collect();
    if cleaned.is_empty() {
        "anonymous".into()
    } else {
        cleaned
    }
}

/// The overflow target of a queue rule: number, trunk name and the trunk's outbound
/// address (the rule's trunk, else the first trunk that has an outbound address).
fn overflow_route(cfg: &VoiceConfig, rule: &QueueVoiceConfig) -> Option<(String, String, Peer)> {
    let number = rule.overflow_number.clone()?;
    let trunk = match &rule.overflow_trunk {
        Some(name) => cfg.trunks.iter().find(|t| &t.name == name)?,
        None => cfg.trunks.iter().find(|t| t.outbound_address.is_some())?,
    };
    let transport = match trunk.outbound_transport {
        OutboundTransport::Udp => Transport::Udp,
        OutboundTransport::Tcp => Transport::Tcp,
    };
    Some((number, trunk.name.clone(), Peer { addr: trunk.outbound_address?, transport }))
}

/// Prompt names that say `n` (0-20 as words, then tens and units).
pub fn number_prompts(n: u32) -> Vec<String> {
    match n {
        0..=20 => vec![n.to_string()],
        21..=99 => {
            let mut v = vec![(n / 10 * 10).to_string()];
            if !n.is_multiple_of(10) {
                v.push((n % 10).to_string());
            }
            v
        }
        _ => vec!["many".to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_spoken_in_parts() {
        assert_eq!(number_prompts(7), vec!["7"]);
        assert_eq!(number_prompts(42), vec!["40", "2"]);
        assert_eq!(number_prompts(30), vec!["30"]);
        assert_eq!(number_prompts(500), vec!["many"]);
    }

    #[test]
    fn cancel_mirrors_invite() {
        let (msg, _) = crate::sip::message::parse(crate::sip::message::tests_support::INVITE.as_bytes(), 65_535).unwrap();
        let rsip::SipMessage::Request(invite) = msg else { panic!("request") };
        let c = cancel_for(&invite).to_string();
        assert!(c.starts_with("CANCEL sip:+4930123@127.0.0.1 SIP/2.0"));
        assert!(c.contains("branch=z9hG4bK776asdhds"));
        assert!(c.contains("CSeq: 314159 CANCEL"));
        assert_eq!(sip_user_safe("+49 30 <x>"), "+4930x");
        assert_eq!(file_safe("a@b/c"), "a_b_c");
    }
}
