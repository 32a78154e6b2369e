//! Reports benchmark (docs/benchmarks.md): a generated year of events for 200 agents and
//! 20 queues (≥ 10,000,000 events, written with generate_series in a few statements),
//! then the rollup throughput of the worker over the whole log, then p50/p99 of every
//! report over a month at 15-minute intervals and over a year by day. Prints figures;
//! asserts nothing about time. Bounded: a fixed number of contacts, batches and queries.
//!
//! `cargo bench -p switchboard-core --features test-support --bench reports`
//! (REPORTS_BENCH_CONTACTS=1650000 by default; REPORTS_BENCH_ROLLUP_SECS caps the rollup
//! phase; REPORTS_BENCH_NO_CONVERSATION_INDEX=1 measures the rollup without the index of
//! migration 20261204200001; REPORTS_BENCH_DB=<name> uses and keeps that database, and
//! when it holds the generated events already, starts the rollup from scratch on them
//! instead of generating them again; with REPORTS_BENCH_KEEP_ROLLUPS=1 it keeps the
//! rollups too and only times the reports). Reports are timed through the API's path
//! (prepare, then the streamed body): the first page the JSON API answers (2,000 rows,
//! totals of the whole range), its first chunk and whole body; then the whole range once
//! as the CSV export (not paged). It lives in core so that it builds without the
//! adapters.

use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};
use switchboard_core::reports::interval::Interval;
use switchboard_core::reports::query::{self, Format, Kind, Request};
use switchboard_core::reports::{rollup, Tz};
use switchboard_core::testing::TestDb;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let contacts: i64 = std::env::var("REPORTS_BENCH_CONTACTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_650_000);
    let zone: Tz = "Europe/Berlin".parse().expect("zone");
    let (_db, kept) = match std::env::var("REPORTS_BENCH_DB") {
        Ok(name) => {
            let url =
                std::env::var("SWITCHBOARD_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let url = format!("{}/{name}", url.rsplit_once('/').map(|(a, _)| a).unwrap_or(&url));
            let pool = sqlx::PgPool::connect(&url).await.expect("REPORTS_BENCH_DB");
            switchboard_core::db::MIGRATOR.run(&pool).await.expect("migrate");
            (None, Some(pool))
        }
        Err(_) => (Some(TestDb::new().await), None),
    };
    let pool = kept.as_ref().or(_db.as_ref().map(|d| &d.pool)).expect("a database");
    let generated: i64 = sqlx::query_scalar("select count(*) from interaction_events").fetch_one(pool).await.expect("count");
    let keep_rollups = std::env::var("REPORTS_BENCH_KEEP_ROLLUPS").is_ok_and(|v| v == "1");
    if generated > 0 && keep_rollups {
        println!("reusing {generated} generated events and their rollups (REPORTS_BENCH_KEEP_ROLLUPS=1)");
    } else if generated > 0 {
        rollup::reset(pool, zone).await.expect("reset the rollups");
        println!("reusing {generated} generated events, rollups reset");
    } else {
        generate(pool, contacts).await;
    }
    rollup_and_report(pool, zone).await;
}

async fn generate(pool: &sqlx::PgPool, contacts: i64) {
    let t0 = Instant::now();
    sqlx::query("insert into queues (name, sla_target_secs) select 'q' || lpad(g::text, 2, '0'), 20 from generate_series(1, 20) g")
        .execute(pool)
        .await
        .expect("queues");
    sqlx::query("insert into agents (name) select 'agent' || lpad(g::text, 3, '0') from generate_series(1, 200) g")
        .execute(pool)
        .await
        .expect("agents");
    // Contacts spread evenly over 2025; channel, queue, agent and outcome from the row number.
    sqlx::query(
        "create unlogged table bench_contacts as
         select g, gen_random_uuid() as id, (array['voice','voice','chat','email'])[1 + g % 4] as channel,
                (select array_agg(id order by name) from queues)[1 + g % 20] as queue_id,
                (select array_agg(id order by name) from agents)[1 + (g * 7) % 200] as agent_id,
                timestamptz '2025-01-01 00:00:00+00' + (g * (365.0 * 86400 / $1)) * interval '1 second' as ts
           from generate_series(0, $1 - 1) g",
    )
    .bind(contacts)
    .execute(pool)
    .await
    .expect("contacts");
    sqlx::query(
        "insert into interactions (id, channel, queue_id, agent_id, status, created_at, enqueued_at, conversation_key)
         select id, channel, queue_id, agent_id, case when g % 10 = 0 then 'abandoned' else 'closed' end, ts, ts, 'c' || g from bench_contacts",
    )
    .execute(pool)
    .await
    .expect("interactions");
    let mut tx = pool.begin().await.expect("tx");
    sqlx::query("set local work_mem = '512MB'").execute(&mut *tx).await.expect("work_mem");
    // Per contact: abandoned (1 in 10): enqueued, message, abandoned; otherwise enqueued,
    // message, offered, accepted, (outbound reply for async), (hold/resume for 1 voice
    // call in 3), wrap_up, closed. Agents: two presence changes a day (an 8-hour shift).
    sqlx::query(
        "insert into interaction_events (interaction_id, agent_id, queue_id, kind, data, at)
         select interaction_id, agent_id, queue_id, kind, data, at from (
           select c.id as interaction_id, case when v.with_agent then c.agent_id end as agent_id, c.queue_id, v.kind, v.data,
                  c.ts + v.off * interval '1 second' as at
             from bench_contacts c cross join lateral (values
               ('enqueued', '{}'::jsonb, 0, false, true),
               ('message', '{\"direction\":\"inbound\"}'::jsonb, 0, false, true),
               ('abandoned', '{}'::jsonb, 2 + c.g % 60, false, c.g % 10 = 0),
               ('offered', '{}'::jsonb, 1 + c.g % 5, true, c.g % 10 <> 0),
               ('accepted', '{}'::jsonb, 6 + c.g % 40, true, c.g % 10 <> 0),
               ('message', '{\"direction\":\"outbound\"}'::jsonb, 60 + c.g % 200, true, c.g % 10 <> 0 and c.channel <> 'voice'),
               ('call_hold', '{}'::jsonb, 70, true, c.g % 10 <> 0 and c.channel = 'voice' and c.g % 3 = 0),
               ('call_resumed', '{}'::jsonb, 100, true, c.g % 10 <> 0 and c.channel = 'voice' and c.g % 3 = 0),
               ('wrap_up', '{}'::jsonb, 300 + c.g % 300, true, c.g % 10 <> 0),
               ('closed', jsonb_build_object('disposition', (array['complaint','inquiry','suggestion','other'])[1 + c.g % 4]),
                   330 + c.g % 300, true, c.g % 10 <> 0)
             ) v(kind, data, off, with_agent, present)
            where v.present
           union all
           select null, a.id, null, 'presence', jsonb_build_object('presence', p.presence), d + (a.n % 3) * interval '4 hours' + p.off
             from (select id, row_number() over (order by name) as n from agents) a
            cross join generate_series(timestamptz '2025-01-01 00:00:00+00', timestamptz '2025-12-31 00:00:00+00', interval '1 day') d
            cross join (values ('available', interval '6 hours'), ('offline', interval '14 hours')) p(presence, off)
         ) e order by at",
    )
    .execute(&mut *tx)
    .await
    .expect("events");
    tx.commit().await.expect("commit");
    let events: i64 = sqlx::query_scalar("select count(*) from interaction_events").fetch_one(pool).await.expect("count");
    sqlx::query("analyze").execute(pool).await.expect("analyze");
    println!("generated {events} events ({contacts} contacts, 200 agents, 20 queues, 2025) in {:.1} s", t0.elapsed().as_secs_f64());
}

async fn rollup_and_report(pool: &sqlx::PgPool, zone: Tz) {
    let events: i64 = sqlx::query_scalar("select count(*) from interaction_events").fetch_one(pool).await.expect("count");

    // REPORTS_BENCH_NO_CONVERSATION_INDEX=1 drops the index of migration
    // 20261204200001 first: the rollup as it ran before that index (the "before" figure).
    if std::env::var("REPORTS_BENCH_NO_CONVERSATION_INDEX").is_ok_and(|v| v == "1") {
        sqlx::query("drop index interactions_conversation").execute(pool).await.expect("drop index");
        println!("without interactions_conversation (before migration 20261204200001)");
    }

    // Rollup throughput: the worker's own batches over the whole log.
    let t1 = Instant::now();
    let mut gaps = rollup::Gaps::default();
    let mut done = 0usize;
    // REPORTS_BENCH_ROLLUP_SECS caps the rollup phase (0: the whole log); events are in
    // time order, so a capped run has rolled up the year from January on.
    let cap: u64 = std::env::var("REPORTS_BENCH_ROLLUP_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    for _ in 0..(events / 20_000 + 100) {
        if cap > 0 && t1.elapsed().as_secs() >= cap {
            break;
        }
        let pass = rollup::process_batch_of(pool, zone, &mut gaps, Duration::ZERO, 20_000).await.expect("batch");
        done += pass.events;
        if pass.events == 0 {
            break;
        }
        if done % 1_000_000 < 20_000 {
            eprintln!("  rolled up {done} events, {:.0}/s", done as f64 / t1.elapsed().as_secs_f64());
        }
    }
    let secs = t1.elapsed().as_secs_f64();
    gaps.release(pool).await.expect("release the rollup lease");
    // What autovacuum does after that many inserts (the generated log was analyzed before
    // the rollup tables were filled): the reports are planned with real row counts.
    sqlx::query("analyze report_dims, report_facts, report_presence, report_counts").execute(pool).await.expect("analyze");
    let facts: i64 = sqlx::query_scalar(
        "select (select count(*) from report_facts) + (select count(*) from report_presence) + (select count(*) from report_dims)",
    )
    .fetch_one(pool)
    .await
    .expect("facts");
    let covered: Option<DateTime<Utc>> =
        sqlx::query_scalar("select max(at) from interaction_events where id <= (select watermark from report_progress)")
            .fetch_one(pool)
            .await
            .expect("covered");
    println!("rolled up through {covered:?}");
    println!("rollup: {done} events in {secs:.1} s = {:.0} events/s ({facts} rollup rows)", done as f64 / secs);

    // Report latency.
    let month = (t("2025-03-01T00:00:00+01:00"), t("2025-04-01T00:00:00+02:00"), Interval::Quarter);
    let year = (t("2025-01-01T00:00:00+01:00"), t("2026-01-01T00:00:00+01:00"), Interval::Day);
    println!("| report | range | rows (whole range) | runs | first page: first chunk p50 ms | first page p50 ms | first page p99 ms | first page JSON MB | whole CSV export: first chunk / all ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, (from, to, interval)) in [("month by 15 min", month), ("year by day", year)] {
        for kind in [Kind::Queues, Kind::Agents, Kind::Channels, Kind::Dispositions, Kind::Ivr, Kind::Campaigns] {
            for by_dimension in [false, true] {
                let r = Request {
                    kind,
                    from,
                    to,
                    tz: zone,
                    interval,
                    queues: vec![],
                    agents: vec![],
                    channels: vec![],
                    sl_formula: None,
                    by_dimension,
                    business_hours: false,
                    page: None,
                };
                measure(pool, zone, &r, &format!("{kind:?}{}", if by_dimension { " per dimension" } else { "" }), label).await;
            }
        }
    }
    // Business hours: every queue open Monday to Friday 08:00–18:00 Berlin time, with a
    // holiday; the filtered reports read quarters.
    sqlx::query(
        "update queues set business_hours = '{\"timezone\": \"Europe/Berlin\", \"weekly\": {\"mon\": [[\"08:00\", \"18:00\"]], \"tue\": [[\"08:00\", \"18:00\"]], \"wed\": [[\"08:00\", \"18:00\"]], \"thu\": [[\"08:00\", \"18:00\"]], \"fri\": [[\"08:00\", \"18:00\"]]}, \"holidays\": [\"2025-04-18\"]}'",
    )
    .execute(pool)
    .await
    .expect("calendars");
    // The worker's next pass rebuilds the business-hours rows of the changed calendars
    // from the stored quarters (no event replay); until then these reports join the
    // calendars per request.
    let t2 = Instant::now();
    let mut gaps = rollup::Gaps::default();
    rollup::process_batch_of(pool, zone, &mut gaps, Duration::ZERO, 20_000).await.expect("calendar pass");
    gaps.release(pool).await.expect("release the rollup lease");
    sqlx::query("analyze report_dims").execute(pool).await.expect("analyze");
    println!("business-hours rows rebuilt for 20 new calendars in {:.1} s (one worker pass)", t2.elapsed().as_secs_f64());
    for (label, (from, to, interval)) in [("month by 15 min", month), ("year by day", year)] {
        for by_dimension in [false, true] {
            let r = Request {
                kind: Kind::Queues,
                from,
                to,
                tz: zone,
                interval,
                queues: vec![],
                agents: vec![],
                channels: vec![],
                sl_formula: None,
                by_dimension,
                business_hours: true,
                page: None,
            };
            measure(pool, zone, &r, &format!("Queues{}, business hours", if by_dimension { " per dimension" } else { "" }), label).await;
        }
    }
    sqlx::query("update queues set business_hours = null").execute(pool).await.expect("calendars off");
    // And back: the in-hours rows become every queue's rows again (a kept database then
    // starts the next run without calendars, so that run times the rebuild again).
    let t3 = Instant::now();
    let mut gaps = rollup::Gaps::default();
    rollup::process_batch_of(pool, zone, &mut gaps, Duration::ZERO, 20_000).await.expect("calendar pass");
    gaps.release(pool).await.expect("release the rollup lease");
    println!("business-hours rows rebuilt for 20 removed calendars in {:.1} s (one worker pass)", t3.elapsed().as_secs_f64());
}

/// Times a report through the API's path (prepare, then the streamed JSON body): time to
/// the first chunk and to the whole body; then once as CSV (rows counted from its lines).
async fn measure(pool: &sqlx::PgPool, zone: Tz, r: &Request, what: &str, label: &str) {
    // What the API answers: the first page (PAGE_DEFAULT rows, totals of the range).
    let paged = Request { page: Some(query::Page { limit: query::PAGE_DEFAULT, after: None }), ..r.clone() };
    let mut samples = Vec::new();
    let mut firsts = Vec::new();
    let mut bytes = 0usize;
    let began = Instant::now();
    for _ in 0..25 {
        if samples.len() >= 3 && began.elapsed() > Duration::from_secs(20) {
            break;
        }
        let s = Instant::now();
        let p = query::prepare(pool, zone, &paged).await.expect("report");
        let mut rx = query::stream(pool.clone(), p, Format::Json);
        let mut first = None;
        bytes = 0;
        while let Some(c) = rx.recv().await {
            let c = c.expect("chunk");
            first.get_or_insert_with(|| s.elapsed().as_secs_f64() * 1000.0);
            bytes += c.len();
        }
        samples.push(s.elapsed().as_secs_f64() * 1000.0);
        firsts.push(first.unwrap_or_default());
    }
    let s = Instant::now();
    let p = query::prepare(pool, zone, r).await.expect("report");
    let mut rx = query::stream(pool.clone(), p, Format::Csv);
    let mut lines = 0usize;
    let mut csv_first = None;
    while let Some(c) = rx.recv().await {
        csv_first.get_or_insert_with(|| s.elapsed().as_secs_f64() * 1000.0);
        lines += c.expect("chunk").iter().filter(|b| **b == b'\n').count();
    }
    let csv_ms = s.elapsed().as_secs_f64() * 1000.0;
    let csv_first = csv_first.unwrap_or_default();
    samples.sort_by(|a, b| a.total_cmp(b));
    firsts.sort_by(|a, b| a.total_cmp(b));
    println!(
        "| {what} | {label} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {csv_first:.0} / {csv_ms:.0} |",
        lines.saturating_sub(1),
        samples.len(),
        pct(&firsts, 0.5),
        pct(&samples, 0.5),
        pct(&samples, 0.99),
        bytes as f64 / 1e6,
    );
}
