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

/// OPEN FINDING (no fix here): a v1 GET sent with TCP Fast Open and no cookie
/// (`TCP_FASTOPEN_NO_COOKIE`, `TCP_FASTOPEN_CONNECT`: unprivileged socket options) rides
/// in the SYN. The tracepoint (tp_btf/tcp_sendmsg_locked) fires only in the copy loop,
/// which the data never enters, so no line at all is written and IMDS answers `200`. The
/// fentry/kprobe attaches see tcp_sendmsg's whole msghdr and are not affected. A fix needs
/// another capture point (e.g. a cgroup_skb egress program reading the SYN's payload).
#[test]
#[ignore = "open finding: a TCP Fast Open request is not traced with the tracepoint attach"]
fn a_tcp_fast_open_v1_call_is_traced() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("fastopen");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    let out = hide(&ns, &["fastopen"]);
    assert_eq!(out.trim(), "fastopen 200", "IMDS answered the v1 GET");
    let lines = daemon.expect_our_lines(1, "the Fast Open GET");
    assert!(lines[0].is_v1(), "{}", lines[0].raw);
    assert!(
        lines[0].raw.contains("?hidden-fastopen"),
        "{}",
        lines[0].raw
    );
    daemon.finish(&[&imds], &[]);
}

/// OPEN FINDING (no fix here): a v1 GET on a Multipath TCP socket
/// (`socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)`, unprivileged with the default
/// `net.mptcp.enabled=1`). mptcp_sendmsg puts the data on the subflow itself and never calls
/// tcp_sendmsg or tcp_sendmsg_locked, so no attach mode (fentry, kprobe, tracepoint) sees
/// it, even when IMDS does not speak MPTCP and the connection falls back to plain TCP: no
/// line, and IMDS answers `200`. A fix needs a capture point below the socket layer (a
/// cgroup_skb egress program reading segments to IMDS), or at least a line for each IMDS
/// response that matches no traced call (the daemon counts them, `responses_unmatched`).
#[test]
#[ignore = "open finding: a request on an MPTCP socket is not traced in any attach mode"]
fn an_mptcp_v1_call_is_traced() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("mptcp");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    let out = hide(&ns, &["mptcp"]);
    assert_eq!(out.trim(), "mptcp 200", "IMDS answered the v1 GET");
    let lines = daemon.expect_our_lines(1, "the MPTCP GET");
    assert!(lines[0].is_v1(), "{}", lines[0].raw);
    assert!(lines[0].raw.contains("?hidden-mptcp"), "{}", lines[0].raw);
    daemon.finish(&[&imds], &[]);
}

/// OPEN FINDING (no fix here): a token handed to a script on its command line
/// (`sh fetch.sh <token>`), whose first call is a v1 call and whose second carries the token
/// header. The first line is written before the token is seen in any header, so the
/// script's argv (an ancestor of the first call) carries the token in clear. The token is
/// known earlier, in the token PUT's response body, which the response program sees but
/// does not read: remembering the token there (its first 20 bytes) would close this.
#[test]
#[ignore = "open finding: a token in argv leaks from lines written before it is seen in a header"]
fn a_token_in_argv_before_its_first_header_is_absent() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("argv-first");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    let script = "T=$(curl -sS -f --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
        http://169.254.169.254/latest/api/token) && sh -c \"$0\" fetch \"$T\"";
    let fetch = "curl -s -o /dev/null --max-time 5 http://169.254.169.254/latest/meta-data/?first; \
        curl -s -o /dev/null --max-time 5 -H \"X-aws-ec2-metadata-token: $1\" \
        http://169.254.169.254/latest/meta-data/?second";
    run_ok(as_nobody(&ns, "sh").args(["-c", script, fetch]));
    let lines = daemon.expect_our_lines(3, "the token PUT, the v1 GET, the v2 GET");
    let tokens = imds.tokens();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    for l in &lines {
        assert!(!l.raw.contains(&tokens[0]), "the token in clear: {}", l.raw);
    }
    daemon.finish(&[&imds], &[]);
}
