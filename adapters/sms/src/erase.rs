//! This SMS channel's part of erasing a customer's personal data (see
//! `switchboard_core::privacy`): the recipient number of replies sent to the customer,
//! message parts from their numbers still waiting for the rest, and the number on their
//! STOP/START/HELP log (the keyword and the customer id stay as consent evidence). The
//! opt-out list keeps the number: an erased customer's STOP must still be honoured.

use switchboard_core::privacy::{Erased, PersonalDataEraser};
use switchboard_core::{CoreResult, Hub};
use uuid::Uuid;

/// The eraser of one configured SMS channel.
pub struct SmsEraser {
    /// Channel (adapter instance) name.
    pub channel: String,
}

#[async_trait::async_trait]
impl PersonalDataEraser for SmsEraser {
    fn scope(&self) -> &str {
        "sms"
    }

    async fn erase_customer(&self, _hub: &Hub, tx: &mut sqlx::PgConnection, customer: Uuid) -> CoreResult<Erased> {
        // Numbers as the SMSC writes them: digits, with or without the leading `+`.
        let phones: Vec<String> = sqlx::query_scalar(
            "select distinct p from customer_identities c, lateral (values (c.address), (ltrim(c.address, '+'))) v(p)
              where c.customer_id = $1 and c.kind = 'phone'",
        )
        .bind(customer)
        .fetch_all(&mut *tx)
        .await?;
        let mut rows = sqlx::query(
            "update sms_sent set recipient = '[erased]', error = null
              where channel_name = $2 and recipient <> '[erased]'
                and (interaction_id in (select id from interactions where customer_id = $1) or recipient = any($3))",
        )
        .bind(customer)
        .bind(&self.channel)
        .bind(&phones)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        rows += sqlx::query("delete from sms_inbound_parts where channel_name = $1 and source = any($2)")
            .bind(&self.channel)
            .bind(&phones)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        rows += sqlx::query(
            "update sms_keyword_messages set phone = '[erased]'
              where channel_name = $2 and phone <> '[erased]' and (customer_id = $1 or phone = any($3))",
        )
        .bind(customer)
        .bind(&self.channel)
        .bind(&phones)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        Ok(Erased { rows, files: Vec::new() })
    }
}
