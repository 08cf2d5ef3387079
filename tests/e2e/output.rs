//! The trace log as users consume it: JSON lines, size rotation under a burst, SIGHUP after
//! an external rename, and a full disk that loses lines (counted) without killing the daemon.

use std::{collections::BTreeMap, fs, path::Path, process::Command};

use crate::harness::{
    Daemon, FakeImds, FakeOpts, IMDS_V4, LINE_TIMEOUT, Netns, curl, report_json, require_root,
    run_client, serial,
};

/// `n` keep-alive GETs of /latest/meta-data/seq/<i> from one python3 client in `ns`.
fn sequential_gets(ns: &Netns, n: usize) {
    let script = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('{IMDS_V4}', 80, timeout=5)\n\
         for i in range({n}):\n\
         \x20   c.request('GET', '/latest/meta-data/seq/%d' % i)\n\
         \x20   c.getresponse().read()\n"
    );
    run_client(ns, ns.command("python3").args(["-c", &script]));
}

/// A GET of `path` with curl, whatever the fake answers (it 404s unknown paths).
fn get(ns: &Netns, path: &str) {
    run_client(
        ns,
        ns.command("curl")
            .args(["-s", "-o", "/dev/null", "--max-time", "5"])
            .arg(format!("http://{IMDS_V4}{path}")),
    );
}

/// The `seq/<i>` numbers in `text`'s lines, with how often each appears.
fn seq_counts<'a>(texts: impl Iterator<Item = &'a str>) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for line in texts.flat_map(str::lines) {
        // The request, not the client's argv (which holds the path pattern too).
        let request = line.split(" req details: ").nth(1).unwrap_or_default();
        if let Some(rest) = request.split("/latest/meta-data/seq/").nth(1) {
            let n: usize = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
                .unwrap_or_else(|| panic!("torn line: {line}"));
            *counts.entry(n).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn json_lines_follow_the_documented_schema() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("json");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&["--format", "json", "--node-name", "node-a"]);
    let v1 = curl(
        &ns,
        &[&format!("http://{IMDS_V4}/latest/meta-data/instance-id")],
    );
    // The call's line, not the daemon's start marker before it (checked below).
    let lines = daemon.wait_lines(
        |l| l.contains("\"node-a\"") && l.contains("/latest/meta-data/instance-id"),
        1,
        LINE_TIMEOUT,
    );
    let v: serde_json::Value =
        serde_json::from_str(&lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]));
    assert_eq!(v["schema"], 1, "{v}");
    assert_eq!(v["class"], "v1", "{v}");
    assert_eq!(v["level"], "WARNING", "{v}");
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(v["path"], "/latest/meta-data/instance-id", "{v}");
    assert_eq!(v["caller"]["pid"], v1.pid, "{v}");
    assert_eq!(v["caller"]["comm"], "curl", "{v}");
    assert_eq!(v["destination"], "169.254.169.254:80", "{v}");
    assert!(
        v["ancestors"].as_array().is_some_and(|a| !a.is_empty()),
        "{v}"
    );
    assert!(
        v["timestamp"].as_str().is_some_and(|t| t.contains('T')),
        "{v}"
    );
    // And a second, independent parser: Python's.
    let out = Command::new("python3")
        .args(["-m", "json.tool", "--json-lines"])
        .arg(daemon.log_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "python3 -m json.tool: {out:?}");
    // The log opens with the daemon's start marker, a JSON line of its own class.
    let text = fs::read_to_string(daemon.log_path()).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("first line not JSON ({e}): {text}"));
    assert_eq!(first["class"], "started", "{first}");
    assert_eq!(first["node"], "node-a", "{first}");
    daemon.finish(&[&fake], &[]);
}

#[test]
fn rotation_under_a_burst_keeps_every_line_once() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("rotate");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let mut daemon = Daemon::start(&["--max-bytes", "16384", "--backups", "100"]);
    const N: usize = 400;
    sequential_gets(&ns, N);
    daemon.wait_lines(|l| l.contains("/seq/"), 1, LINE_TIMEOUT);
    daemon.stop();

    let log = daemon.log_path().to_owned();
    let mut texts = vec![fs::read_to_string(&log).unwrap_or_default()];
    for i in 1..=100 {
        let Ok(t) = fs::read_to_string(format!("{}.{i}", log.display())) else {
            break;
        };
        assert!(
            t.len() <= 16384,
            "{}.{i} is {} bytes",
            log.display(),
            t.len()
        );
        texts.push(t);
    }
    assert!(
        texts.len() > 5,
        "the burst should have rotated several times"
    );
    let counts = seq_counts(texts.iter().map(String::as_str));
    let missing: Vec<usize> = (0..N).filter(|i| !counts.contains_key(i)).collect();
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "missing {missing:?}, repeated {twice:?}"
    );
    daemon.assert_clean(&[&fake], &[]);
}

#[test]
fn sighup_reopens_after_an_external_rename() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("hup");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let daemon = Daemon::start(&[]);
    get(&ns, "/latest/meta-data/before");
    daemon.wait_lines(|l| l.contains("/before"), 1, LINE_TIMEOUT);
    let moved = daemon.log_path().with_extension("rotated");
    fs::rename(daemon.log_path(), &moved).unwrap();
    // SAFETY: our own child.
    unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGHUP) };
    get(&ns, "/latest/meta-data/after");
    daemon.wait_lines(|l| l.contains("/after"), 1, LINE_TIMEOUT);
    let old = fs::read_to_string(&moved).unwrap();
    assert!(old.contains("/before") && !old.contains("/after"), "{old}");
    daemon.finish(&[&fake], &[]);
}

/// A 256 KiB tmpfs holds the log. Filled up, lines are lost (and counted), the daemon lives
/// on, and once space is back new lines are written whole.
#[test]
fn full_disk_loses_counted_lines_and_recovers() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("full");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let mount = ns.dir().path().join("tmpfs");
    let _tmpfs = Tmpfs::mount(&mount, "256k");
    let log = mount.join("imds-trace.log");
    let mut daemon = Daemon::start_logging_to(Some(&log), &[]);

    let filler = mount.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .output();
    // The log's last page still has room for a few lines (the start marker opened it), so
    // send more than fit: some are written, the rest lost, and every one is accounted for.
    const WHILE_FULL: usize = 12;
    for i in 0..WHILE_FULL {
        get(&ns, &format!("/latest/meta-data/while-full/{i}"));
    }
    // Give the writer time to try (and fail), then make room.
    std::thread::sleep(std::time::Duration::from_millis(500));
    fs::remove_file(&filler).unwrap();
    get(&ns, "/latest/meta-data/after-room");
    daemon.wait_lines(|l| l.contains("/after-room"), 1, LINE_TIMEOUT);
    daemon.stop();

    let text = fs::read_to_string(&log).unwrap();
    for line in text.lines() {
        let marker = (line.contains("imds-snoop started (")
            || line.contains("imds-snoop stopped ("))
            && line.ends_with(')');
        let whole = line.contains(" dst:")
            || line.contains("imds-snoop dropped")
            || line.contains("imds-snoop lost")
            || (line.contains("imds-snoop saw a reply dropped at the hop limit (")
                && line.ends_with(')'))
            || marker;
        assert!(line.starts_with('[') && whole, "torn line: {line:?}");
    }
    // Once the disk takes lines again, the log says how many were lost: with the ones
    // written before the page filled, that is every call made while full.
    let lost: usize = text
        .lines()
        .filter_map(|l| l.split_once("log write failed ")?.1.split_once(')'))
        .filter_map(|(n, _)| n.parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no 'log write failed N' total in the log:\n{text}"));
    let written = text.lines().filter(|l| l.contains("/while-full/")).count();
    assert!(
        lost >= 1,
        "nothing was lost while the disk was full:\n{text}"
    );
    assert_eq!(
        written + lost,
        WHILE_FULL,
        "{written} written + {lost} counted lost != {WHILE_FULL} calls made while full:\n{text}"
    );
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("cannot write trace log"),
        "the daemon warns when it cannot write:\n{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("detached") && !l.contains("lost_io=0")),
        "the lost line is counted at exit:\n{stderr}"
    );
    daemon.assert_clean(&[&fake], &[]);
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(at: &'a Path, size: &str) -> Self {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Self(at)
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).output();
    }
}

/// `imds-snoop report` over logs this test produced: curl's v2 calls alone make the node
/// SAFE; one more v1 call makes it NOT SAFE, with curl named as the v1 caller.
#[test]
fn report_names_the_v1_callers_and_gives_a_verdict() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("report");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let mut daemon = Daemon::start(&[]);
    // v2 only first: token PUT and a GET with the token.
    let v2 = format!(
        "T=$(curl -s -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://{IMDS_V4}/latest/api/token) \
         && curl -s -m 5 -o /dev/null -H \"X-aws-ec2-metadata-token: $T\" http://{IMDS_V4}/latest/meta-data/instance-id"
    );
    run_client(&ns, ns.command("sh").args(["-c", &v2]));
    daemon.wait_lines(|l| l.contains("] imdsv2 (pid:"), 1, LINE_TIMEOUT);
    let v2_only = daemon.log_path().with_extension("v2only");
    fs::copy(daemon.log_path(), &v2_only).unwrap();
    get(&ns, "/latest/meta-data/ami-id");
    daemon.wait_lines(|l| l.contains("/ami-id"), 1, LINE_TIMEOUT);
    daemon.stop();

    let report = report_json;
    let all = report(daemon.log_path());
    let verdict = &all["verdicts"][0];
    assert_eq!(verdict["imdsv2_required_safe"], false, "{all}");
    assert!(
        verdict["v1_callers"].to_string().contains("curl"),
        "curl is named as the v1 caller: {all}"
    );
    let curl = all["callers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["process"] == "curl")
        .unwrap_or_else(|| panic!("no curl caller: {all}"));
    assert_eq!(curl["v1"], 1, "{all}");
    assert_eq!(curl["v2"], 1, "{all}");
    assert_eq!(curl["token"], 1, "{all}");

    let safe = report(&v2_only);
    assert_eq!(safe["verdicts"][0]["imdsv2_required_safe"], true, "{safe}");
    daemon.assert_clean(&[&fake], &[]);
}
