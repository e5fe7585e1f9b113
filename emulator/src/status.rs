//! Whether the running system has work in hand: `GET /_emulator/status` and
//! `emulator wait-idle`, which tests and scripts use instead of sleeping.
//!
//! Work is always visible somewhere: an outbox row until the relay's commit,
//! which comes after its `XADD`; a stream entry as lag until a consumer reads
//! it, then as pending until its `XACK`, which comes after the consumer's
//! commit (and with it the outbox rows of its answers); an HTTP or scheduled
//! invocation as in flight. The figures are read one after the other, not at
//! one instant, so `wait-idle` asks for two idle readings in a row.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shared::redis_link::Redis;
use shared::relay::Relay;

use crate::functions::Functions;

/// Where the figures come from.
#[derive(Debug)]
pub struct Source {
    pub relay: Relay,
    pub redis: Redis,
    pub namespace: String,
}

/// One reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub idle: bool,
    /// Invocations in flight (HTTP, Invoke API, schedules).
    pub in_flight: u64,
    /// The same by function (logical id), those with none left out.
    #[serde(default)]
    pub in_flight_by_function: BTreeMap<String, u64>,
    /// Outbox rows waiting for the relay, by outbox.
    pub outboxes: Vec<OutboxStatus>,
    /// Per stream and consumer group: entries not yet read, and read but not
    /// yet acknowledged.
    pub groups: Vec<GroupStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub outbox: String,
    pub pending: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub stream: String,
    pub group: String,
    /// `None` when Redis cannot tell (entries deleted from the middle).
    pub lag: Option<u64>,
    pub pending: u64,
}

impl Source {
    pub async fn read(&self, functions: &Functions) -> anyhow::Result<Status> {
        let in_flight = functions.in_flight();
        // Outboxes before and after the streams: see the module's comment.
        let before = self.outboxes().await?;
        let streams =
            shared::source::stream_overview(&mut self.redis.clone(), &self.namespace).await?;
        let mut outboxes = self.outboxes().await?;
        for (now, then) in outboxes.iter_mut().zip(before) {
            now.pending = now.pending.max(then.pending);
        }
        let groups = groups_of(&streams);
        let in_flight = busiest(in_flight, functions.in_flight());
        Ok(decide(in_flight, outboxes, groups))
    }

    async fn outboxes(&self) -> anyhow::Result<Vec<OutboxStatus>> {
        let mut out = Vec::new();
        for o in &self.relay.options().outboxes {
            out.push(OutboxStatus {
                outbox: o.to_string(),
                pending: self.relay.backlog(o).await?.pending,
            });
        }
        Ok(out)
    }
}

/// Two readings of the invocations in flight by function: the larger of each.
pub fn busiest(mut a: BTreeMap<String, u64>, b: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    for (function, n) in b {
        let entry = a.entry(function).or_default();
        *entry = (*entry).max(n);
    }
    a
}

/// Per stream and consumer group, its lag and pending.
pub fn groups_of(streams: &[shared::source::StreamOverview]) -> Vec<GroupStatus> {
    streams
        .iter()
        .flat_map(|s| {
            s.groups.iter().map(|g| GroupStatus {
                stream: s.key.clone(),
                group: g.name.clone(),
                lag: g.lag,
                pending: g.pending,
            })
        })
        .collect()
}

/// Idle: nothing in flight, no outbox row waiting, no stream entry unread or
/// unacknowledged. A lag Redis cannot tell counts as none (it cannot be
/// waited out).
pub fn decide(
    in_flight_by_function: BTreeMap<String, u64>,
    outboxes: Vec<OutboxStatus>,
    groups: Vec<GroupStatus>,
) -> Status {
    let in_flight = in_flight_by_function.values().sum();
    let idle = in_flight == 0
        && outboxes.iter().all(|o| o.pending == 0)
        && groups
            .iter()
            .all(|g| g.pending == 0 && g.lag.unwrap_or(0) == 0);
    Status {
        idle,
        in_flight,
        in_flight_by_function,
        outboxes,
        groups,
    }
}

/// What is still busy in `status`, one item each, for `wait-idle`'s error.
pub fn busy(status: &Status) -> Vec<String> {
    let mut busy = Vec::new();
    if status.in_flight > 0 {
        let by: Vec<String> = status
            .in_flight_by_function
            .iter()
            .map(|(function, n)| format!("{function} {n}"))
            .collect();
        busy.push(format!(
            "{} invocations in flight ({})",
            status.in_flight,
            by.join(", ")
        ));
    }
    for o in status.outboxes.iter().filter(|o| o.pending > 0) {
        busy.push(format!("{}: {} rows waiting", o.outbox, o.pending));
    }
    for g in &status.groups {
        let lag = g.lag.unwrap_or(0);
        if lag > 0 || g.pending > 0 {
            busy.push(format!(
                "{} group {}: lag {lag}, pending {}",
                g.stream, g.group, g.pending
            ));
        }
    }
    busy
}

/// Asks a running emulator for its [`Status`].
struct Client {
    endpoint: String,
    http: reqwest::Client,
}

impl Client {
    fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            endpoint: format!("{}/_emulator/status", url.trim_end_matches('/')),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        })
    }

    async fn status(&self) -> anyhow::Result<Status> {
        let endpoint = &self.endpoint;
        match self.http.get(endpoint).send().await {
            Ok(response) if response.status().is_success() => Ok(response.json().await?),
            Ok(response) => anyhow::bail!("{endpoint} answered {}", response.status()),
            Err(e) => anyhow::bail!("{endpoint}: {e} (is `emulator up` running there?)"),
        }
    }
}

/// `emulator status`: one reading of the running emulator at `url`, as lines
/// (idle or what is busy, then every outbox and consumer group) or as JSON.
pub async fn print(url: &str, json: bool, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let status = Client::new(url)?.status().await?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &status)?;
        writeln!(out)?;
        return Ok(());
    }
    write!(out, "{}", summary(&status))?;
    Ok(())
}

/// The lines `emulator status` prints.
pub fn summary(status: &Status) -> String {
    let mut text = String::new();
    if status.idle {
        text.push_str("idle\n");
    } else {
        text.push_str(&format!("busy: {}\n", busy(status).join("; ")));
    }
    text.push_str(&format!("in flight {}\n", status.in_flight));
    for o in &status.outboxes {
        text.push_str(&format!("{:<18} pending {}\n", o.outbox, o.pending));
    }
    for g in &status.groups {
        text.push_str(&format!(
            "{} group {:<12} lag {:<6} pending {}\n",
            g.stream,
            g.group,
            g.lag.map_or_else(|| "?".to_owned(), |l| l.to_string()),
            g.pending
        ));
    }
    text
}

/// `emulator wait-idle`: asks `url`'s status until two readings in a row are
/// idle, or `timeout` passes (an error that says what is still busy).
pub async fn wait_idle(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = Client::new(url)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut idle_in_a_row = 0;
    loop {
        let status = client.status().await?;
        idle_in_a_row = if status.idle { idle_in_a_row + 1 } else { 0 };
        if idle_in_a_row == 2 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "not idle after {} s: {}",
                timeout.as_secs(),
                busy(&status).join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(pending: u64) -> Vec<OutboxStatus> {
        vec![OutboxStatus {
            outbox: "orders.outbox".into(),
            pending,
        }]
    }

    fn flying(n: u64) -> BTreeMap<String, u64> {
        (n > 0)
            .then(|| ("CreateOrderFunction".to_owned(), n))
            .into_iter()
            .collect()
    }

    fn group(lag: Option<u64>, pending: u64) -> Vec<GroupStatus> {
        vec![GroupStatus {
            stream: "events:{Order:0}".into(),
            group: "inventory".into(),
            lag,
            pending,
        }]
    }

    #[test]
    fn idle_only_with_nothing_in_flight_waiting_unread_or_unacknowledged() {
        assert!(decide(flying(0), outbox(0), group(Some(0), 0)).idle);
        assert!(decide(flying(0), outbox(0), group(None, 0)).idle);
        assert!(decide(flying(0), Vec::new(), Vec::new()).idle);
        assert!(!decide(flying(1), outbox(0), group(Some(0), 0)).idle);
        assert!(!decide(flying(0), outbox(3), group(Some(0), 0)).idle);
        assert!(!decide(flying(0), outbox(0), group(Some(2), 0)).idle);
        assert!(!decide(flying(0), outbox(0), group(Some(0), 1)).idle);
        let status = decide(flying(2), outbox(3), group(Some(4), 1));
        assert_eq!(
            summary(&status),
            "busy: 2 invocations in flight (CreateOrderFunction 2); orders.outbox: 3 rows waiting; \
             events:{Order:0} group inventory: lag 4, pending 1\n\
             in flight 2\n\
             orders.outbox      pending 3\n\
             events:{Order:0} group inventory    lag 4      pending 1\n"
        );
        assert!(summary(&decide(flying(0), outbox(0), Vec::new())).starts_with("idle\n"));
        let busy = busy(&status);
        assert_eq!(
            busy,
            [
                "2 invocations in flight (CreateOrderFunction 2)",
                "orders.outbox: 3 rows waiting",
                "events:{Order:0} group inventory: lag 4, pending 1"
            ]
        );
    }
}
