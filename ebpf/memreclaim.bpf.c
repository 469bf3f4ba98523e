/* memreclaim: vmscan direct reclaim and memcg reclaim begin/end.
 * Always: log2 histograms of reclaim duration per kind (0 direct, 1 memcg).
 * Events: one record per reclaim longer than threshold_ns (rate limited),
 * with the stalled task, order, gfp flags, pages reclaimed and memcg. */
#include "common.bpf.h"

#define KIND_DIRECT 0
#define KIND_MEMCG 1
#define NR_KINDS 2

const volatile __u64 threshold_ns = 900 * 1000 * 1000ULL;
const volatile __u64 event_rate = 100;

struct reclaim_start {
	__u64 ts;
	__u64 gfp_flags;
	__s32 order;
	__u32 _pad;
};

struct reclaim_event {
	struct event_hdr hdr;
	__u64 duration_ns;
	__u64 gfp_flags;
	__u64 nr_reclaimed;
	__u64 memcg_id;
	__s32 order;
	__u32 kind;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

/* key: tid << 1 | kind */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct reclaim_start);
} starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_KINDS * HIST_LEN);
	__type(key, __u32);
	__type(value, __u64);
} duration_hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kotel_bucket);
} buckets SEC(".maps");

static __always_inline int begin(__u32 kind, int order, __u64 gfp)
{
	__u64 key = ((__u64)(__u32)bpf_get_current_pid_tgid() << 1) | kind;
	struct reclaim_start s = { .ts = bpf_ktime_get_ns(), .gfp_flags = gfp, .order = order };
	bpf_map_update_elem(&starts, &key, &s, BPF_ANY);
	return 0;
}

static __always_inline int end(__u32 kind, __u64 nr_reclaimed)
{
	__u64 key = ((__u64)(__u32)bpf_get_current_pid_tgid() << 1) | kind;
	struct reclaim_start *s = bpf_map_lookup_elem(&starts, &key);
	if (!s)
		return 0;
	__u64 d = bpf_ktime_get_ns() - s->ts;
	__u64 gfp = s->gfp_flags;
	int order = s->order;
	bpf_map_delete_elem(&starts, &key);

	__u32 k = kind * HIST_LEN + hist_slot(d);
	__u64 *c = bpf_map_lookup_elem(&duration_hist, &k);
	if (c)
		__sync_fetch_and_add(c, 1);
	k = kind * HIST_LEN + HIST_SUM;
	c = bpf_map_lookup_elem(&duration_hist, &k);
	if (c)
		__sync_fetch_and_add(c, d);

	if (d < threshold_ns)
		return 0;
	k = 0;
	struct kotel_bucket *tb = bpf_map_lookup_elem(&buckets, &k);
	if (!tb || !tb_take(tb, event_rate, event_rate)) {
		count_lost(LOST_RATE_LIMITED);
		return 0;
	}
	struct reclaim_event *e = RESERVE_EVENT(events, struct reclaim_event);
	if (!e)
		return 0;
	fill_hdr(&e->hdr);
	e->duration_ns = d;
	e->gfp_flags = gfp;
	e->nr_reclaimed = nr_reclaimed;
	e->order = order;
	e->kind = kind;
	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	e->memcg_id = BPF_CORE_READ(t, cgroups, subsys[id], cgroup, kn, id);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/vmscan/mm_vmscan_direct_reclaim_begin")
int kotel_direct_begin(struct trace_event_raw_mm_vmscan_direct_reclaim_begin_template *ctx)
{
	return begin(KIND_DIRECT, ctx->order, ctx->gfp_flags);
}

SEC("tracepoint/vmscan/mm_vmscan_direct_reclaim_end")
int kotel_direct_end(struct trace_event_raw_mm_vmscan_direct_reclaim_end_template *ctx)
{
	return end(KIND_DIRECT, ctx->nr_reclaimed);
}

SEC("tracepoint/vmscan/mm_vmscan_memcg_reclaim_begin")
int kotel_memcg_begin(struct trace_event_raw_mm_vmscan_direct_reclaim_begin_template *ctx)
{
	return begin(KIND_MEMCG, ctx->order, ctx->gfp_flags);
}

SEC("tracepoint/vmscan/mm_vmscan_memcg_reclaim_end")
int kotel_memcg_end(struct trace_event_raw_mm_vmscan_direct_reclaim_end_template *ctx)
{
	return end(KIND_MEMCG, ctx->nr_reclaimed);
}
