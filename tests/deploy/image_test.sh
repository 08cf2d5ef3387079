#!/usr/bin/env bash
# The container image, built from deploy/container/Containerfile with buildah, run the way
# deploy/kubernetes/daemonset.yaml runs it, under a real containerd and runc: the closest
# thing to a node this machine has (no kubelet).
#
#   tests/deploy/image_test.sh BINARY ARM64_BINARY [IMAGE_ARCHIVE]
#
# BINARY is the x86_64 musl binary, ARM64_BINARY the aarch64 one. Without IMAGE_ARCHIVE it
# builds one with deploy/container/build.sh from both: one image reference for both
# architectures.
# Checks:
#   1. the archive's one reference is an OCI image index with exactly a linux/amd64 and a
#      linux/arm64 manifest; each image holds exactly one file, /imds-snoop, identical to
#      that architecture's binary (ELF machine x86-64 or AArch64), static, with entrypoint
#      /imds-snoop, user 0:0 and its config's architecture (skopeo/tar on the OCI archive;
#      the arm64 image is inspected, not run: this machine is x86_64);
#   2. `ctr images import --all-platforms` loads it as one image listing both platforms,
#      the arm64 layer included;
#   3. run with the DaemonSet's settings (args read from daemonset.yaml; host PID namespace;
#      every capability dropped but CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; containerd's default seccomp
#      profile; read-only root filesystem; the hostPath mounts read-only under /host and
#      /var/log/imds read-write; NODE_NAME set), the probe command of the DaemonSet
#      (`/imds-snoop check ...` by `ctr task exec`, no shell in the image) turns ready;
#   4. a v1 call from another pod's container is logged as JSON, on stdout and in the
#      node's /var/log/imds/imds-trace.log, with the node name, pod, container, caller and
#      response status (200: the response program attached under these capabilities);
#   4a. hop limit 1: IMDS behind the node answering token PUTs with TTL 1 and a "pod"
#      namespace routed through the node (lib.sh's routed_up): the pod's token PUT gets no
#      reply, and the DaemonSet logs it as dropped at the node (class v2_token_dropped,
#      host_network false, no status): the drop hook works under the DaemonSet's settings;
#   4b. its metrics endpoint (port from --metrics-addr, as the scrape annotations say),
#      scraped inside the container's own network namespace with the real Prometheus
#      parsers (tests/e2e/scrape_metrics.py), counts that call under its pod and comm, and
#      the dropped token PUT as class v2_token, status dropped;
#   5. SIGTERM stops it cleanly (exit status 0, "detached, log flushed").
# (CAP_SYS_RESOURCE of the DaemonSet is left out here: this machine's own bounding set lacks
# it, and kernels from 5.11 on do not use it.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage="usage: image_test.sh BINARY ARM64_BINARY [IMAGE_ARCHIVE]"
binary=$(realpath "${1:?$usage}")
arm64_binary=$(realpath "${2:?$usage}")
archive=${3:-}
require_root
require_tools skopeo tar python3 ip curl nsenter

scratch_dir image
dir=$SCRATCH
chmod 0755 "$dir"

# 1. The image: an index with one image per architecture.
if [ -z "$archive" ]; then
    require_tools buildah
    archive=$("$REPO/deploy/container/build.sh" --binary "$binary" --binary "$arm64_binary" \
        --output "$dir/image.oci.tar")
fi
[ -f "$archive" ] || fail "no image archive $archive"
config=$(skopeo inspect --config "oci-archive:$archive")
python3 - "$config" <<'EOF' || fail "image config (this machine's platform): $config"
import json, sys
c = json.loads(sys.argv[1])
assert c["architecture"] == "amd64" and c["os"] == "linux", (c["architecture"], c["os"])
EOF
mkdir "$dir/oci"
tar -xf "$archive" -C "$dir/oci"
arm64_layer=$(python3 - "$dir/oci" "$binary" "$arm64_binary" <<'EOF'
import io, json, os, stat, sys, tarfile
oci, binaries = sys.argv[1], {"amd64": sys.argv[2], "arm64": sys.argv[3]}
def blob(digest):
    with open(os.path.join(oci, "blobs", *digest.split(":")), "rb") as f:
        return f.read()
with open(os.path.join(oci, "index.json")) as f:
    top = json.load(f)["manifests"]
assert len(top) == 1, f"{len(top)} references, want 1"
assert top[0]["mediaType"] == "application/vnd.oci.image.index.v1+json", top[0]["mediaType"]
index = json.loads(blob(top[0]["digest"]))
platforms = sorted((m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"])
assert platforms == [("linux", "amd64"), ("linux", "arm64")], platforms
machines = {"amd64": 0x3E, "arm64": 0xB7}
for m in index["manifests"]:
    arch = m["platform"]["architecture"]
    man = json.loads(blob(m["digest"]))
    cfg = json.loads(blob(man["config"]["digest"]))
    assert (cfg["architecture"], cfg["os"]) == (arch, "linux"), (arch, cfg["architecture"])
    assert cfg["config"]["Entrypoint"] == ["/imds-snoop"], cfg["config"]["Entrypoint"]
    assert cfg["config"].get("User") == "0:0", cfg["config"].get("User")
    assert len(man["layers"]) == 1, f"{arch}: {len(man['layers'])} layers, want 1"
    layer = tarfile.open(fileobj=io.BytesIO(blob(man["layers"][0]["digest"])))
    names = sorted(n.lstrip("./") for n in layer.getnames() if n.lstrip("./"))
    assert names == ["imds-snoop"], f"{arch}: files {names}"
    member = next(i for i in layer.getmembers() if i.name.lstrip("./") == "imds-snoop")
    assert stat.S_IMODE(member.mode) == 0o755, f"{arch}: mode {oct(member.mode)}"
    data = layer.extractfile(member).read()
    with open(binaries[arch], "rb") as f:
        assert data == f.read(), f"{arch}: /imds-snoop differs from {binaries[arch]}"
    assert int.from_bytes(data[18:20], "little") == machines[arch], f"{arch}: ELF machine {data[18:20].hex()}"
    for loader in (b"/lib64/ld-linux", b"/lib/ld-linux", b"/lib/ld-musl"):
        assert loader not in data, f"{arch}: /imds-snoop is dynamically linked"
    if arch == "arm64":
        print(man["layers"][0]["digest"])
EOF
) || fail "image index in $archive"
ok "image: one reference, an OCI index of linux/amd64 and linux/arm64; each one layer holding only /imds-snoop (= that architecture's binary, static, 0755), entrypoint /imds-snoop, user 0:0"

# 2. containerd, a pod to be traced, the image imported.
netns_up "$dir"
routed_up --ttl 1
mkdir -m 0755 "$dir/containerd"
containerd_start "$dir/containerd"
# A Deployment's pod (<name>-<pod-template-hash>-<5>), with its image annotation.
pod_container shop web-7d9f8b6c5-x2k4p app docker.io/library/busybox:1.36
ctr_ images import --all-platforms "$archive" >"$dir/import.out" 2>&1 ||
    fail "ctr images import: $(cat "$dir/import.out")"
image=$(ctr_ images ls -q | grep -m1 imds-snoop) || fail "imported image not listed: $(ctr_ images ls)"
listed=$(ctr_ images ls | awk -v ref="$image" '$1 == ref')
grep -q 'application/vnd.oci.image.index.v1+json' <<<"$listed" ||
    fail "imported image is not an index: $listed"
grep -q 'linux/amd64,linux/arm64' <<<"$listed" || fail "imported image's platforms: $listed"
ctr_ content ls -q | grep -qx "$arm64_layer" || fail "the arm64 layer $arm64_layer was not imported"
ok "ctr images import --all-platforms: $image (index: linux/amd64, linux/arm64; the arm64 layer imported; amd64 runs here)"

# 3. The DaemonSet's container.
daemonset=$REPO/deploy/kubernetes/daemonset.yaml
mapfile -t args < <(sed -n '/^ *args:/,/^ *env:/p' "$daemonset" | sed -n 's/^ *- \(--.*\)$/\1/p')
[ ${#args[@]} -ge 5 ] || fail "could not read the container args from $daemonset"
probe=$(sed -n '/^ *readinessProbe:/,/^ *[a-z]*Probe:\|^ *resources:/p' "$daemonset" |
    sed -n 's/^ *command: \[\(.*\)\]$/\1/p' | head -1 | tr -d '",')
[ -n "$probe" ] || fail "no readinessProbe command in $daemonset"
read -r -a probe_argv <<<"$probe"
note "args: ${args[*]}; probe: ${probe_argv[*]}"

# capabilities: drop: [ALL]. ctr has no ALL: drop each capability of its default set.
drop_caps=()
for c in CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE \
    NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP; do
    drop_caps+=(--cap-drop "CAP_$c")
done
mkdir -p "$dir/pods" "$dir/imds-log"
DS=imds-snoop-ds-$$
# hostPID: the host's PID namespace, named through our own process (this machine refuses
# runc the /proc/1/ns/pid of its init, which is not systemd).
ctr_ run -d --log-uri "file://$dir/ds.stdout" \
    --with-ns "pid:/proc/$$/ns/pid" \
    "${drop_caps[@]}" --cap-add CAP_BPF --cap-add CAP_PERFMON --cap-add CAP_NET_ADMIN \
    --seccomp --read-only \
    --env NODE_NAME=test-node-1 \
    --mount "type=bind,src=/sys/kernel/btf,dst=/host/sys/kernel/btf,options=rbind:ro" \
    --mount "type=bind,src=/sys/fs/cgroup,dst=/host/sys/fs/cgroup,options=rbind:ro" \
    --mount "type=bind,src=$CTRD_TASKS,dst=/host/run/containerd/io.containerd.runtime.v2.task,options=rbind:ro" \
    --mount "type=bind,src=$dir/pods,dst=/host/var/log/pods,options=rbind:ro" \
    --mount "type=bind,src=$dir/imds-log,dst=/var/log/imds,options=rbind:rw" \
    --mount "type=bind,src=/proc/$$/ns/net,dst=/host/netns/net,options=rbind:ro" \
    --mount "type=tmpfs,src=tmpfs,dst=/run/imds-snoop,options=rw:nosuid:nodev:mode=755" \
    "$image" "$DS" /imds-snoop "${args[@]}" >"$dir/ds.run" 2>&1 ||
    fail "ctr run (DaemonSet container): $(cat "$dir/ds.run")"
CTRD_CONTAINERS+=("$DS")
n=0
probe_ok() {
    n=$((n + 1))
    ctr_ task exec --exec-id "probe-$n" "$DS" "${probe_argv[@]}" >/dev/null 2>&1
}
wait_until 30 probe_ok || fail "probe never succeeded: $(tail -5 "$dir/ds.stdout")"
status=$(cat "/proc/$(ctr_ task ls | awk -v id="$DS" '$1 == id {print $2}')/status")
caps=$(capsh --decode="$(awk '$1 == "CapEff:" {print $2}' <<<"$status")" | sed 's/^[^=]*=//')
[ "$caps" = cap_net_admin,cap_perfmon,cap_bpf ] || fail "container CapEff is $caps"
grep -qP '^Seccomp:\t2$' <<<"$status" || fail "no seccomp filter in the container"
ok "DaemonSet container (caps $caps, seccomp, read-only root, host PID) ready by its probe: ${probe_argv[*]}"

# 4. A call from the pod.
pod_call v1 "image-pod"
json=$(wait_line "$dir/imds-log/imds-trace.log" "image-pod" 15) ||
    fail "pod call not in the node's trace log: $(tail -3 "$dir/imds-log/imds-trace.log" 2>/dev/null; tail -5 "$dir/ds.stdout")"
wait_line "$dir/ds.stdout" "image-pod" 5 >/dev/null || fail "pod call not on the container's stdout"
python3 - "$json" "$POD_ID" <<'EOF' || fail "JSON line: $json"
import json, sys
r = json.loads(sys.argv[1])
pod_id = sys.argv[2]
assert r["node"] == "test-node-1", r["node"]
assert r["class"] == "v1", r["class"]
assert r["caller"]["comm"] == "wget", r["caller"]
assert r["caller"]["argv"].startswith("/bin/wget -q -O /dev/null http://169.254.169.254/"), r["caller"]
assert r["container"]["id"] == pod_id, r["container"]
assert r["pod"]["namespace"] == "shop" and r["pod"]["name"] == "web-7d9f8b6c5-x2k4p", r["pod"]
assert r["pod"]["container"] == "app", r["pod"]
assert r["pod"]["container_image"] == "docker.io/library/busybox:1.36", r["pod"]
assert r["pod"]["workload"] == "web" and r["pod"]["workload_guess"] is True, r["pod"]
assert r["status"] == 200, r["status"]
# The pod is in its own network namespace, not the node's (--host-netns, the hostPath).
assert r["host_network"] is False, r.get("host_network")
EOF
ok "pod call logged (stdout and /var/log/imds/imds-trace.log): node test-node-1, pod shop/web-7d9f8b6c5-x2k4p (workload web), container app, image busybox:1.36, caller wget, status 200, host_network false"

# 4a. Hop limit 1: the routed pod's token PUT dies at the node, and the DaemonSet says so.
rc=0
ip netns exec "$POD_NETNS" curl -s -m 3 -o /dev/null -A image-pod-put -X PUT \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "http://$IMDS/latest/api/token" || rc=$?
[ "$rc" = 28 ] || fail "the pod's token PUT: curl exit $rc, want 28 (its TTL-1 reply dies at the node)"
json=$(wait_line "$dir/imds-log/imds-trace.log" '"image-pod-put"' 20) ||
    fail "the pod's token PUT is not in the node's trace log: $(tail -3 "$dir/imds-log/imds-trace.log")"
python3 - "$json" <<'EOF' || fail "dropped token PUT's JSON line: $json"
import json, sys
r = json.loads(sys.argv[1])
assert r["class"] == "v2_token_dropped", r["class"]
assert (r["method"], r["path"]) == ("PUT", "/latest/api/token"), (r["method"], r["path"])
assert r["caller"]["comm"] == "curl", r["caller"]
assert r["caller"]["argv"].startswith("curl -s -m 3 -o /dev/null -A image-pod-put -X PUT "), r["caller"]
assert r.get("status") is None, r.get("status")
assert r["host_network"] is False, r.get("host_network")
EOF
ok "hop limit 1: the routed pod's token PUT logged as v2_token_dropped (host_network false, no status)"

# 4b. Metrics, scraped where Prometheus would reach them: the pod's own network namespace
# (a new one: the DaemonSet has no hostNetwork; its loopback is brought up for the scrape).
port=$(sed -n 's/^ *- --metrics-addr=.*:\([0-9]*\)$/\1/p' "$daemonset")
[ -n "$port" ] || fail "no --metrics-addr=ADDR:PORT in $daemonset"
ds_pid=$(ctr_ task ls | awk -v id="$DS" '$1 == id {print $2}')
[ "$(readlink "/proc/$ds_pid/ns/net")" != "$(readlink /proc/self/ns/net)" ] ||
    fail "the DaemonSet container shares the host's network namespace"
nsenter --net="/proc/$ds_pid/ns/net" ip link set lo up
scrape=$(nsenter --net="/proc/$ds_pid/ns/net" python3 "$REPO/tests/e2e/scrape_metrics.py" \
    "http://127.0.0.1:$port/metrics") || fail "scraping :$port/metrics in the container failed"
python3 - "$scrape" <<'EOF' || fail "metrics: $scrape"
import json, sys
samples = json.loads(sys.argv[1])["samples"]
def value(name, **labels):
    found = [v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]
assert value("imds_snoop_requests_total", **{"class": "v1"}, host_network="false",
             namespace="shop", workload="web", container="app",
             image="docker.io/library/busybox:1.36", comm="wget") == 1
assert value("imds_snoop_requests_total", **{"class": "v2_token"}, status="dropped",
             comm="curl") == 1
assert all("pod" not in l for n, l, v in samples if n == "imds_snoop_requests_total"), samples
assert value("imds_snoop_window_start_seconds") > 1.7e9
assert value("imds_snoop_attached") == 1
assert value("imds_snoop_statuses_traced") == 1
assert value("imds_snoop_kernel_drops_total", reason="ring_full") == 0
EOF
ok "metrics on the pod's :$port/metrics: 1 v1 call by wget in workload shop/web (app, busybox:1.36, host_network false), no pod label, 1 token PUT by curl counted v2_token/dropped, attached, window start, no drops"

# 5. SIGTERM.
ctr_ task kill -s SIGTERM "$DS"
stopped() { ctr_ task ls | awk -v id="$DS" '$1 == id {print $3}' | grep -qx STOPPED; }
wait_until 30 stopped || fail "not stopped 30 s after SIGTERM"
code=$(ctr_ task delete "$DS" 2>&1 | sed -n 's/.*exit status \([0-9]*\).*/\1/p')
[ "${code:-0}" = 0 ] || fail "exit status $code after SIGTERM"
grep -q 'detached, log flushed' "$dir/ds.stdout" || fail "no clean-exit message: $(tail -3 "$dir/ds.stdout")"
ok "SIGTERM: stopped, exit 0, 'detached, log flushed'"

echo "image_test: $PASSED passed, 0 failed"
