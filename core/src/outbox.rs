//! The outbox: outbound messages are rows first (with an idempotency key), delivered by a
//! worker second, with retries and exponential backoff, and a final status.

use crate::adapter::{AdapterError, Outbound};
use crate::bus::{self, NewEvent};
use crate::config::OutboxSettings;
use crate::domain::Channel;
use crate::error::CoreResult;
use crate::hub::Hub;
use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;

/// A message to send.
#[derive(Debug, Clone)]
pub struct NewOutbound {
    /// Unique key: a second insert with the same key is a no-op.
    pub idempotency_key: String,
    /// Channel.
    pub channel: Channel,
    /// Interaction, if any.
    pub interaction_id: Option<Uuid>,
    /// Message row, if any.
    pub message_id: Option<Uuid>,
    /// Recipient address.
    pub recipient: String,
    /// Subject.
    pub subject: Option<String>,
    /// Body.
    pub body: String,
    /// Channel-specific data; `adapter` names a specific adapter instance.
    pub metadata: serde_json::Value,
}

/// Inserts an outbox row in the caller's transaction. Returns the id (existing on replay).
pub async fn enqueue_tx(conn: &mut PgConnection, m: NewOutbound) -> CoreResult<Uuid> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "insert into outbox (idempotency_key, channel, interaction_id, message_id, recipient, subject, body, metadata)
         values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict (idempotency_key) do nothing returning id",
    )
    .bind(&m.idempotency_key)
    .bind(m.channel.as_str())
    .bind(m.interaction_id)
    .bind(m.message_id)
    .bind(&m.recipient)
    .bind(&m.subject)
    .bind(&m.body)
    .bind(&m.metadata)
    .fetch_optional(&mut *conn)
    .await?;
    match id {
        Some(id) => Ok(id),
        None => Ok(sqlx::query_scalar("select id from outbox where idempotency_key = $1").bind(&m.idempotency_key).fetch_one(conn).await?),
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    idempotency_key: String,
    channel: String,
    interaction_id: Option<Uuid>,
    recipient: String,
    subject: Option<String>,
    body: String,
    metadata: serde_json::Value,
    attempts: i32,
    max_attempts: i32,
}

/// Delay before attempt `n+1` after `n` failures: base × 2^(n-1), capped at 10 minutes.
pub fn backoff(base_ms: u64, attempts: i32) -> Duration {
    let exp = (attempts.max(1) - 1).min(20) as u32;
    Duration::from_millis(base_ms.saturating_mul(1u64 << exp).min(600_000))
}

/// Claims and delivers due rows until none are due. Returns how many were attempted.
pub async fn deliver_due(hub: &Hub, s: &OutboxSettings) -> CoreResult<usize> {
    let mut done = 0;
    loop {
        // Claim one row; SKIP LOCKED lets several nodes work the outbox at once. A row
        // stuck in `sending` (node died mid-send) becomes due again after its lease.
        let mut tx = hub.db().begin().await?;
        let row: Option<Row> = sqlx::query_as(
            "select id, idempotency_key, channel, interaction_id, recipient, subject, body, metadata, attempts, max_attempts
             from outbox where status in ('pending','sending') and next_attempt_at <= now()
             order by next_attempt_at limit 1 for update skip locked",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(done) };
        sqlx::query(
            "update outbox set status = 'sending', attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $2) where id = $1",
        )
        .bind(row.id)
        .bind(s.sending_lease_secs as f64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        done += 1;
        let attempt = row.attempts + 1;
        let channel: Channel = match row.channel.parse() {
            Ok(c) => c,
            Err(e) => {
                finish(hub, &row, Err(AdapterError::Permanent(e)), attempt, s).await?;
                continue;
            }
        };
        let adapter_name = row.metadata.get("adapter").and_then(|v| v.as_str()).map(str::to_string);
        let result = match hub.adapter_for(channel, adapter_name.as_deref()) {
            None => Err(AdapterError::Temporary(format!("no {channel} adapter is running"))),
            Some(a) => {
                let msg = Outbound {
                    id: row.id,
                    idempotency_key: row.idempotency_key.clone(),
                    channel,
                    interaction_id: row.interaction_id,
                    recipient: row.recipient.clone(),
                    subject: row.subject.clone(),
                    body: row.body.clone(),
                    metadata: row.metadata.clone(),
                    attempt,
                };
                match tokio::time::timeout(Duration::from_secs(60), a.deliver(&msg)).await {
                    Ok(r) => r,
                    Err(_) => Err(AdapterError::Temporary("delivery timed out after 60 s".into())),
                }
            }
        };
        finish(hub, &row, result.map(|r| r.provider_id), attempt, s).await?;
    }
}

async fn finish(hub: &Hub, row: &Row, result: Result<Option<String>, AdapterError>, attempt: i32, s: &OutboxSettings) -> CoreResult<()> {
    let mut tx = hub.db().begin().await?;
    let max = row.max_attempts.min(s.max_attempts);
    let (kind, data) = match result {
        Ok(provider_id) => {
            sqlx::query("update outbox set status = 'sent', sent_at = now(), provider_id = $2, last_error = null where id = $1")
                .bind(row.id)
                .bind(&provider_id)
                .execute(&mut *tx)
                .await?;
            hub.metrics().inc_outbox("sent");
            ("delivered", serde_json::json!({ "outbox_id": row.id, "provider_id": provider_id }))
        }
        Err(e) => {
            let permanent = matches!(e, AdapterError::Permanent(_) | AdapterError::Config(_));
            if permanent || attempt >= max {
                sqlx::query("update outbox set status = 'failed', last_error = $2 where id = $1")
                    .bind(row.id)
                    .bind(e.to_string())
                    .execute(&mut *tx)
                    .await?;
                hub.metrics().inc_outbox("failed");
                tracing::warn!(outbox_id = %row.id, attempt, error = %e, "Outbound message failed for good.");
                ("delivery_failed", serde_json::json!({ "outbox_id": row.id, "error": e.to_string() }))
            } else {
                let delay = backoff(s.backoff_ms, attempt);
                sqlx::query("update outbox set status = 'pending', last_error = $2, next_attempt_at = now() + make_interval(secs => $3) where id = $1")
                    .bind(row.id)
                    .bind(e.to_string())
                    .bind(delay.as_secs_f64())
                    .execute(&mut *tx)
                    .await?;
                hub.metrics().inc_outbox("retry");
                tracing::info!(outbox_id = %row.id, attempt, delay_ms = delay.as_millis() as u64, error = %e, "Outbound message will be retried.");
                tx.commit().await?;
                return Ok(());
            }
        }
    };
    if let Some(iid) = row.interaction_id {
        bus::record(&mut tx, NewEvent::interaction(kind, iid).with_data(data)).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Runs the outbox worker until shutdown: `outbox.workers` delivery loops at once.
pub async fn run_worker(hub: Hub, shutdown: tokio::sync::watch::Receiver<bool>) {
    let n = hub.settings().outbox.workers.max(1);
    let loops: Vec<_> = (0..n).map(|_| tokio::spawn(run_loop(hub.clone(), shutdown.clone()))).collect();
    for l in loops {
        let _ = l.await;
    }
}

async fn run_loop(hub: Hub, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let s = hub.settings().outbox.clone();
    let mut events = hub.events();
    loop {
        if let Err(e) = deliver_due(&hub, &s).await {
            tracing::warn!(error = %e, "Outbox pass failed.");
        }
        let wait = tokio::time::sleep(Duration::from_millis(s.poll_ms));
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = wait => {}
            // A reply or campaign message was committed: wake at once.
            ev = events.recv() => match ev {
                Ok(ev) if ev.kind == "message" && ev.data.get("direction").and_then(|d| d.as_str()) == Some("outbound") => {}
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(super::backoff(1000, 1).as_millis(), 1000);
        assert_eq!(super::backoff(1000, 3).as_millis(), 4000);
        assert_eq!(super::backoff(1000, 40).as_millis(), 600_000);
    }
}
