// SPDX-License-Identifier: GPL-2.0-only
//! The part of loading every canopy sched_ext scheduler (root, child, test fixture) that does
//! not depend on which one it is: reading the kernel's constants, the skeleton's storage,
//! attaching the struct_ops map and checking the exit record at once (the kernel can report a
//! successful attach for a scheduler that already died, or that its parent refused), decoding
//! that record later, and unregistering on detach or drop.
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;

use libbpf_rs::Link;
use libbpf_rs::MapMut;
use libbpf_rs::OpenObject;

use super::bpf_intf;
use super::exit::ExitReport;
use super::kernel;
use super::skel::child::CanopyChildSkel;
use super::skel::foreign_fifo::ForeignFifoSkel;
use super::skel::restart_once::RestartOnceSkel;
use super::skel::root::CanopyRootSkel;
use super::SchedulerError;

/// What a load needs from the running kernel: every enum value (for decoding exit kinds) and
/// the `canopy_kconst` table resolved from them (written into rodata).
#[derive(Clone)]
pub struct KernelConsts {
    pub enums: Arc<HashMap<String, u64>>,
    pub kconsts: Vec<u64>,
}

impl KernelConsts {
    /// Read from vmlinux BTF once per process (the running kernel's values cannot change), so
    /// attaching a child to a new cgroup does not parse the kernel's BTF again.
    pub fn read() -> Result<Self, SchedulerError> {
        static CACHE: OnceLock<KernelConsts> = OnceLock::new();
        if let Some(cached) = CACHE.get() {
            return Ok(cached.clone());
        }
        let enums = kernel::kernel_enums()?;
        let kconsts = kernel::resolve_kconsts(&enums)?;
        Ok(CACHE
            .get_or_init(|| KernelConsts {
                enums: Arc::new(enums),
                kconsts,
            })
            .clone())
    }
}

/// Storage for one skeleton's object, leaked: the skeleton borrows it for its whole life, and
/// a process loads a handful of schedulers at most.
pub fn object_storage() -> &'static mut MaybeUninit<OpenObject> {
    Box::leak(Box::new(MaybeUninit::uninit()))
}

/// Maps a libbpf error while opening or loading to a load error that says what was done.
pub fn load_err(what: &'static str) -> impl Fn(libbpf_rs::Error) -> SchedulerError {
    move |e| SchedulerError::Load(format!("{what}: {e:#}"))
}

/// The exit record of a skeleton's `.data.exit_info` map, as intf.h's type.
pub fn exit_record<T>(data: &T) -> &bpf_intf::canopy_exit_info {
    assert_eq!(
        std::mem::size_of::<T>(),
        std::mem::size_of::<bpf_intf::canopy_exit_info>()
    );
    // SAFETY: the skeleton's datasec struct holds exactly one `struct canopy_exit_info`
    // (same C declaration as intf.h's, size checked above).
    unsafe { &*(data as *const T as *const bpf_intf::canopy_exit_info) }
}

/// A loaded skeleton of one of canopy's sched_ext schedulers.
pub trait SchedulerSkel {
    /// Its struct_ops map (attaching it registers the scheduler).
    fn ops_map(&mut self) -> &mut MapMut<'static>;
    /// Its exit record (filled in by ops.exit).
    fn exit_info(&self) -> Option<&bpf_intf::canopy_exit_info>;
}

macro_rules! scheduler_skel {
    ($skel:ty, $ops_map:ident) => {
        impl SchedulerSkel for $skel {
            fn ops_map(&mut self) -> &mut MapMut<'static> {
                &mut self.maps.$ops_map
            }

            fn exit_info(&self) -> Option<&bpf_intf::canopy_exit_info> {
                self.maps.data_exit_info_data.as_deref().map(exit_record)
            }
        }
    };
}

scheduler_skel!(CanopyRootSkel<'static>, canopy_root_ops);
scheduler_skel!(CanopyChildSkel<'static>, canopy_child_ops);
scheduler_skel!(ForeignFifoSkel<'static>, foreign_fifo_ops);
scheduler_skel!(RestartOnceSkel<'static>, restart_once_ops);

/// Where a scheduler is attached.
#[derive(Debug, Clone)]
pub enum Place {
    /// The root of the hierarchy (the whole machine).
    Root,
    /// A cgroup, as a sub-scheduler (`sub_cgroup_id` is the directory's inode).
    Cgroup { path: PathBuf, id: u64 },
}

/// A registered scheduler. Dropping it unregisters the scheduler (its tasks return to the
/// parent scheduler, or to the fair scheduler for the root).
pub struct Registered<S: SchedulerSkel> {
    skel: S,
    link: Option<Link>,
    enums: Arc<HashMap<String, u64>>,
    place: Place,
}

impl<S: SchedulerSkel> Registered<S> {
    /// Attaches the loaded `skel` (ops name `name`) at `place` and checks at once that it runs.
    pub fn attach(
        mut skel: S,
        enums: Arc<HashMap<String, u64>>,
        name: &str,
        place: Place,
    ) -> Result<Self, SchedulerError> {
        let link = skel.ops_map().attach_struct_ops().map_err(|e| {
            SchedulerError::Attach(match &place {
                Place::Root => format!("attaching {name}: {e:#}"),
                Place::Cgroup { path, id } => format!(
                    "attaching {name} to {} (cgroup id {id}): {e:#}{}",
                    path.display(),
                    attach_hint(&e)
                ),
            })
        })?;
        let registered = Registered {
            skel,
            link: Some(link),
            enums,
            place,
        };
        if let Some(report) = registered.exit_report() {
            return Err(match &registered.place {
                Place::Root => {
                    SchedulerError::Exited(format!("{name} died while enabling: {report}"))
                }
                Place::Cgroup { path, .. } => SchedulerError::Refused(format!(
                    "{name} on {} was not enabled: {report}",
                    path.display()
                )),
            });
        }
        Ok(registered)
    }

    pub fn skel(&self) -> &S {
        &self.skel
    }

    /// The cgroup directory it is attached to (the cgroup2 root for the root scheduler).
    pub fn cgroup(&self) -> &Path {
        match &self.place {
            Place::Root => canopy_sys::cgroup::CgroupHierarchy::system().mount_point(),
            Place::Cgroup { path, .. } => path,
        }
    }

    /// The id of that cgroup (1 for the cgroup2 root).
    pub fn cgroup_id(&self) -> u64 {
        match &self.place {
            Place::Root => 1,
            Place::Cgroup { id, .. } => *id,
        }
    }

    /// Why the scheduler stopped, or None while it runs.
    pub fn exit_report(&self) -> Option<ExitReport> {
        ExitReport::from_record(self.skel.exit_info()?, &self.enums)
    }

    /// Unregisters the scheduler and returns the kernel's account of the exit.
    pub fn detach(mut self) -> Option<ExitReport> {
        self.link.take();
        self.exit_report()
    }
}

impl<S: SchedulerSkel> Drop for Registered<S> {
    fn drop(&mut self) {
        self.link.take();
    }
}

/// An exit report for a log line, or what to say when there is none.
pub fn describe_exit(report: Option<ExitReport>) -> String {
    report
        .map(|r| r.to_string())
        .unwrap_or_else(|| "no exit record".into())
}

/// Explains the errnos `bpf_link_create` returns before the scheduler exists (sub.c).
fn attach_hint(error: &libbpf_rs::Error) -> &'static str {
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
