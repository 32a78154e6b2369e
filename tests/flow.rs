//! End-to-end flow through the real HTTP API: ingest → route → offer → accept → reply
//! (outbox → adapter) → wrap-up → close, with the event history in order.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::*;
use switchboard_core::{Channel, Role};

#[tokio::test]
async fn chat_contact_is_routed_by_skill_answered_and_closed() {
    let adapter = TestAdapter::new(Channel::Chat);
    let th = spawn_hub().await;
    th.hub().add_adapter(adapter.clone());
    let admin = user(&th, "root", &[Role::Admin], None).await;
    let es = user(&th, "ana", &[Role::Agent], Some(json!({ "language:es": 5 }))).await;
    let en = user(&th, "ben", &[Role::Agent], Some(json!({ "language:en": 5 }))).await;
    queue(&admin, json!({ "name": "es", "requirement": "language:es >= 3", "entry_rules": [{ "keywords": ["hola"] }], "wrap_up_secs": 0 }))
        .await;
    for c in [&es, &en] {
        let (st, b) =
            c.call("PUT", &format!("/api/v1/agents/{}/presence", c.agent_id.unwrap()), Some(json!({ "presence": "available" }))).await;
        assert_eq!(st, StatusCode::OK, "{b}");
    }
    let out = th.hub().ingest(inbound(Channel::Chat, "m-1", "visitor-1", "hola, necesito ayuda")).await.unwrap();
    assert!(out.created && !out.duplicate);
    // Replay: a no-op.
    let again = th.hub().ingest(inbound(Channel::Chat, "m-1", "visitor-1", "hola, necesito ayuda")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.interaction_id, out.interaction_id);

    let offer = eventually(10, || {
        let es = es.clone();
        async move {
            let (_, offers) = es.call("GET", &format!("/api/v1/agents/{}/offers", es.agent_id.unwrap()), None).await;
            offers.as_array().and_then(|a| a.first().cloned())
        }
    })
    .await;
    assert_eq!(offer["interaction_id"].as_str().unwrap(), out.interaction_id.to_string());
    // The English-only agent never sees it.
    let (_, none) = en.call("GET", &format!("/api/v1/agents/{}/offers", en.agent_id.unwrap()), None).await;
    assert_eq!(none.as_array().unwrap().len(), 0);
    let (st, _) = en.call("GET", &format!("/api/v1/interactions/{}", out.interaction_id), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (st, i) = es.call("POST", &format!("/api/v1/offers/{}/accept", offer["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK, "{i}");
    assert_eq!(i["status"], "active");
    let (st, m) = es
        .call(
            "POST",
            &format!("/api/v1/interactions/{}/messages", out.interaction_id),
            Some(json!({ "body": "¡Hola! ¿En qué puedo ayudarte?" })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    let delivered = eventually(10, || {
        let a = adapter.clone();
        async move { a.delivered.lock().unwrap().first().cloned() }
    })
    .await;
    assert_eq!(delivered.recipient, "visitor-1");
    assert!(delivered.body.contains("ayudarte"));

    let (st, _) = es.call("POST", &format!("/api/v1/interactions/{}/wrap-up", out.interaction_id), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, closed) = es
        .call(
            "POST",
            &format!("/api/v1/interactions/{}/close", out.interaction_id),
            Some(json!({ "disposition": "inquiry", "summary": "greeted" })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{closed}");
    assert_eq!(closed["disposition"], "inquiry");

    let (_, events) = admin.call("GET", &format!("/api/v1/interactions/{}/events", out.interaction_id), None).await;
    let kinds: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let pos = |k: &str| kinds.iter().position(|x| *x == k).unwrap_or_else(|| panic!("{k} missing in {kinds:?}"));
    assert!(pos("enqueued") < pos("offered"));
    assert!(pos("offered") < pos("accepted"));
    assert!(pos("accepted") < pos("delivered"));
    assert!(pos("wrap_up") < pos("closed"));
    th.stop().await;
}
