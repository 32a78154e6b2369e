//! Pure IVR flow interpreter: the current node plus an input (call answered, prompt
//! finished, digit, timeout) gives the actions the call engine carries out.
//!
//! Digits barge in on every prompt of the flow: a menu's prompt stops and the digit is
//! the choice; any other prompt (a `play` node's welcome) stops too and the digit is
//! kept, type-ahead, for the next menu, which then takes it without playing its prompt.
//! A caller who knows the menu is not made to listen to it, and a digit is never lost
//! because it came early.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};

use crate::config::{IvrFlowConfig, IvrNode, SkillRequirement, WeeklySlot};

/// Something that happened to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvrInput {
    /// All prompts queued by the last `Play` have been played.
    PromptFinished,
    /// The caller pressed a key (RFC 4733 or SIP INFO).
    Digit(char),
    /// The digit-collection timer expired.
    Timeout,
}

/// What the engine must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IvrAction {
    /// Stop whatever is playing (barge-in).
    StopPlayback,
    /// Play these prompts in order, then report `PromptFinished`.
    Play(Vec<String>),
    /// Start the digit timer; report `Timeout` when it expires without a digit.
    CollectDigit {
        /// How long to wait.
        timeout: Duration,
    },
    /// Hand the call to core's queue.
    Enqueue {
        /// Queue name.
        queue: String,
        /// Skill requirements collected on the way (e.g. language).
        requirements: Vec<SkillRequirement>,
    },
    /// Play the optional prompt and a beep, record up to `max`, then hang up.
    Voicemail {
        /// Prompt before the beep.
        prompt: Option<String>,
        /// Longest recording.
        max: Duration,
    },
    /// Hang up (after any queued prompt finished).
    Hangup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Waiting {
    /// A `play` node's prompt; then go to the node.
    Prompt(String),
    /// A menu prompt is playing (digits barge in).
    MenuPrompt,
    /// Waiting for a menu digit.
    MenuInput,
    /// A hangup prompt is playing.
    HangupPrompt,
    /// The flow is over (enqueued, voicemail, hung up).
    Done,
}

/// Non-waiting nodes followed in one step before assuming a loop.
const MAX_STEPS: usize = 64;

/// Digits kept for the next menu at most (more are dropped, oldest kept).
const TYPE_AHEAD: usize = 16;

/// Steps of the visited path kept at most (a caller looping through menus stops adding).
const PATH_STEPS: usize = 32;

/// One caller's progress through a flow.
#[derive(Debug, Clone)]
pub struct IvrSession {
    flow: Arc<IvrFlowConfig>,
    node: String,
    attempts: u32,
    queue: Option<String>,
    requirements: Vec<SkillRequirement>,
    waiting: Waiting,
    /// Digits pressed before a menu asked for them (type-ahead), oldest first.
    typed_ahead: std::collections::VecDeque<char>,
    /// The nodes visited, in order: a menu as `node:digit` once chosen (`node:failed` when
    /// its attempts ran out), every other node by its name. Reported with the call
    /// (`ivr_choice` event, `ivr.path`), counted per step in the IVR report.
    path: Vec<String>,
}

impl IvrSession {
    /// Starts `flow` for a call answered at `now`.
    pub fn start(flow: Arc<IvrFlowConfig>, now: DateTime<Utc>) -> (Self, Vec<IvrAction>) {
        let mut s = Self {
            node: flow.start.clone(),
            queue: flow.default_queue.clone(),
            flow,
            attempts: 0,
            requirements: Vec::new(),
            waiting: Waiting::Done,
            typed_ahead: std::collections::VecDeque::new(),
            path: Vec::new(),
        };
        let start = s.node.clone();
        let actions = s.enter(&start, now);
        (s, actions)
    }

    /// Whether the flow has finished (the call left the IVR).
    pub fn is_done(&self) -> bool {
        self.waiting == Waiting::Done
    }

    /// Skill requirements collected so far.
    pub fn requirements(&self) -> &[SkillRequirement] {
        &self.requirements
    }

    /// The nodes visited so far (see the field).
    pub fn path(&self) -> &[String] {
        &self.path
    }

    /// The path of a caller who hangs up now: the nodes visited, then the node they hung
    /// up in as `node:hangup` (a menu only enters the path once chosen).
    pub fn path_at_hangup(&self) -> Vec<String> {
        let mut path = self.path.clone();
        if path.len() < PATH_STEPS {
            path.push(format!("{}:hangup", self.node));
        }
        path
    }

    fn visit(&mut self, step: String) {
        if self.path.len() < PATH_STEPS {
            self.path.push(step);
        }
    }

    /// Feeds an input.
    pub fn on_input(&mut self, input: IvrInput, now: DateTime<Utc>) -> Vec<IvrAction> {
        match (self.waiting.clone(), input) {
            (Waiting::Prompt(next), IvrInput::PromptFinished) => self.enter(&next, now),
            (Waiting::Prompt(next), IvrInput::Digit(d)) => {
                // Barge-in on a `play` prompt: stop it, keep the digit for the next menu.
                if self.typed_ahead.len() < TYPE_AHEAD {
                    self.typed_ahead.push_back(d);
                }
                let mut out = vec![IvrAction::StopPlayback];
                out.extend(self.enter(&next, now));
                out
            }
            (Waiting::HangupPrompt, IvrInput::PromptFinished) => {
                self.waiting = Waiting::Done;
                vec![IvrAction::Hangup]
            }
            (Waiting::MenuPrompt, IvrInput::PromptFinished) => {
                self.waiting = Waiting::MenuInput;
                vec![IvrAction::CollectDigit { timeout: self.menu_timeout() }]
            }
            (Waiting::MenuPrompt | Waiting::MenuInput, IvrInput::Digit(d)) => {
                let mut out = Vec::new();
                if self.waiting == Waiting::MenuPrompt {
                    out.push(IvrAction::StopPlayback);
                }
                out.extend(self.menu_digit(d, now));
                out
            }
            (Waiting::MenuInput, IvrInput::Timeout) => self.menu_retry(false, now),
            _ => Vec::new(),
        }
    }

    fn menu_timeout(&self) -> Duration {
        match self.flow.nodes.get(&self.node) {
            Some(IvrNode::Menu { timeout_ms, .. }) => Duration::from_millis(*timeout_ms),
            _ => Duration::from_secs(5),
        }
    }

    fn menu_digit(&mut self, digit: char, now: DateTime<Utc>) -> Vec<IvrAction> {
        let target = match self.flow.nodes.get(&self.node) {
            Some(IvrNode::Menu { choices, .. }) => choices.get(digit.to_string().as_str()).cloned(),
            _ => None,
        };
        match target {
            Some(next) => {
                self.visit(format!("{}:{digit}", self.node));
                self.enter(&next, now)
            }
            None => self.menu_retry(true, now),
        }
    }

    fn menu_retry(&mut self, invalid: bool, now: DateTime<Utc>) -> Vec<IvrAction> {
        let Some(IvrNode::Menu { prompt, max_attempts, invalid_prompt, timeout_prompt, on_failure, .. }) =
            self.flow.nodes.get(&self.node).cloned()
        else {
            return self.hangup();
        };
        self.attempts += 1;
        if self.attempts >= max_attempts {
            tracing::info!(node = %self.node, attempts = self.attempts, invalid, next = %on_failure, "IVR menu got no valid choice.");
            self.visit(format!("{}:failed", self.node));
            return self.enter(&on_failure, now);
        }
        let mut prompts: Vec<String> = if invalid { invalid_prompt } else { timeout_prompt }.into_iter().collect();
        prompts.push(prompt);
        self.waiting = Waiting::MenuPrompt;
        vec![IvrAction::Play(prompts)]
    }

    fn hangup(&mut self) -> Vec<IvrAction> {
        self.waiting = Waiting::Done;
        vec![IvrAction::Hangup]
    }

    /// Follows nodes until one waits for the caller or ends the flow.
    fn enter(&mut self, node: &str, now: DateTime<Utc>) -> Vec<IvrAction> {
        let mut actions = Vec::new();
        let mut current = node.to_string();
        for _ in 0..MAX_STEPS {
            let Some(n) = self.flow.nodes.get(&current).cloned() else {
                tracing::warn!(node = %current, "IVR node missing; hanging up.");
                actions.extend(self.hangup());
                return actions;
            };
            self.node = current.clone();
            self.attempts = 0;
            if !matches!(n, IvrNode::Menu { .. }) {
                self.visit(current.clone());
            }
            match n {
                IvrNode::Play { prompt, next } => {
                    self.waiting = Waiting::Prompt(next);
                    actions.push(IvrAction::Play(vec![prompt]));
                    return actions;
                }
                IvrNode::Menu { prompt, .. } => {
                    if let Some(d) = self.typed_ahead.pop_front() {
                        // Typed ahead: the choice is made, the prompt is not needed.
                        self.waiting = Waiting::MenuInput;
                        actions.extend(self.menu_digit(d, now));
                        return actions;
                    }
                    self.waiting = Waiting::MenuPrompt;
                    actions.push(IvrAction::Play(vec![prompt]));
                    return actions;
                }
                IvrNode::SetRequirement { requirement, next } => {
                    self.requirements.retain(|r| r.skill != requirement.skill);
                    self.requirements.push(requirement);
                    current = next;
                }
                IvrNode::SetQueue { queue, next } => {
                    self.queue = Some(queue);
                    current = next;
                }
                IvrNode::Hours { timezone, schedule, holidays, open, closed } => {
                    current = if is_open(&timezone, &schedule, &holidays, now) { open } else { closed };
                }
                IvrNode::Enqueue { queue } => {
                    self.waiting = Waiting::Done;
                    match queue.or_else(|| self.queue.clone()) {
                        Some(queue) => actions.push(IvrAction::Enqueue { queue, requirements: self.requirements.clone() }),
                        None => {
                            tracing::warn!(node = %current, "IVR enqueue without a queue; hanging up.");
                            actions.push(IvrAction::Hangup);
                        }
                    }
                    return actions;
                }
                IvrNode::Voicemail { prompt, max_seconds } => {
                    self.waiting = Waiting::Done;
                    actions.push(IvrAction::Voicemail { prompt, max: Duration::from_secs(max_seconds) });
                    return actions;
                }
                IvrNode::Hangup { prompt } => {
                    return match prompt {
                        Some(p) => {
                            self.waiting = Waiting::HangupPrompt;
                            actions.push(IvrAction::Play(vec![p]));
                            actions
                        }
                        None => {
                            actions.extend(self.hangup());
                            actions
                        }
                    };
                }
            }
        }
        tracing::warn!(node = %node, "IVR loop without a waiting node; hanging up.");
        actions.extend(self.hangup());
        actions
    }
}

/// Whether the weekly schedule is open at `now` in `timezone`, holidays excluded.
/// An unknown time zone counts as closed (config validation reports it up front).
pub fn is_open(timezone: &str, schedule: &[WeeklySlot], holidays: &[chrono::NaiveDate], now: DateTime<Utc>) -> bool {
    let Ok(tz) = timezone.parse::<chrono_tz::Tz>() else {
        return false;
    };
    let local = now.with_timezone(&tz);
    if holidays.contains(&local.date_naive()) {
        return false;
    }
    let time = local.time();
    schedule.iter().any(|slot| slot.days.iter().any(|d| d.0 == local.weekday()) && slot.open.0 <= time && time < slot.close.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VoiceConfig;
    use chrono::TimeZone;

    const FLOW: &str = r#"
[ivr_flows.main]
start = "hours"
default_queue = "support"
[ivr_flows.main.nodes.hours]
type = "hours"
timezone = "Europe/Berlin"
schedule = [ { days = ["mon", "tue", "wed", "thu", "fri"], open = "08:00", close = "18:00" } ]
holidays = ["2026-12-24"]
open = "welcome"
closed = "vm"
[ivr_flows.main.nodes.welcome]
type = "play"
prompt = "welcome"
next = "menu"
[ivr_flows.main.nodes.menu]
type = "menu"
prompt = "menu-language"
choices = { "1" = "queue", "2" = "es" }
max_attempts = 2
invalid_prompt = "invalid"
on_failure = "bye"
[ivr_flows.main.nodes.es]
type = "set_requirement"
requirement = "language:es >= 1"
next = "sales"
[ivr_flows.main.nodes.sales]
type = "set_queue"
queue = "ventas"
next = "queue"
[ivr_flows.main.nodes.queue]
type = "enqueue"
[ivr_flows.main.nodes.vm]
type = "voicemail"
prompt = "after-hours"
[ivr_flows.main.nodes.bye]
type = "hangup"
prompt = "goodbye"
"#;

    fn flow() -> Arc<IvrFlowConfig> {
        let cfg: VoiceConfig = toml::from_str(FLOW).unwrap();
        cfg.validate().unwrap();
        Arc::new(cfg.ivr_flows["main"].clone())
    }

    fn wednesday_noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 18, 11, 0, 0).unwrap() // 12:00 in Berlin
    }

    #[test]
    fn open_hours_menu_spanish_sets_requirement_and_queue() {
        let now = wednesday_noon();
        let (mut s, a) = IvrSession::start(flow(), now);
        assert_eq!(a, vec![IvrAction::Play(vec!["welcome".into()])]);
        assert_eq!(s.on_input(IvrInput::PromptFinished, now), vec![IvrAction::Play(vec!["menu-language".into()])]);
        let a = s.on_input(IvrInput::Digit('2'), now);
        assert_eq!(a[0], IvrAction::StopPlayback, "barge-in");
        assert_eq!(a[1], IvrAction::Enqueue { queue: "ventas".into(), requirements: vec!["language:es >= 1".parse().unwrap()] });
        assert!(s.is_done());
        assert_eq!(s.path(), ["hours", "welcome", "menu:2", "es", "sales", "queue"]);
    }

    #[test]
    fn a_hang_up_adds_the_node_the_caller_was_in() {
        let now = wednesday_noon();
        let (mut s, _) = IvrSession::start(flow(), now);
        assert_eq!(s.path_at_hangup(), ["hours", "welcome", "welcome:hangup"], "during the welcome prompt");
        s.on_input(IvrInput::PromptFinished, now);
        assert_eq!(s.path_at_hangup(), ["hours", "welcome", "menu:hangup"], "in the menu, before choosing");
        assert_eq!(s.path(), ["hours", "welcome"], "the path itself is unchanged");
    }

    #[test]
    fn the_path_records_a_failed_menu_and_stays_bounded() {
        let now = wednesday_noon();
        let (mut s, _) = IvrSession::start(flow(), now);
        s.on_input(IvrInput::PromptFinished, now);
        s.on_input(IvrInput::Digit('9'), now);
        s.on_input(IvrInput::PromptFinished, now);
        s.on_input(IvrInput::Timeout, now);
        assert_eq!(s.path(), ["hours", "welcome", "menu:failed", "bye"]);
        // A flow that loops through a menu forever keeps at most PATH_STEPS steps.
        let mut f = (*flow()).clone();
        f.nodes.insert("es".into(), IvrNode::Play { prompt: "welcome".into(), next: "menu".into() });
        let (mut s, _) = IvrSession::start(Arc::new(f), now);
        for _ in 0..100 {
            s.on_input(IvrInput::Digit('2'), now);
            s.on_input(IvrInput::PromptFinished, now);
        }
        assert_eq!(s.path().len(), PATH_STEPS);
    }

    /// Point 3 of the hardening issue: a digit pressed while the welcome prompt plays
    /// is not lost: it stops the prompt and makes the menu's choice.
    #[test]
    fn a_digit_during_a_play_prompt_barges_in_and_chooses_in_the_next_menu() {
        let now = wednesday_noon();
        let (mut s, _) = IvrSession::start(flow(), now);
        let a = s.on_input(IvrInput::Digit('2'), now);
        assert_eq!(
            a,
            vec![
                IvrAction::StopPlayback,
                IvrAction::Enqueue { queue: "ventas".into(), requirements: vec!["language:es >= 1".parse().unwrap()] }
            ]
        );
        assert!(s.is_done());
        // An invalid digit typed ahead counts as an invalid choice in the menu.
        let (mut s, _) = IvrSession::start(flow(), now);
        let a = s.on_input(IvrInput::Digit('9'), now);
        assert_eq!(a, vec![IvrAction::StopPlayback, IvrAction::Play(vec!["invalid".into(), "menu-language".into()])]);
        // Digits while the goodbye plays change nothing.
        let (mut s, _) = IvrSession::start(flow(), now);
        s.on_input(IvrInput::PromptFinished, now);
        s.on_input(IvrInput::Digit('7'), now);
        s.on_input(IvrInput::PromptFinished, now);
        s.on_input(IvrInput::Timeout, now);
        assert_eq!(s.on_input(IvrInput::Digit('1'), now), vec![]);
        assert_eq!(s.on_input(IvrInput::PromptFinished, now), vec![IvrAction::Hangup]);
    }

    #[test]
    fn invalid_digit_and_timeouts_lead_to_failure_node() {
        let now = wednesday_noon();
        let (mut s, _) = IvrSession::start(flow(), now);
        s.on_input(IvrInput::PromptFinished, now);
        assert_eq!(s.on_input(IvrInput::PromptFinished, now), vec![IvrAction::CollectDigit { timeout: Duration::from_secs(5) }]);
        assert_eq!(s.on_input(IvrInput::Digit('9'), now), vec![IvrAction::Play(vec!["invalid".into(), "menu-language".into()])]);
        s.on_input(IvrInput::PromptFinished, now);
        assert_eq!(s.on_input(IvrInput::Timeout, now), vec![IvrAction::Play(vec!["goodbye".into()])]);
        assert_eq!(s.on_input(IvrInput::PromptFinished, now), vec![IvrAction::Hangup]);
    }

    #[test]
    fn after_hours_weekend_and_holiday_go_to_voicemail() {
        let vm = IvrAction::Voicemail { prompt: Some("after-hours".into()), max: Duration::from_secs(120) };
        for when in [
            Utc.with_ymd_and_hms(2026, 11, 18, 17, 30, 0).unwrap(), // 18:30 Berlin
            Utc.with_ymd_and_hms(2026, 11, 21, 11, 0, 0).unwrap(),  // Saturday
            Utc.with_ymd_and_hms(2026, 12, 24, 11, 0, 0).unwrap(),  // holiday (Thursday)
        ] {
            let (_, a) = IvrSession::start(flow(), when);
            assert_eq!(a, vec![vm.clone()], "{when}");
        }
        // 07:30 UTC is 08:30 Berlin in winter: open.
        let (_, a) = IvrSession::start(flow(), Utc.with_ymd_and_hms(2026, 11, 18, 7, 30, 0).unwrap());
        assert_eq!(a, vec![IvrAction::Play(vec!["welcome".into()])]);
    }

    #[test]
    fn loops_without_waiting_nodes_hang_up() {
        let mut f = (*flow()).clone();
        f.start = "loop".into();
        f.nodes.insert("loop".into(), IvrNode::SetQueue { queue: "q".into(), next: "loop".into() });
        let (_, a) = IvrSession::start(Arc::new(f), wednesday_noon());
        assert_eq!(a, vec![IvrAction::Hangup]);
    }
}
