//! The line of an answer from IMDS to a call that was not traced ([`Untraced`]), through
//! the line contract (`imds_snoop_line::label::UNTRACED`, `json::UntracedLine`).

use std::{borrow::Cow, net::SocketAddr};

use imds_snoop_line::{Level, json, label, text::TIME_FORMAT};

use super::Format;
use crate::record::Untraced;

/// Why a call can be answered and not traced, as the line says it.
const WHY: &str = "MPTCP, TCP Fast Open or a send the hooks miss";

/// The line (without a newline), e.g. `[2026-11-29 15:00:00,000] [WARNING] imds-snoop IMDS
/// answered a call it did not see traced (-> 200 to 10.0.0.5:41234 from
/// 169.254.169.254:80; receiving process unknown; MPTCP, TCP Fast Open or a send the hooks
/// miss)`. Every field is a number or an address: nothing of a caller's choosing.
pub(crate) fn line(u: &Untraced, format: Format, node: &str) -> String {
    let local = SocketAddr::new(u.local.0, u.local.1).to_string();
    let remote = SocketAddr::new(u.remote.0, u.remote.1).to_string();
    let level = Level::Warning.as_str();
    match format {
        Format::Text => format!(
            "[{}] [{level}] {} (-> {} to {local} from {remote}; receiving process unknown; {WHY})",
            u.time.format(TIME_FORMAT),
            label::UNTRACED,
            u.status,
        ),
        Format::Json => serde_json::to_string(&json::UntracedLine {
            class: json::UNTRACED_CLASS.into(),
            dst: Some(Cow::Owned(remote)),
            level: level.into(),
            local: Some(Cow::Owned(local)),
            node: Some(node.into()),
            schema: json::SCHEMA_VERSION,
            status: Some(u.status),
            timestamp: Some(
                u.time
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
                    .into(),
            ),
        })
        .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Local, TimeZone as _};
    use imds_snoop_line::{JsonRecord, TextBody, TextLine};

    use super::*;

    fn untraced() -> Untraced {
        Untraced {
            time: Local.timestamp_millis_opt(1_764_428_400_123).unwrap(),
            status: 200,
            local: ("fd00:ec2::5".parse().unwrap(), 41234),
            remote: ("fd00:ec2::254".parse().unwrap(), 80),
        }
    }

    /// Both forms read back through the line contract with what was written.
    #[test]
    fn text_and_json_read_back() {
        let u = untraced();
        let text = line(&u, Format::Text, "n");
        let l = TextLine::parse(&text).unwrap();
        assert_eq!(l.level, "WARNING");
        assert_eq!(
            l.body,
            TextBody::Untraced {
                detail: "-> 200 to [fd00:ec2::5]:41234 from [fd00:ec2::254]:80; receiving \
                         process unknown; MPTCP, TCP Fast Open or a send the hooks miss"
            }
        );
        assert_eq!(l.time, u.time.format(TIME_FORMAT).to_string());
        let json = line(&u, Format::Json, "n");
        let Ok(JsonRecord::Untraced(j)) = JsonRecord::parse(&json) else {
            panic!("not an untraced line: {json}");
        };
        assert_eq!(
            (
                j.status,
                j.local.as_deref(),
                j.dst.as_deref(),
                j.node.as_deref()
            ),
            (
                Some(200),
                Some("[fd00:ec2::5]:41234"),
                Some("[fd00:ec2::254]:80"),
                Some("n")
            )
        );
        assert_eq!(j.level, "WARNING");
    }
}
