// SPDX-License-Identifier: GPL-2.0-only
//! Loaders for the test fixtures in `bpf/fixtures/`: the foreign sub-scheduler `foreign_fifo`
//! (the same sequence as `child.rs`: sub_cgroup_id before load, kernel constants from BTF, exit
//! record checked right after attaching, all but the skeleton in `attach.rs`, for a scheduler
//! that is not canopy's), and `restart_once`, a root scheduler that asks for a restart.
use std::path::Path;

use libbpf_rs::skel::OpenSkel;
use libbpf_rs::skel::Skel;
use libbpf_rs::skel::SkelBuilder;

use super::attach::load_err;
use super::attach::object_storage;
use super::attach::KernelConsts;
use super::attach::Place;
use super::attach::Registered;
use super::kernel;
use super::skel::foreign_fifo::ForeignFifoSkel;
use super::skel::foreign_fifo::ForeignFifoSkelBuilder;
use super::skel::restart_once::RestartOnceSkel;
use super::skel::restart_once::RestartOnceSkelBuilder;
use super::SchedulerError;

/// foreign_fifo, registered on one cgroup.
pub type ForeignFixture = Registered<ForeignFifoSkel<'static>>;

/// Attaches the fixture to `cgroup` (relative to /sys/fs/cgroup or absolute), giving every task
/// it runs slices of `slice_ns`.
pub fn attach_fixture(cgroup: &Path, slice_ns: u64) -> Result<ForeignFixture, SchedulerError> {
    let path = kernel::cgroup_path(cgroup);
    let cgroup_id = kernel::cgroup_id(&path)?;
    let kernel_consts = KernelConsts::read()?;
    let mut open = ForeignFifoSkelBuilder::default()
        .open(object_storage())
        .map_err(load_err("opening foreign_fifo"))?;
    {
        let rodata = open.maps.rodata_data.as_deref_mut().expect("rodata");
        rodata.canopy_kconst.copy_from_slice(&kernel_consts.kconsts);
        rodata.slice_ns = slice_ns;
    }
    {
        let ops = open.struct_ops.foreign_fifo_ops_mut();
        ops.sub_cgroup_id = cgroup_id;
        ops.hotplug_seq = canopy_sys::sched_ext::hotplug_seq();
    }
    let skel = open.load().map_err(load_err("loading foreign_fifo"))?;
    kernel::associate_programs(skel.object(), "foreign_fifo_ops")?;
    Registered::attach(
        skel,
        kernel_consts.enums,
        "foreign_fifo",
        Place::Cgroup {
            path,
            id: cgroup_id,
        },
    )
}

/// restart_once, registered as the root scheduler.
pub type RestartFixture = Registered<RestartOnceSkel<'static>>;

/// Loads and attaches restart_once as the root scheduler; with `restart_after_dispatches` > 0 it
/// unregisters itself after that many dispatches with the restart action set.
pub fn attach_restart_fixture(
    restart_after_dispatches: u64,
) -> Result<RestartFixture, SchedulerError> {
    kernel::check_support()?;
    let kernel_consts = KernelConsts::read()?;
    let mut open = RestartOnceSkelBuilder::default()
        .open(object_storage())
        .map_err(load_err("opening restart_once"))?;
    let rodata = open.maps.rodata_data.as_deref_mut().expect("rodata");
    rodata.canopy_kconst.copy_from_slice(&kernel_consts.kconsts);
    rodata.restart_after_dispatches = restart_after_dispatches;
    open.struct_ops.restart_once_ops_mut().hotplug_seq = canopy_sys::sched_ext::hotplug_seq();
    let skel = open.load().map_err(load_err("loading restart_once"))?;
    kernel::associate_programs(skel.object(), "restart_once_ops")?;
    Registered::attach(skel, kernel_consts.enums, "restart_once", Place::Root)
}
