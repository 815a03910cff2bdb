/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * intf.h: the one ABI between canopy's BPF schedulers and the Rust loader.
 *
 * Everything both sides must agree on lives here and only here: limits, class
 * ids, the layout of every map value, the stats enum and the list of kernel
 * constants the loader resolves from the running kernel's BTF. build.rs turns
 * this file into Rust (bindgen for the types and enums, a small generator for
 * the stats struct and the kernel-constant names); Rust never restates any of it.
 *
 * Glossary (the words the BPF files and their Rust readers use):
 *   member     a party a parent divides CPU among: its own tasks, or one attached child scheduler.
 *   slot       a member's index in the `members` map; slot 0 (CANOPY_SELF_SLOT) is the parent's
 *              own tasks, slots 1.. are children.
 *   grant      one hand-over of a cid to a member by the root's dispatch, from hand_cid() until
 *              charge_cid() bills it (a child's grant is cut at the quantum). Not to be confused
 *              with the kernel's scx_bpf_sub_grant(), which delegates capabilities on cids.
 *   time share what every child holds on every cid: SCX_CAP_ENQ_IMMED without SCX_CAP_ENQ, so
 *              its tasks reach a cid only when the root dispatches it (never ownership).
 *   quantum    CANOPY_QUANTUM_NS (5 ms): the longest a child keeps a grant while another member
 *              has work.
 *   window     CANOPY_PERIOD_NS (100 ms) of all online cids: the accounting period in which caps
 *              and guarantees are measured (a 25% cap on 2 cids = 50 ms of CPU per window).
 *
 * Conventions the generator relies on:
 *   - every `enum canopy_stat` entry is `CANOPY_STAT_<NAME>, / * description * /`
 *     on one line, and the list ends with CANOPY_NR_STATS;
 *   - every `enum canopy_kconst` entry is `CANOPY_K_<KERNEL_ENUM_NAME>,` and the
 *     list ends with CANOPY_NR_KCONSTS.
 */
#ifndef CANOPY_INTF_H
#define CANOPY_INTF_H

#ifndef __VMLINUX_H__
typedef unsigned char u8;
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;
typedef long long s64;
#endif

enum canopy_limits {
	/* cids the schedulers track (cmask words, per-cid state arrays) */
	CANOPY_MAX_CIDS = 256,
	/*
	 * members one parent tracks at a time: slot 0 is the parent itself, so 64 children (issue
	 * 10: at least 64). The kernel sets no limit of its own on a parent's children (only the
	 * depth, SCX_SUB_MAX_DEPTH); a dispatch that finds every member empty looks at each once
	 * per try, so this bounds that cost (cid_grants.bpf.h). The 65th child gets -ENOSPC.
	 */
	CANOPY_MAX_MEMBERS = 65,
	/* cgroups with a `group_policy` entry (every cgroup2 cgroup; allocated as entries are made) */
	CANOPY_MAX_GROUPS = 65536,
	/* cgroups with the cpu controller the root tracks as weighted nodes (`cpu_tree`) */
	CANOPY_MAX_CGROUPS = 65536,
	/* deepest cgroup nesting the cpu tree's walks follow (the root cgroup is level 0) */
	CANOPY_MAX_CGROUP_DEPTH = 16,
	/* classes a policy may define (the five built-ins and custom ones between them) */
	CANOPY_MAX_CLASSES = 32,
	/* tasks the controller may tag with a class */
	CANOPY_MAX_TASKS = 65536,
	/* scheduler (ops) names a group may admit */
	CANOPY_MAX_ADMITTED = 4,
	/* bytes of an ops name that admission compares (the kernel allows 128) */
	CANOPY_NAME_LEN = 32,
	/* bytes of a cgroup path kept in admission events */
	CANOPY_PATH_LEN = 128,
	/* exit information copied out of the kernel's scx_exit_info */
	CANOPY_EXIT_REASON_LEN = 128,
	CANOPY_EXIT_MSG_LEN = 1024,
	/*
	 * the kernel's dump of a failing scheduler: every runnable task of every CPU with its
	 * stack and canopy's lines; 93 runnable tasks of the stress scenario took 47-48 KB, and
	 * 16 KB cut the dump off before the starved task (2026-12-06)
	 */
	CANOPY_EXIT_DUMP_LEN = 131072,
	/* the member slot of the scheduler's own tasks */
	CANOPY_SELF_SLOT = 0,
	/* the shared DSQ of a scheduler's own tasks */
	CANOPY_OWN_DSQ = 1,
	/* the root's DSQ of its own tasks in idle cgroups (cpu.idle 1): served when nothing else is */
	CANOPY_IDLE_DSQ = 2,
	/*
	 * a scheduler's preempting-class wakeups with preemption budget left that found no cid to
	 * run on at once: served before CANOPY_OWN_DSQ
	 */
	CANOPY_URGENT_DSQ = 3,
	/* CPU-time accounting window for guarantees and caps, per cid */
	CANOPY_PERIOD_NS = 100000000,
	/* how far (weighted ns) a queued task's vtime may run ahead of the scheduler's vtime clock */
	CANOPY_MAX_VTIME_AHEAD = 200000000,
	/*
	 * the shortest turn a root task is given when its weight in the cgroup tree is below its
	 * class weight, or while it pays vtime debt (class_vtime.bpf.h); the tick ends it
	 */
	CANOPY_MIN_TURN_NS = 1000000,
	/*
	 * longest a child keeps a cid the root handed it while another member has work, however
	 * long the slice its own scheduler chose (the root cuts it with a preempting kick)
	 */
	CANOPY_QUANTUM_NS = 5000000,
	/*
	 * weight of a member whose policy and cgroup give none, and a cgroup's default cpu.weight:
	 * the cgroup scale (cpu.weight, 1..10000), on which members and policy groups weigh
	 */
	CANOPY_DEFAULT_WEIGHT = 100,
	/*
	 * a nice-0 task's weight: the task scale (the kernel's nice-to-weight table), on which
	 * class weights are given and tasks weigh in a vtime queue; a cgroup at cpu.weight w
	 * weighs w * CANOPY_NICE0_WEIGHT / CANOPY_DEFAULT_WEIGHT against tasks, as the fair
	 * scheduler converts it (cpu_tree.bpf.h)
	 */
	CANOPY_NICE0_WEIGHT = 1024,
	/*
	 * the whole machine on the scale of a member's `tree_share` (its hierarchical share, the
	 * product of its cgroups' fractions from the root down; cid_grants.bpf.h): 2^20, the cpu
	 * tree's own unit, so a child at cpu.weight 50 among 64 children summing 12,000 (4,369
	 * units) is rounded by 0.01%, where 10,000 units (42 for 41.7) rounded it by 0.8%
	 */
	CANOPY_TREE_SHARE_ONE = 1048576,
	/* bytes of the move watcher's ring buffer (a power of two, a multiple of the page size) */
	CANOPY_MOVE_RINGBUF_BYTES = 262144,
	/*
	 * bytes of the task watcher's ring buffer of forks, execs and exits (a power of two, a
	 * multiple of the page size): 52,428 records of 32 bytes plus an 8-byte header each; the
	 * half-full wakeup comes at 26,214, about half a second of a fork storm's 20,000 forks
	 * and as many exits a second
	 */
	CANOPY_TASK_RINGBUF_BYTES = 2097152,
	/*
	 * an exit record wakes the daemon only when no exit has for this long, or when the ring
	 * holds more than half its bytes; the rest wait for the daemon's next read (its next
	 * wakeup for any reason, at most this long after one that found exits)
	 */
	CANOPY_EXIT_WAKEUP_EVERY_NS = 1000000000,
	/*
	 * a fork or exec record wakes the daemon only when no fork or exec has for this long (or
	 * the ring is half full); the daemon reads again this long after a read that found forks
	 * or execs, so each waits at most about this long, and a build's hundred forks a second
	 * cost the daemon some 40 wakeups a second instead of one per event
	 */
	CANOPY_FORK_EXEC_WAKEUP_EVERY_NS = 50000000,
	/* the most recent moves the schedulers keep a record of (`move_log`; a power of two) */
	CANOPY_MOVE_RECORDS = 64,
	/* a moved task first queued later than this after its move counts as slow (issue 5 (b)) */
	CANOPY_MOVE_SLOW_NS = 10000000,
	/*
	 * cpu.idle starvation guard (own_dispatch.bpf.h): while tasks of idle cgroups wait and none
	 * has had a CPU for this period divided by how many wait (at least the minimum interval),
	 * the next dispatch gives the first of them one short slice
	 */
	CANOPY_IDLE_GUARD_PERIOD_NS = 1000000000,
	CANOPY_IDLE_GUARD_MIN_INTERVAL_NS = 10000000,
	CANOPY_IDLE_GUARD_SLICE_NS = 1000000,
	/*
	 * a canopy child the root found with nothing to dispatch, and that has queued nothing
	 * since, is not offered a cid again for this long (child_work.bpf.h)
	 */
	CANOPY_EMPTY_CHILD_RECHECK_NS = 1000000,
	/*
	 * ... and only once it has had no work for this long: a child whose task wakes every few
	 * milliseconds is offered at every dispatch, as before child_work.bpf.h (see there why)
	 */
	CANOPY_EMPTY_CHILD_QUIET_NS = 50000000,
	/* the most cpu.max (or cap) overuse carried into the next periods, in quotas (cpu_tree.bpf.h) */
	CANOPY_QUOTA_MAX_DEBT_PERIODS = 8,
	/*
	 * A waking preempting-class task with nothing to preempt waits on a CPU an RT or deadline
	 * task took from one of our tasks only while that has lasted less than this (canopy_root's
	 * find_preemptible_cid): a short RT burst is over soon, a long one may go on
	 */
	CANOPY_HIGHER_CLASS_WAIT_NS = 1000000,
};

/*
 * The built-in QoS classes, highest first, with their ids when the policy defines no custom
 * class. A class id is always the class's position in the policy's order (highest first), so
 * a custom class moves the built-ins below it down by one; the loader writes the whole table.
 */
enum canopy_class {
	CANOPY_CLASS_USER_INTERACTIVE = 0,
	CANOPY_CLASS_USER_INITIATED = 1,
	CANOPY_CLASS_DEFAULT = 2,
	CANOPY_CLASS_UTILITY = 3,
	CANOPY_CLASS_BACKGROUND = 4,
	CANOPY_NR_CLASSES = 5,
};

/* Map `class_params` (CANOPY_MAX_CLASSES), index = class id. Written by the loader from the policy. */
struct canopy_class_params {
	u32 weight;		/* share of CPU among runnable tasks, 1..10000 on the kernel's scale: 1024 = nice 0 */
	u32 preempts;		/* 1: a waking task of this class preempts preemptible classes */
	u32 preemptible;	/* 1: tasks of this class may be preempted by a preempting class */
	u32 preemptible_after_us; /* not preemptible: preemptible once it has run this long (0: never) */
	u64 slice_ns;		/* time slice */
};

/*
 * Map `task_classes`: tid (u32) -> class id (u32). Written by the controller. A thread without
 * an entry takes its process's entry (key = tgid), then the policy's default class
 * (`policy_defaults`).
 */

/*
 * Map `policy_defaults` (array, one entry, key 0): what the policy says about tasks the
 * controller has not tagged. Written by the loader before the root attaches and again on every
 * reload; children share the root's map, so one write moves every scheduler. A zeroed entry
 * (a child loaded without canopy_root's pinned maps) means CANOPY_CLASS_DEFAULT.
 */
struct canopy_policy_defaults {
	u32 default_class_plus_one;	/* 0: CANOPY_CLASS_DEFAULT; else the default class id + 1 */
	u32 pad;
};

/*
 * Map `group_policy`: cgroup id (u64) -> policy. Its entries live and die with their cgroups
 * (issue 10 Deliver 5): canopy_root gives every cgroup2 cgroup an unowned entry when it is
 * made (tracepoint cgroup_mkdir; the loader seeds the cgroups that exist when the root loads)
 * and deletes the entry, owned or not, when the cgroup is removed (cgroup_rmdir). Userspace
 * only rewrites entries that exist (BPF_EXIST): it owns a cgroup by writing its group's terms
 * with `unowned` 0, and disowns it by writing the unowned entry back. A write that comes after
 * the cgroup's removal fails with ENOENT (normal flow: the daemon counts it as `groups_gone`),
 * so no entry outlives its cgroup. Example: 5,000 mkdir/rmdir cycles of `churn/cN.scope` make
 * and delete 5,000 entries; the map ends the size it started, however late the daemon writes.
 */
struct canopy_group_policy {
	u32 weight;		/* 0: follow the cgroup's cpu.weight */
	u32 guarantee_pct;	/* 0: none; else share of all CPUs kept available under contention */
	u32 cap_pct;		/* 0: none; else most of all CPUs it may use */
	u32 nr_admitted;	/* 0: no sub-scheduler may attach here */
	char admitted[CANOPY_MAX_ADMITTED][CANOPY_NAME_LEN];	/* ops names admitted */
	/*
	 * The allowed classes of the group's current state, written by the controller: 0 = no
	 * limit, else class id + 1. A task of this cgroup tagged above the ceiling runs as the
	 * ceiling, below the floor as the floor, from its first enqueue after a move.
	 */
	u32 ceiling_plus_one;
	u32 floor_plus_one;
	/*
	 * 1: no policy group owns this cgroup (the entry canopy_root made at mkdir, all else 0):
	 * readers treat it as absent, and the class clamp's walk goes on to the cgroup's parent.
	 * 0: a group owns it (every userspace write of a group's terms).
	 */
	u32 unowned;
	u32 pad;
};

/*
 * Map `cpu_tree` (canopy_root): cgroup id (u64) -> the cgroup's node in the cpu.weight tree of
 * the root's own tasks, from ops.cpuctl_init to ops.cpuctl_exit (cpu_tree.bpf.h has the policy).
 */
struct canopy_cgroup_node {
	u64 parent_id;		/* the parent cgroup's id; 0 for the root cgroup */
	u32 weight;		/* weight in its parent (cgroup scale): its policy group's weight when the group sets one, else cpu_weight */
	u32 weight_in_parent;	/* the weight (task scale: weight * 1024 / 100) it added to its parent's active_weight */
	s64 active_weight;	/* weights (task scale) of its runnable own tasks and of its child cgroups with runnable tasks */
	u32 idle;		/* cpu.idle: 1 = its tasks (and its descendants') run only when nothing else wants the CPU */
	u32 cpu_weight;		/* cpu.weight, 1..10000 */
	u64 quota_ns;		/* cpu.max quota: CPU time it and its descendants may use per period; 0 = max */
	u64 period_ns;		/* cpu.max period */
	u64 period_start_ns;	/* start of the current limit period (cpu.max's, else CANOPY_PERIOD_NS) */
	u64 period_used_ns;	/* CPU time it and its descendants used in it (overuse carried, at most one quota) */
	u64 nr_throttled;	/* periods in which it reached its limit (as cpu.stat's nr_throttled) */
	u32 cap_pct;		/* its policy group's cap, percent of all online CPUs (0: none); the tighter of it and cpu.max holds */
	u32 limited;		/* 1: a cpu.max quota or a cap applies (counted in nr_limited_cgroups) */
	u64 policy_version;	/* `group_policy_version` when weight and cap_pct were last read from `group_policy` */
	u64 group_vtime;	/* its own tasks' vtime as one entity: their charges at the weight the cgroup gives them (bpf/cpu_tree.bpf.h tree_group_charge) */
	s64 own_weight;		/* weights (task scale) of its runnable own tasks: their part of active_weight */
	s64 own_share_weight;	/* the same tasks' weights as they divide that part among themselves (bpf/cpu_tree.bpf.h tree_share_weight) */
};

/*
 * Map `group_policy_version` (canopy_root, array, one u64 at key 0): bumped after each batch of
 * `group_policy` writes (userspace edits entries under one process-wide lock, then bumps once;
 * src/scheduler/group_policy_map.rs), so the root re-reads a cgroup's entry the next time it
 * walks past the cgroup's node (one compare per level while nothing changed).
 */

/*
 * Map `members` (array, CANOPY_MAX_MEMBERS, pinned by canopy_root; canopy children reuse it
 * and write only their own `enqueues` and `counts_enqueues`): the parties a parent divides CPU
 * among. Slot 0 is the scheduler's own tasks; the others are attached children.
 * Counters only ever grow; userspace computes rates from two samples.
 */
struct canopy_member {
	u64 cgroup_id;		/* 0: free slot; the slot-0 entry holds the parent's own cgroup id */
	u32 weight;		/* its weight in its parent cgroup (cgroup scale): the policy group's, else cpu.weight; slot 0: the policy's for "/", else own_weight */
	u32 guarantee_pct;
	u32 cap_pct;
	u32 active;		/* 1: slot in use */
	u32 empty;		/* 1: had nothing queued when last offered a cid */
	u32 running_cids;	/* cids handed to it right now; idle = empty and none running */
	u64 vtime;		/* weighted CPU time received (ns * 100 / weight), in-flight reservations included */
	u64 slice_estimate_ns;	/* moving average of how long it keeps a cid it is handed */
	u64 lifted_vtime;	/* vtime added on returns from idle (credit it could not bank) */
	u64 cpu_ns;		/* CPU time handed out to this member */
	u64 dispatches;		/* dispatches that gave this member a CPU */
	u64 throttled;		/* times it was skipped because it reached its cap */
	u64 period_start_ns;	/* start of the current accounting window (windows follow each other exactly) */
	/*
	 * CPU time charged in the current window, plus a capped member's carried overuse (debt)
	 * less its carried underuse (credit), less the part of grants in flight at the window's
	 * start that fell in the window before: negative while a credit is left
	 */
	s64 period_used_ns;
	/*
	 * guaranteed time it did not get in past windows (at most one window), or, negative, what
	 * it got beyond its guarantee while busy (at most one quantum per cid)
	 */
	s64 guarantee_owed_ns;
	u64 held_since_sum_ns;	/* sum of cid_state.since over the cids it holds now: its in-flight time is running_cids * now - this */
	u64 tree_cgroup_id;	/* a busy child: the attach cgroup it counts in `cpu_tree` as active; 0: not counted */
	u32 tree_share;		/* its hierarchical share of the machine, 1/CANOPY_TREE_SHARE_ONE units: what its vtime is charged at */
	u32 tree_pad;
	u64 tree_idle_since_ns;	/* when the root first saw it idle since it last had work (0: busy); it leaves the tree after MEMBER_TREE_IDLE_HOLD_NS */
	u64 enqueues;		/* a canopy child's count of the tasks it queued (child_work.bpf.h); foreign children leave it 0 */
	u64 empty_enqueues;	/* `enqueues` read before the root's last offer that found it empty */
	u64 empty_at_ns;	/* when that offer was made */
	u32 counts_enqueues;	/* 1: a canopy child that counts its enqueues here */
	u32 enqueues_pad;
	u64 active_at_ns;	/* when the root last saw it have work: an offer it took, or a count that had moved since the offer before */
	char name[CANOPY_NAME_LEN];	/* ops name of the child ("" for slot 0) */
};

/*
 * Map `child_restarts` (canopy_root, pinned): cgroup id (u64) -> the supervisor's record of the
 * canopy children it loaded again on that cgroup because they exited with the kernel's restart
 * action. Written by userspace only (the schedulers never read it); `canopy status` shows it.
 */
struct canopy_child_restarts {
	u32 restarts;		/* times a child was loaded and attached again */
	u32 gave_up;		/* 1: it kept asking; the supervisor stopped re-attaching it */
	u32 in_a_row;		/* restarts since a child last ran long enough to count as stable */
	u32 pad;
	s64 last_exit_code;	/* exit code of the last exit that asked for a restart */
};

/* Ring buffer `admission_events`: one record per sub_attach decision. */
struct canopy_admission_event {
	u64 cgroup_id;
	s32 verdict;		/* 0: admitted, else the -errno returned */
	u32 slot;
	char ops_name[CANOPY_NAME_LEN];
	char cgroup_path[CANOPY_PATH_LEN];
};

/*
 * Ring buffer `move_events` (canopy_moves.bpf.c): one record per successful attach of a task
 * (or a whole process) to a cgroup2 cgroup, from the `cgroup:cgroup_attach_task` tracepoint.
 */
struct canopy_move_event {
	u64 cgroup_id;		/* destination cgroup id (the inode of its directory) */
	u32 pid;		/* process (tgid) of the moved task */
	u32 tid;		/* the moved thread; the leader when the whole process moved */
	u32 threadgroup;	/* 1: the whole process moved (cgroup.procs), 0: one thread */
	u32 pad;
	u64 timestamp_ns;	/* CLOCK_MONOTONIC (bpf_ktime_get_ns) at the attach */
};

/* What a `struct canopy_task_event` reports. */
enum canopy_task_event_kind {
	CANOPY_TASK_FORK = 1,	/* a new thread or process; parent_* name the creating thread */
	CANOPY_TASK_EXEC = 2,	/* a process exec'd (tid is the thread that did, now its leader) */
	CANOPY_TASK_EXIT = 3,	/* a thread exited */
};

/*
 * Ring buffer `task_events` (canopy_moves.bpf.c): one record per fork, exec and thread exit,
 * in the order the kernel wrote them, from the `sched:sched_process_{fork,exec,exit}`
 * tracepoints. Mostly submitted without a wakeup (CANOPY_FORK_EXEC_WAKEUP_EVERY_NS,
 * CANOPY_EXIT_WAKEUP_EVERY_NS): the daemon reads them in batches, ordered with the proc
 * connector's renames by timestamp.
 */
struct canopy_task_event {
	u32 kind;		/* enum canopy_task_event_kind */
	u32 pid;		/* process (tgid) of the thread */
	u32 tid;		/* the thread (the child for a fork) */
	u32 parent_pid;		/* fork: the creating thread's process; otherwise 0 */
	u32 parent_tid;		/* fork: the creating thread; otherwise 0 */
	u32 pad;
	u64 timestamp_ns;	/* CLOCK_MONOTONIC (bpf_ktime_get_ns) at the event */
};

/*
 * Array `move_log` (one entry): the schedulers' record of the most recent task moves between
 * cgroups, one record per move, written at the first decision about the moved task's class
 * after the move: at the move itself for a running task (ops.cpuctl_move, or ops.enable when
 * the move hands it to another scheduler), at the requeue the
 * move causes for a queued one, at the next wakeup for a sleeping one (ops.enqueue, or
 * keeping it running as a dispatch). Slot = next % CANOPY_MOVE_RECORDS.
 */
struct canopy_move_record {
	u64 cgroup_id;		/* its cgroup at that decision (the move's destination) */
	u64 moved_at_ns;	/* bpf_ktime_get_ns() when the kernel switched its cgroup */
	u64 decided_at_ns;	/* bpf_ktime_get_ns() at that decision */
	u32 tid;
	u32 requested_class;	/* its own tag (task_classes), else its process's, else the default */
	u32 class;		/* the class it got: the request clamped by the cgroup's state */
	u32 state_at_move;	/* enum canopy_move_state */
};

/* What a task was doing when the kernel moved it (`canopy_move_record.state_at_move`). */
enum canopy_move_state {
	CANOPY_MOVED_SLEEPING = 0,	/* first decided when it next woke */
	CANOPY_MOVED_QUEUED = 1,	/* runnable, waiting: requeued by the move itself */
	CANOPY_MOVED_RUNNING = 2,	/* on a CPU: decided at the move (cpuctl_move or enable), slice cut */
};

struct canopy_move_log {
	u64 next;		/* records written so far */
	struct canopy_move_record records[CANOPY_MOVE_RECORDS];
};

/* The scheduler's own record of why it exited, filled in ops.exit (global `exit_info`). */
struct canopy_exit_info {
	s32 kind;		/* enum scx_exit_kind; 0 while running */
	s32 exit_cpu;
	s64 exit_code;		/* user [31:0], reason [47:32], action [63:48] */
	char reason[CANOPY_EXIT_REASON_LEN];
	char msg[CANOPY_EXIT_MSG_LEN];
	char dump[CANOPY_EXIT_DUMP_LEN];
};

/* Per-CPU array `stats`, one u64 per entry. */
enum canopy_stat {
	CANOPY_STAT_ENQUEUES, /* tasks queued on the scheduler's own DSQ */
	CANOPY_STAT_OWN_DISPATCHES, /* CPUs given to the scheduler's own tasks */
	CANOPY_STAT_SUB_DISPATCHES, /* CPUs a child scheduler filled when asked */
	CANOPY_STAT_SUB_DISPATCH_EMPTY, /* children asked for work that had none */
	CANOPY_STAT_EMPTY_CHILD_SKIPS, /* offers not made to canopy children known to have nothing queued */
	CANOPY_STAT_PREEMPT_KICKS, /* CPUs kicked so a waking preempting task runs */
	CANOPY_STAT_IDLE_KICKS, /* idle CPUs woken for newly queued work */
	CANOPY_STAT_CAP_THROTTLED, /* dispatch decisions that skipped a member at its cap */
	CANOPY_STAT_ADMITTED, /* child schedulers admitted */
	CANOPY_STAT_REFUSED, /* child schedulers refused */
	CANOPY_STAT_DETACHED, /* child schedulers detached */
	CANOPY_STAT_CID_ONLINE, /* CPUs brought online */
	CANOPY_STAT_CID_OFFLINE, /* CPUs taken offline */
	CANOPY_STAT_IMMED_INSERTS, /* inserts made with ENQ_IMMED (time share only) */
	CANOPY_STAT_CLASS_CLAMPED, /* class lookups the task's cgroup state clamped (ceiling or floor) */
	CANOPY_STAT_QUANTUM_KICKS, /* child grants cut at the quantum because another member had work */
	CANOPY_STAT_WAKE_IDLE, /* preempting-class wakeups placed on an idle CPU */
	CANOPY_STAT_WAKE_IDLE_SLOW, /* of those, ran more than 1 ms after waking */
	CANOPY_STAT_WAKE_PREEMPT_LOCAL, /* preempting-class wakeups that preempted their own CPU */
	CANOPY_STAT_WAKE_PREEMPT_LOCAL_SLOW, /* of those, ran more than 1 ms after waking */
	CANOPY_STAT_WAKE_PREEMPT_REMOTE, /* preempting-class wakeups that preempted another CPU */
	CANOPY_STAT_WAKE_PREEMPT_REMOTE_SLOW, /* of those, ran more than 1 ms after waking */
	CANOPY_STAT_WAKE_QUEUED, /* preempting-class wakeups that found nothing to preempt */
	CANOPY_STAT_WAKE_QUEUED_SLOW, /* of those, ran more than 1 ms after waking */
	CANOPY_STAT_MOVES, /* tasks the kernel moved to another cgroup */
	CANOPY_STAT_MOVE_SLICE_CUTS, /* moved tasks that were running: decided at the move, slice cut */
	CANOPY_STAT_MOVED_DECISIONS, /* first class decisions (enqueue or keep) after a task's move */
	CANOPY_STAT_MOVED_DECISIONS_SLOW, /* of those, more than 10 ms after the move (the task slept or waited) */
	CANOPY_STAT_CPU_TREE_FULL, /* cgroups the cpu.weight tree could not track (map full) */
	CANOPY_STAT_QUOTA_SKIPS, /* queued tasks a dispatch passed over because their cgroup used its cpu.max quota */
	CANOPY_STAT_PREEMPT_BUDGET_SPENT, /* preempting-class wakeups queued instead: the task spent its preemption budget */
	CANOPY_STAT_CHILD_CIDS_RECLAIMED, /* CPUs taken back from a child's grant past the quantum because own tasks were queued */
	CANOPY_STAT_CHILD_WAKE_KICKS, /* CPUs taken back for a canopy child whose preempting-class task woke (child_wake.bpf.h) */
	CANOPY_STAT_CHILD_WAKE_UNSERVED, /* such requests that found nothing to take: every CPU the asker's, or running an own task not preemptible */
	CANOPY_STAT_GROUP_POLICY_FULL, /* cgroups made that got no group_policy entry (map full): no group can own them */
	CANOPY_STAT_IDLE_GUARD_SLICES, /* short slices given to tasks of idle cgroups (cpu.idle) that waited past the starvation guard */
	CANOPY_STAT_CHILD_PREV_KEPT, /* dispatches that placed nothing after a child's grant: the child's task may keep the CPU, so the grant goes on */
	CANOPY_STAT_HIGHER_CLASS_SLICE_ENDS, /* tasks a higher scheduling class (RT, deadline) took a CPU from with slice left: their slice ended, so they queue again by class */
	CANOPY_STAT_WAKE_AFTER_HIGHER_CLASS, /* preempting-class wakeups with nothing to preempt, placed first on a CPU an RT or deadline task had just taken */
	CANOPY_STAT_WAKE_AFTER_HIGHER_CLASS_SLOW, /* of those, ran more than 1 ms after waking */
	CANOPY_STAT_VTIME_DEBTS, /* requeues of a root task in the cpu tree that kept vtime past the cap as debt (class_vtime.bpf.h) */
	CANOPY_STAT_LONG_TURNS, /* runs of root tasks in the cpu tree that overran their turn by more than 8 ms (two ticks at HZ=250: a vCPU stall or a late tick) */
	CANOPY_STAT_FLOOR_LIFTS, /* requeues of tasks that stayed runnable lifted to the vtime floor (own_vtime_now - CANOPY_MAX_VTIME_AHEAD) */
	CANOPY_STAT_AHEAD_CAPPED, /* enqueues whose vtime was cut to own_vtime_now + CANOPY_MAX_VTIME_AHEAD */
	CANOPY_STAT_VTIME_PREEMPTS, /* waking or new own tasks that preempted a running own task charged past them in vtime (canopy_root.bpf.c) */
	CANOPY_STAT_RCU_READERS_FIRST, /* requeues of tasks preempted inside an RCU read-side critical section, queued first (class_vtime.bpf.h) */
	CANOPY_NR_STATS,
};

/* Kernel enum values the loader writes into rodata from the kernel's BTF. */
enum canopy_kconst {
	CANOPY_K_SCX_DSQ_LOCAL,
	CANOPY_K_SCX_DSQ_LOCAL_ON,
	CANOPY_K_SCX_SLICE_DFL,
	CANOPY_K_SCX_ENQ_WAKEUP,
	CANOPY_K_SCX_ENQ_IMMED,
	CANOPY_K_SCX_ENQ_PREEMPT,
	CANOPY_K_SCX_KICK_IDLE,
	CANOPY_K_SCX_KICK_PREEMPT,
	CANOPY_K_SCX_CAP_ENQ_IMMED,
	CANOPY_K_SCX_CAP_ENQ,
	CANOPY_K_SCX_CAP_PREEMPT,
	CANOPY_K_SCX_CAP_PERF,
	CANOPY_NR_KCONSTS,
};

#endif /* CANOPY_INTF_H */
