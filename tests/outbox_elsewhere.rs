//! A message that another node delivers (`AdapterError::Elsewhere`: the channel's one
//! connection, an SMPP bind, is leased to another node) is handed back to the outbox
//! uncounted: claims by nodes that cannot send it never use up its attempts. The cluster
//! drills found agents' SMS replies failing for good after `max_attempts` claims by the two
//! nodes that did not hold the bind, and the others waiting through a doubling backoff.

mod support;

use async_trait::async_trait;
use std::sync::atomic::{AtomicU32, Ordering};
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

#[tokio::test]
async fn claims_by_a_node_that_cannot_send_do_not_use_up_attempts() {
    let th = spawn_hub().await;
    // More hand-backs than `outbox.max_attempts` (8): counted, they would fail it for good.
    let adapter = Arc::new(NotHereYet { elsewhere: 12, calls: AtomicU32::new(0) });
    th.hub().add_adapter(adapter.clone());
    let mut tx = th.db.pool.begin().await.unwrap();
    outbox::enqueue_tx(
        &mut tx,
        NewOutbound {
            idempotency_key: "reply:elsewhere".into(),
            channel: Channel::Sms,
            interaction_id: None,
            message_id: None,
            recipient: "+4915100000001".into(),
            subject: None,
            body: "answer".into(),
            metadata: serde_json::json!({}),
        },
    )
    .await
    .unwrap();
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
