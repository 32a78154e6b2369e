//! Module (skeleton; being built).
use switchboard_core::{CoreResult, Hub};

/// Starts the module: reads its config section, wires itself into the hub, spawns its
/// background tasks, and returns its HTTP router.
pub async fn start(_hub: &Hub, _config: Option<toml::Value>, _shutdown: tokio::sync::watch::Receiver<bool>) -> CoreResult<axum::Router<Hub>> {
    Ok(axum::Router::new())
}
