//! The chat adapter: shared state of one `webchat` channel (socket registry, rate limits,
//! token secret), the visitor-message path (validate → rate limit → `hub.ingest` → seq →
//! ack), agent reply delivery, and the hub-event fan-out to widget sockets.

use crate::config::ChatConfig;
use crate::protocol::{self, ProtocolError, ServerFrame, WireMessage};
use crate::registry::{CurrentInteraction, Push, Registry};
use crate::session::{self, KeyedLimiter, TokenClaims};
use crate::store;
use async_trait::async_trait;
use secrecy::ExposeSecret;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use switchboard_core::adapter::{AdapterError, Assignment, ChannelAdapter, DeliveryReceipt, Outbound, Shutdown};
use switchboard_core::batch::Batcher;
use switchboard_core::bus::{HubEvent, NewEvent};
use switchboard_core::{Channel, CoreError, CoreResult, CustomerHints, Hub, InboundItem};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

/// Window over which the queue's answer rate is measured for wait estimates.
const ESTIMATE_WINDOW_SECS: i64 = 900;

/// What a visitor message became.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    /// Position in the conversation.
    pub seq: i64,
    /// Stored message.
    pub message_id: Uuid,
    /// A resend of an already stored message.
    pub duplicate: bool,
    /// Interaction it belongs to.
    pub interaction_id: Uuid,
}

/// A visitor message as received (socket frame, HTTP fallback or offline form).
#[derive(Debug, Clone, Copy)]
pub struct VisitorMessage<'a> {
    /// Widget id.
    pub client_msg_id: &'a str,
    /// Text.
    pub body: &'a str,
    /// Attachment ids.
    pub attachments: &'a [Uuid],
    /// Keys merged into a new interaction's metadata.
    pub extra_metadata: Option<&'a serde_json::Value>,
}

/// State shared by the adapter, its HTTP handlers and its sockets.
pub struct ChatState {
    /// Instance name.
    pub name: String,
    /// Settings.
    pub cfg: ChatConfig,
    /// Sockets on this node.
    pub registry: Registry,
    /// Messages per visitor.
    pub visitor_limits: KeyedLimiter<Uuid>,
    /// Sessions per IP address.
    pub ip_limits: KeyedLimiter<IpAddr>,
    secret: tokio::sync::OnceCell<Vec<u8>>,
    hub: OnceLock<Hub>,
    dirty_queues: Mutex<HashSet<Uuid>>,
    seqs: OnceLock<SeqBatcher>,
}

/// Numbers (conversation, message) pairs: (seq, newly assigned).
type SeqBatcher = Batcher<(Uuid, Uuid), CoreResult<(i64, bool)>>;

/// The chat ledger, written by the hub with the visitor's message: the message gets its
/// seq in the same commit as the message and its event.
struct ChatLedger;

impl switchboard_core::IngestLedger for ChatLedger {
    fn ctes(&self, input: &str, p: &str) -> String {
        // The conversation key is the conversation id (see `accept_message`); anything else
        // gets no seq here.
        format!(
            "{p}pairs as (
                 select conversation_key::uuid as conv, message_id as msg, ord from {input}
                  where conversation_key ~ '^[0-9a-fA-F]{{8}}-([0-9a-fA-F]{{4}}-){{3}}[0-9a-fA-F]{{12}}$'
             ), {}, {p}out as (select message_id, seq as value from {p}ins)",
            store::numbering_ctes(&format!("{p}pairs"), p, false)
        )
    }
}

/// Concurrent writers of the conversation ledger.
const SEQ_LANES: usize = 4;
/// Most messages numbered in one statement.
const SEQ_MAX_BATCH: usize = 64;

impl ChatState {
    /// New state for a configured channel.
    pub fn new(name: String, cfg: ChatConfig) -> Self {
        ChatState {
            visitor_limits: KeyedLimiter::new(cfg.rate_limit_per_10s, Duration::from_secs(10)),
            ip_limits: KeyedLimiter::new(cfg.sessions_per_minute_per_ip, Duration::from_secs(60)),
            name,
            cfg,
            registry: Registry::default(),
            secret: tokio::sync::OnceCell::new(),
            hub: OnceLock::new(),
            dirty_queues: Mutex::new(HashSet::new()),
            seqs: OnceLock::new(),
        }
    }

    /// Gives a stored message its seq in the conversation (group-committed with the
    /// other messages being numbered at the same moment; one conversation, one lane).
    pub async fn assign_seq(&self, hub: &Hub, conversation: Uuid, message: Uuid) -> CoreResult<(i64, bool)> {
        let batcher = self.seqs.get_or_init(|| {
            let db = hub.db().clone();
            Batcher::new(
                SEQ_LANES,
                SEQ_MAX_BATCH,
                Arc::new(move |pairs: Vec<(Uuid, Uuid)>| {
                    let db = db.clone();
                    Box::pin(async move { store::assign_seqs(&db, &pairs).await })
                }),
            )
        });
        batcher
            .submit(&conversation, (conversation, message))
            .await
            .unwrap_or_else(|| Err(CoreError::Internal("the chat ledger writer stopped".into())))
    }

    /// Remembers the hub (deliveries may arrive before `run` starts).
    pub fn bind_hub(&self, hub: &Hub) {
        if self.hub.set(hub.clone()).is_ok() {
            hub.set_ingest_ledger(Channel::Chat, Arc::new(ChatLedger));
        }
    }

    /// The token HMAC key: configured, or generated once and kept in the database.
    pub async fn secret(&self, hub: &Hub) -> CoreResult<&[u8]> {
        self.secret
            .get_or_try_init(|| async {
                match &self.cfg.token_secret {
                    Some(s) => Ok(s.expose_secret().as_bytes().to_vec()),
                    None => Ok(store::ensure_secret(hub.db(), &format!("token:{}", self.name)).await?.into_bytes()),
                }
            })
            .await
            .map(|v| v.as_slice())
    }

    /// The attachment directory (the `dir` file backend).
    pub fn attachments_dir(&self, hub: &Hub) -> PathBuf {
        self.cfg.attachments_dir.clone().unwrap_or_else(|| hub.settings().database.data_dir.join("attachments"))
    }

    /// Where attachment files live: the directory, or the `attachments/` prefix of the
    /// configured object store.
    pub fn attachments(&self, hub: &Hub) -> std::sync::Arc<dyn switchboard_core::files::FileStore> {
        hub.file_store(&self.attachments_dir(hub), "attachments")
    }

    /// Issues a token for a visitor and conversation.
    pub async fn issue_token(&self, hub: &Hub, visitor: Uuid, conversation: Uuid) -> CoreResult<String> {
        let claims = TokenClaims { visitor_id: visitor, conversation_id: conversation, issued_at: chrono::Utc::now().timestamp() };
        Ok(session::sign_token(self.secret(hub).await?, &claims))
    }

    /// Verifies a visitor token and that its conversation exists.
    pub async fn verify_token(&self, hub: &Hub, token: &str) -> Result<TokenClaims, ProtocolError> {
        let secret = self.secret(hub).await.map_err(internal)?;
        let ttl = self.cfg.token_ttl_days as i64 * 86_400;
        let claims = session::verify_token(secret, token.trim(), chrono::Utc::now().timestamp(), ttl)
            .map_err(|e| ProtocolError::new("invalid_token", e.to_string()))?;
        if !store::conversation_exists(hub.db(), claims.conversation_id, claims.visitor_id).await.map_err(internal)? {
            return Err(ProtocolError::new("invalid_token", "the conversation of this token no longer exists"));
        }
        Ok(claims)
    }

    /// Counts one visitor action against the rate limit.
    pub fn rate_limit(&self, visitor: Uuid) -> Result<(), ProtocolError> {
        self.visitor_limits.check(&visitor, Instant::now()).map_err(|wait| ProtocolError {
            code: "rate_limited",
            message: format!("at most {} messages per 10 seconds", self.cfg.rate_limit_per_10s),
            client_msg_id: None,
            retry_after_ms: Some(wait.as_millis() as u64 + 1),
        })
    }

    /// The pre-chat details of a visitor as customer hints.
    pub async fn hints(&self, hub: &Hub, visitor: Uuid) -> CoreResult<CustomerHints> {
        Ok(match store::visitor(hub.db(), visitor).await? {
            Some(v) => CustomerHints { display_name: v.display_name, email: v.email, language: v.language },
            None => CustomerHints::default(),
        })
    }

    /// A visitor message: validated, rate limited, ingested (committed), given its seq,
    /// pushed to the conversation's sockets. Only then may the caller acknowledge it.
    pub async fn accept_message(
        &self,
        hub: &Hub,
        claims: &TokenClaims,
        hints: &CustomerHints,
        msg: VisitorMessage<'_>,
    ) -> Result<Accepted, ProtocolError> {
        let VisitorMessage { client_msg_id, body, attachments: attachment_ids, extra_metadata } = msg;
        protocol::validate_message(client_msg_id, body, attachment_ids, self.cfg.max_message_bytes)?;
        self.rate_limit(claims.visitor_id).map_err(|e| e.for_message(client_msg_id))?;
        let conv = claims.conversation_id;
        let attachments = if attachment_ids.is_empty() {
            None
        } else {
            let found = store::attachments_in(hub.db(), conv, attachment_ids).await.map_err(internal)?;
            if found.len() != attachment_ids.iter().collect::<HashSet<_>>().len() {
                return Err(ProtocolError::new("invalid_field", "unknown attachment id for this conversation").for_message(client_msg_id));
            }
            Some(serde_json::Value::Array(found.iter().map(attachment_json).collect()))
        };
        let mut metadata = serde_json::json!({ "widget": self.name, "visitor_id": claims.visitor_id });
        if let (Some(m), Some(extra)) = (metadata.as_object_mut(), extra_metadata.and_then(|e| e.as_object())) {
            m.extend(extra.clone());
        }
        let item = InboundItem {
            channel: Some(Channel::Chat),
            dedupe_key: protocol::dedupe_key(conv, client_msg_id),
            conversation_key: Some(conv.to_string()),
            from: claims.visitor_id.to_string(),
            to: Some(self.name.clone()),
            hints: hints.clone(),
            body: body.to_string(),
            attachments: attachments.clone(),
            queue: self.cfg.queue.clone(),
            metadata: Some(metadata),
            ..Default::default()
        };
        let out = hub.ingest(item).await.map_err(|e| match e {
            CoreError::InvalidField { reason, .. } => ProtocolError::new("invalid_field", reason).for_message(client_msg_id),
            other => internal(other).for_message(client_msg_id),
        })?;
        let message_id = out.message_id.ok_or_else(|| internal("ingest returned no message id").for_message(client_msg_id))?;
        let (seq, fresh) = match out.sequence {
            Some(seq) if !out.duplicate => (seq, true),
            // A replay (or a conversation the ledger did not know): look the seq up, or
            // assign it now.
            _ => self.assign_seq(hub, conv, message_id).await.map_err(|e| internal(e).for_message(client_msg_id))?,
        };
        if fresh {
            let entry = WireMessage {
                seq,
                message_id,
                from: "visitor".into(),
                body: body.to_string(),
                attachments: attachments.unwrap_or_else(|| serde_json::json!([])),
                client_msg_id: Some(client_msg_id.to_string()),
                agent_name: None,
                at: chrono::Utc::now(),
            };
            self.registry.push(conv, Push::Entry { seq, text: ServerFrame::Message(entry).to_text().into() });
        }
        let known = self.registry.interaction_of(conv).map(|i| i.id);
        if known != Some(out.interaction_id) && self.registry.has_conversation(conv) {
            if let Ok(Some(li)) = store::latest_interaction(hub.db(), conv).await {
                let waiting = matches!(li.status.as_str(), "queued" | "offered");
                self.registry.set_interaction(conv, CurrentInteraction { id: li.id, queue_id: li.queue_id, waiting });
                if let (true, Some(q)) = (waiting, li.queue_id) {
                    self.mark_queue(q);
                }
            }
        }
        Ok(Accepted { seq, message_id, duplicate: out.duplicate || !fresh, interaction_id: out.interaction_id })
    }

    fn mark_queue(&self, q: Uuid) {
        self.dirty_queues.lock().unwrap_or_else(|p| p.into_inner()).insert(q);
    }

    /// The queue frame for one waiting interaction.
    pub async fn queue_frame(&self, hub: &Hub, queue: Uuid, interaction: Uuid) -> CoreResult<Option<ServerFrame>> {
        let positions = store::queue_positions(hub.db(), queue).await?;
        let Some((_, position)) = positions.into_iter().find(|(i, _)| *i == interaction) else { return Ok(None) };
        let answered = store::answered_recently(hub.db(), queue, ESTIMATE_WINDOW_SECS).await?;
        Ok(Some(ServerFrame::Queue {
            position,
            estimated_wait_secs: session::estimate_wait_secs(position, answered, ESTIMATE_WINDOW_SECS),
        }))
    }

    /// Recomputes queue positions for local waiting conversations in changed queues.
    async fn refresh_queues(&self, hub: &Hub, all: bool) -> CoreResult<()> {
        let queues: Vec<Uuid> = if all {
            self.dirty_queues.lock().unwrap_or_else(|p| p.into_inner()).clear();
            self.registry.queues_with_waiting()
        } else {
            self.dirty_queues.lock().unwrap_or_else(|p| p.into_inner()).drain().collect()
        };
        for q in queues {
            let waiting = self.registry.waiting_in(q);
            if waiting.is_empty() {
                continue;
            }
            let positions: std::collections::HashMap<Uuid, i64> = store::queue_positions(hub.db(), q).await?.into_iter().collect();
            let answered = store::answered_recently(hub.db(), q, ESTIMATE_WINDOW_SECS).await?;
            for (conv, interaction) in waiting {
                let Some(&position) = positions.get(&interaction) else { continue };
                let est = session::estimate_wait_secs(position, answered, ESTIMATE_WINDOW_SECS);
                if self.registry.queue_frame_changed(conv, (position, est)) {
                    let f = ServerFrame::Queue { position, estimated_wait_secs: est };
                    self.registry.push(conv, Push::Frame(f.to_text().into()));
                }
            }
        }
        Ok(())
    }

    /// Reacts to one hub event: pushes the matching frame to the conversation's sockets.
    async fn on_event(&self, hub: &Hub, ev: &HubEvent) -> CoreResult<()> {
        let Some(interaction) = ev.interaction_id else { return Ok(()) };
        if let (Some(q), true) = (
            ev.queue_id,
            matches!(ev.kind.as_str(), "enqueued" | "requeued" | "offered" | "accepted" | "closed" | "abandoned" | "transferred"),
        ) {
            self.mark_queue(q);
        }
        let conv = match self.registry.conversation_of(interaction) {
            Some(c) => c,
            None => {
                // A chat interaction this node has not seen yet (e.g. opened through another
                // node's HTTP fallback): look its conversation up once.
                let is_chat_start = ev.kind == "enqueued" && ev.data.get("channel").and_then(|c| c.as_str()) == Some("chat");
                if !is_chat_start || self.registry.socket_count() == 0 {
                    return Ok(());
                }
                let Some(conv) = store::conversation_of_interaction(hub.db(), interaction).await? else { return Ok(()) };
                if !self.registry.has_conversation(conv) {
                    return Ok(());
                }
                self.registry.set_interaction(conv, CurrentInteraction { id: interaction, queue_id: ev.queue_id, waiting: true });
                conv
            }
        };
        let by = ev.data.get("by").and_then(|b| b.as_str());
        let frame = match ev.kind.as_str() {
            "accepted" => {
                self.registry.set_waiting(interaction, false);
                let name: Option<String> = match ev.agent_id {
                    Some(a) => sqlx::query_scalar("select name from agents where id = $1").bind(a).fetch_optional(hub.db()).await?,
                    None => None,
                };
                Some(ServerFrame::AgentJoined { agent_name: name })
            }
            "requeued" => {
                self.registry.set_queue(interaction, ev.queue_id);
                self.registry.set_waiting(interaction, true);
                None
            }
            "transferred" => {
                let to_queue = ev.data.get("to_queue").is_some();
                if to_queue {
                    self.registry.set_queue(interaction, ev.queue_id);
                }
                let had_agent = ev.data.get("from_agent").is_some_and(|a| !a.is_null());
                had_agent.then(|| ServerFrame::AgentLeft { reason: "transferred".into() })
            }
            "wrap_up" => Some(ServerFrame::AgentLeft { reason: "ended".into() }),
            "closed" | "abandoned" => {
                self.registry.set_waiting(interaction, false);
                Some(ServerFrame::Ended { status: ev.kind.clone() })
            }
            "typing" if by == Some("agent") => {
                Some(ServerFrame::Typing { active: ev.data.get("active").and_then(|a| a.as_bool()).unwrap_or(false) })
            }
            "read" if by == Some("agent") => {
                ev.data.get("up_to_seq").and_then(|s| s.as_i64()).map(|up_to_seq| ServerFrame::Read { up_to_seq })
            }
            // A visitor message ingested by another node (HTTP fallback, another tab): its
            // seq committed with it, so sockets here read past their cursor. The ingesting
            // node pushed it itself.
            "message"
                if ev.data.get("direction").and_then(|d| d.as_str()) == Some("inbound")
                    && ev.data.get("node").and_then(|n| n.as_str())
                        != Some(&*hub.node_id().hyphenated().encode_lower(&mut Uuid::encode_buffer())) =>
            {
                self.registry.push(conv, Push::CatchUp);
                None
            }
            "delivered" => {
                // Another node may have stored the reply: let each socket read past its cursor.
                self.registry.push(conv, Push::CatchUp);
                None
            }
            _ => None,
        };
        if let Some(f) = frame {
            self.registry.push(conv, Push::Frame(f.to_text().into()));
        }
        Ok(())
    }
}

/// A descriptor of a stored attachment, as kept in the message's `attachments` JSON.
pub fn attachment_json(a: &store::Attachment) -> serde_json::Value {
    serde_json::json!({
        "id": a.id, "filename": a.filename, "content_type": a.content_type, "size": a.size_bytes,
        "sha256": a.sha256, "url": format!("/chat/v1/attachments/{}", a.id),
    })
}

/// Logs an internal failure and returns the generic error for the client.
pub fn internal(e: impl std::fmt::Display) -> ProtocolError {
    tracing::error!(error = %e, "Chat request failed.");
    ProtocolError::new("internal", "internal error; it has been logged, please retry")
}

/// The `webchat` channel adapter.
pub struct ChatAdapter {
    state: Arc<ChatState>,
}

impl ChatAdapter {
    /// Builds the adapter from its settings.
    pub fn new(name: String, cfg: ChatConfig) -> Self {
        ChatAdapter { state: Arc::new(ChatState::new(name, cfg)) }
    }

    /// The shared state (tests, benchmarks).
    pub fn state(&self) -> &Arc<ChatState> {
        &self.state
    }
}

#[async_trait]
impl ChannelAdapter for ChatAdapter {
    fn channel(&self) -> Channel {
        Channel::Chat
    }

    fn name(&self) -> &str {
        &self.state.name
    }

    async fn run(&self, hub: Hub, mut shutdown: Shutdown) -> Result<(), AdapterError> {
        let st = &self.state;
        st.bind_hub(&hub);
        hub.add_route_docs(crate::http::ROUTES);
        st.secret(&hub).await?;
        let mut events = hub.events();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        tracing::info!(adapter = %st.name, "Web chat channel running.");
        loop {
            tokio::select! {
                _ = shutdown.wait() => return Ok(()),
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        if let Err(e) = st.on_event(&hub, &ev).await {
                            tracing::warn!(error = %e, kind = %ev.kind, "Chat event fan-out failed.");
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        // Events were dropped: let every socket re-read its transcript tail.
                        tracing::warn!(missed = n, "Chat event fan-out lagged; sockets catch up from the database.");
                    }
                    Err(RecvError::Closed) => return Ok(()),
                },
                _ = tick.tick() => {
                    ticks += 1;
                    // Every 10 s refresh all estimates (the answer rate moves with time).
                    if let Err(e) = st.refresh_queues(&hub, ticks.is_multiple_of(10)).await {
                        tracing::warn!(error = %e, "Queue position refresh failed.");
                    }
                    if ticks.is_multiple_of(60) {
                        let now = Instant::now();
                        st.visitor_limits.prune(now);
                        st.ip_limits.prune(now);
                    }
                }
            }
        }
    }

    /// Stores the reply's place in the conversation and pushes it to the visitor's
    /// sockets on this node; a visitor who is not connected gets it on resume. Offline
    /// form interactions (metadata `offline: true`) are answered by email as well.
    async fn deliver(&self, msg: &Outbound) -> Result<DeliveryReceipt, AdapterError> {
        let hub = self.state.hub.get().cloned().ok_or_else(|| AdapterError::Temporary("chat adapter not started yet".into()))?;
        let Some(interaction) = msg.interaction_id else {
            return Err(AdapterError::Permanent("chat replies need an interaction".into()));
        };
        let conv = match msg.metadata.get("conversation_key").and_then(|k| k.as_str()).and_then(|k| k.parse::<Uuid>().ok()) {
            Some(c) => c,
            None => store::conversation_of_interaction(hub.db(), interaction)
                .await?
                .ok_or_else(|| AdapterError::Permanent("interaction has no chat conversation".into()))?,
        };
        let message_id =
            store::outbox_message(hub.db(), msg.id).await?.ok_or_else(|| AdapterError::Permanent("outbox row has no message".into()))?;
        let (seq, fresh) = self.state.assign_seq(&hub, conv, message_id).await?;
        if fresh {
            if let Some(entry) = store::transcript_entry(hub.db(), conv, seq).await? {
                self.state.registry.push(conv, Push::Entry { seq, text: ServerFrame::Message(entry).to_text().into() });
            }
        }
        let meta = msg.metadata.get("interaction_metadata");
        let offline = meta.and_then(|m| m.get("offline")).and_then(|o| o.as_bool()).unwrap_or(false);
        if let (true, Some(email)) = (offline, meta.and_then(|m| m.get("reply_email")).and_then(|e| e.as_str())) {
            let mut conn = hub.db().acquire().await.map_err(CoreError::from)?;
            switchboard_core::outbox::enqueue_tx(
                &mut conn,
                switchboard_core::outbox::NewOutbound {
                    idempotency_key: format!("chat-offline:{}", msg.id),
                    channel: Channel::Email,
                    interaction_id: Some(interaction),
                    message_id: Some(message_id),
                    recipient: email.to_string(),
                    subject: Some(format!("Re: your message to {}", self.state.cfg.widget_title)),
                    body: msg.body.clone(),
                    metadata: serde_json::json!({ "via": "webchat-offline", "conversation_id": conv }),
                },
            )
            .await?;
        }
        Ok(DeliveryReceipt { provider_id: Some(format!("chat:{conv}:{seq}")) })
    }

    async fn on_assignment(&self, _a: &Assignment) -> Result<(), AdapterError> {
        // The visitor hears about the agent when the offer is accepted (event `accepted`).
        Ok(())
    }

    fn http_router(&self) -> Option<axum::Router<Hub>> {
        Some(crate::http::router(self.state.clone()))
    }

    fn personal_data_eraser(&self) -> Option<Arc<dyn switchboard_core::privacy::PersonalDataEraser>> {
        Some(Arc::new(store::ChatEraser(self.state.clone())))
    }
}

/// Sends a typing indicator to every node (an ephemeral event: not persisted).
pub async fn signal_typing(hub: &Hub, interaction: Uuid, data: serde_json::Value) {
    let ev = NewEvent { interaction_id: Some(interaction), kind: "typing", data, ..Default::default() };
    if let Err(e) = switchboard_core::bus::signal(hub.db(), ev).await {
        tracing::warn!(error = %e, "Could not send a typing indicator.");
    }
}

/// Records a read receipt as an interaction event (persisted, reaches every node).
pub async fn record_read(hub: &Hub, interaction: Uuid, data: serde_json::Value) -> CoreResult<()> {
    hub.record_event(NewEvent::interaction("read", interaction).with_data(data)).await
}
