//! Validation of inbound SIP messages (RFC 3261 §8.2 and §18.3) and the 400-class
//! answers for requests that fail it. Responses that fail are silently dropped
//! (§18.1.2: a client discards a malformed response).

use rsip::{Method, Request, Response, SipMessage};

use super::message::{make_header, parse, response_from_raw, split_list, HeaderLookup, NameAddr, RawMessage, SipError};
use super::via::ViaHeader;

/// The fields every transaction and dialog needs, extracted once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Essentials {
    /// Call-ID.
    pub call_id: String,
    /// CSeq number.
    pub cseq: u32,
    /// CSeq method.
    pub cseq_method: Method,
    /// From header.
    pub from: NameAddr,
    /// To header.
    pub to: NameAddr,
    /// Top Via entry.
    pub via: ViaHeader,
}

/// What to do with a datagram or TCP frame.
#[derive(Debug)]
pub enum Inspected {
    /// A valid request.
    Request(Request, Essentials),
    /// A valid response.
    Response(Response, Essentials),
    /// An invalid request that can be answered (400, 501, 505); send `reply` to the
    /// address derived from `via`.
    Reject {
        /// The error response.
        reply: Response,
        /// Top Via of the rejected request, for routing the response.
        via: ViaHeader,
        /// What was wrong.
        error: SipError,
    },
    /// Dropped without an answer (no usable Via, malformed response, keep-alive, …).
    Drop(SipError),
}

const SINGLE: [&str; 5] = ["Call-ID", "CSeq", "From", "To", "Max-Forwards"];

fn essentials_from(values: &dyn Fn(&str) -> Vec<String>, request_method: Option<&str>) -> Result<Essentials, SipError> {
    for name in SINGLE {
        if values(name).len() > 1 {
            return Err(SipError::BadHeader(name));
        }
    }
    let via_value = values("Via").into_iter().next().ok_or(SipError::BadHeader("Via"))?;
    let via = split_list(&via_value).first().and_then(|v| ViaHeader::parse(v)).ok_or(SipError::BadHeader("Via"))?;
    let first = |name: &'static str| values(name).into_iter().next().ok_or(SipError::BadHeader(name));
    let from = NameAddr::parse(&first("From")?).ok_or(SipError::BadHeader("From"))?;
    let to = NameAddr::parse(&first("To")?).ok_or(SipError::BadHeader("To"))?;
    let call_id = first("Call-ID")?;
    if call_id.is_empty() || call_id.contains(char::is_whitespace) {
        return Err(SipError::BadHeader("Call-ID"));
    }
    let cseq = first("CSeq")?;
    let mut parts = cseq.split_whitespace();
    let number = parts
        .next()
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| *n < 1 << 31) // RFC 3261 §8.1.1.5: less than 2**31
        .ok_or(SipError::BadHeader("CSeq"))?;
    let method_token = parts.next().ok_or(SipError::BadHeader("CSeq"))?;
    if parts.next().is_some() {
        return Err(SipError::BadHeader("CSeq"));
    }
    let cseq_method: Method = method_token.parse().map_err(|_| SipError::BadHeader("CSeq"))?;
    if let Some(m) = request_method {
        if m != method_token {
            return Err(SipError::CSeqMismatch);
        }
        let mf = first("Max-Forwards")?;
        if mf.parse::<u8>().is_err() {
            return Err(SipError::BadHeader("Max-Forwards"));
        }
    }
    Ok(Essentials { call_id, cseq: number, cseq_method, from, to, via })
}

fn reject_raw(raw: &RawMessage, error: SipError) -> Inspected {
    let via = raw.value("Via").and_then(|v| split_list(v).first().and_then(|v| ViaHeader::parse(v)));
    // Without a usable Via there is nowhere to send a response, so the request is
    // dropped; an ACK is never answered (RFC 3261 §17.2.1).
    match via {
        Some(via) if raw.is_request() && raw.method() != Some("ACK") => {
            let cseq_method = raw.value("CSeq").and_then(|c| c.split_whitespace().nth(1));
            let code = match &error {
                // RFC 4475 §3.1.2.13: a CSeq mismatch is a 400 even for unknown methods.
                SipError::UnknownMethod(m) if cseq_method != Some(m.as_str()) => 400,
                SipError::UnknownMethod(_) => 501,
                SipError::BadVersion => 505,
                _ => 400,
            };
            let mut extra = Vec::new();
            if code == 400 {
                // RFC 3261 §21.4.1: the reason phrase or a Warning may explain; keep it generic.
                extra.push(make_header("Warning", format!("399 switchboard \"{}\"", error.to_string().replace('"', "'"))));
            }
            if code == 501 {
                extra.push(make_header("Allow", super::super::b2bua::ALLOW));
            }
            Inspected::Reject { reply: response_from_raw(raw, code, None, extra, Vec::new()), via, error }
        }
        _ => Inspected::Drop(error),
    }
}

/// Parses and validates one message. Never panics.
pub fn inspect(data: &[u8], max_size: usize) -> Inspected {
    let (msg, raw) = match parse(data, max_size) {
        Ok(ok) => ok,
        Err(failure) => {
            return match failure.raw {
                Some(raw) => reject_raw(&raw, failure.error),
                None => Inspected::Drop(failure.error),
            }
        }
    };
    let values = |name: &str| -> Vec<String> { raw.values(name).map(str::to_string).collect() };
    match msg {
        SipMessage::Request(req) => {
            let method = req.method.to_string();
            match essentials_from(&values, Some(&method)) {
                Ok(e) => Inspected::Request(req, e),
                Err(err) => reject_raw(&raw, err),
            }
        }
        SipMessage::Response(resp) => match essentials_from(&values, None) {
            Ok(e) => Inspected::Response(resp, e),
            Err(err) => Inspected::Drop(err),
        },
    }
}

/// Whether a request carries `Require` options we do not support; returns them.
/// RFC 3261 §8.2.2.3: answer 420 with `Unsupported` listing them. We support none
/// (in particular not `100rel`, RFC 3262), so every listed option is unsupported.
pub fn unsupported_requirements(req: &Request) -> Vec<String> {
    if req.method == Method::Ack || req.method == Method::Cancel {
        return Vec::new(); // §8.2.2.3: never rejected for Require.
    }
    req.tokens_of("Require")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::tests_support::INVITE;

    fn reject_code(text: &str) -> Option<u16> {
        match inspect(text.as_bytes(), 65_535) {
            Inspected::Reject { reply, .. } => Some(reply.status_code.code()),
            _ => None,
        }
    }

    #[test]
    fn valid_invite_passes() {
        match inspect(INVITE.as_bytes(), 65_535) {
            Inspected::Request(req, e) => {
                assert_eq!(req.method, Method::Invite);
                assert_eq!(e.cseq, 314159);
                assert_eq!(e.from.tag(), Some("1928301774"));
                assert_eq!(e.via.branch(), Some("z9hG4bK776asdhds"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_mandatory_headers_get_400() {
        for header in ["Max-Forwards: 70\r\n", "Call-ID: a84b4c76e66710@10.0.0.1\r\n"] {
            let text = INVITE.replace(header, "");
            assert_eq!(reject_code(&text), Some(400), "without {header}");
        }
        let no_via = INVITE.replace("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds;rport\r\n", "");
        assert!(matches!(inspect(no_via.as_bytes(), 65_535), Inspected::Drop(_)));
    }

    #[test]
    fn cseq_mismatch_and_bad_numbers_get_400() {
        assert_eq!(reject_code(&INVITE.replace("314159 INVITE", "314159 OPTIONS")), Some(400));
        assert_eq!(reject_code(&INVITE.replace("314159 INVITE", "4294967296 INVITE")), Some(400));
        assert_eq!(reject_code(&INVITE.replace("Max-Forwards: 70", "Max-Forwards: 300")), Some(400));
        let dup = INVITE.replace("CSeq: 314159 INVITE\r\n", "CSeq: 314159 INVITE\r\nCSeq: 1 INVITE\r\n");
        assert_eq!(reject_code(&dup), Some(400));
    }

    #[test]
    fn unknown_method_gets_501_and_bad_version_505() {
        let foo = INVITE.replacen("INVITE sip", "FOO sip", 1).replace("314159 INVITE", "314159 FOO");
        assert_eq!(reject_code(&foo), Some(501));
        assert_eq!(reject_code(&INVITE.replacen("SIP/2.0\r\n", "SIP/7.0\r\n", 1)), Some(505));
    }

    #[test]
    fn content_length_too_large_gets_400() {
        assert_eq!(reject_code(&INVITE.replace("Content-Length: 4", "Content-Length: 9999")), Some(400));
    }

    #[test]
    fn require_100rel_is_unsupported() {
        let text = INVITE.replace("Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nRequire: 100rel, timer\r\n");
        let Inspected::Request(req, _) = inspect(text.as_bytes(), 65_535) else { panic!("valid request expected") };
        assert_eq!(unsupported_requirements(&req), vec!["100rel", "timer"]);
    }
}
