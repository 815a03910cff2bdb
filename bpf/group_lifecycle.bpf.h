/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * group_lifecycle.bpf.h: `group_policy` entries live and die with their cgroups (canopy_root).
 *
 * Policy: every cgroup2 cgroup has an entry from its mkdir to its rmdir. The kernel's
 * `cgroup:cgroup_mkdir` tracepoint (fired inside mkdir(2), before it returns, for every cgroup
 * of the v2 hierarchy whatever its controllers) makes the cgroup's unowned entry (intf.h:
 * `unowned` 1, all else 0, which every reader treats as "no group owns it"); the
 * `cgroup:cgroup_rmdir` tracepoint (fired once the removal has succeeded) deletes the entry,
 * owned or not. Userspace never creates an entry: it rewrites an existing one (BPF_EXIST) to
 * own the cgroup (its group's terms, `unowned` 0) or to disown it (the unowned entry again).
 * The loader gives the cgroups that already exist their unowned entries once, when the root
 * loads, after these programs are attached (root.rs seed_unowned_entries: a create followed
 * by a check that the cgroup is still there, so one removed meanwhile loses its entry again).
 *
 * Why not ops.cpuctl_init / cpuctl_exit: the kernel calls them only for cgroups with the cpu
 * controller (a desktop's `app-x.scope` usually has none), delivers them to the scheduler the
 * cgroup belongs to (cgroups below an attached child go to the child), and calls cpuctl_exit
 * on the root for a cgroup that a child scheduler takes over, which is still there and still
 * needs the entry that admitted the child.
 *
 * Worked example: the daemon sees `churn/c7.scope` appear (inotify) and writes the churn
 * group's terms (ceiling BACKGROUND) over its unowned entry. Had the scope been removed
 * before that write, rmdir deleted the entry, the write fails with ENOENT and the daemon
 * counts the group as gone; removed after it, rmdir deletes the owned entry. Either way 5,000
 * mkdir/rmdir cycles leave the map the size it started. The old way (userspace created
 * entries) left an entry for good whenever a late write came after the removal.
 *
 * Ceilings and floors still reach descendants (issue 10 Deliver 4): nothing is copied down.
 * `app-x.scope/sub` has the unowned entry, so canopy.bpf.h owning_group_policy() walks past
 * it to the scope's owned entry, and one write of the scope's new state clamps every cgroup
 * below it. Cost: one hash insert per mkdir and one delete per rmdir (each under the kernel's
 * cgroup mutex already); 160 bytes per cgroup, allocated as made (65,536 at most).
 */
#ifndef CANOPY_GROUP_LIFECYCLE_BPF_H
#define CANOPY_GROUP_LIFECYCLE_BPF_H

#include "canopy.bpf.h"

/* The default (cgroup2) hierarchy's id; cgroup v1 hierarchies have ids from 1. */
#define CGROUP2_HIERARCHY_ID 0

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(canopy_root_cgroup_made, struct cgroup *cgrp, const char *path)
{
	struct canopy_group_policy unowned = { .unowned = 1 };
	u64 cgroup_id;
	long ret;

	if (cgrp->root->hierarchy_id != CGROUP2_HIERARCHY_ID)
		return 0;
	cgroup_id = cgrp->kn->id;
	ret = bpf_map_update_elem(&group_policy, &cgroup_id, &unowned, BPF_NOEXIST);
	if (ret && ret != -EEXIST)
		stat_inc(CANOPY_STAT_GROUP_POLICY_FULL);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(canopy_root_cgroup_removed, struct cgroup *cgrp, const char *path)
{
	u64 cgroup_id;

	if (cgrp->root->hierarchy_id != CGROUP2_HIERARCHY_ID)
		return 0;
	cgroup_id = cgrp->kn->id;
	bpf_map_delete_elem(&group_policy, &cgroup_id);
	return 0;
}

#endif /* CANOPY_GROUP_LIFECYCLE_BPF_H */
