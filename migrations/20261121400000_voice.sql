-- Voice channel: agents' SIP digest credentials (HA1 = MD5(sip_user:realm:password);
-- the password itself is never stored). The SIP user is agents.sip_user.
create table sip_credentials (
    agent_id uuid primary key references agents(id) on delete cascade,
    ha1 text not null,
    realm text not null,
    updated_at timestamptz not null default now()
);
