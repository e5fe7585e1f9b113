//! Crash and restart: orders flow through the whole system while its parts
//! die. The HTTP functions run in the emulator (in-process); the relay and the
//! consumers run as separate `system-worker` processes (two of each) that are
//! SIGKILLed at random moments and started again; the suite's own Redis and
//! PostgreSQL are each restarted once mid-run; poison entries and duplicate
//! deliveries are written straight into the streams. Afterwards every
//! promised invariant is checked and printed (see RELIABILITY.md).
//!
//! `short_run_keeps_every_invariant` is the CI version; `long_run` (ignored)
//! is the documented 20,000-order run:
//! `cargo test -p tests --test crash_restart -- --ignored --nocapture long_run`
//! (`CRASH_ORDERS` sets the count).

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)] // the suite prints what it checked

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use emulator::servers::{self, Binaries, StateDir};
use emulator::system::{Mode, Options, System};
use serde_json::{json, Value};
use shared::envelope::AggregateType;
use shared::redis_link::Redis;
use shared::source::{dead_letter_key, DeadLetters, RawEntry};
use shared::streams::{partition_of, stream_key};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::process::{Child, Command};

const PARTITIONS: u16 = 4;
const CLIENTS: usize = 8;
/// SKUs with plenty of stock, and scarce ones that run out (rejections).
const PLENTY: [&str; 6] = ["P-1", "P-2", "P-3", "P-4", "P-5", "P-6"];
const SCARCE: [&str; 3] = ["S-1", "S-2", "S-3"];
/// The credit limit of customers cust-50 to cust-99 (cust-0 to cust-49 have
/// plenty): an order costs 250 to 2,250 cents, so a few orders use it up.
const DEFAULT_CREDIT: i64 = 3000;
/// The consumer groups, each with the aggregate types whose streams it reads.
const GROUPS: [(&str, &[&str]); 3] = [
    ("inventory", &["Order"]),
    ("customers", &["Order"]),
    ("order-saga", &["Reservation", "Credit"]),
];

/// What a run does.
#[derive(Debug, Clone)]
struct Plan {
    orders: usize,
    /// Kill a worker about this often.
    kill_every: Duration,
    /// `INVENTORY_FAULT` for the inventory consumers, if any.
    inventory_fault: Option<&'static str>,
    /// How long PostgreSQL stays down when it is restarted at 60 %.
    postgres_down: Duration,
    /// Fail Redis over to its replica at 80 %: the primary stops, the replica
    /// is promoted, the endpoint the system uses moves to it, and it gets a new
    /// replica. The relay requires one replica's acknowledgement throughout.
    redis_failover: bool,
    /// Run on a Redis Cluster (3 primaries, a replica each): the restart at 30 %
    /// becomes a primary SIGKILLed and its replica promoted, and the failover at
    /// 80 % the same on another shard; each shard gets a new replica after.
    cluster: bool,
}

/// What a run saw: the invariants it checked and the ones that failed.
#[derive(Debug, Default)]
struct Report {
    lines: Vec<String>,
    violations: Vec<String>,
}

impl Report {
    fn info(&mut self, line: String) {
        println!("  {line}");
        self.lines.push(line);
    }

    fn check(&mut self, ok: bool, line: String) {
        let mark = if ok { "ok  " } else { "FAIL" };
        println!("  [{mark}] {line}");
        if !ok {
            self.violations.push(line.clone());
        }
        self.lines.push(line);
    }
}

/// A splitmix64 generator: enough randomness for a workload, seed printed.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index below `n`.
    fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).expect("below a usize")
    }
}

/// A state directory under /tmp (reachable by the `postgres` user), removed when dropped.
struct TempState(StateDir);

impl Drop for TempState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.path());
    }
}

/// One worker process slot: its role, its consumer name, its process.
struct Worker {
    role: &'static str,
    name: String,
    env: BTreeMap<String, String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Worker {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_system-worker"))
            .arg(self.role)
            .env_clear()
            .envs(&self.env)
            .env("CONSUMER_NAME", &self.name)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting system-worker {}", self.role))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and reap.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Started again if it died on its own (e.g. it could not connect during a restart).
    fn revive_if_dead(&mut self) -> anyhow::Result<bool> {
        let dead = match self.child.as_mut() {
            None => true,
            Some(child) => child.try_wait()?.is_some(),
        };
        if dead {
            self.start()?;
        }
        Ok(dead)
    }
}

/// Counts of what clients and chaos did.
#[derive(Debug, Default)]
struct Counters {
    posted: AtomicU64,
    retries: AtomicU64,
    idempotent_replays: AtomicU64,
    cancels: AtomicU64,
    cancel_refused: AtomicU64,
}

/// A poison entry written into a stream: where, and which group must dead-letter it.
#[derive(Debug, Clone)]
struct Poison {
    group: &'static str,
    stream: String,
    id: String,
    kind: &'static str,
}

/// The suite's Redis: one primary behind an endpoint a failover moves, with a
/// replica, as ElastiCache's replication group; or a cluster.
#[allow(clippy::large_enum_variant, reason = "one per run")]
enum Topology {
    Node {
        server: servers::Redis,
        endpoint: tests::forwarder::Forwarder,
        password: String,
        replica: Option<tests::RedisServer>,
        new_replica: Option<tests::RedisServer>,
    },
    Cluster(tests::cluster::RedisCluster),
}

impl Topology {
    /// The private Redis `server` behind an endpoint, with a replica.
    async fn node(server: servers::Redis) -> anyhow::Result<Self> {
        let primary_port = server
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
            .context("the private Redis's port")?;
        let endpoint = tests::forwarder::Forwarder::start(primary_port).await?;
        // The private Redis requires its password (as ElastiCache's AUTH token); its
        // replicas use it too, to sync and to be the primary after a failover.
        let password = server
            .url
            .strip_prefix("redis://:")
            .and_then(|rest| rest.split_once('@'))
            .map(|(password, _)| password.to_owned())
            .context("the private Redis's password")?;
        let mut topology = Self::Node {
            server,
            endpoint,
            password,
            replica: None,
            new_replica: None,
        };
        let replica = topology.replica_of(primary_port).await?;
        if let Self::Node { replica: r, .. } = &mut topology {
            *r = Some(replica);
        }
        Ok(topology)
    }

    async fn replica_of(&self, primary: u16) -> anyhow::Result<tests::RedisServer> {
        let Self::Node { password, .. } = self else {
            anyhow::bail!("a node's replica");
        };
        let primary = primary.to_string();
        let args = [
            "--replicaof",
            "127.0.0.1",
            &primary,
            "--masterauth",
            password,
            "--requirepass",
            password,
        ];
        tests::RedisServer::start_with(tests::spare_port()?, &args).await
    }

    fn with_password(password: &str, url: &str) -> String {
        url.replacen("redis://", &format!("redis://:{password}@"), 1)
    }

    /// `REDIS_URL` and `REDIS_CLUSTER` for the system.
    fn url(&self) -> (String, bool) {
        match self {
            Self::Node {
                endpoint, password, ..
            } => (Self::with_password(password, &endpoint.url()), false),
            Self::Cluster(cluster) => (cluster.url(), true),
        }
    }

    /// At 30 %: the node is restarted; on a cluster the primary of an order
    /// stream is SIGKILLed (its replica takes over, and a new replica follows).
    async fn restart(&mut self, namespace: &str) -> anyhow::Result<()> {
        match self {
            Self::Node { server, .. } => server.restart(Duration::from_secs(1)).await,
            Self::Cluster(cluster) => {
                let key = stream_key(namespace, &AggregateType::parse("Order")?, 0);
                cluster.kill_primary_of(&key).await.map(drop)
            }
        }
    }

    /// At 80 %: the primary stops, its replica is promoted and the endpoint
    /// moves to it; on a cluster, the primary of another shard is SIGKILLed.
    async fn fail_over(&mut self, namespace: &str) -> anyhow::Result<()> {
        match self {
            Self::Node { .. } => self.fail_node_over().await,
            Self::Cluster(cluster) => {
                let first = cluster
                    .primary_of(&stream_key(namespace, &AggregateType::parse("Order")?, 0))
                    .await?;
                for aggregate in ["Reservation", "Credit", "Order"] {
                    for p in 0..PARTITIONS {
                        let key = stream_key(namespace, &AggregateType::parse(aggregate)?, p);
                        if cluster.primary_of(&key).await? != first {
                            return cluster.kill_primary_of(&key).await.map(drop);
                        }
                    }
                }
                anyhow::bail!("every stream on one shard")
            }
        }
    }

    async fn fail_node_over(&mut self) -> anyhow::Result<()> {
        let Self::Node {
            server,
            endpoint,
            password,
            replica,
            ..
        } = self
        else {
            anyhow::bail!("a node");
        };
        let promoted = replica.take().context("a replica")?;
        server.stop_in_place().await?;
        tests::promote(&Self::with_password(password, &promoted.url())).await?;
        endpoint.retarget(promoted.port);
        let port = promoted.port;
        *replica = Some(promoted);
        let fresh = self.replica_of(port).await?;
        if let Self::Node { new_replica, .. } = self {
            *new_replica = Some(fresh);
        }
        Ok(())
    }

    async fn stop(self) {
        if let Self::Node { server, .. } = self {
            let _ = server.stop().await;
        }
    }
}

/// Runs `plan` against private servers and returns what the checks found.
async fn run(plan: Plan) -> anyhow::Result<Report> {
    let started = Instant::now();
    // The low 64 bits of the time in nanoseconds: any of them make a seed.
    #[allow(clippy::cast_possible_truncation)]
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    println!(
        "crash/restart run: {} orders, seed {seed:#x}, plan {plan:?}",
        plan.orders
    );
    let state = TempState(StateDir::new(
        std::env::temp_dir().join(format!("crash-restart-{}", uuid::Uuid::now_v7().simple())),
    )?);
    let spare = || -> anyhow::Result<std::net::SocketAddr> {
        Ok(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            tests::spare_port()?,
        )))
    };
    let binaries = Binaries::system();
    let mut redis = if plan.cluster {
        Topology::Cluster(tests::cluster::RedisCluster::start().await?)
    } else {
        Topology::node(servers::redis_with(None, spare()?, &state.0, &binaries).await?).await?
    };
    let mut postgres = servers::postgres_with(None, spare()?, &state.0, &binaries).await?;
    let result = drive(&plan, seed, &state, &mut redis, &mut postgres, started).await;
    redis.stop().await;
    let _ = postgres.stop().await;
    result
}

#[allow(clippy::too_many_lines)]
async fn drive(
    plan: &Plan,
    seed: u64,
    state: &TempState,
    redis: &mut Topology,
    postgres: &mut servers::Postgres,
    started: Instant,
) -> anyhow::Result<Report> {
    let database_url = format!("{}/postgres", postgres.url);
    // Everything reaches Redis through an endpoint that a failover moves, and the
    // primary has a replica, as in ElastiCache (or a cluster whose shards do).
    let (redis_url, redis_cluster) = redis.url();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&database_url)
        .await?;
    shared::db::migrate(&pool, migrate::migrations()).await?;
    let namespace = "crash".to_owned();

    // Stock: plenty of the common SKUs, a little of the scarce ones.
    let mut initial: BTreeMap<String, i64> = BTreeMap::new();
    let plenty = i64::try_from(plan.orders)? * 2;
    for sku in PLENTY {
        initial.insert(sku.into(), plenty);
    }
    for sku in SCARCE {
        initial.insert(sku.into(), i64::try_from(plan.orders / 20)?.max(20));
    }
    for (sku, available) in &initial {
        // At the catalog price the clients' orders carry (250).
        sqlx::query(
            "INSERT INTO inventory.stock (sku, available, price_cents) VALUES ($1, $2, 250)",
        )
        .bind(sku)
        .bind(i32::try_from(*available)?)
        .execute(&pool)
        .await?;
    }

    // Credit: half the customers have a limit of their own, far above what they
    // order; the other half have the default (DEFAULT_CREDIT_LIMIT_CENTS), which
    // a few orders use up (rejections for lack of credit, and credit released
    // by cancellations and compensations).
    sqlx::query(
        "INSERT INTO customers.credit (customer_id, limit_cents)
         SELECT 'cust-' || i, 100000000 FROM generate_series(0, 49) AS i",
    )
    .execute(&pool)
    .await?;

    // The template, with the relay and the consumers taken out of the emulator:
    // they run as worker processes with the environment the emulator would give them.
    // Clients hammer the API: the routes' throttling is not what this suite tests.
    let mut template = tests::emulated::unthrottled_template()?;
    let overrides = json!({ "Parameters": {
        "STREAM_NAMESPACE": namespace,
        "STREAM_PARTITIONS": PARTITIONS.to_string(),
        "DEFAULT_CREDIT_LIMIT_CENTS": DEFAULT_CREDIT.to_string(),
    }});
    emulator::template::apply_env_overrides(&mut template, &overrides.to_string())?;
    let mut workers = Vec::new();
    for spec in &template.functions {
        let role = if spec.is_relay() {
            "relay"
        } else if spec.stream_source().is_some() {
            match spec.binary.as_str() {
                "inventory-consumer" => "inventory-consumer",
                "customers-consumer" => "customers-consumer",
                "order-saga" => "order-saga",
                _ => continue,
            }
        } else {
            continue;
        };
        let mut env = spec.environment.clone();
        env.insert("DATABASE_URL".into(), database_url.clone());
        env.insert("REDIS_URL".into(), redis_url.clone());
        env.insert("REDIS_CLUSTER".into(), redis_cluster.to_string());
        env.insert("RUST_LOG".into(), "warn".into());
        env.insert("DATABASE_MAX_CONNECTIONS".into(), "4".into());
        env.insert("REDIS_MIN_REPLICAS".into(), "1".into());
        env.insert("REDIS_REPLICA_TIMEOUT_MS".into(), "1000".into());
        if role == "inventory-consumer" {
            if let Some(fault) = plan.inventory_fault {
                env.insert("INVENTORY_FAULT".into(), fault.into());
            }
        }
        for i in 0..2 {
            workers.push(Worker {
                role,
                name: format!("{role}-{i}"),
                env: env.clone(),
                log: state.0.path().join(format!("{role}-{i}.log")),
                child: None,
            });
        }
    }
    anyhow::ensure!(
        workers.len() == 8,
        "expected a relay and three consumers in the template"
    );
    template
        .functions
        .retain(|f| !f.is_relay() && f.stream_source().is_none());
    let system = System::start(Options {
        template,
        mode: Mode::InProcess,
        database_url: database_url.clone(),
        redis_url: redis_url.clone(),
        redis_cluster,
        trust: tests::auth::trust(),
        registry: std::sync::Arc::new(shop::Shop),
    })
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(emulator::serve(
        emulator::Emulator::of(&system),
        listener,
        async move {
            let _ = http_stopped.await;
        },
    ));
    for w in &mut workers {
        w.start()?;
    }

    let redis_conn = shared::redis_link::RedisClient::open(&redis_url, redis_cluster)?
        .connect(Duration::from_secs(5))?;
    let mut poison = Vec::new();
    inject_poison(&redis_conn, &namespace, &mut poison, "early").await?;

    // Clients.
    let counters = Arc::new(Counters::default());
    let accepted: Arc<Mutex<Vec<(String, bool)>>> = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicU64::new(0));
    // Orders the clients may place so far: each failure of the plan opens the way to
    // the next stretch, so that every failure happens while orders still flow, however
    // fast the clients are (the share of the orders placed when it strikes).
    let share = |tenths: u64| (plan.orders as u64 * tenths).div_ceil(10);
    let allowed = Arc::new(AtomicU64::new(share(3)));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, base, counters, accepted, next, allowed) = (
            http.clone(),
            base.clone(),
            Arc::clone(&counters),
            Arc::clone(&accepted),
            Arc::clone(&next),
            Arc::clone(&allowed),
        );
        let total = plan.orders as u64;
        let mut rng = Rng(seed ^ (c as u64 + 1).wrapping_mul(0x1234_5678_9abc));
        clients.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                while n >= allowed.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let (id, cancelled) = place_order(&http, &base, &mut rng, &counters).await?;
                accepted
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push((id, cancelled));
            }
            anyhow::Ok(())
        }));
    }

    // Chaos, while the clients run.
    let mut rng = Rng(seed);
    let mut kills: BTreeMap<&str, u32> = BTreeMap::new();
    let mut revived = 0u32;
    let (mut redis_restarted, mut postgres_restarted) = (None, None);
    let mut failed_over = None;
    let mut last_kill = Instant::now();
    let mut mid_poison = false;
    let total = plan.orders as u64;
    loop {
        let done = counters.posted.load(Ordering::Relaxed);
        if clients.iter().all(tokio::task::JoinHandle::is_finished) {
            break;
        }
        if !mid_poison && done * 2 >= total {
            // The connection may still be finding the restarted Redis.
            for attempt in 1..=20 {
                let injected = async {
                    inject_poison(&redis_conn, &namespace, &mut poison, "mid-run").await?;
                    inject_duplicates(&redis_conn, &namespace, 20).await
                };
                match injected.await {
                    Ok(()) => break,
                    Err(e) if attempt < 20 => {
                        println!("  injecting failed ({e}); again");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            mid_poison = true;
        }
        if redis_restarted.is_none() && done * 10 >= total * 3 {
            let t = Instant::now();
            redis.restart(&namespace).await?;
            redis_restarted = Some((done, t.elapsed()));
            println!("  restarted Redis after {done} orders ({:?})", t.elapsed());
            allowed.store(share(6), Ordering::Relaxed);
        }
        if postgres_restarted.is_none() && done * 10 >= total * 6 {
            let t = Instant::now();
            postgres.restart(plan.postgres_down).await?;
            postgres_restarted = Some((done, t.elapsed()));
            let next_stop = if plan.redis_failover { share(8) } else { total };
            allowed.store(next_stop, Ordering::Relaxed);
            println!(
                "  restarted PostgreSQL after {done} orders ({:?})",
                t.elapsed()
            );
        }
        if plan.redis_failover && failed_over.is_none() && done * 10 >= total * 8 {
            let t = Instant::now();
            redis.fail_over(&namespace).await?;
            failed_over = Some((done, t.elapsed()));
            allowed.store(total, Ordering::Relaxed);
            println!(
                "  failed Redis over to its replica after {done} orders ({:?})",
                t.elapsed()
            );
        }
        let jitter = Duration::from_millis(
            rng.below(u64::try_from(plan.kill_every.as_millis()).expect("a short period")),
        );
        if last_kill.elapsed() >= plan.kill_every / 2 + jitter {
            // Every role gets killed early on; then at random.
            // Workers come in pairs, one pair per role.
            let roles = workers.len() / 2;
            let killed = usize::try_from(kills.values().sum::<u32>()).expect("few");
            let i = if killed < roles {
                2 * killed + rng.index(2)
            } else {
                rng.index(workers.len())
            };
            let w = &mut workers[i];
            w.kill().await;
            *kills.entry(w.role).or_default() += 1;
            // Back at once or after a pause, as a scheduler would bring it back.
            tokio::time::sleep(Duration::from_millis(rng.below(1500))).await;
            w.start()?;
            last_kill = Instant::now();
        }
        for w in &mut workers {
            if w.revive_if_dead()? {
                revived += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for client in clients {
        client.await??;
    }
    let flowed = started.elapsed();
    // The connection may still be finding Redis after a restart or a failover.
    for attempt in 1..=20 {
        match inject_duplicates(&redis_conn, &namespace, 20).await {
            Ok(()) => break,
            Err(e) if attempt < 20 => {
                println!("  injecting failed ({e}); again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }

    // Settle: every order terminal, outboxes empty.
    let settle = Instant::now();
    loop {
        for w in &mut workers {
            if w.revive_if_dead()? {
                revived += 1;
            }
        }
        let pending: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM orders.orders
                     WHERE status = 'PENDING' OR awaiting_release_since IS NOT NULL)
                  + (SELECT count(*) FROM orders.outbox) + (SELECT count(*) FROM inventory.outbox)
                  + (SELECT count(*) FROM customers.outbox)",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(i64::MAX);
        let dead = dead_letter_count(&redis_conn, &namespace)
            .await
            .unwrap_or(0);
        if pending == 0 && dead >= poison.len() as u64 {
            break;
        }
        if settle.elapsed() > Duration::from_secs(90) {
            println!("  not settled after 90 s: {pending} pending orders/outbox rows, {dead} dead letters");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Redeliveries of the last batches have a few seconds (visibility timeout).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let settled = settle.elapsed();
    for w in &mut workers {
        w.kill().await;
    }
    let _ = stop_http.send(());
    server.await??;
    system.stop().await;

    let mut report = Report::default();
    println!("results:");
    let accepted = accepted
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    report.info(format!(
        "orders: {} accepted over HTTP by {CLIENTS} clients in {:.1} s ({:.0}/s); settled {:.1} s later",
        accepted.len(),
        flowed.as_secs_f64(),
        accepted.len() as f64 / flowed.as_secs_f64(),
        settled.as_secs_f64()
    ));
    report.info(format!(
        "client retries with the same Idempotency-Key: {} (replayed responses: {}); cancels: {} accepted, {} refused (409)",
        counters.retries.load(Ordering::Relaxed),
        counters.idempotent_replays.load(Ordering::Relaxed),
        counters.cancels.load(Ordering::Relaxed),
        counters.cancel_refused.load(Ordering::Relaxed),
    ));
    report.info(format!(
        "chaos: SIGKILLs {kills:?}, workers found dead and restarted {revived}, Redis restart {redis_restarted:?}, PostgreSQL down {:?} {postgres_restarted:?}, Redis failover {failed_over:?}, poison entries {}",
        plan.postgres_down,
        poison.len()
    ));
    report.check(
        kills.len() == workers.len() / 2
            && redis_restarted.is_some()
            && postgres_restarted.is_some()
            && failed_over.is_some() == plan.redis_failover,
        "every kind of failure happened at least once".into(),
    );
    check(
        &mut report,
        &pool,
        &redis_conn,
        &namespace,
        &initial,
        &accepted,
        &poison,
    )
    .await?;
    println!(
        "{} violations; total {:.1} s",
        report.violations.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(report)
}

/// Posts one order (retrying with its key until it is answered), and cancels
/// some. Returns the order id and whether the cancel was accepted.
async fn place_order(
    http: &reqwest::Client,
    base: &str,
    rng: &mut Rng,
    counters: &Counters,
) -> anyhow::Result<(String, bool)> {
    let mut skus: Vec<&str> = Vec::new();
    for _ in 0..=rng.below(2) {
        let sku = if rng.below(4) == 0 {
            SCARCE[rng.index(SCARCE.len())]
        } else {
            PLENTY[rng.index(PLENTY.len())]
        };
        if !skus.contains(&sku) {
            skus.push(sku);
        }
    }
    let items: Vec<Value> = skus
        .iter()
        .map(|sku| json!({"sku": sku, "quantity": 1 + rng.below(3), "unit_price_cents": 250}))
        .collect();
    let customer = format!("cust-{}", rng.below(100));
    let body = json!({"items": items}).to_string();
    let key = uuid::Uuid::now_v7().to_string();
    let mut attempt = 0u32;
    let order: Value = loop {
        let response = http
            .post(format!("{base}/orders"))
            .header("authorization", tests::bearer(&customer))
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .body(body.clone())
            .send()
            .await;
        match response {
            Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 200 => {
                if attempt > 0 && r.headers().contains_key("idempotent-replayed") {
                    counters.idempotent_replays.fetch_add(1, Ordering::Relaxed);
                }
                break r.json().await?;
            }
            // Retryable answers: a server error, a key in flight, throttled.
            Ok(r) if r.status().is_server_error() || matches!(r.status().as_u16(), 409 | 429) => {}
            Ok(r) => anyhow::bail!("POST /orders answered {}: {}", r.status(), r.text().await?),
            Err(_) => {}
        }
        attempt += 1;
        counters.retries.fetch_add(1, Ordering::Relaxed);
        anyhow::ensure!(attempt < 300, "POST /orders failed {attempt} times");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    counters.posted.fetch_add(1, Ordering::Relaxed);
    let id = order["id"]
        .as_str()
        .context("an order without id")?
        .to_owned();
    if rng.below(10) != 0 {
        return Ok((id, false));
    }
    let mut attempt = 0u32;
    loop {
        let cancel = http
            .post(format!("{base}/orders/{id}/cancel"))
            .header("authorization", tests::bearer(&customer))
            .send()
            .await;
        match cancel {
            Ok(r) if r.status().is_success() => {
                counters.cancels.fetch_add(1, Ordering::Relaxed);
                return Ok((id, true));
            }
            Ok(r) if r.status().as_u16() == 409 => {
                counters.cancel_refused.fetch_add(1, Ordering::Relaxed);
                return Ok((id, false));
            }
            Ok(r) if r.status().is_server_error() => {}
            Ok(r) => anyhow::bail!("cancel answered {}: {}", r.status(), r.text().await?),
            Err(_) => {}
        }
        attempt += 1;
        counters.retries.fetch_add(1, Ordering::Relaxed);
        anyhow::ensure!(attempt < 300, "cancel failed {attempt} times");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes undecodable entries and envelopes of an unknown type into both
/// groups' streams, each on an aggregate of its own.
async fn inject_poison(
    redis: &Redis,
    namespace: &str,
    poison: &mut Vec<Poison>,
    when: &str,
) -> anyhow::Result<()> {
    let mut conn = redis.clone();
    for aggregate in ["Order", "Reservation", "Credit"] {
        let groups: Vec<&'static str> = GROUPS
            .iter()
            .filter(|(_, aggregates)| aggregates.contains(&aggregate))
            .map(|(group, _)| *group)
            .collect();
        let aggregate_type = AggregateType::parse(aggregate)?;
        let aggregate_id = uuid::Uuid::now_v7().to_string();
        let stream = stream_key(
            namespace,
            &aggregate_type,
            partition_of(&aggregate_id, PARTITIONS),
        );
        let well_formed = |event_type: &str, payload: &str| {
            vec![
                ("event_id", uuid::Uuid::now_v7().to_string()),
                ("event_type", event_type.to_owned()),
                ("schema_version", "1".to_owned()),
                ("aggregate_type", aggregate.to_owned()),
                ("aggregate_id", aggregate_id.clone()),
                ("occurred_at", "2026-11-24T00:00:00Z".to_owned()),
                ("payload", payload.to_owned()),
            ]
        };
        let entries: Vec<(&'static str, Vec<(&str, String)>)> = vec![
            (
                "missing fields",
                vec![("event_id", "not-a-uuid".to_owned())],
            ),
            ("bad JSON payload", well_formed("OrderCreated", "{not json")),
            ("unknown event type", well_formed("OrderTeleported", "{}")),
        ];
        for (kind, fields) in entries {
            let id: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg(&fields)
                .query_async(&mut conn)
                .await?;
            for &group in &groups {
                poison.push(Poison {
                    group,
                    stream: stream.clone(),
                    id: id.clone(),
                    kind,
                });
            }
        }
    }
    println!("  injected {} poison entries ({when})", poison.len());
    Ok(())
}

/// Appends copies of `n` already published `Order` entries to their streams
/// again, as a relay that crashed after publishing would: the same event ids,
/// delivered twice.
async fn inject_duplicates(redis: &Redis, namespace: &str, n: usize) -> anyhow::Result<()> {
    let mut conn = redis.clone();
    let mut copied = 0;
    for p in 0..PARTITIONS {
        let stream = stream_key(namespace, &AggregateType::parse("Order")?, p);
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(n / usize::from(PARTITIONS) + 1)
            .query_async(&mut conn)
            .await?;
        for entry in parse_entries(reply)? {
            let envelope = shared::envelope::EventEnvelope::from_stream_fields(
                entry
                    .fields
                    .iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.as_slice())),
            );
            // Real events only, not the poison injected before.
            if !envelope.is_ok_and(|e| {
                e.event_type.as_str().starts_with("Order")
                    && e.event_type.as_str() != "OrderTeleported"
            }) {
                continue;
            }
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&stream).arg("*");
            for (k, v) in &entry.fields {
                cmd.arg(k.as_slice()).arg(v.as_slice());
            }
            let _: String = cmd.query_async(&mut conn).await?;
            copied += 1;
        }
    }
    println!("  re-delivered {copied} published events (same event ids)");
    Ok(())
}

/// The entries of an `XRANGE` reply.
fn parse_entries(reply: redis::Value) -> anyhow::Result<Vec<RawEntry>> {
    let redis::Value::Array(entries) = reply else {
        anyhow::bail!("XRANGE answered {reply:?}");
    };
    let bytes = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Ok(b.clone()),
        redis::Value::SimpleString(s) => Ok(s.clone().into_bytes()),
        other => Err(anyhow::anyhow!("unexpected {other:?} in an XRANGE reply")),
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let redis::Value::Array(parts) = entry else {
            anyhow::bail!("an XRANGE entry that is not an array");
        };
        let [id, redis::Value::Array(flat)] = parts.as_slice() else {
            anyhow::bail!("an XRANGE entry without fields");
        };
        let mut fields = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            if let [k, v] = pair {
                fields.push((bytes(k)?, bytes(v)?));
            }
        }
        out.push(RawEntry {
            id: String::from_utf8(bytes(id)?)?,
            fields,
        });
    }
    Ok(out)
}

async fn dead_letter_count(redis: &Redis, namespace: &str) -> anyhow::Result<u64> {
    let mut n = 0;
    for (group, _) in GROUPS {
        n += DeadLetters::new(redis.clone(), namespace, group)
            .count()
            .await?;
    }
    Ok(n)
}

/// Every entry of the streams of `aggregate`: (event id, event type, aggregate id), poison included.
async fn stream_events(
    redis: &Redis,
    namespace: &str,
    aggregate: &str,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut conn = redis.clone();
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let stream = stream_key(namespace, &AggregateType::parse(aggregate)?, p);
        // In pages: one reply of the whole stream would outlast the response timeout.
        let mut after = "-".to_owned();
        loop {
            let reply: redis::Value = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(&after)
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            let entries = parse_entries(reply)?;
            let Some(last) = entries.last() else {
                break;
            };
            after = format!("({}", last.id);
            for entry in entries {
                if let Ok(envelope) = shared::envelope::EventEnvelope::from_stream_fields(
                    entry
                        .fields
                        .iter()
                        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.as_slice())),
                ) {
                    out.push((
                        envelope.event_id.to_string(),
                        envelope.event_type.as_str().to_owned(),
                        envelope.aggregate_id.as_str().to_owned(),
                    ));
                }
            }
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_lines)]
async fn check(
    report: &mut Report,
    pool: &PgPool,
    redis: &Redis,
    namespace: &str,
    initial: &BTreeMap<String, i64>,
    accepted: &[(String, bool)],
    poison: &[Poison],
) -> anyhow::Result<()> {
    // Orders: all there, none doubled, all terminal.
    let statuses: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM orders.orders GROUP BY status ORDER BY status",
    )
    .fetch_all(pool)
    .await?;
    let by_status: HashMap<String, i64> = statuses.iter().cloned().collect();
    let stored: i64 = by_status.values().sum();
    report.info(format!("orders by status: {statuses:?}"));
    let distinct: HashSet<&String> = accepted.iter().map(|(id, _)| id).collect();
    report.check(
        stored == accepted.len() as i64 && distinct.len() == accepted.len(),
        format!(
            "no order lost or doubled: {} accepted, {} distinct, {stored} stored",
            accepted.len(),
            distinct.len()
        ),
    );
    report.check(
        by_status.get("PENDING").copied().unwrap_or(0) == 0,
        format!(
            "every order reached CONFIRMED / REJECTED / CANCELLED ({} PENDING)",
            by_status.get("PENDING").copied().unwrap_or(0)
        ),
    );
    let cancelled_by_client = accepted.iter().filter(|(_, c)| *c).count() as i64;
    report.check(
        by_status.get("CANCELLED").copied().unwrap_or(0) == cancelled_by_client,
        format!(
            "CANCELLED orders ({}) = cancels accepted ({cancelled_by_client})",
            by_status.get("CANCELLED").copied().unwrap_or(0)
        ),
    );
    report.check(
        by_status.get("REJECTED").copied().unwrap_or(0) > 0,
        "some orders were rejected for lack of stock".into(),
    );

    // Stock.
    let stock: Vec<(String, i32, i32, i64)> = sqlx::query_as(
        "SELECT s.sku, s.available, s.reserved,
                COALESCE((SELECT sum(quantity) FROM inventory.reservations r
                          WHERE r.sku = s.sku AND r.status = 'RESERVED'), 0)::bigint
         FROM inventory.stock s ORDER BY s.sku",
    )
    .fetch_all(pool)
    .await?;
    let constraints: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'inventory.stock'::regclass AND contype = 'c'
         AND (pg_get_constraintdef(oid) LIKE '%available >= 0%' OR pg_get_constraintdef(oid) LIKE '%reserved >= 0%')",
    )
    .fetch_one(pool)
    .await?;
    report.check(
        constraints == 2,
        format!("CHECK (available >= 0) and CHECK (reserved >= 0) exist on inventory.stock ({constraints} found)"),
    );
    for (sku, available, reserved, held) in &stock {
        let init = initial.get(sku).copied().unwrap_or(0);
        report.check(
            *available >= 0
                && *reserved >= 0
                && i64::from(*available) + i64::from(*reserved) == init
                && i64::from(*reserved) == *held,
            format!("{sku}: initial {init} = available {available} + reserved {reserved}; reserved = RESERVED reservations {held}"),
        );
    }
    let misplaced: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT o.status, r.status, count(*) FROM inventory.reservations r
         LEFT JOIN orders.orders o ON o.id = r.order_id
         WHERE (r.status = 'RESERVED') <> (o.status = 'CONFIRMED') OR o.status IS NULL
            OR (r.status = 'RELEASED' AND o.status NOT IN ('CANCELLED', 'REJECTED'))
         GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    report.check(
        misplaced.is_empty(),
        format!("stock is held by CONFIRMED orders only and released for CANCELLED and REJECTED ones (wrong: {misplaced:?})"),
    );
    check_credit(report, pool).await?;
    let unreserved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders.orders o WHERE o.status = 'CONFIRMED'
         AND NOT EXISTS (SELECT 1 FROM inventory.reservations r WHERE r.order_id = o.id AND r.status = 'RESERVED')",
    )
    .fetch_one(pool)
    .await?;
    report.check(
        unreserved == 0,
        format!("every CONFIRMED order holds its stock ({unreserved} do not)"),
    );

    // Effects once: the inboxes hold each consumed event once, and each order got one answer.
    let order_events = stream_events(redis, namespace, "Order").await?;
    let mut answers = stream_events(redis, namespace, "Reservation").await?;
    let credit_answers = stream_events(redis, namespace, "Credit").await?;
    answers.extend(credit_answers.iter().cloned());
    // Decodable entries of a known type: the poison ones are undecodable or `OrderTeleported`.
    let legit = |events: &[(String, String, String)]| -> HashSet<String> {
        events
            .iter()
            .filter(|(_, t, _)| t != "OrderTeleported")
            .map(|(id, _, _)| id.clone())
            .collect()
    };
    let order_ids = legit(&order_events);
    let answer_ids = legit(&answers);
    let inventory_inbox: Vec<(i64, i64)> =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM inventory.processed_events")
            .fetch_all(pool)
            .await?;
    let saga_inbox: Vec<(i64, i64)> =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM orders.processed_events")
            .fetch_all(pool)
            .await?;
    let customers_inbox: (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM customers.processed_events")
            .fetch_one(pool)
            .await?;
    let (inv_rows, inv_distinct) = inventory_inbox[0];
    let (saga_rows, saga_distinct) = saga_inbox[0];
    let expected_orders = order_ids.len() as i64;
    let expected_answers = answer_ids.len() as i64;
    report.check(
        inv_rows == inv_distinct && inv_rows == expected_orders,
        format!("inventory inbox: {inv_rows} rows = {inv_distinct} distinct = {expected_orders} distinct order events in the streams"),
    );
    report.check(
        customers_inbox.0 == customers_inbox.1 && customers_inbox.0 == expected_orders,
        format!(
            "customers inbox: {} rows = {} distinct = {expected_orders} distinct order events in the streams",
            customers_inbox.0, customers_inbox.1
        ),
    );
    report.check(
        saga_rows == saga_distinct && saga_rows == expected_answers,
        format!("saga inbox: {saga_rows} rows = {saga_distinct} distinct = {expected_answers} distinct answers (inventory and credit) in the streams"),
    );
    let created: HashSet<&String> = order_events
        .iter()
        .filter(|(_, t, _)| t == "OrderCreated")
        .map(|(_, _, a)| a)
        .collect();
    for (participant, types) in [
        ("inventory", ["InventoryReserved", "InventoryRejected"]),
        ("customers", ["CreditReserved", "CreditRejected"]),
    ] {
        let mut answers_per_order: HashMap<&String, HashSet<&String>> = HashMap::new();
        for (id, t, order) in &answers {
            if types.contains(&t.as_str()) {
                answers_per_order.entry(order).or_default().insert(id);
            }
        }
        let twice = answers_per_order
            .values()
            .filter(|ids| ids.len() > 1)
            .count();
        report.check(
            twice == 0 && answers_per_order.len() + 2 >= created.len(),
            format!(
                "each OrderCreated answered once by the {participant}: {} orders answered, {twice} answered more than once",
                answers_per_order.len()
            ),
        );
    }
    let duplicate_reservations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT order_id, sku FROM inventory.reservations GROUP BY 1, 2 HAVING count(*) > 1) d",
    )
    .fetch_one(pool)
    .await?;
    report.check(
        duplicate_reservations == 0,
        format!("no duplicate reservations ({duplicate_reservations})"),
    );

    // Dead letters: every poison entry, with its reason, and nothing else.
    let mut expected: HashSet<(&str, String, String)> = poison
        .iter()
        .map(|p| (p.group, p.stream.clone(), p.id.clone()))
        .collect();
    let mut unexpected = Vec::new();
    let mut duplicates = 0;
    let mut seen = HashSet::new();
    for (group, _) in GROUPS {
        let letters = DeadLetters::new(redis.clone(), namespace, group)
            .list(None, 100_000)
            .await?;
        for letter in letters {
            let key = (
                group,
                letter.source_stream.clone(),
                letter.source_id.clone(),
            );
            let kind = poison
                .iter()
                .find(|p| p.group == key.0 && p.stream == key.1 && p.id == key.2)
                .map(|p| p.kind);
            match kind {
                Some(kind) => {
                    if !seen.insert(key.clone()) {
                        duplicates += 1;
                    }
                    report.info(format!(
                        "dead letter in {}: {kind} from {} {}: {} (attempts {})",
                        dead_letter_key(namespace, group),
                        key.1,
                        key.2,
                        letter.error,
                        letter.attempts
                    ));
                    expected.remove(&key);
                }
                None => unexpected.push(format!("{group} {} {}: {}", key.1, key.2, letter.error)),
            }
        }
    }
    report.check(
        expected.is_empty(),
        format!(
            "every poison entry ({}) is in a dead-letter stream (missing: {expected:?})",
            poison.len()
        ),
    );
    report.check(
        unexpected.is_empty(),
        format!(
            "nothing else is dead-lettered ({} others{})",
            unexpected.len(),
            unexpected
                .first()
                .map(|u| format!(", e.g. {u}"))
                .unwrap_or_default()
        ),
    );
    if duplicates > 0 {
        report.info(format!(
            "{duplicates} poison entries were dead-lettered twice (a crash between XADD and XACK)"
        ));
    }

    // Outboxes.
    let unpublished: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders.outbox), (SELECT count(*) FROM inventory.outbox),
                (SELECT count(*) FROM customers.outbox)",
    )
    .fetch_one(pool)
    .await?;
    report.check(
        unpublished == (0, 0, 0),
        format!(
            "no outbox row left unpublished (orders {}, inventory {}, customers {})",
            unpublished.0, unpublished.1, unpublished.2
        ),
    );
    let unsettled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders.orders WHERE awaiting_release_since IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    report.check(
        unsettled == 0,
        format!("every compensation settled: every participant confirmed its release ({unsettled} awaiting)"),
    );
    Ok(())
}

/// The customer service's promises: per customer, `limit = available +
/// reserved` with neither negative, and what is reserved is what its orders'
/// `RESERVED` reservations hold; credit is held by `CONFIRMED` orders only (each
/// its total) and never for a rejected or cancelled order once the saga settled.
async fn check_credit(report: &mut Report, pool: &PgPool) -> anyhow::Result<()> {
    let credit: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT c.customer_id, c.limit_cents, c.reserved_cents,
                COALESCE((SELECT sum(amount_cents) FROM customers.credit_reservations r
                          WHERE r.customer_id = c.customer_id AND r.status = 'RESERVED'), 0)::bigint
         FROM customers.credit c ORDER BY c.customer_id",
    )
    .fetch_all(pool)
    .await?;
    let wrong: Vec<String> = credit
        .iter()
        .filter(|(_, limit, reserved, held)| {
            let available = limit - reserved;
            !(available >= 0
                && *reserved >= 0
                && available + reserved == *limit
                && reserved == held)
        })
        .map(|(c, limit, reserved, held)| {
            format!("{c}: limit {limit}, reserved {reserved}, held {held}")
        })
        .collect();
    report.check(
        wrong.is_empty() && credit.len() > 50,
        format!(
            "credit of {} customers: limit = available + reserved, none negative, reserved = RESERVED reservations (wrong: {wrong:?})",
            credit.len()
        ),
    );
    let misplaced: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT o.status, r.status, count(*) FROM customers.credit_reservations r
         LEFT JOIN orders.orders o ON o.id = r.order_id
         WHERE (r.status = 'RESERVED') <> (o.status = 'CONFIRMED') OR o.status IS NULL
            OR (r.status = 'RELEASED' AND o.status NOT IN ('CANCELLED', 'REJECTED'))
            OR r.amount_cents <> o.total_cents
         GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    report.check(
        misplaced.is_empty(),
        format!("credit is held by CONFIRMED orders only, each its total, and released for CANCELLED and REJECTED ones (wrong: {misplaced:?})"),
    );
    let (confirmed_without, short_of_credit): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders.orders o WHERE o.status = 'CONFIRMED'
                 AND NOT EXISTS (SELECT 1 FROM customers.credit_reservations r
                                 WHERE r.order_id = o.id AND r.status = 'RESERVED')),
                (SELECT count(*) FROM orders.orders
                 WHERE status = 'REJECTED' AND status_reason LIKE 'insufficient credit%')",
    )
    .fetch_one(pool)
    .await?;
    report.check(
        confirmed_without == 0,
        format!("every CONFIRMED order holds its credit ({confirmed_without} do not)"),
    );
    report.check(
        short_of_credit > 0,
        format!("some orders were rejected for lack of credit ({short_of_credit})"),
    );
    Ok(())
}

/// The CI version: a few thousand orders, every kind of failure at least once;
/// every invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_run_keeps_every_invariant() -> anyhow::Result<()> {
    let report = run(Plan {
        orders: 3_000,
        kill_every: Duration::from_secs(2),
        inventory_fault: None,
        postgres_down: Duration::from_secs(1),
        redis_failover: true,
        cluster: false,
    })
    .await?;
    assert!(
        report.violations.is_empty(),
        "violations: {:#?}",
        report.violations
    );
    Ok(())
}

/// The suite notices a broken guarantee: with the inventory consumer made to
/// forget what it applied (`INVENTORY_FAULT=apply-redeliveries`), redelivered
/// events apply again and the checks report it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_exactly_once_guarantee_is_caught() -> anyhow::Result<()> {
    let report = run(Plan {
        orders: 600,
        kill_every: Duration::from_secs(3),
        inventory_fault: Some("apply-redeliveries"),
        postgres_down: Duration::from_secs(1),
        redis_failover: false,
        cluster: false,
    })
    .await?;
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("inventory inbox")),
        "the broken inbox went unnoticed: {:#?}",
        report.violations
    );
    Ok(())
}

/// The CI run on a Redis Cluster: two primaries SIGKILLed (one at 30 %, one of
/// another shard at 80 %), their replicas promoted, besides every other failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_run_on_a_cluster_keeps_every_invariant() -> anyhow::Result<()> {
    let report = run(Plan {
        orders: 2_000,
        kill_every: Duration::from_secs(2),
        inventory_fault: None,
        postgres_down: Duration::from_secs(1),
        redis_failover: true,
        cluster: true,
    })
    .await?;
    assert!(
        report.violations.is_empty(),
        "violations: {:#?}",
        report.violations
    );
    Ok(())
}

/// The documented long run (RELIABILITY.md): `CRASH_ORDERS` orders, 20,000 by
/// default; `CRASH_CLUSTER=true` runs it on a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run by hand, see RELIABILITY.md"]
async fn long_run() -> anyhow::Result<()> {
    let orders = std::env::var("CRASH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let report = run(Plan {
        orders,
        kill_every: Duration::from_secs(4),
        inventory_fault: None,
        postgres_down: Duration::from_secs(30),
        redis_failover: true,
        cluster: std::env::var("CRASH_CLUSTER").is_ok_and(|v| v == "true"),
    })
    .await?;
    assert!(
        report.violations.is_empty(),
        "violations: {:#?}",
        report.violations
    );
    Ok(())
}
