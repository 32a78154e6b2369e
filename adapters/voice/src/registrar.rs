//! Registrar for agents' phones (RFC 3261 §10.3) with digest authentication; pure:
//! the engine feeds REGISTER requests and looks bindings up by AOR when ringing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rsip::{Request, Response};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{CredentialSource, RegistrarConfig};
use crate::sip::digest::{ha1, DigestAuthority, DigestCredentials, DigestOutcome};
use crate::sip::message::{make_header, response_to, split_list, HeaderLookup, NameAddr, SipUri};
use crate::sip::transaction::Peer;
use crate::sip::validate::Essentials;

/// Looks up agents' SIP credentials; core implements this over its agent table when
/// `credentials.type = "external"`.
pub trait CredentialStore: Send + Sync {
    /// HA1 = MD5(user:realm:password) for `user`, or `None` if unknown.
    fn ha1(&self, user: &str, realm: &str) -> Option<String>;

    /// Told after every accepted REGISTER of `user`: how long its latest live binding
    /// lasts, or `None` when it has none left. Core publishes this so the router offers
    /// calls only to agents whose phone can ring. The default ignores it.
    fn registration_changed(&self, _user: &str, _expires_in: Option<Duration>) {}

    /// Told after every accepted REGISTER of `user` with its latest live binding (or
    /// `None`), so the other nodes of a cluster can ring the phone. The default ignores it.
    fn binding_changed(&self, _user: &str, _binding: Option<&Binding>) {}

    /// A live binding of `user` that another node of the cluster holds (published through
    /// the database), used when this node's registrar has none. The default: none.
    fn remote_binding(&self, _user: &str) -> Option<RemoteBinding> {
        None
    }
}

/// A phone binding held by another hub node: enough to send it an INVITE directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBinding {
    /// Contact URI (Request-URI of INVITEs to the phone).
    pub contact: String,
    /// Where its REGISTER came from (the next hop).
    pub peer: Peer,
}

/// Credentials from the config file.
#[derive(Debug, Clone, Default)]
pub struct InlineCredentials {
    passwords: HashMap<String, SecretString>,
}

impl InlineCredentials {
    /// Builds the store from config (empty for `external`).
    pub fn from_config(source: &CredentialSource) -> Self {
        let mut passwords = HashMap::new();
        if let CredentialSource::Inline { agents } = source {
            for a in agents {
                passwords.insert(a.user.clone(), a.password.clone());
            }
        }
        Self { passwords }
    }

    /// Adds a user (tests, demo).
    pub fn insert(&mut self, user: &str, password: &str) {
        self.passwords.insert(user.to_string(), SecretString::from(password.to_string()));
    }
}

impl CredentialStore for InlineCredentials {
    fn ha1(&self, user: &str, realm: &str) -> Option<String> {
        self.passwords.get(user).map(|p| ha1(user, realm, p.expose_secret()))
    }
}

/// One registered contact of an agent's phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Contact URI (Request-URI of INVITEs to the phone).
    pub contact: String,
    /// Where the REGISTER really came from: INVITEs go here, so they traverse the
    /// phone's NAT binding (RFC 3581 symmetric response routing, RFC 5626 spirit).
    pub peer: Peer,
    /// Expiry instant.
    pub expires_at: Instant,
    /// Call-ID of the registering client.
    pub call_id: String,
    /// Last CSeq seen for that Call-ID.
    pub cseq: u32,
}

/// Bindings by AOR user part.
#[derive(Debug)]
pub struct Registrar {
    config: RegistrarConfig,
    auth: DigestAuthority,
    bindings: HashMap<String, Vec<Binding>>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Registrar {
    /// A registrar with a fresh nonce secret.
    pub fn new(config: RegistrarConfig) -> Self {
        let auth = DigestAuthority::new(config.realm.clone(), config.nonce_ttl_secs);
        Self { config, auth, bindings: HashMap::new() }
    }

    /// The digest authority (shared with trunk authentication).
    pub fn authority(&self) -> &DigestAuthority {
        &self.auth
    }

    /// Checks a request's digest credentials; `Err` is the 401 to send.
    pub fn authenticate(&self, req: &Request, to_tag: &str, creds: &dyn CredentialStore) -> Result<String, Box<Response>> {
        let now = unix_now();
        let challenge = |stale: bool| {
            Box::new(response_to(
                req,
                401,
                Some(to_tag),
                vec![make_header("WWW-Authenticate", self.auth.challenge(now, stale))],
                Vec::new(),
            ))
        };
        let Some(c) = req.value_of("Authorization").and_then(DigestCredentials::parse) else {
            return Err(challenge(false));
        };
        let Some(h) = creds.ha1(&c.username, self.auth.realm()) else {
            return Err(challenge(false));
        };
        match self.auth.verify(&c, &req.method.to_string(), &h, now) {
            DigestOutcome::Valid => Ok(c.username),
            DigestOutcome::Stale => Err(challenge(true)),
            DigestOutcome::Invalid => Err(challenge(false)),
        }
    }

    /// Handles a REGISTER (§10.3) and returns the response to send.
    pub fn handle_register(
        &mut self,
        req: &Request,
        info: &Essentials,
        source: Peer,
        now: Instant,
        creds: &dyn CredentialStore,
    ) -> Response {
        let tag = crate::sip::message::random_token();
        let user = match self.authenticate(req, &tag, creds) {
            Ok(u) => u,
            Err(challenge) => return *challenge,
        };
        // §10.3 step 3/4: the authenticated user may only register its own AOR.
        let aor = SipUri::parse(&info.to.uri).and_then(|u| u.user);
        if aor.as_deref() != Some(user.as_str()) {
            return response_to(req, 403, Some(&tag), Vec::new(), Vec::new());
        }
        let header_expires = req.value_of("Expires").and_then(|e| e.trim().parse::<u32>().ok());
        let contacts: Vec<&str> = req.values_of("Contact").into_iter().flat_map(split_list).collect();
        let list = self.bindings.entry(user.clone()).or_default();
        list.retain(|b| b.expires_at > now);
        if contacts.iter().any(|c| c.trim() == "*") {
            // §10.3 step 6: "*" only with Expires: 0 and alone.
            if header_expires != Some(0) || contacts.len() != 1 {
                return response_to(req, 400, Some(&tag), Vec::new(), Vec::new());
            }
            list.clear();
        }
        for c in contacts.iter().filter(|c| c.trim() != "*") {
            let Some(addr) = NameAddr::parse(c) else {
                return response_to(req, 400, Some(&tag), Vec::new(), Vec::new());
            };
            let expires =
                addr.param("expires").and_then(|e| e.parse::<u32>().ok()).or(header_expires).unwrap_or(self.config.default_expires);
            if expires != 0 && expires < self.config.min_expires {
                return response_to(
                    req,
                    423,
                    Some(&tag),
                    vec![make_header("Min-Expires", self.config.min_expires.to_string())],
                    Vec::new(),
                );
            }
            let existing = list.iter().position(|b| b.contact == addr.uri);
            if let Some(i) = existing {
                // §10.3 step 7: an older CSeq from the same Call-ID is out of order.
                if list[i].call_id == info.call_id && info.cseq <= list[i].cseq {
                    continue;
                }
                list.remove(i);
            }
            if expires == 0 {
                continue;
            }
            let expires = expires.min(self.config.max_expires);
            list.push(Binding {
                contact: addr.uri.clone(),
                peer: binding_peer(&addr.uri, info, source),
                expires_at: now + Duration::from_secs(u64::from(expires)),
                call_id: info.call_id.clone(),
                cseq: info.cseq,
            });
        }
        let extra: Vec<_> = list
            .iter()
            .map(|b| {
                let left = b.expires_at.saturating_duration_since(now).as_secs();
                make_header("Contact", format!("<{}>;expires={left}", b.contact))
            })
            .collect();
        let latest = list.iter().map(|b| b.expires_at.saturating_duration_since(now)).max();
        if list.is_empty() {
            self.bindings.remove(&user);
        }
        creds.registration_changed(&user, latest);
        creds.binding_changed(&user, self.lookup(&user, now));
        response_to(req, 200, Some(&tag), extra, Vec::new())
    }

    /// The most recently registered live binding of `user`.
    pub fn lookup(&self, user: &str, now: Instant) -> Option<&Binding> {
        self.bindings.get(user)?.iter().filter(|b| b.expires_at > now).max_by_key(|b| b.expires_at)
    }

    /// Drops expired bindings.
    pub fn expire(&mut self, now: Instant) {
        self.bindings.retain(|_, list| {
            list.retain(|b| b.expires_at > now);
            !list.is_empty()
        });
    }

    /// Number of users with a live binding.
    pub fn registered_users(&self) -> usize {
        self.bindings.len()
    }
}

/// Where requests to a registered contact go.
///
/// Behind NAT (the top Via's sent-by differs from the packet's source) the Contact
/// holds a private address, so we send to the source the REGISTER came from, which
/// reuses the phone's NAT binding (the RFC 3581 idea applied to requests). Without
/// NAT we honour the Contact, which may name another port than the REGISTER used.
pub fn binding_peer(contact: &str, info: &Essentials, source: Peer) -> Peer {
    let natted = info.via.host != source.addr.ip().to_string() || info.via.port.unwrap_or(5060) != source.addr.port();
    if natted {
        return source;
    }
    SipUri::parse(contact).and_then(|uri| uri.peer(source.transport)).unwrap_or(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::expected_response;
    use crate::sip::validate::{inspect, Inspected};
    use crate::sip::Transport;

    fn register(extra: &str, cseq: u32) -> (Request, Essentials) {
        let text = format!(
            "REGISTER sip:switchboard SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5062;branch=z9hG4bK{cseq};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@switchboard>;tag=a1\r\nTo: <sip:alice@switchboard>\r\n\
Call-ID: reg-1\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:alice@10.0.0.9:5062>\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match inspect(text.as_bytes(), 65_535) {
            Inspected::Request(r, e) => (r, e),
            other => panic!("{other:?}"),
        }
    }

    fn authorize(challenge: &Response, user: &str, password: &str) -> String {
        let www = challenge.value_of("WWW-Authenticate").unwrap();
        let nonce = www.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap();
        let mut c = DigestCredentials {
            username: user.into(),
            realm: "switchboard".into(),
            nonce: nonce.into(),
            uri: "sip:switchboard".into(),
            qop: Some("auth".into()),
            nc: Some("00000001".into()),
            cnonce: Some("c0ffee".into()),
            ..Default::default()
        };
        c.response = expected_response(&ha1(user, "switchboard", password), "REGISTER", &c);
        format!(
            "Authorization: Digest username=\"{user}\", realm=\"switchboard\", nonce=\"{nonce}\", uri=\"sip:switchboard\", response=\"{}\", qop=auth, nc=00000001, cnonce=\"c0ffee\", algorithm=MD5\r\n",
            c.response
        )
    }

    fn setup() -> (Registrar, InlineCredentials, Peer) {
        let mut creds = InlineCredentials::default();
        creds.insert("alice", "wonder");
        let peer = Peer { addr: "198.51.100.20:61000".parse().unwrap(), transport: Transport::Udp };
        (Registrar::new(RegistrarConfig::default()), creds, peer)
    }

    #[test]
    fn challenge_then_register_then_lookup_uses_nat_source() {
        let (mut reg, creds, peer) = setup();
        let now = Instant::now();
        let (req, info) = register("", 1);
        let challenge = reg.handle_register(&req, &info, peer, now, &creds);
        assert_eq!(challenge.status_code.code(), 401);
        let (req, info) = register(&authorize(&challenge, "alice", "wonder"), 2);
        let ok = reg.handle_register(&req, &info, peer, now, &creds);
        assert_eq!(ok.status_code.code(), 200);
        assert!(ok.value_of("Contact").unwrap().contains("expires=3600"));
        let b = reg.lookup("alice", now).unwrap();
        assert_eq!(b.contact, "sip:alice@10.0.0.9:5062");
        assert_eq!(b.peer, peer, "behind NAT the source address is used");
        assert!(reg.lookup("alice", now + Duration::from_secs(3601)).is_none());
    }

    #[test]
    fn wrong_password_other_user_and_short_expiry_are_refused() {
        let (mut reg, mut creds, peer) = setup();
        creds.insert("bob", "builder");
        let now = Instant::now();
        let (req, info) = register("", 1);
        let challenge = reg.handle_register(&req, &info, peer, now, &creds);
        let (req, info) = register(&authorize(&challenge, "alice", "nope"), 2);
        assert_eq!(reg.handle_register(&req, &info, peer, now, &creds).status_code.code(), 401);
        let (req, info) = register(&authorize(&challenge, "bob", "builder"), 3);
        assert_eq!(reg.handle_register(&req, &info, peer, now, &creds).status_code.code(), 403);
        let extra = format!("{}Expires: 10\r\n", authorize(&challenge, "alice", "wonder"));
        let (req, info) = register(&extra, 4);
        let r = reg.handle_register(&req, &info, peer, now, &creds);
        assert_eq!(r.status_code.code(), 423);
        assert_eq!(r.value_of("Min-Expires"), Some("60"));
    }

    #[test]
    fn contact_is_used_without_nat_and_source_with_nat() {
        let (_, info) = register("", 1);
        let direct = Peer { addr: "10.0.0.9:5062".parse().unwrap(), transport: Transport::Udp };
        let other_port = binding_peer("sip:alice@10.0.0.9:7000", &info, direct);
        assert_eq!(other_port.addr, "10.0.0.9:7000".parse().unwrap());
        let natted = Peer { addr: "198.51.100.20:61000".parse().unwrap(), transport: Transport::Udp };
        assert_eq!(binding_peer("sip:alice@10.0.0.9:5062", &info, natted), natted);
    }

    #[test]
    fn unregister_with_expires_zero() {
        let (mut reg, creds, peer) = setup();
        let now = Instant::now();
        let (req, info) = register("", 1);
        let challenge = reg.handle_register(&req, &info, peer, now, &creds);
        let auth = authorize(&challenge, "alice", "wonder");
        let (req, info) = register(&auth, 2);
        reg.handle_register(&req, &info, peer, now, &creds);
        assert_eq!(reg.registered_users(), 1);
        let (req, info) = register(&format!("{auth}Expires: 0\r\n"), 3);
        assert_eq!(reg.handle_register(&req, &info, peer, now, &creds).status_code.code(), 200);
        assert!(reg.lookup("alice", now).is_none());
    }

    /// Records what the registrar publishes (core's view of which phones can ring).
    struct Published(InlineCredentials, std::sync::Mutex<Vec<(String, Option<Duration>)>>);

    impl CredentialStore for Published {
        fn ha1(&self, user: &str, realm: &str) -> Option<String> {
            self.0.ha1(user, realm)
        }
        fn registration_changed(&self, user: &str, expires_in: Option<Duration>) {
            self.1.lock().unwrap().push((user.to_string(), expires_in));
        }
    }

    #[test]
    fn registrations_and_unregistrations_are_published() {
        let (mut reg, inline, peer) = setup();
        let creds = Published(inline, Default::default());
        let now = Instant::now();
        let (req, info) = register("", 1);
        let challenge = reg.handle_register(&req, &info, peer, now, &creds);
        assert!(creds.1.lock().unwrap().is_empty(), "a challenged REGISTER publishes nothing");
        let auth = authorize(&challenge, "alice", "wonder");
        let (req, info) = register(&auth, 2);
        reg.handle_register(&req, &info, peer, now, &creds);
        let (req, info) = register(&format!("{auth}Expires: 0\r\n"), 3);
        reg.handle_register(&req, &info, peer, now, &creds);
        let published = creds.1.lock().unwrap().clone();
        assert_eq!(published, vec![("alice".to_string(), Some(Duration::from_secs(3600))), ("alice".to_string(), None)]);
    }
}
