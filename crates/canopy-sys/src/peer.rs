//! Peer credentials of a Unix stream socket (`SO_PEERCRED`): who is on the other end of a
//! control-API connection. The kernel records them at `connect(2)` (or `socketpair(2)`), so they
//! cannot be forged by what the peer sends later.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};

use crate::Pid;

/// The process, user and group of a socket's peer, as recorded when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerCredentials {
    /// The peer's process id (in our pid namespace; 0 if it is in none we can see).
    pub pid: Pid,
    /// The peer's effective uid.
    pub uid: u32,
    /// The peer's effective gid.
    pub gid: u32,
}

/// `getsockopt(SO_PEERCRED)` failed (not a Unix socket, or closed).
#[derive(Debug, thiserror::Error)]
#[error("cannot read the peer credentials of socket fd {fd}: {source}")]
pub struct PeerCredentialsError {
    /// The socket's fd.
    pub fd: i32,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// Reads the peer credentials of a connected Unix socket (std's or tokio's `UnixStream`, or
/// anything else with an fd).
pub fn peer_credentials(socket: &impl AsFd) -> Result<PeerCredentials, PeerCredentialsError> {
    let fd = socket.as_fd().as_raw_fd();
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut length = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `credentials` is a writable ucred and `length` its size.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut length,
        )
    };
    if result != 0 {
        return Err(PeerCredentialsError {
            fd,
            source: io::Error::last_os_error(),
        });
    }
    Ok(PeerCredentials {
        pid: credentials.pid,
        uid: credentials.uid,
        gid: credentials.gid,
    })
}
