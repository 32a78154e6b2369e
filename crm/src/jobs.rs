//! CSV import jobs started through the API, and their recovery after a crash or restart.
//!
//! The uploaded file is stored with the job (in `crm_import_job_data`, deleted when the
//! job ends) before the API answers, and a worker holds a session-level PostgreSQL
//! advisory lock on the job for as long as it runs it. A worker that dies, however it
//! dies, loses its connection and with it the lock. On start, and then every
//! [`SWEEP_INTERVAL`], each node looks for jobs still marked `running` whose lock it can
//! take: those are orphaned, and it resumes them after their last committed batch (each
//! batch commits its progress with its rows, so nothing is skipped or counted twice;
//! re-running rows would be harmless anyway, import being an idempotent upsert). A job
//! whose file is not stored (started by an older version) is marked failed with the
//! reason. A graceful shutdown leaves a running job to be resumed the same way.

use crate::config::Settings;
use crate::import::{self, ImportReport, RowError};
use axum::body::Bytes;
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::{CoreError, CoreResult};
use tokio::sync::watch;
use uuid::Uuid;

/// First key of the advisory locks on import jobs ("CRMI"); the second is
/// `hashtext(job id)`. Two-key locks never collide with single-key ones (the router's).
pub const IMPORT_LOCK_NAMESPACE: i32 = 0x4352_4d49;
/// How often a node looks for orphaned jobs after its start-up sweep.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Size of the stored chunks of an uploaded file.
const CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Failure reason of an orphaned job whose file was never stored.
pub const NO_DATA_REASON: &str =
    "interrupted by a restart, and its file was not kept (the job predates resumable imports); upload the file again (re-importing is safe)";

/// A job this worker holds the lock of, with the connection that holds it.
pub struct ClaimedJob {
    /// The job.
    pub id: Uuid,
    lock: PgConnection,
}

/// Creates a job and stores its file, in one transaction: once this returns, the job
/// survives a crash.
pub async fn create_job(pool: &PgPool, created_by: Option<Uuid>, data: &[u8]) -> CoreResult<Uuid> {
    let mut tx = pool.begin().await?;
    let job: Uuid = sqlx::query_scalar("insert into crm_import_jobs (created_by) values ($1) returning id")
        .bind(created_by)
        .fetch_one(&mut *tx)
        .await?;
    for (seq, chunk) in data.chunks(CHUNK_BYTES).enumerate() {
        sqlx::query("insert into crm_import_job_data (job_id, seq, data) values ($1, $2, $3)")
            .bind(job)
            .bind(seq as i32)
            .bind(chunk)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(job)
}

/// Takes the lock of a job that is still running and not held by a live worker.
pub async fn try_claim(pool: &PgPool, job: Uuid) -> CoreResult<Option<ClaimedJob>> {
    let mut lock = pool.acquire().await?.detach();
    let got: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, hashtext($2::text))")
        .bind(IMPORT_LOCK_NAMESPACE)
        .bind(job)
        .fetch_one(&mut lock)
        .await?;
    // Read the status after locking: a worker that just finished set it before letting go.
    let running = got
        && sqlx::query_scalar::<_, bool>("select status = 'running' from crm_import_jobs where id = $1")
            .bind(job)
            .fetch_optional(&mut lock)
            .await?
            .unwrap_or(false);
    if !running {
        let _ = lock.close().await;
        return Ok(None);
    }
    Ok(Some(ClaimedJob { id: job, lock }))
}

/// Claims every orphaned job: running, and its lock free. Jobs without a stored file are
/// marked failed here; the others are returned to be run.
pub async fn claim_orphans(pool: &PgPool) -> CoreResult<Vec<ClaimedJob>> {
    let ids: Vec<Uuid> =
        sqlx::query_scalar("select id from crm_import_jobs where status = 'running' order by created_at").fetch_all(pool).await?;
    let mut claimed = Vec::new();
    for id in ids {
        let Some(job) = try_claim(pool, id).await? else { continue };
        let stored: bool =
            sqlx::query_scalar("select exists (select 1 from crm_import_job_data where job_id = $1)").bind(id).fetch_one(pool).await?;
        if stored {
            sqlx::query("update crm_import_jobs set resumed = resumed + 1 where id = $1").bind(id).execute(pool).await?;
            tracing::info!(job = %id, "Resuming an interrupted CSV import.");
            claimed.push(job);
        } else {
            tracing::warn!(job = %id, "An interrupted CSV import cannot be resumed: its file was not kept.");
            finish(pool, job, Err(NO_DATA_REASON.to_string())).await?;
        }
    }
    Ok(claimed)
}

/// Runs a claimed job to its end (or until shutdown, leaving it to be resumed). `data` is
/// the file when the caller still has it; otherwise it is read back from the job.
pub async fn run(pool: &PgPool, settings: &Settings, job: ClaimedJob, data: Option<Bytes>, mut shutdown: watch::Receiver<bool>) {
    let id = job.id;
    let work = async {
        let data = match data {
            Some(d) => d,
            None => Bytes::from(load_data(pool, id).await?),
        };
        let start = load_progress(pool, id).await?;
        let quiet = |_: u64, _: u64| {};
        import::run_import(pool, settings, &data, Some(id), start, &quiet).await
    };
    let result = tokio::select! {
        r = work => Some(r),
        _ = shutdown.wait_for(|v| *v) => None,
    };
    let Some(result) = result else {
        tracing::info!(job = %id, "CSV import paused by shutdown; it resumes on the next start.");
        let _ = job.lock.close().await;
        return;
    };
    let outcome = match result {
        Ok(report) => Ok(report),
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "CSV import failed.");
            Err(match &e {
                CoreError::Database(_) | CoreError::Internal(_) => "internal error; it has been logged".to_string(),
                other => other.to_string(),
            })
        }
    };
    if let Err(e) = finish(pool, job, outcome).await {
        // The job stays `running`, its lock is gone: the next sweep picks it up again.
        tracing::warn!(job = %id, error = %e, "Could not record the import outcome.");
    }
}

/// Records the end of a job and drops its file, then lets go of the lock.
async fn finish(pool: &PgPool, job: ClaimedJob, outcome: Result<ImportReport, String>) -> CoreResult<()> {
    let mut tx = pool.begin().await?;
    match &outcome {
        Ok(report) => import::save_job(&mut *tx, job.id, report, Some("done")).await?,
        Err(reason) => {
            sqlx::query("update crm_import_jobs set status = 'failed', failure = $2, finished_at = now() where id = $1")
                .bind(job.id)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
        }
    }
    sqlx::query("delete from crm_import_job_data where job_id = $1").bind(job.id).execute(&mut *tx).await?;
    tx.commit().await?;
    let _ = job.lock.close().await;
    Ok(())
}

async fn load_data(pool: &PgPool, job: Uuid) -> CoreResult<Vec<u8>> {
    let chunks: Vec<Vec<u8>> =
        sqlx::query_scalar("select data from crm_import_job_data where job_id = $1 order by seq").bind(job).fetch_all(pool).await?;
    Ok(chunks.concat())
}

async fn load_progress(pool: &PgPool, job: Uuid) -> CoreResult<ImportReport> {
    let (done, created, updated, rejected, errors): (i64, i64, i64, i64, serde_json::Value) =
        sqlx::query_as("select done, created, updated, rejected, errors from crm_import_jobs where id = $1")
            .bind(job)
            .fetch_one(pool)
            .await?;
    let errors: Vec<RowError> = serde_json::from_value(errors).unwrap_or_default();
    Ok(ImportReport {
        total: 0,
        done: done.max(0) as u64,
        created: created.max(0) as u64,
        updated: updated.max(0) as u64,
        rejected: rejected.max(0) as u64,
        errors,
    })
}

/// Resumes the given claimed jobs one after the other, then sweeps for orphans every
/// [`SWEEP_INTERVAL`] until shutdown.
pub async fn supervise(pool: PgPool, settings: Arc<Settings>, first: Vec<ClaimedJob>, mut shutdown: watch::Receiver<bool>) {
    let mut claimed = first;
    loop {
        for job in claimed.drain(..) {
            if *shutdown.borrow() {
                let _ = job.lock.close().await;
                continue;
            }
            run(&pool, &settings, job, None, shutdown.clone()).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        match claim_orphans(&pool).await {
            Ok(jobs) => claimed = jobs,
            Err(e) => tracing::warn!(error = %e, "Could not look for interrupted CSV imports."),
        }
    }
}
