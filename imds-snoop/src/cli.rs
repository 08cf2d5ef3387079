//! Command-line flags. Running with no subcommand starts the tracer.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use clap::Parser;
use imds_snoop_common::DEFAULT_PAYLOAD_BYTES;

use crate::{capture::AttachMode, output::Format};

/// IMDS on every instance, and its IPv6 endpoint on Nitro instances.
pub(crate) const DEFAULT_TARGETS: [(IpAddr, u16); 2] = [
    (IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), 80),
    (
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
        80,
    ),
];

#[derive(Debug, Parser)]
#[command(
    name = "imds-snoop",
    version,
    about = "Names the process, container and pod behind every EC2 instance metadata (IMDS) \
             call, and whether it is IMDSv1 or IMDSv2.",
    long_about = None
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Summarise trace logs (text or JSON, rotated files, stdin): unique callers, IMDSv1
    /// use, old SDKs, and per node whether http_tokens=required and hop limit 1 are safe.
    Report(crate::report::ReportArgs),
    /// Exit 0 if a running imds-snoop has attached (its --ready-file names a live pid):
    /// a liveness/readiness probe for images with no shell.
    Check {
        #[arg(long, value_name = "PATH", default_value = DEFAULT_READY_FILE)]
        ready_file: PathBuf,
    },
}

pub(crate) const DEFAULT_READY_FILE: &str = "/run/imds-snoop/ready";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Trace log; parent directories are created. Rotated to PATH.1, PATH.2, ...
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/log/imds/imds-trace.log"
    )]
    pub log_file: PathBuf,

    /// Also print trace lines on stdout (for `kubectl logs` and journald).
    #[arg(long)]
    pub stdout: bool,

    /// Line format of the trace log and stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Node name put into JSON lines (a DaemonSet passes spec.nodeName); default: hostname.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// Kernel hook: `auto` tries fentry, then kprobe, then the tracepoint.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,

    /// Another destination to trace, ADDR:PORT or [ADDR6]:PORT (e.g. EKS Pod Identity's
    /// 169.254.170.23:80). Adds to 169.254.169.254:80 and [fd00:ec2::254]:80. Repeatable.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_target)]
    pub target: Vec<SocketAddr>,

    /// Bytes of each request the kernel copies (64..=4096). A request longer than this is
    /// logged and marked `truncated`.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PAYLOAD_BYTES)]
    pub payload_bytes: u32,

    /// Size of the kernel-to-daemon ring buffer (a power of two, at least a page).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub ring_bytes: u32,

    /// Rotate the trace log when it would grow past this size.
    #[arg(long, value_name = "BYTES", default_value_t = 10 << 20)]
    pub max_bytes: u64,

    /// Rotated files to keep (PATH.1 ... PATH.N); the oldest is removed.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub backups: u32,

    /// Written (with our pid) once attached, removed at exit: what `imds-snoop check` and
    /// probes look at.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9963); off by default.
    /// A port that cannot be bound stops start-up, before anything is attached.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// Trace the status of each IMDS response (`-> 200`, `-> 401`) with a cgroup_skb
    /// program on --cgroup-root. `auto`: if that fails, warn once and log without statuses.
    #[arg(long, value_enum, default_value_t = Responses::Auto)]
    pub responses: Responses,

    /// How long a request waits for its response before it is logged without a status (an
    /// IMDSv2 token PUT then as the hop-limit warning). SDKs give up after 1 s. E.g. 2s,
    /// 500ms.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub response_timeout: std::time::Duration,

    /// The kernel's BTF, for struct offsets.
    #[arg(long, value_name = "PATH", default_value = "/sys/kernel/btf/vmlinux")]
    pub btf: PathBuf,

    /// Where the node's /proc is (a DaemonSet may mount the host's elsewhere).
    #[arg(long, value_name = "PATH", default_value = "/proc")]
    pub proc_root: PathBuf,

    /// The node's cgroup v2 mount, to find the cgroup of a caller that has exited.
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,

    /// containerd's task state, where each container's OCI bundle (with the pod's CRI
    /// annotations) lives under <namespace>/<id>/config.json.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/containerd/io.containerd.runtime.v2.task"
    )]
    pub containerd_root: PathBuf,

    /// CRI-O's container state.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/containers/storage/overlay-containers"
    )]
    pub crio_root: PathBuf,

    /// kubelet's pod log directory (<namespace>_<pod>_<uid>/), a fallback for pod names.
    #[arg(long, value_name = "PATH", default_value = "/var/log/pods")]
    pub pod_logs: PathBuf,

    /// Where the node's `/` is mounted: paths node processes name (a containerd shim's
    /// `-address`, next to its runtime's task directory) are looked up under it.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub node_root: PathBuf,
    /// The node's network namespace (a file of it: /proc/<pid>/ns/net, or a bind mount of
    /// one), to say whether each caller's socket is in it (`net:host`) or not (`net:other`,
    /// a pod behind a routing hop). Default: /proc/1/ns/net if readable (root with
    /// CAP_SYS_PTRACE), else the daemon's own /proc/self/ns/net. Or a file holding
    /// `net:[INODE]` (what `readlink /proc/1/ns/net` prints): the unit writes one (it has
    /// PrivateNetwork=yes); the DaemonSet mounts the host's file (hostPath).
    #[arg(long, value_name = "PATH")]
    pub host_netns: Option<PathBuf>,
}

impl RunArgs {
    pub(crate) fn container_paths(&self) -> crate::attribution::Paths {
        crate::attribution::Paths {
            proc_root: self.proc_root.clone(),
            cgroup_root: self.cgroup_root.clone(),
            containerd_root: self.containerd_root.clone(),
            crio_root: self.crio_root.clone(),
            pod_logs: self.pod_logs.clone(),
            node_root: self.node_root.clone(),
            ..crate::attribution::Paths::default()
        }
    }

    /// The default targets plus `--target`s, without duplicates.
    pub(crate) fn targets(&self) -> Vec<(IpAddr, u16)> {
        let mut all = DEFAULT_TARGETS.to_vec();
        for t in &self.target {
            let t = (t.ip(), t.port());
            if !all.contains(&t) {
                all.push(t);
            }
        }
        all
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Responses {
    Auto,
    Off,
}

/// `2s`, `500ms`, or plain seconds (`1.5`).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1e-3)
    } else {
        (s.strip_suffix('s').unwrap_or(s), 1.0)
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0 && *v * scale <= 3600.0)
        .map(|v| std::time::Duration::from_secs_f64(v * scale))
        .ok_or_else(|| format!("{s:?} is not a duration such as 2s or 500ms (at most 1h)"))
}

fn parse_target(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not ADDR:PORT (e.g. 169.254.170.23:80 or [fd00:ec2::23]:80)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_add_to_defaults_once() {
        let cli = Cli::parse_from([
            "imds-snoop",
            "--target",
            "169.254.170.23:80",
            "--target",
            "169.254.169.254:80",
            "--target",
            "[fd00:ec2::23]:80",
        ]);
        let t = cli.run.targets();
        assert_eq!(t.len(), 4);
        assert_eq!(t[2], ("169.254.170.23".parse().unwrap(), 80));
    }

    #[test]
    fn response_timeout_parses() {
        use std::time::Duration;
        let t = |s: &str| parse_duration(s);
        assert_eq!(t("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(t("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(t("1.5"), Ok(Duration::from_millis(1500)));
        assert!(t("0s").is_err() && t("soon").is_err() && t("2h").is_err());
        let cli = Cli::parse_from(["imds-snoop"]);
        assert_eq!(cli.run.response_timeout, Duration::from_secs(2));
        assert_eq!(cli.run.responses, Responses::Auto);
    }

    #[test]
    fn bad_target_is_a_clear_error() {
        let err = Cli::try_parse_from(["imds-snoop", "--target", "169.254.170.23"]).unwrap_err();
        assert!(err.to_string().contains("is not ADDR:PORT"), "{err}");
    }
}
