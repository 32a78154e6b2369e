//! The Meilisearch backend (`meilisearch-sdk`): one index for all locales with
//! searchable, filterable and sortable attributes, typo tolerance, and the configured
//! synonyms (made symmetric: Meilisearch reads an entry one way only, from key to
//! values) and stop words, every locale's merged since the index is shared. Writes
//! wait for the Meilisearch task so the outbox row is only deleted once the change is
//! searchable; a failed task is an error the worker retries.

use super::{IndexDoc, SearchBackend, SearchHit, SearchQuery, SearchResults};
use crate::config::KbConfig;
use crate::markdown::{HIT_END, HIT_START};
use crate::KbError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use meilisearch_sdk::client::Client;
use meilisearch_sdk::documents::DocumentsQuery;
use meilisearch_sdk::search::{MatchingStrategies, Selectors};
use meilisearch_sdk::settings::{Settings, TypoToleranceSettings};
use meilisearch_sdk::task_info::TaskInfo;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// Meilisearch backend.
pub struct MeiliBackend {
    client: Client,
    index_name: String,
    timeout: Duration,
    synonyms: HashMap<String, Vec<String>>,
    stop_words: Vec<String>,
}

/// The document as stored in Meilisearch.
#[derive(Debug, Serialize, Deserialize)]
struct MeiliDoc {
    id: Uuid,
    title: String,
    body_text: String,
    category: String,
    tags: Vec<String>,
    locale: String,
    status: String,
    public: bool,
    updated_at: DateTime<Utc>,
    /// Unix seconds, for sorting.
    updated_ts: i64,
}

#[derive(Debug, Deserialize)]
struct IdOnly {
    id: Uuid,
}

impl From<&IndexDoc> for MeiliDoc {
    fn from(d: &IndexDoc) -> Self {
        MeiliDoc {
            id: d.id,
            title: d.title.clone(),
            body_text: d.body_text.clone(),
            category: d.category.clone(),
            tags: d.tags.clone(),
            locale: d.locale.clone(),
            status: d.status.clone(),
            public: d.public,
            updated_at: d.updated_at,
            updated_ts: d.updated_at.timestamp(),
        }
    }
}

fn err(e: impl std::fmt::Display) -> KbError {
    KbError::Backend(format!("meilisearch: {e}"))
}

/// Quotes a value for a Meilisearch filter expression.
fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

impl MeiliBackend {
    /// A client for the configured server (no request is made here).
    pub fn new(config: &KbConfig) -> Result<MeiliBackend, KbError> {
        let key = config.meilisearch_api_key.as_ref().map(|k| k.expose_secret().to_string());
        let client = Client::new(config.meilisearch_url.trim_end_matches('/'), key).map_err(err)?;
        let vocabulary = config.merged_vocabulary();
        Ok(MeiliBackend {
            client,
            index_name: config.index_name.clone(),
            timeout: Duration::from_millis(config.request_timeout_ms),
            synonyms: vocabulary.symmetric_synonyms().into_iter().collect(),
            stop_words: vocabulary.stop_words(),
        })
    }

    async fn wait(&self, task: TaskInfo) -> Result<(), KbError> {
        let task = task.wait_for_completion(&self.client, Some(Duration::from_millis(20)), Some(self.timeout)).await.map_err(err)?;
        if task.is_failure() {
            return Err(err(task.unwrap_failure()));
        }
        Ok(())
    }

    async fn search_all(&self, query: &SearchQuery, q: &str) -> Result<SearchResults, KbError> {
        let mut filters = vec![format!("status IN [{}]", query.statuses.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", "))];
        if query.public_only {
            filters.push("public = true".into());
        }
        if let Some(c) = &query.category {
            filters.push(format!("category = {}", quote(c)));
        }
        if let Some(l) = &query.locale {
            filters.push(format!("locale = {}", quote(l)));
        }
        if let Some(t) = &query.tag {
            filters.push(format!("tags = {}", quote(t)));
        }
        let filter = filters.join(" AND ");
        let sort = ["updated_ts:desc"];
        let crop: &[(&str, Option<usize>)] = &[("body_text", Some(30))];
        let highlight: &[&str] = &["title", "body_text"];
        let index = self.client.index(&self.index_name);
        let mut s = index.search();
        s.with_query(q)
            .with_filter(&filter)
            .with_limit(query.limit.max(0) as usize)
            .with_offset(query.offset.max(0) as usize)
            .with_attributes_to_highlight(Selectors::Some(highlight))
            .with_attributes_to_crop(Selectors::Some(crop))
            .with_crop_marker("…")
            .with_highlight_pre_tag(HIT_START)
            .with_highlight_post_tag(HIT_END);
        if q.is_empty() {
            s.with_sort(&sort);
        }
        s.with_matching_strategy(MatchingStrategies::LAST).with_show_ranking_score(true);
        let res = self.timed(async { s.execute::<MeiliDoc>().await.map_err(err) }).await?;
        let total = res.estimated_total_hits.or(res.total_hits).unwrap_or(res.hits.len()) as u64;
        let hits = res
            .hits
            .into_iter()
            .map(|h| {
                let fmt = h.formatted_result.unwrap_or_default();
                let get = |k: &str| fmt.get(k).and_then(|v| v.as_str()).map(str::to_string);
                let d = h.result;
                SearchHit {
                    score: h.ranking_score.unwrap_or(0.0),
                    title_highlighted: get("title").unwrap_or_else(|| d.title.clone()),
                    snippet: get("body_text").unwrap_or_else(|| d.body_text.chars().take(240).collect()),
                    doc: IndexDoc {
                        id: d.id,
                        title: d.title,
                        body_text: d.body_text,
                        category: d.category,
                        tags: d.tags,
                        locale: d.locale,
                        status: d.status,
                        public: d.public,
                        updated_at: d.updated_at,
                    },
                }
            })
            .collect();
        Ok(SearchResults { hits, total })
    }

    /// Meilisearch matches all words (dropping trailing ones); a customer message needs
    /// "any word", so each keyword is searched and the scores are summed per article.
    async fn search_any(&self, query: &SearchQuery) -> Result<SearchResults, KbError> {
        let mut merged: HashMap<Uuid, SearchHit> = HashMap::new();
        let mut per_word = query.clone();
        per_word.offset = 0;
        per_word.limit = 20;
        for word in super::keywords(&query.q, 8) {
            for hit in self.search_all(&per_word, &word).await?.hits {
                merged.entry(hit.doc.id).and_modify(|h| h.score += hit.score).or_insert(hit);
            }
        }
        let mut hits: Vec<SearchHit> = merged.into_values().collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| b.doc.updated_at.cmp(&a.doc.updated_at)));
        let total = hits.len() as u64;
        let hits = hits.into_iter().skip(query.offset.max(0) as usize).take(query.limit.max(0) as usize).collect();
        Ok(SearchResults { hits, total })
    }

    async fn timed<T>(&self, f: impl std::future::Future<Output = Result<T, KbError>>) -> Result<T, KbError> {
        tokio::time::timeout(self.timeout, f).await.map_err(|_| err("request timed out"))?
    }
}

#[async_trait]
impl SearchBackend for MeiliBackend {
    fn name(&self) -> &'static str {
        "meilisearch"
    }

    async fn configure(&self) -> Result<(), KbError> {
        self.timed(async {
            // Creating an existing index fails the task; that is fine.
            let created = self.client.create_index(&self.index_name, Some("id")).await.map_err(err)?;
            let _ = created.wait_for_completion(&self.client, Some(Duration::from_millis(20)), Some(self.timeout)).await.map_err(err)?;
            let settings = Settings::new()
                .with_searchable_attributes(["title", "tags", "body_text", "category"])
                .with_filterable_attributes(["category", "locale", "tags", "status", "public"])
                .with_sortable_attributes(["updated_ts", "title"])
                .with_typo_tolerance(TypoToleranceSettings { enabled: Some(true), ..Default::default() })
                .with_synonyms(self.synonyms.clone())
                .with_stop_words(self.stop_words.clone());
            let task = self.client.index(&self.index_name).set_settings(&settings).await.map_err(err)?;
            self.wait(task).await
        })
        .await
    }

    async fn apply(&self, upserts: &[IndexDoc], deletes: &[Uuid]) -> Result<(), KbError> {
        self.timed(async {
            let index = self.client.index(&self.index_name);
            if !upserts.is_empty() {
                let docs: Vec<MeiliDoc> = upserts.iter().map(MeiliDoc::from).collect();
                let task = index.add_or_replace(&docs, Some("id")).await.map_err(err)?;
                self.wait(task).await?;
            }
            if !deletes.is_empty() {
                let ids: Vec<String> = deletes.iter().map(|u| u.to_string()).collect();
                let task = index.delete_documents(&ids).await.map_err(err)?;
                self.wait(task).await?;
            }
            Ok(())
        })
        .await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchResults, KbError> {
        if query.match_any {
            return self.search_any(query).await;
        }
        self.search_all(query, query.q.trim()).await
    }

    async fn retain_only(&self, keep: &[Uuid]) -> Result<(), KbError> {
        let keep: HashSet<Uuid> = keep.iter().copied().collect();
        let index = self.client.index(&self.index_name);
        let mut stale: Vec<String> = Vec::new();
        let mut offset = 0usize;
        loop {
            let mut dq = DocumentsQuery::new(&index);
            dq.with_fields(["id"]).with_limit(1000).with_offset(offset);
            let page = self.timed(async { dq.execute::<IdOnly>().await.map_err(err) }).await?;
            let n = page.results.len();
            stale.extend(page.results.into_iter().filter(|d| !keep.contains(&d.id)).map(|d| d.id.to_string()));
            offset += n;
            if n == 0 || offset >= page.total as usize {
                break;
            }
        }
        if !stale.is_empty() {
            let task = self.timed(async { index.delete_documents(&stale).await.map_err(err) }).await?;
            self.timed(self.wait(task)).await?;
        }
        Ok(())
    }
}
