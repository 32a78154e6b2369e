//! The hub handle shared by adapters, the router and the HTTP API, and the ingest pipeline:
//! an inbound item is committed with its channel dedupe key (a replay is a no-op), matched
//! to a queue by entry rules and enqueued — all in one transaction — before the adapter
//! acknowledges upstream.

use crate::adapter::{Assignment, ChannelAdapter};
use crate::bus::{self, EventBus, HubEvent, NewEvent};
use crate::config::CoreSettings;
use crate::domain::{Channel, InteractionStatus};
use crate::error::{is_unique_violation, CoreError, CoreResult};
use crate::metrics::Metrics;
use crate::queues;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::{Arc, RwLock};
use uuid::Uuid;

/// Hints an adapter knows about the sender.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CustomerHints {
    /// Display name (email From name, pre-chat form).
    pub display_name: Option<String>,
    /// An email address given in a form.
    pub email: Option<String>,
    /// Language (IVR choice, browser).
    pub language: Option<String>,
}

/// A customer found or created for an address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedCustomer {
    /// Customer id.
    pub id: Uuid,
    /// The customer's own manager (sticky routing).
    pub own_manager: Option<Uuid>,
    /// Preferred language.
    pub language: Option<String>,
}

/// "Who is this?" — implemented by the CRM module and wired in by the binary.
#[async_trait]
pub trait CustomerDirectory: Send + Sync + 'static {
    /// Finds or creates the customer for a channel address. Concurrent calls for the same
    /// new address must yield one customer.
    async fn resolve(&self, channel: Channel, address: &str, hints: &CustomerHints) -> CoreResult<Option<ResolvedCustomer>>;
    /// The screen-pop card for a customer (name, tags, own manager, open interactions,
    /// last contacts).
    async fn card(&self, customer_id: Uuid) -> CoreResult<Option<serde_json::Value>>;
}

/// The directory used when no CRM is wired: nobody is known.
pub struct NoDirectory;

#[async_trait]
impl CustomerDirectory for NoDirectory {
    async fn resolve(&self, _: Channel, _: &str, _: &CustomerHints) -> CoreResult<Option<ResolvedCustomer>> {
        Ok(None)
    }
    async fn card(&self, _: Uuid) -> CoreResult<Option<serde_json::Value>> {
        Ok(None)
    }
}

/// A normalized inbound contact.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InboundItem {
    /// Channel.
    pub channel: Option<Channel>,
    /// The channel's own id (Message-ID+UID, SMSC id, Call-ID, chat client message id).
    pub dedupe_key: String,
    /// Groups items into one interaction while it is open (chat conversation, email thread).
    pub conversation_key: Option<String>,
    /// Sender address (phone, email, visitor id).
    pub from: String,
    /// Address contacted (DID, mailbox, widget).
    pub to: Option<String>,
    /// What the adapter knows about the sender.
    pub hints: CustomerHints,
    /// Subject (email).
    pub subject: Option<String>,
    /// Text body.
    pub body: String,
    /// Body content type.
    pub content_type: Option<String>,
    /// Attachment descriptors (JSON list).
    pub attachments: Option<serde_json::Value>,
    /// Extra skill requirement (IVR language choice).
    pub requirement: Option<String>,
    /// Priority override.
    pub priority: Option<i32>,
    /// Queue name override (IVR choice).
    pub queue: Option<String>,
    /// Channel-specific data kept on the interaction.
    pub metadata: Option<serde_json::Value>,
    /// Status for items that are not routed live (e.g. `voicemail`).
    pub initial_status: Option<InteractionStatus>,
}

/// What ingest did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestOutcome {
    /// Interaction the item belongs to.
    pub interaction_id: Uuid,
    /// Message row created (or the original one on replay).
    pub message_id: Option<Uuid>,
    /// Customer resolved.
    pub customer_id: Option<Uuid>,
    /// True when this was a replay and nothing changed.
    pub duplicate: bool,
    /// True when a new interaction was created.
    pub created: bool,
}

#[derive(sqlx::FromRow)]
struct PreIngest {
    interaction_id: Option<Uuid>,
    message_id: Option<Uuid>,
    open_conversation: bool,
    customer_id: Option<Uuid>,
}

pub(crate) struct HubInner {
    pub(crate) pool: PgPool,
    pub(crate) bus: EventBus,
    pub(crate) directory: RwLock<Arc<dyn CustomerDirectory>>,
    pub(crate) adapters: RwLock<Vec<Arc<dyn ChannelAdapter>>>,
    pub(crate) settings: CoreSettings,
    pub(crate) metrics: Metrics,
    pub(crate) router_status: crate::router::RouterStatus,
    pub(crate) route_docs: RwLock<Vec<&'static [crate::api::RouteDoc]>>,
}

/// The hub handle: cheap to clone.
#[derive(Clone)]
pub struct Hub(pub(crate) Arc<HubInner>);

impl Hub {
    /// A hub over an open pool.
    pub fn new(pool: PgPool, settings: CoreSettings) -> Hub {
        Hub(Arc::new(HubInner {
            pool,
            bus: EventBus::new(),
            directory: RwLock::new(Arc::new(NoDirectory)),
            adapters: RwLock::new(Vec::new()),
            settings,
            metrics: Metrics::default(),
            router_status: Default::default(),
            route_docs: RwLock::new(Vec::new()),
        }))
    }

    /// The database pool.
    pub fn db(&self) -> &PgPool {
        &self.0.pool
    }

    /// Settings.
    pub fn settings(&self) -> &CoreSettings {
        &self.0.settings
    }

    /// Metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The event bus.
    pub fn bus(&self) -> &EventBus {
        &self.0.bus
    }

    /// Subscribes to events.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Arc<HubEvent>> {
        self.0.bus.subscribe()
    }

    /// Router leadership status of this node.
    pub fn router_status(&self) -> &crate::router::RouterStatus {
        &self.0.router_status
    }

    /// Wires the customer directory (CRM).
    pub fn set_directory(&self, d: Arc<dyn CustomerDirectory>) {
        if let Ok(mut g) = self.0.directory.write() {
            *g = d;
        }
    }

    /// The customer directory.
    pub fn directory(&self) -> Arc<dyn CustomerDirectory> {
        self.0.directory.read().map(|g| g.clone()).unwrap_or_else(|_| Arc::new(NoDirectory))
    }

    /// Adds a running adapter (for delivery and offers).
    pub fn add_adapter(&self, a: Arc<dyn ChannelAdapter>) {
        if let Ok(mut g) = self.0.adapters.write() {
            g.push(a);
        }
    }

    /// The adapter for a channel, preferring one with the given name.
    pub fn adapter_for(&self, ch: Channel, name: Option<&str>) -> Option<Arc<dyn ChannelAdapter>> {
        let g = self.0.adapters.read().ok()?;
        if let Some(n) = name {
            if let Some(a) = g.iter().find(|a| a.channel() == ch && a.name() == n) {
                return Some(a.clone());
            }
        }
        g.iter().find(|a| a.channel() == ch).cloned()
    }

    /// Adds a module's route table to the OpenAPI document.
    pub fn add_route_docs(&self, docs: &'static [crate::api::RouteDoc]) {
        if let Ok(mut g) = self.0.route_docs.write() {
            g.push(docs);
        }
    }

    /// Module route tables added so far.
    pub fn route_docs(&self) -> Vec<&'static [crate::api::RouteDoc]> {
        self.0.route_docs.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Presents committed offers to this node's adapters: every node runs this, and the
    /// adapter that owns the contact (the node holding the call or chat socket) acts.
    pub async fn run_assignment_dispatch(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut rx = self.events();
        loop {
            let ev = tokio::select! {
                _ = shutdown.changed() => return,
                ev = rx.recv() => match ev {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                },
            };
            if ev.kind != "offered" {
                continue;
            }
            let (Some(interaction_id), Some(agent_id)) = (ev.interaction_id, ev.agent_id) else { continue };
            let channel = ev.data.get("channel").and_then(|c| c.as_str()).and_then(|c| c.parse::<Channel>().ok());
            let offer_id = ev.data.get("offer_id").and_then(|c| c.as_str()).and_then(|c| c.parse::<Uuid>().ok());
            let (Some(channel), Some(offer_id)) = (channel, offer_id) else { continue };
            if self.adapter_for(channel, None).is_none() {
                continue;
            }
            let sip: Option<Option<String>> = sqlx::query_scalar("select sip_user from agents where id = $1")
                .bind(agent_id)
                .fetch_optional(self.db())
                .await
                .ok()
                .flatten();
            let expires_at = ev
                .data
                .get("expires_at")
                .and_then(|c| c.as_str())
                .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                .map(|d| d.with_timezone(&chrono::Utc))
                .unwrap_or_else(|| chrono::Utc::now() + chrono::Duration::seconds(20));
            let a = Assignment {
                offer_id,
                interaction_id,
                agent_id,
                channel,
                agent_sip_user: sip.flatten(),
                ring_all: ev.data.get("ring_all").and_then(|v| v.as_bool()).unwrap_or(false),
                expires_at,
            };
            let hub = self.clone();
            tokio::spawn(async move { hub.notify_assignment(&a).await });
        }
    }

    /// Tells the channel's adapter about an offer (voice rings, chat notifies).
    pub async fn notify_assignment(&self, a: &Assignment) {
        if let Some(ad) = self.adapter_for(a.channel, None) {
            if let Err(e) = ad.on_assignment(a).await {
                tracing::warn!(offer_id = %a.offer_id, error = %e, "Adapter could not present the offer.");
            }
        }
    }

    /// Ingests one normalized inbound item. Returns once it is committed.
    #[tracing::instrument(skip(self, item), fields(channel, dedupe_key = %item.dedupe_key))]
    pub async fn ingest(&self, item: InboundItem) -> CoreResult<IngestOutcome> {
        let channel = item.channel.ok_or_else(|| CoreError::field("channel", "missing"))?;
        if item.dedupe_key.is_empty() || item.dedupe_key.len() > 512 {
            return Err(CoreError::field("dedupe_key", "must be 1..=512 bytes"));
        }
        if item.from.is_empty() || item.from.len() > 512 {
            return Err(CoreError::field("from", "must be 1..=512 bytes"));
        }
        if let Some(r) = &item.requirement {
            crate::skills::SkillExpr::parse(r).map_err(|e| CoreError::field("requirement", e.to_string()))?;
        }
        // One round trip before the transaction: is this a replay, and does an open
        // conversation already know the customer (then the directory is skipped — the
        // common case for chat and email threads)?
        let pre: PreIngest = sqlx::query_as(
            "select d.interaction_id, d.message_id, c.interaction_id is not null as open_conversation, c.customer_id
             from (select 1) x
             left join inbound_items d on d.channel = $1 and d.dedupe_key = $2
             left join lateral (
                 select id as interaction_id, customer_id from interactions
                  where $3::text is not null and channel = $1 and conversation_key = $3
                    and status in ('queued','offered','active','wrap_up') limit 1
             ) c on true",
        )
        .bind(channel.as_str())
        .bind(&item.dedupe_key)
        .bind(&item.conversation_key)
        .fetch_one(&self.0.pool)
        .await?;
        if let Some(interaction_id) = pre.interaction_id {
            self.0.metrics.inc_ingested(channel, true);
            return Ok(IngestOutcome { interaction_id, message_id: pre.message_id, customer_id: None, duplicate: true, created: false });
        }
        let resolved = match (pre.open_conversation, pre.customer_id) {
            (true, Some(id)) => Ok(Some(ResolvedCustomer { id, own_manager: None, language: None })),
            _ => self.directory().resolve(channel, &item.from, &item.hints).await,
        };
        let customer = match resolved {
            Ok(c) => c,
            Err(e) => {
                // An unknown or malformed address must not lose the contact.
                tracing::warn!(error = %e, from = %item.from, "Customer resolution failed; ingesting without a customer.");
                None
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.ingest_tx(channel, &item, customer.as_ref()).await {
                Ok(o) => {
                    self.0.metrics.inc_ingested(channel, o.duplicate);
                    return Ok(o);
                }
                Err(CoreError::Database(e)) if is_unique_violation(&e) && attempt < 3 => {
                    // A concurrent replay or a concurrent first message of the same
                    // conversation won the race: retry, which finds it.
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn ingest_tx(&self, channel: Channel, item: &InboundItem, customer: Option<&ResolvedCustomer>) -> CoreResult<IngestOutcome> {
        let mut tx = self.0.pool.begin().await?;
        let dup: Option<(Uuid, Option<Uuid>)> =
            sqlx::query_as("select interaction_id, message_id from inbound_items where channel = $1 and dedupe_key = $2")
                .bind(channel.as_str())
                .bind(&item.dedupe_key)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((interaction_id, message_id)) = dup {
            return Ok(IngestOutcome { interaction_id, message_id, customer_id: customer.map(|c| c.id), duplicate: true, created: false });
        }
        let open: Option<(Uuid, Option<Uuid>)> = match &item.conversation_key {
            Some(k) => {
                sqlx::query_as(
                    "select id, queue_id from interactions where channel = $1 and conversation_key = $2
                     and status in ('queued','offered','active','wrap_up') for update",
                )
                .bind(channel.as_str())
                .bind(k)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => None,
        };
        let (interaction_id, created, queue_id) = match open {
            Some((id, q)) => (id, false, q),
            None => {
                let qs = queues::list(&mut *tx).await?;
                let text = format!("{} {}", item.subject.as_deref().unwrap_or(""), item.body);
                let language = item.hints.language.as_deref().or(customer.and_then(|c| c.language.as_deref()));
                let queue = queues::select(&qs, item.queue.as_deref(), channel, item.to.as_deref(), &text, language);
                let status = item.initial_status.unwrap_or(InteractionStatus::Queued);
                let id: Uuid = sqlx::query_scalar(
                    "insert into interactions (channel, direction, conversation_key, customer_id, customer_address, subject,
                        queue_id, priority, requirement, preferred_agent_id, status, metadata)
                     values ($1, 'inbound', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) returning id",
                )
                .bind(channel.as_str())
                .bind(&item.conversation_key)
                .bind(customer.map(|c| c.id))
                .bind(&item.from)
                .bind(&item.subject)
                .bind(queue.map(|q| q.id))
                .bind(item.priority.or(queue.map(|q| q.priority)).unwrap_or(0))
                .bind(item.requirement.clone().unwrap_or_default())
                .bind(customer.and_then(|c| c.own_manager))
                .bind(status.as_str())
                .bind(item.metadata.clone().unwrap_or_else(|| serde_json::json!({})))
                .fetch_one(&mut *tx)
                .await?;
                (id, true, queue.map(|q| q.id))
            }
        };
        let message_id: Uuid = sqlx::query_scalar(
            "insert into messages (interaction_id, direction, body, content_type, attachments, client_message_id)
             values ($1, 'inbound', $2, $3, $4, $5) returning id",
        )
        .bind(interaction_id)
        .bind(&item.body)
        .bind(item.content_type.as_deref().unwrap_or("text/plain"))
        .bind(item.attachments.clone().unwrap_or_else(|| serde_json::json!([])))
        .bind(&item.dedupe_key)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("insert into inbound_items (channel, dedupe_key, interaction_id, message_id) values ($1, $2, $3, $4)")
            .bind(channel.as_str())
            .bind(&item.dedupe_key)
            .bind(interaction_id)
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        if created {
            let kind = match item.initial_status {
                Some(InteractionStatus::Voicemail) => "voicemail",
                Some(s) if s != InteractionStatus::Queued => "created",
                _ => "enqueued",
            };
            bus::record(
                &mut tx,
                NewEvent::interaction(kind, interaction_id)
                    .with_queue(queue_id)
                    .with_data(serde_json::json!({ "channel": channel, "customer_id": customer.map(|c| c.id) })),
            )
            .await?;
        }
        bus::record(
            &mut tx,
            NewEvent::interaction("message", interaction_id)
                .with_queue(queue_id)
                .with_data(serde_json::json!({ "message_id": message_id, "direction": "inbound", "channel": channel })),
        )
        .await?;
        tx.commit().await?;
        Ok(IngestOutcome { interaction_id, message_id: Some(message_id), customer_id: customer.map(|c| c.id), duplicate: false, created })
    }
}
