//! The fallback backend's crash record: every changed task's original scheduling attributes and
//! every changed group knob's original value, kept in a file (by default under /run/canopy) so a
//! daemon killed with SIGKILL loses none of them. Written atomically (temporary file, fsync,
//! rename) by a thread of its own (`writer`: an fsync must not stall the main loop) and at most
//! once per [`FLUSH_EVERY`]; read once at start by the next daemon (`adopt`), which re-adopts
//! what it still manages and restores the rest.
//!
//! A thread id can be reused once its thread exits, so each task entry carries the thread's start
//! time (`/proc/<tid>/stat` field 22) and is only trusted while that still matches; the file also
//! carries the boot id, so a record from another boot is ignored.
//!
//! The record is trusted across a restart, so nobody but the daemon may write it (threat model,
//! attack 1): the temporary file is created `0600` with `O_CREAT | O_EXCL | O_NOFOLLOW` (a
//! planted file or symlink makes the write fail, it is never followed) and renamed over the
//! record. On read the record is refused whole (logged, a status note, never a crash) when it is
//! a symlink, not a regular file, not owned by the daemon's own uid (root in production), or its
//! mode grants group or others anything; then entry by entry: a cgroup key is normalised and must
//! name an existing directory beneath the cgroup root (resolved by the kernel, no `..`, no
//! symlink), a knob must be one of [`KNOB_FILES`] with a short value, and an attribute must be one
//! the kernel could have had: an RT/DL policy only when the policy manages RT/DL tasks (otherwise
//! canopy never changes such a task, so it cannot have recorded one). Example: a forged entry
//! `{"tid": 4242, "policy": 1, "priority": 99, ...}` under a policy with `leave_realtime = true`
//! is refused and tid 4242 is never made SCHED_FIFO.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use canopy_sys::sched::SchedAttr;

mod adopt;
mod writer;
use adopt::read_record;
pub use adopt::{validate_record, AdoptRules, Adopted, RecordRefused};
use writer::Writer;

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

/// Largest record read (about 200 bytes a task: far beyond any real machine's count).
pub const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

/// Longest knob value adopted (`cpu.max`'s "max 100000" is the longest real one).
pub const MAX_KNOB_VALUE_BYTES: usize = 64;

/// Why the record could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing the fallback state file {path}: {source}")]
pub struct StateFileError {
    path: PathBuf,
    source: std::io::Error,
}

/// One task's original attributes, flattened for the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct TaskRecord {
    pub(super) tid: u32,
    /// Start time of the thread in clock ticks after boot (tells a reused tid apart).
    pub(super) start: u64,
    pub(super) policy: u32,
    pub(super) flags: u64,
    pub(super) nice: i32,
    pub(super) priority: u32,
    pub(super) runtime: u64,
    pub(super) deadline: u64,
    pub(super) period: u64,
    pub(super) util_min: u32,
    pub(super) util_max: u32,
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

    pub(super) fn attr(&self) -> SchedAttr {
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
pub(super) struct Contents {
    pub(super) version: u32,
    pub(super) boot_id: String,
    pub(super) tasks: Vec<TaskRecord>,
    /// cgroup (relative to the cgroup2 root) → [(knob file, original value)].
    pub(super) groups: HashMap<String, Vec<(String, String)>>,
}

pub(super) const VERSION: u32 = 1;

/// The state file and its write schedule.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    boot_id: String,
    dirty: bool,
    last_write: Option<Instant>,
    /// Started at the first write; `None` also when the thread could not be started (then
    /// the main loop writes itself).
    writer: Option<Writer>,
}

fn boot_id() -> String {
    canopy_sys::procfs::boot_id().unwrap_or_default()
}

/// Start time of a thread (clock ticks after boot), or None once it is gone. Read from the
/// thread's own `/proc/TID/task/TID/stat`: `/proc/TID/stat` is the whole thread group's view,
/// which the kernel builds by walking every thread of the group under its lock, so reading it
/// for each of a process's N threads costs N² (1,000 threads: a million visits).
pub fn thread_start_time(tid: u32) -> Option<u64> {
    let task = canopy_sys::procfs::TaskId {
        pid: tid as i32,
        tid: tid as i32,
    };
    canopy_sys::procfs::ProcFs::new()
        .task_stat(task)
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
            dirty: false,
            last_write: None,
            writer: None,
        }
    }

    /// Where the record lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what a previous daemon recorded, keeping only entries still valid and allowed by
    /// `rules` (see the module documentation). A missing file is nothing; a refused one is
    /// logged and listed in [`Adopted::refused`], never adopted.
    pub fn adopt(&mut self, rules: &AdoptRules<'_>) -> Adopted {
        let bytes = match read_record(&self.path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Adopted::default(),
            Err(why) => return self.refused_whole(why),
        };
        match validate_record(&bytes, &self.boot_id, rules, thread_start_time, &self.path) {
            Ok(adopted) => {
                for note in &adopted.refused {
                    tracing::warn!("{note}");
                }
                adopted
            }
            Err(RecordRefused::Stale) => {
                tracing::info!(path = %self.path.display(), "ignoring a fallback state file from another boot or version");
                Adopted::default()
            }
            Err(why) => self.refused_whole(why),
        }
    }

    fn refused_whole(&self, why: RecordRefused) -> Adopted {
        let note = format!(
            "crash record {}: refused whole, nothing adopted: {why}",
            self.path.display()
        );
        tracing::warn!("{note}");
        Adopted {
            refused: vec![note],
            ..Adopted::default()
        }
    }

    /// Something recorded changed; the next due [`StateFile::flush`] writes it.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether a write is due: something changed, or the writer's last write failed.
    pub fn is_dirty(&self) -> bool {
        self.dirty || self.writer.as_ref().is_some_and(Writer::has_failed)
    }

    /// Writes the record if it changed and the last write is at least [`FLUSH_EVERY`] old (or
    /// `force`). Each task comes with its thread's start time. The record is serialized here
    /// and written by the writer thread: without `force` this returns at once (with the failure
    /// of an earlier write, if one failed since); with `force` it waits until this record is on
    /// disk.
    pub fn flush<'a>(
        &mut self,
        tasks: impl Iterator<Item = (u32, u64, &'a SchedAttr)>,
        groups: &HashMap<String, Vec<(&'static str, String)>>,
        force: bool,
    ) -> Result<(), StateFileError> {
        if !self.is_dirty() {
            return Ok(());
        }
        if !force && self.last_write.is_some_and(|t| t.elapsed() < FLUSH_EVERY) {
            return Ok(());
        }
        let records = tasks
            .map(|(tid, start, attr)| TaskRecord::new(tid, start, attr))
            .collect();
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
        let bytes = serde_json::to_vec(&contents).expect("plain data serializes");
        self.dirty = false;
        self.last_write = Some(Instant::now());
        if self.writer.is_none() {
            self.writer = Writer::start(self.path.clone()).ok();
        }
        let path = &self.path;
        let error = |source| StateFileError {
            path: path.clone(),
            source,
        };
        let Some(writer) = &self.writer else {
            return writer::write_atomically(path, &bytes).map_err(error);
        };
        let (number, earlier_failure) = writer.hand_over(bytes);
        let result = if force {
            writer.wait_for(number)
        } else {
            earlier_failure.map_or(Ok(()), Err)
        };
        result.map_err(error)
    }

    /// Waits until every record handed to the writer thread is on disk (or failed).
    pub fn settle(&mut self) -> Result<(), StateFileError> {
        match &self.writer {
            Some(writer) => writer.wait_idle().map_err(|source| StateFileError {
                path: self.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// Everything was restored (clean stop): the record goes away.
    pub fn remove(&mut self) {
        // A write still under way would bring it back.
        let _ = self.settle();
        let _ = std::fs::remove_file(&self.path);
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn attr(nice: i32) -> SchedAttr {
        SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            sched_nice: nice,
            sched_util_max: 1024,
            ..Default::default()
        }
    }

    /// Rules for a cgroup root with one cgroup, `app`, under a temporary directory.
    pub(super) fn rules(root: &Path, realtime_managed: bool) -> AdoptRules<'_> {
        std::fs::create_dir_all(root.join("app")).unwrap();
        AdoptRules {
            cgroup_root: root,
            realtime_managed,
        }
    }

    #[test]
    fn a_record_round_trips_for_live_threads_only() {
        let dir = std::env::temp_dir().join(format!("canopy-state-{}", std::process::id()));
        let path = dir.join("state.json");
        let cgroot = dir.join("cgroup");
        let rules = rules(&cgroot, false);
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
        file.flush(
            tasks
                .iter()
                .filter_map(|(t, a)| Some((*t, thread_start_time(*t)?, a))),
            &groups,
            false,
        )
        .unwrap();
        assert!(!file.is_dirty());
        file.settle().unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600, "the record is {mode:o}");

        let adopted = StateFile::new(path.clone()).adopt(&rules);
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
        assert!(StateFile::new(path.clone()).adopt(&rules).tasks.is_empty());

        // Another boot's record is ignored.
        contents.tasks[0].start -= 1;
        contents.boot_id = "another boot".into();
        std::fs::write(&path, serde_json::to_vec(&contents).unwrap()).unwrap();
        assert!(StateFile::new(path.clone()).adopt(&rules).tasks.is_empty());

        StateFile::new(path.clone()).remove();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A record as a previous daemon of this boot would have written it, for tid `tid`.
    pub(super) fn record_text(
        boot_id: &str,
        tid: u32,
        policy: u32,
        priority: u32,
        cgroup: &str,
    ) -> String {
        serde_json::json!({
            "version": VERSION,
            "boot_id": boot_id,
            "tasks": [{"tid": tid, "start": 7, "policy": policy, "flags": 0, "nice": 0,
                "priority": priority, "runtime": 0, "deadline": 0, "period": 0,
                "util_min": 0, "util_max": 1024}],
            "groups": {cgroup: [["cpu.weight", "100"], ["cpu.weight", "5"], ["memory.max", "0"]]},
        })
        .to_string()
    }

    #[test]
    fn a_symlink_or_a_file_others_may_write_is_refused_whole() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let rules = rules(root.path(), true);
        let me = std::process::id();
        let boot = boot_id();
        let target = root.path().join("elsewhere.json");
        std::fs::write(&target, record_text(&boot, me, 0, 0, "app")).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = root.path().join("state.json");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let adopted = StateFile::new(path.clone()).adopt(&rules);
        assert!(adopted.tasks.is_empty() && adopted.groups.is_empty());
        assert!(
            adopted.refused[0].contains("symlink"),
            "{:?}",
            adopted.refused
        );

        std::fs::remove_file(&path).unwrap();
        std::fs::copy(&target, &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
        let adopted = StateFile::new(path.clone()).adopt(&rules);
        assert!(adopted.groups.is_empty());
        assert!(
            adopted.refused[0].contains("mode 0660"),
            "{:?}",
            adopted.refused
        );

        // A write replaces whatever was planted at the temporary name, never following it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let planted = root.path().join("planted");
        std::os::unix::fs::symlink(&planted, root.path().join("state.json.tmp")).unwrap();
        let mut file = StateFile::new(path.clone());
        file.mark_dirty();
        file.flush(std::iter::empty(), &HashMap::new(), true)
            .unwrap();
        assert!(!planted.exists(), "the planted symlink was followed");
        assert!(StateFile::new(path).adopt(&rules).refused.is_empty());
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
