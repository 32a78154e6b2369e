//! The supervisor dashboard's queue figures (`GET /api/v1/queues/stats`): an interaction
//! offered to an agent who has not answered yet is still waiting, not in service.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;
use switchboard_core::{Channel, Role};

async fn figures(sup: &Client) -> Value {
    let (st, stats) = sup.call("GET", "/api/v1/queues/stats", None).await;
    assert_eq!(st, StatusCode::OK, "{stats}");
    stats.as_array().and_then(|a| a.iter().find(|q| q["name"] == "support").cloned()).expect("the support queue's figures")
}

#[tokio::test]
async fn an_offered_chat_counts_as_waiting_until_it_is_accepted() {
    let adapter = TestAdapter::new(Channel::Chat);
    let th = spawn_hub().await;
    th.hub().add_adapter(adapter.clone());
    let admin = user(&th, "root", &[Role::Admin], None).await;
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    let agent = user(&th, "ana", &[Role::Agent], Some(json!({}))).await;
    queue(&admin, json!({ "name": "support", "wrap_up_secs": 0, "accept_timeout_secs": 120 })).await;
    let (st, b) =
        agent.call("PUT", &format!("/api/v1/agents/{}/presence", agent.agent_id.unwrap()), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let out = th.hub().ingest(inbound(Channel::Chat, "m-1", "visitor-1", "hello, anyone there?")).await.expect("ingest");

    let offer = eventually(10, || {
        let a = agent.clone();
        async move {
            let (_, offers) = a.call("GET", &format!("/api/v1/agents/{}/offers", a.agent_id.unwrap()), None).await;
            offers.as_array().and_then(|l| l.first().cloned())
        }
    })
    .await;
    let (_, i) = sup.call("GET", &format!("/api/v1/interactions/{}", out.interaction_id), None).await;
    assert_eq!(i["status"], "offered");
    let f = figures(&sup).await;
    assert_eq!((f["waiting"].as_i64(), f["offered"].as_i64(), f["in_service"].as_i64()), (Some(1), Some(1), Some(0)), "{f}");
    assert!(f["oldest_wait_secs"].as_f64().is_some_and(|s| s >= 0.0), "{f}");
    // The dashboard's list of waiting interactions asks for both states.
    let (st, waiting) = sup.call("GET", "/api/v1/interactions?status=queued,offered&limit=200", None).await;
    assert_eq!(st, StatusCode::OK, "{waiting}");
    assert_eq!(waiting["items"].as_array().map(Vec::len), Some(1));

    let (st, i) = agent.call("POST", &format!("/api/v1/offers/{}/accept", offer["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK, "{i}");
    let f = figures(&sup).await;
    assert_eq!((f["waiting"].as_i64(), f["offered"].as_i64(), f["in_service"].as_i64()), (Some(0), Some(0), Some(1)), "{f}");
    th.stop().await;
}
