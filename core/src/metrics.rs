//! Prometheus text-format metrics with bounded label values.

use crate::domain::Channel;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Metrics a module or channel adapter keeps itself (core knows none of them), rendered
/// after core's own on `/metrics`: Prometheus text format with `# HELP`/`# TYPE` lines,
/// label values from a fixed set only.
pub trait MetricsSource: Send + Sync {
    /// Appends the source's metric families to `out`.
    fn render(&self, out: &mut String);
}

/// Counters and gauges of one node.
#[derive(Default)]
pub struct Metrics {
    ingested: [AtomicU64; 4],
    duplicates: [AtomicU64; 4],
    outbox_sent: AtomicU64,
    outbox_failed: AtomicU64,
    outbox_retry: AtomicU64,
    /// Router decisions committed by this node.
    pub router_assignments: AtomicU64,
    /// Router decisions refused by the database (capacity/race).
    pub router_conflicts: AtomicU64,
    /// HTTP requests served.
    pub http_requests: AtomicU64,
    /// HTTP responses with status >= 500.
    pub http_errors: AtomicU64,
    /// Open WebSocket connections (event stream and chat).
    pub websockets: AtomicU64,
    /// Inbound items written by the one-statement append to open conversations.
    pub ingest_appended: AtomicU64,
    /// Batched ingest statements that failed (their items then took a slower path).
    pub ingest_fallbacks: AtomicU64,
    /// Modules' own metrics by name (see [`Metrics::add_source`]).
    sources: RwLock<Vec<(String, Arc<dyn MetricsSource>)>>,
}

impl Metrics {
    /// Adds a module's metrics to the rendering; a source added again under the same
    /// name replaces the earlier one (several adapters of one kind render once).
    pub fn add_source(&self, name: &str, source: Arc<dyn MetricsSource>) {
        let mut sources = self.sources.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        sources.retain(|(n, _)| n != name);
        sources.push((name.to_string(), source));
    }

    /// Counts an ingested item.
    pub fn inc_ingested(&self, ch: Channel, duplicate: bool) {
        if duplicate {
            self.duplicates[ch.index()].fetch_add(1, Ordering::Relaxed);
        } else {
            self.ingested[ch.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an outbox outcome (`sent`, `failed`, `retry`).
    pub fn inc_outbox(&self, outcome: &str) {
        match outcome {
            "sent" => &self.outbox_sent,
            "failed" => &self.outbox_failed,
            _ => &self.outbox_retry,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the node's counters; `extra` holds gauges read from the database.
    pub fn render(&self, extra: &[(String, String, f64)]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP switchboard_ingested_total Inbound items committed, by channel.\n# TYPE switchboard_ingested_total counter"
        );
        for ch in Channel::ALL {
            let _ = writeln!(s, "switchboard_ingested_total{{channel=\"{ch}\"}} {}", self.ingested[ch.index()].load(Ordering::Relaxed));
        }
        let _ = writeln!(
            s,
            "# HELP switchboard_duplicates_total Replayed inbound items ignored, by channel.\n# TYPE switchboard_duplicates_total counter"
        );
        for ch in Channel::ALL {
            let _ = writeln!(s, "switchboard_duplicates_total{{channel=\"{ch}\"}} {}", self.duplicates[ch.index()].load(Ordering::Relaxed));
        }
        let _ = writeln!(s, "# HELP switchboard_outbox_total Outbox delivery outcomes.\n# TYPE switchboard_outbox_total counter");
        for (k, v) in [("sent", &self.outbox_sent), ("failed", &self.outbox_failed), ("retry", &self.outbox_retry)] {
            let _ = writeln!(s, "switchboard_outbox_total{{outcome=\"{k}\"}} {}", v.load(Ordering::Relaxed));
        }
        for (name, help, v) in [
            ("switchboard_router_assignments_total", "Offers committed by this node's router.", &self.router_assignments),
            ("switchboard_router_conflicts_total", "Router decisions refused by the database.", &self.router_conflicts),
            ("switchboard_http_requests_total", "HTTP requests served.", &self.http_requests),
            ("switchboard_http_errors_total", "HTTP responses with status 500 or more.", &self.http_errors),
            (
                "switchboard_ingest_appended_total",
                "Inbound items written by the one-statement append to open conversations.",
                &self.ingest_appended,
            ),
            (
                "switchboard_ingest_fallbacks_total",
                "Batched ingest statements that failed; their items were written by a slower path.",
                &self.ingest_fallbacks,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            s,
            "# HELP switchboard_websockets Open WebSocket connections.\n# TYPE switchboard_websockets gauge\nswitchboard_websockets {}",
            self.websockets.load(Ordering::Relaxed)
        );
        let sources: Vec<Arc<dyn MetricsSource>> =
            self.sources.read().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().map(|(_, src)| src.clone()).collect();
        for src in sources {
            src.render(&mut s);
        }
        let mut last = String::new();
        for (name, labels, v) in extra {
            if *name != last {
                let _ = writeln!(s, "# TYPE {name} gauge");
                last = name.clone();
            }
            let _ = writeln!(s, "{name}{labels} {v}");
        }
        s
    }
}
