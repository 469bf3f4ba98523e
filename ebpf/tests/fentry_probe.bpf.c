/* Test-only: an fentry program. On the team's machines the kernel refuses
 * BPF trampolines with EPERM even for root; kotel must say so, not "need root". */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("fentry/do_unlinkat")
int BPF_PROG(kotel_probe_fentry)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
