/* biotop: block IO per (process, disk) during an iotracer capture.
 *
 *   block_io_start (submitter context, when the request is set up for a
 *   bio) or, when that hook is absent or missed, block_rq_issue: remember
 *   the request's submitter (tgid, comm, cgroup v2 id) and start time in a
 *   hash keyed by the request pointer.
 *   block_rq_complete: look the request up, and add its completed bytes,
 *   count and latency (start -> complete) to the (tgid, dev) aggregate.
 * Aggregation happens here: userspace reads one small map at the end. */
#include "common.bpf.h"

#define REQ_OP_MASK 0xff

struct bio_inflight {
	__u64 start_ns;
	__u64 cgid;
	__u32 tgid;
	__u32 _pad;
	char comm[TASK_COMM_LEN];
};

struct bio_key {
	__u32 tgid;
	__u32 dev; /* major << 20 | minor */
};

struct bio_val {
	__u64 read_bytes;
	__u64 write_bytes;
	__u64 read_ios;
	__u64 write_ios;
	__u64 lat_sum_ns;
	__u64 lat_max_ns;
	__u64 cgid;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct bio_inflight);
} bio_inflight_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct bio_key);
	__type(value, struct bio_val);
} bio_top SEC(".maps");

#define BS_UNTRACKED 0 /* completions of requests started before the capture */
#define BS_FULL 1      /* a map was full */
#define BS_MAX 2

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} bio_stats SEC(".maps");

static __always_inline void bstat(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&bio_stats, &i);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline void remember(struct request *rq, int overwrite)
{
	__u64 key = (__u64)rq;
	if (!overwrite && bpf_map_lookup_elem(&bio_inflight_map, &key))
		return;
	struct bio_inflight v = {};
	v.start_ns = bpf_ktime_get_ns();
	v.cgid = bpf_get_current_cgroup_id();
	v.tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(v.comm, sizeof(v.comm));
	if (bpf_map_update_elem(&bio_inflight_map, &key, &v, BPF_ANY))
		bstat(BS_FULL);
}

SEC("tp_btf/block_io_start")
int BPF_PROG(kotel_bio_start, struct request *rq)
{
	remember(rq, 1);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(kotel_bio_issue, struct request *rq)
{
	remember(rq, 0);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(kotel_bio_done, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	__u64 key = (__u64)rq;
	struct bio_inflight *in = bpf_map_lookup_elem(&bio_inflight_map, &key);
	if (!in) {
		bstat(BS_UNTRACKED);
		return 0;
	}
	__u64 now = bpf_ktime_get_ns();
	__u64 lat = now > in->start_ns ? now - in->start_ns : 0;
	struct bio_key k = {};
	k.tgid = in->tgid;
	struct gendisk *disk = BPF_CORE_READ(rq, q, disk);
	if (disk)
		k.dev = ((__u32)BPF_CORE_READ(disk, major) << 20) | (__u32)BPF_CORE_READ(disk, first_minor);
	struct bio_val *v = bpf_map_lookup_elem(&bio_top, &k);
	if (!v) {
		struct bio_val z = {};
		z.cgid = in->cgid;
		__builtin_memcpy(z.comm, in->comm, sizeof(z.comm));
		bpf_map_update_elem(&bio_top, &k, &z, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&bio_top, &k);
	}
	bpf_map_delete_elem(&bio_inflight_map, &key);
	if (!v) {
		bstat(BS_FULL);
		return 0;
	}
	__u32 op = BPF_CORE_READ(rq, cmd_flags) & REQ_OP_MASK;
	if (op == 0) {
		__sync_fetch_and_add(&v->read_bytes, nr_bytes);
		__sync_fetch_and_add(&v->read_ios, 1);
	} else if (op == 1) {
		__sync_fetch_and_add(&v->write_bytes, nr_bytes);
		__sync_fetch_and_add(&v->write_ios, 1);
	}
	__sync_fetch_and_add(&v->lat_sum_ns, lat);
	if (lat > v->lat_max_ns)
		v->lat_max_ns = lat;
	return 0;
}
