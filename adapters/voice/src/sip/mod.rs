//! Pure SIP protocol layer (RFC 3261): parsing over `rsip`, validation, transactions,
//! dialogs, digest authentication and NAT helpers. Nothing here touches a socket.

pub mod dialog;
pub mod digest;
pub mod message;
pub mod transaction;
pub mod validate;
pub mod via;

pub use message::{parse, SipError};
pub use rsip::{Method, SipMessage};

/// The transport a message arrived on or leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Datagrams; the transaction layer retransmits.
    Udp,
    /// A stream; no retransmissions (RFC 3261 §17.1.1.2, "reliable transport").
    Tcp,
}

impl Transport {
    /// Whether the transport is reliable, which switches off retransmission timers.
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp)
    }

    /// The token used in Via (`SIP/2.0/UDP`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

#[cfg(test)]
mod fuzz_tests;
