//! The embedded search backend: PostgreSQL full text over `kb_search_docs` (a tsvector
//! kept by trigger with per-locale text search configurations and weights title A,
//! tags B, body C) combined with pg_trgm word similarity on titles so misspelled queries
//! ("pasword reest") still find "Password reset". Snippets come from `ts_headline`.

use super::{IndexDoc, SearchBackend, SearchHit, SearchQuery, SearchResults};
use crate::KbError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// PostgreSQL full-text backend.
pub struct PostgresBackend {
    pool: PgPool,
    trigram_threshold: f32,
}

impl PostgresBackend {
    /// A backend on the hub's database.
    pub fn new(pool: PgPool, trigram_threshold: f32) -> PostgresBackend {
        PostgresBackend { pool, trigram_threshold }
    }

    async fn query(&self, query: &SearchQuery, similar_titles: bool) -> Result<Vec<HitRow>, KbError> {
        let mut tx = self.pool.begin().await?;
        if similar_titles {
            // `<%` uses this threshold (and the trigram index); local to the transaction.
            sqlx::query("select set_config('pg_trgm.word_similarity_threshold', $1, true)")
                .bind(self.trigram_threshold.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let rows: Vec<HitRow> = sqlx::query_as(SEARCH_SQL)
            .bind(query.q.trim())
            .bind(query.locale.as_deref())
            .bind(&query.statuses)
            .bind(query.public_only)
            .bind(query.category.as_deref())
            .bind(query.tag.as_deref())
            .bind(query.limit)
            .bind(query.offset)
            .bind(query.match_any)
            .bind(similar_titles)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows)
    }
}

#[derive(sqlx::FromRow)]
struct HitRow {
    article_id: Uuid,
    title: String,
    body_text: String,
    category: String,
    tags: Vec<String>,
    locale: String,
    status: String,
    public: bool,
    updated_at: DateTime<Utc>,
    total: i64,
    score: f32,
    title_hl: String,
    snippet: String,
}

// With a locale filter the query is parsed with that locale's configuration; without,
// with every configured language OR'ed, so stems match whatever language a document is
// in. `match_any` ($9) turns the AND of plain words into an OR (agent assist);
// `similar_titles` ($10) adds titles within trigram word similarity of the query.
const SEARCH_SQL: &str = r#"
with q as (
    select case
        when $1 = '' then null
        when $9 and $2::text is not null then replace(plainto_tsquery(kb_ts_config($2), $1)::text, '&', '|')::tsquery
        when $9 then replace(plainto_tsquery('english', $1)::text, '&', '|')::tsquery
                  || replace(plainto_tsquery('spanish', $1)::text, '&', '|')::tsquery
                  || replace(plainto_tsquery('german', $1)::text, '&', '|')::tsquery
                  || replace(plainto_tsquery('french', $1)::text, '&', '|')::tsquery
                  || replace(plainto_tsquery('simple', $1)::text, '&', '|')::tsquery
        when $2::text is not null then websearch_to_tsquery(kb_ts_config($2), $1)
        else websearch_to_tsquery('english', $1) || websearch_to_tsquery('spanish', $1)
          || websearch_to_tsquery('german', $1) || websearch_to_tsquery('french', $1)
          || websearch_to_tsquery('simple', $1)
    end as tsq
), matched as (
    select d.*, count(*) over () as total,
           case when q.tsq is null then 0
                else ts_rank_cd(d.tsv, q.tsq) + case when $10 then word_similarity($1, d.title) else 0 end
           end as score
    from kb_search_docs d, q
    where (q.tsq is null or d.tsv @@ q.tsq or ($10 and $1 <% d.title))
      and d.status = any($3)
      and (not $4 or d.public)
      and ($5::text is null or d.category = $5)
      and ($2::text is null or lower(d.locale) = lower($2) or lower(d.locale) like lower($2) || '-%')
      and ($6::text is null or d.tags @> array[$6::text])
    order by score desc, d.updated_at desc, d.article_id
    limit $7 offset $8
)
select m.article_id, m.title, m.body_text, m.category, m.tags, m.locale, m.status, m.public, m.updated_at, m.total, m.score::float4 as score,
       case when q.tsq is null then m.title
            else ts_headline(m.ts_config, m.title, q.tsq, 'HighlightAll=true, StartSel=' || chr(1) || ', StopSel=' || chr(2))
       end as title_hl,
       case when q.tsq is null then left(m.body_text, 240)
            else ts_headline(m.ts_config, m.body_text, q.tsq,
                 'MaxWords=30, MinWords=12, MaxFragments=2, FragmentDelimiter=" … ", StartSel=' || chr(1) || ', StopSel=' || chr(2))
       end as snippet
from matched m, q
order by m.score desc, m.updated_at desc, m.article_id
"#;

#[async_trait]
impl SearchBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn configure(&self) -> Result<(), KbError> {
        // The table, trigger and indexes come from the migration.
        Ok(())
    }

    async fn apply(&self, upserts: &[IndexDoc], deletes: &[Uuid]) -> Result<(), KbError> {
        let mut tx = self.pool.begin().await?;
        if !deletes.is_empty() {
            sqlx::query("delete from kb_search_docs where article_id = any($1)").bind(deletes).execute(&mut *tx).await?;
        }
        if !upserts.is_empty() {
            let docs = serde_json::to_value(upserts).map_err(|e| KbError::Internal(e.to_string()))?;
            sqlx::query(
                "insert into kb_search_docs (article_id, title, body_text, category, tags, locale, status, public, updated_at)
                 select id, title, body_text, category, tags, locale, status, public, updated_at
                 from jsonb_to_recordset($1) as x(id uuid, title text, body_text text, category text, tags text[],
                                                  locale text, status text, public boolean, updated_at timestamptz)
                 on conflict (article_id) do update set title = excluded.title, body_text = excluded.body_text,
                     category = excluded.category, tags = excluded.tags, locale = excluded.locale,
                     status = excluded.status, public = excluded.public, updated_at = excluded.updated_at",
            )
            .bind(docs)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchResults, KbError> {
        let mut rows = self.query(query, false).await?;
        // Nothing spelled like that: fall back to titles that look alike ("pasword reest").
        if rows.is_empty() && query.offset == 0 && !query.match_any && !query.q.trim().is_empty() {
            rows = self.query(query, true).await?;
        } else if rows.is_empty() && query.offset > 0 && !query.match_any && !query.q.trim().is_empty() {
            let mut first = query.clone();
            first.offset = 0;
            first.limit = 1;
            if self.query(&first, false).await?.is_empty() {
                rows = self.query(query, true).await?;
            }
        }
        let total = rows.first().map(|r| r.total.max(0) as u64).unwrap_or(0);
        let hits = rows
            .into_iter()
            .map(|r| SearchHit {
                score: f64::from(r.score),
                title_highlighted: r.title_hl,
                snippet: r.snippet,
                doc: IndexDoc {
                    id: r.article_id,
                    title: r.title,
                    body_text: r.body_text,
                    category: r.category,
                    tags: r.tags,
                    locale: r.locale,
                    status: r.status,
                    public: r.public,
                    updated_at: r.updated_at,
                },
            })
            .collect();
        Ok(SearchResults { hits, total })
    }

    async fn retain_only(&self, keep: &[Uuid]) -> Result<(), KbError> {
        sqlx::query("delete from kb_search_docs where article_id <> all($1)").bind(keep).execute(&self.pool).await?;
        Ok(())
    }
}
