//! Knowledge base end to end through the HTTP API, written once and run against both
//! search backends: PostgreSQL full text always, Meilisearch when `MEILISEARCH_URL` is
//! set (optional `MEILISEARCH_API_KEY`). Covers typo tolerance, filters and locales,
//! configured synonyms and stop words, visibility of unpublished articles, the outbox
//! catching up after a backend outage, deletion, agent assist and who may ask for it,
//! safe Markdown, attachments and the full reindex.

mod support;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use support::{eventually, inbound, test_settings, Client};
use switchboard_core::testing::TestDb;
use switchboard_core::{Channel, Hub, Role};
use switchboard_kb::search::{build_backend, IndexDoc, SearchResults};
use switchboard_kb::{BackendKind, Kb, KbConfig, KbError, SearchBackend, SearchQuery};
use tokio::sync::watch;
use uuid::Uuid;

/// A backend that, while `down` is set, fails (or goes to `broken`, e.g. Meilisearch on
/// a closed port) for writes, and for reads when a `broken` backend is given.
struct Outage {
    healthy: Arc<dyn SearchBackend>,
    broken: Option<Arc<dyn SearchBackend>>,
    down: Arc<AtomicBool>,
}

impl Outage {
    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl SearchBackend for Outage {
    fn name(&self) -> &'static str {
        self.healthy.name()
    }
    async fn configure(&self) -> Result<(), KbError> {
        match (&self.broken, self.is_down()) {
            (Some(b), true) => b.configure().await,
            (None, true) => Err(KbError::Backend("simulated outage".into())),
            _ => self.healthy.configure().await,
        }
    }
    async fn apply(&self, upserts: &[IndexDoc], deletes: &[Uuid]) -> Result<(), KbError> {
        match (&self.broken, self.is_down()) {
            (Some(b), true) => b.apply(upserts, deletes).await,
            (None, true) => Err(KbError::Backend("simulated outage".into())),
            _ => self.healthy.apply(upserts, deletes).await,
        }
    }
    async fn search(&self, q: &SearchQuery) -> Result<SearchResults, KbError> {
        match (&self.broken, self.is_down()) {
            (Some(b), true) => b.search(q).await,
            _ => self.healthy.search(q).await,
        }
    }
    async fn retain_only(&self, keep: &[Uuid]) -> Result<(), KbError> {
        self.healthy.retain_only(keep).await
    }
}

struct Harness {
    db: TestDb,
    hub: Hub,
    url: String,
    kb: Arc<Kb>,
    down: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
}

async fn spawn(cfg: KbConfig, broken: Option<KbConfig>) -> Harness {
    let db = TestDb::new().await;
    let settings = test_settings(&db.url(), &[]);
    let hub = Hub::new(db.pool.clone(), settings.core());
    let (stop, stop_rx) = watch::channel(false);
    let down = Arc::new(AtomicBool::new(false));
    let backend = Arc::new(Outage {
        healthy: build_backend(&db.pool, &cfg).expect("backend"),
        broken: broken.map(|c| build_backend(&db.pool, &c).expect("broken backend")),
        down: down.clone(),
    });
    let (kb_router, kb) = switchboard_kb::start_with_backend(&hub, cfg, backend, stop_rx.clone()).await.expect("start kb");
    let app = switchboard_core::api::router(&hub).merge(kb_router).with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let mut srv_stop = stop_rx;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = srv_stop.wait_for(|v| *v).await;
            })
            .await;
    });
    Harness { db, hub, url, kb, down, stop }
}

async fn login(h: &Harness, name: &str, roles: &[Role], agent: bool) -> Client {
    let u = switchboard_core::auth::create_user(h.hub.db(), None, name, name, "test-password-1", roles).await.expect("user");
    if agent {
        sqlx::query("insert into agents (user_id, name, skills) values ($1, $2, '{}')")
            .bind(u.id)
            .bind(name)
            .execute(h.hub.db())
            .await
            .expect("agent");
    }
    Client::login(&h.url, name, "test-password-1").await
}

async fn agent_id(h: &Harness, name: &str) -> Uuid {
    sqlx::query_scalar("select id from agents where name = $1").bind(name).fetch_one(h.hub.db()).await.expect("agent id")
}

async fn create(c: &Client, body: Value) -> Value {
    let (st, a) = c.call("POST", "/api/v1/kb/articles", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    a
}

async fn search(c: &Client, query: &str) -> Value {
    let (st, r) = c.call("GET", &format!("/api/v1/kb/search?{query}"), None).await;
    assert_eq!(st, StatusCode::OK, "{query}: {r}");
    r
}

fn titles(r: &Value) -> Vec<String> {
    r["items"].as_array().map(|a| a.iter().filter_map(|i| i["title"].as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn ids(r: &Value) -> Vec<String> {
    r["items"].as_array().map(|a| a.iter().filter_map(|i| i["id"].as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// Waits until the outbox is empty.
async fn caught_up(c: &Client) {
    eventually(30, || async {
        let (_, s) = c.call("GET", "/api/v1/kb/index/status", None).await;
        (s["pending"].as_i64() == Some(0)).then_some(())
    })
    .await;
}

/// The suite, once for any backend.
async fn suite(cfg: KbConfig, broken: Option<KbConfig>) {
    let backend = cfg.backend;
    let h = spawn(cfg, broken).await;
    let ken = login(&h, "ken", &[Role::KbEditor], false).await;
    let alice = login(&h, "alice", &[Role::Agent], true).await;
    let bob = login(&h, "bob", &[Role::Agent], true).await;
    let sue = login(&h, "sue", &[Role::Supervisor], false).await;
    let portal = Client::anonymous(&h.url);

    let reset = create(
        &ken,
        json!({ "title": "Password reset", "category": "account", "tags": ["login", "security"], "locale": "en",
                "status": "published", "public": true,
                "body": "If you forgot your password, open the sign-in page and follow the **reset** link we email you." }),
    )
    .await;
    let es = create(
        &ken,
        json!({ "title": "Restablecer la contraseña", "category": "account", "tags": ["login"], "locale": "es",
                "status": "published", "public": true,
                "body": "Si olvidaste tu contraseña, usa el enlace para restablecerla que te enviamos por correo." }),
    )
    .await;
    let billing = create(
        &ken,
        json!({ "title": "Billing cycles and invoices", "category": "billing", "tags": ["invoice"], "locale": "en",
                "status": "published", "body": "Invoices are issued on the first day of each billing cycle." }),
    )
    .await;
    let draft = create(
        &ken,
        json!({ "title": "Password policy draft", "category": "account", "locale": "en", "status": "draft", "public": true,
                "body": "Internal: password length rules, not final." }),
    )
    .await;
    let archived = create(
        &ken,
        json!({ "title": "Old password reset FAQ", "category": "account", "locale": "en", "status": "archived",
                "body": "Outdated password reset steps." }),
    )
    .await;
    // Synonyms: the en vocabulary makes "shipment", "parcel" and "package delivery" one
    // meaning; neither article contains the other's word.
    let parcel = create(
        &ken,
        json!({ "title": "Where is my parcel?", "category": "shipping", "locale": "en", "status": "published",
                "body": "Follow your parcel with the tracking link in the confirmation message." }),
    )
    .await;
    let shipment = create(
        &ken,
        json!({ "title": "Holiday delays", "category": "shipping", "locale": "en", "status": "published",
                "body": "Around holidays a shipment can take two extra days." }),
    )
    .await;
    let xss = create(
        &ken,
        json!({ "title": "Formatting <b>test</b>", "locale": "en", "status": "published",
                "body": "Hello <script>alert(1)</script> [x](javascript:alert(1)) <img src=x onerror=alert(1)>" }),
    )
    .await;
    assert!(!xss["body_html"].as_str().unwrap().contains("<script"));
    assert!(!xss["body_html"].as_str().unwrap().contains("onerror"));
    assert!(!xss["body_html"].as_str().unwrap().contains("javascript:"));
    caught_up(&ken).await;

    // A typo finds the article; snippets are highlighted and escaped.
    let r = search(&alice, "q=pasword%20reest").await;
    assert_eq!(titles(&r).first().map(String::as_str), Some("Password reset"), "{r}");
    let r = search(&alice, "q=password").await;
    let hit = r["items"].as_array().unwrap().iter().find(|i| i["title"] == "Password reset").expect("hit");
    assert!(hit["snippet_html"].as_str().unwrap().contains("<mark>"), "{hit}");
    let r = search(&alice, "q=formatting").await;
    assert!(r["items"][0]["title_html"].as_str().unwrap().contains("&lt;b&gt;"), "{r}");

    // Configured synonyms, both ways, multi-word ones included; configured stop words
    // are ignored (no article contains "please").
    for (q, expect) in [
        ("q=shipment", &parcel),
        ("q=parcel", &shipment),
        ("q=package%20delivery", &parcel),
        ("q=package%20delivery", &shipment),
        ("q=please%20shipment", &parcel),
        ("q=parcel&locale=en", &shipment),
    ] {
        let r = search(&alice, q).await;
        assert!(ids(&r).contains(&expect["id"].as_str().unwrap().to_string()), "{q}: {r}");
        assert!(!ids(&r).contains(&billing["id"].as_str().unwrap().to_string()), "{q}: {r}");
    }
    // An excluded word is literal, and the misspelling fallback honours it too.
    let r = search(&alice, "q=parcel%20-shipment").await;
    assert_eq!(ids(&r), vec![parcel["id"].as_str().unwrap().to_string()], "{r}");
    let r = search(&alice, "q=holliday").await;
    assert_eq!(ids(&r), vec![shipment["id"].as_str().unwrap().to_string()], "{r}");
    let r = search(&alice, "q=holliday%20-shipment").await;
    assert!(ids(&r).is_empty(), "{r}");
    // Only the language's stop words ("where" in English) still finds the title.
    let r = search(&alice, "q=Where&locale=en").await;
    assert_eq!(titles(&r).first().map(String::as_str), Some("Where is my parcel?"), "{r}");

    // Filters and locales.
    let r = search(&alice, "category=billing").await;
    assert_eq!(ids(&r), vec![billing["id"].as_str().unwrap().to_string()], "{r}");
    let r = search(&alice, "q=invoices&tag=invoice").await;
    assert_eq!(titles(&r), vec!["Billing cycles and invoices".to_string()], "{r}");
    let r = search(&alice, "q=invoices&tag=login").await;
    assert!(titles(&r).is_empty(), "{r}");
    let r = search(&alice, "q=contrase%C3%B1a&locale=es").await;
    assert_eq!(ids(&r), vec![es["id"].as_str().unwrap().to_string()], "{r}");
    let r = search(&alice, "q=contrase%C3%B1a&locale=en").await;
    assert!(ids(&r).is_empty(), "{r}");
    let r = search(&alice, "q=password&locale=en&category=account").await;
    assert!(ids(&r).contains(&reset["id"].as_str().unwrap().to_string()), "{r}");
    let r = search(&alice, "limit=2").await;
    assert_eq!(r["items"].as_array().unwrap().len(), 2);
    assert_eq!(r["next_offset"], 2, "{r}");
    // A page past the last match is empty and still says how many matches there are.
    let all = search(&alice, "q=password").await;
    assert!(all["total"].as_u64().unwrap_or(0) >= 1, "{all}");
    for q in ["q=password&offset=50", "offset=500"] {
        let past = search(&alice, q).await;
        assert!(past["items"].as_array().unwrap().is_empty(), "{q}: {past}");
        assert!(past["total"].as_u64().unwrap_or(0) >= 1, "{q}: {past}");
    }
    assert_eq!(search(&alice, "q=password&offset=50").await["total"], all["total"]);

    // Unpublished articles never reach non-editors, through any door.
    for q in ["q=password", "q=password%20policy", "q=outdated", "category=account", ""] {
        let r = search(&alice, q).await;
        for hidden in [&draft, &archived] {
            assert!(!ids(&r).contains(&hidden["id"].as_str().unwrap().to_string()), "{q}: {r}");
        }
        let (st, r) = portal.call("GET", &format!("/api/v1/kb/public/search?{q}"), None).await;
        assert_eq!(st, StatusCode::OK);
        assert!(!ids(&r).contains(&draft["id"].as_str().unwrap().to_string()), "{q}: {r}");
        assert!(!ids(&r).contains(&billing["id"].as_str().unwrap().to_string()), "not public: {r}");
    }
    let (st, _) = alice.call("GET", "/api/v1/kb/search?status=draft", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = alice.call("GET", &format!("/api/v1/kb/articles/{}", draft["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = portal.call("GET", &format!("/api/v1/kb/public/articles/{}", draft["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, a) = portal.call("GET", &format!("/api/v1/kb/public/articles/{}", reset["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK, "{a}");
    assert!(a["body_html"].as_str().unwrap().contains("<strong>reset</strong>"));
    let (st, _) = portal.call("GET", "/api/v1/kb/search?q=password", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let r = search(&ken, "q=password&status=draft").await;
    assert_eq!(ids(&r), vec![draft["id"].as_str().unwrap().to_string()], "{r}");
    let (st, _) = alice.call("POST", "/api/v1/kb/articles", Some(json!({ "title": "nope" }))).await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Agent assist: the latest inbound message of an interaction, for the agent it is
    // offered to (and supervisors), nobody else.
    let out =
        h.hub.ingest(inbound(Channel::Chat, "kb-1", "visitor-1", "Hi! I forgot my password, how do I reset it?")).await.expect("ingest");
    let suggest = format!("/api/v1/kb/suggest?interaction_id={}", out.interaction_id);
    let (st, s) = alice.call("GET", &suggest, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "not offered to alice yet: {s}");
    h.hub.transfer_to_agent(out.interaction_id, None, agent_id(&h, "alice").await).await.expect("offer to alice");
    let (st, s) = bob.call("GET", &suggest, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "offered to alice, not bob: {s}");
    assert!(s.get("items").is_none(), "{s}");
    let (st, s) = sue.call("GET", &suggest, None).await;
    assert_eq!(st, StatusCode::OK, "supervisors see every interaction: {s}");
    assert_eq!(s["items"][0]["title"], "Password reset", "{s}");
    let (st, s) = alice.call("GET", &suggest, None).await;
    assert_eq!(st, StatusCode::OK, "{s}");
    let items = s["items"].as_array().unwrap();
    assert!(!items.is_empty() && items.len() <= 3, "{s}");
    assert_eq!(items[0]["title"], "Password reset", "{s}");
    assert!(items[0]["url"].as_str().unwrap().contains(reset["id"].as_str().unwrap()));
    assert!(items.iter().all(|i| i["id"] != draft["id"] && i["excerpt"].is_string()), "{s}");
    let (st, _) = ken.call("GET", &suggest, None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = alice.call("GET", &format!("/api/v1/kb/suggest?interaction_id={}", Uuid::new_v4()), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Versions and publishing.
    let (st, p) = ken
        .call(
            "PATCH",
            &format!("/api/v1/kb/articles/{}", draft["id"].as_str().unwrap()),
            Some(json!({ "status": "published", "expected_version": 1 })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["version"], 2);
    let (st, _) = ken
        .call(
            "PATCH",
            &format!("/api/v1/kb/articles/{}", draft["id"].as_str().unwrap()),
            Some(json!({ "title": "stale", "expected_version": 1 })),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, v) = ken.call("GET", &format!("/api/v1/kb/articles/{}/versions", draft["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    assert_eq!(v["items"][0]["author_name"], "ken");
    caught_up(&ken).await;
    let r = search(&alice, "q=policy").await;
    assert!(ids(&r).contains(&draft["id"].as_str().unwrap().to_string()), "published now: {r}");

    // Attachments: allow list, size limit, sha256.
    let path = format!("/api/v1/kb/articles/{}/attachments?filename=steps.txt", reset["id"].as_str().unwrap());
    let (st, att, _) = ken.raw("POST", &path, Some("text/plain"), b"step 1".to_vec()).await;
    assert_eq!(st, StatusCode::CREATED, "{att}");
    assert_eq!(att["sha256"], "9a2deff46ae163a6c486098a08b796b7f8d506fb0a25eeec025f306b33b79aeb");
    let (st, _, _) = ken.raw("POST", &path, Some("text/html"), b"<script>".to_vec()).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    let (st, _, _) = ken.raw("POST", &path, Some("text/plain"), vec![b'a'; 4096]).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    let resp = reqwest::get(format!("{}/api/v1/kb/public/attachments/{}", h.url, att["id"].as_str().unwrap())).await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), b"step 1");

    // Outage: edits succeed, the outbox holds them, the index catches up afterwards.
    h.down.store(true, Ordering::SeqCst);
    let refund = create(
        &ken,
        json!({ "title": "Refund policy", "category": "billing", "locale": "en", "status": "published",
                "body": "Refunds are processed within five business days." }),
    )
    .await;
    let (st, _) = ken
        .call(
            "PATCH",
            &format!("/api/v1/kb/articles/{}", billing["id"].as_str().unwrap()),
            Some(json!({ "title": "Billing cycles, invoices and receipts" })),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let status = eventually(30, || async {
        let (_, s) = ken.call("GET", "/api/v1/kb/index/status", None).await;
        (s["pending"].as_i64().unwrap_or(0) >= 2 && s["last_error"].is_string()).then_some(s)
    })
    .await;
    assert_eq!(status["backend"], backend.as_str());
    if backend == BackendKind::Postgres {
        // Reads keep working; the edit is just not indexed yet.
        let r = search(&alice, "q=refund").await;
        assert!(titles(&r).is_empty(), "{r}");
    } else {
        let (st, _) = alice.call("GET", "/api/v1/kb/search?q=refund", None).await;
        assert_eq!(st, StatusCode::BAD_GATEWAY);
    }
    h.down.store(false, Ordering::SeqCst);
    h.kb.worker.wake.notify_one();
    caught_up(&ken).await;
    let r = search(&alice, "q=refund").await;
    assert_eq!(ids(&r), vec![refund["id"].as_str().unwrap().to_string()], "{r}");
    let r = search(&alice, "q=receipts").await;
    assert_eq!(titles(&r), vec!["Billing cycles, invoices and receipts".to_string()], "{r}");

    // Deleting removes it from results.
    let (st, _) = ken.call("DELETE", &format!("/api/v1/kb/articles/{}", reset["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    caught_up(&ken).await;
    let r = search(&alice, "q=password%20reset").await;
    assert!(!ids(&r).contains(&reset["id"].as_str().unwrap().to_string()), "{r}");
    let r = search(&alice, "q=pasword%20reest").await;
    assert!(!ids(&r).contains(&reset["id"].as_str().unwrap().to_string()), "{r}");

    // A full reindex reproduces the same results and reports progress.
    let calls = AtomicU64::new(0);
    let n = switchboard_kb::reindex_with(h.hub.db(), h.kb.backend.as_ref(), |done, total| {
        assert!(done <= total);
        calls.fetch_add(1, Ordering::Relaxed);
    })
    .await
    .expect("reindex");
    assert_eq!(n, 8);
    assert!(calls.load(Ordering::Relaxed) >= 2);
    let r = search(&alice, "q=refund").await;
    assert_eq!(titles(&r), vec!["Refund policy".to_string()]);

    // Routes are documented.
    assert!(h.hub.route_docs().iter().any(|t| t.iter().any(|r| r.path == "/api/v1/kb/suggest")));
    let _ = h.stop.send(true);
    drop(h.db);
}

fn fast(mut cfg: KbConfig) -> KbConfig {
    let vocabulary: toml::Value = toml::from_str(
        r#"synonyms = { shipment = ["parcel", "package delivery"] }
           stop_words = ["please"]"#,
    )
    .expect("vocabulary");
    cfg.locales.insert("en".into(), vocabulary.try_into().expect("locale vocabulary"));
    cfg.worker_poll_interval_ms = 50;
    cfg.retry_base_ms = 50;
    cfg.retry_max_ms = 400;
    cfg.max_attachment_bytes = 1024;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kb_suite_postgres() {
    suite(fast(KbConfig::default()), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kb_suite_meilisearch() {
    let Ok(url) = std::env::var("MEILISEARCH_URL") else {
        println!("skipped: MEILISEARCH_URL not set");
        return;
    };
    let mut cfg = fast(KbConfig::default());
    cfg.backend = BackendKind::Meilisearch;
    cfg.meilisearch_url = url.clone();
    cfg.meilisearch_api_key = std::env::var("MEILISEARCH_API_KEY").ok().map(Into::into);
    cfg.index_name = format!("kb_test_{}", Uuid::new_v4().simple());
    cfg.request_timeout_ms = 5000;
    // A closed port: bind, note it, release it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port");
    let mut broken = cfg.clone();
    broken.meilisearch_url = format!("http://{closed}");
    let index = cfg.index_name.clone();
    suite(cfg, Some(broken)).await;
    // Remove the throwaway index.
    let mut req = reqwest::Client::new().delete(format!("{}/indexes/{index}", url.trim_end_matches('/')));
    if let Ok(k) = std::env::var("MEILISEARCH_API_KEY") {
        req = req.bearer_auth(k);
    }
    let _ = req.send().await;
}
