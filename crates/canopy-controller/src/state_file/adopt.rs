// SPDX-License-Identifier: GPL-2.0-only
//! Reading a crash record back: opened without following a symlink and refused whole unless the
//! daemon's own uid wrote it `0600` (or narrower), then validated entry by entry against
//! [`AdoptRules`] (see the `state_file` module documentation for the threat it answers). What
//! survives is [`Adopted`]; what is refused is named in its notes, never a crash.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use canopy_sys::sched::{SchedAttr, SchedPolicy};

use super::{Contents, KNOB_FILES, MAX_KNOB_VALUE_BYTES, MAX_RECORD_BYTES, VERSION};

/// How many refused entries are named one by one (the rest are counted).
const REFUSALS_NAMED: usize = 8;

/// What a previous daemon left behind and is still valid.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Original attributes of threads that still exist (same tid, same start time).
    pub tasks: HashMap<u32, SchedAttr>,
    /// Original knob values of cgroups.
    pub groups: HashMap<String, Vec<(&'static str, String)>>,
    /// The start time of each adopted task's thread.
    pub starts: HashMap<u32, u64>,
    /// What was refused and why (the whole record, or its first entries and a count), for the
    /// log and `canopy status`.
    pub refused: Vec<String>,
}

/// What the entries of a record must satisfy to be adopted.
#[derive(Debug, Clone, Copy)]
pub struct AdoptRules<'a> {
    /// The cgroup2 mount: every cgroup key must name an existing directory beneath it.
    pub cgroup_root: &'a Path,
    /// Whether the policy manages RT/DL tasks (`leave_realtime = false`); otherwise an RT/DL
    /// original is refused.
    pub realtime_managed: bool,
}

/// Why a whole record was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordRefused {
    /// The path is a symlink (never followed).
    #[error("it is a symlink")]
    Symlink,
    /// Not a regular file.
    #[error("it is not a regular file")]
    NotRegular,
    /// Owned by somebody other than the daemon's uid.
    #[error("it is owned by uid {owner}, not uid {expected}")]
    Owner {
        /// The file's owner.
        owner: u32,
        /// The daemon's effective uid.
        expected: u32,
    },
    /// Group or others may read or write it.
    #[error(
        "its mode {mode:04o} grants group or others access (only 0600 or narrower is trusted)"
    )]
    Mode {
        /// The permission bits.
        mode: u32,
    },
    /// Larger than [`MAX_RECORD_BYTES`].
    #[error("it is {size} bytes, more than {MAX_RECORD_BYTES}")]
    TooLarge {
        /// Its size.
        size: u64,
    },
    /// Not the JSON this daemon writes.
    #[error("it is not a crash record: {0}")]
    Malformed(String),
    /// Written in another boot or by another version.
    #[error("it is from another boot or version")]
    Stale,
    /// The OS refused to open or read it.
    #[error("{0}")]
    Io(std::io::Error),
}

/// Collects refused entries: the first [`REFUSALS_NAMED`] by name, the rest counted.
#[derive(Default)]
struct Refusals {
    named: Vec<String>,
    more: usize,
}

impl Refusals {
    fn add(&mut self, what: impl FnOnce() -> String) {
        if self.named.len() < REFUSALS_NAMED {
            self.named.push(what());
        } else {
            self.more += 1;
        }
    }

    fn into_notes(mut self, path: &Path) -> Vec<String> {
        if self.more > 0 {
            self.named.push(format!("and {} more entries", self.more));
        }
        self.named
            .into_iter()
            .map(|why| format!("crash record {}: refused {why}", path.display()))
            .collect()
    }
}

/// Whether `attr` is attributes a thread could have had before canopy changed it.
fn plausible_original(attr: &SchedAttr, realtime_managed: bool) -> Result<(), String> {
    let policy = attr.policy();
    if matches!(policy, SchedPolicy::Unknown(_)) {
        return Err(format!("unknown policy {}", attr.sched_policy));
    }
    if policy.is_realtime() && !realtime_managed {
        return Err(format!(
            "an RT/DL original (policy {}, priority {}) while the policy leaves RT/DL tasks alone",
            attr.sched_policy, attr.sched_priority
        ));
    }
    let rt_priority = matches!(policy, SchedPolicy::Fifo | SchedPolicy::RoundRobin);
    if !(-20..=19).contains(&attr.sched_nice)
        || attr.sched_priority > 99
        || (attr.sched_priority > 0) != rt_priority
        || attr.sched_util_min > attr.sched_util_max
        || attr.sched_util_max > canopy_sys::sched::UCLAMP_MAX_VALUE
    {
        return Err(format!(
            "out-of-range attributes (nice {}, priority {}, uclamp {}..{})",
            attr.sched_nice, attr.sched_priority, attr.sched_util_min, attr.sched_util_max
        ));
    }
    Ok(())
}

/// Opens the record without following a symlink and checks who may have written it; `None` when
/// there is no record.
pub(super) fn read_record(path: &Path) -> Result<Option<Vec<u8>>, RecordRefused> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(RecordRefused::Symlink),
        Err(e) => return Err(RecordRefused::Io(e)),
    };
    let meta = file.metadata().map_err(RecordRefused::Io)?;
    if !meta.file_type().is_file() {
        return Err(RecordRefused::NotRegular);
    }
    // SAFETY: trivial syscall.
    let expected = unsafe { libc::geteuid() };
    if meta.uid() != expected {
        return Err(RecordRefused::Owner {
            owner: meta.uid(),
            expected,
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(RecordRefused::Mode {
            mode: meta.mode() & 0o7777,
        });
    }
    if meta.len() > MAX_RECORD_BYTES {
        return Err(RecordRefused::TooLarge { size: meta.len() });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_RECORD_BYTES)
        .read_to_end(&mut bytes)
        .map_err(RecordRefused::Io)?;
    Ok(Some(bytes))
}

/// Parses and validates a record's text (see the module documentation): the entries of this
/// boot whose thread still runs (`start_time` of its tid matches) and that the `rules` allow.
/// Refusals of single entries are listed in [`Adopted::refused`]; a record that is not this
/// boot's JSON is refused whole.
pub fn validate_record(
    bytes: &[u8],
    boot_id: &str,
    rules: &AdoptRules<'_>,
    start_time: impl Fn(u32) -> Option<u64>,
    path: &Path,
) -> Result<Adopted, RecordRefused> {
    let contents: Contents =
        serde_json::from_slice(bytes).map_err(|e| RecordRefused::Malformed(e.to_string()))?;
    if contents.version != VERSION || contents.boot_id != boot_id {
        return Err(RecordRefused::Stale);
    }
    let mut adopted = Adopted::default();
    let mut refusals = Refusals::default();
    for record in contents.tasks {
        if start_time(record.tid) != Some(record.start) {
            continue; // Exited, or the tid was reused: nothing to restore.
        }
        let attr = record.attr();
        match plausible_original(&attr, rules.realtime_managed) {
            Ok(()) => {
                adopted.starts.insert(record.tid, record.start);
                adopted.tasks.insert(record.tid, attr);
            }
            Err(why) => refusals.add(|| format!("tid {}: {why}", record.tid)),
        }
    }
    let root = rules.cgroup_root.to_string_lossy();
    for (key, knobs) in contents.groups {
        let cgroup = match crate::protocol::normalize_cgroup(&key, &root) {
            Ok(c) if !c.is_empty() => c,
            _ => {
                refusals.add(|| {
                    format!(
                        "cgroup {:?}: not a cgroup path below the root",
                        shorten(&key)
                    )
                });
                continue;
            }
        };
        if let Err(why) = canopy_sys::beneath::dir_beneath(rules.cgroup_root, &cgroup) {
            refusals.add(|| format!("cgroup {:?}: {why}", shorten(&key)));
            continue;
        }
        let mut kept: Vec<(&'static str, String)> = Vec::new();
        for (file, value) in knobs {
            let known = KNOB_FILES.iter().find(|k| **k == file);
            match known {
                Some(k)
                    if value.len() <= MAX_KNOB_VALUE_BYTES
                        && !value.contains(['\n', '\0'])
                        && !kept.iter().any(|(f, _)| f == k) =>
                {
                    kept.push((*k, value))
                }
                _ => refusals.add(|| {
                    format!(
                        "cgroup {cgroup:?}: knob {:?} = {:?}",
                        shorten(&file),
                        shorten(&value)
                    )
                }),
            }
        }
        if !kept.is_empty() {
            adopted.groups.insert(cgroup, kept);
        }
    }
    adopted.refused = refusals.into_notes(path);
    Ok(adopted)
}

/// The first 64 bytes of a string from the record (for messages).
fn shorten(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{record_text, rules};
    use super::*;

    #[test]
    fn forged_entries_are_refused_one_by_one() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("state.json");
        let validate = |text: &str, realtime_managed: bool| {
            validate_record(
                text.as_bytes(),
                "boot",
                &rules(root.path(), realtime_managed),
                |tid| (tid == 42).then_some(7),
                &path,
            )
        };
        // SCHED_FIFO 99 is adopted only when the policy manages RT/DL tasks.
        let fifo = record_text("boot", 42, 1, 99, "app");
        let refused = validate(&fifo, false).unwrap();
        assert!(refused.tasks.is_empty());
        assert!(
            refused.refused[0].contains("tid 42: an RT/DL original"),
            "{:?}",
            refused.refused
        );
        let managed = validate(&fifo, true).unwrap();
        assert_eq!(managed.tasks[&42].sched_priority, 99);
        // Only the first of a repeated knob, and only the five knob files.
        assert_eq!(
            managed.groups["app"],
            vec![("cpu.weight", "100".to_string())]
        );
        // Impossible attributes and escaping, absolute or missing cgroups are refused.
        assert!(validate(&record_text("boot", 42, 0, 99, "app"), true)
            .unwrap()
            .tasks
            .is_empty());
        assert!(validate(&record_text("boot", 42, 9, 0, "app"), true)
            .unwrap()
            .tasks
            .is_empty());
        for key in ["../etc", "app/../../etc", "", "/", "missing", "app/./x"] {
            let adopted = validate(&record_text("boot", 42, 0, 0, key), false).unwrap();
            assert!(adopted.groups.is_empty(), "{key:?} adopted");
            assert!(
                adopted.refused.iter().any(|r| r.contains("cgroup")),
                "{key:?}: {:?}",
                adopted.refused
            );
        }
        // An absolute path under the root is the same cgroup.
        let absolute = format!("{}/app", root.path().display());
        let adopted = validate(&record_text("boot", 42, 0, 0, &absolute), false).unwrap();
        assert!(adopted.groups.contains_key("app"));
        // Another boot, or not JSON, is refused whole.
        assert!(matches!(
            validate(&fifo.replace("\"boot\"", "\"other\""), true),
            Err(RecordRefused::Stale)
        ));
        assert!(matches!(
            validate("{", true),
            Err(RecordRefused::Malformed(_))
        ));
    }
}
