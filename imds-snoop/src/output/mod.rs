//! How a trace line is written (text or JSON, from a [`Record`]), and where (`writer`).
//! What a line says is `record`; lines about losses are `losses`.

pub(crate) mod json;
mod stamps;
pub(crate) mod text;
pub(crate) mod untraced;
pub(crate) mod writer;

use self::stamps::Stamps;
use crate::record::Record;

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
    pub(crate) fn format(&self, format: Format, node: &str) -> String {
        let mut out = String::new();
        LineFormatter::new(format, node).push_line(self, &mut out);
        out
    }
}

/// Builds lines into a caller's buffer, keeping what can be kept from one line to the
/// next: the formatted second of the timestamp, and scratch buffers. Per-line allocations
/// and chrono's strftime were a third of the daemon's CPU per event.
pub(crate) struct LineFormatter {
    format: Format,
    node: String,
    stamps: Stamps,
    scratch: String,
    json: Vec<u8>,
}

impl LineFormatter {
    pub(crate) fn new(format: Format, node: &str) -> Self {
        Self {
            format,
            node: node.to_owned(),
            stamps: Stamps::default(),
            scratch: String::new(),
            json: Vec::new(),
        }
    }

    /// Appends the line of `r` to `out`, without a newline.
    pub(crate) fn push_line(&mut self, r: &Record, out: &mut String) {
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

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, Instant};

    use chrono::Local;

    use super::*;
    use crate::{
        attribution::{Origin, Proc},
        http::Reassembler,
        record::Outcome,
    };

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
    pub(crate) fn sample_record(raw: &[u8]) -> Record {
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
            host_network: None,
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
