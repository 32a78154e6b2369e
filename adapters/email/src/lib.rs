//! Email channel: one `[[channels]] type = "email"` entry per support mailbox.
//!
//! - [`config`]: the mailbox's settings (IMAP and SMTP accounts, import and loop rules).
//! - [`parse`]: raw MIME → a normalized message (pure; every charset, QP/base64,
//!   multipart/alternative, sanitized HTML, attachments, forwarded messages, quoted history).
//! - [`threading`]: which conversation a mail joins (reply token, references, subject tag).
//! - [`loops`]: automatic, bulk and bounce mail; the per-sender rate limit.
//! - [`compose`]: outgoing mail with our Message-ID and the threading headers (pure).
//! - [`imap`], [`smtp`]: the socket shells (async-imap over tokio + rustls; lettre).
//! - [`store`]: the email tables. [`adapter`]: the mailbox worker and delivery.
//! - [`http`]: the agent's view of a mail (`/api/v1/email/<mailbox>/...`).
//!
//! Persist before acknowledge: a fetched message is stored raw (bytea) before anything
//! parses it; only after the hub committed it is it flagged `\Seen` or moved on the server,
//! and the mailbox checkpoint (UIDVALIDITY, last UID) advances. Every message is
//! deduplicated per mailbox by its Message-ID (a hash of its bytes when it has none), so a
//! second delivery, a crash mid-fetch or a UIDVALIDITY change imports nothing twice.

pub mod adapter;
pub mod agent_mail;
pub mod compose;
pub mod config;
pub mod erase;
pub mod http;
pub mod imap;
pub mod loops;
pub mod parse;
pub mod smtp;
pub mod store;
pub mod threading;

/// A mailbox's attachment store: its configured directory (default
/// `<data_dir>/attachments`), or the `attachments/` prefix of the hub's object store
/// (shared with chat: both are content-addressed by SHA-256).
pub fn attachment_store(
    hub: &switchboard_core::Hub,
    dir: Option<&std::path::Path>,
) -> std::sync::Arc<dyn switchboard_core::files::FileStore> {
    let dir = dir.map(std::path::Path::to_path_buf).unwrap_or_else(|| hub.settings().database.data_dir.join("attachments"));
    hub.file_store(&dir, "attachments")
}

pub use adapter::{EmailAdapter, Imported};
pub use config::EmailConfig;

use std::sync::Arc;
use switchboard_core::{AdapterError, AdapterRegistry};

/// Errors of the email crate.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// Invalid `[[channels]]` settings.
    #[error("email configuration: {0}")]
    Config(String),
}

impl From<EmailError> for AdapterError {
    fn from(e: EmailError) -> Self {
        match e {
            EmailError::Config(m) => AdapterError::Config(m),
        }
    }
}

/// Builds an email adapter from a `[[channels]]` table.
pub fn build(name: &str, table: toml::Value) -> Result<EmailAdapter, EmailError> {
    let cfg = EmailConfig::from_toml(table).map_err(EmailError::Config)?;
    let name = cfg.name.clone().unwrap_or_else(|| name.to_string());
    Ok(EmailAdapter::new(name, cfg))
}

/// Registers the `email` adapter kind.
pub fn register(registry: &mut AdapterRegistry) {
    registry.register(
        "email",
        Box::new(|name, table| {
            let a = build(name, table)?;
            Ok(Arc::new(a) as Arc<dyn switchboard_core::ChannelAdapter>)
        }),
    );
}
