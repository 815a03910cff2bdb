/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * class_vtime.bpf.h: class-aware weighted virtual time for the tasks a canopy
 * scheduler owns itself (the root's tasks outside any child, and every task of
 * a canopy child). Shared so both schedulers order tasks the same way.
 *
 * A task's weight is its class weight scaled by its nice weight (p->scx.weight, 100 at
 * nice 0), on the kernel's task scale: 1024 = a nice-0 task (CANOPY_NICE0_WEIGHT), the scale
 * of the nice-to-weight table, on which the daemon's policy gives its classes (DEFAULT 655,
 * USER_INTERACTIVE 2501) and the standalone table too (DEFAULT 1024, USER_INTERACTIVE 8192).
 * Running for t ns advances its vtime by t * 1024 / weight, so vtime is in ns of a nice-0
 * task's run, whatever the table: at equal demand a USER_INTERACTIVE task (2501 in the
 * policy's classes) gets 3.8x the CPU of a DEFAULT one (655), and a DEFAULT task running a
 * 16 ms slice is charged 25 ms of vtime. A waking task's vtime is raised to at least
 * `own_vtime_now - one slice`, so sleeping banks at most one slice of credit, and capped at
 * `own_vtime_now + CANOPY_MAX_VTIME_AHEAD`, so no task waits unboundedly behind the others.
 *
 * The root's tasks in its cpu tree (cpu_tree.bpf.h) are priced at their share: a run costs
 * t * 1024 / W_eq, and W_eq of a task in a small cgroup is far below its class weight. Two
 * rules keep that price exact, as the fair scheduler's does (a low-weight entity asks for a
 * short request and its lag carries what it overran):
 * - Its turn is the class slice times W_eq / class weight (at least CANOPY_MIN_TURN_NS; the
 *   tick ends it), so one turn costs about what a class slice costs a task at its class
 *   weight, and a small share comes in many short turns rather than a few long ones. W_eq is
 *   the one its last run was charged at; a task not yet charged is priced at its first
 *   enqueue (own_dispatch.bpf.h price_first_turn()).
 * - Vtime charged beyond the cap to a task that stayed runnable is debt, not forgiven: it is
 *   queued at the cap (so it still runs within the watchdog's reach), with the rest kept in
 *   task_ctx.vtime_debt (at most CANOPY_MAX_VTIME_DEBT) and added back at its next enqueue,
 *   and until it is paid its turns are the shortest. A waking or new task keeps the old rule:
 *   the cap forgives it. Tasks of idle cgroups (CANOPY_IDLE_DSQ; their turns are the
 *   starvation guard's or what nothing else wants) keep class slices and the old rule, and
 *   a child's tasks are not priced (charged at their class weight).
 * Example (issue 10 (e)): 50 cgroups at cpu.weight 1..1000 (sum 26,119, 267,459 on the task
 * scale), one DEFAULT hog each (1024, 10 ms slices), 2 cids. The hog of the cgroup at 45 (461)
 * has W_eq = 461 / 267,459 * 51,200 = 88, so its turns are 0.86 -> 1 ms (1-5 ms with the 4 ms
 * tick) and a 4 ms run costs 46 ms of vtime, 1.2 s of the vtime clock (2 * 1024 / 51,200 =
 * 0.04 ms of vtime per ms); its share is 3.4 ms per second. With 10 ms slices (10-14 ms
 * run) it got its 69 ms of a 20 s window in five or six turns. The hog at 102 (W_eq 200) once
 * ran 101 ms at once (a host stall of its vCPU is charged to whatever ran): 517 ms of vtime,
 * 317 ms past the cap. Forgiven, that was 62 ms of CPU its cgroup kept, +34% on its 20 s
 * share; as debt it pays it back (queued at the cap, 1 ms turns: about 13 s of the clock, as
 * the fair scheduler makes it wait).
 * Cost: three u64 in task_ctx (the run is charged from p->se.sum_exec_runtime, read at
 * running and stopping), a compare and a multiply-divide per enqueue; a priced task whose
 * W_eq is below its class weight runs more turns (each task about as many per second as at
 * its class weight; at most one per tick per cid).
 *
 * The root raises a waking task further, to one turn before its cgroup's place, and starts a
 * new one at that place (cpu_tree.bpf.h tree_group_start()); a child keeps the floor above
 * and starts a new task at own_vtime_now.
 *
 * Only a waking task is raised to that floor. A task queued again while it stayed runnable
 * (its slice ended, it was preempted, its attributes or cgroup changed) keeps the vtime it was
 * charged: it competed all along and has no sleep to bank, and own_vtime_now (the vtime of the
 * latest task started on any cid) can be far ahead of a task that has been running on another
 * cid. Its lag is cut only past CANOPY_MAX_VTIME_AHEAD, a safety net mirroring the cap.
 * Example (issue 12, busybox guest, daemon on the default policy): 2 cids, hogs a1 a2 in a
 * cgroup at cpu.weight 200 and b1 b2 in one at 100; before the cgroup tree and the tasks
 * shared one scale (2026-12-03) they were charged about 2 and 4 ms of vtime per 16 ms slice,
 * and 6 to 13 times that when a root-cgroup task (DEFAULT to USER_INTERACTIVE) was runnable
 * as the slice ended (cpu_tree.bpf.h: W_eq follows the runnable tree). a1 starts
 * at vtime 100 on cid 0; meanwhile cid 1 starts b1, charged 48 ms for its last slice, at 150,
 * so own_vtime_now = 150. a1's slice ends at 102: the floor on every enqueue lifted it to
 * 150 - 16 = 134, 32 ms of vtime it never ran, and a's 2:1 over b came out 1.51-1.61:1 in
 * four 6 s windows; kept at 102, it runs before b1's next turn.
 */
#ifndef CANOPY_CLASS_VTIME_BPF_H
#define CANOPY_CLASS_VTIME_BPF_H

#include "canopy.bpf.h"

/* the most vtime debt a task carries (queue_by_class()); beyond it is forgiven */
#define CANOPY_MAX_VTIME_DEBT (10ULL * CANOPY_MAX_VTIME_AHEAD)
/* a tick at HZ=250: a priced run more than two past its turn counts as a long turn (a stall) */
#define CANOPY_LONG_TURN_TICK_NS 4000000ULL
/* a grace period in progress this long puts preempted RCU readers first (front_for_rcu_reader()) */
#define CANOPY_RCU_GP_STUCK_NS 1000000000ULL
/* task_ctx.ran_since_sleep_ns stops counting here (it is compared with class slices) */
#define CANOPY_MAX_RAN_SINCE_SLEEP_NS 1000000000ULL

struct task_ctx {
	u64 running_at;	/* scx_bpf_now() when it last started running */
	u32 class;	/* class it was queued with */
	u32 weight;	/* effective weight it was queued with */
	u64 woken_at;	/* scx_bpf_now() at a tracked wakeup, 0 when none is pending */
	u32 wake_stat;	/* CANOPY_STAT_WAKE_* path that wakeup took */
	u32 pad;
	u64 quota_charged_at;	/* scx_bpf_now() up to which its run was charged to cpu.max quotas */
	u64 charge_weight_fp;	/* weight (1/1024 units) its last run was charged at; 0: its class weight */
	u64 vtime_debt;	/* vtime charged to it beyond the queue's cap, still owed (queue_by_class()) */
	u64 exec_at_running;	/* p->se.sum_exec_runtime when it last started running */
	/* the root's cpu tree as its current run started (cpu_tree.bpf.h tree_price_run()) */
	u64 run_weight_fp;	/* W_eq (1/1024 units) that run is charged at; 0: priced at its stop */
	u64 run_group_fp;	/* its weight over its cgroup's own runnable tasks' (1/1024 units) */
	u64 ran_since_sleep_ns;	/* run time since it last slept (at most CANOPY_MAX_RAN_SINCE_SLEEP_NS) */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctxs SEC(".maps");

/* vtime of the most recently started own task: the floor for waking tasks */
u64 own_vtime_now;

static __always_inline struct task_ctx *task_ctx_of(struct task_struct *p)
{
	return bpf_task_storage_get(&task_ctxs, p, 0, 0);
}

/* Note that @p woke through path @wake_stat (a CANOPY_STAT_WAKE_* counter). */
static __always_inline void track_wakeup(struct task_struct *p, u32 wake_stat)
{
	struct task_ctx *tctx = task_ctx_of(p);

	stat_inc(wake_stat);
	if (tctx) {
		tctx->woken_at = scx_bpf_now();
		tctx->wake_stat = wake_stat;
	}
}

/*
 * @p's weight on the task scale (1024 = nice 0): its class weight times its nice weight
 * (p->scx.weight, 100 at nice 0). Example: a nice-5 task (scx weight 33) of DEFAULT (655)
 * weighs 216.
 */
static __always_inline u32 effective_weight(const struct task_struct *p,
					    const struct canopy_class_params *cp)
{
	u64 w = (u64)class_weight(cp) * p->scx.weight / 100;

	/* at least 15, the kernel's nice-19 weight: a nice-19 kthread must not fall minutes behind */
	return w < 15 ? 15 : (w < 1000000 ? w : 1000000);
}

/*
 * May a waking task of a preempting class preempt a task of @class that has been running
 * since @since? The one rule every canopy scheduler applies to its victims: a preemptible class
 * (UTILITY, BACKGROUND) at once, a class with preemptible_after_us (DEFAULT) once it has run
 * that long, so a UI thread waits at most that long behind default work; none of ours, never.
 */
static __always_inline bool class_preemptible_since(u32 class, u64 since)
{
	struct canopy_class_params *victim;

	if (class >= CANOPY_MAX_CLASSES)
		return false;
	victim = class_of(class);
	if (!victim)
		return false;
	if (victim->preemptible)
		return true;
	return victim->preemptible_after_us &&
	       scx_bpf_now() - since >= victim->preemptible_after_us * 1000ULL;
}

/*
 * Record the class and weight @p is being inserted with. Every insert path reaches this through
 * decide_class() (queueing, direct dispatch to an idle cid, preempting insert, keeping prev, a
 * move): running() and stopping() read it, and a stale record would misclassify the running
 * task (hiding it from preemption) or charge its vtime with the wrong weight.
 */
static __always_inline void remember_class(struct task_struct *p, u32 class,
					   const struct canopy_class_params *cp)
{
	struct task_ctx *tctx = task_ctx_of(p);

	if (tctx) {
		tctx->class = class;
		tctx->weight = effective_weight(p, cp);
	}
}

/*
 * The one class decision every canopy scheduler makes about @p before it runs: its request
 * (own tag, process tag, policy default), clamped by its cgroup's state, logged as the first
 * decision after a move when one is pending, and remembered for running()/stopping(). Called
 * at each enqueue, at a direct insert from select_cid, when keeping prev, and at a move of a
 * running task. Example: a task tagged USER_INTERACTIVE (0) in a cgroup whose state has a
 * ceiling of BACKGROUND (4) is decided BACKGROUND and charged at BACKGROUND's weight.
 */
static __always_inline u32 decide_class(struct task_struct *p)
{
	u32 requested = task_requested_class(p), class = clamp_to_cgroup(p, requested);

	note_class_decided_after_move(p, requested, class);
	remember_class(p, class, class_of(class));
	return class;
}

/*
 * The turn of a task whose last run was charged at W_eq = @charge_weight_fp (1/1024 units,
 * the root's cpu tree) against its class-and-nice @weight: the class @slice shortened by
 * W_eq / weight, at least CANOPY_MIN_TURN_NS, so one turn costs it about the vtime a class
 * slice costs a task at its class weight. Tasks charged at their class weight (0: every task
 * of a child, and the root's outside the tree) and at or above it keep the class slice.
 */
static __always_inline u64 tree_turn(u64 slice, u64 charge_weight_fp, u32 weight)
{
	u64 class_fp = (u64)weight << 10, turn;

	if (!charge_weight_fp || !weight || charge_weight_fp >= class_fp)
		return slice;
	turn = slice * charge_weight_fp / class_fp;
	return turn > CANOPY_MIN_TURN_NS ? turn : CANOPY_MIN_TURN_NS;
}

/*
 * Is @p inside an RCU read-side critical section (CONFIG_PREEMPT_RCU)? Read at an enqueue of a
 * task that stayed runnable: it was preempted there, is on its rcu_node's blocked list, and
 * the grace period in progress waits for it to run on to rcu_read_unlock(). A woken task never
 * is (sleeping inside a read-side section is a kernel bug).
 */
static __always_inline bool rcu_reader_preempted(const struct task_struct *p)
{
	if (!bpf_core_field_exists(p->rcu_read_lock_nesting))
		return false;
	return BPF_CORE_READ(p, rcu_read_lock_nesting) > 0;
}

/* The kernel's per-CPU RCU state (tree RCU); absent (NULL) on kernels that name it otherwise. */
extern struct rcu_data rcu_data __ksym __weak;

/* The grace-period number this CPU's rcu_node showed when last read, and when it changed. */
u64 rcu_gp_seen;
u64 rcu_gp_seen_at;

/*
 * Has one RCU grace period been in progress for CANOPY_RCU_GP_STUCK_NS, by this CPU's rcu_node?
 * Its gp_seq's low two bits are nonzero while a grace period runs, and the number changes when
 * one starts or ends; a grace period normally ends within milliseconds.
 */
static __always_inline bool rcu_grace_period_stuck(u64 now)
{
	struct rcu_data *rdp;
	struct rcu_node *rnp;
	u64 gp;

	if (!&rcu_data)
		return false;
	rdp = bpf_this_cpu_ptr(&rcu_data);
	rnp = rdp->mynode;
	if (!rnp)
		return false;
	gp = BPF_CORE_READ(rnp, gp_seq);
	if (gp != rcu_gp_seen || !rcu_gp_seen_at) {
		rcu_gp_seen = gp;
		rcu_gp_seen_at = now;
		return false;
	}
	return (gp & 3) && now - rcu_gp_seen_at >= CANOPY_RCU_GP_STUCK_NS;
}

/*
 * RCU readers first while a grace period is stuck. A task preempted inside an RCU read-side
 * critical section, requeued while one grace period has been in progress for
 * CANOPY_RCU_GP_STUCK_NS (1 s), is queued at the front (@front: the floor every requeue is
 * lifted to, own_vtime_now - CANOPY_MAX_VTIME_AHEAD), whatever its vtime; the vtime it skipped is kept as
 * debt, paid at its later requeues: it borrows its turns, it is not given them. The kernel's
 * RCU stall detector ejects the scheduler once a grace period has waited 21 s. In the stress
 * scenario (tests/vm/sched_root.rs, 2026-12-06) khugepaged (nice 19, weight 15) was preempted
 * while copying a huge page under the page-table walk's rcu_read_lock(), among 91-93 runnable
 * tasks; charged at W_eq 5.7-6.1 with the most debt (2 s of vtime), it got a 1 ms turn about
 * every 1.2-1.8 s, 73-78 ms of CPU since it last slept, and the grace period waited past 21 s
 * in 7 of 14 boots. The kernel's own answer, RCU priority boosting, needs CONFIG_RCU_BOOST,
 * which the test kernel (Debian's 7.3.4 cloud kernel) does not set.
 *
 * With the rule, 6 of 6 boots passed (143-1,464 readers put first per 60 s run).
 *
 * Why only while a grace period is stuck: readers are preempted inside read-side sections all
 * the time in normal work (stress-ng's affinity workers are requeued by their own
 * sched_setaffinity() inside one, at every requeue: 13,095 readers put first in a 60 s run
 * by a rule that put one first at most once per 100 ms, which still stalled in 3 of 4 boots,
 * the reader waiting 1.8 s at its normal place after each such turn). Putting first a task
 * seen in a section at every requeue for a second let those workers hold a child's queue:
 * another of its tasks waited 44 s and the kernel ejected the child in 2 of 4 boots, and the
 * RCU stall came in the other 2. A grace period that has not ended in a second is the stall
 * in the making; only then do readers jump the queue, and only until it ends.
 * Tasks of idle cgroups go first within their own DSQ only: the starvation guard serves each
 * about once a second (own_dispatch.bpf.h), 4 ms a turn.
 */
static __always_inline u64 front_for_rcu_reader(struct task_struct *p, struct task_ctx *tctx,
						 u64 vtime, u64 front)
{
	u64 owed;

	if (!tctx || vtime <= front || !rcu_reader_preempted(p) ||
	    !rcu_grace_period_stuck(scx_bpf_now()))
		return vtime;
	owed = tctx->vtime_debt + (vtime - front);
	tctx->vtime_debt = owed < CANOPY_MAX_VTIME_DEBT ? owed : CANOPY_MAX_VTIME_DEBT;
	stat_inc(CANOPY_STAT_RCU_READERS_FIRST);
	return front;
}

/*
 * Queue @p on @dsq in class-weighted vtime order, as @class (from the caller's decide_class():
 * one lookup per enqueue), for one turn (tree_turn(); the shortest while it owes vtime).
 */
static __always_inline void queue_by_class(struct task_struct *p, u32 class, u64 dsq,
					   u64 enq_flags)
{
	struct scx_bpf_dsq_insert_vtime_args args = {};
	struct canopy_class_params *cp;
	struct task_ctx *tctx = task_ctx_of(p);
	u64 vtime = p->scx.dsq_vtime, slice, lag, floor, now_v = own_vtime_now;
	bool woken = enq_flags & KCONST(SCX_ENQ_WAKEUP);
	/* priced: a root task in the cpu tree, not of an idle cgroup (see the top) */
	bool priced = tctx && tctx->charge_weight_fp && dsq != CANOPY_IDLE_DSQ;

	cp = class_of(class);
	slice = class_slice(cp);
	if (priced)
		slice = tree_turn(slice, tctx->charge_weight_fp, tctx->weight);
	if (tctx) {
		/* what it still owes; a wakeup forgives it as the cap below always did */
		if (!woken)
			vtime += tctx->vtime_debt;
		tctx->vtime_debt = 0;
	}
	/* sleep banks at most a slice; a task that stayed runnable keeps its lag (see the top) */
	lag = woken ? slice : CANOPY_MAX_VTIME_AHEAD;
	floor = now_v > lag ? now_v - lag : 0;
	if (vtime < floor) {
		if (!woken)
			stat_inc(CANOPY_STAT_FLOOR_LIFTS);
		vtime = floor;
	}
	/*
	 * Nor more than CANOPY_MAX_VTIME_AHEAD ahead: a low-weight task that just ran a long slice
	 * would otherwise wait for every other task to catch up, long enough for the sched_ext
	 * watchdog to call it a stall. A priced task that stayed runnable keeps the rest as debt,
	 * added back at its next enqueue, and runs the shortest turns until it is paid (see the
	 * top); any other task is forgiven the rest.
	 */
	if (vtime > now_v + CANOPY_MAX_VTIME_AHEAD) {
		stat_inc(CANOPY_STAT_AHEAD_CAPPED);
		if (priced && !woken) {
			stat_inc(CANOPY_STAT_VTIME_DEBTS);
			tctx->vtime_debt = vtime - (now_v + CANOPY_MAX_VTIME_AHEAD);
			if (tctx->vtime_debt > CANOPY_MAX_VTIME_DEBT)
				tctx->vtime_debt = CANOPY_MAX_VTIME_DEBT;
			slice = CANOPY_MIN_TURN_NS;
		}
		vtime = now_v + CANOPY_MAX_VTIME_AHEAD;
	}
	/* a requeue's floor (lag CANOPY_MAX_VTIME_AHEAD) is the front of the queue */
	if (!woken)
		vtime = front_for_rcu_reader(p, tctx, vtime, floor);

	args.dsq_id = dsq;
	args.slice = slice;
	args.vtime = vtime;
	args.enq_flags = enq_flags;
	__scx_bpf_dsq_insert_vtime(p, &args);
	stat_inc(CANOPY_STAT_ENQUEUES);
}

static __always_inline void class_vtime_running(struct task_struct *p, struct task_ctx *tctx,
					       u64 now)
{
	if (tctx) {
		tctx->running_at = now;
		tctx->exec_at_running = p->se.sum_exec_runtime;
		/* the slow counter of each wake path directly follows its total */
		if (tctx->woken_at && now - tctx->woken_at > 1000000 &&
		    tctx->wake_stat < CANOPY_NR_STATS - 1)
			stat_inc(tctx->wake_stat + 1);
		tctx->woken_at = 0;
	}
	if ((s64)(p->scx.dsq_vtime - own_vtime_now) > 0)
		own_vtime_now = p->scx.dsq_vtime;
}

/*
 * Charge @p for the time it just ran: vtime += used * 1024 / weight (ns of a nice-0 task's
 * run), at @weight_fp (the weight in 1/1024 units; the root's cpu tree passes the task's
 * weight in the tree) or, when that is 0, at the class weight it was queued with. `used` is
 * the run the kernel accounted to it (p->se.sum_exec_runtime, what cpu.stat's usage_usec
 * sums), not the scx_bpf_now() interval, which can start at a clock read after the dispatch
 * that chose it and counts IRQ time the kernel's accounting leaves out: vtime is charged for
 * exactly what a cgroup's usage shows. (Suspected, not confirmed, as why the smallest cgroups
 * of issue 10 (e) came out a few percent over their share on average; they still do.)
 */
static __always_inline void class_vtime_stopping(struct task_struct *p, struct task_ctx *tctx,
						u64 now, u64 weight_fp, bool runnable)
{
	u64 used;

	if (!tctx || !tctx->running_at || now < tctx->running_at)
		return;
	used = now - tctx->running_at;
	if (p->se.sum_exec_runtime > tctx->exec_at_running)
		used = p->se.sum_exec_runtime - tctx->exec_at_running;
	tctx->running_at = 0;
	tctx->ran_since_sleep_ns = !runnable ? 0 :
				   tctx->ran_since_sleep_ns + used < CANOPY_MAX_RAN_SINCE_SLEEP_NS ?
				   tctx->ran_since_sleep_ns + used : CANOPY_MAX_RAN_SINCE_SLEEP_NS;
	if (weight_fp && tctx->class < CANOPY_MAX_CLASSES &&
	    used > tree_turn(class_slice(class_of(tctx->class)), tctx->charge_weight_fp,
			     tctx->weight) + 2 * CANOPY_LONG_TURN_TICK_NS)
		stat_inc(CANOPY_STAT_LONG_TURNS);
	tctx->charge_weight_fp = weight_fp;
	if (!weight_fp)
		weight_fp = (u64)(tctx->weight ?: 1) << 10;
	scx_bpf_task_set_dsq_vtime(p, p->scx.dsq_vtime +
					 (used * CANOPY_NICE0_WEIGHT << 10) / weight_fp);
}

/*
 * From ops.stopping. A task that stops still runnable with slice left was taken off its CPU
 * by a higher scheduling class: an RT or deadline task woke there (pipewire's threads on a
 * desktop), or the stopper ran. sched_ext would put it back at the head of that CPU's local
 * DSQ, and it would run out the rest of its slice there before anything we dispatch: a
 * BACKGROUND task with 15 ms of its 20 ms slice left ran those 15 ms ahead of a
 * USER_INTERACTIVE task that woke meanwhile and queued (no CPU was running a preemptible task
 * of ours then), and the USER_INTERACTIVE probe beside a SCHED_FIFO thread waking every 2 ms
 * waited up to 60 ms. Ending the slice here sends the task back through ops.enqueue, so the
 * CPU's next pick is decided by class and vtime, as the fair scheduler picks by vruntime
 * again after an RT task. The preempted task keeps its vtime (class_vtime_stopping charged
 * what it ran) and normally runs again at once. Our own preemptions already ended the slice
 * (SCX_ENQ_PREEMPT and preempting kicks set it to 0), so they are not counted here.
 *
 * Not SCX_ENQ_IMMED, the kernel's successor to ops.cpu_release (which the cid form lacks): it
 * re-enqueues a local-DSQ insert whenever another task is queued there or the CPU is not free,
 * and a task re-enqueued SCX_REENQ_MAX_REPEAT (256) times without running ejects its scheduler
 * (ext.c's scx_do_enqueue_task), as inserting a task pinned to a CPU an RT task holds would.
 */
static __always_inline bool class_vtime_end_slice_taken_by_higher_class(struct task_struct *p,
									bool runnable)
{
	if (!runnable || !p->scx.slice)
		return false;
	if (scx_bpf_task_set_slice(p, 0))
		stat_inc(CANOPY_STAT_HIGHER_CLASS_SLICE_ENDS);
	return true;
}

/*
 * Called from ops.dispatch when we had nothing new for the cid: if our @prev is still
 * runnable, give it a fresh class slice so the kernel keeps it running *as our dispatch*
 * (SCX_DSP_PREV). Without this the kernel still keeps prev, but only after the parent's
 * dispatch returned empty-handed, so the parent cannot account the time to us. Keeping it is
 * a new decision about its class, like an enqueue: it may have moved to another cgroup (a
 * move cuts a running task's slice, which brings us here when nothing else waits) or been
 * re-tagged since it was queued.
 */
static __always_inline bool class_vtime_keep_prev(struct task_struct *prev)
{
	if (!prev || !(prev->scx.flags & SCX_TASK_QUEUED))
		return false;
	return scx_bpf_task_set_slice(prev, class_slice(class_of(decide_class(prev))));
}

/*
 * A move of @p to another cgroup: from ops.cpuctl_move (a move between cgroups the same
 * scheduler keeps) and from ops.enable (a move into a cgroup another scheduler keeps re-homes
 * the task: the old one disables it, the new one enables it). A queued task is requeued by the
 * move itself (ops.enqueue decides its class) and a sleeping one is decided when it wakes. A
 * running task is decided here, at the move: it takes its new class (and weight) now, and its
 * slice is cut so it leaves the CPU at that CPU's next reschedule, which the move requests,
 * and comes back through ops.enqueue or a keep as the new class. Returns the class of a
 * running task, else CANOPY_MAX_CLASSES.
 */
static __always_inline u32 class_vtime_moved(struct task_struct *p)
{
	u32 class;

	if (!scx_bpf_task_running(p) || !move_pending(p))
		return CANOPY_MAX_CLASSES;
	class = decide_class(p);
	scx_bpf_task_set_slice(p, 0);
	stat_inc(CANOPY_STAT_MOVE_SLICE_CUTS);
	return class;
}

static __always_inline s32 class_vtime_init_task(struct task_struct *p)
{
	if (!bpf_task_storage_get(&task_ctxs, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE))
		return -ENOMEM;
	return 0;
}

#endif /* CANOPY_CLASS_VTIME_BPF_H */
