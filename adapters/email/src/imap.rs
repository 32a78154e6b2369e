//! The IMAP connection (the socket shell around `async-imap`): TCP, TLS from the first
//! byte or STARTTLS (rustls, the webpki roots), or plain for loopback test servers; LOGIN
//! or AUTHENTICATE XOAUTH2; SELECT; batched UID FETCH; flag or move; APPEND (the Sent
//! copy, and tests filling a mailbox).

use crate::config::{ImapAuth, ImapConfig, Security};
use async_imap::types::Fetch;
use futures::TryStreamExt;
use secrecy::ExposeSecret;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// An IMAP failure.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// TCP or TLS failed.
    #[error("connect to {0}: {1}")]
    Connect(String, String),
    /// The server refused the login.
    #[error("login refused: {0}")]
    Login(String),
    /// A command failed.
    #[error("imap: {0}")]
    Protocol(#[from] async_imap::error::Error),
    /// No answer in time.
    #[error("imap: timed out")]
    Timeout,
}

/// A plain or TLS stream.
#[derive(Debug)]
pub enum ImapStream {
    /// Plain TCP (loopback tests, before STARTTLS).
    Plain(TcpStream),
    /// TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ImapStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A logged-in session.
pub type ImapSession = async_imap::Session<ImapStream>;

/// SASL XOAUTH2 (Google, Microsoft): `user=<u>^Aauth=Bearer <token>^A^A`.
struct XOAuth2 {
    user: String,
    token: String,
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = String;
    fn process(&mut self, _challenge: &[u8]) -> String {
        format!("user={}\x01auth=Bearer {}\x01\x01", self.user, self.token)
    }
}

fn tls_connector(ca_file: Option<&std::path::Path>) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("imap.ca_file {}: {e}", path.display()))?;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("imap.ca_file {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("imap.ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn tls_wrap(cfg: &ImapConfig, tcp: TcpStream) -> Result<ImapStream, ImapError> {
    let host = &cfg.host;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| ImapError::Connect(host.into(), e.to_string()))?;
    let connector = tls_connector(cfg.ca_file.as_deref()).map_err(|e| ImapError::Connect(host.into(), e))?;
    let tls = connector.connect(name, tcp).await.map_err(|e| ImapError::Connect(host.into(), e.to_string()))?;
    Ok(ImapStream::Tls(Box::new(tls)))
}

async fn with_timeout<T>(secs: u64, f: impl std::future::Future<Output = Result<T, ImapError>>) -> Result<T, ImapError> {
    tokio::time::timeout(Duration::from_secs(secs), f).await.map_err(|_| ImapError::Timeout)?
}

/// Runs a token command (`imap.token_command`, `smtp.token_command`) and returns what it
/// printed (trimmed): a current access token.
pub async fn fresh_token(cmd: &[String]) -> Result<String, String> {
    let (program, args) = cmd.split_first().ok_or("token_command is empty")?;
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("token_command {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("token_command {program} exited with {}", out.status));
    }
    let token = String::from_utf8(out.stdout).map_err(|_| format!("token_command {program} printed no UTF-8"))?;
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(format!("token_command {program} printed no single token"));
    }
    Ok(token.to_string())
}

/// Connects and logs in.
pub async fn connect(cfg: &ImapConfig) -> Result<ImapSession, ImapError> {
    with_timeout(30, async {
        let addr = format!("{}:{}", cfg.host, cfg.port());
        let tcp = TcpStream::connect(&addr).await.map_err(|e| ImapError::Connect(addr.clone(), e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let client = match cfg.security {
            Security::Tls => {
                let mut c = async_imap::Client::new(tls_wrap(cfg, tcp).await?);
                c.read_response().await.map_err(|e| ImapError::Connect(addr.clone(), e.to_string()))?;
                c
            }
            Security::Plain => {
                let mut c = async_imap::Client::new(ImapStream::Plain(tcp));
                c.read_response().await.map_err(|e| ImapError::Connect(addr.clone(), e.to_string()))?;
                c
            }
            Security::Starttls => {
                let mut c = async_imap::Client::new(ImapStream::Plain(tcp));
                c.read_response().await.map_err(|e| ImapError::Connect(addr.clone(), e.to_string()))?;
                c.run_command_and_check_ok("STARTTLS", None).await?;
                let ImapStream::Plain(tcp) = c.into_inner() else {
                    return Err(ImapError::Connect(addr, "STARTTLS on a TLS stream".into()));
                };
                async_imap::Client::new(tls_wrap(cfg, tcp).await?)
            }
        };
        let secret = match (&cfg.auth, &cfg.token_command) {
            (ImapAuth::Xoauth2, Some(cmd)) => fresh_token(cmd).await.map_err(ImapError::Login)?,
            _ => cfg.password.expose_secret().to_string(),
        };
        let session = match cfg.auth {
            ImapAuth::Login => client.login(&cfg.username, &secret).await.map_err(|(e, _)| ImapError::Login(e.to_string()))?,
            ImapAuth::Xoauth2 => client
                .authenticate("XOAUTH2", XOAuth2 { user: cfg.username.clone(), token: secret })
                .await
                .map_err(|(e, _)| ImapError::Login(e.to_string()))?,
        };
        Ok(session)
    })
    .await
}

/// What SELECT said.
#[derive(Debug, Clone, Copy)]
pub struct Selected {
    /// UIDVALIDITY (0 when the server sent none).
    pub uid_validity: u32,
    /// UIDNEXT, if sent.
    pub uid_next: Option<u32>,
    /// Messages in the folder.
    pub exists: u32,
}

/// Selects a folder.
pub async fn select(s: &mut ImapSession, folder: &str) -> Result<Selected, ImapError> {
    let m = with_timeout(60, async { Ok(s.select(folder).await?) }).await?;
    Ok(Selected { uid_validity: m.uid_validity.unwrap_or(0), uid_next: m.uid_next, exists: m.exists })
}

/// Whether the server offers IDLE (RFC 2177).
pub async fn has_idle(s: &mut ImapSession) -> Result<bool, ImapError> {
    let caps = with_timeout(30, async { Ok(s.capabilities().await?) }).await?;
    Ok(caps.has_str("IDLE"))
}

/// UIDs above `after`, ascending. (`UID SEARCH UID n:*` returns the last message even when
/// its UID is below n — RFC 3501 §6.4.8 — so the result is filtered.)
pub async fn uids_after(s: &mut ImapSession, after: u32) -> Result<Vec<u32>, ImapError> {
    let set = format!("UID {}:*", after.saturating_add(1));
    let found = with_timeout(120, async { Ok(s.uid_search(&set).await?) }).await?;
    let mut uids: Vec<u32> = found.into_iter().filter(|u| *u > after).collect();
    uids.sort_unstable();
    Ok(uids)
}

/// A compact UID set (`1:5,9,12:14`).
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// Fetches whole messages (without setting `\Seen`: BODY.PEEK) as (uid, bytes), by UID.
pub async fn fetch_raw(s: &mut ImapSession, uids: &[u32]) -> Result<Vec<(u32, Vec<u8>)>, ImapError> {
    if uids.is_empty() {
        return Ok(Vec::new());
    }
    let set = uid_set(uids);
    with_timeout(600, async {
        let fetches: Vec<Fetch> = s.uid_fetch(&set, "(UID BODY.PEEK[])").await?.try_collect().await?;
        let mut out: Vec<(u32, Vec<u8>)> = fetches.iter().filter_map(|f| Some((f.uid?, f.body().unwrap_or_default().to_vec()))).collect();
        out.sort_by_key(|(u, _)| *u);
        Ok(out)
    })
    .await
}

/// Marks messages `\Seen`.
pub async fn mark_seen(s: &mut ImapSession, uids: &[u32]) -> Result<(), ImapError> {
    if uids.is_empty() {
        return Ok(());
    }
    let set = uid_set(uids);
    with_timeout(120, async {
        let _: Vec<Fetch> = s.uid_store(&set, "+FLAGS.SILENT (\\Seen)").await?.try_collect().await?;
        Ok(())
    })
    .await
}

/// Moves messages to a folder (RFC 6851 MOVE).
pub async fn move_to(s: &mut ImapSession, uids: &[u32], folder: &str) -> Result<(), ImapError> {
    if uids.is_empty() {
        return Ok(());
    }
    let set = uid_set(uids);
    with_timeout(120, async { Ok(s.uid_mv(&set, folder).await?) }).await
}

/// Appends a message to a folder (with `\Seen` for the Sent copy).
pub async fn append(s: &mut ImapSession, folder: &str, flags: Option<&str>, raw: &[u8]) -> Result<(), ImapError> {
    with_timeout(120, async { Ok(s.append(folder, flags, None, raw).await?) }).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(super::uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(super::uid_set(&[42]), "42");
        assert_eq!(super::uid_set(&[]), "");
    }
}
