//! `emulator up --watch` with in-process functions. They are linked into the
//! emulator's own binary, so new code means a new process: this one holds the
//! port and the stores (PostgreSQL, Redis) and proxies every request to an
//! emulator process it runs on a private port (`up` with [`Supervised`]
//! flags). On a change [`crate::watch`] runs `cargo build --bin emulator`;
//! when the binary changed, [`Supervisor::swap`]:
//! 1. holds new requests (they wait, none is refused) and lets the requests
//!    under way get their answers from the old process;
//! 2. stops the old process as Ctrl-C does: its consumers finish and
//!    acknowledge their batch and give up their leases, the relay stops, its
//!    log lines are handed over;
//! 3. starts the new binary, waits until it answers, and lets the held
//!    requests through.
//!
//! If the new binary does not start, the previous one (kept as a hard link,
//! since cargo replaces the file) starts again and serves.
//!
//! [`Supervised`]: crate::app::Supervised

#![allow(clippy::print_stdout)] // `up`'s reports go to stdout, with its banner.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::State;
use axum::response::{IntoResponse as _, Response};
use shared::config::Env;

/// How long a new process may take to answer its first request.
const START_WITHIN: Duration = Duration::from_secs(120);
/// How long a stopping process may take to finish its work before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// What `up --watch` runs in-process, from its command line.
#[derive(Debug)]
pub struct Plan {
    env: Env,
    port: u16,
    state_dir: PathBuf,
    root: PathBuf,
    migrations: Vec<sqlx::migrate::Migrator>,
    /// The emulator's binary, where cargo builds it.
    exe: PathBuf,
    /// `up`'s arguments for the process it runs.
    args: Vec<OsString>,
}

impl Plan {
    /// `up --watch` as this process was started.
    pub fn new(
        env: &Env,
        port: u16,
        state_dir: &crate::servers::StateDir,
        root: PathBuf,
        migrations: Vec<sqlx::migrate::Migrator>,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the emulator's binary")?;
        Ok(Self {
            env: env.clone(),
            port,
            state_dir: state_dir.path().to_path_buf(),
            root,
            migrations,
            exe,
            args: child_args(std::env::args_os().skip(1)),
        })
    }
}

/// This process's arguments for the process it runs: without `--watch`, and
/// without `--port` (it gets a private one).
pub fn child_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut kept = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--watch") => {}
            Some("--port") => {
                args.next();
            }
            Some(a) if a.starts_with("--port=") => {}
            _ => kept.push(arg),
        }
    }
    kept
}

/// The emulator process serving now.
#[derive(Debug)]
struct Serving {
    child: tokio::process::Child,
    port: u16,
    /// The binary it runs: a hard link to the one cargo built.
    binary: PathBuf,
}

/// Runs the emulator's process behind a proxy and swaps it for a new build.
#[derive(Debug)]
pub struct Supervisor {
    exe: PathBuf,
    /// The workspace package whose binary `exe` is: built as `cargo run -p`
    /// built it, with that package's features.
    package: Option<String>,
    args: Vec<OsString>,
    /// DATABASE_URL and REDIS_URL: the stores this process prepared.
    vars: Vec<(&'static str, String)>,
    public: SocketAddr,
    handover: PathBuf,
    /// The serving process's port; held for writing while it is swapped, and
    /// for reading by each request until its answer's head arrives.
    target: tokio::sync::RwLock<Option<u16>>,
    serving: tokio::sync::Mutex<Option<Serving>>,
    client: reqwest::Client,
    generation: AtomicU64,
}

impl Supervisor {
    /// The binary cargo builds.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// The package it belongs to, when cargo knows.
    pub fn package(&self) -> Option<&str> {
        self.package.as_deref()
    }

    /// A hard link to the binary as cargo left it (a copy where linking
    /// fails): cargo replaces the file on the next build.
    fn keep_binary(&self) -> anyhow::Result<PathBuf> {
        let name = self
            .exe
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("emulator");
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        let kept = self
            .exe
            .with_file_name(format!(".{name}.watch-{}-{generation}", std::process::id()));
        if std::fs::hard_link(&self.exe, &kept).is_err() {
            std::fs::copy(&self.exe, &kept)
                .with_context(|| format!("keeping a copy of {}", self.exe.display()))?;
        }
        Ok(kept)
    }

    /// Starts `binary` on a private port and waits until it answers.
    async fn start(&self, binary: PathBuf, reloaded: bool) -> anyhow::Result<Serving> {
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut command = tokio::process::Command::new(&binary);
        command
            .args(&self.args)
            .arg("--port")
            .arg(port.to_string())
            .arg("--public-address")
            .arg(self.public.to_string())
            .arg("--book-handover")
            .arg(&self.handover)
            .envs(self.vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if reloaded {
            command.arg("--reloaded");
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let deadline = Instant::now() + START_WITHIN;
        let probe = format!("http://127.0.0.1:{port}/_emulator/status");
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("it ended ({status}) before it answered");
            }
            let answered = self
                .client
                .get(&probe)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answered.is_ok() {
                return Ok(Serving {
                    child,
                    port,
                    binary,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                anyhow::bail!("it did not answer within {START_WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Swaps the serving process for the binary cargo just built; how long
    /// requests were held.
    pub async fn swap(&self) -> anyhow::Result<Duration> {
        let binary = self.keep_binary()?;
        // Every request under way has its answer's head from now on; new
        // ones wait.
        let mut target = self.target.write().await;
        let began = Instant::now();
        let mut serving = self.serving.lock().await;
        let previous = match serving.take() {
            Some(old) => {
                let binary = old.binary.clone();
                stop_process(old).await;
                Some(binary)
            }
            None => None,
        };
        let started = self.start(binary.clone(), true).await;
        let (now, result) = match started {
            Ok(new) => {
                if let Some(previous) = previous {
                    let _ = std::fs::remove_file(previous);
                }
                (Some(new), Ok(began.elapsed()))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&binary);
                let error = e.context("the new build did not start");
                match previous {
                    Some(previous) => match self.start(previous, true).await {
                        Ok(old) => (
                            Some(old),
                            Err(error.context("the previous build serves again")),
                        ),
                        Err(again) => (None, Err(error.context(format!("{again:#}")))),
                    },
                    None => (None, Err(error)),
                }
            }
        };
        *target = now.as_ref().map(|s| s.port);
        *serving = now;
        result
    }

    /// Whether the serving process ended by itself, and how.
    async fn ended(&self) -> Option<ExitStatus> {
        let mut serving = self.serving.lock().await;
        let status = serving.as_mut()?.child.try_wait().ok()??;
        Some(status)
    }

    /// Starts the serving process's binary again after it crashed.
    async fn restart(&self) -> anyhow::Result<()> {
        let mut target = self.target.write().await;
        let mut serving = self.serving.lock().await;
        let Some(old) = serving.take() else {
            return Ok(());
        };
        *target = None;
        let new = self.start(old.binary, true).await?;
        *target = Some(new.port);
        *serving = Some(new);
        Ok(())
    }

    /// Stops the serving process, after the requests under way.
    async fn stop(&self) {
        let mut target = self.target.write().await;
        *target = None;
        if let Some(old) = self.serving.lock().await.take() {
            let binary = old.binary.clone();
            stop_process(old).await;
            let _ = std::fs::remove_file(binary);
        }
    }
}

/// Asks a process to stop as Ctrl-C does, and waits for it.
async fn stop_process(mut serving: Serving) {
    if let Some(pid) = serving.child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(STOP_WITHIN, serving.child.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            port = serving.port,
            "the old emulator did not stop in time; killed"
        );
        let _ = serving.child.kill().await;
    }
}

/// `up --watch` in-process: the stores, the proxy, the first process, the
/// watcher; until Ctrl-C or SIGTERM, or the process ends by itself.
pub async fn run(plan: Plan) -> anyhow::Result<()> {
    let Plan {
        env,
        port,
        state_dir,
        root,
        migrations,
        exe,
        args,
    } = plan;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .with_context(|| {
            format!("listening on 127.0.0.1:{port} (is another emulator running? use --port)")
        })?;
    let public = listener.local_addr()?;
    let stores = crate::stores::Stores::prepare(
        &env,
        Some(&state_dir),
        crate::stores::Needs::Both,
        migrations,
    )
    .await?;
    let handover = state_dir.join(format!("watch-{}.logbook", std::process::id()));
    let package = package_of(&root, &exe).await;
    let supervisor = Arc::new(Supervisor {
        exe,
        package,
        args,
        vars: vec![
            ("DATABASE_URL", stores.database_url.clone()),
            ("REDIS_URL", stores.redis_url.clone()),
            ("REDIS_CLUSTER", stores.redis_cluster.to_string()),
        ],
        public,
        handover: handover.clone(),
        target: tokio::sync::RwLock::new(None),
        serving: tokio::sync::Mutex::new(None),
        client: reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        generation: AtomicU64::new(0),
    });
    println!("{}", stores.describe());
    let first = match supervisor.keep_binary() {
        Ok(binary) => supervisor.start(binary, false).await,
        Err(e) => Err(e),
    };
    let first = match first {
        Ok(first) => first,
        Err(e) => {
            stores.stop().await?;
            return Err(e.context("starting the emulator's process"));
        }
    };
    *supervisor.target.write().await = Some(first.port);
    *supervisor.serving.lock().await = Some(first);
    println!(
        "--watch: this process holds 127.0.0.1:{} and the stores; the functions run in an \
         emulator process behind it, replaced by each new build.",
        public.port()
    );

    let (stop_watching, stopped) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(crate::watch::run(
        root,
        crate::watch::Target::Emulator(Arc::clone(&supervisor)),
        stopped,
    ));
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(Arc::clone(&supervisor));
    let watching = Arc::clone(&supervisor);
    let shutdown = async move {
        tokio::select! {
            () = crate::app::shutdown_signal() => {}
            status = crashed_or_ended(&watching) => {
                println!("The emulator's process ended ({status}); stopping.");
            }
        }
        let _ = stop_watching.send(true);
        watching.stop().await;
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP");
    if let Ok(Err(e)) = watcher.await {
        tracing::warn!(error = %format!("{e:#}"), "the watcher stopped");
    }
    let _ = std::fs::remove_file(&handover);
    stores.stop().await?;
    served?;
    println!("Stopped.");
    Ok(())
}

/// The workspace package at `root` with a binary named as `exe`.
async fn package_of(root: &Path, exe: &Path) -> Option<String> {
    let name = exe.file_name()?.to_str()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = tokio::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()
        .await
        .ok()?;
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    package_with_binary(&metadata, name)
}

/// In `cargo metadata`'s answer, the package with the binary `name`.
fn package_with_binary(metadata: &serde_json::Value, name: &str) -> Option<String> {
    metadata["packages"].as_array()?.iter().find_map(|package| {
        let has = package["targets"].as_array()?.iter().any(|target| {
            target["name"] == name
                && target["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
        });
        has.then(|| package["name"].as_str().map(str::to_owned))?
    })
}

/// Waits until the serving process ends by itself with success (someone
/// stopped it); one that fails is started again.
async fn crashed_or_ended(supervisor: &Supervisor) -> ExitStatus {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(status) = supervisor.ended().await else {
            continue;
        };
        if status.success() {
            return status;
        }
        println!("The emulator's process failed ({status}); starting it again.");
        if let Err(e) = supervisor.restart().await {
            println!("It did not start again: {e:#}. Save a change to try a new build.");
        }
    }
}

/// Headers that describe one connection, not the request.
fn hop_by_hop(name: &axum::http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// Passes a request to the serving process, with its `Host`, and streams its
/// answer back (the console's events too).
async fn forward(
    State(supervisor): State<Arc<Supervisor>>,
    request: axum::extract::Request,
) -> Response {
    let target = supervisor.target.read().await;
    let Some(port) = *target else {
        return unavailable("the emulator's process is not running; see its output");
    };
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", axum::http::uri::PathAndQuery::as_str);
    let headers: axum::http::HeaderMap = parts
        .headers
        .iter()
        .filter(|(name, _)| !hop_by_hop(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let sent = supervisor
        .client
        .request(parts.method, format!("http://127.0.0.1:{port}{path}"))
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    drop(target);
    match sent {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if !hop_by_hop(name) {
                    response = response.header(name, value);
                }
            }
            response
                .body(axum::body::Body::from_stream(answer.bytes_stream()))
                .unwrap_or_else(|e| unavailable(&e.to_string()))
        }
        Err(e) => unavailable(&format!("the emulator's process did not answer: {e}")),
    }
}

fn unavailable(message: &str) -> Response {
    (
        axum::http::StatusCode::BAD_GATEWAY,
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

/// Starts `book` with the lines a previous process handed over at `path`.
/// The file stays: if this process does not start, the one started again in
/// its place takes them over too.
pub fn take_over_book(book: &shared::logbook::LogBook, path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let mut lines = text.lines();
    let first = lines.next().and_then(|l| l.parse().ok()).unwrap_or(1);
    book.restore(first, lines.map(str::to_owned));
}

/// Writes `book`'s lines to `path` for the next process.
pub fn hand_over_book(book: &shared::logbook::LogBook, path: &Path) -> anyhow::Result<()> {
    let (first, lines) = book.snapshot();
    let mut text = format!("{first}\n");
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("handing the log lines over at {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_behind_gets_up_s_arguments_but_watch_and_port() {
        let args = [
            "up",
            "--port",
            "3000",
            "--watch",
            "--template",
            "t.yaml",
            "--port=9",
        ]
        .map(OsString::from);
        assert_eq!(
            child_args(args),
            ["up", "--template", "t.yaml"].map(OsString::from)
        );
    }

    #[test]
    fn the_package_is_the_one_with_the_binary() {
        let metadata = serde_json::json!({"packages": [
            {"name": "emulator", "targets": [{"name": "emulator", "kind": ["lib"]}]},
            {"name": "shop", "targets": [{"name": "emulator", "kind": ["bin"]}]},
        ]});
        assert_eq!(
            package_with_binary(&metadata, "emulator").as_deref(),
            Some("shop")
        );
        assert_eq!(package_with_binary(&metadata, "other"), None);
    }

    #[test]
    fn a_book_handed_over_keeps_its_lines_and_numbers() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("handover-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("book");
        let old = shared::logbook::LogBook::new(10);
        old.push("{\"a\":1}");
        old.push("{\"b\":2}");
        hand_over_book(&old, &path)?;
        let new = shared::logbook::LogBook::new(10);
        take_over_book(&new, &path);
        let page = new.read(2, 10, |_| true);
        assert_eq!(page.lines.len(), 1);
        assert_eq!(&*page.lines[0], "{\"b\":2}");
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }
}
