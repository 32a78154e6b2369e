//! Email end to end: the hub binary's wiring against a real Dovecot (customer mail lands
//! there) and a real SMTP server (aiosmtpd writing a Maildir the test reads back).
//! Customer mails support → interaction routed to the skilled agent → the agent replies in
//! the inbox API → the customer's reply threads back into the same interaction; a duplicate
//! delivery imports nothing; a bounce marks the reply failed; an auto-reply loop is
//! stopped; the chat widget's offline-form answer reaches the visitor by email.
//! Skips (with a message) when Dovecot or aiosmtpd is not installed; scripts/test.sh
//! installs both.

#[path = "../adapters/email/tests/peers/mod.rs"]
mod peers;
mod support;

use peers::MailPeers;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;
use switchboard_core::Role;
use switchboard_email::parse::{parse, ParsedMail};
use uuid::Uuid;

async fn agent(th: &TestHub, name: &str, skills: Value) -> Client {
    let a = user(th, name, &[Role::Agent], Some(skills)).await;
    let (st, b) =
        a.call("PUT", &format!("/api/v1/agents/{}/presence", a.agent_id.unwrap()), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    a
}

async fn accept_next(agent: &Client) -> Value {
    let offer = eventually(30, || {
        let a = agent.clone();
        async move {
            let (_, offers) = a.call("GET", &format!("/api/v1/agents/{}/offers", a.agent_id.unwrap()), None).await;
            offers.as_array().and_then(|l| l.first().cloned())
        }
    })
    .await;
    let (st, i) = agent.call("POST", &format!("/api/v1/offers/{}/accept", offer["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK, "{i}");
    i
}

async fn messages(agent: &Client, iid: &str) -> Vec<Value> {
    let (st, m) = agent.call("GET", &format!("/api/v1/interactions/{iid}/messages"), None).await;
    assert_eq!(st, StatusCode::OK, "{m}");
    m.as_array().cloned().or_else(|| m["items"].as_array().cloned()).unwrap_or_default()
}

async fn email_interactions(th: &TestHub) -> i64 {
    sqlx::query_scalar("select count(*) from interactions where channel = 'email'").fetch_one(th.hub().db()).await.unwrap()
}

fn sent_parsed(peers: &MailPeers) -> Vec<ParsedMail> {
    peers.sent().iter().map(|m| parse(m, 1 << 20).expect("sent mail parses")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_mail_is_routed_answered_and_threaded_back() {
    let Some(peers) = MailPeers::start() else { return };
    // Replies are also appended to the mailbox's Sent folder.
    let mut channel = peers.channel("support-mail", "queue = \"Email\"\nsignature = \"Shop Team\"");
    channel["imap"].as_table_mut().unwrap().insert("sent_folder".into(), "Sent".into());
    {
        let mut s = switchboard_email::imap::connect(&peers.imap("support")).await.unwrap();
        s.create("Sent").await.unwrap();
        let _ = s.logout().await;
    }
    let th = spawn_hub_with(|s| s.channels.push(channel)).await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "Email", "requirement": "billing", "wrap_up_secs": 0 })).await;
    let bob = agent(&th, "bob", json!({ "support": 5 })).await;
    let alice = agent(&th, "alice", json!({ "billing": 3 })).await;

    // 1. The customer writes to support@.
    let first = b"From: Ana Lima <ana@customer.test>\r\nTo: support@shop.test\r\nCc: Ben <ben@customer.test>\r\nSubject: Order 42 missing\r\nMessage-ID: <c1@customer.test>\r\nDate: Wed, 2 Dec 2026 10:00:00 +0000\r\n\r\nMy order 42 never arrived.\r\n";
    peers.append("support", &[first]).await;
    // 2. Routed to the agent with the skill (not to bob).
    let i = accept_next(&alice).await;
    let iid = i["id"].as_str().unwrap().to_string();
    assert_eq!(i["channel"], "email");
    assert_eq!(i["subject"], "Order 42 missing");
    // The sender resolved through the CRM's email identities.
    let customer: Option<Uuid> = sqlx::query_scalar(
        "select c.customer_id from interactions i join customer_identities c on c.customer_id = i.customer_id
          where i.id = $1 and c.kind = 'email' and c.address = 'ana@customer.test'",
    )
    .bind(i["id"].as_str().unwrap().parse::<Uuid>().unwrap())
    .fetch_optional(th.hub().db())
    .await
    .unwrap();
    assert!(customer.is_some(), "customer resolved by email identity");
    let (_, bob_offers) = bob.call("GET", &format!("/api/v1/agents/{}/offers", bob.agent_id.unwrap()), None).await;
    assert_eq!(bob_offers.as_array().map(|a| a.len()), Some(0), "{bob_offers}");

    // 3. The agent replies in the inbox; the customer's mailbox (the SMTP server) gets it
    //    with the threading headers.
    let (st, b) = alice
        .call("POST", &format!("/api/v1/interactions/{iid}/messages"), Some(json!({ "body": "Sorry! A new parcel leaves today." })))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let sent = peers.wait_sent(1, 30).await;
    assert_eq!(sent.len(), 1);
    let reply = parse(&sent[0], 1 << 20).unwrap();
    assert_eq!(reply.in_reply_to, vec!["c1@customer.test".to_string()]);
    assert_eq!(reply.references, vec!["c1@customer.test".to_string()]);
    assert_eq!(reply.to[0].address, "ana@customer.test");
    assert_eq!(reply.cc.iter().map(|c| c.address.as_str()).collect::<Vec<_>>(), vec!["ben@customer.test"], "Cc'd customer kept");
    let from = reply.from.clone().unwrap().address;
    let token = from.strip_prefix("support+").and_then(|r| r.strip_suffix("@shop.test")).expect("reply token in From").to_string();
    assert!(reply.subject.starts_with("Re: Order 42 missing") && reply.subject.contains(&format!("[#{token}]")), "{}", reply.subject);
    assert!(reply.text.contains("A new parcel leaves today.") && reply.text.contains("-- \nShop Team"), "{}", reply.text);
    let our_id = reply.message_id.clone().unwrap();
    let outbox: (String, Option<String>) = eventually(15, || {
        let db = th.hub().db().clone();
        async move {
            sqlx::query_as("select status, provider_id from outbox where channel = 'email'")
                .fetch_optional(&db)
                .await
                .ok()
                .flatten()
                .filter(|r: &(String, Option<String>)| r.0 == "sent")
        }
    })
    .await;
    assert_eq!(outbox.1.as_deref(), Some(our_id.as_str()));
    let copies = eventually(15, || async {
        let mut s = switchboard_email::imap::connect(&peers.imap("support")).await.ok()?;
        s.select("Sent").await.ok()?;
        let n = s.uid_search("ALL").await.ok()?.len();
        let _ = s.logout().await;
        (n == 1).then_some(n)
    })
    .await;
    assert_eq!(copies, 1, "a copy of the reply is in Sent");

    // 4. The customer answers (a reply to our message, to the token address): same interaction.
    let answer = format!(
        "From: Ana Lima <ana@customer.test>\r\nTo: Shop Support <{from}>\r\nSubject: Re: {}\r\nMessage-ID: <c2@customer.test>\r\nIn-Reply-To: <{our_id}>\r\nReferences: <c1@customer.test> <{our_id}>\r\n\r\nThanks, got the tracking number.\r\n\r\nOn Wed, Shop Support wrote:\r\n> Sorry! A new parcel leaves today.\r\n",
        reply.subject
    );
    peers.append("support", &[answer.as_bytes()]).await;
    let m = eventually(30, || {
        let a = alice.clone();
        let iid = iid.clone();
        async move { Some(messages(&a, &iid).await).filter(|m| m.len() == 3) }
    })
    .await;
    assert_eq!(m[2]["direction"], "inbound");
    assert_eq!(m[2]["body"], "Thanks, got the tracking number.", "quoted history collapsed");
    // 5. A second mail that is not a reply (same subject, open conversation): same interaction.
    let again = b"From: ana@customer.test\r\nTo: support@shop.test\r\nSubject: Order 42 missing\r\nMessage-ID: <c3@customer.test>\r\n\r\nAlso: the invoice is wrong.\r\n";
    // 6. ...and a duplicate delivery of the first mail: imported nothing.
    peers.append("support", &[again, first]).await;
    eventually(30, || {
        let a = alice.clone();
        let iid = iid.clone();
        async move { (messages(&a, &iid).await.len() == 4).then_some(()) }
    })
    .await;
    let raw_rows: i64 = sqlx::query_scalar("select count(*) from email_raw_messages").fetch_one(th.hub().db()).await.unwrap();
    assert_eq!(raw_rows, 3, "the duplicate delivery stored nothing new");
    assert_eq!(email_interactions(&th).await, 1);
    assert_eq!(messages(&alice, &iid).await.len(), 4);

    // 7. The reply bounces (an RFC 3464 report about our Message-ID): the outbox row is
    //    marked failed and the interaction hears it; no interaction for the bounce.
    let dsn = format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.customer.test>\r\nTo: {from}\r\nSubject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-1@mx.customer.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"R\"\r\n\r\n--R\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.customer.test\r\n\r\nFinal-Recipient: rfc822; ana@customer.test\r\nAction: failed\r\nStatus: 5.2.2\r\nDiagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n\r\n--R\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: {from}\r\nTo: ana@customer.test\r\nMessage-ID: <{our_id}>\r\nSubject: {}\r\n\r\n--R--\r\n",
        reply.subject
    );
    peers.append("support", &[dsn.as_bytes()]).await;
    let failed: String = eventually(30, || {
        let db = th.hub().db().clone();
        async move {
            sqlx::query_scalar("select last_error from outbox where channel = 'email' and status = 'failed'")
                .fetch_optional(&db)
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    assert!(failed.contains("5.2.2") || failed.contains("mailbox full"), "{failed}");
    let ev: i64 = sqlx::query_scalar("select count(*) from interaction_events where interaction_id = $1 and kind = 'delivery_failed'")
        .bind(iid.parse::<Uuid>().unwrap())
        .fetch_one(th.hub().db())
        .await
        .unwrap();
    assert_eq!(ev, 1);
    assert_eq!(email_interactions(&th).await, 1, "a bounce is not an interaction");
    th.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_reply_loop_is_stopped() {
    let Some(peers) = MailPeers::start() else { return };
    let th = spawn_hub_with(|s| {
        s.channels.push(peers.channel("support-mail", "auto_acknowledge = \"We got your mail.\"\nsender_rate_per_hour = 5"))
    })
    .await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default", "wrap_up_secs": 0 })).await;

    // A person writes: one acknowledgement, marked as automatic.
    peers
        .append(
            "support",
            &[b"From: bot@robot.test\r\nTo: support@shop.test\r\nSubject: Hello\r\nMessage-ID: <r0@robot.test>\r\n\r\nhi\r\n"],
        )
        .await;
    let sent = peers.wait_sent(1, 30).await;
    let ack = parse(&sent[0], 1024).unwrap();
    assert_eq!(ack.signals.auto_submitted.as_deref(), Some("auto-replied"));
    let ack_id = ack.message_id.unwrap();
    // The other side's responder answers our acknowledgement (labelled): joins the
    // conversation, no acknowledgement back.
    let auto = format!("From: bot@robot.test\r\nTo: support@shop.test\r\nSubject: Auto: Re: Hello\r\nAuto-Submitted: auto-replied\r\nMessage-ID: <r1@robot.test>\r\nIn-Reply-To: <{ack_id}>\r\n\r\nI am away.\r\n");
    peers.append("support", &[auto.as_bytes()]).await;
    // An unlabelled responder answering everything with a new subject: at most one
    // acknowledgement per hour, and past the sender limit its mail is only stored.
    let loop_mails: Vec<String> =
        (2..14).map(|k| format!("From: bot@robot.test\r\nTo: support@shop.test\r\nSubject: Ticket {k}\r\nMessage-ID: <r{k}@robot.test>\r\n\r\nnew ticket {k}\r\n")).collect();
    let refs: Vec<&[u8]> = loop_mails.iter().map(|m| m.as_bytes()).collect();
    peers.append("support", &refs).await;
    let db = th.hub().db().clone();
    eventually(60, || {
        let db = db.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("select count(*) from email_raw_messages where status <> 'stored'").fetch_one(&db).await.ok()?;
            (n == 14).then_some(())
        }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await; // let the outbox run
    assert_eq!(peers.sent().len(), 1, "one acknowledgement, never more");
    let (routed, limited): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'ingested'), count(*) filter (where status = 'rate_limited') from email_raw_messages",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((routed, limited), (5, 9));
    let joined: i64 =
        sqlx::query_scalar("select count(*) from email_raw_messages where dedupe_id = 'mid:r1@robot.test' and threaded_by = 'reference'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(joined, 1, "the labelled auto-reply joined the conversation by its In-Reply-To");
    th.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_offline_form_answer_arrives_by_email() {
    let Some(peers) = MailPeers::start() else { return };
    let chat: toml::Value =
        toml::Value::Table("type = \"webchat\"\nname = \"widget\"\ntoken_secret = \"0123456789abcdef0123\"".parse().unwrap());
    let th = spawn_hub_with(|s| {
        s.channels.push(chat);
        s.channels.push(peers.channel("support-mail", ""));
    })
    .await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default", "wrap_up_secs": 0 })).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/chat/v1/offline", th.url))
        .json(&json!({ "client_msg_id": "off1", "name": "Olga", "email": "olga@visitor.test", "message": "Please write back" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap_or_default());
    let alice = agent(&th, "alice", json!({ "support": 3 })).await;
    let i = accept_next(&alice).await;
    let iid = i["id"].as_str().unwrap();
    let (st, b) = alice.call("POST", &format!("/api/v1/interactions/{iid}/messages"), Some(json!({ "body": "Here is our answer." }))).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let sent = peers.wait_sent(1, 30).await;
    assert_eq!(sent.len(), 1, "the offline-form answer was emailed");
    let mail = sent_parsed(&peers).remove(0);
    assert_eq!(mail.to[0].address, "olga@visitor.test");
    assert!(mail.text.contains("Here is our answer."));
    assert!(mail.from.unwrap().address.starts_with("support+"), "replies thread back by token");
    // The SMTP server has the mail before the worker records the hand-off's outcome.
    let db = th.hub().db().clone();
    eventually(15, || {
        let db = db.clone();
        async move {
            let status: String = sqlx::query_scalar("select status from outbox where channel = 'email'").fetch_one(&db).await.unwrap();
            (status == "sent").then_some(())
        }
    })
    .await;
    th.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_mail_with_attachments_is_shown_as_mail_and_nothing_in_it_runs() {
    let Some(peers) = MailPeers::start() else { return };
    let dir = std::env::temp_dir().join(format!("sb-mail-att-{}", Uuid::new_v4().simple()));
    let extra = format!("attachments_dir = \"{}\"", dir.display());
    let th = spawn_hub_with(|s| s.channels.push(peers.channel("support-mail", &extra))).await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default", "wrap_up_secs": 0 })).await;
    let alice = agent(&th, "alice", json!({ "support": 3 })).await;
    let pdf = b"%PDF-1.4 not really a pdf but bytes\n".repeat(40);
    let png_b64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
    let mail = format!(
        "From: Ana <ana@customer.test>\r\nTo: support@shop.test\r\nSubject: Broken invoice\r\nMessage-ID: <html-1@customer.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"M\"\r\n\r\n--M\r\nContent-Type: multipart/related; boundary=\"R\"\r\n\r\n--R\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p onclick=\"steal()\">See <b>this</b>: <img src=\"cid:shot1\"></p><script>alert(1)</script>\r\n--R\r\nContent-Type: image/png\r\nContent-ID: <shot1>\r\nContent-Disposition: inline; filename=shot.png\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--R--\r\n--M\r\nContent-Type: application/pdf; name=invoice.pdf\r\nContent-Disposition: attachment; filename=invoice.pdf\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{}--M--\r\n",
        png_b64,
        String::from_utf8_lossy(&pdf).replace('\n', "\r\n")
    );
    peers.append("support", &[mail.as_bytes()]).await;
    let i = accept_next(&alice).await;
    let iid = i["id"].as_str().unwrap();
    assert_eq!(i["metadata"]["email"]["mailbox"], "support-mail", "{i}");
    let m = messages(&alice, iid).await;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["body"], "See this:");
    let mid = m[0]["id"].as_str().unwrap();
    let (st, view) = alice.call("GET", &format!("/api/v1/email/support-mail/messages/{mid}"), None).await;
    assert_eq!(st, StatusCode::OK, "{view}");
    assert_eq!(view["from"]["address"], "ana@customer.test");
    let html = view["html"].as_str().unwrap();
    assert!(!html.contains("script") && !html.contains("onclick"), "{html}");
    let atts = view["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 2, "{view}");
    let shot = atts.iter().find(|a| a["content_id"] == "shot1").unwrap();
    assert!(html.contains(&format!("src=\"{}\"", shot["url"].as_str().unwrap())), "cid image points at its download: {html}");
    let inv = atts.iter().find(|a| a["filename"] == "invoice.pdf").unwrap();
    let r = alice.http.get(format!("{}{}", th.url, inv["url"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert!(r.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("sandbox"));
    assert_eq!(
        String::from_utf8_lossy(r.bytes().await.unwrap().as_ref()).replace("\r\n", "\n").trim_end(),
        String::from_utf8_lossy(&pdf).trim_end()
    );
    let r = alice.http.get(format!("{}{}", th.url, view["raw_url"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), mail.as_bytes(), "the original, byte for byte");
    // Not for anonymous callers.
    let r = reqwest::get(format!("{}{}", th.url, inv["url"].as_str().unwrap())).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    th.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_replies_to_all_attaches_files_and_forwards() {
    let Some(peers) = MailPeers::start() else { return };
    let channel = peers.channel("support-mail", "queue = \"Email\"\nreply_attachments_max_bytes = 4096");
    let th = spawn_hub_with(|s| s.channels.push(channel)).await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "Email", "requirement": "billing", "wrap_up_secs": 0 })).await;
    let alice = agent(&th, "alice", json!({ "billing": 3 })).await;
    let first = b"From: Ana Lima <ana@customer.test>\r\nTo: support@shop.test, Carl <carl@partner.test>\r\nCc: Ben <ben@customer.test>\r\nSubject: Invoice 7 wrong\r\nMessage-ID: <ra1@customer.test>\r\nDate: Wed, 2 Dec 2026 10:00:00 +0000\r\n\r\nInvoice 7 charges twice.\r\n";
    peers.append("support", &[first]).await;
    let i = accept_next(&alice).await;
    let iid = i["id"].as_str().unwrap().to_string();
    let b = "/api/v1/email/support-mail";

    // A file for the reply: stored by checksum; one over the limit is refused.
    let pdf = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n".to_vec();
    let (st, up, _) = alice.raw("POST", &format!("{b}/uploads?filename=credit%20note.pdf"), Some("application/pdf"), pdf.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{up}");
    assert_eq!(up["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(up["filename"], "credit note.pdf");
    let (st, big, _) = alice.raw("POST", &format!("{b}/uploads?filename=big.bin"), None, vec![7u8; 5000]).await;
    assert!(st == StatusCode::PAYLOAD_TOO_LARGE || st == StatusCode::UNPROCESSABLE_ENTITY, "{st} {big}");
    let (st, e) = alice
        .call(
            "POST",
            &format!("{b}/interactions/{iid}/reply"),
            Some(json!({ "body": "x", "attachments": [{ "sha256": "0".repeat(64), "filename": "nope.txt" }] })),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");

    // Reply-all: to the sender; Cc everyone else it was addressed to, never us; the file attached.
    let (st, m) = alice
        .call(
            "POST",
            &format!("{b}/interactions/{iid}/reply"),
            Some(json!({ "body": "We refunded the second charge.", "reply_all": true,
                         "attachments": [{ "sha256": up["sha256"], "filename": "credit note.pdf", "content_type": "application/pdf" }] })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    assert_eq!(m["attachments"][0]["filename"], "credit note.pdf", "{m}");
    let sent = peers.wait_sent(1, 30).await;
    let r = parse(&sent[0], 1 << 20).unwrap();
    assert_eq!(r.to.iter().map(|a| a.address.as_str()).collect::<Vec<_>>(), vec!["ana@customer.test"]);
    assert_eq!(r.cc.iter().map(|a| a.address.as_str()).collect::<Vec<_>>(), vec!["carl@partner.test", "ben@customer.test"]);
    assert_eq!(r.in_reply_to, vec!["ra1@customer.test".to_string()]);
    assert_eq!(r.attachments.len(), 1);
    assert_eq!(r.attachments[0].filename, "credit note.pdf");
    assert_eq!(r.attachments[0].data.as_deref(), Some(pdf.as_slice()), "the file arrives byte for byte");

    // A plain reply: to the sender only.
    let (st, m) = alice.call("POST", &format!("{b}/interactions/{iid}/reply"), Some(json!({ "body": "Only to you." }))).await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    let sent = peers.wait_sent(2, 30).await;
    let r = sent.iter().map(|m| parse(m, 1 << 20).unwrap()).find(|p| p.text.contains("Only to you.")).unwrap();
    assert_eq!(r.to.len(), 1);
    assert!(r.cc.is_empty(), "{:?}", r.cc);

    // Forward with the original attached; the forward is a message of the interaction, and
    // the partner's answer threads back into it by the token.
    let (st, e) = alice.call("POST", &format!("{b}/interactions/{iid}/forward"), Some(json!({ "to": "not an address" }))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (st, f) = alice
        .call(
            "POST",
            &format!("{b}/interactions/{iid}/forward"),
            Some(json!({ "to": "billing@partner.test", "body": "Please check the double charge." })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{f}");
    assert!(f["body"].as_str().unwrap().starts_with("Forwarded to billing@partner.test"), "{f}");
    let sent = peers.wait_sent(3, 30).await;
    let fwd = sent.iter().map(|m| parse(m, 1 << 20).unwrap()).find(|p| p.subject.starts_with("Fwd:")).expect("the forward");
    assert_eq!(fwd.to[0].address, "billing@partner.test");
    assert!(fwd.cc.is_empty() && fwd.in_reply_to.is_empty());
    assert!(fwd.subject.starts_with("Fwd: Invoice 7 wrong"), "{}", fwd.subject);
    assert!(fwd.text.contains("Please check the double charge."), "{}", fwd.text);
    assert!(
        fwd.forwarded.iter().any(|f| f.contains("Invoice 7 wrong")) || fwd.attachments.iter().any(|a| a.content_type == "message/rfc822"),
        "the original is attached: {:?} {:?}",
        fwd.forwarded,
        fwd.attachments.iter().map(|a| &a.content_type).collect::<Vec<_>>()
    );
    let token_from = fwd.from.clone().unwrap().address;
    // Inline forward: the original's text in the body.
    let (st, _) =
        alice.call("POST", &format!("{b}/interactions/{iid}/forward"), Some(json!({ "to": "ops@partner.test", "inline": true }))).await;
    assert_eq!(st, StatusCode::CREATED);
    let sent = peers.wait_sent(4, 30).await;
    let inline =
        sent.iter().map(|m| parse(m, 1 << 20).unwrap()).find(|p| p.to.first().is_some_and(|t| t.address == "ops@partner.test")).unwrap();
    assert!(
        inline.text.contains("---------- Forwarded message ---------") && inline.text.contains("Invoice 7 charges twice."),
        "{}",
        inline.text
    );

    let answer = format!(
        "From: billing@partner.test\r\nTo: {token_from}\r\nSubject: Re: {}\r\nMessage-ID: <pa1@partner.test>\r\nIn-Reply-To: <{}>\r\n\r\nConfirmed, refunded.\r\n",
        fwd.subject,
        fwd.message_id.clone().unwrap()
    );
    peers.append("support", &[answer.as_bytes()]).await;
    let got = eventually(30, || {
        let a = alice.clone();
        let iid = iid.clone();
        async move { messages(&a, &iid).await.into_iter().find(|m| m["body"].as_str().is_some_and(|b| b.contains("Confirmed, refunded."))) }
    })
    .await;
    assert_eq!(got["direction"], "inbound");
    assert_eq!(email_interactions(&th).await, 1, "the partner's answer joined the same interaction");
    th.stop().await;
}

/// Starts `switchboard serve` as a process; returns it once it printed its URL.
fn serve_process(config: &std::path::Path, db_url: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--bind", "127.0.0.1:0", "--config", config.to_str().unwrap()])
        .env("SWITCHBOARD__DATABASE__URL", db_url)
        .env("SWITCHBOARD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn switchboard");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Bounded by the child: EOF when it exits.
    let started = lines.by_ref().take(200).any(|l| l.is_ok_and(|l| l.contains("http://")));
    std::thread::spawn(move || for _ in lines {});
    if !started {
        let _ = child.kill();
        panic!("switchboard serve printed no URL");
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_process_holding_the_mailbox_hands_it_over_with_nothing_lost_or_doubled() {
    use std::time::{Duration, Instant};
    let Some(peers) = MailPeers::start() else { return };
    let db = switchboard_core::testing::TestDb::new().await;
    let mut root = toml::map::Map::new();
    root.insert("channels".into(), toml::Value::Array(vec![peers.channel("shared", "")]));
    let config = peers.dir.join("switchboard.toml");
    std::fs::write(&config, toml::to_string(&toml::Value::Table(root)).unwrap()).unwrap();
    let owner = || async { switchboard_email::store::lease_owner(&db.pool, "shared").await.unwrap() };
    let mail = |k: usize| {
        format!("From: c{k}@customer.test\r\nTo: support@shop.test\r\nSubject: parcel {k}\r\nMessage-ID: <kill-{k}@customer.test>\r\n\r\nWhere is parcel {k}?\r\n")
    };
    let counts = || async {
        let raw: i64 = sqlx::query_scalar("select count(*) from email_raw_messages where mailbox = 'shared' and status = 'ingested'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let items: (i64, i64) = sqlx::query_as("select count(*), count(distinct dedupe_key) from inbound_items where channel = 'email'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let interactions: i64 =
            sqlx::query_scalar("select count(*) from interactions where channel = 'email'").fetch_one(&db.pool).await.unwrap();
        (raw, items.0, items.1, interactions)
    };

    // The first process takes the mailbox; the second waits as standby.
    let mut first = serve_process(&config, &db.url());
    let holder = eventually(60, || async { owner().await }).await;
    let mut second = serve_process(&config, &db.url());
    let batch1: Vec<String> = (0..200).map(mail).collect();
    peers.append("support", &batch1.iter().map(|m| m.as_bytes()).collect::<Vec<_>>()).await;
    eventually(60, || async { (counts().await.0 >= 1).then_some(()) }).await;
    assert_eq!(owner().await, Some(holder), "the standby never polled while the holder lived");
    println!("imported when the holder was killed: {} of 200", counts().await.0);

    // SIGKILL the holder mid-import: no goodbye, its lease is left to expire.
    first.kill().unwrap();
    let _ = first.wait();
    let died = Instant::now();
    let next = eventually(30, || async { owner().await.filter(|o| *o != holder) }).await;
    let took = died.elapsed();
    println!("mailbox lease takeover after SIGKILL: {} ms (lease_secs = 3)", took.as_millis());
    assert_ne!(next, holder);
    let batch2: Vec<String> = (200..220).map(mail).collect();
    peers.append("support", &batch2.iter().map(|m| m.as_bytes()).collect::<Vec<_>>()).await;
    let done = eventually(60, || async {
        let c = counts().await;
        (c.0 == 220).then_some(c)
    })
    .await;
    // Let the survivor run a few more import passes over the same folder: still nothing twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = counts().await;
    assert_eq!(after, done);
    assert_eq!(after, (220, 220, 220, 220), "every mail once: raw rows, inbound items (distinct), interactions");
    let (seen, all) = peers.seen("support").await;
    assert_eq!((seen, all), (220, 220), "every mail flagged after its commit");
    let _ = second.kill();
    let _ = second.wait();
}
