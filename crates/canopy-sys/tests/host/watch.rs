//! inotify on a real cgroup2 subtree and a real policy directory: cgroups created (also
//! nested ones made before their parent's watch could exist), removed, their xattr changed,
//! a task moved in; policy files written in place and replaced by rename; a policy path's
//! `policy.d` drop-ins, also when the directory appears after the watch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use canopy_sys::cgroup::{Cgroup, Focus};
use canopy_sys::watch::{WatchEvent, Watcher};

use crate::support::{ChildGuard, ScratchCgroup, TempDir};

/// The watch tests run one at a time: one of them lowers root's inotify watch limit for a
/// moment, which would refuse the others' watches.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The next event, failing the test after 5 s.
async fn next(watcher: &mut Watcher) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), watcher.next_event())
        .await
        .expect("an inotify event within 5 s")
        .expect("inotify works")
}

/// Reads events until one equals `wanted`; returns the events skipped on the way.
async fn expect_event(watcher: &mut Watcher, wanted: WatchEvent) -> Vec<WatchEvent> {
    let mut skipped = Vec::new();
    loop {
        let event = next(watcher).await;
        if event == wanted {
            return skipped;
        }
        skipped.push(event);
        assert!(skipped.len() < 100, "never saw {wanted:?}; saw {skipped:?}");
    }
}

#[tokio::test]
async fn cgroup_tree_create_attrib_move_remove() {
    let _serial = SERIAL.lock().await;
    let scratch = ScratchCgroup::new("watch");
    let top = scratch.cgroup.dir().to_path_buf();
    let existing = top.join("existing");
    std::fs::create_dir(&existing).unwrap();

    let mut watcher = Watcher::new().unwrap();
    let watched = watcher.watch_cgroup_tree(&top).unwrap();
    assert_eq!(
        watched,
        [top.clone(), existing.clone()],
        "existing subtree is watched"
    );

    // A new cgroup with a child made right away: both are reported, both watched.
    let app = top.join("app.scope");
    let nested = app.join("nested");
    std::fs::create_dir(&app).unwrap();
    std::fs::create_dir(&nested).unwrap();
    let mut created = Vec::new();
    while created.len() < 2 {
        match next(&mut watcher).await {
            WatchEvent::CgroupCreated { dir } => created.push(dir),
            other => panic!("unexpected {other:?}"),
        }
    }
    created.sort();
    assert_eq!(created, [app.clone(), nested.clone()]);
    assert_eq!(watcher.watch_count(), 4);

    // The focus xattr on the app's cgroup: IN_ATTRIB, reported once, for that cgroup.
    let app_cgroup = Cgroup::from_dir(&app);
    if app_cgroup.set_focus(Focus::Focused).is_ok() {
        let skipped = expect_event(
            &mut watcher,
            WatchEvent::CgroupAttributesChanged { dir: app.clone() },
        )
        .await;
        assert!(skipped.is_empty(), "{skipped:?}");
    } else {
        eprintln!("this kernel refuses user.* xattrs on cgroupfs; IN_ATTRIB not tested here");
    }

    // A task moved into a watched cgroup (a write to cgroup.procs).
    let child = ChildGuard::sleeper();
    assert!(!app_cgroup.move_process(child.pid()).unwrap().is_gone());
    let skipped = expect_event(
        &mut watcher,
        WatchEvent::CgroupMembershipChanged { dir: app.clone() },
    )
    .await;
    assert!(
        skipped
            .iter()
            .all(|event| matches!(event, WatchEvent::CgroupAttributesChanged { .. })),
        "{skipped:?}"
    );
    scratch.move_to_root(child.pid());

    // Removal, bottom-up, each reported once.
    std::fs::remove_dir(&nested).unwrap();
    std::fs::remove_dir(&app).unwrap();
    let mut removed = Vec::new();
    while removed.len() < 2 {
        match next(&mut watcher).await {
            WatchEvent::CgroupRemoved { dir } => removed.push(dir),
            WatchEvent::CgroupMembershipChanged { .. }
            | WatchEvent::CgroupAttributesChanged { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(removed, [nested, app]);
    // No duplicate removal reports trail behind.
    let late = tokio::time::timeout(Duration::from_millis(300), watcher.next_event()).await;
    assert!(
        !matches!(late, Ok(Ok(WatchEvent::CgroupRemoved { .. }))),
        "a removal was reported twice: {late:?}"
    );
    assert_eq!(watcher.watch_count(), 2);
}

fn write_by_rename(path: &Path, content: &str) {
    let temporary = path.with_extension("tmp~");
    std::fs::write(&temporary, content).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test]
async fn policy_file_in_place_and_rename_replace() {
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("/tmp");
    let policy = dir.path().join("canopy.toml");
    std::fs::write(&policy, "# v1\n").unwrap();
    let mut watcher = Watcher::new().unwrap();
    watcher.watch_policy_file(&policy).unwrap();

    // An unrelated file in the same directory is ignored ...
    std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    // ... a rename-replace (vim, most editors) is seen under the policy's own name ...
    write_by_rename(&policy, "# v2\n");
    assert_eq!(
        next(&mut watcher).await,
        WatchEvent::PolicyChanged {
            path: policy.clone()
        }
    );
    // ... and so is an in-place write (close after writing).
    std::fs::write(&policy, "# v3\n").unwrap();
    assert_eq!(
        next(&mut watcher).await,
        WatchEvent::PolicyChanged {
            path: policy.clone()
        }
    );
    // Removing it is a change too (the daemon keeps the old policy and says so).
    std::fs::remove_file(&policy).unwrap();
    assert_eq!(
        next(&mut watcher).await,
        WatchEvent::PolicyChanged {
            path: policy.clone()
        }
    );
}

#[tokio::test]
async fn policy_drop_in_directory() {
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("/tmp");
    let mut watcher = Watcher::new().unwrap();
    watcher.watch_policy_directory(dir.path()).unwrap();
    let drop_in: PathBuf = dir.path().join("50-games.toml");
    write_by_rename(&drop_in, "# games\n");
    // The temporary file's close-after-write comes first, then the rename onto the real name.
    let mut paths = Vec::new();
    while !paths.contains(&drop_in) {
        match next(&mut watcher).await {
            WatchEvent::PolicyChanged { path } => paths.push(path),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn policy_path_follows_its_drop_in_directory() {
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("/tmp");
    let main = dir.path().join("policy.toml");
    std::fs::write(&main, "# main\n").unwrap();
    let mut watcher = Watcher::new().unwrap();
    watcher.watch_policy(&main).unwrap();

    // policy.d made after the watch: reported, and followed from then on.
    let drop_in_dir = dir.path().join("policy.d");
    std::fs::create_dir(&drop_in_dir).unwrap();
    assert_eq!(
        next(&mut watcher).await,
        WatchEvent::PolicyChanged {
            path: drop_in_dir.clone()
        }
    );
    // Files that are not part of the policy are ignored (a non-.toml file in policy.d, another
    // .toml beside policy.toml, an editor's temporary file); a drop-in written by rename is seen.
    std::fs::write(drop_in_dir.join("README"), "x").unwrap();
    std::fs::write(dir.path().join("notes.toml"), "x").unwrap();
    let drop_in = drop_in_dir.join("50-games.toml");
    write_by_rename(&drop_in, "# games\n");
    assert_eq!(
        next(&mut watcher).await,
        WatchEvent::PolicyChanged {
            path: drop_in.clone()
        }
    );
    // The main file still counts.
    std::fs::write(&main, "# main v2\n").unwrap();
    assert_eq!(
        next(&mut watcher).await,
        WatchEvent::PolicyChanged { path: main.clone() }
    );
    // A removed drop-in, then the whole policy.d removed.
    std::fs::remove_file(&drop_in).unwrap();
    assert_eq!(
        next(&mut watcher).await,
        WatchEvent::PolicyChanged {
            path: drop_in.clone()
        }
    );
    std::fs::remove_file(drop_in_dir.join("README")).unwrap();
    std::fs::remove_dir(&drop_in_dir).unwrap();
    assert_eq!(
        next(&mut watcher).await,
        WatchEvent::PolicyChanged {
            path: drop_in_dir.clone()
        }
    );

    // The directory form: DIR means DIR/policy.toml and DIR/policy.d/*.toml.
    let other = TempDir::new("/tmp");
    std::fs::create_dir(other.path().join("policy.d")).unwrap();
    let mut watcher = Watcher::new().unwrap();
    watcher.watch_policy(other.path()).unwrap();
    std::fs::write(other.path().join("unrelated.toml"), "x").unwrap();
    let drop_in = other.path().join("policy.d/10-base.toml");
    std::fs::write(&drop_in, "# base\n").unwrap();
    assert_eq!(
        next(&mut watcher).await,
        WatchEvent::PolicyChanged { path: drop_in }
    );
}

/// An overflow a user can cause (moves between two of its own cgroups, each a write to
/// `cgroup.procs`) does not end the watching: the cgroup created while events were being lost is
/// reported before [`WatchEvent::Overflow`] (the tree is re-listed) and watched from then on.
#[tokio::test]
async fn an_overflow_relists_the_tree_and_watching_goes_on() {
    let _serial = SERIAL.lock().await;
    let scratch = ScratchCgroup::new("overflow");
    let top = scratch.cgroup.dir().to_path_buf();
    let (a, b) = (
        Cgroup::from_dir(top.join("a")),
        Cgroup::from_dir(top.join("b")),
    );
    std::fs::create_dir(a.dir()).unwrap();
    std::fs::create_dir(b.dir()).unwrap();
    let mut watcher = Watcher::new().unwrap();
    watcher.watch_cgroup_tree(&top).unwrap();

    // Fill the queue without reading it (alternating targets: inotify merges only identical
    // consecutive events), then make a cgroup whose creation is lost.
    let queue: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let child = ChildGuard::sleeper();
    for index in 0..=queue {
        let target = if index % 2 == 0 { &a } else { &b };
        assert!(!target.move_process(child.pid()).unwrap().is_gone());
    }
    let late = top.join("made-while-overflowing");
    std::fs::create_dir(&late).unwrap();

    let mut seen_late = false;
    loop {
        match next(&mut watcher).await {
            WatchEvent::CgroupCreated { dir } if dir == late => seen_late = true,
            WatchEvent::Overflow => break,
            _ => {}
        }
    }
    assert!(
        seen_late,
        "the cgroup made during the overflow was not reported before it"
    );
    // What the watcher follows is the re-listed tree (a caller reads xattrs from it rather
    // than walking cgroupfs again).
    let mut followed: Vec<&Path> = watcher.cgroups().collect();
    followed.sort();
    let mut wanted = vec![top.as_path(), a.dir(), b.dir(), late.as_path()];
    wanted.sort();
    assert_eq!(followed, wanted);
    // Still watching, the late cgroup included.
    let after = late.join("after");
    std::fs::create_dir(&after).unwrap();
    expect_event(
        &mut watcher,
        WatchEvent::CgroupCreated { dir: after.clone() },
    )
    .await;
    std::fs::remove_dir(&after).unwrap();
    expect_event(&mut watcher, WatchEvent::CgroupRemoved { dir: after }).await;
    scratch.move_to_root(child.pid());
}

/// inotify watches root's processes hold now (each inotify fd's `wd:` lines in fdinfo).
fn root_inotify_watches() -> usize {
    let mut count = 0;
    for process in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = process.path();
        let root_owned = std::fs::read_to_string(path.join("status"))
            .ok()
            .and_then(|status| {
                let uids = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))?
                    .to_string();
                Some(uids.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        let Ok(fds) = std::fs::read_dir(path.join("fd")) else {
            continue;
        };
        if !root_owned {
            continue;
        }
        for fd in fds.flatten() {
            let is_inotify = std::fs::read_link(fd.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:inotify");
            if !is_inotify {
                continue;
            }
            let info = path.join("fdinfo").join(fd.file_name());
            count += std::fs::read_to_string(info)
                .unwrap_or_default()
                .lines()
                .filter(|line| line.starts_with("inotify wd:"))
                .count();
        }
    }
    count
}

/// Puts `fs.inotify.max_user_watches` back when dropped (also when the test fails).
struct WatchLimit(String);

impl WatchLimit {
    const PATH: &str = "/proc/sys/fs/inotify/max_user_watches";

    fn lower_to(limit: usize) -> WatchLimit {
        let old = std::fs::read_to_string(Self::PATH).unwrap();
        std::fs::write(Self::PATH, limit.to_string()).unwrap();
        WatchLimit(old)
    }
}

impl Drop for WatchLimit {
    fn drop(&mut self) {
        std::fs::write(Self::PATH, self.0.trim()).unwrap();
    }
}

/// `ENOSPC` on a watch (root's watch limit reached) turns those cgroups to polling instead of
/// ending the watcher: a cgroup made below an unwatched one is still reported (by the poll), and
/// once watches are available again the poll re-watches them. The limit is lowered for a few
/// milliseconds only (it is shared by every root process on the host) and restored.
#[tokio::test]
async fn enospc_on_a_watch_polls_instead_and_rewatches_later() {
    let _serial = SERIAL.lock().await;
    let scratch = ScratchCgroup::new("enospc");
    let top = scratch.cgroup.dir().to_path_buf();
    let subdirs: Vec<PathBuf> = (0..8).map(|i| top.join(format!("s{i}"))).collect();
    for dir in &subdirs {
        std::fs::create_dir(dir).unwrap();
    }
    let mut watcher = Watcher::new().unwrap();
    let new_below = subdirs[7].join("new");
    {
        let _limit = WatchLimit::lower_to(root_inotify_watches() + 1);
        watcher.watch_cgroup_tree(&top).unwrap();
        // Made while its parent has no watch (the last subdirectory is the last one tried).
        std::fs::create_dir(&new_below).unwrap();
    }
    assert!(watcher.polled_count() > 0, "no watch was refused");
    let polling = next(&mut watcher).await;
    assert!(matches!(polling, WatchEvent::Polling { .. }), "{polling:?}");
    let started = std::time::Instant::now();
    expect_event(
        &mut watcher,
        WatchEvent::CgroupCreated {
            dir: new_below.clone(),
        },
    )
    .await;
    let found_in = started.elapsed();
    assert!(found_in <= canopy_sys::watch::POLL_EVERY + Duration::from_secs(1));
    assert_eq!(watcher.polled_count(), 0, "the poll did not re-watch");
    // Watched again: a new cgroup is reported by inotify, well before the next poll.
    let later = subdirs[7].join("later");
    std::fs::create_dir(&later).unwrap();
    let started = std::time::Instant::now();
    expect_event(&mut watcher, WatchEvent::CgroupCreated { dir: later }).await;
    assert!(started.elapsed() < Duration::from_millis(500));
    eprintln!("ENOSPC: a cgroup made below an unwatched one reported by the poll in {found_in:?}");
}
