//! HTTP Digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 7616 with MD5):
//! stateless self-validating nonces with expiry, challenge rendering and verification.

use md5::{Digest as _, Md5};
use sha2::Sha256;

/// Parsed `Authorization: Digest …` parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestCredentials {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `uri` (digest-uri).
    pub uri: String,
    /// `response` (hex).
    pub response: String,
    /// `algorithm` (MD5 when absent).
    pub algorithm: Option<String>,
    /// `qop`.
    pub qop: Option<String>,
    /// `nc`.
    pub nc: Option<String>,
    /// `cnonce`.
    pub cnonce: Option<String>,
    /// `opaque`.
    pub opaque: Option<String>,
}

impl DigestCredentials {
    /// Parses an Authorization/Proxy-Authorization value.
    pub fn parse(value: &str) -> Option<Self> {
        let rest = value.trim();
        let (scheme, params) = rest.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let mut c = Self::default();
        for part in super::message::split_list(params) {
            let (k, v) = part.split_once('=')?;
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v).to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "username" => c.username = v,
                "realm" => c.realm = v,
                "nonce" => c.nonce = v,
                "uri" => c.uri = v,
                "response" => c.response = v.to_ascii_lowercase(),
                "algorithm" => c.algorithm = Some(v),
                "qop" => c.qop = Some(v),
                "nc" => c.nc = Some(v),
                "cnonce" => c.cnonce = Some(v),
                "opaque" => c.opaque = Some(v),
                _ => {}
            }
        }
        (!c.username.is_empty() && !c.nonce.is_empty() && !c.response.is_empty()).then_some(c)
    }
}

/// Outcome of checking credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestOutcome {
    /// The response matches.
    Valid,
    /// The response matches but the nonce expired: challenge again with `stale=true`.
    Stale,
    /// Wrong password, foreign nonce, wrong realm or unsupported algorithm.
    Invalid,
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// HA1 = MD5(username:realm:password) (RFC 2617 §3.2.2.2).
pub fn ha1(username: &str, realm: &str, password: &str) -> String {
    md5_hex(&format!("{username}:{realm}:{password}"))
}

/// The expected `response` value (RFC 2617 §3.2.2.1).
pub fn expected_response(ha1: &str, method: &str, c: &DigestCredentials) -> String {
    let ha2 = md5_hex(&format!("{method}:{}", c.uri));
    match (&c.qop, &c.nc, &c.cnonce) {
        (Some(qop), Some(nc), Some(cnonce)) if qop.eq_ignore_ascii_case("auth") => {
            md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:{qop}:{ha2}", c.nonce))
        }
        _ => md5_hex(&format!("{ha1}:{}:{ha2}", c.nonce)),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Issues and checks nonces: `<unix-seconds hex>.<HMAC-like tag>`, so no server state
/// is needed and nonces from another hub node sharing the secret also verify.
#[derive(Clone)]
pub struct DigestAuthority {
    realm: String,
    secret: [u8; 32],
    nonce_ttl_secs: u64,
}

impl std::fmt::Debug for DigestAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestAuthority").field("realm", &self.realm).field("nonce_ttl_secs", &self.nonce_ttl_secs).finish_non_exhaustive()
    }
}

impl DigestAuthority {
    /// A new authority with a random secret.
    pub fn new(realm: impl Into<String>, nonce_ttl_secs: u64) -> Self {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        Self { realm: realm.into(), secret, nonce_ttl_secs }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn tag(&self, stamp: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(stamp.as_bytes());
        h.update(self.realm.as_bytes());
        hex::encode(&h.finalize()[..16])
    }

    /// A fresh nonce for `now_secs` (Unix time).
    pub fn nonce(&self, now_secs: u64) -> String {
        let stamp = format!("{now_secs:x}");
        let tag = self.tag(&stamp);
        format!("{stamp}.{tag}")
    }

    /// `WWW-Authenticate` value (RFC 2617 §3.2.1).
    pub fn challenge(&self, now_secs: u64, stale: bool) -> String {
        let mut v = format!("Digest realm=\"{}\", nonce=\"{}\", algorithm=MD5, qop=\"auth\"", self.realm, self.nonce(now_secs));
        if stale {
            v.push_str(", stale=true");
        }
        v
    }

    /// Checks credentials against `ha1` for a request with `method`.
    pub fn verify(&self, c: &DigestCredentials, method: &str, ha1: &str, now_secs: u64) -> DigestOutcome {
        if c.realm != self.realm || c.algorithm.as_deref().is_some_and(|a| !a.eq_ignore_ascii_case("MD5")) {
            return DigestOutcome::Invalid;
        }
        let Some((stamp, tag)) = c.nonce.split_once('.') else {
            return DigestOutcome::Invalid;
        };
        if !constant_time_eq(self.tag(stamp).as_bytes(), tag.as_bytes()) {
            return DigestOutcome::Invalid;
        }
        let expected = expected_response(ha1, method, c);
        if !constant_time_eq(expected.as_bytes(), c.response.as_bytes()) {
            return DigestOutcome::Invalid;
        }
        let Ok(issued) = u64::from_str_radix(stamp, 16) else {
            return DigestOutcome::Invalid;
        };
        if now_secs.saturating_sub(issued) > self.nonce_ttl_secs || issued > now_secs + 60 {
            DigestOutcome::Stale
        } else {
            DigestOutcome::Valid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example_response() {
        // RFC 2617 §3.5 example (HTTP, but the computation is the same).
        let c = DigestCredentials {
            username: "Mufasa".into(),
            realm: "testrealm@host.com".into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            uri: "/dir/index.html".into(),
            qop: Some("auth".into()),
            nc: Some("00000001".into()),
            cnonce: Some("0a4f113b".into()),
            ..Default::default()
        };
        let ha1 = ha1("Mufasa", "testrealm@host.com", "Circle Of Life");
        assert_eq!(expected_response(&ha1, "GET", &c), "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn verify_valid_stale_and_invalid() {
        let auth = DigestAuthority::new("switchboard", 300);
        let nonce = auth.nonce(1_000);
        let mut c = DigestCredentials {
            username: "alice".into(),
            realm: "switchboard".into(),
            nonce,
            uri: "sip:switchboard".into(),
            qop: Some("auth".into()),
            nc: Some("00000001".into()),
            cnonce: Some("abc".into()),
            ..Default::default()
        };
        let h = ha1("alice", "switchboard", "pw");
        c.response = expected_response(&h, "REGISTER", &c);
        assert_eq!(auth.verify(&c, "REGISTER", &h, 1_100), DigestOutcome::Valid);
        assert_eq!(auth.verify(&c, "REGISTER", &h, 2_000), DigestOutcome::Stale);
        assert_eq!(auth.verify(&c, "REGISTER", &ha1("alice", "switchboard", "bad"), 1_100), DigestOutcome::Invalid);
        let other = DigestAuthority::new("switchboard", 300);
        assert_eq!(other.verify(&c, "REGISTER", &h, 1_100), DigestOutcome::Invalid);
    }

    #[test]
    fn parses_authorization_header() {
        let v = r#"Digest username="alice", realm="switchboard", nonce="1.ab", uri="sip:h", response="ABC", qop=auth, nc=00000001, cnonce="x,y""#;
        let c = DigestCredentials::parse(v).unwrap();
        assert_eq!(c.username, "alice");
        assert_eq!(c.response, "abc");
        assert_eq!(c.cnonce.as_deref(), Some("x,y"));
        assert!(DigestCredentials::parse("Basic abc").is_none());
        assert!(DigestCredentials::parse("Digest").is_none());
    }
}
