//! Routing benchmark (bench binary; prints its figures).
//!
//! 1. In-memory decisions: 1,000 agents, 10,000 waiting interactions (kept at 10,000 by
//!    enqueueing a new one after each decision and freeing the agent again), skill
//!    requirements with levels; reports decisions/s and p50/p99/max decision latency.
//! 2. Committed assignments through PostgreSQL: 1,000 available agents and 10,000 queued
//!    interactions in a throwaway database; the router's commit path (batched statement,
//!    capacity trigger, events + NOTIFY) commits offers until every slot is used; reports
//!    committed assignments/s. Needs SWITCHBOARD_TEST_DATABASE_URL (default local server).
//!
//! Run: `cargo bench --bench routing` (add `-- --quick` for a shorter run).

use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};
use switchboard_core::domain::{Capacity, Channel, Strategy};
use switchboard_core::router::engine::{
    AgentRouting, Decision, Engine, EscalationAction, EscalationStep, QueueRouting, WaitingInteraction,
};
use switchboard_core::skills::SkillExpr;
use uuid::Uuid;

const AGENTS: usize = 1_000;
const WAITING: usize = 10_000;
const LANGS: [&str; 5] = ["language:en", "language:es", "language:de", "language:fr", "language:it"];
const TOPICS: [&str; 4] = ["billing", "support", "sales", "tech"];

fn agent(rng: &mut impl Rng, now: i64) -> AgentRouting {
    let mut skills = std::collections::BTreeMap::new();
    skills.insert(LANGS[rng.gen_range(0..LANGS.len())].to_string(), rng.gen_range(1..=5));
    skills.insert(LANGS[rng.gen_range(0..LANGS.len())].to_string(), rng.gen_range(1..=5));
    skills.insert(TOPICS[rng.gen_range(0..TOPICS.len())].to_string(), rng.gen_range(1..=5));
    AgentRouting {
        id: Uuid::new_v4(),
        skills,
        groups: if rng.gen_bool(0.1) { vec!["spare".into()] } else { vec![] },
        capacity: Capacity { voice: 1, sms: 4, email: 8, chat: 3 },
        available: true,
        voice_reachable: true,
        load: [0; 4],
        idle_since_ms: now - rng.gen_range(0..600_000),
    }
}

fn waiting(rng: &mut impl Rng, queues: &[Uuid], t: i64) -> WaitingInteraction {
    let req = format!("{} >= {}", LANGS[rng.gen_range(0..LANGS.len())], rng.gen_range(1..=3));
    WaitingInteraction {
        id: Uuid::new_v4(),
        queue_id: queues[rng.gen_range(0..queues.len())],
        channel: Channel::Chat,
        priority: if rng.gen_bool(0.05) { 5 } else { 0 },
        enqueued_at_ms: t,
        requirement: SkillExpr::parse(&req).expect("valid"),
        preferred_agent: None,
    }
}

fn queues() -> Vec<QueueRouting> {
    TOPICS
        .iter()
        .enumerate()
        .map(|(i, t)| QueueRouting {
            id: Uuid::new_v4(),
            name: t.to_string(),
            strategy: [Strategy::LongestIdle, Strategy::BestSkill, Strategy::LeastOccupied, Strategy::RoundRobin][i],
            requirement: SkillExpr::parse(&format!("{t} >= 1")).expect("valid"),
            escalation: vec![EscalationStep { after_secs: 60, action: EscalationAction::OverflowGroup { group: "spare".into() } }],
            sticky_timeout_ms: 30_000,
        })
        .collect()
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn in_memory(decisions: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let now = chrono::Utc::now().timestamp_millis();
    let mut e = Engine::new();
    let qs = queues();
    let qids: Vec<Uuid> = qs.iter().map(|q| q.id).collect();
    for q in qs {
        e.upsert_queue(q);
    }
    let agents: Vec<AgentRouting> = (0..AGENTS).map(|_| agent(&mut rng, now)).collect();
    for a in &agents {
        e.upsert_agent(a.clone());
    }
    for i in 0..WAITING {
        e.enqueue(waiting(&mut rng, &qids, now - 60_000 + i as i64));
    }
    // Fill agents to one below capacity so every decision works against busy agents.
    let mut lat = Vec::with_capacity(decisions);
    let mut t = now;
    let mut misses = 0usize;
    let started = Instant::now();
    while lat.len() < decisions && started.elapsed() < Duration::from_secs(60) {
        t += 1;
        let s = Instant::now();
        let d = e.decide(t, 1);
        let ns = s.elapsed().as_nanos() as u64;
        match d.first() {
            Some(Decision::Offer { agent, .. }) => {
                lat.push(ns);
                // Served instantly: the agent is freed and a new contact arrives, keeping
                // 10,000 waiting.
                e.release(*agent, Channel::Chat, t);
                e.enqueue(waiting(&mut rng, &qids, t));
            }
            _ => {
                misses += 1;
                if misses > 1000 {
                    break;
                }
            }
        }
    }
    let total = started.elapsed();
    lat.sort_unstable();
    let sum: u64 = lat.iter().sum();
    println!("routing/in-memory: agents={AGENTS} waiting={} decisions={}", e.waiting_len(), lat.len());
    println!(
        "routing/in-memory: {:.0} decisions/s (decide() time only: {:.0}/s), p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs (wall {:.2} s)",
        lat.len() as f64 / total.as_secs_f64(),
        lat.len() as f64 / (sum as f64 / 1e9),
        pct(&lat, 0.50) as f64 / 1e3,
        pct(&lat, 0.99) as f64 / 1e3,
        *lat.last().unwrap_or(&0) as f64 / 1e3,
        total.as_secs_f64()
    );
}

async fn committed(quick: bool) {
    let db = switchboard_core::testing::TestDb::new().await;
    let pool = db.pool.clone();
    let n_agents = AGENTS as i64;
    let n_waiting: i64 = if quick { 3_000 } else { WAITING as i64 };
    sqlx::query("insert into queues (name, requirement, accept_timeout_secs) values ('bench', '', 600)")
        .execute(&pool)
        .await
        .expect("queue");
    sqlx::query(
        "insert into agents (name, skills, capacity, presence)
         select 'agent ' || g, '{\"language:en\": 5}', '{\"voice\":1,\"chat\":3,\"email\":8,\"sms\":4}', 'available' from generate_series(1, $1) g",
    )
    .bind(n_agents)
    .execute(&pool)
    .await
    .expect("agents");
    sqlx::query(
        "insert into interactions (channel, queue_id, customer_address, enqueued_at)
         select 'chat', (select id from queues where name = 'bench'), 'visitor-' || g, now() - make_interval(secs => g)
         from generate_series(1, $1) g",
    )
    .bind(n_waiting)
    .execute(&pool)
    .await
    .expect("interactions");
    let settings = switchboard_core::config::CoreSettings::default();
    let hub = switchboard_core::Hub::new(pool.clone(), settings);
    let mut engine = Engine::new();
    switchboard_core::router::store::load_all(&pool, &mut engine).await.expect("load");
    let started = Instant::now();
    let mut total = 0usize;
    let mut batches = 0usize;
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        let d = engine.decide(now, 256);
        if d.is_empty() || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        batches += 1;
        total += switchboard_core::router::store::commit(&hub, &mut engine, d).await.expect("commit");
    }
    let secs = started.elapsed().as_secs_f64();
    let offers: i64 = sqlx::query_scalar("select count(*) from offers where state = 'pending'").fetch_one(&pool).await.expect("count");
    let over: i64 = sqlx::query_scalar(
        "select count(*) from (select a.id from agents a join offers o on o.agent_id = a.id and o.state in ('pending','accepted')
         group by a.id, a.capacity having count(*) > (a.capacity->>'chat')::int) x",
    )
    .fetch_one(&pool)
    .await
    .expect("check");
    println!("routing/committed: {total} assignments in {batches} batches, {:.2} s → {:.0} committed assignments/s (offers in db: {offers}, agents over capacity: {over})", secs, total as f64 / secs);
    drop(hub);
    drop(db);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    in_memory(if quick { 20_000 } else { 200_000 });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(committed(quick));
}
