//! Clients run inside a test namespace.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    time::Duration,
};

use crate::{
    CLIENT_TIMEOUT,
    child::wait_bounded,
    dir::read_or_empty,
    netns::{Netns, netns_state},
};

/// A client started in a namespace; stdout and stderr go to files (no pipe can fill up).
pub struct Client {
    child: Child,
    what: String,
    netns: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// A finished client.
#[derive(Debug)]
pub struct Finished {
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
}

impl Client {
    pub fn spawn(ns: &Netns, cmd: &mut Command) -> Self {
        let stdout = ns.dir().file("client-stdout");
        let stderr = ns.dir().file("client-stderr");
        let child = cmd
            .stdout(create(&stdout))
            .stderr(create(&stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Self {
            child,
            what: format!("{cmd:?}"),
            netns: ns.name().to_owned(),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) and panics unless the client exited 0: a failed client means the
    /// test did not exercise what it meant to.
    pub fn wait_ok(self) -> Finished {
        self.wait_ok_within(CLIENT_TIMEOUT)
    }

    /// [`Client::wait_ok`] with another bound, for a client that starts hundreds of
    /// processes (each python3 start costs tens of ms of CPU on a shared 2-core machine).
    pub fn wait_ok_within(mut self, timeout: Duration) -> Finished {
        let status = wait_bounded(&mut self.child, timeout);
        let done = Finished {
            pid: self.child.id(),
            stdout: read_or_empty(&self.stdout),
            stderr: read_or_empty(&self.stderr),
        };
        let outcome = match status {
            Some(s) if s.success() => return done,
            Some(s) => format!("failed ({s})"),
            None => format!("did not finish within {timeout:?}"),
        };
        panic!(
            "client {} {outcome}; stderr: {}\n{}",
            self.what,
            done.stderr,
            netns_state(&self.netns)
        );
    }
}

/// Runs a client to completion in `ns`; panics unless it exits 0.
pub fn run_client(ns: &Netns, cmd: &mut Command) -> Finished {
    Client::spawn(ns, cmd).wait_ok()
}

/// `curl -sSf --max-time 5 ARGS...` in `ns`, bounded.
pub fn curl(ns: &Netns, args: &[&str]) -> Finished {
    run_client(
        ns,
        ns.command("curl")
            .args(["-sSf", "--max-time", "5"])
            .args(args),
    )
}

pub(crate) fn create(path: &Path) -> fs::File {
    fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()))
}

/// `curl -sS --max-time SECS -o /dev/null -w '%{http_code}' ARGS...` in `ns`, not failing on
/// an HTTP error status: returns curl's exit status and the status code it received
/// (`000` when none came).
pub fn curl_status(ns: &Netns, max_time: u32, args: &[&str]) -> (Option<ExitStatus>, String, u32) {
    let mut client = Client::spawn(
        ns,
        ns.command("curl")
            .args(["-sS", "--max-time", &max_time.to_string()])
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args(args),
    );
    let status = wait_bounded(&mut client.child, CLIENT_TIMEOUT);
    (status, read_or_empty(&client.stdout), client.child.id())
}

/// Environment that would point botocore elsewhere or switch IMDS off.
const AWS_ENV: [&str; 5] = [
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_EC2_METADATA_V1_DISABLED",
    "AWS_CONFIG_FILE",
];

/// botocore fetching the instance role's credentials in `ns`, as its credential chain does
/// (token PUT, then GETs; falls back to IMDSv1 when the PUT times out). `timeout`: seconds
/// per request. Prints `<role> <access key id>`; panics unless it exits 0.
pub fn botocore_credentials(ns: &Netns, timeout: u32) -> Finished {
    // botocore's default endpoint is 169.254.169.254: inside the namespace, the fake. The
    // fetcher is built with the session's user-agent (without one, urllib3's own is sent).
    let script = format!(
        "import botocore.session\n\
         from botocore.utils import InstanceMetadataFetcher as F\n\
         ua = botocore.session.get_session().user_agent()\n\
         f = F(timeout={timeout}, num_attempts=1, user_agent=ua)\n\
         c = f.retrieve_iam_role_credentials()\n\
         print(c.get('role_name'), c.get('access_key'))\n"
    );
    let mut cmd = ns.command("python3");
    cmd.args(["-c", &script]);
    for var in AWS_ENV {
        cmd.env_remove(var);
    }
    run_client(ns, &mut cmd)
}
