//! Via header handling: sent-by, branch, and the RFC 3581 `rport`/`received` NAT rules.

use std::net::{IpAddr, SocketAddr};

use rsip::headers::{Header, UntypedHeader};
use rsip::message::HasHeaders;
use rsip::SipMessage;

use super::message::{parse_params, split_list, HeaderLookup};
use super::Transport;

/// The RFC 3261 magic cookie that marks a globally unique branch (§8.1.1.7).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// One Via entry (`SIP/2.0/UDP host:port;branch=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViaHeader {
    /// Transport token, upper-cased (`UDP`, `TCP`, …).
    pub transport: String,
    /// Sent-by host (IPv6 without brackets).
    pub host: String,
    /// Sent-by port, if given.
    pub port: Option<u16>,
    /// Parameters in order.
    pub params: Vec<(String, Option<String>)>,
}

impl ViaHeader {
    /// Parses one Via entry, tolerating LWS around the slashes (RFC 3261 §25.1).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.splitn(3, '/');
        let (proto, version, rest) = (parts.next()?, parts.next()?, parts.next()?);
        if !proto.trim().eq_ignore_ascii_case("SIP") || version.trim() != "2.0" {
            return None;
        }
        let rest = rest.trim_start();
        let split = rest.find(char::is_whitespace)?;
        let transport = rest[..split].to_ascii_uppercase();
        let rest = rest[split..].trim_start();
        let (sent_by, params) = match rest.find(';') {
            Some(i) => (rest[..i].trim(), parse_params(&rest[i..])),
            None => (rest.trim(), Vec::new()),
        };
        if transport.is_empty() || !transport.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let (host, port) = if let Some(v6) = sent_by.strip_prefix('[') {
            let end = v6.find(']')?;
            (v6[..end].to_string(), v6[end + 1..].strip_prefix(':'))
        } else {
            match sent_by.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (sent_by.to_string(), None),
            }
        };
        let valid_host = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b));
        if !valid_host {
            return None;
        }
        let port = match port {
            Some(p) => Some(p.trim().parse::<u16>().ok().filter(|p| *p != 0)?),
            None => None,
        };
        Some(Self { transport, host, port, params })
    }

    /// Parameter value (`""` for a flag parameter).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&str> {
        self.param("branch").filter(|b| !b.is_empty())
    }

    /// Whether the branch carries the RFC 3261 magic cookie.
    pub fn is_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with(MAGIC_COOKIE))
    }

    /// `sent-by` as written (`host:port`), used in transaction keys.
    pub fn sent_by(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match self.port {
            Some(p) => format!("{}:{p}", host.to_ascii_lowercase()),
            None => host.to_ascii_lowercase(),
        }
    }

    /// Sets or replaces a parameter.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        match self.params.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(p) => p.1 = value,
            None => self.params.push((name.to_string(), value)),
        }
    }

    /// Renders the entry.
    pub fn render(&self) -> String {
        let mut s = format!("SIP/2.0/{} {}", self.transport, self.sent_by());
        for (n, v) in &self.params {
            s.push(';');
            s.push_str(n);
            if let Some(v) = v {
                s.push('=');
                s.push_str(v);
            }
        }
        s
    }
}

/// The topmost Via entry of a message.
pub fn top_via(msg: &SipMessage) -> Option<ViaHeader> {
    let first = msg.value_of("Via")?;
    ViaHeader::parse(split_list(first).first()?)
}

/// RFC 3261 §18.2.1 and RFC 3581 §4: a server stamps the top Via with `received`
/// when the packet's source IP differs from sent-by, and fills in `rport` with the
/// source port when the client asked for it. Later responses then go back through
/// the NAT binding the request came through.
pub fn stamp_received(msg: &mut SipMessage, source: SocketAddr) {
    let Some(mut via) = top_via(msg) else { return };
    let ip = source.ip().to_string();
    let wants_rport = via.param("rport").is_some();
    if via.host != ip || wants_rport {
        via.set_param("received", Some(ip));
    }
    if wants_rport {
        via.set_param("rport", Some(source.port().to_string()));
    }
    let rendered = via.render();
    if let Some(Header::Via(h)) = msg.headers_mut().iter_mut().find(|h| matches!(h, Header::Via(_))) {
        let rest: Vec<String> = split_list(h.value()).into_iter().skip(1).map(str::to_string).collect();
        let mut value = rendered;
        for r in rest {
            value.push_str(", ");
            value.push_str(&r);
        }
        h.replace(value);
    }
}

/// Where a response to a request with this top Via goes (RFC 3261 §18.2.2, RFC 3581 §4).
///
/// Over TCP the response goes back over the connection the request came in on.
/// Over UDP: `received` + `rport` when present (symmetric response routing), else
/// `received` (or sent-by) with the sent-by port or 5060.
pub fn response_destination(via: &ViaHeader, source: SocketAddr, transport: Transport) -> SocketAddr {
    if transport.is_reliable() {
        return source;
    }
    if via.param("rport").is_some() {
        // RFC 3581 §4: with rport the response goes to the packet's source IP and port.
        let port = via.param("rport").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p != 0).unwrap_or(source.port());
        let ip = via.param("received").and_then(|r| r.parse().ok()).unwrap_or(source.ip());
        return SocketAddr::new(ip, port);
    }
    let ip: IpAddr = via.param("received").and_then(|r| r.parse().ok()).or_else(|| via.host.parse().ok()).unwrap_or(source.ip());
    SocketAddr::new(ip, via.port.unwrap_or(5060))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse;

    #[test]
    fn parses_lws_and_ipv6() {
        let v = ViaHeader::parse("SIP / 2.0 / udp [2001:db8::9]:5070 ; branch = z9hG4bKx ;rport").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "2001:db8::9");
        assert_eq!(v.port, Some(5070));
        assert_eq!(v.branch(), Some("z9hG4bKx"));
        assert!(v.is_rfc3261_branch());
        assert_eq!(v.sent_by(), "[2001:db8::9]:5070");
        assert!(ViaHeader::parse("SIP/2.0/UDP").is_none());
        assert!(ViaHeader::parse("SIP/2.0/UDP host:0").is_none());
        assert!(ViaHeader::parse("SIP/3.0/UDP host").is_none());
    }

    #[test]
    fn rport_is_filled_and_response_goes_to_source() {
        let text = crate::sip::message::tests_support::INVITE;
        let (mut msg, _) = parse(text.as_bytes(), 65_535).unwrap();
        let nat: SocketAddr = "198.51.100.7:40123".parse().unwrap();
        stamp_received(&mut msg, nat);
        let via = top_via(&msg).unwrap();
        assert_eq!(via.param("received"), Some("198.51.100.7"));
        assert_eq!(via.param("rport"), Some("40123"));
        assert_eq!(response_destination(&via, nat, Transport::Udp), nat);
    }

    #[test]
    fn without_rport_response_uses_sent_by_port() {
        let via = ViaHeader::parse("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1;received=198.51.100.7").unwrap();
        let src: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        assert_eq!(response_destination(&via, src, Transport::Udp), "198.51.100.7:5070".parse::<SocketAddr>().unwrap());
        assert_eq!(response_destination(&via, src, Transport::Tcp), src);
    }
}
