//! Child processes: bounded waits and termination.

use std::{
    process::{Child, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use crate::POLL;

/// Waits at most `timeout` for `child`; kills it if it is still running then.
pub(crate) fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// SIGTERM, then SIGKILL if it does not exit within `grace`.
pub(crate) fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // SAFETY: the pid is our own child and has not been reaped (try_wait said so).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    wait_bounded(child, grace)
}

/// Polls until `ready()`, failing with the child's stderr if it exits first or `timeout`
/// passes: how the harness waits for the processes it starts (the fake IMDS, the daemon).
pub(crate) fn wait_for_child(
    child: &mut Child,
    timeout: Duration,
    what: &str,
    goal: &str,
    ready: impl Fn() -> bool,
    stderr: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before it did {goal}; stderr:\n{}",
                stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not {goal} within {} s; stderr:\n{}",
            timeout.as_secs(),
            stderr()
        );
        thread::sleep(POLL);
    }
}
