/* oom: tp_btf/mark_victim (the OOM killer chose `task`). One record per kill
 * (rare): victim and trigger (current) task, both memory cgroups, the victim
 * memcg's limit and usage at kill time, the victim's RSS, trigger stack. */
#include "common.bpf.h"

struct oom_event {
	struct event_hdr hdr;        /* the trigger: the task that ran the OOM killer */
	__u64 victim_memcg_id;       /* kernfs id (= inode) of the victim's memory cgroup */
	__u64 trigger_memcg_id;
	__u64 memcg_limit_pages;
	__u64 memcg_usage_pages;
	__u64 total_vm_pages;
	__s64 anon_rss_pages;
	__s64 file_rss_pages;
	__s64 shmem_rss_pages;
	__u32 victim_pid;            /* thread id */
	__u32 victim_tgid;
	__u32 uid;
	__s32 oom_score_adj;
	__s32 stack_id;
	__u32 _pad;
	char victim_comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 256);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
} stacks SEC(".maps");

/* [0] OOM kills seen */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} kills SEC(".maps");

static __always_inline struct mem_cgroup *memcg_of(struct task_struct *t)
{
	int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	struct cgroup_subsys_state *css = BPF_CORE_READ(t, cgroups, subsys[id]);
	/* css is the first member of struct mem_cgroup */
	return (struct mem_cgroup *)css;
}

static __always_inline __u64 memcg_id(struct mem_cgroup *m)
{
	if (!m)
		return 0;
	return BPF_CORE_READ(m, css.cgroup, kn, id);
}

SEC("tp_btf/mark_victim")
int BPF_PROG(kotel_mark_victim, struct task_struct *task, uid_t uid)
{
	__u32 k = 0;
	__u64 *n = bpf_map_lookup_elem(&kills, &k);
	if (n)
		__sync_fetch_and_add(n, 1);

	struct oom_event *e = RESERVE_EVENT(events, struct oom_event);
	if (!e)
		return 0;
	fill_hdr(&e->hdr);
	struct task_struct *cur = (struct task_struct *)bpf_get_current_task_btf();
	struct mem_cgroup *vm = memcg_of(task);
	e->victim_memcg_id = memcg_id(vm);
	e->trigger_memcg_id = memcg_id(memcg_of(cur));
	if (vm) {
		e->memcg_limit_pages = BPF_CORE_READ(vm, memory.max);
		e->memcg_usage_pages = BPF_CORE_READ(vm, memory.usage.counter);
	} else {
		e->memcg_limit_pages = 0;
		e->memcg_usage_pages = 0;
	}
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	if (mm) {
		e->total_vm_pages = BPF_CORE_READ(mm, total_vm);
		e->file_rss_pages = BPF_CORE_READ(mm, rss_stat[0].count);
		e->anon_rss_pages = BPF_CORE_READ(mm, rss_stat[1].count);
		e->shmem_rss_pages = BPF_CORE_READ(mm, rss_stat[3].count);
	} else {
		e->total_vm_pages = 0;
		e->file_rss_pages = e->anon_rss_pages = e->shmem_rss_pages = 0;
	}
	e->victim_pid = BPF_CORE_READ(task, pid);
	e->victim_tgid = BPF_CORE_READ(task, tgid);
	e->uid = uid;
	e->oom_score_adj = BPF_CORE_READ(task, signal, oom_score_adj);
	e->_pad = 0;
	BPF_CORE_READ_STR_INTO(&e->victim_comm, task, comm);
	e->stack_id = bpf_get_stackid(ctx, &stacks, 0);
	bpf_ringbuf_submit(e, 0);
	return 0;
}
