//! Core settings: HTTP, database, router, auth and outbox. Loaded by the binary from
//! `config/default.toml`, an optional file and `SWITCHBOARD__SECTION__KEY` environment
//! overrides; every unknown key is an error naming the key.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::PathBuf;

/// HTTP listener settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to listen on; port 0 picks a free port.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Public base URL printed in links (defaults to `http://<bind>`).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Largest accepted request body in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Directory of static web pages (inbox, dashboard, widget).
    #[serde(default = "default_web_dir")]
    pub web_dir: PathBuf,
}

fn default_bind() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_web_dir() -> PathBuf {
    "web".into()
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings { bind: default_bind(), public_url: None, max_body_bytes: default_max_body(), web_dir: default_web_dir() }
    }
}

/// Database settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// PostgreSQL URL; empty means run the embedded cluster in `data_dir`.
    #[serde(default)]
    pub url: String,
    /// Directory for the embedded cluster and other local data.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Connection pool size.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Longest wait for a pooled connection, in milliseconds. While the database is down a
    /// request fails after this long with 503 `database_unavailable` and `Retry-After`,
    /// rather than hanging; under overload it sheds load the same way.
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
}

fn default_data_dir() -> PathBuf {
    "data".into()
}
fn default_max_connections() -> u32 {
    16
}
fn default_acquire_timeout_ms() -> u64 {
    800
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: String::new(),
            data_dir: default_data_dir(),
            max_connections: default_max_connections(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
        }
    }
}

/// Router (ACD) settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSettings {
    /// Whether this node competes for router leadership.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Most decisions committed in one transaction.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Timer tick in milliseconds (offer timeouts, escalation, wrap-up).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Full state resync from the database every this many seconds.
    #[serde(default = "default_resync")]
    pub resync_secs: u64,
    /// How often a standby tries to take leadership, in milliseconds.
    #[serde(default = "default_standby_ms")]
    pub standby_poll_ms: u64,
    /// Seconds during which an interaction an agent declined (or let ring out) is not
    /// offered to that agent again.
    #[serde(default = "default_decline_skip")]
    pub decline_skip_secs: u64,
    /// Seconds an available or wrap-up agent may have no inbox connection (event stream)
    /// before being set offline (reason `no_connection`); 0 turns this off.
    #[serde(default = "default_presence_grace")]
    pub presence_grace_secs: u64,
    /// Seconds after which a waiting chat whose visitor left is closed as abandoned;
    /// 0 turns this off.
    #[serde(default = "default_abandon_left_chat")]
    pub abandon_left_chat_secs: u64,
}

fn default_true() -> bool {
    true
}
fn default_batch() -> usize {
    256
}
fn default_tick_ms() -> u64 {
    250
}
fn default_resync() -> u64 {
    30
}
fn default_standby_ms() -> u64 {
    500
}
fn default_decline_skip() -> u64 {
    60
}
fn default_presence_grace() -> u64 {
    60
}
fn default_abandon_left_chat() -> u64 {
    600
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            enabled: true,
            batch_size: default_batch(),
            tick_ms: default_tick_ms(),
            resync_secs: default_resync(),
            standby_poll_ms: default_standby_ms(),
            decline_skip_secs: default_decline_skip(),
            presence_grace_secs: default_presence_grace(),
            abandon_left_chat_secs: default_abandon_left_chat(),
        }
    }
}

/// Authentication settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Browser session lifetime in hours.
    #[serde(default = "default_session_hours")]
    pub session_ttl_hours: u32,
    /// Mark the session cookie `Secure` (set when served over HTTPS).
    #[serde(default)]
    pub cookie_secure: bool,
    /// Failed sign-ins for one username within `login_window_secs` before it is locked
    /// (0: never).
    #[serde(default = "default_login_max_failures")]
    pub login_max_failures: u32,
    /// Failed sign-ins from one client address within `login_window_secs` before it is
    /// locked (0: never). Higher than per username: several people may share an address;
    /// the address is the TCP peer, so behind a reverse proxy (all one address) set 0.
    #[serde(default = "default_login_max_failures_per_ip")]
    pub login_max_failures_per_ip: u32,
    /// Seconds over which failed sign-ins are counted.
    #[serde(default = "default_login_window_secs")]
    pub login_window_secs: u64,
    /// First lockout in seconds; each further lockout of the same key doubles it.
    #[serde(default = "default_login_lockout_secs")]
    pub login_lockout_secs: u64,
    /// Longest lockout in seconds.
    #[serde(default = "default_login_lockout_max_secs")]
    pub login_lockout_max_secs: u64,
}

fn default_session_hours() -> u32 {
    12
}
fn default_login_max_failures() -> u32 {
    5
}
fn default_login_max_failures_per_ip() -> u32 {
    20
}
fn default_login_window_secs() -> u64 {
    900
}
fn default_login_lockout_secs() -> u64 {
    60
}
fn default_login_lockout_max_secs() -> u64 {
    3600
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            session_ttl_hours: default_session_hours(),
            cookie_secure: false,
            login_max_failures: default_login_max_failures(),
            login_max_failures_per_ip: default_login_max_failures_per_ip(),
            login_window_secs: default_login_window_secs(),
            login_lockout_secs: default_login_lockout_secs(),
            login_lockout_max_secs: default_login_lockout_max_secs(),
        }
    }
}

/// Outbox worker settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// Poll interval in milliseconds when idle.
    #[serde(default = "default_outbox_poll")]
    pub poll_ms: u64,
    /// Attempts before a message is marked failed.
    #[serde(default = "default_attempts")]
    pub max_attempts: i32,
    /// First retry delay in milliseconds; doubles per attempt, capped at 10 minutes.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Delivery loops per node working the outbox at once (claims use SKIP LOCKED), so a
    /// campaign is not limited to one message per round trip.
    #[serde(default = "default_outbox_workers")]
    pub workers: usize,
    /// Seconds a row stays claimed (`sending`) before another node may take it over after
    /// a crash; the channel then decides (SMS: a submit that may have gone is `unknown`).
    #[serde(default = "default_sending_lease")]
    pub sending_lease_secs: u64,
    /// Rows one delivery loop claims at once (delivered concurrently, outcomes recorded in
    /// one transaction).
    #[serde(default = "default_claim_batch")]
    pub claim_batch: usize,
}

fn default_outbox_poll() -> u64 {
    500
}
fn default_attempts() -> i32 {
    8
}
fn default_backoff() -> u64 {
    1000
}
fn default_outbox_workers() -> usize {
    4
}
fn default_sending_lease() -> u64 {
    300
}
fn default_claim_batch() -> usize {
    64
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            poll_ms: default_outbox_poll(),
            max_attempts: default_attempts(),
            backoff_ms: default_backoff(),
            workers: default_outbox_workers(),
            sending_lease_secs: default_sending_lease(),
            claim_batch: default_claim_batch(),
        }
    }
}

/// Everything core needs.
#[derive(Debug, Clone, Default)]
pub struct CoreSettings {
    /// HTTP.
    pub http: HttpSettings,
    /// Database.
    pub database: DatabaseSettings,
    /// Router.
    pub router: RouterSettings,
    /// Auth.
    pub auth: AuthSettings,
    /// Outbox.
    pub outbox: OutboxSettings,
    /// Cluster membership and call ownership.
    pub cluster: crate::cluster::ClusterSettings,
    /// Where recordings and attachments are stored.
    pub files: crate::files::FilesSettings,
}

/// A configuration problem: the key path and the reason.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct ConfigError {
    /// Dotted key path (`http.bind`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Merges `SWITCHBOARD__A__B=value` environment variables into a TOML table
/// (`a.b = value`). Values parse as TOML scalars when they can, else as strings.
pub fn apply_env_overrides(root: &mut toml::Table, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    for (k, v) in vars {
        let Some(path) = k.strip_prefix("SWITCHBOARD__") else { continue };
        let keys: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(ConfigError { key: k.clone(), reason: "empty key segment in environment variable".into() });
        }
        let value = parse_scalar(&v);
        let mut table = &mut *root;
        for (i, key) in keys.iter().enumerate() {
            if i + 1 == keys.len() {
                table.insert(key.clone(), value.clone());
            } else {
                let entry = table.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                table = entry.as_table_mut().ok_or_else(|| ConfigError {
                    key: keys[..=i].join("."),
                    reason: format!("{k} overrides inside a value that is not a table"),
                })?;
            }
        }
    }
    Ok(())
}

fn parse_scalar(v: &str) -> toml::Value {
    let doc = format!("x = {v}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("x").unwrap_or_else(|| toml::Value::String(v.to_string())),
        Err(_) => toml::Value::String(v.to_string()),
    }
}

/// Deserializes a typed section from a TOML value, reporting the full key path on error.
pub fn typed<T: DeserializeOwned>(prefix: &str, value: toml::Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            prefix.to_string()
        } else if prefix.is_empty() {
            path
        } else {
            format!("{prefix}.{path}")
        };
        ConfigError { key, reason: e.into_inner().to_string() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_nest_and_parse() {
        let mut t: toml::Table = "[http]\nbind = \"a\"".parse().unwrap();
        apply_env_overrides(
            &mut t,
            vec![
                ("SWITCHBOARD__HTTP__BIND".into(), "127.0.0.1:0".into()),
                ("SWITCHBOARD__ROUTER__BATCH_SIZE".into(), "12".into()),
                ("OTHER".into(), "x".into()),
            ],
        )
        .unwrap();
        assert_eq!(t["http"]["bind"].as_str(), Some("127.0.0.1:0"));
        assert_eq!(t["router"]["batch_size"].as_integer(), Some(12));
    }

    #[test]
    fn typed_errors_name_the_key() {
        let v: toml::Value = toml::Value::Table("bind = 5".parse().unwrap());
        let e = typed::<HttpSettings>("http", v).unwrap_err();
        assert_eq!(e.key, "http.bind");
        let v: toml::Value = toml::Value::Table("bnid = \"x\"".parse().unwrap());
        let e = typed::<HttpSettings>("http", v).unwrap_err();
        assert!(e.reason.contains("bnid"), "{e}");
    }
}
