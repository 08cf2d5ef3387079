//! The report's log-line parser (imds-snoop/src/report/parse.rs) on arbitrary text.
//!
//! Properties: it never panics; a line's trailing newline changes nothing (lines are read
//! with or without it); what a text line yields is taken from the line, not made up: the
//! comm, user agent and destination are substrings of it, the pid, a dropped count and a
//! response status (` -> 401`) are numbers written in it; a token failure (hop limit) is
//! only read from the daemon's label; every field is bounded by the line's
//! length.
#![no_main]

use imds_snoop::report::parse::{Kind, Line, Origin, parse_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_line(line);
    assert_eq!(
        parsed,
        parse_line(&format!("{line}\n")),
        "a trailing newline"
    );
    // Substring checks hold for the text format only (JSON unescapes); lines of a container
    // log (`<time> stdout F [...`) are checked for bounds alone.
    // (`kubectl logs --prefix`'s `[pod/...] ` may carry a JSON line: not text.)
    let text = line.starts_with('[') && !line.starts_with("[pod/");
    match parsed {
        None => {}
        Some(Line::Dropped { events, .. }) => {
            if text {
                // The count is written in the line, maybe as `029` or `+29` (both read as 29).
                let written = line.match_indices("dropped ").any(|(i, m)| {
                    let token = line[i + m.len()..].split(' ').next().unwrap_or("");
                    let digits = token.strip_prefix('+').unwrap_or(token);
                    !digits.is_empty()
                        && digits.bytes().all(|b| b.is_ascii_digit())
                        && match digits.trim_start_matches('0') {
                            "" => events == 0,
                            d => d == events.to_string(),
                        }
                });
                assert!(written, "{events} is not in {line:?}");
            }
        }
        // Understood, not a call. Only JSON lines name their node.
        Some(Line::Degraded { node, .. }) => {
            if text {
                assert_eq!(node, None, "{line:?}");
            }
        }
        Some(Line::Call(call)) => {
            let mut fields = vec![call.comm.as_str()];
            fields.extend(call.user_agent.as_deref());
            fields.extend(call.destination.as_deref());
            fields.extend(call.node.as_deref());
            match &call.origin {
                Origin::Pod {
                    namespace,
                    name,
                    container,
                    image,
                    workload,
                } => {
                    // The workload is the line's own field, or a guess that is a prefix of
                    // the name: in the line either way.
                    fields.extend([namespace.as_str(), name.as_str(), workload.as_str()]);
                    fields.extend(container.as_deref());
                    fields.extend(image.as_deref());
                }
                Origin::Workload { .. } => panic!("a line never reads as a workload row"),
                Origin::Container { id } => fields.push(id),
                Origin::Host { unit } => fields.extend(unit.as_deref()),
                Origin::Unknown => {}
            }
            for f in &fields {
                assert!(f.len() <= line.len(), "field {f:?} longer than the line");
            }
            if text {
                for f in fields.iter().filter(|f| **f != "?") {
                    assert!(line.contains(f), "{f:?} is not in {line:?}");
                }
                if let Some(pid) = call.pid {
                    assert!(
                        line.contains(&format!("(pid:{pid}:")) || line.contains(&pid.to_string())
                    );
                }
                // A status is the three digits of a ` -> NNN` in the line.
                if let Some(status) = call.status {
                    assert!(
                        line.contains(&format!(" -> {status:03}")),
                        "status {status} is not in {line:?}"
                    );
                }
            }
            // A text line is a hop-limit warning only by the daemon's label
            // (imds-snoop-line's `Class::V2TokenNoResponse.label()`).
            if text && call.kind == Kind::TokenFailure {
                assert!(
                    line.contains("] imdsv2 token response not received (hop limit?)"),
                    "{line:?}"
                );
            }
        }
        Some(Line::Blank | Line::Daemon { .. }) => {}
    }
});
