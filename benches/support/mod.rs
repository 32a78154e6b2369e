//! Pieces the load benchmarks share: the hub in a child process (this bench binary run
//! with `--serve <database url>`, so its memory and CPU can be read from /proc apart from
//! the load generator's), file-descriptor limits, /proc readings and percentiles.

#![allow(dead_code)] // each bench uses its own subset

use std::net::SocketAddr;
use std::time::Duration;
use switchboard::settings::Settings;
use switchboard_core::db::Database;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Raises the soft open-files limit to the hard one; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
            return r.rlim_cur;
        }
    }
    0
}

/// Resident memory of `pid`, KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// CPU time (user + system) `pid` has used so far, in milliseconds.
pub fn cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the state (field 3).
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) * 1000.0 / hz
}

/// The `p` quantile of `v`, in milliseconds (NaN when empty).
pub fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

/// Child side: the production wiring (`switchboard::start_with`: CRM, knowledge base,
/// router, outbox, event listener, reports, every HTTP route) with a webchat channel on
/// port 0 and `extra_env` settings (`SWITCHBOARD__…` keys, TOML values); prints
/// `LISTEN <addr>`; exits when stdin closes.
pub async fn serve(url: String, extra_env: &[(&str, &str)]) {
    raise_fd_limit();
    let mut env: Vec<(String, String)> = vec![
        ("SWITCHBOARD__HTTP__BIND".into(), "\"127.0.0.1:0\"".into()),
        ("SWITCHBOARD__DATABASE__URL".into(), format!("\"{url}\"")),
        ("SWITCHBOARD__DATABASE__MAX_CONNECTIONS".into(), "30".into()),
        ("SWITCHBOARD__ROUTER__TICK_MS".into(), "100".into()),
        ("SWITCHBOARD__OUTBOX__POLL_MS".into(), "50".into()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut settings = Settings::load(None, env).expect("settings");
    settings.channels.push(toml::Value::Table(
        "type = \"webchat\"\nname = \"web\"\nrate_limit_per_10s = 100000\nsessions_per_minute_per_ip = 1000000\nping_interval_secs = 300"
            .parse()
            .expect("toml"),
    ));
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("url");
    let pool = switchboard_core::db::pool_options(30).connect_with(options.clone()).await.expect("pool");
    let running = switchboard::start_with(settings, Database { pool, embedded: None, options }).await.expect("start hub");
    println!("LISTEN {}", running.url().trim_start_matches("http://"));
    let mut buf = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut buf).await;
    running.stop().await;
}

/// Parent side: starts this binary with `--serve <url>`; returns the child (killed when
/// dropped), its pid and the address it listens on.
pub async fn spawn_hub(url: &str) -> Result<(tokio::process::Child, u32, SocketAddr), String> {
    let mut child = tokio::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("--serve")
        .arg(url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id().ok_or("child pid")?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("child stdout")?).lines();
    let addr: SocketAddr = loop {
        let l = lines.next_line().await.map_err(|e| e.to_string())?.ok_or("hub exited")?;
        if let Some(a) = l.strip_prefix("LISTEN ") {
            break a.parse().map_err(|e| format!("{e}"))?;
        }
    };
    Ok((child, pid, addr))
}

/// A load bench's `main`: as the child (`--serve <url>`) runs the hub with `serve_env`;
/// as the parent raises the fd limit and runs `bench` under a hard timeout of
/// `$timeout_env` seconds (default `default_secs`). Exits 1 when the bench fails, 2 on the
/// timeout.
pub fn main<F, Fut>(name: &str, serve_env: &[(&str, &str)], timeout_env: &str, default_secs: u64, bench: F)
where
    F: FnOnce(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let url = args.get(i + 1).cloned().expect("--serve <database url>");
        rt.block_on(serve(url, serve_env));
        return;
    }
    let limit = raise_fd_limit();
    let secs = std::env::var(timeout_env).ok().and_then(|v| v.parse().ok()).unwrap_or(default_secs);
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(secs), bench(limit)).await }) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("{name} failed: {e}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("{name}: hard timeout of {secs} s reached");
            std::process::exit(2);
        }
    }
    rt.shutdown_timeout(Duration::from_secs(2));
}

/// A supervisor user on `pool` and an API token for it (the benches' screens and feeds).
pub async fn supervisor_token(pool: &sqlx::PgPool) -> Result<String, String> {
    let sup = switchboard_core::auth::create_user(
        pool,
        None,
        "bench-sup",
        "Bench Supervisor",
        "bench-sup-pass-1",
        &[switchboard_core::Role::Supervisor],
    )
    .await
    .map_err(|e| e.to_string())?;
    let (_, token) = switchboard_core::auth::create_token(pool, sup.id, "bench", None).await.map_err(|e| e.to_string())?;
    Ok(token)
}
