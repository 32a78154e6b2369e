//! Test support shared by every crate's tests (feature `test-support`): a throwaway
//! database per test on the PostgreSQL server named by `SWITCHBOARD_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`), migrated, dropped afterwards.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;

/// The admin URL tests create databases through.
pub fn admin_url() -> String {
    std::env::var("SWITCHBOARD_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A fresh, migrated database that is dropped when this value is dropped.
pub struct TestDb {
    /// Database name.
    pub name: String,
    /// Connect options for it.
    pub options: PgConnectOptions,
    /// A pool on it.
    pub pool: PgPool,
    admin: PgConnectOptions,
}

impl TestDb {
    /// Creates and migrates a new database.
    pub async fn new() -> TestDb {
        let admin =
            PgConnectOptions::from_str(&admin_url()).expect("SWITCHBOARD_TEST_DATABASE_URL is not a valid URL").disable_statement_logging();
        let name = format!("sbt_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin.connect().await.unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {}: {e}", admin_url()));
        sqlx::query(&format!("create database {name}")).execute(&mut conn).await.expect("create test database");
        let _ = conn.close().await;
        let options = admin.clone().database(&name);
        let pool = PgPoolOptions::new().max_connections(20).connect_with(options.clone()).await.expect("connect test database");
        crate::db::MIGRATOR.run(&pool).await.expect("migrate test database");
        TestDb { name, options, pool, admin }
    }

    /// A URL for child processes.
    pub fn url(&self) -> String {
        let base = admin_url();
        match base.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{}", self.name),
            None => base,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        let pool = self.pool.clone();
        // Drop on a separate thread with its own runtime: Drop can't await, and the test's
        // runtime may already be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(_) => return,
            };
            rt.block_on(async move {
                // A connection may still be checked out by a task of the test's runtime,
                // which cannot run while this blocks: don't wait for it forever, the forced
                // drop below ends it.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), pool.close()).await;
                if let Ok(mut c) = admin.connect().await {
                    let _ = sqlx::query(&format!("drop database if exists {name} with (force)")).execute(&mut c).await;
                }
            });
        })
        .join();
    }
}
