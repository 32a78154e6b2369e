//! Wallboard fan-out benchmark (issue 15: the wallboard "stays smooth with 1,000 agents
//! and 50 queues", and "the server cost does not grow with the number of open wallboards
//! beyond one push per event batch"). `harness = false`.
//!
//! The hub runs in a child process (this binary with `--serve`; the rollup worker off, so
//! its CPU is the wallboard's and the event listener's), its CPU time read from /proc.
//! This process creates `WALLBOARD_BENCH_AGENTS` agents (default 1,000) and
//! `WALLBOARD_BENCH_QUEUES` queues (default 50); then, for each count of screens in
//! `WALLBOARD_BENCH_SCREENS` (default 1,10,100,500), opens that many wallboards
//! (`/api/v1/wallboard/stream`, a supervisor's token) and drives the same event load:
//! `WALLBOARD_BENCH_RATE` events/s (default 1,000) for `WALLBOARD_BENCH_SECS` (default 8),
//! committed through the event bus in transactions of 20 — contacts entering a queue,
//! answered by an agent, closed, and agents changing presence. Per count it prints the
//! hub's CPU per 1,000 events, the frames (pushes) each screen received and their size,
//! and how long an agent's presence change took from its commit to the screens
//! (p50/p99/max over the first 10 screens). Bounded: a hard timeout (`WALLBOARD_BENCH_TIMEOUT_SECS`,
//! default 300). Run: `cargo bench --bench wallboard`.

mod support;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{cpu_ms, pct};
use switchboard_core::bus::{record, NewEvent};
use switchboard_core::testing::TestDb;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Screens whose frames are parsed for the commit → screen latency.
const TIMED_SCREENS: usize = 10;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn main() {
    support::main("wallboard bench", &[("SWITCHBOARD__REPORTS__WORKER", "false")], "WALLBOARD_BENCH_TIMEOUT_SECS", 300, |_| bench());
}

/// What the screens saw while the load ran.
#[derive(Default)]
struct Seen {
    counting: AtomicBool,
    frames: AtomicU64,
    bytes: AtomicU64,
    /// Commit → screen, for agents' presence changes.
    lat: Mutex<Vec<Duration>>,
}

/// One open wallboard; returns once its snapshot arrived, with the snapshot's size and
/// the task reading it (aborting it closes the socket).
/// Only `timed` screens parse their frames for the latency (parsing every frame of 500
/// screens would make this process, not the hub, the bottleneck on a small machine).
async fn screen(addr: SocketAddr, token: &str, seen: Arc<Seen>, timed: bool) -> Result<(usize, tokio::task::JoinHandle<()>), String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/api/v1/wallboard/stream").into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().map_err(|_| "header")?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| e.to_string())?;
    let snapshot = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"snapshot\"") => break t,
            Some(Ok(_)) => continue,
            other => return Err(format!("no snapshot: {other:?}")),
        }
    };
    let size = snapshot.len();
    let reader = tokio::spawn(async move {
        // A row is sent again when the agent's contacts change; its presence latency is
        // the first time this screen saw that (agent, since).
        let mut first = std::collections::HashSet::new();
        // What the snapshot showed is not news (a row sent again for its contacts).
        if let Some(v) = timed.then(|| serde_json::from_str::<Value>(&snapshot).ok()).flatten() {
            for a in v["agents"].as_array().into_iter().flatten() {
                first.insert((a["agent_id"].to_string(), a["since"].to_string()));
            }
        }
        while let Some(Ok(m)) = ws.next().await {
            let Message::Text(t) = m else { continue };
            if !seen.counting.load(Ordering::Relaxed) {
                continue;
            }
            let now = Utc::now();
            seen.frames.fetch_add(1, Ordering::Relaxed);
            seen.bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
            if !timed {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
            let mut lat = Vec::new();
            for a in v["agents"].as_array().into_iter().flatten() {
                if !first.insert((a["agent_id"].to_string(), a["since"].to_string())) {
                    continue;
                }
                if let Some(since) = a["since"].as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok()) {
                    if let Ok(d) = (now - since).to_std() {
                        lat.push(d);
                    }
                }
            }
            seen.lat.lock().unwrap().extend(lat);
        }
    });
    Ok((size, reader))
}

async fn bench() -> Result<(), String> {
    let agents_n = env_usize("WALLBOARD_BENCH_AGENTS", 1000);
    let queues_n = env_usize("WALLBOARD_BENCH_QUEUES", 50);
    let rate = env_usize("WALLBOARD_BENCH_RATE", 1000).max(20);
    let secs = env_usize("WALLBOARD_BENCH_SECS", 8);
    let screens: Vec<usize> = std::env::var("WALLBOARD_BENCH_SCREENS")
        .unwrap_or_else(|_| "1,10,100,500".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let db = TestDb::new().await;
    let e = |e: sqlx::Error| e.to_string();
    let queues: Vec<Uuid> = sqlx::query_scalar("insert into queues (name) select 'queue ' || g from generate_series(1, $1) g returning id")
        .bind(queues_n as i32)
        .fetch_all(&db.pool)
        .await
        .map_err(e)?;
    let agents: Vec<Uuid> = sqlx::query_scalar(
        "insert into agents (name, presence) select 'agent ' || g, 'available' from generate_series(1, $1) g returning id",
    )
    .bind(agents_n as i32)
    .fetch_all(&db.pool)
    .await
    .map_err(e)?;
    // Contacts the events are about: closed rows, so the router leaves them alone; the
    // wallboard follows the events.
    let contacts: Vec<Uuid> =
        sqlx::query_scalar("insert into interactions (channel, status) select 'chat', 'closed' from generate_series(1, $1) returning id")
            .bind((agents_n * 2) as i32)
            .fetch_all(&db.pool)
            .await
            .map_err(e)?;
    let token = support::supervisor_token(&db.pool).await?;

    let (mut child, pid, addr) = support::spawn_hub(&db.url()).await?;
    println!(
        "wallboard: {agents_n} agents, {queues_n} queues; load {rate} events/s for {secs} s per step (contacts queued, answered, closed; presence changes), committed 20 per transaction"
    );
    println!("| open wallboards | hub CPU per 1,000 events | frames per screen per s | delta size (avg bytes) | presence commit → screen p50 / p99 / max (ms, 10 screens) | snapshot (bytes, ms) |");
    println!("|---|---|---|---|---|---|");
    let mut step = 0u64;
    for &n in &screens {
        let seen = Arc::new(Seen::default());
        let t_open = Instant::now();
        let mut snapshot = 0;
        let mut open = Vec::with_capacity(n);
        while open.len() < n {
            let k = (n - open.len()).min(50);
            let first = open.len();
            let tasks: Vec<_> = (0..k).map(|j| screen(addr, &token, seen.clone(), first + j < TIMED_SCREENS)).collect();
            for r in futures::future::join_all(tasks).await {
                let (size, reader) = r?;
                snapshot = size;
                open.push(reader);
            }
        }
        let snap_ms = t_open.elapsed().as_secs_f64() * 1000.0 / n.max(1) as f64;
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen.counting.store(true, Ordering::Relaxed);
        let cpu0 = cpu_ms(pid);
        let t0 = Instant::now();
        let per_tx = 20;
        let txs = rate * secs / per_tx;
        let interval = Duration::from_secs_f64(per_tx as f64 / rate as f64);
        let mut events = 0u64;
        let mut conn = db.pool.acquire().await.map_err(e)?;
        for k in 0..txs {
            let due = t0 + interval * k as u32;
            tokio::time::sleep_until(due.into()).await;
            let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(e)?;
            for _ in 0..per_tx {
                let s = step;
                step += 1;
                let c = (s / 4) as usize;
                let contact = contacts[c % contacts.len()];
                let queue = queues[c % queues.len()];
                let agent = agents[(c * 7) % agents.len()];
                let ev = match s % 4 {
                    0 => NewEvent::interaction("enqueued", contact).with_queue(Some(queue)),
                    1 => NewEvent::interaction("accepted", contact).with_agent(Some(agent)).with_queue(Some(queue)),
                    2 => NewEvent::interaction("closed", contact).with_agent(Some(agent)).with_queue(Some(queue)),
                    _ => {
                        let p = if (s / 4).is_multiple_of(2) { "away" } else { "available" };
                        NewEvent::agent("presence", agents[(c * 13 + 1) % agents.len()]).with_data(json!({ "presence": p }))
                    }
                };
                record(&mut tx, ev).await.map_err(|e| e.to_string())?;
                events += 1;
            }
            tx.commit().await.map_err(e)?;
        }
        let load_secs = t0.elapsed().as_secs_f64();
        // Let the last frames arrive.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        seen.counting.store(false, Ordering::Relaxed);
        let cpu = cpu_ms(pid) - cpu0;
        let frames = seen.frames.load(Ordering::Relaxed);
        let bytes = seen.bytes.load(Ordering::Relaxed);
        let mut lat = std::mem::take(&mut *seen.lat.lock().unwrap());
        let per_screen = frames as f64 / n as f64 / load_secs;
        println!(
            "| {n} | {:.1} ms ({:.0} ms over {events} events in {load_secs:.1} s) | {per_screen:.1} | {:.0} | {:.1} / {:.1} / {:.1} ({} samples) | {snapshot}, {snap_ms:.1} |",
            cpu * 1000.0 / events as f64,
            cpu,
            bytes as f64 / frames.max(1) as f64,
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut lat, 1.0),
            lat.len()
        );
        // Close this step's screens before the next one measures.
        for reader in open {
            reader.abort();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let _ = child.kill().await;
    Ok(())
}
