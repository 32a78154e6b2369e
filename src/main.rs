//! The `switchboard` command: serve, migrate, demo, user and token management.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use switchboard::settings::Settings;
use switchboard_core::Role;

/// Switchboard: an omnichannel contact hub. Phone (SIP), SMS, email and web chat become
/// one skill-routed queue worked from one browser inbox.
#[derive(Parser)]
#[command(name = "switchboard", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// TOML file merged over config/default.toml (environment SWITCHBOARD__SECTION__KEY overrides both).
    #[arg(long, short = 'c', env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Override http.bind, e.g. 127.0.0.1:8080.
    #[arg(long)]
    bind: Option<String>,
    /// Override database.data_dir (where the embedded PostgreSQL lives).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override database.url; empty means the embedded PostgreSQL.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub: HTTP API and web pages, router, outbox, configured channels.
    /// Without a database URL it starts an embedded PostgreSQL in the data directory.
    Serve(Common),
    /// Apply database migrations and exit.
    Migrate(Common),
    /// Run the hub with demo agents, skills, queues and accounts, printing the URLs and
    /// the demo credentials.
    Demo(Common),
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// CRM tasks: import customers from CSV.
    Crm {
        #[command(subcommand)]
        command: CrmCommand,
    },
    /// Knowledge-base tasks: rebuild the search index.
    Kb {
        #[command(subcommand)]
        command: KbCommand,
    },
    /// Agent tasks: set the password of an agent's SIP phone.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Report tasks: recompute rollups from the event log (docs/metrics.md).
    Reports {
        #[command(subcommand)]
        command: ReportsCommand,
    },
}

#[derive(Subcommand)]
enum ReportsCommand {
    /// Recompute the rollups of a date range (local days of `reports.time_zone`, `--to`
    /// inclusive) from the raw events; the numbers equal what the live worker computed.
    /// `--all` forgets every rollup and recomputes the whole log (after changing
    /// `reports.time_zone`).
    Rebuild {
        #[command(flatten)]
        common: Common,
        /// First day (YYYY-MM-DD).
        #[arg(long, required_unless_present = "all")]
        from: Option<chrono::NaiveDate>,
        /// Last day, inclusive (YYYY-MM-DD).
        #[arg(long, required_unless_present = "all")]
        to: Option<chrono::NaiveDate>,
        /// Recompute everything.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Set the password the agent's SIP phone registers with. The password is read from
    /// SWITCHBOARD_PASSWORD or the first line of stdin; only its digest (HA1 for the SIP
    /// registrar's realm) is stored. The agent needs a SIP user (agents.sip_user).
    SipPassword {
        #[command(flatten)]
        common: Common,
        /// Login name of the agent's user account.
        #[arg(long)]
        username: String,
        /// Digest realm; defaults to the realm of the configured `sip` channel (or
        /// "switchboard" when none is configured).
        #[arg(long)]
        realm: Option<String>,
    },
}

#[derive(Subcommand)]
enum CrmCommand {
    /// Import customers from a CSV file (header row: name, phone, email, language, time_zone,
    /// birthday, tags, company, external_id, …). Bad rows are reported with the line and
    /// the reason; good rows are kept; re-running does not create duplicates.
    Import {
        #[command(flatten)]
        common: Common,
        /// The CSV file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum KbCommand {
    /// Re-send every article to the configured search backend (Meilisearch or PostgreSQL
    /// full text), with a progress bar.
    Reindex {
        #[command(flatten)]
        common: Common,
    },
}

/// Draws a one-line progress bar on stderr.
fn progress_bar(label: &str, done: u64, total: u64) {
    use std::io::Write;
    let width = 30usize;
    let filled = if total == 0 { width } else { ((done as f64 / total as f64) * width as f64).round() as usize }.min(width);
    let pct = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
    eprint!("\r{label} [{}{}] {done}/{total} ({pct:.0}%)", "#".repeat(filled), "-".repeat(width - filled));
    let _ = std::io::stderr().flush();
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. The password is read from SWITCHBOARD_PASSWORD or the first line of stdin.
    Add {
        #[command(flatten)]
        common: Common,
        /// Login name.
        #[arg(long)]
        username: String,
        /// Role (repeatable): admin, supervisor, agent, marketer, kb_editor.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Display name.
        #[arg(long)]
        display_name: Option<String>,
        /// Also create an agent record with these skills, e.g. "language:en=5,billing=3".
        #[arg(long)]
        agent_skills: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token for a user and print it once.
    Create {
        #[command(flatten)]
        common: Common,
        /// The user the token acts as.
        #[arg(long)]
        username: String,
        /// A name to recognise the token by.
        #[arg(long)]
        name: String,
    },
}

fn load(common: &Common) -> Result<Settings, String> {
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if let Some(b) = &common.bind {
        env.push(("SWITCHBOARD__HTTP__BIND".into(), format!("\"{b}\"")));
    }
    if let Some(d) = &common.data_dir {
        env.push(("SWITCHBOARD__DATABASE__DATA_DIR".into(), format!("\"{}\"", d.display())));
    }
    if let Some(u) = &common.database_url {
        env.push(("SWITCHBOARD__DATABASE__URL".into(), format!("\"{u}\"")));
    }
    Settings::load(common.config.as_deref(), env).map_err(|e| format!("configuration error: {e}"))
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn read_password() -> Result<String, String> {
    if let Ok(p) = std::env::var("SWITCHBOARD_PASSWORD") {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| e.to_string())?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        return Err("no password: set SWITCHBOARD_PASSWORD or pipe it on stdin".into());
    }
    Ok(p)
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve(c) => {
            let s = load(&c)?;
            let running = switchboard::start(s).await.map_err(|e| e.to_string())?;
            println!("Switchboard is running at {}", running.url());
            println!("  Agent inbox:     {}/", running.url());
            println!("  Chat widget demo: {}/chat-demo.html", running.url());
            wait_for_signal().await;
            println!("Shutting down…");
            running.stop().await;
        }
        Command::Migrate(c) => {
            let s = load(&c)?;
            // Dropping the database at the end of the arm stops an embedded cluster.
            let _db = switchboard::open_database(&s).await.map_err(|e| e.to_string())?;
            println!("Migrations applied.");
        }
        Command::Demo(c) => {
            let mut s = load(&c)?;
            // The demo always has the web chat channel, so the widget demo page works.
            if !s.channels.iter().any(|ch| ch.get("type").and_then(|t| t.as_str()) == Some("webchat")) {
                let mut t = toml::Table::new();
                t.insert("type".into(), toml::Value::String("webchat".into()));
                t.insert("name".into(), toml::Value::String("webchat".into()));
                s.channels.push(toml::Value::Table(t));
            }
            // ... and voice: a trunk number with the IVR, and the demo agents' phones.
            let voice = switchboard::demo::ensure_sip_channel(&mut s)?;
            let running = switchboard::start(s).await.map_err(|e| e.to_string())?;
            switchboard::demo::seed(&running.hub).await.map_err(|e| e.to_string())?;
            let phones = if voice.database_credentials {
                switchboard::demo::seed_phones(&running.hub, &voice.realm).await.map_err(|e| e.to_string())?
            } else {
                Vec::new()
            };
            let (mut udp, mut tcp) = (None, None);
            for _ in 0..100 {
                (udp, tcp) = (switchboard_voice::bound_addr(&voice.channel), switchboard_voice::bound_tcp_addr(&voice.channel));
                if udp.is_some() || tcp.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let url = running.url();
            println!();
            println!("Switchboard demo is running.");
            println!("  Agent inbox:          {url}/");
            println!("  Supervisor dashboard: {url}/dashboard.html");
            println!("  Chat widget demo:     {url}/chat-demo.html");
            println!("  API (OpenAPI):        {url}/api/openapi.json");
            println!();
            println!("Demo accounts (username / password / roles):");
            for u in switchboard::demo::DEMO_USERS {
                let roles: Vec<&str> = u.roles.iter().map(|r| r.as_str()).collect();
                let skills = u.skills.map(|s| s.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")).unwrap_or_default();
                println!("  {:<7} {:<16} {:<20} {}", u.username, u.password, roles.join(","), skills);
            }
            println!();
            match udp.or(tcp) {
                Some(addr) => {
                    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
                    let server = if addr.is_ipv6() { format!("[{host}]:{}", addr.port()) } else { format!("{host}:{}", addr.port()) };
                    let number = switchboard::demo::DEMO_NUMBER;
                    println!("Voice (SIP):");
                    let transports = match (udp, tcp) {
                        (Some(u), Some(t)) if u.port() == t.port() => "UDP and TCP".to_string(),
                        (Some(_), Some(t)) => format!("UDP; TCP on port {}", t.port()),
                        (Some(_), None) => "UDP".to_string(),
                        _ => "TCP".to_string(),
                    };
                    println!("  SIP server:   {server} ({transports}), realm \"{}\"", voice.realm);
                    if voice.added {
                        println!("  Trunk number: {number}, answered by the IVR (1 English, 2 Spanish), then the demo queues");
                        println!("  Call the IVR with a softphone (e.g. baresip or linphone) on this machine: sip:{number}@{server}");
                    }
                    if !phones.is_empty() {
                        println!("  Agent phones (SIP user / password; register as sip:<user>@{server}, then set the agent available in the inbox):");
                        for p in &phones {
                            println!("    {:<7} {}", p.sip_user, p.password);
                        }
                    }
                }
                None => println!("Voice (SIP): the channel `{}` did not start; see the log.", voice.channel),
            }
            println!();
            println!("Press Ctrl-C to stop.");
            wait_for_signal().await;
            println!("Shutting down…");
            running.stop().await;
        }
        Command::User { command: UserCommand::Add { common, username, roles, display_name, agent_skills } } => {
            let s = load(&common)?;
            let roles: Vec<Role> = roles.iter().map(|r| r.parse::<Role>()).collect::<Result<_, _>>()?;
            let skills: std::collections::BTreeMap<String, u8> = match &agent_skills {
                Some(spec) => spec
                    .split(',')
                    .filter(|p| !p.trim().is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').ok_or_else(|| format!("bad skill `{p}`: use name=level"))?;
                        let lvl: u8 = v.trim().parse().map_err(|_| format!("bad level in `{p}`"))?;
                        Ok((k.trim().to_string(), lvl))
                    })
                    .collect::<Result<_, String>>()?,
                None => Default::default(),
            };
            switchboard_core::skills::validate_skills(&skills)?;
            let password = read_password()?;
            let db = switchboard::open_database(&s).await.map_err(|e| e.to_string())?;
            let u = switchboard_core::auth::create_user(
                &db.pool,
                None,
                &username,
                display_name.as_deref().unwrap_or(&username),
                &password,
                &roles,
            )
            .await
            .map_err(|e| e.to_string())?;
            if agent_skills.is_some() {
                sqlx::query("insert into agents (user_id, name, skills) values ($1, $2, $3)")
                    .bind(u.id)
                    .bind(display_name.as_deref().unwrap_or(&username))
                    .bind(sqlx::types::Json(&skills))
                    .execute(&db.pool)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            println!("Created user {} ({}) with roles {}", u.username, u.id, u.roles.join(","));
        }
        Command::Crm { command: CrmCommand::Import { common, file } } => {
            let s = load(&common)?;
            let crm = switchboard_crm::Settings::from_toml(s.crm.clone()).map_err(|e| e.to_string())?;
            let f = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let db = switchboard::open_database(&s).await.map_err(|e| e.to_string())?;
            let report =
                switchboard_crm::import_csv_with(&db.pool, &crm, std::io::BufReader::new(f), |d, t| progress_bar("importing", d, t))
                    .await
                    .map_err(|e| e.to_string())?;
            eprintln!();
            println!("{} rows: {} created, {} updated, {} rejected", report.total, report.created, report.updated, report.rejected);
            for e in &report.errors {
                println!("  line {}: {}{}", e.line, e.field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default(), e.reason);
            }
        }
        Command::Reports { command: ReportsCommand::Rebuild { common, from, to, all } } => {
            use switchboard_core::reports::{interval, rollup, ReportSettings};
            let s = load(&common)?;
            let rs = ReportSettings::from_toml(s.reports.clone()).map_err(|e| e.to_string())?;
            let zone = rs.zone().map_err(|e| e.to_string())?;
            let db = switchboard::open_database(&s).await.map_err(|e| e.to_string())?;
            if all {
                rollup::reset(&db.pool, zone).await.map_err(|e| e.to_string())?;
                let total: i64 = sqlx::query_scalar("select coalesce(max(id), 0) from interaction_events")
                    .fetch_one(&db.pool)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut done = 0u64;
                let mut gaps = rollup::Gaps::default();
                for _ in 0..(total / rollup::BATCH + 100) {
                    let pass =
                        rollup::process_batch(&db.pool, zone, &mut gaps, std::time::Duration::ZERO).await.map_err(|e| e.to_string())?;
                    done += pass.events as u64;
                    progress_bar("rebuilding", done, total.max(0) as u64);
                    if pass.events == 0 && !pass.busy {
                        break;
                    }
                    if pass.busy {
                        // A running hub's worker holds the rollup lease: it rolls up too.
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
                gaps.release(&db.pool).await.map_err(|e| e.to_string())?;
                eprintln!();
                println!("{done} events applied.");
            } else if let (Some(from), Some(to)) = (from, to) {
                let (a, b) = (interval::local_day_start(from, zone), interval::local_day_start(to + chrono::Duration::days(1), zone));
                let r = rollup::rebuild(&db.pool, zone, a, b, |n| eprint!("\rreplayed {n} events")).await.map_err(|e| e.to_string())?;
                eprintln!();
                println!("Rebuilt {} .. {}: {} events replayed.", r.from, r.to, r.events);
            }
        }
        Command::Kb { command: KbCommand::Reindex { common } } => {
            let s = load(&common)?;
            let db = switchboard::open_database(&s).await.map_err(|e| e.to_string())?;
            let n = switchboard_kb::reindex(&db.pool, s.kb.clone(), |d, t| progress_bar("reindexing", d, t))
                .await
                .map_err(|e| e.to_string())?;
            eprintln!();
            println!("{n} articles indexed.");
        }
        Command::Agent { command: AgentCommand::SipPassword { common, username, realm } } => {
            let s = load(&common)?;
            let realm = match realm {
                Some(r) if !r.trim().is_empty() => r.trim().to_string(),
                Some(_) => return Err("--realm must not be empty".into()),
                None => switchboard::sip_realm(&s)?,
            };
            let password = read_password()?;
            switchboard_voice::adapter::check_sip_password(&password).map_err(|e| e.to_string())?;
            let db = switchboard::open_database(&s).await.map_err(|e| e.to_string())?;
            let agent: Option<uuid::Uuid> =
                sqlx::query_scalar("select a.id from agents a join users u on u.id = a.user_id where u.username = $1")
                    .bind(&username)
                    .fetch_optional(&db.pool)
                    .await
                    .map_err(|e| e.to_string())?;
            let agent = agent.ok_or_else(|| format!("no agent for user `{username}`"))?;
            let hub = switchboard_core::Hub::new(db.pool.clone(), s.core());
            let sip_user =
                switchboard_voice::adapter::set_sip_password_as(&hub, None, agent, &realm, &password).await.map_err(|e| e.to_string())?;
            println!("SIP password set for {username} (SIP user {sip_user}, realm {realm}).");
        }
        Command::Token { command: TokenCommand::Create { common, username, name } } => {
            let s = load(&common)?;
            let db = switchboard::open_database(&s).await.map_err(|e| e.to_string())?;
            let uid: Option<uuid::Uuid> = sqlx::query_scalar("select id from users where username = $1")
                .bind(&username)
                .fetch_optional(&db.pool)
                .await
                .map_err(|e| e.to_string())?;
            let uid = uid.ok_or_else(|| format!("no user `{username}`"))?;
            let (id, secret) = switchboard_core::auth::create_token(&db.pool, uid, &name, None).await.map_err(|e| e.to_string())?;
            println!("Token {id} for {username}:\n{secret}\n(store it now; it is not shown again)");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
