//! inotify, on tokio (the `inotify` crate's `EventStream`): cgroup subtrees watched
//! recursively for cgroups created and removed, xattr changes on a cgroup (GNOME's focus
//! signal, IN_ATTRIB) and writes to its `cgroup.procs`/`cgroup.threads`; and policy files and
//! drop-in directories, watched through their directory so that editors that write a new file
//! and rename it over the old one are seen. [`Watcher::watch_policy`] follows the discovery
//! rules of [`crate::policy_files`]: a policy path stands for its `policy.toml` and its
//! `policy.d/*.toml`, and a `policy.d` created (or removed) later is followed.
//!
//! A cgroup created between a `mkdir` event and the watch on it is not missed: each new
//! directory is listed after its watch is added and its subdirectories are reported too.
//!
//! Nothing a user does stops the watching. A queue overflow (anyone who can write a watched
//! cgroup's `cgroup.procs` can cause one cheaply) makes the watcher re-list the cgroup trees it
//! watches, report what was created or removed meanwhile, then [`WatchEvent::Overflow`] (the
//! caller re-reads memberships and xattrs; a policy watcher's caller reloads). A watch the kernel
//! refuses with `ENOSPC` (the per-user watch limit, which every process of the user shares) puts
//! that cgroup on polling: it is re-listed and its xattrs re-reported every [`POLL_EVERY`], the
//! watch retried each time, and [`WatchEvent::Polling`] says so once per run of refusals.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use inotify::{EventMask, EventStream, Inotify, WatchMask, Watches};

use crate::policy_files::{DROP_IN_DIR, MAIN_FILE};

/// An inotify operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// inotify could not be set up.
    #[error("cannot set up inotify: {source}")]
    Init {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A watch could not be added.
    #[error("cannot watch {path}: {source}")]
    AddWatch {
        /// The watched path.
        path: PathBuf,
        /// The OS error (`ENOSPC`: raise `fs.inotify.max_user_watches`).
        #[source]
        source: io::Error,
    },
    /// Reading events failed.
    #[error("cannot read inotify events: {source}")]
    Read {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The inotify stream ended.
    #[error("the inotify stream ended")]
    Closed,
}

/// A change seen by a [`Watcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A cgroup directory appeared in a watched tree (it is watched from now on).
    CgroupCreated {
        /// Its directory.
        dir: PathBuf,
    },
    /// A cgroup directory of a watched tree was removed.
    CgroupRemoved {
        /// Its directory.
        dir: PathBuf,
    },
    /// A watched cgroup's attributes changed: an xattr such as `user.xdg.inactive-since`.
    CgroupAttributesChanged {
        /// Its directory.
        dir: PathBuf,
    },
    /// Someone wrote to a watched cgroup's `cgroup.procs` or `cgroup.threads` (a move into it;
    /// the event does not say which task).
    CgroupMembershipChanged {
        /// Its directory.
        dir: PathBuf,
    },
    /// A policy file was written, replaced, created by rename, or removed.
    PolicyChanged {
        /// The file (or the watched directory itself if that was removed or moved).
        path: PathBuf,
    },
    /// The kernel's event queue overflowed; events were lost. The cgroup trees were re-listed
    /// first (their creations and removals were reported before this); memberships and xattrs
    /// may have changed unseen.
    Overflow,
    /// The kernel refused a watch on `dir` for lack of watches (`ENOSPC`): that cgroup (and
    /// any below it that cannot be watched either) is polled every [`POLL_EVERY`] until a watch
    /// succeeds. Reported once each time polling starts.
    Polling {
        /// The first cgroup that could not be watched.
        dir: PathBuf,
    },
}

/// How often cgroups that could not be watched (`ENOSPC`) are re-listed and their xattrs
/// re-reported.
pub const POLL_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What one watch descriptor stands for.
#[derive(Debug, Clone)]
enum Target {
    /// A cgroup directory of a recursively watched tree.
    Cgroup(PathBuf),
    /// A directory holding policy files; `only` limits it to some file names (`None`: all).
    /// With `drop_ins`, its `policy.d` subdirectory is watched as a drop-in directory whenever
    /// it exists (created or moved in later included).
    PolicyDirectory {
        dir: PathBuf,
        only: Option<Vec<OsString>>,
        drop_ins: bool,
    },
    /// A `policy.d` directory: only its `*.toml` files count, as in [`crate::policy_files`].
    DropInDirectory(PathBuf),
}

const CGROUP_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::ONLYDIR);
/// Writes to `cgroup.procs`/`cgroup.threads` (moves), when the caller wants them.
const MEMBERSHIP_MASK: WatchMask = WatchMask::MODIFY;

// CREATE only serves to see a `policy.d` appear (a new file is reported at its CLOSE_WRITE).
const POLICY_MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::CREATE)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

/// One inotify instance with canopy's watches. Must be created inside a tokio runtime.
pub struct Watcher {
    stream: EventStream<Vec<u8>>,
    watches: Watches,
    targets: HashMap<i32, Target>,
    cgroup_dirs: HashMap<PathBuf, i32>,
    /// Cgroups the kernel refused a watch on (`ENOSPC`), polled instead.
    unwatched: BTreeSet<PathBuf>,
    next_poll: tokio::time::Instant,
    /// Set during a poll round, whose refusals continue a run rather than start one.
    polling_round: bool,
    cgroup_mask: WatchMask,
    pending: VecDeque<WatchEvent>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Watcher")
            .field("watches", &self.targets.len())
            .field("polled", &self.unwatched.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Watcher {
    /// A watcher with no watches yet.
    pub fn new() -> Result<Watcher, WatchError> {
        let inotify = Inotify::init().map_err(|source| WatchError::Init { source })?;
        let stream = inotify
            .into_event_stream(vec![0u8; 16 * 1024])
            .map_err(|source| WatchError::Init { source })?;
        let watches = stream.watches();
        Ok(Watcher {
            stream,
            watches,
            targets: HashMap::new(),
            cgroup_dirs: HashMap::new(),
            unwatched: BTreeSet::new(),
            next_poll: tokio::time::Instant::now(),
            polling_round: false,
            cgroup_mask: CGROUP_MASK.union(MEMBERSHIP_MASK),
            pending: VecDeque::new(),
        })
    }

    /// Whether writes to watched cgroups' `cgroup.procs`/`cgroup.threads` are reported
    /// ([`WatchEvent::CgroupMembershipChanged`]; on by default). Off when moves are seen
    /// another way: each write is an event, so they are the cheapest way to fill the queue.
    /// Applies to watches added afterwards.
    pub fn set_membership_events(&mut self, on: bool) {
        self.cgroup_mask = if on {
            CGROUP_MASK.union(MEMBERSHIP_MASK)
        } else {
            CGROUP_MASK
        };
    }

    /// Cgroups polled because the kernel refused their watch (`ENOSPC`).
    pub fn polled_count(&self) -> usize {
        self.unwatched.len()
    }

    /// Every cgroup this watcher follows, watched or polled. After [`WatchEvent::Overflow`]
    /// this is the tree it just re-listed: a caller that re-reads something of every cgroup
    /// (the focus xattrs) iterates this instead of walking cgroupfs a second time.
    pub fn cgroups(&self) -> impl Iterator<Item = &Path> {
        self.cgroup_dirs
            .keys()
            .chain(self.unwatched.iter())
            .map(PathBuf::as_path)
    }

    /// Watches `top` and every cgroup below it, now and as they are created. Returns every
    /// directory watched (top first). Directories that vanish meanwhile are skipped.
    pub fn watch_cgroup_tree(&mut self, top: &Path) -> Result<Vec<PathBuf>, WatchError> {
        let mut watched = Vec::new();
        self.add_cgroup_subtree(top.to_path_buf(), &mut watched, true)?;
        Ok(watched)
    }

    /// Watches one policy file through its directory (so rename-replace is seen). Several files
    /// of one directory may be watched; a watched directory already covers its files.
    pub fn watch_policy_file(&mut self, file: &Path) -> Result<(), WatchError> {
        let dir = file
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = file.file_name().map(OsStr::to_os_string);
        self.add_policy_watch(dir, name, false)
    }

    /// Watches every file in a policy (drop-in) directory.
    pub fn watch_policy_directory(&mut self, dir: &Path) -> Result<(), WatchError> {
        self.add_policy_watch(dir, None, false)
    }

    /// Watches every file the policy at `path` stands for ([`crate::policy_files`]'s rules): a
    /// directory means its `policy.toml` and `policy.d/*.toml`; a file named `policy.toml`
    /// means itself and its sibling `policy.d/*.toml`; any other file means itself. A
    /// `policy.d` that appears later is watched from then on (and reported as a change).
    pub fn watch_policy(&mut self, path: &Path) -> Result<(), WatchError> {
        let base = if path.is_dir() {
            path
        } else if path.file_name().is_some_and(|name| name == MAIN_FILE) {
            path.parent()
                .filter(|dir| !dir.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        } else {
            return self.watch_policy_file(path);
        };
        for name in [MAIN_FILE, DROP_IN_DIR] {
            self.add_policy_watch(base, Some(OsString::from(name)), true)?;
        }
        self.watch_drop_in_directory(&base.join(DROP_IN_DIR))
    }

    /// Watches a `policy.d` directory if it exists (absent is fine: its parent's watch sees it
    /// appear).
    fn watch_drop_in_directory(&mut self, dir: &Path) -> Result<(), WatchError> {
        let descriptor = match self.watches.add(dir, POLICY_MASK) {
            Ok(descriptor) => descriptor,
            Err(error) if vanished(&error) => return Ok(()),
            Err(source) => {
                return Err(WatchError::AddWatch {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        let id = descriptor.get_watch_descriptor_id();
        // A directory already watched for all its files stays so.
        if !matches!(
            self.targets.get(&id),
            Some(Target::PolicyDirectory { only: None, .. })
        ) {
            self.targets
                .insert(id, Target::DropInDirectory(dir.to_path_buf()));
        }
        Ok(())
    }

    /// The number of active watches.
    pub fn watch_count(&self) -> usize {
        self.targets.len()
    }

    /// Waits for the next change. Cancel-safe (events already read stay queued).
    pub async fn next_event(&mut self) -> Result<WatchEvent, WatchError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            let raw = if self.unwatched.is_empty() {
                self.stream.next().await
            } else {
                tokio::select! {
                    raw = self.stream.next() => raw,
                    _ = tokio::time::sleep_until(self.next_poll) => {
                        self.poll_unwatched();
                        continue;
                    }
                }
            };
            let raw = match raw {
                Some(Ok(raw)) => raw,
                Some(Err(source)) => return Err(WatchError::Read { source }),
                None => return Err(WatchError::Closed),
            };
            self.translate(raw.wd.get_watch_descriptor_id(), raw.mask, raw.name)?;
        }
    }

    /// One poll of the cgroups without a watch: the removed ones are reported, the watch is
    /// retried (a cgroup watched again is listed like a new one), and for the rest their new
    /// subdirectories and a possible xattr change are reported.
    fn poll_unwatched(&mut self) {
        self.next_poll = tokio::time::Instant::now() + POLL_EVERY;
        self.polling_round = true;
        let polled: Vec<PathBuf> = self.unwatched.iter().cloned().collect();
        for dir in polled {
            if !self.unwatched.contains(&dir) {
                continue; // re-watched with an ancestor this round
            }
            if !dir.is_dir() {
                self.forget_cgroup(&dir);
                continue;
            }
            self.unwatched.remove(&dir);
            let mut created = Vec::new();
            // Watches what it can; whatever is still refused goes back on the polled set.
            let _ = self.add_cgroup_subtree(dir.clone(), &mut created, false);
            self.pending.extend(
                created
                    .into_iter()
                    .filter(|new| *new != dir)
                    .map(|dir| WatchEvent::CgroupCreated { dir }),
            );
            if self.unwatched.contains(&dir) {
                self.pending
                    .push_back(WatchEvent::CgroupAttributesChanged { dir });
            }
        }
        self.polling_round = false;
    }

    /// After a queue overflow: re-lists every watched cgroup tree, reporting what was removed
    /// and watching and reporting what was created while events were lost.
    fn rescan_cgroups(&mut self) {
        let gone: Vec<PathBuf> = self
            .cgroup_dirs
            .keys()
            .chain(self.unwatched.iter())
            .filter(|dir| !dir.is_dir())
            .cloned()
            .collect();
        for dir in gone {
            self.forget_cgroup(&dir);
        }
        let known: Vec<PathBuf> = self.cgroup_dirs.keys().cloned().collect();
        for dir in known {
            let Ok(children) = std::fs::read_dir(&dir) else {
                continue;
            };
            for child in children.flatten() {
                let path = child.path();
                let is_dir = child.file_type().map(|kind| kind.is_dir()).unwrap_or(false);
                if !is_dir || self.cgroup_dirs.contains_key(&path) || self.unwatched.contains(&path)
                {
                    continue;
                }
                let mut created = Vec::new();
                let _ = self.add_cgroup_subtree(path, &mut created, false);
                self.pending.extend(
                    created
                        .into_iter()
                        .map(|dir| WatchEvent::CgroupCreated { dir }),
                );
            }
        }
    }

    fn add_policy_watch(
        &mut self,
        dir: &Path,
        only: Option<OsString>,
        drop_ins: bool,
    ) -> Result<(), WatchError> {
        let descriptor =
            self.watches
                .add(dir, POLICY_MASK)
                .map_err(|source| WatchError::AddWatch {
                    path: dir.to_path_buf(),
                    source,
                })?;
        // inotify gives the same descriptor for the same directory: merge what is watched.
        let existing = self.targets.get(&descriptor.get_watch_descriptor_id());
        let drop_ins = drop_ins
            || matches!(
                existing,
                Some(Target::PolicyDirectory { drop_ins: true, .. })
            );
        let only = match (existing, only) {
            (Some(Target::PolicyDirectory { only: None, .. }), _) | (_, None) => None,
            (
                Some(Target::PolicyDirectory {
                    only: Some(names), ..
                }),
                Some(name),
            ) => {
                let mut names = names.clone();
                names.push(name);
                Some(names)
            }
            (_, Some(name)) => Some(vec![name]),
        };
        self.targets.insert(
            descriptor.get_watch_descriptor_id(),
            Target::PolicyDirectory {
                dir: dir.to_path_buf(),
                only,
                drop_ins,
            },
        );
        Ok(())
    }

    /// Watches `top` and its subdirectories; `strict` makes a failure on `top` an error.
    fn add_cgroup_subtree(
        &mut self,
        top: PathBuf,
        watched: &mut Vec<PathBuf>,
        strict: bool,
    ) -> Result<(), WatchError> {
        let mut pending = vec![top];
        let mut first = strict;
        while let Some(dir) = pending.pop() {
            let is_top = std::mem::replace(&mut first, false);
            if self.cgroup_dirs.contains_key(&dir) || self.unwatched.contains(&dir) {
                continue;
            }
            match self.watches.add(&dir, self.cgroup_mask) {
                Ok(descriptor) => {
                    let id = descriptor.get_watch_descriptor_id();
                    self.targets.insert(id, Target::Cgroup(dir.clone()));
                    self.cgroup_dirs.insert(dir.clone(), id);
                }
                Err(error) if !is_top && vanished(&error) => continue,
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => {
                    if self.unwatched.is_empty() && !self.polling_round {
                        self.next_poll = tokio::time::Instant::now() + POLL_EVERY;
                        self.pending
                            .push_back(WatchEvent::Polling { dir: dir.clone() });
                    }
                    self.unwatched.insert(dir.clone());
                }
                Err(source) => return Err(WatchError::AddWatch { path: dir, source }),
            }
            // List after the watch exists, so nothing created in between is missed.
            if let Ok(children) = std::fs::read_dir(&dir) {
                let mut subdirs: Vec<PathBuf> = children
                    .flatten()
                    .filter(|child| child.file_type().map(|kind| kind.is_dir()).unwrap_or(false))
                    .map(|child| child.path())
                    .collect();
                subdirs.sort_unstable_by(|left, right| right.cmp(left));
                pending.extend(subdirs);
            }
            watched.push(dir);
        }
        Ok(())
    }

    fn translate(
        &mut self,
        id: i32,
        mask: EventMask,
        name: Option<OsString>,
    ) -> Result<(), WatchError> {
        if mask.contains(EventMask::Q_OVERFLOW) {
            self.rescan_cgroups();
            self.pending.push_back(WatchEvent::Overflow);
            return Ok(());
        }
        let Some(target) = self.targets.get(&id).cloned() else {
            return Ok(()); // a watch removed a moment ago
        };
        if mask.contains(EventMask::IGNORED) {
            self.targets.remove(&id);
        }
        match target {
            Target::Cgroup(dir) => self.translate_cgroup(&dir, mask, name)?,
            Target::PolicyDirectory {
                dir,
                only,
                drop_ins,
            } => {
                if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
                    self.pending
                        .push_back(WatchEvent::PolicyChanged { path: dir });
                } else if let Some(name) = name {
                    let is_drop_in_dir =
                        drop_ins && name == DROP_IN_DIR && mask.contains(EventMask::ISDIR);
                    if is_drop_in_dir && mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                        // Its files may be there already (moved in, or written before the
                        // watch): report it as a change.
                        self.watch_drop_in_directory(&dir.join(&name))?;
                    }
                    let counts = if mask.contains(EventMask::CREATE) {
                        is_drop_in_dir
                    } else {
                        only.as_ref().is_none_or(|names| names.contains(&name))
                    };
                    if counts {
                        self.pending.push_back(WatchEvent::PolicyChanged {
                            path: dir.join(name),
                        });
                    }
                }
            }
            Target::DropInDirectory(dir) => {
                if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
                    // Moved away, it is no longer this policy's drop-in directory.
                    self.targets.remove(&id);
                    self.pending
                        .push_back(WatchEvent::PolicyChanged { path: dir });
                } else if let Some(name) = name {
                    let toml = Path::new(&name)
                        .extension()
                        .is_some_and(|ext| ext == "toml");
                    if toml && !mask.contains(EventMask::CREATE) {
                        self.pending.push_back(WatchEvent::PolicyChanged {
                            path: dir.join(name),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn translate_cgroup(
        &mut self,
        dir: &Path,
        mask: EventMask,
        name: Option<OsString>,
    ) -> Result<(), WatchError> {
        let is_dir = mask.contains(EventMask::ISDIR);
        match name {
            Some(name) if is_dir && mask.contains(EventMask::CREATE) => {
                // Report what did get watched even if a watch failed (ENOSPC) on the way.
                let mut watched = Vec::new();
                let result = self.add_cgroup_subtree(dir.join(name), &mut watched, false);
                self.pending.extend(
                    watched
                        .into_iter()
                        .map(|dir| WatchEvent::CgroupCreated { dir }),
                );
                result?;
            }
            Some(name) if is_dir && mask.contains(EventMask::DELETE) => {
                self.forget_cgroup(&dir.join(name));
            }
            Some(name)
                if mask.contains(EventMask::MODIFY)
                    && (name == "cgroup.procs" || name == "cgroup.threads") =>
            {
                self.pending.push_back(WatchEvent::CgroupMembershipChanged {
                    dir: dir.to_path_buf(),
                });
            }
            None if mask.contains(EventMask::ATTRIB) => {
                self.pending.push_back(WatchEvent::CgroupAttributesChanged {
                    dir: dir.to_path_buf(),
                });
            }
            None if mask.intersects(EventMask::DELETE_SELF | EventMask::IGNORED) => {
                self.forget_cgroup(dir);
            }
            _ => {}
        }
        Ok(())
    }

    /// Reports a removed cgroup once (its parent's IN_DELETE and its own IN_DELETE_SELF may
    /// both arrive) and drops the watches on it and below it.
    fn forget_cgroup(&mut self, dir: &Path) {
        let below: Vec<PathBuf> = self
            .cgroup_dirs
            .keys()
            .chain(self.unwatched.iter())
            .filter(|path| path.starts_with(dir))
            .cloned()
            .collect();
        for path in below {
            if let Some(id) = self.cgroup_dirs.remove(&path) {
                self.targets.remove(&id);
            }
            self.unwatched.remove(&path);
            self.pending
                .push_back(WatchEvent::CgroupRemoved { dir: path });
        }
    }
}

fn vanished(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR)
    )
}
