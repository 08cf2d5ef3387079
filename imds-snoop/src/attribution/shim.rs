//! Whether an ancestor named `containerd-shim...` is containerd's shim, judged only by what
//! is readable without CAP_SYS_PTRACE (a shim's `cwd` is its bundle, but reading another
//! process's `cwd` or `exe` needs ptrace, which the daemon does not have):
//!
//! 1. its `/proc/<pid>/cmdline` (world-readable, exact words) is
//!    `containerd-shim-* ... -namespace <ns> -id <id> -address <socket>` with a namespace
//!    and an id that containerd could have made ([`is_identifier`], [`ContainerId`]), and an
//!    absolute socket path without `..`;
//! 2. it runs as the trusted uid (root): every field of `Uid:` in `/proc/<pid>/status`;
//! 3. the socket, where it is visible, is a socket owned by root: the runtime's, not one a
//!    user made (a DaemonSet mounts only task directories, not the socket: handing a pod
//!    containerd's socket would be worse; there 2, 4 and 5 carry the weight);
//! 4. the runtime keeps its tasks next to that socket (`<dir of socket>/
//!    io.containerd.runtime.v2.task/<ns>/<id>/`, so `/run/containerd/containerd.sock` ->
//!    `/run/containerd/...`, k3s's `/run/k3s/containerd/containerd.sock` ->
//!    `/run/k3s/containerd/...`): every directory on the way and the bundle's `config.json`
//!    and `init.pid` are root's, none a symlink;
//! 5. the bundle's `init.pid` names a process whose parent is this shim. That binds the
//!    claimed id to this very process: a root process that borrows another pod's id and the
//!    real socket still is not that container's parent.
//!
//! A process that only names itself `containerd-shim` (anyone can copy a binary to that
//! name, and pass any argv) fails 2 at the latest and gives nothing.

// Untrusted text: no byte-offset slicing of `str` here.
#![warn(clippy::string_slice)]

use std::{
    fs,
    io::Read as _,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Component, Path, PathBuf},
};

use super::container_id::{ContainerId, is_identifier};

/// containerd's v2 task directory, under its state directory.
pub(super) const TASK_DIR: &str = "io.containerd.runtime.v2.task";
/// Bound on what is read of a small root-owned file (`init.pid`) or a bundle's
/// `config.json` (a few KiB; environment and mounts can make it larger).
pub(super) const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// A shim that checked out: the sandbox (or container) it runs, and where its runtime keeps
/// the bundles of all its tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Shim {
    pub id: ContainerId,
    /// `<state>/io.containerd.runtime.v2.task`: bundles are `<task_root>/<ns>/<id>/`.
    pub task_root: PathBuf,
    /// The shim's own bundle: `<task_root>/<ns>/<id>/`.
    pub bundle: PathBuf,
}

/// What a shim's argv claims, before anything is checked.
#[derive(Debug, PartialEq, Eq)]
struct Claim {
    namespace: String,
    id: ContainerId,
    address: PathBuf,
}

/// The claim in a shim's NUL-separated cmdline, if it is shaped like one.
fn claim(cmdline: &[u8]) -> Option<Claim> {
    let words: Vec<&[u8]> = cmdline
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .collect();
    let program = words.first()?;
    let name = program.rsplit(|&b| b == b'/').next()?;
    if !name.starts_with(b"containerd-shim") {
        return None;
    }
    let flag = |f: &[u8]| {
        words
            .windows(2)
            .find(|pair| pair.first() == Some(&f))
            .and_then(|pair| pair.get(1))
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    let namespace = flag(b"-namespace").filter(|ns| is_identifier(ns))?;
    let id = ContainerId::new(flag(b"-id")?)?;
    let address = Path::new(flag(b"-address")?);
    let plain = address.is_absolute()
        && address
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    plain.then(|| Claim {
        namespace: namespace.to_owned(),
        id,
        address: address.to_owned(),
    })
}

/// Whether every `Uid:` field (real, effective, saved, filesystem) of a `/proc/<pid>/status`
/// is `owner`. A setuid program keeps its caller's real uid, so it does not pass.
fn runs_as(status: &str, owner: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            ids.len() == 4 && ids.iter().all(|id| id.parse::<u32>() == Ok(owner))
        })
}

/// The parent pid in a `/proc/<pid>/stat` line (after the last `)`: comm may hold any byte).
fn ppid_of(stat: &[u8]) -> Option<u32> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `dir` is a directory owned by `owner`, not a symlink.
pub(super) fn trusted_dir(dir: &Path, owner: u32) -> bool {
    fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_dir() && m.uid() == owner)
}

/// The bytes of `file` (at most `max`) if it is a regular file owned by `owner`, not a
/// symlink. Its directories are the caller's to check.
pub(super) fn read_trusted(file: &Path, owner: u32, max: u64) -> Option<Vec<u8>> {
    let m = fs::symlink_metadata(file).ok()?;
    if !m.file_type().is_file() || m.uid() != owner || m.len() > max {
        return None;
    }
    let mut bytes = Vec::new();
    fs::File::open(file)
        .ok()?
        .take(max)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// Checks the ancestor `pid` as described in the module comment. `proc_root`: the node's
/// /proc; `node_root`: where the node's `/` is (paths a shim names are the node's);
/// `owner`: the uid the runtime's state and the shim belong to (root); `configured_root`:
/// the task root the flags name (`--containerd-root`), tried after the one next to the
/// shim's socket, for a containerd whose `state =` is not beside its socket.
pub(super) fn validate(
    proc_root: &Path,
    node_root: &Path,
    owner: u32,
    pid: u32,
    configured_root: &Path,
) -> Option<Shim> {
    let proc_dir = proc_root.join(pid.to_string());
    let mut cmdline = Vec::new();
    fs::File::open(proc_dir.join("cmdline"))
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut cmdline)
        .ok()?;
    let claim = claim(&cmdline)?;
    if !runs_as(&fs::read_to_string(proc_dir.join("status")).ok()?, owner) {
        return None;
    }
    let socket = node_root.join(claim.address.strip_prefix("/").ok()?);
    match fs::symlink_metadata(&socket) {
        Ok(m) if !m.file_type().is_socket() || m.uid() != owner => return None,
        _ => {}
    }
    let beside_socket = socket.parent()?.join(TASK_DIR);
    let (task_root, bundle) = [beside_socket.as_path(), configured_root]
        .into_iter()
        .find_map(|task_root| {
            let ns_dir = task_root.join(&claim.namespace);
            let bundle = ns_dir.join(claim.id.as_str());
            [task_root, ns_dir.as_path(), bundle.as_path()]
                .iter()
                .all(|d| trusted_dir(d, owner))
                .then(|| (task_root.to_path_buf(), bundle))
        })?;
    read_trusted(&bundle.join("config.json"), owner, MAX_CONFIG_BYTES)?;
    let init = read_trusted(&bundle.join("init.pid"), owner, 32)?;
    let init: u32 = std::str::from_utf8(&init).ok()?.trim().parse().ok()?;
    let stat = fs::read(proc_root.join(init.to_string()).join("stat")).ok()?;
    (ppid_of(&stat)? == pid).then_some(Shim {
        id: claim.id,
        task_root,
        bundle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "b924c0e5a0e0d2c4f1c9a8b3e7d6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d70a";

    fn nul(words: &[&str]) -> Vec<u8> {
        let mut v = words.join("\0").into_bytes();
        v.push(0);
        v
    }

    #[test]
    fn claims_of_real_and_fake_shims() {
        let real = nul(&[
            "/usr/bin/containerd-shim-runc-v2",
            "-namespace",
            "k8s.io",
            "-id",
            ID,
            "-address",
            "/run/k3s/containerd/containerd.sock",
        ]);
        assert_eq!(
            claim(&real),
            Some(Claim {
                namespace: "k8s.io".into(),
                id: ID.into(),
                address: "/run/k3s/containerd/containerd.sock".into(),
            })
        );
        let with = |id: &str, addr: &str| {
            claim(&nul(&[
                "/tmp/containerd-shim-x",
                "-namespace",
                "k8s.io",
                "-id",
                id,
                "-address",
                addr,
            ]))
        };
        assert!(with("aéééééééééé", "/run/containerd/containerd.sock").is_none());
        assert!(with("../../../tmp/evil", "/run/containerd/containerd.sock").is_none());
        assert!(with(ID, "/run/containerd/../../tmp/c.sock").is_none());
        assert!(with(ID, "relative.sock").is_none());
        assert!(claim(&nul(&["/bin/bash", "-c", "x", "-id", ID])).is_none());
        assert!(claim(b"containerd-shim\0-id\0").is_none());
        assert!(claim(b"").is_none());
    }

    #[test]
    fn uid_and_stat_parsing() {
        assert!(runs_as("Name:\tx\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n", 0));
        // setuid root: real uid stays the caller's.
        assert!(!runs_as("Uid:\t65534\t0\t0\t0\n", 0));
        assert!(!runs_as("Uid:\t0\t0\n", 0));
        assert!(!runs_as("", 0));
        assert_eq!(ppid_of(b"42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(ppid_of(b"42 (sleep) S 4100 1 1"), Some(4100));
        assert_eq!(ppid_of("42 (é) S".as_bytes()), None);
        assert_eq!(ppid_of(b"garbage"), None);
    }
}
