//! The report as an aligned table, one JSON document, or CSV rows.

use std::io::{self, Write};

use chrono::NaiveDateTime;
use serde::Serialize;

use super::{
    aggregate::{Caller, Report},
    parse::Origin,
    sdk::{Sdk, SdkTable, Source},
    verdict::{self, Verdict},
    words::plural,
};

/// Longest user agent shown in the table (JSON and CSV have it whole).
const UA_MAX: usize = 40;

/// Columns shared by the table and CSV, in order.
fn row(c: &Caller, seen: fn(Option<NaiveDateTime>) -> String) -> Vec<String> {
    let (place, container) = place(&c.key.origin);
    vec![
        c.key.node.clone(),
        place,
        container,
        image(&c.key.origin).unwrap_or_default().to_string(),
        pods(c),
        c.key.process.clone(),
        c.key.user_agent.clone().unwrap_or_default(),
        c.sdk.as_ref().map(Sdk::label).unwrap_or_default(),
        c.counts.v1.to_string(),
        c.counts.v2.to_string(),
        c.counts.token.to_string(),
        c.counts.token_failures.to_string(),
        seen(c.counts.first_seen),
        seen(c.counts.last_seen),
        c.notes().join("; "),
    ]
}

const HEADER: [&str; 15] = [
    "NODE",
    "POD / HOST",
    "CONTAINER",
    "IMAGE",
    "PODS",
    "PROCESS",
    "USER AGENT",
    "SDK",
    "V1",
    "V2",
    "TOKEN",
    "TOKEN FAIL",
    "FIRST SEEN",
    "LAST SEEN",
    "NOTE",
];
const NODE_COL: usize = 0;
const PODS_COL: usize = 4;
const UA_COL: usize = 6;
/// Counts are right-aligned.
const NUMERIC: std::ops::Range<usize> = 8..12;

/// (`shop/web~`, `app`) for a workload (its guessed name), (`shop/web-1`, `app`) for a
/// pod, (`host`, ``), (`host cron.service`, ``), (`-`, `0123456789ab`).
fn place(o: &Origin) -> (String, String) {
    match o {
        Origin::Pod {
            namespace,
            name,
            container,
            ..
        } => (
            format!("{namespace}/{name}"),
            container.clone().unwrap_or_default(),
        ),
        Origin::Workload {
            namespace,
            workload,
            container,
            ..
        } => (
            format!("{namespace}/{workload}~"),
            container.clone().unwrap_or_default(),
        ),
        Origin::Container { id } => ("-".into(), id.clone()),
        Origin::Host { unit: Some(u) } => (format!("host {u}"), String::new()),
        Origin::Host { unit: None } => ("host".into(), String::new()),
        Origin::Unknown => ("?".into(), String::new()),
    }
}

/// The image the row's container runs: the one to rebuild.
fn image(o: &Origin) -> Option<&str> {
    match o {
        Origin::Pod { image, .. } | Origin::Workload { image, .. } => image.as_deref(),
        _ => None,
    }
}

/// How many pods the row's calls came from; empty for host processes.
fn pods(c: &Caller) -> String {
    match c.key.origin {
        Origin::Pod { .. } | Origin::Workload { .. } => c.counts.pods.len().to_string(),
        _ => String::new(),
    }
}

fn seconds(t: Option<NaiveDateTime>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn millis(t: Option<NaiveDateTime>) -> String {
    t.map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

/// `N lines read, M not understood; ...`: what the input held.
pub(super) fn summary(report: &Report) -> String {
    let calls: u64 = report.nodes.values().map(|n| n.calls).sum();
    let other: u64 = report.nodes.values().map(|n| n.other_destinations).sum();
    let mut s = format!(
        "{} read: {} to IMDS from {}; {} not understood",
        plural(report.lines, "line"),
        plural(calls, "call"),
        plural(report.callers.len() as u64, "caller"),
        plural(report.not_understood, "line"),
    );
    if other > 0 {
        s.push_str(&format!(
            "; {} to other --target destinations not counted",
            plural(other, "call")
        ));
    }
    s
}

pub(super) fn table(out: &mut impl Write, report: &Report, sdks: &SdkTable) -> io::Result<()> {
    let many_nodes = report.nodes.len() > 1;
    let mut rows = vec![HEADER.map(str::to_string).to_vec()];
    for c in &report.callers {
        // A JSON line's header value may hold a line break: never in a table cell.
        let mut r: Vec<String> = row(c, seconds)
            .iter()
            .map(|cell| cell.replace(char::is_control, "?"))
            .collect();
        r[UA_COL] = shorten(&r[UA_COL], UA_MAX);
        rows.push(r);
    }
    if !many_nodes {
        for r in &mut rows {
            r.remove(NODE_COL);
        }
    }
    let offset = usize::from(!many_nodes);
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let w = widths[i];
            if i > 0 {
                line.push_str("  ");
            }
            if NUMERIC.contains(&(i + offset)) || i + offset == PODS_COL {
                line.push_str(&format!("{cell:>w$}"));
            } else {
                line.push_str(&format!("{cell:<w$}"));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    writeln!(out)?;
    writeln!(out, "{}", summary(report))?;
    if report
        .callers
        .iter()
        .any(|c| c.sdk.as_ref().is_some_and(Sdk::below_minimum))
    {
        writeln!(
            out,
            "SDK minimum versions for IMDSv2: {} <{}>",
            sdks.source.title, sdks.source.url
        )?;
    }
    for v in verdict::all(report) {
        writeln!(out, "{}", v.line())?;
    }
    Ok(())
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max - 1).collect();
    t.push('…');
    t
}

/// Rows only, with a header; the summary and verdicts go to stderr.
pub(super) fn csv(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let header: Vec<String> = HEADER
        .iter()
        .map(|h| h.to_lowercase().replace(" / ", "_").replace(' ', "_"))
        .collect();
    writeln!(out, "{}", csv_line(&header))?;
    for c in &report.callers {
        writeln!(out, "{}", csv_line(&row(c, millis)))?;
    }
    Ok(())
}

/// RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.
fn csv_line(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Serialize)]
struct JsonReport<'a> {
    report_schema: u32,
    callers: Vec<JsonCaller<'a>>,
    verdicts: Vec<JsonVerdict>,
    lines: u64,
    lines_not_understood: u64,
    sdk_table_source: &'a Source,
}

#[derive(Serialize)]
struct JsonCaller<'a> {
    node: &'a str,
    origin: &'a Origin,
    /// The container's image, when the lines name it.
    image: Option<&'a str>,
    /// The pods whose calls the row counts (a workload's, or the one with `--per-pod`).
    pods: Vec<&'a str>,
    process: &'a str,
    user_agent: Option<&'a str>,
    sdk: Option<&'a Sdk>,
    v1: u64,
    v2: u64,
    token: u64,
    token_failures: u64,
    /// Token PUTs whose response was seen dropped at the hop limit (the drop hook).
    token_dropped: u64,
    malformed: u64,
    fallbacks: u64,
    /// v1 calls answered 401 (IMDSv2 already required there).
    v1_refused: u64,
    /// Token PUTs answered with an error status, by status.
    token_refused: &'a std::collections::BTreeMap<u16, u64>,
    /// Token PUTs whose connection was reset or closed before a response, by how.
    token_ended: &'a std::collections::BTreeMap<String, u64>,
    /// `host` (the node's network namespace), `other` (behind a routing hop), `unknown`
    /// (the lines do not say).
    network: &'static str,
    /// Node-local wall-clock time, milliseconds, no offset (text lines carry none).
    first_seen: Option<String>,
    last_seen: Option<String>,
    notes: Vec<String>,
}

#[derive(Serialize)]
struct JsonVerdict {
    #[serde(flatten)]
    verdict: Verdict,
    text: String,
}

pub(super) fn json(out: &mut impl Write, report: &Report, table: &SdkTable) -> io::Result<()> {
    let doc = JsonReport {
        report_schema: 1,
        callers: report
            .callers
            .iter()
            .map(|c| JsonCaller {
                node: &c.key.node,
                origin: &c.key.origin,
                image: image(&c.key.origin),
                pods: c.counts.pods.iter().map(String::as_str).collect(),
                process: &c.key.process,
                user_agent: c.key.user_agent.as_deref(),
                sdk: c.sdk.as_ref(),
                v1: c.counts.v1,
                v2: c.counts.v2,
                token: c.counts.token,
                token_failures: c.counts.token_failures,
                token_dropped: c.counts.token_dropped,
                malformed: c.counts.malformed,
                fallbacks: c.counts.fallbacks,
                v1_refused: c.counts.v1_refused,
                token_refused: &c.counts.token_refused,
                token_ended: &c.counts.token_ended,
                network: if c.in_host_network() {
                    "host"
                } else if c.counts.other_network > 0 {
                    "other"
                } else {
                    "unknown"
                },
                first_seen: c.counts.first_seen.map(|t| millis(Some(t))),
                last_seen: c.counts.last_seen.map(|t| millis(Some(t))),
                notes: c.notes(),
            })
            .collect(),
        verdicts: verdict::all(report)
            .into_iter()
            .map(|v| JsonVerdict {
                text: v.line(),
                verdict: v,
            })
            .collect(),
        lines: report.lines,
        lines_not_understood: report.not_understood,
        sdk_table_source: &table.source,
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{aggregate::Aggregator, parse::read_line};

    fn report(lines: &[&str]) -> (Report, SdkTable) {
        let table = SdkTable::builtin().unwrap();
        let mut agg = Aggregator::new(None, &table);
        for l in lines {
            agg.add(read_line(l));
        }
        let r = agg.finish();
        (r, table)
    }

    const LINE: &str = "[2026-11-23 09:33:16,511] [WARNING] imdsv1(!) (pid:1:wget argv:wget) \
        req details: get / http/1.1, user-agent: my \"odd\", agent, container:ce29cd2af76a \
        pod:shop/web-1 container-name:app image:nginx:1 workload~:web uid:0 \
        dst:169.254.169.254:80";

    #[test]
    fn table_is_aligned() {
        let (r, t) = report(&[LINE, LINE]);
        let mut out = Vec::new();
        table(&mut out, &r, &t).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("POD / HOST  CONTAINER  IMAGE    PODS  PROCESS  USER AGENT"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("shop/web~   app        nginx:1     1  wget     my \"odd\""),
            "{text}"
        );
        let v1_col = lines[0].find("  V1").unwrap() + 2;
        assert_eq!(&lines[1][v1_col..v1_col + 2], " 2", "counts right-aligned");
        assert!(text.contains("2 lines read: 2 calls to IMDS from 1 caller; 0 lines not"));
        assert!(text.contains("this node: NOT SAFE: 1 caller uses IMDSv1"));
    }

    #[test]
    fn csv_quotes() {
        let (r, _) = report(&[LINE]);
        let mut out = Vec::new();
        csv(&mut out, &r).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "node,pod_host,container,image,pods,process,user_agent,sdk,v1,v2,token,token_fail,\
             first_seen,last_seen,note"
        );
        assert_eq!(
            lines.next().unwrap(),
            "this node,shop/web~,app,nginx:1,1,wget,\"my \"\"odd\"\"\",my,1,0,0,0,\
             2026-11-23T09:33:16.511,2026-11-23T09:33:16.511,"
        );
    }

    #[test]
    fn json_document() {
        let (r, t) = report(&[LINE, "junk"]);
        let mut out = Vec::new();
        json(&mut out, &r, &t).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["lines_not_understood"], 1);
        assert_eq!(v["callers"][0]["origin"]["kind"], "workload");
        assert_eq!(v["callers"][0]["origin"]["workload"], "web");
        assert_eq!(v["callers"][0]["image"], "nginx:1");
        assert_eq!(v["callers"][0]["pods"], serde_json::json!(["web-1"]));
        assert_eq!(v["callers"][0]["v1"], 1);
        assert_eq!(v["verdicts"][0]["imdsv2_required_safe"], false);
        // A v1-only pod is the IMDSv1 list's, not the hop limit's; the junk line leaves the
        // hop-limit answer open.
        assert_eq!(
            v["verdicts"][0]["hop_limit_1_cut_off"],
            serde_json::json!([])
        );
        assert_eq!(v["verdicts"][0]["hop_limit_1"], "INCONCLUSIVE");
        assert_eq!(v["verdicts"][0]["verdict"], "NOT SAFE");
        assert!(
            v["verdicts"][0]["text"]
                .as_str()
                .unwrap()
                .starts_with("this node: NOT SAFE")
        );
        assert!(
            v["sdk_table_source"]["url"]
                .as_str()
                .unwrap()
                .contains("imdsv2")
        );
    }
}
