//! The trace log's lines as the tests see them, read through the line contract.

use std::{collections::BTreeSet, process};

use imds_snoop_line::{TextBody, TextLine, text::split_details};

/// One trace line, parsed loosely: fields may be appended after `req details: ...`.
///
/// `[ts] [LEVEL] label (pid:N:comm argv:ARGV) called by -> (pid:...) ... req details: ...`
#[derive(Debug, Clone)]
pub struct LogLine {
    pub raw: String,
    pub level: String,
    pub label: String,
    pub pid: u32,
    pub comm: String,
    pub argv: String,
    /// The caller's pid, then its ancestors' up to pid 1.
    pub chain: Vec<u32>,
    /// Everything after ` req details: `, lowercased as the daemon prints it.
    pub details: String,
}

impl LogLine {
    /// A request line of the trace log with a caller (`(pid:N:comm argv:...)`) and request
    /// details, read by the line contract's [`TextLine`]; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        let line = TextLine::parse(raw)?;
        let TextBody::Call(call) = line.body else {
            return None;
        };
        let caller = call.caller()?;
        Some(Self {
            raw: raw.into(),
            level: line.level.into(),
            label: call.label.into(),
            pid: caller.pid?,
            comm: caller.comm.into(),
            argv: call.argv()?.into(),
            chain: call.chain(),
            details: call.details()?.into(),
        })
    }

    /// Caused by a process this test process started (it is in the ancestry).
    pub fn is_ours(&self) -> bool {
        self.chain.contains(&process::id())
    }

    pub fn is_v1(&self) -> bool {
        self.label == "imdsv1(!)" && self.level == "WARNING"
    }

    pub fn is_v2(&self) -> bool {
        self.label == "imdsv2" && self.level == "INFO"
    }

    pub fn is_token_put(&self) -> bool {
        self.label == "imdsv2(token)" && self.level == "INFO"
    }

    /// The response status the daemon joined to the request (` -> 200` after the details).
    pub fn status(&self) -> Option<u16> {
        split_details(&self.details).status
    }

    pub fn is_token_not_received(&self) -> bool {
        self.label == "imdsv2 token response not received (hop limit?)" && self.level == "WARNING"
    }

    /// A token PUT whose response the drop hook saw die at the hop limit: its class label,
    /// and ` -> dropped` where the status would be.
    pub fn is_token_dropped(&self) -> bool {
        self.label == "imdsv2 token response dropped (hop limit)"
            && self.level == "WARNING"
            && split_details(&self.details).connection_end == Some("dropped")
    }

    /// `details` contains `needle`, compared case-insensitively (the daemon lowercases).
    pub fn has(&self, needle: &str) -> bool {
        self.details.to_lowercase().contains(&needle.to_lowercase())
    }
}

/// The lines with caller pid `pid`.
pub fn lines_of(lines: &[LogLine], pid: u32) -> Vec<&LogLine> {
    lines.iter().filter(|l| l.pid == pid).collect()
}

/// Distinct caller pids, for "one line per client" checks.
pub fn pids(lines: &[LogLine]) -> BTreeSet<u32> {
    lines.iter().map(|l| l.pid).collect()
}

/// `lines` as text, for failure messages.
pub fn show(lines: &[LogLine]) -> String {
    lines
        .iter()
        .map(|l| l.raw.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser the tests rely on, on the documented line (no root needed).
    #[test]
    fn log_line_parser_reads_the_documented_format() {
        let raw = "[2025-10-22 02:55:40,993] [WARNING] imdsv1(!) (pid:69745:curl argv:curl -s \
               http://169.254.169.254/latest/meta-data/ (x)) called by -> (pid:11793:bash \
               argv:/bin/bash) -> (pid:1:systemd argv:/sbin/init) req details: get \
               /latest/meta-data/ http/1.1, host: 169.254.169.254, user-agent: curl/8.14.1, \
               accept: */*, host unit:- uid:0 dst:169.254.169.254:80";
        let line = LogLine::parse(raw).expect("the documented line must parse");
        assert!(line.is_v1());
        assert_eq!(line.pid, 69745);
        assert_eq!(line.comm, "curl");
        assert_eq!(
            line.argv,
            "curl -s http://169.254.169.254/latest/meta-data/ (x)"
        );
        assert_eq!(line.chain, [69745, 11793, 1]);
        assert!(line.has("GET /latest/meta-data/ HTTP/1.1"));
        assert!(line.has("user-agent: curl/"));
        assert_eq!(line.status(), None);
        let answered = raw.replace("accept: */*, host unit", "accept: */*, -> 401 host unit");
        assert_eq!(LogLine::parse(&answered).unwrap().status(), Some(401));

        let alone = "[2025-10-22 02:55:41,001] [INFO] imdsv2(token) (pid:7:python3 argv:python3 x.py) \
                 req details: put /latest/api/token http/1.1,";
        let line = LogLine::parse(alone).expect("a line without ancestors must parse");
        assert!(line.is_token_put());
        assert_eq!(
            (line.argv.as_str(), line.chain.as_slice()),
            ("python3 x.py", &[7][..])
        );
        assert!(
            LogLine::parse("[2025-10-22 02:55:41,001] [WARNING] imds-snoop dropped 3 events")
                .is_none()
        );
    }
}
