/* dropwatch: skb:kfree_skb.
 * Always: per-reason drop counters (drop_counts).
 * Events: one ring-buffer record per drop that passes the rodata filters and
 * the token bucket; optional kernel stack (own, slower token bucket). */
#include "common.bpf.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMPV6_ 58
#define NO_HEADER 0xffff

/* Filters, set from config before load. */
const volatile __u8 filter_l4_proto = 0;   /* IPPROTO_*, 0 = any */
const volatile __u16 filter_port = 0;      /* source or destination port, 0 = any */
const volatile __u8 reason_include_on = 0; /* 1: only reasons in reason_include */
const volatile __u64 reason_include[4] = {};
const volatile __u64 reason_exclude[4] = {}; /* reasons < 256; bit set = skip */
const volatile __u64 event_rate = 100;     /* events/s, 0 = unlimited */
const volatile __u64 stack_rate = 0;       /* stacks/s, 0 = no stacks */

struct drop_event {
	struct event_hdr hdr;
	__u64 location;
	__u64 skbaddr;
	__u32 reason;
	__u32 netns_ino;
	__u32 ifindex;
	__u32 len;
	__s32 stack_id;
	__u16 eth_proto;
	__u16 sport;
	__u16 dport;
	__u8 l4_proto;
	__u8 ip_version;
	__u8 saddr[16];
	__u8 daddr[16];
	char ifname[16];
	__u64 sock_cgroup_id; /* cgroup v2 id of the owning socket, 0 = none */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Per-reason drop counters: reasons below 256 (all core reasons) in a
 * per-CPU array (cheapest), subsystem reasons (subsys << 16 | code) in a
 * per-CPU hash. */
#define ARRAY_REASONS 256
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ARRAY_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} drop_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} drop_counts_subsys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 1024);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
} stacks SEC(".maps");

/* [0] events, [1] stacks */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct kotel_bucket);
} buckets SEC(".maps");

static __always_inline int bit_set(const volatile __u64 *mask, __u32 reason)
{
	if (reason >= 256)
		return 0;
	return (mask[reason / 64] >> (reason % 64)) & 1;
}

static __always_inline void count_reason(__u32 reason)
{
	__u64 *v;
	if (reason < ARRAY_REASONS) {
		v = bpf_map_lookup_elem(&drop_counts, &reason);
		if (v)
			__sync_fetch_and_add(v, 1);
		return;
	}
	v = bpf_map_lookup_elem(&drop_counts_subsys, &reason);
	if (v) {
		__sync_fetch_and_add(v, 1);
		return;
	}
	__u64 one = 1;
	if (bpf_map_update_elem(&drop_counts_subsys, &reason, &one, BPF_NOEXIST)) {
		v = bpf_map_lookup_elem(&drop_counts_subsys, &reason);
		if (v)
			__sync_fetch_and_add(v, 1);
	}
}

struct parsed {
	__u16 sport, dport;
	__u8 l4_proto, ip_version;
	__u8 saddr[16], daddr[16];
};

static __always_inline void parse_skb(struct sk_buff *skb, __u16 eth_proto, struct parsed *p)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u16 l4off;

	if (!head || nh == NO_HEADER)
		return;
	if (eth_proto == ETH_P_IP) {
		struct iphdr ip;
		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh))
			return;
		if (ip.version != 4)
			return;
		p->ip_version = 4;
		p->l4_proto = ip.protocol;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		l4off = nh + ip.ihl * 4;
	} else if (eth_proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return;
		if (ip6.version != 6)
			return;
		p->ip_version = 6;
		p->l4_proto = ip6.nexthdr;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		l4off = nh + sizeof(ip6);
	} else {
		return;
	}
	if (th != NO_HEADER && th > nh)
		l4off = th;
	if (p->l4_proto == IPPROTO_TCP_ || p->l4_proto == IPPROTO_UDP_) {
		__be16 ports[2];
		if (bpf_probe_read_kernel(ports, sizeof(ports), head + l4off) == 0) {
			p->sport = bpf_ntohs(ports[0]);
			p->dport = bpf_ntohs(ports[1]);
		}
	}
}

SEC("tracepoint/skb/kfree_skb")
int kotel_kfree_skb(struct trace_event_raw_kfree_skb *ctx)
{
	__u32 reason = BPF_CORE_READ(ctx, reason);
	count_reason(reason);

	if (reason_include_on && !bit_set(reason_include, reason))
		return 0;
	if (bit_set(reason_exclude, reason))
		return 0;

	struct sk_buff *skb = BPF_CORE_READ(ctx, skbaddr);
	__u16 eth_proto = BPF_CORE_READ(ctx, protocol);
	struct parsed p = {};
	/* Parse headers before the rate limit only when a filter needs them. */
	int parsed = 0;
	if (filter_l4_proto || filter_port) {
		parse_skb(skb, eth_proto, &p);
		parsed = 1;
		if (filter_l4_proto && p.l4_proto != filter_l4_proto)
			return 0;
		if (filter_port && p.sport != filter_port && p.dport != filter_port)
			return 0;
	}

	__u32 k = 0;
	struct kotel_bucket *tb = bpf_map_lookup_elem(&buckets, &k);
	if (!tb || !tb_take(tb, event_rate, event_rate)) {
		count_lost(LOST_RATE_LIMITED);
		return 0;
	}
	if (!parsed)
		parse_skb(skb, eth_proto, &p);

	struct drop_event *e = RESERVE_EVENT(events, struct drop_event);
	if (!e)
		return 0;
	fill_hdr(&e->hdr);
	e->location = (__u64)BPF_CORE_READ(ctx, location);
	e->skbaddr = (__u64)skb;
	e->reason = reason;
	e->eth_proto = eth_proto;
	e->sport = p.sport;
	e->dport = p.dport;
	e->l4_proto = p.l4_proto;
	e->ip_version = p.ip_version;
	__builtin_memcpy(e->saddr, p.saddr, 16);
	__builtin_memcpy(e->daddr, p.daddr, 16);
	e->len = BPF_CORE_READ(skb, len);

	struct net_device *dev = BPF_CORE_READ(skb, dev);
	struct net *net = 0;
	if (dev) {
		e->ifindex = BPF_CORE_READ(dev, ifindex);
		bpf_probe_read_kernel_str(e->ifname, sizeof(e->ifname), dev->name);
		net = BPF_CORE_READ(dev, nd_net.net);
	} else {
		e->ifindex = 0;
		e->ifname[0] = 0;
	}
	/* The socket's cgroup names the container that owns the traffic even
	 * when the drop runs in softirq context on behalf of another task. */
	struct sock *sk = 0;
	/* rx_sk (kernel 6.11+) is the receiving socket a packet was dropped
	 * for; skb->sk is only set once a socket owns the packet (TX path). */
	if (bpf_core_field_exists(ctx->rx_sk))
		sk = (struct sock *)BPF_CORE_READ(ctx, rx_sk);
	if (!sk)
		sk = BPF_CORE_READ(skb, sk);
	e->sock_cgroup_id = 0;
	if (sk) {
		struct cgroup *cg = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
		if (cg)
			e->sock_cgroup_id = BPF_CORE_READ(cg, kn, id);
		if (!net)
			net = BPF_CORE_READ(sk, __sk_common.skc_net.net);
	}
	e->netns_ino = net ? BPF_CORE_READ(net, ns.inum) : 0;

	e->stack_id = -1;
	if (stack_rate) {
		k = 1;
		struct kotel_bucket *sb = bpf_map_lookup_elem(&buckets, &k);
		if (sb && tb_take(sb, stack_rate, stack_rate))
			e->stack_id = bpf_get_stackid(ctx, &stacks, 0);
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}
