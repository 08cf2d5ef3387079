//! The answer per node: can it require IMDSv2, and can it use a PUT response hop limit of 1.

use std::collections::BTreeSet;

use chrono::{NaiveDateTime, TimeDelta};
use serde::Serialize;

use super::{
    aggregate::{Caller, NodeStats, Report},
    parse::Origin,
    words::plural,
};

/// The answer for one node: can it require IMDSv2, and can it use hop limit 1; and what
/// the answer rests on.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Verdict {
    pub node: String,
    /// `SAFE`, `NOT SAFE` or `INCONCLUSIVE`: may `http_tokens=required` be enforced.
    pub verdict: &'static str,
    /// No IMDSv1 calls, and evidence enough (no reason below): `http_tokens=required`
    /// breaks nobody.
    pub imdsv2_required_safe: bool,
    /// Callers that used IMDSv1, as [`Caller::describe`] says them.
    pub v1_callers: Vec<String>,
    /// `SAFE`, `NOT SAFE` or `INCONCLUSIVE`: may the PUT response hop limit be 1.
    pub hop_limit_1: &'static str,
    /// No caller would be cut off, and evidence enough: a PUT response hop limit of 1 cuts
    /// nobody off.
    pub hop_limit_1_safe: bool,
    /// Workloads (`namespace/<guessed name>~ (N pods)`; pods, `namespace/name`, with
    /// `--per-pod`), pod-less containers and host processes in their own network namespace
    /// that hop limit 1 cuts off.
    pub hop_limit_1_cut_off: Vec<String>,
    /// Why the evidence is not enough for SAFE (empty when it is).
    pub inconclusive: Vec<String>,
    /// Why the evidence is not enough for a hop-limit answer, besides those.
    pub hop_limit_1_inconclusive: Vec<String>,
    /// The window the node's lines cover: `2026-11-23 09:00:00 .. 2026-11-24 09:00:00 (24h 0m)`.
    pub window: String,
    #[serde(flatten)]
    pub stats: NodeStats,
}

/// One verdict per node of the report.
pub(super) fn all(report: &Report) -> Vec<Verdict> {
    report
        .nodes
        .keys()
        .map(|n| Verdict::for_node(report, n))
        .collect()
}

/// How many callers a verdict line names before "and N more".
const LIST_MAX: usize = 10;

const SAFE: &str = "SAFE";
const NOT_SAFE: &str = "NOT SAFE";
const INCONCLUSIVE: &str = "INCONCLUSIVE";

impl Verdict {
    pub(super) fn for_node(report: &Report, node: &str) -> Verdict {
        let stats = report.nodes.get(node).cloned().unwrap_or_default();
        let callers = callers_of(report, node);
        let v1_callers: Vec<String> = callers
            .clone()
            .filter(|c| c.counts.v1 > 0)
            .map(Caller::describe)
            .collect();
        // Hop limit 1 cuts off exactly the callers one routing hop away (another network
        // namespace) that need a token, and whoever's token response was seen lost outside
        // the node's namespace. Callers in the node's namespace (host processes, hostNetwork
        // pods) are never listed for calling, and v1-only callers are the IMDSv1 list's.
        // Each entry whose token response was lost says what that rests on: `[drop seen]`
        // (the drop hook) or `[silence]` (no response, and no drop seen: the drop hook is
        // unavailable, or an eBPF datapath forwards without `ip_forward`).
        let mut cut_off: BTreeSet<String> = callers
            .filter(|c| {
                (c.in_other_network() && c.needs_token())
                    || (c.counts.token_failures > 0 && !c.in_host_network())
                    || c.counts.token_dropped > 0
            })
            .map(|c| {
                let who = match &c.key.origin {
                    Origin::Pod {
                        namespace, name, ..
                    } => format!("{namespace}/{name}"),
                    Origin::Workload {
                        namespace,
                        workload,
                        ..
                    } => format!(
                        "{namespace}/{workload}~ ({})",
                        plural(c.counts.pods.len() as u64, "pod")
                    ),
                    Origin::Container { id } => format!("container {id}"),
                    // A host process in its own network namespace (behind a bridge, no
                    // container cgroup), or a line that does not say.
                    Origin::Host { .. } | Origin::Unknown if c.counts.other_network > 0 => {
                        format!("{} (in its own network namespace)", c.describe())
                    }
                    Origin::Host { .. } | Origin::Unknown => c.describe(),
                };
                // Listed for its network namespace alone: no suffix (it made token calls
                // from behind a routing hop, and nothing was lost yet).
                if c.counts.token_dropped > 0 {
                    format!("{who} [drop seen]")
                } else if c.counts.token_failures > 0 && !c.in_host_network() {
                    format!("{who} [silence]")
                } else {
                    who
                }
            })
            .collect();
        cut_off.extend(
            stats
                .evidence
                .hop_drops_unmatched
                .iter()
                .map(|d| format!("a caller without a traced request ({d}) [drop seen]")),
        );
        let mut inconclusive = reasons(&stats, report.min_window);
        // A call the tracer could not classify (a payload the kernel could not read, bytes
        // that are not HTTP to it) is no evidence of IMDSv2: a local user makes an IMDSv1
        // call look so on purpose (sendfile, an unfaulted mmap page), and IMDS answers it.
        let unclassified: Vec<String> = callers_of(report, node)
            .filter(|c| c.counts.malformed > 0)
            .map(Caller::describe)
            .collect();
        if !unclassified.is_empty() {
            let n: u64 = callers_of(report, node).map(|c| c.counts.malformed).sum();
            inconclusive.push(format!(
                "{} to IMDS not classified (malformed or unreadable: an IMDSv1 call can hide \
                 so) by {}",
                plural(n, "call"),
                list(&unclassified)
            ));
        }
        let hop_inconclusive = hop_reasons(&stats);
        let verdict = if !v1_callers.is_empty() {
            NOT_SAFE
        } else if inconclusive.is_empty() {
            SAFE
        } else {
            INCONCLUSIVE
        };
        let hop_limit_1 = if !cut_off.is_empty() {
            NOT_SAFE
        } else if inconclusive.is_empty() && hop_inconclusive.is_empty() {
            SAFE
        } else {
            INCONCLUSIVE
        };
        Verdict {
            node: node.to_string(),
            verdict,
            imdsv2_required_safe: verdict == SAFE,
            v1_callers,
            hop_limit_1,
            hop_limit_1_safe: hop_limit_1 == SAFE,
            hop_limit_1_cut_off: cut_off.into_iter().collect(),
            inconclusive,
            hop_limit_1_inconclusive: hop_inconclusive,
            window: window(&stats),
            stats,
        }
    }

    /// `node-a: NOT SAFE: 2 callers use IMDSv1: ...; hop limit 1 would cut off: shop/web~
    /// (3 pods) [window ...]`.
    pub(super) fn line(&self) -> String {
        let mut s = format!("{}: ", self.node);
        match self.verdict {
            SAFE => s.push_str("SAFE: no IMDSv1 calls; http_tokens=required is safe"),
            NOT_SAFE => {
                let n = self.v1_callers.len();
                s.push_str(&format!(
                    "NOT SAFE: {} use{} IMDSv1: {}",
                    plural(n as u64, "caller"),
                    if n == 1 { "s" } else { "" },
                    list(&self.v1_callers)
                ));
            }
            _ => s.push_str(&format!(
                "INCONCLUSIVE: no IMDSv1 calls seen, but {}",
                self.inconclusive.join("; ")
            )),
        }
        match self.hop_limit_1 {
            SAFE => s.push_str("; safe with hop limit 1"),
            NOT_SAFE => s.push_str(&format!(
                "; hop limit 1 would cut off: {} (keep hop limit 2, or move them to IRSA/Pod Identity)",
                list(&self.hop_limit_1_cut_off)
            )),
            _ if self.hop_limit_1_inconclusive.is_empty() => {
                s.push_str("; hop limit 1: INCONCLUSIVE");
            }
            _ => s.push_str(&format!(
                "; hop limit 1: INCONCLUSIVE: {}",
                self.hop_limit_1_inconclusive.join("; ")
            )),
        }
        if self.stats.calls == 0 {
            s.push_str(" (no IMDS calls seen)");
        }
        // A NOT SAFE answer stands on what was seen; still say what may be missing.
        if self.verdict == NOT_SAFE && !self.inconclusive.is_empty() {
            s.push_str(&format!(" (incomplete: {})", self.inconclusive.join("; ")));
        }
        s.push_str(&format!(" [window {}]", self.window));
        s
    }
}

/// The report's callers on `node`.
fn callers_of<'r>(report: &'r Report, node: &'r str) -> impl Iterator<Item = &'r Caller> + Clone {
    report.callers.iter().filter(move |c| c.key.node == node)
}

/// Why the node's lines are not evidence enough for SAFE.
fn reasons(stats: &NodeStats, min_window: TimeDelta) -> Vec<String> {
    let e = &stats.evidence;
    let mut out = Vec::new();
    match e.window() {
        None if min_window > TimeDelta::zero() => out.push(format!(
            "no timed lines: the window cannot be shorter than --min-window {}",
            duration(min_window)
        )),
        Some(w) if w < min_window => out.push(format!(
            "the window ({}) is shorter than --min-window {}",
            duration(w),
            duration(min_window)
        )),
        _ => {}
    }
    if e.lines_not_understood > 0 {
        out.push(format!(
            "{} not understood (not a trace line of this version, nor the daemon's own)",
            plural(e.lines_not_understood, "line")
        ));
    }
    if stats.dropped_events > 0 {
        out.push(format!(
            "the kernel dropped {}",
            plural(stats.dropped_events, "event")
        ));
    }
    // A call the send hooks missed (MPTCP, TCP Fast Open with the tracepoint attach) that
    // IMDS answered: it may have been an IMDSv1 call, and no line says whose.
    if stats.untraced_responses > 0 {
        out.push(format!(
            "IMDS answered {} that {} not traced (MPTCP, TCP Fast Open or a send the hooks \
             miss: an IMDSv1 call can hide so)",
            plural(stats.untraced_responses, "call"),
            if stats.untraced_responses == 1 {
                "was"
            } else {
                "were"
            }
        ));
    }
    for gap in &e.gaps {
        out.push(format!(
            "a gap in the log: the daemon started again{} without having stopped (killed or \
             crashed): calls before that start were not traced",
            at(*gap)
        ));
    }
    out
}

/// Why the hop-limit answer is not known, besides [`reasons`]: statuses not traced.
fn hop_reasons(stats: &NodeStats) -> Vec<String> {
    let e = &stats.evidence;
    let mut out: Vec<String> = e
        .statuses_not_traced
        .iter()
        .map(|(t, why)| format!("statuses not traced from {} ({why})", when(*t)))
        .collect();
    if e.responses_lost > 0 {
        out.push(format!(
            "the kernel lost {} response status{} (a lost one can hide a lost token response)",
            e.responses_lost,
            if e.responses_lost == 1 { "" } else { "es" }
        ));
    }
    out
}

fn when(t: Option<NaiveDateTime>) -> String {
    t.map_or_else(
        || "an unknown time".into(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

fn at(t: Option<NaiveDateTime>) -> String {
    t.map(|t| format!(" at {}", t.format("%Y-%m-%d %H:%M:%S")))
        .unwrap_or_default()
}

/// `2026-11-23 09:00:00 .. 2026-11-24 09:00:00 (24h 0m)`, or `none: no timed lines`.
fn window(stats: &NodeStats) -> String {
    let e = &stats.evidence;
    match (e.first_line, e.last_line) {
        (Some(f), Some(l)) => format!(
            "{} .. {} ({})",
            f.format("%Y-%m-%d %H:%M:%S"),
            l.format("%Y-%m-%d %H:%M:%S"),
            duration(l - f)
        ),
        _ => "none: no timed lines".into(),
    }
}

/// `24h 0m`, `3m 20s`, `12s`.
pub(super) fn duration(d: TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec}s"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

fn list(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(LIST_MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LIST_MAX {
        s.push_str(&format!(", and {} more", items.len() - LIST_MAX));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::aggregate::{DEFAULT_NODE, report_of as report};

    const V1_POD: &str = "[2026-11-23 09:33:16,511] [WARNING] imdsv1(!) (pid:1:wget argv:wget) \
        req details: get / http/1.1, user-agent: wget, container:ce29cd2af76a pod:shop/web-1 \
        container-name:app container-pid:7 uid:0 dst:169.254.169.254:80";
    const V2_POD: &str = "[2026-11-23 09:33:17,000] [INFO] imdsv2 (pid:2:python3 argv:x) \
        req details: get / http/1.1, user-agent: botocore/1.43.11 python/3.11, \
        container:aaaaaaaaaaaa pod:shop/api-1 container-name:api uid:0 dst:169.254.169.254:80";
    const V2_HOST: &str = "[2026-11-23 09:33:18,000] [INFO] imdsv2 (pid:3:aws argv:aws) req \
        details: get / http/1.1, user-agent: aws-cli/2.13.0, host unit:cron.service uid:0 \
        dst:169.254.169.254:80";
    const V1_OTHER_DST: &str = "[2026-11-23 09:33:19,000] [WARNING] imdsv1(!) (pid:4:curl \
        argv:curl) req details: get / http/1.1, host unit:- uid:0 dst:169.254.170.23:80";

    #[test]
    fn not_safe_lists_v1_callers_and_pods() {
        let r = report(None, &[V2_POD, V1_POD, V1_POD, V2_HOST, "junk"]);
        assert_eq!((r.lines, r.not_understood), (5, 1));
        assert_eq!(r.callers.len(), 3);
        let top = &r.callers[0];
        assert_eq!(top.counts.v1, 2, "sorted by v1 calls");
        assert_eq!(
            top.counts.first_seen.unwrap().to_string(),
            "2026-11-23 09:33:16.511"
        );
        let v = Verdict::for_node(&r, DEFAULT_NODE);
        assert_eq!(
            v.line(),
            "this node: NOT SAFE: 1 caller uses IMDSv1: wget in shop/web~ (app, 1 pod); hop \
             limit 1 would cut off: shop/api~ (1 pod) (keep hop limit 2, or move them to \
             IRSA/Pod Identity) (incomplete: 1 line not understood (not a trace line of this \
             version, nor the daemon's own)) [window 2026-11-23 09:33:16 .. 2026-11-23 09:33:18 \
             (1s)]"
        );
    }

    #[test]
    fn safe_both_ways() {
        let r = report(Some("node-b"), &[V2_HOST, V2_HOST, V1_OTHER_DST]);
        let v = Verdict::for_node(&r, "node-b");
        assert_eq!(
            v.line(),
            "node-b: SAFE: no IMDSv1 calls; http_tokens=required is safe; safe with hop limit 1 \
             [window 2026-11-23 09:33:18 .. 2026-11-23 09:33:19 (1s)]"
        );
        assert_eq!(v.stats.other_destinations, 1);
        assert_eq!(r.callers[0].sdk.as_ref().unwrap().label(), "aws-cli 2.13.0");
    }

    #[test]
    fn a_lost_token_response_is_never_safe_with_hop_limit_1() {
        let warning = "[2026-11-23 11:14:49,782] [WARNING] imdsv2 token response not \
            received (hop limit?) (pid:5:curl argv:curl) req details: put /latest/api/token \
            http/1.1, user-agent: curl/7.88.1, host unit:- uid:0 dst:169.254.169.254:80";
        let r = report(None, &[warning, V2_HOST]);
        let v = Verdict::for_node(&r, DEFAULT_NODE);
        assert!(!v.hop_limit_1_safe, "{}", v.line());
        // Silence is all this rests on: said so.
        assert_eq!(v.hop_limit_1_cut_off, ["curl on host [silence]"]);
        assert_eq!(r.callers[0].counts.token_failures, 1);
    }

    /// A token response seen dropped cuts its caller off whatever its namespace says, on
    /// the drop's evidence; a drop that matched no request is listed too; a host caller
    /// that only called is not.
    #[test]
    fn a_dropped_token_response_is_listed_with_its_evidence() {
        let dropped = "[2026-11-23 11:14:49,782] [WARNING] imdsv2 token response dropped \
            (hop limit) (pid:5:curl argv:curl) req details: put /latest/api/token http/1.1, \
            user-agent: curl/7.88.1, -> dropped container:0123456789ab pod:shop/web-1 \
            net:other uid:0 dst:169.254.169.254:80";
        let unmatched = "[2026-11-23 11:14:50,000] [WARNING] imds-snoop saw a reply dropped at \
            the hop limit (no traced request: to:10.1.0.9:41000 from:169.254.169.254:80 ttl:1 \
            reason:IP_INHDR netns:4026532000)";
        let r = report(None, &[dropped, unmatched, V2_HOST]);
        let v = Verdict::for_node(&r, DEFAULT_NODE);
        assert!(!v.hop_limit_1_safe, "{}", v.line());
        assert_eq!(
            v.hop_limit_1_cut_off,
            [
                "a caller without a traced request (no traced request: to:10.1.0.9:41000 \
                 from:169.254.169.254:80 ttl:1 reason:IP_INHDR netns:4026532000) [drop seen]",
                "shop/web~ (1 pod) [drop seen]",
            ]
        );
        let c = r
            .callers
            .iter()
            .find(|c| c.counts.token_dropped == 1)
            .unwrap();
        assert!(
            c.notes().contains(
                &"1 token response seen dropped at the hop limit (evidence: drop seen)".into()
            ),
            "{:?}",
            c.notes()
        );
        assert_eq!(v.stats.evidence.lines_not_understood, 0);
    }

    #[test]
    fn empty_input_still_has_a_verdict() {
        let r = report(None, &[]);
        assert_eq!(
            Verdict::for_node(&r, DEFAULT_NODE).line(),
            "this node: SAFE: no IMDSv1 calls; http_tokens=required is safe; safe with hop \
             limit 1 (no IMDS calls seen) [window none: no timed lines]"
        );
        // With a --min-window, no lines is no evidence.
        let mut r = report(None, &[]);
        r.min_window = TimeDelta::hours(24);
        assert_eq!(
            Verdict::for_node(&r, DEFAULT_NODE).line(),
            "this node: INCONCLUSIVE: no IMDSv1 calls seen, but no timed lines: the window \
             cannot be shorter than --min-window 24h 0m; hop limit 1: INCONCLUSIVE (no IMDS \
             calls seen) [window none: no timed lines]"
        );
    }

    /// Hop limit 1 cuts off exactly the callers in another network namespace that need a
    /// token, and those whose token response was lost outside the node's namespace.
    #[test]
    fn hop_limit_lists_only_token_callers_behind_a_hop() {
        let line = |label: &str, comm: &str, origin: &str, net: &str, status: &str| {
            format!(
                "[2026-11-23 09:33:17,000] [INFO] {label} (pid:2:{comm} argv:x) req details: get \
                 / http/1.1, user-agent: botocore/1.43.11,{status} {origin} {net} uid:0 \
                 dst:169.254.169.254:80"
            )
        };
        let pod = |name: &str| format!("container:aaaaaaaaaaaa pod:shop/{name} container-name:c");
        let lines = [
            // A pod in its own namespace making v2 calls: cut off.
            line("imdsv2", "python3", &pod("api-1"), "net:other", " -> 200"),
            // A hostNetwork pod (aws-node, kube-proxy) making v2 calls: not.
            line(
                "imdsv2(token)",
                "aws-k8s-agent",
                &pod("aws-node-x"),
                "net:host",
                " -> 200",
            ),
            // A v1-only pod behind a hop: the IMDSv1 list's.
            line("imdsv1(!)", "wget", &pod("web-1"), "net:other", " -> 200"),
            // A host process in a private namespace without a container cgroup.
            line(
                "imdsv2(token)",
                "curl",
                "host unit:-",
                "net:other",
                " -> 200",
            ),
            // A host process whose token PUT went unanswered in the node's namespace: not
            // the hop limit.
            line(
                "imdsv2 token response not received (hop limit?)",
                "aws",
                "host unit:cron.service",
                "net:host",
                "",
            ),
            // A PUT refused 403 behind a hop: it needs a token, so listed; the note says 403.
            line(
                "imdsv2(token)",
                "java",
                &pod("legacy-1"),
                "net:other",
                " -> 403",
            ),
        ];
        let r = report(None, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let v = Verdict::for_node(&r, DEFAULT_NODE);
        assert_eq!(
            v.hop_limit_1_cut_off,
            [
                "curl [botocore 1.43.11] on host (in its own network namespace)",
                "shop/api~ (1 pod)",
                "shop/legacy~ (1 pod)"
            ],
            "{}",
            v.line()
        );
        assert_eq!(
            v.v1_callers,
            ["wget [botocore 1.43.11] in shop/web~ (c, 1 pod)"]
        );
        let aws = r.callers.iter().find(|c| c.key.process == "aws").unwrap();
        assert_eq!(
            aws.notes(),
            [
                "token response not received, in the node's network namespace: not the hop \
              limit (a firewall, IMDS down?)"
            ]
        );
    }

    /// Two garbage lines are not a SAFE node.
    #[test]
    fn garbage_is_never_safe() {
        let r = report(None, &["hello", "world"]);
        let v = Verdict::for_node(&r, DEFAULT_NODE);
        assert_eq!((v.verdict, v.hop_limit_1), ("INCONCLUSIVE", "INCONCLUSIVE"));
        assert!(
            v.line().starts_with(
                "this node: INCONCLUSIVE: no IMDSv1 calls seen, but 2 lines not understood"
            ),
            "{}",
            v.line()
        );
    }

    /// A call the tracer could not read (sendfile, an unfaulted mmap page: issue 16's attack
    /// round) or parse is no evidence of IMDSv2: a node whose only calls are such is not
    /// SAFE, and the reason names the caller.
    #[test]
    fn unclassified_calls_are_never_safe() {
        let unreadable = "[2026-11-23 09:33:20,000] [WARNING] malformed(!) (pid:5:python3 \
            argv:python3 x.py) req details:  -> 200 host unit:- uid:65534 \
            dst:169.254.169.254:80 payload-unreadable";
        let r = report(None, &[V2_HOST, unreadable]);
        let v = Verdict::for_node(&r, DEFAULT_NODE);
        assert_eq!((v.verdict, v.hop_limit_1), ("INCONCLUSIVE", "INCONCLUSIVE"));
        assert!(
            v.line().contains(
                "1 call to IMDS not classified (malformed or unreadable: an IMDSv1 call can \
                 hide so) by python3 on host"
            ),
            "{}",
            v.line()
        );
        // With a v1 call besides, NOT SAFE stands, and says what else is missing.
        let r = report(None, &[V1_POD, unreadable]);
        let v = Verdict::for_node(&r, DEFAULT_NODE);
        assert_eq!(v.verdict, "NOT SAFE");
        assert!(
            v.line()
                .contains("(incomplete: 1 call to IMDS not classified"),
            "{}",
            v.line()
        );
    }

    /// IMDS answered calls no line shows (an MPTCP socket, TCP Fast Open with the
    /// tracepoint attach: issue 16's attack round): both answers are INCONCLUSIVE, with the
    /// count as the reason, in text and in JSON lines alike; a v1 call besides is NOT SAFE.
    #[test]
    fn untraced_answers_are_never_safe() {
        let text = "[2026-11-23 09:33:20,000] [WARNING] imds-snoop IMDS answered a call it did \
            not see traced (-> 200 to 10.0.0.5:41234 from 169.254.169.254:80; receiving \
            process unknown; MPTCP, TCP Fast Open or a send the hooks miss)";
        let json = r#"{"class":"untraced_response","dst":"169.254.169.254:80","level":"WARNING","local":"10.0.0.5:41235","node":"this node","schema":1,"status":200,"timestamp":"2026-11-23T09:33:21.000+00:00"}"#;
        for lines in [
            &[V2_HOST, text][..],
            &[V2_HOST, text, text][..],
            &[V2_HOST, json][..],
        ] {
            let r = report(None, lines);
            let v = Verdict::for_node(&r, DEFAULT_NODE);
            assert_eq!(
                (v.verdict, v.hop_limit_1),
                ("INCONCLUSIVE", "INCONCLUSIVE"),
                "{}",
                v.line()
            );
            let n = lines.len() - 1;
            let want = if n == 1 {
                "IMDS answered 1 call that was not traced".to_string()
            } else {
                format!("IMDS answered {n} calls that were not traced")
            };
            assert!(v.line().contains(&want), "{}", v.line());
        }
        let r = report(None, &[V1_POD, text]);
        let v = Verdict::for_node(&r, DEFAULT_NODE);
        assert_eq!(v.verdict, "NOT SAFE");
        assert!(
            v.line()
                .contains("(incomplete: IMDS answered 1 call that was not traced"),
            "{}",
            v.line()
        );
    }

    /// A window shorter than --min-window, and everything else that is no evidence of
    /// safety: kernel drops, lost statuses, statuses not traced, a gap.
    #[test]
    fn short_window_drops_and_gaps_are_inconclusive() {
        let mut r = report(Some("node-b"), &[V2_HOST, V1_OTHER_DST]);
        r.min_window = TimeDelta::hours(24);
        let v = Verdict::for_node(&r, "node-b");
        assert_eq!(v.verdict, "INCONCLUSIVE", "{}", v.line());
        assert_eq!(
            v.inconclusive,
            ["the window (1s) is shorter than --min-window 24h 0m"]
        );
        r.min_window = TimeDelta::seconds(1);
        assert_eq!(Verdict::for_node(&r, "node-b").verdict, "SAFE");

        let stderr =
            |t: &str, msg: &str| format!("2026-11-23T09:{t}Z  INFO imds_snoop::daemon: {msg}");
        let lines = [
            stderr("30:00.000000", "attached tracepoint; tracing x; writing y"),
            V2_HOST.to_string(),
            // kill -9: no `detached` before the next start.
            stderr("34:00.000000", "attached tracepoint; tracing x; writing y"),
            stderr(
                "35:00.000000",
                "response statuses are not traced: this process lacks CAP_NET_ADMIN (CapEff 0)",
            ),
            "[2026-11-23 09:36:00,000] [WARNING] imds-snoop lost 3 kernel events that are not \
             calls (totals: process events 1, responses 2); lines may lack argv"
                .to_string(),
            stderr("37:00.000000", "detached, log flushed"),
            stderr("38:00.000000", "attached tracepoint; tracing x; writing y"),
        ];
        let r = report(None, &lines.iter().map(String::as_str).collect::<Vec<_>>());
        let v = Verdict::for_node(&r, DEFAULT_NODE);
        assert_eq!(
            v.inconclusive,
            [
                "a gap in the log: the daemon started again at 2026-11-23 09:34:00 without having \
              stopped (killed or crashed): calls before that start were not traced"
            ],
            "the start at the head and the one after a clean stop are no gaps"
        );
        assert_eq!(
            v.hop_limit_1_inconclusive,
            [
                "statuses not traced from 2026-11-23 09:35:00 (this process lacks CAP_NET_ADMIN)",
                "the kernel lost 2 response statuses (a lost one can hide a lost token response)"
            ]
        );
        assert_eq!(
            v.window,
            "2026-11-23 09:30:00 .. 2026-11-23 09:38:00 (8m 0s)"
        );
        assert_eq!((v.verdict, v.hop_limit_1), ("INCONCLUSIVE", "INCONCLUSIVE"));
    }

    /// `kubectl -n imds-snoop logs ds/imds-snoop --all-pods --prefix --timestamps`: two
    /// nodes' pods, text and JSON, stdout and stderr interleaved, each line as kubectl
    /// writes it.
    #[test]
    fn kubectl_streams_of_many_nodes() {
        let input = include_str!("../../../tests/fixtures/report/kubectl-all-pods.log");
        let lines: Vec<&str> = input.lines().collect();
        let r = report(None, &lines);
        assert_eq!(r.not_understood, 0, "every line understood");
        let v = all(&r);
        let lines: Vec<String> = v.iter().map(Verdict::line).collect();
        assert_eq!(
            r.nodes.keys().collect::<Vec<_>>(),
            ["ip-10-0-1-5.ec2.internal", "ip-10-0-2-7.ec2.internal"],
            "{lines:#?}"
        );
        assert!(
            lines[0].starts_with(
                "ip-10-0-1-5.ec2.internal: NOT SAFE: 1 caller uses IMDSv1: wget in \
                 shop/web~ (app, 1 pod)"
            ),
            "{lines:#?}"
        );
        assert!(
            lines[1].starts_with(
                "ip-10-0-2-7.ec2.internal: SAFE: no IMDSv1 calls; http_tokens=required is safe; \
                 safe with hop limit 1 [window 2026-11-23 09:00:00"
            ),
            "{lines:#?}"
        );
    }
}
