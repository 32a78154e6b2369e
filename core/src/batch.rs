//! Group commit: requests that arrive while a batch is being written are gathered into
//! the next batch, so one transaction (one WAL flush, a handful of round trips) serves many
//! callers. Nothing waits for a timer: a lone request is written at once; under load the
//! batches grow by themselves up to `max_batch`.
//!
//! Requests are spread over lanes by a key. Requests with the same key (one conversation)
//! always share a lane, so they are written in arrival order and two lanes never contend
//! for the same rows.

use futures::future::BoxFuture;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

type Job<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// Handles one batch: returns exactly one response per request, in order.
pub type BatchHandler<Req, Resp> = Arc<dyn Fn(Vec<Req>) -> BoxFuture<'static, Vec<Resp>> + Send + Sync>;

/// A group-commit batcher. The lane tasks start on first use (inside the runtime) and end
/// when the batcher is dropped.
pub struct Batcher<Req, Resp> {
    lanes: usize,
    max_batch: usize,
    handler: BatchHandler<Req, Resp>,
    senders: OnceLock<Vec<mpsc::Sender<Job<Req, Resp>>>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// A batcher with `lanes` concurrent writers, each writing up to `max_batch` requests
    /// per batch.
    pub fn new(lanes: usize, max_batch: usize, handler: BatchHandler<Req, Resp>) -> Self {
        Batcher { lanes: lanes.max(1), max_batch: max_batch.max(1), handler, senders: OnceLock::new() }
    }

    fn senders(&self) -> &[mpsc::Sender<Job<Req, Resp>>] {
        self.senders.get_or_init(|| {
            (0..self.lanes)
                .map(|_| {
                    // Bounded: a flood of callers waits here instead of growing memory.
                    let (tx, rx) = mpsc::channel(self.max_batch * 8);
                    tokio::spawn(run_lane(rx, self.max_batch, self.handler.clone()));
                    tx
                })
                .collect()
        })
    }

    /// Submits a request on the lane of `key` and waits for its batch to be written.
    /// `None` when the lane's task is gone (runtime shutting down, handler panicked).
    pub async fn submit(&self, key: &impl Hash, req: Req) -> Option<Resp> {
        let senders = self.senders();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let lane = &senders[(h.finish() % senders.len() as u64) as usize];
        let (tx, rx) = oneshot::channel();
        lane.send((req, tx)).await.ok()?;
        rx.await.ok()
    }
}

async fn run_lane<Req, Resp>(mut rx: mpsc::Receiver<Job<Req, Resp>>, max_batch: usize, handler: BatchHandler<Req, Resp>) {
    let mut reqs = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    while let Some((req, reply)) = rx.recv().await {
        reqs.push(req);
        replies.push(reply);
        while reqs.len() < max_batch {
            match rx.try_recv() {
                Ok((req, reply)) => {
                    reqs.push(req);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let resps = handler(std::mem::take(&mut reqs)).await;
        debug_assert_eq!(resps.len(), replies.len(), "a batch handler must answer every request");
        for (reply, resp) in replies.drain(..).zip(resps) {
            // The caller may have gone away (request cancelled): its item is written anyway
            // and a resend is deduplicated.
            let _ = reply.send(resp);
        }
        // Unanswered callers (a short response vector) see their channel closed.
        replies.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[tokio::test]
    async fn batches_grow_under_load_and_keep_per_key_order() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::<(u32, u32)>::new()));
        let (s2, seen2) = (sizes.clone(), seen.clone());
        let b: Arc<Batcher<(u32, u32), u32>> = Arc::new(Batcher::new(
            2,
            16,
            Arc::new(move |reqs: Vec<(u32, u32)>| {
                let (sizes, seen) = (s2.clone(), seen2.clone());
                Box::pin(async move {
                    sizes.lock().unwrap().push(reqs.len());
                    tokio::task::yield_now().await;
                    seen.lock().unwrap().extend(reqs.iter().copied());
                    reqs.iter().map(|(_, v)| v * 2).collect()
                })
            }),
        ));
        let mut tasks = Vec::new();
        for key in 0..8u32 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for v in 0..50u32 {
                    out.push(b.submit(&key, (key, v)).await.unwrap());
                }
                out
            }));
        }
        for t in tasks {
            let out = t.await.unwrap();
            assert_eq!(out, (0..50).map(|v| v * 2).collect::<Vec<_>>());
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 400);
        for key in 0..8u32 {
            let vs: Vec<u32> = seen.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect();
            assert_eq!(vs, (0..50).collect::<Vec<_>>(), "per-key order kept");
        }
        assert!(sizes.lock().unwrap().iter().any(|n| *n > 1), "concurrent requests shared a batch");
    }

    #[tokio::test]
    async fn a_short_answer_closes_the_unanswered_callers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c2 = calls.clone();
        let b: Batcher<u8, u8> = Batcher::new(
            1,
            4,
            Arc::new(move |_reqs: Vec<u8>| {
                c2.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Vec::new() })
            }),
        );
        assert_eq!(b.submit(&1, 1).await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
