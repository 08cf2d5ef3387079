//! `--metrics-addr`: the endpoint a real Prometheus parser reads agrees with the trace log,
//! and a port that cannot be bound stops start-up before anything is attached.
//!
//! The daemon listens on 127.0.0.1 in the machine's namespace (where it runs); the scrape
//! goes to loopback only, the IMDS traffic stays in the test's namespace.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{
    Daemon, FakeImds, FakeOpts, IMDS_V4, LogLine, Netns, TestDir, client_script, curl,
    require_root, run_client, serial,
};

const DAEMON: &str = env!("CARGO_BIN_EXE_imds-snoop");
/// Totals (losses, lines written) reach the endpoint on the daemon's 1 s tick.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral loopback port");
    l.local_addr().unwrap().port()
}

/// A scrape, as the real Prometheus parsers read it (tests/e2e/scrape_metrics.py).
pub(crate) struct Scrape {
    content_type: String,
    /// (name, labels, value)
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Scrapes `url`, which must be on loopback: this runs in the machine's own network
    /// namespace, where nothing may go anywhere else (an IMDS URL passed here by mistake
    /// once sent a GET to 169.254.169.254 from the machine).
    pub(crate) fn get(url: &str) -> Self {
        assert!(
            ["http://127.0.0.1:", "http://[::1]:"]
                .iter()
                .any(|p| url.starts_with(p)),
            "refusing to scrape {url} from the machine's network namespace: loopback only"
        );
        let out = Command::new("python3")
            .arg(client_script("scrape_metrics.py"))
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .expect("running scrape_metrics.py");
        assert!(
            out.status.success(),
            "scraping {url} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("scrape_metrics.py's JSON");
        let samples = v["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|s| {
                let labels = s[1]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_owned()))
                    .collect();
                (
                    s[0].as_str().expect("name").to_owned(),
                    labels,
                    s[2].as_f64().expect("value"),
                )
            })
            .collect();
        Self {
            content_type: v["content_type"].as_str().unwrap_or_default().to_owned(),
            samples,
        }
    }

    /// The samples named `name`.
    fn series(&self, name: &str) -> impl Iterator<Item = &(String, BTreeMap<String, String>, f64)> {
        self.samples.iter().filter(move |s| s.0 == name)
    }

    /// The value of the single sample `name` whose labels include `labels`.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .series(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.1.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| s.2)
            .collect();
        match found.as_slice() {
            [] => None,
            [one] => Some(*one),
            many => panic!("{name}{labels:?} matches {} samples", many.len()),
        }
    }

    /// `imds_snoop_requests_total` summed by (class, comm).
    fn requests_by_class_and_comm(&self) -> BTreeMap<(String, String), u64> {
        let mut counts = BTreeMap::new();
        for (_, labels, value) in self.series("imds_snoop_requests_total") {
            *counts
                .entry((labels["class"].clone(), labels["comm"].clone()))
                .or_insert(0) += *value as u64;
        }
        counts
    }
}

/// The metrics' `class` of a log line's label.
fn class_of(line: &LogLine) -> &'static str {
    match line.label.as_str() {
        "imdsv1(!)" => "v1",
        "imdsv2" => "v2",
        "imdsv2(token)" => "v2_token",
        // A token PUT whose response never came: still a token request (status "none").
        "imdsv2 token response not received (hop limit?)" => "v2_token",
        "malformed(!)" => "malformed",
        other => panic!("unknown label {other:?} in {}", line.raw),
    }
}

/// The trace log's request lines (every caller's, not just ours: the endpoint counts
/// them all) by (class, comm).
fn log_by_class_and_comm(daemon: &Daemon) -> BTreeMap<(String, String), u64> {
    let mut counts = BTreeMap::new();
    for line in daemon.lines().iter().filter_map(|l| LogLine::parse(l)) {
        *counts
            .entry((class_of(&line).to_owned(), line.comm.clone()))
            .or_insert(0) += 1;
    }
    counts
}

#[test]
fn metrics_counters_match_the_trace_log() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("metrics");
    let fake = FakeImds::start(&ns, FakeOpts::default());
    let url = format!("http://127.0.0.1:{}/metrics", free_port());
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let before_start = std::time::SystemTime::now();
    let daemon = Daemon::start(&["--metrics-addr", &addr]);

    // v1 from curl; a v2 session (token PUT, GETs with it) and some v1 GETs from python3.
    let curl_v1 = 3;
    for _ in 0..curl_v1 {
        curl(
            &ns,
            &[
                "-o",
                "/dev/null",
                &format!("http://{IMDS_V4}/latest/meta-data/instance-id"),
            ],
        );
    }
    let (py_v2, py_v1) = (4, 2);
    let script = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('{IMDS_V4}', 80, timeout=5)\n\
         c.request('PUT', '/latest/api/token', headers={{'X-aws-ec2-metadata-token-ttl-seconds': '60'}})\n\
         token = c.getresponse().read().decode()\n\
         for i in range({py_v2}):\n\
         \x20   c.request('GET', '/latest/meta-data/v2/%d' % i, headers={{'X-aws-ec2-metadata-token': token}})\n\
         \x20   c.getresponse().read()\n\
         for i in range({py_v1}):\n\
         \x20   c.request('GET', '/latest/meta-data/v1/%d' % i)\n\
         \x20   c.getresponse().read()\n"
    );
    run_client(&ns, ns.command("python3").args(["-c", &script]));
    let ours = daemon.expect_our_lines(curl_v1 + 1 + py_v2 + py_v1, "curl and python3 calls");

    // Poll until the endpoint has caught up with the log: every request line counted, and
    // the lines-written total (updated on the 1 s tick) equal to the lines in the file.
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    let (scrape, log_counts) = loop {
        let scrape = Scrape::get(&url);
        let log_counts = log_by_class_and_comm(&daemon);
        let written = scrape.value("imds_snoop_log_lines_written_total", &[]);
        if scrape.requests_by_class_and_comm() == log_counts
            && written == Some(daemon.lines().len() as f64)
        {
            break (scrape, log_counts);
        }
        assert!(
            Instant::now() < deadline,
            "after {SCRAPE_TIMEOUT:?} the endpoint still disagrees with the log:\nrequests \
             {:?}\nlog {log_counts:?}\nlines written {written:?}, lines in the log {}\n{}",
            scrape.requests_by_class_and_comm(),
            daemon.lines().len(),
            daemon.dump()
        );
        thread::sleep(Duration::from_millis(200));
    };

    // The log holds what the clients did; the endpoint agrees with it, class by class.
    let ours_of = |class: &str, comm: &str| {
        ours.iter()
            .filter(|l| class_of(l) == class && l.comm == comm)
            .count() as u64
    };
    let metric = |class: &str, comm: &str| {
        scrape
            .requests_by_class_and_comm()
            .get(&(class.to_owned(), comm.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    for (class, comm) in [
        ("v1", "curl"),
        ("v2_token", "python3"),
        ("v2", "python3"),
        ("v1", "python3"),
    ] {
        let want = log_counts
            .get(&(class.to_owned(), comm.to_owned()))
            .copied()
            .unwrap_or(0);
        assert!(
            ours_of(class, comm) > 0 && metric(class, comm) == want,
            "{class} calls by {comm}: endpoint {}, log {want} (ours {})",
            metric(class, comm),
            ours_of(class, comm)
        );
    }
    // Callers in no pod: empty pod labels; no `pod` label at all (the workload bounds the
    // label sets); the test's namespace is not the node's (the daemon read pid 1's).
    for (_, labels, _) in scrape.series("imds_snoop_requests_total") {
        assert!(!labels.contains_key("pod"), "{labels:?}");
        if ["curl", "python3"].contains(&labels["comm"].as_str()) {
            assert_eq!(
                (
                    &labels["namespace"][..],
                    &labels["workload"][..],
                    &labels["container"][..],
                    &labels["image"][..],
                    &labels["host_network"][..],
                ),
                ("", "", "", "", "false"),
                "{labels:?}"
            );
        }
    }
    // The window the counters cover starts when this daemon started tracing.
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let start = scrape
        .value("imds_snoop_window_start_seconds", &[])
        .expect("imds_snoop_window_start_seconds");
    assert!(
        unix(before_start) <= start && start <= unix(std::time::SystemTime::now()),
        "window start {start} not between the daemon's start {} and now",
        unix(before_start)
    );
    // One latency observation per request; nothing lost; attached in the mode it logged.
    let requests: u64 = log_counts.values().sum();
    assert_eq!(
        scrape.value("imds_snoop_processing_seconds_count", &[]),
        Some(requests as f64)
    );
    assert_eq!(
        scrape.value("imds_snoop_processing_seconds_bucket", &[("le", "+Inf")]),
        Some(requests as f64)
    );
    for (name, labels) in [
        (
            "imds_snoop_kernel_drops_total",
            &[("reason", "ring_full")][..],
        ),
        (
            "imds_snoop_kernel_drops_total",
            &[("reason", "no_scratch")][..],
        ),
        ("imds_snoop_writer_queue_drops_total", &[][..]),
        ("imds_snoop_log_lines_lost_total", &[][..]),
    ] {
        assert_eq!(scrape.value(name, labels), Some(0.0), "{name}{labels:?}");
    }
    let stderr = daemon.stderr();
    let mode = stderr
        .split("attached ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `attached MODE` in stderr:\n{stderr}"));
    assert_eq!(
        scrape.value("imds_snoop_attached", &[("mode", mode)]),
        Some(1.0)
    );
    assert!(
        scrape
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        scrape.content_type
    );
    daemon.finish(&[&fake], &[]);
}

#[test]
fn metrics_port_in_use_fails_start_up_before_attaching() {
    // Fails before it loads anything, so no root is needed.
    let taken = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral loopback port");
    let addr = taken.local_addr().unwrap().to_string();
    let dir = TestDir::new("metrics-bind");
    let mut child = Command::new(DAEMON)
        .arg("--log-file")
        .arg(dir.file("imds-trace.log"))
        .args(["--metrics-addr", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning imds-snoop");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("imds-snoop kept running with its metrics port taken");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for metrics on {addr}"))
            && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(!stderr.contains("attached"), "{stderr}");
    drop(taken);
}
