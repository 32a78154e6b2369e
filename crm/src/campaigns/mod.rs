//! SMS campaigns: broadcasts, birthdays, appointment reminders and follow-ups, each
//! recipient exactly once.
//!
//! The shape, and why it cannot send twice or skip:
//! - **Plan** ([`planner`]): one `campaign_recipients` row per (campaign, customer,
//!   occurrence) — `once` for a broadcast, the local year for a birthday, the appointment
//!   for a reminder or follow-up — behind a unique constraint. Planning again (another
//!   node, an edited campaign, a restart) only inserts what is missing and may move rows
//!   that are still `planned`; a row that was handed over is never touched by planning.
//! - **Hand over** ([`dispatch`]): a worker on any node claims due rows with `FOR UPDATE
//!   SKIP LOCKED`, re-checks consent, phone, appointment and quiet hours at that moment,
//!   renders the text, and in the same transaction inserts the outbox row (idempotency key
//!   `campaign:<row id>`) and marks the row `sending`. There is no instant at which a
//!   message is in the outbox and its row still looks unsent, or the reverse.
//! - **Send**: core's outbox worker and the SMS channel do the network part with their own
//!   rules: the submit is recorded `submitting` before the SMSC is asked, and a submit
//!   whose answer never came (the node died, the SMSC fell silent) becomes `unknown` and
//!   is never resent automatically. The channel checks the STOP list right before sending.
//! - **Outcome** ([`dispatch::reconcile`]): the row follows its outbox row and the SMS
//!   channel's record of it (`sent`, `delivered`, `failed`, `unknown`, `opted_out`).
//!
//! Time comes from a [`schedule::Clock`], so tests move a birthday morning or a quiet night
//! past in milliseconds.

pub mod api;
pub mod audience;
pub mod dispatch;
pub mod model;
pub mod planner;
pub mod results;
pub mod schedule;
pub mod template;

use schedule::{Clock, SystemClock};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::CoreResult;
use uuid::Uuid;

/// `[crm.campaigns]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignConfig {
    /// Run the campaign planner and sender on this node (any number of nodes may).
    #[serde(default = "default_true")]
    pub worker: bool,
    /// How often the sender looks for due recipients, in milliseconds.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// How often recurring campaigns (birthdays, reminders, follow-ups) are planned, in
    /// seconds.
    #[serde(default = "default_plan_secs")]
    pub plan_every_secs: u64,
    /// Recipients claimed per transaction.
    #[serde(default = "default_batch")]
    pub claim_batch: i64,
    /// Customers planned per transaction of a broadcast (progress is shown per batch).
    #[serde(default = "default_plan_batch")]
    pub plan_batch: i64,
    /// Zone for customers without one (IANA name).
    #[serde(default = "default_zone")]
    pub default_time_zone: String,
    /// Hours after a campaign message in which a reply from that customer counts as a reply
    /// to the campaign.
    #[serde(default = "default_reply_window")]
    pub reply_window_hours: i64,
    /// How far back recurring planning looks for occasions it missed (hub down), in hours;
    /// those beyond the grace period are recorded as skipped with the reason.
    #[serde(default = "default_lookback")]
    pub lookback_hours: i64,
    /// How far ahead recurring campaigns are planned, in hours.
    #[serde(default = "default_lookahead")]
    pub lookahead_hours: i64,
    /// Seconds of a campaign's planning lease (`campaign-plan:<id>`): one node plans a
    /// campaign at a time; a dead planner's campaign is taken over after this long.
    #[serde(default = "default_plan_lease")]
    pub plan_lease_secs: u64,
}

fn default_true() -> bool {
    true
}
fn default_tick_ms() -> u64 {
    500
}
fn default_plan_secs() -> u64 {
    60
}
fn default_batch() -> i64 {
    500
}
fn default_plan_batch() -> i64 {
    20_000
}
fn default_zone() -> String {
    "UTC".into()
}
fn default_reply_window() -> i64 {
    72
}
fn default_lookback() -> i64 {
    72
}
fn default_lookahead() -> i64 {
    36
}
fn default_plan_lease() -> u64 {
    30
}

impl Default for CampaignConfig {
    fn default() -> Self {
        CampaignConfig {
            worker: true,
            tick_ms: default_tick_ms(),
            plan_every_secs: default_plan_secs(),
            claim_batch: default_batch(),
            plan_batch: default_plan_batch(),
            default_time_zone: default_zone(),
            reply_window_hours: default_reply_window(),
            lookback_hours: default_lookback(),
            lookahead_hours: default_lookahead(),
            plan_lease_secs: default_plan_lease(),
        }
    }
}

impl CampaignConfig {
    /// Checks the values.
    pub fn check(&self) -> Result<(), String> {
        if self.default_time_zone.parse::<chrono_tz::Tz>().is_err() {
            return Err(format!("crm.campaigns.default_time_zone: `{}` is not an IANA time zone", self.default_time_zone));
        }
        if !(1..=10_000).contains(&self.claim_batch) || !(100..=1_000_000).contains(&self.plan_batch) {
            return Err("crm.campaigns: claim_batch must be 1..=10000 and plan_batch 100..=1000000".into());
        }
        if self.tick_ms == 0 || self.plan_every_secs == 0 || self.plan_lease_secs == 0 {
            return Err("crm.campaigns: tick_ms, plan_every_secs and plan_lease_secs must be positive".into());
        }
        Ok(())
    }

    /// The default zone.
    pub fn zone(&self) -> chrono_tz::Tz {
        self.default_time_zone.parse().unwrap_or(chrono_tz::UTC)
    }
}

/// Bus signal: an appointment was booked, moved or cancelled on some node.
pub const APPOINTMENTS_CHANGED: &str = "appointments_changed";

/// The campaign engine of one node: plans, hands over and follows outcomes.
#[derive(Clone)]
pub struct Engine {
    /// Database.
    pub db: PgPool,
    /// Settings.
    pub config: Arc<CampaignConfig>,
    /// Where `now` comes from.
    pub clock: Arc<dyn Clock>,
    /// This node (recorded as `handed_by`).
    pub node: Uuid,
    /// Rung when appointments change: the next pass plans reminders and follow-ups at
    /// once instead of waiting for `plan_every_secs`.
    replan: Arc<tokio::sync::Notify>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Rows planned (inserted or moved).
    pub planned: u64,
    /// Rows handed to the outbox.
    pub handed: u64,
    /// Rows deferred by quiet hours.
    pub deferred: u64,
    /// Rows skipped or opted out at claim time.
    pub dropped: u64,
    /// Rows whose outcome changed.
    pub reconciled: u64,
}

impl Engine {
    /// An engine on the system clock.
    pub fn new(db: PgPool, config: Arc<CampaignConfig>, node: Uuid) -> Engine {
        Engine { db, config, clock: Arc::new(SystemClock), node, replan: Arc::new(tokio::sync::Notify::new()) }
    }

    /// The same engine reading time from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Engine {
        self.clock = clock;
        self
    }

    /// An appointment was booked, moved or cancelled: every node's running engine
    /// re-plans reminders and follow-ups on its next tick (an appointment booked inside a
    /// reminder's window gets it at once, not after the next periodic planning pass), this
    /// one directly and the others through an ephemeral bus signal ([`APPOINTMENTS_CHANGED`]);
    /// a lost signal only means waiting for the periodic pass.
    pub async fn appointments_changed(&self, hub: &switchboard_core::Hub) {
        self.replan.notify_one();
        let hint = switchboard_core::bus::NewEvent { kind: APPOINTMENTS_CHANGED, ..Default::default() };
        if let Err(error) = switchboard_core::bus::signal(hub.db(), hint).await {
            tracing::warn!(%error, "Could not signal an appointment change to the other nodes; they plan it on their periodic pass.");
        }
    }

    /// Wakes this engine on every node's [`APPOINTMENTS_CHANGED`] signal (and after missed
    /// events, which may have held one), until shutdown.
    pub async fn follow_appointment_signals(
        self,
        mut events: tokio::sync::broadcast::Receiver<std::sync::Arc<switchboard_core::bus::HubEvent>>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                ev = events.recv() => match ev {
                    Ok(e) if e.kind == APPOINTMENTS_CHANGED => self.replan.notify_one(),
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => self.replan.notify_one(),
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    /// Plans every running campaign.
    pub async fn plan(&self) -> CoreResult<u64> {
        planner::plan_all(self, self.clock.now()).await
    }

    /// Hands due recipients to the outbox until none are due (or `max_rounds` claims).
    pub async fn dispatch(&self, max_rounds: usize) -> CoreResult<Pass> {
        dispatch::dispatch_due(self, self.clock.now(), max_rounds).await
    }

    /// Brings recipient rows up to date with the outbox and the channel.
    pub async fn reconcile(&self) -> CoreResult<u64> {
        dispatch::reconcile(&self.db, self.clock.now()).await
    }

    /// One full pass: plan, hand over, follow outcomes (tests drive this).
    pub async fn tick(&self) -> CoreResult<Pass> {
        let planned = self.plan().await?;
        let mut p = self.dispatch(1000).await?;
        p.planned = planned;
        p.reconciled = self.reconcile().await?;
        dispatch::complete_finished(&self.db).await?;
        Ok(p)
    }

    /// Runs until shutdown: hands over every `tick_ms`, plans every `plan_every_secs`.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let tick = Duration::from_millis(self.config.tick_ms);
        let plan_every = Duration::from_secs(self.config.plan_every_secs);
        let mut last_plan: Option<tokio::time::Instant> = None;
        loop {
            // Broadcasts waiting to be planned are picked up every tick; recurring
            // campaigns are re-planned on their own period.
            let recurring_due = last_plan.is_none_or(|t| t.elapsed() >= plan_every);
            let r = async {
                planner::plan_broadcasts(&self, self.clock.now()).await?;
                if recurring_due {
                    planner::plan_recurring(&self, self.clock.now()).await?;
                }
                dispatch::dispatch_due(&self, self.clock.now(), 50).await?;
                dispatch::reconcile(&self.db, self.clock.now()).await?;
                dispatch::complete_finished(&self.db).await
            }
            .await;
            if recurring_due {
                last_plan = Some(tokio::time::Instant::now());
            }
            if let Err(e) = r {
                tracing::warn!(error = %e, "Campaign pass failed; retrying next tick.");
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(tick) => {}
                // Plan now (a burst of bookings leaves one permit: one extra pass).
                _ = self.replan.notified() => last_plan = None,
            }
        }
    }
}
