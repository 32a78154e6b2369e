//! Database connection and migrations. The migration sequence lives in the workspace's
//! `migrations/` folder and is embedded into the binary at compile time.

use crate::config::DatabaseSettings;
use crate::embedded::EmbeddedPostgres;
use crate::error::{CoreError, CoreResult};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// The embedded migration sequence.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// An open database: the pool and, for the embedded default, the cluster that serves it.
pub struct Database {
    /// Connection pool.
    pub pool: PgPool,
    /// The embedded cluster, when no URL was configured.
    pub embedded: Option<EmbeddedPostgres>,
    /// Connect options (for dedicated connections such as the router lock and LISTEN).
    pub options: PgConnectOptions,
}

/// How the hub pools its connections ([`Database::open`] then sets `acquire_timeout` from
/// `database.acquire_timeout_ms`, so a request fails fast with 503 while the database is
/// down). A pooled connection is not pinged before each use (sqlx's default): that is one
/// more round trip per query on the hot paths, and a connection that broke meanwhile fails
/// its query, is dropped, and the caller's retry (a resend, the outbox's backoff) gets a
/// fresh one.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new().max_connections(max_connections).acquire_timeout(Duration::from_secs(10)).test_before_acquire(false)
}

impl Database {
    /// Opens the configured database or starts the embedded one (where the hub logs in as
    /// the non-superuser owner of the `switchboard` database).
    pub async fn open(s: &DatabaseSettings) -> CoreResult<Database> {
        let (options, embedded) = if s.url.trim().is_empty() {
            // Starts the cluster and makes sure the hub's role and database exist.
            let pg = EmbeddedPostgres::start(&s.data_dir).await?;
            (pg.connect_options(), Some(pg))
        } else {
            let o = PgConnectOptions::from_str(&s.url).map_err(|e| CoreError::Internal(format!("database.url: {e}")))?;
            (o, None)
        };
        let options = options.disable_statement_logging();
        // One direct connection first: a wrong URL or a server that is down fails now with
        // its own message ("connection refused", "password authentication failed"), not as
        // a pool timeout after `acquire_timeout_ms`.
        let probe = sqlx::PgConnection::connect_with(&options)
            .await
            .map_err(|e| CoreError::Internal(format!("cannot connect to the database: {e}")))?;
        let _ = probe.close().await;
        let pool = pool_options(s.max_connections)
            .acquire_timeout(Duration::from_millis(s.acquire_timeout_ms))
            .connect_with(options.clone())
            .await?;
        Ok(Database { pool, embedded, options })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> CoreResult<()> {
        MIGRATOR.run(&self.pool).await.map_err(|e| CoreError::Internal(format!("migration failed: {e}")))
    }
}
