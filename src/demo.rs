//! `switchboard demo`: demo users, agents with skills, queues and canned responses, created
//! once (re-running keeps what exists), and a SIP channel with a trunk number that reaches
//! an IVR and the demo agents' phones (fresh SIP passwords at each start).

use crate::settings::Settings;
use switchboard_core::api::queues_api::QueueInput;
use switchboard_core::auth;
use switchboard_core::{CoreResult, Hub, Role};
use uuid::Uuid;

/// A demo account.
pub struct DemoUser {
    /// Login.
    pub username: &'static str,
    /// Password.
    pub password: &'static str,
    /// Roles.
    pub roles: &'static [Role],
    /// Agent skills, if the user is an agent.
    pub skills: Option<&'static [(&'static str, u8)]>,
    /// Overflow groups.
    pub groups: &'static [&'static str],
    /// SIP user for the agent's phone.
    pub sip_user: Option<&'static str>,
}

/// The demo accounts printed at start.
pub const DEMO_USERS: &[DemoUser] = &[
    DemoUser {
        username: "admin",
        password: "admin-demo-pass",
        roles: &[Role::Admin, Role::Supervisor],
        skills: None,
        groups: &[],
        sip_user: None,
    },
    DemoUser { username: "sam", password: "supervisor-pass", roles: &[Role::Supervisor], skills: None, groups: &[], sip_user: None },
    DemoUser {
        username: "alice",
        password: "agent-pass-1",
        roles: &[Role::Agent],
        skills: Some(&[("language:en", 5), ("billing", 4), ("support", 3)]),
        groups: &[],
        sip_user: Some("alice"),
    },
    DemoUser {
        username: "bruno",
        password: "agent-pass-2",
        roles: &[Role::Agent],
        skills: Some(&[("language:es", 5), ("language:en", 3), ("support", 4)]),
        groups: &[],
        sip_user: Some("bruno"),
    },
    DemoUser {
        username: "carla",
        password: "agent-pass-3",
        roles: &[Role::Agent],
        skills: Some(&[("language:en", 4), ("sales", 5)]),
        groups: &["spare"],
        sip_user: Some("carla"),
    },
    DemoUser { username: "mia", password: "marketer-pass", roles: &[Role::Marketer], skills: None, groups: &[], sip_user: None },
    DemoUser { username: "ken", password: "kb-editor-pass", roles: &[Role::KbEditor], skills: None, groups: &[], sip_user: None },
];

/// Creates the demo data if missing.
pub async fn seed(hub: &Hub) -> CoreResult<()> {
    for u in DEMO_USERS {
        let existing: Option<Uuid> =
            sqlx::query_scalar("select id from users where username = $1").bind(u.username).fetch_optional(hub.db()).await?;
        let user_id = match existing {
            Some(id) => id,
            None => auth::create_user(hub.db(), None, u.username, &capitalize(u.username), u.password, u.roles).await?.id,
        };
        if let Some(skills) = u.skills {
            let skills: std::collections::BTreeMap<&str, u8> = skills.iter().copied().collect();
            sqlx::query(
                "insert into agents (user_id, name, skills, groups, sip_user, presence) values ($1, $2, $3, $4, $5, 'offline')
                 on conflict (user_id) do nothing",
            )
            .bind(user_id)
            .bind(capitalize(u.username))
            .bind(sqlx::types::Json(skills))
            .bind(u.groups.iter().map(|g| g.to_string()).collect::<Vec<_>>())
            .bind(u.sip_user)
            .execute(hub.db())
            .await?;
        }
    }
    let queues: Vec<serde_json::Value> = vec![
        serde_json::json!({ "name": "billing", "requirement": "billing >= 2", "rule_order": 10, "strategy": "longest_idle",
            "entry_rules": [{ "keywords": ["invoice", "bill", "payment", "refund"] }],
            "escalation": [{ "after_secs": 60, "action": "overflow_group", "group": "spare" }] }),
        serde_json::json!({ "name": "soporte", "requirement": "language:es >= 3", "rule_order": 20, "strategy": "best_skill",
            "entry_rules": [{ "language": "es" }, { "keywords": ["hola", "ayuda"] }],
            "escalation": [{ "after_secs": 90, "action": "relax_skill", "skill": "language:es" }] }),
        serde_json::json!({ "name": "default", "requirement": "", "rule_order": 100, "strategy": "longest_idle", "wrap_up_secs": 30,
            "escalation": [{ "after_secs": 120, "action": "overflow_group", "group": "spare" }] }),
    ];
    for q in queues {
        let name = q["name"].as_str().unwrap_or_default().to_string();
        let exists: Option<Uuid> = sqlx::query_scalar("select id from queues where name = $1").bind(&name).fetch_optional(hub.db()).await?;
        if exists.is_none() {
            let input: QueueInput = serde_json::from_value(q).map_err(|e| switchboard_core::CoreError::Internal(e.to_string()))?;
            switchboard_core::api::queues_api::create_queue(hub, None, input).await?;
        }
    }
    let canned: i64 = sqlx::query_scalar("select count(*) from canned_responses").fetch_one(hub.db()).await?;
    if canned == 0 {
        for (t, b) in [
            ("Greeting", "Hello! Thanks for contacting us. How can I help you today?"),
            (
                "Password reset",
                "You can reset your password from the sign-in page: choose \"Forgot password\" and follow the link we email you.",
            ),
            ("Closing", "Is there anything else I can help you with? Have a great day!"),
        ] {
            sqlx::query("insert into canned_responses (title, body) values ($1, $2)").bind(t).bind(b).execute(hub.db()).await?;
        }
    }
    Ok(())
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Name of the SIP channel the demo adds when the configuration has none.
pub const DEMO_SIP_CHANNEL: &str = "voice";

/// The number the demo's trunk routes to the IVR (any other number reaches it too).
pub const DEMO_NUMBER: &str = "100";

/// The SIP channel the demo runs: its adapter name and whether the demo manages the
/// phones' passwords (credentials in the database).
#[derive(Debug, Clone)]
pub struct DemoVoice {
    /// Adapter name (`name` of the `[[channels]]` entry).
    pub channel: String,
    /// Digest realm of its registrar.
    pub realm: String,
    /// The registrar reads credentials from the database, so the demo sets them.
    pub database_credentials: bool,
    /// The demo added the channel (its trunk number and IVR are the demo's).
    pub added: bool,
}

/// A demo agent's phone with the SIP credentials generated at start.
#[derive(Debug, Clone)]
pub struct DemoPhone {
    /// Login of the agent's user.
    pub username: &'static str,
    /// SIP user the phone registers.
    pub sip_user: &'static str,
    /// SIP password (generated at each start; only its digest is stored).
    pub password: String,
}

fn beside_source(path: &str) -> std::path::PathBuf {
    let p = std::path::PathBuf::from(path);
    if p.exists() {
        return p;
    }
    let beside = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    if beside.exists() {
        beside
    } else {
        p
    }
}

/// A local port free for both UDP and TCP: the SIP port 5060 when it is, else any.
fn free_sip_port() -> u16 {
    use std::net::{TcpListener, UdpSocket};
    let both = |p: u16| UdpSocket::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p)).is_ok();
    if both(5060) {
        return 5060;
    }
    for _ in 0..50 {
        let Ok(p) = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()) else { continue };
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    0
}

/// The demo's SIP channel (`type = "sip"` on 127.0.0.1): a trunk accepting calls from
/// this machine with number [`DEMO_NUMBER`] (and any other) routed to an IVR (welcome,
/// then 1 for English, 2 for Spanish, into the demo queues), and a registrar for the
/// demo agents' phones with credentials in the database.
pub fn sip_channel(settings: &Settings) -> Result<toml::Value, String> {
    let port = free_sip_port();
    let data = &settings.database.data_dir;
    let text = format!(
        r#"
type = "sip"
name = "{DEMO_SIP_CHANNEL}"
udp_listen = "127.0.0.1:{port}"
tcp_listen = "127.0.0.1:{port}"
public_ip = "127.0.0.1"
prompts_dir = {prompts}
recordings_dir = {recordings}
voicemail_dir = {voicemail}
music_on_hold = "music-on-hold"
announce_every_secs = 30
ring_timeout_secs = 20

[registrar]
realm = "switchboard"
credentials = {{ type = "external" }}

[[trunks]]
name = "demo"
allowed_sources = ["127.0.0.1", "::1"]
dids = {{ "{DEMO_NUMBER}" = "main" }}
default_flow = "main"

[ivr_flows.main]
start = "welcome"
default_queue = "default"

[ivr_flows.main.nodes.welcome]
type = "play"
prompt = "welcome"
next = "language"

[ivr_flows.main.nodes.language]
type = "menu"
prompt = "menu-language"
choices = {{ "1" = "english", "2" = "spanish" }}
timeout_ms = 4000
max_attempts = 2
invalid_prompt = "invalid"
timeout_prompt = "no-input"
on_failure = "enqueue"

[ivr_flows.main.nodes.english]
type = "set_requirement"
requirement = "language:en >= 1"
next = "enqueue"

[ivr_flows.main.nodes.spanish]
type = "set_queue"
queue = "soporte"
next = "es"

[ivr_flows.main.nodes.es]
type = "set_requirement"
requirement = "language:es >= 1"
next = "enqueue"

[ivr_flows.main.nodes.enqueue]
type = "enqueue"
"#,
        prompts = toml::Value::String(beside_source("config/prompts").display().to_string()),
        recordings = toml::Value::String(data.join("recordings").display().to_string()),
        voicemail = toml::Value::String(data.join("voicemail").display().to_string()),
    );
    toml::from_str(&text).map_err(|e| format!("demo SIP channel: {e}"))
}

/// Adds [`sip_channel`] unless the configuration has a `sip` channel, and returns the
/// SIP channel the demo runs.
pub fn ensure_sip_channel(settings: &mut Settings) -> Result<DemoVoice, String> {
    let kind = switchboard_voice::adapter::KIND;
    let added = !settings.channels.iter().any(|ch| ch.get("type").and_then(|t| t.as_str()) == Some(kind));
    if added {
        let table = sip_channel(settings)?;
        settings.channels.push(table);
    }
    let (index, table) = settings
        .channels
        .iter()
        .enumerate()
        .find(|(_, ch)| ch.get("type").and_then(|t| t.as_str()) == Some(kind))
        .ok_or("no sip channel")?;
    let (_, config) = switchboard_voice::adapter::parse_table(table.clone()).map_err(|e| format!("sip channel: {e}"))?;
    // The name the registry gives the adapter (`name`, else `<type>-<index>`).
    let channel = table.get("name").and_then(|n| n.as_str()).map(str::to_string).unwrap_or_else(|| format!("{kind}-{index}"));
    Ok(DemoVoice {
        channel,
        realm: config.registrar.realm.clone(),
        database_credentials: matches!(config.registrar.credentials, switchboard_voice::config::CredentialSource::External),
        added,
    })
}

/// Gives every demo agent's phone a fresh SIP password (stored as its digest) and
/// returns the credentials to print.
pub async fn seed_phones(hub: &Hub, realm: &str) -> CoreResult<Vec<DemoPhone>> {
    let mut phones = Vec::new();
    for u in DEMO_USERS {
        let Some(sip_user) = u.sip_user else { continue };
        let agent: Option<Uuid> =
            sqlx::query_scalar("select a.id from agents a join users u on u.id = a.user_id where u.username = $1 and a.sip_user = $2")
                .bind(u.username)
                .bind(sip_user)
                .fetch_optional(hub.db())
                .await?;
        let Some(agent) = agent else { continue };
        let password = format!("{}-{}", sip_user, &Uuid::new_v4().simple().to_string()[..10]);
        switchboard_voice::adapter::set_sip_password_as(hub, None, agent, realm, &password).await?;
        phones.push(DemoPhone { username: u.username, sip_user, password });
    }
    Ok(phones)
}
