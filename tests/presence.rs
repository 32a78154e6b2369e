//! Presence follows the agent's live inbox connections: an available agent whose last
//! event-stream socket closed goes offline after `router.presence_grace_secs` (reason
//! `no_connection`, with an event and an audit entry), the chat widget then says chat is
//! offline, and reconnecting within the grace period keeps presence.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use switchboard_core::Role;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const GRACE_SECS: u64 = 2;

async fn presence_hub() -> TestHub {
    let dir = std::env::temp_dir().join(format!("sb-presence-test-{}", Uuid::new_v4().simple()));
    let table = toml::Value::Table(
        format!("type = \"webchat\"\nname = \"web\"\nattachments_dir = \"{}\"\n", dir.display()).parse().expect("chat toml"),
    );
    spawn_hub_with(|s| {
        s.router.presence_grace_secs = GRACE_SECS;
        s.channels.push(table);
    })
    .await
}

async fn stream(th: &TestHub, c: &Client) -> Ws {
    let token = switchboard_core::auth::create_token(th.hub().db(), c.user_id.unwrap(), "inbox", None).await.unwrap().1;
    let mut req = format!("{}/api/v1/stream", th.url.replace("http://", "ws://")).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("stream connects");
    // The hello frame comes after the connection is recorded.
    use futures::StreamExt;
    let hello = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("hello").expect("open").expect("frame");
    assert!(hello.to_text().unwrap_or_default().contains("hello"));
    ws
}

async fn set_presence(c: &Client, p: &str) {
    let (st, b) = c.call("PUT", &format!("/api/v1/agents/{}/presence", c.agent_id.unwrap()), Some(json!({ "presence": p }))).await;
    assert_eq!(st, reqwest::StatusCode::OK, "{b}");
}

async fn presence_of(th: &TestHub, c: &Client) -> String {
    sqlx::query_scalar("select presence from agents where id = $1").bind(c.agent_id.unwrap()).fetch_one(&th.db.pool).await.unwrap()
}

async fn widget_online(th: &TestHub) -> bool {
    let cfg: Value = reqwest::get(format!("{}/chat/v1/config", th.url)).await.expect("config").json().await.expect("json");
    cfg["availability"]["online"].as_bool().expect("availability.online")
}

#[tokio::test]
async fn an_agent_who_closes_the_inbox_goes_offline_after_the_grace_period() {
    let th = presence_hub().await;
    let admin = user(&th, "root", &[Role::Admin], None).await;
    queue(&admin, json!({ "name": "default" })).await;
    let alice = user(&th, "alice", &[Role::Agent], Some(json!({ "support": 3 }))).await;
    let ws = stream(&th, &alice).await;
    set_presence(&alice, "available").await;
    assert!(widget_online(&th).await, "chat online with an available agent");
    let (_, view) = admin.call("GET", &format!("/api/v1/agents/{}", alice.agent_id.unwrap()), None).await;
    assert_eq!((view["connections"].as_i64(), view["voice_reachable"].as_bool()), (Some(1), Some(false)), "{view}");
    // The socket stays open for longer than the grace period: presence holds.
    tokio::time::sleep(Duration::from_secs(GRACE_SECS + 2)).await;
    assert_eq!(presence_of(&th, &alice).await, "available");

    // The browser closes.
    drop(ws);
    let t0 = std::time::Instant::now();
    eventually(15, || {
        let th_pool = th.db.pool.clone();
        let id = alice.agent_id.unwrap();
        async move {
            let p: String = sqlx::query_scalar("select presence from agents where id = $1").bind(id).fetch_one(&th_pool).await.unwrap();
            (p == "offline").then_some(())
        }
    })
    .await;
    assert!(t0.elapsed() >= Duration::from_millis(GRACE_SECS * 1000 - 500), "offline before the grace period ended");
    assert!(!widget_online(&th).await, "the widget still says chat is online");
    let (_, view) = admin.call("GET", &format!("/api/v1/agents/{}", alice.agent_id.unwrap()), None).await;
    assert_eq!(view["connections"], 0, "{view}");
    let (reason,): (String,) =
        sqlx::query_as("select data->>'reason' from interaction_events where kind = 'presence' and agent_id = $1 order by id desc limit 1")
            .bind(alice.agent_id.unwrap())
            .fetch_one(&th.db.pool)
            .await
            .unwrap();
    assert_eq!(reason, "no_connection");
    let audited: i64 = sqlx::query_scalar(
        "select count(*) from audit_log where action = 'agent.presence' and target_id = $1 and details->>'reason' = 'no_connection'",
    )
    .bind(alice.agent_id.unwrap().to_string())
    .fetch_one(&th.db.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    th.stop().await;
}

#[tokio::test]
async fn reconnecting_within_the_grace_period_keeps_presence() {
    let th = presence_hub().await;
    let bob = user(&th, "bob", &[Role::Agent], Some(json!({ "support": 3 }))).await;
    let ws = stream(&th, &bob).await;
    set_presence(&bob, "available").await;
    // A page reload: the socket closes and a new one opens at once.
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ws2 = stream(&th, &bob).await;
    tokio::time::sleep(Duration::from_secs(GRACE_SECS * 2 + 1)).await;
    assert_eq!(presence_of(&th, &bob).await, "available");
    assert!(widget_online(&th).await);
    // Two tabs: closing one of them keeps presence too.
    let ws3 = stream(&th, &bob).await;
    drop(ws2);
    tokio::time::sleep(Duration::from_secs(GRACE_SECS * 2 + 1)).await;
    assert_eq!(presence_of(&th, &bob).await, "available");
    drop(ws3);
    // An agent set available without ever opening the inbox goes offline too.
    let carol = user(&th, "carol", &[Role::Agent], Some(json!({ "support": 3 }))).await;
    set_presence(&carol, "available").await;
    eventually(15, || {
        let pool = th.db.pool.clone();
        let (b, c) = (bob.agent_id.unwrap(), carol.agent_id.unwrap());
        async move {
            let n: i64 = sqlx::query_scalar("select count(*) from agents where id in ($1, $2) and presence = 'offline'")
                .bind(b)
                .bind(c)
                .fetch_one(&pool)
                .await
                .unwrap();
            (n == 2).then_some(())
        }
    })
    .await;
    th.stop().await;
}
