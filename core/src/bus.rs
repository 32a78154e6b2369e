//! The event bus: every state change is a row in `interaction_events` (append-only), and
//! every node hears every committed event and nobody hears an uncommitted one. Each node's
//! listener fans events out on an in-process broadcast channel.
//!
//! Two ways to announce an event:
//! - [`record`]: a NOTIFY in the writing transaction, delivered on commit. PostgreSQL
//!   serializes the commits of notifying transactions (one lock held through the WAL
//!   flush), so this is for state changes, not for the message stream;
//! - [`Announcer`]: the ingest path commits its `message` events without NOTIFY and hands
//!   them to a per-node task that NOTIFYs them right after, in commit order, in payloads of
//!   many events each (a notification-only transaction that waits for no disk flush).
//!
//! A node could die between such a commit and its announcement, and a notification can be
//! lost with a listener's connection; so each listener also sweeps the table once a second
//! and publishes committed events it has not heard of (see [`Tracker`]).

use crate::error::CoreResult;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use tokio::sync::broadcast;
use uuid::Uuid;

/// The NOTIFY channel.
pub const NOTIFY_CHANNEL: &str = "switchboard_events";

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
         select ev.*, pg_notify('{NOTIFY_CHANNEL}', case when length(row_to_json(ev)::text) > {PAYLOAD_LIMIT}
                                then json_build_object('ref', ev.id)::text else row_to_json(ev)::text end)::text as notified
         from ev"
    )
});

/// Appends an event and notifies in the caller's transaction; delivered on commit.
pub async fn record(conn: &mut PgConnection, e: NewEvent) -> CoreResult<HubEvent> {
    // One round trip: insert, then NOTIFY the row as JSON (or by reference when it would
    // not fit in a payload).
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

/// Most bytes of one NOTIFY payload we send (PostgreSQL's limit is 8,000).
const PAYLOAD_LIMIT: usize = 7000;

/// Packs committed events, given as (id, row JSON), into JSON-array payloads of at most
/// [`PAYLOAD_LIMIT`] bytes; an event too large for any payload goes by reference.
fn pack(events: &[(i64, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::from("[");
    for (id, json) in events {
        let by_ref;
        let item = if json.len() + 2 > PAYLOAD_LIMIT {
            by_ref = format!("{{\"ref\":{id}}}");
            &by_ref
        } else {
            json
        };
        if cur.len() > 1 && cur.len() + item.len() + 2 > PAYLOAD_LIMIT {
            cur.push(']');
            out.push(std::mem::replace(&mut cur, String::from("[")));
        }
        if cur.len() > 1 {
            cur.push(',');
        }
        cur.push_str(item);
    }
    if cur.len() > 1 {
        cur.push(']');
        out.push(cur);
    }
    out
}

/// NOTIFYs committed events on behalf of the transactions that wrote them, in the order
/// they were handed over, from one task per node (started on first use). Never blocks the
/// writer: if the task falls far behind, events are left to the listeners' sweep.
pub struct Announcer {
    pool: PgPool,
    tx: std::sync::OnceLock<tokio::sync::mpsc::Sender<Vec<(i64, String)>>>,
}

impl Announcer {
    /// An announcer over the pool.
    pub fn new(pool: PgPool) -> Self {
        Announcer { pool, tx: std::sync::OnceLock::new() }
    }

    /// Hands over the events of one committed transaction, as (id, row JSON).
    pub fn announce(&self, events: Vec<(i64, String)>) {
        if events.is_empty() {
            return;
        }
        let tx = self.tx.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(i64, String)>>(4096);
            let pool = self.pool.clone();
            tokio::spawn(async move {
                while let Some(mut events) = rx.recv().await {
                    // Whatever queued up meanwhile goes in the same statement.
                    while let Ok(more) = rx.try_recv() {
                        events.extend(more);
                    }
                    // The transaction writes nothing, so it need not wait for the disk.
                    let sent = sqlx::query(
                        "select pg_notify($1, p) from (select set_config('synchronous_commit', 'off', true)) s, unnest($2::text[]) as p",
                    )
                    .bind(NOTIFY_CHANNEL)
                    .bind(pack(&events))
                    .execute(&pool)
                    .await;
                    if let Err(e) = sent {
                        tracing::warn!(error = %e, events = events.len(), "Could not announce committed events; the listeners' sweep will pick them up.");
                    }
                }
            });
            tx
        });
        if tx.try_send(events).is_err() {
            tracing::warn!("Event announcer is behind; the listeners' sweep will deliver these events.");
        }
    }
}

/// How long an event id may stay unseen (an open or rolled-back transaction) before the
/// sweep stops waiting for it.
const GAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a listener has published, so that notifications and sweeps together deliver each
/// committed event once: every id up to `floor` is settled (published, or a gap given up
/// on); ids above it that were published are in `seen`.
#[derive(Debug, Default)]
pub struct Tracker {
    floor: i64,
    seen: std::collections::BTreeSet<i64>,
    /// Visible at the last sweep but not heard of yet.
    unheard: std::collections::HashSet<i64>,
    /// Ids not visible yet, since when.
    gaps: std::collections::BTreeMap<i64, std::time::Instant>,
    /// Gaps given up on, in case their transaction commits after all.
    given_up: std::collections::BTreeMap<i64, std::time::Instant>,
}

impl Tracker {
    /// A tracker that treats everything up to `floor` as settled.
    pub fn starting_at(floor: i64) -> Self {
        Tracker { floor, ..Default::default() }
    }

    /// Whether an event heard of should be published (false: delivered already).
    pub fn hear(&mut self, id: i64) -> bool {
        if id == 0 {
            return true; // an ephemeral signal
        }
        if id > self.floor {
            self.unheard.remove(&id);
            return self.seen.insert(id);
        }
        self.given_up.remove(&id).is_some()
    }

    /// Given the ids visible above the floor (ascending), returns those to fetch and
    /// publish now: visible at two sweeps in a row and still not heard of (or all unheard
    /// ones when `now_all`, after a reconnect). The caller [`hear`](Self::hear)s each one it
    /// publishes, then calls [`advance`](Self::advance).
    pub fn to_fetch(&mut self, visible: &[i64], now_all: bool) -> Vec<i64> {
        let mut fetch = Vec::new();
        let mut unheard = std::collections::HashSet::new();
        for &id in visible {
            if id <= self.floor || self.seen.contains(&id) {
                continue;
            }
            if now_all || self.unheard.contains(&id) {
                fetch.push(id);
            }
            unheard.insert(id);
        }
        self.unheard = unheard;
        fetch
    }

    /// Moves the floor over every id that was published or stayed invisible for longer
    /// than `GAP_TIMEOUT` (10 s), up to the first one still pending.
    pub fn advance(&mut self, visible: &[i64], now: std::time::Instant) {
        let top = visible.last().copied().unwrap_or(0).max(self.seen.last().copied().unwrap_or(0));
        let visible: std::collections::HashSet<i64> = visible.iter().copied().collect();
        let mut settled = true;
        for id in self.floor + 1..=top {
            if self.seen.contains(&id) {
                if settled {
                    self.floor = id;
                }
                continue;
            }
            if visible.contains(&id) {
                settled = false; // committed; its notification may still come
                continue;
            }
            let since = *self.gaps.entry(id).or_insert(now);
            if settled && now.duration_since(since) >= GAP_TIMEOUT {
                self.given_up.insert(id, now);
                self.floor = id;
            } else {
                settled = false;
            }
        }
        let floor = self.floor;
        self.seen.retain(|&id| id > floor);
        self.gaps.retain(|&id, _| id > floor);
        self.given_up.retain(|_, at| now.duration_since(*at) < GAP_TIMEOUT * 60);
    }
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
    if payload.len() > PAYLOAD_LIMIT {
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
    Many(Vec<Payload>),
}

impl Payload {
    fn flatten(self, out: &mut Vec<Payload>) {
        match self {
            Payload::Many(items) => items.into_iter().for_each(|p| p.flatten(out)),
            p => out.push(p),
        }
    }
}

const EVENT_COLUMNS: &str = "id, interaction_id, agent_id, queue_id, kind, data, at";

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

    /// Runs the LISTEN loop until the shutdown signal, reconnecting on failure. Once a
    /// second (and at once after a reconnect) it sweeps the table for committed events it
    /// has not heard of (see [`Tracker`]).
    pub async fn run_listener(
        self,
        pool: PgPool,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        let mut tracker: Option<Tracker> = None;
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
            let reconnected = match &mut tracker {
                Some(_) => true,
                None => match sqlx::query_scalar::<_, Option<i64>>("select max(id) from interaction_events").fetch_one(&pool).await {
                    Ok(max) => {
                        tracker = Some(Tracker::starting_at(max.unwrap_or(0)));
                        false
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Event listener could not read the event table; retrying.");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let Some(t) = tracker.as_mut() else { continue };
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            if reconnected {
                // Catch up on anything committed while we were disconnected.
                self.sweep(&pool, t, true).await;
            }
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tick.tick() => self.sweep(&pool, t, false).await,
                    n = listener.try_recv() => match n {
                        Ok(Some(n)) => match serde_json::from_str::<Payload>(n.payload()) {
                            Ok(p) => {
                                let mut items = Vec::new();
                                p.flatten(&mut items);
                                for item in items {
                                    let ev = match item {
                                        Payload::Full(ev) => ev,
                                        Payload::Ref { id } => match sqlx::query_as::<_, HubEvent>(&format!(
                                            "select {EVENT_COLUMNS} from interaction_events where id = $1"
                                        ))
                                        .bind(id)
                                        .fetch_optional(&pool)
                                        .await
                                        {
                                            Ok(Some(ev)) => ev,
                                            _ => continue,
                                        },
                                        Payload::Many(_) => continue,
                                    };
                                    if t.hear(ev.id) {
                                        self.publish(ev);
                                    }
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "Unreadable event notification."),
                        },
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

    /// Publishes the committed events above the tracker's floor that no notification
    /// brought (see [`Tracker`]).
    async fn sweep(&self, pool: &PgPool, t: &mut Tracker, now_all: bool) {
        let visible: Vec<i64> = match sqlx::query_scalar("select id from interaction_events where id > $1 order by id limit 50000")
            .bind(t.floor)
            .fetch_all(pool)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "Event sweep failed.");
                return;
            }
        };
        let fetch = t.to_fetch(&visible, now_all);
        if !fetch.is_empty() {
            tracing::info!(events = fetch.len(), "Publishing committed events no notification brought.");
            match sqlx::query_as::<_, HubEvent>(&format!("select {EVENT_COLUMNS} from interaction_events where id = any($1) order by id"))
                .bind(&fetch)
                .fetch_all(pool)
                .await
            {
                Ok(events) => {
                    for ev in events {
                        if t.hear(ev.id) {
                            self.publish(ev);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Event sweep could not read the missed events."),
            }
        }
        t.advance(&visible, std::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn payloads_stay_under_the_limit_and_huge_events_go_by_reference() {
        let small: Vec<(i64, String)> = (1..=100).map(|i| (i, format!("{{\"id\":{i},\"pad\":\"{}\"}}", "x".repeat(200)))).collect();
        let packed = pack(&small);
        assert!(packed.len() > 1 && packed.iter().all(|p| p.len() <= PAYLOAD_LIMIT));
        let ids: Vec<i64> = packed
            .iter()
            .flat_map(|p| serde_json::from_str::<Vec<serde_json::Value>>(p).unwrap())
            .map(|v| v["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, (1..=100).collect::<Vec<_>>(), "every event once, in order");
        let huge = vec![(7, format!("{{\"id\":7,\"pad\":\"{}\"}}", "x".repeat(9000)))];
        assert_eq!(pack(&huge), vec!["[{\"ref\":7}]".to_string()]);
        assert!(pack(&[]).is_empty());
    }

    #[test]
    fn tracker_delivers_each_event_once_and_waits_for_gaps() {
        let t0 = Instant::now();
        let mut t = Tracker::starting_at(10);
        assert!(t.hear(11) && !t.hear(11), "a repeated notification is dropped");
        assert!(t.hear(0) && t.hear(0), "signals are never deduplicated");
        // 12 is committed but unheard, 13 is not visible (open or rolled back), 14 heard.
        assert!(t.hear(14));
        assert!(t.to_fetch(&[11, 12, 14], false).is_empty(), "one sweep of grace for the notification");
        t.advance(&[11, 12, 14], t0);
        assert_eq!(t.floor, 11);
        assert_eq!(t.to_fetch(&[12, 14], false), vec![12], "still unheard at the next sweep: fetched");
        assert!(t.hear(12));
        t.advance(&[12, 14], t0 + Duration::from_secs(1));
        assert_eq!(t.floor, 12, "13 is a gap for now");
        t.advance(&[14], t0 + GAP_TIMEOUT + Duration::from_secs(1));
        assert_eq!(t.floor, 14, "a gap is given up on after the timeout");
        assert!(t.hear(13), "a late commit below the floor is still delivered");
        assert!(!t.hear(13) && !t.hear(14) && !t.hear(12));
        // After a reconnect everything visible and unheard is fetched at once.
        assert_eq!(t.to_fetch(&[15, 16], true), vec![15, 16]);
    }
}
