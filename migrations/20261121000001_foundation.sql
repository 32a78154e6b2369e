-- Foundation schema: users and auth, agents, queues, interactions, messages,
-- append-only interaction events, offers, outbox, audit log.
create extension if not exists pg_trgm;
create extension if not exists pgcrypto;

create table users (
    id uuid primary key default gen_random_uuid(),
    username text not null unique check (length(username) between 1 and 100),
    display_name text not null default '',
    password_hash text not null,
    roles text[] not null default '{}',
    disabled boolean not null default false,
    created_at timestamptz not null default now()
);

create table sessions (
    id text primary key,              -- sha256 of the cookie value
    user_id uuid not null references users(id) on delete cascade,
    csrf_token text not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index sessions_user on sessions(user_id);

create table api_tokens (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null references users(id) on delete cascade,
    name text not null,
    token_hash text not null unique,  -- sha256 of the secret
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    last_used_at timestamptz,
    revoked boolean not null default false
);

create table audit_log (
    id bigserial primary key,
    at timestamptz not null default now(),
    actor_user_id uuid,
    action text not null,
    target_kind text not null,
    target_id text not null,
    details jsonb not null default '{}'
);
create index audit_log_target on audit_log(target_kind, target_id);

create table agents (
    id uuid primary key default gen_random_uuid(),
    user_id uuid unique references users(id) on delete set null,
    name text not null,
    skills jsonb not null default '{}',          -- {"language:es": 5, "billing": 3}
    capacity jsonb not null default '{"voice":1,"chat":3,"email":8,"sms":5}',
    groups text[] not null default '{}',          -- overflow groups ("spare staff")
    sip_user text unique,
    presence text not null default 'offline'
        check (presence in ('offline','available','away','busy','wrap_up')),
    presence_since timestamptz not null default now(),
    last_idle_at timestamptz not null default now(), -- when the agent last became free
    created_at timestamptz not null default now()
);

create table queues (
    id uuid primary key default gen_random_uuid(),
    name text not null unique,
    entry_rules jsonb not null default '[]',
    requirement text not null default '',
    priority int not null default 0,
    strategy text not null default 'longest_idle'
        check (strategy in ('longest_idle','least_occupied','round_robin','best_skill','ring_all')),
    sla_target_pct int not null default 80,
    sla_target_secs int not null default 20,
    business_hours jsonb,                         -- null = always open
    max_wait_secs int,
    escalation jsonb not null default '[]',
    accept_timeout_secs int not null default 20,
    wrap_up_secs int not null default 0,
    sticky_timeout_secs int not null default 30,
    rule_order int not null default 100,
    created_at timestamptz not null default now()
);

-- Customers live in the CRM module; core only keeps an opaque reference.
create table interactions (
    id uuid primary key default gen_random_uuid(),
    channel text not null check (channel in ('voice','sms','email','chat')),
    direction text not null default 'inbound' check (direction in ('inbound','outbound')),
    conversation_key text,
    customer_id uuid,
    customer_address text,
    subject text,
    queue_id uuid references queues(id),
    priority int not null default 0,
    requirement text not null default '',
    preferred_agent_id uuid references agents(id) on delete set null,
    agent_id uuid references agents(id) on delete set null,
    status text not null default 'queued'
        check (status in ('queued','offered','active','wrap_up','closed','abandoned','voicemail','overflowed')),
    disposition text check (disposition in ('complaint','inquiry','suggestion','other')),
    summary text,
    metadata jsonb not null default '{}',
    created_at timestamptz not null default now(),
    enqueued_at timestamptz not null default now(),
    offered_at timestamptz,
    answered_at timestamptz,
    wrap_up_at timestamptz,
    closed_at timestamptz,
    updated_at timestamptz not null default now()
);
create index interactions_waiting on interactions(priority desc, enqueued_at) where status = 'queued';
create index interactions_agent on interactions(agent_id) where status in ('offered','active','wrap_up');
create index interactions_customer on interactions(customer_id, created_at desc);
create index interactions_created on interactions(created_at desc);
create unique index interactions_open_conversation on interactions(channel, conversation_key)
    where conversation_key is not null and status in ('queued','offered','active','wrap_up');

-- The dedupe ledger: one row per inbound item, keyed by the channel's own id.
create table inbound_items (
    channel text not null,
    dedupe_key text not null,
    interaction_id uuid not null references interactions(id) on delete cascade,
    message_id uuid,
    received_at timestamptz not null default now(),
    primary key (channel, dedupe_key)
);

create table messages (
    id uuid primary key default gen_random_uuid(),
    interaction_id uuid not null references interactions(id) on delete cascade,
    direction text not null check (direction in ('inbound','outbound','internal')),
    author_agent_id uuid references agents(id) on delete set null,
    body text not null,
    content_type text not null default 'text/plain',
    attachments jsonb not null default '[]',
    client_message_id text,
    created_at timestamptz not null default now()
);
create index messages_interaction on messages(interaction_id, created_at);

create table interaction_events (
    id bigserial primary key,
    interaction_id uuid references interactions(id) on delete cascade,
    agent_id uuid,
    queue_id uuid,
    kind text not null,
    data jsonb not null default '{}',
    at timestamptz not null default now()
);
create index interaction_events_interaction on interaction_events(interaction_id, id);
create index interaction_events_at on interaction_events(at);
create rule interaction_events_no_update as on update to interaction_events do instead nothing;
create rule interaction_events_no_delete as on delete to interaction_events
    where old.interaction_id is not null do instead nothing;

create table offers (
    id uuid primary key default gen_random_uuid(),
    interaction_id uuid not null references interactions(id) on delete cascade,
    agent_id uuid not null references agents(id) on delete cascade,
    channel text not null,
    ring_all boolean not null default false,
    state text not null default 'pending'
        check (state in ('pending','accepted','declined','timeout','cancelled','released')),
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    ended_at timestamptz
);
-- Invariant 1: at most one live offer or holder per interaction (ring-all aside),
-- and never two accepted.
create unique index offers_one_live on offers(interaction_id)
    where state in ('pending','accepted') and not ring_all;
create unique index offers_one_accepted on offers(interaction_id) where state = 'accepted';
create index offers_agent_live on offers(agent_id, channel) where state in ('pending','accepted');
create index offers_pending_expiry on offers(expires_at) where state = 'pending';

-- Invariant 2: an agent's per-channel capacity is never exceeded. Checked under the
-- agent's row lock so concurrent inserts from any node serialize.
create function offers_check_capacity() returns trigger language plpgsql as $$
declare
    cap int;
    used int;
begin
    select coalesce((capacity ->> new.channel)::int, 0) into cap
      from agents where id = new.agent_id for update;
    select count(*) into used from offers
     where agent_id = new.agent_id and channel = new.channel
       and state in ('pending','accepted') and id <> new.id;
    if used >= cap then
        raise exception 'agent % at capacity for %', new.agent_id, new.channel
            using errcode = 'P0001', hint = 'capacity';
    end if;
    return new;
end $$;
create trigger offers_capacity before insert or update of state on offers
    for each row when (new.state in ('pending','accepted'))
    execute function offers_check_capacity();

create table outbox (
    id uuid primary key default gen_random_uuid(),
    idempotency_key text not null unique,
    channel text not null,
    interaction_id uuid references interactions(id) on delete set null,
    message_id uuid,
    recipient text not null,
    subject text,
    body text not null,
    metadata jsonb not null default '{}',
    status text not null default 'pending' check (status in ('pending','sending','sent','failed')),
    attempts int not null default 0,
    max_attempts int not null default 8,
    next_attempt_at timestamptz not null default now(),
    last_error text,
    provider_id text,
    created_at timestamptz not null default now(),
    sent_at timestamptz
);
create index outbox_due on outbox(next_attempt_at) where status in ('pending','sending');

create table canned_responses (
    id uuid primary key default gen_random_uuid(),
    title text not null,
    body text not null,
    created_at timestamptz not null default now()
);

create table webhooks (
    id uuid primary key default gen_random_uuid(),
    url text not null,
    secret text not null,
    kinds text[] not null default '{}',
    created_at timestamptz not null default now()
);
