//! The whole system from the template: every function ready to invoke, and
//! what drives them besides HTTP — schedules become timers, stream sources
//! read Redis Streams continuously, and the outbox relay wakes on
//! `LISTEN/NOTIFY`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::functions::{self, Function, Functions, Runner};
use crate::invoke::Invocation;
use crate::routes::RouteTable;
use crate::runtime;
use crate::schedule::scheduled_event;
use crate::template::{FunctionSpec, Template};

/// How the functions run.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Linked into the emulator by [`Options::registry`] and called directly
    /// (the default); a function it does not link runs as its binary.
    InProcess,
    /// The real binaries as child processes behind the emulator's Runtime API.
    RuntimeApi {
        /// Where the binaries are (`target/debug` or `target/release`).
        binaries: PathBuf,
        /// The most instances of one function when the template sets no
        /// `ReservedConcurrentExecutions`.
        concurrency: usize,
    },
}

/// What the emulator needs to start the system.
#[derive(Debug, Clone)]
pub struct Options {
    /// The template, with parameter and environment overrides applied.
    pub template: Template,
    pub mode: Mode,
    /// Given to every function that does not set it: the database and Redis
    /// the emulator prepared.
    pub database_url: String,
    pub redis_url: String,
    /// The Redis is a cluster: every function gets `REDIS_CLUSTER=true`.
    pub redis_cluster: bool,
    /// The keys the HTTP APIs' JWT authorizers trust.
    pub trust: crate::auth::Trust,
    /// The functions linked in-process ([`Mode::InProcess`]).
    pub registry: Arc<dyn functions::Registry>,
}

/// In-process, one instance serves every concurrent request, so its pool
/// needs more than a Lambda instance's two connections.
const IN_PROCESS_CONNECTIONS: u32 = 10;

/// The running system, until [`System::stop`].
#[derive(Debug)]
pub struct System {
    pub functions: Arc<Functions>,
    pub routes: RouteTable,
    pub gate: Arc<crate::auth::Gate>,
    template: Template,
    stop: watch::Sender<bool>,
    tasks: Vec<(String, JoinHandle<()>)>,
}

impl System {
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        // Before any function records a value.
        let _installed = crate::metrics::handle();
        let routes = RouteTable::from_template(&options.template);
        let gate = Arc::new(crate::auth::Gate::new(
            &options.template,
            options.trust.clone(),
        )?);
        let functions = build_functions(&options).await?;
        let functions = Arc::new(functions);
        let (stop, _) = watch::channel(false);
        let mut system = Self {
            functions,
            routes,
            gate,
            template: options.template.clone(),
            stop,
            tasks: Vec::new(),
        };
        system.start_drivers(&options).await?;
        Ok(system)
    }

    /// Timers for schedules, stream sources, and the relay's notifications.
    async fn start_drivers(&mut self, options: &Options) -> anyhow::Result<()> {
        let specs: Vec<FunctionSpec> = self.template.functions.clone();
        for spec in specs {
            let Some(function) = self.functions.get(&spec.logical_id).cloned() else {
                continue;
            };
            let continuous = spec.stream_source().is_some();
            if continuous {
                let task = match &function.runner {
                    Runner::Linked(linked) => {
                        let linked = Arc::clone(linked);
                        let stopped = self.stopped();
                        let span = shared::telemetry::function_span(&spec.logical_id);
                        tokio::spawn(
                            async move {
                                let report = linked.serve(Box::pin(stopped)).await;
                                tracing::info!(report = ?report, "stream source stopped");
                            }
                            .instrument(span),
                        )
                    }
                    Runner::Process(_) => {
                        tokio::spawn(keep_invoked(Arc::clone(&function), self.stop.subscribe()))
                    }
                };
                self.tasks
                    .push((format!("{} stream source", spec.logical_id), task));
            } else if spec.is_relay() {
                let task = match &function.runner {
                    Runner::Linked(linked) => {
                        let linked = Arc::clone(linked);
                        let stopped = self.stopped();
                        let span = shared::telemetry::function_span(&spec.logical_id);
                        tokio::spawn(
                            async move {
                                linked.serve(Box::pin(stopped)).await;
                            }
                            .instrument(span),
                        )
                    }
                    Runner::Process(_) => {
                        let listener = sqlx::postgres::PgListener::connect(&options.database_url)
                            .await
                            .context("listening for outbox notifications")?;
                        tokio::spawn(invoke_on_notify(
                            Arc::clone(&function),
                            listener,
                            self.stop.subscribe(),
                        ))
                    }
                };
                self.tasks
                    .push((format!("{} (LISTEN/NOTIFY)", spec.logical_id), task));
            }
            // A stream source reads continuously: its schedule (how AWS keeps it
            // polling) would only start a second reader.
            if continuous {
                continue;
            }
            for schedule in spec.schedules.iter().filter(|s| s.enabled) {
                let rule = format!("{}-{}", spec.logical_id, schedule.event);
                let task = tokio::spawn(timer(
                    Arc::clone(&function),
                    schedule.clone(),
                    rule.clone(),
                    self.stop.subscribe(),
                ));
                self.tasks.push((format!("schedule {rule}"), task));
            }
        }
        Ok(())
    }

    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// The template it runs.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// What the system serves, for the start-up banner.
    pub fn banner(&self, address: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "HTTP API on http://{address}");
        for route in self.routes.routes() {
            let guard = &route.guard;
            let auth = match &guard.authorizer {
                None => "open".to_owned(),
                Some(_) if guard.scopes.is_empty() => "token".to_owned(),
                Some(_) => format!("token with {}", guard.scopes.join(" or ")),
            };
            let _ = writeln!(
                out,
                "  {:<6} {:<28} -> {} ({auth})",
                route.method, route.path, route.function
            );
        }
        if let Some(t) = self.routes.routes().iter().find_map(|r| r.guard.throttle) {
            let _ = writeln!(
                out,
                "  throttled per route: burst {}, {} requests/s",
                t.burst, t.rate
            );
        }
        out.push_str(&self.gate.describe());
        let _ = writeln!(
            out,
            "Lambda Invoke API on http://{address}/2015-03-31/functions/{{name}}/invocations"
        );
        for f in &self.template.functions {
            let how = match self.functions.get(&f.logical_id).map(|f| &f.runner) {
                Some(Runner::Process(_)) => "runtime API",
                _ => "in-process",
            };
            let _ = writeln!(
                out,
                "  {} ({}, {how}, timeout {}s, {} MB)",
                f.logical_id,
                f.binary,
                f.timeout.as_secs(),
                f.memory_mb
            );
            if let Some(source) = f.stream_source() {
                let _ = writeln!(
                    out,
                    "    stream source: group {} on {} ({} partition{} in namespace {}){}",
                    source.group,
                    source.aggregate_types.join(", "),
                    source.partitions,
                    if source.partitions == 1 { "" } else { "s" },
                    source.namespace,
                    settings_summary(&source.settings)
                );
            } else if f.is_relay() {
                let _ = writeln!(
                    out,
                    "    woken by LISTEN/NOTIFY on committed rows of {}",
                    f.environment
                        .get(crate::template::RELAY_OUTBOXES)
                        .map_or("", String::as_str)
                );
            }
            for resource in &f.custom_resources {
                let _ = writeln!(
                    out,
                    "    custom resource {resource}: runs at deploy in AWS; locally the emulator applied the migrations on start"
                );
            }
            for s in &f.schedules {
                let state = if f.stream_source().is_some() {
                    " (locally superseded by the stream source)"
                } else if s.enabled {
                    ""
                } else {
                    " (disabled)"
                };
                let _ = writeln!(out, "    schedule {}: {}{state}", s.event, s.expression);
            }
            for ignored in &f.ignored_events {
                let _ = writeln!(out, "    event {ignored}: not emulated");
            }
            if !f.unresolved_environment.is_empty() {
                let _ = writeln!(
                    out,
                    "    not resolvable locally (the emulator supplies its own or leaves them out): {}",
                    f.unresolved_environment.join(", ")
                );
            }
        }
        let not_emulated = self.template.not_emulated_lines();
        if !not_emulated.is_empty() {
            let _ = writeln!(
                out,
                "Not emulated (the template sets them; locally they do nothing):"
            );
            for line in not_emulated {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }

    /// Stops the drivers, then the functions: in-flight invocations finish,
    /// consumers acknowledge what they handled, child processes end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.functions.shutdown(Duration::from_secs(10)).await;
        for (name, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(task = %name, error = %e, "a background task ended abnormally");
            }
        }
    }
}

fn settings_summary(settings: &BTreeMap<String, String>) -> String {
    if settings.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(", {}", parts.join(" "))
}

/// The template's environment, plus what the emulator supplies where the
/// template leaves a variable out or cannot resolve it locally.
fn environment(spec: &FunctionSpec, options: &Options) -> BTreeMap<String, String> {
    let mut env = spec.environment.clone();
    env.entry("DATABASE_URL".into())
        .or_insert_with(|| options.database_url.clone());
    env.entry("REDIS_URL".into())
        .or_insert_with(|| options.redis_url.clone());
    // The store the emulator prepared decides, not the template's parameter for AWS.
    env.insert("REDIS_CLUSTER".into(), options.redis_cluster.to_string());
    if matches!(options.mode, Mode::InProcess) {
        let configured = env
            .get("DATABASE_MAX_CONNECTIONS")
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        env.insert(
            "DATABASE_MAX_CONNECTIONS".into(),
            configured.max(IN_PROCESS_CONNECTIONS).to_string(),
        );
    }
    env
}

/// Every function of the template, ready to invoke (nothing drives them yet).
pub async fn build_functions(options: &Options) -> anyhow::Result<Functions> {
    let mut functions = Functions::default();
    for spec in &options.template.functions {
        let env = environment(spec, options);
        let function = match &options.mode {
            Mode::InProcess => {
                match functions::link(spec.clone(), env.clone(), options.registry.as_ref()).await? {
                    Some(linked) => linked,
                    None => {
                        let binary = unlinked_binary(spec).await?;
                        process(spec, env, binary, 4)
                    }
                }
            }
            Mode::RuntimeApi {
                binaries,
                concurrency,
            } => {
                let binary = binaries.join(&spec.binary);
                anyhow::ensure!(
                    binary.is_file(),
                    "{}: the binary {} is missing; build the functions first (`cargo build --bins`, or `--release`) or pass --functions-dir",
                    spec.logical_id,
                    binary.display()
                );
                process(spec, env, binary, *concurrency)
            }
        };
        functions.insert(function);
    }
    Ok(functions)
}

/// A function run as its binary behind the Runtime API.
fn process(
    spec: &FunctionSpec,
    env: BTreeMap<String, String>,
    binary: PathBuf,
    concurrency: usize,
) -> Function {
    let pool = runtime::Pool::new(runtime::FunctionProcess {
        name: spec.logical_id.clone(),
        binary,
        env: env.clone(),
        timeout: spec.timeout,
        memory_mb: spec.memory_mb,
        max_concurrency: spec
            .reserved_concurrency
            .map_or(concurrency, |n| n as usize),
        init_timeout: Duration::from_secs(10),
    });
    Function {
        spec: spec.clone(),
        env,
        runner: Runner::Process(pool),
        in_flight: crate::functions::InFlight::default(),
        errors: std::sync::atomic::AtomicU64::new(0),
    }
}

/// The binary of a function the registry does not link, beside the
/// emulator's own executable (`target/debug` or `target/release`); built
/// there with cargo first when it is missing, so that a function added to the
/// template runs without editing the emulator.
async fn unlinked_binary(spec: &FunctionSpec) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the emulator's executable")?;
    let mut dir = exe
        .parent()
        .context("the emulator's executable has no directory")?;
    // A test binary lives in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let binary = dir.join(&spec.binary);
    if binary.is_file() {
        return Ok(binary);
    }
    let release = dir.ends_with("release");
    tracing::info!(
        function = %spec.logical_id,
        binary = %spec.binary,
        "not linked into this emulator: building its binary to run it behind the Runtime API"
    );
    let mut cargo =
        tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args(["build", "--bin", &spec.binary]);
    if release {
        cargo.arg("--release");
    }
    let status = cargo
        .status()
        .await
        .with_context(|| format!("running cargo build --bin {}", spec.binary))?;
    anyhow::ensure!(
        status.success() && binary.is_file(),
        "{}: the binary {} is not linked into this emulator and `cargo build --bin {}` did not build {}",
        spec.logical_id,
        spec.binary,
        spec.binary,
        binary.display()
    );
    Ok(binary)
}

/// Fires a schedule's invocations (asynchronously, as EventBridge does) until stopped.
async fn timer(
    function: Arc<Function>,
    schedule: crate::template::ScheduleSpec,
    rule: String,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let now = chrono::Utc::now();
        let Some(next) = schedule.expression.next_after(now) else {
            tracing::info!(%rule, "the schedule has no further occurrence");
            return;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            () = until(&mut stop) => return,
            () = tokio::time::sleep(wait) => {}
        }
        let payload = match &schedule.input {
            Some(input) => input.to_string(),
            None => scheduled_event(&rule, next).to_string(),
        };
        let function = Arc::clone(&function);
        let rule = rule.clone();
        tokio::spawn(async move {
            match function.invoke(Invocation::new(payload)).await {
                Ok(_) => tracing::debug!(%rule, "scheduled invocation done"),
                Err(e) => tracing::warn!(%rule, error = %e, "scheduled invocation failed"),
            }
        });
    }
}

/// A stream-source function behind the Runtime API: one invocation after
/// another, as a poller keeps it busy, until stopped.
async fn keep_invoked(function: Arc<Function>, mut stop: watch::Receiver<bool>) {
    let rule = format!("{}-StreamSource", function.spec.logical_id);
    let mut backoff = Duration::from_millis(200);
    while !*stop.borrow() {
        let payload = scheduled_event(&rule, chrono::Utc::now()).to_string();
        let invocation = function.invoke(Invocation::new(payload));
        let result = tokio::select! {
            result = invocation => result,
            // Shutdown ends the invocation from the inside (SIGTERM), so
            // the batches in hand are acknowledged; wait for it.
            () = until(&mut stop) => return,
        };
        match result {
            Ok(_) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(function = %function.spec.logical_id, error = %e, "stream source invocation failed");
                tokio::select! {
                    () = until(&mut stop) => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The relay behind the Runtime API: invoked whenever outbox rows commit
/// (notifications that arrive meanwhile coalesce into one more invocation).
async fn invoke_on_notify(
    function: Arc<Function>,
    mut listener: sqlx::postgres::PgListener,
    mut stop: watch::Receiver<bool>,
) {
    if let Err(e) = listener.listen("outbox").await {
        tracing::error!(error = %e, "LISTEN outbox failed; the relay runs on its schedule only");
        return;
    }
    let mut pending = true; // drain what is there at start
    loop {
        if pending {
            pending = false;
            let payload = scheduled_event("outbox-notify", chrono::Utc::now()).to_string();
            if let Err(e) = function.invoke(Invocation::new(payload)).await {
                tracing::warn!(error = %e, "relay invocation failed; rows stay pending");
            }
            // Whatever arrived during the invocation: one more run.
            while listener.next_buffered().is_some() {
                pending = true;
            }
            if pending {
                continue;
            }
        }
        tokio::select! {
            () = until(&mut stop) => return,
            n = listener.recv() => {
                if let Err(e) = n {
                    tracing::warn!(error = %e, "outbox listener lost its connection; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                pending = true;
            }
        }
    }
}

/// Completes once `stop` is set (the guard `wait_for` returns is not `Send`).
async fn until(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
