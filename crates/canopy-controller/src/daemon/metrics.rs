//! The Prometheus listener (`--metrics-listen ADDR`, plain HTTP, any request answered with the
//! text format). It must not become a way to exhaust the daemon, so:
//! - peers are checked: only loopback peers are answered unless remote scraping was asked for
//!   (`--metrics-allow-remote`); any other connection is closed at once;
//! - at most [`MAX_CONNECTIONS`] connections are served at a time; more are closed at once,
//!   so 2,000 held connections cost the daemon 16 descriptors, not 2,000;
//! - one snapshot serves every scrape for [`SNAPSHOT_MAX_AGE`] (100 ms): 1,000 scrapes in one
//!   second cost the controller loop at most ten renderings, not 1,000;
//! - accept errors back off (10 ms doubling to 1 s): on EMFILE the pending connection stays
//!   in the backlog and a bare retry would spin.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};
use tokio::time::Instant;

use crate::auth::Peer;
use crate::protocol::Request;
use crate::server::ControlMsg;

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// How long one rendered snapshot answers scrapes: at most ten renderings a second whatever
/// the number of scrapers, and well under any scrape interval (a scraper must never get the
/// same counters twice, which would make its rates 0/0).
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_millis(100);
/// How long a client may take to send its request (a connection that sends nothing holds its
/// slot this long at most).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client may take to take the answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Accept errors back off from this, doubling up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Who may scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsPeers {
    /// Loopback peers only (the default).
    Loopback,
    /// Any peer (`--metrics-allow-remote`: a fleet scraper on the network).
    Any,
}

impl MetricsPeers {
    /// Whether a connection from `peer` is answered.
    pub fn admits(self, peer: IpAddr) -> bool {
        match self {
            MetricsPeers::Any => true,
            MetricsPeers::Loopback => match peer {
                IpAddr::V4(v4) => v4.is_loopback(),
                IpAddr::V6(v6) => {
                    v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
                }
            },
        }
    }
}

/// The last rendered text and when it was rendered.
type Snapshot = Option<(Instant, Arc<str>)>;

/// Serves scrapes until the task is dropped.
pub(super) async fn serve(
    listener: TcpListener,
    peers: MetricsPeers,
    ctl: mpsc::Sender<ControlMsg>,
) {
    if let Ok(addr) = listener.local_addr() {
        if peers == MetricsPeers::Loopback && !addr.ip().is_loopback() {
            tracing::warn!(%addr, "metrics listener on a non-loopback address answers loopback peers only; pass --metrics-allow-remote to serve the network");
        }
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let snapshot: Arc<Mutex<Snapshot>> = Arc::new(Mutex::new(None));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(error) => {
                // Logged at the first failure of a run of them and at each full back-off.
                if backoff == ACCEPT_BACKOFF_MIN || backoff == ACCEPT_BACKOFF_MAX {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "metrics listener: accept failed");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if !peers.admits(peer.ip()) {
            tracing::debug!(%peer, "metrics connection from a non-loopback peer closed");
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // over the cap: closed at once
        };
        let ctl = ctl.clone();
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let _permit = permit;
            answer(stream, peer, &ctl, &snapshot).await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctl: &mpsc::Sender<ControlMsg>,
    snapshot: &Mutex<Snapshot>,
) {
    // The request itself does not matter (every path gets the metrics); wait for it so a
    // client that sends nothing cannot hold the slot for longer than the timeout.
    let mut request = [0u8; 1024];
    if !matches!(
        tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut request)).await,
        Ok(Ok(n)) if n > 0
    ) {
        return;
    }
    let Some(text) = current_text(ctl, snapshot).await else {
        return;
    };
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
        text.len()
    );
    let written = tokio::time::timeout(ANSWER_TIMEOUT, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(text.as_bytes()).await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!(%peer, "metrics client did not take the answer in time");
    }
}

/// The cached text, rendered anew by the controller loop when older than [`SNAPSHOT_MAX_AGE`].
/// Concurrent scrapes wait for the one rendering in flight. `None` when the daemon is stopping.
async fn current_text(
    ctl: &mpsc::Sender<ControlMsg>,
    snapshot: &Mutex<Snapshot>,
) -> Option<Arc<str>> {
    let mut cached = snapshot.lock().await;
    if let Some((at, text)) = cached.as_ref() {
        if at.elapsed() < SNAPSHOT_MAX_AGE {
            return Some(text.clone());
        }
    }
    let (reply, answer) = oneshot::channel();
    // The listener speaks for the daemon itself: metrics are readable by anyone who may reach
    // the listener (the peer check above decides who that is).
    let peer = Peer {
        uid: 0,
        gid: 0,
        pid: None,
    };
    ctl.send(ControlMsg {
        peer,
        request: Request::Metrics {},
        reply,
    })
    .await
    .ok()?;
    let response = answer.await.ok()?;
    let text: Arc<str> = response
        .result
        .as_ref()
        .and_then(|v| v["text"].as_str())
        .unwrap_or("")
        .into();
    *cached = Some((Instant::now(), text.clone()));
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_are_admitted_by_default() {
        let loopback = MetricsPeers::Loopback;
        assert!(loopback.admits("127.0.0.1".parse().unwrap()));
        assert!(loopback.admits("127.1.2.3".parse().unwrap()));
        assert!(loopback.admits("::1".parse().unwrap()));
        assert!(loopback.admits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!loopback.admits("10.0.0.5".parse().unwrap()));
        assert!(!loopback.admits("::ffff:10.0.0.5".parse().unwrap()));
        assert!(!loopback.admits("fe80::1".parse().unwrap()));
        assert!(MetricsPeers::Any.admits("10.0.0.5".parse().unwrap()));
    }
}
