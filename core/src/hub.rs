//! The hub handle shared by adapters, the router and the HTTP API, and the ingest pipeline:
//! an inbound item is committed with its channel dedupe key (a replay is a no-op), matched
//! to a queue by entry rules and enqueued — all in one transaction — before the adapter
//! acknowledges upstream.

use crate::adapter::{Assignment, ChannelAdapter};
use crate::batch::Batcher;
use crate::bus::{self, EventBus, HubEvent, NewEvent};
use crate::config::CoreSettings;
use crate::domain::{Channel, InteractionStatus};
use crate::error::{is_unique_violation, CoreError, CoreResult};
use crate::metrics::Metrics;
use crate::queues;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use std::sync::{Arc, RwLock, Weak};
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
    /// The campaign this contact most likely answers (an SMS from a customer a campaign
    /// texted within its reply window): tagged on a new interaction as
    /// `metadata.campaign_id`, which the campaign results and the reports count.
    #[serde(default)]
    pub campaign_id: Option<Uuid>,
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

/// Rows a channel keeps per message beside the core's (the web chat's per-conversation
/// sequence), written by the same statement or transaction as the message: the message, its
/// ledger row and its event commit together, so whoever hears the event finds the ledger
/// row. A ledger is SQL, so the hub can fold it into the one statement that appends a
/// batch to open conversations.
pub trait IngestLedger: Send + Sync + 'static {
    /// The ledger as common table expressions (`a as (...), b as (...)`), every name
    /// starting with `prefix`. They read `input(conversation_key text, message_id uuid, ord
    /// bigint)`, the channel's new messages of a conversation (the key is never null; `ord`
    /// gives their arrival order), and the last one, `{prefix}out(message_id uuid, value
    /// bigint)`, gives each message's value. A message without a row (an unknown
    /// conversation, say) is left to the adapter.
    fn ctes(&self, input: &str, prefix: &str) -> String;
}

/// A registered ledger with its stand-alone statement (binds: conversation keys, message ids).
struct Ledger {
    channel: Channel,
    sql: String,
}

/// The channels' ledgers and the batch append statement that includes them.
struct Ledgers {
    registered: Vec<(Channel, Arc<dyn IngestLedger>)>,
    list: Vec<Ledger>,
    append_sql: Arc<str>,
}

impl Ledgers {
    fn new(ledgers: Vec<(Channel, Arc<dyn IngestLedger>)>) -> Ledgers {
        let list = ledgers
            .iter()
            .map(|(channel, l)| Ledger {
                channel: *channel,
                sql: format!(
                    "with input as (select * from unnest($1::text[], $2::uuid[]) with ordinality as t(conversation_key, message_id, ord)),
                     {} select message_id, value from lg_out",
                    l.ctes("input", "lg_")
                ),
            })
            .collect();
        let mut sql = String::from(APPEND_OPEN_CTES);
        let mut select = String::from(APPEND_OPEN_SELECT);
        for (k, (channel, l)) in ledgers.iter().enumerate() {
            let p = format!("l{k}_");
            sql.push_str(&format!(
                ", l{k}input as (select conversation_key, message_id, ord from mi where channel = '{}'), {}",
                channel.as_str(),
                l.ctes(&format!("l{k}input"), &p)
            ));
            select.push_str(&format!(" union all select 2::smallint, message_id, null, null, value, null from {p}out"));
        }
        sql.push(' ');
        sql.push_str(&select);
        Ledgers { registered: ledgers, list, append_sql: sql.into() }
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
    /// The channel ledger's value for a new message (see [`IngestLedger`]).
    #[serde(default)]
    pub sequence: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct PreIngest {
    interaction_id: Option<Uuid>,
    message_id: Option<Uuid>,
    open_conversation: bool,
    customer_id: Option<Uuid>,
}

impl PreIngest {
    /// The customer of the open conversation the item continues: no directory lookup.
    fn known_customer(&self) -> Option<ResolvedCustomer> {
        self.customer_id.filter(|_| self.open_conversation).map(|id| ResolvedCustomer {
            id,
            own_manager: None,
            language: None,
            campaign_id: None,
        })
    }
}

/// The hot path of ingest: a whole batch of items continuing open conversations in one
/// autocommit statement (one round trip, one commit). It leaves out replays (the channel's
/// id is in the dedupe ledger already) and items of conversations with no open interaction,
/// looks each conversation's open interaction up through its unique index, locks those
/// interactions (in id order, re-checking that they are still open), inserts the messages
/// (ids chosen by the hub) in batch order, stamped by the clock, their dedupe ledger rows,
/// their `message` events and the channels' ledger rows (see [`IngestLedger`], appended by
/// [`Ledgers::new`]). Every lookup is by key from the batch, so the cost follows the batch,
/// never the size of the tables.
///
/// The result is one row per written message (tag 0: message, interaction, customer), per
/// event (tag 1: id, row JSON, announced after the commit by [`crate::bus::Announcer`]) and
/// per ledger value (tag 2); a union rather than joins, so reading it is linear too.
const APPEND_OPEN_CTES: &str = "with input as (
             select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[]) with ordinality
                 as t(message_id, channel, dedupe_key, conversation_key, body, content_type, attachments, ord)
         ), open as (
             select i.*, o.id as interaction_id from input i
             cross join lateral (
                 select id from interactions
                  where channel = i.channel and conversation_key = i.conversation_key
                    and status in ('queued','offered','active','wrap_up') limit 1
             ) o
             where not exists (select 1 from inbound_items d where d.channel = i.channel and d.dedupe_key = i.dedupe_key)
         ), locked as (
             select id, queue_id, customer_id from interactions
              where id = any(array(select interaction_id from open)) and status in ('queued','offered','active','wrap_up')
              order by id for update
         ), mi as (
             select o.*, lk.queue_id, lk.customer_id from open o join locked lk on lk.id = o.interaction_id
         ), m as (
             insert into messages (id, interaction_id, direction, body, content_type, attachments, client_message_id, created_at)
             select message_id, interaction_id, 'inbound', body, content_type, attachments, dedupe_key, clock_timestamp()
               from mi order by ord
         ), l as (
             insert into inbound_items (channel, dedupe_key, interaction_id, message_id)
             select channel, dedupe_key, interaction_id, message_id from mi
         ), ev as (
             insert into interaction_events (interaction_id, queue_id, kind, data)
             select interaction_id, queue_id, 'message',
                    jsonb_build_object('message_id', message_id, 'direction', 'inbound', 'channel', channel, 'node', $8::uuid)
               from mi order by ord
             returning id, interaction_id, agent_id, queue_id, kind, data, at
         )";
const APPEND_OPEN_SELECT: &str =
    "select 0::smallint as tag, message_id, interaction_id, customer_id, null::bigint as n, null::text as event from mi
         union all select 1::smallint, null, null, null, id, row_to_json(ev)::text from ev";

/// One row of [`APPEND_OPEN_CTES`]'s result.
type AppendRow = (i16, Option<Uuid>, Option<Uuid>, Option<Uuid>, Option<i64>, Option<String>);

pub(crate) struct HubInner {
    pub(crate) pool: PgPool,
    pub(crate) bus: EventBus,
    pub(crate) directory: RwLock<Arc<dyn CustomerDirectory>>,
    pub(crate) adapters: RwLock<Vec<Arc<dyn ChannelAdapter>>>,
    pub(crate) settings: CoreSettings,
    pub(crate) metrics: Metrics,
    pub(crate) router_status: crate::router::RouterStatus,
    pub(crate) route_docs: RwLock<Vec<&'static [crate::api::RouteDoc]>>,
    ingest_batcher: Batcher<IngestJob, CoreResult<IngestOutcome>>,
    announcer: bus::Announcer,
    ledgers: RwLock<Arc<Ledgers>>,
    node_id: Uuid,
    files: crate::files::FileBackend,
}

/// The answers of a batch; an item that got none is reported, never dropped silently.
fn answers(out: Vec<Option<CoreResult<IngestOutcome>>>) -> Vec<CoreResult<IngestOutcome>> {
    out.into_iter().map(|o| o.unwrap_or_else(|| Err(CoreError::Internal("item left unwritten".into())))).collect()
}

/// A validated item waiting for its batch.
struct IngestJob {
    channel: Channel,
    item: InboundItem,
}

/// Concurrent ingest writers (each holds one pooled connection while writing a batch).
const INGEST_LANES: usize = 4;
/// Most items written in one ingest transaction.
const INGEST_MAX_BATCH: usize = 64;

/// The hub handle: cheap to clone.
#[derive(Clone)]
pub struct Hub(pub(crate) Arc<HubInner>);

impl Hub {
    /// A hub over an open pool.
    pub fn new(pool: PgPool, settings: CoreSettings) -> Hub {
        let files = crate::files::FileBackend::from_settings(&settings.files).unwrap_or_else(|error| {
            // Settings are validated when loaded; a hub built from unchecked ones keeps
            // files on this node's disk rather than failing to start.
            tracing::error!(%error, "File store settings invalid; using the directories.");
            crate::files::FileBackend::Dir
        });
        Hub(Arc::new_cyclic(|me: &Weak<HubInner>| HubInner {
            announcer: bus::Announcer::new(pool.clone()),
            pool,
            bus: EventBus::new(),
            directory: RwLock::new(Arc::new(NoDirectory)),
            adapters: RwLock::new(Vec::new()),
            settings,
            metrics: Metrics::default(),
            router_status: Default::default(),
            route_docs: RwLock::new(Vec::new()),
            ledgers: RwLock::new(Arc::new(Ledgers::new(Vec::new()))),
            node_id: Uuid::new_v4(),
            files,
            ingest_batcher: Batcher::new(INGEST_LANES, INGEST_MAX_BATCH, {
                // Weak: the lanes end with the hub instead of keeping it alive.
                let me = me.clone();
                Arc::new(move |jobs: Vec<IngestJob>| {
                    let me = me.clone();
                    Box::pin(async move {
                        match me.upgrade() {
                            Some(inner) => Hub(inner).ingest_batch(jobs).await,
                            None => jobs.iter().map(|_| Err(CoreError::Internal("the hub is shutting down".into()))).collect(),
                        }
                    })
                })
            }),
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

    /// The store of one kind of file: the directory `dir` with the `dir` backend, the key
    /// prefix `prefix` in the bucket with `s3` (see [`crate::files`]).
    pub fn file_store(&self, dir: &std::path::Path, prefix: &str) -> std::sync::Arc<dyn crate::files::FileStore> {
        self.0.files.store(dir, prefix)
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

    /// Channels whose adapters on this node all deliver elsewhere now
    /// ([`ChannelAdapter::delivers_here`]): the outbox here does not claim their rows.
    /// A channel with no adapter here is not among them (its rows are claimed and fail
    /// as "no adapter is running", as on a single node).
    pub fn channels_delivered_elsewhere(&self) -> Vec<Channel> {
        let Ok(g) = self.0.adapters.read() else { return Vec::new() };
        Channel::ALL
            .iter()
            .copied()
            .filter(|&ch| {
                let mut of = g.iter().filter(|a| a.channel() == ch).peekable();
                of.peek().is_some() && of.all(|a| !a.delivers_here())
            })
            .collect()
    }

    /// This node's id, carried by the `message` events of the items it ingests (so an
    /// adapter can tell its own from other nodes').
    pub fn node_id(&self) -> Uuid {
        self.0.node_id
    }

    /// Sets the ledger a channel writes with its messages (once per channel).
    pub fn set_ingest_ledger(&self, channel: Channel, ledger: Arc<dyn IngestLedger>) {
        if let Ok(mut g) = self.0.ledgers.write() {
            if !g.registered.iter().any(|(c, _)| *c == channel) {
                let mut registered = g.registered.clone();
                registered.push((channel, ledger));
                *g = Arc::new(Ledgers::new(registered));
            }
        }
    }

    fn ledgers(&self) -> Arc<Ledgers> {
        self.0.ledgers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs the channels' ledgers over new messages written in `conn`'s transaction and
    /// stores their values in the outcomes.
    async fn write_ledgers(&self, conn: &mut PgConnection, written: &mut [(Channel, Option<&str>, &mut IngestOutcome)]) -> CoreResult<()> {
        for ledger in &self.ledgers().list {
            // As in the batch append: messages of a conversation only.
            let idx: Vec<usize> = (0..written.len())
                .filter(|&i| written[i].0 == ledger.channel && written[i].1.is_some() && written[i].2.message_id.is_some())
                .collect();
            if idx.is_empty() {
                continue;
            }
            let keys: Vec<Option<&str>> = idx.iter().map(|&i| written[i].1).collect();
            let ids: Vec<Uuid> = idx.iter().map(|&i| written[i].2.message_id.unwrap_or_default()).collect();
            let rows: Vec<(Uuid, Option<i64>)> = sqlx::query_as(&ledger.sql).bind(&keys).bind(&ids).fetch_all(&mut *conn).await?;
            let values: std::collections::HashMap<Uuid, i64> = rows.into_iter().filter_map(|(m, v)| Some((m, v?))).collect();
            for &i in &idx {
                written[i].2.sequence = written[i].2.message_id.and_then(|m| values.get(&m).copied());
            }
        }
        Ok(())
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
    ///
    /// Concurrent ingests are group-committed: items arriving while a batch is written go
    /// into the next one (see [`crate::batch`]), items of one conversation always in the
    /// same lane and in arrival order.
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
        let lane_key = (channel.as_str(), item.conversation_key.clone().unwrap_or_else(|| item.dedupe_key.clone()));
        match self.0.ingest_batcher.submit(&lane_key, IngestJob { channel, item }).await {
            Some(r) => r,
            None => Err(CoreError::Internal("the ingest writer stopped".into())),
        }
    }

    /// One batch of validated items. Items continuing open conversations are written by
    /// one statement ([`Hub::append_open`]); the rest ([`Hub::ingest_rest`]) go through the
    /// replay check, customer resolution and one transaction.
    async fn ingest_batch(&self, jobs: Vec<IngestJob>) -> Vec<CoreResult<IngestOutcome>> {
        let channels: Vec<Channel> = jobs.iter().map(|j| j.channel).collect();
        let mut out: Vec<Option<CoreResult<IngestOutcome>>> = jobs.iter().map(|_| None).collect();
        if let Err(e) = self.append_open(&jobs, &mut out).await {
            // Nothing was written: the items take the general path.
            self.0.metrics.ingest_fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, items = jobs.len(), "Batched append failed; taking the general path.");
        }
        let mut rest = Vec::new();
        let mut rest_at = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            if out[i].is_none() {
                rest.push(job);
                rest_at.push(i);
            }
        }
        if !rest.is_empty() {
            for (i, r) in rest_at.into_iter().zip(self.ingest_rest(rest).await) {
                out[i] = Some(r);
            }
        }
        let results = answers(out);
        for (ch, r) in channels.into_iter().zip(&results) {
            if let Ok(o) = r {
                self.0.metrics.inc_ingested(ch, o.duplicate);
            }
        }
        results
    }

    /// Writes the batch's items that continue an open conversation in one autocommit
    /// statement ([`APPEND_OPEN_CTES`]) and fills their answers; announces their events
    /// after the commit. Leaves unanswered: items without a conversation, replays,
    /// conversations without an open interaction, and repeats of an item within the batch
    /// (the general path answers them as duplicates).
    async fn append_open(&self, jobs: &[IngestJob], out: &mut [Option<CoreResult<IngestOutcome>>]) -> CoreResult<()> {
        let mut seen = std::collections::HashSet::new();
        let picked: Vec<usize> = (0..jobs.len())
            .filter(|&i| jobs[i].item.conversation_key.is_some() && seen.insert((jobs[i].channel, jobs[i].item.dedupe_key.as_str())))
            .collect();
        if picked.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = picked.iter().map(|_| Uuid::new_v4()).collect();
        let item = |i: usize| &jobs[i].item;
        let ledgers = self.ledgers();
        let rows: Vec<AppendRow> = sqlx::query_as(&ledgers.append_sql)
            .bind(&ids)
            .bind(picked.iter().map(|&i| jobs[i].channel.as_str()).collect::<Vec<_>>())
            .bind(picked.iter().map(|&i| item(i).dedupe_key.as_str()).collect::<Vec<_>>())
            .bind(picked.iter().map(|&i| item(i).conversation_key.as_deref()).collect::<Vec<_>>())
            .bind(picked.iter().map(|&i| item(i).body.as_str()).collect::<Vec<_>>())
            .bind(picked.iter().map(|&i| item(i).content_type.as_deref().unwrap_or("text/plain")).collect::<Vec<_>>())
            .bind(picked.iter().map(|&i| item(i).attachments.clone().unwrap_or_else(|| serde_json::json!([]))).collect::<Vec<_>>())
            .bind(self.0.node_id)
            .fetch_all(&self.0.pool)
            .await?;
        let index: std::collections::HashMap<Uuid, usize> = ids.iter().copied().zip(picked.iter().copied()).collect();
        let mut written: Vec<(usize, IngestOutcome)> = Vec::new();
        let mut values: std::collections::HashMap<Uuid, i64> = Default::default();
        let mut events = Vec::new();
        for row in rows {
            match row {
                (0, Some(message_id), Some(interaction_id), customer_id, _, _) => {
                    if let Some(&i) = index.get(&message_id) {
                        let outcome = IngestOutcome {
                            interaction_id,
                            message_id: Some(message_id),
                            customer_id,
                            duplicate: false,
                            created: false,
                            sequence: None,
                        };
                        written.push((i, outcome));
                    }
                }
                (1, _, _, _, Some(id), Some(event)) => events.push((id, event)),
                (2, Some(message_id), _, _, value, _) => {
                    if let Some(v) = value {
                        values.insert(message_id, v);
                    }
                }
                _ => tracing::warn!("Unexpected row from the batched append."),
            }
        }
        events.sort_unstable_by_key(|e| e.0);
        self.0.announcer.announce(events);
        for (i, mut o) in written {
            o.sequence = o.message_id.and_then(|m| values.get(&m).copied());
            self.0.metrics.ingest_appended.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            out[i] = Some(Ok(o));
        }
        Ok(())
    }

    /// The general path for items [`Hub::append_open`] left: one query finds replays and
    /// open conversations, the customers still unknown are resolved concurrently, then
    /// every item is written in one transaction. If anything fails, each remaining item is
    /// written on its own (with the unique-violation retry), so one bad item never fails
    /// the others.
    async fn ingest_rest(&self, jobs: Vec<IngestJob>) -> Vec<CoreResult<IngestOutcome>> {
        let mut out: Vec<Option<CoreResult<IngestOutcome>>> = jobs.iter().map(|_| None).collect();
        let pre = match self.pre_ingest(&jobs).await {
            Ok(p) => p,
            Err(e) => {
                self.0.metrics.ingest_fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, "Batched replay check failed; writing items one by one.");
                return self.ingest_each(jobs, out).await;
            }
        };
        let mut customers: Vec<Option<ResolvedCustomer>> = jobs.iter().map(|_| None).collect();
        let mut lookups = Vec::new();
        for (i, (job, p)) in jobs.iter().zip(&pre).enumerate() {
            if let Some(interaction_id) = p.interaction_id {
                out[i] = Some(Ok(IngestOutcome {
                    interaction_id,
                    message_id: p.message_id,
                    customer_id: None,
                    duplicate: true,
                    created: false,
                    sequence: None,
                }));
                continue;
            }
            match p.known_customer() {
                Some(c) => customers[i] = Some(c),
                None => lookups.push(async move { (i, self.resolve_customer(job.channel, &job.item).await) }),
            }
        }
        for (i, c) in futures::future::join_all(lookups).await {
            customers[i] = c;
        }
        if let Err(e) = self.write_batch(&jobs, &customers, &mut out).await {
            // Nothing of it was written (`out` is filled on commit only): item by item.
            self.0.metrics.ingest_fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, items = jobs.len(), "Batch write failed; writing items one by one.");
            return self.ingest_each(jobs, out).await;
        }
        answers(out)
    }

    /// Writes the batch's new items in one transaction, item by item and in order,
    /// filling `out` only on commit.
    async fn write_batch(
        &self,
        jobs: &[IngestJob],
        customers: &[Option<ResolvedCustomer>],
        out: &mut [Option<CoreResult<IngestOutcome>>],
    ) -> CoreResult<()> {
        // The same item twice in one batch (a resend while the first was in flight) is
        // written once; the repeat is answered as its duplicate.
        let mut first_of: std::collections::HashMap<(Channel, &str), usize> = Default::default();
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        let mut fresh: Vec<usize> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            match first_of.entry((job.channel, job.item.dedupe_key.as_str())) {
                std::collections::hash_map::Entry::Occupied(e) => repeats.push((i, *e.get())),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                    fresh.push(i);
                }
            }
        }
        let mut written: Vec<(usize, IngestOutcome)> = Vec::with_capacity(fresh.len());
        let mut tx = self.0.pool.begin().await?;
        for &i in &fresh {
            written.push((i, self.write_item(&mut tx, jobs[i].channel, &jobs[i].item, customers[i].as_ref(), false).await?));
        }
        {
            let mut w: Vec<(Channel, Option<&str>, &mut IngestOutcome)> =
                written.iter_mut().map(|(i, o)| (jobs[*i].channel, jobs[*i].item.conversation_key.as_deref(), o)).collect();
            self.write_ledgers(&mut tx, &mut w).await?;
        }
        tx.commit().await?;
        for (i, first) in repeats {
            if let Some((_, o)) = written.iter().find(|(j, _)| *j == first) {
                out[i] = Some(Ok(IngestOutcome { duplicate: true, created: false, ..o.clone() }));
            }
        }
        for (i, o) in written {
            out[i] = Some(Ok(o));
        }
        Ok(())
    }

    /// The fallback: every item without an answer yet is ingested on its own, in order.
    async fn ingest_each(&self, jobs: Vec<IngestJob>, mut out: Vec<Option<CoreResult<IngestOutcome>>>) -> Vec<CoreResult<IngestOutcome>> {
        for (i, job) in jobs.into_iter().enumerate() {
            if out[i].is_none() {
                out[i] = Some(self.ingest_one(job.channel, &job.item).await);
            }
        }
        answers(out)
    }

    /// Replay check and open-conversation lookup for a whole batch in one round trip.
    async fn pre_ingest(&self, jobs: &[IngestJob]) -> CoreResult<Vec<PreIngest>> {
        let channels: Vec<&str> = jobs.iter().map(|j| j.channel.as_str()).collect();
        let keys: Vec<&str> = jobs.iter().map(|j| j.item.dedupe_key.as_str()).collect();
        let convs: Vec<Option<&str>> = jobs.iter().map(|j| j.item.conversation_key.as_deref()).collect();
        let rows: Vec<PreIngest> = sqlx::query_as(
            "select d.interaction_id, d.message_id, c.interaction_id is not null as open_conversation, c.customer_id
             from unnest($1::text[], $2::text[], $3::text[]) with ordinality as i(channel, dedupe_key, conversation_key, ord)
             left join lateral (
                 -- A probe of the primary key per item (a plain join may hash the whole ledger).
                 select interaction_id, message_id from inbound_items
                  where channel = i.channel and dedupe_key = i.dedupe_key limit 1
             ) d on true
             left join lateral (
                 select id as interaction_id, customer_id from interactions
                  where i.conversation_key is not null and channel = i.channel and conversation_key = i.conversation_key
                    and status in ('queued','offered','active','wrap_up') limit 1
             ) c on true
             order by i.ord",
        )
        .bind(&channels)
        .bind(&keys)
        .bind(&convs)
        .fetch_all(&self.0.pool)
        .await?;
        if rows.len() != jobs.len() {
            return Err(CoreError::Internal("replay check returned the wrong number of rows".into()));
        }
        Ok(rows)
    }

    /// Asks the directory who sent the item; a failure never loses the contact.
    async fn resolve_customer(&self, channel: Channel, item: &InboundItem) -> Option<ResolvedCustomer> {
        match self.directory().resolve(channel, &item.from, &item.hints).await {
            Ok(c) => c,
            Err(e) => {
                // An unknown or malformed address must not lose the contact.
                tracing::warn!(error = %e, from = %item.from, "Customer resolution failed; ingesting without a customer.");
                None
            }
        }
    }

    /// Ingests one item in its own transaction (the path taken when a batch fails).
    async fn ingest_one(&self, channel: Channel, item: &InboundItem) -> CoreResult<IngestOutcome> {
        let pre = self.pre_ingest(std::slice::from_ref(&IngestJob { channel, item: item.clone() })).await?.remove(0);
        if let Some(interaction_id) = pre.interaction_id {
            return Ok(IngestOutcome {
                interaction_id,
                message_id: pre.message_id,
                customer_id: None,
                duplicate: true,
                created: false,
                sequence: None,
            });
        }
        let customer = match pre.known_customer() {
            Some(c) => Some(c),
            None => self.resolve_customer(channel, item).await,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut tx = self.0.pool.begin().await?;
            let r = match self.write_item(&mut tx, channel, item, customer.as_ref(), true).await {
                Ok(mut o) if !o.duplicate => {
                    match self.write_ledgers(&mut tx, &mut [(channel, item.conversation_key.as_deref(), &mut o)]).await {
                        Ok(()) => tx.commit().await.map(|_| o).map_err(CoreError::from),
                        Err(e) => Err(e),
                    }
                }
                Ok(o) => Ok(o),
                Err(e) => Err(e),
            };
            match r {
                Ok(o) => return Ok(o),
                Err(CoreError::Database(e)) if is_unique_violation(&e) && attempt < 3 => {
                    // A concurrent replay or a concurrent first message of the same
                    // conversation won the race: retry, which finds it.
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes one item in the caller's transaction: the open interaction of its
    /// conversation (locked) or a new one matched to a queue, the message and its dedupe
    /// ledger row, and the events.
    async fn write_item(
        &self,
        conn: &mut PgConnection,
        channel: Channel,
        item: &InboundItem,
        customer: Option<&ResolvedCustomer>,
        check_replay: bool,
    ) -> CoreResult<IngestOutcome> {
        if check_replay {
            let dup: Option<(Uuid, Option<Uuid>)> =
                sqlx::query_as("select interaction_id, message_id from inbound_items where channel = $1 and dedupe_key = $2")
                    .bind(channel.as_str())
                    .bind(&item.dedupe_key)
                    .fetch_optional(&mut *conn)
                    .await?;
            if let Some((interaction_id, message_id)) = dup {
                return Ok(IngestOutcome {
                    interaction_id,
                    message_id,
                    customer_id: customer.map(|c| c.id),
                    duplicate: true,
                    created: false,
                    sequence: None,
                });
            }
        }
        let open: Option<(Uuid, Option<Uuid>)> = match &item.conversation_key {
            Some(k) => {
                sqlx::query_as(
                    "select id, queue_id from interactions where channel = $1 and conversation_key = $2
                     and status in ('queued','offered','active','wrap_up') for update",
                )
                .bind(channel.as_str())
                .bind(k)
                .fetch_optional(&mut *conn)
                .await?
            }
            None => None,
        };
        let (interaction_id, created, queue_id) = match open {
            Some((id, q)) => (id, false, q),
            None => {
                let qs = queues::list(&mut *conn).await?;
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
                .bind(with_campaign(item.metadata.clone(), customer.and_then(|c| c.campaign_id)))
                .fetch_one(&mut *conn)
                .await?;
                (id, true, queue.map(|q| q.id))
            }
        };
        // The message and its dedupe ledger row in one statement. The clock, not the
        // transaction start, stamps it: a batch holds several messages of a conversation
        // and they must keep their order.
        let message_id: Uuid = sqlx::query_scalar(
            "with m as (
                insert into messages (interaction_id, direction, body, content_type, attachments, client_message_id, created_at)
                values ($1, 'inbound', $2, $3, $4, $5, clock_timestamp()) returning id
             ), l as (
                insert into inbound_items (channel, dedupe_key, interaction_id, message_id)
                select $6, $5, $1, id from m
             )
             select id from m",
        )
        .bind(interaction_id)
        .bind(&item.body)
        .bind(item.content_type.as_deref().unwrap_or("text/plain"))
        .bind(item.attachments.clone().unwrap_or_else(|| serde_json::json!([])))
        .bind(&item.dedupe_key)
        .bind(channel.as_str())
        .fetch_one(&mut *conn)
        .await?;
        if created {
            let kind = match item.initial_status {
                Some(InteractionStatus::Voicemail) => "voicemail",
                Some(s) if s != InteractionStatus::Queued => "created",
                _ => "enqueued",
            };
            bus::record(
                &mut *conn,
                NewEvent::interaction(kind, interaction_id)
                    .with_queue(queue_id)
                    .with_data(serde_json::json!({ "channel": channel, "customer_id": customer.map(|c| c.id) })),
            )
            .await?;
        }
        bus::record(
            &mut *conn,
            NewEvent::interaction("message", interaction_id).with_queue(queue_id).with_data(
                serde_json::json!({ "message_id": message_id, "direction": "inbound", "channel": channel, "node": self.0.node_id }),
            ),
        )
        .await?;
        Ok(IngestOutcome {
            interaction_id,
            message_id: Some(message_id),
            customer_id: customer.map(|c| c.id),
            duplicate: false,
            created,
            sequence: None,
        })
    }
}

/// A new interaction's metadata: the item's, with the campaign it answers when known.
fn with_campaign(metadata: Option<serde_json::Value>, campaign: Option<Uuid>) -> serde_json::Value {
    let mut m = metadata.unwrap_or_else(|| serde_json::json!({}));
    if let (Some(c), Some(o)) = (campaign, m.as_object_mut()) {
        o.entry("campaign_id").or_insert_with(|| serde_json::Value::String(c.to_string()));
    }
    m
}
