//! Database access of the chat channel: visitors, conversations and their message
//! sequence, attachments, the token secret, and the reads the widget needs (transcript
//! after a seq, queue position, availability).

use crate::protocol::{Availability, OfflineReason, WireMessage};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use switchboard_core::{Channel, CoreResult};
use uuid::Uuid;

/// Returns the stored secret named `name`, creating a random one on first use (every node
/// ends up with the same value: the first insert wins).
#[tracing::instrument(skip(db))]
pub async fn ensure_secret(db: &PgPool, name: &str) -> CoreResult<String> {
    let fresh = switchboard_core::auth::random_secret();
    sqlx::query("insert into chat_secrets (name, secret) values ($1, $2) on conflict (name) do nothing")
        .bind(name)
        .bind(&fresh)
        .execute(db)
        .await?;
    Ok(sqlx::query_scalar("select secret from chat_secrets where name = $1").bind(name).fetch_one(db).await?)
}

/// Creates or updates a visitor with what the pre-chat form said.
pub async fn upsert_visitor(db: &PgPool, id: Uuid, name: Option<&str>, email: Option<&str>, language: Option<&str>) -> CoreResult<()> {
    sqlx::query(
        "insert into chat_visitors (id, display_name, email, language) values ($1, $2, $3, $4)
         on conflict (id) do update set display_name = coalesce(excluded.display_name, chat_visitors.display_name),
           email = coalesce(excluded.email, chat_visitors.email), language = coalesce(excluded.language, chat_visitors.language),
           last_seen_at = now()",
    )
    .bind(id)
    .bind(name)
    .bind(email)
    .bind(language)
    .execute(db)
    .await?;
    Ok(())
}

/// A visitor's stored details.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Visitor {
    /// Id.
    pub id: Uuid,
    /// Name from the pre-chat form.
    pub display_name: Option<String>,
    /// Email from the pre-chat form.
    pub email: Option<String>,
    /// Language.
    pub language: Option<String>,
}

/// Loads a visitor.
pub async fn visitor(db: &PgPool, id: Uuid) -> CoreResult<Option<Visitor>> {
    Ok(sqlx::query_as("select id, display_name, email, language from chat_visitors where id = $1").bind(id).fetch_optional(db).await?)
}

/// Creates a conversation (idempotent).
pub async fn create_conversation(db: &PgPool, id: Uuid, visitor: Uuid, adapter: &str) -> CoreResult<()> {
    sqlx::query("insert into chat_conversations (id, visitor_id, adapter) values ($1, $2, $3) on conflict (id) do nothing")
        .bind(id)
        .bind(visitor)
        .bind(adapter)
        .execute(db)
        .await?;
    Ok(())
}

/// Whether a conversation exists for this visitor.
pub async fn conversation_exists(db: &PgPool, id: Uuid, visitor: Uuid) -> CoreResult<bool> {
    Ok(sqlx::query_scalar("select exists(select 1 from chat_conversations where id = $1 and visitor_id = $2)")
        .bind(id)
        .bind(visitor)
        .fetch_one(db)
        .await?)
}

/// Highest seq handed out in a conversation.
pub async fn last_seq(db: &PgPool, conversation: Uuid) -> CoreResult<i64> {
    Ok(sqlx::query_scalar("select next_seq from chat_conversations where id = $1")
        .bind(conversation)
        .fetch_optional(db)
        .await?
        .unwrap_or(0))
}

/// Gives a stored message its place in the conversation. One statement: the
/// conversation row lock orders concurrent assignments, so seq order is commit order.
/// Returns (seq, newly assigned); a message that already has a seq keeps it.
pub async fn assign_seq(db: &PgPool, conversation: Uuid, message: Uuid) -> CoreResult<(i64, bool)> {
    let new: Option<i64> = sqlx::query_scalar(
        "with c as (
             update chat_conversations set next_seq = next_seq + 1
             where id = $1 and not exists (select 1 from chat_messages where message_id = $2)
             returning next_seq)
         insert into chat_messages (conversation_id, seq, message_id) select $1, next_seq, $2 from c
         on conflict (message_id) do nothing returning seq",
    )
    .bind(conversation)
    .bind(message)
    .fetch_optional(db)
    .await?;
    if let Some(seq) = new {
        return Ok((seq, true));
    }
    let existing: Option<i64> =
        sqlx::query_scalar("select seq from chat_messages where message_id = $1").bind(message).fetch_optional(db).await?;
    match existing {
        Some(seq) => Ok((seq, false)),
        None => Err(switchboard_core::CoreError::NotFound("chat conversation")),
    }
}

/// Seqs for a batch of (conversation, message) pairs in one statement (group commit of
/// the chat ledger): each conversation's counter is bumped once by its number of new
/// messages, under its row lock, and the messages are numbered in batch order. Returns one
/// answer per pair, in order; pairs the statement could not settle (a concurrent writer on
/// another node) fall back to [`assign_seq`].
pub async fn assign_seqs(db: &PgPool, pairs: &[(Uuid, Uuid)]) -> Vec<CoreResult<(i64, bool)>> {
    let found: std::collections::HashMap<Uuid, (i64, bool)> = match number_messages(db, pairs).await {
        Ok(rows) => rows.into_iter().map(|(m, seq, fresh)| (m, (seq, fresh))).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "Batched seq assignment failed; assigning one by one.");
            Default::default()
        }
    };
    let mut first_seen: std::collections::HashSet<Uuid> = Default::default();
    let mut out = Vec::with_capacity(pairs.len());
    for (conv, msg) in pairs {
        let repeat = !first_seen.insert(*msg);
        out.push(match found.get(msg) {
            Some((seq, fresh)) => Ok((*seq, *fresh && !repeat)),
            None => assign_seq(db, *conv, *msg).await,
        });
    }
    out
}

/// Common table expressions (names starting with `p`) behind [`assign_seqs`] and the
/// ingest ledger: they number the new messages of `input(conv uuid, msg uuid, ord bigint)`
/// (each conversation's counter bumped once, under its row lock, in `ord` order) and end
/// with `{p}ins(message_id, seq)`, the messages numbered. `replays`: some messages may be
/// numbered already (they are left out); without it the messages were written by the
/// caller's own statement or transaction and nothing is looked up.
pub fn numbering_ctes(input: &str, p: &str, replays: bool) -> String {
    let fresh = if replays {
        format!("select i.* from {input} i where not exists (select 1 from chat_messages m where m.message_id = i.msg)")
    } else {
        format!("select * from {input}")
    };
    format!(
        "{p}fresh as ({fresh}
         ), {p}counts as (
             select conv, count(*) as n from {p}fresh group by conv
         ), {p}locked as (
             -- Row locks in id order: concurrent batches never deadlock on each other.
             select id from chat_conversations where id = any(array(select conv from {p}counts)) order by id for update
         ), {p}bumped as (
             update chat_conversations c set next_seq = c.next_seq + k.n
             from {p}counts k join {p}locked l on l.id = k.conv where c.id = k.conv returning c.id, c.next_seq, k.n
         ), {p}numbered as (
             select f.conv, f.msg, b.next_seq - b.n + row_number() over (partition by f.conv order by f.ord) as seq
             from {p}fresh f join {p}bumped b on b.id = f.conv
         ), {p}ins as (
             insert into chat_messages (conversation_id, seq, message_id)
             select conv, seq, msg from {p}numbered order by conv, seq
             on conflict (message_id) do nothing returning message_id, seq
         )"
    )
}

/// [`numbering_ctes`] over (conversation, message) pairs bound as arrays; returns
/// (message, seq, newly assigned) for every pair it could settle, including those
/// numbered before.
static NUMBER_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "with input as (select conv, msg, ord from unnest($1::uuid[], $2::uuid[]) with ordinality as t(conv, msg, ord)),
         {} select message_id, seq, true from ins
         union all select message_id, seq, false from chat_messages where message_id = any($2)",
        numbering_ctes("input", "", true)
    )
});

/// Numbers pairs of which some may be numbered already (see [`NUMBER_SQL`]).
pub async fn number_messages<'e>(db: impl sqlx::PgExecutor<'e>, pairs: &[(Uuid, Uuid)]) -> Result<Vec<(Uuid, i64, bool)>, sqlx::Error> {
    let mut unique: Vec<(Uuid, Uuid)> = Vec::with_capacity(pairs.len());
    let mut seen = std::collections::HashSet::with_capacity(pairs.len());
    for p in pairs {
        if seen.insert(p.1) {
            unique.push(*p);
        }
    }
    let convs: Vec<Uuid> = unique.iter().map(|p| p.0).collect();
    let msgs: Vec<Uuid> = unique.iter().map(|p| p.1).collect();
    sqlx::query_as(NUMBER_SQL.as_str()).bind(&convs).bind(&msgs).fetch_all(db).await
}

#[derive(sqlx::FromRow)]
struct TranscriptRow {
    seq: i64,
    id: Uuid,
    direction: String,
    body: String,
    attachments: serde_json::Value,
    client_message_id: Option<String>,
    created_at: DateTime<Utc>,
    agent_name: Option<String>,
}

/// Transcript entries after `after_seq`, oldest first, at most `limit`.
pub async fn transcript_after(db: &PgPool, conversation: Uuid, after_seq: i64, limit: i64) -> CoreResult<Vec<WireMessage>> {
    let rows: Vec<TranscriptRow> = sqlx::query_as(
        "select cm.seq, m.id, m.direction, m.body, m.attachments, m.client_message_id, m.created_at, a.name as agent_name
         from chat_messages cm join messages m on m.id = cm.message_id left join agents a on a.id = m.author_agent_id
         where cm.conversation_id = $1 and cm.seq > $2 order by cm.seq limit $3",
    )
    .bind(conversation)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| wire(conversation, r)).collect())
}

/// One transcript entry by seq.
pub async fn transcript_entry(db: &PgPool, conversation: Uuid, seq: i64) -> CoreResult<Option<WireMessage>> {
    Ok(transcript_after(db, conversation, seq - 1, 1).await?.into_iter().find(|m| m.seq == seq))
}

fn wire(conversation: Uuid, r: TranscriptRow) -> WireMessage {
    let visitor = r.direction == "inbound";
    WireMessage {
        seq: r.seq,
        message_id: r.id,
        from: if visitor { "visitor" } else { "agent" }.to_string(),
        body: r.body,
        attachments: r.attachments,
        client_msg_id: if visitor {
            r.client_message_id.and_then(|k| crate::protocol::client_msg_id_from_key(conversation, &k))
        } else {
            None
        },
        agent_name: if visitor { None } else { r.agent_name },
        at: r.created_at,
    }
}

/// The latest interaction of a conversation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LatestInteraction {
    /// Id.
    pub id: Uuid,
    /// Status.
    pub status: String,
    /// Queue.
    pub queue_id: Option<Uuid>,
    /// The agent holding it.
    pub agent_name: Option<String>,
    /// Agent id.
    pub agent_id: Option<Uuid>,
}

/// The conversation's most recent interaction, if any.
pub async fn latest_interaction(db: &PgPool, conversation: Uuid) -> CoreResult<Option<LatestInteraction>> {
    Ok(sqlx::query_as(
        "select i.id, i.status, i.queue_id, a.name as agent_name, i.agent_id from interactions i left join agents a on a.id = i.agent_id
         where i.channel = 'chat' and i.conversation_key = $1 order by i.created_at desc limit 1",
    )
    .bind(conversation.to_string())
    .fetch_optional(db)
    .await?)
}

/// An interaction's chat conversation (its conversation key), if it is a chat.
pub async fn conversation_of_interaction(db: &PgPool, interaction: Uuid) -> CoreResult<Option<Uuid>> {
    let key: Option<Option<String>> = sqlx::query_scalar("select conversation_key from interactions where id = $1 and channel = 'chat'")
        .bind(interaction)
        .fetch_optional(db)
        .await?;
    Ok(key.flatten().and_then(|k| k.parse().ok()))
}

/// Positions (1-based) of the waiting interactions of a queue, in the router's order
/// (priority, then original enqueue time).
pub async fn queue_positions(db: &PgPool, queue: Uuid) -> CoreResult<Vec<(Uuid, i64)>> {
    Ok(sqlx::query_as(
        "select id, row_number() over (order by priority desc, enqueued_at, id) as position
         from interactions where queue_id = $1 and status in ('queued','offered')",
    )
    .bind(queue)
    .fetch_all(db)
    .await?)
}

/// Interactions of a queue answered in the last `window_secs`.
pub async fn answered_recently(db: &PgPool, queue: Uuid, window_secs: i64) -> CoreResult<i64> {
    Ok(sqlx::query_scalar("select count(*) from interactions where queue_id = $1 and answered_at > now() - make_interval(secs => $2)")
        .bind(queue)
        .bind(window_secs as f64)
        .fetch_one(db)
        .await?)
}

/// Whether live chat is possible now: the chat queue is within business hours and some
/// agent is signed in (presence available, away or busy).
pub async fn availability(db: &PgPool, queue_name: Option<&str>, widget: &str) -> CoreResult<Availability> {
    let qs = switchboard_core::queues::list(db).await?;
    if let Some(q) = switchboard_core::queues::select(&qs, queue_name, Channel::Chat, Some(widget), "", None) {
        if !q.is_open(Utc::now()) {
            return Ok(Availability { online: false, reason: Some(OfflineReason::AfterHours) });
        }
    }
    let staffed: bool =
        sqlx::query_scalar("select exists(select 1 from agents where presence in ('available','away','busy'))").fetch_one(db).await?;
    Ok(if staffed {
        Availability { online: true, reason: None }
    } else {
        Availability { online: false, reason: Some(OfflineReason::NoAgents) }
    })
}

/// Raises the visitor's read mark; true when it moved forward.
pub async fn set_visitor_read(db: &PgPool, conversation: Uuid, seq: i64) -> CoreResult<bool> {
    Ok(sqlx::query("update chat_conversations set visitor_read_seq = $2 where id = $1 and visitor_read_seq < $2 and next_seq >= $2")
        .bind(conversation)
        .bind(seq)
        .execute(db)
        .await?
        .rows_affected()
        > 0)
}

/// Highest seq of the visitor's own messages (what an agent has read when it reads all).
pub async fn last_visitor_seq(db: &PgPool, conversation: Uuid) -> CoreResult<i64> {
    Ok(sqlx::query_scalar(
        "select coalesce(max(cm.seq), 0) from chat_messages cm join messages m on m.id = cm.message_id
         where cm.conversation_id = $1 and m.direction = 'inbound'",
    )
    .bind(conversation)
    .fetch_one(db)
    .await?)
}

/// A stored attachment.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Attachment {
    /// Id.
    pub id: Uuid,
    /// Conversation it was uploaded to.
    pub conversation_id: Uuid,
    /// SHA-256 of the content (hex); also the file name under the attachments directory.
    pub sha256: String,
    /// Size.
    pub size_bytes: i64,
    /// Content type.
    pub content_type: String,
    /// Original file name.
    pub filename: String,
}

/// Records an attachment.
pub async fn insert_attachment(db: &PgPool, a: &Attachment) -> CoreResult<()> {
    sqlx::query(
        "insert into chat_attachments (id, conversation_id, sha256, size_bytes, content_type, filename) values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(a.id)
    .bind(a.conversation_id)
    .bind(&a.sha256)
    .bind(a.size_bytes)
    .bind(&a.content_type)
    .bind(&a.filename)
    .execute(db)
    .await?;
    Ok(())
}

/// Attachments by id that belong to the conversation.
pub async fn attachments_in(db: &PgPool, conversation: Uuid, ids: &[Uuid]) -> CoreResult<Vec<Attachment>> {
    Ok(sqlx::query_as(
        "select id, conversation_id, sha256, size_bytes, content_type, filename from chat_attachments where conversation_id = $1 and id = any($2)",
    )
    .bind(conversation)
    .bind(ids)
    .fetch_all(db)
    .await?)
}

/// One attachment.
pub async fn attachment(db: &PgPool, id: Uuid) -> CoreResult<Option<Attachment>> {
    Ok(sqlx::query_as("select id, conversation_id, sha256, size_bytes, content_type, filename from chat_attachments where id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?)
}

/// The message id an outbox row was made for.
pub async fn outbox_message(db: &PgPool, outbox_id: Uuid) -> CoreResult<Option<Uuid>> {
    let m: Option<Option<Uuid>> =
        sqlx::query_scalar("select message_id from outbox where id = $1").bind(outbox_id).fetch_optional(db).await?;
    Ok(m.flatten())
}

/// Erases what this chat channel keeps about a customer: the visitor details of every
/// conversation the customer's chat interactions belong to (name, email, language), and
/// those conversations' attachments (rows now, files after commit; a content-addressed
/// file another conversation still uses stays). Message bodies and their attachment lists
/// are core's rows, scrubbed by the CRM's erase.
pub struct ChatEraser(pub std::sync::Arc<crate::adapter::ChatState>);

#[async_trait::async_trait]
impl switchboard_core::privacy::PersonalDataEraser for ChatEraser {
    fn scope(&self) -> &str {
        "chat"
    }

    async fn erase_customer(
        &self,
        hub: &switchboard_core::Hub,
        tx: &mut sqlx::PgConnection,
        customer: Uuid,
    ) -> CoreResult<switchboard_core::privacy::Erased> {
        let convs: Vec<Uuid> = sqlx::query_scalar(
            "select c.id from chat_conversations c
              where c.adapter = $2 and c.id::text in (
                    select conversation_key from interactions
                     where customer_id = $1 and channel = 'chat' and conversation_key is not null)",
        )
        .bind(customer)
        .bind(&self.0.name)
        .fetch_all(&mut *tx)
        .await?;
        if convs.is_empty() {
            return Ok(Default::default());
        }
        let visitors = sqlx::query(
            "update chat_visitors set display_name = null, email = null, language = null
              where id in (select visitor_id from chat_conversations where id = any($1))",
        )
        .bind(&convs)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let removed: Vec<String> = sqlx::query_scalar("delete from chat_attachments where conversation_id = any($1) returning sha256")
            .bind(&convs)
            .fetch_all(&mut *tx)
            .await?;
        let n_attachments = removed.len() as u64;
        let mut shas = removed;
        shas.sort();
        shas.dedup();
        // Content-addressed: a file another conversation uploaded too is still theirs.
        let unused: Vec<String> =
            sqlx::query_scalar("select s from unnest($1::text[]) s where not exists (select 1 from chat_attachments a where a.sha256 = s)")
                .bind(&shas)
                .fetch_all(&mut *tx)
                .await?;
        let store = self.0.attachments(hub);
        let files = unused
            .into_iter()
            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|key| switchboard_core::files::StoredFile { store: store.clone(), key })
            .collect();
        Ok(switchboard_core::privacy::Erased { rows: visitors + n_attachments, files })
    }
}
