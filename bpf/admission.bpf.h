/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * admission.bpf.h: which sub-schedulers canopy_root lets attach, and where. It owns the
 * admission helpers that ops.sub_attach (in canopy_root.bpf.c) calls, the `admission_events`
 * ring buffer that reports each decision, the time-share grant of every cid to an admitted
 * child (`grant_mask`, grant_time_share), and the supervisor's `child_restarts` record.
 *
 * Policy: a child may attach only on a cgroup that the policy (map `group_policy`, pushed by
 * the loader) names with a scheduler kind admitting the child's ops name (up to
 * CANOPY_MAX_ADMITTED names per group). Anything else is refused with -EPERM (not named /
 * name not admitted) or -ENOSPC (no free member slot, CANOPY_MAX_MEMBERS - 1 = 64 children);
 * each decision is logged through `admission_events` and bpf_printk. An admitted child gets
 * SCX_CAP_ENQ_IMMED on every cid (a time share, never ownership) and the group's weight,
 * else its cgroup's cpu.weight.
 *
 * Worked example: the policy names games.slice with admitted = ["canopy_child",
 * "foreign_fifo"] and no weight; games.slice has cpu.weight 200. `foreign_fifo` attaching
 * there takes the first free slot (say 1) at weight 200 and an ENQ_IMMED grant on both cids;
 * an ops named "other_sched" on games.slice, or `foreign_fifo` on a cgroup the policy does
 * not name, gets -EPERM; a 65th child anywhere gets -ENOSPC. Each of the three shows up as
 * one `canopy_admission_event` that `canopy run` logs.
 */
#ifndef CANOPY_ADMISSION_BPF_H
#define CANOPY_ADMISSION_BPF_H

#include "cid_grants.bpf.h"

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

/* cmask scratch for grants; only used from sub_attach and cid_online (serialised by the kernel) */
struct canopy_cmask __arena grant_mask;

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

#endif /* CANOPY_ADMISSION_BPF_H */
