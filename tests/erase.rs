//! Erasure of a customer's personal data across the hub (CRM, chat, voice recordings) and
//! the recording endpoint the CRM page links to, through a real hub with a web chat and
//! a voice channel.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use support::*;
use switchboard_core::Role;
use uuid::Uuid;

/// A hub with a `webchat` channel and a `sip` channel (recordings under `dir`).
async fn hub_with_channels(dir: &Path) -> TestHub {
    let chat: toml::Value = toml::Value::Table(
        format!("type = \"webchat\"\nname = \"web\"\nattachments_dir = \"{}\"\n", dir.join("attachments").display())
            .parse()
            .expect("chat toml"),
    );
    let voice: toml::Value = toml::Value::Table(
        format!(
            r#"
type = "sip"
name = "phones"
udp_listen = "127.0.0.1:0"
tcp_listen = "127.0.0.1:0"
public_ip = "127.0.0.1"
rtp_port_min = 0
recordings_dir = "{}"
voicemail_dir = "{}"
[registrar]
realm = "switchboard"
"#,
            dir.join("recordings").display(),
            dir.join("voicemail").display()
        )
        .parse()
        .expect("voice toml"),
    );
    spawn_hub_with(|s| {
        s.channels.push(chat);
        s.channels.push(voice);
    })
    .await
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sb-erase-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(d.join("recordings")).expect("dir");
    d
}

async fn count(th: &TestHub, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(th.hub().db()).await.expect(sql)
}

/// A closed voice interaction of `customer` answered by `agent` with a recording file
/// (as the voice adapter leaves it: path in the metadata and in the `call_ended` event).
async fn recorded_call(th: &TestHub, customer: Uuid, agent: Option<Uuid>, from: &str, path: &Path) -> Uuid {
    std::fs::write(path, b"RIFF\0\0\0\0WAVEfmt the caller's voice").expect("recording file");
    let id: Uuid = sqlx::query_scalar(
        "insert into interactions (channel, conversation_key, customer_id, customer_address, agent_id, status, metadata, answered_at, closed_at)
         values ('voice', $4 || '-1@pbx', $1, $4, $2, 'closed', jsonb_build_object('recording', $3::text, 'ended_by', 'caller'), now(), now())
         returning id",
    )
    .bind(customer)
    .bind(agent)
    .bind(path.display().to_string())
    .bind(from)
    .fetch_one(th.hub().db())
    .await
    .expect("voice interaction");
    sqlx::query("insert into interaction_events (interaction_id, kind, data) values ($1, 'call_ended', jsonb_build_object('call_id', 'c1', 'by', 'caller', 'recording', $2::text))")
        .bind(id)
        .bind(path.display().to_string())
        .execute(th.hub().db())
        .await
        .expect("event");
    id
}

/// The route table is registered when the adapters run; wait until the hub knows it.
async fn wait_for_routes(sup: &Client) {
    eventually(10, || {
        let sup = sup.clone();
        async move {
            let (st, _) = sup.call("GET", &format!("/api/v1/recordings/{}", Uuid::new_v4()), None).await;
            (st == StatusCode::NOT_FOUND).then_some(())
        }
    })
    .await;
    // A 404 for an unknown route looks the same; check the document lists it.
    let (_, doc) = sup.call("GET", "/api/openapi.json", None).await;
    assert!(doc["paths"].get("/api/v1/recordings/{interaction_id}").is_some(), "recording route documented");
}

#[tokio::test]
async fn erase_removes_chat_visitor_attachments_and_recordings() {
    let dir = temp_dir();
    let th = hub_with_channels(&dir).await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default", "wrap_up_secs": 0 })).await;
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    wait_for_routes(&sup).await;

    // A chat with the pre-chat form filled in and an uploaded file.
    let http = reqwest::Client::new();
    let s: Value = http
        .post(format!("{}/chat/v1/sessions", th.url))
        .json(&json!({ "name": "Zoe Zed", "email": "zoe@example.com", "language": "es" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = s["token"].as_str().expect("token").to_string();
    let conv: Uuid = s["conversation_id"].as_str().unwrap().parse().unwrap();
    let text = "Zoe Zed, passport X1234567";
    let r = http
        .post(format!("{}/chat/v1/attachments?filename=passport.txt", th.url))
        .header("x-chat-token", &token)
        .header("content-type", "text/plain")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let att: Value = r.json().await.unwrap();
    let att_file = dir.join("attachments").join(att["sha256"].as_str().unwrap());
    assert!(att_file.exists());
    let r = http
        .post(format!("{}/chat/v1/messages", th.url))
        .header("x-chat-token", &token)
        .json(&json!({ "client_msg_id": "m1", "body": "Here is my passport", "attachments": [att["id"]] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let customer: Uuid = sqlx::query_scalar("select customer_id from interactions where channel = 'chat' and conversation_key = $1")
        .bind(conv.to_string())
        .fetch_one(th.hub().db())
        .await
        .expect("chat interaction with a customer");

    // A recorded call of the same customer, and one of somebody else (kept).
    let rec = dir.join("recordings").join("call-1.wav");
    let call = recorded_call(&th, customer, None, "+34911222333", &rec).await;
    let (_, other) = sup.call("POST", "/api/v1/customers", Some(json!({ "name": "Other Person" }))).await;
    let other_id: Uuid = other["id"].as_str().expect("other customer").parse().unwrap();
    let other_rec = dir.join("recordings").join("call-2.wav");
    recorded_call(&th, other_id, None, "+34600000000", &other_rec).await;
    let (st, r) = sup.call("GET", &format!("/api/v1/recordings/{call}"), None).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    // A duplicate record of the same person, merged in (the merge is audited with its name).
    let (st, dup) = sup.call("POST", "/api/v1/customers", Some(json!({ "name": "Zoe Z. Duplicate" }))).await;
    assert_eq!(st, StatusCode::CREATED, "{dup}");
    let (st, r) = sup.call("POST", &format!("/api/v1/customers/{customer}/merge"), Some(json!({ "other_id": dup["id"] }))).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(count(&th, "select count(*) from audit_log where action = 'customer.merge' and details::text like '%Zoe%'").await, 1);

    let (st, r) = sup.call("POST", &format!("/api/v1/customers/{customer}/erase"), None).await;
    assert_eq!(st, StatusCode::OK, "{r}");

    // Files are gone from disk; the other customer's recording stays.
    assert!(!att_file.exists(), "attachment file deleted");
    assert!(!rec.exists(), "recording file deleted");
    assert!(other_rec.exists(), "another customer's recording stays");
    // Rows hold no name, email, body or file path.
    assert_eq!(
        count(&th, "select count(*) from chat_visitors where display_name is not null or email is not null or language is not null").await,
        0
    );
    assert_eq!(count(&th, &format!("select count(*) from chat_attachments where conversation_id = '{conv}'")).await, 0);
    for needle in ["Zoe", "zoe@example.com", "passport", "call-1.wav", "911222333"] {
        let hits = count(
            &th,
            &format!(
                "select (select count(*) from chat_visitors v where v::text ilike '%{needle}%')
                      + (select count(*) from chat_attachments a where a::text ilike '%{needle}%')
                      + (select count(*) from messages m where m::text ilike '%{needle}%')
                      + (select count(*) from interactions i where i::text ilike '%{needle}%')
                      + (select count(*) from interaction_events e where e::text ilike '%{needle}%')
                      + (select count(*) from customers c where c::text ilike '%{needle}%')
                      + (select count(*) from customer_identities c where c::text ilike '%{needle}%')
                      + (select count(*) from audit_log l where l::text ilike '%{needle}%')"
            ),
        )
        .await;
        assert_eq!(hits, 0, "{needle} left in the database");
    }
    // The rows that reports read survive, anonymous; the erase is audited.
    assert_eq!(count(&th, &format!("select count(*) from interactions where customer_id = '{customer}'")).await, 2);
    assert_eq!(
        count(&th, &format!("select count(*) from interaction_events where interaction_id = '{call}' and kind = 'call_ended'")).await,
        1
    );
    assert_eq!(
        count(
            &th,
            &format!(
                "select count(*) from audit_log where action = 'customer.erase' and target_id = '{customer}' and actor_user_id is not null"
            )
        )
        .await,
        1
    );
    // Events stay append-only outside an erase.
    sqlx::query("update interaction_events set kind = 'tampered' where interaction_id = $1")
        .bind(call)
        .execute(th.hub().db())
        .await
        .unwrap();
    assert_eq!(count(&th, "select count(*) from interaction_events where kind = 'tampered'").await, 0);

    // API reads return nothing personal.
    let (_, export) = sup.call("GET", &format!("/api/v1/customers/{customer}/privacy-export"), None).await;
    let export = export.to_string();
    for needle in ["Zoe", "zoe@example.com", "passport", "recordings", "911222333"] {
        assert!(!export.contains(needle), "{needle} in {export}");
    }
    let (st, _) = sup.call("GET", &format!("/api/v1/recordings/{call}"), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _, _) = sup.raw("GET", att["url"].as_str().unwrap(), None, vec![]).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, found) = sup.call("GET", "/api/v1/customers?q=zoe", None).await;
    assert!(!found.to_string().contains(&customer.to_string()), "{found}");
    th.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn recordings_are_served_over_http_to_who_may_hear_them() {
    let dir = temp_dir();
    let th = hub_with_channels(&dir).await;
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    let alice = user(&th, "alice", &[Role::Agent], Some(json!({}))).await;
    let bob = user(&th, "bob", &[Role::Agent], Some(json!({}))).await;
    let marketer = user(&th, "mia", &[Role::Marketer], None).await;
    wait_for_routes(&sup).await;
    let (_, c) = sup.call("POST", "/api/v1/customers", Some(json!({ "name": "Caller" }))).await;
    let customer: Uuid = c["id"].as_str().expect("customer").parse().unwrap();
    let rec = dir.join("recordings").join("call-9.wav");
    let call = recorded_call(&th, customer, alice.agent_id, "+34911222333", &rec).await;

    // The CRM timeline links the endpoint, never the file path.
    let (st, t) = sup.call("GET", &format!("/api/v1/customers/{customer}/timeline"), None).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(t["items"][0]["recording_url"], format!("/api/v1/recordings/{call}"));
    assert!(!t.to_string().contains("call-9.wav"), "{t}");
    let url = t["items"][0]["recording_url"].as_str().unwrap().to_string();

    for (who, client, want) in [
        ("supervisor", &sup, StatusCode::OK),
        ("handling agent", &alice, StatusCode::OK),
        ("other agent", &bob, StatusCode::FORBIDDEN),
        ("marketer", &marketer, StatusCode::FORBIDDEN),
    ] {
        let (st, body, ct) = client.raw("GET", &url, None, vec![]).await;
        assert_eq!(st, want, "{who}: {body}");
        if want == StatusCode::OK {
            assert_eq!(ct.as_deref(), Some("audio/wav"), "{who}");
        }
    }
    let (st, _, _) = Client::anonymous(&th.url).raw("GET", &url, None, vec![]).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // The player seeks: a byte range is answered 206 with exactly those bytes.
    let full = sup.http.get(format!("{}{url}", th.url)).send().await.expect("full").bytes().await.expect("bytes");
    let r = sup.http.get(format!("{}{url}", th.url)).header("range", "bytes=4-11").send().await.expect("range");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], format!("bytes 4-11/{}", full.len()).as_str());
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(&r.bytes().await.expect("bytes")[..], &full[4..12]);
    let r = sup.http.get(format!("{}{url}", th.url)).header("range", format!("bytes={}-", full.len())).send().await.expect("past the end");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // A path outside the recording directories is never served.
    sqlx::query("update interactions set metadata = jsonb_build_object('recording', '/etc/passwd') where id = $1")
        .bind(call)
        .execute(th.hub().db())
        .await
        .unwrap();
    let (st, _, _) = sup.raw("GET", &url, None, vec![]).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = sup.call("GET", "/api/v1/recordings/not-a-uuid", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    th.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn erase_reaches_the_email_and_sms_channels() {
    let dir = temp_dir();
    let att_dir = dir.join("mail-attachments");
    std::fs::create_dir_all(&att_dir).expect("dir");
    // Peers that are not there: the channels retry in the background; erasure needs none.
    let email: toml::Value = toml::from_str(&format!(
        "type = \"email\"\nname = \"support-mail\"\naddress = \"support@shop.example\"\nattachments_dir = \"{}\"\n\
         [imap]\nhost = \"127.0.0.1\"\nport = 1\nsecurity = \"plain\"\nusername = \"u\"\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = 1\nsecurity = \"plain\"\n",
        att_dir.display()
    ))
    .expect("email toml");
    let sms: toml::Value = toml::from_str(
        "type = \"smpp\"\nname = \"sms-main\"\nhost = \"127.0.0.1\"\nport = 1\nsystem_id = \"switchboard\"\npassword = \"secret\"\n\
         source_address = \"4930123456\"\nreconnect_min_ms = 1000\nreconnect_max_ms = 5000\n",
    )
    .expect("sms toml");
    let th = spawn_hub_with(|s| {
        s.channels.push(email);
        s.channels.push(sms);
    })
    .await;
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    let db = th.hub().db().clone();
    let (st, c) = sup
        .call(
            "POST",
            "/api/v1/customers",
            Some(json!({ "name": "Zoe Zed", "identities": [{ "kind": "email", "address": "zoe@example.com" }, { "kind": "phone", "address": "+34911222333" }] })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    let customer: Uuid = c["id"].as_str().unwrap().parse().unwrap();

    // What the channels keep, as they write it: a mail with an attachment in its thread and
    // our reply, a bounce from her address, an SMS reply, a part of a long SMS, a STOP.
    let mail: Uuid = sqlx::query_scalar(
        "insert into interactions (channel, conversation_key, customer_id, customer_address, status, closed_at)
         values ('email', 'email:tok1', $1, 'zoe@example.com', 'closed', now()) returning id",
    )
    .bind(customer)
    .fetch_one(&db)
    .await
    .unwrap();
    let text = "Zoe's passport scan";
    let sha = switchboard_core::auth::digest(text);
    std::fs::write(att_dir.join(&sha), text).unwrap();
    sqlx::query(
        "with r as (insert into email_raw_messages (mailbox, dedupe_id, sender, size_bytes, sha256, raw, status, interaction_id)
                    values ('support-mail', 'd1', 'zoe@example.com', 30, $2, convert_to('From: Zoe Zed <zoe@example.com>', 'UTF8'), 'ingested', $1)
                    returning id)
         insert into email_attachments (raw_id, sha256, size_bytes, content_type, filename) select id, $2, 19, 'text/plain', 'passport.txt' from r",
    )
    .bind(mail)
    .bind(&sha)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "insert into email_raw_messages (mailbox, dedupe_id, sender, size_bytes, sha256, raw, status)
         values ('support-mail', 'd2', 'Zoe@Example.com', 10, $1, convert_to('bounce for zoe@example.com', 'UTF8'), 'bounce')",
    )
    .bind(&sha)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("insert into email_threads (token, mailbox, customer_address, base_subject, cc) values ('tok1', 'support-mail', 'zoe@example.com', 'Zoe''s refund', '{zoe.work@example.com}')")
        .execute(&db)
        .await
        .unwrap();
    let outbox: Uuid = sqlx::query_scalar(
        "insert into outbox (idempotency_key, channel, interaction_id, recipient, body, status, sent_at)
         values ('r1', 'email', $1, 'zoe@example.com', 'Hi Zoe', 'sent', now()) returning id",
    )
    .bind(mail)
    .fetch_one(&db)
    .await
    .unwrap();
    sqlx::query("insert into email_outbound (outbox_id, mailbox, message_id, token, recipients, state) values ($1, 'support-mail', '<r1@shop>', 'tok1', '{zoe@example.com}', 'sent')")
        .bind(outbox)
        .execute(&db)
        .await
        .unwrap();
    let text_msg: Uuid = sqlx::query_scalar(
        "insert into interactions (channel, conversation_key, customer_id, customer_address, status, closed_at)
         values ('sms', 'sms:sms-main:34911222333', $1, '34911222333', 'closed', now()) returning id",
    )
    .bind(customer)
    .fetch_one(&db)
    .await
    .unwrap();
    sqlx::query("insert into sms_sent (outbox_id, channel_name, interaction_id, recipient, parts, status) values (gen_random_uuid(), 'sms-main', $1, '34911222333', 1, 'delivered')")
        .bind(text_msg)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("insert into sms_inbound_parts (channel_name, source, destination, reference, total, seq, body) values ('sms-main', '34911222333', '4930123456', 7, 2, 1, 'Zoe here, my')")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("insert into sms_keyword_messages (dedupe_key, channel_name, phone, keyword, language, customer_id) values ('k1', 'sms-main', '34911222333', 'STOP', 'en', $1)")
        .bind(customer)
        .execute(&db)
        .await
        .unwrap();

    let (st, r) = sup.call("POST", &format!("/api/v1/customers/{customer}/erase"), None).await;
    assert_eq!(st, StatusCode::OK, "{r}");

    assert!(!att_dir.join(&sha).exists(), "mail attachment file deleted");
    assert_eq!(count(&th, "select count(*) from email_attachments").await, 0);
    assert_eq!(count(&th, "select count(*) from email_raw_messages where length(raw) > 0 or sender is not null").await, 0);
    assert_eq!(count(&th, "select count(*) from email_raw_messages").await, 2, "the rows stay: the same mail is never imported again");
    for needle in ["zoe", "911222333", "Zoe here"] {
        for table in [
            "email_raw_messages",
            "email_threads",
            "email_outbound",
            "outbox",
            "sms_sent",
            "sms_inbound_parts",
            "sms_keyword_messages",
            "interactions",
        ] {
            let hits = count(&th, &format!("select count(*) from {table} t where t::text ilike '%{needle}%'")).await;
            assert_eq!(hits, 0, "{needle} left in {table}");
        }
    }
    // The STOP stays as consent evidence (keyword and customer, without the number).
    assert_eq!(
        count(&th, &format!("select count(*) from sms_keyword_messages where keyword = 'STOP' and customer_id = '{customer}'")).await,
        1
    );
    let audit: Value = sqlx::query_scalar("select details from audit_log where action = 'customer.erase'").fetch_one(&db).await.unwrap();
    assert!(audit["channels"]["email"]["files"] == 1 && audit["channels"]["sms"]["rows"].as_u64() >= Some(3), "{audit}");
    th.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
