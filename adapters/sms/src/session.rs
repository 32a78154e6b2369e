//! The SMPP session (tokio): one bind connection at a time (transceiver, or one of a
//! transmitter/receiver pair, each pair member its own `Session`), its send window
//! keyed by sequence_number, the messages-per-second throttle with back-off on
//! ESME_RTHROTTLED / ESME_RMSGQFUL, enquire_link keep-alive, reconnect with back-off after a
//! drop, and unbind on shutdown. Wire format lives in [`crate::pdu`]; what an inbound
//! deliver_sm means is the [`InboundHandler`]'s business: its answer is the deliver_sm_resp
//! status, sent only after it returned (persist before acknowledge).

use crate::config::SmppConfig;
use crate::pdu::{self, status, Bind, BindKind, Decoded, Frame, Pdu, ShortMessage};
use async_trait::async_trait;
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

/// Handles what the SMSC delivers (mobile-originated messages and receipts).
#[async_trait]
pub trait InboundHandler: Send + Sync + 'static {
    /// Commits the deliver_sm and returns the deliver_sm_resp status (`ESME_ROK` once it is
    /// stored; `ESME_RX_T_APPN` asks the SMSC to redeliver later).
    async fn deliver_sm(&self, sm: ShortMessage) -> u32;
}

/// The outcome of one submit_sm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Accepted under this message id.
    Accepted(String),
    /// Refused with this command_status (not throttling: that is retried here).
    Refused(u32),
    /// Never written to the SMSC (no bind, or throttled until the deadline): safe to retry.
    NotSent(String),
    /// Written, but no response came: the SMSC may or may not have it.
    NoResponse,
}

/// A live connection's sending side.
struct Link {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<Mutex<HashMap<u32, oneshot::Sender<Frame>>>>,
}

/// The session of one SMPP channel, shared by the bind task and the senders.
pub struct Session {
    cfg: SmppConfig,
    name: String,
    link: Mutex<Option<Arc<Link>>>,
    link_changed: watch::Sender<u64>,
    seq: AtomicU32,
    window: Arc<Semaphore>,
    throttle: Mutex<ThrottleState>,
    bound: AtomicBool,
    kind: BindKind,
}

struct ThrottleState {
    next_slot: Instant,
    paused_until: Instant,
    backoff: Duration,
}

/// Why a connection ended.
#[derive(Debug)]
pub enum Ended {
    /// Shutdown or lease loss: unbound cleanly (or tried).
    Stopped,
    /// The connection failed; reconnect.
    Dropped(String),
}

impl Session {
    /// A transceiver session for a configured channel (not connected).
    pub fn new(name: String, cfg: SmppConfig) -> Arc<Session> {
        Session::with_kind(name, cfg, BindKind::Transceiver)
    }

    /// A session binding as `kind` (a transmitter sends, a receiver only receives).
    pub fn with_kind(name: String, cfg: SmppConfig, kind: BindKind) -> Arc<Session> {
        let now = Instant::now();
        Arc::new(Session {
            window: Arc::new(Semaphore::new(cfg.window as usize)),
            throttle: Mutex::new(ThrottleState {
                next_slot: now,
                paused_until: now,
                backoff: Duration::from_millis(cfg.throttle_backoff_ms),
            }),
            cfg,
            name,
            link: Mutex::new(None),
            link_changed: watch::channel(0).0,
            seq: AtomicU32::new(1),
            bound: AtomicBool::new(false),
            kind,
        })
    }

    /// Whether a bind is up on this node.
    pub fn is_bound(&self) -> bool {
        self.bound.load(Ordering::Relaxed)
    }

    fn next_seq(&self) -> u32 {
        // sequence_number runs 1..=0x7FFFFFFF and wraps (SMPP 3.4 §5.1.4).
        loop {
            let s = self.seq.fetch_add(1, Ordering::Relaxed) & 0x7FFF_FFFF;
            if s != 0 {
                return s;
            }
        }
    }

    fn current_link(&self) -> Option<Arc<Link>> {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for the next send slot: `max_per_second` spaced, later while throttled.
    async fn throttle_slot(&self) {
        let slot = {
            let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let interval = Duration::from_secs_f64(1.0 / self.cfg.max_per_second as f64);
            let slot = t.next_slot.max(t.paused_until).max(now);
            t.next_slot = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// The SMSC said "throttled" or "queue full": pause all sends, doubling while it lasts.
    fn back_off(&self) -> Duration {
        let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let pause = t.backoff;
        if t.paused_until < now + pause {
            t.paused_until = now + pause;
        }
        t.backoff = (t.backoff * 2).min(Duration::from_secs(30));
        pause
    }

    fn throttle_ok(&self) {
        let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        t.backoff = Duration::from_millis(self.cfg.throttle_backoff_ms);
    }

    /// Waits up to `until` for a bound link.
    async fn wait_link(&self, until: Instant) -> Option<Arc<Link>> {
        let mut changes = self.link_changed.subscribe();
        loop {
            if let Some(l) = self.current_link() {
                return Some(l);
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return None },
                _ = tokio::time::sleep_until(until) => return None,
            }
        }
    }

    /// Sends one submit_sm within the window and the throttle; retries on ESME_RTHROTTLED
    /// and ESME_RMSGQFUL (the SMSC did not take the message) until `deadline`.
    pub async fn submit(&self, sm: &ShortMessage, deadline: Instant) -> SubmitOutcome {
        loop {
            let Ok(_permit) = tokio::time::timeout_at(deadline, self.window.clone().acquire_owned()).await else {
                return SubmitOutcome::NotSent("the send window stayed full".into());
            };
            let Some(link) = self.wait_link(deadline).await else {
                return SubmitOutcome::NotSent(format!("no SMPP bind for {}", self.name));
            };
            self.throttle_slot().await;
            if Instant::now() >= deadline {
                return SubmitOutcome::NotSent("throttled until the delivery deadline".into());
            }
            let seq = self.next_seq();
            let (tx, rx) = oneshot::channel();
            link.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(seq, tx);
            if link.tx.send(Frame::new(seq, Pdu::SubmitSm(sm.clone())).encode()).is_err() {
                link.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
                // The connection closed before the bytes were queued: nothing was written.
                continue;
            }
            let wait = Duration::from_secs(self.cfg.response_timeout_secs);
            let resp = tokio::time::timeout(wait, rx).await;
            let frame = match resp {
                Ok(Ok(f)) => f,
                Ok(Err(_)) | Err(_) => {
                    link.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
                    return SubmitOutcome::NoResponse;
                }
            };
            match (frame.status, frame.pdu) {
                (status::ROK, Pdu::SubmitSmResp(id)) => {
                    self.throttle_ok();
                    return SubmitOutcome::Accepted(id);
                }
                (status::RTHROTTLED | status::RMSGQFUL, _) => {
                    let pause = self.back_off();
                    tracing::info!(channel = %self.name, pause_ms = pause.as_millis() as u64, status = frame.status, "SMSC throttled us; backing off.");
                    if Instant::now() + pause >= deadline {
                        return SubmitOutcome::NotSent("throttled by the SMSC until the delivery deadline".into());
                    }
                    continue;
                }
                (st, _) => return SubmitOutcome::Refused(if st == status::ROK { status::RSYSERR } else { st }),
            }
        }
    }

    /// Connects, binds and serves one connection until it ends.
    pub async fn connect_and_serve(self: &Arc<Self>, handler: Arc<dyn InboundHandler>, mut stop: watch::Receiver<bool>) -> Ended {
        let addr = format!("{}:{}", self.cfg.host, self.cfg.port);
        let timeout = Duration::from_secs(self.cfg.response_timeout_secs);
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Ended::Dropped(format!("connect {addr}: {e}")),
            Err(_) => return Ended::Dropped(format!("connect {addr}: timed out")),
        };
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        // Bind (SMPP 3.4 §4.1): nothing else may be sent until the bind's response.
        let bind = Bind {
            system_id: self.cfg.system_id.clone(),
            password: self.cfg.password.expose_secret().to_string(),
            system_type: self.cfg.system_type.clone(),
            interface_version: 0x34,
            ..Default::default()
        };
        let bind_seq = self.next_seq();
        if let Err(e) = wr.write_all(&Frame::new(bind_seq, Pdu::Bind(self.kind, bind)).encode()).await {
            return Ended::Dropped(format!("bind write: {e}"));
        }
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, read_frame(&mut rd, &mut buf)).await {
                Err(_) => return Ended::Dropped(format!("no {} response", bind_name(self.kind))),
                Ok(Err(e)) => return Ended::Dropped(format!("while binding: {e}")),
                Ok(Ok(Decoded::Frame(Frame { status: st, seq, pdu: Pdu::BindResp(..) }))) if seq == bind_seq => {
                    if st != status::ROK {
                        return Ended::Dropped(format!("bind refused with status 0x{st:08X}"));
                    }
                    break;
                }
                // The SMSC may enquire before answering; anything else waits for the bind.
                Ok(Ok(Decoded::Frame(Frame { seq, pdu: Pdu::EnquireLink, .. }))) => {
                    let _ = wr.write_all(&Frame::new(seq, Pdu::EnquireLinkResp).encode()).await;
                }
                Ok(Ok(_)) => {}
            }
        }
        tracing::info!(channel = %self.name, %addr, bind = bind_name(self.kind), "SMPP bound.");
        let (tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Arc<Mutex<HashMap<u32, oneshot::Sender<Frame>>>> = Arc::default();
        let link = Arc::new(Link { tx: tx.clone(), pending: pending.clone() });
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
        self.bound.store(true, Ordering::Relaxed);
        self.link_changed.send_modify(|v| *v += 1);

        // The writer: batches whatever is queued into one write.
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(16 * 1024);
            while let Some(first) = out_rx.recv().await {
                batch.clear();
                batch.extend_from_slice(&first);
                while let Ok(more) = out_rx.try_recv() {
                    batch.extend_from_slice(&more);
                    if batch.len() > 64 * 1024 {
                        break;
                    }
                }
                if wr.write_all(&batch).await.is_err() {
                    return wr;
                }
            }
            wr
        });

        let inflight = Arc::new(Semaphore::new(512));
        let enquire_every = Duration::from_secs(self.cfg.enquire_link_secs);
        let mut last_rx = Instant::now();
        let mut enquire_deadline: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let ended = loop {
            tokio::select! {
                r = read_frame(&mut rd, &mut buf) => {
                    let d = match r {
                        Ok(d) => d,
                        Err(e) => break Ended::Dropped(e),
                    };
                    last_rx = Instant::now();
                    enquire_deadline = None;
                    match d {
                        Decoded::Invalid { header, status: st, reason } => {
                            tracing::warn!(channel = %self.name, command_id = header.command_id, reason, "Invalid PDU from the SMSC.");
                            if let Some(answer) = pdu::answer_invalid(&header, st) {
                                let _ = tx.send(answer);
                            }
                        }
                        Decoded::Frame(f) => match f.pdu {
                            Pdu::DeliverSm(sm) => {
                                // Bounded concurrency: the reader waits when 512 are in flight.
                                let Ok(permit) = inflight.clone().acquire_owned().await else { break Ended::Stopped };
                                let (h, tx, seq) = (handler.clone(), tx.clone(), f.seq);
                                tokio::spawn(async move {
                                    let st = h.deliver_sm(sm).await;
                                    let _ = tx.send(Frame { status: st, seq, pdu: Pdu::DeliverSmResp }.encode());
                                    drop(permit);
                                });
                            }
                            Pdu::EnquireLink => { let _ = tx.send(Frame::new(f.seq, Pdu::EnquireLinkResp).encode()); }
                            Pdu::Unbind => {
                                let _ = tx.send(Frame::new(f.seq, Pdu::UnbindResp).encode());
                                break Ended::Dropped("the SMSC unbound".into());
                            }
                            Pdu::SubmitSm(_) | Pdu::Bind(..) => {
                                // Not for an ESME to receive (§2.3): refuse, keep the bind.
                                if let Some(a) = pdu::answer_invalid(&pdu::Header { command_length: 0, command_id: f.command_id(), command_status: 0, sequence_number: f.seq }, status::RINVBNDSTS) {
                                    let _ = tx.send(a);
                                }
                            }
                            Pdu::EnquireLinkResp | Pdu::UnbindResp | Pdu::DeliverSmResp | Pdu::BindResp(..) => {}
                            Pdu::SubmitSmResp(_) | Pdu::GenericNack => {
                                let waiter = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&f.seq);
                                if let Some(w) = waiter { let _ = w.send(f); }
                            }
                        },
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if let Some(d) = enquire_deadline {
                        if now > d { break Ended::Dropped("enquire_link unanswered".into()); }
                    } else if now.duration_since(last_rx) >= enquire_every {
                        let _ = tx.send(Frame::new(self.next_seq(), Pdu::EnquireLink).encode());
                        enquire_deadline = Some(now + Duration::from_secs(self.cfg.response_timeout_secs));
                    }
                }
                _ = stop.changed() => {
                    if *stop.borrow() { break Ended::Stopped; }
                }
            }
        };
        // No new submits on this connection; waiters get "no response".
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.bound.store(false, Ordering::Relaxed);
        self.link_changed.send_modify(|v| *v += 1);
        if matches!(ended, Ended::Stopped) {
            // Let in-flight deliver_sm commits answer, then unbind (§4.2) and wait briefly.
            let _ = tokio::time::timeout(Duration::from_secs(2), inflight.acquire_many(512)).await;
            let _ = tx.send(Frame::new(self.next_seq(), Pdu::Unbind).encode());
            let until = Instant::now() + Duration::from_secs(2);
            loop {
                match tokio::time::timeout_at(until, read_frame(&mut rd, &mut buf)).await {
                    Ok(Ok(Decoded::Frame(Frame { pdu: Pdu::UnbindResp, .. }))) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(_)) => {}
                }
            }
        }
        drop(tx);
        pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if let Ok(Ok(mut wr)) = tokio::time::timeout(Duration::from_secs(2), writer).await {
            let _ = wr.shutdown().await;
        }
        ended
    }

    /// Keeps the bind up while `held` says this node holds the lease: reconnects with
    /// doubling back-off after a drop; returns when `stop` fires (after unbinding).
    pub async fn run(self: &Arc<Self>, handler: Arc<dyn InboundHandler>, mut held: watch::Receiver<bool>, stop: watch::Receiver<bool>) {
        let min = Duration::from_millis(self.cfg.reconnect_min_ms);
        let max = Duration::from_millis(self.cfg.reconnect_max_ms);
        let mut delay = min;
        loop {
            if *stop.borrow() {
                return;
            }
            if !*held.borrow() {
                let mut s = stop.clone();
                tokio::select! {
                    r = held.changed() => if r.is_err() { return },
                    _ = s.changed() => {}
                }
                continue;
            }
            // The connection ends on stop or when the lease is lost.
            let (conn_stop_tx, conn_stop) = watch::channel(false);
            let (mut s, mut h) = (stop.clone(), held.clone());
            let watcher = tokio::spawn(async move {
                loop {
                    if *s.borrow() || !*h.borrow() {
                        let _ = conn_stop_tx.send(true);
                        return;
                    }
                    tokio::select! {
                        r = s.changed() => if r.is_err() { let _ = conn_stop_tx.send(true); return },
                        r = h.changed() => if r.is_err() { let _ = conn_stop_tx.send(true); return },
                    }
                }
            });
            let started = Instant::now();
            let ended = self.connect_and_serve(handler.clone(), conn_stop).await;
            watcher.abort();
            match ended {
                Ended::Stopped => {
                    delay = min;
                    tracing::info!(channel = %self.name, "SMPP unbound.");
                }
                Ended::Dropped(why) => {
                    if started.elapsed() > Duration::from_secs(30) {
                        delay = min;
                    }
                    tracing::warn!(channel = %self.name, reason = %why, retry_ms = delay.as_millis() as u64, "SMPP connection lost; reconnecting.");
                    let mut s = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = s.changed() => {}
                    }
                    delay = (delay * 2).min(max);
                }
            }
        }
    }
}

fn bind_name(kind: BindKind) -> &'static str {
    match kind {
        BindKind::Transceiver => "bind_transceiver",
        BindKind::Transmitter => "bind_transmitter",
        BindKind::Receiver => "bind_receiver",
    }
}

/// Reads until one PDU is decoded. Errors end the connection (EOF, I/O, unframeable).
async fn read_frame(rd: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut Vec<u8>) -> Result<Decoded, String> {
    loop {
        match pdu::decode(buf) {
            Ok(Some((d, used))) => {
                buf.drain(..used);
                return Ok(d);
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = rd.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the SMSC closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
