//! Suggested duplicates: customers sharing a normalized name and birthday, an email
//! address once dots and `+tags` of its local part are ignored, or the last ten digits
//! of a phone number.
//!
//! Nothing here groups whole tables. Triggers (migration `20261122100000_crm_search`)
//! record each key that a write found shared by two customers in `crm_duplicate_keys`;
//! a listing reads a page of those keys by id and looks each group's members up through
//! the `(name_key, birthday)` and `crm_identity_match_key` indexes, at most
//! [`MAX_MEMBERS`] per group. A key whose group has shrunk below two live customers
//! (merged, erased, identity removed) is dropped from the work list as it is met, unless a
//! write saw it shared again meanwhile.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use switchboard_core::CoreResult;

/// Most customers listed in one group.
pub const MAX_MEMBERS: i64 = 50;

/// A suggested duplicate group.
#[derive(Debug, Clone, Serialize)]
pub struct DuplicateGroup {
    /// Position in the work list (pass it as `after` to continue after this group).
    pub id: i64,
    /// Why these look alike.
    pub reason: &'static str,
    /// The shared value.
    pub key: String,
    /// The customers (id, name, created_at), oldest first.
    pub customers: Vec<Value>,
}

/// One page of suggestions.
#[derive(Debug, Clone, Serialize)]
pub struct DuplicatePage {
    /// Groups, in the order they were found.
    pub items: Vec<DuplicateGroup>,
    /// Pass as `after` for the next page; null when the list is exhausted.
    pub next_after: Option<i64>,
}

/// A page of keys after `$1` (at most `$2`) with their live members (at most `$3` each),
/// through the `(name_key, birthday)` and `crm_identity_match_key` indexes. The CASE
/// keeps the date cast away from phone and email keys.
const PAGE_SQL: &str = "select k.id, k.reason, k.key, k.seen_at, coalesce(by_name.members, by_identity.members, '[]') as members
             from crm_duplicate_keys k
             left join lateral (
                 select jsonb_agg(jsonb_build_object('id', c.id, 'name', c.name, 'created_at', c.created_at)
                                  order by c.created_at, c.id) as members
                 from (select c.id, c.name, c.created_at from customers c
                       where k.reason = 'name_birthday' and c.name_key = left(k.key, -11)
                         and c.birthday = case when k.reason = 'name_birthday' then right(k.key, 10)::date end
                         and c.birthday is not null and c.merged_into is null and c.erased_at is null
                       order by c.created_at, c.id limit $3) c
             ) by_name on true
             left join lateral (
                 select jsonb_agg(jsonb_build_object('id', c.id, 'name', c.name, 'created_at', c.created_at)
                                  order by c.created_at, c.id) as members
                 from (select c.id, c.name, c.created_at from customers c
                       where k.reason in ('email', 'phone') and c.merged_into is null and c.erased_at is null
                         and c.id in (select i.customer_id from customer_identities i
                                      where i.kind in ('email', 'phone') and i.kind = k.reason
                                        and crm_identity_match_key(i.kind, i.address) = k.key)
                       order by c.created_at, c.id limit $3) c
             ) by_identity on true
             where k.id > $1 order by k.id limit $2";

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: i64,
    reason: String,
    key: String,
    seen_at: DateTime<Utc>,
    members: Value,
}

fn reason_text(reason: &str) -> &'static str {
    match reason {
        "name_birthday" => "same name and birthday",
        "email" => "same email",
        _ => "same phone number",
    }
}

/// Up to `limit` groups after work-list position `after`. Reads at most `4 × limit` keys,
/// so a long run of stale keys costs a short page with a `next_after`, not a long request.
#[tracing::instrument(skip(db))]
pub async fn duplicates(db: &PgPool, after: i64, limit: i64) -> CoreResult<DuplicatePage> {
    let limit = limit.clamp(1, 200);
    let budget = limit * 4;
    let mut items = Vec::new();
    let mut cursor = after;
    let mut examined = 0;
    let mut stale: Vec<(i64, DateTime<Utc>)> = Vec::new();
    let mut exhausted = false;
    while (items.len() as i64) < limit && examined < budget {
        let want = (limit - items.len() as i64).min(budget - examined);
        let rows: Vec<KeyRow> = sqlx::query_as(PAGE_SQL).bind(cursor).bind(want).bind(MAX_MEMBERS).fetch_all(db).await?;
        if (rows.len() as i64) < want {
            exhausted = true;
        }
        for r in rows {
            examined += 1;
            cursor = r.id;
            match r.members {
                Value::Array(customers) if customers.len() >= 2 => {
                    items.push(DuplicateGroup { id: r.id, reason: reason_text(&r.reason), key: r.key, customers })
                }
                _ => stale.push((r.id, r.seen_at)),
            }
        }
        if exhausted {
            break;
        }
    }
    if !stale.is_empty() {
        let (ids, seen): (Vec<i64>, Vec<DateTime<Utc>>) = stale.into_iter().unzip();
        // A key a write re-marked since it was read (seen_at moved) stays.
        sqlx::query(
            "delete from crm_duplicate_keys k using unnest($1::bigint[], $2::timestamptz[]) as s(id, seen_at)
             where k.id = s.id and k.seen_at = s.seen_at",
        )
        .bind(&ids)
        .bind(&seen)
        .execute(db)
        .await?;
    }
    Ok(DuplicatePage { items, next_after: (!exhausted).then_some(cursor) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::testing::TestDb;

    // Multi-threaded: dropping a TestDb blocks the test's thread until the pool has every
    // connection back, and returning one is a task that needs another thread to run on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_is_read_through_indexes_only() {
        let db = TestDb::new().await;
        sqlx::query(
            "insert into customers (name, birthday) select 'Person ' || (i % 500), date '1990-01-01' + (i % 7)
             from generate_series(1, 2000) i",
        )
        .execute(&db.pool)
        .await
        .expect("customers");
        // The whole id as `+tag`: addresses are unique, and a short tag would collide now and then.
        sqlx::query(
            "insert into customer_identities (customer_id, kind, address)
             select id, 'email', replace(lower(name), ' ', '.') || '+' || replace(id::text, '-', '') || '@example.com' from customers",
        )
        .execute(&db.pool)
        .await
        .expect("identities");
        sqlx::query("analyze").execute(&db.pool).await.expect("analyze");
        let groups: i64 = sqlx::query_scalar("select count(*) from crm_duplicate_keys").fetch_one(&db.pool).await.expect("count");
        assert!(groups >= 500, "the triggers recorded the shared keys: {groups}");
        // With sequential scans priced out, a plan still containing one has no index to use.
        let mut conn = db.pool.acquire().await.expect("conn");
        sqlx::query("set enable_seqscan = off").execute(&mut *conn).await.expect("set");
        let plan: Vec<String> = sqlx::query_scalar(&format!("explain {PAGE_SQL}"))
            .bind(0i64)
            .bind(50i64)
            .bind(MAX_MEMBERS)
            .fetch_all(&mut *conn)
            .await
            .expect("explain");
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        drop(conn);
        let page = duplicates(&db.pool, 0, 10).await.expect("page");
        assert_eq!(page.items.len(), 10);
        assert!(page.items.iter().all(|g| g.customers.len() >= 2));
        assert!(page.items.iter().all(|g| g.customers.len() as i64 <= MAX_MEMBERS));
        assert!(page.next_after.is_some());
    }
}
