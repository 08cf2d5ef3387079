//! `cargo xtask`: developer and CI tasks for imds-snoop (alias in `.cargo/config.toml`).
//!
//! - `setup`: installs what is missing (nightly + rust-src, bpf-linker, Debian packages,
//!   Python botocore and prometheus_client); idempotent.
//! - `build [--release]`: setup, then builds the daemon (build.rs embeds the eBPF object).
//! - `run [-- ARGS]`: setup, release build, then runs `target/release/imds-snoop ARGS` as root.
//! - `test`: setup, then fmt check, clippy, unit and end-to-end tests, `deploy-check` and
//!   the kernel matrix (`vm-test`); fails fast.
//! - `fuzz [--seconds N] [TARGET...]`: short `cargo fuzz` runs of fuzz/'s targets (installs
//!   cargo-fuzz if missing); a step of `bench`, not of `test`.
//! - `vm-test`: the end-to-end suite on Debian's 5.10, 6.1 and 6.12 kernels under QEMU and
//!   on the host kernel.

mod bench;
mod cmd;
mod deploy;
mod dist;
mod fuzz;
mod setup;
mod vm;

use std::{os::unix::process::CommandExt as _, process::ExitCode};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::setup::SetupArgs;

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "imds-snoop developer and CI tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing: nightly toolchain with rust-src, bpf-linker (built against
    /// nightly's libLLVM), Debian packages and Python modules the tests use.
    Setup(SetupArgs),
    /// Setup, then build the daemon (the kernel program is embedded by imds-snoop's build.rs).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Setup, build the release daemon and run it as root (via sudo when not root).
    Run {
        /// Arguments for imds-snoop (after `--`), e.g. `cargo xtask run -- --stdout`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then `cargo fmt --check`, `cargo clippy -D warnings`, `cargo test`,
    /// `deploy-check` and `vm-test` (end-to-end tests need root; under CI=... they fail
    /// instead of skipping).
    Test,
    /// Benchmarks (issue 8): hot-path overhead, IMDS burst, daemon cost, start-up. Needs root.
    Bench(bench::BenchOptions),
    /// Short `cargo fuzz` runs of the targets in fuzz/ (request reassembler, event decoder,
    /// report line parser); installs cargo-fuzz when missing. A step of `bench`.
    Fuzz(fuzz::FuzzArgs),
    /// Release tarballs in target/dist/: imds-snoop-<version>-<arch>-linux-musl.tar.gz for
    /// x86_64 and aarch64 (static musl binaries, kernel program embedded), and SHA256SUMS.
    Dist(dist::DistArgs),
    /// Check deploy/: systemd unit (verify, real systemd), install.sh, capabilities,
    /// Kubernetes manifests (schema), AL2023 user data, container image (needs root; under
    /// CI=... nothing is skipped).
    DeployCheck,
    /// Boot Debian's 5.10, 6.1 and 6.12 cloud kernels under QEMU (TCG) and run the guest
    /// suite for each attach mode; also run it on the host kernel in a network namespace.
    VmTest(vm::VmTestOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(task: Task) -> Result<ExitCode> {
    match task {
        Task::Setup(args) => setup::setup(&args).map(|()| ExitCode::SUCCESS),
        Task::Build { release } => build(release).map(|()| ExitCode::SUCCESS),
        Task::Run { args } => run(&args),
        Task::Test => test(),
        Task::Dist(args) => dist::dist(&args).map(|()| ExitCode::SUCCESS),
        Task::DeployCheck => deploy::deploy_check(),
        Task::VmTest(opts) => vm::vm_test(opts).map(|()| ExitCode::SUCCESS),
        Task::Bench(opts) => {
            let (quick, skip_fuzz) = (opts.quick, opts.skip_fuzz);
            bench::bench(opts)?;
            // Last: the figures above come from a machine not busy fuzzing.
            if !skip_fuzz {
                fuzz::fuzz(&fuzz::FuzzArgs {
                    seconds: if quick { 10 } else { 25 },
                    targets: Vec::new(),
                })?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Task::Fuzz(args) => fuzz::fuzz(&args).map(|()| ExitCode::SUCCESS),
    }
}

fn build(release: bool) -> Result<()> {
    setup::setup(&SetupArgs::default())?;
    let mut cargo = cmd::command("cargo");
    cargo.args(["build", "--package", "imds-snoop"]);
    if release {
        cargo.arg("--release");
    }
    eprintln!("xtask: {}", cmd::display(&cargo));
    cmd::run(&mut cargo)
}

fn run(args: &[String]) -> Result<ExitCode> {
    setup::setup(&SetupArgs::default())?;
    let mut cargo = cmd::command("cargo");
    cargo.args(["build", "--release", "--package", "imds-snoop"]);
    eprintln!("xtask: {}", cmd::display(&cargo));
    cmd::run(&mut cargo)?;

    let binary = cmd::workspace_root().join("target/release/imds-snoop");
    if !binary.is_file() {
        bail!("{} missing after the build", binary.display());
    }
    let mut daemon = cmd::root_command(&binary, "imds-snoop (loading eBPF programs)")?;
    daemon.args(args);
    eprintln!("xtask: exec {}", cmd::display(&daemon));
    // exec: the daemon gets our pid, terminal and signals (Ctrl-C stops it cleanly).
    let err = daemon.exec();
    bail!("cannot exec `{}`: {err}", cmd::display(&daemon))
}

/// One step of `cargo xtask test`.
struct Step {
    name: &'static str,
    command: std::process::Command,
}

fn cargo_step(name: &'static str, args: &[&str]) -> Step {
    let mut command = cmd::command("cargo");
    command.args(args);
    Step { name, command }
}

fn test() -> Result<ExitCode> {
    setup::setup(&SetupArgs::default())?;

    let ci = std::env::var_os("CI").filter(|v| !v.is_empty());
    let mut tests = cargo_step("tests", &["test", "--", "--test-threads=1"]);
    match &ci {
        Some(v) => {
            tests.command.env("CI", v);
            eprintln!(
                "xtask: CI={} is set: end-to-end tests fail instead of skipping",
                v.to_string_lossy()
            );
        }
        None if !cmd::is_root() => eprintln!(
            "xtask: WARNING: not root and CI unset: the end-to-end tests will be SKIPPED \
             (run as root, or with CI=true to make them fail)"
        ),
        None => {}
    }

    // Default members only (no --workspace): imds-snoop-ebpf builds only for BPF, through
    // imds-snoop's build.rs.
    let mut steps = vec![
        // Nightly rustfmt: rustfmt.toml uses aya's import grouping options, nightly-only.
        cargo_step("fmt", &["+nightly", "fmt", "--all", "--", "--check"]),
        cargo_step(
            "clippy",
            &["clippy", "--all-targets", "--", "-D", "warnings"],
        ),
        // The kernel program is not a default member: lint it for its own target, once per
        // `bpf_target_arch` we ship (kprobe argument access differs by architecture), with
        // the cfg aya-build passes when it builds the object for an x86_64 or aarch64 daemon.
        // One target directory per architecture, so neither rebuilds `core` for the other.
        Step {
            name: "bpf-x86_64",
            command: {
                let mut c = cmd::command("cargo");
                c.args([
                    "+nightly",
                    "clippy",
                    "-p",
                    "imds-snoop-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--target-dir",
                    "target/bpf-clippy/x86_64",
                    "--",
                    "-D",
                    "warnings",
                ])
                .env("RUSTFLAGS", r#"--cfg bpf_target_arch="x86_64""#);
                c
            },
        },
        Step {
            name: "bpf-aarch64",
            command: {
                let mut c = cmd::command("cargo");
                c.args([
                    "+nightly",
                    "clippy",
                    "-p",
                    "imds-snoop-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--target-dir",
                    "target/bpf-clippy/aarch64",
                    "--",
                    "-D",
                    "warnings",
                ])
                .env("RUSTFLAGS", r#"--cfg bpf_target_arch="aarch64""#);
                c
            },
        },
        tests,
        // deploy/: unit verified and run under real systemd, install.sh, capabilities,
        // manifests against Kubernetes schemas, AL2023 user data, the container image.
        Step {
            name: "deploy-check",
            command: {
                let mut c = cmd::command("cargo");
                c.args(["xtask", "deploy-check"]);
                c
            },
        },
        // The kernel matrix: fentry and kprobe on 5.10/6.1/6.12 VMs, the tracepoint here.
        Step {
            name: "vm-test",
            command: {
                let mut c = cmd::command("cargo");
                c.args(["xtask", "vm-test"]);
                c
            },
        },
    ];

    let mut results: Vec<(&str, String, &str)> = Vec::new();
    let mut counts = cmd::TestCounts::default();
    let mut failed = false;
    for step in &mut steps {
        let line = cmd::display(&step.command);
        if failed {
            results.push((step.name, line, "skipped"));
            continue;
        }
        eprintln!("\nxtask: [{}] {line}", step.name);
        let status = if step.name == "tests" {
            cmd::status_counting_tests(&mut step.command, &mut counts)
        } else {
            cmd::status(&mut step.command)
        };
        let outcome = match status {
            Ok(st) if st.success() => "passed",
            Ok(st) => {
                eprintln!("xtask: [{}] FAILED ({st})", step.name);
                "FAILED"
            }
            Err(e) => {
                eprintln!("xtask: [{}] FAILED: {e:#}", step.name);
                "FAILED"
            }
        };
        failed = outcome == "FAILED";
        results.push((step.name, line, outcome));
    }

    let passed = results.iter().filter(|r| r.2 == "passed").count();
    let nfailed = results.iter().filter(|r| r.2 == "FAILED").count();
    eprintln!("\nxtask test summary:");
    for (name, line, outcome) in &results {
        eprintln!("  {outcome:<8} {name:<12} {line}");
    }
    eprintln!("steps: {passed} passed, {nfailed} failed");
    // The closing line: every test of every test binary, added up.
    println!("tests: {} passed, {} failed", counts.passed, counts.failed);
    Ok(if nfailed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
