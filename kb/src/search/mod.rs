//! The [`SearchBackend`] trait the API and the index worker talk to, the document and
//! query shapes, and the two implementations: PostgreSQL full text ([`postgres`]) and
//! Meilisearch ([`meili`]).

pub mod meili;
pub mod postgres;
pub mod query;

use crate::config::{BackendKind, KbConfig};
use crate::KbError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// One article as the search index holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexDoc {
    /// Article id.
    pub id: Uuid,
    /// Title.
    pub title: String,
    /// Body as plain text (Markdown stripped).
    pub body_text: String,
    /// Category.
    pub category: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Locale (`en`, `es-MX`, …).
    pub locale: String,
    /// draft / published / archived.
    pub status: String,
    /// Shown on the public portal.
    pub public: bool,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A search request after the API applied the caller's visibility.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// Query text (may be empty: list by recency).
    pub q: String,
    /// Only this category.
    pub category: Option<String>,
    /// Only this locale.
    pub locale: Option<String>,
    /// Only articles with this tag.
    pub tag: Option<String>,
    /// Statuses the caller may see (never empty).
    pub statuses: Vec<String>,
    /// Only public articles (portal).
    pub public_only: bool,
    /// Page size.
    pub limit: i64,
    /// Offset.
    pub offset: i64,
    /// Match any word rather than all (agent assist: the query is a whole message).
    pub match_any: bool,
}

/// One search hit. Highlighted fields carry [`crate::markdown::HIT_START`] /
/// [`crate::markdown::HIT_END`] markers around matches, unescaped.
#[derive(Debug, Clone)]
pub struct SearchHit {
    /// The document.
    pub doc: IndexDoc,
    /// Title with match markers.
    pub title_highlighted: String,
    /// Body excerpt with match markers.
    pub snippet: String,
    /// Backend relevance (higher is better; comparable within one backend only).
    pub score: f64,
}

/// A page of hits.
#[derive(Debug, Clone, Default)]
pub struct SearchResults {
    /// Hits in rank order.
    pub hits: Vec<SearchHit>,
    /// Total matches (estimated by Meilisearch).
    pub total: u64,
}

/// A search index the knowledge base writes to (through the outbox) and queries.
#[async_trait]
pub trait SearchBackend: Send + Sync {
    /// `postgres` or `meilisearch`.
    fn name(&self) -> &'static str;
    /// Creates the index and applies its settings (idempotent).
    async fn configure(&self) -> Result<(), KbError>;
    /// Upserts and deletes documents; returns once the index shows the change.
    async fn apply(&self, upserts: &[IndexDoc], deletes: &[Uuid]) -> Result<(), KbError>;
    /// Runs a query.
    async fn search(&self, query: &SearchQuery) -> Result<SearchResults, KbError>;
    /// Deletes every document whose id is not in `keep` (after a full reindex).
    async fn retain_only(&self, keep: &[Uuid]) -> Result<(), KbError>;
}

/// Builds the configured backend.
pub fn build_backend(pool: &PgPool, config: &KbConfig) -> Result<Arc<dyn SearchBackend>, KbError> {
    Ok(match config.backend {
        BackendKind::Postgres => Arc::new(postgres::PostgresBackend::new(pool.clone(), config)),
        BackendKind::Meilisearch => Arc::new(meili::MeiliBackend::new(config)?),
    })
}

/// Words too common to carry meaning in a customer message (en, es, de, fr).
#[rustfmt::skip]
const COMMON_WORDS: &[&str] = &[
    "the", "and", "for", "you", "your", "are", "was", "but", "not", "how", "what", "when", "can", "could", "would", "this", "that",
    "with", "have", "has", "had", "from", "they", "them", "there", "here", "please", "thanks", "thank", "hello", "need", "want",
    "does", "did", "its", "it's", "i'm", "cannot", "can't", "don't", "just", "about", "some", "any", "all", "one", "get", "got",
    "por", "para", "que", "con", "los", "las", "una", "uno", "del", "como", "pero", "hola", "gracias", "necesito", "mi", "tengo",
    "und", "die", "der", "das", "ich", "nicht", "ist", "mit", "ein", "eine", "hallo", "danke", "les", "des", "une", "est", "pas",
    "pour", "avec", "bonjour", "merci", "mon", "je", "vous",
];

/// Distinct meaningful words of a text, in order, at most `max` (agent assist queries).
pub fn keywords(text: &str, max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in text.split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-') {
        let w = w.trim_matches(|c: char| c == '\'' || c == '-').to_lowercase();
        if w.chars().count() < 3 || COMMON_WORDS.contains(&w.as_str()) || out.contains(&w) {
            continue;
        }
        out.push(w);
        if out.len() == max {
            break;
        }
    }
    out
}
