//! The HTTP API under `/api/v1`: JSON in and out, errors as problem+json, pagination,
//! role checks on every route. [`ROUTES`] is the single table the router, the OpenAPI
//! document and the route × role test all read.

mod agents;
mod extract;
mod interactions;
mod ops;
pub mod queues;
pub mod reports;
pub use queues as queues_api;
mod stream;
mod users;

pub use extract::{ApiJson, ApiPath, ApiQuery};

use crate::domain::Role;
use crate::hub::Hub;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use serde::{Deserialize, Serialize};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No authentication.
    Public,
    /// Any signed-in user.
    AnyUser,
    /// Any of these roles.
    Roles(&'static [Role]),
}

/// One documented route.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    /// HTTP method.
    pub method: &'static str,
    /// Path with `{param}` segments.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// One-line summary.
    pub summary: &'static str,
    /// OpenAPI tag.
    pub tag: &'static str,
}

use Role::*;
const STAFF: &[Role] = &[Admin, Supervisor, Agent];
const SUPERVISORS: &[Role] = &[Admin, Supervisor];
const ADMINS: &[Role] = &[Admin];

macro_rules! route {
    ($m:literal, $p:literal, $a:expr, $tag:literal, $s:literal) => {
        RouteDoc { method: $m, path: $p, access: $a, summary: $s, tag: $tag }
    };
}

/// Every core route.
pub const ROUTES: &[RouteDoc] = &[
    route!("GET", "/healthz", Access::Public, "ops", "Liveness: the process answers."),
    route!("GET", "/readyz", Access::Public, "ops", "Readiness: the database answers and migrations are applied."),
    route!("GET", "/metrics", Access::Public, "ops", "Prometheus metrics."),
    route!("GET", "/api/openapi.json", Access::Public, "ops", "This OpenAPI document."),
    route!(
        "POST",
        "/api/v1/auth/login",
        Access::Public,
        "auth",
        "Sign in with username and password; sets the session cookie and returns the CSRF token. After repeated failures the username or client address is locked for a growing time (429 with Retry-After)."
    ),
    route!("POST", "/api/v1/auth/logout", Access::AnyUser, "auth", "Sign out (ends the session)."),
    route!("GET", "/api/v1/auth/me", Access::AnyUser, "auth", "The caller: user, roles, agent record, CSRF token."),
    route!(
        "GET",
        "/api/v1/agents",
        Access::Roles(STAFF),
        "agents",
        "List agents with presence and load (archived ones too with ?include_archived=true)."
    ),
    route!("POST", "/api/v1/agents", Access::Roles(ADMINS), "agents", "Create an agent."),
    route!("GET", "/api/v1/agents/{id}", Access::Roles(STAFF), "agents", "Get an agent."),
    route!("PATCH", "/api/v1/agents/{id}", Access::Roles(SUPERVISORS), "agents", "Update skills, capacity, groups, SIP user or name."),
    route!(
        "DELETE",
        "/api/v1/agents/{id}",
        Access::Roles(ADMINS),
        "agents",
        "Archive an agent: it leaves lists and routing, its history (offers, interactions) stays."
    ),
    route!(
        "PUT",
        "/api/v1/agents/{id}/presence",
        Access::Roles(STAFF),
        "agents",
        "Set presence (agents: their own; supervisors: anyone's)."
    ),
    route!("GET", "/api/v1/agents/{id}/offers", Access::Roles(STAFF), "agents", "Pending offers of an agent."),
    route!("GET", "/api/v1/skills", Access::Roles(STAFF), "agents", "Skills in use, with how many agents hold each."),
    route!(
        "GET",
        "/api/v1/queues",
        Access::Roles(STAFF),
        "queues",
        "List queues (archived ones too with ?include_archived=true)."
    ),
    route!("POST", "/api/v1/queues", Access::Roles(ADMINS), "queues", "Create a queue."),
    route!(
        "GET",
        "/api/v1/queues/stats",
        Access::Roles(STAFF),
        "queues",
        "Live queue figures: waiting (queued or offered, not yet answered), offered, oldest wait, in service (active or wrap-up), agents available, SLA today."
    ),
    route!("GET", "/api/v1/queues/{id}", Access::Roles(STAFF), "queues", "Get a queue."),
    route!("PATCH", "/api/v1/queues/{id}", Access::Roles(SUPERVISORS), "queues", "Update a queue."),
    route!(
        "GET",
        "/api/v1/queues/{id}/report-settings",
        Access::Roles(SUPERVISORS),
        "queues",
        "A queue's report settings: short_abandon_secs (default 5) and sl_formula (default answered_vs_answered_and_long_abandoned)."
    ),
    route!(
        "PUT",
        "/api/v1/queues/{id}/report-settings",
        Access::Roles(SUPERVISORS),
        "queues",
        "Set a queue's report settings (either field); they apply to contacts rolled up from now on and to the wallboard at once."
    ),
    route!(
        "DELETE",
        "/api/v1/queues/{id}",
        Access::Roles(ADMINS),
        "queues",
        "Archive a queue (only without open interactions); past interactions keep it."
    ),
    route!(
        "GET",
        "/api/v1/interactions",
        Access::Roles(STAFF),
        "interactions",
        "List interactions (agents: their own) with filters and pagination."
    ),
    route!("GET", "/api/v1/interactions/{id}", Access::Roles(STAFF), "interactions", "Get an interaction."),
    route!(
        "GET",
        "/api/v1/interactions/{id}/messages",
        Access::Roles(STAFF),
        "interactions",
        "Messages and notes of an interaction, in order; `?after={message_id}`: only the ones after that message."
    ),
    route!(
        "POST",
        "/api/v1/interactions/{id}/messages",
        Access::Roles(STAFF),
        "interactions",
        "Reply to the customer (through the outbox)."
    ),
    route!("POST", "/api/v1/interactions/{id}/notes", Access::Roles(STAFF), "interactions", "Add an internal note."),
    route!("GET", "/api/v1/interactions/{id}/events", Access::Roles(STAFF), "interactions", "The interaction's event history."),
    route!("POST", "/api/v1/interactions/{id}/transfer", Access::Roles(STAFF), "interactions", "Transfer to an agent or a queue."),
    route!("POST", "/api/v1/interactions/{id}/wrap-up", Access::Roles(STAFF), "interactions", "End the conversation and start wrap-up."),
    route!("POST", "/api/v1/interactions/{id}/close", Access::Roles(STAFF), "interactions", "Close with a disposition."),
    route!(
        "POST",
        "/api/v1/interactions/{id}/abandon",
        Access::Roles(SUPERVISORS),
        "interactions",
        "Close a waiting interaction whose customer left as abandoned."
    ),
    route!("POST", "/api/v1/offers/{id}/accept", Access::Roles(STAFF), "interactions", "Accept an offer."),
    route!(
        "POST",
        "/api/v1/offers/{id}/decline",
        Access::Roles(STAFF),
        "interactions",
        "Decline an offer (re-queued with its original time)."
    ),
    route!("GET", "/api/v1/canned-responses", Access::Roles(STAFF), "interactions", "Canned responses."),
    route!("POST", "/api/v1/canned-responses", Access::Roles(SUPERVISORS), "interactions", "Add a canned response."),
    route!("GET", "/api/v1/users", Access::Roles(ADMINS), "users", "List users."),
    route!("POST", "/api/v1/users", Access::Roles(ADMINS), "users", "Create a user."),
    route!("PATCH", "/api/v1/users/{id}", Access::Roles(ADMINS), "users", "Change roles, display name, password or disable."),
    route!("GET", "/api/v1/tokens", Access::AnyUser, "users", "The caller's API tokens."),
    route!("POST", "/api/v1/tokens", Access::AnyUser, "users", "Create an API token for the caller (shown once)."),
    route!("DELETE", "/api/v1/tokens/{id}", Access::AnyUser, "users", "Revoke one of the caller's tokens (admins: anyone's)."),
    route!("GET", "/api/v1/audit", Access::Roles(ADMINS), "users", "The audit log."),
    route!("GET", "/api/v1/stream", Access::AnyUser, "events", "WebSocket event stream filtered by role and assignments."),
];

/// Pagination parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Items per page (1..=200, default 50).
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

/// A page of items.
#[derive(Debug, Serialize)]
pub struct Paged<T> {
    /// Items.
    pub items: Vec<T>,
    /// Offset of the next page, if there may be one.
    pub next_offset: Option<i64>,
}

/// Deserializes a field that may be absent (None), null (Some(None)) or set.
/// A WebSocket endpoint asked without the upgrade handshake: a problem answer naming what
/// is missing (axum's own rejection is plain text).
pub(crate) fn not_a_websocket(e: axum::extract::ws::rejection::WebSocketUpgradeRejection) -> crate::error::CoreError {
    crate::error::CoreError::Invalid(format!("this is a WebSocket endpoint; open it with a WebSocket handshake ({e})"))
}

pub fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Clamps pagination input.
pub fn page_bounds(limit: Option<i64>, offset: Option<i64>) -> crate::error::CoreResult<(i64, i64)> {
    let limit = limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(crate::error::CoreError::field("limit", "must be between 1 and 200"));
    }
    let offset = offset.unwrap_or(0);
    if offset < 0 {
        return Err(crate::error::CoreError::field("offset", "must not be negative"));
    }
    Ok((limit, offset))
}

/// Builds a page from `limit + 1` fetched rows.
pub fn paged<T>(mut rows: Vec<T>, limit: i64, offset: i64) -> Paged<T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Paged { items: rows, next_offset: more.then_some(offset + limit) }
}

/// The core API router (state: [`Hub`]). Modules merge their own routers beside it.
pub fn router(hub: &Hub) -> Router<Hub> {
    Router::new()
        .merge(ops::router())
        .merge(users::router())
        .merge(agents::router())
        .merge(queues::router())
        .merge(interactions::router())
        .merge(stream::router())
        .layer(DefaultBodyLimit::max(hub.settings().http.max_body_bytes))
}

/// The OpenAPI 3.1 document for a set of route tables (core's and the modules').
pub fn openapi(tables: &[&[RouteDoc]]) -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    for r in tables.iter().flat_map(|t| t.iter()) {
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| serde_json::json!({}));
        let params: Vec<serde_json::Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| serde_json::json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let (security, roles) = match r.access {
            Access::Public => (serde_json::json!([]), serde_json::json!([])),
            Access::AnyUser => (serde_json::json!([{ "session": [] }, { "bearer": [] }]), serde_json::json!(["any"])),
            Access::Roles(rs) => (
                serde_json::json!([{ "session": [] }, { "bearer": [] }]),
                serde_json::json!(rs.iter().map(|r| r.as_str()).collect::<Vec<_>>()),
            ),
        };
        let mut op = serde_json::json!({
            "summary": r.summary,
            "tags": [r.tag],
            "parameters": params,
            "security": security,
            "x-roles": roles,
            "responses": {
                "200": { "description": "OK", "content": { "application/json": {} } },
                "4XX": { "description": "Problem", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } }
            }
        });
        if matches!(r.method, "POST" | "PUT" | "PATCH") {
            op["requestBody"] = serde_json::json!({ "content": { "application/json": { "schema": { "type": "object" } } } });
        }
        entry[r.method.to_lowercase()] = op;
    }
    serde_json::json!({
        "openapi": "3.1.0",
        "info": { "title": "Switchboard API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Omnichannel contact hub. Errors are application/problem+json with a stable `code`." },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "session": { "type": "apiKey", "in": "cookie", "name": crate::auth::SESSION_COOKIE,
                             "description": "Browser session; unsafe methods need the X-CSRF-Token header." },
                "bearer": { "type": "http", "scheme": "bearer" }
            },
            "schemas": { "Problem": { "type": "object", "required": ["type","title","status","detail","code"],
                "properties": { "type": {"type":"string"}, "title": {"type":"string"}, "status": {"type":"integer"},
                                "detail": {"type":"string"}, "code": {"type":"string"}, "field": {"type":"string"} } } }
        }
    })
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let mut p = pattern.split('/');
    let mut a = path.split('/');
    loop {
        match (p.next(), a.next()) {
            (None, None) => return true,
            (Some(ps), Some(seg)) if ps.starts_with('{') && ps.ends_with('}') && !seg.is_empty() => {}
            (Some(ps), Some(seg)) if ps == seg => {}
            _ => return false,
        }
    }
}

/// Finds the documented route for a request.
pub fn find_route<'a>(tables: &[&'a [RouteDoc]], method: &str, path: &str) -> Option<&'a RouteDoc> {
    let path = path.trim_end_matches('/');
    let path = if path.is_empty() { "/" } else { path };
    tables.iter().flat_map(|t| t.iter()).find(|r| r.method.eq_ignore_ascii_case(method) && path_matches(r.path, path))
}

/// Authorization middleware for the whole app: every request under `/api/` must match a
/// documented route, and its [`Access`] is enforced *before* the handler parses anything,
/// so an unauthorized caller gets 401/403 whatever the body. Undocumented API routes are
/// refused (deny by default). Handlers still apply per-resource rules (an agent's own
/// interactions).
pub async fn authorize(
    axum::extract::State(hub): axum::extract::State<Hub>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path().to_string();
    if !path.starts_with("/api/") {
        return next.run(req).await;
    }
    let mut tables: Vec<&'static [RouteDoc]> = vec![ROUTES];
    tables.extend(hub.route_docs());
    let method = if req.method() == axum::http::Method::HEAD { "GET".to_string() } else { req.method().as_str().to_string() };
    let Some(route) = find_route(&tables, &method, &path) else {
        // Unknown path or method: let the router answer 404/405 for known prefixes,
        // but never run an undocumented handler for a caller we didn't check.
        tracing::debug!(%method, %path, "No documented API route (routes must be in a RouteDoc table registered with Hub::add_route_docs).");
        let (parts, _body) = req.into_parts();
        if crate::auth::caller_from_parts(&hub, &parts).await.is_err() {
            return crate::error::CoreError::Unauthenticated.into_response();
        }
        return crate::error::CoreError::NotFound("route").into_response();
    };
    if route.access == Access::Public {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let caller = match crate::auth::caller_from_parts(&hub, &parts).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Access::Roles(roles) = route.access {
        if !caller.has_any(roles) {
            return crate::error::CoreError::Forbidden.into_response();
        }
    }
    parts.extensions.insert(caller);
    next.run(axum::extract::Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn matches_patterns() {
        assert!(path_matches("/api/v1/agents/{id}", "/api/v1/agents/123"));
        assert!(!path_matches("/api/v1/agents/{id}", "/api/v1/agents/123/offers"));
        assert!(!path_matches("/api/v1/agents/{id}", "/api/v1/agents/"));
        let r = find_route(&[ROUTES], "GET", "/api/v1/queues/stats").unwrap();
        assert_eq!(r.summary, ROUTES.iter().find(|r| r.path == "/api/v1/queues/stats").unwrap().summary);
        assert!(find_route(&[ROUTES], "PATCH", "/api/v1/queues/abc").is_some());
        assert!(find_route(&[ROUTES], "PUT", "/api/v1/queues/abc").is_none());
    }
}
