//! Calls missing from the trace log and kernel events lost, by where they were lost, and
//! the lines that tell a reader of the log about them.

use std::borrow::Cow;

use chrono::Local;
use imds_snoop_line::{
    Level, LossLine, SCHEMA_VERSION,
    json::{DEGRADED_CLASS, DROPPED_CLASS, DegradedTotals, DroppedTotals},
    label,
};
use tracing::warn;

use crate::output::Format;

/// Calls missing from the trace log, by where they were lost; totals since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Losses {
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
    /// Calls missing, whatever the cause.
    pub(crate) fn total(&self) -> u64 {
        self.ring_full + self.no_scratch + self.writer_queue_full + self.log_write_failed
    }
}

/// The line that tells a reader of the trace log that calls are missing from it: `new`
/// losses since the last report, and the totals.
pub(crate) fn dropped_line(format: Format, node: &str, new: u64, totals: &Losses) -> String {
    let now = Local::now();
    match format {
        Format::Text => format!(
            "[{}] [{}] {}{new} events (totals: ring buffer full {}, \
             no scratch {}, writer queue full {}, log write failed {}); raise --ring-bytes if \
             the ring buffer fills",
            now.format("%Y-%m-%d %H:%M:%S,%3f"),
            Level::Warning.as_str(),
            label::DROPPED,
            totals.ring_full,
            totals.no_scratch,
            totals.writer_queue_full,
            totals.log_write_failed,
        ),
        Format::Json => loss_json(&LossLine {
            class: Cow::Borrowed(DROPPED_CLASS),
            dropped: Some(new),
            dropped_total: Some(DroppedTotals {
                log_write_failed: totals.log_write_failed,
                no_scratch: totals.no_scratch,
                ring_full: totals.ring_full,
                writer_queue_full: totals.writer_queue_full,
            }),
            level: Cow::Borrowed(Level::Warning.as_str()),
            lost: None,
            lost_total: None,
            node: Some(Cow::Borrowed(node)),
            schema: SCHEMA_VERSION,
            timestamp: Some(Cow::Owned(
                now.to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
            )),
        }),
    }
}

/// A loss line as JSON (the contract's [`LossLine`]).
fn loss_json(line: &LossLine<'_>) -> String {
    // Strings, integers and flat structs of integers: serializing cannot fail.
    serde_json::to_string(line)
        .unwrap_or_else(|e| format!("{{\"schema\":{SCHEMA_VERSION},\"error\":\"{e}\"}}"))
}

/// Kernel events lost that are not calls, totals since start: no call is missing, but some
/// lines may say less than they could.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DegradedEvents {
    /// Exec/exit events: argv of callers that exited early may be `[exited] <comm>`.
    pub process_events: u64,
    /// Response statuses: those calls have no ` -> NNN`, and a token PUT among them would
    /// show as "token response not received".
    pub responses: u64,
}

/// The line that tells a reader of the trace log that some lines are less complete than
/// usual (`new` kernel events lost since the last report, and the totals).
pub(crate) fn degraded_line(
    format: Format,
    node: &str,
    new: u64,
    totals: &DegradedEvents,
) -> String {
    let now = Local::now();
    match format {
        Format::Text => format!(
            "[{}] [{}] {}{new} kernel events that are not calls (totals: \
             process events {}, responses {}); lines may lack argv or status, and a lost \
             response can make a token PUT look unanswered: raise --ring-bytes",
            now.format("%Y-%m-%d %H:%M:%S,%3f"),
            Level::Warning.as_str(),
            label::DEGRADED,
            totals.process_events,
            totals.responses,
        ),
        Format::Json => loss_json(&LossLine {
            class: Cow::Borrowed(DEGRADED_CLASS),
            dropped: None,
            dropped_total: None,
            level: Cow::Borrowed(Level::Warning.as_str()),
            lost: Some(new),
            lost_total: Some(DegradedTotals {
                process_events: totals.process_events,
                responses: totals.responses,
            }),
            node: Some(Cow::Borrowed(node)),
            schema: SCHEMA_VERSION,
            timestamp: Some(Cow::Owned(
                now.to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
            )),
        }),
    }
}

/// The totals last reported, so that only news is reported.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Reported {
    /// Calls missing, as last reported.
    pub losses: Losses,
    /// Kernel events lost that are not calls, as last reported.
    pub degraded: DegradedEvents,
}

impl Reported {
    /// Takes the totals now (from the kernel's drop counters and the writer's stats) and
    /// returns the lines to write for what changed since the last call: at most a dropped
    /// line, then a degraded line. Each is also a daemon warning: a reader of the log must
    /// know calls are missing from it. A line lost to a full disk is reported once the disk
    /// takes lines again.
    pub(crate) fn update(
        &mut self,
        now: Losses,
        degraded: DegradedEvents,
        format: Format,
        node: &str,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        if now != self.losses {
            let new = now.total() - self.losses.total();
            warn!(?now, "{new} IMDS calls are missing from the trace log");
            lines.push(dropped_line(format, node, new, &now));
            self.losses = now;
        }
        if degraded != self.degraded {
            let new = degraded.process_events + degraded.responses
                - self.degraded.process_events
                - self.degraded.responses;
            warn!(
                ?degraded,
                "{new} kernel events lost (not calls): some lines are incomplete"
            );
            lines.push(degraded_line(format, node, new, &degraded));
            self.degraded = degraded;
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_news_is_reported() {
        let mut seen = Reported::default();
        let quiet = seen.update(
            Losses::default(),
            DegradedEvents::default(),
            Format::Text,
            "n",
        );
        assert!(quiet.is_empty(), "{quiet:?}");
        let losses = Losses {
            ring_full: 2,
            log_write_failed: 1,
            ..Losses::default()
        };
        let lines = seen.update(losses, DegradedEvents::default(), Format::Text, "n");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("] [WARNING] imds-snoop dropped 3 events (totals: ring buffer full 2, no scratch 0, writer queue full 0, log write failed 1)"), "{}", lines[0]);
        assert!(
            seen.update(losses, DegradedEvents::default(), Format::Text, "n")
                .is_empty()
        );
        let degraded = DegradedEvents {
            process_events: 4,
            responses: 1,
        };
        let lines = seen.update(losses, degraded, Format::Json, "n");
        let json: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(
            (&json["class"], &json["lost"]),
            (&serde_json::json!("degraded"), &serde_json::json!(5))
        );
        assert_eq!(json["lost_total"]["process_events"], 4);
    }

    /// The JSON loss lines through the contract's `LossLine` are the lines the daemon built
    /// as JSON maps before (keys sorted), byte for byte but for the time of writing.
    #[test]
    fn json_loss_lines_match_the_map_reference() {
        // The line with its time of writing replaced by `T`, byte for byte otherwise.
        let without_time = |line: &str| {
            let (head, rest) = line.split_once("\"timestamp\":\"").unwrap();
            let (_, tail) = rest.split_once('"').unwrap();
            format!("{head}\"timestamp\":\"T\"{tail}")
        };
        let losses = Losses {
            ring_full: 12,
            no_scratch: 1,
            writer_queue_full: 3,
            log_write_failed: 4,
        };
        let line = dropped_line(Format::Json, "n\"1", 20, &losses);
        let reference = serde_json::json!({
            "schema": 1,
            "timestamp": "T",
            "node": "n\"1",
            "level": "WARNING",
            "class": "dropped",
            "dropped": 20,
            "dropped_total": {
                "ring_full": 12,
                "no_scratch": 1,
                "writer_queue_full": 3,
                "log_write_failed": 4,
            },
        })
        .to_string();
        assert_eq!(without_time(&line), reference);

        let degraded = DegradedEvents {
            process_events: 2,
            responses: 7,
        };
        let line = degraded_line(Format::Json, "n", 9, &degraded);
        let reference = serde_json::json!({
            "schema": 1,
            "timestamp": "T",
            "node": "n",
            "level": "WARNING",
            "class": "degraded",
            "lost": 9,
            "lost_total": { "process_events": 2, "responses": 7 },
        })
        .to_string();
        assert_eq!(without_time(&line), reference);
    }

    #[test]
    fn text_loss_lines_as_before() {
        let losses = Losses {
            ring_full: 2,
            no_scratch: 0,
            writer_queue_full: 5,
            log_write_failed: 1,
        };
        let line = dropped_line(Format::Text, "n", 8, &losses);
        let (_, rest) = line.split_once("] [").unwrap();
        assert_eq!(
            rest,
            "WARNING] imds-snoop dropped 8 events (totals: ring buffer full 2, no scratch 0, \
             writer queue full 5, log write failed 1); raise --ring-bytes if the ring buffer \
             fills"
        );
        let degraded = DegradedEvents {
            process_events: 3,
            responses: 4,
        };
        let line = degraded_line(Format::Text, "n", 7, &degraded);
        let (_, rest) = line.split_once("] [").unwrap();
        assert_eq!(
            rest,
            "WARNING] imds-snoop lost 7 kernel events that are not calls (totals: process \
             events 3, responses 4); lines may lack argv or status, and a lost response can \
             make a token PUT look unanswered: raise --ring-bytes"
        );
    }
}
