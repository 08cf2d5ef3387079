//! What the e2e tests need from tests/support (namespaces, the fake IMDS, clients, the line
//! reader: re-exported here), bound to this crate's `imds-snoop` binary, which cargo builds
//! for an integration test of its own package only (`CARGO_BIN_EXE_imds-snoop`).

use std::{
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::Command,
};

pub(crate) use imds_snoop_test_support::{
    Client, FakeImds, FakeOpts, IMDS_V4, IMDS_V6, LINE_TIMEOUT, LogLine, Netns, OTHER_LINK_LOCAL,
    OTHER_PRIVATE, OTHER_V6, Routed, TestDir, botocore_credentials, curl, curl_status, lines_of,
    pids, require_root, run_client, serial, show,
};

const CLIENTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e");
const DAEMON: &str = env!("CARGO_BIN_EXE_imds-snoop");

/// The real `imds-snoop` binary of this build (see [`imds_snoop_test_support::Daemon`]).
pub(crate) struct Daemon(imds_snoop_test_support::Daemon);

impl Daemon {
    /// Starts it with `--log-file <scratch>/imds-trace.log ARGS` and waits (up to 15 s)
    /// until it says `attached`.
    pub(crate) fn start(args: &[&str]) -> Self {
        Self(imds_snoop_test_support::Daemon::start(
            Path::new(DAEMON),
            args,
        ))
    }

    /// As [`Daemon::start`], with the trace log at `log` instead of the scratch directory
    /// (e.g. on a small tmpfs that a test fills up).
    pub(crate) fn start_logging_to(log: Option<&Path>, args: &[&str]) -> Self {
        Self(imds_snoop_test_support::Daemon::start_logging_to(
            Path::new(DAEMON),
            log,
            args,
        ))
    }

    /// The test's standard ending: stop cleanly, then check no secret was written.
    pub(crate) fn finish(self, fakes: &[&FakeImds], extra: &[&str]) {
        self.0.finish(fakes, extra);
    }

    /// The ending of a test that makes the daemon drop events on purpose: stop cleanly,
    /// check no secret was written (the test itself checks the losses).
    pub(crate) fn finish_with_drops(self, fakes: &[&FakeImds], extra: &[&str]) {
        self.0.finish_with_drops(fakes, extra);
    }

    /// The ending of a test that hides calls from the send hooks on purpose: as
    /// [`Daemon::finish`], with untraced-response lines expected.
    pub(crate) fn finish_with_untraced(self, fakes: &[&FakeImds], extra: &[&str]) {
        self.0.finish_with_untraced(fakes, extra);
    }
}

impl Deref for Daemon {
    type Target = imds_snoop_test_support::Daemon;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// `imds-snoop report --format json --min-window 0 LOG`, parsed (a test's log covers
/// seconds, not the default day).
pub(crate) fn report_json(log: &Path) -> serde_json::Value {
    let out = Command::new(DAEMON)
        .args(["report", "--format", "json", "--min-window", "0"])
        .arg(log)
        .output()
        .unwrap_or_else(|e| panic!("running imds-snoop report: {e}"));
    assert!(out.status.success(), "report failed: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("report JSON: {e}: {out:?}"))
}

/// The first node verdict's "hop limit 1 would cut off" list of a `report_json` result.
pub(crate) fn hop_limit_cut_off(report: &serde_json::Value) -> Vec<String> {
    report["verdicts"][0]["hop_limit_1_cut_off"]
        .as_array()
        .unwrap_or_else(|| panic!("no cut-off list: {report}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A path under tests/e2e (client scripts).
pub(crate) fn client_script(name: &str) -> PathBuf {
    Path::new(CLIENTS_DIR).join(name)
}
