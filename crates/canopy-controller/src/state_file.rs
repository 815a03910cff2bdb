//! The fallback backend's crash record: every changed task's original scheduling attributes and
//! every changed group knob's original value, kept in a file (by default under /run/canopy) so a
//! daemon killed with SIGKILL loses none of them. Written atomically (temporary file, fsync,
//! rename) and at most once per [`FLUSH_EVERY`]; read once at start by the next daemon, which
//! re-adopts what it still manages and restores the rest.
//!
//! A thread id can be reused once its thread exits, so each task entry carries the thread's start
//! time (`/proc/<tid>/stat` field 22) and is only trusted while that still matches; the file also
//! carries the boot id, so a record from another boot is ignored.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use canopy_sys::sched::SchedAttr;

/// Least time between two writes of the file.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The file name `canopy run` uses under /run/canopy.
pub const DEFAULT_PATH: &str = "/run/canopy/fallback-state.json";

/// The group knob files the fallback backend writes (state entries name one of these).
pub const KNOB_FILES: [&str; 5] = [
    "cpu.weight",
    "cpu.idle",
    "cpu.uclamp.min",
    "cpu.uclamp.max",
    "cpu.max",
];

/// Why the record could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing the fallback state file {path}: {source}")]
pub struct StateFileError {
    path: PathBuf,
    source: std::io::Error,
}

/// One task's original attributes, flattened for the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct TaskRecord {
    tid: u32,
    /// Start time of the thread in clock ticks after boot (tells a reused tid apart).
    start: u64,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

impl TaskRecord {
    fn new(tid: u32, start: u64, a: &SchedAttr) -> Self {
        TaskRecord {
            tid,
            start,
            policy: a.sched_policy,
            flags: a.sched_flags,
            nice: a.sched_nice,
            priority: a.sched_priority,
            runtime: a.sched_runtime,
            deadline: a.sched_deadline,
            period: a.sched_period,
            util_min: a.sched_util_min,
            util_max: a.sched_util_max,
        }
    }

    fn attr(&self) -> SchedAttr {
        SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            sched_policy: self.policy,
            sched_flags: self.flags,
            sched_nice: self.nice,
            sched_priority: self.priority,
            sched_runtime: self.runtime,
            sched_deadline: self.deadline,
            sched_period: self.period,
            sched_util_min: self.util_min,
            sched_util_max: self.util_max,
        }
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Contents {
    version: u32,
    boot_id: String,
    tasks: Vec<TaskRecord>,
    /// cgroup (relative to the cgroup2 root) → [(knob file, original value)].
    groups: HashMap<String, Vec<(String, String)>>,
}

const VERSION: u32 = 1;

/// What a previous daemon left behind and is still valid.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Original attributes of threads that still exist (same tid, same start time).
    pub tasks: HashMap<u32, SchedAttr>,
    /// Original knob values of cgroups.
    pub groups: HashMap<String, Vec<(&'static str, String)>>,
}

/// The state file and its write schedule.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    boot_id: String,
    /// Start times already read, by tid (read once per task, at its first flush).
    starts: HashMap<u32, u64>,
    dirty: bool,
    last_write: Option<Instant>,
}

fn boot_id() -> String {
    canopy_sys::procfs::boot_id().unwrap_or_default()
}

/// Start time of a thread (clock ticks after boot), or None once it is gone.
pub fn thread_start_time(tid: u32) -> Option<u64> {
    canopy_sys::procfs::ProcFs::new()
        .process_stat(tid as i32)
        .ok()?
        .done()
        .map(|stat| stat.start_time_ticks)
}

impl StateFile {
    /// A state file at `path` (nothing is read or written yet).
    pub fn new(path: PathBuf) -> Self {
        StateFile {
            path,
            boot_id: boot_id(),
            starts: HashMap::new(),
            dirty: false,
            last_write: None,
        }
    }

    /// Where the record lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what a previous daemon recorded, keeping only entries still valid: same boot, and
    /// for tasks the same thread (tid and start time). A missing or unreadable file is nothing.
    pub fn adopt(&mut self) -> Adopted {
        let mut adopted = Adopted::default();
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return adopted;
        };
        let contents: Contents = match serde_json::from_str(&text) {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "ignoring an unreadable fallback state file");
                return adopted;
            }
        };
        if contents.version != VERSION || contents.boot_id != self.boot_id {
            tracing::info!(path = %self.path.display(), "ignoring a fallback state file from another boot or version");
            return adopted;
        }
        for record in contents.tasks {
            if thread_start_time(record.tid) == Some(record.start) {
                self.starts.insert(record.tid, record.start);
                adopted.tasks.insert(record.tid, record.attr());
            }
        }
        for (cgroup, knobs) in contents.groups {
            let knobs: Vec<(&'static str, String)> = knobs
                .into_iter()
                .filter_map(|(file, value)| {
                    KNOB_FILES.iter().find(|k| **k == file).map(|k| (*k, value))
                })
                .collect();
            if !knobs.is_empty() {
                adopted.groups.insert(cgroup, knobs);
            }
        }
        adopted
    }

    /// Something recorded changed; the next due [`StateFile::flush`] writes it.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether a write is pending.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Writes the record if it changed and the last write is at least [`FLUSH_EVERY`] old (or
    /// `force`). Tasks that exited before their first write are left out.
    pub fn flush<'a>(
        &mut self,
        tasks: impl Iterator<Item = (u32, &'a SchedAttr)>,
        groups: &HashMap<String, Vec<(&'static str, String)>>,
        force: bool,
    ) -> Result<(), StateFileError> {
        if !self.dirty {
            return Ok(());
        }
        if !force && self.last_write.is_some_and(|t| t.elapsed() < FLUSH_EVERY) {
            return Ok(());
        }
        let mut records = Vec::new();
        let mut alive = HashMap::new();
        for (tid, attr) in tasks {
            let start = match self.starts.get(&tid) {
                Some(&s) => Some(s),
                None => thread_start_time(tid),
            };
            if let Some(start) = start {
                alive.insert(tid, start);
                records.push(TaskRecord::new(tid, start, attr));
            }
        }
        self.starts = alive;
        let contents = Contents {
            version: VERSION,
            boot_id: self.boot_id.clone(),
            tasks: records,
            groups: groups
                .iter()
                .map(|(c, knobs)| {
                    (
                        c.clone(),
                        knobs
                            .iter()
                            .map(|(f, v)| (f.to_string(), v.clone()))
                            .collect(),
                    )
                })
                .collect(),
        };
        self.write_atomically(&serde_json::to_vec(&contents).expect("plain data serializes"))?;
        self.dirty = false;
        self.last_write = Some(Instant::now());
        Ok(())
    }

    fn write_atomically(&self, bytes: &[u8]) -> Result<(), StateFileError> {
        let error = |source| StateFileError {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(error)?;
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = std::fs::File::create(&tmp).map_err(error)?;
        file.write_all(bytes).map_err(error)?;
        file.sync_data().map_err(error)?;
        std::fs::rename(&tmp, &self.path).map_err(error)
    }

    /// Everything was restored (clean stop): the record goes away.
    pub fn remove(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        self.dirty = false;
        self.starts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(nice: i32) -> SchedAttr {
        SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            sched_nice: nice,
            sched_util_max: 1024,
            ..Default::default()
        }
    }

    #[test]
    fn a_record_round_trips_for_live_threads_only() {
        let dir = std::env::temp_dir().join(format!("canopy-state-{}", std::process::id()));
        let path = dir.join("state.json");
        let me = std::process::id();
        let mut file = StateFile::new(path.clone());
        file.mark_dirty();
        let tasks = [(me, attr(3)), (u32::MAX - 1, attr(5))];
        let mut groups = HashMap::new();
        groups.insert(
            "app".to_string(),
            vec![
                ("cpu.weight", "100".to_string()),
                ("cpu.max", "max 100000".to_string()),
            ],
        );
        file.flush(tasks.iter().map(|(t, a)| (*t, a)), &groups, false)
            .unwrap();
        assert!(!file.is_dirty());

        let adopted = StateFile::new(path.clone()).adopt();
        assert_eq!(adopted.tasks.get(&me), Some(&attr(3)));
        assert_eq!(
            adopted.tasks.len(),
            1,
            "a tid that does not exist is dropped"
        );
        assert_eq!(adopted.groups["app"], groups["app"]);

        // A record whose start time no longer matches (a reused tid) is not trusted.
        let text = std::fs::read_to_string(&path).unwrap();
        let mut contents: Contents = serde_json::from_str(&text).unwrap();
        contents.tasks[0].start += 1;
        std::fs::write(&path, serde_json::to_vec(&contents).unwrap()).unwrap();
        assert!(StateFile::new(path.clone()).adopt().tasks.is_empty());

        // Another boot's record is ignored.
        contents.tasks[0].start -= 1;
        contents.boot_id = "another boot".into();
        std::fs::write(&path, serde_json::to_vec(&contents).unwrap()).unwrap();
        assert!(StateFile::new(path.clone()).adopt().tasks.is_empty());

        StateFile::new(path.clone()).remove();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn writes_are_rate_limited_unless_forced() {
        let dir = std::env::temp_dir().join(format!("canopy-state-rate-{}", std::process::id()));
        let path = dir.join("state.json");
        let mut file = StateFile::new(path.clone());
        let none = HashMap::new();
        file.mark_dirty();
        file.flush(std::iter::empty(), &none, false).unwrap();
        file.mark_dirty();
        file.flush(std::iter::empty(), &none, false).unwrap();
        assert!(file.is_dirty(), "a second write within FLUSH_EVERY waits");
        file.flush(std::iter::empty(), &none, true).unwrap();
        assert!(!file.is_dirty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
