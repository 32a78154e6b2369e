//! Interactions: list with filters and pagination, detail, messages, notes, events,
//! transfer, wrap-up, close; offers: accept and decline; canned responses.

use super::{page_bounds, paged, ApiJson, ApiPath, ApiQuery, Paged};
use crate::auth::Caller;
use crate::domain::{Channel, Disposition, InteractionStatus, Role};
use crate::error::{CoreError, CoreResult};
use crate::hub::Hub;
use crate::interactions::{Interaction, Message, OfferEnd, INTERACTION_COLUMNS};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

pub(super) fn router() -> Router<Hub> {
    Router::new()
        .route("/api/v1/interactions", get(list))
        .route("/api/v1/interactions/{id}", get(get_one))
        .route("/api/v1/interactions/{id}/messages", get(messages).post(reply))
        .route("/api/v1/interactions/{id}/notes", post(note))
        .route("/api/v1/interactions/{id}/events", get(events))
        .route("/api/v1/interactions/{id}/transfer", post(transfer))
        .route("/api/v1/interactions/{id}/wrap-up", post(wrap_up))
        .route("/api/v1/interactions/{id}/close", post(close))
        .route("/api/v1/interactions/{id}/abandon", post(abandon))
        .route("/api/v1/offers/{id}/accept", post(accept))
        .route("/api/v1/offers/{id}/decline", post(decline))
        .route("/api/v1/canned-responses", get(canned).post(add_canned))
}

const STAFF: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    channel: Option<Channel>,
    queue_id: Option<Uuid>,
    agent_id: Option<Uuid>,
    customer_id: Option<Uuid>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    /// `true`: only waiting interactions whose customer left; `false`: the others.
    visitor_left: Option<bool>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list(State(hub): State<Hub>, caller: Caller, ApiQuery(q): ApiQuery<ListQuery>) -> CoreResult<Json<Paged<Interaction>>> {
    caller.require(STAFF)?;
    let (limit, offset) = page_bounds(q.limit, q.offset)?;
    let statuses: Option<Vec<String>> = match &q.status {
        Some(s) => {
            let mut v = Vec::new();
            for part in s.split(',') {
                let st: InteractionStatus = part.trim().parse().map_err(|e: String| CoreError::field("status", e))?;
                v.push(st.as_str().to_string());
            }
            Some(v)
        }
        None => None,
    };
    // Agents see the interactions they hold or held; supervisors see everything.
    let agent_filter = if caller.is_supervisor() { q.agent_id } else { Some(caller.agent_id.ok_or(CoreError::Forbidden)?) };
    let rows: Vec<Interaction> = sqlx::query_as(&format!(
        "select {INTERACTION_COLUMNS} from interactions
         where ($1::text[] is null or status = any($1)) and ($2::text is null or channel = $2)
           and ($3::uuid is null or queue_id = $3) and ($4::uuid is null or agent_id = $4)
           and ($5::uuid is null or customer_id = $5) and ($6::timestamptz is null or created_at >= $6)
           and ($7::timestamptz is null or created_at < $7)
           and ($10::bool is null or (visitor_left_at is not null and status in ('queued','offered')) = $10)
         order by created_at desc, id limit $8 offset $9"
    ))
    .bind(&statuses)
    .bind(q.channel.map(|c| c.as_str()))
    .bind(q.queue_id)
    .bind(agent_filter)
    .bind(q.customer_id)
    .bind(q.since)
    .bind(q.until)
    .bind(limit + 1)
    .bind(offset)
    .bind(q.visitor_left)
    .fetch_all(hub.db())
    .await?;
    Ok(Json(paged(rows, limit, offset)))
}

/// Loads an interaction the caller may see: supervisors any; agents those they hold,
/// were offered, or of a customer they are the own manager of.
async fn visible(hub: &Hub, caller: &Caller, id: Uuid) -> CoreResult<Interaction> {
    caller.require(STAFF)?;
    let i = hub.interaction(id).await?;
    if caller.is_supervisor() {
        return Ok(i);
    }
    let me = caller.agent_id.ok_or(CoreError::NotFound("interaction"))?;
    if i.agent_id == Some(me) || i.preferred_agent_id == Some(me) {
        return Ok(i);
    }
    let offered: Option<i32> = sqlx::query_scalar("select 1 from offers where interaction_id = $1 and agent_id = $2 limit 1")
        .bind(id)
        .bind(me)
        .fetch_optional(hub.db())
        .await?;
    if offered.is_some() {
        return Ok(i);
    }
    Err(CoreError::NotFound("interaction"))
}

async fn get_one(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<Interaction>> {
    Ok(Json(visible(&hub, &caller, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessagesQuery {
    /// Only the messages after this one in transcript order (an inbox catching up
    /// without reloading the transcript).
    after: Option<Uuid>,
}

async fn messages(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> CoreResult<Json<Vec<Message>>> {
    visible(&hub, &caller, id).await?;
    let Some(after) = q.after else { return Ok(Json(hub.messages(id).await?)) };
    let anchor: Option<(DateTime<Utc>, Uuid)> = sqlx::query_as("select created_at, id from messages where id = $1 and interaction_id = $2")
        .bind(after)
        .bind(id)
        .fetch_optional(hub.db())
        .await?;
    let (at, mid) = anchor.ok_or_else(|| CoreError::field("after", "no such message in this interaction"))?;
    Ok(Json(
        sqlx::query_as(&format!(
            "select {} from messages where interaction_id = $1 and (created_at, id) > ($2, $3) order by created_at, id",
            crate::interactions::MESSAGE_COLUMNS
        ))
        .bind(id)
        .bind(at)
        .bind(mid)
        .fetch_all(hub.db())
        .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    body: String,
    idempotency_key: Option<String>,
}

async fn reply(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<Body>,
) -> CoreResult<(StatusCode, Json<Message>)> {
    visible(&hub, &caller, id).await?;
    let m = hub.reply(id, caller.acting_agent()?, &b.body, b.idempotency_key.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(m)))
}

async fn note(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<Body>,
) -> CoreResult<(StatusCode, Json<Message>)> {
    visible(&hub, &caller, id).await?;
    let m = hub.note(id, caller.agent_id, &b.body).await?;
    Ok((StatusCode::CREATED, Json(m)))
}

async fn events(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<Vec<crate::bus::HubEvent>>> {
    visible(&hub, &caller, id).await?;
    Ok(Json(
        sqlx::query_as("select id, interaction_id, agent_id, queue_id, kind, data, at from interaction_events where interaction_id = $1 order by id limit 5000")
            .bind(id)
            .fetch_all(hub.db())
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transfer {
    agent_id: Option<Uuid>,
    queue_id: Option<Uuid>,
}

async fn transfer(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<Transfer>,
) -> CoreResult<Json<Interaction>> {
    visible(&hub, &caller, id).await?;
    let by = caller.acting_agent()?;
    match (b.agent_id, b.queue_id) {
        (Some(a), None) => Ok(Json(hub.transfer_to_agent(id, by, a).await?)),
        (None, Some(q)) => Ok(Json(hub.transfer_to_queue(id, by, q).await?)),
        _ => Err(CoreError::Invalid("give exactly one of agent_id or queue_id".into())),
    }
}

async fn wrap_up(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<Interaction>> {
    visible(&hub, &caller, id).await?;
    Ok(Json(hub.wrap_up(id, caller.acting_agent()?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Close {
    disposition: Disposition,
    summary: Option<String>,
}

async fn close(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<Close>,
) -> CoreResult<Json<Interaction>> {
    visible(&hub, &caller, id).await?;
    if b.summary.as_ref().is_some_and(|s| s.len() > 10_000) {
        return Err(CoreError::field("summary", "longer than 10000 bytes"));
    }
    Ok(Json(hub.close(id, caller.acting_agent()?, b.disposition, b.summary).await?))
}

/// A supervisor closes a waiting interaction nobody will answer (its customer left) as
/// `abandoned`, which is what it is for reports.
async fn abandon(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<Interaction>> {
    caller.require(&[Role::Admin, Role::Supervisor])?;
    hub.abandon_with(id, Some("closed_by_supervisor")).await?;
    let mut conn = hub.db().acquire().await?;
    crate::auth::audit(&mut conn, Some(caller.user_id), "interaction.abandon", "interaction", &id.to_string(), serde_json::json!({}))
        .await?;
    Ok(Json(hub.interaction(id).await?))
}

async fn accept(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<Interaction>> {
    caller.require(STAFF)?;
    let me = caller.agent_id.ok_or_else(|| CoreError::Conflict("your user has no agent record".into()))?;
    Ok(Json(hub.accept_offer(id, me).await?))
}

async fn decline(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<serde_json::Value>> {
    caller.require(STAFF)?;
    let me = caller.agent_id.ok_or_else(|| CoreError::Conflict("your user has no agent record".into()))?;
    hub.end_offer(id, Some(me), OfferEnd::Declined).await?;
    Ok(Json(serde_json::json!({ "declined": true })))
}

async fn canned(State(hub): State<Hub>, caller: Caller) -> CoreResult<Json<Vec<serde_json::Value>>> {
    caller.require(STAFF)?;
    let rows: Vec<(Uuid, String, String)> =
        sqlx::query_as("select id, title, body from canned_responses order by title").fetch_all(hub.db()).await?;
    Ok(Json(rows.into_iter().map(|(id, t, b)| serde_json::json!({ "id": id, "title": t, "body": b })).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Canned {
    title: String,
    body: String,
}

async fn add_canned(
    State(hub): State<Hub>,
    caller: Caller,
    ApiJson(b): ApiJson<Canned>,
) -> CoreResult<(StatusCode, Json<serde_json::Value>)> {
    caller.require(&[Role::Admin, Role::Supervisor])?;
    if b.title.trim().is_empty() || b.title.len() > 200 || b.body.trim().is_empty() || b.body.len() > 10_000 {
        return Err(CoreError::Invalid("title 1-200 and body 1-10000 characters".into()));
    }
    let id: Uuid = sqlx::query_scalar("insert into canned_responses (title, body) values ($1, $2) returning id")
        .bind(&b.title)
        .bind(&b.body)
        .fetch_one(hub.db())
        .await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id, "title": b.title, "body": b.body }))))
}
