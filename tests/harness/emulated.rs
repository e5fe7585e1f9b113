//! The emulator running in the test process: the repository's template, a
//! fresh database, the shared Redis under a namespace of its own, HTTP on a
//! spare port. In-process, or with the real binaries behind the Runtime API.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use emulator::system::{Mode, Options, System};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::TestDb;

/// The repository's `template.yaml`.
pub fn template() -> anyhow::Result<emulator::template::Template> {
    emulator::template::parse(include_str!("../../template.yaml"))
}

/// Where cargo put the workspace's binaries (`target/debug`): the parent of
/// this test binary's `deps` directory. `cargo test --workspace` builds the
/// function binaries before any test runs (each function crate has an
/// integration test, which makes cargo build its binary).
pub fn binaries_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().context("test binary without a directory")?;
    let dir = deps.parent().context("test binary outside target/")?;
    Ok(dir.to_path_buf())
}

/// The real binaries' mode, or an error naming the missing binary and the fix.
pub fn runtime_api() -> anyhow::Result<Mode> {
    let binaries = binaries_dir()?;
    for name in shop::LINKED {
        anyhow::ensure!(
            binaries.join(name).is_file(),
            "{} is not built; run `cargo test --workspace` (or `cargo build --bins`) first",
            binaries.join(name).display()
        );
    }
    Ok(Mode::RuntimeApi {
        binaries,
        concurrency: 4,
    })
}

/// An emulator serving HTTP, until [`RunningEmulator::stop`].
#[derive(Debug)]
pub struct RunningEmulator {
    pub base: String,
    pub namespace: String,
    pub system: Option<System>,
    /// Where its streams are.
    pub redis: Store,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<anyhow::Result<()>>,
}

/// Starts the template's system on `db` with `env` added to every function
/// (`Parameters` of an env-vars file) and the stream namespace unique to the test
/// (unless `env` names one).
pub async fn start(
    db: &TestDb,
    mode: Mode,
    env: &[(&str, &str)],
) -> anyhow::Result<RunningEmulator> {
    start_with(db, mode, env, template()?, crate::auth::trust()).await
}

/// [`start`] with the routes' throttling lifted ([`unthrottled_template`]): the
/// benchmarks' and load tests' emulator.
pub async fn start_unthrottled(
    db: &TestDb,
    mode: Mode,
    env: &[(&str, &str)],
) -> anyhow::Result<RunningEmulator> {
    start_with(db, mode, env, unthrottled_template()?, crate::auth::trust()).await
}

/// [`start`] with a template of the test's (say, with parameter overrides) and
/// the keys its authorizers trust.
pub async fn start_with(
    db: &TestDb,
    mode: Mode,
    env: &[(&str, &str)],
    template: emulator::template::Template,
    trust: emulator::auth::Trust,
) -> anyhow::Result<RunningEmulator> {
    let redis = Store {
        url: crate::redis_url(),
        cluster: false,
    };
    start_on(db, &redis, mode, env, template, trust).await
}

/// The Redis an emulator uses: one node's URL, or a cluster's nodes.
#[derive(Debug, Clone)]
pub struct Store {
    pub url: String,
    pub cluster: bool,
}

/// [`start_with`] on the Redis `redis`.
pub async fn start_on(
    db: &TestDb,
    redis: &Store,
    mode: Mode,
    env: &[(&str, &str)],
    mut template: emulator::template::Template,
    trust: emulator::auth::Trust,
) -> anyhow::Result<RunningEmulator> {
    // The test's own namespace (two emulators on one system), else a new one.
    let namespace = env
        .iter()
        .find(|(k, _)| *k == "STREAM_NAMESPACE")
        .map_or_else(crate::unique_namespace, |(_, v)| (*v).to_owned());
    let mut parameters: BTreeMap<&str, &str> = env.iter().copied().collect();
    parameters.insert("STREAM_NAMESPACE", &namespace);
    // Every customer may buy unless the test says otherwise.
    parameters
        .entry("DEFAULT_CREDIT_LIMIT_CENTS")
        .or_insert(crate::TEST_CREDIT_LIMIT_CENTS);
    let overrides = serde_json::json!({ "Parameters": parameters });
    emulator::template::apply_env_overrides(&mut template, &overrides.to_string())?;
    let system = System::start(Options {
        template,
        mode,
        database_url: db.url(),
        redis_url: redis.url.clone(),
        redis_cluster: redis.cluster,
        trust,
        registry: std::sync::Arc::new(shop::Shop),
    })
    .await?;
    let mut running = serve(system, namespace).await?;
    running.redis = redis.clone();
    Ok(running)
}

/// The repository's `template.yaml` with the routes' throttling lifted: for load
/// that measures the system, not API Gateway's limits (`tests/auth.rs` tests those).
pub fn unthrottled_template() -> anyhow::Result<emulator::template::Template> {
    template_with(&[
        ("ApiThrottlingBurstLimit", "1000000"),
        ("ApiThrottlingRateLimit", "1000000"),
    ])
}

/// The repository's `template.yaml` with these parameter values.
pub fn template_with(parameters: &[(&str, &str)]) -> anyhow::Result<emulator::template::Template> {
    let overrides = parameters
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    emulator::template::parse_with_parameters(include_str!("../../template.yaml"), &overrides)
}

/// Serves `system` over HTTP on a spare port; `namespace` is the streams
/// [`RunningEmulator::stop`] deletes.
pub async fn serve(system: System, namespace: String) -> anyhow::Result<RunningEmulator> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(emulator::serve(
        emulator::Emulator::of(&system),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    Ok(RunningEmulator {
        base,
        namespace,
        system: Some(system),
        redis: Store {
            url: crate::redis_url(),
            cluster: false,
        },
        stop: Some(stop),
        server,
    })
}

impl RunningEmulator {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops serving, then the system (in-flight invocations finish), and
    /// deletes the test's streams.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.halt().await?;
        if self.redis.cluster {
            // A test's cluster goes with the test.
            return Ok(());
        }
        crate::delete_streams(&self.redis.url, &self.namespace).await
    }

    /// Stops as [`RunningEmulator::stop`] and leaves the streams to another
    /// emulator of the same system (a redeployment).
    pub async fn stop_leaving_streams(mut self) -> anyhow::Result<()> {
        self.halt().await
    }

    async fn halt(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.server).await??;
        if let Some(system) = self.system.take() {
            system.stop().await;
        }
        Ok(())
    }
}

/// What the console and `emulator status` read for a running emulator: its
/// relay's view of the outboxes, and the streams of its namespace on `redis`.
pub fn status_source(
    db: &TestDb,
    redis: shared::redis_link::Redis,
    running: &RunningEmulator,
    template: &emulator::template::Template,
) -> anyhow::Result<std::sync::Arc<emulator::status::Source>> {
    Ok(std::sync::Arc::new(emulator::status::Source {
        relay: shared::relay::Relay::new(
            db.pool.clone(),
            redis.clone(),
            shared::relay::RelayOptions {
                outboxes: template.relay_outboxes()?,
                stream_namespace: running.namespace.clone(),
                ..shared::relay::RelayOptions::default()
            },
        ),
        redis,
        namespace: running.namespace.clone(),
    }))
}

/// The web console over `source`, as `emulator up` builds it for the shop.
pub fn console(
    db: &TestDb,
    source: std::sync::Arc<emulator::status::Source>,
    template: &emulator::template::Template,
) -> emulator::console::Console {
    emulator::console::Console {
        source,
        groups: emulator::cli::groups(template),
        max_redrives: shared::source::DEFAULT_MAX_REDRIVES,
        views: emulator::functions::Registry::console_views(&shop::Shop),
        pool: db.pool.clone(),
    }
}
