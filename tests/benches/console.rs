//! The web console's cost, in one run: `POST /orders` throughput (keep-alive,
//! N clients) through one listener of a running system (in-process) with its
//! console, without a console page open and with `/_console/` open in headless
//! Chromium (WebDriver), which takes a snapshot every second over SSE and
//! renders it. Each phase starts with the pipeline idle; rounds alternate the
//! order of the phases (ABBA); the ratio is with / without. Goal ≥ 0.95.
//!
//! `cargo bench -p tests --bench console -- [--clients 16] [--seconds 8] [--rounds 3]`
//! (needs `chromium` and `chromedriver`).

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use emulator::system::Mode;
use tests::load::{median, post_orders};
use tests::{http_client, stock_up, TestDb};

struct Args {
    clients: usize,
    seconds: u64,
    rounds: usize,
}

fn args() -> Result<Args> {
    let mut parsed = Args {
        clients: 16,
        seconds: 8,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("missing value");
        match arg.as_str() {
            "--clients" => parsed.clients = value()?.parse()?,
            "--seconds" => parsed.seconds = value()?.parse()?,
            "--rounds" => parsed.rounds = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(parsed)
}

/// chromedriver on a spare port, and a headless Chromium session through it.
async fn browser() -> Result<(std::process::Child, fantoccini::Client)> {
    let port = tests::spare_port()?;
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("chromedriver (Debian's chromium-driver)")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                    "--disable-dev-shm-usage", "--window-size=1400,1800"]}),
    );
    let client =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await?;
    Ok((driver, client))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let db = TestDb::fresh().await?;
    let running = tests::emulated::start_unthrottled(&db, Mode::InProcess, &[]).await?;
    let system = running.system.as_ref().context("the system")?;
    let template = tests::emulated::unthrottled_template()?;

    // The same system behind a listener with the console, as `emulator up` serves it.
    let redis = shared::relay::connect_redis(&tests::redis_url(), Duration::from_secs(5)).await?;
    let source = tests::emulated::status_source(&db, redis, &running, &template)?;
    let status = Arc::clone(&source);
    let with_console = emulator::Emulator::of(system)
        .with_status(Arc::clone(&source))
        .with_console(tests::emulated::console(&db, source, &template));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(emulator::serve(with_console, listener, async move {
        let _ = stopped.await;
    }));
    stock_up(&http_client()?, &base).await?;
    let (mut driver, page) = browser().await?;
    println!(
        "POST /orders, {} clients, {} s per phase, {} rounds, the emulator in-process",
        args.clients, args.seconds, args.rounds
    );
    let seconds = Duration::from_secs(args.seconds);
    post_orders(&base, args.clients, Duration::from_secs(2), "console").await?;
    let (mut with, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let functions = Arc::clone(&system.functions);
    // Each phase starts with the pipeline idle: the backlog of one phase does
    // not spill into the next.
    let settle = || async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !status.read(&functions).await?.idle {
            anyhow::ensure!(Instant::now() < deadline, "not idle within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    };
    let console = format!("{base}/_console/");
    let phase = |open: bool| {
        let (page, console, base, settle) = (&page, &console, &base, &settle);
        async move {
            settle().await?;
            if open {
                page.goto(console).await?;
                // Live: the first snapshot is in before the load starts.
                page.wait()
                    .for_element(fantoccini::Locator::Css(
                        "#state.badge.idle, #state.badge.busy",
                    ))
                    .await?;
            } else {
                page.goto("about:blank").await?;
            }
            post_orders(base, args.clients, seconds, "console").await
        }
    };
    for round in 1..=args.rounds {
        // ABBA: neither phase is always the first of its round.
        let (closed, open) = if round % 2 == 1 {
            let closed = phase(false).await?;
            (closed, phase(true).await?)
        } else {
            let open = phase(true).await?;
            (phase(false).await?, open)
        };
        println!(
            "  round {round}: {}   {}   with / without {:.3}",
            closed.line("console closed"),
            open.line("console open"),
            open.rate / closed.rate
        );
        ratios.push(open.rate / closed.rate);
        with.push(open.rate);
        without.push(closed.rate);
    }
    println!(
        "  median: console open {:.0}/s, closed {:.0}/s, ratio {:.3} (goal >= 0.95)",
        median(with),
        median(without),
        median(ratios)
    );
    page.close().await?;
    let _ = driver.kill();
    let _ = driver.wait();
    let _ = stop.send(());
    server.await??;
    running.stop().await
}
