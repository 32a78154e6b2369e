//! The `[kb]` configuration section: search backend, Meilisearch connection, per-locale
//! synonyms and stop words, the index worker's pacing, and attachment limits.

use crate::search::query::Vocabulary;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Which search backend serves `/api/v1/kb/search`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// PostgreSQL full-text search plus trigram similarity (embedded default).
    #[default]
    Postgres,
    /// A Meilisearch server.
    Meilisearch,
}

impl BackendKind {
    /// Name shown in the index status.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Postgres => "postgres",
            BackendKind::Meilisearch => "meilisearch",
        }
    }
}

/// Search vocabulary of one locale.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocaleVocabulary {
    /// Words that mean the same (`signin = ["login", "log in"]`): a query for any of them
    /// finds articles with any other, whichever side of the `=` it is on. Both backends
    /// apply them (PostgreSQL on top of its language configuration's stemming).
    #[serde(default)]
    pub synonyms: BTreeMap<String, Vec<String>>,
    /// Words ignored in queries, on both backends (PostgreSQL also drops its language
    /// configuration's own stop words).
    #[serde(default)]
    pub stop_words: Vec<String>,
}

/// The `[kb]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KbConfig {
    /// Search backend: `"postgres"` (default) or `"meilisearch"`.
    #[serde(default)]
    pub backend: BackendKind,
    /// Meilisearch base URL (backend = "meilisearch").
    #[serde(default = "default_meilisearch_url")]
    pub meilisearch_url: String,
    /// Meilisearch API key (master or an admin key); never logged.
    #[serde(default)]
    pub meilisearch_api_key: Option<SecretString>,
    /// Meilisearch index name.
    #[serde(default = "default_index_name")]
    pub index_name: String,
    /// Synonyms and stop words per locale (`[kb.locales.en]`).
    #[serde(default)]
    pub locales: BTreeMap<String, LocaleVocabulary>,
    /// How often the index worker polls the outbox when not woken by an edit (ms).
    #[serde(default = "default_poll_interval_ms")]
    pub worker_poll_interval_ms: u64,
    /// First retry delay after a failed indexing attempt (ms); doubles per attempt.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Upper bound of the retry delay (ms).
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Attempts before an outbox row stops being retried automatically (it stays in the
    /// lag figures and is retried by `switchboard kb reindex`).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: i32,
    /// Outbox rows applied per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: i64,
    /// Timeout of one Meilisearch request or task wait (ms).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Trigram word similarity (0..1) above which a title matches a misspelled query
    /// (PostgreSQL backend).
    #[serde(default = "default_trigram_threshold")]
    pub trigram_threshold: f32,
    /// Largest attachment accepted (bytes).
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: usize,
    /// Content types accepted for attachments.
    #[serde(default = "default_attachment_types")]
    pub attachment_types: Vec<String>,
}

fn default_meilisearch_url() -> String {
    "http://127.0.0.1:7700".into()
}
fn default_index_name() -> String {
    "kb_articles".into()
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_retry_base_ms() -> u64 {
    500
}
fn default_retry_max_ms() -> u64 {
    300_000
}
fn default_max_attempts() -> i32 {
    20
}
fn default_batch_size() -> i64 {
    200
}
fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_trigram_threshold() -> f32 {
    0.4
}
fn default_max_attachment_bytes() -> usize {
    10 * 1024 * 1024
}
fn default_attachment_types() -> Vec<String> {
    ["image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"].iter().map(|s| s.to_string()).collect()
}

impl Default for KbConfig {
    fn default() -> Self {
        KbConfig {
            backend: BackendKind::default(),
            meilisearch_url: default_meilisearch_url(),
            meilisearch_api_key: None,
            index_name: default_index_name(),
            locales: BTreeMap::new(),
            worker_poll_interval_ms: default_poll_interval_ms(),
            retry_base_ms: default_retry_base_ms(),
            retry_max_ms: default_retry_max_ms(),
            max_attempts: default_max_attempts(),
            batch_size: default_batch_size(),
            request_timeout_ms: default_request_timeout_ms(),
            trigram_threshold: default_trigram_threshold(),
            max_attachment_bytes: default_max_attachment_bytes(),
            attachment_types: default_attachment_types(),
        }
    }
}

impl KbConfig {
    /// Parses the `[kb]` section (absent → defaults) and checks values, reporting every
    /// problem at once.
    pub fn from_toml(value: Option<toml::Value>) -> Result<KbConfig, crate::KbError> {
        let cfg: KbConfig = match value {
            None => KbConfig::default(),
            Some(v) => v.try_into().map_err(|e: toml::de::Error| crate::KbError::Config(e.to_string()))?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks value ranges.
    pub fn validate(&self) -> Result<(), crate::KbError> {
        let mut problems = Vec::new();
        if self.worker_poll_interval_ms == 0 {
            problems.push("worker_poll_interval_ms must be > 0");
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            problems.push("retry_base_ms must be > 0 and <= retry_max_ms");
        }
        if self.max_attempts < 1 {
            problems.push("max_attempts must be >= 1");
        }
        if !(1..=1000).contains(&self.batch_size) {
            problems.push("batch_size must be between 1 and 1000");
        }
        if !(0.0..=1.0).contains(&self.trigram_threshold) {
            problems.push("trigram_threshold must be between 0 and 1");
        }
        if self.index_name.is_empty() || !self.index_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            problems.push("index_name must be non-empty and use only A-Z a-z 0-9 _ -");
        }
        if self.backend == BackendKind::Meilisearch && !self.meilisearch_url.starts_with("http") {
            problems.push("meilisearch_url must be an http(s) URL");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(crate::KbError::Config(problems.join("; ")))
        }
    }

    /// Synonyms and stop words of every locale merged (Meilisearch has one index for
    /// all locales; PostgreSQL uses it for queries without a locale).
    pub fn merged_vocabulary(&self) -> Vocabulary {
        let stop_words: Vec<String> = self.locales.values().flat_map(|v| v.stop_words.iter().cloned()).collect();
        Vocabulary::new(self.locales.values().flat_map(|v| v.synonyms.iter()), &stop_words)
    }

    /// Vocabulary per configured locale (key: primary subtag, `en` for `en-US`; `en` and
    /// `en-GB` sections both count for `en`).
    pub fn locale_vocabularies(&self) -> BTreeMap<String, Vocabulary> {
        let mut by_language: BTreeMap<String, Vec<&LocaleVocabulary>> = BTreeMap::new();
        for (l, v) in &self.locales {
            by_language.entry(primary_subtag(l)).or_default().push(v);
        }
        by_language
            .into_iter()
            .map(|(l, vs)| {
                let stop_words: Vec<String> = vs.iter().flat_map(|v| v.stop_words.iter().cloned()).collect();
                (l, Vocabulary::new(vs.iter().flat_map(|v| v.synonyms.iter()), &stop_words))
            })
            .collect()
    }
}

/// `en-US` → `en`.
pub fn primary_subtag(locale: &str) -> String {
    locale.split(['-', '_']).next().unwrap_or("").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_fields() {
        let c = KbConfig::from_toml(None).expect("defaults");
        assert_eq!(c.backend, BackendKind::Postgres);
        let v: toml::Value = toml::from_str("backend = \"meilisearch\"\nbogus = 1").expect("toml");
        assert!(KbConfig::from_toml(Some(v)).is_err());
        let v: toml::Value =
            toml::from_str("backend = \"meilisearch\"\nmeilisearch_api_key = \"k\"\n[locales.en]\nsynonyms = { signin = [\"login\"] }\nstop_words = [\"the\"]")
                .expect("toml");
        let c = KbConfig::from_toml(Some(v)).expect("valid");
        let merged = c.merged_vocabulary();
        assert_eq!(merged.symmetric_synonyms()["signin"], vec!["login".to_string()]);
        assert_eq!(merged.symmetric_synonyms()["login"], vec!["signin".to_string()]);
        assert_eq!(merged.stop_words(), vec!["the".to_string()]);
        assert!(!format!("{c:?}").contains("\"k\""));
    }
}
