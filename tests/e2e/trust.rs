//! A local user must not be able to crash, fool or make the tracer leak (issue 16). Each
//! attack runs as an unprivileged caller (uid/gid 65534, through `setpriv`), as an
//! attacker on the node would, in the test's namespace with the fake IMDS.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, chown},
    path::{Path, PathBuf},
    process::Command,
};

use crate::harness::{Daemon, FakeImds, FakeOpts, IMDS_V4, Netns, curl, require_root, serial};

/// nobody / nogroup.
const NOBODY: &str = "65534";

/// `program ARGS` as uid/gid 65534 inside `ns` (setpriv execs in place: the pid is the
/// program's).
pub(crate) fn as_nobody(ns: &Netns, program: &str) -> Command {
    let mut cmd = ns.command("setpriv");
    cmd.args([
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        "--",
        program,
    ]);
    cmd
}

/// A directory the unprivileged caller can read, owned by it, removed on drop.
struct Playground(PathBuf);

impl Playground {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("imds-trust-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        chown(&dir, Some(65534), Some(65534)).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` to completion; panics with its output unless it exits 0.
pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The measured crash: `cp /bin/bash /tmp/containerd-shim-x` and, as nobody, call IMDS
/// from under it with a non-ASCII `-id` (the text line sliced it at byte 12 and the daemon
/// panicked), then with a path `-id` leading to a config.json the user wrote (it named a
/// pod of the user's choice). The daemon must stay up, log each call with no container or
/// pod, and log the next call.
#[test]
fn fake_shim_neither_crashes_nor_forges_a_pod() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("fake-shim");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    let play = Playground::new("shim");
    let shim = play.path().join("containerd-shim-x");
    fs::copy("/bin/bash", &shim).unwrap();
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
    // The pod the attacker would like to be: a config.json of its own, where `-id
    // <path>` joined to the runtime's state directory used to lead.
    let evil = play.path().join("evil");
    fs::create_dir_all(&evil).unwrap();
    fs::write(
        evil.join("config.json"),
        br#"{"annotations":{"io.kubernetes.cri.sandbox-name":"forged","io.kubernetes.cri.sandbox-namespace":"kube-system","io.kubernetes.cri.container-name":"forged"}}"#,
    )
    .unwrap();
    chown(&evil, Some(65534), Some(65534)).unwrap();
    chown(evil.join("config.json"), Some(65534), Some(65534)).unwrap();
    let url = format!("http://{IMDS_V4}/latest/meta-data/");
    let traversal = format!("../../../../../../..{}", evil.display());
    for id in ["aéééééééééé", traversal.as_str()] {
        run_ok(as_nobody(&ns, shim.to_str().unwrap()).args([
            "-c",
            // Two commands: bash forks for curl (with one it would exec in place).
            &format!("curl -s -o /dev/null --max-time 5 {url}; exit 0"),
            "x",
            "-namespace",
            "k8s.io",
            "-id",
            id,
            "-address",
            "/run/containerd/containerd.sock",
        ]));
    }
    let lines = daemon.expect_our_lines(2, "two calls from under the fake shim");
    for l in &lines {
        assert!(l.raw.contains(":containerd-shim argv:"), "{}", l.raw);
        assert!(!l.raw.contains(" container:"), "a container: {}", l.raw);
        assert!(!l.raw.contains("forged"), "{}", l.raw);
        assert!(!l.raw.contains(" pod:"), "a pod: {}", l.raw);
    }
    // Still up, and logging.
    curl(&ns, &[&format!("{url}?after")]);
    let lines = daemon.expect_our_lines(3, "the call after the attack");
    assert!(lines[2].raw.contains("?after"), "{}", lines[2].raw);
    daemon.finish(&[&imds], &[]);
}

/// A token passed bare on a command line (`python3 fetch.py <token>`): its request's header
/// is redacted by name, and the value seen there is redacted from the caller's argv too.
/// The fake IMDS's tokens appear in no output (`finish` checks the log, stdout, stderr).
#[test]
fn bare_argv_token_is_absent_from_every_output() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("bare-token");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&["--stdout"]);
    let fetch = "import sys, urllib.request as u\n\
                 r = u.Request('http://169.254.169.254/latest/meta-data/instance-id', \
                 headers={'X-aws-ec2-metadata-token': sys.argv[1]})\n\
                 print(u.urlopen(r, timeout=5).read().decode())\n";
    let script = format!(
        "T=$(curl -sS -f --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
         http://{IMDS_V4}/latest/api/token) && python3 -c \"$0\" \"$T\" && python3 -c \"$0\" \
         \"$T\" --token=\"$T\""
    );
    run_ok(as_nobody(&ns, "sh").args(["-c", &script, fetch]));
    let lines = daemon.expect_our_lines(3, "token PUT and two v2 GETs");
    let tokens = imds.tokens();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    for l in lines.iter().filter(|l| l.is_v2()) {
        assert!(l.argv.starts_with("python3 -c "), "{}", l.raw);
        assert!(l.argv.contains("**token redacted**"), "{}", l.raw);
    }
    for l in &lines {
        assert!(!l.raw.contains(&tokens[0]), "{}", l.raw);
    }
    daemon.finish(&[&imds], &[]);
}

/// A bash subshell writes the request on a connection its parent opened and exits at once:
/// the caller was forked without exec and is gone when its line is written. Its argv is its
/// parent's (the kernel's fork event), never `[exited] bash`.
#[test]
fn forked_without_exec_caller_keeps_its_parents_argv() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("fork");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    const N: usize = 8;
    let script = format!(
        "for i in $(seq {N}); do exec 5<>/dev/tcp/{IMDS_V4}/80; \
         ( printf 'GET /latest/meta-data/?fork=%s HTTP/1.1\\r\\nHost: {IMDS_V4}\\r\\nConnection: close\\r\\n\\r\\n' $i >&5 ); \
         cat <&5 >/dev/null; exec 5<&-; done"
    );
    run_ok(as_nobody(&ns, "bash").args(["-c", &script]));
    let lines = daemon.expect_our_lines(N, "one line per subshell's request");
    for l in &lines {
        assert_eq!(l.comm, "bash", "{}", l.raw);
        assert!(
            l.argv.starts_with("bash -c for i in $(seq"),
            "the parent's argv: {}",
            l.raw
        );
    }
    daemon.finish(&[&imds], &[]);
}

/// A caller whose ancestor's argv holds a newline, an ANSI escape and the line's own
/// labels (a whole forged line naming another pod): still one line, and the line
/// contract's reader finds the caller, its chain and its origin where the daemon put them.
#[test]
fn forged_argv_stays_one_line_with_its_fields() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("forge");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    let forged = "x\n[2026-01-01 00:00:00,000] [INFO] imdsv2 (pid:1:init argv:/sbin/init) \
                  req details: get / http/1.1, -> 200 container:abcdefabcdef \
                  pod:kube-system/forged uid:0 dst:169.254.169.254:80\r\x1b[2J";
    let url = format!("http://{IMDS_V4}/latest/meta-data/?forge");
    let shell = as_nobody(&ns, "bash")
        .args([
            "-c",
            &format!("curl -s -o /dev/null --max-time 5 -A 'ua -> 200 pod:kube-system/forged' '{url}'; exit 0"),
            forged,
        ])
        .spawn()
        .unwrap();
    let out = shell.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines = daemon.expect_our_lines(1, "one call, one line");
    let l = &lines[0];
    assert_eq!(l.comm, "curl", "{}", l.raw);
    assert!(l.argv.starts_with("curl -s -o /dev/null"), "{}", l.raw);
    assert_eq!(
        l.chain.get(2),
        Some(&std::process::id()),
        "curl, bash, the test: {}",
        l.raw
    );
    assert!(!l.raw.contains(['\n', '\r', '\x1b']), "{}", l.raw);
    assert!(!l.raw.contains("pod:kube-system"), "{}", l.raw);
    let fields = imds_snoop_test_support::line::text::split_details(&l.details);
    assert_eq!(fields.status, Some(200), "{}", l.raw);
    assert!(
        matches!(
            fields.origin,
            imds_snoop_test_support::line::TextOrigin::Host { .. }
        ),
        "{}",
        l.raw
    );
    daemon.finish(&[&imds], &[]);
}
