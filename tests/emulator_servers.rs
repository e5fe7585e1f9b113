//! The emulator's zero-configuration servers, against real processes: a private
//! Redis and PostgreSQL started under a state directory keep their data across
//! restarts and stop when asked (or when dropped, or left behind by a crash); a
//! configured URL or a server already answering is used as is; without the
//! programs, the error says what to install or set.

#![allow(clippy::expect_used, clippy::print_stderr)] // Test code: `expect` says what it relies on; reports go to stderr.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use emulator::servers::{self, Binaries, NotInstalled, Origin, StateDir};
use shared::config::Env;
use sqlx::{Connection as _, PgConnection};

/// A state directory of its own under the system's temp dir, removed when dropped.
struct TempState {
    state: StateDir,
}

impl TempState {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "emulator-servers-{}",
            uuid::Uuid::now_v7().simple()
        ));
        Ok(Self {
            state: StateDir::new(path)?,
        })
    }
}

impl Drop for TempState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.state.path());
    }
}

/// A loopback address nothing listens on.
fn spare_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], tests::spare_port()?)))
}

/// The `host:port` of a server URL such as `redis://127.0.0.1:6379`.
fn addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    let authority = url.rsplit('@').next().unwrap_or(url);
    let authority = authority.rsplit("//").next().unwrap_or(authority);
    authority
        .parse()
        .with_context(|| format!("no address in {url}"))
}

async fn answers(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

async fn redis_connection(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Redis: started privately when nothing answers at the default address; a key
/// written before `stop` is there after the next start (append-only file in the state
/// dir); a handle dropped without `stop` still shuts its server down.
#[tokio::test]
async fn a_private_redis_keeps_its_data_across_restarts_and_stops() -> anyhow::Result<()> {
    let temp = TempState::new()?;
    let default = spare_addr()?;

    let redis = servers::redis(None, default, &temp.state).await?;
    assert_eq!(redis.origin, Origin::Private);
    let addr = addr_of(&redis.url)?;
    assert_ne!(addr, default, "a port of its own, not the default one");
    let mut conn = redis_connection(&redis.url).await?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    assert_eq!(pong, "PONG");
    // It requires the password the URL carries, as ElastiCache requires its token.
    assert!(
        redis.url.starts_with("redis://:") && redis.url.contains('@'),
        "a password in the URL"
    );
    let password_file = temp.state.path().join("redis/password");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&password_file)?.permissions());
    assert_eq!(mode & 0o077, 0, "the password file is its owner's only");
    let mut anonymous = redis::Client::open(format!("redis://{addr}"))?
        .get_multiplexed_async_connection()
        .await?;
    let refused: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut anonymous).await;
    let refused = refused.expect_err("no password, no access");
    assert!(refused.to_string().contains("NOAUTH"), "{refused}");
    drop(anonymous);
    let _: () = redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query_async(&mut conn)
        .await?;
    drop(conn);
    redis.stop().await?;
    assert!(!answers(addr).await, "{addr} still answers after stop");
    assert!(temp.state.path().join("redis/appendonlydir").is_dir());

    let again = servers::redis(None, default, &temp.state).await?;
    let mut conn = redis_connection(&again.url).await?;
    let kept: Option<String> = redis::cmd("GET")
        .arg("greeting")
        .query_async(&mut conn)
        .await?;
    assert_eq!(kept.as_deref(), Some("hello"));
    drop(conn);
    // Dropped without `stop`, as on an early return: the watchdog's pipe closes.
    let addr = addr_of(&again.url)?;
    drop(again);
    tests::wait_until(
        Duration::from_secs(5),
        "the dropped Redis shuts down",
        || async { Ok(!answers(addr).await) },
    )
    .await?;

    let third = servers::redis(None, default, &temp.state).await?;
    let mut conn = redis_connection(&third.url).await?;
    let kept: Option<String> = redis::cmd("GET")
        .arg("greeting")
        .query_async(&mut conn)
        .await?;
    assert_eq!(kept.as_deref(), Some("hello"), "graceful shutdown on drop");
    drop(conn);
    third.stop().await?;
    Ok(())
}

/// PostgreSQL: `initdb` on the first start only; a table written before `stop` is
/// there after the next start; a postmaster left running by a run that died (its
/// handle forgotten) is stopped and replaced by the next start.
#[tokio::test]
async fn a_private_postgres_keeps_its_data_across_restarts_and_replaces_a_leftover(
) -> anyhow::Result<()> {
    let temp = TempState::new()?;
    let default = spare_addr()?;

    let pg = servers::postgres(None, default, &temp.state).await?;
    assert_eq!(pg.origin, Origin::Private);
    let addr = addr_of(&pg.url)?;
    let mut conn = PgConnection::connect(&format!("{}/postgres", pg.url)).await?;
    sqlx::raw_sql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    pg.stop().await?;
    assert!(!answers(addr).await, "{addr} still answers after stop");

    let again = servers::postgres(None, default, &temp.state).await?;
    let mut conn = PgConnection::connect(&format!("{}/postgres", again.url)).await?;
    let kept: String = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(kept, "hello");
    conn.close().await?;
    // As if the emulator had been killed with SIGKILL: nothing stops this one.
    let leftover = addr_of(&again.url)?;
    std::mem::forget(again);

    let third = servers::postgres(None, default, &temp.state).await?;
    assert!(
        !answers(leftover).await,
        "the leftover on {leftover} was not stopped"
    );
    let mut conn = PgConnection::connect(&format!("{}/postgres", third.url)).await?;
    let kept: String = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(kept, "hello");
    conn.close().await?;
    let addr = addr_of(&third.url)?;
    third.stop().await?;
    assert!(!answers(addr).await, "{addr} still answers after stop");
    Ok(())
}

/// A configured URL is returned as given, without a probe: nothing listens there.
#[tokio::test]
async fn configured_urls_are_used_as_is() -> anyhow::Result<()> {
    let temp = TempState::new()?;
    let default = spare_addr()?;
    let redis = servers::redis(Some("redis://192.0.2.1:1"), default, &temp.state).await?;
    assert_eq!(redis.url, "redis://192.0.2.1:1");
    assert_eq!(redis.origin, Origin::Configured);
    redis.stop().await?;
    let pg = servers::postgres(Some("postgres://u@192.0.2.1:1/db"), default, &temp.state).await?;
    assert_eq!(pg.url, "postgres://u@192.0.2.1:1/db");
    assert_eq!(pg.origin, Origin::Configured);
    pg.stop().await?;
    assert!(!temp.state.path().exists(), "nothing was started");
    Ok(())
}

/// Servers that already answer at the default addresses (the shared ones) are used,
/// and `stop` leaves them running.
#[tokio::test]
async fn servers_answering_at_the_default_address_are_used() -> anyhow::Result<()> {
    let temp = TempState::new()?;
    let redis_addr: SocketAddr = "127.0.0.1:6379".parse()?;
    let redis = servers::redis(None, redis_addr, &temp.state).await?;
    assert_eq!(redis.origin, Origin::Running);
    assert_eq!(redis.url, "redis://127.0.0.1:6379");
    redis.stop().await?;
    assert!(answers(redis_addr).await);

    let pg_addr: SocketAddr = "127.0.0.1:5432".parse()?;
    let pg = servers::postgres(None, pg_addr, &temp.state).await?;
    assert_eq!(pg.origin, Origin::Running);
    assert_eq!(pg.url, "postgres://postgres@127.0.0.1:5432");
    pg.stop().await?;
    assert!(answers(pg_addr).await);
    assert!(!temp.state.path().exists(), "nothing was started");
    Ok(())
}

/// Something that answers at the default address, but not as Redis, does not stop
/// the emulator from having a Redis: a private one is started.
#[tokio::test]
async fn a_stranger_at_the_default_address_gets_a_private_redis() -> anyhow::Result<()> {
    let temp = TempState::new()?;
    let stranger = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let default = stranger.local_addr()?;
    let serving = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        while let Ok((mut socket, _)) = stranger.accept().await {
            let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let redis = servers::redis(None, default, &temp.state).await?;
    assert_eq!(redis.origin, Origin::Private);
    redis.stop().await?;
    serving.abort();
    Ok(())
}

/// Without the server programs, the error is one line that says what to install or
/// which variable to set; with them on the search path, they are found.
#[tokio::test]
async fn without_the_programs_the_error_says_what_to_install_or_set() -> anyhow::Result<()> {
    let temp = TempState::new()?;
    let default = spare_addr()?;
    let nothing = Binaries::in_dirs([]);

    let Err(e) = servers::redis_with(None, default, &temp.state, &nothing).await else {
        anyhow::bail!("a Redis without redis-server");
    };
    assert_eq!(
        e.downcast_ref::<NotInstalled>(),
        Some(&NotInstalled::Redis(default))
    );
    assert_eq!(
        e.to_string(),
        format!(
            "Redis is not reachable at {default} and redis-server is not installed: install it \
             (`apt-get install redis-server` / `brew install redis`) or set REDIS_URL"
        )
    );

    let Err(e) = servers::postgres_with(None, default, &temp.state, &nothing).await else {
        anyhow::bail!("a PostgreSQL without initdb");
    };
    assert_eq!(
        e.downcast_ref::<NotInstalled>(),
        Some(&NotInstalled::Postgres(default))
    );
    let message = e.to_string();
    assert!(!message.contains('\n'), "{message}");
    for part in [
        &format!("PostgreSQL is not reachable at {default}"),
        "apt-get install postgresql",
        "brew install postgresql",
        "DATABASE_URL",
    ] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    assert!(!temp.state.path().exists(), "nothing was started");

    // The same lookup finds what this machine has installed.
    let system = Binaries::system();
    let redis_server = system.redis_server().context("redis-server on PATH")?;
    let bindir = system
        .postgres_bindir()
        .await
        .context("initdb and pg_ctl")?;
    assert!(bindir.join("initdb").is_file());
    let only: Vec<PathBuf> = [redis_server.parent(), Some(bindir.as_path())]
        .into_iter()
        .flatten()
        .map(Path::to_path_buf)
        .collect();
    let only = Binaries::in_dirs(only);
    assert_eq!(only.redis_server(), Some(redis_server));
    assert_eq!(only.postgres_bindir().await, Some(bindir));
    Ok(())
}

/// The state directory is `$XDG_STATE_HOME/order-emulator`, else
/// `~/.local/state/order-emulator`.
#[test]
fn the_state_dir_follows_the_xdg_base_directories() -> anyhow::Result<()> {
    let xdg = StateDir::default_location(&Env::from_pairs([
        ("XDG_STATE_HOME", "/x/state"),
        ("HOME", "/home/u"),
    ]))?;
    assert_eq!(xdg.path(), Path::new("/x/state/order-emulator"));
    let home = StateDir::default_location(&Env::from_pairs([
        ("XDG_STATE_HOME", "relative/ignored"),
        ("HOME", "/home/u"),
    ]))?;
    assert_eq!(
        home.path(),
        Path::new("/home/u/.local/state/order-emulator")
    );
    assert!(StateDir::default_location(&Env::from_pairs([("PATH", "/bin")])).is_err());
    Ok(())
}

/// As root, PostgreSQL runs as user `postgres`, which must be able to reach the
/// state directory; when it cannot, the error says to pick another one. (As any
/// other user there is nothing to check.)
#[tokio::test]
async fn as_root_an_unreachable_state_dir_is_explained() -> anyhow::Result<()> {
    let euid = std::process::Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&euid.stdout).trim() != "0" {
        return Ok(());
    }
    use std::os::unix::fs::PermissionsExt as _;
    let temp = TempState::new()?;
    std::fs::create_dir_all(temp.state.path())?;
    std::fs::set_permissions(temp.state.path(), std::fs::Permissions::from_mode(0o700))?;
    let state = StateDir::new(temp.state.path().join("inner"))?;
    let Err(e) = servers::postgres(None, spare_addr()?, &state).await else {
        anyhow::bail!("a private PostgreSQL in a directory user postgres cannot reach");
    };
    let message = format!("{e:#}");
    assert!(message.contains("cannot reach"), "{message}");
    assert!(message.contains("--state-dir"), "{message}");
    Ok(())
}

/// A private server that does not come up fails the start with the end of its log.
#[tokio::test]
async fn a_server_that_fails_to_start_is_reported_with_its_log() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let temp = TempState::new()?;
    let bin = temp.state.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    let fake = bin.join("redis-server");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'Fatal error, cannot start'\nexit 1\n",
    )?;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
    let Err(e) =
        servers::redis_with(None, spare_addr()?, &temp.state, &Binaries::in_dirs([bin])).await
    else {
        anyhow::bail!("a Redis from a program that exits at once");
    };
    let message = format!("{e:#}");
    assert!(message.contains("exited at start"), "{message}");
    assert!(message.contains("Fatal error, cannot start"), "{message}");
    Ok(())
}
