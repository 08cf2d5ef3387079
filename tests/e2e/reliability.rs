//! What a node-level tracer must survive: a SIGKILL and restart, hostile payloads to the IMDS
//! address, a crowd of callers that are gone before their line is written, and a ring buffer
//! that fills up.

use std::{fs, time::Duration};

use crate::harness::{
    Client, Daemon, FakeImds, FakeOpts, IMDS_V4, LINE_TIMEOUT, Netns, TestDir, client_script, curl,
    require_root, run_client, serial,
};

/// Every line of a trace log is whole: it starts with a timestamp and ends with our last
/// field (a call's ` dst:`), or is one of the daemon's start/stop/statuses markers, which
/// end with their closing parenthesis.
fn assert_no_torn_line(text: &str) {
    for line in text.lines() {
        let marker = [
            "imds-snoop started (",
            "imds-snoop stopped (",
            "imds-snoop statuses not traced from now (",
            "imds-snoop saw a reply dropped at the hop limit (",
        ]
        .iter()
        .any(|m| line.contains(m))
            && line.ends_with(')');
        assert!(
            line.starts_with("[20") && (line.contains(" dst:") || marker),
            "torn or foreign line: {line:?}"
        );
    }
}

#[test]
fn sigkill_and_restart_leave_nothing_attached_and_log_at_once() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("kill9");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let url = format!("http://{IMDS_V4}/latest/meta-data/instance-id");
    let curl = |tag: &str| {
        run_client(
            &ns,
            ns.command("curl")
                .args(["-s", "-o", "/dev/null", "-m", "5"])
                .arg(format!("{url}?{tag}")),
        )
    };

    // The log outlives both daemons (each daemon's own scratch directory does not).
    let log_dir = TestDir::new("kill9-log");
    let log = log_dir.path().join("imds-trace.log");
    let first = Daemon::start_logging_to(Some(&log), &[]);
    curl("first");
    first.wait_lines(|l| l.contains("?first"), 1, LINE_TIMEOUT);
    let programs_before = bpf_program_fds();
    // SAFETY: our own child.
    unsafe { libc::kill(first.pid() as libc::pid_t, libc::SIGKILL) };
    drop(first);
    assert!(
        bpf_program_fds() < programs_before,
        "the killed daemon's programs must go with its file descriptors"
    );

    // The new instance appends to the same log and logs the next call at once.
    let second = Daemon::start_logging_to(Some(&log), &[]);
    curl("second");
    second.wait_lines(|l| l.contains("?second"), 1, LINE_TIMEOUT);
    let text = fs::read_to_string(&log).unwrap();
    assert_no_torn_line(&text);
    let firsts = text.lines().filter(|l| l.contains("?first")).count();
    assert_eq!(firsts, 1, "the first call once, intact:\n{text}");
    second.finish(&[&fake], &[]);
}

/// BPF program file descriptors open on the machine (every loaded-and-attached program
/// of a process is held by one): from /proc/*/fdinfo, as `bpftool` would.
fn bpf_program_fds() -> usize {
    let mut n = 0;
    for proc in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(fds) = fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-prog")
            {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn hostile_payloads_are_logged_and_survived() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("hostile");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    run_client(
        &ns,
        ns.command("python3")
            .arg(client_script("hostile.py"))
            .args(["garbage", "longline", "manysends", "stalled", "halfopen"]),
    );
    // garbage 1 + longline 1 + manysends 1 + stalled 1 + halfopen 20.
    let lines = daemon.expect_our_lines(24, "hostile.py's payloads");
    let count = |pred: &dyn Fn(&str) -> bool| lines.iter().filter(|l| pred(&l.raw)).count();
    assert_eq!(count(&|l| l.contains("] malformed(!) (pid:")), 1, "garbage");
    assert_eq!(
        count(&|l| l.contains("/latest/meta-data/aaaa") && l.contains(" truncated")),
        1,
        "64 KiB request line"
    );
    assert_eq!(
        count(&|l| l.contains("] imdsv2 (pid:") && l.contains("/many-sends")),
        1,
        "headers in 30 sends are one v2 request"
    );
    assert_eq!(
        count(&|l| l.contains("/stalled") && l.contains(" truncated")),
        1,
        "unfinished headers are logged when they expire"
    );
    assert_eq!(
        count(&|l| l.contains(" req details: get /, ") && l.ends_with(" truncated")),
        20,
        "each half-open request is logged, truncated"
    );
    for l in &lines {
        assert!(
            l.raw.len() < 8192,
            "a line stays bounded: {} bytes",
            l.raw.len()
        );
    }
    daemon.finish(&[&fake], &["AQAEAhostileTokenValue0123456789=="]);
}

/// 300 processes, 30 at a time, each makes one request and exits at once: every call is
/// logged, with its own pid and its argv (kept from the kernel's exec event).
#[test]
fn short_lived_callers_are_all_logged_with_argv() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("crowd");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    const N: usize = 300;
    let script = format!(
        "import os, socket\n\
         for batch in range({N} // 30):\n\
         \x20   pids = []\n\
         \x20   for i in range(30):\n\
         \x20       pid = os.fork()\n\
         \x20       if pid == 0:\n\
         \x20           os.execvp('python3', ['python3', '-c', 'import socket; s = socket.create_connection((\"{IMDS_V4}\", 80), timeout=5); s.sendall(b\"GET /latest/meta-data/crowd HTTP/1.1\\\\r\\\\nHost: x\\\\r\\\\n\\\\r\\\\n\")', 'crowd-member'])\n\
         \x20       pids.append(pid)\n\
         \x20   for pid in pids:\n\
         \x20       os.waitpid(pid, 0)\n"
    );
    // 300 python3 starts: bounded, but not by the 30 s an ordinary client gets (measured:
    // over 30 s with a load average of 8 on 2 cores).
    Client::spawn(&ns, ns.command("python3").args(["-c", &script]))
        .wait_ok_within(Duration::from_secs(120));
    let lines = daemon.expect_our_lines(N, "the crowd's requests");
    let pids: std::collections::BTreeSet<u32> = lines.iter().map(|l| l.pid).collect();
    assert_eq!(pids.len(), N, "one line per caller");
    let without_argv: Vec<&str> = lines
        .iter()
        .filter(|l| !l.argv.contains("crowd-member"))
        .map(|l| l.raw.as_str())
        .collect();
    assert!(
        without_argv.is_empty(),
        "{} of {N} callers lost their argv, e.g. {:?}",
        without_argv.len(),
        without_argv.first()
    );
    std::thread::sleep(Duration::from_millis(100));
    daemon.finish(&[&fake], &[]);
}

/// A consumer that falls behind a small ring buffer: every request is either logged or
/// counted in the daemon's `imds-snoop dropped N events` lines, exactly, and the daemon
/// logs the next call once it catches up.
///
/// Only send events count in that line (exec/exit and response drops have counters of
/// their own), but the kernel's exec/exit events still take room in the ring, and before
/// they were counted apart a lost exit made the sum one too high. The guards from then
/// stay, as they keep the burst itself undisturbed: the client (ring_burst.py) execs before
/// it connects and primes its connection with one request (logged, not counted) before the
/// burst, and exits a second after the daemon is resumed; losses reported before the burst
/// are the baseline (taken once the reports have settled); a burst during which any task
/// was created or went away on the machine is run again (at most `ATTEMPTS` times).
#[test]
fn full_ring_drops_are_counted_exactly_and_the_daemon_recovers() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    const N: u64 = 200;
    const ATTEMPTS: usize = 5;
    let ns = Netns::new("ring");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    for attempt in 1..=ATTEMPTS {
        // 4096 bytes: the smallest ring capture.rs accepts; about a dozen 330-byte records.
        let daemon = Daemon::start(&["--ring-bytes", "4096"]);
        // Other processes' exec/exit events can overflow so small a ring before the burst
        // (seen here: 3 losses in the daemon's first second while other builds ran): wait
        // until no loss has been reported for two 1 s ticks, and count from there.
        let before = daemon.dropped_events_when_settled(Duration::from_millis(2500));
        let tag = format!("burst{attempt}");
        let out = run_client(
            &ns,
            ns.command("python3")
                .arg(client_script("ring_burst.py"))
                .args([&N.to_string(), &daemon.pid().to_string(), &tag]),
        );
        if out.stdout.trim() != "quiet" {
            eprintln!("e2e: attempt {attempt}: {}; again", out.stdout.trim());
            daemon.finish_with_drops(&[&fake], &[]);
            continue;
        }

        // Recovered: the next call is logged.
        curl(
            &ns,
            &[&format!(
                "http://{IMDS_V4}/latest/meta-data/instance-id?after-{tag}"
            )],
        );
        daemon.wait_lines(|l| l.contains(&format!("?after-{tag} ")), 1, LINE_TIMEOUT);
        // Losses are reported on a 1 s tick: wait until the books balance (or time out).
        let burst_lines = || {
            daemon
                .our_lines()
                .iter()
                .filter(|l| l.details.contains(&format!("/{tag}-")))
                .count() as u64
        };
        let deadline = std::time::Instant::now() + LINE_TIMEOUT;
        while burst_lines() + daemon.dropped_events() - before < N
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1500)); // one more tick: nothing further
        let (logged, dropped) = (burst_lines(), daemon.dropped_events() - before);
        assert!(
            logged > 0 && dropped > 0,
            "the burst must both fill the ring and be partly logged: {logged} logged, {dropped} dropped\n{}",
            daemon.dump()
        );
        assert_eq!(
            logged + dropped,
            N,
            "{logged} logged + {dropped} reported dropped != {N} sent\n{}",
            daemon.dump()
        );
        // The totals of the last report say where they were lost: the ring buffer.
        let last = daemon
            .lines()
            .into_iter()
            .rfind(|l| l.contains("imds-snoop dropped"))
            .unwrap();
        assert!(
            last.contains(&format!("(totals: ring buffer full {}, no scratch 0, writer queue full 0, log write failed 0)", before + dropped)),
            "{last}"
        );
        daemon.finish_with_drops(&[&fake], &[]);
        return;
    }
    panic!("the machine was busy (tasks started or ended) during all {ATTEMPTS} bursts");
}
