#!/bin/sh
# Regenerate ebpf/include/vmlinux.h from the running kernel's BTF.
# Needs bpftool (apt-get install -y bpftool) and /sys/kernel/btf/vmlinux.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
btf=${1:-/sys/kernel/btf/vmlinux}
[ -r "$btf" ] || { echo "no kernel BTF at $btf (CONFIG_DEBUG_INFO_BTF)" >&2; exit 1; }
command -v bpftool >/dev/null || { echo "bpftool missing: apt-get install -y bpftool" >&2; exit 1; }
tmp=$(mktemp)
bpftool btf dump file "$btf" format c >"$tmp"
mv "$tmp" "$here/include/vmlinux.h"
echo "wrote $here/include/vmlinux.h ($(wc -l <"$here/include/vmlinux.h") lines, kernel $(uname -r))"
