//! Attribution to container and pod with a real runtime: a private containerd (Debian's
//! 1.6) and runc run a container from a busybox-static rootfs in namespace `k8s.io`, with
//! the CRI annotations kubelet's CRI plugin would put on a pod's container, inside a test
//! network namespace that holds the fake IMDS. The daemon must name the shim, the pod and
//! the container from the runtime's own state on the node.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::harness::{
    Daemon, FakeImds, FakeOpts, IMDS_V4, LINE_TIMEOUT, Netns, TestDir, require_root, serial,
};

/// A containerd of our own: own root, state and sockets under a scratch directory; the CRI
/// plugin off (no kubelet here; we set the CRI annotations ourselves).
struct Containerd {
    dir: TestDir,
    child: Child,
    containers: Vec<String>,
    sock: PathBuf,
}

impl Containerd {
    fn start() -> Self {
        Self::start_with(false)
    }

    /// `socket_in_state`: the main socket inside the state directory, as k3s
    /// (`/run/k3s/containerd/containerd.sock`) and containerd's defaults have it.
    fn start_with(socket_in_state: bool) -> Self {
        for tool in ["containerd", "ctr", "runc", "busybox"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .output()
                    .is_ok_and(|o| o.status.success()),
                "`{tool}` is missing: `cargo xtask setup` installs containerd, runc and busybox-static"
            );
        }
        let dir = TestDir::new("containerd");
        let d = dir.path();
        let sock = if socket_in_state {
            d.join("state/containerd.sock")
        } else {
            d.join("c.sock")
        };
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"{debug}\"\n[metrics]\n  address = \"\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = sock.display(),
            debug = d.join("debug.sock").display(),
        );
        fs::write(d.join("config.toml"), config).unwrap();
        make_rootfs(&d.join("rootfs"));
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let me = Self {
            dir,
            child,
            containers: vec![],
            sock,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !me.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 20 s:\n{}",
                fs::read_to_string(me.dir.path().join("containerd.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
        me
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Where the daemon finds bundles: `--containerd-root`.
    fn task_root(&self) -> PathBuf {
        self.dir.path().join("state/io.containerd.runtime.v2.task")
    }

    /// Runs `sleep` as container `name` of pod `namespace/pod` in network namespace `ns`,
    /// in a kubepods cgroup as kubelet's cgroupfs driver names it, with the image annotation
    /// containerd's CRI plugin writes (`io.kubernetes.cri.image-name`) when `image` is
    /// given. Returns (id, pod uid).
    fn run_pod_container(
        &mut self,
        ns: &Netns,
        namespace: &str,
        pod: &str,
        name: &str,
        image: Option<&str>,
    ) -> (String, String) {
        let id = random_hex(64);
        let h = random_hex(32);
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        let rootfs = self.dir.path().join("rootfs");
        let image_annotation = image.map(|i| format!("io.kubernetes.cri.image-name={i}"));
        let image_args: Vec<&str> = image_annotation
            .iter()
            .flat_map(|a| ["--annotation", a.as_str()])
            .collect();
        let ns_arg = format!("network:/var/run/netns/{}", ns.name());
        let mut args = vec!["run", "-d", "--null-io", "--with-ns", &ns_arg];
        args.extend(image_args);
        let out = self.ctr(
            &[
                &args[..],
                &[
                    "--annotation",
                    &format!("io.kubernetes.cri.sandbox-name={pod}"),
                    "--annotation",
                    &format!("io.kubernetes.cri.sandbox-namespace={namespace}"),
                    "--annotation",
                    &format!("io.kubernetes.cri.container-name={name}"),
                    "--annotation",
                    &format!("io.kubernetes.cri.sandbox-id={id}"),
                    "--annotation",
                    "io.kubernetes.cri.container-type=container",
                    "--cgroup",
                    &format!("/kubepods/besteffort/pod{uid}/{id}"),
                    "--rootfs",
                    rootfs.to_str().unwrap(),
                    &id,
                    "/bin/sleep",
                    "3600",
                ][..],
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "ctr run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.containers.push(id.clone());
        (id, uid)
    }

    /// `ctr task exec` inside container `id`; returns the exec's output.
    fn exec(&self, id: &str, exec_id: &str, argv: &[&str]) -> Output {
        let mut args = vec!["task", "exec", "--exec-id", exec_id, id];
        args.extend_from_slice(argv);
        self.ctr(&args)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.ctr(&["task", "delete", &id]).status.success() && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(100));
            }
            let _ = self.ctr(&["container", "delete", &id]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_kubepods_cgroups();
    }
}

/// runc leaves the (empty) kubepods cgroup directories behind in every hierarchy.
fn remove_kubepods_cgroups() {
    let Ok(out) = Command::new("find")
        .args([
            "/sys/fs/cgroup",
            "-depth",
            "-type",
            "d",
            "-path",
            "*kubepods*",
        ])
        .output()
    else {
        return;
    };
    for dir in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = fs::remove_dir(dir);
    }
}

/// A busybox-static root filesystem: /bin/busybox and its applet links.
fn make_rootfs(rootfs: &Path) {
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed");
    fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let out = Command::new("chroot")
        .arg(rootfs)
        .args(["/bin/busybox", "--install", "-s", "/bin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "busybox --install: {out:?}");
}

/// `n` random hex digits, from the kernel's uuid generator.
fn random_hex(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
        s.extend(uuid.trim().chars().filter(|c| *c != '-'));
    }
    s.truncate(n);
    s
}

/// A v1 call from inside a pod's container: the line names the caller (wget), the shim
/// with the container's id, the container and the pod.
#[test]
fn call_from_a_pod_names_container_and_pod() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("pod");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let mut containerd = Containerd::start();
    // A Deployment's pod (`<name>-<pod-template-hash>-<5>`), its image as containerd's CRI
    // plugin annotates it.
    let (pod, image) = ("web-7d9f8b6c5-x2k4p", "docker.io/library/busybox:1.36");
    let (id, _uid) = containerd.run_pod_container(&ns, "shop", pod, "app", Some(image));
    let task_root = containerd.task_root();
    let metrics_url = format!("http://127.0.0.1:{}/metrics", crate::metrics::free_port());
    let addr = metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let daemon = Daemon::start(&[
        "--containerd-root",
        task_root.to_str().unwrap(),
        "--metrics-addr",
        &addr,
    ]);

    let url = format!("http://{IMDS_V4}/latest/meta-data/instance-id");
    let out = containerd.exec(&id, "v1", &["/bin/wget", "-q", "-O", "-", &url]);
    assert!(out.status.success(), "wget in the container: {out:?}");
    // A short-lived caller under a shell that is gone too by the time we look.
    let out = containerd.exec(
        &id,
        "short",
        &[
            "/bin/sh",
            "-c",
            &format!("exec /bin/wget -q -O /dev/null {url}?short"),
        ],
    );
    assert!(out.status.success(), "sh -c wget in the container: {out:?}");

    let tag = format!("container:{}", &id[..12]);
    let lines = daemon.wait_lines(|l| l.contains(&tag), 2, LINE_TIMEOUT);
    for line in &lines {
        assert!(
            line.contains(" [WARNING] imdsv1(!) (pid:"),
            "not a v1 line: {line}"
        );
        assert!(
            line.contains(":wget argv:/bin/wget -q -O"),
            "caller/argv: {line}"
        );
        assert!(
            line.contains(&format!(
                "containerd-shim argv:/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id {id}"
            )),
            "shim with the container id among the ancestors: {line}"
        );
        assert!(
            line.contains(&format!(
                "{tag} pod:shop/{pod} container-name:app image:{image} workload~:web "
            )),
            "pod and container names, image, workload: {line}"
        );
        // In its own pid namespace the exec'd wget is never pid 1 (sleep is), nor its host pid.
        let ns_pid: u32 = line
            .split(" container-pid:")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no container-pid: {line}"));
        assert!(
            ns_pid > 1 && ns_pid < 1000,
            "in-container pid {ns_pid}: {line}"
        );
    }
    assert!(lines[1].contains("?short"), "{}", lines[1]);
    // The metric counts both calls under the workload and image, not the pod.
    let labels = [
        ("class", "v1"),
        ("host_network", "false"),
        ("namespace", "shop"),
        ("workload", "web"),
        ("container", "app"),
        ("image", image),
        ("comm", "wget"),
    ];
    let deadline = std::time::Instant::now() + LINE_TIMEOUT;
    let count = loop {
        let scrape = crate::metrics::Scrape::get(&metrics_url);
        let n = scrape.value("imds_snoop_requests_total", &labels);
        if n == Some(2.0) || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(count, Some(2.0), "imds_snoop_requests_total{labels:?}");
    daemon.finish(&[&imds], &[]);
}

/// containerd with a state directory that is not `/run/containerd` (as k3s, RKE2, microk8s
/// or any `state =` setting have it), and no flag naming it: the daemon finds the task
/// directory through the validated shim's `-address` (the socket next to the state), and
/// names the pod.
#[test]
fn pod_named_on_a_non_default_state_directory_without_flags() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let ns = Netns::new("pod-k3s");
    let imds = FakeImds::start(&ns, FakeOpts::default());
    let mut containerd = Containerd::start_with(true);
    // A StatefulSet's pod, no image annotation (as docker and cri-dockerd have it).
    let (id, _uid) = containerd.run_pod_container(&ns, "shop", "web-2", "app", None);
    let daemon = Daemon::start(&[]);

    let url = format!("http://{IMDS_V4}/latest/meta-data/instance-id");
    let out = containerd.exec(&id, "v1", &["/bin/wget", "-q", "-O", "-", &url]);
    assert!(out.status.success(), "wget in the container: {out:?}");
    let tag = format!("container:{}", &id[..12]);
    let lines = daemon.wait_lines(|l| l.contains(&tag), 1, LINE_TIMEOUT);
    assert!(
        lines[0].contains(&format!(
            "{tag} pod:shop/web-2 container-name:app workload~:web "
        )),
        "pod and container names, no image: {}",
        lines[0]
    );
    daemon.finish(&[&imds], &[]);
}

/// The hop limit with a real runtime: pod -> node (router) -> imds, the fake IMDS's replies
/// with TTL 1, `--host-netns` naming the node namespace. A container in its own namespace
/// behind the router (a pod) and one sharing the node's namespace (a hostNetwork pod) each
/// run a token flow (busybox `nc` PUT, then `wget` with the token). The pod's PUT is logged
/// as dropped at the hop limit with its pod and container; the hostNetwork one is answered,
/// never dropped; the report cuts off only the pod, on the drop's evidence.
#[test]
fn token_drop_at_the_hop_limit_names_the_pod_not_the_host_network_one() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = crate::harness::Routed::new("ctr-drop");
    let imds = FakeImds::start(
        &net.imds,
        FakeOpts {
            binds: vec![IMDS_V4],
            ttl: Some(1),
            ..FakeOpts::default()
        },
    );
    let mut containerd = Containerd::start();
    let (pod_id, _) = containerd.run_pod_container(&net.pod, "shop", "web-1", "app", None);
    let (host_id, _) =
        containerd.run_pod_container(&net.node, "kube-system", "agent-1", "agent", None);
    let task_root = containerd.task_root();
    let node_netns = format!("/var/run/netns/{}", net.node.name());
    let mut daemon = Daemon::start(&[
        "--containerd-root",
        task_root.to_str().unwrap(),
        "--response-timeout",
        "1500ms",
        "--host-netns",
        &node_netns,
    ]);
    // The token PUT with nc (busybox wget cannot PUT), then a v2 GET with the token.
    let flow = format!(
        "T=$(printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: {IMDS_V4}\\r\\n\
         X-aws-ec2-metadata-token-ttl-seconds: 60\\r\\nConnection: close\\r\\n\\r\\n' \
         | nc -w 2 {IMDS_V4} 80 | tail -n 1); \
         [ -n \"$T\" ] && wget -q -O /dev/null --header \"X-aws-ec2-metadata-token: $T\" \
         http://{IMDS_V4}/latest/meta-data/instance-id; echo \"got:${{#T}}\""
    );
    let host_out = containerd.exec(&host_id, "flow", &["/bin/sh", "-c", &flow]);
    let host_said = String::from_utf8_lossy(&host_out.stdout).to_string();
    assert!(
        host_said.contains("got:") && !host_said.contains("got:0"),
        "the hostNetwork container gets its token: {host_out:?}"
    );
    let pod_out = containerd.exec(&pod_id, "flow", &["/bin/sh", "-c", &flow]);
    assert!(
        String::from_utf8_lossy(&pod_out.stdout).contains("got:0"),
        "ttl 1: the pod's token response dies at the router: {pod_out:?}"
    );

    let pod_tag = format!("container:{}", &pod_id[..12]);
    let host_tag = format!("container:{}", &host_id[..12]);
    // The hostNetwork container: its PUT and its v2 GET; the pod: its PUT.
    let lines = daemon.wait_lines(
        |l| l.contains(&pod_tag) || l.contains(&host_tag),
        3,
        LINE_TIMEOUT,
    );
    let pod_lines: Vec<&String> = lines.iter().filter(|l| l.contains(&pod_tag)).collect();
    let host_lines: Vec<&String> = lines.iter().filter(|l| l.contains(&host_tag)).collect();
    assert_eq!(pod_lines.len(), 1, "the pod's PUT only\n{}", daemon.dump());
    let pod_put = pod_lines[0];
    assert!(
        pod_put.contains(" [WARNING] imdsv2 token response dropped (hop limit) (pid:")
            && pod_put.contains(":nc argv:nc -w 2 ")
            && pod_put.contains(", -> dropped ")
            && pod_put.contains(&format!("{pod_tag} pod:shop/web-1 container-name:app"))
            && pod_put.contains(" net:other "),
        "the pod's PUT, dropped, with its pod and container: {pod_put}"
    );
    assert_eq!(host_lines.len(), 2, "{}", daemon.dump());
    for line in &host_lines {
        assert!(
            line.contains(" -> 200 ")
                && line.contains(" net:host ")
                && !line.contains("dropped")
                && line.contains(&format!("{host_tag} pod:kube-system/agent-1")),
            "the hostNetwork container: answered, never dropped: {line}"
        );
    }
    daemon.stop();
    let report = crate::harness::report_json(daemon.log_path());
    // Other IMDS traffic on the machine (other sessions' namespaces) may add callers: ours
    // are the two pods.
    let cut_off: Vec<String> = crate::harness::hop_limit_cut_off(&report)
        .into_iter()
        .filter(|c| c.starts_with("shop/") || c.starts_with("kube-system/"))
        .collect();
    assert_eq!(
        cut_off,
        ["shop/web~ (1 pod) [drop seen]"],
        "only the pod, on the drop's evidence, not the hostNetwork one\n{report}"
    );
    daemon.assert_clean(&[&imds], &[]);
}
