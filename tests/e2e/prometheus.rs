//! A real Prometheus (Debian's `prometheus`) scraping a real daemon computes, with
//! deploy/prometheus/imds-snoop.rules.yaml, the same per-node verdict as `imds-snoop report`
//! on the daemon's log; the alerts fire; every query of the Grafana dashboard returns data.
//!
//! Everything listens on 127.0.0.1 in the machine's namespace: the daemon's metrics, a
//! private Prometheus (its own config and data directory in the test's scratch directory,
//! run under `timeout`, killed when the test ends) and a python http.server serving a
//! second node's recorded /metrics and kube-state-metrics' node series (two daemons on one
//! host would both see every call). The IMDS traffic stays in the test's namespace.
//!
//! The rules are a test copy: the minimum window 0 (the report runs with `--min-window 0`)
//! and every alert's `for` 0 s, so a test of seconds sees them fire.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::harness::{
    Daemon, FakeImds, FakeOpts, IMDS_V4, Netns, TestDir, curl, curl_status, report_json,
    require_root, serial,
};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/imds-snoop.rules.yaml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana/imds-snoop-fleet.json"
);
/// The node label the scrape config gives the daemon on this machine, and the recorded one.
const NODE: &str = "e2e-node";
const SYNTHETIC: &str = "synthetic-node";
/// In kube-state-metrics' node list, with no daemon.
const MISSING: &str = "missing-node";
/// How long Prometheus may take to start, scrape and evaluate.
const WAIT: Duration = Duration::from_secs(30);
/// Prometheus' whole life: it is killed at the end of the test, and by `timeout` at the
/// latest (a test process killed outright cannot kill it).
const LIFETIME_SECS: u32 = 300;

/// A child process killed (SIGTERM, then SIGKILL after 5 s) when dropped, also on a panic.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let pid = self.0.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid, which is not reaped before the wait below.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().unwrap().port()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The rules with the test's constants: min-window 0, every `for` 0 s. Each substitution
/// must hit, so a changed rules file fails here instead of testing something else.
fn test_rules() -> String {
    let text = fs::read_to_string(RULES).expect("reading the rules file");
    assert_eq!(
        text.matches("< bool 86400").count(),
        1,
        "the rules' min-window constant moved"
    );
    let fors = text.matches("for: 5m").count() + text.matches("for: 15m").count();
    assert_eq!(fors, 3, "alerts with a `for` changed");
    text.replace("< bool 86400", "< bool 0")
        .replace("for: 15m", "for: 0s")
        .replace("for: 5m", "for: 0s")
}

/// The second node, as its daemon would serve it: attached 0 (so statuses 0), 2 calls lost
/// in the ring buffer, a pod's token response dropped in forwarding and its v2 calls from
/// the pod network.
fn synthetic_node_metrics() -> String {
    let l = r#"namespace="shop",workload="api",container="api",image="shop/api:2",comm="python3""#;
    format!(
        "# TYPE imds_snoop_attached gauge\nimds_snoop_attached{{mode=\"tracepoint\"}} 0\n\
         # TYPE imds_snoop_statuses_traced gauge\nimds_snoop_statuses_traced 0\n\
         # TYPE imds_snoop_window_start_seconds gauge\nimds_snoop_window_start_seconds {}\n\
         # TYPE imds_snoop_kernel_drops_total counter\n\
         imds_snoop_kernel_drops_total{{reason=\"ring_full\"}} 2\n\
         imds_snoop_kernel_drops_total{{reason=\"response\"}} 0\n\
         # TYPE imds_snoop_requests_total counter\n\
         imds_snoop_requests_total{{class=\"v2_token\",status=\"dropped\",host_network=\"false\",{l}}} 1\n\
         imds_snoop_requests_total{{class=\"v2\",status=\"200\",host_network=\"false\",{l}}} 5\n",
        now_secs() - 3600
    )
}

/// kube-state-metrics' node list: this node (labelled IMDSv2-only), the synthetic one, and
/// one without a daemon.
fn kube_state_metrics() -> String {
    format!(
        "# TYPE kube_node_info gauge\nkube_node_info{{node=\"{NODE}\"}} 1\n\
         kube_node_info{{node=\"{SYNTHETIC}\"}} 1\nkube_node_info{{node=\"{MISSING}\"}} 1\n\
         # TYPE kube_node_labels gauge\n\
         kube_node_labels{{node=\"{NODE}\",label_imds_snoop_io_http_tokens=\"required\"}} 1\n\
         kube_node_labels{{node=\"{SYNTHETIC}\"}} 1\n"
    )
}

/// A private Prometheus on loopback with the test rules.
struct Prometheus {
    port: u16,
    _server: Killed,
    _files: Killed,
}

impl Prometheus {
    fn start(dir: &Path, daemon_port: u16) -> Self {
        let files_port = free_port();
        let www = dir.join("www");
        fs::create_dir_all(&www).unwrap();
        fs::write(www.join("metrics"), synthetic_node_metrics()).unwrap();
        fs::write(www.join("ksm"), kube_state_metrics()).unwrap();
        let files = Killed(
            Command::new("timeout")
                .arg(LIFETIME_SECS.to_string())
                .args(["python3", "-m", "http.server", "--bind", "127.0.0.1"])
                .arg(files_port.to_string())
                .arg("--directory")
                .arg(&www)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting python3 -m http.server"),
        );
        fs::write(dir.join("rules.yaml"), test_rules()).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
             rule_files: [rules.yaml]\n\
             scrape_configs:\n\
             \x20 - job_name: imds-snoop\n\
             \x20   static_configs:\n\
             \x20     - targets: ['127.0.0.1:{daemon_port}']\n\
             \x20       labels: {{node: {NODE}}}\n\
             \x20     - targets: ['127.0.0.1:{files_port}']\n\
             \x20       labels: {{node: {SYNTHETIC}}}\n\
             \x20 - job_name: kube-state-metrics\n\
             \x20   honor_labels: true\n\
             \x20   metrics_path: /ksm\n\
             \x20   static_configs: [{{targets: ['127.0.0.1:{files_port}']}}]\n"
        );
        let config_file = dir.join("prometheus.yml");
        fs::write(&config_file, config).unwrap();
        let check = Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(&config_file)
            .output()
            .expect("running promtool (Debian package prometheus)");
        assert!(check.status.success(), "promtool check config: {check:?}");
        let port = free_port();
        let log = fs::File::create(dir.join("prometheus.log")).unwrap();
        let server = Killed(
            Command::new("timeout")
                .arg(LIFETIME_SECS.to_string())
                .arg("prometheus")
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting prometheus (Debian package prometheus)"),
        );
        let p = Self {
            port,
            _server: server,
            _files: files,
        };
        p.wait_ready(&dir.join("prometheus.log"));
        p.wait_for("every target up", "count(up == 1)", |v| v == Some(3.0));
        p
    }

    /// Until /-/ready answers 200 (it loads its rules and opens its TSDB first).
    fn wait_ready(&self, log: &Path) {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "2",
                ])
                .arg(format!("http://127.0.0.1:{}/-/ready", self.port))
                .output()
                .expect("running curl");
            if out.stdout == b"200" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready after {WAIT:?}: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// GET /api/v1/<path> with `args` URL-encoded (curl to loopback): the `data`.
    fn api(&self, path: &str, args: &[(&str, String)]) -> Value {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "10", "--get"]);
        for (k, v) in args {
            c.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        c.arg(format!("http://127.0.0.1:{}/api/v1/{path}", self.port));
        let out = c.output().expect("running curl");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{path} {args:?}: not JSON ({e}): {out:?}"));
        assert_eq!(v["status"], "success", "{path} {args:?}: {v}");
        v["data"].clone()
    }

    fn query(&self, expr: &str) -> Value {
        self.api("query", &[("query", expr.to_owned())])
    }

    /// The single value of an instant query, None when it returns nothing.
    fn value(&self, expr: &str) -> Option<f64> {
        let data = self.query(expr);
        let result = data["result"].as_array().expect("a vector");
        assert!(result.len() <= 1, "{expr}: {result:?}");
        result
            .first()
            .map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
    }

    fn wait_for(&self, what: &str, expr: &str, ok: impl Fn(Option<f64>) -> bool) -> Option<f64> {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.value(expr);
            if ok(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus: {what}: `{expr}` is {v:?} after {WAIT:?}"
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The verdicts' numbers in the rules.
fn verdict_number(word: &str) -> f64 {
    match word {
        "SAFE" => 0.0,
        "INCONCLUSIVE" => 1.0,
        "NOT SAFE" => 2.0,
        other => panic!("unknown verdict {other:?}"),
    }
}

/// Waits until Prometheus has every request line of the log and has evaluated the rules
/// on it, then compares its verdicts for this node with the report's on the same log.
fn same_verdict(prom: &Prometheus, daemon: &Daemon, want: (&str, &str)) {
    let requests = daemon
        .lines()
        .iter()
        .filter(|l| crate::harness::LogLine::parse(l).is_some())
        .count();
    prom.wait_for(
        "the daemon's request lines scraped",
        &format!("sum(imds_snoop_requests_total{{node=\"{NODE}\"}}) or vector(0)"),
        |v| v == Some(requests as f64),
    );
    // Rules are evaluated every second, after the scrape: three evaluations later they
    // stand on it.
    thread::sleep(Duration::from_secs(3));
    let report = report_json(daemon.log_path());
    let verdicts = report["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 1, "one node in the log: {report}");
    let (http, hop) = (
        verdicts[0]["verdict"].as_str().unwrap(),
        verdicts[0]["hop_limit_1"].as_str().unwrap(),
    );
    assert_eq!((http, hop), want, "the report: {}", verdicts[0]["text"]);
    let rules = (
        prom.value(&format!(
            "imds_snoop:node_http_tokens_required:verdict{{node=\"{NODE}\"}}"
        )),
        prom.value(&format!(
            "imds_snoop:node_hop_limit_1:verdict{{node=\"{NODE}\"}}"
        )),
    );
    let reasons = prom.query(&format!(
        "imds_snoop:node_inconclusive:reason{{node=\"{NODE}\"}} == 1 or \
         imds_snoop:node_hop_limit_1_inconclusive:reason{{node=\"{NODE}\"}} == 1"
    ));
    assert_eq!(
        rules,
        (Some(verdict_number(http)), Some(verdict_number(hop))),
        "the rules' verdict differs from the report's ({}); reasons the rules see: {reasons}",
        verdicts[0]["text"]
    );
}

#[test]
fn prometheus_rules_give_the_reports_verdict_and_alerts_fire() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let dir = TestDir::new("prometheus");
    let ns = Netns::new("prom");
    // http_tokens=required: curl's v1 GETs are answered 401.
    let fake = FakeImds::start(&ns, FakeOpts::enforcing());
    let daemon_port = free_port();
    let daemon = Daemon::start(&["--metrics-addr", &format!("127.0.0.1:{daemon_port}")]);
    let prom = Prometheus::start(dir.path(), daemon_port);

    // No call yet: SAFE both ways (min-window 0).
    same_verdict(&prom, &daemon, ("SAFE", "SAFE"));

    // An IMDSv1 GET (refused 401): NOT SAFE; v1-only callers are not the hop limit's.
    let url = format!("http://{IMDS_V4}/latest/meta-data/instance-id");
    let (_, code, _) = curl_status(&ns, 5, &[&url]);
    assert_eq!(code, "401", "the enforcing fake IMDS refuses IMDSv1");
    daemon.expect_our_lines(1, "curl's v1 GET");
    same_verdict(&prom, &daemon, ("NOT SAFE", "SAFE"));

    // A token PUT and a v2 GET from the test's namespace, one routing hop off the node's:
    // hop limit 1 would cut it off.
    let token = curl(
        &ns,
        &[
            "-s",
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
            &format!("http://{IMDS_V4}/latest/api/token"),
        ],
    )
    .stdout;
    curl(
        &ns,
        &[
            "-s",
            "-o",
            "/dev/null",
            "-H",
            &format!("X-aws-ec2-metadata-token: {}", token.trim()),
            &url,
        ],
    );
    daemon.expect_our_lines(3, "curl's v1 GET, token PUT and v2 GET");
    same_verdict(&prom, &daemon, ("NOT SAFE", "NOT SAFE"));

    // The recorded node: no IMDSv1 but lost calls (INCONCLUSIVE), v2 from the pod network
    // (NOT SAFE with hop limit 1); the node without a daemon: INCONCLUSIVE.
    for (node, want) in [(SYNTHETIC, (1.0, 2.0)), (MISSING, (1.0, 1.0))] {
        let got = (
            prom.value(&format!(
                "imds_snoop:node_http_tokens_required:verdict{{node=\"{node}\"}}"
            )),
            prom.value(&format!(
                "imds_snoop:node_hop_limit_1:verdict{{node=\"{node}\"}}"
            )),
        );
        assert_eq!(got, (Some(want.0), Some(want.1)), "{node}");
    }
    assert_eq!(
        prom.value("imds_snoop:fleet_http_tokens_required:verdict"),
        Some(2.0)
    );

    alerts_fire(&prom);
    dashboard_queries(&prom);

    drop(prom);
    daemon.finish(&[&fake], &[]);
}

/// Every alert of the rules fires, each for the node and caller it is about.
fn alerts_fire(prom: &Prometheus) {
    let want: &[(&str, &[(&str, &str)])] = &[
        (
            "ImdsSnoopV1OnV2OnlyNode",
            &[("node", NODE), ("comm", "curl")],
        ),
        (
            "ImdsSnoopRefused401",
            &[("node", NODE), ("comm", "curl"), ("class", "v1")],
        ),
        (
            "ImdsSnoopTokenResponseLost",
            &[("node", SYNTHETIC), ("status", "dropped")],
        ),
        (
            "ImdsSnoopKernelDrops",
            &[("node", SYNTHETIC), ("reason", "ring_full")],
        ),
        ("ImdsSnoopNotAttached", &[("node", SYNTHETIC)]),
        ("ImdsSnoopStatusesNotTraced", &[("node", SYNTHETIC)]),
        ("ImdsSnoopMissingOnNode", &[("node", MISSING)]),
    ];
    let deadline = Instant::now() + WAIT;
    loop {
        let alerts = prom.api("alerts", &[]);
        let firing: Vec<&Value> = alerts["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .filter(|a| a["state"] == "firing")
            .collect();
        let missing: Vec<&str> = want
            .iter()
            .filter(|(name, labels)| {
                !firing.iter().any(|a| {
                    a["labels"]["alertname"] == *name
                        && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
                })
            })
            .map(|(name, _)| *name)
            .collect();
        if missing.is_empty() {
            // And none on this node but those two: its daemon is attached and traces statuses.
            let ours: Vec<&str> = firing
                .iter()
                .filter(|a| a["labels"]["node"] == NODE)
                .map(|a| a["labels"]["alertname"].as_str().unwrap())
                .collect();
            assert!(
                ours.iter()
                    .all(|n| ["ImdsSnoopV1OnV2OnlyNode", "ImdsSnoopRefused401"].contains(n)),
                "unexpected alerts on {NODE}: {ours:?}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not firing after {WAIT:?}: {missing:?}; firing: {firing:?}"
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// Every `expr` of the dashboard, its variables as Grafana would fill them in, returns
/// data: a table or stat panel's instant query a non-empty vector, a time series panel's
/// range query a non-empty matrix; `by (...)` labels that name the node are set.
fn dashboard_queries(prom: &Prometheus) {
    let dash: Value =
        serde_json::from_str(&fs::read_to_string(DASHBOARD).expect("reading the dashboard"))
            .expect("the dashboard's JSON");
    // The callers here are host processes in a namespace: no pod, so namespace and
    // workload are empty.
    let vars = [
        ("$__rate_interval", "1m".to_owned()),
        ("$__range", "1h".to_owned()),
        ("$namespace", String::new()),
        ("$workload", String::new()),
        ("$node", NODE.to_owned()),
    ];
    let mut n = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        let kind = panel["type"].as_str().unwrap();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let mut expr = target["expr"].as_str().unwrap().to_owned();
            for (k, v) in &vars {
                expr = expr.replace(k, v);
            }
            assert!(!expr.contains('$'), "a variable left in {expr}");
            let end = now_secs();
            let (data, want) = if kind == "timeseries" {
                let data = prom.api(
                    "query_range",
                    &[
                        ("query", expr.clone()),
                        ("start", (end - 60).to_string()),
                        ("end", end.to_string()),
                        ("step", "1".to_owned()),
                    ],
                );
                (data, "matrix")
            } else {
                (prom.query(&expr), "vector")
            };
            let title = panel["title"].as_str().unwrap();
            assert_eq!(data["resultType"], want, "{title}: {expr}");
            let result = data["result"].as_array().unwrap();
            assert!(!result.is_empty(), "{title}: no data for {expr}");
            let by_node = expr.contains("by (node") || expr.starts_with("imds_snoop:node_");
            for r in result {
                if by_node {
                    assert!(
                        r["metric"]["node"].is_string(),
                        "{title}: {expr}: a row without a node: {r}"
                    );
                }
            }
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} dashboard queries");
}
