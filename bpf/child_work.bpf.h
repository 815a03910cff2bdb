/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * child_work.bpf.h: how the root learns, without asking, that one of canopy's own children has
 * nothing queued. It owns the declaration of `members` (canopy_root makes and pins the map;
 * each canopy_child reuses the pin) and the child's side: every enqueue adds one to the child's
 * `enqueues` in its member entry. The root's side is in cid_grants.bpf.h (members_prepare) and
 * canopy_root_dispatch.
 *
 * Why: the kernel tells the root nothing when a child's task becomes runnable (per-task ops go
 * to the task's own scheduler), so every dispatch offered the cid to each idle child through
 * scx_bpf_sub_dispatch() and an idle child, lifted to the vtime floor, was offered first. With
 * two idle children beside `hackbench -T -p -l 300 -g 4` in the root's own tasks (a desktop's
 * minimized apps beside a build), that call ran in every dispatch: 1.46-1.78 s against
 * 1.36-1.53 s with no children (2026-12-07, busy host, three rounds each).
 *
 * Rule: before it offers a child the cid, the root reads the child's `enqueues`; when the child
 * dispatches nothing, the root keeps that count and the time. Until the count moves, for at
 * most CANOPY_EMPTY_CHILD_RECHECK_NS, members_prepare() leaves the child out of the offers. A
 * child whose queued tasks may not run on the cid that asked (affinity) is thus asked again
 * within 1 ms, where it was asked at every dispatch before; any enqueue makes it eligible at
 * the next dispatch. Foreign children do not count (`counts_enqueues` 0) and are offered as
 * before.
 *
 * Only a quiet child is left out: one the root has not seen with work (an offer it took, or a
 * count that had moved since the offer before) for CANOPY_EMPTY_CHILD_QUIET_NS (50 ms). Without
 * that condition, a USER_INTERACTIVE probe waking every 1.8 ms in one child beside a 4-thread
 * build in another (sched-child-latency) had p99 7.4-13.3 ms, against 5.0-6.7 ms before this
 * file existed and 6.0-6.2 ms with the skip taken out (2026-12-07 18:31-19:08 UTC, the same
 * test alternating builds on a busy host, floors 4.1-5.3 ms): a bisection over the 22 BPF
 * changes since that gate was set found this rule. Why skipping a child that wakes that often
 * delays its wakeups is not yet understood (its count moves at every enqueue, so the dispatch
 * its wake request causes offers it); counting the request as an enqueue and offering every
 * child at a dispatch coming out of idle (the kernel inserts what ops.enqueue queued only
 * after it returns, so an offer in between can read the new count and find the child empty)
 * did not bring it back. The idle children this rule was made for (the benchmark's `ta` and
 * `tb`, minimized apps) stay quiet for seconds and are skipped as before after their first
 * 50 ms.
 *
 * Worked example: 2 cids, hackbench's 160 threads in the root, children A and B idle. Each
 * dispatch used to call sub_dispatch(A) and sub_dispatch(B), both empty, then ran a hackbench
 * thread: three offers. Now the first dispatch after A and B were found empty makes one offer
 * (the root's own), for 1 ms; then one dispatch asks A and B again. When A's task wakes, A's
 * enqueue moves its count and the dispatch its idle kick causes offers A the cid.
 */
#ifndef CANOPY_CHILD_WORK_BPF_H
#define CANOPY_CHILD_WORK_BPF_H

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CANOPY_MAX_MEMBERS);
	__type(key, u32);
	__type(value, struct canopy_member);
} members SEC(".maps");

/*
 * The member entry of the child attached at @cgroup_id, NULL before the root admitted it. The
 * slot is found once by cgroup id (at most CANOPY_MAX_MEMBERS lookups) and kept in
 * @slot_cache; a slot that names another cgroup (the root gave it to someone else) is looked
 * for again.
 */
static __always_inline struct canopy_member *child_member(u64 cgroup_id, u32 *slot_cache)
{
	struct canopy_member *m;
	u32 slot = *slot_cache;
	int i;

	m = bpf_map_lookup_elem(&members, &slot);
	if (m && m->active && m->cgroup_id == cgroup_id)
		return m;
	canopy_for(i, 1, CANOPY_MAX_MEMBERS) {
		slot = i;
		m = bpf_map_lookup_elem(&members, &slot);
		if (m && m->active && m->cgroup_id == cgroup_id) {
			*slot_cache = slot;
			return m;
		}
	}
	return NULL;
}

/*
 * The child's side, once admitted: mark its entry as counting (from its first caps update,
 * which the kernel delivers right after the root's sub_attach, so an idle child with no task
 * counts too), and count each queued task.
 */
static __always_inline void child_mark_counting(u64 cgroup_id, u32 *slot_cache)
{
	struct canopy_member *m = child_member(cgroup_id, slot_cache);

	if (m && !m->counts_enqueues)
		m->counts_enqueues = 1;
}

static __always_inline void child_count_enqueue(u64 cgroup_id, u32 *slot_cache)
{
	struct canopy_member *m = child_member(cgroup_id, slot_cache);

	if (!m)
		return;
	__sync_fetch_and_add(&m->enqueues, 1);
	if (!m->counts_enqueues)
		m->counts_enqueues = 1;
}

/* The child's count as the root reads it: a plain load, never cached by the compiler. */
static __always_inline u64 member_enqueues(const struct canopy_member *m)
{
	return *(volatile const u64 *)&m->enqueues;
}

#endif /* CANOPY_CHILD_WORK_BPF_H */
