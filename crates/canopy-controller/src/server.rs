//! The control socket: accepts connections, reads JSON-line requests with a size limit and
//! timeouts, takes the caller's uid from SO_PEERCRED, and hands each parsed request to the
//! controller loop through a channel. A malformed, oversized or slow client only ever affects its
//! own connection.
//!
//! No uid may crowd out the others (threat model, attack 6): a non-root uid holds at most
//! [`Limits::per_uid_connections`] of the [`Limits::max_connections`] slots (16 of 64 by default,
//! so four users at their cap still leave room) and sends at most
//! [`Limits::per_uid_requests_per_s`] requests per second over all its connections (2,000 by
//! default: a token bucket holding one second's worth; past it that uid's requests wait, nobody
//! else's). Example: uid 1000 with 16 connections open is told "busy" on the 17th; sending
//! 10,000 requests as fast as it can, it is answered over about 4 s while root and uid 1001 are
//! answered at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Concurrent connections one non-root uid may hold; more are told "busy" and closed.
    pub per_uid_connections: usize,
    /// Requests per second one non-root uid may send over all its connections (a burst of one
    /// second's worth); past it its requests wait.
    pub per_uid_requests_per_s: u32,
    /// Whether root is exempt from the two per-uid limits (tests limit root too).
    pub root_exempt: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            max_connections: 64,
            per_uid_connections: 16,
            per_uid_requests_per_s: 2_000,
            root_exempt: true,
        }
    }
}

/// One uid's share: its open connections and its request token bucket.
#[derive(Debug)]
struct UidShare {
    connections: usize,
    /// Requests it may send now (negative: requests already waiting for tokens).
    tokens: f64,
    refilled: Instant,
}

/// Every limited uid's share (one entry per uid that connected: bounded by the machine's uids).
type Shares = Arc<Mutex<HashMap<u32, UidShare>>>;

/// A connection's hold on its uid's share, released when the connection ends.
struct ShareHold {
    shares: Shares,
    uid: u32,
}

impl Drop for ShareHold {
    fn drop(&mut self) {
        if let Ok(mut shares) = self.shares.lock() {
            if let Some(share) = shares.get_mut(&self.uid) {
                share.connections = share.connections.saturating_sub(1);
            }
        }
    }
}

impl ShareHold {
    /// Takes one of `uid`'s connection slots; `None` when it holds its share already.
    fn take(shares: &Shares, uid: u32, limits: &Limits) -> Option<ShareHold> {
        let mut map = shares.lock().ok()?;
        let share = map.entry(uid).or_insert_with(|| UidShare {
            connections: 0,
            tokens: f64::from(limits.per_uid_requests_per_s),
            refilled: Instant::now(),
        });
        if share.connections >= limits.per_uid_connections {
            return None;
        }
        share.connections += 1;
        Some(ShareHold {
            shares: shares.clone(),
            uid,
        })
    }

    /// How long this uid's next request must wait for a token (the token is taken now).
    fn next_request_wait(&self, limits: &Limits) -> Duration {
        let Ok(mut map) = self.shares.lock() else {
            return Duration::ZERO;
        };
        let Some(share) = map.get_mut(&self.uid) else {
            return Duration::ZERO;
        };
        let rate = f64::from(limits.per_uid_requests_per_s.max(1));
        let now = Instant::now();
        let refill = now.saturating_duration_since(share.refilled).as_secs_f64() * rate;
        share.tokens = (share.tokens + refill).min(rate);
        share.refilled = now;
        share.tokens -= 1.0;
        if share.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-share.tokens / rate)
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
    let shares: Shares = Arc::default();
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
            refuse_busy(stream, "busy: too many connections".into(), limits);
            continue;
        };
        let Ok(cred) = stream.peer_cred() else {
            continue;
        };
        let hold = if cred.uid() == 0 && limits.root_exempt {
            None
        } else {
            match ShareHold::take(&shares, cred.uid(), &limits) {
                Some(hold) => Some(hold),
                None => {
                    let why = format!(
                        "busy: uid {} holds its share of connections ({})",
                        cred.uid(),
                        limits.per_uid_connections
                    );
                    refuse_busy(stream, why, limits);
                    continue;
                }
            }
        };
        let tx = to_controller.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, tx, limits, hold).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

/// Tells a connection it cannot be served ("busy") and closes it, without holding up the
/// accept loop.
fn refuse_busy(stream: UnixStream, why: String, limits: Limits) {
    tokio::spawn(async move {
        let mut s = stream;
        let _ = tokio::time::timeout(
            limits.write_timeout,
            s.write_all(Response::error(why).to_line().as_bytes()),
        )
        .await;
    });
}

async fn connection(
    stream: UnixStream,
    tx: mpsc::Sender<ControlMsg>,
    limits: Limits,
    hold: Option<ShareHold>,
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
        if let Some(hold) = &hold {
            let wait = hold.next_request_wait(&limits);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
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
