//! Results: per-recipient outcomes, totals and delivery rate, replies linked to the
//! campaign (an inbound SMS interaction of the recipient within the reply window — it was
//! routed to a queue like any inbound text), STOPs counted (an SMS consent withdrawal in
//! that window), the delivery timeline for the chart, and the CSV export.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use switchboard_core::CoreResult;
use uuid::Uuid;

/// Totals of one campaign.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Totals {
    /// Every row.
    pub total: i64,
    /// Waiting for their time.
    pub planned: i64,
    /// Waiting for quiet hours to end.
    pub deferred: i64,
    /// In the outbox.
    pub sending: i64,
    /// Accepted by the SMSC, no receipt yet.
    pub sent: i64,
    /// Delivered to the handset.
    pub delivered: i64,
    /// Failed.
    pub failed: i64,
    /// May or may not have gone out; never resent automatically.
    pub unknown: i64,
    /// Not sent: consent withdrawn or STOP.
    pub opted_out: i64,
    /// Not sent, with a reason.
    pub skipped: i64,
    /// Not sent: the campaign was cancelled.
    pub cancelled: i64,
    /// Recipients who replied within the reply window.
    pub replies: i64,
    /// Recipients who opted out (STOP) within the reply window after their message.
    pub stops: i64,
    /// delivered / (sent + delivered + failed + unknown), when anything was handed over.
    pub delivery_rate: Option<f64>,
}

/// Totals of a campaign.
#[tracing::instrument(skip(db))]
pub async fn totals(db: &PgPool, campaign: Uuid, reply_window_hours: i64) -> CoreResult<Totals> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select status, count(*) from campaign_recipients where campaign_id = $1 group by status")
            .bind(campaign)
            .fetch_all(db)
            .await?;
    let mut t = Totals::default();
    for (s, n) in rows {
        t.total += n;
        match s.as_str() {
            "planned" => t.planned = n,
            "deferred" => t.deferred = n,
            "sending" => t.sending = n,
            "sent" => t.sent = n,
            "delivered" => t.delivered = n,
            "failed" => t.failed = n,
            "unknown" => t.unknown = n,
            "opted_out" => t.opted_out = n,
            "skipped" => t.skipped = n,
            _ => t.cancelled = n,
        }
    }
    let (replies, stops): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where exists (select 1 from interactions i where i.customer_id = r.customer_id and i.channel = 'sms'
                  and i.direction = 'inbound' and i.created_at > r.handed_at and i.created_at <= r.handed_at + make_interval(hours => $2))),
                count(*) filter (where exists (select 1 from customer_consent_events e where e.customer_id = r.customer_id and e.kind = 'sms'
                  and not e.granted and e.at > r.handed_at and e.at <= r.handed_at + make_interval(hours => $2)))
           from campaign_recipients r where r.campaign_id = $1 and r.handed_at is not null",
    )
    .bind(campaign)
    .bind(reply_window_hours as i32)
    .fetch_one(db)
    .await?;
    t.replies = replies;
    t.stops = stops;
    let handed = t.sent + t.delivered + t.failed + t.unknown;
    t.delivery_rate = (handed > 0).then(|| t.delivered as f64 / handed as f64);
    Ok(t)
}

/// One bucket of the delivery chart.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Bucket {
    /// Bucket start.
    pub at: DateTime<Utc>,
    /// Handed to the channel in this bucket.
    pub handed: i64,
    /// Of those, delivered.
    pub delivered: i64,
    /// Of those, failed, unknown or opted out at the channel.
    pub failed: i64,
}

/// The chart: messages handed over per bucket (about 60 buckets over the run) and what
/// became of them.
pub async fn timeline(db: &PgPool, campaign: Uuid) -> CoreResult<(i64, Vec<Bucket>)> {
    let span: Option<(DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("select min(handed_at), max(handed_at) from campaign_recipients where campaign_id = $1 having count(handed_at) > 0")
            .bind(campaign)
            .fetch_optional(db)
            .await?;
    let Some((first, last)) = span else { return Ok((60, vec![])) };
    let secs = ((last - first).num_seconds() / 60).max(1);
    let buckets: Vec<Bucket> = sqlx::query_as(
        "select date_bin(make_interval(secs => $2), handed_at, $3) as at, count(*) as handed,
                count(*) filter (where status = 'delivered') as delivered,
                count(*) filter (where status in ('failed','unknown','opted_out')) as failed
           from campaign_recipients where campaign_id = $1 and handed_at is not null group by 1 order by 1",
    )
    .bind(campaign)
    .bind(secs as f64)
    .bind(first)
    .fetch_all(db)
    .await?;
    Ok((secs, buckets))
}

/// One recipient and its outcome.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Recipient {
    /// Row id.
    pub id: Uuid,
    /// Customer.
    pub customer_id: Uuid,
    /// Customer name.
    pub name: String,
    /// Occasion (`once`, the year, the appointment).
    pub occurrence: String,
    /// Outcome.
    pub status: String,
    /// Why (skipped, failed, deferred).
    pub reason: Option<String>,
    /// Planned (or deferred-to) time.
    pub due_at: DateTime<Utc>,
    /// Number sent to.
    pub phone: Option<String>,
    /// Text sent.
    pub body: Option<String>,
    /// SMS parts.
    pub parts: Option<i16>,
    /// Handed to the channel.
    pub handed_at: Option<DateTime<Utc>>,
    /// Final outcome time.
    pub finished_at: Option<DateTime<Utc>>,
    /// A reply within the window: the interaction.
    pub reply_interaction_id: Option<Uuid>,
    /// Opted out (STOP) within the window.
    pub stopped: bool,
}

const RECIPIENT_SELECT: &str = "select r.id, r.customer_id, c.name, r.occurrence, r.status, r.reason, r.due_at, r.phone, r.body, r.parts,
        r.handed_at, r.finished_at,
        (select i.id from interactions i where r.handed_at is not null and i.customer_id = r.customer_id and i.channel = 'sms'
            and i.direction = 'inbound' and i.created_at > r.handed_at and i.created_at <= r.handed_at + make_interval(hours => $2)
          order by i.created_at limit 1) as reply_interaction_id,
        exists (select 1 from customer_consent_events e where r.handed_at is not null and e.customer_id = r.customer_id and e.kind = 'sms'
            and not e.granted and e.at > r.handed_at and e.at <= r.handed_at + make_interval(hours => $2)) as stopped
   from campaign_recipients r join customers c on c.id = r.customer_id
  where r.campaign_id = $1 and ($3::text is null or r.status = $3)";

/// A page of recipients, optionally of one status.
pub async fn recipients(
    db: &PgPool,
    campaign: Uuid,
    window: i64,
    status: Option<&str>,
    limit: i64,
    offset: i64,
) -> CoreResult<Vec<Recipient>> {
    Ok(sqlx::query_as(&format!("{RECIPIENT_SELECT} order by r.due_at, r.id limit $4 offset $5"))
        .bind(campaign)
        .bind(window as i32)
        .bind(status)
        .bind(limit)
        .bind(offset)
        .fetch_all(db)
        .await?)
}

fn csv_cell(s: &str) -> String {
    // Cells a spreadsheet would run as a formula are quoted with a leading apostrophe.
    let s = if s.starts_with(['=', '+', '-', '@']) && !s.starts_with('+') { format!("'{s}") } else { s.to_string() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Every recipient and its outcome as CSV.
pub async fn csv(db: &PgPool, campaign: Uuid, window: i64) -> CoreResult<String> {
    let rows = recipients(db, campaign, window, None, i64::MAX, 0).await?;
    let mut out =
        String::from("recipient_id,customer_id,name,phone,occurrence,status,reason,due_at,handed_at,finished_at,parts,replied,stop\n");
    let t = |d: Option<DateTime<Utc>>| d.map(|d| d.to_rfc3339()).unwrap_or_default();
    for r in rows {
        let cells = [
            r.id.to_string(),
            r.customer_id.to_string(),
            csv_cell(&r.name),
            csv_cell(r.phone.as_deref().unwrap_or("")),
            csv_cell(&r.occurrence),
            r.status.clone(),
            csv_cell(r.reason.as_deref().unwrap_or("")),
            r.due_at.to_rfc3339(),
            t(r.handed_at),
            t(r.finished_at),
            r.parts.map(|p| p.to_string()).unwrap_or_default(),
            r.reply_interaction_id.is_some().to_string(),
            r.stopped.to_string(),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// The campaign a customer's SMS most likely answers: the last campaign message handed to
/// them within `reply_window_hours` (index `campaign_recipients_customer`), if any.
pub async fn replied_campaign(db: &PgPool, customer: Uuid, reply_window_hours: i64) -> CoreResult<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "select campaign_id from campaign_recipients
          where customer_id = $1 and handed_at > now() - make_interval(hours => $2)
          order by handed_at desc limit 1",
    )
    .bind(customer)
    .bind(reply_window_hours as i32)
    .fetch_optional(db)
    .await?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(super::csv_cell("a,b"), "\"a,b\"");
        assert_eq!(super::csv_cell("=cmd()"), "'=cmd()");
        assert_eq!(super::csv_cell("+4915112345678"), "+4915112345678");
        assert_eq!(super::csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
