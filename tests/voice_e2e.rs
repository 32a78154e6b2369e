//! Voice end to end through the real binary wiring: the `sip` channel adapter started by
//! `switchboard::start_with`, SIPp playing the trunk caller and the agents' phones
//! (digest REGISTER), core routing the calls. Skipped with a printed reason when `sipp`
//! (Debian package `sip-tester`) is not installed.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;
use switchboard_core::Role;
use switchboard_voice::media::mix::rms;
use tokio::process::{Child, Command};
use uuid::Uuid;

#[path = "support/sip.rs"]
mod sip;
use sip::{free_media_port, free_udp_port, scenario, sipp_bin};

/// A hub with the voice adapter and two agents' phones' credentials.
struct VoiceHub {
    th: TestHub,
    sip: SocketAddr,
    dir: PathBuf,
    admin: Client,
    sipp: PathBuf,
    name: String,
}

/// Inline credentials of the test phones (`credentials` key of `[registrar]`): two
/// agents and a supervisor.
const INLINE_CREDENTIALS: &str = r#"{ type = "inline", agents = [ { user = "alice", password = "alice-pw" }, { user = "bob", password = "bob-pw" }, { user = "sup", password = "sup-pw" } ] }"#;

/// The voice channel table; `top` adds adapter keys, `tail` adds tables at the end.
fn channel_table(name: &str, dir: &Path, credentials: &str, top: &str, tail: &str) -> toml::Value {
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prompts");
    let text = format!(
        r#"
type = "sip"
name = "{name}"
{top}
udp_listen = "127.0.0.1:0"
tcp_listen = "127.0.0.1:0"
public_ip = "127.0.0.1"
rtp_port_min = 0
ring_timeout_secs = 3
announce_every_secs = 1
prompts_dir = "{prompts}"
recordings_dir = "{rec}"
voicemail_dir = "{vm}"

[registrar]
realm = "switchboard"
credentials = {credentials}

[[trunks]]
name = "carrier"
allowed_sources = ["127.0.0.1"]
dids = {{ "100" = "main", "200" = "closed" }}

{menu}
[ivr_flows.closed]
start = "hours"
[ivr_flows.closed.nodes.hours]
type = "hours"
timezone = "UTC"
schedule = []
open = "vm"
closed = "vm"
[ivr_flows.closed.nodes.vm]
type = "voicemail"
prompt = "after-hours"
max_seconds = 3
{tail}
"#,
        prompts = prompts.display(),
        rec = dir.join("rec").display(),
        vm = dir.join("vm").display(),
        menu = sip::MENU_FLOWS,
    );
    toml::from_str(&text).expect("voice channel table")
}

async fn voice_hub(test: &str, credentials: &str) -> Option<VoiceHub> {
    voice_hub_with(test, credentials, "", "").await
}

async fn voice_hub_with(test: &str, credentials: &str, top: &str, tail: &str) -> Option<VoiceHub> {
    let Some(sipp) = sipp_bin() else {
        eprintln!("SKIPPED {test}: `sipp` not on PATH (apt-get install sip-tester)");
        return None;
    };
    let dir = std::env::temp_dir().join(format!("sb-voice-{test}-{}", Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("rec")).expect("dir");
    std::fs::create_dir_all(dir.join("vm")).expect("dir");
    let name = format!("voice-{test}-{}", Uuid::new_v4());
    let table = channel_table(&name, &dir, credentials, top, tail);
    let th = spawn_hub_with(|s| s.channels.push(table)).await;
    let sip = eventually(10, || async { switchboard_voice::bound_addr(&name) }).await;
    let admin = user(&th, "admin", &[Role::Admin, Role::Supervisor], None).await;
    Some(VoiceHub { th, sip, dir, admin, sipp, name })
}

impl VoiceHub {
    fn sipp(&self, file: &str, port: u16, extra: &[&str]) -> Child {
        let mut cmd = Command::new(&self.sipp);
        cmd.arg("-sf")
            .arg(scenario(file))
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-m", "1", "-timeout", "60s", "-nostdin", "-trace_err"])
            .args(["-p", &port.to_string(), "-mp", &free_media_port().to_string()])
            .args(extra)
            .arg(self.sip.to_string())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn().expect("sipp starts")
    }

    /// An agent with a SIP user, available, whose phone (a SIPp UAS running `phone`)
    /// is registered with digest auth. Returns the agent's client and the phone.
    async fn agent(&self, name: &str, password: &str, phone: &str, phone_args: &[&str]) -> (Client, Child) {
        let c = user(&self.th, name, &[Role::Agent], Some(json!({ "language:en": 5 }))).await;
        let id = c.agent_id.expect("agent id");
        sqlx::query("update agents set sip_user = $2 where id = $1")
            .bind(id)
            .bind(name)
            .execute(self.th.hub().db())
            .await
            .expect("sip user");
        let port = free_udp_port();
        let mut args = vec!["-s", name];
        args.extend_from_slice(phone_args);
        let uas = self.sipp(phone, port, &args);
        let port_s = port.to_string();
        let reg = self.sipp("register.xml", free_udp_port(), &["-s", name, "-au", name, "-ap", password, "-key", "agent_port", &port_s]);
        finished_ok(reg, "register").await;
        let (st, body) = c.call("PUT", &format!("/api/v1/agents/{id}/presence"), Some(json!({ "presence": "available" }))).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        (c, uas)
    }

    async fn queue(&self, extra: Value) -> Value {
        let mut body = json!({ "name": "support", "accept_timeout_secs": 30 });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        queue(&self.admin, body).await
    }

    async fn voice_interaction(&self) -> Value {
        let admin = self.admin.clone();
        eventually(20, move || {
            let admin = admin.clone();
            async move {
                let (_, list) = admin.call("GET", "/api/v1/interactions?channel=voice", None).await;
                list["items"].as_array().and_then(|a| a.first().cloned())
            }
        })
        .await
    }

    async fn wait_status(&self, id: &str, wanted: &[&str], secs: u64) -> Value {
        let admin = self.admin.clone();
        let id = id.to_string();
        let wanted: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
        eventually(secs, move || {
            let (admin, id, wanted) = (admin.clone(), id.clone(), wanted.clone());
            async move {
                let (_, i) = admin.call("GET", &format!("/api/v1/interactions/{id}"), None).await;
                let status = i["status"].as_str().unwrap_or_default().to_string();
                wanted.contains(&status).then_some(i)
            }
        })
        .await
    }

    async fn event_kinds(&self, id: &str) -> Vec<(String, Value)> {
        let (st, evs) = self.admin.call("GET", &format!("/api/v1/interactions/{id}/events"), None).await;
        assert_eq!(st, StatusCode::OK, "{evs}");
        evs.as_array().expect("events").iter().map(|e| (e["kind"].as_str().unwrap_or_default().to_string(), e.clone())).collect()
    }

    async fn wait_event(&self, id: &str, kind: &str, secs: u64) -> Vec<(String, Value)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let kinds = self.event_kinds(id).await;
            if kinds.iter().any(|(k, _)| k == kind) {
                return kinds;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} event within {secs} s: {:?}",
                kinds.iter().map(|k| &k.0).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.th.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn finished_ok(child: Child, what: &str) {
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what}: sipp did not finish"))
        .expect("sipp ran");
    assert!(out.status.success(), "{what}: sipp failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

fn position(kinds: &[(String, Value)], kind: &str) -> usize {
    kinds.iter().position(|(k, _)| k == kind).unwrap_or_else(|| panic!("no {kind} in {:?}", kinds.iter().map(|k| &k.0).collect::<Vec<_>>()))
}

/// RMS of the left and right channels of a 16-bit stereo WAV.
fn stereo_rms(path: &Path) -> (f64, f64) {
    let bytes = std::fs::read(path).expect("recording readable");
    let data = bytes.windows(4).position(|w| w == b"data").map(|p| p + 8).expect("data chunk");
    let samples: Vec<i16> = bytes[data..].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    let side = |skip: usize| -> Vec<i16> { samples.iter().skip(skip).step_by(2).copied().collect() };
    (rms(&side(0)), rms(&side(1)))
}

/// The interaction's recording has the caller on the left and `right` (the agent, the
/// external party...) on the right, both audible.
fn assert_both_sides_heard(interaction: &Value, right: &str) {
    let recording = interaction["metadata"]["recording"].as_str().expect("recording path in metadata");
    let (l, r) = stereo_rms(Path::new(recording));
    assert!(l > 200.0, "caller channel is silent (RMS {l:.0})");
    assert!(r > 200.0, "{right} channel is silent (RMS {r:.0})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_through_ivr_queue_and_agent_phone_is_recorded() {
    let Some(vh) = voice_hub("main", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({})).await;
    let (alice, phone) = vh.agent("alice", "alice-pw", "agent_answer.xml", &["-d", "3000"]).await;
    let caller = vh.sipp("caller.xml", free_udp_port(), &["-s", "100"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    assert_eq!(i["customer_address"], "+4930999", "{i}");
    assert_eq!(i["requirement"], "language:en >= 1");
    assert_eq!(i["metadata"]["ivr"]["queue"], "support");
    finished_ok(phone, "alice's phone").await;
    finished_ok(caller, "caller").await;
    let done = vh.wait_status(&id, &["wrap_up", "closed"], 20).await;
    assert_eq!(done["agent_id"], json!(alice.agent_id));
    let kinds = vh.wait_event(&id, "wrap_up", 10).await;
    // `ivr_choice` is recorded right after the ingest commits, so it may follow `offered`.
    assert!(position(&kinds, "enqueued") < position(&kinds, "ivr_choice"));
    // The IVR report counts each node the caller went through: the menu with the digit.
    let (_, choice) = &kinds[position(&kinds, "ivr_choice")];
    assert_eq!(choice["data"]["ivr"]["path"], json!(["menu:1", "english", "queue"]), "{choice}");
    let order = ["enqueued", "offered", "call_ringing", "accepted", "call_answered", "call_ended", "wrap_up"];
    let pos: Vec<usize> = order.iter().map(|k| position(&kinds, k)).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "events out of order: {:?}", kinds.iter().map(|k| &k.0).collect::<Vec<_>>());
    let (_, ended) = &kinds[position(&kinds, "call_ended")];
    assert_eq!(ended["data"]["by"], "agent");
    assert_both_sides_heard(&done, "agent");
    vh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ring_no_answer_reroutes_to_the_next_agent() {
    let Some(vh) = voice_hub("rna", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({ "strategy": "longest_idle" })).await;
    let (alice, alice_phone) = vh.agent("alice", "alice-pw", "agent_no_answer.xml", &[]).await;
    // Bob becomes available later, so longest-idle offers to alice first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (bob, bob_phone) = vh.agent("bob", "bob-pw", "agent_answer.xml", &["-d", "1500"]).await;
    let caller = vh.sipp("caller.xml", free_udp_port(), &["-s", "100"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    let enqueued_at = i["enqueued_at"].clone();
    finished_ok(alice_phone, "alice's phone (never answers)").await;
    finished_ok(bob_phone, "bob's phone").await;
    finished_ok(caller, "caller").await;
    let done = vh.wait_status(&id, &["wrap_up", "closed"], 20).await;
    assert_eq!(done["agent_id"], json!(bob.agent_id), "bob took the call");
    assert_eq!(done["enqueued_at"], enqueued_at, "re-queued with the original enqueue time");
    let kinds = vh.event_kinds(&id).await;
    let no_answer = position(&kinds, "call_no_answer");
    let timeout = position(&kinds, "offer_timeout");
    let requeued = position(&kinds, "requeued");
    assert!(no_answer < timeout && timeout < requeued, "{:?}", kinds.iter().map(|k| &k.0).collect::<Vec<_>>());
    let (st, a) = vh.admin.call("GET", &format!("/api/v1/agents/{}", alice.agent_id.expect("id")), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(a["presence"], "away", "ring-no-answer marks the agent away: {a}");
    vh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caller_hanging_up_in_queue_abandons() {
    let Some(vh) = voice_hub("abandon", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({})).await;
    let caller = vh.sipp("caller_abandon.xml", free_udp_port(), &["-s", "100", "-d", "2500"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    assert_eq!(i["status"], "queued");
    finished_ok(caller, "caller").await;
    vh.wait_status(&id, &["abandoned"], 10).await;
    vh.stop().await;
}

/// Point 1 of the hardening issue, against core: the agent's phone answers and hangs up
/// the moment it has the ACK, so the end of the call follows the answer by milliseconds.
/// The interaction goes to wrap-up (it was left `active`, with the agent's voice slot
/// used, when the end overtook the answer on its way to core).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_ended_right_after_the_answer_is_not_left_active() {
    let Some(vh) = voice_hub("answer-race", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({})).await;
    let (alice, phone) = vh.agent("alice", "alice-pw", "agent_answer.xml", &["-d", "0"]).await;
    let caller = vh.sipp("caller_until_bye.xml", free_udp_port(), &["-s", "100"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    finished_ok(phone, "alice's phone").await;
    finished_ok(caller, "caller").await;
    let done = vh.wait_status(&id, &["wrap_up", "closed"], 20).await;
    assert_eq!(done["agent_id"], json!(alice.agent_id));
    let kinds = vh.wait_event(&id, "call_ended", 10).await;
    assert!(position(&kinds, "call_answered") < position(&kinds, "call_ended"));
    vh.stop().await;
}

/// A caller who hangs up in the IVR menu, before choosing, never becomes an interaction,
/// but the IVR report counts the hang-up and where it happened (`menu:hangup`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hang_up_in_the_ivr_is_counted_in_the_ivr_report() {
    let Some(vh) = voice_hub("ivr-hangup", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({})).await;
    let caller = vh.sipp("caller_hangup_in_ivr.xml", free_udp_port(), &["-s", "100", "-d", "1500"]);
    finished_ok(caller, "caller").await;
    let pool = vh.th.hub().db().clone();
    let ev: Value = eventually(10, || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar("select data from interaction_events where kind = 'ivr_hangup'").fetch_optional(&pool).await.ok().flatten()
        }
    })
    .await;
    assert_eq!(ev["ivr"]["path"], json!(["menu:hangup"]), "{ev}");
    assert!(ev.get("caller").is_none() && !ev.to_string().contains("+4930999"), "no caller number in the event: {ev}");
    let (_, list) = vh.admin.call("GET", "/api/v1/interactions?channel=voice", None).await;
    assert_eq!(list["items"], json!([]), "no interaction for a call that never reached a queue");
    rolled_up(&pool).await;
    let today = chrono::Utc::now().date_naive();
    let (st, ivr) = vh.admin.call("GET", &format!("/api/v1/reports/ivr?from={today}&to={today}&tz=UTC&interval=total"), None).await;
    assert_eq!(st, StatusCode::OK, "{ivr}");
    assert_eq!(ivr["totals"], json!({ "ivr:hangup": 1, "ivr_node:menu:hangup": 1 }), "{ivr}");
    vh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_hours_call_leaves_a_voicemail() {
    let Some(vh) = voice_hub("voicemail", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({})).await;
    let caller = vh.sipp("caller_voicemail.xml", free_udp_port(), &["-s", "200"]);
    finished_ok(caller, "caller").await;
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    let vm = vh.wait_status(&id, &["voicemail"], 10).await;
    let path = vm["metadata"]["recording"].as_str().expect("recording").to_string();
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(len > 44 + 8000, "voicemail holds audio ({len} bytes)");
    // The IVR's outcome is voicemail, with the nodes on the way (the IVR report's rows).
    let kinds = vh.wait_event(&id, "voicemail_recorded", 10).await;
    let (_, choice) = &kinds[position(&kinds, "ivr_choice")];
    assert_eq!(choice["data"]["ivr"], json!({ "queue": "voicemail", "requirements": [], "path": ["hours", "vm"] }), "{choice}");
    vh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blind_transfer_rings_the_second_phone_and_hold_works() {
    let Some(vh) = voice_hub("transfer", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({})).await;
    let (alice, alice_phone) = vh.agent("alice", "alice-pw", "agent_answer_until_bye.xml", &[]).await;
    let caller = vh.sipp("caller_hold.xml", free_udp_port(), &["-s", "100"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    vh.wait_status(&id, &["active"], 20).await;
    vh.wait_event(&id, "call_answered", 10).await;
    // Hub-side hold and resume through the API.
    let (st, body) = alice.call("POST", &format!("/api/v1/voice/calls/{id}/hold"), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) = alice.call("POST", &format!("/api/v1/voice/calls/{id}/resume"), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // Bob signs in with his phone (after the call is active, so alice had it first).
    let (bob, bob_phone) = vh.agent("bob", "bob-pw", "agent_answer.xml", &["-d", "2500"]).await;
    let (st, body) = alice.call("POST", &format!("/api/v1/voice/calls/{id}/transfer"), Some(json!({ "agent_id": bob.agent_id }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    finished_ok(alice_phone, "alice's phone (released by the transfer)").await;
    finished_ok(bob_phone, "bob's phone").await;
    finished_ok(caller, "caller (re-INVITE hold/resume)").await;
    let done = vh.wait_status(&id, &["wrap_up", "closed"], 20).await;
    assert_eq!(done["agent_id"], json!(bob.agent_id));
    let kinds = vh.event_kinds(&id).await;
    let answered: Vec<&Value> = kinds.iter().filter(|(k, _)| k == "call_answered").map(|(_, e)| e).collect();
    assert_eq!(answered.len(), 2, "answered by alice, then by bob");
    assert_eq!(answered[1]["data"]["sip_user"], "bob");
    assert!(position(&kinds, "call_hold") < position(&kinds, "transferred"));
    vh.stop().await;
}

/// Malformed datagrams sent to the running hub's SIP port: none kills the listener;
/// an OPTIONS afterwards still gets 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_corpus_against_the_running_hub() {
    let Some(vh) = voice_hub("corpus", INLINE_CREDENTIALS).await else { return };
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let local = sock.local_addr().expect("addr");
    let hdrs = format!(
        "Via: SIP/2.0/UDP {local};branch=z9hG4bKcorpus\r\nTo: <sip:user@example.com>\r\nFrom: <sip:c@example.net>;tag=3\r\nCall-ID: corpus@x\r\nMax-Forwards: 70\r\n"
    );
    let mut corpus: Vec<Vec<u8>> = vec![
        format!("INVITE sip:100@127.0.0.1 SIP/2.0\r\n{hdrs}CSeq: 1 INVITE\r\nContent-Length: 9999\r\n\r\nv=0\r\n").into_bytes(),
        format!("INVITE sip:100@127.0.0.1 SIP/2.0\r\n{hdrs}CSeq: 1 INVITE\r\nContent-Length: -5\r\n\r\n").into_bytes(),
        format!("REGISTER sip:x SIP/2.0\r\n{hdrs}CSeq: 36893488147419103232 REGISTER\r\n\r\n").into_bytes(),
        format!("INVITE <sip:user@example.com> SIP/2.0\r\n{hdrs}CSeq: 1 INVITE\r\n\r\n").into_bytes(),
        format!("OPTIONS sip:x SIP/7.0\r\n{hdrs}CSeq: 1 OPTIONS\r\n\r\n").into_bytes(),
        format!("NEWMETHOD sip:x SIP/2.0\r\n{hdrs}CSeq: 1 INVITE\r\n\r\n").into_bytes(),
        format!("INVITE sip:100@127.0.0.1 SIP/2.0\r\n{hdrs}CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: 20\r\n\r\nv=0\r\nm=audio x RTP/\r\n")
            .into_bytes(),
        format!("INVITE sip:100@127.0.0.1 SIP/2.0\r\n{hdrs}CSeq: 1 INVITE\r\nRequire: 100rel, foo\r\n\r\n").into_bytes(),
        format!("BYE sip:x SIP/2.0\r\n{hdrs}CSeq: 1 BYE\r\n\r\n").into_bytes(),
        format!("SIP/2.0 4294967301 bad\r\n{hdrs}CSeq: 1 INVITE\r\n\r\n").into_bytes(),
        b"\x00\x01\x02\x03garbage".to_vec(),
        b"\r\n\r\n".to_vec(),
        vec![b'A'; 1400],
        "INVITE sip:\u{1F600}@h SIP/2.0\r\n\r\n".as_bytes().to_vec(),
    ];
    // Plus deterministic byte-flips of a valid OPTIONS.
    let valid = format!("OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n{hdrs}CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").into_bytes();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..300 {
        let mut m = valid.clone();
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let idx = (seed as usize) % m.len();
            m[idx] = (seed >> 32) as u8;
        }
        corpus.push(m);
    }
    // Paced a little: a UDP socket's receive buffer holds ~100 datagrams, and a burst
    // beyond that is dropped by the kernel, not by the hub.
    for (n, m) in corpus.iter().enumerate() {
        sock.send_to(m, vh.sip).await.expect("send");
        if n % 25 == 24 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let options = format!(
        "OPTIONS sip:switchboard@{} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKfinal{}\r\nTo: <sip:switchboard@127.0.0.1>\r\nFrom: <sip:probe@127.0.0.1>;tag=9\r\nCall-ID: final-{}@x\r\nCSeq: 7 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        vh.sip,
        Uuid::new_v4().simple(),
        Uuid::new_v4().simple()
    );
    let mut buf = vec![0u8; 65_536];
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        // Retransmitted like a UA does (RFC 3261 Timer E) until the 200 arrives.
        let mut retransmit = tokio::time::interval(Duration::from_millis(500));
        loop {
            let (n, _) = tokio::select! {
                _ = retransmit.tick() => {
                    sock.send_to(options.as_bytes(), vh.sip).await.expect("send");
                    continue;
                }
                r = sock.recv_from(&mut buf) => r.expect("recv"),
            };
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if text.starts_with("SIP/2.0 200") && text.contains("CSeq: 7 OPTIONS") {
                return text;
            }
        }
    })
    .await
    .expect("OPTIONS answered 200 after the corpus");
    assert!(ok.contains("Allow:"), "{ok}");
    vh.stop().await;
}

fn baresip_bin() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("baresip")).find(|p| p.is_file()))
}

/// A second, independent SIP stack: baresip (headless: no UI module, a 440 Hz tone
/// WAV as microphone, the aubridge sink as speaker) is alice's phone. It registers with
/// digest auth and auto-answers; SIPp calls in; the supervisor hangs up through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn baresip_agent_phone_answers_and_is_recorded() {
    let Some(baresip) = baresip_bin() else {
        eprintln!("SKIPPED baresip_agent_phone_answers_and_is_recorded: `baresip` not on PATH (apt-get install baresip)");
        return;
    };
    let Some(vh) = voice_hub("baresip", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({})).await;
    let alice = user(&vh.th, "alice", &[Role::Agent], Some(json!({ "language:en": 5 }))).await;
    let alice_id = alice.agent_id.expect("agent id");
    sqlx::query("update agents set sip_user = 'alice' where id = $1").bind(alice_id).execute(vh.th.hub().db()).await.expect("sip user");
    let conf = vh.dir.join("baresip");
    std::fs::create_dir_all(&conf).expect("dir");
    // The phone's "microphone": 10 s of a 440 Hz tone, 8 kHz 16-bit mono WAV (aufile).
    let tone = conf.join("tone.wav");
    let samples: Vec<i16> = (0..80_000).map(|n| ((n as f64 * 440.0 * std::f64::consts::TAU / 8000.0).sin() * 8000.0) as i16).collect();
    let mut wav = Vec::with_capacity(44 + samples.len() * 2);
    let data_len = (samples.len() * 2) as u32;
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(&tone, wav).expect("tone");
    // baresip binds its own SIP port (port 0) and draws its RTP ports from 10000-18999,
    // apart from the kernel's ephemeral range (the hubs' RTP, rtp_port_min = 0), the
    // tests' port slices (20000-31999) and their locks (19000-19099): a port picked here
    // and bound later could be taken in between.
    std::fs::write(
        conf.join("config"),
        format!(
            "poll_method epoll\nsip_listen 127.0.0.1:0\nsip_transports udp\nnet_interface 127.0.0.1\n\
             audio_player aubridge,sink\naudio_source aufile,{}\naudio_srate 8000\naudio_channels 1\n\
             rtp_ports 10000-18999\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\n\
             module aubridge.so\nmodule account.so\nmodule_app menu.so\n",
            tone.display(),
        ),
    )
    .expect("baresip config");
    std::fs::write(conf.join("accounts"), format!("<sip:alice@{}>;auth_pass=alice-pw;answermode=auto;regint=300\n", vh.sip))
        .expect("baresip accounts");
    let mut phone = Command::new(baresip)
        .arg("-f")
        .arg(&conf)
        .args(["-t", "90"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(conf.join("baresip.log")).map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("baresip starts");
    let engine = switchboard_voice::engine_for(&vh.name).expect("engine");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !engine.is_registered("alice").await.unwrap_or(false) {
        let exited = phone.try_wait().ok().flatten();
        if exited.is_some() || tokio::time::Instant::now() >= deadline {
            let log = std::fs::read_to_string(conf.join("baresip.log")).unwrap_or_default();
            panic!("baresip did not register (exit: {exited:?}); its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, body) = alice.call("PUT", &format!("/api/v1/agents/{alice_id}/presence"), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let caller = vh.sipp("caller.xml", free_udp_port(), &["-s", "100"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    if !vh.event_kinds(&id).await.iter().any(|(k, _)| k == "call_answered") {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline && !vh.event_kinds(&id).await.iter().any(|(k, _)| k == "call_answered") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(conf.join("baresip.log")).unwrap_or_default();
        assert!(vh.event_kinds(&id).await.iter().any(|(k, _)| k == "call_answered"), "baresip did not answer; its log:\n{log}");
    }
    // Let audio flow both ways for a while (media time, not an event).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (st, body) = vh.admin.call("POST", &format!("/api/v1/voice/calls/{id}/hangup"), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    finished_ok(caller, "caller").await;
    let done = vh.wait_status(&id, &["wrap_up", "closed"], 20).await;
    assert_eq!(done["agent_id"], json!(alice_id));
    assert_both_sides_heard(&done, "baresip's (agent)");
    let _ = phone.kill().await;
    vh.stop().await;
}

/// Agents' phones authenticate against the database: `sip_credentials` (HA1 only) tied
/// to `agents.sip_user`, picked up by the adapter when the agent changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn phone_registers_with_credentials_from_the_database() {
    let Some(vh) = voice_hub("dbcreds", r#"{ type = "external" }"#).await else { return };
    let carla = user(&vh.th, "carla", &[Role::Agent], Some(json!({}))).await;
    let id = carla.agent_id.expect("agent id");
    sqlx::query("update agents set sip_user = 'carla' where id = $1").bind(id).execute(vh.th.hub().db()).await.expect("sip user");
    switchboard_voice::adapter::set_sip_password(vh.th.hub(), id, "switchboard", "carla-pw").await.expect("credentials");
    let engine = switchboard_voice::engine_for(&vh.name).expect("engine");
    let port = free_udp_port().to_string();
    // A wrong password is refused (SIPp gets 401 again where it expects 200).
    let bad = vh.sipp("register.xml", free_udp_port(), &["-s", "carla", "-au", "carla", "-ap", "wrong", "-key", "agent_port", &port]);
    let out = tokio::time::timeout(Duration::from_secs(60), bad.wait_with_output()).await.expect("sipp finished").expect("sipp ran");
    assert!(!out.status.success(), "a wrong password must not register");
    assert!(!engine.is_registered("carla").await.expect("engine"));
    let row: Option<String> = sqlx::query_scalar("select ha1 from sip_credentials where agent_id = $1")
        .bind(id)
        .fetch_optional(vh.th.hub().db())
        .await
        .expect("row");
    assert!(row.is_some_and(|h| h.len() == 32 && !h.contains("carla-pw")), "only the HA1 digest is stored");
    let reg = vh.sipp("register.xml", free_udp_port(), &["-s", "carla", "-au", "carla", "-ap", "carla-pw", "-key", "agent_port", &port]);
    finished_ok(reg, "register with database credentials").await;
    assert!(engine.is_registered("carla").await.expect("engine"));
    vh.stop().await;
}

/// RTP arriving at a UDP socket of the test (a phone's SDP points its media there).
#[derive(Debug, Default)]
struct RtpCapture {
    /// G.711 audio packets received.
    packets: usize,
    /// RMS of all decoded audio.
    rms: f64,
}

/// Reads RTP from `sock` until `want` audio packets with audible content (RMS > 200)
/// arrived or `within` passed, decoding PCMU/PCMA with the hub's own codec functions.
async fn capture_rtp(sock: &tokio::net::UdpSocket, want: usize, within: Duration) -> RtpCapture {
    use switchboard_voice::media::{g711, rtp::RtpPacket};
    use switchboard_voice::sdp::Codec;
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 2048];
    let (mut packets, mut sum, mut n) = (0usize, 0f64, 0usize);
    let rms = |sum: f64, n: usize| if n == 0 { 0.0 } else { (sum / n as f64).sqrt() };
    while packets < want || rms(sum, n) <= 200.0 {
        let Ok(Ok((len, _))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await else {
            break;
        };
        let Ok(pkt) = RtpPacket::parse(&buf[..len]) else { continue };
        let codec = match pkt.payload_type {
            0 => Codec::Pcmu,
            8 => Codec::Pcma,
            _ => continue,
        };
        for s in g711::decode(codec, pkt.payload) {
            sum += f64::from(s) * f64::from(s);
            n += 1;
        }
        packets += 1;
    }
    RtpCapture { packets, rms: rms(sum, n) }
}

/// A UDP socket standing in for a phone's RTP port (even port, as SDP wants).
async fn media_socket() -> (tokio::net::UdpSocket, String) {
    let port = free_media_port();
    let sock = tokio::net::UdpSocket::bind(("127.0.0.1", port)).await.expect("media socket");
    (sock, port.to_string())
}

impl VoiceHub {
    /// Registers phone `user` (password `pw`) for a SIPp UAS listening on `port`.
    async fn register(&self, user: &str, pw: &str, port: u16) {
        let port = port.to_string();
        let reg = self.sipp("register.xml", free_udp_port(), &["-s", user, "-au", user, "-ap", pw, "-key", "agent_port", &port]);
        finished_ok(reg, "register").await;
    }
}

fn kinds_of(kinds: &[(String, Value)]) -> Vec<&String> {
    kinds.iter().map(|k| &k.0).collect()
}

/// Supervisor listen-in through the API: an agent is refused (403); the supervisor's
/// phone (found through the supervisor's agent record) is called as a third leg and hears
/// both parties mixed, re-encoded to its own codec (PCMU while the call runs on PCMA);
/// its hang-up leaves the call up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supervisor_listens_in_and_leaves_the_call_intact() {
    let Some(vh) = voice_hub("listen", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({})).await;
    let (alice, alice_phone) = vh.agent("alice", "alice-pw", "agent_answer_until_bye.xml", &[]).await;
    // The supervisor's agent record names their phone; it stays offline, so it is never offered calls.
    let sup = user(&vh.th, "sup", &[Role::Supervisor], Some(json!({}))).await;
    sqlx::query("update agents set sip_user = 'sup' where id = $1")
        .bind(sup.agent_id.expect("supervisor's agent record"))
        .execute(vh.th.hub().db())
        .await
        .expect("sip user");
    let (media, media_port) = media_socket().await;
    let sup_port = free_udp_port();
    let sup_phone = vh.sipp("supervisor_listen.xml", sup_port, &["-s", "sup", "-d", "3000", "-key", "sup_media_port", &media_port]);
    vh.register("sup", "sup-pw", sup_port).await;
    let caller = vh.sipp("caller.xml", free_udp_port(), &["-s", "100"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    vh.wait_event(&id, "call_answered", 20).await;
    let (st, body) = alice.call("POST", &format!("/api/v1/voice/calls/{id}/listen"), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "an agent may not listen in: {body}");
    let (st, body) = alice.call("POST", &format!("/api/v1/voice/calls/{id}/barge"), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "an agent may not barge: {body}");
    let (st, body) = sup.call("POST", &format!("/api/v1/voice/calls/{id}/listen"), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "ringing");
    let heard = capture_rtp(&media, 50, Duration::from_secs(20)).await;
    assert!(heard.packets >= 50, "the supervisor's phone got {} RTP packets", heard.packets);
    assert!(heard.rms > 200.0, "the supervisor hears silence (RMS {:.0})", heard.rms);
    finished_ok(sup_phone, "supervisor's phone (answers, listens, hangs up)").await;
    let kinds = vh.wait_event(&id, "supervisor_left", 20).await;
    assert!(position(&kinds, "supervisor_joined") < position(&kinds, "supervisor_left"), "{:?}", kinds_of(&kinds));
    let (_, listen) = &kinds[position(&kinds, "supervisor_listen")];
    assert_eq!(listen["data"]["phone"], "sup");
    assert_eq!(listen["data"]["by"], "sup");
    // The third leg's BYE left the call up: still active with alice, then hung up from the hub.
    let (_, now) = vh.admin.call("GET", &format!("/api/v1/interactions/{id}"), None).await;
    assert_eq!(now["status"], "active", "{now}");
    let (st, body) = vh.admin.call("POST", &format!("/api/v1/voice/calls/{id}/hangup"), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    finished_ok(alice_phone, "alice's phone").await;
    finished_ok(caller, "caller").await;
    let done = vh.wait_status(&id, &["wrap_up", "closed"], 20).await;
    assert_eq!(done["agent_id"], json!(alice.agent_id));
    vh.stop().await;
}

/// Barge: while the supervisor only listens, the agent hears nothing from a silent
/// caller; after /barge the supervisor's voice reaches the agent. Hanging up the call
/// BYEs the supervisor's leg too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supervisor_barge_is_heard_and_the_call_end_hangs_up_the_third_leg() {
    let Some(vh) = voice_hub("barge", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({})).await;
    let (agent_media, agent_media_port) = media_socket().await;
    let (_alice, alice_phone) =
        vh.agent("alice", "alice-pw", "agent_answer_media_to_test.xml", &["-key", "agent_media_port", &agent_media_port]).await;
    let sup_port = free_udp_port();
    let sup_phone = vh.sipp("supervisor_talk_until_bye.xml", sup_port, &["-s", "sup"]);
    vh.register("sup", "sup-pw", sup_port).await;
    let caller = vh.sipp("caller_silent.xml", free_udp_port(), &["-s", "100"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    vh.wait_event(&id, "call_answered", 20).await;
    let listen_url = format!("/api/v1/voice/calls/{id}/listen");
    let (st, body) = vh.admin.call("POST", &listen_url, Some(json!({ "extension": "bad ext" }))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "extension");
    let (st, body) = vh.admin.call("POST", &listen_url, Some(json!({ "extension": "sup" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    vh.wait_event(&id, "supervisor_joined", 20).await;
    // Listening: the supervisor talks, but nobody hears it (and the caller is silent).
    let before = capture_rtp(&agent_media, usize::MAX, Duration::from_millis(1500)).await;
    assert_eq!(before.packets, 0, "the agent heard a listening supervisor");
    let (st, body) = vh.admin.call("POST", &format!("/api/v1/voice/calls/{id}/barge"), Some(json!({ "extension": "sup" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "mode_changed");
    let heard = capture_rtp(&agent_media, 40, Duration::from_secs(20)).await;
    assert!(heard.packets >= 40 && heard.rms > 200.0, "the agent does not hear the barging supervisor: {heard:?}");
    let (st, body) = vh.admin.call("POST", &format!("/api/v1/voice/calls/{id}/hangup"), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    finished_ok(sup_phone, "supervisor's phone (BYE from the hub)").await;
    finished_ok(alice_phone, "alice's phone").await;
    finished_ok(caller, "caller").await;
    vh.wait_status(&id, &["wrap_up", "closed"], 20).await;
    let kinds = vh.event_kinds(&id).await;
    assert!(position(&kinds, "supervisor_listen") < position(&kinds, "supervisor_barge"), "{:?}", kinds_of(&kinds));
    vh.stop().await;
}

/// Ring-all: both agents' phones ring at once (parallel INVITEs), bob answers and is
/// bridged, alice's phone gets CANCEL, and her offer is settled without penalty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ring_all_rings_every_phone_and_bridges_the_first_to_answer() {
    let Some(vh) = voice_hub("ringall", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({ "strategy": "ring_all" })).await;
    let (alice, alice_phone) = vh.agent("alice", "alice-pw", "agent_no_answer.xml", &[]).await;
    let (bob, bob_phone) = vh.agent("bob", "bob-pw", "agent_answer.xml", &["-d", "2000"]).await;
    let caller = vh.sipp("caller.xml", free_udp_port(), &["-s", "100"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    finished_ok(alice_phone, "alice's phone (rings, then CANCEL)").await;
    finished_ok(bob_phone, "bob's phone (answers)").await;
    finished_ok(caller, "caller").await;
    let done = vh.wait_status(&id, &["wrap_up", "closed"], 20).await;
    assert_eq!(done["agent_id"], json!(bob.agent_id), "bob answered first");
    let offers: Vec<(Uuid, String, bool)> = sqlx::query_as("select agent_id, state, ring_all from offers where interaction_id = $1")
        .bind(Uuid::parse_str(&id).expect("uuid"))
        .fetch_all(vh.th.hub().db())
        .await
        .expect("offers");
    assert_eq!(offers.len(), 2, "{offers:?}");
    assert!(offers.iter().all(|o| o.2), "both offers are ring-all: {offers:?}");
    let alice_id = alice.agent_id.expect("id");
    let alice_offer = offers.iter().find(|o| o.0 == alice_id).expect("alice's offer");
    assert_eq!(alice_offer.1, "cancelled", "{offers:?}");
    let kinds = vh.event_kinds(&id).await;
    let ringing = kinds.iter().filter(|(k, _)| k == "call_ringing").count();
    assert_eq!(ringing, 2, "both phones rang: {:?}", kinds_of(&kinds));
    assert!(!kinds.iter().any(|(k, _)| k == "offer_timeout"), "{:?}", kinds_of(&kinds));
    let (_, a) = vh.admin.call("GET", &format!("/api/v1/agents/{alice_id}"), None).await;
    assert_eq!(a["presence"], "available", "losing a ring-all race is no ring-no-answer: {a}");
    vh.stop().await;
}

/// Overflow: nobody is available, so after the queue's overflow_after_secs the hub calls
/// the external number through the trunk's outbound address (SIPp as the far end) and
/// bridges and records the caller with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overflow_calls_the_external_number_through_the_trunk() {
    overflow_through_trunk("overflow", "udp", &[]).await;
}

/// The same with the trunk's outbound calls over TCP (SIPp listening on TCP).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overflow_calls_the_external_number_over_tcp() {
    overflow_through_trunk("overflow-tcp", "tcp", &["-t", "t1"]).await;
}

async fn overflow_through_trunk(test: &str, transport: &str, far_end: &[&str]) {
    let ext_port = free_udp_port();
    let tail = format!(
        r#"
[[trunks]]
name = "pstn-out"
allowed_sources = ["192.0.2.1"]
outbound_address = "127.0.0.1:{ext_port}"
outbound_transport = "{transport}"

[queues.support]
overflow_after_secs = 1
overflow_number = "+4930555"
overflow_trunk = "pstn-out"
"#
    );
    let Some(vh) = voice_hub_with(test, INLINE_CREDENTIALS, "", &tail).await else { return };
    vh.queue(json!({})).await;
    let mut args = vec!["-s", "+4930555", "-d", "3000"];
    args.extend_from_slice(far_end);
    let external = vh.sipp("agent_answer.xml", ext_port, &args);
    let caller = vh.sipp("caller.xml", free_udp_port(), &["-s", "100"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    finished_ok(external, "external party (answers, talks, hangs up)").await;
    finished_ok(caller, "caller").await;
    let kinds = vh.wait_event(&id, "call_ended", 20).await;
    let (_, overflow) = &kinds[position(&kinds, "overflowed_external")];
    assert_eq!(overflow["data"]["number"], "+4930555");
    let (_, ended) = &kinds[position(&kinds, "call_ended")];
    assert_eq!(ended["data"]["by"], "external");
    let done = vh.wait_status(&id, &["overflowed"], 10).await;
    assert_both_sides_heard(&done, "external party's");
    vh.stop().await;
}

/// Overflow retry: the external number is busy the first time; while the caller still
/// waits, the hub calls it again after the queue's overflow_retry_secs and bridges the
/// caller when it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_overflow_number_is_called_again_while_the_caller_waits() {
    let ext_port = free_udp_port();
    let tail = format!(
        r#"
[[trunks]]
name = "pstn-out"
allowed_sources = ["192.0.2.1"]
outbound_address = "127.0.0.1:{ext_port}"

[queues.support]
overflow_after_secs = 1
overflow_number = "+4930555"
overflow_trunk = "pstn-out"
overflow_retry_secs = 2
overflow_attempts = 3
"#
    );
    let Some(vh) = voice_hub_with("overflow-retry", INLINE_CREDENTIALS, "", &tail).await else { return };
    vh.queue(json!({})).await;
    let busy = vh.sipp("external_busy.xml", ext_port, &["-s", "+4930555"]);
    let caller = vh.sipp("caller.xml", free_udp_port(), &["-s", "100"]);
    finished_ok(busy, "external party (busy)").await;
    // The retry comes 2 s after the busy answer: the far end now picks up.
    let external = vh.sipp("agent_answer.xml", ext_port, &["-s", "+4930555", "-d", "2000"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    finished_ok(external, "external party (answers the second call)").await;
    finished_ok(caller, "caller").await;
    let kinds = vh.wait_event(&id, "call_ended", 20).await;
    let failed = position(&kinds, "overflow_failed");
    assert_eq!(kinds[failed].1["data"]["reason"], "busy");
    let answered = position(&kinds, "overflowed_external");
    assert!(failed < answered, "{:?}", kinds_of(&kinds));
    assert_eq!(kinds.iter().filter(|(k, _)| k == "overflow_failed").count(), 1, "{:?}", kinds_of(&kinds));
    vh.wait_status(&id, &["overflowed"], 10).await;
    vh.stop().await;
}

/// Max wait: nobody answers within the queue's max_wait_secs; meanwhile the hub
/// announces the caller's position (event with the position); then it offers voicemail,
/// records until the caller presses # and hangs up; the interaction becomes a voicemail
/// with its recording for a callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_wait_offers_voicemail_until_pound_and_announces_the_position() {
    let Some(vh) = voice_hub_with("maxwait", INLINE_CREDENTIALS, "max_wait_voicemail_silence_secs = 0", "").await else { return };
    vh.queue(json!({ "max_wait_secs": 3 })).await;
    let caller = vh.sipp("caller_max_wait.xml", free_udp_port(), &["-s", "100"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    // Only the # ends this recording (no silence limit, 120 s time limit > SIPp's 60 s).
    finished_ok(caller, "caller (talks, presses #, gets the hub's BYE)").await;
    let vm = vh.wait_status(&id, &["voicemail"], 20).await;
    let path = vm["metadata"]["recording"].as_str().expect("recording").to_string();
    let bytes = std::fs::read(&path).expect("voicemail file");
    let data = bytes.windows(4).position(|w| w == b"data").map(|p| p + 8).expect("data chunk");
    let samples: Vec<i16> = bytes[data..].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    assert!(samples.len() > 8000 * 2, "at least 2 s of voicemail ({} samples)", samples.len());
    let rms = (samples.iter().map(|s| f64::from(*s) * f64::from(*s)).sum::<f64>() / samples.len() as f64).sqrt();
    assert!(rms > 200.0, "the voicemail holds the caller's voice (RMS {rms:.0})");
    let kinds = vh.wait_event(&id, "voicemail_recorded", 10).await;
    let announced = position(&kinds, "announced_position");
    assert_eq!(kinds[announced].1["data"]["position"], 1, "{:?}", kinds[announced].1);
    assert!(announced < position(&kinds, "call_max_wait"), "{:?}", kinds_of(&kinds));
    let (_, max_wait) = &kinds[position(&kinds, "call_max_wait")];
    assert_eq!(max_wait["data"]["action"], "voicemail");
    vh.stop().await;
}

/// Runs `register.xml` for `user` until it succeeds (the adapter loads new database
/// credentials on the `agent_updated` event, a moment after the API answered) or `secs`
/// pass; true on success.
async fn registers(vh: &VoiceHub, user: &str, password: &str, secs: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let port = free_udp_port().to_string();
    loop {
        let reg = vh.sipp("register.xml", free_udp_port(), &["-s", user, "-au", user, "-ap", password, "-key", "agent_port", &port]);
        let out = tokio::time::timeout(Duration::from_secs(60), reg.wait_with_output()).await.expect("sipp finished").expect("sipp ran");
        if out.status.success() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An admin sets an agent's SIP password over the API (other roles get 403); only the
/// HA1 digest is stored and nothing returns it; the phone registers with the new password
/// and no longer with the old one. A hub whose registrar reads inline credentials says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_sets_an_agents_sip_password_and_the_phone_registers_with_it() {
    let Some(vh) = voice_hub("sippw", r#"{ type = "external" }"#).await else { return };
    let dave = user(&vh.th, "dave", &[Role::Agent], Some(json!({}))).await;
    let id = dave.agent_id.expect("agent id");
    let path = format!("/api/v1/agents/{id}/sip-password");
    // Without a SIP user there is nothing to authenticate.
    let (st, body) = vh.admin.call("PUT", &path, Some(json!({ "password": "dave-sip-pass" }))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "sip_user", "{body}");
    let (st, body) = vh.admin.call("PATCH", &format!("/api/v1/agents/{id}"), Some(json!({ "sip_user": "dave" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // Roles: only admins.
    let sup = user(&vh.th, "sam", &[Role::Supervisor], None).await;
    for (who, c) in [("supervisor", &sup), ("the agent himself", &dave)] {
        let (st, body) = c.call("PUT", &path, Some(json!({ "password": "dave-sip-pass" }))).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{who}: {body}");
    }
    let (st, _) = Client::anonymous(&vh.th.url).call("PUT", &path, Some(json!({ "password": "dave-sip-pass" }))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // Bad input gets a clear error.
    for bad in [json!({ "password": "short" }), json!({ "password": "x\u{7}yyyyyyyyy" }), json!({}), json!({ "password": 5 })] {
        let (st, body) = vh.admin.call("PUT", &path, Some(bad.clone())).await;
        assert!(st.is_client_error() && st != StatusCode::NOT_FOUND, "{bad}: {st} {body}");
        assert!(body["detail"].is_string(), "{bad}: not problem+json: {body}");
    }
    let (st, body) = vh
        .admin
        .call("PUT", &format!("/api/v1/agents/{}/sip-password", Uuid::new_v4()), Some(json!({ "password": "dave-sip-pass" })))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    // Set it: the answer names the SIP user and realm, never the password or its digest.
    let (st, body) = vh.admin.call("PUT", &path, Some(json!({ "password": "dave-sip-pass" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["sip_user"], "dave");
    assert_eq!(body["realm"], "switchboard");
    let ha1 = switchboard_voice::sip::digest::ha1("dave", "switchboard", "dave-sip-pass");
    let stored: String = sqlx::query_scalar("select ha1 from sip_credentials where agent_id = $1")
        .bind(id)
        .fetch_one(vh.th.hub().db())
        .await
        .expect("credentials row");
    assert_eq!(stored, ha1, "HA1 = MD5(user:realm:password) is stored");
    for get in [format!("/api/v1/agents/{id}"), "/api/v1/agents".to_string(), "/api/v1/audit".to_string()] {
        let (st, body) = vh.admin.call("GET", &get, None).await;
        assert_eq!(st, StatusCode::OK, "{get}: {body}");
        let text = body.to_string();
        assert!(!text.contains("dave-sip-pass") && !text.contains(&ha1), "{get} leaks the SIP password: {text}");
    }
    // The phone registers with it.
    let engine = switchboard_voice::engine_for(&vh.name).expect("engine");
    assert!(registers(&vh, "dave", "dave-sip-pass", 10).await, "REGISTER with the new password");
    assert!(engine.is_registered("dave").await.expect("engine"));
    // A new password replaces the old one.
    let (st, body) = vh.admin.call("PUT", &path, Some(json!({ "password": "dave-new-pass" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(registers(&vh, "dave", "dave-new-pass", 10).await, "REGISTER with the changed password");
    assert!(!registers(&vh, "dave", "dave-sip-pass", 0).await, "the old password no longer registers");
    vh.stop().await;

    // A registrar with inline credentials would ignore a stored password: 409 says why.
    let Some(vh) = voice_hub("sippw-inline", INLINE_CREDENTIALS).await else { return };
    let erin = user(&vh.th, "erin", &[Role::Agent], Some(json!({}))).await;
    let id = erin.agent_id.expect("agent id");
    let (st, body) = vh.admin.call("PUT", &format!("/api/v1/agents/{id}/sip-password"), Some(json!({ "password": "erin-sip-pass" }))).await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().unwrap_or_default().contains("inline"), "{body}");
    vh.stop().await;
}

/// A late-offer INVITE (no SDP, as PBXs and gateways send) is answered 200 OK with our
/// offer; the caller's answer in the ACK sets the media: the IVR hears the caller's
/// DTMF, the agent's phone rings, and both directions are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_offer_invite_is_answered_with_our_offer_and_the_ack_answers() {
    let Some(vh) = voice_hub("lateoffer", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({})).await;
    let (alice, phone) = vh.agent("alice", "alice-pw", "agent_answer.xml", &["-d", "3000"]).await;
    let caller = vh.sipp("caller_late_offer.xml", free_udp_port(), &["-s", "100"]);
    let i = vh.voice_interaction().await;
    let id = i["id"].as_str().expect("id").to_string();
    // The menu choice "1" (an RFC 4733 event, sent to the address of our offer with the
    // payload type of the ACK's answer) set the requirement.
    assert_eq!(i["requirement"], "language:en >= 1", "{i}");
    finished_ok(phone, "alice's phone").await;
    finished_ok(caller, "late-offer caller").await;
    let done = vh.wait_status(&id, &["wrap_up", "closed"], 20).await;
    assert_eq!(done["agent_id"], json!(alice.agent_id));
    assert_both_sides_heard(&done, "agent");
    vh.stop().await;
}

/// A late-offer caller whose ACK brings no SDP answer has a session without media: the
/// hub ends it with BYE at once and nothing is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_offer_without_an_answer_in_the_ack_is_hung_up() {
    let Some(vh) = voice_hub("lateoffer-noanswer", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({})).await;
    let caller = vh.sipp("caller_late_offer_no_answer.xml", free_udp_port(), &["-s", "100"]);
    finished_ok(caller, "late-offer caller without an answer (expects the hub's BYE)").await;
    let (_, list) = vh.admin.call("GET", "/api/v1/interactions?channel=voice", None).await;
    assert_eq!(list["items"], json!([]), "nothing was queued");
    vh.stop().await;
}

/// The value of one sample line (`name{labels}`) of a Prometheus text page.
fn metric(page: &str, sample: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} on /metrics:\n{page}"))
}

async fn metrics_page(vh: &VoiceHub) -> String {
    let resp = reqwest::get(format!("{}/metrics", vh.th.url)).await.expect("GET /metrics");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().await.expect("metrics text")
}

/// `/metrics` shows the voice channel: calls offered, answered and abandoned, active
/// calls, registrations, SIP messages in and out, SIP parse errors, RTP packets and loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_calls_registrations_sip_and_rtp() {
    let Some(vh) = voice_hub("metrics", INLINE_CREDENTIALS).await else { return };
    vh.queue(json!({})).await;
    let before = metrics_page(&vh).await;
    assert_eq!(metric(&before, "switchboard_voice_calls_total{outcome=\"offered\"}"), 0.0);
    assert_eq!(metric(&before, "switchboard_voice_registrations"), 0.0);
    // A caller who gives up in the queue.
    let caller = vh.sipp("caller_abandon.xml", free_udp_port(), &["-s", "100", "-d", "2500"]);
    let i = vh.voice_interaction().await;
    let during = metrics_page(&vh).await;
    assert_eq!(metric(&during, "switchboard_voice_active_calls"), 1.0, "the waiting call is active");
    finished_ok(caller, "abandoning caller").await;
    vh.wait_status(i["id"].as_str().expect("id"), &["abandoned"], 10).await;
    // A call answered by an agent.
    let (_alice, phone) = vh.agent("alice", "alice-pw", "agent_answer.xml", &["-d", "3000"]).await;
    let caller = vh.sipp("caller.xml", free_udp_port(), &["-s", "100"]);
    finished_ok(phone, "alice's phone").await;
    finished_ok(caller, "caller").await;
    // A datagram that is no SIP message.
    let junk = UdpSocket::bind("127.0.0.1:0").expect("socket");
    junk.send_to(b"HELLO sip:nobody SIP/2.0\r\nVia: nonsense\r\n\r\n", vh.sip).expect("send junk");
    let page = eventually(10, || {
        let url = format!("{}/metrics", vh.th.url);
        async move {
            let page = reqwest::get(url).await.ok()?.text().await.ok()?;
            (metric(&page, "switchboard_voice_active_calls") == 0.0 && metric(&page, "switchboard_voice_sip_parse_errors_total") >= 1.0)
                .then_some(page)
        }
    })
    .await;
    assert_eq!(metric(&page, "switchboard_voice_calls_total{outcome=\"offered\"}"), 2.0, "{page}");
    assert_eq!(metric(&page, "switchboard_voice_calls_total{outcome=\"answered\"}"), 1.0);
    assert_eq!(metric(&page, "switchboard_voice_calls_total{outcome=\"abandoned\"}"), 1.0);
    assert_eq!(metric(&page, "switchboard_voice_registrations"), 1.0, "alice's phone");
    assert!(metric(&page, "switchboard_voice_sip_messages_total{direction=\"in\"}") >= 10.0);
    assert!(metric(&page, "switchboard_voice_sip_messages_total{direction=\"out\"}") >= 10.0);
    assert_eq!(metric(&page, "switchboard_voice_sip_parse_errors_total"), 1.0);
    assert!(metric(&page, "switchboard_voice_rtp_packets_total{direction=\"in\"}") > 100.0, "the caller's audio");
    assert!(metric(&page, "switchboard_voice_rtp_packets_total{direction=\"out\"}") > 100.0, "prompts and the agent's audio");
    assert!(metric(&page, "switchboard_voice_rtp_lost_packets_total") >= 0.0);
    assert!(page.contains("# TYPE switchboard_voice_calls_total counter"), "{page}");
    vh.stop().await;
}
