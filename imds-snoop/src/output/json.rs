//! `--format json`: one object per line, the line contract's [`JsonLine`] (its schema,
//! [`SCHEMA_VERSION`], is documented there and in the README). The line borrows the
//! record's strings; only the destination (and an unusual HTTP version) is formatted.

use std::borrow::Cow;

use imds_snoop_line::{
    JsonLine, SCHEMA_VERSION,
    json::{Caller, Container, Flags, HopDrop, Pod},
};

use crate::{attribution::Origin, http::Class, record::Record};

/// `1.<minor>` of an HTTP version, without formatting for the two that occur.
fn http_version(minor: u8) -> Cow<'static, str> {
    match minor {
        0 => Cow::Borrowed("1.0"),
        1 => Cow::Borrowed("1.1"),
        v => Cow::Owned(format!("1.{v}")),
    }
}

/// The JSON line of `r`; `timestamp` is `r.time` as RFC 3339 with milliseconds.
fn line<'a>(r: &'a Record, node: &'a str, timestamp: &'a str) -> JsonLine<'a> {
    let (container, pod, host_unit) = match &r.origin {
        Origin::Container(c) => (
            Some(Container {
                id: Cow::Borrowed(&c.id),
                runtime: Cow::Borrowed(c.runtime),
            }),
            (c.pod.is_some() || c.pod_uid.is_some()).then(|| Pod {
                namespace: c.pod.as_ref().map(|p| Cow::Borrowed(p.namespace.as_str())),
                name: c.pod.as_ref().map(|p| Cow::Borrowed(p.name.as_str())),
                uid: c.pod_uid.as_deref().map(Cow::Borrowed),
                container: c
                    .pod
                    .as_ref()
                    .and_then(|p| p.container.as_deref())
                    .map(Cow::Borrowed),
                container_image: c
                    .pod
                    .as_ref()
                    .and_then(|p| p.image.as_deref())
                    .map(Cow::Borrowed),
                workload: c.pod.as_ref().map(|p| Cow::Borrowed(p.workload())),
                workload_guess: c.pod.as_ref().map(|_| true),
            }),
            None,
        ),
        Origin::Host { unit } => (None, None, unit.as_deref().map(Cow::Borrowed)),
        Origin::Unknown => (None, None, None),
    };
    let req = &r.request;
    let class = r.class();
    JsonLine {
        schema: SCHEMA_VERSION,
        timestamp: Some(Cow::Borrowed(timestamp)),
        node: Some(Cow::Borrowed(node)),
        level: Cow::Borrowed(class.level().as_str()),
        class: Cow::Borrowed(class.json()),
        status: r.status(),
        connection: r.connection_end().map(Cow::Borrowed),
        hop_drop: r.dropped().map(|d| HopDrop {
            ttl: d.ttl,
            reason: d.reason.map(Cow::Borrowed),
            netns: d.netns,
            to: None,
            from: None,
        }),
        method: req.method.as_deref().map(Cow::Borrowed),
        path: req.path.as_deref().map(Cow::Borrowed),
        http_version: req.version.map(http_version),
        headers: Cow::Borrowed(&req.headers),
        caller: Some(Caller {
            pid: Some(r.caller.pid),
            ns_pid: r.ns_pid,
            comm: Cow::Borrowed(&r.caller.comm),
            argv: r.caller.argv.as_deref().map(Cow::Borrowed),
            uid: r.uid,
        }),
        ancestors: Cow::Borrowed(&r.ancestors),
        container,
        pod,
        host_unit,
        cgroup_id: r.cgroup_id,
        netns: r.netns,
        host_network: r.host_network,
        destination: Some(Cow::Owned(
            std::net::SocketAddr::new(r.dst.0, r.dst.1).to_string(),
        )),
        bytes: r.bytes,
        flags: Flags {
            malformed: req.class == Class::Malformed,
            truncated: req.truncated,
            unreadable: r.unreadable,
            caller_exited: r.caller.argv.is_none(),
        },
    }
}

/// Writes the line of `r` to `out`; `timestamp` is `r.time` as RFC 3339 with milliseconds.
pub(super) fn write_line(r: &Record, node: &str, timestamp: &str, out: &mut Vec<u8>) {
    // Serializing plain structs of strings and integers cannot fail.
    if let Err(e) = serde_json::to_writer(&mut *out, &line(r, node, timestamp)) {
        out.clear();
        out.extend_from_slice(
            format!("{{\"schema\":{SCHEMA_VERSION},\"error\":\"{e}\"}}").as_bytes(),
        );
    }
}

#[cfg(test)]
mod tests {
    //! The line through the contract's `JsonLine` must be the line as the daemon wrote it
    //! before (its own serde structs, below), byte for byte: shippers' parsers and
    //! `imds-snoop report` read it.

    use serde::Serialize;

    use super::*;
    use crate::{
        attribution::Proc,
        output::{Format, LineFormatter, text::tests::records},
    };

    #[derive(Serialize)]
    struct RefLine<'a> {
        schema: u32,
        timestamp: &'a str,
        node: &'a str,
        level: &'static str,
        class: &'static str,
        status: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        hop_drop: Option<RefHopDrop>,
        method: Option<&'a str>,
        path: Option<&'a str>,
        http_version: Option<String>,
        headers: &'a [(String, String)],
        caller: RefCaller<'a>,
        ancestors: &'a [RefProc<'a>],
        container: Option<RefContainer<'a>>,
        pod: Option<RefPod<'a>>,
        host_unit: Option<&'a str>,
        cgroup_id: u64,
        netns: u32,
        destination: String,
        bytes: u64,
        flags: RefFlags,
    }

    #[derive(Serialize)]
    struct RefHopDrop {
        ttl: u8,
        reason: Option<&'static str>,
        netns: u32,
    }

    #[derive(Serialize)]
    struct RefProc<'a> {
        pid: u32,
        comm: &'a str,
        argv: Option<&'a str>,
    }

    #[derive(Serialize)]
    struct RefCaller<'a> {
        pid: u32,
        ns_pid: Option<u32>,
        comm: &'a str,
        argv: Option<&'a str>,
        uid: u32,
    }

    #[derive(Serialize)]
    struct RefContainer<'a> {
        id: &'a str,
        runtime: &'a str,
    }

    #[derive(Serialize)]
    struct RefPod<'a> {
        namespace: Option<&'a str>,
        name: Option<&'a str>,
        uid: Option<&'a str>,
        container: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        container_image: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        workload: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        workload_guess: Option<bool>,
    }

    #[derive(Serialize)]
    struct RefFlags {
        malformed: bool,
        truncated: bool,
        unreadable: bool,
        caller_exited: bool,
    }

    /// The daemon's JSON line before the line contract (its class names and levels spelled
    /// out here, independently of the class table).
    fn reference(r: &Record, node: &str, timestamp: &str) -> String {
        let (container, pod, host_unit) = match &r.origin {
            Origin::Container(c) => (
                Some(RefContainer {
                    id: &c.id,
                    runtime: c.runtime,
                }),
                (c.pod.is_some() || c.pod_uid.is_some()).then(|| RefPod {
                    namespace: c.pod.as_ref().map(|p| p.namespace.as_str()),
                    name: c.pod.as_ref().map(|p| p.name.as_str()),
                    uid: c.pod_uid.as_deref(),
                    container: c.pod.as_ref().and_then(|p| p.container.as_deref()),
                    container_image: c.pod.as_ref().and_then(|p| p.image.as_deref()),
                    workload: c
                        .pod
                        .as_ref()
                        .map(|p| imds_snoop_line::workload::guess(&p.name)),
                    workload_guess: c.pod.as_ref().map(|_| true),
                }),
                None,
            ),
            Origin::Host { unit } => (None, None, unit.as_deref()),
            Origin::Unknown => (None, None, None),
        };
        let req = &r.request;
        let no_response =
            req.class == Class::V2Token && r.outcome == crate::record::Outcome::NoResponse;
        let dropped = match r.outcome {
            crate::record::Outcome::Dropped(d) => Some(d),
            _ => None,
        };
        let (class, level) = match req.class {
            _ if no_response => ("v2_token_no_response", "WARNING"),
            Class::V2Token if dropped.is_some() => ("v2_token_dropped", "WARNING"),
            Class::V1 => ("v1", "WARNING"),
            Class::V2 => ("v2", "INFO"),
            Class::V2Token => ("v2_token", "INFO"),
            Class::Malformed => ("malformed", "WARNING"),
            Class::V2TokenNoResponse | Class::V2TokenDropped => {
                unreachable!("not a request's class")
            }
        };
        let ancestors: Vec<RefProc<'_>> = r
            .ancestors
            .iter()
            .map(|p: &Proc| RefProc {
                pid: p.pid,
                comm: &p.comm,
                argv: p.argv.as_deref(),
            })
            .collect();
        serde_json::to_string(&RefLine {
            schema: 1,
            timestamp,
            node,
            level,
            class,
            status: r.status(),
            hop_drop: dropped.map(|d| RefHopDrop {
                ttl: d.ttl,
                reason: d.reason,
                netns: d.netns,
            }),
            method: req.method.as_deref(),
            path: req.path.as_deref(),
            http_version: req.version.map(|v| format!("1.{v}")),
            headers: &req.headers,
            caller: RefCaller {
                pid: r.caller.pid,
                ns_pid: r.ns_pid,
                comm: &r.caller.comm,
                argv: r.caller.argv.as_deref(),
                uid: r.uid,
            },
            ancestors: &ancestors,
            container,
            pod,
            host_unit,
            cgroup_id: r.cgroup_id,
            netns: r.netns,
            destination: std::net::SocketAddr::new(r.dst.0, r.dst.1).to_string(),
            bytes: r.bytes,
            flags: RefFlags {
                malformed: req.class == Class::Malformed,
                truncated: req.truncated,
                unreadable: r.unreadable,
                caller_exited: r.caller.argv.is_none(),
            },
        })
        .unwrap()
    }

    /// Every class (the hop-limit warning too), origin, outcome and flag, awkward strings
    /// in every field: the same bytes as the reference.
    #[test]
    fn lines_are_byte_identical_to_the_reference() {
        let records = records();
        let classes: std::collections::BTreeSet<_> = records.iter().map(Record::class).collect();
        assert_eq!(classes.len(), imds_snoop_line::CLASSES.len(), "{classes:?}");
        let mut f = LineFormatter::new(Format::Json, "node-\u{7}\"1\"");
        for (i, r) in records.iter().enumerate() {
            let mut out = String::new();
            f.push_line(r, &mut out);
            let stamp = r.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
            assert_eq!(out, reference(r, "node-\u{7}\"1\"", &stamp), "record {i}");
        }
        for minor in [0, 1, 9, 10, 255] {
            assert_eq!(http_version(minor), format!("1.{minor}"));
        }
    }
}
