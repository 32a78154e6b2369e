//! Interaction lifecycle operations: accept/decline offers, wrap-up, close with a
//! disposition, transfer, abandon, replies (through the outbox) and internal notes.
//! Each change is one transaction that also appends its event.

use crate::bus::{self, NewEvent};
use crate::domain::{Channel, Disposition, InteractionStatus, Presence};
use crate::error::{is_capacity_violation, CoreError, CoreResult};
use crate::hub::Hub;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

/// An interaction as listed and shown.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Interaction {
    /// Id.
    pub id: Uuid,
    /// Channel.
    pub channel: String,
    /// inbound / outbound.
    pub direction: String,
    /// Conversation key (chat conversation, email thread).
    pub conversation_key: Option<String>,
    /// Customer (CRM).
    pub customer_id: Option<Uuid>,
    /// Customer address on the channel.
    pub customer_address: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// Queue.
    pub queue_id: Option<Uuid>,
    /// Priority.
    pub priority: i32,
    /// Extra requirement.
    pub requirement: String,
    /// Own manager.
    pub preferred_agent_id: Option<Uuid>,
    /// Assigned or offered agent.
    pub agent_id: Option<Uuid>,
    /// Status.
    pub status: String,
    /// Disposition once closed.
    pub disposition: Option<String>,
    /// Summary written at close.
    pub summary: Option<String>,
    /// Channel data.
    pub metadata: serde_json::Value,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Original enqueue time (kept across re-queues).
    pub enqueued_at: DateTime<Utc>,
    /// Offered.
    pub offered_at: Option<DateTime<Utc>>,
    /// Answered (accepted).
    pub answered_at: Option<DateTime<Utc>>,
    /// Wrap-up started.
    pub wrap_up_at: Option<DateTime<Utc>>,
    /// Closed.
    pub closed_at: Option<DateTime<Utc>>,
    /// When the customer left a waiting chat (widget closed); supervisors see such
    /// interactions flagged and may close them, and they abandon themselves after
    /// `router.abandon_left_chat_secs`.
    pub visitor_left_at: Option<DateTime<Utc>>,
}

/// Columns for [`Interaction`].
pub const INTERACTION_COLUMNS: &str = "id, channel, direction, conversation_key, customer_id, customer_address, subject, queue_id, priority, requirement, preferred_agent_id, agent_id, status, disposition, summary, metadata, created_at, enqueued_at, offered_at, answered_at, wrap_up_at, closed_at, visitor_left_at";

/// A message of an interaction.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Message {
    /// Id.
    pub id: Uuid,
    /// Interaction.
    pub interaction_id: Uuid,
    /// inbound / outbound / internal (notes).
    pub direction: String,
    /// Author agent for outbound and notes.
    pub author_agent_id: Option<Uuid>,
    /// Text.
    pub body: String,
    /// Content type.
    pub content_type: String,
    /// Attachments.
    pub attachments: serde_json::Value,
    /// Client or channel message id.
    pub client_message_id: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// Columns for [`Message`].
pub const MESSAGE_COLUMNS: &str =
    "id, interaction_id, direction, author_agent_id, body, content_type, attachments, client_message_id, created_at";

/// A live offer.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Offer {
    /// Id.
    pub id: Uuid,
    /// Interaction.
    pub interaction_id: Uuid,
    /// Agent.
    pub agent_id: Uuid,
    /// Channel.
    pub channel: String,
    /// Part of a ring-all.
    pub ring_all: bool,
    /// State.
    pub state: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

/// Columns for [`Offer`].
pub const OFFER_COLUMNS: &str = "id, interaction_id, agent_id, channel, ring_all, state, created_at, expires_at";

/// Why an offer ended without acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferEnd {
    /// The agent declined.
    Declined,
    /// Nobody answered in time (ring-no-answer).
    Timeout,
    /// The channel withdrew it: the contact no longer waits for this agent (a ring-all
    /// call answered on another phone a moment before this one was to ring). The offer is
    /// cancelled and the agent keeps their presence.
    Withdrawn,
    /// The agent's phone could not ring (not registered, answered 404/480/503, transport
    /// error). Not the agent's fault: the offer is cancelled, the agent keeps their
    /// presence, a warning is logged, and the interaction is not offered straight back.
    Unreachable,
}

async fn lock_interaction(tx: &mut PgConnection, id: Uuid) -> CoreResult<Interaction> {
    sqlx::query_as::<_, Interaction>(&format!("select {INTERACTION_COLUMNS} from interactions where id = $1 for update"))
        .bind(id)
        .fetch_optional(tx)
        .await?
        .ok_or(CoreError::NotFound("interaction"))
}

async fn set_presence_tx(tx: &mut PgConnection, agent: Uuid, p: Presence, reason: &str) -> CoreResult<()> {
    sqlx::query("update agents set presence = $2, presence_since = now(), last_idle_at = case when $2 = 'available' then now() else last_idle_at end where id = $1")
        .bind(agent)
        .bind(p.as_str())
        .execute(&mut *tx)
        .await?;
    bus::record(tx, NewEvent::agent("presence", agent).with_data(serde_json::json!({ "presence": p, "reason": reason }))).await?;
    Ok(())
}

/// Puts an interaction back in its queue with its original enqueue time.
async fn requeue_tx(tx: &mut PgConnection, i: &Interaction, reason: &str) -> CoreResult<()> {
    sqlx::query("update interactions set status = 'queued', agent_id = null, updated_at = now() where id = $1")
        .bind(i.id)
        .execute(&mut *tx)
        .await?;
    bus::record(tx, NewEvent::interaction("requeued", i.id).with_queue(i.queue_id).with_data(serde_json::json!({ "reason": reason })))
        .await?;
    Ok(())
}

async fn release_offers_tx(tx: &mut PgConnection, interaction: Uuid) -> CoreResult<Vec<Uuid>> {
    let agents: Vec<Uuid> = sqlx::query_scalar(
        "update offers set state = case when state = 'accepted' then 'released' else 'cancelled' end, ended_at = now()
         where interaction_id = $1 and state in ('pending','accepted') returning agent_id",
    )
    .bind(interaction)
    .fetch_all(&mut *tx)
    .await?;
    Ok(agents)
}

impl Hub {
    async fn begin(&self) -> CoreResult<Transaction<'static, Postgres>> {
        Ok(self.db().begin().await?)
    }

    /// Fetches one interaction.
    pub async fn interaction(&self, id: Uuid) -> CoreResult<Interaction> {
        sqlx::query_as::<_, Interaction>(&format!("select {INTERACTION_COLUMNS} from interactions where id = $1"))
            .bind(id)
            .fetch_optional(self.db())
            .await?
            .ok_or(CoreError::NotFound("interaction"))
    }

    /// Messages of an interaction, oldest first.
    pub async fn messages(&self, id: Uuid) -> CoreResult<Vec<Message>> {
        Ok(sqlx::query_as::<_, Message>(&format!(
            "select {MESSAGE_COLUMNS} from messages where interaction_id = $1 order by created_at, id"
        ))
        .bind(id)
        .fetch_all(self.db())
        .await?)
    }

    /// An agent accepts an offer: the interaction becomes active and held by the agent.
    /// For ring-all, the other offers are cancelled.
    #[tracing::instrument(skip(self))]
    pub async fn accept_offer(&self, offer_id: Uuid, agent_id: Uuid) -> CoreResult<Interaction> {
        let mut tx = self.begin().await?;
        let offer: Offer = sqlx::query_as(&format!("select {OFFER_COLUMNS} from offers where id = $1 and agent_id = $2"))
            .bind(offer_id)
            .bind(agent_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(CoreError::NotFound("offer"))?;
        let i = lock_interaction(&mut tx, offer.interaction_id).await?;
        if offer.state != "pending" || i.status != "offered" {
            return Err(CoreError::Conflict(format!(
                "offer is {} and the interaction {}; it can no longer be accepted",
                offer.state, i.status
            )));
        }
        if offer.expires_at <= Utc::now() {
            return Err(CoreError::Conflict("offer expired".into()));
        }
        sqlx::query("update offers set state = 'accepted' where id = $1").bind(offer_id).execute(&mut *tx).await.map_err(|e| {
            if is_capacity_violation(&e) {
                CoreError::Conflict("agent at capacity".into())
            } else {
                e.into()
            }
        })?;
        let cancelled: Vec<Uuid> = sqlx::query_scalar(
            "update offers set state = 'cancelled', ended_at = now() where interaction_id = $1 and id <> $2 and state = 'pending' returning agent_id",
        )
        .bind(i.id)
        .bind(offer_id)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("update interactions set status = 'active', agent_id = $2, answered_at = coalesce(answered_at, now()), updated_at = now() where id = $1")
            .bind(i.id)
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        bus::record(
            &mut tx,
            NewEvent::interaction("accepted", i.id)
                .with_agent(Some(agent_id))
                .with_queue(i.queue_id)
                .with_data(serde_json::json!({ "offer_id": offer_id, "channel": i.channel, "cancelled_agents": cancelled })),
        )
        .await?;
        tx.commit().await?;
        self.interaction(i.id).await
    }

    /// An offer ends unaccepted. A timeout marks the agent not-ready (away) when they were
    /// idle and able to answer; an agent busy with another interaction (on a call, in
    /// wrap-up, at work in another channel) or no longer available is not penalized. A
    /// decline, a withdrawal or an unreachable phone never is. The interaction is re-queued
    /// with its original enqueue time unless other ring-all offers are live.
    #[tracing::instrument(skip(self))]
    pub async fn end_offer(&self, offer_id: Uuid, agent_id: Option<Uuid>, how: OfferEnd) -> CoreResult<()> {
        let mut tx = self.begin().await?;
        let offer: Offer = sqlx::query_as(&format!("select {OFFER_COLUMNS} from offers where id = $1"))
            .bind(offer_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(CoreError::NotFound("offer"))?;
        if agent_id.is_some_and(|a| a != offer.agent_id) {
            return Err(CoreError::NotFound("offer"));
        }
        let i = lock_interaction(&mut tx, offer.interaction_id).await?;
        // (offer state, event, re-queue reason)
        let (state, kind, reason) = match how {
            OfferEnd::Declined => ("declined", "offer_declined", "declined"),
            OfferEnd::Timeout => ("timeout", "offer_timeout", "timeout"),
            OfferEnd::Withdrawn => ("cancelled", "offer_withdrawn", "withdrawn"),
            OfferEnd::Unreachable => ("cancelled", "offer_unreachable", "unreachable"),
        };
        // Ring-no-answer penalizes only an agent who was idle and able to answer: not one
        // busy with something else they hold (a call, a chat, wrap-up) nor one who is no
        // longer available (the offer expiring while they were away is not news).
        let penalize = if how == OfferEnd::Timeout {
            let (presence, held): (String, i64) = sqlx::query_as(
                "select a.presence, (select count(*) from offers o where o.agent_id = a.id and o.state = 'accepted')
                   from agents a where a.id = $1 for update of a",
            )
            .bind(offer.agent_id)
            .fetch_one(&mut *tx)
            .await?;
            presence == "available" && held == 0
        } else {
            false
        };
        let n = sqlx::query("update offers set state = $2, end_reason = $3, ended_at = now() where id = $1 and state = 'pending'")
            .bind(offer_id)
            .bind(state)
            .bind(reason)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CoreError::Conflict(format!("offer is already {}", offer.state)));
        }
        let mut data = serde_json::json!({ "offer_id": offer_id, "channel": i.channel });
        if how == OfferEnd::Timeout {
            data["penalized"] = serde_json::json!(penalize);
        }
        bus::record(&mut tx, NewEvent::interaction(kind, i.id).with_agent(Some(offer.agent_id)).with_queue(i.queue_id).with_data(data))
            .await?;
        if penalize {
            set_presence_tx(&mut tx, offer.agent_id, Presence::Away, "ring_no_answer").await?;
        }
        if how == OfferEnd::Unreachable {
            tracing::warn!(agent_id = %offer.agent_id, interaction_id = %i.id, %offer_id, reason, "Offer could not reach the agent's phone; re-queued without penalty.");
        }
        let live: i64 = sqlx::query_scalar("select count(*) from offers where interaction_id = $1 and state in ('pending','accepted')")
            .bind(i.id)
            .fetch_one(&mut *tx)
            .await?;
        if live == 0 && i.status == "offered" {
            requeue_tx(&mut tx, &i, reason).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Expires every pending offer past its deadline (called by the router leader).
    pub async fn expire_offers(&self) -> CoreResult<usize> {
        let due: Vec<Uuid> =
            sqlx::query_scalar("select id from offers where state = 'pending' and expires_at <= now() order by expires_at limit 500")
                .fetch_all(self.db())
                .await?;
        let mut n = 0;
        for id in due {
            match self.end_offer(id, None, OfferEnd::Timeout).await {
                Ok(()) => n += 1,
                Err(CoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// The held interaction ends and enters wrap-up (the agent's slot stays taken until
    /// close or the queue's wrap-up time passes).
    pub async fn wrap_up(&self, id: Uuid, agent_id: Option<Uuid>) -> CoreResult<Interaction> {
        let mut tx = self.begin().await?;
        let i = lock_interaction(&mut tx, id).await?;
        if agent_id.is_some() && i.agent_id != agent_id {
            return Err(CoreError::Forbidden);
        }
        if i.status != "active" {
            return Err(CoreError::Conflict(format!("interaction is {}, not active", i.status)));
        }
        sqlx::query("update interactions set status = 'wrap_up', wrap_up_at = now(), updated_at = now() where id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        bus::record(&mut tx, NewEvent::interaction("wrap_up", id).with_agent(i.agent_id).with_queue(i.queue_id)).await?;
        tx.commit().await?;
        self.interaction(id).await
    }

    /// Closes an interaction with a disposition; frees the agent's slot.
    pub async fn close(
        &self,
        id: Uuid,
        agent_id: Option<Uuid>,
        disposition: Disposition,
        summary: Option<String>,
    ) -> CoreResult<Interaction> {
        let mut tx = self.begin().await?;
        let i = lock_interaction(&mut tx, id).await?;
        if agent_id.is_some() && i.agent_id != agent_id {
            return Err(CoreError::Forbidden);
        }
        let status: InteractionStatus = i.status.parse().map_err(CoreError::Internal)?;
        if !status.is_open() && status != InteractionStatus::Voicemail {
            return Err(CoreError::Conflict(format!("interaction is already {}", i.status)));
        }
        let released = release_offers_tx(&mut tx, id).await?;
        sqlx::query("update interactions set status = 'closed', disposition = $2, summary = coalesce($3, summary), closed_at = now(), updated_at = now() where id = $1")
            .bind(id)
            .bind(disposition.as_str())
            .bind(summary)
            .execute(&mut *tx)
            .await?;
        bus::record(
            &mut tx,
            NewEvent::interaction("closed", id)
                .with_agent(i.agent_id)
                .with_queue(i.queue_id)
                .with_data(serde_json::json!({ "disposition": disposition, "released_agents": released, "channel": i.channel })),
        )
        .await?;
        tx.commit().await?;
        self.interaction(id).await
    }

    /// Marks a waiting or offered interaction abandoned (caller hung up, visitor left).
    pub async fn abandon(&self, id: Uuid) -> CoreResult<()> {
        self.abandon_with(id, None).await
    }

    /// Marks a waiting or offered interaction abandoned, saying why in the event
    /// (`visitor_left_timeout`, `closed_by_supervisor`).
    pub async fn abandon_with(&self, id: Uuid, reason: Option<&str>) -> CoreResult<()> {
        let mut tx = self.begin().await?;
        let i = lock_interaction(&mut tx, id).await?;
        if !matches!(i.status.as_str(), "queued" | "offered") {
            return Err(CoreError::Conflict(format!("interaction is {}, not waiting", i.status)));
        }
        let released = release_offers_tx(&mut tx, id).await?;
        sqlx::query("update interactions set status = 'abandoned', closed_at = now(), updated_at = now() where id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let mut data = serde_json::json!({ "released_agents": released, "channel": i.channel });
        if let Some(r) = reason {
            data["reason"] = serde_json::json!(r);
        }
        bus::record(&mut tx, NewEvent::interaction("abandoned", id).with_queue(i.queue_id).with_data(data)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets a terminal or special status (voicemail, overflowed) with an event.
    pub async fn set_status(&self, id: Uuid, status: InteractionStatus, data: serde_json::Value) -> CoreResult<()> {
        let mut tx = self.begin().await?;
        let i = lock_interaction(&mut tx, id).await?;
        let released = if status.is_open() { vec![] } else { release_offers_tx(&mut tx, id).await? };
        sqlx::query("update interactions set status = $2, updated_at = now(), closed_at = case when $2 in ('closed','abandoned') then now() else closed_at end where id = $1")
            .bind(id)
            .bind(status.as_str())
            .execute(&mut *tx)
            .await?;
        let mut data = data;
        if let Some(o) = data.as_object_mut() {
            o.insert("status".into(), serde_json::json!(status));
            o.insert("released_agents".into(), serde_json::json!(released));
            o.insert("channel".into(), serde_json::json!(i.channel));
        }
        bus::record(&mut tx, NewEvent::interaction("status", id).with_queue(i.queue_id).with_data(data)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Merges keys into an interaction's metadata (recording paths, call ids).
    pub async fn update_metadata(&self, id: Uuid, patch: serde_json::Value) -> CoreResult<()> {
        let n = sqlx::query("update interactions set metadata = metadata || $2, updated_at = now() where id = $1")
            .bind(id)
            .bind(patch)
            .execute(self.db())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CoreError::NotFound("interaction"));
        }
        Ok(())
    }

    /// Appends an event about an interaction (adapters report protocol steps this way).
    pub async fn record_event(&self, e: NewEvent) -> CoreResult<()> {
        let mut conn = self.db().acquire().await?;
        bus::record(&mut conn, e).await?;
        Ok(())
    }

    /// Transfers to another agent: the current holder's slot is freed and the target gets
    /// an offer (their capacity is checked).
    pub async fn transfer_to_agent(&self, id: Uuid, by_agent: Option<Uuid>, target: Uuid) -> CoreResult<Interaction> {
        let mut tx = self.begin().await?;
        let i = lock_interaction(&mut tx, id).await?;
        if by_agent.is_some() && i.agent_id != by_agent {
            return Err(CoreError::Forbidden);
        }
        if !matches!(i.status.as_str(), "queued" | "offered" | "active") {
            return Err(CoreError::Conflict(format!("interaction is {}; only waiting or active interactions transfer", i.status)));
        }
        let exists: Option<Uuid> =
            sqlx::query_scalar("select id from agents where id = $1 and archived_at is null").bind(target).fetch_optional(&mut *tx).await?;
        exists.ok_or(CoreError::NotFound("target agent"))?;
        let released = release_offers_tx(&mut tx, id).await?;
        let timeout: i32 = match i.queue_id {
            Some(q) => sqlx::query_scalar("select accept_timeout_secs from queues where id = $1")
                .bind(q)
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(20),
            None => 20,
        };
        let offer_id: Uuid = sqlx::query_scalar(
            "insert into offers (interaction_id, agent_id, channel, expires_at) values ($1, $2, $3, now() + make_interval(secs => $4)) returning id",
        )
        .bind(id)
        .bind(target)
        .bind(&i.channel)
        .bind(timeout as f64)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| if is_capacity_violation(&e) { CoreError::Conflict("target agent is at capacity".into()) } else { e.into() })?;
        sqlx::query("update interactions set status = 'offered', agent_id = $2, offered_at = now(), updated_at = now() where id = $1")
            .bind(id)
            .bind(target)
            .execute(&mut *tx)
            .await?;
        bus::record(
            &mut tx,
            NewEvent::interaction("transferred", id).with_agent(Some(target)).with_queue(i.queue_id).with_data(
                serde_json::json!({ "from_agent": i.agent_id, "to_agent": target, "released_agents": released, "channel": i.channel }),
            ),
        )
        .await?;
        bus::record(
            &mut tx,
            NewEvent::interaction("offered", id)
                .with_agent(Some(target))
                .with_queue(i.queue_id)
                .with_data(serde_json::json!({ "offer_id": offer_id, "channel": i.channel, "transfer": true })),
        )
        .await?;
        tx.commit().await?;
        self.interaction(id).await
    }

    /// Transfers to a queue: the interaction waits there, keeping its original enqueue time.
    pub async fn transfer_to_queue(&self, id: Uuid, by_agent: Option<Uuid>, queue: Uuid) -> CoreResult<Interaction> {
        let mut tx = self.begin().await?;
        let i = lock_interaction(&mut tx, id).await?;
        if by_agent.is_some() && i.agent_id != by_agent {
            return Err(CoreError::Forbidden);
        }
        if !matches!(i.status.as_str(), "queued" | "offered" | "active") {
            return Err(CoreError::Conflict(format!("interaction is {}; only waiting or active interactions transfer", i.status)));
        }
        let exists: Option<Uuid> =
            sqlx::query_scalar("select id from queues where id = $1 and archived_at is null").bind(queue).fetch_optional(&mut *tx).await?;
        exists.ok_or(CoreError::NotFound("target queue"))?;
        let released = release_offers_tx(&mut tx, id).await?;
        sqlx::query("update interactions set status = 'queued', queue_id = $2, agent_id = null, updated_at = now() where id = $1")
            .bind(id)
            .bind(queue)
            .execute(&mut *tx)
            .await?;
        bus::record(
            &mut tx,
            NewEvent::interaction("transferred", id)
                .with_queue(Some(queue))
                .with_data(serde_json::json!({ "from_agent": i.agent_id, "from_queue": i.queue_id, "to_queue": queue, "released_agents": released, "channel": i.channel })),
        )
        .await?;
        bus::record(
            &mut tx,
            NewEvent::interaction("requeued", id).with_queue(Some(queue)).with_data(serde_json::json!({ "reason": "transfer" })),
        )
        .await?;
        tx.commit().await?;
        self.interaction(id).await
    }

    /// An agent's reply: a message row and an outbox row in one transaction; the outbox
    /// worker delivers it through the channel's adapter.
    pub async fn reply(&self, id: Uuid, agent_id: Option<Uuid>, body: &str, idempotency_key: Option<&str>) -> CoreResult<Message> {
        self.reply_with(id, agent_id, body, idempotency_key, ReplyExtras::default()).await
    }

    /// [`Self::reply`] with channel-specific parts: another recipient or subject (an email
    /// forward), keys the adapter reads from the outbox row's metadata (reply-all, files),
    /// and the attachment descriptors shown on the message.
    pub async fn reply_with(
        &self,
        id: Uuid,
        agent_id: Option<Uuid>,
        body: &str,
        idempotency_key: Option<&str>,
        extras: ReplyExtras,
    ) -> CoreResult<Message> {
        if body.trim().is_empty() {
            return Err(CoreError::field("body", "must not be empty"));
        }
        if body.len() > 64 * 1024 {
            return Err(CoreError::field("body", "longer than 65536 bytes"));
        }
        let mut tx = self.begin().await?;
        let i = lock_interaction(&mut tx, id).await?;
        if agent_id.is_some() && i.agent_id != agent_id {
            return Err(CoreError::Forbidden);
        }
        if i.status != "active" && i.status != "wrap_up" {
            return Err(CoreError::Conflict(format!("interaction is {}; accept it before replying", i.status)));
        }
        let key = idempotency_key.map(str::to_string).unwrap_or_else(|| Uuid::new_v4().to_string());
        if let Some(existing) = sqlx::query_as::<_, Message>(&format!(
            "select {MESSAGE_COLUMNS} from messages where interaction_id = $1 and client_message_id = $2"
        ))
        .bind(id)
        .bind(format!("reply:{key}"))
        .fetch_optional(&mut *tx)
        .await?
        {
            return Ok(existing);
        }
        let m: Message = sqlx::query_as(&format!(
            "insert into messages (interaction_id, direction, author_agent_id, body, client_message_id, attachments) values ($1, 'outbound', $2, $3, $4, $5) returning {MESSAGE_COLUMNS}"
        ))
        .bind(id)
        .bind(i.agent_id)
        .bind(body)
        .bind(format!("reply:{key}"))
        .bind(extras.attachments.clone().unwrap_or_else(|| serde_json::json!([])))
        .fetch_one(&mut *tx)
        .await?;
        let channel: Channel = i.channel.parse().map_err(CoreError::Internal)?;
        if channel != Channel::Voice {
            crate::outbox::enqueue_tx(
                &mut tx,
                crate::outbox::NewOutbound {
                    idempotency_key: format!("reply:{}", m.id),
                    channel,
                    interaction_id: Some(id),
                    message_id: Some(m.id),
                    recipient: extras.recipient.clone().unwrap_or_else(|| i.customer_address.clone().unwrap_or_default()),
                    subject: extras.subject.clone().or_else(|| {
                        i.subject.as_ref().map(|s| if s.to_lowercase().starts_with("re:") { s.clone() } else { format!("Re: {s}") })
                    }),
                    body: body.to_string(),
                    metadata: {
                        let mut meta = serde_json::json!({ "conversation_key": i.conversation_key, "interaction_metadata": i.metadata });
                        if let (Some(m), Some(serde_json::Value::Object(extra))) = (meta.as_object_mut(), extras.metadata) {
                            m.extend(extra);
                        }
                        meta
                    },
                },
            )
            .await?;
        }
        bus::record(
            &mut tx,
            NewEvent::interaction("message", id)
                .with_agent(i.agent_id)
                .with_queue(i.queue_id)
                .with_data(serde_json::json!({ "message_id": m.id, "direction": "outbound", "channel": i.channel })),
        )
        .await?;
        tx.commit().await?;
        Ok(m)
    }

    /// An internal note (never sent to the customer).
    pub async fn note(&self, id: Uuid, agent_id: Option<Uuid>, body: &str) -> CoreResult<Message> {
        if body.trim().is_empty() || body.len() > 64 * 1024 {
            return Err(CoreError::field("body", "must be 1..=65536 bytes"));
        }
        let mut tx = self.begin().await?;
        let i = lock_interaction(&mut tx, id).await?;
        let m: Message = sqlx::query_as(&format!(
            "insert into messages (interaction_id, direction, author_agent_id, body) values ($1, 'internal', $2, $3) returning {MESSAGE_COLUMNS}"
        ))
        .bind(id)
        .bind(agent_id)
        .bind(body)
        .fetch_one(&mut *tx)
        .await?;
        bus::record(
            &mut tx,
            NewEvent::interaction("note", id)
                .with_agent(i.agent_id)
                .with_queue(i.queue_id)
                .with_data(serde_json::json!({ "message_id": m.id })),
        )
        .await?;
        tx.commit().await?;
        Ok(m)
    }

    /// Sets an agent's presence.
    pub async fn set_presence(&self, agent_id: Uuid, p: Presence) -> CoreResult<()> {
        let mut tx = self.begin().await?;
        let exists: Option<String> =
            sqlx::query_scalar("select presence from agents where id = $1 for update").bind(agent_id).fetch_optional(&mut *tx).await?;
        exists.ok_or(CoreError::NotFound("agent"))?;
        set_presence_tx(&mut tx, agent_id, p, "agent").await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that the customer of a waiting chat left (`true`: the widget closed) or came
    /// back (`false`). Only waiting (queued/offered) interactions are marked; returns
    /// whether anything changed. Leaving records a `visitor_left` event.
    pub async fn set_visitor_left(&self, id: Uuid, left: bool) -> CoreResult<bool> {
        let mut tx = self.begin().await?;
        if !left {
            // Called on every widget connect and ping of a waiting chat: one update that
            // usually matches nothing, no lock taken unless a mark is to be cleared.
            let back: Option<(Option<Uuid>, Option<Uuid>, String)> = sqlx::query_as(
                "update interactions set visitor_left_at = null, updated_at = now()
                  where id = $1 and visitor_left_at is not null and status in ('queued','offered')
                 returning agent_id, queue_id, channel",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((agent, queue, channel)) = back else { return Ok(false) };
            bus::record(
                &mut tx,
                NewEvent::interaction("visitor_returned", id)
                    .with_agent(agent)
                    .with_queue(queue)
                    .with_data(serde_json::json!({ "channel": channel, "waiting": true })),
            )
            .await?;
            tx.commit().await?;
            return Ok(true);
        }
        let i = lock_interaction(&mut tx, id).await?;
        if !matches!(i.status.as_str(), "queued" | "offered") || i.visitor_left_at.is_some() {
            return Ok(false);
        }
        sqlx::query("update interactions set visitor_left_at = now(), updated_at = now() where id = $1").bind(id).execute(&mut *tx).await?;
        bus::record(
            &mut tx,
            NewEvent::interaction("visitor_left", id)
                .with_agent(i.agent_id)
                .with_queue(i.queue_id)
                .with_data(serde_json::json!({ "channel": i.channel, "waiting": true })),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Closes as `abandoned` every waiting interaction whose customer left more than
    /// `after_secs` ago (called by the router leader).
    pub async fn abandon_left_chats(&self, after_secs: u64) -> CoreResult<usize> {
        let due: Vec<Uuid> = sqlx::query_scalar(
            "select id from interactions where status in ('queued','offered') and visitor_left_at is not null
               and visitor_left_at <= now() - make_interval(secs => $1) order by visitor_left_at limit 200",
        )
        .bind(after_secs as f64)
        .fetch_all(self.db())
        .await?;
        let mut n = 0;
        for id in due {
            match self.abandon_with(id, Some("visitor_left_timeout")).await {
                Ok(()) => n += 1,
                Err(CoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Publishes whether this node holds a live registration of `sip_user`'s phone
    /// (`expires_at`), or none (`None`). The router offers calls only to agents whose
    /// phone is registered on some node; an agent event tells it when that changes.
    pub async fn set_voice_registration(&self, sip_user: &str, expires_at: Option<DateTime<Utc>>) -> CoreResult<()> {
        let mut tx = self.begin().await?;
        let live = "select exists(select 1 from voice_registrations where sip_user = $1 and expires_at > now())";
        let before: bool = sqlx::query_scalar(live).bind(sip_user).fetch_one(&mut *tx).await?;
        match expires_at {
            Some(at) => {
                sqlx::query(
                    "insert into voice_registrations (sip_user, node_id, expires_at) values ($1, $2, $3)
                     on conflict (sip_user, node_id) do update set expires_at = excluded.expires_at, updated_at = now()",
                )
                .bind(sip_user)
                .bind(self.node_id())
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("delete from voice_registrations where sip_user = $1 and node_id = $2")
                    .bind(sip_user)
                    .bind(self.node_id())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let after: bool = sqlx::query_scalar(live).bind(sip_user).fetch_one(&mut *tx).await?;
        if before != after {
            let agent: Option<Uuid> =
                sqlx::query_scalar("select id from agents where sip_user = $1").bind(sip_user).fetch_optional(&mut *tx).await?;
            if let Some(a) = agent {
                bus::record(&mut tx, NewEvent::agent("voice_registration", a).with_data(serde_json::json!({ "registered": after })))
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// An inbox connection (event stream) of an agent opened on this node.
    pub async fn connection_opened(&self, connection: Uuid, agent_id: Uuid) -> CoreResult<()> {
        sqlx::query(
            "insert into agent_connections (id, agent_id, node_id) values ($1, $2, $3) on conflict (id) do update set seen_at = now()",
        )
        .bind(connection)
        .bind(agent_id)
        .bind(self.node_id())
        .execute(self.db())
        .await?;
        Ok(())
    }

    /// Seconds between heartbeats of an open inbox connection for a presence grace period:
    /// a third of it, between 1 and 20 seconds.
    pub fn inbox_heartbeat_secs(grace_secs: u64) -> u64 {
        (grace_secs / 3).clamp(1, 20)
    }

    /// The node still serves an inbox connection (heartbeat). Re-creates the row if a
    /// sweep removed it meanwhile (say, after heartbeats failed while the database was away).
    pub async fn connection_alive(&self, connection: Uuid, agent_id: Uuid) -> CoreResult<()> {
        self.connection_opened(connection, agent_id).await
    }

    /// An inbox connection closed: the presence grace period starts now unless another
    /// connection of the agent is live.
    pub async fn connection_closed(&self, connection: Uuid) -> CoreResult<()> {
        sqlx::query(
            "with gone as (delete from agent_connections where id = $1 returning agent_id)
             update agents set last_connection_at = now() where id in (select agent_id from gone)",
        )
        .bind(connection)
        .execute(self.db())
        .await?;
        Ok(())
    }

    /// Sets offline (reason `no_connection`, with an event and an audit entry) every agent
    /// who is available or in wrap-up and has had no inbox connection on any node for
    /// `grace_secs`: not since their presence was set, their last connection closed, or
    /// a node last vouched for one (a dead node's rows go stale). Called by the leader.
    pub async fn sweep_disconnected_agents(&self, grace_secs: u64) -> CoreResult<Vec<Uuid>> {
        // A connection counts as live while its heartbeat is fresh: within the grace period,
        // and never less than three heartbeats (very short grace periods).
        let live_secs = grace_secs.max(3 * Self::inbox_heartbeat_secs(grace_secs));
        let mut tx = self.begin().await?;
        let gone: Vec<Uuid> = sqlx::query_scalar(
            "select a.id from agents a
              where a.presence in ('available','wrap_up')
                and greatest(a.presence_since, a.last_connection_at,
                             (select max(c.seen_at) from agent_connections c where c.agent_id = a.id))
                    <= now() - make_interval(secs => $1)
                and not exists (select 1 from agent_connections c
                                 where c.agent_id = a.id and c.seen_at > now() - make_interval(secs => $2))
              order by a.id limit 500
              for update of a skip locked",
        )
        .bind(grace_secs as f64)
        .bind(live_secs as f64)
        .fetch_all(&mut *tx)
        .await?;
        for a in &gone {
            set_presence_tx(&mut tx, *a, Presence::Offline, "no_connection").await?;
            crate::auth::audit(
                &mut tx,
                None,
                "agent.presence",
                "agent",
                &a.to_string(),
                serde_json::json!({ "presence": Presence::Offline, "reason": "no_connection", "grace_secs": grace_secs }),
            )
            .await?;
        }
        // Rows nobody vouched for lately belong to connections (or nodes) that are gone.
        sqlx::query("delete from agent_connections where seen_at < now() - make_interval(secs => $1)")
            .bind((2 * live_secs) as f64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        for a in &gone {
            tracing::info!(agent_id = %a, grace_secs, "Agent set offline: no inbox connection.");
        }
        Ok(gone)
    }

    /// Live offers for an agent (the inbox shows them with a countdown).
    pub async fn pending_offers(&self, agent_id: Uuid) -> CoreResult<Vec<Offer>> {
        Ok(sqlx::query_as::<_, Offer>(&format!(
            "select {OFFER_COLUMNS} from offers where agent_id = $1 and state = 'pending' order by created_at"
        ))
        .bind(agent_id)
        .fetch_all(self.db())
        .await?)
    }
}

/// Channel-specific parts of an agent's reply ([`Hub::reply_with`]).
#[derive(Debug, Clone, Default)]
pub struct ReplyExtras {
    /// Another recipient than the customer (an email forward).
    pub recipient: Option<String>,
    /// Another subject than `Re: <the interaction's subject>`.
    pub subject: Option<String>,
    /// Keys merged into the outbox row's metadata (an object), read by the adapter.
    pub metadata: Option<serde_json::Value>,
    /// Attachment descriptors shown on the message (a JSON array).
    pub attachments: Option<serde_json::Value>,
}
