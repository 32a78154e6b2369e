//! The database under the hub, seen from outside the real binary: the embedded cluster
//! admits only the hub (socket directory 0700, passwords, a non-superuser role owning its
//! database), `demo` works as root under a 0700 parent directory, and while the database
//! is down the hub answers 503 with `Retry-After` at once instead of hanging.

mod support;

use reqwest::StatusCode;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use switchboard_core::db::Database;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Starts the binary and returns it with the URL it printed.
fn spawn(args: &[&str]) -> (Child, String) {
    spawn_binary(args)
}

/// Stops a spawned hub with SIGTERM (so it stops its embedded cluster) and waits.
fn terminate(mut child: Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sb-db-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A throwaway PostgreSQL cluster of this test alone, on a free TCP port of 127.0.0.1,
/// that the test can stop and start again (as the `postgres` user when run as root).
struct ScratchCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
}

impl ScratchCluster {
    fn new() -> ScratchCluster {
        let bin = switchboard_core::embedded::find_bin_dir().expect("PostgreSQL binaries");
        let run_as = switchboard_core::embedded::cluster_owner().expect("cluster owner");
        let dir = temp_dir();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = ScratchCluster { bin, dir, port, run_as };
        let out = c.pg("initdb").arg("-D").arg(c.data()).args(["-U", "postgres", "--auth=trust", "--no-sync"]).output().unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.join("pg")
    }

    fn pg(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid).env("HOME", "/tmp");
        }
        c.current_dir("/").stdout(Stdio::null());
        c
    }

    fn start(&self) {
        let opts = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", self.port, self.dir.display());
        let out = self
            .pg("pg_ctl")
            .args(["start", "-w", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-o", &opts])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn stop(&self) {
        let _ = self.pg("pg_ctl").args(["stop", "-w", "-m", "fast", "-D"]).arg(self.data()).output();
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A GET that reports status, headers, body and how long it took (never more than 30 s).
async fn timed_get(c: &Client, path: &str) -> (StatusCode, reqwest::header::HeaderMap, String, Duration) {
    let t0 = Instant::now();
    let r = c.http.get(format!("{}{path}", c.base)).timeout(Duration::from_secs(30)).send().await.expect("request");
    let (st, headers) = (r.status(), r.headers().clone());
    let body = r.text().await.unwrap_or_default();
    (st, headers, body, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_answers_503_with_retry_after_at_once_and_recovers() {
    let pg = ScratchCluster::new();
    pg.start();
    let url = pg.url();
    let out = Command::new(BIN)
        .args(["user", "add", "--username", "ops", "--role", "supervisor", "--database-url", &url])
        .env("SWITCHBOARD_PASSWORD", "ops-password-1")
        .output()
        .unwrap();
    assert!(out.status.success(), "user add: {}", String::from_utf8_lossy(&out.stderr));
    let (hub, base) = spawn(&["serve", "--bind", "127.0.0.1:0", "--database-url", &url]);
    let ops = Client::login(&base, "ops", "ops-password-1").await;
    let (st, _, _, _) = timed_get(&ops, "/api/v1/queues").await;
    assert_eq!(st, StatusCode::OK);

    pg.stop();
    // Twice: the first round meets the pool's broken connections, the second new connects.
    for round in 0..2 {
        let (st, headers, body, took) = timed_get(&ops, "/readyz").await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "round {round} /readyz: {body}");
        assert!(headers.contains_key("retry-after"), "round {round} /readyz lacks Retry-After");
        assert!(took < Duration::from_secs(3), "round {round} /readyz took {took:?}");

        let (st, headers, body, took) = timed_get(&ops, "/api/v1/queues").await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "round {round} API: {body}");
        assert!(headers.contains_key("retry-after"), "round {round} API lacks Retry-After");
        assert_eq!(headers["content-type"], "application/problem+json");
        let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["code"], "database_unavailable", "{body}");
        assert!(took < Duration::from_secs(3), "round {round} API took {took:?}");

        let (st, _, body, took) = timed_get(&ops, "/metrics").await;
        assert_eq!(st, StatusCode::OK, "/metrics: {body}");
        assert!(body.contains("switchboard_database_up 0"), "{body}");
        assert!(took < Duration::from_secs(3), "round {round} /metrics took {took:?}");
    }

    // The database comes back; so does the hub, with the same session.
    pg.start();
    eventually(20, || {
        let ops = ops.clone();
        async move {
            let ready = timed_get(&ops, "/readyz").await.0 == StatusCode::OK;
            let api = timed_get(&ops, "/api/v1/queues").await.0 == StatusCode::OK;
            (ready && api).then_some(())
        }
    })
    .await;
    let (_, _, body, _) = timed_get(&ops, "/metrics").await;
    assert!(body.contains("switchboard_database_up 1"), "{body}");
    terminate(hub);
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn owner_of(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().uid()
}

/// The uid the embedded cluster runs as: postgres when the test runs as root, else ours.
fn expected_owner() -> u32 {
    match switchboard_core::embedded::cluster_owner().unwrap() {
        Some((uid, _)) => uid,
        // SAFETY: geteuid has no preconditions and cannot fail.
        None => unsafe { libc::geteuid() },
    }
}

fn database_settings(data: &Path) -> switchboard_core::config::DatabaseSettings {
    switchboard_core::config::DatabaseSettings { data_dir: data.to_path_buf(), ..Default::default() }
}

/// Asserts what only the hub may do: the socket directory is private, a password is
/// needed, the hub's role is an ordinary one that owns its database and nothing more.
async fn assert_locked_down(db: &Database) {
    let pg = db.embedded.as_ref().expect("embedded cluster");
    let socket_dir = pg.socket_dir();
    assert_eq!(mode_of(socket_dir), 0o700, "socket directory {} is not private", socket_dir.display());
    assert_eq!(owner_of(socket_dir), expected_owner(), "socket directory owner");
    let creds = pg.home().join(switchboard_core::embedded::CREDENTIALS_FILE);
    assert_eq!(mode_of(&creds), 0o600, "{} is not private", creds.display());
    assert_eq!(owner_of(&creds), expected_owner());

    // The hub's role: not a superuser, may not create roles or databases, owns its database.
    let (user, rolsuper, createrole, createdb): (String, bool, bool, bool) =
        sqlx::query_as("select current_user::text, rolsuper, rolcreaterole, rolcreatedb from pg_roles where rolname = current_user")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(user, "switchboard");
    assert!(!rolsuper && !createrole && !createdb, "hub role has powers: super {rolsuper}, createrole {createrole}, createdb {createdb}");
    let owner: String = sqlx::query_scalar("select pg_get_userbyid(datdba)::text from pg_database where datname = current_database()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(owner, "switchboard");
    // Every table of the hub's schema is the hub's (migrations can alter them).
    let foreign: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'public' and c.relkind in ('r', 'p', 'S', 'v') and c.relowner <> (select oid from pg_roles where rolname = 'switchboard')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(foreign.is_empty(), "not owned by the hub: {foreign:?}");
    let hub_cannot: Result<_, _> = sqlx::query("select pg_read_file('PG_VERSION')").execute(&db.pool).await;
    assert!(hub_cannot.is_err(), "the hub's role can read server files");

    // Without the password nobody gets in: not as the superuser, not as the hub's role.
    let base = PgConnectOptions::new().socket(socket_dir).port(db.options.get_port());
    for (user, database) in [("postgres", "postgres"), ("switchboard", "switchboard"), ("switchboard_bootstrap", "switchboard")] {
        let r = PgConnection::connect_with(&base.clone().username(user).database(database)).await;
        assert!(r.is_err(), "{user} got into {database} without a password");
        let r = PgConnection::connect_with(&base.clone().username(user).password("guess").database(database)).await;
        assert!(r.is_err(), "{user} got into {database} with a wrong password");
    }
    // The hub's role with its password reaches only its own database.
    let r = PgConnection::connect_with(&pg.connect_options().database("postgres")).await;
    assert!(r.is_err(), "the hub's role got into the maintenance database");
    // No TCP at all.
    let listen: String = sqlx::query_scalar("select current_setting('listen_addresses')").fetch_one(&db.pool).await.unwrap();
    assert_eq!(listen, "");
}

#[tokio::test]
async fn embedded_cluster_admits_only_the_hub_as_a_non_superuser_owner() {
    let dir = temp_dir();
    let data = dir.join("data");
    let db = Database::open(&database_settings(&data)).await.expect("open embedded database");
    // The migrations (extensions included) run as the non-superuser owner.
    db.migrate().await.expect("migrations as the hub's role");
    assert_locked_down(&db).await;
    // The API works on it.
    sqlx::query("insert into queues (name) values ('embedded')").execute(&db.pool).await.unwrap();
    // A second start (the credentials and pg_hba.conf exist) logs in again.
    db.pool.close().await;
    drop(db);
    let db = Database::open(&database_settings(&data)).await.expect("reopen embedded database");
    db.migrate().await.unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from queues where name = 'embedded'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n, 1);
    assert_locked_down(&db).await;
    db.pool.close().await;
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_older_versions_trust_cluster_is_locked_down_in_place_keeping_its_data() {
    // Make the cluster exactly as the older version did: trust authentication, the hub as
    // bootstrap superuser `switchboard`, the socket directory world-reachable, the
    // migrations applied by that superuser, some data.
    let dir = temp_dir();
    let data = dir.join("data");
    let cluster = data.join("postgres");
    let socket = data.join("pg-socket");
    std::fs::create_dir_all(&cluster).unwrap();
    std::fs::create_dir_all(&socket).unwrap();
    let bin = switchboard_core::embedded::find_bin_dir().unwrap();
    let run_as = switchboard_core::embedded::cluster_owner().unwrap();
    let pg = |tool: &str| {
        let mut c = Command::new(bin.join(tool));
        if let Some((uid, gid)) = run_as {
            c.uid(uid).gid(gid).env("HOME", "/tmp");
        }
        c.current_dir("/").stdout(Stdio::null());
        c
    };
    if let Some((uid, gid)) = run_as {
        for d in [&cluster, &socket] {
            std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
        }
    }
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = pg("initdb")
        .arg("-D")
        .arg(&cluster)
        .args(["-U", "switchboard", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"])
        .output()
        .unwrap();
    assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let opts = format!("-k {} -p {port} -c listen_addresses=''", socket.display());
    let out = pg("pg_ctl")
        .args(["start", "-w", "-D"])
        .arg(&cluster)
        .arg("-l")
        .arg(cluster.join("server.log"))
        .args(["-o", &opts])
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    let old = PgConnectOptions::new().socket(&socket).port(port).username("switchboard");
    let mut c = PgConnection::connect_with(&old.clone().database("postgres")).await.unwrap();
    sqlx::query("create database switchboard").execute(&mut c).await.unwrap();
    c.close().await.unwrap();
    let old_pool = sqlx::PgPool::connect_with(old.clone().database("switchboard")).await.unwrap();
    switchboard_core::db::MIGRATOR.run(&old_pool).await.unwrap();
    sqlx::query("insert into queues (name) values ('kept')").execute(&old_pool).await.unwrap();
    old_pool.close().await;
    let out = pg("pg_ctl").args(["stop", "-w", "-m", "fast", "-D"]).arg(&cluster).output().unwrap();
    assert!(out.status.success());

    // The new version starts on it.
    let db = Database::open(&database_settings(&data)).await.expect("open the older cluster");
    db.migrate().await.expect("migrations after the upgrade");
    assert_locked_down(&db).await;
    let n: i64 = sqlx::query_scalar("select count(*) from queues where name = 'kept'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(n, 1, "data kept");
    // The hub owns what the old superuser made: it can change a table and a function.
    sqlx::query("alter table queues add column upgrade_probe int").execute(&db.pool).await.expect("hub owns its tables");
    sqlx::query("alter table queues drop column upgrade_probe").execute(&db.pool).await.unwrap();
    let functions: Vec<String> = sqlx::query_scalar(
        "select p.proname::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'public' and p.proowner = 10
           and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(functions.is_empty(), "functions still the old superuser's: {functions:?}");
    db.pool.close().await;
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_as_root_works_with_the_data_dir_under_a_0700_parent() {
    if !switchboard_core::embedded::cluster_owner().is_ok_and(|o| o.is_some()) {
        eprintln!("skipped: this test needs root (and a `postgres` system user) to run the hub as root");
        return;
    }
    // Like /root/switchboard in a fresh container: the postgres user cannot traverse it.
    let parent = temp_dir();
    std::fs::set_permissions(&parent, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let data = parent.join("data");
    let data_arg = data.to_str().unwrap().to_string();
    let (hub, url) = spawn(&["demo", "--bind", "127.0.0.1:0", "--data-dir", &data_arg]);
    let c = Client::anonymous(&url);
    eventually(30, || {
        let c = c.clone();
        async move { c.call("GET", "/readyz", None).await.0.is_success().then_some(()) }
    })
    .await;
    let alice = Client::login(&url, "alice", "agent-pass-1").await;
    let (st, _) = alice.call("GET", "/api/v1/queues", None).await;
    assert_eq!(st, StatusCode::OK);
    // The cluster lives where the postgres user can reach it, and the data dir says where.
    let home = switchboard_core::embedded::cluster_home(&data).unwrap();
    assert_ne!(home, data.canonicalize().unwrap());
    let pointer = std::fs::read_to_string(data.join(switchboard_core::embedded::LOCATION_FILE)).unwrap();
    assert_eq!(pointer.trim(), home.to_str().unwrap());
    assert!(home.join("postgres").join("PG_VERSION").exists());
    assert_eq!(mode_of(&home), 0o700);
    assert_eq!(owner_of(&home), expected_owner());
    terminate(hub);
    assert!(!home.join("postgres").join("postmaster.pid").exists(), "embedded PostgreSQL still running");
    // The next start finds the same cluster: the demo data is still there.
    let (hub, url) = spawn(&["serve", "--bind", "127.0.0.1:0", "--data-dir", &data_arg]);
    let alice = Client::login(&url, "alice", "agent-pass-1").await;
    let (st, _) = alice.call("GET", "/api/v1/queues", None).await;
    assert_eq!(st, StatusCode::OK);
    terminate(hub);
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&parent);
}
