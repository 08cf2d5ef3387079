//! `--format json`: one object per line. [`JsonLine`] is a request line, [`LossLine`] the
//! daemon's own `dropped` / `degraded` lines. Both serialize to exactly the bytes the daemon
//! writes (field order included) and deserialize them back, so a writer and its readers
//! cannot drift apart. A field is added without a [`SCHEMA_VERSION`] bump only when no
//! existing field changes meaning, so shippers' parsers (Fluent Bit, Vector, CloudWatch
//! agent) keep working.
//!
//! Reading is lenient where readers were lenient before this contract: a field the daemon
//! always writes may be missing from a line (an older version's, or one a shipper trimmed)
//! and then reads as its default (`None`, `0`, `false`, empty). A field of the wrong type
//! makes the line unreadable.

use std::{borrow::Cow, fmt};

use serde::{Deserialize, Serialize};

use crate::Class;

/// The `schema` every line carries; bumped when a field's meaning changes.
pub const SCHEMA_VERSION: u32 = 1;

/// `class` of the daemon's loss line: calls missing from the log.
pub const DROPPED_CLASS: &str = "dropped";
/// `class` of the daemon's "kernel events lost that are not calls" line.
pub const DEGRADED_CLASS: &str = "degraded";
/// `class` of the daemon's start marker, written once attached.
pub const STARTED_CLASS: &str = "started";
/// `class` of the daemon's stop marker, written last at a clean stop.
pub const STOPPED_CLASS: &str = "stopped";
/// `class` of the line saying response statuses are not traced from then on (`reason`).
pub const STATUSES_OFF_CLASS: &str = "statuses_off";
/// `class` of the line for a reply dropped at the hop limit that matched no traced request
/// (its `hop_drop` and `reason` say which).
pub const HOP_DROP_CLASS: &str = "hop_limit_drop";
/// `class` of the line saying IMDS answered a call that was not traced ([`UntracedLine`]).
pub const UNTRACED_CLASS: &str = "untraced_response";
/// The marker classes.
pub const MARKER_CLASSES: [&str; 4] = [
    STARTED_CLASS,
    STOPPED_CLASS,
    STATUSES_OFF_CLASS,
    HOP_DROP_CLASS,
];

/// One request line. Strings borrow from the line read (or from the daemon's record)
/// where they can.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonLine<'a> {
    /// [`SCHEMA_VERSION`].
    pub schema: u32,
    /// RFC 3339 with milliseconds and the node's local offset
    /// (`2026-11-23T11:14:46.167+00:00`). Always written.
    #[serde(borrow)]
    pub timestamp: Option<Cow<'a, str>>,
    /// `--node-name` / `$NODE_NAME`, else the hostname. Always written.
    #[serde(borrow)]
    pub node: Option<Cow<'a, str>>,
    /// `WARNING` or `INFO` ([`crate::Level::as_str`] of the class).
    #[serde(borrow, default)]
    pub level: Cow<'a, str>,
    /// [`crate::ClassInfo::json`] of the line's class; see [`JsonLine::class`].
    #[serde(borrow)]
    pub class: Cow<'a, str>,
    /// The response's status code; null when none came within `--response-timeout` or
    /// responses are not traced.
    #[serde(default)]
    pub status: Option<u16>,
    /// `reset` or `closed`: the connection ended without a response (not silence, so not
    /// the hop limit). Left out otherwise.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Cow<'a, str>>,
    /// The response was seen dropped at the hop limit in the node's forwarding path (the
    /// drop hook): its details. Left out otherwise.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub hop_drop: Option<HopDrop<'a>>,
    /// From the request line; null when malformed.
    #[serde(borrow)]
    pub method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub path: Option<Cow<'a, str>>,
    /// `1.1`, `1.0`.
    #[serde(borrow)]
    pub http_version: Option<Cow<'a, str>>,
    /// `[[name, value], ...]` as sent, in order; a token header's value is
    /// `**token redacted**`.
    #[serde(default)]
    pub headers: Cow<'a, [(String, String)]>,
    /// The calling process. Always written.
    #[serde(borrow)]
    pub caller: Option<Caller<'a>>,
    /// The caller's parent, its parent, ... up to pid 1.
    #[serde(default)]
    pub ancestors: Cow<'a, [Proc]>,
    /// The caller's container, null for a host process.
    #[serde(borrow)]
    pub container: Option<Container<'a>>,
    /// The container's pod, null when not in a pod (or nothing is known of it).
    #[serde(borrow)]
    pub pod: Option<Pod<'a>>,
    /// The systemd unit of a host caller; null otherwise or when it has none.
    #[serde(borrow)]
    pub host_unit: Option<Cow<'a, str>>,
    /// Kernel id of the caller's cgroup.
    #[serde(default)]
    pub cgroup_id: u64,
    /// Inode of the socket's network namespace.
    #[serde(default)]
    pub netns: u32,
    /// The socket is in the node's network namespace (`--host-netns`): a host process or a
    /// hostNetwork pod, which a PUT response hop limit of 1 reaches. False: another
    /// namespace, normally a pod one routing hop away. Null when the daemon does not know
    /// the node's namespace (then left out, as by lines that predate the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    /// `169.254.169.254:80`, `[fd00:ec2::254]:80`. Always written.
    #[serde(borrow)]
    pub destination: Option<Cow<'a, str>>,
    /// Bytes in the send that started the request (may exceed what was captured).
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub flags: Flags,
}

/// `hop_drop`: a reply from IMDS that died in the node's forwarding path, its TTL run out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopDrop<'a> {
    /// The packet's TTL / hop limit as it reached the node (0 or 1).
    #[serde(default)]
    pub ttl: u8,
    /// The kernel's drop reason (`IP_INHDR`, 5.19+); null where the kernel gives none and
    /// forwarding was told apart by the packet's route.
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
    /// Inode of the network namespace the packet died in (the node's).
    #[serde(default)]
    pub netns: u32,
    /// The caller's address and port the reply was for (`10.1.0.2:41000`); written on the
    /// line of a drop that matched no request (a request line names its caller).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Cow<'a, str>>,
    /// The traced destination the reply came from; as `to`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Cow<'a, str>>,
}

/// `caller`: the process that made the request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller<'a> {
    /// Host pid. Always written.
    #[serde(default)]
    pub pid: Option<u32>,
    /// pid inside the caller's pid namespace, when it differs from `pid`.
    #[serde(default)]
    pub ns_pid: Option<u32>,
    /// The kernel's comm (at most 15 bytes).
    #[serde(borrow)]
    pub comm: Cow<'a, str>,
    /// NUL-separated arguments joined with spaces, tokens redacted; null when the caller
    /// was gone before `/proc` could be read.
    #[serde(borrow, default)]
    pub argv: Option<Cow<'a, str>>,
    #[serde(default)]
    pub uid: u32,
}

/// One of `ancestors` (the daemon's own process type has this shape).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub comm: String,
    /// Null when the process was gone before `/proc` could be read.
    #[serde(default)]
    pub argv: Option<String>,
}

/// `container`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container<'a> {
    /// The full container id (64 hex digits for containerd and Docker).
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// `containerd`, `docker`, `crio`, ...
    #[serde(borrow, default)]
    pub runtime: Cow<'a, str>,
}

/// `pod`: each field null when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod<'a> {
    #[serde(borrow, default)]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub uid: Option<Cow<'a, str>>,
    /// The container's name in the pod.
    #[serde(borrow, default)]
    pub container: Option<Cow<'a, str>>,
    /// The container's image, from the runtime's annotations (containerd's
    /// `io.kubernetes.cri.image-name`, CRI-O's `io.kubernetes.cri-o.ImageName`), only as an
    /// image reference's grammar allows (`docker.io/library/nginx:1.25`, `...@sha256:...`).
    /// Left out when unknown (docker and cri-dockerd write none; lines before the field).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<Cow<'a, str>>,
    /// The workload guessed from the pod's name ([`crate::workload::guess`]): `web` for
    /// `web-7d9f8b6c5-x2k4p` and `web-0`. Never a controller kind. Left out with the name.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Cow<'a, str>>,
    /// `true` whenever `workload` is written: it is guessed from the name, not read from
    /// the pod's owner (the node has no API server). Left out with `workload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_guess: Option<bool>,
}

/// `flags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    #[serde(default)]
    pub malformed: bool,
    /// The request was cut short (bounded capture or reassembly).
    #[serde(default)]
    pub truncated: bool,
    /// The payload could not be read in the kernel.
    #[serde(default)]
    pub unreadable: bool,
    /// The caller was gone before `/proc` could be read: argv is unknown, comm is the
    /// kernel's.
    #[serde(default)]
    pub caller_exited: bool,
}

impl JsonLine<'_> {
    /// The line's class, if `class` is one of the table's.
    pub fn class(&self) -> Option<Class> {
        Class::from_json(&self.class)
    }
}

/// The daemon's own `dropped` and `degraded` lines. The daemon builds them as JSON maps,
/// whose keys serde_json sorts: the fields are in that (alphabetical) order, and those a
/// kind of line does not have are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossLine<'a> {
    /// [`DROPPED_CLASS`] or [`DEGRADED_CLASS`].
    #[serde(borrow)]
    pub class: Cow<'a, str>,
    /// `dropped`: calls lost since the last such line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// `dropped`: calls lost since start, by where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_total: Option<DroppedTotals>,
    /// `WARNING`.
    #[serde(borrow, default)]
    pub level: Cow<'a, str>,
    /// `degraded`: kernel events that are not calls lost since the last such line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// `degraded`: those lost since start, by kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_total: Option<DegradedTotals>,
    /// Always written.
    #[serde(borrow)]
    pub node: Option<Cow<'a, str>>,
    pub schema: u32,
    /// As [`JsonLine::timestamp`]. Always written.
    #[serde(borrow)]
    pub timestamp: Option<Cow<'a, str>>,
}

/// `dropped_total`: calls missing from the log since start, by where they were lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedTotals {
    /// Lines that could not be written to the file (disk full, ...).
    #[serde(default)]
    pub log_write_failed: u64,
    /// Kernel events with no per-CPU scratch record.
    #[serde(default)]
    pub no_scratch: u64,
    /// Kernel events that did not fit the ring buffer.
    #[serde(default)]
    pub ring_full: u64,
    /// Lines dropped because the writer's queue was full.
    #[serde(default)]
    pub writer_queue_full: u64,
}

/// `lost_total`: kernel events lost since start that are not calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DegradedTotals {
    /// Exec/exit events: argv of callers that exited early may be `[exited] <comm>`.
    #[serde(default)]
    pub process_events: u64,
    /// Response statuses: those calls have no status.
    #[serde(default)]
    pub responses: u64,
}

/// The daemon's markers: started, stopped, statuses not traced from now. Built as JSON maps
/// like [`LossLine`]: fields in alphabetical order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerLine<'a> {
    /// One of [`MARKER_CLASSES`].
    #[serde(borrow)]
    pub class: Cow<'a, str>,
    /// [`HOP_DROP_CLASS`]: the drop.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub hop_drop: Option<HopDrop<'a>>,
    /// `INFO`, `WARNING` for [`STATUSES_OFF_CLASS`] and [`HOP_DROP_CLASS`].
    #[serde(borrow, default)]
    pub level: Cow<'a, str>,
    #[serde(borrow)]
    pub node: Option<Cow<'a, str>>,
    /// [`STATUSES_OFF_CLASS`]: why; [`STARTED_CLASS`]: what was attached (and whether the
    /// drop hook is); [`HOP_DROP_CLASS`]: what the drop was and that no request matched.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    pub schema: u32,
    #[serde(borrow)]
    pub timestamp: Option<Cow<'a, str>>,
}

/// IMDS answered a call on a connection where no call was traced (MPTCP, TCP Fast Open
/// with the tracepoint attach, a send the hooks miss): the call was made, and no request
/// line says by whom. One per connection. Built as a JSON map like [`LossLine`]: fields in
/// alphabetical order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UntracedLine<'a> {
    /// [`UNTRACED_CLASS`].
    #[serde(borrow)]
    pub class: Cow<'a, str>,
    /// The IMDS end that answered: `169.254.169.254:80`, `[fd00:ec2::254]:80`.
    #[serde(borrow, default)]
    pub dst: Option<Cow<'a, str>>,
    /// `WARNING`.
    #[serde(borrow, default)]
    pub level: Cow<'a, str>,
    /// The caller's end of the connection (`10.0.0.5:41234`): the response path knows no
    /// process, only this.
    #[serde(borrow, default)]
    pub local: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub node: Option<Cow<'a, str>>,
    pub schema: u32,
    /// The response's status code.
    #[serde(default)]
    pub status: Option<u16>,
    /// When the response arrived (as [`JsonLine::timestamp`]).
    #[serde(borrow)]
    pub timestamp: Option<Cow<'a, str>>,
}

/// A JSON line read back.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per line read, matched at once: a Box would be an allocation per line"
)]
pub enum JsonRecord<'a> {
    /// A request line (any `class` other than the loss lines', known or not: see
    /// [`JsonLine::class`]).
    Call(JsonLine<'a>),
    /// `class` [`DROPPED_CLASS`] or [`DEGRADED_CLASS`].
    Loss(LossLine<'a>),
    /// `class` one of [`MARKER_CLASSES`].
    Marker(MarkerLine<'a>),
    /// `class` [`UNTRACED_CLASS`].
    Untraced(UntracedLine<'a>),
}

/// Why a line is not a JSON line of this schema.
#[derive(Debug)]
pub enum ReadError {
    /// Not JSON, or not the shape of a line (a field of the wrong type, no `schema` or
    /// `class`).
    Json(serde_json::Error),
    /// A `schema` other than [`SCHEMA_VERSION`].
    Schema(u32),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Json(e) => write!(f, "not a JSON trace line: {e}"),
            ReadError::Schema(v) => {
                write!(f, "JSON line of schema {v}, not {SCHEMA_VERSION}")
            }
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Json(e) => Some(e),
            ReadError::Schema(_) => None,
        }
    }
}

impl<'a> JsonRecord<'a> {
    /// Reads one line (without its newline). A loss line is read twice (as a request line
    /// first, to see its class); they are rare.
    pub fn parse(line: &'a str) -> Result<Self, ReadError> {
        let call: JsonLine<'a> = serde_json::from_str(line).map_err(ReadError::Json)?;
        if call.schema != SCHEMA_VERSION {
            return Err(ReadError::Schema(call.schema));
        }
        if call.class == DROPPED_CLASS || call.class == DEGRADED_CLASS {
            return serde_json::from_str(line)
                .map(JsonRecord::Loss)
                .map_err(ReadError::Json);
        }
        if call.class == UNTRACED_CLASS {
            return serde_json::from_str(line)
                .map(JsonRecord::Untraced)
                .map_err(ReadError::Json);
        }
        if MARKER_CLASSES.contains(&call.class.as_ref()) {
            return serde_json::from_str(line)
                .map(JsonRecord::Marker)
                .map_err(ReadError::Json);
        }
        Ok(JsonRecord::Call(call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

    fn fixture(path: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{path}"))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Lines the daemon's formatter writes today (see tests/fixtures/line/README.md):
    /// read back and written again, they are the same bytes.
    #[test]
    fn daemon_lines_round_trip_byte_for_byte() {
        let text = fixture("line/daemon.jsonl");
        let mut kinds = std::collections::BTreeSet::new();
        for line in text.lines() {
            let record = JsonRecord::parse(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let again = match &record {
                JsonRecord::Call(c) => {
                    kinds.insert(c.class.to_string());
                    serde_json::to_string(c)
                }
                JsonRecord::Loss(l) => {
                    kinds.insert(l.class.to_string());
                    serde_json::to_string(l)
                }
                JsonRecord::Marker(m) => {
                    kinds.insert(m.class.to_string());
                    serde_json::to_string(m)
                }
                JsonRecord::Untraced(u) => {
                    kinds.insert(u.class.to_string());
                    serde_json::to_string(u)
                }
            }
            .unwrap();
            assert_eq!(again, line);
        }
        let all: std::collections::BTreeSet<String> = crate::CLASSES
            .iter()
            .map(|c| c.json.to_string())
            .chain([DROPPED_CLASS.into(), DEGRADED_CLASS.into()])
            .collect();
        assert_eq!(kinds, all, "the fixture has a line of every class");
    }

    /// The README's JSON example, a line from an end-to-end run.
    #[test]
    fn readme_line_round_trips() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let line = readme
            .lines()
            .find(|l| l.starts_with("{\"schema\":1,") && l.contains("\"status\":401"))
            .expect("the README's example line");
        let JsonRecord::Call(call) = JsonRecord::parse(line).unwrap() else {
            panic!("not a call: {line}");
        };
        assert_eq!(call.class(), Some(Class::V1));
        assert_eq!(call.status, Some(401));
        let caller = call.caller.as_ref().unwrap();
        assert_eq!((caller.pid, caller.comm.as_ref()), (Some(24454), "curl"));
        assert_eq!(call.ancestors[0].comm, "outcome::json_l");
        assert_eq!(serde_json::to_string(&call).unwrap(), line);
    }

    /// Lines of an older daemon (before `status`) read with what they have.
    #[test]
    fn older_lines_read_leniently() {
        let text = fixture("report/nodes.jsonl");
        let first = text.lines().next().unwrap();
        let JsonRecord::Call(call) = JsonRecord::parse(first).unwrap() else {
            panic!("not a call");
        };
        assert_eq!(call.class(), Some(Class::V1));
        assert_eq!(call.node.as_deref(), Some("node-a"));
        assert_eq!(call.status, None);
        assert_eq!(call.headers[1], ("User-Agent".into(), "curl/7.88.1".into()));
        assert_eq!(
            JsonRecord::parse(r#"{"schema":1,"node":"n","class":"dropped","dropped":3}"#).unwrap(),
            JsonRecord::Loss(LossLine {
                class: "dropped".into(),
                dropped: Some(3),
                node: Some("n".into()),
                schema: 1,
                ..LossLine::default()
            })
        );
    }

    #[test]
    fn markers_and_host_network() {
        let line = r#"{"class":"statuses_off","level":"WARNING","node":"n","reason":"this process lacks CAP_NET_ADMIN","schema":1,"timestamp":"2026-11-23T09:00:00.000+00:00"}"#;
        let JsonRecord::Marker(m) = JsonRecord::parse(line).unwrap() else {
            panic!("not a marker: {line}");
        };
        assert_eq!(
            m.reason.as_deref(),
            Some("this process lacks CAP_NET_ADMIN")
        );
        assert_eq!(serde_json::to_string(&m).unwrap(), line);
        let start = r#"{"class":"started","level":"INFO","node":"n","schema":1,"timestamp":"2026-11-23T09:00:00.000+00:00"}"#;
        let JsonRecord::Marker(m) = JsonRecord::parse(start).unwrap() else {
            panic!("not a marker");
        };
        assert_eq!((m.class.as_ref(), m.reason.as_deref()), ("started", None));
        assert_eq!(serde_json::to_string(&m).unwrap(), start);
        let JsonRecord::Call(c) =
            JsonRecord::parse(r#"{"schema":1,"class":"v2","netns":7,"host_network":false}"#)
                .unwrap()
        else {
            panic!("not a call");
        };
        assert_eq!(c.host_network, Some(false));
    }

    /// The image and the workload guess: written after the container when known, left
    /// out otherwise (so lines without them are the bytes they were), read back either way.
    #[test]
    fn image_and_workload_round_trip() {
        let line = r#"{"namespace":"shop","name":"web-0","uid":null,"container":"app","container_image":"docker.io/library/nginx:1.25","workload":"web","workload_guess":true}"#;
        let pod: Pod<'_> = serde_json::from_str(line).unwrap();
        assert_eq!(
            pod.container_image.as_deref(),
            Some("docker.io/library/nginx:1.25")
        );
        assert_eq!(
            (pod.workload.as_deref(), pod.workload_guess),
            (Some("web"), Some(true))
        );
        assert_eq!(serde_json::to_string(&pod).unwrap(), line);
        let old = r#"{"namespace":"shop","name":"web-0","uid":null,"container":"app"}"#;
        let pod: Pod<'_> = serde_json::from_str(old).unwrap();
        assert_eq!(
            (&pod.container_image, &pod.workload, pod.workload_guess),
            (&None, &None, None)
        );
        assert_eq!(serde_json::to_string(&pod).unwrap(), old);
    }

    #[test]
    fn untraced_response() {
        let line = r#"{"class":"untraced_response","dst":"169.254.169.254:80","level":"WARNING","local":"10.0.0.5:41234","node":"n","schema":1,"status":200,"timestamp":"2026-11-23T09:00:00.000+00:00"}"#;
        let JsonRecord::Untraced(u) = JsonRecord::parse(line).unwrap() else {
            panic!("not an untraced line: {line}");
        };
        assert_eq!(
            (u.status, u.local.as_deref(), u.dst.as_deref()),
            (
                Some(200),
                Some("10.0.0.5:41234"),
                Some("169.254.169.254:80")
            )
        );
        assert_eq!(serde_json::to_string(&u).unwrap(), line);
    }

    #[test]
    fn other_schemas_and_shapes_are_errors() {
        assert!(matches!(
            JsonRecord::parse(r#"{"schema":2,"class":"v1"}"#),
            Err(ReadError::Schema(2))
        ));
        for line in [
            "{not json",
            r#"{"class":"v1"}"#,
            r#"{"schema":1}"#,
            r#"{"schema":1,"class":"v1","bytes":"x"}"#,
        ] {
            assert!(
                matches!(JsonRecord::parse(line), Err(ReadError::Json(_))),
                "{line}"
            );
        }
        let JsonRecord::Call(c) = JsonRecord::parse(r#"{"schema":1,"class":"metrics"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.class(), None);
    }
}
