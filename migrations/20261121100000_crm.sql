-- CRM: customers, their channel identities, consent history, notes, appointments,
-- follow-up tasks and CSV import jobs. interactions.customer_id (core) points here
-- without a foreign key: core keeps only an opaque reference.

create table customers (
    id uuid primary key default gen_random_uuid(),
    external_id text unique,
    name text not null default '',
    -- Normalized name for duplicate suggestions (same name + birthday).
    name_key text generated always as (lower(regexp_replace(btrim(name), '\s+', ' ', 'g'))) stored,
    language text,
    time_zone text,
    birthday date,
    tags text[] not null default '{}',
    attributes jsonb not null default '{}',
    company text,
    consent_sms boolean not null default false,
    consent_email boolean not null default false,
    own_manager_id uuid references agents(id) on delete set null,
    merged_into uuid references customers(id) on delete set null,
    erased_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index customers_name_trgm on customers using gin (name gin_trgm_ops);
create index customers_name_birthday on customers(name_key, birthday)
    where birthday is not null and merged_into is null and erased_at is null;
create index customers_tags on customers using gin (tags);

-- One row per normalized address; an address belongs to exactly one customer.
-- kind: phone (voice and SMS, E.164), email (case-folded, IDNA), chat (visitor id).
create table customer_identities (
    id uuid primary key default gen_random_uuid(),
    customer_id uuid not null references customers(id) on delete cascade,
    kind text not null check (kind in ('phone','email','chat')),
    address text not null,
    created_at timestamptz not null default now(),
    unique (kind, address)
);
create index customer_identities_customer on customer_identities(customer_id);
create index customer_identities_address_trgm on customer_identities using gin (address gin_trgm_ops);

-- Marketing consent history: every change with its time and source.
create table customer_consent_events (
    id bigserial primary key,
    customer_id uuid not null references customers(id) on delete cascade,
    kind text not null check (kind in ('sms','email')),
    granted boolean not null,
    source text not null,
    actor_user_id uuid,
    at timestamptz not null default now()
);
create index customer_consent_events_customer on customer_consent_events(customer_id, at);

create table customer_notes (
    id uuid primary key default gen_random_uuid(),
    customer_id uuid not null references customers(id) on delete cascade,
    author_user_id uuid,
    author_name text not null default '',
    body text not null,
    created_at timestamptz not null default now()
);
create index customer_notes_customer on customer_notes(customer_id, created_at desc);

-- Reservations and service visits (what reminder campaigns are sent for).
create table appointments (
    id uuid primary key default gen_random_uuid(),
    customer_id uuid not null references customers(id) on delete cascade,
    starts_at timestamptz not null,
    time_zone text not null default 'UTC',
    duration_minutes int not null default 30 check (duration_minutes between 1 and 10080),
    location text not null default '',
    kind text not null default 'visit',
    status text not null default 'scheduled'
        check (status in ('scheduled','confirmed','cancelled','done','no_show')),
    notes text not null default '',
    created_by uuid,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index appointments_customer on appointments(customer_id, starts_at desc);
create index appointments_upcoming on appointments(starts_at) where status in ('scheduled','confirmed');

-- Follow-up tasks ("call back", "return visit") in an agent's inbox.
create table crm_tasks (
    id uuid primary key default gen_random_uuid(),
    agent_id uuid not null references agents(id) on delete cascade,
    customer_id uuid references customers(id) on delete cascade,
    interaction_id uuid,
    kind text not null default 'call_back' check (kind in ('call_back','return_visit','other')),
    title text not null,
    due_at timestamptz not null,
    done_at timestamptz,
    created_by uuid,
    created_at timestamptz not null default now()
);
create index crm_tasks_agent_open on crm_tasks(agent_id, due_at) where done_at is null;
create index crm_tasks_customer on crm_tasks(customer_id);

create table crm_import_jobs (
    id uuid primary key default gen_random_uuid(),
    status text not null default 'running' check (status in ('running','done','failed')),
    total bigint not null default 0,
    done bigint not null default 0,
    created bigint not null default 0,
    updated bigint not null default 0,
    rejected bigint not null default 0,
    errors jsonb not null default '[]',
    failure text,
    created_by uuid,
    created_at timestamptz not null default now(),
    finished_at timestamptz
);
