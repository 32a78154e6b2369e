//! Sign-in, users, API tokens and the audit log.

use super::{page_bounds, paged, ApiJson, ApiPath, ApiQuery, Page, Paged};
use crate::auth::{self, Caller, ClientAddr, User, USER_COLUMNS};
use crate::domain::Role;
use crate::error::{CoreError, CoreResult};
use crate::hub::Hub;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

pub(super) fn router() -> Router<Hub> {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{id}", patch(update_user))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/audit", get(audit_log))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

#[tracing::instrument(skip(hub, body), fields(username = %body.username))]
async fn login(State(hub): State<Hub>, ClientAddr(ip): ClientAddr, ApiJson(body): ApiJson<Login>) -> CoreResult<Response> {
    let user = auth::sign_in(hub.db(), &hub.settings().auth, &body.username, &body.password, ip).await?;
    let s = auth::create_session(hub.db(), user.id, hub.settings().auth.session_ttl_hours).await?;
    let secure = if hub.settings().auth.cookie_secure { "; Secure" } else { "" };
    let cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        auth::SESSION_COOKIE,
        s.secret,
        hub.settings().auth.session_ttl_hours as i64 * 3600
    );
    let agent_id: Option<Uuid> =
        sqlx::query_scalar("select id from agents where user_id = $1").bind(user.id).fetch_optional(hub.db()).await?;
    let mut resp =
        Json(serde_json::json!({ "user": user, "agent_id": agent_id, "csrf_token": s.csrf, "expires_at": s.expires_at })).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(|e| CoreError::Internal(e.to_string()))?);
    Ok(resp)
}

async fn logout(State(hub): State<Hub>, caller: Caller, ClientAddr(ip): ClientAddr) -> CoreResult<Response> {
    let mut tx = hub.db().begin().await?;
    if let Some(sid) = &caller.session_id {
        sqlx::query("delete from sessions where id = $1").bind(sid).execute(&mut *tx).await?;
    }
    auth::audit(
        &mut tx,
        Some(caller.user_id),
        "auth.logout",
        "user",
        &caller.user_id.to_string(),
        serde_json::json!({ "username": caller.username, "ip": ip.map(|i| i.to_string()), "via": caller.via }),
    )
    .await?;
    tx.commit().await?;
    let mut resp = Json(serde_json::json!({ "signed_out": true })).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static("sb_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"));
    Ok(resp)
}

async fn me(State(hub): State<Hub>, caller: Caller, _h: HeaderMap) -> CoreResult<Json<serde_json::Value>> {
    let csrf: Option<String> = match &caller.session_id {
        Some(sid) => sqlx::query_scalar("select csrf_token from sessions where id = $1").bind(sid).fetch_optional(hub.db()).await?,
        None => None,
    };
    let display: Option<String> =
        sqlx::query_scalar("select display_name from users where id = $1").bind(caller.user_id).fetch_optional(hub.db()).await?;
    Ok(Json(serde_json::json!({
        "user_id": caller.user_id, "username": caller.username, "display_name": display,
        "roles": caller.roles, "agent_id": caller.agent_id, "via": caller.via, "csrf_token": csrf
    })))
}

async fn list_users(State(hub): State<Hub>, caller: Caller, ApiQuery(p): ApiQuery<Page>) -> CoreResult<Json<Paged<User>>> {
    caller.require(&[Role::Admin])?;
    let (limit, offset) = page_bounds(p.limit, p.offset)?;
    let rows: Vec<User> = sqlx::query_as(&format!("select {USER_COLUMNS} from users order by username limit $1 offset $2"))
        .bind(limit + 1)
        .bind(offset)
        .fetch_all(hub.db())
        .await?;
    Ok(Json(paged(rows, limit, offset)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    #[serde(default)]
    display_name: Option<String>,
    roles: Vec<Role>,
}

async fn create_user(
    State(hub): State<Hub>,
    caller: Caller,
    ApiJson(body): ApiJson<NewUser>,
) -> CoreResult<(axum::http::StatusCode, Json<User>)> {
    caller.require(&[Role::Admin])?;
    let u = auth::create_user(
        hub.db(),
        Some(caller.user_id),
        &body.username,
        body.display_name.as_deref().unwrap_or(&body.username),
        &body.password,
        &body.roles,
    )
    .await?;
    Ok((axum::http::StatusCode::CREATED, Json(u)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    display_name: Option<String>,
    roles: Option<Vec<Role>>,
    password: Option<String>,
    disabled: Option<bool>,
}

async fn update_user(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UserPatch>,
) -> CoreResult<Json<User>> {
    caller.require(&[Role::Admin])?;
    let hash = match &body.password {
        Some(p) => {
            auth::check_password(p)?;
            Some(auth::hash_password(p.clone()).await?)
        }
        None => None,
    };
    let roles: Option<Vec<String>> = body.roles.as_ref().map(|rs| rs.iter().map(|r| r.as_str().to_string()).collect());
    let mut tx = hub.db().begin().await?;
    let u: User = sqlx::query_as(&format!(
        "update users set display_name = coalesce($2, display_name), roles = coalesce($3, roles),
            password_hash = coalesce($4, password_hash), disabled = coalesce($5, disabled) where id = $1 returning {USER_COLUMNS}"
    ))
    .bind(id)
    .bind(&body.display_name)
    .bind(&roles)
    .bind(&hash)
    .bind(body.disabled)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(CoreError::NotFound("user"))?;
    if body.disabled == Some(true) || hash.is_some() {
        sqlx::query("delete from sessions where user_id = $1").bind(id).execute(&mut *tx).await?;
    }
    auth::audit(
        &mut tx,
        Some(caller.user_id),
        "user.update",
        "user",
        &id.to_string(),
        serde_json::json!({ "roles": roles, "disabled": body.disabled, "password_changed": hash.is_some() }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(u))
}

#[derive(serde::Serialize, sqlx::FromRow)]
struct TokenInfo {
    id: Uuid,
    name: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked: bool,
}

async fn list_tokens(State(hub): State<Hub>, caller: Caller) -> CoreResult<Json<Vec<TokenInfo>>> {
    let rows = sqlx::query_as(
        "select id, name, created_at, expires_at, last_used_at, revoked from api_tokens where user_id = $1 order by created_at desc",
    )
    .bind(caller.user_id)
    .fetch_all(hub.db())
    .await?;
    Ok(Json(rows))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    expires_at: Option<DateTime<Utc>>,
}

async fn create_token(
    State(hub): State<Hub>,
    caller: Caller,
    ApiJson(body): ApiJson<NewToken>,
) -> CoreResult<(axum::http::StatusCode, Json<serde_json::Value>)> {
    if body.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(CoreError::field("expires_at", "must be in the future"));
    }
    let (id, secret) = auth::create_token(hub.db(), caller.user_id, &body.name, body.expires_at).await?;
    let mut conn = hub.db().acquire().await?;
    auth::audit(&mut conn, Some(caller.user_id), "token.create", "api_token", &id.to_string(), serde_json::json!({ "name": body.name }))
        .await?;
    Ok((axum::http::StatusCode::CREATED, Json(serde_json::json!({ "id": id, "name": body.name, "token": secret }))))
}

async fn revoke_token(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<serde_json::Value>> {
    let admin = caller.has_any(&[Role::Admin]);
    let n = sqlx::query("update api_tokens set revoked = true where id = $1 and (user_id = $2 or $3)")
        .bind(id)
        .bind(caller.user_id)
        .bind(admin)
        .execute(hub.db())
        .await?
        .rows_affected();
    if n == 0 {
        return Err(CoreError::NotFound("token"));
    }
    let mut conn = hub.db().acquire().await?;
    auth::audit(&mut conn, Some(caller.user_id), "token.revoke", "api_token", &id.to_string(), serde_json::json!({})).await?;
    Ok(Json(serde_json::json!({ "revoked": true })))
}

#[derive(serde::Serialize, sqlx::FromRow)]
struct AuditEntry {
    id: i64,
    at: DateTime<Utc>,
    actor_user_id: Option<Uuid>,
    action: String,
    target_kind: String,
    target_id: String,
    details: serde_json::Value,
}

async fn audit_log(State(hub): State<Hub>, caller: Caller, ApiQuery(p): ApiQuery<Page>) -> CoreResult<Json<Paged<AuditEntry>>> {
    caller.require(&[Role::Admin])?;
    let (limit, offset) = page_bounds(p.limit, p.offset)?;
    let rows = sqlx::query_as(
        "select id, at, actor_user_id, action, target_kind, target_id, details from audit_log order by id desc limit $1 offset $2",
    )
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(hub.db())
    .await?;
    Ok(Json(paged(rows, limit, offset)))
}
