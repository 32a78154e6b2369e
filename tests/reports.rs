//! Golden tests of the reports (docs/metrics.md): a scripted day of events — two queues,
//! three agents, voice, chat and email, with short and long abandons, a ring-no-answer,
//! a transfer, a reopened chat, overflow, voicemail and hold — on the day Berlin's clocks
//! spring forward (2026-03-29, 02:00 → 03:00 local). The expected figures are worked
//! out by hand below; the API must answer exactly those in two time zones (Europe/Berlin
//! and UTC), an independent SQL over the raw events must agree with the rollups, a replay
//! must not change anything, and a rebuild of any range must give the same numbers.

mod support;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use support::*;
use switchboard_core::reports::rollup;
use switchboard_core::Role;
use uuid::Uuid;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
}

struct Ids {
    sales: Uuid,
    support: Uuid,
    ann: Uuid,
    ben: Uuid,
    cat: Uuid,
}

async fn ev(pool: &PgPool, i: Option<Uuid>, agent: Option<Uuid>, queue: Option<Uuid>, kind: &str, data: Value, at: &str) {
    sqlx::query("insert into interaction_events (interaction_id, agent_id, queue_id, kind, data, at) values ($1, $2, $3, $4, $5, $6)")
        .bind(i)
        .bind(agent)
        .bind(queue)
        .bind(kind)
        .bind(data)
        .bind(t(at))
        .execute(pool)
        .await
        .expect("event");
}

async fn interaction(pool: &PgPool, channel: &str, queue: Uuid, key: &str, created: &str, status: &str, metadata: Value) -> Uuid {
    sqlx::query_scalar(
        "insert into interactions (channel, conversation_key, queue_id, status, created_at, enqueued_at, metadata)
         values ($1, $2, $3, $4, $5, $5, $6) returning id",
    )
    .bind(channel)
    .bind(key)
    .bind(queue)
    .bind(status)
    .bind(t(created))
    .bind(metadata)
    .fetch_one(pool)
    .await
    .expect("interaction")
}

/// The scripted day (all instants UTC; Berlin is UTC+1 until 01:00Z, UTC+2 after).
async fn script(pool: &PgPool) -> Ids {
    let q = |name: &str, sla: i32| {
        let pool = pool.clone();
        let name = name.to_string();
        async move {
            sqlx::query_scalar::<_, Uuid>("insert into queues (name, sla_target_secs) values ($1, $2) returning id")
                .bind(name)
                .bind(sla)
                .fetch_one(&pool)
                .await
                .expect("queue")
        }
    };
    let sales = q("sales", 20).await;
    let support = q("support", 30).await;
    let agent = |name: &str| {
        let pool = pool.clone();
        let name = name.to_string();
        async move {
            sqlx::query_scalar::<_, Uuid>("insert into agents (name) values ($1) returning id")
                .bind(name)
                .fetch_one(&pool)
                .await
                .expect("agent")
        }
    };
    let (ann, ben, cat) = (agent("ann").await, agent("ben").await, agent("cat").await);
    let p = |a: Uuid, presence: &str, at: &'static str| {
        let pool = pool.clone();
        let presence = presence.to_string();
        async move { ev(&pool, None, Some(a), None, "presence", json!({ "presence": presence, "reason": "agent" }), at).await }
    };
    let (s, sp) = (Some(sales), Some(support));

    // Presence.
    p(ann, "available", "2026-03-28T23:00:00Z").await;
    p(ben, "available", "2026-03-29T08:00:00Z").await;
    p(cat, "available", "2026-03-29T08:00:00Z").await;

    // V1 voice, sales, 00:30 Berlin (CET): answered in 10 s by Ann, 60 s hold, wrap 60 s.
    let v1 = interaction(pool, "voice", sales, "call-1", "2026-03-28T23:30:00Z", "closed", json!({})).await;
    ev(pool, Some(v1), None, s, "enqueued", json!({ "channel": "voice" }), "2026-03-28T23:30:00Z").await;
    ev(pool, Some(v1), None, s, "ivr_choice", json!({ "ivr": { "queue": "sales", "path": ["main:1"] } }), "2026-03-28T23:30:00Z").await;
    ev(pool, Some(v1), Some(ann), s, "offered", json!({}), "2026-03-28T23:30:05Z").await;
    ev(pool, Some(v1), Some(ann), s, "accepted", json!({}), "2026-03-28T23:30:10Z").await;
    ev(pool, Some(v1), Some(ann), None, "call_hold", json!({}), "2026-03-28T23:32:00Z").await;
    ev(pool, Some(v1), Some(ann), None, "call_resumed", json!({}), "2026-03-28T23:33:00Z").await;
    ev(pool, Some(v1), Some(ann), s, "wrap_up", json!({}), "2026-03-28T23:35:10Z").await;
    ev(pool, Some(v1), Some(ann), s, "closed", json!({ "disposition": "inquiry" }), "2026-03-28T23:36:10Z").await;

    // V2 voice, sales, 03:30 Berlin (CEST, right after the jump): hangs up after 3 s.
    let v2 = interaction(pool, "voice", sales, "call-2", "2026-03-29T01:30:00Z", "abandoned", json!({})).await;
    ev(pool, Some(v2), None, s, "enqueued", json!({}), "2026-03-29T01:30:00Z").await;
    ev(pool, Some(v2), None, s, "ivr_choice", json!({ "ivr": { "queue": "sales", "path": ["main:1"] } }), "2026-03-29T01:30:00Z").await;
    ev(pool, Some(v2), None, s, "abandoned", json!({}), "2026-03-29T01:30:03Z").await;

    // E1 email, support: answered after 60 s by Cat, a note, first reply after an hour.
    let e1 = interaction(pool, "email", support, "thread-1", "2026-03-29T08:30:00Z", "closed", json!({})).await;
    ev(pool, Some(e1), None, sp, "enqueued", json!({}), "2026-03-29T08:30:00Z").await;
    ev(pool, Some(e1), None, sp, "message", json!({ "direction": "inbound" }), "2026-03-29T08:30:00Z").await;
    ev(pool, Some(e1), Some(cat), sp, "offered", json!({}), "2026-03-29T08:30:01Z").await;
    ev(pool, Some(e1), Some(cat), sp, "accepted", json!({}), "2026-03-29T08:31:00Z").await;
    ev(pool, Some(e1), Some(cat), sp, "note", json!({}), "2026-03-29T08:35:00Z").await;
    ev(pool, Some(e1), Some(cat), sp, "message", json!({ "direction": "outbound" }), "2026-03-29T09:30:00Z").await;
    ev(pool, Some(e1), Some(cat), sp, "wrap_up", json!({}), "2026-03-29T09:30:00Z").await;
    ev(pool, Some(e1), Some(cat), sp, "closed", json!({ "disposition": "inquiry" }), "2026-03-29T09:30:30Z").await;

    // V3 voice, sales: hangs up after 40 s (a long abandon, outside the 20 s target).
    let v3 = interaction(pool, "voice", sales, "call-3", "2026-03-29T09:00:00Z", "abandoned", json!({})).await;
    ev(pool, Some(v3), None, s, "enqueued", json!({}), "2026-03-29T09:00:00Z").await;
    ev(pool, Some(v3), None, s, "abandoned", json!({}), "2026-03-29T09:00:40Z").await;

    // V4 voice, sales: rings Ben out (he goes away), Cat answers after 30 s, transfers to
    // Ben after 300 s of talk; Ben talks 240 s and wraps up 60 s.
    let v4 = interaction(pool, "voice", sales, "call-4", "2026-03-29T10:00:00Z", "closed", json!({})).await;
    ev(pool, Some(v4), None, s, "enqueued", json!({}), "2026-03-29T10:00:00Z").await;
    ev(pool, Some(v4), None, s, "ivr_choice", json!({ "ivr": { "queue": "sales", "path": ["main:1"] } }), "2026-03-29T10:00:00Z").await;
    ev(pool, Some(v4), Some(ben), s, "offered", json!({}), "2026-03-29T10:00:02Z").await;
    ev(pool, Some(v4), Some(ben), s, "offer_timeout", json!({ "penalized": true }), "2026-03-29T10:00:22Z").await;
    ev(pool, None, Some(ben), None, "presence", json!({ "presence": "away", "reason": "ring_no_answer" }), "2026-03-29T10:00:22Z").await;
    ev(pool, Some(v4), None, s, "requeued", json!({ "reason": "timeout" }), "2026-03-29T10:00:22Z").await;
    ev(pool, Some(v4), Some(cat), s, "offered", json!({}), "2026-03-29T10:00:25Z").await;
    ev(pool, Some(v4), Some(cat), s, "accepted", json!({}), "2026-03-29T10:00:30Z").await;
    p(ben, "available", "2026-03-29T10:05:00Z").await;
    ev(pool, Some(v4), Some(ben), s, "transferred", json!({ "from_agent": cat, "to_agent": ben }), "2026-03-29T10:05:30Z").await;
    ev(pool, Some(v4), Some(ben), s, "offered", json!({ "transfer": true }), "2026-03-29T10:05:31Z").await;
    ev(pool, Some(v4), Some(ben), s, "accepted", json!({}), "2026-03-29T10:05:40Z").await;
    ev(pool, Some(v4), Some(ben), s, "wrap_up", json!({}), "2026-03-29T10:09:40Z").await;
    ev(pool, Some(v4), Some(ben), s, "closed", json!({ "disposition": "complaint" }), "2026-03-29T10:10:40Z").await;

    // C1 chat, support: Ann answers after 15 s, first reply 75 s after the message.
    let c1 = interaction(pool, "chat", support, "chat-1", "2026-03-29T11:00:00Z", "closed", json!({})).await;
    ev(pool, Some(c1), None, sp, "enqueued", json!({}), "2026-03-29T11:00:00Z").await;
    ev(pool, Some(c1), None, sp, "message", json!({ "direction": "inbound" }), "2026-03-29T11:00:00Z").await;
    ev(pool, Some(c1), Some(ann), sp, "offered", json!({}), "2026-03-29T11:00:01Z").await;
    ev(pool, Some(c1), Some(ann), sp, "accepted", json!({}), "2026-03-29T11:00:15Z").await;
    ev(pool, Some(c1), Some(ann), sp, "message", json!({ "direction": "outbound" }), "2026-03-29T11:01:15Z").await;
    ev(pool, Some(c1), None, sp, "message", json!({ "direction": "inbound" }), "2026-03-29T11:02:00Z").await;
    ev(pool, Some(c1), Some(ann), sp, "message", json!({ "direction": "outbound" }), "2026-03-29T11:03:00Z").await;
    ev(pool, Some(c1), Some(ann), sp, "note", json!({}), "2026-03-29T11:03:30Z").await;
    ev(pool, Some(c1), Some(ann), sp, "wrap_up", json!({}), "2026-03-29T11:05:00Z").await;
    ev(pool, Some(c1), Some(ann), sp, "closed", json!({ "disposition": "suggestion" }), "2026-03-29T11:06:00Z").await;

    p(ann, "away", "2026-03-29T12:00:00Z").await;
    p(ann, "available", "2026-03-29T12:30:00Z").await;

    // C2 chat, support: the customer of C1 writes again — the conversation reopens as a
    // new contact; Ben answers after 40 s, first reply 160 s after the message.
    let c2 = interaction(pool, "chat", support, "chat-1", "2026-03-29T13:00:00Z", "closed", json!({})).await;
    ev(pool, Some(c2), None, sp, "enqueued", json!({}), "2026-03-29T13:00:00Z").await;
    ev(pool, Some(c2), None, sp, "message", json!({ "direction": "inbound" }), "2026-03-29T13:00:00Z").await;
    ev(pool, Some(c2), Some(ben), sp, "offered", json!({}), "2026-03-29T13:00:10Z").await;
    ev(pool, Some(c2), Some(ben), sp, "accepted", json!({}), "2026-03-29T13:00:40Z").await;
    ev(pool, Some(c2), Some(ben), sp, "message", json!({ "direction": "outbound" }), "2026-03-29T13:02:40Z").await;
    ev(pool, Some(c2), Some(ben), sp, "closed", json!({ "disposition": "other" }), "2026-03-29T13:05:00Z").await;

    // E2 email, support, a reply to a campaign: overflows after 10 min.
    let e2 = interaction(pool, "email", support, "thread-2", "2026-03-29T14:00:00Z", "overflowed", json!({ "campaign_id": "spring-sale" }))
        .await;
    ev(pool, Some(e2), None, sp, "enqueued", json!({}), "2026-03-29T14:00:00Z").await;
    ev(pool, Some(e2), None, sp, "message", json!({ "direction": "inbound" }), "2026-03-29T14:00:00Z").await;
    ev(pool, Some(e2), None, sp, "status", json!({ "status": "overflowed" }), "2026-03-29T14:10:00Z").await;

    p(ben, "offline", "2026-03-29T16:00:00Z").await;
    p(ann, "offline", "2026-03-29T20:00:00Z").await;

    // V5 voice, sales, 00:15 Berlin on the 30th: voicemail.
    let v5 = interaction(pool, "voice", sales, "call-5", "2026-03-29T22:15:00Z", "voicemail", json!({})).await;
    ev(pool, Some(v5), None, s, "enqueued", json!({}), "2026-03-29T22:15:00Z").await;
    ev(pool, Some(v5), None, s, "status", json!({ "status": "voicemail" }), "2026-03-29T22:16:00Z").await;

    // V6 voice, sales, 00:40 Berlin on the 30th: Cat answers in 10 s, 300 s talk.
    let v6 = interaction(pool, "voice", sales, "call-6", "2026-03-29T22:40:00Z", "closed", json!({})).await;
    ev(pool, Some(v6), None, s, "enqueued", json!({}), "2026-03-29T22:40:00Z").await;
    ev(pool, Some(v6), Some(cat), s, "offered", json!({}), "2026-03-29T22:40:05Z").await;
    ev(pool, Some(v6), Some(cat), s, "accepted", json!({}), "2026-03-29T22:40:10Z").await;
    ev(pool, Some(v6), Some(cat), s, "closed", json!({ "disposition": "other" }), "2026-03-29T22:45:10Z").await;
    p(cat, "offline", "2026-03-29T22:50:00Z").await;

    Ids { sales, support, ann, ben, cat }
}

/// Figures expected on 2026-03-29 in a zone, worked out by hand from the script.
struct Expected {
    tz: &'static str,
    sales: Value,
    support: Value,
    agents: Vec<(&'static str, Value)>,
    dispositions_sales: Value,
}

fn expected() -> Vec<Expected> {
    // Support is the same in both zones: everything happens 08:30–14:10 UTC.
    // offered C1 C2 E1 E2 = 4; answered C1 (15 s) C2 (40 s) E1 (60 s) = 3, in 30 s: C1;
    // ASA (15+40+60)/3 = 38.33; SL 1/(3+0) = 33.33 %; talk 285 + 260 + 3540 = 4085 s,
    // wrap 60 + 0 + 30 = 90 s, AHT 4175/3 = 1391.67; first responses 75, 160, 3600 →
    // 1278.33 avg; resolution 360, 300, 3630 → 1430 avg; replies 2+1+1 = 4 → 1.33 per
    // resolved conversation; notes 2 (never responses); reopened C2; overflowed E2.
    let support = json!({
        "offered": 4, "answered": 3, "abandoned": 0, "abandoned_short": 0, "asa_secs": 38.33,
        "service_level_pct": 33.33, "handled": 3, "aht_secs": 1391.67, "avg_talk_secs": 1361.67, "avg_wrap_secs": 30.0,
        "first_responses": 3, "avg_first_response_secs": 1278.33, "resolved": 3, "avg_resolution_secs": 1430.0,
        "replies": 4, "replies_per_conversation": 1.33, "notes": 2, "reopened": 1, "overflowed": 1, "voicemail": 0,
        "inbound_messages": 5, "longest_wait_secs": 60.0, "transferred": 0,
    });
    vec![
        Expected {
            // Berlin 2026-03-29 = 2026-03-28T23:00Z .. 2026-03-29T22:00Z (23 hours).
            // Sales: V1 V2 V3 V4 offered; answered V1 (10 s) V4 (30 s), in 20 s: V1;
            // abandoned V3 (40 s), short V2 (3 s); ASA 20; SL 1/(2+1) = 33.33 %; longest
            // wait 40 s; handled V1 Ann (talk 240, hold 60, wrap 60), V4 Cat (talk 300,
            // transferred), V4 Ben (talk 240, wrap 60): AHT (360 + 300 + 300)/3 = 320.
            tz: "Europe/Berlin",
            sales: json!({
                "offered": 4, "answered": 2, "abandoned": 1, "abandoned_short": 1, "asa_secs": 20.0,
                "service_level_pct": 33.33, "longest_wait_secs": 40.0, "handled": 3, "aht_secs": 320.0,
                "avg_talk_secs": 260.0, "avg_hold_secs": 20.0, "avg_wrap_secs": 40.0, "transferred": 1,
                "voicemail": 0, "abandon_rate_pct": 33.33, "avg_abandon_wait_secs": 40.0,
            }),
            support: support.clone(),
            agents: vec![
                // Ann: available 23:00–12:00 and 12:30–20:00 = 73,800 s, away 1,800 s;
                // holding V1 360 s + C1 345 s = 705 s; idle 73,095 s; occupancy 0.96 %.
                (
                    "ann",
                    json!({ "handled": 2, "aht_secs": 352.5, "available_secs": 73800, "away_secs": 1800,
                                "handling_secs": 705, "idle_secs": 73095, "occupancy_pct": 0.96, "offers": 2,
                                "replies": 2, "first_responses": 1, "avg_first_response_secs": 75.0, "holds": 1 }),
                ),
                // Ben: available 08:00–10:00:22 and 10:05–16:00 = 28,522 s, away 278 s
                // (after the ring-no-answer); holding V4 300 s + C2 260 s.
                (
                    "ben",
                    json!({ "handled": 2, "aht_secs": 280.0, "available_secs": 28522, "away_secs": 278,
                                "handling_secs": 560, "idle_secs": 27962, "offers": 3, "ring_no_answer": 1,
                                "transferred_in": 1, "transferred": 0 }),
                ),
                // Cat: available 08:00–22:00 (end of the Berlin day) = 50,400 s; holding
                // E1 3,570 s + V4 300 s.
                (
                    "cat",
                    json!({ "handled": 2, "aht_secs": 1935.0, "available_secs": 50400, "handling_secs": 3870,
                                "idle_secs": 46530, "transferred": 1, "offers": 2, "occupancy_pct": 7.68 }),
                ),
            ],
            dispositions_sales: json!({ "complaint": 1, "inquiry": 1, "suggestion": 0, "other": 0, "total": 2 }),
        },
        Expected {
            // UTC 2026-03-29: sales offered V2 V3 V4 V5 V6 = 5; answered V4 (30 s) V6
            // (10 s), in 20 s: V6; ASA 20; SL 1/3; voicemail V5; handled V4 Cat, V4 Ben,
            // V6 Cat (talk 300): AHT (300 + 300 + 300)/3 = 300.
            tz: "UTC",
            sales: json!({
                "offered": 5, "answered": 2, "abandoned": 1, "abandoned_short": 1, "asa_secs": 20.0,
                "service_level_pct": 33.33, "longest_wait_secs": 40.0, "handled": 3, "aht_secs": 300.0,
                "avg_talk_secs": 280.0, "avg_hold_secs": 0.0, "avg_wrap_secs": 20.0, "transferred": 1,
                "voicemail": 1, "abandon_rate_pct": 25.0,
            }),
            support,
            agents: vec![
                // Ann: available 00:00–12:00 and 12:30–20:00 = 70,200 s; holding C1 345 s.
                (
                    "ann",
                    json!({ "handled": 1, "aht_secs": 345.0, "available_secs": 70200, "away_secs": 1800,
                                "handling_secs": 345, "idle_secs": 69855, "offers": 1 }),
                ),
                (
                    "ben",
                    json!({ "handled": 2, "aht_secs": 280.0, "available_secs": 28522, "away_secs": 278,
                                "handling_secs": 560, "idle_secs": 27962, "offers": 3, "ring_no_answer": 1 }),
                ),
                // Cat: available 08:00–22:50 = 53,400 s; holding E1, V4 and V6 (300 s).
                (
                    "cat",
                    json!({ "handled": 3, "aht_secs": 1390.0, "available_secs": 53400, "handling_secs": 4170,
                                "idle_secs": 49230, "transferred": 1, "offers": 3 }),
                ),
            ],
            dispositions_sales: json!({ "complaint": 1, "inquiry": 0, "suggestion": 0, "other": 1, "total": 2 }),
        },
    ]
}

fn assert_subset(what: &str, actual: &Value, expected: &Value) {
    for (k, v) in expected.as_object().expect("object") {
        assert_eq!(actual.get(k), Some(v), "{what}: `{k}` (whole row: {actual})");
    }
}

fn row_of<'a>(report: &'a Value, key: &str, value: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r[key] == value))
        .unwrap_or_else(|| panic!("no row with {key} = {value} in {report}"))
}

async fn get(c: &Client, path: &str) -> Value {
    let (st, v) = c.call("GET", path, None).await;
    assert_eq!(st, StatusCode::OK, "{path}: {v}");
    v
}

/// Independent SQL over the raw events: per queue, the queue figures of one local day.
async fn raw_queue_figures(pool: &PgPool, queue: Uuid, tz: &str) -> Value {
    let row: (i64, i64, i64, Option<f64>, i64, i64, i64, i64, i64) = sqlx::query_as(
        "with day as (select ('2026-03-29'::timestamp at time zone $2) as a, ('2026-03-30'::timestamp at time zone $2) as b),
              enq as (select distinct on (interaction_id) interaction_id, at from interaction_events where kind = 'enqueued' order by interaction_id, id),
              acc as (select distinct on (interaction_id) interaction_id, queue_id, at from interaction_events where kind = 'accepted' order by interaction_id, id),
              ab as (select e.interaction_id, e.queue_id, e.at - n.at as wait from interaction_events e join enq n using (interaction_id) where e.kind = 'abandoned'),
              fr as (select o.interaction_id, o.queue_id, o.at,
                            o.at - (select min(m.at) from interaction_events m where m.interaction_id = o.interaction_id and m.kind = 'message' and m.data->>'direction' = 'inbound') as frt
                       from (select distinct on (interaction_id) * from interaction_events where kind = 'message' and data->>'direction' = 'outbound' order by interaction_id, id) o)
         select
           (select count(*) from interaction_events, day where kind = 'enqueued' and queue_id = $1 and at >= a and at < b),
           (select count(*) from acc join enq using (interaction_id), day where acc.queue_id = $1 and acc.at >= a and acc.at < b),
           (select count(*) from acc join enq using (interaction_id), day where acc.queue_id = $1 and acc.at >= a and acc.at < b
               and acc.at - enq.at <= make_interval(secs => (select sla_target_secs from queues where id = $1))),
           (select extract(epoch from sum(acc.at - enq.at))::float8 from acc join enq using (interaction_id), day where acc.queue_id = $1 and acc.at >= a and acc.at < b),
           (select count(*) from ab, day where queue_id = $1 and ab.interaction_id is not null and wait >= interval '5 seconds'
               and (select at from interaction_events x where x.interaction_id = ab.interaction_id and x.kind = 'abandoned') >= a
               and (select at from interaction_events x where x.interaction_id = ab.interaction_id and x.kind = 'abandoned') < b),
           (select count(*) from ab, day where queue_id = $1 and wait < interval '5 seconds'
               and (select at from interaction_events x where x.interaction_id = ab.interaction_id and x.kind = 'abandoned') >= a
               and (select at from interaction_events x where x.interaction_id = ab.interaction_id and x.kind = 'abandoned') < b),
           (select count(*) from interaction_events, day where queue_id = $1 and at >= a and at < b
               and (kind = 'voicemail' or (kind = 'status' and data->>'status' = 'voicemail'))),
           (select count(*) from fr, day where queue_id = $1 and fr.at >= a and fr.at < b),
           (select coalesce(extract(epoch from sum(frt)), 0)::int8 from fr, day where queue_id = $1 and fr.at >= a and fr.at < b)",
    )
    .bind(queue)
    .bind(tz)
    .fetch_one(pool)
    .await
    .expect("raw figures");
    json!({
        "offered": row.0, "answered": row.1, "answered_in_sl": row.2, "wait_answered_secs": row.3.unwrap_or(0.0),
        "abandoned": row.4, "abandoned_short": row.5, "voicemail": row.6, "first_responses": row.7, "first_response_secs": row.8,
    })
}

/// The same figures from the rollups (15-minute buckets summed over the local day).
async fn rollup_queue_figures(pool: &PgPool, queue: Uuid, tz: &str) -> Value {
    let row: (i64, i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "select sum(offered)::int8, sum(answered)::int8, sum(answered_in_sl)::int8, sum(wait_answered_ms)::int8, sum(abandoned)::int8,
                sum(abandoned_short)::int8, sum(voicemail)::int8, sum(first_responses)::int8, sum(first_response_ms)::int8
           from report_facts
          where grain = 0 and queue_id = $1 and bucket >= ('2026-03-29'::timestamp at time zone $2) and bucket < ('2026-03-30'::timestamp at time zone $2)",
    )
    .bind(queue)
    .bind(tz)
    .fetch_one(pool)
    .await
    .expect("rollup figures");
    json!({
        "offered": row.0, "answered": row.1, "answered_in_sl": row.2, "wait_answered_secs": row.3 as f64 / 1000.0,
        "abandoned": row.4, "abandoned_short": row.5, "voicemail": row.6, "first_responses": row.7, "first_response_secs": row.8 / 1000,
    })
}

async fn reports_snapshot(sup: &Client, ids: &Ids) -> Vec<Value> {
    let mut out = Vec::new();
    for tz in ["Europe/Berlin", "UTC"] {
        for kind in ["queues", "agents", "channels", "dispositions", "ivr", "campaigns"] {
            out.push(get(sup, &format!("/api/v1/reports/{kind}?from=2026-03-28&to=2026-03-30&tz={tz}&interval=day")).await);
            out.push(get(sup, &format!("/api/v1/reports/{kind}?from=2026-03-29&to=2026-03-29&tz={tz}&interval=hour")).await);
        }
        out.push(get(sup, &format!("/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&tz={tz}&interval=15m&queue={}", ids.sales)).await);
        for group in ["both", "interval"] {
            out.push(
                get(
                    sup,
                    &format!(
                        "/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&tz={tz}&interval=hour&group={group}&business_hours=true"
                    ),
                )
                .await,
            );
        }
    }
    out
}

/// Every page of a report, following `next` with `limit` rows a page: the rows in order,
/// and each page's totals (of the whole range, whatever the page).
async fn all_pages(c: &Client, path: &str, limit: usize) -> (Vec<Value>, Vec<Value>) {
    let (mut rows, mut totals) = (Vec::new(), Vec::new());
    let mut url = format!("{path}&limit={limit}");
    for _ in 0..1000 {
        let page = get(c, &url).await;
        let got = page["rows"].as_array().cloned().unwrap_or_default();
        assert!(got.len() <= limit, "{url}: {} rows", got.len());
        rows.extend(got);
        totals.push(page["totals"].clone());
        match page["next"].as_str() {
            Some(next) => url = format!("{path}&limit={limit}&cursor={next}"),
            None => return (rows, totals),
        }
    }
    panic!("{path}: no last page");
}

/// Waits until the rollup worker has built the business-hours rows of every queue's
/// calendar as it is now (`report_bh_calendars`).
async fn calendars_rolled_up(pool: &PgPool) {
    for _ in 0..300 {
        let behind: i64 = sqlx::query_scalar(
            "select count(*) from queues q full join report_bh_calendars c on c.queue_id = q.id where q.business_hours is distinct from c.calendar",
        )
        .fetch_one(pool)
        .await
        .expect("calendars");
        if behind == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the rollup worker did not rebuild the business-hours rows");
}

#[tokio::test]
async fn a_scripted_day_gives_the_figures_worked_out_by_hand() {
    let th = spawn_hub().await;
    let pool = th.hub().db().clone();
    let sup = user(&th, "sue", &[Role::Supervisor], None).await;
    let agent = user(&th, "amy", &[Role::Agent], Some(json!({}))).await;
    // Two more workers race the hub's own while the day is written: the advisory lock and
    // the watermark read under it make each event count once.
    let zone: switchboard_core::reports::Tz = "UTC".parse().unwrap();
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    rollup::catch_up(&pool, zone, Duration::from_secs(5), 5).await.expect("racing worker");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    let ids = script(&pool).await;
    for r in racers {
        r.await.expect("racer");
    }
    // The hub's worker processes the script; wait until it has passed the last event.
    rolled_up(&pool).await;

    // Agents may not read reports.
    let (st, _) = agent.call("GET", "/api/v1/reports/queues", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    for e in expected() {
        let day = format!("from=2026-03-29&to=2026-03-29&tz={}&interval=day", e.tz);
        let queues = get(&sup, &format!("/api/v1/reports/queues?{day}")).await;
        assert_subset(&format!("sales in {}", e.tz), row_of(&queues, "queue", "sales"), &e.sales);
        assert_subset(&format!("support in {}", e.tz), row_of(&queues, "queue", "support"), &e.support);
        let agents = get(&sup, &format!("/api/v1/reports/agents?{day}")).await;
        for (name, fig) in &e.agents {
            assert_subset(&format!("{name} in {}", e.tz), row_of(&agents, "agent", name), fig);
        }
        let disp = get(&sup, &format!("/api/v1/reports/dispositions?{day}")).await;
        assert_subset(&format!("dispositions in {}", e.tz), row_of(&disp, "queue", "sales"), &e.dispositions_sales);
        // The independent SQL agrees with the rollups, per queue.
        for q in [ids.sales, ids.support] {
            assert_eq!(raw_queue_figures(&pool, q, e.tz).await, rollup_queue_figures(&pool, q, e.tz).await, "raw vs rollup in {}", e.tz);
        }
    }

    // Channels: voice on the Berlin day is V1..V4; chat C1 C2; email E1 E2.
    let ch = get(&sup, "/api/v1/reports/channels?from=2026-03-29&to=2026-03-29&tz=Europe/Berlin&interval=total").await;
    assert_subset("voice", row_of(&ch, "channel", "voice"), &json!({ "offered": 4, "answered": 2, "handled": 3 }));
    assert_subset(
        "chat",
        row_of(&ch, "channel", "chat"),
        &json!({ "offered": 2, "answered": 2, "reopened": 1, "avg_first_response_secs": 117.5 }),
    );
    assert_subset("email", row_of(&ch, "channel", "email"), &json!({ "offered": 2, "answered": 1, "overflowed": 1 }));

    // DST: Berlin's hours on the 29th are labelled in local time, 02:00 does not exist.
    let hours =
        get(&sup, &format!("/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&tz=Europe/Berlin&interval=hour&queue={}", ids.sales))
            .await;
    let starts: Vec<&str> =
        hours["rows"].as_array().unwrap().iter().filter(|r| r["offered"] != 0).map(|r| r["start"].as_str().unwrap()).collect();
    assert_eq!(
        starts,
        vec!["2026-03-29T00:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T11:00:00+02:00", "2026-03-29T12:00:00+02:00"]
    );
    let day = get(&sup, "/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&tz=Europe/Berlin&interval=day&group=interval").await;
    assert_eq!(day["rows"][0]["start"], "2026-03-29T00:00:00+01:00");
    assert_eq!(day["rows"][0]["end"], "2026-03-30T00:00:00+02:00", "a 23-hour day");
    assert_eq!(day["totals"]["offered"], 8);

    // IVR choices and campaign replies.
    let ivr = get(&sup, "/api/v1/reports/ivr?from=2026-03-29&to=2026-03-29&tz=Europe/Berlin&interval=total").await;
    assert_eq!(ivr["totals"], json!({ "ivr:sales": 3, "ivr_node:main:1": 3 }));
    let camp = get(&sup, "/api/v1/reports/campaigns?from=2026-03-29&to=2026-03-29&tz=UTC&interval=total").await;
    assert_eq!(camp["totals"], json!({ "campaign:spring-sale": 1 }));

    // A service-level formula other than the default.
    let q = get(&sup, "/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&tz=UTC&interval=total&sl_formula=answered_vs_answered").await;
    assert_eq!(row_of(&q, "queue", "sales")["service_level_pct"], 50.0);

    // One agent's figures (the per-agent rollup rows, filtered by agent).
    let ann = get(
        &sup,
        &format!("/api/v1/reports/agents?from=2026-03-29&to=2026-03-29&tz=Europe/Berlin&interval=day&group=interval&agent={}", ids.ann),
    )
    .await;
    assert_subset("ann alone", &ann["totals"], &json!({ "handled": 2, "aht_secs": 352.5, "available_secs": 73800, "handling_secs": 705 }));

    // Business hours, by the queue's calendar (the one routing uses): sales opens Sundays
    // 09:00–12:15 Berlin time; a report with business_hours=true counts only the 15-minute
    // buckets inside. On Sunday the 29th that is V3 (enqueued and abandoned 11:00 local
    // after 40 s) and V4 (enqueued 12:00, answered 12:00:30 after 30 s; Cat talks 300 s and
    // transfers, Ben talks 240 s and wraps 60 s, closed 12:10:40): offered 2, answered 1,
    // ASA 30, SL 0 ÷ (1 + 1) = 0 %, abandoned 1, abandon rate 1 ÷ (2 − 0) = 50 %, handled
    // 2, AHT (300 + 300) ÷ 2 = 300, transferred 1, longest wait 40 s. V1 (00:30) and V2
    // (03:30) are before opening; V5 and V6 (the UTC day's last hours) are Monday the 30th
    // in Berlin: closed. The same in both zones. Support has no calendar: always open.
    let (st, v) = sup
        .call(
            "PATCH",
            &format!("/api/v1/queues/{}", ids.sales),
            Some(json!({ "business_hours": { "timezone": "Europe/Berlin", "weekly": { "sun": [["09:00", "12:15"]] } } })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let in_hours = json!({
        "offered": 2, "answered": 1, "asa_secs": 30.0, "service_level_pct": 0.0, "abandoned": 1, "abandoned_short": 0,
        "abandon_rate_pct": 50.0, "handled": 2, "aht_secs": 300.0, "transferred": 1, "longest_wait_secs": 40.0, "voicemail": 0,
    });
    // Right after the change (the calendar joined per request until the worker has
    // rebuilt the in-hours rows), then from the rows the worker rebuilt: the same figures.
    for (pass, tz) in [(0, "Europe/Berlin"), (0, "UTC"), (1, "Europe/Berlin"), (1, "UTC")] {
        if pass == 1 {
            calendars_rolled_up(&pool).await;
        }
        let bh = get(&sup, &format!("/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&tz={tz}&interval=day&business_hours=true")).await;
        assert_subset(&format!("sales in business hours, {tz}"), row_of(&bh, "queue", "sales"), &in_hours);
        assert_subset(
            &format!("support in business hours, {tz}"),
            row_of(&bh, "queue", "support"),
            &json!({ "offered": 4, "answered": 3 }),
        );
        let total = get(
            &sup,
            &format!("/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&tz={tz}&interval=day&group=interval&business_hours=true"),
        )
        .await;
        assert_eq!(total["totals"]["offered"], 6, "{total}");
    }
    let disp =
        get(&sup, "/api/v1/reports/dispositions?from=2026-03-29&to=2026-03-29&tz=Europe/Berlin&interval=total&business_hours=true").await;
    // V4 closed as a complaint at 12:10:40; V1's inquiry (00:36) is outside.
    assert_subset("dispositions in business hours", row_of(&disp, "queue", "sales"), &json!({ "complaint": 1, "inquiry": 0, "total": 1 }));
    // A holiday closes the whole day.
    let (st, v) = sup
        .call(
            "PATCH",
            &format!("/api/v1/queues/{}", ids.sales),
            Some(json!({ "business_hours": { "timezone": "Europe/Berlin", "weekly": { "sun": [["09:00", "12:15"]] }, "holidays": ["2026-03-29"] } })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let bh = get(
        &sup,
        &format!(
            "/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&tz=Europe/Berlin&interval=day&business_hours=true&queue={}",
            ids.sales
        ),
    )
    .await;
    assert_eq!(bh["totals"]["offered"], 0, "a report right after the change is of the new calendar: {bh}");
    calendars_rolled_up(&pool).await;
    let bh = get(
        &sup,
        &format!(
            "/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&tz=Europe/Berlin&interval=day&business_hours=true&queue={}",
            ids.sales
        ),
    )
    .await;
    assert_eq!(bh["totals"]["offered"], 0, "{bh}");

    // Pages: every report is paged by key (interval start, then queue/agent/channel);
    // following `next` gives the rows of the whole report in the same order, each page
    // with the totals of the whole range.
    for path in [
        "/api/v1/reports/queues?from=2026-03-28&to=2026-03-30&tz=Europe/Berlin&interval=hour",
        "/api/v1/reports/agents?from=2026-03-29&to=2026-03-29&tz=UTC&interval=15m",
        "/api/v1/reports/channels?from=2026-03-29&to=2026-03-29&tz=Europe/Berlin&interval=30m",
        "/api/v1/reports/channels?from=2026-03-29&to=2026-03-29&tz=Europe/Berlin&interval=15m&group=interval",
        "/api/v1/reports/agents?from=2026-03-29&to=2026-03-29&tz=Europe/Berlin&interval=day&group=dimension",
        "/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&tz=Asia/Kolkata&interval=hour&business_hours=true",
    ] {
        let whole = get(&sup, path).await;
        assert_eq!(whole["next"], Value::Null, "{path}: one page");
        let rows = whole["rows"].as_array().cloned().unwrap_or_default();
        assert!(rows.len() >= 3, "{path}: {whole}");
        for limit in [1, 2, 5] {
            let (paged, totals) = all_pages(&sup, path, limit).await;
            assert_eq!(paged, rows, "{path} by {limit}");
            for t in totals {
                assert_eq!(t, whole["totals"], "{path} by {limit}: totals of the whole range on every page");
            }
        }
    }
    for (path, field) in [
        ("/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&cursor=nonsense", "cursor"),
        ("/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&limit=0", "limit"),
        ("/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&limit=10001", "limit"),
        ("/api/v1/reports/queues/csv?from=2026-03-29&to=2026-03-29&limit=5", "cursor"),
    ] {
        let (st, v) = sup.call("GET", path, None).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {v}");
        assert!(v.to_string().contains(field), "{path}: {v}");
    }
    let (st, _) = sup.call("GET", "/api/v1/reports/agents?from=2026-03-29&to=2026-03-29&business_hours=true", None).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "business hours are per queue");

    // CSV: the queue report and the raw contact records.
    let (st, _, ct) = sup.raw("GET", "/api/v1/reports/queues/csv?from=2026-03-29&to=2026-03-29&tz=UTC", None, vec![]).await;
    assert_eq!(st, StatusCode::OK);
    assert!(ct.unwrap_or_default().starts_with("text/csv"));
    let qcsv = reqwest_text(&sup, "/api/v1/reports/queues/csv?from=2026-03-29&to=2026-03-29&tz=UTC").await;
    let qjson = get(&sup, "/api/v1/reports/queues?from=2026-03-29&to=2026-03-29&tz=UTC").await;
    let header: Vec<&str> = qcsv.lines().next().unwrap_or_default().split(',').collect();
    assert_eq!(&header[..3], &["start", "end", "queue"], "{qcsv}");
    assert_eq!(qcsv.lines().count(), 1 + qjson["rows"].as_array().map(Vec::len).unwrap_or(0), "{qcsv}");
    let sales_line = qcsv.lines().find(|l| l.split(',').nth(2) == Some("sales")).expect("sales line");
    let offered_at = header.iter().position(|c| *c == "offered").expect("offered column");
    assert_eq!(sales_line.split(',').nth(offered_at), Some("5"), "{qcsv}");
    let csv = reqwest_text(&sup, "/api/v1/reports/contacts/csv?from=2026-03-28&to=2026-03-30&tz=UTC").await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 10, "a header and ten contacts: {csv}");
    assert!(lines[0].starts_with("interaction_id,channel,direction,queue"));
    assert!(lines.iter().any(|l| l.contains(",abandoned_short,")), "{csv}");

    // A pass with nothing new changes nothing; a rebuild of any range gives the same numbers.
    let before = reports_snapshot(&sup, &ids).await;
    assert_eq!(rollup::catch_up(&pool, zone, Duration::ZERO, 5).await.expect("idle pass"), 0);
    rollup::rebuild(&pool, zone, t("2026-03-28T00:00:00Z"), t("2026-03-31T00:00:00Z"), |_| {}).await.expect("rebuild all");
    assert_eq!(reports_snapshot(&sup, &ids).await, before, "a full rebuild gives the same numbers");
    rollup::rebuild(&pool, zone, t("2026-03-29T00:00:00Z"), t("2026-03-30T00:00:00Z"), |_| {}).await.expect("rebuild a day");
    assert_eq!(reports_snapshot(&sup, &ids).await, before, "a one-day rebuild gives the same numbers");
    rollup::rebuild(&pool, zone, t("2026-03-29T10:00:00Z"), t("2026-03-29T11:00:00Z"), |_| {}).await.expect("rebuild a day");
    assert_eq!(reports_snapshot(&sup, &ids).await, before, "a rebuild of a range inside a day gives the same numbers");
    let _ = (ids.ann, ids.ben, ids.cat);
    tokio::time::sleep(Duration::from_millis(1)).await;
    th.stop().await;
}

async fn reqwest_text(c: &Client, path: &str) -> String {
    let (st, v, _) = c.raw("GET", path, None, vec![]).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}
