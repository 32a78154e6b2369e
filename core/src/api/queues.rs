//! Queues: CRUD with validation of rules, requirement, hours and escalation; live stats.

use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::{self, Caller};
use crate::bus::{self, NewEvent};
use crate::domain::{Role, Strategy};
use crate::error::{CoreError, CoreResult};
use crate::hub::Hub;
use crate::queues::{self as q, BusinessHours, Queue, QueueEntryRule, QUEUE_COLUMNS};
use crate::router::engine::{EscalationAction, EscalationStep};
use crate::skills::SkillExpr;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;

pub(super) fn router() -> Router<Hub> {
    Router::new()
        .route("/api/v1/queues", get(list).post(create))
        .route("/api/v1/queues/stats", get(stats))
        .route("/api/v1/queues/{id}", get(get_one).patch(update).delete(remove))
        .route("/api/v1/queues/{id}/report-settings", get(report_settings).put(set_report_settings))
}

/// A queue's report settings (docs/metrics.md): the short-abandon threshold and the
/// default service-level formula. A queue without a stored row has the defaults.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub struct ReportSettingsView {
    queue_id: Uuid,
    short_abandon_secs: i32,
    sl_formula: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportSettingsInput {
    short_abandon_secs: Option<i32>,
    sl_formula: Option<String>,
}

const REPORT_SETTINGS_SELECT: &str = "select q.id as queue_id, coalesce(s.short_abandon_secs, 5) as short_abandon_secs,
        coalesce(s.sl_formula, 'answered_vs_answered_and_long_abandoned') as sl_formula
   from queues q left join report_queue_settings s on s.queue_id = q.id where q.id = $1";

async fn report_settings(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<ReportSettingsView>> {
    caller.require(&[Role::Admin, Role::Supervisor])?;
    let v = sqlx::query_as(REPORT_SETTINGS_SELECT).bind(id).fetch_optional(hub.db()).await?.ok_or(CoreError::NotFound("queue"))?;
    Ok(Json(v))
}

/// Sets a queue's report settings. They apply to contacts rolled up from now on (and the
/// wallboard, which reloads); `switchboard reports rebuild` recomputes a past range with
/// them.
async fn set_report_settings(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<ReportSettingsInput>,
) -> CoreResult<Json<ReportSettingsView>> {
    caller.require(&[Role::Admin, Role::Supervisor])?;
    if let Some(t) = b.short_abandon_secs {
        if !(0..=3600).contains(&t) {
            return Err(CoreError::field("short_abandon_secs", "0-3600 seconds"));
        }
    }
    if let Some(f) = &b.sl_formula {
        if crate::reports::query::SlFormula::parse(f).is_none() {
            return Err(CoreError::field(
                "sl_formula",
                "one of answered_vs_answered_and_long_abandoned, answered_vs_answered, answered_vs_offered, answered_and_abandoned_vs_all",
            ));
        }
    }
    let mut tx = hub.db().begin().await?;
    let cur: ReportSettingsView =
        sqlx::query_as(REPORT_SETTINGS_SELECT).bind(id).fetch_optional(&mut *tx).await?.ok_or(CoreError::NotFound("queue"))?;
    let short = b.short_abandon_secs.unwrap_or(cur.short_abandon_secs);
    let formula = b.sl_formula.unwrap_or(cur.sl_formula);
    sqlx::query(
        "insert into report_queue_settings (queue_id, short_abandon_secs, sl_formula) values ($1, $2, $3)
         on conflict (queue_id) do update set short_abandon_secs = excluded.short_abandon_secs, sl_formula = excluded.sl_formula",
    )
    .bind(id)
    .bind(short)
    .bind(&formula)
    .execute(&mut *tx)
    .await?;
    let data = serde_json::json!({ "short_abandon_secs": short, "sl_formula": formula });
    auth::audit(&mut tx, Some(caller.user_id), "queue.report_settings", "queue", &id.to_string(), data.clone()).await?;
    bus::record(&mut tx, NewEvent { queue_id: Some(id), kind: "queue_updated", data, ..Default::default() }).await?;
    tx.commit().await?;
    Ok(Json(ReportSettingsView { queue_id: id, short_abandon_secs: short, sl_formula: formula }))
}

/// A queue definition as sent by clients (create: all required fields; patch: any).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct QueueInput {
    name: Option<String>,
    entry_rules: Option<Vec<QueueEntryRule>>,
    requirement: Option<String>,
    priority: Option<i32>,
    strategy: Option<Strategy>,
    sla_target_pct: Option<i32>,
    sla_target_secs: Option<i32>,
    #[serde(default, deserialize_with = "super::double_option")]
    business_hours: Option<Option<BusinessHours>>,
    #[serde(default, deserialize_with = "super::double_option")]
    max_wait_secs: Option<Option<i32>>,
    escalation: Option<Vec<EscalationStep>>,
    accept_timeout_secs: Option<i32>,
    wrap_up_secs: Option<i32>,
    sticky_timeout_secs: Option<i32>,
    rule_order: Option<i32>,
}

fn validate(hub_queues: &[Queue], b: &QueueInput) -> CoreResult<()> {
    if let Some(n) = &b.name {
        if n.trim().is_empty() || n.len() > 100 {
            return Err(CoreError::field("name", "1-100 characters"));
        }
    }
    if let Some(r) = &b.requirement {
        SkillExpr::parse(r).map_err(|e| CoreError::field("requirement", e.to_string()))?;
    }
    if let Some(Some(bh)) = &b.business_hours {
        bh.validate().map_err(|e| CoreError::field("business_hours", e))?;
    }
    if let Some(p) = b.sla_target_pct {
        if !(1..=100).contains(&p) {
            return Err(CoreError::field("sla_target_pct", "1..=100"));
        }
    }
    for (f, v, lo, hi) in [
        ("sla_target_secs", b.sla_target_secs, 1, 86_400),
        ("accept_timeout_secs", b.accept_timeout_secs, 3, 600),
        ("wrap_up_secs", b.wrap_up_secs, 0, 3600),
        ("sticky_timeout_secs", b.sticky_timeout_secs, 0, 3600),
        ("priority", b.priority, -100, 100),
    ] {
        if let Some(v) = v {
            if v < lo || v > hi {
                return Err(CoreError::field(f, format!("must be between {lo} and {hi}")));
            }
        }
    }
    if let Some(Some(m)) = b.max_wait_secs {
        if !(1..=86_400).contains(&m) {
            return Err(CoreError::field("max_wait_secs", "must be between 1 and 86400"));
        }
    }
    if let Some(steps) = &b.escalation {
        for s in steps {
            match &s.action {
                EscalationAction::AddQueue { queue } if !hub_queues.iter().any(|q| &q.name == queue) => {
                    return Err(CoreError::field("escalation", format!("add_queue names unknown queue `{queue}`")));
                }
                EscalationAction::RelaxSkill { skill } | EscalationAction::OverflowGroup { group: skill } if skill.is_empty() => {
                    return Err(CoreError::field("escalation", "empty skill or group name"));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// `GET /api/v1/queues` filter: archived queues are listed only on request.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    include_archived: bool,
}

async fn list(State(hub): State<Hub>, caller: Caller, ApiQuery(f): ApiQuery<ListQuery>) -> CoreResult<Json<Vec<Queue>>> {
    caller.require(&[Role::Admin, Role::Supervisor, Role::Agent])?;
    Ok(Json(if f.include_archived { q::list_with_archived(hub.db()).await? } else { q::list(hub.db()).await? }))
}

async fn get_one(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<Json<Queue>> {
    caller.require(&[Role::Admin, Role::Supervisor, Role::Agent])?;
    Ok(Json(q::get(hub.db(), id).await?))
}

/// Creates a queue (also used by `switchboard demo`).
pub async fn create_queue(hub: &Hub, actor: Option<Uuid>, b: QueueInput) -> CoreResult<Queue> {
    let existing = q::list(hub.db()).await?;
    let name = b.name.clone().ok_or_else(|| CoreError::field("name", "required"))?;
    validate(&existing, &b)?;
    let mut tx = hub.db().begin().await?;
    let queue: Queue = sqlx::query_as(&format!(
        "insert into queues (name, entry_rules, requirement, priority, strategy, sla_target_pct, sla_target_secs, business_hours,
            max_wait_secs, escalation, accept_timeout_secs, wrap_up_secs, sticky_timeout_secs, rule_order)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) returning {QUEUE_COLUMNS}"
    ))
    .bind(&name)
    .bind(sqlx::types::Json(b.entry_rules.unwrap_or_default()))
    .bind(b.requirement.unwrap_or_default())
    .bind(b.priority.unwrap_or(0))
    .bind(b.strategy.unwrap_or(Strategy::LongestIdle).as_str())
    .bind(b.sla_target_pct.unwrap_or(80))
    .bind(b.sla_target_secs.unwrap_or(20))
    .bind(b.business_hours.flatten().map(sqlx::types::Json))
    .bind(b.max_wait_secs.flatten())
    .bind(sqlx::types::Json(b.escalation.unwrap_or_default()))
    .bind(b.accept_timeout_secs.unwrap_or(20))
    .bind(b.wrap_up_secs.unwrap_or(0))
    .bind(b.sticky_timeout_secs.unwrap_or(30))
    .bind(b.rule_order.unwrap_or(100))
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| if crate::error::is_unique_violation(&e) { CoreError::Conflict(format!("queue `{name}` exists")) } else { e.into() })?;
    auth::audit(&mut tx, actor, "queue.create", "queue", &queue.id.to_string(), serde_json::json!({ "name": name })).await?;
    bus::record(&mut tx, NewEvent { queue_id: Some(queue.id), kind: "queue_updated", data: serde_json::json!({}), ..Default::default() })
        .await?;
    tx.commit().await?;
    Ok(queue)
}

async fn create(State(hub): State<Hub>, caller: Caller, ApiJson(b): ApiJson<QueueInput>) -> CoreResult<(StatusCode, Json<Queue>)> {
    caller.require(&[Role::Admin])?;
    Ok((StatusCode::CREATED, Json(create_queue(&hub, Some(caller.user_id), b).await?)))
}

async fn update(
    State(hub): State<Hub>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(b): ApiJson<QueueInput>,
) -> CoreResult<Json<Queue>> {
    caller.require(&[Role::Admin, Role::Supervisor])?;
    let existing = q::list(hub.db()).await?;
    validate(&existing, &b)?;
    let mut tx = hub.db().begin().await?;
    let cur = q::get(&mut *tx, id).await?;
    if cur.archived_at.is_some() {
        return Err(CoreError::Conflict("queue is archived".into()));
    }
    let bh = match b.business_hours {
        Some(v) => v.map(sqlx::types::Json),
        None => cur.business_hours.clone(),
    };
    let mw = match b.max_wait_secs {
        Some(v) => v,
        None => cur.max_wait_secs,
    };
    let queue: Queue = sqlx::query_as(&format!(
        "update queues set name = $2, entry_rules = $3, requirement = $4, priority = $5, strategy = $6, sla_target_pct = $7,
            sla_target_secs = $8, business_hours = $9, max_wait_secs = $10, escalation = $11, accept_timeout_secs = $12,
            wrap_up_secs = $13, sticky_timeout_secs = $14, rule_order = $15 where id = $1 returning {QUEUE_COLUMNS}"
    ))
    .bind(id)
    .bind(b.name.unwrap_or(cur.name))
    .bind(b.entry_rules.map(sqlx::types::Json).unwrap_or(cur.entry_rules))
    .bind(b.requirement.unwrap_or(cur.requirement))
    .bind(b.priority.unwrap_or(cur.priority))
    .bind(b.strategy.map(|s| s.as_str().to_string()).unwrap_or(cur.strategy))
    .bind(b.sla_target_pct.unwrap_or(cur.sla_target_pct))
    .bind(b.sla_target_secs.unwrap_or(cur.sla_target_secs))
    .bind(bh)
    .bind(mw)
    .bind(b.escalation.map(sqlx::types::Json).unwrap_or(cur.escalation))
    .bind(b.accept_timeout_secs.unwrap_or(cur.accept_timeout_secs))
    .bind(b.wrap_up_secs.unwrap_or(cur.wrap_up_secs))
    .bind(b.sticky_timeout_secs.unwrap_or(cur.sticky_timeout_secs))
    .bind(b.rule_order.unwrap_or(cur.rule_order))
    .fetch_one(&mut *tx)
    .await?;
    auth::audit(&mut tx, Some(caller.user_id), "queue.update", "queue", &id.to_string(), serde_json::json!({})).await?;
    bus::record(&mut tx, NewEvent { queue_id: Some(id), kind: "queue_updated", data: serde_json::json!({}), ..Default::default() }).await?;
    tx.commit().await?;
    Ok(Json(queue))
}

async fn remove(State(hub): State<Hub>, caller: Caller, ApiPath(id): ApiPath<Uuid>) -> CoreResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let mut tx = hub.db().begin().await?;
    let open: i64 =
        sqlx::query_scalar("select count(*) from interactions where queue_id = $1 and status in ('queued','offered','active','wrap_up')")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if open > 0 {
        return Err(CoreError::Conflict(format!("queue has {open} open interactions")));
    }
    // Archive, never delete: past interactions keep their queue for reports.
    let name: Option<String> =
        sqlx::query_scalar("update queues set archived_at = now() where id = $1 and archived_at is null returning name")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(name) = name else {
        return Err(CoreError::NotFound("queue"));
    };
    // Another queue's escalation must not point at a queue that takes no more work.
    if let Some(other) = q::list(&mut *tx)
        .await?
        .into_iter()
        .find(|o| o.escalation.0.iter().any(|s| matches!(&s.action, EscalationAction::AddQueue { queue } if *queue == name)))
    {
        return Err(CoreError::Conflict(format!("queue `{}` escalates to this queue; change its escalation first", other.name)));
    }
    auth::audit(&mut tx, Some(caller.user_id), "queue.archive", "queue", &id.to_string(), serde_json::json!({ "name": name })).await?;
    bus::record(&mut tx, NewEvent { queue_id: Some(id), kind: "queue_deleted", data: serde_json::json!({}), ..Default::default() }).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// id, name, waiting, offered, oldest wait, in service, answered today, within SLA, abandoned today, SLA %, SLA secs.
type StatsRow = (Uuid, String, i64, i64, Option<f64>, i64, i64, i64, i64, i32, i32);

async fn stats(State(hub): State<Hub>, caller: Caller) -> CoreResult<Json<Vec<serde_json::Value>>> {
    caller.require(&[Role::Admin, Role::Supervisor, Role::Agent])?;
    let rows: Vec<StatsRow> = sqlx::query_as(
        "select q.id, q.name,
            (select count(*) from interactions i where i.queue_id = q.id and i.status in ('queued','offered')),
            (select count(*) from interactions i where i.queue_id = q.id and i.status = 'offered'),
            (select extract(epoch from now() - min(i.enqueued_at))::float8 from interactions i
              where i.queue_id = q.id and i.status in ('queued','offered')),
            (select count(*) from interactions i where i.queue_id = q.id and i.status in ('active','wrap_up')),
            (select count(*) from interactions i where i.queue_id = q.id and i.answered_at >= date_trunc('day', now())),
            (select count(*) from interactions i where i.queue_id = q.id and i.answered_at >= date_trunc('day', now())
                 and i.answered_at - i.enqueued_at <= make_interval(secs => q.sla_target_secs)),
            (select count(*) from interactions i where i.queue_id = q.id and i.status = 'abandoned' and i.closed_at >= date_trunc('day', now())),
            q.sla_target_pct, q.sla_target_secs
         from queues q where q.archived_at is null order by q.rule_order, q.name",
    )
    .fetch_all(hub.db())
    .await?;
    let available: i64 =
        sqlx::query_scalar("select count(*) from agents where presence = 'available' and archived_at is null").fetch_one(hub.db()).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, name, waiting, offered, oldest, in_service, answered, within, abandoned, pct, secs)| {
                let sl = if answered + abandoned > 0 { Some(within as f64 * 100.0 / (answered + abandoned) as f64) } else { None };
                serde_json::json!({
                    // An offer still ringing is not an answer: the customer waits until
                    // an agent accepts (`waiting` includes `offered`).
                    "queue_id": id, "name": name, "waiting": waiting, "offered": offered, "oldest_wait_secs": oldest.unwrap_or(0.0),
                    "in_service": in_service, "answered_today": answered, "abandoned_today": abandoned,
                    "service_level_pct": sl, "sla_target_pct": pct, "sla_target_secs": secs, "agents_available": available
                })
            })
            .collect(),
    ))
}
