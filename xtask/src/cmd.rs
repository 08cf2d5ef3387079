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

/// What one step of `cargo xtask test` counted: tests, checks or kernel-matrix cells.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TestCounts {
    pub(crate) passed: u64,
    pub(crate) failed: u64,
    pub(crate) skipped: u64,
}

impl TestCounts {
    /// Adds `other` to these counts.
    pub(crate) fn add(&mut self, other: TestCounts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }

    /// Adds one libtest `test result: ok. N passed; M failed; K ignored; ...` line (`None`
    /// for any other line). Ignored tests count as skipped.
    pub(crate) fn from_libtest_line(line: &str) -> Option<TestCounts> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let mut counts = TestCounts::default();
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            match (words.next().map(str::parse::<u64>), words.next()) {
                (Some(Ok(n)), Some("passed")) => counts.passed += n,
                (Some(Ok(n)), Some("failed")) => counts.failed += n,
                (Some(Ok(n)), Some("ignored")) => counts.skipped += n,
                _ => {}
            }
        }
        Some(counts)
    }

    /// Reads a step's own closing line, `PREFIX: N passed, M failed[, K skipped]`, exactly
    /// (`None` for any other line, including other prefixes: a script a step runs may print
    /// its own such line, which the step's line already counts).
    pub(crate) fn from_summary_line(line: &str, prefix: &str) -> Option<TestCounts> {
        let rest = line.trim().strip_prefix(prefix)?.strip_prefix(": ")?;
        let mut parts = rest.split(", ");
        let mut number = |word: &str| -> Option<u64> {
            parts
                .next()?
                .strip_suffix(word)?
                .strip_suffix(' ')?
                .parse()
                .ok()
        };
        let passed = number("passed")?;
        let failed = number("failed")?;
        let skipped = match parts.next() {
            None => 0,
            Some(p) => p.strip_suffix(" skipped")?.parse().ok()?,
        };
        Some(TestCounts {
            passed,
            failed,
            skipped,
        })
    }
}

/// Like [`status`], but reads the command's stdout (echoing every line) and adds up what it
/// counted: libtest's `test result:` lines of every test binary when `summary_prefix` is
/// `None`, else the command's own `PREFIX: N passed, M failed[, K skipped]` lines.
pub(crate) fn status_counting(
    cmd: &mut Command,
    summary_prefix: Option<&str>,
    counts: &mut TestCounts,
) -> Result<ExitStatus> {
    use std::io::{BufRead as _, Write as _};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut out = std::io::stdout();
    for line in std::io::BufReader::new(stdout).split(b'\n') {
        // Bytes, not lines of UTF-8: a test that prints a non-UTF-8 byte must not end the
        // count (and the step) early.
        let line = line.context("reading the step's output")?;
        let line = String::from_utf8_lossy(&line);
        let _ = writeln!(out, "{line}");
        let step_counts = match summary_prefix {
            None => TestCounts::from_libtest_line(&line),
            Some(prefix) => TestCounts::from_summary_line(&line, prefix),
        };
        if let Some(c) = step_counts {
            counts.add(c);
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

#[cfg(test)]
mod tests {
    use super::TestCounts;

    #[test]
    fn libtest_lines_are_counted_with_ignored_as_skipped() {
        let c = TestCounts::from_libtest_line(
            "test result: FAILED. 12 passed; 2 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        );
        assert_eq!(
            c,
            Some(TestCounts {
                passed: 12,
                failed: 2,
                skipped: 3
            })
        );
        assert_eq!(TestCounts::from_libtest_line("running 12 tests"), None);
    }

    #[test]
    fn only_the_steps_own_summary_line_counts() {
        let line = "deploy-check: 7 passed, 1 failed, 0 skipped";
        assert_eq!(
            TestCounts::from_summary_line(line, "deploy-check"),
            Some(TestCounts {
                passed: 7,
                failed: 1,
                skipped: 0
            })
        );
        assert_eq!(
            TestCounts::from_summary_line("vm-test: 19 passed, 0 failed", "vm-test"),
            Some(TestCounts {
                passed: 19,
                failed: 0,
                skipped: 0
            })
        );
        // A script's own line inside the step, and lines that only look alike.
        for other in [
            "install_test: 14 passed, 0 failed",
            "deploy-check: 7 passed",
            "deploy-check: x passed, 1 failed",
            "deploy-check: 7 passed, 1 failed, 2 ignored",
            "vm-test: 4 kernel(s), 0 failed, 500s in all",
        ] {
            assert_eq!(
                TestCounts::from_summary_line(other, "deploy-check"),
                None,
                "{other}"
            );
        }
    }
}
