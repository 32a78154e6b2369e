//! The widget wire protocol, version 1 (see `PROTOCOL.md`): JSON text frames with a
//! `type` field. Parsing and validation are pure: every input either becomes a
//! [`ClientFrame`] or a [`ProtocolError`] that the shell sends back as an `error` frame.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest client message id.
pub const MAX_CLIENT_MSG_ID: usize = 64;
/// Most attachments on one message.
pub const MAX_ATTACHMENTS: usize = 5;

/// A frame sent by the widget.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// First frame on a socket: authenticates and resumes after `last_seq`.
    Hello {
        /// Protocol version the widget speaks.
        v: u32,
        /// Visitor token from `POST /chat/v1/sessions`.
        token: String,
        /// Highest message `seq` the widget has shown (0 = send the whole transcript).
        #[serde(default)]
        last_seq: i64,
    },
    /// A visitor message.
    Message {
        /// Widget-chosen id, unique per conversation; a resend with the same id is stored once.
        client_msg_id: String,
        /// Text.
        #[serde(default)]
        body: String,
        /// Ids of attachments uploaded with `POST /chat/v1/attachments`.
        #[serde(default)]
        attachments: Vec<Uuid>,
    },
    /// The visitor started or stopped typing.
    Typing {
        /// Typing now.
        active: bool,
    },
    /// The visitor has seen everything up to `up_to_seq`.
    Read {
        /// Highest seq seen.
        up_to_seq: i64,
    },
    /// Keep-alive; answered with `pong`.
    Ping {
        /// Echoed back.
        #[serde(default)]
        nonce: Option<String>,
    },
    /// The visitor closed the chat.
    Leave {},
}

/// Frame type names the client may send (for the `unknown_type` error).
pub const CLIENT_TYPES: &[&str] = &["hello", "message", "typing", "read", "ping", "leave"];

/// Why the queue is not taking chats right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineReason {
    /// Outside the queue's business hours (or a holiday).
    AfterHours,
    /// No agent is signed in (presence available, away or busy).
    NoAgents,
}

/// Whether live chat is possible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    /// Live chat possible; otherwise the widget shows the offline form.
    pub online: bool,
    /// Why not.
    pub reason: Option<OfflineReason>,
}

/// One transcript entry as the widget sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireMessage {
    /// Position in the conversation (the resume cursor).
    pub seq: i64,
    /// Stored message id.
    pub message_id: Uuid,
    /// `visitor` or `agent`.
    pub from: String,
    /// Text (render with textContent).
    pub body: String,
    /// Attachment descriptors.
    pub attachments: serde_json::Value,
    /// The widget's id for its own messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The agent's display name for agent messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    /// Stored at (RFC 3339).
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Answer to `hello`: the socket is authenticated; missed messages follow.
    Welcome {
        /// Protocol version.
        v: u32,
        /// Conversation id.
        conversation_id: Uuid,
        /// Visitor id.
        visitor_id: Uuid,
        /// Highest seq stored in the conversation.
        last_seq: i64,
        /// Status of the current interaction (`queued`, `active`, ...), if any.
        status: Option<String>,
        /// The agent currently chatting, if any.
        agent_name: Option<String>,
        /// Live chat available.
        availability: Availability,
    },
    /// A visitor message is stored (sent only after the database commit).
    Ack {
        /// The widget's id.
        client_msg_id: String,
        /// Its position in the conversation.
        seq: i64,
        /// Stored message id.
        message_id: Uuid,
        /// True when this id had been stored before (a resend).
        duplicate: bool,
    },
    /// A transcript entry (agent reply, or a visitor message echoed to every tab).
    Message(WireMessage),
    /// Waiting: place in the queue and estimated wait.
    Queue {
        /// 1 = next.
        position: i64,
        /// Estimated seconds until an agent answers; null when unknown.
        estimated_wait_secs: Option<i64>,
    },
    /// An agent accepted the chat.
    AgentJoined {
        /// Display name.
        agent_name: Option<String>,
    },
    /// The agent left (`transferred`, `ended`).
    AgentLeft {
        /// Why.
        reason: String,
    },
    /// The interaction ended (`closed`, `abandoned`); a new message opens a new one.
    Ended {
        /// Final status.
        status: String,
    },
    /// The agent is typing.
    Typing {
        /// Typing now.
        active: bool,
    },
    /// The agent has read the visitor's messages up to `up_to_seq`.
    Read {
        /// Highest seq read.
        up_to_seq: i64,
    },
    /// Answer to `ping`.
    Pong {
        /// Echo.
        nonce: Option<String>,
    },
    /// Something the client sent was refused; the connection stays open unless said.
    Error {
        /// Stable code (see PROTOCOL.md).
        code: String,
        /// Human explanation.
        message: String,
        /// The message concerned, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        /// For `rate_limited`: when to retry.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame {
    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        // Serializing these plain structs cannot fail; keep a valid frame regardless.
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"type":"error","code":"internal","message":"encoding failed"}"#.to_string())
    }
}

/// A refused frame: stable code and explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// Stable code.
    pub code: &'static str,
    /// Explanation.
    pub message: String,
    /// Message concerned.
    pub client_msg_id: Option<String>,
    /// Retry hint.
    pub retry_after_ms: Option<u64>,
}

impl ProtocolError {
    /// An error with a code and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ProtocolError { code, message: message.into(), client_msg_id: None, retry_after_ms: None }
    }
    /// Names the message concerned.
    pub fn for_message(mut self, id: &str) -> Self {
        self.client_msg_id = Some(id.chars().take(MAX_CLIENT_MSG_ID).collect());
        self
    }
    /// The `error` frame.
    pub fn frame(&self) -> ServerFrame {
        ServerFrame::Error {
            code: self.code.to_string(),
            message: self.message.clone(),
            client_msg_id: self.client_msg_id.clone(),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

/// Parses one text frame. `max_frame_bytes` bounds what is even looked at.
pub fn parse_client_frame(text: &str, max_frame_bytes: usize) -> Result<ClientFrame, ProtocolError> {
    if text.len() > max_frame_bytes {
        return Err(ProtocolError::new("frame_too_large", format!("frames are limited to {max_frame_bytes} bytes")));
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::new("malformed_json", format!("not valid JSON: {e}")))?;
    let Some(obj) = value.as_object() else {
        return Err(ProtocolError::new("invalid_frame", "a frame must be a JSON object"));
    };
    let kind = match obj.get("type") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => return Err(ProtocolError::new("invalid_frame", "`type` must be a string")),
        None => return Err(ProtocolError::new("invalid_frame", "missing `type`")),
    };
    if !CLIENT_TYPES.contains(&kind.as_str()) {
        let shown: String = kind.chars().take(40).collect();
        return Err(ProtocolError::new(
            "unknown_type",
            format!("unknown frame type `{shown}` (expected one of: {})", CLIENT_TYPES.join(", ")),
        ));
    }
    let cmid = obj.get("client_msg_id").and_then(|v| v.as_str()).map(str::to_string);
    let frame: ClientFrame = serde_json::from_value(value).map_err(|e| {
        let err = ProtocolError::new("invalid_frame", format!("bad `{kind}` frame: {e}"));
        match &cmid {
            Some(id) => err.for_message(id),
            None => err,
        }
    })?;
    Ok(frame)
}

/// Checks a widget message id: 1..=64 of `A-Z a-z 0-9 _ -`.
pub fn validate_client_msg_id(id: &str) -> Result<(), ProtocolError> {
    if id.is_empty() || id.len() > MAX_CLIENT_MSG_ID || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(ProtocolError::new("invalid_field", "client_msg_id must be 1-64 characters of A-Z a-z 0-9 _ -").for_message(id));
    }
    Ok(())
}

/// Checks a visitor message: id, text size, no NUL, text or attachments present.
pub fn validate_message(client_msg_id: &str, body: &str, attachments: &[Uuid], max_body: usize) -> Result<(), ProtocolError> {
    validate_client_msg_id(client_msg_id)?;
    if body.len() > max_body {
        return Err(
            ProtocolError::new("message_too_large", format!("message text is limited to {max_body} bytes")).for_message(client_msg_id)
        );
    }
    if body.contains('\0') {
        return Err(ProtocolError::new("invalid_field", "message text must not contain NUL characters").for_message(client_msg_id));
    }
    if body.trim().is_empty() && attachments.is_empty() {
        return Err(ProtocolError::new("invalid_field", "a message needs text or an attachment").for_message(client_msg_id));
    }
    if attachments.len() > MAX_ATTACHMENTS {
        return Err(
            ProtocolError::new("invalid_field", format!("at most {MAX_ATTACHMENTS} attachments per message")).for_message(client_msg_id)
        );
    }
    Ok(())
}

/// The dedupe key of a visitor message: `<conversation>:<client_msg_id>`.
pub fn dedupe_key(conversation: Uuid, client_msg_id: &str) -> String {
    format!("{conversation}:{client_msg_id}")
}

/// The widget's id back from a stored dedupe key, when it belongs to the conversation.
pub fn client_msg_id_from_key(conversation: Uuid, key: &str) -> Option<String> {
    key.strip_prefix(&format!("{conversation}:")).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 * 1024;

    #[test]
    fn parses_every_frame_type() {
        let t = "sbv1.x.y";
        assert_eq!(
            parse_client_frame(&format!(r#"{{"type":"hello","v":1,"token":"{t}","last_seq":7}}"#), MAX).unwrap(),
            ClientFrame::Hello { v: 1, token: t.into(), last_seq: 7 }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"message","client_msg_id":"a1","body":"hi"}"#, MAX).unwrap(),
            ClientFrame::Message { client_msg_id: "a1".into(), body: "hi".into(), attachments: vec![] }
        );
        assert_eq!(parse_client_frame(r#"{"type":"typing","active":true}"#, MAX).unwrap(), ClientFrame::Typing { active: true });
        assert_eq!(parse_client_frame(r#"{"type":"read","up_to_seq":3}"#, MAX).unwrap(), ClientFrame::Read { up_to_seq: 3 });
        assert_eq!(parse_client_frame(r#"{"type":"ping"}"#, MAX).unwrap(), ClientFrame::Ping { nonce: None });
        assert_eq!(parse_client_frame(r#"{"type":"leave"}"#, MAX).unwrap(), ClientFrame::Leave {});
    }

    #[test]
    fn malformed_frames_get_distinct_codes() {
        let code = |s: &str| parse_client_frame(s, MAX).unwrap_err().code;
        assert_eq!(code("{not json"), "malformed_json");
        assert_eq!(code("[1,2]"), "invalid_frame");
        assert_eq!(code(r#"{"body":"x"}"#), "invalid_frame");
        assert_eq!(code(r#"{"type":5}"#), "invalid_frame");
        assert_eq!(code(r#"{"type":"explode"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":"typing"}"#), "invalid_frame");
        assert_eq!(code(r#"{"type":"typing","active":true,"extra":1}"#), "invalid_frame");
        assert_eq!(code(r#"{"type":"read","up_to_seq":"x"}"#), "invalid_frame");
        let e = parse_client_frame(r#"{"type":"message","client_msg_id":"m9","body":5}"#, MAX).unwrap_err();
        assert_eq!(e.client_msg_id.as_deref(), Some("m9"));
        let big = format!(r#"{{"type":"message","client_msg_id":"a","body":"{}"}}"#, "x".repeat(MAX));
        assert_eq!(code(&big), "frame_too_large");
    }

    #[test]
    fn message_validation() {
        assert!(validate_message("abc-1_2", "hello", &[], 10).is_ok());
        assert_eq!(validate_message("", "hello", &[], 10).unwrap_err().code, "invalid_field");
        assert_eq!(validate_message("a b", "hello", &[], 10).unwrap_err().code, "invalid_field");
        assert_eq!(validate_message(&"a".repeat(65), "hello", &[], 10).unwrap_err().code, "invalid_field");
        assert_eq!(validate_message("a", "hello world!", &[], 10).unwrap_err().code, "message_too_large");
        assert_eq!(validate_message("a", "  ", &[], 10).unwrap_err().code, "invalid_field");
        assert!(validate_message("a", "", &[Uuid::nil()], 10).is_ok());
        assert_eq!(validate_message("a", "x\0", &[], 10).unwrap_err().code, "invalid_field");
        assert_eq!(validate_message("a", "x", &[Uuid::nil(); 6], 10).unwrap_err().code, "invalid_field");
    }

    #[test]
    fn server_frames_have_a_type_tag() {
        let f = ServerFrame::Queue { position: 2, estimated_wait_secs: None };
        let v: serde_json::Value = serde_json::from_str(&f.to_text()).unwrap();
        assert_eq!(v["type"], "queue");
        assert_eq!(v["position"], 2);
        let e = ProtocolError::new("rate_limited", "slow down").for_message("m1").frame();
        let v: serde_json::Value = serde_json::from_str(&e.to_text()).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str(), v["client_msg_id"].as_str()),
            (Some("error"), Some("rate_limited"), Some("m1"))
        );
        let a = ServerFrame::AgentJoined { agent_name: Some("Alice".into()) };
        assert_eq!(serde_json::from_str::<serde_json::Value>(&a.to_text()).unwrap()["type"], "agent_joined");
    }

    #[test]
    fn dedupe_keys_round_trip() {
        let c = Uuid::new_v4();
        let k = dedupe_key(c, "m-1");
        assert_eq!(client_msg_id_from_key(c, &k).as_deref(), Some("m-1"));
        assert_eq!(client_msg_id_from_key(Uuid::new_v4(), &k), None);
    }
}
