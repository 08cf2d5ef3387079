//! The one road into a container origin: every id, runtime namespace and pod name that
//! attribution reports is made here, from text some local process chose (a cgroup name, a
//! shim's argv, a directory name, a bundle's annotations), and only if it has the shape the
//! runtimes and Kubernetes give it. Whatever fails is not an origin: a process that names
//! itself `containerd-shim -id ../../tmp/x` or `-id aéééé` gets its own fields and nothing
//! more.
//!
//! The validated types are plain ASCII without separators, so they are safe as one path
//! component, in a log line, and to cut at any byte (the text line's `container:<id12>`).

// Untrusted text: no byte-offset slicing of `str` here (a cut inside a multi-byte
// character panics, and a panic is the daemon gone).
#![warn(clippy::string_slice)]

use std::fmt;

use serde::Serialize;

/// Longest id containerd accepts for its own ids (`identifiers.Validate`: 76 characters).
const MAX_ID_LEN: usize = 76;
/// Longest Kubernetes name (a DNS subdomain: pod names; namespaces and container names are
/// DNS labels, 63, which this bound also covers).
const MAX_K8S_NAME_LEN: usize = 253;

/// A container id as runtimes make them: 64 lowercase hex digits (CRI containers under
/// containerd and CRI-O, docker), or one of containerd's own ids (`nerdctl`, `ctr`):
/// `^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`, at most 76 characters. ASCII only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub(crate) struct ContainerId(String);

impl ContainerId {
    /// `Some` only for the shapes above.
    pub(crate) fn new(s: &str) -> Option<Self> {
        is_identifier(s).then(|| Self(s.to_owned()))
    }

    /// The whole id.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 characters (the text line's short id, as `docker ps` shows it). The id
    /// is ASCII, so every byte is a character boundary.
    pub(crate) fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl std::ops::Deref for ContainerId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Tests build origins by hand from literal ids; a literal that is not an id is a bug in
/// the test.
#[cfg(test)]
impl From<&str> for ContainerId {
    fn from(s: &str) -> Self {
        Self::new(s).unwrap_or_else(|| panic!("not a container id: {s:?}"))
    }
}

/// containerd's identifier grammar (ids and namespaces): ASCII letters and digits in runs
/// joined by single `.`, `_` or `-`, at most 76 characters. No `/`, no `..`, no leading dot:
/// safe as one path component.
pub(super) fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_ID_LEN {
        return false;
    }
    let mut prev_sep = true; // the start counts as after a separator: no leading separator
    for &c in b {
        if c.is_ascii_alphanumeric() {
            prev_sep = false;
        } else if matches!(c, b'.' | b'_' | b'-') && !prev_sep {
            prev_sep = true;
        } else {
            return false;
        }
    }
    !prev_sep
}

/// A Kubernetes object name as the API server admits it for namespaces, pods and
/// containers: lowercase letters, digits, `-` and `.`, starting and ending with a letter or
/// digit, at most 253 characters. Bundle annotations and pod log directory names are
/// written by root, but from names a cluster user chose; anything else is not a pod name.
pub(super) fn is_k8s_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_K8S_NAME_LEN
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A pod's uid as kubelet names it: 36 characters of hex digits and dashes.
pub(super) fn is_pod_uid(s: &str) -> bool {
    s.len() == 36 && s.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "b924c0e5a0e0d2c4f1c9a8b3e7d6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d70a";

    #[test]
    fn runtime_ids_are_accepted() {
        for id in [HEX, "abc123", "my-app.v2_1", "a", &"x".repeat(76)] {
            let c = ContainerId::new(id).unwrap_or_else(|| panic!("{id}"));
            assert_eq!(c.as_str(), id);
        }
        assert_eq!(ContainerId::new(HEX).unwrap().short(), "b924c0e5a0e0");
        assert_eq!(ContainerId::new("short").unwrap().short(), "short");
    }

    /// The measured attacks: a non-ASCII id (sliced at byte 12 it panicked the daemon) and
    /// a path id (joined to the state directory it read a user's config.json).
    #[test]
    fn hostile_ids_are_refused() {
        for id in [
            "",
            "aéééééééééé",
            "aaaaaaaaaaaé",
            "../../../../tmp/x",
            "/tmp/x",
            "a/b",
            "..",
            ".hidden",
            "a..b",
            "trailing-",
            "-leading",
            "a b",
            "a\nb",
            "a\0",
            "a:b",
            &"x".repeat(77),
            "ＡＢＣ",
        ] {
            assert_eq!(ContainerId::new(id), None, "{id:?}");
        }
    }

    #[test]
    fn k8s_names() {
        for ok in ["shop", "web-1", "kube-system", "a.b-c", "app"] {
            assert!(is_k8s_name(ok), "{ok}");
        }
        for bad in [
            "", "Shop", "web_1", "-a", "a-", "a b", "a\nb", "a/b", "pod:x", "é",
        ] {
            assert!(!is_k8s_name(bad), "{bad:?}");
        }
        assert!(!is_k8s_name(&"a".repeat(254)));
        assert!(is_pod_uid("0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"));
        assert!(!is_pod_uid("0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5é"));
    }
}
