//! `/api/v1/reports/…`: the reports (queues, agents, channels, dispositions, IVR,
//! campaigns) as JSON or CSV, the raw contact records as a streamed CSV, the recordings
//! list, and the live wallboard (snapshot and WebSocket of deltas). Supervisors and
//! admins only.

#![allow(clippy::type_complexity)] // sqlx row tuples

use super::{Access, ApiPath, ApiQuery, RouteDoc};
use crate::auth::Caller;
use crate::domain::Role;
use crate::error::{CoreError, CoreResult};
use crate::hub::Hub;
use crate::reports::interval::{local_day_start, Interval};
use crate::reports::query::{self, csv_field, rows_to_csv, Format, Kind, SlFormula};
use crate::reports::wallboard::Wallboard;
use crate::reports::ReportSettings;
use axum::body::Body;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

const SUPERVISORS: &[Role] = &[Role::Admin, Role::Supervisor];

/// The report routes (authorization table and OpenAPI).
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "GET",
        path: "/api/v1/reports/{kind}",
        access: Access::Roles(SUPERVISORS),
        tag: "reports",
        summary: "A report from the rollups: kind = queues | agents | channels | dispositions | ivr | campaigns | recordings. Query: from, to (YYYY-MM-DD, to inclusive; or RFC 3339, to exclusive), tz (IANA, default reports.time_zone), interval (15m | 30m | hour | day | week | month | total), queue, agent, channel (comma lists), group (interval | dimension | both), sl_formula, business_hours (true: only each queue's calendar hours; queues and dispositions), limit (rows per page, default 2,000, at most 10,000), cursor (the `next` of the previous page). Rows are paged by key (interval start, then queue/agent/channel): `next` is the cursor of the following page, null on the last; `totals` are always of the whole range. The body is streamed as it is read. Definitions: docs/metrics.md.",
    },
    RouteDoc {
        method: "GET",
        path: "/api/v1/reports/{kind}/csv",
        access: Access::Roles(SUPERVISORS),
        tag: "reports",
        summary: "The same report as CSV, the whole range in one streamed file (not paged: an export is a download; the labels, then the figures alphabetically); kind = contacts streams the raw contact records of the range.",
    },
    RouteDoc {
        method: "GET",
        path: "/api/v1/wallboard",
        access: Access::Roles(SUPERVISORS),
        tag: "reports",
        summary: "The live wallboard now: per queue waiting, oldest wait, answered, abandoned, service level and ASA today; agents by state.",
    },
    RouteDoc {
        method: "GET",
        path: "/api/v1/wallboard/stream",
        access: Access::Roles(SUPERVISORS),
        tag: "reports",
        summary: "WebSocket: a snapshot, then one delta (changed queues and agents) per event batch.",
    },
];

#[derive(Clone)]
struct ReportsCtx {
    settings: ReportSettings,
    zone: Tz,
    board: Wallboard,
}

/// The router (state: [`Hub`]).
pub fn router(settings: ReportSettings, board: Wallboard) -> Router<Hub> {
    let zone = settings.zone().unwrap_or(Tz::UTC);
    let ctx = Arc::new(ReportsCtx { settings, zone, board });
    Router::new()
        .route("/api/v1/reports/{kind}", get(report))
        .route("/api/v1/reports/{kind}/csv", get(report_csv))
        .route("/api/v1/wallboard", get(wallboard))
        .route("/api/v1/wallboard/stream", get(wallboard_stream))
        .layer(Extension(ctx))
}

/// Query parameters of a report.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// Start: a local date or an RFC 3339 instant.
    pub from: Option<String>,
    /// End: a local date (inclusive) or an RFC 3339 instant (exclusive).
    pub to: Option<String>,
    /// IANA zone.
    pub tz: Option<String>,
    /// Interval.
    pub interval: Option<String>,
    /// Queue ids, comma separated.
    pub queue: Option<String>,
    /// Agent ids, comma separated.
    pub agent: Option<String>,
    /// Channels, comma separated.
    pub channel: Option<String>,
    /// interval | dimension | both.
    pub group: Option<String>,
    /// Service-level formula.
    pub sl_formula: Option<String>,
    /// Search text (recordings).
    pub q: Option<String>,
    /// Page size: recordings; report rows (default and largest: `query::PAGE_DEFAULT`,
    /// `query::PAGE_MAX`).
    pub limit: Option<i64>,
    /// The `next` of the previous page of a report (JSON only).
    pub cursor: Option<String>,
    /// Page offset (recordings).
    pub offset: Option<i64>,
    /// Only each queue's business hours (its calendar); queue reports only.
    pub business_hours: Option<bool>,
}

fn parse_instant(field: &str, s: &str, tz: Tz, end: bool) -> CoreResult<DateTime<Utc>> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(local_day_start(if end { d + Duration::days(1) } else { d }, tz));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| CoreError::field(field, "must be a date (YYYY-MM-DD) or an RFC 3339 instant"))
}

fn uuids(field: &str, s: &Option<String>) -> CoreResult<Vec<Uuid>> {
    s.as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| x.trim().parse::<Uuid>().map_err(|_| CoreError::field(field, "must be a comma-separated list of ids")))
        .collect()
}

/// Validates parameters into a request.
fn request(ctx: &ReportsCtx, kind: Kind, p: &ReportParams) -> CoreResult<query::Request> {
    let tz: Tz = match &p.tz {
        Some(z) => z.parse().map_err(|_| CoreError::field("tz", "must be an IANA time zone such as Europe/Berlin"))?,
        None => ctx.zone,
    };
    let today = Utc::now().with_timezone(&tz).date_naive();
    let from = match &p.from {
        Some(s) => parse_instant("from", s, tz, false)?,
        None => local_day_start(today, tz),
    };
    let to = match &p.to {
        Some(s) => parse_instant("to", s, tz, true)?,
        None => local_day_start(today + Duration::days(1), tz),
    };
    let interval = match &p.interval {
        Some(s) => Interval::parse(s).ok_or_else(|| CoreError::field("interval", "must be 15m, 30m, hour, day, week, month or total"))?,
        None => Interval::Day,
    };
    let channels: Vec<String> =
        p.channel.as_deref().unwrap_or("").split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
    if let Some(c) = channels.iter().find(|c| !matches!(c.as_str(), "voice" | "chat" | "email" | "sms")) {
        return Err(CoreError::field("channel", format!("unknown channel `{c}`")));
    }
    let sl_formula = match &p.sl_formula {
        Some(f) => Some(SlFormula::parse(f).ok_or_else(|| CoreError::field("sl_formula", "unknown formula (see docs/metrics.md)"))?),
        None => None,
    };
    let (by_dimension, interval) = match p.group.as_deref().unwrap_or("both") {
        "interval" => (false, interval),
        "dimension" => (true, Interval::Total),
        "both" => (true, interval),
        _ => return Err(CoreError::field("group", "must be interval, dimension or both")),
    };
    Ok(query::Request {
        kind,
        from,
        to,
        tz,
        interval,
        queues: uuids("queue", &p.queue)?,
        agents: uuids("agent", &p.agent)?,
        channels,
        sl_formula,
        by_dimension,
        business_hours: p.business_hours.unwrap_or(false),
        page: None,
    })
}

/// The page of a JSON report: `limit` rows (1 to `PAGE_MAX`, default `PAGE_DEFAULT`)
/// after `cursor`.
fn page(p: &ReportParams) -> CoreResult<query::Page> {
    let limit = match p.limit {
        None => query::PAGE_DEFAULT,
        Some(l) if (1..=query::PAGE_MAX as i64).contains(&l) => l as usize,
        Some(_) => return Err(CoreError::field("limit", format!("must be 1 to {}", query::PAGE_MAX))),
    };
    let after = p.cursor.as_deref().map(query::Cursor::decode).transpose()?;
    Ok(query::Page { limit, after })
}

#[tracing::instrument(skip(hub, ctx, caller, p))]
async fn report(
    State(hub): State<Hub>,
    Extension(ctx): Extension<Arc<ReportsCtx>>,
    caller: Caller,
    ApiPath(kind): ApiPath<String>,
    ApiQuery(p): ApiQuery<ReportParams>,
) -> CoreResult<Response> {
    caller.require(SUPERVISORS)?;
    if kind == "recordings" {
        return Ok(Json(recordings(&hub, &ctx, &p).await?).into_response());
    }
    let k = Kind::parse(&kind).ok_or(CoreError::NotFound("report"))?;
    let mut r = request(&ctx, k, &p)?;
    r.page = Some(page(&p)?);
    let prepared = query::prepare(hub.db(), ctx.zone, &r).await?;
    let body = streamed(query::stream(hub.db().clone(), prepared, Format::Json)).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// A report body streamed as it is written. The first chunk is awaited here, so an error
/// before any row (e.g. the query failing) is still an error response; a failure later
/// cuts the body short (the client sees an incomplete response, never a partial report
/// that looks whole).
async fn streamed(mut rx: tokio::sync::mpsc::Receiver<CoreResult<bytes::Bytes>>) -> CoreResult<Body> {
    let first = rx.recv().await.transpose()?;
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| {
            let c = c.map_err(|error| {
                tracing::warn!(%error, "Report stream failed.");
                std::io::Error::other("report failed")
            });
            (c, rx)
        })
    });
    Ok(Body::from_stream(futures::StreamExt::chain(futures::stream::iter(first.map(Ok::<_, std::io::Error>)), rest)))
}

fn csv_response(name: &str, body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.csv\"")),
        ],
        body,
    )
        .into_response()
}

async fn report_csv(
    State(hub): State<Hub>,
    Extension(ctx): Extension<Arc<ReportsCtx>>,
    caller: Caller,
    ApiPath(kind): ApiPath<String>,
    ApiQuery(p): ApiQuery<ReportParams>,
) -> CoreResult<Response> {
    caller.require(SUPERVISORS)?;
    if kind == "contacts" {
        let r = request(&ctx, Kind::Queues, &p)?;
        return Ok(csv_response("contacts", contacts_csv(hub, r)));
    }
    if kind == "recordings" {
        let rows = recordings(&hub, &ctx, &p).await?["items"].as_array().cloned().unwrap_or_default();
        return Ok(csv_response(&kind, Body::from(rows_to_csv(&rows))));
    }
    let k = Kind::parse(&kind).ok_or(CoreError::NotFound("report"))?;
    if p.cursor.is_some() || p.limit.is_some() {
        return Err(CoreError::field(
            "cursor",
            "the CSV export is the whole range in one streamed file; limit and cursor page the JSON report",
        ));
    }
    let r = request(&ctx, k, &p)?;
    let prepared = query::prepare(hub.db(), ctx.zone, &r).await?;
    Ok(csv_response(&kind, streamed(query::stream(hub.db().clone(), prepared, Format::Csv)).await?))
}

const CONTACT_CSV_COLUMNS: &[&str] = &[
    "interaction_id",
    "channel",
    "direction",
    "queue",
    "first_queue",
    "agent",
    "customer_id",
    "campaign_id",
    "reopened",
    "created_at",
    "enqueued_at",
    "answered_at",
    "wait_secs",
    "talk_secs",
    "hold_secs",
    "wrap_secs",
    "first_response_at",
    "inbound_messages",
    "replies",
    "notes",
    "transfers",
    "ring_no_answers",
    "outcome",
    "disposition",
    "ended_at",
];

#[derive(sqlx::FromRow)]
struct ContactRow {
    interaction_id: Uuid,
    channel: String,
    direction: String,
    queue: Option<String>,
    first_queue: Option<String>,
    agent: Option<String>,
    customer_id: Option<Uuid>,
    campaign_id: Option<String>,
    reopened: bool,
    created_at: DateTime<Utc>,
    enqueued_at: Option<DateTime<Utc>>,
    answered_at: Option<DateTime<Utc>>,
    wait_ms: Option<i64>,
    talk_ms: i64,
    hold_ms: i64,
    wrap_ms: i64,
    first_response_at: Option<DateTime<Utc>>,
    inbound_messages: i32,
    replies: i32,
    notes: i32,
    transfers: i32,
    ring_no_answers: i32,
    outcome: String,
    disposition: Option<String>,
    ended_at: Option<DateTime<Utc>>,
}

/// Streams the contact records created in the range, a page at a time (keyset on
/// created_at, id): memory stays flat however long the range.
fn contacts_csv(hub: Hub, r: query::Request) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut header = CONTACT_CSV_COLUMNS.join(",");
        header.push_str("\r\n");
        if tx.send(Ok(header)).await.is_err() {
            return;
        }
        let mut after: (DateTime<Utc>, Uuid) = (r.from - Duration::microseconds(1), Uuid::max());
        let fmt = |t: Option<DateTime<Utc>>| t.map(|t| t.with_timezone(&r.tz).to_rfc3339()).unwrap_or_default();
        for _ in 0..100_000 {
            let rows: Result<Vec<ContactRow>, sqlx::Error> = sqlx::query_as(
                "select c.interaction_id, c.channel, c.direction, q.name as queue, fq.name as first_queue, a.name as agent, c.customer_id,
                        c.campaign_id, c.reopened, c.created_at, c.enqueued_at, c.answered_at, c.wait_ms, c.talk_ms, c.hold_ms, c.wrap_ms, c.first_response_at,
                        c.inbound_messages, c.replies, c.notes, c.transfers, c.ring_no_answers, c.outcome, c.disposition, c.ended_at
                   from report_contacts c
                   left join queues q on q.id = c.queue_id
                   left join queues fq on fq.id = c.first_queue_id
                   left join agents a on a.id = c.first_agent_id
                  where c.created_at >= $1 and c.created_at < $2 and (c.created_at, c.interaction_id) > ($3, $4)
                    and (cardinality($5::uuid[]) = 0 or c.queue_id = any($5))
                    and (cardinality($6::uuid[]) = 0 or c.first_agent_id = any($6))
                    and (cardinality($7::text[]) = 0 or c.channel = any($7))
                  order by c.created_at, c.interaction_id limit 2000",
            )
            .bind(r.from)
            .bind(r.to)
            .bind(after.0)
            .bind(after.1)
            .bind(&r.queues)
            .bind(&r.agents)
            .bind(&r.channels)
            .fetch_all(hub.db())
            .await;
            let rows = match rows {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(%error, "Contact export failed.");
                    let _ = tx.send(Err(std::io::Error::other("export failed"))).await;
                    return;
                }
            };
            let Some(last) = rows.last() else { return };
            after = (last.created_at, last.interaction_id);
            let mut chunk = String::with_capacity(rows.len() * 200);
            for c in &rows {
                let secs = |ms: i64| format!("{:.3}", ms as f64 / 1000.0);
                let fields: Vec<String> = vec![
                    c.interaction_id.to_string(),
                    c.channel.clone(),
                    c.direction.clone(),
                    csv_field(&Value::from(c.queue.clone().unwrap_or_default())),
                    csv_field(&Value::from(c.first_queue.clone().unwrap_or_default())),
                    csv_field(&Value::from(c.agent.clone().unwrap_or_default())),
                    c.customer_id.map(|u| u.to_string()).unwrap_or_default(),
                    csv_field(&Value::from(c.campaign_id.clone().unwrap_or_default())),
                    c.reopened.to_string(),
                    fmt(Some(c.created_at)),
                    fmt(c.enqueued_at),
                    fmt(c.answered_at),
                    c.wait_ms.map(secs).unwrap_or_default(),
                    secs(c.talk_ms),
                    secs(c.hold_ms),
                    secs(c.wrap_ms),
                    fmt(c.first_response_at),
                    c.inbound_messages.to_string(),
                    c.replies.to_string(),
                    c.notes.to_string(),
                    c.transfers.to_string(),
                    c.ring_no_answers.to_string(),
                    c.outcome.clone(),
                    c.disposition.clone().unwrap_or_default(),
                    fmt(c.ended_at),
                ];
                chunk.push_str(&fields.join(","));
                chunk.push_str("\r\n");
            }
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }))
}

/// Calls with a recording, newest first, filtered and searchable (customer address,
/// agent, queue).
async fn recordings(hub: &Hub, ctx: &ReportsCtx, p: &ReportParams) -> CoreResult<Value> {
    let r = request(ctx, Kind::Queues, p)?;
    let (limit, offset) = super::page_bounds(p.limit, p.offset)?;
    let q = p.q.as_deref().map(|s| format!("%{}%", s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    let rows: Vec<(
        Uuid,
        DateTime<Utc>,
        Option<String>,
        Option<Uuid>,
        Option<String>,
        Option<String>,
        Option<Uuid>,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<i64>,
    )> = sqlx::query_as(
        "select i.id, i.created_at, a.name, i.agent_id, q.name, i.customer_address, i.customer_id, i.disposition,
                    (c.talk_ms + c.hold_ms), coalesce(c.outcome, i.status), c.wait_ms
               from interactions i
               left join report_contacts c on c.interaction_id = i.id
               left join agents a on a.id = coalesce(c.first_agent_id, i.agent_id)
               left join queues q on q.id = i.queue_id
              where i.channel = 'voice' and coalesce(i.metadata->>'recording', '') <> ''
                and i.created_at >= $1 and i.created_at < $2
                and (cardinality($3::uuid[]) = 0 or i.queue_id = any($3))
                and (cardinality($4::uuid[]) = 0 or coalesce(c.first_agent_id, i.agent_id) = any($4))
                and ($5::text is null or i.customer_address ilike $5 or a.name ilike $5 or q.name ilike $5 or i.summary ilike $5)
              order by i.created_at desc, i.id limit $6 offset $7",
    )
    .bind(r.from)
    .bind(r.to)
    .bind(&r.queues)
    .bind(&r.agents)
    .bind(q)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(hub.db())
    .await?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|(id, at, agent, agent_id, queue, customer, customer_id, disposition, dur, outcome, wait)| {
            serde_json::json!({
                "interaction_id": id, "date": at.with_timezone(&r.tz).to_rfc3339(), "agent": agent, "agent_id": agent_id,
                "queue": queue, "customer": customer, "customer_id": customer_id, "disposition": disposition,
                "duration_secs": dur.map(|d| d / 1000), "wait_secs": wait.map(|w| w / 1000), "outcome": outcome,
                "recording_url": format!("/api/v1/recordings/{id}"),
            })
        })
        .collect();
    let page = super::paged(items, limit, offset);
    Ok(serde_json::json!({ "items": page.items, "next_offset": page.next_offset }))
}

async fn wallboard(Extension(ctx): Extension<Arc<ReportsCtx>>, caller: Caller) -> CoreResult<Json<Value>> {
    caller.require(SUPERVISORS)?;
    Ok(Json(ctx.board.snapshot()))
}

async fn wallboard_stream(
    Extension(ctx): Extension<Arc<ReportsCtx>>,
    caller: Caller,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> CoreResult<Response> {
    caller.require(SUPERVISORS)?;
    let _ = &ctx.settings;
    let ws = ws.map_err(super::not_a_websocket)?;
    Ok(ws.max_message_size(16 * 1024).on_upgrade(move |socket| serve_wallboard(ctx.board.clone(), socket)))
}

async fn serve_wallboard(board: Wallboard, mut socket: WebSocket) {
    let mut rx = board.subscribe();
    if socket.send(Message::Text(board.snapshot().to_string().into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            d = rx.recv() => match d {
                Ok(text) => if socket.send(Message::Text(text.to_string().into())).await.is_err() { break },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if socket.send(Message::Text(board.snapshot().to_string().into())).await.is_err() { break }
                }
                Err(_) => break,
            },
            m = socket.recv() => match m {
                Some(Ok(Message::Ping(p))) if socket.send(Message::Pong(p.clone())).await.is_err() => break,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                _ => {}
            }
        }
    }
}
