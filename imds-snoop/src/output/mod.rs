//! What a trace line says, how it is written, and where.

pub mod json;
pub mod text;
pub mod writer;

use std::net::IpAddr;

use chrono::{DateTime, Local};

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
}

impl Record {
    /// Level as the anchor tool prints it: v1 and anything odd are warnings.
    pub fn level(&self) -> &'static str {
        match self.request.class {
            Class::V1 | Class::Malformed => "WARNING",
            Class::V2 | Class::V2Token => "INFO",
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

impl Record {
    pub fn format(&self, format: Format, node: &str) -> String {
        match format {
            Format::Text => text::format(self),
            Format::Json => json::format(self, node),
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

/// Makes a value safe to put in a one-line log: control characters (a newline in an argv or
/// a header could forge a whole line) become `\xNN`.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}
