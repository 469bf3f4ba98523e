/* reclaimlat: how long tasks and kswapd spend reclaiming and compacting
 * memory (vmscan and compaction tracepoints, tp_btf).
 *
 * Host histograms (log2 ns), index = kind:
 *   0 direct (mm_vmscan_direct_reclaim_begin/end)
 *   1 memcg (mm_vmscan_memcg_reclaim_begin/end)
 *   2 softlimit (mm_vmscan_memcg_softlimit_reclaim_begin/end)
 *   3 node (mm_vmscan_node_reclaim_begin/end)
 *   4 kswapd (mm_vmscan_kswapd_wake -> mm_vmscan_kswapd_sleep, per node)
 *   5 compaction in a user/allocating task (mm_compaction_begin/end)
 *   6 compaction in a kernel thread (kcompactd, proactive)
 * Per memory cgroup of the stalled task: direct and memcg reclaim stall count
 * and time. Per NUMA node: kswapd wake-ups.
 * Begin timestamps live in a hash keyed by thread and kind. */
#include "common.bpf.h"

#define K_DIRECT 0
#define K_MEMCG 1
#define K_SOFTLIMIT 2
#define K_NODE 3
#define K_KSWAPD 4
#define K_COMPACT_TASK 5
#define K_COMPACT_KTHREAD 6
#define NR_HISTS 7

#define SLOT_COMPACT 4
#define NR_SLOTS 5 /* per-task begin stamps: 4 reclaim kinds + compaction */

#define MAX_NODES 64
#define PF_KTHREAD 0x00200000


struct cg_key {
	__u64 memcg_id;
	__u32 kind;
	__u32 _pad;
};

struct cg_val {
	__u64 stalls;
	__u64 ns;
};

static const struct cg_val zero_val = {};

/* begin time, key tid << 3 | slot (deleted at the end) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, __u64);
} stamps SEC(".maps");

/* one entry per histogram (one read per histogram in userspace) */
struct hist {
	__u64 v[HIST_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_HISTS);
	__type(key, __u32);
	__type(value, struct hist);
} hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct cg_key);
	__type(value, struct cg_val);
} cgroups SEC(".maps");

/* kswapd: [nid] wake time (ARRAY: kswapd of a node is one thread) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_NODES);
	__type(key, __u32);
	__type(value, __u64);
} kswapd_start SEC(".maps");

/* one entry: v[nid] wake-ups */
struct node_counts {
	__u64 v[MAX_NODES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_counts);
} kswapd_wakes SEC(".maps");

/* [0] per-cgroup map full */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} overflow SEC(".maps");

static __always_inline void hist_add(__u32 kind, __u64 d)
{
	struct hist *h = bpf_map_lookup_elem(&hists, &kind);
	__u32 slot = hist_slot(d);
	if (!h || slot >= HIST_SLOTS)
		return;
	__sync_fetch_and_add(&h->v[slot], 1);
	__sync_fetch_and_add(&h->v[HIST_SUM], d);
}

static __always_inline __u64 stamp_key(__u32 slot)
{
	return ((__u64)(__u32)bpf_get_current_pid_tgid() << 3) | slot;
}

static __always_inline int begin(__u32 slot)
{
	__u64 key = stamp_key(slot);
	__u64 now = bpf_ktime_get_ns();
	bpf_map_update_elem(&stamps, &key, &now, BPF_ANY);
	return 0;
}

/* Duration since begin(slot) of the current task, 0 when unknown. */
static __always_inline __u64 finish(__u32 slot)
{
	__u64 key = stamp_key(slot);
	__u64 *s = bpf_map_lookup_elem(&stamps, &key);
	if (!s)
		return 0;
	__u64 then = *s;
	bpf_map_delete_elem(&stamps, &key);
	__u64 now = bpf_ktime_get_ns();
	if (!then || now <= then)
		return 0;
	return now - then;
}

static __always_inline void cgroup_add(__u32 kind, __u64 d)
{
	struct task_struct *t = bpf_get_current_task_btf();
	int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	struct cg_key key = {
		.memcg_id = BPF_CORE_READ(t, cgroups, subsys[id], cgroup, kn, id),
		.kind = kind,
	};
	struct cg_val *v = bpf_map_lookup_elem(&cgroups, &key);
	if (!v) {
		bpf_map_update_elem(&cgroups, &key, &zero_val, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&cgroups, &key);
		if (!v) {
			__u32 k = 0;
			__u64 *c = bpf_map_lookup_elem(&overflow, &k);
			if (c)
				__sync_fetch_and_add(c, 1);
			return;
		}
	}
	__sync_fetch_and_add(&v->stalls, 1);
	__sync_fetch_and_add(&v->ns, d);
}

static __always_inline int end(__u32 kind, bool per_cgroup)
{
	__u64 d = finish(kind);
	if (!d)
		return 0;
	hist_add(kind, d);
	if (per_cgroup)
		cgroup_add(kind, d);
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(kotel_rcl_direct_begin) { return begin(K_DIRECT); }

SEC("tp_btf/mm_vmscan_direct_reclaim_end")
int BPF_PROG(kotel_rcl_direct_end) { return end(K_DIRECT, true); }

SEC("tp_btf/mm_vmscan_memcg_reclaim_begin")
int BPF_PROG(kotel_rcl_memcg_begin) { return begin(K_MEMCG); }

SEC("tp_btf/mm_vmscan_memcg_reclaim_end")
int BPF_PROG(kotel_rcl_memcg_end) { return end(K_MEMCG, true); }

SEC("tp_btf/mm_vmscan_memcg_softlimit_reclaim_begin")
int BPF_PROG(kotel_rcl_softlimit_begin) { return begin(K_SOFTLIMIT); }

SEC("tp_btf/mm_vmscan_memcg_softlimit_reclaim_end")
int BPF_PROG(kotel_rcl_softlimit_end) { return end(K_SOFTLIMIT, false); }

SEC("tp_btf/mm_vmscan_node_reclaim_begin")
int BPF_PROG(kotel_rcl_node_begin) { return begin(K_NODE); }

SEC("tp_btf/mm_vmscan_node_reclaim_end")
int BPF_PROG(kotel_rcl_node_end) { return end(K_NODE, false); }

SEC("tp_btf/mm_vmscan_kswapd_wake")
int BPF_PROG(kotel_rcl_kswapd_wake, int nid, int zid, int order)
{
	__u32 n = nid;
	if (n >= MAX_NODES)
		return 0;
	__u64 *ts = bpf_map_lookup_elem(&kswapd_start, &n);
	if (ts && *ts == 0)
		*ts = bpf_ktime_get_ns();
	__u32 zero = 0;
	struct node_counts *c = bpf_map_lookup_elem(&kswapd_wakes, &zero);
	if (c && n < MAX_NODES)
		__sync_fetch_and_add(&c->v[n], 1);
	return 0;
}

SEC("tp_btf/mm_vmscan_kswapd_sleep")
int BPF_PROG(kotel_rcl_kswapd_sleep, int nid)
{
	__u32 n = nid;
	if (n >= MAX_NODES)
		return 0;
	__u64 *ts = bpf_map_lookup_elem(&kswapd_start, &n);
	if (!ts || *ts == 0)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 then = *ts;
	*ts = 0;
	if (now > then)
		hist_add(K_KSWAPD, now - then);
	return 0;
}

SEC("tp_btf/mm_compaction_begin")
int BPF_PROG(kotel_rcl_compact_begin) { return begin(SLOT_COMPACT); }

SEC("tp_btf/mm_compaction_end")
int BPF_PROG(kotel_rcl_compact_end)
{
	__u64 d = finish(SLOT_COMPACT);
	if (!d)
		return 0;
	struct task_struct *t = bpf_get_current_task_btf();
	__u32 kind = (t->flags & PF_KTHREAD) ? K_COMPACT_KTHREAD : K_COMPACT_TASK;
	hist_add(kind, d);
	return 0;
}
