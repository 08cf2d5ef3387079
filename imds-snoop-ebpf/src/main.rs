//! imds-snoop's kernel side: one capture function behind three thin entry points.
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
//! - `tp_btf/tcp_sendmsg_locked` (kernels with that tracepoint, 6.6+; it fires once per
//!   copy-loop pass, so only the pass at iov offset 0 is reported).
//!
//! Responses: `cgroup_skb/ingress` on the root cgroup v2 reads the status line of replies
//! from a traced destination (see `response.rs`).
//!
//! Rust eBPF has no CO-RE: struct offsets come from userspace (BTF of the running kernel)
//! as the read-only global [`OFFSETS`].
#![no_std]
#![no_main]

mod capture;
mod kernel;
mod process;
mod response;

use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_skb, fentry, kprobe},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, SkBuffContext},
};

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`
#[fentry(function = "tcp_sendmsg")]
fn imds_fentry(ctx: FEntryContext) -> u32 {
    capture::capture(ctx.arg(0), ctx.arg(1), false);
    0
}

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`
#[kprobe]
fn imds_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(msg)) = (ctx.arg(0), ctx.arg(1)) {
        capture::capture(sk, msg, false);
    }
    0
}

/// `TP_PROTO(const struct sock *sk, const struct msghdr *msg, const struct sk_buff *skb,
/// int size_goal)` in include/trace/events/tcp.h.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
fn imds_tracepoint(ctx: BtfTracePointContext) -> u32 {
    // Fires once per copy-loop pass of a send: report only the first pass.
    capture::capture(ctx.arg(0), ctx.arg(1), true);
    0
}

/// `TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`; runs in the
/// new image's context, so `current->mm` holds the new argv.
#[btf_tracepoint(function = "sched_process_exec")]
fn imds_exec(_ctx: BtfTracePointContext) -> u32 {
    process::on_exec();
    0
}

/// `TP_PROTO(struct task_struct *p)` (6.14 added `bool group_dead`; unused here).
#[btf_tracepoint(function = "sched_process_exit")]
fn imds_exit(_ctx: BtfTracePointContext) -> u32 {
    process::on_exit();
    0
}

/// Every packet received by a socket in the cgroup tree it is attached to (the root):
/// the status line of IMDS responses. Returns 1: the packet is always allowed.
#[cgroup_skb(ingress)]
fn imds_response(ctx: SkBuffContext) -> i32 {
    response::on_ingress(&ctx);
    1
}

// Empty programs on the same attach points: the floor `cargo xtask bench` measures the
// capture program against (daemon flag `--empty-program`, hidden).

#[fentry(function = "tcp_sendmsg")]
fn empty_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[kprobe]
fn empty_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_sendmsg_locked")]
fn empty_tracepoint(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[cgroup_skb(ingress)]
fn empty_response(_ctx: SkBuffContext) -> i32 {
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
