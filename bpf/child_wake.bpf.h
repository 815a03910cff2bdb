/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * child_wake.bpf.h: how canopy_child asks canopy_root for a CPU when one of its tasks of a
 * preempting class (USER_INTERACTIVE) wakes and no cid it may use is idle. It owns the map both
 * schedulers share (`child_wake_requests`: canopy_root creates it and pins it, each canopy_child
 * reuses the pin, so only canopy's own children can ask) and the child's side of the request;
 * the root's side (which cid to take back) is in grant_quantum.bpf.h.
 *
 * Why: a child's tasks reach a CPU only through the root's dispatch (scx_bpf_sub_dispatch), and
 * the kernel tells the root nothing when a child's task wakes: per-task ops go to the task's own
 * scheduler, and a child may not preempt a task outside its subtree (it holds no
 * SCX_CAP_PREEMPT). So while another child's tasks hold every cid with 20 ms slices, a waking
 * UI thread in an app's child waited for a slice to end: p99 18.8-20.0 ms in the systemd guest's
 * desktop step, against a 3.9 ms floor.
 *
 * Request: the child sets the entry of the waking task's last cid to its own cgroup id and
 * starts the entry's timer at 0 ns; the timer's callback is the root's (set at the root's init),
 * so it runs as the root, which holds every cap. The waking task's preemption budget
 * (preempt_budget.bpf.h, 40 ms of running per 100 ms) bounds how often a child asks, as it
 * bounds the root's own preempting wakeups. Two requests for one cid before the callback ran
 * are one request (the later child's).
 *
 * Worked example: 2 cids; child B (a build, 4 BACKGROUND threads, 20 ms slices) holds both;
 * child P's USER_INTERACTIVE probe wakes every 2 ms. The probe's enqueue finds no idle cid and
 * asks for cid 1 (where it last ran); tens of microseconds later the root's callback sees cid 1
 * held by B, not P, and kicks it with SCX_KICK_PREEMPT. cid 1's dispatch charges B and offers
 * the cid by member vtime: P used little, so it comes back from idle at the vtime floor, below
 * B, and sub_dispatch(P) runs the probe. Without the request the probe waited up to B's 20 ms.
 * The kick never gives P more than its member share: a P that used its share is offered the
 * cid after B, and B keeps it.
 */
#ifndef CANOPY_CHILD_WAKE_BPF_H
#define CANOPY_CHILD_WAKE_BPF_H

#include "canopy.bpf.h"

/* A canopy child's request for a cid, keyed by the cid its waking task last ran on. */
struct child_wake_request {
	struct bpf_timer timer;	/* its callback is the root's (grant_quantum.bpf.h) */
	u64 cgroup_id;		/* attach cgroup of the child that asked */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CANOPY_MAX_CIDS);
	__type(key, u32);
	__type(value, struct child_wake_request);
} child_wake_requests SEC(".maps");

/*
 * The child's side: ask the root (through the shared map) to take back a cid for the child
 * attached at @cgroup_id, whose task @p of a preempting class woke and found no idle cid.
 */
static __always_inline void ask_root_for_cid(struct task_struct *p, u64 cgroup_id)
{
	struct child_wake_request *request;
	s32 cid = scx_bpf_task_cid(p);
	u32 key;

	if (cid < 0 || cid >= CANOPY_MAX_CIDS)
		cid = 0;
	key = cid;
	request = bpf_map_lookup_elem(&child_wake_requests, &key);
	if (!request)
		return;
	request->cgroup_id = cgroup_id;
	bpf_timer_start(&request->timer, 0, 0);
}

#endif /* CANOPY_CHILD_WAKE_BPF_H */
