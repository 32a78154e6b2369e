//! Call and voicemail recordings after the call: served over HTTP to the people allowed
//! to hear them (supervisors, admins, the agent who handled the call) and erased with the
//! rest of a customer's personal data. A recording's file path is stored in the
//! interaction's metadata (`recording`) and in its `call_ended` / `voicemail_recorded`
//! events; it never leaves the server: clients get `/api/v1/recordings/{interaction_id}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use switchboard_core::api::{Access, ApiPath, RouteDoc};
use switchboard_core::auth::Caller;
use switchboard_core::privacy::{is_inside, Erased, PersonalDataEraser};
use switchboard_core::{CoreError, CoreResult, Hub, Role};
use uuid::Uuid;

const STAFF: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent];

/// The recording routes, for the OpenAPI document and the authorization table.
pub const ROUTES: &[RouteDoc] = &[RouteDoc {
    method: "GET",
    path: "/api/v1/recordings/{interaction_id}",
    access: Access::Roles(STAFF),
    tag: "voice",
    summary:
        "The call or voicemail recording of a voice interaction (audio/wav): supervisors and admins, or the agent who handled the call.",
}];

/// Where this voice channel writes recordings; only files inside these are served or
/// deleted, whatever a stored path says.
#[derive(Debug, Clone)]
pub struct RecordingStore {
    dirs: Vec<PathBuf>,
}

impl RecordingStore {
    /// The store over the channel's recording and voicemail directories.
    pub fn new(recordings_dir: &Path, voicemail_dir: &Path) -> Self {
        RecordingStore { dirs: vec![recordings_dir.to_path_buf(), voicemail_dir.to_path_buf()] }
    }

    fn owns(&self, path: &Path) -> bool {
        self.dirs.iter().any(|d| is_inside(d, path))
    }
}

/// The recording router.
pub fn router(store: Arc<RecordingStore>) -> Router<Hub> {
    Router::new().route("/api/v1/recordings/{interaction_id}", get(download)).layer(Extension(store))
}

#[tracing::instrument(skip(hub, store, caller), fields(user = %caller.username))]
async fn download(
    State(hub): State<Hub>,
    Extension(store): Extension<Arc<RecordingStore>>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> CoreResult<Response> {
    caller.require(STAFF)?;
    let row: Option<(String, Option<Uuid>, Option<String>)> =
        sqlx::query_as("select channel, agent_id, metadata->>'recording' from interactions where id = $1")
            .bind(id)
            .fetch_optional(hub.db())
            .await?;
    let (channel, agent, path) = row.ok_or(CoreError::NotFound("interaction"))?;
    if channel != "voice" {
        return Err(CoreError::NotFound("recording"));
    }
    if !caller.is_supervisor() {
        let Some(me) = caller.agent_id else { return Err(CoreError::Forbidden) };
        // The agent holding it now, or one who answered it before a transfer.
        let handled = agent == Some(me)
            || sqlx::query_scalar::<_, bool>(
                "select exists(select 1 from offers where interaction_id = $1 and agent_id = $2 and state in ('accepted', 'released'))",
            )
            .bind(id)
            .bind(me)
            .fetch_one(hub.db())
            .await?;
        if !handled {
            return Err(CoreError::Forbidden);
        }
    }
    let path = path.filter(|p| !p.is_empty()).map(PathBuf::from).ok_or(CoreError::NotFound("recording"))?;
    if !store.owns(&path) {
        // Another voice channel's directory (or a tampered row): not ours to serve.
        return Err(CoreError::NotFound("recording"));
    }
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(error) => {
            // Another node's disk, or erased.
            tracing::info!(%error, interaction_id = %id, "Recording file not on this node.");
            return Err(CoreError::NotFound("recording file"));
        }
    };
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"recording-{id}.wav\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(resp)
}

#[async_trait::async_trait]
impl PersonalDataEraser for RecordingStore {
    fn scope(&self) -> &str {
        "voice"
    }

    /// The recordings of the customer's voice interactions: every path their metadata or
    /// events name (a call bridged twice has two). The paths themselves go with the rows
    /// the CRM's erase scrubs.
    async fn erase_customer(&self, _hub: &Hub, tx: &mut sqlx::PgConnection, customer: Uuid) -> CoreResult<Erased> {
        let paths: Vec<String> = sqlx::query_scalar(
            "select distinct p from (
                 select i.metadata->>'recording' as p from interactions i where i.customer_id = $1 and i.channel = 'voice'
                 union all
                 select e.data->>'recording' from interaction_events e join interactions i on i.id = e.interaction_id
                  where i.customer_id = $1 and i.channel = 'voice'
             ) r where p is not null and p <> ''",
        )
        .bind(customer)
        .fetch_all(&mut *tx)
        .await?;
        let files: Vec<PathBuf> = paths.iter().map(PathBuf::from).filter(|p| self.owns(p)).collect();
        Ok(Erased { rows: 0, files })
    }
}
