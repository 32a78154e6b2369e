//! Which widget sockets this node holds, per conversation, and which interaction each
//! conversation currently has: the fan-out point for agent replies and hub events.
//! Pushes never block: a socket whose queue is full is dropped from the registry (its
//! task then closes it and the widget resumes from its last seq on reconnect).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Frames queued per socket before it counts as too slow.
pub const SOCKET_QUEUE: usize = 256;

/// Something to send to a socket.
#[derive(Debug, Clone)]
pub enum Push {
    /// A transcript entry with its seq (the socket's cursor decides).
    Entry {
        /// Sequence number.
        seq: i64,
        /// Encoded `message` frame.
        text: Arc<str>,
    },
    /// Any other frame.
    Frame(Arc<str>),
    /// Read the transcript after the socket's cursor from the database (a delivery
    /// happened on another node).
    CatchUp,
}

/// What this node knows of a conversation's current interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentInteraction {
    /// Interaction id.
    pub id: Uuid,
    /// Its queue.
    pub queue_id: Option<Uuid>,
    /// Whether it is waiting in the queue (queued or offered).
    pub waiting: bool,
}

#[derive(Default)]
struct Conversation {
    sockets: Vec<(u64, mpsc::Sender<Push>)>,
    interaction: Option<CurrentInteraction>,
    last_queue_frame: Option<(i64, Option<i64>)>,
}

#[derive(Default)]
struct Inner {
    conversations: HashMap<Uuid, Conversation>,
    by_interaction: HashMap<Uuid, Uuid>,
    next_id: u64,
}

/// The per-node socket registry.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a socket; returns its id and the queue it reads.
    pub fn register(&self, conversation: Uuid) -> (u64, mpsc::Receiver<Push>) {
        let (tx, rx) = mpsc::channel(SOCKET_QUEUE);
        let mut g = self.lock();
        g.next_id += 1;
        let id = g.next_id;
        g.conversations.entry(conversation).or_default().sockets.push((id, tx));
        (id, rx)
    }

    /// Removes a socket; forgets the conversation with its last socket.
    pub fn unregister(&self, conversation: Uuid, socket: u64) {
        let mut g = self.lock();
        let empty = match g.conversations.get_mut(&conversation) {
            Some(c) => {
                c.sockets.retain(|(id, _)| *id != socket);
                c.sockets.is_empty()
            }
            None => false,
        };
        if empty {
            if let Some(c) = g.conversations.remove(&conversation) {
                if let Some(i) = c.interaction {
                    g.by_interaction.remove(&i.id);
                }
            }
        }
    }

    /// Queues a push to every socket of a conversation; returns how many took it.
    pub fn push(&self, conversation: Uuid, p: Push) -> usize {
        let mut g = self.lock();
        let Some(c) = g.conversations.get_mut(&conversation) else { return 0 };
        let mut n = 0;
        c.sockets.retain(|(_, tx)| match tx.try_send(p.clone()) {
            Ok(()) => {
                n += 1;
                true
            }
            // Full: too slow; dropping the sender makes its socket close and resume later.
            Err(_) => false,
        });
        n
    }

    /// Records the conversation's current interaction (no-op without local sockets).
    pub fn set_interaction(&self, conversation: Uuid, i: CurrentInteraction) {
        let mut g = self.lock();
        let Some(c) = g.conversations.get_mut(&conversation) else { return };
        let old = c.interaction.replace(i);
        if old.map(|o| o.id) != Some(i.id) {
            c.last_queue_frame = None;
        }
        if let Some(o) = old {
            if o.id != i.id {
                g.by_interaction.remove(&o.id);
            }
        }
        g.by_interaction.insert(i.id, conversation);
    }

    /// Marks whether the interaction is waiting.
    pub fn set_waiting(&self, interaction: Uuid, waiting: bool) {
        let mut g = self.lock();
        let Some(conv) = g.by_interaction.get(&interaction).copied() else { return };
        if let Some(c) = g.conversations.get_mut(&conv) {
            if let Some(i) = c.interaction.as_mut() {
                i.waiting = waiting;
            }
            if !waiting {
                c.last_queue_frame = None;
            }
        }
    }

    /// Moves the interaction to another queue (transfer).
    pub fn set_queue(&self, interaction: Uuid, queue: Option<Uuid>) {
        let mut g = self.lock();
        let Some(conv) = g.by_interaction.get(&interaction).copied() else { return };
        if let Some(i) = g.conversations.get_mut(&conv).and_then(|c| c.interaction.as_mut()) {
            i.queue_id = queue;
        }
    }

    /// The local conversation of an interaction.
    pub fn conversation_of(&self, interaction: Uuid) -> Option<Uuid> {
        self.lock().by_interaction.get(&interaction).copied()
    }

    /// Whether this node holds sockets of the conversation.
    pub fn has_conversation(&self, conversation: Uuid) -> bool {
        self.lock().conversations.contains_key(&conversation)
    }

    /// The current interaction of a local conversation.
    pub fn interaction_of(&self, conversation: Uuid) -> Option<CurrentInteraction> {
        self.lock().conversations.get(&conversation).and_then(|c| c.interaction)
    }

    /// Local conversations waiting in a queue: (conversation, interaction).
    pub fn waiting_in(&self, queue: Uuid) -> Vec<(Uuid, Uuid)> {
        self.lock()
            .conversations
            .iter()
            .filter_map(|(conv, c)| c.interaction.filter(|i| i.waiting && i.queue_id == Some(queue)).map(|i| (*conv, i.id)))
            .collect()
    }

    /// Queues with local waiting conversations.
    pub fn queues_with_waiting(&self) -> Vec<Uuid> {
        let mut v: Vec<Uuid> =
            self.lock().conversations.values().filter_map(|c| c.interaction.filter(|i| i.waiting).and_then(|i| i.queue_id)).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Remembers the last queue frame; true when it changed (and should be sent).
    pub fn queue_frame_changed(&self, conversation: Uuid, frame: (i64, Option<i64>)) -> bool {
        let mut g = self.lock();
        let Some(c) = g.conversations.get_mut(&conversation) else { return false };
        if c.last_queue_frame == Some(frame) {
            false
        } else {
            c.last_queue_frame = Some(frame);
            true
        }
    }

    /// Sockets held.
    pub fn socket_count(&self) -> usize {
        self.lock().conversations.values().map(|c| c.sockets.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_reaches_every_socket_of_the_conversation() {
        let r = Registry::default();
        let (c1, c2) = (Uuid::new_v4(), Uuid::new_v4());
        let (a, mut ra) = r.register(c1);
        let (_b, mut rb) = r.register(c1);
        let (_c, mut rc) = r.register(c2);
        assert_eq!(r.push(c1, Push::Frame("x".into())), 2);
        assert!(matches!(ra.try_recv(), Ok(Push::Frame(t)) if &*t == "x"));
        assert!(rb.try_recv().is_ok());
        assert!(rc.try_recv().is_err());
        r.unregister(c1, a);
        assert_eq!(r.push(c1, Push::CatchUp), 1);
        assert_eq!(r.socket_count(), 2);
    }

    #[test]
    fn interactions_map_and_queue_frames() {
        let r = Registry::default();
        let conv = Uuid::new_v4();
        let (i, q) = (Uuid::new_v4(), Uuid::new_v4());
        // Unknown conversation: ignored.
        r.set_interaction(conv, CurrentInteraction { id: i, queue_id: Some(q), waiting: true });
        assert_eq!(r.conversation_of(i), None);
        let (s, _rx) = r.register(conv);
        r.set_interaction(conv, CurrentInteraction { id: i, queue_id: Some(q), waiting: true });
        assert_eq!(r.conversation_of(i), Some(conv));
        assert_eq!(r.waiting_in(q), vec![(conv, i)]);
        assert_eq!(r.queues_with_waiting(), vec![q]);
        assert!(r.queue_frame_changed(conv, (2, Some(60))));
        assert!(!r.queue_frame_changed(conv, (2, Some(60))));
        assert!(r.queue_frame_changed(conv, (1, Some(30))));
        r.set_waiting(i, false);
        assert!(r.waiting_in(q).is_empty());
        // A new interaction replaces the old mapping.
        let i2 = Uuid::new_v4();
        r.set_interaction(conv, CurrentInteraction { id: i2, queue_id: None, waiting: true });
        assert_eq!(r.conversation_of(i), None);
        assert_eq!(r.conversation_of(i2), Some(conv));
        r.unregister(conv, s);
        assert_eq!(r.conversation_of(i2), None);
        assert!(!r.has_conversation(conv));
    }

    #[test]
    fn a_full_socket_is_dropped() {
        let r = Registry::default();
        let conv = Uuid::new_v4();
        let (_s, mut rx) = r.register(conv);
        for _ in 0..SOCKET_QUEUE {
            assert_eq!(r.push(conv, Push::CatchUp), 1);
        }
        assert_eq!(r.push(conv, Push::CatchUp), 0);
        assert_eq!(r.socket_count(), 0);
        // The socket drains what it had, then sees the end.
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, SOCKET_QUEUE);
        assert!(matches!(rx.try_recv(), Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)));
    }
}
