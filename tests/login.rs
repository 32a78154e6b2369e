//! Sign-in throttling and the audit of sign-ins, sign-outs and presence changes.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;
use switchboard_core::Role;

/// One sign-in attempt: status, `Retry-After` seconds, body.
async fn attempt(base: &str, username: &str, password: &str) -> (StatusCode, Option<u64>, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .expect("request");
    let st = resp.status();
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    (st, retry, resp.json().await.unwrap_or(Value::Null))
}

async fn audit_rows(th: &TestHub, action: &str) -> Vec<Value> {
    sqlx::query_scalar("select details from audit_log where action = $1 order by id").bind(action).fetch_all(&th.db.pool).await.unwrap()
}

/// Logs in with the right password once the lockout is over, at most `secs` from now.
async fn login_when_unlocked(base: &str, username: &str, password: &str, secs: u64) {
    eventually(secs, || async move {
        let (st, _, b) = attempt(base, username, password).await;
        assert!(st == StatusCode::OK || st == StatusCode::TOO_MANY_REQUESTS, "{st} {b}");
        (st == StatusCode::OK).then_some(())
    })
    .await
}

#[tokio::test]
async fn wrong_passwords_lock_the_username_for_a_growing_time() {
    let th = spawn_hub_with(|s| {
        // Long enough for the 7 refused attempts below to fall inside the first lockout,
        // even on a loaded machine.
        s.auth.login_lockout_secs = 5;
        s.auth.login_lockout_max_secs = 60;
    })
    .await;
    let alice = user(&th, "alice", &[Role::Agent], None).await;
    drop(alice);
    // 12 wrong passwords: the first five are plain 401s, the fifth locks the username, and
    // everything after is 429 with Retry-After — even the right password.
    let mut statuses = vec![];
    for _ in 0..12 {
        let (st, retry, b) = attempt(&th.url, "alice", "wrong-password-9").await;
        if st == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(b["code"], "login_locked", "{b}");
            assert!(retry.is_some_and(|r| r >= 1), "no Retry-After: {b}");
        }
        statuses.push(st);
    }
    assert!(statuses[..5].iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    let (st, first_retry, b) = attempt(&th.url, "alice", "test-password-1").await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "the right password got through a lockout: {b}");
    assert!(first_retry.is_some());
    // Another username from the same address is not locked (five failures are far below
    // the address's limit).
    user(&th, "bob", &[Role::Agent], None).await;

    // Once the lockout is over, guesses count again: a new round of five locks the
    // username twice as long as the first time.
    eventually(30, || async {
        let (st, _, b) = attempt(&th.url, "alice", "wrong-password-9").await;
        assert!(st == StatusCode::UNAUTHORIZED || st == StatusCode::TOO_MANY_REQUESTS, "{st} {b}");
        (st == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    for _ in 0..4 {
        let (st, _, b) = attempt(&th.url, "alice", "wrong-password-9").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{b}");
    }
    let (st, second_retry, _) = attempt(&th.url, "alice", "test-password-1").await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    let lockouts = audit_rows(&th, "auth.lockout").await;
    let secs: Vec<i64> = lockouts.iter().filter(|d| d["username"] == "alice").map(|d| d["lockout_secs"].as_i64().unwrap()).collect();
    assert_eq!(secs, vec![5, 10], "{lockouts:?}");
    assert!(second_retry.unwrap() >= 9, "{second_retry:?}");
    // After the lockout, the right password works again (and starts the count over).
    login_when_unlocked(&th.url, "alice", "test-password-1", 30).await;
    let left: i64 =
        sqlx::query_scalar("select count(*) from login_throttle where key = 'user:alice'").fetch_one(&th.db.pool).await.unwrap();
    assert_eq!(left, 0);

    // The audit log has the successes and failures with address and reason, never the
    // password.
    let failed = audit_rows(&th, "auth.login_failed").await;
    let alice_failed: Vec<&Value> = failed.iter().filter(|d| d["username"] == "alice").collect();
    assert_eq!(alice_failed.len(), 10, "{failed:?}");
    assert!(alice_failed.iter().all(|d| d["reason"] == "bad_password" && d["ip"] == "127.0.0.1"), "{alice_failed:?}");
    let ok = audit_rows(&th, "auth.login").await;
    assert!(ok.iter().filter(|d| d["username"] == "alice").count() >= 2, "{ok:?}");
    let leaked: i64 =
        sqlx::query_scalar("select count(*) from audit_log where details::text like '%password-%'").fetch_one(&th.db.pool).await.unwrap();
    assert_eq!(leaked, 0, "a password reached the audit log");
    th.stop().await;
}

#[tokio::test]
async fn failures_from_one_address_lock_the_address() {
    let th = spawn_hub_with(|s| {
        s.auth.login_max_failures_per_ip = 6;
        s.auth.login_lockout_secs = 3;
    })
    .await;
    let carol =
        switchboard_core::auth::create_user(th.hub().db(), None, "carol", "carol", "test-password-1", &[Role::Agent]).await.unwrap();
    // One wrong guess each for six usernames: no username reaches its limit, the address does.
    for i in 0..6 {
        let (st, _, b) = attempt(&th.url, &format!("nobody{i}"), "wrong-password-9").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{b}");
    }
    let (st, retry, b) = attempt(&th.url, "carol", "test-password-1").await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{b}");
    assert!(retry.is_some());
    let failed = audit_rows(&th, "auth.login_failed").await;
    assert!(failed.iter().all(|d| d["reason"] == "unknown_user"), "{failed:?}");
    login_when_unlocked(&th.url, "carol", "test-password-1", 10).await;
    let ok: i64 = sqlx::query_scalar("select count(*) from audit_log where action = 'auth.login' and actor_user_id = $1")
        .bind(carol.id)
        .fetch_one(&th.db.pool)
        .await
        .unwrap();
    assert_eq!(ok, 1);
    th.stop().await;
}

#[tokio::test]
async fn sign_out_and_presence_changes_are_audited() {
    let th = spawn_hub().await;
    let sup = user(&th, "sam", &[Role::Supervisor], None).await;
    let dan = user(&th, "dan", &[Role::Agent], Some(json!({ "billing": 3 }))).await;
    let agent = dan.agent_id.unwrap();
    let (st, b) = dan.call("PUT", &format!("/api/v1/agents/{agent}/presence"), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let (st, b) = sup.call("PUT", &format!("/api/v1/agents/{agent}/presence"), Some(json!({ "presence": "away" }))).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let rows: Vec<(Option<uuid::Uuid>, Value)> =
        sqlx::query_as("select actor_user_id, details from audit_log where action = 'agent.presence' and target_id = $1 order by id")
            .bind(agent.to_string())
            .fetch_all(&th.db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].0, dan.user_id);
    assert_eq!(rows[0].1, json!({ "from": "offline", "to": "available", "by": "dan" }));
    assert_eq!(rows[1].0, sup.user_id);
    assert_eq!(rows[1].1, json!({ "from": "available", "to": "away", "by": "sam" }));
    let (st, b) = dan.call("POST", "/api/v1/auth/logout", None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let out: Vec<Value> = audit_rows(&th, "auth.logout").await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["username"], "dan");
    // The audit API shows them to admins.
    let admin = user(&th, "root", &[Role::Admin], None).await;
    let (st, page) = admin.call("GET", "/api/v1/audit?limit=100", None).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    let actions: Vec<&str> = page["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["auth.login", "auth.logout", "agent.presence"] {
        assert!(actions.contains(&a), "{a} missing in {actions:?}");
    }
    th.stop().await;
}
