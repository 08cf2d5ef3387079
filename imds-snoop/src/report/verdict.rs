//! The answer per node: can it require IMDSv2, and can it use a PUT response hop limit of 1.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{
    aggregate::{Caller, NodeStats, Report},
    parse::Origin,
    words::plural,
};

/// The answer for one node: can it require IMDSv2, and can it use hop limit 1.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Verdict {
    pub node: String,
    /// No IMDSv1 calls: `http_tokens=required` breaks nobody seen in the logs.
    pub imdsv2_required_safe: bool,
    /// Callers that used IMDSv1, as [`Caller::describe`] says them.
    pub v1_callers: Vec<String>,
    /// No container used IMDS: a PUT response hop limit of 1 cuts nobody off.
    pub hop_limit_1_safe: bool,
    /// Pods (`namespace/name`) and pod-less containers that used IMDS.
    pub hop_limit_1_cut_off: Vec<String>,
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

impl Verdict {
    pub(super) fn for_node(report: &Report, node: &str) -> Verdict {
        let callers = report.callers.iter().filter(|c| c.key.node == node);
        let v1_callers: Vec<String> = callers
            .clone()
            .filter(|c| c.counts.v1 > 0)
            .map(Caller::describe)
            .collect();
        let cut_off: BTreeSet<String> = callers
            .filter_map(|c| match &c.key.origin {
                Origin::Pod {
                    namespace, name, ..
                } => Some(format!("{namespace}/{name}")),
                Origin::Container { id } => Some(format!("container {id}")),
                // A token response seen lost (the hop-limit warning) cuts off whoever it is,
                // e.g. a host process in its own network namespace behind a bridge.
                Origin::Host { .. } | Origin::Unknown if c.counts.token_failures > 0 => {
                    Some(c.describe())
                }
                Origin::Host { .. } | Origin::Unknown => None,
            })
            .collect();
        Verdict {
            node: node.to_string(),
            imdsv2_required_safe: v1_callers.is_empty(),
            v1_callers,
            hop_limit_1_safe: cut_off.is_empty(),
            hop_limit_1_cut_off: cut_off.into_iter().collect(),
            stats: report.nodes.get(node).cloned().unwrap_or_default(),
        }
    }

    /// `node-a: NOT SAFE: 2 callers use IMDSv1: ...; hop limit 1 would cut off: shop/web-1`.
    pub(super) fn line(&self) -> String {
        let mut s = format!("{}: ", self.node);
        if self.imdsv2_required_safe {
            s.push_str("SAFE: no IMDSv1 calls; http_tokens=required is safe");
        } else {
            let n = self.v1_callers.len();
            s.push_str(&format!(
                "NOT SAFE: {} use{} IMDSv1: {}",
                plural(n as u64, "caller"),
                if n == 1 { "s" } else { "" },
                list(&self.v1_callers)
            ));
        }
        if self.hop_limit_1_safe {
            s.push_str("; safe with hop limit 1");
        } else {
            s.push_str(&format!(
                "; hop limit 1 would cut off: {} (keep hop limit 2, or move them to IRSA/Pod Identity)",
                list(&self.hop_limit_1_cut_off)
            ));
        }
        if self.stats.calls == 0 {
            s.push_str(" (no IMDS calls seen)");
        }
        if self.stats.dropped_events > 0 {
            s.push_str(&format!(
                " (incomplete: {} events were dropped)",
                self.stats.dropped_events
            ));
        }
        s
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
            "this node: NOT SAFE: 1 caller uses IMDSv1: wget in pod shop/web-1 (app); hop \
             limit 1 would cut off: shop/api-1, shop/web-1 (keep hop limit 2, or move them to \
             IRSA/Pod Identity)"
        );
    }

    #[test]
    fn safe_both_ways() {
        let r = report(Some("node-b"), &[V2_HOST, V2_HOST, V1_OTHER_DST]);
        let v = Verdict::for_node(&r, "node-b");
        assert_eq!(
            v.line(),
            "node-b: SAFE: no IMDSv1 calls; http_tokens=required is safe; safe with hop limit 1"
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
        assert_eq!(v.hop_limit_1_cut_off, ["curl on host"]);
        assert_eq!(r.callers[0].counts.token_failures, 1);
    }

    #[test]
    fn empty_input_still_has_a_verdict() {
        let r = report(None, &[]);
        assert_eq!(
            Verdict::for_node(&r, DEFAULT_NODE).line(),
            "this node: SAFE: no IMDSv1 calls; http_tokens=required is safe; safe with hop \
             limit 1 (no IMDS calls seen)"
        );
    }
}
