// SPDX-License-Identifier: GPL-2.0-only
//! Loading, configuring, attaching and detaching canopy's root scheduler (`canopy_root`).
//!
//! Order matters and is the whole point of this module: open the skeleton; write the kernel
//! constants, the root's own weight and the ops data (`hotplug_seq`, `exit_dump_len`) before
//! load; load; associate non-struct_ops programs with the ops map; attach the programs that
//! make and delete every cgroup's `group_policy` entry at mkdir and rmdir, then give the
//! cgroups that already exist their entries (`seed_unowned_entries`: userspace only rewrites
//! existing entries, bpf/group_lifecycle.bpf.h); push the policy maps
//! (ops.init reads them; the class table and default class are rewritten on every reload); pin
//! the maps `canopy status` and child schedulers share; attach; then read the exit record at
//! once, because the kernel can report a successful attach for a scheduler that has already
//! died. Dropping the value unregisters the scheduler (every task
//! returns to the fair scheduler) and removes the pins.
use std::fs;
use std::path::PathBuf;

use libbpf_rs::skel::OpenSkel;
use libbpf_rs::skel::Skel;
use libbpf_rs::skel::SkelBuilder;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;

use super::attach::load_err;
use super::attach::object_storage;
use super::attach::KernelConsts;
use super::attach::Place;
use super::attach::Registered;
use super::bpf_bytes::as_bytes;
use super::bpf_intf;
use super::config::SchedulerConfig;
use super::exit::ExitReport;
use super::group_policy_map;
use super::group_policy_map::supervisor_edit;
use super::group_policy_map::GroupPolicyBatch;
use super::kernel;
use super::load_stats::LoadProbe;
use super::skel::root::CanopyRootSkel;
use super::skel::root::CanopyRootSkelBuilder;
use super::SchedulerError;

/// Where the root pins the maps other processes read or share.
pub use canopy_sys::sched_ext::PIN_DIR;
/// Maps pinned under PIN_DIR (by their names in canopy_root's object; the one list).
pub const PINNED_MAPS: &[&str] = &[
    "members",
    "stats",
    "class_params",
    "task_classes",
    "group_policy",
    "group_policy_version",
    "policy_defaults",
    "child_restarts",
    "admission_events",
    "move_stamps",
    "move_log",
    "child_wake_requests",
];

pub struct RootScheduler {
    // Field order is drop order: unregister first, then remove the pins.
    scheduler: Registered<CanopyRootSkel<'static>>,
    /// The fentry program stamping cgroup moves (`move_log`); None when the kernel refused it.
    _move_stamps: Option<libbpf_rs::Link>,
    /// The tracepoint programs making and deleting `group_policy` entries at mkdir and rmdir.
    _group_lifecycle: [libbpf_rs::Link; 2],
    _pins: Pins,
}

/// Pinned map paths, removed when dropped (also when a load fails after pinning).
struct Pins(Vec<PathBuf>);

impl Drop for Pins {
    fn drop(&mut self) {
        for path in self.0.drain(..) {
            let _ = fs::remove_file(path);
        }
    }
}

impl RootScheduler {
    /// Loads and attaches the root scheduler with `config` pushed into its maps.
    pub fn load(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        let mut probe = LoadProbe::start("canopy_root");
        config.validate()?;
        kernel::check_support()?;
        let kernel_consts = KernelConsts::read()?;
        remove_stale_pins();
        probe.phase("kernel-consts");
        let mut open = CanopyRootSkelBuilder::default()
            .open(object_storage())
            .map_err(load_err("opening canopy_root"))?;
        probe.phase("open");
        probe.request_logs(open.open_object_mut());
        {
            let rodata = open
                .maps
                .rodata_data
                .as_deref_mut()
                .expect("canopy_root has rodata");
            rodata.canopy_kconst.copy_from_slice(&kernel_consts.kconsts);
            rodata.own_weight = config.own_weight.max(1);
        }
        {
            let ops = open.struct_ops.canopy_root_ops_mut();
            ops.hotplug_seq = canopy_sys::sched_ext::hotplug_seq();
            ops.exit_dump_len = bpf_intf::CANOPY_EXIT_DUMP_LEN;
        }
        let mut skel = open
            .load()
            .map_err(load_err("loading canopy_root (verifier)"))?;
        probe.phase("load");
        kernel::associate_programs(skel.object(), "canopy_root_ops")?;
        let group_lifecycle = [
            skel.progs
                .canopy_root_cgroup_made
                .attach()
                .map_err(load_err("attaching canopy_root (tp_btf/cgroup_mkdir)"))?,
            skel.progs
                .canopy_root_cgroup_removed
                .attach()
                .map_err(load_err("attaching canopy_root (tp_btf/cgroup_rmdir)"))?,
        ];
        seed_unowned_entries(&skel);
        push_config(&skel, config)?;
        let pins = pin_maps(&mut skel)?;
        // Only a measurement (move_log, the move stats): the schedulers clamp moved tasks
        // without it, so a kernel that refuses the fentry costs the log, not the scheduler.
        let move_stamps = match skel.progs.canopy_root_note_move.attach() {
            Ok(link) => Some(link),
            Err(e) => {
                eprintln!("canopy: cgroup moves will not be logged (fentry/sched_move_task: {e})");
                None
            }
        };
        probe.phase("prepare");
        let scheduler = Registered::attach(skel, kernel_consts.enums, "canopy_root", Place::Root)?;
        probe.phase("attach");
        Ok(RootScheduler {
            scheduler,
            _move_stamps: move_stamps,
            _group_lifecycle: group_lifecycle,
            _pins: pins,
        })
    }

    /// Writes the class table (weight, slice, preemption per class) and the default class of
    /// untagged tasks; children share both maps, so a reload moves every scheduler at once.
    pub fn write_classes(&self, config: &SchedulerConfig) -> Result<(), SchedulerError> {
        write_classes(self.scheduler.skel(), config)
    }

    /// A batch of writes to `group_policy` ending in one `group_policy_version` bump (see
    /// `group_policy_map`: the daemon's thread writes the same map, under the same lock).
    pub fn group_policy_batch(&self) -> RootGroupPolicyBatch<'_> {
        let maps = &self.scheduler.skel().maps;
        GroupPolicyBatch::new(&maps.group_policy, &maps.group_policy_version)
    }

    /// Records what the supervisor did about the canopy children of one cgroup that asked for
    /// a restart (`child_restarts`, shown by `canopy status`).
    pub fn record_child_restarts(
        &self,
        cgroup_id: u64,
        record: &bpf_intf::canopy_child_restarts,
    ) -> Result<(), SchedulerError> {
        self.scheduler
            .skel()
            .maps
            .child_restarts
            .update(&cgroup_id.to_ne_bytes(), as_bytes(record), MapFlags::ANY)
            .map_err(|e| SchedulerError::Load(format!("writing child_restarts: {e}")))
    }

    /// Tags a task (thread id) with a class. For the controller (next issue); the VM tests tag
    /// through the pinned map with `canopy scheduler tag`.
    #[allow(dead_code)]
    pub fn set_task_class(&self, tid: u32, class: u32) -> Result<(), SchedulerError> {
        self.scheduler
            .skel()
            .maps
            .task_classes
            .update(&tid.to_ne_bytes(), &class.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| SchedulerError::Load(format!("writing task_classes: {e}")))
    }

    /// Why the scheduler stopped, or None while it runs.
    pub fn exit_report(&self) -> Option<ExitReport> {
        self.scheduler.exit_report()
    }

    /// Unregisters the scheduler and returns the kernel's account of the exit.
    pub fn detach(self) -> Option<ExitReport> {
        self.scheduler.detach()
    }
}

/// The class table of `config` into `class_params` (index = class id), then its default class
/// into `policy_defaults` (after the table, so the id it names is already described).
fn write_classes(
    skel: &CanopyRootSkel<'_>,
    config: &SchedulerConfig,
) -> Result<(), SchedulerError> {
    let defaults = config.policy_defaults()?;
    for (id, class) in config.class_table()?.iter().enumerate() {
        let params = class.to_params();
        skel.maps
            .class_params
            .update(&(id as u32).to_ne_bytes(), as_bytes(&params), MapFlags::ANY)
            .map_err(|e| SchedulerError::Load(format!("writing class_params: {e}")))?;
    }
    skel.maps
        .policy_defaults
        .update(&0u32.to_ne_bytes(), as_bytes(&defaults), MapFlags::ANY)
        .map_err(|e| SchedulerError::Load(format!("writing policy_defaults: {e}")))
}

/// Gives every cgroup2 cgroup that exists now its unowned `group_policy` entry. Runs once per
/// load, after the mkdir and rmdir programs are attached (they handle every cgroup made or
/// removed from then on), and each entry is checked against its cgroup after it is made
/// (`seed_unowned`), so a cgroup removed during the walk keeps no entry. Cost: one stat and
/// one map update per cgroup (a desktop's few hundred: milliseconds). A failed write (the map
/// full at CANOPY_MAX_GROUPS) ends the walk with a message and the load goes on: the cgroups
/// left without an entry cannot be owned by a group (their writes fail as gone), the rest work.
fn seed_unowned_entries(skel: &CanopyRootSkel<'_>) {
    let top = canopy_sys::cgroup::CgroupHierarchy::system()
        .mount_point()
        .to_path_buf();
    let below = canopy_sys::cgroup::Cgroup::from_dir(&top).descendants(
        bpf_intf::CANOPY_MAX_CGROUP_DEPTH as usize * 4,
        bpf_intf::CANOPY_MAX_GROUPS as usize,
    );
    let paths = std::iter::once(top.clone()).chain(below.iter().map(|relative| top.join(relative)));
    for path in paths {
        // Gone before it was reached: the walk listed a cgroup removed since.
        let Ok(cgroup_id) = kernel::cgroup_id(&path) else {
            continue;
        };
        let still_there = || kernel::cgroup_id(&path).ok() == Some(cgroup_id);
        if let Err(e) =
            group_policy_map::seed_unowned(&skel.maps.group_policy, cgroup_id, still_there)
        {
            eprintln!(
                "canopy: giving {} (cgroup id {cgroup_id}) its group_policy entry: {e}; \
                 it and the cgroups after it in the walk cannot be owned by a policy group",
                path.display()
            );
            return;
        }
    }
}

/// Pushes the class table and the groups of `config` into the maps ops.init reads.
fn push_config(skel: &CanopyRootSkel<'_>, config: &SchedulerConfig) -> Result<(), SchedulerError> {
    write_classes(skel, config)?;
    let mut batch = GroupPolicyBatch::new(&skel.maps.group_policy, &skel.maps.group_policy_version);
    for group in &config.groups {
        let path = kernel::cgroup_path(&group.cgroup);
        let cgid = match kernel::cgroup_id(&path) {
            Ok(id) => id,
            Err(e) => {
                eprintln!(
                    "canopy: policy group {} skipped for now: {e}",
                    path.display()
                );
                continue;
            }
        };
        let wanted = group.to_policy();
        match batch.edit(cgid, |current| supervisor_edit(current, &wanted)) {
            Ok(()) => {}
            Err(e) if group_policy_map::is_gone(&e) => {
                eprintln!(
                    "canopy: policy group {} skipped for now: removed while loading",
                    path.display()
                );
            }
            Err(e) => return Err(group_policy_error(e)),
        }
    }
    batch.finish().map_err(group_policy_error)
}

/// The supervisor's writes to the root's `group_policy` map (through its skeleton).
pub type RootGroupPolicyBatch<'skel> =
    GroupPolicyBatch<'skel, libbpf_rs::MapMut<'static>, libbpf_rs::MapMut<'static>>;

/// A `group_policy` write or version bump that failed, as the supervisor reports it.
pub fn group_policy_error(error: libbpf_rs::Error) -> SchedulerError {
    SchedulerError::Load(format!(
        "writing group_policy or group_policy_version: {error}"
    ))
}

/// Pins the maps other processes read or share (PINNED_MAPS) under PIN_DIR.
fn pin_maps(skel: &mut CanopyRootSkel<'_>) -> Result<Pins, SchedulerError> {
    fs::create_dir_all(PIN_DIR)
        .map_err(|e| SchedulerError::Load(format!("creating {PIN_DIR}: {e}")))?;
    let mut pins = Pins(Vec::new());
    for mut map in skel.object_mut().maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        if !PINNED_MAPS.contains(&name.as_str()) {
            continue;
        }
        let path = canopy_sys::sched_ext::pinned_map(&name);
        map.pin(&path)
            .map_err(|e| SchedulerError::Load(format!("pinning {}: {e}", path.display())))?;
        pins.0.push(path);
    }
    if pins.0.len() != PINNED_MAPS.len() {
        return Err(SchedulerError::Load(format!(
            "canopy_root has only {} of the maps it must pin ({PINNED_MAPS:?})",
            pins.0.len()
        )));
    }
    Ok(pins)
}

fn remove_stale_pins() {
    for name in PINNED_MAPS {
        let _ = fs::remove_file(canopy_sys::sched_ext::pinned_map(name));
    }
}
