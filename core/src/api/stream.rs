//! `GET /api/v1/stream`: a WebSocket of committed events. Supervisors and admins get all;
//! an agent gets events about themselves and the interactions offered to or held by them,
//! with the customer card (screen-pop) attached to offers; other roles get their own.
//!
//! An agent's open streams are their inbox connections: each is a row in
//! `agent_connections` with a heartbeat from this node, and presence follows them (the
//! router leader sets an agent with none for `router.presence_grace_secs` offline).

use crate::auth::{AuthVia, Caller};
use crate::bus::HubEvent;
use crate::error::{CoreError, CoreResult};
use crate::hub::Hub;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

pub(super) fn router() -> Router<Hub> {
    Router::new().route("/api/v1/stream", get(upgrade))
}

async fn upgrade(
    State(hub): State<Hub>,
    caller: Caller,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> CoreResult<Response> {
    let ws = ws.map_err(super::not_a_websocket)?;
    // Browsers send cookies on cross-site WebSocket handshakes: refuse foreign origins.
    if caller.via == AuthVia::Session {
        if let (Some(origin), Some(host)) =
            (headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()), headers.get(header::HOST).and_then(|v| v.to_str().ok()))
        {
            let origin_host = origin.split("://").nth(1).unwrap_or(origin);
            if origin_host != host {
                return Err(CoreError::Forbidden);
            }
        }
    }
    let mine: HashSet<Uuid> = match caller.agent_id {
        Some(a) => sqlx::query_scalar(
            "select id from interactions where agent_id = $1 and status in ('offered','active','wrap_up')
             union select interaction_id from offers where agent_id = $1 and state = 'pending'",
        )
        .bind(a)
        .fetch_all(hub.db())
        .await?
        .into_iter()
        .collect(),
        None => HashSet::new(),
    };
    Ok(ws.max_message_size(64 * 1024).on_upgrade(move |socket| serve(hub, caller, mine, socket)))
}

fn names_agent(ev: &HubEvent, me: Uuid) -> bool {
    ev.agent_id == Some(me)
        || ["released_agents", "cancelled_agents"]
            .iter()
            .any(|k| ev.data.get(*k).and_then(|v| v.as_array()).is_some_and(|l| l.iter().any(|x| x.as_str() == Some(&me.to_string()))))
}

/// How often an open inbox connection is vouched for (see [`Hub::inbox_heartbeat_secs`]).
fn heartbeat_every(hub: &Hub) -> std::time::Duration {
    std::time::Duration::from_secs(Hub::inbox_heartbeat_secs(hub.settings().router.presence_grace_secs))
}

async fn serve(hub: Hub, caller: Caller, mine: HashSet<Uuid>, socket: WebSocket) {
    let connection = Uuid::new_v4();
    if let Some(agent) = caller.agent_id {
        if let Err(error) = hub.connection_opened(connection, agent).await {
            tracing::warn!(%error, agent_id = %agent, "Could not record an inbox connection.");
        }
    }
    serve_events(&hub, &caller, connection, mine, socket).await;
    if caller.agent_id.is_some() {
        if let Err(error) = hub.connection_closed(connection).await {
            tracing::warn!(%error, "Could not record the end of an inbox connection.");
        }
    }
}

async fn serve_events(hub: &Hub, caller: &Caller, connection: Uuid, mut mine: HashSet<Uuid>, mut socket: WebSocket) {
    let hub = hub.clone();
    hub.metrics().websockets.fetch_add(1, Ordering::Relaxed);
    let mut heartbeat = tokio::time::interval(heartbeat_every(&hub));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut rx = hub.events();
    let all = caller.is_supervisor();
    let hello = serde_json::json!({ "kind": "hello", "user_id": caller.user_id, "agent_id": caller.agent_id, "roles": caller.roles });
    let _ = socket.send(Message::Text(hello.to_string().into())).await;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(n)) => {
                        let m = serde_json::json!({ "kind": "resync", "missed": n });
                        if socket.send(Message::Text(m.to_string().into())).await.is_err() { break; }
                        continue;
                    }
                    Err(RecvError::Closed) => break,
                };
                let forward = if all {
                    true
                } else if let Some(me) = caller.agent_id {
                    let about_me = names_agent(&ev, me);
                    let held = ev.interaction_id.is_some_and(|i| mine.contains(&i));
                    if about_me {
                        if let (Some(i), "offered" | "accepted" | "transferred") = (ev.interaction_id, ev.kind.as_str()) {
                            if ev.agent_id == Some(me) { mine.insert(i); }
                        }
                    }
                    about_me || held
                } else {
                    false
                };
                if !forward { continue; }
                if let Some(i) = ev.interaction_id {
                    if matches!(ev.kind.as_str(), "closed" | "abandoned") { mine.remove(&i); }
                    if ev.kind == "transferred" && ev.agent_id != caller.agent_id && !all { mine.remove(&i); }
                }
                let mut out = serde_json::to_value(&*ev).unwrap_or_default();
                if ev.kind == "offered" && (all || ev.agent_id == caller.agent_id) {
                    if let Some(i) = ev.interaction_id {
                        if let Ok(Some(card)) = screen_pop(&hub, i).await {
                            out["customer_card"] = card;
                        }
                    }
                }
                if socket.send(Message::Text(out.to_string().into())).await.is_err() { break; }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Ping(p))) => { if socket.send(Message::Pong(p)).await.is_err() { break; } }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = heartbeat.tick(), if caller.agent_id.is_some() => {
                let Some(agent) = caller.agent_id else { continue };
                if let Err(error) = hub.connection_alive(connection, agent).await {
                    tracing::debug!(%error, "Inbox connection heartbeat failed.");
                }
            }
        }
    }
    hub.metrics().websockets.fetch_sub(1, Ordering::Relaxed);
}

async fn screen_pop(hub: &Hub, interaction: Uuid) -> CoreResult<Option<serde_json::Value>> {
    let customer: Option<Option<Uuid>> =
        sqlx::query_scalar("select customer_id from interactions where id = $1").bind(interaction).fetch_optional(hub.db()).await?;
    match customer.flatten() {
        Some(c) => hub.directory().card(c).await,
        None => Ok(None),
    }
}
