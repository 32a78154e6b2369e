//! Knowledge base benchmark: 10,000 generated articles; indexing throughput through the
//! outbox worker (articles/s) and search latency p50/p99 end to end through the hub's
//! HTTP API, for PostgreSQL full text and, when `MEILISEARCH_URL` is set, Meilisearch.
//!
//! Run: `cargo bench -p switchboard-kb --bench kb_search` (needs the test PostgreSQL,
//! `SWITCHBOARD_TEST_DATABASE_URL`; optional `MEILISEARCH_URL`, `MEILISEARCH_API_KEY`,
//! `KB_BENCH_ARTICLES`, `KB_BENCH_QUERIES`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchboard_core::config::CoreSettings;
use switchboard_core::testing::TestDb;
use switchboard_core::{Hub, Role};
use switchboard_kb::{search::build_backend, BackendKind, KbConfig};
use tokio::sync::watch;

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "password", "reset", "account", "login", "billing", "invoice", "refund", "shipping", "order", "delivery", "tracking",
    "subscription", "cancel", "upgrade", "plan", "payment", "card", "declined", "address", "email", "phone", "verify",
    "security", "two-factor", "authentication", "profile", "settings", "notification", "mobile", "app", "browser",
    "error", "timeout", "connection", "network", "router", "install", "update", "version", "export", "import", "report",
    "dashboard", "team", "member", "invite", "permission", "role", "admin", "storage", "quota", "limit", "backup",
    "restore", "privacy", "data", "delete", "warranty", "return", "exchange", "discount", "coupon", "gift", "voucher",
];
const CATEGORIES: &[&str] = &["account", "billing", "shipping", "technical", "security", "orders"];
const LOCALES: &[&str] = &["en", "en", "en", "es", "de", "fr"];

fn sentence(rng: &mut StdRng, n: usize) -> String {
    (0..n).map(|_| WORDS[rng.gen_range(0..WORDS.len())]).collect::<Vec<_>>().join(" ")
}

const SYLLABLES: &[&str] = &["ka", "lo", "mer", "ti", "san", "ve", "dor", "ri", "pla", "nu", "sto", "gen", "fa", "bri", "tol", "wen"];

/// Filler prose: a 4,096-word synthetic vocabulary drawn with a Zipf-like skew, with a
/// few support-topic words mixed in, so a topic word matches a realistic share of
/// articles rather than nearly all of them.
fn prose(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| {
            if rng.gen_bool(0.04) {
                return WORDS[rng.gen_range(0..WORDS.len())].to_string();
            }
            let u: f64 = rng.gen();
            let k = (4096.0 * u.powi(3)) as usize;
            (0..3).map(|i| SYLLABLES[(k >> (4 * i)) & 15]).collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The query mix, one of each in turn.
const KINDS: &[&str] = &["one word", "two words", "misspelled", "one word + category", "two words + locale, page 2"];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn seed(db: &TestDb, n: usize) {
    let mut rng = StdRng::seed_from_u64(42);
    for chunk in 0..n.div_ceil(1000) {
        let docs: Vec<serde_json::Value> = (0..1000.min(n - chunk * 1000))
            .map(|_| {
                let title = {
                    let t = sentence(&mut rng, 3);
                    let mut c = t.chars();
                    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
                };
                serde_json::json!({
                    "title": title,
                    "body": format!("## {}\n\n{}.\n\n- {}\n- {}\n\n{}.", sentence(&mut rng, 3), prose(&mut rng, 60),
                                    prose(&mut rng, 6), prose(&mut rng, 6), prose(&mut rng, 60)),
                    "category": CATEGORIES[rng.gen_range(0..CATEGORIES.len())],
                    "tags": [WORDS[rng.gen_range(0..WORDS.len())], WORDS[rng.gen_range(0..WORDS.len())]],
                    "locale": LOCALES[rng.gen_range(0..LOCALES.len())],
                    "status": if rng.gen_bool(0.9) { "published" } else { "draft" },
                    "public": rng.gen_bool(0.5),
                })
            })
            .collect();
        sqlx::query(
            "with ins as (
               insert into kb_articles (title, body, category, tags, locale, status, public)
               select title, body, category, tags, locale, status, public
               from jsonb_to_recordset($1) as x(title text, body text, category text, tags text[], locale text, status text, public boolean)
               returning id)
             insert into kb_index_outbox (article_id, op) select id, 'upsert' from ins",
        )
        .bind(serde_json::Value::Array(docs))
        .execute(&db.pool)
        .await
        .expect("seed");
    }
}

async fn run_backend(db: &TestDb, cfg: KbConfig, n: usize, queries: usize) {
    let name = cfg.backend.as_str();
    // Every article queued once more for this backend.
    sqlx::query("delete from kb_index_outbox").execute(&db.pool).await.expect("clear");
    sqlx::query("insert into kb_index_outbox (article_id, op) select id, 'upsert' from kb_articles")
        .execute(&db.pool)
        .await
        .expect("queue");
    let hub = Hub::new(db.pool.clone(), CoreSettings::default());
    let (stop, stop_rx) = watch::channel(false);
    let backend = build_backend(&db.pool, &cfg).expect("backend");
    let started = Instant::now();
    let (router, _kb) = switchboard_kb::start_with_backend(&hub, cfg, backend, stop_rx.clone()).await.expect("start");
    loop {
        let (left,): (i64,) = sqlx::query_as("select count(*) from kb_index_outbox").fetch_one(&db.pool).await.expect("count");
        if left == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            panic!("{name}: indexing did not finish ({left} left)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{name}: indexed {n} articles through the outbox worker in {secs:.2} s = {:.0} articles/s", n as f64 / secs);

    sqlx::query("analyze kb_search_docs").execute(&db.pool).await.expect("analyze");
    let app = switchboard_core::api::router(&hub).merge(router).with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mut srv_stop = stop_rx;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = srv_stop.wait_for(|v| *v).await;
            })
            .await;
    });
    let user = match switchboard_core::auth::create_user(&db.pool, None, "bench", "bench", "bench-password-1", &[Role::Agent]).await {
        Ok(u) => u.id,
        Err(_) => sqlx::query_scalar("select id from users where username = 'bench'").fetch_one(&db.pool).await.expect("user"),
    };
    let (_, token) = switchboard_core::auth::create_token(&db.pool, user, "bench", None).await.expect("token");
    let http = reqwest::Client::new();
    let mut rng = StdRng::seed_from_u64(7);
    let mut lat = Vec::with_capacity(queries);
    let mut by_kind: Vec<Vec<Duration>> = vec![Vec::new(); KINDS.len()];
    let mut hits = 0usize;
    for i in 0..queries + 50 {
        let q = match i % KINDS.len() {
            0 => sentence(&mut rng, 1),
            1 => sentence(&mut rng, 2),
            2 => "pasword reest".to_string(),
            3 => format!("{}&category={}", sentence(&mut rng, 1), CATEGORIES[rng.gen_range(0..CATEGORIES.len())]),
            _ => format!("{}&locale=en&offset=10", sentence(&mut rng, 2)),
        };
        let url = format!("{base}/api/v1/kb/search?limit=10&q={}", q.replace(' ', "%20"));
        let t = Instant::now();
        let resp = http.get(&url).bearer_auth(&token).send().await.expect("search");
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        let body: serde_json::Value = resp.json().await.expect("json");
        let d = t.elapsed();
        if i >= 50 {
            // The first 50 warm caches and connections.
            lat.push(d);
            by_kind[i % KINDS.len()].push(d);
            hits += body["items"].as_array().map(|a| a.len()).unwrap_or(0);
        }
    }
    lat.sort();
    println!(
        "{name}: {queries} searches over HTTP: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (avg {:.1} hits/query)",
        percentile(&lat, 0.50).as_secs_f64() * 1000.0,
        percentile(&lat, 0.99).as_secs_f64() * 1000.0,
        lat.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
        hits as f64 / queries as f64
    );
    for (kind, mut l) in KINDS.iter().zip(by_kind) {
        l.sort();
        println!(
            "{name}:   {kind:<28} p50 {:6.2} ms, p99 {:6.2} ms",
            percentile(&l, 0.50).as_secs_f64() * 1000.0,
            percentile(&l, 0.99).as_secs_f64() * 1000.0
        );
    }
    let _ = stop.send(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let n: usize = std::env::var("KB_BENCH_ARTICLES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
        let queries: usize = std::env::var("KB_BENCH_QUERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
        let db = TestDb::new().await;
        seed(&db, n).await;
        sqlx::query("analyze").execute(&db.pool).await.expect("analyze");
        run_backend(&db, KbConfig::default(), n, queries).await;
        match std::env::var("MEILISEARCH_URL") {
            Ok(url) => {
                let cfg = KbConfig {
                    backend: BackendKind::Meilisearch,
                    meilisearch_url: url,
                    meilisearch_api_key: std::env::var("MEILISEARCH_API_KEY").ok().map(Into::into),
                    index_name: format!("kb_bench_{}", uuid::Uuid::new_v4().simple()),
                    batch_size: 1000,
                    request_timeout_ms: 120_000,
                    ..KbConfig::default()
                };
                run_backend(&db, cfg, n, queries).await;
            }
            Err(_) => println!("meilisearch: skipped (MEILISEARCH_URL not set)"),
        }
    });
}
