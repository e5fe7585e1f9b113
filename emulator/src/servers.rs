//! Zero-configuration servers: the PostgreSQL and Redis the emulator runs against.
//!
//! For each server, in order:
//! 1. **Configured** (`DATABASE_URL`, `REDIS_URL`): used as is, not probed; the
//!    caller's connection errors already name the URL.
//! 2. **Running**: the default address (127.0.0.1:5432 / 6379) accepts a connection
//!    within 300 ms (and, for Redis, does not answer `PING` as something else would).
//! 3. **Private**: the emulator starts one of its own on a free loopback port, with
//!    its data under the state directory (`<state>/postgres`, `<state>/redis`), kept
//!    between runs, and stops it with [`Postgres::stop`] / [`Redis::stop`].
//! 4. Otherwise: an error that says what to install or which variable to set
//!    ([`NotInstalled`]).
//!
//! A private server must not outlive the emulator:
//! - Redis runs in the foreground, as a child, behind a small `sh` watchdog that
//!   holds the read end of a pipe whose write end only the emulator holds. When the
//!   pipe closes (`stop`, the handle dropped, or the emulator killed with SIGKILL:
//!   the kernel closes its descriptors) the watchdog sends SIGTERM, on which Redis
//!   flushes its append-only file and exits.
//! - PostgreSQL is started by `pg_ctl`, which detaches the postmaster. Dropping the
//!   handle without `stop` still asks it to shut down; after a hard kill it keeps
//!   running, and the next start finds it through `postmaster.pid`, stops it and
//!   starts afresh (see [`postgres`]).
//!
//! **Invariant:** this module never stops or reconfigures a server it did not start
//! (origins `Configured` and `Running` are left alone). One emulator per state
//! directory: two emulators on one state directory would share (and stop) each
//! other's private servers.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use shared::config::Env;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin, Command};

/// How long a probe of a default address waits to connect, and then for a reply.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a private Redis may take to answer `PING` (loading its append-only file included).
const REDIS_START_DEADLINE: Duration = Duration::from_secs(5);
/// How long a private PostgreSQL may take to accept connections (crash recovery included).
const POSTGRES_START_DEADLINE: Duration = Duration::from_secs(15);
/// How long a private server may take to shut down.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// How much of a server's log an error shows.
const LOG_TAIL_LINES: usize = 20;

/// Where the emulator keeps what outlives a run: the private servers' data and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// The directory's name under the user's state home.
    pub const APP: &'static str = "order-emulator";

    /// A state directory at `path` (`--state-dir`), made absolute against the
    /// current directory, since the servers run from directories of their own.
    pub fn new(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let absolute = std::path::absolute(path)
            .with_context(|| format!("resolving the state directory {}", path.display()))?;
        Ok(Self(absolute))
    }

    /// `$XDG_STATE_HOME/order-emulator`, else `~/.local/state/order-emulator` (the XDG
    /// base directory default; a relative `XDG_STATE_HOME` is ignored, as the
    /// specification asks).
    pub fn default_location(env: &Env) -> anyhow::Result<Self> {
        if let Some(xdg) = env.get("XDG_STATE_HOME")? {
            if Path::new(xdg).is_absolute() {
                return Ok(Self(Path::new(xdg).join(Self::APP)));
            }
        }
        match env.get("HOME")? {
            Some(home) => Ok(Self(Path::new(home).join(".local/state").join(Self::APP))),
            None => bail!(
                "no directory for the emulator's state: HOME and XDG_STATE_HOME are not set; \
                 set one of them or pass --state-dir"
            ),
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// Where a server came from, which decides whether `stop` stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From `DATABASE_URL` / `REDIS_URL`.
    Configured,
    /// The default address answered.
    Running,
    /// Started by the emulator, which stops it.
    Private,
}

/// A server is needed, none answers and none can be started: what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInstalled {
    #[error(
        "Redis is not reachable at {0} and redis-server is not installed: \
         install it (`apt-get install redis-server` / `brew install redis`) or set REDIS_URL"
    )]
    Redis(SocketAddr),
    #[error(
        "PostgreSQL is not reachable at {0} and its server programs (initdb, pg_ctl) are not \
         installed: install them (`apt-get install postgresql` / `brew install postgresql`) \
         or set DATABASE_URL"
    )]
    Postgres(SocketAddr),
}

/// Where the server programs are looked for.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// Searched in order, as `PATH` is.
    dirs: Vec<PathBuf>,
    /// Also look where distributions install PostgreSQL off `PATH`
    /// (`/usr/lib/postgresql/*/bin`, Homebrew's kegs, ...).
    well_known: bool,
}

impl Binaries {
    /// `PATH`, `pg_config --bindir`, and PostgreSQL's usual install locations.
    pub fn system() -> Self {
        let path = std::env::var_os("PATH").unwrap_or_default();
        Self {
            dirs: std::env::split_paths(&path).collect(),
            well_known: true,
        }
    }

    /// These directories only: a test's "nothing is installed" is `in_dirs([])`.
    pub fn in_dirs(dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            dirs: dirs.into_iter().collect(),
            well_known: false,
        }
    }

    pub fn redis_server(&self) -> Option<PathBuf> {
        find_program(&self.dirs, "redis-server")
    }

    /// The directory with `initdb` and `pg_ctl`: the one `pg_config --bindir` names,
    /// else the newest of the usual install locations, else the first on the search path.
    pub async fn postgres_bindir(&self) -> Option<PathBuf> {
        if let Some(pg_config) = find_program(&self.dirs, "pg_config") {
            let output = Command::new(&pg_config)
                .arg("--bindir")
                .stdin(Stdio::null())
                .output()
                .await;
            if let Ok(output) = output {
                let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
                // Debian's pg_config may come with libpq-dev for a version whose server
                // is not installed.
                if output.status.success() && has_postgres_server(&dir) {
                    return Some(dir);
                }
            }
        }
        if self.well_known {
            if let Some(dir) = well_known_postgres_dirs()
                .into_iter()
                .find(|dir| has_postgres_server(dir))
            {
                return Some(dir);
            }
        }
        self.dirs
            .iter()
            .find(|dir| has_postgres_server(dir))
            .cloned()
    }
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn find_program(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| is_executable(path))
}

fn has_postgres_server(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|program| is_executable(&dir.join(program)))
}

/// Where packages put PostgreSQL's server programs off `PATH`, newest version first
/// within each place.
fn well_known_postgres_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    // (parent, entry prefix, path below the entry)
    let patterns: [(&str, &str, &str); 5] = [
        ("/usr/lib/postgresql", "", "bin"),         // Debian, Ubuntu
        ("/usr", "pgsql-", "bin"),                  // RHEL, Fedora (PGDG)
        ("/opt/homebrew/opt", "postgresql", "bin"), // Homebrew, Apple silicon
        ("/usr/local/opt", "postgresql", "bin"),    // Homebrew, Intel
        ("/Applications/Postgres.app/Contents/Versions", "", "bin"),
    ];
    for (parent, prefix, below) in patterns {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        let mut found: Vec<(Vec<u64>, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let version = name.strip_prefix(prefix)?;
                let key = version
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|part| part.parse().ok())
                    .collect();
                Some((key, entry.path().join(below)))
            })
            .collect();
        found.sort_by(|a, b| b.0.cmp(&a.0));
        dirs.extend(found.into_iter().map(|(_, dir)| dir));
    }
    dirs.push(PathBuf::from("/usr/local/pgsql/bin")); // built from source
    dirs
}

/// The Redis the emulator uses.
#[derive(Debug)]
pub struct Redis {
    pub url: String,
    pub origin: Origin,
    private: Option<PrivateRedis>,
}

#[derive(Debug)]
struct PrivateRedis {
    addr: SocketAddr,
    /// `redis-server` and the state directory, for [`Redis::restart`].
    program: PathBuf,
    state: StateDir,
    /// The watchdog shell; it exits when Redis does, with Redis's status.
    child: Child,
    /// The write end of the watchdog's pipe: dropping it stops Redis.
    lifeline: Option<ChildStdin>,
    log: PathBuf,
}

/// `sh -c WATCHDOG redis-server args...`: runs `$0 "$@"` and sends it SIGTERM when
/// the shell's stdin reaches end of file. The server is the shell's child, so its
/// pid cannot be reused before the shell has waited for it; once it has exited on
/// its own, the shell kills the watcher before that can signal a stale pid. The
/// pipe is close-on-exec (std's pipes are), so no other child keeps it open.
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" </dev/null 3<&- &
server=$!
(read -r line <&3; kill -TERM "$server" 2>/dev/null) &
watcher=$!
exec 3<&-
wait "$server"; status=$?
kill "$watcher" 2>/dev/null
exit "$status""#;

/// The Redis at `configured`, else the one at `default_addr`, else a private one
/// under `state` (see the module docs).
pub async fn redis(
    configured: Option<&str>,
    default_addr: SocketAddr,
    state: &StateDir,
) -> anyhow::Result<Redis> {
    redis_with(configured, default_addr, state, &Binaries::system()).await
}

/// [`redis`], with the programs looked for in `binaries`.
pub async fn redis_with(
    configured: Option<&str>,
    default_addr: SocketAddr,
    state: &StateDir,
    binaries: &Binaries,
) -> anyhow::Result<Redis> {
    if let Some(url) = configured {
        return Ok(Redis {
            url: url.to_owned(),
            origin: Origin::Configured,
            private: None,
        });
    }
    match probe(default_addr, b"PING\r\n").await {
        Probe::Silent => {}
        // `+PONG`, or an error such as `-NOAUTH`: Redis either way.
        Probe::Replied(reply)
            if reply.is_empty() || reply.starts_with(b"+") || reply.starts_with(b"-") =>
        {
            tracing::info!("using the Redis running at {default_addr}");
            return Ok(Redis {
                url: format!("redis://{default_addr}"),
                origin: Origin::Running,
                private: None,
            });
        }
        Probe::Replied(_) => {
            tracing::warn!("{default_addr} answers, but not as Redis; starting a private Redis");
        }
    }
    let Some(redis_server) = binaries.redis_server() else {
        return Err(NotInstalled::Redis(default_addr).into());
    };
    start_redis(&redis_server, state).await
}

/// Starts `redis-server` on a free loopback port with its data in `<state>/redis`:
/// an append-only file (fsync every second) and no RDB snapshots, so a key written
/// before a stop, or up to a second before a crash, is there on the next start.
/// It requires a password, as ElastiCache and MemoryDB do in AWS: generated once
/// per state directory (`<state>/redis/password`, mode 0600), given to Redis in a
/// configuration file (not on its command line, which `ps` shows) and to the
/// functions in the URL (`redis://:<password>@127.0.0.1:<port>`).
async fn start_redis(redis_server: &Path, state: &StateDir) -> anyhow::Result<Redis> {
    start_redis_on(redis_server, state, spare_loopback_addr()?).await
}

/// [`start_redis`] on `addr`.
async fn start_redis_on(
    redis_server: &Path,
    state: &StateDir,
    addr: SocketAddr,
) -> anyhow::Result<Redis> {
    let dir = state.path().join("redis");
    tokio::fs::create_dir_all(&dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("redis.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let password = private_redis_password(&dir)?;
    write_private(
        &dir.join(REDIS_AUTH_CONF),
        &format!("requirepass {password}\n"),
    )?;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg(redis_server)
        // The configuration file comes first (relative to the working directory).
        .arg(REDIS_AUTH_CONF)
        .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
        // `--dir .` with the data directory as the working directory: no quoting
        // of the path in Redis's configuration syntax.
        .args([
            "--dir",
            ".",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ])
        .args(["--save", "", "--daemonize", "no"])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone().context("duplicating the log file")?)
        .stderr(log_file)
        // Its own process group: Ctrl-C in the terminal reaches the emulator only,
        // which stops Redis after its workers are done with it.
        .process_group(0)
        .spawn()
        .context("starting sh for redis-server")?;
    // Dropped on an early return below, it stops the server.
    let lifeline = child.stdin.take();
    let deadline = tokio::time::Instant::now() + REDIS_START_DEADLINE;
    loop {
        if let Probe::Replied(reply) = probe(addr, b"PING\r\n").await {
            // Up and requiring its password (or, had it none, answering).
            if reply.starts_with(b"-NOAUTH") || reply.starts_with(b"+PONG") {
                break;
            }
        }
        if let Some(status) = child.try_wait().context("waiting for redis-server")? {
            bail!(
                "the private Redis exited at start ({status}); the end of {}:\n{}",
                log.display(),
                log_tail(&log).await
            );
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the private Redis did not answer on {addr} within {} s; the end of {}:\n{}",
                REDIS_START_DEADLINE.as_secs(),
                log.display(),
                log_tail(&log).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let redis = Redis {
        url: format!("redis://:{password}@{addr}"),
        origin: Origin::Private,
        private: Some(PrivateRedis {
            addr,
            program: redis_server.to_path_buf(),
            state: state.clone(),
            child,
            lifeline,
            log,
        }),
    };
    tracing::info!(
        "started a private Redis on {addr} (data in {})",
        dir.display()
    );
    Ok(redis)
}

/// The private Redis's configuration file: its password only.
const REDIS_AUTH_CONF: &str = "auth.conf";

/// The private Redis's password: `<dir>/password`, generated on the first start.
fn private_redis_password(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("password");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &password)?;
    Ok(password)
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

impl Redis {
    /// Stops a private Redis (a no-op for the others): SIGTERM, on which it flushes
    /// its append-only file, then waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut private) = self.private.take() else {
            return Ok(());
        };
        drop(private.lifeline.take());
        let status = tokio::time::timeout(STOP_DEADLINE, private.child.wait())
            .await
            .with_context(|| {
                format!(
                    "the private Redis on {} did not stop within {} s",
                    private.addr,
                    STOP_DEADLINE.as_secs()
                )
            })?
            .context("waiting for redis-server to exit")?;
        if !status.success() {
            bail!(
                "the private Redis on {} exited with {status}; the end of {}:\n{}",
                private.addr,
                private.log.display(),
                log_tail(&private.log).await
            );
        }
        tracing::info!("stopped the private Redis on {}", private.addr);
        Ok(())
    }
}

impl Redis {
    /// Stops a private Redis as [`Redis::stop`] does, for good, in place (what a
    /// failover test does to the primary it replaces).
    pub async fn stop_in_place(&mut self) -> anyhow::Result<()> {
        let Some(private) = self.private.take() else {
            bail!("only a private Redis can be stopped");
        };
        Self {
            url: self.url.clone(),
            origin: Origin::Private,
            private: Some(private),
        }
        .stop()
        .await
    }

    /// Stops a private Redis as [`Redis::stop`] does, leaves it down for
    /// `down_for`, and starts it again on the same address with the same data
    /// (what a crash test needs: clients reconnect to the URL they have).
    pub async fn restart(&mut self, down_for: Duration) -> anyhow::Result<()> {
        let Some(private) = self.private.take() else {
            bail!("only a private Redis can be restarted");
        };
        let (program, state, addr) = (private.program.clone(), private.state.clone(), private.addr);
        Self {
            url: self.url.clone(),
            origin: Origin::Private,
            private: Some(private),
        }
        .stop()
        .await?;
        tokio::time::sleep(down_for).await;
        *self = start_redis_on(&program, &state, addr).await?;
        Ok(())
    }
}

/// The PostgreSQL the emulator uses.
#[derive(Debug)]
pub struct Postgres {
    /// For `Running` and `Private`, the server without a database name
    /// (`postgres://postgres@127.0.0.1:54321`); for `Configured`, the URL as given.
    pub url: String,
    pub origin: Origin,
    private: Option<PrivatePostgres>,
}

/// A postmaster started by `pg_ctl`; asked to shut down when dropped without `stop`.
#[derive(Debug)]
struct PrivatePostgres {
    addr: SocketAddr,
    pg_ctl: PathBuf,
    /// `<state>/postgres`: the data directory's parent, holding the log too.
    home: PathBuf,
    data: PathBuf,
    log: PathBuf,
    run_as: Option<Account>,
    stopped: bool,
}

/// The unprivileged user PostgreSQL runs as when the emulator runs as root.
#[derive(Debug, Clone)]
struct Account {
    name: &'static str,
    uid: u32,
    gid: u32,
}

/// The PostgreSQL at `configured`, else the one at `default_addr`, else a private one
/// under `state` (see the module docs).
///
/// The private one's data directory is `<state>/postgres/data`, made by `initdb` on the
/// first start only (trust authentication, superuser `postgres`, UTF-8, C locale) and
/// kept between runs. It listens on a free loopback port over TCP only (no Unix
/// socket, so no writable `/var/run/postgresql` is needed). If a postmaster left by an
/// emulator that was killed still holds the data directory (its `postmaster.pid`
/// names a port that answers as PostgreSQL), it is stopped (`pg_ctl stop -m fast`)
/// and a fresh one started, so that the server always runs with this version's
/// settings, on a port checked just now.
///
/// PostgreSQL refuses to run as root. When the emulator runs as root, `initdb` and
/// `pg_ctl` run as the system user `postgres` (the one PostgreSQL's packages create),
/// `<state>/postgres` is given to that user, and it must be able to reach it: a state
/// directory under `/root` is not reachable, so the error asks for another `--state-dir`.
pub async fn postgres(
    configured: Option<&str>,
    default_addr: SocketAddr,
    state: &StateDir,
) -> anyhow::Result<Postgres> {
    postgres_with(configured, default_addr, state, &Binaries::system()).await
}

/// [`postgres`], with the programs looked for in `binaries`.
pub async fn postgres_with(
    configured: Option<&str>,
    default_addr: SocketAddr,
    state: &StateDir,
    binaries: &Binaries,
) -> anyhow::Result<Postgres> {
    if let Some(url) = configured {
        return Ok(Postgres {
            url: url.to_owned(),
            origin: Origin::Configured,
            private: None,
        });
    }
    // A bare connection, not a greeting: PostgreSQL logs nothing for a client that
    // leaves without a word, but logs an SSLRequest answered `S` and then abandoned.
    if accepts(default_addr).await {
        tracing::info!("using the PostgreSQL running at {default_addr}");
        return Ok(Postgres {
            url: format!("postgres://postgres@{default_addr}"),
            origin: Origin::Running,
            private: None,
        });
    }
    let Some(bindir) = binaries.postgres_bindir().await else {
        return Err(NotInstalled::Postgres(default_addr).into());
    };
    start_postgres(&bindir, state).await
}

/// An SSLRequest: a PostgreSQL server answers it with one byte, `S` or `N` (the
/// emulator's own servers, which have no TLS, say `N` and log nothing).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

fn is_postgres_reply(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'S' | b'N' | b'E'))
}

async fn start_postgres(bindir: &Path, state: &StateDir) -> anyhow::Result<Postgres> {
    let home = state.path().join("postgres");
    let data = home.join("data");
    let log = home.join("server.log");
    let pg_ctl = bindir.join("pg_ctl");
    tokio::fs::create_dir_all(&home)
        .await
        .with_context(|| format!("creating {}", home.display()))?;
    let run_as = postgres_account().await?;
    if let Some(account) = &run_as {
        hand_over(&home, account).await?;
    }
    if !data.join("PG_VERSION").exists() {
        initdb(bindir, &home, &data, run_as.as_ref()).await?;
    }
    stop_leftover(&pg_ctl, &home, &data, run_as.as_ref()).await?;

    let addr = spare_loopback_addr()?;
    let output = pg_ctl_start(&pg_ctl, &home, &data, &log, run_as.as_ref(), addr).await?;
    // From here on, a failure drops the handle, which stops the server.
    let private = PrivatePostgres {
        addr,
        pg_ctl: pg_ctl.clone(),
        home: home.clone(),
        data: data.clone(),
        log: log.clone(),
        run_as: run_as.clone(),
        stopped: false,
    };
    if !output.status.success() {
        // pg_ctl leaves a postmaster that was too slow running: dropping `private` stops it.
        bail!(
            "the private PostgreSQL did not start: {}; the end of {}:\n{}",
            output_text(&output),
            log.display(),
            log_tail(&log).await
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !matches!(probe(addr, &SSL_REQUEST).await, Probe::Replied(r) if is_postgres_reply(&r)) {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the private PostgreSQL started but does not answer on {addr}; the end of {}:\n{}",
                log.display(),
                log_tail(&log).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match &run_as {
        Some(account) => tracing::info!(
            "started a private PostgreSQL on {addr} (data in {}, run as user {})",
            data.display(),
            account.name
        ),
        None => tracing::info!(
            "started a private PostgreSQL on {addr} (data in {})",
            data.display()
        ),
    }
    Ok(Postgres {
        url: format!("postgres://postgres@{addr}"),
        origin: Origin::Private,
        private: Some(private),
    })
}

/// `pg_ctl start`, waiting, on `addr` over TCP only.
async fn pg_ctl_start(
    pg_ctl: &Path,
    home: &Path,
    data: &Path,
    log: &Path,
    run_as: Option<&Account>,
    addr: SocketAddr,
) -> anyhow::Result<std::process::Output> {
    pg_command(pg_ctl, home, run_as)
        .arg("start")
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(log)
        .args(["-w", "-t", &POSTGRES_START_DEADLINE.as_secs().to_string()])
        // Passed through `sh` by pg_ctl: `unix_socket_directories=` is an empty list.
        .arg("-o")
        .arg(format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories=",
            addr.port()
        ))
        .output()
        .await
        .with_context(|| format!("running {}", pg_ctl.display()))
}

/// `initdb` into a scratch directory, renamed into place when complete: an `initdb`
/// that was interrupted leaves no half-made data directory behind.
async fn initdb(
    bindir: &Path,
    home: &Path,
    data: &Path,
    run_as: Option<&Account>,
) -> anyhow::Result<()> {
    let scratch = home.join("data.initdb");
    if scratch.exists() {
        tokio::fs::remove_dir_all(&scratch)
            .await
            .with_context(|| format!("removing the unfinished {}", scratch.display()))?;
    }
    let initdb = bindir.join("initdb");
    tracing::info!("creating a PostgreSQL data directory in {}", data.display());
    let output = pg_command(&initdb, home, run_as)
        .arg("-D")
        .arg(&scratch)
        // A local development server: no passwords on loopback, and no fsync of the
        // fresh files (initdb's `--no-sync`; the server itself fsyncs as usual).
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ])
        .output()
        .await
        .with_context(|| format!("running {}", initdb.display()))?;
    if !output.status.success() {
        bail!(
            "initdb failed to create {}: {}",
            data.display(),
            output_text(&output)
        );
    }
    tokio::fs::rename(&scratch, data)
        .await
        .with_context(|| format!("moving {} to {}", scratch.display(), data.display()))
}

/// Stops a postmaster an earlier run left on `data` (an emulator killed hard cannot
/// stop it). It is recognised by `postmaster.pid` naming a port that answers as
/// PostgreSQL; a stale file of a dead process is left to the postmaster, which
/// replaces it.
async fn stop_leftover(
    pg_ctl: &Path,
    home: &Path,
    data: &Path,
    run_as: Option<&Account>,
) -> anyhow::Result<()> {
    let Ok(pid_file) = tokio::fs::read_to_string(data.join("postmaster.pid")).await else {
        return Ok(());
    };
    // Line 1: the pid; line 4: the port.
    let mut lines = pid_file.lines();
    let pid = lines.next().unwrap_or_default().trim().to_owned();
    let Some(port) = lines
        .nth(2)
        .and_then(|line| line.trim().parse::<u16>().ok())
    else {
        return Ok(());
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    if !matches!(probe(addr, &SSL_REQUEST).await, Probe::Replied(r) if is_postgres_reply(&r)) {
        return Ok(());
    }
    tracing::info!(
        "a PostgreSQL left running by an earlier run (pid {pid}, {addr}) holds {}; stopping it",
        data.display()
    );
    let output = pg_command(pg_ctl, home, run_as)
        .arg("stop")
        .arg("-D")
        .arg(data)
        .args([
            "-m",
            "fast",
            "-w",
            "-t",
            &STOP_DEADLINE.as_secs().to_string(),
        ])
        .output()
        .await
        .with_context(|| format!("running {}", pg_ctl.display()))?;
    if !output.status.success() {
        bail!(
            "could not stop the PostgreSQL an earlier run left on {} ({addr}): {}",
            data.display(),
            output_text(&output)
        );
    }
    Ok(())
}

/// `program` run from `cwd` with no stdin, as `run_as` if given.
fn pg_command(program: &Path, cwd: &Path, run_as: Option<&Account>) -> Command {
    let mut command = Command::new(program);
    command.current_dir(cwd).stdin(Stdio::null());
    if let Some(account) = run_as {
        command.uid(account.uid).gid(account.gid);
    }
    command
}

/// None unless the emulator runs as root, which `initdb`, `pg_ctl` and `postgres`
/// refuse (a server run as root could be made to run anything as root): then the
/// system user `postgres`. Asked of `id(1)`, which knows every user database (NSS).
async fn postgres_account() -> anyhow::Result<Option<Account>> {
    if id(&["-u"]).await?.context("`id -u` failed")? != 0 {
        return Ok(None);
    }
    const NAME: &str = "postgres";
    match (id(&["-u", NAME]).await?, id(&["-g", NAME]).await?) {
        (Some(uid), Some(gid)) => Ok(Some(Account {
            name: NAME,
            uid,
            gid,
        })),
        _ => bail!(
            "PostgreSQL refuses to run as root and there is no user `{NAME}` to run it as: \
             create one (`useradd --system --user-group {NAME}`), run the emulator as a normal \
             user, or set DATABASE_URL"
        ),
    }
}

/// `id args...` as a number; None if `id` says no (an unknown user).
async fn id(args: &[&str]) -> anyhow::Result<Option<u32>> {
    let output = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running id")?;
    if !output.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let number = text
        .trim()
        .parse()
        .with_context(|| format!("`id {}` printed {text:?}", args.join(" ")))?;
    Ok(Some(number))
}

/// Gives `home` to `account` and checks that the account can reach it: every
/// directory above it must let that user through.
async fn hand_over(home: &Path, account: &Account) -> anyhow::Result<()> {
    std::os::unix::fs::chown(home, Some(account.uid), Some(account.gid))
        .with_context(|| format!("giving {} to user {}", home.display(), account.name))?;
    let reachable = Command::new("test")
        .arg("-w")
        .arg(home)
        .uid(account.uid)
        .gid(account.gid)
        .stdin(Stdio::null())
        .status()
        .await
        .context("running test")?
        .success();
    if !reachable {
        bail!(
            "PostgreSQL refuses to run as root, so the emulator runs it as user {}, who cannot \
             reach {}: pass a --state-dir that user can reach (e.g. /var/lib/{}), or set \
             DATABASE_URL",
            account.name,
            home.display(),
            StateDir::APP
        );
    }
    Ok(())
}

impl Postgres {
    /// Stops a private PostgreSQL (a no-op for the others): `pg_ctl stop -m fast -w`,
    /// which rolls back open transactions, checkpoints and waits for the exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut private) = self.private.take() else {
            return Ok(());
        };
        private.stopped = true;
        let output = pg_command(&private.pg_ctl, &private.home, private.run_as.as_ref())
            .arg("stop")
            .arg("-D")
            .arg(&private.data)
            .args([
                "-m",
                "fast",
                "-w",
                "-t",
                &STOP_DEADLINE.as_secs().to_string(),
            ])
            .output()
            .await
            .with_context(|| format!("running {}", private.pg_ctl.display()))?;
        if !output.status.success() {
            bail!(
                "could not stop the private PostgreSQL on {}: {}; the end of {}:\n{}",
                private.addr,
                output_text(&output),
                private.log.display(),
                log_tail(&private.log).await
            );
        }
        tracing::info!("stopped the private PostgreSQL on {}", private.addr);
        Ok(())
    }
}

impl Postgres {
    /// Stops a private PostgreSQL as [`Postgres::stop`] does (open connections
    /// are cut), leaves it down for `down_for`, and starts it again on the same
    /// address with the same data (for crash tests).
    pub async fn restart(&mut self, down_for: Duration) -> anyhow::Result<()> {
        let Some(private) = self.private.as_mut() else {
            bail!("only a private PostgreSQL can be restarted");
        };
        let output = pg_command(&private.pg_ctl, &private.home, private.run_as.as_ref())
            .arg("stop")
            .arg("-D")
            .arg(&private.data)
            .args([
                "-m",
                "fast",
                "-w",
                "-t",
                &STOP_DEADLINE.as_secs().to_string(),
            ])
            .output()
            .await
            .with_context(|| format!("running {}", private.pg_ctl.display()))?;
        if !output.status.success() {
            bail!(
                "could not stop the private PostgreSQL on {}: {}",
                private.addr,
                output_text(&output)
            );
        }
        tokio::time::sleep(down_for).await;
        let output = pg_ctl_start(
            &private.pg_ctl,
            &private.home,
            &private.data,
            &private.log,
            private.run_as.as_ref(),
            private.addr,
        )
        .await?;
        if !output.status.success() {
            bail!(
                "the private PostgreSQL did not start again: {}; the end of {}:\n{}",
                output_text(&output),
                private.log.display(),
                log_tail(&private.log).await
            );
        }
        tracing::info!("restarted the private PostgreSQL on {}", private.addr);
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Not awaited (Drop cannot be): `pg_ctl stop -W` sends the fast-shutdown
        // signal and returns; a thread reaps it.
        let mut command = std::process::Command::new(&self.pg_ctl);
        command
            .current_dir(&self.home)
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-W"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(account) = &self.run_as {
            use std::os::unix::process::CommandExt as _;
            command.uid(account.uid).gid(account.gid);
        }
        match command.spawn() {
            Ok(mut child) => {
                std::thread::spawn(move || child.wait());
            }
            Err(e) => tracing::warn!(
                "could not stop the private PostgreSQL on {}: {e}",
                self.addr
            ),
        }
    }
}

/// What a default address said to a greeting.
enum Probe {
    /// Nothing accepted the connection in time.
    Silent,
    /// Something accepted it; the first bytes of its answer (empty if it said
    /// nothing in time or closed).
    Replied(Vec<u8>),
}

async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

async fn probe(addr: SocketAddr, greeting: &[u8]) -> Probe {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
    else {
        return Probe::Silent;
    };
    let mut reply = vec![0; 64];
    let exchange = async {
        stream.write_all(greeting).await?;
        stream.read(&mut reply).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, exchange).await {
        Ok(Ok(n)) => reply.truncate(n),
        _ => reply.clear(),
    }
    Probe::Replied(reply)
}

/// A loopback address nothing listens on now (bound to port 0, then released).
fn spare_loopback_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("finding a free port on 127.0.0.1")?;
    listener
        .local_addr()
        .context("finding a free port on 127.0.0.1")
}

fn output_text(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = [stdout.trim(), stderr.trim()]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    format!("{text} ({})", output.status)
}

async fn log_tail(path: &Path) -> String {
    match tokio::fs::read(path).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(no log: {e})"),
    }
}
