//! The agent's view of email (axum shell): a received mail as mail — From/To/Cc, subject,
//! the sanitized HTML with inline `cid:` images pointed at their download, the full text
//! beside the collapsed one, attachments — the raw original one click away, and
//! attachment downloads. Staff only; every response that carries mail content is marked
//! `nosniff` and served under a CSP sandbox so nothing in it runs.

use crate::parse;
use axum::extract::{DefaultBodyLimit, Query};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use switchboard_core::api::{Access, RouteDoc};
use switchboard_core::api::{ApiJson, ApiPath};
use switchboard_core::auth::Caller;
use switchboard_core::files::FileStore;
use switchboard_core::interactions::{Message, ReplyExtras};
use switchboard_core::{CoreError, Hub, Role};
use uuid::Uuid;

/// id, filename, content type, size, Content-ID, inline, stored.
type AttachmentRow = (Uuid, String, String, i64, Option<String>, bool, bool);

const STAFF: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent];

/// The documented routes (the hub's authorization reads them).
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "GET",
        path: "/api/v1/email/{mailbox}/messages/{id}",
        access: Access::Roles(STAFF),
        tag: "email",
        summary: "A received email as mail: headers, sanitized HTML, full and collapsed text, attachments.",
    },
    RouteDoc {
        method: "GET",
        path: "/api/v1/email/{mailbox}/messages/{id}/raw",
        access: Access::Roles(STAFF),
        tag: "email",
        summary: "The original message, byte for byte (message/rfc822).",
    },
    RouteDoc {
        method: "GET",
        path: "/api/v1/email/{mailbox}/attachments/{id}",
        access: Access::Roles(STAFF),
        tag: "email",
        summary: "Download an attachment of a received email.",
    },
    RouteDoc {
        method: "POST",
        path: "/api/v1/email/{mailbox}/uploads",
        access: Access::Roles(STAFF),
        tag: "email",
        summary: "Upload a file to attach to a reply or forward (body: the bytes; ?filename=; Content-Type): stored by SHA-256, size-limited.",
    },
    RouteDoc {
        method: "GET",
        path: "/api/v1/email/{mailbox}/uploads/{sha256}",
        access: Access::Roles(STAFF),
        tag: "email",
        summary: "Download a file an agent attached.",
    },
    RouteDoc {
        method: "POST",
        path: "/api/v1/email/{mailbox}/interactions/{id}/reply",
        access: Access::Roles(STAFF),
        tag: "email",
        summary: "Reply to the conversation's last mail: to its sender, or with reply_all also to everyone it was addressed to and the Cc'd customers; with attached uploads.",
    },
    RouteDoc {
        method: "POST",
        path: "/api/v1/email/{mailbox}/interactions/{id}/forward",
        access: Access::Roles(STAFF),
        tag: "email",
        summary: "Forward a mail of the conversation (default: the last one) to an address, as an attached original or inline; the forward is a message of the interaction.",
    },
];

/// One mailbox's view: its name (the path segment) and attachment directory.
#[derive(Clone)]
pub struct EmailHttp {
    /// Mailbox (adapter instance) name.
    pub mailbox: Arc<str>,
    /// Attachment directory, when configured.
    pub dir: Option<PathBuf>,
    /// The mailbox's address.
    pub address: Arc<str>,
    /// Largest total of the files attached to one reply or forward.
    pub reply_attachments_max_bytes: usize,
}

/// The URL prefix of a mailbox's routes.
pub fn base(mailbox: &str) -> String {
    format!("/api/v1/email/{mailbox}")
}

/// The router of one mailbox (its literal name in the paths, so mailboxes never collide).
pub fn router(state: EmailHttp) -> Router<Hub> {
    let b = base(&state.mailbox);
    Router::new()
        .route(&format!("{b}/messages/{{id}}"), get(message))
        .route(&format!("{b}/messages/{{id}}/raw"), get(raw))
        .route(&format!("{b}/attachments/{{id}}"), get(attachment))
        .route(&format!("{b}/uploads"), post(upload).layer(DefaultBodyLimit::max(state.reply_attachments_max_bytes.saturating_add(1))))
        .route(&format!("{b}/uploads/{{sha256}}"), get(uploaded))
        .route(&format!("{b}/interactions/{{id}}/reply"), post(reply))
        .route(&format!("{b}/interactions/{{id}}/forward"), post(forward))
        .layer(Extension(state))
}

fn sandboxed(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"),
    );
    r
}

async fn raw_of(hub: &Hub, mailbox: &str, message: Uuid) -> Result<(Uuid, Vec<u8>), CoreError> {
    let row: Option<(Uuid, Vec<u8>)> =
        sqlx::query_as("select id, raw from email_raw_messages where message_id = $1 and mailbox = $2 limit 1")
            .bind(message)
            .bind(mailbox)
            .fetch_optional(hub.db())
            .await?;
    row.ok_or(CoreError::NotFound("email message"))
}

async fn message(State(hub): State<Hub>, Extension(st): Extension<EmailHttp>, Path(id): Path<Uuid>) -> Result<Response, CoreError> {
    let (raw_id, raw) = raw_of(&hub, &st.mailbox, id).await?;
    let b = base(&st.mailbox);
    let atts: Vec<AttachmentRow> = sqlx::query_as(
        "select id, filename, content_type, size_bytes, content_id, inline, stored from email_attachments where raw_id = $1 order by filename",
    )
    .bind(raw_id)
    .fetch_all(hub.db())
    .await?;
    let attachments: Vec<serde_json::Value> = atts
        .iter()
        .map(|(aid, name, ct, size, cid, inline, stored)| {
            serde_json::json!({ "id": aid, "filename": name, "content_type": ct, "size": size, "content_id": cid, "inline": inline,
                                 "stored": stored, "url": format!("{b}/attachments/{aid}") })
        })
        .collect();
    let body = match parse::parse(&raw, 0) {
        Some(p) => {
            // Inline images: cid: → the attachment's download URL (same origin, staff only).
            let html = p.html.map(|mut h| {
                for (aid, _, _, _, cid, _, stored) in &atts {
                    if let (Some(cid), true) = (cid, *stored) {
                        h = h.replace(&format!("cid:{cid}"), &format!("{b}/attachments/{aid}"));
                    }
                }
                h
            });
            serde_json::json!({
                "message_id": id, "raw_url": format!("{b}/messages/{id}/raw"),
                "from": p.from, "to": p.to, "cc": p.cc, "reply_to": p.reply_to, "subject": p.subject, "date": p.date,
                "header_message_id": p.message_id, "text": p.text, "visible_text": p.visible_text, "collapsed": p.collapsed,
                "html": html, "attachments": attachments, "forwarded": p.forwarded, "calendar": p.calendar, "parsed": true,
            })
        }
        None => serde_json::json!({
            "message_id": id, "raw_url": format!("{b}/messages/{id}/raw"), "parsed": false, "attachments": attachments,
            "text": String::from_utf8_lossy(&raw[..raw.len().min(64 * 1024)]),
        }),
    };
    Ok(Json(body).into_response())
}

async fn raw(State(hub): State<Hub>, Extension(st): Extension<EmailHttp>, Path(id): Path<Uuid>) -> Result<Response, CoreError> {
    let (_, raw) = raw_of(&hub, &st.mailbox, id).await?;
    let mut r = raw.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("message/rfc822"));
    r.headers_mut().insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"original.eml\""));
    Ok(sandboxed(r))
}

async fn attachment(
    State(hub): State<Hub>,
    Extension(st): Extension<EmailHttp>,
    headers: axum::http::HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response, CoreError> {
    let row: Option<(String, String, String, bool, bool)> = sqlx::query_as(
        "select a.sha256, a.content_type, a.filename, a.inline, a.stored from email_attachments a
               join email_raw_messages r on r.id = a.raw_id where a.id = $1 and r.mailbox = $2",
    )
    .bind(id)
    .bind(&*st.mailbox)
    .fetch_optional(hub.db())
    .await?;
    let (sha, ct, filename, inline, stored) = row.ok_or(CoreError::NotFound("attachment"))?;
    if !stored {
        return Ok(
            (StatusCode::GONE, "this attachment was over the size limit and was not kept; it is in the raw original").into_response()
        );
    }
    // Images may be shown inline (the mail's cid: pictures); everything else downloads.
    let image = inline && matches!(ct.as_str(), "image/png" | "image/jpeg" | "image/gif" | "image/webp");
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let files = file_store(&hub, &st);
    let mut r = switchboard_core::files::serve(files.as_ref(), &sha, range, if image { &ct } else { "application/octet-stream" })
        .await?
        .ok_or(CoreError::NotFound("attachment file"))?;
    let h = r.headers_mut();
    let safe: String = filename.chars().filter(|c| !c.is_control() && *c != '"' && *c != '\\').collect();
    let disp = format!("{}; filename=\"{}\"", if image { "inline" } else { "attachment" }, safe.escape_default());
    if let Ok(v) = HeaderValue::from_str(&disp) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(sandboxed(r))
}

/// The mailbox's attachment store (received attachments and agents' uploads).
fn file_store(hub: &Hub, st: &EmailHttp) -> Arc<dyn FileStore> {
    crate::attachment_store(hub, st.dir.as_deref())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    filename: Option<String>,
}

/// A file an agent attached, as kept on the message and read by the sender.
fn descriptor(st: &EmailHttp, sha256: &str, filename: &str, content_type: &str, size: u64) -> serde_json::Value {
    serde_json::json!({
        "sha256": sha256, "filename": filename, "content_type": content_type, "size": size,
        "url": format!("{}/uploads/{sha256}?filename={}", base(&st.mailbox), urlencode(filename)),
    })
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn safe_filename(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let s: String = last.chars().filter(|c| !c.is_control() && !matches!(c, '"' | '<' | '>' | '`')).take(200).collect();
    let s = s.trim().trim_start_matches('.').to_string();
    if s.is_empty() {
        "attachment".into()
    } else {
        s
    }
}

fn bare_type(ct: Option<&HeaderValue>) -> String {
    let t = ct.and_then(|v| v.to_str().ok()).unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let ok = t
        .split_once('/')
        .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && t.bytes().all(|c| c.is_ascii_alphanumeric() || b"/+-.".contains(&c)));
    if ok {
        t
    } else {
        "application/octet-stream".into()
    }
}

/// Stores an uploaded file content-addressed (under its SHA-256 in the attachment store,
/// like received attachments) and answers its descriptor.
async fn upload(
    State(hub): State<Hub>,
    Extension(st): Extension<EmailHttp>,
    caller: Caller,
    Query(q): Query<UploadQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, CoreError> {
    use sha2::{Digest, Sha256};
    caller.require(STAFF)?;
    if body.is_empty() {
        return Err(CoreError::field("file", "is empty"));
    }
    if body.len() > st.reply_attachments_max_bytes {
        return Err(CoreError::field("file", format!("larger than {} bytes", st.reply_attachments_max_bytes)));
    }
    let sha = hex::encode(Sha256::digest(&body));
    let store = file_store(&hub, &st);
    let size = body.len() as u64;
    if !store.exists(&sha).await? {
        store.put(&sha, body).await?;
    }
    let filename = safe_filename(q.filename.as_deref().unwrap_or("attachment"));
    let ct = bare_type(headers.get(header::CONTENT_TYPE));
    tracing::info!(mailbox = %st.mailbox, sha256 = %sha, size, "File uploaded for a reply.");
    Ok((StatusCode::CREATED, Json(descriptor(&st, &sha, &filename, &ct, size))).into_response())
}

async fn uploaded(
    State(hub): State<Hub>,
    Extension(st): Extension<EmailHttp>,
    caller: Caller,
    Path(sha): Path<String>,
    Query(q): Query<UploadQuery>,
) -> Result<Response, CoreError> {
    caller.require(STAFF)?;
    if !crate::agent_mail::is_sha256(&sha) {
        return Err(CoreError::NotFound("upload"));
    }
    let data = file_store(&hub, &st).read(&sha).await?.ok_or(CoreError::NotFound("upload"))?;
    let mut r = data.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    let name = safe_filename(q.filename.as_deref().unwrap_or("attachment"));
    let ascii: String = name.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' }).collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", ascii.replace(['"', '\\'], "_"))) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(sandboxed(r))
}

/// An uploaded file named in a reply or forward.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRef {
    sha256: String,
    filename: String,
    #[serde(default)]
    content_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyRequest {
    body: String,
    idempotency_key: Option<String>,
    #[serde(default)]
    reply_all: bool,
    #[serde(default)]
    attachments: Vec<FileRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardRequest {
    to: String,
    #[serde(default)]
    body: String,
    /// A message of the interaction (a received mail); default the last one.
    message_id: Option<Uuid>,
    /// The original inline in the text rather than attached (message/rfc822).
    #[serde(default)]
    inline: bool,
    idempotency_key: Option<String>,
    #[serde(default)]
    attachments: Vec<FileRef>,
}

/// Checks the named uploads (each stored, the total within the limit) and returns their
/// descriptors.
async fn checked_files(hub: &Hub, st: &EmailHttp, files: &[FileRef]) -> Result<Vec<serde_json::Value>, CoreError> {
    if files.len() > 20 {
        return Err(CoreError::field("attachments", "at most 20 files"));
    }
    let store = file_store(hub, st);
    let mut total: u64 = 0;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        if !crate::agent_mail::is_sha256(&f.sha256) {
            return Err(CoreError::field("attachments", "sha256 must be 64 lowercase hex digits"));
        }
        let len = store.size(&f.sha256).await?.ok_or_else(|| CoreError::field("attachments", format!("no uploaded file {}", f.sha256)))?;
        total += len;
        if total > st.reply_attachments_max_bytes as u64 {
            return Err(CoreError::field("attachments", format!("together larger than {} bytes", st.reply_attachments_max_bytes)));
        }
        let ct = f.content_type.as_deref().and_then(|c| HeaderValue::from_str(c).ok());
        out.push(descriptor(st, &f.sha256, &safe_filename(&f.filename), &bare_type(ct.as_ref()), len));
    }
    Ok(out)
}

/// The email interaction of this mailbox, and its conversation token.
async fn email_interaction(
    hub: &Hub,
    st: &EmailHttp,
    id: Uuid,
) -> Result<(switchboard_core::interactions::Interaction, String), CoreError> {
    let i = hub.interaction(id).await?;
    let token = i.conversation_key.as_deref().and_then(|k| k.strip_prefix("email:")).map(str::to_string);
    let Some(token) = token.filter(|_| i.channel == "email") else { return Err(CoreError::NotFound("email interaction")) };
    let mailbox: Option<String> =
        sqlx::query_scalar("select mailbox from email_threads where token = $1").bind(&token).fetch_optional(hub.db()).await?;
    if mailbox.as_deref() != Some(&*st.mailbox) {
        return Err(CoreError::NotFound("email interaction"));
    }
    Ok((i, token))
}

/// A received mail of the interaction (by its message id, else the last one): its raw row id
/// and parsed form.
async fn received_mail(
    hub: &Hub,
    st: &EmailHttp,
    interaction: Uuid,
    message: Option<Uuid>,
) -> Result<Option<(Uuid, parse::ParsedMail)>, CoreError> {
    let row: Option<(Uuid, Vec<u8>)> = sqlx::query_as(
        "select id, raw from email_raw_messages where mailbox = $1 and interaction_id = $2 and status in ('ingested', 'unparseable')
            and ($3::uuid is null or message_id = $3) order by stored_at desc, uid desc nulls last limit 1",
    )
    .bind(&*st.mailbox)
    .bind(interaction)
    .bind(message)
    .fetch_optional(hub.db())
    .await?;
    Ok(row.and_then(|(id, raw)| parse::parse(&raw, 0).map(|p| (id, p))))
}

async fn reply(
    State(hub): State<Hub>,
    Extension(st): Extension<EmailHttp>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(r): ApiJson<ReplyRequest>,
) -> Result<(StatusCode, Json<Message>), CoreError> {
    caller.require(STAFF)?;
    let (i, token) = email_interaction(&hub, &st, id).await?;
    let files = checked_files(&hub, &st, &r.attachments).await?;
    let kept: Vec<String> = sqlx::query_scalar::<_, Vec<String>>("select cc from email_threads where token = $1")
        .bind(&token)
        .fetch_optional(hub.db())
        .await?
        .unwrap_or_default();
    let (to, cc) = match received_mail(&hub, &st, id, None).await? {
        Some((_, mail)) => match crate::agent_mail::reply_recipients(&mail, &kept, &st.address, r.reply_all) {
            Some(rc) => (rc.to, rc.cc),
            None => (i.customer_address.clone().unwrap_or_default(), if r.reply_all { kept } else { Vec::new() }),
        },
        // A conversation we started (the chat widget's offline form): its customer.
        None => (i.customer_address.clone().unwrap_or_default(), if r.reply_all { kept } else { Vec::new() }),
    };
    let extras = ReplyExtras {
        recipient: Some(to.clone()),
        subject: None,
        metadata: Some(serde_json::json!({ "email": { "reply_all": r.reply_all, "to": to, "cc": cc, "attachments": files } })),
        attachments: Some(serde_json::Value::Array(files)),
    };
    let m = hub.reply_with(id, caller.acting_agent()?, &r.body, r.idempotency_key.as_deref(), extras).await?;
    Ok((StatusCode::CREATED, Json(m)))
}

async fn forward(
    State(hub): State<Hub>,
    Extension(st): Extension<EmailHttp>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(r): ApiJson<ForwardRequest>,
) -> Result<(StatusCode, Json<Message>), CoreError> {
    caller.require(STAFF)?;
    let to = crate::agent_mail::checked_address(&r.to).ok_or_else(|| CoreError::field("to", "must be one email address"))?;
    if to.eq_ignore_ascii_case(&st.address) || crate::threading::token_in_address(&to, &st.address).is_some() {
        return Err(CoreError::field("to", "is this mailbox"));
    }
    let (i, _) = email_interaction(&hub, &st, id).await?;
    let files = checked_files(&hub, &st, &r.attachments).await?;
    let Some((raw_id, mail)) = received_mail(&hub, &st, id, r.message_id).await? else {
        return Err(CoreError::field("message_id", "no received mail of this conversation to forward"));
    };
    let subject =
        crate::agent_mail::forward_subject(if mail.subject.is_empty() { i.subject.as_deref().unwrap_or("") } else { &mail.subject });
    // What the agent sees in the conversation; the mail itself carries the note and the original.
    let shown =
        if r.body.trim().is_empty() { format!("Forwarded to {to}.") } else { format!("Forwarded to {to}:\n\n{}", r.body.trim_end()) };
    let extras = ReplyExtras {
        recipient: Some(to.clone()),
        subject: Some(subject),
        metadata: Some(serde_json::json!({ "email": {
            "to": to, "cc": [], "attachments": files,
            "forward": { "raw_id": raw_id, "inline": r.inline, "note": r.body },
        }})),
        attachments: Some(serde_json::Value::Array(files)),
    };
    let m = hub.reply_with(id, caller.acting_agent()?, &shown, r.idempotency_key.as_deref(), extras).await?;
    Ok((StatusCode::CREATED, Json(m)))
}
