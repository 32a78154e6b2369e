//! Agent and supervisor call controls over HTTP: hold, resume, hang up and blind
//! transfer of a live voice call, and supervisor listen-in and barge (the hub calls
//! the supervisor's phone as a third leg). Routes act on the node that holds the call
//! (the adapter's call table); on another node of a cluster the request is forwarded to
//! the owner recorded in `call_owners` (see `switchboard_core::cluster`), and without a
//! live owner the answer is 409. Admins also set agents' SIP
//! passwords here (stored as the digest HA1 for this registrar's realm, never returned).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_core::api::{Access, ApiJson, ApiPath, RouteDoc};
use switchboard_core::auth::Caller;
use switchboard_core::bus::NewEvent;
use switchboard_core::cluster::{self, CallOwner};
use switchboard_core::{CoreError, CoreResult, Hub, Role};
use uuid::Uuid;

use crate::adapter::VoiceState;
use crate::SupervisorTarget;

const STAFF: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent];
const SUPERVISORS: &[Role] = &[Role::Admin, Role::Supervisor];
const ADMINS: &[Role] = &[Role::Admin];

/// The voice routes, for the OpenAPI document.
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "POST",
        path: "/api/v1/voice/calls/{interaction_id}/hold",
        access: Access::Roles(STAFF),
        tag: "voice",
        summary: "Put the live call on hold: the caller hears music on hold, no audio is relayed (holder or supervisor).",
    },
    RouteDoc {
        method: "POST",
        path: "/api/v1/voice/calls/{interaction_id}/resume",
        access: Access::Roles(STAFF),
        tag: "voice",
        summary: "Resume a held call (holder or supervisor).",
    },
    RouteDoc {
        method: "POST",
        path: "/api/v1/voice/calls/{interaction_id}/hangup",
        access: Access::Roles(STAFF),
        tag: "voice",
        summary: "Hang up the call from the hub (both legs get BYE); the interaction goes to wrap-up.",
    },
    RouteDoc {
        method: "POST",
        path: "/api/v1/voice/calls/{interaction_id}/transfer",
        access: Access::Roles(STAFF),
        tag: "voice",
        summary: "Blind transfer {agent_id | queue_id}: the agent leg ends, the caller hears hold music and the target's phone rings.",
    },
    RouteDoc {
        method: "POST",
        path: "/api/v1/voice/calls/{interaction_id}/listen",
        access: Access::Roles(SUPERVISORS),
        tag: "voice",
        summary: "Supervisor listen-in: the hub calls the supervisor's phone (their agent record's sip_user, or {extension} / {uri} in the body) as a third leg that hears caller and agent mixed; nobody hears the supervisor.",
    },
    RouteDoc {
        method: "POST",
        path: "/api/v1/voice/calls/{interaction_id}/barge",
        access: Access::Roles(SUPERVISORS),
        tag: "voice",
        summary: "Supervisor barge: like listen, and caller and agent also hear the supervisor. On a call the supervisor already listens to, switches the mode.",
    },
    RouteDoc {
        method: "PUT",
        path: "/api/v1/agents/{id}/sip-password",
        access: Access::Roles(ADMINS),
        tag: "voice",
        summary: "Set the password of the agent's SIP phone ({password}, 8-128 characters): stored as the digest HA1 for the registrar's realm, never returned; the agent needs a sip_user.",
    },
];

/// The registrar the SIP password route stores credentials for.
#[derive(Debug, Clone)]
pub struct RegistrarInfo {
    /// Digest realm of the registrar (part of the stored HA1).
    pub realm: String,
    /// Whether the registrar reads credentials from the database (`credentials.type =
    /// "external"`); with inline credentials a stored password would have no effect.
    pub from_database: bool,
}

/// The voice router (state: the hub; the voice state rides in an extension).
pub fn router(state: Arc<VoiceState>, registrar: RegistrarInfo) -> Router<Hub> {
    Router::new()
        .route("/api/v1/agents/{id}/sip-password", put(sip_password))
        .layer(Extension(Arc::new(registrar)))
        .route("/api/v1/voice/calls/{interaction_id}/hold", post(hold_or_resume::<true>))
        .route("/api/v1/voice/calls/{interaction_id}/resume", post(hold_or_resume::<false>))
        .route("/api/v1/voice/calls/{interaction_id}/hangup", post(hangup))
        .route("/api/v1/voice/calls/{interaction_id}/transfer", post(transfer))
        .route("/api/v1/voice/calls/{interaction_id}/listen", post(supervise::<false>))
        .route("/api/v1/voice/calls/{interaction_id}/barge", post(supervise::<true>))
        .route_layer(axum::middleware::from_fn({
            let state = state.clone();
            move |req: Request, next: Next| forward_to_owner(state.clone(), req, next)
        }))
        .layer(Extension(state))
}

/// Cluster call ownership: a call control for a call another live node holds is
/// forwarded there and its answer returned as is (the owner authorizes the caller
/// again). A request that was forwarded already is never forwarded twice.
async fn forward_to_owner(state: Arc<VoiceState>, req: Request, next: Next) -> Response {
    let id =
        req.uri().path().strip_prefix("/api/v1/voice/calls/").and_then(|rest| rest.split('/').next()).and_then(|s| Uuid::parse_str(s).ok());
    let (Some(id), Some(hub)) = (id, state.hub()) else { return next.run(req).await };
    if state.call_for(id).is_some() || req.headers().contains_key(cluster::FORWARDED_FROM) {
        return next.run(req).await;
    }
    let timeout = std::time::Duration::from_millis(hub.settings().cluster.node_timeout_ms);
    match cluster::call_owner(hub.db(), id, timeout).await {
        Ok(Some(CallOwner { node_id, internal_url: Some(url), alive: true, .. })) if node_id != hub.node_id() => {
            tracing::debug!(interaction_id = %id, owner = %node_id, "Forwarding a call control to the owning node.");
            cluster::forward(forwarding_client(), &url, hub.node_id(), req, hub.settings().http.max_body_bytes).await
        }
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn forwarding_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

/// Checks the caller may control the call and returns the engine call id.
async fn live_call(hub: &Hub, state: &VoiceState, caller: &Caller, id: Uuid) -> CoreResult<String> {
    caller.require(STAFF)?;
    let i = hub.interaction(id).await?;
    if i.channel != "voice" {
        return Err(CoreError::Conflict("not a voice interaction".into()));
    }
    if !caller.is_supervisor() && (caller.agent_id.is_none() || i.agent_id != caller.agent_id) {
        return Err(CoreError::Forbidden);
    }
    state.call_for(id).ok_or_else(|| CoreError::Conflict("no live call for this interaction on this node".into()))
}

fn engine(state: &VoiceState) -> CoreResult<&crate::VoiceEngineHandle> {
    state.engine().ok_or_else(|| CoreError::Conflict("the voice engine is not running".into()))
}

/// [`live_call`] for a call that is connected to an agent.
async fn bridged_call(hub: &Hub, state: &VoiceState, caller: &Caller, id: Uuid) -> CoreResult<String> {
    let call_id = live_call(hub, state, caller, id).await?;
    if !state.is_bridged(id) {
        return Err(CoreError::Conflict("the call is not connected to an agent".into()));
    }
    Ok(call_id)
}

/// `hold` (`ON`) and `resume`.
async fn hold_or_resume<const ON: bool>(
    State(hub): State<Hub>,
    Extension(state): Extension<Arc<VoiceState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> CoreResult<Json<Value>> {
    let call_id = bridged_call(&hub, &state, &caller, id).await?;
    engine(&state)?.hold(&call_id, ON).map_err(|e| CoreError::Conflict(e.to_string()))?;
    let kind = if ON { "call_hold" } else { "call_resumed" };
    hub.record_event(
        NewEvent::interaction(kind, id).with_agent(caller.agent_id).with_data(json!({ "call_id": call_id, "by": caller.username })),
    )
    .await?;
    Ok(Json(json!({ "call_id": call_id, "held": ON })))
}

async fn hangup(
    State(hub): State<Hub>,
    Extension(state): Extension<Arc<VoiceState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> CoreResult<Json<Value>> {
    let call_id = live_call(&hub, &state, &caller, id).await?;
    engine(&state)?.hangup(&call_id).map_err(|e| CoreError::Conflict(e.to_string()))?;
    hub.record_event(
        NewEvent::interaction("call_hangup_requested", id)
            .with_agent(caller.agent_id)
            .with_data(json!({ "call_id": call_id, "by": caller.username })),
    )
    .await?;
    Ok(Json(json!({ "call_id": call_id, "hung_up": true })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Transfer {
    agent_id: Option<Uuid>,
    queue_id: Option<Uuid>,
}

async fn transfer(
    State(hub): State<Hub>,
    Extension(state): Extension<Arc<VoiceState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<Transfer>,
) -> CoreResult<Json<Value>> {
    let call_id = live_call(&hub, &state, &caller, id).await?;
    let by = caller.acting_agent()?;
    // Core first: it releases the current offer/assignment and offers the target; the
    // adapter then ends the agent leg (queue transfer: on the `transferred` event; agent
    // transfer: before ringing the new offer).
    let i = match (b.agent_id, b.queue_id) {
        (Some(a), None) => hub.transfer_to_agent(id, by, a).await?,
        (None, Some(q)) => {
            let i = hub.transfer_to_queue(id, by, q).await?;
            if state.release(id) {
                hub.record_event(NewEvent::interaction("call_released", id).with_data(json!({ "call_id": call_id, "reason": "transfer" })))
                    .await?;
            }
            i
        }
        _ => return Err(CoreError::Invalid("give exactly one of agent_id or queue_id".into())),
    };
    Ok(Json(json!({ "call_id": call_id, "interaction": i })))
}

/// Where to reach the supervisor's phone (both absent: the supervisor's own agent
/// record's `sip_user`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuperviseBody {
    /// A SIP user registered with the hub's registrar.
    extension: Option<String>,
    /// A SIP URI reached directly over UDP (`sip:user@192.0.2.10:5060`).
    uri: Option<String>,
}

/// `listen` and `barge` (`BARGE`).
#[tracing::instrument(skip(hub, state, caller, body), fields(user = %caller.username))]
async fn supervise<const BARGE: bool>(
    State(hub): State<Hub>,
    Extension(state): Extension<Arc<VoiceState>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    body: axum::body::Bytes,
) -> CoreResult<Json<Value>> {
    caller.require(SUPERVISORS)?;
    let b: SuperviseBody = if body.iter().all(u8::is_ascii_whitespace) {
        SuperviseBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| CoreError::Invalid(format!("invalid JSON body: {e}")))?
    };
    let target = match (b.extension, b.uri) {
        (Some(_), Some(_)) => return Err(CoreError::Invalid("give at most one of extension or uri".into())),
        (Some(ext), None) => {
            let ext = ext.trim().to_string();
            if ext.is_empty() || !ext.chars().all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c)) {
                return Err(CoreError::field("extension", "letters, digits and - _ . + only"));
            }
            SupervisorTarget::Registered(ext)
        }
        (None, Some(uri)) => {
            let uri = uri.trim().to_string();
            if !uri.starts_with("sip:") || uri.len() > 256 {
                return Err(CoreError::field("uri", "a sip: URI is required"));
            }
            SupervisorTarget::Uri(uri)
        }
        (None, None) => {
            let agent = caller
                .agent_id
                .ok_or_else(|| CoreError::Invalid("your user has no agent record with a SIP phone; give extension or uri".into()))?;
            let sip_user: Option<Option<String>> =
                sqlx::query_scalar("select sip_user from agents where id = $1").bind(agent).fetch_optional(hub.db()).await?;
            let user = sip_user
                .flatten()
                .filter(|u| !u.is_empty())
                .ok_or_else(|| CoreError::Invalid("your agent record has no sip_user; give extension or uri".into()))?;
            SupervisorTarget::Registered(user)
        }
    };
    let call_id = bridged_call(&hub, &state, &caller, id).await?;
    let target_text = match &target {
        SupervisorTarget::Registered(u) => u.clone(),
        SupervisorTarget::Uri(u) => u.clone(),
    };
    let outcome = engine(&state)?
        .supervise(&call_id, target, BARGE)
        .await
        .map_err(|e| CoreError::Conflict(e.to_string()))?
        .map_err(CoreError::Conflict)?;
    let kind = if BARGE { "supervisor_barge" } else { "supervisor_listen" };
    hub.record_event(NewEvent::interaction(kind, id).with_agent(caller.agent_id).with_data(
        json!({ "call_id": call_id, "by": caller.username, "by_user_id": caller.user_id, "phone": target_text, "result": outcome }),
    ))
    .await?;
    Ok(Json(json!({ "call_id": call_id, "mode": if BARGE { "barge" } else { "listen" }, "result": outcome })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SipPassword {
    password: String,
}

impl std::fmt::Debug for SipPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SipPassword { .. }")
    }
}

/// `PUT /api/v1/agents/{id}/sip-password` (admins).
#[tracing::instrument(skip(hub, registrar, caller, body), fields(user = %caller.username))]
async fn sip_password(
    State(hub): State<Hub>,
    Extension(registrar): Extension<Arc<RegistrarInfo>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<SipPassword>,
) -> CoreResult<Json<Value>> {
    caller.require(ADMINS)?;
    if !registrar.from_database {
        return Err(CoreError::Conflict(
            "this hub's registrar takes SIP credentials from its configuration (credentials.type = \"inline\"); \
             use credentials = { type = \"external\" } to manage them here"
                .into(),
        ));
    }
    let sip_user = crate::adapter::set_sip_password_as(&hub, Some(caller.user_id), id, &registrar.realm, &body.password).await?;
    tracing::info!(agent_id = %id, %sip_user, "SIP password set.");
    Ok(Json(json!({ "agent_id": id, "sip_user": sip_user, "realm": registrar.realm })))
}
