//! Planning: one recipient row per (campaign, customer, occurrence), inserted ahead of
//! time behind the unique constraint, so planning may run again after an edit or a
//! restart and still never makes a second row for the same occasion.
//!
//! Each campaign is planned under its own lease (`campaign-plan:<id>`, core's
//! [`switchboard_core::lease`]): one node plans a campaign at a time while every node
//! dispatches. The holder renews it between batches, and every planning write runs in a
//! transaction that first checks the lease is still ours (`still_held`, the fencing
//! token), so a node paused past its lease (GC, SIGSTOP) cannot write a batch after
//! another node took the campaign over. A dead planner's broadcast is resumed by another
//! node as soon as its lease expires (planning is idempotent).

use super::model::{Campaign, COLUMNS};
use super::schedule::{birthday_send_at, zone_or};
use super::Engine;
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Transaction};
use std::collections::HashMap;
use switchboard_core::lease::{self, Lease};
use switchboard_core::{CoreError, CoreResult};
use uuid::Uuid;

/// The lease of one campaign's planning.
fn lease_name(campaign: Uuid) -> String {
    format!("campaign-plan:{campaign}")
}

fn lease_ttl(e: &Engine) -> std::time::Duration {
    std::time::Duration::from_secs(e.config.plan_lease_secs.max(1))
}

const LEASE_LOST: &str = "campaign planning lease lost";

fn lease_lost() -> CoreError {
    CoreError::Conflict(LEASE_LOST.into())
}

fn is_lease_lost(e: &CoreError) -> bool {
    matches!(e, CoreError::Conflict(m) if m == LEASE_LOST)
}

/// Takes (or, held already, renews) the planning lease of `campaign`; `None` when another
/// node plans it.
async fn take(e: &Engine, campaign: Uuid) -> CoreResult<Option<Lease>> {
    lease::acquire(&e.db, &lease_name(campaign), e.node, lease_ttl(e)).await
}

/// Renews the lease once a third of it has passed; an error when it was lost.
async fn keep(e: &Engine, l: &mut Lease) -> CoreResult<()> {
    let ttl = lease_ttl(e);
    if !l.locally_valid() {
        return Err(lease_lost());
    }
    if l.valid_until.saturating_duration_since(tokio::time::Instant::now()) < ttl * 2 / 3 && !lease::renew(&e.db, l, ttl).await? {
        return Err(lease_lost());
    }
    Ok(())
}

/// A planning write transaction, fenced: it begins with the lease check, so a holder
/// that lost the lease writes nothing (and a competing acquisition waits for it).
async fn fenced(e: &Engine, l: &Lease) -> CoreResult<Transaction<'static, Postgres>> {
    let mut tx = e.db.begin().await?;
    if !lease::still_held(&mut tx, &l.name, l.token).await? {
        return Err(lease_lost());
    }
    Ok(tx)
}

/// Rows to write: customer, occurrence, appointment, status, reason, due, latest.
#[derive(Default)]
struct Rows {
    customer: Vec<Uuid>,
    occurrence: Vec<String>,
    appointment: Vec<Option<Uuid>>,
    status: Vec<&'static str>,
    reason: Vec<Option<String>>,
    due: Vec<DateTime<Utc>>,
    latest: Vec<Option<DateTime<Utc>>>,
}

impl Rows {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        customer: Uuid,
        occurrence: String,
        appointment: Option<Uuid>,
        status: &'static str,
        reason: Option<String>,
        due: DateTime<Utc>,
        latest: Option<DateTime<Utc>>,
    ) {
        self.customer.push(customer);
        self.occurrence.push(occurrence);
        self.appointment.push(appointment);
        self.status.push(status);
        self.reason.push(reason);
        self.due.push(due);
        self.latest.push(latest);
    }

    /// Inserts missing rows; a row still `planned` follows a changed schedule (an edited
    /// send time, a rescheduled appointment). Rows past `planned` are never touched.
    async fn write(self, db: &mut PgConnection, campaign: Uuid) -> CoreResult<u64> {
        if self.customer.is_empty() {
            return Ok(0);
        }
        let status: Vec<String> = self.status.iter().map(|s| s.to_string()).collect();
        let r = sqlx::query(
            "insert into campaign_recipients (campaign_id, customer_id, occurrence, appointment_id, status, reason, due_at, latest_at)
             select $1, * from unnest($2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::timestamptz[], $8::timestamptz[])
             on conflict (campaign_id, customer_id, occurrence) do update
                set due_at = excluded.due_at, latest_at = excluded.latest_at, updated_at = now()
              where campaign_recipients.status = 'planned' and excluded.status = 'planned'
                and (campaign_recipients.due_at, campaign_recipients.latest_at) is distinct from (excluded.due_at, excluded.latest_at)",
        )
        .bind(campaign)
        .bind(&self.customer)
        .bind(&self.occurrence)
        .bind(&self.appointment)
        .bind(&status)
        .bind(&self.reason)
        .bind(&self.due)
        .bind(&self.latest)
        .execute(db)
        .await?;
        Ok(r.rows_affected())
    }
}

async fn running(db: &PgPool, kinds: &[&str]) -> CoreResult<Vec<Campaign>> {
    let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
    Ok(sqlx::query_as(&format!("select {COLUMNS} from campaigns where status = 'running' and kind = any($1) order by created_at"))
        .bind(kinds)
        .fetch_all(db)
        .await?)
}

/// Plans every running campaign.
pub async fn plan_all(e: &Engine, now: DateTime<Utc>) -> CoreResult<u64> {
    Ok(plan_broadcasts(e, now).await? + plan_recurring(e, now).await?)
}

/// Plans recurring campaigns (birthdays, reminders, follow-ups) and drops reminders of
/// cancelled appointments.
pub async fn plan_recurring(e: &Engine, now: DateTime<Utc>) -> CoreResult<u64> {
    let mut n = 0;
    for c in running(&e.db, &["birthday", "reminder", "follow_up"]).await? {
        // Kept, not released, after the pass: the same node keeps planning the campaign
        // while it renews on its next pass; another takes over once it lapses.
        let Some(l) = take(e, c.id).await? else { continue };
        let r = match c.kind.as_str() {
            "birthday" => plan_birthdays(e, &c, now, &l).await,
            "reminder" => plan_reminders(e, &c, now, &l).await,
            _ => plan_follow_ups(e, &c, now, &l).await,
        };
        match r {
            Ok(k) => n += k,
            Err(err) if is_lease_lost(&err) => tracing::info!(campaign_id = %c.id, "Campaign planning lease lost; another node plans it."),
            Err(err) => tracing::warn!(campaign_id = %c.id, error = %err, "Could not plan campaign."),
        }
    }
    n += drop_cancelled_appointments(&e.db).await?;
    Ok(n)
}

/// Plans broadcasts that are running and not planned yet, in keyset batches with the
/// progress recorded after each, each under its campaign's lease. A broadcast left
/// `planning` by a node that died is resumed as soon as that node's lease has expired.
pub async fn plan_broadcasts(e: &Engine, now: DateTime<Utc>) -> CoreResult<u64> {
    let mut total = 0;
    let waiting: Vec<Uuid> = sqlx::query_scalar(
        "select id from campaigns where kind = 'broadcast' and status in ('running','paused')
            and planning_state in ('idle','planning') order by created_at",
    )
    .fetch_all(&e.db)
    .await?;
    for id in waiting {
        let Some(mut l) = take(e, id).await? else { continue };
        let r = async {
            let mut tx = fenced(e, &l).await?;
            let claimed: Option<Campaign> = sqlx::query_as(&format!(
                "update campaigns set planning_state = 'planning', updated_at = now(), planning_error = null
                  where id = $1 and kind = 'broadcast' and status in ('running','paused') and planning_state in ('idle','planning')
                 returning {COLUMNS}"
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            match claimed {
                Some(c) => plan_broadcast(e, &c, now, &mut l).await,
                None => Ok(0),
            }
        }
        .await;
        match r {
            Ok(n) => total += n,
            Err(err) if is_lease_lost(&err) => {
                tracing::info!(campaign_id = %id, "Broadcast planning lease lost; another node plans it.");
                continue;
            }
            Err(err) => {
                tracing::warn!(campaign_id = %id, error = %err, "Broadcast planning failed.");
                if let Ok(mut tx) = fenced(e, &l).await {
                    sqlx::query("update campaigns set planning_state = 'failed', planning_error = $2, updated_at = now() where id = $1")
                        .bind(id)
                        .bind(err.to_string())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                }
            }
        }
        lease::release(&e.db, &l).await?;
    }
    Ok(total)
}

#[tracing::instrument(skip_all, fields(campaign_id = %c.id))]
async fn plan_broadcast(e: &Engine, c: &Campaign, now: DateTime<Utc>, l: &mut Lease) -> CoreResult<u64> {
    let estimate = super::audience::count(&e.db, &c.audience, now).await?;
    keep(e, l).await?;
    let mut tx = fenced(e, l).await?;
    sqlx::query("update campaigns set audience_estimate = $2, updated_at = now() where id = $1")
        .bind(c.id)
        .bind(estimate)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let due = c.starts_at.unwrap_or(now);
    let mut after = Uuid::nil();
    let mut planned: i64 = 0;
    let started = std::time::Instant::now();
    loop {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new("with batch as (select c.id from customers c where c.id > ");
        qb.push_bind(after);
        c.audience.push_conditions(&mut qb, now);
        qb.push(" order by c.id limit ").push_bind(e.config.plan_batch);
        qb.push(
            "), ins as (insert into campaign_recipients (campaign_id, customer_id, occurrence, status, due_at, latest_at)
               select ",
        )
        .push_bind(c.id)
        .push(", id, 'once', 'planned', ")
        .push_bind(due)
        .push(", ")
        .push_bind(c.ends_at)
        .push(
            "::timestamptz from batch on conflict do nothing returning 1)
             select (select count(*) from batch), (select count(*) from ins), (select id from batch order by id desc limit 1)",
        );
        keep(e, l).await?;
        let mut tx = fenced(e, l).await?;
        let (seen, inserted, last): (i64, i64, Option<Uuid>) = qb.build_query_as().fetch_one(&mut *tx).await?;
        sqlx::query("update campaigns set planned_count = planned_count + $2, updated_at = now() where id = $1")
            .bind(c.id)
            .bind(inserted)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        planned += inserted;
        match last {
            Some(l) if seen == e.config.plan_batch => after = l,
            _ => break,
        }
    }
    let mut tx = fenced(e, l).await?;
    sqlx::query("update campaigns set planning_state = 'planned', updated_at = now() where id = $1").bind(c.id).execute(&mut *tx).await?;
    tx.commit().await?;
    tracing::info!(campaign_id = %c.id, planned, ms = started.elapsed().as_millis() as u64, "Broadcast planned.");
    Ok(planned as u64)
}

/// The (month, day) pairs of birthdays that may fall between `from` and `to` in some zone
/// (one day of margin each side), 29 February included when 28 February of a common year
/// is in range.
fn birthday_days(from: DateTime<Utc>, to: DateTime<Utc>) -> (Vec<i32>, Vec<i32>) {
    let (mut months, mut days) = (Vec::new(), Vec::new());
    let mut d = from.date_naive() - Duration::days(1);
    let end = to.date_naive() + Duration::days(1);
    while d <= end {
        months.push(d.month() as i32);
        days.push(d.day() as i32);
        if d.month() == 2 && d.day() == 28 && NaiveDate::from_ymd_opt(d.year(), 2, 29).is_none() {
            months.push(2);
            days.push(29);
        }
        d += Duration::days(1);
    }
    (months, days)
}

#[tracing::instrument(skip_all, fields(campaign_id = %c.id))]
async fn plan_birthdays(e: &Engine, c: &Campaign, now: DateTime<Utc>, l: &Lease) -> CoreResult<u64> {
    let active_from = c.starts_at.unwrap_or(c.created_at);
    let from = (now - Duration::hours(e.config.lookback_hours)).max(active_from);
    let to = now + Duration::hours(e.config.lookahead_hours);
    if to < from {
        return Ok(0);
    }
    let (months, days) = birthday_days(from, to);
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
        "select c.id, c.birthday, c.time_zone from customers c
          where c.birthday is not null
            and (extract(month from c.birthday)::int, extract(day from c.birthday)::int) in (select * from unnest(",
    );
    qb.push_bind(months).push("::int[], ").push_bind(days).push("::int[]))");
    c.audience.push_conditions(&mut qb, now);
    let customers: Vec<(Uuid, NaiveDate, Option<String>)> = qb.build_query_as().fetch_all(&e.db).await?;
    let grace = Duration::minutes(c.grace_minutes as i64);
    let fallback = e.config.zone();
    let mut rows = Rows::default();
    for (id, birthday, tz) in customers {
        let zone = zone_or(tz.as_deref(), fallback);
        for year in [now.year() - 1, now.year(), now.year() + 1] {
            let Some(at) = birthday_send_at(birthday, year, zone, c.send_time) else { continue };
            if at < from || at > to || c.ends_at.is_some_and(|end| at > end) {
                continue;
            }
            if now > at + grace {
                // The hub was not sending that morning: recorded, never sent late.
                let reason = format!("missed: not sent within {} minutes of the local send time", c.grace_minutes);
                rows.push(id, year.to_string(), None, "skipped", Some(reason), at, Some(at + grace));
            } else {
                rows.push(id, year.to_string(), None, "planned", None, at, Some(at + grace));
            }
        }
    }
    let mut tx = fenced(e, l).await?;
    let n = rows.write(&mut tx, c.id).await?;
    tx.commit().await?;
    Ok(n)
}

type AppointmentRow = (Uuid, Uuid, DateTime<Utc>, i32, DateTime<Utc>);

async fn appointments_for(
    c: &Campaign,
    db: &PgPool,
    now: DateTime<Utc>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    statuses: &[&str],
) -> CoreResult<Vec<AppointmentRow>> {
    let statuses: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
        "select a.id, a.customer_id, a.starts_at, a.duration_minutes, a.created_at from appointments a join customers c on c.id = a.customer_id
          where a.status = any(",
    );
    qb.push_bind(statuses).push(") and a.starts_at >= ").push_bind(from).push(" and a.starts_at <= ").push_bind(to);
    if !c.appointment_kinds.is_empty() {
        qb.push(" and a.kind = any(").push_bind(c.appointment_kinds.clone()).push(")");
    }
    c.audience.push_conditions(&mut qb, now);
    Ok(qb.build_query_as().fetch_all(db).await?)
}

/// Reminders: `offset_minutes` before each upcoming appointment; a row still planned moves
/// with a rescheduled appointment. An appointment booked (or a campaign started) after its
/// reminder moment gets it at once, or is skipped, per `late_policy`; none after the
/// appointment time.
#[tracing::instrument(skip_all, fields(campaign_id = %c.id))]
async fn plan_reminders(e: &Engine, c: &Campaign, now: DateTime<Utc>, l: &Lease) -> CoreResult<u64> {
    let offset = Duration::minutes(c.offset_minutes as i64);
    let to = now + offset + Duration::hours(e.config.lookahead_hours);
    let appts = appointments_for(c, &e.db, now, now, to, &["scheduled", "confirmed"]).await?;
    // Each appointment's latest row: a reminder already sent for another time than the
    // appointment's now (moved after the reminder went) gets a new occurrence for the new
    // time; otherwise the latest row is the one planned rows move with.
    let ids: Vec<Uuid> = appts.iter().map(|a| a.0).collect();
    let latest: HashMap<Uuid, (String, String, Option<DateTime<Utc>>)> =
        sqlx::query_as::<_, (Uuid, String, String, Option<DateTime<Utc>>)>(
            "select distinct on (appointment_id) appointment_id, occurrence, status, latest_at from campaign_recipients
          where campaign_id = $1 and appointment_id = any($2) order by appointment_id, created_at desc, occurrence desc",
        )
        .bind(c.id)
        .bind(&ids)
        .fetch_all(&e.db)
        .await?
        .into_iter()
        .map(|(a, occ, st, latest)| (a, (occ, st, latest)))
        .collect();
    let mut rows = Rows::default();
    for (id, customer, starts_at, _, created_at) in appts {
        if starts_at <= now {
            continue;
        }
        let occurrence = match latest.get(&id) {
            Some((_, status, was)) if reminded(status) && *was != Some(starts_at) => {
                format!("{id}@{}", starts_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            }
            Some((occurrence, ..)) => occurrence.clone(),
            None => id.to_string(),
        };
        let at = starts_at - offset;
        if at >= now {
            rows.push(customer, occurrence, Some(id), "planned", None, at, Some(starts_at));
        } else if c.late_policy == "send" {
            rows.push(customer, occurrence, Some(id), "planned", None, now, Some(starts_at));
        } else {
            let why =
                if created_at > at { "booked inside the reminder window" } else { "reminder time passed before the campaign could send" };
            rows.push(customer, occurrence, Some(id), "skipped", Some(format!("{why} (late reminders are skipped)")), at, Some(starts_at));
        }
    }
    let mut tx = fenced(e, l).await?;
    let n = rows.write(&mut tx, c.id).await?;
    tx.commit().await?;
    Ok(n)
}

/// Whether a reminder row went out (or may have) for the time it was planned for.
fn reminded(status: &str) -> bool {
    matches!(status, "sending" | "sent" | "delivered" | "unknown" | "failed")
}

/// Follow-ups: `offset_minutes` after each appointment that took place ended (not
/// cancelled, not a no-show), within the grace period.
#[tracing::instrument(skip_all, fields(campaign_id = %c.id))]
async fn plan_follow_ups(e: &Engine, c: &Campaign, now: DateTime<Utc>, l: &Lease) -> CoreResult<u64> {
    let offset = Duration::minutes(c.offset_minutes as i64);
    let active_from = c.starts_at.unwrap_or(c.created_at);
    let from = now - offset - Duration::hours(e.config.lookback_hours) - Duration::days(7);
    let appts = appointments_for(c, &e.db, now, from, now, &["scheduled", "confirmed", "done"]).await?;
    let grace = Duration::minutes(c.grace_minutes as i64);
    let mut rows = Rows::default();
    for (id, customer, starts_at, duration, _) in appts {
        let ends = starts_at + Duration::minutes(duration as i64);
        let at = ends + offset;
        if ends > now || at < active_from || at > now + Duration::hours(e.config.lookahead_hours) {
            continue;
        }
        if now > at + grace {
            rows.push(customer, id.to_string(), Some(id), "skipped", Some("missed: past the grace period".into()), at, Some(at + grace));
        } else {
            rows.push(customer, id.to_string(), Some(id), "planned", None, at, Some(at + grace));
        }
    }
    let mut tx = fenced(e, l).await?;
    let n = rows.write(&mut tx, c.id).await?;
    tx.commit().await?;
    Ok(n)
}

/// Reminders and follow-ups of appointments that were cancelled (or marked no-show, or
/// deleted) are dropped while still waiting.
pub async fn drop_cancelled_appointments(db: &PgPool) -> CoreResult<u64> {
    let cancelled = sqlx::query(
        "update campaign_recipients r set status = 'skipped', reason = 'appointment ' || replace(a.status, '_', '-'), updated_at = now()
           from appointments a
          where a.id = r.appointment_id and r.status in ('planned','deferred') and a.status in ('cancelled','no_show')",
    )
    .execute(db)
    .await?
    .rows_affected();
    let deleted = sqlx::query(
        "update campaign_recipients r set status = 'skipped', reason = 'appointment deleted', updated_at = now()
           from campaigns k
          where k.id = r.campaign_id and k.kind in ('reminder','follow_up') and r.appointment_id is null and r.status in ('planned','deferred')",
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(cancelled + deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn birthday_days_cover_the_window_and_leap_day() {
        let from = Utc.with_ymd_and_hms(2027, 2, 27, 0, 0, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2027, 2, 28, 12, 0, 0).unwrap();
        let (m, d) = birthday_days(from, to);
        let pairs: Vec<(i32, i32)> = m.into_iter().zip(d).collect();
        assert!(pairs.contains(&(2, 28)) && pairs.contains(&(2, 29)) && pairs.contains(&(3, 1)) && pairs.contains(&(2, 26)));
        let (m, d) =
            birthday_days(Utc.with_ymd_and_hms(2028, 2, 28, 0, 0, 0).unwrap(), Utc.with_ymd_and_hms(2028, 2, 28, 1, 0, 0).unwrap());
        assert_eq!(m.len(), 3, "a leap year has its own 29 February: {d:?}");
    }
}
