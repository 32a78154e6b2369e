//! The SMS tables (migration `20261203200000_sms.sql`): inbound parts, sent messages and
//! their SMSC ids, keyword messages and opt-outs, bind leases.

use crate::encoding::Concat;
use crate::receipt::{self, Receipt, SmsStatus};
use sqlx::PgPool;
use std::sync::Arc;
use switchboard_core::batch::Batcher;
use switchboard_core::bus::{self, NewEvent};
use switchboard_core::outbox::{self, NewOutbound};
use switchboard_core::{Channel, CoreError, CoreResult};
use uuid::Uuid;

/// Stores one part of a concatenated message (a resent part replaces the stored one, so a
/// stale part of an earlier message with the same reference cannot block a new one) and
/// returns the whole text once every part is stored.
#[tracing::instrument(skip(db, body))]
pub async fn save_part(db: &PgPool, channel: &str, source: &str, dest: &str, c: Concat, body: &str) -> CoreResult<Option<String>> {
    // Parts of one message arriving at once on several connections must not each miss the
    // other: the key is locked for the transaction, and each statement sees the commits
    // before it (READ COMMITTED).
    let mut tx = db.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("sms-part:{channel}:{source}:{dest}:{}:{}", c.reference, c.total))
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into sms_inbound_parts (channel_name, source, destination, reference, total, seq, body)
         values ($1, $2, $3, $4, $5, $6, $7)
         on conflict (channel_name, source, destination, reference, total, seq)
         do update set body = excluded.body, received_at = now()",
    )
    .bind(channel)
    .bind(source)
    .bind(dest)
    .bind(c.reference as i32)
    .bind(c.total as i16)
    .bind(c.seq as i16)
    .bind(body)
    .execute(&mut *tx)
    .await?;
    let parts: Vec<(i16, String)> = sqlx::query_as(
        "select seq, body from sms_inbound_parts
          where channel_name = $1 and source = $2 and destination = $3 and reference = $4 and total = $5 order by seq",
    )
    .bind(channel)
    .bind(source)
    .bind(dest)
    .bind(c.reference as i32)
    .bind(c.total as i16)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    if parts.len() == c.total as usize {
        Ok(Some(parts.into_iter().map(|(_, b)| b).collect()))
    } else {
        Ok(None)
    }
}

/// Forgets the parts of a message once it is ingested.
pub async fn drop_parts(db: &PgPool, channel: &str, source: &str, dest: &str, c: Concat) -> CoreResult<()> {
    sqlx::query(
        "delete from sms_inbound_parts where channel_name = $1 and source = $2 and destination = $3 and reference = $4 and total = $5",
    )
    .bind(channel)
    .bind(source)
    .bind(dest)
    .bind(c.reference as i32)
    .bind(c.total as i16)
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes parts whose message never completed (older than `hours`).
pub async fn expire_parts(db: &PgPool, hours: i64) -> CoreResult<u64> {
    Ok(sqlx::query("delete from sms_inbound_parts where received_at < now() - make_interval(hours => $1::int)")
        .bind(hours as i32)
        .execute(db)
        .await?
        .rows_affected())
}

/// What is known about an outbound message before it is submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prior {
    /// Never submitted: go ahead (the row now says `submitting`).
    Fresh,
    /// Already handled: its status and SMSC ids.
    Seen(String, Vec<String>),
    /// The number opted out (STOP) and the message is one an opt-out stops: nothing was
    /// written.
    OptedOut,
}

/// A message about to be written to the SMSC (see [`begin_submits`]).
#[derive(Debug, Clone)]
pub struct BeginSubmit {
    /// Its outbox row.
    pub outbox_id: Uuid,
    /// The channel instance.
    pub channel: String,
    /// Its conversation, if any.
    pub interaction: Option<Uuid>,
    /// E.164 recipient.
    pub recipient: String,
    /// Parts it will be sent in.
    pub parts: usize,
    /// Whether an opt-out (STOP) of the recipient stops this message: checked in the same
    /// transaction that marks it `submitting` (one statement per batch, not a round trip
    /// per message).
    pub refuse_if_opted_out: bool,
}

impl BeginSubmit {
    /// The outbox message `msg` about to go to `recipient` (E.164) on `channel` in `parts`.
    pub fn of(msg: &switchboard_core::Outbound, channel: &str, recipient: &str, parts: usize) -> Self {
        BeginSubmit {
            outbox_id: msg.id,
            channel: channel.to_string(),
            interaction: msg.interaction_id,
            recipient: recipient.to_string(),
            parts,
            refuse_if_opted_out: false,
        }
    }

    /// The same, refused with [`Prior::OptedOut`] when the recipient opted out and an
    /// opt-out stops this message: everything but the answer to a keyword and — unless
    /// `block_replies_after_stop` — an agent's reply in a conversation (a service message).
    pub fn stopped_by_opt_out(self, msg: &switchboard_core::Outbound, block_replies_after_stop: bool) -> Self {
        let kind = msg.metadata.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let refuse = kind != "keyword_reply" && (msg.interaction_id.is_none() || block_replies_after_stop);
        BeginSubmit { refuse_if_opted_out: refuse, ..self }
    }
}

/// Records that these messages are about to be written to the SMSC, in one transaction
/// (the callers wait for its commit: a message is on disk as `submitting` before a byte of
/// it goes out). A second call for the same outbox row (a retry after a crash or timeout)
/// learns what happened before instead. A message to a number that opted out is refused
/// when its request says so (read in the same transaction: an opt-out committed before
/// it is honoured). One answer per request, in order.
pub async fn begin_submits(db: &PgPool, reqs: &[BeginSubmit]) -> CoreResult<Vec<Prior>> {
    let mut tx = db.begin().await?;
    let checked: Vec<&str> = reqs.iter().filter(|r| r.refuse_if_opted_out).map(|r| r.recipient.as_str()).collect();
    let blocked: std::collections::HashSet<String> = if checked.is_empty() {
        Default::default()
    } else {
        sqlx::query_scalar("select phone from sms_opt_outs where phone = any($1) and opted_out")
            .bind(&checked)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
    };
    let refused = |r: &BeginSubmit| r.refuse_if_opted_out && blocked.contains(&r.recipient);
    let go: Vec<&BeginSubmit> = reqs.iter().filter(|r| !refused(r)).collect();
    let ids: Vec<Uuid> = go.iter().map(|r| r.outbox_id).collect();
    let channels: Vec<&str> = go.iter().map(|r| r.channel.as_str()).collect();
    let interactions: Vec<Option<Uuid>> = go.iter().map(|r| r.interaction).collect();
    let recipients: Vec<&str> = go.iter().map(|r| r.recipient.as_str()).collect();
    let parts: Vec<i16> = go.iter().map(|r| r.parts.min(i16::MAX as usize) as i16).collect();
    let inserted: Vec<Uuid> = if ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_scalar(
            "insert into sms_sent (outbox_id, channel_name, interaction_id, recipient, parts, status)
             select * , 'submitting' from unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::int2[])
             on conflict (outbox_id) do nothing returning outbox_id",
        )
        .bind(&ids)
        .bind(&channels)
        .bind(&interactions)
        .bind(&recipients)
        .bind(&parts)
        .fetch_all(&mut *tx)
        .await?
    };
    let fresh: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
    let seen_ids: Vec<Uuid> = ids.iter().copied().filter(|id| !fresh.contains(id)).collect();
    let mut seen: std::collections::HashMap<Uuid, (String, Vec<String>)> = std::collections::HashMap::new();
    if !seen_ids.is_empty() {
        let rows: Vec<(Uuid, String, Vec<String>)> =
            sqlx::query_as("select outbox_id, status, smsc_ids from sms_sent where outbox_id = any($1)")
                .bind(&seen_ids)
                .fetch_all(&mut *tx)
                .await?;
        seen.extend(rows.into_iter().map(|(id, st, ids)| (id, (st, ids))));
    }
    tx.commit().await?;
    let mut answered = std::collections::HashSet::new();
    Ok(reqs
        .iter()
        .map(|r| match seen.get(&r.outbox_id) {
            _ if refused(r) => Prior::OptedOut,
            _ if fresh.contains(&r.outbox_id) && answered.insert(r.outbox_id) => Prior::Fresh,
            Some((st, ids)) => Prior::Seen(st.clone(), ids.clone()),
            // The same row twice in one batch (the outbox never claims a row twice at once,
            // but be exact): the first goes ahead, this one finds it being submitted.
            None => Prior::Seen("submitting".into(), Vec::new()),
        })
        .collect())
}

/// Group commit of the submit log: the `submitting` marks and the accepted parts of
/// messages being sent at the same moment share one transaction each, so the send rate
/// is not bounded by one disk flush per message. Lanes by outbox row.
pub struct SubmitLog {
    begins: Batcher<BeginSubmit, CoreResult<Prior>>,
    parts: Batcher<PartSubmitted, CoreResult<()>>,
}

const SUBMIT_LOG_LANES: usize = 4;
const SUBMIT_LOG_MAX_BATCH: usize = 128;

impl SubmitLog {
    /// A submit log writing to `db`.
    pub fn new(db: PgPool) -> Self {
        let db2 = db.clone();
        SubmitLog {
            begins: Batcher::new(
                SUBMIT_LOG_LANES,
                SUBMIT_LOG_MAX_BATCH,
                Arc::new(move |reqs: Vec<BeginSubmit>| {
                    let db = db.clone();
                    Box::pin(async move {
                        match begin_submits(&db, &reqs).await {
                            Ok(v) => v.into_iter().map(Ok).collect(),
                            Err(e) => reqs.iter().map(|_| Err(CoreError::Internal(format!("recording SMS submits: {e}")))).collect(),
                        }
                    })
                }),
            ),
            parts: Batcher::new(
                SUBMIT_LOG_LANES,
                SUBMIT_LOG_MAX_BATCH,
                Arc::new(move |reqs: Vec<PartSubmitted>| {
                    let db = db2.clone();
                    Box::pin(async move {
                        match parts_submitted(&db, &reqs).await {
                            Ok(()) => reqs.iter().map(|_| Ok(())).collect(),
                            Err(e) => reqs.iter().map(|_| Err(CoreError::Internal(format!("recording accepted SMS parts: {e}")))).collect(),
                        }
                    })
                }),
            ),
        }
    }

    /// Marks a message `submitting` (committed when this returns), or learns what became
    /// of an earlier attempt.
    pub async fn begin(&self, req: BeginSubmit) -> CoreResult<Prior> {
        let key = req.outbox_id;
        self.begins.submit(&key, req).await.unwrap_or_else(|| Err(CoreError::Internal("the SMS submit log stopped".into())))
    }

    /// Records a part the SMSC accepted (committed when this returns).
    pub async fn part(&self, channel: &str, outbox_id: Uuid, smsc_id: &str) -> CoreResult<()> {
        self.parts
            .submit(&outbox_id, (channel.to_string(), outbox_id, smsc_id.to_string()))
            .await
            .unwrap_or_else(|| Err(CoreError::Internal("the SMS submit log stopped".into())))
    }
}

/// Withdraws a `submitting` row when nothing was written after all.
pub async fn cancel_submit(db: &PgPool, outbox_id: Uuid) -> CoreResult<()> {
    sqlx::query("delete from sms_sent where outbox_id = $1 and status = 'submitting' and parts_submitted = 0")
        .bind(outbox_id)
        .execute(db)
        .await?;
    Ok(())
}

/// A part the SMSC accepted: (channel, outbox row, SMSC message id).
pub type PartSubmitted = (String, Uuid, String);

/// Records parts the SMSC accepted, in one statement: each message's row gains its parts'
/// ids (in the order given) and counts, and every id's lookup keys are written (a
/// statement per part was a round trip per message).
pub async fn parts_submitted(db: &PgPool, parts: &[PartSubmitted]) -> CoreResult<()> {
    if parts.is_empty() {
        return Ok(());
    }
    let (mut outbox_ids, mut smsc_ids, mut ords) = (Vec::with_capacity(parts.len()), Vec::with_capacity(parts.len()), Vec::new());
    let (mut key_channels, mut keys, mut prefs, mut key_outbox) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, (channel, outbox_id, smsc_id)) in parts.iter().enumerate() {
        outbox_ids.push(*outbox_id);
        smsc_ids.push(smsc_id.as_str());
        ords.push(i as i32);
        for (k, p) in receipt::sent_id_keys(smsc_id) {
            key_channels.push(channel.as_str());
            keys.push(k);
            prefs.push(p);
            key_outbox.push(*outbox_id);
        }
    }
    sqlx::query(
        "with x as (
             select outbox_id, array_agg(smsc_id order by ord) as ids, count(*)::int2 as n
               from unnest($1::uuid[], $2::text[], $3::int4[]) as u(outbox_id, smsc_id, ord) group by outbox_id),
         s as (
             update sms_sent t set smsc_ids = t.smsc_ids || x.ids, parts_submitted = t.parts_submitted + x.n,
                    status = case when t.parts_submitted + x.n >= t.parts and t.status_rank < 1 then 'submitted' else t.status end,
                    status_rank = case when t.parts_submitted + x.n >= t.parts then greatest(t.status_rank, 1) else t.status_rank end,
                    updated_at = now()
               from x where t.outbox_id = x.outbox_id returning t.outbox_id)
         insert into sms_message_ids (channel_name, id_key, preference, outbox_id)
         select k.channel_name, k.id_key, k.preference, k.outbox_id
           from unnest($4::text[], $5::text[], $6::int2[], $7::uuid[]) as k(channel_name, id_key, preference, outbox_id)
          where k.outbox_id in (select outbox_id from s)
         on conflict do nothing",
    )
    .bind(&outbox_ids)
    .bind(&smsc_ids)
    .bind(&ords)
    .bind(&key_channels)
    .bind(&keys)
    .bind(&prefs)
    .bind(&key_outbox)
    .execute(db)
    .await?;
    Ok(())
}

/// Marks the message's fate when no receipt can follow: `unknown` or `failed`. Records an
/// interaction event so the agent sees it.
pub async fn mark(db: &PgPool, outbox_id: Uuid, status: SmsStatus, error: &str) -> CoreResult<()> {
    let mut tx = db.begin().await?;
    let iid: Option<Option<Uuid>> = sqlx::query_scalar(
        "update sms_sent set status = $2, error = $3, updated_at = now() where outbox_id = $1 and status_rank < 3 returning interaction_id",
    )
    .bind(outbox_id)
    .bind(status.as_str())
    .bind(error)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(Some(iid)) = iid {
        let data = serde_json::json!({ "outbox_id": outbox_id, "status": status.as_str(), "error": error });
        bus::record(&mut tx, NewEvent::interaction("sms_status", iid).with_data(data)).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What a receipt changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// No sent message has this id.
    Unmatched,
    /// Matched, but the message was already at this status or further.
    Stale(Uuid),
    /// Moved the message forward.
    Applied(Uuid),
}

/// Applies a receipt to the sent message it is about; statuses only move forward. A
/// message of several parts is `delivered` once every part's receipt said so (until then a
/// part's delivery reads `enroute`); a part that failed makes the message fail. A part's ids
/// are forgotten once its final receipt is applied, so a late repeat changes nothing. The
/// status change and its interaction event commit together.
pub async fn apply_receipt(db: &PgPool, channel: &str, r: &Receipt) -> CoreResult<ReceiptOutcome> {
    let keys = receipt::receipt_id_keys(&r.message_id);
    let mut tx = db.begin().await?;
    let found: Option<(Uuid, String)> = sqlx::query_as(
        "select outbox_id, id_key from sms_message_ids where channel_name = $1 and id_key = any($2)
         order by (id_key like 's:%') desc, preference, created_at desc limit 1",
    )
    .bind(channel)
    .bind(&keys)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((outbox_id, matched_key)) = found else { return Ok(ReceiptOutcome::Unmatched) };
    let mut status = r.status;
    if status.rank() >= 3 {
        let (ids, parts, submitted): (Vec<String>, i16, i16) =
            sqlx::query_as("select smsc_ids, parts, parts_submitted from sms_sent where outbox_id = $1 for update")
                .bind(outbox_id)
                .fetch_one(&mut *tx)
                .await?;
        let part_keys: Vec<String> = ids
            .iter()
            .map(|id| receipt::sent_id_keys(id))
            .find(|k| k.iter().any(|(key, _)| *key == matched_key))
            .map(|k| k.into_iter().map(|(key, _)| key).collect())
            .unwrap_or_else(|| vec![matched_key.clone()]);
        sqlx::query("delete from sms_message_ids where channel_name = $1 and outbox_id = $2 and id_key = any($3)")
            .bind(channel)
            .bind(outbox_id)
            .bind(&part_keys)
            .execute(&mut *tx)
            .await?;
        let pending: i64 =
            sqlx::query_scalar("select count(*) from sms_message_ids where outbox_id = $1").bind(outbox_id).fetch_one(&mut *tx).await?;
        if status == SmsStatus::Delivered && (pending > 0 || submitted < parts) {
            status = SmsStatus::Enroute;
        }
    }
    let moved: Option<Option<Uuid>> = sqlx::query_scalar(
        "update sms_sent set status = $2, status_rank = $3, error = coalesce($4, error), updated_at = now()
          where outbox_id = $1 and status_rank < $3 returning interaction_id",
    )
    .bind(outbox_id)
    .bind(status.as_str())
    .bind(status.rank())
    .bind(&r.error)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(iid) = moved else {
        tx.commit().await?;
        return Ok(ReceiptOutcome::Stale(outbox_id));
    };
    if let Some(iid) = iid {
        let data = serde_json::json!({ "outbox_id": outbox_id, "status": status.as_str(), "error": r.error });
        bus::record(&mut tx, NewEvent::interaction("sms_status", iid).with_data(data)).await?;
    }
    tx.commit().await?;
    Ok(ReceiptOutcome::Applied(outbox_id))
}

/// [`apply_receipt`], retried for up to `wait` while no sent message matches: a receipt can
/// overtake the recording of the id it is about (the SMSC sends it right after its
/// submit_sm_resp, on the same connection, while our write of that id is in flight).
pub async fn apply_receipt_waiting(db: &PgPool, channel: &str, r: &Receipt, wait: std::time::Duration) -> CoreResult<ReceiptOutcome> {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let out = apply_receipt(db, channel, r).await?;
        if out != ReceiptOutcome::Unmatched || tokio::time::Instant::now() >= until {
            return Ok(out);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The stored status of a sent message.
pub async fn sent_status(db: &PgPool, outbox_id: Uuid) -> CoreResult<Option<String>> {
    Ok(sqlx::query_scalar("select status from sms_sent where outbox_id = $1").bind(outbox_id).fetch_optional(db).await?)
}

/// A keyword message to record.
#[derive(Debug, Clone)]
pub struct KeywordMessage<'a> {
    /// Dedupe key of the inbound message.
    pub dedupe_key: &'a str,
    /// Channel instance.
    pub channel: &'a str,
    /// Sender (E.164).
    pub phone: &'a str,
    /// Keyword.
    pub keyword: crate::keywords::Keyword,
    /// Language of the matching set.
    pub language: &'a str,
    /// Customer, when the directory knows the number.
    pub customer_id: Option<Uuid>,
    /// The reply to send, if any.
    pub reply: Option<&'a str>,
}

/// Records a keyword message once: the opt-out state, the CRM consent history (time and
/// source), and the reply in the outbox, all in one transaction. The reply goes out only
/// when the state changed (a second STOP is not answered again). Returns whether this
/// message was new.
pub async fn record_keyword(db: &PgPool, m: KeywordMessage<'_>) -> CoreResult<bool> {
    use crate::keywords::Keyword;
    let mut tx = db.begin().await?;
    let fresh: Option<String> = sqlx::query_scalar(
        "insert into sms_keyword_messages (dedupe_key, channel_name, phone, keyword, language, customer_id)
         values ($1, $2, $3, $4, $5, $6) on conflict (dedupe_key) do nothing returning dedupe_key",
    )
    .bind(m.dedupe_key)
    .bind(m.channel)
    .bind(m.phone)
    .bind(m.keyword.as_str())
    .bind(m.language)
    .bind(m.customer_id)
    .fetch_optional(&mut *tx)
    .await?;
    if fresh.is_none() {
        return Ok(false);
    }
    let source = format!("sms keyword {} via {}", m.keyword.as_str().to_uppercase(), m.channel);
    let changed = match m.keyword {
        Keyword::Help => true,
        Keyword::Stop | Keyword::Start => {
            let out = m.keyword == Keyword::Stop;
            let prev: Option<bool> = sqlx::query_scalar("select opted_out from sms_opt_outs where phone = $1 for update")
                .bind(m.phone)
                .fetch_optional(&mut *tx)
                .await?;
            sqlx::query(
                "insert into sms_opt_outs (phone, opted_out, source) values ($1, $2, $3)
                 on conflict (phone) do update set opted_out = excluded.opted_out, source = excluded.source, changed_at = now()",
            )
            .bind(m.phone)
            .bind(out)
            .bind(&source)
            .execute(&mut *tx)
            .await?;
            let changed = prev.unwrap_or(false) != out;
            if let (true, Some(customer)) = (changed, m.customer_id) {
                // The CRM's consent history (customers / customer_consent_events).
                sqlx::query("update customers set consent_sms = $2, updated_at = now() where id = $1")
                    .bind(customer)
                    .bind(!out)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("insert into customer_consent_events (customer_id, kind, granted, source) values ($1, 'sms', $2, $3)")
                    .bind(customer)
                    .bind(!out)
                    .bind(&source)
                    .execute(&mut *tx)
                    .await?;
            }
            changed
        }
    };
    if let (true, Some(reply)) = (changed, m.reply) {
        outbox::enqueue_tx(
            &mut tx,
            NewOutbound {
                idempotency_key: format!("sms-keyword:{}", m.dedupe_key),
                channel: Channel::Sms,
                interaction_id: None,
                message_id: None,
                recipient: m.phone.to_string(),
                subject: None,
                body: reply.to_string(),
                metadata: serde_json::json!({ "adapter": m.channel, "kind": "keyword_reply", "keyword": m.keyword.as_str() }),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// The name of an SMPP bind's lease in core's `leases` table.
pub fn lease_name(channel: &str) -> String {
    format!("smpp:{channel}")
}

/// Takes or renews the bind lease (core's [`switchboard_core::lease`]): true when this
/// node holds it until `now + secs`.
pub async fn acquire_lease(db: &PgPool, channel: &str, node: Uuid, secs: u64) -> CoreResult<bool> {
    Ok(switchboard_core::lease::acquire(db, &lease_name(channel), node, std::time::Duration::from_secs(secs)).await?.is_some())
}

/// Gives the lease up (clean shutdown): another node may bind at once.
pub async fn release_lease(db: &PgPool, channel: &str, node: Uuid) -> CoreResult<()> {
    switchboard_core::lease::release_by_holder(db, &lease_name(channel), node).await
}
