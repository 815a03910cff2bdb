/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * canopy_moves.bpf.c: the daemon's task watcher, three programs and two ring
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
 * Exits: the `sched:sched_process_exit` tracepoint sends one
 * `struct canopy_exit_event` per exiting thread through `exit_events`, and
 * the daemon then subscribes to the proc connector without its exit events.
 * An exit needs nothing done at once (the thread is gone; the daemon only
 * forgets it), so a record wakes the daemon only when none has for
 * CANOPY_EXIT_WAKEUP_EVERY_NS or the ring is more than half full; the rest
 * wait for the daemon's next read. Worked example: the frame benchmark's
 * build ends about 65 one-process jobs a second beside a desktop; the proc
 * connector woke the daemon 65 times a second for their exits (in a 2-vCPU
 * guest the build lost a fifth to a third of its jobs to that,
 * docs/scheduler-benchmark.md); here the first exit after a quiet second
 * wakes it, the next 64 are read at the wakeups the jobs' forks and execs
 * cause anyway, and a read one second after the last takes what is left.
 * `exits_lost` counts records a full ring dropped (the daemon rescans). In scx
 * mode the program also deletes the thread's `task_classes` entry, so the
 * daemon's batch makes no map write per exit.
 *
 * Forks: in scx mode the `sched:sched_process_fork` tracepoint copies the
 * parent's class entry (its thread's own, else its process's) to a child that
 * is a new process, before the child first runs. The daemon lets a new
 * process live 100 ms before it reads and tags it (NEWBORN_WAIT,
 * crates/canopy-controller/src/controller/newborns.rs), and most of a build's
 * processes are gone by then; with the copy such a child runs in its parent's
 * class meanwhile, as the kernel's own copy of nice and policy makes it do in
 * fallback mode, where this map is the watcher's own, empty one. Example: make
 * tagged BACKGROUND by an inheriting rule forks sh, which runs BACKGROUND from
 * its first instruction; without the copy it would run in the policy's default
 * class until the daemon got to it. A new thread needs no copy: with no entry
 * of its own it takes its process's. Cost: one or two hash lookups per fork and
 * an update per new process whose parent has an entry.
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
	__uint(max_entries, CANOPY_EXIT_RINGBUF_BYTES);
} exit_events SEC(".maps");

/* Moves into cgroup2 cgroups seen, and those dropped because the ring buffer was full. */
u64 moves_seen;
u64 moves_lost;
/* Thread exits seen, those dropped (ring full), and when an exit record last woke the daemon. */
u64 exits_seen;
u64 exits_lost;
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

SEC("tp_btf/sched_process_exit")
int BPF_PROG(canopy_sched_process_exit, struct task_struct *task, bool group_dead)
{
	struct canopy_exit_event *event;
	u64 now = bpf_ktime_get_ns();
	u64 flags = BPF_RB_NO_WAKEUP;

	__sync_fetch_and_add(&exits_seen, 1);
	event = bpf_ringbuf_reserve(&exit_events, sizeof(*event), 0);
	if (!event) {
		__sync_fetch_and_add(&exits_lost, 1);
		return 0;
	}
	event->pid = task->tgid;
	event->tid = task->pid;
	event->timestamp_ns = now;
	/*
	 * In scx mode the loader shares the schedulers' pinned `task_classes`: the exited
	 * thread's entry goes now, and the daemon, reading this record later, has no map write
	 * to make for it (it deletes only an entry it wrote after this timestamp). In fallback
	 * mode this is the watcher's own one-entry map, always empty.
	 */
	bpf_map_delete_elem(&task_classes, &event->tid);
	/*
	 * Two CPUs may both see a quiet second and both wake the daemon: one spare wakeup, no
	 * harm, so no atomics here.
	 */
	if (now - exit_wakeup_at_ns >= CANOPY_EXIT_WAKEUP_EVERY_NS ||
	    bpf_ringbuf_query(&exit_events, BPF_RB_AVAIL_DATA) > CANOPY_EXIT_RINGBUF_BYTES / 2) {
		exit_wakeup_at_ns = now;
		flags = BPF_RB_FORCE_WAKEUP;
	}
	bpf_ringbuf_submit(event, flags);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(canopy_sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	u32 parent_tid = parent->pid, parent_tgid = parent->tgid, child_pid = child->pid;
	u32 *class, copy;

	if (child->pid != child->tgid)
		return 0;
	class = bpf_map_lookup_elem(&task_classes, &parent_tid);
	if (!class && parent_tgid != parent_tid)
		class = bpf_map_lookup_elem(&task_classes, &parent_tgid);
	if (!class)
		return 0;
	/* BPF_ANY: an entry under a reused id is a leftover (the exit program deletes them) */
	copy = *class;
	bpf_map_update_elem(&task_classes, &child_pid, &copy, BPF_ANY);
	return 0;
}
