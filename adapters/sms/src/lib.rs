//! SMS channel: one `[[channels]]` entry per provider account, `type = "smpp"` (an SMPP
//! 3.4 client, ESME) or `type = "http"` (a provider's HTTP API plus signed webhooks).
//!
//! - [`pdu`]: the SMPP 3.4 PDU codec (pure, fuzzed).
//! - [`encoding`]: GSM 03.38 / UCS-2, splitting into concatenated parts, inbound UDH.
//! - [`receipt`]: delivery receipts (TLV and text form), forward-only statuses, hex/decimal
//!   id matching.
//! - [`keywords`]: STOP / START / HELP per language.
//! - [`config`]: the channel's settings.
//! - [`session`]: the tokio shell: bind, window, throttle, keep-alive, reconnect, unbind.
//! - [`store`]: the SMS tables (parts, sent messages, ids, opt-outs, leases).
//! - [`api`]: per-channel send and draft-counter endpoints.
//! - [`inbound`]: what an inbound text becomes (keyword or interaction), for both kinds.
//! - [`adapter`]: the SMPP [`switchboard_core::ChannelAdapter`].
//! - [`http`]: the HTTP provider adapter and its webhooks (HMAC / Twilio signatures).
//!
//! Guarantees: a deliver_sm is answered only after it is committed (a part is stored, a
//! message ingested with its dedupe key, a receipt applied); a submit_sm is recorded as
//! `submitting` before it is written and, when no response comes, `unknown` — never resent
//! automatically, since SMPP has no idempotency key; receipt statuses only move forward;
//! one node holds a bind at a time (a lease row with expiry), another takes over when the
//! holder stops renewing it.

pub mod adapter;
pub mod api;
pub mod config;
pub mod encoding;
pub mod erase;
pub mod http;
pub mod inbound;
pub mod keywords;
pub mod pdu;
pub mod receipt;
pub mod session;
pub mod store;

pub use adapter::SmppAdapter;
pub use config::SmppConfig;

use std::sync::Arc;
use switchboard_core::{AdapterError, AdapterRegistry};

/// Errors of the SMS crate outside the wire codec (which answers bad PDUs itself).
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    /// Invalid `[[channels]]` settings.
    #[error("sms configuration: {0}")]
    Config(String),
}

impl From<SmsError> for AdapterError {
    fn from(e: SmsError) -> Self {
        match e {
            SmsError::Config(m) => AdapterError::Config(m),
        }
    }
}

/// Builds an SMPP adapter from a `[[channels]]` table.
pub fn build_smpp(name: &str, table: toml::Value) -> Result<SmppAdapter, SmsError> {
    let cfg = SmppConfig::from_toml(table).map_err(SmsError::Config)?;
    let name = cfg.name.clone().unwrap_or_else(|| name.to_string());
    check_name(&name)?;
    Ok(SmppAdapter::new(name, cfg))
}

/// A channel name is a URL path segment (`/sms/v1/<name>/...`).
pub(crate) fn check_name(name: &str) -> Result<(), SmsError> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(SmsError::Config("name must be 1..=64 letters, digits, - and _ (it is a URL path segment)".into()));
    }
    Ok(())
}

/// Registers the `smpp` and `http` adapter kinds.
pub fn register(registry: &mut AdapterRegistry) {
    registry.register(
        adapter::KIND,
        Box::new(|name, table| {
            let a = build_smpp(name, table)?;
            Ok(Arc::new(a) as Arc<dyn switchboard_core::ChannelAdapter>)
        }),
    );
    registry.register(
        http::KIND,
        Box::new(|name, table| {
            let a = http::build(name, table)?;
            Ok(Arc::new(a) as Arc<dyn switchboard_core::ChannelAdapter>)
        }),
    );
}
