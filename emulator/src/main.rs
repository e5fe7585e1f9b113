//! `emulator up`: the system on this machine, from one command.

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
    let database = emulator::database::config(&env)?;
    let create_url = env
        .get("DATABASE_URL")?
        .is_none()
        .then_some(emulator::database::DEFAULT_DATABASE_URL);
    let pool = emulator::database::prepare(&database, create_url).await?;
    let Command::Up { port } = command else {
        tracing::info!(database = ?database, "migrations applied");
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .with_context(|| {
            format!("listening on 127.0.0.1:{port} (is another emulator running? use --port)")
        })?;
    let routes = emulator::routes::RouteTable::standard();
    let emulator = emulator::Emulator {
        create_order: Arc::new(create_order::Deps {
            pool,
            idempotency_ttl: create_order::Config::idempotency_ttl(&env)?,
        }),
        routes: routes.clone(),
    };
    tracing::info!(address = %listener.local_addr()?, database = ?database, "emulator ready");
    for route in routes.routes() {
        tracing::info!(
            "route {} {} -> {:?}",
            route.method,
            route.path,
            route.function
        );
    }
    emulator::serve(emulator, listener, shutdown_signal()).await?;
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
