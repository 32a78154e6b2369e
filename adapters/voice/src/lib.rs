//! Switchboard voice channel: SIP signalling, RTP media, IVR and a B2BUA call engine.
//!
//! The crate is split the way the conventions ask for protocol adapters:
//!
//! * pure protocol modules with no I/O, tested and fuzzed directly:
//!   [`sip`] (message parsing over `rsip`, validation, RFC 3261 transactions,
//!   dialogs, digest authentication, rport), [`sdp`] (offer/answer),
//!   [`media`] (RTP, G.711, RFC 4733 DTMF, WAV, prompt player, tones, latching),
//!   [`ivr`] (flow interpreter), [`registrar`] (bindings and digest challenges);
//! * a thin tokio shell: [`transport`] (UDP/TCP listeners) and [`b2bua`] (the call
//!   engine that answers trunk calls, runs the IVR, hands the call to core through
//!   the [`call::CallRouting`] trait and bridges it to the agent's phone);
//! * the hub wiring: [`adapter`] (the `type = "sip"` channel adapter, `CallRouting` over
//!   core, agent credentials from the database) and [`http`] (call controls).

pub mod adapter;
pub mod b2bua;
pub mod call;
pub mod call_reports;
pub mod config;
pub mod http;
pub mod ivr;
pub mod media;
pub mod media_session;
pub mod metrics;
pub mod recordings;
pub mod registrar;
pub mod sdp;
pub mod sip;
pub mod transport;

pub use adapter::{bound_addr, bound_tcp_addr, engine_for, register, VoiceAdapter};
pub use b2bua::{Supervision, SupervisorTarget, VoiceEngine, VoiceEngineHandle};
pub use call::{CallInfo, CallOutcome, CallRouting, CallTicket};
pub use config::VoiceConfig;

/// Errors of the voice channel.
#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    /// The configuration is invalid; every problem found is listed.
    #[error("invalid voice configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// A SIP message could not be parsed or is not acceptable.
    #[error("SIP message rejected: {0}")]
    Sip(#[from] sip::SipError),
    /// An SDP body could not be parsed or negotiated.
    #[error("SDP: {0}")]
    Sdp(#[from] sdp::SdpError),
    /// A WAV file could not be read or written.
    #[error("WAV: {0}")]
    Wav(#[from] media::wav::WavError),
    /// Socket or file I/O failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The routing layer (core) refused or failed a request.
    #[error("routing: {0}")]
    Routing(String),
    /// The call or registration referred to does not exist (any more).
    #[error("unknown call {0}")]
    UnknownCall(String),
    /// The engine has shut down.
    #[error("voice engine stopped")]
    Stopped,
}

/// Result alias for the crate.
pub type Result<T, E = VoiceError> = std::result::Result<T, E>;
