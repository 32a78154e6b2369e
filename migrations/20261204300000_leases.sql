-- One lease mechanism for every single-owner job (a mailbox, an SMPP bind, a planner):
-- a row per job name, held by one node until `expires_at`. `token` is the fencing token:
-- it grows by one with every new acquisition (never on a renewal), so a write guarded by
-- "name still held with my token" fails for a node that was paused past its expiry and
-- woke up after another node took the job over.
create table leases (
    name text primary key,
    holder uuid not null,
    token bigint not null,
    acquired_at timestamptz not null default now(),
    expires_at timestamptz not null
);
