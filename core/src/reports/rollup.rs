//! The rollup worker: reads `interaction_events` in id order, keeps each contact's and
//! each agent's state, and adds what every event means (docs/metrics.md) to the rollup
//! buckets of the event's instant. Live processing and a range rebuild run the same
//! [`Processor`], so they give the same numbers.
//!
//! Exactly once: a batch's rollup increments, the contact and agent state it changed, the
//! new watermark and any skipped ids are written in one transaction, after reading (and
//! row-locking) the watermark inside that transaction.
//!
//! One writer: the worker holds the [`ROLLUP_LEASE`] (core/src/lease.rs), renewed every
//! pass, and every write transaction starts with the lease's fencing check
//! ([`lease::still_held`]), so a node that was paused past its lease's expiry and wakes
//! up writes nothing. A rebuild (or reset) first takes [`REBUILD_LEASE`], which makes the
//! worker give the rollup lease up, then holds the rollup lease for its whole transaction.

#![allow(clippy::type_complexity)] // sqlx row tuples

use super::interval::{bucket, split, Grain};
use super::measures::Measures;
use crate::error::{CoreError, CoreResult};
use crate::lease::{self, Lease};
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// The lease of the one node that writes rollups.
pub const ROLLUP_LEASE: &str = "reports:rollup";
/// The lease a rebuild or reset takes first: while it is held, workers give the rollup
/// lease up and pause.
pub const REBUILD_LEASE: &str = "reports:rebuild";
/// How long a rollup lease lasts unrenewed (the worker renews it every pass).
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(15);
/// How long a rebuild waits for the worker to give the rollup lease up.
const REBUILD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// Events per batch.
pub const BATCH: i64 = 5000;
/// The IVR report's outcome of a caller who hung up in the IVR (event `ivr_hangup`),
/// beside the queue chosen and `voicemail`.
pub const IVR_HANGUP: &str = "hangup";

/// Most pieces a long presence segment is split into per grain (a year of quarters).
const MAX_PIECES: usize = 40_000;
/// The progress row's name.
const PROGRESS: &str = "rollup";

/// One event as the worker reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Event {
    /// Id.
    pub id: i64,
    /// Interaction.
    pub interaction_id: Option<Uuid>,
    /// Agent.
    pub agent_id: Option<Uuid>,
    /// Queue.
    pub queue_id: Option<Uuid>,
    /// Kind.
    pub kind: String,
    /// Data.
    pub data: serde_json::Value,
    /// Instant.
    pub at: DateTime<Utc>,
}

const EVENT_COLUMNS: &str = "id, interaction_id, agent_id, queue_id, kind, data, at";

/// A contact's state (a row of `report_contacts`).
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, PartialEq)]
pub struct Contact {
    /// Interaction.
    pub interaction_id: Uuid,
    /// Channel.
    pub channel: String,
    /// Direction.
    pub direction: String,
    /// Current queue.
    pub queue_id: Option<Uuid>,
    /// First queue.
    pub first_queue_id: Option<Uuid>,
    /// Customer.
    pub customer_id: Option<Uuid>,
    /// Campaign it answers, if any.
    pub campaign_id: Option<String>,
    /// Reopens a closed conversation.
    pub reopened: bool,
    /// First event.
    pub created_at: DateTime<Utc>,
    /// Entered the queue (kept across re-queues and transfers).
    pub enqueued_at: Option<DateTime<Utc>>,
    /// First answered.
    pub answered_at: Option<DateTime<Utc>>,
    /// Agent who answered first.
    pub first_agent_id: Option<Uuid>,
    /// Queue time until answered or abandoned.
    pub wait_ms: Option<i64>,
    /// Agent holding it now.
    pub held_by: Option<Uuid>,
    /// When the current holder accepted.
    pub segment_started_at: Option<DateTime<Utc>>,
    /// Hold started (open hold).
    pub hold_started_at: Option<DateTime<Utc>>,
    /// Wrap-up started (current holder).
    pub wrap_started_at: Option<DateTime<Utc>>,
    /// Hold of the current holder so far.
    pub segment_hold_ms: i64,
    /// Total talk.
    pub talk_ms: i64,
    /// Total hold.
    pub hold_ms: i64,
    /// Total wrap-up.
    pub wrap_ms: i64,
    /// First customer message.
    pub first_inbound_at: Option<DateTime<Utc>>,
    /// First agent reply.
    pub first_response_at: Option<DateTime<Utc>>,
    /// Customer messages.
    pub inbound_messages: i32,
    /// Agent replies.
    pub replies: i32,
    /// Internal notes.
    pub notes: i32,
    /// Transfers.
    pub transfers: i32,
    /// Ring-no-answers.
    pub ring_no_answers: i32,
    /// waiting, created, answered, abandoned, abandoned_short, voicemail, overflowed.
    pub outcome: String,
    /// Disposition at close.
    pub disposition: Option<String>,
    /// Closed, abandoned or left to voicemail.
    pub ended_at: Option<DateTime<Utc>>,
    /// Last event applied.
    pub last_event_id: i64,
}

const CONTACT_COLUMNS: &str = "interaction_id, channel, direction, queue_id, first_queue_id, customer_id, campaign_id, reopened, created_at, enqueued_at, answered_at, first_agent_id, wait_ms, held_by, segment_started_at, hold_started_at, wrap_started_at, segment_hold_ms, talk_ms, hold_ms, wrap_ms, first_inbound_at, first_response_at, inbound_messages, replies, notes, transfers, ring_no_answers, outcome, disposition, ended_at, last_event_id";

/// An agent's state.
#[derive(Debug, Clone, sqlx::FromRow)]
struct AgentState {
    agent_id: Uuid,
    presence: String,
    since: DateTime<Utc>,
    holding: i32,
    last_event_id: i64,
}

#[derive(Debug, Clone, Copy)]
struct QueueCfg {
    sl_ms: i64,
    short_ms: i64,
}

type FactKey = (Grain, DateTime<Utc>, Uuid, Uuid, String);
/// An agent's time in presence states per bucket (`report_presence`).
type PresenceKey = (Grain, DateTime<Utc>, Uuid);

/// The grains of the full rows (`report_facts`, `report_presence`): hourly figures are
/// read from quarters there, and kept pre-summed only in `report_dims` (migration
/// 20261205200000), which spares a third of the rows written.
const ROW_GRAINS: [Grain; 2] = [Grain::Quarter, Grain::Day];
/// The measures of `report_presence`, the last ones of [`Measures::COLUMNS`].
const PRESENCE_COLUMNS: [&str; 6] = ["available_ms", "away_ms", "busy_ms", "wrap_up_state_ms", "handling_ms", "idle_ms"];
type CountKey = (Grain, DateTime<Utc>, String, String, Uuid, String);

fn is_async(channel: &str) -> bool {
    matches!(channel, "chat" | "email" | "sms")
}

fn ms(d: Duration) -> i64 {
    d.num_milliseconds().max(0)
}

/// Applies events to contact and agent state and collects rollup increments.
pub struct Processor {
    zone: Tz,
    clip: Option<(DateTime<Utc>, DateTime<Utc>)>,
    contacts: HashMap<Uuid, Contact>,
    dirty_contacts: HashSet<Uuid>,
    agents: HashMap<Uuid, AgentState>,
    dirty_agents: HashSet<Uuid>,
    queues: HashMap<Uuid, QueueCfg>,
    /// The calendars the business-hours rows ('b', 'B') are built with
    /// (`report_bh_calendars`); a queue without one is always open.
    calendars: HashMap<Uuid, crate::queues::BusinessHours>,
    facts: HashMap<FactKey, Measures>,
    presence: HashMap<PresenceKey, Measures>,
    counts: HashMap<CountKey, i64>,
    evicted: HashSet<Uuid>,
}

impl Processor {
    fn new(zone: Tz, clip: Option<(DateTime<Utc>, DateTime<Utc>)>) -> Self {
        Processor {
            zone,
            clip,
            contacts: HashMap::new(),
            dirty_contacts: HashSet::new(),
            agents: HashMap::new(),
            dirty_agents: HashSet::new(),
            queues: HashMap::new(),
            calendars: HashMap::new(),
            facts: HashMap::new(),
            presence: HashMap::new(),
            counts: HashMap::new(),
            evicted: HashSet::new(),
        }
    }

    fn in_clip(&self, at: DateTime<Utc>) -> bool {
        self.clip.is_none_or(|(a, b)| at >= a && at < b)
    }

    fn emit(&mut self, at: DateTime<Utc>, queue: Option<Uuid>, agent: Option<Uuid>, channel: &str, m: Measures) {
        if !self.in_clip(at) || m.is_zero() {
            return;
        }
        for g in ROW_GRAINS {
            let key = (g, bucket(g, at, self.zone), queue.unwrap_or_default(), agent.unwrap_or_default(), channel.to_string());
            self.facts.entry(key).or_default().add(&m);
        }
    }

    fn count(&mut self, at: DateTime<Utc>, dim: &str, key: &str, queue: Option<Uuid>, channel: &str) {
        if !self.in_clip(at) {
            return;
        }
        for g in Grain::ALL {
            let k = (g, bucket(g, at, self.zone), dim.to_string(), key.to_string(), queue.unwrap_or_default(), channel.to_string());
            *self.counts.entry(k).or_default() += 1;
        }
    }

    fn queue_cfg(&self, q: Option<Uuid>) -> QueueCfg {
        q.and_then(|q| self.queues.get(&q).copied()).unwrap_or(QueueCfg { sl_ms: 20_000, short_ms: 5_000 })
    }

    fn agent(&mut self, id: Uuid, at: DateTime<Utc>, event_id: i64) -> &mut AgentState {
        self.dirty_agents.insert(id);
        let a = self.agents.entry(id).or_insert_with(|| AgentState {
            agent_id: id,
            presence: "offline".into(),
            since: at,
            holding: 0,
            last_event_id: event_id,
        });
        a.last_event_id = a.last_event_id.max(event_id);
        a
    }

    /// Closes the agent's current segment at `at` (time in presence, handling, idle).
    fn account_agent(&mut self, id: Uuid, at: DateTime<Utc>, event_id: i64) {
        let a = self.agent(id, at, event_id);
        let (presence, since, holding) = (a.presence.clone(), a.since, a.holding);
        a.since = at.max(since);
        let (mut from, mut to) = (since, at);
        if let Some((c0, c1)) = self.clip {
            from = from.max(c0);
            to = to.min(c1);
        }
        if to <= from || (presence == "offline" && holding == 0) {
            return;
        }
        for g in ROW_GRAINS {
            for (b, d) in split(g, from, to, self.zone, MAX_PIECES) {
                let mut m = Measures::default();
                match presence.as_str() {
                    "available" => m.available_ms = d,
                    "away" => m.away_ms = d,
                    "busy" => m.busy_ms = d,
                    "wrap_up" => m.wrap_up_state_ms = d,
                    _ => {}
                }
                if holding > 0 {
                    m.handling_ms = d;
                } else if presence == "available" {
                    m.idle_ms = d;
                }
                self.presence.entry((g, b, id)).or_default().add(&m);
            }
        }
    }

    fn contact_mut(&mut self, id: Uuid) -> Option<&mut Contact> {
        self.dirty_contacts.insert(id);
        self.contacts.get_mut(&id)
    }

    /// Ends the current holder's handling at `at`: talk, hold and wrap-up go to them.
    fn end_segment(&mut self, id: Uuid, at: DateTime<Utc>, event_id: i64, transferred: bool) -> Option<Uuid> {
        let c = self.contact_mut(id)?;
        let agent = c.held_by?;
        if let Some(h) = c.hold_started_at.take() {
            c.segment_hold_ms += ms(at - h);
        }
        let start = c.segment_started_at.unwrap_or(at);
        let talk_end = c.wrap_started_at.unwrap_or(at);
        let hold = c.segment_hold_ms;
        let talk = (ms(talk_end - start) - hold).max(0);
        let wrap = c.wrap_started_at.map(|w| ms(at - w)).unwrap_or(0);
        c.talk_ms += talk;
        c.hold_ms += hold;
        c.wrap_ms += wrap;
        c.held_by = None;
        c.segment_started_at = None;
        c.wrap_started_at = None;
        c.segment_hold_ms = 0;
        let (queue, channel) = (c.queue_id, c.channel.clone());
        let m = Measures { handled: 1, talk_ms: talk, hold_ms: hold, wrap_ms: wrap, transferred: transferred as i64, ..Default::default() };
        self.emit(at, queue, Some(agent), &channel, m);
        self.account_agent(agent, at, event_id);
        let a = self.agent(agent, at, event_id);
        a.holding = (a.holding - 1).max(0);
        Some(agent)
    }

    fn abandon(&mut self, id: Uuid, at: DateTime<Utc>) {
        let Some(c) = self.contact_mut(id) else { return };
        if c.answered_at.is_some() || c.ended_at.is_some() {
            return;
        }
        let wait = ms(at - c.enqueued_at.unwrap_or(c.created_at));
        let (queue, channel) = (c.queue_id, c.channel.clone());
        let cfg = self.queue_cfg(queue);
        let short = wait < cfg.short_ms;
        let Some(c) = self.contact_mut(id) else { return };
        c.wait_ms = Some(wait);
        c.outcome = if short { "abandoned_short" } else { "abandoned" }.into();
        c.ended_at = Some(at);
        let m = Measures {
            abandoned: (!short) as i64,
            abandoned_short: short as i64,
            abandoned_in_sl: (wait <= cfg.sl_ms) as i64,
            abandon_wait_ms: if short { 0 } else { wait },
            max_wait_ms: wait,
            ..Default::default()
        };
        self.emit(at, queue, None, &channel, m);
    }

    /// Counts an IVR outcome (`ivr`: the queue chosen, `voicemail` or [`IVR_HANGUP`]) and
    /// each node of the path the caller went through (`ivr_node`, at most 32 steps).
    fn count_ivr(&mut self, at: DateTime<Utc>, outcome: &str, ivr: &serde_json::Value, queue: Option<Uuid>, channel: &str) {
        self.count(at, "ivr", outcome, queue, channel);
        if let Some(path) = ivr.get("path").and_then(|p| p.as_array()) {
            for step in path.iter().take(32).filter_map(|s| s.as_str()) {
                self.count(at, "ivr_node", step, queue, channel);
            }
        }
    }

    /// Applies one event.
    pub fn apply(&mut self, e: &Event) {
        let at = e.at;
        let Some(id) = e.interaction_id else {
            if e.kind == "ivr_hangup" {
                // A caller who hung up in the IVR (no interaction): outcome `hangup`.
                let ivr = e.data.get("ivr").cloned().unwrap_or_default();
                self.count_ivr(at, IVR_HANGUP, &ivr, None, "voice");
            } else if e.kind == "presence" {
                if let Some(agent) = e.agent_id {
                    self.account_agent(agent, at, e.id);
                    let p = e.data.get("presence").and_then(|p| p.as_str()).unwrap_or("offline").to_string();
                    let a = self.agent(agent, at, e.id);
                    a.presence = p;
                    a.since = at;
                }
            }
            return;
        };
        let Some(c) = self.contact_mut(id) else { return };
        if c.last_event_id >= e.id {
            return; // applied already (the state row is newer than this event)
        }
        c.last_event_id = e.id;
        let (queue, channel) = (c.queue_id, c.channel.clone());
        let holder = c.held_by;
        let str_of = |k: &str| e.data.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let uuid_of = |k: &str| e.data.get(k).and_then(|v| v.as_str()).and_then(|s| s.parse::<Uuid>().ok());
        match e.kind.as_str() {
            "enqueued" => {
                let Some(c) = self.contact_mut(id) else { return };
                let q = e.queue_id.or(c.queue_id);
                c.queue_id = q;
                c.first_queue_id = c.first_queue_id.or(q);
                c.enqueued_at = Some(at);
                c.outcome = "waiting".into();
                let reopened = c.reopened;
                let campaign = c.campaign_id.clone();
                self.emit(at, q, None, &channel, Measures { offered: 1, reopened: reopened as i64, ..Default::default() });
                if let Some(camp) = campaign {
                    self.count(at, "campaign", &camp, q, &channel);
                }
            }
            "created" => {
                let Some(c) = self.contact_mut(id) else { return };
                c.queue_id = e.queue_id.or(c.queue_id);
                c.outcome = "created".into();
            }
            "voicemail" => {
                let Some(c) = self.contact_mut(id) else { return };
                c.queue_id = e.queue_id.or(c.queue_id);
                c.first_queue_id = c.first_queue_id.or(c.queue_id);
                c.outcome = "voicemail".into();
                c.ended_at = Some(at);
                let q = c.queue_id;
                self.emit(at, q, None, &channel, Measures { voicemail: 1, ..Default::default() });
            }
            "message" => {
                let outbound = str_of("direction").as_deref() == Some("outbound");
                let Some(c) = self.contact_mut(id) else { return };
                if outbound {
                    c.replies += 1;
                    let mut m = Measures { replies: 1, ..Default::default() };
                    if is_async(&c.channel) && c.first_response_at.is_none() {
                        c.first_response_at = Some(at);
                        m.first_responses = 1;
                        m.first_response_ms = ms(at - c.first_inbound_at.unwrap_or(c.created_at));
                    }
                    let agent = e.agent_id.or(holder);
                    self.emit(at, queue, agent, &channel, m);
                } else {
                    c.inbound_messages += 1;
                    c.first_inbound_at = c.first_inbound_at.or(Some(at));
                    self.emit(at, queue, None, &channel, Measures { inbound_msgs: 1, ..Default::default() });
                }
            }
            "note" => {
                if let Some(c) = self.contact_mut(id) {
                    c.notes += 1;
                }
                self.emit(at, queue, e.agent_id.or(holder), &channel, Measures { notes: 1, ..Default::default() });
            }
            "offered" => self.emit(at, queue, e.agent_id, &channel, Measures { offers: 1, ..Default::default() }),
            "offer_timeout" => {
                if let Some(c) = self.contact_mut(id) {
                    c.ring_no_answers += 1;
                }
                self.emit(at, queue, e.agent_id, &channel, Measures { ring_no_answer: 1, ..Default::default() })
            }
            "offer_declined" => self.emit(at, queue, e.agent_id, &channel, Measures { declined: 1, ..Default::default() }),
            "accepted" => {
                let Some(agent) = e.agent_id else { return };
                if holder.is_some() {
                    self.end_segment(id, at, e.id, false);
                }
                let q = e.queue_id.or(queue);
                let cfg = self.queue_cfg(q);
                let Some(c) = self.contact_mut(id) else { return };
                c.queue_id = q;
                let mut m = Measures::default();
                if c.answered_at.is_none() {
                    let wait = ms(at - c.enqueued_at.unwrap_or(c.created_at));
                    c.answered_at = Some(at);
                    c.first_agent_id = Some(agent);
                    c.wait_ms = Some(wait);
                    c.outcome = "answered".into();
                    m = Measures {
                        answered: 1,
                        answered_in_sl: (wait <= cfg.sl_ms) as i64,
                        wait_answered_ms: wait,
                        max_wait_ms: wait,
                        ..Default::default()
                    };
                }
                c.held_by = Some(agent);
                c.segment_started_at = Some(at);
                c.segment_hold_ms = 0;
                c.hold_started_at = None;
                c.wrap_started_at = None;
                self.emit(at, q, Some(agent), &channel, m);
                self.account_agent(agent, at, e.id);
                self.agent(agent, at, e.id).holding += 1;
            }
            "call_hold" => {
                let Some(c) = self.contact_mut(id) else { return };
                if c.held_by.is_some() && c.hold_started_at.is_none() {
                    c.hold_started_at = Some(at);
                    self.emit(at, queue, holder, &channel, Measures { holds: 1, ..Default::default() });
                }
            }
            "call_resumed" => {
                let Some(c) = self.contact_mut(id) else { return };
                if let Some(h) = c.hold_started_at.take() {
                    c.segment_hold_ms += ms(at - h);
                }
            }
            "wrap_up" => {
                let Some(c) = self.contact_mut(id) else { return };
                if c.held_by.is_some() && c.wrap_started_at.is_none() {
                    if let Some(h) = c.hold_started_at.take() {
                        c.segment_hold_ms += ms(at - h);
                    }
                    c.wrap_started_at = Some(at);
                }
            }
            "closed" => self.close(id, at, e, holder, str_of("disposition")),
            "abandoned" => self.abandon(id, at),
            "status" => match str_of("status").as_deref() {
                Some("voicemail") => {
                    let Some(c) = self.contact_mut(id) else { return };
                    if c.outcome == "voicemail" {
                        return;
                    }
                    c.outcome = "voicemail".into();
                    c.ended_at = Some(at);
                    self.emit(at, queue, None, &channel, Measures { voicemail: 1, ..Default::default() });
                }
                Some("overflowed") => {
                    let Some(c) = self.contact_mut(id) else { return };
                    c.outcome = "overflowed".into();
                    c.ended_at = Some(at);
                    self.emit(at, queue, None, &channel, Measures { overflowed: 1, ..Default::default() });
                }
                Some("abandoned") => self.abandon(id, at),
                Some("closed") => self.close(id, at, e, holder, None),
                _ => {}
            },
            "transferred" => {
                let from = uuid_of("from_agent");
                if from.is_some() && from == holder {
                    self.end_segment(id, at, e.id, true);
                }
                if let Some(c) = self.contact_mut(id) {
                    c.transfers += 1;
                }
                if let Some(q) = uuid_of("to_queue") {
                    if let Some(c) = self.contact_mut(id) {
                        c.queue_id = Some(q);
                    }
                    self.emit(at, Some(q), None, &channel, Measures { transferred_in: 1, ..Default::default() });
                }
                if let Some(a) = uuid_of("to_agent") {
                    self.emit(at, queue, Some(a), &channel, Measures { transferred_in: 1, ..Default::default() });
                }
            }
            "callback_requested" => self.emit(at, queue, None, &channel, Measures { callback: 1, ..Default::default() }),
            "ivr_choice" => {
                let ivr = e.data.get("ivr").cloned().unwrap_or_default();
                let choice = ivr.get("queue").and_then(|v| v.as_str()).filter(|s| !s.is_empty()).unwrap_or("default").to_string();
                self.count_ivr(at, &choice, &ivr, queue, &channel);
            }
            _ => {}
        }
    }

    fn close(&mut self, id: Uuid, at: DateTime<Utc>, e: &Event, holder: Option<Uuid>, disposition: Option<String>) {
        if holder.is_some() {
            self.end_segment(id, at, e.id, false);
        }
        let Some(c) = self.contact_mut(id) else { return };
        if c.outcome == "closed" {
            return;
        }
        let (queue, channel) = (c.queue_id, c.channel.clone());
        let mut m = Measures::default();
        if is_async(&c.channel) {
            m.resolved = 1;
            m.resolution_ms = ms(at - c.created_at);
        }
        match disposition.as_deref() {
            Some("complaint") => m.disp_complaint = 1,
            Some("inquiry") => m.disp_inquiry = 1,
            Some("suggestion") => m.disp_suggestion = 1,
            Some("other") => m.disp_other = 1,
            _ => {}
        }
        c.disposition = disposition.or(c.disposition.take());
        if c.answered_at.is_some() {
            c.outcome = "closed".into();
        }
        c.ended_at = Some(at);
        self.emit(at, queue, holder.or(e.agent_id), &channel, m);
    }
}

/// Loads what a batch of events needs: its contacts (stored state, or a new record from
/// the interaction), the agents they name, and queue settings.
async fn load(conn: &mut PgConnection, p: &mut Processor, events: &[Event], fresh: bool) -> CoreResult<()> {
    let ids: Vec<Uuid> = events
        .iter()
        .filter_map(|e| e.interaction_id)
        .filter(|i| !p.contacts.contains_key(i))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if !ids.is_empty() {
        if !fresh {
            let stored: Vec<Contact> =
                sqlx::query_as(&format!("select {CONTACT_COLUMNS} from report_contacts where interaction_id = any($1)"))
                    .bind(&ids)
                    .fetch_all(&mut *conn)
                    .await?;
            for c in stored {
                p.contacts.insert(c.interaction_id, c);
            }
        }
        let missing: Vec<Uuid> = ids.into_iter().filter(|i| !p.contacts.contains_key(i)).collect();
        if !missing.is_empty() {
            let first_at: HashMap<Uuid, (i64, DateTime<Utc>)> =
                events.iter().filter_map(|e| e.interaction_id.map(|i| (i, (e.id, e.at)))).fold(HashMap::new(), |mut m, (i, v)| {
                    m.entry(i).or_insert(v);
                    m
                });
            // A conversation's interaction that follows a closed one of the same
            // conversation reopens it.
            let rows: Vec<(Uuid, String, String, Option<Uuid>, Option<String>, bool, Option<Uuid>)> = sqlx::query_as(
                "select i.id, i.channel, i.direction, i.customer_id, i.metadata->>'campaign_id',
                        i.conversation_key is not null and exists(select 1 from interactions p where p.channel = i.channel
                            and p.conversation_key = i.conversation_key and p.created_at < i.created_at and p.id <> i.id),
                        i.queue_id
                   from interactions i where i.id = any($1)",
            )
            .bind(&missing)
            .fetch_all(&mut *conn)
            .await?;
            for (id, channel, direction, customer_id, campaign_id, reopened, _queue) in rows {
                let (first_id, created_at) = first_at.get(&id).copied().unwrap_or((0, Utc::now()));
                p.contacts.insert(
                    id,
                    Contact {
                        interaction_id: id,
                        channel,
                        direction,
                        queue_id: None,
                        first_queue_id: None,
                        customer_id,
                        campaign_id,
                        reopened,
                        created_at,
                        enqueued_at: None,
                        answered_at: None,
                        first_agent_id: None,
                        wait_ms: None,
                        held_by: None,
                        segment_started_at: None,
                        hold_started_at: None,
                        wrap_started_at: None,
                        segment_hold_ms: 0,
                        talk_ms: 0,
                        hold_ms: 0,
                        wrap_ms: 0,
                        first_inbound_at: None,
                        first_response_at: None,
                        inbound_messages: 0,
                        replies: 0,
                        notes: 0,
                        transfers: 0,
                        ring_no_answers: 0,
                        outcome: "waiting".into(),
                        disposition: None,
                        ended_at: None,
                        last_event_id: first_id - 1,
                    },
                );
            }
        }
    }
    if !fresh {
        let mut agents: HashSet<Uuid> = events.iter().filter_map(|e| e.agent_id).collect();
        agents.extend(p.contacts.values().filter_map(|c| c.held_by));
        agents.retain(|a| !p.agents.contains_key(a));
        if !agents.is_empty() {
            let ids: Vec<Uuid> = agents.into_iter().collect();
            let rows: Vec<AgentState> =
                sqlx::query_as("select agent_id, presence, since, holding, last_event_id from report_agent_state where agent_id = any($1)")
                    .bind(&ids)
                    .fetch_all(&mut *conn)
                    .await?;
            for a in rows {
                p.agents.insert(a.agent_id, a);
            }
        }
    }
    if p.queues.is_empty() {
        let rows: Vec<(Uuid, i32, Option<i32>)> = sqlx::query_as(
            "select q.id, q.sla_target_secs, s.short_abandon_secs from queues q left join report_queue_settings s on s.queue_id = q.id",
        )
        .fetch_all(&mut *conn)
        .await?;
        for (id, sl, short) in rows {
            p.queues.insert(id, QueueCfg { sl_ms: sl as i64 * 1000, short_ms: short.unwrap_or(5) as i64 * 1000 });
        }
        let cals: Vec<(Uuid, serde_json::Value)> =
            sqlx::query_as("select queue_id, calendar from report_bh_calendars").fetch_all(&mut *conn).await?;
        // A calendar that does not parse is always open (as in sync_calendars).
        p.calendars = cals.into_iter().filter_map(|(q, c)| Some((q, serde_json::from_value(c).ok()?))).collect();
    }
    Ok(())
}

/// `insert into <table> (<keys>, <measures>) select * from unnest(<key arrays>, <measure
/// arrays>)`: the rollup rows are append-only increments (migration 20261205200000), so a
/// batch is one plain multi-row insert per table, no conflict handling.
fn measures_insert(table: &str, keys: &[(&str, &str)]) -> String {
    let cols = Measures::COLUMNS;
    let key_cols: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let mut params: Vec<String> = keys.iter().enumerate().map(|(i, k)| format!("${}::{}[]", i + 1, k.1)).collect();
    params.extend((0..cols.len()).map(|i| format!("${}::int8[]", i + keys.len() + 1)));
    format!("insert into {table} ({}, {}) select * from unnest({})", key_cols.join(", "), cols.join(", "), params.join(", "))
}

static FACTS_INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    measures_insert(
        "report_facts",
        &[("grain", "int2"), ("bucket", "timestamptz"), ("queue_id", "uuid"), ("agent_id", "uuid"), ("channel", "text")],
    )
});

static PRESENCE_INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "insert into report_presence (grain, bucket, agent_id, {}) select * from unnest($1::int2[], $2::timestamptz[], $3::uuid[], {})",
        PRESENCE_COLUMNS.join(", "),
        (4..4 + PRESENCE_COLUMNS.len()).map(|i| format!("${i}::int8[]")).collect::<Vec<_>>().join(", ")
    )
});

/// `report_dims` is upserted (one row per key: migration 20261205200001); a batch's rows
/// are unique per key (summed in [`dims_of`]).
static DIMS_UPSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let sets: Vec<String> =
        Measures::COLUMNS
            .iter()
            .zip(Measures::IS_MAX)
            .map(|(c, max)| {
                if *max {
                    format!("{c} = greatest(report_dims.{c}, excluded.{c})")
                } else {
                    format!("{c} = report_dims.{c} + excluded.{c}")
                }
            })
            .collect();
    format!(
        "{} on conflict (grain, dim, bucket, key) do update set {}",
        measures_insert("report_dims", &[("grain", "int2"), ("bucket", "timestamptz"), ("dim", "\"char\""), ("key", "text")]),
        sets.join(", ")
    )
});

/// A row of `report_dims`: grain, bucket, dimension ('q' queue, 'c' channel, 'C' all rows
/// with a channel, 'a' rows with an agent, 'g' per agent, 't' all rows, 'b' per queue in
/// its business hours, 'B' all rows in business hours) and its key.
type DimKey = (Grain, DateTime<Utc>, i8, String);

/// Sums a batch's fact increments per report dimension (`report_dims`, see migrations
/// 20261205200000 and 20261207200000). Hourly sums are derived here from the quarters;
/// the business-hours dimensions from the quarters inside each queue's calendar
/// (`calendars`; a queue without one is always open), for all three grains.
fn dims_of(
    facts: &[(FactKey, Measures)],
    presence: &[(PresenceKey, Measures)],
    zone: Tz,
    calendars: &HashMap<Uuid, crate::queues::BusinessHours>,
) -> Vec<(DimKey, Measures)> {
    let mut dims: HashMap<DimKey, Measures> = HashMap::new();
    let mut add = |g: Grain, b: DateTime<Utc>, q: Uuid, a: Uuid, ch: &str, m: &Measures| {
        let mut grains = vec![(g, b)];
        if g == Grain::Quarter {
            grains.push((Grain::Hour, super::interval::hour(b)));
        }
        for (g, b) in grains {
            dims.entry((g, b, b'q' as i8, q.to_string())).or_default().add(m);
            if !ch.is_empty() {
                dims.entry((g, b, b'c' as i8, ch.to_string())).or_default().add(m);
                dims.entry((g, b, b'C' as i8, String::new())).or_default().add(m);
            }
            if !a.is_nil() {
                dims.entry((g, b, b'a' as i8, String::new())).or_default().add(m);
                dims.entry((g, b, b'g' as i8, a.to_string())).or_default().add(m);
            }
            dims.entry((g, b, b't' as i8, String::new())).or_default().add(m);
        }
        // A quarter inside the queue's business hours (open at its start) counts in
        // business hours, in its quarter, hour and day.
        if g == Grain::Quarter && calendars.get(&q).is_none_or(|c| c.is_open(b)) {
            for (g, b) in [(Grain::Quarter, b), (Grain::Hour, super::interval::hour(b)), (Grain::Day, super::interval::day(b, zone))] {
                dims.entry((g, b, b'b' as i8, q.to_string())).or_default().add(m);
                dims.entry((g, b, b'B' as i8, String::new())).or_default().add(m);
            }
        }
    };
    for ((g, b, q, a, ch), m) in facts {
        add(*g, *b, *q, *a, ch, m);
    }
    for ((g, b, a), m) in presence {
        add(*g, *b, Uuid::nil(), *a, "", m);
    }
    // In the primary key's order: the new rows of a bucket and dimension are written next
    // to each other (and, with the table's fillfactor, stay there when updated), so a page
    // of a report reads a few heap pages instead of one per row.
    let mut rows: Vec<(DimKey, Measures)> = dims.into_iter().collect();
    rows.sort_unstable_by(|(a, _), (b, _)| (a.0.id(), a.2, a.1, &a.3).cmp(&(b.0.id(), b.2, b.1, &b.3)));
    rows
}

/// Brings the business-hours rows ('b', 'B' of `report_dims`) to the queues' calendars
/// now (`queues.business_hours`): the queues whose calendar differs from the one their
/// rows were built with (`report_bh_calendars`) get their 'b' rows rebuilt from their 'q'
/// quarters (every quarter in the rollups, under the new calendar: no event replay; one
/// pass over the quarters for all of them), hours and days summed from those quarters
/// (days of the day zone `zone`, as the rollups'); then 'B' is summed again from 'b'.
/// Runs in the worker's transaction (under its lease), so the rows and the recorded
/// calendars change together. Returns the number of queues rebuilt.
pub(crate) async fn sync_calendars(conn: &mut PgConnection, zone: Tz) -> CoreResult<usize> {
    let changed: Vec<(Uuid, Option<serde_json::Value>)> = sqlx::query_as(
        "select coalesce(q.id, c.queue_id), q.business_hours from queues q full join report_bh_calendars c on c.queue_id = q.id
          where q.business_hours is distinct from c.calendar",
    )
    .fetch_all(&mut *conn)
    .await?;
    if changed.is_empty() {
        return Ok(0);
    }
    let cols = Measures::COLUMNS.join(", ");
    let aggs: Vec<String> = Measures::COLUMNS
        .iter()
        .zip(Measures::IS_MAX)
        .map(|(c, max)| if *max { format!("max({c})") } else { format!("sum({c})") })
        .collect();
    let aggs = aggs.join(", ");
    let range: (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as("select min(bucket), max(bucket) from report_dims where grain = 0 and dim = 't'").fetch_one(&mut *conn).await?;
    let keys: Vec<String> = changed.iter().map(|(q, _)| q.to_string()).collect();
    // Each queue's open spans over the quarters (null: always open; a calendar that does
    // not parse is always open, as routing's is_open).
    let spans: Vec<Option<String>> = changed
        .iter()
        .map(|(_, cal)| {
            let cal = cal.as_ref().and_then(|c| serde_json::from_value::<crate::queues::BusinessHours>(c.clone()).ok())?;
            let (Some(a), Some(b)) = range else { return None };
            super::query::open_spans_of(&cal, a, b + Duration::minutes(15))
        })
        .collect();
    sqlx::query("delete from report_dims where dim = 'b' and key = any($1)").bind(&keys).execute(&mut *conn).await?;
    sqlx::query(&format!(
        "insert into report_dims (grain, bucket, dim, key, {cols})
         select 0, bucket, 'b', key, {cols}
           from report_dims join unnest($1::text[], $2::text[]::tstzmultirange[]) c(k, open) on c.k = key
          where grain = 0 and dim = 'q' and (c.open is null or bucket <@ c.open)"
    ))
    .bind(&keys)
    .bind(&spans)
    .execute(&mut *conn)
    .await?;
    // Hours are UTC hours, days local days of the day zone.
    sqlx::query(&format!(
        "insert into report_dims (grain, bucket, dim, key, {cols})
         select g, b, 'b', key, {aggs}
           from report_dims x cross join lateral (values
                  (1::int2, date_trunc('hour', x.bucket at time zone 'UTC') at time zone 'UTC'),
                  (2::int2, date_trunc('day', x.bucket, $2))) v(g, b)
          where x.grain = 0 and x.dim = 'b' and x.key = any($1)
          group by g, b, key"
    ))
    .bind(&keys)
    .bind(zone.name())
    .execute(&mut *conn)
    .await?;
    for (q, cal) in &changed {
        // The calendar these rows are of: the JSON read above (a change since then is
        // found by the next pass).
        sqlx::query("delete from report_bh_calendars where queue_id = $1").bind(q).execute(&mut *conn).await?;
        if let Some(c) = cal {
            sqlx::query("insert into report_bh_calendars (queue_id, calendar) values ($1, $2)").bind(q).bind(c).execute(&mut *conn).await?;
        }
    }
    sqlx::query("delete from report_dims where dim = 'B'").execute(&mut *conn).await?;
    sqlx::query(&format!(
        "insert into report_dims (grain, bucket, dim, key, {cols})
         select grain, bucket, 'B', '', {aggs} from report_dims where dim = 'b' group by grain, bucket"
    ))
    .execute(&mut *conn)
    .await?;
    Ok(changed.len())
}

/// Binds the measure columns of `rows` (column arrays, in [`Measures::COLUMNS`] order).
fn bind_measures<'q, K>(
    mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    rows: &[(K, Measures)],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let mut cols: Vec<Vec<i64>> = vec![Vec::with_capacity(rows.len()); Measures::COLUMNS.len()];
    for (_, m) in rows {
        for (col, v) in cols.iter_mut().zip(m.values()) {
            col.push(v);
        }
    }
    for col in cols {
        q = q.bind(col);
    }
    q
}

/// Writes the collected increments, contacts and agents (in the caller's transaction).
async fn flush(conn: &mut PgConnection, p: &mut Processor, write_agents: bool) -> CoreResult<()> {
    let facts: Vec<(FactKey, Measures)> = p.facts.drain().collect();
    for chunk in facts.chunks(20_000) {
        let q = sqlx::query(&FACTS_INSERT)
            .bind(chunk.iter().map(|f| f.0 .0.id()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|f| f.0 .1).collect::<Vec<_>>())
            .bind(chunk.iter().map(|f| f.0 .2).collect::<Vec<_>>())
            .bind(chunk.iter().map(|f| f.0 .3).collect::<Vec<_>>())
            .bind(chunk.iter().map(|f| f.0 .4.clone()).collect::<Vec<_>>());
        bind_measures(q, chunk).execute(&mut *conn).await?;
    }
    let presence: Vec<(PresenceKey, Measures)> = p.presence.drain().collect();
    for chunk in presence.chunks(20_000) {
        let mut q = sqlx::query(&PRESENCE_INSERT)
            .bind(chunk.iter().map(|f| f.0 .0.id()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|f| f.0 .1).collect::<Vec<_>>())
            .bind(chunk.iter().map(|f| f.0 .2).collect::<Vec<_>>());
        for col in [
            |m: &Measures| m.available_ms,
            |m: &Measures| m.away_ms,
            |m: &Measures| m.busy_ms,
            |m: &Measures| m.wrap_up_state_ms,
            |m: &Measures| m.handling_ms,
            |m: &Measures| m.idle_ms,
        ] {
            q = q.bind(chunk.iter().map(|f| col(&f.1)).collect::<Vec<_>>());
        }
        q.execute(&mut *conn).await?;
    }
    let dims = dims_of(&facts, &presence, p.zone, &p.calendars);
    for chunk in dims.chunks(20_000) {
        let q = sqlx::query(&DIMS_UPSERT)
            .bind(chunk.iter().map(|f| f.0 .0.id()).collect::<Vec<_>>())
            .bind(chunk.iter().map(|f| f.0 .1).collect::<Vec<_>>())
            .bind(chunk.iter().map(|f| f.0 .2).collect::<Vec<_>>())
            .bind(chunk.iter().map(|f| f.0 .3.clone()).collect::<Vec<_>>());
        bind_measures(q, chunk).execute(&mut *conn).await?;
    }
    let counts: Vec<(CountKey, i64)> = p.counts.drain().collect();
    if !counts.is_empty() {
        sqlx::query(
            "insert into report_counts (grain, bucket, dim, key, queue_id, channel, n)
             select * from unnest($1::int2[], $2::timestamptz[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::int8[])",
        )
        .bind(counts.iter().map(|c| c.0 .0.id()).collect::<Vec<_>>())
        .bind(counts.iter().map(|c| c.0 .1).collect::<Vec<_>>())
        .bind(counts.iter().map(|c| c.0 .2.clone()).collect::<Vec<_>>())
        .bind(counts.iter().map(|c| c.0 .3.clone()).collect::<Vec<_>>())
        .bind(counts.iter().map(|c| c.0 .4).collect::<Vec<_>>())
        .bind(counts.iter().map(|c| c.0 .5.clone()).collect::<Vec<_>>())
        .bind(counts.iter().map(|c| c.1).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    let dirty: Vec<&Contact> = p.dirty_contacts.iter().filter_map(|i| p.contacts.get(i)).collect();
    for chunk in dirty.chunks(5000) {
        let json = serde_json::to_value(chunk).map_err(|e| CoreError::Internal(e.to_string()))?;
        let sets: Vec<String> =
            CONTACT_COLUMNS.split(", ").filter(|c| *c != "interaction_id").map(|c| format!("{c} = excluded.{c}")).collect();
        sqlx::query(&format!(
            "insert into report_contacts ({CONTACT_COLUMNS}) select {CONTACT_COLUMNS} from jsonb_populate_recordset(null::report_contacts, $1)
             on conflict (interaction_id) do update set {}",
            sets.join(", ")
        ))
        .bind(json)
        .execute(&mut *conn)
        .await?;
    }
    p.dirty_contacts.clear();
    if write_agents && !p.dirty_agents.is_empty() {
        let agents: Vec<&AgentState> = p.dirty_agents.iter().filter_map(|a| p.agents.get(a)).collect();
        sqlx::query(
            "insert into report_agent_state (agent_id, presence, since, holding, last_event_id)
             select * from unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::int4[], $5::int8[])
             on conflict (agent_id) do update set presence = excluded.presence, since = excluded.since,
                 holding = excluded.holding, last_event_id = excluded.last_event_id",
        )
        .bind(agents.iter().map(|a| a.agent_id).collect::<Vec<_>>())
        .bind(agents.iter().map(|a| a.presence.clone()).collect::<Vec<_>>())
        .bind(agents.iter().map(|a| a.since).collect::<Vec<_>>())
        .bind(agents.iter().map(|a| a.holding).collect::<Vec<_>>())
        .bind(agents.iter().map(|a| a.last_event_id).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    p.dirty_agents.clear();
    Ok(())
}

/// Reads (creating it) the progress row; refuses when the stored day zone differs from
/// the configured one (the day rollups would be of another zone: rebuild them).
async fn progress(conn: &mut PgConnection, zone: Tz) -> CoreResult<i64> {
    sqlx::query("insert into report_progress (name, watermark, day_zone) values ($1, 0, $2) on conflict (name) do nothing")
        .bind(PROGRESS)
        .bind(zone.name())
        .execute(&mut *conn)
        .await?;
    let (wm, z): (i64, String) = sqlx::query_as("select watermark, day_zone from report_progress where name = $1 for update")
        .bind(PROGRESS)
        .fetch_one(&mut *conn)
        .await?;
    if z != zone.name() {
        return Err(CoreError::Conflict(format!(
            "the report rollups keep days of {z}, the configuration says {}; run `switchboard reports rebuild --all`",
            zone.name()
        )));
    }
    Ok(wm)
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pass {
    /// Events applied.
    pub events: usize,
    /// Whether the worker stopped at an id not yet visible (maybe still being written).
    pub waiting_on_gap: bool,
    /// Another node holds the rollup lease, or a rebuild is running (nothing was written).
    pub busy: bool,
}

/// The live worker's memory of ids it found missing and since when.
#[derive(Debug)]
pub struct Gaps {
    seen: HashMap<i64, std::time::Instant>,
    /// Who this worker is to the lease (a node id, or random for a one-off run).
    holder: Uuid,
    /// The rollup lease while held.
    lease: Option<Lease>,
}

impl Default for Gaps {
    fn default() -> Self {
        Gaps::for_holder(Uuid::new_v4())
    }
}

impl Gaps {
    /// A worker's memory, holding the rollup lease as `holder` (the node id).
    pub fn for_holder(holder: Uuid) -> Gaps {
        Gaps { seen: HashMap::new(), holder, lease: None }
    }

    /// Gives the rollup lease up (shutdown, or the end of a one-off run) so another node's
    /// worker can take over at once.
    pub async fn release(&mut self, pool: &PgPool) -> CoreResult<()> {
        if let Some(l) = self.lease.take() {
            lease::release(pool, &l).await?;
        }
        Ok(())
    }

    /// Takes or renews the rollup lease; `None` when another node holds it or a rebuild
    /// is running (then it is given up).
    async fn lease(&mut self, pool: &PgPool) -> CoreResult<Option<Lease>> {
        if lease::holder(pool, REBUILD_LEASE).await?.is_some_and(|h| h.holder != self.holder) {
            self.release(pool).await?;
            return Ok(None);
        }
        self.lease = lease::acquire(pool, ROLLUP_LEASE, self.holder, LEASE_TTL).await?;
        Ok(self.lease.clone())
    }
}

/// Processes the next batch of events after the watermark. An id that is missing (its
/// transaction still open, or rolled back) stops the batch until it has been missing for
/// `gap_grace`; then it is skipped, remembered, and applied if it ever appears.
pub async fn process_batch(pool: &PgPool, zone: Tz, gaps: &mut Gaps, gap_grace: std::time::Duration) -> CoreResult<Pass> {
    process_batch_of(pool, zone, gaps, gap_grace, BATCH).await
}

/// [`process_batch`] with a batch size of `batch` events.
pub async fn process_batch_of(pool: &PgPool, zone: Tz, gaps: &mut Gaps, gap_grace: std::time::Duration, batch: i64) -> CoreResult<Pass> {
    let Some(held) = gaps.lease(pool).await? else {
        return Ok(Pass { busy: true, ..Default::default() });
    };
    write_batch(pool, zone, gaps, gap_grace, batch, &held).await
}

/// One batch under the rollup lease `held` (fenced: nothing is written when the database
/// says the lease is no longer this holding's).
async fn write_batch(
    pool: &PgPool,
    zone: Tz,
    gaps: &mut Gaps,
    gap_grace: std::time::Duration,
    batch: i64,
    held: &Lease,
) -> CoreResult<Pass> {
    let started = std::time::Instant::now();
    let mut tx = pool.begin().await?;
    // Fencing: the lease is still ours by the database's clock (a takeover waits for this
    // transaction), else this node overslept its lease and writes nothing.
    if !lease::still_held(&mut tx, ROLLUP_LEASE, held.token).await? {
        gaps.lease = None;
        return Ok(Pass { busy: true, ..Default::default() });
    }
    let wm = progress(&mut tx, zone).await?;
    // A queue calendar changed: its business-hours rows first (before this batch's).
    let resynced = sync_calendars(&mut tx, zone).await?;
    let mut events: Vec<Event> =
        sqlx::query_as(&format!("select {EVENT_COLUMNS} from interaction_events where id > $1 order by id limit $2"))
            .bind(wm)
            .bind(batch)
            .fetch_all(&mut *tx)
            .await?;
    // Late arrivals among ids skipped earlier.
    let late: Vec<Event> = sqlx::query_as(&format!(
        "select {EVENT_COLUMNS} from interaction_events where id in (select id from report_skipped_events) order by id"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let mut skipped = Vec::new();
    let mut take = 0;
    let mut expect = wm + 1;
    let now = std::time::Instant::now();
    let mut waiting_on_gap = false;
    'scan: for e in &events {
        while expect < e.id {
            let since = *gaps.seen.entry(expect).or_insert(now);
            if now.duration_since(since) >= gap_grace {
                skipped.push(expect);
                expect += 1;
            } else {
                waiting_on_gap = true;
                break 'scan;
            }
        }
        take += 1;
        expect = e.id + 1;
    }
    events.truncate(take);
    gaps.seen.retain(|id, _| *id > expect);
    let new_wm = events.last().map(|e| e.id).unwrap_or(wm).max(skipped.last().copied().unwrap_or(wm));
    let mut all = late.clone();
    all.extend(events);
    if all.is_empty() && skipped.is_empty() {
        if resynced > 0 {
            tx.commit().await?;
        }
        return Ok(Pass { waiting_on_gap, ..Default::default() });
    }
    let read = started.elapsed();
    let mut p = Processor::new(zone, None);
    load(&mut tx, &mut p, &all, false).await?;
    let loaded = started.elapsed();
    for e in &all {
        p.apply(e);
    }
    let applied = started.elapsed();
    let rows = p.facts.len() + p.presence.len();
    flush(&mut tx, &mut p, true).await?;
    let flushed = started.elapsed();
    if !late.is_empty() {
        sqlx::query("delete from report_skipped_events where id = any($1)")
            .bind(late.iter().map(|e| e.id).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
    }
    if !skipped.is_empty() {
        sqlx::query("insert into report_skipped_events (id) select unnest($1::int8[]) on conflict do nothing")
            .bind(&skipped)
            .execute(&mut *tx)
            .await?;
    }
    // An id missing for a day is a rolled-back insert: forget it.
    sqlx::query("delete from report_skipped_events where skipped_at < now() - interval '1 day'").execute(&mut *tx).await?;
    sqlx::query("update report_progress set watermark = $2, updated_at = now() where name = $1")
        .bind(PROGRESS)
        .bind(new_wm)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::debug!(
        events = all.len(),
        rows,
        read_ms = read.as_millis() as u64,
        load_ms = (loaded - read).as_millis() as u64,
        apply_ms = (applied - loaded).as_millis() as u64,
        write_ms = (flushed - applied).as_millis() as u64,
        commit_ms = (started.elapsed() - flushed).as_millis() as u64,
        "Report rollup batch applied."
    );
    Ok(Pass { events: all.len(), waiting_on_gap, busy: false })
}

/// Processes until nothing is left (bounded by `max_batches`); returns events applied.
pub async fn catch_up(pool: &PgPool, zone: Tz, gap_grace: std::time::Duration, max_batches: usize) -> CoreResult<usize> {
    let mut gaps = Gaps::default();
    let mut n = 0;
    let mut result = Ok(());
    for _ in 0..max_batches {
        let pass = match process_batch(pool, zone, &mut gaps, gap_grace).await {
            Ok(pass) => pass,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        n += pass.events;
        if pass.events == 0 && !pass.busy {
            break;
        }
        if pass.busy {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    gaps.release(pool).await?;
    result.map(|_| n)
}

/// Takes the rollup lease away from the workers for a rebuild or reset: first the rebuild
/// lease (workers seeing it give the rollup lease up), then the rollup lease itself
/// (bounded wait: a worker that stopped renewing loses it after [`LEASE_TTL`]).
async fn take_over(pool: &PgPool) -> CoreResult<(Lease, Lease)> {
    let holder = Uuid::new_v4();
    let deadline = tokio::time::Instant::now() + REBUILD_WAIT;
    let pause = std::time::Duration::from_millis(100);
    let mut rebuild = loop {
        if let Some(l) = lease::acquire(pool, REBUILD_LEASE, holder, LEASE_TTL).await? {
            break l;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CoreError::Conflict("another rebuild of the report rollups is running".into()));
        }
        tokio::time::sleep(pause).await;
    };
    loop {
        if let Some(l) = lease::acquire(pool, ROLLUP_LEASE, holder, LEASE_TTL).await? {
            return Ok((rebuild, l));
        }
        if tokio::time::Instant::now() >= deadline || !lease::renew(pool, &mut rebuild, LEASE_TTL).await? {
            lease::release(pool, &rebuild).await?;
            return Err(CoreError::Conflict("the report rollup worker did not give its lease up".into()));
        }
        tokio::time::sleep(pause).await;
    }
}

/// Gives both leases of [`take_over`] back.
async fn hand_back(pool: &PgPool, (rebuild, rollup): &(Lease, Lease)) -> CoreResult<()> {
    lease::release(pool, rollup).await?;
    lease::release(pool, rebuild).await
}

/// Starts the transaction of a rebuild or reset: the rollup lease's fencing check holds
/// its row (share lock) until the transaction ends, so no worker can take it meanwhile.
async fn fenced_tx(pool: &PgPool, rollup: &Lease) -> CoreResult<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = pool.begin().await?;
    if !lease::still_held(&mut tx, ROLLUP_LEASE, rollup.token).await? {
        return Err(CoreError::Conflict("the report rollup lease was lost".into()));
    }
    Ok(tx)
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rebuilt {
    /// Start of the recomputed range (a local midnight of the day zone).
    pub from: DateTime<Utc>,
    /// End of the range.
    pub to: DateTime<Utc>,
    /// Events replayed.
    pub events: usize,
}

/// Recomputes the rollups of `[from, to)` (widened to whole local days of the day zone)
/// from the raw events: deletes the range's rollups, replays every event of the contacts
/// that were open in the range and the agents' presence from the last change before it,
/// and adds only what falls inside the range. Events after the watermark are left to the
/// worker. Progress goes to `progress(events_done)`.
pub async fn rebuild(
    pool: &PgPool,
    zone: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    progress_cb: impl FnMut(usize),
) -> CoreResult<Rebuilt> {
    let leases = take_over(pool).await?;
    let r = rebuild_holding(pool, zone, from, to, progress_cb, &leases.1).await;
    hand_back(pool, &leases).await?;
    r
}

async fn rebuild_holding(
    pool: &PgPool,
    zone: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    mut progress_cb: impl FnMut(usize),
    rollup: &Lease,
) -> CoreResult<Rebuilt> {
    let from = super::interval::day(from, zone);
    let to = {
        let d = super::interval::day(to, zone);
        if d == to {
            d
        } else {
            super::interval::next_bucket(Grain::Day, d, zone)
        }
    };
    let mut tx = fenced_tx(pool, rollup).await?;
    let wm = progress(&mut tx, zone).await?;
    for table in ["report_facts", "report_presence", "report_dims", "report_counts"] {
        sqlx::query(&format!("delete from {table} where grain in (0, 1, 2) and bucket >= $1 and bucket < $2"))
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("create temp table report_rebuild_contacts (id uuid primary key) on commit drop").execute(&mut *tx).await?;
    sqlx::query(
        "insert into report_rebuild_contacts
         select distinct interaction_id from interaction_events where at >= $1 and at < $2 and interaction_id is not null and id <= $3
         union select interaction_id from report_contacts where created_at < $1 and (ended_at is null or ended_at >= $2 or held_by is not null)
         on conflict do nothing",
    )
    .bind(from)
    .bind(to)
    .bind(wm)
    .execute(&mut *tx)
    .await?;
    sqlx::query("analyze report_rebuild_contacts").execute(&mut *tx).await?;
    // Every event of those contacts, the presence changes inside the range and each
    // agent's last presence change before it, in id order, up to the watermark and
    // without ids the worker skipped.
    let sql = format!(
        "select {EVENT_COLUMNS} from (
            select e.* from interaction_events e join report_rebuild_contacts r on r.id = e.interaction_id where e.id <= $3
            union all
            select e.* from interaction_events e where e.interaction_id is null and e.kind in ('presence', 'ivr_hangup') and e.at >= $1 and e.at < $2 and e.id <= $3
            union all
            select * from (select distinct on (agent_id) e.* from interaction_events e
                            where e.interaction_id is null and e.kind = 'presence' and e.at < $1 and e.id <= $3
                            order by agent_id, id desc) last
         ) ev where not exists (select 1 from report_skipped_events s where s.id = ev.id) order by id"
    );
    let mut p = Processor::new(zone, Some((from, to)));
    let mut read_conn = pool.acquire().await?;
    let mut total = 0usize;
    let paged_sql = sql.replacen(") ev where", ") ev where ev.id > $4 and", 1) + " limit 20000";
    let mut after = i64::MIN;
    loop {
        // Read in the rebuild's transaction: it sees the temp table.
        let page: Vec<Event> = sqlx::query_as(&paged_sql).bind(from).bind(to).bind(wm).bind(after).fetch_all(&mut *tx).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let evicted: Vec<Uuid> =
            page.iter().filter_map(|e| e.interaction_id).filter(|i| p.evicted.contains(i) && !p.contacts.contains_key(i)).collect();
        if !evicted.is_empty() {
            let rows: Vec<Contact> =
                sqlx::query_as(&format!("select {CONTACT_COLUMNS} from report_contacts where interaction_id = any($1)"))
                    .bind(&evicted)
                    .fetch_all(&mut *tx)
                    .await?;
            for c in rows {
                p.contacts.insert(c.interaction_id, c);
            }
        }
        load(&mut read_conn, &mut p, &page, true).await?;
        for e in &page {
            p.apply(e);
        }
        total += page.len();
        progress_cb(total);
        // Contacts that ended stay only as rows: memory stays bounded over a long range.
        flush(&mut tx, &mut p, false).await?;
        let ended: Vec<Uuid> = p.contacts.iter().filter(|(_, c)| c.ended_at.is_some() && c.held_by.is_none()).map(|(i, _)| *i).collect();
        for i in ended {
            p.contacts.remove(&i);
            p.evicted.insert(i);
        }
    }
    // An agent's segment that runs past the range end was closed by the worker (and its
    // part inside the range counted) if a later event that ends segments is processed.
    let open: Vec<Uuid> = p.agents.iter().filter(|(_, a)| a.since < to).map(|(i, _)| *i).collect();
    if !open.is_empty() {
        let closed: Vec<Uuid> = sqlx::query_scalar(
            "select distinct a from (
                select agent_id as a from interaction_events where id <= $1 and at >= $2 and agent_id = any($3)
                   and kind in ('presence','accepted','closed','transferred','status')
                union all
                select (data->>'from_agent')::uuid from interaction_events where id <= $1 and at >= $2 and kind = 'transferred'
                   and data->>'from_agent' = any($4)) x where a is not null",
        )
        .bind(wm)
        .bind(to)
        .bind(&open)
        .bind(open.iter().map(|u| u.to_string()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        for a in closed {
            p.account_agent(a, to, i64::MAX);
        }
    }
    flush(&mut tx, &mut p, false).await?;
    tx.commit().await?;
    Ok(Rebuilt { from, to, events: total })
}

/// Forgets every rollup and contact record and sets the watermark back to zero with the
/// day zone `zone`: the worker then recomputes everything from the event log (used when
/// `reports.time_zone` changes).
pub async fn reset(pool: &PgPool, zone: Tz) -> CoreResult<()> {
    let leases = take_over(pool).await?;
    let r = reset_holding(pool, zone, &leases.1).await;
    hand_back(pool, &leases).await?;
    r
}

async fn reset_holding(pool: &PgPool, zone: Tz, rollup: &Lease) -> CoreResult<()> {
    let mut tx = fenced_tx(pool, rollup).await?;
    sqlx::query(
        "truncate report_facts, report_presence, report_dims, report_counts, report_contacts, report_agent_state, report_skipped_events,
                  report_bh_calendars",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into report_progress (name, watermark, day_zone) values ($1, 0, $2)
         on conflict (name) do update set watermark = 0, day_zone = excluded.day_zone, updated_at = now()",
    )
    .bind(PROGRESS)
    .bind(zone.name())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;
    use std::time::Duration as StdDuration;

    async fn presence(pool: &PgPool, agent: Uuid, state: &str, at: &str) {
        sqlx::query("insert into interaction_events (agent_id, kind, data, at) values ($1, 'presence', $2, $3::timestamptz)")
            .bind(agent)
            .bind(serde_json::json!({ "presence": state }))
            .bind(at)
            .execute(pool)
            .await
            .unwrap();
    }

    async fn available_ms(pool: &PgPool) -> i64 {
        sqlx::query_scalar("select coalesce(sum(available_ms), 0)::int8 from report_presence where grain = 0")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn reports_rollup_a_node_that_lost_its_lease_writes_nothing() {
        let db = TestDb::new().await;
        let pool = &db.pool;
        let zone: Tz = "UTC".parse().unwrap();
        let agent = Uuid::new_v4();
        presence(pool, agent, "available", "2026-01-05T10:00:00Z").await;
        presence(pool, agent, "offline", "2026-01-05T11:00:00Z").await;
        let mut a = Gaps::for_holder(Uuid::new_v4());
        let stale = a.lease(pool).await.unwrap().expect("a free lease");
        // Node a is paused past its lease's expiry; node b's worker takes over.
        sqlx::query("update leases set expires_at = clock_timestamp() - interval '1 second' where name = $1")
            .bind(ROLLUP_LEASE)
            .execute(pool)
            .await
            .unwrap();
        let mut b = Gaps::for_holder(Uuid::new_v4());
        assert_eq!(process_batch(pool, zone, &mut b, StdDuration::ZERO).await.unwrap().events, 2);
        presence(pool, agent, "available", "2026-01-05T12:00:00Z").await;
        presence(pool, agent, "offline", "2026-01-05T12:30:00Z").await;
        // Node a wakes up and writes the batch it had started with its old lease: fenced.
        let pass = write_batch(pool, zone, &mut a, StdDuration::ZERO, BATCH, &stale).await.unwrap();
        assert!(pass.busy && pass.events == 0, "{pass:?}");
        // Nor can it take the lease back while b renews it.
        assert!(process_batch(pool, zone, &mut a, StdDuration::ZERO).await.unwrap().busy);
        assert_eq!(process_batch(pool, zone, &mut b, StdDuration::ZERO).await.unwrap().events, 2);
        // Every hour counted once.
        assert_eq!(available_ms(pool).await, 5_400_000);
        b.release(pool).await.unwrap();
        assert_eq!(process_batch(pool, zone, &mut a, StdDuration::ZERO).await.unwrap().events, 0, "a takes over after the release");
    }

    #[tokio::test]
    async fn reports_rebuild_takes_the_rollup_lease_from_a_running_worker() {
        let db = TestDb::new().await;
        let pool = db.pool.clone();
        let zone: Tz = "UTC".parse().unwrap();
        let agent = Uuid::new_v4();
        presence(&pool, agent, "available", "2026-01-05T10:00:00Z").await;
        presence(&pool, agent, "offline", "2026-01-05T11:00:00Z").await;
        let mut worker = Gaps::for_holder(Uuid::new_v4());
        assert_eq!(process_batch(&pool, zone, &mut worker, StdDuration::ZERO).await.unwrap().events, 2);
        // The worker keeps passing (and renewing) while the rebuild runs.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let running = {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut busy = 0;
                for _ in 0..600 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    busy += process_batch(&pool, zone, &mut worker, StdDuration::ZERO).await.unwrap().busy as usize;
                    tokio::time::sleep(StdDuration::from_millis(20)).await;
                }
                (busy, worker)
            })
        };
        let t0 = std::time::Instant::now();
        let from = DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z").unwrap().with_timezone(&Utc);
        let r = rebuild(&pool, zone, from, from + Duration::days(1), |_| {}).await.unwrap();
        assert_eq!(r.events, 2);
        assert!(t0.elapsed() < StdDuration::from_secs(5), "the worker gave the lease up at once: {:?}", t0.elapsed());
        assert_eq!(available_ms(&pool).await, 3_600_000);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (busy, mut worker) = running.await.unwrap();
        assert!(busy > 0, "the worker paused for the rebuild");
        // And it takes the lease back afterwards.
        assert!(!process_batch(&pool, zone, &mut worker, StdDuration::ZERO).await.unwrap().busy);
    }
}
