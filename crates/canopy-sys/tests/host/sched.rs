//! sched_setattr/getattr against the live kernel: BATCH + nice 4 + a custom slice applied to a
//! child and read back, uclamp refused on a kernel without UCLAMP_TASK reported exactly once
//! (and honoured where the kernel has it), the original restored, real-time tasks left
//! alone, and an exited task `Gone`.

use std::time::Duration;

use canopy_sys::sched::{
    get_attributes, set_attributes, Applied, FairPolicy, SchedApplier, SchedAttr, SchedPolicy,
    SchedRequest, Support, SCHED_FLAG_RESET_ON_FORK,
};
use canopy_sys::Outcome;

use crate::support::ChildGuard;

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(['.', '-', '+'])
        .map(|part| part.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

fn batch_request() -> SchedRequest {
    SchedRequest {
        policy: FairPolicy::Batch,
        nice: 4,
        slice: Some(Duration::from_millis(12)),
        uclamp_min: Some(0),
        uclamp_max: Some(512),
        reset_on_fork: true,
        override_realtime: false,
    }
}

#[test]
fn batch_nice_slice_apply_read_back_and_restore() {
    let child = ChildGuard::sleeper();
    let pid = child.pid();
    let applier = SchedApplier::new();
    let original = get_attributes(pid).unwrap().expect_done("getattr");
    assert_eq!(original.policy(), SchedPolicy::Other);

    let applied = applier
        .apply(pid, &batch_request())
        .unwrap()
        .expect_done("apply");
    let Applied::Changed {
        previous,
        uclamp_skipped,
        slice_skipped,
        newly_unsupported,
    } = applied
    else {
        panic!("a fair task was left alone: {applied:?}");
    };
    assert_eq!(previous, original, "apply hands back what was there");

    let now = get_attributes(pid)
        .unwrap()
        .expect_done("getattr after apply");
    assert_eq!(now.policy(), SchedPolicy::Batch);
    assert_eq!(now.sched_nice, 4);
    assert_ne!(now.sched_flags & SCHED_FLAG_RESET_ON_FORK, 0);

    let capabilities = applier.capabilities();
    eprintln!(
        "kernel capabilities: {capabilities:?}; slice read back {} ns",
        now.sched_runtime
    );
    if kernel_at_least(6, 12) {
        assert_eq!(capabilities.custom_slice, Support::Supported);
        assert!(!slice_skipped);
        assert_eq!(now.sched_runtime, 12_000_000, "the 12 ms slice reads back");
    } else {
        assert_eq!(capabilities.custom_slice, Support::Unsupported);
        assert!(slice_skipped && newly_unsupported.custom_slice);
    }
    match capabilities.uclamp {
        Support::Unsupported => {
            // This host: no CONFIG_UCLAMP_TASK. Reported, not fatal.
            assert!(uclamp_skipped && newly_unsupported.uclamp);
        }
        Support::Supported => {
            assert!(!uclamp_skipped && !newly_unsupported.uclamp);
            assert_eq!((now.sched_util_min, now.sched_util_max), (0, 512));
        }
        Support::Unknown => panic!("uclamp support was not detected"),
    }

    assert_eq!(applier.restore(pid, &original).unwrap(), Outcome::Done(()));
    let restored = get_attributes(pid)
        .unwrap()
        .expect_done("getattr after restore");
    assert_eq!(restored.policy(), SchedPolicy::Other);
    assert_eq!(restored.sched_nice, original.sched_nice);
    assert_eq!(restored.sched_flags & SCHED_FLAG_RESET_ON_FORK, 0);
    assert_eq!(restored.sched_runtime, original.sched_runtime);
}

#[test]
fn a_missing_feature_is_reported_once() {
    let applier = SchedApplier::new();
    let first = ChildGuard::sleeper();
    let second = ChildGuard::sleeper();
    let report = |pid| match applier
        .apply(pid, &batch_request())
        .unwrap()
        .expect_done("apply")
    {
        Applied::Changed {
            newly_unsupported,
            uclamp_skipped,
            ..
        } => (newly_unsupported, uclamp_skipped),
        other => panic!("unexpected {other:?}"),
    };
    let (first_news, first_skipped) = report(first.pid());
    let (second_news, second_skipped) = report(second.pid());
    assert_eq!(first_skipped, second_skipped, "the same kernel both times");
    assert!(
        !second_news.any(),
        "the second call has nothing new to say: {second_news:?}"
    );
    assert_eq!(
        first_news.uclamp, first_skipped,
        "a skipped uclamp is reported by the first call"
    );
    // A request without uclamp never mentions it.
    let plain = SchedRequest {
        uclamp_min: None,
        uclamp_max: None,
        ..batch_request()
    };
    let third = ChildGuard::sleeper();
    match applier
        .apply(third.pid(), &plain)
        .unwrap()
        .expect_done("apply")
    {
        Applied::Changed {
            uclamp_skipped,
            newly_unsupported,
            ..
        } => {
            assert!(!uclamp_skipped && !newly_unsupported.any());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn realtime_tasks_are_left_alone_unless_asked() {
    let child = ChildGuard::sleeper();
    let pid = child.pid();
    let fifo = SchedAttr {
        sched_policy: SchedPolicy::Fifo.to_raw(),
        sched_priority: 1,
        ..SchedAttr::default()
    };
    assert_eq!(set_attributes(pid, &fifo).unwrap(), Outcome::Done(()));
    let applier = SchedApplier::new();
    let left = applier
        .apply(pid, &batch_request())
        .unwrap()
        .expect_done("apply");
    assert!(
        matches!(left, Applied::LeftRealtimeAlone { current } if current.policy() == SchedPolicy::Fifo)
    );
    assert_eq!(
        get_attributes(pid).unwrap().expect_done("getattr").policy(),
        SchedPolicy::Fifo
    );

    let forced = SchedRequest {
        override_realtime: true,
        ..batch_request()
    };
    let changed = applier.apply(pid, &forced).unwrap().expect_done("apply");
    let Applied::Changed { previous, .. } = changed else {
        panic!("not changed: {changed:?}")
    };
    assert_eq!(previous.policy(), SchedPolicy::Fifo);
    assert_eq!(
        get_attributes(pid).unwrap().expect_done("getattr").policy(),
        SchedPolicy::Batch
    );
    // And back to FIFO 1 from the remembered attributes.
    assert_eq!(applier.restore(pid, &previous).unwrap(), Outcome::Done(()));
    let back = get_attributes(pid).unwrap().expect_done("getattr");
    assert_eq!((back.policy(), back.sched_priority), (SchedPolicy::Fifo, 1));
}

#[test]
fn an_exited_task_is_gone() {
    let pid = ChildGuard::sleeper().reap();
    assert_eq!(get_attributes(pid).unwrap(), Outcome::Gone);
    assert_eq!(
        SchedApplier::new().apply(pid, &batch_request()).unwrap(),
        Outcome::Gone
    );
    assert_eq!(
        set_attributes(pid, &SchedAttr::default()).unwrap(),
        Outcome::Gone
    );
}

#[test]
fn invalid_requests_carry_the_value() {
    let error = SchedApplier::new()
        .apply(
            1,
            &SchedRequest {
                nice: -21,
                ..SchedRequest::default()
            },
        )
        .unwrap_err();
    assert!(error.to_string().contains("nice = -21"), "{error}");
}

#[test]
fn probe_finds_out_before_any_task_is_touched() {
    let applier = SchedApplier::new();
    let capabilities = applier.probe().unwrap();
    assert_ne!(capabilities.uclamp, Support::Unknown);
    assert_ne!(capabilities.custom_slice, Support::Unknown);
    if kernel_at_least(6, 12) {
        assert_eq!(capabilities.custom_slice, Support::Supported);
    }
    eprintln!("probed: {capabilities:?}");
    // Nothing is left to report by the first real apply.
    let child = ChildGuard::sleeper();
    match applier
        .apply(child.pid(), &batch_request())
        .unwrap()
        .expect_done("apply")
    {
        Applied::Changed {
            newly_unsupported,
            uclamp_skipped,
            ..
        } => {
            assert!(!newly_unsupported.any());
            assert_eq!(uclamp_skipped, capabilities.uclamp == Support::Unsupported);
        }
        other => panic!("unexpected {other:?}"),
    }
}
