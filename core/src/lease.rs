//! Leases with expiry and fencing: the one mechanism for every single-owner job (an IMAP
//! mailbox, an SMPP bind, a planner) when several hub nodes share one database.
//!
//! A lease is a row in `leases` (name, holder, token, expires_at). A node takes it when it
//! is free or expired and renews it well before it runs out. Every *new* acquisition
//! increments `token` (the fencing token); renewals keep it. A node that was paused (GC,
//! SIGSTOP, a VM migration) past its expiry may wake up still believing it holds the job;
//! its writes are fenced by [`still_held`], called inside the write's own transaction: it
//! locks the lease row (`for share`) and checks that `token` is still ours and unexpired
//! by the database clock, so an acquisition by another node either happened before (the
//! check fails, the write rolls back) or waits until the write committed.
//!
//! The holder's local view, [`Lease::locally_valid`], is conservative: the expiry counted
//! from *before* the acquiring or renewing round trip was sent, so a holder stops acting on
//! its own clock no later than the database would let someone else take over.

use crate::error::CoreResult;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// A lease this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The job's name (`email:<mailbox>`, `smpp:<channel>`, …).
    pub name: String,
    /// The holding node.
    pub holder: Uuid,
    /// The fencing token of this holding.
    pub token: i64,
    /// Local instant after which the holder must assume the lease is gone.
    pub valid_until: Instant,
}

impl Lease {
    /// Whether the holder may still act by its own clock (renewals move this forward).
    pub fn locally_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

/// Who holds a lease now (an unexpired row).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaseHolder {
    /// The holding node.
    pub holder: Uuid,
    /// The fencing token of its holding.
    pub token: i64,
}

fn secs(ttl: Duration) -> f64 {
    ttl.as_secs_f64().max(0.001)
}

/// Takes `name` for `holder` for `ttl` when it is free or expired, or renews it when this
/// holder still has it unexpired (same token). `None` when another node holds it.
#[tracing::instrument(skip(db), fields(%holder))]
pub async fn acquire(db: &PgPool, name: &str, holder: Uuid, ttl: Duration) -> CoreResult<Option<Lease>> {
    let sent = Instant::now();
    // clock_timestamp(), not now(): the statement may have waited for a row lock held by
    // a fenced write, and expiry is judged at the moment of the update.
    let token: Option<i64> = sqlx::query_scalar(
        "insert into leases (name, holder, token, expires_at)
         values ($1, $2, 1, clock_timestamp() + make_interval(secs => $3))
         on conflict (name) do update set
             token = case when leases.holder = excluded.holder and leases.expires_at > clock_timestamp()
                          then leases.token else leases.token + 1 end,
             acquired_at = case when leases.holder = excluded.holder and leases.expires_at > clock_timestamp()
                          then leases.acquired_at else clock_timestamp() end,
             holder = excluded.holder,
             expires_at = excluded.expires_at
         where leases.holder = excluded.holder or leases.expires_at <= clock_timestamp()
         returning token",
    )
    .bind(name)
    .bind(holder)
    .bind(secs(ttl))
    .fetch_optional(db)
    .await?;
    Ok(token.map(|token| Lease { name: name.to_string(), holder, token, valid_until: sent + ttl }))
}

/// Extends a held lease by `ttl` from now. False when it was lost (expired, or taken by
/// another node); the holder must stop and may try [`acquire`] again (a new token).
#[tracing::instrument(skip(db, lease), fields(name = %lease.name, token = lease.token))]
pub async fn renew(db: &PgPool, lease: &mut Lease, ttl: Duration) -> CoreResult<bool> {
    let sent = Instant::now();
    let n = sqlx::query(
        "update leases set expires_at = clock_timestamp() + make_interval(secs => $4)
          where name = $1 and holder = $2 and token = $3 and expires_at > clock_timestamp()",
    )
    .bind(&lease.name)
    .bind(lease.holder)
    .bind(lease.token)
    .bind(secs(ttl))
    .execute(db)
    .await?
    .rows_affected();
    if n == 1 {
        lease.valid_until = sent + ttl;
    }
    Ok(n == 1)
}

/// Gives a lease up (a clean shutdown) so another node can take it at once. Only this
/// holding is released: a lease already taken over by another node is left alone.
#[tracing::instrument(skip(db, lease), fields(name = %lease.name, token = lease.token))]
pub async fn release(db: &PgPool, lease: &Lease) -> CoreResult<()> {
    sqlx::query("update leases set expires_at = clock_timestamp() where name = $1 and holder = $2 and token = $3")
        .bind(&lease.name)
        .bind(lease.holder)
        .bind(lease.token)
        .execute(db)
        .await?;
    Ok(())
}

/// Releases whatever holding of `name` this holder has (shutdown paths that kept no
/// [`Lease`] value).
pub async fn release_by_holder(db: &PgPool, name: &str, holder: Uuid) -> CoreResult<()> {
    sqlx::query("update leases set expires_at = clock_timestamp() where name = $1 and holder = $2 and expires_at > clock_timestamp()")
        .bind(name)
        .bind(holder)
        .execute(db)
        .await?;
    Ok(())
}

/// The fencing check for a lease-guarded write: call it inside the write's transaction
/// (before the write) and roll back when it returns false. It takes a share lock on the
/// lease row, so a competing acquisition waits for this transaction to end.
#[tracing::instrument(skip(conn))]
pub async fn still_held(conn: &mut PgConnection, name: &str, token: i64) -> CoreResult<bool> {
    Ok(sqlx::query_scalar::<_, i32>("select 1 from leases where name = $1 and token = $2 and expires_at > clock_timestamp() for share")
        .bind(name)
        .bind(token)
        .fetch_optional(conn)
        .await?
        .is_some())
}

/// The live holder of a lease, if any.
#[tracing::instrument(skip(db))]
pub async fn holder(db: &PgPool, name: &str) -> CoreResult<Option<LeaseHolder>> {
    Ok(sqlx::query_as("select holder, token from leases where name = $1 and expires_at > clock_timestamp()")
        .bind(name)
        .fetch_optional(db)
        .await?)
}

/// Every live lease (the cluster status page, `scripts/cluster.sh status`).
pub async fn all(db: &PgPool) -> CoreResult<Vec<(String, Uuid, i64, chrono::DateTime<chrono::Utc>)>> {
    Ok(sqlx::query_as("select name, holder, token, expires_at from leases where expires_at > clock_timestamp() order by name")
        .fetch_all(db)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;
    use sqlx::Acquire;

    const TTL: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_new_token_per_acquisition() {
        let db = TestDb::new().await;
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let la = acquire(&db.pool, "job", a, TTL).await.unwrap().expect("free lease taken");
        assert_eq!(la.token, 1);
        assert!(acquire(&db.pool, "job", b, TTL).await.unwrap().is_none(), "held by a");
        // The holder re-acquiring is a renewal: same token.
        assert_eq!(acquire(&db.pool, "job", a, TTL).await.unwrap().unwrap().token, 1);
        release(&db.pool, &la).await.unwrap();
        let lb = acquire(&db.pool, "job", b, TTL).await.unwrap().expect("released lease taken");
        assert_eq!(lb.token, 2);
        assert_eq!(holder(&db.pool, "job").await.unwrap(), Some(LeaseHolder { holder: b, token: 2 }));
        // a's stale release does not free b's holding.
        release(&db.pool, &la).await.unwrap();
        assert_eq!(holder(&db.pool, "job").await.unwrap().map(|h| h.holder), Some(b));
        // Other names are independent.
        assert!(acquire(&db.pool, "other", a, TTL).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_holder_that_overslept_is_fenced_off() {
        let db = TestDb::new().await;
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut la = acquire(&db.pool, "mailbox", a, Duration::from_millis(300)).await.unwrap().unwrap();
        // a is paused past its expiry; b takes over.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!la.locally_valid());
        let lb = acquire(&db.pool, "mailbox", b, TTL).await.unwrap().expect("expired lease taken");
        assert_eq!(lb.token, la.token + 1);
        // a wakes: its renewal fails and its guarded write is refused.
        assert!(!renew(&db.pool, &mut la, TTL).await.unwrap());
        let mut conn = db.pool.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        assert!(!still_held(&mut tx, "mailbox", la.token).await.unwrap());
        tx.rollback().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        assert!(still_held(&mut tx, "mailbox", lb.token).await.unwrap());
        tx.commit().await.unwrap();
        // a expired even with nobody taking over: coming back is a new holding.
        let mut lc = acquire(&db.pool, "solo", a, Duration::from_millis(200)).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!renew(&db.pool, &mut lc, TTL).await.unwrap());
        assert_eq!(acquire(&db.pool, "solo", a, TTL).await.unwrap().unwrap().token, lc.token + 1);
    }

    #[tokio::test]
    async fn an_acquisition_waits_for_a_fenced_write_in_flight() {
        let db = TestDb::new().await;
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        sqlx::query("create table fenced_writes (token bigint)").execute(&db.pool).await.unwrap();
        let la = acquire(&db.pool, "w", a, Duration::from_millis(500)).await.unwrap().unwrap();
        let mut conn = db.pool.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        assert!(still_held(&mut tx, "w", la.token).await.unwrap());
        // While a's write transaction is open, the lease expires and b tries to take it:
        // b waits on the row lock, so a's write commits under a's token before b holds it.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let pool = db.pool.clone();
        let taker = tokio::spawn(async move { acquire(&pool, "w", b, TTL).await.unwrap() });
        // Wait (bounded) until PostgreSQL shows the acquisition blocked on the row lock.
        let mut blocked = false;
        for _ in 0..100 {
            let n: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity where datname = current_database()
                   and wait_event_type = 'Lock' and query like 'insert into leases%'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            if n > 0 {
                blocked = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(blocked && !taker.is_finished(), "the acquisition waits for the fenced write");
        sqlx::query("insert into fenced_writes values ($1)").bind(la.token).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        let lb = taker.await.unwrap().expect("taken after the write");
        assert_eq!(lb.token, la.token + 1);
    }
}
