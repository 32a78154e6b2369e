//! Shared files across hub nodes, directory backend: every node's chat channel stores
//! attachments in one shared directory (a shared volume in production, see
//! docs/deploy.md). A visitor uploads through node A; node B serves the file to that
//! visitor and refuses everyone else, as node A would.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;
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
