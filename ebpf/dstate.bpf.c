/* dstate: tasks in uninterruptible sleep (D state), for the dload detector.
 *
 * Two task iterators, run on demand from userspace:
 *   kotel_dcount   one short record per D-state task: ids, state and the
 *                  task's cgroup ids (v2, and the v1 "cpu" hierarchy)
 *   kotel_dstacks  the same plus comm and the kernel stack
 *                  (bpf_get_task_stack)
 * TASK_NOLOAD tasks (idle kworkers, state 0x402) do not count, as in the
 * kernel's load average. */
#include "common.bpf.h"

#define DSTATE_FRAMES 48
#define TASK_UNINTERRUPTIBLE_ 0x2
#define TASK_NOLOAD_ 0x400

struct kotel_dtask {
	__u32 pid;
	__u32 tgid;
	__u32 state;
	__s32 stack_bytes;
	__u64 cg_v2;
	__u64 cg_cpu;
	char comm[TASK_COMM_LEN];
	__u64 frames[DSTATE_FRAMES];
};

#define DTASK_HEADER (sizeof(struct kotel_dtask) - DSTATE_FRAMES * sizeof(__u64))

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kotel_dtask);
} dtask_scratch SEC(".maps");

static __always_inline struct kotel_dtask *fill(struct task_struct *t)
{
	__u32 st = t->__state;
	if (!(st & TASK_UNINTERRUPTIBLE_) || (st & TASK_NOLOAD_))
		return 0;
	__u32 k = 0;
	struct kotel_dtask *r = bpf_map_lookup_elem(&dtask_scratch, &k);
	if (!r)
		return 0;
	r->pid = t->pid;
	r->tgid = t->tgid;
	r->state = st;
	r->stack_bytes = 0;
	r->cg_v2 = BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
	r->cg_cpu = 0;
	int sid = bpf_core_enum_value(enum cgroup_subsys_id, cpu_cgrp_id);
	struct css_set *cs = BPF_CORE_READ(t, cgroups);
	if (cs && sid >= 0 && sid < 16) {
		struct cgroup_subsys_state *css = 0;
		bpf_core_read(&css, sizeof(css), &cs->subsys[sid]);
		if (css)
			r->cg_cpu = BPF_CORE_READ(css, cgroup, kn, id);
	}
	bpf_probe_read_kernel_str(r->comm, sizeof(r->comm), t->comm);
	return r;
}

SEC("iter/task")
int kotel_dcount(struct bpf_iter__task *ctx)
{
	struct task_struct *t = ctx->task;
	if (!t)
		return 0;
	struct kotel_dtask *r = fill(t);
	if (r)
		bpf_seq_write(ctx->meta->seq, r, DTASK_HEADER);
	return 0;
}

SEC("iter/task")
int kotel_dstacks(struct bpf_iter__task *ctx)
{
	struct task_struct *t = ctx->task;
	if (!t)
		return 0;
	struct kotel_dtask *r = fill(t);
	if (!r)
		return 0;
	r->stack_bytes = bpf_get_task_stack(t, r->frames, sizeof(r->frames), 0);
	bpf_seq_write(ctx->meta->seq, r, sizeof(*r));
	return 0;
}
