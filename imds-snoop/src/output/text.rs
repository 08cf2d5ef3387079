//! The text line, compatible with aws-imds-packet-analyzer's so existing `grep imdsv1`
//! habits and dashboards keep working:
//!
//! `[2025-10-22 02:55:40,993] [WARNING] imdsv1(!) (pid:69745:curl argv:curl http://...) called
//! by -> (pid:11793:bash argv:/bin/bash) -> (pid:1:systemd argv:...) req details: get
//! /latest/meta-data/ http/1.1, host: 169.254.169.254, user-agent: curl/8.14.1, accept: */*,`
//!
//! Our additions come after the anchor's fields, so a parser of the old format still works:
//! the response status (` -> 200`) right after the request details, then the origin
//! (` container:... pod:...` or ` host unit:...`), ` uid:`, ` dst:` and flags.
//! A token PUT without a response is labelled `imdsv2 token response not received (hop
//! limit?)` at WARNING level instead of `imdsv2(token)`.

use std::fmt::Write as _;

use imds_snoop_line::label;

use super::stamps::Stamps;
use crate::{
    attribution::{Origin, Proc},
    escape::{push_escaped, push_field},
    record::Record,
};

/// The request details hold this label themselves (the daemon writes the user agent header).
const OWN_DETAILS_LABEL: Option<&str> = Some(label::USER_AGENT);

/// Appends the line of `r` to `out`, built in place: the timestamp from `stamps`, the
/// request details through `scratch` (reused from line to line) to be escaped as a whole.
/// Labels and separators are the line contract's ([`label`], [`imds_snoop_line::Class`]).
pub(super) fn push_line(r: &Record, stamps: &mut Stamps, scratch: &mut String, out: &mut String) {
    out.push('[');
    stamps.push_text(out, &r.time);
    out.push_str("] [");
    out.push_str(r.level());
    out.push_str("] ");
    out.push_str(r.class().label());
    out.push(' ');
    push_proc(out, &r.caller);
    if !r.ancestors.is_empty() {
        out.push_str(label::CALLED_BY);
        for a in &r.ancestors {
            out.push_str(label::ARROW);
            push_proc(out, a);
        }
    }
    out.push_str(label::REQ_DETAILS);
    scratch.clear();
    r.request.details_into(scratch);
    // Path and headers are the caller's: no field label of the line inside (see escape).
    push_field(out, scratch, OWN_DETAILS_LABEL);
    if let Some(status) = r.status() {
        out.push_str(label::ARROW);
        let _ = write!(out, "{status}");
    }
    if let Some(end) = r.connection_end() {
        out.push_str(label::ARROW);
        out.push_str(end);
    }
    if r.dropped().is_some() {
        out.push_str(label::ARROW);
        out.push_str(label::HOP_DROPPED);
    }
    out.push(' ');
    push_origin(out, &r.origin);
    if let Some(ns_pid) = r.ns_pid {
        out.push(' ');
        out.push_str(label::CONTAINER_PID);
        let _ = write!(out, "{ns_pid}");
    }
    if let Some(host) = r.host_network {
        out.push(' ');
        out.push_str(if host {
            label::NET_HOST
        } else {
            label::NET_OTHER
        });
    }
    out.push(' ');
    out.push_str(label::UID);
    let _ = write!(out, "{}", r.uid);
    out.push(' ');
    out.push_str(label::DST);
    match r.dst.0 {
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "[{v6}]:{}", r.dst.1);
        }
        v4 => {
            let _ = write!(out, "{v4}:{}", r.dst.1);
        }
    }
    if r.request.truncated {
        out.push(' ');
        out.push_str(label::TRUNCATED);
    }
    if r.unreadable {
        out.push(' ');
        out.push_str(label::PAYLOAD_UNREADABLE);
    }
}

/// `container:<id12> pod:<namespace>/<name> container-name:<name> image:<ref>
/// workload~:<guess>`, or `host unit:<unit>`.
fn push_origin(out: &mut String, o: &Origin) {
    match o {
        Origin::Container(c) => {
            out.push_str(label::CONTAINER);
            // A validated ASCII id: cut at any byte.
            out.push_str(c.id.short());
            match &c.pod {
                Some(pod) => {
                    out.push(' ');
                    out.push_str(label::POD);
                    push_escaped(out, &pod.namespace);
                    out.push('/');
                    push_escaped(out, &pod.name);
                    if let Some(name) = &pod.container {
                        out.push(' ');
                        out.push_str(label::CONTAINER_NAME);
                        push_escaped(out, name);
                    }
                    // A validated image reference: no space or control, one token (it may
                    // hold `:` and `/`; readers take each field from its token's start).
                    if let Some(image) = &pod.image {
                        out.push(' ');
                        out.push_str(label::IMAGE);
                        push_escaped(out, image);
                    }
                    out.push(' ');
                    out.push_str(label::WORKLOAD);
                    push_escaped(out, pod.workload());
                }
                None => {
                    if let Some(uid) = &c.pod_uid {
                        out.push(' ');
                        out.push_str(label::POD_UID);
                        out.push_str(uid);
                    }
                }
            }
        }
        Origin::Host { unit } => {
            out.push_str(label::HOST_UNIT);
            match unit {
                // A delegated cgroup subtree's unit names are a user's.
                Some(unit) => push_field(out, unit, None),
                None => out.push_str(label::NO_UNIT),
            }
        }
        Origin::Unknown => out.push_str(label::ORIGIN_UNKNOWN),
    }
}

/// `(pid:<pid>:<comm> argv:<argv>)`
fn push_proc(out: &mut String, p: &Proc) {
    out.push_str(label::PID);
    let _ = write!(out, "{}:", p.pid);
    // comm and argv are the process's own choice: no field label of the line inside.
    push_field(out, &p.comm, None);
    out.push_str(label::ARGV);
    match &p.argv {
        Some(argv) => push_field(out, argv, None),
        // Gone before we could read /proc: the kernel-captured comm is all there is.
        None => {
            out.push_str(label::EXITED);
            push_field(out, &p.comm, None);
        }
    }
    out.push(')');
}

#[cfg(test)]
pub(crate) mod tests {
    //! The line built in place must be the line as it was built before (one String per
    //! part, chrono's strftime per line), byte for byte: the report parser, the e2e tests
    //! and users' greps read it.

    use std::fmt::Write as _;

    use chrono::{Duration, Local, TimeZone as _};

    use super::super::{Format, LineFormatter, tests::sample_record};
    use crate::{
        attribution::{Container, Origin, Pod, Proc},
        escape::tests::{awkward_strings, escape_reference},
        http::{Class, Reassembler},
        record::{Outcome, Record},
    };

    fn reference(r: &Record) -> String {
        let mut line = format!(
            "[{}] [{}] {} {}",
            r.time.format("%Y-%m-%d %H:%M:%S,%3f"),
            r.level(),
            if r.token_not_received() {
                "imdsv2 token response not received (hop limit?)"
            } else if r.token_dropped() {
                "imdsv2 token response dropped (hop limit)"
            } else {
                match r.request.class {
                    Class::V1 => "imdsv1(!)",
                    Class::V2 => "imdsv2",
                    Class::V2Token => "imdsv2(token)",
                    Class::Malformed => "malformed(!)",
                    Class::V2TokenNoResponse | Class::V2TokenDropped => {
                        unreachable!("not a request's class")
                    }
                }
            },
            proc(&r.caller)
        );
        if !r.ancestors.is_empty() {
            line.push_str(" called by");
            for a in &r.ancestors {
                line.push_str(" -> ");
                line.push_str(&proc(a));
            }
        }
        line.push_str(" req details: ");
        line.push_str(&escape_reference(&r.request.details()));
        if let Some(status) = r.status() {
            let _ = write!(line, " -> {status}");
        }
        if matches!(r.outcome, Outcome::Dropped(_)) {
            line.push_str(" -> dropped");
        }
        line.push(' ');
        line.push_str(&origin(&r.origin));
        if let Some(ns_pid) = r.ns_pid {
            let _ = write!(line, " container-pid:{ns_pid}");
        }
        let _ = write!(line, " uid:{} dst:", r.uid);
        match r.dst.0 {
            std::net::IpAddr::V6(v6) => {
                let _ = write!(line, "[{v6}]:{}", r.dst.1);
            }
            v4 => {
                let _ = write!(line, "{v4}:{}", r.dst.1);
            }
        }
        if r.request.truncated {
            line.push_str(" truncated");
        }
        if r.unreadable {
            line.push_str(" payload-unreadable");
        }
        line
    }

    fn origin(o: &Origin) -> String {
        match o {
            Origin::Container(c) => {
                let mut s = format!("container:{}", &c.id[..c.id.len().min(12)]);
                match &c.pod {
                    Some(pod) => {
                        let _ = write!(
                            s,
                            " pod:{}/{}",
                            escape_reference(&pod.namespace),
                            escape_reference(&pod.name)
                        );
                        if let Some(name) = &pod.container {
                            let _ = write!(s, " container-name:{}", escape_reference(name));
                        }
                        if let Some(image) = &pod.image {
                            let _ = write!(s, " image:{}", escape_reference(image));
                        }
                        let _ = write!(
                            s,
                            " workload~:{}",
                            escape_reference(imds_snoop_line::workload::guess(&pod.name))
                        );
                    }
                    None => {
                        if let Some(uid) = &c.pod_uid {
                            let _ = write!(s, " pod-uid:{uid}");
                        }
                    }
                }
                s
            }
            Origin::Host { unit: Some(unit) } => format!("host unit:{}", escape_reference(unit)),
            Origin::Host { unit: None } => "host unit:-".into(),
            Origin::Unknown => "origin:unknown".into(),
        }
    }

    fn proc(p: &Proc) -> String {
        let argv = match &p.argv {
            Some(argv) => escape_reference(argv),
            None => format!("[exited] {}", escape_reference(&p.comm)),
        };
        format!(
            "(pid:{}:{} argv:{})",
            p.pid,
            escape_reference(&p.comm),
            argv
        )
    }

    /// The request(s) in `raw`, the first one, complete or not.
    fn request(raw: &[u8]) -> crate::http::Request {
        let mut r = Reassembler::<()>::new(4096, std::time::Duration::from_secs(1));
        let mut out = r.push(0, (), raw, false, std::time::Instant::now());
        out.extend(r.drain());
        out.remove(0).1
    }

    /// Records of every shape: each origin, exited callers, container pids, IPv6, flags,
    /// statuses, awkward strings in every field that is escaped, and times that step through
    /// seconds by odd amounts, and back.
    pub(crate) fn records() -> Vec<Record> {
        let requests: [&[u8]; 5] = [
            b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nAccept: */*\r\n\r\n",
            b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n",
            b"GET /X HTTP/1.0\r\nX-aws-ec2-metadata-token: AQAEAabc\r\nUser-Agent: A\tB\xc2\x85\r\n\r\n",
            b"\x00\x01garbage\xff\r\n",
            b"GET /cut-short HTTP/1.1\r\nHost: 169.25",
        ];
        let strings = awkward_strings();
        let base = Local.timestamp_opt(1_760_000_000, 999_000_000).unwrap();
        let mut out = Vec::new();
        for (i, s) in strings.iter().enumerate().take(600) {
            let mut r = sample_record(requests[0]);
            r.request = request(requests[i % requests.len()]);
            r.time =
                base + Duration::milliseconds(137 * i as i64 - if i % 11 == 0 { 5000 } else { 0 });
            r.caller = Proc {
                pid: i as u32,
                comm: strings[(i + 1) % strings.len()].clone(),
                argv: (i % 4 != 0).then(|| s.clone()),
            };
            if i % 3 == 0 {
                r.ancestors.clear();
            } else {
                r.ancestors.push(Proc {
                    pid: 7,
                    comm: s.clone(),
                    argv: None,
                });
            }
            r.ns_pid = (i % 5 == 0).then_some(42);
            r.origin = match i % 6 {
                0 => Origin::Unknown,
                1 => Origin::Host { unit: None },
                2 => Origin::Host {
                    unit: Some(s.clone()),
                },
                3 => Origin::Container(Container {
                    id: "0123456789abcdef0123".into(),
                    runtime: "containerd",
                    pod_uid: Some("5d7c-uid".into()),
                    pod: None,
                }),
                _ => Origin::Container(Container {
                    id: "short".into(),
                    runtime: "docker",
                    pod_uid: None,
                    pod: Some(Pod {
                        namespace: s.clone(),
                        name: strings[(i + 2) % strings.len()].clone(),
                        container: (i % 6 == 5).then(|| s.clone()),
                        image: (i % 12 == 4).then(|| "docker.io/library/nginx:1.25".into()),
                    }),
                }),
            };
            if i % 7 == 0 {
                r.dst = ("fd00:ec2::254".parse().unwrap(), 80);
            }
            r.unreadable = i % 9 == 0;
            r.outcome = match i % 3 {
                0 => Outcome::Unknown,
                1 => Outcome::Status(200 + i as u16 % 300),
                // Every 30th from 11: a token PUT (i % 5 == 1) seen dropped.
                _ if i % 10 == 1 => Outcome::Dropped(crate::record::Dropped {
                    ttl: (i % 2) as u8,
                    reason: (i % 4 == 3).then_some("IP_INHDR"),
                    netns: i as u32,
                }),
                _ => Outcome::NoResponse,
            };
            out.push(r);
        }
        out
    }

    #[test]
    fn lines_are_byte_identical_to_the_reference() {
        let records = records();
        assert!(records.iter().any(|r| r.request.truncated));
        assert!(records.iter().any(|r| r.token_not_received()));
        let mut f = LineFormatter::new(Format::Text, "node");
        let mut out = String::new();
        for r in &records {
            out.clear();
            f.push_line(r, &mut out);
            assert_eq!(out, reference(r));
            assert_eq!(r.format(Format::Text, "node"), out);
        }
    }
}
