//! Domain vocabulary shared by every crate: channels, statuses, presence, roles.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The stable text form stored in the database and used on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} `{}` (expected one of: {})",
                        stringify!($name).to_lowercase(), other,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

text_enum!(
    /// A contact channel.
    Channel { Voice => "voice", Sms => "sms", Email => "email", Chat => "chat" }
);
text_enum!(
    /// Lifecycle of an interaction: queued → offered → active → wrap_up → closed.
    InteractionStatus {
        Queued => "queued", Offered => "offered", Active => "active", WrapUp => "wrap_up",
        Closed => "closed", Abandoned => "abandoned", Voicemail => "voicemail", Overflowed => "overflowed"
    }
);
text_enum!(
    /// What an agent has said about their availability.
    Presence { Offline => "offline", Available => "available", Away => "away", Busy => "busy", WrapUp => "wrap_up" }
);
text_enum!(
    /// A user's role; a user may hold several.
    Role { Admin => "admin", Supervisor => "supervisor", Agent => "agent", Marketer => "marketer", KbEditor => "kb_editor" }
);
text_enum!(
    /// How an agent classifies a closed interaction.
    Disposition { Complaint => "complaint", Inquiry => "inquiry", Suggestion => "suggestion", Other => "other" }
);
text_enum!(
    /// How a queue picks among eligible agents.
    Strategy {
        LongestIdle => "longest_idle", LeastOccupied => "least_occupied", RoundRobin => "round_robin",
        BestSkill => "best_skill", RingAll => "ring_all"
    }
);
text_enum!(
    /// Direction of an interaction or message.
    Direction { Inbound => "inbound", Outbound => "outbound", Internal => "internal" }
);

impl InteractionStatus {
    /// Statuses in which an interaction still occupies the queue or an agent.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Queued | Self::Offered | Self::Active | Self::WrapUp)
    }
}

impl Channel {
    /// Index into per-channel arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Per-channel capacity of an agent: how many interactions of each channel at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// Simultaneous calls.
    pub voice: u32,
    /// Simultaneous SMS conversations.
    pub sms: u32,
    /// Simultaneous emails.
    pub email: u32,
    /// Simultaneous chats.
    pub chat: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity { voice: 1, sms: 5, email: 8, chat: 3 }
    }
}

impl Capacity {
    /// The capacity for one channel.
    pub fn get(&self, c: Channel) -> u32 {
        match c {
            Channel::Voice => self.voice,
            Channel::Sms => self.sms,
            Channel::Email => self.email,
            Channel::Chat => self.chat,
        }
    }
}
