//! Fetching only the new part of a transcript (`GET /api/v1/interactions/{id}/messages?after=`),
//! which the inbox uses instead of reloading the whole transcript on every message.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::*;
use switchboard_core::{Channel, Role};
use uuid::Uuid;

#[tokio::test]
async fn messages_after_a_message_are_the_newer_ones_in_order() {
    let adapter = TestAdapter::new(Channel::Chat);
    let th = spawn_hub().await;
    th.hub().add_adapter(adapter.clone());
    let admin = user(&th, "root", &[Role::Admin], None).await;
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    queue(&admin, json!({ "name": "support", "wrap_up_secs": 0 })).await;
    let said = |key: &str, body: &str| {
        let mut item = inbound(Channel::Chat, key, "visitor-1", body);
        item.conversation_key = Some("conversation-1".into());
        item
    };
    let out = th.hub().ingest(said("m-1", "first")).await.expect("ingest");
    let id = out.interaction_id;
    for (k, body) in ["second", "third"].iter().enumerate() {
        let o = th.hub().ingest(said(&format!("m-{}", k + 2), body)).await.expect("ingest");
        assert_eq!(o.interaction_id, id);
    }
    let (st, note) = sup.call("POST", &format!("/api/v1/interactions/{id}/notes"), Some(json!({ "body": "fourth" }))).await;
    assert_eq!(st, StatusCode::CREATED, "{note}");

    let (st, all) = sup.call("GET", &format!("/api/v1/interactions/{id}/messages"), None).await;
    assert_eq!(st, StatusCode::OK, "{all}");
    let bodies = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(bodies(&all), ["first", "second", "third", "fourth"]);
    let first = all[0]["id"].as_str().unwrap();
    let (st, newer) = sup.call("GET", &format!("/api/v1/interactions/{id}/messages?after={first}"), None).await;
    assert_eq!(st, StatusCode::OK, "{newer}");
    assert_eq!(bodies(&newer), ["second", "third", "fourth"]);
    let last = all[3]["id"].as_str().unwrap();
    let (_, none) = sup.call("GET", &format!("/api/v1/interactions/{id}/messages?after={last}"), None).await;
    assert_eq!(none, json!([]));

    // A message of another interaction, an unknown id or garbage: clear errors.
    let other = th.hub().ingest(inbound(Channel::Chat, "x-1", "visitor-2", "elsewhere")).await.expect("ingest");
    let (_, theirs) = sup.call("GET", &format!("/api/v1/interactions/{}/messages", other.interaction_id), None).await;
    let foreign = theirs[0]["id"].as_str().unwrap();
    for after in [foreign.to_string(), Uuid::new_v4().to_string()] {
        let (st, p) = sup.call("GET", &format!("/api/v1/interactions/{id}/messages?after={after}"), None).await;
        assert!(st.is_client_error() && st != StatusCode::NOT_FOUND, "{st} {p}");
        assert_eq!(p["field"], "after", "{p}");
    }
    let (st, _) = sup.call("GET", &format!("/api/v1/interactions/{id}/messages?after=not-a-uuid"), None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = sup.call("GET", &format!("/api/v1/interactions/{id}/messages?since=1"), None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    th.stop().await;
}
