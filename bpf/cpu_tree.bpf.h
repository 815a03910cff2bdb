/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * cpu_tree.bpf.h: the cgroup v2 cpu.weight tree for canopy_root's own tasks (member 0).
 *
 * Policy: every cgroup with the cpu controller is a weighted node at its place in the tree
 * (ops.cpuctl_init / cpuctl_exit / cpuctl_set_weight keep `cpu_tree` in step with cgroupfs),
 * and CPU is divided down the tree as the fair scheduler's classic `smp` group shares divide
 * it: at every node the runnable tasks of the cgroup itself (at their class-and-nice weight)
 * and its child cgroups that have runnable tasks below them (at their cpu.weight) share the
 * node's part in proportion to their weights. The tree is flattened: a task's hierarchical
 * share `hw` is the product of those fractions from its cgroup up to the root, and the one
 * vtime-ordered DSQ of the root's own tasks charges a task for running t ns as
 *
 *     t * 1024 / W_eq,    W_eq = hw * (sum of the weights of all runnable own tasks)
 *
 * Units: one scale for tasks and cgroups, the kernel's task scale (1024 = a nice-0 task). A
 * task weighs its class weight times its nice weight (class_vtime.bpf.h: the daemon's policy
 * gives DEFAULT 655, the kernel's weight for nice 2; the standalone table 1024), and a cgroup
 * its cpu.weight (or its policy group's weight) times 1024 / 100, rounded, as the fair
 * scheduler converts cpu.weight for its group entities (cgroup_weight_on_task_scale()).
 * Example: the root cgroup holds a DEFAULT task of the daemon's policy (655) beside a cgroup
 * at cpu.weight 100 (1024) with one hog: the task gets 655 / 1679 = 39% of a CPU they share,
 * as under the fair scheduler for a nice-2 task; when the cgroup weighed its cpu.weight
 * (100) against the task's 655 it got 87%. A busy child scheduler counts at its attach
 * cgroup's node on the same scale (below), and members of the root (its own tasks as a whole
 * and each child) weigh against each other at their shares of the machine in this tree
 * (cid_grants.bpf.h).
 *
 * W_eq is the weight the task would need, alone with the same runnable tasks in a flat
 * root, to get the same share; with no cgroups it is exactly the task's class weight, so the
 * class order, the wake floor and CANOPY_MAX_VTIME_AHEAD mean what they meant without the tree.
 *
 * Within a cgroup: its own runnable tasks take their part of the node at their full weights
 * (own_weight), and divide that part among themselves by share weight (own_share_weight,
 * tree_share_weight()): a task counts there at half its weight once it has run a whole class
 * slice since it last slept, and at a quarter after two (CANOPY_SHARE_HALVINGS). So hw above
 * is (own_weight / active_weight) * (share weight / own_share_weight) at the task's own
 * level, and the cgroup, and every other cgroup, gets what the weights give it whatever its
 * tasks' sleeps. Example: a cgroup alone with two BACKGROUND hogs (423, 20 ms slices) and two
 * build jobs (423) that each exit within a slice: own weight 1692; once the hogs have run
 * 40 ms each, share weights 105 + 105 + 423 + 423 = 1056, so a job's hw is 423 / 1056 = 0.40
 * and a hog's 0.10; W_eq = hw * 1692 = 678 and 168, and the jobs get 4/5 of the cgroup's CPU
 * where equal weights gave them half (2/3 with one halving). In the frame benchmark's run of
 * every peer (2026-12-06 17:25 UTC) the fair scheduler gave its build 50% of the
 * background's CPU, canopy with one halving 70%, scx_bpfland 79%, scx_lavd 78% and
 * scx_cosmos 69%; with two halvings canopy gave it 81.6-82.1% (six boots, 19:18-19:45 UTC).
 *
 * Worked example (issue 10, acceptance b): `p` (100) holding `p/a` (300) and `p/b` (100),
 * beside `q` (100), two DEFAULT hogs (standalone table: 1024) in each leaf, nothing else
 * runnable. Active weights: a = b = q = 2048 (two tasks of 1024), p = 3072 + 1024 = 4096
 * (cpu.weight 300 and 100 on the task scale), root = 1024 + 1024 = 2048 (p and q).
 * A hog in a: hw = 1024/2048 * 3072/4096 * 1024/2048 = 0.1875 (the cgroup a gets 0.375);
 * in b: 1024/2048 * 1024/4096 * 1024/2048 = 0.0625 (b: 0.125); in q: 1024/2048 * 1024/2048
 * = 0.25 (q: 0.5). Six hogs weigh 6144, so W_eq = 1152, 384 and 1536: a 20 ms slice costs a
 * hog in a 17.8 ms of vtime, in b 53.3 ms, in q 13.3 ms, and vtime order hands out CPU
 * 3 : 1 : 4 between the cgroups a, b and q, as the fair scheduler does.
 *
 * Cost: ops.runnable and ops.quiescent do one task-storage lookup and three atomic adds on
 * the task's cgroup node (active, own and share weight; a task of the root cgroup one or two
 * more, on globals), with two hash lookups of it; ops.stopping one lookup and an atomic add
 * when a task's share weight changes (twice per hog until it sleeps); only when a
 * cgroup turns active or idle does the update walk up, one hash lookup and atomic add per
 * level (at most CANOPY_MAX_CGROUP_DEPTH). ops.running looks the task's entry up once and
 * walks its path to the root to price the run (tree_price_run(); ops.stopping charges at
 * that price): one hash lookup and two multiply-divides per level (a task in
 * /user.slice/user-1000.slice/app.slice/x.scope: 5 lookups). ops.stopping looks the entry up
 * once and adds the charge to the cgroup's group_vtime (one hash lookup and an atomic add),
 * and a waking or new task reads it at its enqueue (one task-storage and one hash lookup).
 *
 * Group places: a cgroup's own tasks together keep a vtime (group_vtime, tree_group_charge()),
 * and a waking or new task of it starts from the later of own_vtime_now and that
 * (tree_group_start()), so a cgroup whose jobs are each a new task cannot start each at the
 * front. Example (tests/vm/cpu_contract.rs): `fk` forks a 2 ms job after another in two
 * chains beside `hg`'s two hogs, both at cpu.weight 100, 2 cids, four tasks of 1024 runnable:
 * W_C of fk is half of 4096, so fk's group_vtime gains 0.5 ms per ms fk runs, and each hog
 * (W_eq 1024) 1 ms per ms it runs. At the split 1 CPU : 1 CPU both move 0.5 ms per ms of the
 * clock; if fk took 1.2 CPUs its group_vtime would gain 0.6 against the hogs' 0.4, and once
 * it is ahead of own_vtime_now its next job starts there and waits while the hogs catch up.
 * With every new task at own_vtime_now fk got 62.4%; with the group place and runs priced at
 * their start, 50.0-50.1% in two boots.
 *
 * cpu.idle: a task whose cpu cgroup or an ancestor has cpu.idle 1 is queued on CANOPY_IDLE_DSQ,
 * which the root serves only when its other tasks and its children have nothing for the cid
 * (and a running one of them keeps the cid before an idle-cgroup task gets it), but for a
 * starvation guard's short slices (about one a second per waiting task, own_dispatch.bpf.h).
 * Which tasks are idle is decided at ops.runnable: one walk up the tree, skipped while no
 * cgroup is idle.
 *
 * cpu.max: a cgroup with a quota and everything below it together use at most quota per period.
 * Run time is charged at ops.stopping to every node with a quota on the task's path (one walk,
 * skipped while no cgroup has a quota). While any quota exists the root's dispatch walks its
 * queue in vtime order and takes the first task whose path has quota left, capping its slice
 * at the smallest quota left on the path; tasks of a cgroup at its quota stay queued, and a
 * timer kicks the idle cids when the period turns. Example: cpu.max "50000 100000" on a cgroup
 * with three hogs beside a busy sibling on 2 CPUs: after 50 ms of their summed run time in a
 * 100 ms period the three are passed over until the period ends; the sibling gets the rest.
 *
 * Policy groups over the knobs: a node whose cgroup a policy group owns (`group_policy` entry)
 * takes the group's weight in place of cpu.weight (no weight in the group: cpu.weight rules)
 * and its cap as a limit beside cpu.max (cap_pct of the online CPUs per 100 ms, or per
 * cpu.max's period; the tighter holds). Userspace bumps `group_policy_version` after each
 * batch of writes; a walk that passes a node whose version is stale re-reads its entry (one
 * compare per level otherwise). Example: `pw/a` (cpu.weight 100, group weight 300) beside `pw/b` (cpu.weight
 * 100, a group without weight): 300 : 100, a gets 3/4 of pw.
 *
 * Children and admitted foreign schedulers take their cgroup's place in the same tree: while a
 * child is busy (attached and not idle, as the root learns it at dispatch: it had work when
 * last offered a cid, or a cid of it still runs; it leaves only once idle for 40 ms,
 * cid_grants.bpf.h's MEMBER_TREE_IDLE_HOLD_NS), its attach cgroup's node is active exactly
 * as a cgroup with runnable tasks is: CPU_TREE_CHILD_MARK in the node's own sum, so the node
 * counts in its parent at its weight (cpu.weight, or its policy group's, on the task scale),
 * and a parent that turns active counts in its own parent, up to the root (tree_add() and
 * tree_remove(), the walks and race rules below). tree_runnable_weight and the own tasks'
 * counts are untouched: no task of the root's runs there. Every member then gets its
 * hierarchical fraction of the machine: a child its attach cgroup's (cgroup_tree_share()) of
 * what the root cgroup's own tasks leave (root_task_weight and below: they take the larger of
 * what they use and their weight share from every member, as under the fair scheduler),
 * the root's own tasks everything else the tree holds (one minus the busy children's), and a
 * task's share is taken as a fraction of that own part (own_tree_share), so W_eq means what
 * it meant with the children beside the tree. The kernel sends cpuctl_exit for the attach
 * cgroup when the child attaches; its node stays (canopy_root.bpf.c).
 *
 * Worked example (issue 10 Deliver 1): `p` (100) holding `p/c` (100, a canopy child with two
 * hogs) and `p/o` (100, two hogs of the root's), beside `q` (100, two hogs of the root's).
 * Active weights: p/o = 2048 (two tasks), p/c = CPU_TREE_CHILD_MARK, p = 1024 + 1024 = 2048
 * (c and o), q = 2048, root = 1024 + 1024 = 2048 (p and q). The child's share: 1024/2048 *
 * 1024/2048 = 0.25; member 0's: 1 - 0.25 = 0.75, split inside by the tree as before (a hog in
 * p/o has hw 0.125, in q 0.25; divided by 0.75 for W_eq: 1/6 and 1/3 of the own part). So c,
 * o and q get 25%, 25% and 50%, as under the fair scheduler. Before the child counted here,
 * member 0 weighed p and q (200 on the cgroup scale) against c's own 100: c got 33%.
 *
 * Cost of the children's part: a child turning busy or idle adds or removes its mark with one
 * walk up (at most CANOPY_MAX_CGROUP_DEPTH hash lookups and atomic adds, only where a node
 * crosses zero); every member's share is sampled every 5-15 ms (a timer) and within 1 ms
 * of such a turn, one walk per attached child (at most CANOPY_MAX_CGROUP_DEPTH lookups each;
 * a child at system.slice/x.service: 3), and the root cgroup's tasks' part (a few
 * multiply-divides, cid_grants.bpf.h root_tasks_part_sample()). ops.enqueue and ops.stopping
 * pay nothing more but a multiply-divide by own_tree_share.
 *
 * Races, stated: two CPUs crossing the same node's zero at once may add and remove its weight
 * in the parent in either order, so a parent's sum can read low or high for that instant; the
 * sums are exact again once the crossings complete (every add has its matching remove, and
 * the weight removed is the weight that was added). A weight change of a busy cgroup
 * corrects its parent's sum with one atomic add. A cgroup removed while an exiting task still
 * counts in it takes its weight out of its parent at ops.cpuctl_exit (tree_cgroup_exit()).
 *
 * W_eq moves with the runnable tree: a hog in `system.slice/a.service` (200) beside `b.service`
 * (100), two hogs each at the policy's DEFAULT weight 655 (total 2620), has hw = 1/3 and
 * W_eq 873 while nothing else runs; while a USER_INTERACTIVE task (2501) is runnable in the
 * root cgroup, system.slice (1024) shares the root with it: hw = 1024/3525 * 1/3 = 0.097,
 * total 5121, W_eq 496, so its slices cost 1.8 times more vtime then. The ratio between a
 * and b is the same at every instant. (Before the two scales were one, the root task's 2501
 * stood against system.slice's 100 and W_eq fell to 66, 13 times.) That is why
 * class_vtime.bpf.h lifts only waking tasks to its vtime floor: lifting a task that stayed
 * runnable to a floor set by a task started on the other cid at such a moment charged it
 * time it never ran (a and b split 1.51-1.61:1 for 2:1 under the daemon).
 */
#ifndef CANOPY_CPU_TREE_BPF_H
#define CANOPY_CPU_TREE_BPF_H

#include "class_vtime.bpf.h"

/* hierarchical shares are fractions of the whole machine in units of 1/CPU_TREE_ONE */
#define CPU_TREE_ONE ((u64)CANOPY_TREE_SHARE_ONE)
/*
 * What a busy child scheduler adds to its attach cgroup's own active weight: any positive
 * value makes the node active (no task of the root's is counted there while the child holds
 * it), and the node then counts in its parent at its cgroup weight as any busy cgroup does.
 */
#define CPU_TREE_CHILD_MARK CANOPY_NICE0_WEIGHT
/* the active weight of a node being deleted: far from zero, whatever still reaches it */
#define CPU_TREE_GONE (-(1LL << 60))

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CANOPY_MAX_CGROUPS);
	__type(key, u64);
	__type(value, struct canopy_cgroup_node);
} cpu_tree SEC(".maps");

/* Where a runnable task's weight is counted in the tree, so that it is taken back exactly. */
struct tree_task {
	u64 cgroup_id;	/* the cpu cgroup its weight was added to */
	u32 weight;	/* that weight; 0: not counted (not runnable here) */
	u32 idle;	/* 1: that cgroup or an ancestor had cpu.idle 1 when it became runnable */
	u32 unstarted;	/* its weight in root_task_unstarted_weight: woke, not run since */
	u32 share_weight;	/* its weight among its cgroup's own tasks (tree_share_weight()) */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tree_task);
} tree_tasks SEC(".maps");

/* @p's entry in the tree (NULL before ops.enable made it) */
static __always_inline struct tree_task *tree_task_of(struct task_struct *p)
{
	return bpf_task_storage_get(&tree_tasks, p, 0, 0);
}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} group_policy_version SEC(".maps");

/* the summed weights of every runnable own task (W_eq's scale) */
u64 tree_runnable_weight;
/* the root cgroup's id on cgroup v2 */
#define CPU_TREE_ROOT_CGROUP_ID 1
/*
 * Tasks of the root cgroup itself (kernel threads, the daemon, a shell) at the tree's top,
 * kept for the members' shares (cid_grants.bpf.h, root_tasks_part_sample()): the summed
 * weights of those runnable (root_task_weight), of those among them that woke and have not
 * run since (root_task_unstarted_weight: tree_task_runnable() adds, the first ops.running or
 * ops.quiescent takes away), and the CPU time they ran (root_task_ran_ns, added at
 * ops.stopping). Their weight still counts at the root node for their own charge
 * (tree_charge_weight_fp()); only the members' shares weigh them apart.
 *
 * Why apart: a woken task of the root cgroup waits for a cid where the fair scheduler's
 * wakeup preemption would run it at once, and while it waits it counted at the top: the busy
 * children's shares fell, member 0 gained what they lost, and its hogs, not the waiting task,
 * spent it. Measured (2026-12-06, `p` (100) holding a child on `p/c` (100) and the root's own
 * `p/o` (100), beside `q` (100), two hogs each on 2 vCPUs, shares sampled every 5-15 ms): the
 * timer found woken tasks of the root cgroup queued (the daemon's 50 ms tick, the measuring
 * tool's 100 ms one, kernel workers) in about a quarter of its samples; the top weighed
 * 2,300-2,330 on average against p's and q's 2,048, the child's share averaged 0.222-0.228
 * for 0.25, and it got 23.4-23.7% (o 25.6-25.7%).
 */
s64 root_task_weight;
s64 root_task_unstarted_weight;
u64 root_task_ran_ns;

/*
 * root_task_weight now, never below 0: the adds and subtractions of different cids are not
 * ordered, so the sum can pass below 0 for a moment.
 */
static __always_inline u64 root_task_weight_now(void)
{
	s64 weight = root_task_weight;

	return weight > 0 ? weight : 0;
}

/*
 * The root's own tasks' part of the machine (member 0's tree_share, 1/CPU_TREE_ONE units:
 * what the tree holds beside its busy children), as of the last member_shares_refresh();
 * the whole machine while no child is attached. W_eq is divided by it (tree_charge_weight_fp).
 */
u64 own_tree_share = CPU_TREE_ONE;
/* cgroups with cpu.idle 1 in the tree; while 0 no task is idle and no walk is made */
s64 nr_idle_cgroups;
/* cgroups with a cpu.max quota or a policy cap in the tree; while 0 no quota walk is made */
s64 nr_quota_cgroups;

/*
 * The id of @p's cpu cgroup: the nearest cgroup at or above its own that has the cpu
 * controller (its task group). Not inlined, as task_cgroup_id().
 */
static __noinline u64 task_cpu_cgroup_id(struct task_struct *p)
{
	return BPF_CORE_READ(p, sched_task_group, css.cgroup, kn, id);
}

static __always_inline struct canopy_cgroup_node *tree_node(u64 cgroup_id)
{
	return bpf_map_lookup_elem(&cpu_tree, &cgroup_id);
}

/* The version of `group_policy` userspace last announced (intf.h). */
static __always_inline u64 policy_version_now(void)
{
	u32 key = 0;
	u64 *version = bpf_map_lookup_elem(&group_policy_version, &key);

	return version ? *version : 0;
}

/*
 * A cgroup's limit changed (cpu.max, or its group's cap): the period starts over and the
 * count of limited cgroups follows. A cap alone is measured per CANOPY_PERIOD_NS.
 */
static __always_inline void tree_node_limits_changed(struct canopy_cgroup_node *node)
{
	u32 limited = node->quota_ns || node->cap_pct;

	if (!node->quota_ns)
		node->period_ns = node->cap_pct ? CANOPY_PERIOD_NS : 0;
	node->period_start_ns = scx_bpf_now();
	node->period_used_ns = 0;
	if (limited != node->limited) {
		node->limited = limited;
		__sync_fetch_and_add(&nr_quota_cgroups, limited ? 1 : -1);
	}
}

/*
 * A cgroup weight (cpu.weight or a policy group's, 1..10000, 100 by default) on the task
 * scale the tree sums in: w * 1024 / 100, rounded, as the fair scheduler converts cpu.weight
 * for its group entities. Examples: 100 -> 1024 (a nice-0 task), 1 -> 10, 10000 -> 102400.
 */
static __always_inline u32 cgroup_weight_on_task_scale(u32 weight)
{
	u64 w = ((u64)(weight ?: CANOPY_DEFAULT_WEIGHT) * CANOPY_NICE0_WEIGHT +
		 CANOPY_DEFAULT_WEIGHT / 2) / CANOPY_DEFAULT_WEIGHT;

	return w ?: 1;
}

/*
 * @node's weight in its parent is now @weight (the cgroup scale); a busy node corrects its
 * parent's sum at once.
 */
static __always_inline void tree_node_reweight(struct canopy_cgroup_node *node, u32 weight)
{
	struct canopy_cgroup_node *parent;
	u32 before, scaled = cgroup_weight_on_task_scale(weight);

	node->weight = weight;
	if (node->active_weight <= 0 || !node->parent_id)
		return;
	parent = tree_node(node->parent_id);
	if (!parent)
		return;
	before = __sync_lock_test_and_set(&node->weight_in_parent, scaled);
	__sync_fetch_and_add(&parent->active_weight, (s64)scaled - (s64)before);
}

/*
 * Take @node's weight and cap from its policy group (the `group_policy` entry of @cgroup_id)
 * as of @version: a group's weight replaces cpu.weight, a group without one leaves cpu.weight
 * in force; a cap holds beside cpu.max.
 */
static __always_inline void tree_node_take_policy(u64 cgroup_id, struct canopy_cgroup_node *node,
						  u64 version)
{
	struct canopy_group_policy *group;
	u32 weight, cap;

	node->policy_version = version;
	group = bpf_map_lookup_elem(&group_policy, &cgroup_id);
	weight = (group && group->weight) ? group->weight : node->cpu_weight;
	cap = (group && group->cap_pct < 100) ? group->cap_pct : 0;
	if (cap != node->cap_pct) {
		node->cap_pct = cap;
		tree_node_limits_changed(node);
	}
	if (weight && weight != node->weight)
		tree_node_reweight(node, weight);
}

/* tree_node_take_policy() when userspace rewrote `group_policy` since @node last read it. */
static __always_inline void tree_node_follow_policy(u64 cgroup_id, struct canopy_cgroup_node *node,
						    u64 version)
{
	if (node->policy_version != version)
		tree_node_take_policy(cgroup_id, node, version);
}

/* @cgroup_id's node with its policy group's terms as of @version (NULL: not in the tree). */
static __always_inline struct canopy_cgroup_node *tree_node_current(u64 cgroup_id, u64 version)
{
	struct canopy_cgroup_node *node = tree_node(cgroup_id);

	if (node)
		tree_node_follow_policy(cgroup_id, node, version);
	return node;
}

/* Add @weight to @cgroup_id's active weight and, where a node turns active, to its parents'. */
static __always_inline void tree_add(u64 cgroup_id, u32 weight)
{
	struct canopy_cgroup_node *node;
	u64 version = policy_version_now();
	s64 before;
	int depth;

	canopy_for(depth, 0, CANOPY_MAX_CGROUP_DEPTH) {
		node = tree_node_current(cgroup_id, version);
		if (!node)
			break;
		before = __sync_fetch_and_add(&node->active_weight, (s64)weight);
		if (before != 0 || !node->parent_id)
			break;
		weight = cgroup_weight_on_task_scale(node->weight);
		node->weight_in_parent = weight;
		cgroup_id = node->parent_id;
	}
}

/* Take back what tree_add(@cgroup_id, @weight) added. */
static __always_inline void tree_remove(u64 cgroup_id, u32 weight)
{
	struct canopy_cgroup_node *node;
	s64 before;
	int depth;

	canopy_for(depth, 0, CANOPY_MAX_CGROUP_DEPTH) {
		node = tree_node(cgroup_id);
		if (!node)
			break;
		before = __sync_fetch_and_add(&node->active_weight, -(s64)weight);
		if (before != (s64)weight || !node->parent_id)
			break;
		weight = node->weight_in_parent;
		cgroup_id = node->parent_id;
	}
}

/* @cgroup_id or one of its ancestors has cpu.idle 1. */
static __always_inline bool cgroup_path_idle(u64 cgroup_id)
{
	struct canopy_cgroup_node *node;
	int depth;

	canopy_for(depth, 0, CANOPY_MAX_CGROUP_DEPTH) {
		node = tree_node(cgroup_id);
		if (!node)
			break;
		if (node->idle)
			return true;
		if (!node->parent_id)
			break;
		cgroup_id = node->parent_id;
	}
	return false;
}

/* @p runs only when nothing else wants the CPU (cpu.idle), as of its last ops.runnable. */
static __always_inline bool task_in_idle_cgroup(struct task_struct *p)
{
	struct tree_task *tt = tree_task_of(p);

	return tt && tt->idle;
}

/* how many times a task that keeps running is halved among its cgroup's own tasks */
#ifndef CANOPY_SHARE_HALVINGS
#define CANOPY_SHARE_HALVINGS 2
#endif

/*
 * A task's weight among its cgroup's own tasks, from its class-and-nice @weight: halved for
 * each whole class slice it has run since it last slept (task_ctx.ran_since_sleep_ns), at
 * most CANOPY_SHARE_HALVINGS times. The cgroup's own tasks keep their part of the tree
 * together (own_weight counts full weights); only how they divide it follows this, so a task
 * that runs briefly and sleeps or exits gets more of its cgroup's part than a hog beside it,
 * and no other cgroup gets more or less. Example (the frame benchmark's background,
 * 2026-12-06): two BACKGROUND hogs (423 each, 20 ms slices) and a build's two chains of short
 * processes in one cgroup, on 2 vCPUs. After 40 ms the hogs divide at 105 each against the
 * jobs' 423: the build gets about 4/5 of the cgroup's CPU (82% measured; one halving gave
 * 70%, three 89%), not the half equal weights give it, and the cgroup as a whole what its
 * cpu.weight gives it. A hog's share weight falls at the stops that end its first and second
 * whole slices and comes back when it sleeps (it is counted afresh at its wakeup).
 */
static __always_inline u32 tree_share_weight(const struct task_ctx *tctx, u32 weight)
{
	u64 slice, halvings;

	if (!tctx || !tctx->ran_since_sleep_ns || tctx->class >= CANOPY_MAX_CLASSES)
		return weight;
	slice = class_slice(class_of(tctx->class));
	halvings = tctx->ran_since_sleep_ns / slice;
	if (halvings > CANOPY_SHARE_HALVINGS)
		halvings = CANOPY_SHARE_HALVINGS;
	return (weight >> halvings) ?: 1;
}

/*
 * Add @weight and @share_weight to @cgroup_id's own tasks (a lookup and an atomic add for
 * each that is not 0).
 */
static __always_inline void tree_own_add(u64 cgroup_id, s64 weight, s64 share_weight)
{
	struct canopy_cgroup_node *node = tree_node(cgroup_id);

	if (!node)
		return;
	if (weight)
		__sync_fetch_and_add(&node->own_weight, weight);
	__sync_fetch_and_add(&node->own_share_weight, share_weight);
}

/* @tt's task ran, or stopped counting: it no longer waits for its first run at the top. */
static __always_inline void tree_task_started(struct tree_task *tt)
{
	u32 weight = tt->unstarted;

	if (!weight)
		return;
	tt->unstarted = 0;
	__sync_fetch_and_add(&root_task_unstarted_weight, -(s64)weight);
}

/* @p stops counting in the tree (it slept, left the scheduler, or is being re-counted). */
static __always_inline void tree_task_quiescent(struct task_struct *p)
{
	struct tree_task *tt = tree_task_of(p);
	u32 weight;

	if (!tt)
		return;
	tree_task_started(tt);
	if (!tt->weight)
		return;
	weight = tt->weight;
	tt->weight = 0;
	if (tt->cgroup_id == CPU_TREE_ROOT_CGROUP_ID)
		__sync_fetch_and_add(&root_task_weight, -(s64)weight);
	__sync_fetch_and_add(&tree_runnable_weight, -(u64)weight);
	tree_own_add(tt->cgroup_id, -(s64)weight, -(s64)tt->share_weight);
	tt->share_weight = 0;
	tree_remove(tt->cgroup_id, weight);
}

/*
 * @p became runnable (@woke: it was not runnable before, so it has not run since): count it
 * at its class-and-nice weight in its cpu cgroup.
 */
static __always_inline void tree_task_runnable(struct task_struct *p, bool woke)
{
	struct tree_task *tt = tree_task_of(p);
	struct task_ctx *tctx = task_ctx_of(p);
	u32 weight = (tctx && tctx->weight) ? tctx->weight : CANOPY_NICE0_WEIGHT;

	if (!tt)
		return;
	if (tt->weight)
		tree_task_quiescent(p);
	tt->cgroup_id = task_cpu_cgroup_id(p);
	tt->weight = weight;
	tt->share_weight = tree_share_weight(tctx, weight);
	tt->idle = nr_idle_cgroups > 0 && cgroup_path_idle(tt->cgroup_id);
	__sync_fetch_and_add(&tree_runnable_weight, weight);
	tree_own_add(tt->cgroup_id, weight, tt->share_weight);
	tree_add(tt->cgroup_id, weight);
	if (tt->cgroup_id != CPU_TREE_ROOT_CGROUP_ID)
		return;
	__sync_fetch_and_add(&root_task_weight, (s64)weight);
	if (woke) {
		tt->unstarted = weight;
		__sync_fetch_and_add(&root_task_unstarted_weight, (s64)weight);
	}
}

/*
 * A task counted as @tt runs (ops.running): it counts at the top for the members' shares
 * from now on. A compare of one global while no woken task of the root cgroup waits for
 * its first run.
 */
static __always_inline void tree_task_running(struct tree_task *tt)
{
	if (root_task_unstarted_weight > 0 && tt)
		tree_task_started(tt);
}

/*
 * @p stops after running @ran_ns (ops.stopping). A task of the root cgroup adds that to
 * root_task_ran_ns (one atomic add). And if it stayed runnable while its class-and-nice
 * weight changed (a re-tag, a reload that moved the policy's default class, a clamp after a
 * move), it is counted at the weight it was just decided with, so that W_eq follows the
 * class. Without this a task that never sleeps kept the weight it had when it last became
 * runnable: a busy untagged hog stayed at DEFAULT's 100 after a reload made the default BULK
 * (60 against 655). A compare per stop (the caller looked @tt up); the re-count (a remove
 * and an add) only when the weight differs.
 */
static __always_inline void tree_task_stopping(struct task_struct *p, struct tree_task *tt,
					       struct task_ctx *tctx, u64 ran_ns)
{
	if (!tt || !tt->weight)
		return;
	if (ran_ns && tt->cgroup_id == CPU_TREE_ROOT_CGROUP_ID)
		__sync_fetch_and_add(&root_task_ran_ns, ran_ns);
	if (!tctx || !tctx->weight || tctx->weight == tt->weight)
		return;
	tree_task_runnable(p, false);
}

/*
 * After ops.stopping charged @tctx's run: a task that stays runnable divides its cgroup's part
 * at tree_share_weight() of its weight from now on (one lookup and an atomic add when it
 * changes, at most twice per hog until it sleeps).
 */
static __always_inline void tree_task_share_follow(struct tree_task *tt, const struct task_ctx *tctx)
{
	u32 share;

	if (!tt || !tt->weight)
		return;
	share = tree_share_weight(tctx, tt->weight);
	if (share == tt->share_weight)
		return;
	tree_own_add(tt->cgroup_id, 0, (s64)share - (s64)tt->share_weight);
	tt->share_weight = share;
}

/* @numerator / @denominator of a non-negative sum that may read low for an instant (races). */
static __always_inline u64 share_of(u64 value, u32 numerator, s64 denominator)
{
	u64 d = denominator > (s64)numerator ? (u64)denominator : numerator;

	return d ? value * numerator / d : value;
}

/*
 * @share (a fraction of @node's active weight, 1/CPU_TREE_ONE units) as a fraction of the
 * machine: multiplied by each level's weight over its parent's active weight, up to the root,
 * whose active weight counts without @root_weight_left_out (the members' shares leave the
 * root cgroup's tasks out: cgroup_tree_share()). At most CANOPY_MAX_CGROUP_DEPTH hash lookups.
 */
static __always_inline u64 share_up_the_tree(struct canopy_cgroup_node *node, u64 share,
					     u64 version, s64 root_weight_left_out)
{
	u32 weight;
	int depth;

	canopy_for(depth, 0, CANOPY_MAX_CGROUP_DEPTH) {
		if (!node || !node->parent_id)
			break;
		weight = cgroup_weight_on_task_scale(node->weight);
		node = tree_node_current(node->parent_id, version);
		if (!node)
			break;
		share = share_of(share, weight,
				 node->active_weight - (node->parent_id ? 0 : root_weight_left_out));
	}
	return share;
}

/*
 * The fraction of @node's active weight, in units of @one, that the task counted as @tt gets:
 * its cgroup's own tasks' part (own_weight over active_weight), divided among them by share
 * weight (tree_share_weight()).
 */
static __always_inline u64 own_task_fraction(const struct tree_task *tt,
					     const struct canopy_cgroup_node *node, u64 one)
{
	s64 own = node->own_weight, active = node->active_weight, shares = node->own_share_weight;
	u64 part = one;

	/* sums that read low for an instant (races): the task alone */
	if (own < (s64)tt->weight)
		own = tt->weight;
	if (active > own)
		part = one * (u64)own / (u64)active;
	if (shares < (s64)tt->share_weight)
		shares = tt->share_weight;
	return shares > 0 ? part * tt->share_weight / (u64)shares : part;
}

/*
 * The weight (in 1/1024 units) to charge a run of the task counted as @tt in @node (its
 * cgroup's node, current as of @version) at: W_eq from the top of this file, or 0 (charge at
 * its class weight) when it is not counted in the tree.
 */
static __always_inline u64 tree_weight_fp_in(const struct tree_task *tt,
					     struct canopy_cgroup_node *node, u64 version)
{
	u64 share, total = tree_runnable_weight;

	if (!tt || !tt->weight || !node)
		return 0;
	share = share_up_the_tree(node, own_task_fraction(tt, node, CPU_TREE_ONE), version, 0);
	/* a fraction of the own tasks' part, not of the machine (busy children hold the rest) */
	if (own_tree_share && own_tree_share < CPU_TREE_ONE)
		share = share * CPU_TREE_ONE / own_tree_share;
	if (total < tt->weight)
		total = tt->weight;
	share = share * total >> 10;
	return share ?: 1;
}

/* tree_weight_fp_in() for the task counted as @tt, its node looked up here */
static __always_inline u64 tree_charge_weight_fp(const struct tree_task *tt)
{
	u64 version = policy_version_now();

	if (!tt || !tt->weight)
		return 0;
	return tree_weight_fp_in(tt, tree_node_current(tt->cgroup_id, version), version);
}

/*
 * Price the run the task counted as @tt starts now (ops.running): W_eq and its weight's
 * fraction of its cgroup's own runnable tasks, both as the tree stands at the start, kept in
 * @tctx for its stop. At the start, not the stop: a task's stop is when the tasks its own run
 * woke are runnable (a job's parent, woken by its exit; the reader a pipe writer fed), so the
 * total weight at its stops read high by its own doing and every run it made was charged less
 * than it took. Measured (2026-12-06, a cgroup forking 2 ms jobs in two chains beside a cgroup
 * of two hogs at equal cpu.weight, 2 vCPUs): priced at the stop, the forking cgroup got
 * 52.9-54.0% for its 50%. One hash lookup of the node and the walk up its ancestors.
 */
static __always_inline void tree_price_run(const struct tree_task *tt, struct task_ctx *tctx)
{
	struct canopy_cgroup_node *node;
	u64 version;
	s64 shares;

	if (!tctx)
		return;
	tctx->run_weight_fp = 0;
	tctx->run_group_fp = 0;
	if (!tt || !tt->weight)
		return;
	version = policy_version_now();
	node = tree_node_current(tt->cgroup_id, version);
	if (!node)
		return;
	tctx->run_weight_fp = tree_weight_fp_in(tt, node, version);
	shares = node->own_share_weight;
	tctx->run_group_fp = share_of(1 << 10, tt->share_weight, shares);
}

/*
 * A cgroup's own tasks as one entity (group_vtime): every run of one of them advances it by
 * the vtime the task was charged times the task's weight over the weight of the cgroup's
 * runnable own tasks (active_weight; the root cgroup's: root_task_weight) as the run started,
 * which is the run time priced at the cgroup's W_eq, t * 1024 / W_C, however many tasks share
 * it. So it moves on the vtime clock at the pace of the cgroup's part, as its tasks' vtimes do
 * when it gets its share, and runs ahead of own_vtime_now when it gets more. One hash lookup
 * and one atomic add per ops.stopping. (A cgroup holding both tasks and busy child cgroups,
 * which cgroup v2 allows only at the root and in threaded subtrees, counts its children's
 * weight in the divisor: its group_vtime then moves slower than its part.)
 */
static __always_inline void tree_group_charge(const struct tree_task *tt, u64 charged_vtime,
					      u64 group_fp)
{
	struct canopy_cgroup_node *node;

	if (!tt || !tt->weight || !charged_vtime || !group_fp)
		return;
	node = tree_node(tt->cgroup_id);
	if (node)
		__sync_fetch_and_add(&node->group_vtime, charged_vtime * group_fp >> 10);
}

/*
 * Where a waking or new task counted as @tt starts from: the later of own_vtime_now and its
 * cgroup's group_vtime, which is first lifted to at least own_vtime_now - @lag (a cgroup
 * banks at most one turn of credit while it sleeps or takes less than its part) and read at
 * most CANOPY_MAX_VTIME_AHEAD ahead. A task of a cgroup that took more than its part starts
 * behind what its cgroup already ran, so a cgroup that forks a new task for every short job
 * cannot turn each new task's start into CPU beyond its cpu.weight; own_vtime_now alone
 * (before 2026-12-06) let each new task start at the front whatever its cgroup had used.
 */
static __always_inline u64 tree_group_start(const struct tree_task *tt, u64 lag)
{
	u64 now_v = own_vtime_now, low = now_v > lag ? now_v - lag : 0, group;
	struct canopy_cgroup_node *node;

	if (!tt || !tt->weight)
		return now_v;
	node = tree_node(tt->cgroup_id);
	if (!node)
		return now_v;
	group = node->group_vtime;
	if ((s64)(group - low) < 0) {
		node->group_vtime = low;
		group = low;
	}
	if ((s64)(group - (now_v + CANOPY_MAX_VTIME_AHEAD)) > 0)
		group = now_v + CANOPY_MAX_VTIME_AHEAD;
	return (s64)(group - now_v) > 0 ? group : now_v;
}

/*
 * @cgroup_id's hierarchical share of what the cgroups get beside the root cgroup's own tasks,
 * 1/CPU_TREE_ONE units: the product of its weight's fraction of its parent's active weight
 * and so on up to the root (what a task's walk in tree_charge_weight_fp() multiplies, from the
 * cgroup up), the root's active weight counted without the root cgroup's tasks
 * (root_task_weight; their part is root_tasks_part_sample()'s). A busy child scheduler's
 * member is charged at its attach cgroup's share (cid_grants.bpf.h). At most
 * CANOPY_MAX_CGROUP_DEPTH hash lookups; a global function, verified once (its callers loop
 * over the members).
 */
__noinline u64 cgroup_tree_share(u64 cgroup_id)
{
	struct canopy_cgroup_node *node;
	u64 version = policy_version_now();

	node = tree_node_current(cgroup_id, version);
	if (!node)
		return 0;
	return share_up_the_tree(node, CPU_TREE_ONE, version, root_task_weight_now());
}

/*
 * The CPU time @node and its descendants may use per period: the tighter of its cpu.max quota
 * and its group's cap (cap_pct of all online CPUs over the period). 0: no limit. Example: a
 * 25% cap on 2 CPUs with no cpu.max allows 50 ms per 100 ms period; with cpu.max
 * "30000 100000" as well, 30 ms.
 */
static __always_inline u64 node_quota_ns(const struct canopy_cgroup_node *node)
{
	u64 quota = node->quota_ns, cap;

	if (!node->cap_pct)
		return quota;
	cap = node->period_ns * (scx_bpf_nr_online_cids() ?: 1) / 100 * node->cap_pct;
	return (!quota || cap < quota) ? cap : quota;
}

/*
 * Start @node's next limit period once the current one is over; overuse carries over as debt
 * the next periods repay, as the fair scheduler's bandwidth control repays a cfs_rq's negative
 * runtime (at most CANOPY_QUOTA_MAX_DEBT_PERIODS quotas, so an emulator's stall cannot throttle
 * a cgroup for long). A slice ends only at a tick, and a vCPU the host does not run for 40 ms
 * charges its task 40 ms at once: forgiving what is over one quota let a cgroup at
 * cpu.max "50000 100000" use 0.52-0.59 CPU on a host loaded 5x over its cores (2026-12-03),
 * where the fair scheduler in the same boot kept it at 0.50.
 * Every CPU charges and rolls the same node, so both steps are atomic: the CPU
 * whose compare-and-swap moves the period's start does the roll, and the forgiveness is a
 * compare-and-swap loop on the used time, never a plain write that would drop another CPU's
 * charge made in between. A @now older than the start (another CPU rolled with a later clock
 * reading) is inside the current period. Example: quota 50 ms per 100 ms, 62 ms used when CPU 0
 * rolls while CPU 1 charges 5 ms: the 12 ms over and the 5 ms both stay, 17 ms used of the new
 * period; with plain writes either the 5 ms was lost or the 50 ms was forgiven twice.
 */
static __always_inline void quota_roll(struct canopy_cgroup_node *node, u64 quota, u64 now)
{
	u64 start = node->period_start_ns, period = node->period_ns, periods, forgiven, used, kept;
	s64 elapsed = (s64)(now - start);
	int attempt;

	if (!period || elapsed < (s64)period)
		return;
	periods = (u64)elapsed / period;
	if (__sync_val_compare_and_swap(&node->period_start_ns, start, start + periods * period) !=
	    start)
		return;
	forgiven = quota * periods;
	/* bounded: a CPU that keeps losing the race leaves the time charged (errs towards the cap) */
	canopy_for(attempt, 0, 8) {
		used = node->period_used_ns;
		kept = used > forgiven ? used - forgiven : 0;
		if (kept > quota * CANOPY_QUOTA_MAX_DEBT_PERIODS)
			kept = quota * CANOPY_QUOTA_MAX_DEBT_PERIODS;
		if (__sync_val_compare_and_swap(&node->period_used_ns, used, kept) == used)
			break;
	}
}

/*
 * The least cpu.max quota left in this period on the path from @cgroup_id up (0: throttled),
 * and in @period_end_ns the end of the period of the node that decides it. (u64)-1 when no
 * node on the path has a quota.
 */
static __always_inline u64 quota_left(u64 cgroup_id, u64 now, u64 *period_end_ns)
{
	struct canopy_cgroup_node *node;
	u64 least = (u64)-1, left, quota, version = policy_version_now();
	int depth;

	canopy_for(depth, 0, CANOPY_MAX_CGROUP_DEPTH) {
		node = tree_node_current(cgroup_id, version);
		if (!node)
			break;
		quota = node_quota_ns(node);
		if (quota) {
			quota_roll(node, quota, now);
			left = node->period_used_ns < quota ? quota - node->period_used_ns : 0;
			if (left < least) {
				least = left;
				*period_end_ns = node->period_start_ns + node->period_ns;
			}
		}
		if (!node->parent_id)
			break;
		cgroup_id = node->parent_id;
	}
	return least;
}

/* Charge @used ns of run time to every node with a quota on the path from @cgroup_id up. */
static __always_inline void quota_charge(u64 cgroup_id, u64 used, u64 now)
{
	struct canopy_cgroup_node *node;
	u64 quota;
	int depth;

	canopy_for(depth, 0, CANOPY_MAX_CGROUP_DEPTH) {
		node = tree_node(cgroup_id);
		if (!node)
			break;
		quota = node_quota_ns(node);
		if (quota) {
			quota_roll(node, quota, now);
			if (node->period_used_ns < quota && node->period_used_ns + used >= quota)
				node->nr_throttled++;
			__sync_fetch_and_add(&node->period_used_ns, used);
		}
		if (!node->parent_id)
			break;
		cgroup_id = node->parent_id;
	}
}

/* ops.cpuctl_set_bandwidth (and init, exit): @node's cpu.max is now @quota_us per @period_us. */
static __always_inline void tree_node_set_quota(struct canopy_cgroup_node *node, u64 period_us,
						u64 quota_us)
{
	/* "max" comes as a huge quota; anything above an hour per period is no limit either */
	u64 quota_ns = (quota_us && quota_us < 3600000000ULL && period_us) ? quota_us * 1000 : 0;

	node->quota_ns = quota_ns;
	node->period_ns = quota_ns ? period_us * 1000 : 0;
	tree_node_limits_changed(node);
}

/* ops.cpuctl_set_idle (and init, exit): @node's cpu.idle is now @idle. */
static __always_inline void tree_node_set_idle(struct canopy_cgroup_node *node, bool idle)
{
	u32 before = __sync_lock_test_and_set(&node->idle, idle ? 1 : 0);

	if (before != (idle ? 1 : 0))
		__sync_fetch_and_add(&nr_idle_cgroups, idle ? 1 : -1);
}

/* ops.cpuctl_init: a cgroup with the cpu controller joins the tree (or is re-initialised). */
static __always_inline void tree_cgroup_init(struct cgroup *cgrp, u32 weight, bool idle,
					     u64 period_us, u64 quota_us)
{
	struct cgroup_subsys_state *parent_css = BPF_CORE_READ(cgrp, self.parent);
	struct canopy_cgroup_node fresh = {}, *node;
	u64 cgroup_id = BPF_CORE_READ(cgrp, kn, id);

	if (parent_css) {
		struct cgroup *parent = container_of(parent_css, struct cgroup, self);

		fresh.parent_id = BPF_CORE_READ(parent, kn, id);
	}
	fresh.cpu_weight = weight ?: CANOPY_DEFAULT_WEIGHT;
	fresh.weight = fresh.cpu_weight;
	node = tree_node(cgroup_id);
	if (!node) {
		bpf_map_update_elem(&cpu_tree, &cgroup_id, &fresh, BPF_NOEXIST);
		node = tree_node(cgroup_id);
		if (!node) {
			stat_inc(CANOPY_STAT_CPU_TREE_FULL);
			return;
		}
	}
	node->parent_id = fresh.parent_id;
	node->cpu_weight = fresh.cpu_weight;
	tree_node_set_idle(node, idle);
	tree_node_set_quota(node, period_us, quota_us);
	/* its group's terms, if the policy already names it (the root loaded after the policy) */
	tree_node_take_policy(cgroup_id, node, policy_version_now());
}

/*
 * ops.cpuctl_exit: the cgroup leaves the tree. A task can still count in it: an exiting task
 * leaves its cgroup (cgroup_exit) before its last schedule, so `cpu-split` killing a hog and
 * removing its cgroup at once can take the cgroup offline while the hog is still runnable.
 * The task's later tree_remove() finds no node and stops there, so the node's weight would
 * stay in its parent for good (a phantom active child: 100 more in the root's sum after each
 * such exit, every share below the root smaller). So its weight leaves the parent here, and
 * the node's sum is parked at CPU_TREE_GONE first, so an add or remove that still reaches it
 * before the delete crosses no zero and changes nothing above it.
 */
static __always_inline void tree_cgroup_exit(u64 cgroup_id)
{
	struct canopy_cgroup_node *node = tree_node(cgroup_id);
	s64 before;

	if (!node)
		return;
	tree_node_set_idle(node, false);
	node->cap_pct = 0;
	tree_node_set_quota(node, 0, 0);
	before = __sync_lock_test_and_set(&node->active_weight, CPU_TREE_GONE);
	if (before > 0 && node->parent_id)
		tree_remove(node->parent_id, node->weight_in_parent);
	bpf_map_delete_elem(&cpu_tree, &cgroup_id);
}

/*
 * ops.cpuctl_set_weight: a new cpu.weight. It is the cgroup's weight in its parent unless its
 * policy group sets one; a busy cgroup corrects its parent's sum at once.
 */
static __always_inline void tree_cgroup_set_weight(u64 cgroup_id, u32 weight)
{
	struct canopy_cgroup_node *node = tree_node(cgroup_id);
	struct canopy_group_policy *group = bpf_map_lookup_elem(&group_policy, &cgroup_id);

	if (!node)
		return;
	node->cpu_weight = weight ?: 1;
	if (!group || !group->weight)
		tree_node_reweight(node, node->cpu_weight);
}

#endif /* CANOPY_CPU_TREE_BPF_H */
