/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * own_dispatch.bpf.h: the root's own tasks' turn on a cid (member 0's part of a dispatch) and
 * the cpu.max quota path for them. It owns dispatch_own(), which moves the next queued task
 * (CANOPY_URGENT_DSQ, CANOPY_OWN_DSQ, then the idle-cgroup CANOPY_IDLE_DSQ) to the cid or keeps the previous
 * task running; the wakeup timer (`quota_wakeups`) for cids left idle by throttled cgroups;
 * bill_own_run(), which charges a task's run to its cgroup path's quotas, its class's
 * preemption budget and its vtime; and price_first_turn(), which prices a task's first turn
 * at its W_eq in the cgroup tree (class_vtime.bpf.h: turns shortened by W_eq). The quota arithmetic itself (quota_left, quota_charge)
 * lives with the cgroup tree in cpu_tree.bpf.h.
 *
 * Policy: while no cgroup has a quota, a dispatch moves the first task of the vtime-ordered
 * DSQ. While any has one, it walks the DSQ in vtime order and takes the first task whose
 * cgroup path has quota left this period, its slice capped at the smallest quota left on the
 * path; tasks of throttled cgroups stay queued, and if nothing could be moved a one-shot
 * timer kicks the idle cids when the earliest throttled period ends. The previous task keeps
 * its cid only while its path has quota left, with its slice capped the same way.
 *
 * cpu.idle starvation guard: tasks of idle cgroups (CANOPY_IDLE_DSQ) run only when nothing
 * else wants the cid, and hogs that keep their cids would leave them waiting for ever, past the
 * kernel's runnable-task watchdog (30 s), which then ejects the whole scheduler. The fair
 * scheduler gives an idle cgroup a weight of 3 against 1024 for a cgroup at cpu.weight 100, not
 * nothing. So while idle-cgroup tasks wait and none has had a cid for
 * CANOPY_IDLE_GUARD_PERIOD_NS / (how many wait), at least CANOPY_IDLE_GUARD_MIN_INTERVAL_NS,
 * the next dispatch of any cid moves the first of them with a slice of
 * CANOPY_IDLE_GUARD_SLICE_NS (ended at the next tick: 4 ms at HZ=250). Each waiting task is
 * served about once a second (vtime order rotates them), and at most 100 such slices a second
 * are given in all. Example: two idle-cgroup hogs beside a busy cgroup's two hogs on 2 cids:
 * one guard slice every 500 ms, at most 4 ms each: 8 ms per second of 2,000 ms, 0.4% of the
 * CPUs (the fair scheduler gives them 0.3%), and neither waits more than about a second.
 *
 * Worked example: cpu.max "50000 100000" on cgroup h with three hogs, a busy sibling s, 2
 * cids, 20 ms slices. At t = 40 ms of h's period its hogs have used 42 ms together: the next
 * h hog found first in vtime order gets a slice of 8 ms, not 20. Once h has used 50 ms,
 * dispatches pass over h's hogs (CANOPY_STAT_QUOTA_SKIPS) and give s's tasks both cids; if s
 * sleeps, the cids go idle and the timer kicks them at the period's end, when h's hogs run
 * again. Over 10 s h gets 0.5 CPU and s the rest.
 */
#ifndef CANOPY_OWN_DISPATCH_BPF_H
#define CANOPY_OWN_DISPATCH_BPF_H

#include "cpu_tree.bpf.h"
#include "preempt_budget.bpf.h"
#include "cid_grants.bpf.h"

/*
 * Bill the CPU time one of our tasks has run since it started: its cgroup path's cpu.max
 * quotas and caps, its class's preempt budget, and its vtime at its weight in the tree.
 */
/*
 * Charge the run time of our running task @p not yet charged to its cgroup path's cpu.max
 * quotas and caps: since it started running, or since the last charge when it was kept
 * running (a kept task does not pass through ops.stopping, and unless charged at each keep a
 * hog kept for 300 ms would see its full quota left at every keep and be charged only when it
 * finally stops, long past its quota; the carry-over holds at most one quota).
 */
static __always_inline void charge_own_quota(struct task_struct *p, struct task_ctx *tctx, u64 now)
{
	u64 from;

	if (nr_quota_cgroups <= 0 || !tctx || !tctx->running_at)
		return;
	from = tctx->quota_charged_at > tctx->running_at ? tctx->quota_charged_at : tctx->running_at;
	if (now > from)
		quota_charge(task_cpu_cgroup_id(p), now - from, now);
	tctx->quota_charged_at = now;
}

static __always_inline void bill_own_run(struct task_struct *p, struct task_ctx *tctx, u64 now,
					 bool runnable)
{
	u64 ran_ns = 0, vtime_before = p->scx.dsq_vtime, weight_fp = 0, group_fp = 0;
	struct tree_task *tt = tree_task_of(p);

	charge_own_quota(p, tctx, now);
	if (tctx && tctx->running_at && now > tctx->running_at) {
		ran_ns = now - tctx->running_at;
		preempt_budget_charge(p, tctx->class, ran_ns);
	}
	if (tctx) {
		weight_fp = tctx->run_weight_fp;
		group_fp = tctx->run_group_fp;
		tctx->run_weight_fp = 0;
		tctx->run_group_fp = 0;
	}
	tree_task_stopping(p, tt, tctx, ran_ns);
	class_vtime_stopping(p, tctx, now, weight_fp ?: tree_charge_weight_fp(tt), runnable);
	/* one that stops to sleep leaves the tree at ops.quiescent, share weight and all */
	if (runnable)
		tree_task_share_follow(tt, tctx);
	tree_group_charge(tt, p->scx.dsq_vtime - vtime_before, group_fp);
}

/*
 * A waking or new task of ours (not of an idle cgroup; @tt its entry in the tree) starts
 * from its cgroup's place (tree_group_start()): a new one (@fresh: it has never run) there,
 * a waking one at most one turn before it, the turn queue_by_class() gives it. The place
 * keeps a cgroup that forks one job after another within its cpu.weight. A new task gets no
 * turn of credit, as the fair scheduler starts one with no lag: with one, the frame
 * benchmark missed 6 frames in each of two boots where this missed none (2026-12-06).
 */
static __always_inline void place_by_group(struct task_struct *p, struct task_ctx *tctx,
					   const struct tree_task *tt,
					   const struct canopy_class_params *cp, bool fresh)
{
	u64 turn, start;

	if (!tctx)
		return;
	turn = tree_turn(class_slice(cp), tctx->charge_weight_fp, tctx->weight);
	start = tree_group_start(tt, turn);
	if (fresh) {
		scx_bpf_task_set_dsq_vtime(p, start);
		return;
	}
	start = start > turn ? start - turn : 0;
	if ((s64)(p->scx.dsq_vtime - start) < 0)
		scx_bpf_task_set_dsq_vtime(p, start);
}

/*
 * A waking task of a preempting class with budget left that found no cid to preempt (every
 * cid runs a task it may not preempt, or one a child holds) waits on CANOPY_URGENT_DSQ, which
 * dispatch_own() serves before CANOPY_OWN_DSQ, at one turn before own_vtime_now (the queue's
 * floor for a waking task), so such wakers run in about the order they woke, whatever their
 * vtimes and their cgroups' places. Each would have run at once had a cid been preemptible,
 * and its budget bounds it as on that path (past it, its wakeups queue by vtime as any task's).
 * Queued among the rest at its cgroup's place, it waited behind the cgroup's other wakers: a
 * class with a short slice banks less credit there than one with a long slice, the place runs
 * ahead of own_vtime_now while the cgroup's tasks sleep between short runs, and tasks that
 * stayed runnable keep their lag below own_vtime_now. Example (2026-12-07, traced with tracefs
 * and bpf_printk): cyclictest's thread (USER_INTERACTIVE, 3 ms slice) in the root cgroup
 * beside `hackbench -T -p -g 2` (BACKGROUND, 20 ms slices), woken while its main thread ran on
 * the other cid: the root cgroup's place was 21.1 ms of vtime past own_vtime_now, the thread
 * queued 18.1 ms past it behind 49 hackbench threads, and waited 146 ms; queued one turn
 * before own_vtime_now among them, it still waited 41 ms behind tasks further back.
 */
static __always_inline void place_at_front(struct task_struct *p, const struct task_ctx *tctx,
					   const struct canopy_class_params *cp)
{
	u64 turn = class_slice(cp), now_v = own_vtime_now;

	if (tctx)
		turn = tree_turn(turn, tctx->charge_weight_fp, tctx->weight);
	scx_bpf_task_set_dsq_vtime(p, now_v > turn ? now_v - turn : 0);
}

/*
 * A task not yet charged (a new one, or one that has not run under this scheduler) is priced
 * at its W_eq now, so its first turn is shortened as every later one (class_vtime.bpf.h):
 * a new hog in a cgroup at cpu.weight 45 among 50 (W_eq 88) ran a whole 10 ms class slice
 * first, 116-163 ms of vtime, and then waited up to 4 s of the vtime clock.
 */
static __always_inline void price_first_turn(struct task_ctx *tctx, const struct tree_task *tt)
{
	if (tctx && !tctx->charge_weight_fp)
		tctx->charge_weight_fp = tree_charge_weight_fp(tt);
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
 * cpu.max quota left to the local DSQ, its slice capped at that quota and at @max_slice;
 * tasks of throttled cgroups stay queued and the timer wakes the cids when their period ends.
 * Global (not static), so the verifier checks it once on its own instead of again for every
 * caller state that reaches a call. As a static function it was 176,647 of
 * canopy_root_dispatch's 220,432 processed instructions; global, dispatch processes 38,241 and
 * a root load under TCG verifies in 0.9-1.7 s instead of 4.6-6.7 s (tests/vm/README.md, "Where
 * a scheduler load's time goes").
 */
__noinline bool move_first_within_quota(u64 dsq, s32 cid, u64 max_slice)
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
		left = nr_quota_cgroups > 0 ? quota_left(task_cpu_cgroup_id(p), now, &period_end) :
					      (u64)-1;
		if (left > max_slice)
			left = max_slice;
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
		return move_first_within_quota(dsq, cid, (u64)-1);
	return scx_bpf_dsq_move_to_local___v2___canopy(dsq, 0);
}

/* When a task of an idle cgroup last got a cid (scx_bpf_now() time); see the guard above. */
u64 idle_served_at;

/*
 * The cpu.idle starvation guard: if idle-cgroup tasks have waited past their interval, claim
 * this turn (one cid wins a race) and move the first of them to @cid for one short slice.
 */
static __always_inline bool serve_starved_idle(s32 cid, u64 now)
{
	s32 waiting = scx_bpf_dsq_nr_queued(CANOPY_IDLE_DSQ);
	u64 served = idle_served_at, interval;

	if (waiting <= 0)
		return false;
	interval = CANOPY_IDLE_GUARD_PERIOD_NS / (u64)waiting;
	if (interval < CANOPY_IDLE_GUARD_MIN_INTERVAL_NS)
		interval = CANOPY_IDLE_GUARD_MIN_INTERVAL_NS;
	if (now < served + interval)
		return false;
	if (__sync_val_compare_and_swap(&idle_served_at, served, now) != served)
		return false;
	if (!move_first_within_quota(CANOPY_IDLE_DSQ, cid, CANOPY_IDLE_GUARD_SLICE_NS))
		return false;
	stat_inc(CANOPY_STAT_IDLE_GUARD_SLICES);
	return true;
}

/* The quota @prev's cgroup path has left this period ((u64)-1: no limit; 0: throttled). */
static __always_inline u64 prev_quota_left(struct task_struct *prev)
{
	u64 period_end = 0, now = scx_bpf_now();

	if (nr_quota_cgroups <= 0 || !prev)
		return (u64)-1;
	charge_own_quota(prev, task_ctx_of(prev), now);
	return quota_left(task_cpu_cgroup_id(prev), now, &period_end);
}

/*
 * Our own tasks' turn on @cid: with @normal, a queued task first (CANOPY_URGENT_DSQ's, then
 * CANOPY_OWN_DSQ's), else @prev keeps running;
 * with @idle, after those, tasks of idle cgroups (CANOPY_IDLE_DSQ, or an idle-cgroup @prev).
 * Tasks of cgroups at their cpu.max quota are passed over. Returns an enum own_dispatch.
 * Global, like move_first_within_quota: canopy_root_dispatch calls it three times (once
 * inside the member loop), and inlined it was verified again at each (26,985 of dispatch's
 * processed instructions were its own). @prev is the kernel's (trusted, NULL when the cid ran
 * no task of ours).
 */
__noinline int dispatch_own(s32 cid, struct task_struct *prev __arg_trusted __arg_nullable,
			    bool normal, bool idle)
{
	bool prev_idle = prev && task_in_idle_cgroup(prev);
	u64 left = prev_quota_left(prev), now = scx_bpf_now();
	bool prev_keepable = left != 0;

	if (serve_starved_idle(cid, now))
		return OWN_QUEUED;
	if (normal && (move_own_to_local(CANOPY_URGENT_DSQ, cid) ||
		       move_own_to_local(CANOPY_OWN_DSQ, cid)))
		return OWN_QUEUED;
	if (normal && !prev_idle && prev_keepable && keep_own_prev(cid, prev, left))
		return OWN_KEPT;
	if (!idle)
		return OWN_NONE;
	if (move_own_to_local(CANOPY_IDLE_DSQ, cid)) {
		idle_served_at = now;
		return OWN_QUEUED;
	}
	if (prev_idle && prev_keepable && keep_own_prev(cid, prev, left)) {
		idle_served_at = now;
		return OWN_KEPT;
	}
	return OWN_NONE;
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

#endif /* CANOPY_OWN_DISPATCH_BPF_H */
