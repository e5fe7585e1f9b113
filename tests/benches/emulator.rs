//! The emulator's own costs, each next to what it wraps, in one run:
//!
//! 1. start to ready: `System::start` and the listener bind until the first
//!    request (`GET /orders/{id}`, answered by the function) comes back,
//!    in-process and `--runtime-api` (with each function's cold start); and the
//!    real `emulator up` binary until it prints `Ready in`;
//! 2. `POST /orders` over real HTTP (keep-alive, N clients, distinct customers)
//!    through the emulator, alternating with the same transaction issued in
//!    plain SQL by as many tasks on the same database, while the emulator's
//!    relay and consumers run behind both (the raw rows carry outbox events too);
//! 3. end to end: orders posted at a steady rate (open loop, one task per
//!    POST), each timed from sending its POST until a poll sees it CONFIRMED.
//!    One query every `--poll-ms` asks `orders.orders` for the ids still
//!    pending, all at once, so the resolution is the poll interval plus that
//!    query (both printed) at one query per interval, not one per order. The
//!    saga's `updated_at = now()` (its transaction's start, same host clock)
//!    minus the send time is printed beside it as a lower bound.
//!
//! `cargo bench -p tests --bench emulator -- [--clients 16] [--seconds 8] [--rounds 3]
//! [--rate 500] [--e2e-seconds 10] [--poll-ms 2] [--starts 3]
//! [--modes in-process,runtime-api] [--env NAME=VALUE]...`
//!
//! `--runtime-api` runs the release binaries: `cargo build --release --bins` first
//! (the mode is skipped, with a note, when they are missing).

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use emulator::functions::Runner;
use emulator::system::Mode;
use sqlx::PgPool;
use tests::emulated::RunningEmulator;
use tests::load::{closed_loop, median, Load};
use tests::{http_client, ms, percentile, post_order, stock_up, TestDb};
use time::OffsetDateTime;
use tokio::io::AsyncBufReadExt as _;

/// The warm-up before measured throughput phases (cold starts, pool connections).
const WARM_UP: Duration = Duration::from_secs(2);

struct Args {
    clients: usize,
    seconds: u64,
    rounds: usize,
    rate: u32,
    e2e_seconds: u64,
    poll: Duration,
    starts: usize,
    modes: Vec<Which>,
    /// `--env NAME=VALUE`: for every function (an env-vars file's `Parameters`).
    env: Vec<(String, String)>,
}

impl Args {
    fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

fn args() -> Result<Args> {
    let mut parsed = Args {
        clients: 16,
        seconds: 8,
        rounds: 3,
        rate: 500,
        e2e_seconds: 10,
        poll: Duration::from_millis(2),
        starts: 3,
        modes: vec![Which::InProcess, Which::RuntimeApi],
        env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("missing value");
        match arg.as_str() {
            "--clients" => parsed.clients = value()?.parse()?,
            "--seconds" => parsed.seconds = value()?.parse()?,
            "--rounds" => parsed.rounds = value()?.parse()?,
            "--rate" => parsed.rate = value()?.parse()?,
            "--e2e-seconds" => parsed.e2e_seconds = value()?.parse()?,
            "--poll-ms" => parsed.poll = Duration::from_millis(value()?.parse()?),
            "--starts" => parsed.starts = value()?.parse()?,
            "--modes" => {
                parsed.modes = value()?
                    .split(',')
                    .map(|m| match m {
                        "in-process" => Ok(Which::InProcess),
                        "runtime-api" => Ok(Which::RuntimeApi),
                        other => bail!("unknown mode {other} (in-process, runtime-api)"),
                    })
                    .collect::<Result<_>>()?;
            }
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
        parsed.clients > 0 && parsed.rounds > 0 && parsed.starts > 0 && parsed.rate > 0,
        "--clients, --rounds, --starts and --rate must be at least 1"
    );
    Ok(parsed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    InProcess,
    RuntimeApi,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Self::InProcess => "in-process",
            Self::RuntimeApi => "runtime-api",
        }
    }
}

/// How to run the functions; `None` for `--runtime-api` without the release binaries.
fn mode(which: Which, concurrency: usize) -> Result<Option<Mode>> {
    Ok(match which {
        Which::InProcess => Some(Mode::InProcess),
        // `runtime_api()` checks that every binary is there; its concurrency of
        // 4 would throttle N clients, so the mode is built again.
        Which::RuntimeApi => match tests::emulated::runtime_api() {
            Ok(_) => Some(Mode::RuntimeApi {
                binaries: tests::emulated::binaries_dir()?,
                concurrency,
            }),
            Err(e) => {
                println!("runtime-api: skipped ({e:#})");
                None
            }
        },
    })
}

// ---------------------------------------------------------------------------
// 1. Start to ready.

/// One start on a fresh database.
struct Start {
    /// `System::start` (template and overrides included) and the listener bind.
    started: Duration,
    /// Until the first request came back from its function.
    answered: Duration,
    /// Per function behind the Runtime API: the cold start of its first
    /// instance (started by a driver or the first request, while the system
    /// came up; `None` if nothing started it), and one `prewarm()` afterwards.
    cold: Vec<(String, Option<Duration>, Option<Duration>)>,
}

/// `GET /orders/{unknown id}` until the function's own 404 comes back.
async fn first_answer(http: &reqwest::Client, base: &str) -> Result<()> {
    let url = format!("{base}/orders/{}", uuid::Uuid::now_v7());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = http.get(&url).send().await {
            let problem = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "application/problem+json");
            if response.status() == 404 && problem {
                return Ok(());
            }
            bail!("the first request answered {}", response.status());
        }
        if Instant::now() > deadline {
            bail!("no answer from {base} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn start_once(mode: Mode, env: &[(&str, &str)]) -> Result<Start> {
    let db = TestDb::fresh().await?;
    let http = tests::client_as("bench-first");
    let began = Instant::now();
    let running = tests::emulated::start_unthrottled(&db, mode, env).await?;
    let started = began.elapsed();
    first_answer(&http, &running.base).await?;
    let answered = began.elapsed();
    let mut cold = Vec::new();
    let system = running
        .system
        .as_ref()
        .context("a running emulator without system")?;
    for function in system.functions.iter() {
        if let Runner::Process(pool) = &function.runner {
            let at_start = pool.last_init_duration();
            let prewarm = pool.prewarm().await.ok();
            cold.push((function.spec.logical_id.clone(), at_start, prewarm));
        }
    }
    running.stop().await?;
    Ok(Start {
        started,
        answered,
        cold,
    })
}

/// The `emulator up` binary: (wall time until `Ready in`, the figure it
/// printed, wall time until the first request came back). On a fresh database,
/// migrated like any database the emulator has run on before; or, with
/// `empty`, created and left empty, so the emulator applies every migration.
async fn binary_once(
    runtime_api: bool,
    empty: bool,
    env: &[(&str, &str)],
) -> Result<(Duration, Duration, Duration)> {
    let namespace = tests::unique_namespace();
    let mut parameters: serde_json::Map<String, serde_json::Value> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
        .collect();
    parameters.insert("STREAM_NAMESPACE".into(), serde_json::json!(namespace));
    let env_file = std::env::temp_dir().join(format!("emulator-bench-{namespace}.json"));
    std::fs::write(
        &env_file,
        serde_json::json!({ "Parameters": parameters }).to_string(),
    )?;
    let measured = if empty {
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        admin(&format!("CREATE DATABASE {name}")).await?;
        let admin_url = tests::admin_url();
        let server = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(s, _)| s);
        let measured = run_binary(&format!("{server}/{name}"), &env_file, runtime_api).await;
        admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
        measured
    } else {
        let db = TestDb::fresh().await?;
        run_binary(&db.url(), &env_file, runtime_api).await
    };
    let _ = std::fs::remove_file(&env_file);
    tests::delete_streams(&tests::redis_url(), &namespace).await?;
    measured
}

/// One statement on the admin database (the name in it is ours, alphanumeric).
async fn admin(statement: &str) -> Result<()> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&tests::admin_url()).await?;
    sqlx::query(statement).execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

async fn run_binary(
    database_url: &str,
    env_file: &std::path::Path,
    runtime_api: bool,
) -> Result<(Duration, Duration, Duration)> {
    let port = tests::spare_port()?;
    let template: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "template.yaml"]
        .iter()
        .collect();
    // Its own state directory, and a token signed with the development key it
    // creates there (what `emulator token` prints).
    let state = std::env::temp_dir().join(format!("emulator-bench-state-{port}"));
    let key = emulator::auth::DevKey::load_or_create(&state)?;
    let token = emulator::auth::dev_token(
        &emulator::template::parse(&std::fs::read_to_string(&template)?)?,
        &key,
        "bench-first",
        None,
        Duration::from_secs(3600),
    )?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .tcp_nodelay(true)
        .build()?;
    let mut command =
        tokio::process::Command::new(tests::emulated::binaries_dir()?.join("emulator"));
    command
        .arg("up")
        .arg("--template")
        .arg(&template)
        .arg("--state-dir")
        .arg(&state)
        .args(["--port", &port.to_string(), "--env-vars"])
        .arg(env_file)
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", tests::redis_url())
        // stdout is piped and read only up to `Ready in`: keep the logs quiet so
        // they cannot fill the pipe.
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if runtime_api {
        command.args(["--runtime-api", "--concurrency", "16"]);
    }
    let began = Instant::now();
    let mut child = command
        .spawn()
        .context("starting target/<profile>/emulator")?;
    // Read everything it prints, so it never blocks on a full pipe.
    let stdout = child.stdout.take().context("no stdout")?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<(Instant, Result<Duration>)>();
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut ready_tx = Some(ready_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("Ready in ") {
                let at = Instant::now();
                let printed = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(anyhow::Error::from);
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send((at, printed));
                }
            }
        }
    });
    let measured = async {
        let (at, printed) = tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .context("no `Ready in` within 30 s")?
            .context("emulator up exited before `Ready in`")?;
        let (ready, printed) = (at - began, printed?);
        first_answer(&http, &format!("http://127.0.0.1:{port}")).await?;
        anyhow::Ok((ready, printed, began.elapsed()))
    }
    .await;
    if let Some(pid) = child.id() {
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
    }
    if tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .is_err()
    {
        println!("emulator up did not stop within 20 s of SIGTERM; killed");
        child.kill().await?;
    }
    reader.abort();
    let _ = std::fs::remove_dir_all(&state);
    measured
}

// ---------------------------------------------------------------------------
// 2. Throughput.

async fn through_http(
    http: &reqwest::Client,
    running: &RunningEmulator,
    clients: usize,
    seconds: Duration,
    run: &str,
) -> Result<Load> {
    let url = Arc::new(running.url("/orders"));
    let (http, run) = (http.clone(), run.to_owned());
    closed_loop(clients, seconds, move |task, _| {
        let (http, url) = (http.clone(), Arc::clone(&url));
        // One customer (and token) per client, as a client keeps its token.
        let customer = format!("{run}-{task}");
        async move { Ok(post_order(&http, &url, &customer).await.map(drop)?) }
    })
    .await
}

async fn through_sql(pool: &PgPool, clients: usize, seconds: Duration, run: &str) -> Result<Load> {
    let (pool, run) = (pool.clone(), run.to_owned());
    closed_loop(clients, seconds, move |task, n| {
        let pool = pool.clone();
        let customer = format!("{run}-{task}-{n}");
        async move { tests::raw_create_order(&pool, &customer).await }
    })
    .await
}

struct Throughput {
    emulator: f64,
    raw: f64,
    emulator_p50: Duration,
    emulator_p99: Duration,
    raw_p50: Duration,
    raw_p99: Duration,
    errors: u64,
}

async fn throughput(which: Which, mode: Mode, args: &Args) -> Result<Throughput> {
    let db = TestDb::fresh().await?;
    let running = tests::emulated::start_unthrottled(&db, mode, &args.env()).await?;
    let http = http_client()?;
    stock_up(&http, &running.base).await?;
    let seconds = Duration::from_secs(args.seconds);
    through_http(&http, &running, args.clients, WARM_UP, "warm").await?;
    let (mut emu, mut raw) = (Vec::new(), Vec::new());
    let mut errors = 0;
    for round in 1..=args.rounds {
        let e = through_http(&http, &running, args.clients, seconds, &format!("h{round}")).await?;
        let r = through_sql(&db.pool, args.clients, seconds, &format!("s{round}")).await?;
        println!(
            "  {:<12} round {round}: emulator {:>6.0}/s (p50 {}, p99 {})   raw SQL {:>6.0}/s (p50 {}, p99 {})   ratio {:.2}{}",
            which.name(),
            e.rate,
            ms(percentile(&e.latencies, 50.0)),
            ms(percentile(&e.latencies, 99.0)),
            r.rate,
            ms(percentile(&r.latencies, 50.0)),
            ms(percentile(&r.latencies, 99.0)),
            e.rate / r.rate,
            match (&e.first_error, &r.first_error) {
                (None, None) => String::new(),
                (a, b) => format!(
                    "   errors: emulator {} ({}), raw {} ({})",
                    e.errors,
                    a.as_deref().unwrap_or("-"),
                    r.errors,
                    b.as_deref().unwrap_or("-")
                ),
            }
        );
        errors += e.errors + r.errors;
        emu.push(e);
        raw.push(r);
    }
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders.orders WHERE status = 'PENDING'")
            .fetch_one(&db.pool)
            .await?;
    let orders = db.count("orders.orders").await?;
    let outbox = db.count("orders.outbox").await?;
    println!(
        "  {:<12} {orders} orders written; at the end {pending} still PENDING, {outbox} outbox rows not yet relayed",
        which.name()
    );
    running.stop().await?;
    let pick = |loads: &[Load], f: &dyn Fn(&Load) -> f64| median(loads.iter().map(f).collect());
    let p = |q: f64| move |l: &Load| percentile(&l.latencies, q).as_secs_f64();
    Ok(Throughput {
        emulator: pick(&emu, &|l| l.rate),
        raw: pick(&raw, &|l| l.rate),
        emulator_p50: Duration::from_secs_f64(pick(&emu, &p(50.0))),
        emulator_p99: Duration::from_secs_f64(pick(&emu, &p(99.0))),
        raw_p50: Duration::from_secs_f64(pick(&raw, &p(50.0))),
        raw_p99: Duration::from_secs_f64(pick(&raw, &p(99.0))),
        errors,
    })
}

// ---------------------------------------------------------------------------
// 3. End to end.

struct EndToEnd {
    posted: usize,
    confirmed: usize,
    other: usize,
    missing: usize,
    http_errors: usize,
    /// POST sent until a poll saw CONFIRMED.
    seen: Vec<Duration>,
    /// POST sent until the saga's `updated_at = now()` (its transaction's start).
    stamped: Vec<Duration>,
    post: Vec<Duration>,
    polls: usize,
    poll_time: Duration,
    achieved_rate: f64,
    hops: Hops,
}

/// Where a confirmed order's time went, from the rows each step wrote (each
/// stamped with its transaction's start), each list sorted.
#[derive(Default)]
struct Hops {
    /// POST sent until create-order's transaction began.
    to_commit: Vec<Duration>,
    /// create-order's transaction until the inventory consumer's (relay + consumer).
    to_stock: Vec<Duration>,
    /// create-order's transaction until the customers consumer's.
    to_credit: Vec<Duration>,
    /// The later of the two until the saga's (relay + saga).
    to_confirmed: Vec<Duration>,
}

impl Hops {
    /// The hops of the confirmed orders `sent` (id, when its POST was sent).
    async fn of(pool: &PgPool, sent: &HashMap<uuid::Uuid, OffsetDateTime>) -> Result<Self> {
        let ids: Vec<uuid::Uuid> = sent.keys().copied().collect();
        type Row = (
            uuid::Uuid,
            OffsetDateTime,
            OffsetDateTime,
            OffsetDateTime,
            OffsetDateTime,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT o.id, o.created_at,
                    (SELECT max(r.created_at) FROM inventory.reservations r WHERE r.order_id = o.id),
                    c.created_at, o.updated_at
             FROM orders.orders o JOIN customers.credit_reservations c ON c.order_id = o.id
             WHERE o.id = ANY($1) AND o.status = 'CONFIRMED'",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await?;
        let span = |from: OffsetDateTime, to: OffsetDateTime| {
            Duration::from_secs_f64((to - from).as_seconds_f64().max(0.0))
        };
        let mut hops = Hops::default();
        for (id, created, stock, credit, confirmed) in rows {
            hops.to_commit.push(span(sent[&id], created));
            hops.to_stock.push(span(created, stock));
            hops.to_credit.push(span(created, credit));
            hops.to_confirmed.push(span(stock.max(credit), confirmed));
        }
        for list in [
            &mut hops.to_commit,
            &mut hops.to_stock,
            &mut hops.to_credit,
            &mut hops.to_confirmed,
        ] {
            list.sort();
        }
        Ok(hops)
    }
}

/// A posted order waiting to be decided.
struct Posted {
    id: uuid::Uuid,
    sent: Instant,
    sent_wall: OffsetDateTime,
}

/// Posts `rate` orders a second for `seconds`; returns when every one is
/// decided (or 30 s after the last POST).
async fn steady_rate(
    http: &reqwest::Client,
    running: &RunningEmulator,
    pool: &PgPool,
    rate: u32,
    seconds: u64,
    poll: Duration,
    run: &str,
) -> Result<EndToEnd> {
    let (posted_tx, mut posted_rx) = tokio::sync::mpsc::unbounded_channel::<Posted>();
    let post_latencies = Arc::new(Mutex::new(Vec::new()));
    let http_errors = Arc::new(Mutex::new((0_usize, None::<String>)));
    let url = Arc::new(running.url("/orders"));
    let total = usize::try_from(u64::from(rate) * seconds).expect("a count");

    // The poller: every `poll`, the ids not yet decided, in one query.
    let poller = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut pending: HashMap<uuid::Uuid, (Instant, OffsetDateTime)> = HashMap::new();
            let (mut seen, mut stamped) = (Vec::new(), Vec::new());
            let mut decided: HashMap<uuid::Uuid, OffsetDateTime> = HashMap::new();
            let (mut confirmed, mut other, mut polls) = (0, 0, 0);
            let mut poll_time = Duration::ZERO;
            let mut closed = false;
            let mut give_up: Option<Instant> = None;
            loop {
                loop {
                    match posted_rx.try_recv() {
                        Ok(p) => {
                            pending.insert(p.id, (p.sent, p.sent_wall));
                        }
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                if closed && pending.is_empty() {
                    break;
                }
                if closed {
                    let at =
                        *give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
                    if Instant::now() > at {
                        break;
                    }
                }
                if !pending.is_empty() {
                    let ids: Vec<uuid::Uuid> = pending.keys().copied().collect();
                    let asked = Instant::now();
                    let rows: Vec<(uuid::Uuid, String, OffsetDateTime)> = sqlx::query_as(
                        "SELECT id, status, updated_at FROM orders.orders
                         WHERE id = ANY($1) AND status <> 'PENDING'",
                    )
                    .bind(&ids)
                    .fetch_all(&pool)
                    .await?;
                    let now = Instant::now();
                    polls += 1;
                    poll_time += now - asked;
                    for (id, status, updated_at) in rows {
                        let Some((sent, sent_wall)) = pending.remove(&id) else {
                            continue;
                        };
                        if status == "CONFIRMED" {
                            confirmed += 1;
                            decided.insert(id, sent_wall);
                            seen.push(now - sent);
                            let d = (updated_at - sent_wall).as_seconds_f64().max(0.0);
                            stamped.push(Duration::from_secs_f64(d));
                        } else {
                            other += 1;
                        }
                    }
                }
                tokio::time::sleep(poll).await;
            }
            seen.sort();
            stamped.sort();
            anyhow::Ok((
                decided,
                seen,
                stamped,
                confirmed,
                other,
                pending.len(),
                polls,
                poll_time,
            ))
        })
    };

    // The customers: CUSTOMERS of them in turn, their tokens signed before the
    // clock starts (signing one costs about a millisecond of CPU: at 500/s the
    // test's own signing would take a core from the system it measures).
    const CUSTOMERS: usize = 1000;
    let customers: Vec<String> = (0..CUSTOMERS.min(total))
        .map(|n| format!("{run}-{n}"))
        .collect();
    for customer in &customers {
        tests::bearer(customer);
    }
    // The sender: one POST per tick, each in a task of its own (open loop).
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut posts = tokio::task::JoinSet::new();
    let began = Instant::now();
    for n in 0..total {
        ticks.tick().await;
        let (http, url, tx) = (http.clone(), Arc::clone(&url), posted_tx.clone());
        let (latencies, errors) = (Arc::clone(&post_latencies), Arc::clone(&http_errors));
        let customer = customers[n % customers.len()].clone();
        posts.spawn(async move {
            let sent = Instant::now();
            let sent_wall = OffsetDateTime::now_utc();
            match post_order(&http, &url, &customer).await {
                Ok(id) => {
                    if let Ok(mut l) = latencies.lock() {
                        l.push(sent.elapsed());
                    }
                    let _ = tx.send(Posted {
                        id,
                        sent,
                        sent_wall,
                    });
                }
                Err(e) => {
                    if let Ok(mut errors) = errors.lock() {
                        errors.0 += 1;
                        errors.1.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
        });
    }
    let achieved_rate = total as f64 / began.elapsed().as_secs_f64();
    while posts.join_next().await.is_some() {}
    drop(posted_tx);
    let (decided, seen, stamped, confirmed, other, missing, polls, poll_time) = poller.await??;
    let hops = Hops::of(pool, &decided).await?;
    let mut post = post_latencies.lock().map(|l| l.clone()).unwrap_or_default();
    post.sort();
    let (http_errors, first_error) = http_errors.lock().map(|e| e.clone()).unwrap_or_default();
    if let Some(e) = first_error {
        println!("  {run}: {http_errors} POST(s) failed, the first with: {e}");
    }
    Ok(EndToEnd {
        posted: total,
        confirmed,
        other,
        missing,
        http_errors,
        seen,
        stamped,
        post,
        polls,
        poll_time,
        achieved_rate,
        hops,
    })
}

async fn end_to_end(mode: Mode, args: &Args) -> Result<EndToEnd> {
    let db = TestDb::fresh().await?;
    let running = tests::emulated::start_unthrottled(&db, mode, &args.env()).await?;
    let http = http_client()?;
    stock_up(&http, &running.base).await?;
    // One second at the rate first: consumers have their groups, instances
    // and pools are warm, and it all drains before the clock runs.
    steady_rate(&http, &running, &db.pool, args.rate, 1, args.poll, "warm").await?;
    let measured = steady_rate(
        &http,
        &running,
        &db.pool,
        args.rate,
        args.e2e_seconds,
        args.poll,
        "e2e",
    )
    .await?;
    running.stop().await?;
    Ok(measured)
}

// ---------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let mut modes = Vec::new();
    for which in &args.modes {
        if let Some(mode) = mode(*which, args.clients)? {
            modes.push((*which, mode));
        }
    }
    println!(
        "emulator benchmark: {} start(s) per mode; POST /orders with {} keep-alive clients, {} s per phase, {} rounds, \
         emulator and raw SQL alternating (median); end to end at {}/s for {} s, polled every {} ms",
        args.starts,
        args.clients,
        args.seconds,
        args.rounds,
        args.rate,
        args.e2e_seconds,
        args.poll.as_millis()
    );

    // 1. Start to ready.
    println!("\n1. start to ready (each start on a fresh database; medians)");
    let mut summary = Vec::new();
    let mut cold_rows: Vec<(String, Vec<Duration>, Vec<Duration>)> = Vec::new();
    for (which, mode) in &modes {
        let mut starts = Vec::new();
        for _ in 0..args.starts {
            starts.push(start_once(mode.clone(), &args.env()).await?);
        }
        for s in &starts {
            for (name, at_start, prewarm) in &s.cold {
                let row = match cold_rows.iter_mut().position(|r| &r.0 == name) {
                    Some(i) => &mut cold_rows[i],
                    None => {
                        cold_rows.push((name.clone(), Vec::new(), Vec::new()));
                        let last = cold_rows.len() - 1;
                        &mut cold_rows[last]
                    }
                };
                row.1.extend(at_start);
                row.2.extend(prewarm);
            }
        }
        let started = median(starts.iter().map(|s| s.started).collect());
        let answered = median(starts.iter().map(|s| s.answered).collect());
        let worst = starts.iter().map(|s| s.answered).max().unwrap_or_default();
        println!(
            "  {:<44} System::start + bind {:>9}   first answer {:>9}   (slowest {})",
            format!("System::start ({})", which.name()),
            ms(started),
            ms(answered),
            ms(worst)
        );
        summary.push(format!(
            "| start to first answer, {} (in the test process) | {} | < 1 s |",
            which.name(),
            ms(answered)
        ));
    }
    if !cold_rows.is_empty() {
        println!("  cold starts behind the Runtime API (spawn to first `next`):");
        println!(
            "    {:<28} {:>22} {:>18}",
            "function", "first instance", "prewarm() alone"
        );
        for (name, at_start, prewarm) in cold_rows {
            let show = |v: Vec<Duration>| {
                if v.is_empty() {
                    "not started".to_owned()
                } else {
                    ms(median(v))
                }
            };
            println!(
                "    {name:<28} {:>22} {:>18}",
                show(at_start),
                show(prewarm)
            );
        }
    }
    // The binary: in-process on a database it has run on before, the same on a
    // new empty database (every migration runs), and with --runtime-api.
    let mut binaries = Vec::new();
    if args.modes.contains(&Which::InProcess) {
        binaries.extend([(Which::InProcess, false), (Which::InProcess, true)]);
    }
    if modes.iter().any(|(w, _)| *w == Which::RuntimeApi) {
        binaries.push((Which::RuntimeApi, false));
    }
    for (which, empty) in binaries {
        let runtime_api = which == Which::RuntimeApi;
        let mut runs = Vec::new();
        for _ in 0..args.starts {
            runs.push(binary_once(runtime_api, empty, &args.env()).await?);
        }
        let ready = median(runs.iter().map(|r| r.0).collect());
        let printed = median(runs.iter().map(|r| r.1).collect());
        let answered = median(runs.iter().map(|r| r.2).collect());
        let label = format!(
            "`emulator up{}`{}",
            if runtime_api { " --runtime-api" } else { "" },
            if empty { ", empty database" } else { "" }
        );
        println!(
            "  {label:<44} `Ready in` line {:>9} (it printed {})   first answer {:>9}",
            ms(ready),
            ms(printed),
            ms(answered)
        );
        summary.push(format!(
            "| {label} until `Ready in` (until the first answer) | {} ({}) | < 1 s |",
            ms(ready),
            ms(answered)
        ));
    }

    // 2. Throughput.
    println!(
        "\n2. POST /orders throughput, {} clients (raw SQL: the same transaction by hand, {} tasks, same database, same background)",
        args.clients, args.clients
    );
    let mut results = Vec::new();
    for (which, mode) in &modes {
        results.push((*which, throughput(*which, mode.clone(), &args).await?));
    }
    println!(
        "  {:<12} {:>12} {:>9} {:>9} {:>12} {:>9} {:>9} {:>7} {:>7}",
        "mode", "emulator/s", "p50", "p99", "raw SQL/s", "p50", "p99", "ratio", "errors"
    );
    for (which, t) in &results {
        println!(
            "  {:<12} {:>12.0} {:>9} {:>9} {:>12.0} {:>9} {:>9} {:>7.2} {:>7}",
            which.name(),
            t.emulator,
            ms(t.emulator_p50),
            ms(t.emulator_p99),
            t.raw,
            ms(t.raw_p50),
            ms(t.raw_p99),
            t.emulator / t.raw,
            t.errors
        );
        summary.push(format!(
            "| POST /orders, {} | {:.0}/s vs raw {:.0}/s = **{:.2}** (p50 {}, p99 {}) | ≥ 0.7 |",
            which.name(),
            t.emulator,
            t.raw,
            t.emulator / t.raw,
            ms(t.emulator_p50),
            ms(t.emulator_p99)
        ));
    }

    // 3. End to end.
    println!(
        "\n3. end to end POST -> CONFIRMED at {}/s for {} s (a bulk poll of orders.orders every {} ms)",
        args.rate,
        args.e2e_seconds,
        args.poll.as_millis()
    );
    println!(
        "  {:<12} {:>7} {:>9} {:>5} {:>9} {:>9} {:>9} {:>13} {:>13} {:>9} {:>9} {:>10}",
        "mode",
        "posted",
        "confirmed",
        "other",
        "p50",
        "p99",
        "max",
        "p50 (stamp)",
        "p99 (stamp)",
        "POST p50",
        "POST p99",
        "poll query"
    );
    for (which, mode) in &modes {
        let e = end_to_end(mode.clone(), &args).await?;
        let poll_avg = if e.polls == 0 {
            Duration::ZERO
        } else {
            e.poll_time / u32::try_from(e.polls).expect("polls in a run")
        };
        println!(
            "  {:<12} {:>7} {:>9} {:>5} {:>9} {:>9} {:>9} {:>13} {:>13} {:>9} {:>9} {:>10}",
            which.name(),
            e.posted,
            e.confirmed,
            e.other + e.missing + e.http_errors,
            ms(percentile(&e.seen, 50.0)),
            ms(percentile(&e.seen, 99.0)),
            ms(e.seen.last().copied().unwrap_or_default()),
            ms(percentile(&e.stamped, 50.0)),
            ms(percentile(&e.stamped, 99.0)),
            ms(percentile(&e.post, 50.0)),
            ms(percentile(&e.post, 99.0)),
            ms(poll_avg)
        );
        if e.other + e.missing + e.http_errors > 0 {
            println!(
                "  {:<12} not confirmed: {} decided otherwise, {} still pending after 30 s, {} POSTs failed",
                which.name(),
                e.other,
                e.missing,
                e.http_errors
            );
        }
        println!(
            "  {:<12} sent at {:.0}/s; {} polls",
            which.name(),
            e.achieved_rate,
            e.polls
        );
        let h = &e.hops;
        println!(
            "  {:<12} hops p50/p99: POST->commit {}/{}, commit->stock {}/{}, commit->credit {}/{}, later answer->CONFIRMED {}/{}",
            which.name(),
            ms(percentile(&h.to_commit, 50.0)),
            ms(percentile(&h.to_commit, 99.0)),
            ms(percentile(&h.to_stock, 50.0)),
            ms(percentile(&h.to_stock, 99.0)),
            ms(percentile(&h.to_credit, 50.0)),
            ms(percentile(&h.to_credit, 99.0)),
            ms(percentile(&h.to_confirmed, 50.0)),
            ms(percentile(&h.to_confirmed, 99.0)),
        );
        summary.push(format!(
            "| POST -> CONFIRMED at {}/s, {} | p50 {}, **p99 {}** | p99 < 50 ms |",
            args.rate,
            which.name(),
            ms(percentile(&e.seen, 50.0)),
            ms(percentile(&e.seen, 99.0))
        ));
    }

    println!("\nsummary\n| measure | figure | goal |\n| --- | --- | --- |");
    for line in summary {
        println!("{line}");
    }
    Ok(())
}
