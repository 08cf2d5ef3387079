//! Network namespaces: one flat namespace per test, or the routed pod -> node -> imds
//! topology.

use std::{
    path::Path,
    process::{self, Command, Stdio},
    sync::Once,
};

use crate::{
    IMDS_V4, IMDS_V6, NETNS_PREFIX, OTHER_LINK_LOCAL, OTHER_PRIVATE, OTHER_V6, PROXY_VARS,
    dir::TestDir, next_id,
};

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

    pub(crate) fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
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
pub(crate) fn run_ok(cmd: &mut Command) {
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
