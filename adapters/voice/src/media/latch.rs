//! Symmetric RTP latching (comedia): send media to where the peer's RTP actually
//! comes from, which traverses NAT where the SDP address would not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long the latched source may stay silent before another source may take over
/// (covers a phone that re-INVITEs from a new port, e.g. after a NAT rebinding).
pub const RELATCH_AFTER: Duration = Duration::from_secs(2);

/// Tracks the peer's media address.
#[derive(Debug, Clone)]
pub struct RtpLatch {
    signalled: Option<SocketAddr>,
    latched: Option<(SocketAddr, Instant)>,
}

impl RtpLatch {
    /// Starts with the SDP address (may be unspecified when on hold).
    pub fn new(signalled: Option<SocketAddr>) -> Self {
        Self { signalled: signalled.filter(|a| !a.ip().is_unspecified() && a.port() != 0), latched: None }
    }

    /// Updates the SDP address after a re-INVITE.
    pub fn set_signalled(&mut self, addr: Option<SocketAddr>) {
        self.signalled = addr.filter(|a| !a.ip().is_unspecified() && a.port() != 0);
    }

    /// A packet arrived from `source`; returns whether to accept it. The first source
    /// latches; afterwards others are ignored unless the latched one fell silent.
    pub fn on_packet(&mut self, source: SocketAddr, now: Instant) -> bool {
        match self.latched {
            Some((addr, _)) if addr == source => {
                self.latched = Some((addr, now));
                true
            }
            Some((_, last)) if now.duration_since(last) < RELATCH_AFTER => false,
            _ => {
                self.latched = Some((source, now));
                true
            }
        }
    }

    /// Where to send our media.
    pub fn target(&self) -> Option<SocketAddr> {
        self.latched.map(|(a, _)| a).or(self.signalled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latches_first_source_and_relatches_after_silence() {
        let sdp: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let nat: SocketAddr = "198.51.100.9:61000".parse().unwrap();
        let other: SocketAddr = "203.0.113.66:5000".parse().unwrap();
        let mut l = RtpLatch::new(Some(sdp));
        assert_eq!(l.target(), Some(sdp));
        let t = Instant::now();
        assert!(l.on_packet(nat, t));
        assert_eq!(l.target(), Some(nat));
        assert!(!l.on_packet(other, t + Duration::from_millis(100)), "hijack refused");
        assert!(l.on_packet(other, t + Duration::from_secs(3)));
        assert_eq!(l.target(), Some(other));
        assert_eq!(RtpLatch::new(Some("0.0.0.0:0".parse().unwrap())).target(), None);
    }
}
