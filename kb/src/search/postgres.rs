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
        let q = query.q.trim();
        let mut tx = self.pool.begin().await?;
        let (sql, tsq) = if q.is_empty() {
            (search_sql("true", "0", false), None)
        } else {
            let tsq: Option<String> =
                sqlx::query_scalar(TSQUERY_SQL).bind(q).bind(query.locale.as_deref()).bind(query.match_any).fetch_one(&mut *tx).await?;
            let sql = if similar_titles {
                // `<%` uses this threshold (and the trigram index); local to the transaction.
                sqlx::query("select set_config('pg_trgm.word_similarity_threshold', $1, true)")
                    .bind(self.trigram_threshold.to_string())
                    .execute(&mut *tx)
                    .await?;
                search_sql("(d.tsv @@ $2::tsquery or $1 <% d.title)", "ts_rank(d.tsv, $2::tsquery) + word_similarity($1, d.title)", true)
            } else {
                search_sql("d.tsv @@ $2::tsquery", "ts_rank(d.tsv, $2::tsquery)", true)
            };
            (sql, tsq)
        };
        let rows: Vec<HitRow> = sqlx::query_as(&sql)
            .bind(q)
            .bind(tsq)
            .bind(&query.statuses)
            .bind(query.public_only)
            .bind(query.category.as_deref())
            .bind(query.locale.as_deref())
            .bind(query.tag.as_deref())
            .bind(query.limit)
            .bind(query.offset)
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

// The tsquery: with a locale filter parsed with that locale's configuration; without,
// with every configured language OR'ed, so stems match whatever language a document is
// in. `match_any` ($3) turns the AND of plain words into an OR (agent assist). It is
// computed first and passed to the search as a parameter so the GIN index is used.
const TSQUERY_SQL: &str = r#"
select (case
    when $3 and $2::text is not null then replace(plainto_tsquery(kb_ts_config($2), $1)::text, '&', '|')::tsquery
    when $3 then replace(plainto_tsquery('english', $1)::text, '&', '|')::tsquery
              || replace(plainto_tsquery('spanish', $1)::text, '&', '|')::tsquery
              || replace(plainto_tsquery('german', $1)::text, '&', '|')::tsquery
              || replace(plainto_tsquery('french', $1)::text, '&', '|')::tsquery
              || replace(plainto_tsquery('simple', $1)::text, '&', '|')::tsquery
    when $2::text is not null then websearch_to_tsquery(kb_ts_config($2), $1)
    else websearch_to_tsquery('english', $1) || websearch_to_tsquery('spanish', $1)
      || websearch_to_tsquery('german', $1) || websearch_to_tsquery('french', $1)
      || websearch_to_tsquery('simple', $1)
end)::text
"#;

/// The search statement for a match condition: `$1` query text, `$2` tsquery, `$3`
/// statuses, `$4` public only, `$5` category, `$6` locale, `$7` tag, `$8` limit,
/// `$9` offset. Text matches rank by weighted `ts_rank` (+ title similarity in the
/// trigram fallback); an empty query lists by recency.
fn search_sql(matching: &str, rank: &str, headline: bool) -> String {
    let (title_hl, snippet) = if headline {
        (
            "ts_headline(d.ts_config, d.title, $2::tsquery, 'HighlightAll=true, StartSel=' || chr(1) || ', StopSel=' || chr(2))",
            "ts_headline(d.ts_config, d.body_text, $2::tsquery,
                 'MaxWords=30, MinWords=12, MaxFragments=2, FragmentDelimiter=\" … \", StartSel=' || chr(1) || ', StopSel=' || chr(2))",
        )
    } else {
        ("d.title", "left(d.body_text, 240)")
    };
    format!(
        "with matched as (
            select d.article_id, d.updated_at, count(*) over () as total, ({rank})::float4 as score
            from kb_search_docs d
            where {matching}
              and d.status = any($3)
              and (not $4 or d.public)
              and ($5::text is null or d.category = $5)
              and ($6::text is null or lower(d.locale) = lower($6) or lower(d.locale) like lower($6) || '-%')
              and ($7::text is null or d.tags @> array[$7::text])
            order by score desc, d.updated_at desc, d.article_id
            limit $8 offset $9
        )
        select m.article_id, d.title, d.body_text, d.category, d.tags, d.locale, d.status, d.public, m.updated_at, m.total, m.score,
               {title_hl} as title_hl, {snippet} as snippet
        from matched m join kb_search_docs d on d.article_id = m.article_id
        order by m.score desc, m.updated_at desc, m.article_id"
    )
}

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
        if upserts.len() >= 50 {
            // Bulk writes sit in the GIN pending lists, which every search then scans
            // linearly until autovacuum; merge them now.
            sqlx::query("select gin_clean_pending_list('kb_search_docs_tsv_idx'::regclass), gin_clean_pending_list('kb_search_docs_title_trgm'::regclass)")
                .execute(&self.pool)
                .await?;
        }
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
