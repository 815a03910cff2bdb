// SPDX-License-Identifier: GPL-2.0-only
//! Attaching canopy's child scheduler (`canopy_child`) to one cgroup, and detaching it.
//!
//! The child's `sub_cgroup_id` is the inode of the cgroup directory, written into the ops data
//! before load. It shares the root's class tables (the pinned `class_params` and
//! `task_classes`) so the controller tags a task once whichever scheduler owns it. As with
//! the root, the exit record is checked right after attaching: the parent may have refused
//! the child (admission) and the kernel still returns a link.
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::Path;
use std::path::PathBuf;

use libbpf_rs::skel::OpenSkel;
use libbpf_rs::skel::Skel;
use libbpf_rs::skel::SkelBuilder;
use libbpf_rs::Link;

use super::bpf_intf;
use super::exit::ExitReport;
use super::kernel;
use super::root::exit_record;
use super::root::PIN_DIR;
use super::skel::child::CanopyChildSkel;
use super::skel::child::CanopyChildSkelBuilder;
use super::SchedulerError;

pub struct ChildScheduler {
    skel: CanopyChildSkel<'static>,
    link: Option<Link>,
    enums: HashMap<String, u64>,
    cgroup: PathBuf,
    cgroup_id: u64,
}

/// Options for a child attach.
#[derive(Debug, Clone, Default)]
pub struct ChildOptions {
    /// Register under this ops name instead of `canopy_child` (tests of admission use it).
    pub ops_name: Option<String>,
    /// Class for untagged tasks (id from intf.h); None keeps DEFAULT.
    pub default_class: Option<u32>,
}

impl ChildScheduler {
    /// Attaches a canopy child scheduler to `cgroup` (relative to /sys/fs/cgroup or absolute).
    pub fn attach(cgroup: &Path, options: &ChildOptions) -> Result<Self, SchedulerError> {
        let cgroup = kernel::cgroup_path(cgroup);
        let cgroup_id = kernel::cgroup_id(&cgroup)?;
        let enums = kernel::kernel_enums()?;
        let kconsts = kernel::resolve_kconsts(&enums)?;

        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = CanopyChildSkelBuilder::default()
            .open(storage)
            .map_err(|e| SchedulerError::Load(format!("opening canopy_child: {e:#}")))?;
        {
            let rodata = open
                .maps
                .rodata_data
                .as_deref_mut()
                .expect("canopy_child has rodata");
            rodata.canopy_kconst.copy_from_slice(&kconsts);
            rodata.attach_cgroup_id = cgroup_id;
            if let Some(class) = options.default_class {
                rodata.default_class = class;
            }
        }
        {
            let ops = open.struct_ops.canopy_child_ops_mut();
            ops.sub_cgroup_id = cgroup_id;
            ops.hotplug_seq = kernel::hotplug_seq();
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
        ] {
            let pinned = Path::new(PIN_DIR).join(name);
            if pinned.exists() {
                map.reuse_pinned_map(&pinned).map_err(|e| {
                    SchedulerError::Load(format!("sharing {}: {e}", pinned.display()))
                })?;
            }
        }
        let skel = open
            .load()
            .map_err(|e| SchedulerError::Load(format!("loading canopy_child (verifier): {e:#}")))?;
        kernel::associate_programs(skel.object(), "canopy_child_ops")?;

        let mut child = ChildScheduler {
            skel,
            link: None,
            enums,
            cgroup: cgroup.clone(),
            cgroup_id,
        };
        let link = child
            .skel
            .maps
            .canopy_child_ops
            .attach_struct_ops()
            .map_err(|e| {
                SchedulerError::Attach(format!(
                    "attaching canopy_child to {} (cgroup id {cgroup_id}): {e:#}{}",
                    cgroup.display(),
                    attach_hint(&e)
                ))
            })?;
        child.link = Some(link);
        if let Some(report) = child.exit_report() {
            return Err(SchedulerError::Refused(format!(
                "child scheduler on {} was not enabled: {report}",
                cgroup.display()
            )));
        }
        Ok(child)
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    pub fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }

    pub fn exit_report(&self) -> Option<ExitReport> {
        let data = self.skel.maps.data_exit_info_data.as_deref()?;
        ExitReport::from_record(exit_record(data), &self.enums)
    }

    /// Detaches: the subtree's tasks return to the parent scheduler.
    pub fn detach(mut self) -> Option<ExitReport> {
        self.link.take();
        self.exit_report()
    }
}

impl Drop for ChildScheduler {
    fn drop(&mut self) {
        self.link.take();
    }
}

/// Explains the errnos `bpf_link_create` returns before the scheduler exists (sub.c).
pub(super) fn attach_hint(error: &libbpf_rs::Error) -> &'static str {
    let text = format!("{error:#}");
    if text.contains("ENODEV") || text.contains("No such device") {
        " (no root scheduler is loaded)"
    } else if text.contains("EOPNOTSUPP") || text.contains("Operation not supported") {
        " (the parent scheduler does not host child schedulers: nesting is not allowed here)"
    } else if text.contains("EBUSY") || text.contains("busy") {
        " (a scheduler is already attached at or below this cgroup)"
    } else {
        ""
    }
}
