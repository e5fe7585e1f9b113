//! `emulator up`: the system on this machine, from one command; and the
//! operator commands around it.

#![allow(clippy::print_stdout)] // A command-line tool: its reports go to stdout.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shared::config::Env;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Runs the order system's functions locally, in-process, with no AWS account and no Docker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API on 127.0.0.1 until Ctrl-C or SIGTERM.
    Up {
        /// The port to listen on.
        #[arg(long, default_value_t = 3000)]
        port: u16,
    },
    /// Apply the migrations of every service to DATABASE_URL (or the local default) and exit.
    /// Idempotent: what already ran is skipped.
    Migrate,
    /// Look into, redrive or purge the dead-letter streams of the consumer groups.
    #[command(after_help = "Examples:
  emulator dlq list
  emulator dlq show --group inventory 1732435200000-0
  emulator dlq redrive --group inventory --all
  emulator dlq purge --group order-saga 1732435200000-0 1732435200001-0")]
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Per stream: length, and each consumer group's consumers, pending records and lag.
    #[command(after_help = "Example:\n  STREAM_NAMESPACE=events emulator streams")]
    Streams,
    /// Per outbox: events waiting for the relay, the oldest one's age, rows set aside.
    #[command(
        after_help = "Example:\n  DATABASE_URL=postgres://postgres@127.0.0.1/orders_local emulator outbox"
    )]
    Outbox,
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
    },
    /// One dead letter with every field of its original entry.
    Show {
        #[arg(long)]
        group: String,
        /// The dead letter's id (as `list` shows it).
        id: String,
    },
    /// Put dead letters back at the end of their original streams (attempts start again).
    Redrive {
        #[arg(long)]
        group: String,
        /// Every dead letter of the group.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// These dead letters.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
    },
    /// Delete dead letters for good.
    Purge {
        #[arg(long)]
        group: String,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
    },
}

fn selection(all: bool, ids: Vec<String>) -> shared::source::Selection {
    if all {
        shared::source::Selection::All
    } else {
        shared::source::Selection::Ids(ids)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line with every cause, not a backtrace.
            eprintln!("emulator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let env = Env::from_process();
    shared::telemetry::init(&env);
    let command = Cli::parse().command;
    let redis_url = env
        .get("REDIS_URL")?
        .unwrap_or(emulator::workers::DEFAULT_REDIS_URL)
        .to_owned();
    let namespace = shared::relay::RelayOptions::from_env(&env)?.stream_namespace;
    let redis = || async {
        shared::relay::connect_redis(&redis_url, std::time::Duration::from_secs(10))
            .await
            .with_context(|| {
                format!("connecting to Redis at {redis_url} (start redis-server, or set REDIS_URL)")
            })
    };
    let mut out = std::io::stdout().lock();
    match &command {
        Command::Dlq { action } => {
            let redis = redis().await?;
            match action {
                DlqAction::List { group, count } => {
                    let groups: Vec<&str> = match group {
                        Some(g) => vec![g.as_str()],
                        None => emulator::cli::GROUPS.to_vec(),
                    };
                    emulator::cli::dlq_list(&redis, &namespace, &groups, *count, &mut out).await?;
                }
                DlqAction::Show { group, id } => {
                    emulator::cli::dlq_show(&redis, &namespace, group, id, &mut out).await?;
                }
                DlqAction::Redrive { group, all, ids } => {
                    let selection = selection(*all, ids.clone());
                    let mut progress = std::io::stderr();
                    emulator::cli::dlq_redrive(
                        &redis,
                        &namespace,
                        group,
                        &selection,
                        &mut out,
                        &mut progress,
                    )
                    .await?;
                }
                DlqAction::Purge { group, all, ids } => {
                    let selection = selection(*all, ids.clone());
                    emulator::cli::dlq_purge(&redis, &namespace, group, &selection, &mut out)
                        .await?;
                }
            }
            return Ok(());
        }
        Command::Streams => {
            emulator::cli::streams(&redis().await?, &namespace, &mut out).await?;
            return Ok(());
        }
        Command::Up { .. } | Command::Migrate | Command::Outbox => {}
    }
    let database = emulator::database::config(&env)?;
    let create_url = env
        .get("DATABASE_URL")?
        .is_none()
        .then_some(emulator::database::DEFAULT_DATABASE_URL);
    let pool = emulator::database::prepare(&database, create_url).await?;
    let port = match command {
        Command::Up { port } => port,
        Command::Outbox => {
            let relay = shared::relay::Relay::new(
                pool,
                redis().await?,
                shared::relay::RelayOptions::from_env(&env)?,
            );
            emulator::cli::outbox(&relay, &mut out).await?;
            return Ok(());
        }
        _ => {
            tracing::info!(database = ?database, "migrations applied");
            return Ok(());
        }
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .with_context(|| {
            format!("listening on 127.0.0.1:{port} (is another emulator running? use --port)")
        })?;
    let routes = emulator::routes::RouteTable::standard();
    let emulator = emulator::Emulator {
        // Both functions on one database, as both services are in the local one.
        create_order: Arc::new(create_order::Deps {
            pool: pool.clone(),
            idempotency_ttl: create_order::Config::idempotency_ttl(&env)?,
        }),
        inventory_api: Arc::new(inventory_api::Deps { pool: pool.clone() }),
        routes: routes.clone(),
    };
    let workers = emulator::workers::Workers::start(pool, &redis_url, &env).await?;
    tracing::info!(address = %listener.local_addr()?, database = ?database, "emulator ready");
    for route in routes.routes() {
        tracing::info!(
            "route {} {} -> {:?}",
            route.method,
            route.path,
            route.function
        );
    }
    for name in workers.names() {
        tracing::info!("running {name}");
    }
    let served = emulator::serve(emulator, listener, shutdown_signal()).await;
    workers.stop().await;
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
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
