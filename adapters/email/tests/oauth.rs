//! IMAP `AUTHENTICATE XOAUTH2` against a real Dovecot whose oauth2 passdb validates the
//! bearer token at a local token-introspection endpoint: the right token logs in and the
//! adapter imports through it; an expired one is refused.

mod peers;

use peers::MailPeers;
use std::sync::Arc;
use switchboard_core::adapter::{ChannelAdapter, Shutdown};
use switchboard_core::testing::TestDb;
use switchboard_core::Hub;

fn xoauth2(peers: &MailPeers, token: &str) -> switchboard_email::config::ImapConfig {
    toml::from_str(&format!(
        "host = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nusername = \"support\"\npassword = \"{token}\"\nauth = \"xoauth2\"\n",
        peers.imap_port
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_xoauth2_logs_in_with_a_valid_token_and_imports() {
    let Some(peers) = MailPeers::start_oauth2("ya29.valid-token") else { return };
    let Err(e) = switchboard_email::imap::connect(&xoauth2(&peers, "ya29.expired")).await else { panic!("an expired token is refused") };
    assert!(e.to_string().to_lowercase().contains("auth"), "{e}");
    let mut s = switchboard_email::imap::connect(&xoauth2(&peers, "ya29.valid-token")).await.unwrap();
    switchboard_email::imap::select(&mut s, "INBOX").await.unwrap();
    let _ = s.logout().await;

    // The adapter itself, logged in by XOAUTH2, imports a mail.
    peers.append("support", &[b"From: ana@customer.test\r\nSubject: oauth\r\nMessage-ID: <oauth-1@x>\r\n\r\nhello\r\n"]).await;
    let db = TestDb::new().await;
    let hub = Hub::new(db.pool.clone(), Default::default());
    let mut table = peers.channel("oauth", "");
    table["imap"]["password"] = "ya29.valid-token".into();
    table["imap"].as_table_mut().unwrap().insert("auth".into(), "xoauth2".into());
    let a = Arc::new(switchboard_email::build("oauth", table).unwrap());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let (a2, h) = (a.clone(), hub.clone());
    let task = tokio::spawn(async move { a2.run(h, Shutdown(rx)).await });
    let mut imported = 0i64;
    for _ in 0..300 {
        imported = sqlx::query_scalar("select count(*) from email_raw_messages where mailbox = 'oauth' and status = 'ingested'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if imported == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(imported, 1);
    let _ = stop.send(true);
    let _ = task.await;

    // The token from a command run at each login (a refresh helper); a failing command is a
    // login error that names it.
    let mut cfg = xoauth2(&peers, "");
    cfg.token_command = Some(vec!["echo".into(), "ya29.valid-token".into()]);
    let mut s = switchboard_email::imap::connect(&cfg).await.unwrap();
    switchboard_email::imap::select(&mut s, "INBOX").await.unwrap();
    let _ = s.logout().await;
    cfg.token_command = Some(vec!["false".into()]);
    let Err(e) = switchboard_email::imap::connect(&cfg).await else { panic!("a failing token command fails the login") };
    assert!(e.to_string().contains("token_command"), "{e}");
}
