//! The one error type of core, and its HTTP form: `application/problem+json` (RFC 9457)
//! with a stable `code`, in the style of Meilisearch's error table. Internals are logged,
//! never returned.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Errors of core operations and HTTP handlers.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The request is malformed or a value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A named field has an invalid value.
    #[error("field `{field}`: {reason}")]
    InvalidField {
        /// Field name.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The entity does not exist (or is not visible to the caller).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// No valid credentials.
    #[error("authentication required")]
    Unauthenticated,
    /// Credentials valid, permission missing.
    #[error("your role does not allow this")]
    Forbidden,
    /// Session expired.
    #[error("session expired; sign in again")]
    SessionExpired,
    /// A CSRF token is missing or wrong.
    #[error("missing or invalid CSRF token (send the X-CSRF-Token header)")]
    Csrf,
    /// Too many requests.
    #[error("rate limit exceeded; retry later")]
    RateLimited,
    /// Too many failed sign-ins for a username or client address: locked for a while.
    #[error("too many failed sign-ins; try again in {retry_after_secs} s")]
    LoginLocked {
        /// Seconds until the lockout ends (sent as `Retry-After`).
        retry_after_secs: u64,
    },
    /// Request body too large.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Wrong or missing content type.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// A channel adapter or peer failed.
    #[error("channel error: {0}")]
    Channel(String),
    /// Database failure (details logged only).
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Anything else internal (details logged only).
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoreError {
    /// Shorthand for an invalid field.
    pub fn field(field: &str, reason: impl Into<String>) -> Self {
        CoreError::InvalidField { field: field.to_string(), reason: reason.into() }
    }

    /// Stable machine code, HTTP status and problem type of the error.
    pub fn code(&self) -> (&'static str, StatusCode) {
        match self {
            CoreError::Invalid(_) => ("invalid_request", StatusCode::BAD_REQUEST),
            CoreError::InvalidField { .. } => ("invalid_field", StatusCode::UNPROCESSABLE_ENTITY),
            CoreError::NotFound(_) => ("not_found", StatusCode::NOT_FOUND),
            CoreError::Conflict(_) => ("conflict", StatusCode::CONFLICT),
            CoreError::Unauthenticated => ("unauthenticated", StatusCode::UNAUTHORIZED),
            CoreError::SessionExpired => ("session_expired", StatusCode::UNAUTHORIZED),
            CoreError::Forbidden => ("forbidden", StatusCode::FORBIDDEN),
            CoreError::Csrf => ("csrf", StatusCode::FORBIDDEN),
            CoreError::RateLimited => ("rate_limited", StatusCode::TOO_MANY_REQUESTS),
            CoreError::LoginLocked { .. } => ("login_locked", StatusCode::TOO_MANY_REQUESTS),
            CoreError::PayloadTooLarge(_) => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            CoreError::UnsupportedMediaType => ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            CoreError::Channel(_) => ("channel_error", StatusCode::BAD_GATEWAY),
            CoreError::Database(e) if is_unique_violation(e) => ("conflict", StatusCode::CONFLICT),
            CoreError::Database(e) if is_fk_violation(e) => ("invalid_reference", StatusCode::UNPROCESSABLE_ENTITY),
            CoreError::Database(e) if is_unstorable_value(e) => ("invalid_value", StatusCode::UNPROCESSABLE_ENTITY),
            CoreError::Database(e) if is_unavailable(e) => ("database_unavailable", StatusCode::SERVICE_UNAVAILABLE),
            CoreError::Database(_) | CoreError::Internal(_) => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

/// True for PostgreSQL unique violations (SQLSTATE 23505).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// True for PostgreSQL foreign-key violations (SQLSTATE 23503).
pub fn is_fk_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23503"))
}

/// Seconds a client is told to wait (`Retry-After`) while the database is unavailable.
pub const DATABASE_RETRY_AFTER_SECS: u32 = 5;

/// True when the error means the database cannot be reached right now (down, restarting,
/// out of connections, or no pooled connection within `database.acquire_timeout_ms`),
/// as opposed to a query the database refused: retrying later may succeed.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE class 08 (connection exception), 57P01–57P03 (admin/crash shutdown,
        // cannot connect now) and 53300 (too many connections).
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03" | "53300")),
        _ => false,
    }
}

/// True when PostgreSQL refused a value it cannot store: a date/time out of its range
/// (22008), a NUL in text (22021) or jsonb (22P05). The extractors refuse these first,
/// naming the field; this is the safety net for values built elsewhere.
pub fn is_unstorable_value(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("22008" | "22021" | "22P05")))
}

/// True when the capacity trigger refused an offer.
pub fn is_capacity_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("P0001") && d.message().contains("capacity"))
}

/// The problem+json body.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// Human explanation for this occurrence.
    pub detail: String,
    /// Stable machine code.
    pub code: &'static str,
    /// Offending field, when one is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl IntoResponse for CoreError {
    fn into_response(self) -> Response {
        let (code, status) = self.code();
        let detail = match &self {
            CoreError::Database(e) if is_unique_violation(e) => "a record with the same unique value already exists".to_string(),
            CoreError::Database(e) if is_fk_violation(e) => "a referenced record does not exist".to_string(),
            CoreError::Database(e) if is_unstorable_value(e) => {
                tracing::warn!(error = %e, "Database refused a value in request.");
                "a value cannot be stored: a date out of range (4713 BC to 294276 AD) or a NUL character".to_string()
            }
            CoreError::Database(e) if is_unavailable(e) => {
                tracing::warn!(error = %e, "Database unavailable in request.");
                "the database is unavailable; retry later".to_string()
            }
            CoreError::Database(e) => {
                tracing::error!(error = %e, "Database error in request.");
                "internal error; it has been logged".to_string()
            }
            CoreError::Internal(e) => {
                tracing::error!(error = %e, "Internal error in request.");
                "internal error; it has been logged".to_string()
            }
            other => other.to_string(),
        };
        let field = match &self {
            CoreError::InvalidField { field, .. } => Some(field.clone()),
            _ => None,
        };
        let body = Problem {
            kind: format!("https://switchboard.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
            code,
            field,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (status, json).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/problem+json"));
        if let CoreError::LoginLocked { retry_after_secs } = &self {
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from((*retry_after_secs).max(1)));
        }
        if code == "database_unavailable" {
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(DATABASE_RETRY_AFTER_SECS));
        }
        resp
    }
}

/// Result alias.
pub type CoreResult<T> = Result<T, CoreError>;
