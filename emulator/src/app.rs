//! The emulator's command line: `emulator up` runs the system on this machine
//! from one command, and the operator commands around it. A binary calls
//! [`main`] with the [`Registry`] of the functions it links.

#![allow(clippy::print_stdout)] // A command-line tool: its reports go to stdout.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shared::config::Env;

use crate::functions::Registry;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Runs the functions of a SAM template locally, with no AWS account and no Docker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `up --watch` tells the emulator process it runs behind its proxy.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Supervised {
    /// The address clients reach it at: the proxy's.
    #[arg(long, hide = true)]
    pub public_address: Option<SocketAddr>,
    /// Where the log lines pass from one process to the next.
    #[arg(long, hide = true)]
    pub book_handover: Option<std::path::PathBuf>,
    /// A reload: one line instead of the banner.
    #[arg(long, hide = true)]
    pub reloaded: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the system of template.yaml: the HTTP API and the Lambda Invoke API on
    /// 127.0.0.1, timers for schedules, stream sources, and the outbox relay, until
    /// Ctrl-C or SIGTERM.
    #[command(after_help = "Examples:
  emulator up
  emulator up --port 8080 --env-vars env.json
  cargo build --bins && emulator up --runtime-api
  DATABASE_URL=postgres://me@db.local/orders REDIS_URL=redis://cache.local emulator up
  emulator up --jwks issuer-keys.json --parameter-overrides AuthIssuer=https://id.example AuthAudience=shop

Without DATABASE_URL / REDIS_URL it uses PostgreSQL and Redis on 127.0.0.1, and
starts private ones under --state-dir when those are not running.

The template's JWT authorizers check every request as API Gateway does. By
default they trust the emulator's development key (kept under the state
directory); `emulator token --sub ID` prints a token signed with it.")]
    Up {
        /// The port to listen on.
        #[arg(long, default_value_t = 3000)]
        port: u16,
        /// Trust the public keys of this JWKS file (a real issuer's, or any JWT
        /// library's) instead of the development key; give the issuer and audience
        /// with --parameter-overrides AuthIssuer=... AuthAudience=...
        #[arg(long, value_name = "FILE", conflicts_with = "no_auth")]
        jwks: Option<std::path::PathBuf>,
        /// Do not verify tokens at all (quick experiments only): a token's claims
        /// are passed unchecked, and a request without one runs as `local-developer`.
        #[arg(long)]
        no_auth: bool,
        /// `text` (a line per event, `[FunctionLogicalId]` before the message of
        /// a function's lines) or `json` (Lambda's JSON lines, with `function_name`);
        /// default: `LOG_FORMAT`, else text.
        #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
        log_format: Option<String>,
        /// How many of the latest log lines to keep in memory for `emulator logs`
        /// and the console's trace view; 0 keeps none (and formats no JSON copy).
        #[arg(long, value_name = "N", default_value_t = crate::logs::BOOK_LINES)]
        log_lines: usize,
        /// On every change to the workspace's sources, build and swap what changed:
        /// with --runtime-api, `cargo build --bin F ...` for the functions and a new
        /// process for each function whose binary changed; in-process, `cargo build`
        /// of this binary and a new emulator process behind a proxy that holds the
        /// port. Either way in-flight invocations finish on the old code, requests
        /// during the swap wait, and a failed build keeps the old code serving.
        #[arg(long)]
        watch: bool,
        /// (Set by `up --watch` for the emulator it supervises.)
        #[command(flatten)]
        supervised: Supervised,
        #[command(flatten)]
        system: SystemArgs,
    },
    /// Print a bearer token, signed with the development key, that `emulator up`
    /// (without --jwks) accepts.
    #[command(after_help = "Examples:
  curl -H \"authorization: Bearer $(emulator token --sub c-1)\" http://127.0.0.1:3000/orders/ID
  emulator token --sub ops-1 --scope 'orders:read orders:admin' --ttl 600

Without --scope the token carries every scope the template's routes ask for
(not orders:admin). Issuer and audience are the template's authorizer's when
known locally, else the development ones.")]
    Token {
        /// The subject (`sub`): the customer the functions act for.
        #[arg(long)]
        sub: String,
        /// Space-separated scopes (the `scope` claim).
        #[arg(long)]
        scope: Option<String>,
        /// Seconds until the token expires.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[command(flatten)]
        system: SystemArgs,
    },
    /// Invoke one function once with an event and print its response.
    #[command(after_help = "Examples:
  emulator generate-event http --method POST --path /orders --sub c-1 --body '{\"items\":[{\"sku\":\"A-1\",\"quantity\":1,\"unit_price_cents\":250}]}' > event.json
  emulator invoke CreateOrderFunction --event event.json
  emulator generate-event schedule | emulator invoke OutboxRelayFunction --event -
  emulator invoke create-order --event event.json --runtime-api

The response goes to stdout. A function error prints its error payload and exits 1.")]
    Invoke {
        /// The function: its logical id in the template, or its binary name.
        function: String,
        /// The event: a JSON file, or `-` for standard input.
        #[arg(long, default_value = "-")]
        event: String,
        #[command(flatten)]
        system: SystemArgs,
    },
    /// Print a sample event for a function: an API Gateway HTTP API request, a
    /// scheduled event, or a batch of stream records.
    #[command(
        name = "generate-event",
        after_help = "Examples:
  emulator generate-event http --method GET --path /orders/0193f6a2-0000-7000-8000-000000000000 --sub c-1
  emulator generate-event http --method POST --path /orders --sub c-1 --header 'idempotency-key: k1' --body @order.json
  emulator generate-event schedule --rule OutboxRelayFunction-EveryMinute
  emulator generate-event stream-batch --count 3 --event-type OrderCreated --payload @order.json"
    )]
    GenerateEvent {
        #[command(subcommand)]
        kind: EventKind,
    },
    /// Wait until the running emulator has no work in hand: no invocation in
    /// flight, no outbox row waiting, no stream entry unread or unacknowledged
    /// (two readings in a row). Exits 1 with what is still busy after --timeout.
    #[command(
        name = "wait-idle",
        after_help = "Examples:
  curl -X POST ... http://127.0.0.1:3000/orders && emulator wait-idle && curl http://127.0.0.1:3000/orders/ID
  emulator wait-idle --url http://127.0.0.1:3001 --timeout 60"
    )]
    WaitIdle {
        /// The emulator's address, as its banner prints it.
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// One reading of the running emulator: idle or what is busy, invocations
    /// in flight, each outbox's waiting rows, each consumer group's lag and pending.
    #[command(after_help = "Examples:
  emulator status
  emulator status --json | jq .idle")]
    Status {
        /// The emulator's address, as its banner prints it.
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        /// The reading as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The running emulator's recent log lines (it keeps the last 50,000), by
    /// function, trace or order: one order's journey across the functions, in
    /// time order.
    #[command(after_help = "Examples:
  emulator logs --order 0193f6a2-0000-7000-8000-000000000000
  emulator logs --function InventoryConsumerFunction --follow
  emulator logs --trace 4bf92f3577b34da6a3ce929d0e0e4736 --json | jq .message

An order id stands for the traces of the lines that name it, so the lines of
every hop that carried the order's trace come too.")]
    Logs {
        /// The emulator's address, as its banner prints it.
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        /// Only this function's lines (its logical id in the template).
        #[arg(long)]
        function: Option<String>,
        /// Only the lines of this trace id.
        #[arg(long)]
        trace: Option<String>,
        /// Only the lines of the traces of this order (or any id its lines name).
        #[arg(long)]
        order: Option<String>,
        /// The most lines printed: the latest that match.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Lambda's JSON lines, one per line, instead of text.
        #[arg(long)]
        json: bool,
        /// Then print new lines as they come, until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Apply the migrations of every service to DATABASE_URL (or the local default) and exit.
    /// Idempotent: what already ran is skipped.
    Migrate,
    /// Look into, redrive or purge the dead-letter streams of the consumer groups.
    #[command(after_help = "Examples:
  emulator dlq list
  emulator dlq show --group inventory 1732435200000-0
  emulator dlq summary --group inventory
  emulator dlq redrive --group inventory --all --dry-run
  emulator dlq redrive --group inventory --event-type OrderCreated --hour 2026-11-29T01
  emulator dlq purge --group order-saga 1732435200000-0 1732435200001-0 --yes")]
    Dlq {
        /// The SAM template: its stream sources name the consumer groups.
        #[arg(long, global = true, default_value = "template.yaml")]
        template: std::path::PathBuf,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Per stream: length, and each consumer group's consumers, pending records and lag.
    #[command(
        after_help = "Examples:\n  STREAM_NAMESPACE=events emulator streams\n  emulator streams --json | jq '.[].groups[].lag'"
    )]
    Streams {
        /// The figures as one JSON document, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Per outbox: events waiting for the relay, the oldest one's age, rows set
    /// aside; with a subcommand, list or purge the rows set aside as failed.
    #[command(after_help = "Examples:
  DATABASE_URL=postgres://postgres@127.0.0.1/orders_local emulator outbox
  emulator outbox failed --outbox orders
  emulator outbox purge-failed --outbox orders 42 43 --yes
  emulator outbox purge-failed --outbox inventory --all --yes")]
    Outbox {
        /// The SAM template: its relay's `RELAY_OUTBOXES` names the outboxes.
        #[arg(long, global = true, default_value = "template.yaml")]
        template: std::path::PathBuf,
        #[command(subcommand)]
        action: Option<OutboxAction>,
        /// The figures as one JSON document, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxAction {
    /// The rows set aside as failed: id, event, attempts, error.
    Failed {
        /// `orders.outbox`, or a schema alone (`orders`) for its `outbox` table.
        #[arg(long, value_parser = parse_outbox)]
        outbox: shared::outbox::Outbox,
        /// The most rows shown.
        #[arg(long, default_value_t = 20)]
        count: i64,
    },
    /// Delete rows set aside as failed, for good (pending rows are never touched).
    /// Without --yes, only says what it would delete.
    PurgeFailed {
        /// `orders.outbox`, or a schema alone (`orders`) for its `outbox` table.
        #[arg(long, value_parser = parse_outbox)]
        outbox: shared::outbox::Outbox,
        /// Every failed row of the outbox.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// These rows (ids as `outbox failed` shows them).
        #[arg(required_unless_present = "all")]
        ids: Vec<i64>,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

fn parse_outbox(name: &str) -> Result<shared::outbox::Outbox, String> {
    shared::outbox::Outbox::parse(name).map_err(|e| e.to_string())
}

/// Where the system comes from and how its functions run.
#[derive(Debug, clap::Args)]
struct SystemArgs {
    /// The SAM template: functions, environments, timeouts, events.
    #[arg(long, default_value = "template.yaml")]
    template: std::path::PathBuf,
    /// A JSON file of environment overrides: `{"FunctionLogicalId": {"VAR": "value"},
    /// "Parameters": {"VAR": "for every function"}}`; it may add variables.
    #[arg(long)]
    env_vars: Option<std::path::PathBuf>,
    /// A dotenv file (`NAME=value` lines) for every function, applied before
    /// `--env-vars`, whose entries win.
    #[arg(long)]
    env_file: Option<std::path::PathBuf>,
    /// Template parameter values, `Name=Value` (over the parameters' defaults):
    /// several after one flag, or in one space-separated argument, as SAM takes them.
    #[arg(long = "parameter-overrides", value_name = "NAME=VALUE", num_args = 1..)]
    parameter_overrides: Vec<String>,
    /// Run the real function binaries as child processes behind the emulator's
    /// Lambda Runtime API, instead of calling the handlers in-process.
    #[arg(long)]
    runtime_api: bool,
    /// Where the function binaries are (default: beside the emulator's own binary).
    #[arg(long, requires = "runtime_api")]
    functions_dir: Option<std::path::PathBuf>,
    /// With --runtime-api: the most instances of one function when its template
    /// sets no ReservedConcurrentExecutions.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Where private PostgreSQL and Redis servers keep their data.
    #[arg(long)]
    state_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum EventKind {
    /// An API Gateway HTTP API (payload 2.0) request for a route of the template.
    Http {
        #[arg(long, default_value = "GET")]
        method: String,
        /// The path, with its query string if any: `/orders/abc?x=1`.
        #[arg(long)]
        path: String,
        /// `name: value`; repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The body; `@file` reads it from a file.
        #[arg(long)]
        body: Option<String>,
        /// The caller, as the route's JWT authorizer passes it on
        /// (`requestContext.authorizer.jwt`); without it the function sees no caller.
        #[arg(long)]
        sub: Option<String>,
        /// The caller's scopes, space-separated (default: the route's).
        #[arg(long, requires = "sub")]
        scope: Option<String>,
        #[arg(long, default_value = "template.yaml")]
        template: std::path::PathBuf,
    },
    /// An EventBridge scheduled event.
    Schedule {
        #[arg(long, default_value = "local-schedule")]
        rule: String,
    },
    /// Records as a consumer's batch handler receives them: events of one
    /// type, each of a new aggregate of the stream's type, with their stream
    /// entry fields.
    StreamBatch {
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// The stream, `namespace:{AggregateType:partition}`.
        #[arg(long, default_value = "events:{Order:0}")]
        stream: String,
        /// The events' type.
        #[arg(long)]
        event_type: String,
        /// The events' payload, JSON, or `@file` to read it from a file.
        #[arg(long, default_value = "{}")]
        payload: String,
    },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// The dead letters: where each came from, its event, its error and attempts.
    List {
        /// Only this consumer group (`inventory`, `order-saga`); all by default.
        #[arg(long)]
        group: Option<String>,
        /// The most dead letters shown per group.
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// The streams and dead letters as one JSON document, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with every field of its original entry.
    Show {
        #[arg(long)]
        group: String,
        /// The dead letter's id (as `list` shows it).
        id: String,
    },
    /// The dead letters of a group by kind: error, event type and hour, with
    /// how many and how often the most redriven one was.
    Summary {
        #[arg(long)]
        group: String,
        /// As one JSON document, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back at the end of their original streams (attempts
    /// start again). A record redriven DLQ_MAX_REDRIVES times (3) already is
    /// refused unless --force: it needs a fix, not another try.
    Redrive {
        #[arg(long)]
        group: String,
        #[command(flatten)]
        which: Which,
        /// Change nothing: say what would be redriven and what refused.
        #[arg(long)]
        dry_run: bool,
        /// Redrive records redriven DLQ_MAX_REDRIVES times already, too.
        #[arg(long)]
        force: bool,
    },
    /// Delete dead letters for good. Without --yes, only says how many it would delete.
    Purge {
        #[arg(long)]
        group: String,
        #[command(flatten)]
        which: Which,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters: all, these ids, or one kind (as `dlq summary` shows them).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = true)]
struct Which {
    /// Every dead letter of the group.
    #[arg(long, conflicts_with_all = ["ids", "error", "event_type", "hour"])]
    all: bool,
    /// These dead letters (ids as `list` shows them).
    #[arg(conflicts_with_all = ["error", "event_type", "hour"])]
    ids: Vec<String>,
    /// Those that failed with exactly this error.
    #[arg(long)]
    error: Option<String>,
    /// Those of this event type (`undecodable` for entries that are not events).
    #[arg(long)]
    event_type: Option<String>,
    /// Those that failed in this hour, `2026-11-29T01` (UTC).
    #[arg(long)]
    hour: Option<String>,
}

impl Which {
    fn selection(self) -> shared::source::Selection {
        use shared::source::{Filter, Selection};
        if self.all {
            Selection::All
        } else if !self.ids.is_empty() {
            Selection::Ids(self.ids)
        } else {
            Selection::Where(Filter {
                error: self.error,
                event_type: self.event_type,
                hour: self.hour,
            })
        }
    }
}

/// Runs the command line with `registry`'s functions linked in-process.
pub async fn main(registry: Arc<dyn Registry>) -> std::process::ExitCode {
    match run(registry).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line with every cause, not a backtrace: a command
            // line's error goes to stderr.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("emulator: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(registry: Arc<dyn Registry>) -> anyhow::Result<()> {
    let mut env = Env::from_process();
    // The emulator's recorder first: function code in this process records into it.
    let _installed = crate::metrics::handle();
    let cli = Cli::parse();
    // `up` logs on stdout, as the functions do in Lambda; every other command
    // prints its results there, and its logs go to stderr.
    let logs = match cli.command {
        Command::Up { .. } => shared::telemetry::LogOutput::Stdout,
        _ => shared::telemetry::LogOutput::Stderr,
    };
    if let Command::Up {
        log_format: Some(format),
        ..
    } = &cli.command
    {
        env = env.with("LOG_FORMAT", format);
    }
    // `up` keeps its last lines for `emulator logs` and the console.
    let book = match &cli.command {
        Command::Up {
            log_lines,
            supervised,
            ..
        } if *log_lines > 0 => {
            let book = shared::logbook::LogBook::new(*log_lines);
            if let Some(path) = &supervised.book_handover {
                crate::supervise::take_over_book(&book, path);
            }
            Some(book)
        }
        _ => None,
    };
    shared::telemetry::install_with_book(&env, "emulator", logs, book.clone());
    // Not locked: `up`'s logs write to stdout too, from other tasks.
    let mut out = std::io::stdout();
    match cli.command {
        Command::Up {
            port,
            jwks,
            no_auth,
            system,
            log_format: _,
            log_lines: _,
            watch,
            supervised,
        } => {
            if watch && !system.runtime_api {
                // In-process functions are linked into this binary: a new
                // binary means a new process, behind a proxy holding the port.
                return crate::supervise::run(crate::supervise::Plan::new(
                    &env,
                    port,
                    &state_dir(&env, &system)?,
                    watch_root(&system)?,
                    registry.migrations(),
                )?)
                .await;
            }
            let trust = trust(&env, &system, jwks.as_deref(), no_auth)?;
            let options = UpOptions {
                port,
                watch,
                supervised,
            };
            up(&env, &options, &system, trust, registry, book).await
        }
        Command::Token {
            sub,
            scope,
            ttl,
            system,
        } => token(&env, &system, sub, scope, ttl, &mut out),
        Command::Invoke {
            function,
            event,
            system,
        } => invoke(&env, &function, &event, &system, registry, &mut out).await,
        Command::GenerateEvent { kind } => generate_event(kind, &mut out),
        Command::WaitIdle { url, timeout } => {
            crate::status::wait_idle(&url, Duration::from_secs(timeout)).await
        }
        Command::Status { url, json } => crate::status::print(&url, json, &mut out).await,
        Command::Logs {
            url,
            function,
            trace,
            order,
            limit,
            json,
            follow,
        } => {
            let query = crate::logs::Query {
                function,
                trace,
                order,
                from: 0,
                limit: Some(limit),
            };
            crate::logs::print(&url, query, json, follow, &mut out).await
        }
        Command::Migrate => {
            let stores = crate::stores::Stores::prepare(
                &env,
                None,
                crate::stores::Needs::Database,
                registry.migrations(),
            )
            .await?;
            tracing::info!(database = %stores.database_url, "migrations applied");
            stores.stop().await
        }
        Command::Outbox {
            template,
            action,
            json,
        } => {
            let template = crate::template::load(&template)?;
            let options = shared::relay::RelayOptions {
                outboxes: template.relay_outboxes()?,
                stream_namespace: shared::streams::namespace(&env)?,
                ..shared::relay::RelayOptions::default()
            };
            // Reads and tidies: it neither creates a database nor migrates one.
            let stores = crate::stores::Stores::open(
                &env,
                crate::stores::Needs::Both,
                registry.migrations(),
            )
            .await?;
            let relay =
                shared::relay::Relay::new(stores.pool()?.clone(), connect_redis(&stores)?, options);
            match action {
                None => crate::cli::outbox(&relay, report_format(json), &mut out).await?,
                Some(OutboxAction::Failed { outbox, count }) => {
                    crate::cli::outbox_failed(&relay, &outbox, count, &mut out).await?;
                }
                Some(OutboxAction::PurgeFailed {
                    outbox,
                    all,
                    ids,
                    yes,
                }) => {
                    let rows = if all {
                        crate::cli::FailedRows::All
                    } else {
                        crate::cli::FailedRows::Ids(ids)
                    };
                    crate::cli::outbox_purge_failed(&relay, &outbox, &rows, yes, &mut out).await?;
                }
            }
            stores.stop().await
        }
        Command::Streams { json } => {
            let namespace = shared::streams::namespace(&env)?;
            let stores =
                crate::stores::Stores::prepare(&env, None, crate::stores::Needs::Redis, Vec::new())
                    .await?;
            let redis = connect_redis(&stores)?;
            crate::cli::streams(&redis, &namespace, report_format(json), &mut out).await?;
            stores.stop().await
        }
        Command::Dlq { template, action } => {
            let groups = crate::cli::groups(&crate::template::load(&template)?);
            let namespace = shared::streams::namespace(&env)?;
            let stores =
                crate::stores::Stores::prepare(&env, None, crate::stores::Needs::Redis, Vec::new())
                    .await?;
            let redis = connect_redis(&stores)?;
            dlq(&env, &redis, &namespace, &groups, action, &mut out).await?;
            stores.stop().await
        }
    }
}

async fn dlq(
    env: &Env,
    redis: &shared::redis_link::Redis,
    namespace: &str,
    groups: &[String],
    action: DlqAction,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    match &action {
        DlqAction::List { group: Some(g), .. }
        | DlqAction::Show { group: g, .. }
        | DlqAction::Summary { group: g, .. }
        | DlqAction::Redrive { group: g, .. }
        | DlqAction::Purge { group: g, .. } => crate::cli::check_group(g, groups)?,
        DlqAction::List { group: None, .. } => {}
    }
    match action {
        DlqAction::List { group, count, json } => {
            let groups: Vec<&str> = match &group {
                Some(g) => vec![g.as_str()],
                None => groups.iter().map(String::as_str).collect(),
            };
            crate::cli::dlq_list(redis, namespace, &groups, count, report_format(json), out).await
        }
        DlqAction::Show { group, id } => {
            crate::cli::dlq_show(redis, namespace, &group, &id, out).await
        }
        DlqAction::Summary { group, json } => {
            crate::cli::dlq_summary(redis, namespace, &group, report_format(json), out).await
        }
        DlqAction::Redrive {
            group,
            which,
            dry_run,
            force,
        } => {
            let policy = shared::source::RedrivePolicy {
                max_redrives: shared::source::max_redrives(env)?,
                force,
                dry_run,
            };
            let mut progress = std::io::stderr();
            let report = crate::cli::dlq_redrive(
                redis,
                namespace,
                &group,
                &which.selection(),
                &policy,
                out,
                &mut progress,
            )
            .await?;
            anyhow::ensure!(
                dry_run || report.refused.is_empty(),
                "{} dead letters refused: redriven {} times already (DLQ_MAX_REDRIVES); \
                 fix their cause, or redrive them with --force",
                report.refused.len(),
                policy.max_redrives
            );
            Ok(())
        }
        DlqAction::Purge { group, which, yes } => {
            crate::cli::dlq_purge(redis, namespace, &group, &which.selection(), yes, out).await?;
            Ok(())
        }
    }
}

fn report_format(json: bool) -> crate::cli::Format {
    if json {
        crate::cli::Format::Json
    } else {
        crate::cli::Format::Text
    }
}

/// The stores' Redis: one node, or a cluster with `REDIS_CLUSTER=true`.
fn connect_redis(stores: &crate::stores::Stores) -> anyhow::Result<shared::redis_link::Redis> {
    shared::redis_link::RedisClient::open(&stores.redis_url, stores.redis_cluster)
        .and_then(|client| client.connect(Duration::from_secs(10)))
        .context("connecting to Redis (start redis-server, or set REDIS_URL)")
}

/// The template with `--parameter-overrides`, `--env-file` and `--env-vars` applied.
fn load_template(args: &SystemArgs) -> anyhow::Result<crate::template::Template> {
    let text = std::fs::read_to_string(&args.template).with_context(|| {
        format!(
            "reading {} (run from the repository, or pass --template)",
            args.template.display()
        )
    })?;
    let mut parameters = std::collections::BTreeMap::new();
    for pair in args
        .parameter_overrides
        .iter()
        .flat_map(|p| p.split_whitespace())
    {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("--parameter-overrides {pair}: expected NAME=VALUE"))?;
        parameters.insert(name.to_owned(), value.to_owned());
    }
    let mut template = crate::template::parse_with_parameters(&text, &parameters)
        .with_context(|| args.template.display().to_string())?;
    if let Some(path) = &args.env_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --env-file {}", path.display()))?;
        crate::template::apply_env_file(&mut template, &text)
            .with_context(|| format!("--env-file {}", path.display()))?;
    }
    if let Some(path) = &args.env_vars {
        let json = std::fs::read_to_string(path)
            .with_context(|| format!("reading --env-vars {}", path.display()))?;
        crate::template::apply_env_overrides(&mut template, &json)
            .with_context(|| format!("--env-vars {}", path.display()))?;
    }
    Ok(template)
}

/// The workspace `--watch` watches and builds: the template's directory.
fn watch_root(args: &SystemArgs) -> anyhow::Result<std::path::PathBuf> {
    let dir = args
        .template
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    dir.canonicalize()
        .with_context(|| format!("the template's directory {}", dir.display()))
}

fn mode(args: &SystemArgs) -> anyhow::Result<crate::system::Mode> {
    if !args.runtime_api {
        return Ok(crate::system::Mode::InProcess);
    }
    let binaries = match &args.functions_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("locating the emulator's binary")?
            .parent()
            .map(std::path::Path::to_path_buf)
            .context("the emulator's binary has no directory")?,
    };
    Ok(crate::system::Mode::RuntimeApi {
        binaries,
        concurrency: args.concurrency.max(1),
    })
}

/// The keys the authorizers trust: `--no-auth`, `--jwks`, else the development key.
fn trust(
    env: &Env,
    args: &SystemArgs,
    jwks: Option<&std::path::Path>,
    no_auth: bool,
) -> anyhow::Result<crate::auth::Trust> {
    use crate::auth::{DevKey, Trust};
    if no_auth {
        return Ok(Trust::Off);
    }
    if let Some(path) = jwks {
        return Trust::jwks_file(path);
    }
    Ok(Trust::DevKey(std::sync::Arc::new(DevKey::load_or_create(
        state_dir(env, args)?.path(),
    )?)))
}

fn state_dir(env: &Env, args: &SystemArgs) -> anyhow::Result<crate::servers::StateDir> {
    match &args.state_dir {
        Some(dir) => crate::servers::StateDir::new(dir),
        None => crate::servers::StateDir::default_location(env),
    }
}

/// `emulator token`.
fn token(
    env: &Env,
    args: &SystemArgs,
    subject: String,
    scope: Option<String>,
    ttl: u64,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let template = load_template(args)?;
    let key = crate::auth::DevKey::load_or_create(state_dir(env, args)?.path())?;
    let token = crate::auth::dev_token(
        &template,
        &key,
        &subject,
        scope.as_deref(),
        Duration::from_secs(ttl),
    )?;
    writeln!(out, "{token}")?;
    Ok(())
}

/// `up`'s own flags.
#[derive(Debug)]
struct UpOptions {
    port: u16,
    watch: bool,
    supervised: Supervised,
}

async fn up(
    env: &Env,
    options: &UpOptions,
    args: &SystemArgs,
    trust: crate::auth::Trust,
    registry: Arc<dyn Registry>,
    book: Option<Arc<shared::logbook::LogBook>>,
) -> anyhow::Result<()> {
    let UpOptions {
        port,
        watch,
        ref supervised,
    } = *options;
    if supervised.public_address.is_some() {
        // Behind `up --watch`: ends with the process that runs it, even one
        // that was killed.
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
            .context("asking to end with the supervising process")?;
    }
    let started = Instant::now();
    let template = load_template(args)?;
    let mode = mode(args)?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .with_context(|| {
            format!("listening on 127.0.0.1:{port} (is another emulator running? use --port)")
        })?;
    let stores = crate::stores::Stores::prepare(
        env,
        args.state_dir.as_deref(),
        crate::stores::Needs::Both,
        registry.migrations(),
    )
    .await?;
    let views = registry.console_views();
    let system = crate::system::System::start(crate::system::Options {
        template,
        mode,
        database_url: stores.database_url.clone(),
        redis_url: stores.redis_url.clone(),
        redis_cluster: stores.redis_cluster,
        trust,
        registry,
    })
    .await;
    let system = match system {
        Ok(system) => system,
        Err(e) => {
            stores.stop().await?;
            return Err(e);
        }
    };
    let address = match supervised.public_address {
        Some(public) => public.to_string(),
        None => listener.local_addr()?.to_string(),
    };
    if supervised.reloaded {
        println!(
            "The new code is ready in {} ms (process {}).",
            started.elapsed().as_millis(),
            std::process::id()
        );
    } else {
        if supervised.public_address.is_none() {
            // (Behind `up --watch`'s proxy, which printed where its stores are.)
            println!("{}", stores.describe());
        }
        print!("{}", system.banner(&address));
        println!("Console on http://{address}/_console/ (logs: emulator logs --order ID)");
        println!(
            "Ready in {} ms. Ctrl-C to stop.",
            started.elapsed().as_millis()
        );
    }
    let status = Arc::new(status_source(env, &system, &stores).await?);
    let console = crate::console::Console {
        source: Arc::clone(&status),
        groups: crate::cli::groups(system.template()),
        max_redrives: shared::source::max_redrives(env)?,
        views,
        pool: stores.pool()?.clone(),
    };
    let mut emulator = crate::Emulator::of(&system)
        .with_status(status)
        .with_console(console);
    if let Some(public) = supervised.public_address {
        emulator = emulator.with_public(public);
    }
    if let Some(book) = &book {
        emulator = emulator.with_logs(Arc::clone(book));
    }
    let (stop_watching, stopped) = tokio::sync::watch::channel(false);
    let watcher = if watch {
        Some(tokio::spawn(crate::watch::run(
            watch_root(args)?,
            crate::watch::Target::Processes {
                functions: Arc::clone(&system.functions),
            },
            stopped,
        )))
    } else {
        None
    };
    let served = crate::serve(emulator, listener, shutdown_signal()).await;
    let _ = stop_watching.send(true);
    if let Some(watcher) = watcher {
        if let Ok(Err(e)) = watcher.await {
            tracing::warn!(error = %format!("{e:#}"), "the watcher stopped");
        }
    }
    println!("Stopping: in-flight invocations finish first.");
    system.stop().await;
    stores.stop().await?;
    if let (Some(book), Some(path)) = (&book, &supervised.book_handover) {
        crate::supervise::hand_over_book(book, path)?;
    }
    served?;
    println!("Stopped.");
    Ok(())
}

/// What `GET /_emulator/status` reads: the template's outboxes, and the
/// streams of its namespace (its stream sources', else `STREAM_NAMESPACE`).
async fn status_source(
    env: &Env,
    system: &crate::system::System,
    stores: &crate::stores::Stores,
) -> anyhow::Result<crate::status::Source> {
    let template = system.template();
    let namespace = match template
        .functions
        .iter()
        .find_map(|f| f.stream_source().map(|s| s.namespace))
    {
        Some(namespace) => namespace,
        None => shared::streams::namespace(env)?,
    };
    let redis = connect_redis(stores)?;
    let options = shared::relay::RelayOptions {
        outboxes: template.relay_outboxes()?,
        stream_namespace: namespace.clone(),
        ..shared::relay::RelayOptions::default()
    };
    Ok(crate::status::Source {
        relay: shared::relay::Relay::new(stores.pool()?.clone(), redis.clone(), options),
        redis,
        namespace,
    })
}

async fn invoke(
    env: &Env,
    function: &str,
    event: &str,
    args: &SystemArgs,
    registry: Arc<dyn Registry>,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let template = load_template(args)?;
    let Some(spec) = template
        .functions
        .iter()
        .find(|f| f.logical_id == function || f.binary == function)
        .cloned()
    else {
        let known: Vec<&str> = template
            .functions
            .iter()
            .map(|f| f.logical_id.as_str())
            .collect();
        anyhow::bail!(
            "no function {function} in the template (it has {})",
            known.join(", ")
        );
    };
    let payload = if event == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the event from standard input")?;
        text
    } else {
        std::fs::read_to_string(event).with_context(|| format!("reading the event {event}"))?
    };
    serde_json::from_str::<serde_json::Value>(&payload)
        .with_context(|| format!("the event {event} is not JSON"))?;
    let stores = crate::stores::Stores::prepare(
        env,
        args.state_dir.as_deref(),
        crate::stores::Needs::Both,
        registry.migrations(),
    )
    .await?;
    let template = crate::template::Template {
        functions: vec![spec],
        ..template
    };
    let functions = crate::system::build_functions(&crate::system::Options {
        template,
        mode: mode(args)?,
        database_url: stores.database_url.clone(),
        redis_url: stores.redis_url.clone(),
        redis_cluster: stores.redis_cluster,
        // `invoke` hands the event to the function as given: no authorizer runs.
        trust: crate::auth::Trust::Off,
        registry,
    })
    .await?;
    let result = functions
        .invoke(function, crate::invoke::Invocation::new(payload))
        .await;
    functions.shutdown(Duration::from_secs(5)).await;
    stores.stop().await?;
    match result {
        Ok(response) => {
            out.write_all(&response)?;
            writeln!(out)?;
            Ok(())
        }
        Err(e) => {
            writeln!(out, "{}", e.payload(""))?;
            anyhow::bail!("{function} failed: {e}")
        }
    }
}

fn generate_event(kind: EventKind, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let event = match kind {
        EventKind::Http {
            method,
            path,
            headers,
            body,
            sub,
            scope,
            template,
        } => {
            let body = match body {
                Some(b) => match b.strip_prefix('@') {
                    Some(file) => std::fs::read_to_string(file)
                        .with_context(|| format!("reading the body from {file}"))?,
                    None => b,
                },
                None => String::new(),
            };
            let template = crate::template::load(&template)?;
            let mut event =
                crate::cli::http_event(&template, &method, &path, &headers, body.as_bytes())?;
            if let Some(subject) = sub {
                let scopes: Vec<String> = match scope {
                    Some(scope) => scope.split_whitespace().map(str::to_owned).collect(),
                    None => crate::routes::RouteTable::from_template(&template)
                        .find(
                            &method.to_ascii_uppercase(),
                            path.split('?').next().unwrap_or_default(),
                        )
                        .map(|m| m.guard.scopes.clone())
                        .unwrap_or_default(),
                };
                event["requestContext"]["authorizer"] =
                    crate::auth::claims_context(&subject, &scopes);
            }
            event
        }
        EventKind::Schedule { rule } => crate::schedule::scheduled_event(&rule, chrono::Utc::now()),
        EventKind::StreamBatch {
            count,
            stream,
            event_type,
            payload,
        } => {
            let payload = match payload.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading the payload {path}"))?,
                None => payload,
            };
            crate::cli::stream_batch(&stream, &event_type, &payload, count)?
        }
    };
    writeln!(out, "{}", serde_json::to_string_pretty(&event)?)?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
