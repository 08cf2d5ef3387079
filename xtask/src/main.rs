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
//! - `vm-test`: the end-to-end suite on Debian's 5.10, 6.1 and 6.12 kernels, amd64 and arm64,
//!   under QEMU and on the host kernel.

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

use crate::{cmd::TestCounts, setup::SetupArgs};

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
    /// Boot Debian's 5.10, 6.1 and 6.12 cloud kernels, x86_64 and aarch64 (`--arch`), under
    /// QEMU (TCG) and run the guest suite for each attach mode; also run it on the host
    /// kernel in a network namespace.
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
    /// How the step's own output says what it counted.
    counts: Counted,
}

/// What a step's output counts, for the closing line.
#[derive(Clone, Copy)]
enum Counted {
    /// Nothing: the step is one check (fmt, clippy).
    Itself,
    /// libtest's `test result:` lines (cargo test).
    Libtest,
    /// Its own closing line `PREFIX: N passed, M failed[, K skipped]`.
    Summary(&'static str),
}

fn cargo_step(name: &'static str, args: &[&str]) -> Step {
    let mut command = cmd::command("cargo");
    command.args(args);
    Step {
        name,
        command,
        counts: Counted::Itself,
    }
}

/// Clippy on the kernel program for one `bpf_target_arch`, with the cfg aya-build passes
/// when it builds the object for a daemon of that architecture, in a target directory of
/// its own so that neither architecture rebuilds `core` for the other.
fn bpf_clippy_step(name: &'static str, arch: &str) -> Step {
    let target_dir = format!("target/bpf-clippy/{arch}");
    let mut step = cargo_step(
        name,
        &[
            "+nightly",
            "clippy",
            "-p",
            "imds-snoop-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            &target_dir,
            "--",
            "-D",
            "warnings",
        ],
    );
    step.command
        .env("RUSTFLAGS", format!(r#"--cfg bpf_target_arch="{arch}""#));
    step
}

/// What one step adds to the closing line. A step whose own counts show no failure but
/// which failed (a build error, a crash, a check outside any count) adds one failure, and
/// a step that counted nothing adds itself as one check: the closing line can never say
/// `0 failed` for a red run.
fn step_counts(counted: TestCounts, success: bool) -> TestCounts {
    let mut c = counted;
    if !success && c.failed == 0 {
        c.failed += 1;
    } else if success && c == TestCounts::default() {
        c.passed += 1;
    }
    c
}

fn test() -> Result<ExitCode> {
    setup::setup(&SetupArgs::default())?;

    let ci = std::env::var_os("CI").filter(|v| !v.is_empty());
    let mut tests = cargo_step("tests", &["test", "--", "--test-threads=1"]);
    tests.counts = Counted::Libtest;
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
        // `bpf_target_arch` we ship (kprobe argument access differs by architecture).
        bpf_clippy_step("bpf-x86_64", "x86_64"),
        bpf_clippy_step("bpf-aarch64", "aarch64"),
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
            counts: Counted::Summary("deploy-check"),
        },
        // The kernel matrix: fentry and kprobe on 5.10/6.1/6.12 VMs, x86_64 and aarch64, the
        // tracepoint here.
        Step {
            name: "vm-test",
            command: {
                let mut c = cmd::command("cargo");
                c.args(["xtask", "vm-test"]);
                c
            },
            counts: Counted::Summary("vm-test"),
        },
    ];

    let mut results: Vec<(&str, String, &str, TestCounts)> = Vec::new();
    let mut total = TestCounts::default();
    let mut failed = false;
    for step in &mut steps {
        let line = cmd::display(&step.command);
        if failed {
            // Not run: its tests are neither passed nor failed, and the closing line says so.
            let skipped = TestCounts {
                skipped: 1,
                ..TestCounts::default()
            };
            total.add(skipped);
            results.push((step.name, line, "skipped", skipped));
            continue;
        }
        eprintln!("\nxtask: [{}] {line}", step.name);
        let mut counted = TestCounts::default();
        let status = match step.counts {
            Counted::Itself => cmd::status(&mut step.command),
            Counted::Libtest => cmd::status_counting(&mut step.command, None, &mut counted),
            Counted::Summary(prefix) => {
                cmd::status_counting(&mut step.command, Some(prefix), &mut counted)
            }
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
        let counts = step_counts(counted, !failed);
        total.add(counts);
        results.push((step.name, line, outcome, counts));
    }

    let passed = results.iter().filter(|r| r.2 == "passed").count();
    let nfailed = results.iter().filter(|r| r.2 == "FAILED").count();
    let skipped = results.iter().filter(|r| r.2 == "skipped").count();
    eprintln!("\nxtask test summary:");
    for (name, line, outcome, c) in &results {
        eprintln!(
            "  {outcome:<8} {name:<12} {:>4} passed {:>2} failed {:>2} skipped  {line}",
            c.passed, c.failed, c.skipped
        );
    }
    eprintln!("steps: {passed} passed, {nfailed} failed, {skipped} skipped");
    // The closing line: every test, check and matrix cell of every step, with a failed step
    // counted as a failure and a step not run counted as skipped.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    Ok(if nfailed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::{TestCounts, step_counts};

    #[test]
    fn a_failed_step_never_adds_zero_failures() {
        let none = TestCounts::default();
        assert_eq!(step_counts(none, false).failed, 1);
        assert_eq!(step_counts(none, true).passed, 1);
        let counted = TestCounts {
            passed: 7,
            failed: 0,
            skipped: 0,
        };
        assert_eq!(
            step_counts(counted, false),
            TestCounts {
                passed: 7,
                failed: 1,
                skipped: 0
            }
        );
        let red = TestCounts {
            passed: 7,
            failed: 2,
            skipped: 0,
        };
        assert_eq!(step_counts(red, false), red);
        assert_eq!(step_counts(counted, true), counted);
    }
}
