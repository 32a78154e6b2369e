//! The file store: where recordings, chat attachments and email attachments live, behind
//! one trait so every node of a cluster reads what any node wrote.
//!
//! Two backends, chosen by `[files] backend`:
//! - `dir` (default): each kind of file in the directory its channel configures
//!   (`recordings_dir`, `attachments_dir`), as before; in a cluster that directory is a
//!   shared volume mounted at the same path on every node.
//! - `s3`: an S3-compatible object store (AWS S3, MinIO, Ceph RGW, …) through the
//!   `object_store` crate; every node reaches the same bucket and a channel's files live
//!   under a key prefix (`recordings/`, `attachments/`, …) instead of its directory.
//!
//! Files are never handed out by URL: the hub reads them through [`FileStore`] and serves
//! them through its own routes with their authorization.

use crate::config::ConfigError;
use crate::{CoreError, CoreResult};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Which backend stores files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilesBackend {
    /// The directories the channels configure (default).
    #[default]
    Dir,
    /// An S3-compatible object store.
    S3,
}

/// `[files]`: where recordings and attachments are stored.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSettings {
    /// `dir` (each channel's configured directory) or `s3` (an S3-compatible bucket).
    #[serde(default)]
    pub backend: FilesBackend,
    /// Bucket name (s3).
    #[serde(default)]
    pub bucket: String,
    /// Endpoint URL for a non-AWS store (`http://127.0.0.1:9000` for MinIO); empty for AWS.
    /// An `http://` endpoint is allowed as written (a private network).
    #[serde(default)]
    pub endpoint: String,
    /// Region (AWS needs the bucket's; most other stores accept anything).
    #[serde(default = "default_region")]
    pub region: String,
    /// Access key id; empty: the standard `AWS_ACCESS_KEY_ID` environment variable (or an
    /// instance/container role).
    #[serde(default)]
    pub access_key_id: String,
    /// Secret access key; empty: `AWS_SECRET_ACCESS_KEY`. Prefer the environment
    /// (`SWITCHBOARD__FILES__SECRET_ACCESS_KEY` or `AWS_SECRET_ACCESS_KEY`) to the file.
    #[serde(default)]
    pub secret_access_key: Option<SecretString>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted
    /// (`bucket.endpoint/key`): MinIO and most self-hosted stores want `true`.
    #[serde(default)]
    pub path_style: bool,
    /// A prefix before every key (several deployments sharing one bucket), e.g. `prod/`.
    #[serde(default)]
    pub prefix: String,
}

fn default_region() -> String {
    "us-east-1".into()
}

impl Default for FilesSettings {
    fn default() -> Self {
        FilesSettings {
            backend: FilesBackend::Dir,
            bucket: String::new(),
            endpoint: String::new(),
            region: default_region(),
            access_key_id: String::new(),
            secret_access_key: None,
            path_style: false,
            prefix: String::new(),
        }
    }
}

impl fmt::Debug for FilesSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilesSettings")
            .field("backend", &self.backend)
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl FilesSettings {
    /// Checks the settings (and, for s3, that a client can be built from them).
    pub fn validate(&self) -> Result<(), ConfigError> {
        FileBackend::from_settings(self).map(|_| ())
    }
}

/// The configured backend, built once per hub.
#[derive(Clone)]
pub enum FileBackend {
    /// Channel directories.
    Dir,
    /// One S3 client for every channel, with the deployment's key prefix.
    S3 {
        /// The client.
        client: Arc<AmazonS3>,
        /// Bucket (for logs).
        bucket: String,
        /// Key prefix before the channel's (`prod/`), possibly empty.
        prefix: String,
    },
}

impl fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileBackend::Dir => f.write_str("dir"),
            FileBackend::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl FileBackend {
    /// Builds the backend (no network traffic: the first request connects).
    pub fn from_settings(s: &FilesSettings) -> Result<FileBackend, ConfigError> {
        match s.backend {
            FilesBackend::Dir => Ok(FileBackend::Dir),
            FilesBackend::S3 => {
                let err = |key: &str, reason: String| ConfigError { key: format!("files.{key}"), reason };
                if s.bucket.trim().is_empty() {
                    return Err(err("bucket", "required with backend = \"s3\"".into()));
                }
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(s.bucket.trim())
                    .with_region(&s.region)
                    .with_virtual_hosted_style_request(!s.path_style);
                if !s.endpoint.is_empty() {
                    if !(s.endpoint.starts_with("http://") || s.endpoint.starts_with("https://")) {
                        return Err(err("endpoint", format!("`{}` is not an http(s) URL", s.endpoint)));
                    }
                    b = b.with_endpoint(s.endpoint.trim_end_matches('/')).with_allow_http(s.endpoint.starts_with("http://"));
                }
                if !s.access_key_id.is_empty() {
                    b = b.with_access_key_id(&s.access_key_id);
                }
                if let Some(secret) = s.secret_access_key.as_ref().filter(|k| !k.expose_secret().is_empty()) {
                    b = b.with_secret_access_key(secret.expose_secret());
                }
                let client = b.build().map_err(|e| err("backend", format!("cannot build the S3 client: {e}")))?;
                let prefix = s.prefix.trim_matches('/').to_string();
                Ok(FileBackend::S3 { client: Arc::new(client), bucket: s.bucket.trim().to_string(), prefix })
            }
        }
    }

    /// The store of one kind of file: `dir` for the directory backend, `prefix` (e.g.
    /// `attachments`) under the bucket for s3.
    pub fn store(&self, dir: &Path, prefix: &str) -> Arc<dyn FileStore> {
        match self {
            FileBackend::Dir => Arc::new(DirStore::new(dir)),
            FileBackend::S3 { client, bucket, prefix: base } => {
                let prefix =
                    [base.as_str(), prefix.trim_matches('/')].iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join("/");
                Arc::new(S3Store { client: client.clone(), bucket: bucket.clone(), prefix })
            }
        }
    }
}

/// A file read from the store: its bytes, or a stream of them with the total size.
pub struct FileBody {
    /// Size of the whole file (not of the range).
    pub size: u64,
    /// The requested bytes (the whole file, or the range).
    pub stream: BoxStream<'static, CoreResult<Bytes>>,
}

impl FileBody {
    /// Collects the stream.
    pub async fn bytes(mut self) -> CoreResult<Bytes> {
        let mut out = Vec::new();
        while let Some(chunk) = self.stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(out))
    }
}

/// A `Range` header that starts past the end of the file (answered 416).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// The byte range a `Range` header asks for in a file of `size` bytes: `Ok(None)` for the
/// whole file (no header, or one this server answers in full: several ranges, another
/// unit).
pub fn requested_range(header: Option<&str>, size: u64) -> Result<Option<Range<u64>>, Unsatisfiable> {
    let Some(spec) = header.map(str::trim).and_then(|h| h.strip_prefix("bytes=")) else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else { return Ok(None) };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>(), b.parse::<u64>()) {
        // bytes=first-last
        (Ok(first), Ok(last)) if first <= last => first..last.saturating_add(1).min(size),
        // bytes=first-
        (Ok(first), Err(_)) if b.is_empty() => first..size,
        // bytes=-suffix
        (Err(_), Ok(suffix)) if a.is_empty() && suffix > 0 => size.saturating_sub(suffix)..size,
        _ => return Ok(None),
    };
    if range.start >= size {
        return Err(Unsatisfiable);
    }
    Ok(Some(range))
}

/// Serves `key` as an HTTP response with `content_type`, streamed, honouring a single
/// `Range` (206 with `Content-Range`, 416 when unsatisfiable) so a browser's audio player
/// can seek; `None` when there is no such file. Caching and disposition headers are the
/// caller's.
pub async fn serve(
    store: &dyn FileStore,
    key: &str,
    range_header: Option<&str>,
    content_type: &str,
) -> CoreResult<Option<axum::response::Response>> {
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    let Some(size) = store.size(key).await? else { return Ok(None) };
    let range = match requested_range(range_header, size) {
        Ok(r) => r,
        Err(Unsatisfiable) => {
            let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(Some(resp));
        }
    };
    let Some(body) = store.get(key, range.clone()).await? else { return Ok(None) };
    let stream = body.stream.map(|chunk| chunk.map_err(std::io::Error::other));
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let len = match &range {
        Some(r) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end - 1)) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r.end - r.start
        }
        None => size,
    };
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(Some(resp))
}

/// Where one kind of file lives (a channel's recordings, its attachments). Keys are
/// relative names (`<sha256>`, `<call>.wav`): letters, digits, `.`, `_`, `-` and `/`, no
/// `..` component; anything else is refused before it reaches a disk or a bucket.
#[async_trait]
pub trait FileStore: Send + Sync + fmt::Debug + 'static {
    /// Stores `bytes` under `key`, replacing any file there. A reader never sees a
    /// partial file.
    async fn put(&self, key: &str, bytes: Bytes) -> CoreResult<()>;
    /// Stores the local file `path` under `key` (a finished recording). For the directory
    /// backend, when `path` already is the key's file, nothing is copied.
    async fn put_file(&self, key: &str, path: &Path) -> CoreResult<()>;
    /// Reads `key`, or the byte `range` of it; `None` when there is no such file.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> CoreResult<Option<FileBody>>;
    /// Deletes `key`; a missing file is not an error.
    async fn delete(&self, key: &str) -> CoreResult<()>;
    /// Whether `key` exists.
    async fn exists(&self, key: &str) -> CoreResult<bool> {
        Ok(self.size(key).await?.is_some())
    }
    /// The size of `key` in bytes; `None` when there is no such file.
    async fn size(&self, key: &str) -> CoreResult<Option<u64>>;
    /// Whether files live on this node's disk (the directory backend): a local spool
    /// file then is the stored file itself.
    fn is_local(&self) -> bool;
}

impl dyn FileStore {
    /// Reads the whole of `key`; `None` when there is no such file.
    pub async fn read(&self, key: &str) -> CoreResult<Option<Bytes>> {
        match self.get(key, None).await? {
            Some(body) => Ok(Some(body.bytes().await?)),
            None => Ok(None),
        }
    }
}

/// A file to delete from a store (after an erase commits).
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// The store.
    pub store: Arc<dyn FileStore>,
    /// The file's key.
    pub key: String,
}

/// Whether `key` is a safe relative name.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 512
        && !key.starts_with('/')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        && key.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fn check_key(key: &str) -> CoreResult<()> {
    if valid_key(key) {
        Ok(())
    } else {
        Err(CoreError::Internal(format!("invalid file key `{}`", key.escape_debug())))
    }
}

fn io_err(what: &str, e: std::io::Error) -> CoreError {
    CoreError::Internal(format!("file store {what}: {e}"))
}

/// Files in a directory (`<dir>/<key>`), written to a temporary name and renamed.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// The store over `dir` (created on first write).
    pub fn new(dir: &Path) -> Self {
        DirStore { dir: dir.to_path_buf() }
    }

    fn path(&self, key: &str) -> CoreResult<PathBuf> {
        check_key(key)?;
        Ok(self.dir.join(key))
    }

    async fn parent(&self, path: &Path) -> CoreResult<()> {
        let parent = path.parent().unwrap_or(&self.dir);
        tokio::fs::create_dir_all(parent).await.map_err(|e| io_err("directory", e))
    }

    fn tmp(path: &Path) -> PathBuf {
        let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        path.with_file_name(name)
    }
}

#[async_trait]
impl FileStore for DirStore {
    async fn put(&self, key: &str, bytes: Bytes) -> CoreResult<()> {
        let path = self.path(key)?;
        self.parent(&path).await?;
        let tmp = Self::tmp(&path);
        tokio::fs::write(&tmp, &bytes).await.map_err(|e| io_err("write", e))?;
        tokio::fs::rename(&tmp, &path).await.map_err(|e| io_err("write", e))
    }

    async fn put_file(&self, key: &str, local: &Path) -> CoreResult<()> {
        let path = self.path(key)?;
        if crate::privacy::is_inside(&self.dir, local) && path == local {
            return Ok(());
        }
        self.parent(&path).await?;
        let tmp = Self::tmp(&path);
        tokio::fs::copy(local, &tmp).await.map_err(|e| io_err("copy", e))?;
        tokio::fs::rename(&tmp, &path).await.map_err(|e| io_err("copy", e))
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> CoreResult<Option<FileBody>> {
        let path = self.path(key)?;
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", e)),
        };
        let size = f.metadata().await.map_err(|e| io_err("read", e))?.len();
        let data = match range {
            None => {
                let mut v = Vec::with_capacity(size as usize);
                f.read_to_end(&mut v).await.map_err(|e| io_err("read", e))?;
                v
            }
            Some(r) => {
                let (start, end) = (r.start.min(size), r.end.min(size));
                f.seek(std::io::SeekFrom::Start(start)).await.map_err(|e| io_err("read", e))?;
                let mut v = vec![0; (end.saturating_sub(start)) as usize];
                f.read_exact(&mut v).await.map_err(|e| io_err("read", e))?;
                v
            }
        };
        Ok(Some(FileBody { size, stream: futures::stream::once(async move { Ok(Bytes::from(data)) }).boxed() }))
    }

    async fn delete(&self, key: &str) -> CoreResult<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("delete", e)),
            _ => Ok(()),
        }
    }

    async fn size(&self, key: &str) -> CoreResult<Option<u64>> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", e)),
        }
    }

    fn is_local(&self) -> bool {
        true
    }
}

/// Part size of multipart uploads (and the largest file sent in one PUT); S3 wants parts
/// of at least 5 MiB but the last.
pub const S3_PART: usize = 8 * 1024 * 1024;

/// Files as objects `<prefix>/<key>` in an S3-compatible bucket.
pub struct S3Store {
    client: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

impl S3Store {
    fn path(&self, key: &str) -> CoreResult<ObjectPath> {
        check_key(key)?;
        let full = if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) };
        ObjectPath::parse(full).map_err(|e| CoreError::Internal(format!("invalid file key: {e}")))
    }
}

fn s3_err(what: &str, e: object_store::Error) -> CoreError {
    CoreError::Internal(format!("object store {what}: {e}"))
}

#[async_trait]
impl FileStore for S3Store {
    async fn put(&self, key: &str, bytes: Bytes) -> CoreResult<()> {
        let path = self.path(key)?;
        self.client.put(&path, PutPayload::from_bytes(bytes)).await.map_err(|e| s3_err("put", e))?;
        Ok(())
    }

    /// Streams the file up: one PUT up to [`S3_PART`] bytes, a multipart upload of
    /// [`S3_PART`]-sized parts (two in flight) above it, so an hour-long stereo recording
    /// (~115 MB) neither sits in memory whole nor hangs on one request. A failed multipart
    /// upload is aborted (no parts left behind in the bucket).
    async fn put_file(&self, key: &str, local: &Path) -> CoreResult<()> {
        use tokio::io::AsyncWriteExt;
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(local).await.map_err(|e| io_err("read", e))?;
        let store: Arc<dyn ObjectStore> = self.client.clone();
        let mut up = object_store::buffered::BufWriter::with_capacity(store, path, S3_PART).with_max_concurrency(2);
        let copied = match tokio::io::copy(&mut file, &mut up).await {
            Ok(_) => up.shutdown().await,
            Err(e) => Err(e),
        };
        if let Err(e) = copied {
            let _ = up.abort().await;
            return Err(CoreError::Internal(format!("object store upload of {key}: {e}")));
        }
        Ok(())
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> CoreResult<Option<FileBody>> {
        let path = self.path(key)?;
        let opts = GetOptions { range: range.map(GetRange::Bounded), ..Default::default() };
        match self.client.get_opts(&path, opts).await {
            Ok(r) => {
                let size = r.meta.size;
                let stream = r.into_stream().map(|c| c.map_err(|e| s3_err("get", e))).boxed();
                Ok(Some(FileBody { size, stream }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_err("get", e)),
        }
    }

    async fn delete(&self, key: &str) -> CoreResult<()> {
        match self.client.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_err("delete", e)),
        }
    }

    async fn size(&self, key: &str) -> CoreResult<Option<u64>> {
        match self.client.head(&self.path(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_err("head", e)),
        }
    }

    fn is_local(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_relative() {
        assert!(valid_key("0123abcdef"));
        assert!(valid_key("call-1.wav"));
        assert!(valid_key("a/b.wav"));
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "a b", "a\\b", "./a"] {
            assert!(!valid_key(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn dir_store_round_trip_and_ranges() {
        let dir = std::env::temp_dir().join(format!("sb-files-{}", uuid::Uuid::new_v4()));
        let s: Arc<dyn FileStore> = Arc::new(DirStore::new(&dir));
        assert!(!s.exists("k").await.unwrap());
        assert!(s.read("k").await.unwrap().is_none());
        s.put("k", Bytes::from_static(b"hello world")).await.unwrap();
        assert!(s.exists("k").await.unwrap());
        assert_eq!(s.read("k").await.unwrap().unwrap(), Bytes::from_static(b"hello world"));
        let part = s.get("k", Some(6..11)).await.unwrap().unwrap();
        assert_eq!(part.size, 11);
        assert_eq!(part.bytes().await.unwrap(), Bytes::from_static(b"world"));
        // A local file already at its key is not copied; another is.
        s.put_file("k", &dir.join("k")).await.unwrap();
        let other = dir.join("spool.wav");
        std::fs::write(&other, b"wav").unwrap();
        s.put_file("rec.wav", &other).await.unwrap();
        assert_eq!(s.read("rec.wav").await.unwrap().unwrap(), Bytes::from_static(b"wav"));
        s.delete("k").await.unwrap();
        s.delete("k").await.unwrap();
        assert!(!s.exists("k").await.unwrap());
        assert!(s.put("../escape", Bytes::new()).await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn s3_settings_are_checked() {
        let s = FilesSettings { backend: FilesBackend::S3, ..Default::default() };
        assert_eq!(s.validate().unwrap_err().key, "files.bucket");
        let s = FilesSettings { backend: FilesBackend::S3, bucket: "b".into(), endpoint: "localhost:9000".into(), ..Default::default() };
        assert_eq!(s.validate().unwrap_err().key, "files.endpoint");
        let s = FilesSettings {
            backend: FilesBackend::S3,
            bucket: "b".into(),
            endpoint: "http://127.0.0.1:9000".into(),
            path_style: true,
            access_key_id: "k".into(),
            secret_access_key: Some(SecretString::from("s".to_string())),
            ..Default::default()
        };
        let b = FileBackend::from_settings(&s).unwrap();
        assert_eq!(format!("{:?}", b.store(Path::new("/x"), "attachments")), "s3://b/attachments");
        assert!(!format!("{s:?}").contains("\"s\""));
    }
}

#[cfg(test)]
mod range_tests {
    use super::{requested_range, Unsatisfiable};

    #[test]
    fn range_headers() {
        assert_eq!(requested_range(None, 100), Ok(None));
        assert_eq!(requested_range(Some("bytes=0-9"), 100), Ok(Some(0..10)));
        assert_eq!(requested_range(Some("bytes=90-"), 100), Ok(Some(90..100)));
        assert_eq!(requested_range(Some("bytes=-10"), 100), Ok(Some(90..100)));
        assert_eq!(requested_range(Some("bytes=50-500"), 100), Ok(Some(50..100)));
        assert_eq!(requested_range(Some("bytes=-500"), 100), Ok(Some(0..100)));
        assert_eq!(requested_range(Some("bytes=100-"), 100), Err(Unsatisfiable));
        assert_eq!(requested_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(requested_range(Some("items=0-1"), 100), Ok(None));
        assert_eq!(requested_range(Some("bytes=9-3"), 100), Ok(None));
        assert_eq!(requested_range(Some("bytes=x-y"), 100), Ok(None));
        assert_eq!(requested_range(Some("bytes=-0"), 100), Ok(None));
    }
}
