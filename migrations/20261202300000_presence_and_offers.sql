-- Agent eligibility, presence and offers, stale chats.

-- Live phone registrations, published by the voice adapter of each node that holds one:
-- the router offers voice only to agents whose `sip_user` has a binding here that has
-- not expired (a phone that cannot ring is not eligible).
create table voice_registrations (
    sip_user text not null,
    node_id uuid not null,
    expires_at timestamptz not null,
    updated_at timestamptz not null default now(),
    primary key (sip_user, node_id)
);
create index voice_registrations_expiry on voice_registrations(expires_at);

-- Live inbox connections (the event stream WebSocket) per agent, one row per socket,
-- refreshed by a heartbeat from the node serving it. Presence follows them: an agent who
-- is available or in wrap-up with no connection seen for the grace period goes offline.
create table agent_connections (
    id uuid primary key,
    agent_id uuid not null references agents(id) on delete cascade,
    node_id uuid not null,
    opened_at timestamptz not null default now(),
    seen_at timestamptz not null default now()
);
create index agent_connections_agent on agent_connections(agent_id, seen_at);
-- When the agent's last inbox connection closed (the grace period starts there).
alter table agents add column last_connection_at timestamptz;

-- Why an offer ended without acceptance: declined, timeout (with or without the
-- ring-no-answer penalty), withdrawn, unreachable. The router does not offer the same
-- interaction straight back to an agent who declined it or let it ring out.
alter table offers add column end_reason text;
create index offers_recent_refusals on offers(interaction_id, ended_at)
    where state in ('declined','timeout','cancelled') and end_reason is not null;

-- A waiting chat whose visitor left (widget closed): shown to supervisors, closed as
-- abandoned after `router.abandon_left_chat_secs`.
alter table interactions add column visitor_left_at timestamptz;
create index interactions_visitor_left on interactions(visitor_left_at)
    where visitor_left_at is not null and status in ('queued','offered');
