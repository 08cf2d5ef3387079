//! Reading the text line (layout in [`crate::label`]): the anchor tool's fields, then ours.
//!
//! ```text
//! [2025-10-22 02:55:40,993] [WARNING] imdsv1(!) (pid:69745:curl argv:curl http://...) called
//! by -> (pid:11793:bash argv:/bin/bash) -> (pid:1:systemd argv:...) req details: get
//! /latest/meta-data/ http/1.1, host: 169.254.169.254, user-agent: curl/8.14.1, accept: */*,
//! -> 200 host unit:- uid:0 dst:169.254.169.254:80
//! ```
//!
//! The reader splits; it does not copy. Everything it returns borrows from the line, and
//! numbers are the digits written in it.

use crate::{Class, label};

/// The `strftime` pattern of a text line's time: local time with milliseconds,
/// `2026-11-23 09:29:00,488`.
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S,%3f";

/// One text line: `[<time>] [<level>] <body>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextLine<'a> {
    /// The time as written ([`TIME_FORMAT`]), not checked.
    pub time: &'a str,
    /// `WARNING`, `INFO`, ... as written.
    pub level: &'a str,
    pub body: TextBody<'a>,
}

/// What follows the level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextBody<'a> {
    /// A request line: a label of the class table, or any label followed by ` (pid:`.
    Call(TextCall<'a>),
    /// The daemon's `imds-snoop dropped <events> events ...` line: the log misses
    /// `events` calls since the previous one.
    Dropped { events: u64 },
    /// The daemon's `imds-snoop lost N kernel events that are not calls ...` line.
    Degraded,
    /// The daemon's start marker (`imds-snoop started ...`).
    Started,
    /// The daemon's stop marker (`imds-snoop stopped ...`): a clean stop.
    Stopped,
    /// `imds-snoop statuses not traced from now (<reason>)`.
    StatusesOff { reason: &'a str },
    /// `imds-snoop saw a reply dropped at the hop limit (<details>)`: a reply dropped in
    /// the node's forwarding path that matched no traced request.
    HopDrop { details: &'a str },
    /// `imds-snoop IMDS answered a call it did not see traced (<detail>)`: a call was made
    /// that no request line shows.
    Untraced { detail: &'a str },
    /// Anything else (the text after `] `).
    Other(&'a str),
}

/// A request line after its level: `<label> (pid:...) ... req details: ...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextCall<'a> {
    /// The label as written.
    pub label: &'a str,
    /// The class whose [`crate::ClassInfo::label`] it is; `None` for a label not in the
    /// table (a newer daemon's, or no request line at all).
    pub class: Option<Class>,
    /// After the label and its space: `(pid:...) called by -> ... req details: ...`;
    /// empty when the line has no ` (pid:`.
    pub rest: &'a str,
}

/// A process of the line: `(pid:<pid>:<comm> argv:<argv>)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextProc<'a> {
    /// `None` when the digits do not parse.
    pub pid: Option<u32>,
    pub comm: &'a str,
}

/// Where the call came from, from the fields after the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextOrigin<'a> {
    Pod {
        namespace: &'a str,
        name: &'a str,
        container: Option<&'a str>,
        /// `image:`, when the line has it.
        image: Option<&'a str>,
        /// `workload~:` (a guess from the name), when the line has it (lines before the
        /// field do not: [`crate::workload::guess`] of `name` is the same guess).
        workload: Option<&'a str>,
    },
    /// A container whose pod names are unknown: its id's first 12 characters.
    Container { id: &'a str },
    Host {
        /// `None` for `host unit:-`.
        unit: Option<&'a str>,
    },
    /// `origin:unknown`, or a line without our fields (the anchor tool's).
    Unknown,
}

/// The request details split into the request and our fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextDetails<'a> {
    /// The lowercased request line and headers, each followed by `, `.
    pub request: &'a str,
    /// ` -> <status>` after the request.
    pub status: Option<u16>,
    /// ` -> reset` or ` -> closed` after the request: the connection ended without a
    /// response; ` -> dropped`: the response was seen dropped at the hop limit.
    pub connection_end: Option<&'a str>,
    pub origin: TextOrigin<'a>,
    /// `dst:`; `None` when the line has no origin fields.
    pub destination: Option<&'a str>,
    /// `net:host` (true) or `net:other` (false); `None` when the line does not say.
    pub host_network: Option<bool>,
}

impl<'a> TextLine<'a> {
    /// Splits `line` (without its newline); `None` unless it is `[<time>] [<level>] ...`.
    pub fn parse(line: &'a str) -> Option<Self> {
        let (time, rest) = line.strip_prefix('[')?.split_once("] [")?;
        let (level, rest) = rest.split_once("] ")?;
        Some(Self {
            time,
            level,
            body: TextBody::parse(rest),
        })
    }

    /// The request line, if it is one.
    pub fn call(&self) -> Option<&TextCall<'a>> {
        match &self.body {
            TextBody::Call(c) => Some(c),
            _ => None,
        }
    }
}

impl<'a> TextBody<'a> {
    /// Reads what follows `[<time>] [<level>] `.
    pub fn parse(rest: &'a str) -> Self {
        if let Some(events) = dropped_count(rest) {
            return TextBody::Dropped { events };
        }
        if rest.starts_with(label::DEGRADED) {
            return TextBody::Degraded;
        }
        if let Some(after) = rest.strip_prefix(label::STATUSES_OFF) {
            let reason = after
                .strip_prefix(" (")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or(after.trim());
            return TextBody::StatusesOff { reason };
        }
        if let Some(after) = rest.strip_prefix(label::HOP_DROP_UNMATCHED) {
            let details = after
                .strip_prefix(" (")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or(after.trim());
            return TextBody::HopDrop { details };
        }
        if let Some(after) = rest.strip_prefix(label::UNTRACED) {
            let detail = after
                .strip_prefix(" (")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or(after.trim());
            return TextBody::Untraced { detail };
        }
        if rest == label::STARTED || rest.starts_with(&[label::STARTED, " ("].concat()) {
            return TextBody::Started;
        }
        if rest == label::STOPPED || rest.starts_with(&[label::STOPPED, " ("].concat()) {
            return TextBody::Stopped;
        }
        let open = [" ", label::PID].concat();
        let (label, after) = match rest.find(&open) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let class = Class::from_label(label);
        if class.is_none() && after.is_empty() {
            return TextBody::Other(rest);
        }
        TextBody::Call(TextCall {
            label,
            class,
            rest: after,
        })
    }
}

/// `imds-snoop dropped 12 events (...)`: 12.
fn dropped_count(rest: &str) -> Option<u64> {
    rest.strip_prefix(label::DROPPED)?
        .split_once(' ')?
        .0
        .parse()
        .ok()
}

impl<'a> TextCall<'a> {
    /// The processes: everything before the last ` req details: ` (all of [`Self::rest`]
    /// when there is none).
    pub fn procs(&self) -> &'a str {
        match self.rest.rfind(label::REQ_DETAILS) {
            Some(i) => &self.rest[..i],
            None => self.rest,
        }
    }

    /// After the last ` req details: `; `None` when the line has none.
    pub fn details(&self) -> Option<&'a str> {
        self.rest
            .rfind(label::REQ_DETAILS)
            .map(|i| &self.rest[i + label::REQ_DETAILS.len()..])
    }

    /// The caller: `(pid:<pid>:<comm> argv:`; `None` without a `(pid:` or ` argv:`.
    pub fn caller(&self) -> Option<TextProc<'a>> {
        let (pid, rest) = self.rest.strip_prefix(label::PID)?.split_once(':')?;
        let (comm, _) = rest.split_once(label::ARGV)?;
        Some(TextProc {
            pid: pid.parse().ok(),
            comm,
        })
    }

    /// The caller's pid, also when the line has no ` argv:`.
    pub fn caller_pid(&self) -> Option<u32> {
        let (pid, _) = self.rest.strip_prefix(label::PID)?.split_once(':')?;
        pid.parse().ok()
    }

    /// The caller's argv: up to its ancestors (`) called by -> `), else to the last `)`
    /// before the request details. An argv may itself hold `)`.
    pub fn argv(&self) -> Option<&'a str> {
        let procs = self.procs();
        let (_, rest) = procs.split_once(label::ARGV)?;
        let ancestors = [")", label::CALLED_BY, label::ARROW].concat();
        let end = rest.find(&ancestors).or_else(|| rest.rfind(')'))?;
        Some(&rest[..end])
    }

    /// The pids of the caller and its ancestors, in line order (the caller, its parent,
    /// ... pid 1). Digits that do not parse are left out.
    pub fn chain(&self) -> Vec<u32> {
        self.procs()
            .split(label::PID)
            .skip(1)
            .filter_map(|p| p.split(':').next()?.parse().ok())
            .collect()
    }

    /// How many ancestors the line names (` -> (pid:` in the processes).
    pub fn ancestor_count(&self) -> usize {
        self.procs()
            .matches(&[label::ARROW, label::PID].concat())
            .count()
    }

    /// The request details split into the request, the status and our fields; the whole
    /// rest when the line has no ` req details: `.
    pub fn fields(&self) -> TextDetails<'a> {
        split_details(self.details().unwrap_or(self.rest))
    }
}

/// Splits `<request>[ -> <status>] <origin fields> uid:N dst:A [flags]`. The origin fields
/// start at the last origin label; without one (the anchor tool's lines) everything is the
/// request, the origin unknown and the destination `None`.
pub fn split_details(details: &str) -> TextDetails<'_> {
    let start = label::ORIGIN_STARTS
        .iter()
        .filter_map(|m| details.rfind(m))
        .max();
    let Some(start) = start else {
        let (request, status, connection_end) = split_status(details);
        return TextDetails {
            request,
            status,
            connection_end,
            origin: TextOrigin::Unknown,
            destination: None,
            host_network: None,
        };
    };
    let (request, fields) = details.split_at(start);
    let (request, status, connection_end) = split_status(request);
    let mut container_id = None;
    let mut pod = None;
    let mut container_name = None;
    let mut image = None;
    let mut workload = None;
    let mut unit = None;
    let mut host = false;
    let mut destination = None;
    let mut host_network = None;
    for token in fields.split_whitespace() {
        if let Some(v) = token.strip_prefix(label::CONTAINER) {
            container_id = Some(v);
        } else if let Some(v) = token.strip_prefix(label::POD) {
            pod = v.split_once('/');
        } else if let Some(v) = token.strip_prefix(label::CONTAINER_NAME) {
            container_name = Some(v);
        } else if let Some(v) = token.strip_prefix(label::IMAGE) {
            image = Some(v);
        } else if let Some(v) = token.strip_prefix(label::WORKLOAD) {
            workload = Some(v);
        } else if token == label::HOST {
            host = true;
        } else if let Some(v) = token.strip_prefix(label::UNIT) {
            unit = (v != label::NO_UNIT).then_some(v);
        } else if let Some(v) = token.strip_prefix(label::DST) {
            destination = Some(v);
        } else if token == label::NET_HOST {
            host_network = Some(true);
        } else if token == label::NET_OTHER {
            host_network = Some(false);
        }
    }
    let origin = match (pod, container_id) {
        (Some((namespace, name)), _) => TextOrigin::Pod {
            namespace,
            name,
            container: container_name,
            image,
            workload,
        },
        (None, Some(id)) => TextOrigin::Container { id },
        (None, None) if host => TextOrigin::Host { unit },
        (None, None) => TextOrigin::Unknown,
    };
    TextDetails {
        request,
        status,
        connection_end,
        origin,
        destination,
        host_network,
    }
}

/// `<request>, -> 401`: the request and the status (exactly three digits at the end), or
/// `<request>, -> reset` / `-> closed`: the request and how the connection ended.
fn split_status(request: &str) -> (&str, Option<u16>, Option<&str>) {
    if let Some((req, code)) = request.rsplit_once(label::ARROW) {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) {
            return (req, code.parse().ok(), None);
        }
        if code == label::RESET || code == label::CLOSED || code == label::HOP_DROPPED {
            return (req, None, Some(code));
        }
    }
    (request, None, None)
}

/// The user agent in a (lowercased) request: the `user-agent: ` header's value up to the
/// next `, `; `None` when absent or empty.
pub fn user_agent(request: &str) -> Option<&str> {
    let start = request.find(label::USER_AGENT)? + label::USER_AGENT.len();
    let value = &request[start..];
    let end = value.find(label::HEADER_SEPARATOR).unwrap_or(value.len());
    let value = value[..end].trim_end_matches(',').trim();
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

    fn fixture_lines(path: &str) -> Vec<String> {
        std::fs::read_to_string(format!("{FIXTURES}/{path}"))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn call(line: &str) -> TextCall<'_> {
        match TextLine::parse(line).map(|l| l.body) {
            Some(TextBody::Call(c)) => c,
            other => panic!("not a call: {other:?} from {line}"),
        }
    }

    /// The pieces put back together are the line: nothing is lost or made up.
    fn assert_rejoins(line: &str) {
        let l = TextLine::parse(line).unwrap();
        let body = match l.body {
            TextBody::Call(c) if c.rest.is_empty() => c.label.to_owned(),
            TextBody::Call(c) => format!("{} {}", c.label, c.rest),
            TextBody::Other(s) => s.to_owned(),
            TextBody::Dropped { .. }
            | TextBody::Degraded
            | TextBody::Started
            | TextBody::Stopped
            | TextBody::StatusesOff { .. }
            | TextBody::HopDrop { .. }
            | TextBody::Untraced { .. } => return,
        };
        assert_eq!(format!("[{}] [{}] {body}", l.time, l.level), line);
        if let TextBody::Call(c) = l.body
            && let Some(d) = c.details()
        {
            assert_eq!(format!("{}{}{d}", c.procs(), label::REQ_DETAILS), c.rest);
        }
    }

    /// Lines the daemon wrote in end-to-end runs, and from a node.
    #[test]
    fn real_daemon_lines() {
        let e2e = fixture_lines("report/e2e-daemon.log");
        for line in &e2e {
            assert_rejoins(line);
        }
        let c = call(&e2e[0]);
        assert_eq!(c.class, Some(Class::V1));
        assert_eq!(
            c.caller(),
            Some(TextProc {
                pid: Some(25906),
                comm: "wget"
            })
        );
        assert_eq!(
            c.argv(),
            Some("/bin/wget -q -O - http://169.254.169.254/latest/meta-data/instance-id")
        );
        assert_eq!(c.chain(), [25906, 25896, 25820, 1]);
        assert_eq!(c.ancestor_count(), 3);
        let f = c.fields();
        assert_eq!(
            f.origin,
            TextOrigin::Pod {
                namespace: "shop",
                name: "web-1",
                container: Some("app"),
                image: None,
                workload: None,
            }
        );
        assert_eq!(f.destination, Some("169.254.169.254:80"));
        assert_eq!(f.status, None);
        assert_eq!(user_agent(f.request), Some("wget"));

        let host = fixture_lines("report/host/imds-trace.log");
        for line in &host[..3] {
            assert_rejoins(line);
        }
        assert_eq!(host[3], "this line is not a trace line");
        assert_eq!(TextLine::parse(&host[3]), None);
        let c = call(&host[0]);
        assert_eq!(c.class, Some(Class::V2Token));
        assert_eq!(TextLine::parse(&host[0]).unwrap().level, "INFO");
        assert_eq!(c.fields().origin, TextOrigin::Host { unit: None });
        assert_eq!(
            user_agent(c.fields().request),
            Some("botocore/1.43.11 python/3.11.7 linux/6.18.44-fc-v782")
        );
    }

    /// The README's lines: the status example (cut short there: its details only) and the
    /// line from an end-to-end run with containerd.
    #[test]
    fn documented_lines() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let example = readme
            .split('`')
            .find(|s| s.starts_with("[WARNING] imdsv1(!) ... req details:"))
            .expect("the README's status example");
        let f = split_details(example.split_once(label::REQ_DETAILS).unwrap().1);
        assert_eq!(f.status, Some(401));
        assert_eq!(f.origin, TextOrigin::Host { unit: None });
        assert_eq!(f.destination, Some("169.254.169.254:80"));
        assert!(f.request.ends_with("accept: */*,"), "{}", f.request);

        let pod = readme
            .lines()
            .find(|l| l.starts_with('[') && l.contains(" pod:shop/web-7d9f8b6c5-x2k4p "))
            .expect("the README's end-to-end line");
        assert_rejoins(pod);
        let c = call(pod);
        assert_eq!(c.caller().unwrap().comm, "wget");
        // Its ancestors end at the containerd shim; the README cuts the rest to `...`.
        assert_eq!(c.chain().last(), Some(&23870));
        assert_eq!(c.fields().status, Some(200));
        assert_eq!(
            c.fields().origin,
            TextOrigin::Pod {
                namespace: "shop",
                name: "web-7d9f8b6c5-x2k4p",
                container: Some("app"),
                image: Some("docker.io/library/busybox:1.36"),
                workload: Some("web"),
            }
        );

        let anchor = "[2025-10-22 02:55:40,993] [WARNING] imdsv1(!) (pid:69745:curl argv:curl \
                      http://169.254.169.254/) called by -> (pid:1:systemd argv:/sbin/init) req \
                      details: get /latest/meta-data/ http/1.1, host: 169.254.169.254, \
                      user-agent: curl/8.14.1, accept: */*,";
        assert_rejoins(anchor);
        let c = call(anchor);
        assert_eq!(c.argv(), Some("curl http://169.254.169.254/"));
        assert_eq!(c.chain(), [69745, 1]);
        assert_eq!(c.fields().origin, TextOrigin::Unknown);
        assert_eq!(c.fields().destination, None);
    }

    #[test]
    fn daemon_status_and_hop_limit_lines() {
        let line = "[2026-11-23 10:00:00,000] [WARNING] imdsv2 token response not received (hop \
                    limit?) (pid:9:python3 argv:python3 app.py) req details: put \
                    /latest/api/token http/1.1, user-agent: Botocore/1.31.0, \
                    container:0123456789ab uid:0 dst:169.254.169.254:80";
        assert_rejoins(line);
        let c = call(line);
        assert_eq!(c.class, Some(Class::V2TokenNoResponse));
        assert_eq!(
            c.fields().origin,
            TextOrigin::Container { id: "0123456789ab" }
        );
        let answered = "[2026-11-23 10:00:00,000] [WARNING] imdsv1(!) (pid:7:capture::ipv6_e \
                        argv:x (y)) req details: get / http/1.1, accept: */*, -> 404 host \
                        unit:cron.service uid:0 dst:[fd00:ec2::254]:80 truncated";
        let c = call(answered);
        assert_eq!(c.caller().unwrap().comm, "capture::ipv6_e");
        assert_eq!(c.argv(), Some("x (y)"));
        let f = c.fields();
        assert_eq!(f.status, Some(404));
        assert_eq!(
            f.origin,
            TextOrigin::Host {
                unit: Some("cron.service")
            }
        );
        assert_eq!(f.destination, Some("[fd00:ec2::254]:80"));
    }

    /// The image and the workload guess after the container name; an image reference holds
    /// `:` and `/` (a registry port, a tag, a digest) and may spell another label inside:
    /// the reader takes each field from the start of its own token.
    #[test]
    fn image_and_workload() {
        let f = split_details(
            "get / http/1.1, -> 200 container:0123456789ab pod:shop/web-7d9f8b6c5-x2k4p \
             container-name:app image:registry.example.com:5000/team/pod:uid-1@sha256:\
             0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef workload~:web \
             container-pid:7 net:other uid:0 dst:169.254.169.254:80",
        );
        assert_eq!(
            f.origin,
            TextOrigin::Pod {
                namespace: "shop",
                name: "web-7d9f8b6c5-x2k4p",
                container: Some("app"),
                image: Some(
                    "registry.example.com:5000/team/pod:uid-1@sha256:\
                     0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                ),
                workload: Some("web"),
            }
        );
        assert_eq!(f.destination, Some("169.254.169.254:80"));
        assert_eq!(f.host_network, Some(false));
    }

    #[test]
    fn loss_lines_and_others() {
        let dropped = "[2026-11-23 09:29:00,488] [WARNING] imds-snoop dropped 12 events (totals: \
                       ring buffer full 12, no scratch 0, writer queue full 0, log write failed \
                       0); raise --ring-bytes if the ring buffer fills";
        assert_eq!(
            TextLine::parse(dropped).unwrap().body,
            TextBody::Dropped { events: 12 }
        );
        let lost = "[2026-11-23 09:29:00,488] [WARNING] imds-snoop lost 3 kernel events that \
                    are not calls (totals: process events 2, responses 1); ...";
        assert_eq!(TextLine::parse(lost).unwrap().body, TextBody::Degraded);
        let body = |l: &'static str| TextLine::parse(l).unwrap().body;
        assert_eq!(
            body("[t] [INFO] imds-snoop started (version 0.1.0, pid 7, attached fentry)"),
            TextBody::Started
        );
        assert_eq!(body("[t] [INFO] imds-snoop stopped"), TextBody::Stopped);
        assert_eq!(
            body(
                "[t] [WARNING] imds-snoop statuses not traced from now (this process lacks \
                 CAP_NET_ADMIN (CapEff 0))"
            ),
            TextBody::StatusesOff {
                reason: "this process lacks CAP_NET_ADMIN (CapEff 0)"
            }
        );
        assert_eq!(
            body(
                "[t] [WARNING] imds-snoop IMDS answered a call it did not see traced (-> 200 \
                 to 10.0.0.5:41234 from 169.254.169.254:80; receiving process unknown)"
            ),
            TextBody::Untraced {
                detail: "-> 200 to 10.0.0.5:41234 from 169.254.169.254:80; receiving process \
                         unknown"
            }
        );
        assert_eq!(
            body("[t] [INFO] imds-snoop startedx"),
            TextBody::Other("imds-snoop startedx")
        );
        let f = split_details(
            "get / http/1.1, -> 200 container:0123456789ab pod:a/b container-pid:7 net:other \
             uid:0 dst:169.254.169.254:80",
        );
        assert_eq!((f.status, f.host_network), (Some(200), Some(false)));
        let f = split_details("get / http/1.1, host unit:- net:host uid:0 dst:x");
        assert_eq!(f.host_network, Some(true));
        let f = split_details("put /latest/api/token http/1.1, -> reset host unit:- uid:0 dst:x");
        assert_eq!((f.status, f.connection_end), (None, Some("reset")));
        assert_eq!(f.request, "put /latest/api/token http/1.1,");
        assert_eq!(
            TextLine::parse("[t] [INFO] something else").unwrap().body,
            TextBody::Other("something else")
        );
        // A label not in the table, with a caller: a call of no known class.
        let c = call("[t] [INFO] imdsv3 (pid:1:x argv:y)");
        assert_eq!((c.label, c.class), ("imdsv3", None));
        assert_eq!(c.caller().unwrap().comm, "x");
        for line in ["", "hello", "[t]", "[t] [INFO]", "{\"schema\":1}"] {
            assert_eq!(TextLine::parse(line), None, "{line}");
        }
        // A label alone: a call without processes.
        let c = call("[t] [INFO] imdsv2");
        assert_eq!((c.rest, c.caller(), c.details()), ("", None, None));
    }
}
