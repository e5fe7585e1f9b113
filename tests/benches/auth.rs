//! The cost of the JWT authorizer in the emulator's HTTP path, in one run:
//!
//! 1. `POST /orders` over real HTTP (keep-alive, N clients, each a customer with
//!    its own token) through two listeners of one running system: one whose
//!    authorizer verifies every token (the development key, ES256), one with
//!    authorizers off (`--no-auth`: the same token's claims passed unchecked).
//!    Rounds alternate; the ratio is with / without.
//! 2. The check alone (`Gate::authorize`): a token seen for the first time (its
//!    signature verified) and a token seen before (remembered; times and scopes
//!    checked again).
//!
//! `cargo bench -p tests --bench auth -- [--clients 16] [--seconds 8] [--rounds 3] [--tokens 2000]`

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use emulator::auth::{Gate, Trust};
use emulator::system::Mode;
use tests::load::{median, post_orders};
use tests::{http_client, stock_up, TestDb};

struct Args {
    clients: usize,
    seconds: u64,
    rounds: usize,
    tokens: usize,
}

fn args() -> Result<Args> {
    let mut parsed = Args {
        clients: 16,
        seconds: 8,
        rounds: 3,
        tokens: 2000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("missing value");
        match arg.as_str() {
            "--clients" => parsed.clients = value()?.parse()?,
            "--seconds" => parsed.seconds = value()?.parse()?,
            "--rounds" => parsed.rounds = value()?.parse()?,
            "--tokens" => parsed.tokens = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let db = TestDb::fresh().await?;
    let running = tests::emulated::start_unthrottled(&db, Mode::InProcess, &[]).await?;
    let system = running.system.as_ref().context("the system")?;
    let template = tests::emulated::unthrottled_template()?;

    // The same system behind a second listener whose authorizers check nothing.
    let mut open = emulator::Emulator::of(system);
    open.gate = Arc::new(Gate::new(&template, Trust::Off)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let open_base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(emulator::serve(open, listener, async move {
        let _ = stopped.await;
    }));

    stock_up(&http_client()?, &running.base).await?;
    println!(
        "POST /orders, {} clients, {} s per phase, {} rounds, the emulator in-process",
        args.clients, args.seconds, args.rounds
    );
    let seconds = Duration::from_secs(args.seconds);
    post_orders(&running.base, args.clients, Duration::from_secs(2), "c").await?;
    post_orders(&open_base, args.clients, Duration::from_secs(2), "c").await?;
    let (mut with, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let verified = post_orders(&running.base, args.clients, seconds, "c").await?;
        let open = post_orders(&open_base, args.clients, seconds, "c").await?;
        println!(
            "  round {round}: {}   {}   with / without {:.3}",
            verified.line("authorizer"),
            open.line("no authorizer"),
            verified.rate / open.rate
        );
        ratios.push(verified.rate / open.rate);
        with.push(verified.rate);
        without.push(open.rate);
    }
    println!(
        "  median: authorizer {:.0}/s, no authorizer {:.0}/s, ratio {:.3}",
        median(with),
        median(without),
        median(ratios)
    );
    let _ = stop.send(());
    server.await??;
    running.stop().await?;

    // The check alone.
    let key = tests::auth::key();
    let gate = Gate::new(&template, Trust::DevKey(Arc::clone(&key)))?;
    let route = system_route(&template)?;
    let headers: Vec<reqwest::header::HeaderMap> = (0..args.tokens)
        .map(|i| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                "authorization",
                tests::bearer(&format!("micro-{i}"))
                    .parse()
                    .expect("a header"),
            );
            h
        })
        .collect();
    let scopes = vec![route.1];
    let time = |label: &str| -> Result<()> {
        let began = Instant::now();
        for h in &headers {
            gate.authorize(&route.0, &scopes, h)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        let each = began.elapsed() / u32::try_from(headers.len())?;
        println!("  Gate::authorize, {label}: {} µs each", each.as_micros());
        Ok(())
    };
    println!("The check alone, {} tokens:", args.tokens);
    time("first sight (signature verified)")?;
    time("seen before (remembered)")?;
    Ok(())
}

/// `POST /orders`' authorizer (`Api/Name`) and one of its scopes.
fn system_route(template: &emulator::template::Template) -> Result<(String, String)> {
    let routes = emulator::routes::RouteTable::from_template(template);
    let post = routes
        .routes()
        .iter()
        .find(|r| r.method == "POST" && r.path == "/orders")
        .context("a POST /orders route")?;
    Ok((
        post.guard
            .authorizer
            .clone()
            .context("POST /orders has no authorizer")?,
        post.guard.scopes.first().cloned().unwrap_or_default(),
    ))
}
