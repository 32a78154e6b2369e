//! Typed settings of the whole binary: core's sections plus the channel list and module
//! sections, layered defaults → file → environment.

use serde::Deserialize;
use std::path::Path;
use switchboard_core::config::{
    self, AuthSettings, ConfigError, CoreSettings, DatabaseSettings, HttpSettings, OutboxSettings, RouterSettings,
};

/// The built-in defaults (the committed `config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// All settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// HTTP.
    #[serde(default)]
    pub http: HttpSettings,
    /// Database.
    #[serde(default)]
    pub database: DatabaseSettings,
    /// Router.
    #[serde(default)]
    pub router: RouterSettings,
    /// Auth.
    #[serde(default)]
    pub auth: AuthSettings,
    /// Outbox.
    #[serde(default)]
    pub outbox: OutboxSettings,
    /// Cluster membership and call ownership.
    #[serde(default)]
    pub cluster: switchboard_core::cluster::ClusterSettings,
    /// Where recordings and attachments are stored (`dir` or `s3`).
    #[serde(default)]
    pub files: switchboard_core::files::FilesSettings,
    /// Channel adapters, each chosen by `type`.
    #[serde(default)]
    pub channels: Vec<toml::Value>,
    /// CRM module settings.
    #[serde(default)]
    pub crm: Option<toml::Value>,
    /// Knowledge-base module settings.
    #[serde(default)]
    pub kb: Option<toml::Value>,
    /// Reports and wallboard settings (`[reports]`, see docs/metrics.md).
    #[serde(default)]
    pub reports: Option<toml::Value>,
}

impl Settings {
    /// Core's part.
    pub fn core(&self) -> CoreSettings {
        CoreSettings {
            http: self.http.clone(),
            database: self.database.clone(),
            router: self.router.clone(),
            auth: self.auth.clone(),
            outbox: self.outbox.clone(),
            cluster: self.cluster.clone(),
            files: self.files.clone(),
        }
    }

    /// Loads defaults, then `file` (if any), then environment overrides.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Settings, ConfigError> {
        let mut root: toml::Table =
            DEFAULT_TOML.parse().map_err(|e: toml::de::Error| ConfigError { key: "config/default.toml".into(), reason: e.to_string() })?;
        if let Some(f) = file {
            let text = std::fs::read_to_string(f).map_err(|e| ConfigError { key: f.display().to_string(), reason: e.to_string() })?;
            let over: toml::Table =
                text.parse().map_err(|e: toml::de::Error| ConfigError { key: f.display().to_string(), reason: e.to_string() })?;
            merge(&mut root, over);
        }
        config::apply_env_overrides(&mut root, env)?;
        let s: Settings = config::typed("", toml::Value::Table(root))?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.http.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError {
                key: "http.bind".into(),
                reason: format!("`{}` is not an address like 127.0.0.1:8080", self.http.bind),
            });
        }
        if self.http.max_body_bytes < 1024 {
            return Err(ConfigError { key: "http.max_body_bytes".into(), reason: "must be at least 1024".into() });
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError { key: "database.max_connections".into(), reason: "must be at least 1".into() });
        }
        if self.database.acquire_timeout_ms == 0 {
            return Err(ConfigError { key: "database.acquire_timeout_ms".into(), reason: "must be at least 1".into() });
        }
        if self.router.batch_size == 0 || self.router.tick_ms == 0 {
            return Err(ConfigError { key: "router".into(), reason: "batch_size and tick_ms must be positive".into() });
        }
        self.files.validate()?;
        for (i, c) in self.channels.iter().enumerate() {
            if c.get("type").and_then(|t| t.as_str()).is_none() {
                return Err(ConfigError { key: format!("channels[{i}].type"), reason: "missing (e.g. type = \"webchat\")".into() });
            }
        }
        Ok(())
    }
}

/// Deep-merges `over` into `base` (tables merge, everything else replaces).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load() {
        let s = Settings::load(None, Vec::new()).unwrap();
        assert_eq!(s.http.bind, "127.0.0.1:8080");
        assert!(s.database.url.is_empty());
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Settings::load(None, vec![("SWITCHBOARD__HTTP__BIND".into(), "nonsense".into())]).unwrap_err();
        assert_eq!(e.key, "http.bind");
        let e = Settings::load(None, vec![("SWITCHBOARD__ROUTER__BATCH_SIZE".into(), "\"many\"".into())]).unwrap_err();
        assert_eq!(e.key, "router.batch_size", "{e}");
        let e = Settings::load(None, vec![("SWITCHBOARD__HTTP__PORTT".into(), "1".into())]).unwrap_err();
        assert!(e.reason.contains("portt"), "{e}");
    }
}
