//! The embedded default database: a private PostgreSQL cluster in the data directory,
//! initialised and started with the PostgreSQL binaries installed on the machine.
//!
//! PostgreSQL refuses to run as root, so when the hub runs as root the cluster runs as
//! the `postgres` system user and the cluster directory is owned by it. When that user
//! cannot reach the data directory (it lies under a 0700 directory such as `/root`), the
//! cluster lives in `/var/lib/switchboard/<hash of the data directory>` instead, and the
//! data directory records where (`postgres.location`).
//!
//! Only the hub gets in: the server listens on a Unix socket only, in a directory of mode
//! 0700 owned by the cluster owner; every login needs a SCRAM password; the superuser
//! (`postgres`) and the hub's role (`switchboard`, not a superuser, owner of the
//! `switchboard` database) have generated passwords kept in `postgres-credentials.json`
//! (mode 0600, the cluster owner's). `pg_hba.conf` is rewritten at every start. A cluster
//! made by an older version (trust authentication, the hub as bootstrap superuser) is
//! upgraded in place on its first start.

use crate::error::{CoreError, CoreResult};
use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running embedded cluster; stopped by [`EmbeddedPostgres::stop`] or on drop.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    home: PathBuf,
    cluster_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    credentials: Credentials,
    /// The cluster still has an older version's trust authentication.
    legacy: bool,
    stopped: bool,
}

/// The hub's role: not a superuser; owns the hub's database.
pub const HUB_ROLE: &str = "switchboard";
/// The hub's database.
pub const DB_NAME: &str = "switchboard";
/// The cluster's superuser.
pub const ADMIN_ROLE: &str = "postgres";
/// What an older version's bootstrap superuser (then named `switchboard`) is renamed to.
const OLD_BOOTSTRAP_ROLE: &str = "switchboard_bootstrap";
/// The file of generated passwords, in the cluster's home directory.
pub const CREDENTIALS_FILE: &str = "postgres-credentials.json";
/// The file in the data directory naming the cluster's home when it is elsewhere.
pub const LOCATION_FILE: &str = "postgres.location";
/// Where a root-run hub keeps clusters the `postgres` user could not reach in place.
const RELOCATED_ROOT: &str = "/var/lib/switchboard";
/// First line of the `pg_hba.conf` this module writes.
const HBA_MARKER: &str = "# Written by Switchboard at every start of the embedded cluster; edits are overwritten.";

/// The generated passwords of the cluster's two roles.
#[derive(Clone, Serialize, Deserialize)]
struct Credentials {
    admin_password: String,
    hub_password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

impl Credentials {
    fn generate() -> Credentials {
        let mut rng = rand::thread_rng();
        Credentials { admin_password: Alphanumeric.sample_string(&mut rng, 32), hub_password: Alphanumeric.sample_string(&mut rng, 32) }
    }
}

fn internal(what: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(what.to_string())
}

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

/// The directory holding the cluster of `data_dir` (its `postgres/` cluster directory,
/// socket directory and credentials): `data_dir` itself, or, when the hub runs as root and
/// the `postgres` user cannot reach `data_dir`, a directory under `/var/lib/switchboard`
/// recorded in `data_dir/postgres.location`.
pub fn cluster_home(data_dir: &Path) -> CoreResult<PathBuf> {
    let data_dir = data_dir.canonicalize().map_err(|e| internal(format!("{}: {e}", data_dir.display())))?;
    locate_home(&data_dir, cluster_owner()?, false)
}

fn locate_home(data_dir: &Path, run_as: Option<(u32, u32)>, create: bool) -> CoreResult<PathBuf> {
    let pointer = data_dir.join(LOCATION_FILE);
    if let Ok(text) = std::fs::read_to_string(&pointer) {
        let home = PathBuf::from(text.trim());
        if home.is_absolute() {
            return Ok(home);
        }
        return Err(internal(format!("{} does not name an absolute directory; delete it or fix it", pointer.display())));
    }
    let Some((uid, gid)) = run_as else { return Ok(data_dir.to_path_buf()) };
    if data_dir.join("postgres").join("PG_VERSION").exists() || reachable_by(uid, gid, data_dir) || !create {
        return Ok(data_dir.to_path_buf());
    }
    // The postgres user cannot traverse a parent of the data directory (e.g. /root is
    // 0700): keep the cluster where it can, and remember where.
    let home = Path::new(RELOCATED_ROOT).join(short_hash(data_dir));
    let advice = |e: std::io::Error| {
        internal(format!(
            "the `postgres` system user (which runs the embedded PostgreSQL when Switchboard runs as root) cannot reach \
             {data}, because a parent directory is closed to it (e.g. /root is mode 0700), and {home} could not be \
             created ({e}). Do one of: pass --data-dir (database.data_dir) a directory the postgres user can reach, \
             e.g. --data-dir /var/lib/switchboard/data; or run Switchboard as an ordinary user; or set database.url \
             to an existing PostgreSQL server.",
            data = data_dir.display(),
            home = home.display()
        ))
    };
    std::fs::create_dir_all(RELOCATED_ROOT).map_err(advice)?;
    std::fs::create_dir_all(&home).map_err(advice)?;
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).map_err(advice)?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).map_err(advice)?;
    write_private_file(&pointer, format!("{}\n", home.display()).as_bytes(), None)?;
    tracing::info!(
        data_dir = %data_dir.display(), cluster_home = %home.display(),
        "The postgres user cannot reach the data directory; the embedded PostgreSQL cluster lives in the cluster home instead."
    );
    Ok(home)
}

/// Whether `uid`/`gid` may traverse `dir` (every parent included), asked of the kernel
/// by a process running as that user.
fn reachable_by(uid: u32, gid: u32, dir: &Path) -> bool {
    Command::new("test")
        .arg("-x")
        .arg(dir)
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates `dir` if needed and makes it the cluster owner's, mode 0700. Refuses a symlink
/// or a directory someone else made (a socket directory in /tmp could be planted).
fn private_dir(dir: &Path, run_as: Option<(u32, u32)>, adopt: bool) -> CoreResult<()> {
    let io = |e: std::io::Error| internal(format!("{}: {e}", dir.display()));
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir).map_err(io)?;
            let mine = meta.uid() == run_as.map_or_else(|| nix::unistd::geteuid().as_raw(), |(uid, _)| uid);
            if !meta.is_dir() || (!adopt && !mine) {
                return Err(internal(format!(
                    "{} exists but is not a directory of the PostgreSQL cluster's owner; remove it and start again",
                    dir.display()
                )));
            }
        }
        Err(e) => return Err(io(e)),
    }
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes `bytes` to `path` atomically with mode 0600, owned by `owner` when given.
fn write_private_file(path: &Path, bytes: &[u8], owner: Option<(u32, u32)>) -> CoreResult<()> {
    let io = |e: std::io::Error| internal(format!("write {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io)?;
    }
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
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

/// A string literal for SQL (standard_conforming_strings is on since PostgreSQL 9.1).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl EmbeddedPostgres {
    /// Initialises (if needed) and starts the cluster under `data_dir/postgres` (or the
    /// cluster home, see the module documentation), then makes sure the hub's role and
    /// database exist, upgrading an older version's cluster.
    pub async fn start(data_dir: &Path) -> CoreResult<EmbeddedPostgres> {
        let data_dir = data_dir.to_path_buf();
        let mut pg = tokio::task::spawn_blocking(move || Self::start_blocking(&data_dir))
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))??;
        pg.provision().await?;
        Ok(pg)
    }

    fn start_blocking(data_dir: &Path) -> CoreResult<EmbeddedPostgres> {
        let bin_dir = find_bin_dir()?;
        let run_as = cluster_owner()?;
        std::fs::create_dir_all(data_dir).map_err(|e| CoreError::Internal(format!("create {}: {e}", data_dir.display())))?;
        let data_dir = data_dir.canonicalize().map_err(|e| CoreError::Internal(e.to_string()))?;
        let home = locate_home(&data_dir, run_as, true)?;
        if home != data_dir {
            // A cluster home elsewhere is the cluster owner's alone (and is made again if
            // someone removed it).
            std::fs::create_dir_all(&home).map_err(|e| internal(format!("create {}: {e}", home.display())))?;
            private_dir(&home, run_as, true)?;
        }
        let cluster_dir = home.join("postgres");
        // Unix socket paths are limited to ~107 bytes; fall back to a short private dir.
        let mut socket_dir = home.join("pg-socket");
        let mut adopt = true;
        if socket_dir.as_os_str().len() > 80 {
            socket_dir = std::env::temp_dir().join(format!("sb-pg-{}", short_hash(&home)));
            adopt = false;
        }
        private_dir(&socket_dir, run_as, adopt)?;
        let credentials_file = home.join(CREDENTIALS_FILE);
        let initialised = cluster_dir.join("PG_VERSION").exists();
        let hba = std::fs::read_to_string(cluster_dir.join("pg_hba.conf")).unwrap_or_default();
        let legacy = initialised && !hba.starts_with(HBA_MARKER);
        let stored: Option<Credentials> = std::fs::read(&credentials_file).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let credentials = match stored {
            // A fresh cluster gets fresh passwords; a cluster this module already secured
            // must have its file.
            Some(c) if initialised => c,
            None if initialised && !legacy => {
                return Err(internal(format!(
                    "{} is missing or unreadable, and the embedded cluster in {} needs it to log in. Restore the file, \
                     or move the cluster directory away to start with an empty database.",
                    credentials_file.display(),
                    cluster_dir.display()
                )))
            }
            _ => {
                let c = Credentials::generate();
                let json = serde_json::to_vec_pretty(&c).map_err(internal)?;
                write_private_file(&credentials_file, &json, run_as)?;
                c
            }
        };
        let mut me = EmbeddedPostgres { bin_dir, home, cluster_dir, socket_dir, port: 0, run_as, credentials, legacy, stopped: false };
        if !initialised {
            me.initdb()?;
        }
        if !legacy {
            me.write_hba()?;
        }
        // A cluster left running by a killed hub is reused.
        let pid_file = me.cluster_dir.join("postmaster.pid");
        if let Some(port) = running_port(&pid_file) {
            let status = me.command("pg_ctl").arg("status").arg("-D").arg(&me.cluster_dir).output();
            if matches!(status, Ok(ref s) if s.status.success()) {
                me.port = port;
                tracing::info!(port, "Embedded PostgreSQL already running; reusing it.");
                me.reload()?;
                return Ok(me);
            }
        }
        me.port = free_port()?;
        let opts = format!(
            "-k {} -p {} -c listen_addresses='' -c unix_socket_permissions=0700 -c password_encryption=scram-sha-256 \
             -c fsync=on -c max_connections=200",
            me.socket_dir.display(),
            me.port
        );
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

    /// Creates the cluster: the superuser `postgres` with its generated password, SCRAM
    /// authentication from the first start.
    fn initdb(&self) -> CoreResult<()> {
        std::fs::create_dir_all(&self.cluster_dir).map_err(|e| internal(format!("create {}: {e}", self.cluster_dir.display())))?;
        if let Some((uid, gid)) = self.run_as {
            chown_tree(&self.cluster_dir, uid, gid)?;
        }
        // initdb reads the password from a file; it lives only in the private socket dir.
        let pwfile = self.socket_dir.join("initdb-password");
        write_private_file(&pwfile, self.credentials.admin_password.as_bytes(), self.run_as)?;
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.cluster_dir)
            .args(["-U", ADMIN_ROLE, "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output();
        let _ = std::fs::remove_file(&pwfile);
        let out = out.map_err(|e| CoreError::Internal(format!("initdb: {e}")))?;
        if !out.status.success() {
            return Err(CoreError::Internal(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        tracing::info!(dir = %self.cluster_dir.display(), "Embedded PostgreSQL cluster initialised.");
        Ok(())
    }

    /// Writes `pg_hba.conf`: the hub's role to its database and the superuser, both over
    /// the private Unix socket and with SCRAM passwords; nobody else, no TCP.
    fn write_hba(&self) -> CoreResult<()> {
        let hba = format!(
            "{HBA_MARKER}\n\
             # TYPE  DATABASE      USER          METHOD\n\
             local   {DB_NAME}   {HUB_ROLE}   scram-sha-256\n\
             local   all           {ADMIN_ROLE}      scram-sha-256\n"
        );
        write_private_file(&self.cluster_dir.join("pg_hba.conf"), hba.as_bytes(), self.run_as)
    }

    /// Tells a running server to re-read `pg_hba.conf`.
    fn reload(&self) -> CoreResult<()> {
        let out = self.command("pg_ctl").arg("reload").arg("-D").arg(&self.cluster_dir).output().map_err(internal)?;
        if !out.status.success() {
            return Err(internal(format!("pg_ctl reload: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(())
    }

    /// Makes sure the hub's role (not a superuser, with its password) and its database
    /// (owned by it) exist. A cluster of an older version — trust authentication, the hub
    /// logged in as the bootstrap superuser `switchboard` — is converted: the superuser
    /// `postgres` gets a password, the old bootstrap role is renamed and can no longer log
    /// in, the hub's database and everything in it pass to the new `switchboard` role, and
    /// only then is `pg_hba.conf` rewritten.
    async fn provision(&mut self) -> CoreResult<()> {
        let db = |e: sqlx::Error| internal(format!("embedded PostgreSQL: {e}"));
        let admin_password = self.credentials.admin_password.clone();
        if self.legacy {
            // Trust authentication still: log in as whichever superuser exists.
            let mut c = match PgConnection::connect_with(&self.admin_options()).await {
                Ok(c) => c,
                Err(_) => PgConnection::connect_with(&self.admin_options().username(HUB_ROLE)).await.map_err(db)?,
            };
            let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
                .bind(ADMIN_ROLE)
                .fetch_one(&mut c)
                .await
                .map_err(db)?;
            let verb = if exists { "alter" } else { "create" };
            sqlx::raw_sql(&format!("{verb} role {ADMIN_ROLE} with superuser login password {}", literal(&admin_password)))
                .execute(&mut c)
                .await
                .map_err(db)?;
            let _ = c.close().await;
        }
        let mut admin = PgConnection::connect_with(&self.admin_options()).await.map_err(db)?;
        // An older version's bootstrap superuser (oid 10) was the hub's role.
        let bootstrap: String =
            sqlx::query_scalar("select rolname::text from pg_roles where oid = 10").fetch_one(&mut admin).await.map_err(db)?;
        if bootstrap == HUB_ROLE {
            sqlx::raw_sql(&format!(
                "alter role {HUB_ROLE} rename to {OLD_BOOTSTRAP_ROLE}; alter role {OLD_BOOTSTRAP_ROLE} nologin password null"
            ))
            .execute(&mut admin)
            .await
            .map_err(db)?;
            tracing::info!("Embedded PostgreSQL: the old bootstrap superuser `switchboard` is now `switchboard_bootstrap` (no login).");
        }
        let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
            .bind(HUB_ROLE)
            .fetch_one(&mut admin)
            .await
            .map_err(db)?;
        let verb = if exists { "alter" } else { "create" };
        sqlx::raw_sql(&format!(
            "{verb} role {HUB_ROLE} with login nosuperuser nocreatedb nocreaterole noreplication nobypassrls password {}",
            literal(&self.credentials.hub_password)
        ))
        .execute(&mut admin)
        .await
        .map_err(db)?;
        let owner: Option<String> = sqlx::query_scalar("select pg_get_userbyid(datdba)::text from pg_database where datname = $1")
            .bind(DB_NAME)
            .fetch_optional(&mut admin)
            .await
            .map_err(db)?;
        match owner.as_deref() {
            None => {
                sqlx::raw_sql(&format!("create database {DB_NAME} owner {HUB_ROLE}")).execute(&mut admin).await.map_err(db)?;
            }
            Some(HUB_ROLE) => {}
            Some(_) => {
                sqlx::raw_sql(&format!("alter database {DB_NAME} owner to {HUB_ROLE}")).execute(&mut admin).await.map_err(db)?;
                let mut inside = PgConnection::connect_with(&self.admin_options().database(DB_NAME)).await.map_err(db)?;
                sqlx::raw_sql(REASSIGN_FROM_BOOTSTRAP).execute(&mut inside).await.map_err(db)?;
                let _ = inside.close().await;
                tracing::info!("Embedded PostgreSQL: the hub's database and its objects now belong to the role `switchboard`.");
            }
        }
        let _ = admin.close().await;
        if self.legacy {
            let run = self.clone_paths();
            tokio::task::spawn_blocking(move || {
                run.write_hba()?;
                run.reload()
            })
            .await
            .map_err(internal)??;
            self.legacy = false;
            tracing::info!("Embedded PostgreSQL upgraded from trust to password authentication.");
        }
        Ok(())
    }

    /// A copy for blocking work on another thread (never started or stopped itself).
    fn clone_paths(&self) -> EmbeddedPostgres {
        EmbeddedPostgres {
            bin_dir: self.bin_dir.clone(),
            home: self.home.clone(),
            cluster_dir: self.cluster_dir.clone(),
            socket_dir: self.socket_dir.clone(),
            port: self.port,
            run_as: self.run_as,
            credentials: self.credentials.clone(),
            legacy: self.legacy,
            stopped: true,
        }
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

    /// Connect options of the hub: its role, on its database.
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(self.port)
            .username(HUB_ROLE)
            .password(&self.credentials.hub_password)
            .database(DB_NAME)
    }

    /// Connect options of the superuser, on the maintenance database.
    pub fn admin_options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(self.port)
            .username(ADMIN_ROLE)
            .password(&self.credentials.admin_password)
            .database("postgres")
    }

    /// A URL form for display (without the password).
    pub fn url(&self) -> String {
        format!("postgres://{HUB_ROLE}@localhost:{}/{DB_NAME}?host={}", self.port, self.socket_dir.display())
    }

    /// The directory of the Unix socket (mode 0700, the cluster owner's).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The cluster directory (PGDATA).
    pub fn cluster_dir(&self) -> &Path {
        &self.cluster_dir
    }

    /// The directory holding the cluster, socket directory and credentials file.
    pub fn home(&self) -> &Path {
        &self.home
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

/// Gives every object of the hub's database that the old bootstrap superuser (oid 10)
/// created — tables (their sequences and indexes follow), views, functions, types,
/// schemas — to the hub's role. Extension members stay with their extension.
const REASSIGN_FROM_BOOTSTRAP: &str = r#"
do $$
declare
  stmt text;
begin
  for stmt in
    select format('alter %s %s owner to switchboard',
                  case c.relkind when 'S' then 'sequence' when 'v' then 'view' when 'm' then 'materialized view'
                                 when 'f' then 'foreign table' else 'table' end,
                  c.oid::regclass)
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relowner = 10 and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
      and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\_toast%'
      and not exists (select 1 from pg_depend d
                      where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype in ('e', 'a', 'i'))
  loop
    execute stmt;
  end loop;
  for stmt in
    select format('alter routine %s owner to switchboard', p.oid::regprocedure)
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where p.proowner = 10 and n.nspname not in ('pg_catalog', 'information_schema')
      and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
  loop
    execute stmt;
  end loop;
  for stmt in
    select format('alter type %s owner to switchboard', t.oid::regtype)
    from pg_type t join pg_namespace n on n.oid = t.typnamespace
    where t.typowner = 10 and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\_toast%'
      and (t.typtype in ('e', 'd', 'r') or (t.typtype = 'c' and (select relkind from pg_class where oid = t.typrelid) = 'c'))
      and not exists (select 1 from pg_depend d where d.classid = 'pg_type'::regclass and d.objid = t.oid and d.deptype = 'e')
  loop
    execute stmt;
  end loop;
  for stmt in
    select format('alter schema %I owner to switchboard', nspname)
    from pg_namespace
    where nspowner = 10 and nspname not in ('pg_catalog', 'information_schema') and nspname not like 'pg\_%'
  loop
    execute stmt;
  end loop;
end
$$;
"#;

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
