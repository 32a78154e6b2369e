#!/usr/bin/env python3
"""Cluster fault drills against `scripts/cluster.sh` (real processes on loopback).

Run:  python3 tests/cluster/drills.py --up [--visitors 20] [--pause 30]   (tests/cluster/run.sh)
 or:  scripts/cluster.sh up && python3 tests/cluster/drills.py              (chat and SIP only)

Load: chat visitors through HAProxy (HTTP fallback of the chat protocol), each sending a
message every 0.5 s with a unique client_msg_id and resending the same id until acked;
SIPp callers through Kamailio; with --up (peers started here, then `scripts/cluster.sh up`
with their ports): customer mail appended to Dovecot's `support` INBOX every second (the
mailbox leased to one node, `lease_secs = 3`), and mobile-originated SMS from the scripted
SMSC (tests/sms/smsc.mjs) every 0.5 s, resent until a node answers deliver_sm with 0, and
an SMS broadcast to --campaign recipients (default 1,500) at 10 a second, through all drills.
Drills, one after another, each followed by recovery (the node restarted):
  1. kill -9 of a node that is not the router leader
  2. kill -9 of the router leader
  3. SIGSTOP of the router leader for --pause s, then SIGCONT: the `router` lease moves to
     another node with a higher token (the standby ends the paused leader's lock session
     once its lease expired); the woken node does not lead and its commits are fenced
  4. PostgreSQL primary killed, replica promoted (`scripts/cluster.sh promote`)
Agents (tests/cluster/agents.py, --agents, default 6): each holds its inbox event stream
open through HAProxy (reconnecting when its node dies), goes available, accepts chat, email
and SMS offers, replies once to each email and SMS (idempotency key, resent until a node
answers) and closes it 1.5 s after accepting, so it keeps taking new ones. Each has a
phone (unless --no-phones): one SIPp UAS answers every call the hub rings, registered
for each agent through Kamailio every 10 s; the caller hangs up after 20 s and the agent
closes the call from wrap-up. Callers nobody answers wait until they hang up.
After each, per channel: every acked message stored (0 inbound lost), none stored twice
(chat messages, mails by Message-ID token, SMS by text); no interaction held by two agents
at overlapping times (offers and `accepted` events) and no agent over its capacity; every
reply a node acknowledged delivered exactly once at the peer (aiosmtpd's Maildir by a token
in the body, the SMSC's submit_sm by text; waited for up to 100 s: a reply claimed by a
killed node is due again after the nodes' 75 s outbox sending lease; a reply whose node died
mid-hand-off (SMTP) or mid-submit (SMPP) is reported as unknown — recorded failed with a
delivery_failed event, never resent: at most once —, not as missing);
no campaign recipient texted twice (after each drill), and at the end the broadcast completed
with every recipient texted exactly once or recorded `unknown`/`failed` (never missing);
the calls the dead node held ended `node_lost`, and none of the calls held by the other
nodes dropped (each answered, still waiting or ended by the caller's BYE); the time until the load is
accepted again and until a router leader is back. Prints a table; exits 1 when an invariant
failed. Bounded: every wait has a deadline.
"""
import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import agents as drill_agents  # noqa: E402
import peers as channel_peers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIR = os.environ.get("CLUSTER_DIR", "/tmp/switchboard-cluster")
LB = "http://127.0.0.1:18080"
NODES = ["http://127.0.0.1:18081", "http://127.0.0.1:18082", "http://127.0.0.1:18083"]
DB_URL = "postgres://postgres@127.0.0.1:15432,127.0.0.1:15433/switchboard?target_session_attrs=read-write"


def http(method, url, body=None, headers=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except Exception:
        return 0, None


def psql(sql):
    env = dict(os.environ)
    out = subprocess.run(["psql", DB_URL, "-Atc", sql], capture_output=True, text=True, env=env, timeout=20)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout.strip()


def node_pid(i):
    with open(f"{DIR}/node{i}.pid") as f:
        return int(f.read().split()[0])


def ready(i):
    st, body = http("GET", NODES[i] + "/readyz", timeout=2)
    return st == 200, bool(body and body.get("router_leader"))


def leader_index():
    for i in range(3):
        ok, lead = ready(i)
        if ok and lead:
            return i
    return None


def restart_node(i):
    cfg = f"{DIR}/node{i}/switchboard.toml"
    binary = os.environ.get("SWITCHBOARD_BIN", f"{ROOT}/target/debug/switchboard")
    log = open(f"{DIR}/node{i}.log", "a")
    p = subprocess.Popen([binary, "serve", "--config", cfg], stdout=log, stderr=log, start_new_session=True)
    with open(f"{DIR}/node{i}.pid", "w") as f:
        f.write(str(p.pid))
    deadline = time.time() + 60
    while time.time() < deadline:
        if ready(i)[0]:
            return
        time.sleep(0.2)
    raise RuntimeError(f"node{i} did not come back")


class Load:
    """Chat visitors sending through the balancer; remembers every acked message."""

    def __init__(self, visitors):
        self.visitors = visitors
        self.acked = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.last_ok = time.time()
        self.last_fail = 0.0
        self.failures = 0
        self.threads = [threading.Thread(target=self.visitor, args=(k,), daemon=True) for k in range(visitors)]

    def start(self):
        for t in self.threads:
            t.start()

    def visitor(self, k):
        token = None
        n = 0
        pending = None
        while not self.stop.is_set():
            if token is None:
                st, body = http("POST", LB + "/chat/v1/sessions", {"name": f"drill visitor {k}"})
                if st in (200, 201) and body:
                    token = body["token"]
                else:
                    time.sleep(0.5)
                    continue
            if pending is None:
                n += 1
                pending = f"drill-{k}-{n}-{uuid.uuid4().hex[:8]}"
            st, body = http("POST", LB + "/chat/v1/messages", {"client_msg_id": pending, "body": pending}, {"x-chat-token": token})
            if st in (200, 201):
                with self.lock:
                    self.acked.add(pending)
                    self.last_ok = time.time()
                pending = None
                time.sleep(0.5)
            else:
                with self.lock:
                    self.failures += 1
                    self.last_fail = time.time()
                time.sleep(0.2)  # resend the same id

    def wait_flowing(self, since, limit=90):
        deadline = time.time() + limit
        while time.time() < deadline:
            with self.lock:
                if self.last_ok > since + 0.01:
                    return self.last_ok - since
            time.sleep(0.05)
        return None


def node_id_of(i):
    return psql(f"select node_id from cluster_nodes where internal_url = '{NODES[i]}' order by heartbeat_at desc limit 1")


def calls_on(i):
    node = node_id_of(i)
    rows = psql(f"select interaction_id from call_owners where node_id = '{node}'")
    return [r for r in rows.splitlines() if r]


def calls_elsewhere(i=None):
    """Calls owned now by nodes other than node `i` (all calls when None)."""
    cond = "" if i is None else f" where node_id <> '{node_id_of(i)}'"
    return [r for r in psql(f"select interaction_id from call_owners{cond}").splitlines() if r]


def calls_kept(ids):
    """Of calls held by nodes that stayed up: (ended by the caller — SIPp's BYE, answered or while the
    call waited in the queue, the interaction `abandoned` without a reason, or a
    `call_ended` by the caller —, still up, dropped: ended any other way, by the hub or
    swept as `node_lost`)."""
    if not ids:
        return 0, 0, 0, 0
    lst = ",".join(f"'{i}'" for i in ids)
    answered = int(psql(f"select count(*) from interactions where id in ({lst}) and answered_at is not null"))
    rows = psql(f"select i.status, (select e.data->>'by' || '/' || coalesce(e.data->>'reason', '') from interaction_events e "
                f"where e.interaction_id = i.id and e.kind = 'call_ended' order by e.id limit 1), "
                f"(select coalesce(e.data->>'reason', '') from interaction_events e "
                f"where e.interaction_id = i.id and e.kind = 'abandoned' order by e.id limit 1) "
                f"from interactions i where i.id in ({lst})").splitlines()
    by_caller = up = dropped = 0
    for r in rows:
        status, ended, abandoned = r.split("|")
        if ended and ended != "caller/":
            dropped += 1
        elif ended == "caller/" or (status == "abandoned" and abandoned == ""):
            by_caller += 1
        elif status in ("queued", "offered", "active"):
            up += 1
        else:
            dropped += 1
    return by_caller, up, dropped, answered


def calls_ended_with_reason(ids, t0, limit=30):
    """Of `ids` (the calls the node held just before it was killed at `t0`): how many got a
    `call_ended` event with reason node_lost and left the queue, and how many the caller
    hung up in the moment between that snapshot and the kill (ended before `t0`: answered,
    a `call_ended` by the caller; waiting, `abandoned` without a reason). Any other is
    printed with its events."""
    if not ids:
        return 0, 0
    lst = ",".join(f"'{i}'" for i in ids)
    deadline = time.time() + limit
    while True:
        lost = set(psql(f"select distinct i.id from interactions i join interaction_events e on e.interaction_id = i.id "
                        f"where i.id in ({lst}) and e.kind = 'call_ended' and e.data->>'reason' = 'node_lost' "
                        f"and i.status in ('abandoned', 'wrap_up', 'closed')").split())
        before = set(psql(f"select distinct e.interaction_id from interaction_events e where e.interaction_id in ({lst}) "
                          f"and e.at < to_timestamp({t0}) and e.data->>'reason' is null "
                          f"and (e.kind = 'abandoned' or e.kind = 'call_ended' and e.data->>'by' = 'caller')").split()) - lost
        if len(lost) + len(before) == len(ids) or time.time() > deadline:
            break
        time.sleep(0.5)
    for i in set(ids) - lost - before:
        print(f"call {i} of the lost node: status {psql(f'select status from interactions where id = {chr(39)}{i}{chr(39)}')}, events "
              + psql(f"select string_agg(kind || ' ' || to_char(at, 'HH24:MI:SS.MS') || ' ' || data::text, '; ' order by id) "
                     f"from interaction_events where interaction_id = '{i}'") + f" (fault at {time.strftime('%H:%M:%S', time.gmtime(t0))})",
              flush=True)
    return len(lost), len(before)


class SipLoad:
    """SIPp callers through Kamailio: 1 new call/s, each 20 s long (they wait in the queue)."""

    def __init__(self):
        self.proc = None

    def start(self):
        if not shutil.which("sipp"):
            print("no sipp: SIP load skipped", flush=True)
            return
        self.proc = subprocess.Popen(["sipp", "-sn", "uac", "-s", "100", "-i", "127.0.0.1", "-p", "25100", "-r", "1", "-l", "40",
                                      "-d", "20000", "-m", "100000", "-nostdin", "127.0.0.1:15060"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def check_messages(load):
    with load.lock:
        acked = set(load.acked)
    stored = psql("select body from messages where body like 'drill-%'").splitlines()
    counts = {}
    for b in stored:
        counts[b] = counts.get(b, 0) + 1
    lost = [m for m in acked if m not in counts]
    twice = [m for m, c in counts.items() if c > 1]
    return len(acked), lost, twice


def wait_leader(since, limit=60):
    deadline = time.time() + limit
    while time.time() < deadline:
        if leader_index() is not None:
            return time.time() - since
        time.sleep(0.1)
    return None


def lease_holder(name):
    row = psql("select l.token, n.internal_url from leases l join cluster_nodes n on n.node_id = l.holder "
               f"where l.name = '{name}' and l.expires_at > now()")
    if not row:
        return None, None
    token, url = row.split("|")
    return int(token), NODES.index(url)


def channel_holders():
    """Which node holds the mailbox and the SMPP bind now (`-` when nobody)."""
    out = []
    for what, name in (("mailbox", "email:support-mail"), ("bind", "smpp:sms-main")):
        try:
            _, h = lease_holder(name)
        except Exception:
            h = None
        out.append(f"{what} on {'-' if h is None else f'node{h}'}")
    return ", ".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--visitors", type=int, default=20)
    ap.add_argument("--agents", type=int, default=6)
    ap.add_argument("--no-phones", action="store_true", help="agents without phones: calls wait until the caller hangs up")
    ap.add_argument("--pause", type=int, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--up", action="store_true", help="start the email/SMS peers, then scripts/cluster.sh up with their ports")
    ap.add_argument("--no-mail-sms", action="store_true", help="with --up: chat and SIP load only")
    ap.add_argument("--campaign", type=int, default=1500, help="with the SMS peer: recipients of the drill's SMS broadcast (0: none)")
    args = ap.parse_args()
    # A SIGTERM (the runner's `timeout`) exits through the atexit handlers: peers, agents and
    # SIPp are stopped, and run.sh's trap takes the cluster down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    peers = None
    if args.up:
        why = "disabled (--no-mail-sms)" if args.no_mail_sms else channel_peers.available()
        env = dict(os.environ)
        if why is None:
            peers = channel_peers.Peers()
            atexit.register(peers.stop)
            env.update(peers.start())
        else:
            print(f"email/SMS load skipped: {why}", flush=True)
        subprocess.run([f"{ROOT}/scripts/cluster.sh", "up"], check=True, env=env, timeout=300)
    for i in range(3):
        if not ready(i)[0]:
            sys.exit(f"node{i} is not ready: run scripts/cluster.sh up first")
    binary = os.environ.get("SWITCHBOARD_BIN", f"{ROOT}/target/debug/switchboard")
    phones = not args.no_phones and shutil.which("sipp") is not None
    team = drill_agents.Team(binary, f"{DIR}/node0/switchboard.toml", args.agents, phones=phones)
    atexit.register(team.stop)
    team.start()
    print(f"{len(team.agents)} agents available", flush=True)
    load = Load(args.visitors)
    load.start()
    sip = SipLoad()
    sip.start()
    atexit.register(sip.stop)
    mail = sms = camp = None
    if peers is not None:
        mail = channel_peers.MailLoad(peers.imap_port)
        mail.start()
        sms = channel_peers.SmsLoad(peers.smsc)
        sms.start()
        # An SMS broadcast through all four drills (10 a second: ~150 s of sending).
        camp = channel_peers.CampaignLoad(psql, http, LB, team.admin, n=args.campaign, rate=10)
        if args.campaign:
            camp.start()
            print(f"campaign to {len(camp.tokens)} recipients started", flush=True)
    time.sleep(args.warmup)
    results = []
    failed = False

    def record(name, t0, extra="", lead=None, survivors=()):
        nonlocal failed
        if lead is None:
            lead = wait_leader(t0)
        # Let the load run 15 s past the fault; the recovery time is when the last
        # request failed (0 when none did).
        time.sleep(max(0.0, t0 + 15 - time.time()))
        flowing = load.wait_flowing(time.time() - 1)
        with load.lock:
            flow = None if flowing is None else max(0.0, load.last_fail - t0)
        acked, lost, twice = check_messages(load)
        ok = flow is not None and lead is not None and not lost and not twice
        channels = [f"chat {acked}/{len(lost)}/{len(twice)}"]
        if mail is not None:
            m_acked = mail.acked()
            m_lost, m_twice = channel_peers.stored_counts(psql, "email", "drill-mail-", m_acked)
            s_acked = sms.acked()
            s_lost, s_twice = channel_peers.stored_counts(psql, "sms", "drill-sms-", s_acked)
            channels += [f"email {len(m_acked)}/{len(m_lost)}/{len(m_twice)}", f"sms {len(s_acked)}/{len(s_lost)}/{len(s_twice)}"]
            ok = ok and not m_lost and not m_twice and not s_lost and not s_twice
            if camp.id is not None:
                channels.append(camp.summary(peers.smsc))
                ok = ok and not camp.twice(peers.smsc)
        # Agents: nobody shared an interaction, nobody went over capacity.
        two_offers, two_events = drill_agents.held_by_two(psql)
        over = drill_agents.over_capacity(psql)
        ok = ok and two_offers == 0 and two_events == 0 and over == 0
        # Outbound: every reply a node acknowledged reached the customer exactly once.
        replies = "-"
        if mail is not None:
            sent, missing, dup, unsure = drill_agents.replies_delivered(team.book, peers.maildir, peers.smsc, psql)
            replies = ", ".join(f"{c} {sent[c]}/{len(missing[c])}/{len(dup[c])}" for c in ("email", "sms"))
            for c in ("email", "sms"):
                if unsure[c]:
                    replies += (f" (+{len(unsure[c])} {c} unknown: its node died mid-hand-off; recorded failed with a "
                                f"delivery_failed event, not resent)")
            ok = ok and not any(missing.values()) and not any(dup.values())
        # Calls held by the nodes that stayed up: none dropped.
        by_caller, up, dropped, answered = calls_kept(list(survivors))
        ok = ok and dropped == 0
        calls = f"{len(survivors)}: {answered} answered by an agent, {by_caller} ended by the caller, {up} up, {dropped} dropped"
        extra = (extra + "; " if extra else "") + "acked/lost/twice: " + ", ".join(channels) + "; " + team.summary()
        failed |= not ok
        results.append((name, acked, len(lost), len(twice), flow, lead, two_offers + two_events, over, replies, calls, extra, ok))
        print(f"{name}: acked {acked}, lost {len(lost)}, twice {len(twice)}, last failed request at "
              f"{flow if flow is None else round(flow, 2)} s, leader after {lead if lead is None else round(lead, 2)} s, "
              f"held by two agents {two_offers}+{two_events}, over capacity {over}, replies sent/missing/twice {replies}, "
              f"calls on surviving nodes {calls}; {extra}", flush=True)

    def kill(victim, name):
        nonlocal failed
        held = channel_holders() if mail is not None else ""
        live = calls_on(victim)
        survivors = calls_elsewhere(victim)
        t0 = time.time()
        os.kill(node_pid(victim), signal.SIGKILL)
        lead_back = wait_leader(t0)
        ended, before = calls_ended_with_reason(live, t0)
        failed |= ended + before != len(live)
        record(name, t0, f"calls on it: {len(live)}, ended node_lost: {ended}" +
               (f", hung up by the caller just before the kill: {before}" if before else "") + f"; at the kill {held}",
               lead=lead_back, survivors=survivors)
        restart_node(victim)

    # 1. kill -9 a node that is not the leader.
    lead = leader_index()
    victim = next(i for i in range(3) if i != lead)
    kill(victim, f"kill -9 node{victim} (not leader)")

    # 2. kill -9 the leader.
    lead = leader_index()
    kill(lead, f"kill -9 node{lead} (router leader)")

    # 3. SIGSTOP the router leader (which may also hold the sweeper lease), then SIGCONT.
    holder = leader_index()
    token, _ = lease_holder("router")
    if holder is not None:
        held = channel_holders() if mail is not None else ""
        paused_calls = calls_on(holder)
        survivors = calls_elsewhere(holder)
        t0 = time.time()
        os.kill(node_pid(holder), signal.SIGSTOP)
        moved = None
        deadline = time.time() + args.pause
        while time.time() < deadline:
            t, h = lease_holder("router")
            if moved is None and t is not None and h != holder and leader_index() is not None:
                moved = (time.time() - t0, t)
            time.sleep(0.2)
        os.kill(node_pid(holder), signal.SIGCONT)
        time.sleep(3)
        t_after, h_after = lease_holder("router")
        # Silent past cluster.node_timeout_ms, the paused node counts as dead: its calls are
        # ended node_lost by the sweeper (or were hung up between the snapshot and the stop).
        paused_lost, paused_before = calls_ended_with_reason(paused_calls, t0)
        failed |= paused_lost + paused_before != len(paused_calls)
        extra = (f"router lease moved after {round(moved[0], 2)} s to token {moved[1]} (was {token}); "
                 f"after SIGCONT held by node{h_after} token {t_after}, node{holder} leading: {ready(holder)[1]}"
                 if moved else "router lease did not move") + (f"; at the stop {held}" if held else "")
        extra += (f"; calls on the paused node: {len(paused_calls)}, ended node_lost: {paused_lost}" +
                  (f", hung up by the caller just before the stop: {paused_before}" if paused_before else ""))
        if not moved or h_after == holder or ready(holder)[1]:
            failed = True
        record(f"SIGSTOP node{holder} (router leader) {args.pause} s + SIGCONT", t0, extra, lead=moved[0] if moved else None,
               survivors=survivors)

    # 4. PostgreSQL primary killed, replica promoted: every node survives, and so must every call.
    survivors = calls_elsewhere()
    t0 = time.time()
    subprocess.run([f"{ROOT}/scripts/cluster.sh", "promote"], check=True, capture_output=True, timeout=60)
    record("PostgreSQL primary killed, replica promoted", t0, survivors=survivors)

    if camp is not None and camp.id is not None:
        # The broadcast finishes on the nodes that are left: every recipient texted exactly
        # once, or recorded as not (unknown: its submit's node died before the answer).
        status, once, twice, missing, unknown = camp.finish(peers.smsc)
        camp_ok = status == "completed" and not twice and not missing
        failed |= not camp_ok
        print(f"campaign: {status}; {len(once)} of {len(camp.tokens)} recipients submitted once, {len(twice)} twice, "
              f"{len(missing)} missing, {len(unknown)} unknown (recorded, not resent){'' if camp_ok else ' — FAILED'}",
              flush=True)

    load.stop.set()
    sip.stop()
    team.stop()
    if mail is not None:
        mail.stop.set()
        sms.stop.set()

    print("\n| drill | acked | lost | twice | last failed request (s after fault) | router leader (s) | held by two agents "
          "| over capacity | replies sent/missing/twice | calls on surviving nodes | ok | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, acked, lost, twice, flow, lead, two, over, replies, calls, extra, ok in results:
        f = "-" if flow is None else f"{flow:.2f}"
        ld = "-" if lead is None else f"{lead:.2f}"
        print(f"| {name} | {acked} | {lost} | {twice} | {f} | {ld} | {two} | {over} | {replies} | {calls} | "
              f"{'yes' if ok else 'NO'} | {extra} |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
