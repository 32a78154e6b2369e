#!/usr/bin/env bash
# A local Switchboard cluster on loopback, for tests and for trying it out:
#
#   PostgreSQL primary (127.0.0.1:15432) + streaming replica (127.0.0.1:15433)
#   3 hub nodes        HTTP 127.0.0.1:18081-18083, SIP UDP 127.0.0.1:15061-15063
#   HAProxy            HTTP/WebSocket 127.0.0.1:18080 (health check GET /readyz), stats :18090,
#                      PostgreSQL for Kamailio 127.0.0.1:15434 (the primary, else the replica)
#   Kamailio           SIP UDP 127.0.0.1:15060: the phones' registrar (digest against the
#                      hub's credentials, usrloc bindings in the cluster database, read by
#                      every node: registrar.edge) and dispatcher over the 3 nodes (OPTIONS
#                      probing, failover to the next node); agents are rung through it
#
# Usage: scripts/cluster.sh up|down|status
#
# Environment: CLUSTER_IMAP_PORT + CLUSTER_SMTP_PORT and CLUSTER_SMSC_PORT add an email
# and an smpp channel to every node (tests/cluster/drills.py --up starts those peers).
# CLUSTER_DIR (default /tmp/switchboard-cluster), SWITCHBOARD_BIN (default
# $CARGO_TARGET_DIR or target, then debug/switchboard; built if missing), PG_BIN (default the newest
# /usr/lib/postgresql/*/bin). Debian packages: postgresql haproxy kamailio
# kamailio-postgres-modules.
# The hubs use the multi-host database URL with target_session_attrs=read-write, so after
# `scripts/cluster.sh promote` (kills the primary, promotes the replica) they follow.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${CLUSTER_DIR:-/tmp/switchboard-cluster}"
BIN="${SWITCHBOARD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/switchboard}"
PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
PG_PRIMARY=15432
PG_REPLICA=15433
HTTP_PORTS=(18081 18082 18083)
SIP_PORTS=(15061 15062 15063)
LB_PORT=18080
STATS_PORT=18090
PG_LB_PORT=15434
KAM_PORT=15060
DB_URL="postgres://postgres@127.0.0.1:${PG_PRIMARY},127.0.0.1:${PG_REPLICA}/switchboard?target_session_attrs=read-write"

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pid_alive() { [ -f "$1" ] && kill -0 "$(head -1 "$1")" 2>/dev/null; }

wait_http() { # url, seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2
  return 1
}

pg_up() {
  mkdir -p "$DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$DIR"
  local opts="-c listen_addresses=127.0.0.1 -k $DIR -c wal_level=replica -c max_wal_senders=10 -c hot_standby=on"
  if [ ! -d "$DIR/pg-primary" ]; then
    as_pg "$PG_BIN/initdb" -D "$DIR/pg-primary" -U postgres --auth=trust -E UTF8 >/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg-primary" -o "-p $PG_PRIMARY $opts" -l "$DIR/pg-primary.log" -w start >/dev/null
    as_pg "$PG_BIN/psql" -h 127.0.0.1 -p $PG_PRIMARY -U postgres -qc "create database switchboard" >/dev/null
    as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p $PG_PRIMARY -U postgres -D "$DIR/pg-replica" -R -X stream --checkpoint=fast
  else
    pid_alive "$DIR/pg-primary/postmaster.pid" ||
      as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg-primary" -o "-p $PG_PRIMARY $opts" -l "$DIR/pg-primary.log" -w start >/dev/null
  fi
  pid_alive "$DIR/pg-replica/postmaster.pid" ||
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg-replica" -o "-p $PG_REPLICA $opts" -l "$DIR/pg-replica.log" -w start >/dev/null
  # Synchronous replication, on the primary only (set after the base backup, so the replica
  # does not inherit it and wait for a standby of its own once promoted): a commit is
  # acknowledged only when the replica has it, so promoting the replica loses no
  # acknowledged write. With asynchronous replication the promotion drill lost one
  # acknowledged chat message out of 3,269 (committed on the primary, not yet streamed).
  if pid_alive "$DIR/pg-primary/postmaster.pid"; then
    as_pg "$PG_BIN/psql" -h 127.0.0.1 -p $PG_PRIMARY -U postgres -qc "alter system set synchronous_standby_names = '*'" >/dev/null
    as_pg "$PG_BIN/psql" -h 127.0.0.1 -p $PG_PRIMARY -U postgres -qAtc "select pg_reload_conf()" >/dev/null
  fi
}

node_config() { # index
  local i=$1 http=${HTTP_PORTS[$1]} sip=${SIP_PORTS[$1]}
  mkdir -p "$DIR/node$i/rec" "$DIR/node$i/vm" "$DIR/node$i/attachments"
  cat >"$DIR/node$i/switchboard.toml" <<EOF
[http]
bind = "127.0.0.1:$http"
web_dir = "$ROOT/web"

[database]
url = "$DB_URL"
data_dir = "$DIR/node$i"

[cluster]
internal_url = "http://127.0.0.1:$http"

[outbox]
# A row claimed by a node that died is due again after this (default 300 s). Kept above the
# 60 s delivery timeout and the drills' 30 s SIGSTOP, so a slow or woken node's send is
# never doubled by another node's.
sending_lease_secs = 75

[[channels]]
type = "webchat"
name = "webchat"
attachments_dir = "$DIR/node$i/attachments"
# Every visitor of the drills comes through HAProxy's one address.
sessions_per_minute_per_ip = 100000
rate_limit_per_10s = 100

[[channels]]
type = "sip"
name = "pbx"
udp_listen = "127.0.0.1:$sip"
tcp_listen = "127.0.0.1:$sip"
public_ip = "127.0.0.1"
prompts_dir = "$ROOT/config/prompts"
recordings_dir = "$DIR/node$i/rec"
voicemail_dir = "$DIR/node$i/vm"
[channels.registrar]
realm = "switchboard"
credentials = { type = "external" }
# Kamailio holds the phones' registrations; agents are rung through it.
edge = "sip:127.0.0.1:$KAM_PORT"
[[channels.trunks]]
name = "edge"
allowed_sources = ["127.0.0.1"]
dids = { "100" = "main" }
[channels.ivr_flows.main]
start = "queue"
default_queue = "support"
[channels.ivr_flows.main.nodes.queue]
type = "enqueue"
EOF
  # Email and SMS peers (the drills start Dovecot, aiosmtpd and the scripted SMSC and pass
  # their ports): one mailbox and one SMPP bind, each leased to one node at a time.
  if [ -n "${CLUSTER_IMAP_PORT:-}" ] && [ -n "${CLUSTER_SMTP_PORT:-}" ]; then
    cat >>"$DIR/node$i/switchboard.toml" <<EOF

[[channels]]
type = "email"
name = "support-mail"
address = "support@shop.test"
attachments_dir = "$DIR/node$i/attachments"
lease_secs = 3
[channels.imap]
host = "127.0.0.1"
port = $CLUSTER_IMAP_PORT
security = "plain"
username = "support"
password = "secret"
poll_secs = 2
[channels.smtp]
host = "127.0.0.1"
port = $CLUSTER_SMTP_PORT
security = "plain"
EOF
  fi
  if [ -n "${CLUSTER_SMSC_PORT:-}" ]; then
    cat >>"$DIR/node$i/switchboard.toml" <<EOF

[[channels]]
type = "smpp"
name = "sms-main"
host = "127.0.0.1"
port = $CLUSTER_SMSC_PORT
system_id = "switchboard"
password = "secret"
source_address = "4930123456"
response_timeout_secs = 2
reconnect_min_ms = 100
reconnect_max_ms = 1000
lease_secs = 3
EOF
  fi
}

nodes_up() {
  [ -x "$BIN" ] || (cd "$ROOT" && cargo build --bin switchboard)
  # Migrations once, before three nodes race for them.
  "$BIN" migrate --config "$DIR/node0/switchboard.toml" >/dev/null
  local i
  for i in 0 1 2; do
    pid_alive "$DIR/node$i.pid" && continue
    RUST_LOG="${RUST_LOG:-info}" nohup "$BIN" serve --config "$DIR/node$i/switchboard.toml" >"$DIR/node$i.log" 2>&1 &
    echo $! >"$DIR/node$i.pid"
  done
  for i in 0 1 2; do wait_http "http://127.0.0.1:${HTTP_PORTS[$i]}/readyz" 60; done
}

haproxy_up() {
  command -v haproxy >/dev/null || { echo "haproxy not installed (apt-get install haproxy); skipping" >&2; return 0; }
  cat >"$DIR/haproxy.cfg" <<EOF
global
    # Raise with the FD limit (ulimit -n) for more agents and visitors per balancer.
    maxconn 8000
    pidfile $DIR/haproxy.pid
defaults
    mode http
    option http-server-close
    # A request whose node died before answering the connect goes to another node.
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # Agents' event streams and chat visitors' sockets stay open for hours.
    timeout tunnel 8h
    timeout client-fin 5s
frontend hub
    bind 127.0.0.1:$LB_PORT
    default_backend hubs
backend hubs
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions
    server node0 127.0.0.1:${HTTP_PORTS[0]} check
    server node1 127.0.0.1:${HTTP_PORTS[1]} check
    server node2 127.0.0.1:${HTTP_PORTS[2]} check
listen stats
    bind 127.0.0.1:$STATS_PORT
    stats enable
    stats uri /
# PostgreSQL for clients that take one host (Kamailio's driver): the primary while it
# answers, else the replica (promoted by the failover; until then it refuses writes, as
# the hubs' multi-host URL does). Sessions to a server marked down are cut, so the client
# reconnects to the other.
listen pg
    bind 127.0.0.1:$PG_LB_PORT
    mode tcp
    no option http-server-close
    timeout client 8h
    timeout server 8h
    option pgsql-check user postgres
    default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions
    server primary 127.0.0.1:$PG_PRIMARY check
    server replica 127.0.0.1:$PG_REPLICA check backup
EOF
  pid_alive "$DIR/haproxy.pid" || haproxy -D -f "$DIR/haproxy.cfg"
  wait_http "http://127.0.0.1:$LB_PORT/readyz" 20
}

# Writes the SIP edge's kamailio.cfg and dispatcher.list into a directory:
#   edge_config <dir> <sip port> <kamailio db url> <realm> <node sip address>...
# (also `scripts/cluster.sh edge-config ...`, which tests/cluster_edge.rs runs). Kamailio
# is the phones' registrar: it authenticates REGISTER itself against the hub's
# credentials (view sip_subscribers, HA1 per realm) and keeps the bindings with usrloc in
# PostgreSQL, written through (db_mode 1), where every hub node reads them
# (registrar.edge). INVITEs from a hub node to sip:<user>@<edge> go to the phone's
# binding; trunk calls are spread over the nodes by the dispatcher (Call-ID hash, OPTIONS
# probing, failover to the next node). Initial requests are record-routed, so in-dialog
# requests come back here with a Route and follow it (loose routing).
edge_config() {
  local dir=$1 port=$2 db=$3 realm=$4
  shift 4
  local node
  mkdir -p "$dir"
  : >"$dir/dispatcher.list"
  for node in "$@"; do echo "1 sip:$node" >>"$dir/dispatcher.list"; done
  cat >"$dir/kamailio.cfg" <<EOF
#!KAMAILIO
# The SIP edge: the agents' phones register here; trunk calls are spread over the hub nodes.
listen=udp:127.0.0.1:$port
children=2
log_stderror=no
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "db_postgres.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
loadmodule "dispatcher.so"
loadmodule "htable.so"
# Bindings in the hub's database, written through on every REGISTER (db_mode 1): every
# hub node reads them, and a restarted Kamailio loads them back.
modparam("usrloc", "db_url", "$db")
modparam("usrloc", "db_mode", 1)
# Digest credentials: the hub's own (HA1 per realm), through the view sip_subscribers.
modparam("auth_db", "db_url", "$db")
modparam("auth_db", "calculate_ha1", 0)
modparam("auth_db", "password_column", "ha1")
modparam("auth_db", "use_domain", 1)
modparam("auth_db", "version_table", 0)
modparam("auth_db", "load_credentials", "")
# A hop that has not answered an INVITE at all (not even 100 Trying) within 5 s has
# failed: a trunk call then goes to the next node (failure_route), not after 30 s.
modparam("tm", "fr_timer", 5000)
modparam("dispatcher", "list_file", "$dir/dispatcher.list")
# Failover support (flags bit 2): ds_select_dst keeps the other nodes for ds_next_dst.
modparam("dispatcher", "flags", 2)
# The node that answered each trunk call (Call-ID → node), for in-dialog requests that
# come without a Route: after a failover, or once a node is back, the Call-ID hash may
# name another node than the one holding the call. Kept 8 h (the longest call).
modparam("htable", "htable", "calls=>size=14;autoexpire=28800;")
# OPTIONS probing every 2 s; a node that does not answer is skipped until it does.
modparam("dispatcher", "ds_ping_interval", 2)
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_ping_from", "sip:edge@127.0.0.1")
modparam("dispatcher", "ds_probing_threshold", 1)
modparam("dispatcher", "ds_inactive_threshold", 1)
modparam("dispatcher", "xavp_dst", "_dsdst_")
modparam("dispatcher", "xavp_ctx", "_dsctx_")

request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (has_totag()) {
        # In-dialog: the Route we put there (Record-Route) leads to the other party.
        if (loose_route()) { t_relay(); exit; }
        if (is_method("ACK") && t_check_trans()) { t_relay(); exit; }
        # Without a Route (a UA that ignored Record-Route): a hub node's request goes to
        # its Request-URI (the phone's or the trunk's contact), a request to a hub node's
        # contact goes there, a trunk call's to the node that answered it; otherwise the
        # Call-ID hash picks the dialog's node.
        if (ds_is_from_list("1")) { t_relay(); exit; }
        if (ds_is_from_list("1", "2", "\$ru")) { t_relay(); exit; }
        if (\$sht(calls=>\$ci) != \$null) { \$du = \$sht(calls=>\$ci); t_relay(); exit; }
        if (ds_select_dst("1", "0")) { t_relay(); exit; }
        sl_send_reply("404", "Not here"); exit;
    }
    if (is_method("CANCEL")) { if (t_check_trans()) t_relay(); exit; }
    if (is_method("REGISTER")) { route(REGISTRAR); exit; }
    if (is_method("OPTIONS") && uri==myself && \$rU==\$null) { sl_send_reply("200", "OK"); exit; }
    record_route();
    # A hub node rings an agent: sip:<user>@<edge> goes to the phone's binding.
    if (ds_is_from_list("1") && uri==myself) {
        if (!lookup("location")) { sl_send_reply("480", "Not Registered"); exit; }
        t_relay();
        exit;
    }
    # A trunk call: hashed over the Call-ID (algorithm 0); failover to the next node.
    if (!ds_select_dst("1", "0")) { sl_send_reply("503", "No hub node"); exit; }
    t_on_failure("NEXT_NODE");
    t_on_reply("NODE_ANSWERED");
    t_relay();
    exit;
}

onreply_route[NODE_ANSWERED] {
    if (is_method("INVITE") && t_check_status("2[0-9][0-9]")) {
        \$sht(calls=>\$ci) = "sip:" + \$si + ":" + \$sp;
    }
}

route[REGISTRAR] {
    if (!www_authenticate("$realm", "sip_subscribers")) {
        www_challenge("$realm", "1");
        exit;
    }
    # A phone registers its own address only.
    if (\$au != \$tU) { sl_send_reply("403", "Forbidden"); exit; }
    consume_credentials();
    if (!save("location")) { sl_reply_error(); }
    exit;
}

failure_route[NEXT_NODE] {
    if (t_is_canceled()) exit;
    if (t_check_status("408|500|503") && ds_next_dst()) {
        t_on_failure("NEXT_NODE");
        t_on_reply("NODE_ANSWERED");
        t_relay();
    }
}
EOF
}

# Kamailio's own tables (version, location) in a database, once: from the installed
# package's scripts, so their layout matches the running Kamailio (see docs/deploy.md).
kamailio_tables() { # psql connection arguments...
  local have
  have=$(psql "$@" -Atc "select to_regclass('public.location') is not null")
  [ "$have" = t ] && return 0
  psql "$@" -q -v ON_ERROR_STOP=1 -f /usr/share/kamailio/postgres/standard-create.sql \
    -f /usr/share/kamailio/postgres/usrloc-create.sql >/dev/null
}

kamailio_up() {
  command -v kamailio >/dev/null || { echo "kamailio not installed (apt-get install kamailio kamailio-postgres-modules); skipping" >&2; return 0; }
  [ -f /usr/lib/x86_64-linux-gnu/kamailio/modules/db_postgres.so ] ||
    { echo "kamailio's PostgreSQL module missing (apt-get install kamailio-postgres-modules); skipping" >&2; return 0; }
  local nodes=() i
  for i in 0 1 2; do nodes+=("127.0.0.1:${SIP_PORTS[$i]}"); done
  kamailio_tables -h 127.0.0.1 -p $PG_PRIMARY -U postgres -d switchboard
  # Kamailio's PostgreSQL driver takes one host: HAProxy's `pg` frontend, which follows
  # the primary to the promoted replica (without HAProxy: the primary itself).
  local db_port=$PG_PRIMARY
  command -v haproxy >/dev/null && db_port=$PG_LB_PORT
  edge_config "$DIR" "$KAM_PORT" "postgres://postgres@127.0.0.1:${KAM_DB_PORT:-$db_port}/switchboard" switchboard "${nodes[@]}"
  if pid_alive "$DIR/kamailio.pid"; then kill "$(head -1 "$DIR/kamailio.pid")"; sleep 1; fi
  kamailio -f "$DIR/kamailio.cfg" -P "$DIR/kamailio.pid" -w "$DIR" -m 64 -M 8
}

up() {
  [ -n "$PG_BIN" ] || { echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 1; }
  pg_up
  local i
  for i in 0 1 2; do node_config $i; done
  nodes_up
  haproxy_up
  kamailio_up
  status
}

stop_pid() { # pidfile
  if pid_alive "$1"; then kill "$(head -1 "$1")" 2>/dev/null || true; fi
  rm -f "$1"
}

down() {
  local i
  stop_pid "$DIR/kamailio.pid"
  stop_pid "$DIR/haproxy.pid"
  for i in 0 1 2; do stop_pid "$DIR/node$i.pid"; done
  for d in pg-replica pg-primary; do
    [ -f "$DIR/$d/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$DIR/$d" -m fast -w stop >/dev/null 2>&1 || true
  done
  [ "${1:-}" = "--purge" ] && rm -rf "$DIR"
  echo "cluster stopped${1:+ and removed}"
}

promote() {
  # The failover drill: the primary dies, the replica becomes primary.
  [ -f "$DIR/pg-primary/postmaster.pid" ] && kill -9 "$(head -1 "$DIR/pg-primary/postmaster.pid")" || true
  as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg-replica" -w promote
}

status() {
  local i st
  for d in pg-primary pg-replica; do
    if pid_alive "$DIR/$d/postmaster.pid"; then
      st=$(as_pg "$PG_BIN/psql" -h 127.0.0.1 -p "$([ $d = pg-primary ] && echo $PG_PRIMARY || echo $PG_REPLICA)" -U postgres -Atc \
        "select case when pg_is_in_recovery() then 'standby' else 'primary' end" 2>/dev/null || echo "?")
      echo "$d: up ($st)"
    else
      echo "$d: down"
    fi
  done
  for i in 0 1 2; do
    if pid_alive "$DIR/node$i.pid"; then
      st=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${HTTP_PORTS[$i]}/readyz" || true)
      echo "node$i: up http://127.0.0.1:${HTTP_PORTS[$i]} sip 127.0.0.1:${SIP_PORTS[$i]} readyz=$st"
    else
      echo "node$i: down"
    fi
  done
  pid_alive "$DIR/haproxy.pid" && echo "haproxy: up http://127.0.0.1:$LB_PORT (stats :$STATS_PORT)" || echo "haproxy: down"
  pid_alive "$DIR/kamailio.pid" && echo "kamailio: up sip:127.0.0.1:$KAM_PORT" || echo "kamailio: down"
  if pid_alive "$DIR/pg-replica/postmaster.pid" || pid_alive "$DIR/pg-primary/postmaster.pid"; then
    echo "leases and nodes:"
    psql "$DB_URL" -Atc "select '  lease ' || name || ' holder ' || holder || ' token ' || token from leases where expires_at > now()
                         union all select '  node ' || node_id || ' ' || internal_url || ' heartbeat ' || round(extract(epoch from now() - heartbeat_at)::numeric, 1) || ' s ago' from cluster_nodes" 2>/dev/null || true
  fi
}

case "${1:-}" in
  up) up ;;
  down) down "${2:-}" ;;
  status) status ;;
  promote) promote ;;
  edge-config) shift; edge_config "$@" ;;
  *) echo "usage: $0 up|down [--purge]|status|promote|edge-config <dir> <port> <db url> <realm> <node>..." >&2; exit 2 ;;
esac
