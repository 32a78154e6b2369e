//! Handing recipients to the outbox, exactly once: due rows are claimed with `FOR UPDATE
//! SKIP LOCKED` (any number of nodes), re-checked at that moment (consent, phone,
//! appointment, quiet hours, deadlines), rendered, and put in the outbox in the same
//! transaction that marks them `sending`. Then [`reconcile`] lets each row follow its
//! outbox row and the SMS channel's record of it.

use super::model::{Campaign, COLUMNS};
use super::schedule::zone_or;
use super::template::{AppointmentFacts, RenderContext};
use super::{Engine, Pass};
use crate::normalize::is_mobile;
use chrono::{DateTime, Duration, Utc};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use switchboard_core::outbox::{any_scan, enqueue_many_tx, index_order_only, NewOutbound};
use switchboard_core::sms_text;
use switchboard_core::{Channel, CoreResult};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    customer_id: Uuid,
    appointment_id: Option<Uuid>,
    due_at: DateTime<Utc>,
    latest_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct CustomerFacts {
    id: Uuid,
    name: String,
    language: Option<String>,
    time_zone: Option<String>,
    company: Option<String>,
    attributes: serde_json::Value,
    consent_sms: bool,
    gone: bool,
    phone: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AppointmentNow {
    id: Uuid,
    starts_at: DateTime<Utc>,
    time_zone: String,
    location: String,
    kind: String,
    status: String,
}

enum Decision {
    Send { phone: String, body: String },
    Defer { until: DateTime<Utc>, latest: Option<DateTime<Utc>> },
    Wait { until: DateTime<Utc> },
    Drop { status: &'static str, reason: String },
}

/// Hands every due recipient of every running campaign to the outbox; returns what it
/// did. Stops after `max_rounds` claims (the caller runs again next tick).
pub async fn dispatch_due(e: &Engine, now: DateTime<Utc>, max_rounds: usize) -> CoreResult<Pass> {
    let mut pass = Pass::default();
    let campaigns: Vec<Campaign> =
        sqlx::query_as(&format!("select {COLUMNS} from campaigns where status = 'running' order by created_at")).fetch_all(&e.db).await?;
    for c in campaigns {
        for _ in 0..max_rounds {
            let p = dispatch_campaign(e, &c, now).await?;
            let progressed = p.handed + p.deferred + p.dropped;
            pass.handed += p.handed;
            pass.deferred += p.deferred;
            pass.dropped += p.dropped;
            if progressed == 0 {
                break;
            }
        }
    }
    Ok(pass)
}

/// One claim of one campaign's due rows (at most `claim_batch`, fewer under a rate).
#[tracing::instrument(skip_all, fields(campaign_id = %c.id))]
async fn dispatch_campaign(e: &Engine, c: &Campaign, now: DateTime<Utc>) -> CoreResult<Pass> {
    let mut tx = e.db.begin().await?;
    // The campaign row is read again under a share lock: a pause or cancel committed
    // before this point stops the claim, one committed after waits for it.
    let live: Option<String> =
        sqlx::query_scalar("select status from campaigns where id = $1 for share").bind(c.id).fetch_optional(&mut *tx).await?;
    if live.as_deref() != Some("running") {
        return Ok(Pass::default());
    }
    let mut limit = e.config.claim_batch;
    if let Some(rate) = c.rate_per_second {
        // Across every node: what this campaign handed over in the last second.
        let recent: i64 = sqlx::query_scalar(
            "select count(*) from campaign_recipients where campaign_id = $1 and status <> 'planned' and handed_at > $2 - interval '1 second' and handed_at <= $2",
        )
        .bind(c.id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        limit = limit.min(rate as i64 - recent);
        if limit <= 0 {
            return Ok(Pass::default());
        }
    }
    // The first due rows in index order, not all of them read and sorted (the plan a stale
    // row estimate picks after a large planning run).
    index_order_only(&mut tx).await?;
    let rows: Vec<Claimed> = sqlx::query_as(
        "select id, customer_id, appointment_id, due_at, latest_at from campaign_recipients
          where campaign_id = $1 and status in ('planned','deferred') and due_at <= $2
          order by due_at limit $3 for update skip locked",
    )
    .bind(c.id)
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    any_scan(&mut tx).await?;
    if rows.is_empty() {
        return Ok(Pass::default());
    }
    let customers = customer_facts(&mut tx, &rows).await?;
    let appointments = appointment_facts(&mut tx, &rows).await?;
    let mut pass = Pass::default();
    // The sends of the claim are written together: one statement into the outbox, one
    // marking the recipients `sending` (a claim of 500 was 1,000 round trips).
    let mut sends: Vec<(Uuid, i16)> = Vec::new();
    let mut outbound: Vec<NewOutbound> = Vec::new();
    for r in &rows {
        let decision = decide(e, c, r, customers.get(&r.customer_id), r.appointment_id.and_then(|a| appointments.get(&a)), now);
        match decision {
            Decision::Send { phone, body } => {
                let parts = sms_text::segments(&body).parts as i16;
                let mut metadata = serde_json::json!({ "kind": "campaign", "campaign_id": c.id, "recipient_id": r.id });
                if let Some(ch) = &c.channel_name {
                    metadata["adapter"] = serde_json::Value::String(ch.clone());
                }
                sends.push((r.id, parts));
                outbound.push(NewOutbound {
                    idempotency_key: format!("campaign:{}", r.id),
                    channel: Channel::Sms,
                    interaction_id: None,
                    message_id: None,
                    recipient: phone,
                    subject: None,
                    body,
                    metadata,
                });
                pass.handed += 1;
            }
            Decision::Defer { until, latest } => {
                sqlx::query("update campaign_recipients set status = 'deferred', reason = 'quiet hours', due_at = $2, latest_at = $3, updated_at = now() where id = $1")
                    .bind(r.id)
                    .bind(until)
                    .bind(latest)
                    .execute(&mut *tx)
                    .await?;
                pass.deferred += 1;
            }
            Decision::Wait { until } => {
                sqlx::query("update campaign_recipients set due_at = $2, updated_at = now() where id = $1")
                    .bind(r.id)
                    .bind(until)
                    .execute(&mut *tx)
                    .await?;
                pass.deferred += 1;
            }
            Decision::Drop { status, reason } => {
                sqlx::query("update campaign_recipients set status = $2, reason = $3, finished_at = $4, updated_at = now() where id = $1")
                    .bind(r.id)
                    .bind(status)
                    .bind(&reason)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                pass.dropped += 1;
            }
        }
    }
    let outbox_ids = enqueue_many_tx(&mut tx, &outbound).await?;
    if !sends.is_empty() {
        let ids: Vec<Uuid> = sends.iter().map(|s| s.0).collect();
        let parts: Vec<i16> = sends.iter().map(|s| s.1).collect();
        let phones: Vec<&str> = outbound.iter().map(|m| m.recipient.as_str()).collect();
        let bodies: Vec<&str> = outbound.iter().map(|m| m.body.as_str()).collect();
        sqlx::query(
            "update campaign_recipients r set status = 'sending', reason = null, phone = x.phone, body = x.body, parts = x.parts,
                    outbox_id = x.outbox_id, handed_at = $6, handed_by = $7, updated_at = now()
               from unnest($1::uuid[], $2::text[], $3::text[], $4::int2[], $5::uuid[]) as x(id, phone, body, parts, outbox_id)
              where r.id = x.id",
        )
        .bind(&ids)
        .bind(&phones)
        .bind(&bodies)
        .bind(&parts)
        .bind(&outbox_ids)
        .bind(now)
        .bind(e.node)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(pass)
}

async fn customer_facts(tx: &mut PgConnection, rows: &[Claimed]) -> CoreResult<HashMap<Uuid, CustomerFacts>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.customer_id).collect();
    let facts: Vec<CustomerFacts> = sqlx::query_as(
        "select c.id, c.name, c.language, c.time_zone, c.company, c.attributes, c.consent_sms,
                (c.merged_into is not null or c.erased_at is not null) as gone,
                (select ci.address from customer_identities ci where ci.customer_id = c.id and ci.kind = 'phone' order by ci.created_at, ci.id limit 1) as phone
           from customers c where c.id = any($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(facts.into_iter().map(|f| (f.id, f)).collect())
}

async fn appointment_facts(tx: &mut PgConnection, rows: &[Claimed]) -> CoreResult<HashMap<Uuid, AppointmentNow>> {
    let ids: Vec<Uuid> = rows.iter().filter_map(|r| r.appointment_id).collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let facts: Vec<AppointmentNow> =
        sqlx::query_as("select id, starts_at, time_zone, location, kind, status from appointments where id = any($1)")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
    Ok(facts.into_iter().map(|a| (a.id, a)).collect())
}

fn decide(
    e: &Engine,
    c: &Campaign,
    r: &Claimed,
    cust: Option<&CustomerFacts>,
    appt: Option<&AppointmentNow>,
    now: DateTime<Utc>,
) -> Decision {
    let drop = |status: &'static str, reason: &str| Decision::Drop { status, reason: reason.to_string() };
    let Some(cust) = cust.filter(|c| !c.gone) else { return drop("skipped", "customer erased or merged") };
    if !cust.consent_sms {
        return drop("opted_out", "no SMS marketing consent at sending time");
    }
    let Some(phone) = cust.phone.clone() else { return drop("skipped", "no phone number") };
    if !is_mobile(&phone) {
        return drop("skipped", "not a mobile number");
    }
    let mut latest = r.latest_at;
    let appointment = match (c.kind.as_str(), r.appointment_id) {
        ("reminder" | "follow_up", None) => return drop("skipped", "appointment deleted"),
        ("reminder" | "follow_up", Some(_)) => {
            let Some(a) = appt else { return drop("skipped", "appointment deleted") };
            if a.status == "cancelled" || a.status == "no_show" {
                return drop("skipped", &format!("appointment {}", a.status.replace('_', "-")));
            }
            if c.kind == "reminder" {
                if a.starts_at <= now {
                    return drop("skipped", "appointment time passed");
                }
                // Rescheduled since planning: the reminder follows the appointment.
                let at = a.starts_at - Duration::minutes(c.offset_minutes as i64);
                if at > now && at > r.due_at {
                    return Decision::Wait { until: at };
                }
                latest = Some(a.starts_at);
            }
            Some(AppointmentFacts {
                starts_at: a.starts_at,
                time_zone: zone_or(Some(&a.time_zone), e.config.zone()),
                location: a.location.clone(),
                kind: a.kind.clone(),
            })
        }
        _ => None,
    };
    if latest.is_some_and(|l| now > l) {
        let why = match c.kind.as_str() {
            "birthday" => format!("missed: not sent within {} minutes of the local send time", c.grace_minutes),
            "reminder" => "appointment time passed".into(),
            "follow_up" => "missed: past the grace period".into(),
            _ => "the campaign's end passed".into(),
        };
        return Decision::Drop { status: "skipped", reason: why };
    }
    if c.ends_at.is_some_and(|end| now > end) {
        return drop("skipped", "the campaign's end passed");
    }
    let zone = zone_or(cust.time_zone.as_deref(), e.config.zone());
    if let Some(until) = c.quiet_hours().and_then(|q| q.defer(now, zone)) {
        // Deferred, never dropped — except a reminder the quiet night would push past its
        // appointment, or past the campaign's end.
        if c.kind == "reminder" && latest.is_some_and(|l| until >= l) {
            return drop("skipped", "quiet hours last until the appointment");
        }
        if c.ends_at.is_some_and(|end| until > end) {
            return drop("skipped", "quiet hours last past the campaign's end");
        }
        let latest = match c.kind.as_str() {
            // The grace period guards against late sends after downtime, not after a
            // quiet night it was deliberately deferred through.
            "birthday" | "follow_up" => Some(until + Duration::minutes(c.grace_minutes as i64)),
            _ => latest,
        };
        return Decision::Defer { until, latest };
    }
    let ctx = RenderContext {
        name: cust.name.clone(),
        language: cust.language.clone(),
        company: cust.company.clone(),
        phone: Some(phone.clone()),
        attributes: cust.attributes.as_object().cloned().unwrap_or_default(),
        appointment,
    };
    let (body, _) = c.template.render(&ctx);
    if body.is_empty() {
        return drop("skipped", "the message rendered empty");
    }
    Decision::Send { phone, body }
}

/// Brings `sending`/`sent` rows up to date: outbox failed → `failed`, `opted_out` (the
/// channel refused a STOPped number) or `unknown` (the channel could not tell whether the
/// SMSC got it); outbox sent → `sent`, then `delivered` or `failed` by the receipt. Reads
/// the SMS channel's `sms_sent` record (forward-only status), as the channel reads the
/// CRM's consent tables: shared tables, no crate dependency.
pub async fn reconcile(db: &PgPool, now: DateTime<Utc>) -> CoreResult<u64> {
    let r = sqlx::query(
        "with outcome as (
            select r.id,
                   case
                     when o.status = 'failed' and s.status = 'unknown' then 'unknown'
                     when o.status = 'failed' and o.last_error ilike '%opted out%' then 'opted_out'
                     when o.status = 'failed' then 'failed'
                     when o.status = 'sent' and s.status = 'delivered' then 'delivered'
                     when o.status = 'sent' and s.status in ('undeliverable','rejected','expired','deleted','failed') then 'failed'
                     when o.status = 'sent' then 'sent'
                     else r.status
                   end as status,
                   case
                     when o.status = 'failed' then coalesce(s.error, o.last_error)
                     when o.status = 'sent' and s.status in ('undeliverable','rejected','expired','deleted','failed') then 'receipt: ' || s.status
                     else null
                   end as reason
              from campaign_recipients r
              join outbox o on o.id = r.outbox_id
              left join sms_sent s on s.outbox_id = o.id
             where r.status in ('sending','sent'))
         update campaign_recipients r
            set status = outcome.status, reason = outcome.reason, updated_at = now(),
                finished_at = case when outcome.status in ('delivered','failed','unknown','opted_out') then $1 else null end
           from outcome
          where outcome.id = r.id and outcome.status <> r.status",
    )
    .bind(now)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// Broadcasts with nothing left to hand over are `completed` (receipts still arrive).
pub async fn complete_finished(db: &PgPool) -> CoreResult<u64> {
    let r = sqlx::query(
        "update campaigns k set status = 'completed', updated_at = now()
          where k.kind = 'broadcast' and k.status = 'running' and k.planning_state = 'planned'
            and not exists (select 1 from campaign_recipients r where r.campaign_id = k.id and r.status in ('planned','deferred','sending'))",
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

#[cfg(test)]
mod tests {
    #[test]
    fn mobile_numbers() {
        assert!(super::is_mobile("+4915112345678"));
        assert!(!super::is_mobile("+493012345678"), "a Berlin landline");
        assert!(super::is_mobile("+12015550123"), "US: fixed-or-mobile");
        assert!(!super::is_mobile("+99"));
        assert!(super::is_mobile("+8613812345678"), "a Chinese mobile");
        assert!(super::is_mobile("+79161234567"), "a Moscow mobile");
        // Read with the calling-code split of normalize::phone: the leading 8 of a Russian
        // toll-free number is part of the NSN, not a trunk prefix to strip.
        assert!(!super::is_mobile("+78001234567"), "a Russian toll-free number");
        assert!(!super::is_mobile("4915112345678"), "not E.164");
    }
}
