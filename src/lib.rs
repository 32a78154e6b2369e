//! Wiring of the `switchboard` binary: open the database (or start the embedded one),
//! migrate, build the hub, start the event listener, the router, the outbox worker and
//! every configured channel adapter, mount every module's HTTP router, serve until told
//! to stop.

pub mod demo;
pub mod settings;

use axum::Router;
use settings::Settings;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use switchboard_core::adapter::{AdapterRegistry, ChannelAdapter, Shutdown};
use switchboard_core::db::Database;
use switchboard_core::{CoreError, CoreResult, Hub};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The registry of every channel adapter kind compiled into this binary.
pub fn registry() -> AdapterRegistry {
    let mut r = AdapterRegistry::new();
    switchboard_chat::register(&mut r);
    switchboard_email::register(&mut r);
    switchboard_sms::register(&mut r);
    switchboard_voice::register(&mut r);
    r
}

/// The digest realm of the configured `sip` channel's registrar (the default realm when
/// there is none); an error when several `sip` channels disagree.
pub fn sip_realm(settings: &Settings) -> Result<String, String> {
    let mut realms = std::collections::BTreeSet::new();
    for table in &settings.channels {
        if table.get("type").and_then(|t| t.as_str()) != Some(switchboard_voice::adapter::KIND) {
            continue;
        }
        let (_, config) = switchboard_voice::adapter::parse_table(table.clone()).map_err(|e| format!("sip channel: {e}"))?;
        realms.insert(config.registrar.realm);
    }
    match realms.len() {
        0 => Ok(switchboard_voice::config::RegistrarConfig::default().realm),
        1 => Ok(realms.into_iter().next().unwrap_or_default()),
        _ => Err(format!("the sip channels use several realms ({}); give --realm", realms.into_iter().collect::<Vec<_>>().join(", "))),
    }
}

/// A running hub.
pub struct Running {
    /// The hub handle.
    pub hub: Hub,
    /// The HTTP address actually bound.
    pub addr: SocketAddr,
    /// The database (and embedded cluster, if any).
    pub database: Database,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Base URL of the HTTP server.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops every task, then the embedded database.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), t).await;
        }
        self.database.pool.close().await;
        if let Some(mut pg) = self.database.embedded.take() {
            let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
        }
    }

    /// A shutdown receiver for extra tasks.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

fn web_dir(configured: &PathBuf) -> PathBuf {
    if configured.is_absolute() || configured.exists() {
        return configured.clone();
    }
    let beside_source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(configured);
    if beside_source.exists() {
        beside_source
    } else {
        configured.clone()
    }
}

/// Opens the database and applies migrations.
pub async fn open_database(settings: &Settings) -> CoreResult<Database> {
    let db = Database::open(&settings.database).await?;
    db.migrate().await?;
    Ok(db)
}

/// Starts everything and returns once the HTTP listener is bound and the event listener
/// is subscribed.
pub async fn start(settings: Settings) -> CoreResult<Running> {
    let database = open_database(&settings).await?;
    start_with(settings, database).await
}

/// Starts everything on an already opened database.
pub async fn start_with(settings: Settings, database: Database) -> CoreResult<Running> {
    let hub = Hub::new(database.pool.clone(), settings.core());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // Event listener first, so nothing committed after start is missed.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tasks.push(tokio::spawn(hub.bus().clone().run_listener(database.pool.clone(), shutdown_rx.clone(), ready_tx)));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), ready_rx).await;

    // Channel adapters.
    let registry = registry();
    let mut adapters: Vec<Arc<dyn ChannelAdapter>> = Vec::new();
    for (i, table) in settings.channels.iter().enumerate() {
        let a = registry.build(i, table.clone()).map_err(|e| CoreError::Internal(e.to_string()))?;
        hub.add_adapter(a.clone());
        adapters.push(a);
    }

    let mut app: Router<Hub> = switchboard_core::api::router(&hub);
    for a in &adapters {
        if let Some(r) = a.http_router() {
            app = app.merge(r);
        }
    }
    // Modules: the CRM answers "who is this?" for ingest; the KB feeds search.
    app = app.merge(switchboard_crm::start(&hub, settings.crm.clone(), shutdown_rx.clone()).await?);
    app = app.merge(switchboard_kb::start(&hub, settings.kb.clone(), shutdown_rx.clone()).await?);
    app = app.merge(switchboard_core::reports::start(&hub, settings.reports.clone(), shutdown_rx.clone()).await?);
    let static_dir = web_dir(&settings.http.web_dir);
    let app = app
        .fallback_service(tower_http::services::ServeDir::new(static_dir).append_index_html_on_directories(true))
        .layer(axum::middleware::from_fn_with_state(hub.clone(), switchboard_core::api::authorize))
        .layer(axum::middleware::from_fn_with_state(hub.clone(), count_requests))
        .with_state(hub.clone());

    let listener = tokio::net::TcpListener::bind(&settings.http.bind)
        .await
        .map_err(|e| CoreError::Internal(format!("cannot listen on {}: {e}", settings.http.bind)))?;
    let addr = listener.local_addr().map_err(|e| CoreError::Internal(e.to_string()))?;
    // Chat and stream frames are small writes in quick succession (an entry, then its
    // ack): without TCP_NODELAY the second waits for the peer's delayed ACK (~40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "Could not set TCP_NODELAY.");
        }
    });
    let mut srv_shutdown = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let r = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = srv_shutdown.wait_for(|v| *v).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server failed.");
        }
    }));

    if settings.router.enabled {
        tasks.push(tokio::spawn(switchboard_core::router::run(hub.clone(), database.options.clone(), shutdown_rx.clone())));
    }
    tasks.push(tokio::spawn(switchboard_core::outbox::run_worker(hub.clone(), shutdown_rx.clone())));
    tasks.push(tokio::spawn(switchboard_core::db::watch_primary(
        settings.database.url.clone(),
        database.pool.clone(),
        shutdown_rx.clone(),
    )));
    let internal_url = if settings.cluster.internal_url.trim().is_empty() {
        format!("http://{addr}")
    } else {
        settings.cluster.internal_url.trim().to_string()
    };
    tasks.push(tokio::spawn(switchboard_core::cluster::run(hub.clone(), internal_url, settings.cluster.clone(), shutdown_rx.clone())));
    tasks.push(tokio::spawn(hub.clone().run_assignment_dispatch(shutdown_rx.clone())));
    for a in adapters {
        let hub = hub.clone();
        let sd = Shutdown(shutdown_rx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = a.run(hub, sd).await {
                tracing::error!(adapter = a.name(), error = %e, "Channel adapter stopped with an error.");
            }
        }));
    }
    tracing::info!(%addr, "Switchboard is serving.");
    Ok(Running { hub, addr, database, shutdown, tasks })
}

async fn count_requests(
    axum::extract::State(hub): axum::extract::State<Hub>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let resp = next.run(req).await;
    let m = hub.metrics();
    m.http_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if resp.status().is_server_error() {
        m.http_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    resp
}
