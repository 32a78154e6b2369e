//! `[[channels]] type = "webchat"`: the web chat adapter's settings, with a default for
//! every key except `type`.

use secrecy::SecretString;
use serde::Deserialize;
use std::path::PathBuf;

/// Settings of one web chat channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    /// Adapter kind; always `webchat`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Instance name (logs, outbox routing, secret storage). Defaults to `webchat-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Title shown in the widget's header.
    #[serde(default = "default_title")]
    pub widget_title: String,
    /// Origins (`https://shop.example.com`) allowed to embed the widget: CORS for the HTTP
    /// endpoints and the `Origin` check of the WebSocket. Empty = any origin.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Largest visitor message text, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Largest WebSocket frame accepted, in bytes; larger frames get an error frame.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// Largest attachment, in bytes.
    #[serde(default = "default_attachment_max")]
    pub attachment_max_bytes: usize,
    /// Attachment content types accepted (the file's leading bytes must agree for the
    /// image and PDF types).
    #[serde(default = "default_content_types")]
    pub attachment_content_types: Vec<String>,
    /// Messages (and attachments, offline forms) a visitor may send per 10 seconds.
    #[serde(default = "default_rate")]
    pub rate_limit_per_10s: u32,
    /// Chat sessions one IP address may start per minute.
    #[serde(default = "default_sessions_per_ip")]
    pub sessions_per_minute_per_ip: u32,
    /// HMAC key signing visitor tokens. When absent, a random key is generated on first
    /// start and kept in the database (table `chat_secrets`), shared by every node.
    #[serde(default)]
    pub token_secret: Option<SecretString>,
    /// Days a visitor token stays valid (a returning visitor continues the conversation).
    #[serde(default = "default_ttl_days")]
    pub token_ttl_days: u32,
    /// Directory for attachment files (`<dir>/<sha256>`). Defaults to
    /// `<database.data_dir>/attachments`.
    #[serde(default)]
    pub attachments_dir: Option<PathBuf>,
    /// Queue every chat enters (by name); none = the queue entry rules decide.
    #[serde(default)]
    pub queue: Option<String>,
    /// Whether the widget asks for name and email before the chat starts.
    #[serde(default = "default_true")]
    pub prechat_form: bool,
    /// Seconds a new WebSocket has to send its `hello` frame.
    #[serde(default = "default_hello_timeout")]
    pub hello_timeout_secs: u64,
    /// Seconds between server pings on an idle WebSocket (keeps proxies and NATs open).
    #[serde(default = "default_ping")]
    pub ping_interval_secs: u64,
}

fn default_title() -> String {
    "Chat with us".into()
}
fn default_max_message() -> usize {
    4096
}
fn default_max_frame() -> usize {
    16 * 1024
}
fn default_attachment_max() -> usize {
    5 * 1024 * 1024
}
fn default_content_types() -> Vec<String> {
    ["image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"].iter().map(|s| s.to_string()).collect()
}
fn default_rate() -> u32 {
    10
}
fn default_sessions_per_ip() -> u32 {
    30
}
fn default_ttl_days() -> u32 {
    30
}
fn default_true() -> bool {
    true
}
fn default_hello_timeout() -> u64 {
    10
}
fn default_ping() -> u64 {
    30
}

impl ChatConfig {
    /// Parses and checks a `[[channels]]` table.
    pub fn from_toml(table: toml::Value) -> Result<ChatConfig, String> {
        let c: ChatConfig = table.try_into().map_err(|e: toml::de::Error| e.message().to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Checks value ranges; every problem is reported together.
    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if self.kind != "webchat" {
            errs.push(format!("type must be `webchat`, not `{}`", self.kind));
        }
        if !(16..=65536).contains(&self.max_message_bytes) {
            errs.push("max_message_bytes must be between 16 and 65536".to_string());
        }
        if self.max_frame_bytes < self.max_message_bytes + 512 || self.max_frame_bytes > 1024 * 1024 {
            errs.push("max_frame_bytes must be at least max_message_bytes + 512 and at most 1 MiB".to_string());
        }
        if self.attachment_max_bytes == 0 || self.attachment_max_bytes > 100 * 1024 * 1024 {
            errs.push("attachment_max_bytes must be between 1 and 104857600".to_string());
        }
        for t in &self.attachment_content_types {
            if !t.contains('/') || t.contains(';') || t.contains(char::is_whitespace) {
                errs.push(format!("attachment_content_types: `{t}` is not a bare type/subtype"));
            }
        }
        if self.rate_limit_per_10s == 0 {
            errs.push("rate_limit_per_10s must be at least 1".to_string());
        }
        if self.sessions_per_minute_per_ip == 0 {
            errs.push("sessions_per_minute_per_ip must be at least 1".to_string());
        }
        if self.token_ttl_days == 0 {
            errs.push("token_ttl_days must be at least 1".to_string());
        }
        if let Some(s) = &self.token_secret {
            use secrecy::ExposeSecret;
            if s.expose_secret().len() < 16 {
                errs.push("token_secret must be at least 16 characters".to_string());
            }
        }
        for o in &self.allowed_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                errs.push(format!("allowed_origins: `{o}` must look like https://host[:port] (no path, no trailing slash)"));
            }
        }
        if self.widget_title.trim().is_empty() || self.widget_title.len() > 200 {
            errs.push("widget_title must be 1..=200 bytes".to_string());
        }
        if self.hello_timeout_secs == 0 || self.ping_interval_secs == 0 {
            errs.push("hello_timeout_secs and ping_interval_secs must be positive".to_string());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }

    /// Whether a browser origin may use the widget endpoints.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins.is_empty() || self.allowed_origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }

    /// Whether an attachment content type is on the allow list.
    pub fn content_type_allowed(&self, ct: &str) -> bool {
        self.attachment_content_types.iter().any(|t| t.eq_ignore_ascii_case(ct))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ChatConfig, String> {
        ChatConfig::from_toml(toml::Value::Table(s.parse().unwrap()))
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let c = parse("type = \"webchat\"").unwrap();
        assert_eq!(c.max_message_bytes, 4096);
        assert!(c.origin_allowed("https://anything.example"));
        assert!(c.content_type_allowed("IMAGE/PNG"));
        assert!(!c.content_type_allowed("text/html"));
        let e = parse("type = \"webchat\"\nmax_mesage_bytes = 5").unwrap_err();
        assert!(e.contains("max_mesage_bytes"), "{e}");
    }

    #[test]
    fn bad_values_are_reported_together() {
        let e = parse("type = \"webchat\"\nrate_limit_per_10s = 0\nallowed_origins = [\"shop.example.com\"]\ntoken_secret = \"short\"")
            .unwrap_err();
        assert!(e.contains("rate_limit_per_10s") && e.contains("allowed_origins") && e.contains("token_secret"), "{e}");
        let c = parse("type = \"webchat\"\nallowed_origins = [\"https://shop.example.com\"]").unwrap();
        assert!(c.origin_allowed("https://shop.example.com"));
        assert!(!c.origin_allowed("https://evil.example"));
    }

    #[test]
    fn secret_is_not_in_debug_output() {
        let c = parse("type = \"webchat\"\ntoken_secret = \"0123456789abcdef-very-secret\"").unwrap();
        assert!(!format!("{c:?}").contains("very-secret"));
    }
}
