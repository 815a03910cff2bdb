//! The control socket's client side, shared by `canopy ctl`, `canopy status` and `canopy top`:
//! send one request, wait for the reply, turn a refusal into an error.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use canopy_controller::protocol::{Request, Response};
use canopy_controller::server;

/// Sends one request to the daemon and waits for its reply.
pub(crate) fn call(socket: &Path, request: Request) -> anyhow::Result<Response> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(server::call(socket, &request, Duration::from_secs(10)))
        .with_context(|| format!("talking to the canopy daemon at {}", socket.display()))
}

/// The result of a reply, or its error.
pub(crate) fn ok_result(r: Response) -> anyhow::Result<serde_json::Value> {
    if r.ok {
        Ok(r.result.unwrap_or_default())
    } else {
        bail!("{}", r.error.unwrap_or_else(|| "unknown error".into()))
    }
}
