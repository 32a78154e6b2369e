//! The WebSocket event stream: supervisors see every event, an agent sees only what
//! concerns them (with the customer card on offers), strangers see nothing, and foreign
//! origins are refused.

mod support;

use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use support::*;
use switchboard_core::hub::{CustomerDirectory, CustomerHints, ResolvedCustomer};
use switchboard_core::{Channel, CoreResult, Role};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

struct Cards;

#[async_trait::async_trait]
impl CustomerDirectory for Cards {
    async fn resolve(&self, _: Channel, addr: &str, _: &CustomerHints) -> CoreResult<Option<ResolvedCustomer>> {
        let _ = addr;
        Ok(Some(ResolvedCustomer { id: Uuid::new_v4(), own_manager: None, language: None, campaign_id: None }))
    }
    async fn card(&self, id: Uuid) -> CoreResult<Option<Value>> {
        Ok(Some(json!({ "id": id, "name": "Ada Lovelace", "tags": ["vip"] })))
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, token: &str, origin: Option<&str>) -> Result<Ws, String> {
    let mut req = format!("{}/api/v1/stream", url.replace("http://", "ws://")).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws).map_err(|e| e.to_string())
}

async fn next_json(ws: &mut Ws) -> Option<Value> {
    match tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(m))) if m.is_text() => serde_json::from_str(m.to_text().ok()?).ok(),
        _ => None,
    }
}

async fn token_for(th: &TestHub, c: &Client) -> String {
    switchboard_core::auth::create_token(th.hub().db(), c.user_id.unwrap(), "ws", None).await.unwrap().1
}

#[tokio::test]
async fn stream_filters_by_role_and_assignment() {
    let th = spawn_hub().await;
    th.hub().set_directory(Arc::new(Cards));
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "es", "requirement": "language:es", "accept_timeout_secs": 60 })).await;
    let sup = user(&th, "sup", &[Role::Supervisor], None).await;
    let es = user(&th, "es", &[Role::Agent], Some(json!({ "language:es": 4 }))).await;
    let en = user(&th, "en", &[Role::Agent], Some(json!({ "language:en": 4 }))).await;
    let mut ws_sup = connect(&th.url, &token_for(&th, &sup).await, None).await.unwrap();
    let mut ws_es = connect(&th.url, &token_for(&th, &es).await, None).await.unwrap();
    let mut ws_en = connect(&th.url, &token_for(&th, &en).await, None).await.unwrap();
    for ws in [&mut ws_sup, &mut ws_es, &mut ws_en] {
        assert_eq!(next_json(ws).await.unwrap()["kind"], "hello");
    }
    es.call("PUT", &format!("/api/v1/agents/{}/presence", es.agent_id.unwrap()), Some(json!({ "presence": "available" }))).await;
    let out = th.hub().ingest(inbound(Channel::Chat, "m1", "visitor", "hola")).await.unwrap();
    // The Spanish agent gets their presence change, then the offer with the screen-pop card.
    let mut offer = None;
    for _ in 0..10 {
        match next_json(&mut ws_es).await {
            Some(ev) if ev["kind"] == "offered" => {
                offer = Some(ev);
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    let offer = offer.expect("offer event");
    // Invariant 4: by the time anyone hears of the offer, it is committed.
    let offer_id: Uuid = offer["data"]["offer_id"].as_str().unwrap().parse().unwrap();
    let state: Option<String> =
        sqlx::query_scalar("select state from offers where id = $1").bind(offer_id).fetch_optional(&th.db.pool).await.unwrap();
    assert_eq!(state.as_deref(), Some("pending"));
    assert_eq!(offer["interaction_id"], out.interaction_id.to_string());
    assert_eq!(offer["customer_card"]["name"], "Ada Lovelace");
    // The supervisor sees the enqueue and the offer too.
    let mut kinds = Vec::new();
    while let Some(ev) = next_json(&mut ws_sup).await {
        kinds.push(ev["kind"].as_str().unwrap_or_default().to_string());
        if kinds.iter().any(|k| k == "offered") {
            break;
        }
    }
    assert!(kinds.contains(&"enqueued".to_string()) && kinds.contains(&"offered".to_string()), "{kinds:?}");
    // The English agent heard nothing about it.
    assert!(next_json(&mut ws_en).await.is_none());
    // Foreign origins can't ride a session cookie... and with a token the origin is irrelevant,
    // but an anonymous handshake is refused.
    let mut req = format!("{}/api/v1/stream", th.url.replace("http://", "ws://")).into_client_request().unwrap();
    req.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    th.stop().await;
}
