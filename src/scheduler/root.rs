// SPDX-License-Identifier: GPL-2.0-only
//! Loading, configuring, attaching and detaching canopy's root scheduler (`canopy_root`).
//!
//! Order matters and is the whole point of this module: open the skeleton; write the kernel
//! constants, the default class and the ops data (`hotplug_seq`, `exit_dump_len`) before load;
//! load; associate non-struct_ops programs with the ops map; push the policy maps (ops.init
//! reads them); pin the maps `canopy status` and child schedulers share; attach; then read
//! the exit record at once, because the kernel can report a successful attach for a
//! scheduler that has already died. Dropping the value unregisters the scheduler (every task
//! returns to the fair scheduler) and removes the pins.
use std::collections::HashMap;
use std::fs;
use std::mem::MaybeUninit;
use std::path::Path;
use std::path::PathBuf;

use libbpf_rs::skel::OpenSkel;
use libbpf_rs::skel::Skel;
use libbpf_rs::skel::SkelBuilder;
use libbpf_rs::Link;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;

use super::bpf_intf;
use super::config::SchedulerConfig;
use super::exit::ExitReport;
use super::kernel;
use super::skel::root::CanopyRootSkel;
use super::skel::root::CanopyRootSkelBuilder;
use super::SchedulerError;

/// Where the root pins the maps other processes read or share.
pub const PIN_DIR: &str = "/sys/fs/bpf/canopy";
/// Maps pinned under PIN_DIR.
pub const PINNED_MAPS: &[&str] = &[
    "members",
    "stats",
    "class_params",
    "task_classes",
    "group_policy",
    "admission_events",
];

pub struct RootScheduler {
    skel: CanopyRootSkel<'static>,
    link: Option<Link>,
    enums: HashMap<String, u64>,
    pinned: Vec<PathBuf>,
}

fn load_err(what: &'static str) -> impl Fn(libbpf_rs::Error) -> SchedulerError {
    move |e| SchedulerError::Load(format!("{what}: {e:#}"))
}

/// The exit record of a skeleton's `.data.exit_info` map, as intf.h's type.
pub(super) fn exit_record<T>(data: &T) -> &bpf_intf::canopy_exit_info {
    assert_eq!(
        std::mem::size_of::<T>(),
        std::mem::size_of::<bpf_intf::canopy_exit_info>()
    );
    // SAFETY: the skeleton's datasec struct holds exactly one `struct canopy_exit_info`
    // (same C declaration as intf.h's, size checked above).
    unsafe { &*(data as *const T as *const bpf_intf::canopy_exit_info) }
}

impl RootScheduler {
    /// Loads and attaches the root scheduler with `config` pushed into its maps.
    pub fn load(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        config.validate()?;
        kernel::check_support()?;
        let enums = kernel::kernel_enums()?;
        let kconsts = kernel::resolve_kconsts(&enums)?;
        remove_stale_pins();

        // One leaked OpenObject per load: the skeleton borrows it for its whole life.
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = CanopyRootSkelBuilder::default()
            .open(storage)
            .map_err(load_err("opening canopy_root"))?;
        {
            let rodata = open
                .maps
                .rodata_data
                .as_deref_mut()
                .expect("canopy_root has rodata");
            rodata.canopy_kconst.copy_from_slice(&kconsts);
            rodata.default_class = config.default_class_id()?;
            rodata.own_weight = config.own_weight.max(1);
        }
        {
            let ops = open.struct_ops.canopy_root_ops_mut();
            ops.hotplug_seq = kernel::hotplug_seq();
            ops.exit_dump_len = bpf_intf::CANOPY_EXIT_DUMP_LEN;
        }
        let skel = open
            .load()
            .map_err(load_err("loading canopy_root (verifier)"))?;
        kernel::associate_programs(skel.object(), "canopy_root_ops")?;

        let mut root = RootScheduler {
            skel,
            link: None,
            enums,
            pinned: Vec::new(),
        };
        root.push_config(config)?;
        root.pin_maps()?;

        let link = root
            .skel
            .maps
            .canopy_root_ops
            .attach_struct_ops()
            .map_err(|e| SchedulerError::Attach(format!("attaching canopy_root: {e:#}")))?;
        root.link = Some(link);
        if let Some(report) = root.exit_report() {
            return Err(SchedulerError::Exited(format!(
                "canopy_root died while enabling: {report}"
            )));
        }
        Ok(root)
    }

    fn push_config(&mut self, config: &SchedulerConfig) -> Result<(), SchedulerError> {
        self.write_class_params(config)?;
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
            self.set_group_policy(cgid, &group.to_policy())?;
        }
        Ok(())
    }

    /// Writes the class table (weight, slice, preemption per class; children share the map).
    /// The default class is rodata: it changes only with a new load.
    pub fn write_class_params(&self, config: &SchedulerConfig) -> Result<(), SchedulerError> {
        for (id, class) in config.class_table()?.iter().enumerate() {
            let params = class.to_params();
            self.skel
                .maps
                .class_params
                .update(&(id as u32).to_ne_bytes(), as_bytes(&params), MapFlags::ANY)
                .map_err(|e| SchedulerError::Load(format!("writing class_params: {e}")))?;
        }
        Ok(())
    }

    /// Removes the policy of one cgroup (it admits no sub-scheduler any more); absent is fine.
    pub fn clear_group_policy(&self, cgroup_id: u64) -> Result<(), SchedulerError> {
        match self.skel.maps.group_policy.delete(&cgroup_id.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SchedulerError::Load(format!(
                "deleting from group_policy: {e}"
            ))),
        }
    }

    /// Writes (or replaces) the policy of one cgroup.
    pub fn set_group_policy(
        &self,
        cgroup_id: u64,
        policy: &bpf_intf::canopy_group_policy,
    ) -> Result<(), SchedulerError> {
        self.skel
            .maps
            .group_policy
            .update(&cgroup_id.to_ne_bytes(), as_bytes(policy), MapFlags::ANY)
            .map_err(|e| SchedulerError::Load(format!("writing group_policy: {e}")))
    }

    /// Tags a task (thread id) with a class. For the controller (next issue); the VM tests tag
    /// through the pinned map with `canopy scheduler tag`.
    #[allow(dead_code)]
    pub fn set_task_class(&self, tid: u32, class: u32) -> Result<(), SchedulerError> {
        self.skel
            .maps
            .task_classes
            .update(&tid.to_ne_bytes(), &class.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| SchedulerError::Load(format!("writing task_classes: {e}")))
    }

    fn pin_maps(&mut self) -> Result<(), SchedulerError> {
        fs::create_dir_all(PIN_DIR)
            .map_err(|e| SchedulerError::Load(format!("creating {PIN_DIR}: {e}")))?;
        let maps = &mut self.skel.maps;
        for (name, map) in [
            ("members", &mut maps.members),
            ("stats", &mut maps.stats),
            ("class_params", &mut maps.class_params),
            ("task_classes", &mut maps.task_classes),
            ("group_policy", &mut maps.group_policy),
            ("admission_events", &mut maps.admission_events),
        ] {
            let path = Path::new(PIN_DIR).join(name);
            map.pin(&path)
                .map_err(|e| SchedulerError::Load(format!("pinning {}: {e}", path.display())))?;
            self.pinned.push(path);
        }
        Ok(())
    }

    /// Why the scheduler stopped, or None while it runs.
    pub fn exit_report(&self) -> Option<ExitReport> {
        let data = self.skel.maps.data_exit_info_data.as_deref()?;
        ExitReport::from_record(exit_record(data), &self.enums)
    }

    /// Unregisters the scheduler and returns the kernel's account of the exit.
    pub fn detach(mut self) -> Option<ExitReport> {
        self.link.take();
        self.exit_report()
    }
}

impl Drop for RootScheduler {
    fn drop(&mut self) {
        self.link.take();
        for path in self.pinned.drain(..) {
            let _ = fs::remove_file(path);
        }
    }
}

fn remove_stale_pins() {
    for name in PINNED_MAPS {
        let _ = fs::remove_file(Path::new(PIN_DIR).join(name));
    }
}

/// The bytes of a plain `#[repr(C)]` value from intf.h, for map updates.
pub(super) fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is a bindgen-generated plain-old-data struct without padding-sensitive
    // invariants; the slice lives as long as the borrow.
    unsafe { std::slice::from_raw_parts(value as *const T as *const u8, std::mem::size_of::<T>()) }
}

/// Reads a plain `#[repr(C)]` value from map bytes.
pub(super) fn from_bytes<T: Copy + Default>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = bytes.len().min(std::mem::size_of::<T>());
    // SAFETY: copies at most size_of::<T>() bytes into a valid T of plain integers/arrays.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), &mut value as *mut T as *mut u8, n) };
    value
}
