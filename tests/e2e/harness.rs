//! Test harness: throw-away network namespaces that own the IMDS addresses, the fake IMDS
//! inside them, the real `imds-snoop` binary, and the trace log it writes.
//!
//! Every packet a test sends stays inside its own namespace: the IMDS addresses exist only
//! on that namespace's loopback, and proxies are removed from the clients' environment.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{self, Child, Command, ExitStatus, Stdio},
    sync::{
        Mutex, MutexGuard, Once,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

pub const IMDS_V4: &str = "169.254.169.254";
pub const IMDS_V6: &str = "fd00:ec2::254";
/// Addresses next to IMDS that are not traced unless `--target` names them.
pub const OTHER_LINK_LOCAL: &str = "169.254.169.253";
pub const OTHER_V6: &str = "fd00:ec2::253";
pub const OTHER_PRIVATE: &str = "10.255.0.1";

const FAKE_IMDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fake_imds.py");
const CLIENTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e");
const DAEMON: &str = env!("CARGO_BIN_EXE_imds-snoop");

/// How long a line may take from the client's send to the log file.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the expected lines arrived, how long we keep watching for unexpected extra ones.
const SETTLE: Duration = Duration::from_millis(300);
/// Every client process gets at most this long (each also has its own, shorter timeout).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// Prefix of our namespace names; the next field is the test process's pid.
const NETNS_PREFIX: &str = "imds-t-";
/// Clients must not be sent to a proxy: that would take the request out of the namespace.
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

fn next_id() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------
// Prerequisites and serialisation

/// Whether the end-to-end tests can run here. Without root (or `ip`, or bpf) they are
/// skipped loudly, except under CI (`CI` set to anything), where a skip would hide that
/// nothing was tested: there they fail.
pub fn require_root() -> bool {
    let Some(why) = missing_prerequisite() else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!(
            "e2e tests cannot run: {why}. CI must run them as root on a bpf-capable kernel; they never skip under CI"
        );
    }
    // Straight to fd 2: libtest captures eprintln! of passing tests, and this must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED (not root): {why}; e2e test did not run ***\n"
    );
    false
}

fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (euid 0)".into());
    }
    for tool in ["ip", "python3", "curl", "sh", "flock"] {
        if !on_path(tool) {
            return Some(format!("`{tool}` is not on PATH"));
        }
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    bpf_unavailable()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Creates (and closes) a one-entry array map: the cheapest proof that bpf() works here.
fn bpf_unavailable() -> Option<String> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, then
    // fields that must be zero.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            size_of_val(&attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Some(format!(
            "bpf() is unavailable: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is the map we just created and nothing else owns it.
    unsafe { libc::close(fd as libc::c_int) };
    None
}

/// Holds the e2e lock: tests run one at a time even under cargo's parallel runner, because
/// every daemon sees every namespace's IMDS traffic.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next test must still run.
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// Scratch directories

/// A scratch directory, removed on drop unless the test is failing (then kept, and its path
/// printed, for a post-mortem).
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("imds-e2e-{}-{}-{tag}", process::id(), next_id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh file name in this directory.
    pub fn file(&self, stem: &str) -> PathBuf {
        self.path.join(format!("{stem}-{}", next_id()))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("e2e: kept {} for inspection", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn read_or_empty(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Network namespaces

/// A network namespace whose loopback holds the IMDS addresses (and a few others), so the
/// real clients inside it talk to our fake and nothing leaves it. Dropping it kills every
/// process still inside and deletes it, also when the test panicked.
pub struct Netns {
    name: String,
    dir: TestDir,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let ns = Self::bare(tag);
        for v4 in [IMDS_V4, OTHER_LINK_LOCAL, OTHER_PRIVATE] {
            ns.ip(&["addr", "add", &format!("{v4}/32"), "dev", "lo"]);
        }
        // nodad: usable at once, not after duplicate address detection.
        for v6 in [IMDS_V6, OTHER_V6] {
            ns.ip(&["addr", "add", &format!("{v6}/128"), "dev", "lo", "nodad"]);
        }
        ns
    }

    /// A namespace with only its loopback up (no IMDS addresses): a "pod" or a "node".
    pub fn bare(tag: &str) -> Self {
        reap_stale_namespaces();
        let name = format!("{NETNS_PREFIX}{}-{}-{tag}", process::id(), next_id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        // From here on, Drop cleans up whatever the rest of the setup leaves.
        let ns = Self {
            dir: TestDir::new(&format!("ns-{tag}")),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Where clients' output files and the fakes' files go.
    /// The namespace's name, for tools that join it by path (/var/run/netns/NAME).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// A veth pair between this namespace (`ADDR/24` on `dev`) and `peer` (`peer_addr/24`
    /// on `peer_dev`). Created inside the namespaces: nothing appears in the host's.
    fn link(&self, dev: &str, addr: &str, peer: &Netns, peer_dev: &str, peer_addr: &str) {
        self.ip(&[
            "link", "add", dev, "type", "veth", "peer", "name", peer_dev, "netns", &peer.name,
        ]);
        self.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev]);
        peer.ip(&["addr", "add", &format!("{peer_addr}/24"), "dev", peer_dev]);
        self.ip(&["link", "set", dev, "up"]);
        peer.ip(&["link", "set", peer_dev, "up"]);
    }

    /// `ip netns exec NAME program`: exec's in place, so the child's pid is the program's.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null());
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// Kills what runs inside (the fakes, stray clients) and deletes the namespace. Never
/// panics: it runs during unwinding too.
fn delete_netns(name: &str) {
    for pid in netns_pids(name) {
        // SAFETY: kill has no memory preconditions; the pid is inside our own namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    match Command::new("ip").args(["netns", "delete", name]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "e2e: ip netns delete {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("e2e: ip netns delete {name}: {e}"),
    }
}

/// Addresses, listeners and processes of a namespace, for a failing client's message.
fn netns_state(name: &str) -> String {
    let show = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| e.to_string())
    };
    format!(
        "--- namespace {name}: addresses ---\n{}--- listeners ---\n{}--- pids ---\n{}",
        show(&["-n", name, "-brief", "addr"]),
        show(&["netns", "exec", name, "ss", "-ltnp"]),
        show(&["netns", "pids", name]),
    )
}

fn netns_pids(name: &str) -> Vec<libc::pid_t> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes namespaces left by an e2e run that was killed before its Drops ran (their pid
/// field names a process that no longer exists).
fn reap_stale_namespaces() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let Some(owner) = name
                .strip_prefix(NETNS_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{owner}")).exists() {
                eprintln!("e2e: removing stale namespace {name}");
                delete_netns(name);
            }
        }
    });
}

/// Runs a setup command; panics with its stderr if it fails.
fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// Child processes

/// Waits at most `timeout` for `child`; kills it if it is still running then.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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
fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // SAFETY: the pid is our own child and has not been reaped (try_wait said so).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    wait_bounded(child, grace)
}

/// A client started in a namespace; stdout and stderr go to files (no pipe can fill up).
pub struct Client {
    child: Child,
    what: String,
    netns: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// A finished client.
#[derive(Debug)]
pub struct Finished {
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
}

impl Client {
    pub fn spawn(ns: &Netns, cmd: &mut Command) -> Self {
        let stdout = ns.dir().file("client-stdout");
        let stderr = ns.dir().file("client-stderr");
        let child = cmd
            .stdout(create(&stdout))
            .stderr(create(&stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Self {
            child,
            what: format!("{cmd:?}"),
            netns: ns.name.clone(),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) and panics unless the client exited 0: a failed client means the
    /// test did not exercise what it meant to.
    pub fn wait_ok(mut self) -> Finished {
        let status = wait_bounded(&mut self.child, CLIENT_TIMEOUT);
        let done = Finished {
            pid: self.child.id(),
            stdout: read_or_empty(&self.stdout),
            stderr: read_or_empty(&self.stderr),
        };
        let outcome = match status {
            Some(s) if s.success() => return done,
            Some(s) => format!("failed ({s})"),
            None => format!("did not finish within {CLIENT_TIMEOUT:?}"),
        };
        panic!(
            "client {} {outcome}; stderr: {}\n{}",
            self.what,
            done.stderr,
            netns_state(&self.netns)
        );
    }
}

/// Runs a client to completion in `ns`; panics unless it exits 0.
pub fn run_client(ns: &Netns, cmd: &mut Command) -> Finished {
    Client::spawn(ns, cmd).wait_ok()
}

/// `curl -sSf --max-time 5 ARGS...` in `ns`, bounded.
pub fn curl(ns: &Netns, args: &[&str]) -> Finished {
    run_client(
        ns,
        ns.command("curl")
            .args(["-sSf", "--max-time", "5"])
            .args(args),
    )
}

fn create(path: &Path) -> fs::File {
    fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()))
}

/// `curl -sS --max-time SECS -o /dev/null -w '%{http_code}' ARGS...` in `ns`, not failing on
/// an HTTP error status: returns curl's exit status and the status code it received
/// (`000` when none came).
pub fn curl_status(ns: &Netns, max_time: u32, args: &[&str]) -> (Option<ExitStatus>, String, u32) {
    let mut client = Client::spawn(
        ns,
        ns.command("curl")
            .args(["-sS", "--max-time", &max_time.to_string()])
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args(args),
    );
    let status = wait_bounded(&mut client.child, CLIENT_TIMEOUT);
    (status, read_or_empty(&client.stdout), client.child.id())
}

/// The hop-limit topology: a "pod" namespace routed through a "node" namespace (a router,
/// ip_forward=1) to an "imds" namespace that holds 169.254.169.254, as a pod behind a veth
/// reaches the real IMDS: its replies cross one router hop. All three are deleted on drop.
pub struct Routed {
    pub pod: Netns,
    pub node: Netns,
    pub imds: Netns,
}

impl Routed {
    pub fn new(tag: &str) -> Self {
        let pod = Netns::bare(&format!("{tag}-pod"));
        let node = Netns::bare(&format!("{tag}-node"));
        let imds = Netns::new(&format!("{tag}-imds"));
        pod.link("eth0", "10.200.1.2", &node, "veth-pod", "10.200.1.1");
        node.link("veth-imds", "10.200.2.1", &imds, "eth0", "10.200.2.2");
        run_ok(
            node.command("sysctl")
                .args(["-qw", "net.ipv4.ip_forward=1"]),
        );
        pod.ip(&["route", "add", "default", "via", "10.200.1.1"]);
        node.ip(&[
            "route",
            "add",
            &format!("{IMDS_V4}/32"),
            "via",
            "10.200.2.2",
        ]);
        imds.ip(&["route", "add", "10.200.1.0/24", "via", "10.200.2.1"]);
        Self { pod, node, imds }
    }

    /// ICMP "time exceeded" messages the router sent: packets that died there of their TTL.
    pub fn router_time_exceeded(&self) -> u64 {
        let out = self
            .node
            .command("cat")
            .arg("/proc/net/snmp")
            .output()
            .expect("reading the router's /proc/net/snmp");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut icmp = text.lines().filter(|l| l.starts_with("Icmp: "));
        let (Some(names), Some(values)) = (icmp.next(), icmp.next()) else {
            panic!("no Icmp counters in the router's /proc/net/snmp: {text}");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "OutTimeExcds")
            .and_then(|(_, v)| v.parse().ok())
            .expect("OutTimeExcds counter")
    }
}

/// Polls until `ready()`, failing with the child's stderr if it exits first or `timeout`
/// passes: how the harness waits for the processes it starts (the fake IMDS, the daemon).
fn wait_for_child(
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

// ---------------------------------------------------------------------------------------
// The fake IMDS

pub struct FakeOpts {
    pub binds: Vec<&'static str>,
    pub port: u16,
    /// http_tokens=required: GETs without a token get 401.
    pub require_v2: bool,
    /// IP TTL / hop limit of its responses.
    pub ttl: Option<u8>,
}

impl FakeOpts {
    /// IMDS with `http_tokens = required`: GETs without a token get 401.
    pub fn enforcing() -> Self {
        Self {
            require_v2: true,
            ..Self::default()
        }
    }
}

impl Default for FakeOpts {
    fn default() -> Self {
        Self {
            binds: vec![IMDS_V4, IMDS_V6],
            port: 80,
            require_v2: false,
            ttl: None,
        }
    }
}

/// tests/fake_imds.py running inside a namespace; terminated on drop.
pub struct FakeImds {
    child: Child,
    tokens_file: PathBuf,
    stderr_file: PathBuf,
}

/// A secret the fake handed out: `kind` is `token`, `AccessKeyId`, `SecretAccessKey` or
/// `Token`.
#[derive(Debug, Clone)]
pub struct Secret {
    pub kind: String,
    pub value: String,
}

impl FakeImds {
    pub fn start(ns: &Netns, opts: FakeOpts) -> Self {
        let ready = ns.dir().file("fake-ready");
        let tokens_file = ns.dir().file("fake-secrets");
        let stderr_file = ns.dir().file("fake-stderr");
        let mut cmd = ns.command("python3");
        cmd.arg(FAKE_IMDS)
            .arg("--port")
            .arg(opts.port.to_string())
            .arg("--ready-file")
            .arg(&ready)
            .arg("--tokens-file")
            .arg(&tokens_file);
        for addr in &opts.binds {
            cmd.args(["--bind", addr]);
        }
        if opts.require_v2 {
            cmd.arg("--require-v2");
        }
        if let Some(ttl) = opts.ttl {
            cmd.args(["--ttl", &ttl.to_string()]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(create(&stderr_file))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the fake IMDS {cmd:?}: {e}"));
        let mut fake = Self {
            child,
            tokens_file,
            stderr_file,
        };
        fake.wait_ready(&ready);
        fake
    }

    fn wait_ready(&mut self, ready: &Path) {
        let stderr = self.stderr_file.clone();
        wait_for_child(
            &mut self.child,
            Duration::from_secs(10),
            "the fake IMDS",
            "listen",
            || ready.exists(),
            || read_or_empty(&stderr),
        );
    }

    /// Its request log (one line per request) and any errors.
    pub fn stderr(&self) -> String {
        read_or_empty(&self.stderr_file)
    }

    /// Every token it issued so far, and its fake credential values.
    pub fn secrets(&self) -> Vec<Secret> {
        read_or_empty(&self.tokens_file)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(kind, value)| Secret {
                kind: kind.into(),
                value: value.into(),
            })
            .collect()
    }

    pub fn tokens(&self) -> Vec<String> {
        self.secrets()
            .into_iter()
            .filter(|s| s.kind == "token")
            .map(|s| s.value)
            .collect()
    }

    /// One of its fake credential values (`AccessKeyId`, `SecretAccessKey`, `Token`).
    pub fn credential(&self, kind: &str) -> String {
        self.secrets()
            .into_iter()
            .find(|s| s.kind == kind)
            .unwrap_or_else(|| panic!("the fake IMDS recorded no {kind}"))
            .value
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(3));
    }
}

// ---------------------------------------------------------------------------------------
// The daemon under test

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
    /// Starts it with `--log-file <scratch>/imds-trace.log ARGS` and waits (up to 15 s)
    /// until it says `attached`.
    pub fn start(args: &[&str]) -> Self {
        Self::start_logging_to(None, args)
    }

    /// As [`Daemon::start`], with the trace log at `log` instead of the scratch directory
    /// (e.g. on a small tmpfs that a test fills up).
    pub fn start_logging_to(log: Option<&Path>, args: &[&str]) -> Self {
        let dir = TestDir::new("daemon");
        let log = log.map_or_else(|| dir.path().join("imds-trace.log"), Path::to_owned);
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let mut cmd = Command::new(DAEMON);
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
            .filter_map(|l| l.split_once("] imds-snoop dropped ")?.1.split(' ').next())
            .map(|n| {
                n.parse::<u64>()
                    .unwrap_or_else(|e| panic!("dropped count {n:?}: {e}"))
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

    /// Panics if any secret any of `fakes` handed out (or an `extra` one) appears in
    /// anything the daemon wrote, or if the daemon reported dropped events.
    pub fn assert_clean(&self, fakes: &[&FakeImds], extra: &[&str]) {
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

// ---------------------------------------------------------------------------------------
// Log lines

/// One trace line, parsed loosely: fields may be appended after `req details: ...`.
///
/// `[ts] [LEVEL] label (pid:N:comm argv:ARGV) called by -> (pid:...) ... req details: ...`
#[derive(Debug, Clone)]
pub struct LogLine {
    pub raw: String,
    pub level: String,
    pub label: String,
    pub pid: u32,
    pub comm: String,
    pub argv: String,
    /// The caller's pid, then its ancestors' up to pid 1.
    pub chain: Vec<u32>,
    /// Everything after ` req details: `, lowercased as the daemon prints it.
    pub details: String,
}

const DETAILS: &str = " req details: ";

impl LogLine {
    pub fn parse(raw: &str) -> Option<Self> {
        // Skip the timestamp: "[2025-10-22 02:55:40,993] [LEVEL] label (pid:".
        let rest = raw.strip_prefix('[')?;
        let rest = &rest[rest.find("] [")? + 3..];
        let (level, rest) = rest.split_once("] ")?;
        let (label, rest) = rest.split_once(" (pid:")?;
        let (head, details) = rest.split_once(DETAILS)?;
        let (pid, rest) = head.split_once(':')?;
        let (comm, rest) = rest.split_once(" argv:")?;
        // argv may itself hold ')': it ends where the ancestors start, or at the last ')'.
        let argv_end = rest.find(") called by -> ").or_else(|| rest.rfind(')'))?;
        let chain = std::iter::once(pid)
            .chain(head.split("(pid:").skip(1))
            .filter_map(|p| p.split(':').next()?.parse().ok())
            .collect();
        Some(Self {
            raw: raw.into(),
            level: level.into(),
            label: label.into(),
            pid: pid.parse().ok()?,
            comm: comm.into(),
            argv: rest[..argv_end].into(),
            chain,
            details: details.into(),
        })
    }

    /// Caused by a process this test process started (it is in the ancestry).
    pub fn is_ours(&self) -> bool {
        self.chain.contains(&process::id())
    }

    pub fn is_v1(&self) -> bool {
        self.label == "imdsv1(!)" && self.level == "WARNING"
    }

    pub fn is_v2(&self) -> bool {
        self.label == "imdsv2" && self.level == "INFO"
    }

    pub fn is_token_put(&self) -> bool {
        self.label == "imdsv2(token)" && self.level == "INFO"
    }

    /// The response status the daemon joined to the request (` -> 200` after the details).
    pub fn status(&self) -> Option<u16> {
        let (_, rest) = self.details.rsplit_once(" -> ")?;
        let code = rest.get(..3)?;
        (rest.len() == 3 || rest[3..].starts_with(' '))
            .then(|| code.parse().ok())
            .flatten()
    }

    pub fn is_token_not_received(&self) -> bool {
        self.label == "imdsv2 token response not received (hop limit?)" && self.level == "WARNING"
    }

    /// `details` contains `needle`, compared case-insensitively (the daemon lowercases).
    pub fn has(&self, needle: &str) -> bool {
        self.details.to_lowercase().contains(&needle.to_lowercase())
    }
}

/// The lines with caller pid `pid`.
pub fn lines_of(lines: &[LogLine], pid: u32) -> Vec<&LogLine> {
    lines.iter().filter(|l| l.pid == pid).collect()
}

/// Distinct caller pids, for "one line per client" checks.
pub fn pids(lines: &[LogLine]) -> BTreeSet<u32> {
    lines.iter().map(|l| l.pid).collect()
}

/// `lines` as text, for failure messages.
pub fn show(lines: &[LogLine]) -> String {
    lines
        .iter()
        .map(|l| l.raw.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Environment that would point botocore elsewhere or switch IMDS off.
const AWS_ENV: [&str; 5] = [
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_EC2_METADATA_V1_DISABLED",
    "AWS_CONFIG_FILE",
];

/// botocore fetching the instance role's credentials in `ns`, as its credential chain does
/// (token PUT, then GETs; falls back to IMDSv1 when the PUT times out). `timeout`: seconds
/// per request. Prints `<role> <access key id>`; panics unless it exits 0.
pub fn botocore_credentials(ns: &Netns, timeout: u32) -> Finished {
    // botocore's default endpoint is 169.254.169.254: inside the namespace, the fake. The
    // fetcher is built with the session's user-agent (without one, urllib3's own is sent).
    let script = format!(
        "import botocore.session\n\
         from botocore.utils import InstanceMetadataFetcher as F\n\
         ua = botocore.session.get_session().user_agent()\n\
         f = F(timeout={timeout}, num_attempts=1, user_agent=ua)\n\
         c = f.retrieve_iam_role_credentials()\n\
         print(c.get('role_name'), c.get('access_key'))\n"
    );
    let mut cmd = ns.command("python3");
    cmd.args(["-c", &script]);
    for var in AWS_ENV {
        cmd.env_remove(var);
    }
    run_client(ns, &mut cmd)
}

/// `imds-snoop report --format json LOG`, parsed.
pub fn report_json(log: &Path) -> serde_json::Value {
    let out = Command::new(DAEMON)
        .args(["report", "--format", "json"])
        .arg(log)
        .output()
        .unwrap_or_else(|e| panic!("running imds-snoop report: {e}"));
    assert!(out.status.success(), "report failed: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("report JSON: {e}: {out:?}"))
}

/// A path under tests/e2e (client scripts).
pub fn client_script(name: &str) -> PathBuf {
    Path::new(CLIENTS_DIR).join(name)
}

/// The parser the tests rely on, on the documented line (no root needed).
#[test]
fn log_line_parser_reads_the_documented_format() {
    let raw = "[2025-10-22 02:55:40,993] [WARNING] imdsv1(!) (pid:69745:curl argv:curl -s \
               http://169.254.169.254/latest/meta-data/ (x)) called by -> (pid:11793:bash \
               argv:/bin/bash) -> (pid:1:systemd argv:/sbin/init) req details: get \
               /latest/meta-data/ http/1.1, host: 169.254.169.254, user-agent: curl/8.14.1, \
               accept: */*, host uid:0 dst:169.254.169.254:80";
    let line = LogLine::parse(raw).expect("the documented line must parse");
    assert!(line.is_v1());
    assert_eq!(line.pid, 69745);
    assert_eq!(line.comm, "curl");
    assert_eq!(
        line.argv,
        "curl -s http://169.254.169.254/latest/meta-data/ (x)"
    );
    assert_eq!(line.chain, [69745, 11793, 1]);
    assert!(line.has("GET /latest/meta-data/ HTTP/1.1"));
    assert!(line.has("user-agent: curl/"));
    assert_eq!(line.status(), None);
    let answered = raw.replace("accept: */*, host", "accept: */*, -> 401 host");
    assert_eq!(LogLine::parse(&answered).unwrap().status(), Some(401));

    let alone = "[2025-10-22 02:55:41,001] [INFO] imdsv2(token) (pid:7:python3 argv:python3 x.py) \
                 req details: put /latest/api/token http/1.1,";
    let line = LogLine::parse(alone).expect("a line without ancestors must parse");
    assert!(line.is_token_put());
    assert_eq!(
        (line.argv.as_str(), line.chain.as_slice()),
        ("python3 x.py", &[7][..])
    );
    assert!(
        LogLine::parse("[2025-10-22 02:55:41,001] [WARNING] imds-snoop dropped 3 events").is_none()
    );
}
