/* blocklat: block request latency per disk and operation.
 *
 *   dispatch->complete (d2c): block_rq_issue -> block_rq_complete, the issue
 *     time kept in a hash keyed by the request pointer (deleted at completion;
 *     requests are preallocated per tag, so a lost completion is overwritten
 *     by the next issue of the same request).
 *   queue->complete (q2c): the request's own start_time_ns (set by blk-mq
 *     when the request is set up for a bio, when the queue keeps I/O stats or
 *     has an elevator) -> block_rq_complete. No insert hook needed, so direct
 *     issue paths (no scheduler) are covered too.
 *
 * Histograms are log2 in ns, aggregated in a per-CPU hash keyed by
 * (dev_t, op); one lookup per completion. Requeues and failed completions are
 * counted per disk. */
#include "common.bpf.h"

#define REQ_OP_BITS_MASK 0xff
#define OP_OTHER 4

/* stats[] layout: q2c hist, d2c hist (HIST_LEN each) */
#define ST_Q2C 0
#define ST_D2C HIST_LEN
#define ST_LEN (2 * HIST_LEN)

/* counters[] per disk */
#define C_REQUEUE 0
#define C_ERROR 1
#define C_NO_START 2 /* completions without start_time_ns (no q2c) */
#define C_LEN 3

/* overflow[] */
#define OV_STATS_FULL 0
#define OV_INFLIGHT_FULL 1

struct hist_key {
	__u32 dev; /* major << 20 | minor, as the kernel's dev_t */
	__u32 op;  /* 0 read, 1 write, 2 flush, 3 discard, 4 other */
};

struct blk_hist {
	__u64 v[ST_LEN];
};

struct blk_counters {
	__u64 v[C_LEN];
};

static const struct blk_hist zero_stats = {};
static const struct blk_counters zero_counters = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} issued SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct hist_key);
	__type(value, struct blk_hist);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct blk_counters);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} overflow SEC(".maps");

static __always_inline void count_overflow(__u32 k)
{
	__u64 *c = bpf_map_lookup_elem(&overflow, &k);
	if (c)
		__sync_fetch_and_add(c, 1);
}

/* Direct (BTF) loads: cheaper than bpf_probe_read_kernel per hop. */
static __always_inline __u32 rq_dev(struct request *rq)
{
	struct request_queue *q = rq->q;
	if (!q)
		return 0;
	struct gendisk *disk = q->disk;
	if (!disk)
		return 0;
	return ((__u32)disk->major << 20) | (__u32)disk->first_minor;
}

static __always_inline void count_disk(__u32 dev, __u32 idx)
{
	struct blk_counters *c = bpf_map_lookup_elem(&counters, &dev);
	if (!c) {
		bpf_map_update_elem(&counters, &dev, &zero_counters, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&counters, &dev);
		if (!c)
			return;
	}
	if (idx < C_LEN)
		__sync_fetch_and_add(&c->v[idx], 1);
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(kotel_blk_issue, struct request *rq)
{
	__u64 key = (__u64)rq;
	__u64 now = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&issued, &key, &now, BPF_ANY))
		count_overflow(OV_INFLIGHT_FULL);
	return 0;
}

SEC("tp_btf/block_rq_requeue")
int BPF_PROG(kotel_blk_requeue, struct request *rq)
{
	__u64 key = (__u64)rq;
	bpf_map_delete_elem(&issued, &key);
	count_disk(rq_dev(rq), C_REQUEUE);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(kotel_blk_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 key = (__u64)rq;
	__u64 issue = 0;
	__u64 *ip = bpf_map_lookup_elem(&issued, &key);
	if (ip) {
		issue = *ip;
		bpf_map_delete_elem(&issued, &key);
	}
	__u64 start = rq->start_time_ns;
	__u32 dev = rq_dev(rq);
	if (error)
		count_disk(dev, C_ERROR);
	if (!issue && !start)
		return 0;
	if (!start)
		count_disk(dev, C_NO_START);

	__u32 op = rq->cmd_flags & REQ_OP_BITS_MASK;
	struct hist_key hk = { .dev = dev, .op = op < OP_OTHER ? op : OP_OTHER };
	struct blk_hist *s = bpf_map_lookup_elem(&stats, &hk);
	if (!s) {
		bpf_map_update_elem(&stats, &hk, &zero_stats, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&stats, &hk);
		if (!s) {
			count_overflow(OV_STATS_FULL);
			return 0;
		}
	}
	/* Atomic even on per-CPU values: a completion in task context can be
	 * preempted by another completion on the same CPU (PREEMPT kernels run
	 * tracing programs with only migration disabled), and a plain += would
	 * lose one of the two updates. */
	if (issue && now >= issue) {
		__u64 d = now - issue;
		__u32 slot = hist_slot(d);
		if (slot < HIST_SLOTS) {
			__sync_fetch_and_add(&s->v[ST_D2C + slot], 1);
			__sync_fetch_and_add(&s->v[ST_D2C + HIST_SUM], d);
		}
	}
	if (start && now >= start) {
		__u64 d = now - start;
		__u32 slot = hist_slot(d);
		if (slot < HIST_SLOTS) {
			__sync_fetch_and_add(&s->v[ST_Q2C + slot], 1);
			__sync_fetch_and_add(&s->v[ST_Q2C + HIST_SUM], d);
		}
	}
	return 0;
}
