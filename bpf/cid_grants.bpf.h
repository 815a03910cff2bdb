/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * cid_grants.bpf.h: how canopy_root divides CPU among its "members": its own tasks (member 0,
 * CANOPY_SELF_SLOT: every task not below an attached child) and each attached child
 * scheduler. It owns the `members` map, the per-cid record of who holds a cid (`cid_states`),
 * the idle-cid bits, the 100 ms accounting windows, charging a cid back to its owner
 * (charge_cid), handing it out (hand_cid) and choosing the next member (pick_member).
 *
 * Policy: every dispatch on a cid first charges the wall time since the previous dispatch on
 * that cid to whichever member owned it, as member vtime (ns * 100 / weight), then offers the
 * cid to the member with the lowest vtime, then the next, and so on: a member with nothing to
 * run is skipped at once, so capacity never idles while anyone has work (work-conserving
 * within one slice). A member that was idle re-enters at most one default slice behind the
 * busy member with the least vtime, so it cannot hoard credit (busy members are never
 * lifted: they keep whatever lag they have). Optional per-member terms, per 100 ms window and
 * across all online cids: a cap (skipped once it used cap% of the window's capacity) and a
 * guarantee (offered first while below guarantee% of the capacity elapsed). Children hold
 * SCX_CAP_ENQ_IMMED on every cid (a time share, never ownership); they run only when the root
 * calls scx_bpf_sub_dispatch() for them, which is what makes the accounting exact. A child's
 * task runs for the slice its own scheduler chose; grant_quantum.bpf.h cuts it at the quantum
 * while another member has work.
 *
 * Worked example: 2 cids; member 0 (own tasks) weight 100 with nothing runnable; child A
 * weight 200 and child B weight 100, each with two CPU hogs, 20 ms slices. After A has run
 * 40 ms its vtime is 40*100/200 = 20; after B has run 20 ms its vtime is 20*100/100 = 20.
 * Picking the lowest vtime each time keeps the vtimes level, so A receives 2/3 and B 1/3 of
 * the 2 cids: 1.33 and 0.67 CPUs. If B's hogs stop, B is skipped and A gets both cids; when
 * they resume, B starts 20 ms (one default slice) of vtime behind A (the least-served busy
 * member) and the 2:1 split is restored within a few slices. With B capped at 25%: B may use
 * 0.25 * 100 ms * 2 cids = 50 ms per window; A (or member 0) gets the rest even though B has
 * work.
 */
#ifndef CANOPY_CID_GRANTS_BPF_H
#define CANOPY_CID_GRANTS_BPF_H

#include "cpu_tree.bpf.h"

#define NO_OWNER CANOPY_MAX_MEMBERS
#define NO_CLASS CANOPY_MAX_CLASSES

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CANOPY_MAX_MEMBERS);
	__type(key, u32);
	__type(value, struct canopy_member);
} members SEC(".maps");

/* Who a cid is currently handed to, and since when. */
struct cid_state {
	u32 owner;		/* member slot, NO_OWNER when idle */
	/*
	 * class of our own task running there, NO_CLASS otherwise: set in running(), cleared in
	 * stopping(); a task the kernel keeps running past its slice sees neither, and stays
	 * preemptible
	 */
	u32 running_class;
	u64 since;
	u64 reserved_vtime;	/* vtime charged to the owner in advance when it was handed the cid */
};

struct cid_state cid_states[CANOPY_MAX_CIDS];
u64 idle_cids[CANOPY_MAX_CIDS / 64];
/* attached children; with none, dispatch skips member selection entirely */
u32 nr_children;
/*
 * Lowest vtime among members that have work (CFS's min_vruntime): a member coming back from
 * idle re-enters at most one slice behind it. Tracking the lowest, not the highest, matters:
 * a member running ahead on its guarantee must not push returning members past busy ones.
 */
u64 member_vtime_min;

/*
 * The least weight of the root's own tasks (member 0) when the policy names no weight for "/";
 * above it member 0 weighs what its runnable cgroups and tasks weigh at the top of the cpu tree
 * (own_member_weight()).
 */
const volatile u32 own_weight = CANOPY_DEFAULT_WEIGHT;

/*
 * Member 0's weight on the cgroup scale, when the policy names none for "/": what the root's
 * own runnable work weighs at the top of the cpu tree (the root node's active weight: its
 * runnable tasks on the task scale and its busy child cgroups at their cpu.weight, converted
 * as 1024 -> 100), at least own_weight. That is how the fair scheduler weighs the root's
 * cgroups and tasks against a child's cgroup beside them. Example (issue 10 (h)): 31 children
 * at cpu.weight 50-400 (5,800 in all) beside 33 cgroups of the root's own hogs (6,200): member
 * 0 at a fixed 100 got 100 / 5,900 of 8 CPUs, 0.14 CPU for 33 hogs, so a hog in a cgroup at 50
 * waited for its 20 ms slice past the kernel's 30 s watchdog and the root was ejected; at
 * 6,200 member 0 gets about half the machine, as under the fair scheduler. A child attached
 * deeper (system.slice/x.service) still weighs its own cpu.weight against all of member 0,
 * not its share inside its parent (the children are not yet nodes of the tree).
 */
static __always_inline u32 own_member_weight(void)
{
	struct canopy_cgroup_node *root = tree_node(1);
	s64 active = root ? root->active_weight : 0;
	u64 weight = active > 0 ? (u64)active * CANOPY_DEFAULT_WEIGHT / CANOPY_NICE0_WEIGHT : 0;

	if (weight < own_weight)
		weight = own_weight;
	return weight < 1000000 ? weight : 1000000;
}

static __always_inline struct cid_state *cid_state_of(s32 cid)
{
	if (cid < 0 || cid >= CANOPY_MAX_CIDS)
		return NULL;
	/* the mask keeps the offset provably bounded even if clang hoists the address */
	return &cid_states[cid & (CANOPY_MAX_CIDS - 1)];
}

static __always_inline struct canopy_member *member_of(u32 slot)
{
	return bpf_map_lookup_elem(&members, &slot);
}

static __always_inline bool cid_is_idle(s32 cid)
{
	if (cid < 0 || cid >= CANOPY_MAX_CIDS)
		return false;
	return idle_cids[(cid / 64) & (CANOPY_MAX_CIDS / 64 - 1)] & (1ULL << (cid & 63));
}

/*
 * Start a new accounting window when the current one is over. A capped member carries what
 * it used beyond its cap into the next window (a dispatch can overshoot the cap by up to a
 * quantum per cid), so over time it averages exactly its cap; a guaranteed member carries what
 * it was promised but did not get (a sibling's slice may hold a cid past the window).
 *
 * Every cid calls this at each dispatch. A cid whose clock reads a moment before the start
 * another cid just set sees a negative elapsed time and leaves the window alone (unsigned,
 * `now - start` would wrap, restart the window and forget its use: a free window for a capped
 * member). Example: cap 25% on 2 cids, a window of 100 ms: budget 50 ms. The member was
 * charged 54 ms (its last grant ended 4 ms past the cap); the next window starts with 4 ms
 * used, so it gets 46 ms more there: 50 ms a window on average.
 */
static __always_inline void roll_window(struct canopy_member *m, u64 now, u32 nr_cids)
{
	struct canopy_group_policy *pol;
	u64 budget, promised, owed, cgroup_id;

	if ((s64)(now - m->period_start_ns) < (s64)CANOPY_PERIOD_NS)
		return;
	/*
	 * Follow the share terms of the group's current state (the daemon rewrites group_policy
	 * when a state changes), once a window: weight when the policy names one (else the
	 * cgroup's cpu.weight; member 0: what its runnable work weighs, own_member_weight()),
	 * guarantee and cap.
	 */
	cgroup_id = m->cgroup_id;
	pol = bpf_map_lookup_elem(&group_policy, &cgroup_id);
	if (pol && pol->weight) {
		m->weight = pol->weight;
	} else if (cgroup_id == 1) {
		m->weight = own_member_weight();
	} else if (pol) {
		struct canopy_cgroup_node *node = tree_node(cgroup_id);

		if (node && node->cpu_weight)
			m->weight = node->cpu_weight;
	}
	if (pol) {
		m->guarantee_pct = pol->guarantee_pct;
		m->cap_pct = pol->cap_pct;
	}
	budget = (now - m->period_start_ns) * nr_cids / 100 * m->cap_pct;
	/* a guaranteed member that got less than promised is owed the rest (up to one window) */
	promised = (now - m->period_start_ns) * nr_cids / 100 * m->guarantee_pct + m->guarantee_owed_ns;
	owed = (m->guarantee_pct && promised > m->period_used_ns) ? promised - m->period_used_ns : 0;
	m->guarantee_owed_ns = owed < CANOPY_PERIOD_NS * (u64)nr_cids ? owed : CANOPY_PERIOD_NS * (u64)nr_cids;
	m->period_start_ns = now;
	if (m->cap_pct && m->cap_pct < 100 && m->period_used_ns > budget)
		m->period_used_ns -= budget;
	else
		m->period_used_ns = 0;
}

/*
 * Charge the time @cid has been handed to its owner and mark it unowned. The owner was charged
 * its expected use in advance (hand_cid); settle that against what it really used. Updates are
 * atomic: both cids of a member often end their slices on the same tick.
 */
static __always_inline void charge_cid(s32 cid, u64 now)
{
	struct cid_state *cs = cid_state_of(cid);
	struct canopy_member *m;
	u64 delta, used_vtime, reserved;
	u32 owner;

	if (!cs)
		return;
	owner = cs->owner;
	reserved = cs->reserved_vtime;
	cs->owner = NO_OWNER;
	cs->reserved_vtime = 0;
	if (owner >= CANOPY_MAX_MEMBERS)
		return;
	m = member_of(owner);
	if (!m || !m->active)
		return;
	if (m->running_cids)
		__sync_fetch_and_sub(&m->running_cids, 1);
	delta = now > cs->since ? now - cs->since : 0;
	used_vtime = delta * 100 / (m->weight ?: 1);
	/* two's complement: adding (used - reserved) also subtracts an over-reservation */
	__sync_fetch_and_add(&m->vtime, used_vtime - reserved);
	if (!delta)
		return;
	__sync_fetch_and_add(&m->cpu_ns, delta);
	roll_window(m, now, scx_bpf_nr_online_cids() ?: 1);
	/* atomic, as cpu_ns: both cids of a member often end their grants on the same tick */
	__sync_fetch_and_add(&m->period_used_ns, delta);
	/* 1/8 moving average, kept within [50 us, 2 default slices] */
	m->slice_estimate_ns = (m->slice_estimate_ns * 7 + delta) / 8;
	if (m->slice_estimate_ns < 50000)
		m->slice_estimate_ns = 50000;
	if (m->slice_estimate_ns > 2 * KCONST(SCX_SLICE_DFL))
		m->slice_estimate_ns = 2 * KCONST(SCX_SLICE_DFL);
}

/*
 * Hand @cid to member @slot and charge it, in advance, the time it is expected to keep the
 * cid. Without the reservation a member's vtime would not show what it is running right now,
 * and two cids picking at the same moment would both pick the same lagging member.
 */
static __always_inline void hand_cid(s32 cid, u32 slot, u64 now)
{
	struct cid_state *cs = cid_state_of(cid);
	struct canopy_member *m = member_of(slot);
	u64 reserved = 0;

	if (!cs)
		return;
	if (m && m->active) {
		reserved = m->slice_estimate_ns * 100 / (m->weight ?: 1);
		__sync_fetch_and_add(&m->vtime, reserved);
		__sync_fetch_and_add(&m->running_cids, 1);
	}
	cs->owner = slot;
	cs->since = now;
	cs->reserved_vtime = reserved;
}

/* Idle: nothing queued when last offered a cid and nothing running anywhere. */
static __always_inline bool member_idle(const struct canopy_member *m)
{
	return m->empty && !m->running_cids;
}

/*
 * The members one dispatch may still offer the cid to, as two bit sets over the slots (64
 * slots a word; CANOPY_MAX_MEMBERS is at most 128): `eligible` (active, below its cap, not yet
 * offered in this dispatch) and `guaranteed` (below its guarantee), made once per dispatch by
 * members_prepare(); each offer that finds nothing clears the slot's eligible bit. Kept in a
 * per-CPU map entry, not on the stack: a dispatch runs on its own CPU and is not re-entered
 * there, and the two functions below are verified once each as global functions (inlined
 * into the dispatch loop, their loops made the verifier walk 888,518 instructions and the
 * x86 JIT give up on the program).
 */
struct member_offers {
	u64 eligible[2];
	u64 guaranteed[2];
};

_Static_assert(CANOPY_MAX_MEMBERS <= 128, "struct member_offers holds 128 slots");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct member_offers);
} member_offers_here SEC(".maps");

static __always_inline struct member_offers *offers_here(void)
{
	u32 zero = 0;

	return bpf_map_lookup_elem(&member_offers_here, &zero);
}

static __always_inline bool member_in(const u64 *set, u32 slot)
{
	return set[(slot / 64) & 1] & (1ULL << (slot & 63));
}

static __always_inline void member_add(u64 *set, u32 slot)
{
	set[(slot / 64) & 1] |= 1ULL << (slot & 63);
}

static __always_inline void member_remove(u64 *set, u32 slot)
{
	set[(slot / 64) & 1] &= ~(1ULL << (slot & 63));
}

/* This dispatch offered @slot the cid and it had nothing: not again in this dispatch. */
static __always_inline void member_offered(u32 slot)
{
	struct member_offers *offers = offers_here();

	if (offers)
		member_remove(offers->eligible, slot);
}

/*
 * Once per dispatch: start new windows where they are over, lift members coming back from idle
 * to the floor (at most one default slice behind the least-served busy member), and fill this
 * CPU's member_offers: active members not at their cap are eligible, those below their
 * guarantee are guaranteed. One pass over the slots for the floor and one for the rest,
 * however many offers the dispatch then makes (before, both passes ran again for every offer:
 * 2 x 65 x 65 lookups at 64 children in a dispatch that found every member empty). Returns 0,
 * or -1 when the per-CPU entry is missing (then no member is offered anything).
 */
__noinline int members_prepare(u64 now, u32 nr_cids)
{
	struct member_offers *offers = offers_here();
	u64 min_busy = (u64)-1, floor, capacity = CANOPY_PERIOD_NS * (u64)nr_cids;
	int i;

	if (!offers)
		return -1;
	offers->eligible[0] = offers->eligible[1] = 0;
	offers->guaranteed[0] = offers->guaranteed[1] = 0;

	canopy_for(i, 0, CANOPY_MAX_MEMBERS) {
		struct canopy_member *m = member_of(i);

		if (m && m->active && !member_idle(m) && m->vtime < min_busy)
			min_busy = m->vtime;
	}
	if (min_busy != (u64)-1)
		member_vtime_min = min_busy;
	floor = member_vtime_min > KCONST(SCX_SLICE_DFL) ?
		member_vtime_min - KCONST(SCX_SLICE_DFL) : 0;

	canopy_for(i, 0, CANOPY_MAX_MEMBERS) {
		struct canopy_member *m = member_of(i);

		if (!m || !m->active)
			continue;
		roll_window(m, now, nr_cids);
		if (m->cap_pct && m->cap_pct < 100 &&
		    m->period_used_ns >= capacity / 100 * m->cap_pct) {
			m->throttled++;
			stat_inc(CANOPY_STAT_CAP_THROTTLED);
			continue;
		}
		/*
		 * Only a member coming back from idle is lifted to the floor: busy ones keep their
		 * lag. A member whose queue was empty while its tasks ran elsewhere is not idle.
		 */
		if (member_idle(m) && m->vtime < floor) {
			m->lifted_vtime += floor - m->vtime;
			m->vtime = floor;
		}
		member_add(offers->eligible, i);
		if (m->guarantee_pct &&
		    m->period_used_ns < (now - m->period_start_ns) * nr_cids / 100 * m->guarantee_pct +
					m->guarantee_owed_ns)
			member_add(offers->guaranteed, i);
	}
	return 0;
}

/*
 * The next member to offer a cid: of the eligible ones in this CPU's member_offers (filled by
 * members_prepare), the lowest vtime, members below their guarantee first; NO_OWNER when none
 * is left. One pass of lookups and compares.
 */
__noinline u32 pick_member(void)
{
	struct member_offers *offers = offers_here();
	u32 best = NO_OWNER;
	int i;
	u64 best_vtime = (u64)-1;
	bool best_guaranteed = false;

	if (!offers)
		return NO_OWNER;
	canopy_for(i, 0, CANOPY_MAX_MEMBERS) {
		struct canopy_member *m;
		bool guaranteed;

		if (i < 0 || i >= CANOPY_MAX_MEMBERS || !member_in(offers->eligible, i))
			continue;
		m = member_of(i);
		if (!m || !m->active)
			continue;
		guaranteed = member_in(offers->guaranteed, i);
		if ((guaranteed && !best_guaranteed) ||
		    (guaranteed == best_guaranteed && m->vtime < best_vtime)) {
			best = i;
			best_vtime = m->vtime;
			best_guaranteed = guaranteed;
		}
	}
	return best;
}

#endif /* CANOPY_CID_GRANTS_BPF_H */
