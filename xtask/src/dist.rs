//! `cargo xtask dist`: release tarballs in `target/dist/`, one per architecture:
//! `imds-snoop-<version>-<arch>-linux-musl.tar.gz` holding a directory of the same name with
//! the static (musl) binary, kernel program embedded, `install.sh`, the systemd unit and its
//! sysusers entry, and `README.md` (deploy/README.md); plus `SHA256SUMS`.
//!
//! - x86_64: `x86_64-unknown-linux-musl`, linked by the host's `cc` (Rust's musl targets
//!   bring their own C runtime and libc).
//! - aarch64 (Graviton): `aarch64-unknown-linux-musl`, linked by Debian's
//!   `aarch64-linux-gnu-gcc` (package `gcc-aarch64-linux-gnu`, installed when missing and
//!   root). imds-snoop's build.rs builds the kernel program for it too (aya-build passes
//!   `CARGO_CFG_TARGET_ARCH=aarch64` on to the eBPF crate).
//!
//! Every binary is checked before it is packed: its ELF machine is the target's, it has no
//! program interpreter (static: it runs in a `FROM scratch` image and on any distribution),
//! and it embeds exactly one little-endian BPF object, built for this architecture: its
//! kprobe must read the traced function's arguments from this architecture's `pt_regs`
//! (x86_64 `di`/`si` at +112/+104, arm64 `regs[0]`/`regs[1]` at +0/+8; the kernel matrix
//! loads the same binary on arm64 kernels). It is then run: natively, or under
//! `qemu-aarch64` (Debian's `qemu-user`) when that is installed, as `--version` and as
//! `check` against a missing ready file (must exit 1). Without qemu the aarch64 binary is
//! built, linked and inspected but not run, and the summary says so.
//!
//! Tarballs are reproducible: sorted names, owner 0, mtime `SOURCE_DATE_EPOCH` (else the
//! last commit's time), gzip without a timestamp.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// A release architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
}

impl Arch {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    pub(crate) fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// Debian's name of the architecture (apt, dpkg, OCI image platforms).
    pub(crate) fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The offsets into `struct pt_regs` (a kprobe's context) at which a kernel function's
    /// first and second arguments are: `di`, `si` on x86_64; `regs[0]`, `regs[1]` on arm64.
    /// A kernel program built for the other architecture reads the wrong registers.
    fn kprobe_arg_offsets(self) -> [i16; 2] {
        match self {
            Arch::X86_64 => [112, 104],
            Arch::Aarch64 => [0, 8],
        }
    }

    /// ELF `e_machine`.
    fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Aarch64 => 183,
        }
    }

    /// (linker program, Debian package) when the host's `cc` cannot link it.
    fn cross_linker(self) -> Option<(&'static str, &'static str)> {
        match self {
            Arch::X86_64 => None,
            Arch::Aarch64 => Some(("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")),
        }
    }

    /// Runs a binary of this architecture here: `Some(prefix)` (empty when native).
    fn runner(self) -> Option<Vec<String>> {
        if std::env::consts::ARCH == self.name() {
            return Some(vec![]);
        }
        let qemu = format!("qemu-{}", self.name());
        cmd::find_program(&qemu).map(|p| vec![p.to_string_lossy().into_owned()])
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct DistArgs {
    /// Architectures to build (repeatable); default: x86_64 and aarch64.
    #[arg(long = "arch", value_enum)]
    pub arches: Vec<Arch>,
    /// Output directory (default: `<target dir>/dist`).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// What one architecture's build produced, for the summary.
pub(crate) struct Built {
    pub arch: Arch,
    pub tarball: PathBuf,
    pub ran: String,
    pub seconds: f64,
}

pub(crate) fn dist(args: &DistArgs) -> Result<()> {
    let arches = if args.arches.is_empty() {
        vec![Arch::X86_64, Arch::Aarch64]
    } else {
        args.arches.clone()
    };
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| target_dir().join("dist"));
    let built = build_all(&arches, &out_dir)?;
    eprintln!("\nxtask dist summary:");
    for b in &built {
        eprintln!(
            "  {:<8} {:>6.1}s  {}  ({})",
            b.arch.name(),
            b.seconds,
            b.tarball.display(),
            b.ran
        );
    }
    eprintln!("  sums     {}", out_dir.join("SHA256SUMS").display());
    Ok(())
}

/// Builds, checks and packs each architecture into `out_dir`, then writes `SHA256SUMS`.
pub(crate) fn build_all(arches: &[Arch], out_dir: &Path) -> Result<Vec<Built>> {
    let version = workspace_version()?;
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut built = Vec::new();
    for &arch in arches {
        let start = Instant::now();
        let binary = build_binary(arch)?;
        inspect_binary(&binary, arch)?;
        let ran = run_binary(&binary, arch)?;
        let tarball = pack(&binary, arch, &version, out_dir)?;
        let seconds = start.elapsed().as_secs_f64();
        eprintln!(
            "xtask dist: {} done in {seconds:.1}s: {}",
            arch.name(),
            tarball.display()
        );
        built.push(Built {
            arch,
            tarball,
            ran,
            seconds,
        });
    }
    write_sums(out_dir)?;
    Ok(built)
}

/// `CARGO_TARGET_DIR` or `<workspace>/target`.
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                cmd::workspace_root().join(dir)
            }
        }
        None => cmd::workspace_root().join("target"),
    }
}

/// `version` of `[workspace.package]` in the top Cargo.toml.
pub(crate) fn workspace_version() -> Result<String> {
    let path = cmd::workspace_root().join("Cargo.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
        } else if in_section
            && let Some(rest) = line.strip_prefix("version")
            && let Some(value) = rest.trim_start().strip_prefix('=')
        {
            return Ok(value.trim().trim_matches('"').to_owned());
        }
    }
    bail!("no version in [workspace.package] of {}", path.display())
}

/// `cargo build --release --target <triple> -p imds-snoop`, after making sure the Rust
/// target and the linker are there. Returns the binary's path.
pub(crate) fn build_binary(arch: Arch) -> Result<PathBuf> {
    build_package(arch, "imds-snoop")
}

/// `cargo build --release --target <triple> -p <package>` (its binary has the package's
/// name), after making sure the Rust target and the linker are there. Returns the binary.
pub(crate) fn build_package(arch: Arch, package_name: &str) -> Result<PathBuf> {
    ensure_rust_target(arch.triple())?;
    let mut cargo = cmd::command("cargo");
    cargo.args([
        "build",
        "--release",
        "--package",
        package_name,
        "--target",
        arch.triple(),
    ]);
    if let Some((linker, package)) = arch.cross_linker() {
        let path = match cmd::find_program(linker) {
            Some(p) => p,
            None => {
                install_deb(package, &format!("the {} linker", arch.name()))?;
                cmd::find_program(linker)
                    .with_context(|| format!("{linker} still missing after installing {package}"))?
            }
        };
        let var = format!(
            "CARGO_TARGET_{}_LINKER",
            arch.triple().to_uppercase().replace('-', "_")
        );
        cargo.env(var, path);
    }
    eprintln!("xtask dist: {}", cmd::display(&cargo));
    cmd::run(&mut cargo)?;
    let binary = target_dir()
        .join(arch.triple())
        .join("release")
        .join(package_name);
    if !binary.is_file() {
        bail!("{} missing after the build", binary.display());
    }
    Ok(binary)
}

fn ensure_rust_target(triple: &str) -> Result<()> {
    let installed = cmd::output(cmd::command("rustup").args(["target", "list", "--installed"]))?
        .unwrap_or_default();
    if installed.lines().any(|l| l.trim() == triple) {
        return Ok(());
    }
    eprintln!("xtask dist: installing Rust target {triple}");
    cmd::run(cmd::command("rustup").args(["target", "add", triple]))
}

fn install_deb(package: &str, why: &str) -> Result<()> {
    install_debs(&[package], why)
}

/// `apt-get update`, then `apt-get install` of `packages` ([`crate::setup::apt_install`]),
/// saying why first.
pub(crate) fn install_debs(packages: &[&str], why: &str) -> Result<()> {
    eprintln!("xtask: installing {} ({why})", packages.join(" "));
    crate::setup::apt_install(packages)
}

/// Static ELF of the right machine with one little-endian BPF object inside, whose kprobe
/// reads the function's arguments from this architecture's registers.
pub(crate) fn inspect_binary(binary: &Path, arch: Arch) -> Result<()> {
    let data = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let elf = Elf64::parse(&data).with_context(|| format!("{}", binary.display()))?;
    if elf.machine != arch.elf_machine() {
        bail!(
            "{}: ELF machine {} is not {}'s ({})",
            binary.display(),
            elf.machine,
            arch.name(),
            arch.elf_machine()
        );
    }
    if elf.has_interpreter {
        bail!(
            "{}: dynamically linked (has a program interpreter); a release binary must be static",
            binary.display()
        );
    }
    let bpf = embedded_bpf_objects(&data);
    if bpf.len() != 1 {
        bail!(
            "{}: {} embedded BPF objects, want 1 (built with AYA_BUILD_SKIP=1?)",
            binary.display(),
            bpf.len()
        );
    }
    let mut offsets = kprobe_ctx_loads(&data[bpf[0]..])
        .with_context(|| format!("{}: its BPF object", binary.display()))?;
    offsets.sort_unstable();
    let mut want = arch.kprobe_arg_offsets();
    want.sort_unstable();
    if offsets != want {
        bail!(
            "{}: the kprobe reads its arguments at pt_regs offsets {offsets:?}, not {}'s \
             {want:?}: the kernel program was built for another bpf_target_arch",
            binary.display(),
            arch.name()
        );
    }
    Ok(())
}

/// The `pt_regs` offsets the kprobe programs of a BPF object (its bytes from its ELF header
/// on) load 64-bit words from, in program order (the compiler's), without repeats: what `ProbeContext::arg`
/// compiles to (`rX = *(u64 *)(ctx + off)`). The context is r1 at entry; register copies of
/// it are followed, a register is no longer the context once written, and a call clobbers
/// r1-r5. A straight scan of each `kprobe*` section (the loads come before any branch).
fn kprobe_ctx_loads(obj: &[u8]) -> Result<Vec<i16>> {
    let u16_at = |o: usize| -> Result<usize> {
        Ok(usize::from(u16::from_le_bytes(
            obj.get(o..o + 2).context("truncated ELF")?.try_into()?,
        )))
    };
    let u32_at = |o: usize| -> Result<usize> {
        Ok(u32::from_le_bytes(obj.get(o..o + 4).context("truncated ELF")?.try_into()?) as usize)
    };
    let u64_at = |o: usize| -> Result<usize> {
        Ok(usize::try_from(u64::from_le_bytes(
            obj.get(o..o + 8).context("truncated ELF")?.try_into()?,
        ))?)
    };
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    // (name offset, type, file offset, size)
    let section = |i: usize| -> Result<(usize, usize, usize, usize)> {
        let at = shoff + i * shentsize;
        Ok((
            u32_at(at)?,
            u32_at(at + 4)?,
            u64_at(at + 24)?,
            u64_at(at + 32)?,
        ))
    };
    let (_, _, strtab, strsize) = section(shstrndx)?;
    let names = obj
        .get(strtab..strtab + strsize)
        .context("truncated section names")?;
    let mut offsets = Vec::new();
    let mut programs = 0;
    for i in 0..shnum {
        let (name, kind, off, size) = section(i)?;
        let name = names.get(name..).unwrap_or_default();
        const SHT_PROGBITS: usize = 1;
        if kind != SHT_PROGBITS || !name.starts_with(b"kprobe") {
            continue;
        }
        programs += 1;
        let code = obj
            .get(off..off + size)
            .context("truncated kprobe section")?;
        let mut ctx = [false; 11];
        ctx[1] = true;
        for insn in code.chunks_exact(8) {
            let (op, dst, src) = (
                insn[0],
                usize::from(insn[1] & 0xf),
                usize::from(insn[1] >> 4),
            );
            let disp = i16::from_le_bytes([insn[2], insn[3]]);
            const LDX_DW: u8 = 0x79; // BPF_LDX | BPF_MEM | BPF_DW
            const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
            const CALL: u8 = 0x85;
            let class = op & 0x07;
            if op == LDX_DW && src < ctx.len() && ctx[src] && !offsets.contains(&disp) {
                offsets.push(disp);
            }
            if op == MOV64_X && dst < ctx.len() {
                ctx[dst] = src < ctx.len() && ctx[src];
            } else if op == CALL {
                ctx[1..=5].fill(false);
            } else if matches!(class, 0x00 | 0x01 | 0x04 | 0x07) && dst < ctx.len() {
                // LD, LDX, ALU, ALU64 write dst.
                ctx[dst] = false;
            }
        }
    }
    if programs == 0 {
        bail!("no kprobe program (no kprobe* section)");
    }
    Ok(offsets)
}

struct Elf64 {
    machine: u16,
    has_interpreter: bool,
}

impl Elf64 {
    fn parse(d: &[u8]) -> Result<Self> {
        let u16_at = |o: usize| -> Result<u16> {
            Ok(u16::from_le_bytes(
                d.get(o..o + 2).context("truncated ELF")?.try_into()?,
            ))
        };
        let u64_at = |o: usize| -> Result<u64> {
            Ok(u64::from_le_bytes(
                d.get(o..o + 8).context("truncated ELF")?.try_into()?,
            ))
        };
        if d.get(..6) != Some(b"\x7fELF\x02\x01") {
            bail!("not a little-endian 64-bit ELF file");
        }
        let machine = u16_at(18)?;
        let phoff = usize::try_from(u64_at(32)?)?;
        let phentsize = usize::from(u16_at(54)?);
        let phnum = usize::from(u16_at(56)?);
        const PT_INTERP: u32 = 3;
        let mut has_interpreter = false;
        for i in 0..phnum {
            let at = phoff + i * phentsize;
            let kind = u32::from_le_bytes(d.get(at..at + 4).context("truncated ELF")?.try_into()?);
            has_interpreter |= kind == PT_INTERP;
        }
        Ok(Self {
            machine,
            has_interpreter,
        })
    }
}

/// Where ELF headers with `e_machine == EM_BPF` (247), little-endian, start, past the file's
/// own header.
fn embedded_bpf_objects(data: &[u8]) -> Vec<usize> {
    const EM_BPF: u16 = 247;
    data.windows(20)
        .enumerate()
        .skip(1)
        .filter(|(_, w)| {
            w.starts_with(b"\x7fELF\x02\x01") && u16::from_le_bytes([w[18], w[19]]) == EM_BPF
        })
        .map(|(at, _)| at)
        .collect()
}

/// Runs the binary (natively or under qemu-user): `--version` prints the version and
/// `check` on a missing ready file exits 1. Returns what was done, for the summary.
pub(crate) fn run_binary(binary: &Path, arch: Arch) -> Result<String> {
    let Some(prefix) = arch.runner() else {
        let msg = format!(
            "built, linked and inspected; NOT run: no qemu-{} (Debian package qemu-user)",
            arch.name()
        );
        eprintln!("xtask dist: {}: {msg}", arch.name());
        return Ok(msg);
    };
    let command = |args: &[&str]| {
        let mut c = match prefix.first() {
            Some(runner) => {
                let mut c = Command::new(runner);
                c.arg(binary);
                c
            }
            None => Command::new(binary),
        };
        c.args(args);
        c
    };
    let version = cmd::output_or_reason(&mut command(&["--version"]))
        .map_err(|e| anyhow::anyhow!("{} --version: {e}", binary.display()))?;
    if !version.starts_with("imds-snoop ") {
        bail!("{} --version printed {version:?}", binary.display());
    }
    let missing = target_dir().join("dist-check-no-such-ready-file");
    let st = command(&[
        "check",
        "--ready-file",
        missing.to_str().unwrap_or("/nonexistent"),
    ])
    .stderr(std::process::Stdio::null())
    .status()
    .with_context(|| format!("running {} check", binary.display()))?;
    if st.code() != Some(1) {
        bail!(
            "{} check on a missing ready file: {st}, want exit 1",
            binary.display()
        );
    }
    let how = if prefix.is_empty() {
        "natively".to_owned()
    } else {
        format!("under qemu-{} (user mode)", arch.name())
    };
    Ok(format!(
        "ran {how}: --version = {:?}, check exit 1; kernel program not loaded",
        version.trim()
    ))
}

/// Stages `imds-snoop-<version>-<arch>-linux-musl/` and packs it. Returns the tarball.
pub(crate) fn pack(binary: &Path, arch: Arch, version: &str, out_dir: &Path) -> Result<PathBuf> {
    let root = cmd::workspace_root();
    let name = format!("imds-snoop-{version}-{}-linux-musl", arch.name());
    let stage_parent = out_dir.join(".stage");
    let stage = stage_parent.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    fs::create_dir_all(stage.join("systemd"))?;
    let files: [(PathBuf, &str, u32); 5] = [
        (binary.to_owned(), "imds-snoop", 0o755),
        (root.join("deploy/install.sh"), "install.sh", 0o755),
        (
            root.join("deploy/systemd/imds-snoop.service"),
            "systemd/imds-snoop.service",
            0o644,
        ),
        (
            root.join("deploy/systemd/imds-snoop.sysusers"),
            "systemd/imds-snoop.sysusers",
            0o644,
        ),
        (root.join("deploy/README.md"), "README.md", 0o644),
    ];
    for (src, dst, mode) in &files {
        let dst = stage.join(dst);
        fs::copy(src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&dst, fs::Permissions::from_mode(*mode))?;
    }
    let tarball = out_dir.join(format!("{name}.tar.gz"));
    let mtime = source_date_epoch();
    let mut tar = cmd::command("tar");
    tar.current_dir(&stage_parent).args([
        "--sort=name",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--mode=go-w",
        &format!("--mtime=@{mtime}"),
        "--use-compress-program=gzip -n -9",
        "-cf",
    ]);
    tar.arg(&tarball).arg(&name);
    cmd::run(&mut tar)?;
    fs::remove_dir_all(&stage_parent)?;
    Ok(tarball)
}

fn source_date_epoch() -> u64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    cmd::output(cmd::command("git").args(["log", "-1", "--format=%ct"]))
        .ok()
        .flatten()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// `SHA256SUMS` over every tarball in `out_dir`.
fn write_sums(out_dir: &Path) -> Result<()> {
    let mut names: Vec<String> = fs::read_dir(out_dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar.gz"))
        .collect();
    names.sort();
    let mut sha = cmd::command("sha256sum");
    sha.current_dir(out_dir).args(&names);
    let sums = cmd::output(&mut sha)?.context("sha256sum failed")?;
    fs::write(out_dir.join("SHA256SUMS"), sums)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian BPF ELF: the null section, `.shstrtab` and one `kprobe`
    /// section holding `code`.
    fn bpf_object(code: &[[u8; 8]]) -> Vec<u8> {
        let names = b"\0.shstrtab\0kprobe\0";
        let code: Vec<u8> = code.concat();
        let names_at = 64;
        let code_at = names_at + names.len();
        let shoff = code_at + code.len();
        let mut o = vec![0u8; 64];
        o[..6].copy_from_slice(b"\x7fELF\x02\x01");
        o[18..20].copy_from_slice(&247u16.to_le_bytes());
        o[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        o[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        o[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        o[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        o.extend_from_slice(names);
        o.extend_from_slice(&code);
        for (name, kind, at, size) in [
            (0u32, 0u32, 0usize, 0usize),
            (1, 3, names_at, names.len()),
            (11, 1, code_at, code.len()),
        ] {
            let mut sh = [0u8; 64];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[4..8].copy_from_slice(&kind.to_le_bytes());
            sh[24..32].copy_from_slice(&(at as u64).to_le_bytes());
            sh[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            o.extend_from_slice(&sh);
        }
        o
    }

    fn insn(op: u8, dst: u8, src: u8, off: i16) -> [u8; 8] {
        let o = off.to_le_bytes();
        [op, dst | (src << 4), o[0], o[1], 0, 0, 0, 0]
    }

    #[test]
    fn kprobe_argument_registers() {
        // r6 = r1; r7 = *(u64 *)(r6 + 112); r8 = *(u64 *)(r1 + 104); call; r2 = *(u64 *)(r1 + 0)
        let x86 = bpf_object(&[
            insn(0xbf, 6, 1, 0),
            insn(0x79, 7, 6, 112),
            insn(0x79, 8, 1, 104),
            insn(0x85, 0, 0, 0),
            insn(0x79, 2, 1, 0),
        ]);
        assert_eq!(
            kprobe_ctx_loads(&x86).unwrap(),
            Arch::X86_64.kprobe_arg_offsets()
        );
        let arm = bpf_object(&[
            insn(0x79, 6, 1, 0),
            insn(0x79, 7, 1, 8),
            insn(0x79, 7, 6, 16),
        ]);
        assert_eq!(
            kprobe_ctx_loads(&arm).unwrap(),
            Arch::Aarch64.kprobe_arg_offsets()
        );
        // Found inside a larger file, as in the daemon binary.
        let mut binary = b"\x7fELF\x02\x01 host".to_vec();
        binary.extend_from_slice(&x86);
        assert_eq!(embedded_bpf_objects(&binary), vec![11]);
    }
}
