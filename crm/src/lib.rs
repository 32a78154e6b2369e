//! Switchboard CRM: customers and their channel identities, consent with history, notes,
//! the cross-channel history timeline, the screen-pop card, merge and duplicate
//! suggestions, appointments, follow-up tasks, CSV import/export, privacy export and
//! erasure.
//!
//! Ingest asks the CRM "who is this?" through [`CustomerDirectory`], which [`start`]
//! wires into the hub: an address is normalized ([`normalize`]) and resolved to its
//! customer, or a customer is created for it exactly once however many contacts from
//! that new address arrive at the same moment.

pub mod api;
pub mod campaigns;
pub mod config;
pub mod duplicates;
pub mod import;
pub mod jobs;
pub mod normalize;
pub mod search;
pub mod store;

use async_trait::async_trait;
use sqlx::PgPool;
use std::sync::Arc;
use switchboard_core::{Channel, CoreResult, CustomerDirectory, CustomerHints, Hub, ResolvedCustomer};
use uuid::Uuid;

pub use api::ROUTES;
pub use config::{CrmConfig, Settings};
pub use import::{import_csv, import_csv_with, ImportReport, RowError};

/// Errors of the CRM crate that are not request errors.
#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    /// An address could not be normalized.
    #[error(transparent)]
    Address(#[from] normalize::NormalizeError),
}

impl From<CrmError> for switchboard_core::CoreError {
    fn from(e: CrmError) -> Self {
        switchboard_core::CoreError::field("address", e.to_string())
    }
}

/// The CRM's answer to "who is this?".
pub struct CrmDirectory {
    pool: PgPool,
    settings: Arc<Settings>,
}

impl CrmDirectory {
    /// A directory over the database.
    pub fn new(pool: PgPool, settings: Arc<Settings>) -> CrmDirectory {
        CrmDirectory { pool, settings }
    }
}

#[async_trait]
impl CustomerDirectory for CrmDirectory {
    async fn resolve(&self, channel: Channel, address: &str, hints: &CustomerHints) -> CoreResult<Option<ResolvedCustomer>> {
        let kind = normalize::IdentityKind::of_channel(channel);
        let mut c = store::resolve(&self.pool, self.settings.region, kind, address, hints).await?;
        if channel == Channel::Sms {
            c.campaign_id =
                campaigns::results::replied_campaign(&self.pool, c.id, self.settings.config.campaigns.reply_window_hours).await?;
        }
        Ok(Some(c))
    }

    async fn card(&self, customer_id: Uuid) -> CoreResult<Option<serde_json::Value>> {
        store::card(&self.pool, customer_id).await
    }
}

/// Starts the module: reads its config section, wires itself into the hub, claims the
/// import jobs a stopped node left running and spawns the task that resumes them (and
/// keeps looking for such jobs), and returns its HTTP router.
pub async fn start(hub: &Hub, config: Option<toml::Value>, shutdown: tokio::sync::watch::Receiver<bool>) -> CoreResult<axum::Router<Hub>> {
    let settings = Arc::new(Settings::from_toml(config)?);
    hub.set_directory(Arc::new(CrmDirectory::new(hub.db().clone(), settings.clone())));
    hub.add_route_docs(ROUTES);
    // Imports a crashed or stopped node left behind: claimed now, run in the background.
    let orphans = jobs::claim_orphans(hub.db()).await?;
    tokio::spawn(jobs::supervise(hub.db().clone(), settings.clone(), orphans, shutdown.clone()));
    // Campaigns: every node may run the engine (claims are SKIP LOCKED).
    hub.add_route_docs(campaigns::api::ROUTES);
    let engine = campaigns::Engine::new(hub.db().clone(), Arc::new(settings.config.campaigns.clone()), hub.node_id());
    if settings.config.campaigns.worker {
        tokio::spawn(engine.clone().follow_appointment_signals(hub.events(), shutdown.clone()));
        tokio::spawn(engine.clone().run(shutdown.clone()));
    }
    tracing::info!(default_region = %settings.config.default_region, attributes = settings.config.attributes.len(), "CRM started.");
    Ok(api::router(api::Crm { settings: settings.clone(), shutdown, campaigns: engine.clone() })
        .merge(campaigns::api::router(engine, settings)))
}
