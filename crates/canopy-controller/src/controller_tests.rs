//! Unit tests of the controller's pure logic against an in-memory task source and a recording
//! backend: clamping, thread rules, inheritance, moves, focus delays (paused time), reload,
//! rescans, and the tasks it must leave alone.

use std::sync::Arc;
use std::time::Duration;

use canopy_sys::cgroup::Focus;
use tokio::time::Instant;

use crate::controller::{Controller, ControllerConfig};
use crate::event::Event;
use crate::testing::{class, FakeSource, RecordingBackend, TestPlan, TestRule};

const APP: &str = "user.slice/user-1000.slice/user@1000.service/app.slice/app-player.scope";
const OTHER: &str = "user.slice/user-1000.slice/user@1000.service/session.slice";

/// A controller over `src` with `plan`, `backend` and `config`, after its first rescan.
fn started(
    plan: TestPlan,
    backend: RecordingBackend,
    src: FakeSource,
    config: ControllerConfig,
) -> Controller<RecordingBackend, FakeSource> {
    let mut c = Controller::new(Arc::new(plan), backend, src, config);
    c.rescan();
    c
}

/// [`started`] with the desktop plan and the default configuration.
fn desktop_with(
    src: FakeSource,
    backend: RecordingBackend,
) -> Controller<RecordingBackend, FakeSource> {
    started(
        TestPlan::desktop(),
        backend,
        src,
        ControllerConfig::default(),
    )
}

/// [`desktop_with`] a default backend.
fn controller(src: FakeSource) -> Controller<RecordingBackend, FakeSource> {
    desktop_with(src, RecordingBackend::default())
}

fn applied(c: &Controller<RecordingBackend, FakeSource>, tid: u32) -> Option<String> {
    c.backend().applied.get(&tid).cloned()
}

/// Moves `tid` into `cgroup` in the source, and tells the controller as inotify would.
fn moved(c: &mut Controller<RecordingBackend, FakeSource>, tid: u32, cgroup: &str) {
    c.source_mut().move_to(tid, cgroup);
    c.handle(
        Event::CgroupMembershipChanged {
            cgroup: cgroup.into(),
        },
        Instant::now(),
    );
}

fn fork(parent: u32, parent_tgid: u32, child: u32, child_tgid: u32) -> Event {
    Event::Fork {
        parent_tid: parent,
        parent_tgid,
        child_tid: child,
        child_tgid,
        timestamp_ns: Some(canopy_sys::monotonic_now_ns()),
    }
}

#[test]
fn rule_and_thread_rules_pick_classes() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.thread(100, 101, "audio-out");
    src.thread(100, 102, "indexer");
    src.thread(100, 103, "worker");
    let c = controller(src);
    assert_eq!(applied(&c, 100).as_deref(), Some("USER_INITIATED"));
    assert_eq!(applied(&c, 101).as_deref(), Some("USER_INTERACTIVE"));
    assert_eq!(applied(&c, 102).as_deref(), Some("BACKGROUND"));
    assert_eq!(applied(&c, 103).as_deref(), Some("USER_INITIATED"));
}

#[test]
fn new_thread_then_rename_rematches_thread_rules() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    let mut c = controller(src);
    let now = Instant::now();
    c.source_mut().thread(100, 105, "player");
    c.handle(fork(100, 100, 105, 100), now);
    assert_eq!(applied(&c, 105).as_deref(), Some("USER_INITIATED"));
    c.handle(
        Event::Comm {
            tid: 105,
            tgid: 100,
            comm: Some("audio-mix".into()),
            timestamp_ns: None,
        },
        now,
    );
    assert_eq!(applied(&c, 105).as_deref(), Some("USER_INTERACTIVE"));
}

#[test]
fn minimized_state_demotes_and_base_restores() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.thread(100, 101, "audio-out");
    let mut c = controller(src);
    c.request_state(APP, "minimized", Instant::now()).unwrap();
    assert_eq!(applied(&c, 100).as_deref(), Some("BACKGROUND"));
    assert_eq!(applied(&c, 101).as_deref(), Some("BACKGROUND"));
    assert_eq!(c.stats.counters.demotions_by_ceiling, 2);
    assert_eq!(c.backend().groups[APP].weight, Some(20));
    // A rename while minimized asks for more than the ceiling allows: refused, not applied.
    c.handle(
        Event::Comm {
            tid: 101,
            tgid: 100,
            comm: Some("audio-2".into()),
            timestamp_ns: None,
        },
        Instant::now(),
    );
    assert_eq!(applied(&c, 101).as_deref(), Some("BACKGROUND"));
    c.request_state(APP, "base", Instant::now()).unwrap();
    assert_eq!(applied(&c, 100).as_deref(), Some("USER_INITIATED"));
    assert_eq!(applied(&c, 101).as_deref(), Some("USER_INTERACTIVE"));
    assert!(c.request_state(APP, "bogus", Instant::now()).is_err());
    assert!(c.request_state(OTHER, "minimized", Instant::now()).is_err());
}

#[test]
fn refused_promotion_is_counted_for_ctl_tag() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    let mut c = controller(src);
    c.request_state(APP, "minimized", Instant::now()).unwrap();
    assert_eq!(applied(&c, 100).as_deref(), Some("BACKGROUND"));
    let before = c.stats.counters.refused_promotions;
    c.request_tag(100, false, "USER_INTERACTIVE").unwrap();
    assert_eq!(applied(&c, 100).as_deref(), Some("BACKGROUND"));
    assert_eq!(c.stats.counters.refused_promotions, before + 1);
    assert!(c.request_tag(100, false, "NOPE").is_err());
    assert!(c.request_tag(999, true, "BACKGROUND").is_err());
}

#[test]
fn move_into_minimized_group_reclamps_at_once_and_back_restores() {
    let mini = "user.slice/user-1000.slice/user@1000.service/app.slice/app-mini.scope";
    let mut src = FakeSource::default();
    src.spawn(100, "player", OTHER);
    src.thread(100, 101, "audio-out");
    src.spawn(200, "sleeper", mini);
    let mut c = controller(src);
    c.request_state(mini, "minimized", Instant::now()).unwrap();
    assert_eq!(applied(&c, 101).as_deref(), Some("USER_INTERACTIVE"));
    moved(&mut c, 100, mini);
    assert_eq!(applied(&c, 100).as_deref(), Some("BACKGROUND"));
    assert_eq!(applied(&c, 101).as_deref(), Some("BACKGROUND"));
    moved(&mut c, 100, OTHER);
    assert_eq!(applied(&c, 101).as_deref(), Some("USER_INTERACTIVE"));
}

#[test]
fn a_sub_cgroup_of_a_scope_is_governed_by_the_scope_group() {
    // Issue 10 Deliver 4 in the daemon: nearest-ancestor ownership, also for scopes made later.
    let sub = format!("{APP}/sub/deeper");
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.thread(100, 101, "audio-out");
    src.spawn(200, "player", OTHER);
    // the scopes themselves, as a policy's `app-*.scope` owns them (the test glob's `*`
    // crosses `/`; canopy-policy's does not)
    let mut plan = TestPlan::desktop();
    plan.groups[0].cgroup = "user.slice/user-*.slice/user@*.service/app.slice/app-*.scope".into();
    let mut c = started(
        plan,
        RecordingBackend::default(),
        src,
        ControllerConfig::default(),
    );
    c.request_state(APP, "minimized", Instant::now()).unwrap();
    assert_eq!(applied(&c, 101).as_deref(), Some("BACKGROUND"));
    // Escaping into a cgroup below the minimized scope does not lift the ceiling.
    moved(&mut c, 100, &sub);
    assert_eq!(applied(&c, 100).as_deref(), Some("BACKGROUND"));
    assert_eq!(applied(&c, 101).as_deref(), Some("BACKGROUND"));
    // The sub-cgroup got no group instance of its own; the scope's state rules it.
    assert_eq!(c.group_state(&sub), None);
    c.request_state(APP, "base", Instant::now()).unwrap();
    assert_eq!(applied(&c, 101).as_deref(), Some("USER_INTERACTIVE"));
    // A scope created after load, and a cgroup below it: the scope's group, default state.
    let late = "user.slice/user-1000.slice/user@1000.service/app.slice/app-late.scope";
    let late_sub = format!("{late}/sub");
    moved(&mut c, 200, &late_sub);
    assert_eq!(applied(&c, 200).as_deref(), Some("USER_INITIATED"));
    c.request_state(late, "minimized", Instant::now()).unwrap();
    assert_eq!(applied(&c, 200).as_deref(), Some("BACKGROUND"));
}

#[test]
fn inherit_tags_forked_children_and_survives_exec() {
    let mut src = FakeSource::default();
    src.spawn(100, "wine-preloader", OTHER);
    let mut c = controller(src);
    c.source_mut().spawn(300, "wine-preloader", OTHER);
    c.handle(fork(100, 100, 300, 300), Instant::now());
    c.source_mut().rename(300, "game.exe");
    c.handle(
        Event::Exec {
            tid: 300,
            tgid: 300,
            timestamp_ns: None,
        },
        Instant::now(),
    );
    assert_eq!(applied(&c, 300).as_deref(), Some("USER_INTERACTIVE"));
    let e = c.explain(300).unwrap();
    assert_eq!(e[0].inherited_rule.as_deref(), Some("wine"));
    // Without inherit, a child of player that execs into something unmatched is left alone.
    c.source_mut().spawn(400, "player", APP);
    c.handle(fork(1, 1, 400, 400), Instant::now());
    c.source_mut().spawn(401, "player", APP);
    c.handle(fork(400, 400, 401, 401), Instant::now());
    assert_eq!(
        applied(&c, 401).as_deref(),
        Some("USER_INITIATED"),
        "a fork is its parent until it execs"
    );
    c.source_mut().rename(401, "helper");
    c.handle(
        Event::Exec {
            tid: 401,
            tgid: 401,
            timestamp_ns: None,
        },
        Instant::now(),
    );
    assert_eq!(applied(&c, 401), None);
}

#[test]
fn exit_forgets_and_kernel_and_realtime_threads_are_left_alone() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.spawn(2, "kthreadd", "");
    src.processes.get_mut(&2).unwrap().kthread = true;
    src.spawn(50, "player", APP);
    src.threads.get_mut(&50).unwrap().2 = 1; // SCHED_FIFO
    let mut plan = TestPlan::desktop();
    plan.default_class = Some(class::UTILITY);
    let mut c = started(
        plan,
        RecordingBackend::default(),
        src,
        ControllerConfig::default(),
    );
    assert_eq!(applied(&c, 2), None);
    assert_eq!(applied(&c, 50), None);
    assert_eq!(
        c.explain(50).unwrap()[0].why,
        "RT/DL task: left alone by the policy"
    );
    assert_eq!(applied(&c, 100).as_deref(), Some("USER_INITIATED"));
    c.source_mut().exit(100);
    c.handle(
        Event::Exit {
            tid: 100,
            tgid: 100,
            timestamp_ns: None,
        },
        Instant::now(),
    );
    assert_eq!(applied(&c, 100), None);
    assert!(c.explain(100).is_err());
}

#[test]
fn kernel_and_realtime_threads_are_managed_when_the_policy_says_so() {
    let mut src = FakeSource::default();
    src.spawn(2, "kthreadd", "");
    src.processes.get_mut(&2).unwrap().kthread = true;
    src.spawn(50, "player", APP);
    src.threads.get_mut(&50).unwrap().2 = 1; // SCHED_FIFO
    let mut plan = TestPlan::desktop();
    plan.default_class = Some(class::UTILITY);
    plan.manage_kernel_threads = true;
    plan.manage_realtime = true;
    let mut c = Controller::new(
        Arc::new(plan.clone()),
        RecordingBackend::default(),
        src,
        ControllerConfig::default(),
    );
    assert!(
        c.backend().manage_realtime,
        "the backend is told to change RT/DL tasks"
    );
    c.rescan();
    assert_eq!(applied(&c, 2).as_deref(), Some("UTILITY"));
    assert_eq!(applied(&c, 50).as_deref(), Some("USER_INITIATED"));
    let rt = &c.explain(50).unwrap()[0];
    assert_eq!(rt.skipped, None);
    assert_eq!(rt.effective.as_deref(), Some("USER_INITIATED"));
    assert!(
        rt.why
            .contains("an RT/DL task, managed because the policy sets leave_realtime = false"),
        "{}",
        rt.why
    );
    assert!(c.explain(2).unwrap()[0]
        .why
        .contains("a kernel thread, managed because the policy sets leave_kernel_threads = false"),);

    // A reload back to the defaults leaves both alone again: released (originals restored).
    plan.manage_kernel_threads = false;
    plan.manage_realtime = false;
    plan.tag = "defaults".into();
    c.install_plan(Arc::new(plan));
    assert!(!c.backend().manage_realtime);
    assert_eq!(applied(&c, 2), None);
    assert_eq!(applied(&c, 50), None);
    assert_eq!(
        c.explain(50).unwrap()[0].why,
        "RT/DL task: left alone by the policy"
    );
    assert_eq!(
        c.explain(2).unwrap()[0].why,
        "kernel thread: left alone by the policy"
    );
}

#[test]
fn in_scx_mode_explain_says_a_managed_realtime_task_keeps_its_rt_policy() {
    let mut src = FakeSource::default();
    src.spawn(50, "player", APP);
    src.threads.get_mut(&50).unwrap().2 = 1; // SCHED_FIFO
    let mut plan = TestPlan::desktop();
    plan.manage_realtime = true;
    let backend = RecordingBackend {
        scx: true,
        ..Default::default()
    };
    let mut c = started(plan, backend, src, ControllerConfig::default());
    let why = &c.explain(50).unwrap()[0].why;
    assert!(
        why.contains("keeps its RT/DL policy, which sched_ext does not schedule"),
        "{why}"
    );
}

#[test]
fn a_task_turned_realtime_after_first_sight_is_left_alone_and_explained_so() {
    let mut src = FakeSource::default();
    src.spawn(50, "player", APP);
    // Fair when the controller reads its policy, RT/DL by the time the backend applies.
    let backend = RecordingBackend {
        realtime_now: [50].into_iter().collect(),
        ..Default::default()
    };
    let mut c = desktop_with(src, backend);
    assert_eq!(applied(&c, 50), None);
    let e = &c.explain(50).unwrap()[0];
    assert_eq!(e.why, "RT/DL task: left alone by the policy");
    assert_eq!(e.effective, None);
    assert_eq!(
        c.stats.counters.apply_errors, 0,
        "normal flow, not an error"
    );
    assert_eq!(c.snapshot(Instant::now()).tasks_managed, 0);
}

#[test]
fn overrun_rescan_finds_missed_tasks_and_drops_dead_ones() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    let mut c = controller(src);
    for tid in 101..=150 {
        c.source_mut().thread(100, tid, "audio");
    }
    c.source_mut().spawn(500, "player", APP);
    c.source_mut().exit(100);
    c.handle(Event::Overrun, Instant::now());
    assert_eq!(applied(&c, 100), None);
    assert_eq!(applied(&c, 500).as_deref(), Some("USER_INITIATED"));
    assert_eq!(c.stats.counters.rescans, 2);
}

#[test]
fn reload_reevaluates_everything_and_failed_reload_keeps_the_old_plan() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.spawn(200, "make", OTHER);
    let mut c = controller(src);
    assert_eq!(applied(&c, 200), None);
    c.record_reload_error("policy.toml:3:1: error: unknown class".into());
    let snap = c.snapshot(Instant::now());
    assert!(snap.policy_error.unwrap().contains("unknown class"));
    assert_eq!(snap.policy_hash, "test:desktop");
    let mut plan = TestPlan::desktop();
    plan.tag = "v2".into();
    plan.rules.insert(
        0,
        TestRule {
            name: "build".into(),
            comm: "make".into(),
            class: class::BACKGROUND,
            threads: vec![],
            inherit: false,
        },
    );
    plan.rules.retain(|r| r.name != "player");
    c.install_plan(Arc::new(plan));
    assert_eq!(applied(&c, 200).as_deref(), Some("BACKGROUND"));
    assert_eq!(
        applied(&c, 100),
        None,
        "no longer matched, no default: released"
    );
    let snap = c.snapshot(Instant::now());
    assert!(snap.policy_error.is_none());
    assert_eq!(snap.policy_hash, "test:v2");
}

#[tokio::test(start_paused = true)]
async fn focus_xattr_focused_at_once_unfocused_after_the_delay() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    let mut c = controller(src);
    let t0 = Instant::now();
    c.handle(
        Event::FocusChanged {
            cgroup: APP.into(),
            focus: Focus::Focused,
        },
        t0,
    );
    assert_eq!(c.group_state(APP).as_deref(), Some("focused"));
    c.handle(
        Event::FocusChanged {
            cgroup: APP.into(),
            focus: Focus::InactiveSince {
                monotonic_us: 123_456_789,
            },
        },
        Instant::now(),
    );
    assert_eq!(
        c.group_state(APP).as_deref(),
        Some("focused"),
        "not before the delay"
    );
    let deadline = c.next_deadline().expect("pending unfocus");
    tokio::time::sleep(Duration::from_secs(29)).await;
    c.fire_timers(Instant::now());
    assert_eq!(c.group_state(APP).as_deref(), Some("focused"));
    tokio::time::sleep_until(deadline).await;
    c.fire_timers(Instant::now());
    assert_eq!(c.group_state(APP).as_deref(), Some("unfocused"));
    assert_eq!(applied(&c, 100).as_deref(), Some("UTILITY"));
    // Regaining focus cancels a pending unfocus and applies at once.
    c.handle(
        Event::FocusChanged {
            cgroup: APP.into(),
            focus: Focus::Focused,
        },
        Instant::now(),
    );
    assert_eq!(applied(&c, 100).as_deref(), Some("USER_INITIATED"));
    c.handle(
        Event::FocusChanged {
            cgroup: APP.into(),
            focus: Focus::InactiveSince { monotonic_us: 5 },
        },
        Instant::now(),
    );
    c.handle(
        Event::FocusChanged {
            cgroup: APP.into(),
            focus: Focus::Focused,
        },
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    c.fire_timers(Instant::now());
    assert_eq!(c.group_state(APP).as_deref(), Some("focused"));
    assert!(c.next_deadline().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_removed_focus_xattr_puts_the_group_back_in_its_default_state() {
    let mut plan = TestPlan::desktop();
    plan.groups[0].default_state = Some("focused".into());
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    let mut c = started(
        plan,
        RecordingBackend::default(),
        src,
        ControllerConfig::default(),
    );
    let focus = |c: &mut Controller<RecordingBackend, FakeSource>, focus| {
        c.handle(
            Event::FocusChanged {
                cgroup: APP.into(),
                focus,
            },
            Instant::now(),
        )
    };
    focus(&mut c, Focus::InactiveSince { monotonic_us: 5 });
    tokio::time::sleep(Duration::from_secs(31)).await;
    c.fire_timers(Instant::now());
    assert_eq!(c.group_state(APP).as_deref(), Some("unfocused"));
    focus(&mut c, Focus::NotSet);
    assert_eq!(c.group_state(APP).as_deref(), Some("focused"));
    assert_eq!(applied(&c, 100).as_deref(), Some("USER_INITIATED"));
    // A state users may not leave is not left by removing the xattr either.
    c.request_state(APP, "locked", Instant::now()).unwrap();
    focus(&mut c, Focus::NotSet);
    assert_eq!(c.group_state(APP).as_deref(), Some("locked"));
}

#[test]
fn explain_says_why() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.thread(100, 101, "audio-out");
    let mut c = controller(src);
    c.request_state(APP, "minimized", Instant::now()).unwrap();
    let e = c.explain(101).unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].requested.as_deref(), Some("USER_INTERACTIVE"));
    assert_eq!(e[0].effective.as_deref(), Some("BACKGROUND"));
    assert!(e[0].why.contains("ceiling"), "{}", e[0].why);
    assert!(e[0].why.contains("thread rule audio*"), "{}", e[0].why);
    assert_eq!(c.explain(100).unwrap().len(), 2);
}

#[test]
fn scope_limits_management() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.spawn(200, "player", OTHER);
    let config = ControllerConfig {
        cgroup_scope: Some("user.slice/user-1000.slice/user@1000.service/app.slice".into()),
        ..Default::default()
    };
    let mut c = started(
        TestPlan::desktop(),
        RecordingBackend::default(),
        src,
        config,
    );
    assert!(applied(&c, 100).is_some());
    assert!(applied(&c, 200).is_none());
    moved(&mut c, 200, APP);
    assert!(applied(&c, 200).is_some());
}

#[test]
fn reconcile_catches_moves_no_event_reported() {
    let mini = "user.slice/user-1000.slice/user@1000.service/app.slice/app-mini.scope";
    let mut src = FakeSource::default();
    src.spawn(100, "player", OTHER);
    src.spawn(200, "sleeper", mini);
    let mut c = controller(src);
    c.request_state(mini, "minimized", Instant::now()).unwrap();
    assert_eq!(c.reconcile_cgroups(), 0);
    c.source_mut().move_to(100, mini);
    assert_eq!(c.reconcile_cgroups(), 1);
    assert_eq!(applied(&c, 100).as_deref(), Some("BACKGROUND"));
}

#[test]
fn a_fork_replaces_stale_state_left_by_a_lost_exit() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.spawn(300, "make", APP);
    let mut c = controller(src);
    assert_eq!(applied(&c, 300), None);
    // 300 exits without an exit event; its pid is reused by a child of player.
    c.source_mut().exit(300);
    c.source_mut().spawn(300, "player", APP);
    c.handle(fork(100, 100, 300, 300), Instant::now());
    assert_eq!(applied(&c, 300).as_deref(), Some("USER_INITIATED"));
    assert_eq!(c.explain(300).unwrap()[0].comm, "player");
}

#[test]
fn a_late_exit_spares_the_newer_task_under_its_reused_id() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.spawn(300, "make", APP);
    let mut c = controller(src);
    let exit_ns = canopy_sys::monotonic_now_ns();
    // 300 exited at exit_ns; before its (batched) exit record is read, player forks a child
    // that gets id 300 again.
    c.source_mut().exit(300);
    c.source_mut().spawn(300, "player", APP);
    c.handle(
        Event::Fork {
            parent_tid: 100,
            parent_tgid: 100,
            child_tid: 300,
            child_tgid: 300,
            timestamp_ns: Some(exit_ns + 1000),
        },
        Instant::now(),
    );
    assert_eq!(applied(&c, 300).as_deref(), Some("USER_INITIATED"));
    c.handle(
        Event::Exit {
            tid: 300,
            tgid: 300,
            timestamp_ns: Some(exit_ns),
        },
        Instant::now(),
    );
    assert_eq!(
        applied(&c, 300).as_deref(),
        Some("USER_INITIATED"),
        "the old task's exit must not forget the new one"
    );
    // The new task's own exit does.
    c.source_mut().exit(300);
    c.handle(
        Event::Exit {
            tid: 300,
            tgid: 300,
            timestamp_ns: Some(canopy_sys::monotonic_now_ns()),
        },
        Instant::now(),
    );
    assert_eq!(applied(&c, 300), None);
}

#[test]
fn a_rename_handled_before_its_fork_is_kept() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    let mut c = controller(src);
    let fork_ns = canopy_sys::monotonic_now_ns();
    c.source_mut().thread(100, 105, "audio-1");
    // The rename (later on another CPU) is handled first.
    c.handle(
        Event::Comm {
            tid: 105,
            tgid: 100,
            comm: Some("audio-1".into()),
            timestamp_ns: Some(fork_ns + 1000),
        },
        Instant::now(),
    );
    assert_eq!(applied(&c, 105).as_deref(), Some("USER_INTERACTIVE"));
    c.handle(
        Event::Fork {
            parent_tid: 100,
            parent_tgid: 100,
            child_tid: 105,
            child_tgid: 100,
            timestamp_ns: Some(fork_ns),
        },
        Instant::now(),
    );
    assert_eq!(
        applied(&c, 105).as_deref(),
        Some("USER_INTERACTIVE"),
        "the older fork must not undo the rename"
    );
}

#[test]
fn ring_buffer_moves_reclamp_at_once_and_are_counted_by_source() {
    let mini = "user.slice/user-1000.slice/user@1000.service/app.slice/app-mini.scope";
    let mut src = FakeSource::default();
    src.spawn(100, "player", OTHER);
    src.thread(100, 101, "audio-out");
    src.spawn(200, "sleeper", mini);
    let mut c = controller(src);
    c.request_state(mini, "minimized", Instant::now()).unwrap();
    assert_eq!(applied(&c, 101).as_deref(), Some("USER_INTERACTIVE"));
    c.source_mut().move_to(100, mini);
    c.handle(
        Event::TaskMoved {
            tid: 100,
            threadgroup: true,
            timestamp_ns: Some(canopy_sys::monotonic_now_ns()),
        },
        Instant::now(),
    );
    assert_eq!(applied(&c, 101).as_deref(), Some("BACKGROUND"));
    // A second report of the same move (e.g. a thread of it) changes and counts nothing.
    c.handle(
        Event::TaskMoved {
            tid: 101,
            threadgroup: false,
            timestamp_ns: None,
        },
        Instant::now(),
    );
    let snap = c.snapshot(Instant::now());
    assert_eq!(snap.counters.moves_ring_buffer, 1);
    assert_eq!(snap.counters.moves_inotify, 0);
    assert!(snap.move_latency_p99_us.is_some());
    moved(&mut c, 100, OTHER);
    assert_eq!(applied(&c, 101).as_deref(), Some("USER_INTERACTIVE"));
    assert_eq!(c.snapshot(Instant::now()).counters.moves_inotify, 1);
}

#[test]
fn the_daemons_own_process_is_never_demoted() {
    let mini = "user.slice/user-1000.slice/user@1000.service/app.slice/app-mini.scope";
    for scx in [true, false] {
        let mut src = FakeSource::default();
        src.spawn(300, "canopy", mini);
        src.thread(300, 301, "canopy-moves");
        let config = ControllerConfig {
            daemon_pid: Some(300),
            ..Default::default()
        };
        let backend = RecordingBackend {
            scx,
            ..Default::default()
        };
        let mut c = started(TestPlan::desktop(), backend, src, config);
        c.request_state(mini, "minimized", Instant::now()).unwrap();
        let explained = c.explain(300).unwrap();
        if scx {
            // The daemon's class (USER_INITIATED), whatever the group's ceiling.
            assert_eq!(applied(&c, 300).as_deref(), Some("USER_INITIATED"));
            assert_eq!(applied(&c, 301).as_deref(), Some("USER_INITIATED"));
            assert!(
                explained[0].why.contains("canopy's own process"),
                "{explained:?}"
            );
        } else {
            // Left as the service manager started it.
            assert_eq!(applied(&c, 300), None);
            assert_eq!(applied(&c, 301), None);
            assert_eq!(explained[0].skipped, Some(crate::controller::Skip::Daemon));
        }
    }
}

/// In scx mode the schedulers clamp every enqueue by the task's cgroup state, so the map keeps
/// the request and a state change or move needs no map write; the daemon's own view (explain,
/// counters) still shows the clamp. Fallback applies the clamped class itself.
#[test]
fn scx_maps_keep_the_request_and_the_schedulers_clamp() {
    for scx in [true, false] {
        let mut src = FakeSource::default();
        src.spawn(100, "player", APP);
        src.thread(100, 101, "audio-out");
        let backend = RecordingBackend {
            scx,
            ..Default::default()
        };
        let mut c = desktop_with(src, backend);
        assert_eq!(applied(&c, 101).as_deref(), Some("USER_INTERACTIVE"));
        let calls = c.backend().apply_calls;
        c.request_state(APP, "minimized", Instant::now()).unwrap();
        let explained = c.explain(100).unwrap();
        let audio = explained.iter().find(|e| e.tid == 101).unwrap();
        assert_eq!(audio.effective.as_deref(), Some("BACKGROUND"), "{audio:?}");
        assert_eq!(c.stats.counters.demotions_by_ceiling, 2);
        if scx {
            assert_eq!(applied(&c, 101).as_deref(), Some("USER_INTERACTIVE"));
            assert_eq!(applied(&c, 100).as_deref(), Some("USER_INITIATED"));
            assert_eq!(
                c.backend().apply_calls,
                calls,
                "no map write for a state change"
            );
        } else {
            assert_eq!(applied(&c, 101).as_deref(), Some("BACKGROUND"));
            assert_eq!(applied(&c, 100).as_deref(), Some("BACKGROUND"));
        }
        // A new request while clamped reaches the map in scx mode (the schedulers need it for
        // the next move out), and changes nothing in fallback (still BACKGROUND).
        c.request_tag(101, false, "UTILITY").unwrap();
        let expected = if scx { "UTILITY" } else { "BACKGROUND" };
        assert_eq!(applied(&c, 101).as_deref(), Some(expected));
        c.request_state(APP, "base", Instant::now()).unwrap();
        assert_eq!(applied(&c, 101).as_deref(), Some("UTILITY"));
        assert_eq!(applied(&c, 100).as_deref(), Some("USER_INITIATED"));
    }
}

/// When the schedulers do not hold a group's limits (the map write failed), scx mode writes the
/// clamped class itself: the daemon never relies on a clamp that is not there.
#[test]
fn scx_writes_the_clamped_class_when_the_group_entry_is_missing() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.thread(100, 101, "audio-out");
    let backend = RecordingBackend {
        scx: true,
        refuse_groups: true,
        ..Default::default()
    };
    let mut c = desktop_with(src, backend);
    c.request_state(APP, "minimized", Instant::now()).unwrap();
    assert_eq!(applied(&c, 101).as_deref(), Some("BACKGROUND"));
    assert!(c.stats.counters.apply_errors >= 1);
}

/// Attack 7 (threat model): a reload whose re-apply fails left a placeholder class id in the
/// task, and `explain` (any user, on their own task) and `status` (anyone) indexed the plan's
/// class table with it and panicked. Now both answer: the task's class is "not applied yet",
/// and the next successful apply clears it.
#[test]
fn explain_and_status_after_a_reload_whose_reapply_failed_do_not_panic() {
    let mut src = FakeSource::default();
    src.spawn(10, "player", APP);
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let backend = RecordingBackend {
        refuse_tasks: refuse.clone(),
        ..Default::default()
    };
    let mut c = desktop_with(src, backend);
    assert_eq!(c.applied_class(10).as_deref(), Some("USER_INITIATED"));

    refuse.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut plan = TestPlan::desktop();
    plan.tag = "reloaded".into();
    plan.rules[0].class = class::BACKGROUND;
    c.install_plan(Arc::new(plan));
    let explained = c.explain(10).unwrap();
    assert_eq!(explained[0].effective, None);
    assert!(
        explained[0]
            .why
            .contains("not applied yet under the reloaded policy"),
        "{}",
        explained[0].why
    );
    let status = c.snapshot(Instant::now());
    assert!(
        status.tasks_by_class.is_empty(),
        "{:?}",
        status.tasks_by_class
    );
    assert_eq!(c.applied_class(10), None);

    refuse.store(false, std::sync::atomic::Ordering::Relaxed);
    c.rescan();
    assert_eq!(c.applied_class(10).as_deref(), Some("BACKGROUND"));
    assert_eq!(
        c.explain(10).unwrap()[0].effective.as_deref(),
        Some("BACKGROUND")
    );
}

#[test]
fn switching_backend_applies_every_task_and_group_afresh_and_leaves_the_daemon_alone() {
    // The scx schedulers were ejected: the fallback backend takes every task and group over.
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.thread(100, 101, "audio-out");
    src.spawn(200, "canopy", OTHER);
    let config = ControllerConfig {
        daemon_pid: Some(200),
        mode_reason: "scx requested".into(),
        ..ControllerConfig::default()
    };
    let scx = RecordingBackend {
        scx: true,
        ..RecordingBackend::default()
    };
    let mut c = started(TestPlan::desktop(), scx, src, config);
    assert_eq!(
        c.backend().applied.get(&200).map(String::as_str),
        Some("USER_INITIATED")
    );
    let old = c.switch_backend(RecordingBackend::default(), "scx ejected".into());
    assert!(old.scx);
    assert_eq!(c.mode(), crate::backend::Mode::Fallback);
    assert_eq!(applied(&c, 100).as_deref(), Some("USER_INITIATED"));
    assert_eq!(applied(&c, 101).as_deref(), Some("USER_INTERACTIVE"));
    assert!(
        c.backend().groups.contains_key(APP),
        "{:?}",
        c.backend().groups
    );
    // canopy's own threads keep what the service manager gave them in fallback mode
    assert_eq!(applied(&c, 200), None);
    assert_eq!(c.snapshot(Instant::now()).mode_reason, "scx ejected");
}

/// Issue 11 (a rescan keeps the old original of a reused tid): a rescan that finds a tracked
/// tid started by another thread (its predecessor exited unseen, events were lost, and the
/// kernel reused the id) forgets the old task, so the backend drops what it kept for it (the
/// fallback backend: the dead thread's original attributes), and takes the new thread as new:
/// matched by its own name, in its own process, applied afresh. The same thread seen again is
/// left alone.
#[test]
fn a_rescan_takes_a_reused_tid_as_a_new_thread() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.thread(100, 101, "audio-out");
    src.starts.insert(101, 1_000);
    let mut c = controller(src);
    assert_eq!(applied(&c, 101).as_deref(), Some("USER_INTERACTIVE"));
    c.rescan();
    assert!(c.backend().forgotten.is_empty(), "the same thread again");

    // 101 exits unseen; another thread of the player, started later, gets its id.
    c.source_mut().exit(101);
    c.source_mut().thread(100, 101, "indexer");
    c.source_mut().starts.insert(101, 5_000);
    c.rescan();
    assert_eq!(
        c.backend().forgotten,
        vec![101],
        "the old thread's state was kept"
    );
    assert_eq!(applied(&c, 101).as_deref(), Some("BACKGROUND"));

    // And again, by a thread of another process.
    c.source_mut().exit(101);
    c.source_mut().spawn(300, "wine-preloader", OTHER);
    c.source_mut().thread(300, 101, "wine-worker");
    c.source_mut().starts.insert(101, 9_000);
    c.rescan();
    assert_eq!(c.backend().forgotten, vec![101, 101]);
    assert_eq!(applied(&c, 101).as_deref(), Some("USER_INTERACTIVE"));
    let explained = c.explain(101).unwrap();
    assert_eq!(explained[0].comm, "wine-worker");
    assert!(
        c.explain(100).unwrap().iter().all(|e| e.tid != 101),
        "tid 101 still counted among the player's threads"
    );
}

/// A reload whose plan starts to match on command lines reads each known process's command line
/// alone (one read, not all of its facts again); while no rule matches on them they are not read.
#[test]
fn a_reload_that_starts_matching_command_lines_reads_only_them() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    src.spawn(200, "shell", OTHER);
    for tgid in [100, 200] {
        src.processes.get_mut(&tgid).unwrap().cmdline = format!("prog{tgid} --job").into();
    }
    let mut plan = TestPlan::desktop();
    plan.uses_cmdline = false;
    let mut c = started(
        plan.clone(),
        RecordingBackend::default(),
        src,
        ControllerConfig::default(),
    );
    assert_eq!(
        c.known_cmdline(100).as_deref(),
        Some(""),
        "read while unused"
    );
    let facts_reads = c.source_mut().facts_reads;

    plan.uses_cmdline = true;
    plan.tag = "cmdline rules".into();
    c.install_plan(Arc::new(plan));
    assert_eq!(
        c.source_mut().facts_reads,
        facts_reads,
        "all facts read again"
    );
    assert_eq!(c.source_mut().cmdline_reads, 2);
    assert_eq!(c.known_cmdline(100).as_deref(), Some("prog100 --job"));
    assert_eq!(c.known_cmdline(200).as_deref(), Some("prog200 --job"));
}

/// A controller over `src` with the desktop plan whose new processes wait 100 ms.
fn with_newborn_wait(src: FakeSource) -> Controller<RecordingBackend, FakeSource> {
    started(
        TestPlan::desktop(),
        RecordingBackend::default(),
        src,
        ControllerConfig {
            newborn_wait: Some(Duration::from_millis(100)),
            ..Default::default()
        },
    )
}

fn exec(tgid: u32) -> Event {
    Event::Exec {
        tid: tgid,
        tgid,
        timestamp_ns: None,
    }
}

fn exit(tid: u32, tgid: u32) -> Event {
    Event::Exit {
        tid,
        tgid,
        timestamp_ns: Some(canopy_sys::monotonic_now_ns()),
    }
}

#[test]
fn a_new_process_that_exits_within_its_wait_is_never_handled() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    let mut c = with_newborn_wait(src);
    let calls = c.backend().apply_calls;
    let start = Instant::now();
    c.source_mut().spawn(300, "player", APP);
    c.handle(fork(100, 100, 300, 300), start);
    c.source_mut().rename(300, "helper");
    c.handle(exec(300), start + Duration::from_millis(2));
    assert_eq!(applied(&c, 300), None, "waits");
    assert_eq!(c.next_deadline(), Some(start + Duration::from_millis(100)));
    c.handle(exit(300, 300), start + Duration::from_millis(40));
    assert_eq!(c.next_deadline(), None, "nothing left to wait for");
    c.fire_timers(start + Duration::from_millis(200));
    assert_eq!(applied(&c, 300), None);
    assert_eq!(c.backend().apply_calls, calls, "no class written for it");
    assert_eq!(c.task_count(), 1, "only the parent is tracked");
    assert_eq!(
        (
            c.stats.counters.newborns_waited,
            c.stats.counters.newborns_gone
        ),
        (1, 1)
    );
    // What the backend kept for it from the fork (fallback: its inherited original) goes.
    assert_eq!(c.backend().forgotten, vec![300]);
}

#[test]
fn a_new_process_that_outlives_its_wait_is_handled_in_order_with_its_exec() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", OTHER);
    let mut c = with_newborn_wait(src);
    let start = Instant::now();
    c.source_mut().spawn(300, "player", OTHER);
    c.handle(fork(100, 100, 300, 300), start);
    c.source_mut().rename(300, "wine-game");
    c.handle(exec(300), start + Duration::from_millis(5));
    c.fire_timers(start + Duration::from_millis(99));
    assert_eq!(applied(&c, 300), None, "still waiting");
    c.fire_timers(start + Duration::from_millis(100));
    // The fork (player's facts), then the exec (its own rule now).
    assert_eq!(applied(&c, 300).as_deref(), Some("USER_INTERACTIVE"));
    let e = c.explain(300).unwrap();
    assert_eq!(e[0].rule.as_deref(), Some("wine"));
    assert_eq!(e[0].inherited_rule, None);
    assert_eq!(c.stats.counters.newborns_gone, 0);
}

#[test]
fn a_child_that_inherits_a_rule_is_handled_at_once() {
    // Its parent may be gone when a wait would end (`sh -c 'cmd &'`), and the inheritance is
    // read from the parent: no wait.
    let mut src = FakeSource::default();
    src.spawn(100, "wine-preloader", OTHER);
    let mut c = with_newborn_wait(src);
    c.source_mut().spawn(300, "wine-preloader", OTHER);
    c.handle(fork(100, 100, 300, 300), Instant::now());
    assert_eq!(applied(&c, 300).as_deref(), Some("USER_INTERACTIVE"));
    assert_eq!(
        c.explain(300).unwrap()[0].inherited_rule.as_deref(),
        Some("wine")
    );
    assert_eq!(c.stats.counters.newborns_waited, 0);
}

#[test]
fn a_thread_a_child_or_a_request_ends_the_wait_at_once_and_a_rename_waits() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", OTHER);
    let mut c = with_newborn_wait(src);
    let start = Instant::now();
    // A thread, as the kernel reports it (the parent named is the process's parent): the
    // process is handled, then its new thread.
    c.source_mut().spawn(300, "player", OTHER);
    c.handle(fork(100, 100, 300, 300), start);
    c.source_mut().thread(300, 301, "audio-out");
    c.handle(fork(100, 100, 301, 300), start);
    assert_eq!(applied(&c, 300).as_deref(), Some("USER_INITIATED"));
    assert_eq!(applied(&c, 301).as_deref(), Some("USER_INTERACTIVE"));
    assert!(
        c.backend().forgotten.is_empty(),
        "{:?}",
        c.backend().forgotten
    );
    // The new process inherits its originals from its creator; the thread from its process's
    // leader, not from the process's parent the event names (fallback: player's originals
    // would be restored on the thread at the end).
    assert_eq!(c.backend().inherited, vec![(300, 100), (301, 300)]);
    // A rename of a waiting process waits with it, and is applied in order when it ends.
    c.source_mut().spawn(400, "player", OTHER);
    c.handle(fork(100, 100, 400, 400), start);
    c.source_mut().rename(400, "wine-renamed");
    c.handle(
        Event::Comm {
            tid: 400,
            tgid: 400,
            comm: Some("wine-renamed".into()),
            timestamp_ns: None,
        },
        start,
    );
    assert_eq!(applied(&c, 400), None, "the rename waits too");
    c.fire_timers(start + Duration::from_millis(100));
    // The fork (player: USER_INITIATED), then the rename (wine's rule: USER_INTERACTIVE).
    assert_eq!(applied(&c, 400).as_deref(), Some("USER_INTERACTIVE"));
    assert_eq!(c.explain(400).unwrap()[0].comm, "wine-renamed");
    // A child process of a waiting one: the parent first, and the child waits in turn.
    c.source_mut().spawn(500, "player", OTHER);
    c.handle(fork(100, 100, 500, 500), start);
    c.source_mut().spawn(501, "player", OTHER);
    c.handle(fork(500, 500, 501, 501), start);
    assert_eq!(applied(&c, 500).as_deref(), Some("USER_INITIATED"));
    assert_eq!(applied(&c, 501), None, "the child waits");
    // A request naming a waiting process.
    assert_eq!(c.explain(501).unwrap()[0].rule.as_deref(), Some("player"));
    assert_eq!(applied(&c, 501).as_deref(), Some("USER_INITIATED"));
    assert_eq!(c.next_deadline(), None);
    assert_eq!(c.stats.counters.newborns_waited, 4);
}

#[test]
fn without_a_wait_a_fork_is_handled_at_once() {
    let mut src = FakeSource::default();
    src.spawn(100, "player", APP);
    let mut c = controller(src);
    c.source_mut().spawn(300, "player", APP);
    c.handle(fork(100, 100, 300, 300), Instant::now());
    assert_eq!(applied(&c, 300).as_deref(), Some("USER_INITIATED"));
    assert_eq!(c.stats.counters.newborns_waited, 0);
}
