//! Reports and the live wallboard. Every figure comes from `interaction_events`, the
//! single source, as defined in `docs/metrics.md`:
//! - [`rollup`]: the idempotent worker that keeps the rollup tables, and the range rebuild;
//! - [`interval`]: buckets, report intervals and time zones (DST-correct);
//! - [`measures`]: the figures of a rollup row;
//! - [`query`]: the reports, read from the rollups;
//! - [`wallboard`]: today's live figures, kept in memory from the event stream and
//!   pushed to every open wallboard as one delta per event batch.

pub mod interval;
pub mod measures;
pub mod query;
pub mod rollup;
pub mod wallboard;

use crate::hub::Hub;
pub use chrono_tz::Tz;
use serde::Deserialize;
use std::time::Duration;

/// `[reports]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSettings {
    /// IANA zone of reports when a request names none, of the daily rollups and of
    /// "today" on the wallboard.
    #[serde(default = "default_zone")]
    pub time_zone: String,
    /// Local time of day when the wallboard's "today" starts ("00:00").
    #[serde(default = "default_reset")]
    pub day_reset: String,
    /// Whether this node runs the rollup worker (every node may: one at a time holds the
    /// `reports:rollup` lease, and another takes over when it lapses).
    #[serde(default = "yes")]
    pub worker: bool,
    /// Milliseconds between worker passes when idle.
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
    /// Seconds an event id may stay missing (its transaction still open) before the worker
    /// passes it, to apply it if it appears later.
    #[serde(default = "default_gap")]
    pub gap_grace_secs: u64,
}

fn default_zone() -> String {
    "UTC".into()
}
fn default_reset() -> String {
    "00:00".into()
}
fn yes() -> bool {
    true
}
fn default_poll() -> u64 {
    500
}
fn default_gap() -> u64 {
    10
}

impl Default for ReportSettings {
    fn default() -> Self {
        ReportSettings {
            time_zone: default_zone(),
            day_reset: default_reset(),
            worker: true,
            poll_ms: default_poll(),
            gap_grace_secs: default_gap(),
        }
    }
}

impl ReportSettings {
    /// Parses the optional `[reports]` table.
    pub fn from_toml(v: Option<toml::Value>) -> Result<ReportSettings, crate::config::ConfigError> {
        let s: ReportSettings = match v {
            Some(v) => crate::config::typed("reports", v)?,
            None => ReportSettings::default(),
        };
        s.zone()?;
        s.reset()?;
        Ok(s)
    }

    /// The zone.
    pub fn zone(&self) -> Result<Tz, crate::config::ConfigError> {
        self.time_zone.parse::<Tz>().map_err(|_| crate::config::ConfigError {
            key: "reports.time_zone".into(),
            reason: format!("`{}` is not an IANA time zone", self.time_zone),
        })
    }

    /// The reset time.
    pub fn reset(&self) -> Result<chrono::NaiveTime, crate::config::ConfigError> {
        chrono::NaiveTime::parse_from_str(&self.day_reset, "%H:%M").map_err(|_| crate::config::ConfigError {
            key: "reports.day_reset".into(),
            reason: format!("`{}` is not HH:MM", self.day_reset),
        })
    }
}

/// Runs the rollup worker until shutdown: a pass whenever events arrive (at most one per
/// `poll_ms`), and every `poll_ms` anyway.
pub async fn run_worker(hub: Hub, settings: ReportSettings, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Ok(zone) = settings.zone() else { return };
    let mut gaps = rollup::Gaps::for_holder(hub.node_id());
    let poll = Duration::from_millis(settings.poll_ms.max(10));
    let grace = Duration::from_secs(settings.gap_grace_secs);
    let mut events = hub.events();
    loop {
        let mut more = false;
        match rollup::process_batch(hub.db(), zone, &mut gaps, grace).await {
            Ok(p) => more = p.events as i64 >= rollup::BATCH,
            Err(error) => tracing::warn!(%error, "Report rollup pass failed; retrying."),
        }
        if more {
            continue;
        }
        tokio::select! {
            _ = shutdown.changed() => {
                if let Err(error) = gaps.release(hub.db()).await {
                    tracing::warn!(%error, "Could not give the report rollup lease up.");
                }
                return;
            }
            _ = tokio::time::sleep(poll) => {}
        }
        // Sleep on until something happens (or a poll passes for late ids).
        while events.try_recv().is_ok() {}
    }
}

/// Starts the reports module: the rollup worker and the wallboard feed; returns the HTTP
/// routes (registered in the authorization table).
pub async fn start(
    hub: &Hub,
    config: Option<toml::Value>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> crate::CoreResult<axum::Router<Hub>> {
    let settings = ReportSettings::from_toml(config).map_err(|e| crate::CoreError::Internal(e.to_string()))?;
    if settings.worker {
        tokio::spawn(run_worker(hub.clone(), settings.clone(), shutdown.clone()));
    }
    let board = wallboard::Wallboard::start(hub.clone(), &settings, shutdown).await?;
    hub.add_route_docs(crate::api::reports::ROUTES);
    Ok(crate::api::reports::router(settings, board))
}
