//! Walks every documented route × every role (and anonymous) and checks the answer: public
//! routes answer everyone, protected routes answer 401 without credentials, 403 to roles
//! not listed, and never 401/403 to roles listed. Also: problem+json on every error, and
//! the OpenAPI document lists every route.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::*;
use switchboard_core::api::{Access, RouteDoc, ROUTES};
use switchboard_core::Role;

/// Fills `{param}` segments; an agent's own id where the route is about an agent, so
/// per-resource rules ("agents act on themselves") don't mask the route-level check.
fn concrete(path: &str, own_agent: Option<uuid::Uuid>) -> String {
    let nil = "00000000-0000-4000-8000-000000000000".to_string();
    let own = own_agent.map(|a| a.to_string()).unwrap_or_else(|| nil.clone());
    let agent_route = path.starts_with("/api/v1/agents/{id}/");
    path.split('/')
        .map(|s| {
            if s.starts_with('{') {
                if agent_route {
                    own.clone()
                } else {
                    nil.clone()
                }
            } else {
                s.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn check_route(r: &RouteDoc, who: &str, c: &Client, roles: Option<&[Role]>) {
    if r.path == "/api/v1/auth/logout" {
        return; // would end the session; covered elsewhere
    }
    let body = matches!(r.method, "POST" | "PUT" | "PATCH").then(|| json!({}));
    let (st, b) = c.call(r.method, &concrete(r.path, c.agent_id), body).await;
    assert!(st != StatusCode::INTERNAL_SERVER_ERROR, "{} {} as {who}: 500 {b}", r.method, r.path);
    match (r.access, roles) {
        (Access::Public, _) => {
            assert!(st != StatusCode::UNAUTHORIZED && st != StatusCode::FORBIDDEN, "{} {} as {who}: {st}", r.method, r.path)
        }
        (_, None) => assert_eq!(st, StatusCode::UNAUTHORIZED, "{} {} anonymous", r.method, r.path),
        (Access::AnyUser, Some(_)) => {
            assert!(st != StatusCode::UNAUTHORIZED && st != StatusCode::FORBIDDEN, "{} {} as {who}: {st} {b}", r.method, r.path)
        }
        (Access::Roles(allowed), Some(mine)) => {
            if mine.iter().any(|m| allowed.contains(m)) {
                assert!(st != StatusCode::UNAUTHORIZED && st != StatusCode::FORBIDDEN, "{} {} as {who}: {st} {b}", r.method, r.path);
            } else {
                assert_eq!(st, StatusCode::FORBIDDEN, "{} {} as {who}: {b}", r.method, r.path);
            }
        }
    }
    if st.is_client_error() && st != StatusCode::NOT_FOUND || st == StatusCode::NOT_FOUND && r.path.starts_with("/api/") {
        assert!(b["code"].is_string() && b["detail"].is_string(), "{} {} as {who}: not problem+json: {b}", r.method, r.path);
    }
}

#[tokio::test]
async fn every_route_times_every_role() {
    let th = spawn_hub().await;
    let mut clients: Vec<(String, Client, Option<&'static [Role]>)> = vec![("anonymous".into(), Client::anonymous(&th.url), None)];
    const ROLES: [&[Role]; 5] = [&[Role::Admin], &[Role::Supervisor], &[Role::Agent], &[Role::Marketer], &[Role::KbEditor]];
    for roles in ROLES {
        let name = roles[0].as_str().replace('_', "");
        let skills = (roles[0] == Role::Agent).then(|| json!({ "x": 1 }));
        clients.push((name.clone(), user(&th, &name, roles, skills).await, Some(roles)));
    }
    // Bearer tokens are checked the same way as sessions.
    let (id, secret) = switchboard_core::auth::create_token(th.hub().db(), clients[3].1.user_id.unwrap(), "t", None).await.unwrap();
    assert!(!id.is_nil());
    let mut bot = Client::with_token(&th.url, &secret);
    bot.agent_id = clients[3].1.agent_id;
    clients.push(("agent-token".into(), bot, Some(&[Role::Agent])));
    let mut tables: Vec<&[RouteDoc]> = vec![ROUTES];
    tables.extend(th.hub().route_docs());
    for r in tables.iter().flat_map(|t| t.iter()) {
        for (who, c, roles) in &clients {
            check_route(r, who, c, *roles).await;
        }
    }
    // The stream needs credentials too.
    let (st, _) = Client::anonymous(&th.url).call("GET", "/api/v1/stream", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // OpenAPI lists every documented route.
    let (st, doc) = Client::anonymous(&th.url).call("GET", "/api/openapi.json", None).await;
    assert_eq!(st, StatusCode::OK);
    for r in tables.iter().flat_map(|t| t.iter()) {
        assert!(doc["paths"][r.path][r.method.to_lowercase()].is_object(), "{} {} missing from OpenAPI", r.method, r.path);
    }
    // Undocumented API paths are refused, not served.
    let (st, b) = clients[1].1.call("GET", "/api/v1/nothing-here", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{b}");
    th.stop().await;
}

#[tokio::test]
async fn sessions_csrf_expiry_logout_and_tokens() {
    let th = spawn_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    // Without the CSRF header an unsafe request is refused even with a valid cookie.
    let mut no_csrf = admin.clone();
    no_csrf.csrf = None;
    let (st, b) = no_csrf.call("POST", "/api/v1/canned-responses", Some(json!({ "title": "t", "body": "b" }))).await;
    assert_eq!((st, b["code"].as_str()), (StatusCode::FORBIDDEN, Some("csrf")));
    let (st, _) = admin.call("POST", "/api/v1/canned-responses", Some(json!({ "title": "t", "body": "b" }))).await;
    assert_eq!(st, StatusCode::CREATED);
    // Wrong password: 401, same answer as an unknown user.
    let (st, b1) = Client::anonymous(&th.url)
        .call("POST", "/api/v1/auth/login", Some(json!({ "username": "root", "password": "wrong-password" })))
        .await;
    let (st2, b2) = Client::anonymous(&th.url)
        .call("POST", "/api/v1/auth/login", Some(json!({ "username": "nobody", "password": "wrong-password" })))
        .await;
    assert_eq!((st, st2), (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED));
    assert_eq!(b1["detail"], b2["detail"]);
    // Expired session: 401 session_expired.
    sqlx::query("update sessions set expires_at = now() - interval '1 minute'").execute(&th.db.pool).await.unwrap();
    let (st, b) = admin.call("GET", "/api/v1/auth/me", None).await;
    assert_eq!((st, b["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("session_expired")));
    // Sign in again, create a token, use it, revoke it.
    let admin = Client::login(&th.url, "root", "test-password-1").await;
    let (st, t) = admin.call("POST", "/api/v1/tokens", Some(json!({ "name": "ci" }))).await;
    assert_eq!(st, StatusCode::CREATED);
    let bot = Client::with_token(&th.url, t["token"].as_str().unwrap());
    let (st, me) = bot.call("GET", "/api/v1/auth/me", None).await;
    assert_eq!((st, me["via"].as_str()), (StatusCode::OK, Some("token")));
    // Tokens need no CSRF header.
    let (st, _) = bot.call("POST", "/api/v1/canned-responses", Some(json!({ "title": "t2", "body": "b" }))).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = admin.call("DELETE", &format!("/api/v1/tokens/{}", t["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = bot.call("GET", "/api/v1/auth/me", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // Logout ends the session.
    let (st, _) = admin.call("POST", "/api/v1/auth/logout", None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = admin.call("GET", "/api/v1/auth/me", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // Passwords are stored as argon2 hashes.
    let hash: String = sqlx::query_scalar("select password_hash from users where username = 'root'").fetch_one(&th.db.pool).await.unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    th.stop().await;
}
