//! The email adapter: the mailbox worker (lease → connect → import → IDLE or poll) and
//! the processing of one stored raw message (parse → classify → thread → attachments →
//! `hub.ingest`), and delivery of replies over SMTP through the outbox.

use crate::compose::{self, OutgoingMail};
use crate::config::{AfterImport, EmailConfig};
use crate::imap::{self, ImapSession};
use crate::loops::{self, MailKind};
use crate::parse::{self, ParsedMail};
use crate::smtp::{self, SendOutcome, SmtpTransport};
use crate::store;
use crate::threading::{self, ThreadCandidates, ThreadedBy};
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use switchboard_core::adapter::{AdapterError, ChannelAdapter, DeliveryReceipt, Outbound, Shutdown};
use switchboard_core::{Channel, CoreError, CustomerHints, Hub, InboundItem};
use uuid::Uuid;

/// One configured mailbox.
pub struct EmailAdapter {
    name: String,
    cfg: EmailConfig,
    node: Uuid,
    hub: OnceLock<Hub>,
    smtp: OnceLock<Result<SmtpTransport, String>>,
}

/// What the import did with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// Routed to the hub.
    Ingested,
    /// Already imported (a second delivery, or a fetch repeated after a restart).
    Duplicate,
    /// A bounce: our outbound message was marked failed.
    Bounce,
    /// Stored only: the sender exceeded the rate limit.
    RateLimited,
    /// Could not be parsed: stored raw, routed as an interaction saying so.
    Unparseable,
}

fn core_err(e: CoreError) -> AdapterError {
    AdapterError::Temporary(e.to_string())
}

impl EmailAdapter {
    /// A new adapter.
    pub fn new(name: String, cfg: EmailConfig) -> Self {
        EmailAdapter { name, cfg, node: Uuid::new_v4(), hub: OnceLock::new(), smtp: OnceLock::new() }
    }

    /// The instance (mailbox) name.
    pub fn mailbox(&self) -> &str {
        &self.name
    }

    /// This node's id for leases.
    pub fn node_id(&self) -> Uuid {
        self.node
    }

    /// Settings.
    pub fn config(&self) -> &EmailConfig {
        &self.cfg
    }

    fn attachments(&self, hub: &Hub) -> std::sync::Arc<dyn switchboard_core::files::FileStore> {
        crate::attachment_store(hub, self.cfg.attachments_dir.as_deref())
    }

    fn transport(&self) -> Result<&SmtpTransport, AdapterError> {
        self.smtp.get_or_init(|| smtp::transport(&self.cfg.smtp)).as_ref().map_err(|e| AdapterError::Config(format!("smtp: {e}")))
    }

    // ---------------------------------------------------------------- inbound

    /// Stores one fetched message raw (first of all), then processes it unless it was
    /// processed already.
    pub async fn import(&self, hub: &Hub, uid_validity: u32, uid: u32, raw: &[u8]) -> Result<Imported, CoreError> {
        let mid = parse::quick_message_id(raw);
        let dedupe = parse::dedupe_id(mid.as_deref(), raw);
        let sender = quick_sender(raw);
        let (id, fresh, status) = store::store_raw(hub.db(), &self.name, &dedupe, uid_validity, uid, sender.as_deref(), raw).await?;
        if !fresh && status != "stored" {
            return Ok(Imported::Duplicate);
        }
        self.process(hub, id, &dedupe, raw, fresh).await
    }

    /// Imports a fetched batch: independent messages concurrently (up to
    /// [`IMPORT_CONCURRENCY`]); a message that may continue a conversation (threading
    /// headers, a token, a subject tag) or comes from a sender already in flight waits
    /// until everything before it is committed, so it finds what it replies to. Returns the
    /// UIDs imported, ascending; on a failure, the ones before it.
    pub async fn import_batch(&self, hub: &Hub, uid_validity: u32, fetched: &[(u32, Vec<u8>)]) -> Vec<u32> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut ok: std::collections::HashMap<u32, bool> = Default::default();
        let mut inflight = FuturesUnordered::new();
        let mut senders: std::collections::HashSet<String> = Default::default();
        for (uid, raw) in fetched {
            let sender = quick_sender(raw).unwrap_or_default();
            if needs_order(raw, &self.cfg.address) || senders.contains(&sender) || inflight.len() >= IMPORT_CONCURRENCY {
                let barrier = needs_order(raw, &self.cfg.address) || senders.contains(&sender);
                while let Some((u, r)) = inflight.next().await {
                    ok.insert(u, r);
                    if !barrier && inflight.len() < IMPORT_CONCURRENCY {
                        break;
                    }
                }
                if barrier {
                    senders.clear();
                }
            }
            senders.insert(sender);
            let uid = *uid;
            inflight.push(async move {
                match self.import(hub, uid_validity, uid, raw).await {
                    Ok(_) => (uid, true),
                    Err(e) => {
                        // Stored raw already (or not at all): either way the checkpoint stays
                        // before it and the next pass tries again.
                        tracing::warn!(mailbox = %self.name, uid, error = %e, "Import failed; will retry.");
                        (uid, false)
                    }
                }
            });
        }
        while let Some((u, r)) = inflight.next().await {
            ok.insert(u, r);
        }
        fetched.iter().map(|(u, _)| *u).take_while(|u| ok.get(u).copied().unwrap_or(false)).collect()
    }

    /// Processes raw messages stored but never finished (the node stopped between the
    /// store and the hub commit).
    pub async fn recover(&self, hub: &Hub) -> Result<usize, CoreError> {
        let rows = store::unprocessed(hub.db(), &self.name, 1000).await?;
        let n = rows.len();
        for r in rows {
            let mid = parse::quick_message_id(&r.raw);
            let dedupe = parse::dedupe_id(mid.as_deref(), &r.raw);
            self.process(hub, r.id, &dedupe, &r.raw, false).await?;
        }
        Ok(n)
    }

    /// Parse → classify → thread → attachments → ingest → record. Safe to run again for
    /// the same message: every step is keyed by the message.
    async fn process(&self, hub: &Hub, raw_id: Uuid, dedupe: &str, raw: &[u8], fresh: bool) -> Result<Imported, CoreError> {
        let db = hub.db();
        let dedupe_key = format!("{}:{dedupe}", self.name);
        let parsed = if raw.len() > self.cfg.max_message_bytes { None } else { parse::parse(raw, self.cfg.attachment_max_bytes) };
        let Some(p) = parsed else {
            // Never lost: the raw bytes are stored; the agent sees that something came.
            let from = quick_sender(raw).unwrap_or_else(|| "unknown@invalid".into());
            let why = if raw.len() > self.cfg.max_message_bytes {
                format!(
                    "This email ({} bytes) is larger than the {} byte limit; it is stored unchanged.",
                    raw.len(),
                    self.cfg.max_message_bytes
                )
            } else {
                "This email could not be read (malformed MIME); it is stored unchanged.".to_string()
            };
            let token = threading::token_from_seed(format!("{}:{dedupe}", self.name).as_bytes());
            store::create_thread(db, &token, &self.name, Some(&from), "").await?;
            let item = InboundItem {
                channel: Some(Channel::Email),
                dedupe_key,
                conversation_key: Some(format!("email:{token}")),
                from: from.clone(),
                to: Some(self.cfg.address.clone()),
                subject: Some("(unreadable email)".into()),
                body: why.clone(),
                queue: self.cfg.queue.clone(),
                metadata: Some(
                    serde_json::json!({ "email": { "mailbox": self.name, "token": token, "raw_id": raw_id, "unparseable": true } }),
                ),
                ..Default::default()
            };
            let o = hub.ingest(item).await?;
            store::finish_raw(db, raw_id, "unparseable", None, None, Some(o.interaction_id), o.message_id, Some(&why)).await?;
            return Ok(Imported::Unparseable);
        };
        let kind = loops::classify(&p, &self.cfg.address);
        if kind == MailKind::Bounce {
            let report = p.report.clone().unwrap_or_default();
            let diag = report.diagnostic.clone().or(report.status.clone()).unwrap_or_else(|| "delivery failed".into());
            let mut marked = None;
            if report.is_failure() {
                if let Some(orig) = &report.original_message_id {
                    marked = store::mark_bounced(db, orig, &diag).await?;
                }
            }
            tracing::info!(mailbox = %self.name, original = ?report.original_message_id, ours = marked.is_some(), "Bounce received.");
            store::finish_raw(db, raw_id, "bounce", Some(kind.as_str()), None, marked.and_then(|m| m.1), None, Some(&diag)).await?;
            return Ok(Imported::Bounce);
        }
        let sender = p.from.as_ref().map(|f| f.address.clone()).unwrap_or_else(|| "unknown@invalid".into());
        let recent = store::recent_from_sender(db, &self.name, &sender).await?;
        if !loops::within_rate(recent, self.cfg.sender_rate_per_hour) {
            tracing::warn!(mailbox = %self.name, %sender, recent, "Sender over the hourly limit; mail stored, not routed.");
            store::finish_raw(db, raw_id, "rate_limited", Some(kind.as_str()), None, None, None, Some("sender rate limit")).await?;
            return Ok(Imported::RateLimited);
        }

        let (token, threaded_by) = self.thread_of(hub, &p, &sender, dedupe).await?;
        let attachments = self.keep_attachments(hub, raw_id, &p, fresh).await?;
        let body = if p.visible_text.trim().is_empty() {
            if p.calendar {
                "(calendar invitation)".to_string()
            } else if !p.attachments.is_empty() {
                "(no text; see attachments)".to_string()
            } else {
                "(empty email)".to_string()
            }
        } else {
            p.visible_text.clone()
        };
        let item = InboundItem {
            channel: Some(Channel::Email),
            dedupe_key,
            conversation_key: Some(format!("email:{token}")),
            from: sender.clone(),
            to: Some(self.cfg.address.clone()),
            hints: CustomerHints {
                display_name: p.from.as_ref().and_then(|f| f.name.clone()),
                email: Some(sender.clone()),
                language: None,
            },
            subject: Some(if p.subject.is_empty() { "(no subject)".into() } else { p.subject.clone() }),
            body,
            content_type: Some("text/plain".into()),
            attachments: Some(serde_json::Value::Array(attachments)),
            queue: self.cfg.queue.clone(),
            metadata: Some(serde_json::json!({ "email": {
                "mailbox": self.name, "token": token, "raw_id": raw_id,
                "from": p.from, "to": p.to, "cc": p.cc, "subject": p.subject, "message_id": p.message_id, "kind": kind.as_str(),
            }})),
            ..Default::default()
        };
        let o = hub.ingest(item).await?;
        let cc = self.customer_cc(&p, &sender);
        let new_thread = (threaded_by == ThreadedBy::New).then(|| (sender.as_str(), parse::base_subject(&p.subject)));
        store::record_ingested(
            db,
            &store::IngestedMail {
                mailbox: &self.name,
                raw_id,
                token: &token,
                new_thread: new_thread.as_ref().map(|(s, b)| (*s, b.as_str())),
                message_id: p.message_id.as_deref(),
                cc: &cc,
                kind: kind.as_str(),
                threaded_by: threaded_by.as_str(),
                interaction: o.interaction_id,
                message: o.message_id,
            },
        )
        .await?;
        if o.created && !o.duplicate && kind.may_auto_reply() {
            if let Some(text) = &self.cfg.auto_acknowledge {
                self.acknowledge(hub, raw_id, o.interaction_id, &token, &sender, &p.subject, text).await?;
            }
        }
        Ok(if o.duplicate { Imported::Duplicate } else { Imported::Ingested })
    }

    /// The conversation a mail joins, or a new one.
    async fn thread_of(&self, hub: &Hub, p: &ParsedMail, sender: &str, dedupe: &str) -> Result<(String, ThreadedBy), CoreError> {
        let db = hub.db();
        let candidates = ThreadCandidates::of(p, &self.cfg.address);
        if let Some(found) = store::find_thread(db, &self.name, &candidates).await? {
            return Ok(found);
        }
        let base = parse::base_subject(&p.subject);
        if let Some(t) = store::open_thread_of_sender(db, &self.name, sender, &base).await? {
            return Ok((t, ThreadedBy::SenderSubject));
        }
        // Created with the message's bookkeeping after the ingest (one commit); the token
        // comes from the message, so processing it again finds the same conversation.
        Ok((threading::token_from_seed(format!("{}:{dedupe}", self.name).as_bytes()), ThreadedBy::New))
    }

    /// Cc'd addresses that are customers (not this mailbox, not the sender).
    fn customer_cc(&self, p: &ParsedMail, sender: &str) -> Vec<String> {
        p.cc.iter()
            .chain(p.to.iter())
            .map(|m| m.address.to_ascii_lowercase())
            .filter(|a| {
                a != sender && !a.eq_ignore_ascii_case(&self.cfg.address) && threading::token_in_address(a, &self.cfg.address).is_none()
            })
            .collect()
    }

    /// Writes attachment files (under their SHA-256 in the attachment store) and their rows; returns the descriptors
    /// kept on the message.
    async fn keep_attachments(&self, hub: &Hub, raw_id: Uuid, p: &ParsedMail, fresh: bool) -> Result<Vec<serde_json::Value>, CoreError> {
        if !fresh {
            // Processed before (a restart): its earlier rows go, the new ones replace them.
            store::clear_attachments(hub.db(), raw_id).await?;
        }
        if p.attachments.is_empty() {
            return Ok(Vec::new());
        }
        let files = self.attachments(hub);
        let mut out = Vec::with_capacity(p.attachments.len());
        for a in &p.attachments {
            let mut stored = false;
            if let Some(data) = &a.data {
                if !files.exists(&a.sha256).await? {
                    files.put(&a.sha256, data.clone().into()).await?;
                }
                stored = true;
            }
            let id = store::add_attachment(
                hub.db(),
                raw_id,
                &a.sha256,
                a.size,
                &a.content_type,
                &a.filename,
                a.content_id.as_deref(),
                a.inline,
                stored,
            )
            .await?;
            out.push(serde_json::json!({
                "id": id, "filename": a.filename, "content_type": a.content_type, "size": a.size, "sha256": a.sha256,
                "inline": a.inline, "content_id": a.content_id, "stored": stored,
                "url": format!("{}/attachments/{id}", crate::http::base(&self.name)),
            }));
        }
        Ok(out)
    }

    /// Queues the automatic acknowledgement of a new conversation (never to automatic or
    /// bulk mail, at most one per sender per hour).
    #[allow(clippy::too_many_arguments)]
    async fn acknowledge(
        &self,
        hub: &Hub,
        raw_id: Uuid,
        interaction: Uuid,
        token: &str,
        to: &str,
        subject: &str,
        text: &str,
    ) -> Result<(), CoreError> {
        let recent: i64 = sqlx::query_scalar(
            "select count(*) from outbox where channel = 'email' and recipient = $1 and metadata->>'automatic' = 'true'
               and metadata->>'adapter' = $2 and created_at > now() - interval '1 hour'",
        )
        .bind(to)
        .bind(&self.name)
        .fetch_one(hub.db())
        .await?;
        if recent > 0 {
            tracing::info!(mailbox = %self.name, %to, "Acknowledgement skipped: the sender had one this hour.");
            return Ok(());
        }
        let mut conn = hub.db().acquire().await?;
        switchboard_core::outbox::enqueue_tx(
            &mut conn,
            switchboard_core::outbox::NewOutbound {
                idempotency_key: format!("email-ack:{raw_id}"),
                channel: Channel::Email,
                interaction_id: Some(interaction),
                message_id: None,
                recipient: to.to_string(),
                subject: Some(if subject.to_lowercase().starts_with("re:") { subject.to_string() } else { format!("Re: {subject}") }),
                body: text.to_string(),
                metadata: serde_json::json!({ "adapter": self.name, "automatic": true, "conversation_key": format!("email:{token}") }),
            },
        )
        .await?;
        Ok(())
    }

    // ---------------------------------------------------------------- the mailbox worker

    /// Holds the mailbox lease and imports until shutdown or until the lease is lost.
    async fn hold_mailbox(&self, hub: &Hub, fence: i64, shutdown: &mut Shutdown) -> Result<(), String> {
        let lost = AtomicBool::new(false);
        // Renewal runs inside this future (not a detached task): when the node stops or
        // dies, renewing stops with it and the lease expires for another node to take.
        let renew = async {
            let secs = self.cfg.lease_secs;
            loop {
                tokio::time::sleep(Duration::from_millis(secs * 1000 / 3)).await;
                match store::renew_lease(hub.db(), &self.name, self.node, fence, secs).await {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.store(true, Ordering::SeqCst);
                        return std::future::pending::<()>().await;
                    }
                    Err(e) => tracing::warn!(mailbox = %self.name, error = %e, "Lease renewal failed."),
                }
            }
        };
        tokio::select! {
            r = self.import_loop(hub, fence, &lost, shutdown) => r,
            _ = renew => Ok(()),
        }
    }

    async fn import_loop(&self, hub: &Hub, fence: i64, lost: &AtomicBool, shutdown: &mut Shutdown) -> Result<(), String> {
        let icfg = &self.cfg.imap;
        let mut s: ImapSession = imap::connect(icfg).await.map_err(|e| e.to_string())?;
        let idle = icfg.idle && imap::has_idle(&mut s).await.map_err(|e| e.to_string())?;
        let recovered = self.recover(hub).await.map_err(|e| e.to_string())?;
        let mut sel: Option<imap::Selected> = None;
        let mut reselect = true;
        if recovered > 0 {
            tracing::info!(mailbox = %self.name, recovered, "Finished messages stored before a restart.");
        }
        loop {
            if shutdown.is_requested() || lost.load(Ordering::SeqCst) {
                let _ = s.logout().await;
                return Ok(());
            }
            // SELECT when the session starts and after each quiet wait (the safety net also
            // re-reads UIDVALIDITY); after an IDLE notification the selected state is current
            // and a re-SELECT would only cost a folder resync.
            if reselect || sel.is_none() {
                sel = Some(imap::select(&mut s, &icfg.folder).await.map_err(|e| e.to_string())?);
            }
            let Some(sel) = sel else { continue };
            let last = match store::checkpoint(hub.db(), &self.name).await.map_err(|e| e.to_string())? {
                Some((v, last)) if v == sel.uid_validity as i64 => last as u32,
                Some((v, _)) => {
                    // RFC 3501 §2.3.1.1: the UIDs changed meaning. Rescan; the Message-ID
                    // dedupe keeps every message imported once.
                    tracing::warn!(mailbox = %self.name, old = v, new = sel.uid_validity, "UIDVALIDITY changed; rescanning the folder.");
                    0
                }
                None => 0,
            };
            let uids = imap::uids_after(&mut s, last).await.map_err(|e| e.to_string())?;
            for chunk in uids.chunks(icfg.batch as usize) {
                let fetched = imap::fetch_raw(&mut s, chunk).await.map_err(|e| e.to_string())?;
                let done = self.import_batch(hub, sel.uid_validity, &fetched).await;
                // Acknowledge upstream only after the commits.
                let r = match icfg.after_import {
                    AfterImport::Seen => imap::mark_seen(&mut s, &done).await,
                    AfterImport::Move => imap::move_to(&mut s, &done, icfg.move_to.as_deref().unwrap_or("Archive")).await,
                    AfterImport::Keep => Ok(()),
                };
                if let Err(e) = r {
                    tracing::warn!(mailbox = %self.name, error = %e, "Could not flag or move imported messages.");
                }
                // The checkpoint moves to the last UID of the unbroken run that was imported.
                let upto = done.last().copied();
                if let Some(u) = upto {
                    if !store::advance_checkpoint(hub.db(), &self.name, &icfg.folder, sel.uid_validity, u, self.node, fence)
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        tracing::warn!(mailbox = %self.name, "Mailbox lease lost; stopping the import.");
                        return Ok(());
                    }
                }
                if done.len() < fetched.len() {
                    break;
                }
            }
            // Wait for new mail: IDLE (re-issued before the server's 30-minute timeout),
            // or a poll; the poll interval bounds the wait either way.
            let wait = Duration::from_secs(icfg.poll_secs.min(icfg.idle_renew_secs));
            if idle {
                let mut h = s.idle();
                h.init().await.map_err(|e| e.to_string())?;
                {
                    let (fut, _stop) = h.wait_with_timeout(wait);
                    let mut sd = shutdown.clone();
                    reselect = tokio::select! {
                        r = fut => !matches!(r.map_err(|e| e.to_string())?, async_imap::extensions::idle::IdleResponse::NewData(_)),
                        _ = sd.wait() => true,
                        _ = wait_lost(lost) => true,
                    };
                }
                s = h.done().await.map_err(|e| e.to_string())?;
            } else {
                let mut sd = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = sd.wait() => {}
                    _ = wait_lost(lost) => {}
                }
            }
        }
    }

    /// Appends a copy of a sent message to the Sent folder (best effort).
    async fn append_sent(&self, raw: Vec<u8>) {
        let Some(folder) = self.cfg.imap.sent_folder.clone() else { return };
        let r = async {
            let mut s = imap::connect(&self.cfg.imap).await?;
            imap::append(&mut s, &folder, Some("(\\Seen)"), &raw).await?;
            let _ = s.logout().await;
            Ok::<_, imap::ImapError>(())
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(mailbox = %self.name, %folder, error = %e, "Could not append the copy to the Sent folder.");
        }
    }
}

/// Reads a file an agent attached (its SHA-256 in the attachment store) and checks it still
/// has its checksum.
async fn agent_file(
    files: &dyn switchboard_core::files::FileStore,
    f: &serde_json::Value,
) -> Result<compose::OutgoingAttachment, AdapterError> {
    use sha2::{Digest, Sha256};
    let sha = f.get("sha256").and_then(|s| s.as_str()).filter(|s| crate::agent_mail::is_sha256(s));
    let sha = sha.ok_or_else(|| AdapterError::Permanent("an attachment without a valid sha256".into()))?;
    let data = match files.read(sha).await {
        Ok(Some(data)) => data.to_vec(),
        Ok(None) => return Err(AdapterError::Permanent(format!("attachment {sha} is gone"))),
        // The store is unreachable for now (an object store outage): try again later.
        Err(e) => return Err(AdapterError::Temporary(format!("attachment {sha}: {e}"))),
    };
    if hex::encode(Sha256::digest(&data)) != sha {
        return Err(AdapterError::Permanent(format!("attachment {sha} does not match its checksum")));
    }
    Ok(compose::OutgoingAttachment {
        filename: f.get("filename").and_then(|n| n.as_str()).unwrap_or("attachment").to_string(),
        content_type: f.get("content_type").and_then(|n| n.as_str()).unwrap_or("application/octet-stream").to_string(),
        data,
    })
}

async fn wait_lost(lost: &AtomicBool) {
    while !lost.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Messages imported at once from one fetched batch.
pub const IMPORT_CONCURRENCY: usize = 32;

/// Whether a message may continue a conversation (and so must be imported after the
/// messages before it).
fn needs_order(raw: &[u8], mailbox_address: &str) -> bool {
    let Some(m) = mail_parser::MessageParser::new().parse_headers(raw) else { return false };
    if !m.in_reply_to().is_empty() || !m.references().is_empty() {
        return true;
    }
    if m.subject().is_some_and(|s| threading::subject_tag(s).is_some()) {
        return true;
    }
    let local = mailbox_address.split('@').next().unwrap_or("");
    let plus = format!("{local}+");
    let has_token = |a: Option<&mail_parser::Address<'_>>| {
        a.is_some_and(|a| a.iter().any(|x| x.address.as_deref().is_some_and(|s| s.to_ascii_lowercase().starts_with(&plus))))
    };
    has_token(m.to()) || has_token(m.cc())
}

/// The From address read from the headers alone (for the raw row and unparseable mail).
fn quick_sender(raw: &[u8]) -> Option<String> {
    let m = mail_parser::MessageParser::new().parse_headers(raw)?;
    let a = m.from()?.first()?.address.as_deref()?.trim().to_ascii_lowercase();
    (a.contains('@') && a.len() <= 320).then_some(a)
}

#[async_trait]
impl ChannelAdapter for EmailAdapter {
    fn channel(&self) -> Channel {
        Channel::Email
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn personal_data_eraser(&self) -> Option<std::sync::Arc<dyn switchboard_core::privacy::PersonalDataEraser>> {
        Some(std::sync::Arc::new(crate::erase::EmailEraser { mailbox: self.name.clone(), dir: self.cfg.attachments_dir.clone() }))
    }

    /// Competes for the mailbox lease; while holding it, imports; when the connection
    /// fails, reconnects with backoff; on shutdown, gives the lease up.
    async fn run(&self, hub: Hub, mut shutdown: Shutdown) -> Result<(), AdapterError> {
        let _ = self.hub.set(hub.clone());
        hub.add_route_docs(crate::http::ROUTES);
        let mut backoff = Duration::from_secs(1);
        let retry = Duration::from_millis(self.cfg.lease_secs * 1000 / 3);
        while !shutdown.is_requested() {
            let fence = match store::acquire_lease(hub.db(), &self.name, self.node, self.cfg.lease_secs).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(mailbox = %self.name, error = %e, "Lease check failed.");
                    None
                }
            };
            let pause = match fence {
                None => retry,
                Some(fence) => {
                    tracing::info!(mailbox = %self.name, node = %self.node, fence, "Holding the mailbox.");
                    match self.hold_mailbox(&hub, fence, &mut shutdown).await {
                        Ok(()) => {
                            backoff = Duration::from_secs(1);
                            Duration::from_millis(50)
                        }
                        Err(e) => {
                            tracing::warn!(mailbox = %self.name, error = %e, retry_ms = backoff.as_millis() as u64, "Mailbox connection failed.");
                            let b = backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(60));
                            b
                        }
                    }
                }
            };
            let mut sd = shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = sd.wait() => {}
            }
        }
        let _ = store::release_lease(hub.db(), &self.name, self.node).await;
        Ok(())
    }

    fn http_router(&self) -> Option<axum::Router<Hub>> {
        Some(crate::http::router(crate::http::EmailHttp {
            mailbox: self.name.clone().into(),
            dir: self.cfg.attachments_dir.clone(),
            address: self.cfg.address.clone().into(),
            reply_attachments_max_bytes: self.cfg.reply_attachments_max_bytes,
        }))
    }

    /// Sends one reply, acknowledgement or chat offline-form answer. Exactly once towards
    /// the SMTP server: the hand-off is recorded before the transaction; an outcome that
    /// is unknown (the connection broke after the hand-off) is reported, never re-sent.
    async fn deliver(&self, msg: &Outbound) -> Result<DeliveryReceipt, AdapterError> {
        let hub = self.hub.get().cloned().ok_or_else(|| AdapterError::Temporary("email adapter not started yet".into()))?;
        let db = hub.db();
        let meta = &msg.metadata;
        let token = match meta.get("conversation_key").and_then(|k| k.as_str()).and_then(|k| k.strip_prefix("email:")) {
            Some(t) => t.to_string(),
            None => {
                // No email conversation yet (the chat widget's offline form): this message
                // starts one, so the visitor's answer threads back to it.
                let t = threading::token_from_seed(format!("outbox:{}", msg.id).as_bytes());
                let subject = msg.subject.clone().unwrap_or_default();
                store::create_thread(db, &t, &self.name, Some(&msg.recipient), &parse::base_subject(&subject)).await.map_err(core_err)?;
                t
            }
        };
        let thread = store::thread(db, &token).await.map_err(core_err)?;
        let recipient = msg.recipient.trim().to_string();
        let agent = meta.get("email");
        // A reply from the email API names its copies (reply or reply-all); any other reply
        // keeps the conversation's Cc'd customers.
        let cc: Vec<String> = match agent.and_then(|e| e.get("cc")).and_then(|c| c.as_array()) {
            Some(list) => {
                list.iter().filter_map(|c| c.as_str()).filter(|c| !c.eq_ignore_ascii_case(&recipient)).map(str::to_string).collect()
            }
            None => {
                thread.as_ref().map(|t| t.cc.iter().filter(|c| !c.eq_ignore_ascii_case(&recipient)).cloned().collect()).unwrap_or_default()
            }
        };
        let automatic = meta.get("automatic").and_then(|a| a.as_bool()).unwrap_or(false);
        let files = self.attachments(&hub);
        let mut attachments = Vec::new();
        for f in agent.and_then(|e| e.get("attachments")).and_then(|a| a.as_array()).map(Vec::as_slice).unwrap_or_default() {
            attachments.push(agent_file(&*files, f).await?);
        }
        let forward = agent.and_then(|e| e.get("forward"));
        let mut text = msg.body.clone();
        if let Some(fwd) = forward {
            let raw_id = fwd.get("raw_id").and_then(|r| r.as_str()).and_then(|r| r.parse::<Uuid>().ok());
            let raw: Option<Vec<u8>> = sqlx::query_scalar("select raw from email_raw_messages where id = $1 and mailbox = $2")
                .bind(raw_id)
                .bind(&self.name)
                .fetch_optional(db)
                .await
                .map_err(|e| core_err(e.into()))?;
            let raw = raw.ok_or_else(|| AdapterError::Permanent("the forwarded mail is no longer stored".into()))?;
            let note = fwd.get("note").and_then(|n| n.as_str()).unwrap_or("");
            if fwd.get("inline").and_then(|i| i.as_bool()).unwrap_or(false) {
                let parsed = parse::parse(&raw, 0).ok_or_else(|| AdapterError::Permanent("the forwarded mail cannot be read".into()))?;
                text = crate::agent_mail::forward_inline(note, &parsed);
            } else {
                text = if note.trim().is_empty() { "Forwarded message attached.".to_string() } else { note.to_string() };
                attachments.insert(
                    0,
                    compose::OutgoingAttachment { filename: "forwarded.eml".into(), content_type: "message/rfc822".into(), data: raw },
                );
            }
        }
        let mail = OutgoingMail {
            mailbox_address: self.cfg.address.clone(),
            display_name: self.cfg.display_name.clone(),
            token: Some(token.clone()),
            to: vec![recipient.clone()],
            cc: if automatic { Vec::new() } else { cc },
            subject: msg.subject.clone().unwrap_or_else(|| "Your message".into()),
            text,
            html: meta.get("html").and_then(|h| h.as_str()).map(parse::sanitize_html),
            signature: if automatic { None } else { self.cfg.signature.clone() },
            // A forward starts a new thread for its recipient (their answer still comes back
            // to this conversation by the token in our From).
            in_reply_to: if forward.is_some() { None } else { thread.as_ref().and_then(|t| t.last_message_id.clone()) },
            references: if forward.is_some() { Vec::new() } else { thread.as_ref().map(|t| t.refs.clone()).unwrap_or_default() },
            message_id: format!("{}.sb@{}", msg.id.simple(), self.cfg.address_parts().1),
            automatic,
            attachments,
        };
        let built = match compose::build(&mail) {
            Ok(m) => m,
            Err(e) => return Err(AdapterError::Permanent(e.to_string())),
        };
        // A token command gives each message a fresh access token (and its own connection).
        let fresh;
        let transport = match &self.cfg.smtp.token_command {
            Some(cmd) => {
                let token = imap::fresh_token(cmd).await.map_err(|e| AdapterError::Temporary(format!("smtp: {e}")))?;
                fresh = smtp::transport_with_secret(&self.cfg.smtp, &token).map_err(|e| AdapterError::Config(format!("smtp: {e}")))?;
                &fresh
            }
            None => self.transport()?,
        };
        // A server that does not answer is a plain retry: nothing was handed over.
        smtp::reachable(transport).await.map_err(|e| AdapterError::Temporary(format!("smtp: {e}")))?;
        let recipients: Vec<String> = mail.to.iter().chain(&mail.cc).cloned().collect();
        if let Some((state, _)) =
            store::claim_outbound(db, msg.id, &self.name, &mail.message_id, Some(&token), &recipients).await.map_err(core_err)?
        {
            return match state.as_str() {
                "sent" => Ok(DeliveryReceipt { provider_id: Some(mail.message_id.clone()) }),
                "handing" | "unknown" => {
                    store::finish_outbound(db, msg.id, "unknown", Some("an earlier hand-off to SMTP has no known outcome"))
                        .await
                        .map_err(core_err)?;
                    Err(AdapterError::Permanent(
                        "an earlier hand-off of this message to the SMTP server has no known outcome; not sending it twice".into(),
                    ))
                }
                other => Err(AdapterError::Permanent(format!("message already {other}"))),
            };
        }
        let raw = built.formatted();
        match smtp::send(transport, built).await {
            SendOutcome::Accepted(resp) => {
                store::finish_outbound(db, msg.id, "sent", Some(&resp)).await.map_err(core_err)?;
                tracing::info!(mailbox = %self.name, outbox_id = %msg.id, message_id = %mail.message_id, "Email sent.");
                if self.cfg.imap.sent_folder.is_some() {
                    self.append_sent(raw).await;
                }
                Ok(DeliveryReceipt { provider_id: Some(mail.message_id) })
            }
            SendOutcome::Rejected(e) => {
                store::finish_outbound(db, msg.id, "failed", Some(&e)).await.map_err(core_err)?;
                Err(AdapterError::Permanent(format!("smtp rejected: {e}")))
            }
            SendOutcome::Deferred(e) => {
                // 4xx: the server did not take it; the claim goes so the retry can send.
                sqlx::query("delete from email_outbound where outbox_id = $1 and state = 'handing'")
                    .bind(msg.id)
                    .execute(db)
                    .await
                    .map_err(|e| core_err(e.into()))?;
                Err(AdapterError::Temporary(format!("smtp deferred: {e}")))
            }
            SendOutcome::Unknown(e) => {
                store::finish_outbound(db, msg.id, "unknown", Some(&e)).await.map_err(core_err)?;
                Err(AdapterError::Permanent(format!("smtp outcome unknown ({e}); not sending twice")))
            }
        }
    }
}
