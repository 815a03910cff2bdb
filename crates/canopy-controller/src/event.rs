//! The events the controller reacts to, whatever source produced them (proc connector, inotify,
//! the policy watcher, a rescan). Sources translate into these; the controller never sees a
//! netlink message or an inotify mask.

/// One thing that happened in the system.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A task was created. A thread when `child_tgid == parent_tgid`'s process, else a process.
    Fork {
        /// Creating thread.
        parent_tid: u32,
        /// Creating process.
        parent_tgid: u32,
        /// New thread id.
        child_tid: u32,
        /// New task's process.
        child_tgid: u32,
        /// Kernel CLOCK_MONOTONIC timestamp of the event, when known.
        timestamp_ns: Option<u64>,
    },
    /// A task called execve: the process facts changed.
    Exec {
        /// The thread that exec'd (it becomes the leader).
        tid: u32,
        /// Its process.
        tgid: u32,
        /// Kernel timestamp.
        timestamp_ns: Option<u64>,
    },
    /// A thread was renamed (prctl PR_SET_NAME or /proc/.../comm).
    Comm {
        /// Thread.
        tid: u32,
        /// Process.
        tgid: u32,
        /// New name when the source carries it.
        comm: Option<String>,
        /// Kernel timestamp.
        timestamp_ns: Option<u64>,
    },
    /// A thread exited.
    Exit {
        /// Thread.
        tid: u32,
        /// Process.
        tgid: u32,
        /// Kernel timestamp: a task first seen after it is a newer one under a reused id.
        timestamp_ns: Option<u64>,
    },
    /// Tasks may have moved into this cgroup (its `cgroup.procs`/`cgroup.threads` changed, or a
    /// move watcher saw an attach). The controller re-reads membership and re-clamps at once.
    CgroupMembershipChanged {
        /// cgroup path relative to the cgroup2 root.
        cgroup: String,
    },
    /// A task was seen attached to a cgroup (BPF move watcher).
    TaskMoved {
        /// Thread (the leader when a whole process moved).
        tid: u32,
        /// Whether the whole thread group moved.
        threadgroup: bool,
        /// Kernel CLOCK_MONOTONIC timestamp of the attach, when known.
        timestamp_ns: Option<u64>,
    },
    /// Events were lost (proc connector ENOBUFS, ring buffer overflow): rescan /proc.
    Overrun,
    /// A cgroup directory appeared.
    CgroupCreated {
        /// Path relative to the cgroup2 root.
        cgroup: String,
    },
    /// A cgroup directory vanished.
    CgroupRemoved {
        /// Path relative to the cgroup2 root.
        cgroup: String,
    },
    /// The focus xattr (`user.xdg.inactive-since`) of a cgroup changed.
    FocusChanged {
        /// Path relative to the cgroup2 root.
        cgroup: String,
        /// What it says now (`NotSet` when it was removed).
        focus: canopy_sys::cgroup::Focus,
    },
}

impl Event {
    /// CLOCK_MONOTONIC time of a task event (fork, exec, rename, exit, move), when its source
    /// carries one.
    pub fn timestamp_ns(&self) -> Option<u64> {
        match self {
            Event::Fork { timestamp_ns, .. }
            | Event::Exec { timestamp_ns, .. }
            | Event::Comm { timestamp_ns, .. }
            | Event::Exit { timestamp_ns, .. }
            | Event::TaskMoved { timestamp_ns, .. } => *timestamp_ns,
            _ => None,
        }
    }

    /// Stable name for counters and logs.
    pub fn kind(&self) -> EventType {
        match self {
            Event::Fork { .. } => EventType::Fork,
            Event::Exec { .. } => EventType::Exec,
            Event::Comm { .. } => EventType::Comm,
            Event::Exit { .. } => EventType::Exit,
            Event::CgroupMembershipChanged { .. } | Event::TaskMoved { .. } => EventType::Move,
            Event::Overrun => EventType::Overrun,
            Event::CgroupCreated { .. } => EventType::CgroupCreated,
            Event::CgroupRemoved { .. } => EventType::CgroupRemoved,
            Event::FocusChanged { .. } => EventType::Focus,
        }
    }
}

/// Event categories counted in the stats (the `type` label of `canopy_events_total`; not
/// canopy-sys's `proc_events::EventKind`, the proc connector's raw event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// fork/clone.
    Fork,
    /// execve.
    Exec,
    /// thread rename.
    Comm,
    /// exit.
    Exit,
    /// cgroup move.
    Move,
    /// lost events.
    Overrun,
    /// cgroup mkdir.
    CgroupCreated,
    /// cgroup rmdir.
    CgroupRemoved,
    /// focus xattr change.
    Focus,
}

impl EventType {
    /// Every kind, in display order.
    pub const ALL: [EventType; 9] = [
        EventType::Fork,
        EventType::Exec,
        EventType::Comm,
        EventType::Exit,
        EventType::Move,
        EventType::Overrun,
        EventType::CgroupCreated,
        EventType::CgroupRemoved,
        EventType::Focus,
    ];

    /// Label used in status, JSON and Prometheus.
    pub fn label(self) -> &'static str {
        match self {
            EventType::Fork => "fork",
            EventType::Exec => "exec",
            EventType::Comm => "comm",
            EventType::Exit => "exit",
            EventType::Move => "move",
            EventType::Overrun => "overrun",
            EventType::CgroupCreated => "cgroup_created",
            EventType::CgroupRemoved => "cgroup_removed",
            EventType::Focus => "focus",
        }
    }
}
