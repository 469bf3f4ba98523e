/* hungtask: tp_btf/sched_process_hang (khungtaskd found a task blocked in D
 * state longer than kernel.hung_task_timeout_secs) with the hung task's
 * kernel stack; and iter/task, run on demand, listing every task in D state
 * with its kernel stack. */
#include "common.bpf.h"

#define MAX_FRAMES 48
#define TASK_UNINTERRUPTIBLE_ 0x2
#define TASK_NOLOAD_ 0x400

struct hang_event {
	struct event_hdr hdr; /* current: khungtaskd */
	__u32 pid;            /* the hung task */
	__u32 tgid;
	__u32 state;
	__s32 stack_bytes;    /* bpf_get_task_stack result */
	char comm[TASK_COMM_LEN];
	__u64 frames[MAX_FRAMES];
};

/* one record per D-state task written by the iterator */
struct dstate_task {
	__u32 pid;
	__u32 tgid;
	__u32 state;
	__s32 stack_bytes;
	char comm[TASK_COMM_LEN];
	__u64 frames[MAX_FRAMES];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hangs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dstate_task);
} scratch SEC(".maps");

SEC("tp_btf/sched_process_hang")
int BPF_PROG(kotel_process_hang, struct task_struct *t)
{
	__u32 k = 0;
	__u64 *n = bpf_map_lookup_elem(&hangs, &k);
	if (n)
		__sync_fetch_and_add(n, 1);
	struct hang_event *e = RESERVE_EVENT(events, struct hang_event);
	if (!e)
		return 0;
	fill_hdr(&e->hdr);
	e->pid = BPF_CORE_READ(t, pid);
	e->tgid = BPF_CORE_READ(t, tgid);
	e->state = BPF_CORE_READ(t, __state);
	BPF_CORE_READ_STR_INTO(&e->comm, t, comm);
	e->stack_bytes = bpf_get_task_stack(t, e->frames, sizeof(e->frames), 0);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("iter/task")
int kotel_dstate(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *t = ctx->task;
	if (!t)
		return 0;
	__u32 st = t->__state;
	if (!(st & TASK_UNINTERRUPTIBLE_) || (st & TASK_NOLOAD_))
		return 0;
	__u32 k = 0;
	struct dstate_task *r = bpf_map_lookup_elem(&scratch, &k);
	if (!r)
		return 0;
	r->pid = t->pid;
	r->tgid = t->tgid;
	r->state = st;
	bpf_probe_read_kernel_str(r->comm, sizeof(r->comm), t->comm);
	r->stack_bytes = bpf_get_task_stack(t, r->frames, sizeof(r->frames), 0);
	bpf_seq_write(seq, r, sizeof(*r));
	return 0;
}
