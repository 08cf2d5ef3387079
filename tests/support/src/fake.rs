//! The fake IMDS: tests/fake_imds.py inside a namespace.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use crate::{
    IMDS_V4, IMDS_V6,
    child::{terminate, wait_for_child},
    client::create,
    dir::read_or_empty,
    netns::Netns,
};

const FAKE_IMDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fake_imds.py");

// ---------------------------------------------------------------------------------------
// The fake IMDS

pub struct FakeOpts {
    pub binds: Vec<&'static str>,
    pub port: u16,
    /// http_tokens=required: GETs without a token get 401.
    pub require_v2: bool,
    /// IP TTL / hop limit of its responses.
    pub ttl: Option<u8>,
    /// Token PUTs get a TCP reset instead of a response.
    pub reset_token_puts: bool,
}

impl FakeOpts {
    /// IMDS with `http_tokens = required`: GETs without a token get 401.
    pub fn enforcing() -> Self {
        Self {
            require_v2: true,
            ..Self::default()
        }
    }
}

impl Default for FakeOpts {
    fn default() -> Self {
        Self {
            binds: vec![IMDS_V4, IMDS_V6],
            port: 80,
            require_v2: false,
            ttl: None,
            reset_token_puts: false,
        }
    }
}

/// tests/fake_imds.py running inside a namespace; terminated on drop.
pub struct FakeImds {
    child: Child,
    tokens_file: PathBuf,
    stderr_file: PathBuf,
}

/// A secret the fake handed out: `kind` is `token`, `AccessKeyId`, `SecretAccessKey` or
/// `Token`.
#[derive(Debug, Clone)]
pub struct Secret {
    pub kind: String,
    pub value: String,
}

impl FakeImds {
    pub fn start(ns: &Netns, opts: FakeOpts) -> Self {
        let ready = ns.dir().file("fake-ready");
        let tokens_file = ns.dir().file("fake-secrets");
        let stderr_file = ns.dir().file("fake-stderr");
        let mut cmd = ns.command("python3");
        cmd.arg(FAKE_IMDS)
            .arg("--port")
            .arg(opts.port.to_string())
            .arg("--ready-file")
            .arg(&ready)
            .arg("--tokens-file")
            .arg(&tokens_file);
        for addr in &opts.binds {
            cmd.args(["--bind", addr]);
        }
        if opts.require_v2 {
            cmd.arg("--require-v2");
        }
        if opts.reset_token_puts {
            cmd.arg("--reset-token-puts");
        }
        if let Some(ttl) = opts.ttl {
            cmd.args(["--ttl", &ttl.to_string()]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(create(&stderr_file))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the fake IMDS {cmd:?}: {e}"));
        let mut fake = Self {
            child,
            tokens_file,
            stderr_file,
        };
        fake.wait_ready(&ready);
        fake
    }

    fn wait_ready(&mut self, ready: &Path) {
        let stderr = self.stderr_file.clone();
        wait_for_child(
            &mut self.child,
            Duration::from_secs(10),
            "the fake IMDS",
            "listen",
            || ready.exists(),
            || read_or_empty(&stderr),
        );
    }

    /// Its request log (one line per request) and any errors.
    pub fn stderr(&self) -> String {
        read_or_empty(&self.stderr_file)
    }

    /// Every token it issued so far, and its fake credential values.
    pub fn secrets(&self) -> Vec<Secret> {
        read_or_empty(&self.tokens_file)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(kind, value)| Secret {
                kind: kind.into(),
                value: value.into(),
            })
            .collect()
    }

    pub fn tokens(&self) -> Vec<String> {
        self.secrets()
            .into_iter()
            .filter(|s| s.kind == "token")
            .map(|s| s.value)
            .collect()
    }

    /// One of its fake credential values (`AccessKeyId`, `SecretAccessKey`, `Token`).
    pub fn credential(&self, kind: &str) -> String {
        self.secrets()
            .into_iter()
            .find(|s| s.kind == kind)
            .unwrap_or_else(|| panic!("the fake IMDS recorded no {kind}"))
            .value
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(3));
    }
}
