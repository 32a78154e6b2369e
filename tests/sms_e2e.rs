//! End-to-end tests of the SMS channel against a real SMPP peer: the npm `smpp` package's
//! server scripted as an SMSC (`tests/sms/smsc.mjs`; `npm install` in `tests/sms` first,
//! `scripts/test.sh` does it). The hub is the real one, on its own database.

#[path = "support/smsc.rs"]
mod smsc;
mod support;

use reqwest::StatusCode;
use serde_json::json;
use smsc::{channel, Smsc};
use std::process::Stdio;
use std::time::Duration;
use support::*;
use switchboard_core::testing::TestDb;
use switchboard_core::Role;
use uuid::Uuid;

async fn sms_hub(port: u16, extra: &str) -> TestHub {
    let table = channel(port, extra);
    spawn_hub_with(move |s| s.channels.push(table)).await
}

async fn interaction_of(db: &sqlx::PgPool, phone: &str) -> Option<(Uuid, Vec<String>)> {
    let iid: Option<Uuid> =
        sqlx::query_scalar("select id from interactions where channel = 'sms' and customer_address = $1 order by created_at limit 1")
            .bind(phone)
            .fetch_optional(db)
            .await
            .unwrap();
    let iid = iid?;
    let bodies: Vec<String> =
        sqlx::query_scalar("select body from messages where interaction_id = $1 and direction = 'inbound' order by created_at")
            .bind(iid)
            .fetch_all(db)
            .await
            .unwrap();
    Some((iid, bodies))
}

async fn sent_status(db: &sqlx::PgPool, interaction: Uuid) -> Vec<String> {
    sqlx::query_scalar("select status from sms_sent where interaction_id = $1 order by created_at")
        .bind(interaction)
        .fetch_all(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn inbound_sms_is_routed_answered_and_the_reply_delivered_with_receipts() {
    let mut smsc = Smsc::start().await;
    let th = sms_hub(smsc.port, "").await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    let db = th.hub().db().clone();
    let admin = user(&th, "root", &[Role::Admin], None).await;
    let agent = user(&th, "sam", &[Role::Agent], Some(json!({ "sms": 5 }))).await;
    let other = user(&th, "vic", &[Role::Agent], Some(json!({ "voice": 5 }))).await;
    queue(&admin, json!({ "name": "texts", "requirement": "sms >= 3", "entry_rules": [{ "channels": ["sms"] }], "wrap_up_secs": 0 })).await;
    for c in [&agent, &other] {
        let (st, b) =
            c.call("PUT", &format!("/api/v1/agents/{}/presence", c.agent_id.unwrap()), Some(json!({ "presence": "available" }))).await;
        assert_eq!(st, StatusCode::OK, "{b}");
    }

    let resp = smsc.deliver("m1", "4915112345678", "Hello, my parcel is late", None).await;
    assert_eq!(resp["status"], 0);
    // Committed before deliver_sm_resp: the message is there now.
    let (iid, bodies) = interaction_of(&db, "+4915112345678").await.expect("interaction committed before deliver_sm_resp");
    assert_eq!(bodies, vec!["Hello, my parcel is late"]);

    let offer = eventually(10, || {
        let a = agent.clone();
        async move {
            let (_, offers) = a.call("GET", &format!("/api/v1/agents/{}/offers", a.agent_id.unwrap()), None).await;
            offers.as_array().and_then(|o| o.first().cloned())
        }
    })
    .await;
    assert_eq!(offer["interaction_id"], iid.to_string());
    let (_, none) = other.call("GET", &format!("/api/v1/agents/{}/offers", other.agent_id.unwrap()), None).await;
    assert_eq!(none.as_array().unwrap().len(), 0, "the agent without the sms skill gets no offer");
    let (st, b) = agent.call("POST", &format!("/api/v1/offers/{}/accept", offer["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");

    // A short GSM reply: one submit_sm, data_coding 0, then the receipt (decimal id for
    // the hex id the SMSC gave) marks it delivered.
    let (st, b) = agent
        .call("POST", &format!("/api/v1/interactions/{iid}/messages"), Some(json!({ "body": "Sorry! It ships today {ref 42}" })))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let sub = smsc.wait(10, |e| e["event"] == "submit_sm").await;
    assert_eq!((sub["dest"].as_str(), sub["data_coding"].as_u64()), (Some("4915112345678"), Some(0)));
    assert_eq!(sub["message"], "Sorry! It ships today {ref 42}");
    assert_eq!(sub["registered_delivery"], 1);
    let first_id = sub["answered"].as_str().unwrap().to_string();
    eventually(10, || {
        let db = db.clone();
        async move { (sent_status(&db, iid).await == vec!["delivered"]).then_some(()) }
    })
    .await;
    // A late "enroute" never overwrites "delivered".
    smsc.cmd(json!({ "cmd": "receipt", "id": first_id, "stat": "ENROUTE" })).await;
    smsc.wait(10, |e| e["event"] == "receipt_resp" && e["stat"] == "ENROUTE").await;
    assert_eq!(sent_status(&db, iid).await, vec!["delivered"]);

    // A 300-character Unicode reply: UCS-2 parts with one concatenation reference.
    let long: String = "Здравствуйте! Ваш заказ 😀 в пути. ".chars().cycle().take(300).collect();
    let (st, b) = agent.call("POST", &format!("/api/v1/interactions/{iid}/messages"), Some(json!({ "body": long }))).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let expected = switchboard_sms::encoding::split(&long).parts.len();
    let mut parts = Vec::new();
    for _ in 0..expected {
        parts.push(smsc.wait(10, |e| e["event"] == "submit_sm").await);
    }
    let mut texts = vec![String::new(); expected];
    let mut reference = None;
    for p in &parts {
        assert_eq!(p["data_coding"], 8);
        assert_eq!(p["esm_class"].as_u64().unwrap() & 0x40, 0x40);
        let h = p["udh"][0].as_str().unwrap();
        let udh: Vec<u8> = (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect();
        assert_eq!((udh[0], udh[1], udh[3] as usize), (0, 3, expected), "8-bit concatenation IE");
        assert!(reference.is_none() || reference == Some(udh[2]));
        reference = Some(udh[2]);
        texts[udh[4] as usize - 1] = p["message"].as_str().unwrap().to_string();
        assert!(p["message"].as_str().unwrap().encode_utf16().count() <= 67);
    }
    assert_eq!(texts.concat(), long, "the parts join to the text");
    eventually(10, || {
        let db = db.clone();
        async move { (sent_status(&db, iid).await == vec!["delivered", "delivered"]).then_some(()) }
    })
    .await;
    // The agent sees the status as interaction events.
    let (_, events) = admin.call("GET", &format!("/api/v1/interactions/{iid}/events"), None).await;
    assert!(events.as_array().unwrap().iter().any(|e| e["kind"] == "sms_status" && e["data"]["status"] == "delivered"));
    // The customer's next message continues the open conversation.
    smsc.deliver("m2", "4915112345678", "Thanks!", None).await;
    let (iid2, bodies) = interaction_of(&db, "+4915112345678").await.unwrap();
    assert_eq!((iid2, bodies.len()), (iid, 2));
    th.stop().await;
    smsc.wait(10, |e| e["event"] == "unbind").await;
}

#[tokio::test]
async fn a_three_part_message_is_one_message_across_a_hub_restart() {
    let mut smsc = Smsc::start().await;
    let db = TestDb::new().await;
    let table = channel(smsc.port, "");
    let t1 = table.clone();
    let node = spawn_node_with(&db, move |s| s.channels.push(t1)).await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    let text = "Part one of a long message, ".repeat(3) + &"part two goes on, ".repeat(4) + "and the end.";
    let chunks: Vec<String> = {
        let c: Vec<char> = text.chars().collect();
        c.chunks(c.len().div_ceil(3)).map(|x| x.iter().collect()).collect()
    };
    assert_eq!(chunks.len(), 3);
    assert_eq!(smsc.deliver("p1", "4915199999999", &chunks[0], Some([9, 3, 1])).await["status"], 0);
    // Parts arrive out of order; a resent part is stored once.
    assert_eq!(smsc.deliver("p3", "4915199999999", &chunks[2], Some([9, 3, 3])).await["status"], 0);
    assert_eq!(smsc.deliver("p3b", "4915199999999", &chunks[2], Some([9, 3, 3])).await["status"], 0);
    assert!(interaction_of(&db.pool, "+4915199999999").await.is_none(), "nothing ingested before the last part");
    node.stop().await;
    smsc.wait(10, |e| e["event"] == "unbind").await;

    let node = spawn_node_with(&db, move |s| s.channels.push(table)).await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    assert_eq!(smsc.deliver("p2", "4915199999999", &chunks[1], Some([9, 3, 2])).await["status"], 0);
    let (_, bodies) = interaction_of(&db.pool, "+4915199999999").await.expect("ingested with the last part");
    assert_eq!(bodies, vec![text.clone()]);
    // The SMSC resends the last part (its resp was lost): still one message.
    assert_eq!(smsc.deliver("p2b", "4915199999999", &chunks[1], Some([9, 3, 2])).await["status"], 0);
    let left: i64 = sqlx::query_scalar("select count(*) from sms_inbound_parts").fetch_one(&db.pool).await.unwrap();
    let (_, bodies) = interaction_of(&db.pool, "+4915199999999").await.unwrap();
    assert_eq!(bodies, vec![text], "one message, no duplicate (parts left: {left})");
    node.stop().await;
}

/// Sends `n` SMS through the outbox (as the CRM's campaigns do) and returns their ids.
async fn enqueue(db: &sqlx::PgPool, tag: &str, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let mut conn = db.acquire().await.unwrap();
        let id = switchboard_core::outbox::enqueue_tx(
            &mut conn,
            switchboard_core::outbox::NewOutbound {
                idempotency_key: format!("{tag}-{i}"),
                channel: switchboard_core::Channel::Sms,
                interaction_id: None,
                message_id: None,
                recipient: "+4915100000001".into(),
                subject: None,
                body: format!("{tag} message {i}"),
                metadata: json!({}),
            },
        )
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

async fn statuses(db: &sqlx::PgPool, ids: &[Uuid]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        let s: Option<String> =
            sqlx::query_scalar("select status from sms_sent where outbox_id = $1").bind(id).fetch_optional(db).await.unwrap();
        out.push(s.unwrap_or_default());
    }
    out
}

#[tokio::test]
async fn throttling_drops_and_silence_lose_nothing_and_duplicate_nothing() {
    let mut smsc = Smsc::start().await;
    let th = sms_hub(smsc.port, "window = 4").await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    let db = th.hub().db().clone();

    // Throttled: the first three submits are refused with ESME_RTHROTTLED and retried.
    smsc.cmd(json!({ "cmd": "throttle", "count": 3 })).await;
    smsc.wait(5, |e| e["event"] == "ok").await;
    let ids = enqueue(&db, "throttled", 5).await;
    eventually(20, || {
        let (db, ids) = (db.clone(), ids.clone());
        async move { statuses(&db, &ids).await.iter().all(|s| s == "delivered").then_some(()) }
    })
    .await;

    // The connection drops: the channel rebinds and the next messages go out.
    smsc.cmd(json!({ "cmd": "drop" })).await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    let ids2 = enqueue(&db, "after-drop", 3).await;
    eventually(20, || {
        let (db, ids) = (db.clone(), ids2.clone());
        async move { statuses(&db, &ids).await.iter().all(|s| s == "delivered").then_some(()) }
    })
    .await;

    // No response: `unknown`, the outbox row failed, and it is never resent.
    smsc.cmd(json!({ "cmd": "silent", "count": 1 })).await;
    smsc.wait(5, |e| e["event"] == "ok").await;
    let ids3 = enqueue(&db, "silent", 1).await;
    eventually(20, || {
        let (db, ids) = (db.clone(), ids3.clone());
        async move { (statuses(&db, &ids).await == vec!["unknown"]).then_some(()) }
    })
    .await;
    // The adapter records `unknown` before it answers the outbox worker, which then marks
    // the row failed: wait for that second step rather than race it.
    eventually(10, || {
        let (db, id) = (db.clone(), ids3[0]);
        async move {
            let outbox: String = sqlx::query_scalar("select status from outbox where id = $1").bind(id).fetch_one(&db).await.unwrap();
            (outbox == "failed").then_some(())
        }
    })
    .await;
    smsc.drain(1500).await;

    let submits = smsc.submits();
    for (tag, n) in [("throttled", 5), ("after-drop", 3), ("silent", 1)] {
        for i in 0..n {
            let body = format!("{tag} message {i}");
            let accepted =
                submits.iter().filter(|e| e["message"] == body && e["answered"] != "throttled" && e["answered"] != "silent").count();
            let silent = submits.iter().filter(|e| e["message"] == body && e["answered"] == "silent").count();
            assert_eq!(accepted + silent, 1, "{body} reached the SMSC exactly once");
        }
    }
    assert_eq!(submits.iter().filter(|e| e["answered"] == "throttled").count(), 3);
    th.stop().await;
}

#[tokio::test]
async fn stop_records_the_opt_out_and_is_answered_once() {
    let mut smsc = Smsc::start().await;
    let th = sms_hub(smsc.port, "").await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    let db = th.hub().db().clone();
    assert_eq!(smsc.deliver("s1", "4915177777777", "STOP", None).await["status"], 0);
    let reply = smsc.wait(10, |e| e["event"] == "submit_sm").await;
    assert_eq!(reply["dest"], "4915177777777");
    assert!(reply["message"].as_str().unwrap().contains("unsubscribed"), "{reply}");
    // A second STOP changes nothing and gets no second reply.
    assert_eq!(smsc.deliver("s2", "4915177777777", "stop", None).await["status"], 0);
    // A Chinese number opts out with 退订 (answered in Chinese); "TD" from it is a repeat.
    assert_eq!(smsc.deliver("s3", "8613800138000", "退订", None).await["status"], 0);
    let zh = smsc.wait(10, |e| e["event"] == "submit_sm").await;
    assert_eq!(zh["dest"], "8613800138000");
    assert!(zh["message"].as_str().unwrap().contains("退订"), "{zh}");
    assert_eq!(smsc.deliver("s3b", "8613800138000", "TD", None).await["status"], 0);
    smsc.drain(1500).await;
    assert_eq!(smsc.submits().len(), 2, "one confirmation per number");
    let (opted, source): (bool, String) =
        sqlx::query_as("select opted_out, source from sms_opt_outs where phone = '+4915177777777'").fetch_one(&db).await.unwrap();
    assert!(opted && source.contains("STOP"));
    // The CRM's consent history, for the customer the number resolved to.
    let customers: Vec<Option<Uuid>> =
        sqlx::query_scalar("select distinct customer_id from sms_keyword_messages where phone = '+4915177777777'")
            .fetch_all(&db)
            .await
            .unwrap();
    assert!(customers.len() == 1 && customers[0].is_some(), "{customers:?}");
    let consent: Vec<(bool, String)> =
        sqlx::query_as("select granted, source from customer_consent_events where customer_id = $1 and kind = 'sms' order by at")
            .bind(customers[0])
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(consent.len(), 1, "{consent:?}");
    assert!(consent[0].1.contains("STOP"));
    assert!(!consent[0].0);
    // No interaction for keyword messages.
    assert!(interaction_of(&db, "+4915177777777").await.is_none());
    // Marketing (no conversation) to the opted-out number is refused, not sent.
    let mut conn = db.acquire().await.unwrap();
    let id = switchboard_core::outbox::enqueue_tx(
        &mut conn,
        switchboard_core::outbox::NewOutbound {
            idempotency_key: "promo-1".into(),
            channel: switchboard_core::Channel::Sms,
            interaction_id: None,
            message_id: None,
            recipient: "+4915177777777".into(),
            subject: None,
            body: "50% off today".into(),
            metadata: json!({ "kind": "marketing" }),
        },
    )
    .await
    .unwrap();
    drop(conn);
    let err = eventually(10, || {
        let db = db.clone();
        async move {
            let (st, err): (String, Option<String>) =
                sqlx::query_as("select status, last_error from outbox where id = $1").bind(id).fetch_one(&db).await.unwrap();
            (st == "failed").then_some(err)
        }
    })
    .await;
    assert!(err.unwrap_or_default().contains("opted out"));
    // START opts back in, answered once.
    smsc.deliver("s4", "4915177777777", "START", None).await;
    let again = smsc.wait(10, |e| e["event"] == "submit_sm").await;
    assert!(again["message"].as_str().unwrap().contains("resubscribed"));
    th.stop().await;
}

#[tokio::test]
async fn malformed_pdus_get_generic_nack_or_a_clean_reconnect() {
    let mut smsc = Smsc::start().await;
    let th = sms_hub(smsc.port, "enquire_link_secs = 1").await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    // An idle bind is kept alive with enquire_link.
    smsc.wait(10, |e| e["event"] == "enquire_link").await;
    // An unknown command id: generic_nack with ESME_RINVCMDID, the bind stays.
    smsc.cmd(json!({ "cmd": "raw", "hex": "00000010000000770000000000000063" })).await;
    let nack = smsc.wait(10, |e| e["event"] == "generic_nack").await;
    assert_eq!(nack["status"], 3);
    assert_eq!(smsc.deliver("ok1", "4915155555555", "still there", None).await["status"], 0);
    // A length no PDU can have: the connection is dropped and the bind comes back.
    smsc.cmd(json!({ "cmd": "raw", "hex": "0000000500" })).await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    assert_eq!(smsc.deliver("ok2", "4915155555555", "and again", None).await["status"], 0);
    // An oversized body (command_length 16 MiB): the same.
    smsc.cmd(json!({ "cmd": "raw", "hex": "00ffffff000000050000000000000064" })).await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    let (_, bodies) = interaction_of(th.hub().db(), "+4915155555555").await.unwrap();
    assert_eq!(bodies, vec!["still there", "and again"]);
    th.stop().await;
}

#[tokio::test]
async fn the_bind_lease_moves_to_another_node() {
    let mut smsc = Smsc::start().await;
    let db = TestDb::new().await;
    // A node that died holding the lease: nobody binds until it expires.
    let dead = Uuid::new_v4();
    sqlx::query("insert into leases (name, holder, token, expires_at) values ('smpp:sms-main', $1, 1, now() + interval '2 seconds')")
        .bind(dead)
        .execute(&db.pool)
        .await
        .unwrap();
    let t1 = channel(smsc.port, "");
    let t2 = t1.clone();
    let started = std::time::Instant::now();
    let a = spawn_node_with(&db, move |s| s.channels.push(t1)).await;
    let b = spawn_node_with(&db, move |s| s.channels.push(t2)).await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    assert!(started.elapsed() >= Duration::from_millis(1500), "bound before the dead node's lease expired");
    let holder: Uuid = sqlx::query_scalar("select holder from leases where name = 'smpp:sms-main'").fetch_one(&db.pool).await.unwrap();
    assert!(holder == a.hub.node_id() || holder == b.hub.node_id());
    smsc.drain(1000).await;
    assert_eq!(smsc.log.iter().filter(|e| e["event"] == "bound").count(), 1, "one node holds the bind");
    let (holder_node, other) = if holder == a.hub.node_id() { (a, b) } else { (b, a) };
    // The holder goes away: the other node binds within seconds.
    let t = std::time::Instant::now();
    holder_node.stop().await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    assert!(t.elapsed() < Duration::from_secs(6), "takeover took {:?}", t.elapsed());
    let now_holder: Uuid = sqlx::query_scalar("select holder from leases where name = 'smpp:sms-main'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(now_holder, other.hub.node_id());
    assert_eq!(smsc.deliver("l1", "4915144444444", "hello other node", None).await["status"], 0);
    other.stop().await;
}

/// A node whose bind lease went to another node (it was paused past the lease, say) while
/// its bind is still up does not store what arrives on it: deliver_sm is answered with a
/// temporary error, so the SMSC redelivers to the holder, and nothing is stored twice.
#[tokio::test]
async fn a_node_that_lost_the_bind_lease_does_not_store_what_arrives_on_its_bind() {
    let mut smsc = Smsc::start().await;
    // Renewed every 10 s: the lease below is taken and given back between two renewals.
    let mut table = channel(smsc.port, "");
    table.as_table_mut().expect("table").insert("lease_secs".into(), toml::Value::Integer(30));
    let hub = spawn_hub_with(move |s| s.channels.push(table)).await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    let db = hub.db.pool.clone();
    let take = |holder: Uuid| {
        let db = db.clone();
        async move {
            sqlx::query("update leases set holder = $1, token = token + 1 where name = 'smpp:sms-main'")
                .bind(holder)
                .execute(&db)
                .await
                .unwrap();
        }
    };
    take(Uuid::new_v4()).await;
    let refused = smsc.deliver("fenced", "4915155555555", "hello from a fenced bind", None).await;
    assert_eq!(refused["status"], 0x64, "RX_T_APPN (redeliver later): {refused}");
    assert!(interaction_of(&db, "+4915155555555").await.is_none(), "stored by a node without the lease");
    // The lease is this node's again: the redelivery is stored, once.
    take(hub.hub().node_id()).await;
    assert_eq!(smsc.deliver("again", "4915155555555", "hello from a fenced bind", None).await["status"], 0);
    let (_, bodies) = interaction_of(&db, "+4915155555555").await.expect("stored");
    assert_eq!(bodies, ["hello from a fenced bind"]);
    hub.stop().await;
}

#[tokio::test]
async fn the_send_api_checks_the_destination_and_counts_parts() {
    let mut smsc = Smsc::start().await;
    let th = sms_hub(smsc.port, "").await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    let marketer = user(&th, "mia", &[Role::Marketer], None).await;
    for bad in ["12345", "+49 15x 1234567", "0151 1234567"] {
        let (st, b) = marketer.call("POST", "/sms/v1/sms-main/messages", Some(json!({ "to": bad, "body": "hi" }))).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {b}");
        assert_eq!(b["field"], "to", "{b}");
    }
    let (st, b) = marketer.call("POST", "/sms/v1/sms-main/messages", Some(json!({ "to": "+4915166666666", "body": "" }))).await;
    assert_eq!((st, b["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("body")));
    smsc.drain(300).await;
    assert!(smsc.submits().is_empty(), "nothing sent for refused requests");
    let (st, b) = marketer
        .call(
            "POST",
            "/sms/v1/sms-main/messages",
            Some(json!({ "to": "+49 151 66666666", "body": "Your table is booked €", "idempotency_key": "k1" })),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{b}");
    assert_eq!(
        (b["to"].as_str(), b["segments"]["encoding"].as_str(), b["segments"]["units"].as_u64()),
        (Some("+4915166666666"), Some("gsm7"), Some(23))
    );
    let sub = smsc.wait(10, |e| e["event"] == "submit_sm").await;
    assert_eq!(sub["dest"], "4915166666666");
    // The same idempotency key again: no second message.
    let (st, _) = marketer
        .call(
            "POST",
            "/sms/v1/sms-main/messages",
            Some(json!({ "to": "+4915166666666", "body": "Your table is booked €", "idempotency_key": "k1" })),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    smsc.drain(1000).await;
    assert_eq!(smsc.submits().len(), 1);
    // The reply-box counter.
    let (st, seg) = marketer.call("GET", "/sms/v1/sms-main/segments?text=%D0%BF%D1%80%D0%B8%D0%B2%D0%B5%D1%82", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(seg, json!({ "encoding": "ucs2", "parts": 1, "units": 6, "remaining": 64 }));
    let (st, _) = Client::anonymous(&th.url).call("GET", "/sms/v1/sms-main/segments?text=x", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    th.stop().await;
}

/// Twilio's webhook signature, computed independently of the hub's code path.
fn twilio_sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let owned: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    switchboard_sms::http::twilio_signature(token.as_bytes(), url, &owned)
}

fn form(params: &[(&str, &str)]) -> Vec<u8> {
    params.iter().map(|(k, v)| format!("{}={}", k, v.replace('+', "%2B").replace(' ', "+"))).collect::<Vec<_>>().join("&").into_bytes()
}

#[tokio::test]
async fn http_provider_sends_and_takes_signed_webhooks() {
    // The provider's send endpoint: records each request, answers with a message id.
    let received: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let rec = received.clone();
    let provider = axum::Router::new().route(
        "/2010-04-01/Messages.json",
        axum::routing::post(move |body: String| {
            let rec = rec.clone();
            async move {
                rec.lock().unwrap().push(body);
                axum::Json(json!({ "sid": "SM0000000000000000000000000000abcd", "status": "queued" }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, provider).await.unwrap() });
    let table: toml::Value = toml::from_str(&format!(
        "type = \"http\"\nname = \"twilio\"\nfrom = \"+4930123456\"\nsend_url = \"http://{provider_addr}/2010-04-01/Messages.json\"\n\
         fields = {{ To = \"{{to}}\", From = \"{{from}}\", Body = \"{{text}}\" }}\nusername = \"AC1\"\npassword = \"tok\"\n\
         response_id_pointer = \"/sid\"\nsignature = \"twilio\"\nsignature_secret = \"tok\"\nsignature_header = \"X-Twilio-Signature\"\n\
         public_url = \"https://hub.example.com\""
    ))
    .unwrap();
    let th = spawn_hub_with(move |s| s.channels.push(table)).await;
    let db = th.hub().db().clone();
    let client = reqwest::Client::new();
    let inbound_url = "https://hub.example.com/sms/v1/twilio/inbound";
    let params = [("From", "+4915122223333"), ("To", "+4930123456"), ("Body", "Hello from HTTP"), ("MessageSid", "SMin1")];
    let post = |path: &'static str, body: Vec<u8>, sig: String| {
        let (client, url) = (client.clone(), format!("{}{path}", th.url));
        async move {
            client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("X-Twilio-Signature", sig)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // A bad signature: refused, nothing stored.
    let st = post("/sms/v1/twilio/inbound", form(&params), twilio_sign("wrong", inbound_url, &params)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let st = post("/sms/v1/twilio/inbound", form(&params), String::new()).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(interaction_of(&db, "+4915122223333").await.is_none());
    // Signed: stored once, even when the provider retries.
    for _ in 0..2 {
        let st = post("/sms/v1/twilio/inbound", form(&params), twilio_sign("tok", inbound_url, &params)).await;
        assert_eq!(st, StatusCode::OK);
    }
    let (iid, bodies) = interaction_of(&db, "+4915122223333").await.expect("stored");
    assert_eq!(bodies, vec!["Hello from HTTP"]);
    // A missing field is named.
    let partial = [("To", "+4930123456"), ("Body", "x")];
    let st = post("/sms/v1/twilio/inbound", form(&partial), twilio_sign("tok", inbound_url, &partial)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Outbound: the configured request reaches the provider; the signed status callback
    // marks it delivered, and a late "sent" does not move it back.
    let mut conn = db.acquire().await.unwrap();
    let id = switchboard_core::outbox::enqueue_tx(
        &mut conn,
        switchboard_core::outbox::NewOutbound {
            idempotency_key: "http-1".into(),
            channel: switchboard_core::Channel::Sms,
            interaction_id: Some(iid),
            message_id: None,
            recipient: "+4915122223333".into(),
            subject: None,
            body: "Your answer, über HTTP".into(),
            metadata: json!({}),
        },
    )
    .await
    .unwrap();
    drop(conn);
    let body = eventually(10, || {
        let r = received.clone();
        async move { r.lock().unwrap().first().cloned() }
    })
    .await;
    assert!(body.contains("To=%2B4915122223333") && body.contains("From=%2B4930123456") && body.contains("Body=Your+answer"), "{body}");
    eventually(10, || {
        let db = db.clone();
        async move {
            let s: Option<String> =
                sqlx::query_scalar("select status from sms_sent where outbox_id = $1").bind(id).fetch_optional(&db).await.unwrap();
            (s.as_deref() == Some("submitted")).then_some(())
        }
    })
    .await;
    let status_url = "https://hub.example.com/sms/v1/twilio/status";
    for (word, want) in [("delivered", "delivered"), ("sent", "delivered")] {
        let p = [("MessageSid", "SM0000000000000000000000000000abcd"), ("MessageStatus", word)];
        let st = post("/sms/v1/twilio/status", form(&p), twilio_sign("tok", status_url, &p)).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let s: String = sqlx::query_scalar("select status from sms_sent where outbox_id = $1").bind(id).fetch_one(&db).await.unwrap();
        assert_eq!(s, want);
    }
    // A forged status callback is refused.
    let p = [("MessageSid", "SM0000000000000000000000000000abcd"), ("MessageStatus", "failed")];
    assert_eq!(post("/sms/v1/twilio/status", form(&p), "AAAA".into()).await, StatusCode::FORBIDDEN);
    th.stop().await;
}

/// The benchmark (`cargo nextest run --test sms_e2e --run-ignored only bench_`; numbers in
/// docs/benchmarks.md): submit_sm throughput of the SMPP session with window 1, 10 and 50
/// against the scripted SMSC, and inbound deliver_sm committed per second through the hub.
#[tokio::test]
#[ignore = "benchmark; run explicitly"]
async fn bench_submit_throughput_and_inbound_ingest() {
    use switchboard_sms::pdu::{Address, ShortMessage};
    use switchboard_sms::session::{InboundHandler, Session, SubmitOutcome};
    struct Nothing;
    #[async_trait::async_trait]
    impl InboundHandler for Nothing {
        async fn deliver_sm(&self, _sm: ShortMessage) -> u32 {
            0
        }
    }
    let mut smsc = Smsc::start_with(&[("SMSC_RECEIPTS", "0"), ("SMSC_QUIET", "1")]).await;
    let n: usize = std::env::var("SMS_BENCH_SUBMITS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    for window in [1u32, 10, 50] {
        let cfg =
            switchboard_sms::SmppConfig::from_toml(channel(smsc.port, &format!("window = {window}\nmax_per_second = 100000"))).unwrap();
        let session = Session::new(format!("bench-{window}"), cfg);
        let (_held_tx, held) = tokio::sync::watch::channel(true);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let runner = {
            let s = session.clone();
            tokio::spawn(async move { s.run(std::sync::Arc::new(Nothing), held, stop).await })
        };
        smsc.wait(10, |e| e["event"] == "bound").await;
        let sm = ShortMessage {
            source: Address { ton: 1, npi: 1, addr: "4930123456".into() },
            dest: Address { ton: 1, npi: 1, addr: "4915100000001".into() },
            short_message: b"benchmark message".to_vec(),
            ..Default::default()
        };
        // `window` senders, each submitting one after another: the window is kept full and
        // each submit's time is its own submit_sm → submit_sm_resp (no queueing for a slot).
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut tasks = tokio::task::JoinSet::new();
        let senders = window as usize;
        for k in 0..senders {
            let (s, sm) = (session.clone(), sm.clone());
            let mine = n / senders + usize::from(k < n % senders);
            tasks.spawn(async move {
                let mut out = Vec::with_capacity(mine);
                for _ in 0..mine {
                    let t = std::time::Instant::now();
                    let accepted = matches!(s.submit(&sm, deadline).await, SubmitOutcome::Accepted(_));
                    out.push((accepted, t.elapsed()));
                }
                out
            });
        }
        let mut latencies = Vec::with_capacity(n);
        let mut accepted = 0;
        while let Some(r) = tasks.join_next().await {
            for (ok, took) in r.unwrap() {
                accepted += usize::from(ok);
                latencies.push(took);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1];
        println!(
            "BENCH submit_sm window {window:>2}: {n} in {secs:.2} s = {:.0}/s; submit->resp p50 {:.2} ms, p99 {:.2} ms",
            n as f64 / secs,
            pct(0.50).as_secs_f64() * 1000.0,
            pct(0.99).as_secs_f64() * 1000.0
        );
        assert_eq!(accepted, n, "every submit accepted");
        let _ = stop_tx.send(true);
        runner.await.unwrap();
        smsc.wait(10, |e| e["event"] == "unbind").await;
    }

    // Inbound: deliver_sm from 200 numbers, each answered after its commit.
    let th = sms_hub(smsc.port, "").await;
    smsc.wait(10, |e| e["event"] == "bound").await;
    let count: usize = std::env::var("SMS_BENCH_INBOUND").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    smsc.cmd(json!({ "cmd": "flood", "count": count, "senders": 200 })).await;
    let done = smsc.wait(300, |e| e["event"] == "flood_done").await;
    let ms = done["ms"].as_f64().unwrap();
    println!("BENCH inbound deliver_sm committed: {count} in {:.2} s = {:.0}/s", ms / 1000.0, count as f64 * 1000.0 / ms);
    assert_eq!(done["ok"].as_u64().unwrap() as usize, count);
    let stored: i64 =
        sqlx::query_scalar("select count(*) from messages m join interactions i on i.id = m.interaction_id where i.channel = 'sms'")
            .fetch_one(th.hub().db())
            .await
            .unwrap();
    assert_eq!(stored as usize, count, "each committed once");
    th.stop().await;
}

/// `bind = "tx_rx"`: a bind_transmitter sends, a bind_receiver takes the MOs and receipts;
/// each connection reconnects on its own (dropping the receiver leaves the transmitter
/// bound), and both unbind on shutdown.
#[tokio::test]
async fn separate_transmitter_and_receiver_binds() {
    let mut smsc = Smsc::start().await;
    let th = sms_hub(smsc.port, "bind = \"tx_rx\"\n").await;
    let mut kinds = vec![
        smsc.wait(10, |e| e["event"] == "bound").await["kind"].as_str().unwrap().to_string(),
        smsc.wait(10, |e| e["event"] == "bound").await["kind"].as_str().unwrap().to_string(),
    ];
    kinds.sort();
    assert_eq!(kinds, ["receiver", "transmitter"]);
    let db = th.hub().db().clone();

    // A mobile-originated message arrives on the receiver, committed before the answer.
    let resp = smsc.deliver("mo1", "4915177777777", "Hello over RX", None).await;
    assert_eq!((resp["status"].as_u64(), resp["bind"].as_str()), (Some(0), Some("receiver")));
    let (iid, bodies) = interaction_of(&db, "+4915177777777").await.expect("interaction committed before deliver_sm_resp");
    assert_eq!(bodies, vec!["Hello over RX"]);

    // A text goes out on the transmitter; its receipt comes back on the receiver.
    let sender = user(&th, "mia", &[Role::Marketer], None).await;
    let (st, b) = sender
        .call("POST", "/sms/v1/sms-main/messages", Some(json!({ "to": "+4915177777777", "body": "Sent over TX", "kind": "service" })))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{b}");
    let outbox_id: Uuid = b["id"].as_str().unwrap().parse().unwrap();
    let sub = smsc.wait(10, |e| e["event"] == "submit_sm").await;
    assert_eq!((sub["bind"].as_str(), sub["message"].as_str()), (Some("transmitter"), Some("Sent over TX")));
    let receipt = smsc.wait(10, |e| e["event"] == "receipt_resp").await;
    assert_eq!((receipt["status"].as_u64(), receipt["bind"].as_str()), (Some(0), Some("receiver")));
    let status_of = |db: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("select status from sms_sent where outbox_id = $1")
            .bind(outbox_id)
            .fetch_optional(&db)
            .await
            .unwrap()
    };
    eventually(10, || {
        let db = db.clone();
        async move { (status_of(db).await.as_deref() == Some("delivered")).then_some(()) }
    })
    .await;

    // The receiver drops: only it reconnects; the transmitter stays bound and sends.
    smsc.cmd(json!({ "cmd": "drop", "kind": "receiver" })).await;
    let again = smsc.wait(15, |e| e["event"] == "bound").await;
    assert_eq!(again["kind"], "receiver");
    let (st, b) = sender
        .call("POST", "/sms/v1/sms-main/messages", Some(json!({ "to": "+4915177777777", "body": "Still on TX", "kind": "service" })))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{b}");
    let sub = smsc.wait(10, |e| e["event"] == "submit_sm").await;
    assert_eq!((sub["bind"].as_str(), sub["message"].as_str()), (Some("transmitter"), Some("Still on TX")));
    let resp = smsc.deliver("mo2", "4915177777777", "Back on RX", None).await;
    assert_eq!((resp["status"].as_u64(), resp["bind"].as_str()), (Some(0), Some("receiver")));
    let (iid2, bodies) = interaction_of(&db, "+4915177777777").await.unwrap();
    assert_eq!((iid2, bodies.len()), (iid, 2), "the conversation continues");
    let binds = smsc.log.iter().filter(|e| e["event"] == "bound").count();
    assert_eq!(binds, 3, "the transmitter never rebound: {:?}", smsc.log);

    th.stop().await;
    smsc.wait(10, |e| e["event"] == "unbind").await;
    smsc.wait(10, |e| e["event"] == "unbind").await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kannel (Debian `kannel`: bearerbox + smsbox) as the HTTP provider: its smsbox's
/// `sendsms` takes our texts (the `http` adapter with `method = "GET"`, `body = "query"`),
/// bearerbox's SMPP link to the scripted SMSC carries them out and brings back the
/// incoming text and the delivery receipt, and smsbox calls our webhooks by GET: `get-url`
/// for the incoming text, `dlr-url` for the delivery report (`signature = "url_token"`).
#[tokio::test]
async fn kannel_sends_receives_and_reports_delivery() {
    let (bearerbox, smsbox) = ("/usr/sbin/bearerbox", "/usr/sbin/smsbox");
    if !std::path::Path::new(bearerbox).exists() || !std::path::Path::new(smsbox).exists() {
        eprintln!(
            "SKIP kannel_sends_receives_and_reports_delivery: Kannel is not installed (apt-get install kannel; scripts/test.sh does)"
        );
        return;
    }
    let mut smsc = Smsc::start().await;
    let (hub_port, admin_port, box_port, sendsms_port) = (free_port(), free_port(), free_port(), free_port());
    let token = "kannel-hook-token";
    let hub_base = format!("http://127.0.0.1:{hub_port}");
    let table: toml::Value = toml::from_str(&format!(
        r#"type = "http"
name = "kannel"
from = "4930123456"
send_url = "http://127.0.0.1:{sendsms_port}/cgi-bin/sendsms"
method = "GET"
body = "query"
signature = "url_token"
signature_secret = "{token}"
id_field = "MessageSid"
[fields]
username = "hub"
password = "hubpass"
to = "{{to_digits}}"
from = "{{from}}"
text = "{{text}}"
dlr-mask = "3"
dlr-url = "{hub_base}/sms/v1/kannel/status?token={token}&MessageSid={{id}}&MessageStatus=%d"
"#
    ))
    .unwrap();
    let th = spawn_hub_with(move |s| {
        s.http.bind = format!("127.0.0.1:{hub_port}");
        s.channels.push(table);
    })
    .await;
    let db = th.hub().db().clone();

    let dir = tempfile_dir("sb-kannel");
    let conf = format!(
        r#"group = core
admin-port = {admin_port}
admin-password = adminpass
smsbox-port = {box_port}
box-allow-ip = 127.0.0.1
log-file = "{dir}/bearerbox.log"
log-level = 1
access-log = "{dir}/access.log"
dlr-storage = internal

group = smsc
smsc = smpp
smsc-id = scripted
host = 127.0.0.1
port = {smpp_port}
transceiver-mode = true
smsc-username = switchboard
smsc-password = secret
system-type = ""
source-addr-ton = 1
source-addr-npi = 1
dest-addr-ton = 1
dest-addr-npi = 1
msg-id-type = 0x01
reconnect-delay = 1
log-file = "{dir}/smsc.log"

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {box_port}
sendsms-port = {sendsms_port}
sendsms-interface = 127.0.0.1
log-file = "{dir}/smsbox.log"
log-level = 1

group = sendsms-user
username = hub
password = hubpass
user-allow-ip = 127.0.0.1

group = sms-service
keyword = default
catch-all = true
max-messages = 0
get-url = "{hub_base}/sms/v1/kannel/inbound?token={token}&From=%p&To=%P&Body=%a&MessageSid=%I"
"#,
        dir = dir.display(),
        smpp_port = smsc.port,
    );
    std::fs::write(dir.join("kannel.conf"), conf).unwrap();
    let spawn_box = |bin: &str| {
        tokio::process::Command::new(bin)
            .arg(dir.join("kannel.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("kannel box")
    };
    let mut bb = spawn_box(bearerbox);
    let bound = smsc.wait(20, |e| e["event"] == "bound").await;
    assert_eq!(bound["kind"], "transceiver");
    let mut sb = spawn_box(smsbox);

    // Incoming: the SMSC's deliver_sm reaches the hub through Kannel's get-url.
    let resp = smsc.deliver("k1", "4915177777777", "Hello via Kannel", None).await;
    assert_eq!(resp["status"], 0);
    let (iid, bodies) = eventually(20, || {
        let db = db.clone();
        async move { interaction_of(&db, "+4915177777777").await.filter(|(_, b)| !b.is_empty()) }
    })
    .await;
    assert_eq!(bodies, vec!["Hello via Kannel"]);

    // Outgoing: the send API → sendsms → submit_sm at the SMSC; its receipt comes back to
    // Kannel, whose dlr-url marks the text delivered.
    let sender = user(&th, "mia", &[Role::Marketer], None).await;
    let (st, b) = sender
        .call("POST", "/sms/v1/kannel/messages", Some(json!({ "to": "+4915177777777", "body": "Reply via Kannel", "kind": "service" })))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{b}");
    let outbox_id: Uuid = b["id"].as_str().unwrap().parse().unwrap();
    let sub = smsc.wait(30, |e| e["event"] == "submit_sm").await;
    assert_eq!((sub["dest"].as_str(), sub["message"].as_str()), (Some("4915177777777"), Some("Reply via Kannel")));
    let final_status = eventually(30, || {
        let db = db.clone();
        async move {
            let s: Option<String> =
                sqlx::query_scalar("select status from sms_sent where outbox_id = $1").bind(outbox_id).fetch_optional(&db).await.unwrap();
            s.filter(|s| s == "delivered")
        }
    })
    .await;
    assert_eq!(final_status, "delivered");
    let _ = iid;

    // A get-url call without the token is refused and stores nothing.
    let r = reqwest::get(format!("{hub_base}/sms/v1/kannel/inbound?From=%2B4915100000001&Body=forged")).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(interaction_of(&db, "+4915100000001").await.is_none());

    let _ = sb.kill().await;
    let _ = bb.kill().await;
    th.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(prefix: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
