//! Import benchmark against a real Dovecot: a mailbox of 10,000 mixed messages (the
//! bad-input corpus cycled, each with its own Message-ID) imported by the running adapter
//! (messages per second, target ≥ 500), then new mail delivered one by one while the
//! adapter IDLEs (delivery → committed in the hub: p50/p99, target p99 < 2 s).
//! `cargo bench -p switchboard-email --bench email_import` (needs Dovecot, aiosmtpd and
//! the test PostgreSQL; `EMAIL_BENCH_MESSAGES` changes the mailbox size).

#[path = "../tests/peers/mod.rs"]
mod peers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_core::adapter::{ChannelAdapter, Shutdown};
use switchboard_core::testing::TestDb;
use switchboard_core::Hub;

fn with_message_id(raw: &[u8], id: &str) -> Vec<u8> {
    // Drop the header's own Message-ID lines and put ours first.
    let text = raw;
    let split = text.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2).unwrap_or(0);
    let (head, body) = text.split_at(split);
    let mut out = format!("Message-ID: <{id}>\r\n").into_bytes();
    for line in head.split_inclusive(|b| *b == b'\n') {
        if !line.to_ascii_lowercase().starts_with(b"message-id:") {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    out
}

async fn processed(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from email_raw_messages where status <> 'stored'").fetch_one(db).await.unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(peers) = peers::MailPeers::start() else { return };
    let n: usize = std::env::var("EMAIL_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    corpus.sort();
    let messages: Vec<Vec<u8>> = (0..n).map(|i| with_message_id(&corpus[i % corpus.len()], &format!("bench-{i}@load.test"))).collect();
    let bytes: usize = messages.iter().map(|m| m.len()).sum();
    let t = Instant::now();
    let per = messages.len().div_ceil(4);
    let groups: Vec<Vec<&[u8]>> = messages.chunks(per).map(|c| c.iter().map(|m| m.as_slice()).collect()).collect();
    futures::future::join_all(groups.iter().map(|g| peers.append("support", g))).await;
    println!("mailbox filled: {n} messages, {:.1} MB, in {:.1} s", bytes as f64 / 1e6, t.elapsed().as_secs_f64());

    let db = TestDb::new().await;
    let hub = Hub::new(db.pool.clone(), Default::default());
    let att = std::env::temp_dir().join(format!("sb-email-bench-{}", uuid::Uuid::new_v4().simple()));
    let extra = format!("sender_rate_per_hour = 1000000\nattachments_dir = \"{}\"", att.display());
    let mut table = peers.channel("bench", &extra);
    table["imap"].as_table_mut().unwrap().insert("batch".into(), toml::Value::Integer(500));
    table["imap"].as_table_mut().unwrap().insert("poll_secs".into(), toml::Value::Integer(60));
    let adapter = Arc::new(switchboard_email::build("bench", table).unwrap());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let run = {
        let (a, h) = (adapter.clone(), hub.clone());
        tokio::spawn(async move { a.run(h, Shutdown(rx)).await })
    };
    loop {
        let done = processed(&db.pool).await;
        if done as usize >= n {
            break;
        }
        if t.elapsed() > Duration::from_secs(1800) {
            println!("gave up: {done} of {n} after 30 minutes");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("select status, count(*) from email_raw_messages group by 1 order by 1").fetch_all(&db.pool).await.unwrap();
    println!("import: {n} messages in {secs:.1} s = {:.0} msg/s (target >= 500); outcomes {by_status:?}", n as f64 / secs);

    // New mail while the adapter IDLEs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let k = 200;
    let mut sent_at = Vec::with_capacity(k);
    let mut s = switchboard_email::imap::connect(&peers.imap("support")).await.unwrap();
    for i in 0..k {
        let m = format!("From: live{i}@load.test\r\nTo: support@shop.test\r\nSubject: live {i}\r\nMessage-ID: <live-{i}@load.test>\r\n\r\nnew mail {i}\r\n");
        switchboard_email::imap::append(&mut s, "INBOX", None, m.as_bytes()).await.unwrap();
        sent_at.push((format!("mid:live-{i}@load.test"), chrono::Utc::now()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    while (processed(&db.pool).await as usize) < n + k && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select dedupe_id, processed_at from email_raw_messages where dedupe_id like 'mid:live-%' and processed_at is not null",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let at: std::collections::HashMap<String, chrono::DateTime<chrono::Utc>> = rows.into_iter().collect();
    let mut lat: Vec<f64> =
        sent_at.iter().filter_map(|(id, t0)| at.get(id).map(|t1| (*t1 - *t0).num_microseconds().unwrap_or(0) as f64 / 1000.0)).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1).min(lat.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    println!(
        "IDLE latency (APPEND answered → committed in the hub), {} of {k} messages: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 < 2000 ms)",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    let _ = stop.send(true);
    let _ = run.await;
    let _ = std::fs::remove_dir_all(att);
}
