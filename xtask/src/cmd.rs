//! Small helpers around `std::process::Command`: the workspace root, a PATH that includes
//! cargo's bin directory, and running a command while echoing it.

use std::{
    env,
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the directory above `xtask/`).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Where `cargo install` puts binaries: `$CARGO_INSTALL_ROOT/bin`, else `$CARGO_HOME/bin`,
/// else `~/.cargo/bin`.
pub(crate) fn cargo_install_bin_dir() -> Option<PathBuf> {
    if let Some(root) = env::var_os("CARGO_INSTALL_ROOT").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(root).join("bin"));
    }
    if let Some(home) = env::var_os("CARGO_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".cargo").join("bin"))
}

/// `$PATH` with cargo's install directory appended when it is missing, so that a freshly
/// installed `bpf-linker` is found by the builds we start (aya-build runs it through rustc).
pub(crate) fn search_path() -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if let Some(bin) = cargo_install_bin_dir()
        && !dirs.contains(&bin)
    {
        dirs.push(bin);
    }
    env::join_paths(dirs).unwrap_or(current)
}

/// The first executable file called `name` on [`search_path`].
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    env::split_paths(&search_path())
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A command that runs in the workspace root with [`search_path`] as its PATH.
pub(crate) fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root()).env("PATH", search_path());
    cmd
}

/// `cmd` as a shell-like string, for messages.
pub(crate) fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            format!("'{}'", a.replace('\'', r"'\''"))
        } else {
            a.into_owned()
        }
    }));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio and returns its exit status (an error only if it could
/// not be started).
pub(crate) fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("cannot start `{}`", display(cmd)))
}

/// Tests counted from libtest's `test result: ok. N passed; M failed; ...` lines.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TestCounts {
    pub passed: u64,
    pub failed: u64,
}

/// Like [`status`], but reads the command's stdout (echoing every line) to add up the
/// `test result:` lines of each test binary cargo runs.
pub(crate) fn status_counting_tests(
    cmd: &mut Command,
    counts: &mut TestCounts,
) -> Result<ExitStatus> {
    use std::io::{BufRead as _, Write as _};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut out = std::io::stdout();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        let _ = writeln!(out, "{line}");
        if let Some(rest) = line.trim().strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                match (words.next().map(str::parse::<u64>), words.next()) {
                    (Some(Ok(n)), Some("passed")) => counts.passed += n,
                    (Some(Ok(n)), Some("failed")) => counts.failed += n,
                    _ => {}
                }
            }
        }
    }
    child
        .wait()
        .with_context(|| format!("waiting for `{}`", display(cmd)))
}

/// Runs `cmd` with inherited stdio; fails unless it exits successfully.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if !st.success() {
        bail!("`{}` failed ({st})", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` with captured output. `Ok(Some(stdout))` when it exits successfully,
/// `Ok(None)` when it runs but fails or cannot be started because the program is missing.
pub(crate) fn output(cmd: &mut Command) -> Result<Option<String>> {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot start `{}`", display(cmd))),
    }
}

/// Like [`output`] but returns the first line of stderr (or stdout) on failure, for
/// "present but broken" messages.
pub(crate) fn output_or_reason(cmd: &mut Command) -> std::result::Result<String, String> {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => {
            let text = if out.stderr.is_empty() {
                out.stdout
            } else {
                out.stderr
            };
            let text = String::from_utf8_lossy(&text);
            let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            Err(format!("{} ({})", line.trim(), out.status))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

/// A command that runs `program` as root: directly when we are root, through `sudo` when it
/// is available, else an error naming `what` needs root.
pub(crate) fn root_command(program: impl AsRef<OsStr>, what: &str) -> Result<Command> {
    if is_root() {
        return Ok(command(program));
    }
    let Some(sudo) = find_program("sudo") else {
        bail!("{what} needs root: run this as root (sudo is not installed)");
    };
    let mut cmd = command(sudo);
    cmd.arg(program);
    Ok(cmd)
}
