//! `cargo xtask vm-test`: the kernel matrix. For each architecture (`--arch x86_64|aarch64`,
//! default both, as `dist` names them; Debian's amd64/arm64 only for apt), boots Debian's
//! cloud kernels 5.10 (bullseye, as on AL2), 6.1 and 6.12 (bookworm, as on AL2023) under
//! qemu (TCG: nested KVM hangs on the CI machine; `qemu-system-x86_64 -M q35` or
//! `qemu-system-aarch64 -M virt`) with an initramfs holding that architecture's static
//! busybox, the static (musl) `imds-snoop` exactly as `cargo xtask dist` builds it and the
//! `vm-guest` runner (tests/vm-guest), and reads each guest's verdict from its serial
//! console. Then runs the same runner on the host kernel in a network namespace of its own
//! (the tracepoint path; with the host's architecture only). Prints a kernel x attach-mode matrix; fails if any cell failed or a
//! kernel did not report. Each run (guest or host) also checks the kernel program's hook
//! prototypes (the `// proto:` lines of imds-snoop-ebpf) against that kernel's own
//! `/sys/kernel/btf/vmlinux` (vm-guest's `protos.rs`): the `protos` column, and a drift fails
//! the kernel's row. The `drop` column is vm-guest's drop check: inside each guest a "pod"
//! namespace routed through a "node" namespace (veth pairs: each kernel's own `veth.ko`,
//! from its package, is in the initramfs and loaded by /init) to the fake IMDS answering token
//! PUTs with TTL 1; the daemon's hop-limit drop hook must log the pod's PUT as dropped.
//!
//! Everything downloaded is a Debian package (kernels, and a foreign architecture's
//! busybox-static, with a private apt state under `target/vm/apt/<dist>-<debian arch>/` so
//! the system's apt lists and dpkg are not changed) or a crate. Cached under `target/vm/`:
//! `kernels/<uname -r>/` (unpacked package; its `veth.ko[.xz]` goes into the initramfs,
//! decompressed: busybox's insmod reads plain ELF), `apt/`, `busybox/<debian arch>/`,
//! `initramfs-<arch>.cpio`, `logs/<kernel>.console.log` (each guest's console), `matrix.md`
//! (the last matrix).
// Reads guest consoles (any bytes a kernel or a broken guest prints): no string slice that
// could panic on them.
#![warn(clippy::string_slice)]

use std::{
    collections::BTreeMap,
    env, fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use imds_snoop_test_support::netns;

use crate::{cmd, dist::Arch};

/// What `cargo xtask vm-test` does (its command line); `Default` is the full matrix.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct VmTestOptions {
    /// Architectures to boot (repeatable); default: x86_64 and aarch64.
    #[arg(long = "arch", value_enum)]
    pub arches: Vec<Arch>,
    /// Kernel series to boot (5.10, 6.1, 6.12); repeatable; default all.
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<String>,
    /// Skip the host-kernel run (the suite in a network namespace on this kernel).
    #[arg(long)]
    pub skip_host: bool,
    /// Skip the VMs (host kernel only).
    #[arg(long)]
    pub skip_vms: bool,
    /// Seconds one VM may take from qemu start to power-off before it counts as hung.
    #[arg(long = "boot-timeout", value_name = "SECONDS", default_value_t = 300)]
    pub boot_timeout_secs: u64,
    /// Resolve the newest kernel packages again (apt update + download) instead of using
    /// the ones cached under target/vm/kernels.
    #[arg(long)]
    pub refresh_kernels: bool,
    /// Stream every guest console (and the host run's stderr) to the terminal; otherwise
    /// only the result lines are shown and the consoles go to target/vm/logs/.
    #[arg(short, long)]
    pub verbose: bool,
}

impl Default for VmTestOptions {
    fn default() -> Self {
        Self {
            arches: Vec::new(),
            kernels: Vec::new(),
            skip_host: false,
            skip_vms: false,
            boot_timeout_secs: 300,
            refresh_kernels: false,
            verbose: false,
        }
    }
}

/// A Debian release whose packages we download with a private apt state.
#[derive(Debug, Clone, Copy)]
enum Dist {
    Bullseye,
    Bookworm,
}

impl Dist {
    fn name(self) -> &'static str {
        match self {
            Dist::Bullseye => "bullseye",
            Dist::Bookworm => "bookworm",
        }
    }
}

/// One kernel of the matrix and what its guest runs (vm-guest specs: `MODE` must attach,
/// `auto=MODE` must pick MODE, `refuse=MODE` must fail cleanly; `:ERRNO` on either: the
/// refusal, or auto's refusal of each hook before MODE, must be that errno).
struct KernelPlan {
    series: &'static str,
    dist: Dist,
    specs: &'static [&'static str],
}

/// None of the three has the `tcp_sendmsg_locked` tracepoint (checked: not in their BTF, the
/// host's 6.18 has it), so there the tracepoint mode must be refused with a clear error; the
/// host kernel runs that path.
const PLAN_X86_64: &[KernelPlan] = &[
    KernelPlan {
        series: "5.10",
        dist: Dist::Bullseye,
        specs: &[
            "fentry",
            "kprobe",
            "refuse=tracepoint",
            "auto=fentry",
            "drop",
        ],
    },
    KernelPlan {
        series: "6.1",
        dist: Dist::Bookworm,
        specs: &[
            "fentry",
            "kprobe",
            "refuse=tracepoint",
            "auto=fentry",
            "drop",
        ],
    },
    KernelPlan {
        series: "6.12",
        dist: Dist::Bookworm,
        specs: &[
            "fentry",
            "kprobe",
            "refuse=tracepoint",
            "auto=fentry",
            "drop",
        ],
    },
];

/// arm64 gained BPF trampolines in 6.0 and the ftrace direct calls fentry needs there in
/// 6.4: 5.10 and 6.1 refuse fentry with ENOTSUPP (524, the kernel's own errno), and `auto`
/// must say so and fall back to the kprobe; 6.12 attaches fentry.
const PLAN_AARCH64: &[KernelPlan] = &[
    KernelPlan {
        series: "5.10",
        dist: Dist::Bullseye,
        specs: &[
            "refuse=fentry:524",
            "kprobe",
            "refuse=tracepoint",
            "auto=kprobe:524",
            "drop",
        ],
    },
    KernelPlan {
        series: "6.1",
        dist: Dist::Bookworm,
        specs: &[
            "refuse=fentry:524",
            "kprobe",
            "refuse=tracepoint",
            "auto=kprobe:524",
            "drop",
        ],
    },
    KernelPlan {
        series: "6.12",
        dist: Dist::Bookworm,
        specs: &[
            "fentry",
            "kprobe",
            "refuse=tracepoint",
            "auto=fentry",
            "drop",
        ],
    },
];

/// How one architecture's kernels are fetched and booted.
struct Machine {
    arch: Arch,
    plan: &'static [KernelPlan],
    /// The qemu program and the Debian package that has it.
    qemu: &'static str,
    qemu_deb: &'static str,
    /// qemu's machine and CPU (TCG).
    machine: &'static [&'static str],
    /// The serial console the kernel writes to.
    console: &'static str,
}

const MACHINES: [Machine; 2] = [
    Machine {
        arch: Arch::X86_64,
        plan: PLAN_X86_64,
        qemu: "qemu-system-x86_64",
        qemu_deb: "qemu-system-x86",
        machine: &["-machine", "q35", "-accel", "tcg", "-cpu", "max"],
        console: "ttyS0",
    },
    Machine {
        arch: Arch::Aarch64,
        plan: PLAN_AARCH64,
        qemu: "qemu-system-aarch64",
        qemu_deb: "qemu-system-arm",
        // Debian's arm64 vmlinuz is an EFI-stub Image that `-kernel` boots directly.
        machine: &["-machine", "virt", "-accel", "tcg", "-cpu", "max"],
        console: "ttyAMA0",
    },
];

fn machine(arch: Arch) -> &'static Machine {
    MACHINES
        .iter()
        .find(|m| m.arch == arch)
        .expect("every Arch has a Machine")
}

/// The host kernel (this project's CI machine, 6.18 under Firecracker) refuses fentry and has
/// no kprobes: only the tracepoint path runs there.
const HOST_SPECS: &[&str] = &["tracepoint", "auto=tracepoint", "drop"];

/// Besides each architecture's qemu.
const DEB_PACKAGES: &[&str] = &["busybox-static", "musl-tools", "iproute2", "xz-utils"];
/// The host's static busybox (package busybox-static), for guests of the host's architecture.
const BUSYBOX: &str = "/bin/busybox";
const MATRIX_MODES: [&str; 4] = ["fentry", "kprobe", "tracepoint", "auto"];
/// The column of vm-guest's `drop` spec: the hop-limit drop hook (`skb:kfree_skb`) loaded,
/// and a TTL-1 token reply dying in a routed "node" namespace logged as dropped.
const DROP: &str = "drop";

pub(crate) fn vm_test(opts: VmTestOptions) -> Result<()> {
    let started = Instant::now();
    let root = cmd::workspace_root();
    let target = env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(|v| root.join(v))
        .unwrap_or_else(|| root.join("target"));
    let vm_dir = target.join("vm");
    fs::create_dir_all(vm_dir.join("logs"))?;

    let mut arches: Vec<Arch> = Vec::new();
    for &a in if opts.arches.is_empty() {
        &[Arch::X86_64, Arch::Aarch64][..]
    } else {
        &opts.arches[..]
    } {
        if !arches.contains(&a) {
            arches.push(a);
        }
    }
    for k in &opts.kernels {
        if !PLAN_X86_64.iter().any(|p| p.series == k) {
            let known: Vec<_> = PLAN_X86_64.iter().map(|p| p.series).collect();
            bail!("unknown kernel series {k:?} (known: {})", known.join(", "));
        }
    }
    // (architecture, its kernels to boot)
    let plans: Vec<(&Machine, Vec<&KernelPlan>)> = if opts.skip_vms {
        Vec::new()
    } else {
        arches
            .iter()
            .map(|&a| {
                let m = machine(a);
                let kernels = m
                    .plan
                    .iter()
                    .filter(|p| {
                        opts.kernels.is_empty() || opts.kernels.iter().any(|k| k == p.series)
                    })
                    .collect();
                (m, kernels)
            })
            .collect()
    };
    // The host run needs binaries of the host's architecture.
    let host_arch = arches
        .iter()
        .copied()
        .find(|a| a.name() == env::consts::ARCH);
    let host = !opts.skip_host && host_arch.is_some();
    if plans.is_empty() && !host {
        bail!(
            "nothing to do: no kernels, and no host run (--skip-host, or no --arch {})",
            env::consts::ARCH
        );
    }

    // (a) tools
    crate::setup::setup(&crate::setup::SetupArgs::default())?;
    let mut debs = DEB_PACKAGES.to_vec();
    debs.extend(plans.iter().map(|(m, _)| m.qemu_deb));
    ensure_debs(&debs)?;

    // (b) kernels, and busybox for guests of a foreign architecture
    let mut kernels = Vec::new();
    for (m, arch_plans) in &plans {
        let mut ks = Vec::new();
        for plan in arch_plans {
            let k = kernel(&root, &vm_dir, m.arch, plan, opts.refresh_kernels)
                .with_context(|| format!("getting the {} {} kernel", m.arch.name(), plan.series))?;
            ks.push((*plan, k));
        }
        let busybox = busybox(&root, &vm_dir, m.arch)
            .with_context(|| format!("getting busybox for {}", m.arch.name()))?;
        kernels.push((*m, ks, busybox));
    }

    // (c) static binaries, per architecture: the daemon as `cargo xtask dist` builds and
    // checks it (one BPF object, its kprobe reading this architecture's registers), and the
    // guest runner
    let mut binaries = BTreeMap::new();
    for arch in arches
        .iter()
        .copied()
        .filter(|a| plans.iter().any(|(m, _)| m.arch == *a) || (host && Some(*a) == host_arch))
    {
        binaries.insert(arch.name(), build_static(arch)?);
    }

    // (d) one initramfs per architecture, shared by its kernels (the specs come on the
    // kernel command line)
    let mut initrds = BTreeMap::new();
    for (m, ks, busybox) in &kernels {
        let (daemon, guest) = &binaries[m.arch.name()];
        let initrd = vm_dir.join(format!("initramfs-{}.cpio", m.arch.name()));
        write_initramfs(
            &initrd,
            &root.join("tests/vm/init.sh"),
            busybox,
            daemon,
            guest,
            &ks.iter().map(|(_, k)| k).collect::<Vec<_>>(),
        )?;
        initrds.insert(m.arch.name(), initrd);
    }

    // (e) boots, one after the other (CI has two cores, shared)
    let mut rows = Vec::new();
    let mut arch_secs = Vec::new();
    for (m, ks, _) in &kernels {
        let arch_started = Instant::now();
        for (plan, k) in ks {
            eprintln!(
                "\nvm-test: booting {} ({} {}) : {}",
                k.version,
                m.arch.name(),
                plan.series,
                plan.specs.join(" ")
            );
            rows.push(boot(
                m,
                k,
                plan.specs,
                &initrds[m.arch.name()],
                &vm_dir,
                &opts,
            ));
        }
        arch_secs.push((
            m.arch.name(),
            ks.len(),
            arch_started.elapsed().as_secs_f64(),
        ));
    }

    // (f) the host kernel, in a network namespace of ours
    if let (true, Some(arch)) = (host, host_arch) {
        eprintln!(
            "\nvm-test: host kernel, in a network namespace: {}",
            HOST_SPECS.join(" ")
        );
        let (daemon, guest) = &binaries[arch.name()];
        rows.push(host_run(daemon, guest, &vm_dir, &opts));
    }

    // (g) the matrix
    let table = matrix(&rows);
    eprintln!();
    println!("{table}");
    let md = markdown(&rows);
    let _ = fs::write(vm_dir.join("matrix.md"), &md);
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.ok()).collect();
    // Cells: one per kernel and attach mode; a kernel that failed outside any mode (did not
    // boot, hung, a spec did not report) and has no failed cell counts as one failure.
    let cells_passed: usize = rows
        .iter()
        .map(|r| r.results.values().filter(|m| m.pass).count())
        .sum();
    let cells_failed: usize = rows
        .iter()
        .map(|r| {
            let bad = r.results.values().filter(|m| !m.pass).count();
            if bad == 0 && !r.errors.is_empty() {
                1
            } else {
                bad
            }
        })
        .sum();
    for (arch, n, secs) in &arch_secs {
        println!("vm-test: {arch}: {n} kernel(s) booted in {secs:.0}s");
    }
    println!("vm-test: {cells_passed} passed, {cells_failed} failed");
    println!(
        "vm-test: {} kernel(s), {} failed, {:.0}s in all (matrix also in {})",
        rows.len(),
        failed.len(),
        started.elapsed().as_secs_f64(),
        vm_dir.join("matrix.md").display()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        let names: Vec<&str> = failed.iter().map(|r| r.kernel.as_str()).collect();
        bail!(
            "kernel matrix failed on: {} (consoles in {})",
            names.join(", "),
            vm_dir.join("logs").display()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

fn deb_installed(name: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .ok()
        .flatten()
        .is_some_and(|s| s.contains("install ok installed"))
}

fn ensure_debs(names: &[&str]) -> Result<()> {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !deb_installed(n))
        .collect();
    for n in names.iter().filter(|n| !missing.contains(n)) {
        println!("ok: {n} (vm-test)");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "vm-test needs {} installed: run as root, or `apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("installing: {} (vm-test)", missing.join(" "));
    let install = || {
        let mut c = cmd::command("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "-o",
                "DPkg::Lock::Timeout=300",
                "install",
                "-y",
                "--no-install-recommends",
            ])
            .args(&missing);
        cmd::run(&mut c)
    };
    if install().is_err() {
        // A fresh machine may have no package lists yet.
        let mut update = cmd::command("apt-get");
        update.args(["-o", "DPkg::Lock::Timeout=300", "update"]);
        cmd::run(&mut update)?;
        install()?;
    }
    Ok(())
}

/// Builds `imds-snoop` exactly as `cargo xtask dist` does (the binary the tarball and the
/// image ship; its build.rs embeds the eBPF object, built for this `bpf_target_arch`) and
/// checks it as dist does, then builds `vm-guest`; both static for musl.
fn build_static(arch: Arch) -> Result<(PathBuf, PathBuf)> {
    let daemon = crate::dist::build_binary(arch)?;
    crate::dist::inspect_binary(&daemon, arch)?;
    let guest = crate::dist::build_package(arch, "vm-guest")?;
    for bin in [&daemon, &guest] {
        if is_dynamic(bin)? {
            bail!(
                "{} is dynamically linked; the initramfs has no libc",
                bin.display()
            );
        }
    }
    Ok((daemon, guest))
}

/// Whether an ELF file asks for a program interpreter (PT_INTERP), i.e. is not static.
fn is_dynamic(path: &Path) -> Result<bool> {
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{}: truncated ELF header", path.display());
    };
    Ok((0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(3)))
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    version: String,
    vmlinuz: PathBuf,
    /// The kernel's own veth module from its package (`veth.ko`, or `veth.ko.xz` where the
    /// package compresses its modules: Debian's 6.12 does, 5.10 and 6.1 do not). Debian's
    /// cloud kernels build veth as a module (`CONFIG_VETH=m`), and the guests' routed
    /// pod -> node -> imds topology needs it.
    veth: PathBuf,
}

/// Sort key of a kernel package of `series` for Debian architecture `debian_arch`, e.g.
/// `linux-image-6.1.0-56-cloud-amd64` -> [0, 56]; `linux-image-6.12.117+deb12-cloud-arm64`
/// -> [117, 12]; None for other packages (other series or architectures, -dbg, -unsigned,
/// meta packages).
fn series_key(series: &str, debian_arch: &str, package: &str) -> Option<Vec<u64>> {
    let rest = package
        .strip_prefix("linux-image-")?
        .strip_prefix(series)?
        .strip_prefix('.')?;
    let middle = rest.strip_suffix(debian_arch)?.strip_suffix("-cloud-")?;
    if !middle.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let key: Vec<u64> = middle
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    Some(key)
}

fn kernel(
    root: &Path,
    vm_dir: &Path,
    arch: Arch,
    plan: &KernelPlan,
    refresh: bool,
) -> Result<Kernel> {
    let debian_arch = arch.debian();
    let kernels = vm_dir.join("kernels");
    fs::create_dir_all(&kernels)?;
    if !refresh && let Some(k) = cached_kernel(&kernels, plan.series, debian_arch)? {
        println!("ok: kernel {} (cached in {})", k.version, kernels.display());
        return Ok(k);
    }

    let apt = PrivateApt::new(root, vm_dir, plan.dist, arch)?;
    apt.update(refresh)?;
    let names = apt.output(&["pkgnames", "linux-image-"], "apt-cache")?;
    let mut candidates: Vec<(Vec<u64>, String)> = names
        .lines()
        .filter_map(|n| {
            series_key(plan.series, debian_arch, n.trim()).map(|k| (k, n.trim().to_owned()))
        })
        .collect();
    candidates.sort();
    candidates.reverse();
    // The newest one already unpacked, or else that the mirror actually serves: the lists
    // name packages that are only referenced, or (bullseye-security's arm64 kernels, here)
    // listed but not downloadable.
    let debs = vm_dir.join("debs");
    fs::create_dir_all(&debs)?;
    let mut refused = Vec::new();
    let mut found = None;
    for (_, package) in &candidates {
        let version = package.trim_start_matches("linux-image-").to_owned();
        let dest = kernels.join(&version);
        if dest.join(".complete").is_file() {
            println!("ok: kernel {version} (cached)");
            return load_kernel(&dest, &version);
        }
        match apt.download(package, &debs) {
            Ok(deb) => {
                found = Some((package.clone(), version, dest, deb));
                break;
            }
            Err(e) => {
                // apt's own reason (`E: Failed to fetch URL  404  Not Found ...`), not the
                // whole command line.
                let e = format!("{e:#}");
                let why = e.rsplit("`: ").next().unwrap_or(&e);
                eprintln!("vm-test: {package} not downloadable, trying an older one: {why}");
                refused.push(package.clone());
            }
        }
    }
    let Some((package, version, dest, deb)) = found else {
        bail!(
            "no linux-image-{}.*-cloud-{debian_arch} package downloadable from {} (tried: {})",
            plan.series,
            plan.dist.name(),
            if refused.is_empty() {
                "none listed".to_owned()
            } else {
                refused.join(", ")
            }
        );
    };
    println!(
        "installing: kernel {package} (apt-get download from {}, unpacked to {})",
        plan.dist.name(),
        dest.display()
    );
    let tmp = kernels.join(format!(".unpack-{version}"));
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(&dest);
    let mut x = cmd::command("dpkg-deb");
    x.arg("-x").arg(&deb).arg(&tmp);
    cmd::run(&mut x)?;
    fs::write(
        tmp.join(".complete"),
        format!(
            "{}\n",
            deb.file_name().unwrap_or_default().to_string_lossy()
        ),
    )?;
    fs::rename(&tmp, &dest)?;
    let _ = fs::remove_file(&deb);
    // Older kernels of the same series are not booted any more.
    for e in fs::read_dir(&kernels)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != version
            && series_key(plan.series, debian_arch, &format!("linux-image-{name}")).is_some()
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    load_kernel(&dest, &version)
}

/// The static busybox for guests of `arch`: the host's (busybox-static) when it is the host's
/// architecture, else Debian bookworm's busybox-static for `arch`, downloaded and unpacked
/// under `busybox/<debian arch>/` once.
fn busybox(root: &Path, vm_dir: &Path, arch: Arch) -> Result<PathBuf> {
    if arch.name() == env::consts::ARCH {
        return Ok(PathBuf::from(BUSYBOX));
    }
    let dir = vm_dir.join("busybox").join(arch.debian());
    let bin = dir.join("bin/busybox");
    if dir.join(".complete").is_file() && bin.is_file() {
        println!(
            "ok: busybox-static {} (cached in {})",
            arch.debian(),
            dir.display()
        );
        return Ok(bin);
    }
    let apt = PrivateApt::new(root, vm_dir, Dist::Bookworm, arch)?;
    apt.update(false)?;
    let debs = vm_dir.join("debs");
    fs::create_dir_all(&debs)?;
    let deb = apt.download("busybox-static", &debs)?;
    println!(
        "installing: busybox-static {} (apt-get download, unpacked to {})",
        arch.debian(),
        dir.display()
    );
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut x = cmd::command("dpkg-deb");
    x.arg("-x").arg(&deb).arg(&dir);
    cmd::run(&mut x)?;
    let _ = fs::remove_file(&deb);
    if !bin.is_file() {
        bail!("busybox-static {} has no bin/busybox", arch.debian());
    }
    fs::write(dir.join(".complete"), "")?;
    Ok(bin)
}

/// The newest completely unpacked kernel of `series` under `kernels/`.
fn cached_kernel(kernels: &Path, series: &str, debian_arch: &str) -> Result<Option<Kernel>> {
    let mut found: Vec<(Vec<u64>, String)> = Vec::new();
    for e in fs::read_dir(kernels)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(key) = series_key(series, debian_arch, &format!("linux-image-{name}"))
            && e.path().join(".complete").is_file()
        {
            found.push((key, name));
        }
    }
    found.sort();
    match found.pop() {
        Some((_, version)) => load_kernel(&kernels.join(&version), &version).map(Some),
        None => Ok(None),
    }
}

fn load_kernel(dir: &Path, version: &str) -> Result<Kernel> {
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        bail!(
            "{} missing (delete {} to fetch it again)",
            vmlinuz.display(),
            dir.display()
        );
    }
    let net = dir
        .join("lib/modules")
        .join(version)
        .join("kernel/drivers/net");
    let Some(veth) = ["veth.ko", "veth.ko.xz"]
        .iter()
        .map(|f| net.join(f))
        .find(|p| p.is_file())
    else {
        bail!(
            "no veth.ko or veth.ko.xz under {} (the guests need veth: delete {} to fetch the \
             kernel again)",
            net.display(),
            dir.display()
        );
    };
    Ok(Kernel {
        version: version.to_owned(),
        vmlinuz,
        veth,
    })
}

/// A kernel module's bytes as `insmod` takes them: busybox's insmod reads plain ELF only,
/// so an `.xz` module is decompressed here (by `xz -dc`, xz-utils) and checked to be ELF.
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let bytes = if path.extension().is_some_and(|e| e == "xz") {
        let mut xz = cmd::command("xz");
        xz.arg("-dc").arg(path);
        let out = xz
            .output()
            .with_context(|| format!("running {}", cmd::display(&xz)))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                cmd::display(&xz),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        out.stdout
    } else {
        fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    if !bytes.starts_with(b"\x7fELF") {
        bail!("{} is not an ELF kernel module", path.display());
    }
    Ok(bytes)
}

/// apt with its own sources list, lists and cache under target/vm/apt/<dist>-<debian arch>/,
/// for one architecture (a foreign one too: only `apt-get download` and `dpkg-deb -x` are
/// used, never the system's dpkg): downloads do not depend on, or change, the machine's apt
/// configuration.
struct PrivateApt {
    opts: Vec<String>,
    lists: PathBuf,
}

impl PrivateApt {
    fn new(root: &Path, vm_dir: &Path, dist: Dist, arch: Arch) -> Result<Self> {
        let sources = root.join("tests/vm").join(format!("{}.list", dist.name()));
        if !sources.is_file() {
            bail!("{} missing", sources.display());
        }
        let base = vm_dir
            .join("apt")
            .join(format!("{}-{}", dist.name(), arch.debian()));
        let lists = base.join("lists");
        let cache = base.join("cache");
        let parts = base.join("sources.list.d");
        for d in [
            lists.join("partial"),
            cache.join("archives/partial"),
            parts.clone(),
        ] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let opts = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            format!("Dir::Etc::SourceParts={}", parts.display()),
            format!("Dir::State::Lists={}", lists.display()),
            format!("Dir::Cache={}", cache.display()),
            "Acquire::Languages=none".into(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
            "APT::Sandbox::User=root".into(),
            format!("APT::Architecture={}", arch.debian()),
            format!("APT::Architectures::={}", arch.debian()),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect();
        Ok(Self { opts, lists })
    }

    fn command(&self, program: &str) -> Command {
        let mut c = cmd::command(program);
        c.args(&self.opts);
        c
    }

    fn output(&self, args: &[&str], program: &str) -> Result<String> {
        let mut c = self.command(program);
        c.args(args);
        cmd::output_or_reason(&mut c).map_err(|e| anyhow!("`{}`: {e}", cmd::display(&c)))
    }

    /// `apt-get download package` into `debs`; returns the .deb.
    fn download(&self, package: &str, debs: &Path) -> Result<PathBuf> {
        let mut dl = self.command("apt-get");
        dl.current_dir(debs).args(["download", package]);
        cmd::output_or_reason(&mut dl).map_err(|e| anyhow!("`{}`: {e}", cmd::display(&dl)))?;
        fs::read_dir(debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| {
                anyhow!(
                    "apt-get download {package} left no .deb in {}",
                    debs.display()
                )
            })
    }

    /// `apt-get update` into the private lists, unless they are there already.
    fn update(&self, force: bool) -> Result<()> {
        let have_lists = fs::read_dir(&self.lists)?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"));
        if have_lists && !force {
            return Ok(());
        }
        let mut c = self.command("apt-get");
        c.arg("update");
        eprintln!("vm-test: {}", cmd::display(&c));
        cmd::run(&mut c)
    }
}

// ---------------------------------------------------------------------------------------------
// Initramfs (cpio "newc", written here: no cpio tool needed, no root for the device node)
// ---------------------------------------------------------------------------------------------

struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let name = name.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime: reproducible
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.ino += 1;
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, data: &[u8]) {
        self.entry(name, 0o100755, (0, 0), data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    fn chardev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

/// The initramfs of one architecture: busybox, /init, the daemon, vm-guest, and each of
/// `kernels`' veth module at `lib/modules/<uname -r>/veth.ko` (init.sh loads the running
/// kernel's).
fn write_initramfs(
    out: &Path,
    init: &Path,
    busybox: &Path,
    daemon: &Path,
    guest: &Path,
    kernels: &[&Kernel],
) -> Result<()> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    if is_dynamic(busybox)? {
        bail!(
            "{} is not static: install busybox-static",
            busybox.display()
        );
    }
    let mut c = Cpio::new();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "etc",
    ] {
        c.dir(d);
    }
    // The kernel opens /dev/console for init before anything is mounted.
    c.chardev("dev/console", 5, 1);
    c.chardev("dev/null", 1, 3);
    c.file("bin/busybox", &read(busybox)?);
    c.symlink("bin/sh", "busybox");
    c.file("init", &read(init)?);
    c.file("imds-snoop", &read(daemon)?);
    c.file("vm-guest", &read(guest)?);
    c.dir("lib");
    c.dir("lib/modules");
    for k in kernels {
        let dir = format!("lib/modules/{}", k.version);
        c.dir(&dir);
        c.file(&format!("{dir}/veth.ko"), &module_bytes(&k.veth)?);
    }
    let bytes = c.finish();
    fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "vm-test: initramfs {} ({:.1} MiB)",
        out.display(),
        bytes.len() as f64 / (1 << 20) as f64
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Runs and results
// ---------------------------------------------------------------------------------------------

/// One `IMDS-RESULT` line of vm-guest.
#[derive(Debug, Clone)]
struct ModeResult {
    pass: bool,
    refused: bool,
    attached: String,
    events: u64,
    secs: f64,
    reason: Option<String>,
    /// The errno the refusal (or `auto`'s refusals before its choice) was checked for.
    errno: Option<i32>,
}

/// One kernel's row of the matrix.
struct Row {
    kernel: String,
    label: String,
    /// Matrix column (`fentry`, `kprobe`, `tracepoint`, `auto`) -> result.
    results: BTreeMap<String, ModeResult>,
    /// Problems outside any one mode (did not boot, hung, a spec did not report).
    errors: Vec<String>,
    secs: f64,
}

impl Row {
    fn ok(&self) -> bool {
        self.errors.is_empty() && self.results.values().all(|r| r.pass)
    }
}

/// The `key=value` words of a guest's `PREFIX...` line, and its free-text `reason=` (always
/// last, may hold spaces).
fn guest_fields<'a>(
    line: &'a str,
    prefix: &str,
) -> Option<(BTreeMap<&'a str, &'a str>, Option<String>)> {
    let rest = line.strip_prefix(prefix)?;
    let (fields, reason) = match rest.split_once(" reason=") {
        Some((f, r)) => (f, Some(r.to_owned())),
        None => (rest, None),
    };
    let kv = fields
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .collect();
    Some((kv, reason))
}

/// The matrix column of the hook prototype check.
const PROTOS: &str = "protos";

/// Parses `IMDS-PROTOS kernel=K result=pass|fail hooks=N [reason=...]` (vm-guest's hook
/// prototype check) into the `protos` column's result (`events`: hooks checked).
fn parse_protos(line: &str) -> Option<(String, ModeResult)> {
    let (kv, reason) = guest_fields(line, "IMDS-PROTOS ")?;
    let result = ModeResult {
        pass: kv.get("result") == Some(&"pass"),
        refused: false,
        attached: "-".into(),
        events: kv.get("hooks").and_then(|v| v.parse().ok()).unwrap_or(0),
        secs: 0.0,
        reason,
        errno: None,
    };
    Some((kv.get("kernel")?.to_string(), result))
}

/// Parses `IMDS-RESULT kernel=K mode=M [expect=refused] [errno=E] attached=A result=R
/// events=N secs=S [reason=...]`.
fn parse_result(line: &str) -> Option<(String, String, ModeResult)> {
    let (kv, reason) = guest_fields(line, "IMDS-RESULT ")?;
    let result = ModeResult {
        pass: kv.get("result") == Some(&"pass"),
        refused: kv.get("expect") == Some(&"refused"),
        attached: kv.get("attached").unwrap_or(&"-").to_string(),
        events: kv.get("events").and_then(|v| v.parse().ok()).unwrap_or(0),
        secs: kv.get("secs").and_then(|v| v.parse().ok()).unwrap_or(0.0),
        reason,
        errno: kv.get("errno").and_then(|v| v.parse().ok()),
    };
    Some((
        kv.get("kernel")?.to_string(),
        kv.get("mode")?.to_string(),
        result,
    ))
}

/// The matrix column of a vm-guest spec (`fentry`, `refuse=fentry:524`, `auto=kprobe:524`).
fn spec_column(spec: &str) -> &str {
    if spec.starts_with("auto=") {
        "auto"
    } else {
        let mode = spec.strip_prefix("refuse=").unwrap_or(spec);
        mode.split(':').next().unwrap_or(mode)
    }
}

/// Collects the result lines of one run into a row; specs without a result are errors.
fn collect(
    kernel: &str,
    label: String,
    specs: &[&str],
    lines: &[String],
    mut errors: Vec<String>,
    secs: f64,
) -> Row {
    let mut results = BTreeMap::new();
    for l in lines {
        if let Some((k, mode, r)) = parse_result(l) {
            if k != kernel {
                errors.push(format!("a result for kernel {k} came from {kernel}"));
            }
            results.insert(mode, r);
        } else if let Some((k, r)) = parse_protos(l) {
            if k != kernel {
                errors.push(format!(
                    "a prototype check for kernel {k} came from {kernel}"
                ));
            }
            results.insert(PROTOS.to_owned(), r);
        }
    }
    if !results.contains_key(PROTOS) {
        errors.push("hook prototypes: not checked (no IMDS-PROTOS line)".into());
    }
    for spec in specs {
        if !results.contains_key(spec_column(spec)) {
            errors.push(format!("{spec}: did not report"));
        }
    }
    Row {
        kernel: kernel.to_owned(),
        label,
        results,
        errors,
        secs,
    }
}

/// Streams a child's output lines into a channel (and a log file), from a thread.
fn pump(reader: impl std::io::Read + Send + 'static, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Reads lines from `rx` until the senders are gone or `deadline`; each line goes to `log`,
/// result lines (or, with `verbose`, all lines) to the terminal. Returns (lines, timed out).
///
/// Once the guest's /init says `IMDS-EXIT` only [`POWER_OFF_GRACE`] more is waited for.
fn read_lines(
    rx: &mpsc::Receiver<String>,
    mut deadline: Instant,
    log: &mut fs::File,
    verbose: bool,
    tag: &str,
) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (lines, true);
        }
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                let line = strip_controls(&line);
                if verbose
                    || line.starts_with("IMDS-RESULT")
                    || line.starts_with("IMDS-BOOT")
                    || line.starts_with("IMDS-PROTOS")
                    || (line.starts_with("IMDS-PROTO ") && line.contains("result=DRIFT"))
                {
                    eprintln!("  [{tag}] {line}");
                }
                if line.starts_with("IMDS-EXIT") {
                    deadline = deadline.min(Instant::now() + POWER_OFF_GRACE);
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => return (lines, true),
            Err(mpsc::RecvTimeoutError::Disconnected) => return (lines, false),
        }
    }
}

/// Without terminal escapes and stray carriage returns (the serial console has both).
fn strip_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    // A kernel message may land in front of ours on the same console line.
    match out.find("IMDS-") {
        Some(i) if i > 0 => out.split_off(i),
        _ => out,
    }
}

/// How long a guest may take to power off after its /init has printed `IMDS-EXIT`.
const POWER_OFF_GRACE: Duration = Duration::from_secs(20);

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn boot(
    m: &Machine,
    k: &Kernel,
    specs: &[&str],
    initrd: &Path,
    vm_dir: &Path,
    opts: &VmTestOptions,
) -> Row {
    let started = Instant::now();
    let label = k.version.clone();
    let fail = |e: String| Row {
        kernel: k.version.clone(),
        label: label.clone(),
        results: BTreeMap::new(),
        errors: vec![e],
        secs: started.elapsed().as_secs_f64(),
    };
    let log_path = vm_dir
        .join("logs")
        .join(format!("{}.console.log", k.version));
    let mut log = match fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => return fail(format!("creating {}: {e}", log_path.display())),
    };
    let append = format!(
        "console={} panic=-1 quiet -- {}",
        m.console,
        specs.join(" ")
    );
    let mut qemu = cmd::command(m.qemu);
    qemu.args(m.machine)
        .args(["-m", "1024", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let _ = writeln!(log, "# {}", cmd::display(&qemu));
    let mut child = match qemu.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start {}: {e}", m.qemu)),
    };
    let (tx, rx) = mpsc::channel();
    pump(child.stdout.take().expect("piped"), tx.clone());
    pump(child.stderr.take().expect("piped"), tx);
    let deadline = started + Duration::from_secs(opts.boot_timeout_secs);
    let (lines, timed_out) = read_lines(&rx, deadline, &mut log, opts.verbose, &k.version);
    let mut errors = Vec::new();
    let exited = lines.iter().any(|l| l.starts_with("IMDS-EXIT"));
    if timed_out && exited {
        kill(&mut child);
        eprintln!(
            "vm-test: WARNING: {} did not power off after its tests ended (killed)",
            k.version
        );
    } else if timed_out {
        kill(&mut child);
        errors.push(format!(
            "no power-off within {}s (hung? see {})",
            opts.boot_timeout_secs,
            log_path.display()
        ));
    } else {
        // Output closed: qemu is exiting.
        let exit = Instant::now() + Duration::from_secs(10);
        while Instant::now() < exit && matches!(child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(50));
        }
        kill(&mut child);
    }
    if !lines.iter().any(|l| l.starts_with("IMDS-BOOT")) {
        let tail: Vec<&str> = lines.iter().rev().take(5).map(String::as_str).collect();
        errors.push(format!(
            "the guest never reached /init; console tail: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    } else if !lines.iter().any(|l| l.starts_with("IMDS-DONE")) {
        errors.push(format!(
            "vm-guest did not finish (see {})",
            log_path.display()
        ));
    }
    // The kernel as the guest saw it must be the one we meant to boot.
    let seen = lines
        .iter()
        .find_map(|l| l.strip_prefix("IMDS-INFO kernel="))
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_owned);
    if let Some(seen) = &seen
        && seen != &k.version
    {
        errors.push(format!("booted {} but the guest runs {seen}", k.version));
    }
    collect(
        &k.version,
        label,
        specs,
        &lines,
        errors,
        started.elapsed().as_secs_f64(),
    )
}

/// The host cell's network namespace: `imds-vmtest-<pid>` (tests/support's [`netns::imds_namespace`]).
const NETNS_PREFIX: &str = "imds-vmtest-";

/// The guest runner on this machine's kernel, inside a network namespace we create: the
/// IMDS addresses exist only on that namespace's `lo`.
fn host_run(daemon: &Path, guest: &Path, vm_dir: &Path, opts: &VmTestOptions) -> Row {
    let started = Instant::now();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let label = format!("{kernel} (host)");
    let fail = |e: String| Row {
        kernel: kernel.clone(),
        label: label.clone(),
        results: BTreeMap::new(),
        errors: vec![e],
        secs: started.elapsed().as_secs_f64(),
    };
    if !cmd::is_root() {
        return fail("the host run needs root (network namespace, BPF)".into());
    }
    let workdir = vm_dir.join("host");
    if let Err(e) = fs::create_dir_all(&workdir) {
        return fail(format!("creating {}: {e}", workdir.display()));
    }
    let log_path = vm_dir.join("logs").join("host.log");
    let mut log = match fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => return fail(format!("creating {}: {e}", log_path.display())),
    };
    let ns = match netns::imds_namespace(NETNS_PREFIX) {
        Ok(ns) => ns,
        Err(e) => return fail(format!("network namespace: {e:#}")),
    };
    let mut run = cmd::command("ip");
    // `ip netns exec` remounts /sys in a private mount namespace, which hides the host's
    // cgroup mounts: mount cgroup2 there again (private to that namespace) so the daemon can
    // attach its response program (cgroup_skb) on the root cgroup, as on a node.
    run.args(["netns", "exec", ns.name(), "sh", "-c"])
        .arg("mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null; exec \"$0\" \"$@\"")
        .arg(guest)
        .arg("--daemon")
        .arg(daemon)
        .arg("--workdir")
        .arg(&workdir)
        // Other tests on this machine may trace their own fake IMDS meanwhile.
        .arg("--ignore-foreign")
        .args(HOST_SPECS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let _ = writeln!(log, "# {}", cmd::display(&run));
    let mut child = match run.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start vm-guest: {e}")),
    };
    let (tx, rx) = mpsc::channel();
    pump(child.stdout.take().expect("piped"), tx.clone());
    pump(child.stderr.take().expect("piped"), tx);
    let (lines, timed_out) = read_lines(
        &rx,
        started + Duration::from_secs(300),
        &mut log,
        opts.verbose,
        "host",
    );
    let mut errors = Vec::new();
    if timed_out {
        errors.push(format!(
            "vm-guest still running after 300s (see {})",
            log_path.display()
        ));
    }
    kill(&mut child);
    drop(ns);
    collect(
        &kernel,
        label,
        HOST_SPECS,
        &lines,
        errors,
        started.elapsed().as_secs_f64(),
    )
}

// ---------------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------------

fn cell(r: Option<&ModeResult>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r.refused && r.pass => match r.errno {
            Some(e) => format!("refused {e} (ok)"),
            None => "refused (ok)".into(),
        },
        Some(r) if r.refused => "FAIL (not refused)".into(),
        Some(r) => format!(
            "{} {}ev {:.1}s",
            if r.pass { "pass" } else { "FAIL" },
            r.events,
            r.secs
        ),
    }
}

fn auto_cell(r: Option<&ModeResult>) -> String {
    match r {
        Some(r) if !r.refused => {
            format!(
                "{} ->{} {}ev {:.1}s",
                if r.pass { "pass" } else { "FAIL" },
                r.attached,
                r.events,
                r.secs
            )
        }
        other => cell(other),
    }
}

/// The drop column: the hook vm-guest saw loaded (`attached=`: `kfree_skb-reason` or
/// `kfree_skb-route`, see vm-guest's drop_check.rs; `none` when the
/// daemon said it cannot load it on this kernel) and the lines checked.
fn drop_cell(r: Option<&ModeResult>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r.attached == "none" => "FAIL (no hook)".into(),
        Some(r) => format!(
            "{} {} {}ev {:.1}s",
            if r.pass { "pass" } else { "FAIL" },
            r.attached,
            r.events,
            r.secs
        ),
    }
}

fn row_cells(row: &Row) -> Vec<String> {
    let mut cells = vec![row.label.clone()];
    for m in MATRIX_MODES {
        let r = row.results.get(m);
        cells.push(if m == "auto" { auto_cell(r) } else { cell(r) });
    }
    cells.push(drop_cell(row.results.get(DROP)));
    cells.push(match row.results.get(PROTOS) {
        None => "-".into(),
        Some(r) if r.pass => format!("ok {} hooks", r.events),
        Some(_) => "DRIFT".into(),
    });
    cells.push(if row.ok() {
        "PASS".into()
    } else {
        "FAIL".into()
    });
    cells.push(format!("{:.0}s", row.secs));
    cells
}

const HEADER: [&str; 9] = [
    "kernel",
    "fentry",
    "kprobe",
    "tracepoint",
    "auto",
    DROP,
    PROTOS,
    "kernel result",
    "time",
];

fn matrix(rows: &[Row]) -> String {
    let table: Vec<Vec<String>> = std::iter::once(HEADER.iter().map(|s| s.to_string()).collect())
        .chain(rows.iter().map(row_cells))
        .collect();
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::from("imds-snoop kernel matrix (ev = trace lines checked)\n");
    for (n, r) in table.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if n == 0 {
            out.push_str(
                &widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  "),
            );
            out.push('\n');
        }
    }
    let mut problems = Vec::new();
    for row in rows {
        for e in &row.errors {
            problems.push(format!("  {}: {e}", row.label));
        }
        for (mode, r) in &row.results {
            if !r.pass {
                problems.push(format!(
                    "  {} {mode}: {}",
                    row.label,
                    r.reason.as_deref().unwrap_or("failed")
                ));
            }
        }
    }
    if !problems.is_empty() {
        out.push_str("\nfailures:\n");
        out.push_str(&problems.join("\n"));
        out.push('\n');
    }
    out
}

fn markdown(rows: &[Row]) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        HEADER.join(" | "),
        "---|".repeat(HEADER.len())
    );
    for row in rows {
        out.push_str(&format!("| {} |\n", row_cells(row).join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_package_names() {
        let key = |series, package| series_key(series, "amd64", package);
        assert_eq!(
            key("6.1", "linux-image-6.1.0-56-cloud-amd64"),
            Some(vec![0, 56])
        );
        assert_eq!(
            key("6.12", "linux-image-6.12.117+deb12-cloud-amd64"),
            Some(vec![117, 12])
        );
        assert_eq!(
            key("5.10", "linux-image-5.10.0-46-cloud-amd64"),
            Some(vec![0, 46])
        );
        assert_eq!(key("6.1", "linux-image-6.12.117+deb12-cloud-amd64"), None);
        assert_eq!(key("6.1", "linux-image-6.1.0-56-cloud-amd64-dbg"), None);
        assert_eq!(
            key("6.1", "linux-image-6.1.0-56-cloud-amd64-unsigned"),
            None
        );
        assert_eq!(key("6.12", "linux-image-6.12-cloud-amd64"), None);
        assert_eq!(key("6.1", "linux-image-cloud-amd64"), None);
        // The other architecture's packages are not this one's.
        assert_eq!(key("6.1", "linux-image-6.1.0-57-cloud-arm64"), None);
        assert_eq!(
            series_key("6.1", "arm64", "linux-image-6.1.0-57-cloud-arm64"),
            Some(vec![0, 57])
        );
        assert_eq!(
            series_key("5.10", "arm64", "linux-image-5.10.0-30-cloud-amd64"),
            None
        );
    }

    #[test]
    fn every_arch_plans_every_mode_of_the_same_kernels() {
        for m in &MACHINES {
            let series: Vec<&str> = m.plan.iter().map(|p| p.series).collect();
            assert_eq!(series, ["5.10", "6.1", "6.12"], "{}", m.arch.name());
            for p in m.plan {
                let columns: Vec<&str> = p.specs.iter().map(|s| spec_column(s)).collect();
                assert_eq!(columns, ["fentry", "kprobe", "tracepoint", "auto", "drop"]);
            }
        }
        assert_eq!(spec_column("refuse=fentry:524"), "fentry");
        assert_eq!(spec_column("auto=kprobe:524"), "auto");
    }

    #[test]
    fn result_lines() {
        let (k, m, r) = parse_result(
            "IMDS-RESULT kernel=6.1.0-56-cloud-amd64 mode=auto attached=fentry result=pass events=15 secs=2.5",
        )
        .unwrap();
        assert_eq!((k.as_str(), m.as_str()), ("6.1.0-56-cloud-amd64", "auto"));
        assert!(r.pass && !r.refused && r.attached == "fentry" && r.events == 15);
        let (_, m, r) = parse_result(
            "IMDS-RESULT kernel=5.10 mode=tracepoint expect=refused attached=- result=fail events=0 secs=1.0 reason=a b=c",
        )
        .unwrap();
        assert_eq!(m, "tracepoint");
        assert!(!r.pass && r.refused);
        assert_eq!(r.reason.as_deref(), Some("a b=c"));
        let (_, m, r) = parse_result(
            "IMDS-RESULT kernel=6.1.0-57-cloud-arm64 mode=fentry expect=refused errno=524 attached=- result=pass events=0 secs=3.0",
        )
        .unwrap();
        assert_eq!((m.as_str(), r.errno), ("fentry", Some(524)));
        assert_eq!(cell(Some(&r)), "refused 524 (ok)");
        let (_, m, r) = parse_result(
            "IMDS-RESULT kernel=5.10.0-46-cloud-amd64 mode=drop attached=kfree_skb-route result=pass events=3 secs=31.0",
        )
        .unwrap();
        assert_eq!(
            (m.as_str(), drop_cell(Some(&r)).as_str()),
            ("drop", "pass kfree_skb-route 3ev 31.0s")
        );
        let (_, _, r) = parse_result(
            "IMDS-RESULT kernel=5.10 mode=drop attached=none result=fail events=3 secs=31.0 reason=drop hook not loaded",
        )
        .unwrap();
        assert_eq!(drop_cell(Some(&r)), "FAIL (no hook)");
    }

    #[test]
    fn prototype_check_lines() {
        let (k, r) =
            parse_protos("IMDS-PROTOS kernel=5.10.0-46-cloud-amd64 result=pass hooks=6").unwrap();
        assert_eq!(k, "5.10.0-46-cloud-amd64");
        assert!(r.pass && r.events == 6 && r.reason.is_none());
        let (_, r) = parse_protos(
            "IMDS-PROTOS kernel=6.1 result=fail hooks=6 reason=fentry/tcp_sendmsg: a b=c",
        )
        .unwrap();
        assert!(!r.pass);
        assert_eq!(r.reason.as_deref(), Some("fentry/tcp_sendmsg: a b=c"));
        assert!(parse_protos("IMDS-PROTO kernel=6.1 hook=x result=ok").is_none());

        // A row passes only with the check reported and passed.
        let pass =
            "IMDS-RESULT kernel=6.1 mode=fentry attached=fentry result=pass events=16 secs=1.0";
        let row = |lines: &[&str]| {
            let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            collect("6.1", "6.1".into(), &["fentry"], &lines, Vec::new(), 1.0)
        };
        assert!(!row(&[pass]).ok());
        assert!(row(&[pass, "IMDS-PROTOS kernel=6.1 result=pass hooks=6"]).ok());
        let drift = row(&[pass, "IMDS-PROTOS kernel=6.1 result=fail hooks=6 reason=x"]);
        assert!(!drift.ok());
        assert!(row_cells(&drift).contains(&"DRIFT".to_string()));
        assert!(matrix(&[drift]).contains("6.1 protos: x"));
    }

    #[test]
    fn cpio_is_aligned() {
        let mut c = Cpio::new();
        c.dir("bin");
        c.file("init", b"#!/bin/sh\n");
        c.symlink("bin/sh", "busybox");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
