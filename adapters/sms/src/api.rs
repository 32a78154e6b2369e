//! The SMS channel's own API, per channel instance: send a text to a number (through the
//! outbox; the destination is checked here and refused with the field named) and the
//! reply-box counter (encoding, parts, characters left) for a draft, and the delivery state
//! of a conversation's outbound texts (the inbox shows an `unknown` one to the agent).

use crate::encoding;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use switchboard_core::api::{Access, ApiJson, ApiPath, ApiQuery, RouteDoc};
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

/// The delivery state of one outbound text of a conversation.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub struct Delivery {
    /// The outbox row.
    pub outbox_id: uuid::Uuid,
    /// The conversation message it sends (agent replies), if any.
    pub message_id: Option<uuid::Uuid>,
    /// `submitting`, `unknown` (no submit_sm_resp ever came: it may or may not have reached
    /// the customer and is never resent automatically), `submitted`, `enroute`, `delivered`,
    /// `failed`, …
    pub status: String,
    /// Why it failed or is unknown.
    pub error: Option<String>,
    /// Parts it takes.
    pub parts: i16,
    /// Last change.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The delivery state of every text this channel sent in an interaction, oldest first.
#[tracing::instrument(skip(db))]
pub async fn deliveries(db: &sqlx::PgPool, channel: &str, interaction_id: uuid::Uuid) -> CoreResult<Vec<Delivery>> {
    Ok(sqlx::query_as(
        "select s.outbox_id, o.message_id, s.status, s.error, s.parts, s.updated_at
           from sms_sent s left join outbox o on o.id = s.outbox_id
          where s.interaction_id = $1 and s.channel_name = $2
          order by s.created_at, s.outbox_id",
    )
    .bind(interaction_id)
    .bind(channel)
    .fetch_all(db)
    .await?)
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
        RouteDoc {
            method: "GET",
            path: leak(format!("/sms/v1/{name}/interactions/{{id}}/deliveries")),
            access: Access::AnyUser,
            summary: "Delivery state of the texts sent in a conversation (`unknown`: no SMSC answer, not resent).",
            tag: "sms",
        },
    ];
    Box::leak(docs.into_boxed_slice())
}

/// `POST /sms/v1/<name>/messages` and `GET /sms/v1/<name>/segments` for one channel.
pub fn router(name: &str) -> axum::Router<Hub> {
    let send_path = format!("/sms/v1/{name}/messages");
    let segments_path = format!("/sms/v1/{name}/segments");
    let deliveries_path = format!("/sms/v1/{name}/interactions/{{id}}/deliveries");
    let channel = name.to_string();
    let channel_of_deliveries = name.to_string();
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
        .route(
            &deliveries_path,
            get(move |State(hub): State<Hub>, _caller: Caller, ApiPath(id): ApiPath<uuid::Uuid>| {
                let channel = channel_of_deliveries.clone();
                async move { Ok::<_, CoreError>(Json(deliveries(hub.db(), &channel, id).await?)) }
            }),
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
