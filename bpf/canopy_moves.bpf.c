/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * canopy_moves.bpf.c: the cgroup move watcher. One program on the
 * `cgroup:cgroup_attach_task` tracepoint (it fires after a successful write to
 * cgroup.procs or cgroup.threads has migrated the task(s)) sends one
 * `struct canopy_move_event` per move into a cgroup2 cgroup through the ring
 * buffer `move_events`; the daemon reads it and re-clamps the moved threads at
 * once, in both scx and fallback modes. Moves into cgroup v1 hierarchies are
 * ignored. A full ring buffer counts the lost event in `moves_lost`, which the
 * daemon treats like a proc connector overrun (rescan).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "intf.h"

char _license[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CANOPY_MOVE_RINGBUF_BYTES);
} move_events SEC(".maps");

/* Moves into cgroup2 cgroups seen, and those dropped because the ring buffer was full. */
u64 moves_seen;
u64 moves_lost;

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
