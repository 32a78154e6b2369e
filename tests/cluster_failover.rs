//! PostgreSQL failover: a primary and a streaming replica started by the test (Debian's
//! PostgreSQL binaries, pg_basebackup), a hub on the multi-host URL
//! `postgres://…@primary,replica/…?target_session_attrs=read-write`; the primary is killed
//! (SIGKILL of the postmaster), the replica promoted, and the hub reconnects by itself and
//! resumes: API writes work again, the router leads again, and what was committed before
//! is still there. The time to recovery is printed. Skipped with a printed reason when the
//! PostgreSQL server binaries are missing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use support::*;
use switchboard_core::Role;
use uuid::Uuid;

fn pg_bin() -> Option<PathBuf> {
    for v in ["17", "16", "15"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if p.join("pg_basebackup").is_file() && p.join("postgres").is_file() {
            return Some(p);
        }
    }
    None
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a PostgreSQL tool, as the `postgres` user when the test runs as root.
fn pg(bin: &Path, tool: &str, args: &[&str]) {
    let exe = bin.join(tool);
    let out = if is_root() {
        Command::new("runuser").arg("-u").arg("postgres").arg("--").arg(&exe).args(args).output()
    } else {
        Command::new(&exe).args(args).output()
    }
    .expect("run a PostgreSQL tool");
    assert!(out.status.success(), "{tool} {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn postmaster_pid(data: &Path) -> i32 {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).expect("postmaster.pid");
    text.lines().next().and_then(|l| l.trim().parse().ok()).expect("pid")
}

struct Pair {
    dir: PathBuf,
    bin: PathBuf,
    primary: (PathBuf, u16),
    replica: (PathBuf, u16),
}

impl Pair {
    fn start(bin: PathBuf) -> Pair {
        let dir = std::env::temp_dir().join(format!("sb-failover-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        if is_root() {
            let st = Command::new("chown").arg("postgres").arg(&dir).status().expect("chown");
            assert!(st.success());
        }
        let (p, r) = (dir.join("primary"), dir.join("replica"));
        let (pp, rp) = (free_port(), free_port());
        let sock = dir.display().to_string();
        pg(&bin, "initdb", &["-D", &p.display().to_string(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        let opts = |port: u16| format!("-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c wal_level=replica");
        let log = |n: &str| dir.join(format!("{n}.log")).display().to_string();
        pg(&bin, "pg_ctl", &["-D", &p.display().to_string(), "-o", &opts(pp), "-l", &log("primary"), "-w", "start"]);
        pg(
            &bin,
            "pg_basebackup",
            &["-h", "127.0.0.1", "-p", &pp.to_string(), "-U", "postgres", "-D", &r.display().to_string(), "-R", "-X", "stream"],
        );
        pg(&bin, "pg_ctl", &["-D", &r.display().to_string(), "-o", &opts(rp), "-l", &log("replica"), "-w", "start"]);
        Pair { dir, bin, primary: (p, pp), replica: (r, rp) }
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write", self.primary.1, self.replica.1)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for d in [&self.primary.0, &self.replica.0] {
            if d.join("postmaster.pid").exists() {
                let exe = self.bin.join("pg_ctl");
                let ds = d.display().to_string();
                let args = ["-D", ds.as_str(), "-m", "immediate", "stop"];
                let _ = if is_root() {
                    Command::new("runuser").arg("-u").arg("postgres").arg("--").arg(&exe).args(args).output()
                } else {
                    Command::new(&exe).args(args).output()
                };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hub_follows_a_promoted_replica() {
    let Some(bin) = pg_bin() else {
        eprintln!("SKIPPED the_hub_follows_a_promoted_replica: PostgreSQL server binaries not found (apt-get install postgresql)");
        return;
    };
    let pair = Pair::start(bin.clone());
    // The hub's database, created on the primary (streamed to the replica).
    let admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", pair.primary.1);
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await.expect("primary");
    sqlx::query("create database switchboard").execute(&mut c).await.expect("create database");
    drop(c);

    let url = pair.url("switchboard");
    let mut s = test_settings(&url, &[]);
    s.database.acquire_timeout_ms = 2000;
    let running = switchboard::start(s).await.expect("hub starts on the multi-host URL");
    let base = running.url();
    let hub = running.hub.clone();
    switchboard_core::auth::create_user(hub.db(), None, "admin", "admin", "test-password-1", &[Role::Admin]).await.expect("admin");
    let admin = Client::login(&base, "admin", "test-password-1").await;
    queue(&admin, json!({ "name": "before" })).await;
    eventually(20, || async { hub.router_status().is_leader().then_some(()) }).await;

    // The primary dies without a goodbye; the replica is promoted.
    let killed = Instant::now();
    // SAFETY: kill(2) with a pid read from the primary's postmaster.pid.
    let r = unsafe { libc::kill(postmaster_pid(&pair.primary.0), libc::SIGKILL) };
    assert_eq!(r, 0, "kill the primary");
    pg(&bin, "pg_ctl", &["-D", &pair.replica.0.display().to_string(), "-w", "promote"]);
    let promoted = killed.elapsed();

    // Writes succeed again without a restart of the hub.
    let mut attempts = 0u32;
    let recovered = loop {
        attempts += 1;
        let (st, _) = admin.call("POST", "/api/v1/queues", Some(json!({ "name": format!("after-{attempts}") }))).await;
        if st == StatusCode::CREATED {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(60) && attempts < 600, "no write accepted within 60 s (last {st})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (st, queues) = admin.call("GET", "/api/v1/queues", None).await;
    assert_eq!(st, StatusCode::OK, "{queues}");
    let names: Vec<String> = queues
        .as_array()
        .or_else(|| queues["items"].as_array())
        .expect("queue list")
        .iter()
        .filter_map(|q| q["name"].as_str().map(str::to_string))
        .collect();
    assert!(names.contains(&"before".to_string()), "committed before the failover: {names:?}");
    eventually(30, || async { hub.router_status().is_leader().then_some(()) }).await;
    let leader_back = killed.elapsed();
    println!(
        "failover: replica promoted after {:.2} s, first write accepted after {:.2} s ({attempts} attempts), router leading after {:.2} s",
        promoted.as_secs_f64(),
        recovered.as_secs_f64(),
        leader_back.as_secs_f64()
    );
    running.stop().await;
    drop(pair);
}
