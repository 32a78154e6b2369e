//! CSV import and export of customers. Import is an idempotent upsert: a row is matched
//! to an existing customer by `id`, `external_id`, normalized phone or normalized email
//! (a `phone` or `email` cell may hold several addresses separated by `;`, which is how
//! the export writes a customer's every number and address);
//! bad rows are rejected with their line number, field and reason while good rows are
//! kept. Rows are written in batches (multi-row `unnest` inserts, one transaction each),
//! which is what makes a million-row file feasible.

use crate::config::{parse_bool, CrmConfig, Settings};
use crate::normalize;
use chrono::NaiveDate;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use switchboard_core::{CoreError, CoreResult};
use uuid::Uuid;

/// Most row errors kept in a report (the count of rejected rows is always exact).
pub const MAX_REPORTED_ERRORS: usize = 1000;

/// One rejected row.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RowError {
    /// Line number in the file (the header is line 1).
    pub line: u64,
    /// The offending column, when one is known.
    pub field: Option<String>,
    /// Why the row was rejected.
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    /// Data rows in the file.
    pub total: u64,
    /// Rows processed so far.
    pub done: u64,
    /// Rows that created a customer.
    pub created: u64,
    /// Rows that updated an existing customer.
    pub updated: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// The first [`MAX_REPORTED_ERRORS`] rejected rows with reasons.
    pub errors: Vec<RowError>,
}

/// Imports customers from CSV with the default `[crm]` settings (region US, no custom
/// attributes); see [`import_csv_with`]. `progress(done, total)` is called after every
/// batch. The reader is read to the end first (a blocking read: pass a file or a buffer).
pub async fn import_csv<R: std::io::Read>(pool: &PgPool, reader: R, progress: impl Fn(u64, u64) + Send + Sync) -> CoreResult<ImportReport> {
    import_csv_with(pool, &Settings::new(CrmConfig::default())?, reader, progress).await
}

/// Imports customers from CSV with the given settings (build them with
/// [`Settings::from_toml`] from the `[crm]` section).
pub async fn import_csv_with<R: std::io::Read>(
    pool: &PgPool,
    settings: &Settings,
    mut reader: R,
    progress: impl Fn(u64, u64) + Send + Sync,
) -> CoreResult<ImportReport> {
    let mut data = Vec::new();
    reader.read_to_end(&mut data).map_err(|e| CoreError::Invalid(format!("cannot read the CSV: {e}")))?;
    run_import(pool, settings, &data, None, ImportReport::default(), &progress).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Id,
    ExternalId,
    Name,
    Phone,
    Email,
    Chat,
    Language,
    TimeZone,
    Birthday,
    Tags,
    Company,
    ConsentSms,
    ConsentEmail,
    Attr(usize),
}

struct Header {
    columns: Vec<Column>,
    attrs: Vec<String>,
}

fn parse_header(settings: &Settings, rec: &csv::StringRecord) -> CoreResult<Header> {
    let mut columns = Vec::new();
    let mut attrs = Vec::new();
    for raw in rec.iter() {
        let h = raw.trim().trim_start_matches('\u{feff}').to_ascii_lowercase();
        let c = match h.as_str() {
            "id" => Column::Id,
            "external_id" => Column::ExternalId,
            "name" => Column::Name,
            "phone" => Column::Phone,
            "email" => Column::Email,
            "chat" => Column::Chat,
            "language" => Column::Language,
            "time_zone" => Column::TimeZone,
            "birthday" => Column::Birthday,
            "tags" => Column::Tags,
            "company" => Column::Company,
            "consent_sms" => Column::ConsentSms,
            "consent_email" => Column::ConsentEmail,
            other => match other.strip_prefix("attr.").or_else(|| other.strip_prefix("attributes.")) {
                Some(a) if settings.config.attributes.contains_key(a) => {
                    attrs.push(a.to_string());
                    Column::Attr(attrs.len() - 1)
                }
                _ => {
                    return Err(CoreError::field(
                        "header",
                        format!(
                        "unknown column `{raw}` (known: id, external_id, name, phone, email, chat, language, time_zone, birthday, tags, \
                             company, consent_sms, consent_email, attr.<configured attribute>)"
                    ),
                    ))
                }
            },
        };
        if columns.contains(&c) {
            return Err(CoreError::field("header", format!("column `{raw}` appears twice")));
        }
        columns.push(c);
    }
    if !columns.iter().any(|c| matches!(c, Column::Id | Column::ExternalId | Column::Phone | Column::Email)) {
        return Err(CoreError::field("header", "needs at least one of: id, external_id, phone, email (the keys rows are matched on)"));
    }
    Ok(Header { columns, attrs })
}

/// One valid row, normalized.
#[derive(Debug, Default, Clone)]
struct Row {
    line: u64,
    id: Option<Uuid>,
    external_id: Option<String>,
    name: Option<String>,
    /// Phone numbers (a cell holds one or several, `;`-separated), normalized, deduplicated.
    phones: Vec<String>,
    /// Email addresses, likewise.
    emails: Vec<String>,
    chat: Option<String>,
    language: Option<String>,
    time_zone: Option<String>,
    birthday: Option<NaiveDate>,
    tags: Option<Vec<String>>,
    company: Option<String>,
    consent_sms: Option<bool>,
    consent_email: Option<bool>,
    attrs: Map<String, Value>,
}

fn reject(line: u64, field: &str, reason: impl Into<String>) -> RowError {
    RowError { line, field: Some(field.to_string()), reason: reason.into() }
}

/// Checks a language tag (BCP 47 shape).
pub fn check_language(s: &str) -> Result<(), String> {
    if (2..=35).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
    {
        Ok(())
    } else {
        Err("must be a language tag such as en or es-MX".into())
    }
}

/// Checks an IANA time zone name.
pub fn check_time_zone(s: &str) -> Result<(), String> {
    s.parse::<chrono_tz::Tz>().map(|_| ()).map_err(|_| "must be an IANA time zone such as Europe/Madrid".into())
}

fn parse_row(settings: &Settings, header: &Header, rec: &csv::StringRecord, line: u64) -> Result<Row, RowError> {
    if rec.len() != header.columns.len() {
        return Err(RowError { line, field: None, reason: format!("has {} fields, the header has {}", rec.len(), header.columns.len()) });
    }
    let mut r = Row { line, ..Default::default() };
    let opt = |s: &str| {
        let t = s.trim();
        (!t.is_empty()).then(|| t.to_string())
    };
    for (col, cell) in header.columns.iter().zip(rec.iter()) {
        let Some(v) = opt(cell) else { continue };
        match col {
            Column::Id => r.id = Some(v.parse().map_err(|_| reject(line, "id", "must be a UUID"))?),
            Column::ExternalId => {
                if v.len() > 200 {
                    return Err(reject(line, "external_id", "longer than 200 bytes"));
                }
                r.external_id = Some(v)
            }
            Column::Name => {
                if v.chars().count() > 200 || v.chars().any(char::is_control) {
                    return Err(reject(line, "name", "must be at most 200 printable characters"));
                }
                r.name = Some(v)
            }
            Column::Phone => {
                r.phones = split_addresses(&v, |a| normalize::phone(a, settings.region)).map_err(|e| reject(line, "phone", e))?
            }
            Column::Email => r.emails = split_addresses(&v, normalize::email).map_err(|e| reject(line, "email", e))?,
            Column::Chat => r.chat = Some(normalize::chat(&v).map_err(|e| reject(line, "chat", e.to_string()))?),
            Column::Language => {
                check_language(&v).map_err(|e| reject(line, "language", e))?;
                r.language = Some(v)
            }
            Column::TimeZone => {
                check_time_zone(&v).map_err(|e| reject(line, "time_zone", e))?;
                r.time_zone = Some(v)
            }
            Column::Birthday => {
                let d = NaiveDate::parse_from_str(&v, "%Y-%m-%d").map_err(|_| reject(line, "birthday", "must be a date YYYY-MM-DD"))?;
                if d > chrono::Utc::now().date_naive() || d.year() < 1900 {
                    return Err(reject(line, "birthday", "must be between 1900 and today"));
                }
                r.birthday = Some(d)
            }
            Column::Tags => r.tags = Some(split_tags(&v).map_err(|e| reject(line, "tags", e))?),
            Column::Company => {
                if v.chars().count() > 200 {
                    return Err(reject(line, "company", "longer than 200 characters"));
                }
                r.company = Some(v)
            }
            Column::ConsentSms => r.consent_sms = Some(parse_bool(&v).ok_or_else(|| reject(line, "consent_sms", "must be true or false"))?),
            Column::ConsentEmail => {
                r.consent_email = Some(parse_bool(&v).ok_or_else(|| reject(line, "consent_email", "must be true or false"))?)
            }
            Column::Attr(i) => {
                let name = &header.attrs[*i];
                if let Some(val) = settings.parse_cell(name, &v).map_err(|e| reject(line, &format!("attr.{name}"), e))? {
                    r.attrs.insert(name.clone(), val);
                }
            }
        }
    }
    if r.id.is_none() && r.external_id.is_none() && r.phones.is_empty() && r.emails.is_empty() {
        return Err(RowError { line, field: None, reason: "needs an id, external_id, phone or email to be matched on".into() });
    }
    Ok(r)
}

use chrono::Datelike;

/// Most addresses of one kind in one cell.
pub const MAX_ADDRESSES_PER_CELL: usize = 20;

/// Splits a phone or email cell on `;` (the export writes every address of a customer
/// that way) and normalizes each address; duplicates after normalization collapse.
fn split_addresses(cell: &str, normalize: impl Fn(&str) -> Result<String, normalize::NormalizeError>) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for part in cell.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let a = normalize(part).map_err(|e| e.to_string())?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.len() > MAX_ADDRESSES_PER_CELL {
        return Err(format!("at most {MAX_ADDRESSES_PER_CELL} addresses in one cell"));
    }
    Ok(out)
}

/// Splits a tags cell on `;`, `|` or `,`.
pub fn split_tags(s: &str) -> Result<Vec<String>, String> {
    let mut tags: Vec<String> = s.split([';', '|', ',']).map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
    if tags.iter().any(|t| t.chars().count() > 50) || tags.len() > 50 {
        return Err("at most 50 tags of at most 50 characters".into());
    }
    tags.sort();
    tags.dedup();
    Ok(tags)
}

/// A customer to create or update in a batch, after rows were matched and folded.
#[derive(Debug, Clone)]
struct Pending {
    id: Uuid,
    new: bool,
    row: Row,
    identities: Vec<(&'static str, String)>,
}

fn fold(into: &mut Row, r: Row) {
    macro_rules! take {
        ($($f:ident),*) => { $( if r.$f.is_some() { into.$f = r.$f; } )* };
    }
    take!(external_id, name, language, time_zone, birthday, company, consent_sms, consent_email);
    if let Some(t) = r.tags {
        let mut all = into.tags.take().unwrap_or_default();
        all.extend(t);
        all.sort();
        all.dedup();
        into.tags = Some(all);
    }
    into.attrs.extend(r.attrs);
    into.line = r.line;
}

#[derive(sqlx::FromRow)]
struct Existing {
    id: Uuid,
    external_id: Option<String>,
    consent_sms: bool,
    consent_email: bool,
    merged_into: Option<Uuid>,
    erased_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every address of a row with its identity kind.
fn row_addresses(row: &Row) -> impl Iterator<Item = (&'static str, &str)> {
    let phones = row.phones.iter().map(|a| ("phone", a.as_str()));
    let emails = row.emails.iter().map(|a| ("email", a.as_str()));
    phones.chain(emails).chain(row.chat.iter().map(|a| ("chat", a.as_str())))
}

/// Matches rows to customers and writes one batch into the caller's transaction.
async fn write_batch(
    tx: &mut sqlx::PgConnection,
    settings: &Settings,
    rows: Vec<Row>,
    report: &mut ImportReport,
    errors: &mut Vec<RowError>,
) -> CoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().filter_map(|r| r.id).collect();
    let exts: Vec<String> = rows.iter().filter_map(|r| r.external_id.clone()).collect();
    let phones: Vec<String> = rows.iter().flat_map(|r| r.phones.iter().cloned()).collect();
    let emails: Vec<String> = rows.iter().flat_map(|r| r.emails.iter().cloned()).collect();
    let chats: Vec<String> = rows.iter().filter_map(|r| r.chat.clone()).collect();
    let by_identity: Vec<(String, String, Uuid)> = sqlx::query_as(
        "select kind, address, customer_id from customer_identities
         where (kind = 'phone' and address = any($1)) or (kind = 'email' and address = any($2)) or (kind = 'chat' and address = any($3))",
    )
    .bind(&phones)
    .bind(&emails)
    .bind(&chats)
    .fetch_all(&mut *tx)
    .await?;
    let mut identity_owner: HashMap<(String, String), Uuid> = by_identity.into_iter().map(|(k, a, c)| ((k, a), c)).collect();
    let wanted: Vec<Uuid> = ids.iter().copied().chain(identity_owner.values().copied()).collect();
    let existing: Vec<Existing> = sqlx::query_as(
        "select id, external_id, consent_sms, consent_email, merged_into, erased_at from customers where id = any($1) or external_id = any($2)",
    )
    .bind(&wanted)
    .bind(&exts)
    .fetch_all(&mut *tx)
    .await?;
    let existing: HashMap<Uuid, Existing> = existing.into_iter().map(|e| (e.id, e)).collect();
    let mut ext_owner: HashMap<String, Uuid> = existing.values().filter_map(|e| e.external_id.clone().map(|x| (x, e.id))).collect();

    let mut pending: Vec<Pending> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    for row in rows {
        let line = row.line;
        let mut matches: Vec<(&str, Uuid)> = Vec::new();
        if let Some(id) = row.id {
            match existing.get(&id) {
                Some(e) if e.erased_at.is_some() => {
                    errors.push(reject(line, "id", "this customer was erased"));
                    continue;
                }
                Some(e) => matches.push(("id", e.merged_into.unwrap_or(id))),
                None => {
                    errors.push(reject(line, "id", "no customer with this id"));
                    continue;
                }
            }
        }
        if let Some(x) = &row.external_id {
            if let Some(c) = ext_owner.get(x) {
                matches.push(("external_id", *c));
            }
        }
        for (kind, a) in row_addresses(&row) {
            if let Some(c) = identity_owner.get(&(kind.to_string(), a.to_string())) {
                matches.push((kind, *c));
            }
        }
        let target = match matches.first() {
            Some(&(_, first)) => {
                if let Some((f, _)) = matches.iter().find(|(_, c)| *c != first) {
                    errors.push(reject(line, f, format!("belongs to a different customer than the row's {}", matches[0].0)));
                    continue;
                }
                Some(first)
            }
            None => None,
        };
        // Folding a row into a customer must not steal an external id from another one.
        if let (Some(t), Some(x)) = (target, &row.external_id) {
            if let Some(e) = existing.get(&t) {
                if e.external_id.as_deref().is_some_and(|old| old != x) {
                    errors.push(reject(line, "external_id", "the matched customer already has a different external_id"));
                    continue;
                }
            }
        }
        if target.is_none() {
            if let Some(k) = settings.config.attributes.iter().find(|(k, d)| d.required && !row.attrs.contains_key(*k)).map(|(k, _)| k) {
                errors.push(reject(line, &format!("attr.{k}"), "required for a new customer"));
                continue;
            }
        }
        let id = target.unwrap_or_else(Uuid::new_v4);
        let mut ident = Vec::new();
        for (kind, a) in row_addresses(&row) {
            if let std::collections::hash_map::Entry::Vacant(e) = identity_owner.entry((kind.to_string(), a.to_string())) {
                e.insert(id);
                ident.push((kind, a.to_string()));
            }
        }
        if let Some(x) = &row.external_id {
            ext_owner.entry(x.clone()).or_insert(id);
        }
        match index.get(&id) {
            Some(&i) => {
                let p = &mut pending[i];
                fold(&mut p.row, row);
                p.identities.extend(ident);
                report.updated += 1;
            }
            None => {
                let new = !existing.contains_key(&id);
                if new {
                    report.created += 1;
                } else {
                    report.updated += 1;
                }
                index.insert(id, pending.len());
                pending.push(Pending { id, new, row, identities: ident });
            }
        }
    }

    let (news, olds): (Vec<&Pending>, Vec<&Pending>) = pending.iter().partition(|p| p.new);
    let tags_text = |p: &Pending| p.row.tags.as_ref().map(|t| t.join("\u{1f}"));
    if !news.is_empty() {
        sqlx::query(
            "insert into customers (id, external_id, name, language, time_zone, birthday, tags, attributes, company, consent_sms, consent_email)
             select id, ext, coalesce(name, ''), lang, tz, bday, coalesce(string_to_array(tags, E'\\x1f'), '{}'), attrs, company,
                    coalesce(sms, false), coalesce(mail, false)
             from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::date[], $7::text[], $8::jsonb[], $9::text[],
                         $10::bool[], $11::bool[])
                  as v(id, ext, name, lang, tz, bday, tags, attrs, company, sms, mail)",
        )
        .bind(news.iter().map(|p| p.id).collect::<Vec<_>>())
        .bind(news.iter().map(|p| p.row.external_id.clone()).collect::<Vec<_>>())
        .bind(news.iter().map(|p| p.row.name.clone()).collect::<Vec<_>>())
        .bind(news.iter().map(|p| p.row.language.clone()).collect::<Vec<_>>())
        .bind(news.iter().map(|p| p.row.time_zone.clone()).collect::<Vec<_>>())
        .bind(news.iter().map(|p| p.row.birthday).collect::<Vec<_>>())
        .bind(news.iter().map(|p| tags_text(p)).collect::<Vec<_>>())
        .bind(news.iter().map(|p| Value::Object(p.row.attrs.clone())).collect::<Vec<_>>())
        .bind(news.iter().map(|p| p.row.company.clone()).collect::<Vec<_>>())
        .bind(news.iter().map(|p| p.row.consent_sms).collect::<Vec<_>>())
        .bind(news.iter().map(|p| p.row.consent_email).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !olds.is_empty() {
        sqlx::query(
            "update customers c set
                external_id = coalesce(c.external_id, v.ext), name = coalesce(v.name, c.name),
                language = coalesce(v.lang, c.language), time_zone = coalesce(v.tz, c.time_zone),
                birthday = coalesce(v.bday, c.birthday),
                tags = case when v.tags is null then c.tags
                            else array(select distinct t from unnest(c.tags || string_to_array(v.tags, E'\\x1f')) t order by t) end,
                attributes = c.attributes || v.attrs, company = coalesce(v.company, c.company),
                consent_sms = coalesce(v.sms, c.consent_sms), consent_email = coalesce(v.mail, c.consent_email),
                updated_at = now()
             from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::date[], $7::text[], $8::jsonb[], $9::text[],
                         $10::bool[], $11::bool[])
                  as v(id, ext, name, lang, tz, bday, tags, attrs, company, sms, mail)
             where c.id = v.id",
        )
        .bind(olds.iter().map(|p| p.id).collect::<Vec<_>>())
        .bind(olds.iter().map(|p| p.row.external_id.clone()).collect::<Vec<_>>())
        .bind(olds.iter().map(|p| p.row.name.clone()).collect::<Vec<_>>())
        .bind(olds.iter().map(|p| p.row.language.clone()).collect::<Vec<_>>())
        .bind(olds.iter().map(|p| p.row.time_zone.clone()).collect::<Vec<_>>())
        .bind(olds.iter().map(|p| p.row.birthday).collect::<Vec<_>>())
        .bind(olds.iter().map(|p| tags_text(p)).collect::<Vec<_>>())
        .bind(olds.iter().map(|p| Value::Object(p.row.attrs.clone())).collect::<Vec<_>>())
        .bind(olds.iter().map(|p| p.row.company.clone()).collect::<Vec<_>>())
        .bind(olds.iter().map(|p| p.row.consent_sms).collect::<Vec<_>>())
        .bind(olds.iter().map(|p| p.row.consent_email).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    let (mut ic, mut ik, mut ia) = (Vec::new(), Vec::new(), Vec::new());
    for p in &pending {
        for (k, a) in &p.identities {
            ic.push(p.id);
            ik.push(*k);
            ia.push(a.clone());
        }
    }
    if !ic.is_empty() {
        sqlx::query(
            "insert into customer_identities (customer_id, kind, address)
             select * from unnest($1::uuid[], $2::text[], $3::text[]) on conflict (kind, address) do nothing",
        )
        .bind(&ic)
        .bind(&ik)
        .bind(&ia)
        .execute(&mut *tx)
        .await?;
    }
    // Consent history: every change the import makes, with source "import".
    let (mut cc, mut ck, mut cg) = (Vec::new(), Vec::new(), Vec::new());
    for p in &pending {
        let before = existing.get(&p.id).map(|e| (e.consent_sms, e.consent_email)).unwrap_or((false, false));
        if let Some(v) = p.row.consent_sms.filter(|v| *v != before.0) {
            cc.push(p.id);
            ck.push("sms");
            cg.push(v);
        }
        if let Some(v) = p.row.consent_email.filter(|v| *v != before.1) {
            cc.push(p.id);
            ck.push("email");
            cg.push(v);
        }
    }
    if !cc.is_empty() {
        sqlx::query(
            "insert into customer_consent_events (customer_id, kind, granted, source)
             select c, k, g, 'import' from unnest($1::uuid[], $2::text[], $3::bool[]) as v(c, k, g)",
        )
        .bind(&cc)
        .bind(&ck)
        .bind(&cg)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The import loop shared by the API job and the CLI entry point. `start` is the state to
/// continue from: default for a new import; for a resumed job, what its last committed
/// batch recorded (its first `start.done` records are skipped). With a `job`, each
/// batch's progress is saved in the batch's own transaction, so the job row never
/// claims a batch that was not written, nor misses one that was.
pub(crate) async fn run_import(
    pool: &PgPool,
    settings: &Settings,
    data: &[u8],
    job: Option<Uuid>,
    start: ImportReport,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> CoreResult<ImportReport> {
    let builder = || {
        let mut b = csv::ReaderBuilder::new();
        b.flexible(true).has_headers(true);
        b
    };
    let total = builder().from_reader(data).byte_records().count() as u64;
    let mut rdr = builder().from_reader(data);
    let header = rdr.headers().map_err(|e| CoreError::field("header", format!("unreadable CSV header: {e}")))?.clone();
    let header = parse_header(settings, &header)?;
    let mut report = ImportReport { total, ..start };
    let mut rec = csv::StringRecord::new();
    // Resuming: step over the records the job already accounted for, counted the way the
    // loop below counts them (a broken record is one).
    let mut skipped = 0u64;
    while skipped < report.done {
        match rdr.read_record(&mut rec) {
            Ok(true) => skipped += 1,
            Ok(false) => break,
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => break,
            Err(_) => skipped += 1,
        }
    }
    let batch_size = settings.config.import_batch_rows.max(1);
    let mut batch: Vec<Row> = Vec::with_capacity(batch_size);
    let mut batch_errors: Vec<RowError> = Vec::new();
    let mut in_batch = 0u64;
    loop {
        let more = match rdr.read_record(&mut rec) {
            Ok(true) => {
                let line = rec.position().map(|p| p.line()).unwrap_or(0);
                match parse_row(settings, &header, &rec, line) {
                    Ok(r) => batch.push(r),
                    Err(e) => batch_errors.push(e),
                }
                in_batch += 1;
                true
            }
            Ok(false) => false,
            Err(e) => {
                // A broken record (bad UTF-8, unterminated quote) is one rejected row.
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                batch_errors.push(RowError { line, field: None, reason: format!("unreadable CSV record: {e}") });
                in_batch += 1;
                !matches!(e.kind(), csv::ErrorKind::Io(_))
            }
        };
        if in_batch >= batch_size as u64 || !more {
            let rows = std::mem::take(&mut batch);
            let parse_errors = std::mem::take(&mut batch_errors);
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut trial = ImportReport::default();
                let mut errs = parse_errors.clone();
                let written: CoreResult<ImportReport> = async {
                    let mut tx = pool.begin().await?;
                    write_batch(&mut tx, settings, rows.clone(), &mut trial, &mut errs).await?;
                    let next = advance(&report, &trial, in_batch, errs.clone());
                    if let Some(job) = job {
                        save_job(&mut *tx, job, &next, None).await?;
                    }
                    tx.commit().await?;
                    Ok(next)
                }
                .await;
                match written {
                    Ok(next) => {
                        report = next;
                        break;
                    }
                    // A concurrent writer (ingest, another import) took a key: the re-run
                    // sees it and matches instead.
                    Err(CoreError::Database(e)) if attempt < 3 && is_retryable(&e) => continue,
                    Err(CoreError::Database(e)) => {
                        tracing::warn!(error = %e, "CSV import batch failed.");
                        let mut failed = parse_errors.clone();
                        failed.extend(rows.iter().map(|r| RowError {
                            line: r.line,
                            field: None,
                            reason: "could not be written (database error); re-run the import".into(),
                        }));
                        report = advance(&report, &ImportReport::default(), in_batch, failed);
                        if let Some(job) = job {
                            save_job(pool, job, &report, None).await?;
                        }
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            in_batch = 0;
            progress(report.done.min(total), total);
            if !more {
                break;
            }
        }
    }
    report.done = report.done.min(total);
    Ok(report)
}

/// The report after one more batch: its counts added, its rejected rows counted and kept
/// among the first [`MAX_REPORTED_ERRORS`] by line (a batch's lines all follow the
/// previous batches', so cutting after each batch keeps the right ones).
fn advance(before: &ImportReport, batch: &ImportReport, records: u64, mut errors: Vec<RowError>) -> ImportReport {
    let mut next = before.clone();
    next.created += batch.created;
    next.updated += batch.updated;
    next.done += records;
    next.rejected += errors.len() as u64;
    errors.sort_by_key(|e| e.line);
    next.errors.extend(errors);
    next.errors.truncate(MAX_REPORTED_ERRORS);
    next
}

fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("23505") | Some("40001") | Some("40P01")))
}

/// Records a job's progress, and its end when `finished` is given.
pub(crate) async fn save_job(db: impl sqlx::PgExecutor<'_>, job: Uuid, r: &ImportReport, finished: Option<&str>) -> CoreResult<()> {
    sqlx::query(
        "update crm_import_jobs set total = $2, done = $3, created = $4, updated = $5, rejected = $6, errors = $7,
            status = coalesce($8, status), finished_at = case when $8 is null then null else now() end where id = $1",
    )
    .bind(job)
    .bind(r.total as i64)
    .bind(r.done as i64)
    .bind(r.created as i64)
    .bind(r.updated as i64)
    .bind(r.rejected as i64)
    .bind(serde_json::to_value(&r.errors).unwrap_or_else(|_| json!([])))
    .bind(finished)
    .execute(db)
    .await?;
    Ok(())
}

/// The CSV header of an export (re-importable as is).
pub fn export_header(settings: &Settings) -> Vec<String> {
    let mut h: Vec<String> = [
        "id",
        "external_id",
        "name",
        "phone",
        "email",
        "language",
        "time_zone",
        "birthday",
        "tags",
        "company",
        "consent_sms",
        "consent_email",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    h.extend(settings.config.attributes.keys().map(|k| format!("attr.{k}")));
    h
}

#[derive(sqlx::FromRow)]
struct ExportRow {
    id: Uuid,
    external_id: Option<String>,
    name: String,
    phone: Option<String>,
    email: Option<String>,
    language: Option<String>,
    time_zone: Option<String>,
    birthday: Option<NaiveDate>,
    tags: Vec<String>,
    company: Option<String>,
    consent_sms: bool,
    consent_email: bool,
    attributes: Value,
}

/// One page of the export after `after` (keyset by id), as CSV bytes; None when done.
pub async fn export_page(
    pool: &PgPool,
    settings: &Settings,
    after: Option<Uuid>,
    with_header: bool,
    limit: i64,
) -> CoreResult<Option<(Vec<u8>, Uuid)>> {
    let rows: Vec<ExportRow> = sqlx::query_as(
        "select c.id, c.external_id, c.name,
            (select string_agg(address, ';' order by created_at, address) from customer_identities i
              where i.customer_id = c.id and i.kind = 'phone') as phone,
            (select string_agg(address, ';' order by created_at, address) from customer_identities i
              where i.customer_id = c.id and i.kind = 'email') as email,
            c.language, c.time_zone, c.birthday, c.tags, c.company, c.consent_sms, c.consent_email, c.attributes
         from customers c where c.merged_into is null and c.erased_at is null and ($1::uuid is null or c.id > $1)
         order by c.id limit $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let Some(last) = rows.last().map(|r| r.id) else { return Ok(None) };
    let mut w = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| CoreError::Internal(format!("csv: {e}"));
    if with_header {
        w.write_record(export_header(settings)).map_err(io)?;
    }
    for r in rows {
        let mut rec = vec![
            r.id.to_string(),
            r.external_id.unwrap_or_default(),
            formula_safe(r.name),
            r.phone.unwrap_or_default(),
            r.email.unwrap_or_default(),
            r.language.unwrap_or_default(),
            r.time_zone.unwrap_or_default(),
            r.birthday.map(|d| d.to_string()).unwrap_or_default(),
            r.tags.join(";"),
            formula_safe(r.company.unwrap_or_default()),
            r.consent_sms.to_string(),
            r.consent_email.to_string(),
        ];
        for k in settings.config.attributes.keys() {
            rec.push(match r.attributes.get(k) {
                Some(Value::String(s)) => formula_safe(s.clone()),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            });
        }
        w.write_record(&rec).map_err(io)?;
    }
    let bytes = w.into_inner().map_err(|e| CoreError::Internal(format!("csv: {e}")))?;
    Ok(Some((bytes, last)))
}

/// Spreadsheet formula injection guard: a text cell starting with `=`, `+`, `-` or `@`
/// gets a leading apostrophe.
fn formula_safe(s: String) -> String {
    if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_validated_with_line_and_field() {
        let s = Settings::new(CrmConfig::default()).expect("settings");
        let mut rdr =
            csv::Reader::from_reader("name,phone,email,birthday\nAna,(202) 555-0143,ANA@Example.com,1990-01-02\nBob,12ab,,\n".as_bytes());
        let h = parse_header(&s, rdr.headers().expect("h")).expect("header");
        let recs: Vec<csv::StringRecord> = rdr.records().map(|r| r.expect("rec")).collect();
        let ok = parse_row(&s, &h, &recs[0], 2).expect("row");
        assert_eq!(ok.phones, vec!["+12025550143".to_string()]);
        assert_eq!(ok.emails, vec!["ana@example.com".to_string()]);
        let bad = parse_row(&s, &h, &recs[1], 3).expect_err("bad");
        assert_eq!(bad.field.as_deref(), Some("phone"));
        assert_eq!(bad.line, 3);
    }

    #[test]
    fn address_cells_hold_several_addresses() {
        let s = Settings::new(CrmConfig::default()).expect("settings");
        let mut rdr = csv::Reader::from_reader(
            "phone,email\n\"(202) 555-0143; +1 415 555 0100;;+12025550143\",A@Example.com;b@example.org\n+12025550143;12ab,\n".as_bytes(),
        );
        let h = parse_header(&s, rdr.headers().expect("h")).expect("header");
        let recs: Vec<csv::StringRecord> = rdr.records().map(|r| r.expect("rec")).collect();
        let ok = parse_row(&s, &h, &recs[0], 2).expect("row");
        assert_eq!(ok.phones, vec!["+12025550143".to_string(), "+14155550100".to_string()], "normalized, deduplicated, in order");
        assert_eq!(ok.emails, vec!["a@example.com".to_string(), "b@example.org".to_string()]);
        let bad = parse_row(&s, &h, &recs[1], 3).expect_err("one bad number rejects the row");
        assert_eq!(bad.field.as_deref(), Some("phone"));
        assert!(bad.reason.contains("12ab"), "{}", bad.reason);
        let many = (0..21).map(|i| format!("u{i}@example.com")).collect::<Vec<_>>().join(";");
        assert!(split_addresses(&many, normalize::email).is_err());
    }

    #[test]
    fn unknown_columns_are_refused() {
        let s = Settings::new(CrmConfig::default()).expect("settings");
        let rec = csv::StringRecord::from(vec!["name", "shoe_size"]);
        assert!(parse_header(&s, &rec).is_err());
        let rec = csv::StringRecord::from(vec!["name", "company"]);
        assert!(parse_header(&s, &rec).is_err(), "no key column");
    }

    #[test]
    fn tags_and_formulas() {
        assert_eq!(split_tags("vip; b2b|vip,,"), Ok(vec!["b2b".to_string(), "vip".to_string()]));
        assert_eq!(formula_safe("=cmd()".into()), "'=cmd()");
        assert_eq!(formula_safe("Ana".into()), "Ana");
    }
}
