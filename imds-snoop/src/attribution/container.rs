//! Which container and pod a caller runs in, from node-local state only (no API server):
//!
//! 1. the cgroup path: `/proc/<pid>/cgroup` of the caller or, when it has exited, of its
//!    nearest living ancestor; failing that, the kernel-recorded cgroup id looked up under
//!    /sys/fs/cgroup (a cgroup v2 directory's inode number is its id). The path names the
//!    container id, the runtime and the pod UID (`.../kubepods-burstable-pod<uid>.slice/
//!    cri-containerd-<id>.scope`, `.../kubepods/burstable/pod<uid>/<id>`, `docker-<id>.scope`,
//!    `crio-<id>.scope`), or the systemd unit of a host process.
//! 2. the runtime's bundle for that id: containerd's
//!    `<containerd-root>/<namespace>/<id>/config.json` carries the CRI annotations
//!    (`io.kubernetes.cri.sandbox-namespace`, `-name`, `container-name`); CRI-O's carries
//!    `io.kubernetes.pod.namespace`, `.name`, `io.kubernetes.container.name`.
//! 3. kubelet's `/var/log/pods/<namespace>_<pod>_<uid>/<container>/` as a fallback, by pod UID.
//!
//! Each container id is looked up once and cached (bounded), and so is the origin of each
//! kernel-recorded cgroup id once /proc's path for it is proven to be that cgroup (its
//! directory's inode is the id), so a caller's cgroup file is not read for every event.
//!
//! Every name here was chosen by someone: ids, namespaces and pod names go through
//! `container_id` (the shapes runtimes and Kubernetes make, else nothing), bundles are read
//! only from root-owned directories under a runtime's task root (the configured one, or one
//! a validated shim led to, see `shim`), never through a symlink, and a cgroup a user owns
//! (a delegated subtree) names no container.

// Untrusted text: no byte-offset slicing, no indexing that can panic.
#![warn(clippy::indexing_slicing, clippy::string_slice)]

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    container_id::{ContainerId, is_identifier, is_image_ref, is_k8s_name, is_pod_uid},
    shim::{self, MAX_CONFIG_BYTES, Shim, read_trusted, trusted_dir},
};

/// Where a call came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Origin {
    Container(Container),
    Host {
        unit: Option<String>,
    },
    /// No cgroup could be found (the caller and its ancestors were gone, no cgroup v2).
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Container {
    pub id: ContainerId,
    pub runtime: &'static str,
    pub pod_uid: Option<String>,
    pub pod: Option<Pod>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Pod {
    pub namespace: String,
    pub name: String,
    pub container: Option<String>,
    /// The container's image, from the bundle's annotations (see [`pod_from_config`]):
    /// a validated image reference.
    pub image: Option<String>,
}

impl Pod {
    /// The workload guessed from the pod's name (`imds_snoop_line::workload`): a prefix of
    /// the validated name, so itself a name Kubernetes could make.
    pub(crate) fn workload(&self) -> &str {
        imds_snoop_line::workload::guess(&self.name)
    }
}

/// What a cgroup path says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CgroupInfo {
    Container {
        id: ContainerId,
        runtime: &'static str,
        pod_uid: Option<String>,
    },
    Host {
        unit: Option<String>,
    },
}

/// Reads a cgroup path (the part after `0::` in /proc/<pid>/cgroup).
pub(super) fn parse_cgroup_path(path: &str) -> CgroupInfo {
    let mut pod_uid = None;
    let mut container = None;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if let Some(uid) = pod_segment(seg) {
            pod_uid = Some(uid);
            continue;
        }
        if let Some(found) = container_segment(seg, pod_uid.is_some()) {
            container = Some(found);
        }
    }
    if let Some((id, runtime)) = container {
        return CgroupInfo::Container {
            id,
            runtime,
            pod_uid,
        };
    }
    // A host process: report its systemd unit (service or scope), if any.
    let unit = path
        .rsplit('/')
        .find(|s| s.ends_with(".service") || s.ends_with(".scope"))
        .map(str::to_owned);
    CgroupInfo::Host { unit }
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _>.slice` (systemd).
fn pod_segment(seg: &str) -> Option<String> {
    let rest = seg.strip_suffix(".slice").unwrap_or(seg);
    let (before, uid) = rest.rsplit_once("pod")?;
    if !(before.is_empty() || before.starts_with("kubepods")) {
        return None;
    }
    let uid = uid.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// `cri-containerd-<id>.scope`, `docker-<id>.scope`, `crio-<id>.scope`, `crio-conmon-...`
/// (skipped: that is the monitor), or a bare 64-hex id under a pod.
fn container_segment(seg: &str, under_pod: bool) -> Option<(ContainerId, &'static str)> {
    let name = seg.strip_suffix(".scope").unwrap_or(seg);
    for (prefix, runtime) in [
        ("cri-containerd-", "containerd"),
        ("docker-", "docker"),
        ("crio-", "cri-o"),
    ] {
        if let Some(id) = name.strip_prefix(prefix)
            && is_cri_id(id)
        {
            return Some((ContainerId::new(id)?, runtime));
        }
    }
    if !(under_pod && is_cri_id(name)) {
        return None;
    }
    Some((ContainerId::new(name)?, "containerd"))
}

/// The ids CRI runtimes and docker give containers: 64 lowercase hex digits.
fn is_cri_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The cgroup path in a /proc/<pid>/cgroup file: the first line whose path names a
/// container (v2's `0::` line or any v1 controller: on hybrid hosts they can differ), else
/// the v2 path, else the first line's.
pub(super) fn cgroup_path_of(proc_cgroup: &str) -> Option<String> {
    let paths: Vec<(&str, &str)> = proc_cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hier = parts.next()?;
            let path = parts.nth(1)?;
            Some((hier, path))
        })
        .collect();
    paths
        .iter()
        .find(|(_, p)| matches!(parse_cgroup_path(p), CgroupInfo::Container { .. }))
        .or_else(|| paths.iter().find(|(h, _)| *h == "0"))
        .or_else(|| paths.first())
        .map(|(_, p)| (*p).to_owned())
}

/// Node paths the resolver reads; configurable for a DaemonSet that mounts the host's.
/// `Paths::default()` is the node's own (`/proc`, `/sys/fs/cgroup`, ...); [`Paths::under`]
/// puts them under another root (a fake tree in tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Paths {
    /// procfs: `/proc/<pid>/cmdline` (argv), `/proc/<pid>/cgroup` (the caller's cgroup).
    pub proc_root: PathBuf,
    /// The cgroup mount (`/sys/fs/cgroup`; its `unified/` on hybrid hosts): a cgroup id is
    /// the inode number of a v2 directory there.
    pub cgroup_root: PathBuf,
    /// containerd's task state: `/run/containerd/io.containerd.runtime.v2.task`.
    pub containerd_root: PathBuf,
    /// CRI-O's container state: `/run/containers/storage/overlay-containers`.
    pub crio_root: PathBuf,
    /// The kubelet's pod logs, `/var/log/pods/<namespace>_<name>_<uid>/`: a pod's namespace
    /// and name from its uid when the runtime's state has none.
    pub pod_logs: PathBuf,
    /// Where the node's `/` is: paths that node processes name (a shim's `-address`) are
    /// looked up under it.
    pub node_root: PathBuf,
    /// The uid that owns the runtimes' state and runs their shims (root). Bundles, pod log
    /// directories, shims and container cgroups owned by anyone else name nothing.
    pub owner: u32,
}

impl Paths {
    /// The default paths under `root` instead of `/`: `<root>/proc`, `<root>/sys/fs/cgroup`,
    /// containerd's and CRI-O's state under `<root>/run`, `<root>/var/log/pods`. For a host
    /// tree mounted elsewhere, and for a fake tree in tests. `Paths::under("/")` is
    /// `Paths::default()`. The pipeline's tests and its fuzz target read fake trees so.
    pub(crate) fn under(root: &Path) -> Self {
        let d = Self::default();
        let at = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        Self {
            proc_root: at(&d.proc_root),
            cgroup_root: at(&d.cgroup_root),
            containerd_root: at(&d.containerd_root),
            crio_root: at(&d.crio_root),
            pod_logs: at(&d.pod_logs),
            node_root: root.to_owned(),
            owner: d.owner,
        }
    }
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            proc_root: "/proc".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            containerd_root: "/run/containerd/io.containerd.runtime.v2.task".into(),
            crio_root: "/run/containers/storage/overlay-containers".into(),
            pod_logs: "/var/log/pods".into(),
            node_root: "/".into(),
            owner: 0,
        }
    }
}

/// Bound on cached container ids and cgroup ids (a node runs a few hundred containers).
const MAX_CACHED: usize = 4096;
/// How long an origin is reused for its cgroup id (a cgroup id is never reused, but a pod's
/// bundle may appear after its first call, and a cgroup can be renamed).
const ORIGIN_TTL: Duration = Duration::from_secs(10);
/// The same for a container whose pod is not known yet: look again soon.
const PODLESS_ORIGIN_TTL: Duration = Duration::from_secs(1);

/// Task roots learned from validated shims (a node runs one or two containerds).
const MAX_TASK_ROOTS: usize = 8;
/// How long a shim's verdict is reused for its pid (a shim lives as long as its pod).
const SHIM_TTL: Duration = Duration::from_secs(10);

pub(super) struct Resolver {
    paths: Paths,
    pods: HashMap<ContainerId, Option<Pod>>,
    cgroup_paths: HashMap<u64, Option<String>>,
    origins: HashMap<u64, (Origin, Instant)>,
    v2_root: Option<PathBuf>,
    /// containerd task roots besides the configured one, each found through a validated
    /// shim's `-address` (k3s, RKE2, microk8s, any `state =`): no flag needed.
    task_roots: Vec<PathBuf>,
    /// Verdicts on shim pids, so a shim's files are read once per [`SHIM_TTL`].
    shims: HashMap<u32, (Option<Shim>, Instant)>,
}

impl Resolver {
    pub(super) fn new(paths: Paths) -> Self {
        Self {
            paths,
            pods: HashMap::new(),
            cgroup_paths: HashMap::new(),
            origins: HashMap::new(),
            v2_root: None,
            task_roots: Vec::new(),
            shims: HashMap::new(),
        }
    }

    /// The ancestor `pid`, if it is containerd's shim (see `shim`): its sandbox and task
    /// root. A task root found this way is remembered, so containers of that runtime are
    /// named by their cgroup's id too.
    pub(super) fn shim(&mut self, pid: u32, now: Instant) -> Option<Shim> {
        if let Some((verdict, at)) = self.shims.get(&pid)
            && now.duration_since(*at) < SHIM_TTL
        {
            return verdict.clone();
        }
        let p = &self.paths;
        let verdict = shim::validate(&p.proc_root, &p.node_root, p.owner, pid, &p.containerd_root);
        if let Some(s) = &verdict
            && s.task_root != self.paths.containerd_root
            && !self.task_roots.contains(&s.task_root)
        {
            if self.task_roots.len() >= MAX_TASK_ROOTS {
                self.task_roots.remove(0);
            }
            self.task_roots.push(s.task_root.clone());
            // Containers seen before without a pod may have their bundle there.
            self.origins
                .retain(|_, (o, _)| !matches!(o, Origin::Container(Container { pod: None, .. })));
        }
        if self.shims.len() >= MAX_CACHED {
            self.shims.clear();
        }
        self.shims.insert(pid, (verdict.clone(), now));
        verdict
    }

    /// Origin of a call by `pids` (caller first, then ancestors) in cgroup `cgroup_id`.
    pub(super) fn resolve(&mut self, pids: &[u32], cgroup_id: u64, now: Instant) -> Origin {
        if cgroup_id != 0
            && let Some((origin, at)) = self.origins.get(&cgroup_id)
        {
            let ttl = match origin {
                Origin::Container(Container { pod: None, .. }) => PODLESS_ORIGIN_TTL,
                _ => ORIGIN_TTL,
            };
            if now.duration_since(*at) < ttl {
                return origin.clone();
            }
        }
        let proc_root = self.paths.proc_root.clone();
        let read = |pid: &u32| {
            fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
                .ok()
                .and_then(|c| cgroup_path_of(&c))
        };
        // Only a path proven to be the kernel-recorded cgroup may be cached under its id: the
        // caller may have moved since its send, or (hybrid hosts) be named by a v1 path.
        let (path, cacheable) = match pids.first().and_then(read) {
            Some(p) => {
                let proven = self.is_cgroup(&p, cgroup_id);
                (Some(p), proven)
            }
            // The caller is gone (short-lived callers often are by now). The kernel's record
            // of its cgroup at send time comes before any ancestor's: the nearest ancestor of
            // a `ctr task exec`/`kubectl exec` process is runc or the shim, both in a host
            // cgroup, so an ancestor's cgroup named such a caller `host`. An ancestor's is
            // still the better clue where the id names no container: a cgroup v1 host (the v2
            // tree holds no containers) or a runc that left the v2 tree alone (hybrid).
            None => {
                let by_id = self.cgroup_path_by_id(cgroup_id);
                let container_by_id = by_id
                    .as_deref()
                    .is_some_and(|p| matches!(parse_cgroup_path(p), CgroupInfo::Container { .. }));
                match pids.iter().skip(1).find_map(read) {
                    Some(p) if !container_by_id => (Some(p), false),
                    _ => (by_id, true),
                }
            }
        };
        let Some(path) = path else {
            return Origin::Unknown;
        };
        let origin = self.origin_of(&path);
        if cacheable && cgroup_id != 0 {
            if self.origins.len() >= MAX_CACHED {
                self.origins.clear();
            }
            self.origins.insert(cgroup_id, (origin.clone(), now));
        }
        origin
    }

    /// Whether cgroup v2 `path` is the cgroup with id `id` (its directory's inode number).
    fn is_cgroup(&mut self, path: &str, id: u64) -> bool {
        if id == 0 {
            return false;
        }
        let dir = self.v2_root().join(path.trim_start_matches('/'));
        fs::metadata(dir).is_ok_and(|m| m.ino() == id)
    }

    /// The cgroup v2 mount: the cgroup root, or `unified/` under it on hybrid hosts. Only
    /// the v2 hierarchy: ids are inode numbers of its directories, and a v1 tree's inodes
    /// (another filesystem) could collide.
    fn v2_root(&mut self) -> &Path {
        self.v2_root.get_or_insert_with(|| {
            let root = &self.paths.cgroup_root;
            if root.join("cgroup.controllers").exists() {
                root.clone()
            } else {
                root.join("unified")
            }
        })
    }

    fn origin_of(&mut self, path: &str) -> Origin {
        match parse_cgroup_path(path) {
            CgroupInfo::Host { unit } => Origin::Host { unit },
            // A user can name a cgroup of a delegated subtree like a container's (and move
            // into it): a cgroup that exists and is not the runtime owner's names none.
            CgroupInfo::Container { .. } if self.user_cgroup(path) => Origin::Host { unit: None },
            CgroupInfo::Container {
                id,
                runtime,
                pod_uid,
            } => {
                let pod = self.pod(&id, pod_uid.as_deref());
                Origin::Container(Container {
                    id,
                    runtime,
                    pod_uid,
                    pod,
                })
            }
        }
    }

    /// Whether cgroup v2 `path` exists and belongs to someone other than the runtimes'
    /// owner (a delegated subtree: `user@<uid>.service/...`).
    fn user_cgroup(&mut self, path: &str) -> bool {
        let owner = self.paths.owner;
        let dir = self.v2_root().join(path.trim_start_matches('/'));
        fs::symlink_metadata(dir).is_ok_and(|m| m.uid() != owner)
    }

    /// Origin named by a validated containerd shim (when the cgroup said nothing): its
    /// sandbox, with the pod its own bundle names.
    pub(super) fn sandbox(&mut self, shim: &Shim) -> Origin {
        let pod = match self.pods.get(&shim.id) {
            Some(cached) => cached.clone(),
            None => read_trusted(
                &shim.bundle.join("config.json"),
                self.paths.owner,
                MAX_CONFIG_BYTES,
            )
            .and_then(|bytes| pod_from_config(&bytes)),
        };
        Origin::Container(Container {
            id: shim.id.clone(),
            runtime: "containerd",
            pod_uid: None,
            pod,
        })
    }

    fn pod(&mut self, id: &ContainerId, pod_uid: Option<&str>) -> Option<Pod> {
        if let Some(cached) = self.pods.get(id) {
            return cached.clone();
        }
        let pod = self
            .pod_from_bundle(id)
            .or_else(|| pod_uid.and_then(|uid| self.pod_from_logs(uid)));
        if self.pods.len() >= MAX_CACHED {
            self.pods.clear();
        }
        // A miss is cached too only when we found a pod; a container whose bundle is not
        // written yet gets another look next time.
        if pod.is_some() {
            self.pods.insert(id.clone(), pod.clone());
        }
        pod
    }

    /// The pod named by `id`'s bundle: CRI-O's `<crio_root>/<id>/userdata/config.json`, or
    /// containerd's `<task root>/<ns>/<id>/config.json` under the configured task root and
    /// those validated shims led to. `id` is a validated id (one path component); every
    /// directory below a root and the file itself must be the owner's and not symlinks.
    fn pod_from_bundle(&self, id: &ContainerId) -> Option<Pod> {
        let owner = self.paths.owner;
        let crio = self.paths.crio_root.join(id.as_str());
        let mut candidates = vec![(
            vec![crio.clone(), crio.join("userdata")],
            crio.join("userdata/config.json"),
        )];
        for root in std::iter::once(&self.paths.containerd_root).chain(&self.task_roots) {
            let Ok(namespaces) = fs::read_dir(root) else {
                continue;
            };
            for ns in namespaces.flatten() {
                let name = ns.file_name();
                if !name.to_str().is_some_and(is_identifier) {
                    continue;
                }
                let bundle = ns.path().join(id.as_str());
                candidates.push((vec![ns.path(), bundle.clone()], bundle.join("config.json")));
            }
        }
        candidates
            .iter()
            .filter(|(dirs, _)| dirs.iter().all(|d| trusted_dir(d, owner)))
            .find_map(|(_, file)| read_trusted(file, owner, MAX_CONFIG_BYTES))
            .and_then(|bytes| pod_from_config(&bytes))
    }

    /// kubelet's `<pod_logs>/<namespace>_<pod>_<uid>/`, owned by the owner, with names
    /// Kubernetes could have made.
    fn pod_from_logs(&self, pod_uid: &str) -> Option<Pod> {
        let suffix = format!("_{pod_uid}");
        fs::read_dir(&self.paths.pod_logs)
            .ok()?
            .flatten()
            .find_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (ns, pod) = name.strip_suffix(&suffix)?.split_once('_')?;
                if !(is_k8s_name(ns)
                    && is_k8s_name(pod)
                    && trusted_dir(&e.path(), self.paths.owner))
                {
                    return None;
                }
                Some(Pod {
                    namespace: ns.to_owned(),
                    name: pod.to_owned(),
                    container: None,
                    image: None,
                })
            })
    }

    /// The cgroup v2 directory whose inode is `id`, searched under the kubepods and system
    /// trees (bounded depth), cached.
    fn cgroup_path_by_id(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.cgroup_paths.get(&id) {
            return p.clone();
        }
        let v2 = self.v2_root().to_owned();
        let found = find_inode(&v2, id, 6).map(|p| {
            let rel = p.strip_prefix(&v2).unwrap_or(&p);
            format!("/{}", rel.display())
        });
        if self.cgroup_paths.len() >= MAX_CACHED {
            self.cgroup_paths.clear();
        }
        self.cgroup_paths.insert(id, found.clone());
        found
    }
}

fn find_inode(dir: &Path, ino: u64, depth: u32) -> Option<PathBuf> {
    if fs::metadata(dir).ok()?.ino() == ino {
        return Some(dir.to_owned());
    }
    if depth == 0 {
        return None;
    }
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| find_inode(&e.path(), ino, depth - 1))
}

/// The annotations that name a container's image: containerd's CRI plugin (since 1.5; the
/// reference the pod spec wrote from 2.0, containerd's image name before), CRI-O's.
/// Docker and cri-dockerd write none.
const IMAGE_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.image-name",
    "io.kubernetes.cri-o.ImageName",
];
/// A pod's sandbox (pause) container says so: its image is not the workload's.
const SANDBOX_IMAGE_ANNOTATION: &str = "io.kubernetes.cri.podsandbox.image-name";
const CONTAINER_TYPE_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
];

/// Pod identity from an OCI bundle's annotations (containerd CRI or CRI-O), with the
/// container's image when the runtime names it and the bundle is not a sandbox's.
pub(super) fn pod_from_config(bytes: &[u8]) -> Option<Pod> {
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        annotations: HashMap<String, String>,
    }
    let spec: Spec = serde_json::from_slice(bytes).ok()?;
    let a = &spec.annotations;
    // Written by the runtime, from names a cluster user chose: only Kubernetes names pass.
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| a.get(*k))
            .filter(|v| is_k8s_name(v))
            .cloned()
    };
    Some(Pod {
        namespace: get(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ])?,
        name: get(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"])?,
        container: get(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ]),
        image: image_from_annotations(a),
    })
}

/// The image of a workload container (not a sandbox), if its annotation holds an image
/// reference ([`is_image_ref`]); a hostile or broken value is no image.
fn image_from_annotations(a: &HashMap<String, String>) -> Option<String> {
    let sandbox = a.contains_key(SANDBOX_IMAGE_ANNOTATION)
        || CONTAINER_TYPE_ANNOTATIONS
            .iter()
            .any(|k| a.get(*k).is_some_and(|t| t == "sandbox"));
    if sandbox {
        return None;
    }
    IMAGE_ANNOTATIONS
        .iter()
        .find_map(|k| a.get(*k))
        .filter(|v| is_image_ref(v))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "b924c0e5a0e0d2c4f1c9a8b3e7d6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d70a";

    #[test]
    fn cgroup_v2_systemd_driver() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            parse_cgroup_path(&p),
            CgroupInfo::Container {
                id: ID.into(),
                runtime: "containerd",
                pod_uid: Some("0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b".into()),
            }
        );
    }

    #[test]
    fn cgroup_cgroupfs_driver_and_guaranteed_pod() {
        let p = format!("/kubepods/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/{ID}");
        let CgroupInfo::Container { id, pod_uid, .. } = parse_cgroup_path(&p) else {
            panic!("not a container: {p}");
        };
        assert_eq!(id.as_str(), ID);
        assert_eq!(
            pod_uid.as_deref(),
            Some("0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b")
        );
    }

    #[test]
    fn docker_and_crio_scopes() {
        let d = parse_cgroup_path(&format!("/system.slice/docker-{ID}.scope"));
        assert!(
            matches!(
                d,
                CgroupInfo::Container {
                    runtime: "docker",
                    ..
                }
            ),
            "{d:?}"
        );
        let c = parse_cgroup_path(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b.slice/crio-{ID}.scope"
        ));
        assert!(
            matches!(
                c,
                CgroupInfo::Container {
                    runtime: "cri-o",
                    pod_uid: Some(_),
                    ..
                }
            ),
            "{c:?}"
        );
    }

    #[test]
    fn host_process_gets_its_unit() {
        assert_eq!(
            parse_cgroup_path("/system.slice/amazon-ssm-agent.service"),
            CgroupInfo::Host {
                unit: Some("amazon-ssm-agent.service".into())
            }
        );
        assert_eq!(parse_cgroup_path("/"), CgroupInfo::Host { unit: None });
    }

    /// Real files: a container run by containerd 1.6 + runc on a hybrid (v1 + v2) host, and
    /// a host process there (tests/fixtures/cgroup/).
    #[test]
    fn real_proc_cgroup_files() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/cgroup/");
        let c = fs::read_to_string(format!("{fixtures}containerd-cgroupfs-hybrid.txt")).unwrap();
        let CgroupInfo::Container {
            id,
            runtime,
            pod_uid,
        } = parse_cgroup_path(&cgroup_path_of(&c).unwrap())
        else {
            panic!("container not recognised in {c}");
        };
        assert_eq!(
            id.as_str(),
            "abc123def4567890abc123def4567890abc123def4567890abc123def4567890"
        );
        assert_eq!(runtime, "containerd");
        assert_eq!(
            pod_uid.as_deref(),
            Some("0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b")
        );
        let h = fs::read_to_string(format!("{fixtures}host-hybrid.txt")).unwrap();
        assert!(matches!(
            parse_cgroup_path(&cgroup_path_of(&h).unwrap()),
            CgroupInfo::Host { .. }
        ));
    }

    /// A real bundle written by containerd 1.6 for a container with a pod's CRI annotations.
    #[test]
    fn real_containerd_bundle() {
        let bytes = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/containerd/config.json"
        ));
        assert_eq!(
            pod_from_config(bytes),
            Some(Pod {
                namespace: "shop".into(),
                name: "web-1".into(),
                container: Some("app".into()),
                image: None,
            })
        );
    }

    #[test]
    fn proc_cgroup_v1_and_v2_files() {
        let v1 = format!(
            "12:pids:/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/{ID}\n11:memory:/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/{ID}\n1:name=systemd:/kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b/{ID}\n"
        );
        assert!(cgroup_path_of(&v1).unwrap().ends_with(ID));
        assert_eq!(
            cgroup_path_of("0::/system.slice/sshd.service\n").as_deref(),
            Some("/system.slice/sshd.service")
        );
    }

    #[test]
    fn paths_under_a_root() {
        assert_eq!(Paths::under(Path::new("/")), Paths::default());
        let p = Paths::under(Path::new("/host"));
        assert_eq!(p.proc_root, Path::new("/host/proc"));
        assert_eq!(p.cgroup_root, Path::new("/host/sys/fs/cgroup"));
        assert_eq!(
            p.containerd_root,
            Path::new("/host/run/containerd/io.containerd.runtime.v2.task")
        );
        assert_eq!(
            p.crio_root,
            Path::new("/host/run/containers/storage/overlay-containers")
        );
        assert_eq!(p.pod_logs, Path::new("/host/var/log/pods"));
    }

    #[test]
    fn pod_from_containerd_and_crio_annotations() {
        let containerd = br#"{"ociVersion":"1.1.0","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-name":"web-7d9f","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.container-name":"app"}}"#;
        assert_eq!(
            pod_from_config(containerd),
            Some(Pod {
                namespace: "shop".into(),
                name: "web-7d9f".into(),
                container: Some("app".into()),
                image: None,
            })
        );
        let crio = br#"{"annotations":{"io.kubernetes.pod.name":"p","io.kubernetes.pod.namespace":"n","io.kubernetes.container.name":"c"}}"#;
        assert_eq!(pod_from_config(crio).unwrap().name, "p");
        assert_eq!(pod_from_config(br#"{"annotations":{}}"#), None);
        assert_eq!(pod_from_config(b"not json"), None);
    }

    /// The image: containerd's and CRI-O's annotation, validated; none for a sandbox
    /// (pause) container, for docker's bundles, or for what is not an image reference.
    #[test]
    fn image_from_the_runtimes_annotations() {
        let bundle = |extra: &str| {
            format!(
                r#"{{"annotations":{{"io.kubernetes.cri.sandbox-name":"web-7d9f8b6c5-x2k4p","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.container-name":"app"{extra}}}}}"#
            )
        };
        let image = |extra: &str| pod_from_config(bundle(extra).as_bytes()).unwrap().image;
        assert_eq!(
            image(r#","io.kubernetes.cri.container-type":"container","io.kubernetes.cri.image-name":"docker.io/library/nginx:1.25""#)
                .as_deref(),
            Some("docker.io/library/nginx:1.25")
        );
        let pod = pod_from_config(
            bundle(r#","io.kubernetes.cri.image-name":"registry.k8s.io/app:v1""#).as_bytes(),
        )
        .unwrap();
        assert_eq!(pod.workload(), "web");
        // The sandbox: its pause image is no workload's.
        assert_eq!(
            image(
                r#","io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.podsandbox.image-name":"registry.k8s.io/pause:3.9""#
            ),
            None
        );
        assert_eq!(
            image(
                r#","io.kubernetes.cri.podsandbox.image-name":"registry.k8s.io/pause:3.9","io.kubernetes.cri.image-name":"registry.k8s.io/pause:3.9""#
            ),
            None
        );
        // CRI-O.
        let crio = br#"{"annotations":{"io.kubernetes.pod.name":"db-0","io.kubernetes.pod.namespace":"n","io.kubernetes.container.name":"c","io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.cri-o.ImageName":"quay.io/org/db:15"}}"#;
        let pod = pod_from_config(crio).unwrap();
        assert_eq!(
            (pod.image.as_deref(), pod.workload()),
            (Some("quay.io/org/db:15"), "db")
        );
        let crio_infra = br#"{"annotations":{"io.kubernetes.pod.name":"db-0","io.kubernetes.pod.namespace":"n","io.kubernetes.cri-o.ContainerType":"sandbox","io.kubernetes.cri-o.ImageName":"registry.k8s.io/pause:3.9"}}"#;
        assert_eq!(pod_from_config(crio_infra).unwrap().image, None);
        // Hostile values: no image, the pod still named.
        for hostile in [
            "nginx\n[WARNING] imdsv1(!) (pid:1:x",
            "nginx pod:kube-system/x",
            "../../x",
            "ngïnx:1",
            "",
        ] {
            let v = serde_json::to_string(hostile).unwrap();
            let extra = format!(r#","io.kubernetes.cri.image-name":{v}"#);
            let pod = pod_from_config(bundle(&extra).as_bytes()).unwrap();
            assert_eq!(
                (pod.image, pod.name.as_str()),
                (None, "web-7d9f8b6c5-x2k4p"),
                "{hostile:?}"
            );
        }
        let long = format!(
            r#","io.kubernetes.cri.image-name":"{}""#,
            "a".repeat(100_000)
        );
        assert_eq!(image(&long), None);
        // Docker / cri-dockerd: no annotation.
        assert_eq!(image(""), None);
    }

    /// An origin is cached under the kernel's cgroup id only once /proc's path is proven to
    /// be that cgroup; then the caller's cgroup file is not read again until the TTL.
    #[test]
    fn origin_is_cached_by_proven_cgroup_id() {
        let root = std::env::temp_dir().join(format!("imds-origin-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let proc_dir = root.join("proc/4242");
        fs::create_dir_all(&proc_dir).unwrap();
        let cgroup = root.join("cgroup");
        fs::create_dir_all(cgroup.join("system.slice/a.service")).unwrap();
        fs::write(cgroup.join("cgroup.controllers"), "cpu\n").unwrap();
        let id = fs::metadata(cgroup.join("system.slice/a.service"))
            .unwrap()
            .ino();
        let set = |unit: &str| {
            fs::write(
                proc_dir.join("cgroup"),
                format!("0::/system.slice/{unit}\n"),
            )
            .unwrap()
        };
        let unit = |o: Origin| match o {
            Origin::Host { unit } => unit.unwrap(),
            other => panic!("{other:?}"),
        };
        let mut r = Resolver::new(Paths {
            proc_root: root.join("proc"),
            cgroup_root: cgroup.clone(),
            owner: fs::metadata(&root).unwrap().uid(),
            ..Paths::default()
        });
        let t0 = Instant::now();
        set("a.service");
        assert_eq!(unit(r.resolve(&[4242], id, t0)), "a.service");
        // Cached under the id: the file is not read again within the TTL.
        set("b.service");
        let t1 = t0 + ORIGIN_TTL / 2;
        assert_eq!(unit(r.resolve(&[4242], id, t1)), "a.service");
        // Another id, whose directory is not b.service's: read every time, never cached.
        assert_eq!(unit(r.resolve(&[4242], id + 1, t1)), "b.service");
        set("c.service");
        assert_eq!(unit(r.resolve(&[4242], id + 1, t1)), "c.service");
        // Past the TTL the id is looked at again.
        let t2 = t0 + ORIGIN_TTL;
        assert_eq!(unit(r.resolve(&[4242], id, t2)), "c.service");
        fs::remove_dir_all(&root).unwrap();
    }

    /// A caller gone before its call is attributed (wget run by `ctr task exec`, its parent
    /// runc in the shim's host cgroup): the kernel's cgroup id names its container, not the
    /// parent's cgroup. Where the id names no container (cgroup v1 host, or a runc that
    /// left the v2 tree alone), a parent inside the container still does. Measured before:
    /// 2 of 10 runs of tests/deploy/caps_test.sh logged such a pod call `host`.
    #[test]
    fn gone_caller_is_named_by_the_kernels_cgroup_id_before_its_parents() {
        let root = std::env::temp_dir().join(format!("imds-gone-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let pod = "kubepods/besteffort/pod0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
        let cgroup = root.join("cgroup");
        fs::create_dir_all(cgroup.join(pod).join(ID)).unwrap();
        fs::create_dir_all(cgroup.join("system.slice/containerd.service")).unwrap();
        fs::write(cgroup.join("cgroup.controllers"), "cpu\n").unwrap();
        let ino = |p: &str| fs::metadata(cgroup.join(p)).unwrap().ino();
        let container_id = ino(&format!("{pod}/{ID}"));
        let host_id = ino("system.slice/containerd.service");
        let proc = |pid: u32, cg: &str| {
            let d = root.join("proc").join(pid.to_string());
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cgroup"), cg).unwrap();
        };
        // 4242 (the caller) has no /proc entry; 41 is runc, 40 the caller's shell in the pod.
        proc(41, "0::/system.slice/containerd.service\n");
        proc(
            40,
            &format!("4:pids:/{pod}/{ID}\n0::/system.slice/containerd.service\n"),
        );
        let mut r = Resolver::new(Paths {
            proc_root: root.join("proc"),
            cgroup_root: cgroup.clone(),
            owner: fs::metadata(&root).unwrap().uid(),
            ..Paths::default()
        });
        let now = Instant::now();
        let id_of = |o: Origin| match o {
            Origin::Container(c) => c.id.as_str().to_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(id_of(r.resolve(&[4242, 41], container_id, now)), ID);
        // The id names the host: the parent inside the container is the better clue.
        assert_eq!(id_of(r.resolve(&[4242, 40], host_id, now)), ID);
        // Neither: the host, as the id says.
        assert!(matches!(
            r.resolve(&[4242, 41], host_id, now),
            Origin::Host { .. }
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn resolver_reads_bundle_and_falls_back_to_pod_logs() {
        let root = std::env::temp_dir().join(format!("imds-container-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let uid = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
        let pid = "4242";
        fs::create_dir_all(root.join("proc").join(pid)).unwrap();
        fs::write(
            root.join("proc").join(pid).join("cgroup"),
            format!("0::/kubepods/besteffort/pod{uid}/{ID}\n"),
        )
        .unwrap();
        let paths = Paths {
            proc_root: root.join("proc"),
            cgroup_root: root.join("cgroup"),
            containerd_root: root.join("containerd"),
            crio_root: root.join("crio"),
            pod_logs: root.join("pods"),
            node_root: root.clone(),
            owner: fs::metadata(&root).unwrap().uid(),
        };
        fs::create_dir_all(root.join(format!("pods/shop_web-1_{uid}/app"))).unwrap();
        let mut r = Resolver::new(paths);
        let Origin::Container(c) = r.resolve(&[4242], 0, Instant::now()) else {
            panic!("not a container");
        };
        assert_eq!(c.pod.as_ref().map(|p| p.name.as_str()), Some("web-1"));

        let bundle = root.join("containerd/k8s.io").join(ID);
        fs::create_dir_all(&bundle).unwrap();
        fs::write(
            bundle.join("config.json"),
            br#"{"annotations":{"io.kubernetes.cri.sandbox-name":"web-1","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.container-name":"app"}}"#,
        )
        .unwrap();
        let mut r = Resolver::new(r.paths.clone());
        let Origin::Container(c) = r.resolve(&[4242], 0, Instant::now()) else {
            panic!("not a container");
        };
        assert_eq!(c.pod.unwrap().container.as_deref(), Some("app"));
        assert_eq!(r.resolve(&[999_999], 0, Instant::now()), Origin::Unknown);
        fs::remove_dir_all(&root).unwrap();
    }
}
