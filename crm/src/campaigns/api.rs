//! The campaign HTTP API for marketers: campaigns (create, edit, start, pause, resume,
//! cancel), the audience builder's live count, the template preview with its counter, a
//! test send to one number, results, recipients and their CSV export. [`ROUTES`] documents
//! each route with who may call it.

use super::audience::{self, Audience};
use super::model::{Campaign, COLUMNS, KINDS};
use super::results;
use super::schedule::zone_or;
use super::template::{self, AppointmentFacts, RenderContext, Template};
use super::Engine;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Duration, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchboard_core::api::{double_option, page_bounds, paged, Access, ApiJson, ApiPath, ApiQuery, Paged, RouteDoc};
use switchboard_core::auth::{audit, Caller};
use switchboard_core::outbox::{enqueue_tx, NewOutbound};
use switchboard_core::{Channel, CoreError, CoreResult, Hub, Role};
use uuid::Uuid;

use Role::*;
const EDITORS: &[Role] = &[Admin, Marketer];
const READERS: &[Role] = &[Admin, Supervisor, Marketer];

macro_rules! route {
    ($m:literal, $p:literal, $a:expr, $s:literal) => {
        RouteDoc { method: $m, path: $p, access: $a, summary: $s, tag: "campaigns" }
    };
}

/// Every campaign route.
pub const ROUTES: &[RouteDoc] = &[
    route!("GET", "/api/v1/campaigns", Access::Roles(READERS), "Campaigns with status and progress."),
    route!("POST", "/api/v1/campaigns", Access::Roles(EDITORS), "Create a campaign (a draft)."),
    route!("POST", "/api/v1/campaigns/audience/count", Access::Roles(EDITORS), "Live size of an audience, with a few sample customers."),
    route!(
        "POST",
        "/api/v1/campaigns/preview",
        Access::Roles(EDITORS),
        "Render a template for a sample customer: text, encoding, characters, parts."
    ),
    route!("GET", "/api/v1/campaigns/{id}", Access::Roles(READERS), "A campaign with its totals."),
    route!("PATCH", "/api/v1/campaigns/{id}", Access::Roles(EDITORS), "Edit a campaign (running campaigns too: nobody is sent twice)."),
    route!("POST", "/api/v1/campaigns/{id}/start", Access::Roles(EDITORS), "Start a draft campaign."),
    route!("POST", "/api/v1/campaigns/{id}/pause", Access::Roles(EDITORS), "Pause: nothing more is handed to the channel."),
    route!("POST", "/api/v1/campaigns/{id}/resume", Access::Roles(EDITORS), "Resume a paused campaign."),
    route!("POST", "/api/v1/campaigns/{id}/cancel", Access::Roles(EDITORS), "Cancel: recipients not yet handed over are cancelled."),
    route!("POST", "/api/v1/campaigns/{id}/test-send", Access::Roles(EDITORS), "Send the rendered message to one number."),
    route!(
        "GET",
        "/api/v1/campaigns/{id}/results",
        Access::Roles(READERS),
        "Totals, delivery rate, replies, STOPs and the delivery timeline."
    ),
    route!("GET", "/api/v1/campaigns/{id}/recipients", Access::Roles(READERS), "Recipients and their outcomes (status filter, paged)."),
    route!("GET", "/api/v1/campaigns/{id}/recipients.csv", Access::Roles(READERS), "Every recipient and outcome as CSV."),
];

/// The campaign router.
pub fn router(engine: Engine, settings: std::sync::Arc<crate::config::Settings>) -> Router<Hub> {
    Router::new()
        .route("/api/v1/campaigns", get(list).post(create))
        .route("/api/v1/campaigns/audience/count", post(audience_count))
        .route("/api/v1/campaigns/preview", post(preview))
        .route("/api/v1/campaigns/{id}", get(get_one).patch(update))
        .route("/api/v1/campaigns/{id}/start", post(start))
        .route("/api/v1/campaigns/{id}/pause", post(pause))
        .route("/api/v1/campaigns/{id}/resume", post(resume))
        .route("/api/v1/campaigns/{id}/cancel", post(cancel))
        .route("/api/v1/campaigns/{id}/test-send", post(test_send))
        .route("/api/v1/campaigns/{id}/results", get(results_view))
        .route("/api/v1/campaigns/{id}/recipients", get(recipients))
        .route("/api/v1/campaigns/{id}/recipients.csv", get(recipients_csv))
        .layer(Extension(engine))
        .layer(Extension(settings))
}

/// A campaign with its progress.
#[derive(Debug, Serialize)]
struct CampaignView {
    #[serde(flatten)]
    campaign: Campaign,
    totals: results::Totals,
}

async fn load(db: &sqlx::PgPool, id: Uuid) -> CoreResult<Campaign> {
    sqlx::query_as(&format!("select {COLUMNS} from campaigns where id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or(CoreError::NotFound("campaign"))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    kind: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Debug, Serialize)]
struct ListItem {
    #[serde(flatten)]
    campaign: Campaign,
    /// Rows by status.
    counts: Value,
}

#[tracing::instrument(skip_all)]
async fn list(State(hub): State<Hub>, ApiQuery(q): ApiQuery<ListQuery>) -> CoreResult<Json<Paged<ListItem>>> {
    let (limit, offset) = page_bounds(q.limit, q.offset)?;
    let rows: Vec<Campaign> = sqlx::query_as(&format!(
        "select {COLUMNS} from campaigns where ($1::text is null or status = $1) and ($2::text is null or kind = $2)
          order by created_at desc, id limit $3 offset $4"
    ))
    .bind(&q.status)
    .bind(&q.kind)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(hub.db())
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|c| c.id).collect();
    let counts: Vec<(Uuid, Value)> = sqlx::query_as(
        "select campaign_id, jsonb_object_agg(status, n) from (select campaign_id, status, count(*) n from campaign_recipients
          where campaign_id = any($1) group by 1, 2) s group by 1",
    )
    .bind(&ids)
    .fetch_all(hub.db())
    .await?;
    let counts: std::collections::HashMap<Uuid, Value> = counts.into_iter().collect();
    let items =
        rows.into_iter().map(|c| ListItem { counts: counts.get(&c.id).cloned().unwrap_or_else(|| json!({})), campaign: c }).collect();
    Ok(Json(paged(items, limit, offset)))
}

/// Fields of a new campaign or an edit (absent: unchanged / default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignInput {
    name: Option<String>,
    kind: Option<String>,
    audience: Option<Audience>,
    template: Option<Template>,
    #[serde(default, deserialize_with = "double_option")]
    channel_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    starts_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "double_option")]
    ends_at: Option<Option<DateTime<Utc>>>,
    send_time: Option<String>,
    offset_minutes: Option<i32>,
    grace_minutes: Option<i32>,
    late_policy: Option<String>,
    appointment_kinds: Option<Vec<String>>,
    #[serde(default, deserialize_with = "double_option")]
    quiet_start: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    quiet_end: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    rate_per_second: Option<Option<i32>>,
}

fn time_field(field: &str, s: &str) -> CoreResult<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M:%S"))
        .map_err(|_| CoreError::field(field, "must be a local time HH:MM"))
}

/// Applies an input over a campaign, checking every field.
fn apply(c: &mut Campaign, i: CampaignInput) -> CoreResult<()> {
    if let Some(n) = i.name {
        let n = n.trim().to_string();
        if n.is_empty() || n.len() > 200 {
            return Err(CoreError::field("name", "1 to 200 characters"));
        }
        c.name = n;
    }
    if let Some(a) = i.audience {
        a.check()?;
        c.audience = a;
    }
    if let Some(t) = i.template {
        t.check().map_err(|e| CoreError::field("template", e.to_string()))?;
        c.template = t;
    }
    if let Some(ch) = i.channel_name {
        c.channel_name = ch.filter(|s| !s.trim().is_empty());
    }
    if let Some(s) = i.starts_at {
        c.starts_at = s;
    }
    if let Some(e) = i.ends_at {
        c.ends_at = e;
    }
    if let (Some(s), Some(e)) = (c.starts_at, c.ends_at) {
        if e <= s {
            return Err(CoreError::field("ends_at", "must be after starts_at"));
        }
    }
    if let Some(t) = i.send_time {
        c.send_time = time_field("send_time", &t)?;
    }
    if let Some(o) = i.offset_minutes {
        if !(0..=525_600).contains(&o) {
            return Err(CoreError::field("offset_minutes", "must be 0..=525600 (a year)"));
        }
        c.offset_minutes = o;
    }
    if let Some(g) = i.grace_minutes {
        if !(0..=10_080).contains(&g) {
            return Err(CoreError::field("grace_minutes", "must be 0..=10080 (a week)"));
        }
        c.grace_minutes = g;
    }
    if let Some(p) = i.late_policy {
        if p != "send" && p != "skip" {
            return Err(CoreError::field("late_policy", "must be send or skip"));
        }
        c.late_policy = p;
    }
    if let Some(k) = i.appointment_kinds {
        c.appointment_kinds = k;
    }
    if let Some(q) = i.quiet_start {
        c.quiet_start = q.map(|s| time_field("quiet_start", &s)).transpose()?;
    }
    if let Some(q) = i.quiet_end {
        c.quiet_end = q.map(|s| time_field("quiet_end", &s)).transpose()?;
    }
    if c.quiet_start.is_some() != c.quiet_end.is_some() {
        return Err(CoreError::field("quiet_end", "quiet hours need both a start and an end (or neither)"));
    }
    if let Some(r) = i.rate_per_second {
        if r.is_some_and(|r| !(1..=10_000).contains(&r)) {
            return Err(CoreError::field("rate_per_second", "must be 1..=10000 (or null: the channel's throttle)"));
        }
        c.rate_per_second = r;
    }
    Ok(())
}

async fn save(conn: &mut sqlx::PgConnection, c: &Campaign) -> CoreResult<Campaign> {
    Ok(sqlx::query_as(&format!(
        "update campaigns set name = $2, audience = $3, template = $4, channel_name = $5, starts_at = $6, ends_at = $7, send_time = $8,
                offset_minutes = $9, grace_minutes = $10, late_policy = $11, appointment_kinds = $12, quiet_start = $13, quiet_end = $14,
                rate_per_second = $15, version = version + 1, updated_at = now()
          where id = $1 returning {COLUMNS}"
    ))
    .bind(c.id)
    .bind(&c.name)
    .bind(serde_json::to_value(&c.audience).unwrap_or_default())
    .bind(serde_json::to_value(&c.template).unwrap_or_default())
    .bind(&c.channel_name)
    .bind(c.starts_at)
    .bind(c.ends_at)
    .bind(c.send_time)
    .bind(c.offset_minutes)
    .bind(c.grace_minutes)
    .bind(&c.late_policy)
    .bind(&c.appointment_kinds)
    .bind(c.quiet_start)
    .bind(c.quiet_end)
    .bind(c.rate_per_second)
    .fetch_one(conn)
    .await?)
}

#[tracing::instrument(skip_all)]
async fn create(
    State(hub): State<Hub>,
    caller: Caller,
    ApiJson(mut b): ApiJson<CampaignInput>,
) -> CoreResult<(StatusCode, Json<Campaign>)> {
    let kind = b.kind.take().ok_or_else(|| CoreError::field("kind", "required"))?;
    if !KINDS.contains(&kind.as_str()) {
        return Err(CoreError::field("kind", format!("must be one of: {}", KINDS.join(", "))));
    }
    if b.name.is_none() {
        return Err(CoreError::field("name", "required"));
    }
    if b.template.is_none() {
        return Err(CoreError::field("template", "required"));
    }
    let mut tx = hub.db().begin().await?;
    let mut c: Campaign = sqlx::query_as(&format!(
        "insert into campaigns (name, kind, template, created_by) values ('draft', $1, '{{\"default\": \"\"}}', $2) returning {COLUMNS}"
    ))
    .bind(&kind)
    .bind(caller.user_id)
    .fetch_one(&mut *tx)
    .await?;
    // Reminders default to a day before; follow-ups to a day after.
    apply(&mut c, b)?;
    let c = save(&mut tx, &c).await?;
    audit(&mut tx, Some(caller.user_id), "campaign.create", "campaign", &c.id.to_string(), json!({ "kind": kind, "name": c.name })).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(c)))
}

#[tracing::instrument(skip_all)]
async fn get_one(State(hub): State<Hub>, Extension(e): Extension<Engine>, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<CampaignView>> {
    let campaign = load(hub.db(), id).await?;
    let totals = results::totals(hub.db(), id, e.config.reply_window_hours).await?;
    Ok(Json(CampaignView { campaign, totals }))
}

#[tracing::instrument(skip_all)]
async fn update(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<CampaignInput>,
) -> CoreResult<Json<Campaign>> {
    if b.kind.is_some() {
        return Err(CoreError::field("kind", "cannot be changed; create a new campaign"));
    }
    let mut tx = hub.db().begin().await?;
    let mut c: Campaign = sqlx::query_as(&format!("select {COLUMNS} from campaigns where id = $1 for update"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(CoreError::NotFound("campaign"))?;
    if matches!(c.status.as_str(), "completed" | "cancelled") {
        return Err(CoreError::Conflict(format!("the campaign is {}; it can no longer be edited", c.status)));
    }
    if c.kind == "broadcast" && c.planning_state != "idle" && b.audience.as_ref().is_some_and(|a| *a != c.audience) {
        return Err(CoreError::Conflict("the broadcast's recipients are already planned; its audience can no longer change".into()));
    }
    let edited: Vec<&str> = [
        ("name", b.name.is_some()),
        ("audience", b.audience.is_some()),
        ("template", b.template.is_some()),
        ("schedule", b.starts_at.is_some() || b.ends_at.is_some() || b.send_time.is_some() || b.offset_minutes.is_some()),
        ("quiet_hours", b.quiet_start.is_some() || b.quiet_end.is_some()),
        ("rate", b.rate_per_second.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.then_some(k))
    .collect();
    apply(&mut c, b)?;
    let c = save(&mut tx, &c).await?;
    audit(&mut tx, Some(caller.user_id), "campaign.update", "campaign", &id.to_string(), json!({ "fields": edited })).await?;
    tx.commit().await?;
    Ok(Json(c))
}

async fn transition(hub: &Hub, caller: &Caller, id: Uuid, from: &[&str], to: &str, now: DateTime<Utc>) -> CoreResult<Campaign> {
    let mut tx = hub.db().begin().await?;
    let c: Campaign = sqlx::query_as(&format!("select {COLUMNS} from campaigns where id = $1 for update"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(CoreError::NotFound("campaign"))?;
    if !from.contains(&c.status.as_str()) {
        return Err(CoreError::Conflict(format!("the campaign is {}; it cannot become {to}", c.status)));
    }
    if to == "running" && c.status == "draft" {
        c.template.check().map_err(|e| CoreError::field("template", e.to_string()))?;
        c.audience.check()?;
    }
    let c: Campaign = sqlx::query_as(&format!(
        "update campaigns set status = $2, starts_at = case when $2 = 'running' then coalesce(starts_at, $3) else starts_at end, updated_at = now()
          where id = $1 returning {COLUMNS}"
    ))
    .bind(id)
    .bind(to)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    if to == "cancelled" {
        // Rows already in the outbox go on (they may be on the wire); the rest never will.
        sqlx::query(
            "update campaign_recipients set status = 'cancelled', reason = 'campaign cancelled', finished_at = $2, updated_at = now()
              where campaign_id = $1 and status in ('planned','deferred')",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    audit(&mut tx, Some(caller.user_id), &format!("campaign.{to}"), "campaign", &id.to_string(), json!({ "from": c.status })).await?;
    tx.commit().await?;
    tracing::info!(campaign_id = %id, status = to, "Campaign status changed.");
    Ok(c)
}

async fn start(
    State(hub): State<Hub>,
    Extension(e): Extension<Engine>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> CoreResult<Json<Campaign>> {
    Ok(Json(transition(&hub, &caller, id, &["draft"], "running", e.clock.now()).await?))
}
async fn pause(
    State(hub): State<Hub>,
    Extension(e): Extension<Engine>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> CoreResult<Json<Campaign>> {
    Ok(Json(transition(&hub, &caller, id, &["running"], "paused", e.clock.now()).await?))
}
async fn resume(
    State(hub): State<Hub>,
    Extension(e): Extension<Engine>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> CoreResult<Json<Campaign>> {
    Ok(Json(transition(&hub, &caller, id, &["paused"], "running", e.clock.now()).await?))
}
async fn cancel(
    State(hub): State<Hub>,
    Extension(e): Extension<Engine>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> CoreResult<Json<Campaign>> {
    Ok(Json(transition(&hub, &caller, id, &["draft", "running", "paused"], "cancelled", e.clock.now()).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountInput {
    audience: Audience,
}

#[tracing::instrument(skip_all)]
async fn audience_count(
    State(hub): State<Hub>,
    Extension(e): Extension<Engine>,
    ApiJson(b): ApiJson<CountInput>,
) -> CoreResult<Json<Value>> {
    let now = e.clock.now();
    let count = audience::count(hub.db(), &b.audience, now).await?;
    let sample = audience::sample(hub.db(), &b.audience, now, 5).await?;
    Ok(Json(
        json!({ "count": count, "sample": sample.into_iter().map(|(id, name)| json!({ "id": id, "name": name })).collect::<Vec<_>>() }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewInput {
    template: Template,
    customer_id: Option<Uuid>,
    /// Preview as if the customer spoke this language (variant choice, formats).
    language: Option<String>,
}

type SampleCustomer = (String, Option<String>, Option<String>, Option<String>, Value);

/// The context of a sample customer (their next appointment, or a sample one tomorrow at
/// 10:00 in their zone), or of an invented one.
async fn sample_context(hub: &Hub, e: &Engine, customer: Option<Uuid>, language: Option<String>) -> CoreResult<RenderContext> {
    let now = e.clock.now();
    let mut ctx = RenderContext { name: "Alex Sample".into(), language: language.clone(), ..Default::default() };
    let mut zone = e.config.zone();
    if let Some(id) = customer {
        let row: Option<SampleCustomer> =
            sqlx::query_as("select name, language, time_zone, company, attributes from customers where id = $1")
                .bind(id)
                .fetch_optional(hub.db())
                .await?;
        let (name, lang, tz, company, attrs) = row.ok_or_else(|| CoreError::field("customer_id", "no such customer"))?;
        zone = zone_or(tz.as_deref(), zone);
        ctx = RenderContext {
            name,
            language: language.or(lang),
            company,
            phone: None,
            attributes: attrs.as_object().cloned().unwrap_or_default(),
            appointment: None,
        };
        ctx.phone = sqlx::query_scalar(
            "select address from customer_identities where customer_id = $1 and kind = 'phone' order by created_at limit 1",
        )
        .bind(id)
        .fetch_optional(hub.db())
        .await?;
        let appt: Option<(DateTime<Utc>, String, String, String)> = sqlx::query_as(
            "select starts_at, time_zone, location, kind from appointments where customer_id = $1 and starts_at > $2 and status in ('scheduled','confirmed')
              order by starts_at limit 1",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(hub.db())
        .await?;
        if let Some((starts_at, tz, location, kind)) = appt {
            ctx.appointment = Some(AppointmentFacts { starts_at, time_zone: zone_or(Some(&tz), zone), location, kind });
        }
    }
    if ctx.appointment.is_none() {
        let tomorrow = (now.with_timezone(&zone) + Duration::days(1)).date_naive();
        let at = super::schedule::local_instant(zone, tomorrow.and_time(NaiveTime::from_hms_opt(10, 0, 0).unwrap_or_default()));
        ctx.appointment = Some(AppointmentFacts { starts_at: at, time_zone: zone, location: "Main Street 1".into(), kind: "visit".into() });
    }
    Ok(ctx)
}

#[tracing::instrument(skip_all)]
async fn preview(State(hub): State<Hub>, Extension(e): Extension<Engine>, ApiJson(b): ApiJson<PreviewInput>) -> CoreResult<Json<Value>> {
    let check = b.template.check().err().map(|e| e.to_string());
    let ctx = sample_context(&hub, &e, b.customer_id, b.language).await?;
    let p = template::preview(&b.template, &ctx);
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["error"] = json!(check);
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestSendInput {
    phone: String,
    customer_id: Option<Uuid>,
}

#[tracing::instrument(skip_all)]
async fn test_send(
    State(hub): State<Hub>,
    Extension(e): Extension<Engine>,
    Extension(settings): Extension<std::sync::Arc<crate::config::Settings>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<TestSendInput>,
) -> CoreResult<(StatusCode, Json<Value>)> {
    let c = load(hub.db(), id).await?;
    let phone = crate::normalize::phone(&b.phone, settings.region)
        .ok()
        .filter(|p| p.starts_with('+'))
        .ok_or_else(|| CoreError::field("phone", "must be a phone number in international format (+…)"))?;
    let ctx = sample_context(&hub, &e, b.customer_id, None).await?;
    let p = template::preview(&c.template, &ctx);
    if p.text.is_empty() {
        return Err(CoreError::field("template", "the message renders empty"));
    }
    let mut metadata = json!({ "kind": "campaign_test", "campaign_id": c.id });
    if let Some(ch) = &c.channel_name {
        metadata["adapter"] = json!(ch);
    }
    let mut tx = hub.db().begin().await?;
    let outbox_id = enqueue_tx(
        &mut tx,
        NewOutbound {
            idempotency_key: format!("campaign-test:{}", Uuid::new_v4()),
            channel: Channel::Sms,
            interaction_id: None,
            message_id: None,
            recipient: phone.clone(),
            subject: None,
            body: p.text.clone(),
            metadata,
        },
    )
    .await?;
    audit(&mut tx, Some(caller.user_id), "campaign.test_send", "campaign", &id.to_string(), json!({ "phone": phone })).await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "outbox_id": outbox_id, "phone": phone, "preview": p }))))
}

#[tracing::instrument(skip_all)]
async fn results_view(State(hub): State<Hub>, Extension(e): Extension<Engine>, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<Value>> {
    let c = load(hub.db(), id).await?;
    let totals = results::totals(hub.db(), id, e.config.reply_window_hours).await?;
    let (bucket_secs, timeline) = results::timeline(hub.db(), id).await?;
    Ok(Json(json!({
        "campaign": c, "totals": totals, "bucket_secs": bucket_secs, "timeline": timeline,
        "planning": { "state": c.planning_state, "planned": c.planned_count, "estimate": c.audience_estimate, "error": c.planning_error },
    })))
}

#[derive(Debug, Deserialize)]
struct RecipientQuery {
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn recipients(
    State(hub): State<Hub>,
    Extension(e): Extension<Engine>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<RecipientQuery>,
) -> CoreResult<Json<Paged<results::Recipient>>> {
    load(hub.db(), id).await?;
    let (limit, offset) = page_bounds(q.limit, q.offset)?;
    let rows = results::recipients(hub.db(), id, e.config.reply_window_hours, q.status.as_deref(), limit + 1, offset).await?;
    Ok(Json(paged(rows, limit, offset)))
}

async fn recipients_csv(
    State(hub): State<Hub>,
    Extension(e): Extension<Engine>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> CoreResult<Response> {
    let c = load(hub.db(), id).await?;
    let body = results::csv(hub.db(), id, e.config.reply_window_hours).await?;
    let mut conn = hub.db().acquire().await?;
    audit(&mut conn, Some(caller.user_id), "campaign.export", "campaign", &id.to_string(), json!({})).await?;
    let name: String = c.name.chars().map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' }).collect();
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"campaign-{name}.csv\"")),
        ],
        body,
    )
        .into_response())
}
