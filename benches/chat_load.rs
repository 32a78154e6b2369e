//! Load benchmark of the web chat channel on loopback (`harness = false`).
//!
//! The hub (chat adapter, router, outbox worker, event listener) runs in a child process
//! (this binary with `--serve`) so its memory can be read from /proc; this process plays
//! the widgets. Phases:
//! 1. idle: open `CHAT_BENCH_IDLE` sessions + sockets (default 10,000) and report the hub's
//!    VmRSS growth per connection;
//! 2. throughput: `CHAT_BENCH_ACTIVE` of them (default 500) send `CHAT_BENCH_MSGS`
//!    messages each (default 20, 4 in flight per socket); report persisted messages/s and
//!    send→ack latency;
//!    then the same sockets send open loop at `CHAT_BENCH_RATE` messages/s (default 5,000)
//!    for `CHAT_BENCH_RATE_SECS` (default 6); report send→ack latency at that rate, and
//!    how long each message takes to reach a supervisor's event stream (the inbox feed);
//! 3. replies: agent replies to `CHAT_BENCH_REPLIES` conversations (default 300); report
//!    reply→visitor-receive latency.
//!
//! Bounded: everything runs under a hard timeout (`CHAT_BENCH_TIMEOUT_SECS`, default 120).
//! Run: `cargo bench --bench chat_load` (needs the local PostgreSQL of the tests,
//! `SWITCHBOARD_TEST_DATABASE_URL`).

mod support;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{pct, vm_rss_kib};
use switchboard_core::config::CoreSettings;
use switchboard_core::testing::TestDb;
use switchboard_core::Hub;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn main() {
    support::main("chat_load", &[], "CHAT_BENCH_TIMEOUT_SECS", 120, bench);
}

/// POST /chat/v1/sessions over a raw HTTP/1.1 connection; returns the token.
async fn new_session(addr: SocketAddr) -> Result<(String, Uuid), String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!("POST /chat/v1/sessions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}");
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&resp);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).ok_or("no body")?;
    let v: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
    let token = v["token"].as_str().ok_or_else(|| format!("no token: {v}"))?.to_string();
    let conv = v["conversation_id"].as_str().and_then(|c| c.parse().ok()).ok_or("no conversation")?;
    Ok((token, conv))
}

async fn open_socket(addr: SocketAddr, token: &str) -> Result<Ws, String> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/chat/v1/ws"), None, true).await.map_err(|e| e.to_string())?;
    ws.send(Message::text(json!({ "type": "hello", "v": 1, "token": token, "last_seq": 0 }).to_string()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => return Ok(ws),
            Some(Ok(_)) => continue,
            other => return Err(format!("no welcome: {other:?}")),
        }
    }
}

enum Cmd {
    /// Closed loop: `count` messages, at most `window` unacknowledged.
    Burst { count: usize, window: usize, done: oneshot::Sender<Vec<Duration>> },
    /// Open loop: one message every `interval` (first after `offset`), whatever the acks.
    Paced { count: usize, interval: Duration, offset: Duration, done: oneshot::Sender<Vec<Duration>> },
}

/// An ack for one of `sent` records its latency (and, while the agents' stream is timed,
/// the stored message's send time); an error frame ends the phase.
fn on_ack(t: &str, sent: &mut HashMap<String, Instant>, lat: &mut Vec<Duration>, shared: &Shared) -> Result<bool, ()> {
    if t.starts_with("{\"type\":\"ack\"") {
        if let Ok(v) = serde_json::from_str::<Value>(t) {
            if let Some(at) = v["client_msg_id"].as_str().and_then(|id| sent.remove(id)) {
                lat.push(at.elapsed());
                if shared.timing_stream.load(Ordering::Relaxed) {
                    if let Some(m) = v["message_id"].as_str().and_then(|m| m.parse::<Uuid>().ok()) {
                        shared.sent_by_message.lock().unwrap().insert(m, at);
                    }
                }
            }
        }
        return Ok(true);
    }
    if t.contains("\"type\":\"error\"") {
        eprintln!("error frame: {t}");
        return Err(());
    }
    Ok(false)
}

/// An agent reply arriving at the widget: records its latency.
fn on_reply(t: &str, replies: &Shared) {
    if t.contains("\"from\":\"agent\"") {
        if let Ok(v) = serde_json::from_str::<Value>(t) {
            if let Some(b) = v["body"].as_str() {
                if let Some(at) = replies.sent_at.lock().unwrap().remove(b) {
                    replies.latencies.lock().unwrap().push(at.elapsed());
                    replies.received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// One frame while sending: an ack settles a message, an agent reply is timed. False when
/// the socket ended or the hub answered with an error.
fn on_frame(
    m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    sent: &mut HashMap<String, Instant>,
    lat: &mut Vec<Duration>,
    replies: &Shared,
) -> bool {
    match m {
        Some(Ok(Message::Text(t))) => match on_ack(&t, sent, lat, replies) {
            Ok(true) => true,
            Ok(false) => {
                on_reply(&t, replies);
                true
            }
            Err(()) => false,
        },
        Some(Ok(_)) => true,
        _ => false,
    }
}

/// Shared bookkeeping. Replies: body marker → send time, receive latencies. The agents'
/// event stream: while `timing_stream` is set, each acknowledged message's send time and
/// the moment its `message` event reached the supervisor's stream.
#[derive(Default)]
struct Shared {
    sent_at: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<Duration>>,
    received: AtomicU64,
    timing_stream: std::sync::atomic::AtomicBool,
    sent_by_message: Mutex<HashMap<Uuid, Instant>>,
    heard_by_message: Mutex<HashMap<Uuid, Instant>>,
    resyncs: AtomicU64,
}

/// A supervisor's event stream (`/api/v1/stream`, the inbox's feed): notes when each
/// inbound `message` event arrives while the stream is timed.
async fn supervisor_stream(addr: SocketAddr, token: String, shared: Arc<Shared>) -> Result<(), String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/api/v1/stream").into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().map_err(|_| "header")?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            let Message::Text(t) = m else { continue };
            if !shared.timing_stream.load(Ordering::Relaxed) {
                continue;
            }
            let at = Instant::now();
            if t.contains("\"kind\":\"resync\"") {
                shared.resyncs.fetch_add(1, Ordering::Relaxed);
            } else if t.contains("\"kind\":\"message\"") {
                if let Ok(v) = serde_json::from_str::<Value>(&t) {
                    if let Some(m) = v["data"]["message_id"].as_str().and_then(|m| m.parse::<Uuid>().ok()) {
                        shared.heard_by_message.lock().unwrap().entry(m).or_insert(at);
                    }
                }
            }
        }
    });
    Ok(())
}

async fn widget(mut ws: Ws, mut cmds: mpsc::Receiver<Cmd>, replies: Arc<Shared>, tag: usize) {
    let mut bursts = 0u32;
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(Cmd::Burst { count, window, done }) => {
                    bursts += 1;
                    let mut sent: HashMap<String, Instant> = HashMap::new();
                    let mut lat = Vec::with_capacity(count);
                    let mut next = 0;
                    while lat.len() < count {
                        while next < count && sent.len() < window {
                            let id = format!("b{tag}-{bursts}-{next}");
                            let f = json!({ "type": "message", "client_msg_id": id, "body": format!("load message {next}") });
                            if ws.send(Message::text(f.to_string())).await.is_err() { let _ = done.send(lat); return; }
                            sent.insert(id, Instant::now());
                            next += 1;
                        }
                        if !on_frame(ws.next().await, &mut sent, &mut lat, &replies) { let _ = done.send(lat); return; }
                    }
                    let _ = done.send(lat);
                }
                Some(Cmd::Paced { count, interval, offset, done }) => {
                    bursts += 1;
                    let mut sent: HashMap<String, Instant> = HashMap::new();
                    let mut lat = Vec::with_capacity(count);
                    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    let mut next = 0;
                    while lat.len() < count {
                        tokio::select! {
                            _ = tick.tick(), if next < count => {
                                let id = format!("p{tag}-{bursts}-{next}");
                                let f = json!({ "type": "message", "client_msg_id": id, "body": format!("paced message {next}") });
                                if ws.send(Message::text(f.to_string())).await.is_err() { let _ = done.send(lat); return; }
                                sent.insert(id, Instant::now());
                                next += 1;
                            }
                            m = ws.next() => if !on_frame(m, &mut sent, &mut lat, &replies) { let _ = done.send(lat); return; }
                        }
                    }
                    let _ = done.send(lat);
                }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => on_reply(&t, &replies),
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    }
}

/// Inbound messages persisted so far.
async fn stored_inbound(db: &TestDb) -> Result<i64, String> {
    sqlx::query_scalar("select count(*) from messages where direction = 'inbound'").fetch_one(&db.pool).await.map_err(|e| e.to_string())
}

async fn bench(fd_limit: u64) -> Result<(), String> {
    let idle = env_usize("CHAT_BENCH_IDLE", 10_000);
    let active = env_usize("CHAT_BENCH_ACTIVE", 500).min(idle);
    let msgs = env_usize("CHAT_BENCH_MSGS", 20);
    let reply_n = env_usize("CHAT_BENCH_REPLIES", 300).min(active);
    println!("chat_load: fd limit {fd_limit}, idle sockets {idle}, active {active} × {msgs} messages, {reply_n} agent replies");
    let db = TestDb::new().await;
    sqlx::query("insert into queues (name) values ('default')").execute(&db.pool).await.map_err(|e| e.to_string())?;

    let (mut child, pid, addr) = support::spawn_hub(&db.url()).await?;
    // Warm up (first database connections, allocator arenas) before the baseline.
    for _ in 0..20 {
        let (t, _) = new_session(addr).await?;
        drop(open_socket(addr, &t).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = vm_rss_kib(pid);

    // Phase 1: idle connections.
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(64));
    let mut handles = Vec::with_capacity(idle);
    for _ in 0..idle {
        let sem = sem.clone();
        handles.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await;
            let (token, conv) = new_session(addr).await?;
            let ws = open_socket(addr, &token).await?;
            Ok::<_, String>((ws, conv))
        }));
    }
    let mut sockets = Vec::with_capacity(idle);
    let mut failures = 0;
    for h in handles {
        match h.await {
            Ok(Ok(s)) => sockets.push(s),
            Ok(Err(e)) => {
                failures += 1;
                if failures <= 3 {
                    eprintln!("connection failed: {e}");
                }
            }
            Err(_) => failures += 1,
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_after = vm_rss_kib(pid);
    let n = sockets.len().max(1) as f64;
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 / n;
    println!(
        "idle: {} sockets open ({failures} failed) in {open_secs:.1} s; hub VmRSS {rss_before} KiB -> {rss_after} KiB = {per_conn:.1} KiB per idle connection ({:.1} MiB per 1,000)",
        sockets.len(),
        per_conn * 1000.0 / 1024.0
    );

    // Hand every socket to a widget task.
    let replies = Arc::new(Shared::default());
    let mut ctl = Vec::with_capacity(sockets.len());
    for (i, (ws, conv)) in sockets.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(widget(ws, rx, replies.clone(), i));
        ctl.push((tx, conv));
    }

    // Phase 2: throughput.
    let t1 = Instant::now();
    let mut waits = Vec::new();
    for (tx, _) in ctl.iter().take(active) {
        let (done, rx) = oneshot::channel();
        tx.send(Cmd::Burst { count: msgs, window: 4, done }).await.map_err(|_| "widget gone")?;
        waits.push(rx);
    }
    let mut lat = Vec::new();
    for w in waits {
        lat.extend(w.await.unwrap_or_default());
    }
    let secs = t1.elapsed().as_secs_f64();
    let stored: i64 = stored_inbound(&db).await?;
    let acked = lat.len();
    println!(
        "throughput: {acked} messages acked by {active} sockets in {secs:.2} s = {:.0} persisted messages/s ({stored} inbound rows in the database)",
        acked as f64 / secs
    );
    println!("latency send->ack: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", pct(&mut lat, 0.5), pct(&mut lat, 0.99), pct(&mut lat, 1.0));
    if stored < acked as i64 {
        return Err(format!("only {stored} of {acked} acknowledged messages are stored"));
    }

    // Phase 2a: latency at the target rate, open loop: every active socket sends on a fixed
    // schedule (staggered), so queueing shows up as latency instead of a lower send rate.
    let rate = env_usize("CHAT_BENCH_RATE", 5_000);
    let paced_secs = env_usize("CHAT_BENCH_RATE_SECS", 6);
    if rate > 0 {
        // A supervisor watches the inbox feed meanwhile: visitor → agents' stream latency.
        let token = support::supervisor_token(&db.pool).await?;
        supervisor_stream(addr, token, replies.clone()).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        replies.timing_stream.store(true, Ordering::Relaxed);
        let per_socket = ((rate * paced_secs) / active).max(1);
        let interval = Duration::from_secs_f64(active as f64 / rate as f64);
        let before: i64 = stored_inbound(&db).await?;
        let t = Instant::now();
        let mut waits = Vec::new();
        for (n, (tx, _)) in ctl.iter().take(active).enumerate() {
            let (done, rx) = oneshot::channel();
            let offset = interval.mul_f64(n as f64 / active as f64);
            tx.send(Cmd::Paced { count: per_socket, interval, offset, done }).await.map_err(|_| "widget gone")?;
            waits.push(rx);
        }
        let mut paced = Vec::new();
        for w in waits {
            paced.extend(w.await.unwrap_or_default());
        }
        let secs = t.elapsed().as_secs_f64();
        let after: i64 = stored_inbound(&db).await?;
        println!(
            "at {rate} messages/s offered for {paced_secs} s ({active} sockets, open loop): {} acked in {secs:.2} s = {:.0} persisted messages/s ({} new rows); latency send->ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            paced.len(),
            paced.len() as f64 / secs,
            after - before,
            pct(&mut paced, 0.5),
            pct(&mut paced, 0.99),
            pct(&mut paced, 1.0)
        );
        if after - before < paced.len() as i64 {
            return Err(format!("only {} of {} acknowledged messages are stored", after - before, paced.len()));
        }
        // Events still in flight reach the stream within moments.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        replies.timing_stream.store(false, Ordering::Relaxed);
        let sent = std::mem::take(&mut *replies.sent_by_message.lock().unwrap());
        let heard = std::mem::take(&mut *replies.heard_by_message.lock().unwrap());
        let mut feed: Vec<Duration> = sent.iter().filter_map(|(m, s)| heard.get(m).map(|h| h.saturating_duration_since(*s))).collect();
        println!(
            "visitor send -> supervisor's inbox stream at {rate}/s: {} of {} messages heard ({} resyncs); p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            feed.len(),
            sent.len(),
            replies.resyncs.load(Ordering::Relaxed),
            pct(&mut feed, 0.5),
            pct(&mut feed, 0.99),
            pct(&mut feed, 1.0)
        );
    }

    // Phase 2b: latency at light load (20 sockets, one message in flight each).
    let light = env_usize("CHAT_BENCH_LIGHT", 20).min(active);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut waits = Vec::new();
    for (tx, _) in ctl.iter().take(light) {
        let (done, rx) = oneshot::channel();
        tx.send(Cmd::Burst { count: 10, window: 1, done }).await.map_err(|_| "widget gone")?;
        waits.push(rx);
    }
    let mut light_lat = Vec::new();
    for w in waits {
        light_lat.extend(w.await.unwrap_or_default());
    }
    println!(
        "latency send->ack at light load ({light} sockets, 1 in flight): p50 {:.1} ms, p99 {:.1} ms ({} messages)",
        pct(&mut light_lat, 0.5),
        pct(&mut light_lat, 0.99),
        light_lat.len()
    );

    // Phase 3: agent replies → visitor receive.
    let agent: Uuid = sqlx::query_scalar("insert into agents (name, presence) values ('bench-agent', 'busy') returning id")
        .fetch_one(&db.pool)
        .await
        .map_err(|e| e.to_string())?;
    let convs: Vec<String> = ctl.iter().take(reply_n).map(|(_, c)| c.to_string()).collect();
    let ids: Vec<(Uuid,)> = sqlx::query_as(
        "update interactions set status = 'active', agent_id = $1, answered_at = now() where channel = 'chat' and conversation_key = any($2) returning id",
    )
    .bind(agent)
    .bind(&convs)
    .fetch_all(&db.pool)
    .await
    .map_err(|e| e.to_string())?;
    let hub = Hub::new(db.pool.clone(), CoreSettings::default());
    let t2 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for (n, (iid,)) in ids.iter().enumerate() {
        tick.tick().await;
        let body = format!("reply {n} {iid}");
        replies.sent_at.lock().unwrap().insert(body.clone(), Instant::now());
        hub.reply(*iid, Some(agent), &body, None).await.map_err(|e| e.to_string())?;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while (replies.received.load(Ordering::Relaxed) as usize) < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rl = replies.latencies.lock().unwrap().clone();
    println!(
        "replies: {} of {} agent replies received in {:.2} s; latency reply->visitor: p50 {:.1} ms, p99 {:.1} ms",
        rl.len(),
        ids.len(),
        t2.elapsed().as_secs_f64(),
        pct(&mut rl, 0.5),
        pct(&mut rl, 0.99)
    );
    println!("hub VmRSS at the end: {} KiB", vm_rss_kib(pid));
    drop(ctl);
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let _ = child.kill().await;
    Ok(())
}
