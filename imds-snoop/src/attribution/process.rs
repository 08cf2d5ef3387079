//! The caller and its ancestors: pids and comms as the kernel recorded them at the send,
//! argv from /proc while the process is still there.
//!
//! The kernel's chain is the authority (it was read at the moment of the call, so a caller
//! that has exited, or a pid since reused, cannot mislead it); /proc adds argv, and where
//! the process is already gone, the exec cache (fed by the kernel's exec/fork/exit events) does.
//!
//! A child forked without exec (a shell's `( ... )`, `$( ... )`, a pipeline stage) runs its
//! parent's image: the kernel's fork event gives it its parent's argv, copied when the
//! parent's is known then, else looked up through the parent later, unless the parent has
//! exec'd since the fork (then nothing is guessed).
//!
//! Reading /proc is most of the daemon's cost per event, so argv read there is cached in the
//! same table, per pid, until the kernel reports that pid's exec or exit, for at most
//! [`PROC_ARGV_TTL`] (exec/exit events can be lost when the ring is full), and only while the
//! kernel-recorded comm still matches.
#![warn(clippy::indexing_slicing, clippy::string_slice)]

use std::{
    cell::OnceCell,
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use procfs::process::Process;

use crate::{
    decode::{Exec, Send},
    redact::redact_tokens,
};

/// Longest argv kept, in characters: enough for a long `aws` or `java` command line.
const MAX_ARGV_CHARS: usize = 512;
/// How long argv read from /proc is trusted without an exec or exit event for its pid.
pub(super) const PROC_ARGV_TTL: Duration = Duration::from_secs(2);

/// A process of a call's chain: `pid`, the kernel's `comm`, and `argv` (`None` when the
/// process had exited before we could read /proc). The line contract's type, so the JSON
/// formatter writes a record's `ancestors` as they are, with no copy.
pub(crate) use imds_snoop_line::json::Proc;

pub(super) struct ProcessView {
    proc_root: PathBuf,
    pub execs: ExecCache,
}

impl ProcessView {
    pub(super) fn new(proc_root: &Path, execs: ExecCache) -> Self {
        Self {
            proc_root: proc_root.to_owned(),
            execs,
        }
    }

    /// The caller, then its ancestors up to pid 1.
    pub(super) fn chain(&mut self, send: &Send, now: Instant) -> (Proc, Vec<Proc>) {
        let caller = self.proc(send.tgid, &send.comm, now);
        let mut ancestors: Vec<Proc> = send
            .ancestors
            .iter()
            .map(|(pid, comm)| self.proc(*pid, comm, now))
            .collect();
        // The kernel records a bounded number of levels; finish a deep tree from /proc.
        let mut last = ancestors.last().map_or(send.tgid, |p| p.pid);
        while last > 1
            && ancestors.len() < 32
            && send.ancestors.len() >= imds_snoop_common::MAX_ANCESTORS
        {
            let Some(ppid) = self.ppid(last) else { break };
            if ppid == 0 {
                break;
            }
            let comm = self.comm(ppid).unwrap_or_default();
            ancestors.push(self.proc(ppid, &comm, now));
            last = ppid;
        }
        (caller, ancestors)
    }

    fn proc(&mut self, pid: u32, comm: &str, now: Instant) -> Proc {
        Proc {
            pid,
            comm: comm.to_owned(),
            argv: self.argv(pid, comm, now),
        }
    }

    fn process(&self, pid: u32) -> Option<Process> {
        Process::new_with_root(self.proc_root.join(pid.to_string())).ok()
    }

    /// argv as the kernel saw it at exec when we have it (complete, and immune to the
    /// partial /proc/<pid>/cmdline of a process that is exiting), else /proc. A cached
    /// entry whose process has exited is used when /proc has no argv for the pid (gone, or
    /// a zombie not yet reaped), not when the pid was taken by another process.
    ///
    /// argv read from /proc is remembered (see the module comment), so a live process is
    /// read once per [`PROC_ARGV_TTL`], not once per event.
    fn argv(&mut self, pid: u32, comm: &str, now: Instant) -> Option<String> {
        self.argv_at(pid, comm, now, 0)
    }

    fn argv_at(&mut self, pid: u32, comm: &str, now: Instant, depth: u32) -> Option<String> {
        if let Some(Known {
            source: Source::Fork { parent, seq },
            ..
        }) = self.execs.get(pid)
        {
            // Forked, not exec'd since (an exec would have replaced this entry): the parent's
            // image, as long as the parent has not exec'd since the fork either.
            let (parent, seq) = (*parent, *seq);
            if depth >= 16 || self.execs.execed_since(parent, seq) {
                return None;
            }
            return self.argv_at(parent, comm, now, depth + 1);
        }
        if let Some(k) = self.execs.get(pid)
            && k.exited.is_none()
            && match &k.source {
                Source::Exec => true,
                Source::Proc { comm: c, read } => {
                    c == comm && now.duration_since(*read) < PROC_ARGV_TTL
                }
                Source::Fork { .. } => false,
            }
        {
            return k.line();
        }
        let from_proc = self
            .process(pid)
            .and_then(|p| p.cmdline().ok())
            // Kernel threads and zombies have an empty cmdline.
            .filter(|args| !args.is_empty());
        match (from_proc, self.execs.get(pid)) {
            (Some(argv), _) => {
                let known = Known::new(
                    argv,
                    0,
                    now,
                    Source::Proc {
                        comm: comm.to_owned(),
                        read: now,
                    },
                );
                let line = known.line();
                self.execs.insert(pid, known, now);
                line
            }
            (None, Some(k)) => k.line(),
            (None, None) => None,
        }
    }

    fn ppid(&self, pid: u32) -> Option<u32> {
        let stat = self.process(pid)?.stat().ok()?;
        u32::try_from(stat.ppid).ok()
    }

    fn comm(&self, pid: u32) -> Option<String> {
        Some(self.process(pid)?.stat().ok()?.comm)
    }
}

/// What the kernel told us of a program started since the daemon began, or what /proc told
/// us of a caller or ancestor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Known {
    pub argv: Vec<String>,
    pub ppid: u32,
    seen: Instant,
    /// The cache's event number when this entry was made (see [`ExecCache::execed_since`]).
    born: u64,
    exited: Option<Instant>,
    source: Source,
    /// argv as logged (joined, redacted, truncated), made on first use.
    line: OnceCell<Option<String>>,
}

/// Where a [`Known`] entry's argv came from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// The kernel's exec event (or a fork of a process whose argv was known then):
    /// authoritative until that pid's exec or exit.
    Exec,
    /// The kernel's fork event of a process whose argv was not known: the parent's argv, as
    /// long as the parent has not exec'd since event number `seq`.
    Fork { parent: u32, seq: u64 },
    /// /proc/<pid>/cmdline, read at `read` for a process whose kernel comm was `comm`.
    Proc { comm: String, read: Instant },
}

impl Known {
    fn new(argv: Vec<String>, ppid: u32, now: Instant, source: Source) -> Self {
        Self {
            argv,
            ppid,
            seen: now,
            born: 0,
            exited: None,
            source,
            line: OnceCell::new(),
        }
    }

    fn line(&self) -> Option<String> {
        self.line
            .get_or_init(|| {
                (!self.argv.is_empty())
                    .then(|| truncate_chars(&redact_tokens(&self.argv.join(" ")), MAX_ARGV_CHARS))
            })
            .clone()
    }
}

/// argv of recently started processes, by pid, bounded in count and in age after exit.
pub(super) struct ExecCache {
    entries: HashMap<u32, Known>,
    max_entries: usize,
    keep_after_exit: Duration,
    /// Exec and fork events so far: orders them (ring records arrive in order).
    seq: u64,
}

impl ExecCache {
    pub(super) fn new(max_entries: usize, keep_after_exit: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            max_entries,
            keep_after_exit,
            seq: 0,
        }
    }

    pub(super) fn on_exec(&mut self, e: Exec, now: Instant) {
        self.seq += 1;
        let mut known = Known::new(e.argv, e.ppid, now, Source::Exec);
        known.born = self.seq;
        self.insert(e.tgid, known, now);
    }

    /// `tgid` was forked by `ppid`: it runs its parent's image. The parent's argv is copied
    /// if the kernel gave it (exec or an earlier fork) and the parent is still running it;
    /// otherwise the child points to its parent, resolved when needed.
    pub(super) fn on_fork(&mut self, tgid: u32, ppid: u32, now: Instant) {
        self.seq += 1;
        let source = match self.entries.get(&ppid) {
            Some(p) if p.exited.is_none() && p.source == Source::Exec => {
                let mut known = Known::new(p.argv.clone(), ppid, now, Source::Exec);
                known.born = self.seq;
                self.insert(tgid, known, now);
                return;
            }
            _ => Source::Fork {
                parent: ppid,
                seq: self.seq,
            },
        };
        let mut known = Known::new(Vec::new(), ppid, now, source);
        known.born = self.seq;
        self.insert(tgid, known, now);
    }

    /// Whether `pid` started another image (or the pid was taken anew) after event `seq`.
    fn execed_since(&self, pid: u32, seq: u64) -> bool {
        self.entries
            .get(&pid)
            .is_some_and(|k| k.born > seq && matches!(k.source, Source::Exec | Source::Fork { .. }))
    }

    fn insert(&mut self, tgid: u32, known: Known, now: Instant) {
        if self.entries.len() >= self.max_entries {
            self.sweep(now);
        }
        self.entries.insert(tgid, known);
    }

    /// Kept a while after exit: the exiting caller's request may still be in reassembly.
    pub(super) fn on_exit(&mut self, tgid: u32, now: Instant) {
        if let Some(k) = self.entries.get_mut(&tgid) {
            k.exited = Some(now);
        }
    }

    pub(super) fn get(&self, pid: u32) -> Option<&Known> {
        self.entries.get(&pid)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops exited entries older than `keep_after_exit` and stale /proc reads of live
    /// processes; if still at the bound, drops the oldest half of the live ones too (a live
    /// process is still in /proc anyway).
    pub(super) fn sweep(&mut self, now: Instant) {
        let keep = self.keep_after_exit;
        self.entries.retain(|_, k| match (k.exited, &k.source) {
            (Some(t), _) => now.duration_since(t) < keep,
            (None, Source::Proc { read, .. }) => now.duration_since(*read) < PROC_ARGV_TTL,
            (None, Source::Exec | Source::Fork { .. }) => true,
        });
        if self.entries.len() >= self.max_entries {
            let mut seen: Vec<Instant> = self.entries.values().map(|k| k.seen).collect();
            seen.sort_unstable();
            if let Some(&cutoff) = seen.get(seen.len() / 2) {
                self.entries.retain(|_, k| k.seen > cutoff);
            }
        }
    }
}

pub(super) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", s.get(..cut).unwrap_or(s)),
        None => s.to_owned(),
    }
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    reason = "tests index what they just checked; a panic there is a failed test"
)]
mod tests {
    use super::*;

    fn send_from(tgid: u32, comm: &str, ancestors: Vec<(u32, String)>) -> Send {
        Send {
            ts_ns: 0,
            sock_id: 0,
            cgroup_id: 0,
            size: 0,
            tgid,
            ns_tgid: tgid,
            tid: tgid,
            uid: 0,
            gid: 0,
            netns: 0,
            dst: ("169.254.169.254".parse().unwrap(), 80),
            src: ("127.0.0.1".parse().unwrap(), 40000),
            comm: comm.into(),
            ancestors,
            payload: vec![],
            truncated: false,
            unreadable: false,
        }
    }

    fn view() -> ProcessView {
        ProcessView::new(
            Path::new("/proc"),
            ExecCache::new(16, Duration::from_secs(1)),
        )
    }

    fn exec(tgid: u32, argv: &[&str]) -> Exec {
        Exec {
            tgid,
            ppid: 1,
            comm: argv[0].into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn live_process_gets_argv_from_proc() {
        let me = std::process::id();
        let mut view = view();
        let (caller, _) = view.chain(&send_from(me, "test", vec![]), Instant::now());
        let argv = caller.argv.expect("own argv");
        let exe = std::env::args().next().unwrap();
        assert!(argv.starts_with(&exe), "{argv}");
    }

    #[test]
    fn exited_process_keeps_kernel_identity_without_argv() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mut view = view();
        let (caller, ancestors) = view.chain(
            &send_from(pid, "true", vec![(1, "init".into())]),
            Instant::now(),
        );
        assert_eq!(caller.pid, pid);
        assert_eq!(caller.comm, "true");
        assert_eq!(caller.argv, None);
        assert_eq!(ancestors[0].pid, 1);

        // With its exec seen by the kernel, the departed caller keeps its argv (redacted).
        view.execs.on_exec(
            exec(pid, &["true", "-H", "X-aws-ec2-metadata-token: SECRET"]),
            Instant::now(),
        );
        view.execs.on_exit(pid, Instant::now());
        let (caller, _) = view.chain(&send_from(pid, "true", vec![]), Instant::now());
        assert_eq!(
            caller.argv.as_deref(),
            Some("true -H X-aws-ec2-metadata-token: **token redacted**")
        );
    }

    #[test]
    fn exec_argv_wins_while_live_and_loses_to_a_reused_pid() {
        let me = std::process::id();
        let mut view = view();
        view.execs
            .on_exec(exec(me, &["from-exec", "a"]), Instant::now());
        let (caller, _) = view.chain(&send_from(me, "x", vec![]), Instant::now());
        assert_eq!(caller.argv.as_deref(), Some("from-exec a"));
        // Marked exited, yet the pid is alive: it was taken by another process, whose argv
        // only /proc knows.
        view.execs.on_exit(me, Instant::now());
        let (caller, _) = view.chain(&send_from(me, "x", vec![]), Instant::now());
        let exe = std::env::args().next().unwrap();
        assert!(caller.argv.unwrap().starts_with(&exe));
    }

    /// argv read from /proc is read once, then served from the cache until that pid's exec
    /// or exit, a changed comm, or the TTL; after the exit it is still there for the line.
    #[test]
    fn proc_argv_is_cached_until_exec_exit_comm_change_or_ttl() {
        let root = std::env::temp_dir().join(format!("imds-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let pid = 4242;
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let cmdline = |argv: &str| std::fs::write(dir.join("cmdline"), argv).unwrap();
        cmdline("aws\0s3\0ls\0");
        let mut view = ProcessView::new(&root, ExecCache::new(16, Duration::from_secs(30)));
        let t0 = Instant::now();
        let argv = |view: &mut ProcessView, comm: &str, at: Instant| {
            view.chain(&send_from(pid, comm, vec![]), at).0.argv
        };
        assert_eq!(argv(&mut view, "aws", t0).as_deref(), Some("aws s3 ls"));

        // Within the TTL, /proc is not read again.
        cmdline("aws\0changed\0");
        let t1 = t0 + PROC_ARGV_TTL / 2;
        assert_eq!(argv(&mut view, "aws", t1).as_deref(), Some("aws s3 ls"));
        // Another comm from the kernel: not the process we read, read again.
        assert_eq!(argv(&mut view, "other", t1).as_deref(), Some("aws changed"));
        cmdline("aws\0third\0");
        // Past the TTL: read again.
        let t2 = t1 + PROC_ARGV_TTL;
        assert_eq!(argv(&mut view, "other", t2).as_deref(), Some("aws third"));
        // The kernel's exec replaces it at once.
        view.execs.on_exec(exec(pid, &["python3", "app.py"]), t2);
        assert_eq!(
            argv(&mut view, "python3", t2).as_deref(),
            Some("python3 app.py")
        );

        // A cached /proc read outlives the process, for the lines still to be written.
        view.execs.on_exit(pid, t2);
        cmdline("sh\0");
        let t3 = t2 + Duration::from_millis(1);
        assert_eq!(
            argv(&mut view, "sh", t3).as_deref(),
            Some("sh"),
            "pid reused"
        );
        view.execs.on_exit(pid, t3);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            argv(&mut view, "sh", t3).as_deref(),
            Some("sh"),
            "after exit"
        );
        // Swept with the other exited entries.
        view.execs.sweep(t3 + Duration::from_secs(31));
        assert_eq!(argv(&mut view, "sh", t3).as_deref(), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn exec_cache_is_bounded_in_count_and_age() {
        let mut cache = ExecCache::new(16, Duration::from_millis(50));
        let t0 = Instant::now();
        for pid in 0..100 {
            cache.on_exec(
                exec(100_000 + pid, &["x"]),
                t0 + Duration::from_millis(pid.into()),
            );
            assert!(cache.len() <= 16, "{} entries", cache.len());
        }
        // The newest survive a count eviction.
        assert!(cache.get(100_099).is_some());
        cache.on_exit(100_099, t0 + Duration::from_millis(100));
        cache.sweep(t0 + Duration::from_millis(120));
        assert!(cache.get(100_099).is_some(), "kept shortly after exit");
        cache.sweep(t0 + Duration::from_millis(200));
        assert!(cache.get(100_099).is_none(), "gone after keep_after_exit");
    }

    #[test]
    fn long_argv_is_truncated_on_a_char_boundary() {
        let s = "é".repeat(600);
        let t = truncate_chars(&s, MAX_ARGV_CHARS);
        assert_eq!(t.chars().count(), MAX_ARGV_CHARS + 3);
        assert!(t.ends_with("..."));
    }
}
