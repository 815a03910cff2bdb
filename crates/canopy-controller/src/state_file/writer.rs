// SPDX-License-Identifier: GPL-2.0-only
//! The crash record's writer thread: writes (a new `0600` temporary file, fsync, rename) happen
//! here, off the daemon's main loop, because an fsync on a loaded disk can take far longer than
//! a control request may wait (the 50 ms p99 gate). The main loop hands over the serialized
//! record and goes on; a newer record replaces one not yet written (only the latest matters),
//! and a forced flush waits until its own record is on disk. Example: flushes at t = 0 s, 1 s
//! and 2 s while the disk takes 1.5 s per fsync: the main loop never waits; the writer writes
//! the 0 s record, then the 2 s one (the 1 s one was replaced before its turn).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// What the main loop and the writer thread share.
#[derive(Debug, Default)]
struct Queue {
    /// The newest record not yet taken by the writer, and its number.
    pending: Option<(u64, Vec<u8>)>,
    /// Number of the last record handed over.
    handed: u64,
    /// Number of the last record the writer finished with (written, failed or replaced).
    done: u64,
    /// The last write's failure, not reported yet.
    error: Option<std::io::Error>,
    /// The writer ends once nothing is pending.
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        self.changed
            .wait(guard)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The writer thread of one record path.
#[derive(Debug)]
pub(super) struct Writer {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread that writes records to `path`.
    pub(super) fn start(path: PathBuf) -> std::io::Result<Writer> {
        Writer::start_on_disk(path, std::time::Duration::ZERO)
    }

    /// [`Writer::start`] on a disk that takes `slow` longer for every write (tests stand in
    /// for a disk busy with other work this way).
    fn start_on_disk(path: PathBuf, slow: std::time::Duration) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("canopy-record".into())
            .spawn(move || write_until_stopped(&path, &theirs, slow))?;
        Ok(Writer {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands `bytes` over for writing (replacing a record not yet taken); returns its number
    /// and the failure of an earlier write not reported yet.
    pub(super) fn hand_over(&self, bytes: Vec<u8>) -> (u64, Option<std::io::Error>) {
        let mut queue = self.shared.lock();
        queue.handed += 1;
        let number = queue.handed;
        if let Some((replaced, _)) = queue.pending.replace((number, bytes)) {
            queue.done = queue.done.max(replaced);
        }
        let error = queue.error.take();
        self.shared.changed.notify_all();
        (number, error)
    }

    /// Waits until record `number` (and all before it) is written or replaced; the failure of
    /// a write not reported yet.
    pub(super) fn wait_for(&self, number: u64) -> Result<(), std::io::Error> {
        let mut queue = self.shared.lock();
        while queue.done < number {
            queue = self.shared.wait(queue);
        }
        queue.error.take().map_or(Ok(()), Err)
    }

    /// Whether a write failed and no flush has reported it yet (the next flush retries).
    pub(super) fn has_failed(&self) -> bool {
        self.shared.lock().error.is_some()
    }

    /// Waits until everything handed over is written.
    pub(super) fn wait_idle(&self) -> Result<(), std::io::Error> {
        let handed = self.shared.lock().handed;
        self.wait_for(handed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_until_stopped(path: &Path, shared: &Shared, slow: std::time::Duration) {
    loop {
        let (number, bytes) = {
            let mut queue = shared.lock();
            loop {
                if let Some(next) = queue.pending.take() {
                    break next;
                }
                if queue.stop {
                    return;
                }
                queue = shared.wait(queue);
            }
        };
        if !slow.is_zero() {
            std::thread::sleep(slow);
        }
        let result = write_atomically(path, &bytes);
        let mut queue = shared.lock();
        queue.done = queue.done.max(number);
        if let Err(error) = result {
            queue.error = Some(error);
        }
        shared.changed.notify_all();
    }
}

/// Writes a new temporary file (`0600`, `O_EXCL | O_NOFOLLOW`: whatever is planted at its
/// name is removed, never followed), fsyncs it and renames it over the record at `path`.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// The main loop's side of a flush returns at once while the disk takes 300 ms per write;
    /// records handed over meanwhile are replaced by the newest, which is what ends up on
    /// disk; waiting for a record (a forced flush) returns once it is there.
    #[test]
    fn a_slow_disk_does_not_hold_up_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        let slow = Duration::from_millis(300);
        let writer = Writer::start_on_disk(path.clone(), slow).unwrap();
        let handed = Instant::now();
        for n in 0..5 {
            writer.hand_over(format!("record {n}").into_bytes());
        }
        // Waiting for even one of the five writes would take `slow`; the bound is that, not a
        // speed target, so a loaded machine does not fail it.
        let took = handed.elapsed();
        assert!(took < slow, "handing over took {took:?}");
        writer.wait_idle().unwrap();
        assert!(
            handed.elapsed() >= slow,
            "nothing was slow: {:?}",
            handed.elapsed()
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "record 4");
        let (last, _) = writer.hand_over(b"forced".to_vec());
        writer.wait_for(last).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "forced");
    }

    /// A failed write is reported by the next hand-over (and the record is written again).
    #[test]
    fn a_failed_write_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        // A plain file where the record's directory should be: every write fails.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let writer = Writer::start(blocker.join("record.json")).unwrap();
        let (first, _) = writer.hand_over(b"x".to_vec());
        assert!(writer.wait_for(first).is_err());
        let (second, earlier) = writer.hand_over(b"y".to_vec());
        assert!(earlier.is_none(), "reported twice");
        writer.wait_for(second).unwrap_err();
    }
}
