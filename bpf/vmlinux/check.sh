#!/usr/bin/env bash
# Checks that a vmlinux.h (default: the committed one) describes the kernel interfaces canopy's
# BPF programs are written against. CI runs it.
set -euo pipefail
header=${1:-$(dirname "$0")/vmlinux.h}
for needle in 'struct sched_ext_ops_cid {' 'struct scx_sub_attach_args {' 'struct bpf_arena'; do
  grep -qF "$needle" "$header" || { echo "check.sh: $header lacks '$needle'" >&2; exit 1; }
done
