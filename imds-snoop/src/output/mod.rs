//! What a trace line says, how it is written, and where.

pub mod json;
pub mod text;
pub mod writer;

use std::{fmt::Write as _, net::IpAddr};

use chrono::{DateTime, Datelike as _, Local, Offset as _, Timelike as _};

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

/// The timestamp's text up to the second, formatted once per second (and offset): lines
/// come by the thousand per second under load, and strftime parses its pattern each time.
#[derive(Default)]
struct Stamps {
    /// Unix second and UTC offset of the cached text; `None` before the first line.
    key: Option<(i64, i32)>,
    /// `%Y-%m-%d %H:%M:%S`
    text: String,
    /// RFC 3339 up to the seconds, `%Y-%m-%dT%H:%M:%S`.
    rfc: String,
    /// The UTC offset as RFC 3339 writes it, `+HH:MM`.
    zone: String,
}

impl Stamps {
    /// `%Y-%m-%d %H:%M:%S,%3f`, as chrono prints it.
    fn push_text(&mut self, out: &mut String, t: &DateTime<Local>) {
        match self.millis(t) {
            Some(ms) => {
                out.push_str(&self.text);
                out.push(',');
                push_3_digits(out, ms);
            }
            None => {
                let _ = write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S,%3f"));
            }
        }
    }

    /// RFC 3339 with milliseconds and the local offset, as chrono's
    /// `to_rfc3339_opts(SecondsFormat::Millis, false)` prints it.
    fn push_rfc3339(&mut self, out: &mut String, t: &DateTime<Local>) {
        match self.millis(t) {
            Some(ms) => {
                out.push_str(&self.rfc);
                out.push('.');
                push_3_digits(out, ms);
                out.push_str(&self.zone);
            }
            None => out.push_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)),
        }
    }

    /// Brings the cached second up to `t`'s, and returns `t`'s milliseconds; `None` when
    /// the cache does not apply (a leap second, a year outside 0..=9999): chrono then
    /// formats the whole stamp.
    fn millis(&mut self, t: &DateTime<Local>) -> Option<u32> {
        let nanos = t.nanosecond();
        if nanos >= 1_000_000_000 || !(0..=9999).contains(&t.year()) {
            return None;
        }
        let key = (t.timestamp(), t.offset().fix().local_minus_utc());
        if self.key != Some(key) {
            self.text.clear();
            let _ = write!(self.text, "{}", t.format("%Y-%m-%d %H:%M:%S"));
            let whole = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
            // A four-digit year: `YYYY-MM-DDTHH:MM:SS` is the first 19 bytes.
            let (rfc, zone) = whole.split_at(19);
            self.rfc = rfc.to_owned();
            self.zone = zone.to_owned();
            self.key = Some(key);
        }
        Some(nanos / 1_000_000)
    }
}

fn push_3_digits(out: &mut String, n: u32) {
    for d in [n / 100 % 10, n / 10 % 10, n % 10] {
        out.push(char::from(b'0' + d as u8));
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

/// `s` made safe for a one-line log (see [`push_escaped`]).
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s);
    out
}

/// The first byte of `bytes` for which `special` holds. Looks at 16 bytes at a time with no
/// branch per byte, which the compiler vectorizes: argv and header values are mostly long
/// runs with nothing to escape, and a byte-at-a-time scan of them was 10% of the daemon.
#[inline]
pub(crate) fn find_byte(bytes: &[u8], special: impl Fn(u8) -> bool + Copy) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(16);
    let mut offset = 0;
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, &b| any | special(b)) {
            return chunk.iter().position(|&b| special(b)).map(|i| offset + i);
        }
        offset += 16;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| special(b))
        .map(|i| offset + i)
}

/// Appends `s` made safe for a one-line log: control characters (a newline in an argv or a
/// header could forge a whole line) become `\xNN`. Runs without any are copied whole.
pub fn push_escaped(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = s;
    loop {
        // Bytes that can start a control character: C0 and DEL, and 0xc2, the first byte of
        // the C1 controls U+0080..U+009F (and of other Latin-1 characters).
        let plain = find_byte(rest.as_bytes(), |b| b < 0x20 || b == 0x7f || b == 0xc2)
            .unwrap_or(rest.len());
        out.push_str(&rest[..plain]);
        rest = &rest[plain..];
        let Some(c) = rest.chars().next() else { return };
        if c.is_control() {
            // Controls are at most U+009F: two hex digits.
            let code = c as usize;
            out.push_str("\\x");
            out.push(char::from(HEX[code >> 4 & 0xf]));
            out.push(char::from(HEX[code & 0xf]));
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
}

#[cfg(test)]
pub mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::http::Reassembler;

    /// `escape_controls` as it was before the fast path (char by char): the reference.
    pub fn escape_reference(s: &str) -> String {
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

    #[test]
    fn find_byte_finds_the_first_special_byte_at_every_offset() {
        for len in 0..70 {
            for at in 0..=len {
                let mut bytes = vec![b'a'; len];
                if at < len {
                    bytes[at] = b'\n';
                    if at + 1 < len {
                        bytes[at + 1] = b'\r';
                    }
                }
                let expect = (at < len).then_some(at);
                assert_eq!(find_byte(&bytes, |b| b < 0x20), expect, "{len} {at}");
            }
        }
    }

    #[test]
    fn escaping_matches_the_char_by_char_reference() {
        for s in crate::http::tests::awkward_strings() {
            let mut out = String::from("kept ");
            push_escaped(&mut out, &s);
            assert_eq!(out, format!("kept {}", escape_reference(&s)), "{s:?}");
        }
    }

    #[test]
    fn timestamps_match_chrono_across_seconds() {
        use chrono::TimeZone as _;
        let mut stamps = Stamps::default();
        let start = Local.timestamp_opt(1_760_000_000, 0).unwrap();
        // Steps of 7.3 ms through 30 s, with jumps back (a clock step).
        for i in 0..4000i64 {
            let t =
                start + chrono::Duration::microseconds(7300 * i - (i % 97 == 0) as i64 * 3_000_000);
            let (mut text, mut rfc) = (String::new(), String::new());
            stamps.push_text(&mut text, &t);
            stamps.push_rfc3339(&mut rfc, &t);
            assert_eq!(text, t.format("%Y-%m-%d %H:%M:%S,%3f").to_string());
            assert_eq!(rfc, t.to_rfc3339_opts(chrono::SecondsFormat::Millis, false));
        }
        // Outside what the cache handles: chrono formats it.
        let far = Local.with_ymd_and_hms(10_000, 1, 2, 3, 4, 5).unwrap();
        let mut rfc = String::new();
        stamps.push_rfc3339(&mut rfc, &far);
        assert_eq!(
            rfc,
            far.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
        );
    }

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
