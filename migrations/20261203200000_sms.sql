-- SMS channel (adapters/sms): inbound parts of concatenated messages (reassembled from
-- here, so a restart between parts loses nothing), sent messages with their SMSC ids and
-- forward-only status, the SMSC-id lookup keys for receipts, opt-out keyword handling, and
-- the per-bind lease that lets exactly one node hold an SMPP bind.

-- One row per received part; the message is ingested once every part is here.
create table sms_inbound_parts (
    channel_name text not null,
    source text not null,
    destination text not null,
    reference integer not null,
    total smallint not null check (total between 1 and 255),
    seq smallint not null check (seq between 1 and total),
    body text not null,
    received_at timestamptz not null default now(),
    primary key (channel_name, source, destination, reference, total, seq)
);
create index sms_inbound_parts_received on sms_inbound_parts(received_at);

-- One row per outbound message (outbox row): its SMPP fate.
-- status: submitting (written, no answer yet), unknown (no answer ever came: never resent
-- automatically), submitted, enroute, accepted, delivered, expired, deleted,
-- undeliverable, rejected, failed. status_rank only grows (see receipt.rs).
create table sms_sent (
    outbox_id uuid primary key,
    channel_name text not null,
    interaction_id uuid,
    recipient text not null,
    parts smallint not null,
    parts_submitted smallint not null default 0,
    status text not null,
    status_rank smallint not null default 0,
    smsc_ids text[] not null default '{}',
    error text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index sms_sent_interaction on sms_sent(interaction_id) where interaction_id is not null;

-- Lookup keys of the SMSC's message ids (the id itself, its value read as hex and as
-- decimal) so a receipt finds its message whichever way the SMSC writes the id.
create table sms_message_ids (
    channel_name text not null,
    id_key text not null,
    preference smallint not null,
    outbox_id uuid not null references sms_sent(outbox_id) on delete cascade,
    created_at timestamptz not null default now(),
    primary key (channel_name, id_key, outbox_id)
);

-- Keyword messages (STOP, START, HELP) handled by the adapter, once per inbound message.
create table sms_keyword_messages (
    dedupe_key text primary key,
    channel_name text not null,
    phone text not null,
    keyword text not null,
    language text not null,
    customer_id uuid,
    received_at timestamptz not null default now()
);

-- The opt-out state per phone number (E.164), whatever the CRM knows about it.
create table sms_opt_outs (
    phone text primary key,
    opted_out boolean not null,
    source text not null,
    changed_at timestamptz not null default now()
);

-- Who holds each SMPP bind: one node at a time, until expires_at.
create table sms_bind_leases (
    channel_name text primary key,
    node_id uuid not null,
    expires_at timestamptz not null
);
