/* softirq: irq:softirq_raise / softirq_entry / softirq_exit.
 * Always: per-CPU, per-vector log2 histograms of raise->entry delay and of
 * handler duration. Events: one record when either exceeds threshold_ns
 * (token-bucket limited), naming the interrupted task (current).
 *
 * Scheduler-tick gaps (interrupts or preemption off for long): on
 * timer:hrtimer_expire_entry of the tick handler (tick_fn, from kallsyms)
 * the time since the previous tick on this CPU is histogrammed and reported
 * past tick_threshold_ns. power:cpu_idle resets the reference, so a tick
 * stopped in idle (NOHZ) is not a gap. */
#include "common.bpf.h"

#define NR_VEC 10

const volatile __u64 threshold_ns = 10 * 1000 * 1000;
const volatile __u64 event_rate = 100;
const volatile __u64 tick_fn = 0; /* address of the tick hrtimer handler, 0 = off */
const volatile __u64 tick_threshold_ns = 10 * 1000 * 1000;

struct softirq_event {
	struct event_hdr hdr; /* current task: the one the softirq interrupted (or ksoftirqd) */
	__u64 latency_ns;
	__u32 vec;
	__u32 kind; /* 0 = raise->entry delay, 1 = handler duration, 2 = tick gap */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

/* per CPU: [vec] raise time (0 = not pending), [NR_VEC + vec] entry time */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * NR_VEC);
	__type(key, __u32);
	__type(value, __u64);
} stamps SEC(".maps");

/* [vec * HIST_LEN + slot] */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_VEC * HIST_LEN);
	__type(key, __u32);
	__type(value, __u64);
} delay_hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_VEC * HIST_LEN);
	__type(key, __u32);
	__type(value, __u64);
} duration_hist SEC(".maps");

/* per CPU: time of the previous tick (0 = none since idle) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} tick_last SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HIST_LEN);
	__type(key, __u32);
	__type(value, __u64);
} tick_hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kotel_bucket);
} buckets SEC(".maps");

static __always_inline void hist_add(void *map, __u32 vec, __u64 v)
{
	__u32 k = vec * HIST_LEN + hist_slot(v);
	__u64 *c = bpf_map_lookup_elem(map, &k);
	if (c)
		__sync_fetch_and_add(c, 1);
	k = vec * HIST_LEN + HIST_SUM;
	c = bpf_map_lookup_elem(map, &k);
	if (c)
		__sync_fetch_and_add(c, v);
}

static __always_inline void report(__u32 vec, __u64 lat, __u32 kind)
{
	if (lat < (kind == 2 ? tick_threshold_ns : threshold_ns))
		return;
	__u32 k = 0;
	struct kotel_bucket *tb = bpf_map_lookup_elem(&buckets, &k);
	if (!tb || !tb_take(tb, event_rate, event_rate)) {
		count_lost(LOST_RATE_LIMITED);
		return;
	}
	struct softirq_event *e = RESERVE_EVENT(events, struct softirq_event);
	if (!e)
		return;
	fill_hdr(&e->hdr);
	e->latency_ns = lat;
	e->vec = vec;
	e->kind = kind;
	bpf_ringbuf_submit(e, 0);
}

SEC("tracepoint/irq/softirq_raise")
int kotel_softirq_raise(struct trace_event_raw_softirq *ctx)
{
	__u32 vec = ctx->vec;
	if (vec >= NR_VEC)
		return 0;
	__u64 *ts = bpf_map_lookup_elem(&stamps, &vec);
	if (ts && *ts == 0)
		*ts = bpf_ktime_get_ns();
	return 0;
}

SEC("tracepoint/irq/softirq_entry")
int kotel_softirq_entry(struct trace_event_raw_softirq *ctx)
{
	__u32 vec = ctx->vec;
	if (vec >= NR_VEC)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 *ts = bpf_map_lookup_elem(&stamps, &vec);
	if (ts && *ts) {
		__u64 d = now - *ts;
		*ts = 0;
		hist_add(&delay_hist, vec, d);
		report(vec, d, 0);
	}
	__u32 k = NR_VEC + vec;
	ts = bpf_map_lookup_elem(&stamps, &k);
	if (ts)
		*ts = now;
	return 0;
}

SEC("tracepoint/irq/softirq_exit")
int kotel_softirq_exit(struct trace_event_raw_softirq *ctx)
{
	__u32 vec = ctx->vec;
	if (vec >= NR_VEC)
		return 0;
	__u32 k = NR_VEC + vec;
	__u64 *ts = bpf_map_lookup_elem(&stamps, &k);
	if (ts && *ts) {
		__u64 d = bpf_ktime_get_ns() - *ts;
		*ts = 0;
		hist_add(&duration_hist, vec, d);
		report(vec, d, 1);
	}
	return 0;
}

SEC("tracepoint/timer/hrtimer_expire_entry")
int kotel_hrtimer_expire(struct trace_event_raw_hrtimer_expire_entry *ctx)
{
	if (!tick_fn || (__u64)ctx->function != tick_fn)
		return 0;
	__u32 k = 0;
	__u64 *last = bpf_map_lookup_elem(&tick_last, &k);
	if (!last)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (*last) {
		__u64 gap = now - *last;
		__u32 slot = hist_slot(gap);
		__u64 *c = bpf_map_lookup_elem(&tick_hist, &slot);
		if (c)
			__sync_fetch_and_add(c, 1);
		slot = HIST_SUM;
		c = bpf_map_lookup_elem(&tick_hist, &slot);
		if (c)
			__sync_fetch_and_add(c, gap);
		report(1, gap, 2);
	}
	*last = now;
	return 0;
}

SEC("tracepoint/power/cpu_idle")
int kotel_cpu_idle(struct trace_event_raw_cpu *ctx)
{
	__u32 k = 0;
	__u64 *last = bpf_map_lookup_elem(&tick_last, &k);
	if (last)
		*last = 0;
	return 0;
}
