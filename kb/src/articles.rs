//! Articles in PostgreSQL: create, update (with a version row per change), delete, list,
//! attachments. Every change also writes a `kb_index_outbox` row in the same transaction,
//! so the search index can never silently miss an edit.

use crate::markdown::{plain_text, strip_controls};
use crate::search::IndexDoc;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};
use switchboard_core::{CoreError, CoreResult};
use uuid::Uuid;

/// Article statuses.
pub const STATUSES: &[&str] = &["draft", "published", "archived"];

/// Columns of [`Article`].
pub const ARTICLE_COLUMNS: &str =
    "id, title, body, category, tags, locale, status, public, version, created_by, updated_by, created_at, updated_at, published_at";

/// An article row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Article {
    /// Id.
    pub id: Uuid,
    /// Title.
    pub title: String,
    /// Markdown body.
    pub body: String,
    /// Category.
    pub category: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Locale.
    pub locale: String,
    /// draft / published / archived.
    pub status: String,
    /// Shown on the public portal when published.
    pub public: bool,
    /// Current version number.
    pub version: i32,
    /// Author of the first version.
    pub created_by: Option<Uuid>,
    /// Author of the latest version.
    pub updated_by: Option<Uuid>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// First published.
    pub published_at: Option<DateTime<Utc>>,
}

impl Article {
    /// The search document of this article.
    pub fn index_doc(&self) -> IndexDoc {
        IndexDoc {
            id: self.id,
            title: self.title.clone(),
            body_text: plain_text(&self.body),
            category: self.category.clone(),
            tags: self.tags.clone(),
            locale: self.locale.clone(),
            status: self.status.clone(),
            public: self.public,
            updated_at: self.updated_at,
        }
    }
}

/// A version row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ArticleVersion {
    /// Article.
    pub article_id: Uuid,
    /// Version number.
    pub version: i32,
    /// Title then.
    pub title: String,
    /// Body then.
    pub body: String,
    /// Category then.
    pub category: String,
    /// Tags then.
    pub tags: Vec<String>,
    /// Locale then.
    pub locale: String,
    /// Status then.
    pub status: String,
    /// Public flag then.
    pub public: bool,
    /// Who made it.
    pub author_id: Option<Uuid>,
    /// Their username.
    pub author_name: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Fields of a new article.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewArticle {
    /// Title (1..=300 characters).
    pub title: String,
    /// Markdown body.
    #[serde(default)]
    pub body: String,
    /// Category.
    #[serde(default)]
    pub category: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Locale (default `en`).
    #[serde(default = "default_locale")]
    pub locale: String,
    /// Status (default draft).
    #[serde(default = "default_status")]
    pub status: String,
    /// Public flag.
    #[serde(default)]
    pub public: bool,
}

fn default_locale() -> String {
    "en".into()
}
fn default_status() -> String {
    "draft".into()
}

/// A partial update.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArticlePatch {
    /// New title.
    pub title: Option<String>,
    /// New body.
    pub body: Option<String>,
    /// New category.
    pub category: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New locale.
    pub locale: Option<String>,
    /// New status.
    pub status: Option<String>,
    /// New public flag.
    pub public: Option<bool>,
    /// The version the editor started from; a mismatch is a 409 (lost update guard).
    pub expected_version: Option<i32>,
}

/// Checks and normalizes article fields.
fn normalize(a: &mut NewArticle) -> CoreResult<()> {
    a.title = strip_controls(a.title.trim());
    a.body = strip_controls(&a.body);
    a.category = strip_controls(a.category.trim());
    a.locale = a.locale.trim().to_string();
    let n = a.title.chars().count();
    if n == 0 || n > 300 {
        return Err(CoreError::field("title", "must be 1 to 300 characters"));
    }
    if a.body.len() > 1_000_000 {
        return Err(CoreError::field("body", "must be at most 1 MB"));
    }
    if a.category.chars().count() > 100 {
        return Err(CoreError::field("category", "must be at most 100 characters"));
    }
    if !(2..=20).contains(&a.locale.len()) || !a.locale.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(CoreError::field("locale", "must be a language tag such as en or es-MX"));
    }
    if !STATUSES.contains(&a.status.as_str()) {
        return Err(CoreError::field("status", "must be draft, published or archived"));
    }
    let mut tags: Vec<String> = a.tags.iter().map(|t| strip_controls(t.trim())).filter(|t| !t.is_empty()).collect();
    tags.sort();
    tags.dedup();
    if tags.len() > 30 || tags.iter().any(|t| t.chars().count() > 50) {
        return Err(CoreError::field("tags", "at most 30 tags of at most 50 characters"));
    }
    a.tags = tags;
    Ok(())
}

async fn enqueue(tx: &mut Transaction<'_, Postgres>, id: Uuid, op: &str) -> CoreResult<()> {
    sqlx::query("insert into kb_index_outbox (article_id, op) values ($1, $2)").bind(id).bind(op).execute(&mut **tx).await?;
    Ok(())
}

async fn record_version(tx: &mut Transaction<'_, Postgres>, a: &Article, author: Uuid, author_name: &str) -> CoreResult<()> {
    sqlx::query(
        "insert into kb_article_versions (article_id, version, title, body, category, tags, locale, status, public, author_id, author_name)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(a.id)
    .bind(a.version)
    .bind(&a.title)
    .bind(&a.body)
    .bind(&a.category)
    .bind(&a.tags)
    .bind(&a.locale)
    .bind(&a.status)
    .bind(a.public)
    .bind(author)
    .bind(author_name)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Creates an article (version 1).
pub async fn create(db: &PgPool, mut a: NewArticle, author: Uuid, author_name: &str) -> CoreResult<Article> {
    normalize(&mut a)?;
    let mut tx = db.begin().await?;
    let art: Article = sqlx::query_as(&format!(
        "insert into kb_articles (title, body, category, tags, locale, status, public, created_by, updated_by, published_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $8, case when $6 = 'published' then now() end)
         returning {ARTICLE_COLUMNS}"
    ))
    .bind(&a.title)
    .bind(&a.body)
    .bind(&a.category)
    .bind(&a.tags)
    .bind(&a.locale)
    .bind(&a.status)
    .bind(a.public)
    .bind(author)
    .fetch_one(&mut *tx)
    .await?;
    record_version(&mut tx, &art, author, author_name).await?;
    enqueue(&mut tx, art.id, "upsert").await?;
    tx.commit().await?;
    Ok(art)
}

/// Applies a patch as a new version.
pub async fn update(db: &PgPool, id: Uuid, p: ArticlePatch, author: Uuid, author_name: &str) -> CoreResult<Article> {
    let mut tx = db.begin().await?;
    let cur: Article = sqlx::query_as(&format!("select {ARTICLE_COLUMNS} from kb_articles where id = $1 for update"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(CoreError::NotFound("article"))?;
    if let Some(v) = p.expected_version {
        if v != cur.version {
            return Err(CoreError::Conflict(format!("the article changed meanwhile (now version {}); reload and retry", cur.version)));
        }
    }
    let mut next = NewArticle {
        title: p.title.unwrap_or(cur.title.clone()),
        body: p.body.unwrap_or(cur.body.clone()),
        category: p.category.unwrap_or(cur.category.clone()),
        tags: p.tags.unwrap_or(cur.tags.clone()),
        locale: p.locale.unwrap_or(cur.locale.clone()),
        status: p.status.unwrap_or(cur.status.clone()),
        public: p.public.unwrap_or(cur.public),
    };
    normalize(&mut next)?;
    let art: Article = sqlx::query_as(&format!(
        "update kb_articles set title = $2, body = $3, category = $4, tags = $5, locale = $6, status = $7, public = $8,
             version = version + 1, updated_by = $9, updated_at = now(),
             published_at = coalesce(published_at, case when $7 = 'published' then now() end)
         where id = $1 returning {ARTICLE_COLUMNS}"
    ))
    .bind(id)
    .bind(&next.title)
    .bind(&next.body)
    .bind(&next.category)
    .bind(&next.tags)
    .bind(&next.locale)
    .bind(&next.status)
    .bind(next.public)
    .bind(author)
    .fetch_one(&mut *tx)
    .await?;
    record_version(&mut tx, &art, author, author_name).await?;
    enqueue(&mut tx, art.id, "upsert").await?;
    tx.commit().await?;
    Ok(art)
}

/// Deletes an article (and its versions and attachments).
pub async fn delete(db: &PgPool, id: Uuid) -> CoreResult<()> {
    let mut tx = db.begin().await?;
    let n = sqlx::query("delete from kb_articles where id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
    if n == 0 {
        return Err(CoreError::NotFound("article"));
    }
    enqueue(&mut tx, id, "delete").await?;
    tx.commit().await?;
    Ok(())
}

/// One article.
pub async fn get(db: &PgPool, id: Uuid) -> CoreResult<Option<Article>> {
    Ok(sqlx::query_as(&format!("select {ARTICLE_COLUMNS} from kb_articles where id = $1")).bind(id).fetch_optional(db).await?)
}

/// Lists articles (newest change first) with optional filters, `limit + 1` rows.
pub async fn list(
    db: &PgPool,
    statuses: &[String],
    category: Option<&str>,
    locale: Option<&str>,
    limit: i64,
    offset: i64,
) -> CoreResult<Vec<Article>> {
    Ok(sqlx::query_as(&format!(
        "select {ARTICLE_COLUMNS} from kb_articles
         where status = any($1) and ($2::text is null or category = $2) and ($3::text is null or locale = $3)
         order by updated_at desc, id limit $4 offset $5"
    ))
    .bind(statuses)
    .bind(category)
    .bind(locale)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(db)
    .await?)
}

/// Version history, newest first.
pub async fn versions(db: &PgPool, id: Uuid) -> CoreResult<Vec<ArticleVersion>> {
    Ok(sqlx::query_as(
        "select article_id, version, title, body, category, tags, locale, status, public, author_id, author_name, created_at
         from kb_article_versions where article_id = $1 order by version desc",
    )
    .bind(id)
    .fetch_all(db)
    .await?)
}

/// Attachment metadata.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Attachment {
    /// Id.
    pub id: Uuid,
    /// Article.
    pub article_id: Uuid,
    /// File name.
    pub filename: String,
    /// Content type (from the allow list).
    pub content_type: String,
    /// Size.
    pub size_bytes: i64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Uploaded by.
    pub uploaded_by: Option<Uuid>,
    /// When.
    pub created_at: DateTime<Utc>,
}

const ATTACHMENT_COLUMNS: &str = "id, article_id, filename, content_type, size_bytes, sha256, uploaded_by, created_at";

/// Stores an attachment.
pub async fn add_attachment(
    db: &PgPool,
    article: Uuid,
    filename: &str,
    content_type: &str,
    data: &[u8],
    by: Uuid,
) -> CoreResult<Attachment> {
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(data));
    Ok(sqlx::query_as(&format!(
        "insert into kb_attachments (article_id, filename, content_type, size_bytes, sha256, data, uploaded_by)
         values ($1, $2, $3, $4, $5, $6, $7) returning {ATTACHMENT_COLUMNS}"
    ))
    .bind(article)
    .bind(filename)
    .bind(content_type)
    .bind(data.len() as i64)
    .bind(sha)
    .bind(data)
    .bind(by)
    .fetch_one(db)
    .await?)
}

/// Attachments of an article.
pub async fn attachments(db: &PgPool, article: Uuid) -> CoreResult<Vec<Attachment>> {
    Ok(sqlx::query_as(&format!("select {ATTACHMENT_COLUMNS} from kb_attachments where article_id = $1 order by created_at"))
        .bind(article)
        .fetch_all(db)
        .await?)
}

/// One attachment with its content.
pub async fn attachment_data(db: &PgPool, id: Uuid) -> CoreResult<Option<(Attachment, Vec<u8>)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        meta: Attachment,
        data: Vec<u8>,
    }
    let r: Option<Row> =
        sqlx::query_as(&format!("select {ATTACHMENT_COLUMNS}, data from kb_attachments where id = $1")).bind(id).fetch_optional(db).await?;
    Ok(r.map(|r| (r.meta, r.data)))
}
