// SPDX-License-Identifier: GPL-2.0-only
//! The seam between the controller daemon and the BPF schedulers in scx mode. The daemon asks
//! for an `ScxMaps` (the controller's port for map writes) with its plan; this module answers by
//! starting the scheduler supervisor (root plus child schedulers, from that same Plan: the loader
//! never compiles the policy itself) on a thread of its own, waiting until the root is enabled and its maps are pinned, and then writing the
//! daemon's decisions into those pinned maps. A successful reload hands the supervisor the new
//! plan and waits until its group setup (policy entries, admission, canopy children) follows.
//! `SchedulerThread::stop` unloads everything, which hands every task back to the fair scheduler.
//! When the supervisor ends on its own (the root was ejected: SysRq-S, a watchdog stall, an
//! error exit without the restart action), the thread tells the daemon why through the
//! `ScxEjected` sender it was given, and the daemon switches to fallback mode.
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use canopy_controller::daemon::ScxEjected;
use canopy_controller::daemon::ScxFactory;
use canopy_controller::policy_port::PolicyPlan;
use canopy_controller::policy_port::ScxGroupPolicy;
use canopy_controller::scx::ScxMaps;
use canopy_controller::stats::PreemptingWakeups;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use libbpf_rs::MapHandle;
use tokio::sync::Notify;

use super::bpf_bytes::from_bytes;
use super::bpf_intf;
use super::config::SchedulerConfig;
use super::config_from_plan::config_from_plan;
use super::group_policy_map::daemon_edit;
use super::group_policy_map::daemon_forget_edit;
use super::group_policy_map::is_gone;
use super::group_policy_map::DaemonTerms;
use super::group_policy_map::GroupPolicyBatch;
use super::supervisor::supervise;
use super::supervisor::ReloadRequest;

/// How long the daemon waits, by default, for the root scheduler to load and enable and for the
/// children of the cgroups that exist to attach (`canopy run --scheduler-start-timeout-s`). A
/// real machine needs well under a second; a TCG guest on a busy 2-core host took 30.5 s (root
/// 22 s, two children 4.2 s each, in a suite run beside five builds), so 30 s failed there.
/// In `auto` mode the daemon falls back when the wait ends.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// While it waits, the daemon asks systemd every this often for this much more start time
/// (`EXTEND_TIMEOUT_USEC`), so a slow load is not killed by the unit's start timeout (90 s by
/// default) before the daemon's own wait ends; the daemon sends READY=1 after the wait.
const START_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// How long a reload waits for the supervisor to follow the new plan (children re-attach).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// The plan the supervisor follows; a reload swaps it, then asks the supervisor to reconcile.
type CurrentPlan = Arc<Mutex<Arc<dyn PolicyPlan>>>;

/// The scheduler supervisor's thread, shared between the factory that starts it and the daemon
/// glue that stops it.
#[derive(Clone)]
pub struct SchedulerThread {
    stop: Arc<AtomicBool>,
    /// Wakes the supervisor's wait after a stop or reload request.
    wake: Arc<Notify>,
    handle: Arc<Mutex<Option<JoinHandle<()>>>>,
    start_timeout: Duration,
}

/// The supervisor's configuration for `plan` and the cgroups that exist now.
fn config_for(plan: &dyn PolicyPlan, nr_cpus: u32) -> SchedulerConfig {
    match plan.compiled() {
        Some(plan) => config_from_plan(
            plan,
            canopy_sys::cgroup::CgroupHierarchy::system().mount_point(),
            nr_cpus,
        ),
        None => SchedulerConfig::default(),
    }
}

impl SchedulerThread {
    /// A supervisor thread (not started yet) that waits at most `start_timeout` for the root
    /// scheduler to enable.
    pub fn new(start_timeout: Duration) -> Self {
        Self {
            stop: Arc::default(),
            wake: Arc::default(),
            handle: Arc::default(),
            start_timeout,
        }
    }

    /// A factory for the daemon: when called (only in scx mode) with the daemon's plan, it
    /// starts the supervisor on that plan and returns map writers once the root is enabled.
    pub fn factory(&self) -> ScxFactory {
        let this = self.clone();
        Box::new(move |plan, ejected| this.start(Arc::clone(plan), ejected))
    }

    fn start(
        &self,
        plan: Arc<dyn PolicyPlan>,
        ejected: ScxEjected,
    ) -> Result<Box<dyn ScxMaps>, String> {
        let current: CurrentPlan = Arc::new(Mutex::new(plan));
        let (reload_sender, reloads) = mpsc::channel::<ReloadRequest>();
        let nr_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        // Ok once the root is enabled, or why it could not be loaded.
        let (enabled_sender, enabled) = mpsc::channel::<Result<(), String>>();
        let stop = Arc::clone(&self.stop);
        let wake = Arc::clone(&self.wake);
        let followed = Arc::clone(&current);
        let handle = std::thread::Builder::new()
            .name("canopy-schedulers".into())
            .spawn(move || {
                let refresh = || {
                    let plan = Arc::clone(&followed.lock().expect("current plan"));
                    config_for(plan.as_ref(), nr_cpus)
                };
                let config = refresh();
                let mut ejected = Some(ejected);
                let result = config
                    .validate()
                    .map_err(anyhow::Error::from)
                    .and_then(|()| {
                        supervise(
                            &config,
                            Some(&refresh),
                            Some(&reloads),
                            Some(&wake),
                            &|| stop.load(Ordering::SeqCst),
                            &mut || {
                                let _ = enabled_sender.send(Ok(()));
                            },
                            // Tell the daemon at once; cleaning up the children comes after.
                            &mut |report| {
                                if let Some(ejected) = ejected.take() {
                                    let _ = ejected
                                        .send(format!("the root scheduler exited: {report}"));
                                }
                            },
                        )
                    });
                if let Err(error) = result {
                    tracing::error!("canopy schedulers stopped: {error:#}");
                    // Before the root was enabled, start() is still waiting and reports it;
                    // after, start() has returned (its receiver is gone) and the daemon hears.
                    let why = format!("{error:#}");
                    if let Err(mpsc::SendError(Err(why))) = enabled_sender.send(Err(why)) {
                        if let Some(ejected) = ejected.take() {
                            let _ = ejected.send(why);
                        }
                    }
                }
            })
            .map_err(|e| format!("starting the scheduler thread: {e}"))?;
        *self.handle.lock().expect("scheduler thread handle") = Some(handle);
        if let Err(why) = wait_until_enabled(&enabled, self.start_timeout) {
            self.stop();
            return Err(why);
        }
        PinnedMaps::open(current, reload_sender, Arc::clone(&self.wake))
            .map(|maps| Box::new(maps) as Box<dyn ScxMaps>)
    }

    /// Unloads the schedulers (if running) and waits for the supervisor to finish.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        if let Some(handle) = self.handle.lock().expect("scheduler thread handle").take() {
            let _ = handle.join();
        }
    }
}

/// Waits for the supervisor's word that the root is enabled, at most `timeout`, asking systemd
/// for more start time every [`START_PROGRESS_INTERVAL`] meanwhile.
fn wait_until_enabled(
    enabled: &mpsc::Receiver<Result<(), String>>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match enabled.recv_timeout(left.min(START_PROGRESS_INTERVAL)) {
            Ok(result) => return result,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the root scheduler failed to load (see the log above)".into());
            }
            Err(mpsc::RecvTimeoutError::Timeout) if left > START_PROGRESS_INTERVAL => {
                let more_us = (START_PROGRESS_INTERVAL * 3).as_micros();
                let _ = canopy_controller::sdnotify::notify(&format!(
                    "EXTEND_TIMEOUT_USEC={more_us}\nSTATUS=loading the schedulers"
                ));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "the root scheduler did not enable within {timeout:?} \
                     (--scheduler-start-timeout-s)"
                ));
            }
        }
    }
}

/// The root's pinned maps, opened by path so the daemon's thread needs no skeleton, plus the
/// way to hand the supervisor a reloaded plan.
struct PinnedMaps {
    task_classes: MapHandle,
    group_policy: MapHandle,
    group_policy_version: MapHandle,
    stats: MapHandle,
    current: CurrentPlan,
    reloads: mpsc::Sender<ReloadRequest>,
    /// Wakes the supervisor after each reload request.
    wake: Arc<Notify>,
}

impl PinnedMaps {
    fn open(
        current: CurrentPlan,
        reloads: mpsc::Sender<ReloadRequest>,
        wake: Arc<Notify>,
    ) -> Result<Self, String> {
        let open = |name: &str| {
            MapHandle::from_pinned_path(canopy_sys::sched_ext::pinned_map(name)).map_err(|e| {
                format!(
                    "opening pinned map {}: {e}",
                    canopy_sys::sched_ext::pinned_map(name).display()
                )
            })
        };
        Ok(PinnedMaps {
            task_classes: open("task_classes")?,
            group_policy: open("group_policy")?,
            group_policy_version: open("group_policy_version")?,
            stats: open("stats")?,
            current,
            reloads,
            wake,
        })
    }
}

/// A map error for the controller. A `group_policy` write for a cgroup that is gone keeps its
/// kind (NotFound): the controller takes it for the cgroup's removal, not a failure.
fn io_error(error: libbpf_rs::Error) -> std::io::Error {
    let kind = if is_gone(&error) {
        std::io::ErrorKind::NotFound
    } else {
        std::io::ErrorKind::Other
    };
    std::io::Error::new(kind, error.to_string())
}

impl ScxMaps for PinnedMaps {
    fn set_task_class(&mut self, tid: u32, scx_class: u32) -> std::io::Result<()> {
        self.task_classes
            .update(&tid.to_ne_bytes(), &scx_class.to_ne_bytes(), MapFlags::ANY)
            .map_err(io_error)
    }

    fn clear_task(&mut self, tid: u32) {
        // Absent already (the task never had an entry, or exited) is fine.
        let _ = self.task_classes.delete(&tid.to_ne_bytes());
    }

    fn set_group(&mut self, cgroup_id: u64, policy: &ScxGroupPolicy) -> std::io::Result<()> {
        // The supervisor owns admission (which sub-schedulers a group admits); the daemon owns
        // the share terms of the group's current state. Keep the one, replace the other. The
        // entry exists from the cgroup's mkdir to its rmdir (canopy_root makes it): a cgroup
        // removed before this write gives NotFound, which the controller counts as gone.
        let terms = DaemonTerms {
            weight: policy.weight.unwrap_or(0),
            guarantee_pct: policy.guarantee_pct,
            cap_pct: policy.cap_pct,
            // the BPF clamp at enqueue (canopy.bpf.h task_class): 0 = no limit, else id + 1
            ceiling_plus_one: policy.ceiling.map_or(0, |class| class.0 as u32 + 1),
            floor_plus_one: policy.floor.map_or(0, |class| class.0 as u32 + 1),
        };
        let mut batch = GroupPolicyBatch::new(&self.group_policy, &self.group_policy_version);
        batch
            .edit(cgroup_id, |current| daemon_edit(current, &terms))
            .map_err(io_error)?;
        batch.finish().map_err(io_error)
    }

    fn clear_group(&mut self, cgroup_id: u64) {
        // The daemon forgets a group's cgroup when it is removed (or no longer matches after a
        // reload): the entry is disowned (a removed cgroup's entry went at its rmdir, so
        // ENOENT here is fine). An entry that admits sub-schedulers belongs to the
        // supervisor's configured group (it disowns it with its group) and stays.
        let mut batch = GroupPolicyBatch::new(&self.group_policy, &self.group_policy_version);
        let _ = batch.edit(cgroup_id, daemon_forget_edit);
        let _ = batch.finish();
    }

    fn plan_changed(&mut self, plan: &Arc<dyn PolicyPlan>) -> Result<(), String> {
        *self.current.lock().expect("current plan") = Arc::clone(plan);
        let (done, answer) = mpsc::channel();
        self.reloads
            .send(ReloadRequest { done })
            .map_err(|_| "the scheduler supervisor is not running".to_string())?;
        self.wake.notify_one();
        answer.recv_timeout(RELOAD_TIMEOUT).map_err(|_| {
            format!("the schedulers did not follow the new policy within {RELOAD_TIMEOUT:?}")
        })?
    }

    fn refused_attaches(&self) -> u64 {
        self.stat(bpf_intf::CANOPY_STAT_REFUSED)
    }

    fn preempting_wakeups(&self) -> Option<PreemptingWakeups> {
        use bpf_intf::*;
        let sum = |stats: &[u32]| stats.iter().map(|&index| self.stat(index)).sum();
        Some(PreemptingWakeups {
            total: sum(&[
                CANOPY_STAT_WAKE_IDLE,
                CANOPY_STAT_WAKE_PREEMPT_LOCAL,
                CANOPY_STAT_WAKE_PREEMPT_REMOTE,
                CANOPY_STAT_WAKE_QUEUED,
            ]),
            late: sum(&[
                CANOPY_STAT_WAKE_IDLE_SLOW,
                CANOPY_STAT_WAKE_PREEMPT_LOCAL_SLOW,
                CANOPY_STAT_WAKE_PREEMPT_REMOTE_SLOW,
                CANOPY_STAT_WAKE_QUEUED_SLOW,
            ]),
        })
    }
}

impl PinnedMaps {
    /// One of the root's counters, summed over CPUs (0 when unreadable).
    fn stat(&self, index: u32) -> u64 {
        self.stats
            .lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .map(|per_cpu| per_cpu.iter().map(|b| from_bytes::<u64>(b)).sum())
            .unwrap_or(0)
    }
}
