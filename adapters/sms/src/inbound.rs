//! What an inbound text becomes, whichever provider brought it: a consent keyword (opt-out
//! state, CRM consent history, one reply) or a message ingested into the hub, continuing
//! the customer's open SMS conversation.

use crate::keywords::{self, Keyword, KeywordSet};
use crate::store;
use std::collections::BTreeMap;
use switchboard_core::{Channel, CoreError, CoreResult, CustomerHints, Hub, InboundItem};

/// One complete inbound text (parts already joined).
#[derive(Debug, Clone)]
pub struct InboundText<'a> {
    /// Channel instance name.
    pub channel: &'a str,
    /// Sender, E.164 when it is an international number.
    pub from: &'a str,
    /// The number it was sent to.
    pub to: &'a str,
    /// Text.
    pub body: String,
    /// Dedupe key (provider id or hash).
    pub dedupe_key: String,
}

/// Commits one inbound text; returns once it is stored (the caller acknowledges then).
pub async fn accept_text(hub: &Hub, sets: &BTreeMap<String, KeywordSet>, queue: Option<String>, t: InboundText<'_>) -> CoreResult<()> {
    if let Some((kw, lang)) = keywords::detect(sets, t.from, &t.body, None) {
        // The opt-out holds for the number even when the directory cannot place it.
        let customer = match hub.directory().resolve(Channel::Sms, t.from, &CustomerHints::default()).await {
            Ok(c) => c.map(|c| c.id),
            Err(CoreError::InvalidField { reason, .. }) => {
                tracing::info!(channel = %t.channel, %reason, "Keyword sender not placed in the customer directory.");
                None
            }
            Err(e) => return Err(e),
        };
        let set = &sets[lang];
        let reply = match kw {
            Keyword::Stop => &set.stop_reply,
            Keyword::Start => &set.start_reply,
            Keyword::Help => &set.help_reply,
        };
        let fresh = store::record_keyword(
            hub.db(),
            store::KeywordMessage {
                dedupe_key: &t.dedupe_key,
                channel: t.channel,
                phone: t.from,
                keyword: kw,
                language: lang,
                customer_id: customer,
                reply: Some(reply.as_str()).filter(|r| !r.is_empty()),
            },
        )
        .await?;
        tracing::info!(channel = %t.channel, keyword = kw.as_str(), fresh, "Consent keyword received.");
        return Ok(());
    }
    let item = InboundItem {
        channel: Some(Channel::Sms),
        dedupe_key: t.dedupe_key,
        conversation_key: Some(format!("sms:{}:{}", t.channel, t.from)),
        from: t.from.to_string(),
        to: Some(t.to.to_string()),
        body: t.body,
        queue,
        metadata: Some(serde_json::json!({ "sms_channel": t.channel, "to": t.to })),
        ..Default::default()
    };
    hub.ingest(item).await?;
    Ok(())
}
