//! Database access for customers and identities: resolution of an address to a customer
//! (race-free creation), the screen-pop card, the timeline, merge, privacy export and
//! erasure. Search is in [`crate::search`], duplicate suggestions in
//! [`crate::duplicates`].

use crate::normalize::{self, IdentityKind, Region};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use switchboard_core::{CoreError, CoreResult, CustomerHints, Hub, ResolvedCustomer};
use uuid::Uuid;

/// A customer record.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Customer {
    /// Id.
    pub id: Uuid,
    /// Id in an external system (import key).
    pub external_id: Option<String>,
    /// Display name.
    pub name: String,
    /// Preferred language (BCP 47).
    pub language: Option<String>,
    /// IANA time zone.
    pub time_zone: Option<String>,
    /// Birthday.
    pub birthday: Option<NaiveDate>,
    /// Tags.
    pub tags: Vec<String>,
    /// Custom attributes (validated against the configured schema).
    pub attributes: Value,
    /// Company.
    pub company: Option<String>,
    /// Consent to SMS marketing.
    pub consent_sms: bool,
    /// Consent to email marketing.
    pub consent_email: bool,
    /// Own manager (agent id) for sticky routing.
    pub own_manager_id: Option<Uuid>,
    /// Set when merged into another customer.
    pub merged_into: Option<Uuid>,
    /// Set when erased.
    pub erased_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

/// Columns of [`Customer`].
pub const CUSTOMER_COLUMNS: &str = "id, external_id, name, language, time_zone, birthday, tags, attributes, company, consent_sms, \
     consent_email, own_manager_id, merged_into, erased_at, created_at, updated_at";

/// An identity of a customer.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Identity {
    /// Id.
    pub id: Uuid,
    /// Customer.
    pub customer_id: Uuid,
    /// phone, email or chat.
    pub kind: String,
    /// Normalized address.
    pub address: String,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// Fetches a customer.
pub async fn customer(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> CoreResult<Option<Customer>> {
    Ok(sqlx::query_as(&format!("select {CUSTOMER_COLUMNS} from customers where id = $1")).bind(id).fetch_optional(db).await?)
}

/// Identities of a customer.
pub async fn identities(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> CoreResult<Vec<Identity>> {
    Ok(sqlx::query_as(
        "select id, customer_id, kind, address, created_at from customer_identities where customer_id = $1 order by kind, created_at",
    )
    .bind(id)
    .fetch_all(db)
    .await?)
}

#[derive(sqlx::FromRow)]
struct Resolved {
    id: Uuid,
    own_manager_id: Option<Uuid>,
    language: Option<String>,
    name: String,
}

async fn find_by_identity(db: impl sqlx::PgExecutor<'_>, kind: IdentityKind, address: &str) -> CoreResult<Option<Resolved>> {
    Ok(sqlx::query_as(
        "select c.id, c.own_manager_id, c.language, c.name from customer_identities i join customers c on c.id = i.customer_id
         where i.kind = $1 and i.address = $2",
    )
    .bind(kind.as_str())
    .bind(address)
    .fetch_optional(db)
    .await?)
}

/// Finds the customer of a channel address or creates one. Concurrent calls for the same
/// new address yield one customer: the identity insert is `on conflict do nothing`, and
/// the loser rolls back its customer row and re-selects the winner's.
pub async fn resolve(db: &PgPool, region: Region, kind: IdentityKind, raw: &str, hints: &CustomerHints) -> CoreResult<ResolvedCustomer> {
    let address = normalize::address(kind, raw, region).map_err(|e| CoreError::field("address", e.to_string()))?;
    let hint_name = hints.display_name.as_deref().map(str::trim).filter(|n| !n.is_empty() && n.len() <= 200);
    let hint_lang = hints.language.as_deref().map(str::trim).filter(|l| !l.is_empty() && l.len() <= 35);
    // Only a chat's pre-chat form email is linked; for email the sender is the address.
    let hint_email = match kind {
        IdentityKind::Chat => hints.email.as_deref().and_then(|e| normalize::email(e).ok()),
        _ => None,
    };
    for _ in 0..3 {
        if let Some(found) = find_by_identity(db, kind, &address).await? {
            apply_hints(db, found.id, &found.name, hint_name, hint_email.as_deref()).await?;
            return Ok(ResolvedCustomer {
                campaign_id: None,
                id: found.id,
                own_manager: found.own_manager_id,
                language: found.language.or(hint_lang.map(str::to_string)),
            });
        }
        // A chat visitor who typed a known email in the pre-chat form is that customer.
        let known_by_email = match &hint_email {
            Some(e) => find_by_identity(db, IdentityKind::Email, e).await?,
            None => None,
        };
        let mut tx = db.begin().await?;
        let (id, own_manager, language, created) = match &known_by_email {
            Some(c) => (c.id, c.own_manager_id, c.language.clone(), false),
            None => {
                let id: Uuid = sqlx::query_scalar("insert into customers (name, language) values ($1, $2) returning id")
                    .bind(hint_name.unwrap_or(""))
                    .bind(hint_lang)
                    .fetch_one(&mut *tx)
                    .await?;
                (id, None, hint_lang.map(str::to_string), true)
            }
        };
        let claimed: Option<Uuid> = sqlx::query_scalar(
            "insert into customer_identities (customer_id, kind, address) values ($1, $2, $3)
             on conflict (kind, address) do nothing returning customer_id",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(&address)
        .fetch_optional(&mut *tx)
        .await?;
        if claimed.is_none() {
            // Another resolver committed this address first: drop our row, take theirs.
            tx.rollback().await?;
            continue;
        }
        if created {
            if let Some(e) = &hint_email {
                sqlx::query("insert into customer_identities (customer_id, kind, address) values ($1, 'email', $2) on conflict do nothing")
                    .bind(id)
                    .bind(e)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        if !created {
            if let Some(c) = &known_by_email {
                apply_hints(db, id, &c.name, hint_name, None).await?;
            }
        }
        return Ok(ResolvedCustomer { id, own_manager, language, campaign_id: None });
    }
    Err(CoreError::Conflict("the address kept changing owner; retry".into()))
}

/// Pre-chat form data on a known customer: link the email when nobody has it, set the
/// name when empty.
async fn apply_hints(db: &PgPool, id: Uuid, current_name: &str, name: Option<&str>, email: Option<&str>) -> CoreResult<()> {
    if let Some(e) = email {
        sqlx::query("insert into customer_identities (customer_id, kind, address) values ($1, 'email', $2) on conflict do nothing")
            .bind(id)
            .bind(e)
            .execute(db)
            .await?;
    }
    if let (Some(n), true) = (name, current_name.is_empty()) {
        sqlx::query("update customers set name = $2, updated_at = now() where id = $1 and name = '' and erased_at is null")
            .bind(id)
            .bind(n)
            .execute(db)
            .await?;
    }
    Ok(())
}

/// One line of the timeline or the card.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TimelineEntry {
    /// Interaction id.
    pub id: Uuid,
    /// Channel.
    pub channel: String,
    /// inbound or outbound.
    pub direction: String,
    /// Status.
    pub status: String,
    /// Disposition when closed.
    pub disposition: Option<String>,
    /// Agent's summary.
    pub summary: Option<String>,
    /// Email subject.
    pub subject: Option<String>,
    /// Address the customer used.
    pub customer_address: Option<String>,
    /// Agent who handled it.
    pub agent_id: Option<Uuid>,
    /// That agent's name.
    pub agent_name: Option<String>,
    /// Where to play the call's recording (`/api/v1/recordings/{id}`, served with
    /// authorization by the voice channel), if it has one. Never the server's file path.
    pub recording_url: Option<String>,
    /// Messages in it.
    pub message_count: i64,
    /// Start of the first message.
    pub preview: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Closed.
    pub closed_at: Option<DateTime<Utc>>,
}

/// SQL for an interaction's (`i`) recording URL: the voice channel's authorized endpoint.
const RECORDING_URL: &str =
    "case when i.channel = 'voice' and coalesce(i.metadata->>'recording', '') <> '' then '/api/v1/recordings/' || i.id end";

/// Every interaction of a customer, newest first.
pub async fn timeline(db: &PgPool, customer_id: Uuid, limit: i64, offset: i64) -> CoreResult<Vec<TimelineEntry>> {
    Ok(sqlx::query_as(&format!(
        "select i.id, i.channel, i.direction, i.status, i.disposition, i.summary, i.subject, i.customer_address,
                i.agent_id, a.name as agent_name, {RECORDING_URL} as recording_url,
                (select count(*) from messages m where m.interaction_id = i.id) as message_count,
                (select left(m.body, 200) from messages m where m.interaction_id = i.id and m.direction <> 'internal'
                  order by m.created_at limit 1) as preview,
                i.created_at, i.closed_at
         from interactions i left join agents a on a.id = i.agent_id
         where i.customer_id = $1 order by i.created_at desc, i.id limit $2 offset $3",
    ))
    .bind(customer_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?)
}

/// The screen-pop card.
pub async fn card(db: &PgPool, id: Uuid) -> CoreResult<Option<Value>> {
    let Some(c) = customer(db, id).await? else { return Ok(None) };
    // A merged customer's card is the survivor's.
    if let Some(s) = c.merged_into {
        return Box::pin(card(db, s)).await;
    }
    let manager: Option<(Uuid, String)> = match c.own_manager_id {
        Some(m) => sqlx::query_as("select id, name from agents where id = $1").bind(m).fetch_optional(db).await?,
        None => None,
    };
    type OpenRow = (Uuid, String, String, Option<Uuid>, DateTime<Utc>);
    type LastRow = (Uuid, String, String, Option<String>, DateTime<Utc>, Option<String>);
    let open: Vec<OpenRow> = sqlx::query_as(
        "select id, channel, status, agent_id, created_at from interactions
         where customer_id = $1 and status in ('queued','offered','active','wrap_up') order by created_at desc limit 20",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    let last: Vec<LastRow> = sqlx::query_as(
        "select id, channel, status, disposition, created_at, summary from interactions
         where customer_id = $1 order by created_at desc, id limit 5",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    Ok(Some(json!({
        "id": c.id,
        "name": c.name,
        "tags": c.tags,
        "company": c.company,
        "language": c.language,
        "own_manager": manager.map(|(id, name)| json!({ "id": id, "name": name })),
        "open_interactions": open.into_iter().map(|(id, channel, status, agent_id, created_at)|
            json!({ "id": id, "channel": channel, "status": status, "agent_id": agent_id, "created_at": created_at })).collect::<Vec<_>>(),
        "last_contacts": last.into_iter().map(|(id, channel, status, disposition, created_at, summary)|
            json!({ "id": id, "channel": channel, "status": status, "disposition": disposition, "created_at": created_at, "summary": summary })).collect::<Vec<_>>(),
    })))
}

/// Merges `other` into `survivor`: identities, interactions, notes, appointments, tasks and
/// consent history move; empty fields of the survivor are filled from the other; tags and
/// attributes are united (the survivor's values win). Audited.
pub async fn merge(db: &PgPool, actor: Option<Uuid>, survivor: Uuid, other: Uuid) -> CoreResult<Customer> {
    if survivor == other {
        return Err(CoreError::field("other_id", "cannot merge a customer into itself"));
    }
    let mut tx = db.begin().await?;
    // Lock both in id order so two opposite merges cannot deadlock.
    let locked: Vec<Customer> =
        sqlx::query_as(&format!("select {CUSTOMER_COLUMNS} from customers where id = any($1) order by id for update"))
            .bind(vec![survivor, other])
            .fetch_all(&mut *tx)
            .await?;
    let s = locked.iter().find(|c| c.id == survivor).ok_or(CoreError::NotFound("customer"))?;
    let o = locked.iter().find(|c| c.id == other).ok_or(CoreError::NotFound("customer"))?;
    for c in [s, o] {
        if c.merged_into.is_some() {
            return Err(CoreError::Conflict(format!("customer {} was already merged", c.id)));
        }
        if c.erased_at.is_some() {
            return Err(CoreError::Conflict(format!("customer {} was erased", c.id)));
        }
    }
    let moved = move_children(&mut tx, survivor, other).await?;
    // An external id is unique: the survivor keeps its own, or takes the other's.
    let other_external = o.external_id.clone();
    sqlx::query("update customers set external_id = null where id = $1").bind(other).execute(&mut *tx).await?;
    let merged: Customer = sqlx::query_as(&format!(
        "update customers s set
            name = case when s.name = '' then o.name else s.name end,
            external_id = coalesce(s.external_id, $3),
            language = coalesce(s.language, o.language), time_zone = coalesce(s.time_zone, o.time_zone),
            birthday = coalesce(s.birthday, o.birthday), company = coalesce(s.company, o.company),
            own_manager_id = coalesce(s.own_manager_id, o.own_manager_id),
            tags = array(select distinct t from unnest(s.tags || o.tags) t order by t),
            attributes = o.attributes || s.attributes,
            updated_at = now()
         from customers o where s.id = $1 and o.id = $2 returning {}",
        CUSTOMER_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", ")
    ))
    .bind(survivor)
    .bind(other)
    .bind(&other_external)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("update customers set merged_into = $1, updated_at = now() where id = $2")
        .bind(survivor)
        .bind(other)
        .execute(&mut *tx)
        .await?;
    // Earlier merges into the other now point at the survivor.
    sqlx::query("update customers set merged_into = $1 where merged_into = $2").bind(survivor).bind(other).execute(&mut *tx).await?;
    switchboard_core::auth::audit(
        &mut tx,
        actor,
        "customer.merge",
        "customer",
        &survivor.to_string(),
        json!({ "survivor": survivor, "merged": other, "merged_name": o.name, "moved": moved }),
    )
    .await?;
    tx.commit().await?;
    Ok(merged)
}

async fn move_children(tx: &mut PgConnection, to: Uuid, from: Uuid) -> CoreResult<Value> {
    let mut moved = serde_json::Map::new();
    for (table, column) in [
        ("customer_identities", "customer_id"),
        ("interactions", "customer_id"),
        ("customer_notes", "customer_id"),
        ("appointments", "customer_id"),
        ("crm_tasks", "customer_id"),
        ("customer_consent_events", "customer_id"),
    ] {
        let n = sqlx::query(&format!("update {table} set {column} = $1 where {column} = $2"))
            .bind(to)
            .bind(from)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        moved.insert(table.to_string(), json!(n));
    }
    Ok(Value::Object(moved))
}

/// Everything held on one customer, as JSON (GDPR art. 15/20).
pub async fn privacy_export(db: &PgPool, id: Uuid) -> CoreResult<Option<Value>> {
    let Some(c) = customer(db, id).await? else { return Ok(None) };
    let ids = identities(db, id).await?;
    let notes: Vec<Value> = sqlx::query_scalar(
        "select json_build_object('id', id, 'author', author_name, 'body', body, 'created_at', created_at)::jsonb
         from customer_notes where customer_id = $1 order by created_at",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    let consent: Vec<Value> = sqlx::query_scalar(
        "select json_build_object('kind', kind, 'granted', granted, 'source', source, 'at', at)::jsonb
         from customer_consent_events where customer_id = $1 order by at, id",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    let appointments: Vec<Value> = sqlx::query_scalar(
        "select to_jsonb(a) - 'customer_id' - 'created_by' from appointments a where customer_id = $1 order by starts_at",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    let tasks: Vec<Value> = sqlx::query_scalar(
        "select json_build_object('kind', kind, 'title', title, 'due_at', due_at, 'done_at', done_at)::jsonb
         from crm_tasks where customer_id = $1 order by due_at",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    let interactions: Vec<Value> = sqlx::query_scalar(&format!(
        "select json_build_object('id', i.id, 'channel', i.channel, 'direction', i.direction, 'status', i.status,
                'disposition', i.disposition, 'summary', i.summary, 'subject', i.subject, 'address', i.customer_address,
                'created_at', i.created_at, 'closed_at', i.closed_at, 'recording_url', {RECORDING_URL},
                'messages', coalesce((select json_agg(json_build_object('direction', m.direction, 'body', m.body,
                    'attachments', m.attachments, 'created_at', m.created_at) order by m.created_at)
                  from messages m where m.interaction_id = i.id and m.direction <> 'internal'), '[]'::json))::jsonb
         from interactions i where i.customer_id = $1 order by i.created_at",
    ))
    .bind(id)
    .fetch_all(db)
    .await?;
    Ok(Some(json!({
        "exported_at": Utc::now(),
        "customer": c,
        "identities": ids,
        "consent_history": consent,
        "notes": notes,
        "appointments": appointments,
        "tasks": tasks,
        "interactions": interactions,
    })))
}

/// Erases a customer's personal data, everywhere the hub keeps it. Kept: the customer row
/// as an anonymous shell (so statistics still join), interactions with channel, status,
/// timestamps and disposition, their events (payloads without personal data) and the
/// consent history (proof of what was consented to, without names); an audit entry says
/// who erased when. Scrubbed: name, external id, birthday, attributes, tags, company,
/// identities, notes, appointment details, task titles, message bodies and attachments,
/// interaction addresses, subjects, summaries and metadata, outbox copies, personal keys of
/// event payloads, and through each channel's [`PersonalDataEraser`] what the channels
/// keep (chat visitor names and emails, chat attachments, call recordings). Files are
/// deleted once the transaction has committed.
///
/// [`PersonalDataEraser`]: switchboard_core::privacy::PersonalDataEraser
pub async fn erase(hub: &Hub, actor: Option<Uuid>, id: Uuid) -> CoreResult<()> {
    let mut tx = hub.db().begin().await?;
    let c: Option<Customer> = sqlx::query_as(&format!("select {CUSTOMER_COLUMNS} from customers where id = $1 for update"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let c = c.ok_or(CoreError::NotFound("customer"))?;
    if c.erased_at.is_some() {
        return Err(CoreError::Conflict("customer already erased".into()));
    }
    // Customers merged into this one held the same person's data (and may still own
    // interactions recorded before the merge).
    let mut people: Vec<Uuid> = sqlx::query_scalar("select id from customers where merged_into = $1").bind(id).fetch_all(&mut *tx).await?;
    people.push(id);
    // The channels first: they find their rows through the interactions' metadata and
    // conversation keys, which are scrubbed below.
    let mut files = Vec::new();
    let mut channel_rows = serde_json::Map::new();
    for eraser in hub.personal_data_erasers() {
        let mut rows = 0;
        let mut n_files = 0;
        for &p in &people {
            let e = eraser.erase_customer(hub, &mut tx, p).await?;
            rows += e.rows;
            n_files += e.files.len();
            files.extend(e.files);
        }
        let prev = channel_rows.get(eraser.scope()).and_then(|v| v["rows"].as_u64()).unwrap_or(0);
        let prev_files = channel_rows.get(eraser.scope()).and_then(|v| v["files"].as_u64()).unwrap_or(0);
        channel_rows.insert(eraser.scope().to_string(), json!({ "rows": prev + rows, "files": prev_files + n_files as u64 }));
    }
    let n_ids =
        sqlx::query("delete from customer_identities where customer_id = any($1)").bind(&people).execute(&mut *tx).await?.rows_affected();
    let n_notes =
        sqlx::query("delete from customer_notes where customer_id = any($1)").bind(&people).execute(&mut *tx).await?.rows_affected();
    sqlx::query("update appointments set location = '', notes = '', updated_at = now() where customer_id = any($1)")
        .bind(&people)
        .execute(&mut *tx)
        .await?;
    sqlx::query("update crm_tasks set title = '[erased]' where customer_id = any($1)").bind(&people).execute(&mut *tx).await?;
    let n_msgs = sqlx::query(
        "update messages set body = '[erased]', attachments = '[]'
         where interaction_id in (select id from interactions where customer_id = any($1))",
    )
    .bind(&people)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(
        "update outbox set recipient = '[erased]', subject = null, body = '[erased]', metadata = '{}'
         where interaction_id in (select id from interactions where customer_id = any($1))",
    )
    .bind(&people)
    .execute(&mut *tx)
    .await?;
    // Event payloads: ids, kinds and times stay for reports; keys that can carry what the
    // person said or who they are (or name a deleted file) go. Events are append-only
    // except inside an erase (migration 20261202400000).
    sqlx::query("select set_config('switchboard.erasing', 'on', true)").execute(&mut *tx).await?;
    sqlx::query(
        "update interaction_events set data = data - $2::text[]
          where interaction_id in (select id from interactions where customer_id = any($1)) and data ?| $2::text[]",
    )
    .bind(&people)
    .bind(EVENT_PERSONAL_KEYS)
    .execute(&mut *tx)
    .await?;
    sqlx::query("select set_config('switchboard.erasing', 'off', true)").execute(&mut *tx).await?;
    let n_int = sqlx::query(
        "update interactions set customer_address = null, subject = null, summary = null,
            metadata = '{\"erased\": true}', updated_at = now(),
            -- Conversation keys can hold the address (`sms:<channel>:<number>`); an open
            -- interaction keeps its key until it closes so replies still find the thread.
            conversation_key = case when status in ('queued','offered','active','wrap_up') then conversation_key end
          where customer_id = any($1)",
    )
    .bind(&people)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(
        "update customers set name = '', external_id = null, language = null, time_zone = null, birthday = null,
            tags = '{}', attributes = '{}', company = null, consent_sms = false, consent_email = false,
            own_manager_id = null, erased_at = now(), updated_at = now() where id = any($1)",
    )
    .bind(&people)
    .execute(&mut *tx)
    .await?;
    // Merge audit entries name the merged customer; the merge itself stays on record.
    let people_text: Vec<String> = people.iter().map(Uuid::to_string).collect();
    sqlx::query(
        "update audit_log set details = details - 'merged_name'
          where action = 'customer.merge' and (target_id = any($1) or details->>'merged' = any($1)) and details ? 'merged_name'",
    )
    .bind(&people_text)
    .execute(&mut *tx)
    .await?;
    switchboard_core::auth::audit(
        &mut tx,
        actor,
        "customer.erase",
        "customer",
        &id.to_string(),
        json!({ "identities": n_ids, "notes": n_notes, "messages": n_msgs, "interactions": n_int, "channels": channel_rows }),
    )
    .await?;
    tx.commit().await?;
    let failed = switchboard_core::privacy::remove_files(&files).await;
    if failed > 0 {
        return Err(CoreError::Internal(format!("personal data erased, but {failed} file(s) could not be deleted; see the log")));
    }
    Ok(())
}

/// Keys of event payloads that can hold personal data: addresses, names, what was said,
/// recording paths.
const EVENT_PERSONAL_KEYS: &[&str] = &[
    "recording",
    "from",
    "address",
    "customer_address",
    "name",
    "display_name",
    "email",
    "reply_email",
    "body",
    "subject",
    "text",
    "caller",
    "phone_number",
];
