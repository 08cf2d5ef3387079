//! `imds-snoop report`: reads trace logs (text or JSON lines, rotated files, stdin) and
//! answers the migration question per node: who still uses IMDSv1, which SDKs are too old
//! for IMDSv2, and which pods a PUT response hop limit of 1 would cut off.
//!
//! Exit status: 0 when a report was written (whatever it says), 2 when an input could not
//! be read (nothing is written then).

mod aggregate;
mod input;
/// Public for the fuzz target of the log-line parser (see lib.rs).
pub mod parse;
mod render;
mod sdk;
mod verdict;
mod words;

use std::{
    io::{self, BufRead, IsTerminal as _, Write},
    path::PathBuf,
    process::ExitCode,
};

use aggregate::{Aggregator, Report};
use anyhow::Context as _;
use input::Source;
use sdk::SdkTable;

/// `imds-snoop report`'s arguments (clap; each field's doc is its `--help`).
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Trace logs, text or JSON lines, rotated ones (`imds-trace.log.1`) too. A directory
    /// means its imds-trace.log* files (else its *.log files); `-` or nothing: stdin.
    #[arg(value_name = "FILES")]
    pub files: Vec<PathBuf>,

    /// `table` (aligned, with the verdicts), `json` (one document), `csv` (rows only; the
    /// verdicts go to stderr).
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,

    /// Node the text lines come from (they do not say; default "this node", or the pod of
    /// `kubectl logs --prefix`). JSON lines name their node: only this node's are read.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,

    /// A node whose lines cover less time than this is INCONCLUSIVE, never SAFE: a day of
    /// cron jobs by default. `0` to judge any window (tests, examples). E.g. 24h, 90m, 7d.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_window)]
    pub min_window: chrono::TimeDelta,

    /// One row per pod. By default a row is a workload (guessed from its pods' names: a
    /// Deployment's pods across rollouts, a CronJob's runs), container and image, with a
    /// pod count: one thing to fix, and the image to rebuild.
    #[arg(long)]
    pub per_pod: bool,
}

/// `24h`, `90m`, `7d`, `30s`, `0`.
fn parse_window(s: &str) -> Result<chrono::TimeDelta, String> {
    let err = || format!("{s:?} is not a duration such as 24h, 90m, 7d or 0");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = num.parse().map_err(|_| err())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(err()),
    };
    n.checked_mul(secs)
        .and_then(chrono::TimeDelta::try_seconds)
        .ok_or_else(err)
}

/// `--format` of the report (on stdout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns, one row per caller, then the per-node verdicts.
    Table,
    /// One JSON document: callers, nodes and verdicts.
    Json,
    /// One row per caller; the summary and verdicts go to stderr.
    Csv,
}

/// Why an input cannot be read: the report then writes nothing and exits 2.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Opening or reading a file, a directory or stdin failed (`name` as given, `-` for
    /// stdin).
    #[error("cannot read {name}: {source}")]
    Read { name: String, source: io::Error },
    /// A gzip file (rotated logs are often compressed): the name as given.
    #[error("{0} is compressed: decompress it first (zcat {0} | imds-snoop report -)")]
    Compressed(String),
    /// A directory without trace logs.
    #[error("{0} has no imds-trace.log* or *.log files")]
    NoLogs(String),
}

/// Exit status when an input cannot be read.
const EXIT_UNREADABLE: u8 = 2;

/// Runs `imds-snoop report`: reads every input (`args.files`, or stdin), aggregates the
/// calls per node and caller, writes the report in `args.format` to stdout and the
/// verdicts. `Ok(0)` when a report was written, `Ok(2)` (with a message on stderr) when an
/// input could not be read (`Error`); `Err` only when stdout cannot be written (a closed
/// pipe is not an error) or the built-in SDK table is broken.
pub fn run(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let table = SdkTable::builtin().context("the built-in SDK version table is broken")?;
    let stdin = io::stdin();
    if (args.files.is_empty() || args.files.iter().any(|f| f.as_os_str() == "-"))
        && stdin.is_terminal()
    {
        eprintln!(
            "imds-snoop report: reading trace lines from stdin (give files or a directory, \
             e.g. /var/log/imds)"
        );
    }
    let report = match build(args, &table, &mut stdin.lock()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("imds-snoop report: {e}");
            return Ok(ExitCode::from(EXIT_UNREADABLE));
        }
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    match write(&mut out, args.format, &report, &table).and_then(|()| out.flush()) {
        Ok(()) => {}
        // `imds-snoop report ... | head`: the reader has what it wanted.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(anyhow::Error::new(e).context("cannot write the report")),
    }
    if args.format == ReportFormat::Csv {
        eprintln!("{}", render::summary(&report));
        for v in verdict::all(&report) {
            eprintln!("{}", v.line());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn build(args: &ReportArgs, table: &SdkTable, stdin: &mut dyn BufRead) -> Result<Report, Error> {
    let sources = input::expand(&args.files)?;
    let mut agg = Aggregator::new(args.node.as_deref(), table)
        .min_window(args.min_window)
        .per_pod(args.per_pod);
    let mut stdin_read = false;
    for source in &sources {
        // `- -` reads stdin once.
        if *source == Source::Stdin && std::mem::replace(&mut stdin_read, true) {
            continue;
        }
        input::read_lines(source, stdin, |line| agg.add(parse::read_line(line)))?;
    }
    Ok(agg.finish())
}

fn write(
    out: &mut impl Write,
    format: ReportFormat,
    report: &Report,
    table: &SdkTable,
) -> io::Result<()> {
    match format {
        ReportFormat::Table => render::table(out, report, table),
        ReportFormat::Json => render::json(out, report, table),
        ReportFormat::Csv => render::csv(out, report),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/report");

    fn args(files: &[&str], node: Option<&str>) -> ReportArgs {
        ReportArgs {
            files: files.iter().map(|f| Path::new(FIXTURES).join(f)).collect(),
            format: ReportFormat::Table,
            node: node.map(str::to_string),
            min_window: chrono::TimeDelta::zero(),
            per_pod: false,
        }
    }

    fn table_text(args: &ReportArgs, stdin: &[u8]) -> String {
        let table = SdkTable::builtin().unwrap();
        let report = build(args, &table, &mut &stdin[..]).unwrap();
        let mut out = Vec::new();
        write(&mut out, args.format, &report, &table).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn e2e_logs_with_rotations() {
        // host/: botocore v2 (imds-trace.log.2), curl v1 (.1), curl v2 + junk (current).
        // pod/: wget v1 from a containerd pod, and a tracer JSON line of another node.
        let text = table_text(&args(&["host", "pod"], None), b"");
        let lines: Vec<&str> = text.lines().collect();
        let row = |needle: &str| {
            *lines
                .iter()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no row with {needle} in\n{text}"))
        };
        assert!(
            lines[0].starts_with("NODE "),
            "two nodes: a NODE column\n{text}"
        );
        let curl = row("curl/7.88.1");
        assert!(curl.contains("this node  host"), "{curl}");
        let wget = row("shop/web~");
        assert!(wget.contains(" app ") && wget.contains(" wget "), "{wget}");
        let boto = row("botocore 1.43.11");
        assert!(boto.ends_with("2026-11-23 09:28:58"), "{boto}");
        assert!(
            text.contains(
                "11 lines read: 9 calls to IMDS from 4 callers; 1 line not understood; 1 call \
                 to other --target destinations not counted"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "this node: NOT SAFE: 2 callers use IMDSv1: curl on host, wget in shop/web~ \
             (app, 1 pod); hop limit 1: INCONCLUSIVE (incomplete: 1 line not understood (not a trace \
             line of this version, nor the daemon's own)) [window 2026-11-23 09:28:58 .. \
             2026-11-23 09:33:16 (4m 18s)]"
            ),
            "{text}"
        );
        // The line not understood is in a stream that holds node-a's JSON line too: it
        // could be either's.
        assert!(
            text.contains(
                "node-a: NOT SAFE: 1 caller uses IMDSv1: curl on host; hop limit 1: INCONCLUSIVE \
                 (incomplete: 1 line not understood"
            ),
            "{text}"
        );
    }

    #[test]
    fn stdin_and_node_name() {
        let stdin = std::fs::read(Path::new(FIXTURES).join("pod/imds-trace.log")).unwrap();
        let a = ReportArgs {
            files: vec!["-".into()],
            format: ReportFormat::Table,
            node: Some("ip-10-0-1-5".into()),
            min_window: chrono::TimeDelta::zero(),
            per_pod: false,
        };
        let text = table_text(&a, &stdin);
        assert!(
            !text.contains("node-a"),
            "--node keeps only its JSON lines\n{text}"
        );
        assert!(
            text.contains(
                "ip-10-0-1-5: NOT SAFE: 1 caller uses IMDSv1: wget in shop/web~ (app, 1 pod)"
            ),
            "{text}"
        );
        assert!(
            text.contains("3 lines read: 2 calls to IMDS from 1 caller; 0 lines not understood"),
            "{text}"
        );
    }

    #[test]
    fn json_lines_safe_node() {
        let mut a = args(&["nodes.jsonl"], Some("node-b"));
        a.format = ReportFormat::Json;
        let table = SdkTable::builtin().unwrap();
        let report = build(&a, &table, &mut &b""[..]).unwrap();
        let v = verdict::all(&report);
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].line(),
            "node-b: SAFE: no IMDSv1 calls; http_tokens=required is safe; hop limit 1 would \
             cut off: payments/api-7d9f~ (1 pod) (keep hop limit 2, or move them to IRSA/Pod Identity) \
             [window 2026-11-24 08:00:01 .. 2026-11-24 08:00:01 (0s)]"
        );
    }

    #[test]
    fn json_lines_old_sdk_and_drops() {
        let table = SdkTable::builtin().unwrap();
        let report = build(
            &args(&["nodes.jsonl"], Some("node-a")),
            &table,
            &mut &b""[..],
        )
        .unwrap();
        let java = report
            .callers
            .iter()
            .find(|c| c.key.process == "java")
            .unwrap();
        assert_eq!(java.notes(), ["SDK too old for IMDSv2 (needs >= 1.11.678)"]);
        assert_eq!(
            verdict::all(&report)[0].line(),
            "node-a: NOT SAFE: 2 callers use IMDSv1: curl on host, java [aws-sdk-java 1.11.600] \
             on host (legacy-agent.service); hop limit 1: INCONCLUSIVE (incomplete: the kernel \
             dropped 2 events) [window 2026-11-23 09:29:29 .. 2026-11-24 08:00:06 (22h 30m)]"
        );
    }

    #[test]
    fn unreadable_input_is_an_error() {
        let table = SdkTable::builtin().unwrap();
        let e = build(&args(&["missing.log"], None), &table, &mut &b""[..]).unwrap_err();
        assert!(matches!(e, Error::Read { .. }), "{e}");
    }
}
