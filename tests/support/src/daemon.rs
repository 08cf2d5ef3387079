//! The daemon under test.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use imds_snoop_line::{TextBody, TextLine};

use crate::{
    LINE_TIMEOUT, POLL, SETTLE,
    child::{terminate, wait_for_child},
    client::create,
    dir::{TestDir, read_or_empty},
    fake::{FakeImds, Secret},
    lines::LogLine,
};

/// The real `imds-snoop` binary, in the machine's own namespace (it traces them all),
/// writing to a log in its own scratch directory.
pub struct Daemon {
    child: Child,
    dir: TestDir,
    log: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts `binary` (the `imds-snoop` under test) with
    /// `--log-file <scratch>/imds-trace.log ARGS` and waits (up to 15 s) until it says
    /// `attached`.
    pub fn start(binary: &Path, args: &[&str]) -> Self {
        Self::start_logging_to(binary, None, args)
    }

    /// As [`Daemon::start`], with the trace log at `log` instead of the scratch directory
    /// (e.g. on a small tmpfs that a test fills up).
    pub fn start_logging_to(binary: &Path, log: Option<&Path>, args: &[&str]) -> Self {
        let dir = TestDir::new("daemon");
        let log = log.map_or_else(|| dir.path().join("imds-trace.log"), Path::to_owned);
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let mut cmd = Command::new(binary);
        cmd.arg("--log-file").arg(&log).args(args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(create(&stdout))
            .stderr(create(&stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let mut daemon = Self {
            child,
            dir,
            log,
            stdout,
            stderr,
        };
        daemon.wait_attached(&format!("{cmd:?}"));
        daemon
    }

    fn wait_attached(&mut self, what: &str) {
        let stderr = self.stderr.clone();
        wait_for_child(
            &mut self.child,
            Duration::from_secs(15),
            what,
            "say `attached`",
            || read_or_empty(&stderr).contains("attached"),
            || read_or_empty(&stderr),
        );
    }

    pub fn stderr(&self) -> String {
        read_or_empty(&self.stderr)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        read_or_empty(&self.stdout)
    }

    /// The log's complete lines (a line still being written is left for the next read).
    pub fn lines(&self) -> Vec<String> {
        let text = read_or_empty(&self.log);
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(str::to_owned).collect()
    }

    /// Lines caused by this test process's clients, parsed. Other IMDS traffic on the
    /// machine (another engineer's test run) is ignored.
    pub fn our_lines(&self) -> Vec<LogLine> {
        self.lines()
            .iter()
            .filter_map(|l| LogLine::parse(l))
            .filter(LogLine::is_ours)
            .collect()
    }

    /// The log and the daemon's stderr, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "--- trace log ({}) ---\n{}\n--- daemon stderr ---\n{}",
            self.log.display(),
            self.lines().join("\n"),
            self.stderr()
        )
    }

    /// Polls the log until `n` raw lines match `pred`; panics (with the log) after `timeout`.
    pub fn wait_lines(
        &self,
        pred: impl Fn(&str) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<String> = self.lines().into_iter().filter(|l| pred(l)).collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {n} matching log lines, found {}\n{}",
                found.len(),
                self.dump()
            );
            thread::sleep(POLL);
        }
    }

    /// Waits until `n` of our lines exist, then watches a little longer (`SETTLE`) to be
    /// sure no further line (a duplicate, a late one) turns up; returns exactly `n` lines.
    pub fn expect_our_lines(&self, n: usize, what: &str) -> Vec<LogLine> {
        let ours = |l: &str| LogLine::parse(l).is_some_and(|l| l.is_ours());
        self.wait_lines(ours, n, LINE_TIMEOUT);
        thread::sleep(SETTLE);
        let lines = self.our_lines();
        assert_eq!(
            lines.len(),
            n,
            "{what}: expected exactly {n} lines from our clients, got {}\n{}",
            lines.len(),
            self.dump()
        );
        lines
    }

    /// SIGTERM; it must flush, detach and exit 0 within 10 s.
    pub fn stop(&mut self) {
        match terminate(&mut self.child, Duration::from_secs(10)) {
            Some(status) if status.success() => {}
            Some(status) => panic!("imds-snoop exited {status} on SIGTERM\n{}", self.dump()),
            None => panic!(
                "imds-snoop did not exit within 10 s of SIGTERM\n{}",
                self.dump()
            ),
        }
    }

    /// Everything the daemon wrote: the log and its rotations, stdout, stderr.
    fn outputs(&self) -> Vec<(PathBuf, String)> {
        let mut dirs = vec![self.dir.path().to_owned()];
        if let Some(log_dir) = self.log.parent().filter(|d| *d != self.dir.path()) {
            dirs.push(log_dir.to_owned());
        }
        let mut files: Vec<PathBuf> = dirs
            .iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flat_map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let text = read_or_empty(&p);
                (p, text)
            })
            .collect()
    }

    /// Events the daemon reported lost so far: the sum of its `imds-snoop dropped N events`
    /// lines (each says what was lost since the one before).
    pub fn dropped_events(&self) -> u64 {
        self.lines()
            .iter()
            .filter(|l| l.contains("] imds-snoop dropped "))
            .map(|l| match TextLine::parse(l).map(|t| t.body) {
                Some(TextBody::Dropped { events }) => events,
                other => panic!("a dropped line the line contract reads as {other:?}: {l}"),
            })
            .sum()
    }

    /// [`Daemon::dropped_events`] once it has not changed for `quiet` (losses are reported
    /// on a 1 s tick, so `quiet` should span two); panics after 20 s without such a pause.
    pub fn dropped_events_when_settled(&self, quiet: Duration) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut last, mut since) = (self.dropped_events(), Instant::now());
        loop {
            thread::sleep(POLL);
            let now = self.dropped_events();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "losses kept being reported for 20 s\n{}",
                self.dump()
            );
        }
    }

    /// The daemon's `IMDS answered a call it did not see traced` lines so far: calls IMDS
    /// answered that no send hook traced (MPTCP, TCP Fast Open with the tracepoint attach).
    pub fn untraced_lines(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| {
                matches!(
                    TextLine::parse(l).map(|t| t.body),
                    Some(TextBody::Untraced { .. })
                )
            })
            .collect()
    }

    /// Panics if any secret any of `fakes` handed out (or an `extra` one) appears in
    /// anything the daemon wrote, if the daemon reported dropped events, or if it said IMDS
    /// answered a call it did not trace (ordinary clients' calls are all traced: such a
    /// line from them is a false alarm that makes every node INCONCLUSIVE).
    pub fn assert_clean(&self, fakes: &[&FakeImds], extra: &[&str]) {
        self.assert_untraced_free();
        self.assert_clean_but_untraced(fakes, extra);
    }

    /// Panics if the daemon wrote an untraced-response line.
    pub fn assert_untraced_free(&self) {
        let untraced = self.untraced_lines();
        assert!(
            untraced.is_empty(),
            "IMDS answers called untraced: {untraced:?}\n{}",
            self.dump()
        );
    }

    /// [`Daemon::assert_clean`] for a test that hides calls on purpose: untraced-response
    /// lines are its subject.
    fn assert_clean_but_untraced(&self, fakes: &[&FakeImds], extra: &[&str]) {
        self.assert_no_secret(fakes, extra);
        assert!(
            // Losses reported in the log are failures, except lines a test lost on purpose
            // to a full disk (the kernel and the writer queue must never drop here).
            !self.lines().iter().any(|l| l.contains("imds-snoop dropped")
                && !l.contains("ring buffer full 0, no scratch 0, writer queue full 0,")),
            "the daemon dropped events\n{}",
            self.dump()
        );
    }

    /// Panics if any secret any of `fakes` handed out (or an `extra` one) appears in
    /// anything the daemon wrote.
    pub fn assert_no_secret(&self, fakes: &[&FakeImds], extra: &[&str]) {
        let mut secrets: Vec<Secret> = fakes.iter().flat_map(|f| f.secrets()).collect();
        secrets.extend(extra.iter().map(|v| Secret {
            kind: "extra".into(),
            value: (*v).into(),
        }));
        for (path, text) in self.outputs() {
            for s in &secrets {
                if let Some(line) = text.lines().find(|l| l.contains(&s.value)) {
                    panic!(
                        "a secret ({}) the fake IMDS handed out is in {}:\n{line}\n{}",
                        s.kind,
                        path.display(),
                        self.dump()
                    );
                }
            }
        }
    }

    /// The test's standard ending: stop cleanly, then check no secret was written.
    pub fn finish(mut self, fakes: &[&FakeImds], extra: &[&str]) {
        self.stop();
        self.assert_clean(fakes, extra);
        self.keep_log();
    }

    /// The ending of a test that hides calls from the send hooks on purpose: as
    /// [`Daemon::finish`], except that untraced-response lines are expected.
    pub fn finish_with_untraced(mut self, fakes: &[&FakeImds], extra: &[&str]) {
        self.stop();
        self.assert_clean_but_untraced(fakes, extra);
        self.keep_log();
    }

    /// The ending of a test that makes the daemon drop events on purpose: stop cleanly,
    /// check no secret was written (the test itself checks the losses).
    pub fn finish_with_drops(mut self, fakes: &[&FakeImds], extra: &[&str]) {
        self.stop();
        self.assert_no_secret(fakes, extra);
        self.keep_log();
    }

    /// With `IMDS_E2E_KEEP_LOGS=DIR`, copies the trace log there (the README's excerpt
    /// comes from such a run).
    fn keep_log(&self) {
        let Some(dir) = std::env::var_os("IMDS_E2E_KEEP_LOGS") else {
            return;
        };
        let dir = PathBuf::from(dir);
        let _ = fs::create_dir_all(&dir);
        let name = self.dir.path().file_name().unwrap_or_default();
        let _ = fs::copy(&self.log, dir.join(name).with_extension("log"));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
