// SPDX-License-Identifier: GPL-2.0-only
//! Loader for the foreign sub-scheduler test fixture (`bpf/fixtures/foreign_fifo.bpf.c`): the
//! same sequence as `child.rs` (sub_cgroup_id before load, kernel constants from BTF, exit
//! record checked right after attaching, all but the skeleton in `attach.rs`) for a scheduler
//! that is not canopy's.
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
use super::SchedulerError;

/// foreign_fifo, registered on one cgroup.
pub type ForeignFixture = Registered<ForeignFifoSkel<'static>>;

/// Attaches the fixture to `cgroup` (relative to /sys/fs/cgroup or absolute).
pub fn attach_fixture(cgroup: &Path) -> Result<ForeignFixture, SchedulerError> {
    let path = kernel::cgroup_path(cgroup);
    let cgroup_id = kernel::cgroup_id(&path)?;
    let kernel_consts = KernelConsts::read()?;
    let mut open = ForeignFifoSkelBuilder::default()
        .open(object_storage())
        .map_err(load_err("opening foreign_fifo"))?;
    open.maps
        .rodata_data
        .as_deref_mut()
        .expect("rodata")
        .canopy_kconst
        .copy_from_slice(&kernel_consts.kconsts);
    {
        let ops = open.struct_ops.foreign_fifo_ops_mut();
        ops.sub_cgroup_id = cgroup_id;
        ops.hotplug_seq = kernel::hotplug_seq();
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
