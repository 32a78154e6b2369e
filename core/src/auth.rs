//! Authentication and authorization: argon2 password hashes (hashed off the async
//! runtime), browser sessions in an HttpOnly SameSite=Strict cookie with a CSRF token
//! required on unsafe methods, bearer API tokens for machines, and role checks.

use crate::domain::Role;
use crate::error::{CoreError, CoreResult};
use crate::hub::Hub;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// Session cookie name.
pub const SESSION_COOKIE: &str = "sb_session";
/// Header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Hashes a password with argon2id on a blocking thread.
pub async fn hash_password(password: String) -> CoreResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| CoreError::Internal(format!("argon2: {e}")))
    })
    .await
    .map_err(|e| CoreError::Internal(e.to_string()))?
}

/// Verifies a password against a stored hash on a blocking thread.
pub async fn verify_password(password: String, hash: String) -> CoreResult<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|e| CoreError::Internal(format!("stored hash: {e}")))?;
        Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .map_err(|e| CoreError::Internal(e.to_string()))?
}

/// A random URL-safe secret of 32 bytes.
pub fn random_secret() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// SHA-256 of a secret, as stored.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A user account.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    /// Id.
    pub id: Uuid,
    /// Login name.
    pub username: String,
    /// Display name.
    pub display_name: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Disabled accounts cannot sign in.
    pub disabled: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// Columns for [`User`].
pub const USER_COLUMNS: &str = "id, username, display_name, roles, disabled, created_at";

/// Validates a password's strength.
pub fn check_password(p: &str) -> CoreResult<()> {
    if p.chars().count() < 8 {
        return Err(CoreError::field("password", "must be at least 8 characters"));
    }
    if p.len() > 1024 {
        return Err(CoreError::field("password", "must be at most 1024 bytes"));
    }
    Ok(())
}

/// Validates a username.
pub fn check_username(u: &str) -> CoreResult<()> {
    if u.is_empty() || u.len() > 100 || !u.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)) {
        return Err(CoreError::field("username", "1-100 characters: letters, digits, . _ - @"));
    }
    Ok(())
}

/// Creates a user (and records it in the audit log).
pub async fn create_user(
    db: &PgPool,
    actor: Option<Uuid>,
    username: &str,
    display_name: &str,
    password: &str,
    roles: &[Role],
) -> CoreResult<User> {
    check_username(username)?;
    check_password(password)?;
    let hash = hash_password(password.to_string()).await?;
    let roles: Vec<String> = roles.iter().map(|r| r.as_str().to_string()).collect();
    let mut tx = db.begin().await?;
    let u: User = sqlx::query_as(&format!(
        "insert into users (username, display_name, password_hash, roles) values ($1, $2, $3, $4) returning {USER_COLUMNS}"
    ))
    .bind(username)
    .bind(display_name)
    .bind(hash)
    .bind(&roles)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if crate::error::is_unique_violation(&e) {
            CoreError::Conflict(format!("username `{username}` is taken"))
        } else {
            e.into()
        }
    })?;
    audit(&mut tx, actor, "user.create", "user", &u.id.to_string(), serde_json::json!({ "username": username, "roles": roles })).await?;
    tx.commit().await?;
    Ok(u)
}

/// Appends to the audit log.
pub async fn audit(
    conn: &mut sqlx::PgConnection,
    actor: Option<Uuid>,
    action: &str,
    kind: &str,
    id: &str,
    details: serde_json::Value,
) -> CoreResult<()> {
    sqlx::query("insert into audit_log (actor_user_id, action, target_kind, target_id, details) values ($1, $2, $3, $4, $5)")
        .bind(actor)
        .bind(action)
        .bind(kind)
        .bind(id)
        .bind(details)
        .execute(conn)
        .await?;
    Ok(())
}

/// Why a sign-in failed (recorded in the audit log; the client only hears 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// No such user.
    UnknownUser,
    /// The password does not match.
    BadPassword,
    /// The account is disabled.
    Disabled,
}

impl LoginFailure {
    /// Stable name for the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::UnknownUser => "unknown_user",
            LoginFailure::BadPassword => "bad_password",
            LoginFailure::Disabled => "disabled",
        }
    }
}

/// Checks a username/password; returns the user when valid.
pub async fn authenticate(db: &PgPool, username: &str, password: &str) -> CoreResult<Option<User>> {
    Ok(check_credentials(db, username, password).await?.ok())
}

/// Checks a username/password; returns the user, or why not.
pub async fn check_credentials(db: &PgPool, username: &str, password: &str) -> CoreResult<Result<User, LoginFailure>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id: Uuid,
        password_hash: String,
        disabled: bool,
    }
    let row: Option<Row> =
        sqlx::query_as("select id, password_hash, disabled from users where username = $1").bind(username).fetch_optional(db).await?;
    let Some(row) = row else {
        // Spend the same time as a real check so usernames can't be probed by timing.
        let _ = hash_password(password.to_string()).await;
        return Ok(Err(LoginFailure::UnknownUser));
    };
    if !verify_password(password.to_string(), row.password_hash).await? {
        return Ok(Err(LoginFailure::BadPassword));
    }
    if row.disabled {
        return Ok(Err(LoginFailure::Disabled));
    }
    let user: Option<User> =
        sqlx::query_as(&format!("select {USER_COLUMNS} from users where id = $1")).bind(row.id).fetch_optional(db).await?;
    Ok(user.ok_or(LoginFailure::UnknownUser))
}

/// The peer address of a request (the server runs with connect info). Proxies'
/// `X-Forwarded-For` is not trusted: it is the client's to forge.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())))
    }
}

/// Signs a user in with throttling: after `login_max_failures` failures for a username (or
/// `login_max_failures_per_ip` for a client address) within `login_window_secs`, every
/// attempt for it — even with the right password — is refused with
/// [`CoreError::LoginLocked`] until the lockout ends; each further lockout of the same key
/// lasts twice as long, up to `login_lockout_max_secs`. The counters live in PostgreSQL,
/// so all hub nodes share them. Successes, failures (username, address, reason — never the
/// password) and lockouts go to the audit log.
///
/// Each attempt is counted *before* its password is checked, under the counter rows' lock,
/// so concurrent guesses cannot slip past the limit while earlier ones are still being
/// verified; a success gives its count back.
#[tracing::instrument(skip(db, policy, password), fields(ip = ?ip))]
pub async fn sign_in(
    db: &PgPool,
    policy: &crate::config::AuthSettings,
    username: &str,
    password: &str,
    ip: Option<std::net::IpAddr>,
) -> CoreResult<User> {
    let ip_text = ip.map(|i| i.to_string());
    let user_key = format!("user:{}", username.to_lowercase());
    let mut keys = vec![(user_key.clone(), policy.login_max_failures)];
    if let Some(i) = &ip_text {
        keys.push((format!("ip:{i}"), policy.login_max_failures_per_ip));
    }
    // Lock the rows in one order on every node.
    keys.sort();
    let mut tx = db.begin().await?;
    let mut locked_for: Option<f64> = None;
    let mut started: Vec<(String, u64)> = vec![];
    for (key, max) in &keys {
        match count_attempt(&mut tx, policy, key, *max).await? {
            Attempt::Locked(secs) => locked_for = Some(locked_for.unwrap_or(0.0).max(secs)),
            Attempt::Counted { lockout_secs: Some(secs) } => started.push((key.clone(), secs)),
            Attempt::Counted { lockout_secs: None } => {}
        }
    }
    if let Some(w) = locked_for {
        // A locked key is refused before any password check, so guessing gains nothing;
        // such refusals are logged, not audited (a flood must not flood the audit log).
        tx.rollback().await?;
        tracing::info!(username, "Sign-in refused: locked after too many failures.");
        return Err(CoreError::LoginLocked { retry_after_secs: w.ceil().max(1.0) as u64 });
    }
    tx.commit().await?;
    let outcome = if username.len() > 100 || password.len() > 1024 {
        Err(LoginFailure::UnknownUser)
    } else {
        check_credentials(db, username, password).await?
    };
    let mut tx = db.begin().await?;
    let result = match outcome {
        Ok(user) => {
            // The username starts over (a lock this attempt started included); the address
            // only gets this attempt back: one good account must not clear the count of
            // guesses at others from the same place.
            sqlx::query("delete from login_throttle where key = $1").bind(&user_key).execute(&mut *tx).await?;
            sqlx::query("update login_throttle set failures = greatest(failures - 1, 0) where key like 'ip:%' and key = any($1)")
                .bind(keys.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
            started.retain(|(k, _)| *k != user_key);
            let details = serde_json::json!({ "username": user.username, "ip": ip_text });
            audit(&mut tx, Some(user.id), "auth.login", "user", &user.id.to_string(), details).await?;
            Ok(user)
        }
        Err(reason) => {
            // Keys quiet for as long as they would be forgiven carry no information: drop
            // them, so guessing many usernames does not grow the table without bound.
            sqlx::query(
                "delete from login_throttle where last_failure_at <= now() - make_interval(secs => $1)
                   and (locked_until is null or locked_until <= now())",
            )
            .bind((policy.login_window_secs + policy.login_lockout_max_secs.max(1)) as f64)
            .execute(&mut *tx)
            .await?;
            let details = serde_json::json!({ "username": username, "ip": ip_text, "reason": reason.as_str() });
            audit(&mut tx, None, "auth.login_failed", "username", username, details).await?;
            Err(CoreError::Unauthenticated)
        }
    };
    for (key, secs) in started {
        tracing::warn!(key, lockout_secs = secs, "Sign-in locked after too many failures.");
        let details = serde_json::json!({ "key": key, "username": username, "ip": ip_text, "lockout_secs": secs });
        audit(&mut tx, None, "auth.lockout", "username", username, details).await?;
    }
    tx.commit().await?;
    result
}

/// What counting one sign-in attempt against a key found.
enum Attempt {
    /// The key is locked for this many more seconds; the attempt was not counted.
    Locked(f64),
    /// Counted; this attempt reached the limit and locked the key for so many seconds.
    Counted { lockout_secs: Option<u64> },
}

/// Counts one attempt against `key` under its row lock (`max` 0: never locks).
async fn count_attempt(conn: &mut sqlx::PgConnection, policy: &crate::config::AuthSettings, key: &str, max: u32) -> CoreResult<Attempt> {
    sqlx::query("insert into login_throttle (key) values ($1) on conflict (key) do nothing").bind(key).execute(&mut *conn).await?;
    let window = policy.login_window_secs as f64;
    let max_lockout = policy.login_lockout_max_secs.max(1) as f64;
    // (seconds still locked, window over, lockouts forgiven, failures, lockouts)
    let (locked, window_over, forgiven, failures, lockouts): (Option<f64>, bool, bool, i32, i32) = sqlx::query_as(
        "select case when locked_until > now() then extract(epoch from locked_until - now())::float8 end,
                window_start <= now() - make_interval(secs => $2),
                last_failure_at <= now() - make_interval(secs => $2 + $3),
                failures, lockouts
         from login_throttle where key = $1 for update",
    )
    .bind(key)
    .bind(window)
    .bind(max_lockout)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(secs) = locked {
        return Ok(Attempt::Locked(secs));
    }
    // A new window starts when the old one is over; lockouts are forgiven after a quiet
    // spell as long as the longest lockout plus a window.
    let failures = if window_over { 1 } else { failures + 1 };
    let lockouts = if forgiven { 0 } else { lockouts };
    if max > 0 && failures as u32 >= max {
        let secs = (policy.login_lockout_secs.max(1) as f64 * 2f64.powi(lockouts.min(30))).min(max_lockout);
        sqlx::query(
            "update login_throttle set failures = 0, window_start = now(), last_failure_at = now(), lockouts = $2 + 1,
                locked_until = now() + make_interval(secs => $3) where key = $1",
        )
        .bind(key)
        .bind(lockouts)
        .bind(secs)
        .execute(&mut *conn)
        .await?;
        return Ok(Attempt::Counted { lockout_secs: Some(secs as u64) });
    }
    sqlx::query(
        "update login_throttle set failures = $2, lockouts = $3, last_failure_at = now(),
            window_start = case when $4 then now() else window_start end where key = $1",
    )
    .bind(key)
    .bind(failures)
    .bind(lockouts)
    .bind(window_over)
    .execute(&mut *conn)
    .await?;
    Ok(Attempt::Counted { lockout_secs: None })
}

/// A new browser session: the cookie secret and its CSRF token.
pub struct NewSession {
    /// Cookie value.
    pub secret: String,
    /// CSRF token for unsafe requests.
    pub csrf: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

/// Starts a session.
pub async fn create_session(db: &PgPool, user: Uuid, ttl_hours: u32) -> CoreResult<NewSession> {
    let secret = random_secret();
    let csrf = random_secret();
    let expires_at = Utc::now() + chrono::Duration::hours(ttl_hours as i64);
    sqlx::query("insert into sessions (id, user_id, csrf_token, expires_at) values ($1, $2, $3, $4)")
        .bind(digest(&secret))
        .bind(user)
        .bind(&csrf)
        .bind(expires_at)
        .execute(db)
        .await?;
    Ok(NewSession { secret, csrf, expires_at })
}

/// Creates an API token; returns (id, secret). Only the digest is stored.
pub async fn create_token(db: &PgPool, user: Uuid, name: &str, expires_at: Option<DateTime<Utc>>) -> CoreResult<(Uuid, String)> {
    if name.trim().is_empty() || name.len() > 100 {
        return Err(CoreError::field("name", "1-100 characters"));
    }
    let secret = format!("sbt_{}", random_secret());
    let id: Uuid =
        sqlx::query_scalar("insert into api_tokens (user_id, name, token_hash, expires_at) values ($1, $2, $3, $4) returning id")
            .bind(user)
            .bind(name)
            .bind(digest(&secret))
            .bind(expires_at)
            .fetch_one(db)
            .await?;
    Ok((id, secret))
}

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthVia {
    /// Browser session cookie.
    Session,
    /// Bearer API token.
    Token,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    /// User id.
    pub user_id: Uuid,
    /// Username.
    pub username: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// The agent record of this user, if any.
    pub agent_id: Option<Uuid>,
    /// How they signed in.
    pub via: AuthVia,
    /// Session id digest (to sign out).
    #[serde(skip)]
    pub session_id: Option<String>,
}

impl Caller {
    /// Whether the caller holds any of the roles.
    pub fn has_any(&self, roles: &[Role]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }
    /// Requires any of the roles.
    pub fn require(&self, roles: &[Role]) -> CoreResult<()> {
        if self.has_any(roles) {
            Ok(())
        } else {
            Err(CoreError::Forbidden)
        }
    }
    /// Admins and supervisors see and act on everything in routing.
    pub fn is_supervisor(&self) -> bool {
        self.has_any(&[Role::Admin, Role::Supervisor])
    }
    /// The agent acting, unless the caller is a supervisor acting for anyone (None).
    pub fn acting_agent(&self) -> CoreResult<Option<Uuid>> {
        if self.is_supervisor() {
            Ok(None)
        } else if self.has_any(&[Role::Agent]) {
            self.agent_id.map(Some).ok_or_else(|| CoreError::Conflict("your user has no agent record".into()))
        } else {
            Err(CoreError::Forbidden)
        }
    }
}

fn cookie_value(parts: &Parts, name: &str) -> Option<String> {
    parts.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

#[derive(sqlx::FromRow)]
struct CallerRow {
    user_id: Uuid,
    username: String,
    roles: Vec<String>,
    disabled: bool,
    agent_id: Option<Uuid>,
    expires_at: Option<DateTime<Utc>>,
    csrf_token: Option<String>,
    revoked: Option<bool>,
}

/// Resolves the caller of a request from the bearer token or the session cookie.
pub async fn caller_from_parts(hub: &Hub, parts: &Parts) -> CoreResult<Caller> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|s| s.trim().to_string());
    // The WebSocket API can't set headers from a browser; allow a token query parameter
    // on the stream only.
    let (row, via, sid) = if let Some(token) = bearer {
        let row: Option<CallerRow> = sqlx::query_as(
            "select u.id as user_id, u.username, u.roles, u.disabled, a.id as agent_id, t.expires_at, null::text as csrf_token, t.revoked
             from api_tokens t join users u on u.id = t.user_id left join agents a on a.user_id = u.id where t.token_hash = $1",
        )
        .bind(digest(&token))
        .fetch_optional(hub.db())
        .await?;
        (row, AuthVia::Token, None)
    } else if let Some(secret) = cookie_value(parts, SESSION_COOKIE) {
        let sid = digest(&secret);
        let row: Option<CallerRow> = sqlx::query_as(
            "select u.id as user_id, u.username, u.roles, u.disabled, a.id as agent_id, s.expires_at, s.csrf_token, false as revoked
             from sessions s join users u on u.id = s.user_id left join agents a on a.user_id = u.id where s.id = $1",
        )
        .bind(&sid)
        .fetch_optional(hub.db())
        .await?;
        (row, AuthVia::Session, Some(sid))
    } else {
        return Err(CoreError::Unauthenticated);
    };
    let row = row.ok_or(CoreError::Unauthenticated)?;
    if row.disabled || row.revoked == Some(true) {
        return Err(CoreError::Unauthenticated);
    }
    if row.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(CoreError::SessionExpired);
    }
    if via == AuthVia::Session && !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if sent.is_none() || sent != row.csrf_token.as_deref() {
            return Err(CoreError::Csrf);
        }
    }
    Ok(Caller {
        user_id: row.user_id,
        username: row.username,
        roles: row.roles.iter().filter_map(|r| r.parse().ok()).collect(),
        agent_id: row.agent_id,
        via,
        session_id: sid,
    })
}

impl FromRequestParts<Hub> for Caller {
    type Rejection = CoreError;
    async fn from_request_parts(parts: &mut Parts, hub: &Hub) -> Result<Self, Self::Rejection> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        let c = caller_from_parts(hub, parts).await?;
        parts.extensions.insert(c.clone());
        Ok(c)
    }
}
