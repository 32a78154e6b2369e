//! SIP dialog state (RFC 3261 §12): identifiers, sequence numbers, route set and
//! remote target, and building requests within the dialog.

use rsip::{Method, Request};

use super::message::{make_header, new_branch, HeaderLookup, NameAddr, SipUri};
use super::transaction::Peer;
use super::validate::Essentials;

/// Dialog identifier: Call-ID plus local and remote tags (§12).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
}

/// One side's view of a confirmed or early dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// Identifier.
    pub id: DialogId,
    /// Our next CSeq number minus one.
    pub local_seq: u32,
    /// Highest CSeq number seen from the peer (None until the first request).
    pub remote_seq: Option<u32>,
    /// Our URI (From of our requests).
    pub local_uri: String,
    /// Peer URI (To of our requests).
    pub remote_uri: String,
    /// Where requests go: the peer's Contact URI.
    pub remote_target: String,
    /// Route set, in the order our requests must carry it.
    pub route_set: Vec<String>,
}

/// Why a request inside a dialog is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogRefusal {
    /// CSeq lower than one already seen (§12.2.2: answer 500).
    OutOfOrder,
}

fn contact_uri(msg: &impl HeaderLookup) -> Option<String> {
    msg.value_of("Contact").and_then(|c| super::message::split_list(c).first().and_then(|c| NameAddr::parse(c))).map(|c| c.uri)
}

fn route_uris(values: Vec<&str>) -> Vec<String> {
    values.iter().flat_map(|v| super::message::split_list(v)).map(str::to_string).collect()
}

impl Dialog {
    /// UAS side, created when we answer `invite` with a tag (§12.1.1).
    pub fn as_uas(invite: &Request, info: &Essentials, local_tag: &str) -> Option<Self> {
        Some(Self {
            id: DialogId {
                call_id: info.call_id.clone(),
                local_tag: local_tag.to_string(),
                remote_tag: info.from.tag().unwrap_or_default().to_string(),
            },
            local_seq: 0,
            remote_seq: Some(info.cseq),
            local_uri: info.to.uri.clone(),
            remote_uri: info.from.uri.clone(),
            remote_target: contact_uri(invite)?,
            // §12.1.1: the UAS route set is the Record-Route list in order.
            route_set: route_uris(invite.values_of("Record-Route")),
        })
    }

    /// UAC side, created from our INVITE and a 1xx/2xx with a To tag (§12.1.2).
    pub fn as_uac(invite: &Request, response: &rsip::Response, info: &Essentials) -> Option<Self> {
        let mut route_set = route_uris(response.values_of("Record-Route"));
        // §12.1.2: the UAC route set is the Record-Route list in reverse.
        route_set.reverse();
        let cseq = invite.value_of("CSeq").and_then(|c| c.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(1);
        Some(Self {
            id: DialogId { call_id: info.call_id.clone(), local_tag: info.from.tag()?.to_string(), remote_tag: info.to.tag()?.to_string() },
            local_seq: cseq,
            remote_seq: None,
            local_uri: info.from.uri.clone(),
            remote_uri: info.to.uri.clone(),
            remote_target: contact_uri(response)?,
            route_set,
        })
    }

    /// Where our requests inside the dialog are sent (§12.2.1.1 with §8.1.2): with a route
    /// set, to the first Route (a loose router, `;lr`: the Request-URI stays the remote
    /// target); without one, to `direct` (where the dialog's peer really is: the source of
    /// its INVITE or the next hop of ours, which keeps NAT bindings working). A first
    /// Route that names a host instead of an IP address is not resolved: `direct` is used.
    pub fn next_hop(&self, direct: Peer) -> Peer {
        self.route_set
            .first()
            .and_then(|first| NameAddr::parse(first))
            .and_then(|a| SipUri::parse(&a.uri))
            .and_then(|uri| uri.peer(direct.transport))
            .unwrap_or(direct)
    }

    /// Whether an incoming request belongs to this dialog.
    pub fn matches(&self, info: &Essentials) -> bool {
        info.call_id == self.id.call_id
            && info.to.tag() == Some(self.id.local_tag.as_str())
            && info.from.tag().unwrap_or_default() == self.id.remote_tag
    }

    /// Checks and records the CSeq of an in-dialog request (§12.2.2). ACK and CANCEL
    /// reuse the INVITE's number and are not checked.
    pub fn on_remote_request(&mut self, request: &Request, info: &Essentials) -> Result<(), DialogRefusal> {
        if matches!(request.method, Method::Ack | Method::Cancel) {
            return Ok(());
        }
        if let Some(seen) = self.remote_seq {
            if info.cseq <= seen {
                return Err(DialogRefusal::OutOfOrder);
            }
        }
        self.remote_seq = Some(info.cseq);
        // §12.2.2: a target refresh (re-INVITE, UPDATE) may change the remote target.
        if matches!(request.method, Method::Invite | Method::Update) {
            if let Some(uri) = contact_uri(request) {
                self.remote_target = uri;
            }
        }
        Ok(())
    }

    /// Builds a request inside the dialog (§12.2.1.1). `via` is our sent-by with
    /// transport, e.g. `SIP/2.0/UDP 192.0.2.1:5060`; a fresh branch and `rport` are added.
    /// ACK for a 2xx reuses the INVITE's CSeq number (`ack_cseq`).
    pub fn request(&mut self, method: Method, via: &str, contact: &str, ack_cseq: Option<u32>) -> Option<Request> {
        let seq = match (method, ack_cseq) {
            (Method::Ack, Some(n)) => n,
            _ => {
                self.local_seq = self.local_seq.saturating_add(1);
                self.local_seq
            }
        };
        // Loose routing (§12.2.1.1 with `lr`): Request-URI = remote target, Route = route set.
        let uri = rsip::Uri::try_from(self.remote_target.as_str()).ok()?;
        let mut headers = rsip::Headers::default();
        headers.push(make_header("Via", format!("{via};branch={};rport", new_branch())));
        headers.push(make_header("Max-Forwards", "70"));
        headers.push(make_header("From", format!("<{}>;tag={}", self.local_uri, self.id.local_tag)));
        headers.push(make_header("To", format!("<{}>;tag={}", self.remote_uri, self.id.remote_tag)));
        headers.push(make_header("Call-ID", self.id.call_id.clone()));
        headers.push(make_header("CSeq", format!("{seq} {method}")));
        for route in &self.route_set {
            headers.push(make_header("Route", route.clone()));
        }
        if matches!(method, Method::Invite | Method::Update) {
            headers.push(make_header("Contact", format!("<{contact}>")));
        }
        Some(Request { method, uri, version: rsip::Version::V2, headers, body: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::tests_support::INVITE;
    use crate::sip::validate::{inspect, Inspected};
    use crate::sip::Transport;

    fn invite() -> (Request, Essentials) {
        let text = INVITE.replace("Contact:", "Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\nContact:");
        match inspect(text.as_bytes(), 65_535) {
            Inspected::Request(r, e) => (r, e),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn uas_dialog_builds_bye_with_route_set_and_increasing_cseq() {
        let (req, info) = invite();
        let mut d = Dialog::as_uas(&req, &info, "ours").unwrap();
        assert_eq!(d.id.remote_tag, "1928301774");
        assert_eq!(d.route_set.len(), 2);
        let bye = d.request(Method::Bye, "SIP/2.0/UDP 127.0.0.1:5060", "sip:hub@127.0.0.1", None).unwrap();
        let text = bye.to_string();
        assert!(text.starts_with("BYE sip:alice@10.0.0.1:5060 SIP/2.0"), "{text}");
        assert!(text.contains("From: <sip:+4930123@127.0.0.1>;tag=ours"));
        assert!(text.contains("To: <sip:alice@10.0.0.1>;tag=1928301774"));
        assert!(text.contains("CSeq: 1 BYE"));
        assert!(text.contains("Route: <sip:p1.example;lr>"));
        let again = d.request(Method::Bye, "SIP/2.0/UDP 127.0.0.1:5060", "sip:hub@127.0.0.1", None).unwrap();
        assert!(again.to_string().contains("CSeq: 2 BYE"));
    }

    #[test]
    fn out_of_order_cseq_is_refused() {
        let (req, info) = invite();
        let mut d = Dialog::as_uas(&req, &info, "ours").unwrap();
        let mut later = info.clone();
        later.cseq += 1;
        let mut bye = req.clone();
        bye.method = Method::Bye;
        assert!(d.on_remote_request(&bye, &later).is_ok());
        assert_eq!(d.on_remote_request(&bye, &later), Err(DialogRefusal::OutOfOrder));
    }

    fn parsed(text: &str) -> (Request, Essentials) {
        match inspect(text.as_bytes(), 65_535) {
            Inspected::Request(r, e) => (r, e),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn uac_route_set_is_the_record_route_reversed_and_acks_go_to_its_first_hop() {
        let (req, _) = parsed(INVITE);
        let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n\
Record-Route: <sip:10.0.0.8;lr>\r\nRecord-Route: <sip:127.0.0.1:15060;lr>\r\n\
To: <sip:+4930123@127.0.0.1>;tag=phone\r\nFrom: \"Alice\" <sip:alice@10.0.0.1>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@10.0.0.1\r\nCSeq: 314159 INVITE\r\nContact: <sip:alice@10.0.0.9:5062>\r\nContent-Length: 0\r\n\r\n";
        let (resp, info) = match inspect(resp.as_bytes(), 65_535) {
            Inspected::Response(r, e) => (r, e),
            other => panic!("{other:?}"),
        };
        let mut d = Dialog::as_uac(&req, &resp, &info).unwrap();
        assert_eq!(d.route_set, vec!["<sip:127.0.0.1:15060;lr>".to_string(), "<sip:10.0.0.8;lr>".to_string()]);
        let direct = Peer { addr: "10.0.0.9:5062".parse().unwrap(), transport: Transport::Udp };
        assert_eq!(d.next_hop(direct).addr, "127.0.0.1:15060".parse().unwrap());
        let ack = d.request(Method::Ack, "SIP/2.0/UDP 127.0.0.1:5061", "", Some(314159)).unwrap().to_string();
        assert!(ack.starts_with("ACK sip:alice@10.0.0.9:5062 SIP/2.0"), "{ack}");
        let first = ack.find("Route: <sip:127.0.0.1:15060;lr>").expect("first route");
        assert!(ack.find("Route: <sip:10.0.0.8;lr>").expect("second route") > first, "{ack}");
    }

    #[test]
    fn requests_go_to_the_first_route_or_straight_to_the_peer() {
        let direct = Peer { addr: "198.51.100.7:5062".parse().unwrap(), transport: Transport::Udp };
        let text = INVITE.replace("Contact:", "Record-Route: <sip:127.0.0.1:15060;lr>, <sip:10.0.0.2;transport=tcp;lr>\r\nContact:");
        let (req, info) = parsed(&text);
        let d = Dialog::as_uas(&req, &info, "ours").unwrap();
        assert_eq!(d.next_hop(direct), Peer { addr: "127.0.0.1:15060".parse().unwrap(), transport: Transport::Udp });
        let text = INVITE.replace("Contact:", "Record-Route: <sip:10.0.0.2;transport=tcp;lr>\r\nContact:");
        let (req, info) = parsed(&text);
        let d = Dialog::as_uas(&req, &info, "ours").unwrap();
        assert_eq!(d.next_hop(direct), Peer { addr: "10.0.0.2:5060".parse().unwrap(), transport: Transport::Tcp });
        let text = INVITE.replace("Contact:", "Record-Route: <sip:edge.example.org;lr>\r\nContact:");
        let (req, info) = parsed(&text);
        assert_eq!(Dialog::as_uas(&req, &info, "ours").unwrap().next_hop(direct), direct, "host names are not resolved");
        let (req, info) = parsed(INVITE);
        assert_eq!(Dialog::as_uas(&req, &info, "ours").unwrap().next_hop(direct), direct, "no route set");
    }
}
