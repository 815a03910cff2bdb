/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * cid_grants.bpf.h: how canopy_root divides CPU among its "members": its own tasks (member 0,
 * CANOPY_SELF_SLOT: every task not below an attached child) and each attached child
 * scheduler. It owns the `members` map's contents (the declaration is child_work.bpf.h's:
 * canopy children share the map to count their enqueues), the per-cid record of who holds a
 * cid (`cid_states`), the idle-cid bits, the 100 ms accounting windows, charging a cid back to
 * its owner (charge_cid), handing it out (hand_cid) and choosing the next member (pick_member).
 *
 * Policy: every dispatch on a cid first charges whichever member owned it for the time since
 * its grant began (where the kernel started its task: hand_cid_after_dispatch()), as member
 * vtime (ns * MEMBER_VTIME_UNIT / tree_share, its share of the machine in the cpu tree;
 * below), then offers the
 * cid to the member with the lowest vtime, then the next, and so on: a member with nothing to
 * run is skipped at once, so capacity never idles while anyone has work (work-conserving
 * within one slice). A member that was idle re-enters at most one default slice of its own
 * CPU time (one slice at its share) behind the busy member with the least vtime, so it cannot
 * hoard credit (busy members are never lifted: they keep whatever lag they have). Optional
 * per-member terms, per 100 ms window and across all online cids, both judged against the
 * capacity elapsed in the window with the member's grants in flight counted: a cap (skipped
 * while it has used cap% of it; overuse and, while it has work, underuse carry into the next
 * window, bounded: roll_window) and a guarantee (offered first while below guarantee% of
 * it). Children hold
 * SCX_CAP_ENQ_IMMED on every cid (a time share, never ownership); they run only when the root
 * calls scx_bpf_sub_dispatch() for them, which is what makes the accounting exact. A child's
 * task runs for the slice its own scheduler chose; grant_quantum.bpf.h cuts it at the quantum
 * while another member has work.
 *
 * Shares: a member's weight is its hierarchical fraction of the machine (`tree_share`, units
 * of 1/CANOPY_TREE_SHARE_ONE, averaged by member_shares_refresh() over samples of the tree a
 * timer takes every 5-15 ms, and taken afresh within 1 ms of a child turning busy or idle).
 * A busy child counts at its attach cgroup's
 * node of the cpu tree as a cgroup with runnable tasks does (cpu_tree.bpf.h), so its share is
 * that cgroup's hw, inside its parent as under the fair scheduler, of what the root cgroup's
 * own tasks leave (their part of the machine: the larger of what they use and their weight
 * share, root_tasks_part_sample()); member 0's is what the tree
 * holds beside the busy children (1 - their shares), at least what a top-level cgroup at
 * own_weight would get beside the tree's top (the floor that keeps the root's own hogs served
 * beside many children, e86fbf2), or with a policy weight for "/", exactly that at the
 * policy's weight. `weight` stays the member's weight in its parent cgroup, as shown.
 * Example: `p` (100) holding the child on `p/c` (100) and the root's own `p/o` (100), beside
 * the root's own `q` (100), two hogs each on 2 cids: the child's share 1/2 * 1/2 = 0.25,
 * member 0's 0.75; c, o and q get 25%, 25% and 50% (the tree splits member 0's 75% 1:2).
 * Before, the child weighed its cpu.weight 100 against member 0's 200 (p and q): 33%.
 * Cost: a dispatch with children compares each slot's busy state with its count in the tree
 * (no lookup beyond the slot's); a child turning busy or idle walks up the tree once (at most
 * CANOPY_MAX_CGROUP_DEPTH lookups); the refresh walks up once per attached child (at most
 * CANOPY_MAX_CGROUP_DEPTH lookups each) at each sample (about 100 a second, from the timer,
 * not in any dispatch) and within MEMBER_SHARES_MIN_GAP_NS of a turn. Charging and handing
 * out stay one multiply-divide.
 *
 * Worked example: 2 cids; member 0 (own tasks) with nothing runnable; child A at cpu.weight
 * 200 and child B at 100 at the top level, each with two CPU hogs, 20 ms slices: shares 2/3
 * and 1/3. After A has run 40 ms its vtime is 40 / (16 * 2/3) = 3.75; after B has run 20 ms
 * its vtime is 20 / (16 * 1/3) = 3.75.
 * Picking the lowest vtime each time keeps the vtimes level, so A receives 2/3 and B 1/3 of
 * the 2 cids: 1.33 and 0.67 CPUs. If B's hogs stop, B is skipped and A gets both cids; when
 * they resume, B starts one default slice of its own CPU (20 ms, 3.75 of vtime) behind A
 * (the least-served busy member) and the 2:1 split is restored within a few slices. With B
 * capped at 25%: B may use 0.25 * 100 ms * 2 cids = 50 ms per window, paced: 20 ms into a
 * window it may have used 0.25 * 20 ms * 2 cids = 10 ms, so it holds one cid about half the
 * time, in grants of at most a quantum (5 ms), and is skipped between them; A (or member 0)
 * gets the rest even though B has work, and B's use stays within about a grant of 25% of the
 * machine at any moment, not only per window.
 */
#ifndef CANOPY_CID_GRANTS_BPF_H
#define CANOPY_CID_GRANTS_BPF_H

#include "cpu_tree.bpf.h"

#define NO_OWNER CANOPY_MAX_MEMBERS
#define NO_CLASS CANOPY_MAX_CLASSES

#include "child_work.bpf.h"

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
	/*
	 * scx_bpf_now() when a higher scheduling class (RT, deadline) took the cid from our task
	 * with slice left; 0 once one of ours runs there again (canopy_root's stopping, running)
	 */
	u64 higher_class_since;
	u64 reserved_vtime;	/* vtime charged to the owner in advance when it was handed the cid */
	/* our own task running there (canopy_root's running): its vtime then, when, at what weight */
	u64 running_vtime;
	u64 running_at;
	u64 running_weight_fp;	/* 1/1024 units: the price of this run (tree_price_run()), else its weight */
};

struct cid_state cid_states[CANOPY_MAX_CIDS];
u64 idle_cids[CANOPY_MAX_CIDS / 64];
/* attached children; with none, dispatch skips member selection entirely */
u32 nr_children;
/*
 * One past the highest slot a child was ever admitted to (slot 0, our own tasks, always
 * counts): the walks over members stop here instead of at CANOPY_MAX_MEMBERS. Admission takes
 * the lowest free slot and the mark never goes down, so a freed slot below it is walked and
 * skipped as inactive. Example: two children in slots 1 and 2 make each dispatch walk 3 slots
 * in members_prepare()'s two passes and in each pick_member(), not 65. Measured under TCG with
 * kernel.bpf_stats_enabled in sched-child-latency's shape (2026-12-05, about 14,500 dispatches
 * in 10 s): 106 us per dispatch on average before, 96 us after.
 */
u32 member_slots_end = 1;

/* The member slots worth walking: [0, member_slots_in_use()). */
static __always_inline u32 member_slots_in_use(void)
{
	u32 end = member_slots_end;

	return end < CANOPY_MAX_MEMBERS ? end : CANOPY_MAX_MEMBERS;
}
/*
 * Lowest vtime among members that have work (CFS's min_vruntime): a member coming back from
 * idle re-enters at most one slice behind it. Tracking the lowest, not the highest, matters:
 * a member running ahead on its guarantee must not push returning members past busy ones.
 */
u64 member_vtime_min;

/*
 * The weight (cgroup scale) of a top-level cgroup that member 0 weighs at least as, beside
 * everything the tree's top holds, when the policy names no weight for "/"
 * (member_shares_refresh()).
 */
const volatile u32 own_weight = CANOPY_DEFAULT_WEIGHT;

/*
 * Member vtime per ns of CPU at a share of the machine: ns * MEMBER_VTIME_UNIT / tree_share,
 * so a member at 1/16 of the machine accrues one unit per ns (one at half of it, 1/8).
 */
#define MEMBER_VTIME_UNIT (CPU_TREE_ONE / 16)
/* a refresh of every member's share that a child's busy/idle turn asks for waits this long at most */
#define MEMBER_SHARES_MIN_GAP_NS 1000000ULL

/* when member_shares_refresh() last ran, and whether a child turned busy or idle since */
u64 member_shares_at;
u32 member_shares_dirty;

/* @ns of CPU as @m's member vtime: at its share of the machine (tree_share) */
static __always_inline u64 member_vtime_of(u64 ns, const struct canopy_member *m)
{
	return ns * MEMBER_VTIME_UNIT / (m->tree_share ?: 1);
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

/* The member slot of the child attached at @cgroup_id, NO_OWNER when none is. */
static __always_inline u32 member_slot_of_cgroup(u64 cgroup_id)
{
	int i;

	canopy_for(i, 1, member_slots_in_use()) {
		struct canopy_member *m = member_of(i);

		if (m && m->active && m->cgroup_id == cgroup_id)
			return i;
	}
	return NO_OWNER;
}

/*
 * The own tasks' share of the machine (member 0's `tree_share`), and its copy in
 * `own_tree_share`, which every charge of an own task reads without a map lookup
 * (cpu_tree.bpf.h): both set here, so they never differ.
 */
static __always_inline void own_tree_share_set(struct canopy_member *self, u64 share)
{
	share = share ?: 1;
	if (self)
		self->tree_share = share;
	own_tree_share = share;
}

/* Idle: nothing queued when last offered a cid and nothing running anywhere. */
static __always_inline bool member_idle(const struct canopy_member *m)
{
	return m->empty && !m->running_cids;
}

/*
 * A canopy child found with nothing to dispatch less than CANOPY_EMPTY_CHILD_RECHECK_NS ago
 * that has queued nothing since, and had no work for CANOPY_EMPTY_CHILD_QUIET_NS
 * (child_work.bpf.h): not offered a cid now.
 */
static __always_inline bool member_known_empty(const struct canopy_member *m, u64 now)
{
	return m->counts_enqueues && member_idle(m) && m->empty_at_ns &&
	       now - m->empty_at_ns < CANOPY_EMPTY_CHILD_RECHECK_NS &&
	       (s64)(now - m->active_at_ns) >= (s64)CANOPY_EMPTY_CHILD_QUIET_NS &&
	       member_enqueues(m) == m->empty_enqueues;
}

static __always_inline bool member_capped(const struct canopy_member *m)
{
	return m->cap_pct && m->cap_pct < 100;
}

/*
 * CPU time @m's grants in flight (handed, not yet charged) have run until @at: running_cids *
 * @at - held_since_sum_ns. hand_cid adds to the sum before it counts the cid and charge_cid
 * uncounts it before it takes its start out, so a reader between the two sees too little,
 * never too much; clamped to [0, a window per held cid].
 */
static __always_inline u64 held_time_until(const struct canopy_member *m, u64 at)
{
	u64 held = m->running_cids;
	s64 total = (s64)(held * at - m->held_since_sum_ns);

	if (total <= 0)
		return 0;
	return (u64)total < held * CANOPY_PERIOD_NS ? (u64)total : held * CANOPY_PERIOD_NS;
}

/*
 * Start the next accounting window when the current one is over. Windows follow each other
 * exactly (the next starts at period_start_ns + CANOPY_PERIOD_NS, whichever dispatch notices
 * it is over, and later), so a second holds ten windows' budgets; the CPU that moves
 * period_start_ns (compare-and-swap) settles the window, the others leave it alone. A cid's
 * clock may read a moment before the start another cid just set: that is not over.
 *
 * What a window counts is what was charged in it plus the grants in flight up to its end
 * (held_time_until): their time is charged later, all to the next window, so the next window
 * starts that much below zero. A capped member carries the difference between what it used
 * and its budget (cap% of the window's capacity) both ways: overuse as debt (a grant runs on
 * past the line, longer when the host stalls the CPU it runs on), at most one window's budget,
 * and underuse while it had work (a sibling's grant held the cid it was due) as a credit, at
 * most one quantum per cid, so over any run of windows it gets its cap, no more and no less;
 * a member that went idle banks nothing, and one that ran far past its cap because nothing
 * else wanted the cid (the kernel keeps its task running then: see the end of
 * canopy_root_dispatch) pays back at most one window's budget later. A guaranteed member is owed what it was promised and did not
 * get (up to one window), and what it got beyond the promise while busy (a grant ends a few ms
 * past the line) counts against the next window's promise (up to one quantum per cid), so a
 * member held at its guarantee gets the guarantee, not a grant's overrun more each window.
 * members_prepare() then paces both against the capacity elapsed in the window, so the
 * budget is spread over the window instead of spent at its start.
 *
 * Example: cap 25% on 2 cids, 100 ms windows: budget 50 ms a window. At the end of a window
 * the member had been charged 47 ms and held a cid for the last 4 ms: it used 51 ms, so it
 * carries 1 ms of debt, and the next window starts at 1 - 4 = -3 ms (the 4 ms are charged
 * there when the grant ends). Had it used 48 ms with work queued, it would start 2 ms ahead:
 * a credit. Either way it gets 50 ms a window on average and 500 ms a second.
 */
static __always_inline void roll_window(struct canopy_member *m, u64 now, u32 nr_cids)
{
	struct canopy_group_policy *pol;
	u64 start = m->period_start_ns, windows, boundary, capacity, cgroup_id;
	s64 credit_bound = CANOPY_QUANTUM_NS * (s64)nr_cids;
	s64 window_capacity = CANOPY_PERIOD_NS * (s64)nr_cids;
	s64 used, in_flight, window_use, carried, owed;

	if ((s64)(now - start) < (s64)CANOPY_PERIOD_NS)
		return;
	windows = (now - start) / CANOPY_PERIOD_NS;
	boundary = start + windows * CANOPY_PERIOD_NS;
	if (__sync_val_compare_and_swap(&m->period_start_ns, start, boundary) != start)
		return;
	/*
	 * Follow the share terms of the group's current state (the daemon rewrites group_policy
	 * when a state changes), once a window: guarantee and cap, and the weight it shows (the
	 * policy's, else cpu.weight; member 0: own_weight). The weight its vtime is charged at,
	 * its share of the machine, is member_shares_refresh()'s.
	 */
	cgroup_id = m->cgroup_id;
	pol = bpf_map_lookup_elem(&group_policy, &cgroup_id);
	if (pol && pol->weight) {
		m->weight = pol->weight;
	} else if (cgroup_id == 1) {
		m->weight = own_weight;
	} else if (pol) {
		struct canopy_cgroup_node *node = tree_node(cgroup_id);

		if (node && node->cpu_weight)
			m->weight = node->cpu_weight;
	}
	if (pol) {
		m->guarantee_pct = pol->guarantee_pct;
		m->cap_pct = pol->cap_pct;
	}
	capacity = windows * CANOPY_PERIOD_NS * (u64)nr_cids;
	used = m->period_used_ns;
	in_flight = (s64)held_time_until(m, boundary);
	window_use = used + in_flight;
	/*
	 * a guaranteed member that got less than promised is owed the rest (up to one window);
	 * one that got more while busy starts behind its promise (by up to a quantum per cid)
	 */
	owed = 0;
	if (m->guarantee_pct) {
		owed = (s64)(capacity / 100 * m->guarantee_pct) + m->guarantee_owed_ns - window_use;
		if (owed > window_capacity)
			owed = window_capacity;
		if (owed < 0 && member_idle(m))
			owed = 0;
		if (owed < -credit_bound)
			owed = -credit_bound;
	}
	m->guarantee_owed_ns = owed;
	carried = 0;
	if (member_capped(m)) {
		carried = window_use - (s64)(capacity / 100 * m->cap_pct);
		if (carried < 0 && member_idle(m))
			carried = 0;
		if (carried < -credit_bound)
			carried = -credit_bound;
		if (carried > window_capacity / 100 * m->cap_pct)
			carried = window_capacity / 100 * m->cap_pct;
	}
	/* added, not stored: a grant charged on another cid meanwhile is kept */
	__sync_fetch_and_add(&m->period_used_ns, carried - in_flight - used);
}

/*
 * One step of an exponential moving average: 1/8 (AVERAGE_STEP_SHIFT) of the way from @before
 * to @sample (a sample's weight halves in about five steps). The members' shares and their
 * slice estimates both average this way.
 */
#define AVERAGE_STEP_SHIFT 3
static __always_inline u64 average_step(u64 before, u64 sample)
{
	if (sample >= before)
		return before + ((sample - before) >> AVERAGE_STEP_SHIFT);
	return before - ((before - sample) >> AVERAGE_STEP_SHIFT);
}

/*
 * Charge the time @cid has been handed to its owner and mark it unowned. The owner was charged
 * its expected use in advance (hand_cid); settle that against what it really used. Updates are
 * atomic: both cids of a member often end their slices on the same tick. Returns the slot the
 * cid was handed to (NO_OWNER when none).
 */
static __always_inline u32 charge_cid(s32 cid, u64 now)
{
	struct cid_state *cs = cid_state_of(cid);
	struct canopy_member *m;
	u64 delta, used_vtime, reserved;
	u32 owner;

	if (!cs)
		return NO_OWNER;
	owner = cs->owner;
	reserved = cs->reserved_vtime;
	cs->owner = NO_OWNER;
	cs->reserved_vtime = 0;
	if (owner >= CANOPY_MAX_MEMBERS)
		return owner;
	m = member_of(owner);
	if (!m || !m->active)
		return owner;
	/* while this grant still counts as in flight: a window it spans ends with its share */
	roll_window(m, now, scx_bpf_nr_online_cids() ?: 1);
	if (m->running_cids) {
		__sync_fetch_and_sub(&m->running_cids, 1);
		__sync_fetch_and_sub(&m->held_since_sum_ns, cs->since);
	}
	delta = now > cs->since ? now - cs->since : 0;
	used_vtime = member_vtime_of(delta, m);
	/* two's complement: adding (used - reserved) also subtracts an over-reservation */
	__sync_fetch_and_add(&m->vtime, used_vtime - reserved);
	if (!delta)
		return owner;
	__sync_fetch_and_add(&m->cpu_ns, delta);
	/* atomic, as cpu_ns: both cids of a member often end their grants on the same tick */
	__sync_fetch_and_add(&m->period_used_ns, delta);
	/* moving average, kept within [50 us, 2 default slices] */
	m->slice_estimate_ns = average_step(m->slice_estimate_ns, delta);
	if (m->slice_estimate_ns < 50000)
		m->slice_estimate_ns = 50000;
	if (m->slice_estimate_ns > 2 * KCONST(SCX_SLICE_DFL))
		m->slice_estimate_ns = 2 * KCONST(SCX_SLICE_DFL);
	return owner;
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
		reserved = member_vtime_of(m->slice_estimate_ns, m);
		__sync_fetch_and_add(&m->vtime, reserved);
		/* the start first, then the count: see held_time_until() */
		__sync_fetch_and_add(&m->held_since_sum_ns, now);
		__sync_fetch_and_add(&m->running_cids, 1);
	}
	cs->owner = slot;
	cs->since = now;
	cs->reserved_vtime = reserved;
}

/*
 * The clock the kernel bills tasks' CPU time by (rq->clock_task of the runqueue this dispatch
 * holds locked), 0 when it cannot be read. Only differences of two readings are used: its
 * origin differs from scx_bpf_now()'s, its rate does not (it leaves out IRQ time where the
 * kernel accounts that apart).
 */
static __always_inline u64 billing_clock(void)
{
	struct rq *rq = scx_bpf_locked_rq();

	return rq ? BPF_CORE_READ(rq, clock_task) : 0;
}

/*
 * Hand @cid to @slot at the end of a dispatch that began at @now, when the billing clock
 * read @entry_clock, and that charged the cid's previous grant to @previous_owner up to
 * @now. The kernel ends the previous task's run and starts the next task's at the clock as
 * it stands after dispatch, and dispatch itself can move it: a task pulled from another
 * CPU's runqueue updates this one's clock when it arrives. That time is the previous task's
 * in cpu.stat, so it is charged to the previous owner here and the new grant starts after
 * it. Example (sched-work-conserving, TCG, 2026-12-05): child A (weight 200) and B (100)
 * busy, about 1,200 dispatches in 3 s, 700 of them moved the clock, 150-175 ms in all
 * (about 230 us each). Charged from dispatch's start, canopy's own split was 2.00:1 while
 * cpu.stat said 1.92-1.97:1; B's tasks ran 40-55 ms more than B was charged.
 */
static __always_inline void hand_cid_after_dispatch(s32 cid, u32 slot, u64 now, u64 entry_clock,
						    u32 previous_owner)
{
	u64 clock = entry_clock ? billing_clock() : 0, moved = 0;
	struct canopy_member *m;

	if (clock > entry_clock)
		moved = clock - entry_clock;
	m = member_of(previous_owner);
	if (moved && previous_owner < CANOPY_MAX_MEMBERS && m && m->active) {
		__sync_fetch_and_add(&m->vtime, member_vtime_of(moved, m));
		__sync_fetch_and_add(&m->cpu_ns, moved);
		__sync_fetch_and_add(&m->period_used_ns, moved);
	}
	hand_cid(cid, slot, now + moved);
}

/*
 * @m stops counting in the cpu tree at its attach cgroup (it turned idle, or detached). The
 * compare-and-swap hands the removal to one CPU; 1 when this call took it out.
 */
static __always_inline int member_tree_uncount(struct canopy_member *m)
{
	u64 counted = m->tree_cgroup_id;

	if (!counted || __sync_val_compare_and_swap(&m->tree_cgroup_id, counted, 0) != counted)
		return 0;
	tree_remove(counted, CPU_TREE_CHILD_MARK);
	return 1;
}

/*
 * A child counts in the tree while it is attached and has not been idle for
 * MEMBER_TREE_IDLE_HOLD_NS. The root learns idleness lazily and it flickers: a child whose last
 * running cid was just charged, found empty by an offer made while that cid still ran, reads
 * idle until its next offer (within a slice) although its task is queued again. Counted out at
 * each flicker, its share went to member 0 for that moment and came back later: a child at
 * 25% got 21.5-22.6% in four boots. Its idle start is noted at the first dispatch that sees it.
 */
#define MEMBER_TREE_IDLE_HOLD_NS (2ULL * 20000000)

static __always_inline bool member_tree_counts(struct canopy_member *m, u64 now)
{
	if (!m->active)
		return false;
	if (!member_idle(m)) {
		if (m->tree_idle_since_ns)
			m->tree_idle_since_ns = 0;
		return true;
	}
	if (!m->tree_idle_since_ns) {
		m->tree_idle_since_ns = now ?: 1;
		return true;
	}
	return (s64)(now - m->tree_idle_since_ns) < (s64)MEMBER_TREE_IDLE_HOLD_NS;
}

/*
 * Child @slot turned busy or idle since it was last counted (@counts, member_tree_counts()): its attach
 * cgroup becomes an active node of the cpu tree (tree_add(), CPU_TREE_CHILD_MARK, so the node
 * weighs its cpu.weight or its policy group's weight in its parent and the parents above turn
 * active as for any cgroup with runnable tasks; tree_runnable_weight and the own tasks'
 * counts are untouched) or stops being one (tree_remove()). Which CPU adds is decided by a
 * compare-and-swap on tree_cgroup_id, which also records the cgroup the mark went to, so the
 * removal takes it from there even if the slot is reused. An add and a remove racing on two
 * CPUs may reach the node in either order; as for tasks (cpu_tree.bpf.h, races), a remove
 * that comes first crosses no zero and neither walks up. A detach that ran between reading
 * `active` and the add is undone here. Returns 1 when the tree changed. Global, verified once:
 * the walks are at most CANOPY_MAX_CGROUP_DEPTH levels and members_prepare() loops over slots.
 */
__noinline int member_tree_follow(u32 slot, int counts)
{
	struct canopy_member *m = member_of(slot);
	u64 cgroup_id;

	if (!m || slot == CANOPY_SELF_SLOT)
		return 0;
	if (!m->active || !counts)
		return member_tree_uncount(m);
	cgroup_id = m->cgroup_id;
	if (!cgroup_id || m->tree_cgroup_id ||
	    __sync_val_compare_and_swap(&m->tree_cgroup_id, 0, cgroup_id) != 0)
		return 0;
	tree_add(cgroup_id, CPU_TREE_CHILD_MARK);
	if (!m->active)
		member_tree_uncount(m);
	return 1;
}

/*
 * @cgroup_id's node takes its policy group's terms as they are now, whether or not the writer
 * bumped `group_policy_version` (a child's weight followed `group_policy` within a window
 * before its cgroup's node carried it: tests and tools rewrite one entry with bpftool). A
 * changed weight of a busy child's node corrects its parent's sum (tree_node_reweight()).
 */
__noinline int member_node_take_policy(u64 cgroup_id)
{
	struct canopy_cgroup_node *node = tree_node(cgroup_id);

	if (node)
		tree_node_take_policy(cgroup_id, node, policy_version_now());
	return 0;
}

/*
 * A member's share after one more sample of the tree: average_step() from @before to @sample,
 * an exponential average over the timer's samples (one every 10 ms on average: a sample's
 * weight halves in about 50 ms), or @sample itself when the tree just changed shape (@smooth
 * false: a child turned busy or idle) or there is no average yet.
 */
static __always_inline u64 share_sampled(u64 before, u64 sample, bool smooth)
{
	if (!smooth || !before)
		return sample;
	return average_step(before, sample);
}

/* The state of root_tasks_part_sample()'s averages. */
struct root_tasks_part {
	u64 sampled_at;		 /* when the last sample was taken (scx_bpf_now()) */
	u64 ran_ns_then;	 /* root_task_ran_ns at that sample */
	u64 use;		 /* average of the CPU they used, 1/CPU_TREE_ONE of the machine */
	u64 weight_share;	 /* average of their started weight's share at the top, same units */
};
struct root_tasks_part root_tasks_part;

#define ROOT_TASKS_PART_MAX (CPU_TREE_ONE / 2)
/*
 * The cid-time between two samples (elapsed ns times the online cids) from which their use is
 * divided in two steps: the CPU time they ran times CPU_TREE_ONE (2^20) would pass 2^64 past
 * about 4.9 hours of it, which a gap that long between samples allows (the shares timer runs
 * only while a child is busy). From 2^40 ns (18 minutes of cid-time) on, dividing the
 * cid-time by CPU_TREE_ONE first costs at most one part in 2^20.
 */
#define ROOT_TASKS_USE_EXACT_MAX_NS (1ULL << 40)

/*
 * The root cgroup's own tasks' part of the machine (1/CPU_TREE_ONE units) after one more
 * sample, and the started part of their weight (@started_weight): what the members' shares
 * take out before the cgroups divide the rest (member_shares_refresh()). It is the larger of
 * two moving averages over the samples: the CPU they used since the last sample
 * (root_task_ran_ns over the elapsed time times the online cids), and their weight's share
 * of the top counted from each task's first run (root_task_weight less
 * root_task_unstarted_weight, beside the cgroups' @cgroups_weight); at most one half.
 *
 * Why the larger: a sporadic task (the daemon's tick, a kernel worker) is rarely runnable at a
 * sample but uses CPU, which under the fair scheduler comes out of every group alike, so its
 * use takes it from every member, children included. Taken from member 0 alone (its weight
 * share only), it cost the root's own eight cgroups beside eight children 3 points:
 * 47.2-49.6% in seven boots for 50 (2026-12-06). A hog of the root cgroup keeps its weight
 * share: use alone has no fixed point for it (it uses what it is given, and given less than
 * its weight share by member 0, it would use less). Why at most one half: a burst of woken
 * kernel workers would otherwise take the children's shares away for the averages' lifetime
 * (about 50 ms); beyond one half the children keep more than the fair scheduler gives them
 * (four hogs of the root cgroup beside two busy top-level cgroups: 2/3 under fair, 1/2 here).
 *
 * Worked example, 2 cids: the daemon runs about 0.5 ms every 50 ms: use 0.5 / (50 * 2) =
 * 0.005, and it is rarely runnable after its first run at a sample: part 0.005, so a child
 * at `p/c` in the `p`/`q` example of cpu_tree.bpf.h gets 0.25 * 0.995 = 0.249 of the machine.
 * A DEFAULT hog of the root cgroup (1024, standalone table) beside `p` and `q` (1024 each):
 * weight share 1024 / 3072 = 1/3, its use converges there too: part 1/3, the child gets
 * 0.25 * 2/3 = 1/6, as under the fair scheduler (hog 1/3, p 1/3, q 1/3).
 *
 * Cost: at every sample two reads of globals, two multiply-divides and two average steps;
 * at ops.stopping of a task of the root cgroup one atomic add (tree_task_stopping()).
 */
static __always_inline u64 root_tasks_part_sample(u64 now, u64 cgroups_weight, u64 started_weight)
{
	struct root_tasks_part *rp = &root_tasks_part;
	u64 ran = root_task_ran_ns, use = 0, weight_share = 0, elapsed = now - rp->sampled_at;
	u64 cid_time, part;

	if (started_weight)
		weight_share = CPU_TREE_ONE * started_weight / (cgroups_weight + started_weight);
	if (rp->sampled_at && (s64)elapsed > 0 && ran >= rp->ran_ns_then) {
		cid_time = elapsed * (scx_bpf_nr_online_cids() ?: 1);
		if (cid_time < ROOT_TASKS_USE_EXACT_MAX_NS)
			use = (ran - rp->ran_ns_then) * CPU_TREE_ONE / cid_time;
		else
			use = (ran - rp->ran_ns_then) / (cid_time / CPU_TREE_ONE);
		if (use > CPU_TREE_ONE)
			use = CPU_TREE_ONE;
	}
	rp->sampled_at = now;
	rp->ran_ns_then = ran;
	/* never 0, which share_sampled() reads as "no average yet" */
	rp->use = share_sampled(rp->use, use ?: 1, true);
	rp->weight_share = share_sampled(rp->weight_share, weight_share ?: 1, true);
	part = rp->use > rp->weight_share ? rp->use : rp->weight_share;
	return part < ROOT_TASKS_PART_MAX ? part : ROOT_TASKS_PART_MAX;
}

/* when member_shares_refresh() last had the attach nodes re-read their policy terms */
u64 member_policy_taken_at;

/*
 * Every member's share of the machine (tree_share, 1/CPU_TREE_ONE units), at one moment so
 * they add up: the root cgroup's own tasks take their part (root_tasks_part_sample()) and
 * the cgroups share the rest; a child's is its attach cgroup's hierarchical share of that rest
 * (cgroup_tree_share(): a busy child counts there in the tree beside the root's busy
 * cgroups); member 0's is what the tree holds beside the busy children, one minus their
 * shares, but at least what a top-level cgroup at own_weight would get beside everything the
 * tree's top holds (its runnable top-level cgroups, its started tasks and its busy children's
 * top-level ancestors); with a policy weight for "/", exactly that with the policy's weight.
 * The floor is what keeps the root's own hogs served beside many children when its share was
 * taken while they slept (the kernel's watchdog ejects a root whose task waits 30 s). An idle
 * child's share is worked out as if it joined (it is refreshed when it does). Run by the
 * shares timer every 5-15 ms, which moves each share 1/8 of the way to the tree's state at
 * that moment (@smooth; below: why from a timer, why averaged), and by members_prepare()
 * within MEMBER_SHARES_MIN_GAP_NS of a child turning busy or idle, which takes the tree's
 * state as it is (@smooth 0: the shares' shape changed): one pass over the slots, at most
 * CANOPY_MAX_CGROUP_DEPTH lookups for the walk per attached child (64 children attached at
 * the top level: 128 lookups), and at a turn or once a window one more per child for its
 * attach node's policy terms (member_node_take_policy()).
 */
__noinline int member_shares_refresh(int smooth)
{
	struct canopy_member *self = member_of(CANOPY_SELF_SLOT);
	struct canopy_cgroup_node *root = tree_node(CPU_TREE_ROOT_CGROUP_ID);
	struct canopy_group_policy *pol;
	u64 children = 0, share, own, floor, top, weight, root_cgid = CPU_TREE_ROOT_CGROUP_ID;
	u64 now = scx_bpf_now(), part;
	s64 tasks = root_task_weight_now(), started, cgroups;
	bool take_policy = !smooth || now - member_policy_taken_at >= CANOPY_PERIOD_NS;
	int i;

	started = tasks - root_task_unstarted_weight;
	if (started < 0)
		started = 0;
	cgroups = (root ? root->active_weight : 0) - tasks;
	if (cgroups < 0)
		cgroups = 0;
	part = root_tasks_part_sample(now, cgroups, started);
	if (take_policy)
		member_policy_taken_at = now;

	canopy_for(i, 1, member_slots_in_use()) {
		struct canopy_member *m = member_of(i);

		if (!m || !m->active || !m->cgroup_id)
			continue;
		if (take_policy)
			member_node_take_policy(m->cgroup_id);
		/* at most CPU_TREE_ONE: every factor of the product is at most 1 (share_of()) */
		share = cgroup_tree_share(m->cgroup_id) * (CPU_TREE_ONE - part) / CPU_TREE_ONE;
		m->tree_share = share_sampled(m->tree_share, share ?: 1, smooth);
		/*
		 * read back from the map: a sum of values the verifier knows exactly would differ in
		 * every pass of the loop, and its states would never converge
		 */
		if (m->tree_cgroup_id)
			children += *(volatile u32 *)&m->tree_share;
	}
	if (!self)
		return 0;
	pol = bpf_map_lookup_elem(&group_policy, &root_cgid);
	weight = cgroup_weight_on_task_scale((pol && pol->weight) ? pol->weight : own_weight);
	top = (u64)cgroups + (u64)started;
	floor = CPU_TREE_ONE * weight / (top + weight);
	own = children < CPU_TREE_ONE ? CPU_TREE_ONE - children : 0;
	if ((pol && pol->weight) || own < floor)
		own = floor;
	own_tree_share_set(self, share_sampled(self->tree_share, own, smooth));
	return 0;
}

/*
 * The members' shares are sampled from a timer, not from a dispatch, and averaged. A share is
 * a sample of the tree, and dispatches come when a task wakes or stops: tasks of the root
 * cgroup itself (kernel threads, a daemon, a shell) are runnable at those moments far more
 * often than over time, and each counts at the tree's top. Measured for `p` (100) holding a
 * child on `p/c` and the root's own `p/o`, beside `q` (100), two hogs each on 2 vCPUs: at
 * the dispatch-time refreshes the tree's top weighed 2,627 on average against the 2,048 of p
 * and q, so the child's share averaged 0.216 where it is 0.25, and it got 21-23% of the
 * machine (its member vtime kept level with member 0's: the shares, not the picking, were
 * off). A timer fires at moments unrelated to scheduling events; at random gaps (5-15 ms) it
 * also keeps no phase with a periodic task of the root cgroup. One sample every 100 ms, held
 * for the window, did (2026-12-06, the same cgroups, in an experiment that left woken tasks
 * of the root cgroup out of the top until they ran): the measuring tool wakes every 100 ms,
 * and in two boots of five the timer found it at the top in 45 and 54 of 75 samples, giving
 * the child 24.5% and 23.0% (the others 26.0, 25.8, 25.6); averaged over samples every 5-15
 * ms, five boots gave it 25.3-25.4%. With those tasks counted from their wakeup, the averaged
 * samples gave the child 23.4-23.7% in eight boots, quiet and busy, where one sample a window
 * gave 21.7-25.2% in 29 and 19.8% and 20.5% in two full runs; the 1.5 points left were the
 * waiting tasks' bias, which root_tasks_part_sample() closes (tests/vm/sched_shares.rs,
 * CHILD_BELOW_THE_TOP_BOUND).
 * A child's busy/idle turn still refreshes from the dispatch that sees it (within
 * MEMBER_SHARES_MIN_GAP_NS, the average starting afresh there), and a dispatch refreshes if
 * the timer is MEMBER_SHARES_TIMER_LATE_NS late (a safety net: a late timer only keeps the
 * last shares longer). The timer runs only while children are attached: the first dispatch
 * with children arms it, and it stops when none is left.
 */
#define MEMBER_SHARES_TIMER_LATE_NS (10 * CANOPY_PERIOD_NS)
#define MEMBER_SHARES_SAMPLE_MIN_NS 5000000ULL
#define MEMBER_SHARES_SAMPLE_SPREAD_NS 10000000U

/* The time to the next sample: uniform in [5 ms, 15 ms), 10 ms on average. */
static __always_inline u64 member_shares_sample_gap(void)
{
	return MEMBER_SHARES_SAMPLE_MIN_NS + bpf_get_prandom_u32() % MEMBER_SHARES_SAMPLE_SPREAD_NS;
}
struct member_shares_timer {
	struct bpf_timer timer;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct member_shares_timer);
} member_shares_timers SEC(".maps");

/* 1 while the timer is started (or being started); only the one who sets it starts it */
u32 member_shares_timer_armed;

/*
 * One refresh, by whoever moves member_shares_at from @last to @now first: a sample averaged
 * in, or the tree's state as it is when a child turned busy or idle since the last one (the
 * timer's sample may come first, and must not leave the turn 1/8 done).
 */
static __always_inline void member_shares_refresh_once(u64 last, u64 now)
{
	bool turned;

	if (__sync_val_compare_and_swap(&member_shares_at, last, now) != last)
		return;
	turned = member_shares_dirty;
	member_shares_dirty = 0;
	member_shares_refresh(!turned);
}

static int member_shares_timer_fired(void *map, u32 *key, struct member_shares_timer *shares_timer)
{
	if (!nr_children) {
		member_shares_timer_armed = 0;
		return 0;
	}
	member_shares_refresh_once(member_shares_at, scx_bpf_now());
	bpf_timer_start(&shares_timer->timer, member_shares_sample_gap(), 0);
	return 0;
}

/* From ops.init (the callback is set once; the first dispatch with children starts it). */
static __always_inline void member_shares_timer_init(void)
{
	u32 key = 0;
	struct member_shares_timer *shares_timer = bpf_map_lookup_elem(&member_shares_timers, &key);

	if (!shares_timer)
		return;
	bpf_timer_init(&shares_timer->timer, &member_shares_timers, 1 /* CLOCK_MONOTONIC */);
	bpf_timer_set_callback(&shares_timer->timer, member_shares_timer_fired);
}

static __always_inline void member_shares_timer_arm(void)
{
	u32 key = 0;
	struct member_shares_timer *shares_timer;

	if (member_shares_timer_armed ||
	    __sync_val_compare_and_swap(&member_shares_timer_armed, 0, 1) != 0)
		return;
	shares_timer = bpf_map_lookup_elem(&member_shares_timers, &key);
	if (!shares_timer || bpf_timer_start(&shares_timer->timer, member_shares_sample_gap(), 0))
		member_shares_timer_armed = 0;
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
	u64 min_busy = (u64)-1, floor, gap, last;
	bool turned = false;
	int i;

	if (!offers)
		return -1;
	offers->eligible[0] = offers->eligible[1] = 0;
	offers->guaranteed[0] = offers->guaranteed[1] = 0;

	canopy_for(i, 0, member_slots_in_use()) {
		struct canopy_member *m = member_of(i);

		if (!m)
			continue;
		if (i != CANOPY_SELF_SLOT) {
			bool counts = member_tree_counts(m, now);

			if (counts != (m->tree_cgroup_id != 0) && member_tree_follow(i, counts))
				turned = true;
		}
		if (m->active && !member_idle(m) && m->vtime < min_busy)
			min_busy = m->vtime;
	}
	if (min_busy != (u64)-1)
		member_vtime_min = min_busy;
	if (turned)
		member_shares_dirty = 1;
	member_shares_timer_arm();
	last = member_shares_at;
	if ((s64)(now - last) >= (s64)MEMBER_SHARES_TIMER_LATE_NS ||
	    (member_shares_dirty && (s64)(now - last) >= (s64)MEMBER_SHARES_MIN_GAP_NS))
		member_shares_refresh_once(last, now);

	canopy_for(i, 0, member_slots_in_use()) {
		struct canopy_member *m = member_of(i);
		u64 elapsed;
		s64 used;

		if (!m || !m->active)
			continue;
		roll_window(m, now, nr_cids);
		/* the window's capacity so far, and what the member used of it, grants in flight included */
		elapsed = (s64)(now - m->period_start_ns) > 0 ? (now - m->period_start_ns) * nr_cids : 0;
		used = m->period_used_ns + (s64)held_time_until(m, now);
		if (member_capped(m) && used >= (s64)(elapsed / 100 * m->cap_pct)) {
			m->throttled++;
			stat_inc(CANOPY_STAT_CAP_THROTTLED);
			continue;
		}
		if (member_known_empty(m, now)) {
			stat_inc(CANOPY_STAT_EMPTY_CHILD_SKIPS);
			continue;
		}
		/*
		 * Only a member coming back from idle is lifted to the floor, one default slice of
		 * its own CPU time behind the least-served busy member: busy ones keep their lag. A
		 * member whose queue was empty while its tasks ran elsewhere is not idle.
		 */
		if (member_idle(m)) {
			gap = member_vtime_of(KCONST(SCX_SLICE_DFL), m);
			floor = member_vtime_min > gap ? member_vtime_min - gap : 0;
			if (m->vtime < floor) {
				m->lifted_vtime += floor - m->vtime;
				m->vtime = floor;
			}
		}
		member_add(offers->eligible, i);
		if (m->guarantee_pct &&
		    used < (s64)(elapsed / 100 * m->guarantee_pct) + m->guarantee_owed_ns)
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
	canopy_for(i, 0, member_slots_in_use()) {
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
