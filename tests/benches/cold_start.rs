//! Cold starts of the release function binaries behind the emulator's Lambda
//! Runtime API: from spawning the process to its first `GET .../invocation/next`
//! (what Lambda bills as Init), each function with its template environment, as in
//! Lambda (JSON logs, `AWS_LAMBDA_*` variables). Beside them, in the same run, the
//! smallest possible `lambda_runtime` program (the test fixture `lambda-fixture`)
//! as the floor: what is left is the functions' own initialisation.
//!
//! `cargo build --release --bins && cargo bench -p tests --bench cold_start -- [--samples 30]`

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use anyhow::{Context as _, Result};
use emulator::runtime::{FunctionProcess, Pool};

fn samples() -> Result<usize> {
    let mut it = std::env::args().skip(1);
    let mut samples = 30;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--samples" => samples = it.next().context("--samples N")?.parse()?,
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(samples)
}

/// `samples` cold starts of `spec`, each a new process.
async fn measure(spec: &FunctionProcess, samples: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let pool = Pool::new(spec.clone());
        let init = pool
            .prewarm()
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", spec.name))?;
        times.push(init);
        pool.shutdown(Duration::from_millis(500)).await;
    }
    times.sort();
    Ok(times)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let samples = samples()?;
    let exe = std::env::current_exe()?;
    let release = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("bench binary outside target/")?
        .to_path_buf();
    let template = tests::emulated::template()?;
    let mut specs = Vec::new();
    let floor = FunctionProcess::new("Floor", release.join("lambda-fixture"));
    specs.push(("lambda-fixture (floor)".to_owned(), floor));
    for function in &template.functions {
        let mut spec =
            FunctionProcess::new(function.logical_id.clone(), release.join(&function.binary));
        spec.env = function.environment.clone();
        // What the template resolves only in AWS; nothing connects during init.
        spec.env.insert(
            "DATABASE_URL".into(),
            "postgres://postgres@127.0.0.1:5432/postgres".into(),
        );
        spec.env.insert("REDIS_URL".into(), tests::redis_url());
        spec.env.remove("DATABASE_PASSWORD");
        spec.memory_mb = function.memory_mb;
        specs.push((function.binary.clone(), spec));
    }
    println!("cold start: spawn to first `next`, {samples} processes each (release)");
    println!("| function | binary | min | median | p90 | max | median − floor |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut floor_median = Duration::ZERO;
    for (name, spec) in &specs {
        let size = std::fs::metadata(&spec.binary)
            .with_context(|| format!("{} (cargo build --release --bins)", spec.binary.display()))?
            .len();
        let times = measure(spec, samples).await?;
        let median = times[times.len() / 2];
        let p90 = times[(times.len() * 9 / 10).min(times.len() - 1)];
        if floor_median.is_zero() {
            floor_median = median;
        }
        println!(
            "| {name} | {:.1} MB | {} | {} | {} | {} | {} |",
            size as f64 / 1_048_576.0,
            ms(times[0]),
            ms(median),
            ms(p90),
            ms(times[times.len() - 1]),
            ms(median.saturating_sub(floor_median)),
        );
    }
    Ok(())
}
