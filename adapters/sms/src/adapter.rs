//! The `smpp` channel adapter: holds the bind while this node has its lease, turns
//! deliver_sm into interactions (reassembling concatenated parts, deduping, handling
//! consent keywords) or receipt updates, and sends agent replies as submit_sm.

use crate::config::{BindMode, Concatenation, SmppConfig};
use crate::encoding::{self, Concat};
use crate::inbound::{accept_text, InboundText};
use crate::pdu::{esm, status, tag, Address, BindKind, ShortMessage, Tlv};
use crate::receipt::{self, SmsStatus};
use crate::session::{InboundHandler, Session, SubmitOutcome};
use crate::store::{self, Prior};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use switchboard_core::adapter::{AdapterError, ChannelAdapter, DeliveryReceipt, Outbound, Shutdown};
use switchboard_core::{Channel, CoreError, CoreResult, Hub};
use tokio::sync::watch;

/// The adapter kind in `[[channels]]`.
pub const KIND: &str = "smpp";

/// How long one delivery may take (the outbox gives an adapter 60 s).
const DELIVERY_BUDGET: Duration = Duration::from_secs(45);

/// State of one SMPP channel shared by the adapter, the session and its inbound tasks.
pub struct SmppState {
    /// Instance name.
    pub name: String,
    /// Settings.
    pub cfg: SmppConfig,
    /// The SMPP session that sends (the transceiver, or the transmitter of a `tx_rx` pair).
    pub session: Arc<Session>,
    /// The receiver of a `tx_rx` pair (receipts and mobile-originated messages arrive on
    /// it); none for a transceiver.
    pub rx_session: Option<Arc<Session>>,
    hub: OnceLock<Hub>,
    reference: AtomicU16,
    held: watch::Sender<bool>,
    submit_log: OnceLock<store::SubmitLog>,
}

/// A phone number as E.164 (`+` and 8 to 15 digits), if it is one.
pub fn e164(raw: &str) -> Option<String> {
    let t: String = raw.chars().filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.')).collect();
    let digits = t.strip_prefix('+').or_else(|| t.strip_prefix("00"))?;
    (digits.len() >= 8 && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0'))
        .then(|| format!("+{digits}"))
}

/// The sender of a deliver_sm as the hub knows phone numbers: E.164 for international
/// numbers (TON 1 or a `+`/`00` prefix), the address as given otherwise (the CRM reads
/// national numbers in its default region).
fn sender_address(a: &Address) -> String {
    if let Some(n) = e164(&a.addr) {
        return n;
    }
    if a.ton == 1 {
        if let Some(n) = e164(&format!("+{}", a.addr)) {
            return n;
        }
    }
    a.addr.clone()
}

pub(crate) fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
}

/// The text and concatenation info of a mobile-originated deliver_sm: UDH (esm_class
/// UDHI), else the `sar_*` TLVs; `message_payload` when short_message is empty.
pub fn mo_content(sm: &ShortMessage) -> (Option<Concat>, String) {
    let raw: &[u8] = if sm.short_message.is_empty() {
        sm.tlv(tag::MESSAGE_PAYLOAD).map(|t| t.value.as_slice()).unwrap_or(&[])
    } else {
        &sm.short_message
    };
    if sm.esm_class & esm::UDHI != 0 {
        if let Some((concat, payload)) = encoding::parse_udh(raw) {
            return (concat, encoding::decode_text(sm.data_coding, payload));
        }
    }
    let sar = (
        sm.tlv(tag::SAR_MSG_REF_NUM).and_then(|t| t.as_uint()),
        sm.tlv(tag::SAR_TOTAL_SEGMENTS).and_then(|t| t.as_uint()),
        sm.tlv(tag::SAR_SEGMENT_SEQNUM).and_then(|t| t.as_uint()),
    );
    let concat = match sar {
        (Some(r), Some(t @ 1..=255), Some(s @ 1..=255)) if s <= t => Some(Concat { reference: r as u16, total: t as u8, seq: s as u8 }),
        _ => None,
    };
    (concat, encoding::decode_text(sm.data_coding, raw))
}

impl SmppState {
    /// New state for a configured channel.
    pub fn new(name: String, cfg: SmppConfig) -> Arc<SmppState> {
        let (session, rx_session) = match cfg.bind {
            BindMode::Transceiver => (Session::new(name.clone(), cfg.clone()), None),
            BindMode::TxRx => (
                Session::with_kind(name.clone(), cfg.clone(), BindKind::Transmitter),
                Some(Session::with_kind(name.clone(), cfg.clone(), BindKind::Receiver)),
            ),
        };
        Arc::new(SmppState {
            session,
            rx_session,
            name,
            cfg,
            hub: OnceLock::new(),
            reference: AtomicU16::new(rand::random()),
            held: watch::channel(false).0,
            submit_log: OnceLock::new(),
        })
    }

    fn hub(&self) -> CoreResult<&Hub> {
        self.hub.get().ok_or_else(|| CoreError::Internal("sms adapter not started".into()))
    }

    /// One deliver_sm: a receipt updates its sent message; a message (or its last missing
    /// part) is committed. Returns once everything is stored.
    pub async fn on_deliver(&self, sm: ShortMessage) -> CoreResult<()> {
        let hub = self.hub()?;
        if receipt::is_receipt(&sm) {
            match receipt::parse(&sm) {
                Some(r) => match store::apply_receipt_waiting(hub.db(), &self.name, &r, Duration::from_secs(3)).await? {
                    store::ReceiptOutcome::Unmatched => {
                        tracing::info!(channel = %self.name, smsc_id = %r.message_id, "Receipt for a message we do not know.")
                    }
                    store::ReceiptOutcome::Stale(_) | store::ReceiptOutcome::Applied(_) => {}
                },
                // Redelivery cannot make it readable: acknowledge and log.
                None => tracing::warn!(channel = %self.name, "Unreadable delivery receipt acknowledged."),
            }
            return Ok(());
        }
        // Fencing: a node that lost the bind lease (paused past its expiry, then woken with
        // deliver_sm still in its socket) does not ingest; the SMSC redelivers to the node
        // holding the bind now. Two stores of one text fall under different dedupe keys
        // when they straddle the ten-minute window of the hash below.
        let node = hub.node_id();
        if switchboard_core::lease::holder(hub.db(), &store::lease_name(&self.name)).await?.is_none_or(|h| h.holder != node) {
            return Err(CoreError::Channel(format!("the SMPP bind lease of {} is not this node's any more", self.name)));
        }
        let from = sender_address(&sm.source);
        let to = sm.dest.addr.clone();
        let (concat, text) = mo_content(&sm);
        let (body, concat) = match concat {
            Some(c) if c.total > 1 => match store::save_part(hub.db(), &self.name, &from, &to, c, &text).await? {
                Some(full) => (full, Some(c)),
                // Stored; the message is ingested with its last part.
                None => return Ok(()),
            },
            _ => (text, None),
        };
        // Dedupe: the SMSC's id when it gives one; otherwise a hash of source, destination,
        // the SMSC's timestamp (or, lacking one, the ten-minute window) and the text.
        let smsc_id = sm.tlv(tag::RECEIPTED_MESSAGE_ID).map(Tlv::as_cstr).filter(|s| !s.is_empty());
        let dedupe_key = match (smsc_id, concat) {
            (Some(id), _) => format!("smpp:{}:id:{id}", self.name),
            (None, Some(c)) => {
                format!("smpp:{}:cat:{}", self.name, short_hash(&[&from, &to, &c.reference.to_string(), &c.total.to_string(), &body]))
            }
            (None, None) => {
                let when = if sm.schedule_delivery_time.is_empty() {
                    format!("w{}", chrono::Utc::now().timestamp() / 600)
                } else {
                    sm.schedule_delivery_time.clone()
                };
                format!("smpp:{}:h:{}", self.name, short_hash(&[&from, &to, &when, &body]))
            }
        };
        let text = InboundText { channel: &self.name, from: &from, to: &to, body, dedupe_key };
        accept_text(hub, &self.cfg.keywords, self.cfg.queue.clone(), text).await?;
        if let Some(c) = concat {
            store::drop_parts(hub.db(), &self.name, &from, &to, c).await?;
        }
        Ok(())
    }

    /// The submit_sm PDUs of a text, per the configured concatenation.
    pub fn build_parts(&self, dest_digits: &str, text: &str) -> Vec<ShortMessage> {
        let split = encoding::split(text);
        let base = ShortMessage {
            source: Address { ton: self.cfg.source_ton, npi: self.cfg.source_npi, addr: self.cfg.source_address.clone() },
            dest: Address { ton: 1, npi: 1, addr: dest_digits.to_string() },
            registered_delivery: u8::from(self.cfg.registered_delivery),
            data_coding: split.alphabet.data_coding(),
            ..Default::default()
        };
        let total = split.parts.len();
        if total == 1 && self.cfg.concatenation != Concatenation::Payload {
            return vec![ShortMessage { short_message: split.parts[0].clone(), ..base }];
        }
        let reference = self.reference.fetch_add(1, Ordering::Relaxed);
        match self.cfg.concatenation {
            Concatenation::Payload => {
                vec![ShortMessage { tlvs: vec![Tlv { tag: tag::MESSAGE_PAYLOAD, value: split.parts.concat() }], ..base }]
            }
            Concatenation::Udh => split
                .parts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut sm = encoding::concat_udh(reference as u8, total as u8, (i + 1) as u8).to_vec();
                    sm.extend_from_slice(p);
                    ShortMessage { esm_class: esm::UDHI, short_message: sm, ..base.clone() }
                })
                .collect(),
            Concatenation::Sar => split
                .parts
                .iter()
                .enumerate()
                .map(|(i, p)| ShortMessage {
                    short_message: p.clone(),
                    tlvs: vec![
                        Tlv::u16(tag::SAR_MSG_REF_NUM, reference),
                        Tlv::u8(tag::SAR_TOTAL_SEGMENTS, total as u8),
                        Tlv::u8(tag::SAR_SEGMENT_SEQNUM, (i + 1) as u8),
                    ],
                    ..base.clone()
                })
                .collect(),
        }
    }

    /// Sends one outbound message: every part in order, recorded as it goes. A submit
    /// whose response never came is `unknown` and is never resent.
    pub async fn send(&self, msg: &Outbound) -> Result<DeliveryReceipt, AdapterError> {
        let hub = self.hub()?;
        let to = e164(&msg.recipient)
            .ok_or_else(|| AdapterError::Permanent(format!("recipient: `{}` is not an E.164 phone number", msg.recipient)))?;
        if !*self.held.borrow() {
            // The node holding the bind sends it: handed back to the outbox uncounted, or it
            // would fail for good after `max_attempts` claims by the other nodes.
            let elsewhere =
                switchboard_core::lease::holder(hub.db(), &store::lease_name(&self.name)).await?.is_some_and(|h| h.holder != hub.node_id());
            return Err(if elsewhere {
                AdapterError::Elsewhere(format!("the SMPP bind of {} is held by another node", self.name))
            } else {
                AdapterError::Temporary(format!("the SMPP bind of {} is not held by any node", self.name))
            });
        }
        let parts = self.build_parts(&to[1..], &msg.body);
        let log = self.submit_log.get_or_init(|| store::SubmitLog::new(hub.db().clone()));
        let begin = store::BeginSubmit::of(msg, &self.name, &to, parts.len()).stopped_by_opt_out(msg, self.cfg.block_replies_after_stop);
        match log.begin(begin).await? {
            Prior::Fresh => {}
            Prior::OptedOut => return Err(AdapterError::Permanent(format!("{to} opted out of SMS (STOP)"))),
            Prior::Seen(st, ids) => {
                return match st.as_str() {
                    "submitting" | "unknown" => {
                        store::mark(hub.db(), msg.id, SmsStatus::Unknown, "no submit_sm_resp came; not resent automatically").await?;
                        Err(AdapterError::Permanent("the SMSC never answered an earlier submit of this message; it may have been sent, so it is not resent automatically".into()))
                    }
                    "failed" => Err(AdapterError::Permanent("the SMSC refused this message earlier".into())),
                    _ => Ok(DeliveryReceipt { provider_id: Some(ids.join(",")) }),
                };
            }
        }
        let deadline = tokio::time::Instant::now() + DELIVERY_BUDGET;
        let mut ids = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            match self.session.submit(part, deadline).await {
                SubmitOutcome::Accepted(id) => {
                    log.part(&self.name, msg.id, &id).await?;
                    ids.push(id);
                }
                SubmitOutcome::NotSent(why) if i == 0 => {
                    store::cancel_submit(hub.db(), msg.id).await?;
                    return Err(AdapterError::Temporary(why));
                }
                SubmitOutcome::NotSent(why) => {
                    let e = format!("{i} of {} parts sent, then: {why}", parts.len());
                    store::mark(hub.db(), msg.id, SmsStatus::Failed, &e).await?;
                    return Err(AdapterError::Permanent(e));
                }
                SubmitOutcome::Refused(st) if i == 0 && st == status::RSYSERR => {
                    store::cancel_submit(hub.db(), msg.id).await?;
                    return Err(AdapterError::Temporary("SMSC system error (ESME_RSYSERR)".into()));
                }
                SubmitOutcome::Refused(st) => {
                    let e = format!("SMSC refused part {} of {} with status 0x{st:08X}", i + 1, parts.len());
                    store::mark(hub.db(), msg.id, SmsStatus::Failed, &e).await?;
                    return Err(AdapterError::Permanent(e));
                }
                SubmitOutcome::NoResponse => {
                    let e = format!("no submit_sm_resp for part {} of {}", i + 1, parts.len());
                    store::mark(hub.db(), msg.id, SmsStatus::Unknown, &e).await?;
                    return Err(AdapterError::Permanent(format!(
                        "{e}: the SMSC may or may not have the message; SMPP has no idempotency key, so it is not resent automatically"
                    )));
                }
            }
        }
        Ok(DeliveryReceipt { provider_id: Some(ids.join(",")) })
    }

    /// Keeps the bind lease: renewed every third of its length; lost when renewal fails
    /// for longer than the lease could still be ours.
    async fn keep_lease(&self, hub: &Hub, mut shutdown: Shutdown) {
        let secs = self.cfg.lease_secs;
        let every = Duration::from_millis((secs * 1000 / 3).max(500));
        let mut last_ok: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            ticks += 1;
            let held = match store::acquire_lease(hub.db(), &self.name, hub.node_id(), secs).await {
                Ok(h) => {
                    last_ok = h.then(tokio::time::Instant::now);
                    h
                }
                Err(e) => {
                    tracing::warn!(channel = %self.name, error = %e, "Could not renew the SMPP bind lease.");
                    last_ok.is_some_and(|t| t.elapsed() < Duration::from_millis(secs * 1000 * 2 / 3))
                }
            };
            self.held.send_if_modified(|h| {
                let changed = *h != held;
                *h = held;
                changed
            });
            if ticks.is_multiple_of((600_000 / every.as_millis().max(1) as u64).max(1)) && held {
                if let Err(e) = store::expire_parts(hub.db(), 48).await {
                    tracing::warn!(error = %e, "Could not expire old SMS parts.");
                }
            }
        }
    }
}

#[async_trait]
impl InboundHandler for SmppState {
    async fn deliver_sm(&self, sm: ShortMessage) -> u32 {
        match self.on_deliver(sm).await {
            Ok(()) => status::ROK,
            // Content the hub can never take: a permanent error, so the SMSC stops redelivering.
            Err(CoreError::InvalidField { field, reason }) => {
                tracing::warn!(channel = %self.name, %field, %reason, "Inbound SMS refused for good.");
                status::RX_P_APPN
            }
            Err(e) => {
                // Not stored: the SMSC keeps the message and redelivers it later.
                tracing::warn!(channel = %self.name, error = %e, "Inbound SMS not stored; asking the SMSC to redeliver.");
                status::RX_T_APPN
            }
        }
    }
}

/// The `smpp` channel adapter.
pub struct SmppAdapter {
    state: Arc<SmppState>,
}

impl SmppAdapter {
    /// Builds the adapter from its settings.
    pub fn new(name: String, cfg: SmppConfig) -> Self {
        SmppAdapter { state: SmppState::new(name, cfg) }
    }

    /// The shared state (tests, benchmarks).
    pub fn state(&self) -> &Arc<SmppState> {
        &self.state
    }
}

#[async_trait]
impl ChannelAdapter for SmppAdapter {
    fn channel(&self) -> Channel {
        Channel::Sms
    }

    fn name(&self) -> &str {
        &self.state.name
    }

    fn personal_data_eraser(&self) -> Option<Arc<dyn switchboard_core::privacy::PersonalDataEraser>> {
        Some(Arc::new(crate::erase::SmsEraser { channel: self.state.name.clone() }))
    }

    /// Only the node holding the bind lease submits this channel's messages.
    fn delivers_here(&self) -> bool {
        *self.state.held.borrow()
    }

    async fn run(&self, hub: Hub, shutdown: Shutdown) -> Result<(), AdapterError> {
        let st = self.state.clone();
        let _ = st.hub.set(hub.clone());
        hub.add_route_docs(crate::api::route_docs(&st.name));
        let (stop_tx, stop_rx) = watch::channel(false);
        let session = st.session.clone();
        let handler: Arc<dyn InboundHandler> = st.clone();
        let held = st.held.subscribe();
        // A `tx_rx` channel's receiver keeps its own connection (and reconnects on its own).
        let rx_bind = st.rx_session.clone().map(|rx| {
            let (handler, held, stop_rx) = (handler.clone(), held.clone(), stop_rx.clone());
            tokio::spawn(async move { rx.run(handler, held, stop_rx).await })
        });
        let bind = tokio::spawn(async move { session.run(handler, held, stop_rx).await });
        tracing::info!(channel = %st.name, host = %st.cfg.host, port = st.cfg.port, "SMPP channel running.");
        st.keep_lease(&hub, shutdown).await;
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(6), async move {
            let _ = bind.await;
            if let Some(rx) = rx_bind {
                let _ = rx.await;
            }
        })
        .await;
        if let Err(e) = store::release_lease(hub.db(), &st.name, hub.node_id()).await {
            tracing::warn!(error = %e, "Could not release the SMPP bind lease.");
        }
        Ok(())
    }

    async fn deliver(&self, msg: &Outbound) -> Result<DeliveryReceipt, AdapterError> {
        self.state.send(msg).await
    }

    fn http_router(&self) -> Option<axum::Router<Hub>> {
        Some(crate::api::router(&self.state.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers() {
        assert_eq!(e164("+49 151 1234-5678").as_deref(), Some("+4915112345678"));
        assert_eq!(e164("004915112345678").as_deref(), Some("+4915112345678"));
        assert_eq!(e164("015112345678"), None);
        assert_eq!(e164("+12"), None);
        assert_eq!(e164("+49abc4567890"), None);
        assert_eq!(sender_address(&Address { ton: 1, npi: 1, addr: "4915112345678".into() }), "+4915112345678");
        assert_eq!(sender_address(&Address { ton: 2, npi: 1, addr: "015112345678".into() }), "015112345678");
    }

    fn state(concat: &str) -> Arc<SmppState> {
        let t: toml::Value = toml::from_str(&format!(
            "type = \"smpp\"\nhost = \"h\"\nsystem_id = \"s\"\npassword = \"p\"\nsource_address = \"4930123\"\nconcatenation = \"{concat}\""
        ))
        .unwrap();
        SmppState::new("t".into(), SmppConfig::from_toml(t).unwrap())
    }

    #[test]
    fn parts_per_concatenation_mode_reassemble() {
        let text: String = "Привет, мир! 😀 ".chars().cycle().take(300).collect();
        for mode in ["udh", "sar"] {
            let parts = state(mode).build_parts("4915112345678", &text);
            let n = encoding::split(&text).parts.len();
            assert!(n >= 5 && parts.len() == n, "{mode}");
            let mut got = vec![String::new(); n];
            for p in &parts {
                assert_eq!(p.data_coding, 8);
                let (c, t) = mo_content(p);
                let c = c.unwrap();
                assert_eq!(c.total as usize, n);
                got[c.seq as usize - 1] = t;
            }
            assert_eq!(got.concat(), text, "{mode}");
        }
        let one = state("payload").build_parts("4915112345678", &text);
        assert_eq!(one.len(), 1);
        assert_eq!(mo_content(&one[0]).1, text);
        let short = state("udh").build_parts("4915112345678", "hi €");
        assert_eq!((short.len(), short[0].esm_class, short[0].data_coding), (1, 0, 0));
        assert_eq!(mo_content(&short[0]).1, "hi €");
    }

    /// Whatever an SMSC puts in a deliver_sm (UDH flags on garbage, lying sar TLVs, odd
    /// data codings, half receipts), reading it never panics.
    #[test]
    fn reading_random_deliver_sm_never_panics() {
        let mut rng = crate::pdu::XorShift(0xDEC0DE);
        for _ in 0..200_000 {
            let n = rng.below(40);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let mut tlvs = Vec::new();
            for _ in 0..rng.below(4) {
                let tag = [
                    tag::SAR_MSG_REF_NUM,
                    tag::SAR_TOTAL_SEGMENTS,
                    tag::SAR_SEGMENT_SEQNUM,
                    tag::MESSAGE_PAYLOAD,
                    tag::RECEIPTED_MESSAGE_ID,
                    tag::MESSAGE_STATE,
                    tag::NETWORK_ERROR_CODE,
                ][rng.below(7)];
                tlvs.push(Tlv { tag, value: (0..rng.below(5)).map(|_| rng.next() as u8).collect() });
            }
            let sm = ShortMessage {
                esm_class: rng.next() as u8,
                data_coding: [0u8, 1, 3, 4, 8, 0xF0][rng.below(6)],
                short_message: if rng.below(5) == 0 { b"id:12 stat:DELIVRD err:0".to_vec() } else { bytes },
                tlvs,
                ..Default::default()
            };
            let _ = mo_content(&sm);
            let _ = receipt::parse(&sm);
            let _ = receipt::is_receipt(&sm);
        }
    }
}
