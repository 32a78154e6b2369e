-- Reports: rollups maintained from `interaction_events` (the single source) by an
-- idempotent worker; see docs/metrics.md for what each column means.
--
-- Idempotency: `report_progress.watermark` is the highest event id processed; ids at or
-- below it that were not visible when the worker passed them (a transaction still open)
-- are listed in `report_skipped_events` and processed when they appear. The watermark,
-- the skipped list, the contact and agent state and the rollup increments of a batch are
-- written in one transaction, so a crash or a replay never counts an event twice.

-- Per-queue report settings (absent row: defaults).
create table report_queue_settings (
    queue_id uuid primary key references queues(id) on delete cascade,
    -- Abandons after a wait shorter than this are "short" and counted apart.
    short_abandon_secs int not null default 5 check (short_abandon_secs >= 0),
    -- Service-level formula (see docs/metrics.md).
    sl_formula text not null default 'answered_vs_answered_and_long_abandoned'
        check (sl_formula in ('answered_vs_answered_and_long_abandoned', 'answered_vs_answered',
                              'answered_vs_offered', 'answered_and_abandoned_vs_all'))
);

-- One row per contact (interaction): the worker's state and the raw contact record the
-- CSV export streams.
create table report_contacts (
    interaction_id uuid primary key,
    channel text not null,
    direction text not null,
    queue_id uuid,
    first_queue_id uuid,
    customer_id uuid,
    campaign_id text,
    reopened boolean not null default false,
    created_at timestamptz not null,
    enqueued_at timestamptz,
    answered_at timestamptz,
    first_agent_id uuid,
    wait_ms bigint,
    held_by uuid,
    segment_started_at timestamptz,
    hold_started_at timestamptz,
    wrap_started_at timestamptz,
    segment_hold_ms bigint not null default 0,
    talk_ms bigint not null default 0,
    hold_ms bigint not null default 0,
    wrap_ms bigint not null default 0,
    first_inbound_at timestamptz,
    first_response_at timestamptz,
    inbound_messages int not null default 0,
    replies int not null default 0,
    notes int not null default 0,
    transfers int not null default 0,
    ring_no_answers int not null default 0,
    outcome text not null default 'waiting',
    disposition text,
    ended_at timestamptz,
    last_event_id bigint not null
);
create index report_contacts_created on report_contacts(created_at);

-- Agent presence and how many contacts they hold, for time in state and occupancy.
create table report_agent_state (
    agent_id uuid primary key,
    presence text not null,
    since timestamptz not null,
    holding int not null default 0,
    last_event_id bigint not null
);

-- The rollups. grain 0: 15-minute UTC buckets; 1: UTC hours; 2: local days in the zone
-- `report_progress.day_zone`. Facts that belong to no queue, agent or channel use the nil
-- uuid / ''.
create table report_facts (
    grain smallint not null,
    bucket timestamptz not null,
    queue_id uuid not null,
    agent_id uuid not null,
    channel text not null,
    offered bigint not null default 0,
    answered bigint not null default 0,
    answered_in_sl bigint not null default 0,
    wait_answered_ms bigint not null default 0,
    abandoned bigint not null default 0,
    abandoned_short bigint not null default 0,
    abandoned_in_sl bigint not null default 0,
    abandon_wait_ms bigint not null default 0,
    max_wait_ms bigint not null default 0,
    voicemail bigint not null default 0,
    overflowed bigint not null default 0,
    callback bigint not null default 0,
    transferred bigint not null default 0,
    transferred_in bigint not null default 0,
    reopened bigint not null default 0,
    offers bigint not null default 0,
    ring_no_answer bigint not null default 0,
    declined bigint not null default 0,
    handled bigint not null default 0,
    talk_ms bigint not null default 0,
    hold_ms bigint not null default 0,
    wrap_ms bigint not null default 0,
    holds bigint not null default 0,
    inbound_msgs bigint not null default 0,
    replies bigint not null default 0,
    notes bigint not null default 0,
    first_responses bigint not null default 0,
    first_response_ms bigint not null default 0,
    resolved bigint not null default 0,
    resolution_ms bigint not null default 0,
    disp_complaint bigint not null default 0,
    disp_inquiry bigint not null default 0,
    disp_suggestion bigint not null default 0,
    disp_other bigint not null default 0,
    available_ms bigint not null default 0,
    away_ms bigint not null default 0,
    busy_ms bigint not null default 0,
    wrap_up_state_ms bigint not null default 0,
    handling_ms bigint not null default 0,
    idle_ms bigint not null default 0,
    primary key (grain, bucket, queue_id, agent_id, channel)
);

-- Counters along a free dimension: IVR menu choices (`ivr`), campaign replies (`campaign`).
create table report_counts (
    grain smallint not null,
    bucket timestamptz not null,
    dim text not null,
    key text not null,
    queue_id uuid not null,
    channel text not null,
    n bigint not null default 0,
    primary key (grain, bucket, dim, key, queue_id, channel)
);

create table report_progress (
    name text primary key,
    watermark bigint not null default 0,
    day_zone text not null,
    updated_at timestamptz not null default now()
);

create table report_skipped_events (
    id bigint primary key,
    skipped_at timestamptz not null default now()
);
