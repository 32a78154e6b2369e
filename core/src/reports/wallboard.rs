//! The live wallboard: per queue, who waits now and since when, and today's answered,
//! abandoned, service level and ASA; per agent, presence, time in it and current
//! contacts. One task per node keeps this in memory from the event stream and turns each
//! batch of events into one delta (only the queues and agents that changed), serialized
//! once and shared by every open wallboard: the server's cost follows the events, not the
//! number of screens. "Today" starts at `reports.day_reset` in `reports.time_zone`.

#![allow(clippy::type_complexity)] // sqlx row tuples

use super::ReportSettings;
use crate::bus::HubEvent;
use crate::error::CoreResult;
use crate::hub::Hub;
use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use uuid::Uuid;

#[derive(Debug, Default, Clone)]
struct QueueLive {
    name: String,
    sl_ms: i64,
    short_ms: i64,
    waiting: HashMap<Uuid, DateTime<Utc>>,
    answered: i64,
    answered_in_sl: i64,
    wait_ms: i64,
    abandoned: i64,
    abandoned_short: i64,
    /// Contacts of this queue an agent holds now (accepted, not yet closed).
    in_service: HashSet<Uuid>,
}

#[derive(Debug, Default, Clone)]
struct AgentLive {
    name: String,
    presence: String,
    since: Option<DateTime<Utc>>,
    contacts: HashSet<Uuid>,
}

#[derive(Debug, Default)]
struct State {
    queues: HashMap<Uuid, QueueLive>,
    agents: HashMap<Uuid, AgentLive>,
    /// Where each open interaction waits or who holds it, and when it entered its queue.
    queue_of: HashMap<Uuid, (Uuid, DateTime<Utc>)>,
    holder: HashMap<Uuid, Uuid>,
    answered_today: HashSet<Uuid>,
    day_start: DateTime<Utc>,
}

impl State {
    fn queue_row(&self, id: Uuid) -> Value {
        let Some(q) = self.queues.get(&id) else { return json!({ "queue_id": id, "removed": true }) };
        let den = q.answered + q.abandoned;
        json!({
            "queue_id": id, "name": q.name, "waiting": q.waiting.len(),
            "oldest_enqueued_at": q.waiting.values().min(),
            "answered": q.answered, "abandoned": q.abandoned, "abandoned_short": q.abandoned_short,
            "service_level_pct": if den > 0 { Some(((q.answered_in_sl as f64 * 10000.0 / den as f64).round()) / 100.0) } else { None },
            "asa_secs": if q.answered > 0 { Some((q.wait_ms as f64 / q.answered as f64 / 10.0).round() / 100.0) } else { None },
            "sl_target_secs": q.sl_ms / 1000, "in_service": q.in_service.len(),
        })
    }

    fn agent_row(&self, id: Uuid) -> Value {
        let Some(a) = self.agents.get(&id) else { return json!({ "agent_id": id, "removed": true }) };
        json!({ "agent_id": id, "name": a.name, "presence": a.presence, "since": a.since, "contacts": a.contacts.len() })
    }

    fn snapshot(&self) -> Value {
        let mut qs: Vec<&Uuid> = self.queues.keys().collect();
        qs.sort_by_key(|q| self.queues[*q].name.clone());
        let mut ags: Vec<&Uuid> = self.agents.keys().collect();
        ags.sort_by_key(|a| self.agents[*a].name.clone());
        json!({
            "kind": "snapshot", "day_start": self.day_start, "now": Utc::now(),
            "queues": qs.into_iter().map(|q| self.queue_row(*q)).collect::<Vec<_>>(),
            "agents": ags.into_iter().map(|a| self.agent_row(*a)).collect::<Vec<_>>(),
        })
    }

    fn release(&mut self, interaction: Uuid, changed_queues: &mut HashSet<Uuid>, changed_agents: &mut HashSet<Uuid>) {
        if let Some(a) = self.holder.remove(&interaction) {
            if let Some(ag) = self.agents.get_mut(&a) {
                ag.contacts.remove(&interaction);
            }
            changed_agents.insert(a);
        }
        if let Some((q, _)) = self.queue_of.get(&interaction) {
            if let Some(ql) = self.queues.get_mut(q) {
                if ql.in_service.remove(&interaction) {
                    changed_queues.insert(*q);
                }
            }
        }
    }

    fn hold(&mut self, interaction: Uuid, agent: Uuid, changed_queues: &mut HashSet<Uuid>, changed_agents: &mut HashSet<Uuid>) {
        self.release(interaction, changed_queues, changed_agents);
        self.holder.insert(interaction, agent);
        self.agents.entry(agent).or_default().contacts.insert(interaction);
        changed_agents.insert(agent);
        if let Some((q, _)) = self.queue_of.get(&interaction) {
            if let Some(ql) = self.queues.get_mut(q) {
                ql.in_service.insert(interaction);
                changed_queues.insert(*q);
            }
        }
    }

    fn stop_waiting(&mut self, interaction: Uuid, changed: &mut HashSet<Uuid>) -> Option<(Uuid, DateTime<Utc>)> {
        let (q, at) = self.queue_of.get(&interaction).copied()?;
        if let Some(ql) = self.queues.get_mut(&q) {
            if ql.waiting.remove(&interaction).is_some() {
                changed.insert(q);
                return Some((q, at));
            }
        }
        None
    }

    /// Applies one event; notes what changed. Returns whether names must be reloaded.
    fn apply(&mut self, ev: &HubEvent, cq: &mut HashSet<Uuid>, ca: &mut HashSet<Uuid>) -> bool {
        let today = ev.at >= self.day_start;
        let uuid_of = |k: &str| ev.data.get(k).and_then(|v| v.as_str()).and_then(|s| s.parse::<Uuid>().ok());
        match ev.kind.as_str() {
            "presence" => {
                if let Some(a) = ev.agent_id {
                    let ag = self.agents.entry(a).or_default();
                    ag.presence = ev.data.get("presence").and_then(|p| p.as_str()).unwrap_or("offline").into();
                    ag.since = Some(ev.at);
                    ca.insert(a);
                }
            }
            "enqueued" | "requeued" => {
                let (Some(i), Some(q)) = (ev.interaction_id, ev.queue_id) else { return false };
                let since = self.queue_of.get(&i).map(|x| x.1).unwrap_or(ev.at);
                // Back in a queue (ring-no-answer, an agent's release): nobody holds it.
                self.release(i, cq, ca);
                self.stop_waiting(i, cq);
                self.queue_of.insert(i, (q, since));
                if let Some(ql) = self.queues.get_mut(&q) {
                    ql.waiting.insert(i, since);
                    cq.insert(q);
                }
            }
            "accepted" => {
                let Some(i) = ev.interaction_id else { return false };
                let waited = self.stop_waiting(i, cq);
                if let Some(a) = ev.agent_id {
                    self.hold(i, a, cq, ca);
                }
                if let (Some((q, since)), true) = (waited.or_else(|| self.queue_of.get(&i).copied()), today) {
                    if self.answered_today.insert(i) {
                        if let Some(ql) = self.queues.get_mut(&q) {
                            let w = (ev.at - since).num_milliseconds().max(0);
                            ql.answered += 1;
                            ql.answered_in_sl += (w <= ql.sl_ms) as i64;
                            ql.wait_ms += w;
                            cq.insert(q);
                        }
                    }
                }
            }
            "abandoned" => {
                let Some(i) = ev.interaction_id else { return false };
                if let Some((q, since)) = self.stop_waiting(i, cq) {
                    if let (Some(ql), true) = (self.queues.get_mut(&q), today) {
                        if (ev.at - since).num_milliseconds() < ql.short_ms {
                            ql.abandoned_short += 1;
                        } else {
                            ql.abandoned += 1;
                        }
                    }
                }
                self.release(i, cq, ca);
                self.queue_of.remove(&i);
            }
            "closed" | "voicemail" | "status" => {
                let Some(i) = ev.interaction_id else { return false };
                let st = ev.data.get("status").and_then(|s| s.as_str()).unwrap_or("closed");
                if ev.kind == "status" && !matches!(st, "voicemail" | "overflowed" | "closed" | "abandoned") {
                    return false;
                }
                if st == "abandoned" {
                    let mut e = ev.clone();
                    e.kind = "abandoned".into();
                    return self.apply(&e, cq, ca);
                }
                self.stop_waiting(i, cq);
                self.release(i, cq, ca);
                self.queue_of.remove(&i);
            }
            "transferred" => {
                let Some(i) = ev.interaction_id else { return false };
                self.release(i, cq, ca);
                if let Some(q) = uuid_of("to_queue") {
                    let since = self.queue_of.get(&i).map(|x| x.1).unwrap_or(ev.at);
                    self.queue_of.insert(i, (q, since));
                }
            }
            "queue_updated" | "queue_deleted" | "agent_updated" | "agent_deleted" => return true,
            _ => {}
        }
        false
    }
}

/// Shortest time between two deltas: events arriving meanwhile are folded into the next.
const DELTA_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The wallboard feed of this node.
#[derive(Clone)]
pub struct Wallboard {
    state: Arc<Mutex<State>>,
    tx: broadcast::Sender<Arc<str>>,
}

fn day_start(now: DateTime<Utc>, tz: Tz, reset: NaiveTime) -> DateTime<Utc> {
    let local = now.with_timezone(&tz);
    let mut d = local.date_naive();
    if local.time() < reset {
        d -= Duration::days(1);
    }
    tz.from_local_datetime(&d.and_time(reset))
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| super::interval::local_day_start(d, tz))
}

async fn load(hub: &Hub, start: DateTime<Utc>) -> CoreResult<State> {
    let mut s = State { day_start: start, ..Default::default() };
    let qs: Vec<(Uuid, String, i32, Option<i32>)> = sqlx::query_as(
        "select q.id, q.name, q.sla_target_secs, r.short_abandon_secs from queues q left join report_queue_settings r on r.queue_id = q.id
          where q.archived_at is null",
    )
    .fetch_all(hub.db())
    .await?;
    for (id, name, sl, short) in qs {
        s.queues.insert(id, QueueLive { name, sl_ms: sl as i64 * 1000, short_ms: short.unwrap_or(5) as i64 * 1000, ..Default::default() });
    }
    let ags: Vec<(Uuid, String, String, DateTime<Utc>)> =
        sqlx::query_as("select id, name, presence, presence_since from agents where archived_at is null").fetch_all(hub.db()).await?;
    for (id, name, presence, since) in ags {
        s.agents.insert(id, AgentLive { name, presence, since: Some(since), contacts: HashSet::new() });
    }
    let open: Vec<(Uuid, Option<Uuid>, Option<Uuid>, String, DateTime<Utc>)> = sqlx::query_as(
        "select id, queue_id, agent_id, status, enqueued_at from interactions where status in ('queued','offered','active','wrap_up')",
    )
    .fetch_all(hub.db())
    .await?;
    for (id, q, a, status, enq) in open {
        if let Some(q) = q {
            s.queue_of.insert(id, (q, enq));
            if matches!(status.as_str(), "queued" | "offered") {
                if let Some(ql) = s.queues.get_mut(&q) {
                    ql.waiting.insert(id, enq);
                }
            }
        }
        if let (Some(a), true) = (a, matches!(status.as_str(), "active" | "wrap_up")) {
            s.holder.insert(id, a);
            if let Some(ag) = s.agents.get_mut(&a) {
                ag.contacts.insert(id);
            }
            if let Some(ql) = q.and_then(|q| s.queues.get_mut(&q)) {
                ql.in_service.insert(id);
            }
        }
    }
    // Today's answered and abandoned, from the contact records kept by the rollups for
    // what they have processed, and from the interactions for the rest.
    let today: Vec<(Uuid, Option<Uuid>, Option<DateTime<Utc>>, DateTime<Utc>, String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "select id, queue_id, answered_at, enqueued_at, status, closed_at from interactions
          where (answered_at >= $1) or (status = 'abandoned' and closed_at >= $1)",
    )
    .bind(start)
    .fetch_all(hub.db())
    .await?;
    for (id, q, answered, enq, status, closed) in today {
        let Some(ql) = q.and_then(|q| s.queues.get_mut(&q)) else { continue };
        if let Some(at) = answered.filter(|a| *a >= start) {
            let w = (at - enq).num_milliseconds().max(0);
            ql.answered += 1;
            ql.answered_in_sl += (w <= ql.sl_ms) as i64;
            ql.wait_ms += w;
            s.answered_today.insert(id);
        } else if status == "abandoned" {
            let w = closed.map(|c| (c - enq).num_milliseconds()).unwrap_or(0);
            if w < ql.short_ms {
                ql.abandoned_short += 1;
            } else {
                ql.abandoned += 1;
            }
        }
    }
    Ok(s)
}

impl Wallboard {
    /// Loads today's state and starts following the event stream.
    pub async fn start(hub: Hub, settings: &ReportSettings, mut shutdown: tokio::sync::watch::Receiver<bool>) -> CoreResult<Wallboard> {
        let tz = settings.zone().map_err(|e| crate::CoreError::Internal(e.to_string()))?;
        let reset = settings.reset().map_err(|e| crate::CoreError::Internal(e.to_string()))?;
        let mut rx = hub.events();
        let state = Arc::new(Mutex::new(load(&hub, day_start(Utc::now(), tz, reset)).await?));
        let (tx, _) = broadcast::channel(256);
        let board = Wallboard { state, tx };
        let me = board.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            // Queues and agents changed since the last delta, and when the next may go.
            let mut cq = HashSet::new();
            let mut ca = HashSet::new();
            let mut last_push = tokio::time::Instant::now();
            loop {
                let mut batch = Vec::new();
                let mut resync = false;
                let pending = !cq.is_empty() || !ca.is_empty();
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep_until(last_push + DELTA_EVERY), if pending => {}
                    _ = tick.tick() => {
                        let start = day_start(Utc::now(), tz, reset);
                        let stale = me.state.lock().map(|s| s.day_start != start).unwrap_or(true);
                        if !stale { continue; }
                        resync = true;
                    }
                    ev = rx.recv() => match ev {
                        Ok(ev) => {
                            batch.push(ev);
                            while batch.len() < 5000 {
                                match rx.try_recv() {
                                    Ok(ev) => batch.push(ev),
                                    Err(broadcast::error::TryRecvError::Lagged(_)) => { resync = true; break; }
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => resync = true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
                let mut reload = false;
                if !resync {
                    if let Ok(mut s) = me.state.lock() {
                        for ev in &batch {
                            reload |= s.apply(ev, &mut cq, &mut ca);
                        }
                    }
                }
                if resync || reload {
                    match load(&hub, day_start(Utc::now(), tz, reset)).await {
                        Ok(fresh) => {
                            let snap = fresh.snapshot();
                            if let Ok(mut s) = me.state.lock() {
                                *s = fresh;
                            }
                            let _ = me.tx.send(Arc::from(snap.to_string()));
                            cq.clear();
                            ca.clear();
                            last_push = tokio::time::Instant::now();
                        }
                        Err(error) => tracing::warn!(%error, "Wallboard could not reload its state."),
                    }
                    continue;
                }
                // One delta per batch of events, at most one per DELTA_EVERY: a busy
                // center's events fold into a few pushes a second per screen.
                if (cq.is_empty() && ca.is_empty()) || last_push.elapsed() < DELTA_EVERY {
                    continue;
                }
                let delta = match me.state.lock() {
                    Ok(s) => json!({
                        "kind": "delta", "now": Utc::now(),
                        "queues": cq.iter().map(|q| s.queue_row(*q)).collect::<Vec<_>>(),
                        "agents": ca.iter().map(|a| s.agent_row(*a)).collect::<Vec<_>>(),
                    }),
                    Err(_) => continue,
                };
                let _ = me.tx.send(Arc::from(delta.to_string()));
                cq.clear();
                ca.clear();
                last_push = tokio::time::Instant::now();
            }
        });
        Ok(board)
    }

    /// The current state, whole.
    pub fn snapshot(&self) -> Value {
        self.state.lock().map(|s| s.snapshot()).unwrap_or(Value::Null)
    }

    /// Deltas from now on (subscribe before taking the snapshot: a delta carries whole
    /// rows, so applying one twice does no harm).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, i: Option<Uuid>, a: Option<Uuid>, q: Option<Uuid>, data: Value, secs: i64) -> HubEvent {
        let at = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap() + Duration::seconds(secs);
        HubEvent { id: secs, interaction_id: i, agent_id: a, queue_id: q, kind: kind.into(), data, at }
    }

    /// One contact's life on the board: waiting, answered (in service, held by the agent),
    /// transferred back to a queue, answered again, closed; each step marks only the rows
    /// it changed.
    #[test]
    fn a_contact_moves_from_waiting_to_in_service_and_out() {
        let (q1, q2, a, b, i) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut s = State { day_start: Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap(), ..Default::default() };
        for (q, name) in [(q1, "sales"), (q2, "support")] {
            s.queues.insert(q, QueueLive { name: name.into(), sl_ms: 20_000, short_ms: 5_000, ..Default::default() });
        }
        let (mut cq, mut ca) = (HashSet::new(), HashSet::new());
        s.apply(&ev("enqueued", Some(i), None, Some(q1), json!({}), 0), &mut cq, &mut ca);
        assert_eq!((s.queue_row(q1)["waiting"].clone(), s.queue_row(q1)["in_service"].clone()), (json!(1), json!(0)));
        assert_eq!(cq, HashSet::from([q1]));

        let (mut cq, mut ca) = (HashSet::new(), HashSet::new());
        s.apply(&ev("accepted", Some(i), Some(a), Some(q1), json!({}), 12), &mut cq, &mut ca);
        let row = s.queue_row(q1);
        assert_eq!((row["waiting"].clone(), row["in_service"].clone(), row["answered"].clone()), (json!(0), json!(1), json!(1)));
        assert_eq!(row["service_level_pct"], json!(100.0));
        assert_eq!(s.agent_row(a)["contacts"], json!(1));
        assert_eq!((cq, ca), (HashSet::from([q1]), HashSet::from([a])));

        // Transferred to the other queue: the agent lets go, the first queue no longer
        // serves it; when b takes it, the second queue does.
        let (mut cq, mut ca) = (HashSet::new(), HashSet::new());
        s.apply(&ev("transferred", Some(i), Some(a), Some(q1), json!({ "to_queue": q2.to_string() }), 60), &mut cq, &mut ca);
        assert_eq!((s.queue_row(q1)["in_service"].clone(), s.agent_row(a)["contacts"].clone()), (json!(0), json!(0)));
        s.apply(&ev("accepted", Some(i), Some(b), Some(q2), json!({}), 70), &mut cq, &mut ca);
        assert_eq!((s.queue_row(q2)["in_service"].clone(), s.agent_row(b)["contacts"].clone()), (json!(1), json!(1)));
        assert_eq!(s.queue_row(q1)["answered"], json!(1), "answered once, in the queue it was first answered in");

        let (mut cq, mut ca) = (HashSet::new(), HashSet::new());
        s.apply(&ev("closed", Some(i), Some(b), Some(q2), json!({}), 300), &mut cq, &mut ca);
        assert_eq!((s.queue_row(q2)["in_service"].clone(), s.agent_row(b)["contacts"].clone()), (json!(0), json!(0)));
        assert_eq!((cq, ca), (HashSet::from([q2]), HashSet::from([b])));
    }

    /// A ring-no-answer puts an accepted contact back in its queue: waiting again, held by
    /// nobody.
    #[test]
    fn a_requeued_contact_is_no_longer_held() {
        let (q, a, i) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut s = State { day_start: Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap(), ..Default::default() };
        s.queues.insert(q, QueueLive { name: "q".into(), sl_ms: 20_000, short_ms: 5_000, ..Default::default() });
        let (mut cq, mut ca) = (HashSet::new(), HashSet::new());
        s.apply(&ev("enqueued", Some(i), None, Some(q), json!({}), 0), &mut cq, &mut ca);
        s.apply(&ev("accepted", Some(i), Some(a), Some(q), json!({}), 5), &mut cq, &mut ca);
        s.apply(&ev("requeued", Some(i), None, Some(q), json!({}), 9), &mut cq, &mut ca);
        let row = s.queue_row(q);
        assert_eq!((row["waiting"].clone(), row["in_service"].clone()), (json!(1), json!(0)));
        assert_eq!(s.agent_row(a)["contacts"], json!(0));
    }
}
