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

/// Group commit: many concurrent ingests share transactions, yet every conversation gets
/// exactly one interaction, every message is stored once (a resend racing its original
/// is reported as the duplicate, in the same batch or not), and each conversation's
/// messages keep the order in which their senders waited for them.
#[tokio::test]
async fn concurrent_ingests_are_group_committed_without_loss_or_duplicates() {
    let th = spawn_hub().await;
    let hub = th.hub().clone();
    let mut listening = hub.events();
    let mut tasks = Vec::new();
    for conv in 0..12 {
        for copy in 0..2 {
            let hub = hub.clone();
            tasks.push(tokio::spawn(async move {
                let mut outs = Vec::new();
                for n in 0..15 {
                    let mut item = inbound(Channel::Chat, &format!("c{conv}-m{n}"), &format!("visitor-{conv}"), &format!("message {n}"));
                    item.conversation_key = Some(format!("conv-{conv}"));
                    outs.push((conv, copy, n, hub.ingest(item).await.expect("ingest")));
                }
                outs
            }));
        }
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap());
    }
    for conv in 0..12 {
        let of_conv: Vec<_> = outcomes.iter().filter(|o| o.0 == conv).collect();
        let interaction = of_conv[0].3.interaction_id;
        assert!(of_conv.iter().all(|o| o.3.interaction_id == interaction), "one interaction per conversation");
        assert_eq!(of_conv.iter().filter(|o| o.3.created).count(), 1, "created exactly once");
        for n in 0..15 {
            let pair: Vec<_> = of_conv.iter().filter(|o| o.2 == n).collect();
            assert_eq!(pair.len(), 2);
            assert_eq!(pair.iter().filter(|o| o.3.duplicate).count(), 1, "conv {conv} message {n}: one original, one duplicate");
            assert_eq!(pair[0].3.message_id, pair[1].3.message_id, "the duplicate names the stored message");
        }
        let bodies: Vec<String> = sqlx::query_scalar("select body from messages where interaction_id = $1 order by created_at, id")
            .bind(interaction)
            .fetch_all(hub.db())
            .await
            .unwrap();
        assert_eq!(bodies, (0..15).map(|n| format!("message {n}")).collect::<Vec<_>>(), "each message stored once, in order");
    }
    let events: i64 =
        sqlx::query_scalar("select count(*) from interaction_events where kind = 'message'").fetch_one(hub.db()).await.unwrap();
    assert_eq!(events, 12 * 15, "one message event per stored message");
    let ledger: i64 = sqlx::query_scalar("select count(*) from inbound_items").fetch_one(hub.db()).await.unwrap();
    assert_eq!(ledger, 12 * 15);
    // Every message event is heard once (announced after its commit, many to a payload),
    // also across the listener's sweeps.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut heard = std::collections::HashMap::<i64, usize>::new();
    while let Ok(ev) = listening.try_recv() {
        if ev.kind == "message" {
            *heard.entry(ev.id).or_default() += 1;
        }
    }
    assert_eq!(heard.len(), 12 * 15, "every message event heard");
    assert!(heard.values().all(|&n| n == 1), "and heard once");
    // Races between copies are settled by the batch statements themselves, not by failing them.
    assert_eq!(hub.metrics().ingest_fallbacks.load(std::sync::atomic::Ordering::Relaxed), 0);
    th.stop().await;
}

/// A channel ledger in SQL for the test: each new message's value is 1000 + the length of
/// its conversation key.
struct KeyLengthLedger;

impl switchboard_core::IngestLedger for KeyLengthLedger {
    fn ctes(&self, input: &str, p: &str) -> String {
        format!("{p}out as (select message_id, 1000 + length(conversation_key)::bigint as value from {input})")
    }
}

/// Both ingest paths — the one-statement append to open conversations and the general
/// path (first messages, replays, repeats, conversations closed meanwhile) — store each
/// message once, in order, with its channel ledger value, whatever mix a batch holds.
#[tokio::test]
async fn every_kind_of_item_in_a_batch_is_stored_once_with_its_ledger_value() {
    let th = spawn_hub().await;
    let hub = th.hub().clone();
    hub.set_ingest_ledger(Channel::Sms, std::sync::Arc::new(KeyLengthLedger));
    let item = |key: &str, conv: &str, body: &str| {
        let mut i = inbound(Channel::Sms, key, "+15550100", body);
        i.conversation_key = Some(conv.to_string());
        i
    };
    let first = hub.ingest(item("a-0", "conv-a", "a0")).await.unwrap();
    assert!(first.created && !first.duplicate);
    assert_eq!(first.sequence, Some(1006), "the general path writes the ledger");
    let closing = hub.ingest(item("b-0", "conv-bb", "b0")).await.unwrap();
    sqlx::query("update interactions set status = 'closed' where id = $1").bind(closing.interaction_id).execute(hub.db()).await.unwrap();

    // One burst: continuations of an open conversation, a replay, a repeat inside the
    // burst, a message to the closed conversation, a new conversation, and an item
    // without a conversation.
    let burst = vec![
        item("a-1", "conv-a", "a1"),
        item("a-0", "conv-a", "a0"),
        item("a-2", "conv-a", "a2"),
        item("a-2", "conv-a", "a2"),
        item("b-1", "conv-bb", "b1"),
        item("c-0", "conv-ccc", "c0"),
        inbound(Channel::Sms, "loose", "+15550199", "no conversation"),
        item("a-3", "conv-a", "a3"),
    ];
    let outs = futures::future::join_all(burst.into_iter().map(|i| {
        let hub = hub.clone();
        async move { hub.ingest(i).await.expect("ingest") }
    }))
    .await;
    let (a1, a0, a2, a2_again, b1, c0, loose, a3) = (&outs[0], &outs[1], &outs[2], &outs[3], &outs[4], &outs[5], &outs[6], &outs[7]);
    for o in [a1, a2, a3] {
        assert_eq!(o.interaction_id, first.interaction_id);
        assert!(!o.created && !o.duplicate);
        assert_eq!(o.sequence, Some(1006));
    }
    assert!(a0.duplicate && a0.message_id == first.message_id && a0.sequence.is_none(), "a replay: {a0:?}");
    assert_eq!([a2.duplicate, a2_again.duplicate].iter().filter(|d| **d).count(), 1, "one of the repeated pair is the duplicate");
    assert_eq!(a2.message_id, a2_again.message_id);
    assert!(b1.created && b1.interaction_id != closing.interaction_id, "a closed conversation opens a new interaction");
    assert_eq!(b1.sequence, Some(1007));
    assert!(c0.created && c0.sequence == Some(1008));
    assert!(loose.created && loose.sequence.is_none(), "no conversation key, no ledger row: {loose:?}");

    let bodies: Vec<String> = sqlx::query_scalar("select body from messages where interaction_id = $1 order by created_at, id")
        .bind(first.interaction_id)
        .fetch_all(hub.db())
        .await
        .unwrap();
    assert_eq!(bodies, ["a0", "a1", "a2", "a3"], "each message once, in arrival order");
    let (messages, ledger, events): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from messages), (select count(*) from inbound_items),
                (select count(*) from interaction_events where kind = 'message')",
    )
    .fetch_one(hub.db())
    .await
    .unwrap();
    assert_eq!((messages, ledger, events), (8, 8, 8));
    // The continuations took the one-statement path, and no batch statement failed.
    use std::sync::atomic::Ordering::Relaxed;
    assert!(hub.metrics().ingest_appended.load(Relaxed) >= 3, "a1, a2 and a3 were appended in one statement");
    assert_eq!(hub.metrics().ingest_fallbacks.load(Relaxed), 0);
    th.stop().await;
}

/// An event committed without a notification (a node that died between its commit and
/// the announcement) still reaches every node, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_without_a_notification_reach_every_node_once() {
    let th = spawn_hub().await;
    let node_b = spawn_node(&th.db).await;
    let mut receivers = [th.hub().events(), node_b.hub.events()];
    let id: i64 = sqlx::query_scalar("insert into interaction_events (kind, data) values ('silent', '{}') returning id")
        .fetch_one(&th.db.pool)
        .await
        .unwrap();
    for rx in receivers.iter_mut() {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match rx.recv().await {
                    Ok(ev) if ev.kind == "silent" => return ev,
                    Ok(_) => continue,
                    Err(e) => panic!("event stream ended: {e}"),
                }
            }
        })
        .await
        .expect("the sweep delivers it");
        assert_eq!(ev.id, id);
    }
    // A notification arriving late, and later sweeps, do not deliver it again.
    sqlx::query("select pg_notify('switchboard_events', row_to_json(e)::text) from interaction_events e where id = $1")
        .bind(id)
        .execute(&th.db.pool)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    for rx in receivers.iter_mut() {
        while let Ok(ev) = rx.try_recv() {
            assert_ne!(ev.kind, "silent", "delivered twice");
        }
    }
    node_b.stop().await;
    th.stop().await;
}
