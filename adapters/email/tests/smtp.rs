//! SMTP submission against a real server (aiosmtpd with STARTTLS or TLS from the first
//! byte under a throwaway CA, AUTH required): wrong credentials fail clearly, before
//! anything is handed over, as a retry for the outbox; the right ones deliver; XOAUTH2
//! with a bearer token; a certificate from an unknown CA is refused.

mod peers;

use peers::{MailPeers, SmtpOptions};
use std::sync::Arc;
use switchboard_core::adapter::{AdapterError, ChannelAdapter, Outbound, Shutdown};
use switchboard_core::testing::TestDb;
use switchboard_core::Hub;
use switchboard_email::EmailAdapter;

fn msg(n: u32) -> Outbound {
    let id = uuid::Uuid::new_v4();
    Outbound {
        id,
        idempotency_key: id.to_string(),
        channel: switchboard_core::Channel::Email,
        interaction_id: None,
        recipient: "ana@customer.test".into(),
        subject: Some(format!("Re: order {n}")),
        body: format!("Reply {n}."),
        metadata: serde_json::json!({}),
        attempt: 1,
    }
}

/// Runs an adapter whose `[smtp]` table is `smtp` (lease and IMAP on the peers' Dovecot).
async fn adapter(hub: &Hub, peers: &MailPeers, name: &str, smtp: &str) -> (Arc<EmailAdapter>, tokio::sync::watch::Sender<bool>) {
    let mut table = peers.channel(name, "");
    table["smtp"] = toml::Value::Table(smtp.parse().unwrap());
    let a = Arc::new(switchboard_email::build(name, table).unwrap());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let (a2, h) = (a.clone(), hub.clone());
    tokio::spawn(async move {
        let _ = a2.run(h, Shutdown(rx)).await;
    });
    // deliver() needs the adapter started (it keeps the hub); bounded wait.
    for _ in 0..100 {
        if switchboard_email::store::lease_owner(hub.db(), name).await.unwrap().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    (a, stop)
}

fn smtp_table(port: u16, security: &str, ca: Option<&std::path::Path>, user: &str, password: &str, auth: &str) -> String {
    let ca = ca.map(|c| format!("ca_file = \"{}\"\n", c.display())).unwrap_or_default();
    format!("host = \"localhost\"\nport = {port}\nsecurity = \"{security}\"\nusername = \"{user}\"\npassword = \"{password}\"\nauth = \"{auth}\"\ntimeout_secs = 10\n{ca}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_tls_with_auth_deliver_and_wrong_credentials_are_a_clear_retry() {
    let Some(mut peers) = MailPeers::start_tls() else { return };
    let ca = peers.ca.clone().unwrap();
    let db = TestDb::new().await;
    let hub = Hub::new(db.pool.clone(), Default::default());
    for security in ["starttls", "tls"] {
        let sink = format!("sink-{security}");
        let port = peers.start_smtp(&sink, &SmtpOptions { security, auth: Some(("support", "s3cret")), token: None });

        // Wrong password: refused at AUTH, before any message was handed over. A temporary
        // error, so the outbox retries with its backoff (an operator may fix the secret);
        // the message says what happened.
        let (bad, stop) =
            adapter(&hub, &peers, &format!("bad-{security}"), &smtp_table(port, security, Some(&ca), "support", "wrong", "login")).await;
        let m = msg(1);
        let e = bad.deliver(&m).await.unwrap_err();
        match &e {
            AdapterError::Temporary(t) => assert!(t.contains("535") || t.to_lowercase().contains("auth"), "{security}: {t}"),
            other => panic!("{security}: wrong credentials should be a retry, got {other:?}"),
        }
        let claimed: i64 =
            sqlx::query_scalar("select count(*) from email_outbound where outbox_id = $1").bind(m.id).fetch_one(&db.pool).await.unwrap();
        assert_eq!(claimed, 0, "{security}: nothing was handed over, so a retry may send");
        // The retry (the outbox's next attempt) fails the same way while the secret is wrong.
        assert!(matches!(bad.deliver(&m).await, Err(AdapterError::Temporary(_))));
        assert!(peers.received(&sink).is_empty(), "{security}: nothing delivered");
        let _ = stop.send(true);

        // Right credentials over the verified TLS channel: delivered once.
        let (good, stop) =
            adapter(&hub, &peers, &format!("good-{security}"), &smtp_table(port, security, Some(&ca), "support", "s3cret", "login")).await;
        good.deliver(&m).await.unwrap_or_else(|e| panic!("{security}: {e}"));
        let got = peers.received(&sink);
        assert_eq!(got.len(), 1, "{security}");
        assert!(String::from_utf8_lossy(&got[0]).contains("Reply 1."), "{security}");
        let _ = stop.send(true);

        // A server certificate nobody vouches for (no ca_file): refused, nothing sent.
        let (untrusted, stop) =
            adapter(&hub, &peers, &format!("ca-{security}"), &smtp_table(port, security, None, "support", "s3cret", "login")).await;
        let e = untrusted.deliver(&msg(2)).await.unwrap_err();
        assert!(e.to_string().to_lowercase().contains("certificate"), "{security}: {e}");
        assert_eq!(peers.received(&sink).len(), 1, "{security}");
        let _ = stop.send(true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_xoauth2_sends_with_the_bearer_token() {
    let Some(mut peers) = MailPeers::start_tls() else { return };
    let ca = peers.ca.clone().unwrap();
    let db = TestDb::new().await;
    let hub = Hub::new(db.pool.clone(), Default::default());
    let port = peers.start_smtp(
        "sink-oauth",
        &SmtpOptions { security: "starttls", auth: Some(("support@shop.test", "unused-password")), token: Some("ya29.test-token".into()) },
    );
    let (stale, stop) =
        adapter(&hub, &peers, "oauth-bad", &smtp_table(port, "starttls", Some(&ca), "support@shop.test", "expired-token", "xoauth2")).await;
    assert!(matches!(stale.deliver(&msg(1)).await, Err(AdapterError::Temporary(_))), "an expired token is a retry");
    let _ = stop.send(true);
    let (ok, stop) =
        adapter(&hub, &peers, "oauth-ok", &smtp_table(port, "starttls", Some(&ca), "support@shop.test", "ya29.test-token", "xoauth2"))
            .await;
    ok.deliver(&msg(2)).await.unwrap();
    assert_eq!(peers.received("sink-oauth").len(), 1);
    let _ = stop.send(true);
    // The token from a command, fresh for each message.
    let table = format!(
        "{}token_command = [\"echo\", \"ya29.test-token\"]\n",
        smtp_table(port, "starttls", Some(&ca), "support@shop.test", "", "xoauth2")
    );
    let (cmd, stop) = adapter(&hub, &peers, "oauth-cmd", &table).await;
    cmd.deliver(&msg(3)).await.unwrap();
    cmd.deliver(&msg(4)).await.unwrap();
    assert_eq!(peers.received("sink-oauth").len(), 3);
    let _ = stop.send(true);
}
