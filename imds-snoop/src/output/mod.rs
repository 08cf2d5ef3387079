//! What a trace line says, how it is written, and where.

pub mod json;
mod stamps;
pub mod text;
pub mod writer;

use std::net::IpAddr;

use chrono::{DateTime, Local};
use stamps::Stamps;

use crate::{
    container::Origin,
    http::{Class, Request},
    process::Proc,
};

/// Everything one trace line reports about one IMDS request.
#[derive(Clone, Debug)]
pub struct Record {
    pub time: DateTime<Local>,
    pub request: Request,
    pub caller: Proc,
    pub ancestors: Vec<Proc>,
    pub uid: u32,
    /// The caller's pid inside its container's pid namespace, when that differs.
    pub ns_pid: Option<u32>,
    pub origin: Origin,
    pub cgroup_id: u64,
    pub netns: u32,
    pub dst: (IpAddr, u16),
    /// Bytes in the send that started the request (may exceed what was captured).
    pub bytes: u64,
    /// The kernel could not read the send's payload (unsupported buffer type or a fault).
    pub unreadable: bool,
    /// What came back (see `outcome.rs`).
    pub outcome: Outcome,
}

/// What IMDS answered to a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Responses are not traced (`--responses off`, or the attach failed), or the daemon
    /// stopped before the wait was over.
    #[default]
    Unknown,
    /// The status code of the response.
    Status(u16),
    /// No response within `--response-timeout`.
    NoResponse,
}

/// The label of an IMDSv2 token PUT whose response never came (the hop limit of 1 drops
/// the PUT response for pods behind a bridge or veth). `imds-snoop report` parses it.
pub const TOKEN_NO_RESPONSE_LABEL: &str = "imdsv2 token response not received (hop limit?)";
/// Its `class` in JSON lines.
pub const TOKEN_NO_RESPONSE_CLASS: &str = "v2_token_no_response";

impl Record {
    /// Level as the anchor tool prints it: v1 and anything odd are warnings.
    pub fn level(&self) -> &'static str {
        if self.token_not_received() {
            return "WARNING";
        }
        match self.request.class {
            Class::V1 | Class::Malformed => "WARNING",
            Class::V2 | Class::V2Token => "INFO",
        }
    }

    /// A token PUT that got no answer: the hop-limit warning.
    pub fn token_not_received(&self) -> bool {
        self.request.class == Class::V2Token && self.outcome == Outcome::NoResponse
    }

    /// The status code, when a response was seen.
    pub fn status(&self) -> Option<u16> {
        match self.outcome {
            Outcome::Status(s) => Some(s),
            _ => None,
        }
    }
}

/// Line format of the trace log and `--stdout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// aws-imds-packet-analyzer's line, with our fields appended.
    Text,
    /// One JSON object per line, schema in the README.
    Json,
}

#[cfg(test)]
impl Record {
    /// The record's line (without a newline). The daemon builds its lines with a
    /// [`LineFormatter`] instead, which keeps its buffers and timestamps between lines.
    pub fn format(&self, format: Format, node: &str) -> String {
        let mut out = String::new();
        LineFormatter::new(format, node).push_line(self, &mut out);
        out
    }
}

/// Builds lines into a caller's buffer, keeping what can be kept from one line to the
/// next: the formatted second of the timestamp, and scratch buffers. Per-line allocations
/// and chrono's strftime were a third of the daemon's CPU per event.
pub struct LineFormatter {
    format: Format,
    node: String,
    stamps: Stamps,
    scratch: String,
    json: Vec<u8>,
}

impl LineFormatter {
    pub fn new(format: Format, node: &str) -> Self {
        Self {
            format,
            node: node.to_owned(),
            stamps: Stamps::default(),
            scratch: String::new(),
            json: Vec::new(),
        }
    }

    /// Appends the line of `r` to `out`, without a newline.
    pub fn push_line(&mut self, r: &Record, out: &mut String) {
        match self.format {
            Format::Text => text::push_line(r, &mut self.stamps, &mut self.scratch, out),
            Format::Json => {
                self.scratch.clear();
                self.stamps.push_rfc3339(&mut self.scratch, &r.time);
                self.json.clear();
                json::write_line(r, &self.node, &self.scratch, &mut self.json);
                // serde_json writes UTF-8: this borrows, it does not copy or replace.
                out.push_str(&String::from_utf8_lossy(&self.json));
            }
        }
    }
}

/// Calls missing from the trace log, by where they were lost; totals since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Losses {
    /// Kernel events that did not fit the ring buffer.
    pub ring_full: u64,
    /// Kernel events with no per-CPU scratch record (should never happen).
    pub no_scratch: u64,
    /// Lines dropped because the writer's queue was full.
    pub writer_queue_full: u64,
    /// Lines that could not be written to the file (disk full, ...).
    pub log_write_failed: u64,
}

impl Losses {
    pub fn total(&self) -> u64 {
        self.ring_full + self.no_scratch + self.writer_queue_full + self.log_write_failed
    }
}

/// The line that tells a reader of the trace log that calls are missing from it: `new`
/// losses since the last report, and the totals.
pub fn dropped_line(format: Format, node: &str, new: u64, totals: &Losses) -> String {
    let now = Local::now();
    match format {
        Format::Text => format!(
            "[{}] [WARNING] imds-snoop dropped {new} events (totals: ring buffer full {}, \
             no scratch {}, writer queue full {}, log write failed {}); raise --ring-bytes if \
             the ring buffer fills",
            now.format("%Y-%m-%d %H:%M:%S,%3f"),
            totals.ring_full,
            totals.no_scratch,
            totals.writer_queue_full,
            totals.log_write_failed,
        ),
        Format::Json => serde_json::json!({
            "schema": json::SCHEMA_VERSION,
            "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
            "node": node,
            "level": "WARNING",
            "class": "dropped",
            "dropped": new,
            "dropped_total": totals,
        })
        .to_string(),
    }
}

/// Kernel events lost that are not calls, totals since start: no call is missing, but some
/// lines may say less than they could.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DegradedEvents {
    /// Exec/exit events: argv of callers that exited early may be `[exited] <comm>`.
    pub process_events: u64,
    /// Response statuses: those calls have no ` -> NNN`, and a token PUT among them would
    /// show as "token response not received".
    pub responses: u64,
}

/// The line that tells a reader of the trace log that some lines are less complete than
/// usual (`new` kernel events lost since the last report, and the totals).
pub fn degraded_line(format: Format, node: &str, new: u64, totals: &DegradedEvents) -> String {
    let now = Local::now();
    match format {
        Format::Text => format!(
            "[{}] [WARNING] imds-snoop lost {new} kernel events that are not calls (totals: \
             process events {}, responses {}); lines may lack argv or status, and a lost \
             response can make a token PUT look unanswered: raise --ring-bytes",
            now.format("%Y-%m-%d %H:%M:%S,%3f"),
            totals.process_events,
            totals.responses,
        ),
        Format::Json => serde_json::json!({
            "schema": json::SCHEMA_VERSION,
            "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
            "node": node,
            "level": "WARNING",
            "class": "degraded",
            "lost": new,
            "lost_total": totals,
        })
        .to_string(),
    }
}

#[cfg(test)]
pub mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::http::Reassembler;

    #[test]
    fn json_lines_carry_the_chrono_timestamp() {
        let mut f = LineFormatter::new(Format::Json, "node-1");
        let mut r = sample_record(b"GET / HTTP/1.1\r\n\r\n");
        for i in 0..50 {
            r.time += chrono::Duration::milliseconds(333);
            let mut line = String::from("x");
            f.push_line(&r, &mut line);
            let json: serde_json::Value = serde_json::from_str(&line[1..]).unwrap();
            assert_eq!(
                json["timestamp"].as_str().unwrap(),
                r.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
                "{i}"
            );
            assert_eq!(json["node"], "node-1");
            assert_eq!(r.format(Format::Json, "node-1"), line[1..]);
        }
    }

    /// A record of `raw` (one complete request) from `python3` on the host.
    pub fn sample_record(raw: &[u8]) -> Record {
        let mut r = Reassembler::<()>::new(4096, Duration::from_secs(1));
        let request = r.push(0, (), raw, false, Instant::now()).remove(0).1;
        Record {
            time: Local::now(),
            request,
            caller: Proc {
                pid: 9,
                comm: "python3".into(),
                argv: Some("python3 app.py".into()),
            },
            ancestors: vec![Proc {
                pid: 1,
                comm: "systemd".into(),
                argv: Some("/sbin/init".into()),
            }],
            uid: 0,
            ns_pid: None,
            origin: Origin::Host { unit: None },
            cgroup_id: 1,
            netns: 1,
            dst: ("169.254.169.254".parse().unwrap(), 80),
            bytes: raw.len() as u64,
            unreadable: false,
            outcome: Outcome::Unknown,
        }
    }

    #[test]
    fn status_follows_the_request_details() {
        let mut r = sample_record(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n");
        r.outcome = Outcome::Status(404);
        let line = r.format(Format::Text, "n");
        assert!(
            line.contains("req details: get / http/1.1, accept: */*, -> 404 host unit:- uid:0"),
            "{line}"
        );
        r.outcome = Outcome::NoResponse;
        let line = r.format(Format::Text, "n");
        assert!(line.contains("accept: */*, host unit:-"), "{line}");
        assert!(line.contains("[WARNING] imdsv1(!) (pid:9:"), "{line}");
        let json: serde_json::Value = serde_json::from_str(&r.format(Format::Json, "n")).unwrap();
        assert_eq!(
            (json["class"].as_str(), json["status"].as_u64()),
            (Some("v1"), None)
        );
    }
}
