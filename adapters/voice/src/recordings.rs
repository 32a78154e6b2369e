//! Call and voicemail recordings after the call: served over HTTP to the people allowed
//! to hear them (supervisors, admins, the agent who handled the call) and erased with the
//! rest of a customer's personal data. A recording's file path is stored in the
//! interaction's metadata (`recording`) and in its `call_ended` / `voicemail_recorded`
//! events; it never leaves the server: clients get `/api/v1/recordings/{interaction_id}`.
//!
//! A recording is written to the channel's directory while the call runs, then published
//! to the hub's file store under its file name ([`RecordingStore::publish`]): with the
//! `dir` backend the file already is in place and its path is kept; with `s3` it is
//! uploaded (to `recordings/` or `voicemail/`), the local spool file removed and the
//! reference kept is `store:recordings/<file>`, which any node resolves.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use switchboard_core::api::{Access, ApiPath, RouteDoc};
use switchboard_core::auth::Caller;
use switchboard_core::files::{valid_key, FileStore};
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
    /// Each directory and its key prefix in an object store.
    dirs: Vec<(PathBuf, &'static str)>,
}

impl RecordingStore {
    /// The store over the channel's recording and voicemail directories.
    pub fn new(recordings_dir: &Path, voicemail_dir: &Path) -> Self {
        RecordingStore { dirs: vec![(recordings_dir.to_path_buf(), "recordings"), (voicemail_dir.to_path_buf(), "voicemail")] }
    }

    /// The store and key holding the recording a stored reference names, if it is one of
    /// ours: a path inside one of the directories, or `store:<prefix>/<key>` for a
    /// recording published to an object store (any node resolves that one).
    pub fn locate(&self, hub: &Hub, reference: &Path) -> Option<(Arc<dyn FileStore>, String)> {
        if let Some(r) = reference.to_str().and_then(|r| r.strip_prefix(STORE_SCHEME)) {
            let (prefix, key) = r.split_once('/')?;
            let (dir, prefix) = self.dirs.iter().find(|(_, p)| *p == prefix)?;
            return valid_key(key).then(|| (hub.file_store(dir, prefix), key.to_string()));
        }
        let (dir, prefix) =
            self.dirs.iter().find(|(d, _)| is_inside(d, reference) && reference.parent().is_some_and(|p| same_dir(p, d)))?;
        let key = reference.file_name()?.to_str().filter(|k| valid_key(k))?.to_string();
        Some((hub.file_store(dir, prefix), key))
    }

    /// Moves a finished recording from its spool file into the store and returns the
    /// reference to keep in the interaction: for the directory backend the file already
    /// is in place and the reference is its path; for an object store it is uploaded, the
    /// spool file removed, and the reference is `store:<prefix>/<key>`.
    pub async fn publish(&self, hub: &Hub, path: &Path) -> CoreResult<String> {
        let Some((store, key)) = self.locate(hub, path) else {
            return Err(CoreError::Internal(format!("recording {} is outside the recording directories", path.display())));
        };
        if store.is_local() {
            return Ok(path.display().to_string());
        }
        let prefix = self.dirs.iter().find(|(d, _)| is_inside(d, path)).map(|(_, p)| *p).unwrap_or("recordings");
        store.put_file(&key, path).await?;
        if let Err(error) = tokio::fs::remove_file(path).await {
            tracing::warn!(%error, path = %path.display(), "Uploaded recording's spool file not removed.");
        }
        tracing::info!(store = ?store, %key, "Recording stored.");
        Ok(format!("{STORE_SCHEME}{prefix}/{key}"))
    }
}

/// The reference scheme of a recording kept in an object store.
const STORE_SCHEME: &str = "store:";

/// Whether two directories are the same (made absolute against the working directory).
fn same_dir(a: &Path, b: &Path) -> bool {
    let abs = |p: &Path| if p.is_absolute() { Some(p.to_path_buf()) } else { std::env::current_dir().ok().map(|c| c.join(p)) };
    let strip = |p: &PathBuf| p.components().collect::<PathBuf>();
    matches!((abs(a), abs(b)), (Some(x), Some(y)) if strip(&x) == strip(&y))
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
    headers: axum::http::HeaderMap,
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
    // Another voice channel's directory (or a tampered row): not ours to serve.
    let (files, key) = store.locate(&hub, &path).ok_or(CoreError::NotFound("recording"))?;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let Some(mut resp) = switchboard_core::files::serve(files.as_ref(), &key, range, "audio/wav").await? else {
        // Erased, or on another node's disk (a directory that is not shared).
        tracing::info!(interaction_id = %id, store = ?files, %key, "Recording file not found.");
        return Err(CoreError::NotFound("recording file"));
    };
    let h = resp.headers_mut();
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
    async fn erase_customer(&self, hub: &Hub, tx: &mut sqlx::PgConnection, customer: Uuid) -> CoreResult<Erased> {
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
        let files = paths
            .iter()
            .filter_map(|p| self.locate(hub, Path::new(p)))
            .map(|(store, key)| switchboard_core::files::StoredFile { store, key })
            .collect();
        Ok(Erased { rows: 0, files })
    }
}
