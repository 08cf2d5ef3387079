//! Positive evidence for the hop limit: a reply from a traced destination that dies in the
//! node's forwarding path because its TTL (hop limit) ran out.
//!
//! Why `skb:kfree_skb`: IMDS sends its token response with the instance's PUT response hop
//! limit as TTL; a reply to a caller one routing hop away (a pod behind a veth or bridge)
//! arrives at the node with TTL 1, and `ip_forward` (`ip6_forward`) drops it there:
//! `if (ip_hdr(skb)->ttl <= 1) goto too_many_hops;` -> `kfree_skb_reason(skb,
//! SKB_DROP_REASON_IP_INHDR)` (net/ipv4/ip_forward.c, 5.19+; net/ipv6/ip6_output.c). The
//! tracepoint fires there, in the node's network namespace, with the pod as destination
//! (measured on 6.18, pod -> node -> imds namespaces). It exists on every kernel of the
//! matrix and loads as `tp_btf` where kprobes and fentry are refused; eBPF datapaths
//! (Cilium, Calico eBPF) forward without `ip_forward`, so there no drop is seen here.
//!
//! Filter, all in the kernel, cheapest first: the drop reason (or, without one, no owning
//! socket), an IPv4/IPv6 TCP header whose source is a traced destination (address and port,
//! the send hook's `TARGETS`), TTL / hop limit <= 1. Source and TTL alone also match
//! replies purged from a receive queue when the caller's socket closes (`QUEUE_PURGE`) and
//! late replies to a node socket already gone (`NO_SOCKET`): the reason, or the route,
//! tells forwarding apart. The server retransmits the lost reply (about 16 drops per lost
//! PUT), so one event per connection is sent within `HOP_DROP_WINDOW_NS`; the rest are
//! counted (`HOP_DROP_DEDUPLICATED`).
//!
//! Two entry points, chosen by userspace from the kernel's BTF: the tracepoint has 2
//! arguments on 5.10, 3 (`reason`) on 5.17+ and 4 (`rx_sk`) on 6.11+, and a `tp_btf`
//! program that reads an argument the kernel's prototype lacks is refused by the verifier.

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::{btf_tracepoint, map},
    maps::LruHashMap,
    programs::BtfTracePointContext,
};
use imds_snoop_common::{
    AF_INET, AF_INET6, DROP_HOP_DROP, DropConfig, EVENT_HOP_DROP, HOP_DROP_BY_REASON,
    HOP_DROP_BY_ROUTE, HOP_DROP_DEDUPLICATED, HOP_DROP_WINDOW_NS, HopDropEvent, HopDropKey,
};

use crate::{
    capture::{EVENTS, count_drop, wake_flags},
    kernel::{is_target, offsets, read},
};

const IPPROTO_TCP: u8 = 6;
/// `RTCF_LOCAL` (include/uapi/linux/in_route.h): the route delivers to this host.
const RTCF_LOCAL: u32 = 0x8000_0000;

/// Set by userspace at load (`DropConfig`), frozen like the other globals.
#[unsafe(no_mangle)]
static DROP_CONFIG: DropConfig = DropConfig {
    skb_head: 0,
    skb_network_header: 0,
    skb_sk: 0,
    skb_dev: 0,
    skb_refdst: 0,
    dev_nd_net: 0,
    rt_flags: 0,
    ip_inhdr: 0,
};

/// When each connection's drop was last reported (boot ns): about 16 drops per lost reply.
#[map]
static HOP_DROPS_SEEN: LruHashMap<HopDropKey, u64> = LruHashMap::with_max_entries(1024, 0);

#[inline(always)]
fn config() -> DropConfig {
    // SAFETY: a plain read of our own static; volatile so the zero initialiser is not folded
    // (the real values are patched in at load).
    unsafe { core::ptr::read_volatile(&DROP_CONFIG) }
}

// Kernels with a drop reason: only `SKB_DROP_REASON_IP_INHDR` (the forwarding TTL check's;
// its value, read from this kernel's BTF, is in `DROP_CONFIG.ip_inhdr`).
// proto: tp_btf kfree_skb include/trace/events/skb.h 5.17..6.10 : TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason)
// proto: tp_btf kfree_skb include/trace/events/skb.h 6.11..6.18 : TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk)
// proven: 6.1 6.12 6.18 (the kernel matrix's drop column, x86_64 and arm64)
#[btf_tracepoint(function = "kfree_skb")]
fn imds_hop_drop(ctx: BtfTracePointContext) -> u32 {
    let reason = ctx.arg::<u64>(2) as u32;
    if reason == config().ip_inhdr {
        let _ = on_drop(ctx.arg::<*const u8>(0), Some(reason));
    }
    0
}

// Kernels without a reason (5.10..5.16; userspace also picks it where the kernel's enum has
// no IP_INHDR). Forwarding is told apart by the packet itself: a forwarded packet has no
// owning socket (a veth crossing orphans it, `__dev_forward_skb`; replies purged at socket
// close belong to their socket) and a route that is not local delivery (`RTCF_LOCAL` unset
// in its `rtable`: set for every packet routed to this host, so a late reply to a closed
// node socket, dropped by TCP with no socket, is left out; a packet dropped before routing
// has no route at all). TTL <= 1 on such a packet means `ip_forward` dropped it for its
// TTL. IPv4 only: IPv6 routes carry no such flag.
// proto: tp_btf kfree_skb include/trace/events/skb.h 5.5..5.16 : TP_PROTO(struct sk_buff *skb, void *location)
// proven: 5.10 (the kernel matrix's drop column, x86_64 and arm64)
#[btf_tracepoint(function = "kfree_skb")]
fn imds_hop_drop_route(ctx: BtfTracePointContext) -> u32 {
    let _ = on_drop(ctx.arg::<*const u8>(0), None);
    0
}

/// `reason`: the drop reason when the kernel gave one (already IP_INHDR); `None`: check the
/// socket and the route instead.
#[inline(always)]
fn on_drop(skb: *const u8, reason: Option<u32>) -> Result<(), i32> {
    let c = config();
    if reason.is_none() && !read::<*const u8>(skb, c.skb_sk)?.is_null() {
        return Ok(());
    }
    let head = read::<*const u8>(skb, c.skb_head)?;
    let nh = read::<u16>(skb, c.skb_network_header)?;
    let ip = head.wrapping_add(nh as usize);
    // IPv4 header without options and the ports: one read.
    let v4: [u8; 24] = read(ip, 0)?;
    let (family, ttl, src, dst, ports) = match v4[0] >> 4 {
        4 => {
            if v4[8] > 1 || v4[9] != IPPROTO_TCP {
                return Ok(());
            }
            let ihl = (v4[0] & 0x0f) as u32 * 4;
            let ports = if ihl == 20 {
                [v4[20], v4[21], v4[22], v4[23]]
            } else {
                read::<[u8; 4]>(ip, ihl)?
            };
            let src = u32::from_ne_bytes([v4[12], v4[13], v4[14], v4[15]]);
            let dst = u32::from_ne_bytes([v4[16], v4[17], v4[18], v4[19]]);
            (AF_INET, v4[8], [src, 0, 0, 0], [dst, 0, 0, 0], ports)
        }
        // With a reason only (see `imds_hop_drop_route`). IMDS replies carry no extension
        // headers: the next header is TCP or this is not one.
        6 if reason.is_some() => {
            if v4[7] > 1 || v4[6] != IPPROTO_TCP {
                return Ok(());
            }
            let h: [u32; 11] = read(ip, 0)?;
            (
                AF_INET6,
                v4[7],
                [h[2], h[3], h[4], h[5]],
                [h[6], h[7], h[8], h[9]],
                h[10].to_ne_bytes(),
            )
        }
        _ => return Ok(()),
    };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    if !is_target(family, sport, &src) {
        return Ok(());
    }
    // IPv4 also with a reason: ip_rcv_core gives IP_INHDR to malformed headers too, before
    // any route is set; only a forwarded packet has a route that is not local.
    if family == AF_INET {
        let refdst = read::<usize>(skb, c.skb_refdst)? & !1usize;
        if refdst == 0 {
            return Ok(());
        }
        let flags = read::<u32>(refdst as *const u8, c.rt_flags)?;
        if flags & RTCF_LOCAL != 0 {
            return Ok(());
        }
    }
    let key = HopDropKey {
        laddr: dst,
        raddr: src,
        lport: dport,
        rport: sport,
        family: family as u32,
    };
    // SAFETY: a helper without arguments that reads the clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: the value is copied out at once; an LRU entry may be evicted, not freed under us.
    if let Some(&last) = unsafe { HOP_DROPS_SEEN.get(key) }
        && now.wrapping_sub(last) < HOP_DROP_WINDOW_NS
    {
        count_drop(HOP_DROP_DEDUPLICATED);
        return Ok(());
    }
    let _ = HOP_DROPS_SEEN.insert(key, now, 0);
    let o = offsets();
    let netns = read::<*const u8>(skb, c.skb_dev)
        .and_then(|dev| read::<*const u8>(dev, c.dev_nd_net))
        .and_then(|net| read::<u32>(net, o.net_inum))
        .unwrap_or(0);
    let ev = HopDropEvent {
        kind: EVENT_HOP_DROP,
        ttl,
        how: if reason.is_some() {
            HOP_DROP_BY_REASON
        } else {
            HOP_DROP_BY_ROUTE
        },
        family,
        reason: reason.unwrap_or(0),
        netns,
        ts_ns: now,
        laddr: dst,
        raddr: src,
        lport: dport,
        rport: sport,
        _pad: 0,
    };
    if EVENTS.output::<HopDropEvent>(&ev, wake_flags()).is_err() {
        count_drop(DROP_HOP_DROP);
    }
    Ok(())
}
