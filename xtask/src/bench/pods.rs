//! The pod -> node -> pod workload: two "pod" namespaces, each joined by a veth pair to a
//! "node" namespace that routes between them (ip_forward=1), as two pods on one node talk
//! through the node's network stack. Nothing of it is in the machine's own namespace; it
//! is deleted on drop with every process inside.
//!
//! Bulk throughput is iperf3 (pod-a -> pod-b, one TCP stream); request/response latency is
//! `loadgen rr-client` against `loadgen rr-server` (64 bytes each way, one connection).
//! Clients are pinned to CPU 0 and servers to CPU 1 (`taskset`) when the machine has two
//! CPUs or more: a client and its server then never wait for each other's time slice on
//! one CPU, and neither migrates mid-run (migrations were the largest spikes on loopback).

use std::{
    collections::HashMap,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use imds_snoop_test_support::netns::Namespace;

use super::{cmd_output, parse_kv};

pub(crate) const POD_A: &str = "10.210.1.2";
pub(crate) const POD_B: &str = "10.210.2.2";
const IPERF_PORT: &str = "5201";
const RR_PORT: &str = "7000";
/// A UDP port nobody listens on in pod-b: datagrams to it are dropped (NO_SOCKET).
pub(crate) const DROP_PORT: &str = "9";

pub(crate) struct Pods {
    a: Namespace,
    /// The router; held so it lives as long as the pods.
    _node: Namespace,
    b: Namespace,
    servers: Vec<Child>,
    /// `taskset -c N` prefixes, or none on a single CPU.
    client_cpu: Option<&'static str>,
    server_cpu: Option<&'static str>,
}

impl Pods {
    /// Namespaces `<base>-pod-a`, `<base>-node`, `<base>-pod-b` (`base` is the bench's own
    /// `imds-bench-<pid>`, so a killed run's are reaped with it), routed; servers started.
    pub(crate) fn new(base: &str, loadgen: &Path, server_secs: u64) -> Result<Self> {
        let a = Namespace::create(&format!("{base}-pod-a"))?;
        let node = Namespace::create(&format!("{base}-node"))?;
        let b = Namespace::create(&format!("{base}-pod-b"))?;
        veth(&node, "veth-a", "10.210.1.1", &a, "eth0", POD_A)?;
        veth(&node, "veth-b", "10.210.2.1", &b, "eth0", POD_B)?;
        cmd_output(
            node.exec("sysctl")
                .args(["-qw", "net.ipv4.ip_forward=1"])
                .stderr(Stdio::piped()),
        )?;
        a.ip(&["route", "add", "default", "via", "10.210.1.1"])?;
        b.ip(&["route", "add", "default", "via", "10.210.2.1"])?;
        let two = thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
        let mut pods = Self {
            a,
            _node: node,
            b,
            servers: Vec::new(),
            client_cpu: two.then_some("0"),
            server_cpu: two.then_some("1"),
        };
        let iperf = pods.pinned(
            &pods.b,
            pods.server_cpu,
            "iperf3",
            &["-s", "-p", IPERF_PORT],
        );
        let rr_addr = format!("0.0.0.0:{RR_PORT}");
        let secs = server_secs.to_string();
        let loadgen = loadgen.to_string_lossy().into_owned();
        let rr = pods.pinned(
            &pods.b,
            pods.server_cpu,
            &loadgen,
            &["rr-server", "--addr", &rr_addr, "--seconds", &secs],
        );
        for mut c in [iperf, rr] {
            c.stdout(Stdio::null()).stderr(Stdio::null());
            pods.servers
                .push(c.spawn().context("starting a server in pod-b")?);
        }
        // Both listening before the first client (bounded wait).
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let ss = cmd_output(pods.b.exec("ss").args(["-ltnH"]))?.unwrap_or_default();
            if ss.contains(&format!(":{IPERF_PORT}")) && ss.contains(&format!(":{RR_PORT}")) {
                break;
            }
            if Instant::now() > end {
                bail!("iperf3 or rr-server did not listen in pod-b within 10 s: {ss}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(pods)
    }

    /// How the runs are pinned, for the header.
    pub(crate) fn pinning(&self) -> String {
        match (self.client_cpu, self.server_cpu) {
            (Some(c), Some(s)) => format!(
                "clients pinned to CPU {c}, servers to CPU {s} (taskset); the daemon unpinned"
            ),
            _ => "one CPU: nothing pinned".into(),
        }
    }

    fn pinned(&self, ns: &Namespace, cpu: Option<&str>, prog: &str, args: &[&str]) -> Command {
        let mut c = match cpu {
            Some(cpu) => {
                let mut c = ns.exec("taskset");
                c.args(["-c", cpu, prog]);
                c
            }
            None => ns.exec(prog),
        };
        c.args(args);
        c
    }

    /// One iperf3 run pod-a -> pod-b: Gbit/s received.
    pub(crate) fn iperf(&self, secs: u32) -> Result<f64> {
        let mut c = self.pinned(
            &self.a,
            self.client_cpu,
            "iperf3",
            &["-c", POD_B, "-p", IPERF_PORT, "-t", &secs.to_string(), "-J"],
        );
        let out = cmd_output(c.stderr(Stdio::piped()))?.context("iperf3 printed nothing")?;
        // `"sum_received": { ..., "bits_per_second": N, ... }` in the JSON's `end`.
        let bps = out
            .split_once("\"sum_received\"")
            .and_then(|(_, rest)| rest.split_once("\"bits_per_second\":"))
            .and_then(|(_, rest)| {
                rest.trim_start()
                    .split(|ch: char| !(ch.is_ascii_digit() || ch == '.' || ch == 'e' || ch == '+'))
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .with_context(|| format!("no sum_received.bits_per_second in iperf3's JSON: {out}"))?;
        Ok(bps / 1e9)
    }

    /// One request/response run pod-a -> pod-b: the client's `key=value` line.
    pub(crate) fn rr(&self, loadgen: &Path, rounds: u64) -> Result<HashMap<String, String>> {
        let addr = format!("{POD_B}:{RR_PORT}");
        let mut c = self.pinned(
            &self.a,
            self.client_cpu,
            &loadgen.to_string_lossy(),
            &[
                "rr-client",
                "--addr",
                &addr,
                "--rounds",
                &rounds.to_string(),
            ],
        );
        let out = cmd_output(c.stderr(Stdio::piped()))?.context("rr-client printed nothing")?;
        Ok(parse_kv(&out))
    }

    /// `count` datagrams pod-a -> pod-b's closed port: each is a drop in pod-b.
    pub(crate) fn drops(&self, loadgen: &Path, count: u64) -> Result<()> {
        let addr = format!("{POD_B}:{DROP_PORT}");
        let mut c = self.a.exec(loadgen);
        c.args(["udp-drop", "--addr", &addr, "--count", &count.to_string()]);
        cmd_output(c.stderr(Stdio::piped()))?.context("udp-drop printed nothing")?;
        Ok(())
    }

    /// TCP segments received in both pods (`/proc/net/snmp` Tcp InSegs): the packets the
    /// receive hook runs for, on this workload.
    pub(crate) fn tcp_in_segs(&self) -> Result<u64> {
        let mut total = 0;
        for ns in [&self.a, &self.b] {
            let text = cmd_output(ns.exec("cat").arg("/proc/net/snmp"))?.unwrap_or_default();
            total += snmp(&text, "Tcp:", "InSegs")
                .with_context(|| format!("no Tcp InSegs in {}'s /proc/net/snmp", ns.name()))?;
        }
        Ok(total)
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        // The namespaces are deleted by their own Drop (anything left inside is killed).
    }
}

/// A veth pair from `ns` (`dev`, `addr/24`) to `peer` (`peer_dev`, `peer_addr/24`), made
/// inside the namespaces: nothing appears in the machine's own.
fn veth(
    ns: &Namespace,
    dev: &str,
    addr: &str,
    peer: &Namespace,
    peer_dev: &str,
    peer_addr: &str,
) -> Result<()> {
    ns.ip(&[
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
    ])?;
    ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
    peer.ip(&["addr", "add", &format!("{peer_addr}/24"), "dev", peer_dev])?;
    ns.ip(&["link", "set", dev, "up"])?;
    peer.ip(&["link", "set", peer_dev, "up"])?;
    Ok(())
}

/// A counter of /proc/net/snmp: the `prefix` header line names the columns, the next
/// `prefix` line holds the values.
fn snmp(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_reads_a_column() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm InSegs OutSegs\nTcp: 1 1234 99\n";
        assert_eq!(snmp(text, "Tcp:", "InSegs"), Some(1234));
        assert_eq!(snmp(text, "Tcp:", "Nope"), None);
        assert_eq!(snmp(text, "Udp:", "InSegs"), None);
    }
}
