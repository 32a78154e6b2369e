//! The email tables (see `migrations/20261203100000_email.sql`): raw messages, the
//! mailbox checkpoint and lease, conversation tokens and Message-IDs, the outbound ledger
//! and attachments. Small functions, one statement each where possible.

use sqlx::PgPool;
use switchboard_core::CoreResult;
use uuid::Uuid;

/// A raw message row as the import needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawRow {
    /// Row id.
    pub id: Uuid,
    /// Processing status.
    pub status: String,
    /// The bytes.
    pub raw: Vec<u8>,
}

/// Stores raw bytes unless the mailbox has that message already. Returns the row id and
/// whether it was new; an existing row is returned with its status so an unfinished one
/// (the node died between store and ingest) is processed again.
#[tracing::instrument(skip(db, raw), fields(mailbox, size = raw.len()))]
pub async fn store_raw(
    db: &PgPool,
    mailbox: &str,
    dedupe_id: &str,
    uid_validity: u32,
    uid: u32,
    sender: Option<&str>,
    raw: &[u8],
) -> CoreResult<(Uuid, bool, String)> {
    let row: (Uuid, bool, String) = sqlx::query_as(
        "with ins as (
             insert into email_raw_messages (mailbox, dedupe_id, uid_validity, uid, sender, size_bytes, sha256, raw)
             values ($1, $2, $3, $4, lower($5), $6, $7, $8)
             on conflict (mailbox, dedupe_id) do nothing
             returning id, status
         )
         select id, true, status from ins
         union all
         select id, false, status from email_raw_messages where mailbox = $1 and dedupe_id = $2 and not exists (select 1 from ins)",
    )
    .bind(mailbox)
    .bind(dedupe_id)
    .bind(uid_validity as i64)
    .bind(uid as i64)
    .bind(sender)
    .bind(raw.len() as i64)
    .bind(crate::parse::sha256_hex(raw))
    .bind(raw)
    .fetch_one(db)
    .await?;
    Ok(row)
}

/// Records what became of a raw message.
#[allow(clippy::too_many_arguments)]
pub async fn finish_raw(
    db: &PgPool,
    id: Uuid,
    status: &str,
    kind: Option<&str>,
    threaded_by: Option<&str>,
    interaction: Option<Uuid>,
    message: Option<Uuid>,
    error: Option<&str>,
) -> CoreResult<()> {
    sqlx::query(
        "update email_raw_messages set status = $2, kind = $3, threaded_by = $4, interaction_id = $5, message_id = $6,
                error = $7, processed_at = now() where id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(kind)
    .bind(threaded_by)
    .bind(interaction)
    .bind(message)
    .bind(error)
    .execute(db)
    .await?;
    Ok(())
}

/// Raw messages of a mailbox stored but not processed (a crash between store and ingest).
pub async fn unprocessed(db: &PgPool, mailbox: &str, limit: i64) -> CoreResult<Vec<RawRow>> {
    Ok(sqlx::query_as(
        "select id, status, raw from email_raw_messages where mailbox = $1 and status = 'stored' order by stored_at limit $2",
    )
    .bind(mailbox)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Mail from a sender routed in the last hour (for the loop rate limit).
pub async fn recent_from_sender(db: &PgPool, mailbox: &str, sender: &str) -> CoreResult<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from email_raw_messages where mailbox = $1 and sender = lower($2)
           and stored_at > now() - interval '1 hour' and status = 'ingested'",
    )
    .bind(mailbox)
    .bind(sender)
    .fetch_one(db)
    .await?)
}

/// The checkpoint of a mailbox: (uid_validity, last_uid).
pub async fn checkpoint(db: &PgPool, mailbox: &str) -> CoreResult<Option<(i64, i64)>> {
    Ok(sqlx::query_as("select uid_validity, last_uid from email_checkpoints where mailbox = $1").bind(mailbox).fetch_optional(db).await?)
}

/// Moves the checkpoint forward, only while this node still holds the lease with `fence`.
/// Returns false when the lease was lost (the caller stops).
pub async fn advance_checkpoint(
    db: &PgPool,
    mailbox: &str,
    folder: &str,
    uid_validity: u32,
    last_uid: u32,
    owner: Uuid,
    fence: i64,
) -> CoreResult<bool> {
    let n = sqlx::query(
        "insert into email_checkpoints (mailbox, folder, uid_validity, last_uid)
         select $1, $2, $3, $4 where exists (select 1 from leases where name = 'email:' || $1 and holder = $5 and token = $6
                                                  and expires_at > clock_timestamp() for share)
         on conflict (mailbox) do update set folder = excluded.folder, uid_validity = excluded.uid_validity,
             last_uid = case when email_checkpoints.uid_validity = excluded.uid_validity
                             then greatest(email_checkpoints.last_uid, excluded.last_uid) else excluded.last_uid end,
             updated_at = now()",
    )
    .bind(mailbox)
    .bind(folder)
    .bind(uid_validity as i64)
    .bind(last_uid as i64)
    .bind(owner)
    .bind(fence)
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The name of a mailbox's lease in core's `leases` table.
pub fn lease_name(mailbox: &str) -> String {
    format!("email:{mailbox}")
}

/// Takes the lease of a mailbox if it is free, expired or ours; renews it when ours
/// (core's [`switchboard_core::lease`]). Returns the fencing token of the holding, or
/// `None` when another node holds it.
pub async fn acquire_lease(db: &PgPool, mailbox: &str, owner: Uuid, secs: u64) -> CoreResult<Option<i64>> {
    Ok(switchboard_core::lease::acquire(db, &lease_name(mailbox), owner, std::time::Duration::from_secs(secs)).await?.map(|l| l.token))
}

/// Renews a held lease; false when it was lost.
pub async fn renew_lease(db: &PgPool, mailbox: &str, owner: Uuid, fence: i64, secs: u64) -> CoreResult<bool> {
    let mut l =
        switchboard_core::lease::Lease { name: lease_name(mailbox), holder: owner, token: fence, valid_until: tokio::time::Instant::now() };
    switchboard_core::lease::renew(db, &mut l, std::time::Duration::from_secs(secs)).await
}

/// Gives a lease up at shutdown so another node takes over at once.
pub async fn release_lease(db: &PgPool, mailbox: &str, owner: Uuid) -> CoreResult<()> {
    switchboard_core::lease::release_by_holder(db, &lease_name(mailbox), owner).await
}

/// The node holding a mailbox's live lease.
pub async fn lease_owner(db: &PgPool, mailbox: &str) -> CoreResult<Option<Uuid>> {
    Ok(switchboard_core::lease::holder(db, &lease_name(mailbox)).await?.map(|h| h.holder))
}

/// The first candidate that names a known conversation of the mailbox, strongest first:
/// tokens, then Message-IDs in order, then the subject tag.
pub async fn find_thread(
    db: &PgPool,
    mailbox: &str,
    c: &crate::threading::ThreadCandidates,
) -> CoreResult<Option<(String, crate::threading::ThreadedBy)>> {
    use crate::threading::ThreadedBy;
    if !c.tokens.is_empty() {
        let t: Option<String> =
            sqlx::query_scalar("select t.token from unnest($2::text[]) with ordinality as c(token, ord) join email_threads t on t.token = c.token and t.mailbox = $1 order by c.ord limit 1")
                .bind(mailbox)
                .bind(&c.tokens)
                .fetch_optional(db)
                .await?;
        if let Some(t) = t {
            return Ok(Some((t, ThreadedBy::Token)));
        }
    }
    if !c.message_ids.is_empty() {
        let t: Option<String> = sqlx::query_scalar(
            "select m.token from unnest($2::text[]) with ordinality as c(id, ord) join email_message_ids m on m.mailbox = $1 and m.message_id = c.id order by c.ord limit 1",
        )
        .bind(mailbox)
        .bind(&c.message_ids)
        .fetch_optional(db)
        .await?;
        if let Some(t) = t {
            return Ok(Some((t, ThreadedBy::Reference)));
        }
    }
    if let Some(tag) = &c.subject_tag {
        let t: Option<String> = sqlx::query_scalar("select token from email_threads where token = $1 and mailbox = $2")
            .bind(tag)
            .bind(mailbox)
            .fetch_optional(db)
            .await?;
        if let Some(t) = t {
            return Ok(Some((t, ThreadedBy::SubjectTag)));
        }
    }
    Ok(None)
}

/// The sender's conversation with the same subject whose interaction is still open (a
/// second mail that is not a reply must not open a second interaction).
pub async fn open_thread_of_sender(db: &PgPool, mailbox: &str, sender: &str, base_subject: &str) -> CoreResult<Option<String>> {
    Ok(sqlx::query_scalar(
        "select t.token from email_threads t
           join interactions i on i.channel = 'email' and i.conversation_key = 'email:' || t.token
                               and i.status in ('queued','offered','active','wrap_up')
          where t.mailbox = $1 and t.customer_address = lower($2) and t.base_subject = $3
          order by t.created_at desc limit 1",
    )
    .bind(mailbox)
    .bind(sender)
    .bind(base_subject)
    .fetch_optional(db)
    .await?)
}

/// Creates a conversation.
pub async fn create_thread(db: &PgPool, token: &str, mailbox: &str, customer: Option<&str>, base_subject: &str) -> CoreResult<()> {
    sqlx::query(
        "insert into email_threads (token, mailbox, customer_address, base_subject) values ($1, $2, lower($3), $4) on conflict do nothing",
    )
    .bind(token)
    .bind(mailbox)
    .bind(customer)
    .bind(base_subject)
    .execute(db)
    .await?;
    Ok(())
}

/// What an ingested mail changes beside the hub's rows.
pub struct IngestedMail<'a> {
    /// Mailbox.
    pub mailbox: &'a str,
    /// Raw row.
    pub raw_id: Uuid,
    /// Conversation token.
    pub token: &'a str,
    /// (customer address, base subject) when the mail opened the conversation.
    pub new_thread: Option<(&'a str, &'a str)>,
    /// Its Message-ID.
    pub message_id: Option<&'a str>,
    /// Customers Cc'd.
    pub cc: &'a [String],
    /// Classification.
    pub kind: &'a str,
    /// How it was threaded.
    pub threaded_by: &'a str,
    /// Interaction.
    pub interaction: Uuid,
    /// Message row.
    pub message: Option<Uuid>,
}

/// The bookkeeping of an ingested mail in one transaction (one commit): the conversation
/// (when new), its Message-ID and References, the Cc'd customers, the raw row's outcome.
pub async fn record_ingested(db: &PgPool, m: &IngestedMail<'_>) -> CoreResult<()> {
    let mut tx = db.begin().await?;
    if let Some((customer, base)) = m.new_thread {
        sqlx::query("insert into email_threads (token, mailbox, customer_address, base_subject) values ($1, $2, lower($3), $4) on conflict do nothing")
            .bind(m.token)
            .bind(m.mailbox)
            .bind(customer)
            .bind(base)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "with ids as (
             insert into email_message_ids (mailbox, message_id, token, direction)
             select $1, $3, $2, 'inbound' where $3::text is not null
             on conflict do nothing
         )
         update email_threads set
             last_message_id = coalesce($3, last_message_id),
             refs = case when $3::text is null or $3 = any(refs) then refs else (refs || $3::text)[greatest(1, cardinality(refs) - 18):] end,
             cc = array(select distinct x from unnest(cc || $4::text[]) x)
         where token = $2",
    )
    .bind(m.mailbox)
    .bind(m.token)
    .bind(m.message_id)
    .bind(m.cc)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update email_raw_messages set status = 'ingested', kind = $2, threaded_by = $3, interaction_id = $4, message_id = $5,
                error = null, processed_at = now() where id = $1",
    )
    .bind(m.raw_id)
    .bind(m.kind)
    .bind(m.threaded_by)
    .bind(m.interaction)
    .bind(m.message)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A conversation's reply context.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ThreadRow {
    /// Token.
    pub token: String,
    /// Customer address.
    pub customer_address: Option<String>,
    /// Cc'd customers.
    pub cc: Vec<String>,
    /// Message answered next.
    pub last_message_id: Option<String>,
    /// References.
    pub refs: Vec<String>,
}

/// A conversation by token.
pub async fn thread(db: &PgPool, token: &str) -> CoreResult<Option<ThreadRow>> {
    Ok(sqlx::query_as("select token, customer_address, cc, last_message_id, refs from email_threads where token = $1")
        .bind(token)
        .fetch_optional(db)
        .await?)
}

/// Claims an outbox row for sending: inserts it as `handing` and returns `Ok(None)`, or
/// returns the state it already has (then it must not be sent again).
pub async fn claim_outbound(
    db: &PgPool,
    outbox_id: Uuid,
    mailbox: &str,
    message_id: &str,
    token: Option<&str>,
    recipients: &[String],
) -> CoreResult<Option<(String, String)>> {
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "insert into email_outbound (outbox_id, mailbox, message_id, token, recipients, state) values ($1, $2, $3, $4, $5, 'handing')
         on conflict (outbox_id) do nothing returning outbox_id",
    )
    .bind(outbox_id)
    .bind(mailbox)
    .bind(message_id)
    .bind(token)
    .bind(recipients)
    .fetch_optional(db)
    .await?;
    if inserted.is_some() {
        return Ok(None);
    }
    Ok(sqlx::query_as("select state, message_id from email_outbound where outbox_id = $1").bind(outbox_id).fetch_optional(db).await?)
}

/// Records the SMTP outcome; a sent reply's Message-ID joins its conversation.
pub async fn finish_outbound(db: &PgPool, outbox_id: Uuid, state: &str, response: Option<&str>) -> CoreResult<()> {
    let mut tx = db.begin().await?;
    let row: Option<(String, String, Option<String>)> = sqlx::query_as(
        "update email_outbound set state = $2, smtp_response = $3, updated_at = now() where outbox_id = $1 returning mailbox, message_id, token",
    )
    .bind(outbox_id)
    .bind(state)
    .bind(response)
    .fetch_optional(&mut *tx)
    .await?;
    if let (Some((mailbox, mid, Some(token))), "sent") = (row, state) {
        sqlx::query(
            "insert into email_message_ids (mailbox, message_id, token, direction, outbox_id) values ($1, $2, $3, 'outbound', $4) on conflict do nothing",
        )
        .bind(&mailbox)
        .bind(&mid)
        .bind(&token)
        .bind(outbox_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "update email_threads set refs = case when $2 = any(refs) then refs else (refs || $2::text)[greatest(1, cardinality(refs) - 18):] end,
                    last_message_id = $2 where token = $1",
        )
        .bind(&token)
        .bind(&mid)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A bounce arrived for one of our messages: marks it bounced and its outbox row failed.
/// Returns (outbox id, interaction id) when the message was ours.
pub async fn mark_bounced(db: &PgPool, message_id: &str, diagnostic: &str) -> CoreResult<Option<(Uuid, Option<Uuid>)>> {
    let mut tx = db.begin().await?;
    let id: Option<Uuid> = sqlx::query_scalar(
        "update email_outbound set state = 'bounced', smtp_response = $2, updated_at = now() where message_id = $1 returning outbox_id",
    )
    .bind(message_id.trim_start_matches('<').trim_end_matches('>'))
    .bind(diagnostic)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else { return Ok(None) };
    let interaction: Option<Option<Uuid>> =
        sqlx::query_scalar("update outbox set status = 'failed', last_error = $2 where id = $1 returning interaction_id")
            .bind(id)
            .bind(format!("bounced: {diagnostic}"))
            .fetch_optional(&mut *tx)
            .await?;
    let interaction = interaction.flatten();
    if let Some(iid) = interaction {
        switchboard_core::bus::record(
            &mut tx,
            switchboard_core::bus::NewEvent::interaction("delivery_failed", iid)
                .with_data(serde_json::json!({ "outbox_id": id, "error": format!("bounced: {diagnostic}"), "bounce": true })),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Some((id, interaction)))
}

/// Keeps an attachment's descriptor.
#[allow(clippy::too_many_arguments)]
pub async fn add_attachment(
    db: &PgPool,
    raw_id: Uuid,
    sha256: &str,
    size: usize,
    content_type: &str,
    filename: &str,
    content_id: Option<&str>,
    inline: bool,
    stored: bool,
) -> CoreResult<Uuid> {
    Ok(sqlx::query_scalar(
        "insert into email_attachments (raw_id, sha256, size_bytes, content_type, filename, content_id, inline, stored)
         values ($1, $2, $3, $4, $5, $6, $7, $8) returning id",
    )
    .bind(raw_id)
    .bind(sha256)
    .bind(size as i64)
    .bind(content_type)
    .bind(filename)
    .bind(content_id)
    .bind(inline)
    .bind(stored)
    .fetch_one(db)
    .await?)
}

/// Deletes the attachment descriptors of a raw message (before re-processing it).
pub async fn clear_attachments(db: &PgPool, raw_id: Uuid) -> CoreResult<()> {
    sqlx::query("delete from email_attachments where raw_id = $1").bind(raw_id).execute(db).await?;
    Ok(())
}
