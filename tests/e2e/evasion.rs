//! An unprivileged caller (uid 65534) hiding its IMDSv1 calls from the tracer (issue 16's
//! attack round): each way reaches IMDS and is answered `200` (the client prints the
//! statuses it got), and must leave a line that is no evidence of IMDSv2, so that
//! `imds-snoop report` never says SAFE for a node where it happened.

use std::fs;

use crate::{
    harness::{
        Daemon, FakeImds, FakeOpts, LogLine, Netns, client_script, report_json, require_root,
        serial,
    },
    trust::{as_nobody, run_ok},
};

/// `hide_v1.py MODES` as nobody in `ns`: its stdout, `MODE STATUS...` per mode. The
/// system's python3: a `python3` first on root's PATH may be a shim under /root (pyenv),
/// which nobody cannot run.
fn hide(ns: &Netns, modes: &[&str]) -> String {
    let script = client_script("hide_v1.py");
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("python3");
    run_ok(as_nobody(ns, python).arg(script).args(modes))
}

/// The report's verdict on these lines alone (the daemon sees every IMDS call on the
/// machine; the verdict must rest on this test's calls).
fn verdict_on(daemon: &Daemon, lines: &[LogLine]) -> serde_json::Value {
    let ours = daemon.log_path().with_extension("ours");
    let text: String = lines.iter().map(|l| format!("{}\n", l.raw)).collect();
    fs::write(&ours, text).unwrap();
    report_json(&ours)["verdicts"][0].clone()
}

/// A token PUT with a 3000-byte body and a v1 GET behind it, in one send: the kernel
/// copies 2048 bytes, so the GET was never seen, and the node was SAFE. The part past the
/// copy is now a call of its own (malformed), and the node is not SAFE.
#[test]
fn a_v1_call_pipelined_past_the_copied_part_of_a_send_is_not_hidden() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("pipelined");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    let out = hide(&ns, &["pipelined"]);
    assert_eq!(
        out.trim(),
        "pipelined 200 200",
        "IMDS answered the PUT and the v1 GET"
    );
    let lines = daemon.expect_our_lines(2, "the token PUT, and the part past the copy");
    assert!(lines[0].is_token_put(), "{}", lines[0].raw);
    assert_eq!(lines[1].label, "malformed(!)", "{}", lines[1].raw);
    let verdict = verdict_on(&daemon, &lines);
    assert_eq!(verdict["imdsv2_required_safe"], false, "{verdict}");
    assert!(
        verdict["inconclusive"]
            .to_string()
            .contains("not classified"),
        "{verdict}"
    );
    daemon.finish(&[&imds], &[]);
}

/// A v1 GET sent with sendfile(2), and one sent from an untouched mmap'd file page: the
/// kernel program cannot read either payload, so each is logged `payload-unreadable`
/// (malformed), answered `-> 200`; the report used to count neither and said SAFE.
#[test]
fn an_unreadable_v1_call_is_no_evidence_of_imdsv2() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("unreadable");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    let out = hide(&ns, &["sendfile", "mmap"]);
    assert_eq!(
        out, "sendfile 200\nmmap 200\n",
        "IMDS answered both v1 GETs"
    );
    let lines = daemon.expect_our_lines(2, "the two unreadable sends");
    for l in &lines {
        assert_eq!(l.label, "malformed(!)", "{}", l.raw);
        assert!(l.raw.ends_with(" payload-unreadable"), "{}", l.raw);
        assert_eq!(l.status(), Some(200), "{}", l.raw);
    }
    let verdict = verdict_on(&daemon, &lines);
    assert_eq!(verdict["verdict"], "INCONCLUSIVE", "{verdict}");
    assert!(
        verdict["inconclusive"]
            .to_string()
            .contains("2 calls to IMDS not classified"),
        "{verdict}"
    );
    daemon.finish(&[&imds], &[]);
}

/// A call the send hooks do not see: no line of its own, but IMDS's answer is seen by the
/// response program on a connection with no traced send, and written as one
/// `IMDS answered a call it did not see traced` line naming the status and the caller's end
/// (the response path knows no process); the report on the log is INCONCLUSIVE with that
/// reason, never SAFE. `out` is hide_v1.py's output for `mode`.
fn assert_untraced_answer(daemon: &Daemon, mode: &str, out: &str) {
    assert_eq!(
        out.trim(),
        format!("{mode} 200"),
        "IMDS answered the v1 GET"
    );
    daemon.wait_lines(daemon_untraced, 1, std::time::Duration::from_secs(10));
    // A second line for the same connection would come right after the first.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let found = daemon.untraced_lines();
    // The line names what the response path knows: the status and both ends (the client
    // in the test's namespace connects from the IMDS address on its loopback).
    assert_eq!(found.len(), 1, "one line per connection: {found:?}");
    assert!(
        found[0].contains("(-> 200 to 169.254.169.254:")
            && found[0].contains(" from 169.254.169.254:80; receiving process unknown;"),
        "{}",
        found[0]
    );
    assert!(
        daemon.our_lines().is_empty(),
        "the {mode} GET is not traced as a call of its own (if it is now, this test must \
         say so)\n{}",
        daemon.dump()
    );
    // The report on the untraced line alone (other tests' calls are not this verdict's).
    let ours_path = daemon.log_path().with_extension("ours");
    let text: String = found.iter().map(|l| format!("{l}\n")).collect();
    fs::write(&ours_path, text).unwrap();
    let verdict = report_json(&ours_path)["verdicts"][0].clone();
    assert_eq!(verdict["verdict"], "INCONCLUSIVE", "{verdict}");
    assert_eq!(verdict["hop_limit_1"], "INCONCLUSIVE", "{verdict}");
    assert!(
        verdict["inconclusive"]
            .to_string()
            .contains("IMDS answered 1 call that was not traced"),
        "{verdict}"
    );
}

fn daemon_untraced(line: &str) -> bool {
    matches!(
        imds_snoop_line::TextLine::parse(line).map(|t| t.body),
        Some(imds_snoop_line::TextBody::Untraced { .. })
    )
}

/// The daemon's first `--response-timeout` (2 s by default) after start takes an answer
/// on an unknown connection for one to a call sent before it attached (not reported): the
/// hidden calls below come after it.
fn past_start_grace() {
    std::thread::sleep(std::time::Duration::from_millis(2500));
}

/// A v1 GET sent with TCP Fast Open and no cookie (`TCP_FASTOPEN_NO_COOKIE`,
/// `TCP_FASTOPEN_CONNECT`: unprivileged socket options) rides in the SYN. The tracepoint
/// (tp_btf/tcp_sendmsg_locked) fires only in the copy loop, which the data never enters,
/// so the call has no line of its own (the fentry/kprobe attaches see tcp_sendmsg's whole
/// msghdr and are not affected; forced to the tracepoint here). IMDS's answer is the
/// evidence.
#[test]
fn a_tcp_fast_open_v1_call_leaves_an_untraced_answer() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("fastopen");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&["--attach", "tracepoint"]);
    past_start_grace();
    let out = hide(&ns, &["fastopen"]);
    assert_untraced_answer(&daemon, "fastopen", &out);
    daemon.finish_with_untraced(&[&imds], &[]);
}

/// A v1 GET on a Multipath TCP socket (`socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)`,
/// unprivileged with the default `net.mptcp.enabled=1`, which each new network namespace
/// has: a kernel without MPTCP fails the socket call, and so this test). mptcp_sendmsg
/// puts the data on the subflow itself and never calls tcp_sendmsg or
/// tcp_sendmsg_locked, so no attach mode sees it, even when IMDS does not speak MPTCP and
/// the connection falls back to plain TCP. IMDS's answer, on the subflow, is the evidence.
#[test]
fn an_mptcp_v1_call_leaves_an_untraced_answer() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("mptcp");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    past_start_grace();
    let out = hide(&ns, &["mptcp"]);
    assert_untraced_answer(&daemon, "mptcp", &out);
    daemon.finish_with_untraced(&[&imds], &[]);
}
