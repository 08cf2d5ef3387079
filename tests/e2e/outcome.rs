//! The outcome of each call: the status IMDS answered (`-> 200`, `-> 401`, `-> 404`), and the
//! hop-limit warning for a token PUT whose answer never comes back.
//!
//! Statuses come from the real `cgroup_skb` ingress program on the root cgroup, joined to
//! the real clients' requests; the hop limit is a real IP TTL dying at a real router hop.

use crate::harness::{
    Daemon, FakeImds, FakeOpts, IMDS_V4, IMDS_V6, LINE_TIMEOUT, LogLine, Netns, Routed,
    botocore_credentials, curl, curl_status, lines_of, report_json, require_root, serial, show,
};

const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";

fn url(path: &str) -> String {
    format!("http://{IMDS_V4}{path}")
}

/// The one line of `pid` among `lines`, with the status it must show.
fn assert_status(daemon: &Daemon, lines: &[LogLine], pid: u32, status: u16, what: &str) {
    let mine = lines_of(lines, pid);
    assert_eq!(mine.len(), 1, "{what}: one line\n{}", daemon.dump());
    assert_eq!(
        mine[0].status(),
        Some(status),
        "{what}: the line must end its request details with ` -> {status}`\n{}",
        daemon.dump()
    );
}

/// http_tokens=required: v1 calls get 401, v2 calls 200, a missing path 404; the line
/// says what the client received.
#[test]
fn enforcement_mode_statuses_are_on_the_lines() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("outcome");
    let fake = FakeImds::start(&ns, FakeOpts::enforcing());
    let daemon = Daemon::start(&[]);

    let (_, v1_code, v1_pid) = curl_status(&ns, 5, &[&url("/latest/meta-data/instance-id")]);
    assert_eq!(
        v1_code, "401",
        "the fake must refuse v1 in enforcement mode"
    );
    let put = curl(
        &ns,
        &[
            "-X",
            "PUT",
            "-H",
            &format!("{TTL_HEADER}: 60"),
            &url("/latest/api/token"),
        ],
    );
    let token = put.stdout.trim().to_owned();
    let auth = format!("{TOKEN_HEADER}: {token}");
    let (_, v2_code, v2_pid) = curl_status(
        &ns,
        5,
        &["-H", &auth, &url("/latest/meta-data/instance-id")],
    );
    assert_eq!(v2_code, "200");
    let (_, missing_code, missing_pid) = curl_status(
        &ns,
        5,
        &["-H", &auth, &url("/latest/meta-data/no-such-key")],
    );
    assert_eq!(missing_code, "404");

    // IPv6 endpoint: the ingress program parses IPv6 headers too.
    let (_, v6_code, v6_pid) = curl_status(
        &ns,
        5,
        &[&format!("http://[{IMDS_V6}]/latest/meta-data/instance-id")],
    );
    assert_eq!(v6_code, "401");

    let lines = daemon.expect_our_lines(5, "v1 GET, token PUT, v2 GET, missing path, v6 GET");
    assert_status(&daemon, &lines, v1_pid, 401, "v1 GET under enforcement");
    assert!(lines_of(&lines, v1_pid)[0].is_v1(), "{}", show(&lines));
    assert_status(&daemon, &lines, put.pid, 200, "token PUT");
    assert_status(&daemon, &lines, v2_pid, 200, "v2 GET");
    assert_status(&daemon, &lines, missing_pid, 404, "missing path");
    assert_status(&daemon, &lines, v6_pid, 401, "v1 GET to [fd00:ec2::254]");
    // The status is what came back; nothing of the body (the token) may be in the log.
    daemon.finish(&[&fake], &[&token]);
}

/// Keep-alive: several requests on one connection are answered in order.
#[test]
fn keep_alive_requests_get_their_own_status() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("outcome-ka");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    // One curl, one connection: 200, 404, 200.
    let (_, codes, pid) = curl_status(
        &ns,
        5,
        &[
            &url("/latest/meta-data/ami-id"),
            "-o",
            "/dev/null",
            &url("/latest/meta-data/nope"),
            "-o",
            "/dev/null",
            &url("/latest/meta-data/hostname"),
        ],
    );
    assert_eq!(codes, "200404200");
    let lines = daemon.expect_our_lines(3, "three GETs on one connection");
    let statuses: Vec<(String, Option<u16>)> = lines_of(&lines, pid)
        .iter()
        .map(|l| {
            (
                l.details.split(',').next().unwrap_or("").to_owned(),
                l.status(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (
                "get /latest/meta-data/ami-id http/1.1".to_owned(),
                Some(200)
            ),
            ("get /latest/meta-data/nope http/1.1".to_owned(), Some(404)),
            (
                "get /latest/meta-data/hostname http/1.1".to_owned(),
                Some(200)
            ),
        ],
        "{}",
        daemon.dump()
    );
    daemon.finish(&[&fake], &[]);
}

#[test]
fn json_lines_carry_the_status() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("outcome-json");
    let fake = FakeImds::start(&ns, FakeOpts::enforcing());
    let daemon = Daemon::start(&["--format", "json", "--node-name", "outcome-node"]);
    let (_, code, pid) = curl_status(&ns, 5, &[&url("/latest/meta-data/")]);
    assert_eq!(code, "401");
    let lines = daemon.wait_lines(|l| l.contains(&format!("\"pid\":{pid},")), 1, LINE_TIMEOUT);
    let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON line");
    assert_eq!(v["class"], "v1", "{v}");
    assert_eq!(v["status"], 401, "{v}");
    daemon.finish(&[&fake], &[]);
}

/// The migration's hop-limit question, reproduced: a pod one router hop away from IMDS.
/// With the PUT response's TTL 1 the reply dies at the router, and the drop hook
/// (`tp_btf/kfree_skb`, which loads on this kernel) sees it die: the token PUT is logged as
/// dropped at once (not after its wait); the v1 call the SDK falls back to still works.
/// With TTL 2 the reply arrives: `-> 200`, no warning.
#[test]
fn token_put_response_dropped_by_hop_limit_is_logged_as_dropped() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let mut daemon = Daemon::start(&["--response-timeout", "1500ms"]);
    let mut secrets = Vec::new();
    for ttl in [1u8, 2] {
        let net = Routed::new(&format!("hop{ttl}"));
        let fake = FakeImds::start(
            &net.imds,
            FakeOpts {
                binds: vec![IMDS_V4],
                ttl: Some(ttl),
                ..FakeOpts::default()
            },
        );
        let (exit, code, put_pid) = curl_status(
            &net.pod,
            2,
            &[
                "-X",
                "PUT",
                "-H",
                &format!("{TTL_HEADER}: 60"),
                &url("/latest/api/token"),
            ],
        );
        // Then what an SDK does next: a v1 GET (a new connection, not hop-limited).
        let (_, get_code, get_pid) = curl_status(&net.pod, 5, &[&url("/latest/meta-data/ami-id")]);
        assert_eq!(get_code, "200", "the v1 fallback must reach the fake");

        let pred =
            |l: &str| LogLine::parse(l).is_some_and(|l| l.pid == put_pid || l.pid == get_pid);
        let lines: Vec<LogLine> = daemon
            .wait_lines(pred, 2, LINE_TIMEOUT)
            .iter()
            .filter_map(|l| LogLine::parse(l))
            .collect();
        let put = lines_of(&lines, put_pid);
        assert_eq!(put.len(), 1, "ttl {ttl}: one PUT line\n{}", daemon.dump());
        assert_status(&daemon, &lines, get_pid, 200, "the v1 GET after the PUT");
        if ttl == 1 {
            assert!(
                exit.is_some_and(|s| !s.success()) && code == "000",
                "ttl 1: the PUT's response must not reach the pod (curl got {code})"
            );
            assert!(
                put[0].is_token_dropped() && put[0].status().is_none(),
                "ttl 1: the PUT must be logged as dropped at the hop limit\n{}",
                daemon.dump()
            );
            assert!(put[0].has("put /latest/api/token"), "{}", put[0].raw);
            assert!(
                net.router_time_exceeded() > 0,
                "ttl 1: the reply must have died at the router (ICMP time exceeded)"
            );
            // An SDK: botocore's PUT times out (1 s), it falls back to IMDSv1 and gets the
            // credentials; the log shows why.
            let boto = botocore_credentials(&net.pod, 1);
            assert_eq!(
                boto.stdout.trim(),
                format!("test-role {}", fake.credential("AccessKeyId")),
                "botocore must fall back to v1 and get the credentials"
            );
            let boto_lines: Vec<LogLine> = daemon
                .wait_lines(
                    |l| LogLine::parse(l).is_some_and(|l| l.pid == boto.pid),
                    3,
                    LINE_TIMEOUT,
                )
                .iter()
                .filter_map(|l| LogLine::parse(l))
                .collect();
            let warned = boto_lines.iter().filter(|l| l.is_token_dropped()).count();
            let v1_ok = boto_lines
                .iter()
                .filter(|l| l.is_v1() && l.status() == Some(200))
                .count();
            assert_eq!(
                (warned, v1_ok, boto_lines.len()),
                (1, 2, 3),
                "botocore: its PUT dropped at the hop limit, then two v1 GETs answered 200\n{}",
                daemon.dump()
            );
        } else {
            assert_eq!(code, "200", "ttl 2: the PUT's response must arrive");
            assert_eq!(
                net.router_time_exceeded(),
                0,
                "ttl 2: nothing dies at the router"
            );
            assert!(
                put[0].is_token_put() && put[0].status() == Some(200),
                "ttl 2: the PUT is answered, no warning\n{}",
                daemon.dump()
            );
        }
        secrets.extend(fake.secrets().into_iter().map(|s| s.value));
        drop(fake);
        drop(net);
    }
    // curl's and botocore's, and no silence-based warning from our clients: the drop
    // evidence replaced it.
    let ours = daemon.our_lines();
    let dropped = ours.iter().filter(|l| l.is_token_dropped()).count();
    let silent = ours.iter().filter(|l| l.is_token_not_received()).count();
    assert_eq!((dropped, silent), (2, 0), "{}", daemon.dump());
    daemon.stop();
    // `report` reads the drop lines the daemon wrote: the PUT's curl is cut off by hop
    // limit 1, on the drop's evidence.
    let report = report_json(daemon.log_path());
    let curl = report["callers"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["process"] == "curl" && c["token_dropped"] == 1)
        })
        .unwrap_or_else(|| panic!("no curl with a dropped token response in the report: {report}"));
    let python = report["callers"]
        .as_array()
        .and_then(|c| {
            // By its SDK: the daemon sees every namespace's IMDS traffic, and another
            // python3 on the machine may be in the log too.
            c.iter()
                .find(|c| c["process"] == "python3" && c["sdk"]["name"] == "botocore")
        })
        .unwrap_or_else(|| panic!("no python3 (botocore) caller in the report: {report}"));
    assert_eq!(
        (&python["token_dropped"], &python["v1"]),
        (&serde_json::json!(1), &serde_json::json!(2)),
        "{report}"
    );
    assert_eq!(curl["token"], 1, "the TTL 2 PUT was answered: {report}");
    let verdict = &report["verdicts"][0];
    assert_eq!(verdict["hop_limit_1_safe"], false, "{report}");
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    daemon.assert_clean(&[], &secrets);
}

/// `--responses off`: nothing waits, no status, and no token PUT becomes a warning.
#[test]
fn responses_off_logs_at_once_without_status() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("outcome-off");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&["--responses", "off", "--response-timeout", "30s"]);
    assert!(
        !daemon.stderr().contains("cgroup_skb"),
        "nothing is attached for responses\n{}",
        daemon.dump()
    );
    let put = curl(
        &ns,
        &[
            "-X",
            "PUT",
            "-H",
            &format!("{TTL_HEADER}: 60"),
            &url("/latest/api/token"),
        ],
    );
    // Well before the 30 s timeout: the line did not wait for anything.
    let lines = daemon.expect_our_lines(1, "a token PUT");
    assert!(
        lines[0].is_token_put() && lines[0].status().is_none(),
        "{}",
        show(&lines)
    );
    assert_eq!(lines[0].pid, put.pid);
    daemon.finish(&[&fake], &[put.stdout.trim()]);
}

/// Which network namespace each caller is in, and the hop-limit verdict built on it. In the
/// pod -> node -> imds topology with the PUT response's TTL 1, the daemon is told that the
/// "node" namespace is the host's (`--host-netns`, as a DaemonSet's hostPath tells it):
/// - a token flow from the node's namespace (a host process, a hostNetwork pod) is
///   `net:host` and answered: the hop limit does not touch it;
/// - the pod's token PUT is `net:other` and lost at the router (the hop-limit warning);
/// - the pod's v1-only call is `net:other` too, and belongs to the IMDSv1 list only.
///
/// `report` then lists exactly the pod's token caller under "hop limit 1 would cut off".
#[test]
fn hop_limit_verdict_lists_only_token_callers_behind_the_hop() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = Routed::new("netns-verdict");
    let fake = FakeImds::start(
        &net.imds,
        FakeOpts {
            binds: vec![IMDS_V4],
            ttl: Some(1),
            ..FakeOpts::default()
        },
    );
    let node_netns = format!("/var/run/netns/{}", net.node.name());
    let mut daemon = Daemon::start(&["--response-timeout", "1500ms", "--host-netns", &node_netns]);

    // The node's own token flow: no router hop, so TTL 1 is enough.
    let put = curl(
        &net.node,
        &[
            "-A",
            "node-agent/1.0",
            "-X",
            "PUT",
            "-H",
            &format!("{TTL_HEADER}: 60"),
            &url("/latest/api/token"),
        ],
    );
    let token = put.stdout.trim().to_owned();
    let (_, node_code, node_get) = curl_status(
        &net.node,
        5,
        &[
            "-A",
            "node-agent/1.0",
            "-H",
            &format!("{TOKEN_HEADER}: {token}"),
            &url("/latest/meta-data/instance-id"),
        ],
    );
    assert_eq!(node_code, "200");
    // The pod: its token PUT's reply dies at the router; a v1-only client besides.
    let (_, pod_code, pod_put) = curl_status(
        &net.pod,
        2,
        &[
            "-A",
            "pod-sdk/1.0",
            "-X",
            "PUT",
            "-H",
            &format!("{TTL_HEADER}: 60"),
            &url("/latest/api/token"),
        ],
    );
    assert_eq!(
        pod_code, "000",
        "ttl 1: the pod's PUT response must die at the router"
    );
    let (_, v1_code, pod_v1) = curl_status(
        &net.pod,
        5,
        &["-A", "pod-v1-only/1.0", &url("/latest/meta-data/ami-id")],
    );
    assert_eq!(v1_code, "200");

    let ours = [put.pid, node_get, pod_put, pod_v1];
    let lines: Vec<LogLine> = daemon
        .wait_lines(
            |l| LogLine::parse(l).is_some_and(|l| ours.contains(&l.pid)),
            4,
            LINE_TIMEOUT,
        )
        .iter()
        .filter_map(|l| LogLine::parse(l))
        .collect();
    let one = |pid: u32, what: &str| {
        let mine = lines_of(&lines, pid);
        assert_eq!(mine.len(), 1, "{what}: one line\n{}", daemon.dump());
        mine[0].clone()
    };
    for (pid, net_field, what) in [
        (put.pid, " net:host ", "the node's token PUT"),
        (node_get, " net:host ", "the node's v2 GET"),
        (pod_put, " net:other ", "the pod's token PUT"),
        (pod_v1, " net:other ", "the pod's v1 GET"),
    ] {
        let line = one(pid, what);
        assert!(
            line.raw.contains(net_field),
            "{what}: {net_field}\n{}",
            line.raw
        );
    }
    assert_eq!(one(put.pid, "node PUT").status(), Some(200));
    assert!(one(pod_put, "pod PUT").is_token_dropped());
    daemon.stop();

    let report = report_json(daemon.log_path());
    let verdict = &report["verdicts"][0];
    let cut_off = crate::harness::hop_limit_cut_off(&report);
    // Foreign IMDS traffic on the machine may add callers; ours are these.
    let callers = report["callers"].as_array().unwrap();
    let caller = |ua: &str| {
        callers
            .iter()
            .find(|c| c["user_agent"] == ua)
            .unwrap_or_else(|| panic!("no caller with user agent {ua}: {report}"))
    };
    assert_eq!(caller("pod-sdk/1.0")["network"], "other", "{report}");
    assert_eq!(caller("node-agent/1.0")["network"], "host", "{report}");
    assert_eq!(caller("pod-v1-only/1.0")["network"], "other", "{report}");
    assert!(
        cut_off.iter().any(|c| c.contains("[pod-sdk 1.0] on host")
            && c.ends_with("(in its own network namespace) [drop seen]")),
        "the pod's token caller is cut off: {cut_off:?}\n{report}"
    );
    assert_eq!(
        cut_off.len(),
        1,
        "only the pod's token caller: not the node's flow, not the v1-only client: \
         {cut_off:?}\n{report}"
    );
    assert_eq!(verdict["hop_limit_1"], "NOT SAFE", "{report}");
    assert!(
        verdict["v1_callers"].to_string().contains("curl"),
        "the pod's v1-only client is an IMDSv1 caller: {report}"
    );
    daemon.assert_clean(&[&fake], &[&token]);
}

/// A token PUT answered by a reset (a proxy or firewall in IMDS's place) is not silence:
/// the line says ` -> reset`, it is not the hop-limit warning, and the report names the
/// reset, not the hop limit.
#[test]
fn token_put_reset_is_told_apart_from_silence() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("outcome-reset");
    let fake = FakeImds::start(
        &ns,
        FakeOpts {
            reset_token_puts: true,
            ..FakeOpts::default()
        },
    );
    let mut daemon = Daemon::start(&["--response-timeout", "1500ms"]);
    let (exit, code, pid) = curl_status(
        &ns,
        2,
        &[
            "-A",
            "reset-probe/1.0",
            "-X",
            "PUT",
            "-H",
            &format!("{TTL_HEADER}: 60"),
            &url("/latest/api/token"),
        ],
    );
    assert!(
        exit.is_some_and(|s| !s.success()) && code == "000",
        "the fake must reset the PUT (curl got {code})"
    );
    let lines: Vec<LogLine> = daemon
        .wait_lines(
            |l| LogLine::parse(l).is_some_and(|l| l.pid == pid),
            1,
            LINE_TIMEOUT,
        )
        .iter()
        .filter_map(|l| LogLine::parse(l))
        .collect();
    let put = lines_of(&lines, pid);
    assert_eq!(put.len(), 1, "{}", daemon.dump());
    assert!(
        put[0].is_token_put() && !put[0].is_token_not_received(),
        "a reset is not the hop-limit warning\n{}",
        put[0].raw
    );
    assert!(put[0].raw.contains(", -> reset "), "{}", put[0].raw);
    daemon.stop();
    let report = report_json(daemon.log_path());
    let caller = report["callers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["user_agent"] == "reset-probe/1.0"))
        .unwrap_or_else(|| panic!("no reset-probe caller: {report}"));
    assert_eq!(caller["token_failures"], 0, "{report}");
    assert_eq!(caller["token_ended"]["reset"], 1, "{report}");
    assert!(
        caller["notes"]
            .to_string()
            .contains("1 token PUT reset without a response: not the hop limit"),
        "{report}"
    );
    daemon.assert_clean(&[&fake], &[]);
}
