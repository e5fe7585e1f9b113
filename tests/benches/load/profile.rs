//! Where the machine goes during a load phase: CPU time per process kind (from
//! `/proc`), PostgreSQL transactions and rows (`pg_stat_database`), statements
//! (`pg_stat_statements`, when the server loads it), Redis commands
//! (`INFO commandstats`), and handler calls per consuming function with their
//! batch sizes (the emulator's `/metrics`). Two snapshots, their difference per
//! order.

use std::collections::BTreeMap;

use anyhow::Result;
use sqlx::PgPool;

/// Linux's clock ticks per second (`getconf CLK_TCK`) on x86_64 and arm64.
const TICKS_PER_SECOND: f64 = 100.0;

/// The counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// CPU seconds by process kind: `postgres`, `redis`, `this process`.
    cpu: BTreeMap<String, f64>,
    /// Every CPU's busy and total seconds (`/proc/stat`).
    machine: (f64, f64),
    /// `pg_stat_database` of the current database: commits, rows inserted,
    /// updated, deleted.
    pg: [i64; 4],
    /// Statement calls by query text, when `pg_stat_statements` is there.
    statements: BTreeMap<String, (i64, f64)>,
    /// Redis calls by command.
    redis: BTreeMap<String, u64>,
    /// Handler calls and records by service (`batch_size_count` / `_sum`).
    batches: BTreeMap<String, (f64, f64)>,
}

impl Snapshot {
    pub async fn take(
        pool: &PgPool,
        redis: &mut shared::redis_link::Redis,
        http: &reqwest::Client,
        base: &str,
    ) -> Result<Self> {
        let pg: (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted
             FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(pool)
        .await?;
        // Only there when the server preloads it (`shared_preload_libraries`).
        let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(pool)
            .await;
        let statements: Vec<(String, i64, f64)> = sqlx::query_as(
            "SELECT query, calls, total_exec_time FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(redis)
            .await?;
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok(Self {
            cpu: cpu_by_kind(),
            machine: machine_cpu(),
            pg: [pg.0, pg.1, pg.2, pg.3],
            statements: statements
                .into_iter()
                .map(|(q, calls, ms)| (q, (calls, ms)))
                .collect(),
            redis: commandstats(&info),
            batches: batch_sizes(&metrics),
        })
    }

    /// What happened between `self` and `later`, per `orders`, as lines.
    pub fn report(&self, later: &Self, orders: u64) -> Vec<String> {
        let per = |n: f64| n / orders.max(1) as f64;
        let mut lines = Vec::new();
        let (busy, total) = (
            later.machine.0 - self.machine.0,
            later.machine.1 - self.machine.1,
        );
        let cpu: Vec<String> = later
            .cpu
            .iter()
            .map(|(kind, s)| {
                let used = s - self.cpu.get(kind).copied().unwrap_or(0.0);
                format!("{kind} {:.3}", per(used * 1000.0))
            })
            .collect();
        lines.push(format!(
            "CPU ms per order: {} (machine {:.0} % busy)",
            cpu.join(", "),
            100.0 * busy / total.max(1e-9)
        ));
        let d = |i: usize| per((later.pg[i] - self.pg[i]) as f64);
        lines.push(format!(
            "PostgreSQL per order: {:.2} commits, rows {:.2} inserted / {:.2} updated / {:.2} deleted",
            d(0),
            d(1),
            d(2),
            d(3)
        ));
        let mut statements: Vec<(f64, f64, &str)> = later
            .statements
            .iter()
            .map(|(q, (calls, ms))| {
                let (c0, m0) = self.statements.get(q).copied().unwrap_or((0, 0.0));
                ((calls - c0) as f64, ms - m0, q.as_str())
            })
            .filter(|(calls, _, _)| *calls > 0.0)
            .collect();
        if !statements.is_empty() {
            statements.sort_by(|a, b| b.1.total_cmp(&a.1));
            let calls: f64 = statements.iter().map(|s| s.0).sum();
            let ms: f64 = statements.iter().map(|s| s.1).sum();
            lines.push(format!(
                "statements per order: {:.1}, {:.3} ms executing; the costliest:",
                per(calls),
                per(ms)
            ));
            for (calls, ms, q) in statements.iter().take(8) {
                let q: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
                lines.push(format!(
                    "  {:>6.2} calls {:>7.4} ms  {}",
                    per(*calls),
                    per(*ms),
                    q.chars().take(90).collect::<String>()
                ));
            }
        }
        let mut redis: Vec<(u64, &str)> = later
            .redis
            .iter()
            .map(|(c, n)| (n - self.redis.get(c).copied().unwrap_or(0), c.as_str()))
            .filter(|(n, _)| *n > 0)
            .collect();
        redis.sort_by_key(|r| std::cmp::Reverse(r.0));
        let total: u64 = redis.iter().map(|r| r.0).sum();
        let top: Vec<String> = redis
            .iter()
            .take(8)
            .map(|(n, c)| format!("{c} {:.2}", per(*n as f64)))
            .collect();
        lines.push(format!(
            "Redis commands per order: {:.1} ({})",
            per(total as f64),
            top.join(", ")
        ));
        let batches: Vec<String> = later
            .batches
            .iter()
            .filter_map(|(service, (calls, records))| {
                let (c0, r0) = self.batches.get(service).copied().unwrap_or_default();
                let (calls, records) = (calls - c0, records - r0);
                (calls > 0.0)
                    .then(|| format!("{service} {:.0} calls of {:.1}", calls, records / calls))
            })
            .collect();
        lines.push(format!(
            "handler calls (mean records): {}",
            batches.join(", ")
        ));
        lines
    }
}

/// CPU seconds of every process by kind.
fn cpu_by_kind() -> BTreeMap<String, f64> {
    let me = std::process::id().to_string();
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        let kind = if pid == me {
            "this process"
        } else if comm.starts_with("postgres") {
            "postgres"
        } else if comm.starts_with("redis-server") {
            "redis"
        } else {
            continue;
        };
        // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields
            .get(11..13)
            .into_iter()
            .flatten()
            .filter_map(|f| f.parse::<f64>().ok())
            .sum();
        *out.entry(kind.to_owned()).or_default() += ticks / TICKS_PER_SECOND;
    }
    out
}

/// Busy and total CPU seconds of the machine.
fn machine_cpu() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0.0, 0.0);
    };
    let Some(line) = stat.lines().next() else {
        return (0.0, 0.0);
    };
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = values.iter().sum();
    // idle and iowait
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    ((total - idle) / TICKS_PER_SECOND, total / TICKS_PER_SECOND)
}

/// `cmdstat_xadd:calls=12,...` lines as calls by command.
fn commandstats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// `batch_size_count{service="x"} 3` and `batch_size_sum` by service.
fn batch_sizes(text: &str) -> BTreeMap<String, (f64, f64)> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let (is_count, rest) = if let Some(r) = line.strip_prefix("batch_size_count{") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("batch_size_sum{") {
            (false, r)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(service) = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("service=\""))
            .map(|s| s.trim_end_matches('"'))
        else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        let entry = out.entry(service.to_owned()).or_default();
        if is_count {
            entry.0 += value;
        } else {
            entry.1 += value;
        }
    }
    out
}
