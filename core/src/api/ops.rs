//! Health, readiness, metrics and the OpenAPI document.

use crate::hub::Hub;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

pub(super) fn router() -> Router<Hub> {
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
}

async fn readyz(State(hub): State<Hub>) -> impl IntoResponse {
    let db = sqlx::query_scalar::<_, i64>("select count(*) from _sqlx_migrations where success").fetch_one(hub.db()).await;
    match db {
        Ok(n) if n >= crate::db::MIGRATOR.iter().count() as i64 => {
            (StatusCode::OK, Json(serde_json::json!({ "status": "ready", "router_leader": hub.router_status().is_leader() })))
        }
        Ok(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "migrations pending" }))),
        Err(e) => {
            tracing::warn!(error = %e, "Readiness check failed.");
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "database unavailable" })))
        }
    }
}

async fn metrics(State(hub): State<Hub>) -> impl IntoResponse {
    let mut extra = Vec::new();
    if let Ok(rows) = sqlx::query_as::<_, (String, i64, Option<f64>)>(
        "select q.name, count(i.id), extract(epoch from now() - min(i.enqueued_at))::float8
         from queues q left join interactions i on i.queue_id = q.id and i.status = 'queued' group by q.name order by q.name limit 1000",
    )
    .fetch_all(hub.db())
    .await
    {
        for (q, n, oldest) in rows {
            let q = q.replace(['"', '\\', '\n'], "_");
            extra.push(("switchboard_queue_waiting".to_string(), format!("{{queue=\"{q}\"}}"), n as f64));
            extra.push(("switchboard_queue_oldest_wait_seconds".to_string(), format!("{{queue=\"{q}\"}}"), oldest.unwrap_or(0.0)));
        }
    }
    if let Ok(rows) = sqlx::query_as::<_, (String, i64)>("select presence, count(*) from agents group by presence order by presence")
        .fetch_all(hub.db())
        .await
    {
        for (p, n) in rows {
            extra.push(("switchboard_agents".to_string(), format!("{{presence=\"{p}\"}}"), n as f64));
        }
    }
    extra.push(("switchboard_router_leader".to_string(), String::new(), if hub.router_status().is_leader() { 1.0 } else { 0.0 }));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], hub.metrics().render(&extra))
}

async fn openapi(State(hub): State<Hub>) -> impl IntoResponse {
    let mut tables: Vec<&'static [super::RouteDoc]> = vec![super::ROUTES];
    tables.extend(hub.route_docs());
    Json(super::openapi(&tables))
}
