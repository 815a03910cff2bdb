//! The control socket: accepts connections, reads JSON-line requests with a size limit and
//! timeouts, takes the caller's uid from SO_PEERCRED, and hands each parsed request to the
//! controller loop through a channel. A malformed, oversized or slow client only ever affects its
//! own connection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::auth::Peer;
use crate::protocol::{parse_request, Request, Response, MAX_REQUEST_BYTES};

/// A request on its way to the controller loop.
#[derive(Debug)]
pub struct ControlMsg {
    /// Who asked.
    pub peer: Peer,
    /// What.
    pub request: Request,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Response>,
}

/// Limits for the control socket.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A connection idle this long (no complete request) is closed.
    pub idle_timeout: Duration,
    /// Writing a reply may take this long.
    pub write_timeout: Duration,
    /// Concurrent connections; more are told "busy" and closed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            max_connections: 64,
        }
    }
}

/// Binds the control socket at `path` (replacing a stale one) with mode 0660.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// Serves connections until the task is dropped.
pub async fn serve(
    listener: UnixListener,
    to_controller: mpsc::Sender<ControlMsg>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut s = stream;
                let _ = tokio::time::timeout(
                    limits.write_timeout,
                    s.write_all(
                        Response::error("busy: too many connections")
                            .to_line()
                            .as_bytes(),
                    ),
                )
                .await;
            });
            continue;
        };
        let tx = to_controller.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, tx, limits).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn connection(
    stream: UnixStream,
    tx: mpsc::Sender<ControlMsg>,
    limits: Limits,
) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let peer = Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = {
            let mut limited = (&mut reader).take(MAX_REQUEST_BYTES as u64 + 1);
            match tokio::time::timeout(limits.idle_timeout, limited.read_until(b'\n', &mut line))
                .await
            {
                Ok(r) => r?,
                Err(_) => {
                    let _ = send(
                        &mut write,
                        &Response::error("timeout: no complete request"),
                        limits,
                    )
                    .await;
                    return Ok(());
                }
            }
        };
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_REQUEST_BYTES
            || (line.last() != Some(&b'\n') && line.len() > MAX_REQUEST_BYTES - 1)
        {
            // We cannot find the next request boundary reliably: answer and close.
            send(
                &mut write,
                &Response::error(format!("request larger than {MAX_REQUEST_BYTES} bytes")),
                limits,
            )
            .await?;
            return Ok(());
        }
        let response = match parse_request(&line) {
            Err(e) => Response::error(e.to_string()),
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                if tx
                    .send(ControlMsg {
                        peer,
                        request,
                        reply,
                    })
                    .await
                    .is_err()
                {
                    send(
                        &mut write,
                        &Response::error("daemon is shutting down"),
                        limits,
                    )
                    .await?;
                    return Ok(());
                }
                answer
                    .await
                    .unwrap_or_else(|_| Response::error("daemon is shutting down"))
            }
        };
        send(&mut write, &response, limits).await?;
    }
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    r: &Response,
    limits: Limits,
) -> std::io::Result<()> {
    match tokio::time::timeout(
        limits.write_timeout,
        write.write_all(r.to_line().as_bytes()),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "reply write timed out",
        )),
    }
}

/// A client call: sends one request, returns the reply (used by `canopy ctl` and tests).
pub async fn call(path: &Path, request: &Request, timeout: Duration) -> std::io::Result<Response> {
    let fut = async {
        let mut s = UnixStream::connect(path).await?;
        let mut line = serde_json::to_string(request).map_err(std::io::Error::other)?;
        line.push('\n');
        s.write_all(line.as_bytes()).await?;
        let mut reader = BufReader::new(s);
        let mut reply = String::new();
        reader.read_line(&mut reply).await?;
        serde_json::from_str::<Response>(&reply).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad reply {reply:?}: {e}"),
            )
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "daemon did not answer in time",
            ))
        })
}
