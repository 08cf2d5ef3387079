//! Calls to unique callers, per node, and each node's verdict.

use std::collections::{BTreeMap, HashMap};

use chrono::{NaiveDateTime, TimeDelta};
use serde::Serialize;

use super::{
    parse::{Call, DaemonEvent, Kind, Line, Origin, Read},
    sdk::{Sdk, SdkTable},
    words::plural,
};

/// Name of the node text lines come from when `--node` does not name it.
pub(super) const DEFAULT_NODE: &str = "this node";

/// The IMDS endpoints. Calls to other `--target` destinations (EKS Pod Identity's agent,
/// a test address) are not IMDS calls and do not count against a verdict.
const IMDS_DESTINATIONS: [&str; 2] = ["169.254.169.254:80", "[fd00:ec2::254]:80"];

/// One caller: where, which process, which client.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct CallerKey {
    pub node: String,
    pub origin: Origin,
    pub process: String,
    pub user_agent: Option<String>,
    /// The same process in the node's network namespace and in another is two callers
    /// (a hostNetwork pod and a pod, a host process and one in a private namespace).
    pub host_network: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub v1: u64,
    pub v2: u64,
    pub token: u64,
    pub token_failures: u64,
    /// Token PUTs whose response was seen dropped at the hop limit (the drop hook).
    pub token_dropped: u64,
    pub malformed: u64,
    /// IMDSv1 calls made by a process shortly after its own token PUT: the SDK fell back,
    /// typically because the PUT's response was lost (hop limit) or refused.
    pub fallbacks: u64,
    /// IMDSv1 calls answered 401: IMDSv2 is already required where they went, and this
    /// caller is failing.
    pub v1_refused: u64,
    /// Token PUTs answered with an error status (`403`: X-Forwarded-For, a proxy such as
    /// kube2iam; `503`: throttled; `400`: a bad TTL header), by status: not the hop limit.
    pub token_refused: BTreeMap<u16, u64>,
    /// Lines that said the socket was in the node's network namespace (`net:host`), and in
    /// another one (`net:other`).
    pub host_network: u64,
    pub other_network: u64,
    /// Token PUTs whose connection was `reset` or `closed` before a response, by how: not
    /// the hop limit (a proxy, a firewall, an agent in IMDS's place).
    pub token_ended: BTreeMap<String, u64>,
    /// Why the token PUT before a fallback failed (`no response`, `403`, ...), each once.
    pub fallback_after: std::collections::BTreeSet<String>,
    /// The pods (names) whose calls the row counts: one per row with `--per-pod`, all the
    /// workload's pods otherwise (a CronJob's runs).
    pub pods: std::collections::BTreeSet<String>,
    pub first_seen: Option<NaiveDateTime>,
    pub last_seen: Option<NaiveDateTime>,
}

impl Counts {
    fn add(&mut self, kind: Kind, time: Option<NaiveDateTime>) {
        *match kind {
            Kind::V1 => &mut self.v1,
            Kind::V2 => &mut self.v2,
            Kind::V2Token => &mut self.token,
            Kind::TokenFailure => &mut self.token_failures,
            Kind::TokenDropped => &mut self.token_dropped,
            Kind::Malformed => &mut self.malformed,
        } += 1;
        if let Some(t) = time {
            self.first_seen = Some(self.first_seen.map_or(t, |f| f.min(t)));
            self.last_seen = Some(self.last_seen.map_or(t, |l| l.max(t)));
        }
    }

    pub(super) fn calls(&self) -> u64 {
        self.v1 + self.v2 + self.token + self.malformed
    }
}

/// A row of the report.
#[derive(Clone, Debug)]
pub(super) struct Caller {
    pub key: CallerKey,
    pub counts: Counts,
    pub sdk: Option<Sdk>,
}

impl Caller {
    /// Remarks for the NOTE column.
    pub(super) fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(s) = self.sdk.as_ref().and_then(|s| s.imdsv2.as_ref())
            && s.below_minimum
        {
            notes.push(format!(
                "SDK too old for IMDSv2 (needs >= {})",
                s.min_version
            ));
        }
        if self.counts.v1_refused > 0 {
            notes.push(format!(
                "{} v1 calls refused (401): failing where IMDSv2 is required",
                self.counts.v1_refused
            ));
        }
        if self.counts.token_dropped > 0 {
            notes.push(format!(
                "{} seen dropped at the hop limit (evidence: drop seen)",
                plural(self.counts.token_dropped, "token response")
            ));
        }
        if self.counts.token_failures > 0 {
            notes.push(if self.in_host_network() {
                "token response not received, in the node's network namespace: not the hop \
                 limit (a firewall, IMDS down?)"
                    .into()
            } else {
                "token response not received (hop limit?; evidence: silence, no drop seen)".into()
            });
        }
        for (status, n) in &self.counts.token_refused {
            notes.push(format!(
                "{} refused {status}{}: not the hop limit",
                plural(*n, "token PUT"),
                match status {
                    403 => " (X-Forwarded-For: a proxy such as kube2iam?)",
                    503 => " (throttled)",
                    400 => " (bad TTL header)",
                    _ => "",
                }
            ));
        }
        for (end, n) in &self.counts.token_ended {
            notes.push(format!(
                "{} {end} without a response: not the hop limit (a proxy or firewall in \
                 IMDS's place?)",
                plural(*n, "token PUT")
            ));
        }
        if self.counts.fallbacks > 0 {
            let why: Vec<&str> = self
                .counts
                .fallback_after
                .iter()
                .map(String::as_str)
                .collect();
            notes.push(if why.is_empty() {
                "v1 right after its own token PUT: SDK fallback to IMDSv1 (hop limit?)".into()
            } else {
                format!(
                    "v1 right after its own token PUT failed ({}): SDK fallback to IMDSv1",
                    why.join(", ")
                )
            });
        }
        notes
    }

    /// Every line that said so had the socket in the node's network namespace.
    pub(super) fn in_host_network(&self) -> bool {
        self.counts.host_network > 0 && self.counts.other_network == 0
    }

    /// Behind a routing hop: lines said `net:other`, or, where lines do not say (older
    /// daemons), a pod's or container's call.
    pub(super) fn in_other_network(&self) -> bool {
        self.counts.other_network > 0
            || (self.counts.host_network == 0
                && matches!(
                    self.key.origin,
                    Origin::Pod { .. } | Origin::Workload { .. } | Origin::Container { .. }
                ))
    }

    /// Makes token PUTs or IMDSv2 calls: needs a token, which hop limit 1 takes away
    /// one hop off.
    pub(super) fn needs_token(&self) -> bool {
        self.counts.token > 0
            || self.counts.v2 > 0
            || self.counts.token_failures > 0
            || self.counts.token_dropped > 0
    }

    /// `wget in shop/web~ (app, 3 pods)` (a workload: its guessed name), `wget in pod
    /// shop/web-1 (app)` (`--per-pod`), `python3 [botocore 1.43.11] on host`.
    pub(super) fn describe(&self) -> String {
        let mut s = self.key.process.clone();
        if let Some(sdk) = &self.sdk
            && !sdk.name.eq_ignore_ascii_case(&self.key.process)
        {
            s.push_str(&format!(" [{}]", sdk.label()));
        }
        match &self.key.origin {
            Origin::Pod {
                namespace,
                name,
                container,
                ..
            } => {
                s.push_str(&format!(" in pod {namespace}/{name}"));
                if let Some(c) = container {
                    s.push_str(&format!(" ({c})"));
                }
            }
            Origin::Workload {
                namespace,
                workload,
                container,
                ..
            } => {
                let pods = plural(self.counts.pods.len() as u64, "pod");
                s.push_str(&format!(" in {namespace}/{workload}~ ("));
                if let Some(c) = container {
                    s.push_str(&format!("{c}, "));
                }
                s.push_str(&format!("{pods})"));
            }
            Origin::Container { id } => s.push_str(&format!(" in container {id}")),
            Origin::Host { unit: Some(u) } => s.push_str(&format!(" on host ({u})")),
            Origin::Host { unit: None } => s.push_str(" on host"),
            Origin::Unknown => {}
        }
        s
    }
}

/// What the input held, per node.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct NodeStats {
    /// Calls to IMDS counted in the report.
    pub calls: u64,
    /// Events the kernel dropped (the log says so): calls the report cannot see.
    pub dropped_events: u64,
    /// Connections on which IMDS answered a call no line shows (the log says so).
    pub untraced_responses: u64,
    /// Calls to other `--target` destinations, not counted.
    pub other_destinations: u64,
    #[serde(flatten)]
    pub evidence: Evidence,
}

/// What the node's lines say about how complete they are.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct Evidence {
    /// The earliest and latest time of the node's lines (node-local wall clock): the window
    /// the verdict covers.
    #[serde(skip)]
    pub first_line: Option<NaiveDateTime>,
    #[serde(skip)]
    pub last_line: Option<NaiveDateTime>,
    /// Lines of this node's stream that are neither trace lines nor the daemon's own output.
    pub lines_not_understood: u64,
    /// Response statuses the kernel lost (the largest total a `degraded` line reported).
    pub responses_lost: u64,
    /// From when, and why, response statuses were not traced.
    #[serde(skip)]
    pub statuses_not_traced: Vec<(Option<NaiveDateTime>, String)>,
    /// Replies seen dropped at the hop limit that matched no traced request (what the line
    /// said of each): someone behind a routing hop was cut off.
    pub hop_drops_unmatched: Vec<String>,
    /// Times the daemon started without a clean stop before it (killed, crashed): calls in
    /// between were not traced.
    #[serde(skip)]
    pub gaps: Vec<Option<NaiveDateTime>>,
}

impl Evidence {
    fn saw(&mut self, time: Option<NaiveDateTime>) {
        if let Some(t) = time {
            self.first_line = Some(self.first_line.map_or(t, |f| f.min(t)));
            self.last_line = Some(self.last_line.map_or(t, |l| l.max(t)));
        }
    }

    fn merge(&mut self, other: Evidence) {
        self.saw(other.first_line);
        self.saw(other.last_line);
        self.lines_not_understood += other.lines_not_understood;
        self.responses_lost = self.responses_lost.max(other.responses_lost);
        self.statuses_not_traced.extend(other.statuses_not_traced);
        self.hop_drops_unmatched.extend(other.hop_drops_unmatched);
        self.gaps.extend(other.gaps);
    }

    /// The observed window, when the lines carry times.
    pub(super) fn window(&self) -> Option<TimeDelta> {
        Some(self.last_line? - self.first_line?)
    }
}

/// Everything a report shows.
#[derive(Debug, Default)]
pub(super) struct Report {
    /// Sorted: most v1 calls first.
    pub callers: Vec<Caller>,
    pub nodes: BTreeMap<String, NodeStats>,
    pub lines: u64,
    pub not_understood: u64,
    /// `--min-window`: a shorter window is not evidence enough for SAFE.
    pub min_window: TimeDelta,
}

/// One stream of input: the lines of one `kubectl logs --prefix` pod, or all lines without
/// a prefix. Facts of lines that do not name their node (the daemon's stderr, text lines'
/// loss reports, unreadable lines) are gathered here and handed to the stream's node at the
/// end, once it is known.
#[derive(Debug, Default)]
struct Stream {
    /// The nodes it holds lines of.
    nodes: std::collections::BTreeSet<String>,
    /// A trace line was read before (so a start is not at the head of the log: the
    /// daemon's own start-up output before its first `attached` is).
    traced: bool,
    /// The last start/stop said: `Some(true)` running, `Some(false)` stopped cleanly.
    running: Option<bool>,
    evidence: Evidence,
}

/// A v1 call this soon after the same process's token PUT is taken as its fallback (SDKs
/// wait 1 to 5 s for the token).
const FALLBACK_WINDOW: TimeDelta = TimeDelta::seconds(10);

/// Collects lines; `node` names text lines and, when given, keeps only that node's JSON
/// lines.
pub(super) struct Aggregator<'a> {
    node: Option<&'a str>,
    /// `--per-pod`: a row per pod, not per workload.
    per_pod: bool,
    table: &'a SdkTable,
    callers: BTreeMap<CallerKey, Counts>,
    /// Last token PUT per (node, pid) not yet followed by a v1 call, and why it failed.
    token_puts: HashMap<(String, u32), (NaiveDateTime, Option<String>)>,
    /// Last v1 call per (node, pid) that followed no token PUT (yet: a token PUT left
    /// unanswered is written after its wait), and its caller.
    v1_calls: HashMap<(String, u32), (NaiveDateTime, CallerKey)>,
    /// By `kubectl logs --prefix` pod (`None`: lines without a prefix), and by the node a
    /// marker names (`None`: lines that name none: the daemon's stderr, text lines).
    streams: BTreeMap<(Option<String>, Option<String>), Stream>,
    report: Report,
}

impl<'a> Aggregator<'a> {
    pub(super) fn new(node: Option<&'a str>, table: &'a SdkTable) -> Self {
        Aggregator {
            node,
            per_pod: false,
            table,
            callers: BTreeMap::new(),
            token_puts: HashMap::new(),
            v1_calls: HashMap::new(),
            streams: BTreeMap::new(),
            report: Report::default(),
        }
    }

    /// `--per-pod`: one row per pod instead of one per workload, container and image.
    pub(super) fn per_pod(mut self, per_pod: bool) -> Self {
        self.per_pod = per_pod;
        self
    }

    /// `--min-window`.
    pub(super) fn min_window(mut self, min: TimeDelta) -> Self {
        self.report.min_window = min;
        self
    }

    /// The node of a line that does not name one, in `stream`: `--node`, else the pod of
    /// `kubectl logs --prefix`, else [`DEFAULT_NODE`].
    fn text_node(&self, stream: Option<&str>) -> String {
        match (self.node, stream) {
            (Some(n), _) => n.to_string(),
            (None, Some(pod)) => format!("pod/{pod}"),
            (None, None) => DEFAULT_NODE.to_string(),
        }
    }

    pub(super) fn add(&mut self, read: Read) {
        self.report.lines += 1;
        let Read { stream, line } = read;
        let Some(line) = line else {
            self.report.not_understood += 1;
            let lane = self.streams.entry((stream, None)).or_default();
            lane.evidence.lines_not_understood += 1;
            return;
        };
        let line_node = match &line {
            Line::Call(c) => c.node.as_deref(),
            Line::Dropped { node, .. }
            | Line::Degraded { node, .. }
            | Line::Untraced { node, .. } => node.as_deref(),
            Line::Blank => return,
            Line::Daemon { node, time, event } => {
                if let (Some(n), Some(want)) = (node, self.node)
                    && n != want
                {
                    return;
                }
                // Markers of JSON lines name their node: their own lane. The daemon's
                // stderr and text markers: the stream's.
                let lane = self.streams.entry((stream, node.clone())).or_default();
                lane.nodes.extend(node.clone());
                lane.evidence.saw(*time);
                match event {
                    DaemonEvent::Start => {
                        // A start after lines of a daemon that never said it stopped: it
                        // was killed (or crashed), and nothing was traced in between. At the
                        // head of the log (a rotated one) there is nothing to miss.
                        let gap = match lane.running {
                            Some(running) => running,
                            None => lane.traced,
                        };
                        if gap {
                            lane.evidence.gaps.push(*time);
                        }
                        lane.running = Some(true);
                    }
                    DaemonEvent::Stop => lane.running = Some(false),
                    DaemonEvent::StatusesOff(why) => {
                        lane.evidence.statuses_not_traced.push((*time, why.clone()));
                    }
                    DaemonEvent::HopDrop(what) => {
                        lane.evidence.hop_drops_unmatched.push(what.clone());
                    }
                    DaemonEvent::Other => {}
                }
                return;
            }
        };
        let node = match (line_node, self.node) {
            (Some(n), Some(want)) if n != want => return,
            (Some(n), _) => n.to_string(),
            (None, _) => self.text_node(stream.as_deref()),
        };
        // A trace line: a later start is not at the head of the log. The stream's facts
        // belong to every node it holds lines of.
        let lane = self.streams.entry((stream.clone(), None)).or_default();
        lane.traced = true;
        lane.nodes.insert(node.clone());
        if line_node.is_some() {
            let lane = self
                .streams
                .entry((stream, Some(node.clone())))
                .or_default();
            lane.traced = true;
            lane.nodes.insert(node.clone());
        }
        let stats = self.report.nodes.entry(node.clone()).or_default();
        match line {
            Line::Blank | Line::Daemon { .. } => {}
            Line::Dropped { events, time, .. } => {
                stats.dropped_events += events;
                stats.evidence.saw(time);
            }
            Line::Untraced { time, .. } => {
                stats.untraced_responses += 1;
                stats.evidence.saw(time);
            }
            Line::Degraded {
                responses, time, ..
            } => {
                stats.evidence.responses_lost = stats.evidence.responses_lost.max(responses);
                stats.evidence.saw(time);
            }
            Line::Call(call) if !is_imds(&call) => {
                stats.evidence.saw(call.time);
                stats.other_destinations += 1;
            }
            Line::Call(call) => {
                stats.evidence.saw(call.time);
                if !matches!(call.kind, Kind::TokenFailure | Kind::TokenDropped) {
                    stats.calls += 1;
                }
                let fallback = self.fallback(&node, &call);
                let key = self.caller_key(&node, &call);
                let counts = self.callers.entry(key).or_default();
                counts.add(call.kind, call.time);
                if let Origin::Pod { name, .. } = &call.origin
                    && !counts.pods.contains(name)
                {
                    counts.pods.insert(name.clone());
                }
                if let Some(why) = fallback {
                    counts.fallbacks += 1;
                    counts.fallback_after.extend(why);
                }
                counts.v1_refused += u64::from(call.kind == Kind::V1 && call.status == Some(401));
                if call.kind == Kind::V2Token
                    && let Some(s) = call.status
                    && s >= 400
                {
                    *counts.token_refused.entry(s).or_default() += 1;
                }
                if call.kind == Kind::V2Token
                    && let Some(end) = &call.connection_end
                {
                    *counts.token_ended.entry(end.clone()).or_default() += 1;
                }
                match call.host_network {
                    Some(true) => counts.host_network += 1,
                    Some(false) => counts.other_network += 1,
                    None => {}
                }
            }
        }
    }

    /// Remembers token PUTs and v1 calls; says whether this v1 call follows a token PUT of
    /// the same process (its SDK fell back to IMDSv1), and why that PUT failed when the log
    /// says. A token PUT left unanswered is written after its wait (`--response-timeout`),
    /// so its line may come after the fallback's: then the fallback is marked here, on the
    /// v1 caller remembered.
    fn fallback(&mut self, node: &str, call: &Call) -> Option<Option<String>> {
        let (Some(pid), Some(time)) = (call.pid, call.time) else {
            return None;
        };
        let key = (node.to_string(), pid);
        let failed = match (call.kind, call.status, &call.connection_end) {
            (Kind::TokenFailure, ..) => Some("no response".to_string()),
            (Kind::TokenDropped, ..) => Some("dropped at the hop limit".to_string()),
            (Kind::V2Token, Some(s), _) if s >= 400 => Some(format!("refused {s}")),
            (Kind::V2Token, _, Some(end)) => Some(end.clone()),
            _ => None,
        };
        match call.kind {
            Kind::V2Token | Kind::TokenFailure | Kind::TokenDropped => {
                if let Some(why) = &failed
                    && let Some((v1, caller)) = self.v1_calls.remove(&key)
                    && time <= v1
                    && v1 - time <= FALLBACK_WINDOW
                    && let Some(counts) = self.callers.get_mut(&caller)
                {
                    counts.fallbacks += 1;
                    counts.fallback_after.insert(why.clone());
                    return None;
                }
                self.token_puts.insert(key, (time, failed));
                None
            }
            Kind::V1 => match self.token_puts.remove(&key) {
                Some((put, why)) if put <= time && time - put <= FALLBACK_WINDOW => Some(why),
                _ => {
                    self.v1_calls
                        .insert(key, (time, self.caller_key(node, call)));
                    None
                }
            },
            _ => None,
        }
    }

    /// The row a call counts in: its pod's workload, container and image (the pods of a
    /// Deployment across rollouts, or a CronJob's runs, are one thing to fix), or with
    /// `--per-pod` its pod.
    fn caller_key(&self, node: &str, call: &Call) -> CallerKey {
        let origin = match &call.origin {
            Origin::Pod {
                namespace,
                container,
                image,
                workload,
                ..
            } if !self.per_pod => Origin::Workload {
                namespace: namespace.clone(),
                workload: workload.clone(),
                container: container.clone(),
                image: image.clone(),
            },
            o => o.clone(),
        };
        CallerKey {
            node: node.to_string(),
            origin,
            process: call.comm.clone(),
            user_agent: call.user_agent.clone(),
            host_network: call.host_network,
        }
    }

    pub(super) fn finish(mut self) -> Report {
        // Each stream's facts go to its node: the one its lines are counted under (named by
        // its JSON lines; for text lines `--node`, the pod of `kubectl logs --prefix`, or
        // this node). A stream of several nodes' lines (files of several nodes, a shipper's
        // export) gives them to each: an unreadable line there could be any one's.
        for ((stream, _), st) in std::mem::take(&mut self.streams) {
            let nodes: Vec<String> = if st.nodes.is_empty() {
                vec![self.text_node(stream.as_deref())]
            } else {
                st.nodes.into_iter().collect()
            };
            for node in nodes {
                if self.node.is_some_and(|want| want != node) {
                    continue;
                }
                let has_facts = st.evidence.lines_not_understood > 0
                    || !st.evidence.statuses_not_traced.is_empty()
                    || !st.evidence.gaps.is_empty()
                    || st.evidence.first_line.is_some();
                if has_facts || self.report.nodes.contains_key(&node) {
                    let stats = self.report.nodes.entry(node).or_default();
                    stats.evidence.merge(st.evidence.clone());
                }
            }
        }
        if let Some(want) = self.node {
            self.report.nodes.entry(want.to_string()).or_default();
        } else if self.report.nodes.is_empty() {
            self.report
                .nodes
                .entry(DEFAULT_NODE.to_string())
                .or_default();
        }
        let table = self.table;
        let mut callers: Vec<Caller> = self
            .callers
            .into_iter()
            .map(|(key, counts)| Caller {
                sdk: key.user_agent.as_deref().and_then(|ua| table.identify(ua)),
                key,
                counts,
            })
            .collect();
        callers.sort_by(|a, b| {
            (b.counts.v1, b.counts.token_failures, b.counts.calls())
                .cmp(&(a.counts.v1, a.counts.token_failures, a.counts.calls()))
                .then_with(|| a.key.cmp(&b.key))
        });
        self.report.callers = callers;
        self.report
    }
}

fn is_imds(call: &Call) -> bool {
    call.destination
        .as_deref()
        .is_none_or(|d| IMDS_DESTINATIONS.contains(&d))
}

/// Tests' shortcut: the report of `lines` (as `imds-snoop report --min-window 0` would read
/// them).
#[cfg(test)]
pub(crate) fn report_of(node: Option<&str>, lines: &[&str]) -> Report {
    let table = SdkTable::builtin().unwrap();
    let mut agg = Aggregator::new(node, &table);
    for l in lines {
        agg.add(crate::report::parse::read_line(l));
    }
    agg.finish()
}

#[cfg(test)]
mod tests {
    use super::report_of as report;

    #[test]
    fn node_filter_keeps_one_nodes_json_lines() {
        let a = r#"{"schema":1,"node":"a","class":"v1","caller":{"comm":"curl"}}"#;
        let b = r#"{"schema":1,"node":"b","class":"v1","caller":{"comm":"curl"}}"#;
        let r = report(Some("a"), &[a, b, b]);
        assert_eq!(r.nodes.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(r.callers.len(), 1);
        let r = report(None, &[a, b, b]);
        assert_eq!(r.nodes.len(), 2);
        assert_eq!(r.callers[0].key.node, "b");
    }

    /// A CronJob's runs (a new pod name each) are one row, with its pod count and image;
    /// `--per-pod` gives a row per pod.
    #[test]
    fn rows_are_workloads_by_default() {
        let line = |minutes: u32, image: &str| {
            format!(
                "[2026-11-23 09:00:00,000] [WARNING] imdsv1(!) (pid:4:curl argv:curl) req \
                 details: get / http/1.1, user-agent: curl/8.1, container:0123456789ab \
                 pod:ops/backup-{minutes}-x2k4p container-name:job{image} net:other uid:0 \
                 dst:169.254.169.254:80"
            )
        };
        let mut lines: Vec<String> = (0..30)
            .map(|i| line(29_412_345 + i * 60, " image:registry.k8s.io/ops/backup:v2"))
            .collect();
        // A line of an older daemon: no image, no workload field (the same guess is made).
        lines.push(line(29_412_100, ""));
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let r = report(None, &lines);
        assert_eq!(r.callers.len(), 2, "{:?}", r.callers);
        let c = &r.callers[0];
        assert_eq!((c.counts.v1, c.counts.pods.len()), (30, 30));
        assert_eq!(c.describe(), "curl in ops/backup~ (job, 30 pods)");
        assert!(
            matches!(&c.key.origin, super::Origin::Workload { image: Some(i), .. } if i == "registry.k8s.io/ops/backup:v2")
        );
        assert_eq!(r.callers[1].describe(), "curl in ops/backup~ (job, 1 pod)");
        let table = crate::report::sdk::SdkTable::builtin().unwrap();
        let mut agg = super::Aggregator::new(None, &table).per_pod(true);
        for l in &lines {
            agg.add(crate::report::parse::read_line(l));
        }
        let r = agg.finish();
        assert_eq!(r.callers.len(), 31);
        assert_eq!(
            r.callers[0].describe(),
            "curl in pod ops/backup-29412100-x2k4p (job)"
        );
    }

    #[test]
    fn v1_right_after_own_token_put_is_a_fallback() {
        let line = |t: &str, pid: u32, label: &str| {
            format!(
                "[2026-11-23 09:00:{t}] [INFO] {label} (pid:{pid}:python3 argv:x) req details: \
                 get / http/1.1, user-agent: botocore/1.31.0, container:0123456789ab pod:a/b \
                 uid:0 dst:169.254.169.254:80"
            )
        };
        let lines = [
            line("00,000", 10, "imdsv2(token)"),
            line("01,000", 10, "imdsv1(!)"), // fallback
            line("02,000", 10, "imdsv1(!)"), // one per PUT
            line("03,000", 11, "imdsv2(token)"),
            line("04,000", 12, "imdsv1(!)"), // another process
            line("05,000", 13, "imdsv2(token)"),
            line("30,000", 13, "imdsv1(!)"), // too late
        ];
        let r = report(None, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(r.callers[0].counts.v1, 4);
        assert_eq!(r.callers[0].counts.fallbacks, 1);
        assert_eq!(
            r.callers[0].notes(),
            ["v1 right after its own token PUT: SDK fallback to IMDSv1 (hop limit?)"]
        );
    }

    /// The SDK's fallback after a failed token PUT, with why it failed: no response (its
    /// line comes after the fallback's, written once its wait was over), or an error status.
    #[test]
    fn fallback_names_why_the_token_put_failed() {
        let line = |t: &str, pid: u32, label: &str, status: &str| {
            format!(
                "[2026-11-23 09:00:{t}] [INFO] {label} (pid:{pid}:python3 argv:x) req details: \
                 put / http/1.1, user-agent: botocore/1.31.0,{status} container:0123456789ab \
                 pod:a/b net:other uid:0 dst:169.254.169.254:80"
            )
        };
        let lost = "imdsv2 token response not received (hop limit?)";
        let lines = [
            // pid 10: the v1 call is written before its PUT's hop-limit warning.
            line("01,100", 10, "imdsv1(!)", " -> 200"),
            line("00,000", 10, lost, ""),
            // pid 11: the PUT refused 403 (X-Forwarded-For), then v1.
            line("03,000", 11, "imdsv2(token)", " -> 403"),
            line("03,500", 11, "imdsv1(!)", " -> 200"),
            // pid 12: the PUT's connection reset, then v1.
            line("05,000", 12, "imdsv2(token)", " -> reset"),
            line("05,500", 12, "imdsv1(!)", " -> 200"),
        ];
        let r = report(None, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let c = &r.callers[0];
        assert_eq!((c.counts.fallbacks, c.counts.v1), (3, 3));
        assert_eq!(
            c.notes(),
            [
                "token response not received (hop limit?; evidence: silence, no drop seen)",
                "1 token PUT refused 403 (X-Forwarded-For: a proxy such as kube2iam?): not the \
                 hop limit",
                "1 token PUT reset without a response: not the hop limit (a proxy or firewall \
                 in IMDS's place?)",
                "v1 right after its own token PUT failed (no response, refused 403, reset): SDK \
                 fallback to IMDSv1"
            ]
        );
    }

    #[test]
    fn v1_calls_answered_401_are_counted() {
        let line = |status: &str| {
            format!(
                "[2026-11-23 09:00:00,000] [WARNING] imdsv1(!) (pid:4:curl argv:curl) req \
                 details: get / http/1.1, user-agent: curl/8.1, accept: */*,{status} host \
                 unit:- uid:0 dst:169.254.169.254:80"
            )
        };
        let lines = [line(" -> 401"), line(" -> 200"), line(""), line(" -> 401")];
        let r = report(None, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            (r.callers[0].counts.v1, r.callers[0].counts.v1_refused),
            (4, 2)
        );
        assert_eq!(
            r.callers[0].notes(),
            ["2 v1 calls refused (401): failing where IMDSv2 is required"]
        );
    }

    #[test]
    fn notes_old_sdk_and_fallback() {
        let old = "[2026-11-23 09:33:18,000] [WARNING] imdsv1(!) (pid:3:python3 argv:x) req \
            details: get / http/1.1, user-agent: botocore/1.12.0 python/2.7, host unit:- uid:0 \
            dst:169.254.169.254:80";
        let r = report(None, &[old]);
        assert_eq!(
            r.callers[0].notes(),
            ["SDK too old for IMDSv2 (needs >= 1.13.25)"]
        );
        assert_eq!(r.callers[0].counts.fallbacks, 0);
        assert_eq!(r.callers[0].describe(), "python3 [botocore 1.12.0] on host");
    }
}
