//! Whose RTP a leg accepts and where it sends its own.
//!
//! Media is accepted from, and sent to, the address the peer's SDP names. Latching on
//! to "whoever sends first" (plain comedia) is a hijack: RTP still flowing from a
//! finished call towards a port now reused by a new call took that call over, and the
//! new caller's prompts went to the old phone. So a source other than the SDP address
//! is only accepted behind NAT, and only when it looks like that peer's NAT:
//!
//! * the SDP names a private or unroutable address (RFC 1918, RFC 6598, link-local,
//!   unique-local) that differs from the public address the call's SIP came from, the
//!   usual sign of a phone behind NAT (the test Kamailio's `nat_uac_test` flag 8 makes);
//! * the packet comes from that same public address (the NAT maps SIP and RTP on one
//!   public IP, on any port);
//! * within the first [`LEARN_PACKETS`] packets after the SDP was set, one source sends
//!   [`CONFIRM_PACKETS`] packets in a row with one SSRC and consecutive sequence numbers.
//!
//! Once latched, packets from any other source are strays and ignored. Only when the
//! latched source has been silent for [`RELATCH_AFTER`] (a NAT rebinding) may another
//! source take over, by the same rules; a re-INVITE naming a new address starts over.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long the latched source may stay silent before another source may take over
/// (covers a phone whose NAT binding changed).
pub const RELATCH_AFTER: Duration = Duration::from_secs(2);

/// Packets (from any source) after the SDP was set during which a NAT source may be
/// learned (about a second of 20 ms audio).
pub const LEARN_PACKETS: u32 = 50;

/// Packets in a row, one SSRC, consecutive sequence numbers, that confirm a NAT source.
pub const CONFIRM_PACKETS: u32 = 3;

#[derive(Debug, Clone, Copy)]
struct Latched {
    addr: SocketAddr,
    last: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    addr: SocketAddr,
    ssrc: u32,
    sequence: u16,
    count: u32,
}

/// Tracks the peer's media address.
#[derive(Debug, Clone)]
pub struct RtpLatch {
    signalled: Option<SocketAddr>,
    /// Public IP of the peer's SIP signalling, when its SDP names a private address.
    nat_ip: Option<IpAddr>,
    signalling_ip: Option<IpAddr>,
    latched: Option<Latched>,
    candidate: Option<Candidate>,
    /// Packets seen since the SDP address was set (saturating).
    seen: u32,
}

fn usable(addr: Option<SocketAddr>) -> Option<SocketAddr> {
    addr.filter(|a| !a.ip().is_unspecified() && a.port() != 0)
}

/// Addresses a peer cannot be reached at from outside its own network.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            // RFC 6598 shared address space (carrier-grade NAT): 100.64.0.0/10.
            v4.is_private() || v4.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        // fc00::/7 unique local, fe80::/10 link-local.
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

impl RtpLatch {
    /// Starts with the SDP address (may be unspecified when on hold).
    pub fn new(signalled: Option<SocketAddr>) -> Self {
        let mut l = Self { signalled: None, nat_ip: None, signalling_ip: None, latched: None, candidate: None, seen: 0 };
        l.set_signalled(signalled);
        l
    }

    /// The IP the peer's SIP messages come from (the NAT's public address for a phone
    /// behind NAT).
    pub fn set_signalling_ip(&mut self, ip: IpAddr) {
        self.signalling_ip = Some(ip);
        self.update_nat();
    }

    /// Updates the SDP address (offer/answer, re-INVITE). A new address starts over:
    /// the old latch and any NAT learning are forgotten.
    pub fn set_signalled(&mut self, addr: Option<SocketAddr>) {
        let addr = usable(addr);
        if addr != self.signalled {
            self.signalled = addr;
            self.latched = None;
            self.candidate = None;
            self.seen = 0;
        }
        self.update_nat();
    }

    fn update_nat(&mut self) {
        self.nat_ip = match (self.signalled, self.signalling_ip) {
            (Some(sdp), Some(sip)) if is_private(sdp.ip()) && sdp.ip() != sip => Some(sip),
            _ => None,
        };
    }

    /// A packet with `ssrc` and `sequence` arrived from `source`; returns whether to
    /// accept it.
    pub fn on_packet(&mut self, source: SocketAddr, ssrc: u32, sequence: u16, now: Instant) -> bool {
        self.seen = self.seen.saturating_add(1);
        if Some(source) == self.signalled {
            self.latched = Some(Latched { addr: source, last: now });
            self.candidate = None;
            return true;
        }
        match self.latched {
            Some(l) if l.addr == source => {
                self.latched = Some(Latched { addr: source, last: now });
                return true;
            }
            Some(l) if now.duration_since(l.last) < RELATCH_AFTER => return false,
            // A silent latch (NAT rebinding) may be replaced; the initial one only while learning.
            Some(_) => {}
            None if self.seen > LEARN_PACKETS => return false,
            None => {}
        }
        if self.nat_ip != Some(source.ip()) {
            return false;
        }
        let count = match self.candidate {
            Some(c) if c.addr == source && c.ssrc == ssrc && sequence == c.sequence.wrapping_add(1) => c.count + 1,
            _ => 1,
        };
        self.candidate = Some(Candidate { addr: source, ssrc, sequence, count });
        if count >= CONFIRM_PACKETS {
            self.latched = Some(Latched { addr: source, last: now });
            self.candidate = None;
            return true;
        }
        false
    }

    /// Where to send our media: the confirmed source, else the SDP address.
    pub fn target(&self) -> Option<SocketAddr> {
        self.latched.map(|l| l.addr).or(self.signalled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Point 2 of the hardening issue: stale RTP from a finished call, arriving first
    /// on a reused port, must neither be accepted nor receive the new call's media.
    #[test]
    fn stale_rtp_on_a_reused_port_does_not_take_the_call() {
        let sdp = addr("127.0.0.1:40000");
        let stale = addr("127.0.0.1:39000");
        let mut l = RtpLatch::new(Some(sdp));
        l.set_signalling_ip(sdp.ip());
        let t = Instant::now();
        for i in 0..20u16 {
            assert!(!l.on_packet(stale, 7, i, t), "stale packet {i} accepted");
        }
        assert_eq!(l.target(), Some(sdp), "media goes where the SDP says");
        assert!(l.on_packet(sdp, 9, 100, t));
        assert!(!l.on_packet(stale, 7, 21, t + Duration::from_millis(20)), "stray after latching");
        assert_eq!(l.target(), Some(sdp));
        // Long after, the stale source still cannot take over: it is not the peer's NAT.
        assert!(!l.on_packet(stale, 7, 22, t + Duration::from_secs(10)));
        assert_eq!(l.target(), Some(sdp));
    }

    #[test]
    fn behind_nat_latches_to_a_steady_source_on_the_signalling_address() {
        let sdp = addr("192.168.1.20:4000");
        let public = "198.51.100.9".parse().unwrap();
        let nat = SocketAddr::new(public, 61000);
        let other = addr("203.0.113.66:5000");
        let mut l = RtpLatch::new(Some(sdp));
        l.set_signalling_ip(public);
        assert_eq!(l.target(), Some(sdp));
        let t = Instant::now();
        // Another host cannot be the phone's NAT, however steady its stream.
        for i in 0..5u16 {
            assert!(!l.on_packet(other, 1, i, t));
        }
        // The NAT's address with one SSRC and consecutive sequence numbers is confirmed
        // on the third packet; a gap in the sequence starts the count again.
        assert!(!l.on_packet(nat, 42, 10, t));
        assert!(!l.on_packet(nat, 42, 12, t));
        assert!(!l.on_packet(nat, 42, 13, t));
        assert!(l.on_packet(nat, 42, 14, t));
        assert_eq!(l.target(), Some(nat));
        // Strays after latching are ignored, even from the NAT's other ports.
        assert!(!l.on_packet(SocketAddr::new(public, 62000), 43, 1, t + Duration::from_millis(40)));
        assert!(l.on_packet(nat, 42, 15, t + Duration::from_millis(60)));
        // A NAT rebinding: after RELATCH_AFTER of silence a new port may be confirmed.
        let rebound = SocketAddr::new(public, 62001);
        let later = t + Duration::from_secs(3);
        assert!(!l.on_packet(rebound, 42, 200, later));
        assert!(!l.on_packet(rebound, 42, 201, later));
        assert!(l.on_packet(rebound, 42, 202, later));
        assert_eq!(l.target(), Some(rebound));
    }

    #[test]
    fn nat_learning_ends_after_the_first_packets_and_a_new_sdp_starts_over() {
        let sdp = addr("10.0.0.5:4000");
        let public: IpAddr = "198.51.100.9".parse().unwrap();
        let nat = SocketAddr::new(public, 61000);
        let mut l = RtpLatch::new(Some(sdp));
        l.set_signalling_ip(public);
        let t = Instant::now();
        for i in 0..LEARN_PACKETS {
            assert!(!l.on_packet(addr("203.0.113.1:9"), 5, i as u16, t));
        }
        for i in 0..5u16 {
            assert!(!l.on_packet(nat, 42, i, t), "too late to learn");
        }
        // A re-INVITE moves the media: learning starts again for the new address.
        l.set_signalled(Some(addr("10.0.0.5:4002")));
        for i in 0..2u16 {
            assert!(!l.on_packet(nat, 42, 10 + i, t));
        }
        assert!(l.on_packet(nat, 42, 12, t));
        // Hold (0.0.0.0) names no address.
        assert_eq!(RtpLatch::new(Some(addr("0.0.0.0:0"))).target(), None);
        // A public SDP address is never behind NAT: only it is accepted.
        let mut public_sdp = RtpLatch::new(Some(SocketAddr::new(public, 4000)));
        public_sdp.set_signalling_ip(public);
        for i in 0..5u16 {
            assert!(!public_sdp.on_packet(nat, 42, i, t));
        }
    }
}
