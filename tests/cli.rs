//! The real binary: `--help`, the embedded PostgreSQL started from an empty data
//! directory, `user add` / `token create`, config errors naming the key, and two hub
//! processes on one database with exactly one active router — kill it and the other
//! takes over within seconds, nothing lost or double-assigned.

#[path = "support/sip.rs"]
mod sip;
mod support;

use serde_json::json;
use sip::{free_media_port, free_udp_port, sipp_bin};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use switchboard_core::testing::TestDb;
use switchboard_core::{Channel, Role};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn spawn(args: &[&str], env: &[(&str, String)]) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null()).env("SWITCHBOARD_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn switchboard");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut url = None;
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(u) = l.split_whitespace().find(|w| w.starts_with("http://")) {
                    url = Some(u.trim_end_matches('/').to_string());
                    break;
                }
            }
            _ => break,
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

#[test]
fn help_explains_every_command() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "migrate", "demo", "user", "token"] {
        assert!(text.contains(cmd), "--help lacks {cmd}: {text}");
    }
    let out = Command::new(BIN).args(["user", "add", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--role"));
}

#[test]
fn bad_config_fails_at_start_naming_the_key() {
    let out = Command::new(BIN).args(["serve"]).env("SWITCHBOARD__ROUTER__BATCH_SIZE", "lots").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("router.batch_size"), "{err}");
    let dir = tempfile_dir();
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "[http]\nbind = \"127.0.0.1:0\"\nmax_body = 5\n").unwrap();
    let out = Command::new(BIN).args(["serve", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_body"), "{err}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sb-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn demo_starts_embedded_postgres_from_an_empty_data_dir() {
    let dir = tempfile_dir();
    let data = dir.join("data");
    assert!(!data.exists());
    let (mut child, url) = spawn(&["demo", "--bind", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()], &[]);
    let c = Client::anonymous(&url);
    let ready = eventually(30, || {
        let c = c.clone();
        async move {
            let (st, b) = c.call("GET", "/readyz", None).await;
            (st.is_success()).then_some(b)
        }
    })
    .await;
    assert_eq!(ready["status"], "ready");
    assert!(data.join("postgres").join("PG_VERSION").exists(), "no cluster initialised");
    // Demo credentials work and demo data exists.
    let alice = Client::login(&url, "alice", "agent-pass-1").await;
    let (_, queues) = alice.call("GET", "/api/v1/queues", None).await;
    assert!(queues.as_array().unwrap().len() >= 3);
    // SIGTERM: the hub stops and takes the embedded cluster down with it.
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.try_wait().unwrap().is_some(), "hub did not stop on SIGTERM");
    assert!(!data.join("postgres").join("postmaster.pid").exists(), "embedded PostgreSQL still running");
    // user add + token create work against the same data directory.
    let out = Command::new(BIN)
        .args(["user", "add", "--username", "zoe", "--role", "supervisor", "--data-dir", data.to_str().unwrap()])
        .env("SWITCHBOARD_PASSWORD", "zoe-password-1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(BIN)
        .args(["token", "create", "--username", "zoe", "--name", "ci", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sbt_"));
    let _ = std::fs::remove_dir_all(&dir);
}

async fn leader_of(urls: &[String]) -> Vec<bool> {
    let mut v = Vec::new();
    for u in urls {
        let (_, b) = Client::anonymous(u).call("GET", "/readyz", None).await;
        v.push(b["router_leader"].as_bool().unwrap_or(false));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_one_router_and_failover_within_seconds() {
    let db = TestDb::new().await;
    let env = vec![
        ("SWITCHBOARD__DATABASE__URL", db.url()),
        ("SWITCHBOARD__ROUTER__STANDBY_POLL_MS", "200".to_string()),
        ("SWITCHBOARD__ROUTER__TICK_MS", "50".to_string()),
    ];
    let (p1, u1) = spawn(&["serve", "--bind", "127.0.0.1:0"], &env);
    let (p2, u2) = spawn(&["serve", "--bind", "127.0.0.1:0"], &env);
    let urls = vec![u1.clone(), u2.clone()];
    let leaders = eventually(20, || {
        let urls = urls.clone();
        async move {
            let l = leader_of(&urls).await;
            (l.iter().filter(|x| **x).count() == 1).then_some(l)
        }
    })
    .await;
    // Exactly one, and it stays one.
    for _ in 0..5 {
        assert_eq!(leader_of(&urls).await.iter().filter(|x| **x).count(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut leader, mut standby, standby_url) = if leaders[0] { (p1, p2, u2) } else { (p2, p1, u1) };
    // Work for the cluster: a queue, three agents with chat capacity 2, 20 contacts.
    sqlx::query("insert into queues (name, accept_timeout_secs) values ('default', 600)").execute(&db.pool).await.unwrap();
    let hub = switchboard_core::Hub::new(db.pool.clone(), Default::default());
    let mut agents = Vec::new();
    for i in 0..3 {
        let u =
            switchboard_core::auth::create_user(&db.pool, None, &format!("a{i}"), "a", "agent-password-1", &[Role::Agent]).await.unwrap();
        let id: uuid::Uuid = sqlx::query_scalar(
            "insert into agents (user_id, name, capacity) values ($1, 'a', '{\"chat\":2,\"voice\":1,\"email\":1,\"sms\":1}') returning id",
        )
        .bind(u.id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        hub.set_presence(id, switchboard_core::Presence::Available).await.unwrap();
        agents.push(id);
    }
    for i in 0..20 {
        hub.ingest(inbound(Channel::Chat, &format!("k{i}"), &format!("v{i}"), "hi")).await.unwrap();
    }
    let offered = |n: i64| {
        let pool = db.pool.clone();
        move || {
            let pool = pool.clone();
            async move {
                let c: i64 = sqlx::query_scalar("select count(*) from offers where state = 'pending'").fetch_one(&pool).await.unwrap();
                (c == n).then_some(())
            }
        }
    };
    eventually(10, offered(6)).await;
    // Kill -9 the leader mid-flight.
    leader.kill().unwrap();
    let _ = leader.wait();
    let t0 = Instant::now();
    eventually(10, || {
        let u = standby_url.clone();
        async move { leader_of(&[u]).await[0].then_some(()) }
    })
    .await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    // The new leader keeps routing: close the six offered (accept + close), six more come.
    let offers: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("select id, agent_id from offers where state = 'pending'").fetch_all(&db.pool).await.unwrap();
    for (o, a) in offers {
        let i = hub.accept_offer(o, a).await.unwrap();
        hub.close(i.id, Some(a), switchboard_core::Disposition::Inquiry, None).await.unwrap();
    }
    eventually(10, offered(6)).await;
    // More contacts arriving after the failover are routed too; nothing lost, nothing doubled.
    for i in 20..25 {
        hub.ingest(inbound(Channel::Chat, &format!("k{i}"), &format!("v{i}"), "hi")).await.unwrap();
    }
    let total: i64 = sqlx::query_scalar("select count(*) from interactions").fetch_one(&db.pool).await.unwrap();
    assert_eq!(total, 25);
    let doubled: i64 = sqlx::query_scalar(
        "select count(*) from (select interaction_id from offers where state in ('pending','accepted','released') group by 1 having count(*) > 1) x",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(doubled, 0);
    let waiting: i64 = sqlx::query_scalar("select count(*) from interactions where status = 'queued'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(waiting, 25 - 12);
    let _ = json!({});
    standby.kill().unwrap();
    let _ = standby.wait();
}

/// `switchboard agent sip-password` stores the HA1 digest of the password (read from
/// SWITCHBOARD_PASSWORD or stdin) for the agent's SIP user and the configured realm, and
/// refuses unknown users, agents without a SIP user and too short passwords clearly.
#[tokio::test]
async fn agent_sip_password_sets_the_digest_credentials() {
    let db = TestDb::new().await;
    let u = switchboard_core::auth::create_user(&db.pool, None, "alice", "Alice", "agent-password-1", &[Role::Agent]).await.unwrap();
    let agent: uuid::Uuid =
        sqlx::query_scalar("insert into agents (user_id, name, sip_user) values ($1, 'Alice', 'alice-phone') returning id")
            .bind(u.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let nophone = switchboard_core::auth::create_user(&db.pool, None, "nils", "Nils", "agent-password-1", &[Role::Agent]).await.unwrap();
    sqlx::query("insert into agents (user_id, name) values ($1, 'Nils')").bind(nophone.id).execute(&db.pool).await.unwrap();
    let run = |args: &[&str], password: Option<&str>, stdin: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["agent", "sip-password", "--database-url", &db.url()]).args(args).env_remove("SWITCHBOARD_PASSWORD");
        if let Some(p) = password {
            cmd.env("SWITCHBOARD_PASSWORD", p);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let stored = || async {
        sqlx::query_as::<_, (String, String)>("select ha1, realm from sip_credentials where agent_id = $1")
            .bind(agent)
            .fetch_optional(&db.pool)
            .await
            .unwrap()
    };
    // From the environment, default realm.
    let (ok, out, err) = run(&["--username", "alice"], Some("alice-sip-pass"), None);
    assert!(ok, "{err}");
    assert!(out.contains("alice-phone") && out.contains("switchboard"), "{out}");
    let expected = switchboard_voice::sip::digest::ha1("alice-phone", "switchboard", "alice-sip-pass");
    assert_eq!(stored().await, Some((expected, "switchboard".to_string())));
    // From stdin, with an explicit realm.
    let (ok, _, err) = run(&["--username", "alice", "--realm", "pbx.example"], None, Some("piped-sip-pass\n"));
    assert!(ok, "{err}");
    let expected = switchboard_voice::sip::digest::ha1("alice-phone", "pbx.example", "piped-sip-pass");
    assert_eq!(stored().await, Some((expected.clone(), "pbx.example".to_string())));
    // Clear errors, nothing changed.
    for (args, password, wanted) in [
        (&["--username", "nobody"][..], "long-enough-1", "no agent for user `nobody`"),
        (&["--username", "nils"][..], "long-enough-1", "no SIP user"),
        (&["--username", "alice"][..], "short", "8 to 128 characters"),
    ] {
        let (ok, _, err) = run(args, Some(password), None);
        assert!(!ok, "{args:?} must fail");
        assert!(err.contains(wanted), "{args:?}: {err}");
    }
    let (ok, _, err) = run(&["--username", "alice"], None, Some(""));
    assert!(!ok && err.contains("SWITCHBOARD_PASSWORD"), "{err}");
    assert_eq!(stored().await, Some((expected, "pbx.example".to_string())));
}

/// Runs a SIPp scenario of tests/voice against `server`; true when it succeeded.
fn sipp(sipp: &std::path::Path, dir: &std::path::Path, scenario: &str, server: &str, extra: &[&str]) -> (bool, String) {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/voice").join(scenario);
    let media = free_media_port();
    let out = Command::new(sipp)
        .arg("-sf")
        .arg(file)
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-m", "1", "-timeout", "30s", "-nostdin", "-trace_err"])
        .args(["-p", &free_udp_port().to_string(), "-mp", &media.to_string()])
        .args(extra)
        .arg(server)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("sipp runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// `switchboard demo` includes voice: it prints the SIP server, the trunk number with the
/// IVR, how to call it with a softphone and the demo agents' phone credentials; a phone
/// registers with those credentials and a call to the number reaches the IVR (the menu
/// choice lands in the interaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_sip_credentials_that_register_and_its_number_reaches_the_ivr() {
    let db = TestDb::new().await;
    let dir = tempfile_dir();
    let mut child = Command::new(BIN)
        .args(["demo", "--bind", "127.0.0.1:0", "--database-url", &db.url(), "--data-dir", dir.join("data").to_str().unwrap()])
        .env("SWITCHBOARD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut out = Vec::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        let done = line.contains("Press Ctrl-C");
        out.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let text = out.join("\n");
    let url =
        out.iter().find_map(|l| l.split_whitespace().find(|w| w.starts_with("http://"))).expect("URL").trim_end_matches('/').to_string();
    let server = out
        .iter()
        .find_map(|l| l.trim().strip_prefix("SIP server:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no SIP server printed:\n{text}"))
        .to_string();
    assert!(text.contains(&format!("sip:100@{server}")), "no softphone how-to:\n{text}");
    assert!(text.contains("baresip") && text.contains("linphone"), "{text}");
    let phones: Vec<(String, String)> = out
        .iter()
        .skip_while(|l| !l.contains("Agent phones"))
        .skip(1)
        .map_while(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some(u), Some(p), None) if l.starts_with("    ") => Some((u.to_string(), p.to_string())),
                _ => None,
            }
        })
        .collect();
    let users: Vec<&str> = phones.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(users, ["alice", "bruno", "carla"], "demo agents' phones:\n{text}");
    assert!(phones.iter().all(|(_, p)| p.len() >= 8), "{phones:?}");
    // Only digests are stored.
    let stored: Vec<String> = sqlx::query_scalar("select ha1 from sip_credentials").fetch_all(&db.pool).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert!(phones.iter().all(|(_, p)| !stored.contains(p)));

    match sipp_bin() {
        None => eprintln!("SKIPPED the SIP half of the demo test: `sipp` not on PATH (apt-get install sip-tester)"),
        Some(bin) => {
            let (alice, password) = &phones[0];
            let phone_port = free_udp_port().to_string();
            let (ok, err) =
                sipp(&bin, &dir, "register.xml", &server, &["-s", alice, "-au", alice, "-ap", password, "-key", "agent_port", &phone_port]);
            assert!(ok, "alice's phone does not register with the printed credentials: {err}");
            let (ok, _) = sipp(
                &bin,
                &dir,
                "register.xml",
                &server,
                &["-s", alice, "-au", alice, "-ap", "not-the-password", "-key", "agent_port", &phone_port],
            );
            assert!(!ok, "a wrong password registers");
            // A caller dials the number, presses 1 in the IVR, waits and hangs up.
            let (ok, err) = sipp(&bin, &dir, "caller_abandon.xml", &server, &["-s", "100", "-d", "6000"]);
            assert!(ok, "caller: {err}");
            let admin = Client::login(&url, "admin", "admin-demo-pass").await;
            let i = eventually(10, || {
                let admin = admin.clone();
                async move {
                    let (_, list) = admin.call("GET", "/api/v1/interactions?channel=voice", None).await;
                    list["items"].as_array().and_then(|a| a.first().cloned())
                }
            })
            .await;
            assert_eq!(i["requirement"], "language:en >= 1", "the IVR's menu choice: {i}");
            assert_eq!(i["metadata"]["dialled"], "100", "{i}");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
