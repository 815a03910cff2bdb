// SPDX-License-Identifier: GPL-2.0-only
//! What the loader must learn from, or do to, the running kernel around any sched_ext
//! scheduler: the enum values our BPF reads from rodata (resolved from vmlinux BTF, never
//! compiled in), the support check and cgroup ids (both through canopy-sys), and associating
//! non-struct_ops programs with their ops map (libbpf 1.7 `bpf_program__assoc_struct_ops`).
use std::collections::HashMap;
use std::collections::HashSet;
use std::ffi::CStr;
use std::path::Path;
use std::path::PathBuf;

use canopy_sys::cgroup::Cgroup;
use canopy_sys::cgroup::CgroupHierarchy;
use canopy_sys::sched_ext::KernelSupport;

use libbpf_rs::btf::Btf;
use libbpf_rs::libbpf_sys;
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
/// 64-bit enum is ignored when the ENUM64 is present.
///
/// The kernel's BTF has about 150,000 types and tens of thousands of enumerators. Copying every
/// enumerator into the map made this 0.54-0.57 s per loading process (the test build under
/// TCG), walking the types through libbpf-rs's wrappers and keeping only the wanted names
/// 0.38-0.40 s; this walk, which reads each type's kind from libbpf's `btf_type` directly and
/// looks at enumerator names only inside enums, 0.22-0.24 s (three loads each in one boot,
/// 2026-12-04), most of it libbpf parsing the BTF.
pub fn kernel_enums() -> Result<HashMap<String, u64>, SchedulerError> {
    let btf = Btf::from_vmlinux()
        .map_err(|e| SchedulerError::Kernel(format!("reading vmlinux BTF: {e}")))?;
    Ok(enums_in(&btf))
}

/// [`kernel_enums`] of any BTF (a kernel image's, in the tests).
fn enums_in(btf: &Btf<'_>) -> HashMap<String, u64> {
    let wanted: HashSet<&[u8]> = KCONST_NAMES.iter().map(|name| name.as_bytes()).collect();
    let raw = btf.as_libbpf_object().as_ptr() as *const libbpf_sys::btf;
    let mut values = HashMap::new();
    let mut enum32_values = Vec::new();
    // SAFETY: `raw` is the live `struct btf` that `btf` owns for this whole function; ids run
    // below btf__type_cnt(), so btf__type_by_id() returns a type of this BTF (null is
    // skipped); an ENUM's vlen `struct btf_enum` and an ENUM64's vlen `struct btf_enum64`
    // follow its `struct btf_type` in the type section (the BTF format); names are
    // NUL-terminated strings of its string section, which btf__name_by_offset() bounds.
    unsafe {
        let name_of = |offset: u32| -> Option<&[u8]> {
            let name = libbpf_sys::btf__name_by_offset(raw, offset);
            (!name.is_null()).then(|| CStr::from_ptr(name).to_bytes())
        };
        for id in 1..libbpf_sys::btf__type_cnt(raw) {
            let ty = libbpf_sys::btf__type_by_id(raw, id);
            if ty.is_null() {
                continue;
            }
            let kind = ((*ty).info >> 24) & 0x1f;
            let members = ((*ty).info & 0xffff) as usize;
            if kind == libbpf_sys::BTF_KIND_ENUM64 {
                let first = ty.add(1) as *const libbpf_sys::btf_enum64;
                for index in 0..members {
                    let member = first.add(index).read_unaligned();
                    if let Some(name) = name_of(member.name_off).filter(|n| wanted.contains(n)) {
                        let value = (u64::from(member.val_hi32) << 32) | u64::from(member.val_lo32);
                        values.insert(String::from_utf8_lossy(name).into_owned(), value);
                    }
                }
            } else if kind == libbpf_sys::BTF_KIND_ENUM {
                let exit_kinds = name_of((*ty).name_off) == Some(b"scx_exit_kind".as_slice());
                let first = ty.add(1) as *const libbpf_sys::btf_enum;
                for index in 0..members {
                    let member = first.add(index).read_unaligned();
                    let Some(name) = name_of(member.name_off) else {
                        continue;
                    };
                    let value = member.val as u32 as u64;
                    if exit_kinds {
                        let name = String::from_utf8_lossy(name);
                        values.insert(format!("{EXIT_KIND_NAME_PREFIX}{name}"), value);
                    }
                    if exit_kinds || wanted.contains(name) {
                        enum32_values.push((String::from_utf8_lossy(name).into_owned(), value));
                    }
                }
            }
        }
    }
    // ENUM64 first, whatever the order of the types
    for (name, value) in enum32_values {
        values.entry(name).or_insert(value);
    }
    values
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

#[cfg(test)]
mod kernel_enum_tests {
    use super::*;
    use libbpf_rs::btf::types::Enum;
    use libbpf_rs::btf::types::Enum64;

    /// Every enumerator through libbpf-rs's typed walk, as the loader read them before.
    fn every_enumerator(btf: &Btf<'_>) -> HashMap<String, u64> {
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
                let Some(name) = member.name else { continue };
                if exit_kinds {
                    values.insert(
                        format!("{EXIT_KIND_NAME_PREFIX}{}", name.to_string_lossy()),
                        member.value as u32 as u64,
                    );
                }
                values
                    .entry(name.to_string_lossy().into_owned())
                    .or_insert(member.value as u32 as u64);
            }
        }
        values
    }

    /// The raw walk reads the same values as the typed one: on the running kernel's BTF and on
    /// every test kernel `scripts/fetch-kernel.sh` cached (7.3's has every name canopy reads).
    #[test]
    fn the_raw_walk_agrees_with_the_typed_one() {
        let cache = std::env::var_os("CANOPY_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/canopy"))
            });
        let mut images: Vec<PathBuf> = vec![PathBuf::from("/sys/kernel/btf/vmlinux")];
        if let Some(kernels) = cache.map(|cache| cache.join("kernels")) {
            images.extend(
                std::fs::read_dir(kernels)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|entry| entry.path().join("vmlinux"))
                    .filter(|path| path.exists()),
            );
        }
        for image in images {
            let Ok(btf) = Btf::from_path(&image) else {
                eprintln!("{}: no BTF read", image.display());
                continue;
            };
            let every = every_enumerator(&btf);
            let read = enums_in(&btf);
            for name in KCONST_NAMES {
                assert_eq!(
                    read.get(*name),
                    every.get(*name),
                    "{}: {name}",
                    image.display()
                );
            }
            for (name, value) in &read {
                assert_eq!(every.get(name), Some(value), "{}: {name}", image.display());
            }
            let exit_kinds = |map: &HashMap<String, u64>| {
                map.keys()
                    .filter(|name| name.starts_with(EXIT_KIND_NAME_PREFIX))
                    .count()
            };
            assert_eq!(exit_kinds(&read), exit_kinds(&every), "{}", image.display());
            eprintln!(
                "{}: {} of {} enumerators kept, {} exit kinds",
                image.display(),
                read.len(),
                every.len(),
                exit_kinds(&read)
            );
        }
    }
}
