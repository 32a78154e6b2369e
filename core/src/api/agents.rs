//! Agents: skills with levels, per-channel capacity, overflow groups, SIP user, presence.

use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::{self, Caller};
use crate::bus::{self, NewEvent};
use crate::domain::{Capacity, Presence, Role};
use crate::error::{CoreError, CoreResult};
use crate::hub::Hub;
use crate::skills::{validate_skills, SkillSet};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub(super) fn router() -> Router<Hub> {
    Router::new()
        .route("/api/v1/agents", get(list).post(create))
        .route("/api/v1/agents/{id}", get(get_one).patch(update).delete(remove))
        .route("/api/v1/agents/{id}/presence", put(presence))
        .route("/api/v1/agents/{id}/offers", get(offers))
        .route("/api/v1/skills", get(skills))
}

/// An agent as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct AgentView {
    id: Uuid,
    user_id: Option<Uuid>,
    name: String,
    skills: sqlx::types::Json<SkillSet>,
    capacity: sqlx::types::Json<Capacity>,
    groups: Vec<String>,
    sip_user: Option<String>,
    presence: String,
    presence_since: DateTime<Utc>,
    load: sqlx::types::Json<serde_json::Value>,
    /// Set when the agent was deleted: archived agents keep their history but are never
    /// routed to again.
    archived_at: Option<DateTime<Utc>>,
    /// Whether the agent's phone is registered now (voice is offered only then).
    voice_reachable: bool,
    /// Open inbox connections (event streams) on any node; presence follows them.
    connections: i64,
}

const AGENT_SELECT: &str = "select a.id, a.user_id, a.name, a.skills, a.capacity, a.groups, a.sip_user, a.presence, a.presence_since, a.archived_at,
    exists(select 1 from voice_registrations r where r.sip_user = a.sip_user and r.expires_at > now()) as voice_reachable,
    (select count(*) from agent_connections c where c.agent_id = a.id) as connections,
    coalesce((select jsonb_object_agg(channel, n) from (select channel, count(*) n from offers o where o.agent_id = a.id and o.state in ('pending','accepted') group by channel) x), '{}') as load
    from agents a";

/// `GET /api/v1/agents` filter: archived agents are listed only on request.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    include_archived: bool,
}

async fn list(State(hub): State<Hub>, caller: Caller, ApiQuery(f): ApiQuery<ListQuery>) -> CoreResult<Json<Vec<AgentView>>> {
    caller.require(&[Role::Admin, Role::Supervisor, Role::Agent])?;
    Ok(Json(
        sqlx::query_as(&format!("{AGENT_SELECT} where $1 or a.archived_at is null order by a.archived_at is not null, a.name limit 5000"))
            .bind(f.include_archived)
            .fetch_all(hub.db())
            .await?,
    ))
}

/// Refuses changes to an archived agent (409) or a missing one (404).
async fn require_live(conn: &mut sqlx::PgConnection, id: Uuid) -> CoreResult<()> {
    let archived: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("select archived_at from agents where id = $1 for update").bind(id).fetch_optional(conn).await?;
    match archived {
        None => Err(CoreError::NotFound("agent")),
        Some(Some(_)) => Err(CoreError::Conflict("agent is archived".into())),
        Some(None) => Ok(()),
    }
}

async fn get_one(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<AgentView>> {
    caller.require(&[Role::Admin, Role::Supervisor, Role::Agent])?;
    let a = sqlx::query_as(&format!("{AGENT_SELECT} where a.id = $1"))
        .bind(id)
        .fetch_optional(hub.db())
        .await?
        .ok_or(CoreError::NotFound("agent"))?;
    Ok(Json(a))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAgent {
    name: String,
    user_id: Option<Uuid>,
    #[serde(default)]
    skills: SkillSet,
    #[serde(default)]
    capacity: Option<Capacity>,
    #[serde(default)]
    groups: Vec<String>,
    sip_user: Option<String>,
}

fn check_common(
    name: Option<&str>,
    skills: Option<&SkillSet>,
    groups: Option<&[String]>,
    sip: Option<&str>,
    cap: Option<&Capacity>,
) -> CoreResult<()> {
    if let Some(n) = name {
        if n.trim().is_empty() || n.len() > 200 {
            return Err(CoreError::field("name", "1-200 characters"));
        }
    }
    if let Some(s) = skills {
        validate_skills(s).map_err(|e| CoreError::field("skills", e))?;
    }
    if let Some(g) = groups {
        if g.iter().any(|g| g.is_empty() || g.len() > 64) {
            return Err(CoreError::field("groups", "group names are 1-64 characters"));
        }
    }
    if let Some(s) = sip {
        if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c)) {
            return Err(CoreError::field("sip_user", "1-64 characters: letters, digits, . _ - +"));
        }
    }
    if let Some(c) = cap {
        if [c.voice, c.sms, c.email, c.chat].iter().any(|v| *v > 100) {
            return Err(CoreError::field("capacity", "each channel's capacity must be 0..=100"));
        }
    }
    Ok(())
}

async fn create(State(hub): State<Hub>, caller: Caller, ApiJson(b): ApiJson<NewAgent>) -> CoreResult<(StatusCode, Json<AgentView>)> {
    caller.require(&[Role::Admin])?;
    check_common(Some(&b.name), Some(&b.skills), Some(&b.groups), b.sip_user.as_deref(), b.capacity.as_ref())?;
    let mut tx = hub.db().begin().await?;
    let id: Uuid = sqlx::query_scalar(
        "insert into agents (name, user_id, skills, capacity, groups, sip_user) values ($1, $2, $3, $4, $5, $6) returning id",
    )
    .bind(&b.name)
    .bind(b.user_id)
    .bind(sqlx::types::Json(&b.skills))
    .bind(sqlx::types::Json(b.capacity.unwrap_or_default()))
    .bind(&b.groups)
    .bind(&b.sip_user)
    .fetch_one(&mut *tx)
    .await?;
    auth::audit(&mut tx, Some(caller.user_id), "agent.create", "agent", &id.to_string(), serde_json::json!({ "name": b.name })).await?;
    bus::record(&mut tx, NewEvent::agent("agent_updated", id)).await?;
    tx.commit().await?;
    let a = sqlx::query_as(&format!("{AGENT_SELECT} where a.id = $1")).bind(id).fetch_one(hub.db()).await?;
    Ok((StatusCode::CREATED, Json(a)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentPatch {
    name: Option<String>,
    skills: Option<SkillSet>,
    capacity: Option<Capacity>,
    groups: Option<Vec<String>>,
    sip_user: Option<String>,
    user_id: Option<Uuid>,
}

async fn update(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<AgentPatch>,
) -> CoreResult<Json<AgentView>> {
    caller.require(&[Role::Admin, Role::Supervisor])?;
    check_common(b.name.as_deref(), b.skills.as_ref(), b.groups.as_deref(), b.sip_user.as_deref(), b.capacity.as_ref())?;
    let mut tx = hub.db().begin().await?;
    require_live(&mut tx, id).await?;
    let n = sqlx::query(
        "update agents set name = coalesce($2, name), skills = coalesce($3, skills), capacity = coalesce($4, capacity),
           groups = coalesce($5, groups), sip_user = coalesce($6, sip_user), user_id = coalesce($7, user_id) where id = $1",
    )
    .bind(id)
    .bind(&b.name)
    .bind(b.skills.as_ref().map(sqlx::types::Json))
    .bind(b.capacity.map(sqlx::types::Json))
    .bind(&b.groups)
    .bind(&b.sip_user)
    .bind(b.user_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(CoreError::NotFound("agent"));
    }
    auth::audit(
        &mut tx,
        Some(caller.user_id),
        "agent.update",
        "agent",
        &id.to_string(),
        serde_json::json!({ "skills": b.skills, "capacity": b.capacity, "groups": b.groups }),
    )
    .await?;
    bus::record(&mut tx, NewEvent::agent("agent_updated", id)).await?;
    tx.commit().await?;
    get_one(State(hub), caller, ApiPath(id)).await
}

async fn remove(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let mut tx = hub.db().begin().await?;
    // Locks the row: the router's capacity trigger takes the same lock before an offer.
    require_live(&mut tx, id).await?;
    let held: i64 = sqlx::query_scalar("select count(*) from offers where agent_id = $1 and state in ('pending','accepted')")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if held > 0 {
        return Err(CoreError::Conflict("agent holds open interactions; transfer them first".into()));
    }
    // Archive, never delete: offers, interactions and messages keep pointing at the agent
    // for reports. The user link and SIP user are released so they can be reused.
    let archived: Option<(Option<Uuid>, Option<String>, String)> = sqlx::query_as(
        "update agents a set archived_at = now(), presence = 'offline', presence_since = now(), user_id = null, sip_user = null
         from agents old where a.id = $1 and old.id = a.id and a.archived_at is null
         returning old.user_id, old.sip_user, old.presence",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user_id, sip_user, presence)) = archived else {
        return Err(CoreError::NotFound("agent"));
    };
    auth::audit(
        &mut tx,
        Some(caller.user_id),
        "agent.archive",
        "agent",
        &id.to_string(),
        serde_json::json!({ "user_id": user_id, "sip_user": sip_user, "presence_before": presence }),
    )
    .await?;
    bus::record(&mut tx, NewEvent::agent("agent_deleted", id)).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceBody {
    presence: Presence,
}

async fn presence(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<PresenceBody>,
) -> CoreResult<Json<serde_json::Value>> {
    caller.require(&[Role::Admin, Role::Supervisor, Role::Agent])?;
    if !caller.is_supervisor() && caller.agent_id != Some(id) {
        return Err(CoreError::Forbidden);
    }
    let before: Option<(String, Option<DateTime<Utc>>)> =
        sqlx::query_as("select presence, archived_at from agents where id = $1").bind(id).fetch_optional(hub.db()).await?;
    match before {
        None => return Err(CoreError::NotFound("agent")),
        Some((_, Some(_))) => return Err(CoreError::Conflict("agent is archived".into())),
        Some(_) => {}
    }
    hub.set_presence(id, b.presence).await?;
    let from = before.map(|(p, _)| p);
    let mut conn = hub.db().acquire().await?;
    auth::audit(
        &mut conn,
        Some(caller.user_id),
        "agent.presence",
        "agent",
        &id.to_string(),
        serde_json::json!({ "from": from, "to": b.presence, "by": caller.username }),
    )
    .await?;
    Ok(Json(serde_json::json!({ "agent_id": id, "presence": b.presence })))
}

async fn offers(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<Vec<crate::interactions::Offer>>> {
    caller.require(&[Role::Admin, Role::Supervisor, Role::Agent])?;
    if !caller.is_supervisor() && caller.agent_id != Some(id) {
        return Err(CoreError::Forbidden);
    }
    Ok(Json(hub.pending_offers(id).await?))
}

async fn skills(State(hub): State<Hub>, caller: Caller) -> CoreResult<Json<Vec<serde_json::Value>>> {
    caller.require(&[Role::Admin, Role::Supervisor, Role::Agent])?;
    let rows: Vec<(String, i64, i32)> = sqlx::query_as(
        "select key, count(*), max(value::int) from agents, jsonb_each_text(skills) where archived_at is null group by key order by key",
    )
    .fetch_all(hub.db())
    .await?;
    Ok(Json(rows.into_iter().map(|(k, n, m)| serde_json::json!({ "skill": k, "agents": n, "max_level": m })).collect()))
}
