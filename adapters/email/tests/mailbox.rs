//! The import against a real Dovecot with a real database: the bad-input corpus through
//! the running adapter (each stored, none lost, none imported twice, nothing panics), a
//! duplicate delivery, a restart mid-fetch, and the mailbox lease moving to another node
//! when its holder dies.

mod peers;

use peers::MailPeers;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_core::adapter::{ChannelAdapter, Shutdown};
use switchboard_core::testing::TestDb;
use switchboard_core::Hub;
use switchboard_email::{parse, store, EmailAdapter};

fn corpus() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "eml")).map(|p| std::fs::read(p).unwrap()).collect()
}

fn big_messages() -> Vec<Vec<u8>> {
    let blob: String = (0..20 * 1024 * 1024 / 57).map(|i| format!("{:056x}\r\n", i as u128 * 0x9e3779b97f4a7c15)).collect();
    let big = format!(
        "From: big@mail.example\r\nTo: support@shop.test\r\nSubject: 20 MB attachment\r\nMessage-ID: <big-20mb@mail.example>\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nlarge file attached\r\n--b\r\nContent-Type: text/plain; name=big.txt\r\nContent-Disposition: attachment; filename=big.txt\r\n\r\n{blob}--b--\r\n"
    );
    let to: Vec<String> = (0..1000).map(|i| format!("r{i}@mail.example")).collect();
    let many = format!("From: many@mail.example\r\nTo: {}\r\nCc: support@shop.test\r\nSubject: 1,000 recipients\r\nMessage-ID: <many-rcpt@mail.example>\r\n\r\nhello all\r\n", to.join(",\r\n "));
    vec![big.into_bytes(), many.into_bytes()]
}

fn dedupe_ids(messages: &[Vec<u8>]) -> HashSet<String> {
    messages.iter().map(|m| parse::dedupe_id(parse::quick_message_id(m).as_deref(), m)).collect()
}

struct Running {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
    adapter: Arc<EmailAdapter>,
}

fn run(hub: &Hub, peers: &MailPeers, name: &str) -> Running {
    let adapter = Arc::new(switchboard_email::build(name, peers.channel(name, "")).unwrap());
    hub.add_adapter(adapter.clone());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let (a, h) = (adapter.clone(), hub.clone());
    let task = tokio::spawn(async move {
        a.run(h, Shutdown(rx)).await.unwrap();
    });
    Running { task, stop, adapter }
}

async fn counts(db: &sqlx::PgPool, mailbox: &str) -> (i64, i64, i64) {
    let raw: i64 =
        sqlx::query_scalar("select count(*) from email_raw_messages where mailbox = $1").bind(mailbox).fetch_one(db).await.unwrap();
    let pending: i64 = sqlx::query_scalar("select count(*) from email_raw_messages where mailbox = $1 and status = 'stored'")
        .bind(mailbox)
        .fetch_one(db)
        .await
        .unwrap();
    let items: i64 = sqlx::query_scalar("select count(*) from inbound_items where channel = 'email'").fetch_one(db).await.unwrap();
    (raw, pending, items)
}

async fn wait_for(secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < end, "timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_imports_once_through_dovecot_across_restart_and_redelivery() {
    let Some(peers) = MailPeers::start() else { return };
    let db = TestDb::new().await;
    let hub = Hub::new(db.pool.clone(), Default::default());
    let mut messages = corpus();
    messages.extend(big_messages());
    let expected = dedupe_ids(&messages);
    let refs: Vec<&[u8]> = messages.iter().map(|m| m.as_slice()).collect();
    peers.append("support", &refs).await;

    let r = run(&hub, &peers, "support-mail");
    wait_for(120, async || {
        let (raw, pending, _) = counts(&db.pool, "support-mail").await;
        raw as usize == expected.len() && pending == 0
    })
    .await;
    // Every distinct message stored once; every routed one is one inbound item; the bounce
    // is no interaction; every message is flagged \Seen after its commit.
    let statuses: Vec<(String, i64)> = sqlx::query_as("select status, count(*) from email_raw_messages group by status order by status")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let routed: i64 = statuses.iter().filter(|(s, _)| s == "ingested" || s == "unparseable").map(|(_, n)| n).sum();
    let (_, _, items) = counts(&db.pool, "support-mail").await;
    assert_eq!(items, routed, "{statuses:?}");
    assert!(statuses.iter().any(|(s, n)| s == "bounce" && *n == 1), "{statuses:?}");
    wait_for(20, async || {
        let (seen, all) = peers.seen("support").await;
        seen == all
    })
    .await;
    let big: (i64, bool) = sqlx::query_as(
        "select a.size_bytes, a.stored from email_attachments a join email_raw_messages r on r.id = a.raw_id where r.dedupe_id = 'mid:big-20mb@mail.example'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(big.0 > 19 * 1024 * 1024 && big.1, "{big:?}");

    // Restart mid-fetch: a message stored raw but never processed (the node died between
    // the two commits), its IMAP copy unflagged and behind the checkpoint.
    let _ = r.stop.send(true);
    let _ = r.task.await;
    let crash = b"From: crash@mail.example\r\nTo: support@shop.test\r\nSubject: mid-fetch\r\nMessage-ID: <crash-1@mail.example>\r\n\r\nstored, then the node died\r\n";
    switchboard_email::store::store_raw(&db.pool, "support-mail", "mid:crash-1@mail.example", 1, 1, Some("crash@mail.example"), crash)
        .await
        .unwrap();
    // ...and a second delivery of the whole corpus.
    peers.append("support", &refs[..10]).await;
    peers.append("support", &[crash]).await;
    let r = run(&hub, &peers, "support-mail");
    wait_for(60, async || {
        let (raw, pending, _) = counts(&db.pool, "support-mail").await;
        let (seen, all) = peers.seen("support").await;
        raw as usize == expected.len() + 1 && pending == 0 && seen == all
    })
    .await;
    let (_, _, items_after) = counts(&db.pool, "support-mail").await;
    assert_eq!(items_after, items + 1, "only the crashed message is new");
    let _ = r.stop.send(true);
    let _ = r.task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_moves_to_another_node_when_its_holder_dies() {
    let Some(peers) = MailPeers::start() else { return };
    let db = TestDb::new().await;
    let hub_a = Hub::new(db.pool.clone(), Default::default());
    let hub_b = Hub::new(db.pool.clone(), Default::default());
    let a = run(&hub_a, &peers, "leased");
    wait_for(20, async || switchboard_email::store::lease_owner(&db.pool, "leased").await.unwrap() == Some(a.adapter.node_id())).await;
    let b = run(&hub_b, &peers, "leased");
    peers.append("support", &[b"From: x@mail.example\r\nSubject: one\r\nMessage-ID: <lease-1@x>\r\n\r\none\r\n"]).await;
    wait_for(30, async || counts(&db.pool, "leased").await.0 == 1).await;
    let by: Option<uuid::Uuid> =
        sqlx::query_scalar("select holder from leases where name = 'email:leased'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(by, Some(a.adapter.node_id()), "only the holder polls");

    // Node A dies without a goodbye (its task is killed; the lease is not released).
    a.task.abort();
    let died = Instant::now();
    wait_for(30, async || switchboard_email::store::lease_owner(&db.pool, "leased").await.unwrap() == Some(b.adapter.node_id())).await;
    assert!(died.elapsed() < Duration::from_secs(10), "takeover took {:?}", died.elapsed());
    peers.append("support", &[b"From: x@mail.example\r\nSubject: two\r\nMessage-ID: <lease-2@x>\r\n\r\ntwo\r\n"]).await;
    wait_for(30, async || counts(&db.pool, "leased").await.0 == 2).await;
    let fence: i64 = sqlx::query_scalar("select token from leases where name = 'email:leased'").fetch_one(&db.pool).await.unwrap();
    assert_eq!(fence, 2);
    let _ = b.stop.send(true);
    let _ = b.task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uidvalidity_change_rescans_and_imports_nothing_twice() {
    let Some(peers) = MailPeers::start() else { return };
    let db = TestDb::new().await;
    let hub = Hub::new(db.pool.clone(), Default::default());
    let msgs: Vec<String> =
        (0..3).map(|k| format!("From: u{k}@mail.example\r\nSubject: v{k}\r\nMessage-ID: <uv-{k}@x>\r\n\r\nbody {k}\r\n")).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_bytes()).collect();
    peers.append("support", &refs).await;
    let r = run(&hub, &peers, "uv");
    // Wait for the checkpoint, not for the interactions: persist before acknowledge means
    // the hub commits a message first, then the IMAP flag, and only then does the
    // checkpoint move. (Waiting on the interaction count and then reading the checkpoint
    // raced that window and failed under load when the row did not exist yet.)
    let checkpoint = async || store::checkpoint(&db.pool, "uv").await.unwrap();
    wait_for(30, async || checkpoint().await.is_some_and(|(_, last)| last == 3)).await;
    let (real, _) = checkpoint().await.unwrap();
    assert_eq!(counts(&db.pool, "uv").await, (3, 0, 3));
    let _ = r.stop.send(true);
    let _ = r.task.await;
    // The server renumbered the folder (a restore, a migration): our checkpoint no longer
    // matches its UIDVALIDITY, and its last UID means nothing.
    sqlx::query("update email_checkpoints set uid_validity = 1, last_uid = 999999 where mailbox = 'uv'").execute(&db.pool).await.unwrap();
    let r = run(&hub, &peers, "uv");
    wait_for(30, async || checkpoint().await == Some((real, 3))).await;
    let (raw, pending, items) = counts(&db.pool, "uv").await;
    assert_eq!((raw, pending, items), (3, 0, 3), "rescanned, nothing imported twice");
    let _ = r.stop.send(true);
    let _ = r.task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_handed_to_smtp_is_never_sent_twice() {
    use switchboard_core::adapter::{AdapterError, Outbound};
    let Some(peers) = MailPeers::start() else { return };
    let db = TestDb::new().await;
    let hub = Hub::new(db.pool.clone(), Default::default());
    let r = run(&hub, &peers, "out");
    wait_for(20, async || switchboard_email::store::lease_owner(&db.pool, "out").await.unwrap().is_some()).await;
    let msg = |id: uuid::Uuid| Outbound {
        id,
        idempotency_key: id.to_string(),
        channel: switchboard_core::Channel::Email,
        interaction_id: None,
        recipient: "ana@customer.test".into(),
        subject: Some("Re: order".into()),
        body: "Your parcel left today.".into(),
        metadata: serde_json::json!({}),
        attempt: 1,
    };
    // Sent once; the outbox retrying the same row (its status update was lost) sends nothing.
    let first = uuid::Uuid::new_v4();
    let receipt = r.adapter.deliver(&msg(first)).await.unwrap();
    assert_eq!(peers.wait_sent(1, 10).await.len(), 1);
    let again = r.adapter.deliver(&msg(first)).await.unwrap();
    assert_eq!(again.provider_id, receipt.provider_id);
    // A hand-off whose outcome is unknown (the node died during the SMTP transaction):
    // reported, never sent again.
    let lost = uuid::Uuid::new_v4();
    sqlx::query("insert into email_outbound (outbox_id, mailbox, message_id, state) values ($1, 'out', 'x@shop.test', 'handing')")
        .bind(lost)
        .execute(&db.pool)
        .await
        .unwrap();
    let e = r.adapter.deliver(&msg(lost)).await.unwrap_err();
    assert!(matches!(e, AdapterError::Permanent(ref m) if m.contains("not sending it twice")), "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(peers.sent().len(), 1, "nothing sent twice");
    let state: String =
        sqlx::query_scalar("select state from email_outbound where outbox_id = $1").bind(lost).fetch_one(&db.pool).await.unwrap();
    assert_eq!(state, "unknown");
    let _ = r.stop.send(true);
    let _ = r.task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_starttls_logins_verify_the_server_certificate() {
    let Some(peers) = MailPeers::start_tls() else { return };
    let ca = peers.ca.clone().unwrap();
    let cfg = |security: &str, port: u16, ca: Option<&std::path::Path>| -> switchboard_email::config::ImapConfig {
        let ca = ca.map(|c| format!("ca_file = \"{}\"\n", c.display())).unwrap_or_default();
        toml::from_str(&format!(
            "host = \"localhost\"\nport = {port}\nsecurity = \"{security}\"\nusername = \"support\"\npassword = \"secret\"\n{ca}"
        ))
        .unwrap()
    };
    for (security, port) in [("tls", peers.imaps_port), ("starttls", peers.imap_port)] {
        let mut s = switchboard_email::imap::connect(&cfg(security, port, Some(&ca))).await.unwrap_or_else(|e| panic!("{security}: {e}"));
        assert!(matches!(s.get_ref(), switchboard_email::imap::ImapStream::Tls(_)), "{security} runs over TLS");
        switchboard_email::imap::select(&mut s, "INBOX").await.unwrap();
        let _ = s.logout().await;
        // A certificate nobody vouches for is refused.
        let e = switchboard_email::imap::connect(&cfg(security, port, None))
            .await
            .err()
            .unwrap_or_else(|| panic!("{security} accepted an unknown CA"));
        assert!(e.to_string().to_lowercase().contains("certificate"), "{security}: {e}");
    }
}
