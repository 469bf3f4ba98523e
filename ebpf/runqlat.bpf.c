/* runqlat: run-queue latency (wakeup or preemption -> switch-in), host and
 * per cgroup, plus voluntary/involuntary context switches and per-cgroup
 * on-CPU time.
 *
 * Hot path cost is O(1): one task-local-storage lookup per wakeup, and per
 * switch one per-CPU state slot, one task-storage lookup, two per-CPU array
 * slots and at most two per-CPU hash lookups (the cgroups of prev and next).
 * Nothing goes through a ring buffer.
 *
 * Cgroup key (cgroup_mode, set by userspace before load):
 *   0: the task's cgroup v2 id (dfl_cgrp->kn->id, = bpf_get_current_cgroup_id)
 *   1: the kernfs id of the task's cpu-controller cgroup (the v1 `cpu`
 *      hierarchy on hybrid hosts: where CPU limits and containers live). */
#include "common.bpf.h"

#define TASK_RUNNING 0

/* switches[] indexes */
#define SW_VOLUNTARY 0
#define SW_INVOLUNTARY 1
/* overflow[] indexes */
#define OV_CGROUP_FULL 0
#define OV_TOP_FULL 1
#define OV_ENQUEUED_FULL 2

/* per-cgroup value layout: HIST_SLOTS wait slots, wait sum, run sum */
#define CG_WAIT_SUM HIST_SLOTS
#define CG_RUN_SUM (HIST_SLOTS + 1)
#define CG_LEN (HIST_SLOTS + 2)

const volatile __u32 cgroup_mode = 0;

struct cg_stats {
	__u64 v[CG_LEN];
};

static const struct cg_stats zero_stats = {};

struct cpu_state {
	__u64 ts;   /* when the current task was switched in */
	__u64 cgid; /* its cgroup (0 for the idle task) */
};

struct top_entry {
	__u64 wait_ns;
	__u64 waits;
	__u64 cgid;
	char comm[TASK_COMM_LEN];
};

/* wakeup / preemption timestamp per thread id (deleted at switch-in; the
 * loader in use cannot create task-local storage maps) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} enqueued SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_state);
} cpu_state SEC(".maps");

/* host histogram: one entry, v[slot] and v[HIST_SUM] */
struct hist {
	__u64 v[HIST_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hist);
} host_hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} switches SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} overflow SEC(".maps");

/* cgroup id -> stats; capacity set by userspace (max_cgroups) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 2048);
	__type(key, __u64);
	__type(value, struct cg_stats);
} cgroups SEC(".maps");

/* Capture support (waitrate): when watch[0] != 0, the waits of tasks in that
 * cgroup are also summed per task into `top`. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} watch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct top_entry);
} top SEC(".maps");

/* Direct (BTF) loads: tp_btf arguments are kernel pointers the verifier
 * lets us walk, several times cheaper than bpf_probe_read_kernel per hop. */
static __always_inline __u64 task_cgroup(struct task_struct *t)
{
	struct css_set *cs = t->cgroups;
	if (!cs)
		return 0;
	if (cgroup_mode == 1) {
		struct cgroup_subsys_state *css =
			cs->subsys[bpf_core_enum_value(enum cgroup_subsys_id, cpu_cgrp_id)];
		if (!css || !css->cgroup || !css->cgroup->kn)
			return 0;
		return css->cgroup->kn->id;
	}
	if (!cs->dfl_cgrp || !cs->dfl_cgrp->kn)
		return 0;
	return cs->dfl_cgrp->kn->id;
}

static __always_inline struct cg_stats *cg_get(__u64 cgid)
{
	struct cg_stats *s = bpf_map_lookup_elem(&cgroups, &cgid);
	if (s)
		return s;
	bpf_map_update_elem(&cgroups, &cgid, &zero_stats, BPF_NOEXIST);
	s = bpf_map_lookup_elem(&cgroups, &cgid);
	if (!s) {
		__u32 k = OV_CGROUP_FULL;
		__u64 *c = bpf_map_lookup_elem(&overflow, &k);
		if (c)
			__sync_fetch_and_add(c, 1);
	}
	return s;
}

static __always_inline void stamp(struct task_struct *p, __u64 now)
{
	__u32 tid = p->pid;
	if (bpf_map_update_elem(&enqueued, &tid, &now, BPF_ANY)) {
		__u32 k = OV_ENQUEUED_FULL;
		__u64 *c = bpf_map_lookup_elem(&overflow, &k);
		if (c)
			__sync_fetch_and_add(c, 1);
	}
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(kotel_runq_wakeup, struct task_struct *p)
{
	if (!p)
		return 0;
	stamp(p, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(kotel_runq_wakeup_new, struct task_struct *p)
{
	if (!p)
		return 0;
	stamp(p, bpf_ktime_get_ns());
	return 0;
}

static __always_inline void record_top(struct task_struct *next, __u64 cgid, __u64 delta)
{
	__u32 k = 0;
	__u64 *w = bpf_map_lookup_elem(&watch, &k);
	if (!w || *w == 0 || *w != cgid)
		return;
	__u32 tid = BPF_CORE_READ(next, pid);
	struct top_entry *e = bpf_map_lookup_elem(&top, &tid);
	if (!e) {
		struct top_entry n = { .cgid = cgid };
		bpf_probe_read_kernel_str(n.comm, sizeof(n.comm), next->comm);
		if (bpf_map_update_elem(&top, &tid, &n, BPF_NOEXIST)) {
			k = OV_TOP_FULL;
			__u64 *c = bpf_map_lookup_elem(&overflow, &k);
			if (c)
				__sync_fetch_and_add(c, 1);
		}
		e = bpf_map_lookup_elem(&top, &tid);
		if (!e)
			return;
	}
	__sync_fetch_and_add(&e->wait_ns, delta);
	__sync_fetch_and_add(&e->waits, 1);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(kotel_runq_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 k = 0;

	/* 1. prev leaves the CPU: its on-CPU time, the switch kind, and a
	 *    run-queue stamp when it stays runnable (preempted). */
	struct cpu_state *cs = bpf_map_lookup_elem(&cpu_state, &k);
	if (!cs)
		return 0;
	__u64 next_cgid = (next && next->pid) ? task_cgroup(next) : 0;
	struct cg_stats *next_stats = 0;
	if (cs->cgid && cs->ts && now > cs->ts) {
		struct cg_stats *s = cg_get(cs->cgid);
		if (s)
			s->v[CG_RUN_SUM] += now - cs->ts;
		/* same cgroup both sides (common): one lookup */
		if (cs->cgid == next_cgid)
			next_stats = s;
	}
	if (prev && prev->pid) {
		__u32 kind = SW_VOLUNTARY;
		if (preempt || prev_state == TASK_RUNNING) {
			kind = SW_INVOLUNTARY;
			stamp(prev, now);
		}
		__u64 *c = bpf_map_lookup_elem(&switches, &kind);
		if (c)
			__sync_fetch_and_add(c, 1);
	}

	/* 2. next enters: its wait since wakeup/preemption. */
	cs->ts = now;
	cs->cgid = next_cgid;
	if (!next || next->pid == 0)
		return 0;
	__u64 cgid = next_cgid;
	__u32 tid = next->pid;
	__u64 *ts = bpf_map_lookup_elem(&enqueued, &tid);
	if (!ts)
		return 0;
	__u64 then = *ts;
	bpf_map_delete_elem(&enqueued, &tid);
	if (now <= then)
		return 0;
	__u64 delta = now - then;
	__u32 slot = hist_slot(delta);

	k = 0;
	struct hist *h = bpf_map_lookup_elem(&host_hist, &k);
	if (h && slot < HIST_SLOTS) {
		h->v[slot] += 1;
		h->v[HIST_SUM] += delta;
	}

	if (cgid) {
		struct cg_stats *s = next_stats ? next_stats : cg_get(cgid);
		if (s && slot < HIST_SLOTS) {
			s->v[slot] += 1;
			s->v[CG_WAIT_SUM] += delta;
		}
		record_top(next, cgid, delta);
	}
	return 0;
}

/* A removed cgroup's entry goes with it (ids are not reused). Only the
 * hierarchy the keys come from: kernfs ids of different hierarchies overlap. */
SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(kotel_runq_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	if (!cgrp)
		return 0;
	struct cgroup_root *root = BPF_CORE_READ(cgrp, root);
	if (cgroup_mode == 1) {
		int cpu = bpf_core_enum_value(enum cgroup_subsys_id, cpu_cgrp_id);
		if (!(BPF_CORE_READ(root, subsys_mask) & (1U << cpu)))
			return 0;
	} else if (BPF_CORE_READ(root, hierarchy_id) != 0) {
		return 0;
	}
	__u64 id = BPF_CORE_READ(cgrp, kn, id);
	bpf_map_delete_elem(&cgroups, &id);
	return 0;
}
