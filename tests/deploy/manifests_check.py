#!/usr/bin/env python3
"""Structural checks of deploy/kubernetes/ on top of schema validation (kubernetes-validate):
the properties the issue asks of the DaemonSet, read from the parsed YAML.

    manifests_check.py DEPLOY_KUBERNETES_DIR [RENDERED_YAML]

RENDERED_YAML is `kubectl kustomize` output; without it the files are read one by one.
Needs PyYAML (kubernetes-validate depends on it). Exit 1 with one line per problem.
"""

import sys
from pathlib import Path

import yaml

from checks import Problems

problems = Problems("manifests_check")
check = problems.check


def main():
    kdir = Path(sys.argv[1])
    kust = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    # Components (components/, e.g. the PrometheusRule) are not resources of the default
    # kustomization: it must apply on a cluster without the Prometheus Operator's CRD.
    files = sorted(p.name for p in kdir.glob("*.yaml") if p.name != "kustomization.yaml")
    check(sorted(kust.get("resources", [])) == files,
          f"kustomization resources {kust.get('resources')} != the manifests {files}")

    if len(sys.argv) > 2:
        docs = [d for d in yaml.safe_load_all(Path(sys.argv[2]).read_text()) if d]
    else:
        docs = [d for f in files for d in yaml.safe_load_all((kdir / f).read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    check(sorted(by_kind) == ["DaemonSet", "Namespace", "NetworkPolicy", "ServiceAccount"],
          f"kinds: {sorted(by_kind)}")
    check(not any(k in by_kind for k in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")),
          "RBAC objects present: the tool needs none")

    ns = by_kind["Namespace"]
    check(ns["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "privileged",
          "namespace must allow the privileged Pod Security level (hostPID, hostPath)")
    sa = by_kind["ServiceAccount"]
    check(sa.get("automountServiceAccountToken") is False, "service account token automounted")

    ds = by_kind["DaemonSet"]
    name = ds["metadata"]["name"]
    for d in docs:
        check(d["metadata"].get("namespace", ns["metadata"]["name"]) == ns["metadata"]["name"],
              f"{d['kind']} not in namespace {ns['metadata']['name']}")
    spec = ds["spec"]["template"]["spec"]
    check(spec.get("hostPID") is True, "hostPID is not true")
    check(not spec.get("hostNetwork"), "hostNetwork is not needed")
    check(spec.get("serviceAccountName") == sa["metadata"]["name"], "service account not used")
    check(spec.get("automountServiceAccountToken") is False, "pod automounts a token")
    check(spec.get("priorityClassName") == "system-node-critical", "priorityClassName")
    check({"operator": "Exists"} in spec.get("tolerations", []),
          "no toleration for every taint ({operator: Exists})")
    (c,) = spec["containers"]
    args = c.get("args", [])
    check("--stdout" in args, "--stdout missing (kubectl logs)")
    env = {e["name"]: e for e in c.get("env", [])}
    check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
          == "spec.nodeName", "NODE_NAME not from the downward API spec.nodeName")
    sc = c["securityContext"]
    caps = sc.get("capabilities", {})
    check(sc.get("privileged") in (None, False), "privileged: the capability list suffices")
    check(caps.get("drop") == ["ALL"], f"capabilities.drop {caps.get('drop')} != [ALL]")
    check(set(caps.get("add", [])) <= {"BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"} and
          {"BPF", "PERFMON", "NET_ADMIN"} <= set(caps.get("add", [])),
          f"capabilities.add {caps.get('add')}")
    check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation")
    check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        check("memory" in res.get(kind, {}), f"no memory {kind}")
    check("cpu" in res.get("requests", {}), "no cpu request")

    ready = None
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe)
        check(p is not None, f"no {probe}")
        if p:
            cmd = p.get("exec", {}).get("command", [])
            check(cmd[:2] == ["/imds-snoop", "check"], f"{probe} is not `/imds-snoop check`: {cmd}")
            flag = [a for a in cmd if a.startswith("--ready-file=")]
            check(len(flag) == 1, f"{probe} has no --ready-file=")
            ready = ready or (flag[0].split("=", 1)[1] if flag else None)
    check(f"--ready-file={ready}" in args, f"daemon's --ready-file is not the probes' {ready}")

    # Metrics: the daemon listens where the scrape annotations and the named port say.
    addr = next((a.split("=", 1)[1] for a in args if a.startswith("--metrics-addr=")), None)
    check(addr is not None, "no --metrics-addr: the pod cannot be scraped")
    notes = ds["spec"]["template"]["metadata"].get("annotations", {})
    ports = {p.get("name"): p for p in c.get("ports", [])}
    check(notes.get("prometheus.io/scrape") == "true", "no prometheus.io/scrape: \"true\"")
    check(notes.get("prometheus.io/path") == "/metrics", "prometheus.io/path is not /metrics")
    if addr is not None:
        port = addr.rsplit(":", 1)[1]
        check(notes.get("prometheus.io/port") == port,
              f"prometheus.io/port {notes.get('prometheus.io/port')} != --metrics-addr port {port}")
        check(str(ports.get("metrics", {}).get("containerPort")) == port,
              f"no containerPort named metrics = {port}")
        check(not addr.startswith("127.") and not addr.startswith("[::1]"),
              f"--metrics-addr {addr} is loopback: Prometheus cannot reach it")

    # The metrics port is open only to the Prometheus namespace (one namespaceSelector).
    np = by_kind.get("NetworkPolicy")
    if np is not None:
        nps = np["spec"]
        pod_labels = ds["spec"]["template"]["metadata"].get("labels", {})
        sel = nps.get("podSelector", {}).get("matchLabels", {})
        check(sel and all(pod_labels.get(k) == v for k, v in sel.items()),
              f"NetworkPolicy podSelector {sel} does not select the DaemonSet's pods")
        check(nps.get("policyTypes") == ["Ingress"], f"policyTypes {nps.get('policyTypes')}")
        ingress = nps.get("ingress", [])
        check(len(ingress) == 1, f"{len(ingress)} ingress rules, not 1")
        if ingress:
            peers = ingress[0].get("from", [])
            check(len(peers) == 1 and list(peers[0]) == ["namespaceSelector"]
                  and list(peers[0]["namespaceSelector"].get("matchLabels", {}))
                  == ["kubernetes.io/metadata.name"],
                  f"ingress from {peers}: not one namespace by kubernetes.io/metadata.name")
            want = {"metrics", int(addr.rsplit(":", 1)[1]) if addr else None}
            nports = ingress[0].get("ports", [])
            check(len(nports) == 1 and nports[0].get("port") in want
                  and nports[0].get("protocol", "TCP") == "TCP",
                  f"ingress ports {nports}: not the metrics port alone")

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    want_ro = {"/sys/kernel/btf", "/sys/fs/cgroup", "/var/log/pods", "/proc/1/ns/net"}
    host_paths = {}
    for vname, m in mounts.items():
        v = volumes.get(vname)
        check(v is not None, f"mount {vname} has no volume")
        if v and "hostPath" in v:
            hp = v["hostPath"]["path"]
            host_paths[hp] = m
            if hp == "/var/log/imds":
                check(not m.get("readOnly"), "/var/log/imds must be writable")
            else:
                check(m.get("readOnly") is True, f"hostPath {hp} mounted read-write")
    for hp in want_ro:
        check(hp in host_paths, f"no hostPath mount of {hp}")
    check(any(hp.startswith("/run/containerd") for hp in host_paths), "no containerd state mount")
    check("/run/containerd" not in host_paths,
          "all of /run/containerd mounted: that hands the pod containerd's socket")
    check("/var/log/imds" in host_paths, "no /var/log/imds mount")
    # Each path the daemon is told about is a mount of the matching host path.
    flag_paths = {
        "--btf=": "/sys/kernel/btf",
        "--cgroup-root=": "/sys/fs/cgroup",
        "--containerd-root=": "/run/containerd/io.containerd.runtime.v2.task",
        "--pod-logs=": "/var/log/pods",
        # The node's network namespace (net:host / net:other), without SYS_PTRACE.
        "--host-netns=": "/proc/1/ns/net",
    }
    for flag, hp in flag_paths.items():
        val = next((a[len(flag):] for a in args if a.startswith(flag)), None)
        m = host_paths.get(hp)
        check(val is not None and m is not None and val.startswith(m["mountPath"]),
              f"{flag}{val} is not under the mount of {hp}")

    problems.finish(name, f"{len(docs)} objects")


if __name__ == "__main__":
    main()
