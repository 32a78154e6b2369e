//! Test support: an in-memory `CallRouting` (a stand-in for core) and a scripted SIP
//! phone on a real UDP socket.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_voice::call::{CallInfo, CallOutcome, CallRouting, CallTicket, RoutingError};
use switchboard_voice::sip::message::{parse, HeaderLookup};
use switchboard_voice::sip::SipMessage;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// What the routing double saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Enqueued(CallInfo),
    Abandoned(String),
    Event(String, CallOutcome),
    Voicemail(String, PathBuf),
}

/// Records every call into a channel the test awaits.
pub struct RecordingRouting {
    pub tx: mpsc::UnboundedSender<Seen>,
    /// How long core takes to apply an `Answered` (accepting the offer in the database);
    /// the event is recorded when it has been applied.
    pub answer_delay: Duration,
}

pub fn routing() -> (Arc<RecordingRouting>, mpsc::UnboundedReceiver<Seen>) {
    routing_with_answer_delay(Duration::ZERO)
}

pub fn routing_with_answer_delay(answer_delay: Duration) -> (Arc<RecordingRouting>, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(RecordingRouting { tx, answer_delay }), rx)
}

#[async_trait]
impl CallRouting for RecordingRouting {
    async fn enqueue_call(&self, call: CallInfo) -> Result<CallTicket, RoutingError> {
        let ticket = CallTicket { call_id: call.call_id.clone(), interaction_id: format!("interaction-{}", call.call_id) };
        let _ = self.tx.send(Seen::Enqueued(call));
        Ok(ticket)
    }
    async fn abandon(&self, ticket: &CallTicket) -> Result<(), RoutingError> {
        let _ = self.tx.send(Seen::Abandoned(ticket.call_id.clone()));
        Ok(())
    }
    async fn call_event(&self, ticket: &CallTicket, event: CallOutcome) -> Result<(), RoutingError> {
        if matches!(event, CallOutcome::Answered { .. }) && !self.answer_delay.is_zero() {
            tokio::time::sleep(self.answer_delay).await;
        }
        let _ = self.tx.send(Seen::Event(ticket.call_id.clone(), event));
        Ok(())
    }
    async fn voicemail(&self, call: CallInfo, recording: PathBuf) -> Result<(), RoutingError> {
        let _ = self.tx.send(Seen::Voicemail(call.call_id, recording));
        Ok(())
    }
}

pub async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("routing event within 10 s").expect("routing channel open")
}

/// A SIP phone speaking raw text over UDP.
pub struct Phone {
    pub sock: UdpSocket,
    pub hub: SocketAddr,
}

impl Phone {
    pub async fn new(hub: SocketAddr) -> Self {
        Self { sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(), hub }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    pub async fn send(&self, text: &str) {
        self.sock.send_to(text.as_bytes(), self.hub).await.unwrap();
    }

    /// Waits for a message matching `pred` (others, e.g. retransmissions, are skipped).
    pub async fn expect(&self, what: &str, pred: impl Fn(&SipMessage) -> bool) -> (SipMessage, String) {
        let mut buf = vec![0u8; 65_536];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (n, _) = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Ok((msg, _)) = parse(&buf[..n], 65_535) {
                if pred(&msg) {
                    return (msg, text);
                }
            }
        }
    }
}

pub fn status(msg: &SipMessage) -> Option<u16> {
    match msg {
        SipMessage::Response(r) => Some(r.status_code.code()),
        SipMessage::Request(_) => None,
    }
}

pub fn method(msg: &SipMessage) -> Option<String> {
    match msg {
        SipMessage::Request(r) => Some(r.method.to_string()),
        SipMessage::Response(_) => None,
    }
}

pub fn header(msg: &SipMessage, name: &str) -> String {
    msg.value_of(name).unwrap_or_default().to_string()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("sbv-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&p).unwrap();
    p
}
