// SPDX-License-Identifier: GPL-2.0-only
//! The daemon's answers to control requests (authorization first) and the policy reload that
//! SIGHUP, the policy file watcher and the `reload` request share.

use tokio::time::Instant;

use crate::auth::{authorize, Peer};
use crate::backend::Backend;
use crate::controller::{resolve_request_cgroup, Controller};
use crate::policy_port::PlanLoader;
use crate::protocol::{Request, Response};
use crate::sdnotify;

pub(super) fn reload<B: Backend, S: crate::backend::TaskSource>(
    ctl: &mut Controller<B, S>,
    loader: &PlanLoader,
) -> Result<String, String> {
    let _ = sdnotify::notify(&sdnotify::reloading_message());
    let result = match loader() {
        Ok(plan) => {
            let hash = plan.hash();
            ctl.install_plan(plan);
            tracing::info!(policy = %hash, "policy reloaded");
            Ok(hash)
        }
        Err(e) => {
            ctl.record_reload_error(e.clone());
            Err(e)
        }
    };
    let _ = sdnotify::notify("READY=1");
    result
}

/// Carries out one control request for `peer` (authorization included).
pub fn handle_control<B: Backend, S: crate::backend::TaskSource>(
    ctl: &mut Controller<B, S>,
    loader: &PlanLoader,
    cgroup_root: &str,
    peer: Peer,
    request: Request,
) -> Response {
    ctl.stats.counters.api_requests += 1;
    let request = match request {
        Request::State { cgroup, state } => {
            match resolve_request_cgroup(&cgroup, cgroup_root, peer.uid) {
                Ok(c) => Request::State { cgroup: c, state },
                Err(e) => {
                    if e.is_refusal() {
                        ctl.stats.counters.api_refused += 1;
                    } else {
                        ctl.stats.counters.api_errors += 1;
                    }
                    return Response::error(e.to_string());
                }
            }
        }
        other => other,
    };
    let plan = ctl.plan().clone();
    if let Err(refusal) = authorize(&peer, &request, plan.as_ref(), |id| ctl.explain_owner(id)) {
        ctl.stats.counters.api_refused += 1;
        tracing::warn!(uid = peer.uid, pid = ?peer.pid, %refusal, "control request refused");
        return Response::error(refusal.to_string());
    }
    let now = Instant::now();
    let result: Result<serde_json::Value, String> = match request {
        Request::State { cgroup, state } => ctl
            .request_state(&cgroup, &state, now)
            .map(|()| serde_json::json!({"cgroup": cgroup, "state": state}))
            .map_err(|e| e.to_string()),
        Request::Tag { pid, tid, class } => {
            let (id, whole) = match (pid, tid) {
                (Some(p), _) => (p, true),
                (None, Some(t)) => (t, false),
                (None, None) => unreachable!("protocol checks tag targets"),
            };
            ctl.request_tag(id, whole, &class)
                .map(|tids| serde_json::json!({"tagged": tids, "class": class}))
                .map_err(|e| e.to_string())
        }
        Request::Explain { pid } => ctl
            .explain(pid)
            .map(|v| serde_json::to_value(v).unwrap_or_default())
            .map_err(|e| e.to_string()),
        Request::Status {} => Ok(serde_json::to_value(ctl.snapshot(now)).unwrap_or_default()),
        Request::Metrics {} => {
            Ok(serde_json::json!({"text": ctl.snapshot(now).render_prometheus()}))
        }
        Request::Reload {} => reload(ctl, loader).map(|hash| serde_json::json!({"policy": hash})),
    };
    match result {
        Ok(v) => Response::ok(v),
        Err(e) => {
            ctl.stats.counters.api_errors += 1;
            Response::error(e)
        }
    }
}
