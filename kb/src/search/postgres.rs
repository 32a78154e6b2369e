//! The embedded search backend: PostgreSQL full text over `kb_search_docs` (a tsvector
//! kept by trigger with per-locale text search configurations and weights title A,
//! tags B, body C) combined with pg_trgm word similarity on titles so misspelled queries
//! ("pasword reest") still find "Password reset". The configured synonyms and stop words
//! of the query's locale (all locales' without one) are applied to the query the same way
//! Meilisearch applies them ([`super::query`]). Snippets come from `ts_headline`.

use super::query::{parse, ParsedQuery, Vocabulary};
use super::{IndexDoc, SearchBackend, SearchHit, SearchQuery, SearchResults};
use crate::config::{primary_subtag, KbConfig};
use crate::KbError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::BTreeMap;
use uuid::Uuid;

/// PostgreSQL full-text backend.
pub struct PostgresBackend {
    pool: PgPool,
    trigram_threshold: f32,
    /// Vocabulary per locale primary subtag.
    locales: BTreeMap<String, Vocabulary>,
    /// Every locale's vocabulary merged, for queries without a locale.
    merged: Vocabulary,
}

/// What a text query turned into.
struct TextQuery {
    /// The parsed clauses as JSON (`$8` of the search statements).
    clauses: serde_json::Value,
    /// The wanted words, for the trigram title match.
    plain: String,
}

/// Which documents a search statement matches and how it ranks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Matching {
    /// Everything visible, newest first (no query text).
    Recent,
    /// The tsquery, by weighted `ts_rank`.
    FullText,
    /// Titles that look like the query's words, by trigram word similarity (the
    /// misspelling fallback).
    SimilarTitles,
}

impl PostgresBackend {
    /// A backend on the hub's database with the `[kb]` vocabulary and trigram threshold.
    pub fn new(pool: PgPool, config: &KbConfig) -> PostgresBackend {
        PostgresBackend {
            pool,
            trigram_threshold: config.trigram_threshold,
            locales: config.locale_vocabularies(),
            merged: config.merged_vocabulary(),
        }
    }

    fn vocabulary(&self, locale: Option<&str>) -> Option<&Vocabulary> {
        match locale {
            Some(l) => self.locales.get(&primary_subtag(l)),
            None => Some(&self.merged),
        }
    }

    /// Parses the query text with the locale's vocabulary; `None` when nothing searchable
    /// is left (only stop words or operators).
    fn text_query(&self, query: &SearchQuery) -> Result<Option<TextQuery>, KbError> {
        let empty = Vocabulary::default();
        let ParsedQuery { mut clauses, plain } = parse(query.q.trim(), self.vocabulary(query.locale.as_deref()).unwrap_or(&empty));
        if query.match_any {
            // "Any of these words" has no room for exclusions.
            clauses.retain(|c| !c.negated);
        }
        if clauses.is_empty() {
            return Ok(None);
        }
        let clauses = serde_json::to_value(&clauses).map_err(|e| KbError::Internal(e.to_string()))?;
        Ok(Some(TextQuery { clauses, plain }))
    }

    /// One page of hits, in one statement (one round trip).
    async fn query(&self, query: &SearchQuery, text: Option<&TextQuery>, matching: Matching) -> Result<Vec<HitRow>, KbError> {
        let sql = search_sql(matching);
        let q = sqlx::query_as(&sql)
            .bind(&query.statuses)
            .bind(query.public_only)
            .bind(query.category.as_deref())
            .bind(query.locale.as_deref())
            .bind(query.tag.as_deref())
            .bind(query.limit)
            .bind(query.offset);
        let q = match (matching, text) {
            (Matching::Recent, _) => q,
            (Matching::FullText, Some(t)) => q.bind(&t.clauses).bind(if query.match_any { " | " } else { " & " }),
            (Matching::SimilarTitles, Some(t)) => q.bind(&t.clauses).bind(" & ").bind(t.plain.as_str()).bind(self.trigram_threshold),
            (_, None) => return Err(KbError::Internal("text search without query text".into())),
        };
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// How many documents the search matches (its first row's count).
    async fn total(&self, query: &SearchQuery, text: Option<&TextQuery>, matching: Matching) -> Result<u64, KbError> {
        let first = SearchQuery { offset: 0, limit: 1, ..query.clone() };
        Ok(self.query(&first, text, matching).await?.first().map_or(0, |r| r.total.max(0) as u64))
    }
}

// The tsquery from the parsed clauses ($8, JSON), as CTEs ending in `q` (one row: `tsq`,
// and `excluded`, any of the excluded terms): each alternative (word or phrase) is parsed
// with the locale's text search configuration ($4), or with every configured language
// when there is none so stems match whatever language a document is in; the
// alternatives of a clause are OR'ed, clauses joined with $9 (AND, or OR for agent
// assist), excluded clauses negated. Alternatives that are only the language's stop
// words vanish (numnode = 0); a query of nothing else has a null tsquery. The search
// joins `q` so the tsquery is computed once per statement and the GIN index is probed
// with it (a nested loop from `q`'s one row into a bitmap scan).
const TSQUERY_CTES: &str = "
clause as (
    select c.ord, (c.v ->> 'negated')::boolean as negated, a.alternative
    from jsonb_array_elements($8::jsonb) with ordinality as c(v, ord)
    cross join lateral jsonb_array_elements_text(c.v -> 'alternatives') as a(alternative)
), per_language as (
    select clause.ord, clause.negated, phraseto_tsquery(cfg, clause.alternative) as q
    from clause
    cross join unnest(case when $4::text is null then array['english', 'spanish', 'german', 'french', 'simple']::regconfig[]
                           else array[kb_ts_config($4)] end) as cfg
), per_clause as (
    select ord, negated, string_agg(distinct '(' || q::text || ')', ' | ') as q
    from per_language
    where numnode(q) > 0
    group by ord, negated
), q as materialized (
    select string_agg(case when negated then '!(' || q || ')' else '(' || q || ')' end, $9::text order by ord)::tsquery as tsq,
           string_agg('(' || q || ')', ' | ') filter (where negated)::tsquery as excluded
    from per_clause
),";

/// The search statement. Parameters: `$1` statuses, `$2` public only, `$3` category,
/// `$4` locale, `$5` tag, `$6` limit, `$7` offset; text searches add `$8` clauses and
/// `$9` how they join ([`TSQUERY_CTES`]); the trigram fallback adds `$10` the wanted
/// words and `$11` the similarity threshold.
///
/// Cost: every match is ranked (the order needs it) and counted, but only from narrow
/// rows — id, time, score — materialized once; the heap rows keep their tsvector inline
/// and the body text out of line (migration `20261122200000_kb_search`), so ranking
/// thousands of matches never reads a body or a TOAST pointer. Bodies are read and
/// `ts_headline`d only for the page returned.
fn search_sql(matching: Matching) -> String {
    // A null tsquery (only the language's stop words) leaves only the trigram title
    // match: no highlights then.
    const TITLE_HL: &str =
        "coalesce(ts_headline(d.ts_config, d.title, q.tsq, 'HighlightAll=true, StartSel=' || chr(1) || ', StopSel=' || chr(2)), d.title)";
    const SNIPPET: &str = "coalesce(ts_headline(d.ts_config, d.body_text, q.tsq,
                 'MaxWords=30, MinWords=12, MaxFragments=2, FragmentDelimiter=\" … \", StartSel=' || chr(1) || ', StopSel=' || chr(2)),
                 left(d.body_text, 240))";
    let (ctes, source, rank, title_hl, snippet, page_source) = match matching {
        Matching::Recent => ("", "kb_search_docs d", "0", "d.title", "left(d.body_text, 240)", "page p"),
        Matching::FullText => {
            (TSQUERY_CTES, "kb_search_docs d join q on d.tsv @@ q.tsq", "ts_rank(d.tsv, q.tsq)", TITLE_HL, SNIPPET, "q, page p")
        }
        // Runs only when nothing matches the tsquery under these filters, so the titles
        // that look alike are the whole answer; excluded terms still exclude.
        // `kb_similar_titles` returns the filtered columns under the same names.
        Matching::SimilarTitles => {
            (TSQUERY_CTES, "q cross join kb_similar_titles($10, $11, q.excluded) d", "d.similarity", TITLE_HL, SNIPPET, "q, page p")
        }
    };
    format!(
        "with {ctes} matched as (
            select d.article_id, d.updated_at, ({rank})::float4 as score
            from {source}
            where d.status = any($1)
              and (not $2 or d.public)
              and ($3::text is null or d.category = $3)
              and ($4::text is null or lower(d.locale) = lower($4) or lower(d.locale) like lower($4) || '-%')
              and ($5::text is null or d.tags @> array[$5::text])
        ), page as (
            select article_id, updated_at, score from matched
            order by score desc, updated_at desc, article_id
            limit $6 offset $7
        )
        select p.article_id, d.title, d.body_text, d.category, d.tags, d.locale, d.status, d.public, p.updated_at,
               (select count(*) from matched) as total, p.score, {title_hl} as title_hl, {snippet} as snippet
        from {page_source} join kb_search_docs d on d.article_id = p.article_id
        order by p.score desc, p.updated_at desc, p.article_id"
    )
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
        let (mut matching, text) = if query.q.trim().is_empty() {
            (Matching::Recent, None)
        } else {
            // Only stop words or operators: nothing to look for.
            let Some(text) = self.text_query(query)? else { return Ok(SearchResults::default()) };
            (Matching::FullText, Some(text))
        };
        let mut rows = self.query(query, text.as_ref(), matching).await?;
        // Nothing spelled like that: fall back to titles that look alike ("pasword reest"),
        // but only when the tsquery matches nothing at all under these filters (a later
        // page past the real matches stays empty).
        if let (true, Some(t)) = (rows.is_empty() && matching == Matching::FullText && !query.match_any, &text) {
            if !t.plain.is_empty() && (query.offset == 0 || self.total(query, text.as_ref(), matching).await? == 0) {
                matching = Matching::SimilarTitles;
                rows = self.query(query, text.as_ref(), matching).await?;
            }
        }
        let mut res = results(rows);
        if res.hits.is_empty() && query.offset > 0 {
            // A page past the last match still says how many there are.
            res.total = self.total(query, text.as_ref(), matching).await?;
        }
        Ok(res)
    }

    async fn retain_only(&self, keep: &[Uuid]) -> Result<(), KbError> {
        sqlx::query("delete from kb_search_docs where article_id <> all($1)").bind(keep).execute(&self.pool).await?;
        Ok(())
    }
}

fn results(rows: Vec<HitRow>) -> SearchResults {
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
    SearchResults { hits, total }
}
