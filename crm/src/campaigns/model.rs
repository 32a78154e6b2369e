//! The campaign row and its settings as the API and the engine see them.

use super::audience::Audience;
use super::schedule::QuietHours;
use super::template::Template;
use chrono::{DateTime, NaiveTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// Campaign kinds.
pub const KINDS: &[&str] = &["broadcast", "birthday", "reminder", "follow_up"];

/// Recipient statuses that are final (nothing more will happen to the row).
pub const FINAL: &[&str] = &["delivered", "failed", "unknown", "opted_out", "skipped", "cancelled"];

/// One campaign.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Campaign {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// broadcast, birthday, reminder, follow_up.
    pub kind: String,
    /// draft, running, paused, completed, cancelled.
    pub status: String,
    /// Segment definition.
    #[sqlx(json)]
    pub audience: Audience,
    /// Message template.
    #[sqlx(json)]
    pub template: Template,
    /// SMS channel instance (null: the first one).
    pub channel_name: Option<String>,
    /// Broadcast start (null: when started); recurring kinds: when they became active.
    pub starts_at: Option<DateTime<Utc>>,
    /// Nothing is sent after this.
    pub ends_at: Option<DateTime<Utc>>,
    /// Birthday: local send time.
    pub send_time: NaiveTime,
    /// Reminder: minutes before; follow-up: minutes after the appointment ends.
    pub offset_minutes: i32,
    /// How late a birthday or follow-up may still go out.
    pub grace_minutes: i32,
    /// Reminder booked inside the window: `send` at once or `skip`.
    pub late_policy: String,
    /// Appointment kinds (reminder, follow-up); empty: all.
    pub appointment_kinds: Vec<String>,
    /// Quiet hours start (local); null: none.
    pub quiet_start: Option<NaiveTime>,
    /// Quiet hours end (local).
    pub quiet_end: Option<NaiveTime>,
    /// Messages per second (null: the channel's throttle).
    pub rate_per_second: Option<i32>,
    /// Broadcast planning: idle, planning, planned, failed.
    pub planning_state: String,
    /// Recipients planned so far.
    pub planned_count: i64,
    /// Audience size when planning began.
    pub audience_estimate: Option<i64>,
    /// Why planning failed.
    pub planning_error: Option<String>,
    /// Edit counter.
    pub version: i32,
    /// Creator.
    pub created_by: Option<Uuid>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Columns of [`Campaign`].
pub const COLUMNS: &str = "id, name, kind, status, audience, template, channel_name, starts_at, ends_at, send_time, offset_minutes, \
     grace_minutes, late_policy, appointment_kinds, quiet_start, quiet_end, rate_per_second, planning_state, planned_count, \
     audience_estimate, planning_error, version, created_by, created_at, updated_at";

impl Campaign {
    /// The campaign's quiet hours, if any.
    pub fn quiet_hours(&self) -> Option<QuietHours> {
        match (self.quiet_start, self.quiet_end) {
            (Some(start), Some(end)) if start != end => Some(QuietHours { start, end }),
            _ => None,
        }
    }
}
