//! The channel adapter trait and the registry that builds adapters from config by `type`.

use crate::domain::Channel;
use crate::hub::Hub;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// Shutdown signal handed to adapters: resolves when the hub stops.
#[derive(Clone)]
pub struct Shutdown(pub tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// Waits until shutdown is requested.
    pub async fn wait(&mut self) {
        while !*self.0.borrow() {
            if self.0.changed().await.is_err() {
                return;
            }
        }
    }
    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }
}

/// Errors of channel adapters.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The peer refused or failed; retrying may help.
    #[error("temporary failure: {0}")]
    Temporary(String),
    /// The message can never be delivered (bad address, rejected content).
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// Configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Another node delivers it: this node cannot now, by design (the channel's one
    /// connection, e.g. an SMPP bind, is leased to another node). Not a failed attempt: the
    /// outbox puts the message back at once, without backoff, for the node that can.
    #[error("delivered by another node: {0}")]
    Elsewhere(String),
    /// Core refused an operation.
    #[error(transparent)]
    Core(#[from] crate::error::CoreError),
}

/// One outbound message (agent reply, campaign SMS) read from the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outbound {
    /// Outbox row id.
    pub id: Uuid,
    /// Idempotency key (adapters pass it to providers that support one).
    pub idempotency_key: String,
    /// Channel.
    pub channel: Channel,
    /// Interaction, if any.
    pub interaction_id: Option<Uuid>,
    /// Recipient address (phone, email, chat visitor id).
    pub recipient: String,
    /// Subject (email).
    pub subject: Option<String>,
    /// Body text.
    pub body: String,
    /// Channel-specific data (threading headers, conversation ids, ...).
    pub metadata: serde_json::Value,
    /// Attempt number, starting at 1.
    pub attempt: i32,
}

/// What a peer said about a delivered message.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeliveryReceipt {
    /// The provider's id for the message (SMSC message id, SMTP queue id, ...).
    pub provider_id: Option<String>,
}

/// An offer or assignment told to real-time adapters (voice rings the phone, chat notifies).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    /// Offer id.
    pub offer_id: Uuid,
    /// Interaction.
    pub interaction_id: Uuid,
    /// Agent offered to.
    pub agent_id: Uuid,
    /// Channel.
    pub channel: Channel,
    /// The agent's SIP user (voice), if any.
    pub agent_sip_user: Option<String>,
    /// Whether this is one of several ring-all offers.
    pub ring_all: bool,
    /// Offer expiry.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// A channel adapter: normalizes a peer's contacts into the hub and delivers replies.
#[async_trait]
pub trait ChannelAdapter: Send + Sync + 'static {
    /// The channel served.
    fn channel(&self) -> Channel;
    /// The configured instance name (for logs and outbox routing).
    fn name(&self) -> &str;
    /// Runs until shutdown: receive from the peer, normalize, hand to `hub.ingest`.
    async fn run(&self, hub: Hub, shutdown: Shutdown) -> Result<(), AdapterError>;
    /// Sends one outbound message to the peer.
    async fn deliver(&self, msg: &Outbound) -> Result<DeliveryReceipt, AdapterError>;
    /// Whether this node can deliver this adapter's messages now. An adapter whose one
    /// connection is leased to another node (an SMPP bind) answers no while it is; the
    /// outbox then leaves the channel's rows to the node that can, instead of claiming
    /// them and handing them back ([`AdapterError::Elsewhere`] stays for the moment the
    /// lease moves between claim and delivery).
    fn delivers_here(&self) -> bool {
        true
    }
    /// Real-time channels react to an offer here.
    async fn on_assignment(&self, _a: &Assignment) -> Result<(), AdapterError> {
        Ok(())
    }
    /// An HTTP router the adapter serves (webhooks, widget endpoints), merged at the top.
    fn http_router(&self) -> Option<axum::Router<Hub>> {
        None
    }
    /// The adapter's part of erasing a customer's personal data, if it stores any.
    fn personal_data_eraser(&self) -> Option<Arc<dyn crate::privacy::PersonalDataEraser>> {
        None
    }
}

/// Builds an adapter from its TOML table (the `[[channels]]` entry, `type` included).
pub type AdapterFactory = Box<dyn Fn(&str, toml::Value) -> Result<Arc<dyn ChannelAdapter>, AdapterError> + Send + Sync>;

/// Registry of adapter kinds: `type = "…"` → factory. A new provider is one `register` line.
#[derive(Default)]
pub struct AdapterRegistry {
    factories: HashMap<String, AdapterFactory>,
}

impl AdapterRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a kind.
    pub fn register(&mut self, kind: &str, f: AdapterFactory) {
        self.factories.insert(kind.to_string(), f);
    }

    /// Known kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self.factories.keys().cloned().collect();
        k.sort();
        k
    }

    /// Builds the adapter for one `[[channels]]` entry.
    pub fn build(&self, index: usize, table: toml::Value) -> Result<Arc<dyn ChannelAdapter>, AdapterError> {
        let kind = table
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| AdapterError::Config(format!("channels[{index}].type is missing")))?
            .to_string();
        let name = table.get("name").and_then(|t| t.as_str()).map(str::to_string).unwrap_or_else(|| format!("{kind}-{index}"));
        let f = self.factories.get(&kind).ok_or_else(|| {
            AdapterError::Config(format!("channels[{index}].type `{kind}` is unknown (known: {})", self.kinds().join(", ")))
        })?;
        f(&name, table).map_err(|e| match e {
            AdapterError::Config(m) => AdapterError::Config(format!("channels[{index}] ({kind}): {m}")),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_reports_unknown_and_missing_types() {
        let mut r = AdapterRegistry::new();
        r.register("x", Box::new(|_, _| Err(AdapterError::Config("bad key `port`".into()))));
        let missing: toml::Value = toml::from_str("name = \"a\"").unwrap();
        assert!(matches!(r.build(0, missing), Err(AdapterError::Config(m)) if m.contains("channels[0].type")));
        let unknown: toml::Value = toml::from_str("type = \"fax\"").unwrap();
        assert!(matches!(r.build(1, unknown), Err(AdapterError::Config(m)) if m.contains("fax") && m.contains("known: x")));
        let bad: toml::Value = toml::from_str("type = \"x\"").unwrap();
        assert!(matches!(r.build(2, bad), Err(AdapterError::Config(m)) if m.contains("channels[2] (x)") && m.contains("port")));
    }
}
