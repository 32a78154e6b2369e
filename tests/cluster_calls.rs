//! Cluster call ownership, end to end: two hub nodes on one database, each with its own
//! SIP channel. A trunk call lands on node A and is bridged to alice's phone there; the
//! call controls alice sends to node B (hold, resume, hang up) are forwarded to A over
//! HTTP and answered as if local. Skipped with a printed reason when `sipp` (Debian
//! package `sip-tester`) is not installed.

#[path = "support/sip.rs"]
mod sip;
mod support;

use sip::{finished_ok, free_udp_port, sipp, sipp_bin};
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::*;
use switchboard_core::Role;
use uuid::Uuid;

fn channel_table(name: &str, dir: &Path) -> toml::Value {
    sip::alice_channel_table(name, dir, "announce_every_secs = 1", sip::MENU_FLOWS)
}

async fn status_of(c: &Client, id: &str) -> String {
    let (_, i) = c.call("GET", &format!("/api/v1/interactions/{id}"), None).await;
    i["status"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_controls_sent_to_another_node_reach_the_owner() {
    let Some(bin) = sipp_bin() else {
        eprintln!("SKIPPED call_controls_sent_to_another_node_reach_the_owner: `sipp` not on PATH (apt-get install sip-tester)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("sb-cluster-{}", Uuid::new_v4()));
    for d in ["a/rec", "a/vm", "b/rec", "b/vm"] {
        std::fs::create_dir_all(dir.join(d)).expect("dir");
    }
    let (name_a, name_b) = (format!("pbx-a-{}", Uuid::new_v4()), format!("pbx-b-{}", Uuid::new_v4()));
    let table_a = channel_table(&name_a, &dir.join("a"));
    let table_b = channel_table(&name_b, &dir.join("b"));
    let a = spawn_hub_with(|s| s.channels.push(table_a)).await;
    let b = spawn_node_with(&a.db, |s| s.channels.push(table_b)).await;
    let sip_a = eventually(10, || async { switchboard_voice::bound_addr(&name_a) }).await;
    let admin = user(&a, "admin", &[Role::Admin, Role::Supervisor], None).await;
    queue(&admin, json!({ "name": "support", "accept_timeout_secs": 30 })).await;

    // Both nodes are members.
    let nodes: i64 = eventually(10, || async {
        let n: i64 = sqlx::query_scalar("select count(*) from cluster_nodes").fetch_one(&a.db.pool).await.ok()?;
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!(nodes, 2);

    // alice's phone registers with node A; her browser talks to node B.
    let alice_a = user(&a, "alice", &[Role::Agent], Some(json!({ "language:en": 5 }))).await;
    let agent_id = alice_a.agent_id.expect("agent id");
    sqlx::query("update agents set sip_user = 'alice' where id = $1").bind(agent_id).execute(&a.db.pool).await.expect("sip user");
    let phone_port = free_udp_port();
    let phone = sipp(&bin, &dir, sip_a, "agent_answer_until_bye.xml", phone_port, &["-s", "alice"]);
    let port_s = phone_port.to_string();
    let reg = sipp(
        &bin,
        &dir,
        sip_a,
        "register.xml",
        free_udp_port(),
        &["-s", "alice", "-au", "alice", "-ap", "alice-pw", "-key", "agent_port", &port_s],
    );
    finished_ok(reg, "register").await;
    let alice_b = Client::login(&b.url(), "alice", "test-password-1").await;
    let (st, body) = alice_b.call("PUT", &format!("/api/v1/agents/{agent_id}/presence"), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");

    // The trunk call lands on node A.
    let caller = sipp(&bin, &dir, sip_a, "caller_until_bye.xml", free_udp_port(), &["-s", "100"]);
    let id: String = eventually(20, || {
        let admin = admin.clone();
        async move {
            let (_, list) = admin.call("GET", "/api/v1/interactions?channel=voice", None).await;
            list["items"].as_array().and_then(|a| a.first()).and_then(|i| i["id"].as_str()).map(str::to_string)
        }
    })
    .await;
    eventually(20, || {
        let (c, id) = (alice_b.clone(), id.clone());
        async move { (status_of(&c, &id).await == "active").then_some(()) }
    })
    .await;
    let iid: Uuid = id.parse().expect("uuid");
    let owner: Uuid = eventually(10, || async {
        sqlx::query_scalar("select node_id from call_owners where interaction_id = $1").bind(iid).fetch_optional(&a.db.pool).await.ok()?
    })
    .await;
    assert_eq!(owner, a.hub().node_id(), "node A owns the call");
    // Wait until the agent leg is bridged on A (hold needs a connected call).
    eventually(20, || {
        let (c, id) = (admin.clone(), id.clone());
        async move {
            let (_, evs) = c.call("GET", &format!("/api/v1/interactions/{id}/events"), None).await;
            evs.as_array()?.iter().any(|e| e["kind"] == "call_answered").then_some(())
        }
    })
    .await;

    // Call controls through node B: forwarded to A, answered as if local.
    let (st, body) = alice_b.call("POST", &format!("/api/v1/voice/calls/{id}/hold"), None).await;
    assert_eq!(st, StatusCode::OK, "hold via node B: {body}");
    assert_eq!(body["held"], json!(true));
    let (st, body) = alice_b.call("POST", &format!("/api/v1/voice/calls/{id}/resume"), None).await;
    assert_eq!(st, StatusCode::OK, "resume via node B: {body}");
    // The owner authorizes again: an agent who does not hold the call is refused there.
    let mallory = user(&a, "mallory", &[Role::Agent], Some(json!({ "language:en": 1 }))).await;
    let mallory_b = Client::login(&b.url(), "mallory", "test-password-1").await;
    drop(mallory);
    let (st, body) = mallory_b.call("POST", &format!("/api/v1/voice/calls/{id}/hangup"), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    let (st, body) = alice_b.call("POST", &format!("/api/v1/voice/calls/{id}/hangup"), None).await;
    assert_eq!(st, StatusCode::OK, "hang up via node B: {body}");
    finished_ok(caller, "caller (BYE from the hub)").await;
    finished_ok(phone, "alice's phone (BYE from the hub)").await;
    eventually(20, || {
        let (c, id) = (alice_b.clone(), id.clone());
        async move { matches!(status_of(&c, &id).await.as_str(), "wrap_up" | "closed").then_some(()) }
    })
    .await;
    let (_, evs) = admin.call("GET", &format!("/api/v1/interactions/{id}/events"), None).await;
    let kinds: Vec<&str> = evs.as_array().expect("events").iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in ["call_hold", "call_resumed", "call_hangup_requested", "call_ended"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    // The ended call's ownership is gone.
    eventually(10, || async {
        let n: i64 =
            sqlx::query_scalar("select count(*) from call_owners where interaction_id = $1").bind(iid).fetch_one(&a.db.pool).await.ok()?;
        (n == 0).then_some(())
    })
    .await;
    // A call nobody owns: node B answers itself (409), nothing loops.
    let (st, _) = alice_b.call("POST", &format!("/api/v1/voice/calls/{id}/hold"), None).await;
    assert_eq!(st, StatusCode::CONFLICT);
    b.stop().await;
    a.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A phone registered with node A is rung for a call that node B holds: B reads A's
/// published binding (contact and source address) from the database and sends the INVITE
/// to the phone directly. The hang-up sent to node A is forwarded to B, the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_phone_registered_with_one_node_is_rung_for_a_call_on_another() {
    let Some(bin) = sipp_bin() else {
        eprintln!(
            "SKIPPED a_phone_registered_with_one_node_is_rung_for_a_call_on_another: `sipp` not on PATH (apt-get install sip-tester)"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("sb-cluster-{}", Uuid::new_v4()));
    for d in ["a/rec", "a/vm", "b/rec", "b/vm"] {
        std::fs::create_dir_all(dir.join(d)).expect("dir");
    }
    let (name_a, name_b) = (format!("pbx-a-{}", Uuid::new_v4()), format!("pbx-b-{}", Uuid::new_v4()));
    let table_a = channel_table(&name_a, &dir.join("a"));
    let table_b = channel_table(&name_b, &dir.join("b"));
    let a = spawn_hub_with(|s| s.channels.push(table_a)).await;
    let b = spawn_node_with(&a.db, |s| s.channels.push(table_b)).await;
    let sip_a = eventually(10, || async { switchboard_voice::bound_addr(&name_a) }).await;
    let sip_b = eventually(10, || async { switchboard_voice::bound_addr(&name_b) }).await;
    let admin = user(&a, "admin", &[Role::Admin, Role::Supervisor], None).await;
    queue(&admin, json!({ "name": "support", "accept_timeout_secs": 30 })).await;
    let alice = user(&a, "alice", &[Role::Agent], Some(json!({ "language:en": 5 }))).await;
    let agent_id = alice.agent_id.expect("agent id");
    sqlx::query("update agents set sip_user = 'alice' where id = $1").bind(agent_id).execute(&a.db.pool).await.expect("sip user");
    let phone_port = free_udp_port();
    let phone = sipp(&bin, &dir, sip_a, "agent_answer_until_bye.xml", phone_port, &["-s", "alice"]);
    let port_s = phone_port.to_string();
    let reg = sipp(
        &bin,
        &dir,
        sip_a,
        "register.xml",
        free_udp_port(),
        &["-s", "alice", "-au", "alice", "-ap", "alice-pw", "-key", "agent_port", &port_s],
    );
    finished_ok(reg, "register with node A").await;
    let mut contact = String::new();
    for _ in 0..200 {
        let row: Option<String> =
            sqlx::query_scalar("select contact from voice_registrations where sip_user = 'alice' and contact is not null")
                .fetch_optional(&a.db.pool)
                .await
                .expect("registrations");
        if let Some(c) = row {
            contact = c;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("select sip_user, contact, peer from voice_registrations").fetch_all(&a.db.pool).await.expect("rows");
    eprintln!("voice_registrations: {rows:?}");
    assert!(contact.contains(&port_s), "the phone's contact is published: {contact}");
    // Node B reloads other nodes' bindings every 2 s; give it one reload.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (st, body) = alice.call("PUT", &format!("/api/v1/agents/{agent_id}/presence"), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");

    // The trunk call lands on node B.
    let caller = sipp(&bin, &dir, sip_b, "caller_until_bye.xml", free_udp_port(), &["-s", "100"]);
    let id = sip::call_answered(&admin, None).await;
    let iid: Uuid = id.parse().expect("uuid");
    let owner: Uuid = sqlx::query_scalar("select node_id from call_owners where interaction_id = $1")
        .bind(iid)
        .fetch_one(&a.db.pool)
        .await
        .expect("owner");
    assert_eq!(owner, b.hub.node_id(), "node B holds the call it answered");
    // alice's browser talks to node A; the hang-up is forwarded to node B.
    let (st, body) = alice.call("POST", &format!("/api/v1/voice/calls/{id}/hangup"), None).await;
    assert_eq!(st, StatusCode::OK, "hang up via node A: {body}");
    finished_ok(caller, "caller").await;
    finished_ok(phone, "alice's phone (registered with A, rung by B)").await;
    eventually(20, || {
        let (c, id) = (alice.clone(), id.clone());
        async move { matches!(status_of(&c, &id).await.as_str(), "wrap_up" | "closed").then_some(()) }
    })
    .await;
    b.stop().await;
    a.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
