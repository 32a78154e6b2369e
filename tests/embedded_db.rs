//! The database under the hub, seen from outside the real binary: the embedded cluster
//! admits only the hub (socket directory 0700, passwords, a non-superuser role owning its
//! database), `demo` works as root under a 0700 parent directory, and while the database
//! is down the hub answers 503 with `Retry-After` at once instead of hanging.

mod support;

use reqwest::StatusCode;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Starts the binary and returns it with the URL it printed.
fn spawn(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let url = url.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("switchboard {args:?} printed no URL")
    });
    (child, url)
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

#[allow(dead_code)]
fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}
