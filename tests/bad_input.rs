//! Every kind of bad input gets a 4xx application/problem+json naming what is wrong —
//! never a 500, a panic or a half-written row.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::*;
use switchboard_core::Role;

/// method, path, content type, body, expected status, text the detail must contain.
type Case = (&'static str, &'static str, Option<&'static str>, Vec<u8>, StatusCode, &'static str);

#[tokio::test]
async fn malformed_requests_get_clear_problems() {
    let th = spawn_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    let queues_before: i64 = sqlx::query_scalar("select count(*) from queues").fetch_one(&th.db.pool).await.unwrap();
    let cases: Vec<Case> = vec![
        ("POST", "/api/v1/queues", Some("application/json"), b"{\"name\": \"q\",".to_vec(), StatusCode::BAD_REQUEST, "malformed JSON"),
        ("POST", "/api/v1/queues", Some("application/json"), b"[1,2,3]".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, "invalid type"),
        ("POST", "/api/v1/queues", Some("text/plain"), b"{\"name\":\"q\"}".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type"),
        (
            "POST",
            "/api/v1/queues",
            Some("application/json"),
            b"{\"name\":\"q\",\"colour\":\"red\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
        ),
        (
            "POST",
            "/api/v1/queues",
            Some("application/json"),
            b"{\"name\":\"q\",\"priority\":\"high\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "priority",
        ),
        (
            "POST",
            "/api/v1/queues",
            Some("application/json"),
            b"{\"name\":\"q\",\"requirement\":\"language:es >= \"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "requirement",
        ),
        (
            "POST",
            "/api/v1/queues",
            Some("application/json"),
            b"{\"name\":\"q\",\"requirement\":\"a b\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "skill expression",
        ),
        (
            "POST",
            "/api/v1/queues",
            Some("application/json"),
            b"{\"name\":\"q\",\"strategy\":\"random\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "strategy",
        ),
        (
            "POST",
            "/api/v1/queues",
            Some("application/json"),
            b"{\"name\":\"q\",\"business_hours\":{\"timezone\":\"Mars/Olympus\",\"weekly\":{}}}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "time zone",
        ),
        (
            "POST",
            "/api/v1/queues",
            Some("application/json"),
            b"{\"name\":\"q\",\"escalation\":[{\"after_secs\":5,\"action\":\"add_queue\",\"queue\":\"nope\"}]}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown queue",
        ),
        ("POST", "/api/v1/queues", Some("application/json"), vec![b'x'; 2 * 1024 * 1024], StatusCode::PAYLOAD_TOO_LARGE, "larger"),
        ("GET", "/api/v1/queues/not-a-uuid", None, vec![], StatusCode::BAD_REQUEST, "path parameter"),
        ("GET", "/api/v1/queues/00000000-0000-4000-8000-000000000000", None, vec![], StatusCode::NOT_FOUND, "queue not found"),
        ("GET", "/api/v1/interactions?limit=100000", None, vec![], StatusCode::UNPROCESSABLE_ENTITY, "limit"),
        ("GET", "/api/v1/interactions?status=lost", None, vec![], StatusCode::UNPROCESSABLE_ENTITY, "unknown"),
        ("GET", "/api/v1/interactions?bogus=1", None, vec![], StatusCode::BAD_REQUEST, "bogus"),
        ("GET", "/api/v1/interactions?since=yesterday", None, vec![], StatusCode::BAD_REQUEST, "since"),
        (
            "POST",
            "/api/v1/agents",
            Some("application/json"),
            b"{\"name\":\"a\",\"skills\":{\"billing\":0}}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "level",
        ),
        (
            "POST",
            "/api/v1/agents",
            Some("application/json"),
            b"{\"name\":\"a\",\"skills\":{\"bad name!\":3}}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "skill name",
        ),
        (
            "POST",
            "/api/v1/agents",
            Some("application/json"),
            b"{\"name\":\"a\",\"skills\":{\"x\":300}}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "skills",
        ),
        (
            "POST",
            "/api/v1/users",
            Some("application/json"),
            b"{\"username\":\"u\",\"password\":\"short\",\"roles\":[\"agent\"]}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "password",
        ),
        (
            "POST",
            "/api/v1/users",
            Some("application/json"),
            b"{\"username\":\"u\",\"password\":\"long-enough-1\",\"roles\":[\"god\"]}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "god",
        ),
        (
            "PUT",
            "/api/v1/agents/00000000-0000-4000-8000-000000000000/presence",
            Some("application/json"),
            b"{\"presence\":\"asleep\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "asleep",
        ),
        (
            "PUT",
            "/api/v1/agents/00000000-0000-4000-8000-000000000000/presence",
            Some("application/json"),
            b"{\"presence\":\"away\"}".to_vec(),
            StatusCode::NOT_FOUND,
            "agent not found",
        ),
        ("POST", "/api/v1/offers/00000000-0000-4000-8000-000000000000/accept", None, vec![], StatusCode::CONFLICT, "agent record"),
        (
            "POST",
            "/api/v1/interactions/00000000-0000-4000-8000-000000000000/close",
            Some("application/json"),
            b"{\"disposition\":\"meh\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "meh",
        ),
    ];
    for (method, path, ct, body, want, needle) in cases {
        let (st, b, ctype) = admin.raw(method, path, ct, body).await;
        assert_eq!(st, want, "{method} {path}: {b}");
        assert_eq!(ctype.as_deref(), Some("application/problem+json"), "{method} {path}");
        let detail = b["detail"].as_str().unwrap_or_default().to_string();
        assert!(detail.to_lowercase().contains(&needle.to_lowercase()), "{method} {path}: detail `{detail}` lacks `{needle}`");
    }
    let queues_after: i64 = sqlx::query_scalar("select count(*) from queues").fetch_one(&th.db.pool).await.unwrap();
    assert_eq!(queues_before, queues_after, "a rejected request wrote a row");
    // Duplicate names are a conflict, not a 500.
    queue(&admin, json!({ "name": "dup" })).await;
    let (st, b) = admin.call("POST", "/api/v1/queues", Some(json!({ "name": "dup" }))).await;
    assert_eq!(st, StatusCode::CONFLICT, "{b}");
    // Ingest refuses bad items clearly.
    let mut bad = inbound(switchboard_core::Channel::Chat, "", "v", "x");
    assert!(th.hub().ingest(bad.clone()).await.is_err());
    bad.dedupe_key = "k".into();
    bad.requirement = Some("(((".into());
    assert!(th.hub().ingest(bad).await.is_err());
    let n: i64 = sqlx::query_scalar("select count(*) from interactions").fetch_one(&th.db.pool).await.unwrap();
    assert_eq!(n, 0);
    th.stop().await;
}

/// A NUL character anywhere (body, nested JSON, object key, query, path) and dates outside
/// PostgreSQL's range (4713 BC to 294276 AD) are a 422 `invalid_field` naming the field —
/// never a 500 from the database — on every route, signed in or not.
#[tokio::test]
async fn unstorable_values_are_refused_naming_the_field() {
    let th = spawn_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    let anon = Client::anonymous(&th.url);
    let (st, customer) = admin.call("POST", "/api/v1/customers", Some(json!({ "name": "Ana" }))).await;
    assert_eq!(st, StatusCode::CREATED, "{customer}");
    let cid = customer["id"].as_str().unwrap().to_string();
    let customers_before: i64 = sqlx::query_scalar("select count(*) from customers").fetch_one(&th.db.pool).await.unwrap();
    // (client, method, path, body, field named in the problem)
    let cases: Vec<(&Client, &str, String, Option<serde_json::Value>, &str)> = vec![
        (&anon, "POST", "/api/v1/auth/login".into(), Some(json!({ "username": "ro\u{0}ot", "password": "whatever-1" })), "username"),
        (&anon, "POST", "/api/v1/auth/login".into(), Some(json!({ "username": "root", "password": "pw\u{0}" })), "password"),
        (&anon, "GET", "/api/v1/kb/public/search?q=refund%00".into(), None, "q"),
        (&anon, "GET", "/api/v1/kb/public/articles/a%00b".into(), None, "id"),
        (&admin, "POST", "/api/v1/queues".into(), Some(json!({ "name": "q\u{0}" })), "name"),
        (&admin, "POST", "/api/v1/agents".into(), Some(json!({ "name": "a", "groups": ["ok", "b\u{0}"] })), "groups[1]"),
        (
            &admin,
            "POST",
            "/api/v1/users".into(),
            Some(json!({ "username": "u1", "password": "long-enough-1", "roles": ["agent"], "display_name": "x\u{0}" })),
            "display_name",
        ),
        (&admin, "POST", "/api/v1/tokens".into(), Some(json!({ "name": "t\u{0}" })), "name"),
        (&admin, "POST", "/api/v1/customers".into(), Some(json!({ "name": "Ana\u{0}" })), "name"),
        (
            &admin,
            "POST",
            "/api/v1/customers".into(),
            Some(json!({ "name": "Ana", "attributes": { "k": ["x", "y\u{0}"] } })),
            "attributes.k[1]",
        ),
        (&admin, "POST", "/api/v1/customers".into(), Some(json!({ "name": "Ana", "attributes": { "a\u{0}b": 1 } })), "attributes.a\\0b"),
        (&admin, "GET", "/api/v1/customers?q=%00".into(), None, "q"),
        (&admin, "PATCH", format!("/api/v1/customers/{cid}"), Some(json!({ "company": "\u{0}" })), "company"),
        (&admin, "POST", format!("/api/v1/customers/{cid}/notes"), Some(json!({ "body": "note\u{0}" })), "body"),
        (&admin, "POST", "/api/v1/kb/articles".into(), Some(json!({ "title": "t\u{0}", "body": "b" })), "title"),
        (&admin, "GET", "/api/v1/kb/search?q=x%00y".into(), None, "q"),
        // Dates PostgreSQL cannot store, before and after its range.
        (&admin, "GET", "/api/v1/interactions?since=-5000-01-01T00:00:00Z".into(), None, "since"),
        (&admin, "GET", "/api/v1/interactions?until=%2B300000-01-01T00:00:00Z".into(), None, "until"),
        (&admin, "POST", "/api/v1/tokens".into(), Some(json!({ "name": "t", "expires_at": "+300000-01-01T00:00:00Z" })), "expires_at"),
        (&admin, "POST", "/api/v1/tasks".into(), Some(json!({ "title": "call back", "due_at": "-5000-01-01T00:00:00Z" })), "due_at"),
        (
            &admin,
            "POST",
            "/api/v1/appointments".into(),
            Some(json!({ "customer_id": cid, "starts_at": "-5000-06-01T10:00:00Z" })),
            "starts_at",
        ),
        (&admin, "GET", "/api/v1/appointments?from=-5000-01-01T00:00:00Z".into(), None, "from"),
        (&admin, "PATCH", format!("/api/v1/customers/{cid}"), Some(json!({ "birthday": "-5000-01-01" })), "birthday"),
    ];
    for (client, method, path, body, field) in cases {
        let (st, b) = client.call(method, &path, body).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{method} {path}: {b}");
        assert_eq!(b["code"], "invalid_field", "{method} {path}: {b}");
        assert_eq!(b["field"], field, "{method} {path}: {b}");
    }
    let customers_after: i64 = sqlx::query_scalar("select count(*) from customers").fetch_one(&th.db.pool).await.unwrap();
    assert_eq!(customers_before, customers_after, "a refused request wrote a row");
    // The same values without the NUL or with a storable date are fine.
    let (st, b) = admin.call("GET", "/api/v1/interactions?since=2026-01-01T00:00:00Z", None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let (st, b) = anon.call("GET", "/api/v1/kb/public/search?q=refund", None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    th.stop().await;
}
