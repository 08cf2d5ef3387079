//! Exec, fork and exit of processes, so the daemon knows the argv of a caller (and of its
//! shell) that is gone by the time its request is logged: `sh -c 'curl ...'` in an init
//! container or a cron job exits within milliseconds, and a shell's `( ... )` subshell or
//! `$( ... )` makes its call from a forked child that never execs and exits at once.
//!
//! BTF tracepoints, not kprobes: `sched_process_exec`, `sched_process_fork` and
//! `sched_process_exit` are stable tracepoints on every kernel from 5.5 and load where
//! kprobes and fentry are refused.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, generated::bpf_probe_read_user,
    },
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use imds_snoop_common::{
    COMM_LEN, DROP_PROCESS_EVENT, EVENT_EXEC, EVENT_EXIT, EVENT_FORK, ExecEvent, ExitEvent,
    ForkEvent, MAX_ARGV,
};

use crate::{
    capture::{EVENTS, count_drop, quiet_flags},
    kernel::{offsets, read},
};

/// Too big for the BPF stack; one per CPU.
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

// Runs in the new image's context, so `current->mm` holds the new argv.
// proto: tp_btf sched_process_exec include/trace/events/sched.h 3.4..6.18 : TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
// proven: 5.10 6.1 6.12 6.18 (fentry, kprobe, tracepoint)
#[btf_tracepoint(function = "sched_process_exec")]
fn imds_exec(_ctx: BtfTracePointContext) -> u32 {
    on_exec();
    0
}

// 6.14 added `bool group_dead` (unused here): two eras, one line each.
// proto: tp_btf sched_process_exit include/trace/events/sched.h 3.0..6.13 : TP_PROTO(struct task_struct *p)
// proto: tp_btf sched_process_exit include/trace/events/sched.h 6.14..6.18 : TP_PROTO(struct task_struct *p, bool group_dead)
// proven: 5.10 6.1 6.12 6.18 (fentry, kprobe, tracepoint)
#[btf_tracepoint(function = "sched_process_exit")]
fn imds_exit(_ctx: BtfTracePointContext) -> u32 {
    on_exit();
    0
}

// Runs in the parent (the forking task); `child` is the new task. Threads are left out.
// proto: tp_btf sched_process_fork include/trace/events/sched.h 3.0..6.18 : TP_PROTO(struct task_struct *parent, struct task_struct *child)
// proven: 6.18 (tracepoint)
#[btf_tracepoint(function = "sched_process_fork")]
fn imds_fork(ctx: BtfTracePointContext) -> u32 {
    // Argument 1 is `struct task_struct *child`: only read through `read`
    // (bpf_probe_read_kernel), never dereferenced.
    on_fork(ctx.arg::<*const u8>(1));
    0
}

#[inline(always)]
fn on_fork(child: *const u8) {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Ok(tgid) = read::<u32>(child, offsets().task_tgid) else {
        count_drop(DROP_PROCESS_EVENT);
        return;
    };
    if tgid == parent {
        // A new thread of the same process (CLONE_THREAD), not a new process.
        return;
    }
    let ev = ForkEvent {
        kind: EVENT_FORK,
        tgid,
        ppid: parent,
        _pad: 0,
    };
    if EVENTS.output::<ForkEvent>(&ev, quiet_flags()).is_err() {
        count_drop(DROP_PROCESS_EVENT);
    }
}

#[inline(always)]
fn on_exec() {
    let o = offsets();
    let Some(ev) = EXEC_SCRATCH.get_ptr_mut(0) else {
        count_drop(DROP_PROCESS_EVENT);
        return;
    };
    // SAFETY: per-CPU map value, not shared with a concurrent program run on this CPU.
    let ev = unsafe { &mut *ev };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.kind = EVENT_EXEC;
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.uid = bpf_get_current_uid_gid() as u32;
    // SAFETY: a helper without arguments that reads the clock; nothing to uphold.
    ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.comm = [0; COMM_LEN];
    ev.ppid = 0;
    ev.argv_len = 0;
    // SAFETY: a helper without arguments; the pointer it returns is only ever read through
    // `read` (bpf_probe_read_kernel), never dereferenced.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    if let Ok(comm) = read::<[u8; COMM_LEN]>(task, o.task_comm) {
        ev.comm = comm;
    }
    if let Ok(parent) = read::<*const u8>(task, o.task_real_parent)
        && let Ok(ppid) = read::<u32>(parent, o.task_tgid)
    {
        ev.ppid = ppid;
    }
    if let Ok(mm) = read::<*const u8>(task, o.task_mm)
        && let (Ok(start), Ok(end)) = (
            read::<usize>(mm, o.mm_arg_start),
            read::<usize>(mm, o.mm_arg_end),
        )
        && end > start
    {
        let len = end - start;
        let len = if len > MAX_ARGV { MAX_ARGV } else { len };
        // The mask is what lets the verifier bound the length.
        let len = len & (MAX_ARGV * 2 - 1);
        if len > 0 && len <= MAX_ARGV {
            // SAFETY: len <= MAX_ARGV = size of ev.argv; the helper checks the user address.
            let ret = unsafe {
                bpf_probe_read_user(
                    ev.argv.as_mut_ptr() as *mut _,
                    len as u32,
                    start as *const _,
                )
            };
            if ret == 0 {
                ev.argv_len = len as u32;
            }
        }
    }
    // SAFETY: ev is a map value of size_of::<ExecEvent>() bytes.
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_ringbuf_output(
            core::ptr::addr_of!(EVENTS) as *mut _,
            ev as *mut ExecEvent as *mut _,
            core::mem::size_of::<ExecEvent>() as u64,
            quiet_flags(),
        )
    };
    if ret < 0 {
        count_drop(DROP_PROCESS_EVENT);
    }
}

#[inline(always)]
fn on_exit() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tgid != tid {
        // A thread, not the process.
        return;
    }
    let ev = ExitEvent {
        kind: EVENT_EXIT,
        tgid,
        // SAFETY: a helper without arguments that reads the clock; nothing to uphold.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
    };
    if EVENTS.output::<ExitEvent>(&ev, quiet_flags()).is_err() {
        count_drop(DROP_PROCESS_EVENT);
    }
}
