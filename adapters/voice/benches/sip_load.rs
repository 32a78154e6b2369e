//! SIP load benchmark over loopback with SIPp: `cargo bench -p switchboard-voice --bench sip_load`.
//!
//! The engine runs in this process with a routing layer that rings the agent at once
//! (no database: this measures the voice engine, not core). One SIPp UAS plays the
//! registered agent phone (answers every INVITE), one SIPp UAC plays the trunk.
//!
//! 1. Set-up rate: `CPS` calls per second (default 200) for `CPS_CALLS` calls (2000),
//!    each bridged to the agent and held 1 s; failed calls must stay below 0.1 %.
//! 2. Concurrency: `CONCURRENT` calls (300) with 7 s of G.711 audio from both sides,
//!    relayed through the hub and recorded (stereo WAV per call); RTP loss measured as
//!    audio packets the hub received versus packets SIPp sent (236 per side per call).
//!
//! 3. Hardening (points 1-3 of the hardening issue): `HARD_CPS` (50) calls per second
//!    for `HARD_CALLS` (1000) calls through a welcome prompt and a menu; each caller
//!    presses 1 during the welcome (barge-in), the agent phone answers and hangs up at
//!    once (the end follows the answer by milliseconds), and a stale-RTP source sprays
//!    RTP carrying the digit 9 at every port of the engine's narrow RTP range (ports are
//!    reused call after call). Reports are applied the way the hub adapter applies them
//!    (the answer accepts the offer, then marks the call bridged; the end wraps up a
//!    bridged call and abandons any other, which core refuses for an active one).
//!    Printed: interactions left active, digits lost, digits taken from the stale
//!    source, media packets sent to it.
//!
//! Bounded: every SIPp run has a call limit and a timeout; the whole bench ends in about
//! two minutes. Environment overrides: `CPS`, `CPS_CALLS`, `CONCURRENT`, `HOLD_MS`,
//! `HARD_CPS`, `HARD_CALLS`, `HARD_STALE` (0: no stale RTP source) and `PHASES` (comma
//! list of `cps`, `media`, `hardening`).

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchboard_voice::call::{CallInfo, CallOutcome, CallRouting, CallTicket, RoutingError};
use switchboard_voice::config::VoiceConfig;
use switchboard_voice::media_session::media_stats;
use switchboard_voice::registrar::InlineCredentials;
use switchboard_voice::{VoiceEngine, VoiceEngineHandle};
use tokio::process::Command;

/// Audio packets in `/usr/share/sip-tester/g711a.pcap`.
const PCAP_PACKETS: u64 = 236;

#[derive(Default)]
struct Counters {
    enqueued: AtomicU64,
    answered: AtomicU64,
    failed_offers: AtomicU64,
    ended: AtomicU64,
    abandoned: AtomicU64,
    live: AtomicU64,
    peak_live: AtomicU64,
    setup_ms: Mutex<Vec<u64>>,
    started: Mutex<std::collections::HashMap<String, Instant>>,
}

/// Rings the one registered agent for every call, immediately.
struct BenchRouting {
    engine: OnceLock<VoiceEngineHandle>,
    c: Counters,
}

#[async_trait]
impl CallRouting for BenchRouting {
    async fn enqueue_call(&self, call: CallInfo) -> Result<CallTicket, RoutingError> {
        self.c.enqueued.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.c.started.lock() {
            s.insert(call.call_id.clone(), Instant::now());
        }
        if let Some(e) = self.engine.get() {
            let _ = e.ring_agent(&call.call_id, "alice", &format!("offer-{}", call.call_id));
        }
        Ok(CallTicket { call_id: call.call_id.clone(), interaction_id: call.call_id })
    }
    async fn abandon(&self, _t: &CallTicket) -> Result<(), RoutingError> {
        self.c.abandoned.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn call_event(&self, t: &CallTicket, event: CallOutcome) -> Result<(), RoutingError> {
        match event {
            CallOutcome::Answered { .. } => {
                self.c.answered.fetch_add(1, Ordering::Relaxed);
                let live = self.c.live.fetch_add(1, Ordering::Relaxed) + 1;
                self.c.peak_live.fetch_max(live, Ordering::Relaxed);
                let started = self.c.started.lock().ok().and_then(|mut s| s.remove(&t.call_id));
                if let (Some(s), Ok(mut v)) = (started, self.c.setup_ms.lock()) {
                    v.push(s.elapsed().as_millis() as u64);
                }
            }
            CallOutcome::Ended { .. } => {
                self.c.ended.fetch_add(1, Ordering::Relaxed);
                self.c.live.fetch_sub(1, Ordering::Relaxed);
            }
            CallOutcome::NoAnswer { .. } | CallOutcome::Busy { .. } | CallOutcome::Unreachable { .. } | CallOutcome::Withdrawn { .. } => {
                self.c.failed_offers.fetch_add(1, Ordering::Relaxed);
            }
            CallOutcome::Ringing { .. } => {}
            // No overflow numbers or supervisors in this load run.
            CallOutcome::ExternalAnswered { .. }
            | CallOutcome::ExternalFailed { .. }
            | CallOutcome::SupervisorJoined { .. }
            | CallOutcome::SupervisorFailed { .. }
            | CallOutcome::SupervisorLeft { .. } => {}
        }
        Ok(())
    }
    async fn voicemail(&self, _call: CallInfo, _recording: PathBuf) -> Result<(), RoutingError> {
        Ok(())
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).unwrap_or(0)
}

fn scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sipp").join(name).display().to_string()
}

/// The last row of a SIPp `-trace_stat` CSV, by column name.
fn sipp_stat(dir: &Path, column: &str) -> Option<f64> {
    let file = std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.to_string_lossy().ends_with("_.csv"))?;
    let text = std::fs::read_to_string(file).ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    let idx = header.iter().position(|h| *h == column)?;
    last.get(idx)?.trim().parse().ok()
}

struct Run {
    ok: bool,
    elapsed: Duration,
    successful: f64,
    failed: f64,
}

#[allow(clippy::too_many_arguments)]
async fn run_uac(sipp: &Path, hub: std::net::SocketAddr, file: &str, work: &Path, rate: u64, limit: u64, calls: u64, hold_ms: u64) -> Run {
    let _ = std::fs::remove_dir_all(work);
    let _ = std::fs::create_dir_all(work);
    let started = Instant::now();
    let status = Command::new(sipp)
        .arg("-sf")
        .arg(scenario(file))
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-nostdin", "-trace_stat", "-fd", "1"])
        .args(["-p", &free_port().to_string(), "-mp", &(free_port() & !1).to_string()])
        .args(["-r", &rate.to_string(), "-l", &limit.to_string(), "-m", &calls.to_string(), "-d", &hold_ms.to_string()])
        .args(["-timeout", "120s", "-timeout_error", "-max_socket", "4096"])
        .arg(hub.to_string())
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await;
    let elapsed = started.elapsed();
    Run {
        ok: status.map(|s| s.success()).unwrap_or(false),
        elapsed,
        successful: sipp_stat(work, "SuccessfulCall(C)").unwrap_or(0.0),
        failed: sipp_stat(work, "FailedCall(C)").unwrap_or(0.0),
    }
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(sipp) = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("sipp")).find(|p| p.is_file())) else {
        eprintln!("SKIPPED sip_load: `sipp` not on PATH (apt-get install sip-tester)");
        return;
    };
    let phases = std::env::var("PHASES").unwrap_or_else(|_| "cps,media,hardening".into());
    let phase = |name: &str| phases.split(',').any(|p| p.trim() == name);
    let cps = env_u64("CPS", 200);
    let cps_calls = env_u64("CPS_CALLS", 2000);
    let concurrent = env_u64("CONCURRENT", 300);
    let hold_ms = env_u64("HOLD_MS", 10_000);
    let work = std::env::temp_dir().join(format!("sb-sip-load-{}", std::process::id()));
    let recordings = work.join("rec");
    let _ = std::fs::create_dir_all(&recordings);
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/prompts");
    let mut config: VoiceConfig = match toml::from_str(&format!(
        r#"
udp_listen = "127.0.0.1:0"
public_ip = "127.0.0.1"
rtp_port_min = 0
ring_timeout_secs = 10
announce_every_secs = 3600
prompts_dir = "{}"
recordings_dir = "{}"
[[trunks]]
name = "load"
allowed_sources = ["127.0.0.1"]
dids = {{ "100" = "queue" }}
[ivr_flows.queue]
start = "q"
default_queue = "load"
[ivr_flows.queue.nodes.q]
type = "enqueue"
"#,
        prompts.display(),
        recordings.display()
    )) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench config: {e}");
            return;
        }
    };
    config.tcp_listen = None;
    let routing = Arc::new(BenchRouting { engine: OnceLock::new(), c: Counters::default() });
    let mut creds = InlineCredentials::default();
    creds.insert("alice", "wonderland");
    let engine = match VoiceEngine::start(config, routing.clone(), Arc::new(creds)).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("engine: {e}");
            return;
        }
    };
    let _ = routing.engine.set(engine.clone());
    let Some(hub) = engine.udp_addr() else { return };

    // The agent phone: register (digest), then a UAS answering every call.
    let agent_port = free_port();
    let reg = Command::new(&sipp)
        .arg("-sf")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/register.xml"))
        .args(["-i", "127.0.0.1", "-m", "1", "-nostdin", "-timeout", "10s", "-p", &free_port().to_string()])
        .args(["-key", "agent_port", &agent_port.to_string()])
        .arg(hub.to_string())
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if !reg.map(|s| s.success()).unwrap_or(false) {
        eprintln!("agent registration failed");
        return;
    }

    println!("== sip_load: engine at {hub}, SIPp over loopback ==");
    // Phase 1: set-up rate.
    if phase("cps") {
        let mut uas = match Command::new(&sipp)
            .arg("-sf")
            .arg(scenario("cps_agent.xml"))
            .args([
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-nostdin",
                "-p",
                &agent_port.to_string(),
                "-mp",
                &(free_port() & !1).to_string(),
            ])
            .args(["-max_socket", "4096"])
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sipp uas: {e}");
                return;
            }
        };
        let before = snapshot(&routing);
        let run = run_uac(&sipp, hub, "cps_caller.xml", &work.join("cps"), cps, cps * 3, cps_calls, 1000).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = snapshot(&routing);
        let mut setup = routing.c.setup_ms.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
        let arrivals = Duration::from_secs_f64(cps_calls as f64 / cps as f64);
        let fail_pct = 100.0 * run.failed / (run.successful + run.failed).max(1.0);
        println!(
            "set-up rate: offered {cps} CPS x {cps_calls} calls (arrivals over {:.1} s, whole run {:.1} s): sipp ok={} successful={} failed={} ({fail_pct:.3} %); engine bridged {} of {} enqueued, offer failures {}; set-up (enqueue->agent 200) p50 {} ms p99 {} ms",
            arrivals.as_secs_f64(),
            run.elapsed.as_secs_f64(),
            run.ok,
            run.successful,
            run.failed,
            after.1 - before.1,
            after.0 - before.0,
            after.2 - before.2,
            percentile(&mut setup, 0.5),
            percentile(&mut setup, 0.99),
        );
        let _ = uas.kill().await;
    }
    // Phase 2: concurrent bridged calls with RTP relay and recording.
    if phase("media") {
        let mut uas = match Command::new(&sipp)
            .arg("-sf")
            .arg(scenario("media_agent.xml"))
            .args([
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-nostdin",
                "-p",
                &agent_port.to_string(),
                "-mp",
                &(free_port() & !1).to_string(),
            ])
            .args(["-max_socket", "4096"])
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("sipp uas: {e}");
                return;
            }
        };
        let stats = media_stats();
        let rtp_in0 = stats.rtp_in.load(Ordering::Relaxed);
        let relayed0 = stats.relayed.load(Ordering::Relaxed);
        let out0 = stats.rtp_out.load(Ordering::Relaxed);
        let err0 = stats.rtp_send_errors.load(Ordering::Relaxed);
        routing.c.peak_live.store(routing.c.live.load(Ordering::Relaxed), Ordering::Relaxed);
        let before = snapshot(&routing);
        let rate = (concurrent / 5).max(1);
        let run = run_uac(&sipp, hub, "media_caller.xml", &work.join("media"), rate, concurrent, concurrent, hold_ms).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = snapshot(&routing);
        let bridged = after.1 - before.1;
        let rtp_in = stats.rtp_in.load(Ordering::Relaxed) - rtp_in0;
        let expected = bridged * 2 * PCAP_PACKETS;
        let loss = if expected == 0 { 100.0 } else { 100.0 * expected.saturating_sub(rtp_in) as f64 / expected as f64 };
        let recs: Vec<u64> = std::fs::read_dir(&recordings)
            .map(|d| d.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).map(|m| m.len()).collect())
            .unwrap_or_default();
        let fail_pct = 100.0 * run.failed / (run.successful + run.failed).max(1.0);
        println!(
            "concurrency: {concurrent} calls at {rate} CPS, held {hold_ms} ms: sipp ok={} successful={} failed={} ({fail_pct:.3} %); peak concurrently bridged {}; RTP in {rtp_in} of {expected} expected (loss {loss:.3} %), relayed frames {}, RTP out {}, send errors {}; recordings {} files, {:.1} MB",
            run.ok,
            run.successful,
            run.failed,
            routing.c.peak_live.load(Ordering::Relaxed),
            stats.relayed.load(Ordering::Relaxed) - relayed0,
            stats.rtp_out.load(Ordering::Relaxed) - out0,
            stats.rtp_send_errors.load(Ordering::Relaxed) - err0,
            recs.len(),
            recs.iter().sum::<u64>() as f64 / 1e6,
        );
        let _ = uas.kill().await;
    }
    engine.shutdown();
    if phase("hardening") {
        hardening(&sipp, &work, &prompts).await;
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// Core's state of one interaction, as the hub adapter's reports leave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Queued,
    Active,
    WrapUp,
    Abandoned,
}

#[derive(Debug, Clone, Copy)]
struct Interaction {
    status: Status,
    /// The adapter's "bridged" mark, set after the accept committed.
    bridged: bool,
}

/// Applies call reports like `HubRouting` over core: `Answered` accepts the offer (a
/// database round trip) and then marks the call bridged; `Ended` wraps up a call marked
/// bridged and abandons any other, which core refuses (409) for an active interaction.
/// Out of order, an end between the accept and the mark leaves the interaction active.
#[derive(Default)]
struct HardeningRouting {
    engine: OnceLock<VoiceEngineHandle>,
    interactions: Mutex<std::collections::HashMap<String, Interaction>>,
    enqueued: AtomicU64,
    pressed_1: AtomicU64,
    pressed_9: AtomicU64,
    answered: AtomicU64,
    ended: AtomicU64,
    failed_offers: AtomicU64,
}

impl HardeningRouting {
    fn with<T>(&self, call_id: &str, f: impl FnOnce(&mut Interaction) -> T) -> Option<T> {
        self.interactions.lock().ok().and_then(|mut m| m.get_mut(call_id).map(f))
    }

    fn count(&self, status: Status) -> usize {
        self.interactions.lock().map(|m| m.values().filter(|i| i.status == status).count()).unwrap_or(0)
    }
}

#[async_trait]
impl CallRouting for HardeningRouting {
    async fn enqueue_call(&self, call: CallInfo) -> Result<CallTicket, RoutingError> {
        self.enqueued.fetch_add(1, Ordering::Relaxed);
        for r in &call.requirements {
            match r.skill.as_str() {
                "pressed:1" => self.pressed_1.fetch_add(1, Ordering::Relaxed),
                "pressed:9" => self.pressed_9.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
        }
        if let Ok(mut m) = self.interactions.lock() {
            m.insert(call.call_id.clone(), Interaction { status: Status::Queued, bridged: false });
        }
        if let Some(e) = self.engine.get() {
            let _ = e.ring_agent(&call.call_id, "alice", &format!("offer-{}", call.call_id));
        }
        Ok(CallTicket { call_id: call.call_id.clone(), interaction_id: call.call_id })
    }
    async fn abandon(&self, t: &CallTicket) -> Result<(), RoutingError> {
        self.with(&t.call_id, |i| {
            if i.status == Status::Queued {
                i.status = Status::Abandoned;
            }
        });
        Ok(())
    }
    async fn call_event(&self, t: &CallTicket, event: CallOutcome) -> Result<(), RoutingError> {
        match event {
            CallOutcome::Answered { .. } => {
                // accept_offer: a transaction of a few milliseconds, then the event row.
                tokio::time::sleep(Duration::from_millis(u64::from(rand::random::<u8>() % 8))).await;
                let accepted = self.with(&t.call_id, |i| {
                    let ok = i.status == Status::Queued;
                    if ok {
                        i.status = Status::Active;
                    }
                    ok
                });
                tokio::time::sleep(Duration::from_millis(1)).await;
                if accepted == Some(true) {
                    self.with(&t.call_id, |i| i.bridged = true);
                    self.answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            CallOutcome::Ended { .. } => {
                self.ended.fetch_add(1, Ordering::Relaxed);
                self.with(&t.call_id, |i| match (i.bridged, i.status) {
                    (true, _) => i.status = Status::WrapUp,
                    (false, Status::Queued) => i.status = Status::Abandoned,
                    // Abandoning an active interaction is refused: it stays active.
                    (false, _) => {}
                });
            }
            CallOutcome::NoAnswer { .. } | CallOutcome::Busy { .. } | CallOutcome::Unreachable { .. } | CallOutcome::Withdrawn { .. } => {
                self.failed_offers.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        Ok(())
    }
    async fn voicemail(&self, _call: CallInfo, _recording: PathBuf) -> Result<(), RoutingError> {
        Ok(())
    }
}

/// RTP ports of the hardening engine: a narrow range, so ports are reused all the time.
const HARD_RTP_MIN: u16 = 45_000;
const HARD_RTP_MAX: u16 = 45_598;

/// Phase 3: hang-up right after the answer, digits during the welcome, stale RTP.
async fn hardening(sipp: &Path, work: &Path, prompts: &Path) {
    let cps = env_u64("HARD_CPS", 50);
    let calls = env_u64("HARD_CALLS", 1000);
    let config: VoiceConfig = match toml::from_str(&format!(
        r#"
udp_listen = "127.0.0.1:0"
public_ip = "127.0.0.1"
rtp_port_min = {HARD_RTP_MIN}
rtp_port_max = {HARD_RTP_MAX}
ring_timeout_secs = 10
announce_every_secs = 3600
prompts_dir = "{}"
recordings_dir = "{}"
[[trunks]]
name = "load"
allowed_sources = ["127.0.0.1"]
dids = {{ "300" = "ivr" }}
[ivr_flows.ivr]
start = "welcome"
default_queue = "load"
[ivr_flows.ivr.nodes.welcome]
type = "play"
prompt = "welcome"
next = "menu"
[ivr_flows.ivr.nodes.menu]
type = "menu"
prompt = "menu"
choices = {{ "1" = "one", "9" = "nine" }}
timeout_ms = 5000
max_attempts = 1
on_failure = "bye"
[ivr_flows.ivr.nodes.one]
type = "set_requirement"
requirement = "pressed:1"
next = "queue"
[ivr_flows.ivr.nodes.nine]
type = "set_requirement"
requirement = "pressed:9"
next = "queue"
[ivr_flows.ivr.nodes.queue]
type = "enqueue"
[ivr_flows.ivr.nodes.bye]
type = "hangup"
"#,
        prompts.display(),
        work.join("rec-hard").display()
    )) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hardening config: {e}");
            return;
        }
    };
    let mut config = config;
    config.tcp_listen = None;
    let _ = std::fs::create_dir_all(work.join("rec-hard"));
    let routing = Arc::new(HardeningRouting::default());
    let mut creds = InlineCredentials::default();
    creds.insert("alice", "wonderland");
    let engine = match VoiceEngine::start(config, routing.clone(), Arc::new(creds)).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("hardening engine: {e}");
            return;
        }
    };
    let _ = routing.engine.set(engine.clone());
    let Some(hub) = engine.udp_addr() else { return };
    let agent_port = free_port();
    let reg = Command::new(sipp)
        .arg("-sf")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/register.xml"))
        .args(["-i", "127.0.0.1", "-m", "1", "-nostdin", "-timeout", "10s", "-p", &free_port().to_string()])
        .args(["-key", "agent_port", &agent_port.to_string()])
        .arg(hub.to_string())
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if !reg.map(|s| s.success()).unwrap_or(false) {
        eprintln!("hardening: agent registration failed");
        return;
    }
    let mut uas = match Command::new(sipp)
        .arg("-sf")
        .arg(scenario("hardening_agent.xml"))
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-nostdin", "-p", &agent_port.to_string()])
        .args(["-mp", &(free_port() & !1).to_string(), "-max_socket", "4096"])
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sipp uas: {e}");
            return;
        }
    };
    // A phone of a finished call that keeps sending: RTP with the digit 9 (RFC 4733 end
    // packets) at every even port of the range, each port every 100 ms.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(env_u64("HARD_STALE", 1) == 0));
    let sprayer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(sock) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else { return (0u64, 0u64) };
            let mut rtp = switchboard_voice::media::rtp::RtpSender::new();
            let nine = switchboard_voice::media::dtmf::TelephoneEvent { event: 9, end: true, volume: 10, duration: 800 }.build();
            let (mut sent, mut received) = (0u64, 0u64);
            let mut buf = [0u8; 2048];
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for port in (HARD_RTP_MIN..=HARD_RTP_MAX).step_by(2) {
                    let pkt = rtp.next(101, true, &nine, 800);
                    if sock.try_send_to(&pkt, std::net::SocketAddr::from(([127, 0, 0, 1], port))).is_ok() {
                        sent += 1;
                    }
                }
                while sock.try_recv_from(&mut buf).is_ok() {
                    received += 1;
                }
            }
            (sent, received)
        })
    };
    let run = run_uac(sipp, hub, "hardening_caller.xml", &work.join("hard"), cps, cps * 4, calls, 0).await;
    // Let the last reports land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (stale_sent, stale_received) = sprayer.await.unwrap_or((0, 0));
    let _ = uas.kill().await;
    engine.shutdown();
    let r = &routing;
    let pressed_1 = r.pressed_1.load(Ordering::Relaxed);
    let digits_lost = calls.saturating_sub(pressed_1);
    println!(
        "hardening: {calls} calls at {cps} CPS (whole run {:.1} s): sipp ok={} successful={} failed={}; enqueued {}, answered {}, ended {}, offer failures {}; \
         interactions left active {} (wrap-up {}, abandoned {}, queued {}); digits lost {digits_lost} of {calls}; \
         stale source: {stale_sent} RTP packets sprayed, digits taken from it {}, media packets sent to it {stale_received}",
        run.elapsed.as_secs_f64(),
        run.ok,
        run.successful,
        run.failed,
        r.enqueued.load(Ordering::Relaxed),
        r.answered.load(Ordering::Relaxed),
        r.ended.load(Ordering::Relaxed),
        r.failed_offers.load(Ordering::Relaxed),
        r.count(Status::Active),
        r.count(Status::WrapUp),
        r.count(Status::Abandoned),
        r.count(Status::Queued),
        r.pressed_9.load(Ordering::Relaxed),
    );
}

fn snapshot(r: &BenchRouting) -> (u64, u64, u64) {
    (r.c.enqueued.load(Ordering::Relaxed), r.c.answered.load(Ordering::Relaxed), r.c.failed_offers.load(Ordering::Relaxed))
}
