//! The cost of replica acknowledgement: the relay draining a pre-filled outbox
//! into a Redis primary with one replica (both on loopback, started here),
//! with `REDIS_MIN_REPLICAS=0` and `=1` (a `WAIT 1` after every batch's XADDs),
//! alternating, in one run.
//!
//! `cargo bench -p tests --bench relay_replication -- [--rows 200000] [--rounds 2]`

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use shared::relay::RelayOptions;
use tests::{spare_port, unique_namespace, RedisServer, TestDb};

#[tokio::main]
async fn main() -> Result<()> {
    let (mut rows, mut rounds) = (200_000_i64, 2_u32);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context("missing value");
        match arg.as_str() {
            "--rows" => rows = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    let primary = RedisServer::start(spare_port()?).await?;
    let port = primary.port.to_string();
    let _replica =
        RedisServer::start_with(spare_port()?, &["--replicaof", "127.0.0.1", &port]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let db = TestDb::fresh().await?;
    println!("relay with replica acknowledgement: {rows} rows per phase, batches of 500, primary + 1 replica on loopback");
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for min_replicas in [0_u32, 1] {
            tests::prefill_outbox(&db, rows).await?;
            let options = RelayOptions {
                stream_namespace: unique_namespace(),
                min_replicas,
                ..tests::relay_options()
            };
            let relay = tests::relay(&db.pool, &primary.url(), options).await?;
            let started = Instant::now();
            let summary = relay
                .drain_until(Instant::now() + Duration::from_secs(600))
                .await?;
            let took = started.elapsed();
            if summary.published != rows as u64 {
                bail!("published {} of {rows}", summary.published);
            }
            let rate = rows as f64 / took.as_secs_f64();
            println!(
                "round {round}, REDIS_MIN_REPLICAS={min_replicas}: {rows} events in {:.2} s = {rate:.0} events/s",
                took.as_secs_f64()
            );
            rates[min_replicas as usize].push(rate);
            let mut conn = redis::Client::open(primary.url())?
                .get_multiplexed_async_connection()
                .await?;
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (without, with) = (mean(&rates[0]), mean(&rates[1]));
    println!(
        "mean: without WAIT {without:.0} events/s, with WAIT 1 {with:.0} events/s; ratio {:.2}",
        with / without
    );
    Ok(())
}
