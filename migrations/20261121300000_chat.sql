-- Web chat channel (crate switchboard-chat): visitors, conversations with a per-conversation
-- message sequence (the resume cursor of the widget protocol), attachments, and the
-- token-signing secret generated on first start when none is configured.

create table chat_secrets (
    name text primary key,                 -- 'token:<adapter name>'
    secret text not null,
    created_at timestamptz not null default now()
);

create table chat_visitors (
    id uuid primary key,
    display_name text,
    email text,
    language text,
    created_at timestamptz not null default now(),
    last_seen_at timestamptz not null default now()
);

-- One conversation per visitor token; it spans several interactions (each time the
-- previous one closed, the next visitor message opens a new one with the same
-- conversation_key = conversation id).
create table chat_conversations (
    id uuid primary key,
    visitor_id uuid not null references chat_visitors(id) on delete cascade,
    adapter text not null,
    next_seq bigint not null default 0,    -- last sequence number handed out
    visitor_read_seq bigint not null default 0,
    created_at timestamptz not null default now()
);
create index chat_conversations_visitor on chat_conversations(visitor_id);

-- The order in which the visitor sees messages: seq is assigned under the conversation
-- row lock, so seq order is commit order and a resume `seq > last_acked` misses nothing.
create table chat_messages (
    conversation_id uuid not null references chat_conversations(id) on delete cascade,
    seq bigint not null,
    message_id uuid not null unique references messages(id) on delete cascade,
    primary key (conversation_id, seq)
);

create table chat_attachments (
    id uuid primary key,
    conversation_id uuid not null references chat_conversations(id) on delete cascade,
    sha256 text not null check (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes bigint not null check (size_bytes >= 0),
    content_type text not null,
    filename text not null,
    created_at timestamptz not null default now()
);
create index chat_attachments_conversation on chat_attachments(conversation_id);
