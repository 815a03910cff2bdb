//! `sched_setattr`/`sched_getattr`: applying a fair-class policy, nice, a custom slice and
//! uclamp to one thread, remembering what the kernel refuses, and restoring what was there.
//!
//! libc's `sched_attr` stops at 48 bytes (SCHED_ATTR_SIZE_VER0) and lacks the uclamp fields, so
//! [`SchedAttr`] is our own 56-byte (VER1) layout, passed through `libc::syscall`.
//!
//! Kernel differences handled here, each detected once and remembered by [`SchedApplier`]:
//! - uclamp: a kernel without `CONFIG_UCLAMP_TASK` refuses `SCHED_FLAG_UTIL_CLAMP_*`
//!   (`EOPNOTSUPP`, some versions `EINVAL`); the request is retried without uclamp and the
//!   first [`Applied::Changed`] that found out says so in `newly_unsupported`.
//! - custom slices: since 6.12 `sched_runtime` on a SCHED_OTHER/BATCH/IDLE task is a slice
//!   request (clamped to 0.1..100 ms) and reads back as the task's slice; older kernels
//!   ignore it. The first request with a slice reads the task back to find out.
//!
//! Real-time and deadline tasks are left alone unless the request says otherwise, and
//! `SCHED_FLAG_KEEP_PARAMS` is never used: on 6.12+ it copies the current slice into
//! `sched_runtime` and so silently turns every task into a custom-slice task.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::{is_gone_error, Outcome, Pid};

/// `SCHED_ATTR_SIZE_VER1`: the size of `struct sched_attr` with the uclamp fields.
pub const SCHED_ATTR_SIZE_VER1: u32 = 56;

/// `SCHED_FLAG_RESET_ON_FORK`: children start with the default policy and nice.
pub const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;
/// `SCHED_FLAG_RECLAIM` (deadline tasks only).
pub const SCHED_FLAG_RECLAIM: u64 = 0x02;
/// `SCHED_FLAG_DL_OVERRUN` (deadline tasks only).
pub const SCHED_FLAG_DL_OVERRUN: u64 = 0x04;
/// `SCHED_FLAG_KEEP_POLICY`: keep the current policy.
pub const SCHED_FLAG_KEEP_POLICY: u64 = 0x08;
/// `SCHED_FLAG_KEEP_PARAMS`: keep the current parameters (see the module comment on why
/// canopy does not use it).
pub const SCHED_FLAG_KEEP_PARAMS: u64 = 0x10;
/// `SCHED_FLAG_UTIL_CLAMP_MIN`: set `sched_util_min`.
pub const SCHED_FLAG_UTIL_CLAMP_MIN: u64 = 0x20;
/// `SCHED_FLAG_UTIL_CLAMP_MAX`: set `sched_util_max`.
pub const SCHED_FLAG_UTIL_CLAMP_MAX: u64 = 0x40;

/// The largest uclamp value (`SCHED_CAPACITY_SCALE`).
pub const UCLAMP_MAX_VALUE: u32 = 1024;
/// The shortest custom slice the kernel accepts (it clamps shorter requests up).
pub const MIN_CUSTOM_SLICE: Duration = Duration::from_micros(100);
/// The longest custom slice the kernel accepts (it clamps longer requests down).
pub const MAX_CUSTOM_SLICE: Duration = Duration::from_millis(100);

/// The kernel's `struct sched_attr`, VER1 (56 bytes, with the uclamp fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedAttr {
    /// The structure's size (`SCHED_ATTR_SIZE_VER1`).
    pub size: u32,
    /// `SCHED_*` policy number.
    pub sched_policy: u32,
    /// `SCHED_FLAG_*` bits.
    pub sched_flags: u64,
    /// Nice value (fair-class policies).
    pub sched_nice: i32,
    /// Static priority (real-time policies).
    pub sched_priority: u32,
    /// Deadline runtime in ns, or (6.12+, fair class) the requested slice in ns.
    pub sched_runtime: u64,
    /// Deadline in ns (SCHED_DEADLINE).
    pub sched_deadline: u64,
    /// Period in ns (SCHED_DEADLINE).
    pub sched_period: u64,
    /// uclamp minimum (0..=1024).
    pub sched_util_min: u32,
    /// uclamp maximum (0..=1024).
    pub sched_util_max: u32,
}

const _: () = assert!(std::mem::size_of::<SchedAttr>() == SCHED_ATTR_SIZE_VER1 as usize);

impl SchedAttr {
    /// The policy as a typed value.
    pub fn policy(&self) -> SchedPolicy {
        SchedPolicy::from_raw(self.sched_policy)
    }
}

/// A scheduling policy (`SCHED_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedPolicy {
    /// `SCHED_OTHER` (a.k.a. `SCHED_NORMAL`), 0.
    Other,
    /// `SCHED_FIFO`, 1.
    Fifo,
    /// `SCHED_RR`, 2.
    RoundRobin,
    /// `SCHED_BATCH`, 3.
    Batch,
    /// `SCHED_IDLE`, 5.
    Idle,
    /// `SCHED_DEADLINE`, 6.
    Deadline,
    /// `SCHED_EXT`, 7 (sched_ext).
    Ext,
    /// A number this crate does not know.
    Unknown(u32),
}

impl SchedPolicy {
    /// The typed policy for a `SCHED_*` number.
    pub fn from_raw(raw: u32) -> SchedPolicy {
        match raw {
            0 => SchedPolicy::Other,
            1 => SchedPolicy::Fifo,
            2 => SchedPolicy::RoundRobin,
            3 => SchedPolicy::Batch,
            5 => SchedPolicy::Idle,
            6 => SchedPolicy::Deadline,
            7 => SchedPolicy::Ext,
            other => SchedPolicy::Unknown(other),
        }
    }

    /// The `SCHED_*` number.
    pub fn to_raw(self) -> u32 {
        match self {
            SchedPolicy::Other => 0,
            SchedPolicy::Fifo => 1,
            SchedPolicy::RoundRobin => 2,
            SchedPolicy::Batch => 3,
            SchedPolicy::Idle => 5,
            SchedPolicy::Deadline => 6,
            SchedPolicy::Ext => 7,
            SchedPolicy::Unknown(raw) => raw,
        }
    }

    /// Whether this is a real-time or deadline policy (which canopy leaves alone by default).
    pub fn is_realtime(self) -> bool {
        matches!(
            self,
            SchedPolicy::Fifo | SchedPolicy::RoundRobin | SchedPolicy::Deadline
        )
    }
}

/// The fair-class policies canopy assigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FairPolicy {
    /// `SCHED_OTHER`.
    #[default]
    Other,
    /// `SCHED_BATCH`: never preempts on wakeup.
    Batch,
    /// `SCHED_IDLE`: runs only when nothing else wants the CPU.
    Idle,
}

impl FairPolicy {
    /// The corresponding general policy.
    pub fn policy(self) -> SchedPolicy {
        match self {
            FairPolicy::Other => SchedPolicy::Other,
            FairPolicy::Batch => SchedPolicy::Batch,
            FairPolicy::Idle => SchedPolicy::Idle,
        }
    }
}

/// What canopy wants for one thread. Applying it replaces policy, nice, slice and uclamp
/// (an absent slice means the kernel's default slice, an absent clamp leaves that clamp alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedRequest {
    /// The policy.
    pub policy: FairPolicy,
    /// The nice value, -20..=19.
    pub nice: i32,
    /// A custom slice (kernels ≥ 6.12), 0.1..=100 ms.
    pub slice: Option<Duration>,
    /// The uclamp minimum, 0..=1024.
    pub uclamp_min: Option<u32>,
    /// The uclamp maximum, 0..=1024.
    pub uclamp_max: Option<u32>,
    /// Whether children start back at the default policy and nice (`SCHED_FLAG_RESET_ON_FORK`).
    pub reset_on_fork: bool,
    /// Whether to change a thread that is currently real-time or deadline.
    pub override_realtime: bool,
}

/// Whether the running kernel supports a feature, as far as canopy has found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Not tried yet.
    Unknown,
    /// The kernel honoured it.
    Supported,
    /// The kernel refused or ignored it.
    Unsupported,
}

impl Support {
    fn from_u8(raw: u8) -> Support {
        match raw {
            1 => Support::Supported,
            2 => Support::Unsupported,
            _ => Support::Unknown,
        }
    }
}

/// What the kernel has shown it supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedCapabilities {
    /// Per-task uclamp (`CONFIG_UCLAMP_TASK`).
    pub uclamp: Support,
    /// `sched_runtime` as a fair-class slice request (6.12+).
    pub custom_slice: Support,
}

/// Features found missing by one call (each is reported by exactly one call per applier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NewlyUnsupported {
    /// This call found out that uclamp is refused.
    pub uclamp: bool,
    /// This call found out that custom slices are ignored or refused.
    pub custom_slice: bool,
}

impl NewlyUnsupported {
    /// Whether there is anything to report.
    pub fn any(&self) -> bool {
        self.uclamp || self.custom_slice
    }
}

/// The result of [`SchedApplier::apply`] on a live thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The thread's attributes were changed.
    Changed {
        /// The attributes before the change (keep the first one to restore on stop).
        previous: SchedAttr,
        /// uclamp was requested but left out (the kernel lacks it).
        uclamp_skipped: bool,
        /// A slice was requested but left out or ignored (the kernel lacks custom slices).
        slice_skipped: bool,
        /// What this call found missing for the first time (log it once).
        newly_unsupported: NewlyUnsupported,
    },
    /// The thread is real-time or deadline and the request did not ask to override that.
    LeftRealtimeAlone {
        /// Its current attributes.
        current: SchedAttr,
    },
}

/// A scheduling call failed for a reason other than the thread having gone.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    /// `sched_getattr` failed.
    #[error("sched_getattr of thread {tid} failed: {source}")]
    Get {
        /// The thread.
        tid: Pid,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `sched_setattr` failed.
    #[error("sched_setattr of thread {tid} with {attr:?} failed: {source}")]
    Set {
        /// The thread.
        tid: Pid,
        /// What was passed.
        attr: SchedAttr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The request is out of range (checked before any syscall).
    #[error("invalid scheduling request for thread {tid}: {field} = {value} ({reason})")]
    InvalidRequest {
        /// The thread.
        tid: Pid,
        /// The field.
        field: &'static str,
        /// The offending value.
        value: i64,
        /// The allowed range.
        reason: &'static str,
    },
}

/// Reads a thread's attributes (`sched_getattr`); `tid` 0 is the calling thread.
pub fn get_attributes(tid: Pid) -> Result<Outcome<SchedAttr>, SchedError> {
    let mut attr = SchedAttr::default();
    // SAFETY: `attr` is a writable, correctly sized `struct sched_attr`.
    let result = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut attr as *mut SchedAttr,
            SCHED_ATTR_SIZE_VER1,
            0u32,
        )
    };
    if result == 0 {
        return Ok(Outcome::Done(attr));
    }
    let error = io::Error::last_os_error();
    if is_gone_error(&error) {
        Ok(Outcome::Gone)
    } else {
        Err(SchedError::Get { tid, source: error })
    }
}

/// Sets a thread's attributes (`sched_setattr`) exactly as given; `tid` 0 is the calling
/// thread. `attr.size` is forced to VER1. Prefer [`SchedApplier`], which handles kernel
/// differences.
pub fn set_attributes(tid: Pid, attr: &SchedAttr) -> Result<Outcome<()>, SchedError> {
    let mut attr = *attr;
    attr.size = SCHED_ATTR_SIZE_VER1;
    match raw_set_attributes(tid, &attr) {
        Ok(()) => Ok(Outcome::Done(())),
        Err(error) if is_gone_error(&error) => Ok(Outcome::Gone),
        Err(source) => Err(SchedError::Set { tid, attr, source }),
    }
}

fn raw_set_attributes(tid: Pid, attr: &SchedAttr) -> io::Result<()> {
    // SAFETY: `attr` points to a valid VER1 `struct sched_attr` that the kernel only reads.
    let result =
        unsafe { libc::syscall(libc::SYS_sched_setattr, tid, attr as *const SchedAttr, 0u32) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

const UNKNOWN: u8 = 0;
const SUPPORTED: u8 = 1;
const UNSUPPORTED: u8 = 2;

/// Applies [`SchedRequest`]s and remembers what the kernel supports. Share one per daemon
/// (it is `Sync`); each missing feature is reported by exactly one [`Applied::Changed`].
#[derive(Debug, Default)]
pub struct SchedApplier {
    uclamp: AtomicU8,
    custom_slice: AtomicU8,
}

impl SchedApplier {
    /// An applier that knows nothing about the kernel yet.
    pub fn new() -> SchedApplier {
        SchedApplier::default()
    }

    /// What has been found out so far.
    pub fn capabilities(&self) -> SchedCapabilities {
        SchedCapabilities {
            uclamp: Support::from_u8(self.uclamp.load(Ordering::Relaxed)),
            custom_slice: Support::from_u8(self.custom_slice.load(Ordering::Relaxed)),
        }
    }

    /// Finds out now what the kernel supports, by applying uclamp and a custom slice to a
    /// short-lived helper thread (nothing else is touched). The daemon calls this at start
    /// to log its mode once; later [`Applied::Changed`] values then report nothing new.
    pub fn probe(&self) -> Result<SchedCapabilities, SchedError> {
        let probe_request = SchedRequest {
            policy: FairPolicy::Other,
            nice: 0,
            slice: Some(Duration::from_millis(3)),
            uclamp_min: Some(0),
            uclamp_max: Some(UCLAMP_MAX_VALUE),
            reset_on_fork: false,
            // Our own helper thread: probe it even if it inherited a real-time policy.
            override_realtime: true,
        };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::gettid() };
                    self.apply(tid, &probe_request).map(|_| ())
                })
                .join()
                .expect("the probe thread does not panic")
        })?;
        Ok(self.capabilities())
    }

    /// Applies `request` to thread `tid`: reads its current attributes (returned as
    /// `previous`), leaves real-time/deadline threads alone unless asked, and sets policy,
    /// nice, slice and uclamp, dropping whatever the kernel lacks.
    pub fn apply(&self, tid: Pid, request: &SchedRequest) -> Result<Outcome<Applied>, SchedError> {
        validate(tid, request)?;
        let previous = match get_attributes(tid)? {
            Outcome::Done(attr) => attr,
            Outcome::Gone => return Ok(Outcome::Gone),
        };
        if previous.policy().is_realtime() && !request.override_realtime {
            return Ok(Outcome::Done(Applied::LeftRealtimeAlone {
                current: previous,
            }));
        }

        let wants_uclamp = request.uclamp_min.is_some() || request.uclamp_max.is_some();
        let wants_slice = request.slice.is_some();
        let mut use_uclamp = wants_uclamp && self.uclamp.load(Ordering::Relaxed) != UNSUPPORTED;
        let mut use_slice = wants_slice && self.custom_slice.load(Ordering::Relaxed) != UNSUPPORTED;
        let mut newly_unsupported = NewlyUnsupported::default();
        let mut dropped_uclamp = false;
        let mut dropped_slice = false;

        loop {
            let attr = build_attr(request, use_uclamp, use_slice);
            match raw_set_attributes(tid, &attr) {
                Ok(()) => break,
                Err(error) if is_gone_error(&error) => return Ok(Outcome::Gone),
                Err(error) => {
                    let errno = error.raw_os_error();
                    // The request was validated, so EOPNOTSUPP (no CONFIG_UCLAMP_TASK) or
                    // EINVAL (a kernel older than the uclamp flags) with uclamp flags means
                    // the kernel lacks uclamp, unless it has already taken them. Try again
                    // without; then likewise without the slice. A feature is marked missing
                    // only once the call succeeds without it.
                    let uclamp_known = self.uclamp.load(Ordering::Relaxed) == SUPPORTED;
                    if use_uclamp
                        && (errno == Some(libc::EOPNOTSUPP)
                            || (errno == Some(libc::EINVAL) && !uclamp_known))
                    {
                        use_uclamp = false;
                        dropped_uclamp = true;
                        continue;
                    }
                    let slice_known = self.custom_slice.load(Ordering::Relaxed) == SUPPORTED;
                    if use_slice && errno == Some(libc::EINVAL) && !slice_known {
                        use_slice = false;
                        dropped_slice = true;
                        continue;
                    }
                    return Err(SchedError::Set {
                        tid,
                        attr,
                        source: error,
                    });
                }
            }
        }
        if dropped_uclamp {
            newly_unsupported.uclamp = self.mark(&self.uclamp, UNSUPPORTED);
        }
        if dropped_slice {
            newly_unsupported.custom_slice = self.mark(&self.custom_slice, UNSUPPORTED);
        }
        if use_uclamp {
            self.mark(&self.uclamp, SUPPORTED);
        }
        if use_slice && self.custom_slice.load(Ordering::Relaxed) == UNKNOWN {
            // Old kernels accept and ignore sched_runtime for fair tasks: read it back once.
            let wanted = clamp_slice(request.slice.unwrap_or_default()).as_nanos() as u64;
            match get_attributes(tid)? {
                Outcome::Gone => return Ok(Outcome::Gone),
                Outcome::Done(now) if now.sched_runtime == wanted => {
                    self.mark(&self.custom_slice, SUPPORTED);
                }
                Outcome::Done(_) => {
                    use_slice = false;
                    newly_unsupported.custom_slice |= self.mark(&self.custom_slice, UNSUPPORTED);
                }
            }
        }
        Ok(Outcome::Done(Applied::Changed {
            previous,
            uclamp_skipped: wants_uclamp && !use_uclamp,
            slice_skipped: wants_slice && !use_slice,
            newly_unsupported,
        }))
    }

    /// Puts back attributes read before canopy changed the thread (the `previous` of its first
    /// [`Applied::Changed`]). uclamp is restored only where the kernel supports it; a fair
    /// task's `sched_runtime` (its slice on 6.12+) only where custom slices are supported.
    pub fn restore(&self, tid: Pid, original: &SchedAttr) -> Result<Outcome<()>, SchedError> {
        let mut attr = SchedAttr {
            size: SCHED_ATTR_SIZE_VER1,
            sched_policy: original.sched_policy,
            sched_flags: original.sched_flags & SCHED_FLAG_RESET_ON_FORK,
            sched_nice: original.sched_nice,
            sched_priority: original.sched_priority,
            ..SchedAttr::default()
        };
        match original.policy() {
            SchedPolicy::Deadline => {
                attr.sched_flags |=
                    original.sched_flags & (SCHED_FLAG_RECLAIM | SCHED_FLAG_DL_OVERRUN);
                attr.sched_runtime = original.sched_runtime;
                attr.sched_deadline = original.sched_deadline;
                attr.sched_period = original.sched_period;
            }
            SchedPolicy::Fifo | SchedPolicy::RoundRobin => {}
            _ => {
                if self.custom_slice.load(Ordering::Relaxed) == SUPPORTED {
                    attr.sched_runtime = original.sched_runtime;
                }
            }
        }
        if self.uclamp.load(Ordering::Relaxed) == SUPPORTED {
            attr.sched_flags |= SCHED_FLAG_UTIL_CLAMP_MIN | SCHED_FLAG_UTIL_CLAMP_MAX;
            attr.sched_util_min = original.sched_util_min;
            attr.sched_util_max = original.sched_util_max;
        }
        set_attributes(tid, &attr)
    }

    /// Records a finding; true if this call is the one that changed it to `value`.
    fn mark(&self, slot: &AtomicU8, value: u8) -> bool {
        slot.swap(value, Ordering::Relaxed) != value
    }
}

fn clamp_slice(slice: Duration) -> Duration {
    slice.clamp(MIN_CUSTOM_SLICE, MAX_CUSTOM_SLICE)
}

fn validate(tid: Pid, request: &SchedRequest) -> Result<(), SchedError> {
    let invalid = |field, value: i64, reason| SchedError::InvalidRequest {
        tid,
        field,
        value,
        reason,
    };
    if !(-20..=19).contains(&request.nice) {
        return Err(invalid("nice", request.nice.into(), "must be -20..=19"));
    }
    for (field, value) in [
        ("uclamp_min", request.uclamp_min),
        ("uclamp_max", request.uclamp_max),
    ] {
        if let Some(value) = value {
            if value > UCLAMP_MAX_VALUE {
                return Err(invalid(field, value.into(), "must be 0..=1024"));
            }
        }
    }
    if let (Some(min), Some(max)) = (request.uclamp_min, request.uclamp_max) {
        if min > max {
            return Err(invalid(
                "uclamp_min",
                min.into(),
                "must not exceed uclamp_max",
            ));
        }
    }
    if let Some(slice) = request.slice {
        if slice < MIN_CUSTOM_SLICE || slice > MAX_CUSTOM_SLICE {
            return Err(invalid(
                "slice_ns",
                slice.as_nanos() as i64,
                "must be 100 µs..=100 ms",
            ));
        }
    }
    Ok(())
}

/// The `sched_attr` for a request, with or without its uclamp and slice parts.
fn build_attr(request: &SchedRequest, with_uclamp: bool, with_slice: bool) -> SchedAttr {
    let mut attr = SchedAttr {
        size: SCHED_ATTR_SIZE_VER1,
        sched_policy: request.policy.policy().to_raw(),
        sched_nice: request.nice,
        ..SchedAttr::default()
    };
    if request.reset_on_fork {
        attr.sched_flags |= SCHED_FLAG_RESET_ON_FORK;
    }
    if with_slice {
        if let Some(slice) = request.slice {
            attr.sched_runtime = slice.as_nanos() as u64;
        }
    }
    if with_uclamp {
        if let Some(min) = request.uclamp_min {
            attr.sched_flags |= SCHED_FLAG_UTIL_CLAMP_MIN;
            attr.sched_util_min = min;
        }
        if let Some(max) = request.uclamp_max {
            attr.sched_flags |= SCHED_FLAG_UTIL_CLAMP_MAX;
            attr.sched_util_max = max;
        }
    }
    attr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<SchedAttr>(), 56);
        assert_eq!(std::mem::offset_of!(SchedAttr, sched_runtime), 24);
        assert_eq!(std::mem::offset_of!(SchedAttr, sched_util_min), 48);
        assert_eq!(std::mem::offset_of!(SchedAttr, sched_util_max), 52);
    }

    #[test]
    fn policies_round_trip() {
        for raw in 0..9 {
            assert_eq!(SchedPolicy::from_raw(raw).to_raw(), raw);
        }
        assert!(SchedPolicy::Fifo.is_realtime());
        assert!(SchedPolicy::Deadline.is_realtime());
        assert!(!SchedPolicy::Batch.is_realtime());
    }

    #[test]
    fn build_attr_sets_only_what_is_requested() {
        let request = SchedRequest {
            policy: FairPolicy::Batch,
            nice: 4,
            slice: Some(Duration::from_millis(12)),
            uclamp_max: Some(512),
            reset_on_fork: true,
            ..SchedRequest::default()
        };
        let full = build_attr(&request, true, true);
        assert_eq!(full.sched_policy, 3);
        assert_eq!(full.sched_nice, 4);
        assert_eq!(full.sched_runtime, 12_000_000);
        assert_eq!(
            full.sched_flags,
            SCHED_FLAG_RESET_ON_FORK | SCHED_FLAG_UTIL_CLAMP_MAX
        );
        assert_eq!(full.sched_util_max, 512);
        let bare = build_attr(&request, false, false);
        assert_eq!(bare.sched_flags, SCHED_FLAG_RESET_ON_FORK);
        assert_eq!(bare.sched_runtime, 0);
        assert_eq!(bare.size, 56);
    }

    #[test]
    fn out_of_range_requests_are_refused_before_any_syscall() {
        let bad = |request: SchedRequest| validate(7, &request).unwrap_err().to_string();
        assert!(bad(SchedRequest {
            nice: 20,
            ..Default::default()
        })
        .contains("nice = 20"));
        assert!(bad(SchedRequest {
            uclamp_max: Some(1025),
            ..Default::default()
        })
        .contains("1025"));
        assert!(bad(SchedRequest {
            uclamp_min: Some(600),
            uclamp_max: Some(500),
            ..Default::default()
        })
        .contains("uclamp_min = 600"));
        assert!(bad(SchedRequest {
            slice: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .contains("slice_ns"));
        assert!(validate(7, &SchedRequest::default()).is_ok());
    }
}
