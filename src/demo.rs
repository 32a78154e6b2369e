//! `switchboard demo`: demo users, agents with skills, queues and canned responses, created
//! once (re-running keeps what exists).

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
