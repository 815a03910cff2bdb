// SPDX-License-Identifier: GPL-2.0-only
//! Attaching canopy's child scheduler (`canopy_child`) to one cgroup, and detaching it.
//!
//! The child's `sub_cgroup_id` is the inode of the cgroup directory, written into the ops data
//! before load. It shares the root's class tables (the pinned `class_params`, `task_classes`,
//! `policy_defaults` and `group_policy`, whose state limits clamp classes at enqueue) so the
//! controller tags a task once whichever scheduler owns it, and a reload that rewrites the class
//! table or the default class reaches every child without re-attaching it; and the root's
//! `child_wake_requests`, through which a child asks the root for a CPU for a waking
//! USER_INTERACTIVE task (bpf/child_wake.bpf.h). As with
//! the root, the exit record is checked right after attaching (`attach.rs`): the parent may
//! have refused the child (admission) and the kernel still returns a link.
use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;

use libbpf_rs::skel::OpenSkel;
use libbpf_rs::skel::Skel;
use libbpf_rs::skel::SkelBuilder;

use super::attach::load_err;
use super::attach::object_storage;
use super::attach::KernelConsts;
use super::attach::Place;
use super::attach::Registered;
use super::bpf_intf;
use super::kernel;
use super::load_stats::LoadProbe;
use super::skel::child::CanopyChildSkel;
use super::skel::child::CanopyChildSkelBuilder;
use super::SchedulerError;

/// canopy_child, registered on one cgroup.
pub type ChildScheduler = Registered<CanopyChildSkel<'static>>;

/// Dispatches after which a child loaded under [`ask_next_loads_for_a_restart`] asks for a
/// restart.
const TEST_RESTART_AFTER_DISPATCHES: u64 = 50;

/// How many of the next child loads ask for a restart (test hook, see below).
static LOADS_ASKING_FOR_A_RESTART: AtomicU32 = AtomicU32::new(0);

/// Test hook (`canopy scheduler run --child-restart-loads N`): the next `loads` canopy_child
/// loads in this process unregister themselves after a few dispatches with the kernel's restart
/// action in their exit code, so the VM tests can drive the supervisor's re-attach path.
pub fn ask_next_loads_for_a_restart(loads: u32) {
    LOADS_ASKING_FOR_A_RESTART.store(loads, Ordering::SeqCst);
}

/// Takes one load from the test hook's count: whether this load should ask for a restart.
fn this_load_asks_for_a_restart() -> bool {
    // A compare-exchange loop rather than `fetch_update`, which Rust 1.99 deprecates in favour
    // of `try_update` (not in 1.95, which CI builds with): the same code builds warning-free on both.
    let mut left = LOADS_ASKING_FOR_A_RESTART.load(Ordering::SeqCst);
    while let Some(fewer) = left.checked_sub(1) {
        match LOADS_ASKING_FOR_A_RESTART.compare_exchange(
            left,
            fewer,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => return true,
            Err(now) => left = now,
        }
    }
    false
}

/// Options for a child attach.
#[derive(Debug, Clone, Default)]
pub struct ChildOptions {
    /// Register under this ops name instead of `canopy_child` (tests of admission use it).
    pub ops_name: Option<String>,
}

/// Attaches a canopy child scheduler to `cgroup` (relative to /sys/fs/cgroup or absolute).
pub fn attach_child(
    cgroup: &Path,
    options: &ChildOptions,
) -> Result<ChildScheduler, SchedulerError> {
    let mut probe = LoadProbe::start("canopy_child");
    let path = kernel::cgroup_path(cgroup);
    let cgroup_id = kernel::cgroup_id(&path)?;
    let kernel_consts = KernelConsts::read()?;
    probe.phase("kernel-consts");
    let mut open = CanopyChildSkelBuilder::default()
        .open(object_storage())
        .map_err(load_err("opening canopy_child"))?;
    probe.phase("open");
    {
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .expect("canopy_child has rodata");
        rodata.canopy_kconst.copy_from_slice(&kernel_consts.kconsts);
        rodata.attach_cgroup_id = cgroup_id;
        if this_load_asks_for_a_restart() {
            rodata.restart_after_dispatches = TEST_RESTART_AFTER_DISPATCHES;
        }
    }
    {
        let ops = open.struct_ops.canopy_child_ops_mut();
        ops.sub_cgroup_id = cgroup_id;
        ops.hotplug_seq = canopy_sys::sched_ext::hotplug_seq();
        ops.exit_dump_len = bpf_intf::CANOPY_EXIT_DUMP_LEN;
        if let Some(name) = &options.ops_name {
            ops.name = [0; 128];
            for (dst, src) in ops.name.iter_mut().zip(name.bytes().take(127)) {
                *dst = src as std::os::raw::c_char;
            }
        }
    }
    for (name, map) in [
        ("class_params", &mut open.maps.class_params),
        ("task_classes", &mut open.maps.task_classes),
        ("group_policy", &mut open.maps.group_policy),
        ("policy_defaults", &mut open.maps.policy_defaults),
        ("move_stamps", &mut open.maps.move_stamps),
        ("move_log", &mut open.maps.move_log),
        ("child_wake_requests", &mut open.maps.child_wake_requests),
        ("members", &mut open.maps.members),
    ] {
        let pinned = canopy_sys::sched_ext::pinned_map(name);
        if pinned.exists() {
            map.reuse_pinned_map(&pinned)
                .map_err(|e| SchedulerError::Load(format!("sharing {}: {e}", pinned.display())))?;
        }
    }
    probe.phase("share-pins");
    probe.request_logs(open.open_object_mut());
    let skel = open
        .load()
        .map_err(load_err("loading canopy_child (verifier)"))?;
    probe.phase("load");
    kernel::associate_programs(skel.object(), "canopy_child_ops")?;
    let child = Registered::attach(
        skel,
        kernel_consts.enums,
        "canopy_child",
        Place::Cgroup {
            path,
            id: cgroup_id,
        },
    )?;
    probe.phase("attach");
    Ok(child)
}
