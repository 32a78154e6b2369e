//! `[[channels]] type = "email"`: one mailbox — its IMAP account (mail in), its SMTP
//! submission account (mail out), its From identity and the import and loop rules. Every
//! key but `type`, `address`, `imap.host`, `imap.username`, `smtp.host` has a default.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::path::PathBuf;

/// Settings of one support mailbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Adapter kind; always `email`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Instance name (logs, outbox routing, the mailbox's checkpoint and lease). Defaults to
    /// `email-<index>`. Keep it stable: renaming it starts the import from scratch (every
    /// message is then deduplicated by Message-ID, none is imported twice).
    #[serde(default)]
    pub name: Option<String>,
    /// The mailbox's public address (`support@example.com`): the From of replies and the
    /// base of reply tokens (`support+<token>@example.com`).
    pub address: String,
    /// Display name in the From of replies (`Example Support`).
    #[serde(default)]
    pub display_name: Option<String>,
    /// Text appended to every reply (after a `-- ` line, RFC 3676 §4.3).
    #[serde(default)]
    pub signature: Option<String>,
    /// Queue every new conversation of this mailbox enters (by name); none = the queue
    /// entry rules decide (they see the mailbox address as the contacted address).
    #[serde(default)]
    pub queue: Option<String>,
    /// Incoming mail.
    pub imap: ImapConfig,
    /// Outgoing mail.
    pub smtp: SmtpConfig,
    /// Largest message imported, in bytes; a larger one is still stored raw and becomes an
    /// interaction saying it was too large to show.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Largest single attachment kept, in bytes; larger ones are listed but not extracted.
    #[serde(default = "default_attachment_max")]
    pub attachment_max_bytes: usize,
    /// Largest total of the files an agent attaches to one reply or forward, in bytes
    /// (each upload is refused above it too).
    #[serde(default = "default_reply_attachments_max")]
    pub reply_attachments_max_bytes: usize,
    /// Directory for attachment files (`<dir>/<sha256>`). Defaults to
    /// `<database.data_dir>/attachments`.
    #[serde(default)]
    pub attachments_dir: Option<PathBuf>,
    /// Mails one sender may open or add per hour before further mail from that sender is
    /// only stored (not routed) — the stop for a mail loop nobody labelled as automatic.
    #[serde(default = "default_rate")]
    pub sender_rate_per_hour: u32,
    /// Acknowledge each new conversation automatically (with `Auto-Submitted:
    /// auto-replied`, never to automatic or bulk mail, at most once per sender per hour).
    #[serde(default)]
    pub auto_acknowledge: Option<String>,
    /// Seconds a node holds this mailbox's lease; it renews at a third of it, and another
    /// node takes the mailbox over once it expired.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
}

/// How a connection is secured.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// TLS from the first byte (IMAPS 993, SMTPS 465).
    Tls,
    /// Plain connection upgraded with STARTTLS (IMAP 143, submission 587).
    Starttls,
    /// No encryption: only for loopback test servers.
    Plain,
}

/// How the IMAP login is done.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ImapAuth {
    /// `LOGIN user password`.
    Login,
    /// `AUTHENTICATE XOAUTH2` with `password` holding the OAuth 2 access token.
    Xoauth2,
}

/// What happens to a message on the server once it is committed in the hub.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AfterImport {
    /// Flag it `\Seen` and leave it in the folder.
    Seen,
    /// Move it to `imap.move_to`.
    Move,
    /// Leave it untouched.
    Keep,
}

/// The IMAP account mail arrives in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// Server host name (also the TLS server name).
    pub host: String,
    /// Port; defaults to 993 for `tls`, 143 otherwise.
    #[serde(default)]
    pub port: Option<u16>,
    /// `tls`, `starttls` or `plain` (loopback only).
    #[serde(default = "default_security")]
    pub security: Security,
    /// Login name.
    pub username: String,
    /// Password, or the OAuth 2 access token with `auth = "xoauth2"`.
    #[serde(default = "empty_secret")]
    pub password: SecretString,
    /// `login` or `xoauth2`.
    #[serde(default = "default_auth")]
    pub auth: ImapAuth,
    /// With `auth = "xoauth2"`: a command (program and arguments, no shell) that prints a
    /// current access token; run at every login, so a reconnect after the token expired
    /// gets a fresh one (e.g. `["oauth2l", "fetch", "--refresh"]`). Overrides `password`.
    #[serde(default)]
    pub token_command: Option<Vec<String>>,
    /// Folder read.
    #[serde(default = "default_folder")]
    pub folder: String,
    /// `seen`, `move` or `keep`.
    #[serde(default = "default_after")]
    pub after_import: AfterImport,
    /// Folder messages are moved to with `after_import = "move"`.
    #[serde(default)]
    pub move_to: Option<String>,
    /// Use IDLE when the server offers it.
    #[serde(default = "default_true")]
    pub idle: bool,
    /// Seconds an IDLE lasts before it is re-issued (RFC 2177 asks clients to re-issue
    /// before the server's 30-minute inactivity timeout); at most 1740 (29 minutes).
    #[serde(default = "default_idle_renew")]
    pub idle_renew_secs: u64,
    /// Seconds between polls without IDLE, and the longest wait with it.
    #[serde(default = "default_poll")]
    pub poll_secs: u64,
    /// Messages fetched per round trip.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Folder a copy of each sent reply is appended to (e.g. `Sent`); none = no copy.
    #[serde(default)]
    pub sent_folder: Option<String>,
    /// A PEM file of CA certificates trusted besides the public roots (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The SMTP submission account replies leave through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Server host name.
    pub host: String,
    /// Port; defaults to 465 for `tls`, 587 for `starttls`, 25 for `plain`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `tls`, `starttls` or `plain` (loopback only).
    #[serde(default = "default_smtp_security")]
    pub security: Security,
    /// Login name; none = no authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// Password, or the OAuth 2 access token with `auth = "xoauth2"`.
    #[serde(default = "empty_secret")]
    pub password: SecretString,
    /// `login` (AUTH PLAIN or LOGIN with the password) or `xoauth2` (AUTH XOAUTH2 with the
    /// access token in `password`).
    #[serde(default = "default_auth")]
    pub auth: ImapAuth,
    /// A PEM file of CA certificates trusted besides the webpki roots (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// With `auth = "xoauth2"`: a program (and arguments, no shell) printing a current
    /// access token, run for every message sent (each then opens its own connection).
    #[serde(default)]
    pub token_command: Option<Vec<String>>,
    /// Most pooled connections.
    #[serde(default = "default_pool")]
    pub pool_max: u32,
    /// Seconds an SMTP command may take.
    #[serde(default = "default_smtp_timeout")]
    pub timeout_secs: u64,
}

fn default_max_message() -> usize {
    50 * 1024 * 1024
}
fn default_attachment_max() -> usize {
    25 * 1024 * 1024
}
fn default_reply_attachments_max() -> usize {
    10 * 1024 * 1024
}
fn default_rate() -> u32 {
    20
}
fn default_lease() -> u64 {
    15
}
fn default_security() -> Security {
    Security::Tls
}
fn default_smtp_security() -> Security {
    Security::Starttls
}
fn empty_secret() -> SecretString {
    SecretString::from(String::new())
}
fn default_auth() -> ImapAuth {
    ImapAuth::Login
}
fn default_folder() -> String {
    "INBOX".into()
}
fn default_after() -> AfterImport {
    AfterImport::Seen
}
fn default_true() -> bool {
    true
}
fn default_idle_renew() -> u64 {
    25 * 60
}
fn default_poll() -> u64 {
    60
}
fn default_batch() -> u32 {
    100
}
fn default_pool() -> u32 {
    4
}
fn default_smtp_timeout() -> u64 {
    30
}

impl ImapConfig {
    /// The port in effect.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.security == Security::Tls { 993 } else { 143 })
    }
}

impl SmtpConfig {
    /// The port in effect.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            Security::Tls => 465,
            Security::Starttls => 587,
            Security::Plain => 25,
        })
    }
}

impl EmailConfig {
    /// Parses and checks a `[[channels]]` table.
    pub fn from_toml(table: toml::Value) -> Result<EmailConfig, String> {
        let c: EmailConfig = table.try_into().map_err(|e: toml::de::Error| e.message().to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Checks value ranges; every problem is reported together.
    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if self.kind != "email" {
            errs.push(format!("type must be `email`, not `{}`", self.kind));
        }
        if let Some(n) = &self.name {
            // The name is a URL path segment of the mailbox's routes.
            if n.is_empty() || n.len() > 64 || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                errs.push(format!("name `{n}` must be 1..=64 letters, digits, `-` or `_`"));
            }
        }
        match self.address.split_once('@') {
            Some((local, domain)) if !local.is_empty() && domain.contains('.') || domain == "localhost" => {
                if local.contains('+') {
                    errs.push("address must not contain `+` (it carries the reply token)".to_string());
                }
            }
            _ => errs.push(format!("address `{}` is not an email address", self.address)),
        }
        if self.imap.host.trim().is_empty() || self.smtp.host.trim().is_empty() {
            errs.push("imap.host and smtp.host must not be empty".to_string());
        }
        if self.imap.after_import == AfterImport::Move && self.imap.move_to.as_deref().is_none_or(|f| f.trim().is_empty()) {
            errs.push("imap.after_import = \"move\" needs imap.move_to".to_string());
        }
        if !(10..=29 * 60).contains(&self.imap.idle_renew_secs) {
            errs.push("imap.idle_renew_secs must be between 10 and 1740 (RFC 2177: re-issue before 29 minutes)".to_string());
        }
        if self.imap.poll_secs == 0 || self.imap.poll_secs > 3600 {
            errs.push("imap.poll_secs must be between 1 and 3600".to_string());
        }
        if !(1..=1000).contains(&self.imap.batch) {
            errs.push("imap.batch must be between 1 and 1000".to_string());
        }
        if self.imap.auth == ImapAuth::Xoauth2 && self.imap.password.expose_secret().is_empty() && self.imap.token_command.is_none() {
            errs.push("imap.auth = \"xoauth2\" needs the access token in imap.password or an imap.token_command".to_string());
        }
        if self.imap.token_command.as_ref().is_some_and(|c| c.is_empty()) || self.smtp.token_command.as_ref().is_some_and(|c| c.is_empty())
        {
            errs.push("imap.token_command and smtp.token_command must name a program".to_string());
        }
        if self.smtp.pool_max == 0 || self.smtp.timeout_secs == 0 {
            errs.push("smtp.pool_max and smtp.timeout_secs must be positive".to_string());
        }
        if self.max_message_bytes < 1024 || self.attachment_max_bytes == 0 || self.reply_attachments_max_bytes == 0 {
            errs.push("max_message_bytes must be at least 1024, attachment_max_bytes and reply_attachments_max_bytes positive".to_string());
        }
        if self.sender_rate_per_hour == 0 {
            errs.push("sender_rate_per_hour must be at least 1".to_string());
        }
        if !(3..=600).contains(&self.lease_secs) {
            errs.push("lease_secs must be between 3 and 600".to_string());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }

    /// The local part and domain of the mailbox address.
    pub fn address_parts(&self) -> (&str, &str) {
        self.address.split_once('@').unwrap_or((self.address.as_str(), ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<EmailConfig, String> {
        EmailConfig::from_toml(toml::Value::Table(s.parse().unwrap()))
    }

    const MIN: &str = "type = \"email\"\naddress = \"support@example.com\"\n[imap]\nhost = \"imap.example.com\"\nusername = \"support\"\npassword = \"imap-secret-pw\"\n[smtp]\nhost = \"smtp.example.com\"\n";

    #[test]
    fn defaults_and_unknown_keys() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.imap.port(), 993);
        assert_eq!(c.smtp.port(), 587);
        assert_eq!(c.imap.after_import, AfterImport::Seen);
        assert_eq!(c.address_parts(), ("support", "example.com"));
        let e = parse(&format!("{MIN}pool_maxx = 3\n")).unwrap_err();
        assert!(e.contains("pool_maxx"), "{e}");
    }

    #[test]
    fn bad_values_are_reported_together() {
        let s = MIN
            .replace("support@example.com", "sup+port@example.com")
            .replace("[smtp]", "idle_renew_secs = 1800\nafter_import = \"move\"\n[smtp]");
        let e = parse(&s).unwrap_err();
        assert!(e.contains("`+`") && e.contains("idle_renew_secs") && e.contains("move_to"), "{e}");
    }

    #[test]
    fn documented_example_parses() {
        let doc: toml::Value = include_str!("../../../config/examples/email.toml").parse::<toml::Table>().unwrap().into();
        let ch = doc.get("channels").and_then(|c| c.as_array()).and_then(|a| a.first()).cloned().unwrap();
        let c = EmailConfig::from_toml(ch).unwrap();
        assert_eq!(c.imap.port(), 993);
        assert_eq!(c.smtp.security, Security::Starttls);
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let c = parse(MIN).unwrap();
        assert!(!format!("{c:?}").contains("imap-secret-pw"));
    }
}
