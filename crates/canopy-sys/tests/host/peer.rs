//! SO_PEERCRED over a real socketpair, with std and tokio streams.

use canopy_sys::peer::peer_credentials;

#[test]
fn socketpair_peer_is_this_process() {
    let (left, right) = std::os::unix::net::UnixStream::pair().unwrap();
    let credentials = peer_credentials(&left).unwrap();
    assert_eq!(credentials.pid, std::process::id() as i32);
    // SAFETY: getuid/getgid have no preconditions.
    assert_eq!(credentials.uid, unsafe { libc::geteuid() });
    assert_eq!(credentials.gid, unsafe { libc::getegid() });
    assert_eq!(peer_credentials(&right).unwrap(), credentials);
}

#[tokio::test]
async fn tokio_stream_and_a_non_socket() {
    let (left, _right) = tokio::net::UnixStream::pair().unwrap();
    assert_eq!(
        peer_credentials(&left).unwrap().pid,
        std::process::id() as i32
    );
    let file = std::fs::File::open("/proc/self/stat").unwrap();
    let error = peer_credentials(&file).unwrap_err();
    assert_eq!(error.source.raw_os_error(), Some(libc::ENOTSOCK));
}
