//! Network namespaces: [`Namespace`] (made, joined, deleted; errors returned), and on it the
//! tests' [`Netns`] (one flat namespace per test, panicking on a setup failure) and the
//! routed pod -> node -> imds topology ([`Routed`]).

use std::{
    ffi::OsStr,
    io,
    path::Path,
    process::{self, Command, Stdio},
    sync::Once,
};

use crate::{
    IMDS_V4, IMDS_V6, NETNS_PREFIX, OTHER_LINK_LOCAL, OTHER_PRIVATE, OTHER_V6, PROXY_VARS,
    dir::TestDir, next_id,
};

/// A network namespace this process made (`ip netns add`), with its `lo` up. Dropping it
/// kills every process still inside and deletes it. `cargo xtask bench` uses it directly;
/// the tests through [`Netns`].
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// `ip netns add NAME`, then `lo` up (a failure there deletes the namespace again).
    pub fn create(name: &str) -> io::Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        // From here on, Drop cleans up whatever the rest of the setup leaves.
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, for tools that join it by path (/var/run/netns/NAME).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`; the error holds `ip`'s stderr.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `ip netns exec NAME program`, stdin from /dev/null. `ip` execs in place, so the
    /// child's pid is the program's.
    pub fn exec(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd.stdin(Stdio::null());
        cmd
    }
}

/// A namespace for one run of a tool (`cargo xtask bench`, the host cell of `vm-test`):
/// `<prefix><pid>`, after reaping what killed runs of it left ([`reap_stale`]), with `lo` up
/// and the IMDS addresses (169.254.169.254/32, fd00:ec2::254/128, usable at once) on it.
pub fn imds_namespace(prefix: &str) -> io::Result<Namespace> {
    reap_stale(prefix);
    let name = format!("{prefix}{}", process::id());
    if Path::new("/var/run/netns").join(&name).exists() {
        delete(&name);
    }
    let ns = Namespace::create(&name)?;
    ns.ip(&["addr", "add", &format!("{IMDS_V4}/32"), "dev", "lo"])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{IMDS_V6}/128"),
        "dev",
        "lo",
        "nodad",
    ])?;
    Ok(ns)
}

impl Drop for Namespace {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Runs a setup command; its stderr is the error when it fails.
fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running {cmd:?}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Runs a setup command; panics with its stderr if it fails.
pub(crate) fn run_ok(cmd: &mut Command) {
    run(cmd).unwrap_or_else(|e| panic!("{e}"));
}

/// A network namespace whose loopback holds the IMDS addresses (and a few others), so the
/// real clients inside it talk to our fake and nothing leaves it. Dropping it kills every
/// process still inside and deletes it, also when the test panicked.
pub struct Netns {
    ns: Namespace,
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
        static REAPED: Once = Once::new();
        REAPED.call_once(|| reap_stale(NETNS_PREFIX));
        let name = format!("{NETNS_PREFIX}{}-{}-{tag}", process::id(), next_id());
        let ns = Namespace::create(&name).unwrap_or_else(|e| panic!("{e}"));
        Self {
            ns,
            dir: TestDir::new(&format!("ns-{tag}")),
        }
    }

    /// The namespace's name, for tools that join it by path (/var/run/netns/NAME).
    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// Where clients' output files and the fakes' files go.
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    pub(crate) fn ip(&self, args: &[&str]) {
        self.ns.ip(args).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A veth pair between this namespace (`ADDR/24` on `dev`) and `peer` (`peer_addr/24`
    /// on `peer_dev`). Created inside the namespaces: nothing appears in the host's.
    pub(crate) fn link(
        &self,
        dev: &str,
        addr: &str,
        peer: &Netns,
        peer_dev: &str,
        peer_addr: &str,
    ) {
        self.ip(&[
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            peer_dev,
            "netns",
            peer.name(),
        ]);
        self.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev]);
        peer.ip(&["addr", "add", &format!("{peer_addr}/24"), "dev", peer_dev]);
        self.ip(&["link", "set", dev, "up"]);
        peer.ip(&["link", "set", peer_dev, "up"]);
    }

    /// `ip netns exec NAME program`: exec's in place, so the child's pid is the program's.
    /// Proxy variables are removed from its environment.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = self.ns.exec(program);
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd
    }
}

/// Kills what runs inside namespace `name` (the fakes, stray clients) and deletes it. Never
/// panics: it runs during unwinding too.
pub fn delete(name: &str) {
    for pid in netns_pids(name) {
        // SAFETY: kill has no memory preconditions; the pid is inside our own namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    match Command::new("ip").args(["netns", "delete", name]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "netns: ip netns delete {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("netns: ip netns delete {name}: {e}"),
    }
}

/// Addresses, listeners and processes of a namespace, for a failing client's message.
pub(crate) fn netns_state(name: &str) -> String {
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

/// Removes the namespaces named `<prefix><pid>` or `<prefix><pid>-...` whose `<pid>` no
/// longer exists: left by a run killed before its Drops ran.
pub fn reap_stale(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(owner) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{owner}")).exists() {
            eprintln!("netns: removing stale namespace {name}");
            delete(name);
        }
    }
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
