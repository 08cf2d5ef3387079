//! The status line of IMDS responses, for the outcome of each call (`-> 200`, `-> 401`).
//!
//! Why `cgroup_skb` ingress on the root cgroup v2: it exists on every kernel in the matrix
//! (4.10+) and loads where fentry/fexit and kprobes are refused; it runs once per received
//! packet of every socket in the cgroup tree (so every container, every network namespace),
//! after the network stack has accepted the packet for a local socket. A reply that dies on
//! the way (the hop limit) never reaches it, which is exactly what the hop-limit warning needs.
//!
//! The program reads the IP and TCP headers, and only for a packet from a traced destination
//! (source address and port in `TARGETS`) with a payload that starts `HTTP/1.`, parses the
//! three-digit status here, in the kernel: only the status code leaves it, never a byte of
//! the body (tokens and credentials are in bodies). A reset or a close (FIN) without payload
//! from a traced destination is reported too (`STATUS_RESET`, `STATUS_CLOSED`), so a
//! request whose connection ended without a response is told apart from silence (the hop
//! limit). It always lets the packet through.

use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, macros::cgroup_skb, programs::SkBuffContext};
use imds_snoop_common::{
    AF_INET, AF_INET6, DROP_RESPONSE, EVENT_RESPONSE, ResponseEvent, STATUS_CLOSED, STATUS_RESET,
};

use crate::{
    capture::{EVENTS, count_drop, wake_flags},
    kernel::{is_target, port_is_target},
};

const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

// Every packet received by a socket in the cgroup tree it is attached to (the root): the
// status line of IMDS responses. Returns 1: the packet is always allowed. The "prototype" is
// the program type's context; the check is that the kernel's BTF has `struct __sk_buff`.
// proto: cgroup_skb ingress include/uapi/linux/bpf.h 4.10..6.18 : int (struct __sk_buff *skb)
// proven: 5.10 6.1 6.12 6.18 (fentry, kprobe, tracepoint)
#[cgroup_skb(ingress)]
fn imds_response(ctx: SkBuffContext) -> i32 {
    on_ingress(&ctx);
    1
}

#[inline(always)]
fn on_ingress(ctx: &SkBuffContext) {
    let _ = try_ingress(ctx);
}

#[inline(always)]
fn try_ingress(ctx: &SkBuffContext) -> Result<(), i64> {
    // Cheapest test first, for every packet the node receives: the receiving socket's
    // remote port, a context field (the verifier turns it into two loads, the skb's socket
    // and its port: no helper call, no packet read), against the target ports' bit set
    // (one more load). On little-endian kernels `__sk_buff.remote_port` holds the
    // network-order port in its upper 16 bits (a historical quirk), elsewhere in the lower
    // ones, the other half zero: OR-ing the halves takes whichever is set, without a branch.
    // SAFETY: the context pointer the kernel passed in.
    let remote_port = unsafe { (*ctx.skb.skb).remote_port };
    let port_be = (remote_port | remote_port >> 16) as u16;
    if !port_is_target(u16::from_be(port_be)) {
        return Ok(());
    }
    // `bpf_skb_load_bytes` (what `load` calls) copes with non-linear skbs; offsets are from
    // the network header, where cgroup_skb programs start. This runs for every packet the
    // node receives, so it loads whole headers at once: one helper call for an IPv4 packet
    // without options (header and ports), two for IPv6 or options.
    let v4: [u8; 24] = ctx.load(0)?;
    let (family, l4, src, dst, ports) = match v4[0] >> 4 {
        4 => {
            if v4[9] != IPPROTO_TCP {
                return Ok(());
            }
            let ihl = (v4[0] & 0x0f) as usize * 4;
            // Addresses in network order, as native u32 words: the form of `Target::addr`.
            let src = u32::from_ne_bytes([v4[12], v4[13], v4[14], v4[15]]);
            let dst = u32::from_ne_bytes([v4[16], v4[17], v4[18], v4[19]]);
            let ports = if ihl == 20 {
                [v4[20], v4[21], v4[22], v4[23]]
            } else {
                ctx.load::<[u8; 4]>(ihl)?
            };
            (AF_INET, ihl, [src, 0, 0, 0], [dst, 0, 0, 0], ports)
        }
        6 => {
            // IMDS replies carry no extension headers.
            if v4[6] != IPPROTO_TCP {
                return Ok(());
            }
            let h: [u32; 11] = ctx.load(0)?;
            let ports = h[10].to_ne_bytes();
            (
                AF_INET6,
                40usize,
                [h[2], h[3], h[4], h[5]],
                [h[6], h[7], h[8], h[9]],
                ports,
            )
        }
        _ => return Ok(()),
    };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    if !is_target(family, sport, &src) {
        return Ok(());
    }
    // Data offset and flags: one load.
    let off_flags: [u8; 2] = ctx.load(l4 + 12)?;
    let doff = (off_flags[0] >> 4) as usize * 4;
    let payload = l4 + doff;
    if (ctx.len() as usize) < payload + 12 {
        // No status line. A reset, or a close without a response, ends the wait of a
        // request on this connection (told apart from silence, the hop limit); a bare ACK
        // says nothing.
        let end = if off_flags[1] & TCP_RST != 0 {
            STATUS_RESET
        } else if off_flags[1] & TCP_FIN != 0 {
            STATUS_CLOSED
        } else {
            return Ok(());
        };
        emit(family, end, src, dst, sport, dport);
        return Ok(());
    }
    // "HTTP/1.1 200": exactly the 12 bytes needed. Only a segment that starts a response
    // begins like this; continuation segments of a body do not.
    let head: [u8; 12] = ctx.load(payload)?;
    if head[0] != b'H'
        || head[1] != b'T'
        || head[2] != b'T'
        || head[3] != b'P'
        || head[4] != b'/'
        || head[5] != b'1'
        || head[6] != b'.'
        || head[8] != b' '
    {
        return Ok(());
    }
    let mut status = 0u16;
    for &d in &head[9..12] {
        if !d.is_ascii_digit() {
            return Ok(());
        }
        status = status * 10 + (d - b'0') as u16;
    }
    emit(family, status, src, dst, sport, dport);
    Ok(())
}

#[inline(always)]
fn emit(family: u16, status: u16, src: [u32; 4], dst: [u32; 4], sport: u16, dport: u16) {
    let ev = ResponseEvent {
        kind: EVENT_RESPONSE,
        status,
        family,
        // SAFETY: a helper without arguments that reads the clock; nothing to uphold.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        laddr: dst,
        raddr: src,
        lport: dport,
        rport: sport,
        _pad: 0,
    };
    if EVENTS.output::<ResponseEvent>(&ev, wake_flags()).is_err() {
        count_drop(DROP_RESPONSE);
    }
}
