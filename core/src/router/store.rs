//! The router's database side: loading engine state and committing decisions.

use super::engine::{AgentRouting, Decision, Engine, WaitingInteraction};
use crate::bus::HubEvent;
use crate::domain::{Capacity, Channel};
use crate::error::{is_capacity_violation, CoreError, CoreResult};
use crate::hub::Hub;
use crate::skills::{SkillExpr, SkillSet};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct AgentRow {
    id: Uuid,
    skills: sqlx::types::Json<SkillSet>,
    capacity: sqlx::types::Json<Capacity>,
    groups: Vec<String>,
    presence: String,
    last_idle_at: DateTime<Utc>,
    voice_reachable: bool,
}

#[derive(sqlx::FromRow)]
struct WaitingRow {
    id: Uuid,
    queue_id: Option<Uuid>,
    channel: String,
    priority: i32,
    enqueued_at: DateTime<Utc>,
    requirement: String,
    preferred_agent_id: Option<Uuid>,
    status: String,
}

/// Loads queues, agents with their live load, and every waiting interaction.
pub async fn load_all(db: &PgPool, engine: &mut Engine) -> CoreResult<()> {
    load_queues(db, engine).await?;
    let ids: Vec<Uuid> = sqlx::query_scalar("select id from agents where archived_at is null").fetch_all(db).await?;
    load_agents(db, engine, &ids).await?;
    let rows: Vec<WaitingRow> = sqlx::query_as(
        "select id, queue_id, channel, priority, enqueued_at, requirement, preferred_agent_id, status from interactions where status = 'queued'",
    )
    .fetch_all(db)
    .await?;
    for r in rows {
        apply_interaction(engine, r);
    }
    load_refusals(db, engine, None).await
}

/// Loads recent refusals (declined offers, offers that rang out, phones that could not
/// ring) of some interactions, or of all when `ids` is `None`, so the engine does not
/// offer an interaction straight back to the agent who just refused it.
pub async fn load_refusals(db: &PgPool, engine: &mut Engine, ids: Option<&[Uuid]>) -> CoreResult<()> {
    let skip_secs = engine.refusal_skip_ms() as f64 / 1000.0;
    if skip_secs <= 0.0 {
        return Ok(());
    }
    let rows: Vec<(Uuid, Uuid, i64)> = sqlx::query_as(
        "select interaction_id, agent_id, (extract(epoch from ended_at + make_interval(secs => $1)) * 1000)::int8
           from offers
          where ended_at > now() - make_interval(secs => $1)
            and (state in ('declined','timeout') or end_reason = 'unreachable')
            and ($2::uuid[] is null or interaction_id = any($2))",
    )
    .bind(skip_secs)
    .bind(ids)
    .fetch_all(db)
    .await?;
    for (interaction, agent, until_ms) in rows {
        engine.note_refusal(interaction, agent, until_ms);
    }
    Ok(())
}

/// Reloads every queue.
pub async fn load_queues(db: &PgPool, engine: &mut Engine) -> CoreResult<()> {
    for q in crate::queues::list(db).await? {
        engine.upsert_queue(q.routing());
    }
    Ok(())
}

/// Reloads some agents and their live load (pending + accepted offers per channel).
pub async fn load_agents(db: &PgPool, engine: &mut Engine, ids: &[Uuid]) -> CoreResult<()> {
    let rows: Vec<AgentRow> = sqlx::query_as(
        "select a.id, a.skills, a.capacity, a.groups, a.presence, a.last_idle_at,
                exists(select 1 from voice_registrations r where r.sip_user = a.sip_user and r.expires_at > now()) as voice_reachable
           from agents a where a.id = any($1) and a.archived_at is null",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    let loads: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "select agent_id, channel, count(*) from offers where agent_id = any($1) and state in ('pending','accepted') group by 1, 2",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    let mut load: HashMap<Uuid, [u32; 4]> = HashMap::new();
    for (a, ch, n) in loads {
        if let Ok(ch) = ch.parse::<Channel>() {
            load.entry(a).or_default()[ch.index()] = n as u32;
        }
    }
    let found: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.id).collect();
    for id in ids {
        if !found.contains(id) {
            engine.remove_agent(*id);
        }
    }
    for r in rows {
        engine.upsert_agent(AgentRouting {
            id: r.id,
            skills: r.skills.0,
            groups: r.groups,
            capacity: r.capacity.0,
            available: r.presence == "available",
            voice_reachable: r.voice_reachable,
            load: load.get(&r.id).copied().unwrap_or_default(),
            idle_since_ms: r.last_idle_at.timestamp_millis(),
        });
    }
    Ok(())
}

/// Reloads some interactions: queued ones (re)enter the engine, others leave it.
pub async fn load_interactions(db: &PgPool, engine: &mut Engine, ids: &[Uuid]) -> CoreResult<()> {
    let rows: Vec<WaitingRow> = sqlx::query_as(
        "select id, queue_id, channel, priority, enqueued_at, requirement, preferred_agent_id, status from interactions where id = any($1)",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    for r in rows {
        apply_interaction(engine, r);
    }
    load_refusals(db, engine, Some(ids)).await
}

fn apply_interaction(engine: &mut Engine, r: WaitingRow) {
    if r.status != "queued" {
        engine.remove_waiting(r.id);
        return;
    }
    let (Some(queue_id), Ok(channel)) = (r.queue_id, r.channel.parse::<Channel>()) else {
        engine.remove_waiting(r.id);
        return;
    };
    if engine.is_waiting(r.id) {
        return; // already in place with its original key
    }
    engine.enqueue(WaitingInteraction {
        id: r.id,
        queue_id,
        channel,
        priority: r.priority,
        enqueued_at_ms: r.enqueued_at.timestamp_millis(),
        requirement: SkillExpr::parse(&r.requirement).unwrap_or(SkillExpr::Any),
        preferred_agent: r.preferred_agent_id,
    });
}

/// One statement commits a whole batch of single-agent offers: interactions move to
/// `offered`, offers are inserted (the capacity trigger checks each), events are appended
/// and NOTIFY'd. Nothing is visible before commit.
const COMMIT_BATCH: &str = r#"
with d as (
    select * from unnest($1::uuid[], $2::uuid[], $3::bool[]) as t(iid, aid, ring_all)
), upd as (
    update interactions i
       set status = 'offered', agent_id = case when d.ring_all then null else d.aid end,
           offered_at = now(), updated_at = now()
      from (select distinct on (iid) iid, aid, ring_all from d) d
     where i.id = d.iid and i.status = 'queued'
       -- Fencing: only while the router lease is still held with the leader's token.
       and ($4::bigint is null or exists (select 1 from leases l where l.name = 'router' and l.token = $4
                                             and l.expires_at > clock_timestamp()))
 returning i.id, i.queue_id, i.channel
), ins as (
    insert into offers (interaction_id, agent_id, channel, ring_all, expires_at)
    select upd.id, d.aid, upd.channel, d.ring_all,
           now() + make_interval(secs => coalesce((select q.accept_timeout_secs from queues q where q.id = upd.queue_id), 20))
      from upd join d on d.iid = upd.id
 returning id, interaction_id, agent_id, channel, ring_all, expires_at
), ev as (
    insert into interaction_events (interaction_id, agent_id, queue_id, kind, data)
    select ins.interaction_id, ins.agent_id, upd.queue_id, 'offered',
           jsonb_build_object('offer_id', ins.id, 'channel', ins.channel, 'ring_all', ins.ring_all,
                              'expires_at', ins.expires_at, 'router', true)
      from ins join upd on upd.id = ins.interaction_id
 returning id, interaction_id, agent_id, queue_id, kind, data, at
)
select id, interaction_id, agent_id, queue_id, kind, data, at,
       pg_notify('switchboard_events', row_to_json(ev)::text)::text as notified
  from ev
"#;

#[derive(sqlx::FromRow)]
struct CommittedEvent {
    #[sqlx(flatten)]
    ev: HubEvent,
    #[allow(dead_code)]
    notified: Option<String>,
}

async fn commit_rows(db: &PgPool, rows: &[(Uuid, Uuid, bool)], fence: Option<i64>) -> Result<Vec<HubEvent>, sqlx::Error> {
    let iids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let aids: Vec<Uuid> = rows.iter().map(|r| r.1).collect();
    let ring: Vec<bool> = rows.iter().map(|r| r.2).collect();
    let out: Vec<CommittedEvent> = sqlx::query_as(COMMIT_BATCH).bind(&iids).bind(&aids).bind(&ring).bind(fence).fetch_all(db).await?;
    Ok(out.into_iter().map(|c| c.ev).collect())
}

fn rows_of(d: &Decision) -> Vec<(Uuid, Uuid, bool)> {
    match d {
        Decision::Offer { interaction, agent, .. } => vec![(*interaction, *agent, false)],
        Decision::RingAll { interaction, agents, .. } => agents.iter().map(|a| (*interaction, *a, true)).collect(),
    }
}

/// Commits decisions: the whole batch in one statement; if the database refuses it (an
/// agent's capacity changed under us), each decision alone, dropping the refused ones.
/// The engine is corrected for anything not committed.
pub async fn commit(hub: &Hub, engine: &mut Engine, decisions: Vec<Decision>) -> CoreResult<usize> {
    commit_fenced(hub, engine, decisions, None).await
}

/// [`commit`] fenced by the router lease: with `Some(token)` nothing is committed unless
/// the `router` lease is still held with that token (a leader that was paused past its
/// lease and woke up commits nothing).
pub async fn commit_fenced(hub: &Hub, engine: &mut Engine, decisions: Vec<Decision>, fence: Option<i64>) -> CoreResult<usize> {
    let rows: Vec<(Uuid, Uuid, bool)> = decisions.iter().flat_map(rows_of).collect();
    let committed = match commit_rows(hub.db(), &rows, fence).await {
        Ok(evs) => evs,
        Err(e) if is_capacity_violation(&e) => {
            let mut all = Vec::new();
            for d in &decisions {
                match commit_rows(hub.db(), &rows_of(d), fence).await {
                    Ok(evs) => all.extend(evs),
                    Err(e) if is_capacity_violation(&e) => {
                        hub.metrics().router_conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(CoreError::Database(e)),
                }
            }
            all
        }
        Err(e) => return Err(CoreError::Database(e)),
    };
    let done: std::collections::HashSet<(Uuid, Option<Uuid>)> =
        committed.iter().map(|e| (e.interaction_id.unwrap_or_default(), e.agent_id)).collect();
    let mut stale_agents = Vec::new();
    let mut stale_interactions = Vec::new();
    for d in &decisions {
        for (iid, aid, _) in rows_of(d) {
            if !done.contains(&(iid, Some(aid))) {
                stale_agents.push(aid);
                stale_interactions.push(iid);
            }
        }
    }
    hub.metrics().router_assignments.fetch_add(done.len() as u64, Ordering::Relaxed);
    if !stale_agents.is_empty() {
        // Refused or raced (abandoned meanwhile): re-read the truth for those.
        hub.metrics().router_conflicts.fetch_add(stale_agents.len() as u64, Ordering::Relaxed);
        load_agents(hub.db(), engine, &stale_agents).await?;
        load_interactions(hub.db(), engine, &stale_interactions).await?;
    }
    Ok(committed.len())
}
