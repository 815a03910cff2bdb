// SPDX-License-Identifier: GPL-2.0-only
//! What the loader must learn from, or do to, the running kernel around any sched_ext
//! scheduler: the enum values our BPF reads from rodata (resolved from vmlinux BTF, never
//! compiled in), `hotplug_seq`, the sysfs state, cgroup ids, and associating non-struct_ops
//! programs with their ops map (libbpf 1.7 `bpf_program__assoc_struct_ops`).
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::path::PathBuf;

use libbpf_rs::btf::types::Enum;
use libbpf_rs::btf::types::Enum64;
use libbpf_rs::btf::Btf;
use libbpf_rs::AsRawLibbpf;
use libbpf_rs::MapCore;
use libbpf_rs::Object;
use libbpf_rs::ProgramType;

use super::bpf_intf::KCONST_NAMES;
use super::SchedulerError;

pub const SCHED_EXT_SYSFS: &str = "/sys/kernel/sched_ext";
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup";
/// Prefix under which `kernel_enums` also files the members of `enum scx_exit_kind`.
pub const EXIT_KIND_NAME_PREFIX: &str = "exit-kind-name:";

/// Every enumerator in vmlinux BTF, by name (ENUM and ENUM64; a truncated 32-bit copy of a
/// 64-bit enum is ignored when the ENUM64 is present).
pub fn kernel_enums() -> Result<HashMap<String, u64>, SchedulerError> {
    let btf = Btf::from_vmlinux()
        .map_err(|e| SchedulerError::Kernel(format!("reading vmlinux BTF: {e}")))?;
    let mut values = HashMap::new();
    for enum64 in btf.type_by_kind::<Enum64<'_>>() {
        for member in enum64.iter() {
            if let Some(name) = member.name {
                values.insert(name.to_string_lossy().into_owned(), member.value as u64);
            }
        }
    }
    for enum32 in btf.type_by_kind::<Enum<'_>>() {
        let exit_kinds = enum32.name().is_some_and(|n| n == "scx_exit_kind");
        for member in enum32.iter() {
            if let (true, Some(name)) = (exit_kinds, member.name) {
                values.insert(
                    format!("{EXIT_KIND_NAME_PREFIX}{}", name.to_string_lossy()),
                    member.value as u32 as u64,
                );
            }
            if let Some(name) = member.name {
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

/// Fails with a clear message unless this kernel can host cid-form sub-schedulers.
pub fn check_support() -> Result<(), SchedulerError> {
    if !Path::new(SCHED_EXT_SYSFS).exists() {
        return Err(SchedulerError::Kernel(
            "this kernel has no sched_ext (/sys/kernel/sched_ext is missing)".into(),
        ));
    }
    let btf = Btf::from_vmlinux()
        .map_err(|e| SchedulerError::Kernel(format!("reading vmlinux BTF: {e}")))?;
    if btf
        .type_by_name::<libbpf_rs::btf::types::Struct<'_>>("sched_ext_ops_cid")
        .is_none()
    {
        return Err(SchedulerError::Kernel(
            "this kernel's sched_ext has no cid-form ops (struct sched_ext_ops_cid); Linux 7.3+ is needed"
                .into(),
        ));
    }
    Ok(())
}

pub fn hotplug_seq() -> u64 {
    read_trimmed(&Path::new(SCHED_EXT_SYSFS).join("hotplug_seq"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `/sys/kernel/sched_ext/state`: enabling, enabled, disabling or disabled.
pub fn sched_ext_state() -> Option<String> {
    read_trimmed(&Path::new(SCHED_EXT_SYSFS).join("state"))
}

/// Seconds since boot (`/proc/uptime`, the clock of the VM tests' timestamps), for log lines
/// that say when something happened.
pub fn uptime_s() -> Option<f64> {
    read_trimmed(Path::new("/proc/uptime"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The cgroup id the kernel uses for a cgroup2 directory: its inode number.
pub fn cgroup_id(path: &Path) -> Result<u64, SchedulerError> {
    let meta = fs::metadata(path)
        .map_err(|e| SchedulerError::Cgroup(path.to_path_buf(), e.to_string()))?;
    if !meta.is_dir() {
        return Err(SchedulerError::Cgroup(
            path.to_path_buf(),
            "not a directory".into(),
        ));
    }
    Ok(meta.ino())
}

/// Resolves a cgroup given relative to the cgroup2 root or absolute.
pub fn cgroup_path(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(CGROUP2_ROOT).join(path)
    }
}

/// Finds the cgroup2 directory whose inode is `id` (depth-first under the cgroup2 root).
pub fn cgroup_path_of_id(id: u64) -> Option<PathBuf> {
    fn walk(dir: &Path, id: u64, depth: usize) -> Option<PathBuf> {
        if fs::metadata(dir).ok()?.ino() == id {
            return Some(dir.to_path_buf());
        }
        if depth > 16 {
            return None;
        }
        for entry in fs::read_dir(dir).ok()?.flatten() {
            if entry.file_type().ok()?.is_dir() {
                if let Some(found) = walk(&entry.path(), id, depth + 1) {
                    return Some(found);
                }
            }
        }
        None
    }
    walk(Path::new(CGROUP2_ROOT), id, 0)
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
