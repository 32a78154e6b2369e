//! The SMS channel's own API, per channel instance: send a text to a number (through the
//! outbox; the destination is checked here and refused with the field named) and the
//! reply-box counter (encoding, parts, characters left) for a draft.

use crate::encoding;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use switchboard_core::api::{Access, ApiJson, ApiQuery, RouteDoc};
use switchboard_core::auth::Caller;
use switchboard_core::outbox::{self, NewOutbound};
use switchboard_core::{Channel, CoreError, CoreResult, Hub, Role};

/// Roles that may send.
const SENDERS: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent, Role::Marketer];

/// Longest text accepted (10 UCS-2 parts).
pub const MAX_TEXT_CHARS: usize = 670;

/// A text to send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Destination, E.164 (`+4915112345678`).
    pub to: String,
    /// Text.
    pub body: String,
    /// `marketing` (refused for numbers that sent STOP) or `service`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Makes a retried request a no-op.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A draft to count.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentsQuery {
    /// The draft text.
    pub text: String,
}

/// Checks a send request: the destination and the text, each refused with its field named.
pub fn validate(r: &SendRequest) -> CoreResult<String> {
    let to = crate::adapter::e164(&r.to).ok_or_else(|| CoreError::field("to", "must be an E.164 phone number such as +4915112345678"))?;
    if r.body.trim().is_empty() {
        return Err(CoreError::field("body", "must not be empty"));
    }
    if r.body.chars().count() > MAX_TEXT_CHARS {
        return Err(CoreError::field("body", format!("at most {MAX_TEXT_CHARS} characters")));
    }
    match r.kind.as_deref() {
        None | Some("marketing") | Some("service") => {}
        Some(_) => return Err(CoreError::field("kind", "must be `marketing` or `service`")),
    }
    if r.idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(CoreError::field("idempotency_key", "must be 1..=200 characters"));
    }
    Ok(to)
}

/// The documentation of one channel's routes (for `/api/openapi.json`).
pub fn route_docs(name: &str) -> &'static [RouteDoc] {
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let docs = vec![
        RouteDoc {
            method: "POST",
            path: leak(format!("/sms/v1/{name}/messages")),
            access: Access::Roles(SENDERS),
            summary: "Send a text through this SMS channel (queued in the outbox).",
            tag: "sms",
        },
        RouteDoc {
            method: "GET",
            path: leak(format!("/sms/v1/{name}/segments")),
            access: Access::AnyUser,
            summary: "Encoding, parts and characters left for a draft text.",
            tag: "sms",
        },
    ];
    Box::leak(docs.into_boxed_slice())
}

/// `POST /sms/v1/<name>/messages` and `GET /sms/v1/<name>/segments` for one channel.
pub fn router(name: &str) -> axum::Router<Hub> {
    let send_path = format!("/sms/v1/{name}/messages");
    let segments_path = format!("/sms/v1/{name}/segments");
    let channel = name.to_string();
    axum::Router::new()
        .route(
            &send_path,
            post(move |State(hub): State<Hub>, caller: Caller, ApiJson(r): ApiJson<SendRequest>| {
                let channel = channel.clone();
                async move {
                    caller.require(SENDERS)?;
                    let to = validate(&r)?;
                    let key = r.idempotency_key.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                    let mut conn = hub.db().acquire().await?;
                    let id = outbox::enqueue_tx(
                        &mut conn,
                        NewOutbound {
                            idempotency_key: format!("sms-api:{channel}:{key}"),
                            channel: Channel::Sms,
                            interaction_id: None,
                            message_id: None,
                            recipient: to.clone(),
                            subject: None,
                            body: r.body.clone(),
                            metadata: serde_json::json!({
                                "adapter": channel, "kind": r.kind.as_deref().unwrap_or("marketing"), "by": caller.user_id,
                            }),
                        },
                    )
                    .await?;
                    Ok::<_, CoreError>((
                        StatusCode::ACCEPTED,
                        Json(serde_json::json!({ "id": id, "to": to, "segments": encoding::segments(&r.body) })),
                    ))
                }
            }),
        )
        .route(
            &segments_path,
            get(|_caller: Caller, ApiQuery(q): ApiQuery<SegmentsQuery>| async move { Json(encoding::segments(&q.text)) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_destinations_name_the_field() {
        let r = |to: &str, body: &str| SendRequest { to: to.into(), body: body.into(), kind: None, idempotency_key: None };
        for bad in ["12345", "+49 abc", "", "+0123456789"] {
            assert!(matches!(validate(&r(bad, "hi")), Err(CoreError::InvalidField { field, .. }) if field == "to"), "{bad}");
        }
        assert!(matches!(validate(&r("+4915112345678", " ")), Err(CoreError::InvalidField { field, .. }) if field == "body"));
        assert_eq!(validate(&r("+49 151 12345678", "hi")).unwrap(), "+4915112345678");
    }
}
