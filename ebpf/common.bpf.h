/* Shared helpers for kotel's BPF collectors.
 *
 * - struct event_hdr: the common header of every ring-buffer record
 *   (boot-time timestamp, pid/tid, comm, cgroup id, cpu). Mirrored in Rust by
 *   kotel_ebpf::EventHeader.
 * - lost[]: per-CPU counters of events the kernel side could not deliver,
 *   indexed by LOST_RINGBUF_FULL / LOST_RATE_LIMITED. Exported as
 *   kotel.ebpf.events.lost.
 * - a token-bucket rate limiter (global, lock-free, approximate).
 * - log2 histogram helper.
 */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define TASK_COMM_LEN 16
#define NSEC_PER_SEC 1000000000ULL

#define LOST_RINGBUF_FULL 0
#define LOST_RATE_LIMITED 1
#define LOST_MAX 2

/* Histograms: slot i counts values v (ns) with floor(log2(v)) == i (slot 0
 * also takes 0); slot HIST_SLOTS-1 takes everything larger. The extra slot
 * HIST_SUM holds the sum of all values. */
#define HIST_SLOTS 40
#define HIST_SUM HIST_SLOTS
#define HIST_LEN (HIST_SLOTS + 1)

struct event_hdr {
	__u64 boot_ns;   /* bpf_ktime_get_boot_ns() */
	__u64 cgroup_id; /* cgroup v2 id of the current task */
	__u32 pid;       /* tgid */
	__u32 tid;
	__u32 cpu;
	__u32 _pad;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LOST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

#define READ_ONCE_S64(x) (*(volatile __s64 *)&(x))

struct kotel_bucket {
	__u64 last_ns;
	__s64 tokens;
};

static __always_inline void count_lost(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&lost, &reason);
	if (v)
		*v += 1;
}

static __always_inline void fill_hdr(struct event_hdr *h)
{
	__u64 id = bpf_get_current_pid_tgid();
	h->boot_ns = bpf_ktime_get_boot_ns();
	h->cgroup_id = bpf_get_current_cgroup_id();
	h->pid = id >> 32;
	h->tid = (__u32)id;
	h->cpu = bpf_get_smp_processor_id();
	h->_pad = 0;
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/* Token bucket: `rate` tokens per second, at most `burst` stored. rate == 0
 * means unlimited. Lock-free: refills are claimed with a compare-and-swap on
 * last_ns, so concurrent CPUs may overshoot by a token or two. Returns 1 when
 * the caller may proceed. */
static __always_inline int tb_take(struct kotel_bucket *tb, __u64 rate, __u64 burst)
{
	if (rate == 0)
		return 1;
	__u64 now = bpf_ktime_get_ns();
	__u64 last = tb->last_ns;
	if (last == 0) {
		if (__sync_val_compare_and_swap(&tb->last_ns, 0, now) == 0)
			__sync_fetch_and_add(&tb->tokens, (__s64)burst);
	} else if (now > last) {
		__u64 elapsed = now - last;
		if (elapsed > 10 * NSEC_PER_SEC)
			elapsed = 10 * NSEC_PER_SEC;
		__u64 add = elapsed * rate / NSEC_PER_SEC;
		if (add > 0 && __sync_val_compare_and_swap(&tb->last_ns, last, now) == last) {
			__s64 room = (__s64)burst - tb->tokens;
			if (room < 0)
				room = 0;
			if ((__s64)add > room)
				add = (__u64)room;
			if (add > 0)
				__sync_fetch_and_add(&tb->tokens, (__s64)add);
		}
	}
	/* Fast reject without touching the shared cache line atomically. */
	if (READ_ONCE_S64(tb->tokens) <= 0)
		return 0;
	if (__sync_fetch_and_add(&tb->tokens, -1) <= 0) {
		__sync_fetch_and_add(&tb->tokens, 1);
		return 0;
	}
	return 1;
}

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0;
	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	return r;
}

static __always_inline __u32 hist_slot(__u64 v)
{
	__u32 s = log2_u64(v);
	return s >= HIST_SLOTS ? HIST_SLOTS - 1 : s;
}

/* Reserve a ring-buffer record of type T, counting a loss when full. */
#define RESERVE_EVENT(rb, T)                                                   \
	({                                                                     \
		T *__e = bpf_ringbuf_reserve(&(rb), sizeof(T), 0);             \
		if (!__e)                                                      \
			count_lost(LOST_RINGBUF_FULL);                         \
		__e;                                                           \
	})

char LICENSE[] SEC("license") = "GPL";
