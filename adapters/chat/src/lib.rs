//! Web chat channel: an embeddable widget (`web/widget/widget.js`) talks to the hub over
//! a WebSocket (protocol v1, `PROTOCOL.md`) with an HTTP fallback for sending.
//!
//! - [`protocol`]: frame types, parsing and validation (pure).
//! - [`session`]: visitor tokens, rate limits, the resume cursor, wait estimates (pure).
//! - [`registry`]: this node's widget sockets per conversation.
//! - [`store`]: the chat tables (visitors, conversations and their message sequence,
//!   attachments, the token secret).
//! - [`adapter`]: the [`switchboard_core::ChannelAdapter`] (ingest, delivery, hub-event fan-out).
//! - [`http`]: the axum shell: `/chat/v1/...` endpoints and the socket loop.
//!
//! Delivery guarantees: a visitor message is acknowledged only after `hub.ingest`
//! committed it (dedupe key `<conversation>:<client_msg_id>`, so resends are stored once);
//! every stored message gets a per-conversation `seq` in commit order, and a reconnecting
//! widget resumes with `last_seq`, receiving exactly the entries after it.

pub mod adapter;
pub mod attachments;
pub mod config;
pub mod http;
pub mod protocol;
pub mod registry;
pub mod session;
pub mod store;

pub use adapter::{ChatAdapter, ChatState};
pub use config::ChatConfig;

use std::sync::Arc;
use switchboard_core::{AdapterError, AdapterRegistry};

/// Errors of the chat crate outside the wire protocol (which has [`protocol::ProtocolError`]).
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// Invalid `[[channels]]` settings.
    #[error("webchat configuration: {0}")]
    Config(String),
}

impl From<ChatError> for AdapterError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::Config(m) => AdapterError::Config(m),
        }
    }
}

/// Builds a chat adapter from a `[[channels]]` table.
pub fn build(name: &str, table: toml::Value) -> Result<ChatAdapter, ChatError> {
    let cfg = ChatConfig::from_toml(table).map_err(ChatError::Config)?;
    let name = cfg.name.clone().unwrap_or_else(|| name.to_string());
    Ok(ChatAdapter::new(name, cfg))
}

/// Registers the `webchat` adapter kind.
pub fn register(registry: &mut AdapterRegistry) {
    registry.register(
        "webchat",
        Box::new(|name, table| {
            let a = build(name, table)?;
            Ok(Arc::new(a) as Arc<dyn switchboard_core::ChannelAdapter>)
        }),
    );
}
