//! Who made a call: the caller and its ancestors (`process`: kernel pids and comms, argv
//! from the exec cache or /proc), and where it runs (`container`: cgroup -> container ->
//! pod, from node-local state). One room with one entry point, [`Attribution::attribute`];
//! the exec/fork/exit events that keep the argv cache current come in through it too.
#![warn(clippy::indexing_slicing, clippy::string_slice)]

mod container;
mod container_id;
mod process;
mod shim;

use std::time::{Duration, Instant};

// Tests elsewhere build origins by hand; the daemon only passes them on.
#[cfg(test)]
pub(crate) use self::container::{Container, Pod};
use self::{
    container::Resolver,
    process::{ExecCache, ProcessView},
};
pub(crate) use self::{
    container::{Origin, Paths},
    process::Proc,
};
use crate::decode::{Exec, Send};

/// Processes whose exec argv is remembered (about 600 bytes each at most).
const EXEC_CACHE_ENTRIES: usize = 8192;
/// How long a departed process's argv is kept for requests still in reassembly.
const EXEC_KEEP_AFTER_EXIT: Duration = Duration::from_secs(30);

/// Who made a call and where it runs, as far as the node can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attributed {
    /// The calling process (the kernel's tgid and comm, argv when known).
    pub caller: Proc,
    /// Its parent first, up to pid 1.
    pub ancestors: Vec<Proc>,
    /// Container and pod, or host unit.
    pub origin: Origin,
}

/// The attribution stage: process view (with its exec cache) and container resolver.
pub(crate) struct Attribution {
    processes: ProcessView,
    containers: Resolver,
}

impl Attribution {
    /// Reads processes under `paths.proc_root`, cgroups under `paths.cgroup_root`, and
    /// runtime bundles and pod logs under the other `paths`.
    pub(crate) fn new(paths: Paths) -> Self {
        Self {
            processes: ProcessView::new(
                &paths.proc_root,
                ExecCache::new(EXEC_CACHE_ENTRIES, EXEC_KEEP_AFTER_EXIT),
            ),
            containers: Resolver::new(paths),
        }
    }

    /// A process started a program: its argv, complete, for calls it makes later.
    pub(crate) fn on_exec(&mut self, exec: Exec, now: Instant) {
        self.processes.execs.on_exec(exec, now);
    }

    /// A process forked a new one: the child has its parent's argv until it execs.
    pub(crate) fn on_fork(&mut self, tgid: u32, ppid: u32, now: Instant) {
        self.processes.execs.on_fork(tgid, ppid, now);
    }

    /// A process exited: its argv is kept a while for requests still in reassembly.
    pub(crate) fn on_exit(&mut self, tgid: u32, now: Instant) {
        self.processes.execs.on_exit(tgid, now);
    }

    /// Forgets what has aged out of the exec cache (the daemon's 1 s tick).
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.processes.execs.sweep(now);
    }

    /// The caller of `send`, its ancestors, and its origin. `now` serves the caches' ages.
    pub(crate) fn attribute(&mut self, send: &Send, now: Instant) -> Attributed {
        let (caller, ancestors) = self.processes.chain(send, now);
        let pids: Vec<u32> = std::iter::once(caller.pid)
            .chain(ancestors.iter().map(|a| a.pid))
            .collect();
        // The anchor's clue: containerd's shim among the ancestors names the pod sandbox,
        // and where its runtime keeps bundles. Only a shim that checks out (see `shim`); the
        // kernel's comm is a cheap first filter (anyone can take that name, so it is no more).
        let shim = ancestors
            .iter()
            .filter(|a| a.comm.starts_with("containerd-shim"))
            .find_map(|a| self.containers.shim(a.pid, now));
        let mut origin = self.containers.resolve(&pids, send.cgroup_id, now);
        if !matches!(origin, Origin::Container(_))
            && let Some(shim) = &shim
        {
            origin = self.containers.sandbox(shim);
        }
        Attributed {
            caller,
            ancestors,
            origin,
        }
    }
}
