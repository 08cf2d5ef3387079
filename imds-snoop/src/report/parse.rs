//! One trace line, text or JSON (schema 1), to the few facts a report needs. Anything
//! else is `None`: the caller counts it as not understood.

use chrono::{DateTime, NaiveDateTime};
use serde::{Deserialize, Serialize};

/// What a line says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    V1,
    V2,
    V2Token,
    Malformed,
    /// An IMDSv2 token PUT whose response never came back (hop limit?).
    TokenFailure,
}

/// Where a call came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    Pod {
        namespace: String,
        name: String,
        container: Option<String>,
    },
    /// A container whose pod is unknown (plain Docker, or names not found).
    Container {
        id: String,
    },
    Host {
        unit: Option<String>,
    },
    /// Lines from aws-imds-packet-analyzer, which says nothing about it.
    Unknown,
}

/// A call to IMDS (or a token failure), as one line reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub kind: Kind,
    /// Wall-clock time of the node that wrote the line.
    pub time: Option<NaiveDateTime>,
    /// Only JSON lines carry it.
    pub node: Option<String>,
    pub origin: Origin,
    pub pid: Option<u32>,
    pub comm: String,
    pub user_agent: Option<String>,
    /// `169.254.169.254:80`, ...; None when the line does not say.
    pub destination: Option<String>,
    /// The response's status code (` -> 401` in text, `status` in JSON), when the line has it.
    pub status: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Call(Call),
    /// imds-snoop's own `dropped N events` line: the log misses N calls.
    Dropped {
        node: Option<String>,
        events: u64,
    },
    /// imds-snoop's own `lost N kernel events that are not calls` line: no call is
    /// missing, so nothing to count; understood, not a call.
    Degraded {
        node: Option<String>,
    },
}

/// The label and JSON class of the hop-limit warning line, as the daemon writes them.
const TOKEN_FAILURE_LABEL: &str = crate::output::TOKEN_NO_RESPONSE_LABEL;
const TOKEN_FAILURE_CLASS: &str = crate::output::TOKEN_NO_RESPONSE_CLASS;

pub fn parse_line(line: &str) -> Option<Line> {
    let line = strip_cri_prefix(line.trim_end_matches(['\r', '\n']));
    match line.as_bytes().first()? {
        b'{' => parse_json(line),
        b'[' => parse_text(line),
        _ => None,
    }
}

/// `2026-11-23T09:29:00.488Z stdout F <line>`: a line read from a container log
/// (`/var/log/pods/...`, `kubectl logs` of the DaemonSet with `--stdout`).
fn strip_cri_prefix(line: &str) -> &str {
    let mut parts = line.splitn(4, ' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(ts), Some("stdout" | "stderr"), Some("F" | "P"), Some(rest))
            if DateTime::parse_from_rfc3339(ts).is_ok() =>
        {
            rest
        }
        _ => line,
    }
}

// ---- text ------------------------------------------------------------------------------

/// `[2026-11-23 09:29:00,488] [WARNING] imdsv1(!) (pid:N:comm argv:...) called by -> ...
/// req details: get /... http/1.1, host: ..., user-agent: ..., <origin> uid:0 dst:...`
fn parse_text(line: &str) -> Option<Line> {
    let (stamp, rest) = line.strip_prefix('[')?.split_once("] [")?;
    let time = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S,%3f").ok()?;
    let (_level, rest) = rest.split_once("] ")?;
    if let Some(events) = dropped_count(rest) {
        return Some(Line::Dropped { node: None, events });
    }
    if rest.starts_with("imds-snoop lost ") {
        return Some(Line::Degraded { node: None });
    }
    let (label, after_label) = match rest.find(" (pid:") {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let kind = match label {
        "imdsv1(!)" => Kind::V1,
        "imdsv2" => Kind::V2,
        "imdsv2(token)" => Kind::V2Token,
        "malformed(!)" => Kind::Malformed,
        TOKEN_FAILURE_LABEL => Kind::TokenFailure,
        _ => return None,
    };
    let pid_comm = after_label
        .strip_prefix("(pid:")
        .and_then(|s| s.split_once(':'));
    let pid = pid_comm.and_then(|(pid, _)| pid.parse().ok());
    let comm = pid_comm
        .and_then(|(_, s)| s.split_once(" argv:"))
        .map(|(comm, _)| comm.to_string());
    // The request and our fields follow the last "req details: " (argvs come before it).
    let details = after_label
        .rfind(" req details: ")
        .map(|i| &after_label[i + " req details: ".len()..])
        .unwrap_or(after_label);
    let (origin, destination, details) = text_origin(details);
    let (details, status) = text_status(details);
    if kind != Kind::TokenFailure && comm.is_none() {
        return None;
    }
    Some(Line::Call(Call {
        kind,
        time: Some(time),
        node: None,
        origin,
        pid,
        comm: comm.unwrap_or_else(|| "?".into()),
        user_agent: text_user_agent(details),
        destination,
        status,
    }))
}

/// `<request>, -> 401` (the status follows the request's trailing comma): the request and
/// the status.
fn text_status(request: &str) -> (&str, Option<u16>) {
    if let Some((req, code)) = request.rsplit_once(" -> ")
        && code.len() == 3
        && code.bytes().all(|b| b.is_ascii_digit())
    {
        return (req, code.parse().ok());
    }
    (request, None)
}

/// `imds-snoop dropped 12 events (total: ...)`.
fn dropped_count(rest: &str) -> Option<u64> {
    rest.strip_prefix("imds-snoop dropped ")?
        .split_once(' ')?
        .0
        .parse()
        .ok()
}

/// Splits `<request>, <origin fields> uid:N dst:A` into the origin, the destination and
/// the request. The origin fields are the last `container:`/`host unit:`/`origin:unknown`;
/// lines without them (the anchor tool's) have an unknown origin and no destination.
fn text_origin(details: &str) -> (Origin, Option<String>, &str) {
    let start = [" container:", " host unit:", " origin:unknown"]
        .iter()
        .filter_map(|m| details.rfind(m))
        .max();
    let Some(start) = start else {
        return (Origin::Unknown, None, details);
    };
    let (request, fields) = details.split_at(start);
    let mut container_id = None;
    let mut pod = None;
    let mut container_name = None;
    let mut unit = None;
    let mut host = false;
    let mut destination = None;
    for token in fields.split_whitespace() {
        if let Some(v) = token.strip_prefix("container:") {
            container_id = Some(v);
        } else if let Some(v) = token.strip_prefix("pod:") {
            pod = v.split_once('/');
        } else if let Some(v) = token.strip_prefix("container-name:") {
            container_name = Some(v);
        } else if token == "host" {
            host = true;
        } else if let Some(v) = token.strip_prefix("unit:") {
            unit = (v != "-").then(|| v.to_string());
        } else if let Some(v) = token.strip_prefix("dst:") {
            destination = Some(v.to_string());
        }
    }
    let origin = match (pod, container_id) {
        (Some((ns, name)), _) => Origin::Pod {
            namespace: ns.into(),
            name: name.into(),
            container: container_name.map(str::to_string),
        },
        (None, Some(id)) => Origin::Container { id: id.into() },
        (None, None) if host => Origin::Host { unit },
        (None, None) => Origin::Unknown,
    };
    (origin, destination, request)
}

/// The text format lowercases the request and joins headers with ", ".
fn text_user_agent(request: &str) -> Option<String> {
    let start = request.find("user-agent: ")? + "user-agent: ".len();
    let value = &request[start..];
    let end = value.find(", ").unwrap_or(value.len());
    let value = value[..end].trim_end_matches(',').trim();
    (!value.is_empty()).then(|| value.to_string())
}

// ---- JSON ------------------------------------------------------------------------------

/// The fields of schema 1 we read; the rest are ignored.
#[derive(Deserialize)]
struct JsonLine {
    schema: u32,
    timestamp: Option<String>,
    node: Option<String>,
    class: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    caller: Option<JsonCaller>,
    container: Option<JsonContainer>,
    pod: Option<JsonPod>,
    host_unit: Option<String>,
    destination: Option<String>,
    dropped: Option<u64>,
    status: Option<u16>,
}

#[derive(Deserialize)]
struct JsonCaller {
    pid: Option<u32>,
    comm: String,
}

#[derive(Deserialize)]
struct JsonContainer {
    id: String,
}

#[derive(Deserialize)]
struct JsonPod {
    namespace: Option<String>,
    name: Option<String>,
    container: Option<String>,
}

fn parse_json(line: &str) -> Option<Line> {
    let j: JsonLine = serde_json::from_str(line).ok()?;
    if j.schema != 1 {
        return None;
    }
    let kind = match j.class.as_str() {
        "v1" => Kind::V1,
        "v2" => Kind::V2,
        "v2_token" => Kind::V2Token,
        "malformed" => Kind::Malformed,
        "dropped" => {
            return Some(Line::Dropped {
                node: j.node,
                events: j.dropped.unwrap_or(0),
            });
        }
        "degraded" => return Some(Line::Degraded { node: j.node }),
        TOKEN_FAILURE_CLASS => Kind::TokenFailure,
        _ => return None,
    };
    let time = j
        .timestamp
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.naive_local());
    let origin = match (j.pod, j.container) {
        (
            Some(JsonPod {
                namespace: Some(namespace),
                name: Some(name),
                container,
            }),
            _,
        ) => Origin::Pod {
            namespace,
            name,
            container,
        },
        (_, Some(c)) => Origin::Container {
            id: c.id.chars().take(12).collect(),
        },
        (None, None) => Origin::Host { unit: j.host_unit },
        // A pod without names and without a container cannot be written by schema 1.
        (Some(_), None) => Origin::Unknown,
    };
    let user_agent = j
        .headers
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("user-agent"))
        .map(|(_, value)| value);
    Some(Line::Call(Call {
        kind,
        time,
        node: j.node,
        origin,
        pid: j.caller.as_ref().and_then(|c| c.pid),
        comm: j.caller.map(|c| c.comm).unwrap_or_else(|| "?".into()),
        user_agent,
        destination: j.destination,
        status: j.status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/report");

    fn fixture_lines(name: &str) -> Vec<String> {
        std::fs::read_to_string(format!("{FIXTURES}/{name}"))
            .expect("fixture")
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn call(line: &str) -> Call {
        match parse_line(line) {
            Some(Line::Call(c)) => c,
            other => panic!("not a call: {other:?} from {line}"),
        }
    }

    #[test]
    fn real_host_lines() {
        let lines = fixture_lines("host/imds-trace.log");
        let c = call(&lines[0]);
        assert_eq!(c.kind, Kind::V2Token);
        assert_eq!((c.pid, c.comm.as_str()), (Some(24380), "python3"));
        assert_eq!(c.origin, Origin::Host { unit: None });
        assert_eq!(
            c.user_agent.as_deref(),
            Some("botocore/1.43.11 python/3.11.7 linux/6.18.44-fc-v782")
        );
        assert_eq!(c.destination.as_deref(), Some("169.254.169.254:80"));
        assert_eq!(
            c.time.unwrap().to_string(),
            "2026-11-23 09:28:58.172",
            "milliseconds kept"
        );
        assert_eq!(call(&lines[1]).kind, Kind::V2);
    }

    #[test]
    fn real_pod_line() {
        let lines = fixture_lines("pod/imds-trace.log");
        let c = call(&lines[0]);
        assert_eq!(c.kind, Kind::V1);
        assert_eq!(c.comm, "wget");
        assert_eq!(
            c.origin,
            Origin::Pod {
                namespace: "shop".into(),
                name: "web-1".into(),
                container: Some("app".into())
            }
        );
        assert_eq!(c.user_agent.as_deref(), Some("wget"));
    }

    #[test]
    fn comm_with_colons_and_ipv6_destination() {
        let c = call(
            "[2026-11-23 09:29:10,467] [WARNING] imdsv1(!) (pid:7:capture::ipv6_e argv:x) \
             req details: get / http/1.1, host: [fd00:ec2::254], user-agent: curl/7.88.1, \
             accept: */*, host unit:cron.service uid:0 dst:[fd00:ec2::254]:80 truncated",
        );
        assert_eq!(c.comm, "capture::ipv6_e");
        assert_eq!(
            c.origin,
            Origin::Host {
                unit: Some("cron.service".into())
            }
        );
        assert_eq!(c.destination.as_deref(), Some("[fd00:ec2::254]:80"));
    }

    #[test]
    fn anchor_tool_line_without_our_fields() {
        let c = call(
            "[2025-10-22 02:55:40,993] [WARNING] imdsv1(!) (pid:69745:curl argv:curl \
             http://169.254.169.254/) called by -> (pid:1:systemd argv:/sbin/init) req \
             details: get /latest/meta-data/ http/1.1, host: 169.254.169.254, user-agent: \
             curl/8.14.1, accept: */*,",
        );
        assert_eq!(c.origin, Origin::Unknown);
        assert_eq!(c.destination, None);
        assert_eq!(c.user_agent.as_deref(), Some("curl/8.14.1"));
    }

    #[test]
    fn container_without_pod_and_token_failure() {
        let c = call(
            "[2026-11-23 10:00:00,000] [WARNING] imdsv2 token response not received (hop \
             limit?) (pid:9:python3 argv:python3 app.py) req details: put /latest/api/token \
             http/1.1, user-agent: Botocore/1.31.0, container:0123456789ab uid:0 \
             dst:169.254.169.254:80",
        );
        assert_eq!(c.kind, Kind::TokenFailure);
        assert_eq!(c.status, None);
        assert_eq!(
            c.origin,
            Origin::Container {
                id: "0123456789ab".into()
            }
        );
    }

    /// What the daemon writes (the formatter itself, not a copy of its output), read back.
    #[test]
    fn daemon_lines_with_status_and_the_hop_limit_warning() {
        use crate::output::{Format, Outcome};
        for format in [Format::Text, Format::Json] {
            let mut r = crate::output::tests::sample_record(
                b"GET /latest/meta-data/ HTTP/1.1\r\nUser-Agent: curl/8.1\r\n\r\n",
            );
            r.outcome = Outcome::Status(401);
            let c = call(&r.format(format, "n1"));
            assert_eq!((c.kind, c.status), (Kind::V1, Some(401)), "{format:?}");
            assert_eq!(c.user_agent.as_deref(), Some("curl/8.1"), "{format:?}");
            assert_eq!(c.destination.as_deref(), Some("169.254.169.254:80"));

            let mut put = crate::output::tests::sample_record(
                b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
            );
            put.outcome = Outcome::NoResponse;
            let line = put.format(format, "n1");
            let c = call(&line);
            assert_eq!((c.kind, c.status), (Kind::TokenFailure, None), "{line}");
            assert_eq!(c.comm, "python3", "{line}");
            put.outcome = Outcome::Status(200);
            assert_eq!(call(&put.format(format, "n1")).kind, Kind::V2Token);
        }
    }

    #[test]
    fn json_lines() {
        let lines = fixture_lines("nodes.jsonl");
        let c = call(&lines[0]);
        assert_eq!(c.kind, Kind::V1);
        assert_eq!(c.node.as_deref(), Some("node-a"));
        assert_eq!(c.comm, "curl");
        assert_eq!(c.origin, Origin::Host { unit: None });
        assert_eq!(c.user_agent.as_deref(), Some("curl/7.88.1"));
        assert_eq!(c.time.unwrap().to_string(), "2026-11-23 09:29:29.107");
        let pod = call(&lines[1]);
        assert_eq!(pod.kind, Kind::V2Token);
        assert!(matches!(pod.origin, Origin::Pod { ref name, .. } if name == "api-7d9f"));
        assert_eq!(
            parse_line(r#"{"schema":1,"node":"n","class":"dropped","dropped":3}"#),
            Some(Line::Dropped {
                node: Some("n".into()),
                events: 3
            })
        );
        assert!(matches!(
            parse_line(r#"{"schema":1,"node":"n","class":"v2_token_no_response","status":null}"#),
            Some(Line::Call(Call {
                kind: Kind::TokenFailure,
                ..
            }))
        ));
    }

    #[test]
    fn text_dropped_line() {
        assert_eq!(
            parse_line(
                "[2026-11-23 09:29:00,488] [WARNING] imds-snoop dropped 12 events (total: \
                 ring buffer full 12, no scratch 0); raise --ring-bytes"
            ),
            Some(Line::Dropped {
                node: None,
                events: 12
            })
        );
    }

    /// The daemon's own "lost kernel events that are not calls" line, as it writes it:
    /// understood (not "not understood"), and no call.
    #[test]
    fn degraded_lines_from_the_formatter() {
        use crate::output::{DegradedEvents, Format, degraded_line};
        let totals = DegradedEvents {
            process_events: 2,
            responses: 1,
        };
        assert_eq!(
            parse_line(&degraded_line(Format::Text, "n", 3, &totals)),
            Some(Line::Degraded { node: None })
        );
        assert_eq!(
            parse_line(&degraded_line(Format::Json, "n", 3, &totals)),
            Some(Line::Degraded {
                node: Some("n".into())
            })
        );
    }

    #[test]
    fn container_log_prefix() {
        let c = call(
            "2026-11-23T09:29:00.488Z stdout F [2026-11-23 09:29:00,488] [WARNING] imdsv1(!) \
             (pid:1:curl argv:curl) req details: get / http/1.1, host unit:- uid:0 \
             dst:169.254.169.254:80",
        );
        assert_eq!(c.comm, "curl");
        assert_eq!(c.user_agent, None);
    }

    #[test]
    fn other_lines_are_not_understood() {
        for line in [
            "",
            "hello",
            "[not a time] [INFO] imdsv2 (pid:1:x argv:y)",
            "[2026-11-23 09:29:00,488] [INFO] something else (pid:1:x argv:y)",
            "[2026-11-23 09:29:00,488] [INFO] imdsv2",
            "{\"schema\":2,\"class\":\"v1\"}",
            "{\"schema\":1,\"class\":\"metrics\"}",
            "{not json",
        ] {
            assert_eq!(parse_line(line), None, "{line}");
        }
    }
}
