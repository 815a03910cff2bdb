/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * canopy_root: canopy's root sched_ext scheduler (cid form, with an arena).
 *
 * This file holds the ops callbacks and the struct_ops table; each concern they call into
 * lives in its own header, with its policy and a worked example at its top:
 *
 * - cid_grants.bpf.h: dividing CPU among "members": the root's own tasks (member 0) and each
 *   attached child scheduler, by member vtime at their weights, with per-window caps and
 *   guarantees (who a cid is handed to, charging it back, choosing the next member);
 * - grant_quantum.bpf.h: cutting a child's grant at CANOPY_QUANTUM_NS (5 ms) while another
 *   member has work, and taking a cid back from a child for our own queued tasks;
 * - cpu_tree.bpf.h: the cgroup cpu.weight tree, cpu.idle and cpu.max for the root's own tasks;
 * - own_dispatch.bpf.h: our own tasks' turn on a cid: the next queued task (passing over
 *   cgroups at their cpu.max quota) or the previous task kept, and billing a task's run;
 * - class_vtime.bpf.h, preempt_budget.bpf.h: class-weighted vtime and the preemption budget;
 * - admission.bpf.h: which sub-schedulers may attach where, and their time-share grants;
 * - group_lifecycle.bpf.h: every cgroup's `group_policy` entry, made at its mkdir and deleted
 *   at its rmdir (two tracepoint programs the loader attaches beside the struct_ops).
 *
 * Here: placing our own waking tasks by class. The controller writes tid -> class into
 * `task_classes`; unknown tasks take the policy's default class. A waking task of a
 * preempting class (USER_INTERACTIVE) goes straight to an idle cid, else preempts a cid
 * running one of our tasks of a preemptible class (UTILITY, BACKGROUND; DEFAULT once it has
 * run 1 ms of its slice, so a UI thread or the daemon waits at most that long behind default
 * work; in the daemon's class table also the classes between the top and DEFAULT, where the
 * daemon itself runs, so a UI thread waits at most 1 ms behind it: `preemptible_after_us`,
 * set by userspace), while it has preemption budget left (preempt_budget.bpf.h: 40 ms of running per
 * 100 ms window; a busy loop then queues in vtime order like everyone else). With no such
 * cid it takes one between two of our tasks (cid_between_own_tasks()), else one an RT task
 * just took, else it waits on CANOPY_URGENT_DSQ, which our dispatch serves before the vtime
 * queue (own_dispatch.bpf.h place_at_front()). When our tasks
 * are queued and a child holds the cids, the child's oldest grant is cut once it is a quantum
 * old (reclaim_child_cid), whatever the slice its scheduler chose.
 *
 * Worked example: 2 cids, both running our own tasks: a BACKGROUND hog on cid 0 and a DEFAULT
 * task on cid 1 that started its slice 0.4 ms ago. A USER_INTERACTIVE task wakes with budget
 * left: no cid is idle, cid 0's BACKGROUND task is preemptible at once, so the waker is
 * inserted on cid 0's local DSQ with SCX_ENQ_PREEMPT and runs within a context switch; the
 * DEFAULT task on cid 1 would have been preemptible only from 1 ms into its slice. Had the
 * waker used its 40 ms budget in the current 100 ms, it would queue in vtime order instead.
 *
 * Waking and new tasks of any class also preempt in vtime, as the fair scheduler's wakeup
 * preemption does: one that starts from its cgroup's place (own_dispatch.bpf.h
 * place_by_group()) and finds no idle cid kicks the cid whose own task has run furthest past
 * it in vtime, once that task has run CANOPY_MIN_TURN_NS (1 ms) and if its class weighs no
 * more than the waker's (find_vtime_victim()). Example: a DEFAULT hog of the standalone table
 * (1024, no cgroups: a ms of running is a ms of vtime) on each of 2 cids. Cid 0's hog started 0.5 ms ago at vtime
 * V, so own_vtime_now is V; cid 1's started 6 ms ago at V - 4 ms and is charged V + 2 ms by
 * now. A build job forks a task of the same cgroup, which starts at V (its cgroup is not
 * ahead): cid 1's hog is 2 ms past it and has had its 1 ms, cid 0's has not, so cid 1 is
 * kicked; its hog queues again with its vtime and the job runs within a context switch. It
 * waited for a hog's turn to end before (up to its 20 ms slice). Measured 2026-12-06 in
 * the frame benchmark with the group places: the build's jobs 0.98-1.03x the fair
 * scheduler's in three boots (0.90-1.12x before), frames and audio held.
 *
 * Dispatch: charge the cid to its previous owner, then offer it to members by vtime
 * (cid_grants.bpf.h); with no children attached it goes straight to our own tasks.
 *
 * Known costs, stated honestly: cutting a grant at the quantum costs one timer and one kick
 * per grant under contention; charging at dispatch attributes the gap between a task stopping
 * and the next dispatch to the previous owner (microseconds); member vtime updates race
 * between cids (a lost update skews one slice, and the next dispatch corrects it).
 */
#include "cpu_tree.bpf.h"
#include "preempt_budget.bpf.h"
#include "cid_grants.bpf.h"
#include "grant_quantum.bpf.h"
#include "own_dispatch.bpf.h"
#include "admission.bpf.h"
#include "group_lifecycle.bpf.h"

char _license[] SEC("license") = "GPL";

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

/*
 * Is @cid between two of our own tasks: the last one stopped there (ops.stopping cleared the
 * running class) without an RT or deadline task taking it, the cid is not idle, and it is
 * ours or, with no child attached, being dispatched (charge_cid() leaves it unowned until
 * hand_cid())? The next task has not started, so a preempting insert there runs first. Under
 * `hackbench -T -p` both cids switch tasks every 20-50 us and spend a large part of each
 * switch in ops.dispatch: a USER_INTERACTIVE wakeup beside a cid running another
 * USER_INTERACTIVE task found the other cid in this state (owner NO_OWNER, no class), took it
 * for not preemptible and queued, and waited 34-146 ms (traced 2026-12-07 21:14-21:30 UTC,
 * tracefs and bpf_printk, four boots).
 */
static __always_inline bool cid_between_own_tasks(const struct cid_state *cs, s32 cid)
{
	if (cs->running_class < NO_CLASS || cs->higher_class_since || cid_is_idle(cid))
		return false;
	return cs->owner == CANOPY_SELF_SLOT || (cs->owner == NO_OWNER && !nr_children);
}

/* What a waking preempting-class task may do with a cid (cid_for_waker). */
enum waker_cid_use {
	CID_TAKEN,		/* idle, a child's, outside the task's affinity, or not preemptible */
	CID_PREEMPTIBLE,	/* one of our tasks of a class the waker may preempt runs there */
	CID_AFTER_HIGHER_CLASS,	/* an RT or deadline task took it from one of ours just now */
	CID_BETWEEN_OWN_TASKS,	/* one of ours just stopped there and the next has not started */
};

/*
 * One look at @cid's state for a waking @p: a cid running one of our tasks of a preemptible
 * class (cs->since: when the cid was handed to the task running there), else one an RT or
 * deadline task took from one of our tasks less than CANOPY_HIGHER_CLASS_WAIT_NS ago. Inserted
 * on the latter, @p runs the moment that task leaves, ahead of the task it took the cid from
 * (whose slice stopping() ended, so it queues again by class). Both inserts use
 * SCX_ENQ_PREEMPT (head of the local DSQ): should one of ours have started on the latter in
 * between, it gives way as to any preempting wakeup.
 */
static __always_inline enum waker_cid_use cid_for_waker(struct task_struct *p, s32 cid, u64 now)
{
	struct cid_state *cs = cid_state_of(cid);
	u64 since;

	if (!cs || !task_may_run_on(p, cid))
		return CID_TAKEN;
	if (cid_between_own_tasks(cs, cid))
		return CID_BETWEEN_OWN_TASKS;
	if (cs->owner != CANOPY_SELF_SLOT)
		return CID_TAKEN;
	if (class_preemptible_since(cs->running_class, cs->since))
		return CID_PREEMPTIBLE;
	since = cs->higher_class_since;
	if (since && now >= since && now - since < CANOPY_HIGHER_CLASS_WAIT_NS)
		return CID_AFTER_HIGHER_CLASS;
	return CID_TAKEN;
}

/*
 * A cid running one of our tasks of a class that @p may preempt, else one between two of our
 * tasks (cid_between_own_tasks()), or -1. The task's own cid
 * comes first: preempting locally needs no IPI, and the wakeup timer fired there. With none,
 * *@after_higher_class is set to a cid an RT or deadline task has just taken from us (-1 if
 * none): waiting there for a short RT burst beats waiting in the queue for a slice to end.
 * Example, 2 cids: pipewire's SCHED_FIFO thread took cid 0 from a BACKGROUND hog 0.2 ms ago,
 * and cid 1 runs a DEFAULT task that started 0.3 ms ago (not preemptible for another 0.7 ms).
 * A USER_INTERACTIVE task waking now is inserted first on cid 0 and runs once the FIFO thread
 * sleeps; queued, it waited for the DEFAULT task's slice or the hog's next one (up to 60 ms
 * beside a FIFO thread waking every 2 ms, stop 19).
 */
static s32 find_preemptible_cid(struct task_struct *p, s32 *after_higher_class)
{
	u32 nr = scx_bpf_nr_cids();
	s32 own = scx_bpf_task_cid(p), between = -1;
	u64 now = scx_bpf_now();
	enum waker_cid_use use;
	int i;

	*after_higher_class = -1;
	use = cid_for_waker(p, own, now);
	if (use == CID_PREEMPTIBLE)
		return own;
	if (use == CID_BETWEEN_OWN_TASKS)
		between = own;
	if (use == CID_AFTER_HIGHER_CLASS)
		*after_higher_class = own;

	canopy_for(i, 0, nr < CANOPY_MAX_CIDS ? nr : CANOPY_MAX_CIDS) {
		use = cid_for_waker(p, i, now);
		if (use == CID_PREEMPTIBLE)
			return i;
		if (use == CID_BETWEEN_OWN_TASKS && between < 0)
			between = i;
		if (use == CID_AFTER_HIGHER_CLASS && *after_higher_class < 0)
			*after_higher_class = i;
	}
	return between;
}

/*
 * A cid where waking or new @p (queued at @vtime, of class weight @weight) should run now: the
 * one running the own task furthest past @vtime in vtime as charged up to now (its vtime when
 * it started plus what it has run since, at the weight its last run was charged at), if that
 * task has run at least CANOPY_MIN_TURN_NS and its class weighs no more than @p's; else -1.
 * The fair scheduler's wakeup preemption, in vtime: a woken entity that is owed CPU runs
 * before the one that has had more, once that one has had its minimum. Without it a build's
 * short processes waited for a hog's turn to end at each fork, exec and exit (up to 20 ms for
 * BACKGROUND): a cgroup forking 2 ms jobs beside a hog cgroup, or the frame benchmark's build,
 * ran only as fast as the turns ended. The preempted task keeps its vtime and queues again.
 */
static s32 find_vtime_victim(struct task_struct *p, u64 vtime, u32 weight)
{
	u32 nr = scx_bpf_nr_cids();
	u64 now = scx_bpf_now(), furthest = 0;
	s32 victim = -1;
	int i;

	canopy_for(i, 0, nr < CANOPY_MAX_CIDS ? nr : CANOPY_MAX_CIDS) {
		struct cid_state *cs = cid_state_of(i);
		u64 ran, charged, past;

		if (!cs || cs->owner != CANOPY_SELF_SLOT || cs->running_class >= NO_CLASS ||
		    !cs->running_weight_fp || now < cs->running_at + CANOPY_MIN_TURN_NS)
			continue;
		if (class_weight(class_of(cs->running_class)) > weight || !task_may_run_on(p, i))
			continue;
		ran = now - cs->running_at;
		charged = cs->running_vtime + (ran * CANOPY_NICE0_WEIGHT << 10) / cs->running_weight_fp;
		if ((s64)(charged - vtime) <= 0)
			continue;
		past = charged - vtime;
		if (past > furthest) {
			furthest = past;
			victim = i;
		}
	}
	return victim;
}

void CANOPY_OP(canopy_root_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct canopy_class_params *cp;
	u32 nr = scx_bpf_nr_cids();
	u32 class = decide_class(p);
	bool idle = task_in_idle_cgroup(p), preempting;
	/* woken, or new (it has never run): it is placed by its cgroup and may preempt in vtime */
	bool woken = enq_flags & KCONST(SCX_ENQ_WAKEUP), fresh = !p->se.sum_exec_runtime;
	struct task_ctx *tctx;
	struct tree_task *tt = NULL;
	s32 victim, after_higher_class;
	int i;

	cp = class_of(class);
	/* a task of an idle cgroup (cpu.idle) never preempts: it runs when nothing else wants to */
	preempting = !idle && woken && may_preempt(p, cp);
	if (preempting) {
		victim = find_preemptible_cid(p, &after_higher_class);
		if (victim >= 0) {
			track_wakeup(p, victim == scx_bpf_task_cid(p) ? CANOPY_STAT_WAKE_PREEMPT_LOCAL :
								       CANOPY_STAT_WAKE_PREEMPT_REMOTE);
			scx_bpf_dsq_insert___v2___canopy(p, KCONST(SCX_DSQ_LOCAL_ON) | victim,
							 class_slice(cp),
							 enq_flags | KCONST(SCX_ENQ_PREEMPT));
			stat_inc(CANOPY_STAT_PREEMPT_KICKS);
			return;
		}
		if (after_higher_class >= 0) {
			track_wakeup(p, CANOPY_STAT_WAKE_AFTER_HIGHER_CLASS);
			scx_bpf_dsq_insert___v2___canopy(p,
							 KCONST(SCX_DSQ_LOCAL_ON) | after_higher_class,
							 class_slice(cp),
							 enq_flags | KCONST(SCX_ENQ_PREEMPT));
			return;
		}
		track_wakeup(p, CANOPY_STAT_WAKE_QUEUED);
	}

	tctx = task_ctx_of(p);
	/* its tree entry, where its first turn is priced or its cgroup places it */
	if ((tctx && !tctx->charge_weight_fp) || (!idle && (woken || fresh)))
		tt = tree_task_of(p);
	price_first_turn(tctx, tt);
	if (preempting)
		place_at_front(p, tctx, cp);
	else if (!idle && (woken || fresh))
		place_by_group(p, tctx, tt, cp, fresh);
	queue_by_class(p, class,
		       idle ? CANOPY_IDLE_DSQ : preempting ? CANOPY_URGENT_DSQ : CANOPY_OWN_DSQ,
		       enq_flags);

	canopy_for(i, 0, nr < CANOPY_MAX_CIDS ? nr : CANOPY_MAX_CIDS) {
		if (cid_is_idle(i) && task_may_run_on(p, i)) {
			scx_bpf_kick_cid(i, KCONST(SCX_KICK_IDLE));
			stat_inc(CANOPY_STAT_IDLE_KICKS);
			return;
		}
	}
	if (idle)
		return;
	if (!preempting && (woken || fresh)) {
		victim = find_vtime_victim(p, p->scx.dsq_vtime, class_weight(cp));
		if (victim >= 0) {
			scx_bpf_kick_cid(victim, KCONST(SCX_KICK_PREEMPT));
			stat_inc(CANOPY_STAT_VTIME_PREEMPTS);
			return;
		}
	}
	reclaim_child_cid(p, preempting);
}

void CANOPY_OP(canopy_root_dispatch, s32 cid, struct task_struct *prev)
{
	struct canopy_member *self = member_of(CANOPY_SELF_SLOT);
	u32 nr = scx_bpf_nr_online_cids();
	u64 now = scx_bpf_now();
	u64 entry_clock, enqueues_before;
	u32 last_owner;
	int attempt;

	last_owner = charge_cid(cid, now);

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

	entry_clock = billing_clock();
	members_prepare(now, nr ?: 1);
	canopy_for(attempt, 0, member_slots_in_use()) {
		struct canopy_member *m;
		u32 slot = pick_member();

		if (slot >= CANOPY_MAX_MEMBERS)
			break;
		member_offered(slot);
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
			hand_cid_after_dispatch(cid, slot, now, entry_clock, last_owner);
			if (own == OWN_QUEUED) {
				m->dispatches++;
				stat_inc(CANOPY_STAT_OWN_DISPATCHES);
			}
			return;
		}
		enqueues_before = member_enqueues(m);
		if (scx_bpf_sub_dispatch(m->cgroup_id)) {
			m->empty = 0;
			m->active_at_ns = now;
			hand_cid_after_dispatch(cid, slot, now, entry_clock, last_owner);
			if (member_capped(m) || others_busy(slot))
				arm_quantum(cid);
			m->dispatches++;
			stat_inc(CANOPY_STAT_SUB_DISPATCHES);
			return;
		}
		m->empty = 1;
		/* it queued something since the last offer that found it empty: it had work */
		if (enqueues_before != m->empty_enqueues)
			m->active_at_ns = now;
		m->empty_enqueues = enqueues_before;
		m->empty_at_ns = now;
		stat_inc(CANOPY_STAT_SUB_DISPATCH_EMPTY);
	}
	/* no member had work: our tasks of idle cgroups may have the cid */
	if (dispatch_own(cid, prev, false, true) != OWN_NONE) {
		hand_cid_after_dispatch(cid, CANOPY_SELF_SLOT, now, entry_clock, last_owner);
		if (self)
			self->dispatches++;
		stat_inc(CANOPY_STAT_OWN_DISPATCHES);
		return;
	}
	/*
	 * Nothing dispatched. A child's task that was running here (prev is NULL for a child's
	 * task) and is still runnable keeps the cid with a fresh slice (the root does not set
	 * SCX_OPS_ENQ_LAST), even when its child was skipped at its cap (so a cap holds only
	 * while someone else wants the cid): the cid stays the child's, charged, and its quantum
	 * timer sends it back through dispatch once another member has work. If the task sleeps
	 * instead, the cid goes idle and update_idle() ends the grant at once.
	 */
	if (!prev && last_owner != CANOPY_SELF_SLOT && last_owner < CANOPY_MAX_MEMBERS) {
		hand_cid_after_dispatch(cid, last_owner, now, entry_clock, last_owner);
		arm_quantum(cid);
		stat_inc(CANOPY_STAT_CHILD_PREV_KEPT);
	}
}

void CANOPY_OP(canopy_root_running, struct task_struct *p)
{
	s32 cid = scx_bpf_task_cid(p);
	struct cid_state *cs = cid_state_of(cid);
	struct task_ctx *tctx = task_ctx_of(p);
	struct tree_task *tt = tree_task_of(p);
	u64 now = scx_bpf_now();

	class_vtime_running(p, tctx, now);
	tree_task_running(tt);
	tree_price_run(tt, tctx);
	if (!cs)
		return;
	cs->higher_class_since = 0;
	if (cs->owner != CANOPY_SELF_SLOT) {
		charge_cid(cid, now);
		hand_cid(cid, CANOPY_SELF_SLOT, now);
	}
	cs->running_class = tctx ? tctx->class : task_class(p);
	cs->running_vtime = p->scx.dsq_vtime;
	cs->running_at = now;
	cs->running_weight_fp = !tctx ? 0 :
				tctx->run_weight_fp ?: (u64)(tctx->weight ?: 1) << 10;
}

void CANOPY_OP(canopy_root_stopping, struct task_struct *p, bool runnable)
{
	struct cid_state *cs = cid_state_of(scx_bpf_task_cid(p));
	u64 now = scx_bpf_now();
	bool taken = class_vtime_end_slice_taken_by_higher_class(p, runnable);

	bill_own_run(p, task_ctx_of(p), now, runnable);
	if (cs) {
		cs->running_class = NO_CLASS;
		cs->higher_class_since = taken ? now : 0;
	}
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
	tree_task_runnable(p, enq_flags & KCONST(SCX_ENQ_WAKEUP));
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

	/* a count left by a dispatch that raced the slot's last detach goes first */
	member_tree_uncount(m);
	m->cgroup_id = cgid;
	m->weight = pol->weight ?: cgroup_cpu_weight(cgid);
	/* a first guess at its share until the next dispatch counts it in the tree and refreshes */
	m->tree_share = CPU_TREE_ONE / (nr_children + 2);
	m->guarantee_pct = pol->guarantee_pct;
	m->cap_pct = pol->cap_pct;
	m->vtime = member_vtime_min;
	m->running_cids = 0;
	m->empty = 0;
	m->tree_idle_since_ns = 0;
	m->slice_estimate_ns = KCONST(SCX_SLICE_DFL);
	m->lifted_vtime = 0;
	m->period_start_ns = scx_bpf_now();
	m->period_used_ns = 0;
	m->guarantee_owed_ns = 0;
	m->held_since_sum_ns = 0;
	m->enqueues = 0;
	m->empty_enqueues = 0;
	m->empty_at_ns = 0;
	m->active_at_ns = 0;
	m->counts_enqueues = 0;
	__builtin_memcpy(m->name, name, CANOPY_NAME_LEN);
	m->active = 1;
	if (free_slot + 1 > member_slots_end)
		member_slots_end = free_slot + 1;
	__sync_fetch_and_add(&nr_children, 1);
	member_shares_dirty = 1;

	bpf_printk("canopy: admitted sub-scheduler %s on %s weight %u", name,
		   args->cgroup_path, m->weight);
	stat_inc(CANOPY_STAT_ADMITTED);
	report_admission(cgid, 0, free_slot, name, args->cgroup_path);
	return 0;
}

void CANOPY_OP_SLEEPABLE(canopy_root_sub_detach, struct scx_sub_detach_args *args)
{
	struct canopy_member *m = member_of(member_slot_of_cgroup(args->ops->sub_cgroup_id));

	if (!m)
		return;
	m->active = 0;
	member_tree_uncount(m);
	member_shares_dirty = 1;
	/* the last child gone: the own tasks hold the whole tree again */
	if (__sync_sub_and_fetch(&nr_children, 1) == 0)
		own_tree_share_set(member_of(CANOPY_SELF_SLOT), CPU_TREE_ONE);
	stat_inc(CANOPY_STAT_DETACHED);
	bpf_printk("canopy: sub-scheduler on %s detached", args->cgroup_path);
}

s32 CANOPY_OP_SLEEPABLE(canopy_root_cpuctl_init, struct cgroup *cgrp, struct scx_cgroup_init_args *args)
{
	tree_cgroup_init(cgrp, args->weight, args->sched_idle, args->bw_period_us, args->bw_quota_us);
	return 0;
}

/*
 * A child attaching on a cgroup takes that cgroup and those below it, and the kernel tells us
 * with cpuctl_exit for each, right after our sub_attach. The attach cgroup's own node stays:
 * the busy child counts there (cid_grants.bpf.h) and its knobs stay ours. A detach gives the
 * subtree back with cpuctl_init (tree_cgroup_init() takes an existing node as it is).
 */
void CANOPY_OP_SLEEPABLE(canopy_root_cpuctl_exit, struct cgroup *cgrp)
{
	u64 cgid = cgrp->kn->id;

	if (member_slot_of_cgroup(cgid) == NO_OWNER)
		tree_cgroup_exit(cgid);
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
	struct canopy_member *m;

	tree_cgroup_set_weight(cgid, weight);
	member_shares_dirty = 1;
	if (pol && pol->weight)
		return;
	m = member_of(member_slot_of_cgroup(cgid));
	if (m)
		m->weight = weight ?: 1;
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
	own_tree_share_set(self, CPU_TREE_ONE);
	self->period_start_ns = scx_bpf_now();
	self->slice_estimate_ns = KCONST(SCX_SLICE_DFL);
	self->active = 1;
	for (cid = 0; cid < CANOPY_MAX_CIDS; cid++)
		init_quantum(cid);
	init_quota_wakeup();
	member_shares_timer_init();
	if (scx_bpf_create_dsq(CANOPY_IDLE_DSQ, -1) || scx_bpf_create_dsq(CANOPY_URGENT_DSQ, -1))
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

	canopy_dump("canopy_root: own DSQ %d queued, urgent %d, idle-cgroup DSQ %d, member vtime floor %llu, own vtime now %llu, RCU gp %llu seen at %llu\n",
		    scx_bpf_dsq_nr_queued(CANOPY_OWN_DSQ), scx_bpf_dsq_nr_queued(CANOPY_URGENT_DSQ),
		    scx_bpf_dsq_nr_queued(CANOPY_IDLE_DSQ),
		    member_vtime_min, own_vtime_now, rcu_gp_seen, rcu_gp_seen_at);
	for (slot = 0; slot < CANOPY_MAX_MEMBERS; slot++) {
		struct canopy_member *m = member_of(slot);

		if (m && m->active)
			canopy_dump("member %u cgroup %llu weight %u share %u vtime %llu cpu_ns %llu\n",
				    slot, m->cgroup_id, m->weight, m->tree_share, m->vtime, m->cpu_ns);
	}
}

/* One line per task in the kernel's dump: how the root last queued and priced it. */
void CANOPY_OP(canopy_root_dump_task, struct scx_dump_ctx *dump_ctx, struct task_struct *p)
{
	struct task_ctx *tctx = task_ctx_of(p);
	struct tree_task *tt = tree_task_of(p);

	if (tctx)
		canopy_dump("canopy: class %u weight %u charged_fp %llu debt %llu ran_since_sleep %llu\n",
			    tctx->class, tctx->weight, tctx->charge_weight_fp, tctx->vtime_debt,
			    tctx->ran_since_sleep_ns);
	if (tt)
		canopy_dump("canopy: tree cgroup %llu weight %u share weight %u idle %u\n",
			    tt->cgroup_id, tt->weight, tt->share_weight, tt->idle);
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
	.dump_task = (void *)canopy_root_dump_task,
	.timeout_ms = 30000,
	.exit_dump_len = CANOPY_EXIT_DUMP_LEN,
	.name = "canopy_root",
};
