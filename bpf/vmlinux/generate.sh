#!/usr/bin/env bash
# Regenerates bpf/vmlinux/vmlinux.h from the BTF of the test kernel (or of the vmlinux given as
# $1), then checks it still describes the cid-form sched_ext ops canopy's schedulers use.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
vmlinux=${1:-$("$here/../../scripts/fetch-kernel.sh")/vmlinux}
[[ -f $vmlinux ]] || { echo "generate.sh: no vmlinux at $vmlinux" >&2; exit 1; }
bpftool btf dump file "$vmlinux" format c > "$here/vmlinux.h.new" 2>/dev/null
"$here/check.sh" "$here/vmlinux.h.new"
mv "$here/vmlinux.h.new" "$here/vmlinux.h"
echo "generate.sh: wrote $here/vmlinux.h from $vmlinux" >&2
