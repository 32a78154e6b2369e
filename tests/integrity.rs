//! History survives deletes: an agent or queue deleted through the API is archived (its
//! offers and interactions keep pointing at it, it leaves lists and routing), and the
//! append-only interaction events cannot be removed by deleting their interaction.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;
use switchboard_core::{Channel, Role};
use uuid::Uuid;

async fn first_offer(c: &Client) -> Value {
    eventually(10, || {
        let c = c.clone();
        async move {
            let (_, offers) = c.call("GET", &format!("/api/v1/agents/{}/offers", c.agent_id.unwrap()), None).await;
            offers.as_array().and_then(|a| a.first().cloned())
        }
    })
    .await
}

async fn offers_of(th: &TestHub, agent: Uuid) -> i64 {
    sqlx::query_scalar("select count(*) from offers where agent_id = $1").bind(agent).fetch_one(&th.db.pool).await.unwrap()
}

#[tokio::test]
async fn deleting_agents_and_queues_archives_them_and_keeps_history() {
    let th = spawn_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    let ana = user(&th, "ana", &[Role::Agent], Some(json!({ "billing": 5 }))).await;
    let ben = user(&th, "ben", &[Role::Agent], Some(json!({ "billing": 5 }))).await;
    let (ana_id, ben_id) = (ana.agent_id.unwrap(), ben.agent_id.unwrap());
    let q = queue(&admin, json!({ "name": "billing", "requirement": "billing", "wrap_up_secs": 0 })).await;
    let qid: Uuid = q["id"].as_str().unwrap().parse().unwrap();

    // Ana takes and closes one contact: she now has an offer in history.
    let (st, b) = ana.call("PUT", &format!("/api/v1/agents/{ana_id}/presence"), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let mut item = inbound(Channel::Chat, "m-1", "visitor-1", "invoice question");
    item.queue = Some("billing".into());
    let first = th.hub().ingest(item).await.unwrap();
    let offer = first_offer(&ana).await;
    let (st, b) = ana.call("POST", &format!("/api/v1/offers/{}/accept", offer["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let (st, b) =
        ana.call("POST", &format!("/api/v1/interactions/{}/close", first.interaction_id), Some(json!({ "disposition": "inquiry" }))).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let ana_offers = offers_of(&th, ana_id).await;
    assert!(ana_offers >= 1);

    // Deleting Ana archives her: the offer history stays, she leaves the default list.
    let (st, b) = admin.call("DELETE", &format!("/api/v1/agents/{ana_id}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{b}");
    assert_eq!(offers_of(&th, ana_id).await, ana_offers, "deleting an agent destroyed its offer history");
    let (_, listed) = admin.call("GET", "/api/v1/agents", None).await;
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&ana_id.to_string().as_str()), "archived agent in the default list: {listed}");
    let (_, all) = admin.call("GET", "/api/v1/agents?include_archived=true", None).await;
    let archived = all.as_array().unwrap().iter().find(|a| a["id"] == json!(ana_id)).expect("archived agent listed on request");
    assert!(archived["archived_at"].is_string(), "{archived}");
    assert_eq!(archived["presence"], "offline");
    let (st, closed) = admin.call("GET", &format!("/api/v1/interactions/{}", first.interaction_id), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(closed["agent_id"], json!(ana_id), "the interaction forgot who handled it");
    // An archived agent cannot come back into routing, by presence or by transfer.
    let (st, b) = admin.call("PUT", &format!("/api/v1/agents/{ana_id}/presence"), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::CONFLICT, "{b}");
    let (st, b) = admin.call("PATCH", &format!("/api/v1/agents/{ana_id}"), Some(json!({ "name": "Ana again" }))).await;
    assert_eq!(st, StatusCode::CONFLICT, "{b}");
    // Even with her presence forced back in the database, the router never offers to her:
    // the next contact goes to Ben.
    sqlx::query("update agents set presence = 'available', last_idle_at = now() - interval '1 hour' where id = $1")
        .bind(ana_id)
        .execute(&th.db.pool)
        .await
        .unwrap();
    let (st, b) = ben.call("PUT", &format!("/api/v1/agents/{ben_id}/presence"), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let mut item = inbound(Channel::Chat, "m-2", "visitor-2", "another invoice");
    item.queue = Some("billing".into());
    let second = th.hub().ingest(item).await.unwrap();
    let offer = first_offer(&ben).await;
    assert_eq!(offer["interaction_id"], json!(second.interaction_id));
    assert_eq!(offers_of(&th, ana_id).await, ana_offers, "an archived agent got an offer");
    let (st, b) =
        admin.call("POST", &format!("/api/v1/interactions/{}/transfer", second.interaction_id), Some(json!({ "agent_id": ana_id }))).await;
    assert!(st == StatusCode::NOT_FOUND || st == StatusCode::UNPROCESSABLE_ENTITY, "transfer to an archived agent: {st} {b}");
    let (st, b) = ben.call("POST", &format!("/api/v1/offers/{}/accept", offer["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let (st, b) =
        ben.call("POST", &format!("/api/v1/interactions/{}/close", second.interaction_id), Some(json!({ "disposition": "inquiry" }))).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    // A hard delete of an agent with history is refused by the database.
    let hard = sqlx::query("delete from agents where id = $1").bind(ana_id).execute(&th.db.pool).await;
    assert!(hard.is_err(), "a hard delete of an agent with offers went through");

    // A queue another queue escalates to cannot be archived until that changes.
    let front =
        queue(&admin, json!({ "name": "front", "escalation": [{ "after_secs": 5, "action": "add_queue", "queue": "billing" }] })).await;
    let (st, b) = admin.call("DELETE", &format!("/api/v1/queues/{qid}"), None).await;
    assert_eq!(st, StatusCode::CONFLICT, "{b}");
    assert!(b["detail"].as_str().unwrap().contains("front"), "{b}");
    let (st, b) =
        admin.call("PATCH", &format!("/api/v1/queues/{}", front["id"].as_str().unwrap()), Some(json!({ "escalation": [] }))).await;
    assert_eq!(st, StatusCode::OK, "{b}");

    // Deleting the queue archives it; past interactions keep their queue.
    let (st, b) = admin.call("DELETE", &format!("/api/v1/queues/{qid}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{b}");
    let kept: Vec<Option<Uuid>> = sqlx::query_scalar("select queue_id from interactions where id = any($1) order by created_at")
        .bind(vec![first.interaction_id, second.interaction_id])
        .fetch_all(&th.db.pool)
        .await
        .unwrap();
    assert_eq!(kept, vec![Some(qid), Some(qid)], "deleting a queue blanked the queue of past interactions");
    let (_, listed) = admin.call("GET", "/api/v1/queues", None).await;
    assert!(listed.as_array().unwrap().iter().all(|q| q["id"] != json!(qid)), "archived queue listed: {listed}");
    let (st, shown) = admin.call("GET", &format!("/api/v1/queues/{qid}"), None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(shown["archived_at"].is_string(), "{shown}");
    let (_, stats) = admin.call("GET", "/api/v1/queues/stats", None).await;
    assert!(stats.as_array().unwrap().iter().all(|s| s["queue_id"] != json!(qid)), "{stats}");
    // Its name is free again, and new contacts go to the new queue.
    let fresh = queue(&admin, json!({ "name": "billing", "requirement": "billing" })).await;
    let mut item = inbound(Channel::Chat, "m-3", "visitor-3", "third");
    item.queue = Some("billing".into());
    let third = th.hub().ingest(item).await.unwrap();
    let (_, i) = admin.call("GET", &format!("/api/v1/interactions/{}", third.interaction_id), None).await;
    assert_eq!(i["queue_id"], fresh["id"]);
    let hard = sqlx::query("delete from queues where id = $1").bind(qid).execute(&th.db.pool).await;
    assert!(hard.is_err(), "a hard delete of a queue with interactions went through");

    // Events are append-only: deleting their interaction fails and keeps them.
    let events_before: i64 = sqlx::query_scalar("select count(*) from interaction_events where interaction_id = $1")
        .bind(first.interaction_id)
        .fetch_one(&th.db.pool)
        .await
        .unwrap();
    assert!(events_before > 0);
    let deleted = sqlx::query("delete from interactions where id = $1").bind(first.interaction_id).execute(&th.db.pool).await;
    assert!(deleted.is_err(), "deleting an interaction with events went through");
    let events_after: i64 = sqlx::query_scalar("select count(*) from interaction_events where interaction_id = $1")
        .bind(first.interaction_id)
        .fetch_one(&th.db.pool)
        .await
        .unwrap();
    assert_eq!(events_before, events_after);
    let still: i64 = sqlx::query_scalar("select count(*) from interactions where id = $1")
        .bind(first.interaction_id)
        .fetch_one(&th.db.pool)
        .await
        .unwrap();
    assert_eq!(still, 1);

    // The audit log says who archived what.
    let actions: Vec<String> = sqlx::query_scalar("select action from audit_log where target_id = any($1)")
        .bind(vec![ana_id.to_string(), qid.to_string()])
        .fetch_all(&th.db.pool)
        .await
        .unwrap();
    assert!(actions.contains(&"agent.archive".to_string()) && actions.contains(&"queue.archive".to_string()), "{actions:?}");
    th.stop().await;
}
