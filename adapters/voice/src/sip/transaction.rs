//! RFC 3261 §17 transactions as pure state machines, plus the layer that matches
//! messages to them. Time is passed in (`now`); timers are deadlines the runtime
//! sleeps until before calling `on_timer`. Nothing here does I/O.
//!
//! The INVITE machines include the RFC 6026 "Accepted" state so retransmitted 2xx
//! responses and INVITEs are absorbed instead of creating new transactions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::{Method, Request, Response, SipMessage};

use super::message::{make_header, response_to, to_bytes, HeaderLookup};
use super::validate::{inspect, Essentials, Inspected};
use super::via::{response_destination, stamp_received};
use super::Transport;

/// Timer base values (RFC 3261 Appendix A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate (default 500 ms).
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Maximum time a message remains in the network (5 s).
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

impl Timers {
    /// 64·T1: Timers B, F, H, J, L, M and the 2xx give-up time.
    pub fn t1x64(&self) -> Duration {
        self.t1 * 64
    }
}

/// Transaction state (union of the four machines' states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxState {
    /// INVITE client, request sent.
    Calling,
    /// Non-INVITE client or server, no provisional yet.
    Trying,
    /// A provisional response was received or sent.
    Proceeding,
    /// A final non-2xx response was received or sent.
    Completed,
    /// INVITE server: ACK for the non-2xx final received.
    Confirmed,
    /// RFC 6026: a 2xx to INVITE was received or sent.
    Accepted,
    /// Done; the transaction can be removed.
    Terminated,
}

/// What a transaction asks its owner to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxAction {
    /// Transmit these bytes to the transaction's peer.
    Send(Bytes),
    /// Pass this message to the transaction user.
    Deliver(SipMessage),
    /// A timer (B, F or H) expired without the expected answer.
    Timeout,
    /// The transaction is over.
    Terminated,
}

/// A retransmission timer: next firing and current interval.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    at: Instant,
    interval: Duration,
}

fn earliest(deadlines: &[Option<Instant>]) -> Option<Instant> {
    deadlines.iter().flatten().min().copied()
}

fn due(t: Option<Instant>, now: Instant) -> bool {
    t.is_some_and(|t| t <= now)
}

/// RFC 3261 §17.1.1: INVITE client transaction.
#[derive(Debug)]
pub struct InviteClient {
    state: TxState,
    request: Request,
    bytes: Bytes,
    reliable: bool,
    timers: Timers,
    timer_a: Option<Backoff>,
    timer_b: Option<Instant>,
    timer_d: Option<Instant>,
    timer_m: Option<Instant>,
    ack: Option<Bytes>,
}

impl InviteClient {
    /// Starts the transaction; the returned actions send the INVITE.
    pub fn new(request: Request, reliable: bool, timers: Timers, now: Instant) -> (Self, Vec<TxAction>) {
        let bytes = to_bytes(&request.clone().into());
        let tx = Self {
            state: TxState::Calling,
            request,
            bytes: bytes.clone(),
            reliable,
            timers,
            // §17.1.1.2: Timer A only for unreliable transports.
            timer_a: (!reliable).then(|| Backoff { at: now + timers.t1, interval: timers.t1 }),
            timer_b: Some(now + timers.t1x64()),
            timer_d: None,
            timer_m: None,
            ack: None,
        };
        (tx, vec![TxAction::Send(bytes)])
    }

    /// Current state.
    pub fn state(&self) -> TxState {
        self.state
    }

    /// The INVITE this transaction sent (for building CANCEL, §9.1).
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// Feeds a response matched to this transaction.
    pub fn on_response(&mut self, response: Response, now: Instant) -> Vec<TxAction> {
        let code = response.status_code.code();
        match (self.state, code) {
            (TxState::Calling | TxState::Proceeding, 100..=199) => {
                self.state = TxState::Proceeding;
                self.timer_a = None;
                self.timer_b = None;
                vec![TxAction::Deliver(response.into())]
            }
            (TxState::Calling | TxState::Proceeding, 200..=299) => {
                // RFC 6026 §7.2: Accepted, Timer M absorbs/forwards 2xx retransmissions.
                self.state = TxState::Accepted;
                self.timer_a = None;
                self.timer_b = None;
                self.timer_m = Some(now + self.timers.t1x64());
                vec![TxAction::Deliver(response.into())]
            }
            (TxState::Accepted, 200..=299) => vec![TxAction::Deliver(response.into())],
            (TxState::Calling | TxState::Proceeding, 300..=699) => {
                // §17.1.1.3: the transaction itself ACKs non-2xx finals.
                let ack = to_bytes(&ack_for_non_2xx(&self.request, &response).into());
                self.ack = Some(ack.clone());
                self.state = TxState::Completed;
                self.timer_a = None;
                self.timer_b = None;
                let wait = if self.reliable { Duration::ZERO } else { Duration::from_secs(32).max(self.timers.t1x64()) };
                self.timer_d = Some(now + wait);
                vec![TxAction::Send(ack), TxAction::Deliver(response.into())]
            }
            (TxState::Completed, 300..=699) => self.ack.clone().map(TxAction::Send).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// Fires due timers.
    pub fn on_timer(&mut self, now: Instant) -> Vec<TxAction> {
        let mut out = Vec::new();
        if due(self.timer_b, now) {
            self.terminate();
            return vec![TxAction::Timeout, TxAction::Terminated];
        }
        if let Some(a) = self.timer_a.filter(|a| a.at <= now) {
            // §17.1.1.2: Timer A doubles each time.
            let interval = a.interval * 2;
            self.timer_a = Some(Backoff { at: now + interval, interval });
            out.push(TxAction::Send(self.bytes.clone()));
        }
        if due(self.timer_d, now) || due(self.timer_m, now) {
            self.terminate();
            out.push(TxAction::Terminated);
        }
        out
    }

    /// Next timer deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        earliest(&[self.timer_a.map(|a| a.at), self.timer_b, self.timer_d, self.timer_m])
    }

    fn terminate(&mut self) {
        self.state = TxState::Terminated;
        self.timer_a = None;
        self.timer_b = None;
        self.timer_d = None;
        self.timer_m = None;
    }
}

/// §17.1.1.3: the ACK for a non-2xx final response.
pub fn ack_for_non_2xx(invite: &Request, response: &Response) -> Request {
    let mut headers = rsip::Headers::default();
    if let Some(via) = invite.values_of("Via").first() {
        let top = super::message::split_list(via).first().map(|s| s.to_string()).unwrap_or_default();
        headers.push(make_header("Via", top));
    }
    headers.push(make_header("Max-Forwards", "70"));
    for name in ["From", "Call-ID"] {
        if let Some(v) = invite.value_of(name) {
            headers.push(make_header(name, v));
        }
    }
    if let Some(to) = response.value_of("To") {
        headers.push(make_header("To", to));
    }
    let cseq = invite.value_of("CSeq").and_then(|c| c.split_whitespace().next()).unwrap_or("1").to_string();
    headers.push(make_header("CSeq", format!("{cseq} ACK")));
    for route in invite.values_of("Route") {
        headers.push(make_header("Route", route));
    }
    Request { method: Method::Ack, uri: invite.uri.clone(), version: rsip::Version::V2, headers, body: Vec::new() }
}

/// RFC 3261 §17.1.2: non-INVITE client transaction.
#[derive(Debug)]
pub struct NonInviteClient {
    state: TxState,
    bytes: Bytes,
    reliable: bool,
    timers: Timers,
    timer_e: Option<Backoff>,
    timer_f: Option<Instant>,
    timer_k: Option<Instant>,
}

impl NonInviteClient {
    /// Starts the transaction; the returned actions send the request.
    pub fn new(request: &Request, reliable: bool, timers: Timers, now: Instant) -> (Self, Vec<TxAction>) {
        let bytes = to_bytes(&request.clone().into());
        let tx = Self {
            state: TxState::Trying,
            bytes: bytes.clone(),
            reliable,
            timers,
            timer_e: (!reliable).then(|| Backoff { at: now + timers.t1, interval: timers.t1 }),
            timer_f: Some(now + timers.t1x64()),
            timer_k: None,
        };
        (tx, vec![TxAction::Send(bytes)])
    }

    /// Current state.
    pub fn state(&self) -> TxState {
        self.state
    }

    /// Feeds a response matched to this transaction.
    pub fn on_response(&mut self, response: Response, now: Instant) -> Vec<TxAction> {
        let code = response.status_code.code();
        match (self.state, code) {
            (TxState::Trying | TxState::Proceeding, 100..=199) => {
                self.state = TxState::Proceeding;
                vec![TxAction::Deliver(response.into())]
            }
            (TxState::Trying | TxState::Proceeding, 200..=699) => {
                self.state = TxState::Completed;
                self.timer_e = None;
                self.timer_f = None;
                // §17.1.2.2: Timer K = T4 for unreliable transports, zero otherwise.
                let wait = if self.reliable { Duration::ZERO } else { self.timers.t4 };
                self.timer_k = Some(now + wait);
                vec![TxAction::Deliver(response.into())]
            }
            _ => Vec::new(),
        }
    }

    /// Fires due timers.
    pub fn on_timer(&mut self, now: Instant) -> Vec<TxAction> {
        if due(self.timer_f, now) {
            self.terminate();
            return vec![TxAction::Timeout, TxAction::Terminated];
        }
        if due(self.timer_k, now) {
            self.terminate();
            return vec![TxAction::Terminated];
        }
        let mut out = Vec::new();
        if let Some(e) = self.timer_e.filter(|e| e.at <= now) {
            // §17.1.2.2: doubling up to T2 while Trying; T2 once Proceeding.
            let interval = if self.state == TxState::Proceeding { self.timers.t2 } else { (e.interval * 2).min(self.timers.t2) };
            self.timer_e = Some(Backoff { at: now + interval, interval });
            out.push(TxAction::Send(self.bytes.clone()));
        }
        out
    }

    /// Next timer deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        earliest(&[self.timer_e.map(|e| e.at), self.timer_f, self.timer_k])
    }

    fn terminate(&mut self) {
        self.state = TxState::Terminated;
        self.timer_e = None;
        self.timer_f = None;
        self.timer_k = None;
    }
}

/// RFC 3261 §17.2.1 (with RFC 6026): INVITE server transaction.
#[derive(Debug)]
pub struct InviteServer {
    state: TxState,
    reliable: bool,
    timers: Timers,
    last_response: Option<Bytes>,
    timer_g: Option<Backoff>,
    timer_h: Option<Instant>,
    timer_i: Option<Instant>,
    timer_l: Option<Instant>,
}

impl InviteServer {
    /// Starts the transaction: delivers the INVITE to the TU and sends 100 Trying
    /// at once (§17.2.1 allows skipping it only if the TU answers within 200 ms).
    pub fn new(invite: Request, reliable: bool, timers: Timers) -> (Self, Vec<TxAction>) {
        let trying = to_bytes(&response_to(&invite, 100, None, Vec::new(), Vec::new()).into());
        let tx = Self {
            state: TxState::Proceeding,
            reliable,
            timers,
            last_response: Some(trying.clone()),
            timer_g: None,
            timer_h: None,
            timer_i: None,
            timer_l: None,
        };
        (tx, vec![TxAction::Send(trying), TxAction::Deliver(invite.into())])
    }

    /// Current state.
    pub fn state(&self) -> TxState {
        self.state
    }

    /// A retransmitted INVITE or an ACK matched to this transaction.
    pub fn on_request(&mut self, request: Request, now: Instant) -> Vec<TxAction> {
        match (self.state, request.method) {
            (TxState::Proceeding | TxState::Completed, Method::Invite) => {
                self.last_response.clone().map(TxAction::Send).into_iter().collect()
            }
            (TxState::Completed, Method::Ack) => {
                // §17.2.1: Timer I = T4 for unreliable transports, zero for reliable.
                self.state = TxState::Confirmed;
                self.timer_g = None;
                self.timer_h = None;
                let wait = if self.reliable { Duration::ZERO } else { self.timers.t4 };
                self.timer_i = Some(now + wait);
                Vec::new()
            }
            // RFC 6026 §7.1: in Accepted, retransmitted INVITEs are absorbed and a
            // matching ACK (from UAs that reuse the branch) goes to the TU.
            (TxState::Accepted, Method::Ack) => vec![TxAction::Deliver(request.into())],
            _ => Vec::new(),
        }
    }

    /// The TU responds.
    pub fn respond(&mut self, response: Response, now: Instant) -> Vec<TxAction> {
        if self.state != TxState::Proceeding {
            return Vec::new();
        }
        let code = response.status_code.code();
        let bytes = to_bytes(&response.into());
        self.last_response = Some(bytes.clone());
        match code {
            100..=199 => {}
            200..=299 => {
                // The TU retransmits the 2xx itself (§13.3.1.4, see `AnswerRetransmitter`).
                self.state = TxState::Accepted;
                self.timer_l = Some(now + self.timers.t1x64());
            }
            _ => {
                self.state = TxState::Completed;
                self.timer_g = (!self.reliable).then(|| Backoff { at: now + self.timers.t1, interval: self.timers.t1 });
                self.timer_h = Some(now + self.timers.t1x64());
            }
        }
        vec![TxAction::Send(bytes)]
    }

    /// Fires due timers.
    pub fn on_timer(&mut self, now: Instant) -> Vec<TxAction> {
        if due(self.timer_h, now) {
            // §17.2.1: no ACK arrived; tell the TU.
            self.terminate();
            return vec![TxAction::Timeout, TxAction::Terminated];
        }
        if due(self.timer_i, now) || due(self.timer_l, now) {
            self.terminate();
            return vec![TxAction::Terminated];
        }
        let mut out = Vec::new();
        if let Some(g) = self.timer_g.filter(|g| g.at <= now) {
            // §17.2.1: Timer G doubles up to T2.
            let interval = (g.interval * 2).min(self.timers.t2);
            self.timer_g = Some(Backoff { at: now + interval, interval });
            out.extend(self.last_response.clone().map(TxAction::Send));
        }
        out
    }

    /// Next timer deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        earliest(&[self.timer_g.map(|g| g.at), self.timer_h, self.timer_i, self.timer_l])
    }

    fn terminate(&mut self) {
        self.state = TxState::Terminated;
        self.timer_g = None;
        self.timer_h = None;
        self.timer_i = None;
        self.timer_l = None;
    }
}

/// RFC 3261 §17.2.2: non-INVITE server transaction.
#[derive(Debug)]
pub struct NonInviteServer {
    state: TxState,
    reliable: bool,
    timers: Timers,
    last_response: Option<Bytes>,
    timer_j: Option<Instant>,
}

impl NonInviteServer {
    /// Starts the transaction and delivers the request to the TU.
    pub fn new(request: Request, reliable: bool, timers: Timers) -> (Self, Vec<TxAction>) {
        let tx = Self { state: TxState::Trying, reliable, timers, last_response: None, timer_j: None };
        (tx, vec![TxAction::Deliver(request.into())])
    }

    /// Current state.
    pub fn state(&self) -> TxState {
        self.state
    }

    /// A retransmission of the request.
    pub fn on_request(&mut self, _request: Request) -> Vec<TxAction> {
        match self.state {
            // §17.2.2: retransmissions in Trying are discarded.
            TxState::Proceeding | TxState::Completed => self.last_response.clone().map(TxAction::Send).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// The TU responds.
    pub fn respond(&mut self, response: Response, now: Instant) -> Vec<TxAction> {
        if !matches!(self.state, TxState::Trying | TxState::Proceeding) {
            return Vec::new();
        }
        let code = response.status_code.code();
        let bytes = to_bytes(&response.into());
        self.last_response = Some(bytes.clone());
        if code < 200 {
            self.state = TxState::Proceeding;
        } else {
            self.state = TxState::Completed;
            let wait = if self.reliable { Duration::ZERO } else { self.timers.t1x64() };
            self.timer_j = Some(now + wait);
        }
        vec![TxAction::Send(bytes)]
    }

    /// Fires due timers.
    pub fn on_timer(&mut self, now: Instant) -> Vec<TxAction> {
        if due(self.timer_j, now) {
            self.state = TxState::Terminated;
            self.timer_j = None;
            return vec![TxAction::Terminated];
        }
        Vec::new()
    }

    /// Next timer deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timer_j
    }
}

/// §13.3.1.4: the UAS core retransmits a 2xx to INVITE (T1 doubling up to T2) until
/// the ACK arrives, and gives up after 64·T1 (then the TU should send BYE).
#[derive(Debug, Clone)]
pub struct AnswerRetransmitter {
    bytes: Bytes,
    next: Option<Backoff>,
    give_up: Instant,
    timers: Timers,
}

/// What the 2xx retransmitter wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerAction {
    /// Send the 2xx again.
    Resend(Bytes),
    /// No ACK within 64·T1.
    GiveUp,
}

impl AnswerRetransmitter {
    /// Starts after the 2xx was first sent.
    pub fn new(bytes: Bytes, reliable: bool, timers: Timers, now: Instant) -> Self {
        Self {
            bytes,
            next: (!reliable).then(|| Backoff { at: now + timers.t1, interval: timers.t1 }),
            give_up: now + timers.t1x64(),
            timers,
        }
    }

    /// Fires due timers.
    pub fn on_timer(&mut self, now: Instant) -> Option<AnswerAction> {
        if now >= self.give_up {
            self.next = None;
            return Some(AnswerAction::GiveUp);
        }
        let n = self.next.filter(|n| n.at <= now)?;
        let interval = (n.interval * 2).min(self.timers.t2);
        self.next = Some(Backoff { at: now + interval, interval });
        Some(AnswerAction::Resend(self.bytes.clone()))
    }

    /// Next deadline.
    pub fn next_deadline(&self) -> Instant {
        self.next.map(|n| n.at.min(self.give_up)).unwrap_or(self.give_up)
    }
}

/// Identifies a transaction (RFC 3261 §17.1.3 and §17.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransactionKey {
    /// Top Via branch (or an RFC 2543 fallback built from the dialog fields).
    pub branch: String,
    /// Top Via sent-by (servers only; empty for clients).
    pub sent_by: String,
    /// Method, with ACK folded into INVITE (§17.2.3).
    pub method: String,
    /// Whether this is a server transaction.
    pub server: bool,
}

impl TransactionKey {
    /// Server-side key of a request.
    pub fn server(method: &Method, e: &Essentials) -> Self {
        let method = if *method == Method::Ack { Method::Invite } else { *method };
        let branch = if e.via.is_rfc3261_branch() {
            e.via.branch().unwrap_or_default().to_string()
        } else {
            // §17.2.3 for RFC 2543 peers: match on the request identifiers instead.
            format!("rfc2543:{}:{}:{}:{}", e.call_id, e.cseq, e.from.tag().unwrap_or_default(), e.via.branch().unwrap_or_default())
        };
        Self { branch, sent_by: e.via.sent_by(), method: method.to_string(), server: true }
    }

    /// Client-side key: our branch plus the CSeq method (§17.1.3).
    pub fn client(branch: &str, method: &Method) -> Self {
        Self {
            branch: branch.to_string(),
            sent_by: String::new(),
            method: if *method == Method::Ack { Method::Invite } else { *method }.to_string(),
            server: false,
        }
    }

    /// The INVITE server transaction a CANCEL with this key targets (§9.2).
    pub fn cancelled_invite(&self) -> Self {
        Self { method: Method::Invite.to_string(), ..self.clone() }
    }
}

/// Where a transaction's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Remote address (for TCP, the connection's peer).
    pub addr: SocketAddr,
    /// Transport.
    pub transport: Transport,
}

/// What the layer asks the runtime / TU to do.
#[derive(Debug, Clone)]
pub enum LayerEvent {
    /// Transmit bytes.
    Send {
        /// Destination.
        peer: Peer,
        /// The serialized message.
        bytes: Bytes,
    },
    /// A new request for the TU (a server transaction exists unless it is an ACK).
    Request {
        /// Server transaction key (for `respond`).
        key: TransactionKey,
        /// The request (Via stamped with received/rport).
        request: Request,
        /// Extracted essentials.
        info: Box<Essentials>,
        /// Where it came from.
        source: Peer,
    },
    /// An ACK outside any server transaction: the ACK for a 2xx (§13.2.2.4).
    Ack {
        /// The ACK.
        request: Request,
        /// Extracted essentials.
        info: Box<Essentials>,
        /// Where it came from.
        source: Peer,
    },
    /// A response for one of our client transactions.
    Response {
        /// Client transaction key.
        key: TransactionKey,
        /// The response.
        response: Response,
        /// Extracted essentials.
        info: Box<Essentials>,
    },
    /// A 2xx retransmission after its INVITE client transaction ended; the TU re-ACKs.
    StrayResponse {
        /// The response.
        response: Response,
        /// Extracted essentials.
        info: Box<Essentials>,
        /// Where it came from.
        source: Peer,
    },
    /// Timer B, F or H fired.
    Timeout {
        /// The transaction.
        key: TransactionKey,
    },
    /// A message was dropped (malformed or unmatched); for logging/metrics.
    Dropped {
        /// Why.
        reason: String,
        /// The message could not be parsed or was invalid (not merely unmatched).
        malformed: bool,
    },
}

#[derive(Debug)]
enum Tx {
    InviteClient(Box<InviteClient>),
    NonInviteClient(NonInviteClient),
    InviteServer(InviteServer),
    NonInviteServer(NonInviteServer),
}

impl Tx {
    fn on_timer(&mut self, now: Instant) -> Vec<TxAction> {
        match self {
            Tx::InviteClient(t) => t.on_timer(now),
            Tx::NonInviteClient(t) => t.on_timer(now),
            Tx::InviteServer(t) => t.on_timer(now),
            Tx::NonInviteServer(t) => t.on_timer(now),
        }
    }
    fn next_deadline(&self) -> Option<Instant> {
        match self {
            Tx::InviteClient(t) => t.next_deadline(),
            Tx::NonInviteClient(t) => t.next_deadline(),
            Tx::InviteServer(t) => t.next_deadline(),
            Tx::NonInviteServer(t) => t.next_deadline(),
        }
    }
}

/// All live transactions of one SIP endpoint; pure, driven by the runtime.
#[derive(Debug)]
pub struct TransactionLayer {
    timers: Timers,
    max_size: usize,
    txs: HashMap<TransactionKey, (Tx, Peer)>,
}

impl TransactionLayer {
    /// A new, empty layer.
    pub fn new(timers: Timers, max_size: usize) -> Self {
        Self { timers, max_size, txs: HashMap::new() }
    }

    /// Number of live transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Timer values in use.
    pub fn timers(&self) -> Timers {
        self.timers
    }

    /// Whether a server transaction for `key` is still waiting for a final response.
    pub fn is_pending(&self, key: &TransactionKey) -> bool {
        match self.txs.get(key) {
            Some((Tx::InviteServer(t), _)) => t.state() == TxState::Proceeding,
            Some((Tx::NonInviteServer(t), _)) => {
                matches!(t.state(), TxState::Trying | TxState::Proceeding)
            }
            _ => false,
        }
    }

    /// The INVITE client transaction's request (for CANCEL).
    pub fn client_invite(&self, key: &TransactionKey) -> Option<(&Request, Peer)> {
        match self.txs.get(key) {
            Some((Tx::InviteClient(t), peer)) => Some((t.request(), *peer)),
            _ => None,
        }
    }

    /// Feeds one received datagram or TCP frame. Never panics.
    pub fn on_message(&mut self, data: &[u8], source: Peer, now: Instant) -> Vec<LayerEvent> {
        match inspect(data, self.max_size) {
            Inspected::Drop(error) => vec![LayerEvent::Dropped { reason: error.to_string(), malformed: true }],
            Inspected::Reject { reply, via, error } => {
                let dest = response_destination(&via, source.addr, source.transport);
                vec![
                    LayerEvent::Send { peer: Peer { addr: dest, transport: source.transport }, bytes: to_bytes(&reply.into()) },
                    LayerEvent::Dropped { reason: error.to_string(), malformed: true },
                ]
            }
            Inspected::Request(request, info) => self.on_request(request, info, source, now),
            Inspected::Response(response, info) => self.on_response(response, info, source, now),
        }
    }

    fn on_request(&mut self, request: Request, mut info: Essentials, source: Peer, now: Instant) -> Vec<LayerEvent> {
        let mut msg: SipMessage = request.into();
        stamp_received(&mut msg, source.addr);
        if let Some(via) = super::via::top_via(&msg) {
            info.via = via;
        }
        let SipMessage::Request(request) = msg else {
            return Vec::new();
        };
        let key = TransactionKey::server(&request.method, &info);
        let reliable = source.transport.is_reliable();
        if let Some((tx, peer)) = self.txs.get_mut(&key) {
            let peer = *peer;
            let actions = match tx {
                Tx::InviteServer(t) => t.on_request(request.clone(), now),
                Tx::NonInviteServer(t) => t.on_request(request.clone()),
                _ => Vec::new(),
            };
            let mut events = Vec::new();
            for a in actions {
                match a {
                    TxAction::Send(bytes) => events.push(LayerEvent::Send { peer, bytes }),
                    TxAction::Deliver(_) => events.push(LayerEvent::Ack { request: request.clone(), info: Box::new(info.clone()), source }),
                    _ => {}
                }
            }
            return events;
        }
        if request.method == Method::Ack {
            return vec![LayerEvent::Ack { request, info: Box::new(info), source }];
        }
        let dest = Peer { addr: response_destination(&info.via, source.addr, source.transport), transport: source.transport };
        let (tx, actions) = if request.method == Method::Invite {
            let (t, a) = InviteServer::new(request.clone(), reliable, self.timers);
            (Tx::InviteServer(t), a)
        } else {
            let (t, a) = NonInviteServer::new(request.clone(), reliable, self.timers);
            (Tx::NonInviteServer(t), a)
        };
        self.txs.insert(key.clone(), (tx, dest));
        let mut events = Vec::new();
        for a in actions {
            match a {
                TxAction::Send(bytes) => events.push(LayerEvent::Send { peer: dest, bytes }),
                TxAction::Deliver(_) => {
                    events.push(LayerEvent::Request { key: key.clone(), request: request.clone(), info: Box::new(info.clone()), source })
                }
                _ => {}
            }
        }
        events
    }

    fn on_response(&mut self, response: Response, info: Essentials, source: Peer, now: Instant) -> Vec<LayerEvent> {
        let key = TransactionKey::client(info.via.branch().unwrap_or_default(), &info.cseq_method);
        let Some((tx, peer)) = self.txs.get_mut(&key) else {
            if response.status_code.code() / 100 == 2 && info.cseq_method == Method::Invite {
                return vec![LayerEvent::StrayResponse { response, info: Box::new(info), source }];
            }
            return vec![LayerEvent::Dropped { reason: "response matches no transaction".into(), malformed: false }];
        };
        let peer = *peer;
        let actions = match tx {
            Tx::InviteClient(t) => t.on_response(response, now),
            Tx::NonInviteClient(t) => t.on_response(response, now),
            _ => Vec::new(),
        };
        self.apply(&key, peer, actions, Some(&info))
    }

    fn apply(&mut self, key: &TransactionKey, peer: Peer, actions: Vec<TxAction>, info: Option<&Essentials>) -> Vec<LayerEvent> {
        let mut events = Vec::new();
        for a in actions {
            match a {
                TxAction::Send(bytes) => events.push(LayerEvent::Send { peer, bytes }),
                TxAction::Deliver(SipMessage::Response(response)) => {
                    if let Some(info) = info {
                        events.push(LayerEvent::Response { key: key.clone(), response, info: Box::new(info.clone()) });
                    }
                }
                TxAction::Deliver(SipMessage::Request(_)) => {}
                TxAction::Timeout => events.push(LayerEvent::Timeout { key: key.clone() }),
                TxAction::Terminated => {
                    self.txs.remove(key);
                }
            }
        }
        events
    }

    /// Sends a request in a new client transaction. The request must carry a Via
    /// with a fresh branch (see [`super::message::new_branch`]).
    pub fn send_request(&mut self, request: Request, peer: Peer, now: Instant) -> (TransactionKey, Vec<LayerEvent>) {
        let branch = super::via::top_via(&request.clone().into()).and_then(|v| v.branch().map(str::to_string)).unwrap_or_default();
        let key = TransactionKey::client(&branch, &request.method);
        let reliable = peer.transport.is_reliable();
        if request.method == Method::Ack {
            // ACK for a 2xx is sent outside any transaction (§17.1.1.3).
            let bytes = to_bytes(&request.into());
            return (key, vec![LayerEvent::Send { peer, bytes }]);
        }
        let (tx, actions) = if request.method == Method::Invite {
            let (t, a) = InviteClient::new(request, reliable, self.timers, now);
            (Tx::InviteClient(Box::new(t)), a)
        } else {
            let (t, a) = NonInviteClient::new(&request, reliable, self.timers, now);
            (Tx::NonInviteClient(t), a)
        };
        self.txs.insert(key.clone(), (tx, peer));
        let events = self.apply(&key, peer, actions, None);
        (key, events)
    }

    /// The TU answers a server transaction.
    pub fn respond(&mut self, key: &TransactionKey, response: Response, now: Instant) -> Vec<LayerEvent> {
        let Some((tx, peer)) = self.txs.get_mut(key) else {
            return vec![LayerEvent::Dropped { reason: "response for unknown server transaction".into(), malformed: false }];
        };
        let peer = *peer;
        let actions = match tx {
            Tx::InviteServer(t) => t.respond(response, now),
            Tx::NonInviteServer(t) => t.respond(response, now),
            _ => Vec::new(),
        };
        self.apply(key, peer, actions, None)
    }

    /// Where responses of a server transaction go.
    pub fn peer_of(&self, key: &TransactionKey) -> Option<Peer> {
        self.txs.get(key).map(|(_, p)| *p)
    }

    /// Fires every due timer.
    pub fn on_timer(&mut self, now: Instant) -> Vec<LayerEvent> {
        let due_keys: Vec<TransactionKey> =
            self.txs.iter().filter(|(_, (tx, _))| tx.next_deadline().is_some_and(|d| d <= now)).map(|(k, _)| k.clone()).collect();
        let mut events = Vec::new();
        for key in due_keys {
            if let Some((tx, peer)) = self.txs.get_mut(&key) {
                let peer = *peer;
                let actions = tx.on_timer(now);
                events.extend(self.apply(&key, peer, actions, None));
            }
        }
        events
    }

    /// The earliest timer deadline of any transaction.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.txs.values().filter_map(|(tx, _)| tx.next_deadline()).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, tests_support::INVITE};

    fn invite() -> Request {
        match parse(INVITE.as_bytes(), 65_535).unwrap().0 {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => unreachable!(),
        }
    }

    fn response(req: &Request, code: u16) -> Response {
        response_to(req, code, Some("totag"), Vec::new(), Vec::new())
    }

    fn sends(actions: &[TxAction]) -> usize {
        actions.iter().filter(|a| matches!(a, TxAction::Send(_))).count()
    }

    #[test]
    fn invite_client_retransmits_with_doubling_and_times_out_at_64_t1() {
        let t = Timers::default();
        let start = Instant::now();
        let (mut tx, first) = InviteClient::new(invite(), false, t, start);
        assert_eq!(sends(&first), 1);
        let mut fire_times = Vec::new();
        let mut now = start;
        while let Some(d) = tx.next_deadline() {
            now = d;
            let actions = tx.on_timer(now);
            if actions.contains(&TxAction::Timeout) {
                break;
            }
            if sends(&actions) == 1 {
                fire_times.push((now - start).as_millis());
            }
        }
        // Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; Timer B at 32 s.
        assert_eq!(fire_times, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(now - start, Duration::from_secs(32));
        assert_eq!(tx.state(), TxState::Terminated);
    }

    #[test]
    fn invite_client_acks_non_2xx_and_absorbs_retransmission() {
        let t = Timers::default();
        let now = Instant::now();
        let req = invite();
        let (mut tx, _) = InviteClient::new(req.clone(), false, t, now);
        let a = tx.on_response(response(&req, 180), now);
        assert!(matches!(a.as_slice(), [TxAction::Deliver(_)]));
        assert_eq!(tx.state(), TxState::Proceeding);
        assert!(tx.on_timer(now + Duration::from_secs(40)).is_empty(), "no A/B in Proceeding");
        let a = tx.on_response(response(&req, 486), now);
        let TxAction::Send(ack) = &a[0] else { panic!("ACK expected") };
        let ack = String::from_utf8_lossy(ack);
        assert!(ack.starts_with("ACK sip:+4930123@127.0.0.1 SIP/2.0"), "{ack}");
        assert!(ack.contains("CSeq: 314159 ACK"));
        assert!(ack.contains("tag=totag"));
        assert_eq!(tx.state(), TxState::Completed);
        assert_eq!(sends(&tx.on_response(response(&req, 486), now)), 1, "re-ACK");
        assert_eq!(tx.on_timer(now + Duration::from_secs(32)), vec![TxAction::Terminated]);
    }

    #[test]
    fn invite_client_accepted_forwards_2xx_retransmissions() {
        let now = Instant::now();
        let req = invite();
        let (mut tx, _) = InviteClient::new(req.clone(), true, Timers::default(), now);
        assert_eq!(tx.on_response(response(&req, 200), now).len(), 1);
        assert_eq!(tx.state(), TxState::Accepted);
        assert_eq!(tx.on_response(response(&req, 200), now).len(), 1);
        assert_eq!(tx.on_timer(now + Duration::from_secs(32)), vec![TxAction::Terminated]);
    }

    #[test]
    fn non_invite_client_caps_at_t2_and_reliable_has_no_retransmits() {
        let t = Timers::default();
        let start = Instant::now();
        let req = invite();
        let (mut tx, _) = NonInviteClient::new(&req, false, t, start);
        let mut intervals = Vec::new();
        let mut last = start;
        while let Some(d) = tx.next_deadline() {
            let a = tx.on_timer(d);
            if a.contains(&TxAction::Timeout) {
                assert_eq!(d - start, Duration::from_secs(32), "Timer F = 64*T1");
                break;
            }
            intervals.push((d - last).as_millis());
            last = d;
        }
        assert_eq!(&intervals[..5], &[500, 1000, 2000, 4000, 4000]);
        let (mut rel, _) = NonInviteClient::new(&req, true, t, start);
        assert_eq!(rel.next_deadline(), Some(start + Duration::from_secs(32)));
        rel.on_response(response(&req, 200), start);
        assert_eq!(rel.on_timer(start), vec![TxAction::Terminated], "Timer K = 0 on TCP");
    }

    #[test]
    fn invite_server_sends_trying_retransmits_final_until_ack() {
        let t = Timers::default();
        let now = Instant::now();
        let req = invite();
        let (mut tx, a) = InviteServer::new(req.clone(), false, t);
        assert_eq!(sends(&a), 1, "100 Trying");
        assert_eq!(sends(&tx.on_request(req.clone(), now)), 1, "retransmitted INVITE gets 100");
        tx.respond(response(&req, 486), now);
        assert_eq!(tx.state(), TxState::Completed);
        assert_eq!(sends(&tx.on_timer(now + t.t1)), 1, "Timer G");
        let mut ack = req.clone();
        ack.method = Method::Ack;
        tx.on_request(ack, now + t.t1);
        assert_eq!(tx.state(), TxState::Confirmed);
        assert_eq!(tx.on_timer(now + t.t1 + t.t4), vec![TxAction::Terminated]);
    }

    #[test]
    fn invite_server_times_out_without_ack() {
        let t = Timers::default();
        let now = Instant::now();
        let req = invite();
        let (mut tx, _) = InviteServer::new(req.clone(), false, t);
        tx.respond(response(&req, 404), now);
        let mut resends = 0;
        while let Some(d) = tx.next_deadline() {
            let a = tx.on_timer(d);
            resends += sends(&a);
            if a.contains(&TxAction::Timeout) {
                assert_eq!(d - now, t.t1x64(), "Timer H");
                break;
            }
        }
        // G at 0.5, 1.5, 3.5, 7.5, then every 4 s up to 32 s.
        assert_eq!(resends, 4 + 6);
    }

    #[test]
    fn answer_retransmitter_resends_then_gives_up_at_64_t1() {
        let t = Timers::default();
        let start = Instant::now();
        let mut r = AnswerRetransmitter::new(Bytes::from_static(b"200"), false, t, start);
        let mut resends = 0;
        loop {
            let d = r.next_deadline();
            match r.on_timer(d) {
                Some(AnswerAction::Resend(_)) => resends += 1,
                Some(AnswerAction::GiveUp) => {
                    assert_eq!(d - start, Duration::from_secs(32));
                    break;
                }
                None => {}
            }
        }
        assert_eq!(resends, 10);
    }

    #[test]
    fn non_invite_server_replays_final_and_ends_after_timer_j() {
        let t = Timers::default();
        let now = Instant::now();
        let req = invite();
        let (mut tx, a) = NonInviteServer::new(req.clone(), false, t);
        assert!(matches!(a.as_slice(), [TxAction::Deliver(_)]));
        assert!(tx.on_request(req.clone()).is_empty());
        tx.respond(response(&req, 200), now);
        assert_eq!(sends(&tx.on_request(req)), 1);
        assert_eq!(tx.on_timer(now + t.t1x64()), vec![TxAction::Terminated]);
    }

    #[test]
    fn layer_matches_retransmissions_and_routes_to_rport() {
        let mut layer = TransactionLayer::new(Timers::default(), 65_535);
        let now = Instant::now();
        let source = Peer { addr: "198.51.100.7:40123".parse().unwrap(), transport: Transport::Udp };
        let events = layer.on_message(INVITE.as_bytes(), source, now);
        let key = events
            .iter()
            .find_map(|e| match e {
                LayerEvent::Request { key, .. } => Some(key.clone()),
                _ => None,
            })
            .expect("request delivered");
        assert!(events.iter().any(|e| matches!(e, LayerEvent::Send { peer, .. } if *peer == source)));
        let again = layer.on_message(INVITE.as_bytes(), source, now);
        assert!(again.iter().all(|e| !matches!(e, LayerEvent::Request { .. })));
        assert_eq!(layer.len(), 1);
        let cancel = INVITE
            .replacen("INVITE sip", "CANCEL sip", 1)
            .replace("314159 INVITE", "314159 CANCEL")
            .replace("Content-Length: 4\r\n\r\nv=0\n", "Content-Length: 0\r\n\r\n");
        let events = layer.on_message(cancel.as_bytes(), source, now);
        let ckey = events
            .iter()
            .find_map(|e| match e {
                LayerEvent::Request { key, .. } => Some(key.clone()),
                _ => None,
            })
            .expect("CANCEL delivered");
        assert_ne!(ckey, key);
        assert_eq!(ckey.cancelled_invite(), key);
        assert!(layer.is_pending(&key));
    }
}
