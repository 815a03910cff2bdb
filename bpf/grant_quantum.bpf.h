/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * grant_quantum.bpf.h: how long a child scheduler keeps a cid canopy_root granted it. It owns
 * the per-cid quantum timers (`cid_quanta`), reclaim_child_cid(), which takes a cid back
 * from a child when the root's own tasks are queued, and the root's side of a canopy child's
 * request for a cid when its preempting-class task wakes (child_wake_fired(); the request and
 * its worked example are in child_wake.bpf.h).
 *
 * Policy: a child's task runs for the slice its own scheduler chose, which may be 20 ms or a
 * second. While another member has work, each grant to a child is cut at CANOPY_QUANTUM_NS
 * (5 ms) by a per-cid bpf_timer and a preempting kick, so the split among members
 * (cid_grants.bpf.h) is corrected every few milliseconds instead of every slice. A capped
 * child's grant gets the timer even when no one else had work at grant time: a sibling that
 * wakes during the grant then gets the cid within the quantum, not after the child's whole
 * slice, and the cap is judged again (while no one else wants the cid nothing is cut: the
 * kernel would keep the child's task running anyway). When one of
 * our own tasks is queued and no idle cid took it, the cid a child has held longest is cut
 * once its grant is a quantum old (at once for a preempting wakeup with budget left). The
 * cid's next dispatch offers it by member vtime as always, so a kick never gives a member
 * more than its share.
 *
 * Worked example: children A and B, both busy, 20 ms slices, 2 cids. Dispatch hands cid 0 to
 * A at t = 0 ms and arms cid 0's timer (B has work). At t = 5 ms the timer finds the same
 * grant (armed_since == since) and B still busy: it kicks cid 0 with SCX_KICK_PREEMPT; the
 * dispatch that follows charges A 5 ms (vtime +5*100/weight) and offers the cid by vtime. So
 * each grant lasts 5 ms, not 20, and the shares settle within a window. Had B gone idle by
 * t = 5 ms, A would keep the cid for its whole slice (no kick, no cost).
 */
#ifndef CANOPY_GRANT_QUANTUM_BPF_H
#define CANOPY_GRANT_QUANTUM_BPF_H

#include "cid_grants.bpf.h"
#include "child_wake.bpf.h"

/* One timer per cid, cutting a child's grant at the quantum (see the top of this file). */
struct cid_quantum {
	struct bpf_timer timer;
	u64 armed_since;	/* cid_state.since of the grant the timer was armed for */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CANOPY_MAX_CIDS);
	__type(key, u32);
	__type(value, struct cid_quantum);
} cid_quanta SEC(".maps");

/* Another active member than @slot has work queued or running. */
static __always_inline bool others_busy(u32 slot)
{
	int i;

	canopy_for(i, 0, member_slots_in_use()) {
		struct canopy_member *m = member_of(i);

		if (i != slot && m && m->active && !member_idle(m))
			return true;
	}
	return false;
}

/* Our own tasks wait for a cid: queued preempting-class wakers or others. */
static __always_inline bool own_tasks_queued(void)
{
	return scx_bpf_dsq_nr_queued(CANOPY_URGENT_DSQ) > 0 || scx_bpf_dsq_nr_queued(CANOPY_OWN_DSQ) > 0;
}

static int quantum_expired(void *map, u32 *key, struct cid_quantum *quantum)
{
	s32 cid = *key;
	struct cid_state *cs = cid_state_of(cid);
	u32 owner;

	if (!cs)
		return 0;
	owner = cs->owner;
	/* still the same grant to a child, and someone else wants the cid: end it */
	if (owner != NO_OWNER && owner != CANOPY_SELF_SLOT && cs->since == quantum->armed_since &&
	    (others_busy(owner) || own_tasks_queued())) {
		scx_bpf_kick_cid(cid, KCONST(SCX_KICK_PREEMPT));
		stat_inc(CANOPY_STAT_QUANTUM_KICKS);
	}
	return 0;
}

/* Arm @cid's quantum timer for the grant just made (on this CPU: dispatch runs there). */
static __always_inline void arm_quantum(s32 cid)
{
	struct cid_state *cs = cid_state_of(cid);
	struct cid_quantum *quantum;
	u32 key = cid;

	quantum = bpf_map_lookup_elem(&cid_quanta, &key);
	if (!quantum || !cs)
		return;
	quantum->armed_since = cs->since;
	bpf_timer_start(&quantum->timer, CANOPY_QUANTUM_NS, BPF_F_TIMER_CPU_PIN);
}

/* A child holds @cid (not idle, not ours); its grant began at *@since. */
static __always_inline bool child_holds(s32 cid, u64 *since)
{
	struct cid_state *cs = cid_state_of(cid);

	if (!cs || cs->owner == NO_OWNER || cs->owner == CANOPY_SELF_SLOT)
		return false;
	*since = cs->since;
	return true;
}

/*
 * One of our tasks (@p) was queued and no idle cid took it: the cid a child has held longest
 * must come back within a quantum, whatever slice the child's scheduler chose (the timer that
 * dispatch arms is armed only when another member was busy at grant time). A grant already a
 * quantum old, or any grant when @p is a preempting wakeup (@urgent: it has preemption budget
 * left, preempt_budget.bpf.h), is cut now with a preempting kick; a younger one gets its
 * quantum timer, at the time it turns a quantum old. The cid's next dispatch offers it by
 * member vtime as always, so a kick never gives us more than our member share.
 * Example: a foreign child with 1 s slices got both cids while our tasks slept; a
 * USER_INTERACTIVE task of ours wakes and finds no cid to preempt: it is queued, the older
 * grant is kicked at once, and the cid's dispatch picks member 0 (it used little, so its vtime
 * is lowest): the task runs within a dispatch, not after the child's second. A DEFAULT task
 * waking 2 ms into the child's grant waits for the grant to turn 5 ms old.
 */
static __always_inline void reclaim_child_cid(struct task_struct *p, bool urgent)
{
	struct cid_quantum *quantum;
	u32 nr = scx_bpf_nr_cids(), key;
	u64 now = scx_bpf_now(), since = 0, oldest_since = (u64)-1;
	s32 oldest = -1, own = scx_bpf_task_cid(p);
	int i;

	if (!nr_children)
		return;
	/* an urgent wakeup takes back its own cid when a child holds it: no IPI */
	if (urgent && child_holds(own, &since) && task_may_run_on(p, own)) {
		oldest = own;
		oldest_since = since;
	} else {
		canopy_for(i, 0, nr < CANOPY_MAX_CIDS ? nr : CANOPY_MAX_CIDS) {
			if (child_holds(i, &since) && since < oldest_since && task_may_run_on(p, i)) {
				oldest = i;
				oldest_since = since;
			}
		}
	}
	if (oldest < 0)
		return;
	if (urgent || now - oldest_since >= CANOPY_QUANTUM_NS) {
		scx_bpf_kick_cid(oldest, KCONST(SCX_KICK_PREEMPT));
		stat_inc(CANOPY_STAT_CHILD_CIDS_RECLAIMED);
		return;
	}
	key = oldest;
	quantum = bpf_map_lookup_elem(&cid_quanta, &key);
	if (!quantum)
		return;
	quantum->armed_since = oldest_since;
	bpf_timer_start(&quantum->timer, oldest_since + CANOPY_QUANTUM_NS - now, 0);
}

/*
 * May @cid be taken back for a waking preempting-class task of the child in slot @asker? When
 * another child holds it, or one of our own tasks of a preemptible class runs there (the rule
 * of our own wakeups, cid_for_waker in canopy_root.bpf.c; the child's task's affinity is
 * not known here, and its child's dispatch places it where it may run).
 */
static __always_inline bool cid_takeable_for_child(s32 cid, u32 asker)
{
	struct cid_state *cs = cid_state_of(cid);

	if (!cs || cs->owner == NO_OWNER || cs->owner == asker)
		return false;
	return cs->owner != CANOPY_SELF_SLOT || class_preemptible_since(cs->running_class, cs->since);
}

/*
 * A canopy child asked for a cid (child_wake.bpf.h): take back the cid its task last ran on if
 * that one may be taken, else the one another child has held longest, else one running our
 * own preemptible task. The kick only sends the cid through dispatch, which offers it by
 * member vtime as always.
 */
static int child_wake_fired(void *map, u32 *key, struct child_wake_request *request)
{
	u32 nr = scx_bpf_nr_cids(), asker;
	u64 oldest_since = (u64)-1;
	s32 victim = -1;
	int i;

	asker = member_slot_of_cgroup(request->cgroup_id);
	if (asker == NO_OWNER)
		return 0;
	if (cid_takeable_for_child(*key, asker)) {
		victim = *key;
	} else {
		canopy_for(i, 0, nr < CANOPY_MAX_CIDS ? nr : CANOPY_MAX_CIDS) {
			struct cid_state *cs = cid_state_of(i);

			if (cs && cid_takeable_for_child(i, asker) && cs->since < oldest_since) {
				victim = i;
				oldest_since = cs->since;
			}
		}
	}
	if (victim < 0) {
		stat_inc(CANOPY_STAT_CHILD_WAKE_UNSERVED);
		return 0;
	}
	scx_bpf_kick_cid(victim, KCONST(SCX_KICK_PREEMPT));
	stat_inc(CANOPY_STAT_CHILD_WAKE_KICKS);
	return 0;
}

/* Called once per cid from init: the cid's quantum timer and its child-wake request timer. */
static __always_inline void init_quantum(u32 cid)
{
	struct cid_quantum *quantum = bpf_map_lookup_elem(&cid_quanta, &cid);
	struct child_wake_request *request = bpf_map_lookup_elem(&child_wake_requests, &cid);

	if (quantum) {
		bpf_timer_init(&quantum->timer, &cid_quanta, 1 /* CLOCK_MONOTONIC */);
		bpf_timer_set_callback(&quantum->timer, quantum_expired);
	}
	if (request) {
		bpf_timer_init(&request->timer, &child_wake_requests, 1 /* CLOCK_MONOTONIC */);
		bpf_timer_set_callback(&request->timer, child_wake_fired);
	}
}

#endif /* CANOPY_GRANT_QUANTUM_BPF_H */
