//! The router (ACD). One leader per database holds a PostgreSQL advisory lock on a
//! dedicated connection (invariant 5); standbys poll for the lock and take over within
//! `standby_poll_ms` of the leader's connection dying. The leader keeps the pure
//! [`engine::Engine`] in sync from events, decides in batches, and commits each batch in
//! one statement before anyone hears of it (invariant 4); the database's unique index and
//! capacity trigger back invariants 1 and 2 even against a confused leader.

pub mod engine;
pub mod store;

use crate::bus::HubEvent;
use crate::domain::Disposition;
use crate::error::{CoreError, CoreResult};
use crate::hub::Hub;
use engine::Engine;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The advisory lock key ("SWBD" as ASCII).
pub const LEADER_LOCK_KEY: i64 = 0x5357_4244;

/// Leadership status of this node.
#[derive(Debug, Default)]
pub struct RouterStatus {
    leader: AtomicBool,
    terms: AtomicU64,
}

impl RouterStatus {
    /// Whether this node is the active router.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }
    /// How many times this node became leader.
    pub fn terms(&self) -> u64 {
        self.terms.load(Ordering::SeqCst)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs leader election and, while leader, the routing loop, until shutdown.
pub async fn run(hub: Hub, options: PgConnectOptions, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let poll = Duration::from_millis(hub.settings().router.standby_poll_ms);
    drop(options);
    loop {
        if *shutdown.borrow() {
            return;
        }
        // The pool's current connect options, not the ones at start: after a database
        // failover (`db::watch_primary`) they name the new primary.
        let options = (*hub.db().connect_options()).clone();
        match try_lead(&hub, &options, &mut shutdown).await {
            Ok(true) => {}
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "Router leadership attempt failed."),
        }
        hub.0.router_status.leader.store(false, Ordering::SeqCst);
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The router lease (core::lease) the leader renews every second beside its advisory lock:
/// its token fences the leader's commits, and its expiry lets a standby end the lock
/// session of a leader that stopped renewing (paused, SIGSTOP'd, hung) yet whose idle
/// connection still holds the advisory lock.
pub const ROUTER_LEASE: &str = "router";

fn router_lease_ttl(hub: &Hub) -> Duration {
    Duration::from_millis((hub.settings().router.standby_poll_ms * 6).clamp(3000, 30_000))
}

/// Ends the advisory-lock session of a leader whose router lease expired over a second
/// ago and whose lock connection is older than the lease (so never a leader that has just
/// taken the lock and is about to take the lease). True when one was ended.
async fn end_stale_leader(hub: &Hub) -> CoreResult<bool> {
    let ttl = router_lease_ttl(hub).as_secs_f64();
    let ended: Option<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(a.pid)
           from pg_locks l join pg_stat_activity a on a.pid = l.pid
          where l.locktype = 'advisory' and l.granted and l.objsubid = 1
            and ((l.classid::bigint << 32) | l.objid::bigint) = $1
            and a.backend_start < now() - make_interval(secs => $2)
            and exists (select 1 from leases where name = $3 and expires_at < clock_timestamp() - interval '1 second')
            and not exists (select 1 from leases where name = $3 and expires_at > clock_timestamp())",
    )
    .bind(LEADER_LOCK_KEY)
    .bind(ttl)
    .bind(ROUTER_LEASE)
    .fetch_optional(hub.db())
    .await?;
    if ended == Some(true) {
        tracing::warn!("Ended the lock session of a router leader whose lease expired.");
    }
    Ok(ended == Some(true))
}

async fn try_lead(hub: &Hub, options: &PgConnectOptions, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> CoreResult<bool> {
    let mut lock_conn = options.clone().application_name("switchboard-router-lock").connect().await?;
    let got: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)").bind(LEADER_LOCK_KEY).fetch_one(&mut lock_conn).await?;
    if !got {
        let _ = lock_conn.close().await;
        end_stale_leader(hub).await?;
        return Ok(false);
    }
    let ttl = router_lease_ttl(hub);
    let Some(lease) = crate::lease::acquire(hub.db(), ROUTER_LEASE, hub.node_id(), ttl).await? else {
        // A leader that lost its lock session may still hold an unexpired lease: wait it out.
        let _ = sqlx::query("select pg_advisory_unlock($1)").bind(LEADER_LOCK_KEY).execute(&mut lock_conn).await;
        let _ = lock_conn.close().await;
        return Ok(false);
    };
    hub.0.router_status.leader.store(true, Ordering::SeqCst);
    hub.0.router_status.terms.fetch_add(1, Ordering::SeqCst);
    tracing::info!("Router leadership acquired.");
    let mut lease = lease;
    let r = lead(hub, &mut lock_conn, &mut lease, shutdown).await;
    hub.0.router_status.leader.store(false, Ordering::SeqCst);
    let _ = crate::lease::release(hub.db(), &lease).await;
    let _ = sqlx::query("select pg_advisory_unlock($1)").bind(LEADER_LOCK_KEY).execute(&mut lock_conn).await;
    let _ = lock_conn.close().await;
    tracing::info!("Router leadership released.");
    r.map(|_| true)
}

/// The leader's state and loop.
struct Leader {
    hub: Hub,
    engine: Engine,
    /// When the once-a-second housekeeping (presence, stale chats, lapsed phone
    /// registrations) last ran, and the registration expiry horizon it checked up to.
    last_housekeeping: Option<Instant>,
    registrations_checked_until: chrono::DateTime<chrono::Utc>,
    /// The router lease's fencing token: commits happen only while it is current.
    fence: i64,
}

/// A fresh engine configured from settings.
fn new_engine(hub: &Hub) -> Engine {
    let mut e = Engine::new();
    e.set_refusal_skip_ms(hub.settings().router.decline_skip_secs.saturating_mul(1000).min(i64::MAX as u64) as i64);
    e
}

async fn lead(
    hub: &Hub,
    lock_conn: &mut PgConnection,
    lease: &mut crate::lease::Lease,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> CoreResult<()> {
    let s = hub.settings().router.clone();
    let ttl = router_lease_ttl(hub);
    // Subscribe before loading so nothing committed in between is missed.
    let mut events = hub.events();
    let mut leader = Leader {
        hub: hub.clone(),
        engine: new_engine(hub),
        last_housekeeping: None,
        registrations_checked_until: chrono::Utc::now(),
        fence: lease.token,
    };
    store::load_all(hub.db(), &mut leader.engine).await?;
    let mut tick = tokio::time::interval(Duration::from_millis(s.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_resync = Instant::now();
    let mut last_health = Instant::now();
    loop {
        leader.route().await?;
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            ev = events.recv() => {
                match ev {
                    Ok(ev) => {
                        let mut batch = vec![ev];
                        while batch.len() < 4096 {
                            match events.try_recv() {
                                Ok(ev) => batch.push(ev),
                                Err(_) => break,
                            }
                        }
                        leader.apply_events(&batch).await?;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "Router lagged behind events; resyncing.");
                        leader.engine = new_engine(hub);
                        store::load_all(hub.db(), &mut leader.engine).await?;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
            _ = tick.tick() => {
                leader.timers().await?;
                if last_health.elapsed() >= Duration::from_secs(1) {
                    // Losing this connection means losing the lock: stop leading at once.
                    sqlx::query("select 1").execute(&mut *lock_conn).await?;
                    // The lease too: a leader that overslept it steps down (and its
                    // commits were fenced meanwhile).
                    if !lease.locally_valid() || !crate::lease::renew(hub.db(), lease, ttl).await? {
                        return Err(CoreError::Internal("router lease lost".into()));
                    }
                    last_health = Instant::now();
                }
                if last_resync.elapsed() >= Duration::from_secs(s.resync_secs) {
                    leader.engine = new_engine(hub);
                    store::load_all(hub.db(), &mut leader.engine).await?;
                    last_resync = Instant::now();
                }
            }
        }
    }
}

impl Leader {
    async fn route(&mut self) -> CoreResult<()> {
        let batch = self.hub.settings().router.batch_size.max(1);
        loop {
            let decisions = self.engine.decide(now_ms(), batch);
            if decisions.is_empty() {
                return Ok(());
            }
            let n = decisions.len();
            store::commit_fenced(&self.hub, &mut self.engine, decisions, Some(self.fence)).await?;
            if n < batch {
                return Ok(());
            }
        }
    }

    async fn apply_events(&mut self, batch: &[Arc<HubEvent>]) -> CoreResult<()> {
        let mut agents: HashSet<Uuid> = HashSet::new();
        let mut interactions: HashSet<Uuid> = HashSet::new();
        let mut queues_changed = false;
        for ev in batch {
            let router_made = ev.data.get("router").and_then(|v| v.as_bool()).unwrap_or(false);
            match ev.kind.as_str() {
                "offered" if router_made => continue,
                "queue_updated" | "queue_deleted" => queues_changed = true,
                "agent_deleted" => {
                    if let Some(a) = ev.agent_id {
                        self.engine.remove_agent(a);
                    }
                    continue;
                }
                _ => {}
            }
            if let Some(a) = ev.agent_id {
                agents.insert(a);
            }
            for key in ["released_agents", "cancelled_agents"] {
                if let Some(list) = ev.data.get(key).and_then(|v| v.as_array()) {
                    agents.extend(list.iter().filter_map(|v| v.as_str()).filter_map(|s| s.parse::<Uuid>().ok()));
                }
            }
            if let Some(i) = ev.interaction_id {
                if matches!(
                    ev.kind.as_str(),
                    "enqueued"
                        | "requeued"
                        | "offered"
                        | "accepted"
                        | "closed"
                        | "abandoned"
                        | "status"
                        | "transferred"
                        | "voicemail"
                        | "interaction_updated"
                ) {
                    interactions.insert(i);
                }
            }
        }
        if queues_changed {
            store::load_queues(self.hub.db(), &mut self.engine).await?;
        }
        if !agents.is_empty() {
            store::load_agents(self.hub.db(), &mut self.engine, &agents.into_iter().collect::<Vec<_>>()).await?;
        }
        if !interactions.is_empty() {
            store::load_interactions(self.hub.db(), &mut self.engine, &interactions.into_iter().collect::<Vec<_>>()).await?;
        }
        Ok(())
    }

    async fn timers(&mut self) -> CoreResult<()> {
        self.hub.expire_offers().await?;
        if self.last_housekeeping.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            self.last_housekeeping = Some(Instant::now());
            self.housekeeping().await?;
        }
        // Wrap-up time over: close with the disposition given so far (or `other`).
        let due: Vec<(Uuid, Option<String>)> = sqlx::query_as(
            "select i.id, i.disposition from interactions i join queues q on q.id = i.queue_id
             where i.status = 'wrap_up' and q.wrap_up_secs > 0 and i.wrap_up_at + make_interval(secs => q.wrap_up_secs) <= now() limit 200",
        )
        .fetch_all(self.hub.db())
        .await?;
        for (id, disp) in due {
            let d = disp.and_then(|d| d.parse().ok()).unwrap_or(Disposition::Other);
            if let Err(e) = self.hub.close(id, None, d, None).await {
                tracing::debug!(interaction_id = %id, error = %e, "Wrap-up close skipped.");
            }
        }
        // Max wait exceeded: flag once and tell everyone (voice offers voicemail/callback).
        let over: Vec<(Uuid, Option<Uuid>, String)> = sqlx::query_as(
            "update interactions i set metadata = i.metadata || '{\"max_wait_exceeded\": true}'
             from queues q where q.id = i.queue_id and i.status = 'queued' and q.max_wait_secs is not null
               and i.enqueued_at + make_interval(secs => q.max_wait_secs) <= now()
               and not (i.metadata ? 'max_wait_exceeded')
             returning i.id, i.queue_id, i.channel",
        )
        .fetch_all(self.hub.db())
        .await?;
        for (id, q, ch) in over {
            self.hub
                .record_event(
                    crate::bus::NewEvent::interaction("max_wait_exceeded", id)
                        .with_queue(q)
                        .with_data(serde_json::json!({ "channel": ch })),
                )
                .await?;
        }
        Ok(())
    }

    /// Once a second: agents without any inbox connection for the grace period go
    /// offline; waiting chats whose visitor left long enough ago are abandoned; agents
    /// whose phone registration lapsed are reloaded (no longer eligible for voice).
    async fn housekeeping(&mut self) -> CoreResult<()> {
        let s = self.hub.settings().router.clone();
        if s.presence_grace_secs > 0 {
            self.hub.sweep_disconnected_agents(s.presence_grace_secs).await?;
        }
        if s.abandon_left_chat_secs > 0 {
            self.hub.abandon_left_chats(s.abandon_left_chat_secs).await?;
        }
        let now = chrono::Utc::now();
        let lapsed: Vec<Uuid> = sqlx::query_scalar(
            "select distinct a.id from agents a join voice_registrations r on r.sip_user = a.sip_user
              where r.expires_at > $1 and r.expires_at <= $2",
        )
        .bind(self.registrations_checked_until)
        .bind(now)
        .fetch_all(self.hub.db())
        .await?;
        self.registrations_checked_until = now;
        if !lapsed.is_empty() {
            store::load_agents(self.hub.db(), &mut self.engine, &lapsed).await?;
        }
        sqlx::query("delete from voice_registrations where expires_at < now() - interval '1 hour'").execute(self.hub.db()).await?;
        Ok(())
    }
}
