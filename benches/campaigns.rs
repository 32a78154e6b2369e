//! SMS campaign benchmark (`harness = false`), on the local PostgreSQL of the tests
//! (`SWITCHBOARD_TEST_DATABASE_URL`) and the scripted SMSC of `tests/sms/smsc.mjs` (quiet
//! mode, no receipts):
//! 1. planning: a broadcast to `CAMPAIGN_BENCH_PLAN` customers (default 100,000) — the
//!    keyset-batched INSERT … SELECT of the planner, with its progress updates;
//! 2. sending: a broadcast to `CAMPAIGN_BENCH_SEND` customers (default 20,000) through the
//!    real path — engine hand-over to the outbox, outbox workers, the smpp channel (window
//!    50, throttle off) — timed until the SMSC has answered every submit_sm; duplicates
//!    counted at the SMSC.
//!
//! Bounded: every wait has a hard limit (`CAMPAIGN_BENCH_TIMEOUT_SECS`, default 300).
//! Run: `cargo bench --bench campaigns`.

#[path = "../tests/support/smsc.rs"]
mod smsc;

use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard::settings::Settings;
use switchboard_core::db::Database;
use switchboard_core::testing::TestDb;
use switchboard_crm::campaigns::{CampaignConfig, Engine};
use uuid::Uuid;

fn env_i64(k: &str, d: i64) -> i64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

async fn campaign(db: &sqlx::PgPool, tag: &str) -> Uuid {
    sqlx::query_scalar(
        "insert into campaigns (name, kind, status, audience, template, quiet_start, quiet_end, starts_at)
         values ('bench ' || $1, 'broadcast', 'running', jsonb_build_object('tags_any', jsonb_build_array($1::text)),
                 '{\"default\": \"Hello {first_name}, our spring sale starts today\"}', null, null, now()) returning id",
    )
    .bind(tag)
    .fetch_one(db)
    .await
    .expect("campaign")
}

#[tokio::main]
async fn main() {
    let plan_n = env_i64("CAMPAIGN_BENCH_PLAN", 100_000);
    let send_n = env_i64("CAMPAIGN_BENCH_SEND", 20_000).min(plan_n);
    let timeout = Duration::from_secs(env_i64("CAMPAIGN_BENCH_TIMEOUT_SECS", 300) as u64);
    let db = TestDb::new().await;
    let t = Instant::now();
    sqlx::query(
        "with c as (insert into customers (name, consent_sms, tags, time_zone)
                    select 'Customer ' || i, true, case when i <= $2 then '{plan,send}'::text[] else '{plan}'::text[] end, 'UTC'
                      from generate_series(1, $1) i returning id, name)
         insert into customer_identities (customer_id, kind, address)
         select id, 'phone', '+4915180' || lpad(split_part(name, ' ', 2), 6, '0') from c",
    )
    .bind(plan_n as i32)
    .bind(send_n as i32)
    .execute(&db.pool)
    .await
    .expect("customers");
    sqlx::query("analyze").execute(&db.pool).await.expect("analyze");
    println!("setup: {plan_n} customers in {:.1} s", t.elapsed().as_secs_f64());

    // 1. Planning.
    let engine = Engine::new(db.pool.clone(), Arc::new(CampaignConfig::default()), Uuid::new_v4());
    let id = campaign(&db.pool, "plan").await;
    let t = Instant::now();
    let planned = tokio::time::timeout(timeout, engine.plan()).await.expect("planning within the time limit").expect("plan");
    let plan_secs = t.elapsed().as_secs_f64();
    let rows: i64 =
        sqlx::query_scalar("select count(*) from campaign_recipients where campaign_id = $1").bind(id).fetch_one(&db.pool).await.unwrap();
    assert_eq!(rows, plan_n);
    println!("planning: {planned} recipients in {plan_secs:.2} s ({:.0}/s; target < 10 s)", planned as f64 / plan_secs);
    sqlx::query("update campaigns set status = 'cancelled' where id = $1").bind(id).execute(&db.pool).await.unwrap();

    // 2. Sending through the real path.
    let mut smsc = smsc::Smsc::start_with(&[("SMSC_QUIET", "1"), ("SMSC_RECEIPTS", "0")]).await;
    let env: Vec<(String, String)> = vec![
        ("SWITCHBOARD__HTTP__BIND".into(), "\"127.0.0.1:0\"".into()),
        ("SWITCHBOARD__DATABASE__URL".into(), format!("\"{}\"", db.url())),
        ("SWITCHBOARD__OUTBOX__POLL_MS".into(), "20".into()),
        ("SWITCHBOARD__OUTBOX__WORKERS".into(), env_i64("CAMPAIGN_BENCH_WORKERS", 4).to_string()),
        ("SWITCHBOARD__OUTBOX__CLAIM_BATCH".into(), env_i64("CAMPAIGN_BENCH_CLAIM_BATCH", 64).to_string()),
    ];
    let mut settings = Settings::load(None, env).expect("settings");
    settings.channels.push(smsc::channel(smsc.port, "window = 50\nmax_per_second = 100000\nregistered_delivery = false"));
    settings.crm = Some(toml::from_str("[campaigns]\nworker = false").expect("crm"));
    let database = Database { pool: db.pool.clone(), embedded: None, options: db.options.clone() };
    let running = switchboard::start_with(settings, database).await.expect("hub");
    smsc.wait(30, |e| e["event"] == "bound").await;
    let id = campaign(&db.pool, "send").await;
    let before = table_stats(&db.pool).await;
    let profiler = std::env::var("CAMPAIGN_BENCH_PROFILE").is_ok_and(|v| v == "1").then(|| Profiler::start(db.pool.clone()));
    let t = Instant::now();
    engine.plan().await.expect("plan");
    let planned_at = t.elapsed().as_secs_f64();
    // Hand over everything (as the background worker would, tick after tick).
    let handed_task = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut handed = 0;
            while handed < send_n as u64 {
                let p = engine.dispatch(1000).await.expect("dispatch");
                if p.handed == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                handed += p.handed;
            }
            t.elapsed().as_secs_f64()
        })
    };
    let submits = loop {
        smsc.cmd(json!({ "cmd": "stats" })).await;
        let s = smsc.wait(20, |e| e["event"] == "stats").await;
        let n = s["submits"].as_i64().unwrap_or(0);
        if n >= send_n {
            break s;
        }
        assert!(t.elapsed() < timeout, "only {n} of {send_n} at the SMSC after {:?}", timeout);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let secs = t.elapsed().as_secs_f64();
    let handed_secs = handed_task.await.unwrap_or(f64::NAN);
    if let Some(p) = profiler {
        p.report().await;
    }
    // Statistics reach the views when a backend goes idle: give them a moment.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = table_stats(&db.pool).await;
    println!("writes during the send, per message (rows inserted / updated / of which HOT; `(commits)`: commits of this database):");
    for (name, a) in &after {
        let b = before.iter().find(|(n, _)| n == name).map(|(_, b)| *b).unwrap_or_default();
        let per = |x: i64, y: i64| (x - y) as f64 / send_n as f64;
        println!("  {name:<22} {:.2} / {:.2} / {:.2}", per(a.0, b.0), per(a.1, b.1), per(a.2, b.2));
    }
    engine.reconcile().await.expect("reconcile");
    let sent: i64 = sqlx::query_scalar("select count(*) from campaign_recipients where campaign_id = $1 and status = 'sent'")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0);
    println!(
        "sending: {send_n} messages at the SMSC in {secs:.2} s = {:.0} msg/s (target >= 1,000/s; its planning, {planned_at:.2} s, included; all handed to the outbox after {handed_secs:.2} s); {} distinct numbers, {} duplicated (target 0); {sent} rows sent after reconcile",
        send_n as f64 / secs,
        submits["distinct"],
        submits["duplicated"]
    );
    running.stop().await;
}

/// Per table: rows inserted, updated, of which HOT; `(commits)`: this database's commits.
async fn table_stats(db: &sqlx::PgPool) -> Vec<(String, (i64, i64, i64))> {
    let mut v: Vec<(String, (i64, i64, i64))> = sqlx::query_as::<_, (String, i64, i64, i64)>(
        "select relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd from pg_stat_user_tables
          where relname in ('outbox','sms_sent','sms_message_ids','campaign_recipients') order by relname",
    )
    .fetch_all(db)
    .await
    .unwrap_or_default()
    .into_iter()
    .map(|(n, a, b, c)| (n, (a, b, c)))
    .collect();
    let commits: i64 =
        sqlx::query_scalar("select xact_commit from pg_stat_database where datname = current_database()").fetch_one(db).await.unwrap_or(0);
    v.push(("(commits)".into(), (commits, 0, 0)));
    v
}

/// A sampling profile of the database server (`CAMPAIGN_BENCH_PROFILE=1`; no
/// pg_stat_statements needed): every 5 ms, which statements of this database are running
/// and what they wait on. A statement's share of the samples is its share of the busy
/// backends' time.
struct Profiler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(u64, std::collections::HashMap<String, u64>)>,
}

impl Profiler {
    fn start(db: sqlx::PgPool) -> Profiler {
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut counts = std::collections::HashMap::new();
            let mut samples = 0u64;
            // Bounded: stops when told, or after 10 minutes at the latest.
            let until = Instant::now() + Duration::from_secs(600);
            while !*rx.borrow() && Instant::now() < until {
                let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                    "select query, wait_event from pg_stat_activity
                      where datname = current_database() and state = 'active' and pid <> pg_backend_pid()",
                )
                .fetch_all(&db)
                .await
                .unwrap_or_default();
                samples += 1;
                for (q, wait) in rows {
                    let q: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
                    let head: String = q.chars().take(90).collect();
                    *counts.entry(format!("{head} [{}]", wait.unwrap_or_else(|| "cpu".into()))).or_insert(0) += 1;
                }
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            (samples, counts)
        });
        Profiler { stop, task }
    }

    async fn report(self) {
        let _ = self.stop.send(true);
        let Ok((samples, counts)) = self.task.await else { return };
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.1));
        let busy: u64 = v.iter().map(|x| x.1).sum();
        println!(
            "server profile: {samples} samples, {:.2} statements running on average; top statements:",
            busy as f64 / samples.max(1) as f64
        );
        for (q, n) in v.into_iter().take(15) {
            println!("  {:5.1} %  {q}", 100.0 * n as f64 / busy.max(1) as f64);
        }
    }
}
