//! `--runtime-api` mode: a function's real binary runs as child processes
//! against the emulator's own implementation of the AWS Lambda Runtime API
//! (2018-06-01), so what runs locally is the very binary that is deployed.
//!
//! A [`Pool`] per function holds its instances. An instance is one child
//! process plus a Runtime API listener of its own on `127.0.0.1:0`, handed to
//! the child as `AWS_LAMBDA_RUNTIME_API`: whatever reaches that port comes from
//! that process, so requests never have to be matched to processes.
//!
//! An instance is *starting* from its spawn until its first
//! `GET /invocation/next` (that span is its cold start), then *idle* in the
//! pool or *busy* with one invocation, until it is *gone*: it timed out and was
//! killed, its process exited, or its init failed.
//!
//! **Invariant:** a child never outlives its instance. Dropping an instance
//! (or the pool) kills its process group; `kill_on_drop` covers the Tokio
//! runtime being torn down.
//!
//! **Invariant:** invocations are never queued. With every instance the
//! concurrency limit allows busy, an invoke is throttled, as AWS throttles
//! synchronous invokes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::{Path as FsPath, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};

use crate::invoke::{deadline_ms, new_trace_id, Invocation, InvokeError};

/// The most a function may return, as on AWS (6 MB, and AWS's extra 100 bytes).
pub const MAX_RESPONSE_BYTES: usize = 6_291_556;
/// Lines of a child's stderr kept for init errors.
const STDERR_TAIL_LINES: usize = 20;
/// Between SIGTERM and SIGKILL at shutdown (Lambda gives a runtime 500 ms).
const TERM_GRACE: Duration = Duration::from_millis(500);
/// How long to wait for a killed process to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(2);
/// How long to wait, after a process exits, for the rest of its output.
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);
/// Emulator variables a child inherits; everything else comes from its spec,
/// as the in-process mode sees only the function's own environment.
const INHERITED_ENV: [&str; 9] = [
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "LC_ALL",
    "TZ",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
];

/// One function to run as processes: its binary and its configuration.
#[derive(Debug, Clone)]
pub struct FunctionProcess {
    /// The logical id (e.g. `CreateOrderFunction`): `AWS_LAMBDA_FUNCTION_NAME` and the ARN.
    pub name: String,
    /// The binary, a Lambda `bootstrap`.
    pub binary: PathBuf,
    /// The function's environment (template and overrides); Lambda's reserved
    /// variables are added on top.
    pub env: BTreeMap<String, String>,
    /// The function's `Timeout`, per invocation.
    pub timeout: Duration,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (not enforced).
    pub memory_mb: u32,
    /// The most instances at once; one more invocation is throttled.
    pub max_concurrency: usize,
    /// How long a new instance may take to reach its first `next` (AWS: 10 s).
    pub init_timeout: Duration,
}

impl FunctionProcess {
    /// A function with Lambda's defaults: 3 s timeout, 128 MB, 10 s init,
    /// at most 10 instances, no environment of its own.
    pub fn new(name: impl Into<String>, binary: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            binary: binary.into(),
            env: BTreeMap::new(),
            timeout: Duration::from_secs(3),
            memory_mb: 128,
            max_concurrency: 10,
            init_timeout: Duration::from_secs(10),
        }
    }

    /// `arn:aws:lambda:us-east-1:000000000000:function:<name>`.
    pub fn arn(&self) -> String {
        format!(
            "arn:aws:lambda:us-east-1:000000000000:function:{}",
            self.name
        )
    }
}

/// The instances of one function. Cheap to clone: clones share the instances.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    spec: FunctionProcess,
    arn: String,
    slots: Mutex<Slots>,
    /// Invocations and prewarms under way; shutdown waits for zero.
    in_flight: watch::Sender<usize>,
    last_init: Mutex<Option<Duration>>,
    /// Told whenever an instance goes back to idle or a slot frees up.
    freed: tokio::sync::Notify,
}

#[derive(Default)]
struct Slots {
    /// Every instance with a process (starting ones once spawned, idle, busy).
    all: HashMap<u64, Arc<Instance>>,
    /// Instances waiting for work, the most recently used last.
    idle: Vec<Arc<Instance>>,
    /// Cold starts that hold a slot but have no process yet.
    starting: usize,
    next_id: u64,
    /// Shutting down: no new invocations.
    closed: bool,
    /// Instances of code replaced by [`Pool::retire`]: stopped when their
    /// invocation ends instead of going back to idle.
    retired: std::collections::HashSet<u64>,
    /// New instances busy with their first invocation (slow: connections
    /// are opened, caches filled).
    warming: usize,
}

enum Acquired {
    Warm(Arc<Instance>),
    Cold(u64),
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("function", &self.inner.spec.name)
            .field("binary", &self.inner.spec.binary)
            .field("instances", &self.instances())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool with no instance yet: the first invocation (or [`Pool::prewarm`]) starts one.
    pub fn new(spec: FunctionProcess) -> Self {
        let arn = spec.arn();
        Self {
            inner: Arc::new(PoolInner {
                spec,
                arn,
                slots: Mutex::new(Slots::default()),
                in_flight: watch::Sender::new(0),
                last_init: Mutex::new(None),
                freed: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The function's spec.
    pub fn spec(&self) -> &FunctionProcess {
        &self.inner.spec
    }

    /// One invocation on an idle instance, or on a new one (a cold start, whose
    /// init error is this invocation's error); throttled when every instance
    /// the limit allows is busy.
    pub async fn invoke(&self, invocation: Invocation) -> Result<Bytes, InvokeError> {
        // A task of its own: the invocation runs to its end even if the caller
        // goes away, as on AWS, and the pool's bookkeeping is never cut short.
        let pool = self.clone();
        tokio::spawn(async move { pool.invoke_in_task(invocation).await })
            .await
            .unwrap_or_else(|join| Err(task_failed(&join)))
    }

    /// Starts one more instance and waits for its first `next`, so init
    /// errors show before the first request; returns its cold-start time.
    /// Throttled when the pool is at its limit or shutting down.
    pub async fn prewarm(&self) -> Result<Duration, InvokeError> {
        let pool = self.clone();
        tokio::spawn(async move {
            let _in_flight = InFlight::enter(&pool.inner.in_flight);
            let id = {
                let mut slots = lock(&pool.inner.slots);
                if slots.closed || !pool.has_room(&slots) {
                    return Err(InvokeError::Throttled);
                }
                pool.reserve(&mut slots)
            };
            let (instance, init) = pool.cold_start(id).await?;
            pool.warmed();
            pool.release(instance);
            Ok(init)
        })
        .await
        .unwrap_or_else(|join| Err(task_failed(&join)))
    }

    /// Instances with a live process: starting, idle or busy.
    pub fn instances(&self) -> usize {
        let slots = lock(&self.inner.slots);
        slots.all.values().filter(|i| !i.has_exited()).count() + slots.starting
    }

    /// The latest cold start: from spawning the process to its first `next`.
    pub fn last_init_duration(&self) -> Option<Duration> {
        *lock(&self.inner.last_init)
    }

    /// Stops taking invocations (they are throttled from now on), waits up to
    /// `grace` for those under way, then stops every process: SIGTERM, and
    /// SIGKILL for those still running 500 ms later.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown_with(grace, false).await;
    }

    /// [`Pool::shutdown`], but SIGTERM goes to every instance first: for
    /// functions whose invocations run long and end early on SIGTERM (the
    /// stream consumers finish their batches, then respond).
    pub async fn terminate(&self, grace: Duration) {
        self.shutdown_with(grace, true).await;
    }

    async fn shutdown_with(&self, grace: Duration, terminate_first: bool) {
        let name = &self.inner.spec.name;
        {
            let mut slots = lock(&self.inner.slots);
            slots.closed = true;
            slots.idle.clear();
        }
        if terminate_first {
            let instances: Vec<Arc<Instance>> =
                lock(&self.inner.slots).all.values().cloned().collect();
            for instance in &instances {
                instance.signal(Stop::Terminate);
            }
        }
        let mut in_flight = self.inner.in_flight.subscribe();
        if tokio::time::timeout(grace, in_flight.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!(function = %name, ?grace, "invocations still running after the grace period; stopping them");
        }
        let instances: Vec<Arc<Instance>> = lock(&self.inner.slots)
            .all
            .drain()
            .map(|(_, instance)| instance)
            .collect();
        for instance in &instances {
            instance.signal(Stop::Terminate);
        }
        let term_deadline = tokio::time::Instant::now() + TERM_GRACE;
        for instance in &instances {
            let _ = tokio::time::timeout_at(term_deadline, instance.exited()).await;
        }
        for instance in instances.iter().filter(|i| !i.has_exited()) {
            instance.signal(Stop::Kill);
        }
        for instance in &instances {
            instance.wait_exit(REAP_WAIT).await;
        }
        if !instances.is_empty() {
            tracing::info!(function = %name, stopped = instances.len(), "function processes stopped");
        }
    }

    async fn invoke_in_task(&self, mut invocation: Invocation) -> Result<Bytes, InvokeError> {
        let _in_flight = InFlight::enter(&self.inner.in_flight);
        // Both travel as header values; the runtime cannot take anything else.
        if HeaderValue::from_str(&invocation.request_id).is_err() {
            invocation.request_id = uuid::Uuid::now_v7().to_string();
        }
        if let Some(trace) = &invocation.trace_id {
            if HeaderValue::from_str(trace).is_err() {
                invocation.trace_id = None;
            }
        }
        let (instance, cold) = match self.acquire_waiting().await? {
            Acquired::Warm(instance) => (instance, false),
            Acquired::Cold(id) => (self.cold_start(id).await?.0, true),
        };
        let request_id = invocation.request_id.clone();
        let result = instance.invoke(invocation, self.inner.spec.timeout).await;
        if cold {
            self.warmed();
        }
        match &result {
            Ok(_) | Err(InvokeError::Function { .. }) => self.release(instance),
            Err(error) => {
                // Timed out (or its process is gone): the instance is not reused.
                tracing::warn!(
                    function = %self.inner.spec.name,
                    pid = instance.pid,
                    %request_id,
                    %error,
                    "invocation failed; the instance is discarded"
                );
                instance.kill().await;
                self.remove(&instance);
            }
        }
        result
    }

    fn has_room(&self, slots: &Slots) -> bool {
        slots.all.len() + slots.starting < self.inner.spec.max_concurrency
    }

    fn reserve(&self, slots: &mut Slots) -> u64 {
        slots.starting += 1;
        slots.next_id += 1;
        slots.next_id
    }

    /// [`Pool::acquire`], but while the pool is at its limit only for a
    /// while ([`Pool::transient`]: a burst of cold starts, a swap under
    /// `--watch`), the invocation waits for a free instance (up to the init
    /// timeout) instead of being throttled. At the limit with warm instances
    /// all busy, it is throttled, as in AWS.
    async fn acquire_waiting(&self) -> Result<Acquired, InvokeError> {
        let deadline = tokio::time::Instant::now() + self.inner.spec.init_timeout;
        loop {
            let freed = self.inner.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a slot freed meanwhile is not missed.
            freed.as_mut().enable();
            match self.acquire() {
                Err(InvokeError::Throttled)
                    if self.transient() && tokio::time::Instant::now() < deadline =>
                {
                    let _ = tokio::time::timeout_at(deadline, freed).await;
                }
                other => return other,
            }
        }
    }

    /// Whether the pool is at its limit only for a while: instances
    /// starting or busy with their first invocation, or retired ones
    /// finishing.
    fn transient(&self) -> bool {
        let slots = lock(&self.inner.slots);
        !slots.closed && (slots.starting > 0 || slots.warming > 0 || !slots.retired.is_empty())
    }

    /// An idle instance, or a reserved slot for a new one.
    fn acquire(&self) -> Result<Acquired, InvokeError> {
        let mut slots = lock(&self.inner.slots);
        if slots.closed {
            return Err(InvokeError::Throttled);
        }
        while let Some(instance) = slots.idle.pop() {
            if instance.has_exited() {
                // Its process died while idle.
                slots.all.remove(&instance.id);
                continue;
            }
            return Ok(Acquired::Warm(instance));
        }
        if self.has_room(&slots) {
            return Ok(Acquired::Cold(self.reserve(&mut slots)));
        }
        Err(InvokeError::Throttled)
    }

    /// Spawns an instance into the reserved slot `id` and waits for its first `next`.
    async fn cold_start(&self, id: u64) -> Result<(Arc<Instance>, Duration), InvokeError> {
        let spec = &self.inner.spec;
        let spawned = Instance::spawn(spec, &self.inner.arn, id).await;
        let (instance, closed) = {
            let mut slots = lock(&self.inner.slots);
            slots.starting = slots.starting.saturating_sub(1);
            let instance = spawned?;
            if !slots.closed {
                slots.all.insert(id, Arc::clone(&instance));
                // Warming until its first invocation ends ([`Pool::warmed`]).
                slots.warming += 1;
            }
            (instance, slots.closed)
        };
        self.inner.freed.notify_waiters();
        if closed {
            // Shutdown began while it was spawning.
            instance.kill().await;
            return Err(InvokeError::Throttled);
        }
        match instance.wait_ready(spec.init_timeout).await {
            Ok(init) => {
                *lock(&self.inner.last_init) = Some(init);
                tracing::info!(
                    function = %spec.name,
                    pid = instance.pid,
                    port = instance.port,
                    ?init,
                    "cold start"
                );
                Ok((instance, init))
            }
            Err(error) => {
                tracing::warn!(function = %spec.name, pid = instance.pid, %error, "init failed");
                self.warmed();
                self.remove(&instance);
                Err(error)
            }
        }
    }

    /// Back to idle after an invocation, unless the pool is closing, the
    /// process is gone, or the instance was retired (then it stops).
    fn release(&self, instance: Arc<Instance>) {
        let retired = {
            let mut slots = lock(&self.inner.slots);
            if instance.has_exited() {
                slots.all.remove(&instance.id);
                slots.retired.remove(&instance.id);
                None
            } else if slots.retired.remove(&instance.id) {
                slots.all.remove(&instance.id);
                Some(instance)
            } else {
                if !slots.closed && slots.all.contains_key(&instance.id) {
                    slots.idle.push(instance);
                }
                // Otherwise shutdown holds (or has already stopped) it.
                None
            }
        };
        if let Some(instance) = retired {
            stop_in_background(instance);
        }
        self.inner.freed.notify_waiters();
    }

    /// Retires every instance, after the function's binary was replaced: new
    /// invocations start new instances from the binary as it is now; idle
    /// instances stop at once; busy ones finish their invocation on the old
    /// code, then stop. With `end_early`, busy ones are asked to end their
    /// invocation early first (SIGTERM: a stream consumer finishes and
    /// acknowledges its batch, gives up its leases, and responds). Returns
    /// how many instances were retired.
    pub fn retire(&self, end_early: bool) -> usize {
        let (idle, busy) = {
            let mut slots = lock(&self.inner.slots);
            let idle = std::mem::take(&mut slots.idle);
            for instance in &idle {
                slots.all.remove(&instance.id);
            }
            let busy: Vec<Arc<Instance>> = slots.all.values().cloned().collect();
            let ids: Vec<u64> = busy.iter().map(|i| i.id).collect();
            slots.retired.extend(ids);
            (idle, busy)
        };
        if end_early {
            for instance in &busy {
                instance.signal(Stop::Terminate);
            }
        }
        let retired = idle.len() + busy.len();
        for instance in idle {
            stop_in_background(instance);
        }
        retired
    }

    /// A new instance's first invocation (or its prewarm) is over.
    fn warmed(&self) {
        let mut slots = lock(&self.inner.slots);
        slots.warming = slots.warming.saturating_sub(1);
    }

    fn remove(&self, instance: &Instance) {
        let mut slots = lock(&self.inner.slots);
        slots.all.remove(&instance.id);
        slots.retired.remove(&instance.id);
        slots.idle.retain(|i| i.id != instance.id);
        drop(slots);
        self.inner.freed.notify_waiters();
    }
}

/// SIGTERM, and SIGKILL if it still runs [`TERM_GRACE`] later; reaped.
fn stop_in_background(instance: Arc<Instance>) {
    tokio::spawn(async move {
        instance.signal(Stop::Terminate);
        if tokio::time::timeout(TERM_GRACE, instance.exited())
            .await
            .is_err()
        {
            instance.signal(Stop::Kill);
        }
        instance.wait_exit(REAP_WAIT).await;
    });
}

/// Counts an invocation under way for as long as it lives.
struct InFlight<'a>(&'a watch::Sender<usize>);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a watch::Sender<usize>) -> Self {
        counter.send_modify(|n| *n += 1);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Where an instance is in its life, as its supervisor and its Runtime API see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Spawned; its init runs.
    Starting,
    /// It called `next` for the first time, `init` after its spawn.
    Ready { init: Duration },
    /// It posted `/init/error` (the error is in [`RuntimeApi::init_error`]).
    InitFailed,
    /// Its process is gone (exit status, as text). Final.
    Exited(String),
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Terminate,
    Kill,
}

/// One process and its Runtime API.
struct Instance {
    id: u64,
    pid: Option<u32>,
    port: u16,
    api: Arc<RuntimeApi>,
    /// Invocations for its `next`.
    dispatch: mpsc::Sender<Dispatch>,
    phase: watch::Receiver<Phase>,
    /// To its supervisor; dropping it kills the process.
    stop: mpsc::UnboundedSender<Stop>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    server: AbortHandle,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Instance {
    async fn spawn(spec: &FunctionProcess, arn: &str, id: u64) -> Result<Arc<Self>, InvokeError> {
        let binary = tokio::fs::canonicalize(&spec.binary)
            .await
            .map_err(|e| invalid_entrypoint(&spec.binary, &e))?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| emulator_failure("binding the Runtime API listener", &e))?;
        let port = listener
            .local_addr()
            .map_err(|e| emulator_failure("reading the Runtime API address", &e))?
            .port();

        let (dispatch, dispatch_rx) = mpsc::channel(1);
        let (phase_tx, phase) = watch::channel(Phase::Starting);
        let api = Arc::new(RuntimeApi {
            function: spec.name.clone(),
            arn: arn.to_owned(),
            spawned_at: Instant::now(),
            dispatch: tokio::sync::Mutex::new(dispatch_rx),
            pending: Mutex::new(HashMap::new()),
            phase: phase_tx.clone(),
            init_error: Mutex::new(None),
        });
        let router = router(Arc::clone(&api));
        let function = spec.name.clone();
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(function = %function, error = %e, "the Runtime API listener failed");
            }
        });

        let mut command = Command::new(&binary);
        command
            .env_clear()
            .envs(environment(spec, &binary, port))
            .current_dir(binary.parent().unwrap_or(FsPath::new("/")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: the terminal's Ctrl-C reaches the emulator
            // only, which lets in-flight invocations finish before stopping it.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                server.abort();
                return Err(invalid_entrypoint(&binary, &e));
            }
        };
        let pid = child.id();

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut output = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            output.push(tokio::spawn(forward_lines(
                stdout,
                spec.name.clone(),
                "stdout",
                None,
            )));
        }
        if let Some(stderr) = child.stderr.take() {
            output.push(tokio::spawn(forward_lines(
                stderr,
                spec.name.clone(),
                "stderr",
                Some(Arc::clone(&stderr_tail)),
            )));
        }
        let (stop, stop_rx) = mpsc::unbounded_channel();
        tokio::spawn(supervise(
            child,
            stop_rx,
            phase_tx,
            output,
            spec.name.clone(),
        ));
        tracing::debug!(function = %spec.name, ?pid, port, "spawned");

        Ok(Arc::new(Self {
            id,
            pid,
            port,
            api,
            dispatch,
            phase,
            stop,
            stderr_tail,
            server: server.abort_handle(),
        }))
    }

    /// Waits for the first `next`; on any failure the process is stopped.
    async fn wait_ready(&self, init_timeout: Duration) -> Result<Duration, InvokeError> {
        let mut phase = self.phase.clone();
        let settled = tokio::time::timeout(init_timeout, async {
            phase
                .wait_for(|p| !matches!(p, Phase::Starting))
                .await
                .map(|p| (*p).clone())
        })
        .await;
        match settled {
            Ok(Ok(Phase::Ready { init })) => Ok(init),
            Ok(_) => {
                let error = self.init_failure().await;
                self.kill().await;
                Err(error)
            }
            Err(_elapsed) => {
                self.kill().await;
                Err(InvokeError::Init {
                    error_type: "Runtime.InitTimeout".into(),
                    error_message: format!(
                        "Init did not reach the first /next within {:.2} seconds{}",
                        init_timeout.as_secs_f64(),
                        self.stderr_tail()
                    ),
                })
            }
        }
    }

    /// The init error it posted, or how its process ended.
    async fn init_failure(&self) -> InvokeError {
        if let Some((error_type, error_message)) = lock(&self.api.init_error).take() {
            return InvokeError::Init {
                error_type,
                error_message,
            };
        }
        let status = self
            .wait_exit(REAP_WAIT)
            .await
            .unwrap_or_else(|| "unknown status".into());
        InvokeError::Init {
            error_type: "Runtime.ExitError".into(),
            error_message: format!("Runtime exited with error: {status}{}", self.stderr_tail()),
        }
    }

    /// Hands `invocation` to its `next` and waits for the outcome, at most `timeout`.
    async fn invoke(
        &self,
        invocation: Invocation,
        timeout: Duration,
    ) -> Result<Bytes, InvokeError> {
        let Invocation {
            request_id,
            payload,
            trace_id,
        } = invocation;
        let (done, outcome) = oneshot::channel();
        lock(&self.api.pending).insert(request_id.clone(), done);
        let dispatched = self.dispatch.try_send(Dispatch {
            request_id: request_id.clone(),
            payload,
            trace_id: trace_id.unwrap_or_else(new_trace_id),
            deadline_ms: deadline_ms(timeout),
        });
        let result = if dispatched.is_err() {
            Err(InvokeError::Exited(
                "the instance is not taking invocations".into(),
            ))
        } else {
            let mut phase = self.phase.clone();
            tokio::select! {
                biased;
                outcome = outcome => match outcome {
                    Ok(Outcome::Response(body)) => Ok(body),
                    Ok(Outcome::Error { error_type, error_message }) => Err(InvokeError::Function {
                        error_type,
                        error_message,
                    }),
                    Err(_) => Err(InvokeError::Exited("its Runtime API went away".into())),
                },
                status = exit_status(&mut phase) => Err(InvokeError::Exited(status)),
                () = tokio::time::sleep(timeout) => Err(InvokeError::Timeout { after: timeout }),
            }
        };
        // A late response to it is now an unknown request id.
        lock(&self.api.pending).remove(&request_id);
        result
    }

    fn has_exited(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Exited(_))
    }

    fn signal(&self, stop: Stop) {
        // Fails only once the supervisor is done, when the process is gone anyway.
        let _ = self.stop.send(stop);
    }

    /// SIGKILL, and wait until the process is reaped.
    async fn kill(&self) {
        if !self.has_exited() {
            self.signal(Stop::Kill);
        }
        self.wait_exit(REAP_WAIT).await;
    }

    async fn exited(&self) -> String {
        exit_status(&mut self.phase.clone()).await
    }

    async fn wait_exit(&self, limit: Duration) -> Option<String> {
        tokio::time::timeout(limit, self.exited()).await.ok()
    }

    /// The last lines of its stderr, on lines of their own after a newline; empty without any.
    fn stderr_tail(&self) -> String {
        let tail = lock(&self.stderr_tail);
        tail.iter().fold(String::new(), |mut text, line| {
            text.push('\n');
            text.push_str(line);
            text
        })
    }
}

/// The process's exit status once it is gone.
async fn exit_status(phase: &mut watch::Receiver<Phase>) -> String {
    match phase
        .wait_for(|p| matches!(p, Phase::Exited(_)))
        .await
        .as_deref()
    {
        Ok(Phase::Exited(status)) => status.clone(),
        _ => "the process is gone".into(),
    }
}

/// Owns the child: signals it on request, reaps it, then publishes how it ended.
async fn supervise(
    mut child: Child,
    mut stop: mpsc::UnboundedReceiver<Stop>,
    phase: watch::Sender<Phase>,
    output: Vec<JoinHandle<()>>,
    function: String,
) {
    let pid = child.id();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            request = stop.recv() => match request {
                Some(Stop::Terminate) => signal_group(pid, Signal::SIGTERM),
                // Asked to, or the instance was dropped.
                Some(Stop::Kill) | None => {
                    signal_group(pid, Signal::SIGKILL);
                    let _ = child.start_kill();
                    break child.wait().await;
                }
            },
        }
    };
    for reader in output {
        let _ = tokio::time::timeout(OUTPUT_DRAIN, reader).await;
    }
    let status = match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("waiting for the process failed: {e}"),
    };
    tracing::info!(function = %function, ?pid, %status, "function process exited");
    phase.send_replace(Phase::Exited(status));
}

/// Signals the child's process group (it leads one), so its own children go too.
/// Only called before the child is reaped, so the group id cannot be reused.
fn signal_group(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Forwards each line to the emulator's log; keeps the last ones in `tail`.
/// One line a function process wrote.
#[derive(Debug, Clone)]
pub struct FunctionLine {
    pub function: String,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    pub line: String,
}

static OUTPUT: std::sync::LazyLock<tokio::sync::broadcast::Sender<FunctionLine>> =
    std::sync::LazyLock::new(|| tokio::sync::broadcast::channel(65_536).0);

/// Every line the function processes of this emulator write from now on, as
/// CloudWatch Logs would get them (tests read their logs here).
pub fn function_output() -> tokio::sync::broadcast::Receiver<FunctionLine> {
    OUTPUT.subscribe()
}

async fn forward_lines(
    stream: impl AsyncRead + Unpin,
    function: String,
    stream_name: &'static str,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut reader = BufReader::new(stream);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buffer);
                let line = line.trim_end_matches(['\n', '\r']);
                if line.trim().is_empty() {
                    continue;
                }
                let _nobody_listening = OUTPUT.send(FunctionLine {
                    function: function.clone(),
                    stream: stream_name,
                    line: line.to_owned(),
                });
                // Metrics in Embedded Metric Format count, as CloudWatch counts them.
                let emf = stream_name == "stdout" && shared::metrics::ingest_emf(line);
                shared::telemetry::function_span(&function).in_scope(|| {
                    if emf {
                        tracing::debug!(stream = stream_name, "{line}");
                    } else {
                        tracing::info!(stream = stream_name, "{line}");
                    }
                });
                if let Some(tail) = &tail {
                    let mut tail = lock(tail);
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.to_owned());
                }
            }
        }
    }
}

/// The environment of a child: a few of the emulator's own variables, the
/// function's, then Lambda's reserved ones, which win as on AWS.
fn environment(spec: &FunctionProcess, binary: &FsPath, port: u16) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = INHERITED_ENV
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| ((*name).to_owned(), v)))
        .collect();
    env.extend(spec.env.clone());
    let task_root = binary
        .parent()
        .map_or_else(String::new, |p| p.display().to_string());
    let reserved = [
        ("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}")),
        ("AWS_LAMBDA_FUNCTION_NAME", spec.name.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            spec.memory_mb.to_string(),
        ),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", spec.name),
        ),
        ("AWS_LAMBDA_LOG_STREAM_NAME", log_stream_name()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("_HANDLER", "bootstrap".into()),
        ("LAMBDA_TASK_ROOT", task_root),
    ];
    env.extend(reserved.map(|(name, value)| (name.to_owned(), value)));
    env
}

/// `2024/01/31/[$LATEST]<32 hex>`, as Lambda names an instance's log stream.
fn log_stream_name() -> String {
    let today = time::OffsetDateTime::now_utc().date();
    format!(
        "{:04}/{:02}/{:02}/[$LATEST]{}",
        today.year(),
        u8::from(today.month()),
        today.day(),
        uuid::Uuid::now_v7().simple()
    )
}

fn invalid_entrypoint(binary: &FsPath, error: &std::io::Error) -> InvokeError {
    InvokeError::Init {
        error_type: "Runtime.InvalidEntrypoint".into(),
        error_message: format!("{}: {error}", binary.display()),
    }
}

fn emulator_failure(doing: &str, error: &std::io::Error) -> InvokeError {
    InvokeError::Init {
        error_type: "Runtime.Unknown".into(),
        error_message: format!("{doing}: {error}"),
    }
}

fn task_failed(join: &tokio::task::JoinError) -> InvokeError {
    InvokeError::Exited(format!("the emulator's invocation task failed: {join}"))
}

/// A poisoned lock only means another thread panicked mid-update; the
/// bookkeeping inside stays usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// The Runtime API of one instance.

/// An invocation on its way to the runtime's `next`.
#[derive(Debug)]
struct Dispatch {
    request_id: String,
    payload: Bytes,
    trace_id: String,
    deadline_ms: u64,
}

/// What the runtime posted for an invocation.
#[derive(Debug)]
enum Outcome {
    Response(Bytes),
    Error {
        error_type: String,
        error_message: String,
    },
}

/// The state one instance's Runtime API serves.
#[derive(Debug)]
struct RuntimeApi {
    function: String,
    arn: String,
    spawned_at: Instant,
    dispatch: tokio::sync::Mutex<mpsc::Receiver<Dispatch>>,
    /// Invocations handed over and not yet answered, by request id.
    pending: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    phase: watch::Sender<Phase>,
    init_error: Mutex<Option<(String, String)>>,
}

impl RuntimeApi {
    fn take_pending(&self, request_id: &str) -> Option<oneshot::Sender<Outcome>> {
        lock(&self.pending).remove(request_id)
    }
}

fn router(api: Arc<RuntimeApi>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
        .route(
            "/2018-06-01/runtime/invocation/{request_id}/response",
            post(invocation_response),
        )
        .route(
            "/2018-06-01/runtime/invocation/{request_id}/error",
            post(invocation_error),
        )
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(api)
}

/// `GET /runtime/invocation/next`: blocks until there is an invocation.
async fn next_invocation(State(api): State<Arc<RuntimeApi>>) -> Response {
    let init = api.spawned_at.elapsed();
    api.phase.send_if_modified(|phase| {
        let first = matches!(phase, Phase::Starting);
        if first {
            *phase = Phase::Ready { init };
        }
        first
    });
    let mut phase = api.phase.subscribe();
    let mut dispatch = api.dispatch.lock().await;
    let next = tokio::select! {
        next = dispatch.recv() => next,
        _ = exit_status(&mut phase) => None,
    };
    let Some(next) = next else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Runtime.Shutdown",
            "the instance is stopping",
        );
    };
    tracing::debug!(function = %api.function, request_id = %next.request_id, "invocation handed over");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in [
        ("lambda-runtime-aws-request-id", next.request_id),
        ("lambda-runtime-deadline-ms", next.deadline_ms.to_string()),
        ("lambda-runtime-invoked-function-arn", api.arn.clone()),
        ("lambda-runtime-trace-id", next.trace_id),
    ] {
        // Checked when the invocation came in; the others are ours.
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    (StatusCode::OK, headers, next.payload).into_response()
}

/// `POST /runtime/invocation/{id}/response`: the function's result.
async fn invocation_response(
    State(api): State<Arc<RuntimeApi>>,
    Path(request_id): Path<String>,
    body: Body,
) -> Response {
    let Some(done) = api.take_pending(&request_id) else {
        return invalid_request_id(&request_id);
    };
    match axum::body::to_bytes(body, MAX_RESPONSE_BYTES).await {
        Ok(body) => {
            let _ = done.send(Outcome::Response(body));
            accepted()
        }
        Err(_) => {
            let message = format!(
                "Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."
            );
            let _ = done.send(Outcome::Error {
                error_type: "Function.ResponseSizeTooLarge".into(),
                error_message: message.clone(),
            });
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &message,
            )
        }
    }
}

/// `POST /runtime/invocation/{id}/error`: the handler failed.
async fn invocation_error(
    State(api): State<Arc<RuntimeApi>>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(done) = api.take_pending(&request_id) else {
        return invalid_request_id(&request_id);
    };
    let body = axum::body::to_bytes(body, MAX_RESPONSE_BYTES)
        .await
        .unwrap_or_default();
    let (error_type, error_message) = diagnostic(&headers, &body);
    let _ = done.send(Outcome::Error {
        error_type,
        error_message,
    });
    accepted()
}

/// `POST /runtime/init/error`: the instance failed to initialise.
async fn init_error(
    State(api): State<Arc<RuntimeApi>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = axum::body::to_bytes(body, MAX_RESPONSE_BYTES)
        .await
        .unwrap_or_default();
    let (error_type, error_message) = diagnostic(&headers, &body);
    if !matches!(*api.phase.borrow(), Phase::Starting) {
        return error_response(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "State transition from Ready to InitError failed for runtime. Error: State transition is not allowed",
        );
    }
    // Recorded before the phase moves on, so whoever sees the move finds it.
    *lock(&api.init_error) = Some((error_type, error_message));
    api.phase.send_if_modified(|phase| {
        let starting = matches!(phase, Phase::Starting);
        if starting {
            *phase = Phase::InitFailed;
        }
        starting
    });
    accepted()
}

/// `errorType` and `errorMessage` from an error body, falling back to the
/// `Lambda-Runtime-Function-Error-Type` header and the raw body.
fn diagnostic(headers: &HeaderMap, body: &[u8]) -> (String, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let error_type = field("errorType")
        .or_else(|| {
            headers
                .get("lambda-runtime-function-error-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "Unhandled".into());
    let error_message =
        field("errorMessage").unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    (error_type, error_message)
}

fn accepted() -> Response {
    json_response(StatusCode::ACCEPTED, &json!({"status": "OK"}))
}

fn invalid_request_id(request_id: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!("Invalid request ID: {request_id}"),
    )
}

fn error_response(status: StatusCode, error_type: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"errorMessage": message, "errorType": error_type}),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves a Runtime API with no process behind it; returns its address.
    async fn serve_api() -> anyhow::Result<(Arc<RuntimeApi>, std::net::SocketAddr)> {
        let (_dispatch, dispatch_rx) = mpsc::channel(1);
        let api = Arc::new(RuntimeApi {
            function: "Test".into(),
            arn: "arn".into(),
            spawned_at: Instant::now(),
            dispatch: tokio::sync::Mutex::new(dispatch_rx),
            pending: Mutex::new(HashMap::new()),
            phase: watch::Sender::new(Phase::Starting),
            init_error: Mutex::new(None),
        });
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let app = router(Arc::clone(&api));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((api, addr))
    }

    async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> anyhow::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    /// A response for a request id the instance was not given is refused as AWS refuses it.
    #[tokio::test]
    async fn unknown_request_id_is_a_400() -> anyhow::Result<()> {
        let (_api, addr) = serve_api().await?;
        let response = post(addr, "/2018-06-01/runtime/invocation/nope/response", "{}").await?;
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert!(
            response.contains(r#""errorType":"InvalidRequestID""#),
            "{response}"
        );
        Ok(())
    }

    /// A posted response reaches the invocation waiting for it, once.
    #[tokio::test]
    async fn response_completes_the_pending_invocation() -> anyhow::Result<()> {
        let (api, addr) = serve_api().await?;
        let (done, outcome) = oneshot::channel();
        lock(&api.pending).insert("req-1".into(), done);
        let response = post(
            addr,
            "/2018-06-01/runtime/invocation/req-1/response",
            r#"{"ok":true}"#,
        )
        .await?;
        assert!(response.starts_with("HTTP/1.1 202"), "{response}");
        match outcome.await? {
            Outcome::Response(body) => assert_eq!(&body[..], br#"{"ok":true}"#),
            Outcome::Error { .. } => anyhow::bail!("expected a response"),
        }
        let again = post(addr, "/2018-06-01/runtime/invocation/req-1/response", "{}").await?;
        assert!(again.starts_with("HTTP/1.1 400"), "{again}");
        Ok(())
    }
}
