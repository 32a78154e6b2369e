//! The boundary between the call engine and the hub: what the engine tells core
//! ([`CallRouting`]) and what core tells the engine ([`crate::VoiceEngineHandle`]).

use std::path::PathBuf;

use async_trait::async_trait;
use serde::Serialize;

use crate::config::SkillRequirement;

/// A caller who finished the IVR and waits for an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallInfo {
    /// Engine call id (also the SIP Call-ID of the caller leg: the dedupe key).
    pub call_id: String,
    /// Trunk the call came in on.
    pub trunk: String,
    /// Caller: user part of From (usually the E.164 number), or the whole URI.
    pub caller: String,
    /// Caller display name, if sent.
    pub caller_name: Option<String>,
    /// Dialled number (Request-URI user part).
    pub dialled: String,
    /// Queue chosen by the IVR (empty for voicemail outside a queue).
    pub queue: String,
    /// Skill requirements collected in the IVR.
    pub requirements: Vec<SkillRequirement>,
    /// The IVR nodes the caller went through ([`crate::ivr::IvrSession::path`]).
    pub ivr_path: Vec<String>,
    /// When the hub answered the call.
    pub answered_at: chrono::DateTime<chrono::Utc>,
}

/// Core's handle on a queued call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CallTicket {
    /// Engine call id.
    pub call_id: String,
    /// Core's reference (interaction id).
    pub interaction_id: String,
}

/// Which leg did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Side {
    /// The customer.
    Caller,
    /// The agent's phone.
    Agent,
    /// The hub itself (shutdown, media timeout, core asked).
    Hub,
}

/// Events about an offer or a bridged call, reported to core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallOutcome {
    /// The agent's phone is ringing.
    Ringing {
        /// Offer being rung.
        offer_id: String,
    },
    /// The agent answered; media is bridged and recorded.
    Answered {
        /// Offer that was accepted.
        offer_id: String,
        /// Agent SIP user.
        agent: String,
    },
    /// Ring-no-answer: the ring timeout expired (the INVITE was cancelled).
    NoAnswer {
        /// Offer.
        offer_id: String,
    },
    /// The phone answered busy or declined (486, 600, 603).
    Busy {
        /// Offer.
        offer_id: String,
    },
    /// The agent has no live registration or the phone failed (4xx/5xx, Timer B).
    Unreachable {
        /// Offer.
        offer_id: String,
        /// Short reason.
        reason: String,
    },
    /// The offer came when the call no longer waited for an agent (answered on another
    /// phone of a ring-all a moment before, gone to voicemail or overflow): nobody rang.
    Withdrawn {
        /// Offer.
        offer_id: String,
        /// Short reason.
        reason: String,
    },
    /// The queue's overflow number answered; the caller is bridged to it and recorded.
    ExternalAnswered {
        /// The number called.
        number: String,
    },
    /// The overflow call failed (busy, no answer, unreachable); the caller keeps waiting.
    ExternalFailed {
        /// The number called.
        number: String,
        /// Short reason.
        reason: String,
    },
    /// A supervisor's phone answered and joined the bridged call.
    SupervisorJoined {
        /// SIP user or URI user of the supervisor's phone.
        user: String,
        /// Barge (heard by both parties) rather than listen-in.
        barge: bool,
    },
    /// The supervisor's phone did not answer or failed.
    SupervisorFailed {
        /// SIP user or URI user of the supervisor's phone.
        user: String,
        /// Short reason.
        reason: String,
    },
    /// The supervisor hung up; the call goes on.
    SupervisorLeft {
        /// SIP user or URI user of the supervisor's phone.
        user: String,
    },
    /// The bridged call ended.
    Ended {
        /// Who hung up.
        by: Side,
        /// Stereo recording (caller left, agent or external party right), if one was made.
        recording: Option<PathBuf>,
    },
}

/// Routing failures reported by core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RoutingError(pub String);

/// Implemented by core: the engine calls it, never the other way round.
///
/// Calls are made from spawned tasks, so a slow database does not stall signalling;
/// an error from `enqueue_call` makes the engine play the `technical-difficulties`
/// prompt and hang up.
#[async_trait]
pub trait CallRouting: Send + Sync + 'static {
    /// A caller left the IVR for a queue: persist the interaction, then return.
    /// Core later calls [`crate::VoiceEngineHandle::ring_agent`] with an offer.
    async fn enqueue_call(&self, call: CallInfo) -> Result<CallTicket, RoutingError>;
    /// The caller hung up while queued or while an agent was being rung.
    async fn abandon(&self, ticket: &CallTicket) -> Result<(), RoutingError>;
    /// Offer progress and end of a bridged call.
    async fn call_event(&self, ticket: &CallTicket, event: CallOutcome) -> Result<(), RoutingError>;
    /// A voicemail was recorded (after hours or from the IVR).
    async fn voicemail(&self, call: CallInfo, recording: PathBuf) -> Result<(), RoutingError>;
    /// The caller hung up in the IVR, before reaching a queue: no interaction exists;
    /// `call.ivr_path` holds the nodes visited (the IVR report counts them).
    async fn hung_up_in_ivr(&self, _call: CallInfo) -> Result<(), RoutingError> {
        Ok(())
    }
}
