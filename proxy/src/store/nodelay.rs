//! TCP_NODELAY for the Postgres connections sqlx opens.
//!
//! sqlx 0.9 opens its TCP sockets itself and leaves Nagle's algorithm on. A message that leaves in more than
//! one piece (a batched audit insert split into TLS records, or any write longer than a segment) then waits
//! with its last piece until the server acknowledges the first, and the server, which has half a message and
//! nothing to answer yet, delays that acknowledgement: ~40 ms per commit on Linux. Measured with TLS to the
//! local Postgres: 1,450-1,690 req/s instead of ~14,000, a third of all commits in the 25-50 ms bucket
//! (BENCHMARKS.md). libpq and the Postgres server both set TCP_NODELAY for exactly this reason; sqlx offers
//! no hook to do it.
//!
//! So the store points sqlx at a private Unix socket instead, and this relay forwards each connection made to
//! it to the server over TCP with TCP_NODELAY set. The bytes pass through unchanged: TLS is still negotiated
//! end to end between sqlx and the server (the relay sees ciphertext), and sqlx still verifies the server's
//! certificate against the host in the URL. A connection the relay cannot open to the server is closed at
//! once, which sqlx reports as a failed connect: the store is unavailable and requests are refused.
//!
//! Owns: the relay's directory and socket (created owner-only, removed on drop; directories that killed
//! processes left behind are swept at the next start) and its accept task. May not touch: SQL, the pool,
//! credentials (it never parses the protocol).

use std::io;
use std::path::{Path, PathBuf};

use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// Buffer per direction: an audit batch (up to ~1 MB) crosses in a few reads.
const RELAY_BUFFER: usize = 64 * 1024;

/// How long the relay tries to open the server connection. sqlx gives up sooner (the pool's acquire
/// timeout); this only bounds how long an abandoned attempt keeps its task.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A running relay from a private Unix socket to one Postgres server. Dropping it stops accepting new
/// connections and removes the socket; connections already relayed end with the pool that holds them.
pub struct NoDelayRelay {
    dir: PathBuf,
    accept: JoinHandle<()>,
}

impl NoDelayRelay {
    /// Starts relaying to `host:port`. The socket is `<dir>/.s.PGSQL.<port>`, the name sqlx derives from
    /// `PgConnectOptions::socket(dir)` and the port, so the options keep their host (for TLS) and port.
    pub fn start(host: &str, port: u16) -> io::Result<NoDelayRelay> {
        sweep_stale_dirs(&std::env::temp_dir());
        let dir = private_dir()?;
        let path = socket_path(&dir, port);
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                // The usual cause: a TMPDIR so long that the socket path passes the ~107 bytes a Unix socket
                // address holds.
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot bind the Postgres relay's socket {} ({} bytes): {e}; point TMPDIR at a \
                         shorter writable directory",
                        path.display(),
                        path.as_os_str().len()
                    ),
                ));
            }
        };
        // IPv6 literals come from URLs in brackets.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((client, _)) => {
                        tokio::spawn(relay(client, host.clone(), port));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres relay: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(NoDelayRelay { dir, accept })
    }

    /// The directory to hand to `PgConnectOptions::socket`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for NoDelayRelay {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

const DIR_PREFIX: &str = "tollgate-pg-";

/// A fresh directory only this user can enter, so that no other local user can reach the relay.
fn private_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "{DIR_PREFIX}{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create the Postgres relay's socket directory {} ({e}); TMPDIR must name a \
                     writable directory (in Kubernetes with a read-only root filesystem, mount an emptyDir \
                     at /tmp)",
                    dir.display()
                ),
            )
        })?;
    Ok(dir)
}

/// Removes the relay directories in `parent` that processes killed before they could clean up (SIGKILL, the
/// OOM killer) left behind, so that a crash-looping pod does not fill its /tmp with them. A directory is
/// stale when no socket in it is listening (the kernel's table of Unix sockets, /proc/net/unix) and the
/// process named in it is gone or is this one: a restarted container reuses pids, often 1, and this process
/// has not created its own directory yet. Another live process's directory is left alone even before it
/// has bound its socket. Best effort: what cannot be read or removed stays.
fn sweep_stale_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let listening = listening_unix_paths();
    let own = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let owner_gone = pid == own || !Path::new(&format!("/proc/{pid}")).exists();
        let in_use = listening.iter().any(|p| p.starts_with(&dir));
        if owner_gone && !in_use && entry.file_type().is_ok_and(|t| t.is_dir()) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "removed a Postgres relay directory a killed process left behind")
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "could not remove a stale relay directory")
                }
            }
        }
    }
}

/// The paths of the listening Unix sockets in this network namespace (state 01 with the accepting flag).
fn listening_unix_paths() -> Vec<PathBuf> {
    /// `__SO_ACCEPTCON` in the Flags column.
    const ACCEPTING: u32 = 0x0001_0000;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            let path = fields.get(7)?;
            (flags & ACCEPTING != 0 && path.starts_with('/')).then(|| PathBuf::from(path))
        })
        .collect()
}

async fn relay(mut client: UnixStream, host: String, port: u16) {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)));
    let mut server = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, %host, port, "postgres relay: cannot connect to the server");
            return;
        }
        Err(_) => {
            tracing::warn!(%host, port, "postgres relay: connecting to the server timed out");
            return;
        }
    };
    if let Err(e) = server.set_nodelay(true) {
        tracing::warn!(error = %e, "postgres relay: cannot set TCP_NODELAY; closing the connection");
        return;
    }
    // Ends when either side closes; errors here are the connection's end, which sqlx sees as such.
    let _ = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut server,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn relays_bytes_both_ways_over_a_nodelay_socket_and_cleans_up() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let relay = NoDelayRelay::start("127.0.0.1", port).unwrap();
        let dir = relay.dir().to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );

        let mut client = UnixStream::connect(socket_path(&dir, port)).await.unwrap();
        let (mut upstream, _) = server.accept().await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        upstream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        upstream.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // Bytes flow, so the relay has set up its end: the socket it opened towards the server (the accepted
        // socket's peer, found through the kernel's table) has Nagle off.
        let relay_end = upstream.peer_addr().unwrap();
        assert!(
            nodelay_of_local(relay_end),
            "relay socket without TCP_NODELAY"
        );

        drop(relay);
        assert!(!dir.exists(), "relay directory left behind");
    }

    #[tokio::test]
    async fn a_server_it_cannot_reach_closes_the_client_connection() {
        // A port nothing listens on (bound, then released).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let relay = NoDelayRelay::start("127.0.0.1", port).unwrap();
        let mut client = UnixStream::connect(socket_path(relay.dir(), port))
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("the relay closes the connection")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }

    #[test]
    fn stale_relay_directories_are_swept_and_live_ones_kept() {
        let parent = tempfile::tempdir().unwrap();
        let dead_pid = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            pid
        };
        let own = std::process::id();
        let make = |name: &str| {
            let dir = parent.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            dir
        };
        // Left by a process that is gone: swept, whatever is inside.
        let dead = make(&format!("{DIR_PREFIX}{dead_pid}-00000000000000aa"));
        std::fs::write(dead.join(".s.PGSQL.5432"), b"").unwrap();
        // This pid's, from an earlier incarnation (a restarted container): no listener, swept.
        let earlier = make(&format!("{DIR_PREFIX}{own}-00000000000000bb"));
        // This pid's with a listening socket (another store in this process): kept.
        let live = make(&format!("{DIR_PREFIX}{own}-00000000000000cc"));
        let _listener = std::os::unix::net::UnixListener::bind(live.join(".s.PGSQL.5432")).unwrap();
        // Another live process's (pid 1), even without a socket yet: kept.
        let other = make(&format!("{DIR_PREFIX}1-00000000000000dd"));
        // Not a relay directory: kept.
        let unrelated = make("tollgate-pg-notapid");

        sweep_stale_dirs(parent.path());

        assert!(!dead.exists(), "a dead process's directory stays");
        assert!(
            !earlier.exists(),
            "an earlier incarnation's directory stays"
        );
        assert!(
            live.exists(),
            "a directory with a listening relay was removed"
        );
        assert!(other.exists(), "a live process's directory was removed");
        assert!(unrelated.exists(), "an unrelated directory was removed");
    }

    /// Whether the TCP socket of this process bound to `local` has TCP_NODELAY, read from
    /// /proc/net/tcp's socket inode and this process's file descriptors.
    fn nodelay_of_local(local: std::net::SocketAddr) -> bool {
        let std::net::SocketAddr::V4(v4) = local else {
            panic!("IPv4 expected")
        };
        let want = format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        );
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let inode = table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f[1] == want)
            .map(|f| f[9].to_string())
            .expect("relay socket in /proc/net/tcp");
        for fd in std::fs::read_dir("/proc/self/fd").unwrap() {
            let fd = fd.unwrap();
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            if target.to_string_lossy() == format!("socket:[{inode}]") {
                let n: i32 = fd.file_name().to_string_lossy().parse().unwrap();
                // SAFETY: `n` is an open descriptor of this process (just listed), borrowed only for the
                // getsockopt below while the relay that owns it is alive.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(n) };
                return socket2::SockRef::from(&fd).tcp_nodelay().unwrap();
            }
        }
        panic!("relay socket not among this process's descriptors")
    }
}
