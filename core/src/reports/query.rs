//! The reports: figures summed from the rollups over the requested intervals, with the
//! ratios and averages of docs/metrics.md computed from those sums (never averages of
//! averages).

#![allow(clippy::type_complexity)] // sqlx row tuples

use super::interval::{grain_for, Grain, Interval};
use super::measures::Measures;
use crate::error::{CoreError, CoreResult};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Per queue.
    Queues,
    /// Per agent.
    Agents,
    /// Per channel.
    Channels,
    /// Dispositions per queue.
    Dispositions,
    /// IVR menu choices.
    Ivr,
    /// Campaign replies.
    Campaigns,
}

impl Kind {
    /// From the path segment.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "queues" => Kind::Queues,
            "agents" => Kind::Agents,
            "channels" => Kind::Channels,
            "dispositions" => Kind::Dispositions,
            "ivr" => Kind::Ivr,
            "campaigns" => Kind::Campaigns,
            _ => return None,
        })
    }
}

/// Service-level formulas (docs/metrics.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlFormula {
    /// answered within T ÷ (answered + abandoned after the short-abandon threshold).
    AnsweredVsAnsweredAndLongAbandoned,
    /// answered within T ÷ answered.
    AnsweredVsAnswered,
    /// answered within T ÷ offered.
    AnsweredVsOffered,
    /// (answered within T + abandoned within T) ÷ (answered + all abandoned).
    AnsweredAndAbandonedVsAll,
}

impl SlFormula {
    /// Parses a formula name.
    pub fn parse(s: &str) -> Option<SlFormula> {
        Some(match s {
            "answered_vs_answered_and_long_abandoned" => SlFormula::AnsweredVsAnsweredAndLongAbandoned,
            "answered_vs_answered" => SlFormula::AnsweredVsAnswered,
            "answered_vs_offered" => SlFormula::AnsweredVsOffered,
            "answered_and_abandoned_vs_all" => SlFormula::AnsweredAndAbandonedVsAll,
            _ => return None,
        })
    }

    /// Service level in percent, None when the denominator is zero.
    pub fn apply(self, m: &Measures) -> Option<f64> {
        let (num, den) = match self {
            SlFormula::AnsweredVsAnsweredAndLongAbandoned => (m.answered_in_sl, m.answered + m.abandoned),
            SlFormula::AnsweredVsAnswered => (m.answered_in_sl, m.answered),
            SlFormula::AnsweredVsOffered => (m.answered_in_sl, m.offered),
            SlFormula::AnsweredAndAbandonedVsAll => (m.answered_in_sl + m.abandoned_in_sl, m.answered + m.abandoned + m.abandoned_short),
        };
        (den > 0).then(|| round2(num as f64 * 100.0 / den as f64))
    }
}

/// A report request, validated.
#[derive(Debug, Clone)]
pub struct Request {
    /// Which report.
    pub kind: Kind,
    /// Range start (inclusive).
    pub from: DateTime<Utc>,
    /// Range end (exclusive).
    pub to: DateTime<Utc>,
    /// Zone of intervals and labels.
    pub tz: Tz,
    /// Interval.
    pub interval: Interval,
    /// Only these queues (empty: all).
    pub queues: Vec<Uuid>,
    /// Only these agents.
    pub agents: Vec<Uuid>,
    /// Only these channels.
    pub channels: Vec<String>,
    /// Service-level formula override.
    pub sl_formula: Option<SlFormula>,
    /// Group rows by the report's dimension too (false: one row per interval, all summed).
    pub by_dimension: bool,
    /// Only the 15-minute buckets inside each queue's business hours (its calendar, in
    /// the calendar's zone; a queue without a calendar is always open).
    pub business_hours: bool,
    /// One page of the rows (the JSON API always asks for one); `None`: every row (the
    /// CSV export, [`run`]).
    pub page: Option<Page>,
}

/// A page of a report's rows: at most `limit` rows, those after the key `after`, in the
/// report's order (interval start, then the dimension's key). Keyset paging: a page
/// starts where the previous one ended by its key, never by skipping rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Rows at most.
    pub limit: usize,
    /// The key of the previous page's last row.
    pub after: Option<Cursor>,
}

/// Rows per page when the request names no `limit`.
pub const PAGE_DEFAULT: usize = 2_000;
/// The largest `limit`.
pub const PAGE_MAX: usize = 10_000;

/// The key of a report row: its interval start (none for `interval=total`) and its
/// dimension key (queue or agent id, channel; none for one row per interval). Sent to
/// clients as an opaque string (`next`).
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    /// Interval start.
    pub start: Option<DateTime<Utc>>,
    /// Dimension key.
    pub key: Option<String>,
}

impl Cursor {
    /// As the opaque `next` string: URL-safe base64 of `v1|<start µs or ->|<key or ->`
    /// (a key is never `-`: ids and channel names).
    pub fn encode(&self) -> String {
        use base64::Engine;
        let start = self.start.map(|t| t.timestamp_micros().to_string()).unwrap_or_else(|| "-".into());
        let key = self.key.as_deref().unwrap_or("-");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1|{start}|{key}"))
    }

    /// From a `next` string; an error names the `cursor` field.
    pub fn decode(s: &str) -> CoreResult<Cursor> {
        use base64::Engine;
        let bad = || CoreError::field("cursor", "is not a cursor of this API (pass the `next` of the previous page unchanged)");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let rest = text.strip_prefix("v1|").ok_or_else(bad)?;
        let (start, key) = rest.split_once('|').ok_or_else(bad)?;
        let start = match start {
            "-" => None,
            us => Some(DateTime::<Utc>::from_timestamp_micros(us.parse::<i64>().map_err(|_| bad())?).ok_or_else(bad)?),
        };
        let key = (key != "-").then(|| key.to_string());
        Ok(Cursor { start, key })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One value of a report row, written straight into JSON or CSV (no `serde_json::Value`
/// per figure: building a `Map` per row was most of a large report's time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    /// No value (JSON `null`, an empty CSV field).
    Null,
    /// An integer.
    Int(i64),
    /// A number (seconds, percentages; rounded to 2 decimals).
    Num(f64),
    /// Text.
    Str(&'a str),
    /// Text and its JSON encoding, made once for many rows (interval, queue and agent
    /// labels).
    Pre(&'a str, &'a str),
}

impl Cell<'_> {
    /// As JSON.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Cell::Null => out.extend_from_slice(b"null"),
            Cell::Int(i) => write_int(*i, out),
            Cell::Num(x) => {
                let _ = serde_json::to_writer(&mut *out, x);
            }
            Cell::Str(s) => {
                let _ = serde_json::to_writer(&mut *out, s);
            }
            Cell::Pre(_, json) => out.extend_from_slice(json.as_bytes()),
        }
    }

    /// As a CSV field (RFC 4180 quoting; text starting with =, +, - or @ is prefixed with
    /// `'` so spreadsheets do not run it).
    pub fn write_csv(&self, out: &mut Vec<u8>) {
        match self {
            Cell::Null => {}
            Cell::Int(_) | Cell::Num(_) => self.write_json(out),
            Cell::Str(s) | Cell::Pre(s, _) => out.extend_from_slice(csv_text(s).as_bytes()),
        }
    }

    /// As a `serde_json::Value`.
    pub fn to_value(self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Int(i) => json!(i),
            Cell::Num(x) => json!(x),
            Cell::Str(s) | Cell::Pre(s, _) => json!(s),
        }
    }
}

/// Writes an integer in decimal (the figures of a large report are mostly integers).
fn write_int(i: i64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut n = i.unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// A label and its JSON encoding.
fn pre(text: String) -> (String, String) {
    let json = serde_json::to_string(&text).unwrap_or_else(|_| "\"\"".into());
    (text, json)
}

/// A text as a CSV field (see [`Cell::write_csv`]).
pub fn csv_text(s: &str) -> std::borrow::Cow<'_, str> {
    let s: std::borrow::Cow<'_, str> =
        if s.starts_with(['=', '+', '@']) || (s.starts_with('-') && s.parse::<f64>().is_err()) { format!("'{s}").into() } else { s.into() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s
    }
}

/// A JSON value as a CSV field (null: empty; numbers as JSON writes them).
pub fn csv_field(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => csv_text(s).into_owned(),
        other => csv_text(&other.to_string()).into_owned(),
    }
}

/// Report rows (JSON objects) as CSV text: the labels first, then every other column that
/// occurs, in first-seen order (alphabetical within a row, as the JSON objects keep them).
pub fn rows_to_csv(rows: &[Value]) -> String {
    let mut cols: Vec<String> = ["start", "end", "queue", "agent", "channel", "dimension", "choice", "campaign"]
        .iter()
        .filter(|c| rows.iter().any(|r| r.get(**c).is_some()))
        .map(|c| c.to_string())
        .collect();
    for r in rows {
        if let Some(o) = r.as_object() {
            for k in o.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    let mut out = cols.iter().map(|c| csv_text(c).into_owned()).collect::<Vec<_>>().join(",");
    out.push_str("\r\n");
    for r in rows {
        let line: Vec<String> = cols.iter().map(|c| csv_field(r.get(c).unwrap_or(&Value::Null))).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

fn avg_secs(total_ms: i64, n: i64) -> Cell<'static> {
    if n > 0 {
        Cell::Num(round2(total_ms as f64 / n as f64 / 1000.0))
    } else {
        Cell::Null
    }
}

fn pct(num: i64, den: i64) -> Cell<'static> {
    if den > 0 {
        Cell::Num(round2(num as f64 * 100.0 / den as f64))
    } else {
        Cell::Null
    }
}

const QUEUE_FIGURES: &[&str] = &[
    "offered",
    "answered",
    "abandoned",
    "abandoned_short",
    "abandon_rate_pct",
    "transferred",
    "overflowed",
    "voicemail",
    "callback",
    "reopened",
    "asa_secs",
    "avg_abandon_wait_secs",
    "longest_wait_secs",
    "service_level_pct",
    "sl_target_secs",
    "handled",
    "aht_secs",
    "avg_talk_secs",
    "avg_hold_secs",
    "avg_wrap_secs",
    "first_responses",
    "avg_first_response_secs",
    "resolved",
    "avg_resolution_secs",
    "replies",
    "replies_per_conversation",
    "inbound_messages",
    "notes",
];

const AGENT_FIGURES: &[&str] = &[
    "handled",
    "answered",
    "handle_secs",
    "aht_secs",
    "avg_talk_secs",
    "avg_hold_secs",
    "avg_wrap_secs",
    "holds",
    "occupancy_pct",
    "available_secs",
    "away_secs",
    "busy_secs",
    "wrap_up_state_secs",
    "handling_secs",
    "idle_secs",
    "offers",
    "ring_no_answer",
    "declined",
    "transferred",
    "transferred_in",
    "replies",
    "first_responses",
    "avg_first_response_secs",
    "notes",
];

const DISPOSITION_FIGURES: &[&str] = &["complaint", "inquiry", "suggestion", "other", "total"];

/// The names of a report kind's figures, in the order [`figure_cells`] writes them.
pub fn figure_names(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Queues | Kind::Channels => QUEUE_FIGURES,
        Kind::Agents => AGENT_FIGURES,
        Kind::Dispositions => DISPOSITION_FIGURES,
        Kind::Ivr | Kind::Campaigns => &[],
    }
}

/// Appends the figures of a row, for a report kind, in [`figure_names`] order.
pub fn figure_cells(kind: Kind, m: &Measures, sl: SlFormula, sl_target_secs: Option<i32>, out: &mut Vec<Cell<'_>>) {
    let handle = m.talk_ms + m.hold_ms + m.wrap_ms;
    let opt = |v: Option<f64>| v.map(Cell::Num).unwrap_or(Cell::Null);
    match kind {
        Kind::Queues | Kind::Channels => out.extend([
            Cell::Int(m.offered),
            Cell::Int(m.answered),
            Cell::Int(m.abandoned),
            Cell::Int(m.abandoned_short),
            pct(m.abandoned, m.offered - m.abandoned_short),
            Cell::Int(m.transferred),
            Cell::Int(m.overflowed),
            Cell::Int(m.voicemail),
            Cell::Int(m.callback),
            Cell::Int(m.reopened),
            avg_secs(m.wait_answered_ms, m.answered),
            avg_secs(m.abandon_wait_ms, m.abandoned),
            Cell::Num(round2(m.max_wait_ms as f64 / 1000.0)),
            opt(sl.apply(m)),
            sl_target_secs.map(|t| Cell::Int(t.into())).unwrap_or(Cell::Null),
            Cell::Int(m.handled),
            avg_secs(handle, m.handled),
            avg_secs(m.talk_ms, m.handled),
            avg_secs(m.hold_ms, m.handled),
            avg_secs(m.wrap_ms, m.handled),
            Cell::Int(m.first_responses),
            avg_secs(m.first_response_ms, m.first_responses),
            Cell::Int(m.resolved),
            avg_secs(m.resolution_ms, m.resolved),
            Cell::Int(m.replies),
            opt((m.resolved > 0).then(|| round2(m.replies as f64 / m.resolved as f64))),
            Cell::Int(m.inbound_msgs),
            Cell::Int(m.notes),
        ]),
        Kind::Agents => out.extend([
            Cell::Int(m.handled),
            Cell::Int(m.answered),
            Cell::Num(round2(handle as f64 / 1000.0)),
            avg_secs(handle, m.handled),
            avg_secs(m.talk_ms, m.handled),
            avg_secs(m.hold_ms, m.handled),
            avg_secs(m.wrap_ms, m.handled),
            Cell::Int(m.holds),
            pct(m.handling_ms, m.handling_ms + m.idle_ms),
            Cell::Int(m.available_ms / 1000),
            Cell::Int(m.away_ms / 1000),
            Cell::Int(m.busy_ms / 1000),
            Cell::Int(m.wrap_up_state_ms / 1000),
            Cell::Int(m.handling_ms / 1000),
            Cell::Int(m.idle_ms / 1000),
            Cell::Int(m.offers),
            Cell::Int(m.ring_no_answer),
            Cell::Int(m.declined),
            Cell::Int(m.transferred),
            Cell::Int(m.transferred_in),
            Cell::Int(m.replies),
            Cell::Int(m.first_responses),
            avg_secs(m.first_response_ms, m.first_responses),
            Cell::Int(m.notes),
        ]),
        Kind::Dispositions => out.extend([
            Cell::Int(m.disp_complaint),
            Cell::Int(m.disp_inquiry),
            Cell::Int(m.disp_suggestion),
            Cell::Int(m.disp_other),
            Cell::Int(m.disp_complaint + m.disp_inquiry + m.disp_suggestion + m.disp_other),
        ]),
        Kind::Ivr | Kind::Campaigns => {}
    }
}

/// The figures of a row, for a report kind, as a JSON object.
pub fn figures(kind: Kind, m: &Measures, sl: SlFormula, sl_target_secs: Option<i32>) -> Map<String, Value> {
    let mut cells = Vec::new();
    figure_cells(kind, m, sl, sl_target_secs, &mut cells);
    figure_names(kind).iter().zip(cells).map(|(k, v)| (k.to_string(), v.to_value())).collect()
}

/// How a report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"from", "grain", "interval", "time_zone", "to", "rows": […], "totals": {…}}`.
    Json,
    /// The rows as CSV (a header line, then one line per row).
    Csv,
}

/// The columns of a report's rows: which labels (fixed by the request, so every row has
/// the same columns), then the figures; and the orders JSON (alphabetical, as
/// `serde_json::Map` kept them) and CSV (labels first, then alphabetical) write them in.
#[derive(Debug, Clone)]
struct Layout {
    has_start: bool,
    has_queue: bool,
    has_agent: bool,
    has_channel: bool,
    names: Vec<&'static str>,
    json_order: Vec<usize>,
    csv_order: Vec<usize>,
    totals_order: Vec<usize>,
}

impl Layout {
    fn of(r: &Request) -> Layout {
        let single_queue = r.queues.len() == 1;
        let has_start = r.interval != Interval::Total;
        let has_queue = (matches!(r.kind, Kind::Queues | Kind::Dispositions) && r.by_dimension) || single_queue;
        let has_agent = r.kind == Kind::Agents && r.by_dimension;
        let has_channel = r.kind == Kind::Channels && r.by_dimension;
        let mut names: Vec<&'static str> = Vec::new();
        if has_start {
            names.extend(["start", "end"]);
        }
        if has_queue {
            names.extend(["queue_id", "queue"]);
        }
        if has_agent {
            names.extend(["agent_id", "agent"]);
        }
        if has_channel {
            names.push("channel");
        }
        let labels = names.len();
        names.extend(figure_names(r.kind));
        let mut json_order: Vec<usize> = (0..names.len()).collect();
        json_order.sort_by_key(|i| names[*i]);
        let first = ["start", "end", "queue", "agent", "channel"];
        let mut csv_order: Vec<usize> = first.iter().filter_map(|l| names.iter().position(|n| n == l)).collect();
        let rest: Vec<usize> = json_order.iter().copied().filter(|i| !csv_order.contains(i)).collect();
        csv_order.extend(rest);
        let figs = figure_names(r.kind);
        let mut totals_order: Vec<usize> = (0..figs.len()).collect();
        totals_order.sort_by_key(|i| figs[*i]);
        debug_assert!(labels <= names.len());
        Layout { has_start, has_queue, has_agent, has_channel, names, json_order, csv_order, totals_order }
    }

    fn write_row(&self, cells: &[Cell<'_>], format: Format, out: &mut Vec<u8>) {
        match format {
            Format::Json => {
                out.push(b'{');
                for (n, i) in self.json_order.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    out.push(b'"');
                    out.extend_from_slice(self.names[*i].as_bytes());
                    out.extend_from_slice(b"\":");
                    cells[*i].write_json(out);
                }
                out.push(b'}');
            }
            Format::Csv => {
                for (n, i) in self.csv_order.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    cells[*i].write_csv(out);
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    fn write_csv_header(&self, out: &mut Vec<u8>) {
        let line: Vec<&str> = self.csv_order.iter().map(|i| self.names[*i]).collect();
        out.extend_from_slice(line.join(",").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// A validated report, ready to be written: its SQL and the names it labels rows with.
#[derive(Debug)]
pub struct Prepared {
    r: Request,
    sql: String,
    grain: Grain,
    aligned: Grain,
    queues: HashMap<Uuid, (String, i32, SlFormula)>,
    agents: HashMap<Uuid, String>,
    /// IVR and campaign reports (small, a few keys per interval): computed already.
    counts: Option<Value>,
    /// With `business_hours`: the queues with a calendar, and each one's open spans.
    calendars: (Vec<String>, Vec<String>),
    /// The rows are read as stored, in the primary key's order.
    stored: bool,
    /// The zone of the day rollups (for the totals of a partial page).
    day_zone: Tz,
}

/// Chunks of a report body are sent when they reach this size.
pub const CHUNK: usize = 64 * 1024;

/// Runs a report: the rows and the totals (the same JSON the API answers).
pub async fn run(pool: &PgPool, day_zone: Tz, r: &Request) -> CoreResult<Value> {
    let p = prepare(pool, day_zone, r).await?;
    let mut body = Vec::new();
    let mut rx = stream(pool.clone(), p, Format::Json);
    while let Some(chunk) = rx.recv().await {
        body.extend_from_slice(&chunk?);
    }
    serde_json::from_slice(&body).map_err(|e| CoreError::Internal(format!("report JSON: {e}")))
}

/// Writes a prepared report in a task, as chunks of about [`CHUNK`] bytes: the first one
/// as soon as the first rows are read, so a report of hundreds of thousands of rows
/// starts at once and never sits whole in memory. An error ends the stream with `Err`.
pub fn stream(pool: PgPool, p: Prepared, format: Format) -> tokio::sync::mpsc::Receiver<CoreResult<bytes::Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let sink = tx.clone();
        if let Err(e) = p.write(&pool, format, &sink).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

/// Validates a request and looks up what its rows are labelled with.
pub async fn prepare(pool: &PgPool, day_zone: Tz, r: &Request) -> CoreResult<Prepared> {
    if r.to <= r.from {
        return Err(CoreError::field("to", "must be after `from`"));
    }
    if r.business_hours && !matches!(r.kind, Kind::Queues | Kind::Dispositions) {
        return Err(CoreError::field("business_hours", "applies to the queue reports (queues, dispositions): calendars are per queue"));
    }
    // Business hours: the stored in-hours rows ('b', 'B') when every queue asked for has
    // its rows built with its calendar now; else (a calendar changed and the worker has
    // not rebuilt its rows yet, or cross filters) each queue's calendar joined per quarter.
    let bh_stored = r.business_hours && calendars_current(pool, &r.queues).await?;
    let source = dims_source(r, bh_stored);
    let bh_live = r.business_hours && !matches!(source, Some(('b' | 'B', _)));
    let grain = if bh_live { Grain::Quarter } else { grain_for(r.interval, r.tz, day_zone, r.from, r.to) };
    let bucket_count = (r.to - r.from).num_minutes() / 15;
    if r.interval == Interval::Quarter && bucket_count > 40_000 || (r.to - r.from).num_days() > 3 * 366 {
        return Err(CoreError::field("to", "range too long for this interval"));
    }
    let start = r.interval.start_sql("$4");
    if matches!(r.kind, Kind::Ivr | Kind::Campaigns) {
        let v = counts(pool, r, grain, &start).await?;
        return Ok(Prepared {
            r: r.clone(),
            sql: String::new(),
            grain,
            aligned: grain,
            queues: HashMap::new(),
            agents: HashMap::new(),
            counts: Some(v),
            calendars: Default::default(),
            stored: false,
            day_zone,
        });
    }
    let dim = match (r.kind, r.by_dimension) {
        (_, false) => None,
        (Kind::Queues | Kind::Dispositions, true) => Some("queue_id::text"),
        (Kind::Agents, true) => Some("agent_id::text"),
        (Kind::Channels, true) => Some("channel"),
        _ => None,
    };
    let aggs: Vec<String> = Measures::COLUMNS
        .iter()
        .zip(Measures::IS_MAX)
        .map(|(c, max)| if *max { format!("max({c})::int8") } else { format!("sum({c})::int8") })
        .collect();
    // The full rows keep no hours (migration 20261205200000): quarters stand in for them.
    // The response names the grain the intervals align to, as before.
    let aligned = grain;
    let grain = if source.is_none() && grain == Grain::Hour { Grain::Quarter } else { grain };
    // The interval is the stored grain itself: each bucket is one interval.
    let interval_is_grain =
        matches!((r.interval, grain), (Interval::Quarter, Grain::Quarter) | (Interval::Hour, Grain::Hour) | (Interval::Day, Grain::Day));
    // Business hours: each queue's open spans, joined by key (no row: no calendar).
    let bh_join = |q: &str| {
        if bh_live {
            format!(" left join unnest($8::text[], $9::text[]::tstzmultirange[]) bh(q, open) on bh.q = {q}")
        } else {
            String::new()
        }
    };
    let open = if bh_live { " and (bh.q is null or bucket <@ bh.open)" } else { "" };
    let stored = matches!(source, Some((d, _)) if interval_is_grain && (r.by_dimension || matches!(d, 't' | 'a' | 'C' | 'B')));
    // Keyset paging: the rows after the cursor's key, `limit` + 1 of them (one more tells
    // whether there is a next page). Stored rows are filtered in the primary key itself
    // ((bucket, key) follow (grain, dim)); summed rows after summing, with the buckets
    // before the cursor's interval left out first (an interval starts at or before each
    // of its buckets).
    let has_start = r.interval != Interval::Total;
    let after = r.page.as_ref().and_then(|p| p.after.as_ref());
    let stored_after = match after {
        Some(_) if r.by_dimension => " and (bucket, key) > ($10, $11)",
        Some(_) => " and bucket > $10",
        None => "",
    };
    let summed_after = match (after, has_start, r.by_dimension) {
        (None, _, _) => None,
        (Some(_), true, true) => Some("(start, dim) > ($10, $11)"),
        (Some(_), true, false) => Some("start > $10"),
        (Some(_), false, _) => Some("dim > $11"),
    };
    let from_cursor = if after.is_some() && has_start { " and bucket >= $10" } else { "" };
    let limit = if r.page.is_some() { " limit $12" } else { "" };
    let sql = match source {
        // One row per bucket and key already (report_dims): read as stored, in key order.
        Some((d, key_filter)) if stored => format!(
            "select bucket as start, {} as dim, {} from report_dims{} where grain = $1 and bucket >= $2 and bucket < $3 and dim = '{d}'{}{}{stored_after}
             order by bucket, key{limit}",
            if r.by_dimension { "key" } else { "null::text" },
            Measures::COLUMNS.join(", "),
            bh_join("key"),
            key_filter.map(|f| format!(" and {f}")).unwrap_or_default(),
            open,
        ),
        // Pre-summed per dimension (report_dims): a few rows per bucket.
        Some((d, key_filter)) => format!(
            "select {start} as start, {} as dim, {} from report_dims{} where grain = $1 and bucket >= $2 and bucket < $3 and dim = '{d}'{}{}{from_cursor}
             group by 1, 2 order by 1 nulls first, 2",
            if r.by_dimension { "key" } else { "null::text" },
            aggs.join(", "),
            bh_join("key"),
            key_filter.map(|f| format!(" and {f}")).unwrap_or_default(),
            open,
        ),
        // Cross filters (e.g. a queue's figures of some agents): the full rows.
        None => {
            let mut wh = vec!["grain = $1".to_string(), "bucket >= $2".into(), "bucket < $3".into()];
            if !r.queues.is_empty() {
                wh.push("queue_id = any($5)".into());
            }
            if !r.agents.is_empty() {
                wh.push("agent_id = any($6)".into());
            }
            if !r.channels.is_empty() {
                wh.push("channel = any($7)".into());
            }
            if r.kind == Kind::Agents {
                wh.push("agent_id <> '00000000-0000-0000-0000-000000000000'".into());
            }
            if r.kind == Kind::Channels {
                wh.push("channel <> ''".into());
            }
            if bh_live {
                wh.push("(bh.q is null or bucket <@ bh.open)".into());
            }
            if !from_cursor.is_empty() {
                wh.push("bucket >= $10".into());
            }
            format!(
                "select {start} as start, {} as dim, {} from report_rows{} where {} group by 1, 2 order by 1 nulls first, 2",
                dim.unwrap_or("null::text"),
                aggs.join(", "),
                bh_join("queue_id::text"),
                wh.join(" and ")
            )
        }
    };
    // Summed rows: the page's rows after summing.
    let sql = match (stored, summed_after) {
        (true, _) => sql,
        (false, Some(cond)) => format!("select * from ({sql}) s where {cond} order by 1 nulls first, 2{limit}"),
        (false, None) if r.page.is_some() => format!("select * from ({sql}) s order by 1 nulls first, 2{limit}"),
        (false, None) => sql,
    };
    let queues: HashMap<Uuid, (String, i32, SlFormula)> = sqlx::query_as::<_, (Uuid, String, i32, Option<String>)>(
        "select q.id, q.name, q.sla_target_secs, s.sl_formula from queues q left join report_queue_settings s on s.queue_id = q.id",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(id, n, t, f)| (id, (n, t, f.as_deref().and_then(SlFormula::parse).unwrap_or(SlFormula::AnsweredVsAnsweredAndLongAbandoned))))
    .collect();
    let agents: HashMap<Uuid, String> = if r.kind == Kind::Agents && r.by_dimension {
        sqlx::query_as::<_, (Uuid, String)>("select id, name from agents").fetch_all(pool).await?.into_iter().collect()
    } else {
        HashMap::new()
    };
    let calendars = if bh_live { open_spans(pool, r).await? } else { Default::default() };
    Ok(Prepared { r: r.clone(), sql, grain, aligned, queues, agents, counts: None, calendars, stored, day_zone })
}

/// Whether the business-hours rows of these queues (all: empty) were built with their
/// calendars as they are now (`report_bh_calendars`, kept by the rollup worker).
async fn calendars_current(pool: &PgPool, queues: &[Uuid]) -> CoreResult<bool> {
    Ok(sqlx::query_scalar(
        "select not exists (select 1 from queues q full join report_bh_calendars c on c.queue_id = q.id
                             where q.business_hours is distinct from c.calendar
                               and (cardinality($1::uuid[]) = 0 or coalesce(q.id, c.queue_id) = any($1)))",
    )
    .bind(queues)
    .fetch_one(pool)
    .await?)
}

/// The queues that have a calendar (`queues.business_hours`, the one routing uses) and,
/// for each, the instants of the range in which it is open, as a `tstzmultirange` literal:
/// per local day of the calendar's zone that is not a holiday, that weekday's spans
/// (`"24:00"` is the end of the day; a start inside a spring-forward gap moves to the
/// gap's end). A 15-minute bucket is inside when its start is (spans are whole quarters,
/// so the bucket is wholly in or out), as [`crate::queues::BusinessHours::is_open`] says
/// of that instant.
async fn open_spans(pool: &PgPool, r: &Request) -> CoreResult<(Vec<String>, Vec<String>)> {
    let cals: Vec<(Uuid, sqlx::types::Json<crate::queues::BusinessHours>)> = sqlx::query_as(
        "select id, business_hours from queues where business_hours is not null and (cardinality($1::uuid[]) = 0 or id = any($1))",
    )
    .bind(&r.queues)
    .fetch_all(pool)
    .await?;
    let (mut keys, mut spans) = (Vec::new(), Vec::new());
    for (q, cal) in cals {
        if let Some(open) = open_spans_of(&cal.0, r.from, r.to) {
            keys.push(q.to_string());
            spans.push(open);
        }
    }
    Ok((keys, spans))
}

/// A calendar's open spans over `[from, to)` as a `tstzmultirange` literal (see
/// [`open_spans`]); `None` when its zone is unknown (always open, as routing's
/// `is_open`).
pub(crate) fn open_spans_of(cal: &crate::queues::BusinessHours, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<String> {
    use chrono::{Datelike, NaiveTime, TimeZone};
    let tz = cal.timezone.parse::<Tz>().ok()?;
    let weekday = |d: &str| ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].iter().position(|x| x.eq_ignore_ascii_case(d));
    let mut week: [Vec<(NaiveTime, Option<NaiveTime>)>; 7] = Default::default();
    for (d, ranges) in &cal.weekly {
        let Some(i) = weekday(d) else { continue };
        for [a, b] in ranges {
            let Ok(opens) = NaiveTime::parse_from_str(a, "%H:%M") else { continue };
            let closes = if b == "24:00" { None } else { NaiveTime::parse_from_str(b, "%H:%M").ok() };
            week[i].push((opens, closes));
        }
    }
    let at = |d: chrono::NaiveDate, t: NaiveTime| {
        let local = d.and_time(t);
        tz.from_local_datetime(&local)
            .earliest()
            .or_else(|| tz.from_local_datetime(&(local + chrono::Duration::hours(1))).earliest())
            .map(|x| x.with_timezone(&Utc))
    };
    let mut out = Vec::new();
    let mut day = from.with_timezone(&tz).date_naive() - chrono::Duration::days(1);
    let last = to.with_timezone(&tz).date_naive();
    while day <= last {
        if !cal.holidays.contains(&day) {
            for (opens, closes) in &week[day.weekday().num_days_from_monday() as usize] {
                let end = match closes {
                    Some(c) => at(day, *c),
                    None => at(day + chrono::Duration::days(1), NaiveTime::MIN),
                };
                if let (Some(s), Some(e)) = (at(day, *opens), end) {
                    if s < e && e > from && s < to {
                        out.push(format!("[{},{})", s.to_rfc3339(), e.to_rfc3339()));
                    }
                }
            }
        }
        day += chrono::Duration::days(1);
    }
    Some(format!("{{{}}}", out.join(",")))
}

impl Prepared {
    /// The report's statement with every parameter bound (those it does not use too).
    fn query(&self) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let r = &self.r;
        let after = r.page.as_ref().and_then(|p| p.after.as_ref());
        sqlx::query(&self.sql)
            .persistent(false)
            .bind(self.grain.id())
            .bind(r.from)
            .bind(r.to)
            .bind(r.tz.name())
            .bind(&r.queues)
            .bind(&r.agents)
            .bind(&r.channels)
            .bind(&self.calendars.0)
            .bind(&self.calendars.1)
            .bind(after.and_then(|c| c.start))
            .bind(after.and_then(|c| c.key.clone()))
            .bind(r.page.as_ref().map(|p| p.limit as i64 + 1))
    }

    /// The totals of the whole range (the same filters, `interval=total`, one row):
    /// read at the coarsest grain the range aligns to (days of the day zone when it is
    /// whole local days), so a page of a large report does not sum every row.
    async fn range_totals(&self, pool: &PgPool) -> CoreResult<Measures> {
        use futures::TryStreamExt;
        use sqlx::Row;
        let t = Request { interval: Interval::Total, by_dimension: false, page: None, ..self.r.clone() };
        let p = Box::pin(prepare(pool, self.day_zone, &t)).await?;
        let mut tx = pool.begin().await?;
        sqlx::query("set local jit = off").execute(&mut *tx).await?;
        let mut rows = p.query().fetch(&mut *tx);
        let mut total = Measures::default();
        let n = Measures::COLUMNS.len();
        let mut vals = [0i64; 64];
        while let Some(row) = rows.try_next().await? {
            for (i, slot) in vals[..n].iter_mut().enumerate() {
                *slot = row.try_get::<Option<i64>, _>(2 + i)?.unwrap_or(0);
            }
            total.add(&Measures::from_values(&vals[..n]));
        }
        drop(rows);
        tx.commit().await?;
        Ok(total)
    }

    /// Writes the report into `out`, a chunk at a time.
    pub async fn write(&self, pool: &PgPool, format: Format, out: &tokio::sync::mpsc::Sender<CoreResult<bytes::Bytes>>) -> CoreResult<()> {
        use futures::TryStreamExt;
        let closed = || CoreError::Internal("report reader went away".into());
        let r = &self.r;
        if let Some(v) = &self.counts {
            let body = match format {
                Format::Json => serde_json::to_vec(v).map_err(|e| CoreError::Internal(e.to_string()))?,
                Format::Csv => rows_to_csv(v["rows"].as_array().map(Vec::as_slice).unwrap_or_default()).into_bytes(),
            };
            return out.send(Ok(body.into())).await.map_err(|_| closed());
        }
        let layout = Layout::of(r);
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + 4096);
        match format {
            Format::Json => {
                buf.extend_from_slice(b"{\"from\":");
                Cell::Str(&r.from.with_timezone(&r.tz).to_rfc3339()).write_json(&mut buf);
                buf.extend_from_slice(b",\"grain\":");
                Cell::Str(match self.aligned {
                    Grain::Quarter => "15m",
                    Grain::Hour => "hour",
                    Grain::Day => "day",
                })
                .write_json(&mut buf);
                buf.extend_from_slice(b",\"interval\":");
                Cell::Str(r.interval.as_str()).write_json(&mut buf);
                buf.extend_from_slice(b",\"rows\":[");
            }
            Format::Csv => layout.write_csv_header(&mut buf),
        }
        let default_sl = r.sl_formula.unwrap_or(SlFormula::AnsweredVsAnsweredAndLongAbandoned);
        let single_queue = (r.queues.len() == 1).then(|| r.queues[0]);
        let mut total = Measures::default();
        // Rows come in interval order: each interval's labels are formatted once; queue and
        // agent labels once per report.
        let mut labels: Option<(DateTime<Utc>, (String, String), (String, String))> = None;
        let mut queue_labels: HashMap<Uuid, ((String, String), (String, String))> = HashMap::new();
        let mut agent_labels: HashMap<Uuid, ((String, String), (String, String))> = HashMap::new();
        let mut first = true;
        // Planned with this request's values (an unnamed statement), without JIT (it
        // costs ~80 ms per report, more than it saves). Rows read as stored are found
        // through the primary key, never by scanning the whole table; quarters come in
        // its order straight from the index, so the first rows of a large report go out
        // at once instead of after a scan and a sort of the whole range. (Days and hours
        // are upserted in place over many batches and lie scattered: for them a bitmap
        // scan and a sort of the few rows is faster than the index order, ~1 s against
        // 2.5 s for 73,000 per-agent days.)
        let mut tx = pool.begin().await?;
        sqlx::query("set local jit = off").execute(&mut *tx).await?;
        if self.stored {
            sqlx::query("set local enable_seqscan = off").execute(&mut *tx).await?;
            if self.grain == Grain::Quarter {
                sqlx::query("set local enable_bitmapscan = off").execute(&mut *tx).await?;
            }
        }
        let mut rows = self.query().fetch(&mut *tx);
        let mut vals = [0i64; 64];
        let n = Measures::COLUMNS.len();
        let limit = r.page.as_ref().map(|p| p.limit);
        let mut written = 0usize;
        let mut last_key: Option<Cursor> = None;
        let mut next: Option<Cursor> = None;
        while let Some(row) = rows.try_next().await? {
            use sqlx::Row;
            let start: Option<DateTime<Utc>> = row.try_get(0)?;
            let d: Option<String> = row.try_get(1)?;
            if limit.is_some_and(|l| written >= l) {
                // One row more than the page: there is a next page, after the last row.
                next = last_key.take();
                break;
            }
            written += 1;
            if limit.is_some() {
                last_key = Some(Cursor { start, key: d.clone() });
            }
            for (i, slot) in vals[..n].iter_mut().enumerate() {
                *slot = row.try_get::<Option<i64>, _>(2 + i)?.unwrap_or(0);
            }
            let m = Measures::from_values(&vals[..n]);
            total.add(&m);
            if let Some(s) = start {
                if labels.as_ref().is_none_or(|l| l.0 != s) {
                    labels = Some((
                        s,
                        pre(s.with_timezone(&r.tz).to_rfc3339()),
                        pre(r.interval.end_of(s, r.tz, r.to).with_timezone(&r.tz).to_rfc3339()),
                    ));
                }
            }
            let queue = match (r.kind, d.as_deref()) {
                (Kind::Queues | Kind::Dispositions, Some(q)) => q.parse::<Uuid>().ok(),
                _ => single_queue,
            };
            let (sl, target) = match queue.and_then(|q| self.queues.get(&q)) {
                Some((_, t, f)) => (r.sl_formula.unwrap_or(*f), Some(*t)),
                None => (default_sl, None),
            };
            let agent = if layout.has_agent { d.as_deref().and_then(|a| a.parse::<Uuid>().ok()) } else { None };
            let mut cells: Vec<Cell<'_>> = Vec::with_capacity(layout.names.len());
            if layout.has_start {
                match (&labels, start) {
                    (Some((_, a, b)), Some(_)) => cells.extend([Cell::Pre(&a.0, &a.1), Cell::Pre(&b.0, &b.1)]),
                    _ => cells.extend([Cell::Null, Cell::Null]),
                }
            }
            if layout.has_queue {
                match queue {
                    Some(q) => {
                        let (id, name) = queue_labels
                            .entry(q)
                            .or_insert_with(|| (pre(q.to_string()), pre(self.queues.get(&q).map(|x| x.0.clone()).unwrap_or_default())));
                        cells.extend([Cell::Pre(&id.0, &id.1), Cell::Pre(&name.0, &name.1)]);
                    }
                    None => cells.extend([Cell::Null, Cell::Str("")]),
                }
            }
            if layout.has_agent {
                match agent {
                    Some(a) => {
                        let (id, name) = agent_labels
                            .entry(a)
                            .or_insert_with(|| (pre(a.to_string()), pre(self.agents.get(&a).cloned().unwrap_or_default())));
                        cells.extend([Cell::Pre(&id.0, &id.1), Cell::Pre(&name.0, &name.1)]);
                    }
                    None => cells.extend([Cell::Null, Cell::Str("")]),
                }
            }
            if layout.has_channel {
                cells.push(d.as_deref().map(Cell::Str).unwrap_or(Cell::Null));
            }
            figure_cells(r.kind, &m, sl, target, &mut cells);
            if format == Format::Json && !first {
                buf.push(b',');
            }
            first = false;
            layout.write_row(&cells, format, &mut buf);
            if buf.len() >= CHUNK {
                let chunk = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 4096));
                out.send(Ok(chunk.into())).await.map_err(|_| closed())?;
            }
        }
        drop(rows);
        tx.commit().await?;
        // A page that is not the whole report: the totals are of the whole range all the
        // same, summed by one more read at the coarsest grain the range aligns to.
        if r.page.as_ref().is_some_and(|p| p.after.is_some()) || next.is_some() {
            total = self.range_totals(pool).await?;
        }
        if format == Format::Json {
            buf.push(b']');
            if r.page.is_some() {
                // The key to ask for the next page with (`cursor=`), null on the last.
                buf.extend_from_slice(b",\"next\":");
                match &next {
                    Some(c) => Cell::Str(&c.encode()).write_json(&mut buf),
                    None => buf.extend_from_slice(b"null"),
                }
            }
            let target = single_queue.and_then(|q| self.queues.get(&q).map(|x| x.1));
            let sl = single_queue.and_then(|q| self.queues.get(&q).map(|x| x.2)).map(|f| r.sl_formula.unwrap_or(f)).unwrap_or(default_sl);
            buf.extend_from_slice(b",\"time_zone\":");
            Cell::Str(r.tz.name()).write_json(&mut buf);
            buf.extend_from_slice(b",\"to\":");
            Cell::Str(&r.to.with_timezone(&r.tz).to_rfc3339()).write_json(&mut buf);
            buf.extend_from_slice(b",\"totals\":{");
            let names = figure_names(r.kind);
            let mut t = Vec::with_capacity(names.len());
            figure_cells(r.kind, &total, sl, target, &mut t);
            for (n, i) in layout.totals_order.iter().enumerate() {
                if n > 0 {
                    buf.push(b',');
                }
                buf.push(b'"');
                buf.extend_from_slice(names[*i].as_bytes());
                buf.extend_from_slice(b"\":");
                t[*i].write_json(&mut buf);
            }
            buf.extend_from_slice(b"}}");
        }
        out.send(Ok(buf.into())).await.map_err(|_| closed())
    }
}

/// Which pre-summed dimension of `report_dims` answers a request exactly (the dimension
/// and a filter on its key), if any: its grouping and filters must all be along that one
/// dimension. `None`: the request needs `report_facts`.
///
/// Business hours (`bh_stored`: the stored in-hours rows are of the calendars now) read
/// 'B' (all queues) or 'b' (per queue); otherwise 'q', joined to the calendars.
fn dims_source(r: &Request, bh_stored: bool) -> Option<(char, Option<&'static str>)> {
    match r.kind {
        Kind::Queues | Kind::Dispositions if r.agents.is_empty() && r.channels.is_empty() => {
            let queue_filter = (!r.queues.is_empty()).then_some("key = any($5::uuid[]::text[])");
            match (r.business_hours, bh_stored) {
                (true, true) if r.queues.is_empty() && !r.by_dimension => Some(('B', None)),
                (true, true) => Some(('b', queue_filter)),
                (true, false) => Some(('q', queue_filter)),
                (false, _) if r.queues.is_empty() && !r.by_dimension => Some(('t', None)),
                (false, _) => Some(('q', queue_filter)),
            }
        }
        Kind::Channels if r.agents.is_empty() && r.queues.is_empty() => {
            if r.channels.is_empty() && !r.by_dimension {
                Some(('C', None))
            } else {
                Some(('c', (!r.channels.is_empty()).then_some("key = any($7)")))
            }
        }
        Kind::Agents if r.queues.is_empty() && r.channels.is_empty() => {
            if r.agents.is_empty() && !r.by_dimension {
                Some(('a', None))
            } else {
                Some(('g', (!r.agents.is_empty()).then_some("key = any($6::uuid[]::text[])")))
            }
        }
        _ => None,
    }
}

async fn counts(pool: &PgPool, r: &Request, grain: Grain, start: &str) -> CoreResult<Value> {
    let dims: &[&str] = if r.kind == Kind::Ivr { &["ivr", "ivr_node"] } else { &["campaign"] };
    let mut wh = vec!["grain = $1", "bucket >= $2", "bucket < $3", "dim = any($8)"];
    if !r.queues.is_empty() {
        wh.push("queue_id = any($5)");
    }
    if !r.channels.is_empty() {
        wh.push("channel = any($7)");
    }
    let interval_col = if r.interval == Interval::Total { "null::timestamptz".to_string() } else { start.to_string() };
    let sql = format!(
        "select {interval_col} as start, dim, key, sum(n)::int8 from report_counts where {} group by 1, 2, 3 order by 1 nulls first, 2, 3",
        wh.join(" and ")
    );
    let rows: Vec<(Option<DateTime<Utc>>, String, String, i64)> = sqlx::query_as(&sql)
        .bind(grain.id())
        .bind(r.from)
        .bind(r.to)
        .bind(r.tz.name())
        .bind(&r.queues)
        .bind(&r.agents)
        .bind(&r.channels)
        .bind(dims)
        .fetch_all(pool)
        .await?;
    let mut totals: std::collections::BTreeMap<String, i64> = Default::default();
    let out: Vec<Value> = rows
        .into_iter()
        .map(|(s, dim, key, n)| {
            *totals.entry(format!("{dim}:{key}")).or_default() += n;
            let mut o = Map::new();
            if let Some(s) = s {
                o.insert("start".into(), json!(s.with_timezone(&r.tz).to_rfc3339()));
                o.insert("end".into(), json!(r.interval.end_of(s, r.tz, r.to).with_timezone(&r.tz).to_rfc3339()));
            }
            let (label, count) = if r.kind == Kind::Ivr { ("choice", "visits") } else { ("campaign", "replies") };
            o.insert("dimension".into(), json!(dim));
            o.insert(label.into(), json!(key));
            o.insert(count.into(), json!(n));
            Value::Object(o)
        })
        .collect();
    Ok(json!({
        "from": r.from.with_timezone(&r.tz).to_rfc3339(),
        "to": r.to.with_timezone(&r.tz).to_rfc3339(),
        "time_zone": r.tz.name(),
        "interval": r.interval.as_str(),
        "rows": out,
        "totals": totals,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_cells_are_written_as_serde_json_would() {
        for i in [0i64, 7, -7, 10, 1_234_567, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_int(i, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&i).unwrap());
        }
        for (c, json, csv) in [
            (Cell::Num(12.0), "12.0", "12.0"),
            (Cell::Num(33.33), "33.33", "33.33"),
            (Cell::Null, "null", ""),
            (Cell::Str("a,\"b\""), "\"a,\\\"b\\\"\"", "\"a,\"\"b\"\"\""),
            (Cell::Str("=1+1"), "\"=1+1\"", "'=1+1"),
        ] {
            let (mut j, mut v) = (Vec::new(), Vec::new());
            c.write_json(&mut j);
            c.write_csv(&mut v);
            assert_eq!((String::from_utf8(j).unwrap(), String::from_utf8(v).unwrap()), (json.to_string(), csv.to_string()));
            assert_eq!(c.to_value().to_string(), json);
        }
    }
}
