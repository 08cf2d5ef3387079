//! Test support for imds-snoop's end-to-end tests (tests/e2e, the `e2e` test of the
//! `imds-snoop` crate): throw-away network namespaces that own the IMDS addresses, the fake
//! IMDS (tests/fake_imds.py) inside them, the real `imds-snoop` binary (the caller says
//! where it is), real clients, and the trace log read back through the line contract
//! ([`line`], the `imds-snoop-line` crate). Also the in-process fake IMDS ([`TinyImds`]) that
//! the kernel-matrix guest (tests/vm-guest) runs where there is no Python.
//!
//! Every packet a test sends stays inside its own namespace: the IMDS addresses exist only
//! on that namespace's loopback, and proxies are removed from the clients' environment.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

/// The trace-line contract: class table, JSON line, text-line reader, labels.
pub use imds_snoop_line as line;

mod child;
mod client;
mod daemon;
mod dir;
mod fake;
mod lines;
pub mod netns;
mod prereq;
mod tiny_imds;

pub use client::{Client, Finished, botocore_credentials, curl, curl_status, run_client};
pub use daemon::Daemon;
pub use dir::TestDir;
pub use fake::{FakeImds, FakeOpts, Secret};
pub use lines::{LogLine, lines_of, pids, show};
pub use netns::{Netns, Routed};
pub use prereq::{require_root, serial};
pub use tiny_imds::TinyImds;

pub const IMDS_V4: &str = "169.254.169.254";
pub const IMDS_V6: &str = "fd00:ec2::254";
/// Addresses next to IMDS that are not traced unless `--target` names them.
pub const OTHER_LINK_LOCAL: &str = "169.254.169.253";
pub const OTHER_V6: &str = "fd00:ec2::253";
pub const OTHER_PRIVATE: &str = "10.255.0.1";

/// How long a line may take from the client's send to the log file.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the expected lines arrived, how long we keep watching for unexpected extra ones.
pub(crate) const SETTLE: Duration = Duration::from_millis(300);
/// Every client process gets at most this long (each also has its own, shorter timeout).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// Prefix of our namespace names; the next field is the test process's pid.
pub(crate) const NETNS_PREFIX: &str = "imds-t-";
/// Clients must not be sent to a proxy: that would take the request out of the namespace.
pub(crate) const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

pub(crate) fn next_id() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}
