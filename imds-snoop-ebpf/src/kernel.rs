//! Reads of kernel memory at offsets resolved from BTF by userspace.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use imds_snoop_common::{MAX_TARGETS, Offsets, Settings, Targets};

/// Set by userspace with `EbpfLoader::override_global`; the loader freezes .rodata, so the
/// verifier sees these as constants.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    sk_family: 0,
    sk_dport: 0,
    sk_daddr: 0,
    sk_v6_daddr: 0,
    sk_net: 0,
    net_inum: 0,
    msg_iter: 0,
    iter_type: 0,
    iter_type_size: 0,
    iter_type_mask: 0,
    iter_iov_offset: 0,
    iter_count: 0,
    iter_iov: 0,
    iter_ubuf: 0,
    iter_nr_segs: 0,
    iter_iovec: 0,
    iter_ubuf_kind: 0,
    task_real_parent: 0,
    task_group_leader: 0,
    task_tgid: 0,
    task_comm: 0,
    task_mm: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    task_thread_pid: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_size: 0,
    sk_num: 0,
    sk_rcv_saddr: 0,
    sk_v6_rcv_saddr: 0,
};

#[unsafe(no_mangle)]
static TARGETS: Targets = Targets {
    count: 0,
    targets: [imds_snoop_common::Target {
        family: 0,
        port: 0,
        addr: [0; 4],
    }; imds_snoop_common::MAX_TARGETS],
};

#[unsafe(no_mangle)]
static SETTINGS: Settings = Settings {
    payload_bytes: 0,
    port_bits: 0,
};

#[inline(always)]
pub(crate) fn offsets() -> Offsets {
    // SAFETY: a plain read of our own static; volatile so the compiler does not fold the
    // zero initialiser (the real values are patched in at load).
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// `sk_dport` alone: the hot path needs only this offset, and copying the whole table
/// (what [`offsets`] does) for every TCP send on the node is most of the program's cost.
#[inline(always)]
pub(crate) fn sk_dport_offset() -> u32 {
    // SAFETY: as for `offsets`.
    unsafe { core::ptr::read_volatile(&OFFSETS.sk_dport) }
}

#[inline(always)]
pub(crate) fn targets() -> &'static Targets {
    &TARGETS
}

/// Whether any target has this port: the first, cheap test, on every TCP send and every
/// packet the node receives. First one load and a shift (`Settings::port_bits`: bit
/// `port % 32` of every target port), which rejects all but 1 in 32 ports, then the exact
/// loop over the targets (few; it stops at the configured count and at the first hit).
#[inline(always)]
pub(crate) fn port_is_target(dport: u16) -> bool {
    // SAFETY: a plain read of our own static (volatile: its real value is patched in at load).
    let bits = unsafe { core::ptr::read_volatile(&SETTINGS.port_bits) };
    if (bits >> (dport as u32 & 31)) & 1 == 0 {
        return false;
    }
    let t = targets();
    // SAFETY: plain reads of our own static (volatile: its real value is patched in at load).
    let count = unsafe { core::ptr::read_volatile(&t.count) } as usize;
    for i in 0..MAX_TARGETS {
        if i >= count {
            break;
        }
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(&t.targets[i].port) } == dport {
            return true;
        }
    }
    false
}

/// Is (family, port, addr) one of the traced destinations?
#[inline(always)]
pub(crate) fn is_target(family: u16, port: u16, addr: &[u32; 4]) -> bool {
    let t = targets();
    // SAFETY: plain reads of our own static (volatile: its real value is patched in at load).
    let count = unsafe { core::ptr::read_volatile(&t.count) } as usize;
    for i in 0..MAX_TARGETS {
        if i >= count {
            break;
        }
        // SAFETY: as above.
        let tgt = unsafe { core::ptr::read_volatile(&t.targets[i]) };
        if tgt.family == family
            && tgt.port == port
            && tgt.addr[0] == addr[0]
            && tgt.addr[1] == addr[1]
            && tgt.addr[2] == addr[2]
            && tgt.addr[3] == addr[3]
        {
            return true;
        }
    }
    false
}

#[inline(always)]
pub(crate) fn settings() -> Settings {
    // SAFETY: as for `offsets`.
    unsafe { core::ptr::read_volatile(&SETTINGS) }
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub(crate) fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }
}
