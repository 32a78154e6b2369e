//! The embedded default database: a private PostgreSQL cluster in the data directory,
//! initialised and started with the PostgreSQL binaries installed on the machine.
//!
//! PostgreSQL refuses to run as root, so when the hub runs as root the cluster runs as
//! the `postgres` system user and the cluster directory is owned by it.

use crate::error::{CoreError, CoreResult};
use sqlx::postgres::PgConnectOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running embedded cluster; stopped by [`EmbeddedPostgres::stop`] or on drop.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    cluster_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    stopped: bool,
}

const DB_USER: &str = "switchboard";
const DB_NAME: &str = "switchboard";

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`.
pub fn find_bin_dir() -> CoreResult<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).ok_or_else(|| {
        CoreError::Internal(
            "PostgreSQL server binaries not found (looked for initdb and pg_ctl on PATH and under \
             /usr/lib/postgresql/*/bin). Install them: `apt-get install postgresql` on Debian/Ubuntu, \
             `dnf install postgresql-server` on Fedora, `brew install postgresql` on macOS; or set \
             database.url (SWITCHBOARD__DATABASE__URL) to an existing server."
                .into(),
        )
    })
}

/// The uid and gid the cluster runs as: `None` (the hub's own user) unless the hub runs as
/// root, then the `postgres` system user's.
pub fn cluster_owner() -> CoreResult<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
        _ => Err(CoreError::Internal(
            "running as root, and PostgreSQL refuses to run as root: create a `postgres` system user \
             (the Debian `postgresql` package does) or run Switchboard as an ordinary user"
                .into(),
        )),
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> CoreResult<()> {
    let io = |e: std::io::Error| CoreError::Internal(format!("chown {}: {e}", path.display()));
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io)?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io)? {
            chown_tree(&entry.map_err(io)?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn free_port() -> CoreResult<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| CoreError::Internal(format!("no free port: {e}")))?;
    Ok(l.local_addr().map_err(|e| CoreError::Internal(e.to_string()))?.port())
}

impl EmbeddedPostgres {
    /// Initialises (if needed) and starts the cluster under `data_dir/postgres`.
    pub async fn start(data_dir: &Path) -> CoreResult<EmbeddedPostgres> {
        let data_dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::start_blocking(&data_dir)).await.map_err(|e| CoreError::Internal(e.to_string()))?
    }

    fn start_blocking(data_dir: &Path) -> CoreResult<EmbeddedPostgres> {
        let bin_dir = find_bin_dir()?;
        let run_as = cluster_owner()?;
        std::fs::create_dir_all(data_dir).map_err(|e| CoreError::Internal(format!("create {}: {e}", data_dir.display())))?;
        let data_dir = data_dir.canonicalize().map_err(|e| CoreError::Internal(e.to_string()))?;
        let cluster_dir = data_dir.join("postgres");
        // Unix socket paths are limited to ~107 bytes; fall back to a short private dir.
        let mut socket_dir = data_dir.join("pg-socket");
        if socket_dir.as_os_str().len() > 80 {
            socket_dir = std::env::temp_dir().join(format!("sb-pg-{}", short_hash(&data_dir)));
        }
        std::fs::create_dir_all(&socket_dir).map_err(|e| CoreError::Internal(e.to_string()))?;
        if let Some((uid, gid)) = run_as {
            // The data dir itself must be traversable by the postgres user.
            std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid)).map_err(|e| CoreError::Internal(e.to_string()))?;
            let _ = std::fs::set_permissions(&data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        }
        let mut me = EmbeddedPostgres { bin_dir, cluster_dir, socket_dir, port: 0, run_as, stopped: false };
        if !me.cluster_dir.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&me.cluster_dir).map_err(|e| CoreError::Internal(e.to_string()))?;
            if let Some((uid, gid)) = run_as {
                chown_tree(&me.cluster_dir, uid, gid)?;
            }
            let out = me
                .command("initdb")
                .arg("-D")
                .arg(&me.cluster_dir)
                .args(["-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"])
                .output()
                .map_err(|e| CoreError::Internal(format!("initdb: {e}")))?;
            if !out.status.success() {
                return Err(CoreError::Internal(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr))));
            }
            tracing::info!(dir = %me.cluster_dir.display(), "Embedded PostgreSQL cluster initialised.");
        }
        // A cluster left running by a killed hub is reused.
        let pid_file = me.cluster_dir.join("postmaster.pid");
        if let Some(port) = running_port(&pid_file) {
            let status = me.command("pg_ctl").arg("status").arg("-D").arg(&me.cluster_dir).output();
            if matches!(status, Ok(ref s) if s.status.success()) {
                me.port = port;
                tracing::info!(port, "Embedded PostgreSQL already running; reusing it.");
                return Ok(me);
            }
        }
        me.port = free_port()?;
        let opts = format!("-k {} -p {} -c listen_addresses='' -c fsync=on -c max_connections=200", me.socket_dir.display(), me.port);
        let log = me.cluster_dir.join("server.log");
        let out = me
            .command("pg_ctl")
            .arg("start")
            .arg("-w")
            .args(["-t", "60"])
            .arg("-D")
            .arg(&me.cluster_dir)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(opts)
            .stdout(Stdio::null())
            .output()
            .map_err(|e| CoreError::Internal(format!("pg_ctl start: {e}")))?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(CoreError::Internal(format!(
                "embedded PostgreSQL failed to start: {}\n{tail}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        tracing::info!(port = me.port, socket = %me.socket_dir.display(), "Embedded PostgreSQL started.");
        Ok(me)
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin_dir.join(tool));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
            c.env("HOME", "/tmp");
        }
        c.current_dir("/");
        c
    }

    /// Connect options for the cluster's `switchboard` database.
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new().socket(&self.socket_dir).port(self.port).username(DB_USER).database(DB_NAME)
    }

    /// Connect options for the maintenance database (to create `switchboard`).
    pub fn admin_options(&self) -> PgConnectOptions {
        PgConnectOptions::new().socket(&self.socket_dir).port(self.port).username(DB_USER).database("postgres")
    }

    /// A URL form for display and for child processes.
    pub fn url(&self) -> String {
        format!("postgres://{DB_USER}@localhost:{}/{DB_NAME}?host={}", self.port, self.socket_dir.display())
    }

    /// Stops the cluster (fast shutdown: clients disconnected, data safe).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let r = self.command("pg_ctl").arg("stop").arg("-w").args(["-m", "fast"]).arg("-D").arg(&self.cluster_dir).output();
        match r {
            Ok(o) if o.status.success() => tracing::info!("Embedded PostgreSQL stopped."),
            Ok(o) => tracing::warn!(stderr = %String::from_utf8_lossy(&o.stderr), "Embedded PostgreSQL stop failed."),
            Err(e) => tracing::warn!(error = %e, "Embedded PostgreSQL stop failed."),
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn running_port(pid_file: &Path) -> Option<u16> {
    // postmaster.pid line 4 is the port (PostgreSQL's miscadmin.h LOCK_FILE_LINE_PORT).
    let text = std::fs::read_to_string(pid_file).ok()?;
    text.lines().nth(3)?.trim().parse().ok()
}

fn short_hash(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(p.as_os_str().as_encoded_bytes())[..6])
}
