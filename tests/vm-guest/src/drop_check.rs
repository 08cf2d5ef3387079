//! The `drop` spec: the hop-limit drop hook, proven on this kernel. IMDS's PUT response hop
//! limit 1 means a token PUT's reply leaves IMDS with IP TTL 1; a pod behind a router (its
//! node) never gets it, because the node's `ip_forward` drops it (TTL would reach 0,
//! `SKB_DROP_REASON_IP_INHDR` on 5.19+, the `skb:kfree_skb` tracepoint fires). The daemon's
//! drop hook sees that and writes the PUT's line as `imdsv2 token response dropped (hop
//! limit)`.
//!
//! Here: `routed.rs`'s pod -> node -> imds namespaces, the in-process fake IMDS in "imds"
//! answering token PUTs with TTL 1, and `imds-snoop --attach auto --host-netns FILE`, FILE
//! holding the node's `net:[INODE]` as the unit's ExecStartPre writes pid 1's (the node is
//! the host).
//! Two clients, children of this runner:
//! - `node-v2` in the node: token PUT and a GET with the token, both ` -> 200` and
//!   `net:host` (one link away, no forwarding: TTL 1 arrives);
//! - `pod-put` in the pod: a token PUT that gets no reply (the client checks it) and is
//!   logged with the drop label, `net:other`, no status.
//!
//! The node's ICMP `OutTimeExcds` must have grown (the reply really died at the router).
//! The result's `attached=` is the drop program the daemon said it attached
//! (`kfree_skb-reason`: the kernel's drop reason, 5.19+; `kfree_skb-route`: no owning socket
//! and a forwarded route, older kernels); when the daemon says the hook cannot be loaded on
//! this kernel, `none`, and the check fails: every kernel of the matrix is expected to load
//! it.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use imds_snoop_line::{
    Class, TextBody, TextLine,
    label::{NET_HOST, NET_OTHER},
};
use imds_snoop_test_support::TinyImds;

use crate::{
    COMM, Daemon, IMDS_V4, MISSING, Options, Outcome, TOKEN, V4_DST, read_log, routed::Routed,
    run_client_in, short,
};

/// How long the pod's client waits for its PUT's reply (which must not come).
pub(crate) const POD_PUT_WAIT: Duration = Duration::from_secs(4);

/// The label of a token PUT whose reply died of its TTL (`imdsv2 token response dropped
/// (hop limit)`).
const DROPPED: &str = Class::V2TokenDropped.label();

/// How long the lines may take after the clients are done (the drop line may wait for the
/// daemon's response timeout).
const LINES_WAIT: Duration = Duration::from_secs(30);

pub(crate) fn run(opts: &Options) -> Outcome {
    let net = match Routed::new() {
        Ok(n) => n,
        Err(e) => return Outcome::fail(0, format!("pod -> node -> imds topology: {e}")),
    };
    let fake = TinyImds {
        token: TOKEN,
        missing: MISSING,
        put_ttl: Some(1),
    };
    if let Err(e) = net.imds.run(|| {
        fake.start(&[SocketAddr::new(IpAddr::V4(IMDS_V4), 80)])
            .map_err(std::io::Error::other)
    }) {
        return Outcome::fail(0, format!("fake IMDS in the imds namespace: {e}"));
    }
    let log = opts.workdir.join("imds-drop.log");
    let _ = fs::remove_file(&log);
    // As the unit's ExecStartPre writes pid 1's: a file holding `net:[INODE]`.
    let host_netns = opts.workdir.join("node-netns");
    if let Err(e) = fs::write(&host_netns, format!("net:[{}]\n", net.node.inode)) {
        return Outcome::fail(0, format!("writing {}: {e}", host_netns.display()));
    }
    let Some(host_netns) = host_netns.to_str() else {
        return Outcome::fail(0, format!("{} is not UTF-8", host_netns.display()));
    };
    let mut daemon = match Daemon::spawn_with(opts, "auto", &log, &["--host-netns", host_netns]) {
        Ok(d) => d,
        Err(e) => return Outcome::fail(0, e),
    };
    let attached = match daemon.wait_attached(opts.attach_timeout) {
        Ok(l) => l,
        Err(e) => return Outcome::fail(0, e),
    };
    eprintln!("vm-guest: drop: {attached}");

    let mut failures = Vec::new();
    let exceeded_before = net.node_time_exceeded().unwrap_or(0);
    let mut pids: BTreeMap<u32, &'static str> = BTreeMap::new();
    for (kind, ns) in [("node-v2", &net.node), ("pod-put", &net.pod)] {
        match run_client_in(kind, Some(ns)) {
            Ok(pid) => {
                pids.insert(pid, kind);
            }
            Err(e) => failures.push(format!("client {kind}: {e}")),
        }
    }
    match net.node_time_exceeded() {
        Ok(after) if after > exceeded_before => {}
        Ok(after) => failures.push(format!(
            "the node sent no ICMP time exceeded (OutTimeExcds {exceeded_before} -> {after}): \
             the TTL-1 reply did not die at the router"
        )),
        Err(e) => failures.push(format!("the node's ICMP counters: {e}")),
    }
    let pid_of = |kind: &str| pids.iter().find(|(_, k)| **k == kind).map(|(p, _)| *p);
    let wanted = |lines: &[crate::LogLine]| {
        let pod = pid_of("pod-put")
            .is_some_and(|p| lines.iter().any(|l| l.pid == Some(p) && l.label == DROPPED));
        let node = pid_of("node-v2")
            .is_some_and(|p| lines.iter().filter(|l| l.pid == Some(p)).count() >= 2);
        pod && node
    };
    let deadline = Instant::now() + LINES_WAIT;
    while Instant::now() < deadline && !wanted(&read_log(&log)) {
        thread::sleep(Duration::from_millis(200));
    }
    // Anything extra (a second line for the PUT) has a moment to appear.
    thread::sleep(Duration::from_millis(500));
    // `hop-limit drops: tp_btf/kfree_skb (reason IP_INHDR)`, or `hop-limit drops are not
    // traced: WHY; ...` (daemon.rs, at start).
    let hook = daemon.stderr_has("hop-limit drops");
    match daemon.stop(Duration::from_secs(30)) {
        Ok(st) if st.success() => {}
        Ok(st) => failures.push(format!(
            "imds-snoop exited {st} after SIGTERM: {}",
            daemon.last_error()
        )),
        Err(e) => failures.push(e),
    }

    let lines = read_log(&log);
    let mut events = 0;
    for l in &lines {
        if l.raw.contains(TOKEN) {
            failures.push(format!("the token value is in the log: {}", short(l)));
        }
        let Some(kind) = l.pid.and_then(|p| pids.get(&p)) else {
            // A drop that matched no request: ours (in our node's namespace) is a failure
            // always; another test's, on the host, is foreign.
            let ours = unmatched_drop_netns(&l.raw).is_none_or(|ns| ns == net.node.inode);
            if !opts.ignore_foreign || (l.pid.is_none() && ours) {
                failures.push(format!("unexpected log line: {}", l.raw));
            }
            continue;
        };
        events += 1;
        if let Err(e) = check_line(kind, l, std::process::id()) {
            failures.push(format!("client {kind}: {e}: {}", short(l)));
        }
    }
    for (pid, kind) in &pids {
        let want = if *kind == "pod-put" { 1 } else { 2 };
        let got = lines.iter().filter(|l| l.pid == Some(*pid)).count();
        if got != want {
            failures.push(format!(
                "client {kind} (pid {pid}): {got} line(s), want {want}{}",
                if *kind == "pod-put" {
                    format!(" (`{DROPPED}`)")
                } else {
                    String::new()
                }
            ));
        }
    }
    // Say what the daemon said about its drop hook, and name a refusal as such.
    let hook_state = match &hook {
        Some(h) if h.contains("hop-limit drops are not traced") => {
            failures.insert(0, format!("drop hook not loaded on this kernel: {h}"));
            "none"
        }
        // Which of the two programs: the drop reason (5.19+), or the route (older kernels).
        Some(h) if h.contains("reason IP_INHDR") => "kfree_skb-reason",
        Some(h) if h.contains("forwarded route") => "kfree_skb-route",
        Some(_) => "kfree_skb",
        None => {
            failures.insert(
                0,
                "the daemon did not say whether its drop hook is attached".into(),
            );
            "?"
        }
    };
    if !failures.is_empty() {
        eprintln!(
            "vm-guest: drop: {} problem(s); the log ({}) held:",
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
        attached: Some(hook_state.to_owned()),
        events,
        reason: (!failures.is_empty()).then(|| crate::summarize(&failures)),
    }
}

/// The namespace of the daemon's `imds-snoop saw a reply dropped at the hop limit (... netns:N)`
/// line (a drop no traced request matched); `None` for any other line.
fn unmatched_drop_netns(raw: &str) -> Option<u64> {
    let TextBody::HopDrop { details } = TextLine::parse(raw)?.body else {
        return None;
    };
    details
        .split_whitespace()
        .find_map(|f| f.strip_prefix("netns:"))
        .and_then(|n| n.parse().ok())
}

/// One line of a drop-check client (a child of `runner`), against what it must say.
fn check_line(kind: &str, l: &crate::LogLine, runner: u32) -> Result<(), String> {
    let parsed = TextLine::parse(&l.raw).ok_or("not a trace line")?;
    let call = parsed.call().ok_or("not a call")?;
    let fields = call.fields();
    let argv = format!("argv:{COMM} client {kind}) called by -> (pid:{runner}:{COMM} ");
    if !l.raw.contains(&argv) {
        return Err(format!("caller is not `{argv}...`"));
    }
    if fields.destination != Some(V4_DST) {
        return Err(format!("dst is {:?}, want {V4_DST}", fields.destination));
    }
    let (label, status, net) = match (kind, fields.request) {
        ("pod-put", r) if r.starts_with("put /latest/api/token http/1.1") => {
            (DROPPED, None, NET_OTHER)
        }
        ("node-v2", r) if r.starts_with("put /latest/api/token http/1.1") => {
            ("imdsv2(token)", Some(200), NET_HOST)
        }
        ("node-v2", r) if r.starts_with("get /latest/meta-data/vm-guest/node-v2 http/1.1") => {
            ("imdsv2", Some(200), NET_HOST)
        }
        _ => return Err("a request this client did not make".into()),
    };
    if l.label != label {
        return Err(format!("label `{}`, want `{label}`", l.label));
    }
    if fields.status != status {
        return Err(format!("status {:?}, want {status:?}", fields.status));
    }
    let host = fields.host_network;
    if host != Some(net == NET_HOST) {
        return Err(format!("network {host:?}, want {net}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_line;

    /// Lines as the daemon wrote them in a run on 6.18 (the ancestry after the runner cut).
    fn line(label: &str, kind: &str, request: &str, tail: &str) -> crate::LogLine {
        parse_line(&format!(
            "[2026-11-29 15:05:29,256] [{}] {label} (pid:25318:vm-guest argv:vm-guest client \
             {kind}) called by -> (pid:25275:vm-guest argv:vm-guest drop) req details: \
             {request} http/1.1, host: 169.254.169.254, user-agent: vm-guest/1 {kind}, \
             connection: close, {tail} uid:0 dst:169.254.169.254:80",
            if label == "imdsv2" || label == "imdsv2(token)" {
                "INFO"
            } else {
                "WARNING"
            }
        ))
    }

    #[test]
    fn the_pods_put_must_be_dropped_and_the_nodes_answered() {
        let put = "put /latest/api/token";
        let dropped = line(DROPPED, "pod-put", put, "-> dropped host unit:- net:other");
        assert_eq!(check_line("pod-put", &dropped, 25275), Ok(()));
        // Another runner's child, silence instead of the drop, the node's namespace.
        assert!(check_line("pod-put", &dropped, 1).is_err());
        let silent = line(
            "imdsv2 token response not received (hop limit?)",
            "pod-put",
            put,
            "host unit:- net:other",
        );
        assert!(
            check_line("pod-put", &silent, 25275)
                .unwrap_err()
                .contains("label")
        );
        let in_node = line(DROPPED, "pod-put", put, "-> dropped host unit:- net:host");
        assert!(
            check_line("pod-put", &in_node, 25275)
                .unwrap_err()
                .contains("network")
        );

        let answered = line(
            "imdsv2(token)",
            "node-v2",
            put,
            "-> 200 host unit:- net:host",
        );
        assert_eq!(check_line("node-v2", &answered, 25275), Ok(()));
        let get = "get /latest/meta-data/vm-guest/node-v2";
        let v2 = line("imdsv2", "node-v2", get, "-> 200 host unit:- net:host");
        assert_eq!(check_line("node-v2", &v2, 25275), Ok(()));
        let lost = line(DROPPED, "node-v2", put, "-> dropped host unit:- net:host");
        assert!(check_line("node-v2", &lost, 25275).is_err());
    }

    #[test]
    fn unmatched_drops_name_their_namespace() {
        let raw = "[2026-11-29 15:05:29,256] [WARNING] imds-snoop saw a reply dropped at the hop \
                   limit (no traced request: to:10.200.1.2:40000 from:169.254.169.254:80 ttl:1 \
                   reason:IP_INHDR netns:4026532245)";
        assert_eq!(unmatched_drop_netns(raw), Some(4026532245));
        assert_eq!(
            unmatched_drop_netns("[2026-11-29 15:05:29,256] [INFO] imds-snoop started (x)"),
            None
        );
    }
}
