//! Router invariants, tested rather than hoped for:
//! 1. at most one live offer/holder per interaction; 2. capacity never exceeded;
//! 3. FIFO within priority, re-queues keep their enqueue time; 4. committed before told;
//! 5. one active router per database, a standby takes over when it dies.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use support::*;
use switchboard_core::hub::{CustomerDirectory, CustomerHints, ResolvedCustomer};
use switchboard_core::{Channel, CoreResult, Role};
use uuid::Uuid;

async fn set_available(c: &Client) {
    let (st, b) =
        c.call("PUT", &format!("/api/v1/agents/{}/presence", c.agent_id.unwrap()), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK, "{b}");
}

/// Gives an agent a SIP user whose phone is registered on this node: voice goes only to
/// agents whose phone can ring.
async fn register_phone(th: &TestHub, c: &Client) {
    let id = c.agent_id.unwrap();
    let sip_user = format!("phone-{}", id.simple());
    sqlx::query("update agents set sip_user = $2 where id = $1").bind(id).bind(&sip_user).execute(&th.db.pool).await.unwrap();
    th.hub().set_voice_registration(&sip_user, Some(chrono::Utc::now() + chrono::Duration::hours(1))).await.unwrap();
}

async fn presence_of(th: &TestHub, c: &Client) -> String {
    sqlx::query_scalar("select presence from agents where id = $1").bind(c.agent_id.unwrap()).fetch_one(&th.db.pool).await.unwrap()
}

async fn offers_of(c: &Client) -> Vec<serde_json::Value> {
    let (_, o) = c.call("GET", &format!("/api/v1/agents/{}/offers", c.agent_id.unwrap()), None).await;
    o.as_array().cloned().unwrap_or_default()
}

async fn check_invariants(pool: &sqlx::PgPool) {
    let multi: i64 = sqlx::query_scalar(
        "select count(*) from (select interaction_id from offers where state in ('pending','accepted') and not ring_all group by 1 having count(*) > 1) x",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(multi, 0, "an interaction had two live offers");
    let over: i64 = sqlx::query_scalar(
        "select count(*) from (select o.agent_id, o.channel from offers o join agents a on a.id = o.agent_id
           where o.state in ('pending','accepted') group by o.agent_id, o.channel, a.capacity
           having count(*) > (a.capacity ->> o.channel)::int) x",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(over, 0, "an agent exceeded capacity");
    let accepted_twice: i64 = sqlx::query_scalar(
        "select count(*) from (select interaction_id from offers where state = 'accepted' group by 1 having count(*) > 1) x",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(accepted_twice, 0, "an interaction was held by two agents");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ingest_and_churn_keep_invariants_and_serve_everyone_once() {
    let th = spawn_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default", "accept_timeout_secs": 600 })).await;
    let mut agents = Vec::new();
    for i in 0..8 {
        let a = user(&th, &format!("agent{i}"), &[Role::Agent], Some(json!({ "language:en": 3 }))).await;
        set_available(&a).await;
        agents.push(a);
    }
    // 120 contacts from 12 concurrent tasks, each also replaying its items.
    let mut tasks = Vec::new();
    for t in 0..12 {
        let hub = th.hub().clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let key = format!("k-{t}-{i}");
                hub.ingest(inbound(Channel::Chat, &key, &format!("v-{t}-{i}"), "hello")).await.unwrap();
                assert!(hub.ingest(inbound(Channel::Chat, &key, &format!("v-{t}-{i}"), "hello")).await.unwrap().duplicate);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n: i64 = sqlx::query_scalar("select count(*) from interactions").fetch_one(&th.db.pool).await.unwrap();
    assert_eq!(n, 120);
    // Agents work concurrently: accept, close, repeat, until all 120 are closed.
    let mut workers = Vec::new();
    for a in agents.clone() {
        workers.push(tokio::spawn(async move {
            let mut served = Vec::new();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            while tokio::time::Instant::now() < deadline {
                let offers = offers_of(&a).await;
                if offers.is_empty() {
                    let (_, list) = a.call("GET", "/api/v1/interactions?status=queued,offered&limit=1", None).await;
                    let (_, all_open) = a.call("GET", "/api/v1/interactions?limit=1", None).await;
                    let _ = (list, all_open);
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                    continue;
                }
                for o in offers {
                    let (st, i) = a.call("POST", &format!("/api/v1/offers/{}/accept", o["id"].as_str().unwrap()), None).await;
                    assert_eq!(st, StatusCode::OK, "{i}");
                    let id = i["id"].as_str().unwrap().to_string();
                    let (st, _) =
                        a.call("POST", &format!("/api/v1/interactions/{id}/close"), Some(json!({ "disposition": "inquiry" }))).await;
                    assert_eq!(st, StatusCode::OK);
                    served.push(id);
                }
            }
            served
        }));
    }
    let waiter = {
        let pool = th.db.pool.clone();
        tokio::spawn(async move {
            eventually(60, || {
                let pool = pool.clone();
                async move {
                    let open: i64 =
                        sqlx::query_scalar("select count(*) from interactions where status <> 'closed'").fetch_one(&pool).await.unwrap();
                    (open == 0).then_some(())
                }
            })
            .await
        })
    };
    // While work is under way, check the invariants repeatedly.
    for _ in 0..20 {
        check_invariants(&th.db.pool).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    waiter.await.unwrap();
    for w in workers {
        w.abort();
    }
    check_invariants(&th.db.pool).await;
    let served_once: i64 = sqlx::query_scalar("select count(distinct interaction_id) from offers where state = 'released'")
        .fetch_one(&th.db.pool)
        .await
        .unwrap();
    assert_eq!(served_once, 120);
    let released: i64 = sqlx::query_scalar("select count(*) from offers where state = 'released'").fetch_one(&th.db.pool).await.unwrap();
    assert_eq!(released, 120, "an interaction was served twice");
    th.stop().await;
}

#[tokio::test]
async fn fifo_within_priority_and_requeue_keeps_original_time_after_ring_no_answer() {
    let th = spawn_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default", "accept_timeout_secs": 3 })).await;
    let first = user(&th, "first", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    let second = user(&th, "second", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    // Only `first` is available, with voice capacity 1; both have a registered phone.
    register_phone(&th, &first).await;
    register_phone(&th, &second).await;
    set_available(&first).await;
    let a = th.hub().ingest(inbound(Channel::Voice, "call-a", "+4930111", "call")).await.unwrap();
    let b = th.hub().ingest(inbound(Channel::Voice, "call-b", "+4930222", "call")).await.unwrap();
    let enq_a: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select enqueued_at from interactions where id = $1")
        .bind(a.interaction_id)
        .fetch_one(&th.db.pool)
        .await
        .unwrap();
    let o = eventually(10, || {
        let f = first.clone();
        async move { offers_of(&f).await.first().cloned() }
    })
    .await;
    assert_eq!(o["interaction_id"].as_str().unwrap(), a.interaction_id.to_string(), "oldest first");
    // Ring-no-answer: first never accepts; after 3 s the offer times out, first goes away
    // (not ready), and the call returns to the queue keeping its place.
    eventually(15, || {
        let pool = th.db.pool.clone();
        let id = a.interaction_id;
        async move {
            let st: String = sqlx::query_scalar("select status from interactions where id = $1").bind(id).fetch_one(&pool).await.unwrap();
            (st == "queued").then_some(())
        }
    })
    .await;
    set_available(&second).await;
    let o2 = eventually(15, || {
        let s = second.clone();
        async move { offers_of(&s).await.first().cloned() }
    })
    .await;
    assert_eq!(o2["interaction_id"].as_str().unwrap(), a.interaction_id.to_string(), "re-queued call keeps its place ahead of b");
    let (presence, enq_after): (String, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("select a.presence, i.enqueued_at from agents a, interactions i where a.id = $1 and i.id = $2")
            .bind(first.agent_id.unwrap())
            .bind(a.interaction_id)
            .fetch_one(&th.db.pool)
            .await
            .unwrap();
    assert_eq!(presence, "away");
    assert_eq!(enq_after, enq_a);
    let kinds: Vec<String> = sqlx::query_scalar("select kind from interaction_events where interaction_id = $1 order by id")
        .bind(a.interaction_id)
        .fetch_all(&th.db.pool)
        .await
        .unwrap();
    let pos = |k: &str| kinds.iter().position(|x| x == k).unwrap_or_else(|| panic!("{k} missing in {kinds:?}"));
    assert!(pos("enqueued") < pos("offered") && pos("offered") < pos("offer_timeout") && pos("offer_timeout") < pos("requeued"));
    let _ = b;
    check_invariants(&th.db.pool).await;
    th.stop().await;
}

/// A channel withdrawing an offer (a ring-all call answered on another phone just before
/// this one was to ring) cancels it without the ring-no-answer penalty, and the contact
/// returns to the queue keeping its place.
#[tokio::test]
async fn a_withdrawn_offer_costs_the_agent_nothing() {
    let th = spawn_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default", "accept_timeout_secs": 30 })).await;
    let agent = user(&th, "agent", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    register_phone(&th, &agent).await;
    set_available(&agent).await;
    let call = th.hub().ingest(inbound(Channel::Voice, "call-w", "+4930333", "call")).await.unwrap();
    let o = eventually(10, || {
        let a = agent.clone();
        async move { offers_of(&a).await.first().cloned() }
    })
    .await;
    let offer_id: Uuid = o["id"].as_str().unwrap().parse().unwrap();
    th.hub().end_offer(offer_id, None, switchboard_core::interactions::OfferEnd::Withdrawn).await.unwrap();
    let (state, presence): (String, String) =
        sqlx::query_as("select o.state, a.presence from offers o join agents a on a.id = o.agent_id where o.id = $1")
            .bind(offer_id)
            .fetch_one(&th.db.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), presence.as_str()), ("cancelled", "available"));
    let kinds: Vec<(String, serde_json::Value)> =
        sqlx::query_as("select kind, data from interaction_events where interaction_id = $1 order by id")
            .bind(call.interaction_id)
            .fetch_all(&th.db.pool)
            .await
            .unwrap();
    let withdrawn = kinds.iter().position(|(k, _)| k == "offer_withdrawn").expect("offer_withdrawn recorded");
    let requeued = kinds.iter().position(|(k, _)| k == "requeued").expect("requeued");
    assert!(withdrawn < requeued);
    assert_eq!(kinds[requeued].1["reason"], "withdrawn");
    assert!(!kinds.iter().any(|(k, _)| k == "offer_timeout"));
    // Withdrawing again is a conflict, not a second re-queue.
    assert!(th.hub().end_offer(offer_id, None, switchboard_core::interactions::OfferEnd::Withdrawn).await.is_err());
    check_invariants(&th.db.pool).await;
    th.stop().await;
}

struct ManagerDirectory {
    manager: Uuid,
}

#[async_trait::async_trait]
impl CustomerDirectory for ManagerDirectory {
    async fn resolve(&self, _: Channel, _: &str, _: &CustomerHints) -> CoreResult<Option<ResolvedCustomer>> {
        Ok(Some(ResolvedCustomer { id: Uuid::new_v4(), own_manager: Some(self.manager), language: None, campaign_id: None }))
    }
    async fn card(&self, id: Uuid) -> CoreResult<Option<serde_json::Value>> {
        Ok(Some(json!({ "id": id, "name": "Test Customer" })))
    }
}

#[tokio::test]
async fn sticky_to_own_manager_then_fallback_and_screen_pop() {
    let th = spawn_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default", "sticky_timeout_secs": 2, "accept_timeout_secs": 60 })).await;
    let manager = user(&th, "manager", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    let other = user(&th, "other", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    th.hub().set_directory(Arc::new(ManagerDirectory { manager: manager.agent_id.unwrap() }));
    set_available(&manager).await;
    set_available(&other).await;
    // `other` has been idle longer, but the own manager gets it.
    let a = th.hub().ingest(inbound(Channel::Email, "mail-1", "a@example.com", "hi")).await.unwrap();
    let o = eventually(10, || {
        let m = manager.clone();
        async move { offers_of(&m).await.first().cloned() }
    })
    .await;
    assert_eq!(o["interaction_id"].as_str().unwrap(), a.interaction_id.to_string());
    // Manager away: the next one falls back at once.
    let (st, _) =
        manager.call("PUT", &format!("/api/v1/agents/{}/presence", manager.agent_id.unwrap()), Some(json!({ "presence": "away" }))).await;
    assert_eq!(st, StatusCode::OK);
    let b = th.hub().ingest(inbound(Channel::Email, "mail-2", "a@example.com", "again")).await.unwrap();
    let o = eventually(10, || {
        let m = other.clone();
        async move { offers_of(&m).await.into_iter().find(|o| o["interaction_id"].as_str() == Some(&b.interaction_id.to_string())) }
    })
    .await;
    assert!(o["id"].is_string());
    th.stop().await;
}

#[tokio::test]
async fn escalation_overflows_to_spare_staff_and_wrap_up_closes_itself() {
    let th = spawn_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(
        &admin,
        json!({ "name": "rare", "requirement": "klingon >= 3", "wrap_up_secs": 1,
                "escalation": [{ "after_secs": 1, "action": "overflow_group", "group": "spare" }] }),
    )
    .await;
    let spare = user(&th, "spare", &[Role::Agent], Some(json!({ "language:en": 1 }))).await;
    let (st, b) = admin.call("PATCH", &format!("/api/v1/agents/{}", spare.agent_id.unwrap()), Some(json!({ "groups": ["spare"] }))).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    set_available(&spare).await;
    let t0 = std::time::Instant::now();
    let a = th.hub().ingest(inbound(Channel::Chat, "c-1", "v-1", "nuqneH")).await.unwrap();
    let o = eventually(10, || {
        let s = spare.clone();
        async move { offers_of(&s).await.first().cloned() }
    })
    .await;
    assert!(t0.elapsed() >= std::time::Duration::from_millis(900), "offered before the escalation step");
    let (st, _) = spare.call("POST", &format!("/api/v1/offers/{}/accept", o["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = spare.call("POST", &format!("/api/v1/interactions/{}/wrap-up", a.interaction_id), None).await;
    assert_eq!(st, StatusCode::OK);
    let i = eventually(10, || {
        let s = spare.clone();
        let id = a.interaction_id;
        async move {
            let (_, i) = s.call("GET", &format!("/api/v1/interactions/{id}"), None).await;
            (i["status"] == "closed").then_some(i)
        }
    })
    .await;
    assert_eq!(i["disposition"], "other");
    th.stop().await;
}

#[tokio::test]
async fn transfers_to_agent_and_queue_and_ring_all() {
    let th = spawn_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default", "accept_timeout_secs": 60 })).await;
    let q2 = queue(&admin, json!({ "name": "second", "requirement": "vip", "accept_timeout_secs": 60 })).await;
    let ring =
        queue(&admin, json!({ "name": "ring", "strategy": "ring_all", "entry_rules": [{ "to": "+49800*" }], "rule_order": 1 })).await;
    let a1 = user(&th, "a1", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    let a2 = user(&th, "a2", &[Role::Agent], Some(json!({ "vip": 2 }))).await;
    set_available(&a1).await;
    let i = th.hub().ingest(inbound(Channel::Sms, "sms-1", "+4915100001", "help")).await.unwrap();
    let o = eventually(10, || {
        let a = a1.clone();
        async move { offers_of(&a).await.first().cloned() }
    })
    .await;
    a1.call("POST", &format!("/api/v1/offers/{}/accept", o["id"].as_str().unwrap()), None).await;
    // Transfer to a queue only a2 qualifies for; a2 comes online and gets it.
    let (st, t) =
        a1.call("POST", &format!("/api/v1/interactions/{}/transfer", i.interaction_id), Some(json!({ "queue_id": q2["id"] }))).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(t["status"], "queued");
    set_available(&a2).await;
    let o2 = eventually(10, || {
        let a = a2.clone();
        async move { offers_of(&a).await.first().cloned() }
    })
    .await;
    let (st, _) = a2.call("POST", &format!("/api/v1/offers/{}/accept", o2["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK);
    // a1 lost access; a2 transfers straight back to a1.
    let (st, _) = a1.call("POST", &format!("/api/v1/interactions/{}/messages", i.interaction_id), Some(json!({ "body": "x" }))).await;
    assert!(st == StatusCode::FORBIDDEN || st == StatusCode::CONFLICT, "{st}");
    let (st, t) =
        a2.call("POST", &format!("/api/v1/interactions/{}/transfer", i.interaction_id), Some(json!({ "agent_id": a1.agent_id }))).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(t["status"], "offered");
    assert_eq!(offers_of(&a1).await.len(), 1);
    // Bad transfer bodies.
    let (st, _) = a1.call("POST", &format!("/api/v1/interactions/{}/transfer", i.interaction_id), Some(json!({}))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Ring-all: a voice call to +49800… rings every eligible agent; the first accept wins.
    let a3 = user(&th, "a3", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    register_phone(&th, &a2).await;
    register_phone(&th, &a3).await;
    set_available(&a3).await;
    let mut item = inbound(Channel::Voice, "call-ring", "+4930999", "call");
    item.to = Some("+49800123".into());
    let c = th.hub().ingest(item).await.unwrap();
    let (oa, ob) = eventually(10, || {
        let (x, y) = (a2.clone(), a3.clone());
        let id = c.interaction_id.to_string();
        async move {
            let ox = offers_of(&x).await.into_iter().find(|o| o["interaction_id"] == id.as_str());
            let oy = offers_of(&y).await.into_iter().find(|o| o["interaction_id"] == id.as_str());
            match (ox, oy) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(oa["ring_all"], true);
    let (st, _) = a3.call("POST", &format!("/api/v1/offers/{}/accept", ob["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = a2.call("POST", &format!("/api/v1/offers/{}/accept", oa["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let _ = ring;
    check_invariants(&th.db.pool).await;
    th.stop().await;
}

#[tokio::test]
async fn outbox_retries_with_backoff_then_fails_for_good() {
    let adapter = TestAdapter::new(Channel::Email);
    let th = spawn_hub().await;
    th.hub().add_adapter(adapter.clone());
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default" })).await;
    let a = user(&th, "a", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    set_available(&a).await;
    let i = th.hub().ingest(inbound(Channel::Email, "<m1@example.com>", "c@example.com", "question")).await.unwrap();
    let o = eventually(10, || {
        let a = a.clone();
        async move { offers_of(&a).await.first().cloned() }
    })
    .await;
    a.call("POST", &format!("/api/v1/offers/{}/accept", o["id"].as_str().unwrap()), None).await;
    *adapter.fail_next.lock().unwrap() = 2;
    let (st, _) = a
        .call(
            "POST",
            &format!("/api/v1/interactions/{}/messages", i.interaction_id),
            Some(json!({ "body": "answer", "idempotency_key": "k1" })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    // Same idempotency key: no second message.
    let (st, _) = a
        .call(
            "POST",
            &format!("/api/v1/interactions/{}/messages", i.interaction_id),
            Some(json!({ "body": "answer", "idempotency_key": "k1" })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (attempts, status): (i32, String) = eventually(20, || {
        let pool = th.db.pool.clone();
        async move {
            let r: (i32, String) = sqlx::query_as("select attempts, status from outbox").fetch_one(&pool).await.unwrap();
            (r.1 == "sent").then_some(r)
        }
    })
    .await;
    assert_eq!((attempts, status.as_str()), (3, "sent"));
    assert_eq!(adapter.delivered.lock().unwrap().len(), 1);
    assert_eq!(adapter.delivered.lock().unwrap()[0].subject, None);
    // A permanent failure ends in `failed` with an event.
    *adapter.permanent.lock().unwrap() = true;
    a.call("POST", &format!("/api/v1/interactions/{}/messages", i.interaction_id), Some(json!({ "body": "second" }))).await;
    eventually(20, || {
        let pool = th.db.pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("select count(*) from outbox where status = 'failed'").fetch_one(&pool).await.unwrap();
            (n == 1).then_some(())
        }
    })
    .await;
    let failed: i64 =
        sqlx::query_scalar("select count(*) from interaction_events where kind = 'delivery_failed'").fetch_one(&th.db.pool).await.unwrap();
    assert_eq!(failed, 1);
    th.stop().await;
}

/// Point 4: a chat agent without a registered phone is not offered calls (and is not put
/// away for a call they could never answer); a phone that cannot ring ends the offer
/// without the ring-no-answer penalty and the call is not offered straight back.
#[tokio::test]
async fn an_agent_without_a_registered_phone_is_not_offered_calls_and_stays_available() {
    let th = spawn_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default", "accept_timeout_secs": 30 })).await;
    let chatty = user(&th, "chatty", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    set_available(&chatty).await;
    let call = th.hub().ingest(inbound(Channel::Voice, "call-nophone", "+4930444", "call")).await.unwrap();
    // A chat arriving after the call is routed first: the router has seen both, and the
    // only agent is not eligible for the call.
    let chat = th.hub().ingest(inbound(Channel::Chat, "chat-after-call", "v-1", "hi")).await.unwrap();
    let o = eventually(10, || {
        let c = chatty.clone();
        async move { offers_of(&c).await.into_iter().find(|o| o["channel"] == "chat") }
    })
    .await;
    assert_eq!(o["interaction_id"].as_str().unwrap(), chat.interaction_id.to_string());
    let voice_offers: i64 = sqlx::query_scalar("select count(*) from offers where channel = 'voice'").fetch_one(&th.db.pool).await.unwrap();
    assert_eq!(voice_offers, 0, "an agent without a registered phone was offered a call");
    assert_eq!(presence_of(&th, &chatty).await, "available");
    let st: String =
        sqlx::query_scalar("select status from interactions where id = $1").bind(call.interaction_id).fetch_one(&th.db.pool).await.unwrap();
    assert_eq!(st, "queued");

    // The phone registers: the waiting call rings it.
    register_phone(&th, &chatty).await;
    let o = eventually(10, || {
        let c = chatty.clone();
        async move { offers_of(&c).await.into_iter().find(|o| o["channel"] == "voice") }
    })
    .await;
    assert_eq!(o["interaction_id"].as_str().unwrap(), call.interaction_id.to_string());
    // The phone cannot ring after all (480 from the phone): no penalty, re-queued, and the
    // call is not offered straight back to the same phone.
    let offer_id: Uuid = o["id"].as_str().unwrap().parse().unwrap();
    th.hub().end_offer(offer_id, None, switchboard_core::interactions::OfferEnd::Unreachable).await.unwrap();
    let (state, reason): (String, Option<String>) =
        sqlx::query_as("select state, end_reason from offers where id = $1").bind(offer_id).fetch_one(&th.db.pool).await.unwrap();
    assert_eq!((state.as_str(), reason.as_deref()), ("cancelled", Some("unreachable")));
    assert_eq!(presence_of(&th, &chatty).await, "available");
    let kinds: Vec<String> = sqlx::query_scalar("select kind from interaction_events where interaction_id = $1 order by id")
        .bind(call.interaction_id)
        .fetch_all(&th.db.pool)
        .await
        .unwrap();
    assert!(kinds.contains(&"offer_unreachable".to_string()) && !kinds.contains(&"offer_timeout".to_string()), "{kinds:?}");
    // Another chat is routed to the same agent meanwhile; the call stays queued.
    let chat2 = th.hub().ingest(inbound(Channel::Chat, "chat-2", "v-2", "hi")).await.unwrap();
    eventually(10, || {
        let c = chatty.clone();
        let id = chat2.interaction_id.to_string();
        async move { offers_of(&c).await.into_iter().find(|o| o["interaction_id"] == id.as_str()) }
    })
    .await;
    let voice_offers: i64 = sqlx::query_scalar("select count(*) from offers where channel = 'voice'").fetch_one(&th.db.pool).await.unwrap();
    assert_eq!(voice_offers, 1, "the unreachable phone was rung again at once");
    check_invariants(&th.db.pool).await;
    th.stop().await;
}

/// Point 15: declining sends the interaction to another agent, not straight back; with
/// nobody else it waits `router.decline_skip_secs` before returning to the decliner.
#[tokio::test]
async fn a_declined_offer_goes_to_someone_else_not_straight_back() {
    let th = spawn_hub_with(|s| s.router.decline_skip_secs = 3).await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default", "accept_timeout_secs": 60 })).await;
    let first = user(&th, "first", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    let second = user(&th, "second", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    // `first` idles longest: longest-idle offers to them first.
    set_available(&first).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    set_available(&second).await;
    let chat = th.hub().ingest(inbound(Channel::Chat, "chat-decline", "v-1", "hi")).await.unwrap();
    let o = eventually(10, || {
        let a = first.clone();
        async move { offers_of(&a).await.first().cloned() }
    })
    .await;
    assert_eq!(o["interaction_id"].as_str().unwrap(), chat.interaction_id.to_string());
    let (st, b) = first.call("POST", &format!("/api/v1/offers/{}/decline", o["id"].as_str().unwrap()), None).await;
    assert!(st.is_success(), "{st} {b}");
    let o2 = eventually(10, || {
        let a = second.clone();
        async move { offers_of(&a).await.first().cloned() }
    })
    .await;
    assert_eq!(o2["interaction_id"].as_str().unwrap(), chat.interaction_id.to_string());
    assert!(offers_of(&first).await.is_empty(), "offered straight back to the agent who declined");
    // The second declines too: nobody else is eligible; it waits out the skip time, then
    // returns to the first agent (who is still available: declining costs nothing).
    let t0 = std::time::Instant::now();
    let (st, _) = second.call("POST", &format!("/api/v1/offers/{}/decline", o2["id"].as_str().unwrap()), None).await;
    assert!(st.is_success());
    let o3 = eventually(15, || {
        let (a, b) = (first.clone(), second.clone());
        async move { offers_of(&a).await.first().cloned().or(offers_of(&b).await.first().cloned()) }
    })
    .await;
    assert_eq!(o3["agent_id"].as_str().unwrap(), first.agent_id.unwrap().to_string());
    assert!(t0.elapsed() >= std::time::Duration::from_millis(1500), "re-offered to a decliner within the skip time");
    assert_eq!(presence_of(&th, &first).await, "available");
    check_invariants(&th.db.pool).await;
    th.stop().await;
}

/// Point 15: a chat offer that rings out while the agent is on a call does not put them
/// away (ring-no-answer applies only to an idle agent able to answer).
#[tokio::test]
async fn a_chat_offer_expiring_during_a_call_costs_the_agent_nothing() {
    let th = spawn_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default", "accept_timeout_secs": 3 })).await;
    let agent = user(&th, "agent", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    register_phone(&th, &agent).await;
    set_available(&agent).await;
    th.hub().ingest(inbound(Channel::Voice, "call-busy", "+4930555", "call")).await.unwrap();
    let o = eventually(10, || {
        let a = agent.clone();
        async move { offers_of(&a).await.first().cloned() }
    })
    .await;
    let (st, b) = agent.call("POST", &format!("/api/v1/offers/{}/accept", o["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    // On the call, a chat is offered (chat capacity left) and rings out.
    let chat = th.hub().ingest(inbound(Channel::Chat, "chat-during-call", "v-1", "hi")).await.unwrap();
    let timeout_event: serde_json::Value = eventually(15, || {
        let pool = th.db.pool.clone();
        let id = chat.interaction_id;
        async move {
            sqlx::query_scalar("select data from interaction_events where interaction_id = $1 and kind = 'offer_timeout' limit 1")
                .bind(id)
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(timeout_event["penalized"], false);
    assert_eq!(presence_of(&th, &agent).await, "available", "put away for a chat offer that expired during a call");
    // An idle agent letting an offer ring out is still put away.
    let idle = user(&th, "idle", &[Role::Agent], Some(json!({ "x": 1 }))).await;
    set_available(&idle).await;
    eventually(15, || {
        let th_pool = th.db.pool.clone();
        let id = idle.agent_id.unwrap();
        async move {
            let p: String = sqlx::query_scalar("select presence from agents where id = $1").bind(id).fetch_one(&th_pool).await.unwrap();
            (p == "away").then_some(())
        }
    })
    .await;
    th.stop().await;
}
