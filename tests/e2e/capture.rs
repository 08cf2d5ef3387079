//! One IMDS request gives exactly one correctly classified, correctly attributed line; other
//! destinations give none; no token or credential ever reaches the log.
//!
//! Each test: its own namespace with a fake IMDS, its own daemon (`--attach auto`), real
//! clients, then an exact count of the lines the test's own clients caused.

use std::{
    collections::BTreeSet,
    fs::File,
    process::Command,
    time::{Duration, Instant},
};

use crate::harness::{
    Client, Daemon, FakeImds, FakeOpts, IMDS_V4, IMDS_V6, LINE_TIMEOUT, LogLine, Netns,
    OTHER_LINK_LOCAL, OTHER_PRIVATE, OTHER_V6, botocore_credentials, client_script, curl, lines_of,
    pids, require_root, run_client, serial, show,
};

const ATTACH_AUTO: [&str; 2] = ["--attach", "auto"];
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const REDACTED: &str = "**token redacted**";

fn imds_url(path: &str) -> String {
    format!("http://{IMDS_V4}{path}")
}

/// Panics with `what` and the daemon's log unless `ok`.
fn check(daemon: &Daemon, ok: bool, what: &str) {
    assert!(ok, "{what}\n{}", daemon.dump());
}

/// The single line among `lines` that `pred` picks; panics (with the log) on none or many.
fn only<'a>(
    daemon: &Daemon,
    lines: &'a [LogLine],
    what: &str,
    pred: impl Fn(&LogLine) -> bool,
) -> &'a LogLine {
    let found: Vec<&LogLine> = lines.iter().filter(|l| pred(l)).collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected exactly one line for {what}, found {}:\n{}\n{}",
            found.len(),
            found
                .iter()
                .map(|l| l.raw.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            daemon.dump()
        ),
    }
}

/// A GET with curl's default headers, without a token.
fn assert_curl_v1(daemon: &Daemon, line: &LogLine, pid: u32, url: &str, path: &str) {
    check(
        daemon,
        line.is_v1(),
        "a GET without a token must be `[WARNING] imdsv1(!)`",
    );
    check(
        daemon,
        line.pid == pid,
        &format!("the line must name curl's pid {pid}"),
    );
    check(
        daemon,
        line.comm == "curl",
        "the caller's comm must be curl",
    );
    check(
        daemon,
        line.argv.contains(url),
        &format!("argv must hold the URL {url}"),
    );
    check(
        daemon,
        line.has(&format!("get {path} http/1.1")),
        &format!("details must hold the request line for {path}"),
    );
    check(
        daemon,
        line.has("user-agent: curl/"),
        "details must hold curl's user-agent",
    );
}

#[test]
fn curl_v1_get_is_one_warning_line() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("curl-v1");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&ATTACH_AUTO);

    let url = imds_url("/latest/meta-data/");
    let client = curl(&ns, &[&url]);

    let lines = daemon.expect_our_lines(1, "one curl v1 GET");
    assert_curl_v1(&daemon, &lines[0], client.pid, &url, "/latest/meta-data/");
    check(
        &daemon,
        lines[0].has(&format!("host: {IMDS_V4}")),
        "details must hold the host",
    );
    daemon.finish(&[&fake], &[]);
}

#[test]
fn curl_v2_token_and_get_are_two_info_lines_without_the_token() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("curl-v2");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    // --stdout too: the token must not reach that copy of the lines either.
    let daemon = Daemon::start(&["--attach", "auto", "--stdout"]);

    let put = curl(
        &ns,
        &[
            "-X",
            "PUT",
            "-H",
            &format!("{TTL_HEADER}: 300"),
            &imds_url("/latest/api/token"),
        ],
    );
    let token = put.stdout.trim().to_owned();
    assert!(
        fake.tokens().contains(&token),
        "curl did not print a token the fake issued: {put:?}"
    );
    // The token is in this curl's argv as well as in its header: both must be redacted.
    let get = curl(
        &ns,
        &[
            "-H",
            &format!("{TOKEN_HEADER}: {token}"),
            &imds_url("/latest/meta-data/instance-id"),
        ],
    );

    let lines = daemon.expect_our_lines(2, "curl token PUT + v2 GET");
    let put_line = only(&daemon, &lines, "the token PUT", |l| l.pid == put.pid);
    check(
        &daemon,
        put_line.is_token_put(),
        "the token PUT must be `[INFO] imdsv2(token)`",
    );
    check(
        &daemon,
        put_line.has("put /latest/api/token http/1.1"),
        "PUT request line",
    );
    check(
        &daemon,
        put_line.has(&format!("{TTL_HEADER}: 300")),
        "the PUT's ttl header must be logged",
    );
    let get_line = only(&daemon, &lines, "the v2 GET", |l| l.pid == get.pid);
    check(
        &daemon,
        get_line.is_v2(),
        "a GET with a token must be `[INFO] imdsv2`",
    );
    check(
        &daemon,
        get_line.comm == "curl",
        "the caller's comm must be curl",
    );
    check(
        &daemon,
        get_line.has("get /latest/meta-data/instance-id"),
        "GET request line",
    );
    check(
        &daemon,
        get_line.has(REDACTED),
        "the token header must read **token redacted**",
    );
    check(
        &daemon,
        !daemon.stdout().is_empty(),
        "--stdout must print the lines",
    );
    daemon.finish(&[&fake], &[&token]);
}

#[test]
fn curl_v2_in_a_shell_names_the_shell_as_parent() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("sh-v2");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&ATTACH_AUTO);

    let script = format!(
        "T=$(curl -sSf -m 5 -X PUT -H '{TTL_HEADER}: 60' {put}) && \
         curl -sSf -m 5 -H \"{TOKEN_HEADER}: $T\" {get} >/dev/null && echo \"$T\"",
        put = imds_url("/latest/api/token"),
        get = imds_url("/latest/meta-data/placement/region"),
    );
    let shell = run_client(&ns, ns.command("sh").args(["-c", &script]));
    let token = shell.stdout.trim().to_owned();

    let lines = daemon.expect_our_lines(2, "sh -c: token PUT + v2 GET");
    only(&daemon, &lines, "the token PUT", LogLine::is_token_put);
    only(&daemon, &lines, "the v2 GET", LogLine::is_v2);
    for line in &lines {
        check(&daemon, line.comm == "curl", "each line's caller is a curl");
        check(
            &daemon,
            line.pid != shell.pid,
            "the caller is curl, not the shell",
        );
        check(
            &daemon,
            line.chain.get(1) == Some(&shell.pid),
            &format!("curl's parent must be the shell (pid {})", shell.pid),
        );
        check(
            &daemon,
            line.chain.last() == Some(&1),
            "the ancestry must end at pid 1",
        );
    }
    daemon.finish(&[&fake], &[&token]);
}

/// Variables that would point botocore elsewhere or switch IMDS off.

#[test]
fn botocore_credentials_are_v2_lines_without_secrets() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("botocore");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&ATTACH_AUTO);

    let boto = botocore_credentials(&ns, 2);
    assert_eq!(
        boto.stdout.trim(),
        format!("test-role {}", fake.credential("AccessKeyId")),
        "botocore did not get the fake's credentials; fake log:\n{}",
        fake.stderr()
    );

    // PUT token, GET the role name, GET the role's credentials.
    let lines = daemon.expect_our_lines(3, "botocore credential fetch");
    only(
        &daemon,
        &lines,
        "botocore's token PUT",
        LogLine::is_token_put,
    );
    only(&daemon, &lines, "the role-name GET", |l| {
        l.is_v2() && l.has("get /latest/meta-data/iam/security-credentials/ http/1.1")
    });
    only(&daemon, &lines, "the credentials GET", |l| {
        l.is_v2() && l.has("get /latest/meta-data/iam/security-credentials/test-role http/1.1")
    });
    for line in &lines {
        check(
            &daemon,
            line.pid == boto.pid,
            "every line must name the python pid",
        );
        check(
            &daemon,
            line.has("user-agent: botocore/"),
            "botocore's user-agent",
        );
        check(&daemon, !line.is_v1(), "botocore uses v2: no imdsv1 line");
    }
    daemon.finish(&[&fake], &[]);
}

#[test]
fn ipv6_endpoint_v1_get_is_logged() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("ipv6");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&ATTACH_AUTO);

    let url = format!("http://[{IMDS_V6}]/latest/meta-data/");
    let client = curl(&ns, &["-g", &url]);

    let lines = daemon.expect_our_lines(1, "one curl v1 GET over IPv6");
    assert_curl_v1(&daemon, &lines[0], client.pid, &url, "/latest/meta-data/");
    check(
        &daemon,
        lines[0].has(&format!("host: [{IMDS_V6}]")),
        "the v6 host header",
    );
    daemon.finish(&[&fake], &[]);
}

#[test]
fn split_sends_sendmsg_and_writev_are_one_line_each() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("split");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&ATTACH_AUTO);

    let client = run_client(
        &ns,
        ns.command("python3")
            .arg(client_script("split_send.py"))
            .arg(IMDS_V4),
    );
    let token = client.stdout.trim().to_owned();

    let lines = daemon.expect_our_lines(4, "split_send.py's four requests");
    let by_path = |path: &str| {
        only(&daemon, &lines, path, |l| {
            l.has(&format!(" {path} http/1.1"))
        })
    };
    let put = by_path("/latest/api/token");
    check(
        &daemon,
        put.is_token_put(),
        "the token PUT must be imdsv2(token)",
    );
    let split = by_path("/latest/meta-data/instance-id");
    check(
        &daemon,
        split.is_v1(),
        "request line and headers in two sends: imdsv1(!)",
    );
    check(
        &daemon,
        split.has("user-agent: split-send-test/1.0"),
        "headers of the second send",
    );
    let sendmsg = by_path("/latest/meta-data/placement/region");
    check(
        &daemon,
        sendmsg.is_v2(),
        "sendmsg with the token header in the last buffer must be imdsv2, not v1",
    );
    check(
        &daemon,
        sendmsg.has(REDACTED),
        "the token header must be redacted",
    );
    let writev = by_path("/latest/meta-data/local-ipv4");
    check(&daemon, writev.is_v1(), "writev without a token: imdsv1(!)");
    check(
        &daemon,
        writev.has("user-agent: split-send-test/1.0"),
        "headers of the last buffer",
    );
    for line in &lines {
        check(
            &daemon,
            line.pid == client.pid,
            "every line must name the python pid",
        );
    }
    daemon.finish(&[&fake], &[&token]);
}

#[test]
fn other_destinations_are_not_logged() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("other-dst");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let others = FakeImds::start(
        &ns,
        FakeOpts {
            binds: vec![OTHER_LINK_LOCAL, OTHER_PRIVATE, OTHER_V6],
            ..FakeOpts::default()
        },
    );
    let other_port = FakeImds::start(
        &ns,
        FakeOpts {
            port: 8080,
            ..FakeOpts::default()
        },
    );
    let daemon = Daemon::start(&ATTACH_AUTO);

    // Real, successful requests (curl -f) to every non-IMDS destination...
    for url in [
        format!("http://{OTHER_LINK_LOCAL}/latest/meta-data/instance-id"),
        format!("http://{OTHER_PRIVATE}/latest/meta-data/instance-id"),
        format!("http://[{OTHER_V6}]/latest/meta-data/instance-id"),
        format!("http://{IMDS_V4}:8080/latest/meta-data/instance-id"),
        format!("http://[{IMDS_V6}]:8080/latest/meta-data/instance-id"),
    ] {
        curl(&ns, &["-g", &url]);
    }
    // ...then one to IMDS: once its line is there, any line for the others would be too.
    let marker = curl(&ns, &[&imds_url("/latest/meta-data/hostname")]);

    let lines = daemon.expect_our_lines(1, "only the IMDS marker request");
    check(
        &daemon,
        lines[0].pid == marker.pid && lines[0].has("/latest/meta-data/hostname"),
        "the only line must be the marker request to 169.254.169.254:80",
    );
    daemon.finish(&[&fake, &others, &other_port], &[]);
}

#[test]
fn target_flag_adds_a_destination() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("target");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let others = FakeImds::start(
        &ns,
        FakeOpts {
            binds: vec![OTHER_LINK_LOCAL, OTHER_PRIVATE],
            ..FakeOpts::default()
        },
    );
    let target = format!("{OTHER_LINK_LOCAL}:80");
    let daemon = Daemon::start(&["--attach", "auto", "--target", &target]);

    let extra_url = format!("http://{OTHER_LINK_LOCAL}/latest/meta-data/instance-id");
    let extra = curl(&ns, &[&extra_url]);
    curl(
        &ns,
        &[&format!(
            "http://{OTHER_PRIVATE}/latest/meta-data/instance-id"
        )],
    );
    let imds = curl(&ns, &[&imds_url("/latest/meta-data/")]);

    let lines = daemon.expect_our_lines(2, "--target address and IMDS, not 10.255.0.1");
    let extra_line = only(&daemon, &lines, "the --target request", |l| {
        l.pid == extra.pid
    });
    assert_curl_v1(
        &daemon,
        extra_line,
        extra.pid,
        &extra_url,
        "/latest/meta-data/instance-id",
    );
    check(
        &daemon,
        extra_line.has(&format!("host: {OTHER_LINK_LOCAL}")),
        "the --target request's host header",
    );
    only(&daemon, &lines, "the IMDS request", |l| l.pid == imds.pid);
    daemon.finish(&[&fake, &others], &[]);
}

#[test]
fn fifty_concurrent_curls_give_fifty_lines() {
    const N: usize = 50;
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("burst");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&ATTACH_AUTO);

    // Each client blocks on a shared lock of the gate file until we drop our exclusive
    // lock, then exec's curl in place (so its pid is the one we spawned). `flock -w`
    // bounds the wait.
    let gate_path = ns.dir().file("gate");
    let gate = File::create(&gate_path).expect("creating the gate file");
    gate.lock().expect("locking the gate file");
    let url = imds_url("/latest/meta-data/ami-id");
    let script = r#"exec 9<"$1" && flock -s -w 20 9 && exec curl -sSf --max-time 10 "$2""#;
    let clients: Vec<Client> = (0..N)
        .map(|_| {
            let mut cmd: Command = ns.command("sh");
            cmd.args(["-c", script, "sh"]).arg(&gate_path).arg(&url);
            Client::spawn(&ns, &mut cmd)
        })
        .collect();
    gate.unlock().expect("opening the gate");
    let expected: BTreeSet<u32> = clients.iter().map(Client::pid).collect();
    for client in clients {
        client.wait_ok();
    }

    let lines = daemon.expect_our_lines(N, "50 concurrent curl v1 GETs");
    check(
        &daemon,
        pids(&lines) == expected,
        &format!("one line per curl pid; lines:\n{}", show(&lines)),
    );
    for pid in &expected {
        let mine = lines_of(&lines, *pid);
        check(
            &daemon,
            mine.len() == 1,
            &format!("curl pid {pid} must have exactly one line"),
        );
        assert_curl_v1(&daemon, mine[0], *pid, &url, "/latest/meta-data/ami-id");
    }
    daemon.finish(&[&fake], &[]);
}

/// Exec, fork and exit records do not wake the daemon (a wake-up from those hooks cost
/// ~5 µs on every process of the node: README, Cost), so a new process's first records sit
/// in the ring unwoken when its send comes: the send and response records must wake the
/// daemon themselves. Were they left to the daemon's 1 s tick, a line would come a uniformly
/// spread 0-1 s after its call, and 8 of 10 within 200 ms would happen with probability
/// below 1e-4; woken, each comes within the 2 ms coalescing pause plus the writer's and
/// this poll's (20 ms) delays.
#[test]
fn a_new_process_call_is_logged_without_waiting_for_the_tick() {
    const CALLS: usize = 10;
    const PROMPT: Duration = Duration::from_millis(200);
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("prompt");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&ATTACH_AUTO);

    let url = imds_url("/latest/meta-data/");
    let mut delays = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let client = curl(&ns, &[&url]);
        let done = Instant::now();
        let pid = client.pid;
        daemon.wait_lines(
            |l| LogLine::parse(l).is_some_and(|l| l.is_ours() && l.pid == pid),
            1,
            LINE_TIMEOUT,
        );
        delays.push(done.elapsed());
    }
    let prompt = delays.iter().filter(|d| **d <= PROMPT).count();
    check(
        &daemon,
        prompt >= CALLS - 2,
        &format!(
            "at least {} of {CALLS} lines within {PROMPT:?} of their curl's exit; delays: \
             {delays:?}",
            CALLS - 2
        ),
    );
    let lines = daemon.expect_our_lines(CALLS, "ten curl v1 GETs");
    for line in &lines {
        check(&daemon, line.comm == "curl", "each line's caller is curl");
    }
    daemon.finish(&[&fake], &[]);
}
