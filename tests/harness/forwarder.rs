//! A TCP forwarder on loopback that a test can freeze (bytes stop flowing both
//! ways, as on a stalled network link, while the connections stay open) and
//! point at another server (as a DNS endpoint moves after a failover; the
//! connections it carried are cut).

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
pub struct Forwarder {
    pub port: u16,
    target: Arc<AtomicU16>,
    frozen: watch::Sender<bool>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    /// Listens on a spare loopback port and forwards to `127.0.0.1:target`.
    pub async fn start(target: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let target = Arc::new(AtomicU16::new(target));
        let (frozen, _) = watch::channel(false);
        let (generation, _) = watch::channel(0u64);
        let task = {
            let target = Arc::clone(&target);
            let frozen = frozen.clone();
            let generation = generation.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let upstream = target.load(Ordering::SeqCst);
                    tokio::spawn(carry(
                        client,
                        upstream,
                        frozen.subscribe(),
                        generation.subscribe(),
                    ));
                }
            })
        };
        Ok(Self {
            port,
            target,
            frozen,
            generation,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops every byte, both ways, until [`Forwarder::thaw`].
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// New connections go to `target`; the current ones are cut.
    pub fn retarget(&self, target: u16) {
        self.target.store(target, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn carry(
    client: TcpStream,
    upstream: u16,
    frozen: watch::Receiver<bool>,
    mut generation: watch::Receiver<u64>,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, frozen.clone());
    let down = pump(sr, cw, frozen);
    generation.mark_unchanged();
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = generation.changed() => {}
    }
}

/// Copies `from` to `to`; a chunk read while or before a freeze is held until
/// the thaw.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
