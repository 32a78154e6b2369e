//! A message that another node delivers (`AdapterError::Elsewhere`: the channel's one
//! connection, an SMPP bind, is leased to another node) is handed back to the outbox
//! uncounted: claims by nodes that cannot send it never use up its attempts. The cluster
//! drills found agents' SMS replies failing for good after `max_attempts` claims by the two
//! nodes that did not hold the bind, and the others waiting through a doubling backoff.
//! And a node that knows it cannot deliver a channel now (`ChannelAdapter::delivers_here`)
//! does not claim its rows in the first place.

mod support;

use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use support::*;
use switchboard_core::outbox::{self, NewOutbound};
use switchboard_core::{AdapterError, Channel, ChannelAdapter, DeliveryReceipt, Hub, Outbound, Shutdown};

/// Answers `Elsewhere` to the first `elsewhere` deliveries, then sends.
struct NotHereYet {
    elsewhere: u32,
    calls: AtomicU32,
}

#[async_trait]
impl ChannelAdapter for NotHereYet {
    fn channel(&self) -> Channel {
        Channel::Sms
    }
    fn name(&self) -> &str {
        "not-here-yet"
    }
    async fn run(&self, _hub: Hub, mut shutdown: Shutdown) -> Result<(), AdapterError> {
        shutdown.wait().await;
        Ok(())
    }
    async fn deliver(&self, msg: &Outbound) -> Result<DeliveryReceipt, AdapterError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.elsewhere {
            return Err(AdapterError::Elsewhere("the bind is held by another node".into()));
        }
        Ok(DeliveryReceipt { provider_id: Some(format!("sent-{}", msg.id)) })
    }
}

/// Sends everything; `here` says whether this node may deliver its channel now (the SMPP
/// adapter answers whether it holds the bind lease).
struct Leased {
    channel: Channel,
    here: AtomicBool,
    calls: AtomicU32,
}

#[async_trait]
impl ChannelAdapter for Leased {
    fn channel(&self) -> Channel {
        self.channel
    }
    fn name(&self) -> &str {
        self.channel.as_str()
    }
    async fn run(&self, _hub: Hub, mut shutdown: Shutdown) -> Result<(), AdapterError> {
        shutdown.wait().await;
        Ok(())
    }
    fn delivers_here(&self) -> bool {
        self.here.load(Ordering::SeqCst)
    }
    async fn deliver(&self, msg: &Outbound) -> Result<DeliveryReceipt, AdapterError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(DeliveryReceipt { provider_id: Some(format!("sent-{}", msg.id)) })
    }
}

fn message(key: String, channel: Channel) -> NewOutbound {
    NewOutbound {
        idempotency_key: key,
        channel,
        interaction_id: None,
        message_id: None,
        recipient: "+4915100000001".into(),
        subject: None,
        body: "answer".into(),
        metadata: serde_json::json!({}),
    }
}

async fn statuses(pool: &sqlx::PgPool, channel: Channel) -> Vec<(String, i32)> {
    sqlx::query_as("select status, attempts from outbox where channel = $1 order by idempotency_key")
        .bind(channel.as_str())
        .fetch_all(pool)
        .await
        .unwrap()
}

/// A node whose SMS adapter delivers elsewhere (another node holds the bind) does not claim
/// SMS rows at all, even with hundreds of them due ahead of an email it can send; once the
/// bind is its own it sends them, each on its first attempt.
#[tokio::test]
async fn a_node_does_not_claim_rows_of_a_channel_it_cannot_deliver_now() {
    let th = spawn_hub().await;
    let sms = Arc::new(Leased { channel: Channel::Sms, here: AtomicBool::new(false), calls: AtomicU32::new(0) });
    let email = Arc::new(Leased { channel: Channel::Email, here: AtomicBool::new(true), calls: AtomicU32::new(0) });
    th.hub().add_adapter(sms.clone());
    th.hub().add_adapter(email.clone());
    // 300 SMS due first (more than a claim batch), then one email.
    let mut tx = th.db.pool.begin().await.unwrap();
    let texts: Vec<NewOutbound> = (0..300).map(|n| message(format!("sms:{n:03}"), Channel::Sms)).collect();
    outbox::enqueue_many_tx(&mut tx, &texts).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = th.db.pool.begin().await.unwrap();
    outbox::enqueue_tx(&mut tx, message("email:1".into(), Channel::Email)).await.unwrap();
    tx.commit().await.unwrap();
    let pool = th.db.pool.clone();
    eventually(30, || {
        let pool = pool.clone();
        async move { (statuses(&pool, Channel::Email).await == [("sent".to_string(), 1)]).then_some(()) }
    })
    .await;
    // The email went out past 300 due SMS rows, none of which was claimed or attempted.
    assert_eq!(sms.calls.load(Ordering::SeqCst), 0);
    let untouched = statuses(&pool, Channel::Sms).await;
    assert_eq!(untouched.len(), 300);
    assert!(untouched.iter().all(|(st, attempts)| st == "pending" && *attempts == 0), "{untouched:?}");
    // The bind is ours now: every SMS goes out, each on its first attempt.
    sms.here.store(true, Ordering::SeqCst);
    eventually(30, || {
        let pool = pool.clone();
        async move { statuses(&pool, Channel::Sms).await.iter().all(|(st, a)| st == "sent" && *a == 1).then_some(()) }
    })
    .await;
    assert_eq!(sms.calls.load(Ordering::SeqCst), 300);
    th.stop().await;
}

#[tokio::test]
async fn claims_by_a_node_that_cannot_send_do_not_use_up_attempts() {
    let th = spawn_hub().await;
    // More hand-backs than `outbox.max_attempts` (8): counted, they would fail it for good.
    let adapter = Arc::new(NotHereYet { elsewhere: 12, calls: AtomicU32::new(0) });
    th.hub().add_adapter(adapter.clone());
    let mut tx = th.db.pool.begin().await.unwrap();
    outbox::enqueue_tx(&mut tx, message("reply:elsewhere".into(), Channel::Sms)).await.unwrap();
    tx.commit().await.unwrap();
    let (status, attempts, provider): (String, i32, Option<String>) = eventually(30, || {
        let pool = th.db.pool.clone();
        async move {
            let r: (String, i32, Option<String>) =
                sqlx::query_as("select status, attempts, provider_id from outbox").fetch_one(&pool).await.unwrap();
            (r.0 != "pending" && r.0 != "sending").then_some(r)
        }
    })
    .await;
    assert_eq!(status, "sent");
    assert_eq!(attempts, 1, "only the attempt that could send counts");
    assert!(provider.is_some_and(|p| p.starts_with("sent-")));
    assert_eq!(adapter.calls.load(Ordering::SeqCst), 13);
    th.stop().await;
}
