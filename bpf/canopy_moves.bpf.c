/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * canopy_moves.bpf.c: the daemon's task watcher, four programs and two ring
 * buffers, loaded in scx and fallback modes alike.
 *
 * Moves: the `cgroup:cgroup_attach_task` tracepoint (it fires after a
 * successful write to cgroup.procs or cgroup.threads has migrated the task(s))
 * sends one `struct canopy_move_event` per move into a cgroup2 cgroup through
 * the ring buffer `move_events`, each with a wakeup; the daemon reads it and
 * re-clamps the moved threads at once. Moves into cgroup v1 hierarchies are
 * ignored. A full ring buffer counts the lost event in `moves_lost`, which the
 * daemon treats like a proc connector overrun (rescan).
 *
 * Forks, execs and exits: the `sched:sched_process_fork`, `sched_process_exec`
 * and `sched_process_exit` tracepoints send one `struct canopy_task_event`
 * each through `task_events`, in the order the kernel wrote them, and the
 * daemon then subscribes to the proc connector for renames only. None needs
 * the daemon at once: a new process runs as its parent (below) and the daemon
 * lets it live 100 ms before it reads and tags it (NEWBORN_WAIT,
 * crates/canopy-controller/src/controller/newborns.rs); a new thread runs in
 * its process's class; an exited thread is gone. So a fork or exec record
 * wakes the daemon only when none has for CANOPY_FORK_EXEC_WAKEUP_EVERY_NS
 * (the daemon reads again that long after a read that found any), an exit
 * only when none has for CANOPY_EXIT_WAKEUP_EVERY_NS, and any record when the
 * ring is more than half full. Worked example: the frame benchmark's build
 * forks, execs and ends 80-120 one-process jobs a second beside a desktop;
 * through the proc connector each fork and each exec woke the daemon, 160-240
 * times a second, and the epoll wait (with the switch) and the receive were
 * half of its CPU (scripts/profile-daemon, 2026-12-07 09:12 UTC); here the
 * first fork after a quiet 50 ms wakes it, the daemon reads the ring again
 * 50 ms later, and the build costs it at most 40 wakeups a second. `task_records_lost`
 * counts records a full ring dropped (the daemon rescans). In scx mode the
 * exit program also deletes the thread's `task_classes` entry, so the
 * daemon's batch makes no map write per exit.
 *
 * Class at fork: in scx mode the fork program copies the parent's class entry
 * (its thread's own, else its process's) to a child that is a new process,
 * before the child first runs, so such a child runs in its parent's class
 * until the daemon handles it, as the kernel's own copy of nice and policy
 * makes it do in fallback mode, where this map is the watcher's own, empty
 * one. Example: make tagged BACKGROUND by an inheriting rule forks sh, which
 * runs BACKGROUND from its first instruction; without the copy it would run
 * in the policy's default class until the daemon got to it. A new thread
 * needs no copy: with no entry of its own it takes its process's. Cost: one
 * or two hash lookups per fork and an update per new process whose parent
 * has an entry, and one ring record per fork, exec and exit.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "intf.h"
#include "task_classes.bpf.h"

char _license[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CANOPY_MOVE_RINGBUF_BYTES);
} move_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CANOPY_TASK_RINGBUF_BYTES);
} task_events SEC(".maps");

/* Moves into cgroup2 cgroups seen, and those dropped because the ring buffer was full. */
u64 moves_seen;
u64 moves_lost;
/* Forks, execs and thread exits seen; their records dropped (ring full). */
u64 forks_seen;
u64 execs_seen;
u64 exits_seen;
u64 task_records_lost;
/* When a fork or exec record, and an exit record, last woke the daemon. */
u64 fork_exec_wakeup_at_ns;
u64 exit_wakeup_at_ns;

/* The default (cgroup2) hierarchy's id; cgroup v1 hierarchies have ids from 1. */
#define CGROUP2_HIERARCHY_ID 0

SEC("tp_btf/cgroup_attach_task")
int BPF_PROG(canopy_cgroup_attach_task, struct cgroup *dst_cgrp, const char *path,
	     struct task_struct *task, bool threadgroup)
{
	struct canopy_move_event *event;

	if (dst_cgrp->root->hierarchy_id != CGROUP2_HIERARCHY_ID)
		return 0;
	__sync_fetch_and_add(&moves_seen, 1);
	event = bpf_ringbuf_reserve(&move_events, sizeof(*event), 0);
	if (!event) {
		__sync_fetch_and_add(&moves_lost, 1);
		return 0;
	}
	event->cgroup_id = dst_cgrp->kn->id;
	event->pid = task->tgid;
	event->tid = task->pid;
	event->threadgroup = threadgroup ? 1 : 0;
	event->pad = 0;
	event->timestamp_ns = bpf_ktime_get_ns();
	bpf_ringbuf_submit(event, 0);
	return 0;
}

/*
 * Reserves a task record of @kind for thread @task; NULL (counted) when the ring is full.
 */
static struct canopy_task_event *reserve_task_event(u32 kind, struct task_struct *task, u64 now)
{
	struct canopy_task_event *event;

	event = bpf_ringbuf_reserve(&task_events, sizeof(*event), 0);
	if (!event) {
		__sync_fetch_and_add(&task_records_lost, 1);
		return NULL;
	}
	event->kind = kind;
	event->pid = task->tgid;
	event->tid = task->pid;
	event->parent_pid = 0;
	event->parent_tid = 0;
	event->pad = 0;
	event->timestamp_ns = now;
	return event;
}

/*
 * Submits @event, waking the daemon only if no record of its kind has for @every_ns (the
 * time of the last such wakeup in *@woke_at_ns) or the ring is more than half full. Two CPUs
 * may both see the gap and both wake it: one spare wakeup, no harm, so no atomics here.
 */
static void submit_task_event(struct canopy_task_event *event, u64 now, u64 *woke_at_ns,
			      u64 every_ns)
{
	u64 flags = BPF_RB_NO_WAKEUP;

	if (now - *woke_at_ns >= every_ns ||
	    bpf_ringbuf_query(&task_events, BPF_RB_AVAIL_DATA) > CANOPY_TASK_RINGBUF_BYTES / 2) {
		*woke_at_ns = now;
		flags = BPF_RB_FORCE_WAKEUP;
	}
	bpf_ringbuf_submit(event, flags);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(canopy_sched_process_exit, struct task_struct *task, bool group_dead)
{
	struct canopy_task_event *event;
	u64 now = bpf_ktime_get_ns();

	__sync_fetch_and_add(&exits_seen, 1);
	event = reserve_task_event(CANOPY_TASK_EXIT, task, now);
	if (!event)
		return 0;
	/*
	 * In scx mode the loader shares the schedulers' pinned `task_classes`: the exited
	 * thread's entry goes now, and the daemon, reading this record later, has no map write
	 * to make for it (it deletes only an entry it wrote after this timestamp). In fallback
	 * mode this is the watcher's own one-entry map, always empty.
	 */
	bpf_map_delete_elem(&task_classes, &event->tid);
	submit_task_event(event, now, &exit_wakeup_at_ns, CANOPY_EXIT_WAKEUP_EVERY_NS);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(canopy_sched_process_exec, struct task_struct *task, pid_t old_pid,
	     struct linux_binprm *bprm)
{
	struct canopy_task_event *event;
	u64 now = bpf_ktime_get_ns();

	__sync_fetch_and_add(&execs_seen, 1);
	event = reserve_task_event(CANOPY_TASK_EXEC, task, now);
	if (event)
		submit_task_event(event, now, &fork_exec_wakeup_at_ns,
				  CANOPY_FORK_EXEC_WAKEUP_EVERY_NS);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(canopy_sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	u32 parent_tid = parent->pid, parent_tgid = parent->tgid, child_pid = child->pid;
	struct canopy_task_event *event;
	u64 now = bpf_ktime_get_ns();
	u32 *class, copy;

	__sync_fetch_and_add(&forks_seen, 1);
	/* The class copy first: the record may wake the daemon, which may read the entry. */
	if (child->pid == child->tgid) {
		class = bpf_map_lookup_elem(&task_classes, &parent_tid);
		if (!class && parent_tgid != parent_tid)
			class = bpf_map_lookup_elem(&task_classes, &parent_tgid);
		if (class) {
			/* BPF_ANY: an entry under a reused id is a leftover (exits delete them) */
			copy = *class;
			bpf_map_update_elem(&task_classes, &child_pid, &copy, BPF_ANY);
		}
	}
	event = reserve_task_event(CANOPY_TASK_FORK, child, now);
	if (!event)
		return 0;
	event->parent_pid = parent_tgid;
	event->parent_tid = parent_tid;
	submit_task_event(event, now, &fork_exec_wakeup_at_ns, CANOPY_FORK_EXEC_WAKEUP_EVERY_NS);
	return 0;
}
