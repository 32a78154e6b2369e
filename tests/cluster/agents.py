"""Agents for the cluster drills: each keeps an inbox connection (the event WebSocket,
`GET /api/v1/stream`) open through HAProxy, reconnecting when its node dies, goes
available, accepts the chat, email and SMS offers made to it (`POST /api/v1/offers/{id}/accept`),
replies once to every email and SMS it holds (`POST /api/v1/interactions/{id}/messages`
with an idempotency key, resent with the same key until a node answers) and closes it
(`POST …/close`), so it keeps taking new ones. Everything goes through the balancer, as the
browser inbox does. With phones (`Phones`), each agent has a SIP user registered through
Kamailio to one SIPp UAS that answers every call the hub rings; the agent closes its calls
from wrap-up once the caller hung up.

Checks after each drill (`held_by_two`, `over_capacity`, `replies_delivered`): from the
database, no interaction was held by two agents at overlapping times (offers accepted by two
agents whose live spans overlap, or an `accepted` event while another agent still held it)
and no agent ever had more live offers on a channel than its capacity; at the peers, every
acknowledged reply reached the customer exactly once (Maildir of the SMTP sink by a token in
the body; the SMSC's submit_sm by text).
"""
import base64
import email
import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

LB_HOST, LB_PORT = "127.0.0.1", 18080
LB = f"http://{LB_HOST}:{LB_PORT}"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KAMAILIO = "127.0.0.1:15060"
PHONE_PORT = 25200  # one SIPp UAS answers for every agent's phone
# Per agent: one call (when it has a phone), chat 3, email 3, sms 3.
CAPACITY = {"voice": 1, "chat": 3, "email": 3, "sms": 3}


def http(method, url, body=None, token=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except Exception:
            return e.code, None
    except Exception:
        return 0, None


def cli(binary, config, args, password=None):
    env = dict(os.environ, SWITCHBOARD_PASSWORD=password or uuid.uuid4().hex)
    out = subprocess.run([binary, *args, "--config", config], capture_output=True, text=True, env=env, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"switchboard {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def token_for(binary, config, username):
    out = cli(binary, config, ["token", "create", "--username", username, "--name", "drill"])
    # "Token <id> for <user>:\n<secret>\n(store it now; …)"
    return out.splitlines()[1].strip()


class WebSocket:
    """The least of RFC 6455 a client needs to hold an event stream open: the handshake,
    reading (and dropping) frames, answering pings, noticing the close."""

    def __init__(self, host, port, path, token, timeout=5):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(status.decode(errors="replace"))
        self.buf = head.split(b"\r\n\r\n", 1)[1]
        self.sock.settimeout(None)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode, payload=b""):
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def frames(self):
        """Yields text payloads until the server closes or the connection breaks."""
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            if opcode == 0x8:
                return
            if opcode == 0x9:
                self._send(0xA, payload[:125])
            elif opcode == 0x1:
                yield payload.decode(errors="replace")

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Agent:
    def __init__(self, name, agent_id, token, book, hold=1.5):
        self.name, self.id, self.token, self.book, self.hold = name, agent_id, token, book, hold
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.ws = None
        self.held = {}  # interaction id → {"channel", "since", "reply": (key, text) | None, "replied": bool}
        self.seen_offers = set()
        self.next_calls = 0.0

    def start(self):
        threading.Thread(target=self.stream, daemon=True).start()
        threading.Thread(target=self.work, daemon=True).start()

    def stream(self):
        while not self.stop.is_set():
            try:
                self.ws = WebSocket(LB_HOST, LB_PORT, "/api/v1/stream", self.token)
                self.connected.set()
                with self.book.lock:
                    self.book.ws_connects += 1
                for _ in self.ws.frames():
                    if self.stop.is_set():
                        break
            except Exception:
                pass
            self.connected.clear()
            if self.ws is not None:
                self.ws.close()
            time.sleep(0.3)

    def api(self, method, path, body=None):
        return http(method, LB + path, body, self.token)

    def work(self):
        next_presence = 0.0
        while not self.stop.is_set():
            now = time.time()
            if now >= next_presence and self.connected.is_set():
                st, me = self.api("GET", f"/api/v1/agents/{self.id}")
                if st == 200 and me and me.get("presence") in ("offline", "away"):
                    if self.api("PUT", f"/api/v1/agents/{self.id}/presence", {"presence": "available"})[0] == 200:
                        with self.book.lock:
                            self.book.went_available += 1
                next_presence = now + 2
            st, offers = self.api("GET", f"/api/v1/agents/{self.id}/offers")
            if st == 200:
                for o in offers or []:
                    if o["id"] in self.seen_offers or o["state"] != "pending":
                        continue
                    self.seen_offers.add(o["id"])
                    if o["channel"] != "voice":  # calls: the phone rings and answers (SIPp)
                        self.accept(o)
            self.calls_after_hangup()
            for iid, h in list(self.held.items()):
                if time.time() - h["since"] >= self.hold:
                    self.finish(iid, h)
            time.sleep(0.25)

    def calls_after_hangup(self):
        """Answered calls go to wrap-up when they end: close them (a free line again). The
        phone answers within milliseconds, so the call is found by listing, not by its offer."""
        now = time.time()
        if now < self.next_calls:
            return
        self.next_calls = now + 1
        st, page = self.api("GET", f"/api/v1/interactions?channel=voice&status=wrap_up&agent_id={self.id}&limit=50")
        if st != 200 or not page:
            return
        for i in page.get("items", []):
            st, _ = self.api("POST", f"/api/v1/interactions/{i['id']}/close", {"disposition": "inquiry"})
            if st == 200:
                with self.book.lock:
                    self.book.accepted["voice"] = self.book.accepted.get("voice", 0) + 1
                    self.book.closed += 1

    def accept(self, o):
        for _ in range(20):
            st, body = self.api("POST", f"/api/v1/offers/{o['id']}/accept")
            if st == 200:
                break
            if st in (400, 403, 404, 409):
                return
            time.sleep(0.3)  # no answer (a node died mid-request): the same offer again
        else:
            return
        iid = o["interaction_id"]
        reply = None
        if o["channel"] in ("email", "sms"):
            token = f"drill-reply-{uuid.uuid4().hex[:12]}"
            reply = (str(uuid.uuid4()), f"Thanks, we are on it {token}", token)
        self.held[iid] = {"channel": o["channel"], "since": time.time(), "reply": reply, "replied": False}
        with self.book.lock:
            self.book.accepted[o["channel"]] = self.book.accepted.get(o["channel"], 0) + 1

    def finish(self, iid, h):
        if h["reply"] and not h["replied"]:
            key, text, token = h["reply"]
            st, _ = self.api("POST", f"/api/v1/interactions/{iid}/messages", {"body": text, "idempotency_key": key})
            if st == 201:
                h["replied"] = True
                with self.book.lock:
                    self.book.replies[token] = h["channel"]
            elif st in (403, 404, 409):
                h["reply"] = None  # no longer ours (closed or taken back): nothing to send
            else:
                return  # no answer: again, same key
        st, _ = self.api("POST", f"/api/v1/interactions/{iid}/close", {"disposition": "inquiry"})
        if st == 200 or st in (403, 404, 409):
            del self.held[iid]
            with self.book.lock:
                self.book.closed += st == 200
                self.book.lost_holds += st != 200


class Book:
    """What every agent did, for the report."""

    def __init__(self):
        self.lock = threading.Lock()
        self.accepted = {}
        self.replies = {}  # token → channel, for replies a node acknowledged (201)
        self.closed = 0
        self.lost_holds = 0
        self.ws_connects = 0
        self.went_available = 0


class Phones:
    """The agents' phones: one SIPp UAS on PHONE_PORT answers every call the hub rings
    (`-sn uas`: 180, 200, waits for the BYE), and every agent's phone registers through
    Kamailio (tests/voice/register.xml, digest auth, Contact = the UAS) every 10 s, so a
    registration held by a node that died is renewed on a live one."""

    def __init__(self, users):
        self.users = users  # [(sip user, password)]
        self.stop = threading.Event()
        self.uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(PHONE_PORT), "-nostdin",
                                     "-recv_timeout", "90000"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp")
        self.ok = 0
        self.failed = 0

    def register_all(self):
        for k, (user, pw) in enumerate(self.users):
            try:
                r = subprocess.run(["sipp", "-sf", f"{ROOT}/tests/voice/register.xml", "-s", user, "-au", user, "-ap", pw,
                                    "-key", "agent_port", str(PHONE_PORT), "-i", "127.0.0.1", "-p", str(25300 + k),
                                    "-m", "1", "-timeout", "8s", "-nostdin", KAMAILIO],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp", timeout=15)
                ok = r.returncode == 0
            except subprocess.TimeoutExpired:
                ok = False
            self.ok += ok
            self.failed += not ok

    def run(self):
        while not self.stop.wait(10):
            self.register_all()

    def start(self):
        self.register_all()
        threading.Thread(target=self.run, daemon=True).start()

    def close(self):
        self.stop.set()
        self.uas.terminate()
        try:
            self.uas.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.uas.kill()


class Team:
    def __init__(self, binary, config, n=6, phones=True):
        self.book = Book()
        self.phones = None
        admin = f"drill-admin-{uuid.uuid4().hex[:6]}"
        cli(binary, config, ["user", "add", "--username", admin, "--role", "admin"])
        self.admin = token_for(binary, config, admin)
        self.ensure_queue()
        self.agents = []
        sip_users = []
        for k in range(n):
            user = f"drill-agent-{k}-{uuid.uuid4().hex[:6]}"
            cli(binary, config, ["user", "add", "--username", user, "--role", "agent", "--agent-skills", "drill=1"])
            token = token_for(binary, config, user)
            st, me = http("GET", LB + "/api/v1/auth/me", token=token)
            agent_id = me and (me.get("agent_id") or (me.get("agent") or {}).get("id"))
            if st != 200 or not agent_id:
                raise RuntimeError(f"no agent for {user}: {st} {me}")
            patch = {"capacity": CAPACITY if phones else dict(CAPACITY, voice=0)}
            if phones:
                patch["sip_user"] = f"drill{k}{uuid.uuid4().hex[:6]}"
            st, _ = http("PATCH", f"{LB}/api/v1/agents/{agent_id}", patch, self.admin)
            if st != 200:
                raise RuntimeError(f"capacity of {user}: {st}")
            if phones:
                pw = uuid.uuid4().hex[:12]
                cli(binary, config, ["agent", "sip-password", "--username", user], password=pw)
                sip_users.append((patch["sip_user"], pw))
            self.agents.append(Agent(user, agent_id, token, self.book))
        if phones:
            self.phones = Phones(sip_users)

    def ensure_queue(self):
        st, queues = http("GET", LB + "/api/v1/queues", token=self.admin)
        if st == 200 and any(q["name"] == "default" for q in queues):
            return
        # Everything lands here (no entry rules elsewhere); a short offer timeout so an
        # offer made to an agent whose request died comes back quickly.
        st, _ = http("POST", LB + "/api/v1/queues", {"name": "default", "requirement": "", "accept_timeout_secs": 10}, self.admin)
        if st != 201:
            raise RuntimeError(f"could not create the default queue: {st}")

    def start(self, limit=30):
        if self.phones is not None:
            self.phones.start()
        for a in self.agents:
            a.start()
        deadline = time.time() + limit
        while time.time() < deadline:
            ids = {a.id for a in self.agents}
            st, agents = http("GET", LB + "/api/v1/agents", token=self.admin)
            if st == 200 and sum(1 for x in agents if x["id"] in ids and x["presence"] == "available") == len(self.agents):
                return
            time.sleep(0.3)
        raise RuntimeError("the drill agents did not become available")

    def stop(self):
        if self.phones is not None:
            self.phones.close()
        for a in self.agents:
            a.stop.set()
            if a.ws is not None:
                a.ws.close()

    def summary(self):
        with self.book.lock:
            b = self.book
            acc = "/".join(f"{c} {b.accepted.get(c, 0)}" for c in ("chat", "email", "sms"))
            calls = "" if self.phones is None else (f", calls answered and closed {b.accepted.get('voice', 0)}, phone REGISTERs "
                                                    f"{self.phones.ok} ok/{self.phones.failed} failed")
            return f"agents accepted {acc}{calls}, closed {b.closed}, taken back {b.lost_holds}, stream (re)connects {b.ws_connects}"


def held_by_two(psql):
    """Interactions held by two agents at overlapping times, by two independent records:
    offers (accepted, later released) of different agents whose spans overlap, and
    `accepted` events of an interaction while another agent held it (no close, requeue,
    transfer or abandon in between)."""
    offers = int(psql(
        "select count(distinct a.interaction_id) from offers a join offers b on a.interaction_id = b.interaction_id "
        "and a.id < b.id and a.agent_id <> b.agent_id "
        "where a.state in ('accepted','released') and b.state in ('accepted','released') "
        "and a.created_at < coalesce(b.ended_at, 'infinity') and b.created_at < coalesce(a.ended_at, 'infinity')"))
    events = int(psql(
        "with ev as (select interaction_id, kind, agent_id, id, "
        "  lag(kind) over w as prev_kind, lag(agent_id) over w as prev_agent from interaction_events "
        "  where interaction_id is not null and kind in ('accepted','closed','requeued','transferred','abandoned') "
        "  window w as (partition by interaction_id order by id)) "
        "select count(distinct interaction_id) from ev where kind = 'accepted' and prev_kind = 'accepted' "
        "and prev_agent is distinct from agent_id"))
    return offers, events


def over_capacity(psql):
    """Offers made while the agent already had its capacity of live offers (pending or
    accepted, until they ended) on that channel: the offer itself counted, more than capacity."""
    return int(psql(
        "select count(*) from offers o join agents g on g.id = o.agent_id where not o.ring_all and "
        "(select count(*) from offers p where p.agent_id = o.agent_id and p.channel = o.channel and not p.ring_all "
        " and p.created_at <= o.created_at and o.created_at < coalesce(p.ended_at, 'infinity')) "
        "> coalesce((g.capacity ->> o.channel)::int, 0)"))


def mail_reply_counts(maildir):
    """token → how many mails in the SMTP sink's Maildir carry it."""
    counts = {}
    for sub in ("new", "cur"):
        d = os.path.join(maildir, sub)
        if not os.path.isdir(d):
            continue
        for f in os.listdir(d):
            try:
                with open(os.path.join(d, f), "rb") as fh:
                    msg = email.message_from_binary_file(fh)
            except OSError:
                continue
            text = ""
            for part in msg.walk():
                if part.get_content_maintype() == "text":
                    payload = part.get_payload(decode=True) or b""
                    text += payload.decode(part.get_content_charset() or "utf-8", errors="replace")
            for tok in set(TOKEN.findall(text)):
                counts[tok] = counts.get(tok, 0) + 1
    return counts


TOKEN = re.compile(r"drill-reply-[0-9a-f]{12}")


def replies_delivered(book, maildir, smsc, psql, limit=100):
    """Waits (bounded) until every acknowledged reply reached its peer — a reply claimed by a
    node that was then killed comes back after the nodes' `outbox.sending_lease_secs` (75 s
    in scripts/cluster.sh). Returns per channel (acked count, missing, twice, uncertain):
    `uncertain` are replies whose node logged the hand-off (SMTP) or submit (SMPP) and died
    before the peer answered: they may have gone out, so the channel never resends them —
    recorded `unknown`, the outbox row `failed` with a `delivery_failed` event once its
    sending lease has run out (at most once); `missing` is everything else not delivered."""
    with book.lock:
        acked = dict(book.replies)
    deadline = time.time() + limit
    while True:
        mails = mail_reply_counts(maildir)
        sms = smsc.reply_counts()
        missing = {c: [t for t, ch in acked.items() if ch == c and (mails if c == "email" else sms).get(t, 0) == 0]
                   for c in ("email", "sms")}
        uncertain = {"email": [], "sms": []}
        for c in ("email", "sms"):
            if not missing[c]:
                continue
            pattern = "|".join(missing[c])
            # The channel's own log says the node that claimed it died mid-hand-off: it may
            # have gone out, so it is failed for good (a delivery_failed event), not resent.
            rows = psql(f"select o.body from outbox o where o.channel = '{c}' and o.body ~ '({pattern})' and "
                        "(o.status = 'failed' and (o.last_error like '%no known outcome%' or o.last_error like '%may have been sent%')"
                        + (" or exists (select 1 from sms_sent s where s.outbox_id = o.id and s.status in ('submitting', 'unknown') "
                           "and s.updated_at < now() - interval '10 s')" if c == "sms" else "") + ")")
            unsure = set(TOKEN.findall(rows))
            uncertain[c] = [t for t in missing[c] if t in unsure]
            missing[c] = [t for t in missing[c] if t not in unsure]
        if not any(missing.values()) or time.time() > deadline:
            break
        time.sleep(1)
    twice = {"email": [t for t, n in mails.items() if n > 1], "sms": [t for t, n in sms.items() if n > 1]}
    count = {c: sum(1 for ch in acked.values() if ch == c) for c in ("email", "sms")}
    return count, missing, twice, uncertain
