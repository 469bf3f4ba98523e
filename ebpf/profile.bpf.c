/* profile: CPU sampling for autotracing captures.
 *
 * A perf_event program attached to the software cpu-clock event of every
 * CPU (99 Hz by default). Each sample of an in-scope task takes its kernel
 * and user stack ids and bumps a counter keyed by (tgid, kernel stack, user
 * stack, comm): the aggregation happens here, so userspace reads one map at
 * the end of the capture instead of one record per sample.
 *
 * Scope (rodata, set by the loader):
 *   filter_mode 0  every task except the idle tasks
 *               1  tasks whose cgroup v2 cgroup is filter_id or below it
 *               2  tasks whose cgroup v1 "cpu" cgroup is filter_id or below it
 *   filter_level  depth of the filter cgroup in its hierarchy (root = 0);
 *                 a task matches when its cgroup's ancestor at that depth
 *                 has kernfs id filter_id.
 */
#include "common.bpf.h"

#define PERF_MAX_STACK_DEPTH 127

const volatile __u32 filter_mode = 0;
const volatile __u32 filter_level = 0;
const volatile __u64 filter_id = 0;

struct profile_key {
	__u32 tgid;
	__s32 kstack;
	__s32 ustack;
	__u32 _pad;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, PERF_MAX_STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct profile_key);
	__type(value, __u64);
} counts SEC(".maps");

#define ST_SAMPLES 0   /* in-scope samples counted */
#define ST_IDLE 1      /* samples of the idle task (not counted) */
#define ST_FULL 2      /* counts map full: sample lost */
#define ST_KSTACK_ERR 3
#define ST_USTACK_ERR 4
#define ST_MAX 5

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stat_inc(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &i);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline int in_scope(struct task_struct *t)
{
	struct cgroup *cg;
	if (filter_mode == 0)
		return 1;
	if (filter_mode == 1) {
		cg = BPF_CORE_READ(t, cgroups, dfl_cgrp);
	} else {
		int sid = bpf_core_enum_value(enum cgroup_subsys_id, cpu_cgrp_id);
		struct css_set *cs = BPF_CORE_READ(t, cgroups);
		struct cgroup_subsys_state *css = 0;
		if (!cs || sid < 0 || sid >= 16)
			return 0;
		bpf_core_read(&css, sizeof(css), &cs->subsys[sid]);
		if (!css)
			return 0;
		cg = BPF_CORE_READ(css, cgroup);
	}
	if (!cg)
		return 0;
	int level = BPF_CORE_READ(cg, level);
	if (level < (int)filter_level)
		return 0;
	struct cgroup *anc = 0;
	bpf_core_read(&anc, sizeof(anc), &cg->ancestors[filter_level]);
	if (!anc)
		return 0;
	return BPF_CORE_READ(anc, kn, id) == filter_id;
}

SEC("perf_event")
int kotel_profile(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if ((__u32)id == 0) {
		stat_inc(ST_IDLE);
		return 0;
	}
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	if (!in_scope(t))
		return 0;
	struct profile_key key = {};
	key.tgid = tgid;
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	key.kstack = bpf_get_stackid(ctx, &stacks, 0);
	if (key.kstack < 0 && key.kstack != -14 /* EFAULT: no kernel stack */)
		stat_inc(ST_KSTACK_ERR);
	key.ustack = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	if (key.ustack < 0 && key.ustack != -14 /* EFAULT: kernel thread */)
		stat_inc(ST_USTACK_ERR);
	if (key.kstack < 0)
		key.kstack = -1;
	if (key.ustack < 0)
		key.ustack = -1;
	__u64 *n = bpf_map_lookup_elem(&counts, &key);
	if (n) {
		__sync_fetch_and_add(n, 1);
	} else {
		__u64 one = 1;
		if (bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST) != 0) {
			n = bpf_map_lookup_elem(&counts, &key);
			if (n)
				__sync_fetch_and_add(n, 1);
			else
				stat_inc(ST_FULL);
		}
	}
	stat_inc(ST_SAMPLES);
	return 0;
}
