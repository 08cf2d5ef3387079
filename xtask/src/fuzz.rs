//! `cargo xtask fuzz`: a short `cargo fuzz` run of every target in fuzz/ (the request
//! reassembler, the kernel event decoder, the whole pipeline on a hostile node tree, the
//! report's log-line parser). Part of `cargo
//! xtask bench`, not of `cargo xtask test`: fuzzing finds new inputs at random, and CI must
//! not fail on a run's luck. A crash it finds becomes a unit test and a corpus entry.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::cmd;

/// The targets in fuzz/Cargo.toml, in the order of the data path.
pub(crate) const TARGETS: [&str; 4] = ["decode", "http_reassembly", "pipeline", "report_line"];

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FuzzArgs {
    /// Seconds per target (libFuzzer's -max_total_time).
    #[arg(long, default_value_t = 25)]
    pub seconds: u64,
    /// Targets to run (default: all).
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,
}

pub(crate) fn fuzz(args: &FuzzArgs) -> Result<()> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    if let Some(t) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!(
            "unknown fuzz target `{t}` (targets: {})",
            TARGETS.join(", ")
        );
    }
    ensure_cargo_fuzz()?;
    let root = cmd::workspace_root();
    let mut results = Vec::new();
    for target in targets {
        // New inputs go to a scratch corpus; the committed one (read-only here) changes only
        // on purpose (`cargo fuzz cmin`, a regression entry).
        let scratch = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        let committed: PathBuf = root.join("fuzz/corpus").join(target);
        let mut run = fuzz_command();
        run.args(["run", target])
            .arg(&scratch)
            .arg(&committed)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds));
        eprintln!("\nxtask: [fuzz {target}] {}", cmd::display(&run));
        let outcome = match cmd::status(&mut run) {
            Ok(st) if st.success() => "passed".to_string(),
            Ok(st) => format!("FAILED ({st}): the crashing input is in fuzz/artifacts/{target}/"),
            Err(e) => format!("FAILED: {e:#}"),
        };
        results.push((target, outcome));
    }
    eprintln!("\nxtask fuzz summary ({} s per target):", args.seconds);
    for (target, outcome) in &results {
        eprintln!("  {target:<16} {outcome}");
    }
    if results.iter().any(|(_, o)| o.starts_with("FAILED")) {
        bail!("a fuzz target failed");
    }
    Ok(())
}

/// `cargo +nightly fuzz` in the workspace root (it finds fuzz/ there). The fuzz builds do
/// not need the kernel program: AYA_BUILD_SKIP leaves it out of imds-snoop's build.rs.
fn fuzz_command() -> std::process::Command {
    let mut c = cmd::command("cargo");
    c.args(["+nightly", "fuzz"]).env("AYA_BUILD_SKIP", "1");
    c
}

/// Installs cargo-fuzz with the nightly toolchain unless a working one is on PATH.
fn ensure_cargo_fuzz() -> Result<()> {
    if cmd::output(cmd::command("rustup").args(["run", "nightly", "rustc", "--version"]))?.is_none()
    {
        bail!("the nightly toolchain is missing: run `cargo xtask setup` first");
    }
    if let Some(v) = cmd::output(fuzz_command().arg("--version"))? {
        eprintln!("xtask: ok: {}", v.trim());
        return Ok(());
    }
    let mut install = cmd::command("cargo");
    install.args(["+nightly", "install", "cargo-fuzz", "--locked"]);
    eprintln!("xtask: installing cargo-fuzz: {}", cmd::display(&install));
    cmd::run(&mut install)?;
    match cmd::output(fuzz_command().arg("--version"))? {
        Some(v) => eprintln!("xtask: ok: installed {}", v.trim()),
        None => bail!("cargo-fuzz still does not run after `cargo install cargo-fuzz`"),
    }
    Ok(())
}
