//! SMS channel: an SMPP 3.4 client (ESME) per provider account, one `[[channels]]` entry
//! with `type = "smpp"` each.
//!
//! - [`pdu`]: the SMPP 3.4 PDU codec (pure, fuzzed).
//! - [`encoding`]: GSM 03.38 / UCS-2, splitting into concatenated parts, inbound UDH.
//! - [`receipt`]: delivery receipts (TLV and text form), forward-only statuses, hex/decimal
//!   id matching.
//! - [`keywords`]: STOP / START / HELP per language.
//! - [`config`]: the channel's settings.

pub mod config;
pub mod encoding;
pub mod keywords;
pub mod pdu;
pub mod receipt;

pub use config::SmppConfig;

/// Errors of the SMS crate.
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    /// Invalid `[[channels]]` settings.
    #[error("sms configuration: {0}")]
    Config(String),
}
