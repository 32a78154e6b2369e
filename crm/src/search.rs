//! Customer search by a name, phone or email fragment, with a latency that holds at a
//! million customers for common and rare fragments alike.
//!
//! No single plan is fast for both. A common fragment ("ana", "@gmail", "202") has
//! matches everywhere: a plain scan finds 20 of them in the first few pages, while an
//! index must first collect the posting lists of very common keys in full (GIN has no
//! early stop). A rare fragment is the opposite: a scan reads the whole table, the index
//! a few short lists. So a search runs in up to two steps:
//!
//! 1. **Probe**: a fixed-size block sample of each table (`TABLESAMPLE SYSTEM`, the same
//!    blocks every time), plus the exact identity when the fragment is a whole phone
//!    number or email address. The sample is spread over the whole table, so clustering of
//!    similar rows (an import sorted by area code) cannot hide a common fragment from it.
//!    Its cost does not grow with the table.
//! 2. **Index**: only when the probe found fewer hits than asked for, which means the
//!    fragment is rare (under ~0.5 % of rows), the indexes are read, with sequential and
//!    plain index scans switched off for that one statement: with `LIMIT`, the planner
//!    would otherwise bet on a scan that stops early, and lose the bet whenever the
//!    matches sit far into the table. Names use trigrams of `name_key`, email addresses
//!    and chat ids trigrams of the address (read for the longest letter-and-digit run of
//!    the fragment, local part first: domains are shared by most customers), phone numbers
//!    the digit-run keys of `crm_digit_grams` (the migration explains them).
//!
//! The hits of both steps are then ranked: an exact phone or email first, then names
//! starting with the fragment, names with a word starting with it, names containing it,
//! and the rest; ties by name.

use crate::normalize::{self, Region};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashSet;
use switchboard_core::{CoreError, CoreResult};
use uuid::Uuid;

/// Shortest fragment searched (shorter ones match too much to be useful and have no
/// trigram to look up).
pub const MIN_FRAGMENT_CHARS: usize = 3;
/// Longest fragment searched, in bytes.
pub const MAX_FRAGMENT_BYTES: usize = 200;
/// Table blocks the probe reads per table (about 4,000 customers or 5,000 identities).
const PROBE_BLOCKS: i32 = 64;

/// Step 1: `$1` name LIKE pattern, `$2` email/chat fragment, `$3` phone digits, `$4`
/// limit per branch, `$5`/`$6` exact phone/email, `$7` blocks sampled per table. A
/// branch whose parameter is null is skipped (a one-time filter). Both steps are prepared
/// statements: no plan alternative depends on the fragment (a sample scan here, bitmap
/// index scans only in step 2), so a cached plan is as good as a fresh one.
const PROBE_SQL: &str = "select customer_id from customer_identities
          where (kind = 'phone' and address = $5) or (kind = 'email' and address = $6)
         union all
         (select id from customers tablesample system (least(100, 100.0 * $7 /
                 greatest(1, pg_relation_size('customers') / current_setting('block_size')::int))::real) repeatable (0)
          where $1::text is not null and name_key like $1 and merged_into is null and erased_at is null limit $4)
         union all
         (select customer_id from customer_identities tablesample system (least(100, 100.0 * $7 /
                 greatest(1, pg_relation_size('customer_identities') / current_setting('block_size')::int))::real) repeatable (0)
          where $2::text is not null and kind in ('email', 'chat') and strpos(address, $2) > 0 limit $4)
         union all
         (select customer_id from customer_identities tablesample system (least(100, 100.0 * $7 /
                 greatest(1, pg_relation_size('customer_identities') / current_setting('block_size')::int))::real) repeatable (0)
          where $3::text is not null and kind = 'phone' and strpos(address, $3) > 0 limit $4)";

/// Step 2: `$1` name LIKE pattern, `$2` address LIKE pattern for the trigram index, `$3`
/// the whole email/chat fragment, `$4` phone digits, `$5` their `crm_digit_grams` keys,
/// `$6` limit per branch.
const INDEX_SQL: &str = "(select id from customers
              where $1::text is not null and name_key like $1 and merged_into is null and erased_at is null limit $6)
             union all
             (select customer_id from customer_identities
              where $2::text is not null and kind in ('email', 'chat') and address like $2 and strpos(address, $3) > 0 limit $6)
             union all
             (select customer_id from customer_identities
              where $5::int[] is not null and kind = 'phone' and crm_digit_grams(address) @> $5 and strpos(address, $4) > 0 limit $6)";

/// Leaves bitmap index scans as the only way to read a table, for the transaction.
const INDEX_ONLY: &str = "select set_config('enable_seqscan', 'off', true), set_config('enable_indexscan', 'off', true)";

/// A search hit.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SearchHit {
    /// Customer id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Company.
    pub company: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Identities (kind:address).
    pub identities: Vec<String>,
}

/// What a fragment is looked for as.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// Normalized fragment for names: lower case, white space collapsed as in `name_key`.
    name: Option<String>,
    /// Lower-case fragment for email addresses and chat ids.
    text: Option<String>,
    /// LIKE pattern on the address for the trigram index (all or part of `text`).
    text_index: Option<String>,
    /// The digits of a phone fragment.
    digits: Option<String>,
    /// `crm_digit_grams` keys every number containing `digits` has.
    grams: Option<Vec<i32>>,
    /// The fragment as a whole E.164 number, when it is one.
    exact_phone: Option<String>,
    /// The fragment as a whole email address, when it is one.
    exact_email: Option<String>,
}

/// Escapes `%`, `_` and `\` for LIKE.
fn like_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// The `crm_digit_grams` keys to look a digit fragment up by: the fragment itself when it
/// has at most five digits, else each of its five-digit runs.
fn digit_grams(digits: &str) -> Vec<i32> {
    let n = digits.len().min(5);
    let base = 10i32.pow(n as u32);
    let mut keys: Vec<i32> =
        (0..=digits.len() - n).filter_map(|i| digits.get(i..i + n)).filter_map(|run| run.parse::<i32>().ok()).map(|v| base + v).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The LIKE pattern the address trigram index is read with: the longest run of letters
/// and digits of the local part (of the domain when the local part has none of three or
/// more), the whole fragment being checked on the rows found. For `517@exa` that is
/// `%517%`: the domain's trigrams are in nearly every address, and the padded trigrams
/// pg_trgm makes at a `.` or `@` boundary (`  e`, ` ex`) are among the most common of all,
/// so leaving them out saves reading the longest posting lists. A fragment with no such
/// run is looked up whole.
fn text_index_pattern(lower: &str) -> String {
    let longest_run = |part: &str| -> Option<String> {
        part.split(|c: char| !c.is_alphanumeric())
            .filter(|r| r.chars().count() >= 3)
            .fold(None, |best: Option<&str>, r| match best {
                Some(b) if b.chars().count() >= r.chars().count() => Some(b),
                _ => Some(r),
            })
            .map(str::to_string)
    };
    let (local, domain) = lower.split_once('@').unwrap_or((lower, ""));
    match longest_run(local).or_else(|| longest_run(domain)) {
        Some(run) => format!("%{}%", like_escape(&run)),
        None => format!("%{}%", like_escape(lower)),
    }
}

/// Picks the branches a fragment is looked for in. Digits (with phone punctuation) are a
/// phone number; a fragment with white space is a name (addresses have none); one with
/// an `@` is an email address; `.`, `_` and `+` do not occur in names.
fn plan(q: &str, region: Region) -> CoreResult<Plan> {
    let q = q.trim();
    if q.chars().count() < MIN_FRAGMENT_CHARS {
        return Err(CoreError::field("q", format!("at least {MIN_FRAGMENT_CHARS} characters")));
    }
    if q.len() > MAX_FRAGMENT_BYTES {
        return Err(CoreError::field("q", format!("at most {MAX_FRAGMENT_BYTES} bytes")));
    }
    if q.chars().any(char::is_control) {
        return Err(CoreError::field("q", "must not contain control characters"));
    }
    let lower = q.to_lowercase();
    let mut p = Plan::default();
    if let Some(d) = normalize::phone_fragment(q) {
        p.grams = Some(digit_grams(&d));
        p.digits = Some(d);
        p.exact_phone = normalize::phone(q, region).ok();
        return Ok(p);
    }
    let spaced = q.contains(char::is_whitespace);
    if !q.contains('@') && (spaced || !q.contains(['.', '_', '+'])) {
        p.name = Some(lower.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    if !spaced {
        p.text_index = Some(text_index_pattern(&lower));
        p.exact_email = normalize::email(q).ok();
        p.text = Some(lower);
    }
    Ok(p)
}

/// Searches customers by a name, phone or email fragment; at most `limit` hits, ranked
/// (see the module documentation for how).
#[tracing::instrument(skip(db, region), fields(hits))]
pub async fn search(db: &PgPool, region: Region, q: &str, limit: i64) -> CoreResult<Vec<SearchHit>> {
    let p = plan(q, region)?;
    let limit = limit.clamp(1, 200);
    let name_like = p.name.as_deref().map(|n| format!("%{}%", like_escape(n)));
    // Step 1: the exact identity and a block sample of each table.
    let probe: Vec<Uuid> = sqlx::query_scalar(PROBE_SQL)
        .bind(&name_like)
        .bind(&p.text)
        .bind(&p.digits)
        .bind(limit)
        .bind(&p.exact_phone)
        .bind(&p.exact_email)
        .bind(PROBE_BLOCKS)
        .fetch_all(db)
        .await?;
    let mut ids: Vec<Uuid> = Vec::new();
    let mut seen = HashSet::new();
    for id in probe {
        if seen.insert(id) {
            ids.push(id);
        }
    }
    // Step 2: a rare fragment, through the indexes only.
    if (ids.len() as i64) < limit {
        let mut tx = db.begin().await?;
        sqlx::query(INDEX_ONLY).execute(&mut *tx).await?;
        let indexed: Vec<Uuid> = sqlx::query_scalar(INDEX_SQL)
            .bind(&name_like)
            .bind(&p.text_index)
            .bind(&p.text)
            .bind(&p.digits)
            .bind(&p.grams)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        for id in indexed {
            if seen.insert(id) {
                ids.push(id);
            }
        }
    }
    let mut hits: Vec<SearchHit> = sqlx::query_as(
        "select c.id, c.name, c.company, c.tags,
                coalesce((select array_agg(i.kind || ':' || i.address order by i.kind, i.address)
                          from customer_identities i where i.customer_id = c.id), '{}') as identities
         from customers c where c.id = any($1) and c.merged_into is null and c.erased_at is null",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    rank(&mut hits, &p);
    hits.truncate(limit as usize);
    tracing::Span::current().record("hits", hits.len());
    Ok(hits)
}

/// Orders hits: exact phone or email, name prefix, word prefix, name contains, the rest;
/// then by name and id.
fn rank(hits: &mut [SearchHit], p: &Plan) {
    let exact: Vec<String> =
        p.exact_phone.iter().map(|a| format!("phone:{a}")).chain(p.exact_email.iter().map(|a| format!("email:{a}"))).collect();
    hits.sort_by_cached_key(|h| {
        let name = h.name.to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ");
        let class = if h.identities.iter().any(|i| exact.contains(i)) {
            0
        } else {
            match &p.name {
                Some(n) if name.starts_with(n.as_str()) => 1,
                Some(n) if name.split(' ').any(|w| w.starts_with(n.as_str())) => 2,
                Some(n) if name.contains(n.as_str()) => 3,
                _ => 4,
            }
        };
        (class, name, h.id)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us() -> Region {
        Region::parse("US").expect("region")
    }

    #[test]
    fn fragments_pick_their_branches() {
        let p = plan("(202) 555", us()).expect("plan");
        assert_eq!(p.digits.as_deref(), Some("202555"));
        assert_eq!(p.grams, Some(vec![102555, 120255]));
        assert!(p.name.is_none() && p.text.is_none());
        let p = plan("  Ann   Lee ", us()).expect("plan");
        assert_eq!(p.name.as_deref(), Some("ann lee"));
        assert!(p.text.is_none(), "addresses have no spaces");
        let p = plan("Bcher", us()).expect("plan");
        assert_eq!(p.name.as_deref(), Some("bcher"));
        assert_eq!(p.text.as_deref(), Some("bcher"));
        assert_eq!(p.text_index.as_deref(), Some("%bcher%"));
        let p = plan("ana.garcia", us()).expect("plan");
        assert!(p.name.is_none(), "names have no dots");
        assert!(p.exact_email.is_none());
    }

    #[test]
    fn addresses_are_looked_up_by_their_longest_run_local_part_first() {
        let p = plan("517@EXA", us()).expect("plan");
        assert_eq!(p.text.as_deref(), Some("517@exa"));
        assert_eq!(p.text_index.as_deref(), Some("%517%"));
        assert_eq!(plan("d.novak", us()).expect("plan").text_index.as_deref(), Some("%novak%"));
        assert_eq!(plan("r12345@example0.com", us()).expect("plan").text_index.as_deref(), Some("%r12345%"));
        assert_eq!(plan("7@example", us()).expect("plan").text_index.as_deref(), Some("%example%"));
        let p = plan("a_b@x.io", us()).expect("plan");
        assert_eq!(p.text_index.as_deref(), Some("%a\\_b@x.io%"), "no run of three: the whole fragment");
        assert_eq!(p.exact_email.as_deref(), Some("a_b@x.io"));
    }

    #[test]
    fn whole_numbers_are_also_looked_up_exactly() {
        let p = plan("+1 202-555-0143", us()).expect("plan");
        assert_eq!(p.exact_phone.as_deref(), Some("+12025550143"));
        assert_eq!(p.digits.as_deref(), Some("12025550143"));
        assert_eq!(p.grams.as_ref().map(Vec::len), Some(7));
    }

    #[test]
    fn digit_runs_match_the_sql_encoding() {
        // crm_digit_grams('+12025550143') holds 1202 (run "202"), 10143 ("0143") and
        // 155501 ("55501").
        assert_eq!(digit_grams("202"), vec![1202]);
        assert_eq!(digit_grams("0143"), vec![10143]);
        assert_eq!(digit_grams("555014"), vec![155014, 155501]);
        assert_eq!(digit_grams("012"), vec![1012], "leading zeros are kept by the length marker");
    }

    #[test]
    fn bad_fragments_are_refused_with_the_field() {
        for q in ["ab", "  a ", "x\u{0}yz", &"a".repeat(201)] {
            assert!(plan(q, us()).is_err(), "{q:?}");
        }
    }

    #[test]
    fn ranking_puts_exact_and_prefix_matches_first() {
        let hit = |name: &str, ids: &[&str]| SearchHit {
            id: Uuid::new_v4(),
            name: name.into(),
            company: None,
            tags: vec![],
            identities: ids.iter().map(|s| s.to_string()).collect(),
        };
        let p = plan("ann", us()).expect("plan");
        let mut hits = vec![hit("Joanna", &[]), hit("Bo", &["email:ann@x.io"]), hit("Mary Ann", &[]), hit("Annie", &[])];
        rank(&mut hits, &p);
        let names: Vec<&str> = hits.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Annie", "Mary Ann", "Joanna", "Bo"]);
        let p = plan("ann@x.io", us()).expect("plan");
        let mut hits = vec![hit("Annabel", &["email:xann@x.io"]), hit("Bo", &["email:ann@x.io"])];
        rank(&mut hits, &p);
        assert_eq!(hits[0].name, "Bo");
    }

    async fn scale_db() -> switchboard_core::testing::TestDb {
        let db = switchboard_core::testing::TestDb::new().await;
        // 20,000 customers fill a few hundred blocks: the probe samples a fifth of them,
        // so rare fragments are found by step 2 and common ones by step 1.
        sqlx::query("insert into customers (name) select 'Person ' || i from generate_series(1, 20000) i")
            .execute(&db.pool)
            .await
            .expect("customers");
        sqlx::query(
            "insert into customer_identities (customer_id, kind, address)
             select id, 'phone', '+1202' || lpad(substr(name, 8), 7, '0') from customers
             union all
             select id, 'email', 'user' || substr(name, 8) || '@example' || (substr(name, 8)::int % 3) || '.com' from customers",
        )
        .execute(&db.pool)
        .await
        .expect("identities");
        sqlx::query("analyze").execute(&db.pool).await.expect("analyze");
        db
    }

    /// Customers matching a fragment, the slow and obvious way.
    async fn matches(db: &PgPool, p: &Plan) -> i64 {
        sqlx::query_scalar(
            "select count(distinct id) from (
               select id from customers where $1::text is not null and strpos(name_key, $1) > 0
               union all
               select customer_id from customer_identities where $2::text is not null and kind in ('email', 'chat') and strpos(address, $2) > 0
               union all
               select customer_id from customer_identities where $3::text is not null and kind = 'phone' and strpos(address, $3) > 0) m",
        )
        .bind(&p.name)
        .bind(&p.text)
        .bind(&p.digits)
        .fetch_one(db)
        .await
        .expect("count")
    }

    // Multi-threaded: dropping a TestDb blocks the test's thread until the pool has every
    // connection back, and returning one is a task that needs another thread to run on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rare_and_common_fragments_return_every_match_up_to_the_limit() {
        let db = scale_db().await;
        for q in [
            "person 1",
            "son 19",
            "person 17321",
            "Person 4",
            "rson 2000",
            "202000",
            "2020001",
            "12020019999",
            "0019",
            "user1",
            "user7777@",
            "@example2",
            "9@example1",
            "r12345@example0.com",
            "example",
            "zzz",
            "555",
        ] {
            let p = plan(q, us()).expect("plan");
            let expected = matches(&db.pool, &p).await.min(20);
            let hits = search(&db.pool, us(), q, 20).await.expect("search");
            assert_eq!(hits.len() as i64, expected, "{q}: {hits:?}");
            let lower = q.to_lowercase();
            for h in &hits {
                let digits = p.digits.as_deref().unwrap_or("\u{0}");
                assert!(
                    h.name.to_lowercase().contains(&lower) || h.identities.iter().any(|i| i.contains(&lower) || i.contains(digits)),
                    "{q}: {h:?}"
                );
            }
        }
        // A whole number or address comes first.
        let hits = search(&db.pool, us(), "user1234@example1.com", 20).await.expect("search");
        assert_eq!(hits[0].name, "Person 1234");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_index_step_reads_the_search_indexes() {
        let db = scale_db().await;
        let p = plan("517@exa", us()).expect("plan");
        let mut tx = db.pool.begin().await.expect("tx");
        sqlx::query(INDEX_ONLY).execute(&mut *tx).await.expect("settings");
        let explain: Vec<String> = sqlx::query_scalar(&format!("explain {INDEX_SQL}"))
            .bind("%person 1%")
            .bind(&p.text_index)
            .bind(&p.text)
            .bind("2025550")
            .bind(digit_grams("2025550"))
            .bind(20i64)
            .fetch_all(&mut *tx)
            .await
            .expect("explain");
        // Ended before the database is dropped (dropping it waits for every connection).
        tx.rollback().await.expect("rollback");
        let explain = explain.join("\n");
        for index in ["customers_name_key_trgm", "customer_identities_text_trgm", "customer_identities_phone_grams"] {
            assert!(explain.contains(&format!("Bitmap Index Scan on {index}")), "{index}: {explain}");
        }
        assert!(!explain.contains("Seq Scan"), "{explain}");
    }
}
