//! Real mail peers for tests: a throwaway Dovecot (IMAP, plain on a free loopback port,
//! passwd-file users `support`, `customer` and `other` with password `secret`, Maildir in
//! a temp dir) and an aiosmtpd sink writing every received message into a Maildir the test
//! reads back. Both run as child processes killed on drop. `MailPeers::start` returns
//! `None` (and says why) when `dovecot` or Python's `aiosmtpd` is not installed;
//! `scripts/test.sh` installs both.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Running Dovecot + SMTP sink.
pub struct MailPeers {
    /// Temp dir of both.
    pub dir: PathBuf,
    /// IMAP port.
    pub imap_port: u16,
    /// SMTP port.
    pub smtp_port: u16,
    /// IMAPS port (TLS from the first byte) when started with TLS, else 0.
    pub imaps_port: u16,
    /// The test CA (PEM) the server's certificate chains to, when started with TLS.
    pub ca: Option<PathBuf>,
    dovecot: Child,
    smtp: Child,
    extra: Vec<Child>,
}

/// How an extra SMTP server ([`MailPeers::start_smtp`]) is set up.
#[derive(Default, Clone)]
pub struct SmtpOptions {
    /// `plain`, `starttls` or `tls` (the two last with the test CA's certificate).
    pub security: &'static str,
    /// Require AUTH with this user and password.
    pub auth: Option<(&'static str, &'static str)>,
    /// Also accept XOAUTH2 with this bearer token (for the auth user).
    pub token: Option<String>,
}

/// Starts `smtp_sink.py` (aiosmtpd, port 0) and reads the port it listens on.
fn spawn_smtp(maildir: &Path, args: &[String]) -> Option<(Child, u16)> {
    use std::io::BufRead;
    // Written next to the Maildir from the source (this module is also compiled into the
    // workspace's e2e tests, whose CARGO_MANIFEST_DIR is another directory).
    let script = maildir.parent()?.join("smtp_sink.py");
    std::fs::write(&script, include_str!("smtp_sink.py")).ok()?;
    let mut child = Command::new("python3")
        .arg(script)
        .arg("--maildir")
        .arg(maildir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = child.stdout.take()?;
    // One line, or EOF when the script fails: bounded by the child's life.
    let mut line = String::new();
    let _ = std::io::BufReader::new(out).read_line(&mut line);
    match line.trim().strip_prefix("PORT ").and_then(|p| p.parse().ok()) {
        Some(port) => Some((child, port)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

/// A token-introspection endpoint (RFC 7662) for Dovecot's oauth2 passdb: POSTed
/// `token=…`, answers `{"active": true, "username": "support"}` for `token` only.
fn spawn_introspection(dir: &Path, token: &str) -> Option<(Child, u16)> {
    use std::io::BufRead;
    let script = dir.join("introspect.py");
    let py = format!(
        "import http.server, json, urllib.parse\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def log_message(self, *a): pass\n\
         \x20   def do_POST(self):\n\
         \x20       n = int(self.headers.get('content-length') or 0)\n\
         \x20       tok = urllib.parse.parse_qs(self.rfile.read(n).decode()).get('token', [''])[0]\n\
         \x20       out = json.dumps({{'active': True, 'username': 'support'}} if tok == {token:?} else {{'active': False}}).encode()\n\
         \x20       self.send_response(200); self.send_header('content-type', 'application/json')\n\
         \x20       self.send_header('content-length', str(len(out))); self.end_headers(); self.wfile.write(out)\n\
         s = http.server.HTTPServer(('127.0.0.1', 0), H)\n\
         print('PORT', s.server_address[1], flush=True)\n\
         s.serve_forever()\n"
    );
    std::fs::write(&script, py).ok()?;
    let mut child = Command::new("python3").arg(&script).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
    let mut line = String::new();
    let _ = std::io::BufReader::new(child.stdout.take()?).read_line(&mut line);
    match line.trim().strip_prefix("PORT ").and_then(|p| p.parse().ok()) {
        Some(port) => Some((child, port)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

/// Waits until `port` answers with this Dovecot instance's greeting.
fn wait_greeting(port: u16, greeting: &str, secs: u64) -> bool {
    use std::io::Read;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 512];
            let n = c.read(&mut buf).unwrap_or(0);
            let line = String::from_utf8_lossy(&buf[..n]);
            if line.contains(greeting) {
                return true;
            }
            if n > 0 {
                eprintln!("port {port} answers as another server: {line}");
                return false;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn wait_port(port: u16, secs: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn id_of(flag: &str, user: &str) -> Option<String> {
    let out = Command::new("id").arg(flag).arg(user).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl MailPeers {
    /// Starts both peers, or explains why they cannot run here.
    pub fn start() -> Option<MailPeers> {
        Self::start_with(false, None)
    }

    /// Starts both peers with Dovecot also accepting `AUTHENTICATE XOAUTH2` for `support`:
    /// an oauth2 passdb that asks a local token-introspection endpoint (RFC 7662, a small
    /// Python HTTP server run here) which answers active only for `token`.
    pub fn start_oauth2(token: &str) -> Option<MailPeers> {
        Self::start_with(false, Some(token))
    }

    /// Starts both peers with Dovecot also offering TLS (IMAPS, and STARTTLS on the plain
    /// port) under a certificate for `localhost`/127.0.0.1 from a throwaway CA.
    pub fn start_tls() -> Option<MailPeers> {
        Self::start_with(true, None)
    }

    fn start_with(tls: bool, oauth_token: Option<&str>) -> Option<MailPeers> {
        let dovecot = ["/usr/sbin/dovecot", "/usr/local/sbin/dovecot"].into_iter().find(|p| Path::new(p).exists());
        let Some(dovecot) = dovecot else {
            eprintln!("SKIP: dovecot is not installed (apt-get install dovecot-imapd; scripts/test.sh does it)");
            return None;
        };
        let has_aiosmtpd =
            Command::new("python3").args(["-c", "import aiosmtpd"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        if !has_aiosmtpd {
            eprintln!("SKIP: Python's aiosmtpd is not installed (pip install aiosmtpd; scripts/test.sh does it)");
            return None;
        }
        let (uid, gid) = (id_of("-u", "dovecot")?, id_of("-g", "dovecot")?);
        let dir = std::env::temp_dir().join(format!("sb-mail-{}", uuid::Uuid::new_v4().simple()));
        for sub in ["run", "state", "mail", "smtp"] {
            std::fs::create_dir_all(dir.join(sub)).ok()?;
        }
        let d = dir.display();
        let users: String =
            ["support", "customer", "other"].iter().map(|u| format!("{u}:{{PLAIN}}secret:{uid}:{gid}::{d}/mail/{u}\n")).collect();
        std::fs::write(dir.join("users"), users).ok()?;
        let (ssl, ca) = if tls {
            let sh = format!(
                "set -e; cd {d}; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=SwitchboardTestCA 2>/dev/null; \
                 openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout srv.key -out srv.csr -subj /CN=localhost 2>/dev/null; \
                 printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf; \
                 openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext.cnf 2>/dev/null; chmod 644 srv.key"
            );
            if !Command::new("sh").arg("-c").arg(&sh).status().is_ok_and(|s| s.success()) {
                eprintln!("SKIP: openssl could not make a test certificate");
                return None;
            }
            (format!("ssl = yes\nssl_cert = <{d}/srv.pem\nssl_key = <{d}/srv.key\n"), Some(dir.join("ca.pem")))
        } else {
            ("ssl = no\n".to_string(), None)
        };
        let _ = Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(dir.join("mail")).status();
        let mut extra = Vec::new();
        let (oauth_passdb, mechanisms) = match oauth_token {
            None => (String::new(), "plain login"),
            Some(token) => {
                let (child, port) = spawn_introspection(&dir, token).expect("the token introspection endpoint starts");
                extra.push(child);
                let conf = format!(
                    "introspection_mode = post\nintrospection_url = http://127.0.0.1:{port}/introspect\nusername_attribute = username\nactive_attribute = active\nactive_value = true\n"
                );
                std::fs::write(dir.join("oauth2.conf.ext"), conf).ok()?;
                (
                    format!("passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {d}/oauth2.conf.ext\n}}\n"),
                    "plain login xoauth2 oauthbearer",
                )
            }
        };
        // aiosmtpd is installed (checked above), so a sink that does not start is a failure.
        let (smtp, smtp_port) = spawn_smtp(&dir.join("smtp/Maildir"), &[]).expect("the SMTP sink (smtp_sink.py) starts");
        // Dovecot cannot listen on port 0, so its ports are picked free and then bound:
        // another test's server can take one in between. The greeting names this instance,
        // so a test never talks to another test's Dovecot (that showed as a mailbox holding
        // someone else's mail); on a lost race it starts again on other ports.
        for attempt in 0..3 {
            let (imap_port, imaps_port) = (free_port(), if tls { free_port() } else { 0 });
            let greeting = format!("sb-test-{} ready.", uuid::Uuid::new_v4().simple());
            let conf = format!(
                "protocols = imap\nlogin_greeting = {greeting}\nlisten = 127.0.0.1\nbase_dir = {d}/run\nstate_dir = {d}/state\ninstance_name = sb-{imap_port}\nlog_path = {d}/dovecot.log\n\
                 {ssl}disable_plaintext_auth = no\nauth_mechanisms = {mechanisms}\nmail_location = maildir:~/Maildir\n\
                 default_internal_user = dovecot\ndefault_internal_group = dovecot\ndefault_login_user = dovenull\nfirst_valid_uid = 0\n\
                 {oauth_passdb}passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%n {d}/users\n}}\n\
                 userdb {{\n  driver = passwd-file\n  args = username_format=%n {d}/users\n}}\n\
                 service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {imap_port}\n  }}\n  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {imaps_port}\n  }}\n}}\n\
                 protocol imap {{\n  mail_max_userip_connections = 200\n}}\n"
            );
            std::fs::write(dir.join("dovecot.conf"), conf).ok()?;
            let mut child = Command::new(dovecot)
                .arg("-F")
                .arg("-c")
                .arg(dir.join("dovecot.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            if wait_greeting(imap_port, &greeting, 20) && (!tls || wait_port(imaps_port, 20)) {
                return Some(MailPeers { dir, imap_port, smtp_port, imaps_port, ca, dovecot: child, smtp, extra });
            }
            eprintln!("Dovecot attempt {attempt} on port {imap_port} did not come up as ours; trying other ports");
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        for mut c in extra.into_iter().chain([smtp]) {
            let _ = c.kill();
            let _ = c.wait();
        }
        panic!("Dovecot did not start (see {}/dovecot.log)", dir.display());
    }

    /// Starts another SMTP server (TLS with the test CA's certificate when asked, AUTH
    /// when asked) writing into `<dir>/<name>/Maildir`; returns its port. Stopped on drop.
    pub fn start_smtp(&mut self, name: &str, o: &SmtpOptions) -> u16 {
        let mut args: Vec<String> = vec!["--security".into(), if o.security.is_empty() { "plain" } else { o.security }.into()];
        if !o.security.is_empty() && o.security != "plain" {
            let d = &self.dir;
            args.extend([
                "--cert".into(),
                d.join("srv.pem").display().to_string(),
                "--key".into(),
                d.join("srv.key").display().to_string(),
            ]);
        }
        if let Some((u, p)) = o.auth {
            args.extend(["--user".into(), u.into(), "--password".into(), p.into()]);
        }
        if let Some(t) = &o.token {
            args.extend(["--token".into(), t.clone()]);
        }
        std::fs::create_dir_all(self.dir.join(name)).expect("sink dir");
        let (child, port) = spawn_smtp(&self.dir.join(name).join("Maildir"), &args).expect("the SMTP server starts");
        self.extra.push(child);
        port
    }

    /// Every message an extra SMTP server ([`Self::start_smtp`]) accepted.
    pub fn received(&self, name: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.dir.join(name).join("Maildir").join(sub)) {
                out.extend(rd.flatten().filter_map(|e| std::fs::read(e.path()).ok()));
            }
        }
        out
    }

    /// A `[[channels]]` table for the `support` mailbox on these peers.
    pub fn channel(&self, name: &str, extra: &str) -> toml::Value {
        let s = format!(
            "type = \"email\"\nname = \"{name}\"\naddress = \"support@shop.test\"\ndisplay_name = \"Shop Support\"\nlease_secs = 3\n{extra}\n\
             [imap]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nusername = \"support\"\npassword = \"secret\"\npoll_secs = 5\n\
             [smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\n",
            self.imap_port, self.smtp_port
        );
        toml::Value::Table(s.parse().expect("channel toml"))
    }

    /// IMAP settings for a user.
    pub fn imap(&self, user: &str) -> switchboard_email::config::ImapConfig {
        let s = format!(
            "host = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nusername = \"{user}\"\npassword = \"secret\"\n",
            self.imap_port
        );
        toml::from_str(&s).expect("imap toml")
    }

    /// Delivers messages into a user's INBOX (IMAP APPEND), in order.
    pub async fn append(&self, user: &str, messages: &[&[u8]]) {
        let mut s = switchboard_email::imap::connect(&self.imap(user)).await.expect("imap login");
        for m in messages {
            switchboard_email::imap::append(&mut s, "INBOX", None, m).await.expect("append");
        }
        let _ = s.logout().await;
    }

    /// UIDs of the user's INBOX messages that carry `\Seen`, and the count of all.
    pub async fn seen(&self, user: &str) -> (usize, usize) {
        let mut s = switchboard_email::imap::connect(&self.imap(user)).await.expect("imap login");
        s.select("INBOX").await.expect("select");
        let all = s.uid_search("ALL").await.expect("search").len();
        let seen = s.uid_search("SEEN").await.expect("search").len();
        let _ = s.logout().await;
        (seen, all)
    }

    /// Every message the SMTP sink received, oldest first.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.dir.join("smtp/Maildir").join(sub)) {
                for e in rd.flatten() {
                    let t = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                    files.push((t, e.path()));
                }
            }
        }
        files.sort();
        files.into_iter().filter_map(|(_, p)| std::fs::read(p).ok()).collect()
    }

    /// Waits until the sink holds at least `n` messages.
    pub async fn wait_sent(&self, n: usize, secs: u64) -> Vec<Vec<u8>> {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.sent();
            if s.len() >= n || Instant::now() > end {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for MailPeers {
    fn drop(&mut self) {
        // SIGTERM, so Dovecot's master stops its login and mail processes too.
        for c in [&self.dovecot, &self.smtp].into_iter().chain(self.extra.iter()) {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
        let _ = self.dovecot.wait();
        let _ = self.smtp.wait();
        for c in &mut self.extra {
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
