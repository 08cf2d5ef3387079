//! `cargo xtask setup`: installs what building and testing imds-snoop needs, when missing.
//! Idempotent: every item prints one line, `ok: ...` when present, `installing: ...` when not.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// A Debian package the build or the tests need.
pub(crate) struct DebPackage {
    /// The package name, for `dpkg-query` and `apt-get install`.
    pub name: &'static str,
    /// When this program is on PATH the package is not needed (e.g. a pyenv `python3`
    /// must not pull in Debian's python).
    pub satisfied_by_program: Option<&'static str>,
    /// Why it is needed, for the `ok:`/`installing:` line.
    pub why: &'static str,
}

/// The Debian packages to install when missing. Extend here.
pub(crate) const DEB_PACKAGES: &[DebPackage] = &[
    DebPackage {
        name: "iproute2",
        satisfied_by_program: None,
        why: "`ip netns` for the end-to-end tests",
    },
    DebPackage {
        name: "curl",
        satisfied_by_program: None,
        why: "IMDS client in the end-to-end tests",
    },
    DebPackage {
        name: "python3",
        satisfied_by_program: Some("python3"),
        why: "fake IMDS and botocore client in the end-to-end tests",
    },
    DebPackage {
        name: "containerd",
        satisfied_by_program: None,
        why: "a real container runtime for the pod attribution tests",
    },
    DebPackage {
        name: "runc",
        satisfied_by_program: None,
        why: "the OCI runtime containerd runs the test containers with",
    },
    DebPackage {
        name: "procps",
        satisfied_by_program: Some("pgrep"),
        why: "pgrep and sysctl in the deploy checks and the hop-limit topology",
    },
    DebPackage {
        name: "prometheus",
        satisfied_by_program: Some("promtool"),
        why: "promtool (rules checks and unit tests) and the Prometheus server the live \
              rules test scrapes the daemon with",
    },
    DebPackage {
        name: "iperf3",
        satisfied_by_program: None,
        why: "bulk throughput of the pod -> node -> pod workload in `cargo xtask bench`",
    },
    DebPackage {
        name: "busybox-static",
        satisfied_by_program: None,
        why: "the test containers' root filesystem",
    },
];

/// Python modules the tests import: (module, pip package, Debian package used when pip is
/// unavailable or refuses, e.g. an externally managed Debian python).
pub(crate) const PYTHON_MODULES: &[(&str, &str, &str)] = &[
    ("botocore", "botocore", "python3-botocore"),
    // The real Prometheus text parser the metrics end-to-end test scrapes /metrics with.
    (
        "prometheus_client",
        "prometheus-client",
        "python3-prometheus-client",
    ),
];

/// bpf-linker version built from crates.io (against nightly's own libLLVM).
pub(crate) const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors that `BPF_LINKER_VERSION` has an `llvm-N` feature for.
pub(crate) const BPF_LINKER_LLVM_MAJORS: &[u32] = &[21, 22, 23];

#[derive(Debug, Default, clap::Args)]
pub(crate) struct SetupArgs {
    /// Rebuild bpf-linker even when a working one is installed (e.g. after a nightly
    /// update changed LLVM).
    #[arg(long)]
    pub rebuild_bpf_linker: bool,
}

pub(crate) fn setup(args: &SetupArgs) -> Result<()> {
    nightly_toolchain()?;
    nightly_component("rust-src")?;
    nightly_component("rustfmt")?;
    bpf_linker(args.rebuild_bpf_linker)?;
    deb_packages()?;
    python_modules()?;
    Ok(())
}

fn ok(msg: impl std::fmt::Display) {
    println!("ok: {msg}");
}

fn installing(msg: impl std::fmt::Display) {
    println!("installing: {msg}");
}

fn rustup() -> Result<Command> {
    if cmd::find_program("rustup").is_none() {
        bail!(
            "rustup not found on PATH: install it from https://rustup.rs (the eBPF build needs \
             a nightly toolchain managed by rustup)"
        );
    }
    Ok(cmd::command("rustup"))
}

fn nightly_rustc_version() -> Result<Option<String>> {
    let installed = cmd::output(rustup()?.args(["toolchain", "list"]))?.unwrap_or_default();
    // `nightly-<host>` is what `+nightly` means; `nightly-2025-01-01-<host>` is not.
    let present = installed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| {
            name == "nightly"
                || name
                    .strip_prefix("nightly-")
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        });
    if !present {
        return Ok(None);
    }
    // RUSTUP_AUTO_INSTALL=0: a check must not install anything behind our back.
    Ok(cmd::output(
        cmd::command("rustc")
            .args(["+nightly", "--version"])
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )?
    .map(|v| v.trim().to_owned()))
}

fn nightly_toolchain() -> Result<()> {
    if let Some(version) = nightly_rustc_version()? {
        ok(format_args!("nightly toolchain present ({version})"));
        return Ok(());
    }
    let mut install = rustup()?;
    install.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
    installing(format_args!(
        "nightly toolchain ({})",
        cmd::display(&install)
    ));
    cmd::run(&mut install)?;
    match nightly_rustc_version()? {
        Some(version) => {
            ok(format_args!("nightly toolchain installed ({version})"));
            Ok(())
        }
        None => bail!("nightly toolchain still unusable after `rustup toolchain install nightly`"),
    }
}

/// Whether nightly has `component` (listed as `rust-src`, or `rustfmt-<host triple>`).
fn component_installed(component: &str) -> Result<bool> {
    let list = cmd::output(rustup()?.args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?
    .unwrap_or_default();
    Ok(list.lines().map(str::trim).any(|l| {
        l == component
            || l.starts_with(&format!("{component}-"))
            || l.starts_with(&format!("{component} "))
    }))
}

/// A nightly component: `rust-src` (eBPF builds use -Z build-std=core) or `rustfmt` (the
/// fmt check: rustfmt.toml uses nightly-only import options, as aya does).
fn nightly_component(component: &str) -> Result<()> {
    if component_installed(component)? {
        ok(format_args!("{component} component present for nightly"));
        return Ok(());
    }
    let mut add = rustup()?;
    add.args(["component", "add", component, "--toolchain", "nightly"]);
    installing(format_args!(
        "{component} component for nightly ({})",
        cmd::display(&add)
    ));
    cmd::run(&mut add)?;
    if !component_installed(component)? {
        bail!(
            "{component} still missing for nightly after `{}`",
            cmd::display(&add)
        );
    }
    ok(format_args!("{component} component installed for nightly"));
    Ok(())
}

/// `Ok(version line)` when `bpf-linker --version` runs, `Err(reason)` otherwise.
fn bpf_linker_status() -> std::result::Result<(PathBuf, String), String> {
    let path = cmd::find_program("bpf-linker").ok_or_else(|| "not found".to_owned())?;
    match cmd::output_or_reason(cmd::command(&path).arg("--version")) {
        Ok(v) => Ok((path, v.trim().to_owned())),
        Err(reason) => Err(format!("{} is broken: {reason}", path.display())),
    }
}

/// The nightly sysroot's `lib` directory and its libLLVM: (lib dir, link name such as
/// `LLVM-22-rust-1.97.0-nightly`, LLVM major).
fn nightly_libllvm() -> Result<(PathBuf, String, u32)> {
    let sysroot = cmd::output(cmd::command("rustc").args(["+nightly", "--print", "sysroot"]))?
        .context("`rustc +nightly --print sysroot` failed")?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let mut found = Vec::new();
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        // libLLVM-22-rust-1.97.0-nightly.so -> LLVM-22-rust-1.97.0-nightly, 22
        let Some(link) = name
            .strip_prefix("lib")
            .and_then(|n| n.strip_suffix(".so"))
            .filter(|n| n.starts_with("LLVM-"))
        else {
            continue;
        };
        let major: String = link["LLVM-".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(major) = major.parse::<u32>() {
            found.push((link.to_owned(), major));
        }
    }
    match found.as_slice() {
        [(link, major)] => Ok((lib, link.clone(), *major)),
        [] => bail!(
            "no libLLVM-<N>-*.so in {} (is the nightly toolchain complete?)",
            lib.display()
        ),
        many => bail!(
            "several libLLVM-*.so in {}: {:?}; cannot tell which one rustc uses",
            lib.display(),
            many.iter().map(|(l, _)| l).collect::<Vec<_>>()
        ),
    }
}

fn bpf_linker(force: bool) -> Result<()> {
    let reason = match bpf_linker_status() {
        Ok((path, version)) if !force => {
            ok(format_args!(
                "bpf-linker present ({version}, {})",
                path.display()
            ));
            return Ok(());
        }
        Ok((path, version)) => format!(
            "rebuild requested; current: {version} at {}",
            path.display()
        ),
        Err(reason) => reason,
    };
    let (lib, link, major) = nightly_libllvm()?;
    if !BPF_LINKER_LLVM_MAJORS.contains(&major) {
        bail!(
            "nightly's LLVM is {major} ({link}) but bpf-linker {BPF_LINKER_VERSION} supports \
             LLVM {BPF_LINKER_LLVM_MAJORS:?}: update BPF_LINKER_VERSION in xtask/src/setup.rs"
        );
    }
    let lib_str = lib
        .to_str()
        .with_context(|| format!("non-UTF-8 sysroot path {}", lib.display()))?;
    // CARGO_ENCODED_RUSTFLAGS (0x1f-separated) rather than RUSTFLAGS: survives spaces in
    // the sysroot path, and wins over any RUSTFLAGS in the environment.
    let rustflags = [
        "-L".to_owned(),
        lib_str.to_owned(),
        "-l".to_owned(),
        format!("dylib={link}"),
        "-C".to_owned(),
        format!("link-arg=-Wl,-rpath,{lib_str}"),
    ]
    .join("\x1f");
    let mut install = cmd::command("cargo");
    install
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{major},no-llvm-linking"))
        .env("CARGO_ENCODED_RUSTFLAGS", &rustflags)
        .env_remove("RUSTFLAGS");
    installing(format_args!(
        "bpf-linker {BPF_LINKER_VERSION} against nightly's {link} ({reason}): \
         CARGO_ENCODED_RUSTFLAGS=\"{}\" {}",
        rustflags.replace('\x1f', " "),
        cmd::display(&install)
    ));
    cmd::run(&mut install)?;
    let installed = cmd::cargo_install_bin_dir()
        .map(|d| d.join("bpf-linker"))
        .context("cannot tell where cargo installs binaries (no CARGO_HOME nor HOME)")?;
    let version =
        cmd::output_or_reason(cmd::command(&installed).arg("--version")).map_err(|reason| {
            anyhow::anyhow!(
                "bpf-linker still unusable after installing it: {}: {reason}",
                installed.display()
            )
        })?;
    ok(format_args!(
        "bpf-linker installed ({}, {})",
        version.trim(),
        installed.display()
    ));
    if let Some(first) = cmd::find_program("bpf-linker")
        && first != installed
    {
        println!(
            "warning: {} comes first on PATH and shadows {}: remove it",
            first.display(),
            installed.display()
        );
    }
    Ok(())
}

fn deb_installed(name: &str) -> Result<bool> {
    Ok(
        cmd::output(cmd::command("dpkg-query").args(["-W", "-f=${Status}", name]))?
            .is_some_and(|s| s.trim() == "install ok installed"),
    )
}

/// `apt-get update` once, then `apt-get install` of `packages` (through sudo when not root).
/// The one place the xtasks install Debian packages.
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    if cmd::find_program("apt-get").is_none() {
        bail!("apt-get not found: install {} by hand", packages.join(" "));
    }
    let what = format!("installing {}", packages.join(" "));
    let mut update = cmd::root_command("apt-get", &what)?;
    update
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd::run(&mut update)?;
    let mut install = cmd::root_command("apt-get", &what)?;
    install
        // A new cloud machine's apt-daily may hold the lock for a while: wait, don't fail.
        .args(["-o", "DPkg::Lock::Timeout=300"])
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd::run(&mut install)
}

fn deb_packages() -> Result<()> {
    let mut missing = Vec::new();
    for pkg in DEB_PACKAGES {
        if let Some(program) = pkg.satisfied_by_program
            && let Some(path) = cmd::find_program(program)
        {
            ok(format_args!(
                "{} present ({}; {})",
                pkg.name,
                path.display(),
                pkg.why
            ));
            continue;
        }
        if deb_installed(pkg.name)? {
            ok(format_args!(
                "{} present (Debian package; {})",
                pkg.name, pkg.why
            ));
        } else {
            installing(format_args!("{} (Debian package; {})", pkg.name, pkg.why));
            missing.push(pkg.name);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)?;
    for name in &missing {
        if !deb_installed(name)? {
            bail!("Debian package {name} still not installed after apt-get install");
        }
    }
    Ok(())
}

fn python_has(module: &str) -> Result<bool> {
    Ok(cmd::output(cmd::command("python3").args(["-c", &format!("import {module}")]))?.is_some())
}

fn python_modules() -> Result<()> {
    for &(module, pip_pkg, deb_pkg) in PYTHON_MODULES {
        if python_has(module)? {
            ok(format_args!("python module {module} present"));
            continue;
        }
        let mut pip = cmd::command("python3");
        pip.args(["-m", "pip", "install", pip_pkg]);
        installing(format_args!(
            "python module {module} ({})",
            cmd::display(&pip)
        ));
        if !cmd::status(&mut pip)?.success() {
            // Debian's own python3 has no pip by default and refuses pip installs
            // (externally managed): take the Debian package instead.
            installing(format_args!(
                "python module {module}: pip failed, trying Debian package {deb_pkg}"
            ));
            apt_install(&[deb_pkg])?;
        }
        if !python_has(module)? {
            bail!("python3 still cannot `import {module}` after installing it");
        }
    }
    Ok(())
}
