//! The CRM HTTP API: customers (search, profile, identities, notes, consent, timeline,
//! card, merge, duplicates, import/export, privacy export, erasure), appointments and
//! follow-up tasks. [`ROUTES`] documents every route with who may call it.

use crate::config::Settings;
use crate::duplicates;
use crate::import::{self, check_language, check_time_zone};
use crate::jobs;
use crate::normalize::{self, IdentityKind};
use crate::search;
use crate::store::{self, Customer, Identity, CUSTOMER_COLUMNS};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use switchboard_core::api::{double_option, page_bounds, paged, Access, ApiJson, ApiPath, ApiQuery, Paged, RouteDoc};
use switchboard_core::auth::{audit, Caller};
use switchboard_core::{CoreError, CoreResult, Hub, Role};
use uuid::Uuid;

use Role::*;
const STAFF: &[Role] = &[Admin, Supervisor, Agent];
const READERS: &[Role] = &[Admin, Supervisor, Agent, Marketer];
const SUPERVISORS: &[Role] = &[Admin, Supervisor];

macro_rules! route {
    ($m:literal, $p:literal, $a:expr, $tag:literal, $s:literal) => {
        RouteDoc { method: $m, path: $p, access: $a, summary: $s, tag: $tag }
    };
}

/// Every CRM route.
pub const ROUTES: &[RouteDoc] = &[
    route!(
        "GET",
        "/api/v1/customers",
        Access::Roles(READERS),
        "crm",
        "Search customers by name, phone or email fragment (q), or list them."
    ),
    route!("POST", "/api/v1/customers", Access::Roles(STAFF), "crm", "Create a customer with identities."),
    route!(
        "GET",
        "/api/v1/customers/duplicates",
        Access::Roles(SUPERVISORS),
        "crm",
        "Suggested duplicates to confirm and merge, paged by `after` (the previous page's `next_after`)."
    ),
    route!(
        "POST",
        "/api/v1/customers/import",
        Access::Roles(SUPERVISORS),
        "crm",
        "Import customers from a text/csv body; returns a job id."
    ),
    route!("GET", "/api/v1/customers/import/{job}", Access::Roles(SUPERVISORS), "crm", "Progress and per-row errors of an import job."),
    route!("GET", "/api/v1/customers/export.csv", Access::Roles(SUPERVISORS), "crm", "Export every customer as CSV (re-importable)."),
    route!("GET", "/api/v1/customers/{id}", Access::Roles(READERS), "crm", "A customer's profile with identities."),
    route!("PATCH", "/api/v1/customers/{id}", Access::Roles(STAFF), "crm", "Update profile fields, tags and attributes."),
    route!("GET", "/api/v1/customers/{id}/card", Access::Roles(STAFF), "crm", "The screen-pop card."),
    route!("GET", "/api/v1/customers/{id}/timeline", Access::Roles(STAFF), "crm", "Every interaction on every channel, newest first."),
    route!("POST", "/api/v1/customers/{id}/identities", Access::Roles(STAFF), "crm", "Add a phone, email or chat identity."),
    route!("DELETE", "/api/v1/customers/{id}/identities/{identity_id}", Access::Roles(STAFF), "crm", "Remove an identity."),
    route!("GET", "/api/v1/customers/{id}/notes", Access::Roles(STAFF), "crm", "Notes on a customer."),
    route!("POST", "/api/v1/customers/{id}/notes", Access::Roles(STAFF), "crm", "Add a note."),
    route!("GET", "/api/v1/customers/{id}/consent", Access::Roles(READERS), "crm", "Marketing consent and its history."),
    route!(
        "POST",
        "/api/v1/customers/{id}/consent",
        Access::Roles(READERS),
        "crm",
        "Record a consent change (sms, email) with its source."
    ),
    route!("POST", "/api/v1/customers/{id}/merge", Access::Roles(SUPERVISORS), "crm", "Merge another customer into this one (audited)."),
    route!("GET", "/api/v1/customers/{id}/privacy-export", Access::Roles(SUPERVISORS), "crm", "Everything held on the customer, as JSON."),
    route!("POST", "/api/v1/customers/{id}/erase", Access::Roles(SUPERVISORS), "crm", "Erase the customer's personal data (audited)."),
    route!("GET", "/api/v1/appointments", Access::Roles(STAFF), "crm", "Appointments by customer, time range and status."),
    route!("POST", "/api/v1/appointments", Access::Roles(STAFF), "crm", "Book an appointment."),
    route!("PATCH", "/api/v1/appointments/{id}", Access::Roles(STAFF), "crm", "Reschedule, change status or details."),
    route!("GET", "/api/v1/tasks", Access::Roles(STAFF), "crm", "Follow-up tasks (agent_id=me: the caller's inbox)."),
    route!("POST", "/api/v1/tasks", Access::Roles(STAFF), "crm", "Create a follow-up task for an agent."),
    route!("PATCH", "/api/v1/tasks/{id}", Access::Roles(STAFF), "crm", "Complete, reopen, reassign or reschedule a task."),
];

/// Shared by the handlers (an axum extension).
#[derive(Clone)]
pub(crate) struct Crm {
    pub(crate) settings: Arc<Settings>,
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
    /// The campaign engine (told when appointments change).
    pub(crate) campaigns: crate::campaigns::Engine,
}

/// The CRM router.
pub(crate) fn router(crm: Crm) -> Router<Hub> {
    let import_limit = crm.settings.config.import_max_bytes;
    Router::new()
        .route("/api/v1/customers", get(list).post(create))
        .route("/api/v1/customers/duplicates", get(duplicates))
        .route("/api/v1/customers/import", post(import_start).layer(DefaultBodyLimit::max(import_limit)))
        .route("/api/v1/customers/import/{job}", get(import_status))
        .route("/api/v1/customers/export.csv", get(export_csv))
        .route("/api/v1/customers/{id}", get(get_one).patch(update))
        .route("/api/v1/customers/{id}/card", get(card))
        .route("/api/v1/customers/{id}/timeline", get(timeline))
        .route("/api/v1/customers/{id}/identities", post(add_identity))
        .route("/api/v1/customers/{id}/identities/{identity_id}", axum::routing::delete(remove_identity))
        .route("/api/v1/customers/{id}/notes", get(notes).post(add_note))
        .route("/api/v1/customers/{id}/consent", get(consent).post(set_consent))
        .route("/api/v1/customers/{id}/merge", post(merge))
        .route("/api/v1/customers/{id}/privacy-export", get(privacy_export))
        .route("/api/v1/customers/{id}/erase", post(erase))
        .route("/api/v1/appointments", get(appointments).post(create_appointment))
        .route("/api/v1/appointments/{id}", patch(update_appointment))
        .route("/api/v1/tasks", get(tasks).post(create_task))
        .route("/api/v1/tasks/{id}", patch(update_task))
        .layer(Extension(crm))
}

// ---------------------------------------------------------------- customers

/// A customer with identities and the manager's name.
#[derive(Debug, Serialize)]
struct CustomerView {
    #[serde(flatten)]
    customer: Customer,
    identities: Vec<Identity>,
    own_manager: Option<Value>,
}

async fn view(hub: &Hub, id: Uuid) -> CoreResult<CustomerView> {
    let customer = store::customer(hub.db(), id).await?.ok_or(CoreError::NotFound("customer"))?;
    let identities = store::identities(hub.db(), id).await?;
    let own_manager = match customer.own_manager_id {
        Some(m) => sqlx::query_as::<_, (Uuid, String)>("select id, name from agents where id = $1")
            .bind(m)
            .fetch_optional(hub.db())
            .await?
            .map(|(id, name)| json!({ "id": id, "name": name })),
        None => None,
    };
    Ok(CustomerView { customer, identities, own_manager })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    q: Option<String>,
    tag: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list(
    State(hub): State<Hub>,
    Extension(crm): Extension<Crm>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> CoreResult<Response> {
    caller.require(READERS)?;
    let (limit, offset) = page_bounds(q.limit, q.offset)?;
    if let Some(text) = q.q.as_deref().filter(|t| !t.trim().is_empty()) {
        let hits = search::search(hub.db(), crm.settings.region, text, limit.min(50)).await?;
        return Ok(Json(json!({ "items": hits, "next_offset": null })).into_response());
    }
    let rows: Vec<Customer> = sqlx::query_as(&format!(
        "select {CUSTOMER_COLUMNS} from customers where merged_into is null and erased_at is null
           and ($1::text is null or tags @> array[$1]) order by created_at desc, id limit $2 offset $3"
    ))
    .bind(&q.tag)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(hub.db())
    .await?;
    Ok(Json(paged(rows, limit, offset)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewIdentity {
    kind: IdentityKind,
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCustomer {
    #[serde(default)]
    name: String,
    external_id: Option<String>,
    language: Option<String>,
    time_zone: Option<String>,
    birthday: Option<NaiveDate>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    attributes: Map<String, Value>,
    company: Option<String>,
    own_manager_id: Option<Uuid>,
    #[serde(default)]
    identities: Vec<NewIdentity>,
    consent_sms: Option<bool>,
    consent_email: Option<bool>,
}

fn check_text(field: &str, v: &str, max: usize) -> CoreResult<()> {
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(CoreError::field(field, format!("must be at most {max} printable characters")));
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> CoreResult<Vec<String>> {
    if tags.len() > 50 {
        return Err(CoreError::field("tags", "at most 50 tags"));
    }
    let mut out = Vec::new();
    for t in tags {
        let t = t.trim();
        if t.is_empty() || t.chars().count() > 50 || t.chars().any(char::is_control) {
            return Err(CoreError::field("tags", "each tag must be 1..=50 printable characters"));
        }
        out.push(t.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn check_birthday(d: NaiveDate) -> CoreResult<()> {
    if d > Utc::now().date_naive() || d < NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or(d) {
        return Err(CoreError::field("birthday", "must be between 1900 and today"));
    }
    Ok(())
}

async fn check_agent(hub: &Hub, field: &str, id: Uuid) -> CoreResult<()> {
    let ok: Option<i32> = sqlx::query_scalar("select 1 from agents where id = $1").bind(id).fetch_optional(hub.db()).await?;
    ok.map(|_| ()).ok_or_else(|| CoreError::field(field, "no such agent"))
}

async fn create(
    State(hub): State<Hub>,
    Extension(crm): Extension<Crm>,
    caller: Caller,
    ApiJson(b): ApiJson<NewCustomer>,
) -> CoreResult<(StatusCode, Json<CustomerView>)> {
    caller.require(STAFF)?;
    check_text("name", &b.name, 200)?;
    if let Some(x) = &b.external_id {
        check_text("external_id", x, 200)?;
    }
    if let Some(l) = &b.language {
        check_language(l).map_err(|e| CoreError::field("language", e))?;
    }
    if let Some(t) = &b.time_zone {
        check_time_zone(t).map_err(|e| CoreError::field("time_zone", e))?;
    }
    if let Some(d) = b.birthday {
        check_birthday(d)?;
    }
    if let Some(c) = &b.company {
        check_text("company", c, 200)?;
    }
    let tags = check_tags(&b.tags)?;
    crm.settings.check_attributes(&b.attributes, true)?;
    if let Some(m) = b.own_manager_id {
        check_agent(&hub, "own_manager_id", m).await?;
    }
    if b.identities.len() > 20 {
        return Err(CoreError::field("identities", "at most 20"));
    }
    let mut idents = Vec::new();
    for (i, ident) in b.identities.iter().enumerate() {
        let a = normalize::address(ident.kind, &ident.address, crm.settings.region)
            .map_err(|e| CoreError::field(&format!("identities[{i}].address"), e.to_string()))?;
        idents.push((ident.kind, a));
    }
    let mut tx = hub.db().begin().await?;
    let id: Uuid = sqlx::query_scalar(
        "insert into customers (name, external_id, language, time_zone, birthday, tags, attributes, company, own_manager_id,
            consent_sms, consent_email)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, coalesce($10, false), coalesce($11, false)) returning id",
    )
    .bind(b.name.trim())
    .bind(&b.external_id)
    .bind(&b.language)
    .bind(&b.time_zone)
    .bind(b.birthday)
    .bind(&tags)
    .bind(Value::Object(b.attributes.clone()))
    .bind(&b.company)
    .bind(b.own_manager_id)
    .bind(b.consent_sms)
    .bind(b.consent_email)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| unique_to_field(e, "external_id", "another customer has this external_id"))?;
    for (i, (kind, addr)) in idents.iter().enumerate() {
        let owner: Option<Uuid> = sqlx::query_scalar(
            "insert into customer_identities (customer_id, kind, address) values ($1, $2, $3)
             on conflict (kind, address) do nothing returning customer_id",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(addr)
        .fetch_optional(&mut *tx)
        .await?;
        if owner.is_none() {
            return Err(CoreError::Conflict(format!("identities[{i}]: {addr} already belongs to another customer")));
        }
    }
    for (kind, granted) in [("sms", b.consent_sms), ("email", b.consent_email)] {
        if let Some(true) = granted {
            sqlx::query(
                "insert into customer_consent_events (customer_id, kind, granted, source, actor_user_id) values ($1, $2, true, 'api', $3)",
            )
            .bind(id)
            .bind(kind)
            .bind(caller.user_id)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view(&hub, id).await?)))
}

fn unique_to_field(e: sqlx::Error, field: &str, reason: &str) -> CoreError {
    if switchboard_core::error::is_unique_violation(&e) {
        CoreError::field(field, reason)
    } else {
        CoreError::Database(e)
    }
}

async fn get_one(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<CustomerView>> {
    caller.require(READERS)?;
    Ok(Json(view(&hub, id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateCustomer {
    name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    external_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    language: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    time_zone: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    birthday: Option<Option<NaiveDate>>,
    tags: Option<Vec<String>>,
    /// JSON merge patch of the attributes (null removes one).
    attributes: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "double_option")]
    company: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    own_manager_id: Option<Option<Uuid>>,
}

async fn update(
    State(hub): State<Hub>,
    Extension(crm): Extension<Crm>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<UpdateCustomer>,
) -> CoreResult<Json<CustomerView>> {
    caller.require(STAFF)?;
    let mut tx = hub.db().begin().await?;
    let c: Option<Customer> = sqlx::query_as(&format!("select {CUSTOMER_COLUMNS} from customers where id = $1 for update"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let mut c = c.ok_or(CoreError::NotFound("customer"))?;
    if c.erased_at.is_some() || c.merged_into.is_some() {
        return Err(CoreError::Conflict("this customer was erased or merged; it cannot be edited".into()));
    }
    if let Some(n) = b.name {
        check_text("name", &n, 200)?;
        c.name = n.trim().to_string();
    }
    if let Some(x) = b.external_id {
        if let Some(x) = &x {
            check_text("external_id", x, 200)?;
        }
        c.external_id = x;
    }
    if let Some(l) = b.language {
        if let Some(l) = &l {
            check_language(l).map_err(|e| CoreError::field("language", e))?;
        }
        c.language = l;
    }
    if let Some(t) = b.time_zone {
        if let Some(t) = &t {
            check_time_zone(t).map_err(|e| CoreError::field("time_zone", e))?;
        }
        c.time_zone = t;
    }
    if let Some(d) = b.birthday {
        if let Some(d) = d {
            check_birthday(d)?;
        }
        c.birthday = d;
    }
    if let Some(t) = b.tags {
        c.tags = check_tags(&t)?;
    }
    if let Some(co) = b.company {
        if let Some(co) = &co {
            check_text("company", co, 200)?;
        }
        c.company = co;
    }
    if let Some(m) = b.own_manager_id {
        if let Some(m) = m {
            check_agent(&hub, "own_manager_id", m).await?;
        }
        c.own_manager_id = m;
    }
    if let Some(patch) = b.attributes {
        crm.settings.check_attributes(&patch, false)?;
        let mut attrs = c.attributes.as_object().cloned().unwrap_or_default();
        for (k, v) in patch {
            if v.is_null() {
                attrs.remove(&k);
            } else {
                attrs.insert(k, v);
            }
        }
        c.attributes = Value::Object(attrs);
    }
    sqlx::query(
        "update customers set name = $2, external_id = $3, language = $4, time_zone = $5, birthday = $6, tags = $7,
            attributes = $8, company = $9, own_manager_id = $10, updated_at = now() where id = $1",
    )
    .bind(id)
    .bind(&c.name)
    .bind(&c.external_id)
    .bind(&c.language)
    .bind(&c.time_zone)
    .bind(c.birthday)
    .bind(&c.tags)
    .bind(&c.attributes)
    .bind(&c.company)
    .bind(c.own_manager_id)
    .execute(&mut *tx)
    .await
    .map_err(|e| unique_to_field(e, "external_id", "another customer has this external_id"))?;
    tx.commit().await?;
    Ok(Json(view(&hub, id).await?))
}

async fn card(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<Value>> {
    caller.require(STAFF)?;
    store::card(hub.db(), id).await?.map(Json).ok_or(CoreError::NotFound("customer"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn timeline(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> CoreResult<Json<Paged<store::TimelineEntry>>> {
    caller.require(STAFF)?;
    let (limit, offset) = page_bounds(q.limit, q.offset)?;
    store::customer(hub.db(), id).await?.ok_or(CoreError::NotFound("customer"))?;
    let rows = store::timeline(hub.db(), id, limit + 1, offset).await?;
    Ok(Json(paged(rows, limit, offset)))
}

async fn add_identity(
    State(hub): State<Hub>,
    Extension(crm): Extension<Crm>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<NewIdentity>,
) -> CoreResult<(StatusCode, Json<Identity>)> {
    caller.require(STAFF)?;
    let addr = normalize::address(b.kind, &b.address, crm.settings.region).map_err(|e| CoreError::field("address", e.to_string()))?;
    let c = store::customer(hub.db(), id).await?.ok_or(CoreError::NotFound("customer"))?;
    if c.erased_at.is_some() || c.merged_into.is_some() {
        return Err(CoreError::Conflict("this customer was erased or merged".into()));
    }
    let row: Option<Identity> = sqlx::query_as(
        "insert into customer_identities (customer_id, kind, address) values ($1, $2, $3)
         on conflict (kind, address) do nothing returning id, customer_id, kind, address, created_at",
    )
    .bind(id)
    .bind(b.kind.as_str())
    .bind(&addr)
    .fetch_optional(hub.db())
    .await?;
    match row {
        Some(r) => Ok((StatusCode::CREATED, Json(r))),
        None => {
            let owner: Option<Uuid> = sqlx::query_scalar("select customer_id from customer_identities where kind = $1 and address = $2")
                .bind(b.kind.as_str())
                .bind(&addr)
                .fetch_optional(hub.db())
                .await?;
            Err(CoreError::Conflict(match owner {
                Some(o) if o == id => format!("{addr} is already an identity of this customer"),
                Some(o) => format!("{addr} belongs to customer {o} (merge them if they are the same person)"),
                None => format!("{addr} was just taken; retry"),
            }))
        }
    }
}

async fn remove_identity(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath((id, identity_id)): ApiPath<(Uuid, Uuid)>,
) -> CoreResult<StatusCode> {
    caller.require(STAFF)?;
    let n = sqlx::query("delete from customer_identities where id = $1 and customer_id = $2")
        .bind(identity_id)
        .bind(id)
        .execute(hub.db())
        .await?;
    if n.rows_affected() == 0 {
        return Err(CoreError::NotFound("identity"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Note {
    id: Uuid,
    customer_id: Uuid,
    author_user_id: Option<Uuid>,
    author_name: String,
    body: String,
    created_at: DateTime<Utc>,
}

async fn notes(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> CoreResult<Json<Paged<Note>>> {
    caller.require(STAFF)?;
    let (limit, offset) = page_bounds(q.limit, q.offset)?;
    let rows: Vec<Note> = sqlx::query_as(
        "select id, customer_id, author_user_id, author_name, body, created_at from customer_notes
         where customer_id = $1 order by created_at desc, id limit $2 offset $3",
    )
    .bind(id)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(hub.db())
    .await?;
    Ok(Json(paged(rows, limit, offset)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNote {
    body: String,
}

async fn add_note(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<NewNote>,
) -> CoreResult<(StatusCode, Json<Note>)> {
    caller.require(STAFF)?;
    let body = b.body.trim();
    if body.is_empty() || body.len() > 20_000 {
        return Err(CoreError::field("body", "must be 1..=20000 bytes"));
    }
    let c = store::customer(hub.db(), id).await?.ok_or(CoreError::NotFound("customer"))?;
    if c.erased_at.is_some() {
        return Err(CoreError::Conflict("this customer was erased".into()));
    }
    let target = c.merged_into.unwrap_or(id);
    let n: Note = sqlx::query_as(
        "insert into customer_notes (customer_id, author_user_id, author_name, body)
         values ($1, $2, $3, $4) returning id, customer_id, author_user_id, author_name, body, created_at",
    )
    .bind(target)
    .bind(caller.user_id)
    .bind(&caller.username)
    .bind(body)
    .fetch_one(hub.db())
    .await?;
    Ok((StatusCode::CREATED, Json(n)))
}

async fn consent_view(hub: &Hub, id: Uuid) -> CoreResult<Value> {
    let (sms, email): (bool, bool) = sqlx::query_as("select consent_sms, consent_email from customers where id = $1")
        .bind(id)
        .fetch_optional(hub.db())
        .await?
        .ok_or(CoreError::NotFound("customer"))?;
    let history: Vec<Value> = sqlx::query_scalar(
        "select json_build_object('kind', kind, 'granted', granted, 'source', source, 'actor_user_id', actor_user_id, 'at', at)::jsonb
         from customer_consent_events where customer_id = $1 order by at desc, id desc limit 200",
    )
    .bind(id)
    .fetch_all(hub.db())
    .await?;
    Ok(json!({ "sms": sms, "email": email, "history": history }))
}

async fn consent(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<Value>> {
    caller.require(READERS)?;
    Ok(Json(consent_view(&hub, id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentChange {
    sms: Option<bool>,
    email: Option<bool>,
    /// Where the consent was given or withdrawn (web form, phone call, letter).
    source: String,
}

async fn set_consent(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<ConsentChange>,
) -> CoreResult<Json<Value>> {
    caller.require(READERS)?;
    let source = b.source.trim();
    if source.is_empty() || source.chars().count() > 200 {
        return Err(CoreError::field("source", "must be 1..=200 characters"));
    }
    if b.sms.is_none() && b.email.is_none() {
        return Err(CoreError::field("sms", "give sms and/or email"));
    }
    let mut tx = hub.db().begin().await?;
    let cur: Option<(bool, bool, Option<DateTime<Utc>>)> =
        sqlx::query_as("select consent_sms, consent_email, erased_at from customers where id = $1 for update")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let (sms, email, erased) = cur.ok_or(CoreError::NotFound("customer"))?;
    if erased.is_some() {
        return Err(CoreError::Conflict("this customer was erased".into()));
    }
    for (kind, new, old) in [("sms", b.sms, sms), ("email", b.email, email)] {
        if let Some(v) = new.filter(|v| *v != old) {
            sqlx::query(&format!("update customers set consent_{kind} = $2, updated_at = now() where id = $1"))
                .bind(id)
                .bind(v)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "insert into customer_consent_events (customer_id, kind, granted, source, actor_user_id) values ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(kind)
            .bind(v)
            .bind(source)
            .bind(caller.user_id)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(Json(consent_view(&hub, id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeBody {
    /// The customer merged into the one in the path (which survives).
    other_id: Uuid,
}

async fn merge(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<MergeBody>,
) -> CoreResult<Json<CustomerView>> {
    caller.require(SUPERVISORS)?;
    store::merge(hub.db(), Some(caller.user_id), id, b.other_id).await?;
    Ok(Json(view(&hub, id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DuplicatesQuery {
    /// Work-list position to continue after (`next_after` of the previous page).
    after: Option<i64>,
    limit: Option<i64>,
}

async fn duplicates(
    State(hub): State<Hub>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DuplicatesQuery>,
) -> CoreResult<Json<duplicates::DuplicatePage>> {
    caller.require(SUPERVISORS)?;
    let (limit, _) = page_bounds(q.limit, None)?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(CoreError::field("after", "must not be negative"));
    }
    Ok(Json(duplicates::duplicates(hub.db(), after, limit).await?))
}

async fn privacy_export(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Response> {
    caller.require(SUPERVISORS)?;
    let v = store::privacy_export(hub.db(), id).await?.ok_or(CoreError::NotFound("customer"))?;
    let mut conn = hub.db().acquire().await?;
    audit(&mut conn, Some(caller.user_id), "customer.privacy_export", "customer", &id.to_string(), json!({})).await?;
    let mut resp = Json(v).into_response();
    if let Ok(h) = header::HeaderValue::from_str(&format!("attachment; filename=\"customer-{id}.json\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, h);
    }
    Ok(resp)
}

async fn erase(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<Value>> {
    caller.require(SUPERVISORS)?;
    store::erase(&hub, Some(caller.user_id), id).await?;
    Ok(Json(json!({ "id": id, "erased": true })))
}

// ---------------------------------------------------------------- import / export

async fn import_start(
    State(hub): State<Hub>,
    Extension(crm): Extension<Crm>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> CoreResult<(StatusCode, Json<Value>)> {
    caller.require(SUPERVISORS)?;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "text/csv" && mime != "application/csv" {
        return Err(CoreError::Invalid("expected Content-Type: text/csv".into()));
    }
    if body.is_empty() {
        return Err(CoreError::field("body", "empty CSV"));
    }
    // The file is stored with the job before the answer: a restart resumes it.
    let job = jobs::create_job(hub.db(), Some(caller.user_id), &body).await?;
    let mut conn = hub.db().acquire().await?;
    audit(&mut conn, Some(caller.user_id), "customer.import", "import_job", &job.to_string(), json!({ "bytes": body.len() })).await?;
    drop(conn);
    // None: another node's sweep took it first, and runs it.
    if let Some(claimed) = jobs::try_claim(hub.db(), job).await? {
        let pool = hub.db().clone();
        let settings = crm.settings.clone();
        let shutdown = crm.shutdown.clone();
        tokio::spawn(async move { jobs::run(&pool, &settings, claimed, Some(body), shutdown).await });
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "job_id": job, "status_url": format!("/api/v1/customers/import/{job}") }))))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct ImportJob {
    id: Uuid,
    status: String,
    total: i64,
    done: i64,
    created: i64,
    updated: i64,
    rejected: i64,
    errors: Value,
    failure: Option<String>,
    /// Times a node picked the job up again after its worker stopped.
    resumed: i32,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

async fn import_status(State(hub): State<Hub>, caller: Caller, ApiPath(job): ApiPath<Uuid>) -> CoreResult<Json<Value>> {
    caller.require(SUPERVISORS)?;
    let j: ImportJob = sqlx::query_as(
        "select id, status, total, done, created, updated, rejected, errors, failure, resumed, created_at, finished_at
         from crm_import_jobs where id = $1",
    )
    .bind(job)
    .fetch_optional(hub.db())
    .await?
    .ok_or(CoreError::NotFound("import job"))?;
    let pct = if j.total > 0 {
        (j.done * 100 / j.total).min(100)
    } else if j.status == "done" {
        100
    } else {
        0
    };
    let mut v = serde_json::to_value(&j).map_err(|e| CoreError::Internal(e.to_string()))?;
    v["percent"] = json!(pct);
    Ok(Json(v))
}

async fn export_csv(State(hub): State<Hub>, Extension(crm): Extension<Crm>, caller: Caller) -> CoreResult<Response> {
    caller.require(SUPERVISORS)?;
    let mut conn = hub.db().acquire().await?;
    audit(&mut conn, Some(caller.user_id), "customer.export", "customers", "*", json!({})).await?;
    drop(conn);
    let pool = hub.db().clone();
    let settings = crm.settings.clone();
    // Keyset pages of 5000 rows streamed as they are read: a million customers never sit
    // in memory at once.
    let stream = futures::stream::unfold((Some(None::<Uuid>), true), move |(after, first)| {
        let pool = pool.clone();
        let settings = settings.clone();
        async move {
            let after = after?;
            match import::export_page(&pool, &settings, after, first, 5000).await {
                Ok(Some((bytes, last))) => Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), (Some(Some(last)), false))),
                Ok(None) if first => {
                    let header = import::export_header(&settings).join(",") + "\n";
                    Some((Ok(Bytes::from(header)), (None, false)))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(error = %e, "CSV export failed mid-stream.");
                    Some((Err(std::io::Error::other("export failed")), (None, false)))
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/csv; charset=utf-8")
        .header(header::CONTENT_DISPOSITION, "attachment; filename=\"customers.csv\"")
        .body(Body::from_stream(stream))
        .map_err(|e| CoreError::Internal(e.to_string()))
}

// ---------------------------------------------------------------- appointments

const APPOINTMENT_STATUSES: &[&str] = &["scheduled", "confirmed", "cancelled", "done", "no_show"];

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Appointment {
    id: Uuid,
    customer_id: Uuid,
    customer_name: String,
    starts_at: DateTime<Utc>,
    time_zone: String,
    duration_minutes: i32,
    location: String,
    kind: String,
    status: String,
    notes: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[sqlx(skip)]
    local_start: Option<String>,
}

const APPOINTMENT_SELECT: &str =
    "select a.id, a.customer_id, c.name as customer_name, a.starts_at, a.time_zone, a.duration_minutes, a.location,
        a.kind, a.status, a.notes, a.created_at, a.updated_at from appointments a join customers c on c.id = a.customer_id";

fn with_local(mut a: Appointment) -> Appointment {
    if let Ok(tz) = a.time_zone.parse::<chrono_tz::Tz>() {
        a.local_start = Some(a.starts_at.with_timezone(&tz).format("%Y-%m-%dT%H:%M").to_string());
    }
    a
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppointmentQuery {
    customer_id: Option<Uuid>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn appointments(
    State(hub): State<Hub>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AppointmentQuery>,
) -> CoreResult<Json<Paged<Appointment>>> {
    caller.require(STAFF)?;
    let (limit, offset) = page_bounds(q.limit, q.offset)?;
    if let Some(s) = &q.status {
        check_status(s)?;
    }
    let rows: Vec<Appointment> = sqlx::query_as(&format!(
        "{APPOINTMENT_SELECT} where ($1::uuid is null or a.customer_id = $1) and ($2::timestamptz is null or a.starts_at >= $2)
           and ($3::timestamptz is null or a.starts_at < $3) and ($4::text is null or a.status = $4)
         order by a.starts_at, a.id limit $5 offset $6"
    ))
    .bind(q.customer_id)
    .bind(q.from)
    .bind(q.to)
    .bind(&q.status)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(hub.db())
    .await?;
    Ok(Json(paged(rows.into_iter().map(with_local).collect(), limit, offset)))
}

fn check_status(s: &str) -> CoreResult<()> {
    if APPOINTMENT_STATUSES.contains(&s) {
        Ok(())
    } else {
        Err(CoreError::field("status", format!("must be one of: {}", APPOINTMENT_STATUSES.join(", "))))
    }
}

/// `starts_at` with an offset, or `local_start` (no offset) read in `time_zone`.
fn appointment_time(starts_at: Option<DateTime<Utc>>, local_start: Option<&str>, tz: &str) -> CoreResult<DateTime<Utc>> {
    let zone: chrono_tz::Tz = tz.parse().map_err(|_| CoreError::field("time_zone", "must be an IANA time zone such as Europe/Madrid"))?;
    match (starts_at, local_start) {
        (Some(t), None) => Ok(t),
        (None, Some(l)) => {
            let naive = NaiveDateTime::parse_from_str(l, "%Y-%m-%dT%H:%M")
                .or_else(|_| NaiveDateTime::parse_from_str(l, "%Y-%m-%dT%H:%M:%S"))
                .map_err(|_| CoreError::field("local_start", "must be YYYY-MM-DDTHH:MM"))?;
            naive
                .and_local_timezone(zone)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
                .ok_or_else(|| CoreError::field("local_start", "does not exist in this time zone (DST gap)"))
        }
        _ => Err(CoreError::field("starts_at", "give starts_at (RFC 3339) or local_start with time_zone, not both")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAppointment {
    customer_id: Uuid,
    starts_at: Option<DateTime<Utc>>,
    local_start: Option<String>,
    time_zone: Option<String>,
    duration_minutes: Option<i32>,
    #[serde(default)]
    location: String,
    kind: Option<String>,
    status: Option<String>,
    #[serde(default)]
    notes: String,
}

async fn create_appointment(
    State(hub): State<Hub>,
    Extension(crm): Extension<Crm>,
    caller: Caller,
    ApiJson(b): ApiJson<NewAppointment>,
) -> CoreResult<(StatusCode, Json<Appointment>)> {
    caller.require(STAFF)?;
    let c = store::customer(hub.db(), b.customer_id).await?.ok_or_else(|| CoreError::field("customer_id", "no such customer"))?;
    if c.erased_at.is_some() || c.merged_into.is_some() {
        return Err(CoreError::field("customer_id", "this customer was erased or merged"));
    }
    let tz = b.time_zone.or(c.time_zone).unwrap_or_else(|| "UTC".into());
    let starts = appointment_time(b.starts_at, b.local_start.as_deref(), &tz)?;
    let status = b.status.unwrap_or_else(|| "scheduled".into());
    check_status(&status)?;
    let kind = b.kind.unwrap_or_else(|| "visit".into());
    check_text("kind", &kind, 50)?;
    check_text("location", &b.location, 500)?;
    if b.notes.len() > 5000 {
        return Err(CoreError::field("notes", "at most 5000 bytes"));
    }
    let dur = b.duration_minutes.unwrap_or(30);
    if !(1..=10080).contains(&dur) {
        return Err(CoreError::field("duration_minutes", "must be 1..=10080"));
    }
    let id: Uuid = sqlx::query_scalar(
        "insert into appointments (customer_id, starts_at, time_zone, duration_minutes, location, kind, status, notes, created_by)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning id",
    )
    .bind(b.customer_id)
    .bind(starts)
    .bind(&tz)
    .bind(dur)
    .bind(&b.location)
    .bind(&kind)
    .bind(&status)
    .bind(&b.notes)
    .bind(caller.user_id)
    .fetch_one(hub.db())
    .await?;
    // Reminders and follow-ups follow the change on the next campaign tick, on every node.
    crm.campaigns.appointments_changed(&hub).await;
    let a: Appointment = sqlx::query_as(&format!("{APPOINTMENT_SELECT} where a.id = $1")).bind(id).fetch_one(hub.db()).await?;
    Ok((StatusCode::CREATED, Json(with_local(a))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateAppointment {
    starts_at: Option<DateTime<Utc>>,
    local_start: Option<String>,
    time_zone: Option<String>,
    duration_minutes: Option<i32>,
    location: Option<String>,
    kind: Option<String>,
    status: Option<String>,
    notes: Option<String>,
}

async fn update_appointment(
    State(hub): State<Hub>,
    Extension(crm): Extension<Crm>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<UpdateAppointment>,
) -> CoreResult<Json<Appointment>> {
    caller.require(STAFF)?;
    let cur: Appointment = sqlx::query_as(&format!("{APPOINTMENT_SELECT} where a.id = $1"))
        .bind(id)
        .fetch_optional(hub.db())
        .await?
        .ok_or(CoreError::NotFound("appointment"))?;
    let tz = b.time_zone.clone().unwrap_or(cur.time_zone.clone());
    let starts = if b.starts_at.is_some() || b.local_start.is_some() {
        appointment_time(b.starts_at, b.local_start.as_deref(), &tz)?
    } else {
        tz.parse::<chrono_tz::Tz>().map_err(|_| CoreError::field("time_zone", "must be an IANA time zone such as Europe/Madrid"))?;
        cur.starts_at
    };
    if let Some(s) = &b.status {
        check_status(s)?;
    }
    if let Some(k) = &b.kind {
        check_text("kind", k, 50)?;
    }
    if let Some(l) = &b.location {
        check_text("location", l, 500)?;
    }
    if b.notes.as_ref().is_some_and(|n| n.len() > 5000) {
        return Err(CoreError::field("notes", "at most 5000 bytes"));
    }
    if b.duration_minutes.is_some_and(|d| !(1..=10080).contains(&d)) {
        return Err(CoreError::field("duration_minutes", "must be 1..=10080"));
    }
    sqlx::query(
        "update appointments set starts_at = $2, time_zone = $3, duration_minutes = coalesce($4, duration_minutes),
            location = coalesce($5, location), kind = coalesce($6, kind), status = coalesce($7, status), notes = coalesce($8, notes),
            updated_at = now() where id = $1",
    )
    .bind(id)
    .bind(starts)
    .bind(&tz)
    .bind(b.duration_minutes)
    .bind(&b.location)
    .bind(&b.kind)
    .bind(&b.status)
    .bind(&b.notes)
    .execute(hub.db())
    .await?;
    // Reminders and follow-ups follow the change on the next campaign tick, on every node.
    crm.campaigns.appointments_changed(&hub).await;
    let a: Appointment = sqlx::query_as(&format!("{APPOINTMENT_SELECT} where a.id = $1")).bind(id).fetch_one(hub.db()).await?;
    Ok(Json(with_local(a)))
}

// ---------------------------------------------------------------- tasks

const TASK_KINDS: &[&str] = &["call_back", "return_visit", "other"];

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Task {
    id: Uuid,
    agent_id: Uuid,
    agent_name: String,
    customer_id: Option<Uuid>,
    customer_name: Option<String>,
    interaction_id: Option<Uuid>,
    kind: String,
    title: String,
    due_at: DateTime<Utc>,
    done_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

const TASK_SELECT: &str = "select t.id, t.agent_id, a.name as agent_name, t.customer_id, c.name as customer_name, t.interaction_id, t.kind,
        t.title, t.due_at, t.done_at, t.created_at
     from crm_tasks t join agents a on a.id = t.agent_id left join customers c on c.id = t.customer_id";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskQuery {
    /// `me`, an agent id, or absent (supervisors: everyone; agents: themselves).
    agent_id: Option<String>,
    customer_id: Option<Uuid>,
    /// open (default), done or all.
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

fn task_agent_filter(caller: &Caller, wanted: Option<&str>) -> CoreResult<Option<Uuid>> {
    let wanted = match wanted {
        Some("me") => Some(caller.agent_id.ok_or_else(|| CoreError::field("agent_id", "your user has no agent record"))?),
        Some(s) => Some(s.parse::<Uuid>().map_err(|_| CoreError::field("agent_id", "must be `me` or an agent id"))?),
        None => None,
    };
    if caller.is_supervisor() {
        return Ok(wanted);
    }
    let me = caller.agent_id.ok_or(CoreError::Forbidden)?;
    match wanted {
        Some(w) if w != me => Err(CoreError::Forbidden),
        _ => Ok(Some(me)),
    }
}

async fn tasks(State(hub): State<Hub>, caller: Caller, ApiQuery(q): ApiQuery<TaskQuery>) -> CoreResult<Json<Paged<Task>>> {
    caller.require(STAFF)?;
    let (limit, offset) = page_bounds(q.limit, q.offset)?;
    let agent = task_agent_filter(&caller, q.agent_id.as_deref())?;
    let status = q.status.as_deref().unwrap_or("open");
    if !["open", "done", "all"].contains(&status) {
        return Err(CoreError::field("status", "must be open, done or all"));
    }
    let rows: Vec<Task> = sqlx::query_as(&format!(
        "{TASK_SELECT} where ($1::uuid is null or t.agent_id = $1) and ($2::uuid is null or t.customer_id = $2)
           and ($3 = 'all' or ($3 = 'open' and t.done_at is null) or ($3 = 'done' and t.done_at is not null))
         order by t.due_at, t.id limit $4 offset $5"
    ))
    .bind(agent)
    .bind(q.customer_id)
    .bind(status)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(hub.db())
    .await?;
    Ok(Json(paged(rows, limit, offset)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTask {
    /// Assignee; defaults to the caller's agent. Agents may only assign themselves.
    agent_id: Option<Uuid>,
    customer_id: Option<Uuid>,
    interaction_id: Option<Uuid>,
    kind: Option<String>,
    title: String,
    due_at: DateTime<Utc>,
}

async fn create_task(State(hub): State<Hub>, caller: Caller, ApiJson(b): ApiJson<NewTask>) -> CoreResult<(StatusCode, Json<Task>)> {
    caller.require(STAFF)?;
    let agent = match b.agent_id {
        Some(a) => {
            if !caller.is_supervisor() && Some(a) != caller.agent_id {
                return Err(CoreError::Forbidden);
            }
            check_agent(&hub, "agent_id", a).await?;
            a
        }
        None => caller.agent_id.ok_or_else(|| CoreError::field("agent_id", "required (your user has no agent record)"))?,
    };
    let kind = b.kind.unwrap_or_else(|| "call_back".into());
    if !TASK_KINDS.contains(&kind.as_str()) {
        return Err(CoreError::field("kind", format!("must be one of: {}", TASK_KINDS.join(", "))));
    }
    let title = b.title.trim();
    if title.is_empty() {
        return Err(CoreError::field("title", "required"));
    }
    check_text("title", title, 300)?;
    if let Some(c) = b.customer_id {
        store::customer(hub.db(), c).await?.ok_or_else(|| CoreError::field("customer_id", "no such customer"))?;
    }
    let id: Uuid = sqlx::query_scalar(
        "insert into crm_tasks (agent_id, customer_id, interaction_id, kind, title, due_at, created_by)
         values ($1, $2, $3, $4, $5, $6, $7) returning id",
    )
    .bind(agent)
    .bind(b.customer_id)
    .bind(b.interaction_id)
    .bind(&kind)
    .bind(title)
    .bind(b.due_at)
    .bind(caller.user_id)
    .fetch_one(hub.db())
    .await?;
    let t: Task = sqlx::query_as(&format!("{TASK_SELECT} where t.id = $1")).bind(id).fetch_one(hub.db()).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateTask {
    done: Option<bool>,
    agent_id: Option<Uuid>,
    title: Option<String>,
    due_at: Option<DateTime<Utc>>,
}

async fn update_task(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<UpdateTask>,
) -> CoreResult<Json<Task>> {
    caller.require(STAFF)?;
    let cur: Task = sqlx::query_as(&format!("{TASK_SELECT} where t.id = $1"))
        .bind(id)
        .fetch_optional(hub.db())
        .await?
        .ok_or(CoreError::NotFound("task"))?;
    if !caller.is_supervisor() {
        if caller.agent_id != Some(cur.agent_id) {
            return Err(CoreError::NotFound("task"));
        }
        if b.agent_id.is_some_and(|a| a != cur.agent_id) {
            return Err(CoreError::Forbidden);
        }
    }
    if let Some(a) = b.agent_id {
        check_agent(&hub, "agent_id", a).await?;
    }
    if let Some(t) = &b.title {
        if t.trim().is_empty() {
            return Err(CoreError::field("title", "required"));
        }
        check_text("title", t, 300)?;
    }
    sqlx::query(
        "update crm_tasks set agent_id = coalesce($2, agent_id), title = coalesce($3, title), due_at = coalesce($4, due_at),
            done_at = case when $5::bool is null then done_at when $5 then coalesce(done_at, now()) else null end
         where id = $1",
    )
    .bind(id)
    .bind(b.agent_id)
    .bind(b.title.as_deref().map(str::trim))
    .bind(b.due_at)
    .bind(b.done)
    .execute(hub.db())
    .await?;
    let t: Task = sqlx::query_as(&format!("{TASK_SELECT} where t.id = $1")).bind(id).fetch_one(hub.db()).await?;
    Ok(Json(t))
}
