//! End-to-end tests of the call engine on 127.0.0.1 with real UDP sockets: a trunk
//! caller, an agent phone that registers with digest auth, and an in-memory routing
//! double standing in for core.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use switchboard_voice::call::{CallOutcome, Side};
use switchboard_voice::config::VoiceConfig;
use switchboard_voice::media::dtmf::event_packets;
use switchboard_voice::media::rtp::{RtpPacket, RtpSender};
use switchboard_voice::media::{g711, wav};
use switchboard_voice::registrar::InlineCredentials;
use switchboard_voice::sdp::{self, Codec};
use switchboard_voice::sip::digest::{expected_response, ha1, DigestCredentials};
use switchboard_voice::sip::SipMessage;
use switchboard_voice::{VoiceEngine, VoiceEngineHandle};
use tokio::net::UdpSocket;

struct Hub {
    handle: VoiceEngineHandle,
    sip: SocketAddr,
    recordings: std::path::PathBuf,
    routing: tokio::sync::mpsc::UnboundedReceiver<Seen>,
}

async fn start_hub(ring_timeout_secs: u64) -> Hub {
    start_hub_with(ring_timeout_secs, Duration::ZERO).await
}

/// A hub whose routing double takes `answer_delay` to apply an answer (core accepting
/// the offer in the database).
async fn start_hub_with(ring_timeout_secs: u64, answer_delay: Duration) -> Hub {
    let prompts = temp_dir("prompts");
    // A 60 ms prompt keeps the IVR fast; other prompts fall back to generated cues.
    std::fs::write(prompts.join("menu.wav"), wav::encode_mono(&vec![1000i16; 480])).unwrap();
    // A 3 s welcome for flows that greet before the menu.
    std::fs::write(prompts.join("welcome.wav"), wav::encode_mono(&vec![1000i16; 24_000])).unwrap();
    let recordings = temp_dir("recordings");
    let toml = format!(
        r#"
udp_listen = "127.0.0.1:0"
tcp_listen = "127.0.0.1:0"
public_ip = "127.0.0.1"
rtp_port_min = 0
ring_timeout_secs = {ring_timeout_secs}
prompts_dir = "{}"
recordings_dir = "{}"
voicemail_dir = "{}"
[timers]
t1_ms = 50
[registrar]
realm = "switchboard"
[[trunks]]
name = "carrier"
allowed_sources = ["127.0.0.1"]
dids = {{ "100" = "main", "200" = "closed", "300" = "greeting" }}
[ivr_flows.closed]
start = "vm"
[ivr_flows.closed.nodes.vm]
type = "voicemail"
max_seconds = 1
[ivr_flows.main]
start = "menu"
default_queue = "support"
[ivr_flows.main.nodes.menu]
type = "menu"
prompt = "menu"
choices = {{ "1" = "queue", "2" = "spanish" }}
timeout_ms = 3000
max_attempts = 1
on_failure = "queue"
[ivr_flows.main.nodes.spanish]
type = "set_requirement"
requirement = "language:es >= 1"
next = "queue"
[ivr_flows.main.nodes.queue]
type = "enqueue"
[ivr_flows.greeting]
start = "welcome"
default_queue = "support"
[ivr_flows.greeting.nodes.welcome]
type = "play"
prompt = "welcome"
next = "menu"
[ivr_flows.greeting.nodes.menu]
type = "menu"
prompt = "menu"
choices = {{ "1" = "queue", "2" = "spanish" }}
timeout_ms = 3000
on_failure = "queue"
[ivr_flows.greeting.nodes.spanish]
type = "set_requirement"
requirement = "language:es >= 1"
next = "queue"
[ivr_flows.greeting.nodes.queue]
type = "enqueue"
"#,
        prompts.display(),
        recordings.display(),
        temp_dir("voicemail").display()
    );
    let config: VoiceConfig = toml::from_str(&toml).expect("test config");
    let (routing, rx) = routing_with_answer_delay(answer_delay);
    let mut creds = InlineCredentials::default();
    creds.insert("alice", "wonderland");
    let handle = VoiceEngine::start(config, routing, Arc::new(creds)).await.expect("engine starts");
    Hub { sip: handle.udp_addr().unwrap(), handle, recordings, routing: rx }
}

fn register_text(phone: &Phone, cseq: u32, auth: &str) -> String {
    format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKreg{cseq};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=reg\r\nTo: <sip:alice@127.0.0.1>\r\n\
Call-ID: reg-{a}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:alice@{a}>\r\nExpires: 300\r\n{auth}Content-Length: 0\r\n\r\n",
        a = phone.addr()
    )
}

async fn register_agent(agent: &Phone) {
    agent.send(&register_text(agent, 1, "")).await;
    let (challenge, _) = agent.expect("401", |m| status(m) == Some(401)).await;
    let www = header(&challenge, "WWW-Authenticate");
    let nonce = www.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let mut c = DigestCredentials {
        username: "alice".into(),
        realm: "switchboard".into(),
        nonce: nonce.clone(),
        uri: "sip:127.0.0.1".into(),
        qop: Some("auth".into()),
        nc: Some("00000001".into()),
        cnonce: Some("abc".into()),
        ..Default::default()
    };
    c.response = expected_response(&ha1("alice", "switchboard", "wonderland"), "REGISTER", &c);
    let auth = format!(
        "Authorization: Digest username=\"alice\", realm=\"switchboard\", nonce=\"{nonce}\", uri=\"sip:127.0.0.1\", response=\"{}\", qop=auth, nc=00000001, cnonce=\"abc\"\r\n",
        c.response
    );
    agent.send(&register_text(agent, 2, &auth)).await;
    agent.expect("200 to REGISTER", |m| status(m) == Some(200)).await;
}

fn invite_text(caller: &Phone, rtp: SocketAddr, call_id: &str, extra: &str) -> String {
    let body = sdp::render(rtp, 1, 1, &[Codec::Pcmu], Some(101), sdp::Direction::SendRecv);
    format!(
        "INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{call_id};rport\r\n\
Max-Forwards: 70\r\nFrom: \"Customer\" <sip:+4915100000@127.0.0.1>;tag=caller\r\nTo: <sip:100@127.0.0.1>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:customer@{a}>\r\n{extra}Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{body}",
        body.len(),
        a = caller.addr()
    )
}

fn in_dialog(method: &str, caller: &Phone, call_id: &str, to_tag: &str, cseq: u32, body: &str) -> String {
    let ct = if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" };
    format!(
        "{method} sip:switchboard@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{method}{cseq}{call_id};rport\r\n\
Max-Forwards: 70\r\nFrom: \"Customer\" <sip:+4915100000@127.0.0.1>;tag=caller\r\nTo: <sip:100@127.0.0.1>;tag={to_tag}\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:customer@{a}>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len(),
        a = caller.addr()
    )
}

fn to_tag(msg: &SipMessage) -> String {
    header(msg, "To").split("tag=").nth(1).unwrap_or_default().to_string()
}

fn media_addr(msg: &SipMessage) -> SocketAddr {
    sdp::negotiate(&sdp::SessionDescription::parse(msg.body()).unwrap()).unwrap().remote
}

/// Reply to a request, copying Via/From/To/Call-ID/CSeq (RFC 3261 §8.2.6).
fn reply_to(req: &SipMessage, code: u16, tag: &str, contact: SocketAddr, body: &str) -> String {
    let mut out = format!("SIP/2.0 {code} X\r\n");
    for name in ["Via", "From", "Call-ID", "CSeq"] {
        out.push_str(&format!("{name}: {}\r\n", header(req, name)));
    }
    let to = header(req, "To");
    if to.contains("tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag={tag}\r\n"));
    }
    out.push_str(&format!("Contact: <sip:alice@{contact}>\r\n"));
    if !body.is_empty() {
        out.push_str("Content-Type: application/sdp\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out
}

async fn recv_rtp(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf)).await.expect("RTP within 10 s").unwrap();
    buf.truncate(n);
    buf
}

async fn send_dtmf(sock: &UdpSocket, to: SocketAddr, digit: char) {
    let mut sender = RtpSender::new();
    for ev in event_packets(digit, 3) {
        let pkt = sender.next(101, false, &ev.build(), 0);
        sock.send_to(&pkt, to).await.unwrap();
    }
}

/// Caller answered by the IVR, presses 2 (Spanish), waits in queue, the agent answers,
/// audio flows both ways, the caller hangs up: both legs end and the stereo recording exists.
#[tokio::test]
async fn caller_to_agent_bridge_with_recording() {
    let mut hub = start_hub(20).await;
    let agent = Phone::new(hub.sip).await;
    register_agent(&agent).await;
    assert!(hub.handle.is_registered("alice").await.unwrap());

    let caller = Phone::new(hub.sip).await;
    let caller_rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    caller.send(&invite_text(&caller, caller_rtp.local_addr().unwrap(), "call-1", "")).await;
    caller.expect("100 Trying", |m| status(m) == Some(100)).await;
    let (ok, _) = caller.expect("200 OK", |m| status(m) == Some(200)).await;
    let tag = to_tag(&ok);
    let hub_rtp = media_addr(&ok);
    caller.send(&in_dialog("ACK", &caller, "call-1", &tag, 1, "")).await;

    // The menu prompt arrives as PCMU RTP; then the caller presses 2.
    let first = recv_rtp(&caller_rtp).await;
    assert_eq!(RtpPacket::parse(&first).unwrap().payload_type, 0);
    send_dtmf(&caller_rtp, hub_rtp, '2').await;
    let Seen::Enqueued(info) = next_seen(&mut hub.routing).await else { panic!("enqueue expected") };
    assert_eq!(info.queue, "support");
    assert_eq!(info.caller, "+4915100000");
    assert_eq!(info.dialled, "100");
    assert_eq!(info.requirements, vec!["language:es >= 1".parse().unwrap()]);

    hub.handle.ring_agent(&info.call_id, "alice", "offer-1").unwrap();
    let (invite, _) = agent.expect("INVITE to agent", |m| method(m).as_deref() == Some("INVITE")).await;
    assert_eq!(header(&invite, "X-Switchboard-Call-ID"), "call-1");
    let agent_rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let agent_sdp = sdp::render(agent_rtp.local_addr().unwrap(), 2, 1, &[Codec::Pcma], Some(101), sdp::Direction::SendRecv);
    agent.send(&reply_to(&invite, 180, "agent", agent.addr(), "")).await;
    assert_eq!(next_seen(&mut hub.routing).await, Seen::Event("call-1".into(), CallOutcome::Ringing { offer_id: "offer-1".into() }));
    agent.send(&reply_to(&invite, 200, "agent", agent.addr(), &agent_sdp)).await;
    agent.expect("ACK from hub", |m| method(m).as_deref() == Some("ACK")).await;
    assert_eq!(
        next_seen(&mut hub.routing).await,
        Seen::Event("call-1".into(), CallOutcome::Answered { offer_id: "offer-1".into(), agent: "alice".into() })
    );
    // An offer reaching the engine after the call was bridged (the losing side of a
    // ring-all race) rings nobody and is reported withdrawn, not as the agent's failure.
    hub.handle.ring_agent(&info.call_id, "alice", "offer-late").unwrap();
    let Seen::Event(_, CallOutcome::Withdrawn { offer_id, .. }) = next_seen(&mut hub.routing).await else { panic!("withdrawn expected") };
    assert_eq!(offer_id, "offer-late");
    let hub_agent_rtp = media_addr(&invite);

    // Agent → caller (PCMA in, PCMU out: transcoded) and caller → agent.
    let mut a_sender = RtpSender::new();
    let mut c_sender = RtpSender::new();
    let tone: Vec<i16> = (0..160).map(|i| ((i as f32 / 4.0).sin() * 8000.0) as i16).collect();
    let mut got_at_caller = false;
    let mut got_at_agent = false;
    for _ in 0..50 {
        let a_pkt = a_sender.next(8, false, &g711::encode(Codec::Pcma, &tone), 160);
        agent_rtp.send_to(&a_pkt, hub_agent_rtp).await.unwrap();
        let c_pkt = c_sender.next(0, false, &g711::encode(Codec::Pcmu, &tone), 160);
        caller_rtp.send_to(&c_pkt, hub_rtp).await.unwrap();
        let mut buf = [0u8; 2048];
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(50), agent_rtp.recv_from(&mut buf)).await {
            let p = RtpPacket::parse(&buf[..n]).unwrap();
            got_at_agent |= p.payload_type == 8 && p.payload.iter().any(|b| *b != 0xd5);
        }
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(50), caller_rtp.recv_from(&mut buf)).await {
            let p = RtpPacket::parse(&buf[..n]).unwrap();
            got_at_caller |= p.payload_type == 0 && p.payload.iter().any(|b| *b != 0xff);
        }
        if got_at_agent && got_at_caller {
            break;
        }
    }
    assert!(got_at_agent && got_at_caller, "audio relayed both ways");

    // The caller hangs up; the hub sends BYE to the agent.
    caller.send(&in_dialog("BYE", &caller, "call-1", &tag, 2, "")).await;
    caller.expect("200 to BYE", |m| status(m) == Some(200)).await;
    let (bye, _) = agent.expect("BYE to agent", |m| method(m).as_deref() == Some("BYE")).await;
    agent.send(&reply_to(&bye, 200, "agent", agent.addr(), "")).await;
    let Seen::Event(_, CallOutcome::Ended { by, recording }) = next_seen(&mut hub.routing).await else { panic!("ended expected") };
    assert_eq!(by, Side::Caller);
    let recording = recording.expect("recording path");
    assert!(recording.starts_with(&hub.recordings));
    let bytes = std::fs::read(&recording).unwrap();
    assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2, "stereo");
    let data_len = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]) as usize;
    assert_eq!(data_len + 44, bytes.len(), "header patched on close");
    assert!(data_len > 0);
    let samples: Vec<i16> = bytes[44..].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
    assert!(samples.iter().step_by(2).any(|s| *s != 0), "caller audio on the left");
    assert!(samples.iter().skip(1).step_by(2).any(|s| *s != 0), "agent audio on the right");
    hub.handle.shutdown();
}

/// OPTIONS, Require: 100rel, junk, re-INVITE before ACK (491), hold via re-INVITE,
/// and a caller who hangs up while queued (abandoned).
#[tokio::test]
async fn options_420_glare_hold_and_abandon() {
    let mut hub = start_hub(20).await;
    let caller = Phone::new(hub.sip).await;
    let options = format!(
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKopt\r\nMax-Forwards: 70\r\n\
From: <sip:x@127.0.0.1>;tag=o\r\nTo: <sip:127.0.0.1>\r\nCall-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        a = caller.addr()
    );
    caller.send(&options).await;
    let (ok, _) = caller.expect("200 to OPTIONS", |m| status(m) == Some(200)).await;
    assert!(header(&ok, "Allow").contains("INVITE"));

    caller.send("\u{1}\u{2}garbage\r\n\r\n").await;
    caller.send(&options.replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE").replace("branch=z9hG4bKopt", "branch=z9hG4bKbad")).await;
    caller.expect("400 to CSeq mismatch", |m| status(m) == Some(400)).await;

    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    caller.send(&invite_text(&caller, rtp.local_addr().unwrap(), "call-420", "Require: 100rel\r\n")).await;
    let (r, _) = caller.expect("420", |m| status(m) == Some(420)).await;
    assert_eq!(header(&r, "Unsupported"), "100rel");

    caller.send(&invite_text(&caller, rtp.local_addr().unwrap(), "call-2", "")).await;
    let (ok, _) = caller.expect("200 OK", |m| status(m) == Some(200)).await;
    let tag = to_tag(&ok);
    // A re-INVITE before our 2xx is ACKed collides with the open offer/answer: 491.
    let body = sdp::render(rtp.local_addr().unwrap(), 1, 2, &[Codec::Pcmu], Some(101), sdp::Direction::SendOnly);
    caller.send(&in_dialog("INVITE", &caller, "call-2", &tag, 2, &body)).await;
    caller.expect("491", |m| status(m) == Some(491)).await;
    caller.send(&in_dialog("ACK", &caller, "call-2", &tag, 1, "")).await;
    // After the ACK a hold re-INVITE is accepted and answered recvonly.
    caller.send(&in_dialog("INVITE", &caller, "call-2", &tag, 3, &body)).await;
    let (held, _) = caller.expect("200 to hold", |m| status(m) == Some(200) && header(m, "CSeq") == "3 INVITE").await;
    assert!(String::from_utf8_lossy(held.body()).contains("a=recvonly"));
    caller.send(&in_dialog("ACK", &caller, "call-2", &tag, 3, "")).await;

    // Press 1 via SIP INFO (the RFC 4733 fallback) → enqueued; then hang up → abandoned.
    let info = in_dialog("INFO", &caller, "call-2", &tag, 4, "")
        .replace("Content-Length: 0\r\n\r\n", "Content-Type: application/dtmf-relay\r\nContent-Length: 10\r\n\r\nSignal=1\r\n");
    caller.send(&info).await;
    let Seen::Enqueued(_) = next_seen(&mut hub.routing).await else { panic!("enqueue expected") };
    caller.send(&in_dialog("BYE", &caller, "call-2", &tag, 5, "")).await;
    caller.expect("200 to BYE", |m| status(m) == Some(200) && header(m, "CSeq") == "5 BYE").await;
    assert_eq!(next_seen(&mut hub.routing).await, Seen::Abandoned("call-2".into()));
    hub.handle.shutdown();
}

/// Ring-no-answer: the agent's phone only rings; after the ring timeout the hub
/// sends CANCEL and reports no-answer; the caller stays queued.
#[tokio::test]
async fn ring_no_answer_cancels_the_agent_invite() {
    let mut hub = start_hub(1).await;
    let agent = Phone::new(hub.sip).await;
    register_agent(&agent).await;
    let caller = Phone::new(hub.sip).await;
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    caller.send(&invite_text(&caller, rtp.local_addr().unwrap(), "call-3", "")).await;
    let (ok, _) = caller.expect("200 OK", |m| status(m) == Some(200)).await;
    let tag = to_tag(&ok);
    caller.send(&in_dialog("ACK", &caller, "call-3", &tag, 1, "")).await;
    send_dtmf(&rtp, media_addr(&ok), '1').await;
    let Seen::Enqueued(info) = next_seen(&mut hub.routing).await else { panic!("enqueue expected") };
    hub.handle.ring_agent(&info.call_id, "alice", "offer-9").unwrap();
    let (invite, _) = agent.expect("INVITE", |m| method(m).as_deref() == Some("INVITE")).await;
    agent.send(&reply_to(&invite, 180, "agent", agent.addr(), "")).await;
    let (cancel, _) = agent.expect("CANCEL", |m| method(m).as_deref() == Some("CANCEL")).await;
    agent.send(&reply_to(&cancel, 200, "agent", agent.addr(), "")).await;
    agent.send(&reply_to(&invite, 487, "agent", agent.addr(), "")).await;
    agent.expect("ACK for 487", |m| method(m).as_deref() == Some("ACK")).await;
    let mut events = [next_seen(&mut hub.routing).await, next_seen(&mut hub.routing).await];
    events.sort_by_key(|e| format!("{e:?}"));
    assert!(events.contains(&Seen::Event("call-3".into(), CallOutcome::NoAnswer { offer_id: "offer-9".into() })));
    // An unregistered agent is reported unreachable straight away.
    hub.handle.ring_agent(&info.call_id, "bob", "offer-10").unwrap();
    let Seen::Event(_, CallOutcome::Unreachable { offer_id, .. }) = next_seen(&mut hub.routing).await else {
        panic!("unreachable expected")
    };
    assert_eq!(offer_id, "offer-10");
    hub.handle.shutdown();
}

/// After hours: the flow goes straight to voicemail; the caller hears the beep, is
/// recorded for `max_seconds`, the hub hangs up and core gets the mono recording.
#[tokio::test]
async fn voicemail_is_recorded_and_reported() {
    let mut hub = start_hub(20).await;
    let caller = Phone::new(hub.sip).await;
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let invite = invite_text(&caller, rtp.local_addr().unwrap(), "call-vm", "").replace("sip:100@", "sip:200@");
    caller.send(&invite).await;
    let (ok, _) = caller.expect("200 OK", |m| status(m) == Some(200)).await;
    let tag = to_tag(&ok);
    caller.send(&in_dialog("ACK", &caller, "call-vm", &tag, 1, "")).await;
    let hub_rtp = media_addr(&ok);
    let mut sender = RtpSender::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let speech: Vec<i16> = (0..160).map(|i| ((i as f32 / 3.0).sin() * 6000.0) as i16).collect();
    for _ in 0..90 {
        tick.tick().await;
        let pkt = sender.next(0, false, &g711::encode(Codec::Pcmu, &speech), 160);
        rtp.send_to(&pkt, hub_rtp).await.unwrap();
    }
    let (bye, _) = caller.expect("BYE from hub", |m| method(m).as_deref() == Some("BYE")).await;
    caller.send(&reply_to(&bye, 200, "caller", caller.addr(), "")).await;
    let Seen::Voicemail(call_id, path) = next_seen(&mut hub.routing).await else { panic!("voicemail expected") };
    assert_eq!(call_id, "call-vm");
    let samples = wav::read_wav(&path).expect("mono 8 kHz WAV");
    assert!(samples.iter().any(|s| *s != 0), "caller audio recorded");
    hub.handle.shutdown();
}

/// Point 1 of the hardening issue: the caller hangs up a few milliseconds after the agent
/// answered while core is still applying the answer. Core must get the answer first and
/// the end second (run side by side, the end overtook the answer and the interaction
/// stayed `active` with the agent's voice slot used).
#[tokio::test]
async fn hang_up_right_after_the_answer_reaches_core_after_the_answer() {
    let mut hub = start_hub_with(20, Duration::from_millis(300)).await;
    let agent = Phone::new(hub.sip).await;
    register_agent(&agent).await;
    let caller = Phone::new(hub.sip).await;
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    caller.send(&invite_text(&caller, rtp.local_addr().unwrap(), "call-race", "")).await;
    let (ok, _) = caller.expect("200 OK", |m| status(m) == Some(200)).await;
    let tag = to_tag(&ok);
    caller.send(&in_dialog("ACK", &caller, "call-race", &tag, 1, "")).await;
    send_dtmf(&rtp, media_addr(&ok), '1').await;
    let Seen::Enqueued(info) = next_seen(&mut hub.routing).await else { panic!("enqueue expected") };
    hub.handle.ring_agent(&info.call_id, "alice", "offer-race").unwrap();
    let (invite, _) = agent.expect("INVITE", |m| method(m).as_deref() == Some("INVITE")).await;
    let agent_rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let agent_sdp = sdp::render(agent_rtp.local_addr().unwrap(), 2, 1, &[Codec::Pcmu], Some(101), sdp::Direction::SendRecv);
    agent.send(&reply_to(&invite, 200, "agent", agent.addr(), &agent_sdp)).await;
    agent.expect("ACK from hub", |m| method(m).as_deref() == Some("ACK")).await;
    // The caller hangs up at once.
    caller.send(&in_dialog("BYE", &caller, "call-race", &tag, 2, "")).await;
    caller.expect("200 to BYE", |m| status(m) == Some(200) && header(m, "CSeq") == "2 BYE").await;
    let (bye, _) = agent.expect("BYE to agent", |m| method(m).as_deref() == Some("BYE")).await;
    agent.send(&reply_to(&bye, 200, "agent", agent.addr(), "")).await;
    let first = next_seen(&mut hub.routing).await;
    let second = next_seen(&mut hub.routing).await;
    assert_eq!(first, Seen::Event("call-race".into(), CallOutcome::Answered { offer_id: "offer-race".into(), agent: "alice".into() }));
    let Seen::Event(_, CallOutcome::Ended { by: Side::Caller, recording: Some(_) }) = second else {
        panic!("the end must follow the answer: {second:?}")
    };
    hub.handle.shutdown();
}

/// Point 2 of the hardening issue: RTP from a finished call still arriving at the port a
/// new call now uses (here it even carries a digit, and comes first) must not take the
/// new call over: the stale digit is not the caller's choice, and the caller's music on
/// hold goes to the caller's SDP address, none of it to the stale source.
#[tokio::test]
async fn stale_rtp_on_a_reused_port_does_not_take_the_call_over() {
    let mut hub = start_hub(20).await;
    let caller = Phone::new(hub.sip).await;
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stale = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    caller.send(&invite_text(&caller, rtp.local_addr().unwrap(), "call-stale", "")).await;
    let (ok, _) = caller.expect("200 OK", |m| status(m) == Some(200)).await;
    let tag = to_tag(&ok);
    let hub_rtp = media_addr(&ok);
    // The old call's phone is still sending: audio, then its '1'.
    let mut old = RtpSender::new();
    for _ in 0..5 {
        stale.send_to(&old.next(0, false, &[0xff; 160], 160), hub_rtp).await.unwrap();
    }
    send_dtmf(&stale, hub_rtp, '1').await;
    caller.send(&in_dialog("ACK", &caller, "call-stale", &tag, 1, "")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The caller presses 2 (Spanish): that, not the stale 1, is the choice.
    send_dtmf(&rtp, hub_rtp, '2').await;
    let Seen::Enqueued(info) = next_seen(&mut hub.routing).await else { panic!("enqueue expected") };
    assert_eq!(info.requirements, vec!["language:es >= 1".parse().unwrap()], "the stale digit was taken as the caller's");
    // Queued: music on hold flows to the caller, and none of it to the stale source.
    recv_rtp(&rtp).await;
    let mut buf = [0u8; 2048];
    let mut stray = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), stale.recv_from(&mut buf)).await {
        stray += 1;
        if stray > 100 {
            break;
        }
    }
    assert_eq!(stray, 0, "the caller's media went to the stale source");
    hub.handle.shutdown();
}

/// Point 3 of the hardening issue: a digit pressed while the welcome prompt plays barges
/// in: the prompt stops and the digit is the menu's choice (it used to be dropped, and
/// the caller ended in the menu's failure branch).
#[tokio::test]
async fn a_digit_during_the_welcome_prompt_is_the_menu_choice() {
    let mut hub = start_hub(20).await;
    let caller = Phone::new(hub.sip).await;
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let invite = invite_text(&caller, rtp.local_addr().unwrap(), "call-welcome", "").replace("sip:100@", "sip:300@");
    caller.send(&invite).await;
    let (ok, _) = caller.expect("200 OK", |m| status(m) == Some(200)).await;
    let tag = to_tag(&ok);
    caller.send(&in_dialog("ACK", &caller, "call-welcome", &tag, 1, "")).await;
    recv_rtp(&rtp).await; // the 3 s welcome is playing
    let pressed = std::time::Instant::now();
    send_dtmf(&rtp, media_addr(&ok), '2').await;
    let Seen::Enqueued(info) = next_seen(&mut hub.routing).await else { panic!("enqueue expected") };
    assert_eq!(info.requirements, vec!["language:es >= 1".parse().unwrap()], "the digit was lost");
    assert!(pressed.elapsed() < Duration::from_secs(2), "the welcome was not interrupted");
    hub.handle.shutdown();
}

/// Point 3 of the hardening issue (a digit taken, no interaction, nothing logged): a key
/// that goes down before the menu's digit timeout and comes up after it is the choice;
/// the timeout used to win and the caller took the failure branch.
#[tokio::test]
async fn a_key_held_across_the_digit_timeout_is_the_choice() {
    let mut hub = start_hub(20).await;
    let caller = Phone::new(hub.sip).await;
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    caller.send(&invite_text(&caller, rtp.local_addr().unwrap(), "call-held", "")).await;
    let (ok, _) = caller.expect("200 OK", |m| status(m) == Some(200)).await;
    let answered = tokio::time::Instant::now();
    let tag = to_tag(&ok);
    let hub_rtp = media_addr(&ok);
    caller.send(&in_dialog("ACK", &caller, "call-held", &tag, 1, "")).await;
    // The 60 ms menu prompt, then a 3 s digit timeout: press 2 at 2.5 s for one second
    // (RFC 4733 updates every 50 ms, then the end packets).
    tokio::time::sleep_until(answered + Duration::from_millis(2500)).await;
    let mut sender = RtpSender::new();
    let packets = event_packets('2', 20);
    for (i, ev) in packets.iter().enumerate() {
        let pkt = sender.next(101, i == 0, &ev.build(), 0);
        rtp.send_to(&pkt, hub_rtp).await.unwrap();
        if !ev.end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let Seen::Enqueued(info) = next_seen(&mut hub.routing).await else { panic!("enqueue expected") };
    assert_eq!(info.requirements, vec!["language:es >= 1".parse().unwrap()], "the timeout beat the key press");
    hub.handle.shutdown();
}

/// Dialogs through record-routing proxies (RFC 3261 §12.1, loose routing): the trunk's
/// INVITE came through proxy C and the agent's 200 through proxy A. The hub's 200 to the
/// caller copies the INVITE's Record-Route; its ACK to the agent and, at the hub's
/// hang-up, both BYEs go to the proxy with a Route header and the peer's contact as
/// Request-URI, not straight to the peers.
#[tokio::test]
async fn in_dialog_requests_follow_the_route_set_through_proxies() {
    let mut hub = start_hub(20).await;
    let agent = Phone::new(hub.sip).await;
    let (proxy_c, proxy_a) = (Phone::new(hub.sip).await, Phone::new(hub.sip).await);
    register_agent(&agent).await;

    let caller = Phone::new(hub.sip).await;
    let caller_rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rr_c = format!("Record-Route: <sip:{};lr>\r\n", proxy_c.addr());
    caller.send(&invite_text(&caller, caller_rtp.local_addr().unwrap(), "call-rr", &rr_c)).await;
    let (ok, text) = caller.expect("200 OK", |m| status(m) == Some(200)).await;
    assert_eq!(header(&ok, "Record-Route"), format!("<sip:{};lr>", proxy_c.addr()), "{text}");
    let tag = to_tag(&ok);
    caller.send(&in_dialog("ACK", &caller, "call-rr", &tag, 1, "")).await;
    let hub_rtp = media_addr(&ok);
    recv_rtp(&caller_rtp).await;
    send_dtmf(&caller_rtp, hub_rtp, '1').await;
    let Seen::Enqueued(info) = next_seen(&mut hub.routing).await else { panic!("enqueue expected") };

    hub.handle.ring_agent(&info.call_id, "alice", "offer-rr").unwrap();
    let (invite, _) = agent.expect("INVITE to agent", |m| method(m).as_deref() == Some("INVITE")).await;
    let agent_rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let agent_sdp = sdp::render(agent_rtp.local_addr().unwrap(), 2, 1, &[Codec::Pcmu], Some(101), sdp::Direction::SendRecv);
    let answer = reply_to(&invite, 200, "agent", agent.addr(), &agent_sdp).replacen(
        "\r\n",
        &format!("\r\nRecord-Route: <sip:{};lr>\r\n", proxy_a.addr()),
        1,
    );
    agent.send(&answer).await;
    let (ack, text) = proxy_a.expect("ACK through proxy A", |m| method(m).as_deref() == Some("ACK")).await;
    assert_eq!(header(&ack, "Route"), format!("<sip:{};lr>", proxy_a.addr()), "{text}");
    assert!(text.starts_with(&format!("ACK sip:alice@{} SIP/2.0", agent.addr())), "{text}");

    hub.handle.hangup(&info.call_id).unwrap();
    let (bye, text) = proxy_c.expect("BYE to the caller through proxy C", |m| method(m).as_deref() == Some("BYE")).await;
    assert_eq!(header(&bye, "Route"), format!("<sip:{};lr>", proxy_c.addr()), "{text}");
    assert!(text.starts_with(&format!("BYE sip:customer@{} SIP/2.0", caller.addr())), "{text}");
    let (bye, text) = proxy_a.expect("BYE to the agent through proxy A", |m| method(m).as_deref() == Some("BYE")).await;
    assert_eq!(header(&bye, "Route"), format!("<sip:{};lr>", proxy_a.addr()), "{text}");
    hub.handle.shutdown();
}
