//! The SIP edge holds the agents' phone registrations, end to end: Kamailio (its config
//! from `scripts/cluster.sh edge-config`) in front of two hub nodes on one database.
//! alice's phone registers once, through Kamailio, which checks her digest against the
//! hub's credentials (view `sip_subscribers`) and keeps the binding in the database
//! (usrloc); both nodes see her phone as registered (`registrar.edge`) without any REGISTER
//! of their own. A trunk call spread by Kamailio lands on a node, which rings alice
//! through Kamailio; her phone answers, and the hub's ACK and BYE follow the route set
//! back through the edge. That node then stops: the next call fails over to the other
//! node, which rings the same registration. Her un-REGISTER at the edge makes both nodes
//! see her phone as gone. Skipped with a printed reason when `sipp`, `kamailio` or its
//! PostgreSQL module is not installed.

#[path = "support/sip.rs"]
mod sip;
mod support;

use sip::{finished_ok, free_udp_port, sipp, sipp_bin};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Stdio;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;
use switchboard_core::Role;
use uuid::Uuid;

const KAMAILIO_MODULES: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules";

/// Why the edge cannot run here, if it cannot.
fn edge_missing() -> Option<String> {
    if sipp_bin().is_none() {
        return Some("`sipp` not on PATH (apt-get install sip-tester)".into());
    }
    let on_path = std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join("kamailio").is_file()))
        || Path::new("/usr/sbin/kamailio").is_file();
    if !on_path {
        return Some("`kamailio` not installed (apt-get install kamailio kamailio-postgres-modules)".into());
    }
    if !Path::new(KAMAILIO_MODULES).join("db_postgres.so").is_file() {
        return Some("Kamailio's PostgreSQL module is missing (apt-get install kamailio-postgres-modules)".into());
    }
    None
}

/// A SIP channel whose phones are registered at the edge on `edge_port`; SIP credentials
/// are the hub's (database), as Kamailio reads them.
fn edge_channel(name: &str, dir: &Path, edge_port: u16) -> toml::Value {
    let mut table = sip::alice_channel_table(name, dir, "announce_every_secs = 1", sip::MENU_FLOWS);
    let registrar = table.get_mut("registrar").and_then(|r| r.as_table_mut()).expect("registrar table");
    registrar.insert("edge".into(), toml::Value::String(format!("sip:127.0.0.1:{edge_port}")));
    let mut external = toml::map::Map::new();
    external.insert("type".into(), toml::Value::String("external".into()));
    registrar.insert("credentials".into(), toml::Value::Table(external));
    table
}

/// Kamailio in the foreground; stopped (SIGTERM, which also ends its children) on drop.
struct Edge {
    child: std::process::Child,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn start_edge(dir: &Path, port: u16, db_url: &str, nodes: &[SocketAddr]) -> Edge {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(script).args(["edge-config", &dir.display().to_string(), &port.to_string(), db_url, "switchboard"]);
    cmd.args(nodes.iter().map(|n| n.to_string()));
    let out = cmd.output().expect("cluster.sh runs");
    assert!(out.status.success(), "edge-config: {}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::File::create(dir.join("kamailio.log")).expect("log file");
    let child = std::process::Command::new("kamailio")
        .args(["-DD", "-E", "-m", "64", "-M", "8", "-f"])
        .arg(dir.join("kamailio.cfg"))
        .arg("-w")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("kamailio starts");
    Edge { child }
}

async fn agent_row(c: &Client, agent_id: Uuid) -> Value {
    let (st, body) = c.call("GET", &format!("/api/v1/agents/{agent_id}"), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    body
}

async fn registrations_metric(base: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix("switchboard_voice_registrations ")).and_then(|v| v.trim().parse().ok())
}

async fn owner_of(pool: &sqlx::PgPool, id: &str) -> Uuid {
    let iid: Uuid = id.parse().expect("uuid");
    eventually(10, || async {
        sqlx::query_scalar("select node_id from call_owners where interaction_id = $1").bind(iid).fetch_optional(pool).await.ok()?
    })
    .await
}

async fn wait_ended(c: &Client, id: &str) {
    eventually(20, || {
        let (c, id) = (c.clone(), id.to_string());
        async move {
            let (_, i) = c.call("GET", &format!("/api/v1/interactions/{id}"), None).await;
            matches!(i["status"].as_str(), Some("wrap_up" | "closed")).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn phones_registered_at_the_edge_are_rung_through_it_from_every_node() {
    if let Some(why) = edge_missing() {
        eprintln!("SKIPPED phones_registered_at_the_edge_are_rung_through_it_from_every_node: {why}");
        return;
    }
    let bin = sipp_bin().expect("sipp");
    let dir = std::env::temp_dir().join(format!("sb-edge-{}", Uuid::new_v4()));
    for d in ["a/rec", "a/vm", "b/rec", "b/vm", "edge"] {
        std::fs::create_dir_all(dir.join(d)).expect("dir");
    }
    let edge_port = free_udp_port();
    let edge_addr: SocketAddr = ([127, 0, 0, 1], edge_port).into();
    let (name_a, name_b) = (format!("pbx-a-{}", Uuid::new_v4()), format!("pbx-b-{}", Uuid::new_v4()));
    let table_a = edge_channel(&name_a, &dir.join("a"), edge_port);
    let table_b = edge_channel(&name_b, &dir.join("b"), edge_port);
    let mut a = spawn_hub_with(|s| s.channels.push(table_a)).await;
    let b = spawn_node_with(&a.db, |s| s.channels.push(table_b)).await;
    let sip_a = eventually(10, || async { switchboard_voice::bound_addr(&name_a) }).await;
    let sip_b = eventually(10, || async { switchboard_voice::bound_addr(&name_b) }).await;
    let (engine_a, engine_b) = (switchboard_voice::engine_for(&name_a).expect("A"), switchboard_voice::engine_for(&name_b).expect("B"));
    // A pool of the test's own: node A's closes with it.
    let pool = sqlx::PgPool::connect_with(a.db.options.clone()).await.expect("pool");

    // Kamailio's own tables, from the installed package, in the hub's database.
    for file in ["standard-create.sql", "usrloc-create.sql"] {
        let text = std::fs::read_to_string(Path::new("/usr/share/kamailio/postgres").join(file)).expect("kamailio schema");
        sqlx::raw_sql(&text).execute(&pool).await.expect("kamailio schema loads");
    }
    let edge = start_edge(&dir.join("edge"), edge_port, &a.db.url(), &[sip_a, sip_b]);
    eventually(10, || async { UdpSocket::bind(edge_addr).is_err().then_some(()) }).await;

    let admin = user(&a, "admin", &[Role::Admin, Role::Supervisor], None).await;
    queue(&admin, json!({ "name": "support", "accept_timeout_secs": 30 })).await;
    let alice = user(&a, "alice", &[Role::Agent], Some(json!({ "language:en": 5 }))).await;
    let agent_id = alice.agent_id.expect("agent id");
    let (st, body) = admin.call("PATCH", &format!("/api/v1/agents/{agent_id}"), Some(json!({ "sip_user": "alice" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) =
        admin.call("PUT", &format!("/api/v1/agents/{agent_id}/sip-password"), Some(json!({ "password": "alice-edge-pw" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["realm"], "switchboard", "the realm Kamailio challenges with");
    assert!(!engine_a.is_registered("alice").await.expect("engine A"));
    assert_eq!(agent_row(&admin, agent_id).await["voice_reachable"], json!(false));

    // A wrong password is refused by the edge; the right one registers there, once.
    let phone_port = free_udp_port();
    let port_s = phone_port.to_string();
    let register = |file: &'static str, password: &'static str| {
        sipp(&bin, &dir, edge_addr, file, free_udp_port(), &["-s", "alice", "-au", "alice", "-ap", password, "-key", "agent_port", &port_s])
    };
    let wrong = register("register.xml", "not-her-password").wait_with_output().await.expect("sipp ran");
    assert!(!wrong.status.success(), "the edge refuses a wrong digest");
    finished_ok(register("register.xml", "alice-edge-pw"), "REGISTER through the edge").await;
    let contact: String = sqlx::query_scalar("select contact from location where username = 'alice'")
        .fetch_one(&pool)
        .await
        .expect("Kamailio saved the binding in the database");
    assert!(contact.ends_with(&format!(":{phone_port}")), "{contact}");

    // Both nodes see the phone; core sees it reachable; the metric counts it.
    for engine in [&engine_a, &engine_b] {
        let e = engine.clone();
        eventually(10, || {
            let e = e.clone();
            async move { e.is_registered("alice").await.unwrap_or(false).then_some(()) }
        })
        .await;
    }
    eventually(10, || {
        let admin = admin.clone();
        async move { (agent_row(&admin, agent_id).await["voice_reachable"] == json!(true)).then_some(()) }
    })
    .await;
    assert_eq!(registrations_metric(&b.url()).await, Some(1.0), "switchboard_voice_registrations on node B");
    let held_by_nodes: i64 = sqlx::query_scalar("select count(*) from voice_registrations where contact is not null")
        .fetch_one(&pool)
        .await
        .expect("registrations");
    assert_eq!(held_by_nodes, 0, "no node's own registrar holds a binding");

    let alice_b = Client::login(&b.url(), "alice", "test-password-1").await;
    let (st, body) = alice_b.call("PUT", &format!("/api/v1/agents/{agent_id}/presence"), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");

    // Call 1: Kamailio picks a node; it rings alice through Kamailio; the BYEs route back.
    let phone = sipp(&bin, &dir, edge_addr, "edge_phone_until_bye.xml", phone_port, &["-s", "alice"]);
    let caller = sipp(&bin, &dir, edge_addr, "caller_until_bye.xml", free_udp_port(), &["-s", "100"]);
    let first = sip::call_answered(&admin, None).await;
    let owner = owner_of(&pool, &first).await;
    let (node_a, node_b) = (a.hub().node_id(), b.hub.node_id());
    assert!(owner == node_a || owner == node_b, "a node of this cluster answered");
    eprintln!("call 1 answered by node {}", if owner == node_a { "A" } else { "B" });
    let (st, body) = alice_b.call("POST", &format!("/api/v1/voice/calls/{first}/hangup"), None).await;
    assert_eq!(st, StatusCode::OK, "hang up: {body}");
    finished_ok(caller, "caller (BYE from the hub through the edge)").await;
    finished_ok(phone, "alice's phone (INVITE, ACK and BYE through the edge)").await;
    wait_ended(&alice_b, &first).await;
    let (st, body) = alice_b.call("POST", &format!("/api/v1/interactions/{first}/close"), Some(json!({ "disposition": "inquiry" }))).await;
    assert!(st == StatusCode::OK || st == StatusCode::CONFLICT, "close: {st} {body}");

    // The node that held call 1 stops; the other one remains, with no REGISTER since.
    let (survivor_url, survivor_engine, survivor_id, rest) = if owner == node_a {
        a.running.take().expect("A running").stop().await;
        (b.url(), engine_b.clone(), node_b, Some(b))
    } else {
        b.stop().await;
        (a.url.clone(), engine_a.clone(), node_a, None)
    };
    let admin_s = Client::login(&survivor_url, "admin", "test-password-1").await;
    let alice_s = Client::login(&survivor_url, "alice", "test-password-1").await;
    let (st, body) = alice_s.call("PUT", &format!("/api/v1/agents/{agent_id}/presence"), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");

    // Call 2: Kamailio fails over to the survivor, which rings the same registration.
    let phone = sipp(&bin, &dir, edge_addr, "edge_phone_until_bye.xml", phone_port, &["-s", "alice"]);
    let caller = sipp(&bin, &dir, edge_addr, "caller_until_bye.xml", free_udp_port(), &["-s", "100"]);
    let second = sip::call_answered(&admin_s, Some(&first)).await;
    assert_eq!(owner_of(&pool, &second).await, survivor_id, "the remaining node answered");
    let (st, body) = alice_s.call("POST", &format!("/api/v1/voice/calls/{second}/hangup"), None).await;
    assert_eq!(st, StatusCode::OK, "hang up: {body}");
    finished_ok(caller, "caller of call 2").await;
    finished_ok(phone, "alice's phone rung by the other node, same registration").await;
    wait_ended(&alice_s, &second).await;

    // Un-REGISTER at the edge: the remaining node sees the phone gone, and so does core.
    finished_ok(register("unregister.xml", "alice-edge-pw"), "un-REGISTER through the edge").await;
    eventually(10, || {
        let e = survivor_engine.clone();
        async move { (!e.is_registered("alice").await.unwrap_or(true)).then_some(()) }
    })
    .await;
    eventually(10, || {
        let admin = admin_s.clone();
        async move { (agent_row(&admin, agent_id).await["voice_reachable"] == json!(false)).then_some(()) }
    })
    .await;
    assert_eq!(registrations_metric(&survivor_url).await, Some(0.0));

    if let Some(b) = rest {
        b.stop().await;
    }
    a.stop().await;
    drop(edge);
    let _ = std::fs::remove_dir_all(&dir);
}
