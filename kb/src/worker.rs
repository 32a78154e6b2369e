//! The index worker: drains `kb_index_outbox` into the search backend. Rows are claimed
//! with `for update skip locked` (several hub nodes may run it), coalesced per article,
//! and applied from the article's current state (present → upsert, gone → delete), so
//! order of edits never matters. A failure leaves the rows with `attempts + 1`, the error
//! and `next_attempt_at` pushed out exponentially; editing never waits for the backend.

use crate::config::KbConfig;
use crate::search::SearchBackend;
use crate::{articles, KbError};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

/// What the worker last saw (for the status endpoint).
#[derive(Debug, Default)]
pub struct WorkerState {
    /// Index settings applied since start.
    pub configured: AtomicBool,
    /// Articles indexed since start.
    pub indexed: AtomicU64,
    /// Last error and when.
    pub last_error: Mutex<Option<(String, DateTime<Utc>)>>,
    /// Last successful batch.
    pub last_success_at: Mutex<Option<DateTime<Utc>>>,
}

impl WorkerState {
    fn fail(&self, e: &KbError) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some((e.to_string(), Utc::now()));
        }
    }
    fn succeed(&self, n: usize) {
        self.indexed.fetch_add(n as u64, Ordering::Relaxed);
        if let Ok(mut g) = self.last_success_at.lock() {
            *g = Some(Utc::now());
        }
        if let Ok(mut g) = self.last_error.lock() {
            *g = None;
        }
    }
}

/// The outbox → index worker.
#[derive(Clone)]
pub struct IndexWorker {
    pool: PgPool,
    backend: Arc<dyn SearchBackend>,
    config: Arc<KbConfig>,
    /// Woken after every edit on this node.
    pub wake: Arc<Notify>,
    /// Observed state.
    pub state: Arc<WorkerState>,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    article_id: Uuid,
}

impl IndexWorker {
    /// A worker (not yet running).
    pub fn new(pool: PgPool, backend: Arc<dyn SearchBackend>, config: Arc<KbConfig>) -> IndexWorker {
        IndexWorker { pool, backend, config, wake: Arc::new(Notify::new()), state: Arc::new(WorkerState::default()) }
    }

    /// Runs until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.config.worker_poll_interval_ms);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let mut more = false;
            if !self.state.configured.load(Ordering::Relaxed) {
                match self.backend.configure().await {
                    Ok(()) => self.state.configured.store(true, Ordering::Relaxed),
                    Err(e) => {
                        tracing::warn!(backend = self.backend.name(), error = %e, "Search index settings not applied; will retry.");
                        self.state.fail(&e);
                    }
                }
            }
            if self.state.configured.load(Ordering::Relaxed) {
                match self.run_once().await {
                    Ok(n) => more = n as i64 >= self.config.batch_size,
                    Err(e) => tracing::warn!(backend = self.backend.name(), error = %e, "Search indexing failed; will retry."),
                }
            }
            if more {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
    }

    /// Applies one batch of due outbox rows; returns how many rows were applied.
    pub async fn run_once(&self) -> Result<usize, KbError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "select id, article_id from kb_index_outbox
             where next_attempt_at <= now() and attempts < $1
             order by id limit $2 for update skip locked",
        )
        .bind(self.config.max_attempts)
        .bind(self.config.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let row_ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let article_ids: Vec<Uuid> = rows.iter().map(|r| r.article_id).collect::<BTreeSet<_>>().into_iter().collect();
        let current: Vec<articles::Article> =
            sqlx::query_as(&format!("select {} from kb_articles where id = any($1)", articles::ARTICLE_COLUMNS))
                .bind(&article_ids)
                .fetch_all(&mut *tx)
                .await?;
        let present: BTreeSet<Uuid> = current.iter().map(|a| a.id).collect();
        let upserts: Vec<_> = current.iter().map(|a| a.index_doc()).collect();
        let deletes: Vec<Uuid> = article_ids.iter().filter(|id| !present.contains(id)).copied().collect();
        match self.backend.apply(&upserts, &deletes).await {
            Ok(()) => {
                sqlx::query("delete from kb_index_outbox where id = any($1)").bind(&row_ids).execute(&mut *tx).await?;
                tx.commit().await?;
                self.state.succeed(rows.len());
                Ok(rows.len())
            }
            Err(e) => {
                sqlx::query(
                    "update kb_index_outbox set attempts = attempts + 1, last_error = $2,
                         next_attempt_at = now() + make_interval(secs => least($3::float8 * power(2, attempts), $4::float8) / 1000.0)
                     where id = any($1)",
                )
                .bind(&row_ids)
                .bind(e.to_string())
                .bind(self.config.retry_base_ms as f64)
                .bind(self.config.retry_max_ms as f64)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                self.state.fail(&e);
                Err(e)
            }
        }
    }
}
