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

use super::{Record, escape_controls};
use crate::{container::Origin, process::Proc};

pub fn format(r: &Record) -> String {
    let mut line = format!(
        "[{}] [{}] {} {}",
        r.time.format("%Y-%m-%d %H:%M:%S,%3f"),
        r.level(),
        if r.token_not_received() {
            super::TOKEN_NO_RESPONSE_LABEL
        } else {
            r.request.class.label()
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
    line.push_str(&escape_controls(&r.request.details()));
    if let Some(status) = r.status() {
        let _ = write!(line, " -> {status}");
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

/// `container:<id12> pod:<namespace>/<name> container-name:<name>`, or `host unit:<unit>`.
fn origin(o: &Origin) -> String {
    match o {
        Origin::Container(c) => {
            let mut s = format!("container:{}", &c.id[..c.id.len().min(12)]);
            match &c.pod {
                Some(pod) => {
                    let _ = write!(
                        s,
                        " pod:{}/{}",
                        escape_controls(&pod.namespace),
                        escape_controls(&pod.name)
                    );
                    if let Some(name) = &pod.container {
                        let _ = write!(s, " container-name:{}", escape_controls(name));
                    }
                }
                None => {
                    if let Some(uid) = &c.pod_uid {
                        let _ = write!(s, " pod-uid:{uid}");
                    }
                }
            }
            s
        }
        Origin::Host { unit: Some(unit) } => format!("host unit:{}", escape_controls(unit)),
        Origin::Host { unit: None } => "host unit:-".into(),
        Origin::Unknown => "origin:unknown".into(),
    }
}

fn proc(p: &Proc) -> String {
    let argv = match &p.argv {
        Some(argv) => escape_controls(argv),
        // Gone before we could read /proc: the kernel-captured comm is all there is.
        None => format!("[exited] {}", escape_controls(&p.comm)),
    };
    format!("(pid:{}:{} argv:{})", p.pid, escape_controls(&p.comm), argv)
}
