/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * canopy.bpf.h: canopy's own helper header for its cid-form sched_ext
 * schedulers. It owns the kfunc prototypes we call (bpftool 7.1 does not put
 * them in vmlinux.h), the arena map and cmask helpers, the kernel constants
 * read from rodata, the stats counter, error reporting and exit recording.
 * Both schedulers include it; nothing in here is policy.
 */
#ifndef CANOPY_BPF_H
#define CANOPY_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "intf.h"

#define __arena __attribute__((address_space(1)))

#ifndef EINVAL
#define EPERM 1
#define ENOENT 2
#define ENOMEM 12
#define EACCES 13
#define EBUSY 16
#define EEXIST 17
#define EINVAL 22
#define ENOSPC 28
#endif

/* ---- kfuncs (signatures as the BPF side sees them: implicit aux args omitted) ---- */
s32 scx_bpf_create_dsq(u64 dsq_id, s32 node) __ksym;
bool scx_bpf_dsq_insert___v2___canopy(struct task_struct *p, u64 dsq_id, u64 slice, u64 enq_flags) __ksym;
bool __scx_bpf_dsq_insert_vtime(struct task_struct *p, struct scx_bpf_dsq_insert_vtime_args *args) __ksym;
bool scx_bpf_dsq_move_to_local___v2___canopy(u64 dsq_id, u64 enq_flags) __ksym;
int bpf_iter_scx_dsq_new(struct bpf_iter_scx_dsq *it, u64 dsq_id, u64 flags) __ksym __weak;
struct task_struct *bpf_iter_scx_dsq_next(struct bpf_iter_scx_dsq *it) __ksym __weak;
void bpf_iter_scx_dsq_destroy(struct bpf_iter_scx_dsq *it) __ksym __weak;
bool scx_bpf_dsq_move(struct bpf_iter_scx_dsq *it__iter, struct task_struct *p, u64 dsq_id,
		      u64 enq_flags) __ksym;
void scx_bpf_dsq_move_set_slice(struct bpf_iter_scx_dsq *it__iter, u64 slice) __ksym;
s32 scx_bpf_dsq_nr_queued(u64 dsq_id) __ksym;
void scx_bpf_kick_cid(s32 cid, u64 flags) __ksym;
s32 scx_bpf_task_cid(const struct task_struct *p) __ksym;
s32 scx_bpf_cid_to_cpu(s32 cid) __ksym;
u32 scx_bpf_nr_cids(void) __ksym;
u32 scx_bpf_nr_online_cids(void) __ksym;
u64 scx_bpf_now(void) __ksym;
struct rq *scx_bpf_locked_rq(void) __ksym;
bool scx_bpf_task_running(const struct task_struct *p) __ksym;
bool scx_bpf_task_set_dsq_vtime(struct task_struct *p, u64 vtime) __ksym;
bool scx_bpf_task_set_slice(struct task_struct *p, u64 slice) __ksym;
void scx_bpf_error_bstr(char *fmt, unsigned long long *data, u32 data_len) __ksym;
void scx_bpf_dump_bstr(char *fmt, unsigned long long *data, u32 data_len) __ksym;
void scx_bpf_exit_bstr(s64 exit_code, char *fmt, unsigned long long *data, u32 data_len) __ksym;
bool scx_bpf_sub_dispatch(u64 cgroup_id) __ksym;
s32 scx_bpf_sub_grant(u64 cgroup_id, u64 caps, const struct scx_cmask __arena *cmask__arena,
		      struct scx_cmask __arena *denied_out__arena__nullable) __ksym;
void scx_bpf_sub_revoke(u64 cgroup_id, u64 caps, const struct scx_cmask __arena *cmask__arena) __ksym;
s32 scx_bpf_sub_caps(u64 cgroup_id, u64 caps, struct scx_cmask __arena *out__arena) __ksym;
struct cgroup *bpf_cgroup_from_id(u64 cgid) __ksym;
void bpf_cgroup_release(struct cgroup *cgrp) __ksym;
bool bpf_cpumask_test_cpu(u32 cpu, const struct cpumask *cpumask) __ksym;

/*
 * Open-coded numeric iterator loop: `canopy_for(i, 0, n)` runs i = 0..n-1. The verifier checks
 * the body once per distinct state instead of unrolling every iteration, which keeps loops
 * over members and cids inside the complexity limit. `i` is an unknown scalar in the body:
 * bound-check it before indexing arrays.
 */
int bpf_iter_num_new(struct bpf_iter_num *it, int start, int end) __ksym;
int *bpf_iter_num_next(struct bpf_iter_num *it) __ksym;
void bpf_iter_num_destroy(struct bpf_iter_num *it) __ksym;

#define canopy_for(i, start, end)							\
	for (struct bpf_iter_num ___it __attribute__((aligned(8),			\
						      cleanup(bpf_iter_num_destroy))),	\
	     *___unused __attribute__((unused)) =					\
		(bpf_iter_num_new(&___it, (start), (end)), (void *)0);			\
	     ({ int *___cur = bpf_iter_num_next(&___it); ___cur ? ((i) = *___cur, 1) : 0; });)

/* ---- kernel constants, resolved by the loader from the running kernel's BTF ---- */
const volatile u64 canopy_kconst[CANOPY_NR_KCONSTS];
#define KCONST(name) (canopy_kconst[CANOPY_K_##name])

/* ---- the arena every cid-form scheduler must own (the kernel allocates in it too) ---- */
struct {
	__uint(type, BPF_MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 64);	/* pages */
} arena SEC(".maps");

/* A cmask with room for CANOPY_MAX_CIDS; layout-compatible with struct scx_cmask. */
#define CANOPY_CMASK_WORDS (CANOPY_MAX_CIDS / 64 + 1)
struct canopy_cmask {
	u32 base;
	u32 nr_cids;
	u32 alloc_words;
	u32 pad;
	u64 bits[CANOPY_CMASK_WORDS];
};

static __always_inline void cmask_reset(struct canopy_cmask __arena *m, u32 nr_cids)
{
	u32 i;

	m->base = 0;
	m->nr_cids = nr_cids < CANOPY_MAX_CIDS ? nr_cids : CANOPY_MAX_CIDS;
	m->alloc_words = CANOPY_CMASK_WORDS;
	for (i = 0; i < CANOPY_CMASK_WORDS; i++)
		m->bits[i] = 0;
}

static __always_inline void cmask_set(struct canopy_cmask __arena *m, u32 cid)
{
	if (cid < CANOPY_MAX_CIDS)
		m->bits[(cid / 64) & (CANOPY_CMASK_WORDS - 1)] |= 1ULL << (cid & 63);
}

static __always_inline bool cmask_test(struct canopy_cmask __arena *m, u32 cid)
{
	if (cid >= CANOPY_MAX_CIDS)
		return false;
	return m->bits[(cid / 64) & (CANOPY_CMASK_WORDS - 1)] & (1ULL << (cid & 63));
}

#define AS_SCX_CMASK(m) ((struct scx_cmask __arena *)(m))

/* ---- errors and exit info ---- */
/* Calls a kfunc taking (fmt, u64 params[], size) with printf-style arguments. */
#define canopy_bstr_call(func, fmt, args...)					\
({										\
	static char ___fmt[] = fmt;						\
	unsigned long long ___param[___bpf_narg(args)];				\
	_Pragma("GCC diagnostic push")						\
	_Pragma("GCC diagnostic ignored \"-Wint-conversion\"")			\
	___bpf_fill(___param, args);						\
	_Pragma("GCC diagnostic pop")						\
	func(___fmt, ___param, sizeof(___param));				\
})

#define canopy_error(fmt, args...) canopy_bstr_call(scx_bpf_error_bstr, fmt, ##args)
#define canopy_dump(fmt, args...) canopy_bstr_call(scx_bpf_dump_bstr, fmt, ##args)

/* Filled by ops.exit; userspace polls `kind` (0 while running). */
struct canopy_exit_info exit_info SEC(".data.exit_info");

static __always_inline void canopy_record_exit(struct scx_exit_info *ei)
{
	bpf_probe_read_kernel_str(exit_info.reason, sizeof(exit_info.reason), ei->reason);
	bpf_probe_read_kernel_str(exit_info.msg, sizeof(exit_info.msg), ei->msg);
	bpf_probe_read_kernel_str(exit_info.dump, sizeof(exit_info.dump), ei->dump);
	exit_info.exit_cpu = ei->exit_cpu;
	exit_info.exit_code = ei->exit_code;
	/* kind last: it is what userspace polls */
	__sync_lock_test_and_set(&exit_info.kind, ei->kind);
}

/* ---- stats ---- */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CANOPY_NR_STATS);
	__type(key, u32);
	__type(value, u64);
} stats SEC(".maps");

static __always_inline void stat_add(enum canopy_stat idx, u64 n)
{
	u32 key = idx;
	u64 *counter = bpf_map_lookup_elem(&stats, &key);

	if (counter)
		(*counter) += n;
}
#define stat_inc(idx) stat_add(idx, 1)

/* ---- task classes (shared by every canopy scheduler: the loader reuses the root's maps) ---- */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CANOPY_MAX_CLASSES);
	__type(key, u32);
	__type(value, struct canopy_class_params);
} class_params SEC(".maps");

#include "task_classes.bpf.h"

/*
 * Per cgroup id: share terms, admission, and the allowed classes of its current state; an
 * unowned entry (intf.h) for every cgroup no group owns. Not preallocated: 65,536 entries of
 * 160 bytes would pin 10 MB for the few hundred cgroups a machine has.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, CANOPY_MAX_GROUPS);
	__type(key, u64);
	__type(value, struct canopy_group_policy);
} group_policy SEC(".maps");

/* The policy's default class for tasks the controller has not tagged (one entry, key 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct canopy_policy_defaults);
} policy_defaults SEC(".maps");

/* The class of an untagged task: the policy's default, DEFAULT while nothing valid is written. */
static __always_inline u32 policy_default_class(void)
{
	u32 key = 0;
	struct canopy_policy_defaults *defaults = bpf_map_lookup_elem(&policy_defaults, &key);

	if (defaults && defaults->default_class_plus_one &&
	    defaults->default_class_plus_one <= CANOPY_MAX_CLASSES)
		return defaults->default_class_plus_one - 1;
	return CANOPY_CLASS_DEFAULT;
}

/*
 * The id of @p's cgroup (v2). Not inlined: inlined, clang may compute the field address
 * before a caller's NULL check of @p, which the verifier rejects.
 */
static __noinline u64 task_cgroup_id(struct task_struct *p)
{
	return BPF_CORE_READ(p, cgroups, dfl_cgrp, kn, id);
}

/*
 * A task's requested class: its own tag, else its process's tag (tid == tgid), else the
 * policy's default (`policy_defaults`, rewritten on reload).
 */
static __always_inline u32 task_requested_class(struct task_struct *p)
{
	u32 tid = p->pid, tgid = p->tgid;
	u32 *class = bpf_map_lookup_elem(&task_classes, &tid);
	u32 c;

	if (!class && tgid != tid)
		class = bpf_map_lookup_elem(&task_classes, &tgid);
	c = class ? *class : CANOPY_MAX_CLASSES;
	if (c >= CANOPY_MAX_CLASSES)
		c = policy_default_class();
	return c;
}

/*
 * The id of the cgroup @up levels above @p's cgroup (0: its own), 0 above the root. Not
 * inlined, as task_cgroup_id().
 */
static __noinline u64 task_cgroup_ancestor_id(struct task_struct *p, u32 up)
{
	struct cgroup *cgrp = BPF_CORE_READ(p, cgroups, dfl_cgrp), *ancestor = NULL;
	int level;

	if (!cgrp)
		return 0;
	level = BPF_CORE_READ(cgrp, level);
	if (level < 0 || up > (u32)level)
		return 0;
	bpf_probe_read_kernel(&ancestor, sizeof(ancestor), &cgrp->ancestors[level - up]);
	return ancestor ? BPF_CORE_READ(ancestor, kn, id) : 0;
}

/*
 * The `group_policy` entry of the nearest cgroup at or above @p's that a group owns (an entry
 * with `unowned` 0), walking at most CANOPY_MAX_CGROUP_DEPTH levels up; NULL when none does.
 * A thread moved into `app-x.scope/sub`, or a cgroup made below a scope after the policy
 * loaded, is governed by the scope's entry: `sub` has only the unowned entry canopy_root made
 * at its mkdir, so the walk passes it. Nothing is copied down, so a state change of the scope
 * reaches every cgroup below it with the scope's one write. Cost: one hash lookup per level
 * between the task's cgroup and the owner (a task in an owned cgroup: one).
 */
static __always_inline struct canopy_group_policy *owning_group_policy(struct task_struct *p)
{
	struct canopy_group_policy *group = NULL;
	u64 cgroup_id;
	int up;

	canopy_for(up, 0, CANOPY_MAX_CGROUP_DEPTH) {
		cgroup_id = task_cgroup_ancestor_id(p, up);
		if (!cgroup_id)
			break;
		group = bpf_map_lookup_elem(&group_policy, &cgroup_id);
		if (group && !group->unowned)
			break;
		group = NULL;
	}
	return group;
}

/*
 * @requested clamped to the allowed classes of the current state of the group owning @p's
 * cgroup (its own or the nearest ancestor with an entry). The clamp is what makes a move into
 * (or out of) a minimized app's cgroup take effect at the task's next enqueue, before the
 * controller has heard of the move: the controller keeps the request in `task_classes` and the
 * state's limits in `group_policy`. Ids count down from the highest class: a ceiling of
 * BACKGROUND (4) turns a USER_INTERACTIVE (0) request into 4.
 */
static __always_inline u32 clamp_to_cgroup(struct task_struct *p, u32 requested)
{
	struct canopy_group_policy *group = owning_group_policy(p);
	u32 c = requested;

	if (group) {
		if (group->ceiling_plus_one && c < group->ceiling_plus_one - 1)
			c = group->ceiling_plus_one - 1;
		if (group->floor_plus_one && c > group->floor_plus_one - 1)
			c = group->floor_plus_one - 1;
		if (c != requested)
			stat_inc(CANOPY_STAT_CLASS_CLAMPED);
	}
	return c;
}

/* A task's class: its request clamped by its cgroup's state. */
static __always_inline u32 task_class(struct task_struct *p)
{
	return clamp_to_cgroup(p, task_requested_class(p));
}

/* ---- moves: when a moved task's class is first decided under its new cgroup ---- */

/* Per task: the kernel moved it and no class decision has been made for it since. */
struct move_stamp {
	u64 moved_at_ns;	/* 0: no move pending */
	u32 state_at_move;	/* enum canopy_move_state */
	u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct move_stamp);
} move_stamps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct canopy_move_log);
} move_log SEC(".maps");

/* The kernel moved @p and no class decision has been made for it since. */
static __always_inline bool move_pending(struct task_struct *p)
{
	struct move_stamp *stamp = bpf_task_storage_get(&move_stamps, p, 0, 0);

	return stamp && stamp->moved_at_ns;
}

/*
 * At the first decision about a moved task's class after the move (its enqueue, or keeping it
 * running as a dispatch): log when it was moved, when its class was decided and which it got
 * (issue 5 (b): a move into a minimized group demotes within 10 ms).
 */
static __always_inline void note_class_decided_after_move(struct task_struct *p, u32 requested,
							 u32 class)
{
	struct move_stamp *stamp = bpf_task_storage_get(&move_stamps, p, 0, 0);
	struct canopy_move_record *record;
	struct canopy_move_log *log;
	u32 key = 0;
	u64 now, slot;

	if (!stamp || !stamp->moved_at_ns)
		return;
	now = bpf_ktime_get_ns();
	stat_inc(CANOPY_STAT_MOVED_DECISIONS);
	if (now - stamp->moved_at_ns > CANOPY_MOVE_SLOW_NS)
		stat_inc(CANOPY_STAT_MOVED_DECISIONS_SLOW);
	log = bpf_map_lookup_elem(&move_log, &key);
	if (log) {
		slot = __sync_fetch_and_add(&log->next, 1) & (CANOPY_MOVE_RECORDS - 1);
		record = &log->records[slot];
		record->cgroup_id = task_cgroup_id(p);
		record->moved_at_ns = stamp->moved_at_ns;
		record->decided_at_ns = now;
		record->tid = p->pid;
		record->requested_class = requested;
		record->class = class;
		record->state_at_move = stamp->state_at_move;
	}
	stamp->moved_at_ns = 0;
}

static __always_inline struct canopy_class_params *class_of(u32 class)
{
	return bpf_map_lookup_elem(&class_params, &class);
}

/* slice of a class, falling back to the kernel default when the loader left it 0 */
static __always_inline u64 class_slice(const struct canopy_class_params *cp)
{
	return (cp && cp->slice_ns) ? cp->slice_ns : KCONST(SCX_SLICE_DFL);
}

/* a class's weight on the task scale (CANOPY_NICE0_WEIGHT = 1024 = nice 0) */
static __always_inline u32 class_weight(const struct canopy_class_params *cp)
{
	return (cp && cp->weight) ? cp->weight : CANOPY_NICE0_WEIGHT;
}

static __always_inline bool task_may_run_on(const struct task_struct *p, s32 cid)
{
	s32 cpu = scx_bpf_cid_to_cpu(cid);

	if (cpu < 0)
		return false;
	return bpf_cpumask_test_cpu(cpu, p->cpus_ptr);
}

#define CANOPY_OP(name, args...) SEC("struct_ops/" #name) BPF_PROG(name, ##args)
#define CANOPY_OP_SLEEPABLE(name, args...) SEC("struct_ops.s/" #name) BPF_PROG(name, ##args)

#endif /* CANOPY_BPF_H */
