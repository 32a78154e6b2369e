//! Queues: entry rules, skill requirement, strategy, SLA, business hours with holidays,
//! max wait and escalation steps.

use crate::domain::{Channel, Strategy};
use crate::error::{CoreError, CoreResult};
use crate::router::engine::{EscalationStep, QueueRouting};
use crate::skills::SkillExpr;
use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc, Weekday};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Which inbound items a queue takes. All given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueEntryRule {
    /// Channels accepted (empty = all).
    #[serde(default)]
    pub channels: Vec<Channel>,
    /// Address the contact was sent to (DID, mailbox, widget id); `*` wildcards allowed.
    #[serde(default)]
    pub to: Option<String>,
    /// Any of these words in the subject or body (case-insensitive).
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Customer language (`es`, `en`, ...).
    #[serde(default)]
    pub language: Option<String>,
}

impl QueueEntryRule {
    /// Whether an item matches.
    pub fn matches(&self, channel: Channel, to: Option<&str>, text: &str, language: Option<&str>) -> bool {
        if !self.channels.is_empty() && !self.channels.contains(&channel) {
            return false;
        }
        if let Some(pattern) = &self.to {
            match to {
                Some(t) if glob_match(&pattern.to_lowercase(), &t.to_lowercase()) => {}
                _ => return false,
            }
        }
        if !self.keywords.is_empty() {
            let lower = text.to_lowercase();
            if !self.keywords.iter().any(|k| lower.contains(&k.to_lowercase())) {
                return false;
            }
        }
        if let Some(l) = &self.language {
            if language.map(|x| !x.eq_ignore_ascii_case(l)).unwrap_or(true) {
                return false;
            }
        }
        true
    }
}

fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let mut rest = s;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(p) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else if let Some(pos) = rest.find(p) {
            rest = &rest[pos + p.len()..];
        } else {
            return false;
        }
    }
    true
}

/// Opening hours in a time zone, with holidays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    /// IANA time zone, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// Day (`mon`..`sun`) → list of `["09:00", "17:00"]` ranges.
    pub weekly: BTreeMap<String, Vec<[String; 2]>>,
    /// Closed dates (`YYYY-MM-DD`) in the queue's time zone.
    #[serde(default)]
    pub holidays: Vec<NaiveDate>,
}

impl BusinessHours {
    /// Checks the definition.
    pub fn validate(&self) -> Result<(), String> {
        self.timezone.parse::<chrono_tz::Tz>().map_err(|_| format!("unknown time zone `{}`", self.timezone))?;
        for (day, ranges) in &self.weekly {
            parse_day(day).ok_or_else(|| format!("unknown day `{day}` (use mon..sun)"))?;
            for [a, b] in ranges {
                let (x, y) = (parse_time(a)?, parse_time(b)?);
                if x >= y {
                    return Err(format!("{day}: range {a}-{b} ends before it starts"));
                }
            }
        }
        Ok(())
    }

    /// Whether the queue is open at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        let Ok(tz) = self.timezone.parse::<chrono_tz::Tz>() else { return true };
        let local = now.with_timezone(&tz);
        if self.holidays.contains(&local.date_naive()) {
            return false;
        }
        let t = local.time();
        self.weekly
            .iter()
            .filter(|(d, _)| parse_day(d) == Some(local.weekday()))
            .any(|(_, ranges)| ranges.iter().any(|[a, b]| matches!((parse_time(a), parse_time(b)), (Ok(x), Ok(y)) if t >= x && t < y)))
    }
}

fn parse_day(d: &str) -> Option<Weekday> {
    Some(match d.to_ascii_lowercase().as_str() {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    })
}

fn parse_time(s: &str) -> Result<NaiveTime, String> {
    if s == "24:00" {
        return Ok(NaiveTime::from_hms_nano_opt(23, 59, 59, 999_999_999).unwrap_or(NaiveTime::MIN));
    }
    NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("bad time `{s}` (use HH:MM)"))
}

/// A queue as stored.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Queue {
    /// Id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Entry rules (JSON list of [`QueueEntryRule`]).
    pub entry_rules: sqlx::types::Json<Vec<QueueEntryRule>>,
    /// Skill requirement expression.
    pub requirement: String,
    /// Default priority of its interactions.
    pub priority: i32,
    /// Strategy.
    pub strategy: String,
    /// SLA: percentage answered within `sla_target_secs`.
    pub sla_target_pct: i32,
    /// SLA threshold seconds.
    pub sla_target_secs: i32,
    /// Opening hours; none = always open.
    pub business_hours: Option<sqlx::types::Json<BusinessHours>>,
    /// Longest wait before the `max_wait_exceeded` event (voicemail/callback for voice).
    pub max_wait_secs: Option<i32>,
    /// Escalation steps.
    pub escalation: sqlx::types::Json<Vec<EscalationStep>>,
    /// Seconds an agent has to accept an offer.
    pub accept_timeout_secs: i32,
    /// Wrap-up seconds after an interaction ends.
    pub wrap_up_secs: i32,
    /// Seconds the customer's own manager is waited for.
    pub sticky_timeout_secs: i32,
    /// Entry rule evaluation order (lower first).
    pub rule_order: i32,
    /// When the queue was archived (deleted through the API); archived queues take no
    /// new interactions but their history keeps pointing at them.
    #[serde(default)]
    pub archived_at: Option<DateTime<Utc>>,
}

/// Columns selected for [`Queue`].
pub const QUEUE_COLUMNS: &str = "id, name, entry_rules, requirement, priority, strategy, sla_target_pct, sla_target_secs, business_hours, max_wait_secs, escalation, accept_timeout_secs, wrap_up_secs, sticky_timeout_secs, rule_order, archived_at";

impl Queue {
    /// The router's view of the queue.
    pub fn routing(&self) -> QueueRouting {
        QueueRouting {
            id: self.id,
            name: self.name.clone(),
            strategy: self.strategy.parse().unwrap_or(Strategy::LongestIdle),
            requirement: SkillExpr::parse(&self.requirement).unwrap_or(SkillExpr::Any),
            escalation: self.escalation.0.clone(),
            sticky_timeout_ms: self.sticky_timeout_secs as i64 * 1000,
        }
    }

    /// Whether the queue is open now.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.business_hours.as_ref().map(|b| b.0.is_open(now)).unwrap_or(true)
    }
}

/// All live (not archived) queues in rule order: what ingest and the router use.
pub async fn list(db: impl PgExecutor<'_>) -> CoreResult<Vec<Queue>> {
    Ok(sqlx::query_as::<_, Queue>(&format!("select {QUEUE_COLUMNS} from queues where archived_at is null order by rule_order, name"))
        .fetch_all(db)
        .await?)
}

/// Every queue, archived ones included (after the live ones).
pub async fn list_with_archived(db: impl PgExecutor<'_>) -> CoreResult<Vec<Queue>> {
    Ok(sqlx::query_as::<_, Queue>(&format!("select {QUEUE_COLUMNS} from queues order by archived_at is not null, rule_order, name"))
        .fetch_all(db)
        .await?)
}

/// One queue, archived or not.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> CoreResult<Queue> {
    sqlx::query_as::<_, Queue>(&format!("select {QUEUE_COLUMNS} from queues where id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or(CoreError::NotFound("queue"))
}

/// Picks the queue for an item: a forced name, else the first matching rule, else the
/// queue named `default`, else the first queue.
pub fn select<'a>(
    queues: &'a [Queue],
    forced: Option<&str>,
    channel: Channel,
    to: Option<&str>,
    text: &str,
    language: Option<&str>,
) -> Option<&'a Queue> {
    if let Some(name) = forced {
        if let Some(q) = queues.iter().find(|q| q.name == name) {
            return Some(q);
        }
    }
    queues
        .iter()
        .find(|q| q.entry_rules.0.iter().any(|r| r.matches(channel, to, text, language)))
        .or_else(|| queues.iter().find(|q| q.name == "default"))
        .or_else(|| queues.first())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn rules_match() {
        let r = QueueEntryRule {
            channels: vec![Channel::Email],
            to: Some("billing@*".into()),
            keywords: vec!["invoice".into()],
            language: None,
        };
        assert!(r.matches(Channel::Email, Some("Billing@example.com"), "My INVOICE is wrong", None));
        assert!(!r.matches(Channel::Chat, Some("billing@example.com"), "invoice", None));
        assert!(!r.matches(Channel::Email, Some("sales@example.com"), "invoice", None));
        assert!(glob_match("*", "x") && glob_match("+49*", "+4930") && !glob_match("+49*", "+4330"));
    }

    #[test]
    fn business_hours_and_holidays() {
        let bh: BusinessHours = serde_json::from_value(serde_json::json!({
            "timezone": "Europe/Berlin",
            "weekly": {"mon": [["09:00","17:00"]], "sat": [["10:00","12:00"]]},
            "holidays": ["2026-12-28"]
        }))
        .unwrap();
        bh.validate().unwrap();
        // Monday 2026-11-23 09:30 Berlin = 08:30 UTC
        assert!(bh.is_open(Utc.with_ymd_and_hms(2026, 11, 23, 8, 30, 0).unwrap()));
        assert!(!bh.is_open(Utc.with_ymd_and_hms(2026, 11, 23, 16, 30, 0).unwrap()));
        assert!(!bh.is_open(Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap()));
        // Monday 2026-12-28 is a holiday
        assert!(!bh.is_open(Utc.with_ymd_and_hms(2026, 12, 28, 9, 0, 0).unwrap()));
        let bad = BusinessHours { timezone: "Mars/Base".into(), weekly: BTreeMap::new(), holidays: vec![] };
        assert!(bad.validate().is_err());
    }
}
