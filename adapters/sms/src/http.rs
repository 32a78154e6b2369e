//! `[[channels]] type = "http"`: an SMS provider reached over HTTP. Outbound is one
//! configurable request (URL, method, form / JSON / query fields from templates, basic or
//! bearer auth); inbound messages and status callbacks arrive as webhooks on the hub
//! (`/sms/v1/<name>/inbound`, `/sms/v1/<name>/status`), verified by signature before
//! anything is read: HMAC-SHA256 over the raw body, or Twilio's scheme (HMAC-SHA1 over the
//! public URL followed by the sorted form parameters, base64), or a URL token. Kannel's
//! `sendsms` interface is one configuration of it (`method = "GET"`, `body = "query"`),
//! with its `get-url` (incoming texts) and `dlr-url` (delivery reports) calling the
//! webhooks by GET with the parameters in the query and `signature = "url_token"`.

use crate::inbound::{accept_text, InboundText};
use crate::keywords::{self, KeywordSet};
use crate::receipt::{Receipt, SmsStatus};
use crate::store::{self, Prior};
use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use switchboard_core::adapter::{AdapterError, ChannelAdapter, DeliveryReceipt, Outbound, Shutdown};
use switchboard_core::{Channel, CoreError, Hub};

/// The adapter kind in `[[channels]]`.
pub const KIND: &str = "http";

/// How the outbound request carries its fields.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BodyKind {
    /// `application/x-www-form-urlencoded`.
    Form,
    /// A JSON object of strings.
    Json,
    /// In the URL's query string (Kannel `sendsms`).
    Query,
}

/// How webhooks are signed.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignatureScheme {
    /// Hex HMAC-SHA256 of the raw body (an optional `sha256=` prefix is accepted).
    HmacSha256,
    /// Twilio: base64 HMAC-SHA1 of the public URL + each sorted form key and value.
    Twilio,
    /// The secret as the `token` query parameter of the webhook URL, for gateways that
    /// cannot sign (Kannel's `get-url` and `dlr-url`); use it over HTTPS or loopback.
    UrlToken,
    /// No verification (only behind a trusted network).
    None,
}

/// Settings of one HTTP SMS provider account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Adapter kind; always `http`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Instance name; webhook paths are `/sms/v1/<name>/inbound` and `/status`.
    #[serde(default)]
    pub name: Option<String>,
    /// Our number or sender id (`{from}` in templates).
    pub from: String,
    /// URL of the send request.
    pub send_url: String,
    /// `POST` or `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// `form`, `json` or `query`.
    #[serde(default = "default_body")]
    pub body: BodyKind,
    /// Request fields: name → template with `{to}` (E.164), `{to_digits}`, `{from}`,
    /// `{text}`, `{key}` (the outbox idempotency key), `{id}` (the outbox id: the message
    /// id receipts refer to when the provider answers with none, e.g. in Kannel's
    /// `dlr-url`).
    pub fields: BTreeMap<String, String>,
    /// Basic-auth user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// Bearer token (instead of basic auth).
    #[serde(default)]
    pub bearer_token: Option<SecretString>,
    /// JSON pointer of the provider's message id in the send response (e.g. `/sid`).
    #[serde(default)]
    pub response_id_pointer: Option<String>,
    /// Webhook signature scheme: `hmac_sha256`, `twilio`, `url_token` or `none`.
    #[serde(default = "default_scheme")]
    pub signature: SignatureScheme,
    /// Secret the provider signs webhooks with (the Twilio auth token).
    #[serde(default)]
    pub signature_secret: Option<SecretString>,
    /// Header carrying the signature.
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// The hub's public base URL as the provider calls it (Twilio signs the full URL),
    /// e.g. `https://hub.example.com`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Inbound webhook field with the sender.
    #[serde(default = "default_from_field")]
    pub inbound_from_field: String,
    /// Inbound webhook field with our number.
    #[serde(default = "default_to_field")]
    pub inbound_to_field: String,
    /// Inbound webhook field with the text.
    #[serde(default = "default_text_field")]
    pub inbound_text_field: String,
    /// Field with the provider's message id (inbound and status webhooks).
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// Status webhook field with the status word.
    #[serde(default = "default_status_field")]
    pub status_field: String,
    /// Queue every SMS enters (by name); none = the queue entry rules decide.
    #[serde(default)]
    pub queue: Option<String>,
    /// Consent keywords and replies per language (defaults: `en` and `zh`).
    #[serde(default = "keywords::default_sets")]
    pub keywords: BTreeMap<String, KeywordSet>,
    /// Whether an opted-out number also gets no agent replies.
    #[serde(default)]
    pub block_replies_after_stop: bool,
}

fn default_method() -> String {
    "POST".into()
}
fn default_body() -> BodyKind {
    BodyKind::Form
}
fn default_scheme() -> SignatureScheme {
    SignatureScheme::HmacSha256
}
fn default_signature_header() -> String {
    "X-Signature".into()
}
fn default_from_field() -> String {
    "From".into()
}
fn default_to_field() -> String {
    "To".into()
}
fn default_text_field() -> String {
    "Body".into()
}
fn default_id_field() -> String {
    "MessageSid".into()
}
fn default_status_field() -> String {
    "MessageStatus".into()
}

impl HttpConfig {
    /// Parses and checks a `[[channels]]` table.
    pub fn from_toml(table: toml::Value) -> Result<HttpConfig, String> {
        let c: HttpConfig = table.try_into().map_err(|e: toml::de::Error| e.message().to_string())?;
        let mut errs = Vec::new();
        if c.kind != KIND {
            errs.push(format!("type must be `http`, not `{}`", c.kind));
        }
        if !(c.send_url.starts_with("http://") || c.send_url.starts_with("https://")) {
            errs.push("send_url must be an http(s) URL".into());
        }
        if !matches!(c.method.as_str(), "POST" | "GET") {
            errs.push("method must be POST or GET".into());
        }
        if c.method == "GET" && c.body != BodyKind::Query {
            errs.push("a GET request carries its fields in the query: body = \"query\"".into());
        }
        if c.signature != SignatureScheme::None && c.signature_secret.is_none() {
            errs.push("signature_secret is required unless signature = \"none\"".into());
        }
        if c.signature == SignatureScheme::Twilio && c.public_url.is_none() {
            errs.push("signature = \"twilio\" needs public_url (Twilio signs the full URL)".into());
        }
        if c.password.is_some() && c.username.is_none() {
            errs.push("password needs username".into());
        }
        if errs.is_empty() {
            Ok(c)
        } else {
            Err(errs.join("; "))
        }
    }
}

/// Hex HMAC-SHA256 of a body.
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

/// Twilio's signature: base64 HMAC-SHA1 of the URL followed by every parameter's name and
/// value, sorted by name.
pub fn twilio_signature(secret: &[u8], url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut m = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(url.as_bytes());
    for (k, v) in sorted {
        m.update(k.as_bytes());
        m.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

/// Constant-time comparison of two signatures.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a webhook's signature. `path` is the request path (for Twilio's URL).
pub fn verify(cfg: &HttpConfig, path: &str, headers: &HeaderMap, body: &[u8], params: &[(String, String)]) -> bool {
    let secret = match (&cfg.signature, &cfg.signature_secret) {
        (SignatureScheme::None, _) => return true,
        (_, Some(s)) => s.expose_secret().as_bytes().to_vec(),
        (_, None) => return false,
    };
    if cfg.signature == SignatureScheme::UrlToken {
        return params.iter().any(|(k, v)| k == "token" && same(v.as_bytes(), &secret));
    }
    let Some(given) = headers.get(cfg.signature_header.as_str()).and_then(|v| v.to_str().ok()) else { return false };
    match cfg.signature {
        SignatureScheme::HmacSha256 => {
            let given = given.trim().strip_prefix("sha256=").unwrap_or(given.trim()).to_ascii_lowercase();
            same(given.as_bytes(), hmac_sha256_hex(&secret, body).as_bytes())
        }
        SignatureScheme::Twilio => {
            let url = format!("{}{path}", cfg.public_url.as_deref().unwrap_or("").trim_end_matches('/'));
            same(given.trim().as_bytes(), twilio_signature(&secret, &url, params).as_bytes())
        }
        SignatureScheme::UrlToken | SignatureScheme::None => true,
    }
}

/// Webhook parameters: a form body, or a flat JSON object of strings and numbers; for a
/// GET (Kannel), the query string.
fn params_of(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Option<Vec<(String, String)>> {
    if let Some(q) = query {
        return Some(form_urlencoded::parse(q.as_bytes()).into_owned().collect());
    }
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.starts_with("application/json") {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let o = v.as_object()?;
        Some(
            o.iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k.clone(), s.clone())),
                    serde_json::Value::Number(n) => Some((k.clone(), n.to_string())),
                    _ => None,
                })
                .collect(),
        )
    } else {
        Some(form_urlencoded::parse(body).into_owned().collect())
    }
}

/// A provider's status word as ours.
pub fn status_word(s: &str) -> Option<SmsStatus> {
    Some(match s.to_ascii_lowercase().as_str() {
        "delivered" | "delivrd" => SmsStatus::Delivered,
        "sent" | "enroute" | "sending" => SmsStatus::Enroute,
        "accepted" | "queued" | "acceptd" => SmsStatus::Accepted,
        "undelivered" | "undeliv" | "undeliverable" => SmsStatus::Undeliverable,
        "failed" | "rejected" | "rejectd" => SmsStatus::Rejected,
        "expired" => SmsStatus::Expired,
        // Kannel's DLR types (%d in dlr-url): 1 delivered, 2 failed at the phone, 4
        // buffered, 8 accepted by the SMSC, 16 refused by the SMSC.
        "1" => SmsStatus::Delivered,
        "2" => SmsStatus::Undeliverable,
        "4" => SmsStatus::Enroute,
        "8" => SmsStatus::Accepted,
        "16" => SmsStatus::Rejected,
        _ => return None,
    })
}

/// State of one HTTP provider channel.
pub struct HttpState {
    /// Instance name.
    pub name: String,
    /// Settings.
    pub cfg: HttpConfig,
    client: reqwest::Client,
    hub: OnceLock<Hub>,
    submit_log: OnceLock<store::SubmitLog>,
}

/// The `http` SMS adapter.
pub struct HttpAdapter {
    state: Arc<HttpState>,
}

impl HttpAdapter {
    /// Builds the adapter.
    pub fn new(name: String, cfg: HttpConfig) -> HttpAdapter {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().unwrap_or_default();
        HttpAdapter { state: Arc::new(HttpState { name, cfg, client, hub: OnceLock::new(), submit_log: OnceLock::new() }) }
    }
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

fn problem(status: StatusCode, detail: &str) -> Response {
    (status, [("content-type", "application/problem+json")], serde_json::json!({ "title": detail, "status": status.as_u16() }).to_string())
        .into_response()
}

impl HttpState {
    async fn send(&self, msg: &Outbound) -> Result<DeliveryReceipt, AdapterError> {
        let hub = self.hub.get().ok_or_else(|| AdapterError::Temporary("sms adapter not started".into()))?;
        let to = crate::adapter::e164(&msg.recipient)
            .ok_or_else(|| AdapterError::Permanent(format!("recipient: `{}` is not an E.164 phone number", msg.recipient)))?;
        // A retry of a request whose outcome is unclear is sent again with the same
        // Idempotency-Key (HTTP providers can honour one, unlike SMPP).
        let log = self.submit_log.get_or_init(|| store::SubmitLog::new(hub.db().clone()));
        let begin = store::BeginSubmit::of(msg, &self.name, &to, 1).stopped_by_opt_out(msg, self.cfg.block_replies_after_stop);
        match log.begin(begin).await? {
            Prior::Fresh => {}
            Prior::OptedOut => return Err(AdapterError::Permanent(format!("{to} opted out of SMS (STOP)"))),
            Prior::Seen(st, ids) => match st.as_str() {
                "submitting" => {}
                "failed" => return Err(AdapterError::Permanent("the provider refused this message earlier".into())),
                _ => return Ok(DeliveryReceipt { provider_id: Some(ids.join(",")) }),
            },
        }
        let vars = [
            ("to", to.as_str()),
            ("to_digits", &to[1..]),
            ("from", self.cfg.from.as_str()),
            ("text", msg.body.as_str()),
            ("key", msg.idempotency_key.as_str()),
            ("id", &msg.id.to_string()),
        ];
        let fields: Vec<(String, String)> = self.cfg.fields.iter().map(|(k, v)| (k.clone(), fill(v, &vars))).collect();
        let mut req = match (self.cfg.method.as_str(), self.cfg.body) {
            (_, BodyKind::Query) if self.cfg.method == "GET" => self.client.get(&self.cfg.send_url).query(&fields),
            (_, BodyKind::Query) => self.client.post(&self.cfg.send_url).query(&fields),
            (_, BodyKind::Form) => self.client.post(&self.cfg.send_url).form(&fields),
            (_, BodyKind::Json) => self.client.post(&self.cfg.send_url).json(&fields.iter().cloned().collect::<BTreeMap<_, _>>()),
        };
        if let Some(u) = &self.cfg.username {
            req = req.basic_auth(u, self.cfg.password.as_ref().map(|p| p.expose_secret().to_string()));
        } else if let Some(t) = &self.cfg.bearer_token {
            req = req.bearer_auth(t.expose_secret());
        }
        req = req.header("Idempotency-Key", &msg.idempotency_key);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                // Nothing reached the provider when the connection failed; a timeout may
                // have: the idempotency key lets providers that honour it drop the resend.
                if !e.is_timeout() {
                    store::cancel_submit(hub.db(), msg.id).await?;
                }
                return Err(AdapterError::Temporary(format!("provider request failed: {e}")));
            }
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            store::cancel_submit(hub.db(), msg.id).await?;
            return Err(AdapterError::Temporary(format!("provider answered {status}")));
        }
        if !status.is_success() {
            store::mark(hub.db(), msg.id, SmsStatus::Failed, &format!("provider answered {status}")).await?;
            return Err(AdapterError::Permanent(format!("provider refused the message: {status}")));
        }
        let id = self
            .cfg
            .response_id_pointer
            .as_deref()
            .and_then(|p| {
                serde_json::from_str::<serde_json::Value>(&text)
                    .ok()?
                    .pointer(p)
                    .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
            })
            .or_else(|| Some(text.trim().to_string()).filter(|t| !t.is_empty() && t.len() <= 64 && !t.contains(char::is_whitespace)))
            .unwrap_or_else(|| msg.id.to_string());
        log.part(&self.name, msg.id, &id).await?;
        Ok(DeliveryReceipt { provider_id: Some(id) })
    }

    /// `POST /sms/v1/<name>/inbound`: verified, committed, then 200.
    async fn inbound(&self, hub: &Hub, path: &str, query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Response {
        let Some(params) = params_of(query, headers, body) else {
            return problem(StatusCode::BAD_REQUEST, "body is neither a form nor a JSON object");
        };
        if !verify(&self.cfg, path, headers, body, &params) {
            tracing::warn!(channel = %self.name, "Inbound SMS webhook with a bad signature refused.");
            return problem(StatusCode::FORBIDDEN, "bad or missing signature");
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let Some(from_raw) = get(&self.cfg.inbound_from_field).filter(|s| !s.is_empty()) else {
            return problem(StatusCode::BAD_REQUEST, &format!("field `{}` (sender) is missing", self.cfg.inbound_from_field));
        };
        let Some(text) = get(&self.cfg.inbound_text_field) else {
            return problem(StatusCode::BAD_REQUEST, &format!("field `{}` (text) is missing", self.cfg.inbound_text_field));
        };
        if text.len() > 64 * 1024 || from_raw.len() > 64 {
            return problem(StatusCode::PAYLOAD_TOO_LARGE, "text or sender too long");
        }
        let from = crate::adapter::e164(from_raw).unwrap_or_else(|| from_raw.to_string());
        let to = get(&self.cfg.inbound_to_field).unwrap_or("").to_string();
        let dedupe_key = match get(&self.cfg.id_field).filter(|s| !s.is_empty()) {
            Some(id) => format!("http:{}:id:{id}", self.name),
            None => format!(
                "http:{}:h:{}",
                self.name,
                crate::adapter::short_hash(&[&from, &to, &format!("w{}", chrono::Utc::now().timestamp() / 600), text])
            ),
        };
        let t = InboundText { channel: &self.name, from: &from, to: &to, body: text.to_string(), dedupe_key };
        match accept_text(hub, &self.cfg.keywords, self.cfg.queue.clone(), t).await {
            Ok(()) => (StatusCode::OK, [("content-type", "text/xml")], "<Response/>").into_response(),
            Err(CoreError::InvalidField { field, reason }) => problem(StatusCode::UNPROCESSABLE_ENTITY, &format!("{field}: {reason}")),
            Err(e) => {
                tracing::error!(channel = %self.name, error = %e, "Inbound SMS webhook not stored.");
                problem(StatusCode::SERVICE_UNAVAILABLE, "not stored; please retry")
            }
        }
    }

    /// `POST /sms/v1/<name>/status`: a delivery status callback.
    async fn status(&self, hub: &Hub, path: &str, query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Response {
        let Some(params) = params_of(query, headers, body) else {
            return problem(StatusCode::BAD_REQUEST, "body is neither a form nor a JSON object");
        };
        if !verify(&self.cfg, path, headers, body, &params) {
            tracing::warn!(channel = %self.name, "SMS status webhook with a bad signature refused.");
            return problem(StatusCode::FORBIDDEN, "bad or missing signature");
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let Some(id) = get(&self.cfg.id_field).filter(|s| !s.is_empty() && s.len() <= 128) else {
            return problem(StatusCode::BAD_REQUEST, &format!("field `{}` (message id) is missing", self.cfg.id_field));
        };
        let Some(status) = get(&self.cfg.status_field).and_then(status_word) else {
            // Unknown words (e.g. "receiving") change nothing.
            return StatusCode::NO_CONTENT.into_response();
        };
        let r = Receipt { message_id: id.to_string(), status, error: get("ErrorCode").map(str::to_string) };
        match store::apply_receipt_waiting(hub.db(), &self.name, &r, std::time::Duration::from_secs(3)).await {
            Ok(_) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => {
                tracing::error!(channel = %self.name, error = %e, "SMS status webhook not stored.");
                problem(StatusCode::SERVICE_UNAVAILABLE, "not stored; please retry")
            }
        }
    }
}

#[async_trait]
impl ChannelAdapter for HttpAdapter {
    fn channel(&self) -> Channel {
        Channel::Sms
    }

    fn name(&self) -> &str {
        &self.state.name
    }

    async fn run(&self, hub: Hub, mut shutdown: Shutdown) -> Result<(), AdapterError> {
        hub.add_route_docs(crate::api::route_docs(&self.state.name));
        let _ = self.state.hub.set(hub);
        tracing::info!(channel = %self.state.name, "HTTP SMS channel running.");
        shutdown.wait().await;
        Ok(())
    }

    async fn deliver(&self, msg: &Outbound) -> Result<DeliveryReceipt, AdapterError> {
        self.state.send(msg).await
    }

    fn http_router(&self) -> Option<axum::Router<Hub>> {
        let inbound_path = format!("/sms/v1/{}/inbound", self.state.name);
        let status_path = format!("/sms/v1/{}/status", self.state.name);
        let (s1, s2, s3, s4) = (self.state.clone(), self.state.clone(), self.state.clone(), self.state.clone());
        let (p1, p2, p3, p4) = (inbound_path.clone(), status_path.clone(), inbound_path.clone(), status_path.clone());
        // Webhook bodies are small: 256 KiB at most.
        let limit = axum::extract::DefaultBodyLimit::max(256 * 1024);
        Some(
            axum::Router::new()
                .route(
                    &inbound_path,
                    post(move |State(hub): State<Hub>, headers: HeaderMap, body: Bytes| async move {
                        s1.inbound(&hub, &p1, None, &headers, &body).await
                    })
                    .get(move |State(hub): State<Hub>, uri: Uri, headers: HeaderMap| async move {
                        s3.inbound(&hub, &p3, Some(uri.query().unwrap_or("")), &headers, &[]).await
                    }),
                )
                .route(
                    &status_path,
                    post(move |State(hub): State<Hub>, headers: HeaderMap, body: Bytes| async move {
                        s2.status(&hub, &p2, None, &headers, &body).await
                    })
                    .get(move |State(hub): State<Hub>, uri: Uri, headers: HeaderMap| async move {
                        s4.status(&hub, &p4, Some(uri.query().unwrap_or("")), &headers, &[]).await
                    }),
                )
                .layer(limit)
                .merge(crate::api::router(&self.state.name)),
        )
    }
}

/// Builds an HTTP provider adapter from a `[[channels]]` table.
pub fn build(name: &str, table: toml::Value) -> Result<HttpAdapter, crate::SmsError> {
    let cfg = HttpConfig::from_toml(table).map_err(crate::SmsError::Config)?;
    let name = cfg.name.clone().unwrap_or_else(|| name.to_string());
    crate::check_name(&name)?;
    Ok(HttpAdapter::new(name, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_signature_matches_the_documented_example() {
        // Twilio's documentation example (auth token 12345).
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(twilio_signature(b"12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &params), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    }

    fn cfg(extra: &str) -> HttpConfig {
        HttpConfig::from_toml(
            toml::from_str(&format!(
                "type = \"http\"\nfrom = \"+4930123456\"\nsend_url = \"http://127.0.0.1:1/send\"\nfields = {{ To = \"{{to}}\", Body = \"{{text}}\" }}\n{extra}"
            ))
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn hmac_signatures_are_checked() {
        let c = cfg("signature_secret = \"k\"");
        let body = b"From=%2B4915112345678&Body=hi";
        let mut h = HeaderMap::new();
        assert!(!verify(&c, "/p", &h, body, &[]), "missing signature");
        h.insert("X-Signature", hmac_sha256_hex(b"k", body).parse().unwrap());
        assert!(verify(&c, "/p", &h, body, &[]));
        h.insert("X-Signature", format!("sha256={}", hmac_sha256_hex(b"k", body)).parse().unwrap());
        assert!(verify(&c, "/p", &h, body, &[]));
        assert!(!verify(&c, "/p", &h, b"From=%2B4915112345678&Body=hj", &[]), "tampered body");
        h.insert("X-Signature", hmac_sha256_hex(b"other", body).parse().unwrap());
        assert!(!verify(&c, "/p", &h, body, &[]), "wrong key");
    }

    #[test]
    fn config_is_checked() {
        let e = HttpConfig::from_toml(
            toml::from_str("type = \"http\"\nfrom = \"x\"\nsend_url = \"ftp://x\"\nfields = {}\nmethod = \"GET\"").unwrap(),
        )
        .unwrap_err();
        assert!(e.contains("send_url") && e.contains("query") && e.contains("signature_secret"), "{e}");
        assert_eq!(status_word("DELIVERED"), Some(SmsStatus::Delivered));
        assert_eq!(status_word("receiving"), None);
    }
}
