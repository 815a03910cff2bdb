// SPDX-License-Identifier: GPL-2.0-only
//! What wakes the scheduler supervisor when cgroups come and go: canopy-sys's inotify
//! [`Watcher`] on the whole cgroup2 tree (new subdirectories are watched as they appear),
//! driven by a current-thread tokio runtime of its own so the supervisor's blocking loop can
//! wait on it with a timeout, or until another thread wakes it (the daemon's stop and reload
//! requests, [`Notify`]). Only creations, removals and queue overflows count; other cgroup
//! events (xattrs, `cgroup.procs` writes) are drained and ignored.
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use canopy_sys::watch::WatchEvent;
use canopy_sys::watch::Watcher;
use tokio::sync::Notify;

/// inotify on a cgroup tree, waited on synchronously.
pub struct CgroupWatch {
    runtime: tokio::runtime::Runtime,
    watcher: Watcher,
}

impl CgroupWatch {
    /// Watches `top` and every cgroup below it.
    pub fn new(top: &Path) -> anyhow::Result<CgroupWatch> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("starting the inotify runtime")?;
        let watcher = {
            let _entered = runtime.enter();
            let mut watcher = Watcher::new()?;
            watcher.watch_cgroup_tree(top)?;
            watcher
        };
        Ok(CgroupWatch { runtime, watcher })
    }

    /// Waits up to `timeout` for cgroup events, or until `wake` is notified (a notification
    /// made while nobody waited ends the next wait at once), and drains every event already
    /// queued. True when a cgroup was created or removed, or events were lost (the caller
    /// should rescan).
    pub fn wait(&mut self, timeout: Duration, wake: Option<&Notify>) -> anyhow::Result<bool> {
        let watcher = &mut self.watcher;
        self.runtime.block_on(async move {
            let woken = async {
                match wake {
                    Some(wake) => wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(woken);
            let mut changed = false;
            let mut wait = timeout;
            // The first wait may sleep; then only what is ready now (a zero timeout still
            // polls the watcher once).
            loop {
                let event = tokio::select! {
                    biased;
                    event = tokio::time::timeout(wait, watcher.next_event()) => match event {
                        Ok(event) => event,
                        Err(_elapsed) => break,
                    },
                    () = &mut woken, if !wait.is_zero() => break,
                };
                changed |= matches!(
                    event.context("reading cgroup events")?,
                    WatchEvent::CgroupCreated { .. }
                        | WatchEvent::CgroupRemoved { .. }
                        | WatchEvent::Overflow
                );
                wait = Duration::ZERO;
            }
            Ok(changed)
        })
    }

    /// How many directories are watched.
    pub fn watch_count(&self) -> usize {
        self.watcher.watch_count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A notification, made before the wait or during it, ends a long wait; a directory made
    /// below the watched one ends it as a change.
    #[test]
    fn a_wake_or_a_new_directory_ends_the_wait() {
        let top = tempfile::tempdir().unwrap();
        let mut watch = CgroupWatch::new(top.path()).unwrap();
        let wake = std::sync::Arc::new(Notify::new());
        wake.notify_one();
        let started = Instant::now();
        assert!(!watch.wait(Duration::from_secs(60), Some(&wake)).unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the stored wake ended it"
        );

        let waker = std::sync::Arc::clone(&wake);
        let notifier = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            waker.notify_one();
        });
        let started = Instant::now();
        assert!(!watch.wait(Duration::from_secs(60), Some(&wake)).unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the wake ended it"
        );
        notifier.join().unwrap();

        std::fs::create_dir(top.path().join("app.scope")).unwrap();
        assert!(watch.wait(Duration::from_secs(60), None).unwrap());
        assert!(
            !watch.wait(Duration::ZERO, Some(&wake)).unwrap(),
            "nothing left"
        );
    }
}
