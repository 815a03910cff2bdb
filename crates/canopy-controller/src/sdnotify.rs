//! sd_notify without a crate: one datagram to $NOTIFY_SOCKET (a path, or `@name` for the
//! abstract namespace). Without $NOTIFY_SOCKET it does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.to_string_lossy().into_owned();
    let sock = UnixDatagram::unbound()?;
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(&path)?,
    };
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// `RELOADING=1` with the monotonic timestamp systemd wants for Type=notify-reload.
pub fn reloading_message() -> String {
    format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        canopy_sys::monotonic_now_ns() / 1000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_to_the_socket_in_notify_socket() {
        let dir = std::env::temp_dir().join(format!("canopy-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let rx = std::os::unix::net::UnixDatagram::bind(&dir).unwrap();
        // SAFETY: tests in this module are the only users of NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &dir) };
        assert!(super::notify("READY=1").unwrap());
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_file(&dir);
    }
}
