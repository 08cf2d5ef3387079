//! Loads the kernel program, attaches it to the first hook this kernel accepts, and hands
//! out the ring buffer. The only module that talks to the kernel's BPF interfaces.
//!
//! Attach order for `--attach auto`, each refusal logged in one line:
//! 1. `fentry/tcp_sendmsg`: cheapest (a BPF trampoline, no int3), on every AL2023 kernel.
//! 2. `kprobe/tcp_sendmsg`: older kernels, or kernels that refuse trampolines.
//! 3. `tp_btf/tcp_sendmsg_locked`: kernels with that tracepoint (6.6+), for when the first two
//!    are refused (this project's CI kernel refuses fentry and has no kprobes).

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, FEntry, KProbe,
        ProgramError,
    },
};
use imds_snoop_common::{
    AF_INET, AF_INET6, DROP_KINDS, DropConfig, MAX_PAYLOAD, MAX_TARGETS, Settings, Target, Targets,
};
use tracing::{debug, warn};

use crate::btf::{BtfError, KernelBtf};

/// The kernel object, built by build.rs (aya-build) and embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imds-snoop"));

const SEND_FUNCTION: &str = "tcp_sendmsg";
const SEND_TRACEPOINT: &str = "tcp_sendmsg_locked";
/// The hop-limit drop hook's tracepoint (`skb:kfree_skb`).
const DROP_TRACEPOINT: &str = "kfree_skb";
/// The perf PMU aya creates kprobes through (kernels 4.17+).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Auto => "auto",
            AttachMode::Fentry => "fentry (fentry/tcp_sendmsg)",
            AttachMode::Kprobe => "kprobe (kprobe/tcp_sendmsg)",
            AttachMode::Tracepoint => "tracepoint (tp_btf/tcp_sendmsg_locked)",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CaptureError {
    #[error(
        "this binary was built without its kernel program (AYA_BUILD_SKIP was set): rebuild \
         without it"
    )]
    NoObject,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("loading kernel BTF for program verification: {0}")]
    AyaBtf(#[source] aya::BtfError),
    #[error(
        "permission denied loading BPF programs: run as root, or with CAP_BPF, CAP_PERFMON and \
         CAP_SYS_RESOURCE ({0})"
    )]
    Permission(#[source] aya::EbpfError),
    #[error(
        "loading the kernel program failed: {0} (this kernel may be too old: imds-snoop needs \
         5.8+ for the BPF ring buffer)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("no attach point worked on kernel {kernel}: {tried}")]
    NoAttach { kernel: String, tried: String },
    #[error("kernel program is missing {0}")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("at most {MAX_TARGETS} targets can be traced, {0} were given")]
    TooManyTargets(usize),
    #[error("--payload-bytes must be between 64 and {MAX_PAYLOAD}, got {0}")]
    PayloadBytes(u32),
    #[error("--ring-bytes must be a power of two of at least 4096, got {0}")]
    RingBytes(u32),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponsesError {
    #[error("neither {0} nor its unified/ is a cgroup v2 mount (--cgroup-root)")]
    NotCgroup2(PathBuf),
    #[error("opening {0}: {1}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("cgroup_skb/ingress refused: {}", one_line(.0))]
    Program(#[from] ProgramError),
}

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Why the response program could not be attached, said from the process's effective
/// capabilities rather than from the errno: attaching a `cgroup_skb` program needs
/// CAP_NET_ADMIN (`bpf_prog_attach_check_attach_type`, 5.8+; from 6.9 CAP_SYS_ADMIN also
/// passes), and the kernel answers its absence with EPERM through `BPF_LINK_CREATE` but
/// EINVAL through the legacy `BPF_PROG_ATTACH`, so the error alone misleads. `status` is
/// the text of `/proc/self/status`; `None` when the capabilities do not explain the error.
pub(crate) fn responses_diagnosis(status: &str) -> Option<String> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let eff = u64::from_str_radix(hex, 16).ok()?;
    let has = |cap: u32| eff & (1 << cap) != 0;
    if has(CAP_NET_ADMIN) {
        return None;
    }
    Some(if has(CAP_SYS_ADMIN) {
        format!(
            "this process lacks CAP_NET_ADMIN (CapEff {hex}), which attaching a cgroup_skb \
             program needs; CAP_SYS_ADMIN, which it has, passes only on kernels 6.9 and later: \
             grant CAP_NET_ADMIN (the shipped unit and DaemonSet do)"
        )
    } else {
        format!(
            "this process lacks CAP_NET_ADMIN (CapEff {hex}), which attaching a cgroup_skb \
             program needs: grant it (the shipped unit and DaemonSet do)"
        )
    })
}

/// [`responses_diagnosis`] of this process.
pub(crate) fn own_responses_diagnosis() -> Option<String> {
    responses_diagnosis(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// `statfs` type of cgroup2fs.
fn is_cgroup2(path: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above: `c` outlives the call and `st` is a valid out-pointer.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

pub(crate) struct CaptureOptions<'a> {
    pub attach: AttachMode,
    pub targets: &'a [(IpAddr, u16)],
    pub payload_bytes: u32,
    pub ring_bytes: u32,
    pub btf_path: &'a Path,
}

/// A loaded and attached kernel program. Dropping it detaches everything.
pub(crate) struct Capture {
    ebpf: Ebpf,
    pub attached: AttachMode,
    /// The hop-limit drop hook: which program is attached (`Ok`), or why none is.
    pub hop_drops: Result<HopDrops, String>,
}

/// Which hop-limit drop program is attached (see imds-snoop-ebpf's `drop.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HopDrops {
    /// `imds_hop_drop`: the kernel's drop reason `SKB_DROP_REASON_IP_INHDR` (5.19+).
    Reason,
    /// `imds_hop_drop_route`: no owning socket and a route that is not local (IPv4 only).
    Route,
}

impl fmt::Display for HopDrops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HopDrops::Reason => "tp_btf/kfree_skb (reason IP_INHDR)",
            HopDrops::Route => "tp_btf/kfree_skb (forwarded route, IPv4)",
        })
    }
}

/// The drop program for this kernel: the reason one where the tracepoint has a `reason`
/// argument (5.17+), the enum has `SKB_DROP_REASON_IP_INHDR`, and `ip_forward` gives it
/// (5.19+: on 5.17 and 5.18 it still freed with no reason); else the route one.
pub(crate) fn hop_drop_program(
    arity: Option<usize>,
    ip_inhdr: u32,
    kernel: (u32, u32),
) -> HopDrops {
    if arity.is_some_and(|n| n >= 3) && ip_inhdr != 0 && kernel >= (5, 19) {
        HopDrops::Reason
    } else {
        HopDrops::Route
    }
}

/// `6.12.117+deb12-cloud-amd64` -> (6, 12); (0, 0) when unreadable.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

impl Capture {
    pub(crate) fn start(opts: &CaptureOptions<'_>) -> Result<Self, CaptureError> {
        if EBPF_OBJECT.is_empty() {
            return Err(CaptureError::NoObject);
        }
        if !(64..=MAX_PAYLOAD as u32).contains(&opts.payload_bytes) {
            return Err(CaptureError::PayloadBytes(opts.payload_bytes));
        }
        // The kernel wants a power-of-two multiple of the page size.
        if !opts.ring_bytes.is_power_of_two() || opts.ring_bytes < 4096 {
            return Err(CaptureError::RingBytes(opts.ring_bytes));
        }
        // Offsets from a mapped BTF, dropped before aya parses BTF of its own: the two
        // never sit in memory together.
        let (offsets, has_tracepoint, kernel, drop_config, drop_arity) = {
            let kbtf = KernelBtf::load(opts.btf_path)?;
            (
                kbtf.offsets()?,
                kbtf.has_btf_tracepoint(SEND_TRACEPOINT),
                kbtf.kernel().to_owned(),
                kbtf.drop_config(),
                kbtf.tracepoint_arity(DROP_TRACEPOINT),
            )
        };
        let targets = targets_table(opts.targets)?;
        let settings = Settings {
            payload_bytes: opts.payload_bytes,
            port_bits: Settings::port_bits_of(opts.targets.iter().map(|&(_, port)| port)),
        };
        // Missing members are not fatal: the drop hook is evidence on top of the silence
        // warning, which stays where the hook is unavailable.
        let (drop_globals, drop_config) = match drop_config {
            Ok(c) => (c, Ok(c)),
            Err(e) => (DropConfig::default(), Err(one_line(&e))),
        };
        raise_memlock_limit();

        // `EbpfLoader::new()` parses /sys/kernel/btf/vmlinux itself (aya gives no way to
        // hand that parse on): drop the loader, and its copy, before parsing ours for the
        // attach, so peak memory holds one parsed BTF, not two.
        let mut ebpf = {
            let mut loader = EbpfLoader::new();
            loader
                .override_global("OFFSETS", &offsets, true)
                .override_global("TARGETS", &targets, true)
                .override_global("SETTINGS", &settings, true)
                .override_global("DROP_CONFIG", &drop_globals, true)
                .map_max_entries("EVENTS", opts.ring_bytes)
                .load(EBPF_OBJECT)
                .map_err(|e| {
                    if is_permission_error(&e) {
                        CaptureError::Permission(e)
                    } else {
                        CaptureError::Load(e)
                    }
                })?
        };
        let btf = Btf::parse_file(opts.btf_path, aya::Endianness::default())
            .map_err(CaptureError::AyaBtf)?;

        let order: &[AttachMode] = match opts.attach {
            AttachMode::Auto => &[
                AttachMode::Fentry,
                AttachMode::Kprobe,
                AttachMode::Tracepoint,
            ],
            one => std::slice::from_ref(match one {
                AttachMode::Fentry => &AttachMode::Fentry,
                AttachMode::Kprobe => &AttachMode::Kprobe,
                _ => &AttachMode::Tracepoint,
            }),
        };
        attach_process_tracking(&mut ebpf, &btf);
        let hop_drops = drop_config.and_then(|c| {
            attach_hop_drops(
                &mut ebpf,
                &btf,
                hop_drop_program(drop_arity, c.ip_inhdr, kernel_version(&kernel)),
            )
        });
        let mut tried = Vec::new();
        for &mode in order {
            match attach(&mut ebpf, mode, &btf, has_tracepoint) {
                Ok(()) => {
                    return Ok(Self {
                        ebpf,
                        attached: mode,
                        hop_drops,
                    });
                }
                Err(e) => {
                    let msg = format!("{mode} refused: {}", one_line(&e));
                    if opts.attach == AttachMode::Auto {
                        warn!("{msg}; trying the next attach point");
                    }
                    tried.push(msg);
                }
            }
        }
        Err(CaptureError::NoAttach {
            kernel,
            tried: tried.join("; "),
        })
    }

    /// Attaches the response program (`cgroup_skb/ingress`) to the cgroup v2 mounted at
    /// `cgroup_root`, alongside any other programs there, so each call's status can be joined
    /// to it. Detached when the capture is dropped.
    ///
    /// The mode is `Single` on purpose: on 5.7+ (every kernel we support) aya attaches with
    /// a BPF link, which the kernel always attaches as `BPF_F_ALLOW_MULTI` (coexisting with
    /// other programs, kubelet's or Cilium's) and which takes no attach flags: aya would pass
    /// `AllowMultiple` as link flags and the kernel refuses them (EINVAL).
    /// On a hybrid (v1 + v2) host `cgroup_root` itself is a tmpfs and the v2 hierarchy is
    /// mounted at `<cgroup_root>/unified` (systemd's layout): that is used then.
    /// Returns the cgroup v2 directory attached to.
    pub(crate) fn attach_responses(
        &mut self,
        cgroup_root: &Path,
    ) -> Result<PathBuf, ResponsesError> {
        let unified = cgroup_root.join("unified");
        let cgroup_root = if is_cgroup2(cgroup_root) {
            cgroup_root
        } else if is_cgroup2(&unified) {
            &unified
        } else {
            return Err(ResponsesError::NotCgroup2(cgroup_root.to_owned()));
        };
        let cgroup = std::fs::File::open(cgroup_root)
            .map_err(|e| ResponsesError::Open(cgroup_root.to_owned(), e))?;
        let p: &mut CgroupSkb = program(&mut self.ebpf, "imds_response")?;
        p.load()?;
        attach_or_unload(
            p.attach(
                &cgroup,
                CgroupSkbAttachType::Ingress,
                CgroupAttachMode::Single,
            )
            .map(drop),
            || p.unload(),
        )?;
        Ok(cgroup_root.to_owned())
    }

    /// The ring buffer of send events; taken once, by the poll loop.
    pub(crate) fn take_events(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(CaptureError::Missing("map EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| CaptureError::Map {
            name: "EVENTS",
            source,
        })
    }

    /// Events the kernel could not hand over, summed over CPUs, by `DROP_*` reason.
    pub(crate) fn drops(&self) -> Result<[u64; DROP_KINDS as usize], CaptureError> {
        let map = self
            .ebpf
            .map("DROPS")
            .ok_or(CaptureError::Missing("map DROPS"))?;
        let drops = PerCpuArray::<_, u64>::try_from(map).map_err(|source| CaptureError::Map {
            name: "DROPS",
            source,
        })?;
        let mut out = [0u64; DROP_KINDS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = drops
                .get(&(i as u32), 0)
                .map_err(|source| CaptureError::Map {
                    name: "DROPS",
                    source,
                })?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

fn attach(
    ebpf: &mut Ebpf,
    mode: AttachMode,
    btf: &Btf,
    has_tracepoint: bool,
) -> Result<(), ProgramError> {
    match mode {
        AttachMode::Fentry => {
            let p: &mut FEntry = program(ebpf, "imds_fentry")?;
            p.load(SEND_FUNCTION, btf)?;
            attach_or_unload(p.attach().map(drop), || p.unload())
        }
        AttachMode::Kprobe => {
            // aya attaches kprobes through the kprobe PMU only: without it (a kernel built
            // without kprobes) the attach must fail, so fail before the verifier spends ~40 ms
            // on the program.
            if !Path::new(KPROBE_PMU).exists() {
                return Err(ProgramError::IOError(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{KPROBE_PMU} is missing: this kernel has no kprobes"),
                )));
            }
            let p: &mut KProbe = program(ebpf, "imds_kprobe")?;
            p.load()?;
            attach_or_unload(p.attach(SEND_FUNCTION, 0).map(drop), || p.unload())
        }
        AttachMode::Tracepoint | AttachMode::Auto => {
            if !has_tracepoint {
                return Err(ProgramError::IOError(std::io::Error::other(format!(
                    "this kernel has no {SEND_TRACEPOINT} tracepoint"
                ))));
            }
            let p: &mut BtfTracePoint = program(ebpf, "imds_tracepoint")?;
            p.load(SEND_TRACEPOINT, btf)?;
            attach_or_unload(p.attach().map(drop), || p.unload())
        }
    }
}

/// Exec, fork and exit tracepoints, so short-lived callers keep their argv (a forked
/// child its parent's). Not fatal: without them a caller that is gone before its line is
/// written shows `[exited]` instead of argv.
fn attach_process_tracking(ebpf: &mut Ebpf, btf: &Btf) {
    for (prog, tracepoint) in [
        ("imds_exec", "sched_process_exec"),
        ("imds_fork", "sched_process_fork"),
        ("imds_exit", "sched_process_exit"),
    ] {
        let attached = program::<BtfTracePoint>(ebpf, prog).and_then(|p| {
            p.load(tracepoint, btf)?;
            p.attach().map(drop)
        });
        if let Err(e) = attached {
            warn!(
                "tp_btf/{tracepoint} refused ({}): argv of callers that exit before their \
                 request is logged will be missing",
                one_line(&e)
            );
        }
    }
}

/// The hop-limit drop hook (`tp_btf/kfree_skb`). Not fatal: without it a token PUT left
/// unanswered is still the silence-based warning. Returns which program is attached, or why
/// none is, in one line.
fn attach_hop_drops(ebpf: &mut Ebpf, btf: &Btf, which: HopDrops) -> Result<HopDrops, String> {
    let name = match which {
        HopDrops::Reason => "imds_hop_drop",
        HopDrops::Route => "imds_hop_drop_route",
    };
    let p: &mut BtfTracePoint = program(ebpf, name).map_err(|e| one_line(&e))?;
    p.load(DROP_TRACEPOINT, btf).map_err(|e| one_line(&e))?;
    attach_or_unload(p.attach().map(drop), || p.unload()).map_err(|e| one_line(&e))?;
    Ok(which)
}

/// Unloads a program whose attach failed, so a fallback leaves nothing behind.
fn attach_or_unload(
    attached: Result<(), ProgramError>,
    unload: impl FnOnce() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    if attached.is_err() {
        let _ = unload();
    }
    attached
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProgramError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(ProgramError::UnexpectedProgramType)?;
    prog.try_into()
}

/// Builds the kernel filter's target table from `--target` values.
pub(crate) fn targets_table(targets: &[(IpAddr, u16)]) -> Result<Targets, CaptureError> {
    if targets.len() > MAX_TARGETS {
        return Err(CaptureError::TooManyTargets(targets.len()));
    }
    let mut table = Targets::default();
    for (slot, (ip, port)) in table.targets.iter_mut().zip(targets) {
        *slot = target(*ip, *port);
    }
    table.count = targets.len() as u32;
    Ok(table)
}

fn target(ip: IpAddr, port: u16) -> Target {
    let mut addr = [0u32; 4];
    let family = match ip {
        IpAddr::V4(v4) => {
            addr[0] = u32::from_ne_bytes(v4.octets());
            AF_INET
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return target(IpAddr::V4(v4), port);
            }
            for (word, chunk) in addr.iter_mut().zip(v6.octets().chunks_exact(4)) {
                *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
            AF_INET6
        }
    };
    Target { family, port, addr }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (AL2's 5.10 among them).
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        debug!("could not raise RLIMIT_MEMLOCK; fine on 5.11+ kernels, which do not use it");
    }
}

fn is_permission_error(e: &aya::EbpfError) -> bool {
    let text = format!("{e:?}");
    text.contains("PermissionDenied") || text.contains("EPERM") || text.contains("code: 1,")
}

/// Error chain on one line (the verifier log can be long: keep its first line only).
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    let first = s.lines().next().unwrap_or_default();
    first.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn targets_table_encodes_addresses_in_network_order() {
        let t = targets_table(&[
            (IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), 80),
            (IpAddr::V6("fd00:ec2::254".parse::<Ipv6Addr>().unwrap()), 80),
            (
                IpAddr::V6("::ffff:169.254.170.23".parse::<Ipv6Addr>().unwrap()),
                80,
            ),
        ])
        .unwrap();
        assert_eq!(t.count, 3);
        assert_eq!(t.targets[0].family, AF_INET);
        assert_eq!(t.targets[0].addr[0].to_ne_bytes(), [169, 254, 169, 254]);
        assert_eq!(t.targets[1].family, AF_INET6);
        assert_eq!(t.targets[1].addr[0].to_ne_bytes(), [0xfd, 0, 0x0e, 0xc2]);
        assert_eq!(t.targets[1].addr[3].to_ne_bytes(), [0, 0, 0x02, 0x54]);
        // A v4-mapped target is matched as IPv4, as the kernel side reports mapped sockets.
        assert_eq!(t.targets[2].family, AF_INET);
        assert_eq!(t.targets[2].addr[0].to_ne_bytes(), [169, 254, 170, 23]);
    }

    /// The kernel's first test keeps every target port (bit `port % 32`) and rejects the
    /// ports whose bit is clear: with IMDS alone (port 80, bit 16) 443 (bit 27), 5201
    /// (bit 17) and 7000 (bit 24) leave after one load; 8080 (bit 16) goes on to the table.
    #[test]
    fn port_bits_keep_every_target_port() {
        let bits = Settings::port_bits_of([80, 80]);
        assert_eq!(bits, 1 << 16);
        for (port, maybe) in [
            (80u16, true),
            (8080, true),
            (443, false),
            (5201, false),
            (7000, false),
        ] {
            assert_eq!((bits >> (port % 32)) & 1 == 1, maybe, "port {port}");
        }
        assert_eq!(
            Settings::port_bits_of([80, 8081, 31]),
            1 << 16 | 1 << 17 | 1 << 31
        );
        assert_eq!(Settings::port_bits_of([]), 0);
    }

    #[test]
    fn responses_diagnosis_reads_cap_eff() {
        // The unit's set before CAP_NET_ADMIN: BPF (39), PERFMON (38), DAC_READ_SEARCH (2).
        let without = "Name:\timds-snoop\nCapInh:\t0000000000000000\nCapEff:\t000000c000000004\n";
        let why = responses_diagnosis(without).unwrap();
        assert!(
            why.starts_with("this process lacks CAP_NET_ADMIN (CapEff 000000c000000004)"),
            "{why}"
        );
        assert!(!why.contains("6.9"), "{why}");
        // With CAP_NET_ADMIN the capabilities explain nothing.
        assert_eq!(responses_diagnosis("CapEff:\t000000c000001004\n"), None);
        // CAP_SYS_ADMIN alone passes on 6.9+ only.
        let sys_admin = responses_diagnosis("CapEff:\t000000c000200000\n").unwrap();
        assert!(sys_admin.contains("6.9 and later"), "{sys_admin}");
        assert_eq!(responses_diagnosis("no caps here"), None);
    }

    #[test]
    fn the_drop_program_follows_the_kernel() {
        // 6.18 / 6.12 / 6.1: four or three arguments, IP_INHDR in the enum.
        assert_eq!(hop_drop_program(Some(4), 7, (6, 18)), HopDrops::Reason);
        assert_eq!(hop_drop_program(Some(3), 5, (6, 1)), HopDrops::Reason);
        // 5.10: two arguments, no enum.
        assert_eq!(hop_drop_program(Some(2), 0, (5, 10)), HopDrops::Route);
        // 5.17/5.18: the reason exists, ip_forward does not give it yet.
        assert_eq!(hop_drop_program(Some(3), 3, (5, 18)), HopDrops::Route);
        assert_eq!(hop_drop_program(None, 7, (6, 18)), HopDrops::Route);
        assert_eq!(kernel_version("6.12.117+deb12-cloud-amd64"), (6, 12));
        assert_eq!(kernel_version("x"), (0, 0));
    }

    #[test]
    fn too_many_targets_is_an_error() {
        let many = vec![(IpAddr::V4(Ipv4Addr::LOCALHOST), 80); MAX_TARGETS + 1];
        assert!(matches!(
            targets_table(&many),
            Err(CaptureError::TooManyTargets(_))
        ));
    }
}
