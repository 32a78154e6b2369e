//! Switchboard core: the domain, the ingest pipeline, queues, the router (ACD), agent
//! presence and capacity, the event bus, the [`adapter::ChannelAdapter`] trait, auth, the
//! HTTP API for these, and their database access.
//!
//! Data flow: adapter → [`hub::Hub::ingest`] (dedupe, persist, queue) → router leader
//! ([`router`]) → offer committed → event → agent accepts → replies through the
//! [`outbox`] → adapter delivers.

pub mod adapter;
pub mod api;
pub mod auth;
pub mod batch;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod db;
pub mod domain;
pub mod embedded;
pub mod error;
pub mod files;
pub mod hub;
pub mod interactions;
pub mod lease;
pub mod metrics;
pub mod outbox;
pub mod privacy;
pub mod queues;
pub mod reports;
pub mod router;
pub mod skills;
pub mod sms_text;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use adapter::{AdapterError, AdapterRegistry, Assignment, ChannelAdapter, DeliveryReceipt, Outbound, Shutdown};
pub use domain::{Channel, Disposition, InteractionStatus, Presence, Role};
pub use error::{CoreError, CoreResult};
pub use hub::{CustomerDirectory, CustomerHints, Hub, InboundItem, IngestLedger, IngestOutcome, ResolvedCustomer};
