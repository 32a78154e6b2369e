//! The thin HTTP/WebSocket shell around the chat protocol: widget endpoints under
//! `/chat/v1`, CORS for embedding sites, the per-socket loop, and the staff endpoint the
//! inbox calls for typing indicators and read receipts.

use crate::adapter::{self, ChatState, VisitorMessage};
use crate::attachments;
use crate::protocol::{self, ClientFrame, ProtocolError, ServerFrame, PROTOCOL_VERSION};
use crate::registry::{CurrentInteraction, Push};
use crate::session::{OutboundCursor, PushDecision, TokenClaims};
use crate::store;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_core::api::{Access, ApiJson, ApiPath, ApiQuery, RouteDoc};
use switchboard_core::auth::Caller;
use switchboard_core::{CoreError, CustomerHints, Hub, Role};
use uuid::Uuid;

/// Header carrying the visitor token on HTTP requests.
pub const TOKEN_HEADER: &str = "x-chat-token";
/// Largest JSON body of the widget endpoints.
const JSON_LIMIT: usize = 96 * 1024;
/// Transcript entries read per database round trip.
const CATCH_UP_BATCH: i64 = 200;

const STAFF: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent];

/// The chat routes, for the OpenAPI document.
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "GET",
        path: "/chat/v1/config",
        access: Access::Public,
        tag: "chat",
        summary: "Widget settings and whether live chat is available now.",
    },
    RouteDoc {
        method: "POST",
        path: "/chat/v1/sessions",
        access: Access::Public,
        tag: "chat",
        summary: "Start or resume a chat (pre-chat name/email); returns the visitor token.",
    },
    RouteDoc {
        method: "GET",
        path: "/chat/v1/ws",
        access: Access::Public,
        tag: "chat",
        summary: "Widget WebSocket (protocol v1, see adapters/chat/PROTOCOL.md); authenticates with a hello frame.",
    },
    RouteDoc {
        method: "POST",
        path: "/chat/v1/messages",
        access: Access::Public,
        tag: "chat",
        summary: "HTTP fallback: send a visitor message (X-Chat-Token); answers with the ack.",
    },
    RouteDoc {
        method: "GET",
        path: "/chat/v1/messages",
        access: Access::Public,
        tag: "chat",
        summary: "HTTP fallback: transcript entries after ?after_seq= (X-Chat-Token).",
    },
    RouteDoc {
        method: "POST",
        path: "/chat/v1/offline",
        access: Access::Public,
        tag: "chat",
        summary: "Offline form: leave a message answered later by email.",
    },
    RouteDoc {
        method: "POST",
        path: "/chat/v1/attachments",
        access: Access::Public,
        tag: "chat",
        summary: "Upload an attachment (raw body, Content-Type, ?filename=, X-Chat-Token).",
    },
    RouteDoc {
        method: "GET",
        path: "/chat/v1/attachments/{id}",
        access: Access::Public,
        tag: "chat",
        summary: "Download an attachment (visitor token of its conversation, or staff session).",
    },
    RouteDoc {
        method: "POST",
        path: "/chat/v1/agent-signal",
        access: Access::Roles(STAFF),
        tag: "chat",
        summary: "Agent typing indicator or read receipt for a chat interaction.",
    },
];

/// The widget router (state: the hub; the chat state rides in an extension).
pub fn router(state: Arc<ChatState>) -> Router<Hub> {
    let attach_limit = state.cfg.attachment_max_bytes + 1;
    let json = Router::new()
        .route("/chat/v1/config", get(widget_config))
        .route("/chat/v1/sessions", post(start_session))
        .route("/chat/v1/messages", post(send_message).get(list_messages))
        .route("/chat/v1/offline", post(offline_form))
        .route("/chat/v1/agent-signal", post(agent_signal))
        .layer(DefaultBodyLimit::max(JSON_LIMIT));
    let files = Router::new()
        .route("/chat/v1/attachments", post(upload_attachment))
        .route("/chat/v1/attachments/{id}", get(download_attachment))
        .layer(DefaultBodyLimit::max(attach_limit));
    Router::new()
        .route("/chat/v1/ws", get(websocket))
        .merge(json)
        .merge(files)
        .layer(axum::middleware::from_fn(cors))
        .layer(Extension(state))
}

/// A widget-facing failure: problem+json with the protocol's stable code.
pub enum ChatHttpError {
    /// A core error (its own code and status).
    Core(CoreError),
    /// A protocol refusal.
    Protocol(ProtocolError),
}

impl From<CoreError> for ChatHttpError {
    fn from(e: CoreError) -> Self {
        ChatHttpError::Core(e)
    }
}
impl From<ProtocolError> for ChatHttpError {
    fn from(e: ProtocolError) -> Self {
        ChatHttpError::Protocol(e)
    }
}

fn protocol_status(code: &str) -> StatusCode {
    match code {
        "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
        "message_too_large" | "frame_too_large" | "attachment_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "unsupported_content_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_token" | "not_authenticated" => StatusCode::UNAUTHORIZED,
        "forbidden_origin" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "internal" => StatusCode::INTERNAL_SERVER_ERROR,
        "invalid_field" | "content_mismatch" => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl IntoResponse for ChatHttpError {
    fn into_response(self) -> Response {
        let e = match self {
            ChatHttpError::Core(e) => return e.into_response(),
            ChatHttpError::Protocol(e) => e,
        };
        let status = protocol_status(e.code);
        let mut body = serde_json::json!({
            "type": format!("https://switchboard.dev/problems/{}", e.code),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": e.message,
            "code": e.code,
        });
        if let Some(id) = &e.client_msg_id {
            body["client_msg_id"] = serde_json::json!(id);
        }
        let mut resp = (status, body.to_string()).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(ms) = e.retry_after_ms {
            if let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

type ChatResult<T> = Result<T, ChatHttpError>;

/// The peer address, when the server was started with connect info.
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())))
    }
}

fn request_origin_allowed(state: &ChatState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else { return true };
    if state.cfg.origin_allowed(origin) {
        return true;
    }
    // The hub's own pages (e.g. /chat-demo.html) are always allowed.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    origin.split_once("://").map(|(_, h)| h) == Some(host)
}

async fn cors(Extension(state): Extension<Arc<ChatState>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = request_origin_allowed(&state, req.headers());
    if !allowed {
        return ChatHttpError::Protocol(ProtocolError::new("forbidden_origin", "this site may not embed the chat widget")).into_response();
    }
    let preflight = req.method() == Method::OPTIONS;
    let mut resp = if preflight { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    if let Some(o) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("retry-after"));
        if preflight {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type, x-chat-token"));
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
    }
    resp
}

fn widget_settings(state: &ChatState) -> serde_json::Value {
    serde_json::json!({
        "title": state.cfg.widget_title,
        "prechat_form": state.cfg.prechat_form,
        "max_message_bytes": state.cfg.max_message_bytes,
        "attachment_max_bytes": state.cfg.attachment_max_bytes,
        "attachment_content_types": state.cfg.attachment_content_types,
        "rate_limit_per_10s": state.cfg.rate_limit_per_10s,
    })
}

async fn widget_config(State(hub): State<Hub>, Extension(state): Extension<Arc<ChatState>>) -> ChatResult<Json<serde_json::Value>> {
    state.bind_hub(&hub);
    let availability = store::availability(hub.db(), state.cfg.queue.as_deref(), &state.name).await?;
    let mut v = widget_settings(&state);
    v["availability"] = serde_json::to_value(availability).unwrap_or_default();
    v["protocol"] = serde_json::json!(PROTOCOL_VERSION);
    Ok(Json(v))
}

/// `POST /chat/v1/sessions` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// A token from an earlier session: resume that conversation.
    #[serde(default)]
    pub token: Option<String>,
    /// Pre-chat form: name.
    #[serde(default)]
    pub name: Option<String>,
    /// Pre-chat form: email.
    #[serde(default)]
    pub email: Option<String>,
    /// Browser language (`en`, `es-ES`).
    #[serde(default)]
    pub language: Option<String>,
}

fn clean_opt(v: Option<String>, field: &'static str, max: usize) -> ChatResult<Option<String>> {
    let Some(s) = v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) else { return Ok(None) };
    if s.len() > max || s.chars().any(|c| c.is_control()) {
        return Err(ProtocolError::new("invalid_field", format!("{field} must be at most {max} bytes without control characters")).into());
    }
    Ok(Some(s))
}

fn check_email(e: &str) -> ChatResult<()> {
    let ok = e.len() <= 254
        && !e.contains(char::is_whitespace)
        && e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'));
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::new("invalid_field", "email is not a valid address").into())
    }
}

async fn start_session(
    State(hub): State<Hub>,
    Extension(state): Extension<Arc<ChatState>>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<SessionRequest>,
) -> ChatResult<Response> {
    state.bind_hub(&hub);
    let name = clean_opt(req.name, "name", 200)?;
    let email = clean_opt(req.email, "email", 254)?;
    if let Some(e) = &email {
        check_email(e)?;
    }
    let language = clean_opt(req.language, "language", 35)?;
    let resumed = match req.token.as_deref().filter(|t| !t.trim().is_empty()) {
        Some(t) => state.verify_token(&hub, t).await.ok(),
        None => None,
    };
    if resumed.is_none() {
        if let Some(ip) = ip {
            state.ip_limits.check(&ip, Instant::now()).map_err(|wait| ProtocolError {
                code: "rate_limited",
                message: "too many chat sessions from this address; retry later".into(),
                client_msg_id: None,
                retry_after_ms: Some(wait.as_millis() as u64 + 1),
            })?;
        }
    }
    let (visitor, conversation) = match resumed {
        Some(c) => (c.visitor_id, c.conversation_id),
        None => (Uuid::new_v4(), Uuid::new_v4()),
    };
    store::upsert_visitor(hub.db(), visitor, name.as_deref(), email.as_deref(), language.as_deref()).await?;
    store::create_conversation(hub.db(), conversation, visitor, &state.name).await?;
    let token = state.issue_token(&hub, visitor, conversation).await?;
    let availability = store::availability(hub.db(), state.cfg.queue.as_deref(), &state.name).await?;
    let body = serde_json::json!({
        "token": token,
        "visitor_id": visitor,
        "conversation_id": conversation,
        "resumed": resumed.is_some(),
        "protocol": PROTOCOL_VERSION,
        "ws_path": "/chat/v1/ws",
        "availability": availability,
        "widget": widget_settings(&state),
    });
    let status = if resumed.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(body)).into_response())
}

async fn visitor_from_headers(hub: &Hub, state: &ChatState, headers: &HeaderMap, query_token: Option<&str>) -> ChatResult<TokenClaims> {
    let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()).or(query_token);
    let Some(token) = token else {
        return Err(ProtocolError::new("not_authenticated", "send the visitor token in the X-Chat-Token header").into());
    };
    Ok(state.verify_token(hub, token).await?)
}

/// `POST /chat/v1/messages` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// Widget message id.
    pub client_msg_id: String,
    /// Text.
    #[serde(default)]
    pub body: String,
    /// Attachment ids.
    #[serde(default)]
    pub attachments: Vec<Uuid>,
}

async fn send_message(
    State(hub): State<Hub>,
    Extension(state): Extension<Arc<ChatState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SendMessage>,
) -> ChatResult<Json<ServerFrame>> {
    state.bind_hub(&hub);
    let claims = visitor_from_headers(&hub, &state, &headers, None).await?;
    let hints = state.hints(&hub, claims.visitor_id).await?;
    let a = state
        .accept_message(
            &hub,
            &claims,
            &hints,
            VisitorMessage { client_msg_id: &req.client_msg_id, body: &req.body, attachments: &req.attachments, extra_metadata: None },
        )
        .await?;
    Ok(Json(ServerFrame::Ack { client_msg_id: req.client_msg_id, seq: a.seq, message_id: a.message_id, duplicate: a.duplicate }))
}

/// `GET /chat/v1/messages` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListMessages {
    /// Entries after this seq.
    #[serde(default)]
    pub after_seq: i64,
    /// At most this many (1..=200, default 100).
    #[serde(default)]
    pub limit: Option<i64>,
}

async fn list_messages(
    State(hub): State<Hub>,
    Extension(state): Extension<Arc<ChatState>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ListMessages>,
) -> ChatResult<Json<serde_json::Value>> {
    let claims = visitor_from_headers(&hub, &state, &headers, None).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=200).contains(&limit) {
        return Err(ProtocolError::new("invalid_field", "limit must be between 1 and 200").into());
    }
    let items = store::transcript_after(hub.db(), claims.conversation_id, q.after_seq.max(0), limit).await?;
    let last_seq = store::last_seq(hub.db(), claims.conversation_id).await?;
    Ok(Json(serde_json::json!({ "items": items, "last_seq": last_seq })))
}

/// `POST /chat/v1/offline` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineRequest {
    /// Widget id of this submission (a resend is stored once).
    pub client_msg_id: String,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Where the answer goes.
    pub email: String,
    /// The visitor's message.
    pub message: String,
}

/// The offline form becomes a chat interaction whose metadata says `offline: true` and
/// `reply_email`: agents see it in the normal queue when they come back, and their reply
/// is stored in the visitor's transcript and sent by email (see `deliver`).
async fn offline_form(
    State(hub): State<Hub>,
    Extension(state): Extension<Arc<ChatState>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ApiJson(req): ApiJson<OfflineRequest>,
) -> ChatResult<Response> {
    state.bind_hub(&hub);
    let name = clean_opt(req.name, "name", 200)?;
    let email = req.email.trim().to_string();
    check_email(&email)?;
    let claims = match headers.get(TOKEN_HEADER) {
        Some(_) => visitor_from_headers(&hub, &state, &headers, None).await?,
        None => {
            if let Some(ip) = ip {
                state.ip_limits.check(&ip, Instant::now()).map_err(|wait| ProtocolError {
                    code: "rate_limited",
                    message: "too many submissions from this address; retry later".into(),
                    client_msg_id: None,
                    retry_after_ms: Some(wait.as_millis() as u64 + 1),
                })?;
            }
            let c = TokenClaims { visitor_id: Uuid::new_v4(), conversation_id: Uuid::new_v4(), issued_at: 0 };
            store::upsert_visitor(hub.db(), c.visitor_id, None, None, None).await?;
            store::create_conversation(hub.db(), c.conversation_id, c.visitor_id, &state.name).await?;
            c
        }
    };
    store::upsert_visitor(hub.db(), claims.visitor_id, name.as_deref(), Some(&email), None).await?;
    let hints = CustomerHints { display_name: name, email: Some(email.clone()), language: None };
    let extra = serde_json::json!({ "offline": true, "reply_email": email });
    let a = state
        .accept_message(
            &hub,
            &claims,
            &hints,
            VisitorMessage { client_msg_id: &req.client_msg_id, body: &req.message, attachments: &[], extra_metadata: Some(&extra) },
        )
        .await?;
    // The message may have joined an interaction that was already open: mark it too.
    hub.update_metadata(a.interaction_id, extra).await?;
    let token = state.issue_token(&hub, claims.visitor_id, claims.conversation_id).await?;
    let body = serde_json::json!({
        "interaction_id": a.interaction_id, "message_id": a.message_id, "seq": a.seq, "duplicate": a.duplicate, "token": token,
    });
    Ok((if a.duplicate { StatusCode::OK } else { StatusCode::CREATED }, Json(body)).into_response())
}

/// `POST /chat/v1/attachments` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Original file name.
    #[serde(default)]
    pub filename: Option<String>,
}

async fn upload_attachment(
    State(hub): State<Hub>,
    Extension(state): Extension<Arc<ChatState>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Body,
) -> ChatResult<Response> {
    let claims = visitor_from_headers(&hub, &state, &headers, None).await?;
    let max = state.cfg.attachment_max_bytes;
    let too_large = || ProtocolError::new("attachment_too_large", format!("attachments are limited to {max} bytes"));
    if headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > max as u64)
    {
        return Err(too_large().into());
    }
    let ct = attachments::bare_content_type(headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or(""));
    if !state.cfg.content_type_allowed(&ct) {
        return Err(ProtocolError::new(
            "unsupported_content_type",
            format!("content type `{ct}` is not accepted (allowed: {})", state.cfg.attachment_content_types.join(", ")),
        )
        .into());
    }
    state.rate_limit(claims.visitor_id)?;
    let bytes = axum::body::to_bytes(body, max).await.map_err(|_| too_large())?;
    if bytes.is_empty() {
        return Err(ProtocolError::new("invalid_field", "the attachment is empty").into());
    }
    attachments::check_content(&ct, &bytes).map_err(|m| ProtocolError::new("content_mismatch", m))?;
    let sha = attachments::sha256_hex(&bytes);
    let size_bytes = bytes.len() as i64;
    attachments::store(&*state.attachments(&hub), &sha, bytes).await?;
    let a = store::Attachment {
        id: Uuid::new_v4(),
        conversation_id: claims.conversation_id,
        sha256: sha,
        size_bytes,
        content_type: ct,
        filename: attachments::sanitize_filename(q.filename.as_deref().unwrap_or("")),
    };
    store::insert_attachment(hub.db(), &a).await?;
    Ok((StatusCode::CREATED, Json(adapter::attachment_json(&a))).into_response())
}

/// `GET /chat/v1/attachments/{id}` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadQuery {
    /// Visitor token (links cannot carry headers).
    #[serde(default)]
    pub token: Option<String>,
}

async fn download_attachment(
    State(hub): State<Hub>,
    Extension(state): Extension<Arc<ChatState>>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<DownloadQuery>,
    req: Request,
) -> ChatResult<Response> {
    let a = store::attachment(hub.db(), id).await?.ok_or(CoreError::NotFound("attachment"))?;
    let (mut parts, _) = req.into_parts();
    let visitor_ok = match visitor_from_headers(&hub, &state, &parts.headers, q.token.as_deref()).await {
        Ok(c) => c.conversation_id == a.conversation_id,
        Err(_) => false,
    };
    if !visitor_ok {
        let caller = Caller::from_request_parts(&mut parts, &hub).await?;
        caller.require(STAFF)?;
    }
    let files = state.attachments(&hub);
    let range = parts.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let Some(mut resp) = switchboard_core::files::serve(files.as_ref(), &a.sha256, range, &a.content_type).await? else {
        tracing::error!(store = ?files, sha256 = %a.sha256, "Attachment file missing.");
        return Err(CoreError::NotFound("attachment file").into());
    };
    let disposition = if a.content_type.starts_with("image/") { "inline" } else { "attachment" };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("{disposition}; filename=\"{}\"", attachments::ascii_filename(&a.filename))) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    Ok(resp)
}

/// `POST /chat/v1/agent-signal` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSignal {
    /// The chat interaction.
    pub interaction_id: Uuid,
    /// `typing` or `read`.
    pub kind: String,
    /// For `typing`: typing now (default true).
    #[serde(default)]
    pub active: Option<bool>,
}

async fn agent_signal(
    State(hub): State<Hub>,
    Extension(_state): Extension<Arc<ChatState>>,
    caller: Caller,
    ApiJson(req): ApiJson<AgentSignal>,
) -> ChatResult<StatusCode> {
    let acting = caller.acting_agent()?;
    let i = hub.interaction(req.interaction_id).await?;
    if i.channel != "chat" {
        return Err(CoreError::field("interaction_id", "not a chat interaction").into());
    }
    if acting.is_some() && i.agent_id != acting {
        return Err(CoreError::NotFound("interaction").into());
    }
    let conv = i.conversation_key.as_deref().and_then(|k| k.parse::<Uuid>().ok()).ok_or(CoreError::NotFound("chat conversation"))?;
    match req.kind.as_str() {
        "typing" => {
            let data = serde_json::json!({ "by": "agent", "agent_id": caller.agent_id, "active": req.active.unwrap_or(true), "channel": "chat", "conversation_id": conv });
            adapter::signal_typing(&hub, i.id, data).await;
        }
        "read" => {
            let up_to_seq = store::last_visitor_seq(hub.db(), conv).await?;
            adapter::record_read(
                &hub,
                i.id,
                serde_json::json!({ "by": "agent", "agent_id": caller.agent_id, "up_to_seq": up_to_seq, "channel": "chat" }),
            )
            .await?;
        }
        other => return Err(CoreError::field("kind", format!("`{other}` is not typing or read")).into()),
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn websocket(
    State(hub): State<Hub>,
    Extension(state): Extension<Arc<ChatState>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> ChatResult<Response> {
    // Browsers send Origin on WebSocket handshakes; CORS does not protect sockets.
    if !request_origin_allowed(&state, &headers) {
        return Err(ProtocolError::new("forbidden_origin", "this site may not embed the chat widget").into());
    }
    state.bind_hub(&hub);
    // Frames up to 4 × the limit are read and refused with an error frame; beyond that the
    // connection is closed (1009) so a peer cannot make us buffer arbitrary amounts.
    let hard_cap = state.cfg.max_frame_bytes.saturating_mul(4);
    Ok(ws
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |socket| serve_socket(hub, state, socket)))
}

async fn send(socket: &mut WebSocket, f: &ServerFrame) -> bool {
    socket.send(Message::Text(f.to_text().into())).await.is_ok()
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
}

/// Waits for the `hello` frame; answers anything else with an error frame.
async fn await_hello(socket: &mut WebSocket, max_frame: usize) -> Option<(String, i64, u32)> {
    loop {
        match socket.recv().await {
            Some(Ok(Message::Text(t))) => match protocol::parse_client_frame(&t, max_frame) {
                Ok(ClientFrame::Hello { v, token, last_seq }) => return Some((token, last_seq, v)),
                Ok(_) => {
                    if !send(socket, &ProtocolError::new("not_authenticated", "send a hello frame first").frame()).await {
                        return None;
                    }
                }
                Err(e) => {
                    if !send(socket, &e.frame()).await {
                        return None;
                    }
                }
            },
            Some(Ok(Message::Binary(_))) => {
                if !send(socket, &ProtocolError::new("binary_not_supported", "frames are JSON text").frame()).await {
                    return None;
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) | None => return None,
            Some(Err(_)) => {
                close(socket, 1009, "frame too large or invalid").await;
                return None;
            }
        }
    }
}

/// Sends every transcript entry after the cursor, in seq order.
async fn catch_up(hub: &Hub, socket: &mut WebSocket, conv: Uuid, cursor: &mut OutboundCursor) -> Result<(), ()> {
    loop {
        let batch = match store::transcript_after(hub.db(), conv, cursor.last_sent(), CATCH_UP_BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, %conv, "Transcript read failed.");
                return Err(());
            }
        };
        let n = batch.len() as i64;
        for m in batch {
            let seq = m.seq;
            if !send(socket, &ServerFrame::Message(m)).await {
                return Err(());
            }
            cursor.sent(seq);
        }
        if n < CATCH_UP_BATCH {
            return Ok(());
        }
    }
}

/// How long a waiting conversation may have no widget socket on this node before its
/// visitor counts as gone (a page navigation reconnects well within this).
const VISITOR_LEFT_AFTER: Duration = Duration::from_secs(3);

struct SocketGuard {
    hub: Hub,
    state: Arc<ChatState>,
    conv: Uuid,
    id: u64,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let current = self.state.registry.interaction_of(self.conv);
        self.state.registry.unregister(self.conv, self.id);
        // The last widget of a waiting chat closed: unless it comes back shortly, mark the
        // interaction's visitor as gone (supervisors see it; it abandons itself later).
        let Some(i) = current.filter(|i| i.waiting) else { return };
        if self.state.registry.has_conversation(self.conv) {
            return;
        }
        let (hub, state, conv) = (self.hub.clone(), self.state.clone(), self.conv);
        tokio::spawn(async move {
            tokio::time::sleep(VISITOR_LEFT_AFTER).await;
            if state.registry.has_conversation(conv) {
                return;
            }
            match hub.set_visitor_left(i.id, true).await {
                Ok(_) | Err(CoreError::Conflict(_)) | Err(CoreError::NotFound(_)) => {}
                Err(error) => tracing::warn!(%error, interaction_id = %i.id, "Could not mark a chat's visitor as gone."),
            }
        });
    }
}

/// One widget socket: hello → welcome + transcript after `last_seq` → frames both ways.
async fn serve_socket(hub: Hub, state: Arc<ChatState>, mut socket: WebSocket) {
    let max_frame = state.cfg.max_frame_bytes;
    let hello = tokio::time::timeout(Duration::from_secs(state.cfg.hello_timeout_secs), await_hello(&mut socket, max_frame)).await;
    let (token, last_seq, v) = match hello {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(_) => {
            let _ = send(&mut socket, &ProtocolError::new("hello_timeout", "no hello frame in time").frame()).await;
            close(&mut socket, 4408, "hello timeout").await;
            return;
        }
    };
    if v != PROTOCOL_VERSION {
        let _ = send(
            &mut socket,
            &ProtocolError::new("unsupported_version", format!("this server speaks protocol {PROTOCOL_VERSION}")).frame(),
        )
        .await;
        close(&mut socket, 4400, "unsupported protocol version").await;
        return;
    }
    let claims = match state.verify_token(&hub, &token).await {
        Ok(c) => c,
        Err(e) => {
            let _ = send(&mut socket, &e.frame()).await;
            close(&mut socket, 4401, "invalid token").await;
            return;
        }
    };
    let conv = claims.conversation_id;
    let hints = state.hints(&hub, claims.visitor_id).await.unwrap_or_default();
    let (socket_id, mut pushes) = state.registry.register(conv);
    let _guard = SocketGuard { hub: hub.clone(), state: state.clone(), conv, id: socket_id };

    let latest = store::latest_interaction(hub.db(), conv).await.ok().flatten();
    let open = latest.as_ref().filter(|l| matches!(l.status.as_str(), "queued" | "offered" | "active" | "wrap_up"));
    if let Some(l) = open {
        let waiting = matches!(l.status.as_str(), "queued" | "offered");
        state.registry.set_interaction(conv, CurrentInteraction { id: l.id, queue_id: l.queue_id, waiting });
        if waiting {
            // The visitor is back (if they had been marked gone).
            if let Err(error) = hub.set_visitor_left(l.id, false).await {
                tracing::debug!(%error, interaction_id = %l.id, "Could not clear a chat's visitor-left mark.");
            }
        }
    }
    let availability = store::availability(hub.db(), state.cfg.queue.as_deref(), &state.name)
        .await
        .unwrap_or(crate::protocol::Availability { online: true, reason: None });
    let welcome = ServerFrame::Welcome {
        v: PROTOCOL_VERSION,
        conversation_id: conv,
        visitor_id: claims.visitor_id,
        last_seq: store::last_seq(hub.db(), conv).await.unwrap_or(0),
        status: latest.as_ref().map(|l| l.status.clone()),
        agent_name: open.filter(|l| l.status == "active").and_then(|l| l.agent_name.clone()),
        availability,
    };
    if !send(&mut socket, &welcome).await {
        return;
    }
    let mut cursor = OutboundCursor::after(last_seq);
    if catch_up(&hub, &mut socket, conv, &mut cursor).await.is_err() {
        close(&mut socket, 1011, "transcript unavailable; reconnect").await;
        return;
    }
    if let Some(l) = open.filter(|l| matches!(l.status.as_str(), "queued" | "offered")) {
        if let Some(q) = l.queue_id {
            if let Ok(Some(f)) = state.queue_frame(&hub, q, l.id).await {
                if let ServerFrame::Queue { position, estimated_wait_secs } = &f {
                    state.registry.queue_frame_changed(conv, (*position, *estimated_wait_secs));
                }
                if !send(&mut socket, &f).await {
                    return;
                }
            }
        }
    }

    let mut ping = tokio::time::interval(Duration::from_secs(state.cfg.ping_interval_secs));
    ping.tick().await;
    let mut last_typing: Option<(bool, Instant)> = None;
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let ok = match push {
                    None => {
                        close(&mut socket, 1013, "too slow; reconnect and resume").await;
                        break;
                    }
                    Some(Push::Entry { seq, text }) => match cursor.decide(seq) {
                        PushDecision::Send => {
                            cursor.sent(seq);
                            socket.send(Message::Text(text.to_string().into())).await.is_ok()
                        }
                        PushDecision::Skip => true,
                        PushDecision::CatchUp => catch_up(&hub, &mut socket, conv, &mut cursor).await.is_ok(),
                    },
                    Some(Push::Frame(text)) => socket.send(Message::Text(text.to_string().into())).await.is_ok(),
                    Some(Push::CatchUp) => catch_up(&hub, &mut socket, conv, &mut cursor).await.is_ok(),
                };
                if !ok {
                    break;
                }
            }
            msg = socket.recv() => {
                let frame = match msg {
                    Some(Ok(Message::Text(t))) => protocol::parse_client_frame(&t, max_frame),
                    Some(Ok(Message::Binary(_))) => Err(ProtocolError::new("binary_not_supported", "frames are JSON text")),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(_)) => {
                        close(&mut socket, 1009, "frame too large or invalid").await;
                        break;
                    }
                };
                let reply = match frame {
                    Err(e) => Some(e.frame()),
                    Ok(f) => handle_frame(&hub, &state, &claims, &hints, f, &mut last_typing).await,
                };
                if let Some(r) = reply {
                    if !send(&mut socket, &r).await {
                        break;
                    }
                }
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
                // Still here: undo a "visitor left" another node recorded when this
                // visitor's socket there closed just as this one opened.
                if let Some(i) = state.registry.interaction_of(conv).filter(|i| i.waiting) {
                    if let Err(error) = hub.set_visitor_left(i.id, false).await {
                        tracing::debug!(%error, interaction_id = %i.id, "Could not clear a chat's visitor-left mark.");
                    }
                }
            }
        }
    }
}

/// Handles one authenticated frame; returns the direct answer, if any.
async fn handle_frame(
    hub: &Hub,
    state: &ChatState,
    claims: &TokenClaims,
    hints: &CustomerHints,
    f: ClientFrame,
    last_typing: &mut Option<(bool, Instant)>,
) -> Option<ServerFrame> {
    let conv = claims.conversation_id;
    match f {
        ClientFrame::Hello { .. } => Some(ProtocolError::new("already_authenticated", "hello was already received").frame()),
        ClientFrame::Message { client_msg_id, body, attachments } => {
            let msg = VisitorMessage { client_msg_id: &client_msg_id, body: &body, attachments: &attachments, extra_metadata: None };
            match state.accept_message(hub, claims, hints, msg).await {
                Ok(a) => Some(ServerFrame::Ack { client_msg_id, seq: a.seq, message_id: a.message_id, duplicate: a.duplicate }),
                Err(e) => Some(e.frame()),
            }
        }
        ClientFrame::Typing { active } => {
            let now = Instant::now();
            // Forward changes at once, repeats of "still typing" at most every 2 s.
            let forward = match *last_typing {
                Some((was, at)) => was != active || (active && now.duration_since(at) >= Duration::from_secs(2)),
                None => true,
            };
            if forward {
                if let Some(i) = state.registry.interaction_of(conv) {
                    let data = serde_json::json!({ "by": "visitor", "active": active, "channel": "chat", "conversation_id": conv });
                    adapter::signal_typing(hub, i.id, data).await;
                }
                *last_typing = Some((active, now));
            }
            None
        }
        ClientFrame::Read { up_to_seq } => match store::set_visitor_read(hub.db(), conv, up_to_seq).await {
            Ok(true) => {
                if let Some(i) = state.registry.interaction_of(conv) {
                    let data = serde_json::json!({ "by": "visitor", "up_to_seq": up_to_seq, "channel": "chat", "conversation_id": conv });
                    if let Err(e) = adapter::record_read(hub, i.id, data).await {
                        return Some(adapter::internal(e).frame());
                    }
                }
                None
            }
            Ok(false) => None,
            Err(e) => Some(adapter::internal(e).frame()),
        },
        ClientFrame::Ping { nonce } => Some(ServerFrame::Pong { nonce }),
        ClientFrame::Leave {} => {
            if let Some(i) = state.registry.interaction_of(conv) {
                let r = if i.waiting {
                    hub.abandon(i.id).await
                } else {
                    hub.record_event(
                        switchboard_core::bus::NewEvent::interaction("visitor_left", i.id)
                            .with_data(serde_json::json!({ "channel": "chat", "conversation_id": conv })),
                    )
                    .await
                };
                if let Err(e) = r {
                    if !matches!(e, CoreError::Conflict(_)) {
                        return Some(adapter::internal(e).frame());
                    }
                }
            }
            None
        }
    }
}
