//! A queue's report settings through the API (`/api/v1/queues/{id}/report-settings`):
//! defaults, validation, roles, and the short-abandon threshold taking effect on the
//! contacts rolled up after the change.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use support::*;
use switchboard_core::Role;
use uuid::Uuid;

/// A contact of `queue` that waited `secs` seconds and hung up, at `at` (UTC).
async fn abandon_after(pool: &PgPool, queue: Uuid, secs: i64, at: &str) {
    let start = chrono::DateTime::parse_from_rfc3339(at).expect("time").with_timezone(&chrono::Utc);
    let id: Uuid = sqlx::query_scalar(
        "insert into interactions (channel, queue_id, status, created_at, enqueued_at) values ('voice', $1, 'abandoned', $2, $2) returning id",
    )
    .bind(queue)
    .bind(start)
    .fetch_one(pool)
    .await
    .expect("interaction");
    for (kind, t) in [("enqueued", start), ("abandoned", start + chrono::Duration::seconds(secs))] {
        sqlx::query("insert into interaction_events (interaction_id, queue_id, kind, at) values ($1, $2, $3, $4)")
            .bind(id)
            .bind(queue)
            .bind(kind)
            .bind(t)
            .execute(pool)
            .await
            .expect("event");
    }
}

async fn abandons(sup: &Client, queue: Uuid, day: &str) -> (Value, Value) {
    let (st, v) = sup.call("GET", &format!("/api/v1/reports/queues?from={day}&to={day}&tz=UTC&interval=total&queue={queue}"), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    (v["totals"]["abandoned"].clone(), v["totals"]["abandoned_short"].clone())
}

#[tokio::test]
async fn a_queue_s_short_abandon_threshold_is_set_through_the_api_and_counts_from_then_on() {
    let th = spawn_hub().await;
    let pool = th.hub().db().clone();
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    let agent = user(&th, "amy", &[Role::Agent], Some(json!({}))).await;
    let admin = user(&th, "ada", &[Role::Admin], None).await;
    let (st, q) = admin.call("POST", "/api/v1/queues", Some(json!({ "name": "hotline" }))).await;
    assert_eq!(st, StatusCode::CREATED, "{q}");
    let queue: Uuid = q["id"].as_str().and_then(|s| s.parse().ok()).expect("queue id");
    let path = format!("/api/v1/queues/{queue}/report-settings");

    // Defaults, before anything is stored.
    let (st, v) = sup.call("GET", &path, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v, json!({ "queue_id": queue, "short_abandon_secs": 5, "sl_formula": "answered_vs_answered_and_long_abandoned" }));

    // Agents may neither read nor set them; bad values are refused by field.
    assert_eq!(agent.call("GET", &path, None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(agent.call("PUT", &path, Some(json!({ "short_abandon_secs": 10 }))).await.0, StatusCode::FORBIDDEN);
    let (st, v) = sup.call("PUT", &path, Some(json!({ "short_abandon_secs": -1 }))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v.to_string().contains("short_abandon_secs"), "{v}");
    let (st, v) = sup.call("PUT", &path, Some(json!({ "sl_formula": "made_up" }))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v.to_string().contains("sl_formula"), "{v}");
    let (st, _) =
        sup.call("PUT", &format!("/api/v1/queues/{}/report-settings", Uuid::new_v4()), Some(json!({ "short_abandon_secs": 3 }))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // With the default threshold (5 s) a caller who hung up after 8 s is a long abandon.
    abandon_after(&pool, queue, 8, "2026-03-02T09:00:00Z").await;
    rolled_up(&pool).await;
    assert_eq!(abandons(&sup, queue, "2026-03-02").await, (json!(1), json!(0)));

    // Raised to 10 s: the next caller hanging up after 8 s is short; the first stays long
    // (settings apply to what is rolled up after the change).
    let (st, v) = sup.call("PUT", &path, Some(json!({ "short_abandon_secs": 10 }))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v, json!({ "queue_id": queue, "short_abandon_secs": 10, "sl_formula": "answered_vs_answered_and_long_abandoned" }));
    abandon_after(&pool, queue, 8, "2026-03-02T10:00:00Z").await;
    rolled_up(&pool).await;
    assert_eq!(abandons(&sup, queue, "2026-03-02").await, (json!(1), json!(1)));

    // Setting one field keeps the other; the change is audited.
    let (st, v) = sup.call("PUT", &path, Some(json!({ "sl_formula": "answered_vs_offered" }))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["short_abandon_secs"], 10);
    assert_eq!(sup.call("GET", &path, None).await.1["sl_formula"], "answered_vs_offered");
    let audited: i64 = sqlx::query_scalar("select count(*) from audit_log where action = 'queue.report_settings' and target_id = $1")
        .bind(queue.to_string())
        .fetch_one(&pool)
        .await
        .expect("audit");
    assert_eq!(audited, 2);
}
