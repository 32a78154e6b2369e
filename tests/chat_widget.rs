//! End-to-end tests of the web chat channel through a real hub: widget sessions over a
//! real WebSocket, agents through the REST API, the database checked directly.

mod support;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use switchboard_core::Role;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn chat_table(dir: &std::path::Path, extra: &str) -> toml::Value {
    toml::Value::Table(
        format!("type = \"webchat\"\nname = \"web\"\nattachments_dir = \"{}\"\n{extra}", dir.display()).parse().expect("chat toml"),
    )
}

/// A hub with a webchat channel; `extra` adds TOML keys to the channel table.
async fn chat_hub(extra: &str) -> (TestHub, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("sb-chat-test-{}", Uuid::new_v4().simple()));
    let table = chat_table(&dir, extra);
    // The binary builds adapters from settings.channels; check the registry accepts it.
    switchboard::registry().build(0, table.clone()).expect("webchat adapter builds");
    let th = spawn_hub_with(|s| s.channels.push(table)).await;
    (th, dir)
}

async fn setup_agent(th: &TestHub, name: &str, presence: &str) -> Client {
    let agent = user(th, name, &[Role::Agent], Some(json!({ "support": 3 }))).await;
    let (st, b) =
        agent.call("PUT", &format!("/api/v1/agents/{}/presence", agent.agent_id.unwrap()), Some(json!({ "presence": presence }))).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    agent
}

async fn default_queue(th: &TestHub, extra: Value) -> Client {
    let admin = user(th, "root", &[Role::Admin], None).await;
    let mut q = json!({ "name": "default", "wrap_up_secs": 0 });
    if let (Some(o), Some(e)) = (q.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    queue(&admin, q).await;
    admin
}

struct Visitor {
    base: String,
    token: String,
    conversation: Uuid,
    http: reqwest::Client,
}

impl Visitor {
    async fn start(base: &str, body: Value) -> (Visitor, Value) {
        let http = reqwest::Client::new();
        let resp = http.post(format!("{base}/chat/v1/sessions")).json(&body).send().await.expect("session");
        assert!(resp.status().is_success(), "session: {}", resp.status());
        let s: Value = resp.json().await.expect("json");
        let v = Visitor {
            base: base.to_string(),
            token: s["token"].as_str().expect("token").to_string(),
            conversation: s["conversation_id"].as_str().unwrap().parse().unwrap(),
            http,
        };
        (v, s)
    }

    async fn connect(&self, last_seq: i64) -> (Ws, Value) {
        let mut ws = self.raw_socket().await;
        send(&mut ws, json!({ "type": "hello", "v": 1, "token": self.token, "last_seq": last_seq })).await;
        let welcome = next_frame(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (ws, welcome)
    }

    async fn raw_socket(&self) -> Ws {
        let url = format!("{}/chat/v1/ws", self.base.replacen("http", "ws", 1));
        tokio_tungstenite::connect_async(url).await.expect("ws connect").0
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self.http.post(format!("{}{path}", self.base)).header("x-chat-token", &self.token).json(&body).send().await.expect("post");
        let st = r.status();
        (st, r.json().await.unwrap_or(Value::Null))
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("ws send");
}

/// The next JSON text frame (10 s at most).
async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("frame");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
            Message::Close(c) => panic!("socket closed: {c:?}"),
            _ => continue,
        }
    }
}

/// Frames up to and including the first of `kind`.
async fn frames_until(ws: &mut Ws, kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let f = next_frame(ws).await;
        let done = f["type"] == kind;
        out.push(f);
        if done {
            return out;
        }
    }
}

/// Everything the server sends before answering a ping (the hub answers frames in order).
async fn drain(ws: &mut Ws) -> Vec<Value> {
    let nonce = Uuid::new_v4().to_string();
    send(ws, json!({ "type": "ping", "nonce": nonce })).await;
    let mut out = frames_until(ws, "pong").await;
    let pong = out.pop().unwrap();
    assert_eq!(pong["nonce"], nonce.as_str());
    out
}

fn seqs(frames: &[Value]) -> Vec<i64> {
    frames.iter().filter(|f| f["type"] == "message").map(|f| f["seq"].as_i64().unwrap()).collect()
}

async fn accept_offer(agent: &Client) -> Value {
    accept_offer_for(agent, None).await
}

async fn accept_offer_for(agent: &Client, interaction: Option<&str>) -> Value {
    let offer = eventually(15, || {
        let a = agent.clone();
        async move {
            let (_, offers) = a.call("GET", &format!("/api/v1/agents/{}/offers", a.agent_id.unwrap()), None).await;
            offers.as_array().and_then(|l| l.iter().find(|o| interaction.is_none_or(|i| o["interaction_id"] == i)).cloned())
        }
    })
    .await;
    let (st, i) = agent.call("POST", &format!("/api/v1/offers/{}/accept", offer["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK, "{i}");
    i
}

#[tokio::test]
async fn visitor_and_agent_chat_with_typing_and_read_receipts() {
    let (th, _dir) = chat_hub("").await;
    default_queue(&th, json!({})).await;
    let alice = setup_agent(&th, "alice", "available").await;
    let mut events = th.hub().events();

    let (v, s) = Visitor::start(&th.url, json!({ "name": "Ana Visitor", "email": "ana@example.com" })).await;
    assert_eq!(s["availability"]["online"], true, "{s}");
    assert_eq!(s["resumed"], false);
    let (mut ws, welcome) = v.connect(0).await;
    assert_eq!(welcome["conversation_id"], v.conversation.to_string());
    assert_eq!(welcome["last_seq"], 0);

    send(&mut ws, json!({ "type": "message", "client_msg_id": "m1", "body": "<b>Hello</b>, I need help" })).await;
    let got = frames_until(&mut ws, "ack").await;
    let ack = got.last().unwrap();
    assert_eq!((ack["client_msg_id"].as_str(), ack["seq"].as_i64(), ack["duplicate"].as_bool()), (Some("m1"), Some(1), Some(false)));
    // Persist before ack: the message is in the database when the ack arrives.
    let stored: (String, String) = sqlx::query_as("select body, client_message_id from messages where id = $1")
        .bind(ack["message_id"].as_str().unwrap().parse::<Uuid>().unwrap())
        .fetch_one(th.hub().db())
        .await
        .unwrap();
    assert_eq!(stored, ("<b>Hello</b>, I need help".to_string(), format!("{}:m1", v.conversation)));
    // The pre-chat details reached the interaction's customer address and the visitor record.
    let (name, email): (Option<String>, Option<String>) =
        sqlx::query_as("select display_name, email from chat_visitors").fetch_one(th.hub().db()).await.unwrap();
    assert_eq!((name.as_deref(), email.as_deref()), (Some("Ana Visitor"), Some("ana@example.com")));

    let interaction = accept_offer(&alice).await;
    let iid = interaction["id"].as_str().unwrap().to_string();
    assert_eq!(interaction["channel"], "chat");
    assert_eq!(interaction["conversation_key"], v.conversation.to_string());
    let joined = frames_until(&mut ws, "agent_joined").await;
    assert_eq!(joined.last().unwrap()["agent_name"], "alice");
    // The visitor's own message was echoed as a transcript entry with seq 1.
    assert!(seqs(&joined).iter().all(|s| *s == 1));

    // Agent typing → the widget shows it.
    let (st, b) =
        alice.call("POST", "/chat/v1/agent-signal", Some(json!({ "interaction_id": iid, "kind": "typing", "active": true }))).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{b}");
    let t = frames_until(&mut ws, "typing").await;
    assert_eq!(t.last().unwrap()["active"], true);

    // Agent reply → delivered to the socket with the next seq.
    let (st, b) =
        alice.call("POST", &format!("/api/v1/interactions/{iid}/messages"), Some(json!({ "body": "Hi Ana, how can I help?" }))).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let m = frames_until(&mut ws, "message").await;
    let m = m.last().unwrap();
    assert_eq!((m["from"].as_str(), m["body"].as_str(), m["seq"].as_i64()), (Some("agent"), Some("Hi Ana, how can I help?"), Some(2)));
    assert_eq!(m["agent_name"], "alice");

    // Agent read receipt → the widget hears up to which seq.
    let (st, _) = alice.call("POST", "/chat/v1/agent-signal", Some(json!({ "interaction_id": iid, "kind": "read" }))).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let r = frames_until(&mut ws, "read").await;
    assert_eq!(r.last().unwrap()["up_to_seq"], 1);
    // Another agent cannot signal on Alice's chat.
    let bob = setup_agent(&th, "bob", "away").await;
    let (st, _) = bob.call("POST", "/chat/v1/agent-signal", Some(json!({ "interaction_id": iid, "kind": "typing" }))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Visitor typing and read → events for the inbox.
    send(&mut ws, json!({ "type": "typing", "active": true })).await;
    send(&mut ws, json!({ "type": "read", "up_to_seq": 2 })).await;
    drain(&mut ws).await;
    let mut saw = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while saw != (true, true) {
        let ev = tokio::time::timeout_at(deadline, events.recv()).await.expect("visitor events").expect("bus");
        if ev.interaction_id.map(|i| i.to_string()) != Some(iid.clone()) || ev.data["by"] != "visitor" {
            continue;
        }
        match ev.kind.as_str() {
            "typing" => saw.0 = ev.data["active"] == true,
            "read" => saw.1 = ev.data["up_to_seq"] == 2,
            _ => {}
        }
    }
    let (_, evs) = alice.call("GET", &format!("/api/v1/interactions/{iid}/events"), None).await;
    let kinds: Vec<&str> = evs.as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"read"), "{kinds:?}");

    // Wrap-up and close reach the widget.
    let (st, _) = alice.call("POST", &format!("/api/v1/interactions/{iid}/wrap-up"), None).await;
    assert_eq!(st, StatusCode::OK);
    let left = frames_until(&mut ws, "agent_left").await;
    assert_eq!(left.last().unwrap()["reason"], "ended");
    th.stop().await;
}

#[tokio::test]
async fn reconnect_resumes_exactly_the_missed_messages_and_replays_are_stored_once() {
    let (th, _dir) = chat_hub("").await;
    default_queue(&th, json!({})).await;
    let alice = setup_agent(&th, "alice", "available").await;
    let (v, _) = Visitor::start(&th.url, json!({})).await;
    let (mut ws, _) = v.connect(0).await;
    send(&mut ws, json!({ "type": "message", "client_msg_id": "first", "body": "one" })).await;
    let ack = frames_until(&mut ws, "ack").await.pop().unwrap();
    assert_eq!(ack["seq"], 1);
    let i = accept_offer(&alice).await;
    let iid = i["id"].as_str().unwrap().to_string();
    frames_until(&mut ws, "agent_joined").await;
    ws.close(None).await.ok();
    drop(ws);

    // While the visitor is away the agent replies twice: stored, delivered on resume.
    for body in ["two", "three"] {
        let (st, b) = alice.call("POST", &format!("/api/v1/interactions/{iid}/messages"), Some(json!({ "body": body }))).await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
    }
    let db = th.hub().db().clone();
    eventually(15, || {
        let db = db.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("select count(*) from outbox where channel = 'chat' and status = 'sent'").fetch_one(&db).await.ok()?;
            (n == 2).then_some(())
        }
    })
    .await;

    // Resume after seq 1: exactly 2 and 3.
    let (mut ws, welcome) = v.connect(1).await;
    assert_eq!(welcome["last_seq"], 3);
    assert_eq!(welcome["status"], "active");
    let got = drain(&mut ws).await;
    assert_eq!(seqs(&got), vec![2, 3], "{got:?}");
    let bodies: Vec<&str> = got.iter().filter(|f| f["type"] == "message").map(|f| f["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, vec!["two", "three"]);

    // The widget never got the ack for "first" (say): it resends with the same id.
    send(&mut ws, json!({ "type": "message", "client_msg_id": "first", "body": "one" })).await;
    let again = frames_until(&mut ws, "ack").await;
    let a2 = again.last().unwrap();
    assert_eq!((a2["seq"].as_i64(), a2["duplicate"].as_bool()), (Some(1), Some(true)));
    assert_eq!(a2["message_id"], ack["message_id"]);
    // The HTTP fallback sees the same.
    let (st, a3) = v.post("/chat/v1/messages", json!({ "client_msg_id": "first", "body": "one" })).await;
    assert_eq!(st, StatusCode::OK, "{a3}");
    assert_eq!((a3["type"].as_str(), a3["duplicate"].as_bool(), a3["seq"].as_i64()), (Some("ack"), Some(true), Some(1)));
    // A new message over HTTP arrives on the socket as the next entry, once.
    let (st, a4) = v.post("/chat/v1/messages", json!({ "client_msg_id": "via-http", "body": "four" })).await;
    assert_eq!(st, StatusCode::OK, "{a4}");
    assert_eq!(a4["seq"], 4);
    let got = drain(&mut ws).await;
    assert_eq!(seqs(&got), vec![4], "{got:?}");
    let inbound: i64 = sqlx::query_scalar("select count(*) from messages where interaction_id = $1 and direction = 'inbound'")
        .bind(iid.parse::<Uuid>().unwrap())
        .fetch_one(th.hub().db())
        .await
        .unwrap();
    assert_eq!(inbound, 2, "the replayed id was stored once");

    // A fresh page (last_seq 0) gets the whole transcript once; a token resumes the same
    // conversation through POST /sessions.
    let (st_resume, s2) = {
        let r =
            reqwest::Client::new().post(format!("{}/chat/v1/sessions", th.url)).json(&json!({ "token": v.token })).send().await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(st_resume, StatusCode::OK);
    assert_eq!((s2["resumed"].as_bool(), s2["conversation_id"].as_str()), (Some(true), Some(v.conversation.to_string().as_str())));
    let (mut ws2, _) = v.connect(0).await;
    assert_eq!(seqs(&drain(&mut ws2).await), vec![1, 2, 3, 4]);
    let (_, page) = {
        let r = v.http.get(format!("{}/chat/v1/messages?after_seq=2", th.url)).header("x-chat-token", &v.token).send().await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    let polled: Vec<i64> = page["items"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(polled, vec![3, 4]);
    // A forged token is refused.
    let mut bad = v.token.clone().into_bytes();
    bad[10] = if bad[10] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    let r = v
        .http
        .post(format!("{}/chat/v1/messages", th.url))
        .header("x-chat-token", bad)
        .json(&json!({ "client_msg_id": "z", "body": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    th.stop().await;
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_oversized_ones_are_refused() {
    let (th, _dir) = chat_hub("max_message_bytes = 1000\nmax_frame_bytes = 2048").await;
    let (v, _) = Visitor::start(&th.url, json!({})).await;
    let mut ws = v.raw_socket().await;
    let code = |f: &Value| f["code"].as_str().unwrap_or("").to_string();
    send(&mut ws, json!({ "type": "message", "client_msg_id": "a", "body": "too early" })).await;
    assert_eq!(code(&next_frame(&mut ws).await), "not_authenticated");
    ws.send(Message::text("{oops")).await.unwrap();
    assert_eq!(code(&next_frame(&mut ws).await), "malformed_json");
    send(&mut ws, json!({ "type": "hello", "v": 1, "token": v.token })).await;
    assert_eq!(next_frame(&mut ws).await["type"], "welcome");

    let cases = [
        (json!({ "type": "explode" }).to_string(), "unknown_type"),
        (json!({ "type": "typing" }).to_string(), "invalid_frame"),
        (json!({ "body": "no type" }).to_string(), "invalid_frame"),
        ("[1,2,3]".to_string(), "invalid_frame"),
        (json!({ "type": "message", "client_msg_id": "x", "body": "hi", "admin": true }).to_string(), "invalid_frame"),
        (json!({ "type": "message", "client_msg_id": "bad id!", "body": "hi" }).to_string(), "invalid_field"),
        (json!({ "type": "message", "client_msg_id": "e", "body": "   " }).to_string(), "invalid_field"),
        (json!({ "type": "message", "client_msg_id": "n", "body": "nul\u{0}" }).to_string(), "invalid_field"),
        (json!({ "type": "message", "client_msg_id": "big", "body": "x".repeat(1500) }).to_string(), "message_too_large"),
        (json!({ "type": "message", "client_msg_id": "huge", "body": "x".repeat(3000) }).to_string(), "frame_too_large"),
        (json!({ "type": "hello", "v": 1, "token": v.token }).to_string(), "already_authenticated"),
        (json!({ "type": "message", "client_msg_id": "att", "body": "x", "attachments": [Uuid::new_v4()] }).to_string(), "invalid_field"),
    ];
    for (text, want) in cases {
        ws.send(Message::text(text.clone())).await.unwrap();
        let f = next_frame(&mut ws).await;
        assert_eq!((f["type"].as_str(), code(&f).as_str()), (Some("error"), want), "for {}", &text[..text.len().min(80)]);
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(code(&next_frame(&mut ws).await), "binary_not_supported");
    // Still alive after all of that.
    assert!(drain(&mut ws).await.is_empty());
    // Nothing malformed was stored.
    let n: i64 = sqlx::query_scalar("select count(*) from messages").fetch_one(th.hub().db()).await.unwrap();
    assert_eq!(n, 0);
    // Beyond 4× the frame limit the socket is closed with 1009 (message too big).
    ws.send(Message::text("x".repeat(9000))).await.unwrap();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("close within 10 s") {
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
        }
    };
    assert!(matches!(closed, Some(1009) | None), "{closed:?}");

    // A bad token gets an error frame and close 4401; a wrong version 4400.
    let mut ws = v.raw_socket().await;
    send(&mut ws, json!({ "type": "hello", "v": 1, "token": "sbv1.forged.token" })).await;
    assert_eq!(code(&next_frame(&mut ws).await), "invalid_token");
    let mut ws = v.raw_socket().await;
    send(&mut ws, json!({ "type": "hello", "v": 9, "token": v.token })).await;
    assert_eq!(code(&next_frame(&mut ws).await), "unsupported_version");
    th.stop().await;
}

#[tokio::test]
async fn visitors_are_rate_limited() {
    let (th, _dir) = chat_hub("rate_limit_per_10s = 3").await;
    default_queue(&th, json!({})).await;
    let (v, _) = Visitor::start(&th.url, json!({})).await;
    let (mut ws, _) = v.connect(0).await;
    for i in 0..4 {
        send(&mut ws, json!({ "type": "message", "client_msg_id": format!("r{i}"), "body": format!("msg {i}") })).await;
    }
    let mut acks = 0;
    let mut limited = None;
    while acks + limited.iter().count() < 4 {
        let f = next_frame(&mut ws).await;
        match f["type"].as_str() {
            Some("ack") => acks += 1,
            Some("error") => limited = Some(f),
            _ => {}
        }
    }
    assert_eq!(acks, 3);
    let l = limited.expect("the fourth message is limited");
    assert_eq!((l["code"].as_str(), l["client_msg_id"].as_str()), (Some("rate_limited"), Some("r3")));
    assert!(l["retry_after_ms"].as_u64().unwrap() > 1000);
    // The limit is per visitor, shared with the HTTP fallback.
    let (st, p) = v.post("/chat/v1/messages", json!({ "client_msg_id": "r4", "body": "http" })).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{p}");
    assert_eq!(p["code"], "rate_limited");
    // Another visitor is not affected.
    let (w, _) = Visitor::start(&th.url, json!({})).await;
    let (st, _) = w.post("/chat/v1/messages", json!({ "client_msg_id": "w1", "body": "hello" })).await;
    assert_eq!(st, StatusCode::OK);
    let stored: i64 = sqlx::query_scalar("select count(*) from messages").fetch_one(th.hub().db()).await.unwrap();
    assert_eq!(stored, 4);
    th.stop().await;
}

#[tokio::test]
async fn attachments_are_checked_stored_by_checksum_and_linked_to_the_message() {
    let (th, dir) = chat_hub("attachment_max_bytes = 1024\nattachment_content_types = [\"image/png\", \"text/plain\"]").await;
    default_queue(&th, json!({})).await;
    let (v, _) = Visitor::start(&th.url, json!({})).await;
    let upload = |ct: &'static str, bytes: Vec<u8>| {
        let v = &v;
        async move {
            let r = v
                .http
                .post(format!("{}/chat/v1/attachments?filename=..%2Fshot.png", v.base))
                .header("x-chat-token", &v.token)
                .header("content-type", ct)
                .body(bytes)
                .send()
                .await
                .unwrap();
            let st = r.status();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(vec![7u8; 100]);
    let mut big = png.clone();
    big.extend(vec![0u8; 2000]);
    let (st, p) = upload("image/png", big).await;
    assert_eq!((st, p["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("attachment_too_large")), "{p}");
    let (st, p) = upload("text/html", b"<script>alert(1)</script>".to_vec()).await;
    assert_eq!((st, p["code"].as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("unsupported_content_type")), "{p}");
    let (st, p) = upload("image/png", b"<svg onload=alert(1)>".to_vec()).await;
    assert_eq!((st, p["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("content_mismatch")), "{p}");
    let (st, p) = upload("text/plain", png.clone()).await;
    assert_eq!((st, p["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("content_mismatch")), "{p}");
    let (st, img) = upload("image/png", png.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{img}");
    assert_eq!(img["content_type"], "image/png");
    let text = "Order #123: ünïcode notes";
    let (st, a) = upload("text/plain", text.as_bytes().to_vec()).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    let sha = switchboard_core::auth::digest(text);
    assert_eq!(a["sha256"], sha.as_str());
    assert_eq!(a["filename"], "shot.png");
    assert_eq!(std::fs::read(dir.join(&sha)).unwrap(), text.as_bytes());
    let png = text.as_bytes().to_vec();

    let (st, ack) =
        v.post("/chat/v1/messages", json!({ "client_msg_id": "with-file", "body": "see screenshot", "attachments": [a["id"]] })).await;
    assert_eq!(st, StatusCode::OK, "{ack}");
    let atts: Value = sqlx::query_scalar("select attachments from messages where id = $1")
        .bind(ack["message_id"].as_str().unwrap().parse::<Uuid>().unwrap())
        .fetch_one(th.hub().db())
        .await
        .unwrap();
    assert_eq!(atts[0]["sha256"], sha.as_str());
    assert_eq!(atts[0]["size"], png.len());
    // Download: the visitor's token works, nothing else does.
    let url = format!("{}{}", th.url, a["url"].as_str().unwrap());
    let r = v.http.get(&url).header("x-chat-token", &v.token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.bytes().await.unwrap().to_vec(), png);
    assert_eq!(v.http.get(&url).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let (other, _) = Visitor::start(&th.url, json!({})).await;
    assert_eq!(v.http.get(&url).header("x-chat-token", &other.token).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // Another conversation cannot reference the attachment.
    let (st, p) = other.post("/chat/v1/messages", json!({ "client_msg_id": "steal", "body": "x", "attachments": [a["id"]] })).await;
    assert_eq!((st, p["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_field")), "{p}");
    th.stop().await;
}

#[tokio::test]
async fn offline_form_when_no_agent_is_available_and_queue_position_while_waiting() {
    let (th, _dir) = chat_hub("").await;
    default_queue(&th, json!({})).await;
    let base = th.url.clone();
    let cfg: Value = reqwest::get(format!("{base}/chat/v1/config")).await.unwrap().json().await.unwrap();
    assert_eq!(cfg["availability"], json!({ "online": false, "reason": "no_agents" }));
    let (v, s) = Visitor::start(&base, json!({})).await;
    assert_eq!(s["availability"]["online"], false);
    let form = json!({ "client_msg_id": "off1", "name": "Olga", "email": "olga@example.com", "message": "Please call me back" });
    let (st, r) = v.post("/chat/v1/offline", form.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let (st, again) = v.post("/chat/v1/offline", form).await;
    assert_eq!((st, again["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
    let iid = r["interaction_id"].as_str().unwrap().to_string();
    let (meta, channel): (Value, String) = sqlx::query_as("select metadata, channel from interactions where id = $1")
        .bind(iid.parse::<Uuid>().unwrap())
        .fetch_one(th.hub().db())
        .await
        .unwrap();
    assert_eq!((meta["offline"].as_bool(), meta["reply_email"].as_str(), channel.as_str()), (Some(true), Some("olga@example.com"), "chat"));
    let (st, bad) = v.post("/chat/v1/offline", json!({ "client_msg_id": "off2", "email": "not-an-email", "message": "x" })).await;
    assert_eq!((st, bad["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_field")));

    // An agent who is signed in but away: chat is "online", chats wait in the queue.
    let alice = setup_agent(&th, "alice", "away").await;
    let (v1, _) = Visitor::start(&base, json!({})).await;
    let (v2, _) = Visitor::start(&base, json!({})).await;
    let (mut ws1, w1) = v1.connect(0).await;
    assert_eq!(w1["availability"]["online"], true);
    let (mut ws2, _) = v2.connect(0).await;
    send(&mut ws1, json!({ "type": "message", "client_msg_id": "q1", "body": "first in line" })).await;
    let q = frames_until(&mut ws1, "queue").await.pop().unwrap();
    // The offline interaction waits in the same queue ahead of us.
    assert_eq!(q["position"], 2, "{q}");
    assert!(q["estimated_wait_secs"].is_null(), "nothing answered yet: no estimate");
    send(&mut ws2, json!({ "type": "message", "client_msg_id": "q2", "body": "second in line" })).await;
    let q = frames_until(&mut ws2, "queue").await.pop().unwrap();
    assert_eq!(q["position"], 3, "{q}");
    // Visitor 1 leaves: visitor 2 moves up.
    send(&mut ws1, json!({ "type": "leave" })).await;
    let ended = frames_until(&mut ws1, "ended").await.pop().unwrap();
    assert_eq!(ended["status"], "abandoned");
    let q = frames_until(&mut ws2, "queue").await.pop().unwrap();
    assert_eq!(q["position"], 2, "{q}");

    // Alice comes back and answers the offline message: it goes to the visitor's transcript
    // and, as an offline-form interaction, to the outbox as an email to reply_email.
    let (st, _) =
        alice.call("PUT", &format!("/api/v1/agents/{}/presence", alice.agent_id.unwrap()), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK);
    let accepted = accept_offer_for(&alice, Some(&iid)).await;
    assert_eq!(accepted["id"], iid.as_str());
    let (st, b) =
        alice.call("POST", &format!("/api/v1/interactions/{iid}/messages"), Some(json!({ "body": "Calling you tomorrow." }))).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let db = th.hub().db().clone();
    let email: (String, String) = eventually(15, || {
        let db = db.clone();
        async move { sqlx::query_as("select recipient, body from outbox where channel = 'email'").fetch_optional(&db).await.ok().flatten() }
    })
    .await;
    assert_eq!(email, ("olga@example.com".to_string(), "Calling you tomorrow.".to_string()));
    let (mut ws, _) = v.connect(0).await;
    let got = drain(&mut ws).await;
    let bodies: Vec<&str> = got.iter().filter(|f| f["type"] == "message").map(|f| f["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, vec!["Please call me back", "Calling you tomorrow."]);
    th.stop().await;
}

#[tokio::test]
async fn after_hours_shows_the_offline_form_and_origins_are_enforced() {
    let (th, _dir) = chat_hub("queue = \"default\"\nallowed_origins = [\"https://shop.example\"]").await;
    // Business hours that never open (no weekly ranges).
    default_queue(&th, json!({ "business_hours": { "timezone": "UTC", "weekly": {} } })).await;
    setup_agent(&th, "alice", "available").await;
    let http = reqwest::Client::new();
    let cfg: Value = http.get(format!("{}/chat/v1/config", th.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(cfg["availability"], json!({ "online": false, "reason": "after_hours" }));
    // CORS: the allowed site gets the header, others are refused (HTTP and WebSocket).
    let r = http.get(format!("{}/chat/v1/config", th.url)).header("origin", "https://shop.example").send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    let r = http
        .request(reqwest::Method::OPTIONS, format!("{}/chat/v1/sessions", th.url))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers()["access-control-allow-headers"].to_str().unwrap().contains("x-chat-token"));
    let r =
        http.post(format!("{}/chat/v1/sessions", th.url)).header("origin", "https://evil.example").json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/chat/v1/ws", th.url.replacen("http", "ws", 1)).into_client_request().unwrap();
    req.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err(), "a foreign origin cannot open the socket");
    th.stop().await;
}

/// Two hub nodes on one database: the visitor's socket is on node B while its HTTP
/// fallback message and the agent's typing go through node A, and the visitor types on
/// node B while the agent's inbox listens on node A. Everything crosses at once, not on
/// the next reconnect.
#[tokio::test]
async fn two_nodes_share_fallback_messages_and_typing() {
    let (th, dir) = chat_hub("").await;
    default_queue(&th, json!({})).await;
    let alice = setup_agent(&th, "alice", "available").await;
    let node_b = spawn_node_with(&th.db, |s| s.channels.push(chat_table(&dir, ""))).await;
    let mut events_a = th.hub().events();

    let (v, _) = Visitor::start(&th.url, json!({})).await;
    let on_b = Visitor { base: node_b.url(), token: v.token.clone(), conversation: v.conversation, http: reqwest::Client::new() };
    let (mut ws_b, _) = on_b.connect(0).await;
    send(&mut ws_b, json!({ "type": "message", "client_msg_id": "m1", "body": "one" })).await;
    assert_eq!(frames_until(&mut ws_b, "ack").await.last().unwrap()["seq"], 1);
    let i = accept_offer(&alice).await;
    let iid = i["id"].as_str().unwrap().to_string();
    frames_until(&mut ws_b, "agent_joined").await;

    // A message sent through node A's HTTP fallback appears on node B's socket.
    let (st, ack) = v.post("/chat/v1/messages", json!({ "client_msg_id": "via-a", "body": "two" })).await;
    assert_eq!((st, ack["seq"].as_i64()), (StatusCode::OK, Some(2)), "{ack}");
    loop {
        let f = next_frame(&mut ws_b).await;
        if f["type"] == "message" && f["seq"] == 2 {
            assert_eq!((f["body"].as_str(), f["from"].as_str()), (Some("two"), Some("visitor")));
            break;
        }
    }

    // The agent types through node A; the widget on node B shows it.
    let (st, b) =
        alice.call("POST", "/chat/v1/agent-signal", Some(json!({ "interaction_id": iid, "kind": "typing", "active": true }))).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{b}");
    assert_eq!(frames_until(&mut ws_b, "typing").await.last().unwrap()["active"], true);

    // The visitor types on node B; node A's event stream (the agent's inbox) hears it.
    send(&mut ws_b, json!({ "type": "typing", "active": true })).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, events_a.recv()).await.expect("visitor typing on node A").expect("bus");
        if ev.kind == "typing" && ev.data["by"] == "visitor" && ev.interaction_id.map(|i| i.to_string()) == Some(iid.clone()) {
            assert_eq!(ev.data["active"], true);
            break;
        }
    }
    // Typing is not stored.
    let stored: i64 =
        sqlx::query_scalar("select count(*) from interaction_events where kind = 'typing'").fetch_one(th.hub().db()).await.unwrap();
    assert_eq!(stored, 0);
    node_b.stop().await;
    th.stop().await;
}

/// Point 16: a waiting chat whose visitor left is flagged for supervisors, clears when
/// the visitor comes back, closes itself as abandoned after the configured time, and a
/// supervisor (not an agent) can close one as abandoned.
#[tokio::test]
async fn a_waiting_chat_whose_visitor_left_is_flagged_and_abandons_itself() {
    let dir = std::env::temp_dir().join(format!("sb-chat-test-{}", Uuid::new_v4().simple()));
    let table = chat_table(&dir, "");
    let th = spawn_hub_with(|s| {
        s.router.abandon_left_chat_secs = 4;
        s.channels.push(table);
    })
    .await;
    let admin = default_queue(&th, json!({})).await;
    let sup = user(&th, "sup", &[Role::Supervisor], None).await;
    // Staffed (chat is online) but nobody takes the chat: it stays queued.
    let agent = setup_agent(&th, "alice", "away").await;
    let left = |c: Client| async move {
        let (st, l) = c.call("GET", "/api/v1/interactions?channel=chat&visitor_left=true", None).await;
        assert_eq!(st, StatusCode::OK, "{l}");
        l["items"].as_array().cloned().unwrap_or_default()
    };

    // A visitor writes, then closes the page.
    let (v, _) = Visitor::start(&th.url, json!({ "name": "Gone Soon" })).await;
    let (mut ws, _) = v.connect(0).await;
    send(&mut ws, json!({ "type": "message", "client_msg_id": "m1", "body": "anyone there?" })).await;
    frames_until(&mut ws, "ack").await;
    let (_, all) = sup.call("GET", "/api/v1/interactions?channel=chat", None).await;
    let iid = all["items"][0]["id"].as_str().expect("interaction").to_string();
    assert!(left(sup.clone()).await.is_empty());
    drop(ws);
    let flagged = eventually(15, || {
        let s = sup.clone();
        async move { left(s).await.into_iter().next() }
    })
    .await;
    assert_eq!(flagged["id"], iid.as_str());
    assert!(flagged["visitor_left_at"].is_string(), "{flagged}");
    assert_eq!(flagged["status"], "queued");
    // After `abandon_left_chat_secs` it closes itself as abandoned, with an event.
    let i = eventually(20, || {
        let s = sup.clone();
        let id = iid.clone();
        async move {
            let (_, i) = s.call("GET", &format!("/api/v1/interactions/{id}"), None).await;
            (i["status"] == "abandoned").then_some(i)
        }
    })
    .await;
    assert!(i["closed_at"].is_string());
    let (_, evs) = sup.call("GET", &format!("/api/v1/interactions/{iid}/events"), None).await;
    let kinds: Vec<(String, Value)> =
        evs.as_array().unwrap().iter().map(|e| (e["kind"].as_str().unwrap().to_string(), e["data"].clone())).collect();
    assert!(kinds.iter().any(|(k, _)| k == "visitor_left"), "{kinds:?}");
    assert!(kinds.iter().any(|(k, d)| k == "abandoned" && d["reason"] == "visitor_left_timeout"), "{kinds:?}");

    // Another visitor leaves and comes back: the flag clears.
    let (v2, _) = Visitor::start(&th.url, json!({ "name": "Back Again" })).await;
    let (mut ws2, _) = v2.connect(0).await;
    send(&mut ws2, json!({ "type": "message", "client_msg_id": "m1", "body": "hello?" })).await;
    frames_until(&mut ws2, "ack").await;
    drop(ws2);
    let flagged = eventually(15, || {
        let s = sup.clone();
        async move { left(s).await.into_iter().next() }
    })
    .await;
    let iid2 = flagged["id"].as_str().unwrap().to_string();
    let (_ws2, _) = v2.connect(1).await;
    eventually(10, || {
        let s = sup.clone();
        async move { left(s).await.is_empty().then_some(()) }
    })
    .await;
    // Closing a waiting chat by hand: supervisors may, agents may not.
    let (st, b) = agent.call("POST", &format!("/api/v1/interactions/{iid2}/abandon"), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    let (st, b) = sup.call("POST", &format!("/api/v1/interactions/{iid2}/abandon"), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "abandoned");
    let (st, _) = admin.call("POST", &format!("/api/v1/interactions/{iid2}/abandon"), None).await;
    assert_eq!(st, StatusCode::CONFLICT, "only waiting interactions can be abandoned");
    let (st, _) = sup.call("POST", &format!("/api/v1/interactions/{}/abandon", Uuid::new_v4()), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = sup.call("POST", "/api/v1/interactions/not-a-uuid/abandon", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    th.stop().await;
}
