//! What the tests of the `emulator` binary share: the binary, the template,
//! a fresh database, a spare port, and `up` started with its stdout as lines.

#![allow(dead_code)] // Each test file uses its part.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::json;
use sqlx::{Connection as _, PgConnection};

pub const BIN: &str = env!("CARGO_BIN_EXE_emulator");
pub const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");
pub const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub async fn fresh_database() -> anyhow::Result<String> {
    let name = format!("emu_{}", uuid::Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(ADMIN).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    Ok(format!("postgres://postgres@127.0.0.1:5432/{name}"))
}

pub fn spare_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An env-vars file that gives the run a stream namespace of its own.
pub fn env_vars(namespace: &str) -> anyhow::Result<tempfile_path::TempPath> {
    let path = std::env::temp_dir().join(format!("{namespace}.json"));
    std::fs::write(
        &path,
        json!({"Parameters": {"STREAM_NAMESPACE": namespace}}).to_string(),
    )?;
    Ok(tempfile_path::TempPath(path))
}

pub mod tempfile_path {
    /// Removed when dropped.
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// `emulator up ARGS` with `database_url` and `env` (logs at
/// info on stdout, with the banner), and its stdout line by line.
pub fn start_up(
    args: &[&str],
    database_url: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(Up, mpsc::Receiver<String>)> {
    let mut child = Command::new(BIN)
        .arg("up")
        .args(args)
        .env("DATABASE_URL", database_url)
        // Logs at info share stdout with the banner (a held stdout lock once hung it).
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    Ok((Up(child), lines))
}

/// A running `emulator up`, killed if the test ends (or fails) before it stops.
pub struct Up(pub Child);

impl std::ops::Deref for Up {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Up {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The lines `up` prints up to and including `Ready in ...`: its banner.
pub fn banner(lines: &mpsc::Receiver<String>) -> anyhow::Result<String> {
    let mut banner = String::new();
    loop {
        let line = lines.recv_timeout(std::time::Duration::from_secs(30))?;
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("Ready in") {
            return Ok(banner);
        }
    }
}

/// A bearer token for `subject` from `emulator token`, signed with the key of
/// the state directory `state` (the one `up --state-dir` trusts).
pub fn token(subject: &str, state: &std::path::Path) -> anyhow::Result<String> {
    let token = Command::new(BIN)
        .args([
            "token",
            "--sub",
            subject,
            "--template",
            TEMPLATE,
            "--state-dir",
        ])
        .arg(state)
        .output()?;
    anyhow::ensure!(token.status.success(), "{token:?}");
    Ok(String::from_utf8(token.stdout)?.trim().to_owned())
}

/// A client whose every request carries `token`.
pub fn client(token: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse()?);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// `PUT /inventory/LAMP-9` with `available` at 100 cents: the SKU the tests order.
pub async fn stock_lamp(http: &reqwest::Client, base: &str, available: u64) -> anyhow::Result<()> {
    let put = http
        .put(format!("{base}/inventory/LAMP-9"))
        .json(&json!({"available": available, "price_cents": 100}))
        .send()
        .await?;
    anyhow::ensure!(
        put.status() == 200,
        "PUT /inventory/LAMP-9 answered {}",
        put.status()
    );
    Ok(())
}
