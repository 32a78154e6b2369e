//! Shared helpers for the end-to-end tests: a hub on a throwaway database and port 0, an
//! HTTP client that signs in like the browser does, and an in-process test adapter.
#![allow(dead_code)]

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard::settings::Settings;
use switchboard::Running;
use switchboard_core::adapter::{AdapterError, ChannelAdapter, DeliveryReceipt, Outbound, Shutdown};
use switchboard_core::db::Database;
use switchboard_core::testing::TestDb;
use switchboard_core::{Channel, Hub, Role};
use uuid::Uuid;

/// A running hub on its own database.
pub struct TestHub {
    pub running: Option<Running>,
    pub db: TestDb,
    pub url: String,
}

impl TestHub {
    pub fn hub(&self) -> &Hub {
        &self.running.as_ref().expect("running").hub
    }
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// Settings for tests: port 0, fast router ticks.
pub fn test_settings(db_url: &str, extra_env: &[(&str, &str)]) -> Settings {
    let mut env: Vec<(String, String)> = vec![
        ("SWITCHBOARD__HTTP__BIND".into(), "\"127.0.0.1:0\"".into()),
        ("SWITCHBOARD__DATABASE__URL".into(), format!("\"{db_url}\"")),
        ("SWITCHBOARD__ROUTER__TICK_MS".into(), "50".into()),
        ("SWITCHBOARD__ROUTER__STANDBY_POLL_MS".into(), "200".into()),
        ("SWITCHBOARD__OUTBOX__POLL_MS".into(), "50".into()),
        ("SWITCHBOARD__OUTBOX__BACKOFF_MS".into(), "50".into()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::load(None, env).expect("test settings")
}

/// Starts a hub on a fresh database.
pub async fn spawn_hub() -> TestHub {
    spawn_hub_with(|_| {}).await
}

/// Starts a hub on a fresh database, letting the caller adjust settings or add adapters.
pub async fn spawn_hub_with(adjust: impl FnOnce(&mut Settings)) -> TestHub {
    let db = TestDb::new().await;
    let mut s = test_settings(&db.url(), &[]);
    adjust(&mut s);
    let database = Database { pool: db.pool.clone(), embedded: None, options: db.options.clone() };
    let running = switchboard::start_with(s, database).await.expect("start hub");
    let url = running.url();
    TestHub { running: Some(running), db, url }
}

/// Starts a second hub process-equivalent on the same database.
#[allow(dead_code)]
pub async fn spawn_node(db: &TestDb) -> Running {
    spawn_node_with(db, |_| {}).await
}

/// Starts another node on the same database with adjusted settings.
pub async fn spawn_node_with(db: &TestDb, adjust: impl FnOnce(&mut Settings)) -> Running {
    let mut s = test_settings(&db.url(), &[]);
    adjust(&mut s);
    let database =
        Database { pool: sqlx::PgPool::connect_with(db.options.clone()).await.expect("pool"), embedded: None, options: db.options.clone() };
    switchboard::start_with(s, database).await.expect("start node")
}

/// A signed-in HTTP client (session cookie + CSRF header), like the browser.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub csrf: Option<String>,
    pub bearer: Option<String>,
    pub agent_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
}

impl Client {
    pub fn anonymous(base: &str) -> Client {
        Client {
            http: reqwest::Client::builder().cookie_store(true).build().expect("client"),
            base: base.to_string(),
            csrf: None,
            bearer: None,
            agent_id: None,
            user_id: None,
        }
    }

    pub async fn login(base: &str, username: &str, password: &str) -> Client {
        let mut c = Client::anonymous(base);
        let (st, body) = c.call("POST", "/api/v1/auth/login", Some(json!({ "username": username, "password": password }))).await;
        assert_eq!(st, StatusCode::OK, "login {username}: {body}");
        c.csrf = body["csrf_token"].as_str().map(str::to_string);
        c.agent_id = body["agent_id"].as_str().and_then(|s| s.parse().ok());
        c.user_id = body["user"]["id"].as_str().and_then(|s| s.parse().ok());
        c
    }

    pub fn with_token(base: &str, token: &str) -> Client {
        let mut c = Client::anonymous(base);
        c.bearer = Some(token.to_string());
        c
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.http.request(m, format!("{}{}", self.base, path));
        if let Some(c) = &self.csrf {
            rb = rb.header("x-csrf-token", c);
        }
        if let Some(t) = &self.bearer {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("request");
        let st = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (st, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn raw(&self, method: &str, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, Value, Option<String>) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.http.request(m, format!("{}{}", self.base, path)).body(body);
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        if let Some(c) = &self.csrf {
            rb = rb.header("x-csrf-token", c);
        }
        let resp = rb.send().await.expect("request");
        let st = resp.status();
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = resp.text().await.unwrap_or_default();
        (st, serde_json::from_str(&text).unwrap_or(Value::String(text)), ct)
    }
}

/// Creates a user (and optionally an agent) directly, returning a signed-in client.
pub async fn user(hub: &TestHub, username: &str, roles: &[Role], skills: Option<Value>) -> Client {
    let password = "test-password-1";
    let u = switchboard_core::auth::create_user(hub.hub().db(), None, username, username, password, roles).await.expect("create user");
    if let Some(skills) = skills {
        sqlx::query("insert into agents (user_id, name, skills) values ($1, $2, $3)")
            .bind(u.id)
            .bind(username)
            .bind(skills)
            .execute(hub.hub().db())
            .await
            .expect("agent");
    }
    Client::login(&hub.url, username, password).await
}

/// Creates a queue through the API as an admin.
pub async fn queue(admin: &Client, body: Value) -> Value {
    let (st, q) = admin.call("POST", "/api/v1/queues", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{q}");
    q
}

/// Waits until `f` returns Some, polling, up to `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition not met within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the hub's rollup worker has applied every event written so far (its
/// watermark reached the last event id).
pub async fn rolled_up(pool: &sqlx::PgPool) {
    let last: i64 = sqlx::query_scalar("select max(id) from interaction_events").fetch_one(pool).await.expect("max event id");
    eventually(30, || {
        let pool = pool.clone();
        async move {
            let wm: Option<i64> = sqlx::query_scalar("select watermark from report_progress").fetch_optional(&pool).await.ok().flatten();
            wm.filter(|w| *w >= last)
        }
    })
    .await;
}

/// An in-process channel adapter for tests: records deliveries, can be told to fail.
pub struct TestAdapter {
    pub channel: Channel,
    pub delivered: Mutex<Vec<Outbound>>,
    pub fail_next: Mutex<u32>,
    pub permanent: Mutex<bool>,
}

impl TestAdapter {
    pub fn new(channel: Channel) -> Arc<TestAdapter> {
        Arc::new(TestAdapter { channel, delivered: Mutex::new(vec![]), fail_next: Mutex::new(0), permanent: Mutex::new(false) })
    }
}

#[async_trait]
impl ChannelAdapter for TestAdapter {
    fn channel(&self) -> Channel {
        self.channel
    }
    fn name(&self) -> &str {
        "test"
    }
    async fn run(&self, _hub: Hub, mut shutdown: Shutdown) -> Result<(), AdapterError> {
        shutdown.wait().await;
        Ok(())
    }
    async fn deliver(&self, msg: &Outbound) -> Result<DeliveryReceipt, AdapterError> {
        if *self.permanent.lock().expect("lock") {
            return Err(AdapterError::Permanent("recipient rejected".into()));
        }
        {
            let mut f = self.fail_next.lock().expect("lock");
            if *f > 0 {
                *f -= 1;
                return Err(AdapterError::Temporary("peer unavailable".into()));
            }
        }
        self.delivered.lock().expect("lock").push(msg.clone());
        Ok(DeliveryReceipt { provider_id: Some(format!("test-{}", msg.id)) })
    }
}

/// An inbound item for tests.
pub fn inbound(channel: Channel, key: &str, from: &str, body: &str) -> switchboard_core::InboundItem {
    switchboard_core::InboundItem {
        channel: Some(channel),
        dedupe_key: key.to_string(),
        from: from.to_string(),
        body: body.to_string(),
        ..Default::default()
    }
}

/// Starts the `switchboard` binary with `args` and waits for the first URL it prints
/// (the HTTP address it serves). Its stdout keeps being drained so it never blocks on a
/// full pipe; stderr is dropped. Panics (after killing it) when it prints no URL.
pub fn spawn_binary(args: &[&str]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .env("SWITCHBOARD_LOG", "warn")
        .spawn()
        .expect("spawn switchboard");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut url = None;
    for l in lines.by_ref().map_while(Result::ok) {
        if let Some(u) = l.split_whitespace().find(|w| w.starts_with("http://")) {
            url = Some(u.trim_end_matches('/').to_string());
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let url = url.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("switchboard {args:?} printed no URL")
    });
    (child, url)
}
