//! Session bookkeeping, free of I/O: visitor tokens (HMAC-SHA256), per-key rate limits,
//! the outbound resume cursor of one socket, and the queue wait estimate.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

const TOKEN_PREFIX: &str = "sbv1.";

/// What a visitor token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClaims {
    /// Visitor id (the customer address on the chat channel).
    pub visitor_id: Uuid,
    /// Conversation id (the interaction conversation key).
    pub conversation_id: Uuid,
    /// Issued at, Unix seconds.
    pub issued_at: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of ours.
    #[error("malformed visitor token")]
    Malformed,
    /// The signature does not match.
    #[error("visitor token signature is invalid")]
    BadSignature,
    /// Older than the configured lifetime (or from the future).
    #[error("visitor token expired")]
    Expired,
}

/// Signs claims: `sbv1.<base64url(visitor ‖ conversation ‖ issued_at)>.<base64url(hmac)>`.
pub fn sign_token(secret: &[u8], c: &TokenClaims) -> String {
    let mut payload = Vec::with_capacity(40);
    payload.extend_from_slice(c.visitor_id.as_bytes());
    payload.extend_from_slice(c.conversation_id.as_bytes());
    payload.extend_from_slice(&c.issued_at.to_be_bytes());
    let body = URL_SAFE_NO_PAD.encode(&payload);
    let mac = mac_of(secret, body.as_bytes()).finalize().into_bytes();
    format!("{TOKEN_PREFIX}{body}.{}", URL_SAFE_NO_PAD.encode(mac))
}

fn mac_of(secret: &[u8], data: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for HMAC.
    let mut m =
        <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| <HmacSha256 as Mac>::new_from_slice(&[0u8; 32]).expect("hmac"));
    m.update(data);
    m
}

/// Verifies a token (constant-time MAC comparison) and its age.
pub fn verify_token(secret: &[u8], token: &str, now_unix: i64, ttl_secs: i64) -> Result<TokenClaims, TokenError> {
    let rest = token.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Malformed)?;
    let (body, sig) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed)?;
    mac_of(secret, body.as_bytes()).verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let payload = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Malformed)?;
    if payload.len() != 40 {
        return Err(TokenError::Malformed);
    }
    let visitor_id = Uuid::from_slice(&payload[0..16]).map_err(|_| TokenError::Malformed)?;
    let conversation_id = Uuid::from_slice(&payload[16..32]).map_err(|_| TokenError::Malformed)?;
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&payload[32..40]);
    let issued_at = i64::from_be_bytes(ts);
    // Allow a minute of clock skew between nodes.
    if issued_at > now_unix + 60 || now_unix - issued_at > ttl_secs {
        return Err(TokenError::Expired);
    }
    Ok(TokenClaims { visitor_id, conversation_id, issued_at })
}

/// A token bucket: `capacity` events, refilled evenly over `window`.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(capacity: u32, now: Instant) -> Self {
        TokenBucket { tokens: capacity as f64, last: now }
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, capacity: u32, window: Duration, now: Instant) -> Result<(), Duration> {
        let rate = capacity as f64 / window.as_secs_f64();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(capacity as f64);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    fn is_full(&self, capacity: u32, window: Duration, now: Instant) -> bool {
        let rate = capacity as f64 / window.as_secs_f64();
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= capacity as f64
    }
}

/// Rate limits per key (visitor id, IP address), shared by every socket and request.
pub struct KeyedLimiter<K> {
    capacity: u32,
    window: Duration,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    /// `capacity` events per `window` for each key.
    pub fn new(capacity: u32, window: Duration) -> Self {
        KeyedLimiter { capacity, window, buckets: Mutex::new(HashMap::new()) }
    }

    /// Counts one event for `key`; `Err(retry_after)` when over the limit.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut g = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = g.entry(key.clone()).or_insert_with(|| TokenBucket::full(self.capacity, now));
        b.try_take(self.capacity, self.window, now)
    }

    /// Forgets keys whose bucket has refilled (they behave exactly like new keys).
    pub fn prune(&self, now: Instant) {
        let mut g = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|_, b| !b.is_full(self.capacity, self.window, now));
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.buckets.lock().map(|g| g.len()).unwrap_or(0)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a socket does with a pushed transcript entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushDecision {
    /// The next one: send it.
    Send,
    /// Already sent (resume or catch-up got it first): drop it.
    Skip,
    /// Something before it has not been sent yet: read the gap from the database.
    CatchUp,
}

/// The outbound cursor of one socket: the highest seq sent. Sequence numbers are
/// assigned in commit order per conversation, so sending strictly increasing seqs and
/// catching up on gaps never loses or repeats a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundCursor {
    last_sent: i64,
}

impl OutboundCursor {
    /// Starts after what the widget already has.
    pub fn after(last_seq: i64) -> Self {
        OutboundCursor { last_sent: last_seq.max(0) }
    }
    /// Highest seq sent.
    pub fn last_sent(&self) -> i64 {
        self.last_sent
    }
    /// Decides about a pushed seq.
    pub fn decide(&self, seq: i64) -> PushDecision {
        if seq <= self.last_sent {
            PushDecision::Skip
        } else if seq == self.last_sent + 1 {
            PushDecision::Send
        } else {
            PushDecision::CatchUp
        }
    }
    /// Records a sent seq; returns false (and changes nothing) for an old one.
    pub fn sent(&mut self, seq: i64) -> bool {
        if seq > self.last_sent {
            self.last_sent = seq;
            true
        } else {
            false
        }
    }
}

/// Estimated wait: the position divided by the queue's recent answer rate
/// (`answered` interactions in the last `window_secs`). None when nothing was answered
/// recently (no basis for an estimate).
pub fn estimate_wait_secs(position: i64, answered: i64, window_secs: i64) -> Option<i64> {
    if position <= 0 {
        return Some(0);
    }
    if answered <= 0 || window_secs <= 0 {
        return None;
    }
    let per_answer = window_secs as f64 / answered as f64;
    Some((position as f64 * per_answer).ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let c = TokenClaims { visitor_id: Uuid::new_v4(), conversation_id: Uuid::new_v4(), issued_at: 1_700_000_000 };
        let t = sign_token(secret, &c);
        assert_eq!(verify_token(secret, &t, 1_700_000_100, 3600), Ok(c));
        assert_eq!(verify_token(b"another secret of enough length", &t, 1_700_000_100, 3600), Err(TokenError::BadSignature));
        assert_eq!(verify_token(secret, &t, 1_700_000_000 + 3601, 3600), Err(TokenError::Expired));
        assert_eq!(verify_token(secret, &t, 1_699_999_000, 3600), Err(TokenError::Expired));
        // Swap the payload of another token under this signature.
        let other = sign_token(secret, &TokenClaims { visitor_id: Uuid::new_v4(), ..c });
        let forged = format!("{}.{}", other.rsplit_once('.').unwrap().0, t.rsplit_once('.').unwrap().1);
        assert_eq!(verify_token(secret, &forged, 1_700_000_100, 3600), Err(TokenError::BadSignature));
        for bad in ["", "sbv1.", "sbv1.abc", "xyz.abc.def", "sbv1.!!.??"] {
            assert!(verify_token(secret, bad, 1_700_000_100, 3600).is_err(), "{bad}");
        }
    }

    #[test]
    fn bucket_limits_and_refills() {
        let t0 = Instant::now();
        let l = KeyedLimiter::new(3, Duration::from_secs(10));
        for _ in 0..3 {
            assert!(l.check(&"a", t0).is_ok());
        }
        let wait = l.check(&"a", t0).unwrap_err();
        assert!(wait > Duration::from_secs(3) && wait <= Duration::from_millis(3334), "{wait:?}");
        // Another key is independent.
        assert!(l.check(&"b", t0).is_ok());
        // After a third of the window, one more.
        assert!(l.check(&"a", t0 + Duration::from_millis(3400)).is_ok());
        assert!(l.check(&"a", t0 + Duration::from_millis(3400)).is_err());
        l.prune(t0 + Duration::from_secs(5));
        assert_eq!(l.len(), 1, "b refilled and is forgotten; a is not full yet");
        l.prune(t0 + Duration::from_secs(60));
        assert!(l.is_empty());
    }

    #[test]
    fn cursor_sends_in_order_and_catches_up_on_gaps() {
        let mut c = OutboundCursor::after(4);
        assert_eq!(c.decide(3), PushDecision::Skip);
        assert_eq!(c.decide(4), PushDecision::Skip);
        assert_eq!(c.decide(5), PushDecision::Send);
        assert_eq!(c.decide(7), PushDecision::CatchUp);
        assert!(c.sent(5));
        assert!(!c.sent(5));
        assert_eq!(c.last_sent(), 5);
        assert_eq!(OutboundCursor::after(-3).last_sent(), 0);
    }

    #[test]
    fn wait_estimate() {
        assert_eq!(estimate_wait_secs(0, 0, 900), Some(0));
        assert_eq!(estimate_wait_secs(3, 0, 900), None);
        assert_eq!(estimate_wait_secs(3, 10, 900), Some(270));
        assert_eq!(estimate_wait_secs(1, 7, 900), Some(129));
    }
}
