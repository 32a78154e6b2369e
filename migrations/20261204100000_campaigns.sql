-- SMS campaigns (crm/src/campaigns): broadcasts, birthdays, appointment reminders and
-- follow-ups. A campaign plans one row per (campaign, customer, occurrence) ahead of time;
-- workers on any node claim due rows with FOR UPDATE SKIP LOCKED and hand each to the
-- outbox in the same transaction that marks it `sending`, so a message exists in the
-- outbox exactly when its recipient row says it was handed over. The SMS channel's
-- never-twice rules (sms_sent: `submitting` → `unknown`, never resent) then apply.

create table campaigns (
    id uuid primary key default gen_random_uuid(),
    name text not null check (length(name) between 1 and 200),
    kind text not null check (kind in ('broadcast','birthday','reminder','follow_up')),
    -- draft → running ⇄ paused → completed | cancelled (recurring kinds run until stopped).
    status text not null default 'draft'
        check (status in ('draft','running','paused','completed','cancelled')),
    audience jsonb not null default '{}',
    -- {"default": "...", "variants": {"es": "..."}, "fallbacks": {"first_name": "..."}}
    template jsonb not null,
    -- SMS channel instance (outbox metadata `adapter`); null: the first sms adapter.
    channel_name text,
    starts_at timestamptz,
    ends_at timestamptz,
    -- Birthday: local send time in the customer's zone.
    send_time time not null default '09:00',
    -- Reminder: minutes before the appointment; follow-up: minutes after its end.
    offset_minutes int not null default 1440 check (offset_minutes between 0 and 525600),
    -- Birthday: how late a send may still go out (hub down that morning), else skipped.
    grace_minutes int not null default 180 check (grace_minutes between 0 and 10080),
    -- Reminder for an appointment booked inside the window: 'send' at once or 'skip'.
    late_policy text not null default 'send' check (late_policy in ('send','skip')),
    -- Appointment kinds a reminder/follow-up is for (empty: all).
    appointment_kinds text[] not null default '{}',
    -- Quiet hours in the recipient's local time (null start: none); sends are deferred.
    quiet_start time default '21:00',
    quiet_end time default '08:00',
    -- Messages per second for this campaign (null: as fast as the channel's throttle).
    rate_per_second int check (rate_per_second is null or rate_per_second between 1 and 10000),
    -- Broadcast planning progress (long runs show it).
    planning_state text not null default 'idle' check (planning_state in ('idle','planning','planned','failed')),
    planned_count bigint not null default 0,
    audience_estimate bigint,
    planning_error text,
    version int not null default 1,
    created_by uuid,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index campaigns_active on campaigns(kind) where status = 'running';

create table campaign_recipients (
    id uuid primary key default gen_random_uuid(),
    campaign_id uuid not null references campaigns(id) on delete cascade,
    customer_id uuid not null references customers(id) on delete cascade,
    -- 'once' (broadcast), the local year (birthday), the appointment id (reminder, follow-up).
    occurrence text not null,
    appointment_id uuid references appointments(id) on delete set null,
    -- planned, deferred (quiet hours), sending (in the outbox), sent (SMSC accepted),
    -- delivered, failed, unknown (may or may not have gone: never resent), opted_out,
    -- skipped (with reason), cancelled (campaign cancelled before sending).
    status text not null default 'planned'
        check (status in ('planned','deferred','sending','sent','delivered','failed','unknown','opted_out','skipped','cancelled')),
    reason text,
    due_at timestamptz not null,
    -- Not sent after this (birthday grace end, appointment time): skipped instead.
    latest_at timestamptz,
    phone text,
    body text,
    parts smallint,
    outbox_id uuid,
    handed_at timestamptz,
    handed_by uuid,
    finished_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (campaign_id, customer_id, occurrence)
);
create index campaign_recipients_due on campaign_recipients(due_at) where status in ('planned','deferred');
create index campaign_recipients_open on campaign_recipients(campaign_id) where status in ('sending','sent');
create index campaign_recipients_campaign_status on campaign_recipients(campaign_id, status);
create index campaign_recipients_outbox on campaign_recipients(outbox_id) where outbox_id is not null;
create index campaign_recipients_customer on campaign_recipients(customer_id, handed_at);
