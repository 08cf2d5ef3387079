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

/// Longest image reference taken: a name of at most 255 characters (the distribution
/// grammar's `NameTotalLengthMax`), a tag of at most 128, and a sha512 digest.
const MAX_IMAGE_REF_LEN: usize = 255 + 1 + 128 + 1 + 7 + 128;

/// An image reference as the distribution grammar (`github.com/distribution/reference`,
/// `regexp.go`) writes it: `[domain[:port]/]path[:tag][@algorithm:hex]`, e.g.
/// `docker.io/library/nginx:1.25`, `123456789012.dkr.ecr.eu-west-1.amazonaws.com/app@sha256:
/// <64 hex>`, `localhost:5000/a/b`. The runtime writes it into the bundle's annotations
/// from the pod spec a cluster user wrote (or containerd's own image name): only that
/// grammar passes, ASCII without spaces, controls or `..`, at most [`MAX_IMAGE_REF_LEN`]
/// bytes; an IPv6 registry (`[::1]:5000/x`) does not. Anything else is no image.
pub(super) fn is_image_ref(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_IMAGE_REF_LEN || !s.is_ascii() {
        return false;
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if !digest.is_none_or(is_digest) {
        return false;
    }
    // A tag is after the last `:` that follows the last `/` (a `:` before it is a port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest.rfind(':') {
        Some(i) if i >= last_slash => (rest.get(..i), rest.get(i + 1..)),
        _ => (Some(rest), None),
    };
    let Some(name) = name else { return false };
    if name.len() > 255 || !tag.is_none_or(is_tag) {
        return false;
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first of several components is a registry when it looks like a host (the
    // grammar's rule: a `.` or `:`, or `localhost`, or an upper-case letter).
    if parts.len() > 1
        && parts.first().is_some_and(|d| {
            d.contains(['.', ':']) || *d == "localhost" || d.bytes().any(|b| b.is_ascii_uppercase())
        })
    {
        let domain = parts.remove(0);
        if !is_domain(domain) {
            return false;
        }
    }
    parts.iter().all(|p| is_path_component(p))
}

/// `host[:port]`: host components `[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?` joined by `.`.
fn is_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    host.split('.').all(label_ok)
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_path_component(p: &str) -> bool {
    let b = p.as_bytes();
    if !(b
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.last()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
    {
        return false;
    }
    // Separators between alphanumeric runs: `.`, `_`, `__`, or any run of `-`.
    let mut sep = String::new();
    for &c in b {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if !matches!(sep.as_str(), "" | "." | "_" | "__") && !sep.bytes().all(|s| s == b'-') {
                return false;
            }
            sep.clear();
        } else if matches!(c, b'.' | b'_' | b'-') {
            sep.push(char::from(c));
        } else {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    b.len() <= 128
        && b.first().is_some_and(word)
        && b.iter().all(|c| word(c) || matches!(c, b'.' | b'-'))
}

/// `algorithm:encoded`: `[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}` (bounded by the
/// reference's length).
fn is_digest(d: &str) -> bool {
    let Some((alg, hex)) = d.split_once(':') else {
        return false;
    };
    let alg_ok = alg.split(['+', '.', '_', '-']).all(|p| {
        !p.is_empty()
            && p.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    alg_ok
        && hex.len() >= 32
        && hex
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'=' | b'_' | b'-'))
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
    fn image_refs() {
        let sha = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for ok in [
            "nginx".to_string(),
            "nginx:1.25".into(),
            "docker.io/library/nginx:1.25.3-alpine".into(),
            "registry.k8s.io/pause:3.9".into(),
            "602401143452.dkr.ecr.us-west-2.amazonaws.com/amazon-k8s-cni:v1.18.1-eksbuild.1".into(),
            "public.ecr.aws/eks-distro/kubernetes/kube-proxy:v1.29.0-eks-1-29-1".into(),
            "localhost:5000/team/app".into(),
            "ghcr.io/org/my__app/sub.dir/x--y:TAG_1".into(),
            format!("docker.io/library/busybox@{sha}"),
            format!("quay.io/org/app:v1@{sha}"),
            // containerd 1.x writes its image name, which may be the image's digest id.
            sha.into(),
            "busybox:latest".into(),
        ] {
            assert!(is_image_ref(&ok), "{ok}");
        }
        for bad in [
            "".to_string(),
            " nginx".into(),
            "nginx latest".into(),
            "nginx\n:1".into(),
            "Nginx".into(),
            "docker.io/Library/nginx".into(),
            "../../etc/passwd".into(),
            "a//b".into(),
            "a/b/".into(),
            "-a".into(),
            "a.-b".into(),
            "nginx:".into(),
            "nginx:-x".into(),
            format!("nginx:{}", "t".repeat(129)),
            "nginx@sha256:short".into(),
            "nginx@:0123456789abcdef0123456789abcdef".into(),
            "[::1]:5000/x".into(),
            "host:99999999/x".into(),
            "é/nginx".into(),
            "ngïnx".into(),
            "pod:x container:y".into(),
            "x".repeat(MAX_IMAGE_REF_LEN + 1),
            format!("{}/a", "a".repeat(256)),
        ] {
            assert!(!is_image_ref(&bad), "{bad:?}");
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
