/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * canopy_child: canopy's child sched_ext scheduler for one cgroup subtree
 * (cid form, with an arena), attached below canopy_root (or any parent that
 * admits it).
 *
 * Policy: class-aware weighted vtime over the subtree's tasks, the same order
 * the root uses for its own tasks (class_vtime.bpf.h), on the same task scale
 * (1024 = nice 0). Example: a USER_INTERACTIVE task (class weight 8192 in the
 * standalone table) and a BACKGROUND hog (256) both runnable in this subtree:
 * for every 25 ms the hog runs the interactive task may run 800 ms, so it
 * effectively never waits behind the hog for more than one slice.
 *
 * Capabilities: the parent decides which cids we may use and how. We track
 * the caps in effect per cid (sub_ecaps_updated) and insert into a local DSQ
 * with SCX_ENQ_IMMED wherever we hold only a time share (ENQ_IMMED without
 * ENQ), plainly where we own the cid (ENQ). We never insert directly from
 * select_cid/enqueue: tasks wait on our DSQ and run when the parent hands us a
 * cid through scx_bpf_sub_dispatch(), so the parent's accounting sees all of
 * our CPU time. We kick an idle cid we hold when work arrives; when none is idle,
 * a waking task of a preempting class with preemption budget left (preempt_budget.bpf.h)
 * waits on CANOPY_URGENT_DSQ (dispatched first) and preempts one of our own preemptible
 * tasks as the root does for its own (a kick with SCX_KICK_PREEMPT: our own subtree needs no
 * cap), else asks the root for a cid through the map the two share (child_wake.bpf.h). Either
 * way the cid goes through the root's dispatch, which offers it by member vtime.
 *
 * Known cost: one extra kick on wake-ups that find an idle cid, against
 * inserting directly there.
 */
#include "preempt_budget.bpf.h"
#include "child_wake.bpf.h"
#include "child_work.bpf.h"

char _license[] SEC("license") = "GPL";

/* the cgroup this instance is attached to (informational; the ops field is what counts) */
const volatile u64 attach_cgroup_id;
/* This child's slot in the root's `members` (child_work.bpf.h); CANOPY_MAX_MEMBERS: not found yet. */
u32 own_member_slot = CANOPY_MAX_MEMBERS;

/*
 * Test hook for the supervisor's re-attach path: when the loader sets it, the child unregisters
 * itself after that many dispatches with the restart action in its exit code, as a scheduler
 * asking userspace to load it again does. 0 (always, outside `canopy scheduler run
 * --child-restart-loads`) leaves the branch dead for the verifier.
 */
const volatile u64 restart_after_dispatches;
u64 own_dispatches;

/* caps in effect per cid, from sub_ecaps_updated */
u64 cid_caps[CANOPY_MAX_CIDS];
u64 idle_cids[CANOPY_MAX_CIDS / 64];

/*
 * Preempting-class wakeups with preemption budget left wait on CANOPY_URGENT_DSQ, ahead of
 * CANOPY_OWN_DSQ's vtime order (a waking task is placed at most a slice behind the latest
 * vtime, so queued BACKGROUND tasks could still come first): we insert only from dispatch, so
 * our dispatch takes that queue first, as the root's does for its own such wakers that found
 * no cid to run on at once.
 */

/* the cids we hold a cap on, as the kernel reports them (arena: the kernel writes it) */
struct canopy_cmask __arena held_mask;

/* Which of our tasks runs on a cid: its class (CANOPY_MAX_CLASSES: none of ours) and since when. */
struct own_run {
	u32 class;
	u32 pad;
	u64 since;
};
struct own_run own_runs[CANOPY_MAX_CIDS];

static __always_inline struct own_run *own_run_on(s32 cid)
{
	if (cid < 0 || cid >= CANOPY_MAX_CIDS)
		return NULL;
	return &own_runs[cid & (CANOPY_MAX_CIDS - 1)];
}

/*
 * Is one of our own tasks running on @cid that a waking @p may preempt? The root's rule for
 * its own tasks (cid_for_waker in canopy_root.bpf.c): a preemptible class at once,
 * DEFAULT once it has run preemptible_after_us. Preempting our own subtree's task needs no cap.
 */
static __always_inline bool own_task_preemptible_on(struct task_struct *p, s32 cid)
{
	struct own_run *run = own_run_on(cid);

	return run && task_may_run_on(p, cid) && class_preemptible_since(run->class, run->since);
}

static __always_inline u64 caps_on(s32 cid)
{
	if (cid < 0 || cid >= CANOPY_MAX_CIDS)
		return 0;
	return cid_caps[cid & (CANOPY_MAX_CIDS - 1)];
}

static __always_inline bool cid_is_idle(s32 cid)
{
	if (cid < 0 || cid >= CANOPY_MAX_CIDS)
		return false;
	return idle_cids[(cid / 64) & (CANOPY_MAX_CIDS / 64 - 1)] & (1ULL << (cid & 63));
}

s32 CANOPY_OP(canopy_child_select_cid, struct task_struct *p, s32 prev_cid, u64 wake_flags)
{
	u32 nr = scx_bpf_nr_cids();
	s32 found = prev_cid;
	int i;

	if (cid_is_idle(prev_cid) && task_may_run_on(p, prev_cid))
		return prev_cid;
	canopy_for(i, 0, nr < CANOPY_MAX_CIDS ? nr : CANOPY_MAX_CIDS) {
		if (cid_is_idle(i) && task_may_run_on(p, i)) {
			found = i;
			break;
		}
	}
	return found;
}

void CANOPY_OP(canopy_child_enqueue, struct task_struct *p, u64 enq_flags)
{
	u32 nr = scx_bpf_nr_cids();
	u32 class = decide_class(p);
	bool urgent = (enq_flags & KCONST(SCX_ENQ_WAKEUP)) && may_preempt(p, class_of(class));
	s32 own;
	int i;

	queue_by_class(p, class, urgent ? CANOPY_URGENT_DSQ : CANOPY_OWN_DSQ, enq_flags);
	child_count_enqueue(attach_cgroup_id, &own_member_slot);

	canopy_for(i, 0, nr < CANOPY_MAX_CIDS ? nr : CANOPY_MAX_CIDS) {
		if (cid_is_idle(i) && (caps_on(i) & KCONST(SCX_CAP_ENQ_IMMED)) &&
		    task_may_run_on(p, i)) {
			scx_bpf_kick_cid(i, KCONST(SCX_KICK_IDLE));
			stat_inc(CANOPY_STAT_IDLE_KICKS);
			return;
		}
	}
	if (!urgent)
		return;
	/*
	 * No idle cid, and a preempting-class wakeup with budget left: preempt one of our own
	 * preemptible tasks (its own cid first: no IPI), else ask the root for a cid.
	 */
	own = scx_bpf_task_cid(p);
	if (own_task_preemptible_on(p, own)) {
		scx_bpf_kick_cid(own, KCONST(SCX_KICK_PREEMPT));
		stat_inc(CANOPY_STAT_PREEMPT_KICKS);
		return;
	}
	canopy_for(i, 0, nr < CANOPY_MAX_CIDS ? nr : CANOPY_MAX_CIDS) {
		if (own_task_preemptible_on(p, i)) {
			scx_bpf_kick_cid(i, KCONST(SCX_KICK_PREEMPT));
			stat_inc(CANOPY_STAT_PREEMPT_KICKS);
			return;
		}
	}
	ask_root_for_cid(p, attach_cgroup_id);
}

void CANOPY_OP(canopy_child_dispatch, s32 cid, struct task_struct *prev)
{
	u64 flags = 0;

	if (!(caps_on(cid) & KCONST(SCX_CAP_ENQ)))
		flags = KCONST(SCX_ENQ_IMMED);
	if (scx_bpf_dsq_move_to_local___v2___canopy(CANOPY_URGENT_DSQ, flags) ||
	    scx_bpf_dsq_move_to_local___v2___canopy(CANOPY_OWN_DSQ, flags)) {
		stat_inc(CANOPY_STAT_OWN_DISPATCHES);
		if (flags)
			stat_inc(CANOPY_STAT_IMMED_INSERTS);
		if (restart_after_dispatches &&
		    __sync_fetch_and_add(&own_dispatches, 1) + 1 == restart_after_dispatches) {
			static char fmt[] = "canopy_child: asking for a restart after %llu dispatches";
			unsigned long long param[1] = { restart_after_dispatches };

			scx_bpf_exit_bstr(SCX_ECODE_ACT_RESTART, fmt, param, sizeof(param));
		}
		return;
	}
	class_vtime_keep_prev(prev);
}

void CANOPY_OP(canopy_child_running, struct task_struct *p)
{
	struct task_ctx *tctx = task_ctx_of(p);
	struct own_run *run = own_run_on(scx_bpf_task_cid(p));
	u64 now = scx_bpf_now();

	class_vtime_running(p, tctx, now);
	if (run) {
		run->class = tctx ? tctx->class : CANOPY_MAX_CLASSES;
		run->since = now;
	}
}

void CANOPY_OP(canopy_child_stopping, struct task_struct *p, bool runnable)
{
	struct task_ctx *tctx = task_ctx_of(p);
	struct own_run *run = own_run_on(scx_bpf_task_cid(p));
	u64 now = scx_bpf_now();

	if (run)
		run->class = CANOPY_MAX_CLASSES;

	if (tctx && tctx->running_at && now > tctx->running_at)
		preempt_budget_charge(p, tctx->class, now - tctx->running_at);
	class_vtime_stopping(p, tctx, now, 0, runnable);
	class_vtime_end_slice_taken_by_higher_class(p, runnable);
}

void CANOPY_OP(canopy_child_update_idle, s32 cid, bool idle)
{
	u64 bit;

	if (cid < 0 || cid >= CANOPY_MAX_CIDS)
		return;
	bit = 1ULL << (cid & 63);
	if (idle)
		__sync_fetch_and_or(&idle_cids[(cid / 64) & (CANOPY_MAX_CIDS / 64 - 1)], bit);
	else
		__sync_fetch_and_and(&idle_cids[(cid / 64) & (CANOPY_MAX_CIDS / 64 - 1)], ~bit);
}

void CANOPY_OP(canopy_child_sub_ecaps_updated, s32 cid, u64 before, u64 after)
{
	if (cid >= 0 && cid < CANOPY_MAX_CIDS)
		cid_caps[cid & (CANOPY_MAX_CIDS - 1)] = after;
	child_mark_counting(attach_cgroup_id, &own_member_slot);
}

void CANOPY_OP(canopy_child_cpuctl_move, struct task_struct *p, struct cgroup *from, struct cgroup *to)
{
	class_vtime_moved(p);
}

s32 CANOPY_OP_SLEEPABLE(canopy_child_init_task, struct task_struct *p, struct scx_init_task_args *args)
{
	return class_vtime_init_task(p);
}

void CANOPY_OP(canopy_child_enable, struct task_struct *p, struct scx_enable_args *args)
{
	scx_bpf_task_set_dsq_vtime(p, own_vtime_now);
	class_vtime_moved(p);
}

/* Seed cid_caps with what we already hold (normally nothing: grants arrive after attach). */
static void seed_caps(u64 cap)
{
	u32 nr = scx_bpf_nr_cids(), i;

	cmask_reset(&held_mask, nr);
	if (scx_bpf_sub_caps(0, cap, AS_SCX_CMASK(&held_mask)) < 0)
		return;
	for (i = 0; i < CANOPY_MAX_CIDS && i < nr; i++)
		if (cmask_test(&held_mask, i))
			cid_caps[i] |= cap;
}

s32 CANOPY_OP_SLEEPABLE(canopy_child_init)
{
	u32 cid;

	for (cid = 0; cid < CANOPY_MAX_CIDS; cid++)
		own_runs[cid].class = CANOPY_MAX_CLASSES;
	seed_caps(KCONST(SCX_CAP_ENQ_IMMED));
	seed_caps(KCONST(SCX_CAP_ENQ));
	if (scx_bpf_create_dsq(CANOPY_URGENT_DSQ, -1))
		return -ENOMEM;
	return scx_bpf_create_dsq(CANOPY_OWN_DSQ, -1);
}

void CANOPY_OP(canopy_child_exit, struct scx_exit_info *ei)
{
	canopy_record_exit(ei);
}

void CANOPY_OP(canopy_child_dump, struct scx_dump_ctx *dump_ctx)
{
	canopy_dump("canopy_child on cgroup %llu: %d queued, vtime now %llu\n",
		    attach_cgroup_id, scx_bpf_dsq_nr_queued(CANOPY_OWN_DSQ), own_vtime_now);
}

SEC(".struct_ops.link")
struct sched_ext_ops_cid canopy_child_ops = {
	.select_cid = (void *)canopy_child_select_cid,
	.enqueue = (void *)canopy_child_enqueue,
	.dispatch = (void *)canopy_child_dispatch,
	.running = (void *)canopy_child_running,
	.stopping = (void *)canopy_child_stopping,
	.update_idle = (void *)canopy_child_update_idle,
	.sub_ecaps_updated = (void *)canopy_child_sub_ecaps_updated,
	.cpuctl_move = (void *)canopy_child_cpuctl_move,
	.init_task = (void *)canopy_child_init_task,
	.enable = (void *)canopy_child_enable,
	.init = (void *)canopy_child_init,
	.exit = (void *)canopy_child_exit,
	.dump = (void *)canopy_child_dump,
	.timeout_ms = 30000,
	.exit_dump_len = CANOPY_EXIT_DUMP_LEN,
	.name = "canopy_child",
};
