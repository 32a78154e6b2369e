//! SMTP submission (the socket shell around lettre): a pooled async transport per mailbox
//! with TLS, STARTTLS or plain (loopback tests), and authentication when configured.

use crate::config::{ImapAuth, Security, SmtpConfig};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::ExposeSecret;
use std::time::Duration;

/// The transport of one mailbox.
pub type SmtpTransport = AsyncSmtpTransport<Tokio1Executor>;

/// Builds the transport (no connection is made until the first send).
pub fn transport(cfg: &SmtpConfig) -> Result<SmtpTransport, String> {
    transport_with_secret(cfg, cfg.password.expose_secret())
}

/// [`transport`] with another password or access token (from `smtp.token_command`).
pub fn transport_with_secret(cfg: &SmtpConfig, secret: &str) -> Result<SmtpTransport, String> {
    let tls = |host: &str| {
        let mut b = TlsParameters::builder(host.to_string());
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("smtp.ca_file {}: {e}", path.display()))?;
            b = b.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| format!("smtp.ca_file {}: {e}", path.display()))?);
        }
        b.build().map_err(|e| e.to_string())
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host).port(cfg.port()).tls(match cfg.security {
        Security::Tls => Tls::Wrapper(tls(&cfg.host)?),
        Security::Starttls => Tls::Required(tls(&cfg.host)?),
        Security::Plain => Tls::None,
    });
    if let Some(user) = &cfg.username {
        b = b.credentials(Credentials::new(user.clone(), secret.to_string()));
        if cfg.auth == ImapAuth::Xoauth2 {
            b = b.authentication(vec![Mechanism::Xoauth2]);
        }
    }
    Ok(b.timeout(Some(Duration::from_secs(cfg.timeout_secs))).pool_config(PoolConfig::new().max_size(cfg.pool_max)).build())
}

/// How a send ended.
#[derive(Debug)]
pub enum SendOutcome {
    /// The server accepted the message (its reply, e.g. the queue id).
    Accepted(String),
    /// The server refused it for good (5xx).
    Rejected(String),
    /// The server refused it for now (4xx): nothing was accepted, retrying is safe.
    Deferred(String),
    /// The connection broke mid-transaction: the server may or may not have it.
    Unknown(String),
}

/// Sends a built message.
pub async fn send(t: &SmtpTransport, m: lettre::Message) -> SendOutcome {
    match t.send(m).await {
        Ok(r) => SendOutcome::Accepted(format!("{} {}", r.code(), r.message().collect::<Vec<_>>().join(" "))),
        Err(e) if e.is_permanent() => SendOutcome::Rejected(e.to_string()),
        Err(e) if e.is_transient() => SendOutcome::Deferred(e.to_string()),
        Err(e) => SendOutcome::Unknown(e.to_string()),
    }
}

/// Whether the server answers (a pooled NOOP); run before a message is handed over, so a
/// server that is down is a plain retry rather than an unknown outcome.
pub async fn reachable(t: &SmtpTransport) -> Result<(), String> {
    match t.test_connection().await {
        Ok(true) => Ok(()),
        Ok(false) => Err("the SMTP server did not answer NOOP".into()),
        Err(e) => Err(e.to_string()),
    }
}
