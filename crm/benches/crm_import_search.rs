//! CRM benchmark: CSV import rate for generated customers (1,000,000 by default), then
//! search latency p50/p99 through the HTTP API at that size (1,000 searches of random
//! name, phone and email fragments, one at a time, over a keep-alive connection).
//!
//! Run: `CARGO_TARGET_DIR=/work/target-crm cargo bench -p switchboard-crm --bench crm_import_search`
//! Knobs: `CRM_BENCH_ROWS` (default 1000000), `CRM_BENCH_SEARCHES` (default 1000),
//! `CRM_BENCH_MAX_SECS` (default 900: the run stops with an error past it),
//! `CRM_BENCH_DB` (a database name: the bench uses and keeps that database on the test
//! server instead of a throwaway one, creating and migrating it when needed, and skips the
//! import when it already holds `CRM_BENCH_ROWS` customers; for iterating on search at 1M
//! rows without re-importing; drop it with `dropdb` when done).
//! Needs the test PostgreSQL (`SWITCHBOARD_TEST_DATABASE_URL`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::time::{Duration, Instant};
use switchboard_core::config::CoreSettings;
use switchboard_core::testing::TestDb;
use switchboard_core::{Hub, Role};

const FIRST: &[&str] = &[
    "Ana",
    "Bruno",
    "Carla",
    "David",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Irene",
    "Jamal",
    "Kenji",
    "Laura",
    "Mateo",
    "Nadia",
    "Oscar",
    "Priya",
    "Quentin",
    "Rosa",
    "Samuel",
    "Tamara",
    "Ulrich",
    "Valeria",
    "Wei",
    "Ximena",
    "Yusuf",
    "Zoe",
    "Marguerite",
    "Bartholomew",
    "Svetlana",
    "Oluwaseun",
];
const LAST: &[&str] = &[
    "Garcia",
    "Smith",
    "Okafor",
    "Nakamura",
    "Rossi",
    "Müller",
    "Dubois",
    "Kowalski",
    "Haddad",
    "Silva",
    "Johansson",
    "O'Brien",
    "Fernandez",
    "Nguyen",
    "Patel",
    "Kim",
    "Novak",
    "Andersen",
    "Mbeki",
    "Ivanova",
    "Castellanos",
    "Fitzgerald",
    "Papadopoulos",
    "Thorsen",
    "Whitaker",
];
const AREA: &[u32] = &[201, 202, 212, 213, 305, 312, 415, 503, 617, 646, 702, 718, 773, 808, 917, 303, 404, 512, 602, 206];

fn phone(i: u64) -> String {
    let area = AREA[(i % AREA.len() as u64) as usize];
    let rest = i / AREA.len() as u64;
    let exchange = 201 + (rest / 10_000) % 700; // 201..=900: never N11, never 0/1 first
    let exchange = if exchange % 100 == 11 || exchange == 555 { exchange + 1 } else { exchange };
    format!("({area}) {exchange}-{:04}", rest % 10_000)
}

fn row(i: u64) -> (String, String, String) {
    let f = FIRST[(i * 7 % FIRST.len() as u64) as usize];
    let l = LAST[(i / 3 % LAST.len() as u64) as usize];
    let name = format!("{f} {l}{}", if i.is_multiple_of(5) { format!(" {}", i % 9973) } else { String::new() });
    let email = format!("{}.{}{}@example{}.com", f.to_lowercase(), l.to_lowercase().replace(['\'', 'ü'], ""), i, i % 37);
    (name, phone(i), email)
}

fn generate(n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize * 90);
    out.extend_from_slice(b"external_id,name,phone,email,tags\n");
    for i in 0..n {
        let (name, phone, email) = row(i);
        let line = format!("C{i},\"{name}\",{phone},{email},{}\n", if i.is_multiple_of(10) { "vip" } else { "" });
        out.extend_from_slice(line.as_bytes());
    }
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special. Run
    // a tiny size under `cargo test` so the target stays cheap to check.
    let under_test = !std::env::args().any(|a| a == "--bench");
    let rows = if under_test { 500 } else { env_u64("CRM_BENCH_ROWS", 1_000_000) };
    let searches = if under_test { 20 } else { env_u64("CRM_BENCH_SEARCHES", 1000) } as usize;
    let max = Duration::from_secs(env_u64("CRM_BENCH_MAX_SECS", 900));
    match tokio::time::timeout(max, run(rows, searches)).await {
        Ok(()) => {}
        Err(_) => {
            eprintln!("benchmark exceeded CRM_BENCH_MAX_SECS={}", max.as_secs());
            std::process::exit(2);
        }
    }
}

/// The database the bench runs on: a throwaway one, or a kept one named by `CRM_BENCH_DB`.
enum BenchDb {
    Throwaway(Box<TestDb>),
    Kept(PgPool),
}

impl BenchDb {
    async fn open() -> BenchDb {
        let Ok(name) = std::env::var("CRM_BENCH_DB") else { return BenchDb::Throwaway(Box::new(TestDb::new().await)) };
        assert!(
            !name.is_empty() && name.len() <= 63 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "CRM_BENCH_DB must be 1..=63 characters of a-z, 0-9 and _"
        );
        let admin =
            PgConnectOptions::from_str(&switchboard_core::testing::admin_url()).expect("test database URL").disable_statement_logging();
        let mut conn = admin.connect().await.expect("connect to the test PostgreSQL");
        let exists: Option<i32> =
            sqlx::query_scalar("select 1 from pg_database where datname = $1").bind(&name).fetch_optional(&mut conn).await.expect("lookup");
        if exists.is_none() {
            sqlx::query(&format!("create database {name}")).execute(&mut conn).await.expect("create bench database");
        }
        let _ = conn.close().await;
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(20).connect_with(admin.database(&name)).await.expect("connect");
        switchboard_core::db::MIGRATOR.run(&pool).await.expect("migrate bench database");
        println!("using kept database {name}");
        BenchDb::Kept(pool)
    }

    fn pool(&self) -> PgPool {
        match self {
            BenchDb::Throwaway(db) => db.pool.clone(),
            BenchDb::Kept(pool) => pool.clone(),
        }
    }
}

async fn run(rows: u64, searches: usize) {
    let db = BenchDb::open().await;
    let pool = db.pool();
    println!("crm bench: {rows} customers, {searches} searches");
    let present: i64 = sqlx::query_scalar("select count(*) from customers").fetch_one(&pool).await.expect("count");
    if present >= rows as i64 {
        println!("IMPORT: skipped, the kept database already holds {present} customers");
    } else {
        import(&pool, rows).await;
    }
    sqlx::query("analyze customers").execute(&pool).await.expect("analyze");
    sqlx::query("analyze customer_identities").execute(&pool).await.expect("analyze");
    search(&pool, rows, searches).await;
}

async fn import(pool: &PgPool, rows: u64) {
    let t = Instant::now();
    let csv = generate(rows);
    println!("generated CSV: {:.1} MB in {:.1} s", csv.len() as f64 / 1e6, t.elapsed().as_secs_f64());

    let settings =
        switchboard_crm::Settings::new(switchboard_crm::CrmConfig { import_batch_rows: 5000, ..Default::default() }).expect("settings");
    let t = Instant::now();
    let last = std::sync::Mutex::new(Instant::now());
    let report = switchboard_crm::import_csv_with(pool, &settings, std::io::Cursor::new(csv), |done, total| {
        let mut l = last.lock().expect("lock");
        if l.elapsed() > Duration::from_secs(10) || done == total {
            *l = Instant::now();
            println!("  import progress {done}/{total} ({:.0} s)", t.elapsed().as_secs_f64());
        }
    })
    .await
    .expect("import");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "IMPORT: {} rows in {:.1} s = {:.0} rows/s (created {}, updated {}, rejected {})",
        report.total,
        secs,
        report.total as f64 / secs,
        report.created,
        report.updated,
        report.rejected
    );
    for e in report.errors.iter().take(3) {
        println!("  rejected line {}: {:?} {}", e.line, e.field, e.reason);
    }
}

async fn search(pool: &PgPool, rows: u64, searches: usize) {
    // The hub's HTTP API in-process: core routes (login) plus the CRM router.
    let hub = Hub::new(pool.clone(), CoreSettings::default());
    let crm = switchboard_crm::start(&hub, None, tokio::sync::watch::channel(false).1).await.expect("crm start");
    let app = switchboard_core::api::router(&hub).merge(crm).with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
    });
    // A fresh user per run: a kept database already has the earlier runs' users.
    let username = format!("bench-{}", uuid::Uuid::new_v4().simple());
    switchboard_core::auth::create_user(pool, None, &username, "Bench", "bench-password-1", &[Role::Supervisor]).await.expect("user");
    let http = reqwest::Client::builder().cookie_store(true).build().expect("client");
    let base = format!("http://{addr}");
    let r = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({ "username": username, "password": "bench-password-1" }))
        .send()
        .await
        .expect("login");
    assert!(r.status().is_success(), "login: {}", r.status());

    let mut rng = StdRng::seed_from_u64(7);
    let mut by_kind: [(String, Vec<Duration>); 3] = [("name".into(), vec![]), ("phone".into(), vec![]), ("email".into(), vec![])];
    let mut all = Vec::with_capacity(searches);
    let mut slowest: Vec<(Duration, &str, String)> = Vec::new();
    let mut hits_total = 0usize;
    // Warm-up (connection, plan cache).
    for _ in 0..10 {
        let _ = http.get(format!("{base}/api/v1/customers?q=gar")).send().await.map(|r| r.bytes());
    }
    for _ in 0..searches {
        let i = rng.gen_range(0..rows);
        let (name, phone, email) = row(i);
        let kind = rng.gen_range(0..3usize);
        let src: Vec<char> = match kind {
            0 => name.chars().collect(),
            1 => phone.chars().filter(|c| c.is_ascii_digit()).collect(),
            _ => email.chars().collect(),
        };
        let len = rng.gen_range(3..=7usize).min(src.len());
        let start = rng.gen_range(0..=src.len() - len);
        let frag: String = src[start..start + len].iter().collect();
        if frag.trim().chars().count() < 3 {
            continue;
        }
        let url =
            reqwest::Url::parse_with_params(&format!("{base}/api/v1/customers"), &[("q", frag.as_str()), ("limit", "20")]).expect("url");
        let t = Instant::now();
        let resp = http.get(url).send().await.expect("search");
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.expect("json");
        let d = t.elapsed();
        assert!(status.is_success(), "search {frag:?}: {status} {body}");
        hits_total += body["items"].as_array().map(Vec::len).unwrap_or(0);
        by_kind[kind].1.push(d);
        all.push(d);
        slowest.push((d, ["name", "phone", "email"][kind], frag));
        slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
        slowest.truncate(5);
    }
    all.sort();
    println!(
        "SEARCH (HTTP, {} customers, {} queries, {:.1} hits avg): p50 {} p95 {} p99 {} max {}",
        rows,
        all.len(),
        hits_total as f64 / all.len().max(1) as f64,
        ms(pct(&all, 0.50)),
        ms(pct(&all, 0.95)),
        ms(pct(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default())
    );
    for (k, v) in by_kind.iter_mut() {
        v.sort();
        println!("  {k:5}: n={} p50 {} p99 {}", v.len(), ms(pct(v, 0.50)), ms(pct(v, 0.99)));
    }
    for (d, kind, frag) in &slowest {
        println!("  slow: {kind} {frag:?} {}", ms(*d));
    }
    let target = Duration::from_millis(20);
    println!("target p99 < 20 ms: {}", if pct(&all, 0.99) < target { "MET" } else { "NOT MET" });
}
