//! Shared files across hub nodes, directory backend: every node's chat channel stores
//! attachments in one shared directory (a shared volume in production, see
//! docs/deploy.md). A visitor uploads through node A; node B serves the file to that
//! visitor and refuses everyone else, as node A would.

#[path = "support/sip.rs"]
mod sip;
mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;
use switchboard_core::Role;
use uuid::Uuid;

async fn session(base: &str) -> String {
    let r = reqwest::Client::new().post(format!("{base}/chat/v1/sessions")).json(&json!({})).send().await.expect("session");
    assert!(r.status().is_success(), "{}", r.status());
    let v: Value = r.json().await.expect("json");
    v["token"].as_str().expect("token").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_uploaded_through_one_node_is_served_by_another() {
    let shared = std::env::temp_dir().join(format!("sb-shared-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&shared).expect("dir");
    let table = |name: &str| -> toml::Value {
        format!("type = \"webchat\"\nname = \"{name}\"\nattachments_dir = \"{}\"\n", shared.display()).parse().expect("chat toml")
    };
    let (ta, tb) = (table("web"), table("web"));
    let a = spawn_hub_with(|s| s.channels.push(ta)).await;
    let b = spawn_node_with(&a.db, |s| s.channels.push(tb)).await;
    let http = reqwest::Client::new();
    let token = session(&a.url).await;
    let body = format!("notes from node A {}", Uuid::new_v4());
    let r = http
        .post(format!("{}/chat/v1/attachments?filename=notes.txt", a.url))
        .header("x-chat-token", &token)
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), StatusCode::CREATED);
    let att: Value = r.json().await.expect("json");
    let path = att["url"].as_str().expect("url").to_string();

    // Node B serves it to the visitor who uploaded it ...
    let r = http.get(format!("{}{path}", b.url())).header("x-chat-token", &token).send().await.expect("download");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.text().await.expect("text"), body);
    // ... and to nobody else.
    assert_eq!(http.get(format!("{}{path}", b.url())).send().await.expect("anonymous").status(), StatusCode::UNAUTHORIZED);
    let other = session(&b.url()).await;
    let r = http.get(format!("{}{path}", b.url())).header("x-chat-token", &other).send().await.expect("other visitor");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    b.stop().await;
    a.stop().await;
    let _ = std::fs::remove_dir_all(&shared);
}

// ------------------------------------------------------------------ S3-compatible backend

/// An S3-compatible server on loopback: moto (PyPI `moto[server]`, installed by
/// scripts/test.sh), on a port it picks itself, with one empty bucket.
struct S3Server {
    _child: tokio::process::Child,
    endpoint: String,
    bucket: String,
}

impl S3Server {
    /// The server, or None after saying why `test` is skipped.
    async fn start_for(test: &str) -> Option<S3Server> {
        let s3 = S3Server::start().await;
        if s3.is_none() {
            eprintln!(
                "SKIPPED {test}: no S3-compatible server (`python3 -m moto.server`; pip install 'moto[server]', scripts/test.sh does)"
            );
        }
        s3
    }

    async fn start() -> Option<S3Server> {
        let mut child = tokio::process::Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", "0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        // Werkzeug prints "Running on http://127.0.0.1:PORT" (on stderr; stdout on some versions).
        let (out, err) = (child.stdout.take()?, child.stderr.take()?);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
        forward_lines(out, tx.clone());
        forward_lines(err, tx.clone());
        drop(tx);
        let endpoint = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while let Some(line) = rx.recv().await {
                if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://127.0.0.1:")) {
                    return Some(url.trim_end_matches('/').to_string());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()?;
        let bucket = format!("sb-{}", Uuid::new_v4().simple());
        let r = reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await.ok()?;
        r.status().is_success().then_some(S3Server { _child: child, endpoint, bucket })
    }

    fn settings(&self) -> switchboard_core::files::FilesSettings {
        switchboard_core::files::FilesSettings {
            backend: switchboard_core::files::FilesBackend::S3,
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            path_style: true,
            access_key_id: "testing".into(),
            secret_access_key: Some("testing".to_string().into()),
            ..Default::default()
        }
    }

    /// Keys in the bucket (ListObjectsV2, path style).
    async fn keys(&self) -> Vec<String> {
        let text = reqwest::get(format!("{}/{}?list-type=2", self.endpoint, self.bucket)).await.expect("list").text().await.expect("body");
        text.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_string).collect()
    }
}

/// Sends a child's output lines to `tx` and keeps draining after the receiver is gone, so
/// the child never blocks on a full pipe.
fn forward_lines(r: impl tokio::io::AsyncRead + Unpin + Send + 'static, tx: tokio::sync::mpsc::Sender<String>) {
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(r).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let _ = tx.try_send(l);
        }
    });
}

/// Two nodes on one database with the S3 backend and nothing shared on disk: a chat
/// attachment, an email upload and a call recording written through node A are served by
/// node B, with the same authorization as before (401 without credentials, 401/403 for
/// the wrong visitor or agent); the recording's local spool file is gone once uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_written_through_one_node_are_served_by_another_from_s3() {
    let Some(s3) = S3Server::start_for("files_written_through_one_node_are_served_by_another_from_s3").await else { return };
    let dir = std::env::temp_dir().join(format!("sb-s3-{}", Uuid::new_v4()));
    for d in ["a/rec", "a/vm", "a/att", "b/rec", "b/vm", "b/att"] {
        std::fs::create_dir_all(dir.join(d)).expect("dir");
    }
    let sipp = sip::sipp_bin();
    let (name_a, name_b) = (format!("pbx-a-{}", Uuid::new_v4()), format!("pbx-b-{}", Uuid::new_v4()));
    let node_tables = |node: &str, sip_name: &str| -> Vec<toml::Value> {
        let att = dir.join(node).join("att");
        let mut t: Vec<toml::Value> = vec![
            format!("type = \"webchat\"\nname = \"web\"\nattachments_dir = \"{}\"\n", att.display()).parse().expect("chat toml"),
            toml::from_str(&format!(
                "type = \"email\"\nname = \"support-mail\"\naddress = \"support@shop.example\"\nattachments_dir = \"{}\"\n\
                 [imap]\nhost = \"127.0.0.1\"\nport = 1\nsecurity = \"plain\"\nusername = \"u\"\n\
                 [smtp]\nhost = \"127.0.0.1\"\nport = 1\nsecurity = \"plain\"\n",
                att.display()
            ))
            .expect("email toml"),
        ];
        if sipp.is_some() {
            t.push(voice_channel_table(sip_name, &dir.join(node)));
        }
        t
    };
    let (tables_a, tables_b) = (node_tables("a", &name_a), node_tables("b", &name_b));
    let (files_a, files_b) = (s3.settings(), s3.settings());
    let a = spawn_hub_with(|s| {
        s.channels.extend(tables_a);
        s.files = files_a;
    })
    .await;
    let b = spawn_node_with(&a.db, |s| {
        s.channels.extend(tables_b);
        s.files = files_b;
    })
    .await;
    let http = reqwest::Client::new();

    // Chat: a visitor uploads through A; B serves it to that visitor only.
    let token = session(&a.url).await;
    let body = format!("notes from node A {}", Uuid::new_v4());
    let r = http
        .post(format!("{}/chat/v1/attachments?filename=notes.txt", a.url))
        .header("x-chat-token", &token)
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), StatusCode::CREATED);
    let att: Value = r.json().await.expect("json");
    let path = att["url"].as_str().expect("url").to_string();
    let sha = switchboard_chat::attachments::sha256_hex(body.as_bytes());
    assert!(s3.keys().await.contains(&format!("attachments/{sha}")), "stored in the bucket: {:?}", s3.keys().await);
    for node in ["a", "b"] {
        assert_eq!(std::fs::read_dir(dir.join(node).join("att")).expect("dir").count(), 0, "nothing on node {node}'s disk");
    }
    let r = http.get(format!("{}{path}", b.url())).header("x-chat-token", &token).send().await.expect("download");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("text"), body);
    assert_eq!(http.get(format!("{}{path}", b.url())).send().await.expect("anonymous").status(), StatusCode::UNAUTHORIZED);
    let other = session(&b.url()).await;
    let r = http.get(format!("{}{path}", b.url())).header("x-chat-token", &other).send().await.expect("other visitor");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Email: an agent's upload through A is read back through B; a visitor gets nothing.
    let admin = user(&a, "admin", &[Role::Admin, Role::Supervisor], None).await;
    let pdf = format!("%PDF-1.4 quote {}", Uuid::new_v4()).into_bytes();
    let (st, d, _) = admin.raw("POST", "/api/v1/email/support-mail/uploads?filename=quote.pdf", Some("application/pdf"), pdf.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    let url = d["url"].as_str().expect("upload url").to_string();
    let admin_b = Client::login(&b.url(), "admin", "test-password-1").await;
    let r = admin_b.http.get(format!("{}{url}", b.url())).send().await.expect("email download");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("bytes").to_vec(), pdf);
    assert_eq!(http.get(format!("{}{url}", b.url())).send().await.expect("anonymous").status(), StatusCode::UNAUTHORIZED);

    // Voice: a call answered on A is recorded there, uploaded at its end and played from B.
    let Some(bin) = sipp else {
        eprintln!("SKIPPED the recording part: `sipp` not on PATH (apt-get install sip-tester)");
        b.stop().await;
        a.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let sip_a = eventually(10, || async { switchboard_voice::bound_addr(&name_a) }).await;
    queue(&admin, json!({ "name": "support", "accept_timeout_secs": 30 })).await;
    let alice = user(&a, "alice", &[Role::Agent], Some(json!({ "language:en": 5 }))).await;
    let agent_id = alice.agent_id.expect("agent id");
    sqlx::query("update agents set sip_user = 'alice' where id = $1").bind(agent_id).execute(&a.db.pool).await.expect("sip user");
    let phone_port = sip::free_udp_port();
    let phone = sip::sipp(&bin, &dir, sip_a, "agent_answer_until_bye.xml", phone_port, &["-s", "alice"]);
    let port_s = phone_port.to_string();
    let reg = sip::sipp(
        &bin,
        &dir,
        sip_a,
        "register.xml",
        sip::free_udp_port(),
        &["-s", "alice", "-au", "alice", "-ap", "alice-pw", "-key", "agent_port", &port_s],
    );
    sip::finished_ok(reg, "register").await;
    let (st, body) = alice.call("PUT", &format!("/api/v1/agents/{agent_id}/presence"), Some(json!({ "presence": "available" }))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let caller = sip::sipp(&bin, &dir, sip_a, "caller_until_bye.xml", sip::free_udp_port(), &["-s", "100"]);
    let id = sip::call_answered(&admin, None).await;
    // Let some audio through, then hang up (the end publishes the recording).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let (st, body) = alice.call("POST", &format!("/api/v1/voice/calls/{id}/hangup"), None).await;
    assert_eq!(st, StatusCode::OK, "hang up: {body}");
    sip::finished_ok(caller, "caller").await;
    sip::finished_ok(phone, "alice's phone").await;
    eventually(20, || {
        let (c, id) = (admin.clone(), id.clone());
        async move {
            let (_, evs) = c.call("GET", &format!("/api/v1/interactions/{id}/events"), None).await;
            evs.as_array()?.iter().any(|e| e["kind"] == "call_ended" && e["data"]["recording"].is_string()).then_some(())
        }
    })
    .await;
    let keys = s3.keys().await;
    assert!(keys.iter().any(|k| k.starts_with("recordings/") && k.ends_with(".wav")), "recording in the bucket: {keys:?}");
    assert_eq!(std::fs::read_dir(dir.join("a/rec")).expect("dir").count(), 0, "the spool file is removed after the upload");

    // Node B plays it to the agent who took the call and to a supervisor ...
    let alice_b = Client::login(&b.url(), "alice", "test-password-1").await;
    for (who, c) in [("alice", &alice_b), ("admin", &admin_b)] {
        let r = c.http.get(format!("{}/api/v1/recordings/{id}", b.url())).send().await.expect("recording");
        assert_eq!(r.status(), StatusCode::OK, "{who}");
        assert_eq!(r.headers()["content-type"], "audio/wav");
        let wav = r.bytes().await.expect("wav");
        assert!(wav.len() > 44 && wav.starts_with(b"RIFF"), "{who}: a WAV file ({} bytes)", wav.len());
        // Seeking reads a byte range from the bucket.
        let r = c.http.get(format!("{}/api/v1/recordings/{id}", b.url())).header("range", "bytes=-4").send().await.expect("range");
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{who}");
        assert_eq!(r.headers()["content-range"], format!("bytes {}-{}/{}", wav.len() - 4, wav.len() - 1, wav.len()).as_str());
        assert_eq!(&r.bytes().await.expect("bytes")[..], &wav[wav.len() - 4..]);
    }
    // ... and to nobody else.
    assert_eq!(http.get(format!("{}/api/v1/recordings/{id}", b.url())).send().await.expect("anonymous").status(), StatusCode::UNAUTHORIZED);
    let _mallory = user(&a, "mallory", &[Role::Agent], Some(json!({ "language:en": 1 }))).await;
    let mallory_b = Client::login(&b.url(), "mallory", "test-password-1").await;
    let r = mallory_b.http.get(format!("{}/api/v1/recordings/{id}", b.url())).send().await.expect("other agent");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    b.stop().await;
    a.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A SIP channel for one node: a trunk DID 100 straight into the support queue, alice's
/// phone registered, recordings in `dir/rec`.
fn voice_channel_table(name: &str, dir: &std::path::Path) -> toml::Value {
    sip::alice_channel_table(
        name,
        dir,
        "",
        "[ivr_flows.main]\nstart = \"queue\"\ndefault_queue = \"support\"\n[ivr_flows.main.nodes.queue]\ntype = \"enqueue\"",
    )
}

/// A recording bigger than one part (an hour of stereo audio is ~115 MB) goes up as a
/// multipart upload (its ETag says how many parts) and reads back byte for byte, whole and
/// as a range across a part boundary; a small file is still one PUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_recording_goes_up_in_parts_and_reads_back_whole() {
    use switchboard_core::files::{FileBackend, S3_PART};
    let Some(s3) = S3Server::start_for("a_large_recording_goes_up_in_parts_and_reads_back_whole").await else { return };
    let dir = std::env::temp_dir().join(format!("sb-s3-big-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = FileBackend::from_settings(&s3.settings()).expect("backend").store(&dir, "recordings");
    // 2.5 parts of bytes that differ from part to part (a misplaced part would show).
    let len = S3_PART * 2 + S3_PART / 2 + 12_345;
    let data: Vec<u8> = (0..len).map(|i| (i as u64).wrapping_mul(2_654_435_761).rotate_right(13) as u8).collect();
    let big = dir.join("big.wav");
    std::fs::write(&big, &data).expect("write");
    store.put_file("2026/12/big.wav", &big).await.expect("multipart upload");
    let small = dir.join("small.wav");
    std::fs::write(&small, b"RIFF small").expect("write");
    store.put_file("2026/12/small.wav", &small).await.expect("single put");

    let etag = |key: &'static str| {
        let url = format!("{}/{}/recordings/{key}", s3.endpoint, s3.bucket);
        async move {
            let r = reqwest::Client::new().head(url).send().await.expect("head");
            r.headers().get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
        }
    };
    assert!(etag("2026/12/big.wav").await.trim_matches('"').ends_with("-3"), "three parts");
    assert!(!etag("2026/12/small.wav").await.contains('-'), "one PUT");
    assert_eq!(store.size("2026/12/big.wav").await.expect("size"), Some(len as u64));
    let whole = store.get("2026/12/big.wav", None).await.expect("get").expect("there").bytes().await.expect("bytes");
    assert!(whole[..] == data[..], "the object is the file");
    let across = (S3_PART as u64 - 1000)..(S3_PART as u64 + 1000);
    let part = store.get("2026/12/big.wav", Some(across.clone())).await.expect("get").expect("there").bytes().await.expect("bytes");
    assert!(part[..] == data[across.start as usize..across.end as usize], "a range across the first part boundary");
    let _ = std::fs::remove_dir_all(&dir);
}
