//! Load: `POST /orders` over HTTP at increasing concurrency (issue 7).
//!
//! For each level of `--levels` (closed loop: N keep-alive clients, each
//! posting valid orders back to back as a customer of its own, with its bearer
//! token), for
//! `--seconds`: throughput, p50 / p99 / p99.9 latency, errors by kind (non-201
//! answers by status, transport errors by kind), with one progress line a
//! second on stderr. Then the backlog the load left (orders still `PENDING`,
//! outbox rows not yet relayed, stream entries not yet processed), the time it
//! took to drain (at most `--drain-seconds`), where the machine went per order
//! (`load/profile.rs`: CPU by process, PostgreSQL commits and statements, Redis
//! commands, handler calls and batch sizes), and the lost-order check: every
//! order answered `201` is in `orders.orders` and has left `PENDING`. Then, at
//! the same level, the create-order transaction in plain SQL
//! (`tests::raw_create_order`) by as many tasks for `--raw-seconds`, on the
//! same database while the emulator runs, and the ratio.
//!
//! `cargo bench -p tests --bench load -- [--levels 1,4,16,64] [--seconds 60]
//! [--raw-seconds 15] [--drain-seconds 120] [--env NAME=VALUE]`: starts the emulator in-process on
//! a fresh database. With `--url http://127.0.0.1:3000` it loads an already
//! running `emulator up` instead; the backlog, the lost-order check and the raw
//! phases then need `--database-url` (its database), and the stream lag reads
//! `--redis-url` (default the local one) under `--namespace` (default `events`).
//! Its tokens are signed with the development key of `--state-dir` (default the
//! emulator's own state directory), the key that `emulator up` trusts.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use shared::redis_link::Redis;
use shared::relay::Relay;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tests::emulated::RunningEmulator;
use tests::{http_client, ms, percentile, post_order, stock_up, TestDb};

#[path = "load/profile.rs"]
mod profile;

/// The raw phases' connections: PostgreSQL's 100 are shared with the
/// emulator's pools (10 per function), so tasks beyond this wait for one.
const RAW_CONNECTIONS: u32 = 20;
/// A warm-up before the first level (pools, consumer groups), not counted.
const WARM_UP: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(50);

struct Args {
    levels: Vec<usize>,
    seconds: u64,
    raw_seconds: u64,
    drain_seconds: u64,
    url: Option<String>,
    database_url: Option<String>,
    redis_url: String,
    namespace: Option<String>,
    state_dir: Option<std::path::PathBuf>,
    /// `--env K=V` (repeatable): added to every function of the emulator it starts.
    env: Vec<(String, String)>,
}

fn args() -> Result<Args> {
    let mut parsed = Args {
        levels: vec![1, 4, 16, 64],
        seconds: 60,
        raw_seconds: 15,
        drain_seconds: 120,
        url: None,
        database_url: None,
        redis_url: tests::redis_url(),
        namespace: None,
        state_dir: None,
        env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("missing value");
        match arg.as_str() {
            "--levels" => {
                parsed.levels = value()?
                    .split(',')
                    .map(|l| l.trim().parse().context("--levels 1,4,16,64"))
                    .collect::<Result<_>>()?;
            }
            "--seconds" => parsed.seconds = value()?.parse()?,
            "--raw-seconds" => parsed.raw_seconds = value()?.parse()?,
            "--drain-seconds" => parsed.drain_seconds = value()?.parse()?,
            "--url" => parsed.url = Some(value()?.trim_end_matches('/').to_owned()),
            "--database-url" => parsed.database_url = Some(value()?),
            "--redis-url" => parsed.redis_url = value()?,
            "--namespace" => parsed.namespace = Some(value()?),
            "--state-dir" => parsed.state_dir = Some(value()?.into()),
            "--env" => {
                let pair = value()?;
                let (k, v) = pair.split_once('=').context("--env NAME=VALUE")?;
                parsed.env.push((k.to_owned(), v.to_owned()));
            }
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(
        !parsed.levels.is_empty() && parsed.levels.iter().all(|&l| l > 0) && parsed.seconds > 0,
        "--levels must be positive and --seconds at least 1"
    );
    Ok(parsed)
}

/// What the load runs against.
struct Target {
    base: String,
    /// The emulator's database: backlog, lost orders, raw phases.
    db: Option<Database>,
    /// The emulator this process started (`None` with `--url`).
    running: Option<(RunningEmulator, TestDb)>,
}

struct Database {
    pool: PgPool,
    relay: Relay,
    redis: Redis,
    namespace: String,
}

impl Database {
    async fn new(pool: PgPool, redis_url: &str, namespace: String) -> Result<Self> {
        let relay = tests::relay(&pool, redis_url, Default::default()).await?;
        let redis = shared::relay::connect_redis(redis_url, Duration::from_secs(5)).await?;
        Ok(Self {
            pool,
            relay,
            redis,
            namespace,
        })
    }

    /// What is still in flight now.
    async fn backlog(&self) -> Result<Backlog> {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders.orders WHERE status = 'PENDING'")
                .fetch_one(&self.pool)
                .await?;
        let (orders, inventory) = (
            self.relay.backlog(&order_service::OUTBOX).await?,
            self.relay.backlog(&inventory_service::OUTBOX).await?,
        );
        let streams =
            shared::source::stream_overview(&mut self.redis.clone(), &self.namespace).await?;
        let groups = streams.iter().flat_map(|s| &s.groups);
        let (mut lag, mut unknown) = (0, false);
        for g in groups {
            lag += g.pending + g.lag.unwrap_or(0);
            unknown |= g.lag.is_none();
        }
        Ok(Backlog {
            pending: pending.max(0) as u64,
            outbox: orders.pending + inventory.pending,
            failed: orders.failed + inventory.failed,
            stream_lag: lag,
            lag_unknown: unknown,
        })
    }

    /// Polls [`Self::backlog`] until it is empty or `limit` has passed since
    /// `began` (when the load stopped); the time since `began`, or `None` if
    /// it did not drain.
    async fn drain(&self, began: Instant, limit: Duration) -> Result<(Option<Duration>, Backlog)> {
        loop {
            let backlog = self.backlog().await?;
            if backlog.is_empty() {
                return Ok((Some(began.elapsed()), backlog));
            }
            if began.elapsed() > limit {
                return Ok((None, backlog));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Of `accepted` (orders answered 201): how many are in `orders.orders`,
    /// how many by status.
    async fn check(&self, accepted: &[uuid::Uuid]) -> Result<BTreeMap<String, u64>> {
        let mut by_status = BTreeMap::new();
        for chunk in accepted.chunks(20_000) {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT status, count(*) FROM orders.orders WHERE id = ANY($1) GROUP BY status",
            )
            .bind(chunk)
            .fetch_all(&self.pool)
            .await?;
            for (status, n) in rows {
                *by_status.entry(status).or_insert(0) += n.max(0) as u64;
            }
        }
        Ok(by_status)
    }
}

#[derive(Debug, Clone, Copy)]
struct Backlog {
    pending: u64,
    outbox: u64,
    /// Outbox rows set aside as failed (they never drain by themselves).
    failed: u64,
    /// Stream entries a consumer group has not yet acknowledged (undelivered
    /// plus delivered and pending).
    stream_lag: u64,
    lag_unknown: bool,
}

impl Backlog {
    fn is_empty(&self) -> bool {
        self.pending == 0 && self.outbox == 0 && self.stream_lag == 0 && !self.lag_unknown
    }
}

impl std::fmt::Display for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} / {} / {}{}",
            self.pending,
            self.outbox,
            self.stream_lag,
            if self.lag_unknown { "+?" } else { "" }
        )?;
        if self.failed > 0 {
            write!(f, " ({} outbox rows failed)", self.failed)?;
        }
        Ok(())
    }
}

async fn target(args: &Args) -> Result<Target> {
    if let Some(url) = &args.url {
        let dir = match &args.state_dir {
            Some(dir) => emulator::servers::StateDir::new(dir)?,
            None => {
                emulator::servers::StateDir::default_location(&shared::config::Env::from_process())?
            }
        };
        tests::auth::use_state_dir_key(dir.path())?;
        let db = match &args.database_url {
            Some(database_url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(RAW_CONNECTIONS)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(database_url)
                    .await
                    .with_context(|| format!("connecting to {database_url}"))?;
                let namespace = args.namespace.clone().unwrap_or_else(|| "events".into());
                Some(Database::new(pool, &args.redis_url, namespace).await?)
            }
            None => None,
        };
        return Ok(Target {
            base: url.clone(),
            db,
            running: None,
        });
    }
    let db = TestDb::fresh().await?;
    let env: Vec<(&str, &str)> = args
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let running =
        tests::emulated::start_unthrottled(&db, emulator::system::Mode::InProcess, &env).await?;
    let database = Database::new(
        db.pool.clone(),
        &tests::redis_url(),
        running.namespace.clone(),
    )
    .await?;
    Ok(Target {
        base: running.base.clone(),
        db: Some(database),
        running: Some((running, db)),
    })
}

/// What one closed-loop phase did.
struct Phase {
    elapsed: Duration,
    /// When the last client stopped.
    ended: Instant,
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    /// The ids of the orders answered 201 (HTTP phases).
    accepted: Vec<uuid::Uuid>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    fn error_kinds(&self) -> String {
        if self.errors.is_empty() {
            return "0".into();
        }
        let kinds: Vec<String> = self
            .errors
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        format!("{} ({})", self.errors(), kinds.join(", "))
    }
}

/// A failed request: the kind to count it by, and the message.
type Failure = (String, String);

/// Runs `work(task, n)` in `clients` tasks, back to back, for `duration`,
/// printing one progress line a second on stderr. `work` gives the created
/// order's id (if any) or a failure.
async fn closed_loop<F, Fut>(
    label: &str,
    clients: usize,
    duration: Duration,
    work: F,
) -> Result<Phase>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<uuid::Uuid>, Failure>> + Send,
{
    let work = Arc::new(work);
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for task in 0..clients {
        let (work, done, failed) = (Arc::clone(&work), Arc::clone(&done), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut accepted = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut first_error = None;
            let mut n = 0;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match work(task, n).await {
                    Ok(id) => {
                        latencies.push(sent.elapsed());
                        accepted.extend(id);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err((kind, message)) => {
                        *errors.entry(kind).or_insert(0) += 1;
                        first_error.get_or_insert(message);
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            (latencies, accepted, errors, first_error)
        }));
    }
    let progress = {
        let (label, done, failed) = (label.to_owned(), Arc::clone(&done), Arc::clone(&failed));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            let (mut last, mut last_at) = (0, start);
            loop {
                tick.tick().await;
                let (now, requests) = (Instant::now(), done.load(Ordering::Relaxed));
                let errors = failed.load(Ordering::Relaxed);
                let total = requests + errors;
                let rate = (total - last) as f64 / (now - last_at).as_secs_f64();
                eprintln!(
                    "  {label:<14} {:>5.0} s  {total:>9} requests  {rate:>7.0}/s  {errors} errors",
                    (now - start).as_secs_f64()
                );
                (last, last_at) = (total, now);
            }
        })
    };
    let mut phase = Phase {
        elapsed: Duration::ZERO,
        ended: start,
        latencies: Vec::new(),
        errors: BTreeMap::new(),
        first_error: None,
        accepted: Vec::new(),
    };
    for task in tasks {
        let (latencies, accepted, errors, first_error) = task.await?;
        phase.latencies.extend(latencies);
        phase.accepted.extend(accepted);
        for (kind, n) in errors {
            *phase.errors.entry(kind).or_insert(0) += n;
        }
        if phase.first_error.is_none() {
            phase.first_error = first_error;
        }
    }
    phase.ended = Instant::now();
    phase.elapsed = phase.ended - start;
    progress.abort();
    phase.latencies.sort();
    Ok(phase)
}

async fn through_http(
    http: &reqwest::Client,
    base: &str,
    clients: usize,
    duration: Duration,
    run: &str,
) -> Result<Phase> {
    let url = Arc::new(format!("{base}/orders"));
    let (http, run) = (http.clone(), run.to_owned());
    let label = format!("{run} x{clients}");
    closed_loop(&label, clients, duration, move |task, _| {
        let (http, url) = (http.clone(), Arc::clone(&url));
        let customer = format!("{run}-{task}");
        async move {
            post_order(&http, &url, &customer)
                .await
                .map(Some)
                .map_err(|e| (e.kind(), e.to_string()))
        }
    })
    .await
}

async fn through_sql(
    pool: &PgPool,
    clients: usize,
    duration: Duration,
    run: &str,
) -> Result<Phase> {
    let (pool, run) = (pool.clone(), run.to_owned());
    let label = format!("{run} x{clients}");
    closed_loop(&label, clients, duration, move |task, n| {
        let pool = pool.clone();
        let customer = format!("{run}-{task}-{n}");
        async move {
            tests::raw_create_order(&pool, &customer)
                .await
                .map(|()| None)
                .map_err(|e| ("sql".to_owned(), format!("{e:#}")))
        }
    })
    .await
}

/// One level's figures.
struct Level {
    clients: usize,
    http: Phase,
    /// With a database: the backlog and the lost-order check.
    after: Option<After>,
    raw: Option<Phase>,
}

/// What the load left behind.
struct After {
    /// The backlog when the load stopped.
    at_end: Backlog,
    /// How long it took to drain (`None`: not within `--drain-seconds`).
    drained: Option<Duration>,
    /// What was left when the drain ended.
    left: Backlog,
    /// The accepted orders by status after the drain.
    by_status: BTreeMap<String, u64>,
}

impl Level {
    /// Accepted orders not found in the database, and found but still PENDING.
    fn lost(&self) -> Option<(u64, u64)> {
        let by_status = &self.after.as_ref()?.by_status;
        let found: u64 = by_status.values().sum();
        let pending = by_status.get("PENDING").copied().unwrap_or(0);
        Some((self.http.accepted.len() as u64 - found, pending))
    }
}

async fn level(
    target: &Target,
    http: &reqwest::Client,
    clients: usize,
    args: &Args,
) -> Result<Level> {
    let run = format!("load{clients}");
    let before = match &target.db {
        Some(db) => Some(
            profile::Snapshot::take(&db.pool, &mut db.redis.clone(), http, &target.base).await?,
        ),
        None => None,
    };
    let phase = through_http(
        http,
        &target.base,
        clients,
        Duration::from_secs(args.seconds),
        &run,
    )
    .await?;
    let (p50, p99, p999) = (
        percentile(&phase.latencies, 50.0),
        percentile(&phase.latencies, 99.0),
        percentile(&phase.latencies, 99.9),
    );
    println!(
        "  {clients:>3} clients: POST /orders {:>7.0}/s  p50 {}  p99 {}  p99.9 {}  errors {}",
        phase.rate(),
        ms(p50),
        ms(p99),
        ms(p999),
        phase.error_kinds()
    );
    if let Some(e) = &phase.first_error {
        println!("      first error: {e}");
    }
    let mut level = Level {
        clients,
        http: phase,
        after: None,
        raw: None,
    };
    let Some(db) = &target.db else {
        return Ok(level);
    };
    let at_end = db.backlog().await?;
    let (drained, left) = db
        .drain(level.http.ended, Duration::from_secs(args.drain_seconds))
        .await?;
    let by_status = db.check(&level.http.accepted).await?;
    println!(
        "      backlog at the end (PENDING / outbox / stream lag): {at_end}; {}",
        match drained {
            Some(d) => format!("drained in {:.1} s", d.as_secs_f64()),
            None => format!("NOT drained in {} s, left: {left}", args.drain_seconds),
        }
    );
    if let Some(before) = &before {
        let after =
            profile::Snapshot::take(&db.pool, &mut db.redis.clone(), http, &target.base).await?;
        for line in before.report(&after, level.http.accepted.len() as u64) {
            println!("      {line}");
        }
    }
    level.after = Some(After {
        at_end,
        drained,
        left,
        by_status,
    });
    if let Some((missing, pending)) = level.lost() {
        let by_status: Vec<String> = level
            .after
            .iter()
            .flat_map(|a| &a.by_status)
            .map(|(status, n)| format!("{n} {status}"))
            .collect();
        println!(
            "      {} accepted: {missing} missing from the database, {pending} still PENDING ({})",
            level.http.accepted.len(),
            by_status.join(", ")
        );
    }
    if args.raw_seconds > 0 {
        let raw = through_sql(
            &db.pool,
            clients,
            Duration::from_secs(args.raw_seconds),
            &format!("raw{clients}"),
        )
        .await?;
        println!(
            "      raw SQL {:>7.0}/s  p50 {}  p99 {}  p99.9 {}  errors {}   POST / raw {:.2}",
            raw.rate(),
            ms(percentile(&raw.latencies, 50.0)),
            ms(percentile(&raw.latencies, 99.0)),
            ms(percentile(&raw.latencies, 99.9)),
            raw.error_kinds(),
            level.http.rate() / raw.rate()
        );
        // The raw orders go through the saga too: the next level starts empty.
        let (drained, left) = db
            .drain(raw.ended, Duration::from_secs(args.drain_seconds))
            .await?;
        if drained.is_none() {
            println!(
                "      the raw orders did NOT drain in {} s: {left}",
                args.drain_seconds
            );
        }
        level.raw = Some(raw);
    }
    Ok(level)
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let target = target(&args).await?;
    let http = http_client()?;
    println!(
        "load: POST /orders at {} for {} s each against {} ({}); raw SQL {} s per level; drain limit {} s",
        args.levels
            .iter()
            .map(|l| format!("{l} client(s)"))
            .collect::<Vec<_>>()
            .join(", "),
        args.seconds,
        target.base,
        if target.running.is_some() {
            "emulator in-process, fresh database"
        } else {
            "running emulator"
        },
        if target.db.is_some() { args.raw_seconds } else { 0 },
        args.drain_seconds
    );
    if target.db.is_none() {
        println!("  no --database-url: no backlog, lost-order check or raw SQL phases");
    }
    stock_up(&http, &target.base).await?;
    let warm = through_http(&http, &target.base, 4, WARM_UP, "warm").await?;
    anyhow::ensure!(
        warm.errors() == 0,
        "the warm-up failed: {}",
        warm.first_error.unwrap_or_default()
    );
    if let Some(db) = &target.db {
        db.drain(warm.ended, Duration::from_secs(args.drain_seconds))
            .await?;
    }

    let mut levels = Vec::new();
    for &clients in &args.levels {
        levels.push(level(&target, &http, clients, &args).await?);
    }

    println!(
        "\n| clients | POST /orders | p50 / p99 / p99.9 | errors | raw SQL | raw p50 / p99 | POST / raw | backlog at end: PENDING / outbox / stream lag | drained in | accepted / lost / not terminal |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let (mut errors, mut lost, mut checked) = (0, 0, true);
    for l in &levels {
        let h = &l.http;
        errors += h.errors();
        let raw = l.raw.as_ref();
        let (backlog, drained) = match &l.after {
            Some(After {
                at_end,
                drained: Some(d),
                ..
            }) => (at_end.to_string(), format!("{:.1} s", d.as_secs_f64())),
            Some(After {
                at_end,
                drained: None,
                left,
                ..
            }) => (
                at_end.to_string(),
                format!("not in {} s ({left} left)", args.drain_seconds),
            ),
            None => ("-".into(), "-".into()),
        };
        let lost_cell = match l.lost() {
            Some((missing, pending)) => {
                lost += missing + pending;
                format!(
                    "{} / {missing} / {pending}",
                    thousands(h.accepted.len() as f64)
                )
            }
            None => {
                checked = false;
                "not checked".into()
            }
        };
        println!(
            "| {} | {}/s | {} / {} / {} | {} | {} | {} | {} | {} | {} | {} |",
            l.clients,
            thousands(h.rate()),
            ms(percentile(&h.latencies, 50.0)),
            ms(percentile(&h.latencies, 99.0)),
            ms(percentile(&h.latencies, 99.9)),
            h.error_kinds(),
            raw.map_or("-".into(), |r| format!("{}/s", thousands(r.rate()))),
            raw.map_or("-".into(), |r| format!(
                "{} / {}",
                ms(percentile(&r.latencies, 50.0)),
                ms(percentile(&r.latencies, 99.0))
            )),
            raw.map_or("-".into(), |r| format!("{:.2}", h.rate() / r.rate())),
            backlog,
            drained,
            lost_cell
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT MET" };
    println!(
        "\ngoal: zero errors at every level: {} ({errors} errors)",
        verdict(errors == 0)
    );
    if checked {
        println!(
            "goal: zero lost orders at every level: {} ({lost} accepted orders missing or not terminal)",
            verdict(lost == 0)
        );
    } else {
        println!("goal: zero lost orders: not checked (no --database-url)");
    }
    if let Some((running, db)) = target.running {
        drop(target.db);
        running.stop().await?;
        drop(db);
    }
    Ok(())
}
