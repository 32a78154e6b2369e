-- Email channel (crate switchboard-email): raw messages stored before anything parses
-- them, deduplicated per mailbox; the per-mailbox IMAP checkpoint and lease; conversation
-- tokens and the Message-IDs sent and received for threading; the outbound ledger that
-- keeps a message handed to SMTP from ever being sent twice.

-- Every fetched message, byte for byte, committed before the server is told anything.
-- dedupe_id is `mid:<Message-ID>` or `sha256:<hash of the bytes>` when there is none.
create table email_raw_messages (
    id uuid primary key default gen_random_uuid(),
    mailbox text not null,                  -- adapter instance name
    dedupe_id text not null,
    uid_validity bigint,
    uid bigint,
    sender text,
    size_bytes bigint not null check (size_bytes >= 0),
    sha256 text not null check (sha256 ~ '^[0-9a-f]{64}$'),
    raw bytea not null,
    status text not null default 'stored'
        check (status in ('stored','ingested','unparseable','bounce','rate_limited')),
    kind text,                               -- personal / automatic / bulk / bounce
    threaded_by text,                        -- token / reference / subject_tag / sender_subject / new
    interaction_id uuid references interactions(id) on delete set null,
    message_id uuid,                         -- messages.id once ingested
    error text,
    stored_at timestamptz not null default now(),
    processed_at timestamptz,
    unique (mailbox, dedupe_id)
);
create index email_raw_sender on email_raw_messages(mailbox, sender, stored_at);
create index email_raw_unprocessed on email_raw_messages(mailbox, stored_at) where status = 'stored';
create index email_raw_message on email_raw_messages(message_id) where message_id is not null;

-- Where the import of a mailbox folder stands.
create table email_checkpoints (
    mailbox text primary key,
    folder text not null,
    uid_validity bigint not null,
    last_uid bigint not null default 0,
    updated_at timestamptz not null default now()
);

-- One node polls a mailbox at a time; `fence` grows with every new holder, and a
-- checkpoint write checks it, so a node that lost its lease cannot move the checkpoint.
create table email_leases (
    mailbox text primary key,
    owner uuid not null,
    fence bigint not null default 1,
    expires_at timestamptz not null,
    acquired_at timestamptz not null default now()
);

-- A conversation: its token appears in our From address (`support+<token>@…`) and as
-- the subject tag `[#<token>]`; conversation_key of its interactions = `email:<token>`.
create table email_threads (
    token text primary key,
    mailbox text not null,
    customer_address text,
    base_subject text not null default '',
    cc text[] not null default '{}',        -- customers Cc'd, kept on the conversation
    last_message_id text,                    -- answered by our next reply (In-Reply-To)
    refs text[] not null default '{}',       -- References of the thread, oldest first
    created_at timestamptz not null default now()
);
create index email_threads_sender on email_threads(mailbox, customer_address, base_subject);

-- Message-IDs seen in a conversation, ours and the customers'.
create table email_message_ids (
    mailbox text not null,
    message_id text not null,
    token text not null references email_threads(token) on delete cascade,
    direction text not null check (direction in ('inbound','outbound')),
    outbox_id uuid,
    created_at timestamptz not null default now(),
    primary key (mailbox, message_id)
);

-- Outbound mail: written `handing` before the SMTP transaction starts. A row found in
-- `handing` on a retry means the outcome is unknown (the node died or the connection
-- broke after DATA): it becomes `unknown` and is not sent again.
create table email_outbound (
    outbox_id uuid primary key,
    mailbox text not null,
    message_id text not null,
    token text,
    recipients text[] not null default '{}',
    state text not null check (state in ('handing','sent','failed','unknown','bounced')),
    smtp_response text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index email_outbound_message_id on email_outbound(message_id);

-- Attachments and inline images of received mail; files live at `<dir>/<sha256>`.
create table email_attachments (
    id uuid primary key default gen_random_uuid(),
    raw_id uuid not null references email_raw_messages(id) on delete cascade,
    sha256 text not null check (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes bigint not null check (size_bytes >= 0),
    content_type text not null,
    filename text not null,
    content_id text,
    inline boolean not null default false,
    stored boolean not null default true     -- false: over the size limit, listed only
);
create index email_attachments_raw on email_attachments(raw_id);
