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
            let hosts = HostList::parse(&s.url)?;
            let o = if hosts.candidates.len() > 1 || hosts.read_write {
                // A multi-host URL (libpq style): connect to the first host that answers
                // and, with target_session_attrs=read-write, accepts writes.
                hosts.find_primary(Duration::from_secs(5)).await?
            } else {
                hosts.candidates[0].clone()
            };
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

/// The hosts of a libpq-style multi-host URL
/// (`postgres://user@db1:5432,db2:5432/switchboard?target_session_attrs=read-write`), which
/// sqlx does not parse itself: one set of connect options per host, and whether only a
/// primary that accepts writes will do (`read-write` or `primary`).
#[derive(Debug, Clone)]
pub struct HostList {
    /// Connect options per host, in the URL's order.
    pub candidates: Vec<PgConnectOptions>,
    /// Whether a host must accept writes (not be in recovery).
    pub read_write: bool,
}

impl HostList {
    /// Parses `url`; a single-host URL gives one candidate.
    pub fn parse(url: &str) -> CoreResult<HostList> {
        let bad = |e: String| CoreError::Internal(format!("database.url: {e}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("expected postgres://…".into()))?;
        // The authority ends at the first '/' or '?' after the user info.
        let at = rest.find(['/', '?']).map(|end| rest[..end].rfind('@')).unwrap_or_else(|| rest.rfind('@'));
        let host_start = at.map(|i| i + 1).unwrap_or(0);
        let host_end = rest[host_start..].find(['/', '?']).map(|i| host_start + i).unwrap_or(rest.len());
        let userinfo = &rest[..host_start];
        let hosts = &rest[host_start..host_end];
        let tail = &rest[host_end..];
        // target_session_attrs is libpq's; take it out of the query for sqlx.
        let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
        let mut read_write = false;
        let mut kept = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("target_session_attrs", v)) => match v {
                    "read-write" | "primary" => read_write = true,
                    "any" => read_write = false,
                    other => return Err(bad(format!("target_session_attrs={other} is not supported (read-write, primary or any)"))),
                },
                _ => kept.push(kv),
            }
        }
        let query = if kept.is_empty() { String::new() } else { format!("?{}", kept.join("&")) };
        let mut candidates = Vec::new();
        for host in hosts.split(',') {
            let one = format!("{scheme}://{userinfo}{host}{path}{query}");
            candidates.push(PgConnectOptions::from_str(&one).map_err(|e| bad(e.to_string()))?);
        }
        if candidates.is_empty() {
            return Err(bad("no host".into()));
        }
        Ok(HostList { candidates, read_write })
    }

    /// The first candidate that answers (and accepts writes, when required), each tried
    /// for at most `timeout`.
    pub async fn find_primary(&self, timeout: Duration) -> CoreResult<PgConnectOptions> {
        let mut errors = Vec::new();
        for o in &self.candidates {
            let o = o.clone().disable_statement_logging();
            let tried = tokio::time::timeout(timeout, async {
                let mut c = sqlx::PgConnection::connect_with(&o).await?;
                let standby: bool =
                    if self.read_write { sqlx::query_scalar("select pg_is_in_recovery()").fetch_one(&mut c).await? } else { false };
                let _ = c.close().await;
                Ok::<bool, sqlx::Error>(standby)
            })
            .await;
            match tried {
                Ok(Ok(false)) => return Ok(o),
                Ok(Ok(true)) => errors.push(format!("{}:{} is a standby", o.get_host(), o.get_port())),
                Ok(Err(e)) => errors.push(format!("{}:{}: {e}", o.get_host(), o.get_port())),
                Err(_) => errors.push(format!("{}:{}: timed out", o.get_host(), o.get_port())),
            }
        }
        Err(CoreError::Internal(format!("no usable database host: {}", errors.join("; "))))
    }
}

/// Follows a primary change for a multi-host `url` until shutdown: checks about once a
/// second that the pool's server answers and accepts writes; when it does not (the primary
/// died, or came back as a standby), finds the host that is primary now and points the
/// pool there. Connections to the old server fail their next query and are dropped; the
/// router and the event listener reconnect through the pool's new options.
pub async fn watch_primary(url: String, pool: PgPool, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let hosts = match HostList::parse(&url) {
        Ok(h) if h.candidates.len() > 1 => h,
        _ => return,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        let current = pool.connect_options();
        // A dedicated connection, not a pooled one: the pool may be full of dead ones.
        let healthy = tokio::time::timeout(Duration::from_secs(2), async {
            let mut c = sqlx::PgConnection::connect_with(&current).await?;
            let standby: bool = sqlx::query_scalar("select pg_is_in_recovery()").fetch_one(&mut c).await?;
            let _ = c.close().await;
            Ok::<bool, sqlx::Error>(!standby || !hosts.read_write)
        })
        .await;
        if matches!(healthy, Ok(Ok(true))) {
            continue;
        }
        match hosts.find_primary(Duration::from_secs(2)).await {
            Ok(o) if (o.get_host(), o.get_port()) != (current.get_host(), current.get_port()) => {
                tracing::warn!(from = %format!("{}:{}", current.get_host(), current.get_port()),
                    to = %format!("{}:{}", o.get_host(), o.get_port()), "Database primary changed; reconnecting there.");
                pool.set_connect_options(o);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "No database primary reachable; retrying."),
        }
    }
}

#[cfg(test)]
mod host_list_tests {
    use super::*;

    #[test]
    fn a_multi_host_url_gives_one_candidate_per_host() {
        let h =
            HostList::parse("postgres://sb:p%40ss@db1:5433,db2,10.0.0.3:6000/switchboard?target_session_attrs=read-write&sslmode=disable")
                .unwrap();
        assert!(h.read_write);
        let hp: Vec<(String, u16)> = h.candidates.iter().map(|o| (o.get_host().to_string(), o.get_port())).collect();
        assert_eq!(hp, vec![("db1".into(), 5433), ("db2".into(), 5432), ("10.0.0.3".into(), 6000)]);
        assert!(h.candidates.iter().all(|o| o.get_database() == Some("switchboard") && o.get_username() == "sb"));
        let one = HostList::parse("postgres://postgres@127.0.0.1/postgres").unwrap();
        assert_eq!((one.candidates.len(), one.read_write), (1, false));
        assert!(HostList::parse("postgres://a@h1,h2/db?target_session_attrs=standby").is_err());
    }
}
