//! Another process's TCP sockets as that process sees them, for tests of the socket options tollgate sets on
//! its own connections (Nagle's algorithm off on agent, upstream and database connections).
//!
//! Linux only: each socket is borrowed with pidfd_getfd(2), which needs the right to ptrace the process; a
//! test has it for the tollgate it started. The borrowed descriptor is the same socket, so its options and
//! addresses are the owner's; it is closed again at once and the owner's connection is left as it was.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{Context, bail};

/// One TCP socket of the process.
#[derive(Debug, Clone)]
pub struct TcpSocket {
    pub local: SocketAddr,
    /// None for a listener.
    pub peer: Option<SocketAddr>,
    /// TCP_NODELAY: Nagle's algorithm is off.
    pub nodelay: bool,
}

/// Every TCP socket process `pid` holds open right now.
pub fn tcp_sockets(pid: u32) -> anyhow::Result<Vec<TcpSocket>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; nothing is borrowed.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        bail!("pidfd_open({pid}): {}", io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let mut sockets = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).context("listing its descriptors")? {
        let entry = entry?;
        // A descriptor may close between the listing and this look; it is then no longer of interest.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(number) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that process and flags, and returns a new
        // descriptor of ours or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), number, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // Closed since the listing, or reused for something else: not a socket of interest. Any other
            // error (no permission to borrow, a kernel without pidfd_getfd) means the check cannot be made.
            if matches!(e.raw_os_error(), Some(libc::EBADF | libc::ENOTSOCK)) {
                continue;
            }
            bail!("pidfd_getfd(pid {pid}, fd {number}): {e}");
        }
        // SAFETY: as above, a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let socket = socket2::SockRef::from(&fd);
        // The descriptor number may have been reused for a non-socket since the listing: skip what does not
        // answer as a TCP socket.
        if !socket.r#type().is_ok_and(|t| t == socket2::Type::STREAM) {
            continue;
        }
        let Some(local) = socket.local_addr().ok().and_then(|a| a.as_socket()) else {
            continue; // a Unix socket
        };
        let Ok(nodelay) = socket.tcp_nodelay() else {
            continue;
        };
        sockets.push(TcpSocket {
            local,
            peer: socket.peer_addr().ok().and_then(|a| a.as_socket()),
            nodelay,
        });
    }
    Ok(sockets)
}
