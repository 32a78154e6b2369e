//! This mailbox's part of erasing a customer's personal data (see
//! `switchboard_core::privacy`): the raw originals of the customer's mails (emptied, the
//! row kept so the same IMAP message is never imported again), their attachments (rows now,
//! files after commit unless another stored mail has the same content), the thread's
//! address, Cc list and subject, and the recipients of our replies.

use std::path::PathBuf;

use switchboard_core::privacy::{Erased, PersonalDataEraser};
use switchboard_core::{CoreResult, Hub};
use uuid::Uuid;

/// The eraser of one configured mailbox.
pub struct EmailEraser {
    /// Mailbox (adapter instance) name.
    pub mailbox: String,
    /// Configured attachment directory (default: `<data_dir>/attachments`).
    pub dir: Option<PathBuf>,
}

#[async_trait::async_trait]
impl PersonalDataEraser for EmailEraser {
    fn scope(&self) -> &str {
        "email"
    }

    async fn erase_customer(&self, hub: &Hub, tx: &mut sqlx::PgConnection, customer: Uuid) -> CoreResult<Erased> {
        // The customer's mails: those ingested into their interactions, and those from
        // their addresses that never became one (bounces, unparseable, rate-limited).
        let raw: Vec<Uuid> = sqlx::query_scalar(
            "select r.id from email_raw_messages r
              where r.mailbox = $2
                and (r.interaction_id in (select id from interactions where customer_id = $1)
                     or lower(r.sender) in (select lower(address) from customer_identities where customer_id = $1 and kind = 'email'))",
        )
        .bind(customer)
        .bind(&self.mailbox)
        .fetch_all(&mut *tx)
        .await?;
        let mut rows = 0;
        let mut files = Vec::new();
        if !raw.is_empty() {
            let shas: Vec<String> = sqlx::query_scalar("delete from email_attachments where raw_id = any($1) and stored returning sha256")
                .bind(&raw)
                .fetch_all(&mut *tx)
                .await?;
            rows += sqlx::query("delete from email_attachments where raw_id = any($1)").bind(&raw).execute(&mut *tx).await?.rows_affected();
            rows += shas.len() as u64;
            let unused: Vec<String> = sqlx::query_scalar(
                "select distinct s from unnest($1::text[]) s where not exists (select 1 from email_attachments a where a.sha256 = s and a.stored)",
            )
            .bind(&shas)
            .fetch_all(&mut *tx)
            .await?;
            let store = crate::attachment_store(hub, self.dir.as_deref());
            files = unused
                .into_iter()
                .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(|key| switchboard_core::files::StoredFile { store: store.clone(), key })
                .collect();
            rows += sqlx::query("update email_raw_messages set raw = ''::bytea, sender = null, error = null where id = any($1)")
                .bind(&raw)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        rows += sqlx::query(
            "update email_threads set customer_address = null, cc = '{}', base_subject = ''
              where mailbox = $2 and 'email:' || token in (
                    select conversation_key from interactions where customer_id = $1 and channel = 'email' and conversation_key is not null)",
        )
        .bind(customer)
        .bind(&self.mailbox)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        rows += sqlx::query(
            "update email_outbound set recipients = '{}', smtp_response = null
              where mailbox = $2 and outbox_id in (
                    select o.id from outbox o join interactions i on i.id = o.interaction_id where i.customer_id = $1)",
        )
        .bind(customer)
        .bind(&self.mailbox)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        Ok(Erased { rows, files })
    }
}
