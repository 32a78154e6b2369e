-- History survives. Reports read `interaction_events`, `offers` and `interactions`, so
-- nothing may silently delete or blank those rows:
--  * events are append-only: no cascade from `interactions` (the no-delete rule on events
--    stays); deleting an interaction that has events now fails instead of half-working;
--  * agents and queues are archived (`archived_at`) rather than deleted; the API's DELETE
--    sets it, archived rows leave lists and routing, and history keeps its foreign keys;
--  * a hard delete of an agent or queue that history points at is refused (RESTRICT)
--    instead of cascading into offers or blanking `interactions.queue_id`/`agent_id`.
-- Login throttling state and the audit of sign-ins live here too (see core/src/auth.rs).

alter table interaction_events
    drop constraint interaction_events_interaction_id_fkey,
    add constraint interaction_events_interaction_id_fkey
        foreign key (interaction_id) references interactions(id) on delete restrict;

alter table agents add column archived_at timestamptz;
alter table queues add column archived_at timestamptz;

-- A queue's name is unique among live queues only, so an archived queue's name can be
-- reused by a new one.
alter table queues drop constraint queues_name_key;
create unique index queues_name_live on queues(name) where archived_at is null;

alter table offers
    drop constraint offers_agent_id_fkey,
    add constraint offers_agent_id_fkey foreign key (agent_id) references agents(id) on delete restrict;

alter table interactions
    drop constraint interactions_queue_id_fkey,
    add constraint interactions_queue_id_fkey foreign key (queue_id) references queues(id) on delete restrict,
    drop constraint interactions_agent_id_fkey,
    add constraint interactions_agent_id_fkey foreign key (agent_id) references agents(id) on delete restrict;

alter table messages
    drop constraint messages_author_agent_id_fkey,
    add constraint messages_author_agent_id_fkey foreign key (author_agent_id) references agents(id) on delete restrict;

-- Failed sign-ins per key (`user:<name>` or `ip:<address>`), shared by every hub node.
-- `failures` counts within the window that started at `window_start`; reaching the limit
-- locks the key until `locked_until`, each further lockout twice as long (`lockouts`).
create table login_throttle (
    key text primary key,
    failures int not null default 0,
    window_start timestamptz not null default now(),
    locked_until timestamptz,
    lockouts int not null default 0,
    last_failure_at timestamptz not null default now()
);
