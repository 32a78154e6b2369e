//! SIPp helpers shared by the cluster tests (`#[path = "support/sip.rs"] mod sip;`): find
//! `sipp`, pick free ports, run a scenario of `tests/voice/`, wait for it, and wait for a
//! trunk call to be answered.
#![allow(dead_code)]

use crate::support::{eventually, Client};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Trunk calls pass a one-digit language menu before the support queue.
pub const MENU_FLOWS: &str = r#"
[ivr_flows.main]
start = "menu"
default_queue = "support"
[ivr_flows.main.nodes.menu]
type = "menu"
prompt = "menu"
choices = { "1" = "english" }
timeout_ms = 8000
max_attempts = 1
on_failure = "bye"
[ivr_flows.main.nodes.english]
type = "set_requirement"
requirement = "language:en >= 1"
next = "queue"
[ivr_flows.main.nodes.queue]
type = "enqueue"
[ivr_flows.main.nodes.bye]
type = "hangup"
"#;

/// `sipp` on the PATH (Debian package `sip-tester`), if installed.
pub fn sipp_bin() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("sipp")).find(|p| p.is_file()))
}

/// UDP ports for peers (SIPp) that bind them a moment later. Each test process takes a
/// slice of its own: 120 ports of 20000-31999, below the kernel's ephemeral range (where
/// the hubs under test bind their RTP sockets, `rtp_port_min = 0`), claimed by holding a
/// lock socket on 19000 + the slice's number for the life of the process. A port picked at
/// random from a shared range could be taken by another process in the moment before the
/// peer binds it (SIPp also binds media port + 2 and + 3 unchecked): a CI run lost a test
/// to that.
const PORT_LOCKS: u16 = 19_000;
const PORT_SLICES: u16 = 100;
const SLICE_PORTS: u16 = 120;
/// The first 40 ports of a slice are single ports, the other 80 twenty media quadruples.
const SINGLE_PORTS: u16 = 40;

fn port_slice() -> u16 {
    static SLICE: std::sync::OnceLock<(UdpSocket, u16)> = std::sync::OnceLock::new();
    SLICE
        .get_or_init(|| {
            let first = std::process::id() as u16 % PORT_SLICES;
            (0..PORT_SLICES)
                .map(|i| (first + i) % PORT_SLICES)
                .find_map(|k| UdpSocket::bind(("127.0.0.1", PORT_LOCKS + k)).ok().map(|lock| (lock, 20_000 + k * SLICE_PORTS)))
                .expect("a free port slice (100 test processes at once?)")
        })
        .1
}

/// `n` consecutive ports free right now, from `region` (start, length) of this process's
/// slice, taken round robin.
fn take_ports(next: &std::sync::atomic::AtomicU16, start: u16, len: u16, n: u16) -> u16 {
    let base = port_slice() + start;
    for _ in 0..2 * len / n {
        let off = next.fetch_add(n, std::sync::atomic::Ordering::Relaxed) % (len / n * n);
        let p = base + off;
        if (p..p + n).all(|q| UdpSocket::bind(("127.0.0.1", q)).is_ok()) {
            return p;
        }
    }
    panic!("no {n} free ports in this test's slice {base}..{}", base + len)
}

/// A UDP port free on loopback now, from this test process's own slice.
pub fn free_udp_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    take_ports(&NEXT, 0, SINGLE_PORTS, 1)
}

/// An even media port with the three after it free too (SIPp binds RTP, RTCP and the
/// video pair at + 2 and + 3), from this test process's own slice.
pub fn free_media_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    take_ports(&NEXT, SINGLE_PORTS, SLICE_PORTS - SINGLE_PORTS, 4)
}

/// The path of a scenario in `tests/voice/`.
pub fn scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/voice").join(name).display().to_string()
}

/// Runs the scenario `file` against `target` from `port`, in `dir`, once.
pub fn sipp(bin: &Path, dir: &Path, target: SocketAddr, file: &str, port: u16, extra: &[&str]) -> Child {
    let mut cmd = Command::new(bin);
    cmd.arg("-sf")
        .arg(scenario(file))
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-m", "1", "-timeout", "60s", "-nostdin", "-trace_err"])
        .args(["-p", &port.to_string(), "-mp", &free_media_port().to_string()])
        .args(extra)
        .arg(target.to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn().expect("sipp starts")
}

/// Waits (60 s at most) for a scenario to end and asserts it passed.
pub async fn finished_ok(child: Child, what: &str) {
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what}: sipp did not finish"))
        .expect("sipp ran");
    assert!(out.status.success(), "{what}: sipp failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// Waits for a voice interaction other than `except` to appear and be answered by an
/// agent; returns its id.
pub async fn call_answered(admin: &Client, except: Option<&str>) -> String {
    let id: String = eventually(40, || {
        let admin = admin.clone();
        async move {
            let (_, list) = admin.call("GET", "/api/v1/interactions?channel=voice", None).await;
            list["items"].as_array()?.iter().filter_map(|i| i["id"].as_str()).find(|id| Some(*id) != except).map(str::to_string)
        }
    })
    .await;
    eventually(40, || {
        let (c, id) = (admin.clone(), id.clone());
        async move {
            let (_, evs) = c.call("GET", &format!("/api/v1/interactions/{id}/events"), None).await;
            evs.as_array()?.iter().any(|e| e["kind"] == "call_answered").then_some(())
        }
    })
    .await;
    id
}

/// A SIP channel `name` for a test node: alice's phone (password `alice-pw`) may register,
/// trunk DID 100 from loopback enters the IVR flow `main` given in `flows` (TOML tables
/// `[ivr_flows.main…]`), recordings and voicemail under `dir`; `extra` adds top-level keys.
pub fn alice_channel_table(name: &str, dir: &Path, extra: &str, flows: &str) -> toml::Value {
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prompts");
    let text = format!(
        r#"
type = "sip"
name = "{name}"
udp_listen = "127.0.0.1:0"
tcp_listen = "127.0.0.1:0"
public_ip = "127.0.0.1"
rtp_port_min = 0
ring_timeout_secs = 5
prompts_dir = "{prompts}"
recordings_dir = "{rec}"
voicemail_dir = "{vm}"
{extra}
[registrar]
realm = "switchboard"
credentials = {{ type = "inline", agents = [ {{ user = "alice", password = "alice-pw" }} ] }}

[[trunks]]
name = "carrier"
allowed_sources = ["127.0.0.1"]
dids = {{ "100" = "main" }}

{flows}
"#,
        prompts = prompts.display(),
        rec = dir.join("rec").display(),
        vm = dir.join("vm").display(),
    );
    toml::from_str(&text).expect("voice channel table")
}
