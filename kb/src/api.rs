//! The knowledge base HTTP API under `/api/v1/kb`: articles, versions, attachments,
//! search (staff and public portal), agent assist suggestions and the index status.
//! Every route is in [`ROUTES`].

use crate::articles::{self, Article, ArticlePatch, NewArticle, STATUSES};
use crate::markdown::{excerpt, render, snippet_html};
use crate::search::{SearchHit, SearchQuery};
use crate::Kb;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use switchboard_core::api::{page_bounds, paged, Access, ApiJson, ApiPath, ApiQuery, Paged, RouteDoc};
use switchboard_core::auth::Caller;
use switchboard_core::{CoreError, CoreResult, Hub, Role};
use uuid::Uuid;

const EDITORS: &[Role] = &[Role::Admin, Role::KbEditor];
const STAFF: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent];
const INDEX_VIEWERS: &[Role] = &[Role::Admin, Role::Supervisor, Role::KbEditor];

macro_rules! route {
    ($m:literal, $p:literal, $a:expr, $s:literal) => {
        RouteDoc { method: $m, path: $p, access: $a, summary: $s, tag: "kb" }
    };
}

/// Every knowledge base route.
pub const ROUTES: &[RouteDoc] = &[
    route!("GET", "/api/v1/kb/articles", Access::AnyUser, "List articles (non-editors: published only)."),
    route!("POST", "/api/v1/kb/articles", Access::Roles(EDITORS), "Create an article (version 1)."),
    route!("GET", "/api/v1/kb/articles/{id}", Access::AnyUser, "Get an article with its rendered, sanitized HTML."),
    route!("PATCH", "/api/v1/kb/articles/{id}", Access::Roles(EDITORS), "Edit, publish or archive an article (new version)."),
    route!("DELETE", "/api/v1/kb/articles/{id}", Access::Roles(EDITORS), "Delete an article (removed from search)."),
    route!("GET", "/api/v1/kb/articles/{id}/versions", Access::Roles(EDITORS), "Version history with author and time."),
    route!("GET", "/api/v1/kb/articles/{id}/attachments", Access::AnyUser, "Attachments of a visible article."),
    route!(
        "POST",
        "/api/v1/kb/articles/{id}/attachments",
        Access::Roles(EDITORS),
        "Upload an attachment: raw body, Content-Type from the allow list, ?filename=; SHA-256 stored."
    ),
    route!("GET", "/api/v1/kb/attachments/{id}", Access::AnyUser, "Download an attachment of a visible article."),
    route!(
        "GET",
        "/api/v1/kb/search",
        Access::AnyUser,
        "Search: q, category, locale, tag, status (editors), limit, offset; highlighted snippets."
    ),
    route!(
        "GET",
        "/api/v1/kb/suggest",
        Access::Roles(STAFF),
        "Agent assist: top three published articles for the latest inbound message of an interaction the caller holds, was offered or supervises."
    ),
    route!("GET", "/api/v1/kb/index/status", Access::Roles(INDEX_VIEWERS), "Search index status: backend, outbox lag, last error."),
    route!("GET", "/api/v1/kb/public/search", Access::Public, "Portal search over public published articles."),
    route!("GET", "/api/v1/kb/public/articles/{id}", Access::Public, "A public published article."),
    route!("GET", "/api/v1/kb/public/attachments/{id}", Access::Public, "An attachment of a public published article."),
];

/// The router (state: [`Hub`]; the knowledge base travels as an extension).
pub fn router(kb: Arc<Kb>) -> Router<Hub> {
    Router::new()
        .route("/api/v1/kb/articles", get(list_articles).post(create_article))
        .route("/api/v1/kb/articles/{id}", get(get_article).patch(update_article).delete(delete_article))
        .route("/api/v1/kb/articles/{id}/versions", get(versions))
        .route(
            "/api/v1/kb/articles/{id}/attachments",
            get(list_attachments).post(upload_attachment).layer(DefaultBodyLimit::max(kb.config.max_attachment_bytes + 1)),
        )
        .route("/api/v1/kb/attachments/{id}", get(download_attachment))
        .route("/api/v1/kb/search", get(search))
        .route("/api/v1/kb/suggest", get(suggest))
        .route("/api/v1/kb/index/status", get(index_status))
        .route("/api/v1/kb/public/search", get(public_search))
        .route("/api/v1/kb/public/articles/{id}", get(public_article))
        .route("/api/v1/kb/public/attachments/{id}", get(public_attachment))
        .layer(DefaultBodyLimit::max(2 * 1024 * 1024))
        .layer(Extension(kb))
}

fn is_editor(c: &Caller) -> bool {
    c.has_any(EDITORS)
}

fn visible_to(c: &Caller, a: &Article) -> bool {
    a.status == "published" || is_editor(c)
}

/// Staff URL of an article page.
pub fn staff_url(id: Uuid) -> String {
    format!("/kb.html#/articles/{id}")
}

/// Portal URL of an article page.
pub fn portal_url(id: Uuid) -> String {
    format!("/portal.html#/articles/{id}")
}

/// An article as the API returns it.
#[derive(Serialize)]
struct ArticleView {
    #[serde(flatten)]
    article: Article,
    /// Sanitized HTML of the body.
    body_html: String,
    url: String,
}

impl ArticleView {
    fn staff(a: Article) -> ArticleView {
        ArticleView { body_html: render(&a.body), url: staff_url(a.id), article: a }
    }
}

/// What the portal sees of an article (no authors, no status history).
#[derive(Serialize)]
struct PublicArticle {
    id: Uuid,
    title: String,
    body_html: String,
    category: String,
    tags: Vec<String>,
    locale: String,
    updated_at: DateTime<Utc>,
    url: String,
    attachments: Vec<PublicAttachment>,
}

#[derive(Serialize)]
struct PublicAttachment {
    id: Uuid,
    filename: String,
    content_type: String,
    size_bytes: i64,
    url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    category: Option<String>,
    locale: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The statuses a caller may see, narrowed by an optional `status` filter.
fn statuses_for(c: Option<&Caller>, requested: Option<String>) -> CoreResult<Vec<String>> {
    let editor = c.map(is_editor).unwrap_or(false);
    match non_empty(requested) {
        Some(s) if !STATUSES.contains(&s.as_str()) => Err(CoreError::field("status", "must be draft, published or archived")),
        Some(s) if s != "published" && !editor => Err(CoreError::Forbidden),
        Some(s) => Ok(vec![s]),
        None if editor => Ok(STATUSES.iter().map(|s| s.to_string()).collect()),
        None => Ok(vec!["published".into()]),
    }
}

async fn list_articles(State(hub): State<Hub>, caller: Caller, ApiQuery(q): ApiQuery<ListQuery>) -> CoreResult<Json<Paged<ArticleView>>> {
    let (limit, offset) = page_bounds(q.limit, q.offset)?;
    let statuses = statuses_for(Some(&caller), q.status)?;
    let rows = articles::list(hub.db(), &statuses, non_empty(q.category).as_deref(), non_empty(q.locale).as_deref(), limit, offset).await?;
    let page = paged(rows, limit, offset);
    Ok(Json(Paged { items: page.items.into_iter().map(ArticleView::staff).collect(), next_offset: page.next_offset }))
}

async fn create_article(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(kb): Extension<Arc<Kb>>,
    body: Result<ApiJson<NewArticle>, CoreError>,
) -> CoreResult<(StatusCode, Json<ArticleView>)> {
    // Role first, so a refused caller learns nothing about the body's shape.
    caller.require(EDITORS)?;
    let ApiJson(body) = body?;
    let a = articles::create(hub.db(), body, caller.user_id, &caller.username).await?;
    kb.worker.wake.notify_one();
    tracing::info!(article_id = %a.id, user = %caller.username, "KB article created.");
    Ok((StatusCode::CREATED, Json(ArticleView::staff(a))))
}

async fn get_article(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<ArticleView>> {
    let a = articles::get(hub.db(), id).await?.filter(|a| visible_to(&caller, a)).ok_or(CoreError::NotFound("article"))?;
    Ok(Json(ArticleView::staff(a)))
}

async fn update_article(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(kb): Extension<Arc<Kb>>,
    ApiPath(id): ApiPath<Uuid>,
    body: Result<ApiJson<ArticlePatch>, CoreError>,
) -> CoreResult<Json<ArticleView>> {
    caller.require(EDITORS)?;
    let ApiJson(body) = body?;
    let a = articles::update(hub.db(), id, body, caller.user_id, &caller.username).await?;
    kb.worker.wake.notify_one();
    tracing::info!(article_id = %a.id, version = a.version, status = %a.status, user = %caller.username, "KB article updated.");
    Ok(Json(ArticleView::staff(a)))
}

async fn delete_article(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(kb): Extension<Arc<Kb>>,
    ApiPath(id): ApiPath<Uuid>,
) -> CoreResult<StatusCode> {
    caller.require(EDITORS)?;
    articles::delete(hub.db(), id).await?;
    kb.worker.wake.notify_one();
    tracing::info!(article_id = %id, user = %caller.username, "KB article deleted.");
    Ok(StatusCode::NO_CONTENT)
}

async fn versions(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<serde_json::Value>> {
    caller.require(EDITORS)?;
    if articles::get(hub.db(), id).await?.is_none() {
        return Err(CoreError::NotFound("article"));
    }
    let items = articles::versions(hub.db(), id).await?;
    Ok(Json(serde_json::json!({ "items": items })))
}

async fn list_attachments(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<serde_json::Value>> {
    articles::get(hub.db(), id).await?.filter(|a| visible_to(&caller, a)).ok_or(CoreError::NotFound("article"))?;
    let items = articles::attachments(hub.db(), id).await?;
    Ok(Json(serde_json::json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    filename: String,
}

async fn upload_attachment(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(kb): Extension<Arc<Kb>>,
    ApiPath(id): ApiPath<Uuid>,
    q: Result<ApiQuery<UploadQuery>, CoreError>,
    headers: HeaderMap,
    body: Body,
) -> CoreResult<(StatusCode, Json<articles::Attachment>)> {
    caller.require(EDITORS)?;
    let ApiQuery(q) = q?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    if !kb.config.attachment_types.iter().any(|t| t.eq_ignore_ascii_case(&content_type)) {
        return Err(CoreError::field("content-type", format!("allowed: {}", kb.config.attachment_types.join(", "))));
    }
    let filename: String = q.filename.trim().chars().filter(|c| !c.is_control() && !matches!(c, '/' | '\\' | '"')).collect();
    if filename.is_empty() || filename.chars().count() > 255 {
        return Err(CoreError::field("filename", "must be 1 to 255 characters"));
    }
    let limit = kb.config.max_attachment_bytes;
    let data = axum::body::to_bytes(body, limit).await.map_err(|_| CoreError::PayloadTooLarge(limit))?;
    if data.is_empty() {
        return Err(CoreError::field("body", "the attachment is empty"));
    }
    articles::get(hub.db(), id).await?.ok_or(CoreError::NotFound("article"))?;
    let att = articles::add_attachment(hub.db(), id, &filename, &content_type, &data, caller.user_id).await?;
    tracing::info!(article_id = %id, attachment_id = %att.id, size = att.size_bytes, "KB attachment stored.");
    Ok((StatusCode::CREATED, Json(att)))
}

fn attachment_response(meta: articles::Attachment, data: Vec<u8>) -> Response {
    let disposition = format!("attachment; filename=\"{}\"", meta.filename.replace(|c: char| !c.is_ascii() || c == '"', "_"));
    let mut resp = (StatusCode::OK, data).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&meta.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", meta.sha256)) {
        h.insert(header::ETAG, v);
    }
    resp
}

async fn download_attachment(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Response> {
    let (meta, data) = articles::attachment_data(hub.db(), id).await?.ok_or(CoreError::NotFound("attachment"))?;
    articles::get(hub.db(), meta.article_id).await?.filter(|a| visible_to(&caller, a)).ok_or(CoreError::NotFound("attachment"))?;
    Ok(attachment_response(meta, data))
}

async fn public_attachment(State(hub): State<Hub>, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Response> {
    let (meta, data) = articles::attachment_data(hub.db(), id).await?.ok_or(CoreError::NotFound("attachment"))?;
    articles::get(hub.db(), meta.article_id)
        .await?
        .filter(|a| a.status == "published" && a.public)
        .ok_or(CoreError::NotFound("attachment"))?;
    Ok(attachment_response(meta, data))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    q: Option<String>,
    category: Option<String>,
    locale: Option<String>,
    tag: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// One search result.
#[derive(Serialize)]
struct SearchItem {
    id: Uuid,
    title: String,
    /// Title with `<mark>` around matches; text escaped.
    title_html: String,
    /// Body excerpt with `<mark>` around matches; text escaped.
    snippet_html: String,
    category: String,
    tags: Vec<String>,
    locale: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public: Option<bool>,
    updated_at: DateTime<Utc>,
    url: String,
}

#[derive(Serialize)]
struct SearchPage {
    items: Vec<SearchItem>,
    total: u64,
    limit: i64,
    offset: i64,
    next_offset: Option<i64>,
    backend: &'static str,
}

fn item(h: SearchHit, public: bool) -> SearchItem {
    SearchItem {
        id: h.doc.id,
        title_html: snippet_html(&h.title_highlighted),
        snippet_html: snippet_html(&h.snippet),
        title: h.doc.title,
        category: h.doc.category,
        tags: h.doc.tags,
        locale: h.doc.locale,
        status: (!public).then_some(h.doc.status),
        public: (!public).then_some(h.doc.public),
        updated_at: h.doc.updated_at,
        url: if public { portal_url(h.doc.id) } else { staff_url(h.doc.id) },
    }
}

async fn run_search(kb: &Kb, p: SearchParams, caller: Option<&Caller>, public: bool) -> CoreResult<Json<SearchPage>> {
    let (limit, offset) = page_bounds(Some(p.limit.unwrap_or(20)), p.offset)?;
    if limit > 100 {
        return Err(CoreError::field("limit", "must be between 1 and 100"));
    }
    let q = p.q.unwrap_or_default();
    if q.chars().count() > 500 {
        return Err(CoreError::field("q", "must be at most 500 characters"));
    }
    let statuses = if public { vec!["published".to_string()] } else { statuses_for(caller, p.status)? };
    let query = SearchQuery {
        q: crate::markdown::strip_controls(&q),
        category: non_empty(p.category),
        locale: non_empty(p.locale),
        tag: non_empty(p.tag),
        statuses,
        public_only: public,
        limit,
        offset,
        match_any: false,
    };
    let res = kb.backend.search(&query).await.map_err(CoreError::from)?;
    let next_offset = ((offset + limit) < res.total as i64).then_some(offset + limit);
    Ok(Json(SearchPage {
        items: res.hits.into_iter().map(|h| item(h, public)).collect(),
        total: res.total,
        limit,
        offset,
        next_offset,
        backend: kb.backend.name(),
    }))
}

async fn search(caller: Caller, Extension(kb): Extension<Arc<Kb>>, ApiQuery(p): ApiQuery<SearchParams>) -> CoreResult<Json<SearchPage>> {
    run_search(&kb, p, Some(&caller), false).await
}

async fn public_search(Extension(kb): Extension<Arc<Kb>>, ApiQuery(p): ApiQuery<SearchParams>) -> CoreResult<Json<SearchPage>> {
    if p.status.is_some() {
        return Err(CoreError::field("status", "not available on the public portal"));
    }
    run_search(&kb, p, None, true).await
}

async fn public_article(State(hub): State<Hub>, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<PublicArticle>> {
    let a = articles::get(hub.db(), id).await?.filter(|a| a.status == "published" && a.public).ok_or(CoreError::NotFound("article"))?;
    let attachments = articles::attachments(hub.db(), id)
        .await?
        .into_iter()
        .map(|t| PublicAttachment {
            url: format!("/api/v1/kb/public/attachments/{}", t.id),
            id: t.id,
            filename: t.filename,
            content_type: t.content_type,
            size_bytes: t.size_bytes,
        })
        .collect();
    Ok(Json(PublicArticle {
        id: a.id,
        body_html: render(&a.body),
        title: a.title,
        category: a.category,
        tags: a.tags,
        locale: a.locale,
        updated_at: a.updated_at,
        url: portal_url(a.id),
        attachments,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuggestParams {
    interaction_id: Uuid,
}

/// One agent-assist suggestion.
#[derive(Serialize)]
struct Suggestion {
    id: Uuid,
    title: String,
    /// Plain-text excerpt (the panel escapes it).
    excerpt: String,
    url: String,
}

/// The latest inbound message of an interaction the caller may see — the rule of
/// `GET /api/v1/interactions/{id}`: supervisors and admins any; agents those they hold or
/// held, were offered, or whose customer they are the own manager of. Anything else is
/// "not found", so an agent cannot even learn which interactions exist.
#[tracing::instrument(skip(db, caller), fields(user = %caller.username))]
async fn latest_inbound_message(db: &sqlx::PgPool, caller: &Caller, interaction_id: Uuid) -> CoreResult<Option<String>> {
    let agent = if caller.is_supervisor() { None } else { Some(caller.agent_id.ok_or(CoreError::NotFound("interaction"))?) };
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "select (select m.body from messages m where m.interaction_id = i.id and m.direction = 'inbound'
                 order by m.created_at desc limit 1)
         from interactions i
         where i.id = $1
           and ($2::uuid is null or i.agent_id = $2 or i.preferred_agent_id = $2
                or exists (select 1 from offers o where o.interaction_id = i.id and o.agent_id = $2))",
    )
    .bind(interaction_id)
    .bind(agent)
    .fetch_optional(db)
    .await?;
    row.map(|(m,)| m).ok_or(CoreError::NotFound("interaction"))
}

async fn suggest(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(kb): Extension<Arc<Kb>>,
    p: Result<ApiQuery<SuggestParams>, CoreError>,
) -> CoreResult<Json<serde_json::Value>> {
    caller.require(STAFF)?;
    let ApiQuery(p) = p?;
    let message = latest_inbound_message(hub.db(), &caller, p.interaction_id).await?;
    let text: String = crate::markdown::strip_controls(&message.unwrap_or_default()).chars().take(500).collect();
    if text.trim().is_empty() {
        return Ok(Json(serde_json::json!({ "items": [], "query": "" })));
    }
    let words = crate::search::keywords(&text, 8);
    if words.is_empty() {
        return Ok(Json(serde_json::json!({ "items": [], "query": "" })));
    }
    let query =
        SearchQuery { q: words.join(" "), statuses: vec!["published".into()], limit: 3, offset: 0, match_any: true, ..Default::default() };
    let res = kb.backend.search(&query).await.map_err(CoreError::from)?;
    let items: Vec<Suggestion> = res
        .hits
        .into_iter()
        .map(|h| Suggestion { excerpt: excerpt(&h.doc.body_text, 200), id: h.doc.id, url: staff_url(h.doc.id), title: h.doc.title })
        .collect();
    Ok(Json(serde_json::json!({ "items": items, "query": words.join(" ") })))
}

#[derive(sqlx::FromRow)]
struct Lag {
    pending: i64,
    stuck: i64,
    oldest_age_seconds: Option<f64>,
    last_error: Option<String>,
}

async fn index_status(State(hub): State<Hub>, caller: Caller, Extension(kb): Extension<Arc<Kb>>) -> CoreResult<Json<serde_json::Value>> {
    caller.require(INDEX_VIEWERS)?;
    let lag: Lag = sqlx::query_as(
        "select count(*) as pending, count(*) filter (where attempts >= $1) as stuck,
                extract(epoch from now() - min(created_at))::float8 as oldest_age_seconds,
                (select last_error from kb_index_outbox where last_error is not null order by id desc limit 1) as last_error
         from kb_index_outbox",
    )
    .bind(kb.config.max_attempts)
    .fetch_one(hub.db())
    .await?;
    let worker_error = kb.worker.state.last_error.lock().ok().and_then(|g| g.clone());
    let last_success = kb.worker.state.last_success_at.lock().ok().and_then(|g| *g);
    Ok(Json(serde_json::json!({
        "backend": kb.backend.name(),
        "pending": lag.pending,
        "stuck": lag.stuck,
        "oldest_pending_age_seconds": lag.oldest_age_seconds.unwrap_or(0.0),
        "last_error": worker_error.as_ref().map(|e| e.0.clone()).or(lag.last_error),
        "last_error_at": worker_error.map(|e| e.1),
        "last_success_at": last_success,
        "configured": kb.worker.state.configured.load(std::sync::atomic::Ordering::Relaxed),
        "indexed_since_start": kb.worker.state.indexed.load(std::sync::atomic::Ordering::Relaxed),
    })))
}
