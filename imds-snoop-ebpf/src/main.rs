//! imds-snoop's kernel side: one capture function behind three thin entry points, and the
//! process and response programs. Each entry point sits next to its body (`capture.rs`,
//! `process.rs`, `response.rs`).
//!
//! Why `tcp_sendmsg`: every plain-HTTP IMDS request is a TCP send on a connected socket, and
//! `tcp_sendmsg(sk, msg, size)` is the one function all of them pass through exactly once
//! (send, sendto, sendmsg, write, writev). Hooking outer layers (`security_socket_sendmsg`,
//! `sock_sendmsg`) would fire for every socket type; hooking inner ones (`tcp_push`,
//! `tcp_sendmsg_locked` as a kprobe) would fire several times per request — the existing
//! BCC tool does both and sees each request two or three times. The destination filter runs
//! first, before any copy or map access, because this is on the path of every TCP send.
//!
//! Entry points (`--attach` in the daemon):
//! - `fentry/tcp_sendmsg` (5.5+ with BTF and trampolines; the default on AL2023 6.1/6.12),
//! - `kprobe/tcp_sendmsg` (older kernels, or where trampolines are refused),
//! - `tp_btf/tcp_sendmsg_locked` (kernels with that tracepoint, 6.13+: not in 6.12's BTF, in
//!   6.18's; it fires once per copy-loop pass, so only the pass at iov offset 0 is reported).
//!
//! Responses: `cgroup_skb/ingress` on the root cgroup v2 reads the status line of replies
//! from a traced destination (see `response.rs`).
//!
//! Hop-limit drops: `tp_btf/kfree_skb` reports an IMDS reply that died in the node's
//! forwarding path with its TTL run out (see `drop.rs`).
//!
//! Rust eBPF has no CO-RE: struct offsets come from userspace (BTF of the running kernel)
//! as the read-only global `OFFSETS` (`kernel.rs`).
//!
//! Every entry point carries machine-readable lines, one per hook (and per kernel era of a
//! prototype that changed), which the kernel matrix checks against each kernel's BTF
//! (`tests/vm-guest/src/protos.rs`, in every guest and on the host):
//!
//! ```text
//! // proto: <fentry|kprobe|tp_btf|raw_tp|tracepoint|cgroup_skb> <function|tracepoint|attach>
//! //        <kernel source file> <first>..<last kernel known> : <C prototype>
//! // proven: <kernels the matrix passed on> (<modes>)
//! ```
//!
//! (each on one line). Kernels outside `first..last` are not known; `proven` is copied from
//! the README's matrix.
#![no_std]
#![no_main]

mod capture;
mod drop;
mod kernel;
mod process;
mod response;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
