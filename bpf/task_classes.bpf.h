/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * task_classes.bpf.h: the one declaration of `task_classes` (tid -> class id, intf.h), which
 * every canopy scheduler reads, the daemon writes, and the task watcher
 * (canopy_moves.bpf.c) prunes at each thread's exit. The loaders share the root's pinned map,
 * so every object must declare it alike: this header is that declaration.
 */
#ifndef CANOPY_TASK_CLASSES_BPF_H
#define CANOPY_TASK_CLASSES_BPF_H

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CANOPY_MAX_TASKS);
	__type(key, u32);
	__type(value, u32);
} task_classes SEC(".maps");

#endif /* CANOPY_TASK_CLASSES_BPF_H */
