//! What the running kernel offers canopy's schedulers, and the sched_ext sysfs files: ONE typed
//! probe ([`KernelSupport`]) that `--mode auto`, `canopy status` and the scheduler loader all
//! use, which names the check that failed; `state`, `hotplug_seq` and the root's ops name; the
//! bpffs directory where canopy pins the root scheduler's maps.
//!
//! The probe has three checks, each a fact of the kernel's BTF (`/sys/kernel/btf/vmlinux`):
//! - sched_ext is built in: `/sys/kernel/sched_ext` exists;
//! - cid-form ops: BTF has `struct sched_ext_ops_cid` (Linux 7.3+);
//! - cgroup sub-schedulers: BTF has the kfunc `scx_bpf_sub_dispatch` (a `FUNC`).
//!
//! BTF is read with a small walker over its documented layout (a header, then fixed 12-byte
//! type records each followed by a kind-dependent tail), looking for a named STRUCT or FUNC;
//! a byte search of the string table would also find names that are only members or
//! parameters.

use std::path::{Path, PathBuf};

/// sched_ext's sysfs directory.
pub const SYSFS_DIR: &str = "/sys/kernel/sched_ext";

/// The kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Where canopy pins the root scheduler's maps on bpffs (the daemon and `canopy status` open
/// them there).
pub const PIN_DIR: &str = "/sys/fs/bpf/canopy";

/// The cid-form ops struct (Linux 7.3+).
const CID_OPS_STRUCT: &str = "sched_ext_ops_cid";
/// A kfunc only kernels with cgroup sub-schedulers have.
const SUB_SCHEDULER_KFUNC: &str = "scx_bpf_sub_dispatch";

/// The path of a map canopy pinned as `name`.
pub fn pinned_map(name: &str) -> PathBuf {
    Path::new(PIN_DIR).join(name)
}

/// Which check of [`KernelSupport`] failed, in the order they are made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MissingSupport {
    /// No `/sys/kernel/sched_ext`.
    #[error("kernel has no sched_ext ({SYSFS_DIR} is missing)")]
    NoSchedExt,
    /// The kernel's BTF could not be read or parsed.
    #[error("cannot read the kernel's BTF {path}: {reason}")]
    BtfUnreadable {
        /// The BTF file.
        path: String,
        /// Why.
        reason: String,
    },
    /// No cid-form ops.
    #[error("kernel has sched_ext but no cid-form ops (no struct {CID_OPS_STRUCT} in BTF); Linux 7.3+ is needed")]
    NoCidOps,
    /// No cgroup sub-scheduler kfuncs.
    #[error(
        "kernel has sched_ext but no cgroup sub-schedulers (no kfunc {SUB_SCHEDULER_KFUNC} in BTF)"
    )]
    NoSubSchedulers,
}

/// What the running kernel offers canopy's schedulers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSupport {
    /// `/sys/kernel/sched_ext` exists.
    pub sched_ext: bool,
    /// BTF has `struct sched_ext_ops_cid`.
    pub cid_ops: bool,
    /// BTF has the kfunc `scx_bpf_sub_dispatch`.
    pub sub_scheduler_kfuncs: bool,
    /// Why BTF could not be read, when it could not.
    pub btf_error: Option<String>,
}

impl KernelSupport {
    /// Probes the running kernel.
    pub fn probe() -> KernelSupport {
        let sched_ext = Path::new(SYSFS_DIR).exists();
        let (cid_ops, sub_scheduler_kfuncs, btf_error) = match std::fs::read(VMLINUX_BTF) {
            Ok(btf) => match btf_has(
                &btf,
                &[
                    (BTF_KIND_STRUCT, CID_OPS_STRUCT),
                    (BTF_KIND_FUNC, SUB_SCHEDULER_KFUNC),
                ],
            ) {
                Ok(found) => {
                    let mut found = found.into_iter();
                    let cid_ops = found.next().unwrap_or(false);
                    (cid_ops, found.next().unwrap_or(false), None)
                }
                Err(reason) => (false, false, Some(reason.to_string())),
            },
            Err(error) => (false, false, Some(error.to_string())),
        };
        KernelSupport {
            sched_ext,
            cid_ops,
            sub_scheduler_kfuncs,
            btf_error,
        }
    }

    /// Ok when canopy's schedulers can run here; else the first check that failed.
    pub fn require_schedulers(&self) -> Result<(), MissingSupport> {
        if !self.sched_ext {
            return Err(MissingSupport::NoSchedExt);
        }
        if let Some(reason) = &self.btf_error {
            return Err(MissingSupport::BtfUnreadable {
                path: VMLINUX_BTF.into(),
                reason: reason.clone(),
            });
        }
        if !self.cid_ops {
            return Err(MissingSupport::NoCidOps);
        }
        if !self.sub_scheduler_kfuncs {
            return Err(MissingSupport::NoSubSchedulers);
        }
        Ok(())
    }

    /// One line for `canopy status`: each check, and the verdict.
    pub fn summary(&self) -> String {
        let yes_no = |present: bool| if present { "yes" } else { "no" };
        let verdict = match self.require_schedulers() {
            Ok(()) => "canopy's schedulers can run".to_string(),
            Err(missing) => missing.to_string(),
        };
        format!(
            "sched_ext {}, cid-form ops {}, sub-scheduler kfuncs {} ({verdict})",
            yes_no(self.sched_ext),
            yes_no(self.cid_ops),
            yes_no(self.sub_scheduler_kfuncs)
        )
    }
}

/// `/sys/kernel/sched_ext/state`: enabling, enabled, disabling or disabled; `None` without
/// sched_ext.
pub fn state() -> Option<String> {
    read_trimmed(&Path::new(SYSFS_DIR).join("state"))
}

/// `/sys/kernel/sched_ext/hotplug_seq` (0 when unreadable).
pub fn hotplug_seq() -> u64 {
    read_trimmed(&Path::new(SYSFS_DIR).join("hotplug_seq"))
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

/// How many CPUs the kernel may ever bring online (`/sys/devices/system/cpu/possible`, e.g.
/// `0-255` is 256): sched_ext numbers them as cids 0..n. None when unreadable.
pub fn possible_cpus() -> Option<u32> {
    read_trimmed(Path::new("/sys/devices/system/cpu/possible"))
        .and_then(|text| count_cpu_list(&text))
}

/// The number of CPUs in a kernel CPU list (`0-3,8,10-11` is 7). None when malformed.
fn count_cpu_list(list: &str) -> Option<u32> {
    list.split(',').try_fold(0u32, |total, range| {
        let count = match range.split_once('-') {
            Some((first, last)) => {
                last.trim()
                    .parse::<u32>()
                    .ok()?
                    .checked_sub(first.trim().parse().ok()?)?
                    + 1
            }
            None => {
                range.trim().parse::<u32>().ok()?;
                1
            }
        };
        total.checked_add(count)
    })
}

/// The name of the loaded root scheduler's ops (`/sys/kernel/sched_ext/root/ops`).
pub fn root_ops() -> Option<String> {
    read_trimmed(&Path::new(SYSFS_DIR).join("root/ops"))
}

/// One scheduler of the loaded hierarchy as sysfs shows it (`root`, then `sub/sub-<cgroup id>`
/// below each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsScheduler {
    /// Its ops name.
    pub ops: String,
    /// The cgroup id it is attached to (0 for the root).
    pub cgroup_id: u64,
    /// 0 for the root, its depth below it otherwise.
    pub level: u32,
    /// Its `caps` file, one `name: cid-list` line per capability.
    pub caps: Vec<String>,
}

/// Every scheduler in the loaded hierarchy, root first, parents before children; empty when
/// none is loaded.
pub fn hierarchy() -> Vec<SysfsScheduler> {
    fn walk(dir: &Path, cgroup_id: u64, level: u32, out: &mut Vec<SysfsScheduler>) {
        let Some(ops) = read_trimmed(&dir.join("ops")) else {
            return;
        };
        let caps = std::fs::read_to_string(dir.join("caps"))
            .map(|text| text.lines().map(str::to_string).collect())
            .unwrap_or_default();
        out.push(SysfsScheduler {
            ops,
            cgroup_id,
            level,
            caps,
        });
        let Ok(entries) = std::fs::read_dir(dir.join("sub")) else {
            return;
        };
        let mut children: Vec<(u64, PathBuf)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let id = name.strip_prefix("sub-")?.parse().ok()?;
                Some((id, entry.path()))
            })
            .collect();
        children.sort();
        for (id, child) in children {
            walk(&child, id, level + 1, out);
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(SYSFS_DIR).join("root"), 0, 0, &mut out);
    out
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

// ----- BTF: facts of the format (include/uapi/linux/btf.h) -----------------------------------

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_KIND_STRUCT: u32 = 4;
const BTF_KIND_FUNC: u32 = 12;
/// Size of `struct btf_type` (name_off, info, size/type).
const BTF_TYPE_LEN: usize = 12;

/// Bytes after a type record for `kind` with `vlen` members.
fn btf_tail_len(kind: u32, vlen: usize) -> Result<usize, &'static str> {
    Ok(match kind {
        // INT, VAR, DECL_TAG: one u32
        1 | 14 | 17 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG: nothing
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        // ARRAY: struct btf_array
        3 => 12,
        // STRUCT, UNION (btf_member), DATASEC (btf_var_secinfo), ENUM64 (btf_enum64)
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM (btf_enum), FUNC_PROTO (btf_param)
        6 | 13 => 8 * vlen,
        _ => return Err("unknown BTF kind"),
    })
}

/// For each wanted (kind, name), whether BTF has a type of that kind with that name.
fn btf_has(btf: &[u8], wanted: &[(u32, &str)]) -> Result<Vec<bool>, &'static str> {
    let u32_at = |offset: usize| -> Result<u32, &'static str> {
        btf.get(offset..offset + 4)
            .map(|bytes| u32::from_ne_bytes(bytes.try_into().expect("4 bytes")))
            .ok_or("truncated")
    };
    let magic = btf
        .get(0..2)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or("truncated")?;
    if u16::from_ne_bytes(magic) != BTF_MAGIC {
        return Err("not BTF (bad magic)");
    }
    let header_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
    let types = btf
        .get(header_len + type_off..header_len + type_off + type_len)
        .ok_or("type section out of bounds")?;
    let strings = btf
        .get(header_len + str_off..header_len + str_off + str_len)
        .ok_or("string section out of bounds")?;
    let name_at = |offset: usize| -> &[u8] {
        let rest = strings.get(offset..).unwrap_or(&[]);
        rest.split(|&byte| byte == 0).next().unwrap_or_default()
    };
    let mut found = vec![false; wanted.len()];
    let mut at = 0;
    while at + BTF_TYPE_LEN <= types.len() {
        let word = |index: usize| -> Result<u32, &'static str> {
            types
                .get(at + 4 * index..at + 4 * index + 4)
                .and_then(|bytes| bytes.try_into().ok())
                .map(u32::from_ne_bytes)
                .ok_or("truncated")
        };
        let (name_off, info) = (word(0)? as usize, word(1)?);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        for (hit, (wanted_kind, wanted_name)) in found.iter_mut().zip(wanted) {
            if kind == *wanted_kind && name_at(name_off) == wanted_name.as_bytes() {
                *hit = true;
            }
        }
        at += BTF_TYPE_LEN + btf_tail_len(kind, vlen)?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0-255"), Some(256));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    use super::*;

    /// A BTF blob: an INT, a STRUCT with one member, a FUNC_PROTO with one parameter, a FUNC.
    fn sample_btf(struct_name: &str, func_name: &str) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut name = |text: &str| {
            let offset = strings.len() as u32;
            strings.extend_from_slice(text.as_bytes());
            strings.push(0);
            offset
        };
        let (int_name, struct_name, member, func_name) = (
            name("int"),
            name(struct_name),
            name("field"),
            name(func_name),
        );
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for word in words {
                types.extend_from_slice(&word.to_ne_bytes());
            }
        };
        push(&[int_name, 1 << 24, 4, 32]); // [1] INT, 32 bits
        push(&[struct_name, (4 << 24) | 1, 4, member, 1, 0]); // [2] STRUCT, one member
        push(&[0, (13 << 24) | 1, 1, 0, 1]); // [3] FUNC_PROTO, one param
        push(&[func_name, 12 << 24, 3]); // [4] FUNC
        let mut btf = Vec::new();
        btf.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
        btf.extend_from_slice(&[1, 0]);
        for word in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            btf.extend_from_slice(&word.to_ne_bytes());
        }
        btf.extend_from_slice(&types);
        btf.extend_from_slice(&strings);
        btf
    }

    #[test]
    fn finds_a_struct_and_a_func_by_kind_and_name() {
        let btf = sample_btf(CID_OPS_STRUCT, SUB_SCHEDULER_KFUNC);
        let wanted = [
            (BTF_KIND_STRUCT, CID_OPS_STRUCT),
            (BTF_KIND_FUNC, SUB_SCHEDULER_KFUNC),
        ];
        assert_eq!(btf_has(&btf, &wanted), Ok(vec![true, true]));
        // The same names as the wrong kind do not count (a member or a struct named like a kfunc).
        let swapped = sample_btf(SUB_SCHEDULER_KFUNC, CID_OPS_STRUCT);
        assert_eq!(btf_has(&swapped, &wanted), Ok(vec![false, false]));
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert_eq!(btf_has(b"\x7fELF....", &[]), Err("not BTF (bad magic)"));
        assert_eq!(btf_has(&[], &[]), Err("truncated"));
        let mut short = sample_btf("a", "b");
        short.truncate(30);
        assert!(btf_has(&short, &[]).is_err());
    }

    #[test]
    fn names_the_first_failed_check() {
        let all = KernelSupport {
            sched_ext: true,
            cid_ops: true,
            sub_scheduler_kfuncs: true,
            btf_error: None,
        };
        assert_eq!(all.require_schedulers(), Ok(()));
        let no_subs = KernelSupport {
            sub_scheduler_kfuncs: false,
            ..all.clone()
        };
        assert_eq!(
            no_subs.require_schedulers(),
            Err(MissingSupport::NoSubSchedulers)
        );
        assert!(
            no_subs.summary().contains("sub-scheduler kfuncs no"),
            "{}",
            no_subs.summary()
        );
        let no_cid = KernelSupport {
            cid_ops: false,
            ..no_subs
        };
        assert_eq!(no_cid.require_schedulers(), Err(MissingSupport::NoCidOps));
        let none = KernelSupport {
            sched_ext: false,
            ..no_cid
        };
        assert_eq!(none.require_schedulers(), Err(MissingSupport::NoSchedExt));
    }

    /// The real kernel: whatever it has, the probe answers without panicking and says why.
    #[test]
    fn probes_the_running_kernel() {
        let support = KernelSupport::probe();
        let summary = support.summary();
        assert!(summary.starts_with("sched_ext "), "{summary}");
    }
}
