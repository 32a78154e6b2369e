//! The outbox: outbound messages are rows first (with an idempotency key), delivered by a
//! worker second, with retries and exponential backoff, and a final status.

use crate::adapter::{AdapterError, Outbound};
use crate::bus::{self, NewEvent};
use crate::config::OutboxSettings;
use crate::domain::Channel;
use crate::error::CoreResult;
use crate::hub::Hub;
use sqlx::PgConnection;
use std::collections::HashMap;
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
    let ids = enqueue_many_tx(conn, std::slice::from_ref(&m)).await?;
    ids.into_iter().next().ok_or_else(|| crate::CoreError::Internal("the outbox insert answered no id".into()))
}

/// Inserts many outbox rows in the caller's transaction, in one statement. Returns their
/// ids in order (the existing row's id for a key already there).
pub async fn enqueue_many_tx(conn: &mut PgConnection, ms: &[NewOutbound]) -> CoreResult<Vec<Uuid>> {
    if ms.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<&str> = ms.iter().map(|m| m.idempotency_key.as_str()).collect();
    let channels: Vec<&str> = ms.iter().map(|m| m.channel.as_str()).collect();
    let interactions: Vec<Option<Uuid>> = ms.iter().map(|m| m.interaction_id).collect();
    let messages: Vec<Option<Uuid>> = ms.iter().map(|m| m.message_id).collect();
    let recipients: Vec<&str> = ms.iter().map(|m| m.recipient.as_str()).collect();
    let subjects: Vec<Option<&str>> = ms.iter().map(|m| m.subject.as_deref()).collect();
    let bodies: Vec<&str> = ms.iter().map(|m| m.body.as_str()).collect();
    let metadata: Vec<&serde_json::Value> = ms.iter().map(|m| &m.metadata).collect();
    // The new rows answer with their ids; only keys already there are looked up after.
    let mut ids: HashMap<String, Uuid> = sqlx::query_as::<_, (String, Uuid)>(
        "insert into outbox (idempotency_key, channel, interaction_id, message_id, recipient, subject, body, metadata)
         select * from unnest($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::jsonb[])
         on conflict (idempotency_key) do nothing returning idempotency_key, id",
    )
    .bind(&keys)
    .bind(&channels)
    .bind(&interactions)
    .bind(&messages)
    .bind(&recipients)
    .bind(&subjects)
    .bind(&bodies)
    .bind(&metadata)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let existing: Vec<&str> = keys.iter().copied().filter(|k| !ids.contains_key(*k)).collect();
    if !existing.is_empty() {
        ids.extend(
            sqlx::query_as::<_, (String, Uuid)>("select idempotency_key, id from outbox where idempotency_key = any($1)")
                .bind(&existing)
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    keys.iter()
        .map(|k| ids.get(*k).copied().ok_or_else(|| crate::CoreError::Internal(format!("outbox row {k} vanished while being written"))))
        .collect()
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
    /// Attempts including this one (the claim counted it).
    attempts: i32,
    max_attempts: i32,
}

/// Delay before attempt `n+1` after `n` failures: base × 2^(n-1), capped at 10 minutes.
pub fn backoff(base_ms: u64, attempts: i32) -> Duration {
    let exp = (attempts.max(1) - 1).min(20) as u32;
    Duration::from_millis(base_ms.saturating_mul(1u64 << exp).min(600_000))
}

/// Claims and delivers due rows until none are due. Returns how many were attempted.
///
/// Rows go in batches: one statement claims up to `claim_batch` rows and marks them
/// `sending` (one commit), the batch is delivered concurrently — rows of one conversation
/// (or one recipient) in their order, one after the other — and every outcome of the batch
/// is recorded in one transaction. A commit is the scarce resource (this is what one disk
/// flush buys), so a batch costs two of them instead of two per message.
pub async fn deliver_due(hub: &Hub, s: &OutboxSettings) -> CoreResult<usize> {
    let mut done = 0;
    loop {
        let rows = claim(hub, s).await?;
        if rows.is_empty() {
            return Ok(done);
        }
        done += rows.len();
        let mut lanes: Vec<Vec<Row>> = Vec::new();
        let mut lane_of: HashMap<String, usize> = HashMap::new();
        for row in rows {
            let key = match row.interaction_id {
                Some(i) => i.to_string(),
                None => format!("{}:{}", row.channel, row.recipient),
            };
            match lane_of.get(&key) {
                Some(&l) => lanes[l].push(row),
                None => {
                    lane_of.insert(key, lanes.len());
                    lanes.push(vec![row]);
                }
            }
        }
        let outcomes: Vec<(Row, Result<Option<String>, AdapterError>)> =
            futures::future::join_all(lanes.into_iter().map(|lane| async move {
                let mut out = Vec::with_capacity(lane.len());
                for row in lane {
                    let result = deliver_one(hub, &row).await;
                    out.push((row, result));
                }
                out
            }))
            .await
            .into_iter()
            .flatten()
            .collect();
        record(hub, s, outcomes).await?;
    }
}

/// Claims up to `claim_batch` due rows and marks them `sending` in one statement; SKIP
/// LOCKED lets several loops and nodes work the outbox at once. A row stuck in `sending`
/// (its node died mid-send) becomes due again when its lease runs out; the channel then
/// decides whether it may send again (SMS: a submit that may have gone is `unknown`).
///
/// The due rows are read in `outbox_due` order, never gathered and sorted: when the
/// statistics lag behind a burst (a campaign hands over thousands of rows between two
/// ANALYZE runs) the planner thinks few rows are due and picks a bitmap scan that reads and
/// sorts every due row on each claim — 46 % of the database server's time in the campaign
/// benchmark. Bitmap and sequential scans are off for this one statement.
///
/// Rows of a channel this node cannot deliver now ([`Hub::channels_delivered_elsewhere`]:
/// the SMPP bind is another node's) are not claimed at all. Such a node then reads each
/// channel it can deliver in its own due order (`outbox_due_by_channel`), so a campaign's
/// backlog of due SMS is not walked past on every claim; the first `claim_batch` of their
/// union by due time are taken.
async fn claim(hub: &Hub, s: &OutboxSettings) -> CoreResult<Vec<Row>> {
    let elsewhere = hub.channels_delivered_elsewhere();
    let due = if elsewhere.is_empty() {
        // The index order (outbox_due): sorting by anything more would read and sort every
        // due row on each claim.
        "due as (
             select id from outbox where status in ('pending','sending') and next_attempt_at <= now()
              order by next_attempt_at limit $1 for update skip locked)"
            .to_string()
    } else {
        let here: Vec<Channel> = Channel::ALL.iter().copied().filter(|c| !elsewhere.contains(c)).collect();
        if here.is_empty() {
            return Ok(Vec::new());
        }
        // One locking read per channel (FOR UPDATE cannot sit under a UNION), each in its
        // index order; rows locked but not among the first `$1` are free at the commit.
        let mut parts: Vec<String> = here
            .iter()
            .map(|c| {
                format!(
                    "due_{c} as (
                         select id, next_attempt_at from outbox
                          where channel = '{c}' and status in ('pending','sending') and next_attempt_at <= now()
                          order by next_attempt_at limit $1 for update skip locked)",
                    c = c.as_str()
                )
            })
            .collect();
        let union: Vec<String> = here.iter().map(|c| format!("select id, next_attempt_at from due_{}", c.as_str())).collect();
        parts.push(format!("due as (select id from ({}) u order by next_attempt_at limit $1)", union.join(" union all ")));
        parts.join(",\n")
    };
    let mut tx = hub.db().begin().await?;
    index_order_only(&mut tx).await?;
    let rows = sqlx::query_as(&format!(
        "with {due},
         claimed as (
             update outbox o set status = 'sending', attempts = o.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
               from due where o.id = due.id
             returning o.id, o.idempotency_key, o.channel, o.interaction_id, o.recipient, o.subject, o.body, o.metadata,
                       o.attempts, o.max_attempts, o.created_at)
         -- A conversation's rows are delivered in the order they were written.
         select id, idempotency_key, channel, interaction_id, recipient, subject, body, metadata, attempts, max_attempts
           from claimed order by created_at, id"
    ))
    .bind(s.claim_batch.max(1) as i64)
    .bind(s.sending_lease_secs as f64)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// For the rest of the caller's transaction, a claim of the first due rows walks its index
/// in order (stopping at the batch size) instead of a bitmap or sequential scan that reads
/// every due row and sorts them, which the planner picks when its row estimate is stale.
pub async fn index_order_only(tx: &mut PgConnection) -> CoreResult<()> {
    sqlx::query("select set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)").execute(&mut *tx).await?;
    Ok(())
}

/// Undoes [`index_order_only`] for the rest of the caller's transaction.
pub async fn any_scan(tx: &mut PgConnection) -> CoreResult<()> {
    sqlx::query("select set_config(name, reset_val, true) from pg_settings where name in ('enable_bitmapscan', 'enable_seqscan')")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn deliver_one(hub: &Hub, row: &Row) -> Result<Option<String>, AdapterError> {
    let channel: Channel = row.channel.parse().map_err(AdapterError::Permanent)?;
    let adapter_name = row.metadata.get("adapter").and_then(|v| v.as_str());
    let Some(a) = hub.adapter_for(channel, adapter_name) else {
        return Err(AdapterError::Temporary(format!("no {channel} adapter is running")));
    };
    let msg = Outbound {
        id: row.id,
        idempotency_key: row.idempotency_key.clone(),
        channel,
        interaction_id: row.interaction_id,
        recipient: row.recipient.clone(),
        subject: row.subject.clone(),
        body: row.body.clone(),
        metadata: row.metadata.clone(),
        attempt: row.attempts,
    };
    match tokio::time::timeout(Duration::from_secs(60), a.deliver(&msg)).await {
        Ok(r) => r.map(|r| r.provider_id),
        Err(_) => Err(AdapterError::Temporary("delivery timed out after 60 s".into())),
    }
}

/// Records a batch's outcomes in one transaction: sent, failed for good, or due again
/// after a backoff. An outcome only lands on the attempt that produced it (a row taken
/// over by another node after its lease ran out is that node's to record).
async fn record(hub: &Hub, s: &OutboxSettings, outcomes: Vec<(Row, Result<Option<String>, AdapterError>)>) -> CoreResult<()> {
    let n = outcomes.len();
    let (mut ids, mut attempts, mut statuses) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut providers, mut errors, mut delays) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let mut counted = Vec::with_capacity(n);
    let mut events = Vec::new();
    for (row, result) in &outcomes {
        ids.push(row.id);
        attempts.push(row.attempts);
        let max = row.max_attempts.min(s.max_attempts);
        counted.push(!matches!(result, Err(AdapterError::Elsewhere(_))));
        let (status, provider, error, delay): (&str, Option<String>, Option<String>, Option<f64>) = match result {
            Ok(provider_id) => {
                hub.metrics().inc_outbox("sent");
                if let Some(iid) = row.interaction_id {
                    let data = serde_json::json!({ "outbox_id": row.id, "provider_id": provider_id });
                    events.push(NewEvent::interaction("delivered", iid).with_data(data));
                }
                ("sent", provider_id.clone(), None, None)
            }
            Err(e @ AdapterError::Elsewhere(_)) => {
                // Not this node's to send (its claim is handed back uncounted): due again
                // soon, for whichever node claims it next; the one that can delivers it.
                ("pending", None, Some(e.to_string()), Some(Duration::from_millis(s.backoff_ms.min(500)).as_secs_f64()))
            }
            Err(e) if matches!(e, AdapterError::Permanent(_) | AdapterError::Config(_)) || row.attempts >= max => {
                hub.metrics().inc_outbox("failed");
                tracing::warn!(outbox_id = %row.id, attempt = row.attempts, error = %e, "Outbound message failed for good.");
                if let Some(iid) = row.interaction_id {
                    let data = serde_json::json!({ "outbox_id": row.id, "error": e.to_string() });
                    events.push(NewEvent::interaction("delivery_failed", iid).with_data(data));
                }
                ("failed", None, Some(e.to_string()), None)
            }
            Err(e) => {
                let delay = backoff(s.backoff_ms, row.attempts);
                hub.metrics().inc_outbox("retry");
                tracing::info!(outbox_id = %row.id, attempt = row.attempts, delay_ms = delay.as_millis() as u64, error = %e, "Outbound message will be retried.");
                ("pending", None, Some(e.to_string()), Some(delay.as_secs_f64()))
            }
        };
        statuses.push(status);
        providers.push(provider);
        errors.push(error);
        delays.push(delay);
    }
    let mut tx = hub.db().begin().await?;
    sqlx::query(
        "update outbox o set status = x.status, last_error = x.error,
                attempts = case when x.counted then o.attempts else o.attempts - 1 end,
                sent_at = case when x.status = 'sent' then now() else o.sent_at end,
                provider_id = case when x.status = 'sent' then x.provider_id else o.provider_id end,
                next_attempt_at = case when x.delay is null then o.next_attempt_at else now() + make_interval(secs => x.delay) end
           from unnest($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::bool[])
                as x(id, attempts, status, provider_id, error, delay, counted)
          where o.id = x.id and o.attempts = x.attempts and o.status = 'sending'",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&statuses)
    .bind(&providers)
    .bind(&errors)
    .bind(&delays)
    .bind(&counted)
    .execute(&mut *tx)
    .await?;
    for ev in events {
        bus::record(&mut tx, ev).await?;
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
