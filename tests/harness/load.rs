//! Closed-loop load for the benchmarks: N tasks, each sending its next request as
//! soon as the last one is answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

/// What a closed-loop phase did.
#[derive(Debug)]
pub struct Load {
    pub rate: f64,
    pub latencies: Vec<Duration>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Load {
    /// One line for a report: rate, p50, p99, and the errors if any.
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name} {:>6.0}/s (p50 {}, p99 {}{})",
            self.rate,
            crate::ms(crate::percentile(&self.latencies, 50.0)),
            crate::ms(crate::percentile(&self.latencies, 99.0)),
            match &self.first_error {
                None => String::new(),
                Some(e) => format!(", {} errors: {e}", self.errors),
            }
        )
    }
}

/// `POST /orders` at `base` for `duration` from `clients` keep-alive clients,
/// each the customer `{run}-{task}` with its own token (the same customers,
/// and tokens, in every phase that gives the same `run`).
pub async fn post_orders(
    base: &str,
    clients: usize,
    duration: Duration,
    run: &str,
) -> Result<Load> {
    let http = crate::http_client()?;
    let url = Arc::new(format!("{base}/orders"));
    let run = run.to_owned();
    closed_loop(clients, duration, move |task, _| {
        let (http, url) = (http.clone(), Arc::clone(&url));
        let customer = format!("{run}-{task}");
        async move { Ok(crate::post_order(&http, &url, &customer).await.map(drop)?) }
    })
    .await
}

/// Runs `work(task, n)` in `clients` tasks, back to back, for `duration`.
pub async fn closed_loop<F, Fut>(clients: usize, duration: Duration, work: F) -> Result<Load>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let work = Arc::new(work);
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..clients {
        let work = Arc::clone(&work);
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut first_error) = (Vec::new(), 0, None);
            let mut n = 0;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match work(task, n).await {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                n += 1;
            }
            (latencies, errors, first_error)
        }));
    }
    let mut load = Load {
        rate: 0.0,
        latencies: Vec::new(),
        errors: 0,
        first_error: None,
    };
    for task in tasks {
        let (latencies, errors, first_error) = task.await?;
        load.latencies.extend(latencies);
        load.errors += errors;
        if load.first_error.is_none() {
            load.first_error = first_error;
        }
    }
    load.rate = load.latencies.len() as f64 / start.elapsed().as_secs_f64();
    load.latencies.sort();
    Ok(load)
}

/// The median (the upper one of an even count); the values must not be empty.
pub fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}
