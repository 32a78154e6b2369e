"""Channel peers for the cluster drills, on loopback: Dovecot (IMAP, the `support` mailbox
customers' mail lands in), aiosmtpd (the SMTP server replies go to; the email tests'
smtp_sink.py) and the scripted SMSC (tests/sms/smsc.mjs, npm `smpp`). Each load class
remembers what the peer acknowledged, so the drills can check it was stored exactly once.
"""
import grp
import imaplib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available():
    """Why the email/SMS peers cannot run here, or None."""
    if not shutil.which("dovecot"):
        return "dovecot not installed (apt-get install dovecot-imapd)"
    if subprocess.run(["python3", "-c", "import aiosmtpd"], capture_output=True).returncode != 0:
        return "aiosmtpd not installed (pip install aiosmtpd)"
    if not shutil.which("node") or not os.path.isdir(f"{ROOT}/tests/sms/node_modules/smpp"):
        return "node or tests/sms/node_modules missing (cd tests/sms && npm install)"
    return None


class Peers:
    def __init__(self):
        # Not under the cluster's directory: that one belongs to postgres (mode 700), and
        # Dovecot's mail processes run as the dovecot user.
        self.dir = tempfile.mkdtemp(prefix="switchboard-drill-peers-")
        os.chmod(self.dir, 0o755)
        self.procs = []

    def start(self):
        self.imap_port = self._dovecot()
        self.smtp_port = self._smtp()
        self.smsc = Smsc(self.dir)
        self.procs.append(self.smsc.proc)
        return {"CLUSTER_IMAP_PORT": str(self.imap_port), "CLUSTER_SMTP_PORT": str(self.smtp_port),
                "CLUSTER_SMSC_PORT": str(self.smsc.port)}

    def _dovecot(self):
        d = self.dir
        for sub in ("run", "state", "mail"):
            os.makedirs(f"{d}/{sub}", exist_ok=True)
        uid, gid = pwd.getpwnam("dovecot").pw_uid, grp.getgrnam("dovecot").gr_gid
        with open(f"{d}/users", "w") as f:
            for u in ("support", "customer"):
                f.write(f"{u}:{{PLAIN}}secret:{uid}:{gid}::{d}/mail/{u}\n")
        subprocess.run(["chown", "-R", f"{uid}:{gid}", f"{d}/mail"], check=False)
        port = free_port()
        conf = (f"protocols = imap\nlisten = 127.0.0.1\nbase_dir = {d}/run\nstate_dir = {d}/state\ninstance_name = sb-drill-{port}\n"
                f"log_path = {d}/dovecot.log\nssl = no\ndisable_plaintext_auth = no\nauth_mechanisms = plain login\n"
                "mail_location = maildir:~/Maildir\ndefault_internal_user = dovecot\ndefault_internal_group = dovecot\n"
                "default_login_user = dovenull\nfirst_valid_uid = 0\n"
                f"passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%n {d}/users\n}}\n"
                f"userdb {{\n  driver = passwd-file\n  args = username_format=%n {d}/users\n}}\n"
                f"service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n"
                "  inet_listener imaps {\n    port = 0\n  }\n}\nprotocol imap {\n  mail_max_userip_connections = 200\n}\n")
        with open(f"{d}/dovecot.conf", "w") as f:
            f.write(conf)
        self.procs.append(subprocess.Popen(["dovecot", "-F", "-c", f"{d}/dovecot.conf"], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return port
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("dovecot did not start")

    def _smtp(self):
        os.makedirs(f"{self.dir}/smtp", exist_ok=True)
        self.maildir = f"{self.dir}/smtp/Maildir"
        p = subprocess.Popen(["python3", f"{ROOT}/adapters/email/tests/peers/smtp_sink.py", "--maildir", f"{self.dir}/smtp/Maildir"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(p)
        line = p.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError("smtp_sink.py did not start")
        return int(line.split()[1])

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)


class Smsc:
    """tests/sms/smsc.mjs: deliver_sm on command; events read on a thread."""

    def __init__(self, d):
        # Not quiet: every submit_sm is an event, so agents' replies can be counted by text.
        env = dict(os.environ)
        env.pop("SMSC_QUIET", None)
        self.proc = subprocess.Popen(["node", "smsc.mjs"], cwd=f"{ROOT}/tests/sms", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(f"{d}/smsc.log", "w"), text=True, env=env)
        first = json.loads(self.proc.stdout.readline())
        self.port = first["port"]
        self.lock = threading.Lock()
        self.acked = set()
        self.answers = {}
        self.stats = None
        self.submitted = {}  # reply token → submit_sm carrying it
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                if e.get("event") in ("deliver_sm_resp", "no_session") and e.get("tag"):
                    ok = e.get("event") == "deliver_sm_resp" and e.get("status") == 0
                    self.answers[e["tag"]] = ok
                    if ok:
                        self.acked.add(e["tag"])
                elif e.get("event") == "submit_sm":
                    text = e.get("message") or ""
                    if isinstance(e.get("payload"), str):
                        text += e["payload"]
                    if not REPLY.search(text):
                        try:
                            text = bytes.fromhex(text).decode("latin-1")
                        except ValueError:
                            pass
                    for t in set(REPLY.findall(text)):
                        self.submitted[t] = self.submitted.get(t, 0) + 1
                elif e.get("event") == "stats":
                    self.stats = e

    def cmd(self, c):
        with self.lock:
            self.proc.stdin.write(json.dumps(c) + "\n")
            self.proc.stdin.flush()

    def reply_counts(self):
        """Agents' reply token → how many submit_sm carried it."""
        with self.lock:
            return dict(self.submitted)

    def submit_stats(self, limit=10):
        with self.lock:
            self.stats = None
        self.cmd({"cmd": "stats", "dests": False})
        deadline = time.time() + limit
        while time.time() < deadline:
            with self.lock:
                if self.stats is not None:
                    return self.stats
            time.sleep(0.05)
        return None


class SmsLoad:
    """Mobile-originated SMS: one deliver_sm every `every` s, each with a unique text, sent
    again (same text) until the bound node answers it with status 0."""

    def __init__(self, smsc, every=0.5):
        self.smsc, self.every = smsc, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()

    def run(self):
        n = 0
        pending = None
        while not self.stop.is_set():
            if pending is None:
                n += 1
                pending = f"drill-sms-{n}-{uuid.uuid4().hex[:8]}"
            with self.smsc.lock:
                self.smsc.answers.pop(pending, None)
            self.smsc.cmd({"cmd": "deliver", "tag": pending, "source": f"49151{n % 50:08d}", "dest": "4930123456",
                           "text": pending, "coding": "gsm"})
            deadline = time.time() + 5
            answer = None
            while time.time() < deadline and answer is None:
                with self.smsc.lock:
                    answer = self.smsc.answers.get(pending)
                time.sleep(0.02)
            if answer:
                pending = None
                time.sleep(self.every)
            else:
                time.sleep(0.3)  # no bound node yet, or no answer: the same message again

    def acked(self):
        with self.smsc.lock:
            return set(self.smsc.acked)


class MailLoad:
    """Customer mail: one message every `every` s appended to the `support` INBOX (IMAP
    APPEND, as an MTA's delivery would); acked once Dovecot stored it."""

    def __init__(self, port, every=1.0):
        self.port, self.every = port, every
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked_set = set()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()

    def run(self):
        n = 0
        conn = None
        while not self.stop.is_set():
            n += 1
            token = f"drill-mail-{n}-{uuid.uuid4().hex[:8]}"
            msg = (f"From: Customer {n % 20} <customer{n % 20}@drill.test>\r\nTo: support@shop.test\r\n"
                   f"Subject: Drill {token}\r\nMessage-ID: <{token}@drill.test>\r\nDate: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
                   f"Content-Type: text/plain; charset=utf-8\r\n\r\n{token}\r\n").encode()
            try:
                if conn is None:
                    conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=5)
                    conn.login("support", "secret")
                typ, _ = conn.append("INBOX", None, None, msg)
                if typ == "OK":
                    with self.lock:
                        self.acked_set.add(token)
            except Exception:
                conn = None
            time.sleep(self.every)
        try:
            conn and conn.logout()
        except Exception:
            pass

    def acked(self):
        with self.lock:
            return set(self.acked_set)


TOKEN = re.compile(r"drill-(?:mail|sms)-\d+-[0-9a-f]{8}")
# Agents' replies and campaign messages (a recipient's name is its token), as counted at the SMSC.
REPLY = re.compile(r"drill-(?:reply|camp)-[0-9a-f]{12}")


def stored_counts(psql, channel, prefix, acked, limit=60):
    """Waits (bounded) until every acked item is stored; returns (lost, twice)."""
    deadline = time.time() + limit
    while True:
        rows = psql(f"select m.body from messages m join interactions i on i.id = m.interaction_id "
                    f"where i.channel = '{channel}' and m.direction = 'inbound' and m.body like '%{prefix}%'").splitlines()
        counts = {}
        for r in rows:
            for t in set(TOKEN.findall(r)):
                counts[t] = counts.get(t, 0) + 1
        lost = [t for t in acked if t not in counts]
        twice = [t for t, c in counts.items() if c > 1]
        if not lost or time.time() > deadline:
            return lost, twice
        time.sleep(1)


class CampaignLoad:
    """An SMS broadcast running through the drills: `n` customers (consent, tag `drillcamp`,
    each named by its own token, a mobile number of their own) and a campaign to them at
    `rate` messages a second, started through HAProxy. The SMSC counts each recipient's
    token, so a message submitted twice (a node killed mid-batch, a paused node waking up)
    shows; at the end every recipient has exactly one submit, or its row says why not
    (`unknown`: a submit whose node died before the SMSC's answer is never resent)."""

    def __init__(self, psql, http, lb, token, n=1500, rate=10):
        self.psql, self.http, self.lb, self.token, self.n, self.rate = psql, http, lb, token, n, rate
        self.id = None
        self.tokens = []

    def start(self):
        self.psql(
            "with c as (insert into customers (name, consent_sms, tags, time_zone) "
            "select 'drill-camp-' || substr(md5(random()::text || i), 1, 12), true, '{drillcamp}', 'UTC' "
            f"from generate_series(1, {self.n}) i returning id) "
            "insert into customer_identities (customer_id, kind, address) "
            "select id, 'phone', '+4917799' || lpad((row_number() over ())::text, 6, '0') from c")
        self.tokens = self.psql("select name from customers where 'drillcamp' = any(tags)").split()
        st, c = self.http("POST", self.lb + "/api/v1/campaigns", {
            "name": "Drill broadcast", "kind": "broadcast", "audience": {"tags_any": ["drillcamp"]},
            "quiet_start": None, "quiet_end": None, "rate_per_second": self.rate,
            "template": {"default": "Hello {first_name}, the drill offer"}}, {"authorization": f"Bearer {self.token}"})
        if st != 201:
            raise RuntimeError(f"campaign not created: {st} {c}")
        self.id = c["id"]
        st, b = self.http("POST", f"{self.lb}/api/v1/campaigns/{self.id}/start", None, {"authorization": f"Bearer {self.token}"})
        if st != 200:
            raise RuntimeError(f"campaign not started: {st} {b}")

    def twice(self, smsc):
        counts = smsc.reply_counts()
        return [t for t in self.tokens if counts.get(t, 0) > 1]

    def summary(self, smsc):
        counts = smsc.reply_counts()
        once = sum(1 for t in self.tokens if counts.get(t, 0) == 1)
        return f"campaign {once}/{len(self.tokens)} submitted once, {len(self.twice(smsc))} twice"

    def finish(self, smsc, limit=240):
        """Waits (bounded) for the campaign to complete; returns (status, once, twice,
        missing, unknown): missing are recipients without a submit whose row does not say
        `unknown` or `failed`."""
        deadline = time.time() + limit
        status = None
        while time.time() < deadline:
            status = self.psql(f"select status from campaigns where id = '{self.id}'")
            if status in ("completed", "cancelled"):
                break
            time.sleep(2)
        counts = smsc.reply_counts()
        rows = self.psql(
            "select c.name, r.status from campaign_recipients r join customers c on c.id = r.customer_id "
            f"where r.campaign_id = '{self.id}'").splitlines()
        row_status = dict(line.split("|", 1) for line in rows if "|" in line)
        once = [t for t in self.tokens if counts.get(t, 0) == 1]
        twice = [t for t in self.tokens if counts.get(t, 0) > 1]
        unknown = [t for t in self.tokens if counts.get(t, 0) == 0 and row_status.get(t) in ("unknown", "failed")]
        missing = [t for t in self.tokens if counts.get(t, 0) == 0 and row_status.get(t) not in ("unknown", "failed")]
        return status, once, twice, missing, unknown
