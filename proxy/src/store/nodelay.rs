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
//! once, which sqlx reports as a failed connect: the store is unavailable and requests are refused. sqlx
//! can only say that its socket closed, so the relay keeps the reason (`last_failure`) and the store's
//! connect error names it.
//!
//! Owns: the relay's directory and socket (created owner-only, locked while in use, removed on drop;
//! directories that killed processes left behind are swept at the next start) and its accept task.
//! May not touch: SQL, the pool, credentials (it never parses the protocol).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// Buffer per direction: an audit batch (up to ~1 MB) crosses in a few reads.
const RELAY_BUFFER: usize = 64 * 1024;

/// How long the relay tries to open the server connection. sqlx gives up sooner (the pool's acquire
/// timeout); this only bounds how long an abandoned attempt keeps its task.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the relay's last server connection failed, shared by its connection tasks.
type LastFailure = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// A running relay from a private Unix socket to one Postgres server. Dropping it stops accepting new
/// connections and removes the socket; connections already relayed end with the pool that holds them.
pub struct NoDelayRelay {
    dir: PathBuf,
    accept: JoinHandle<()>,
    /// Held (flock) for the relay's life: the sign to other processes' sweeps that the directory is in use.
    _lock: std::fs::File,
    /// Why the last server connection failed, until one succeeds. sqlx only sees the Unix side close, and
    /// reports that as a protocol error; the store puts this reason in its error instead.
    last_failure: LastFailure,
}

impl NoDelayRelay {
    /// Starts relaying to `host:port`. The socket is `<dir>/.s.PGSQL.<port>`, the name sqlx derives from
    /// `PgConnectOptions::socket(dir)` and the port, so the options keep their host (for TLS) and port.
    pub fn start(host: &str, port: u16) -> io::Result<NoDelayRelay> {
        let (dir, lock) = private_dir()?;
        sweep_stale_dirs(&std::env::temp_dir(), &dir);
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
        let last_failure = LastFailure::default();
        let failures = last_failure.clone();
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((client, _)) => {
                        tokio::spawn(relay(client, host.clone(), port, failures.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres relay: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(NoDelayRelay {
            dir,
            accept,
            _lock: lock,
            last_failure,
        })
    }

    /// The directory to hand to `PgConnectOptions::socket`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Why the relay's last attempt to reach the server failed, if no attempt has succeeded since.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .ok()
            .and_then(|failure| failure.clone())
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

/// The file in a relay directory that its relay keeps locked.
const LOCK_FILE: &str = "lock";
/// A relay directory younger than this is never swept: its process may be between creating the directory and
/// locking it.
const SWEEP_MIN_AGE: Duration = Duration::from_secs(60);

/// A fresh directory only this user can enter, so that no other local user can reach the relay, with its lock
/// file created and locked.
fn private_dir() -> io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
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
    let locked = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
        .and_then(|file| match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(io::Error::other("locked by another process"))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        });
    match locked {
        Ok(lock) => Ok((dir, lock)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot lock the Postgres relay's directory {}: {e}",
                    dir.display()
                ),
            ))
        }
    }
}

/// Removes the relay directories in `parent` that processes killed before they could clean up (SIGKILL, the
/// OOM killer) left behind, so that a crash-looping pod does not fill its /tmp with them. A directory is
/// stale when it is this user's, owner-only and a real directory (not a link), at least [`SWEEP_MIN_AGE`]
/// old, and its lock file is not locked: a live relay holds that lock for its whole life, whatever its pid
/// or namespace, and the kernel drops it when the process dies. A directory without a lock file (one that
/// an earlier tollgate version made, whose relay may still run) is left alone, as is `own`. Best effort:
/// what cannot be read, locked or removed stays.
fn sweep_stale_dirs(parent: &Path, own: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata(own).map(|m| m.uid()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let relay_dir = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        if !relay_dir || dir == own {
            continue;
        }
        // Not followed if it is a symlink: only a real directory of ours qualifies.
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        let old_enough = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= SWEEP_MIN_AGE);
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o777 != 0o700 || !old_enough {
            continue;
        }
        // Held while the directory is removed, so no relay can take it meanwhile.
        let Ok(lock) = std::fs::File::open(dir.join(LOCK_FILE)) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue; // in use, or not lockable: leave it
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(
                dir = %dir.display(),
                "removed a Postgres relay directory a killed process left behind"
            ),
            Err(e) => tracing::debug!(
                dir = %dir.display(),
                error = %e,
                "could not remove a stale relay directory"
            ),
        }
    }
}

async fn relay(mut client: UnixStream, host: String, port: u16, last_failure: LastFailure) {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)));
    let outcome = match connect.await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
        Err(_) => Err(format!(
            "connecting to {host}:{port} timed out after {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    };
    if let Ok(mut last) = last_failure.lock() {
        *last = outcome.as_ref().err().cloned();
    }
    let mut server = match outcome {
        Ok(s) => s,
        Err(why) => {
            tracing::warn!(reason = %why, "postgres relay: the server is unreachable");
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
        assert_eq!(relay.last_failure(), None);
        let mut client = UnixStream::connect(socket_path(relay.dir(), port))
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("the relay closes the connection")
            .unwrap_or(0);
        assert_eq!(n, 0);
        let why = relay.last_failure().expect("the reason is kept");
        assert!(
            why.contains(&format!("127.0.0.1:{port}")) && why.contains("refused"),
            "{why}"
        );
    }

    #[test]
    fn stale_relay_directories_are_swept_and_live_ones_kept() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let parent = tempfile::tempdir().unwrap();
        let make = |name: &str, lock: bool| {
            let dir = parent.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            if lock {
                std::fs::write(dir.join(LOCK_FILE), b"").unwrap();
            }
            dir
        };
        let age = |dir: &Path, secs: u64| {
            let then = std::time::SystemTime::now() - Duration::from_secs(secs);
            std::fs::File::open(dir)
                .unwrap()
                .set_modified(then)
                .unwrap();
        };
        let own = make(&format!("{DIR_PREFIX}1-00000000000000aa"), true);

        // Left by a killed process: its lock file is free. Swept.
        let killed = make(&format!("{DIR_PREFIX}1-00000000000000bb"), true);
        std::fs::write(killed.join(".s.PGSQL.5432"), b"").unwrap();
        age(&killed, 120);
        // No lock file (an earlier version's relay, maybe still running): kept.
        let unlocked = make(&format!("{DIR_PREFIX}7-00000000000000cc"), false);
        age(&unlocked, 120);
        // A live relay (same pid 1 as ours, as in a second container sharing /tmp): locked. Kept.
        let live = make(&format!("{DIR_PREFIX}1-00000000000000dd"), true);
        let held = std::fs::File::open(live.join(LOCK_FILE)).unwrap();
        held.try_lock().unwrap();
        age(&live, 120);
        // Just created, not locked yet: too young to tell. Kept.
        let young = make(&format!("{DIR_PREFIX}9-00000000000000ee"), true);
        // Not owner-only: not one tollgate made. Kept.
        let open = make(&format!("{DIR_PREFIX}9-00000000000000ff"), true);
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        age(&open, 120);
        // A link with a relay directory's name: not followed, and its target stays.
        let target = make("elsewhere", true);
        age(&target, 120);
        let link = parent
            .path()
            .join(format!("{DIR_PREFIX}9-0000000000000011"));
        symlink(&target, &link).unwrap();
        // Not a relay directory at all. Kept.
        let unrelated = make("postgres-sockets", true);
        age(&unrelated, 120);

        sweep_stale_dirs(parent.path(), &own);

        assert!(!killed.exists(), "a killed relay's directory stays");
        assert!(
            unlocked.exists(),
            "a directory without a lock file was removed"
        );
        assert!(own.exists(), "this relay's own directory was removed");
        assert!(
            live.exists(),
            "a locked (live) relay's directory was removed"
        );
        assert!(young.exists(), "a directory too young to judge was removed");
        assert!(
            open.exists(),
            "a directory that is not owner-only was removed"
        );
        assert!(
            link.symlink_metadata().is_ok() && target.exists(),
            "a symlink was followed"
        );
        assert!(unrelated.exists(), "an unrelated directory was removed");
        drop(held);
    }

    #[tokio::test]
    async fn a_running_relay_holds_its_directory_lock() {
        let relay = NoDelayRelay::start("127.0.0.1", 9).unwrap();
        let lock = std::fs::File::open(relay.dir().join(LOCK_FILE)).unwrap();
        assert!(
            matches!(lock.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
            "the relay's lock is free while it runs"
        );
        drop(relay);
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
