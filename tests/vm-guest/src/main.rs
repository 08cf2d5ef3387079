//! `vm-guest`: the end-to-end check that `cargo xtask vm-test` runs inside each kernel-matrix
//! VM (as a static musl binary in the initramfs) and, on the host kernel, inside a network
//! namespace. Nothing else is needed in the guest: no Python, no curl.
//!
//! ```text
//! vm-guest [--daemon PATH] [--workdir DIR] [--ignore-foreign] [--attach-timeout SECS] SPEC...
//!   SPEC = fentry | kprobe | tracepoint   run the suite with `--attach SPEC`, expect it attached
//!        | auto=MODE[:ERRNO]              run the suite with `--attach auto`, expect MODE, and
//!                                         a refusal line for each hook tried before it
//!                                         (with ERRNO: each refused with that errno)
//!        | refuse=MODE[:ERRNO]            expect `--attach MODE` to fail cleanly (no hook;
//!                                         with ERRNO: the kernel's errno, e.g. 524 ENOTSUPP)
//!        | drop                           the hop-limit drop hook: a routed pod's TTL-1
//!                                         token reply logged as dropped (drop_check.rs)
//! vm-guest client KIND                     (internal) one IMDS client, run as our child
//! vm-guest protos [--btf F] [--kernel R]   only check the hook prototypes (no root needed)
//! ```
//!
//! Before the suite, the runner checks every hook prototype of the kernel program (the
//! `// proto:` lines of imds-snoop-ebpf's sources, built in) against this kernel's
//! `/sys/kernel/btf/vmlinux`, one `IMDS-PROTO` line per hook and a summary the host parses:
//! `IMDS-PROTOS kernel=K result=pass|fail hooks=N [reason=...]` (see `protos.rs`).
//!
//! Per SPEC it starts `imds-snoop --attach M --log-file DIR/imds-M.log`, waits for its
//! `attached ...` line, runs the clients below as child processes (so their pid, comm
//! `vm-guest`, argv `vm-guest client KIND` and parent are known), waits for the lines, stops
//! the daemon with SIGTERM (it must exit 0) and checks that the log holds exactly the expected
//! lines. The clients: `v1` (GET), `v2` (token PUT, then GET with the token), `writev` (one
//! writev(2) of several iovecs), `split` (a v2 GET in four write(2)s, the token header in the
//! third: the daemon must reassemble), `v6` ([fd00:ec2::254]), `mapped` (an IPv6 socket to
//! ::ffff:169.254.169.254, logged as IPv4), `other` (port 8080: must not be logged), `burst`
//! (8 threads at once: none may be lost). Each line must carry the right label and level,
//! path, comm, argv, parent (this runner) and destination; the token never appears.
//! Then it prints one line for the host to parse:
//!
//! `IMDS-RESULT kernel=6.1.0-56-cloud-amd64 mode=fentry attached=fentry result=pass events=15 secs=2.1`
//! `IMDS-RESULT kernel=... mode=kprobe attached=- result=fail events=3 secs=9.0 reason=...`
//!
//! (`reason=` is always last and runs to the end of the line.) The fake IMDS listens on
//! 169.254.169.254:80, [fd00:ec2::254]:80 and 169.254.169.254:8080 (a port that must not be
//! traced); those addresses must already be on `lo` (the VM's /init, or the host's netns).

mod drop_check;
mod protos;
mod routed;

use std::{
    collections::BTreeMap,
    env, fs,
    io::{self, IoSlice, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use imds_snoop_line::{TextBody, TextLine};
use imds_snoop_test_support::TinyImds;

const IMDS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// A port on the IMDS address that the daemon must not trace.
const OTHER_PORT: u16 = 8080;
/// The token our fake IMDS hands out and the clients send; it must never reach the log.
const TOKEN: &str = "VmGuestT0ken-AQAEAxxSECRETxx-0123456789abcdef";
/// argv[0] of our clients and the comm the kernel gives them (the binary's file name).
const COMM: &str = "vm-guest";
/// Threads of the `burst` client, each making one request at the same time.
const BURST: usize = 8;
const V4_DST: &str = "169.254.169.254:80";
const V6_DST: &str = "[fd00:ec2::254]:80";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("protos") {
        // Another kernel's BTF (e.g. extracted from its vmlinux) with `--btf F --kernel R`.
        let (mut btf, mut kernel) = ("/sys/kernel/btf/vmlinux".to_owned(), kernel_release());
        let mut it = args.iter().skip(1);
        while let Some(flag) = it.next() {
            match (flag.as_str(), it.next()) {
                ("--btf", Some(v)) => btf.clone_from(v),
                ("--kernel", Some(v)) => kernel.clone_from(v),
                _ => {
                    eprintln!("usage: vm-guest protos [--btf PATH] [--kernel RELEASE]");
                    return ExitCode::from(2);
                }
            }
        }
        return if protos::run(&kernel, &btf, &out) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if args.first().map(String::as_str) == Some("client") {
        return match client(args.get(1).map(String::as_str).unwrap_or("")) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vm-guest client: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runner(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vm-guest: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Runner
// ---------------------------------------------------------------------------------------------

struct Options {
    daemon: PathBuf,
    workdir: PathBuf,
    /// Ignore trace lines of processes that are not ours (the host run: other tests on the
    /// same kernel may talk to their own fake IMDS while we run).
    ignore_foreign: bool,
    attach_timeout: Duration,
    specs: Vec<Spec>,
}

#[derive(Clone, Debug)]
enum Spec {
    /// Run the suite with `--attach mode` and expect the daemon to report `expect`; with
    /// `auto`, each hook `auto` tries before `expect` must be refused in a line of its own
    /// (with `errno`: for that errno).
    Attach {
        mode: String,
        expect: String,
        errno: Option<i32>,
    },
    /// Expect `--attach mode` to be refused: non-zero exit and no `attached` line (with
    /// `errno`: its error names that errno).
    Refuse { mode: String, errno: Option<i32> },
    /// The hop-limit drop hook (`drop.rs`): a token PUT from a routed "pod" whose TTL-1
    /// reply dies in the "node"'s forwarding path must be logged as dropped.
    Drop,
}

impl Spec {
    fn mode(&self) -> &str {
        match self {
            Spec::Attach { mode, .. } | Spec::Refuse { mode, .. } => mode,
            Spec::Drop => DROP,
        }
    }
}

const MODES: [&str; 3] = ["fentry", "kprobe", "tracepoint"];
/// The spec (and matrix column) of the drop-hook check.
const DROP: &str = "drop";

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut opts = Options {
        daemon: PathBuf::from("/imds-snoop"),
        workdir: PathBuf::from("/tmp"),
        ignore_foreign: false,
        attach_timeout: Duration::from_secs(120),
        specs: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--daemon" => opts.daemon = value("--daemon")?.into(),
            "--workdir" => opts.workdir = value("--workdir")?.into(),
            "--ignore-foreign" => opts.ignore_foreign = true,
            "--attach-timeout" => {
                let v = value("--attach-timeout")?;
                let secs: u64 = v.parse().map_err(|_| format!("bad --attach-timeout {v}"))?;
                opts.attach_timeout = Duration::from_secs(secs);
            }
            "-h" | "--help" => {
                return Err("usage: vm-guest [--daemon PATH] [--workdir DIR] [--ignore-foreign] \
                            [--attach-timeout SECS] fentry|kprobe|tracepoint|auto=MODE|refuse=MODE|drop..."
                    .into());
            }
            DROP => opts.specs.push(Spec::Drop),
            spec => {
                // `MODE:ERRNO`
                let with_errno = |v: &str| -> Result<(String, Option<i32>), String> {
                    match v.split_once(':') {
                        None => Ok((v.to_owned(), None)),
                        Some((m, e)) => e
                            .parse()
                            .map(|e| (m.to_owned(), Some(e)))
                            .map_err(|_| format!("bad errno in spec {spec:?}")),
                    }
                };
                let parsed = if let Some(m) = spec.strip_prefix("auto=") {
                    let (expect, errno) = with_errno(m)?;
                    Spec::Attach {
                        mode: "auto".into(),
                        expect,
                        errno,
                    }
                } else if let Some(m) = spec.strip_prefix("refuse=") {
                    let (mode, errno) = with_errno(m)?;
                    Spec::Refuse { mode, errno }
                } else {
                    Spec::Attach {
                        mode: spec.into(),
                        expect: spec.into(),
                        errno: None,
                    }
                };
                let checked = match &parsed {
                    Spec::Attach { expect, .. } => expect.as_str(),
                    Spec::Refuse { mode, .. } => mode.as_str(),
                    Spec::Drop => DROP,
                };
                if !MODES.contains(&checked) {
                    return Err(format!("unknown spec {spec:?}"));
                }
                opts.specs.push(parsed);
            }
        }
    }
    if opts.specs.is_empty() {
        return Err("no attach mode given (try: vm-guest fentry kprobe auto=fentry)".into());
    }
    Ok(opts)
}

fn runner(args: &[String]) -> Result<bool, String> {
    let opts = parse_args(args)?;
    let kernel = kernel_release();
    let btf = fs::read("/sys/kernel/btf/vmlinux").ok();
    let has_tp = btf
        .as_deref()
        .is_some_and(|b| contains(b, b"btf_trace_tcp_sendmsg_locked"));
    out(&format!(
        "IMDS-INFO kernel={kernel} btf={} tcp_sendmsg_locked={}",
        yes_no(btf.is_some()),
        yes_no(has_tp)
    ));

    let mut all_ok = protos::run(&kernel, "/sys/kernel/btf/vmlinux", &out);

    let server = start_fake_imds();
    for spec in &opts.specs {
        let start = Instant::now();
        let outcome = match &server {
            Err(e) => Outcome::fail(0, format!("fake IMDS did not start: {e}")),
            Ok(()) => match spec {
                Spec::Attach {
                    mode,
                    expect,
                    errno,
                } => run_suite(&opts, mode, expect, *errno),
                Spec::Refuse { mode, errno } => run_refused(&opts, mode, *errno),
                Spec::Drop => drop_check::run(&opts),
            },
        };
        all_ok &= outcome.ok;
        let mut line = format!(
            "IMDS-RESULT kernel={kernel} mode={} ",
            match spec {
                Spec::Refuse {
                    mode,
                    errno: Some(e),
                } => format!("{mode} expect=refused errno={e}"),
                Spec::Refuse { mode, errno: None } => format!("{mode} expect=refused"),
                Spec::Attach { errno: Some(e), .. } => format!("{} errno={e}", spec.mode()),
                Spec::Attach { .. } | Spec::Drop => spec.mode().to_owned(),
            }
        );
        line.push_str(&format!(
            "attached={} result={} events={} secs={:.1}",
            outcome.attached.as_deref().unwrap_or("-"),
            if outcome.ok { "pass" } else { "fail" },
            outcome.events,
            start.elapsed().as_secs_f64()
        ));
        if let Some(reason) = &outcome.reason {
            line.push_str(" reason=");
            line.push_str(&one_line(reason));
        }
        out(&line);
    }
    out(&format!("IMDS-DONE kernel={kernel} ok={}", yes_no(all_ok)));
    Ok(all_ok)
}

struct Outcome {
    ok: bool,
    attached: Option<String>,
    events: usize,
    reason: Option<String>,
}

impl Outcome {
    fn fail(events: usize, reason: String) -> Self {
        Self {
            ok: false,
            attached: None,
            events,
            reason: Some(reason),
        }
    }
}

/// `uname -r`.
fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Prints a result line on stdout and flushes (the console is what the host reads).
fn out(line: &str) {
    let mut o = io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// --- the daemon -------------------------------------------------------------------------------

struct Daemon {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Daemon {
    fn spawn(opts: &Options, mode: &str, log: &Path) -> Result<Self, String> {
        Self::spawn_with(opts, mode, log, &[])
    }

    /// With more daemon flags (`--host-netns ...`).
    fn spawn_with(opts: &Options, mode: &str, log: &Path, extra: &[&str]) -> Result<Self, String> {
        let mut child = Command::new(&opts.daemon)
            .args(["--attach", mode, "--log-file"])
            .arg(log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", opts.daemon.display()))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        let tag = format!("[imds-snoop --attach {mode}]");
        let reader = thread::spawn(move || {
            let mut pipe = io::BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match io::BufRead::read_until(&mut pipe, b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(&String::from_utf8_lossy(&buf))
                            .trim_end()
                            .to_owned();
                        eprintln!("{tag} {line}");
                        sink.lock().unwrap().push(line);
                    }
                }
            }
        });
        Ok(Self {
            child,
            stderr,
            reader: Some(reader),
        })
    }

    fn stderr_has(&self, needle: &str) -> Option<String> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    fn last_error(&self) -> String {
        let lines = self.stderr.lock().unwrap();
        lines
            .iter()
            .rev()
            .find(|l| l.contains("ERROR") || l.contains("error"))
            .or(lines.last())
            .cloned()
            .unwrap_or_else(|| "(no output)".into())
    }

    /// Waits for the `attached ...` line; `Err` if the daemon exits or the time runs out.
    fn wait_attached(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr_has("attached ") {
                return Ok(line);
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                self.join_reader();
                if let Some(line) = self.stderr_has("attached ") {
                    return Ok(line);
                }
                return Err(format!(
                    "imds-snoop exited ({st}) before attaching: {}",
                    self.last_error()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("no `attached` line after {}s", timeout.as_secs()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the exit status (SIGKILL after `timeout`).
    fn stop(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        if let Ok(Some(st)) = self.child.try_wait() {
            self.join_reader();
            return Err(format!(
                "imds-snoop had already exited ({st}): {}",
                self.last_error()
            ));
        }
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let st = wait_timeout(&mut self.child, timeout);
        self.join_reader();
        st.ok_or_else(|| {
            format!(
                "imds-snoop still running {}s after SIGTERM (killed)",
                timeout.as_secs()
            )
        })
    }

    fn join_reader(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
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

/// Waits for `child` up to `timeout`; kills it and returns `None` when it did not exit.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut outs = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            outs.push(c);
        }
    }
    outs
}

fn attach_label(mode: &str) -> String {
    match mode {
        "fentry" => "attached fentry (fentry/tcp_sendmsg)".into(),
        "kprobe" => "attached kprobe (kprobe/tcp_sendmsg)".into(),
        "tracepoint" => "attached tracepoint (tp_btf/tcp_sendmsg_locked)".into(),
        other => format!("attached {other}"),
    }
}

/// How Rust's `io::Error` (aya's syscall errors, shown by the daemon) ends for an errno.
fn errno_text(errno: i32) -> String {
    format!("(os error {errno})")
}

fn run_refused(opts: &Options, mode: &str, errno: Option<i32>) -> Outcome {
    let log = opts.workdir.join(format!("imds-refuse-{mode}.log"));
    let mut daemon = match Daemon::spawn(opts, mode, &log) {
        Ok(d) => d,
        Err(e) => return Outcome::fail(0, e),
    };
    let Some(st) = wait_timeout(&mut daemon.child, opts.attach_timeout) else {
        daemon.join_reader();
        let reason = match daemon.stderr_has("attached ") {
            Some(l) => format!("expected --attach {mode} to be refused, but: {l}"),
            None => format!(
                "--attach {mode} neither attached nor exited in {}s",
                opts.attach_timeout.as_secs()
            ),
        };
        return Outcome::fail(0, reason);
    };
    daemon.join_reader();
    if let Some(l) = daemon.stderr_has("attached ") {
        return Outcome::fail(
            0,
            format!("expected --attach {mode} to be refused, but: {l} ({st})"),
        );
    }
    if st.success() {
        return Outcome::fail(0, format!("--attach {mode} exited 0 without attaching"));
    }
    if let Some(e) = errno
        && daemon.stderr_has(&errno_text(e)).is_none()
    {
        return Outcome::fail(
            0,
            format!(
                "--attach {mode} was refused, but not with errno {e}: {}",
                daemon.last_error()
            ),
        );
    }
    eprintln!(
        "vm-guest: --attach {mode} refused as expected ({st}): {}",
        daemon.last_error()
    );
    Outcome {
        ok: true,
        attached: None,
        events: 0,
        reason: None,
    }
}

// --- one suite run ----------------------------------------------------------------------------

/// One line the log must hold.
#[derive(Clone, Debug)]
struct Want {
    kind: &'static str,
    pid: u32,
    label: &'static str,
    level: &'static str,
    path: String,
    dst: &'static str,
    /// The response status the line must show (` -> 200`): joined by the cgroup_skb
    /// ingress program, so every kernel of the matrix exercises it.
    status: u16,
}

/// The clients, in the order they run, and what each must produce.
const CLIENTS: [&str; 9] = [
    "v1", "v2", "writev", "split", "v6", "mapped", "other", "burst", "missing",
];

/// The path the fake IMDS answers 404.
const MISSING: &str = "/latest/meta-data/vm-guest/missing";

fn wants_for(kind: &'static str, pid: u32) -> Vec<Want> {
    let w = |label: &'static str, path: &str, dst: &'static str| Want {
        kind,
        pid,
        label,
        level: if label == "imdsv1(!)" {
            "WARNING"
        } else {
            "INFO"
        },
        path: path.to_owned(),
        dst,
        status: if path == MISSING { 404 } else { 200 },
    };
    match kind {
        "v1" => vec![w("imdsv1(!)", "/latest/meta-data/vm-guest/v1", V4_DST)],
        "v2" => vec![
            w("imdsv2(token)", "/latest/api/token", V4_DST),
            w("imdsv2", "/latest/meta-data/vm-guest/v2", V4_DST),
        ],
        "writev" => vec![w("imdsv1(!)", "/latest/meta-data/vm-guest/writev", V4_DST)],
        "split" => vec![w("imdsv2", "/latest/meta-data/vm-guest/split", V4_DST)],
        "v6" => vec![w("imdsv1(!)", "/latest/meta-data/vm-guest/v6", V6_DST)],
        // An IPv6 socket talking to IPv4 IMDS (as dual-stack runtimes such as Java do) is
        // reported as IPv4.
        "mapped" => vec![w("imdsv1(!)", "/latest/meta-data/vm-guest/mapped", V4_DST)],
        "other" => vec![],
        "missing" => vec![w("imdsv1(!)", MISSING, V4_DST)],
        "burst" => (0..BURST)
            .map(|i| {
                w(
                    "imdsv1(!)",
                    &format!("/latest/meta-data/vm-guest/burst/{i}"),
                    V4_DST,
                )
            })
            .collect(),
        _ => unreachable!("unknown client {kind}"),
    }
}

/// The daemon's line for `--attach auto` refused `mode` (capture.rs: `{mode} refused: {why};
/// trying the next attach point`, `mode` as `attach_label` shows it).
fn fallback_line(mode: &str) -> String {
    format!(
        "{} refused: ",
        attach_label(mode).trim_start_matches("attached ")
    )
}

fn run_suite(opts: &Options, mode: &str, expect: &str, errno: Option<i32>) -> Outcome {
    let log = opts.workdir.join(format!("imds-{mode}.log"));
    let _ = fs::remove_file(&log);
    let mut daemon = match Daemon::spawn(opts, mode, &log) {
        Ok(d) => d,
        Err(e) => return Outcome::fail(0, e),
    };
    let attached_line = match daemon.wait_attached(opts.attach_timeout) {
        Ok(l) => l,
        Err(e) => return Outcome::fail(0, e),
    };
    let attached = MODES
        .iter()
        .find(|m| attached_line.contains(&attach_label(m)))
        .map(|m| (*m).to_owned())
        .unwrap_or_else(|| "?".into());
    let mut failures = Vec::new();
    if attached != expect {
        failures.push(format!(
            "expected `{}`, daemon said: {attached_line}",
            attach_label(expect)
        ));
    }
    // `auto` falling back says why, one line per hook it could not use.
    if mode == "auto" {
        for before in MODES.iter().take_while(|m| **m != expect) {
            let needle = fallback_line(before);
            match daemon.stderr_has(&needle) {
                None => failures.push(format!(
                    "--attach auto chose {expect} without a `{needle}...; trying the next \
                     attach point` line"
                )),
                Some(l) if !l.contains("trying the next attach point") => failures.push(format!(
                    "--attach auto's refusal of {before} does not say what next: {l}"
                )),
                Some(l) if errno.is_some_and(|e| !l.contains(&errno_text(e))) => {
                    failures.push(format!(
                        "--attach auto: {before} refused, but not with errno {}: {l}",
                        errno.unwrap_or_default()
                    ));
                }
                Some(l) => eprintln!("vm-guest: --attach auto fell back as expected: {l}"),
            }
        }
    }

    // The clients, one after the other (burst is concurrent inside).
    let mut wants = Vec::new();
    let mut pids: BTreeMap<u32, &'static str> = BTreeMap::new();
    for kind in CLIENTS {
        match run_client(kind) {
            Ok(pid) => {
                pids.insert(pid, kind);
                wants.extend(wants_for(kind, pid));
            }
            Err(e) => failures.push(format!("client {kind}: {e}")),
        }
    }

    // Lines must show up while the daemon runs, not only when it flushes at exit.
    let own = |lines: &[LogLine]| {
        lines
            .iter()
            .filter(|l| l.pid.is_some_and(|p| pids.contains_key(&p)))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut live = 0;
    while Instant::now() < deadline {
        live = own(&read_log(&log));
        if live >= wants.len() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    // Anything extra (a split request logged twice, the other port) has a moment to appear.
    thread::sleep(Duration::from_millis(500));
    if live < wants.len() {
        failures.push(format!(
            "only {live}/{} lines in the log after 20s while running",
            wants.len()
        ));
    }

    match daemon.stop(Duration::from_secs(30)) {
        Ok(st) if st.success() => {}
        Ok(st) => failures.push(format!(
            "imds-snoop exited {st} after SIGTERM: {}",
            daemon.last_error()
        )),
        Err(e) => failures.push(e),
    }

    let lines = read_log(&log);
    let events = own(&lines);
    check_lines(&lines, &wants, &pids, opts.ignore_foreign, &mut failures);

    if !failures.is_empty() {
        eprintln!(
            "vm-guest: --attach {mode}: {} problem(s); the log ({}) held:",
            failures.len(),
            log.display()
        );
        for l in lines.iter().take(40) {
            eprintln!("  log: {}", l.raw);
        }
        for f in &failures {
            eprintln!("  FAIL: {f}");
        }
    }
    Outcome {
        ok: failures.is_empty(),
        attached: Some(attached),
        events,
        reason: (!failures.is_empty()).then(|| summarize(&failures)),
    }
}

/// The first few failures, each cut short, for the one-line result (the console has all).
fn summarize(failures: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut s: Vec<String> = failures.iter().take(SHOWN).map(|f| cut(f, 400)).collect();
    if failures.len() > SHOWN {
        s.push(format!("(+{} more)", failures.len() - SHOWN));
    }
    s.join("; ")
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A log line without its ancestry: `[LEVEL] label (pid:N:comm argv:...) req details: ...`.
fn short(l: &LogLine) -> String {
    let caller = l.raw.find(" (pid:").map(|i| &l.raw[i + 1..]).unwrap_or("");
    let caller = caller.split(") ").next().unwrap_or(caller);
    let details = l
        .raw
        .find(" req details: ")
        .map(|i| &l.raw[i + 1..])
        .unwrap_or("");
    cut(
        &format!("[{}] {} {}) {}", l.level, l.label, caller, details),
        300,
    )
}

fn run_client(kind: &str) -> Result<u32, String> {
    run_client_in(kind, None)
}

/// A client, in network namespace `netns` when given (joined between fork and exec, so the
/// client's pid, comm and parent are as for the others).
fn run_client_in(kind: &str, netns: Option<&routed::Netns>) -> Result<u32, String> {
    let exe = env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg0(COMM).args(["client", kind]).stdin(Stdio::null());
    if let Some(ns) = netns {
        // SAFETY: the hook only calls setns(2), which is async-signal-safe.
        unsafe { cmd.pre_exec(ns.enter_in_child()) };
    }
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let pid = child.id();
    match wait_timeout(&mut child, Duration::from_secs(30)) {
        Some(st) if st.success() => Ok(pid),
        Some(st) => Err(format!("pid {pid} failed ({st})")),
        None => Err(format!("pid {pid} still running after 30s (killed)")),
    }
}

/// One line of the trace log, split into the fields we check.
struct LogLine {
    raw: String,
    level: String,
    label: String,
    pid: Option<u32>,
    comm: String,
}

/// `[2026-11-23 08:42:32,962] [WARNING] imdsv1(!) (pid:12001:curl argv:...) ...`, read by
/// the line contract (imds-snoop-line); what a line does not have stays empty.
fn parse_line(raw: &str) -> LogLine {
    let mut l = LogLine {
        raw: raw.to_owned(),
        level: String::new(),
        label: String::new(),
        pid: None,
        comm: String::new(),
    };
    let Some(line) = TextLine::parse(raw) else {
        return l;
    };
    l.level = line.level.to_owned();
    if let TextBody::Call(c) = line.body
        && !c.rest.is_empty()
    {
        l.label = c.label.to_owned();
        l.pid = c.caller_pid();
        l.comm = c.caller().map_or("", |p| p.comm).to_owned();
    }
    l
}

/// The daemon's start and stop markers (issue 15): not calls, and no caller to match.
fn is_marker(raw: &str) -> bool {
    TextLine::parse(raw).is_some_and(|l| matches!(l.body, TextBody::Started | TextBody::Stopped))
}

fn read_log(path: &Path) -> Vec<LogLine> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !is_marker(l))
        .map(parse_line)
        .collect()
}

fn check_lines(
    lines: &[LogLine],
    wants: &[Want],
    pids: &BTreeMap<u32, &'static str>,
    ignore_foreign: bool,
    failures: &mut Vec<String>,
) {
    let runner = std::process::id();
    let mut used = vec![false; lines.len()];
    for l in lines {
        if l.raw.contains(TOKEN) {
            failures.push(format!("the token value is in the log: {}", short(l)));
        }
    }
    for w in wants {
        let request = format!("{} http/1.1", w.path);
        let found = lines.iter().enumerate().find(|(i, l)| {
            !used[*i]
                && l.pid == Some(w.pid)
                && l.label == w.label
                && l.raw.to_ascii_lowercase().contains(&request)
        });
        let Some((i, l)) = found else {
            let near: Vec<String> = lines
                .iter()
                .enumerate()
                .filter(|(i, l)| !used[*i] && l.pid == Some(w.pid))
                .map(|(_, l)| short(l))
                .collect();
            failures.push(format!(
                "missing `{} ... {request}` from client {} (pid {}){}",
                w.label,
                w.kind,
                w.pid,
                if near.is_empty() {
                    String::new()
                } else {
                    format!("; its lines: {}", near.join(" || "))
                }
            ));
            continue;
        };
        used[i] = true;
        let mut bad = Vec::new();
        if l.level != w.level {
            bad.push(format!("level {} (want {})", l.level, w.level));
        }
        if l.comm != COMM {
            bad.push(format!("comm {:?} (want {COMM})", l.comm));
        }
        let argv = format!("(pid:{}:{COMM} argv:{COMM} client {})", w.pid, w.kind);
        if !l.raw.contains(&argv) {
            bad.push(format!("caller is not `{argv}`"));
        }
        let parent = format!("called by -> (pid:{runner}:{COMM} ");
        if !l.raw.contains(&parent) {
            bad.push(format!("parent is not `{parent}...`"));
        }
        if !l.raw.contains(&format!(" dst:{}", w.dst)) {
            bad.push(format!("dst is not {}", w.dst));
        }
        // The status follows the request details: `..., accept: */*, -> 200 host unit:...`.
        if !l.raw.contains(&format!(", -> {} ", w.status)) {
            bad.push(format!("status is not ` -> {}`", w.status));
        }
        if !bad.is_empty() {
            failures.push(format!(
                "client {} line wrong ({}): {}",
                w.kind,
                bad.join(", "),
                short(l)
            ));
        }
    }
    for (i, l) in lines.iter().enumerate() {
        if used[i] {
            continue;
        }
        let ours = l.pid.is_some_and(|p| p == runner || pids.contains_key(&p));
        if l.pid.is_none() {
            failures.push(format!("unexpected log line: {}", l.raw));
        } else if ours {
            let who = l
                .pid
                .and_then(|p| pids.get(&p).copied())
                .unwrap_or("runner (fake IMDS)");
            failures.push(format!("unexpected line from {who}: {}", short(l)));
        } else if !ignore_foreign {
            failures.push(format!(
                "line from a process that is not ours: {}",
                short(l)
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fake IMDS
// ---------------------------------------------------------------------------------------------

/// The in-process fake of tests/support (no Python in the VMs), on 169.254.169.254:80,
/// [fd00:ec2::254]:80 and 169.254.169.254:8080.
fn start_fake_imds() -> Result<(), String> {
    let addrs = [
        SocketAddr::new(IpAddr::V4(IMDS_V4), 80),
        SocketAddr::new(IpAddr::V6(IMDS_V6), 80),
        SocketAddr::new(IpAddr::V4(IMDS_V4), OTHER_PORT),
    ];
    TinyImds {
        token: TOKEN,
        missing: MISSING,
        put_ttl: None,
    }
    .start(&addrs)
}

// ---------------------------------------------------------------------------------------------
// Clients (each runs as `vm-guest client KIND`, a child of the runner)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Send {
    /// All parts in one write(2).
    Whole,
    /// One writev(2) with one iovec per part.
    Vectored,
    /// One write(2) per part, a little apart: the daemon must reassemble them.
    Split,
}

fn client(kind: &str) -> Result<(), String> {
    let v4 = SocketAddr::new(IpAddr::V4(IMDS_V4), 80);
    let ua = "User-Agent: vm-guest/1\r\n";
    match kind {
        "v1" => get(v4, "/latest/meta-data/vm-guest/v1", None, Send::Whole).map(drop),
        "v2" => {
            let put = format!(
                "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n{ua}\
                 X-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            );
            let token = request(v4, &[put.as_str()], Send::Whole)?;
            if token != TOKEN {
                return Err(format!("token PUT returned {token:?}"));
            }
            get(
                v4,
                "/latest/meta-data/vm-guest/v2",
                Some(&token),
                Send::Whole,
            )
            .map(drop)
        }
        "writev" => get(
            v4,
            "/latest/meta-data/vm-guest/writev",
            None,
            Send::Vectored,
        )
        .map(drop),
        "split" => get(
            v4,
            "/latest/meta-data/vm-guest/split",
            Some(TOKEN),
            Send::Split,
        )
        .map(drop),
        "v6" => get(
            SocketAddr::new(IpAddr::V6(IMDS_V6), 80),
            "/latest/meta-data/vm-guest/v6",
            None,
            Send::Whole,
        )
        .map(drop),
        "mapped" => get(
            SocketAddr::new(IpAddr::V6(IMDS_V4.to_ipv6_mapped()), 80),
            "/latest/meta-data/vm-guest/mapped",
            None,
            Send::Whole,
        )
        .map(drop),
        "other" => get(
            SocketAddr::new(IpAddr::V4(IMDS_V4), OTHER_PORT),
            "/latest/meta-data/vm-guest/other",
            None,
            Send::Whole,
        )
        .map(drop),
        "burst" => {
            let threads: Vec<_> = (0..BURST)
                .map(|i| {
                    thread::spawn(move || {
                        get(
                            v4,
                            &format!("/latest/meta-data/vm-guest/burst/{i}"),
                            None,
                            Send::Whole,
                        )
                    })
                })
                .collect();
            for t in threads {
                t.join().map_err(|_| "burst thread panicked".to_owned())??;
            }
            Ok(())
        }
        // The drop check's clients: a token flow (PUT, then a GET with the token), and a
        // token PUT whose reply must never arrive (it dies at the router before us).
        "node-v2" => {
            let token = request(v4, &[&token_put("node-v2")], Send::Whole)?;
            if token != TOKEN {
                return Err(format!("token PUT returned {token:?}"));
            }
            get(
                v4,
                "/latest/meta-data/vm-guest/node-v2",
                Some(&token),
                Send::Whole,
            )
            .map(drop)
        }
        "pod-put" => match request_within(v4, &[&token_put("pod-put")], drop_check::POD_PUT_WAIT) {
            Err(e) if e.contains(TIMED_OUT) => Ok(()),
            Err(e) => Err(e),
            Ok(body) => Err(format!(
                "the token PUT's reply reached the pod (TTL 1 did not die at the router): \
                 {body:?}"
            )),
        },
        "missing" => match get(v4, MISSING, None, Send::Whole) {
            Err(e) if e.contains(" 404 ") => Ok(()),
            Err(e) => Err(e),
            Ok(body) => Err(format!("{MISSING} answered 200: {body:?}")),
        },
        other => Err(format!("unknown client {other:?}")),
    }
}

/// A GET split into the request line, the headers and the blank line (one part each), so
/// `Send::Vectored` and `Send::Split` really send several pieces. Returns the body.
fn get(addr: SocketAddr, path: &str, token: Option<&str>, how: Send) -> Result<String, String> {
    let host = match addr.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{ip}]"),
        },
    };
    let line = format!("GET {path} HTTP/1.1\r\n");
    let mut headers = format!("Host: {host}\r\nUser-Agent: vm-guest/1\r\nAccept: */*\r\n");
    let token = token
        .map(|t| format!("X-aws-ec2-metadata-token: {t}\r\n"))
        .unwrap_or_default();
    headers.push_str("Connection: close\r\n");
    request(addr, &[&line, &headers, &token, "\r\n"], how)
}

/// A token PUT, its User-Agent naming the client (`vm-guest/1 KIND`).
fn token_put(kind: &str) -> String {
    format!(
        "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
         User-Agent: vm-guest/1 {kind}\r\n\
         X-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )
}

/// What [`request_within`] says when no response came in time.
const TIMED_OUT: &str = "no response within";

/// One whole request; the response must come within `wait` (else an error holding
/// [`TIMED_OUT`]).
fn request_within(addr: SocketAddr, parts: &[&str], wait: Duration) -> Result<String, String> {
    request_timeout(addr, parts, Send::Whole, wait)
}

fn request(addr: SocketAddr, parts: &[&str], how: Send) -> Result<String, String> {
    request_timeout(addr, parts, how, Duration::from_secs(10))
}

fn request_timeout(
    addr: SocketAddr,
    parts: &[&str],
    how: Send,
    wait: Duration,
) -> Result<String, String> {
    let err = |what: &str, e: io::Error| format!("{what} {addr}: {e}");
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| err("connect", e))?;
    s.set_read_timeout(Some(wait))
        .map_err(|e| err("timeout", e))?;
    s.set_nodelay(true).map_err(|e| err("nodelay", e))?;
    let parts: Vec<&[u8]> = parts
        .iter()
        .map(|p| p.as_bytes())
        .filter(|p| !p.is_empty())
        .collect();
    match how {
        Send::Whole => s.write_all(&parts.concat()).map_err(|e| err("write", e))?,
        Send::Vectored => {
            let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            let mut slices = &mut slices[..];
            while !slices.is_empty() {
                let n = s.write_vectored(slices).map_err(|e| err("writev", e))?;
                if n == 0 {
                    return Err(format!("writev {addr}: wrote 0 bytes"));
                }
                IoSlice::advance_slices(&mut slices, n);
            }
        }
        Send::Split => {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    thread::sleep(Duration::from_millis(30));
                }
                s.write_all(p).map_err(|e| err("write", e))?;
            }
        }
    }
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| match e.kind() {
        // What a read timeout gives (EAGAIN on Linux).
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if resp.is_empty() => {
            format!("{addr}: {TIMED_OUT} {}s", wait.as_secs_f64())
        }
        _ => err("read", e),
    })?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or(format!("{addr}: bad response {resp:?}"))?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!("{addr}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_with_an_errno() {
        let args: Vec<String> = [
            "refuse=fentry:524",
            "kprobe",
            "auto=kprobe:524",
            "auto=fentry",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let specs = parse_args(&args).unwrap().specs;
        assert!(matches!(&specs[0], Spec::Refuse { mode, errno: Some(524) } if mode == "fentry"));
        assert!(matches!(&specs[1], Spec::Attach { mode, errno: None, .. } if mode == "kprobe"));
        assert!(matches!(
            &specs[2],
            Spec::Attach { mode, expect, errno: Some(524) } if mode == "auto" && expect == "kprobe"
        ));
        assert!(
            matches!(&specs[3], Spec::Attach { expect, errno: None, .. } if expect == "fentry")
        );
        for bad in ["refuse=fentry:x", "auto=probe", "refuse=kprobe:"] {
            assert!(parse_args(&[bad.to_string()]).is_err(), "{bad}");
        }
        assert_eq!(
            fallback_line("fentry"),
            "fentry (fentry/tcp_sendmsg) refused: "
        );
    }

    /// The fields the checks use, from a line as the daemon writes it, and from lines that
    /// are not request lines (they must count as unexpected: no pid).
    #[test]
    fn parse_line_reads_the_checked_fields() {
        let l = parse_line(
            "[2026-11-23 08:42:32,962] [WARNING] imdsv1(!) (pid:12001:vm-guest argv:vm-guest \
             client v1) called by -> (pid:12000:vm-guest argv:vm-guest fentry) req details: \
             get / http/1.1, -> 200 host unit:- uid:0 dst:169.254.169.254:80",
        );
        assert_eq!(
            (l.level.as_str(), l.label.as_str(), l.pid, l.comm.as_str()),
            ("WARNING", "imdsv1(!)", Some(12001), "vm-guest")
        );
        for raw in [
            "[2026-11-23 08:42:32,962] [WARNING] imds-snoop dropped 3 events (totals: ...)",
            "[2026-11-23 08:42:32,962] [INFO] imdsv2",
            "garbage",
        ] {
            let l = parse_line(raw);
            assert_eq!((l.pid, l.label.as_str()), (None, ""), "{raw}");
        }
    }
}
