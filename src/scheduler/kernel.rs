// SPDX-License-Identifier: GPL-2.0-only
//! What the loader must learn from, or do to, the running kernel around any sched_ext
//! scheduler: the enum values our BPF reads from rodata (resolved from vmlinux BTF, never
//! compiled in), the support check and cgroup ids (both through canopy-sys), and associating
//! non-struct_ops programs with their ops map (libbpf 1.7 `bpf_program__assoc_struct_ops`).
use std::collections::HashMap;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;
use std::path::PathBuf;

use canopy_sys::cgroup::Cgroup;
use canopy_sys::cgroup::CgroupHierarchy;
use canopy_sys::sched_ext::KernelSupport;

use libbpf_rs::btf::types::Enum;
use libbpf_rs::btf::types::Enum64;
use libbpf_rs::btf::Btf;
use libbpf_rs::AsRawLibbpf;
use libbpf_rs::MapCore;
use libbpf_rs::Object;
use libbpf_rs::ProgramType;

use super::bpf_intf::KCONST_NAMES;
use super::SchedulerError;

/// Prefix under which `kernel_enums` also files the members of `enum scx_exit_kind`.
pub const EXIT_KIND_NAME_PREFIX: &str = "exit-kind-name:";

/// The enumerators in vmlinux BTF that canopy reads, by name: those `canopy_kconst` names
/// (`KCONST_NAMES`) and the members of `enum scx_exit_kind` (also filed under
/// `EXIT_KIND_NAME_PREFIX`, to name an exit). ENUM and ENUM64: a truncated 32-bit copy of a
/// 64-bit enum is ignored when the ENUM64 is present. Names are compared before anything is
/// copied: the kernel has tens of thousands of enumerators, and keeping them all made this
/// 0.54-0.57 s per loading process instead of 0.38-0.40 s (the test build under TCG, three
/// loads each in one boot, 2026-12-04); the rest is walking the BTF's types.
pub fn kernel_enums() -> Result<HashMap<String, u64>, SchedulerError> {
    let btf = Btf::from_vmlinux()
        .map_err(|e| SchedulerError::Kernel(format!("reading vmlinux BTF: {e}")))?;
    let wanted: HashSet<&OsStr> = KCONST_NAMES.iter().map(OsStr::new).collect();
    let mut values = HashMap::new();
    for enum64 in btf.type_by_kind::<Enum64<'_>>() {
        for member in enum64.iter() {
            if let Some(name) = member.name.filter(|name| wanted.contains(name)) {
                values.insert(name.to_string_lossy().into_owned(), member.value as u64);
            }
        }
    }
    for enum32 in btf.type_by_kind::<Enum<'_>>() {
        let exit_kinds = enum32.name().is_some_and(|n| n == "scx_exit_kind");
        for member in enum32.iter() {
            let Some(name) = member.name else { continue };
            if exit_kinds {
                values.insert(
                    format!("{EXIT_KIND_NAME_PREFIX}{}", name.to_string_lossy()),
                    member.value as u32 as u64,
                );
            }
            if exit_kinds || wanted.contains(name) {
                values
                    .entry(name.to_string_lossy().into_owned())
                    .or_insert(member.value as u32 as u64);
            }
        }
    }
    Ok(values)
}

/// The values of `enum canopy_kconst`, in order, from the running kernel.
pub fn resolve_kconsts(enums: &HashMap<String, u64>) -> Result<Vec<u64>, SchedulerError> {
    KCONST_NAMES
        .iter()
        .map(|name| {
            enums.get(*name).copied().ok_or_else(|| {
                SchedulerError::Kernel(format!("kernel BTF has no enum value {name}"))
            })
        })
        .collect()
}

/// Fails naming the missing piece unless this kernel can host canopy's cid-form schedulers
/// (canopy-sys's one probe, which `--mode auto` and `canopy status` use too).
pub fn check_support() -> Result<(), SchedulerError> {
    KernelSupport::probe()
        .require_schedulers()
        .map_err(|missing| SchedulerError::Kernel(missing.to_string()))?;
    check_cids(canopy_sys::sched_ext::possible_cpus())
}

/// The schedulers track CANOPY_MAX_CIDS cids (cmasks, per-cid state): a machine that may bring
/// more CPUs online is refused at load, before anything attaches, rather than run with CPUs the
/// schedulers cannot see. Unknown (unreadable sysfs): allowed.
fn check_cids(possible_cpus: Option<u32>) -> Result<(), SchedulerError> {
    let limit = super::bpf_intf::CANOPY_MAX_CIDS;
    match possible_cpus {
        Some(cpus) if cpus > limit => Err(SchedulerError::Kernel(format!(
            "this machine has {cpus} possible CPUs (/sys/devices/system/cpu/possible); canopy's \
             schedulers handle at most {limit} (CANOPY_MAX_CIDS in bpf/intf.h): use --mode \
             fallback, or rebuild with a larger CANOPY_MAX_CIDS"
        ))),
        _ => Ok(()),
    }
}

/// Resolves a cgroup given relative to the cgroup2 mount or absolute.
pub fn cgroup_path(path: &Path) -> PathBuf {
    CgroupHierarchy::system().resolve(path)
}

/// The cgroup id the kernel uses for a cgroup2 directory: its inode number.
pub fn cgroup_id(path: &Path) -> Result<u64, SchedulerError> {
    if !path.is_dir() {
        return Err(SchedulerError::Cgroup(
            path.to_path_buf(),
            "not a directory".into(),
        ));
    }
    Cgroup::from_dir(path)
        .id()
        .map_err(|e| SchedulerError::Cgroup(path.to_path_buf(), e.to_string()))
}

/// Associates every program of `object` that is not a struct_ops member with the ops map
/// named `ops_map`, so its scx kfuncs resolve to this scheduler (struct_ops members are
/// associated by the kernel itself). Returns how many were associated.
pub fn associate_programs(object: &Object, ops_map: &str) -> Result<usize, SchedulerError> {
    let map = object
        .maps()
        .find(|m| m.name() == ops_map)
        .ok_or_else(|| SchedulerError::Load(format!("no struct_ops map {ops_map}")))?;
    let mut associated = 0;
    for prog in object.progs() {
        if prog.prog_type() == ProgramType::StructOps {
            continue;
        }
        // SAFETY: both pointers come from the loaded object that outlives this call; a null
        // opts pointer selects libbpf's defaults.
        let ret = unsafe {
            libbpf_rs::libbpf_sys::bpf_program__assoc_struct_ops(
                prog.as_libbpf_object().as_ptr(),
                map.as_libbpf_object().as_ptr(),
                std::ptr::null_mut(),
            )
        };
        if ret < 0 {
            return Err(SchedulerError::Load(format!(
                "associating program {} with {ops_map}: errno {}",
                prog.name().to_string_lossy(),
                -ret
            )));
        }
        associated += 1;
    }
    Ok(associated)
}

#[cfg(test)]
mod cid_limit_tests {
    use super::*;

    #[test]
    fn more_cpus_than_cids_are_refused_with_a_reason() {
        assert!(check_cids(Some(256)).is_ok());
        assert!(check_cids(None).is_ok());
        let error = check_cids(Some(257)).unwrap_err().to_string();
        assert!(error.contains("257 possible CPUs"), "{error}");
        assert!(error.contains("at most 256"), "{error}");
    }
}
