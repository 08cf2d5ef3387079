//! The drop hook (`tp_btf/kfree_skb`) end to end on this kernel: a token response with TTL 1
//! dies in the node's forwarding path (`ip_forward`, reason `IP_INHDR`) on its way to a pod
//! one routing hop away, and the daemon logs that pod's token PUT as dropped, on the drop's
//! evidence; a caller in the node's namespace (a hostNetwork pod) is not touched.
//!
//! Topology (tests/support `Routed`): pod -> node (router) -> imds, the fake IMDS setting
//! the IP TTL of its replies; `--host-netns` names the node namespace, as the DaemonSet's
//! mount does.

use crate::harness::{
    Daemon, FakeImds, FakeOpts, IMDS_V4, LINE_TIMEOUT, LogLine, Netns, Routed, curl, curl_status,
    lines_of, report_json, require_root, serial,
};

const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";

fn url(path: &str) -> String {
    format!("http://{IMDS_V4}{path}")
}

/// A token flow from `ns` with user agent `ua`: the PUT, then (when a token came back) a
/// v2 GET with it. Returns (PUT pid, PUT's HTTP code, GET pid if any, the token).
fn token_flow(ns: &Netns, ua: &str) -> (u32, String, Option<u32>, String) {
    let ttl_header = format!("{TTL_HEADER}: 60");
    let token_url = url("/latest/api/token");
    let put_args = ["-A", ua, "-X", "PUT", "-H", &ttl_header, &token_url];
    let (_, code, put) = curl_status(ns, 2, &put_args);
    if code != "200" {
        return (put, code, None, String::new());
    }
    // The token itself, on a connection of its own (curl_status discards the body).
    let got = curl(ns, &put_args);
    let token = got.stdout.trim().to_owned();
    let (_, get_code, get) = curl_status(
        ns,
        5,
        &[
            "-A",
            ua,
            "-H",
            &format!("{TOKEN_HEADER}: {token}"),
            &url("/latest/meta-data/instance-id"),
        ],
    );
    assert_eq!(get_code, "200", "{ua}: the v2 GET with the token");
    (put, code, Some(get), token)
}

/// TTL 1: the pod's token PUT is logged as dropped (with `-> dropped`, at once), the node's
/// flow is answered and has no drop; the report cuts off only the pod, on `[drop seen]`.
/// TTL 2: nothing is dropped, the pod's PUT is answered; with only the node's flow the
/// hop-limit answer is SAFE.
#[test]
fn ttl_1_drop_is_logged_for_the_pod_only_and_ttl_2_has_none() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    // (TTL, does the pod run its flow too)
    for (run, (ttl, with_pod)) in [(1u8, true), (2, true), (2, false)].into_iter().enumerate() {
        let net = Routed::new(&format!("drop{run}"));
        let fake = FakeImds::start(
            &net.imds,
            FakeOpts {
                binds: vec![IMDS_V4],
                ttl: Some(ttl),
                ..FakeOpts::default()
            },
        );
        let node_netns = format!("/var/run/netns/{}", net.node.name());
        let mut daemon =
            Daemon::start(&["--response-timeout", "1500ms", "--host-netns", &node_netns]);
        let started = daemon
            .wait_lines(|l| l.contains("imds-snoop started"), 1, LINE_TIMEOUT)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no start marker\n{}", daemon.dump()));
        assert!(
            started.contains("drop hook tp_btf/kfree_skb (reason IP_INHDR)"),
            "this 6.18 kernel has the reason: the start marker says the drop hook is \
             attached\n{started}"
        );

        let node_ua = format!("node-agent-{run}/1.0");
        let pod_ua = format!("pod-sdk-{run}/1.0");
        let (node_put, node_code, node_get, node_token) = token_flow(&net.node, &node_ua);
        assert_eq!(
            node_code, "200",
            "the node's PUT: no routing hop, TTL 1 is enough"
        );
        let mut ours = vec![node_put, node_get.unwrap()];
        let mut secrets = vec![node_token];
        let pod = with_pod.then(|| token_flow(&net.pod, &pod_ua));
        if let Some((pod_put, code, get, token)) = &pod {
            ours.push(*pod_put);
            ours.extend(*get);
            if !token.is_empty() {
                secrets.push(token.clone());
            }
            if ttl == 1 {
                assert_eq!(
                    code, "000",
                    "ttl 1: the pod's PUT response dies at the router"
                );
                assert!(
                    net.router_time_exceeded() > 0,
                    "ICMP time exceeded at the router"
                );
            } else {
                assert_eq!(code, "200", "ttl 2: the pod's PUT is answered");
            }
        }
        let lines: Vec<LogLine> = daemon
            .wait_lines(
                |l| LogLine::parse(l).is_some_and(|l| ours.contains(&l.pid)),
                ours.len(),
                LINE_TIMEOUT,
            )
            .iter()
            .filter_map(|l| LogLine::parse(l))
            .collect();
        // The node's flow: answered, in the node's namespace, never dropped.
        for pid in [node_put, node_get.unwrap()] {
            let mine = lines_of(&lines, pid);
            assert_eq!(mine.len(), 1, "one line per node call\n{}", daemon.dump());
            assert_eq!(mine[0].status(), Some(200), "{}", mine[0].raw);
            assert!(mine[0].raw.contains(" net:host "), "{}", mine[0].raw);
            assert!(!mine[0].is_token_dropped(), "{}", mine[0].raw);
        }
        if let Some((pod_put, ..)) = pod {
            let put = lines_of(&lines, pod_put);
            assert_eq!(
                put.len(),
                1,
                "one line for the pod's PUT\n{}",
                daemon.dump()
            );
            assert!(put[0].raw.contains(" net:other "), "{}", put[0].raw);
            if ttl == 1 {
                assert!(
                    put[0].is_token_dropped() && put[0].status().is_none(),
                    "ttl 1: the pod's PUT is logged as dropped\n{}",
                    daemon.dump()
                );
            } else {
                assert!(
                    put[0].is_token_put() && put[0].status() == Some(200),
                    "ttl 2: answered\n{}",
                    put[0].raw
                );
            }
        }
        let drops = daemon
            .our_lines()
            .iter()
            .filter(|l| l.is_token_dropped())
            .count();
        assert_eq!(
            drops,
            usize::from(ttl == 1),
            "ttl {ttl}: drop lines\n{}",
            daemon.dump()
        );
        daemon.stop();

        let report = report_json(daemon.log_path());
        let verdict = &report["verdicts"][0];
        // Other IMDS traffic on the machine (other sessions' namespaces) may add callers:
        // ours carry this run's user agents.
        let cut_off: Vec<String> = crate::harness::hop_limit_cut_off(&report)
            .into_iter()
            .filter(|c| c.contains(&format!("-{run} 1.0]")))
            .collect();
        match (ttl, with_pod) {
            (1, _) => {
                assert_eq!(cut_off.len(), 1, "only the pod: {cut_off:?}\n{report}");
                assert!(
                    cut_off[0].contains(&format!("[pod-sdk-{run} 1.0]"))
                        && cut_off[0].ends_with("[drop seen]"),
                    "the pod, on the drop's evidence: {cut_off:?}"
                );
                assert_eq!(verdict["hop_limit_1"], "NOT SAFE", "{report}");
            }
            (_, true) => {
                // Behind the hop and needing a token: listed on its namespace, but nothing
                // was seen dropped.
                assert_eq!(cut_off.len(), 1, "{cut_off:?}\n{report}");
                assert!(
                    !cut_off[0].contains("[drop seen]") && !cut_off[0].contains("[silence]"),
                    "{cut_off:?}"
                );
            }
            (_, false) => {
                assert!(cut_off.is_empty(), "{cut_off:?}\n{report}");
                assert_eq!(verdict["hop_limit_1"], "SAFE", "{report}");
            }
        }
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        daemon.assert_clean(&[&fake], &secrets);
        drop(net);
    }
}
