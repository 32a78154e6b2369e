//! Health, readiness, metrics and the OpenAPI document.

use crate::hub::Hub;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::time::Duration;

pub(super) fn router() -> Router<Hub> {
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
}

/// Longest a readiness check or the metrics' database part may take: a probe answers
/// within a second whether or not the database does.
const DB_PROBE_TIMEOUT: Duration = Duration::from_millis(900);

async fn readyz(State(hub): State<Hub>) -> Response {
    let query = sqlx::query_scalar::<_, i64>("select count(*) from _sqlx_migrations where success").fetch_one(hub.db());
    match tokio::time::timeout(DB_PROBE_TIMEOUT, query).await {
        Ok(Ok(n)) if n >= crate::db::MIGRATOR.iter().count() as i64 => {
            (StatusCode::OK, Json(serde_json::json!({ "status": "ready", "router_leader": hub.router_status().is_leader() })))
                .into_response()
        }
        Ok(Ok(_)) => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "migrations pending" }))).into_response(),
        result => {
            match result {
                Ok(Err(e)) => tracing::warn!(error = %e, "Readiness check failed."),
                _ => tracing::warn!(timeout_ms = DB_PROBE_TIMEOUT.as_millis() as u64, "Readiness check timed out."),
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, crate::error::DATABASE_RETRY_AFTER_SECS.to_string())],
                Json(serde_json::json!({ "status": "database unavailable", "code": "database_unavailable" })),
            )
                .into_response()
        }
    }
}

async fn metrics(State(hub): State<Hub>) -> impl IntoResponse {
    // The queue and presence gauges need the database; the rest does not. While the
    // database is down or slow, /metrics still answers at once without them, with
    // switchboard_database_up 0.
    let gauges = tokio::time::timeout(DB_PROBE_TIMEOUT, database_gauges(&hub)).await.ok().and_then(Result::ok);
    let up = if gauges.is_some() { 1.0 } else { 0.0 };
    let mut extra = gauges.unwrap_or_default();
    extra.push(("switchboard_database_up".to_string(), String::new(), up));
    extra.push(("switchboard_router_leader".to_string(), String::new(), if hub.router_status().is_leader() { 1.0 } else { 0.0 }));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], hub.metrics().render(&extra))
}

/// Queue depth, oldest wait and agents by presence, as metric lines.
async fn database_gauges(hub: &Hub) -> Result<Vec<(String, String, f64)>, sqlx::Error> {
    let mut extra = Vec::new();
    let rows = sqlx::query_as::<_, (String, i64, Option<f64>)>(
        "select q.name, count(i.id), extract(epoch from now() - min(i.enqueued_at))::float8
         from queues q left join interactions i on i.queue_id = q.id and i.status = 'queued' group by q.name order by q.name limit 1000",
    )
    .fetch_all(hub.db())
    .await?;
    for (q, n, oldest) in rows {
        let q = q.replace(['"', '\\', '\n'], "_");
        extra.push(("switchboard_queue_waiting".to_string(), format!("{{queue=\"{q}\"}}"), n as f64));
        extra.push(("switchboard_queue_oldest_wait_seconds".to_string(), format!("{{queue=\"{q}\"}}"), oldest.unwrap_or(0.0)));
    }
    let rows = sqlx::query_as::<_, (String, i64)>("select presence, count(*) from agents group by presence order by presence")
        .fetch_all(hub.db())
        .await?;
    for (p, n) in rows {
        extra.push(("switchboard_agents".to_string(), format!("{{presence=\"{p}\"}}"), n as f64));
    }
    Ok(extra)
}

async fn openapi(State(hub): State<Hub>) -> impl IntoResponse {
    let mut tables: Vec<&'static [super::RouteDoc]> = vec![super::ROUTES];
    tables.extend(hub.route_docs());
    Json(super::openapi(&tables))
}
