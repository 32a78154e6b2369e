//! Audiences: segments over CRM data (tags, custom attributes, language, time zone, last
//! contact, appointments), compiled to one SQL condition on `customers c`. Every audience
//! also requires SMS marketing consent, a live (not merged, not erased) customer and a
//! phone identity; whether that phone is a mobile number is checked when sending.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, QueryBuilder};
use switchboard_core::{CoreError, CoreResult};
use uuid::Uuid;

/// A segment definition as the audience builder sends it. Empty lists mean "any".
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// Customers with at least one of these tags.
    #[serde(default)]
    pub tags_any: Vec<String>,
    /// Customers with all of these tags.
    #[serde(default)]
    pub tags_all: Vec<String>,
    /// Customers with none of these tags.
    #[serde(default)]
    pub tags_none: Vec<String>,
    /// Preferred language (primary subtag matches: `es` takes `es-MX`).
    #[serde(default)]
    pub languages: Vec<String>,
    /// IANA time zones.
    #[serde(default)]
    pub time_zones: Vec<String>,
    /// Conditions on custom attributes, all of which must hold.
    #[serde(default)]
    pub attributes: Vec<AttributeRule>,
    /// Last contact on any channel.
    #[serde(default)]
    pub last_contact: Option<LastContact>,
    /// Appointment conditions.
    #[serde(default)]
    pub appointment: Option<AppointmentRule>,
    /// Only these customers (a test cohort, an imported list).
    #[serde(default)]
    pub customer_ids: Vec<Uuid>,
}

/// One attribute condition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttributeRule {
    /// Attribute name.
    pub name: String,
    /// `eq`, `ne`, `gt`, `gte`, `lt`, `lte` (numbers and dates), `exists`, `missing`.
    pub op: String,
    /// Value compared with (strings, numbers, booleans).
    #[serde(default)]
    pub value: serde_json::Value,
}

/// Last contact (any interaction on any channel).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LastContact {
    /// Contacted within this many days.
    #[serde(default)]
    pub within_days: Option<i32>,
    /// Not contacted for at least this many days (never contacted included).
    #[serde(default)]
    pub not_within_days: Option<i32>,
}

/// Appointment conditions: the customer has an appointment matching all of them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppointmentRule {
    /// Appointment kinds.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Statuses (default: scheduled, confirmed).
    #[serde(default)]
    pub statuses: Vec<String>,
    /// Starting within the next N days.
    #[serde(default)]
    pub upcoming_within_days: Option<i32>,
    /// Started within the last N days.
    #[serde(default)]
    pub past_within_days: Option<i32>,
    /// Location contains (case-insensitive).
    #[serde(default)]
    pub location_contains: Option<String>,
}

const OPS: &[&str] = &["eq", "ne", "gt", "gte", "lt", "lte", "exists", "missing"];

impl Audience {
    /// Checks names, operators and sizes.
    pub fn check(&self) -> CoreResult<()> {
        let lists = [&self.tags_any, &self.tags_all, &self.tags_none, &self.languages, &self.time_zones];
        if lists.iter().any(|l| l.len() > 200) || self.customer_ids.len() > 10_000 || self.attributes.len() > 50 {
            return Err(CoreError::field("audience", "too many conditions"));
        }
        for tz in &self.time_zones {
            if tz.parse::<chrono_tz::Tz>().is_err() {
                return Err(CoreError::field("audience.time_zones", format!("`{tz}` is not an IANA time zone")));
            }
        }
        for a in &self.attributes {
            if a.name.is_empty() || !a.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(CoreError::field("audience.attributes", "names are letters, digits and _"));
            }
            if !OPS.contains(&a.op.as_str()) {
                return Err(CoreError::field("audience.attributes", format!("op must be one of: {}", OPS.join(", "))));
            }
        }
        for d in [
            self.last_contact.as_ref().and_then(|l| l.within_days),
            self.last_contact.as_ref().and_then(|l| l.not_within_days),
            self.appointment.as_ref().and_then(|a| a.upcoming_within_days),
            self.appointment.as_ref().and_then(|a| a.past_within_days),
        ]
        .into_iter()
        .flatten()
        {
            if !(0..=3650).contains(&d) {
                return Err(CoreError::field("audience", "day counts must be 0..=3650"));
            }
        }
        Ok(())
    }

    /// Appends ` and …` conditions on `c` (customers) for this audience, eligibility
    /// included. `now` anchors relative conditions (the campaign clock).
    pub fn push_conditions(&self, qb: &mut QueryBuilder<'_, Postgres>, now: DateTime<Utc>) {
        qb.push(
            " and c.consent_sms and c.merged_into is null and c.erased_at is null \
              and exists (select 1 from customer_identities ci where ci.customer_id = c.id and ci.kind = 'phone')",
        );
        if !self.tags_any.is_empty() {
            qb.push(" and c.tags && ").push_bind(self.tags_any.clone());
        }
        if !self.tags_all.is_empty() {
            qb.push(" and c.tags @> ").push_bind(self.tags_all.clone());
        }
        if !self.tags_none.is_empty() {
            qb.push(" and not (c.tags && ").push_bind(self.tags_none.clone()).push(")");
        }
        if !self.languages.is_empty() {
            let langs: Vec<String> = self.languages.iter().map(|l| l.to_ascii_lowercase()).collect();
            qb.push(" and (lower(c.language) = any(")
                .push_bind(langs.clone())
                .push(") or split_part(lower(replace(c.language, '_', '-')), '-', 1) = any(")
                .push_bind(langs)
                .push("))");
        }
        if !self.time_zones.is_empty() {
            qb.push(" and c.time_zone = any(").push_bind(self.time_zones.clone()).push(")");
        }
        for a in &self.attributes {
            let path = format!("c.attributes -> '{}'", a.name); // name checked: [A-Za-z0-9_]+
            match a.op.as_str() {
                "exists" => {
                    qb.push(format!(" and ({path}) is not null and ({path}) <> 'null'::jsonb"));
                }
                "missing" => {
                    qb.push(format!(" and (({path}) is null or ({path}) = 'null'::jsonb)"));
                }
                "eq" => {
                    qb.push(format!(" and ({path}) = ")).push_bind(a.value.clone());
                }
                "ne" => {
                    qb.push(format!(" and ({path}) is distinct from ")).push_bind(a.value.clone());
                }
                op => {
                    let sql_op = match op {
                        "gt" => ">",
                        "gte" => ">=",
                        "lt" => "<",
                        _ => "<=",
                    };
                    match &a.value {
                        serde_json::Value::Number(n) => {
                            qb.push(format!(" and jsonb_typeof({path}) = 'number' and ({path})::numeric {sql_op} "))
                                .push_bind(n.as_f64().unwrap_or(0.0))
                                .push("::numeric");
                        }
                        v => {
                            // Dates (YYYY-MM-DD) and other strings compare as text.
                            let s = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
                            qb.push(format!(" and jsonb_typeof({path}) = 'string' and ({path} #>> '{{}}') {sql_op} ")).push_bind(s);
                        }
                    }
                }
            }
        }
        if let Some(lc) = &self.last_contact {
            if let Some(d) = lc.within_days {
                qb.push(" and exists (select 1 from interactions i where i.customer_id = c.id and i.created_at >= ")
                    .push_bind(now - chrono::Duration::days(d as i64))
                    .push(")");
            }
            if let Some(d) = lc.not_within_days {
                qb.push(" and not exists (select 1 from interactions i where i.customer_id = c.id and i.created_at >= ")
                    .push_bind(now - chrono::Duration::days(d as i64))
                    .push(")");
            }
        }
        if let Some(a) = &self.appointment {
            qb.push(" and exists (select 1 from appointments ap where ap.customer_id = c.id");
            let statuses = if a.statuses.is_empty() { vec!["scheduled".to_string(), "confirmed".to_string()] } else { a.statuses.clone() };
            qb.push(" and ap.status = any(").push_bind(statuses).push(")");
            if !a.kinds.is_empty() {
                qb.push(" and ap.kind = any(").push_bind(a.kinds.clone()).push(")");
            }
            if let Some(d) = a.upcoming_within_days {
                qb.push(" and ap.starts_at >= ")
                    .push_bind(now)
                    .push(" and ap.starts_at < ")
                    .push_bind(now + chrono::Duration::days(d as i64));
            }
            if let Some(d) = a.past_within_days {
                qb.push(" and ap.starts_at < ")
                    .push_bind(now)
                    .push(" and ap.starts_at >= ")
                    .push_bind(now - chrono::Duration::days(d as i64));
            }
            if let Some(l) = a.location_contains.as_ref().filter(|l| !l.is_empty()) {
                qb.push(" and ap.location ilike ")
                    .push_bind(format!("%{}%", l.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
            }
            qb.push(")");
        }
        if !self.customer_ids.is_empty() {
            qb.push(" and c.id = any(").push_bind(self.customer_ids.clone()).push(")");
        }
    }
}

/// How many customers the audience has right now (the builder's live count).
#[tracing::instrument(skip_all)]
pub async fn count(db: &PgPool, a: &Audience, now: DateTime<Utc>) -> CoreResult<i64> {
    a.check()?;
    let mut qb = QueryBuilder::new("select count(*) from customers c where true");
    a.push_conditions(&mut qb, now);
    Ok(qb.build_query_scalar::<i64>().fetch_one(db).await?)
}

/// A few customers of the audience (preview samples).
pub async fn sample(db: &PgPool, a: &Audience, now: DateTime<Utc>, limit: i64) -> CoreResult<Vec<(Uuid, String)>> {
    a.check()?;
    let mut qb = QueryBuilder::new("select c.id, c.name from customers c where true");
    a.push_conditions(&mut qb, now);
    qb.push(" order by c.created_at limit ").push_bind(limit);
    Ok(qb.build_query_as::<(Uuid, String)>().fetch_all(db).await?)
}
