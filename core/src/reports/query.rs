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
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn avg_secs(total_ms: i64, n: i64) -> Value {
    if n > 0 {
        json!(round2(total_ms as f64 / n as f64 / 1000.0))
    } else {
        Value::Null
    }
}

fn pct(num: i64, den: i64) -> Value {
    if den > 0 {
        json!(round2(num as f64 * 100.0 / den as f64))
    } else {
        Value::Null
    }
}

/// The figures of a row, for a report kind.
pub fn figures(kind: Kind, m: &Measures, sl: SlFormula, sl_target_secs: Option<i32>) -> Map<String, Value> {
    let mut o = Map::new();
    let handle = m.talk_ms + m.hold_ms + m.wrap_ms;
    let mut put = |k: &str, v: Value| {
        o.insert(k.to_string(), v);
    };
    match kind {
        Kind::Queues | Kind::Channels => {
            put("offered", json!(m.offered));
            put("answered", json!(m.answered));
            put("abandoned", json!(m.abandoned));
            put("abandoned_short", json!(m.abandoned_short));
            put("abandon_rate_pct", pct(m.abandoned, m.offered - m.abandoned_short));
            put("transferred", json!(m.transferred));
            put("overflowed", json!(m.overflowed));
            put("voicemail", json!(m.voicemail));
            put("callback", json!(m.callback));
            put("reopened", json!(m.reopened));
            put("asa_secs", avg_secs(m.wait_answered_ms, m.answered));
            put("avg_abandon_wait_secs", avg_secs(m.abandon_wait_ms, m.abandoned));
            put("longest_wait_secs", json!(round2(m.max_wait_ms as f64 / 1000.0)));
            put("service_level_pct", sl.apply(m).map(Value::from).unwrap_or(Value::Null));
            put("sl_target_secs", sl_target_secs.map(Value::from).unwrap_or(Value::Null));
            put("handled", json!(m.handled));
            put("aht_secs", avg_secs(handle, m.handled));
            put("avg_talk_secs", avg_secs(m.talk_ms, m.handled));
            put("avg_hold_secs", avg_secs(m.hold_ms, m.handled));
            put("avg_wrap_secs", avg_secs(m.wrap_ms, m.handled));
            put("first_responses", json!(m.first_responses));
            put("avg_first_response_secs", avg_secs(m.first_response_ms, m.first_responses));
            put("resolved", json!(m.resolved));
            put("avg_resolution_secs", avg_secs(m.resolution_ms, m.resolved));
            put("replies", json!(m.replies));
            put("replies_per_conversation", if m.resolved > 0 { json!(round2(m.replies as f64 / m.resolved as f64)) } else { Value::Null });
            put("inbound_messages", json!(m.inbound_msgs));
            put("notes", json!(m.notes));
        }
        Kind::Agents => {
            put("handled", json!(m.handled));
            put("answered", json!(m.answered));
            put("handle_secs", json!(round2(handle as f64 / 1000.0)));
            put("aht_secs", avg_secs(handle, m.handled));
            put("avg_talk_secs", avg_secs(m.talk_ms, m.handled));
            put("avg_hold_secs", avg_secs(m.hold_ms, m.handled));
            put("avg_wrap_secs", avg_secs(m.wrap_ms, m.handled));
            put("holds", json!(m.holds));
            put("occupancy_pct", pct(m.handling_ms, m.handling_ms + m.idle_ms));
            put("available_secs", json!(m.available_ms / 1000));
            put("away_secs", json!(m.away_ms / 1000));
            put("busy_secs", json!(m.busy_ms / 1000));
            put("wrap_up_state_secs", json!(m.wrap_up_state_ms / 1000));
            put("handling_secs", json!(m.handling_ms / 1000));
            put("idle_secs", json!(m.idle_ms / 1000));
            put("offers", json!(m.offers));
            put("ring_no_answer", json!(m.ring_no_answer));
            put("declined", json!(m.declined));
            put("transferred", json!(m.transferred));
            put("transferred_in", json!(m.transferred_in));
            put("replies", json!(m.replies));
            put("first_responses", json!(m.first_responses));
            put("avg_first_response_secs", avg_secs(m.first_response_ms, m.first_responses));
            put("notes", json!(m.notes));
        }
        Kind::Dispositions => {
            put("complaint", json!(m.disp_complaint));
            put("inquiry", json!(m.disp_inquiry));
            put("suggestion", json!(m.disp_suggestion));
            put("other", json!(m.disp_other));
            put("total", json!(m.disp_complaint + m.disp_inquiry + m.disp_suggestion + m.disp_other));
        }
        Kind::Ivr | Kind::Campaigns => {}
    }
    o
}

/// Runs a report: the rows and the totals.
pub async fn run(pool: &PgPool, day_zone: Tz, r: &Request) -> CoreResult<Value> {
    if r.to <= r.from {
        return Err(CoreError::field("to", "must be after `from`"));
    }
    let grain = grain_for(r.interval, r.tz, day_zone, r.from, r.to);
    let bucket_count = (r.to - r.from).num_minutes() / 15;
    if r.interval == Interval::Quarter && bucket_count > 40_000 || (r.to - r.from).num_days() > 3 * 366 {
        return Err(CoreError::field("to", "range too long for this interval"));
    }
    let start = r.interval.start_sql("$4");
    if matches!(r.kind, Kind::Ivr | Kind::Campaigns) {
        return counts(pool, r, grain, &start).await;
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
    let source = dims_source(r);
    // The full rows keep no hours (migration 20261205200000): quarters stand in for them.
    // The response names the grain the intervals align to, as before.
    let aligned = grain;
    let grain = if source.is_none() && grain == Grain::Hour { Grain::Quarter } else { grain };
    // The interval is the stored grain itself: each bucket is one interval.
    let interval_is_grain =
        matches!((r.interval, grain), (Interval::Quarter, Grain::Quarter) | (Interval::Hour, Grain::Hour) | (Interval::Day, Grain::Day));
    let sql = match source {
        // One row per bucket and key already (report_dims): read as stored, in key order.
        Some((d, key_filter)) if interval_is_grain && (r.by_dimension || d == 't' || d == 'a') => format!(
            "select bucket as start, {} as dim, array[{}] as m from report_dims where grain = $1 and bucket >= $2 and bucket < $3 and dim = '{d}'{}
             order by 1, 2",
            if r.by_dimension { "key" } else { "null::text" },
            Measures::COLUMNS.join(", "),
            key_filter.map(|f| format!(" and {f}")).unwrap_or_default(),
        ),
        // Pre-summed per dimension (report_dims): a few rows per bucket.
        Some((d, key_filter)) => format!(
            "select {start} as start, {} as dim, array[{}] as m from report_dims where grain = $1 and bucket >= $2 and bucket < $3 and dim = '{d}'{}
             group by 1, 2 order by 1 nulls first, 2",
            if r.by_dimension { "key" } else { "null::text" },
            aggs.join(", "),
            key_filter.map(|f| format!(" and {f}")).unwrap_or_default(),
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
            format!(
                "select {start} as start, {} as dim, array[{}] as m from report_rows where {} group by 1, 2 order by 1 nulls first, 2",
                dim.unwrap_or("null::text"),
                aggs.join(", "),
                wh.join(" and ")
            )
        }
    };
    let rows: Vec<(Option<DateTime<Utc>>, Option<String>, Vec<Option<i64>>)> = sqlx::query_as(&sql)
        .bind(grain.id())
        .bind(r.from)
        .bind(r.to)
        .bind(r.tz.name())
        .bind(&r.queues)
        .bind(&r.agents)
        .bind(&r.channels)
        .fetch_all(pool)
        .await?;
    let queues: HashMap<Uuid, (String, i32, SlFormula)> = sqlx::query_as::<_, (Uuid, String, i32, Option<String>)>(
        "select q.id, q.name, q.sla_target_secs, s.sl_formula from queues q left join report_queue_settings s on s.queue_id = q.id",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(id, n, t, f)| (id, (n, t, f.as_deref().and_then(SlFormula::parse).unwrap_or(SlFormula::AnsweredVsAnsweredAndLongAbandoned))))
    .collect();
    let agents: HashMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("select id, name from agents").fetch_all(pool).await?.into_iter().collect();
    let default_sl = r.sl_formula.unwrap_or(SlFormula::AnsweredVsAnsweredAndLongAbandoned);
    let single_queue = (r.queues.len() == 1).then(|| r.queues[0]);
    let mut total = Measures::default();
    let mut out = Vec::with_capacity(rows.len());
    // Rows come in interval order: each interval's labels are formatted once.
    let mut labels: Option<(DateTime<Utc>, Value, Value)> = None;
    for (start, d, vals) in rows {
        let m = Measures::from_values(&vals.into_iter().map(|v| v.unwrap_or(0)).collect::<Vec<_>>());
        total.add(&m);
        let mut row = Map::new();
        if let Some(s) = start {
            if labels.as_ref().is_none_or(|l| l.0 != s) {
                labels = Some((
                    s,
                    json!(s.with_timezone(&r.tz).to_rfc3339()),
                    json!(r.interval.end_of(s, r.tz, r.to).with_timezone(&r.tz).to_rfc3339()),
                ));
            }
            if let Some((_, a, b)) = &labels {
                row.insert("start".into(), a.clone());
                row.insert("end".into(), b.clone());
            }
        }
        let mut sl = default_sl;
        let mut target = None;
        let queue = match (r.kind, d.as_deref()) {
            (Kind::Queues | Kind::Dispositions, Some(q)) => q.parse::<Uuid>().ok(),
            _ => single_queue,
        };
        if let Some(q) = queue {
            row.insert("queue_id".into(), json!(q));
            if let Some((name, t, f)) = queues.get(&q) {
                row.insert("queue".into(), json!(name));
                target = Some(*t);
                sl = r.sl_formula.unwrap_or(*f);
            } else if q.is_nil() {
                row.insert("queue".into(), json!(""));
            }
        }
        if r.kind == Kind::Agents {
            if let Some(a) = d.as_deref().and_then(|a| a.parse::<Uuid>().ok()) {
                row.insert("agent_id".into(), json!(a));
                row.insert("agent".into(), json!(agents.get(&a).cloned().unwrap_or_default()));
            }
        }
        if r.kind == Kind::Channels {
            if let Some(c) = &d {
                row.insert("channel".into(), json!(c));
            }
        }
        row.extend(figures(r.kind, &m, sl, target));
        out.push(Value::Object(row));
    }
    let target = single_queue.and_then(|q| queues.get(&q).map(|x| x.1));
    let sl = single_queue.and_then(|q| queues.get(&q).map(|x| x.2)).map(|f| r.sl_formula.unwrap_or(f)).unwrap_or(default_sl);
    Ok(json!({
        "from": r.from.with_timezone(&r.tz).to_rfc3339(),
        "to": r.to.with_timezone(&r.tz).to_rfc3339(),
        "time_zone": r.tz.name(),
        "interval": r.interval.as_str(),
        "grain": match aligned { Grain::Quarter => "15m", Grain::Hour => "hour", Grain::Day => "day" },
        "rows": out,
        "totals": Value::Object(figures(r.kind, &total, sl, target)),
    }))
}

/// Which pre-summed dimension of `report_dims` answers a request exactly (the dimension
/// and a filter on its key), if any: its grouping and filters must all be along that one
/// dimension. `None`: the request needs `report_facts`.
fn dims_source(r: &Request) -> Option<(char, Option<&'static str>)> {
    match r.kind {
        Kind::Queues | Kind::Dispositions if r.agents.is_empty() && r.channels.is_empty() => {
            if r.queues.is_empty() && !r.by_dimension {
                Some(('t', None))
            } else {
                Some(('q', (!r.queues.is_empty()).then_some("key = any($5::uuid[]::text[])")))
            }
        }
        Kind::Channels if r.agents.is_empty() && r.queues.is_empty() => Some(('c', (!r.channels.is_empty()).then_some("key = any($7)"))),
        Kind::Agents if r.agents.is_empty() && r.queues.is_empty() && r.channels.is_empty() && !r.by_dimension => Some(('a', None)),
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
