//! Authorization of control requests by the caller's SO_PEERCRED uid. Root may do everything.
//! Anyone may read `status` and `metrics`; `explain` is limited to threads the caller owns at
//! the moment of the request ([`TaskOwner`], read from /proc by the caller of [`authorize`]). Another
//! user may only change the state of a cgroup inside their own `user@UID.service`, and only to
//! a state the policy marks user-settable. `tag` and `reload` are root only. Pure: no I/O.

use crate::policy_port::PolicyPlan;
use crate::protocol::Request;

/// The caller, from SO_PEERCRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Process id, when the kernel gave one.
    pub pid: Option<i32>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Only root may do this.
    #[error("permission denied: {what} needs root")]
    RootOnly {
        /// The command.
        what: &'static str,
    },
    /// The cgroup is not inside the caller's own user manager.
    #[error("permission denied: uid {uid} may only change cgroups under user.slice/user-{uid}.slice/user@{uid}.service/, not {cgroup:?}")]
    NotYourCgroup {
        /// Caller.
        uid: u32,
        /// Target.
        cgroup: String,
    },
    /// The state is not user-settable in the policy.
    #[error("permission denied: state {state:?} of cgroup {cgroup:?} is not user-settable in the policy")]
    StateNotUserSettable {
        /// Target.
        cgroup: String,
        /// Requested state.
        state: String,
    },
    /// `explain` on somebody else's process.
    #[error("permission denied: process {pid} belongs to another user")]
    NotYourProcess {
        /// Target.
        pid: u32,
    },
}

/// Who owns the threads an `explain` would show, read from each thread's `/proc/TID/status`
/// when the request arrives (not the uid recorded at fork or exec: a `setresuid` changes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOwner {
    /// The daemon tracks no such task (`explain` answers "no task" to anyone).
    Unknown,
    /// Every one of those threads runs as this uid alone (real, effective, saved, fs).
    Uid(u32),
    /// They run as different uids, or one holds two identities (a setuid program).
    Several,
}

/// Whether `cgroup` (normalized, relative to the cgroup2 root) lies strictly inside the user
/// manager of `uid`.
pub fn inside_user_manager(cgroup: &str, uid: u32) -> bool {
    let prefix = format!("user.slice/user-{uid}.slice/user@{uid}.service/");
    cgroup.starts_with(&prefix) && cgroup.len() > prefix.len()
}

/// Decides whether `peer` may make `request`. `cgroup` in a `State` request must already be
/// normalized; `explain_owner` tells who owns the threads an `explain` of an id would show
/// (called only for a non-root `explain`).
pub fn authorize(
    peer: &Peer,
    request: &Request,
    plan: &dyn PolicyPlan,
    explain_owner: impl FnOnce(u32) -> TaskOwner,
) -> Result<(), Refusal> {
    if peer.uid == 0 {
        return Ok(());
    }
    match request {
        Request::Status {} | Request::Metrics {} => Ok(()),
        Request::Explain { pid } => match explain_owner(*pid) {
            TaskOwner::Uid(owner) if owner == peer.uid => Ok(()),
            // Unknown pids answer "no task" either way; don't reveal more.
            TaskOwner::Unknown => Ok(()),
            TaskOwner::Uid(_) | TaskOwner::Several => Err(Refusal::NotYourProcess { pid: *pid }),
        },
        Request::Tag { .. } => Err(Refusal::RootOnly { what: "tag" }),
        Request::Reload {} => Err(Refusal::RootOnly { what: "reload" }),
        Request::State { cgroup, state } => {
            if !inside_user_manager(cgroup, peer.uid) {
                return Err(Refusal::NotYourCgroup {
                    uid: peer.uid,
                    cgroup: cgroup.clone(),
                });
            }
            let settable = plan
                .group_for_cgroup(cgroup)
                .and_then(|g| plan.state_info(g, state))
                .is_some_and(|s| s.user_settable);
            if settable {
                Ok(())
            } else {
                Err(Refusal::StateNotUserSettable {
                    cgroup: cgroup.clone(),
                    state: state.clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestPlan;

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: Some(1),
        }
    }

    fn state(cgroup: &str, state: &str) -> Request {
        Request::State {
            cgroup: cgroup.into(),
            state: state.into(),
        }
    }

    const MINE: &str = "user.slice/user-1000.slice/user@1000.service/app.slice/app-x.scope";
    const THEIRS: &str = "user.slice/user-1001.slice/user@1001.service/app.slice/app-x.scope";

    #[test]
    fn root_may_do_everything() {
        let plan = TestPlan::desktop();
        for r in [
            state(THEIRS, "minimized"),
            Request::Reload {},
            Request::Tag {
                pid: Some(1),
                tid: None,
                class: "BACKGROUND".into(),
            },
        ] {
            assert_eq!(
                authorize(&peer(0), &r, &plan, |_| TaskOwner::Uid(5)),
                Ok(())
            );
        }
    }

    #[test]
    fn users_change_only_their_own_cgroups_to_user_settable_states() {
        let plan = TestPlan::desktop();
        assert_eq!(
            authorize(&peer(1000), &state(MINE, "minimized"), &plan, |_| {
                TaskOwner::Unknown
            }),
            Ok(())
        );
        assert!(matches!(
            authorize(&peer(1000), &state(THEIRS, "minimized"), &plan, |_| {
                TaskOwner::Unknown
            }),
            Err(Refusal::NotYourCgroup { .. })
        ));
        assert!(matches!(
            authorize(&peer(1000), &state(MINE, "locked"), &plan, |_| {
                TaskOwner::Unknown
            }),
            Err(Refusal::StateNotUserSettable { .. })
        ));
        assert!(matches!(
            authorize(&peer(1000), &state(MINE, "nonexistent"), &plan, |_| {
                TaskOwner::Unknown
            }),
            Err(Refusal::StateNotUserSettable { .. })
        ));
        // The user manager itself and look-alike prefixes are not "inside".
        assert!(!inside_user_manager(
            "user.slice/user-1000.slice/user@1000.service/",
            1000
        ));
        assert!(!inside_user_manager(
            "user.slice/user-1000.slice/user@1000.servicex/a",
            1000
        ));
        assert!(!inside_user_manager(
            "user.slice/user-10000.slice/user@10000.service/a",
            1000
        ));
    }

    #[test]
    fn users_read_status_and_explain_their_own_processes_only() {
        let plan = TestPlan::desktop();
        assert_eq!(
            authorize(&peer(1000), &Request::Status {}, &plan, |_| {
                TaskOwner::Unknown
            }),
            Ok(())
        );
        assert_eq!(
            authorize(&peer(1000), &Request::Metrics {}, &plan, |_| {
                TaskOwner::Unknown
            }),
            Ok(())
        );
        assert_eq!(
            authorize(&peer(1000), &Request::Explain { pid: 7 }, &plan, |_| {
                TaskOwner::Uid(1000)
            }),
            Ok(())
        );
        assert!(
            authorize(&peer(1000), &Request::Explain { pid: 7 }, &plan, |_| {
                TaskOwner::Uid(0)
            })
            .is_err()
        );
        // One of its threads holds another identity (a setuid program, a thread that
        // called setresuid alone).
        assert!(
            authorize(&peer(1000), &Request::Explain { pid: 7 }, &plan, |_| {
                TaskOwner::Several
            })
            .is_err()
        );
        assert!(authorize(&peer(1000), &Request::Reload {}, &plan, |_| {
            TaskOwner::Unknown
        })
        .is_err());
        assert!(authorize(
            &peer(1000),
            &Request::Tag {
                pid: None,
                tid: Some(1),
                class: "X".into()
            },
            &plan,
            |_| TaskOwner::Unknown
        )
        .is_err());
    }
}
