//! Types shared by the kernel program (`imds-snoop-ebpf`) and the daemon (`imds-snoop`).
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`, so both sides agree
//! on the layout byte for byte; the compile-time asserts at the bottom catch a change on one
//! side that was not made on the other.
#![no_std]

/// Longest payload snippet the kernel program can copy from one send.
/// `--payload-bytes` chooses how much of it is used (default [`DEFAULT_PAYLOAD_BYTES`]).
/// Must be a power of two: the kernel program masks offsets with `MAX_PAYLOAD - 1` so the
/// verifier can bound them.
pub const MAX_PAYLOAD: usize = 4096;
/// Default snippet: a real IMDSv2 GET from an AWS SDK with a token and a long user agent is
/// about 400 bytes (see tests/fixtures); 2 KiB leaves room for proxies' extra headers.
pub const DEFAULT_PAYLOAD_BYTES: u32 = 2048;
/// Ancestors the kernel records for each send (caller's parent, grandparent, ...), so a caller
/// that exits before userspace looks at /proc is still attributed.
pub const MAX_ANCESTORS: usize = 8;
/// Targets the kernel filter compares every TCP send against.
pub const MAX_TARGETS: usize = 8;
/// iovecs read from one `writev`/`sendmsg` (more are counted as truncated).
pub const MAX_IOVECS: usize = 8;
pub const COMM_LEN: usize = 16;

/// `kind` tag of a [`SendEvent`].
pub const EVENT_SEND: u32 = 1;
/// `kind` tag of an [`ExecEvent`].
pub const EVENT_EXEC: u32 = 2;
/// `kind` tag of an [`ExitEvent`].
pub const EVENT_EXIT: u32 = 3;
/// `kind` tag of a [`ResponseEvent`].
pub const EVENT_RESPONSE: u32 = 4;
/// `kind` tag of a [`ForkEvent`].
pub const EVENT_FORK: u32 = 5;
/// `kind` tag of a [`HopDropEvent`].
pub const EVENT_HOP_DROP: u32 = 6;
/// [`HopDropEvent::how`]: the kernel said why (`reason` is `SKB_DROP_REASON_IP_INHDR`, the
/// reason `ip_forward` gives a packet whose TTL ran out; 5.19+).
pub const HOP_DROP_BY_REASON: u8 = 1;
/// [`HopDropEvent::how`]: no reason on this kernel (5.10); the packet had no owning socket
/// and a route that is not local delivery: it was being forwarded (see the eBPF `drop.rs`).
pub const HOP_DROP_BY_ROUTE: u8 = 2;
/// [`ResponseEvent::status`] of a reset (RST) from the traced destination (no HTTP status is
/// below 100): a request waiting on that connection gets no response.
pub const STATUS_RESET: u16 = 1;
/// [`ResponseEvent::status`] of a close (FIN, no payload) from the traced destination.
pub const STATUS_CLOSED: u16 = 2;
/// Bytes of a new program's argv (NUL-separated) recorded at exec. Power of two (masking).
pub const MAX_ARGV: usize = 512;

/// [`SendEvent::flags`]: the payload is shorter than the send (snippet limit or iovec limit).
pub const FLAG_TRUNCATED: u32 = 1 << 0;
/// [`SendEvent::flags`]: the iov_iter was of a type the program does not read (kvec, bvec...).
pub const FLAG_UNSUPPORTED_ITER: u32 = 1 << 1;
/// [`SendEvent::flags`]: reading user memory failed (page not present); payload may be short.
pub const FLAG_READ_ERROR: u32 = 1 << 2;

/// Indices into the per-CPU `DROPS` counter array. Send events (IMDS calls) are counted
/// apart from the others: only their drops are calls missing from the log.
/// A send event that did not fit the ring buffer.
pub const DROP_RINGBUF_FULL: u32 = 0;
/// A send event with no per-CPU scratch record (should never happen).
pub const DROP_NO_SCRATCH: u32 = 1;
/// An exec or exit event lost (ring full or no scratch): attribution falls back to /proc.
pub const DROP_PROCESS_EVENT: u32 = 2;
/// A response status lost (ring full): its call is logged without a status, and a token
/// PUT among them would look unanswered.
pub const DROP_RESPONSE: u32 = 3;
/// A hop-limit drop event lost (ring full): its token PUT falls back to the silence warning.
pub const DROP_HOP_DROP: u32 = 4;
/// Not a loss: hop-limit drops of a connection already reported within
/// [`HOP_DROP_WINDOW_NS`] (the replies' retransmissions, about 16 per lost token PUT).
pub const HOP_DROP_DEDUPLICATED: u32 = 5;
pub const DROP_KINDS: u32 = 6;

/// One hop-limit drop per connection (4-tuple) is reported within this window; the
/// retransmissions of the same reply inside it are counted ([`HOP_DROP_DEDUPLICATED`]).
/// A client gives up on its token PUT within seconds (botocore: 1 s, curl: its `-m`), and
/// the server stops retransmitting once the client's reset arrives.
pub const HOP_DROP_WINDOW_NS: u64 = 60_000_000_000;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// One destination the kernel filter matches: family, port (host order) and address.
/// `addr` holds the address bytes in network order, four at a time as native `u32`s (IPv4 in
/// `addr[0]`, the rest zero): the kernel program compares words, never calls `memcmp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub family: u16,
    pub port: u16,
    pub addr: [u32; 4],
}

/// The filter's configuration, a read-only global set by userspace at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Targets {
    pub count: u32,
    pub targets: [Target; MAX_TARGETS],
}

/// Kernel struct offsets and enum values resolved from the running kernel's BTF at start
/// (Rust eBPF has no CO-RE relocations). A read-only global of the kernel program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    // struct sock (via __sk_common)
    pub sk_family: u32,
    pub sk_dport: u32,
    pub sk_daddr: u32,
    pub sk_v6_daddr: u32,
    /// `sock_common.skc_net` (a `possible_net_t`, i.e. a `struct net *`).
    pub sk_net: u32,
    /// `net.ns.inum`
    pub net_inum: u32,
    // struct msghdr / struct iov_iter
    pub msg_iter: u32,
    pub iter_type: u32,
    /// 1 (`u8 iter_type`, 5.14+) or 4 (`unsigned int type`, 5.10).
    pub iter_type_size: u32,
    /// Mask applied to the type field: 5.10 keeps the direction in bit 0.
    pub iter_type_mask: u32,
    pub iter_iov_offset: u32,
    pub iter_count: u32,
    /// `iov` (up to 6.3) or `__iov` (6.4+).
    pub iter_iov: u32,
    pub iter_ubuf: u32,
    pub iter_nr_segs: u32,
    /// `enum iter_type` values on this kernel.
    pub iter_iovec: u32,
    /// `u32::MAX` before 6.0 (no ITER_UBUF).
    pub iter_ubuf_kind: u32,
    // struct task_struct
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_mm: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// `task_struct.thread_pid`, `pid.level`, `pid.numbers`, `sizeof(struct upid)`: the
    /// caller's pid as its own pid namespace (its container) sees it.
    pub task_thread_pid: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    // struct sock_common: the local end, to join a request to its response by 4-tuple.
    /// `skc_num`: local port, host order.
    pub sk_num: u32,
    pub sk_rcv_saddr: u32,
    pub sk_v6_rcv_saddr: u32,
}

/// What the hop-limit drop program (`tp_btf/kfree_skb`) needs of the running kernel,
/// resolved from its BTF at start: a read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropConfig {
    /// `sk_buff.head`, `sk_buff.network_header` (u16, from `head`), `sk_buff.sk`,
    /// `sk_buff.dev`, `sk_buff._skb_refdst` (a `dst_entry *` with flag bit 0).
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_sk: u32,
    pub skb_dev: u32,
    pub skb_refdst: u32,
    /// `net_device.nd_net` (a `possible_net_t`: a `struct net *`).
    pub dev_nd_net: u32,
    /// `rtable.rt_flags` (the `dst_entry` is `rtable`'s first member).
    pub rt_flags: u32,
    /// `SKB_DROP_REASON_IP_INHDR` on this kernel (its value differs between kernels).
    pub ip_inhdr: u32,
}

/// The snippet's run-time settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// Bytes of payload to copy per send, at most [`MAX_PAYLOAD`].
    pub payload_bytes: u32,
    /// Bit `port % 32` set for every target's port (host order): the first test of both
    /// hooks, one load and a shift for every TCP send and every packet received on the
    /// node. A set bit only means "maybe": the target table decides.
    pub port_bits: u32,
}

impl Settings {
    /// The [`Settings::port_bits`] of these target ports.
    pub fn port_bits_of(ports: impl IntoIterator<Item = u16>) -> u32 {
        ports.into_iter().fold(0, |bits, p| bits | 1 << (p % 32))
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ancestor {
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
}

/// Fixed-size head of a send event. In the ring buffer it is followed by `payload_len`
/// payload bytes (the record is variable-sized so a small request takes a small slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendEvent {
    pub kind: u32,
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns` (CLOCK_BOOTTIME), converted to wall time in userspace.
    pub ts_ns: u64,
    /// The kernel's `struct sock *`, only as an identity to reassemble split requests.
    pub sock_id: u64,
    pub cgroup_id: u64,
    /// Bytes in this send (`msg_data_left`), which may exceed `payload_len`.
    pub size: u64,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub netns: u32,
    pub family: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// Destination address in the same form as [`Target::addr`].
    pub daddr: [u32; 4],
    pub payload_len: u32,
    pub ancestors_len: u32,
    /// The caller's tgid in its own pid namespace (equal to `tgid` on the host).
    pub ns_tgid: u32,
    /// Local (source) port, host order.
    pub sport: u16,
    pub _pad: u16,
    /// Local (source) address, in the same form and family as `daddr`.
    pub saddr: [u32; 4],
    pub comm: [u8; COMM_LEN],
    pub ancestors: [Ancestor; MAX_ANCESTORS],
}

impl SendEvent {
    pub const HEAD_LEN: usize = core::mem::size_of::<SendEvent>();
}

/// A process image started (`sched_process_exec`): remembered by the daemon so a caller that
/// has exited by the time its request is logged still gets its argv.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub ts_ns: u64,
    pub argv_len: u32,
    pub comm: [u8; COMM_LEN],
    pub _pad: u32,
    /// NUL-separated argv, `argv_len` bytes of it valid.
    pub argv: [u8; MAX_ARGV],
}

/// A process (its thread group leader) exited (`sched_process_exit`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
}

/// A process forked a new process (`sched_process_fork`, threads left out): until the
/// child execs, it runs its parent's image, with its parent's argv.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkEvent {
    pub kind: u32,
    /// The child's tgid (its pid: a new process is its own thread group leader).
    pub tgid: u32,
    /// The parent's tgid.
    pub ppid: u32,
    pub _pad: u32,
}

/// The status line of an HTTP response from a traced destination (`cgroup_skb` ingress).
/// Only the status code leaves the kernel, never the body. The connection's 4-tuple, seen
/// from the local socket's side, is what joins it to the request (`SendEvent::saddr`...).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseEvent {
    pub kind: u32,
    /// `200`, `401`, `404`..., or [`STATUS_RESET`] / [`STATUS_CLOSED`].
    pub status: u16,
    pub family: u16,
    /// `bpf_ktime_get_boot_ns`.
    pub ts_ns: u64,
    /// The local end (the caller's socket): the packet's destination.
    pub laddr: [u32; 4],
    /// The traced destination: the packet's source.
    pub raddr: [u32; 4],
    pub lport: u16,
    pub rport: u16,
    pub _pad: u32,
}

/// A reply from a traced destination dropped in the forwarding path with its TTL (hop
/// limit) run out (`skb:kfree_skb` in `ip_forward` / `ip6_forward`): a hop limit of 1 cut a
/// caller behind a routing hop off. One per connection within [`HOP_DROP_WINDOW_NS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopDropEvent {
    pub kind: u32,
    /// The packet's TTL / hop limit as it arrived (0 or 1).
    pub ttl: u8,
    /// [`HOP_DROP_BY_REASON`] or [`HOP_DROP_BY_ROUTE`].
    pub how: u8,
    pub family: u16,
    /// The kernel's `enum skb_drop_reason` value; 0 with [`HOP_DROP_BY_ROUTE`].
    pub reason: u32,
    /// Inode of the network namespace the packet died in (the node's, behind which the
    /// caller sits); 0 if unreadable.
    pub netns: u32,
    /// `bpf_ktime_get_boot_ns`.
    pub ts_ns: u64,
    /// The caller's end: the packet's destination (same form as [`Target::addr`]).
    pub laddr: [u32; 4],
    /// The traced destination: the packet's source.
    pub raddr: [u32; 4],
    pub lport: u16,
    pub rport: u16,
    pub _pad: u32,
}

/// The key of the in-kernel deduplication of [`HopDropEvent`]s: the connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopDropKey {
    pub laddr: [u32; 4],
    pub raddr: [u32; 4],
    pub lport: u16,
    pub rport: u16,
    pub family: u32,
}

/// The kernel program's scratch record: the head plus room for a payload written at an
/// offset that the verifier can only bound by `MAX_PAYLOAD` (so the room is doubled).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SendRecord {
    pub head: SendEvent,
    pub payload: [u8; 2 * MAX_PAYLOAD],
}

// Layout guards: a field added on one side only breaks the build here, not at run time.
const _: () = assert!(core::mem::size_of::<Target>() == 20);
const _: () = assert!(core::mem::size_of::<Ancestor>() == 20);
const _: () = assert!(core::mem::size_of::<Offsets>() == 31 * 4);
const _: () = assert!(core::mem::size_of::<ResponseEvent>() == 56);
const _: () = assert!(core::mem::size_of::<HopDropEvent>() == 64);
const _: () = assert!(core::mem::size_of::<HopDropKey>() == 40);
const _: () = assert!(core::mem::size_of::<DropConfig>() == 8 * 4);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 48 + MAX_ARGV);
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 16);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 16);
const _: () = assert!(MAX_ARGV.is_power_of_two());
const _: () = assert!(core::mem::size_of::<SendEvent>() == 288);
const _: () = assert!(core::mem::size_of::<SendEvent>().is_multiple_of(8));
const _: () = assert!(MAX_PAYLOAD.is_power_of_two());
// The other two `aya::Pod` types (the globals): no padding either.
const _: () = assert!(core::mem::size_of::<Targets>() == 4 + MAX_TARGETS * 20);
const _: () = assert!(core::mem::size_of::<Settings>() == 8);

/// `aya::Pod` for the daemon: the globals it writes into the program and the ring records it
/// reads back (`imds-snoop/src/decode.rs` reads records only as these types).
#[cfg(feature = "user")]
mod user {
    // Each impl below holds for the same reason: the type is #[repr(C)], Copy and 'static,
    // made only of integers and arrays of integers (every bit pattern is a valid value), and
    // has no implicit padding (the layout guards above pin each size to the sum of its
    // fields), so reading one from any bytes, or writing one out, touches no uninitialised
    // memory.
    // SAFETY: as above; 2 + 2 + 16 bytes.
    unsafe impl aya::Pod for super::Target {}
    // SAFETY: as above; 4 + MAX_TARGETS * 20 bytes.
    unsafe impl aya::Pod for super::Targets {}
    // SAFETY: as above; 31 u32s.
    unsafe impl aya::Pod for super::Offsets {}
    // SAFETY: as above; two u32s.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above; a u32 and COMM_LEN bytes.
    unsafe impl aya::Pod for super::Ancestor {}
    // SAFETY: as above; 288 bytes, 8-aligned, explicit `_pad` after `sport`.
    unsafe impl aya::Pod for super::SendEvent {}
    // SAFETY: as above; 48 + MAX_ARGV bytes, explicit `_pad` after `comm`.
    unsafe impl aya::Pod for super::ExecEvent {}
    // SAFETY: as above; 16 bytes.
    unsafe impl aya::Pod for super::ExitEvent {}
    // SAFETY: as above; four u32s, explicit `_pad`.
    unsafe impl aya::Pod for super::ForkEvent {}
    // SAFETY: as above; 56 bytes, explicit trailing `_pad`.
    unsafe impl aya::Pod for super::ResponseEvent {}
    // SAFETY: as above; 64 bytes, explicit trailing `_pad`.
    unsafe impl aya::Pod for super::HopDropEvent {}
    // SAFETY: as above; eight u32s.
    unsafe impl aya::Pod for super::DropConfig {}
}
