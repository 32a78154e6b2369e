//! SIPp against the engine: a trunk caller (INVITE, ACK, RFC 2833 DTMF from the
//! sip-tester pcap, BYE from the hub) and an agent phone (REGISTER with digest auth,
//! 180/200 with PCMA, pcap audio, BYE). Skipped with a message when `sipp` is absent
//! (Debian package `sip-tester`).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use switchboard_voice::call::{CallOutcome, Side};
use switchboard_voice::config::VoiceConfig;
use switchboard_voice::registrar::InlineCredentials;
use switchboard_voice::VoiceEngine;
use tokio::process::{Child, Command};

fn sipp_path() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("sipp")).find(|p| p.is_file()))
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("free port")
}

fn scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp").join(name).display().to_string()
}

fn sipp(sipp: &Path, scenario_file: &str, hub: SocketAddr, port: u16, extra: &[String]) -> Child {
    let media_port = free_udp_port() & !1;
    let mut cmd = Command::new(sipp);
    cmd.arg("-sf")
        .arg(scenario(scenario_file))
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-m", "1", "-timeout", "30s", "-nostdin"])
        .args(["-p", &port.to_string(), "-mp", &media_port.to_string()])
        .args(extra)
        .arg(hub.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn().expect("sipp starts")
}

async fn finished_ok(child: Child, what: &str) {
    let out = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what}: sipp did not finish"))
        .expect("sipp ran");
    assert!(out.status.success(), "{what}: sipp failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn sipp_caller_and_agent_phone() {
    let Some(sipp_bin) = sipp_path() else {
        eprintln!("SKIPPED sipp_caller_and_agent_phone: `sipp` not on PATH (apt-get install sip-tester)");
        return;
    };
    let recordings = temp_dir("sipp-recordings");
    let config: VoiceConfig = toml::from_str(&format!(
        r#"
udp_listen = "127.0.0.1:0"
tcp_listen = "127.0.0.1:0"
public_ip = "127.0.0.1"
rtp_port_min = 0
prompts_dir = "{prompts}"
recordings_dir = "{recordings}"
[registrar]
realm = "switchboard"
[[trunks]]
name = "carrier"
allowed_sources = ["127.0.0.1"]
dids = {{ "100" = "main" }}
[ivr_flows.main]
start = "menu"
default_queue = "support"
[ivr_flows.main.nodes.menu]
type = "menu"
prompt = "menu"
choices = {{ "1" = "queue" }}
timeout_ms = 8000
max_attempts = 1
on_failure = "bye"
[ivr_flows.main.nodes.queue]
type = "enqueue"
[ivr_flows.main.nodes.bye]
type = "hangup"
"#,
        prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/prompts").display(),
        recordings = recordings.display(),
    ))
    .expect("config");
    let (routing, mut seen) = routing();
    let mut creds = InlineCredentials::default();
    creds.insert("alice", "wonderland");
    let hub = VoiceEngine::start(config, routing, Arc::new(creds)).await.expect("engine");
    let hub_addr = hub.udp_addr().expect("udp bound");

    let agent_port = free_udp_port();
    let agent = sipp(&sipp_bin, "agent_uas.xml", hub_addr, agent_port, &[]);
    let register =
        sipp(&sipp_bin, "register.xml", hub_addr, free_udp_port(), &["-key".into(), "agent_port".into(), agent_port.to_string()]);
    finished_ok(register, "register").await;
    assert!(hub.is_registered("alice").await.unwrap());

    let caller = sipp(&sipp_bin, "caller_uac.xml", hub_addr, free_udp_port(), &[]);
    // The DTMF '1' from dtmf_2833_1.pcap selects the queue.
    let Seen::Enqueued(info) = next_seen(&mut seen).await else { panic!("the caller's DTMF should have enqueued the call") };
    assert_eq!(info.queue, "support");
    assert_eq!(info.caller, "+4930999");
    hub.ring_agent(&info.call_id, "alice", "offer-sipp").unwrap();
    assert_eq!(next_seen(&mut seen).await, Seen::Event(info.call_id.clone(), CallOutcome::Ringing { offer_id: "offer-sipp".into() }));
    assert_eq!(
        next_seen(&mut seen).await,
        Seen::Event(info.call_id.clone(), CallOutcome::Answered { offer_id: "offer-sipp".into(), agent: "alice".into() })
    );
    let Seen::Event(_, CallOutcome::Ended { by, recording }) = next_seen(&mut seen).await else { panic!("ended expected") };
    assert_eq!(by, Side::Agent);
    let bytes = std::fs::read(recording.expect("recording")).unwrap();
    let samples: Vec<i16> = bytes[44..].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    assert!(samples.iter().skip(1).step_by(2).any(|s| *s != 0), "agent pcap audio recorded on the right");
    finished_ok(caller, "caller").await;
    finished_ok(agent, "agent").await;
    hub.shutdown();
}
