//! Cluster membership and call ownership for several hub nodes on one database.
//!
//! - Every node publishes itself in `cluster_nodes` (its id and the internal URL other
//!   nodes reach its HTTP server at) and refreshes a heartbeat there.
//! - A real-time channel that keeps per-node state (a voice call's media and SIP
//!   dialogs) records the owning node of each live call in `call_owners`. A call-control
//!   request that reaches another node is forwarded to the owner over HTTP ([`forward`])
//!   and answered as if local.
//! - One node at a time (a [`crate::lease`] named `cluster:sweeper`) ends the calls of nodes
//!   whose heartbeat stopped: each gets a `call_ended` event with reason `node_lost`, and the
//!   interaction goes to wrap-up (it was answered) or is abandoned (it was still waiting).

use crate::bus::NewEvent;
use crate::error::{CoreError, CoreResult};
use crate::hub::Hub;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// Header a forwarded request carries (the forwarding node's id): the owner never
/// forwards it again, so a stale ownership row cannot make requests loop.
pub const FORWARDED_FROM: &str = "x-switchboard-forwarded-from";

/// Cluster settings (`[cluster]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// The URL other hub nodes use to reach this node's HTTP server directly (call-control
    /// forwarding), e.g. `http://10.0.0.11:8080`. Empty: `http://<the bound http.bind
    /// address>`, right when nodes bind to their own non-wildcard address.
    #[serde(default)]
    pub internal_url: String,
    /// How often this node refreshes its heartbeat, in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A node whose heartbeat is older than this (milliseconds) is dead: its live calls
    /// are ended with reason `node_lost` and nothing is forwarded to it.
    #[serde(default = "default_node_timeout_ms")]
    pub node_timeout_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_node_timeout_ms() -> u64 {
    5000
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings { internal_url: String::new(), heartbeat_ms: default_heartbeat_ms(), node_timeout_ms: default_node_timeout_ms() }
    }
}

/// The owner of a live call.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CallOwner {
    /// The owning node.
    pub node_id: Uuid,
    /// The engine's call id there.
    pub call_id: String,
    /// The node's internal URL (`None`: the node is not in `cluster_nodes`).
    pub internal_url: Option<String>,
    /// Whether the node's heartbeat is fresh.
    pub alive: bool,
}

/// Publishes (or refreshes) this node in `cluster_nodes`.
#[tracing::instrument(skip(db))]
pub async fn heartbeat(db: &PgPool, node: Uuid, internal_url: &str) -> CoreResult<()> {
    sqlx::query(
        "insert into cluster_nodes (node_id, internal_url) values ($1, $2)
         on conflict (node_id) do update set internal_url = excluded.internal_url, heartbeat_at = now()",
    )
    .bind(node)
    .bind(internal_url)
    .execute(db)
    .await?;
    Ok(())
}

/// Records that `node` owns the live call of `interaction_id`.
#[tracing::instrument(skip(db))]
pub async fn record_call_owner(db: &PgPool, interaction_id: Uuid, call_id: &str, node: Uuid, channel_name: &str) -> CoreResult<()> {
    sqlx::query(
        "insert into call_owners (interaction_id, call_id, node_id, channel_name) values ($1, $2, $3, $4)
         on conflict (interaction_id) do update set call_id = excluded.call_id, node_id = excluded.node_id,
             channel_name = excluded.channel_name, since = now()",
    )
    .bind(interaction_id)
    .bind(call_id)
    .bind(node)
    .bind(channel_name)
    .execute(db)
    .await?;
    Ok(())
}

/// Forgets the ownership of a call that ended on `node`.
#[tracing::instrument(skip(db))]
pub async fn forget_call_owner(db: &PgPool, call_id: &str, node: Uuid) -> CoreResult<()> {
    sqlx::query("delete from call_owners where call_id = $1 and node_id = $2").bind(call_id).bind(node).execute(db).await?;
    Ok(())
}

/// The owner of an interaction's live call, if one is recorded.
#[tracing::instrument(skip(db))]
pub async fn call_owner(db: &PgPool, interaction_id: Uuid, node_timeout: Duration) -> CoreResult<Option<CallOwner>> {
    Ok(sqlx::query_as(
        "select o.node_id, o.call_id, n.internal_url,
                coalesce(n.heartbeat_at > now() - make_interval(secs => $2), false) as alive
           from call_owners o left join cluster_nodes n on n.node_id = o.node_id
          where o.interaction_id = $1",
    )
    .bind(interaction_id)
    .bind(node_timeout.as_secs_f64())
    .fetch_optional(db)
    .await?)
}

/// Forwards a request to another node (`base`: its internal URL) and returns its answer
/// as-is. Hop-by-hop headers are dropped; authentication headers travel along, so the
/// owner authorizes the caller itself.
pub async fn forward(client: &reqwest::Client, base: &str, from: Uuid, req: Request, max_body: usize) -> Response {
    match forward_inner(client, base, from, req, max_body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(target_node = %base, error = %e, "Could not forward a request to the owning node.");
            CoreError::Channel("the node that holds this call cannot be reached; please retry".into()).into_response()
        }
    }
}

async fn forward_inner(client: &reqwest::Client, base: &str, from: Uuid, req: Request, max_body: usize) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let bytes = axum::body::to_bytes(body, max_body).await.map_err(|e| e.to_string())?;
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).map_err(|e| e.to_string())?;
    let mut rb = client.request(method, &url).timeout(Duration::from_secs(15));
    for (k, v) in parts.headers.iter() {
        let name = k.as_str();
        if matches!(name, "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive" | "upgrade" | "te" | "trailer")
            || name == FORWARDED_FROM
        {
            continue;
        }
        rb = rb.header(name, v.as_bytes());
    }
    rb = rb.header(FORWARDED_FROM, from.to_string());
    let resp = rb.body(bytes.to_vec()).send().await.map_err(|e| e.to_string())?;
    let status = axum::http::StatusCode::from_u16(resp.status().as_u16()).map_err(|e| e.to_string())?;
    let mut out = Response::builder().status(status);
    for (k, v) in resp.headers().iter() {
        let name = k.as_str();
        if matches!(name, "connection" | "content-length" | "transfer-encoding" | "keep-alive") {
            continue;
        }
        out = out.header(name, v.as_bytes());
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    out.body(Body::from(body)).map_err(|e| e.to_string())
}

/// Ends the calls of dead nodes (see the module docs). Returns how many were ended.
#[tracing::instrument(skip(hub))]
pub async fn sweep_dead_nodes(hub: &Hub, node_timeout: Duration) -> CoreResult<usize> {
    let lost: Vec<(Uuid, String, Uuid)> = sqlx::query_as(
        "select o.interaction_id, o.call_id, o.node_id from call_owners o left join cluster_nodes n on n.node_id = o.node_id
          where n.node_id is null or n.heartbeat_at < now() - make_interval(secs => $1)",
    )
    .bind(node_timeout.as_secs_f64())
    .fetch_all(hub.db())
    .await?;
    let mut ended = 0;
    for (interaction_id, call_id, node) in lost {
        // Delete first: exactly one sweeper records the end, even if two raced.
        let gone = sqlx::query("delete from call_owners where interaction_id = $1 and node_id = $2")
            .bind(interaction_id)
            .bind(node)
            .execute(hub.db())
            .await?
            .rows_affected();
        if gone == 0 {
            continue;
        }
        tracing::warn!(%interaction_id, %call_id, %node, "Call ended: its node stopped answering.");
        hub.record_event(
            NewEvent::interaction("call_ended", interaction_id)
                .with_data(serde_json::json!({ "call_id": call_id, "by": "hub", "reason": "node_lost", "node": node })),
        )
        .await?;
        let status: Option<String> =
            sqlx::query_scalar("select status from interactions where id = $1").bind(interaction_id).fetch_optional(hub.db()).await?;
        let r = match status.as_deref() {
            Some("active") => hub.wrap_up(interaction_id, None).await.map(|_| ()),
            Some("queued" | "offered" | "overflowed") => hub.abandon_with(interaction_id, Some("node_lost")).await,
            _ => Ok(()),
        };
        match r {
            Ok(()) | Err(CoreError::Conflict(_)) => ended += 1,
            Err(e) => return Err(e),
        }
    }
    // Nodes gone for long (killed, never restarted with that id) leave the member list.
    sqlx::query(
        "delete from cluster_nodes n where n.heartbeat_at < now() - interval '10 minutes'
            and not exists (select 1 from call_owners o where o.node_id = n.node_id)",
    )
    .execute(hub.db())
    .await?;
    Ok(ended)
}

/// Runs until shutdown: the heartbeat, and (while holding the `cluster:sweeper` lease)
/// the sweep of dead nodes' calls. Removes this node's row on a clean stop.
pub async fn run(hub: Hub, internal_url: String, settings: ClusterSettings, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let every = Duration::from_millis(settings.heartbeat_ms.max(100));
    let timeout = Duration::from_millis(settings.node_timeout_ms.max(settings.heartbeat_ms * 2));
    let lease_ttl = timeout;
    let node = hub.node_id();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(%node, %internal_url, "Cluster membership running.");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|v| *v) => break,
        }
        if let Err(e) = heartbeat(hub.db(), node, &internal_url).await {
            tracing::warn!(error = %e, "Cluster heartbeat failed.");
            continue;
        }
        match crate::lease::acquire(hub.db(), "cluster:sweeper", node, lease_ttl).await {
            Ok(Some(_)) => {
                if let Err(e) = sweep_dead_nodes(&hub, timeout).await {
                    tracing::warn!(error = %e, "Could not end the calls of a dead node.");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "Cluster sweeper lease check failed."),
        }
    }
    let _ = crate::lease::release_by_holder(hub.db(), "cluster:sweeper", node).await;
    let _ = sqlx::query("delete from cluster_nodes where node_id = $1").bind(node).execute(hub.db()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;
    use crate::{Channel, InboundItem};

    #[tokio::test]
    async fn a_dead_nodes_calls_are_ended_with_a_reason_and_a_live_nodes_are_kept() {
        let db = TestDb::new().await;
        let hub = Hub::new(db.pool.clone(), Default::default());
        let call = |key: &str| InboundItem {
            channel: Some(Channel::Voice),
            dedupe_key: key.into(),
            conversation_key: Some(key.into()),
            from: "+4930111".into(),
            body: "Incoming call".into(),
            ..Default::default()
        };
        let lost = hub.ingest(call("lost@pbx")).await.unwrap().interaction_id;
        let kept = hub.ingest(call("kept@pbx")).await.unwrap().interaction_id;
        let (dead, live) = (Uuid::new_v4(), Uuid::new_v4());
        heartbeat(&db.pool, dead, "http://127.0.0.1:1").await.unwrap();
        sqlx::query("update cluster_nodes set heartbeat_at = now() - interval '1 minute' where node_id = $1")
            .bind(dead)
            .execute(&db.pool)
            .await
            .unwrap();
        heartbeat(&db.pool, live, "http://127.0.0.1:2").await.unwrap();
        record_call_owner(&db.pool, lost, "lost@pbx", dead, "pbx").await.unwrap();
        record_call_owner(&db.pool, kept, "kept@pbx", live, "pbx").await.unwrap();
        let timeout = Duration::from_secs(5);
        let o = call_owner(&db.pool, lost, timeout).await.unwrap().unwrap();
        assert!(!o.alive, "nothing is forwarded to a dead node");
        assert!(call_owner(&db.pool, kept, timeout).await.unwrap().unwrap().alive);

        assert_eq!(sweep_dead_nodes(&hub, timeout).await.unwrap(), 1);
        assert_eq!(sweep_dead_nodes(&hub, timeout).await.unwrap(), 0, "ended once");
        let status: String =
            sqlx::query_scalar("select status from interactions where id = $1").bind(lost).fetch_one(&db.pool).await.unwrap();
        assert_eq!(status, "abandoned", "a waiting caller on the dead node is recorded as abandoned");
        let reason: Option<String> =
            sqlx::query_scalar("select data->>'reason' from interaction_events where interaction_id = $1 and kind = 'call_ended'")
                .bind(lost)
                .fetch_optional(&db.pool)
                .await
                .unwrap();
        assert_eq!(reason.as_deref(), Some("node_lost"));
        let status: String =
            sqlx::query_scalar("select status from interactions where id = $1").bind(kept).fetch_one(&db.pool).await.unwrap();
        assert_eq!(status, "queued", "a live node's call is left alone");
        assert!(call_owner(&db.pool, kept, timeout).await.unwrap().is_some());
    }
}
