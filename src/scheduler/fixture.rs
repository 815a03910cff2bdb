// SPDX-License-Identifier: GPL-2.0-only
//! Loader for the foreign sub-scheduler test fixture (`bpf/fixtures/foreign_fifo.bpf.c`): the
//! same attach sequence as `child.rs` (sub_cgroup_id before load, kernel constants from BTF,
//! exit record checked right after attaching) for a scheduler that is not canopy's.
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::Path;
use std::path::PathBuf;

use libbpf_rs::skel::OpenSkel;
use libbpf_rs::skel::Skel;
use libbpf_rs::skel::SkelBuilder;
use libbpf_rs::Link;

use super::child::attach_hint;
use super::exit::ExitReport;
use super::kernel;
use super::root::exit_record;
use super::skel::foreign_fifo::ForeignFifoSkel;
use super::skel::foreign_fifo::ForeignFifoSkelBuilder;
use super::SchedulerError;

pub struct ForeignFixture {
    skel: ForeignFifoSkel<'static>,
    link: Option<Link>,
    enums: HashMap<String, u64>,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
}

impl ForeignFixture {
    pub fn attach(cgroup: &Path) -> Result<Self, SchedulerError> {
        let cgroup = kernel::cgroup_path(cgroup);
        let cgroup_id = kernel::cgroup_id(&cgroup)?;
        let enums = kernel::kernel_enums()?;
        let kconsts = kernel::resolve_kconsts(&enums)?;
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = ForeignFifoSkelBuilder::default()
            .open(storage)
            .map_err(|e| SchedulerError::Load(format!("opening foreign_fifo: {e:#}")))?;
        open.maps
            .rodata_data
            .as_deref_mut()
            .expect("rodata")
            .canopy_kconst
            .copy_from_slice(&kconsts);
        {
            let ops = open.struct_ops.foreign_fifo_ops_mut();
            ops.sub_cgroup_id = cgroup_id;
            ops.hotplug_seq = kernel::hotplug_seq();
        }
        let skel = open
            .load()
            .map_err(|e| SchedulerError::Load(format!("loading foreign_fifo: {e:#}")))?;
        kernel::associate_programs(skel.object(), "foreign_fifo_ops")?;
        let mut fixture = ForeignFixture {
            skel,
            link: None,
            enums,
            cgroup: cgroup.clone(),
            cgroup_id,
        };
        let link = fixture
            .skel
            .maps
            .foreign_fifo_ops
            .attach_struct_ops()
            .map_err(|e| {
                SchedulerError::Attach(format!(
                    "attaching foreign_fifo to {}: {e:#}{}",
                    cgroup.display(),
                    attach_hint(&e)
                ))
            })?;
        fixture.link = Some(link);
        if let Some(report) = fixture.exit_report() {
            return Err(SchedulerError::Refused(format!(
                "foreign_fifo on {} was not enabled: {report}",
                cgroup.display()
            )));
        }
        Ok(fixture)
    }

    pub fn exit_report(&self) -> Option<ExitReport> {
        let data = self.skel.maps.data_exit_info_data.as_deref()?;
        ExitReport::from_record(exit_record(data), &self.enums)
    }

    pub fn detach(mut self) -> Option<ExitReport> {
        self.link.take();
        self.exit_report()
    }
}
