//! A TCP fault relay for tests: sits between tollgate and a server it talks to (Postgres, the stand-in
//! upstream) on `127.0.0.1`, passes bytes through unchanged, and on command misbehaves the way networks and
//! servers do: drops every open connection, refuses new ones for a while, lets a client message through and
//! swallows the server's reply (the acknowledgement of a commit lost with its connection), or delays that
//! reply (a slow commit).
//!
//! Faults are armed from the test ([`FaultRelay::reset_all`], [`FaultRelay::refuse`],
//! [`FaultRelay::swallow_reply_after`], [`FaultRelay::delay_reply_after`]); what the relay did is counted ([`FaultRelay::swallowed`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running relay; dropping it stops it and closes every connection.
pub struct FaultRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// Where the relay connects: a TCP address, or a Unix socket (a throwaway Postgres cluster listens on one).
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

struct Shared {
    target: Target,
    /// Bumped by `reset_all`: every connection task watching it closes both sides.
    generation: watch::Sender<u64>,
    refusing: AtomicBool,
    /// Armed by `swallow_reply_after`: the next client message containing these bytes is forwarded, and
    /// the server's reply to it is dropped together with the connection.
    swallow: Mutex<Option<Vec<u8>>>,
    swallowed: AtomicUsize,
    /// Armed by `delay_reply_after`: the next client message containing these bytes is forwarded at once,
    /// and the server's reply to it reaches the client only after the delay.
    delay: Mutex<Option<(Vec<u8>, std::time::Duration)>>,
}

impl FaultRelay {
    /// Starts relaying `127.0.0.1:<port>` → `target`.
    pub async fn start(target: Target) -> anyhow::Result<FaultRelay> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the fault relay")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            generation: watch::channel(0).0,
            refusing: AtomicBool::new(false),
            swallow: Mutex::new(None),
            swallowed: AtomicUsize::new(0),
            delay: Mutex::new(None),
        });
        let accept = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accept.refusing.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                tokio::spawn(relay(accept.clone(), client));
            }
        });
        Ok(FaultRelay { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection at once (both sides), like a server restart or a network cut.
    pub fn reset_all(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// While on, new connections are accepted and closed at once (the server is down).
    pub fn refuse(&self, on: bool) {
        self.shared.refusing.store(on, Ordering::Release);
        if on {
            self.reset_all();
        }
    }

    /// The next client message that contains `marker` reaches the server, but the server's reply does not
    /// reach the client: the connection is cut right after the message was forwarded.
    pub fn swallow_reply_after(&self, marker: &[u8]) {
        *self
            .shared
            .swallow
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(marker.to_vec());
    }

    /// The next client message that contains `marker` reaches the server at once; the server's reply
    /// reaches the client `by` later (a slow commit, a congested link).
    pub fn delay_reply_after(&self, marker: &[u8], by: std::time::Duration) {
        *self.shared.delay.lock().unwrap_or_else(|e| e.into_inner()) = Some((marker.to_vec(), by));
    }

    /// How many replies were swallowed so far.
    pub fn swallowed(&self) -> usize {
        self.shared.swallowed.load(Ordering::Acquire)
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.task.abort();
        self.reset_all();
    }
}

async fn relay(shared: Arc<Shared>, client: TcpStream) {
    let _ = client.set_nodelay(true);
    match &shared.target {
        Target::Tcp(addr) => {
            let Ok(server) = TcpStream::connect(addr).await else {
                return;
            };
            let _ = server.set_nodelay(true);
            pump(&shared, client, server).await;
        }
        Target::Unix(path) => {
            let Ok(server) = tokio::net::UnixStream::connect(path).await else {
                return;
            };
            pump(&shared, client, server).await;
        }
    }
}

async fn pump<S>(shared: &Shared, mut client: TcpStream, server: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut reset = shared.generation.subscribe();
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            _ = reset.changed() => return,
            read = client_read.read(&mut up) => {
                let Ok(n) = read else { return };
                if n == 0 {
                    return;
                }
                let chunk = &up[..n];
                let armed = {
                    let mut swallow = shared.swallow.lock().unwrap_or_else(|e| e.into_inner());
                    let hit = swallow
                        .as_ref()
                        .is_some_and(|marker| chunk.windows(marker.len()).any(|w| w == marker.as_slice()));
                    if hit {
                        *swallow = None;
                    }
                    hit
                };
                let delayed = {
                    let mut delay = shared.delay.lock().unwrap_or_else(|e| e.into_inner());
                    let hit = delay.as_ref().is_some_and(|(marker, _)| {
                        chunk.windows(marker.len()).any(|w| w == marker.as_slice())
                    });
                    if hit { delay.take().map(|(_, by)| by) } else { None }
                };
                if server_write.write_all(chunk).await.is_err() {
                    return;
                }
                if let Some(by) = delayed {
                    let Ok(n) = server_read.read(&mut down).await else { return };
                    tokio::time::sleep(by).await;
                    if n == 0 || client_write.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
                if armed {
                    // Let the server act on it (and answer into the void), then cut the client off.
                    let _ = server_read.read(&mut down).await;
                    shared.swallowed.fetch_add(1, Ordering::AcqRel);
                    return;
                }
            }
            read = server_read.read(&mut down) => {
                let Ok(n) = read else { return };
                if n == 0 || client_write.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
