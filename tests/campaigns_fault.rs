//! Fault test of SMS campaigns: a broadcast to 10,000 customers is being sent by a real
//! `switchboard serve` process when that process is killed with SIGKILL; a second process
//! on the same database finishes the campaign. Counted at the scripted SMSC
//! (`tests/sms/smsc.mjs`): every recipient got the message exactly once, except rows the
//! hub honestly reports `unknown` (a submit whose answer never came: at most once).

#[path = "support/smsc.rs"]
mod smsc;
mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use smsc::Smsc;
use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};
use support::*;
use switchboard_core::testing::TestDb;
use switchboard_core::Role;

const RECIPIENTS: i64 = 10_000;

/// Starts `switchboard serve` with this config file; returns it with its URL.
fn serve(config: &std::path::Path) -> (Child, String) {
    spawn_binary(&["serve", "--config", config.to_str().expect("utf-8 path")])
}

async fn stats(smsc: &mut Smsc, dests: bool) -> Value {
    smsc.cmd(json!({ "cmd": "stats", "dests": dests })).await;
    smsc.wait(20, |e| e["event"] == "stats").await
}

#[tokio::test]
async fn a_broadcast_survives_the_sending_node_being_killed_and_nobody_gets_it_twice() {
    let mut smsc = Smsc::start_with(&[("SMSC_QUIET", "1"), ("SMSC_RECEIPTS", "0")]).await;
    let db = TestDb::new().await;
    // 10,000 customers with consent and a mobile number.
    sqlx::query(
        "with c as (insert into customers (name, consent_sms, tags, time_zone)
                    select 'Customer ' || i, true, '{all}', 'UTC' from generate_series(1, $1) i returning id, name)
         insert into customer_identities (customer_id, kind, address)
         select id, 'phone', '+4915170' || lpad(split_part(name, ' ', 2), 6, '0') from c",
    )
    .bind(RECIPIENTS as i32)
    .execute(&db.pool)
    .await
    .unwrap();
    switchboard_core::auth::create_user(&db.pool, None, "mia", "Mia", "test-password-1", &[Role::Marketer]).await.unwrap();

    let dir = std::env::temp_dir().join(format!("sb-campaign-fault-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{}\"\n[outbox]\npoll_ms = 50\nbackoff_ms = 200\nworkers = 8\nsending_lease_secs = 3\n\
             [crm.campaigns]\ntick_ms = 100\n\
             [[channels]]\ntype = \"smpp\"\nname = \"sms-main\"\nhost = \"127.0.0.1\"\nport = {}\nsystem_id = \"switchboard\"\npassword = \"secret\"\n\
             source_address = \"4930123456\"\nresponse_timeout_secs = 2\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\nlease_secs = 3\n\
             window = 10\nmax_per_second = 800\n",
            db.url(),
            smsc.port
        ),
    )
    .unwrap();

    // Node A starts the broadcast.
    let (mut a, url_a) = serve(&config);
    smsc.wait(30, |e| e["event"] == "bound").await;
    let m = Client::login(&url_a, "mia", "test-password-1").await;
    let (st, c) = m
        .call(
            "POST",
            "/api/v1/campaigns",
            Some(json!({ "name": "Everyone", "kind": "broadcast", "audience": { "tags_any": ["all"] }, "quiet_start": null, "quiet_end": null,
                         "template": { "default": "Big news, {first_name}: we open on Sunday" } })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    let id = c["id"].as_str().unwrap().to_string();
    let (st, b) = m.call("POST", &format!("/api/v1/campaigns/{id}/start"), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");

    // Kill A mid-run, once the SMSC has a good part of the messages.
    let deadline = Instant::now() + Duration::from_secs(120);
    let before_kill = loop {
        let s = stats(&mut smsc, false).await;
        let n = s["submits"].as_i64().unwrap();
        if n >= 2_000 {
            break n;
        }
        assert!(Instant::now() < deadline, "node A sent only {n} in 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    unsafe {
        libc::kill(a.id() as i32, libc::SIGKILL);
    }
    let _ = a.wait();
    let at_kill = stats(&mut smsc, false).await["submits"].as_i64().unwrap();
    assert!(at_kill < RECIPIENTS, "node A finished before it was killed ({at_kill}); the test needs a slower channel");

    // Node B, same database, finishes (after A's bind lease and outbox claims expire).
    let (mut b_node, url_b) = serve(&config);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mb = Client::login(&url_b, "mia", "test-password-1").await;
    let totals = loop {
        let (st, v) = mb.call("GET", &format!("/api/v1/campaigns/{id}"), None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let t = v["totals"].clone();
        let open = t["planned"].as_i64().unwrap() + t["deferred"].as_i64().unwrap() + t["sending"].as_i64().unwrap();
        if open == 0 && v["status"] == "completed" {
            break t;
        }
        assert!(Instant::now() < deadline, "node B did not finish within 180 s: {t}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // Every recipient row against the SMSC's count for its number.
    let s = stats(&mut smsc, true).await;
    let at_peer: HashMap<String, i64> = s["dests"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_i64().unwrap())).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select substr(ci.address, 2), r.status from campaign_recipients r
           join customer_identities ci on ci.customer_id = r.customer_id and ci.kind = 'phone'
          where r.campaign_id = $1::uuid",
    )
    .bind(&id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len() as i64, RECIPIENTS);
    let mut by_status: HashMap<String, i64> = HashMap::new();
    for (number, status) in &rows {
        *by_status.entry(status.clone()).or_default() += 1;
        let n = at_peer.get(number).copied().unwrap_or(0);
        match status.as_str() {
            "sent" | "delivered" => assert_eq!(n, 1, "{number} is {status} but reached the SMSC {n} times"),
            "unknown" => assert!(n <= 1, "{number} is unknown but reached the SMSC {n} times"),
            other => panic!("{number} ended {other}; expected sent or unknown"),
        }
    }
    assert_eq!(s["duplicated"], 0, "no number got the message twice");
    assert_eq!(s["submits"].as_i64().unwrap(), s["distinct"].as_i64().unwrap());
    let unknown = by_status.get("unknown").copied().unwrap_or(0);
    println!(
        "fault test: {RECIPIENTS} recipients; SMSC had {before_kill}..{at_kill} when node A was killed; final {by_status:?}; \
         {} messages at the SMSC, 0 duplicates; {unknown} honestly unknown",
        s["submits"]
    );
    assert_eq!(totals["unknown"].as_i64().unwrap(), unknown);
    let _ = b_node.kill();
    let _ = b_node.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
