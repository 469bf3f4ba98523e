/* net_rx_latency: how long a received TCP packet took from the driver
 * (skb->tstamp, CLOCK_REALTIME software receive timestamp) to
 *   stage 0: the network stack  (tp_btf/netif_receive_skb)
 *   stage 1: TCP                (tp_btf/tcp_probe, in tcp_rcv_established)
 *   stage 2: user space         (tp_btf/skb_copy_datagram_iovec)
 * Always: log2 histogram per stage. Events past the per-stage threshold.
 *
 * Clock domains: skb->tstamp is CLOCK_REALTIME only when tstamp_type is
 * SKB_CLOCK_REALTIME; forwarded/EDT packets carry CLOCK_MONOTONIC or TAI
 * delivery times. BPF has no realtime clock, so userspace keeps
 * clock_offset[0] = REALTIME - MONOTONIC up to date and we compute
 * now_real = bpf_ktime_get_ns() + offset. Anything that is not a realtime
 * stamp, or gives a latency < 0 or > 1 h, is skipped and counted. */
#include "common.bpf.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP_ 6
#define NO_HEADER 0xffff
#define NR_STAGES 3
#define MAX_LATENCY (3600ULL * NSEC_PER_SEC)

const volatile __u64 threshold_ns[NR_STAGES] = { 5000000, 10000000, 115000000 };
const volatile __u64 event_rate = 100;
const volatile __u32 exclude_netns = 0; /* netns inode to ignore (e.g. the host's), 0 = none */

struct netrx_event {
	struct event_hdr hdr;
	__u64 latency_ns;
	__u64 threshold_ns;
	__u32 seq;
	__u32 ack_seq;
	__u32 netns_ino;
	__u32 ifindex;
	__u32 len;
	__u16 sport;
	__u16 dport;
	__u8 stage;
	__u8 ip_version;
	__u8 tcp_state;
	__u8 _pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 128 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} clock_offset SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_STAGES * HIST_LEN);
	__type(key, __u32);
	__type(value, __u64);
} latency_hist SEC(".maps");

/* [0] no timestamp, [1] not a realtime stamp, [2] implausible latency */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} skipped SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kotel_bucket);
} buckets SEC(".maps");

static __always_inline void skip(__u32 why)
{
	__u64 *c = bpf_map_lookup_elem(&skipped, &why);
	if (c)
		__sync_fetch_and_add(c, 1);
}

struct tcp_info_ {
	__u8 ip_version;
	__u16 sport, dport;
	__u32 seq, ack_seq;
	__u8 saddr[16], daddr[16];
};

/* Parse IPv4/IPv6 + TCP headers; returns 0 if this is a TCP packet. */
static __always_inline int parse_tcp(const struct sk_buff *skb, struct tcp_info_ *p)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u16 proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	__u16 l4off;
	__u8 l4;

	if (!head || nh == NO_HEADER)
		return -1;
	if (proto == ETH_P_IP) {
		struct iphdr ip;
		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) || ip.version != 4)
			return -1;
		p->ip_version = 4;
		l4 = ip.protocol;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		l4off = nh + ip.ihl * 4;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh) || ip6.version != 6)
			return -1;
		p->ip_version = 6;
		l4 = ip6.nexthdr;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		l4off = nh + sizeof(ip6);
	} else {
		return -1;
	}
	if (l4 != IPPROTO_TCP_)
		return -1;
	if (th != NO_HEADER && th > nh)
		l4off = th;
	struct tcphdr tcp;
	if (bpf_probe_read_kernel(&tcp, sizeof(tcp), head + l4off))
		return -1;
	p->sport = bpf_ntohs(tcp.source);
	p->dport = bpf_ntohs(tcp.dest);
	p->seq = bpf_ntohl(tcp.seq);
	p->ack_seq = bpf_ntohl(tcp.ack_seq);
	return 0;
}

/* Cheap check (one header byte) whether this is an IPv4/IPv6 TCP packet. */
static __always_inline int is_tcp(const struct sk_buff *skb)
{
	__u16 proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u8 l4 = 0;
	if (!head || nh == NO_HEADER)
		return 0;
	if (proto == ETH_P_IP)
		bpf_probe_read_kernel(&l4, 1, head + nh + 9);
	else if (proto == ETH_P_IPV6)
		bpf_probe_read_kernel(&l4, 1, head + nh + 6);
	return l4 == IPPROTO_TCP_;
}

static __always_inline void observe(const struct sk_buff *skb, struct sock *sk, __u32 stage)
{
	__u64 ts = BPF_CORE_READ(skb, tstamp);
	if (!ts) {
		skip(0);
		return;
	}
	if (bpf_core_field_exists(skb->tstamp_type) && BPF_CORE_READ_BITFIELD_PROBED(skb, tstamp_type) != 0) {
		skip(1);
		return;
	}
	__u32 k = 0;
	__u64 *off = bpf_map_lookup_elem(&clock_offset, &k);
	if (!off || !*off)
		return;
	__u64 now = bpf_ktime_get_ns() + *off;
	if (now < ts || now - ts > MAX_LATENCY) {
		skip(2);
		return;
	}
	if (!is_tcp(skb))
		return;
	__u64 lat = now - ts;

	k = stage * HIST_LEN + hist_slot(lat);
	__u64 *c = bpf_map_lookup_elem(&latency_hist, &k);
	if (c)
		__sync_fetch_and_add(c, 1);
	k = stage * HIST_LEN + HIST_SUM;
	c = bpf_map_lookup_elem(&latency_hist, &k);
	if (c)
		__sync_fetch_and_add(c, lat);

	__u64 thr = stage == 0 ? threshold_ns[0] : stage == 1 ? threshold_ns[1] : threshold_ns[2];
	if (lat < thr)
		return;

	struct tcp_info_ p = {};
	if (parse_tcp(skb, &p))
		return;
	struct net *net = 0;
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	if (dev)
		net = BPF_CORE_READ(dev, nd_net.net);
	if (!net && sk)
		net = BPF_CORE_READ(sk, __sk_common.skc_net.net);
	__u32 ino = net ? BPF_CORE_READ(net, ns.inum) : 0;
	if (exclude_netns && ino == exclude_netns)
		return;

	k = 0;
	struct kotel_bucket *tb = bpf_map_lookup_elem(&buckets, &k);
	if (!tb || !tb_take(tb, event_rate, event_rate)) {
		count_lost(LOST_RATE_LIMITED);
		return;
	}
	struct netrx_event *e = RESERVE_EVENT(events, struct netrx_event);
	if (!e)
		return;
	fill_hdr(&e->hdr);
	/* The socket's cgroup names the container the traffic is for; at the
	 * TCP stage the current task is whoever ran the softirq. */
	if (sk) {
		struct cgroup *cg = BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
		if (cg)
			e->hdr.cgroup_id = BPF_CORE_READ(cg, kn, id);
	}
	e->latency_ns = lat;
	e->threshold_ns = thr;
	e->seq = p.seq;
	e->ack_seq = p.ack_seq;
	e->netns_ino = ino;
	e->ifindex = BPF_CORE_READ(skb, skb_iif);
	e->len = BPF_CORE_READ(skb, len);
	e->sport = p.sport;
	e->dport = p.dport;
	e->stage = stage;
	e->ip_version = p.ip_version;
	e->tcp_state = sk ? BPF_CORE_READ(sk, __sk_common.skc_state) : 0;
	e->_pad = 0;
	__builtin_memcpy(e->saddr, p.saddr, 16);
	__builtin_memcpy(e->daddr, p.daddr, 16);
	bpf_ringbuf_submit(e, 0);
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(kotel_netif_receive_skb, struct sk_buff *skb)
{
	observe(skb, 0, 0);
	return 0;
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(kotel_tcp_probe, struct sock *sk, const struct sk_buff *skb)
{
	observe(skb, sk, 1);
	return 0;
}

SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(kotel_skb_copy_datagram, const struct sk_buff *skb, int len)
{
	observe(skb, BPF_CORE_READ(skb, sk), 2);
	return 0;
}
