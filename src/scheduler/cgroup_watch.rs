// SPDX-License-Identifier: GPL-2.0-only
//! What wakes the scheduler supervisor when cgroups come and go: canopy-sys's inotify
//! [`Watcher`] on the whole cgroup2 tree (new subdirectories are watched as they appear),
//! driven by a current-thread tokio runtime of its own so the supervisor's blocking loop can
//! wait on it with a timeout. Only creations, removals and queue overflows count; other cgroup
//! events (xattrs, `cgroup.procs` writes) are drained and ignored.
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use canopy_sys::watch::WatchEvent;
use canopy_sys::watch::Watcher;

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

    /// Waits up to `timeout` for cgroup events and drains every event already queued. True
    /// when a cgroup was created or removed, or events were lost (the caller should rescan).
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let watcher = &mut self.watcher;
        self.runtime.block_on(async move {
            let mut changed = false;
            let mut wait = timeout;
            // The first wait may sleep; then only what is ready now (a zero timeout still
            // polls the watcher once).
            while let Ok(event) = tokio::time::timeout(wait, watcher.next_event()).await {
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
