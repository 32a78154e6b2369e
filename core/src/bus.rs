//! The event bus: every state change is a row in `interaction_events` (append-only) and a
//! PostgreSQL NOTIFY in the same transaction, so every node hears every committed event and
//! nobody hears an uncommitted one (invariant 4). Each node's listener fans events out on
//! an in-process broadcast channel.

use crate::error::CoreResult;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use tokio::sync::broadcast;
use uuid::Uuid;

/// The NOTIFY channel (also spelled out in [`NOTIFY_EV`]).
pub const NOTIFY_CHANNEL: &str = "switchboard_events";

/// SQL expression that NOTIFYs the `interaction_events` row aliased `ev`: the row as JSON,
/// or a reference when it would not fit in a NOTIFY payload. For statements that append
/// several events at once.
pub(crate) const NOTIFY_EV: &str = "pg_notify('switchboard_events', case when length(row_to_json(ev)::text) > 7000 \
     then json_build_object('ref', ev.id)::text else row_to_json(ev)::text end)::text";

/// A committed event.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct HubEvent {
    /// Row id in `interaction_events` (monotonic per database).
    pub id: i64,
    /// Interaction concerned, if any.
    pub interaction_id: Option<Uuid>,
    /// Agent concerned, if any.
    pub agent_id: Option<Uuid>,
    /// Queue concerned, if any.
    pub queue_id: Option<Uuid>,
    /// Event kind (`enqueued`, `offered`, `accepted`, `presence`, `message`, ...).
    pub kind: String,
    /// Kind-specific data.
    pub data: serde_json::Value,
    /// Commit time.
    pub at: DateTime<Utc>,
}

/// A new event to record.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    /// Interaction concerned.
    pub interaction_id: Option<Uuid>,
    /// Agent concerned.
    pub agent_id: Option<Uuid>,
    /// Queue concerned.
    pub queue_id: Option<Uuid>,
    /// Kind.
    pub kind: &'static str,
    /// Data.
    pub data: serde_json::Value,
}

impl NewEvent {
    /// An event of `kind` about an interaction.
    pub fn interaction(kind: &'static str, interaction_id: Uuid) -> Self {
        NewEvent { interaction_id: Some(interaction_id), kind, data: serde_json::json!({}), ..Default::default() }
    }
    /// An event of `kind` about an agent.
    pub fn agent(kind: &'static str, agent_id: Uuid) -> Self {
        NewEvent { agent_id: Some(agent_id), kind, data: serde_json::json!({}), ..Default::default() }
    }
    /// Sets the agent.
    pub fn with_agent(mut self, a: Option<Uuid>) -> Self {
        self.agent_id = a;
        self
    }
    /// Sets the queue.
    pub fn with_queue(mut self, q: Option<Uuid>) -> Self {
        self.queue_id = q;
        self
    }
    /// Sets the data.
    pub fn with_data(mut self, d: serde_json::Value) -> Self {
        self.data = d;
        self
    }
}

static RECORD_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "with ev as (
            insert into interaction_events (interaction_id, agent_id, queue_id, kind, data)
            values ($1, $2, $3, $4, $5)
            returning id, interaction_id, agent_id, queue_id, kind, data, at
         )
         select ev.*, {NOTIFY_EV} as notified from ev"
    )
});

/// Appends an event and notifies in the caller's transaction; delivered on commit.
pub async fn record(conn: &mut PgConnection, e: NewEvent) -> CoreResult<HubEvent> {
    // One round trip: insert, then NOTIFY the row as JSON (or by reference when it would
    // not fit in a NOTIFY payload).
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        ev: HubEvent,
        #[allow(dead_code)]
        notified: Option<String>,
    }
    let row: Row = sqlx::query_as(RECORD_SQL.as_str())
        .bind(e.interaction_id)
        .bind(e.agent_id)
        .bind(e.queue_id)
        .bind(e.kind)
        .bind(&e.data)
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.ev)
}

/// Sends an ephemeral event (typing indicators) to every node
/// without storing it: it carries id 0, arrives at once (autocommit NOTIFY) and is not
/// replayed after a listener reconnect — only for hints whose loss a reconnect repairs.
pub async fn signal(pool: &PgPool, e: NewEvent) -> CoreResult<()> {
    let ev = HubEvent {
        id: 0,
        interaction_id: e.interaction_id,
        agent_id: e.agent_id,
        queue_id: e.queue_id,
        kind: e.kind.to_string(),
        data: e.data,
        at: Utc::now(),
    };
    let payload = serde_json::to_string(&ev).map_err(|err| crate::CoreError::Internal(err.to_string()))?;
    if payload.len() > 7900 {
        return Err(crate::CoreError::Invalid("signal too large for a notification".into()));
    }
    sqlx::query("select pg_notify($1, $2)").bind(NOTIFY_CHANNEL).bind(payload).execute(pool).await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Payload {
    Full(HubEvent),
    Ref {
        #[serde(rename = "ref")]
        id: i64,
    },
}

/// The in-process side of the bus.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<HubEvent>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus with room for bursts.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(16384);
        EventBus { tx }
    }

    /// Subscribes to every event this node hears.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<HubEvent>> {
        self.tx.subscribe()
    }

    /// Publishes locally (used by the listener).
    pub fn publish(&self, ev: HubEvent) {
        let _ = self.tx.send(Arc::new(ev));
    }

    /// Runs the LISTEN loop until the shutdown signal, reconnecting on failure. Events missed
    /// during a reconnect are read back from the table by id.
    pub async fn run_listener(
        self,
        pool: PgPool,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        let mut last_id: Option<i64> = None;
        loop {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "Event listener connect failed; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN failed; retrying.");
                continue;
            }
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            // Catch up on anything committed while we were disconnected.
            if let Some(from) = last_id {
                if let Ok(missed) = sqlx::query_as::<_, HubEvent>(
                    "select id, interaction_id, agent_id, queue_id, kind, data, at from interaction_events where id > $1 order by id limit 10000",
                )
                .bind(from)
                .fetch_all(&pool)
                .await
                {
                    for ev in missed {
                        last_id = Some(ev.id);
                        self.publish(ev);
                    }
                }
            }
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    n = listener.try_recv() => match n {
                        Ok(Some(n)) => {
                            let ev = match serde_json::from_str::<Payload>(n.payload()) {
                                Ok(Payload::Full(ev)) => ev,
                                Ok(Payload::Ref { id }) => match sqlx::query_as::<_, HubEvent>(
                                    "select id, interaction_id, agent_id, queue_id, kind, data, at from interaction_events where id = $1",
                                ).bind(id).fetch_optional(&pool).await {
                                    Ok(Some(ev)) => ev,
                                    _ => continue,
                                },
                                Err(e) => {
                                    tracing::warn!(error = %e, "Unreadable event notification.");
                                    continue;
                                }
                            };
                            last_id = Some(last_id.map_or(ev.id, |l| l.max(ev.id)));
                            self.publish(ev);
                        }
                        Ok(None) => {
                            tracing::warn!("Event listener connection lost; reconnecting.");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Event listener error; reconnecting.");
                            break;
                        }
                    }
                }
            }
        }
    }
}
