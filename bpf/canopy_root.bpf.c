/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * canopy_root: canopy's root sched_ext scheduler (cid form, with an arena).
 *
 * It owns two jobs:
 *
 * 1. Dividing CPU among "members": its own tasks (member 0: every task not
 *    below an attached child) and each attached child scheduler. Every
 *    dispatch on a cid first charges the wall time since the previous dispatch
 *    on that cid to whichever member owned it, as member vtime
 *    (ns * 100 / weight), then offers the cid to the member with the lowest
 *    vtime, then the next, and so on: a member with nothing to run is skipped
 *    at once, so capacity never idles while anyone has work (work-conserving
 *    within one slice). A member that was idle re-enters at most one default
 *    slice behind the busy member with the least vtime, so it cannot hoard credit
 *    (busy members are never lifted: they keep whatever lag they have).
 *    Optional per-member terms, per 100 ms window and across all online cids:
 *    a cap (skipped once it used cap% of the window's capacity) and a
 *    guarantee (offered first while below guarantee% of the capacity elapsed).
 *    Children hold SCX_CAP_ENQ_IMMED on every cid (a time share, never
 *    ownership); they run only when this scheduler calls
 *    scx_bpf_sub_dispatch() for them, which is what makes the accounting exact.
 *    A child's task runs for the slice its own scheduler chose; while another
 *    member has work, a per-cid timer cuts each grant to a child at
 *    CANOPY_QUANTUM_NS (5 ms) with a preempting kick, so the split is corrected
 *    every few milliseconds instead of every (up to 20 ms) slice.
 *
 *    Worked example: 2 cids; member 0 (own tasks) weight 100 with nothing
 *    runnable; child A weight 200 and child B weight 100, each with two CPU
 *    hogs, 20 ms slices. After A has run 40 ms its vtime is 40*100/200 = 20;
 *    after B has run 20 ms its vtime is 20*100/100 = 20. Picking the lowest
 *    vtime each time keeps the vtimes level, so A receives 2/3 and B 1/3 of
 *    the 2 cids: 1.33 and 0.67 CPUs. If B's hogs stop, B is skipped and A gets
 *    both cids; when they resume, B starts 20 ms (one default slice) of vtime
 *    behind A (the least-served busy member) and the 2:1 split is restored within a few slices.
 *    With B capped at 25%: B may use 0.25 * 100 ms * 2 cids = 50 ms per
 *    window; A (or member 0) gets the rest even though B has work.
 *
 * 2. Scheduling its own tasks by the cgroup tree and QoS class: every cgroup
 *    with the cpu controller gets its cpu.weight share of its parent's part, as
 *    the fair scheduler's classic `smp` group shares (cpu_tree.bpf.h, with its
 *    cost and a worked example; cpu.idle and cpu.max are kept there too);
 *    inside a cgroup, tasks share by class. The
 *    controller writes tid -> class into `task_classes`; unknown tasks take the
 *    policy's default class. Tasks are ordered by class-weighted vtime
 *    (class_vtime.bpf.h), charged at their weight in the tree, with the class
 *    slice. A waking task of a preempting class (USER_INTERACTIVE) goes
 *    straight to an idle cid, else preempts a cid running one of our tasks of a
 *    preemptible class (UTILITY, BACKGROUND; DEFAULT once it has run 1 ms of its
 *    slice, so a UI thread or the daemon waits at most that long behind default work),
 *    while it has preemption budget left (preempt_budget.bpf.h: 20 ms of running per
 *    100 ms window; a busy loop then queues in vtime order like everyone else). When our
 *    tasks are queued and a child holds the cids, the child's oldest grant is cut once it
 *    is a quantum old (reclaim_child_cid), whatever the slice its scheduler chose.
 *
 * Admission (sub_attach): a child may attach only on a cgroup that the policy
 * (map `group_policy`, pushed by the loader) names with a scheduler kind
 * admitting the child's ops name. Anything else is refused with -EPERM (not
 * named / name not admitted) or -ENOSPC (no free member slot); each decision is
 * logged through the `admission_events` ring buffer and bpf_printk.
 *
 * Known costs, stated honestly: cutting a grant at the quantum costs one
 * timer and one kick per grant under contention; charging at dispatch attributes the gap between a
 * task stopping and the next dispatch to the previous owner (microseconds);
 * member vtime updates race between cids (a lost update skews one slice, and
 * the next dispatch corrects it).
 */
#include "cpu_tree.bpf.h"
#include "preempt_budget.bpf.h"

char _license[] SEC("license") = "GPL";

/* weight of the root's own tasks (member 0) when the policy names no weight for "/" */
const volatile u32 own_weight = CANOPY_DEFAULT_WEIGHT;

#define NO_OWNER CANOPY_MAX_MEMBERS
#define NO_CLASS CANOPY_MAX_CLASSES

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CANOPY_MAX_MEMBERS);
	__type(key, u32);
	__type(value, struct canopy_member);
} members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} admission_events SEC(".maps");

/* The supervisor's record of children re-attached after a restart request (userspace only). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, CANOPY_MAX_GROUPS);
	__type(key, u64);
	__type(value, struct canopy_child_restarts);
} child_restarts SEC(".maps");

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

/* cmask scratch for grants; only used from sub_attach and cid_online (serialised by the kernel) */
struct canopy_cmask __arena grant_mask;

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
 * slice per cid), so over time it averages exactly its cap; a guaranteed member carries what
 * it was promised but did not get (a sibling's slice may hold a cid past the window).
 */
static __always_inline void roll_window(struct canopy_member *m, u64 now, u32 nr_cids)
{
	struct canopy_group_policy *pol;
	u64 budget, promised, owed, cgroup_id;

	if (now - m->period_start_ns < CANOPY_PERIOD_NS)
		return;
	/*
	 * Follow the share terms of the group's current state (the daemon rewrites group_policy
	 * when a state changes), once a window: weight when the policy names one (else the
	 * cgroup's cpu.weight), guarantee and cap.
	 */
	cgroup_id = m->cgroup_id;
	pol = bpf_map_lookup_elem(&group_policy, &cgroup_id);
	if (pol) {
		struct canopy_cgroup_node *node = tree_node(cgroup_id);

		if (pol->weight)
			m->weight = pol->weight;
		else if (node && node->cpu_weight)
			m->weight = node->cpu_weight;
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
	m->period_used_ns += delta;
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

	canopy_for(i, 0, CANOPY_MAX_MEMBERS) {
		struct canopy_member *m = member_of(i);

		if (i != slot && m && m->active && !member_idle(m))
			return true;
	}
	return false;
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
	    (others_busy(owner) || scx_bpf_dsq_nr_queued(CANOPY_OWN_DSQ) > 0)) {
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

/* Called once per cid from init. */
static __always_inline void init_quantum(u32 cid)
{
	struct cid_quantum *quantum = bpf_map_lookup_elem(&cid_quanta, &cid);

	if (!quantum)
		return;
	bpf_timer_init(&quantum->timer, &cid_quanta, 1 /* CLOCK_MONOTONIC */);
	bpf_timer_set_callback(&quantum->timer, quantum_expired);
}

/*
 * The next member to offer a cid: lowest vtime among active members not yet
 * tried, members below their guarantee first, members at their cap never.
 */
__noinline u32 pick_member(u64 now, u32 tried, u32 nr_cids)
{
	u32 best = NO_OWNER;
	int i;
	u64 best_vtime = (u64)-1;
	bool best_guaranteed = false;
	u64 min_busy = (u64)-1, floor;

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
		struct canopy_member *m;
		bool guaranteed;
		u64 capacity;

		if (i < 0 || i >= CANOPY_MAX_MEMBERS || (tried & (1U << i)))
			continue;
		m = member_of(i);
		if (!m || !m->active)
			continue;

		roll_window(m, now, nr_cids);
		capacity = CANOPY_PERIOD_NS * (u64)nr_cids;
		if (m->cap_pct && m->cap_pct < 100 &&
		    m->period_used_ns >= capacity / 100 * m->cap_pct) {
			m->throttled++;
			stat_inc(CANOPY_STAT_CAP_THROTTLED);
			continue;
		}
		guaranteed = m->guarantee_pct &&
			     m->period_used_ns < (now - m->period_start_ns) * nr_cids / 100 *
						 m->guarantee_pct + m->guarantee_owed_ns;

		/*
		 * Only a member coming back from idle is lifted to the floor: busy ones keep their
		 * lag. A member whose queue was empty while its tasks ran elsewhere is not idle.
		 */
		if (member_idle(m) && m->vtime < floor) {
			m->lifted_vtime += floor - m->vtime;
			m->vtime = floor;
		}

		if ((guaranteed && !best_guaranteed) ||
		    (guaranteed == best_guaranteed && m->vtime < best_vtime)) {
			best = i;
			best_vtime = m->vtime;
			best_guaranteed = guaranteed;
		}
	}
	return best;
}

/*
 * Take @cid for a waking task if it is idle. Test-and-clear: of two tasks waking at once only
 * one gets an idle cid, so a USER_INTERACTIVE task never lands in a local queue behind a
 * BACKGROUND task that saw the same cid idle a moment earlier.
 */
static __always_inline bool claim_idle_cid(struct task_struct *p, s32 cid)
{
	u64 bit, before;

	if (cid < 0 || cid >= CANOPY_MAX_CIDS || !cid_is_idle(cid) || !task_may_run_on(p, cid))
		return false;
	bit = 1ULL << (cid & 63);
	before = __sync_fetch_and_and(&idle_cids[(cid / 64) & (CANOPY_MAX_CIDS / 64 - 1)], ~bit);
	return before & bit;
}

s32 CANOPY_OP(canopy_root_select_cid, struct task_struct *p, s32 prev_cid, u64 wake_flags)
{
	struct canopy_class_params *cp;
	u32 nr = scx_bpf_nr_cids();
	s32 cid = -1;
	int i;

	if (claim_idle_cid(p, prev_cid)) {
		cid = prev_cid;
	} else {
		canopy_for(i, 0, nr < CANOPY_MAX_CIDS ? nr : CANOPY_MAX_CIDS) {
			if (claim_idle_cid(p, i)) {
				cid = i;
				break;
			}
		}
	}
	if (cid < 0)
		return prev_cid;

	/*
	 * An idle cid: run there at once. A preempting class inserts with PREEMPT, ahead of and
	 * over anything that reached the cid first (a child's task sent there by its own wakeup).
	 */
	cp = class_of(decide_class(p));
	if (cp && cp->preempts)
		track_wakeup(p, CANOPY_STAT_WAKE_IDLE);
	scx_bpf_dsq_insert___v2___canopy(p, KCONST(SCX_DSQ_LOCAL), class_slice(cp),
					 may_preempt(p, cp) ? KCONST(SCX_ENQ_PREEMPT) : 0);
	return cid;
}

static __always_inline bool cid_preemptible_for(struct task_struct *p, s32 cid)
{
	struct canopy_class_params *victim;
	struct cid_state *cs = cid_state_of(cid);

	if (!cs || cs->owner != CANOPY_SELF_SLOT || cs->running_class >= NO_CLASS)
		return false;
	victim = class_of(cs->running_class);
	if (!victim || !task_may_run_on(p, cid))
		return false;
	if (victim->preemptible)
		return true;
	/* DEFAULT: once it has run a while of its slice (cs->since: when the cid was handed to it) */
	return victim->preemptible_after_us &&
	       scx_bpf_now() - cs->since >= victim->preemptible_after_us * 1000ULL;
}

/*
 * A cid running one of our tasks of a class that @p may preempt, or -1. The task's own cid
 * comes first: preempting locally needs no IPI, and the wakeup timer fired there.
 */
static s32 find_preemptible_cid(struct task_struct *p)
{
	u32 nr = scx_bpf_nr_cids();
	s32 own = scx_bpf_task_cid(p);
	int i;

	if (cid_preemptible_for(p, own))
		return own;

	canopy_for(i, 0, nr < CANOPY_MAX_CIDS ? nr : CANOPY_MAX_CIDS) {
		if (cid_preemptible_for(p, i))
			return i;
	}
	return -1;
}

void CANOPY_OP(canopy_root_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct canopy_class_params *cp;
	u32 nr = scx_bpf_nr_cids();
	u32 class = decide_class(p);
	bool idle = task_in_idle_cgroup(p), preempting;
	s32 victim;
	int i;

	cp = class_of(class);
	/* a task of an idle cgroup (cpu.idle) never preempts: it runs when nothing else wants to */
	preempting = !idle && (enq_flags & KCONST(SCX_ENQ_WAKEUP)) && may_preempt(p, cp);
	if (preempting) {
		victim = find_preemptible_cid(p);
		if (victim >= 0) {
			track_wakeup(p, victim == scx_bpf_task_cid(p) ? CANOPY_STAT_WAKE_PREEMPT_LOCAL :
								       CANOPY_STAT_WAKE_PREEMPT_REMOTE);
			scx_bpf_dsq_insert___v2___canopy(p, KCONST(SCX_DSQ_LOCAL_ON) | victim,
							 class_slice(cp),
							 enq_flags | KCONST(SCX_ENQ_PREEMPT));
			stat_inc(CANOPY_STAT_PREEMPT_KICKS);
			return;
		}
		track_wakeup(p, CANOPY_STAT_WAKE_QUEUED);
	}

	queue_by_class(p, class, idle ? CANOPY_IDLE_DSQ : CANOPY_OWN_DSQ, enq_flags);

	canopy_for(i, 0, nr < CANOPY_MAX_CIDS ? nr : CANOPY_MAX_CIDS) {
		if (cid_is_idle(i) && task_may_run_on(p, i)) {
			scx_bpf_kick_cid(i, KCONST(SCX_KICK_IDLE));
			stat_inc(CANOPY_STAT_IDLE_KICKS);
			return;
		}
	}
	if (!idle)
		reclaim_child_cid(p, preempting);
}

/*
 * Bill the CPU time one of our tasks has run since it started: its cgroup path's cpu.max
 * quotas and caps, its class's preempt budget, and its vtime at its weight in the tree.
 */
static __always_inline void bill_own_run(struct task_struct *p, struct task_ctx *tctx, u64 now)
{
	if (nr_quota_cgroups > 0 && tctx && tctx->running_at && now > tctx->running_at)
		quota_charge(task_cpu_cgroup_id(p), now - tctx->running_at, now);
	if (tctx && tctx->running_at && now > tctx->running_at)
		preempt_budget_charge(p, tctx->class, now - tctx->running_at);
	tree_task_reweight(p, tctx);
	class_vtime_stopping(p, now, tree_charge_weight_fp(p));
}

/*
 * Keeps @prev running on @cid as our dispatch, as the class decided afresh for it, for at most
 * @quota_left ns (the cpu.max quota or cap its cgroup path has left; (u64)-1: no limit).
 */
static __always_inline bool keep_own_prev(s32 cid, struct task_struct *prev, u64 quota_left)
{
	struct cid_state *cs;
	struct task_ctx *tctx;

	if (!class_vtime_keep_prev(prev))
		return false;
	if (quota_left < prev->scx.slice)
		scx_bpf_task_set_slice(prev, quota_left);
	cs = cid_state_of(cid);
	tctx = task_ctx_of(prev);
	if (cs && tctx)
		cs->running_class = tctx->class;
	return true;
}

/* What our own tasks' turn on a cid gave it. */
enum own_dispatch {
	OWN_NONE,	/* nothing of ours wants it */
	OWN_QUEUED,	/* a queued task */
	OWN_KEPT,	/* @prev keeps running */
};

/* One timer: when a cpu.max period ends while tasks wait for it, kick the idle cids. */
struct quota_wakeup {
	struct bpf_timer timer;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct quota_wakeup);
} quota_wakeups SEC(".maps");

static int quota_period_turned(void *map, u32 *key, struct quota_wakeup *wakeup)
{
	u32 nr = scx_bpf_nr_cids();
	int i;

	canopy_for(i, 0, nr < CANOPY_MAX_CIDS ? nr : CANOPY_MAX_CIDS) {
		if (cid_is_idle(i))
			scx_bpf_kick_cid(i, KCONST(SCX_KICK_IDLE));
	}
	return 0;
}

/* Wake the idle cids at @at_ns (scx_bpf_now() time), when the throttling period ends. */
static __always_inline void wake_at_period_end(u64 at_ns, u64 now)
{
	u32 key = 0;
	struct quota_wakeup *wakeup = bpf_map_lookup_elem(&quota_wakeups, &key);

	if (wakeup)
		bpf_timer_start(&wakeup->timer, at_ns > now ? at_ns - now : 1000, 0);
}

/*
 * Move the first task of @dsq (vtime order) that may run on @cid and whose cgroup path has
 * cpu.max quota left to the local DSQ, its slice capped at that quota; tasks of throttled
 * cgroups stay queued and the timer wakes the cids when their period ends.
 */
static __noinline bool move_first_within_quota(u64 dsq, s32 cid)
{
	struct bpf_iter_scx_dsq it;
	struct task_struct *p;
	u64 now = scx_bpf_now(), wake = 0;
	bool moved = false;

	if (bpf_iter_scx_dsq_new(&it, dsq, 0))
		goto out;
	while ((p = bpf_iter_scx_dsq_next(&it))) {
		u64 period_end = 0, left;

		if (!task_may_run_on(p, cid))
			continue;
		left = quota_left(task_cpu_cgroup_id(p), now, &period_end);
		if (!left) {
			stat_inc(CANOPY_STAT_QUOTA_SKIPS);
			if (!wake || period_end < wake)
				wake = period_end;
			continue;
		}
		if (left < p->scx.slice)
			scx_bpf_dsq_move_set_slice(&it, left);
		if (scx_bpf_dsq_move(&it, p, KCONST(SCX_DSQ_LOCAL), 0)) {
			moved = true;
			break;
		}
	}
out:
	bpf_iter_scx_dsq_destroy(&it);
	if (!moved && wake)
		wake_at_period_end(wake, now);
	return moved;
}

/* Our queued task (of @dsq) to @cid's local DSQ, minding cpu.max quotas while any exist. */
static __always_inline bool move_own_to_local(u64 dsq, s32 cid)
{
	if (nr_quota_cgroups > 0)
		return move_first_within_quota(dsq, cid);
	return scx_bpf_dsq_move_to_local___v2___canopy(dsq, 0);
}

/* The quota @prev's cgroup path has left this period ((u64)-1: no limit; 0: throttled). */
static __always_inline u64 prev_quota_left(struct task_struct *prev)
{
	u64 period_end = 0;

	if (nr_quota_cgroups <= 0 || !prev)
		return (u64)-1;
	return quota_left(task_cpu_cgroup_id(prev), scx_bpf_now(), &period_end);
}

/*
 * Our own tasks' turn on @cid: with @normal, a queued task first, else @prev keeps running;
 * with @idle, after those, tasks of idle cgroups (CANOPY_IDLE_DSQ, or an idle-cgroup @prev).
 * Tasks of cgroups at their cpu.max quota are passed over.
 */
static __always_inline enum own_dispatch dispatch_own(s32 cid, struct task_struct *prev,
						      bool normal, bool idle)
{
	bool prev_idle = prev && task_in_idle_cgroup(prev);
	u64 left = prev_quota_left(prev);
	bool prev_keepable = left != 0;

	if (normal && move_own_to_local(CANOPY_OWN_DSQ, cid))
		return OWN_QUEUED;
	if (normal && !prev_idle && prev_keepable && keep_own_prev(cid, prev, left))
		return OWN_KEPT;
	if (!idle)
		return OWN_NONE;
	if (move_own_to_local(CANOPY_IDLE_DSQ, cid))
		return OWN_QUEUED;
	if (prev_idle && prev_keepable && keep_own_prev(cid, prev, left))
		return OWN_KEPT;
	return OWN_NONE;
}

void CANOPY_OP(canopy_root_dispatch, s32 cid, struct task_struct *prev)
{
	struct canopy_member *self = member_of(CANOPY_SELF_SLOT);
	u32 nr = scx_bpf_nr_online_cids(), tried = 0;
	u64 now = scx_bpf_now();
	int attempt;

	charge_cid(cid, now);

	/* fast path: no children, so the cid can only go to our own tasks */
	if (!nr_children) {
		if (dispatch_own(cid, prev, true, true) != OWN_NONE) {
			hand_cid(cid, CANOPY_SELF_SLOT, now);
			if (self)
				self->dispatches++;
			stat_inc(CANOPY_STAT_OWN_DISPATCHES);
		}
		return;
	}

	canopy_for(attempt, 0, CANOPY_MAX_MEMBERS) {
		struct canopy_member *m;
		u32 slot = pick_member(now, tried, nr ?: 1);

		if (slot >= CANOPY_MAX_MEMBERS)
			break;
		tried |= 1U << (slot & 31);
		m = member_of(slot);
		if (!m)
			break;

		if (slot == CANOPY_SELF_SLOT) {
			enum own_dispatch own = dispatch_own(cid, prev, true, false);

			if (own == OWN_NONE) {
				m->empty = 1;
				continue;
			}
			m->empty = 0;
			hand_cid(cid, slot, now);
			if (own == OWN_QUEUED) {
				m->dispatches++;
				stat_inc(CANOPY_STAT_OWN_DISPATCHES);
			}
			return;
		}
		if (scx_bpf_sub_dispatch(m->cgroup_id)) {
			m->empty = 0;
			hand_cid(cid, slot, now);
			if (others_busy(slot))
				arm_quantum(cid);
			m->dispatches++;
			stat_inc(CANOPY_STAT_SUB_DISPATCHES);
			return;
		}
		m->empty = 1;
		stat_inc(CANOPY_STAT_SUB_DISPATCH_EMPTY);
	}
	/* no member had work: our tasks of idle cgroups may have the cid */
	if (dispatch_own(cid, prev, false, true) != OWN_NONE) {
		hand_cid(cid, CANOPY_SELF_SLOT, now);
		if (self)
			self->dispatches++;
		stat_inc(CANOPY_STAT_OWN_DISPATCHES);
	}
}

void CANOPY_OP(canopy_root_running, struct task_struct *p)
{
	s32 cid = scx_bpf_task_cid(p);
	struct cid_state *cs = cid_state_of(cid);
	struct task_ctx *tctx = task_ctx_of(p);
	u64 now = scx_bpf_now();

	class_vtime_running(p, now);
	if (!cs)
		return;
	if (cs->owner != CANOPY_SELF_SLOT) {
		charge_cid(cid, now);
		hand_cid(cid, CANOPY_SELF_SLOT, now);
	}
	cs->running_class = tctx ? tctx->class : task_class(p);
}

void CANOPY_OP(canopy_root_stopping, struct task_struct *p, bool runnable)
{
	struct cid_state *cs = cid_state_of(scx_bpf_task_cid(p));

	bill_own_run(p, task_ctx_of(p), scx_bpf_now());
	if (cs)
		cs->running_class = NO_CLASS;
}

void CANOPY_OP(canopy_root_update_idle, s32 cid, bool idle)
{
	u64 bit;

	if (cid < 0 || cid >= CANOPY_MAX_CIDS)
		return;
	bit = 1ULL << (cid & 63);
	if (idle) {
		__sync_fetch_and_or(&idle_cids[(cid / 64) & (CANOPY_MAX_CIDS / 64 - 1)], bit);
		charge_cid(cid, scx_bpf_now());
	} else {
		__sync_fetch_and_and(&idle_cids[(cid / 64) & (CANOPY_MAX_CIDS / 64 - 1)], ~bit);
	}
}

/* A running task moved to another cgroup: its cid is judged by its new class from now on. */
static __always_inline void own_task_moved(struct task_struct *p)
{
	u32 class = class_vtime_moved(p);
	struct cid_state *cs;

	if (class < NO_CLASS && (cs = cid_state_of(scx_bpf_task_cid(p))))
		cs->running_class = class;
}

void CANOPY_OP(canopy_root_cpuctl_move, struct task_struct *p, struct cgroup *from, struct cgroup *to)
{
	own_task_moved(p);
}

/*
 * Not an ops callback: the kernel calls sched_move_task() for each task of a cgroup migration
 * right after switching the task's css_set, so task_cgroup_id() already names the
 * destination. Stamp the task; its next enqueue (in whichever canopy scheduler keeps it) logs
 * how long its new cgroup's classes took to apply. Autogroup changes are not cgroup moves.
 */
SEC("fentry/sched_move_task")
int BPF_PROG(canopy_root_note_move, struct task_struct *p, bool for_autogroup)
{
	struct move_stamp *stamp;

	if (for_autogroup)
		return 0;
	stamp = bpf_task_storage_get(&move_stamps, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!stamp)
		return 0;
	stamp->moved_at_ns = bpf_ktime_get_ns();
	stamp->state_at_move = p->on_cpu ? CANOPY_MOVED_RUNNING :
			       p->on_rq ? CANOPY_MOVED_QUEUED : CANOPY_MOVED_SLEEPING;
	stat_inc(CANOPY_STAT_MOVES);
	return 0;
}

s32 CANOPY_OP_SLEEPABLE(canopy_root_init_task, struct task_struct *p, struct scx_init_task_args *args)
{
	if (!bpf_task_storage_get(&tree_tasks, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE))
		return -ENOMEM;
	return class_vtime_init_task(p);
}

void CANOPY_OP(canopy_root_runnable, struct task_struct *p, u64 enq_flags)
{
	tree_task_runnable(p);
}

void CANOPY_OP(canopy_root_quiescent, struct task_struct *p, u64 deq_flags)
{
	tree_task_quiescent(p);
}

/* @p leaves the root (exits, or moves below a child): it stops counting in the tree. */
void CANOPY_OP(canopy_root_disable, struct task_struct *p)
{
	tree_task_quiescent(p);
}

void CANOPY_OP(canopy_root_enable, struct task_struct *p, struct scx_enable_args *args)
{
	scx_bpf_task_set_dsq_vtime(p, own_vtime_now);
	own_task_moved(p);
}

/* The cgroup's cpu.weight as the cpu controller holds it (100 when unknown). */
static u32 cgroup_cpu_weight(u64 cgid)
{
	struct cgroup_subsys_state *css;
	struct cgroup *cgrp;
	u32 weight = CANOPY_DEFAULT_WEIGHT;

	cgrp = bpf_cgroup_from_id(cgid);
	if (!cgrp)
		return weight;
	css = BPF_CORE_READ(cgrp, subsys[cpu_cgrp_id]);
	if (css) {
		struct task_group *tg = container_of(css, struct task_group, css);
		u32 w = BPF_CORE_READ(tg, scx.weight);

		if (w)
			weight = w;
	}
	bpf_cgroup_release(cgrp);
	return weight;
}

static bool names_equal(const char *a, const char *b)
{
	u32 i;

	for (i = 0; i < CANOPY_NAME_LEN; i++) {
		if (a[i] != b[i])
			return false;
		if (!a[i])
			return true;
	}
	return true;
}

static bool admits(struct canopy_group_policy *pol, const char *name)
{
	u32 i;

	for (i = 0; i < CANOPY_MAX_ADMITTED; i++) {
		if (i >= pol->nr_admitted)
			break;
		if (names_equal(pol->admitted[i], name))
			return true;
	}
	return false;
}

static void report_admission(u64 cgid, s32 verdict, u32 slot, const char *name,
			     const char *path)
{
	struct canopy_admission_event *ev;

	ev = bpf_ringbuf_reserve(&admission_events, sizeof(*ev), 0);
	if (!ev)
		return;
	ev->cgroup_id = cgid;
	ev->verdict = verdict;
	ev->slot = slot;
	__builtin_memcpy(ev->ops_name, name, CANOPY_NAME_LEN);
	bpf_probe_read_kernel_str(ev->cgroup_path, sizeof(ev->cgroup_path), path);
	bpf_ringbuf_submit(ev, 0);
}

/* Share every online cid with @cgid as a time share. */
static s32 grant_time_share(u64 cgid)
{
	u32 nr = scx_bpf_nr_cids(), i;

	cmask_reset(&grant_mask, nr);
	for (i = 0; i < CANOPY_MAX_CIDS && i < nr; i++)
		cmask_set(&grant_mask, i);
	return scx_bpf_sub_grant(cgid, KCONST(SCX_CAP_ENQ_IMMED), AS_SCX_CMASK(&grant_mask), NULL);
}

s32 CANOPY_OP_SLEEPABLE(canopy_root_sub_attach, struct scx_sub_attach_args *args)
{
	struct canopy_group_policy *pol;
	struct canopy_member *m;
	char name[CANOPY_NAME_LEN] = {};
	u64 cgid = args->ops->sub_cgroup_id;
	u32 slot, free_slot = NO_OWNER;
	s32 ret;

	bpf_probe_read_kernel_str(name, sizeof(name), args->ops->name);

	pol = bpf_map_lookup_elem(&group_policy, &cgid);
	if (!pol || !pol->nr_admitted || !admits(pol, name)) {
		bpf_printk("canopy: refusing sub-scheduler %s on %s: not admitted by the policy",
			   name, args->cgroup_path);
		stat_inc(CANOPY_STAT_REFUSED);
		report_admission(cgid, -EPERM, NO_OWNER, name, args->cgroup_path);
		return -EPERM;
	}

	for (slot = 1; slot < CANOPY_MAX_MEMBERS; slot++) {
		m = member_of(slot);
		if (m && !m->active) {
			free_slot = slot;
			break;
		}
	}
	m = member_of(free_slot);
	if (!m) {
		bpf_printk("canopy: refusing sub-scheduler %s on %s: no free slot",
			   name, args->cgroup_path);
		stat_inc(CANOPY_STAT_REFUSED);
		report_admission(cgid, -ENOSPC, NO_OWNER, name, args->cgroup_path);
		return -ENOSPC;
	}

	ret = grant_time_share(cgid);
	if (ret < 0) {
		bpf_printk("canopy: refusing sub-scheduler %s on %s: grant failed %d",
			   name, args->cgroup_path, ret);
		stat_inc(CANOPY_STAT_REFUSED);
		report_admission(cgid, ret, NO_OWNER, name, args->cgroup_path);
		return ret;
	}

	m->cgroup_id = cgid;
	m->weight = pol->weight ?: cgroup_cpu_weight(cgid);
	m->guarantee_pct = pol->guarantee_pct;
	m->cap_pct = pol->cap_pct;
	m->vtime = member_vtime_min;
	m->running_cids = 0;
	m->empty = 0;
	m->slice_estimate_ns = KCONST(SCX_SLICE_DFL);
	m->lifted_vtime = 0;
	m->period_start_ns = scx_bpf_now();
	m->period_used_ns = 0;
	__builtin_memcpy(m->name, name, CANOPY_NAME_LEN);
	m->active = 1;
	__sync_fetch_and_add(&nr_children, 1);

	bpf_printk("canopy: admitted sub-scheduler %s on %s weight %u", name,
		   args->cgroup_path, m->weight);
	stat_inc(CANOPY_STAT_ADMITTED);
	report_admission(cgid, 0, free_slot, name, args->cgroup_path);
	return 0;
}

void CANOPY_OP_SLEEPABLE(canopy_root_sub_detach, struct scx_sub_detach_args *args)
{
	u64 cgid = args->ops->sub_cgroup_id;
	u32 slot;

	for (slot = 1; slot < CANOPY_MAX_MEMBERS; slot++) {
		struct canopy_member *m = member_of(slot);

		if (m && m->active && m->cgroup_id == cgid) {
			m->active = 0;
			__sync_fetch_and_sub(&nr_children, 1);
			stat_inc(CANOPY_STAT_DETACHED);
			bpf_printk("canopy: sub-scheduler on %s detached", args->cgroup_path);
			break;
		}
	}
}

s32 CANOPY_OP_SLEEPABLE(canopy_root_cpuctl_init, struct cgroup *cgrp, struct scx_cgroup_init_args *args)
{
	tree_cgroup_init(cgrp, args->weight, args->sched_idle, args->bw_period_us, args->bw_quota_us);
	return 0;
}

void CANOPY_OP_SLEEPABLE(canopy_root_cpuctl_exit, struct cgroup *cgrp)
{
	tree_cgroup_exit(cgrp->kn->id);
}

void CANOPY_OP(canopy_root_cpuctl_set_bandwidth, struct cgroup *cgrp, u64 period_us, u64 quota_us,
	       u64 burst_us)
{
	struct canopy_cgroup_node *node = tree_node(cgrp->kn->id);

	if (node)
		tree_node_set_quota(node, period_us, quota_us);
}

void CANOPY_OP(canopy_root_cpuctl_set_idle, struct cgroup *cgrp, bool idle)
{
	struct canopy_cgroup_node *node = tree_node(cgrp->kn->id);

	if (node)
		tree_node_set_idle(node, idle);
}

/*
 * Every cgroup's cpu.weight places it in the tree; the knobs of an attach-point cgroup stay
 * with us too: its member follows cpu.weight unless the policy set one.
 */
void CANOPY_OP(canopy_root_cpuctl_set_weight, struct cgroup *cgrp, u32 weight)
{
	u64 cgid = cgrp->kn->id;
	struct canopy_group_policy *pol = bpf_map_lookup_elem(&group_policy, &cgid);
	u32 slot;

	tree_cgroup_set_weight(cgid, weight);
	if (pol && pol->weight)
		return;
	for (slot = 1; slot < CANOPY_MAX_MEMBERS; slot++) {
		struct canopy_member *m = member_of(slot);

		if (m && m->active && m->cgroup_id == cgid) {
			m->weight = weight ?: 1;
			break;
		}
	}
}

void CANOPY_OP(canopy_root_cid_online, s32 cid)
{
	u32 slot;

	stat_inc(CANOPY_STAT_CID_ONLINE);
	cmask_reset(&grant_mask, scx_bpf_nr_cids());
	cmask_set(&grant_mask, cid);
	for (slot = 1; slot < CANOPY_MAX_MEMBERS; slot++) {
		struct canopy_member *m = member_of(slot);

		if (m && m->active)
			scx_bpf_sub_grant(m->cgroup_id, KCONST(SCX_CAP_ENQ_IMMED),
					  AS_SCX_CMASK(&grant_mask), NULL);
	}
}

void CANOPY_OP(canopy_root_cid_offline, s32 cid)
{
	stat_inc(CANOPY_STAT_CID_OFFLINE);
	charge_cid(cid, scx_bpf_now());
	if (cid >= 0 && cid < CANOPY_MAX_CIDS)
		__sync_fetch_and_and(&idle_cids[(cid / 64) & (CANOPY_MAX_CIDS / 64 - 1)],
				     ~(1ULL << (cid & 63)));
}

static __always_inline void init_quota_wakeup(void)
{
	u32 key = 0;
	struct quota_wakeup *wakeup = bpf_map_lookup_elem(&quota_wakeups, &key);

	if (!wakeup)
		return;
	bpf_timer_init(&wakeup->timer, &quota_wakeups, 1 /* CLOCK_MONOTONIC */);
	bpf_timer_set_callback(&wakeup->timer, quota_period_turned);
}

s32 CANOPY_OP_SLEEPABLE(canopy_root_init)
{
	struct canopy_group_policy *pol;
	struct canopy_member *self = member_of(CANOPY_SELF_SLOT);
	struct canopy_cgroup_node root_node = { .weight = CANOPY_DEFAULT_WEIGHT };
	u64 root_cgid = 1;
	u32 cid;

	if (!self)
		return -ENOENT;
	/* the tree's root, in case the kernel does not deliver cpuctl_init for the root cgroup */
	bpf_map_update_elem(&cpu_tree, &root_cgid, &root_node, BPF_NOEXIST);
	pol = bpf_map_lookup_elem(&group_policy, &root_cgid);
	self->cgroup_id = root_cgid;
	self->weight = (pol && pol->weight) ? pol->weight : own_weight;
	self->period_start_ns = scx_bpf_now();
	self->slice_estimate_ns = KCONST(SCX_SLICE_DFL);
	self->active = 1;
	for (cid = 0; cid < CANOPY_MAX_CIDS; cid++)
		init_quantum(cid);
	init_quota_wakeup();
	if (scx_bpf_create_dsq(CANOPY_IDLE_DSQ, -1))
		return -ENOMEM;
	return scx_bpf_create_dsq(CANOPY_OWN_DSQ, -1);
}

void CANOPY_OP(canopy_root_exit, struct scx_exit_info *ei)
{
	canopy_record_exit(ei);
}

void CANOPY_OP(canopy_root_dump, struct scx_dump_ctx *dump_ctx)
{
	u32 slot;

	canopy_dump("canopy_root: own DSQ %d queued, idle-cgroup DSQ %d, member vtime floor %llu\n",
		    scx_bpf_dsq_nr_queued(CANOPY_OWN_DSQ), scx_bpf_dsq_nr_queued(CANOPY_IDLE_DSQ),
		    member_vtime_min);
	for (slot = 0; slot < CANOPY_MAX_MEMBERS; slot++) {
		struct canopy_member *m = member_of(slot);

		if (m && m->active)
			canopy_dump("member %u cgroup %llu weight %u vtime %llu cpu_ns %llu\n",
				    slot, m->cgroup_id, m->weight, m->vtime, m->cpu_ns);
	}
}

void CANOPY_OP(canopy_root_dump_cid, struct scx_dump_ctx *dump_ctx, s32 cid, bool idle)
{
	struct cid_state *cs = cid_state_of(cid);

	if (cs)
		canopy_dump("cid %d owner %u class %u since %llu\n", cid, cs->owner,
			    cs->running_class, cs->since);
}

SEC(".struct_ops.link")
struct sched_ext_ops_cid canopy_root_ops = {
	.select_cid = (void *)canopy_root_select_cid,
	.enqueue = (void *)canopy_root_enqueue,
	.dispatch = (void *)canopy_root_dispatch,
	.running = (void *)canopy_root_running,
	.stopping = (void *)canopy_root_stopping,
	.update_idle = (void *)canopy_root_update_idle,
	.init_task = (void *)canopy_root_init_task,
	.enable = (void *)canopy_root_enable,
	.runnable = (void *)canopy_root_runnable,
	.quiescent = (void *)canopy_root_quiescent,
	.disable = (void *)canopy_root_disable,
	.cpuctl_init = (void *)canopy_root_cpuctl_init,
	.cpuctl_exit = (void *)canopy_root_cpuctl_exit,
	.cpuctl_set_weight = (void *)canopy_root_cpuctl_set_weight,
	.cpuctl_set_idle = (void *)canopy_root_cpuctl_set_idle,
	.cpuctl_set_bandwidth = (void *)canopy_root_cpuctl_set_bandwidth,
	.cpuctl_move = (void *)canopy_root_cpuctl_move,
	.sub_attach = (void *)canopy_root_sub_attach,
	.sub_detach = (void *)canopy_root_sub_detach,
	.cid_online = (void *)canopy_root_cid_online,
	.cid_offline = (void *)canopy_root_cid_offline,
	.init = (void *)canopy_root_init,
	.exit = (void *)canopy_root_exit,
	.dump = (void *)canopy_root_dump,
	.dump_cid = (void *)canopy_root_dump_cid,
	.timeout_ms = 30000,
	.exit_dump_len = CANOPY_EXIT_DUMP_LEN,
	.name = "canopy_root",
};
