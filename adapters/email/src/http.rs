//! The agent's view of email (axum shell): a received mail as mail — From/To/Cc, subject,
//! the sanitized HTML with inline `cid:` images pointed at their download, the full text
//! beside the collapsed one, attachments — the raw original one click away, and
//! attachment downloads. Staff only; every response that carries mail content is marked
//! `nosniff` and served under a CSP sandbox so nothing in it runs.

use crate::parse;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use std::path::PathBuf;
use std::sync::Arc;
use switchboard_core::api::{Access, RouteDoc};
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
];

/// One mailbox's view: its name (the path segment) and attachment directory.
#[derive(Clone)]
pub struct EmailHttp {
    /// Mailbox (adapter instance) name.
    pub mailbox: Arc<str>,
    /// Attachment directory, when configured.
    pub dir: Option<PathBuf>,
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

async fn attachment(State(hub): State<Hub>, Extension(st): Extension<EmailHttp>, Path(id): Path<Uuid>) -> Result<Response, CoreError> {
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
    let dir = st.dir.clone().unwrap_or_else(|| hub.settings().database.data_dir.join("attachments"));
    let data = tokio::fs::read(dir.join(&sha)).await.map_err(|_| CoreError::NotFound("attachment file"))?;
    // Images may be shown inline (the mail's cid: pictures); everything else downloads.
    let image = inline && matches!(ct.as_str(), "image/png" | "image/jpeg" | "image/gif" | "image/webp");
    let mut r = data.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(if image { &ct } else { "application/octet-stream" })
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    let safe: String = filename.chars().filter(|c| !c.is_control() && *c != '"' && *c != '\\').collect();
    let disp = format!("{}; filename=\"{}\"", if image { "inline" } else { "attachment" }, safe.escape_default());
    if let Ok(v) = HeaderValue::from_str(&disp) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(sandboxed(r))
}
