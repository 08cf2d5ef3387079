//! `cargo xtask deploy-check`: the CI check of everything under `deploy/` (issue 7).
//!
//! Steps, each timed, all run (a failure does not hide the later ones), summary at the end:
//! - `binary`: the static x86_64 musl release binary (as `cargo xtask dist` builds it),
//!   inspected (static, one BPF object inside).
//! - `unit`: `systemd-analyze verify` of deploy/systemd/imds-snoop.service (its ExecStart
//!   pointed at the built binary, since /usr/local/bin/imds-snoop is not installed here)
//!   must print nothing, and `systemd-analyze security --offline` must rate it 2.0 or less.
//! - `install`: tests/deploy/install_test.sh, deploy/install.sh in a scratch root (install,
//!   install again, update, uninstall, uninstall again: the root is back byte for byte).
//! - `systemd` (root): tests/deploy/systemd_test.sh, a real systemd as PID 1 of private
//!   namespaces runs install.sh and the unit.
//!   The `systemd`, `caps` and `image` steps each prove hop-limit evidence under their
//!   privileges too: a "pod" namespace routed through the "node" to a fake IMDS answering
//!   token PUTs with TTL 1 (tests/deploy/lib.sh's `routed_up`), the pod's PUT logged
//!   `imdsv2 token response dropped (hop limit)`.
//! - `caps` (root): tests/deploy/caps_test.sh, the unit's capabilities are each needed and
//!   together enough; the DaemonSet's set is enough.
//! - `manifests`: kubernetes-validate (PyPI, pinned, in a venv under target/) `--strict`
//!   against several Kubernetes versions, of each file and of `kubectl kustomize` output
//!   (when kubectl is installed), plus tests/deploy/manifests_check.py on the parsed YAML;
//!   a deliberately broken copy must be rejected, so the validator is known to bite.
//! - `prometheus`: tests/deploy/prometheus_check.py with Debian's promtool: `promtool check
//!   rules` and `promtool test rules` (tests/prometheus/rules_test.yaml) of
//!   deploy/prometheus/, the PrometheusRule component generated from it and, rendered by
//!   `kubectl kustomize` (when installed), checked with promtool in the operator overlay;
//!   the NetworkPolicy's namespace set by an overlay patch; every dashboard query parses.
//!   Without promtool the step fails (installed when root; `cargo xtask setup` installs it).
//! - `al2023`: tests/deploy/al2023_check.py (MIME parts, NodeConfig, `bash -n`) and
//!   `terraform fmt -check` of the launch template.
//! - `image` (root): tests/deploy/image_test.sh, the Containerfile built by buildah for both
//!   architectures into one OCI image index (the aarch64 binary built and inspected as
//!   `dist` does), imported into a real containerd and run, as the DaemonSet runs it, on
//!   this machine's (x86_64) manifest; the arm64 manifest is inspected.
//!
//! Missing Debian packages are installed when root. Without root the root-only steps are
//! SKIPPED with a loud message; under `CI` (set and non-empty) nothing is skipped: a step
//! that cannot run fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd,
    dist::{self, Arch},
};

/// kubernetes-validate from PyPI, pinned; its bundled schemas go up to this Kubernetes.
pub(crate) const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// Kubernetes versions the manifests must validate against (EKS's supported range and the
/// newest schema the pinned validator has).
pub(crate) const KUBERNETES_VERSIONS: &[&str] = &["1.31.0", "1.34.0", "1.37.0"];
/// Highest acceptable `systemd-analyze security` exposure (0 = locked down, 10 = none).
pub(crate) const MAX_EXPOSURE: &str = "20"; // the --threshold unit is tenths: 2.0

/// Debian packages the checks run: (program that proves it installed, package).
const DEB_TOOLS: &[(&str, &str)] = &[
    ("systemd-analyze", "systemd"),
    ("buildah", "buildah"),
    ("skopeo", "skopeo"),
    ("capsh", "libcap2-bin"),
    ("setpriv", "util-linux"),
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("busybox", "busybox-static"),
    ("curl", "curl"),
    ("ip", "iproute2"),
    ("promtool", "prometheus"),
];

struct Ctx {
    ci: bool,
    root: bool,
    workdir: PathBuf,
    binary: Option<PathBuf>,
}

enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

pub(crate) fn deploy_check() -> Result<ExitCode> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let root = cmd::is_root();
    if ci {
        eprintln!("xtask deploy-check: CI is set: every step must run; none is skipped");
    } else if !root {
        eprintln!(
            "xtask deploy-check: WARNING: not root and CI unset: the systemd, caps and image \
             steps will be SKIPPED (run as root, or with CI=true to make them fail)"
        );
    }
    let workdir = dist::target_dir().join("deploy-check");
    fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let mut ctx = Ctx {
        ci,
        root,
        workdir,
        binary: None,
    };
    if root {
        install_tools()?;
    }

    type StepFn = fn(&mut Ctx) -> Result<Outcome>;
    let steps: [(&str, StepFn); 9] = [
        ("binary", step_binary),
        ("unit", step_unit),
        ("install", step_install),
        ("systemd", |c| root_script(c, "systemd_test.sh")),
        ("caps", |c| root_script(c, "caps_test.sh")),
        ("manifests", step_manifests),
        ("prometheus", step_prometheus),
        ("al2023", step_al2023),
        ("image", step_image),
    ];
    let mut results = Vec::new();
    for (name, step) in steps {
        eprintln!("\nxtask deploy-check: [{name}]");
        let start = Instant::now();
        let outcome = match step(&mut ctx) {
            Ok(o) => o,
            Err(e) => Outcome::Failed(format!("{e:#}")),
        };
        let outcome = match outcome {
            Outcome::Skipped(why) if ctx.ci => {
                Outcome::Failed(format!("cannot run under CI: {why}"))
            }
            o => o,
        };
        let secs = start.elapsed().as_secs_f64();
        match &outcome {
            Outcome::Passed => eprintln!("xtask deploy-check: [{name}] passed in {secs:.1}s"),
            Outcome::Failed(why) => eprintln!("xtask deploy-check: [{name}] FAILED: {why}"),
            Outcome::Skipped(why) => {
                eprintln!("xtask deploy-check: [{name}] *** SKIPPED: {why} ***")
            }
        }
        results.push((name, outcome, secs));
    }

    eprintln!("\nxtask deploy-check summary:");
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, outcome, secs) in &results {
        let (word, why) = match outcome {
            Outcome::Passed => {
                passed += 1;
                ("passed", String::new())
            }
            Outcome::Failed(w) => {
                failed += 1;
                ("FAILED", first_line(w))
            }
            Outcome::Skipped(w) => {
                skipped += 1;
                ("SKIPPED", first_line(w))
            }
        };
        eprintln!("  {word:<8} {name:<10} {secs:>6.1}s  {why}");
    }
    println!("deploy-check: {passed} passed, {failed} failed, {skipped} skipped");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(160).collect()
}

fn install_tools() -> Result<()> {
    let missing: Vec<&str> = DEB_TOOLS
        .iter()
        .filter(|(program, _)| cmd::find_program(program).is_none())
        .map(|(_, package)| *package)
        // systemd is Priority: important on Debian, so normally present. Never reinstall
        // it over an installed one; a missing one is installed (its package brings the
        // tools without making it PID 1: that takes systemd-sysv, not installed here).
        .filter(|package| *package != "systemd" || !deb_installed("systemd"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    dist::install_debs(&missing, "tools deploy-check runs")
}

fn deb_installed(package: &str) -> bool {
    cmd::output(cmd::command("dpkg-query").args(["-W", "-f=${Status}", package]))
        .ok()
        .flatten()
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn require(program: &str, package: &str) -> Result<PathBuf> {
    cmd::find_program(program)
        .with_context(|| format!("`{program}` not found (Debian package {package})"))
}

fn step_binary(ctx: &mut Ctx) -> Result<Outcome> {
    let binary = dist::build_binary(Arch::X86_64)?;
    dist::inspect_binary(&binary, Arch::X86_64)?;
    dist::run_binary(&binary, Arch::X86_64)?;
    ctx.binary = Some(binary);
    Ok(Outcome::Passed)
}

fn binary(ctx: &Ctx) -> Result<&Path> {
    ctx.binary
        .as_deref()
        .context("no binary: the `binary` step failed")
}

fn step_unit(ctx: &mut Ctx) -> Result<Outcome> {
    let analyze = require("systemd-analyze", "systemd")?;
    let unit_src = cmd::workspace_root().join("deploy/systemd/imds-snoop.service");
    let text = fs::read_to_string(&unit_src)?;
    let exec = "ExecStart=/usr/local/bin/imds-snoop ";
    if !text.contains(exec) {
        bail!("{} has no `{exec}...` line", unit_src.display());
    }
    let binary = binary(ctx)?;
    let dir = ctx.workdir.join("unit");
    fs::create_dir_all(&dir)?;
    let unit = dir.join("imds-snoop.service");
    fs::write(
        &unit,
        text.replace(exec, &format!("ExecStart={} ", binary.display())),
    )?;

    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .context("running systemd-analyze verify")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        bail!("systemd-analyze verify ({}): {}", out.status, said.trim());
    }
    eprintln!("xtask deploy-check: systemd-analyze verify: clean");

    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={MAX_EXPOSURE}"))
        .arg(&unit)
        .output()
        .context("running systemd-analyze security")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no overall line)")
        .trim()
        .to_owned();
    if !out.status.success() {
        bail!(
            "systemd-analyze security: {overall} is above {}.{} ({})",
            &MAX_EXPOSURE[..1],
            &MAX_EXPOSURE[1..],
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    eprintln!("xtask deploy-check: systemd-analyze security: {overall}");
    Ok(Outcome::Passed)
}

fn script(name: &str) -> PathBuf {
    cmd::workspace_root().join("tests/deploy").join(name)
}

fn run_script(name: &str, args: &[&Path]) -> Result<()> {
    let mut c = cmd::command("bash");
    c.arg(script(name)).args(args);
    eprintln!("xtask deploy-check: {}", cmd::display(&c));
    cmd::run(&mut c)
}

fn step_install(ctx: &mut Ctx) -> Result<Outcome> {
    let binary = binary(ctx)?.to_owned();
    run_script("install_test.sh", &[&binary])?;
    Ok(Outcome::Passed)
}

fn root_script(ctx: &mut Ctx, name: &str) -> Result<Outcome> {
    if !ctx.root {
        return Ok(Outcome::Skipped(format!(
            "{name} needs root (BPF, namespaces, containerd)"
        )));
    }
    let binary = binary(ctx)?.to_owned();
    run_script(name, &[&binary])?;
    Ok(Outcome::Passed)
}

/// The image of both architectures: the aarch64 binary is built here (as `dist` builds it).
fn step_image(ctx: &mut Ctx) -> Result<Outcome> {
    if !ctx.root {
        return Ok(Outcome::Skipped(
            "image_test.sh needs root (BPF, namespaces, containerd)".into(),
        ));
    }
    let binary = binary(ctx)?.to_owned();
    let arm64 = dist::build_binary(Arch::Aarch64)?;
    dist::inspect_binary(&arm64, Arch::Aarch64)?;
    run_script("image_test.sh", &[&binary, &arm64])?;
    Ok(Outcome::Passed)
}

/// The venv under target/ with kubernetes-validate (and PyYAML, its dependency).
fn validator_venv(ctx: &Ctx) -> Result<PathBuf> {
    let venv = ctx.workdir.join("venv");
    let python = venv.join("bin/python");
    let pinned = KUBERNETES_VALIDATE.split("==").nth(1).unwrap_or_default();
    let have = cmd::output(Command::new(venv.join("bin/kubernetes-validate")).arg("--version"))?
        .unwrap_or_default();
    if have.contains(pinned) && python.exists() {
        return Ok(venv);
    }
    eprintln!(
        "xtask deploy-check: installing {KUBERNETES_VALIDATE} into {}",
        venv.display()
    );
    let python3 = require("python3", "python3")?;
    if !python.exists() {
        cmd::run(Command::new(&python3).args(["-m", "venv"]).arg(&venv))
            .context("creating the venv (Debian: apt-get install python3-venv)")?;
    }
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(KUBERNETES_VALIDATE),
    )?;
    Ok(venv)
}

fn validate(venv: &Path, files: &[PathBuf]) -> Result<()> {
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(venv.join("bin/kubernetes-validate"))
            .args(["--strict", "--quiet", "--kubernetes-version", version])
            .args(files)
            .output()
            .context("running kubernetes-validate")?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // --quiet prints only warnings and failures: any output is a problem (e.g. a kind
        // with no schema, which the validator only warns about).
        if !out.status.success() || !said.trim().is_empty() {
            bail!(
                "kubernetes-validate --strict -k {version} ({}): {}",
                out.status,
                said.trim()
            );
        }
    }
    Ok(())
}

fn step_manifests(ctx: &mut Ctx) -> Result<Outcome> {
    let venv = validator_venv(ctx)?;
    let kdir = cmd::workspace_root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(&kdir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    validate(&venv, &files)?;
    eprintln!(
        "xtask deploy-check: {} manifests valid (--strict) for Kubernetes {}",
        files.len(),
        KUBERNETES_VERSIONS.join(", ")
    );

    // The validator must reject a broken manifest: a misspelt field and a wrong type.
    let dir = ctx.workdir.join("manifests");
    fs::create_dir_all(&dir)?;
    let ds = fs::read_to_string(kdir.join("daemonset.yaml"))?;
    for (what, from, to) in [
        (
            "misspelt field",
            "      hostPID: true",
            "      hostPid: true",
        ),
        (
            "wrong type",
            "              memory: 128Mi",
            "              memory: [128Mi]",
        ),
    ] {
        if !ds.contains(from) {
            bail!("daemonset.yaml has no `{}` to break", from.trim());
        }
        let broken = dir.join("broken-daemonset.yaml");
        fs::write(&broken, ds.replacen(from, to, 1))?;
        if validate(&venv, &[broken]).is_ok() {
            bail!("kubernetes-validate accepted a DaemonSet with a {what}: it checks nothing");
        }
    }
    eprintln!("xtask deploy-check: a misspelt field and a wrong type are rejected");

    let python = venv.join("bin/python");
    let checker = script("manifests_check.py");
    match cmd::find_program("kubectl") {
        Some(kubectl) => {
            let rendered = dir.join("rendered.yaml");
            let out = Command::new(kubectl)
                .args(["kustomize"])
                .arg(&kdir)
                .output()
                .context("running kubectl kustomize")?;
            if !out.status.success() {
                bail!(
                    "kubectl kustomize: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            fs::write(&rendered, &out.stdout)?;
            validate(&venv, std::slice::from_ref(&rendered))?;
            cmd::run(
                Command::new(&python)
                    .arg(&checker)
                    .arg(&kdir)
                    .arg(&rendered),
            )?;
            eprintln!("xtask deploy-check: `kubectl kustomize` output valid and checked");
        }
        None => {
            eprintln!(
                "xtask deploy-check: kubectl not installed: the kustomization is not rendered; \
                 each file is validated and checked on its own instead"
            );
            cmd::run(Command::new(&python).arg(&checker).arg(&kdir))?;
        }
    }
    Ok(Outcome::Passed)
}

fn step_prometheus(ctx: &mut Ctx) -> Result<Outcome> {
    let promtool = require("promtool", "prometheus")?;
    let venv = validator_venv(ctx)?;
    let mut c = Command::new(venv.join("bin/python"));
    c.arg(script("prometheus_check.py"))
        .arg("--promtool")
        .arg(&promtool)
        .arg("--workdir")
        .arg(ctx.workdir.join("prometheus"));
    match cmd::find_program("kubectl") {
        Some(kubectl) => {
            c.arg("--kubectl").arg(kubectl);
        }
        // As the manifests step: the PrometheusRule is still compared with the rules file
        // promtool checks, byte for byte; only its rendering is not seen.
        None => eprintln!(
            "xtask deploy-check: kubectl not installed: the operator overlay and the \
             NetworkPolicy patch are not rendered"
        ),
    }
    eprintln!("xtask deploy-check: {}", cmd::display(&c));
    cmd::run(&mut c)?;
    Ok(Outcome::Passed)
}

fn step_al2023(ctx: &mut Ctx) -> Result<Outcome> {
    let venv = validator_venv(ctx)?;
    let dir = cmd::workspace_root().join("deploy/al2023");
    cmd::run(
        Command::new(venv.join("bin/python"))
            .arg(script("al2023_check.py"))
            .arg(dir.join("user-data.mime")),
    )?;
    let Some(terraform) = cmd::find_program("terraform") else {
        return Ok(Outcome::Skipped(
            "terraform not installed: launch-template.tf not checked (`terraform fmt -check`)"
                .into(),
        ));
    };
    // fmt parses the HCL without providers (validate would need the AWS provider from a
    // registry this machine cannot reach).
    let out = Command::new(terraform)
        .args(["fmt", "-check", "-diff", "-no-color"])
        .arg(dir.join("launch-template.tf"))
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .output()
        .context("running terraform fmt")?;
    if !out.status.success() {
        bail!(
            "terraform fmt -check launch-template.tf: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("xtask deploy-check: launch-template.tf parses and is formatted (terraform fmt)");
    Ok(Outcome::Passed)
}
