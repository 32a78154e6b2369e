//! Bounded fuzzing of the SIP receive path (parse → validate → transactions) and the
//! RFC 4475 malformed-message cases; run with the normal test suite.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::message::response_to;
use super::message::tests_support::INVITE;
use super::transaction::{LayerEvent, Peer, Timers, TransactionLayer};
use super::validate::{inspect, Inspected};
use super::Transport;

fn peer() -> Peer {
    Peer { addr: "192.0.2.10:5060".parse().expect("literal address"), transport: Transport::Udp }
}

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.gen_range(1..8) {
        if v.is_empty() {
            v.push(rng.gen());
            continue;
        }
        let i = rng.gen_range(0..v.len());
        match rng.gen_range(0..6) {
            0 => v[i] = rng.gen(),
            1 => v.insert(i, *b"\r\n:;,<>\" @=/\t\0\xff".get(rng.gen_range(0..16)).unwrap_or(&b' ')),
            2 => {
                v.remove(i);
            }
            3 => v.truncate(i),
            4 => {
                let j = rng.gen_range(0..v.len());
                let (a, b) = (i.min(j), i.max(j));
                let chunk = v[a..b].to_vec();
                v.splice(i..i, chunk);
            }
            _ => {
                let j = rng.gen_range(0..v.len());
                v.swap(i, j);
            }
        }
    }
    v
}

/// 20,000 inputs through the full receive path; any panic fails the test.
#[test]
fn fuzz_receive_path_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x005b_0a2d);
    let mut layer = TransactionLayer::new(Timers::default(), 65_535);
    let start = Instant::now();
    let seeds: Vec<Vec<u8>> = vec![
        INVITE.as_bytes().to_vec(),
        INVITE.replace("INVITE", "BYE").into_bytes(),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n".to_vec(),
    ];
    for i in 0..20_000u32 {
        let input = if i % 5 == 0 {
            let len = rng.gen_range(0..512);
            (0..len).map(|_| rng.gen()).collect()
        } else {
            let seed = &seeds[rng.gen_range(0..seeds.len())];
            mutate(&mut rng, seed)
        };
        let now = start + Duration::from_millis(u64::from(i) * 10);
        for event in layer.on_message(&input, peer(), now) {
            // Play the TU: answer every new request so its transaction can finish.
            if let LayerEvent::Request { key, request, .. } = event {
                let code = if i % 2 == 0 { 200 } else { 486 };
                let reply = response_to(&request, code, Some("fz"), Vec::new(), Vec::new());
                let _ = layer.respond(&key, reply, now);
            }
        }
        let _ = layer.on_timer(now);
    }
    // Everything eventually terminates.
    let _ = layer.on_timer(start + Duration::from_secs(3600));
    assert!(layer.is_empty(), "{} transactions left", layer.len());
}

/// `rsip` itself on raw junk: it must return errors, not panic (this is why the parse
/// path needs no `catch_unwind`).
#[test]
fn rsip_tokenizer_does_not_panic_on_junk() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..20_000 {
        let input = mutate(&mut rng, INVITE.as_bytes());
        let _ = rsip::SipMessage::try_from(input.as_slice());
    }
}

fn outcome(text: &str) -> String {
    match inspect(text.as_bytes(), 65_535) {
        Inspected::Request(..) => "request".into(),
        Inspected::Response(..) => "response".into(),
        Inspected::Reject { reply, .. } => reply.status_code.code().to_string(),
        Inspected::Drop(_) => "drop".into(),
    }
}

const HDRS: &str = "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK98sd\r\n\
To: <sip:user@example.com>\r\nFrom: <sip:caller@example.net>;tag=3\r\n\
Call-ID: t4475@host5.example.net\r\nMax-Forwards: 70\r\n";

/// RFC 4475 §3.1.2 invalid messages (adapted): each is answered 4xx/5xx or dropped.
#[test]
fn rfc4475_invalid_messages_are_rejected() {
    let cases: Vec<(&str, String)> = vec![
        (
            "clerr: Content-Length larger than body",
            format!("INVITE sip:user@example.com SIP/2.0\r\n{HDRS}CSeq: 1 INVITE\r\nContent-Length: 9999\r\n\r\nv=0\r\n"),
        ),
        (
            "ncl: negative Content-Length",
            format!("INVITE sip:user@example.com SIP/2.0\r\n{HDRS}CSeq: 1 INVITE\r\nContent-Length: -999\r\n\r\n"),
        ),
        (
            "scalar02: overlarge CSeq",
            format!("REGISTER sip:example.com SIP/2.0\r\n{HDRS}CSeq: 36893488147419103232 REGISTER\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "scalar02: overlarge Max-Forwards",
            format!(
                "OPTIONS sip:example.com SIP/2.0\r\n{}CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                HDRS.replace("Max-Forwards: 70", "Max-Forwards: 300")
            ),
        ),
        (
            "quotbal: unterminated quoted display name",
            format!(
                "INVITE sip:user@example.com SIP/2.0\r\n{}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
                HDRS.replace("To: <sip:user@example.com>", "To: \"Mr. J. User <sip:j.user@example.com>")
            ),
        ),
        (
            "ltgtruri: <> around Request-URI",
            format!("INVITE <sip:user@example.com> SIP/2.0\r\n{HDRS}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "lwsruri: LWS inside Request-URI",
            format!("INVITE sip:user@example.com; lr SIP/2.0\r\n{HDRS}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "lwsstart: multiple SP in request line",
            format!("INVITE  sip:user@example.com  SIP/2.0\r\n{HDRS}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "badvers: unknown protocol version",
            format!("OPTIONS sip:t.watson@example.org SIP/7.0\r\n{HDRS}CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "mismatch01: CSeq method mismatch",
            format!("OPTIONS sip:user@example.com SIP/2.0\r\n{HDRS}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "mismatch02: unknown method with CSeq mismatch",
            format!("NEWMETHOD sip:user@example.com SIP/2.0\r\n{HDRS}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "multi-cseq: two CSeq values",
            format!("INVITE sip:user@example.com SIP/2.0\r\n{HDRS}CSeq: 1 INVITE\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "novia: no Via (dropped)",
            format!(
                "INVITE sip:user@example.com SIP/2.0\r\n{}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
                HDRS.replace("Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK98sd\r\n", "")
            ),
        ),
        (
            "bigcode: overlarge response code (dropped)",
            format!("SIP/2.0 4294967301 better not break the receiver\r\n{HDRS}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"),
        ),
        (
            "badbranch: Via without a host",
            format!(
                "OPTIONS sip:user@example.com SIP/2.0\r\n{}CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                HDRS.replace("host5.example.net;", ";")
            ),
        ),
        (
            "binary junk header line",
            format!("OPTIONS sip:user@example.com SIP/2.0\r\n{HDRS}\u{1}\u{2}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"),
        ),
    ];
    for (name, text) in cases {
        let got = outcome(&text);
        assert!(got == "drop" || got.starts_with('4') || got.starts_with('5'), "{name}: got {got}");
    }
    // RFC 4475 §3.1.2.13 (mismatch02) wants 400 rather than 501.
    let mismatch = format!("NEWMETHOD sip:user@example.com SIP/2.0\r\n{HDRS}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(outcome(&mismatch), "400");
}

/// RFC 4475 §3.1.1 valid-but-unusual messages are accepted.
#[test]
fn rfc4475_valid_unusual_messages_are_accepted() {
    let wsinv = "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n\
TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n\
from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n\
MaX-fOrWaRdS: 0068\r\nCall-ID: wsinv.ndaksdj@192.0.2.1\r\nContent-Length   : 0\r\n\
cseq: 0009\r\n  INVITE\r\nVia  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n\
s :\r\nNewFangledHeader:   newfangled value\r\n continued newfangled value\r\n\
UnknownHeaderWithUnusualValue: ;;,,;;,;\r\nv:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n\
m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33\r\n\r\n";
    assert_eq!(outcome(wsinv), "request", "wsinv");
    let compact = "OPTIONS sip:user@example.com SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKq\r\nt: <sip:user@example.com>\r\nf: <sip:a@b>;tag=1\r\ni: c1\r\nMax-Forwards: 70\r\nCSeq: 2 OPTIONS\r\nl: 0\r\n\r\n".to_string();
    assert_eq!(outcome(&compact), "request", "compact forms");
}
