//! The pure routing engine: agents, waiting interactions and the decision rule.
//! No I/O; the leader (`leader.rs`) feeds it from PostgreSQL and commits what it decides.
//!
//! Order (invariant 3): priority descending, then original enqueue time ascending, then
//! arrival sequence. Re-queued interactions are re-inserted with their original
//! `enqueued_at`, so they keep their place.

use crate::domain::{Capacity, Channel, Strategy};
use crate::skills::{Cmp, SkillExpr, SkillSet};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::ops::Bound;
use uuid::Uuid;

/// One escalation step of a queue, applied once an interaction has waited `after_secs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationStep {
    /// Seconds of waiting after which the step applies.
    pub after_secs: u32,
    /// What the step does.
    #[serde(flatten)]
    pub action: EscalationAction,
}

/// What an escalation step does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum EscalationAction {
    /// Drop every requirement term naming this skill.
    RelaxSkill { skill: String },
    /// Agents eligible for another queue (by name) become eligible too.
    AddQueue { queue: String },
    /// Agents of an overflow group ("spare staff") become eligible regardless of skills.
    OverflowGroup { group: String },
}

/// Routing-relevant view of a queue.
#[derive(Debug, Clone)]
pub struct QueueRouting {
    /// Queue id.
    pub id: Uuid,
    /// Queue name (escalation steps refer to queues by name).
    pub name: String,
    /// Agent selection strategy.
    pub strategy: Strategy,
    /// The queue's skill requirement.
    pub requirement: SkillExpr,
    /// Escalation steps, sorted by `after_secs`.
    pub escalation: Vec<EscalationStep>,
    /// How long the customer's own manager is waited for.
    pub sticky_timeout_ms: i64,
}

/// Routing-relevant view of an agent.
#[derive(Debug, Clone)]
pub struct AgentRouting {
    /// Agent id.
    pub id: Uuid,
    /// Skills with levels.
    pub skills: SkillSet,
    /// Overflow groups the agent belongs to.
    pub groups: Vec<String>,
    /// Per-channel capacity.
    pub capacity: Capacity,
    /// Whether presence is `available`.
    pub available: bool,
    /// Whether the agent's phone is registered now: voice goes only to agents whose phone
    /// can ring (a chat-only agent without a phone is not eligible for calls).
    pub voice_reachable: bool,
    /// Live offers and held interactions per channel.
    pub load: [u32; 4],
    /// When the agent last became idle (ms since epoch); longest-idle picks the smallest.
    pub idle_since_ms: i64,
}

/// Routing-relevant view of a waiting interaction.
#[derive(Debug, Clone)]
pub struct WaitingInteraction {
    /// Interaction id.
    pub id: Uuid,
    /// Queue id.
    pub queue_id: Uuid,
    /// Channel (capacity is per channel).
    pub channel: Channel,
    /// Higher goes first.
    pub priority: i32,
    /// Original enqueue time (ms since epoch).
    pub enqueued_at_ms: i64,
    /// The interaction's own requirement (e.g. language chosen in the IVR), and-ed with the queue's.
    pub requirement: SkillExpr,
    /// The customer's own manager, tried first.
    pub preferred_agent: Option<Uuid>,
}

/// A routing decision, applied tentatively to the engine's state until committed or rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Offer to one agent.
    Offer { interaction: Uuid, agent: Uuid, channel: Channel },
    /// Ring every listed agent at once (voice ring-all); first to accept wins.
    RingAll { interaction: Uuid, agents: Vec<Uuid>, channel: Channel },
}

impl Decision {
    /// The interaction the decision is about.
    pub fn interaction(&self) -> Uuid {
        match self {
            Decision::Offer { interaction, .. } | Decision::RingAll { interaction, .. } => *interaction,
        }
    }
}

// ---- compiled requirements -------------------------------------------------------------

#[derive(Debug, Clone)]
enum Compiled {
    Any,
    Term(u16, Cmp, u8),
    And(Box<Compiled>, Box<Compiled>),
    Or(Box<Compiled>, Box<Compiled>),
    Not(Box<Compiled>),
    InGroup(u16),
}

impl Compiled {
    /// Best-skill score: the agent's levels of the skills named (max over `or`).
    fn score(&self, levels: &[u8]) -> u32 {
        match self {
            Compiled::Term(i, _, _) => levels.get(*i as usize).copied().unwrap_or(0) as u32,
            Compiled::And(a, b) => a.score(levels) + b.score(levels),
            Compiled::Or(a, b) => a.score(levels).max(b.score(levels)),
            Compiled::Any | Compiled::Not(_) | Compiled::InGroup(_) => 0,
        }
    }

    #[inline]
    fn eval(&self, levels: &[u8], groups: &[u16]) -> bool {
        match self {
            Compiled::Any => true,
            Compiled::Term(i, cmp, want) => {
                let have = levels.get(*i as usize).copied().unwrap_or(0);
                match cmp {
                    Cmp::Ge => have >= *want,
                    Cmp::Gt => have > *want,
                    Cmp::Eq => have == *want,
                    Cmp::Le => have <= *want,
                    Cmp::Lt => have < *want,
                }
            }
            Compiled::And(a, b) => a.eval(levels, groups) && b.eval(levels, groups),
            Compiled::Or(a, b) => a.eval(levels, groups) || b.eval(levels, groups),
            Compiled::Not(a) => !a.eval(levels, groups),
            Compiled::InGroup(g) => groups.contains(g),
        }
    }
}

#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<String, u16>,
}

impl Interner {
    fn id(&mut self, s: &str) -> u16 {
        if let Some(i) = self.ids.get(s) {
            return *i;
        }
        let i = self.ids.len().min(u16::MAX as usize) as u16;
        self.ids.insert(s.to_string(), i);
        i
    }
}

#[derive(Debug)]
struct Agent {
    info: AgentRouting,
    levels: Vec<u8>,
    groups: Vec<u16>,
    last_offer_seq: u64,
}

impl Agent {
    #[inline]
    fn has_room(&self, ch: Channel) -> bool {
        self.info.available
            && (ch != Channel::Voice || self.info.voice_reachable)
            && self.info.load[ch.index()] < self.info.capacity.get(ch)
    }
    fn occupancy(&self, ch: Channel) -> f64 {
        let cap = self.info.capacity.get(ch).max(1) as f64;
        self.info.load.iter().sum::<u32>() as f64 / cap
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct WaitKey {
    neg_priority: i64,
    enqueued_at_ms: i64,
    seq: u64,
}

#[derive(Debug)]
struct Waiting {
    info: WaitingInteraction,
    key: WaitKey,
    /// Escalation stage the compiled requirement reflects, and the compiled form.
    stage: usize,
    compiled: Compiled,
    /// Cache key for "nobody eligible" memoisation within one batch.
    class: u64,
}

/// The routing engine.
#[derive(Debug, Default)]
pub struct Engine {
    skills: Interner,
    groups: Interner,
    agents: Vec<Agent>,
    agent_index: HashMap<Uuid, usize>,
    queues: HashMap<Uuid, QueueRouting>,
    queue_by_name: HashMap<String, Uuid>,
    waiting: BTreeMap<WaitKey, Uuid>,
    by_id: HashMap<Uuid, Waiting>,
    seq: u64,
    offer_seq: u64,
    /// When the next escalation step of a waiting interaction falls due: (due ms, id).
    timers: BinaryHeap<Reverse<(i64, Uuid)>>,
    /// Per channel, how many agents have room now (kept incrementally so a decision never
    /// scans every agent just to learn that nobody is free).
    room: [usize; 4],
    /// Agents who declined an interaction (or let its offer ring out), per interaction,
    /// with the time (ms) until which it is not offered to them again.
    refusals: HashMap<Uuid, Vec<(Uuid, i64)>>,
    /// When expired refusals are next pruned (ms).
    next_refusal_prune_ms: i64,
    /// How long a refusal keeps an interaction from the refusing agent (ms); `None` is
    /// the default of 60 s.
    refusal_skip_ms: Option<i64>,
}

impl Engine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a refusal keeps an interaction from the agent who refused it (ms).
    pub fn refusal_skip_ms(&self) -> i64 {
        self.refusal_skip_ms.unwrap_or(60_000)
    }

    /// Sets how long a refusal keeps an interaction from the agent who refused it (ms).
    pub fn set_refusal_skip_ms(&mut self, ms: i64) {
        self.refusal_skip_ms = Some(ms.max(0));
    }

    /// Number of waiting interactions.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Number of known agents.
    pub fn agents_len(&self) -> usize {
        self.agents.len()
    }

    /// Whether an interaction is waiting in the engine.
    pub fn is_waiting(&self, id: Uuid) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Ids of waiting interactions in routing order.
    pub fn waiting_order(&self) -> Vec<Uuid> {
        self.waiting.values().copied().collect()
    }

    /// The agent's current load on a channel.
    pub fn agent_load(&self, agent: Uuid, ch: Channel) -> Option<u32> {
        self.agent_index.get(&agent).map(|i| self.agents[*i].info.load[ch.index()])
    }

    fn room_of(a: &Agent) -> [bool; 4] {
        [a.has_room(Channel::Voice), a.has_room(Channel::Sms), a.has_room(Channel::Email), a.has_room(Channel::Chat)]
    }

    /// Applies `f` to agent `i`, keeping the per-channel room counters right.
    fn touch_agent(&mut self, i: usize, f: impl FnOnce(&mut Agent)) {
        let before = Self::room_of(&self.agents[i]);
        f(&mut self.agents[i]);
        let after = Self::room_of(&self.agents[i]);
        for c in 0..4 {
            match (before[c], after[c]) {
                (true, false) => self.room[c] -= 1,
                (false, true) => self.room[c] += 1,
                _ => {}
            }
        }
    }

    /// Adds or replaces a queue. Waiting interactions of that queue are recompiled.
    pub fn upsert_queue(&mut self, q: QueueRouting) {
        let id = q.id;
        self.queue_by_name.insert(q.name.clone(), id);
        let mut q = q;
        q.escalation.sort_by_key(|s| s.after_secs);
        self.queues.insert(id, q);
        let ids: Vec<Uuid> = self.by_id.values().filter(|w| w.info.queue_id == id).map(|w| w.info.id).collect();
        for iid in ids {
            if let Some(w) = self.by_id.get(&iid) {
                let (stage, info) = (w.stage, w.info.clone());
                let (compiled, class) = self.compile_for(&info, stage);
                if let Some(w) = self.by_id.get_mut(&iid) {
                    w.compiled = compiled;
                    w.class = class;
                }
            }
        }
    }

    /// Adds or replaces an agent (presence, skills, capacity, load).
    pub fn upsert_agent(&mut self, a: AgentRouting) {
        let levels = self.levels_for(&a.skills);
        let groups = a.groups.iter().map(|g| self.groups.id(g)).collect();
        if let Some(&i) = self.agent_index.get(&a.id) {
            let seq = self.agents[i].last_offer_seq;
            self.touch_agent(i, |slot| *slot = Agent { info: a, levels, groups, last_offer_seq: seq });
        } else {
            let agent = Agent { info: a, levels, groups, last_offer_seq: 0 };
            for (c, has) in Self::room_of(&agent).iter().enumerate() {
                if *has {
                    self.room[c] += 1;
                }
            }
            self.agent_index.insert(agent.info.id, self.agents.len());
            self.agents.push(agent);
        }
    }

    /// Sets presence availability; becoming available resets the idle clock.
    pub fn set_available(&mut self, agent: Uuid, available: bool, now_ms: i64) {
        if let Some(&i) = self.agent_index.get(&agent) {
            self.touch_agent(i, |a| {
                if available && !a.info.available {
                    a.info.idle_since_ms = now_ms;
                }
                a.info.available = available;
            });
        }
    }

    /// Frees one unit of an agent's capacity on a channel (interaction finished or offer ended).
    pub fn release(&mut self, agent: Uuid, ch: Channel, now_ms: i64) {
        if let Some(&i) = self.agent_index.get(&agent) {
            self.touch_agent(i, |a| {
                a.info.load[ch.index()] = a.info.load[ch.index()].saturating_sub(1);
                if a.info.load.iter().all(|l| *l == 0) {
                    a.info.idle_since_ms = now_ms;
                }
            });
        }
    }

    /// Sets an agent's load on a channel to an absolute value (resync from the database).
    pub fn set_load(&mut self, agent: Uuid, ch: Channel, load: u32) {
        if let Some(&i) = self.agent_index.get(&agent) {
            self.touch_agent(i, |a| a.info.load[ch.index()] = load);
        }
    }

    /// Removes an agent.
    pub fn remove_agent(&mut self, agent: Uuid) {
        if let Some(i) = self.agent_index.remove(&agent) {
            for (c, has) in Self::room_of(&self.agents[i]).iter().enumerate() {
                if *has {
                    self.room[c] -= 1;
                }
            }
            self.agents.swap_remove(i);
            if i < self.agents.len() {
                let moved = self.agents[i].info.id;
                self.agent_index.insert(moved, i);
            }
        }
    }

    /// Adds a waiting interaction (new or re-queued, keeping its original enqueue time).
    pub fn enqueue(&mut self, w: WaitingInteraction) {
        self.remove_waiting(w.id);
        self.seq += 1;
        let key = WaitKey { neg_priority: -(w.priority as i64), enqueued_at_ms: w.enqueued_at_ms, seq: self.seq };
        let (compiled, class) = self.compile_for(&w, 0);
        if let Some(first) = self.queues.get(&w.queue_id).and_then(|q| q.escalation.first()) {
            self.timers.push(Reverse((w.enqueued_at_ms + first.after_secs as i64 * 1000, w.id)));
        }
        self.waiting.insert(key, w.id);
        self.by_id.insert(w.id, Waiting { info: w, key, stage: 0, compiled, class });
    }

    /// Remembers that `agent` declined `interaction` (or let its offer ring out): it is not
    /// offered to them again before `until_ms`, so a decline never sends the same
    /// interaction straight back to the agent who just refused it.
    pub fn note_refusal(&mut self, interaction: Uuid, agent: Uuid, until_ms: i64) {
        let list = self.refusals.entry(interaction).or_default();
        match list.iter_mut().find(|(a, _)| *a == agent) {
            Some(r) => r.1 = r.1.max(until_ms),
            None => list.push((agent, until_ms)),
        }
    }

    /// Whether `agent` refused `interaction` recently (see [`Engine::note_refusal`]).
    pub fn refused(&self, interaction: Uuid, agent: Uuid, now_ms: i64) -> bool {
        self.refusals.get(&interaction).is_some_and(|l| l.iter().any(|(a, until)| *a == agent && *until > now_ms))
    }

    fn has_refusals(&self, interaction: Uuid, now_ms: i64) -> bool {
        self.refusals.get(&interaction).is_some_and(|l| l.iter().any(|(_, until)| *until > now_ms))
    }

    fn prune_refusals(&mut self, now_ms: i64) {
        if self.refusals.is_empty() || now_ms < self.next_refusal_prune_ms {
            return;
        }
        self.next_refusal_prune_ms = now_ms + 1_000;
        self.refusals.retain(|_, l| {
            l.retain(|(_, until)| *until > now_ms);
            !l.is_empty()
        });
    }

    /// Removes a waiting interaction (abandoned, closed, or taken by a commit).
    pub fn remove_waiting(&mut self, id: Uuid) -> Option<WaitingInteraction> {
        let w = self.by_id.remove(&id)?;
        self.waiting.remove(&w.key);
        Some(w.info)
    }

    fn levels_for(&mut self, skills: &SkillSet) -> Vec<u8> {
        let mut levels = Vec::new();
        for (name, level) in skills {
            let i = self.skills.id(name) as usize;
            if levels.len() <= i {
                levels.resize(i + 1, 0);
            }
            levels[i] = *level;
        }
        levels
    }

    fn compile(&mut self, e: &SkillExpr) -> Compiled {
        match e {
            SkillExpr::Any => Compiled::Any,
            SkillExpr::Term { skill, cmp, level } => Compiled::Term(self.skills.id(skill), *cmp, *level),
            SkillExpr::And(a, b) => Compiled::And(Box::new(self.compile(a)), Box::new(self.compile(b))),
            SkillExpr::Or(a, b) => Compiled::Or(Box::new(self.compile(a)), Box::new(self.compile(b))),
            SkillExpr::Not(a) => Compiled::Not(Box::new(self.compile(a))),
        }
    }

    /// The requirement an interaction has at an escalation stage (number of steps applied).
    fn compile_for(&mut self, w: &WaitingInteraction, stage: usize) -> (Compiled, u64) {
        let Some(q) = self.queues.get(&w.queue_id) else {
            let c = self.compile(&w.requirement);
            return (c, hash_of(&(w.channel, &w.requirement)));
        };
        let mut expr = q.requirement.clone().and(w.requirement.clone());
        let mut extra_queues = Vec::new();
        let mut groups = Vec::new();
        for step in q.escalation.iter().take(stage) {
            match &step.action {
                EscalationAction::RelaxSkill { skill } => expr = expr.relax(skill),
                EscalationAction::AddQueue { queue } => extra_queues.push(queue.clone()),
                EscalationAction::OverflowGroup { group } => groups.push(group.clone()),
            }
        }
        for name in &extra_queues {
            if let Some(other) = self.queue_by_name.get(name).and_then(|id| self.queues.get(id)) {
                expr = expr.or(other.requirement.clone());
            }
        }
        let class = hash_of(&(w.channel, &expr, &groups));
        let mut c = self.compile(&expr);
        for g in groups {
            c = Compiled::Or(Box::new(c), Box::new(Compiled::InGroup(self.groups.id(&g))));
        }
        (c, class)
    }

    /// Advances escalation stages of interactions whose next step fell due (a timer heap,
    /// so a decision costs O(log n) here, not a scan of every waiting interaction).
    fn escalate(&mut self, now_ms: i64) {
        while let Some(Reverse((due, id))) = self.timers.peek().copied() {
            if due > now_ms {
                break;
            }
            self.timers.pop();
            let Some(w) = self.by_id.get(&id) else { continue };
            let Some(q) = self.queues.get(&w.info.queue_id) else { continue };
            let waited = now_ms - w.info.enqueued_at_ms;
            let stage = q.escalation.iter().filter(|s| (s.after_secs as i64) * 1000 <= waited).count();
            if let Some(next) = q.escalation.get(stage) {
                self.timers.push(Reverse((w.info.enqueued_at_ms + next.after_secs as i64 * 1000, id)));
            }
            if stage == w.stage {
                continue;
            }
            let info = w.info.clone();
            let (compiled, class) = self.compile_for(&info, stage);
            if let Some(w) = self.by_id.get_mut(&id) {
                w.stage = stage;
                w.compiled = compiled;
                w.class = class;
            }
        }
    }

    /// Decides up to `max` assignments, applying each tentatively (the interaction leaves
    /// the waiting set, the agent's load grows). Commit them, then call [`Engine::rollback`]
    /// for any the database refused.
    pub fn decide(&mut self, now_ms: i64, max: usize) -> Vec<Decision> {
        self.escalate(now_ms);
        self.prune_refusals(now_ms);
        let mut out = Vec::new();
        let mut hopeless: HashSet<u64> = HashSet::new();
        let mut free_channels = [self.room[0] > 0, self.room[1] > 0, self.room[2] > 0, self.room[3] > 0];
        // Walk the waiting set in order with a cursor (no copy of the whole set).
        let mut cursor: Option<WaitKey> = None;
        loop {
            if out.len() >= max || !free_channels.iter().any(|f| *f) {
                break;
            }
            let next = match cursor {
                None => self.waiting.iter().next(),
                Some(k) => self.waiting.range((Bound::Excluded(k), Bound::Unbounded)).next(),
            };
            let Some((key, id)) = next.map(|(k, v)| (*k, *v)) else { break };
            cursor = Some(key);
            let Some(w) = self.by_id.get(&id) else { continue };
            let ch = w.info.channel;
            // Nobody eligible for one interaction says nothing about another of the same
            // class when agents refused this one.
            let class = (!self.has_refusals(id, now_ms)).then_some(w.class);
            if !free_channels[ch.index()] {
                continue;
            }
            let sticky = self.sticky_agent(w, now_ms);
            if sticky.is_none() && class.is_some_and(|c| hopeless.contains(&c)) {
                continue;
            }
            let decision = match sticky {
                Some(Some(agent_ix)) => Some(Decision::Offer { interaction: id, agent: self.agents[agent_ix].info.id, channel: ch }),
                Some(None) => None, // waiting for the own manager
                None => self.pick(w, now_ms),
            };
            match decision {
                Some(d) => {
                    self.apply(&d);
                    self.waiting.remove(&key);
                    self.by_id.remove(&id);
                    out.push(d);
                    free_channels[ch.index()] = self.room[ch.index()] > 0;
                }
                None if sticky.is_none() => {
                    if let Some(c) = class {
                        hopeless.insert(c);
                    }
                }
                None => {}
            }
        }
        out
    }

    /// Sticky routing: `None` = not sticky (route normally); `Some(Some(ix))` = offer to the
    /// own manager; `Some(None)` = keep waiting for the own manager (busy but present).
    fn sticky_agent(&self, w: &Waiting, now_ms: i64) -> Option<Option<usize>> {
        let pref = w.info.preferred_agent?;
        let timeout = self.queues.get(&w.info.queue_id).map(|q| q.sticky_timeout_ms).unwrap_or(0);
        if now_ms - w.info.enqueued_at_ms >= timeout {
            return None;
        }
        let &ix = self.agent_index.get(&pref)?;
        let a = &self.agents[ix];
        if !a.info.available || self.refused(w.info.id, pref, now_ms) {
            return None; // away, offline or refused it: fall back at once
        }
        if a.has_room(w.info.channel) {
            Some(Some(ix))
        } else {
            Some(None)
        }
    }

    fn pick(&self, w: &Waiting, now_ms: i64) -> Option<Decision> {
        let ch = w.info.channel;
        let strategy = self.queues.get(&w.info.queue_id).map(|q| q.strategy).unwrap_or(Strategy::LongestIdle);
        let refusals = self.refusals.get(&w.info.id).filter(|_| self.has_refusals(w.info.id, now_ms));
        let refused = |a: &Agent| refusals.is_some_and(|l| l.iter().any(|(id, until)| *id == a.info.id && *until > now_ms));
        let eligible = |a: &Agent| a.has_room(ch) && w.compiled.eval(&a.levels, &a.groups) && !refused(a);
        if strategy == Strategy::RingAll {
            let agents: Vec<Uuid> = self.agents.iter().filter(|a| eligible(a)).map(|a| a.info.id).collect();
            if agents.is_empty() {
                return None;
            }
            return Some(Decision::RingAll { interaction: w.info.id, agents, channel: ch });
        }
        let mut best: Option<usize> = None;
        for (i, a) in self.agents.iter().enumerate() {
            if !eligible(a) {
                continue;
            }
            best = Some(match best {
                None => i,
                Some(b) => {
                    let cur = &self.agents[b];
                    let better = match strategy {
                        Strategy::LongestIdle | Strategy::RingAll => {
                            (a.info.idle_since_ms, a.last_offer_seq) < (cur.info.idle_since_ms, cur.last_offer_seq)
                        }
                        Strategy::LeastOccupied => {
                            let (x, y) = (a.occupancy(ch), cur.occupancy(ch));
                            x < y || (x == y && a.info.idle_since_ms < cur.info.idle_since_ms)
                        }
                        Strategy::RoundRobin => a.last_offer_seq < cur.last_offer_seq,
                        Strategy::BestSkill => {
                            let (x, y) = (w.compiled.score(&a.levels), w.compiled.score(&cur.levels));
                            x > y || (x == y && a.info.idle_since_ms < cur.info.idle_since_ms)
                        }
                    };
                    if better {
                        i
                    } else {
                        b
                    }
                }
            });
        }
        best.map(|i| Decision::Offer { interaction: w.info.id, agent: self.agents[i].info.id, channel: ch })
    }

    fn apply(&mut self, d: &Decision) {
        let (agents, ch): (Vec<Uuid>, Channel) = match d {
            Decision::Offer { agent, channel, .. } => (vec![*agent], *channel),
            Decision::RingAll { agents, channel, .. } => (agents.clone(), *channel),
        };
        for id in agents {
            if let Some(&i) = self.agent_index.get(&id) {
                self.offer_seq += 1;
                let seq = self.offer_seq;
                self.touch_agent(i, |a| {
                    a.info.load[ch.index()] += 1;
                    a.last_offer_seq = seq;
                });
            }
        }
    }

    /// Undoes a tentative decision the database refused: the interaction goes back with
    /// its original key, the agents' load is restored.
    pub fn rollback(&mut self, d: &Decision, w: WaitingInteraction) {
        let (agents, ch): (Vec<Uuid>, Channel) = match d {
            Decision::Offer { agent, channel, .. } => (vec![*agent], *channel),
            Decision::RingAll { agents, channel, .. } => (agents.clone(), *channel),
        };
        for id in agents {
            if let Some(&i) = self.agent_index.get(&id) {
                self.touch_agent(i, |a| a.info.load[ch.index()] = a.info.load[ch.index()].saturating_sub(1));
            }
        }
        self.enqueue(w);
    }
}

fn hash_of<T: std::hash::Hash>(v: &T) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(skills: &[(&str, u8)], idle: i64) -> AgentRouting {
        AgentRouting {
            id: Uuid::new_v4(),
            skills: skills.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            groups: vec![],
            capacity: Capacity { voice: 1, sms: 2, email: 2, chat: 2 },
            available: true,
            voice_reachable: true,
            load: [0; 4],
            idle_since_ms: idle,
        }
    }

    fn queue(strategy: Strategy, req: &str) -> QueueRouting {
        QueueRouting {
            id: Uuid::new_v4(),
            name: format!("q-{}", Uuid::new_v4()),
            strategy,
            requirement: SkillExpr::parse(req).unwrap(),
            escalation: vec![],
            sticky_timeout_ms: 30_000,
        }
    }

    fn waiting(q: Uuid, ch: Channel, prio: i32, at: i64, req: &str) -> WaitingInteraction {
        WaitingInteraction {
            id: Uuid::new_v4(),
            queue_id: q,
            channel: ch,
            priority: prio,
            enqueued_at_ms: at,
            requirement: SkillExpr::parse(req).unwrap(),
            preferred_agent: None,
        }
    }

    #[test]
    fn longest_idle_and_fifo_order() {
        let mut e = Engine::new();
        let q = queue(Strategy::LongestIdle, "billing");
        let qid = q.id;
        e.upsert_queue(q);
        let a1 = agent(&[("billing", 3)], 200);
        let a2 = agent(&[("billing", 3)], 100);
        let (id1, id2) = (a1.id, a2.id);
        e.upsert_agent(a1);
        e.upsert_agent(a2);
        let late = waiting(qid, Channel::Voice, 0, 2_000, "");
        let early = waiting(qid, Channel::Voice, 0, 1_000, "");
        let (late_id, early_id) = (late.id, early.id);
        e.enqueue(late);
        e.enqueue(early);
        let d = e.decide(10_000, 10);
        assert_eq!(
            d,
            vec![
                Decision::Offer { interaction: early_id, agent: id2, channel: Channel::Voice },
                Decision::Offer { interaction: late_id, agent: id1, channel: Channel::Voice },
            ]
        );
    }

    #[test]
    fn priority_beats_age_and_capacity_holds() {
        let mut e = Engine::new();
        let q = queue(Strategy::LongestIdle, "");
        let qid = q.id;
        e.upsert_queue(q);
        let a = agent(&[], 0);
        let aid = a.id;
        e.upsert_agent(a);
        let old = waiting(qid, Channel::Chat, 0, 1, "");
        let vip = waiting(qid, Channel::Chat, 5, 100, "");
        let third = waiting(qid, Channel::Chat, 0, 2, "");
        let vip_id = vip.id;
        e.enqueue(old);
        e.enqueue(vip);
        e.enqueue(third);
        let d = e.decide(1000, 10);
        assert_eq!(d.len(), 2, "chat capacity 2");
        assert_eq!(d[0].interaction(), vip_id);
        assert_eq!(e.agent_load(aid, Channel::Chat), Some(2));
        assert!(e.decide(1000, 10).is_empty());
        e.release(aid, Channel::Chat, 2000);
        assert_eq!(e.decide(2000, 10).len(), 1);
    }

    #[test]
    fn skill_mismatch_never_offered_and_escalation_relaxes() {
        let mut e = Engine::new();
        let mut q = queue(Strategy::LongestIdle, "language:es >= 3");
        q.escalation = vec![EscalationStep { after_secs: 30, action: EscalationAction::RelaxSkill { skill: "language:es".into() } }];
        let qid = q.id;
        e.upsert_queue(q);
        e.upsert_agent(agent(&[("language:en", 5)], 0));
        e.enqueue(waiting(qid, Channel::Email, 0, 0, ""));
        assert!(e.decide(29_000, 10).is_empty());
        assert_eq!(e.decide(30_000, 10).len(), 1);
    }

    #[test]
    fn overflow_group_and_add_queue() {
        let mut e = Engine::new();
        let mut q = queue(Strategy::LongestIdle, "rare");
        let other = queue(Strategy::LongestIdle, "common");
        q.escalation = vec![
            EscalationStep { after_secs: 10, action: EscalationAction::AddQueue { queue: other.name.clone() } },
            EscalationStep { after_secs: 20, action: EscalationAction::OverflowGroup { group: "spare".into() } },
        ];
        let qid = q.id;
        e.upsert_queue(other);
        e.upsert_queue(q);
        let mut spare = agent(&[], 0);
        spare.groups = vec!["spare".into()];
        let spare_id = spare.id;
        e.upsert_agent(spare);
        let common = agent(&[("common", 1)], 0);
        let common_id = common.id;
        e.upsert_agent(common);
        e.enqueue(waiting(qid, Channel::Voice, 0, 0, ""));
        e.enqueue(waiting(qid, Channel::Voice, 0, 1, ""));
        assert!(e.decide(5_000, 10).is_empty());
        let d = e.decide(10_001, 10);
        assert!(matches!(d.as_slice(), [Decision::Offer { agent, .. }] if *agent == common_id));
        let d = e.decide(20_001, 10);
        assert!(matches!(d.as_slice(), [Decision::Offer { agent, .. }] if *agent == spare_id));
    }

    #[test]
    fn sticky_manager_first_then_fallback() {
        let mut e = Engine::new();
        let q = queue(Strategy::LongestIdle, "");
        let qid = q.id;
        e.upsert_queue(q);
        let manager = agent(&[], 500);
        let other = agent(&[], 0);
        let (mid, oid) = (manager.id, other.id);
        e.upsert_agent(manager);
        e.upsert_agent(other);
        // manager busy on voice: wait for them until the sticky timeout
        e.set_load(mid, Channel::Voice, 1);
        let mut w = waiting(qid, Channel::Voice, 0, 0, "");
        w.preferred_agent = Some(mid);
        e.enqueue(w.clone());
        assert!(e.decide(1_000, 10).is_empty());
        assert!(matches!(e.decide(30_000, 10).as_slice(), [Decision::Offer { agent, .. }] if *agent == oid));
        // manager free: goes to the manager even though the other agent idled longer
        let mut e2 = Engine::new();
        let q = queue(Strategy::LongestIdle, "");
        let qid = q.id;
        e2.upsert_queue(q);
        let manager = agent(&[], 500);
        let other = agent(&[], 0);
        let mid = manager.id;
        e2.upsert_agent(manager);
        e2.upsert_agent(other);
        w.queue_id = qid;
        w.preferred_agent = Some(mid);
        e2.enqueue(w.clone());
        assert!(matches!(e2.decide(1_000, 10).as_slice(), [Decision::Offer { agent, .. }] if *agent == mid));
        // manager away: fall back at once
        let mut e3 = Engine::new();
        let q = queue(Strategy::LongestIdle, "");
        let qid = q.id;
        e3.upsert_queue(q);
        let mut manager = agent(&[], 500);
        manager.available = false;
        w.preferred_agent = Some(manager.id);
        w.queue_id = qid;
        let other = agent(&[], 0);
        let oid = other.id;
        e3.upsert_agent(manager);
        e3.upsert_agent(other);
        e3.enqueue(w);
        assert!(matches!(e3.decide(1_000, 10).as_slice(), [Decision::Offer { agent, .. }] if *agent == oid));
    }

    #[test]
    fn strategies_pick_expected_agent() {
        for (strategy, expect) in [(Strategy::BestSkill, 1usize), (Strategy::LeastOccupied, 2), (Strategy::LongestIdle, 0)] {
            let mut e = Engine::new();
            let q = queue(strategy, "billing");
            let qid = q.id;
            e.upsert_queue(q);
            let a0 = agent(&[("billing", 1)], 0);
            let a1 = agent(&[("billing", 9)], 10);
            let a2 = agent(&[("billing", 2)], 20);
            let ids = [a0.id, a1.id, a2.id];
            e.upsert_agent(a0);
            e.upsert_agent(a1);
            e.upsert_agent(a2);
            e.set_load(ids[0], Channel::Chat, 1);
            e.set_load(ids[1], Channel::Chat, 1);
            e.enqueue(waiting(qid, Channel::Chat, 0, 0, ""));
            let d = e.decide(100, 1);
            assert_eq!(
                d,
                vec![Decision::Offer { interaction: d[0].interaction(), agent: ids[expect], channel: Channel::Chat }],
                "{strategy}"
            );
        }
    }

    #[test]
    fn round_robin_rotates_and_ring_all_rings_everyone() {
        let mut e = Engine::new();
        let q = queue(Strategy::RoundRobin, "");
        let qid = q.id;
        e.upsert_queue(q);
        let a = agent(&[], 0);
        let b = agent(&[], 0);
        let (ai, bi) = (a.id, b.id);
        e.upsert_agent(a);
        e.upsert_agent(b);
        let mut picked = vec![];
        for t in 0..4 {
            e.enqueue(waiting(qid, Channel::Email, 0, t, ""));
            for d in e.decide(100, 1) {
                if let Decision::Offer { agent, .. } = d {
                    picked.push(agent);
                    e.release(agent, Channel::Email, 100);
                }
            }
        }
        assert_eq!(picked.len(), 4);
        assert_ne!(picked[0], picked[1]);
        assert_eq!(picked[0], picked[2]);
        assert!(picked.contains(&ai) && picked.contains(&bi));

        let mut e = Engine::new();
        let q = queue(Strategy::RingAll, "");
        let qid = q.id;
        e.upsert_queue(q);
        e.upsert_agent(agent(&[], 0));
        e.upsert_agent(agent(&[], 0));
        e.enqueue(waiting(qid, Channel::Voice, 0, 0, ""));
        assert!(matches!(e.decide(100, 1).as_slice(), [Decision::RingAll { agents, .. }] if agents.len() == 2));
    }

    #[test]
    fn rollback_restores_place() {
        let mut e = Engine::new();
        let q = queue(Strategy::LongestIdle, "");
        let qid = q.id;
        e.upsert_queue(q);
        let a = agent(&[], 0);
        let aid = a.id;
        e.upsert_agent(a);
        let first = waiting(qid, Channel::Voice, 0, 1, "");
        let second = waiting(qid, Channel::Voice, 0, 2, "");
        let first_copy = first.clone();
        e.enqueue(first);
        e.enqueue(second);
        let d = e.decide(10, 1);
        e.rollback(&d[0], first_copy.clone());
        assert_eq!(e.agent_load(aid, Channel::Voice), Some(0));
        assert_eq!(e.waiting_order()[0], first_copy.id);
    }

    #[test]
    fn voice_goes_only_to_agents_whose_phone_is_registered() {
        let mut e = Engine::new();
        let q = queue(Strategy::LongestIdle, "");
        let qid = q.id;
        e.upsert_queue(q);
        // A chat agent without a registered phone, available, idle for longest.
        let mut chat_only = agent(&[], 0);
        chat_only.voice_reachable = false;
        let chat_id = chat_only.id;
        e.upsert_agent(chat_only.clone());
        let call = waiting(qid, Channel::Voice, 0, 0, "");
        let call_id = call.id;
        e.enqueue(call);
        assert!(e.decide(1_000, 10).is_empty(), "a phone that cannot ring is not offered the call");
        // Chat still reaches them.
        let chat = waiting(qid, Channel::Chat, 0, 1, "");
        e.enqueue(chat.clone());
        assert_eq!(e.decide(1_000, 10), vec![Decision::Offer { interaction: chat.id, agent: chat_id, channel: Channel::Chat }]);
        // Ring-all skips them too.
        let mut e2 = Engine::new();
        let q = queue(Strategy::RingAll, "");
        let qid2 = q.id;
        e2.upsert_queue(q);
        e2.upsert_agent(chat_only.clone());
        let phone = agent(&[], 5);
        let phone_id = phone.id;
        e2.upsert_agent(phone);
        e2.enqueue(waiting(qid2, Channel::Voice, 0, 0, ""));
        assert!(matches!(e2.decide(1_000, 10).as_slice(), [Decision::RingAll { agents, .. }] if agents == &vec![phone_id]));
        // Once the phone registers, the waiting call goes to them.
        chat_only.voice_reachable = true;
        chat_only.load = [0, 0, 0, 1];
        e.upsert_agent(chat_only);
        assert_eq!(e.decide(2_000, 10), vec![Decision::Offer { interaction: call_id, agent: chat_id, channel: Channel::Voice }]);
    }

    #[test]
    fn a_refused_interaction_is_not_offered_straight_back() {
        let mut e = Engine::new();
        let q = queue(Strategy::LongestIdle, "");
        let qid = q.id;
        e.upsert_queue(q);
        let first = agent(&[], 0);
        let second = agent(&[], 100);
        let (fid, sid) = (first.id, second.id);
        e.upsert_agent(first);
        e.upsert_agent(second);
        let w = waiting(qid, Channel::Chat, 0, 0, "");
        let wid = w.id;
        e.enqueue(w.clone());
        assert_eq!(e.decide(1_000, 1), vec![Decision::Offer { interaction: wid, agent: fid, channel: Channel::Chat }]);
        // The first agent declines: the interaction comes back and goes to the other agent,
        // although the first idled longer and still has room.
        e.release(fid, Channel::Chat, 0);
        e.note_refusal(wid, fid, 61_000);
        e.enqueue(w.clone());
        assert_eq!(e.decide(1_500, 1), vec![Decision::Offer { interaction: wid, agent: sid, channel: Channel::Chat }]);
        // The second declines too: nobody else is eligible, so it waits for the skip time.
        e.release(sid, Channel::Chat, 0);
        e.note_refusal(wid, sid, 62_000);
        e.enqueue(w.clone());
        assert!(e.decide(2_000, 10).is_empty());
        // Another interaction of the same class is not held back by those refusals.
        let other = waiting(qid, Channel::Chat, 0, 5, "");
        e.enqueue(other.clone());
        assert_eq!(e.decide(2_000, 10), vec![Decision::Offer { interaction: other.id, agent: fid, channel: Channel::Chat }]);
        // After the skip time the first agent may get it again.
        assert_eq!(e.decide(61_001, 10), vec![Decision::Offer { interaction: wid, agent: fid, channel: Channel::Chat }]);
    }

    #[test]
    fn a_refusing_own_manager_is_not_waited_for() {
        let mut e = Engine::new();
        let q = queue(Strategy::LongestIdle, "");
        let qid = q.id;
        e.upsert_queue(q);
        let manager = agent(&[], 500);
        let other = agent(&[], 0);
        let (mid, oid) = (manager.id, other.id);
        e.upsert_agent(manager);
        e.upsert_agent(other);
        let mut w = waiting(qid, Channel::Chat, 0, 0, "");
        w.preferred_agent = Some(mid);
        e.note_refusal(w.id, mid, 60_000);
        e.enqueue(w);
        assert!(matches!(e.decide(1_000, 10).as_slice(), [Decision::Offer { agent, .. }] if *agent == oid));
    }
}
