//! `--format json`: one object per line, schema version 1 (documented in the README).
//! Built from serde structs; a field is added only with a schema version bump if its
//! meaning changes, so a shipper's parser (Fluent Bit, Vector, CloudWatch agent) keeps working.

use serde::Serialize;

use crate::{
    attribution::{Origin, Proc},
    http::Class,
    record::Record,
};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct Line<'a> {
    schema: u32,
    /// RFC 3339 with milliseconds, local offset.
    timestamp: &'a str,
    node: &'a str,
    level: &'static str,
    /// `v1`, `v2`, `v2_token`, `malformed`, or `v2_token_no_response` (a token PUT whose
    /// response never came: the hop-limit warning).
    class: &'static str,
    /// The response's status code; null when none was seen (no response within
    /// `--response-timeout`, or responses not traced).
    status: Option<u16>,
    method: Option<&'a str>,
    path: Option<&'a str>,
    http_version: Option<String>,
    /// As sent, in order; the token header's value is `**token redacted**`.
    headers: &'a [(String, String)],
    caller: Caller<'a>,
    ancestors: &'a [Proc],
    container: Option<ContainerOut<'a>>,
    pod: Option<PodOut<'a>>,
    host_unit: Option<&'a str>,
    cgroup_id: u64,
    netns: u32,
    destination: String,
    bytes: u64,
    flags: Flags,
}

#[derive(Serialize)]
struct Caller<'a> {
    pid: u32,
    /// pid inside the caller's pid namespace, when it differs from `pid`.
    ns_pid: Option<u32>,
    comm: &'a str,
    argv: Option<&'a str>,
    uid: u32,
}

#[derive(Serialize)]
struct ContainerOut<'a> {
    id: &'a str,
    runtime: &'a str,
}

#[derive(Serialize)]
struct PodOut<'a> {
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    uid: Option<&'a str>,
    container: Option<&'a str>,
}

#[derive(Serialize)]
struct Flags {
    malformed: bool,
    truncated: bool,
    /// The payload could not be read in the kernel.
    unreadable: bool,
    /// The caller was gone before /proc could be read: argv is unknown, comm is the kernel's.
    caller_exited: bool,
}

/// The serde name of a class (snake_case, as `Class` serializes).
fn class_name(class: Class) -> &'static str {
    match class {
        Class::V1 => "v1",
        Class::V2 => "v2",
        Class::V2Token => "v2_token",
        Class::Malformed => "malformed",
    }
}

/// Writes the line of `r` to `out`; `timestamp` is `r.time` as RFC 3339 with milliseconds.
pub(super) fn write_line(r: &Record, node: &str, timestamp: &str, out: &mut Vec<u8>) {
    let (container, pod, host_unit) = match &r.origin {
        Origin::Container(c) => (
            Some(ContainerOut {
                id: &c.id,
                runtime: c.runtime,
            }),
            (c.pod.is_some() || c.pod_uid.is_some()).then(|| PodOut {
                namespace: c.pod.as_ref().map(|p| p.namespace.as_str()),
                name: c.pod.as_ref().map(|p| p.name.as_str()),
                uid: c.pod_uid.as_deref(),
                container: c.pod.as_ref().and_then(|p| p.container.as_deref()),
            }),
            None,
        ),
        Origin::Host { unit } => (None, None, unit.as_deref()),
        Origin::Unknown => (None, None, None),
    };
    let req = &r.request;
    let line = Line {
        schema: SCHEMA_VERSION,
        timestamp,
        node,
        level: r.level(),
        class: if r.token_not_received() {
            crate::record::TOKEN_NO_RESPONSE_CLASS
        } else {
            class_name(req.class)
        },
        status: r.status(),
        method: req.method.as_deref(),
        path: req.path.as_deref(),
        http_version: req.version.map(|v| format!("1.{v}")),
        headers: &req.headers,
        caller: Caller {
            pid: r.caller.pid,
            ns_pid: r.ns_pid,
            comm: &r.caller.comm,
            argv: r.caller.argv.as_deref(),
            uid: r.uid,
        },
        ancestors: &r.ancestors,
        container,
        pod,
        host_unit,
        cgroup_id: r.cgroup_id,
        netns: r.netns,
        destination: std::net::SocketAddr::new(r.dst.0, r.dst.1).to_string(),
        bytes: r.bytes,
        flags: Flags {
            malformed: req.class == Class::Malformed,
            truncated: req.truncated,
            unreadable: r.unreadable,
            caller_exited: r.caller.argv.is_none(),
        },
    };
    // Serializing plain structs of strings and integers cannot fail.
    if let Err(e) = serde_json::to_writer(&mut *out, &line) {
        out.clear();
        out.extend_from_slice(
            format!("{{\"schema\":{SCHEMA_VERSION},\"error\":\"{e}\"}}").as_bytes(),
        );
    }
}
