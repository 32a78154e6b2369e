//! Switchboard knowledge base: Markdown articles with version history, attachments and a
//! public flag, stored in PostgreSQL; search through a [`search::SearchBackend`] —
//! Meilisearch, or PostgreSQL full text as the embedded default — fed by a transactional
//! outbox (`kb_index_outbox`) and the [`worker::IndexWorker`], so a search outage never
//! blocks editing and the index catches up afterwards. HTTP routes in [`api::ROUTES`].

pub mod api;
pub mod articles;
pub mod config;
pub mod markdown;
pub mod search;
pub mod worker;

pub use api::ROUTES;
pub use config::{BackendKind, KbConfig};
pub use search::{SearchBackend, SearchQuery};

use sqlx::PgPool;
use std::sync::Arc;
use switchboard_core::{CoreError, CoreResult, Hub};
use tokio::sync::watch;
use uuid::Uuid;

/// Errors of the knowledge base.
#[derive(Debug, thiserror::Error)]
pub enum KbError {
    /// The `[kb]` section is invalid.
    #[error("[kb] configuration: {0}")]
    Config(String),
    /// The search backend failed or is unreachable.
    #[error("search backend: {0}")]
    Backend(String),
    /// Database failure.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Anything else.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<KbError> for CoreError {
    fn from(e: KbError) -> Self {
        match e {
            KbError::Database(e) => CoreError::Database(e),
            KbError::Backend(detail) => {
                tracing::warn!(error = %detail, "Search backend unavailable.");
                CoreError::Channel("search is temporarily unavailable".into())
            }
            KbError::Config(m) => CoreError::Internal(format!("[kb] configuration: {m}")),
            KbError::Internal(m) => CoreError::Internal(m),
        }
    }
}

/// The running knowledge base: configuration, search backend and index worker.
pub struct Kb {
    /// Configuration.
    pub config: Arc<KbConfig>,
    /// The search backend queries go to.
    pub backend: Arc<dyn SearchBackend>,
    /// The outbox worker (its wake handle and state).
    pub worker: worker::IndexWorker,
}

/// Starts the module: reads its config section, wires itself into the hub, spawns its
/// background tasks, and returns its HTTP router.
pub async fn start(hub: &Hub, config: Option<toml::Value>, shutdown: watch::Receiver<bool>) -> CoreResult<axum::Router<Hub>> {
    let config = KbConfig::from_toml(config)?;
    let backend = search::build_backend(hub.db(), &config)?;
    let (router, _) = start_with_backend(hub, config, backend, shutdown).await?;
    Ok(router)
}

/// Like [`start`] with a parsed config and a given backend (tests wrap the backend to
/// simulate outages); also returns the [`Kb`] handle.
pub async fn start_with_backend(
    hub: &Hub,
    config: KbConfig,
    backend: Arc<dyn SearchBackend>,
    shutdown: watch::Receiver<bool>,
) -> CoreResult<(axum::Router<Hub>, Arc<Kb>)> {
    config.validate()?;
    let config = Arc::new(config);
    let worker = worker::IndexWorker::new(hub.db().clone(), backend.clone(), config.clone());
    tokio::spawn(worker.clone().run(shutdown));
    tracing::info!(backend = backend.name(), "Knowledge base started.");
    let kb = Arc::new(Kb { config, backend, worker });
    hub.add_route_docs(ROUTES);
    Ok((api::router(kb.clone()), kb))
}

/// Rebuilds the search index from `kb_articles` (for `switchboard kb reindex`): applies
/// the index settings, upserts every article in batches calling `progress(done, total)`
/// after each, removes documents of articles that no longer exist, and re-arms outbox
/// rows that gave up retrying. Returns the number of articles indexed.
pub async fn reindex(pool: &PgPool, config: Option<toml::Value>, progress: impl Fn(u64, u64)) -> CoreResult<u64> {
    let config = KbConfig::from_toml(config)?;
    let backend = search::build_backend(pool, &config)?;
    Ok(reindex_with(pool, backend.as_ref(), progress).await?)
}

/// [`reindex`] into a given backend.
pub async fn reindex_with(pool: &PgPool, backend: &dyn SearchBackend, progress: impl Fn(u64, u64)) -> Result<u64, KbError> {
    backend.configure().await?;
    let (total,): (i64,) = sqlx::query_as("select count(*) from kb_articles").fetch_one(pool).await?;
    let total = total.max(0) as u64;
    progress(0, total);
    let mut done = 0u64;
    let mut after = Uuid::nil();
    let mut keep: Vec<Uuid> = Vec::with_capacity(total as usize);
    loop {
        let batch: Vec<articles::Article> =
            sqlx::query_as(&format!("select {} from kb_articles where id > $1 order by id limit 500", articles::ARTICLE_COLUMNS))
                .bind(after)
                .fetch_all(pool)
                .await?;
        let Some(last) = batch.last() else { break };
        after = last.id;
        let docs: Vec<_> = batch.iter().map(|a| a.index_doc()).collect();
        backend.apply(&docs, &[]).await?;
        keep.extend(batch.iter().map(|a| a.id));
        done += batch.len() as u64;
        progress(done, total.max(done));
    }
    backend.retain_only(&keep).await?;
    // Pending outbox rows stay (re-applying them is harmless and avoids racing edits made
    // during the scan); rows that gave up retrying get a fresh start.
    sqlx::query("update kb_index_outbox set attempts = 0, next_attempt_at = now(), last_error = null where last_error is not null")
        .execute(pool)
        .await?;
    Ok(done)
}
