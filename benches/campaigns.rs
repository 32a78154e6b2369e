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
    ];
    let mut settings = Settings::load(None, env).expect("settings");
    settings.channels.push(smsc::channel(smsc.port, "window = 50\nmax_per_second = 100000\nregistered_delivery = false"));
    settings.crm = Some(toml::from_str("[campaigns]\nworker = false").expect("crm"));
    let database = Database { pool: db.pool.clone(), embedded: None, options: db.options.clone() };
    let running = switchboard::start_with(settings, database).await.expect("hub");
    smsc.wait(30, |e| e["event"] == "bound").await;
    let id = campaign(&db.pool, "send").await;
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
