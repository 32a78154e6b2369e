//! The hub side of the voice channel: the [`ChannelAdapter`] for `type = "sip"`.
//!
//! It starts the [`VoiceEngine`] with a [`CallRouting`] implementation over the
//! [`Hub`]: a caller leaving the IVR becomes a persisted, queued voice interaction
//! before the engine plays hold music; offers ring the agent's registered phone
//! ([`ChannelAdapter::on_assignment`]); ring-no-answer, busy and unreachable phones end
//! the offer as a timeout (core marks the agent away and re-queues with the original
//! enqueue time); the end of a bridged call stores the recording path and puts the
//! interaction into wrap-up. Hub events drive the rest: withdrawn offers stop the
//! ringing, `max_wait_exceeded` sends the caller to voicemail (or hangs up), and
//! transfers release the agent leg so the new offer can ring the target. Ring-all
//! offers ring every phone at once; the first to answer is accepted in core, which
//! cancels the other offers without penalty. An overflow call answered by the external
//! number makes the interaction `overflowed`; supervisor legs are recorded as events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use switchboard_core::adapter::{AdapterError, AdapterRegistry, Assignment, ChannelAdapter, DeliveryReceipt, Outbound, Shutdown};
use switchboard_core::bus::{HubEvent, NewEvent};
use switchboard_core::interactions::OfferEnd;
use switchboard_core::{Channel, CoreError, CustomerHints, Hub, InboundItem, InteractionStatus};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::call::{CallInfo, CallOutcome, CallRouting, CallTicket, RoutingError, Side};
use crate::config::{CredentialSource, EdgeProxy, SkillRequirement, VoiceConfig};
use crate::registrar::{Binding, CredentialStore, InlineCredentials, RemoteBinding};
use crate::sip::transaction::Peer;
use crate::sip::Transport;
use crate::{VoiceEngine, VoiceEngineHandle};

/// Adapter kind in `[[channels]]`.
pub const KIND: &str = "sip";

/// Keys of the `[[channels]]` table that belong to the adapter, not to [`VoiceConfig`].
const ADAPTER_KEYS: &[&str] =
    &["type", "name", "max_wait_action", "max_wait_voicemail_prompt", "max_wait_voicemail_secs", "max_wait_voicemail_silence_secs"];

/// What happens to a queued caller when the queue's `max_wait_secs` passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MaxWaitAction {
    /// Offer voicemail: prompt, beep, recording; the interaction becomes `voicemail`.
    #[default]
    Voicemail,
    /// Play nothing and hang up; the interaction is abandoned.
    Hangup,
    /// Keep waiting.
    Keep,
}

/// Adapter-level settings next to the [`VoiceConfig`] keys of the channel table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSettings {
    /// Action when a queue's max wait is exceeded.
    #[serde(default)]
    pub max_wait_action: MaxWaitAction,
    /// Prompt played before the voicemail beep after max wait.
    #[serde(default = "default_max_wait_prompt")]
    pub max_wait_voicemail_prompt: Option<String>,
    /// Longest voicemail after max wait, in seconds.
    #[serde(default = "default_max_wait_voicemail_secs")]
    pub max_wait_voicemail_secs: u64,
    /// Seconds of silence that end a voicemail after max wait (0: only `#`, hang-up or
    /// the time limit end it).
    #[serde(default = "default_max_wait_voicemail_silence_secs")]
    pub max_wait_voicemail_silence_secs: u64,
}

fn default_max_wait_prompt() -> Option<String> {
    Some("after-hours".into())
}
fn default_max_wait_voicemail_secs() -> u64 {
    120
}
fn default_max_wait_voicemail_silence_secs() -> u64 {
    8
}

/// Engines of running adapters by adapter name (tests and diagnostics).
fn bound() -> &'static Mutex<HashMap<String, VoiceEngineHandle>> {
    static BOUND: OnceLock<Mutex<HashMap<String, VoiceEngineHandle>>> = OnceLock::new();
    BOUND.get_or_init(Default::default)
}

/// The engine of the running adapter called `name`.
pub fn engine_for(name: &str) -> Option<VoiceEngineHandle> {
    bound().lock().ok().and_then(|m| m.get(name).cloned())
}

/// The SIP UDP address the running adapter called `name` is bound to.
pub fn bound_addr(name: &str) -> Option<SocketAddr> {
    engine_for(name).and_then(|e| e.udp_addr())
}

/// The SIP TCP address the running adapter called `name` is bound to.
pub fn bound_tcp_addr(name: &str) -> Option<SocketAddr> {
    engine_for(name).and_then(|e| e.tcp_addr())
}

/// Registers the `sip` adapter kind.
pub fn register(reg: &mut AdapterRegistry) {
    reg.register(KIND, Box::new(|name, table| Ok(Arc::new(VoiceAdapter::from_table(name, table)?) as Arc<dyn ChannelAdapter>)));
}

/// Splits a `[[channels]]` table into adapter settings and a validated [`VoiceConfig`].
pub fn parse_table(table: toml::Value) -> Result<(AdapterSettings, VoiceConfig), AdapterError> {
    let toml::Value::Table(mut voice) = table else {
        return Err(AdapterError::Config("a channel entry must be a table".into()));
    };
    let mut own = toml::map::Map::new();
    for k in ADAPTER_KEYS {
        if let Some(v) = voice.remove(*k) {
            own.insert((*k).to_string(), v);
        }
    }
    own.remove("type");
    own.remove("name");
    let settings: AdapterSettings = toml::Value::Table(own).try_into().map_err(|e| AdapterError::Config(e.to_string()))?;
    let config: VoiceConfig = toml::Value::Table(voice).try_into().map_err(|e| AdapterError::Config(e.to_string()))?;
    config.validate().map_err(|e| AdapterError::Config(e.to_string()))?;
    Ok((settings, config))
}

/// One call known to this node.
#[derive(Debug, Clone)]
struct CallEntry {
    ticket: CallTicket,
    interaction_id: Uuid,
    /// An agent leg is answered and bridged.
    bridged: bool,
    /// Agent holding the call.
    agent_id: Option<Uuid>,
    /// Position last announced (to avoid repeating an unchanged one too often).
    last_position: Option<u32>,
}

#[derive(Debug, Default)]
struct CallTable {
    by_call: HashMap<String, CallEntry>,
    by_interaction: HashMap<Uuid, String>,
    /// Calls being enqueued here whose interaction id is not known yet.
    enqueuing: std::collections::HashSet<String>,
}

/// State shared by the adapter, its routing implementation and its HTTP routes.
pub struct VoiceState {
    name: String,
    settings: AdapterSettings,
    engine: OnceLock<VoiceEngineHandle>,
    hub: OnceLock<Hub>,
    calls: Mutex<CallTable>,
    /// Ordered writer of `call_owners` rows (cluster call ownership), set by `run`.
    owners: OnceLock<tokio::sync::mpsc::UnboundedSender<OwnerChange>>,
}

/// A change of the calls this node owns, written to `call_owners` in order.
#[derive(Debug)]
enum OwnerChange {
    Owns { interaction_id: Uuid, call_id: String },
    Ended { call_id: String },
}

impl std::fmt::Debug for VoiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceState").field("name", &self.name).finish_non_exhaustive()
    }
}

impl VoiceState {
    /// The running engine, once `run` started it.
    pub fn engine(&self) -> Option<&VoiceEngineHandle> {
        self.engine.get()
    }

    fn with_calls<T>(&self, f: impl FnOnce(&mut CallTable) -> T) -> T {
        let mut guard = match self.calls.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// The hub, once `run` started.
    pub(crate) fn hub(&self) -> Option<&Hub> {
        self.hub.get()
    }

    /// The engine call id of an interaction handled on this node.
    pub fn call_for(&self, interaction_id: Uuid) -> Option<String> {
        self.with_calls(|t| t.by_interaction.get(&interaction_id).cloned())
    }

    fn entry(&self, call_id: &str) -> Option<CallEntry> {
        self.with_calls(|t| t.by_call.get(call_id).cloned())
    }

    /// Registers a call once core knows it (ends its `enqueuing` mark).
    fn insert(&self, entry: CallEntry) {
        self.publish_owner(OwnerChange::Owns { interaction_id: entry.interaction_id, call_id: entry.ticket.call_id.clone() });
        self.with_calls(|t| {
            t.enqueuing.remove(&entry.ticket.call_id);
            t.by_interaction.insert(entry.interaction_id, entry.ticket.call_id.clone());
            t.by_call.insert(entry.ticket.call_id.clone(), entry);
        });
    }

    fn publish_owner(&self, change: OwnerChange) {
        if let Some(tx) = self.owners.get() {
            let _ = tx.send(change);
        }
    }

    fn set_enqueuing(&self, call_id: &str, on: bool) {
        self.with_calls(|t| {
            if on {
                t.enqueuing.insert(call_id.to_string());
            } else {
                t.enqueuing.remove(call_id);
            }
        });
    }

    /// The engine call id of an offered interaction when this node holds its call. An
    /// offer can overtake the enqueue that created its interaction (the router acts on
    /// the commit before the enqueue's answer is back here): such a call is found by its
    /// Call-ID, which is the interaction's conversation key.
    async fn local_call(&self, hub: &Hub, interaction_id: Uuid) -> Option<String> {
        if let Some(c) = self.call_for(interaction_id) {
            return Some(c);
        }
        if self.with_calls(|t| t.enqueuing.is_empty()) {
            return None;
        }
        let key = hub.interaction(interaction_id).await.ok()?.conversation_key?;
        let here = self.with_calls(|t| t.enqueuing.contains(&key) || t.by_interaction.contains_key(&interaction_id));
        here.then_some(key)
    }

    fn remove(&self, call_id: &str) -> Option<CallEntry> {
        let e = self.with_calls(|t| {
            let e = t.by_call.remove(call_id)?;
            t.by_interaction.remove(&e.interaction_id);
            Some(e)
        });
        if e.is_some() {
            self.publish_owner(OwnerChange::Ended { call_id: call_id.to_string() });
        }
        e
    }

    /// Writes this node's call ownership changes to `call_owners`, in order, until the
    /// sender is dropped.
    async fn write_owners(hub: Hub, channel: String, mut rx: tokio::sync::mpsc::UnboundedReceiver<OwnerChange>) {
        let node = hub.node_id();
        while let Some(change) = rx.recv().await {
            let r = match &change {
                OwnerChange::Owns { interaction_id, call_id } => {
                    switchboard_core::cluster::record_call_owner(hub.db(), *interaction_id, call_id, node, &channel).await
                }
                OwnerChange::Ended { call_id } => switchboard_core::cluster::forget_call_owner(hub.db(), call_id, node).await,
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, ?change, "Could not record call ownership.");
            }
        }
    }

    fn update(&self, call_id: &str, f: impl FnOnce(&mut CallEntry)) {
        self.with_calls(|t| {
            if let Some(e) = t.by_call.get_mut(call_id) {
                f(e);
            }
        });
    }

    /// Whether the interaction's call is bridged to an agent on this node.
    pub fn is_bridged(&self, interaction_id: Uuid) -> bool {
        self.call_for(interaction_id).and_then(|c| self.entry(&c)).is_some_and(|e| e.bridged)
    }

    /// Ends a bridged agent leg (the caller waits again); true when there was one.
    pub(crate) fn release(&self, interaction_id: Uuid) -> bool {
        let (Some(call_id), Some(engine)) = (self.call_for(interaction_id), self.engine.get()) else {
            return false;
        };
        let mut released = false;
        self.update(&call_id, |e| {
            released = std::mem::take(&mut e.bridged);
            e.agent_id = None;
        });
        if released {
            let _ = engine.release_agent(&call_id);
        }
        released
    }
}

/// The `sip` channel adapter.
pub struct VoiceAdapter {
    config: VoiceConfig,
    state: Arc<VoiceState>,
}

impl std::fmt::Debug for VoiceAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceAdapter").field("name", &self.state.name).finish_non_exhaustive()
    }
}

impl VoiceAdapter {
    /// Builds the adapter from its `[[channels]]` table.
    pub fn from_table(name: &str, table: toml::Value) -> Result<Self, AdapterError> {
        let (settings, config) = parse_table(table)?;
        Ok(Self::new(name, settings, config))
    }

    /// Builds the adapter from parsed settings.
    pub fn new(name: &str, settings: AdapterSettings, config: VoiceConfig) -> Self {
        let state = Arc::new(VoiceState {
            name: name.to_string(),
            settings,
            engine: OnceLock::new(),
            hub: OnceLock::new(),
            calls: Mutex::new(CallTable::default()),
            owners: OnceLock::new(),
        });
        Self { config, state }
    }

    /// Shared state (HTTP routes, tests).
    pub fn state(&self) -> Arc<VoiceState> {
        self.state.clone()
    }

    /// This channel's recordings (served over HTTP, erased with a customer's data).
    pub fn recordings(&self) -> crate::recordings::RecordingStore {
        crate::recordings::RecordingStore::new(&self.config.recordings_dir, &self.config.voicemail_dir)
    }

    async fn on_event(&self, hub: &Hub, ev: &HubEvent) {
        let Some(interaction_id) = ev.interaction_id else {
            return;
        };
        let Some(call_id) = self.state.call_for(interaction_id) else {
            return;
        };
        let Some(engine) = self.state.engine.get() else {
            return;
        };
        let offer_id = ev.data.get("offer_id").and_then(|v| v.as_str()).unwrap_or_default();
        match ev.kind.as_str() {
            // An offer that ended (expired by the router, declined in the UI, withdrawn)
            // stops ringing.
            "offer_timeout" | "offer_declined" | "offer_withdrawn" | "offer_unreachable" => {
                let _ = engine.stop_ringing(&call_id, offer_id);
            }
            "max_wait_exceeded" => {
                if self.state.entry(&call_id).is_some_and(|e| e.bridged) {
                    return;
                }
                let s = &self.state.settings;
                match s.max_wait_action {
                    MaxWaitAction::Voicemail => {
                        let max = Duration::from_secs(s.max_wait_voicemail_secs.max(1));
                        let silence =
                            (s.max_wait_voicemail_silence_secs > 0).then(|| Duration::from_secs(s.max_wait_voicemail_silence_secs));
                        let _ = engine.to_voicemail(&call_id, s.max_wait_voicemail_prompt.clone(), max, silence);
                    }
                    MaxWaitAction::Hangup => {
                        let _ = engine.hangup(&call_id);
                    }
                    MaxWaitAction::Keep => {}
                }
                record(
                    hub,
                    "call_max_wait",
                    interaction_id,
                    json!({ "call_id": call_id, "action": format!("{:?}", s.max_wait_action).to_lowercase() }),
                )
                .await;
            }
            // A transfer to a queue: the agent leg ends and the caller waits again. A transfer
            // to an agent is handled in `on_assignment` (release, then ring the target).
            "transferred" if ev.data.get("to_queue").is_some() && self.state.release(interaction_id) => {
                record(hub, "call_released", interaction_id, json!({ "call_id": call_id, "reason": "transfer" })).await;
            }
            // Closed or abandoned by someone else while the call is still up: hang up.
            "closed" | "abandoned" if self.state.remove(&call_id).is_some() => {
                let _ = engine.hangup(&call_id);
            }
            _ => {}
        }
    }

    /// Announces each waiting caller's position and estimated wait.
    async fn announce_positions(&self, hub: &Hub) {
        let Some(engine) = self.state.engine.get() else {
            return;
        };
        let waiting: Vec<(String, Uuid)> = self
            .state
            .with_calls(|t| t.by_call.values().filter(|e| !e.bridged).map(|e| (e.ticket.call_id.clone(), e.interaction_id)).collect());
        for (call_id, id) in waiting {
            match queue_position(hub, id).await {
                Ok(Some((position, wait))) => {
                    let _ = engine.announce_position(&call_id, position, wait);
                    let mut changed = false;
                    self.state.update(&call_id, |e| {
                        changed = e.last_position != Some(position);
                        e.last_position = Some(position);
                    });
                    // One event per change of position, not one per announcement.
                    if changed {
                        let data = json!({ "call_id": call_id, "position": position, "estimated_wait_secs": wait.as_secs() });
                        record(hub, "announced_position", id, data).await;
                    }
                }
                Ok(None) => {}
                Err(error) => tracing::debug!(%error, "Queue position lookup failed."),
            }
        }
    }
}

/// Position (1-based) of a queued interaction in its queue and the estimated wait
/// (average answered wait of the last hour in that queue, 60 s when unknown).
pub async fn queue_position(hub: &Hub, id: Uuid) -> Result<Option<(u32, Duration)>, sqlx::Error> {
    let row: Option<(Option<Uuid>, i32, chrono::DateTime<chrono::Utc>, String)> =
        sqlx::query_as("select queue_id, priority, enqueued_at, status from interactions where id = $1")
            .bind(id)
            .fetch_optional(hub.db())
            .await?;
    let Some((Some(queue), priority, enqueued_at, status)) = row else {
        return Ok(None);
    };
    if status != "queued" {
        return Ok(None);
    }
    let ahead: i64 = sqlx::query_scalar(
        "select count(*) from interactions where queue_id = $1 and status = 'queued'
           and (priority > $2 or (priority = $2 and enqueued_at < $3))",
    )
    .bind(queue)
    .bind(priority)
    .bind(enqueued_at)
    .fetch_one(hub.db())
    .await?;
    let avg: Option<f64> = sqlx::query_scalar(
        "select extract(epoch from avg(answered_at - enqueued_at))::float8 from interactions
          where queue_id = $1 and answered_at is not null and answered_at > now() - interval '1 hour'",
    )
    .bind(queue)
    .fetch_one(hub.db())
    .await?;
    let wait = Duration::from_secs_f64(avg.filter(|a| a.is_finite() && *a >= 0.0).unwrap_or(60.0).min(86_400.0));
    Ok(Some((u32::try_from(ahead).unwrap_or(u32::MAX).saturating_add(1), wait)))
}

async fn record(hub: &Hub, kind: &'static str, id: Uuid, data: serde_json::Value) {
    if let Err(error) = hub.record_event(NewEvent::interaction(kind, id).with_data(data)).await {
        tracing::warn!(%error, kind, "Could not record a voice event.");
    }
}

#[async_trait]
impl ChannelAdapter for VoiceAdapter {
    fn channel(&self) -> Channel {
        Channel::Voice
    }

    fn personal_data_eraser(&self) -> Option<Arc<dyn switchboard_core::privacy::PersonalDataEraser>> {
        Some(Arc::new(self.recordings()))
    }

    fn name(&self) -> &str {
        &self.state.name
    }

    async fn run(&self, hub: Hub, mut shutdown: Shutdown) -> Result<(), AdapterError> {
        hub.add_route_docs(crate::http::ROUTES);
        hub.metrics().add_source("voice", Arc::new(crate::metrics::VoiceMetrics));
        hub.add_route_docs(crate::recordings::ROUTES);
        let _ = self.state.hub.set(hub.clone());
        let (owners_tx, owners_rx) = tokio::sync::mpsc::unbounded_channel();
        if self.state.owners.set(owners_tx).is_ok() {
            tokio::spawn(VoiceState::write_owners(hub.clone(), self.state.name.clone(), owners_rx));
        }
        let inline = InlineCredentials::from_config(&self.config.registrar.credentials);
        let from_db = matches!(self.config.registrar.credentials, CredentialSource::External);
        // Registrations are published to core in order by this task (see `registration_changed`).
        let (registrations, mut registered) = tokio::sync::mpsc::unbounded_channel();
        let edge = self.config.registrar.edge_proxy();
        let creds = Arc::new(HubCredentials {
            inline,
            db: RwLock::new(HashMap::new()),
            registrations,
            remote: RwLock::new(HashMap::new()),
            edge_published: Mutex::new(HashMap::new()),
            edge_failing: std::sync::atomic::AtomicBool::new(false),
        });
        if from_db {
            creds.refresh(&hub).await;
        }
        let routing = Arc::new(HubRouting { hub: hub.clone(), state: self.state.clone(), recordings: self.recordings() });
        let engine =
            VoiceEngine::start(self.config.clone(), routing, creds.clone()).await.map_err(|e| AdapterError::Config(e.to_string()))?;
        if let Ok(mut m) = bound().lock() {
            m.insert(self.state.name.clone(), engine.clone());
        }
        let _ = self.state.engine.set(engine.clone());
        let mut events = hub.events();
        let every = Duration::from_secs(self.config.announce_every_secs.max(1));
        let mut announce = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut refresh = tokio::time::interval(Duration::from_secs(10));
        // Bindings of phones registered with other nodes of a cluster, or with the edge.
        let mut remote_tick = tokio::time::interval(Duration::from_secs(if edge.is_some() { 1 } else { 2 }));
        remote_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        if from_db && ev.kind == "agent_updated" {
                            creds.refresh(&hub).await;
                        }
                        self.on_event(&hub, &ev).await;
                    }
                    Err(RecvError::Lagged(n)) => tracing::warn!(skipped = n, "Voice adapter lagged behind hub events."),
                    Err(RecvError::Closed) => break,
                },
                Some(note) = registered.recv() => match note {
                    RegistrationNote::Expiry(user, expires_at) => {
                        if let Err(error) = hub.set_voice_registration(&user, expires_at).await {
                            tracing::warn!(%error, sip_user = %user, "Could not publish a phone registration.");
                        }
                    }
                    RegistrationNote::Binding(user, binding) => {
                        if let Err(error) = publish_binding(&hub, &user, &binding).await {
                            tracing::warn!(%error, sip_user = %user, "Could not publish a phone binding.");
                        }
                    }
                },
                _ = remote_tick.tick() => match edge {
                    Some(edge) => creds.refresh_edge(&hub, edge).await,
                    None => creds.refresh_remote(&hub).await,
                },
                _ = announce.tick() => self.announce_positions(&hub).await,
                _ = refresh.tick(), if from_db => creds.refresh(&hub).await,
            }
        }
        engine.shutdown();
        if let Ok(mut m) = bound().lock() {
            m.remove(&self.state.name);
        }
        if edge.is_some() {
            creds.withdraw_edge(&hub).await;
        }
        Ok(())
    }

    async fn deliver(&self, _msg: &Outbound) -> Result<DeliveryReceipt, AdapterError> {
        Err(AdapterError::Permanent("voice interactions take no text replies".into()))
    }

    async fn on_assignment(&self, a: &Assignment) -> Result<(), AdapterError> {
        if a.channel != Channel::Voice {
            return Ok(());
        }
        let (Some(engine), Some(hub)) = (self.state.engine.get(), self.state.hub.get()) else {
            return Ok(());
        };
        // Only the node holding the call rings (every node sees every offer).
        let Some(call_id) = self.state.local_call(hub, a.interaction_id).await else {
            return Ok(());
        };
        let Some(sip_user) = a.agent_sip_user.as_deref().filter(|u| !u.is_empty()) else {
            tracing::warn!(agent_id = %a.agent_id, reason = "agent has no sip_user", "Voice offer to an agent without a phone; re-queued without penalty.");
            record(hub, "call_unreachable", a.interaction_id, json!({ "offer_id": a.offer_id, "reason": "agent has no sip_user" })).await;
            match hub.end_offer(a.offer_id, None, OfferEnd::Unreachable).await {
                Ok(()) | Err(CoreError::Conflict(_)) | Err(CoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(());
        };
        // Ring-all: every offer rings its phone at once (parallel forks). The first phone
        // to answer is accepted; core cancels the other offers without penalty and the
        // engine CANCELs their INVITEs.
        // A transfer of a bridged call: end the current agent leg first (same command
        // channel, so the engine sees the release before the ring).
        if self.state.release(a.interaction_id) {
            record(hub, "call_released", a.interaction_id, json!({ "call_id": call_id, "reason": "transfer" })).await;
        }
        engine.ring_agent(&call_id, sip_user, &a.offer_id.to_string()).map_err(|e| AdapterError::Temporary(e.to_string()))?;
        Ok(())
    }

    fn http_router(&self) -> Option<axum::Router<Hub>> {
        let registrar = crate::http::RegistrarInfo {
            realm: self.config.registrar.realm.clone(),
            from_database: matches!(self.config.registrar.credentials, CredentialSource::External),
        };
        Some(crate::http::router(self.state.clone(), registrar).merge(crate::recordings::router(Arc::new(self.recordings()))))
    }
}

/// Agents' SIP credentials: inline ones from the config, then `sip_credentials` rows
/// (HA1 per realm) of agents with a `sip_user`, cached and refreshed periodically and
/// whenever an agent changes.
struct HubCredentials {
    inline: InlineCredentials,
    db: RwLock<HashMap<(String, String), String>>,
    /// Registration changes on their way to core, in order.
    registrations: tokio::sync::mpsc::UnboundedSender<RegistrationNote>,
    /// Live bindings other nodes published (cluster), refreshed every 2 s; with an edge,
    /// the users with a binding there (refreshed every second), rung through the edge.
    remote: RwLock<HashMap<String, RemoteBinding>>,
    /// The edge's bindings this node last published to core (user → expiry).
    edge_published: Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>,
    /// Whether the last read of the edge's bindings failed (logged once per outage).
    edge_failing: std::sync::atomic::AtomicBool,
}

/// Whether a SIP user read from the edge's table can go into a Request-URI as it is
/// (RFC 3261 unreserved characters and a few user-safe marks; anything else is skipped).
fn plain_sip_user(user: &str) -> bool {
    !user.is_empty() && user.len() <= 64 && user.chars().all(crate::b2bua::sip_user_char)
}

/// Where an agent registered at the edge is rung: `sip:<user>@<edge>`, sent to the edge,
/// which looks the phone up in its location table and relays (record-routing).
fn edge_binding(user: &str, edge: EdgeProxy) -> RemoteBinding {
    let (param, transport) = if edge.tcp { (";transport=tcp", Transport::Tcp) } else { ("", Transport::Udp) };
    RemoteBinding { contact: format!("sip:{user}@{}{param}", edge.addr), peer: Peer { addr: edge.addr, transport } }
}

/// The unexpired bindings at the edge, by user, with seconds left. Kamailio's `usrloc`
/// (db_mode 1, write-through) writes `expires` as a timestamp without time zone in its
/// local time, so it is compared with the database's `localtimestamp` (run both in one
/// time zone, e.g. UTC).
const EDGE_BINDINGS: &str = "select username, extract(epoch from max(expires) - localtimestamp)::float8 from location
   where expires > localtimestamp group by username";

/// A registration change for core: the expiry of the latest binding, then the binding.
enum RegistrationNote {
    Expiry(String, Option<chrono::DateTime<chrono::Utc>>),
    Binding(String, Option<RemoteBinding>),
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    }
}

/// Publishes the binding of this node's registration row (cluster: other nodes ring the
/// phone with it).
async fn publish_binding(hub: &Hub, user: &str, binding: &Option<RemoteBinding>) -> Result<(), sqlx::Error> {
    let Some(b) = binding else { return Ok(()) };
    sqlx::query("update voice_registrations set contact = $3, peer = $4, transport = $5 where sip_user = $1 and node_id = $2")
        .bind(user)
        .bind(hub.node_id())
        .bind(&b.contact)
        .bind(b.peer.addr.to_string())
        .bind(transport_name(b.peer.transport))
        .execute(hub.db())
        .await?;
    Ok(())
}

impl HubCredentials {
    /// Reads the edge's bindings (Kamailio `location` in this database): who can be rung
    /// through the edge, and for core (router eligibility, presence, the agents' list)
    /// each user's expiry, published as this node's registration row when it changed.
    async fn refresh_edge(&self, hub: &Hub, edge: EdgeProxy) {
        let now = chrono::Utc::now();
        let rows: Vec<(String, Option<f64>)> = match sqlx::query_as(EDGE_BINDINGS).fetch_all(hub.db()).await {
            Ok(rows) => {
                if self.edge_failing.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    tracing::info!("The edge's phone bindings are readable again.");
                }
                rows
            }
            Err(error) => {
                if !self.edge_failing.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(%error, "Could not read the edge's phone bindings (registrar.edge is set: is Kamailio's usrloc table `location` in this database?); retrying every second.");
                }
                // Meanwhile the bindings last read ring until they expire.
                let expired: Vec<String> = match self.edge_published.lock() {
                    Ok(p) => p.iter().filter(|(_, at)| **at <= now).map(|(u, _)| u.clone()).collect(),
                    Err(_) => return,
                };
                if let Ok(mut r) = self.remote.write() {
                    for user in &expired {
                        r.remove(user);
                    }
                }
                return;
            }
        };
        let live: HashMap<String, chrono::DateTime<chrono::Utc>> = rows
            .into_iter()
            .filter(|(user, _)| plain_sip_user(user))
            .filter_map(|(user, left)| {
                let left = chrono::Duration::milliseconds((left?.clamp(0.0, 1e9) * 1000.0) as i64);
                Some((user, now + left))
            })
            .collect();
        if let Ok(mut r) = self.remote.write() {
            *r = live.keys().map(|u| (u.clone(), edge_binding(u, edge))).collect();
        }
        crate::metrics::voice_stats().edge_registrations.store(live.len() as i64, std::sync::atomic::Ordering::Relaxed);
        let previous = match self.edge_published.lock() {
            Ok(p) => p.clone(),
            Err(_) => return,
        };
        // What core holds after this round; a failed write is retried on the next read.
        let mut published = live.clone();
        for (user, at) in &live {
            // A re-REGISTER moves the expiry; small moves are not worth a write.
            if let Some(p) = previous.get(user).filter(|p| (**p - *at).num_seconds().abs() < 2) {
                published.insert(user.clone(), *p);
                continue;
            }
            if let Err(error) = hub.set_voice_registration(user, Some(*at)).await {
                tracing::warn!(%error, sip_user = %user, "Could not publish an edge registration.");
                published.remove(user);
            }
        }
        for (user, at) in previous.iter().filter(|(u, _)| !live.contains_key(*u)) {
            if let Err(error) = hub.set_voice_registration(user, None).await {
                tracing::warn!(%error, sip_user = %user, "Could not publish the end of an edge registration.");
                published.insert(user.clone(), *at);
            }
        }
        if let Ok(mut p) = self.edge_published.lock() {
            *p = published;
        }
    }

    /// On shutdown: this node no longer vouches for the edge's bindings (the other nodes
    /// still do; a node that dies without this leaves its rows until they expire).
    async fn withdraw_edge(&self, hub: &Hub) {
        let published = self.edge_published.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        for user in published.keys() {
            if let Err(error) = hub.set_voice_registration(user, None).await {
                tracing::warn!(%error, sip_user = %user, "Could not withdraw an edge registration.");
            }
        }
    }

    /// Loads the live bindings other nodes published.
    async fn refresh_remote(&self, hub: &Hub) {
        let rows: Result<Vec<(String, String, String, String)>, _> = sqlx::query_as(
            "select sip_user, contact, peer, transport from voice_registrations
              where node_id <> $1 and expires_at > now() and contact is not null and peer is not null
              order by expires_at",
        )
        .bind(hub.node_id())
        .fetch_all(hub.db())
        .await;
        match rows {
            Ok(rows) => {
                let mut map = HashMap::new();
                for (user, contact, peer, transport) in rows {
                    let Ok(addr) = peer.parse::<SocketAddr>() else { continue };
                    let transport = if transport == "tcp" { Transport::Tcp } else { Transport::Udp };
                    // Ordered by expiry: the latest binding wins.
                    map.insert(user, RemoteBinding { contact, peer: Peer { addr, transport } });
                }
                if let Ok(mut r) = self.remote.write() {
                    *r = map;
                }
            }
            Err(error) => tracing::warn!(%error, "Could not load the phone bindings of other nodes."),
        }
    }

    async fn refresh(&self, hub: &Hub) {
        let rows: Result<Vec<(String, String, String)>, _> = sqlx::query_as(
            "select a.sip_user, c.realm, c.ha1 from sip_credentials c join agents a on a.id = c.agent_id where a.sip_user is not null",
        )
        .fetch_all(hub.db())
        .await;
        match rows {
            Ok(rows) => {
                let map = rows.into_iter().map(|(u, r, h)| ((u, r), h)).collect();
                if let Ok(mut db) = self.db.write() {
                    *db = map;
                }
            }
            Err(error) => tracing::warn!(%error, "Could not load SIP credentials."),
        }
    }
}

impl CredentialStore for HubCredentials {
    fn ha1(&self, user: &str, realm: &str) -> Option<String> {
        self.inline.ha1(user, realm).or_else(|| self.db.read().ok().and_then(|db| db.get(&(user.to_string(), realm.to_string())).cloned()))
    }

    fn registration_changed(&self, user: &str, expires_in: Option<Duration>) {
        let expires_at = expires_in.and_then(|d| chrono::Duration::from_std(d).ok()).map(|d| chrono::Utc::now() + d);
        let _ = self.registrations.send(RegistrationNote::Expiry(user.to_string(), expires_at));
    }

    fn binding_changed(&self, user: &str, binding: Option<&Binding>) {
        let b = binding.map(|b| RemoteBinding { contact: b.contact.clone(), peer: b.peer });
        let _ = self.registrations.send(RegistrationNote::Binding(user.to_string(), b));
    }

    fn remote_binding(&self, user: &str) -> Option<RemoteBinding> {
        self.remote.read().ok()?.get(user).cloned()
    }
}

/// Shortest SIP password accepted (phones store it; digest auth offers no lockout).
pub const MIN_SIP_PASSWORD_LEN: usize = 8;
/// Longest SIP password accepted.
pub const MAX_SIP_PASSWORD_LEN: usize = 128;

/// Checks a new SIP password: 8 to 128 characters, no control characters.
pub fn check_sip_password(password: &str) -> Result<(), CoreError> {
    let n = password.chars().count();
    if !(MIN_SIP_PASSWORD_LEN..=MAX_SIP_PASSWORD_LEN).contains(&n) {
        return Err(CoreError::field("password", format!("must be {MIN_SIP_PASSWORD_LEN} to {MAX_SIP_PASSWORD_LEN} characters")));
    }
    if password.chars().any(char::is_control) {
        return Err(CoreError::field("password", "must not contain control characters"));
    }
    Ok(())
}

/// Stores an agent's SIP digest credentials (HA1 only; the password is not kept).
pub async fn set_sip_password(hub: &Hub, agent_id: Uuid, realm: &str, password: &str) -> Result<(), CoreError> {
    set_sip_password_as(hub, None, agent_id, realm, password).await.map(|_| ())
}

/// [`set_sip_password`] on behalf of `actor` (audit log); returns the agent's SIP user.
/// The digest stored is HA1 = MD5(sip_user:realm:password) (RFC 2617 §3.2.2.2), what the
/// registrar needs to check a phone's REGISTER; running hubs pick it up through the
/// `agent_updated` event.
pub async fn set_sip_password_as(hub: &Hub, actor: Option<Uuid>, agent_id: Uuid, realm: &str, password: &str) -> Result<String, CoreError> {
    check_sip_password(password)?;
    let sip_user: Option<Option<String>> =
        sqlx::query_scalar("select sip_user from agents where id = $1").bind(agent_id).fetch_optional(hub.db()).await?;
    let user = sip_user
        .ok_or(CoreError::NotFound("agent"))?
        .filter(|u| !u.is_empty())
        .ok_or_else(|| CoreError::field("sip_user", "the agent has no SIP user; set one first"))?;
    let ha1 = crate::sip::digest::ha1(&user, realm, password);
    let mut tx = hub.db().begin().await?;
    sqlx::query(
        "insert into sip_credentials (agent_id, ha1, realm) values ($1, $2, $3)
         on conflict (agent_id) do update set ha1 = excluded.ha1, realm = excluded.realm, updated_at = now()",
    )
    .bind(agent_id)
    .bind(ha1)
    .bind(realm)
    .execute(&mut *tx)
    .await?;
    switchboard_core::auth::audit(
        &mut tx,
        actor,
        "agent.sip_password",
        "agent",
        &agent_id.to_string(),
        json!({ "sip_user": user, "realm": realm }),
    )
    .await?;
    tx.commit().await?;
    hub.record_event(NewEvent::agent("agent_updated", agent_id).with_data(json!({ "sip_credentials": true }))).await?;
    Ok(user)
}

/// [`CallRouting`] over the hub.
struct HubRouting {
    hub: Hub,
    state: Arc<VoiceState>,
    recordings: crate::recordings::RecordingStore,
}

fn requirement_expr(reqs: &[SkillRequirement]) -> Option<String> {
    let parts: Vec<String> = reqs.iter().map(|r| format!("{} >= {}", r.skill, r.min_level)).collect();
    (!parts.is_empty()).then(|| parts.join(" and "))
}

fn routing_err(e: impl std::fmt::Display) -> RoutingError {
    RoutingError(e.to_string())
}

fn parse_offer(offer_id: &str) -> Result<Uuid, RoutingError> {
    offer_id.parse().map_err(|_| RoutingError(format!("offer id {offer_id:?} is not a UUID")))
}

impl HubRouting {
    fn interaction_of(&self, ticket: &CallTicket) -> Result<Uuid, RoutingError> {
        ticket.interaction_id.parse().map_err(|_| RoutingError("ticket without interaction id".into()))
    }

    /// Ends an offer the phone did not take (an offer already settled is left alone).
    async fn end_offer(&self, offer: Uuid, how: OfferEnd) {
        match self.hub.end_offer(offer, None, how).await {
            Ok(()) | Err(CoreError::Conflict(_)) | Err(CoreError::NotFound(_)) => {}
            Err(error) => tracing::warn!(%error, %offer, ?how, "Could not end a voice offer."),
        }
    }
}

#[async_trait]
impl CallRouting for HubRouting {
    async fn enqueue_call(&self, call: CallInfo) -> Result<CallTicket, RoutingError> {
        let requirement = requirement_expr(&call.requirements);
        let language = call.requirements.iter().find_map(|r| r.skill.strip_prefix("language:").map(str::to_string));
        let ivr = json!({
            "queue": call.queue,
            "requirements": call.requirements.iter().map(|r| format!("{} >= {}", r.skill, r.min_level)).collect::<Vec<_>>(),
            "path": call.ivr_path,
        });
        let body = match &requirement {
            Some(r) => format!("Incoming call (IVR: queue {}, {r})", if call.queue.is_empty() { "default" } else { &call.queue }),
            None => format!("Incoming call (IVR: queue {})", if call.queue.is_empty() { "default" } else { &call.queue }),
        };
        let item = InboundItem {
            channel: Some(Channel::Voice),
            dedupe_key: call.call_id.clone(),
            conversation_key: Some(call.call_id.clone()),
            from: call.caller.clone(),
            to: Some(call.dialled.clone()),
            hints: CustomerHints { display_name: call.caller_name.clone(), email: None, language },
            body,
            content_type: Some("text/plain".into()),
            requirement,
            queue: (!call.queue.is_empty()).then(|| call.queue.clone()),
            metadata: Some(
                json!({ "call_id": call.call_id, "trunk": call.trunk, "dialled": call.dialled, "ivr": ivr, "node": self.state.name }),
            ),
            ..Default::default()
        };
        self.state.set_enqueuing(&call.call_id, true);
        let outcome = match self.hub.ingest(item).await {
            Ok(o) => o,
            Err(e) => {
                self.state.set_enqueuing(&call.call_id, false);
                return Err(routing_err(e));
            }
        };
        if !outcome.created {
            // The Call-ID is the dedupe key, so an interaction for it exists already (a
            // trunk reusing Call-IDs). Queueing this caller on it would leave them waiting
            // on an interaction that is finished or belongs to another call: refuse it,
            // loudly (the engine plays `technical-difficulties` and hangs up).
            self.state.set_enqueuing(&call.call_id, false);
            tracing::warn!(call_id = %call.call_id, interaction_id = %outcome.interaction_id, duplicate = outcome.duplicate, "Call-ID already has an interaction; refusing the call.");
            return Err(RoutingError(format!("Call-ID {} already belongs to interaction {}", call.call_id, outcome.interaction_id)));
        }
        let ticket = CallTicket { call_id: call.call_id.clone(), interaction_id: outcome.interaction_id.to_string() };
        self.state.insert(CallEntry {
            ticket: ticket.clone(),
            interaction_id: outcome.interaction_id,
            bridged: false,
            agent_id: None,
            last_position: None,
        });
        record(&self.hub, "ivr_choice", outcome.interaction_id, json!({ "call_id": call.call_id, "ivr": ivr })).await;
        Ok(ticket)
    }

    async fn abandon(&self, ticket: &CallTicket) -> Result<(), RoutingError> {
        let id = self.interaction_of(ticket)?;
        self.state.remove(&ticket.call_id);
        match self.hub.abandon(id).await {
            Ok(()) | Err(CoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(routing_err(e)),
        }
    }

    async fn call_event(&self, ticket: &CallTicket, event: CallOutcome) -> Result<(), RoutingError> {
        let id = self.interaction_of(ticket)?;
        let call_id = ticket.call_id.clone();
        match event {
            CallOutcome::Ringing { offer_id } => {
                record(&self.hub, "call_ringing", id, json!({ "call_id": call_id, "offer_id": offer_id })).await;
            }
            CallOutcome::Answered { offer_id, agent } => {
                let offer = parse_offer(&offer_id)?;
                let agent_id: Option<Uuid> = sqlx::query_scalar("select agent_id from offers where id = $1")
                    .bind(offer)
                    .fetch_optional(self.hub.db())
                    .await
                    .map_err(routing_err)?;
                let Some(agent_id) = agent_id else {
                    return Err(RoutingError(format!("unknown offer {offer}")));
                };
                match self.hub.accept_offer(offer, agent_id).await {
                    Ok(_) => {
                        self.state.update(&call_id, |e| {
                            e.bridged = true;
                            e.agent_id = Some(agent_id);
                        });
                        record(
                            &self.hub,
                            "call_answered",
                            id,
                            json!({ "call_id": call_id, "offer_id": offer_id, "sip_user": agent, "agent_id": agent_id }),
                        )
                        .await;
                    }
                    Err(error) => {
                        // The offer was withdrawn meanwhile (expired, transferred): the caller
                        // goes back to waiting and core's next offer rings someone.
                        tracing::warn!(%error, %offer, "Phone answered an offer core no longer holds; releasing the agent leg.");
                        if let Some(engine) = self.state.engine.get() {
                            let _ = engine.release_agent(&call_id);
                        }
                        record(
                            &self.hub,
                            "call_released",
                            id,
                            json!({ "call_id": call_id, "offer_id": offer_id, "reason": error.to_string() }),
                        )
                        .await;
                    }
                }
            }
            CallOutcome::NoAnswer { offer_id } => {
                record(&self.hub, "call_no_answer", id, json!({ "call_id": call_id, "offer_id": offer_id })).await;
                self.end_offer(parse_offer(&offer_id)?, OfferEnd::Timeout).await;
            }
            CallOutcome::Busy { offer_id } => {
                record(&self.hub, "call_busy", id, json!({ "call_id": call_id, "offer_id": offer_id })).await;
                self.end_offer(parse_offer(&offer_id)?, OfferEnd::Timeout).await;
            }
            CallOutcome::Unreachable { offer_id, reason } => {
                // Not registered, 404/480/503 from the phone, a transport error: the phone
                // cannot ring, which is not the agent's fault (no ring-no-answer penalty).
                let offer = parse_offer(&offer_id)?;
                let agent_id: Option<Uuid> = sqlx::query_scalar("select agent_id from offers where id = $1")
                    .bind(offer)
                    .fetch_optional(self.hub.db())
                    .await
                    .unwrap_or(None);
                tracing::warn!(agent_id = ?agent_id, %reason, %offer, "Agent's phone could not ring; offer ended without penalty.");
                record(&self.hub, "call_unreachable", id, json!({ "call_id": call_id, "offer_id": offer_id, "reason": reason })).await;
                self.end_offer(offer, OfferEnd::Unreachable).await;
            }
            CallOutcome::Withdrawn { offer_id, reason } => {
                // Not the agent's doing: the offer is cancelled without a ring-no-answer.
                tracing::debug!(%offer_id, %reason, "Voice offer withdrawn.");
                self.end_offer(parse_offer(&offer_id)?, OfferEnd::Withdrawn).await;
            }
            CallOutcome::ExternalAnswered { number } => {
                self.state.update(&call_id, |e| {
                    e.bridged = true;
                    e.agent_id = None;
                });
                // Overflowed: out of the queue (pending offers released without penalty).
                let data = json!({ "call_id": call_id, "number": number });
                self.hub.update_metadata(id, json!({ "overflow_number": number })).await.map_err(routing_err)?;
                self.hub.set_status(id, InteractionStatus::Overflowed, data.clone()).await.map_err(routing_err)?;
                record(&self.hub, "overflowed_external", id, data).await;
            }
            CallOutcome::ExternalFailed { number, reason } => {
                record(&self.hub, "overflow_failed", id, json!({ "call_id": call_id, "number": number, "reason": reason })).await;
            }
            CallOutcome::SupervisorJoined { user, barge } => {
                let mode = if barge { "barge" } else { "listen" };
                record(&self.hub, "supervisor_joined", id, json!({ "call_id": call_id, "phone": user, "mode": mode })).await;
            }
            CallOutcome::SupervisorFailed { user, reason } => {
                record(&self.hub, "supervisor_failed", id, json!({ "call_id": call_id, "phone": user, "reason": reason })).await;
            }
            CallOutcome::SupervisorLeft { user } => {
                record(&self.hub, "supervisor_left", id, json!({ "call_id": call_id, "phone": user })).await;
            }
            CallOutcome::Ended { by, recording } => {
                let entry = self.state.remove(&call_id);
                // Into the shared store before anyone is told where it is.
                let recording = match recording {
                    Some(path) => Some(self.recordings.publish(&self.hub, &path).await.map_err(routing_err)?),
                    None => None,
                };
                let by = match by {
                    Side::Caller => "caller",
                    Side::Agent => "agent",
                    Side::Hub => "hub",
                };
                let by = if by == "agent" && entry.as_ref().is_some_and(|e| e.bridged && e.agent_id.is_none()) { "external" } else { by };
                if entry.as_ref().is_some_and(|e| e.bridged) {
                    let patch = json!({ "recording": recording, "ended_by": by });
                    self.hub.update_metadata(id, patch).await.map_err(routing_err)?;
                    record(&self.hub, "call_ended", id, json!({ "call_id": call_id, "by": by, "recording": recording })).await;
                    match self.hub.wrap_up(id, None).await {
                        Ok(_) | Err(CoreError::Conflict(_)) => {}
                        Err(e) => return Err(routing_err(e)),
                    }
                } else {
                    // Ended while waiting (hub hang-up after max wait, failed voicemail start).
                    record(&self.hub, "call_ended", id, json!({ "call_id": call_id, "by": by })).await;
                    match self.hub.abandon(id).await {
                        Ok(()) | Err(CoreError::Conflict(_)) => {}
                        Err(e) => return Err(routing_err(e)),
                    }
                }
            }
        }
        Ok(())
    }

    async fn voicemail(&self, call: CallInfo, recording: PathBuf) -> Result<(), RoutingError> {
        let path = self.recordings.publish(&self.hub, &recording).await.map_err(routing_err)?;
        if let Some(entry) = self.state.remove(&call.call_id) {
            // Queued first (max wait exceeded): the same interaction becomes a voicemail.
            let id = entry.interaction_id;
            self.hub.update_metadata(id, json!({ "recording": path, "voicemail": true })).await.map_err(routing_err)?;
            self.hub.set_status(id, InteractionStatus::Voicemail, json!({ "recording": path })).await.map_err(routing_err)?;
            record(&self.hub, "voicemail_recorded", id, json!({ "call_id": call.call_id, "recording": path })).await;
            return Ok(());
        }
        let item = InboundItem {
            channel: Some(Channel::Voice),
            dedupe_key: call.call_id.clone(),
            conversation_key: Some(call.call_id.clone()),
            from: call.caller.clone(),
            to: Some(call.dialled.clone()),
            hints: CustomerHints { display_name: call.caller_name.clone(), email: None, language: None },
            body: "Voicemail".into(),
            content_type: Some("text/plain".into()),
            queue: (!call.queue.is_empty()).then(|| call.queue.clone()),
            metadata: Some(
                json!({ "call_id": call.call_id, "trunk": call.trunk, "dialled": call.dialled, "recording": path, "voicemail": true }),
            ),
            initial_status: Some(InteractionStatus::Voicemail),
            ..Default::default()
        };
        let outcome = self.hub.ingest(item).await.map_err(routing_err)?;
        if !call.ivr_path.is_empty() {
            // Sent to voicemail by the IVR (after hours, a menu choice): the menu outcome
            // is `voicemail`, with the nodes the caller went through.
            let ivr = json!({ "queue": "voicemail", "requirements": [], "path": call.ivr_path });
            record(&self.hub, "ivr_choice", outcome.interaction_id, json!({ "call_id": call.call_id, "ivr": ivr })).await;
        }
        record(&self.hub, "voicemail_recorded", outcome.interaction_id, json!({ "call_id": call.call_id, "recording": path })).await;
        Ok(())
    }

    /// No interaction (the caller never reached a queue), so an event of its own, without
    /// the caller's number: the IVR report counts the hang-up and the nodes visited.
    async fn hung_up_in_ivr(&self, call: CallInfo) -> Result<(), RoutingError> {
        let data = json!({ "call_id": call.call_id, "trunk": call.trunk, "dialled": call.dialled, "ivr": { "path": call.ivr_path } });
        self.hub.record_event(NewEvent { kind: "ivr_hangup", data, ..Default::default() }).await.map_err(routing_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer that overtakes the enqueue of its call (the router acted on the commit
    /// before `enqueue_call` got its answer) still finds the call on the node that holds
    /// it, by Call-ID; other nodes leave it alone.
    #[tokio::test]
    async fn an_offer_overtaking_the_enqueue_finds_its_call() {
        let db = switchboard_core::testing::TestDb::new().await;
        let hub = Hub::new(db.pool.clone(), Default::default());
        let item = InboundItem {
            channel: Some(Channel::Voice),
            dedupe_key: "call-race@pbx".into(),
            conversation_key: Some("call-race@pbx".into()),
            from: "+4930111".into(),
            body: "Incoming call".into(),
            ..Default::default()
        };
        let interaction = hub.ingest(item).await.expect("ingest").interaction_id;
        let settings: AdapterSettings = toml::from_str("").expect("defaults");
        let state = VoiceState {
            name: "pbx".into(),
            settings,
            engine: OnceLock::new(),
            hub: OnceLock::new(),
            calls: Mutex::new(CallTable::default()),
            owners: OnceLock::new(),
        };
        assert_eq!(state.local_call(&hub, interaction).await, None, "not this node's call");
        state.set_enqueuing("call-other@pbx", true);
        assert_eq!(state.local_call(&hub, interaction).await, None, "another call is being enqueued here");
        state.set_enqueuing("call-race@pbx", true);
        assert_eq!(state.local_call(&hub, interaction).await.as_deref(), Some("call-race@pbx"), "found by its Call-ID");
        let ticket = CallTicket { call_id: "call-race@pbx".into(), interaction_id: interaction.to_string() };
        state.insert(CallEntry { ticket, interaction_id: interaction, bridged: false, agent_id: None, last_position: None });
        assert!(state.with_calls(|t| !t.enqueuing.contains("call-race@pbx")), "registering the call ends its mark");
        assert_eq!(state.local_call(&hub, interaction).await.as_deref(), Some("call-race@pbx"));
    }

    /// A caller whose Call-ID already has an interaction (a trunk reusing Call-IDs) is
    /// refused with an error the engine logs, not queued on the old interaction with
    /// no interaction of its own and nothing logged.
    #[tokio::test]
    async fn a_reused_call_id_is_refused_not_queued_on_the_old_interaction() {
        let db = switchboard_core::testing::TestDb::new().await;
        let hub = Hub::new(db.pool.clone(), Default::default());
        let settings: AdapterSettings = toml::from_str("").expect("defaults");
        let state = Arc::new(VoiceState {
            name: "pbx".into(),
            settings,
            engine: OnceLock::new(),
            hub: OnceLock::new(),
            calls: Mutex::new(CallTable::default()),
            owners: OnceLock::new(),
        });
        let recordings =
            crate::recordings::RecordingStore::new(std::path::Path::new("data/recordings"), std::path::Path::new("data/voicemail"));
        let routing = HubRouting { hub: hub.clone(), state: state.clone(), recordings };
        let call = CallInfo {
            call_id: "reused@pbx".into(),
            trunk: "carrier".into(),
            caller: "+4930111".into(),
            caller_name: None,
            dialled: "100".into(),
            queue: String::new(),
            requirements: Vec::new(),
            ivr_path: Vec::new(),
            answered_at: chrono::Utc::now(),
        };
        let first = routing.enqueue_call(call.clone()).await.expect("first call enqueued");
        let id: Uuid = first.interaction_id.parse().expect("uuid");
        hub.abandon(id).await.expect("first call abandoned");
        let again = routing.enqueue_call(CallInfo { caller: "+4930222".into(), ..call }).await;
        assert!(again.is_err(), "a second call with the same Call-ID got {again:?}");
        assert!(state.with_calls(|t| t.enqueuing.is_empty()), "no call left marked as enqueuing");
    }

    #[test]
    fn channel_table_splits_into_settings_and_config() {
        let table: toml::Value = toml::from_str(
            r#"
type = "sip"
name = "pbx"
max_wait_action = "hangup"
udp_listen = "127.0.0.1:0"
tcp_listen = "127.0.0.1:0"
rtp_port_min = 0
"#,
        )
        .expect("toml");
        let (s, c) = parse_table(table).expect("parses");
        assert_eq!(s.max_wait_action, MaxWaitAction::Hangup);
        assert_eq!(c.rtp_port_min, 0);
        let bad: toml::Value = toml::from_str("type = \"sip\"\nudp_listn = \"x\"").expect("toml");
        assert!(parse_table(bad).is_err());
    }

    #[test]
    fn example_config_is_valid() {
        let doc: toml::Value = toml::from_str(include_str!("../../../config/examples/voice.toml")).expect("example toml");
        let channel = doc.get("channels").and_then(|c| c.get(0)).cloned().expect("one channel");
        let (s, c) = parse_table(channel).expect("example config is valid");
        assert_eq!(s.max_wait_action, MaxWaitAction::Voicemail);
        assert_eq!(c.ivr_flows.len(), 1);
    }

    #[test]
    fn requirements_become_a_skill_expression() {
        let reqs = vec!["language:es >= 2".parse().expect("req"), "billing".parse().expect("req")];
        assert_eq!(requirement_expr(&reqs).as_deref(), Some("language:es >= 2 and billing >= 1"));
        assert_eq!(requirement_expr(&[]), None);
    }
}
