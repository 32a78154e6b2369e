-- Cluster membership and call ownership (core/src/cluster.rs).

-- Every running hub node: its id (new per process), the URL other nodes reach its HTTP
-- server at (call-control forwarding) and its heartbeat. A node whose heartbeat is older
-- than cluster.node_timeout_ms is dead.
create table cluster_nodes (
    node_id uuid primary key,
    internal_url text not null,
    started_at timestamptz not null default now(),
    heartbeat_at timestamptz not null default now()
);

-- The node that holds each live call (SIP dialogs and media are per node): call controls
-- reaching another node are forwarded there; a dead node's calls are ended (node_lost).
create table call_owners (
    interaction_id uuid primary key,
    call_id text not null,
    node_id uuid not null,
    channel_name text not null,
    since timestamptz not null default now()
);
create index call_owners_node on call_owners(node_id);
create index call_owners_call on call_owners(call_id);
