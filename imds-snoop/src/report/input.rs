//! Where the lines come from: files, rotated files, directories, stdin.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use super::Error;

/// A file to read, or stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Stdin,
    File(PathBuf),
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Stdin => "stdin".into(),
            Source::File(p) => p.display().to_string(),
        }
    }
}

/// `-` and no argument mean stdin; a directory means its `imds-trace.log*` files (or, when
/// there are none, its `*.log` and `*.log.N` files), oldest rotation first.
pub(super) fn expand(args: &[PathBuf]) -> Result<Vec<Source>, Error> {
    if args.is_empty() {
        return Ok(vec![Source::Stdin]);
    }
    let mut out = Vec::new();
    for arg in args {
        if arg.as_os_str() == "-" {
            out.push(Source::Stdin);
        } else if arg.is_dir() {
            let files = log_files(arg)?;
            if files.is_empty() {
                return Err(Error::NoLogs(arg.display().to_string()));
            }
            out.extend(files.into_iter().map(Source::File));
        } else {
            out.push(Source::File(arg.clone()));
        }
    }
    Ok(out)
}

fn log_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let read_err = |source| Error::Read {
        name: dir.display().to_string(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if entry.file_type().map_err(read_err)?.is_file()
            && let Some(name) = entry.file_name().to_str()
        {
            names.push(name.to_string());
        }
    }
    let trace: Vec<&String> = names
        .iter()
        .filter(|n| rotation("imds-trace.log", n).is_some())
        .collect();
    let mut picked: Vec<(String, u32)> = if trace.is_empty() {
        names
            .iter()
            .filter_map(|n| {
                let base = n.rfind(".log").map(|i| &n[..i + 4])?;
                Some((base.to_string(), rotation(base, n)?))
            })
            .collect()
    } else {
        trace
            .into_iter()
            .filter_map(|n| Some(("imds-trace.log".into(), rotation("imds-trace.log", n)?)))
            .collect()
    };
    // Same base: highest rotation number (oldest) first.
    picked.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    Ok(picked
        .into_iter()
        .map(|(base, n)| match n {
            0 => dir.join(base),
            n => dir.join(format!("{base}.{n}")),
        })
        .collect())
}

/// `base` -> 0, `base.3` -> 3, anything else -> None.
fn rotation(base: &str, name: &str) -> Option<u32> {
    match name.strip_prefix(base)? {
        "" => Some(0),
        rest => rest.strip_prefix('.')?.parse().ok(),
    }
}

/// Calls `each` with every line of `source` (invalid UTF-8 replaced, not fatal); `stdin`
/// is what [`Source::Stdin`] reads.
pub(super) fn read_lines(
    source: &Source,
    stdin: &mut dyn BufRead,
    mut each: impl FnMut(&str),
) -> Result<(), Error> {
    let err = |e| Error::Read {
        name: source.name(),
        source: e,
    };
    let mut file;
    let reader: &mut dyn BufRead = match source {
        Source::Stdin => stdin,
        Source::File(path) => {
            file = BufReader::new(File::open(path).map_err(err)?);
            &mut file
        }
    };
    let mut buf = Vec::new();
    let mut first = true;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(err)? == 0 {
            return Ok(());
        }
        if first && buf.starts_with(&[0x1f, 0x8b]) {
            return Err(Error::Compressed(source.name()));
        }
        first = false;
        each(&String::from_utf8_lossy(&buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/report");

    #[test]
    fn directory_means_its_trace_logs_oldest_first() {
        let dir = Path::new(FIXTURES).join("host");
        let got = expand(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(
            got,
            vec![
                Source::File(dir.join("imds-trace.log.2")),
                Source::File(dir.join("imds-trace.log.1")),
                Source::File(dir.join("imds-trace.log")),
            ],
            "other files in the directory (README) are not read"
        );
    }

    #[test]
    fn stdin_and_plain_files() {
        assert_eq!(expand(&[]).unwrap(), vec![Source::Stdin]);
        let f = PathBuf::from("/nonexistent/x.log");
        assert_eq!(
            expand(&["-".into(), f.clone()]).unwrap(),
            vec![Source::Stdin, Source::File(f.clone())]
        );
        let e = read_lines(&Source::File(f), &mut &b""[..], |_| {}).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/x.log: "),
            "{e}"
        );
    }

    #[test]
    fn rotations() {
        assert_eq!(rotation("imds-trace.log", "imds-trace.log"), Some(0));
        assert_eq!(rotation("imds-trace.log", "imds-trace.log.12"), Some(12));
        assert_eq!(rotation("imds-trace.log", "imds-trace.log.gz"), None);
        assert_eq!(rotation("imds-trace.log", "imds-trace.logx"), None);
    }

    #[test]
    fn compressed_input_is_refused() {
        let dir = std::env::temp_dir().join(format!("imds-report-gz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("imds-trace.log.1");
        std::fs::write(&f, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
        let e = read_lines(&Source::File(f), &mut &b""[..], |_| {}).unwrap_err();
        assert!(matches!(e, Error::Compressed(_)), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_of_other_logs() {
        let dir = Path::new(FIXTURES);
        let got = expand(&[dir.to_path_buf()]).unwrap();
        assert!(
            got.contains(&Source::File(dir.join("e2e-daemon.log"))),
            "{got:?}"
        );
        assert!(
            !got.iter()
                .any(|s| matches!(s, Source::File(p) if p.ends_with("nodes.jsonl")))
        );
    }
}
