//! The capture function shared by every entry point: filter, then copy, then emit.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, generated::bpf_probe_read_user,
    },
    macros::{btf_tracepoint, fentry, kprobe, map},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext},
};
use imds_snoop_common::{
    AF_INET, AF_INET6, Ancestor, COMM_LEN, DROP_KINDS, DROP_NO_SCRATCH, DROP_RINGBUF_FULL,
    EVENT_SEND, FLAG_READ_ERROR, FLAG_TRUNCATED, FLAG_UNSUPPORTED_ITER, MAX_ANCESTORS, MAX_IOVECS,
    MAX_PAYLOAD, Offsets, SendEvent, SendRecord,
};

use crate::kernel::{is_target, offsets, port_is_target, read, settings, sk_dport_offset};

/// Send events for userspace. Its size is set at load (`--ring-bytes`).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// 1 while a process event (exec, fork, exit) may sit in [`EVENTS`] without the reader
/// having been woken for it. The kernel wakes the reader only for a record written where
/// the reader stands (`bpf_ringbuf_commit`, kernel/bpf/ringbuf.c), so once such a record
/// waits, no later one wakes it by itself: the next send or response event forces the
/// wake-up instead ([`wake_flags`]). One word for all CPUs.
#[map]
static UNWOKEN: Array<u32> = Array::with_max_entries(1, 0);

/// Ring-buffer flags for a process event: no wake-up while the ring is less than a quarter
/// full. Waking the daemon's epoll from a process hook cost ~1-9 µs per exec, fork and exit
/// on 6.18 (README, Cost), against a few hundred ns for the record itself; the daemon needs
/// a process's record only by the time it reads that process's send, which comes later in
/// the same ring and wakes it, and its 1 s tick drains the ring in any case. Marks
/// [`UNWOKEN`] first, so a send or response written after this record forces the wake-up.
/// From a quarter full on, forces the wake-up itself: a node's execs and exits left for the
/// tick would otherwise fill a small ring (`--ring-bytes 4096` holds 7 exec records) and
/// crowd out the send records that are the point.
#[inline(always)]
pub(crate) fn quiet_flags() -> u64 {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if pending >= EVENTS.query(BPF_RB_RING_SIZE as u64) / 4 {
        return BPF_RB_FORCE_WAKEUP as u64;
    }
    if let Some(w) = UNWOKEN.get_ptr_mut(0) {
        // SAFETY: a map value of one u32; a racing store from another CPU writes the same
        // value or clears it for a wake-up that follows.
        unsafe {
            if *w == 0 {
                *w = 1;
            }
        }
    }
    BPF_RB_NO_WAKEUP as u64
}

/// Ring-buffer flags for a send, response or hop-drop event: the kernel's default (wake the reader
/// if it has caught up), or a forced wake-up when a process event may be waiting unwoken
/// ahead of this one. Clears [`UNWOKEN`] before the record is written, so a process event
/// marked after this read is woken for by the next event. A race of a few instructions
/// (a process record reserved between this read and this record's own reservation) leaves
/// this record to the next event or to the daemon's 1 s tick: late, never lost.
#[inline(always)]
pub(crate) fn wake_flags() -> u64 {
    if let Some(w) = UNWOKEN.get_ptr_mut(0) {
        // SAFETY: as in `quiet_flags`.
        unsafe {
            if *w != 0 {
                *w = 0;
                return BPF_RB_FORCE_WAKEUP as u64;
            }
        }
    }
    0
}

/// Events that could not be emitted, by reason (`DROP_*`), per CPU.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_KINDS, 0);

/// One record per CPU to assemble an event in: too big for the 512-byte BPF stack, and
/// `bpf_ringbuf_output` from here lets a small request take a small ring-buffer slot.
#[map]
static SCRATCH: PerCpuArray<SendRecord> = PerCpuArray::with_max_entries(1, 0);

// The three send entry points (`--attach fentry|kprobe|tracepoint`), each one line into
// [`capture`].

// proto: fentry tcp_sendmsg net/ipv4/tcp.c 4.1..6.18 : int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)
// proven: 5.10 6.1 6.12 (fentry)
#[fentry(function = "tcp_sendmsg")]
fn imds_fentry(ctx: FEntryContext) -> u32 {
    capture(ctx.arg(0), ctx.arg(1), false);
    0
}

// proto: kprobe tcp_sendmsg net/ipv4/tcp.c 4.1..6.18 : int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)
// proven: 5.10 6.1 6.12 (kprobe)
#[kprobe]
fn imds_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(msg)) = (ctx.arg(0), ctx.arg(1)) {
        capture(sk, msg, false);
    }
    0
}

// proto: tp_btf tcp_sendmsg_locked include/trace/events/tcp.h 6.13..6.18 : TP_PROTO(const struct sock *sk, const struct msghdr *msg, const struct sk_buff *skb, int size_goal)
// proven: 6.18 (tracepoint)
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
fn imds_tracepoint(ctx: BtfTracePointContext) -> u32 {
    // Fires once per copy-loop pass of a send: report only the first pass.
    capture(ctx.arg(0), ctx.arg(1), true);
    0
}

#[inline(always)]
fn capture(sk: *const u8, msg: *const u8, first_pass_only: bool) {
    let _ = try_capture(sk, msg, first_pass_only);
}

#[inline(always)]
fn try_capture(sk: *const u8, msg: *const u8, first_pass_only: bool) -> Result<(), i32> {
    // Hot path: one read and a compare or two for every TCP send on the node.
    let dport = u16::from_be(read::<u16>(sk, sk_dport_offset())?);
    if !port_is_target(dport) {
        return Ok(());
    }
    let o = offsets();
    let Some((family, daddr)) = match_target(sk, &o, dport)? else {
        return Ok(());
    };

    let iter = msg.wrapping_add(o.msg_iter as usize);
    let s = settings();
    if first_pass_only && read::<usize>(iter, o.iter_iov_offset)? != 0 {
        // A later copy-loop pass of a send already reported (tracepoint attach only).
        return Ok(());
    }

    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        count_drop(DROP_NO_SCRATCH);
        return Ok(());
    };
    // SAFETY: a per-CPU map value; BPF programs are not preempted on their CPU by another
    // program run that could use the same slot.
    let rec = unsafe { &mut *rec };
    let head = &mut rec.head;

    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    head.kind = EVENT_SEND;
    head.flags = 0;
    // SAFETY: a helper without arguments that reads the clock; nothing to uphold.
    head.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    head.sock_id = sk as u64;
    // SAFETY: a helper without arguments that reads the current task's cgroup id.
    head.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    head.tgid = (pid_tgid >> 32) as u32;
    head.tid = pid_tgid as u32;
    head.uid = uid_gid as u32;
    head.gid = (uid_gid >> 32) as u32;
    head.family = family;
    head.dport = dport;
    head.daddr = daddr;
    // The local end, so userspace can join the response (cgroup_skb ingress) by 4-tuple.
    head.sport = read::<u16>(sk, o.sk_num).unwrap_or(0);
    head.saddr = local_addr(sk, &o, family);
    head.netns = read::<*const u8>(sk, o.sk_net)
        .and_then(|net| read::<u32>(net, o.net_inum))
        .unwrap_or(0);
    head.size = read::<usize>(iter, o.iter_count).unwrap_or(0) as u64;

    fill_process(head, &o);
    let len = copy_payload(rec, iter, &o, s.payload_bytes);
    rec.head.payload_len = len as u32;

    let total = SendEvent::HEAD_LEN + (len & (MAX_PAYLOAD * 2 - 1));
    // SAFETY: `rec` is a map value of size_of::<SendRecord>() >= total bytes.
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_ringbuf_output(
            &EVENTS as *const RingBuf as *mut _,
            rec as *mut SendRecord as *mut _,
            total as u64,
            wake_flags(),
        )
    };
    if ret < 0 {
        count_drop(DROP_RINGBUF_FULL);
    }
    Ok(())
}

/// Compares the socket's destination with the target list (the port already matched one).
/// Returns the family and address (IPv4-mapped IPv6 reported as IPv4) when it matches.
#[inline(always)]
fn match_target(sk: *const u8, o: &Offsets, dport: u16) -> Result<Option<(u16, [u32; 4])>, i32> {
    let mut family = read::<u16>(sk, o.sk_family)?;
    let mut daddr = [0u32; 4];
    if family == AF_INET {
        daddr[0] = read::<u32>(sk, o.sk_daddr)?;
    } else if family == AF_INET6 {
        daddr = read::<[u32; 4]>(sk, o.sk_v6_daddr)?;
        // ::ffff:a.b.c.d — an IPv6 socket talking to an IPv4 address.
        if daddr[0] == 0 && daddr[1] == 0 && daddr[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
            family = AF_INET;
            daddr = [daddr[3], 0, 0, 0];
        }
    } else {
        return Ok(None);
    }

    Ok(is_target(family, dport, &daddr).then_some((family, daddr)))
}

/// The socket's local address in the form of [`match_target`]'s result: an IPv4-mapped
/// IPv6 socket keeps its IPv4 source in `skc_rcv_saddr` too, so AF_INET reads that.
#[inline(always)]
fn local_addr(sk: *const u8, o: &Offsets, family: u16) -> [u32; 4] {
    if family == AF_INET {
        [read::<u32>(sk, o.sk_rcv_saddr).unwrap_or(0), 0, 0, 0]
    } else {
        read::<[u32; 4]>(sk, o.sk_v6_rcv_saddr).unwrap_or([0; 4])
    }
}

/// Caller's comm and its ancestors (tgid + comm), read now because a short-lived caller and
/// its shell may be gone before userspace can look at /proc.
#[inline(always)]
fn fill_process(head: &mut SendEvent, o: &Offsets) {
    head.comm = [0; COMM_LEN];
    head.ancestors_len = 0;
    // SAFETY: a helper without arguments; the pointer it returns is only ever read through
    // `read` (bpf_probe_read_kernel), never dereferenced.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(leader) = read::<*const u8>(task, o.task_group_leader) else {
        return;
    };
    if let Ok(comm) = read::<[u8; COMM_LEN]>(leader, o.task_comm) {
        head.comm = comm;
    }
    // pid->numbers[pid->level].nr: the pid in the innermost namespace.
    head.ns_tgid = read::<*const u8>(leader, o.task_thread_pid)
        .and_then(|pid| {
            let level = read::<u32>(pid, o.pid_level)?;
            if level > 31 {
                return Err(-1);
            }
            read::<u32>(pid, o.pid_numbers + level * o.upid_size)
        })
        .unwrap_or(0);
    let mut t = leader;
    for i in 0..MAX_ANCESTORS {
        let Ok(parent) = read::<*const u8>(t, o.task_real_parent) else {
            break;
        };
        if parent.is_null() || parent == t {
            break;
        }
        let Ok(tgid) = read::<u32>(parent, o.task_tgid) else {
            break;
        };
        if tgid == 0 {
            break;
        }
        head.ancestors[i] = Ancestor {
            tgid,
            comm: read::<[u8; COMM_LEN]>(parent, o.task_comm).unwrap_or([0; COMM_LEN]),
        };
        head.ancestors_len = i as u32 + 1;
        if tgid == 1 {
            break;
        }
        t = parent;
    }
}

/// Copies up to `limit` bytes of the send's user buffers into `rec.payload`, switching on the
/// iov_iter type (ITER_UBUF for send/write on 6.0+, ITER_IOVEC for writev/sendmsg and for
/// everything before 6.0). Returns the bytes copied and sets the flags.
#[inline(always)]
fn copy_payload(rec: &mut SendRecord, iter: *const u8, o: &Offsets, limit: u32) -> usize {
    let count = rec.head.size as usize;
    let mut want = if (limit as usize) < count {
        limit as usize
    } else {
        count
    };
    if want > MAX_PAYLOAD {
        want = MAX_PAYLOAD;
    }
    if want < count {
        rec.head.flags |= FLAG_TRUNCATED;
    }

    let ty = if o.iter_type_size == 1 {
        read::<u8>(iter, o.iter_type).map(u32::from)
    } else {
        read::<u32>(iter, o.iter_type)
    };
    let Ok(ty) = ty else {
        rec.head.flags |= FLAG_READ_ERROR;
        return 0;
    };
    let ty = ty & o.iter_type_mask;
    let iov_offset = read::<usize>(iter, o.iter_iov_offset).unwrap_or(0);

    if ty == o.iter_ubuf_kind {
        let Ok(base) = read::<usize>(iter, o.iter_ubuf) else {
            rec.head.flags |= FLAG_READ_ERROR;
            return 0;
        };
        if read_user(rec, 0, base + iov_offset, want).is_err() {
            rec.head.flags |= FLAG_READ_ERROR;
            return 0;
        }
        return want;
    }
    if ty != o.iter_iovec {
        rec.head.flags |= FLAG_UNSUPPORTED_ITER;
        return 0;
    }

    let Ok(iov) = read::<*const u8>(iter, o.iter_iov) else {
        rec.head.flags |= FLAG_READ_ERROR;
        return 0;
    };
    let nr_segs = read::<usize>(iter, o.iter_nr_segs).unwrap_or(0);
    let mut off = 0usize;
    let mut skip = iov_offset;
    for i in 0..MAX_IOVECS {
        if i >= nr_segs || off >= want {
            break;
        }
        // struct iovec { void __user *iov_base; __kernel_size_t iov_len; }
        let Ok([base, len]) = read::<[usize; 2]>(iov, (i * 16) as u32) else {
            rec.head.flags |= FLAG_READ_ERROR;
            break;
        };
        let (base, len) = if skip > 0 && skip <= len {
            let r = (base + skip, len - skip);
            skip = 0;
            r
        } else {
            (base, len)
        };
        let left = want - off;
        let take = if len < left { len } else { left };
        if read_user(rec, off, base, take).is_err() {
            rec.head.flags |= FLAG_READ_ERROR;
            break;
        }
        off += take;
    }
    if off < want {
        rec.head.flags |= FLAG_TRUNCATED;
    }
    off
}

/// `bpf_probe_read_user` into `rec.payload[off..off + len]`. The masks are what lets the
/// verifier prove the write stays inside the (doubled) payload buffer.
#[inline(always)]
fn read_user(rec: &mut SendRecord, off: usize, src: usize, len: usize) -> Result<(), i64> {
    let off = off & (MAX_PAYLOAD - 1);
    let len = len & (MAX_PAYLOAD * 2 - 1);
    if len == 0 || len > MAX_PAYLOAD {
        return Ok(());
    }
    let dst = rec.payload.as_mut_ptr().wrapping_add(off);
    // SAFETY: dst..dst+len lies inside rec.payload (off < MAX_PAYLOAD, len <= MAX_PAYLOAD,
    // payload is 2 * MAX_PAYLOAD); the helper checks the user address.
    let ret = unsafe { bpf_probe_read_user(dst as *mut _, len as u32, src as *const _) };
    if ret < 0 { Err(ret) } else { Ok(()) }
}

#[inline(always)]
pub(crate) fn count_drop(reason: u32) {
    if let Some(c) = DROPS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, see SCRATCH.
        unsafe { *c += 1 };
    }
}
