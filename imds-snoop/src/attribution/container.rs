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
#![warn(clippy::indexing_slicing, clippy::string_slice)]

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

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
    pub id: String,
    pub runtime: &'static str,
    pub pod_uid: Option<String>,
    pub pod: Option<Pod>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Pod {
    pub namespace: String,
    pub name: String,
    pub container: Option<String>,
}

/// What a cgroup path says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CgroupInfo {
    Container {
        id: String,
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
    let (before, uid) = rest.split_at_checked(rest.rfind("pod")?)?;
    if !(before.is_empty() || before.starts_with("kubepods")) {
        return None;
    }
    let uid = uid.strip_prefix("pod")?.replace('_', "-");
    (uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(uid)
}

/// `cri-containerd-<id>.scope`, `docker-<id>.scope`, `crio-<id>.scope`, `crio-conmon-...`
/// (skipped: that is the monitor), or a bare 64-hex id under a pod.
fn container_segment(seg: &str, under_pod: bool) -> Option<(String, &'static str)> {
    let name = seg.strip_suffix(".scope").unwrap_or(seg);
    for (prefix, runtime) in [
        ("cri-containerd-", "containerd"),
        ("docker-", "docker"),
        ("crio-", "cri-o"),
    ] {
        if let Some(id) = name.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some((id.to_owned(), runtime));
        }
    }
    (is_container_id(name) && under_pod).then(|| (name.to_owned(), "containerd"))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
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

/// The id of a containerd shim's sandbox: `containerd-shim-runc-v2 -namespace k8s.io -id
/// <id> -address ...`, or the v1 shim's `-workdir .../<namespace>/<id>`.
pub(super) fn shim_id(argv: &str) -> Option<String> {
    let mut words = argv.split_whitespace();
    let first = words.next()?;
    if !first.rsplit('/').next()?.starts_with("containerd-shim") {
        return None;
    }
    let words: Vec<&str> = argv.split_whitespace().collect();
    for pair in words.windows(2) {
        match *pair {
            ["-id", id] => return Some(id.to_owned()),
            ["-workdir", dir] => return dir.rsplit('/').next().map(str::to_owned),
            _ => {}
        }
    }
    None
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
}

impl Paths {
    /// The default paths under `root` instead of `/`: `<root>/proc`, `<root>/sys/fs/cgroup`,
    /// containerd's and CRI-O's state under `<root>/run`, `<root>/var/log/pods`. For a host
    /// tree mounted elsewhere, and for a fake tree in tests. `Paths::under("/")` is
    /// `Paths::default()`.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "the pipeline's tests run on a fake tree; no flag mounts a host tree (yet)"
        )
    )]
    pub(crate) fn under(root: &Path) -> Self {
        let d = Self::default();
        let at = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        Self {
            proc_root: at(&d.proc_root),
            cgroup_root: at(&d.cgroup_root),
            containerd_root: at(&d.containerd_root),
            crio_root: at(&d.crio_root),
            pod_logs: at(&d.pod_logs),
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

pub(super) struct Resolver {
    paths: Paths,
    pods: HashMap<String, Option<Pod>>,
    cgroup_paths: HashMap<u64, Option<String>>,
    origins: HashMap<u64, (Origin, Instant)>,
    v2_root: Option<PathBuf>,
}

impl Resolver {
    pub(super) fn new(paths: Paths) -> Self {
        Self {
            paths,
            pods: HashMap::new(),
            cgroup_paths: HashMap::new(),
            origins: HashMap::new(),
            v2_root: None,
        }
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
            None => match pids.iter().skip(1).find_map(read) {
                Some(p) => (Some(p), false),
                None => (self.cgroup_path_by_id(cgroup_id), true),
            },
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

    /// Origin named by a containerd shim's sandbox id (when the cgroup said nothing).
    pub(super) fn sandbox(&mut self, id: String) -> Origin {
        let pod = self.pod(&id, None);
        Origin::Container(Container {
            id,
            runtime: "containerd",
            pod_uid: None,
            pod,
        })
    }

    fn pod(&mut self, id: &str, pod_uid: Option<&str>) -> Option<Pod> {
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
            self.pods.insert(id.to_owned(), pod.clone());
        }
        pod
    }

    fn pod_from_bundle(&self, id: &str) -> Option<Pod> {
        let mut candidates = vec![self.paths.crio_root.join(id).join("userdata/config.json")];
        if let Ok(namespaces) = fs::read_dir(&self.paths.containerd_root) {
            for ns in namespaces.flatten() {
                candidates.push(ns.path().join(id).join("config.json"));
            }
        }
        candidates
            .iter()
            .find_map(|p| fs::read(p).ok())
            .and_then(|bytes| pod_from_config(&bytes))
    }

    fn pod_from_logs(&self, pod_uid: &str) -> Option<Pod> {
        let suffix = format!("_{pod_uid}");
        fs::read_dir(&self.paths.pod_logs)
            .ok()?
            .flatten()
            .find_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (ns, pod) = name.strip_suffix(&suffix)?.split_once('_')?;
                Some(Pod {
                    namespace: ns.to_owned(),
                    name: pod.to_owned(),
                    container: None,
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

/// Pod identity from an OCI bundle's annotations (containerd CRI or CRI-O).
pub(super) fn pod_from_config(bytes: &[u8]) -> Option<Pod> {
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        annotations: HashMap<String, String>,
    }
    let spec: Spec = serde_json::from_slice(bytes).ok()?;
    let a = &spec.annotations;
    let get = |keys: &[&str]| keys.iter().find_map(|k| a.get(*k).cloned());
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
    })
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
        assert_eq!(id, ID);
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
            id,
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
                container: Some("app".into())
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
    fn shim_ids() {
        assert_eq!(
            shim_id(&format!("/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id {ID} -address /run/containerd/containerd.sock")).as_deref(),
            Some(ID)
        );
        assert_eq!(
            shim_id(&format!("containerd-shim -namespace moby -workdir /var/lib/containerd/io.containerd.runtime.v1.linux/moby/{ID} -address /run/containerd/containerd.sock")).as_deref(),
            Some(ID)
        );
        assert_eq!(shim_id("/bin/bash -id x"), None);
    }

    #[test]
    fn pod_from_containerd_and_crio_annotations() {
        let containerd = br#"{"ociVersion":"1.1.0","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-name":"web-7d9f","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.container-name":"app"}}"#;
        assert_eq!(
            pod_from_config(containerd),
            Some(Pod {
                namespace: "shop".into(),
                name: "web-7d9f".into(),
                container: Some("app".into())
            })
        );
        let crio = br#"{"annotations":{"io.kubernetes.pod.name":"p","io.kubernetes.pod.namespace":"n","io.kubernetes.container.name":"c"}}"#;
        assert_eq!(pod_from_config(crio).unwrap().name, "p");
        assert_eq!(pod_from_config(br#"{"annotations":{}}"#), None);
        assert_eq!(pod_from_config(b"not json"), None);
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
