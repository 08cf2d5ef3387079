# Helpers shared by tests/deploy/*_test.sh (sourced, not run). Bash.
#
# Isolation: every IMDS call of these tests goes to a fake IMDS (tests/fake_imds.py) inside
# a network namespace the test creates, with 169.254.169.254/32 on its loopback and no other
# interface: no packet leaves it. Everything a test starts is stopped by its EXIT trap.

DEPLOY_TESTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$DEPLOY_TESTS/../.." && pwd)
IMDS=169.254.169.254
TEST_NAME=${TEST_NAME:-$(basename "$0" .sh)}

fail() {
    echo "$TEST_NAME: FAILED: $*" >&2
    exit 1
}
ok() {
    echo "$TEST_NAME: ok: [${SECONDS}s] $*"
    PASSED=$((${PASSED:-0} + 1))
}
note() { echo "$TEST_NAME: $*"; }

# Cleanup actions, run last-registered first at exit.
CLEANUPS=()
on_exit() { CLEANUPS+=("$1"); }
run_cleanups() {
    local i
    for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do
        eval "${CLEANUPS[$i]}" >/dev/null 2>&1 || true
    done
}
trap run_cleanups EXIT
trap 'exit 130' INT TERM

# require_tools TOOL...: a missing tool fails the test (CI installs them: cargo xtask setup).
require_tools() {
    local t missing=()
    for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
    [ ${#missing[@]} = 0 ] || fail "missing tools: ${missing[*]} (cargo xtask setup installs them)"
}

require_root() {
    [ "$(id -u)" = 0 ] || fail "needs root (BPF, namespaces, containerd)"
}

# wait_until SECONDS CMD...: polls CMD every 0.1 s; false when it never succeeds.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# scratch_dir TAG: a directory removed at exit (in $SCRATCH). Under /var/lib, not /tmp: the systemd unit
# has PrivateTmp=yes, so paths the daemon must read (containerd's state) cannot be in /tmp.
# Sets SCRATCH.
scratch_dir() {
    SCRATCH=$(mktemp -d "/var/lib/imds-snoop-test-$1.XXXXXX")
    on_exit "rm -rf '$SCRATCH'"
}

# netns_up: creates network namespace $NETNS with the IMDS address on its loopback, and
# starts the fake IMDS in it (log in $1/fake_imds.log).
netns_up() {
    local dir=$1
    NETNS=imds-deploy-$$-$RANDOM
    ip netns add "$NETNS"
    on_exit "ip netns pids '$NETNS' | xargs -r kill -9; ip netns delete '$NETNS'"
    ip -n "$NETNS" link set lo up
    ip -n "$NETNS" addr add "$IMDS/32" dev lo
    FAKE_DIR=$dir
    fake_imds_start
}

# fake_imds_start [FAKE_IMDS_ARGS...]: (re)starts the fake IMDS in $NETNS ($FAKE_NETNS once
# routed_up moved IMDS behind the node), e.g. with --require-v2 (http_tokens=required: v1
# calls get 401) or --ttl 1 (PUT response hop limit 1).
fake_imds_start() {
    if [ -n "${FAKE_PID:-}" ]; then
        kill "$FAKE_PID" 2>/dev/null || true
        wait "$FAKE_PID" 2>/dev/null || true
    fi
    rm -f "$FAKE_DIR/fake_imds.ready"
    ip netns exec "${FAKE_NETNS:-$NETNS}" python3 "$REPO/tests/fake_imds.py" --bind "$IMDS" --port 80 \
        --ready-file "$FAKE_DIR/fake_imds.ready" "$@" >>"$FAKE_DIR/fake_imds.log" 2>&1 &
    FAKE_PID=$!
    wait_until 10 test -s "$FAKE_DIR/fake_imds.ready" ||
        fail "fake IMDS did not start: $(cat "$FAKE_DIR/fake_imds.log")"
}

# routed_up [FAKE_IMDS_ARGS...]: makes $NETNS a Kubernetes node's network namespace, as
# tests/support's Routed does for the e2e tests: IMDS moves from its loopback to a namespace
# of its own, $IMDS_NETNS, behind a veth (the node's processes reach it over one link, no
# routing hop), and a "pod" namespace $POD_NETNS sits behind another veth, the node
# forwarding between them (ip_forward=1 in the node's namespace only): the pod's replies
# cross the node's forwarding path, where a TTL-1 reply dies. The fake IMDS restarts in
# $IMDS_NETNS with FAKE_IMDS_ARGS (e.g. --ttl 1). Addresses: 10.200.1.0/24 pod<->node,
# 10.200.2.0/24 node<->imds; nothing is added to the machine's own namespace.
routed_up() {
    local ns
    POD_NETNS=$NETNS-pod
    IMDS_NETNS=$NETNS-imds
    for ns in "$POD_NETNS" "$IMDS_NETNS"; do
        ip netns add "$ns"
        on_exit "ip netns pids '$ns' | xargs -r kill -9; ip netns delete '$ns'"
        ip -n "$ns" link set lo up
    done
    ip -n "$POD_NETNS" link add eth0 type veth peer name veth-pod netns "$NETNS"
    ip -n "$NETNS" link add veth-imds type veth peer name eth0 netns "$IMDS_NETNS"
    ip -n "$POD_NETNS" addr add 10.200.1.2/24 dev eth0
    ip -n "$NETNS" addr add 10.200.1.1/24 dev veth-pod
    ip -n "$NETNS" addr add 10.200.2.1/24 dev veth-imds
    ip -n "$IMDS_NETNS" addr add 10.200.2.2/24 dev eth0
    ip -n "$IMDS_NETNS" addr add "$IMDS/32" dev lo
    ip -n "$NETNS" addr del "$IMDS/32" dev lo
    ip -n "$POD_NETNS" link set eth0 up
    ip -n "$NETNS" link set veth-pod up
    ip -n "$NETNS" link set veth-imds up
    ip -n "$IMDS_NETNS" link set eth0 up
    ip -n "$POD_NETNS" route add default via 10.200.1.1
    ip -n "$NETNS" route add "$IMDS/32" via 10.200.2.2
    ip -n "$IMDS_NETNS" route add 10.200.1.0/24 via 10.200.2.1
    ip netns exec "$NETNS" sysctl -qw net.ipv4.ip_forward=1
    FAKE_NETNS=$IMDS_NETNS
    fake_imds_start "$@"
}

# The label of a token PUT whose reply died of its TTL at the node (imds-snoop-line's class
# table) and the one of a token PUT answered.
DROPPED_LABEL='imdsv2 token response dropped (hop limit)'

# expect_hop_drop TAG LOG RUN...: with the fake IMDS answering token PUTs with TTL 1
# (routed_up --ttl 1), a token PUT by curl, run through RUN... in $POD_NETNS, gets no reply
# (curl times out, exit 28: the reply died in the node's forwarding path), and LOG gets its
# line: the drop label, the pod's curl as caller, net:other, no status. Prints the line.
expect_hop_drop() {
    local tag=$1 log=$2 rc=0 line
    shift 2
    "$@" curl -s -m 3 -o /dev/null -A "$tag" -X PUT \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "http://$IMDS/latest/api/token" || rc=$?
    [ "$rc" = 28 ] ||
        fail "$tag: the pod's token PUT: curl exit $rc, want 28 (a timeout: its TTL-1 reply dies at the node)"
    line=$(wait_line "$log" "user-agent: $tag," 20) ||
        fail "$tag: the pod's token PUT is not logged: $(tail -3 "$log" 2>/dev/null)"
    [[ $line == *"[WARNING] $DROPPED_LABEL (pid:"*":curl argv:"*"curl -s -m 3 -o /dev/null -A $tag -X PUT "* ]] ||
        fail "$tag: the pod's token PUT is not logged as dropped at the node: $line"
    [[ $line == *" net:other "* ]] || fail "$tag: the pod's token PUT is not net:other: $line"
    [ -z "$(status_of "$line")" ] || fail "$tag: the dropped PUT has a status: $line"
    echo "$line"
}

# expect_node_put TAG LOG RUN...: a token PUT by curl, run through RUN... in the node's
# namespace, is answered although the fake IMDS sends TTL 1 (one link, no routing hop), and
# LOG has it as `imdsv2(token)` with ` -> 200` and net:host.
expect_node_put() {
    local tag=$1 log=$2 line
    shift 2
    "$@" curl -sf -m 5 -o /dev/null -A "$tag" -X PUT \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "http://$IMDS/latest/api/token" ||
        fail "$tag: the node's token PUT was not answered"
    line=$(wait_line "$log" "user-agent: $tag," 10) ||
        fail "$tag: the node's token PUT is not logged: $(tail -3 "$log" 2>/dev/null)"
    [[ $line == *"[INFO] imdsv2(token) (pid:"*":curl argv:"*"curl -sf -m 5 -o /dev/null -A $tag -X PUT "* ]] ||
        fail "$tag: the node's token PUT is not logged as answered: $line"
    [[ $line == *" net:host "* ]] || fail "$tag: the node's token PUT is not net:host: $line"
    expect_status "$line" 200 "$tag: the node's token PUT"
}

# status_of LINE: the response status a trace line shows (` -> 200 ` in text, "status":200
# in JSON), empty when it has none.
status_of() {
    if [[ $1 == "{"* ]]; then
        sed -n 's/.*"status":\([0-9][0-9][0-9]\).*/\1/p' <<<"$1"
    else
        sed -n 's/.* -> \([0-9][0-9][0-9]\) \(container:\|host unit:\|origin:unknown\).*/\1/p' <<<"$1"
    fi
}

# expect_status LINE CODE WHAT: fails unless LINE shows response status CODE.
expect_status() {
    local got
    got=$(status_of "$1")
    [ "$got" = "$2" ] || fail "$3: status '${got:-none}', want $2: $1"
}

# --- a private containerd (Debian's 1.6) with the CRI plugin off -------------------------
containerd_start() {
    CTRD_DIR=$1
    require_tools containerd ctr runc busybox
    cat >"$CTRD_DIR/config.toml" <<EOF
version = 2
root = "$CTRD_DIR/root"
state = "$CTRD_DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTRD_DIR/c.sock"
[ttrpc]
  address = "$CTRD_DIR/c.sock.ttrpc"
[debug]
  address = "$CTRD_DIR/debug.sock"
[metrics]
  address = ""
EOF
    containerd --config "$CTRD_DIR/config.toml" >"$CTRD_DIR/containerd.log" 2>&1 &
    CTRD_PID=$!
    on_exit containerd_stop
    wait_until 20 ctr_ version || fail "containerd did not answer: $(tail -5 "$CTRD_DIR/containerd.log")"
    CTRD_TASKS=$CTRD_DIR/state/io.containerd.runtime.v2.task
}
ctr_() { ctr --address "$CTRD_DIR/c.sock" -n k8s.io "$@" </dev/null; }
CTRD_CONTAINERS=()
containerd_stop() {
    local id
    for id in "${CTRD_CONTAINERS[@]}"; do
        if ctr_ task ls -q | grep -qx "$id"; then
            ctr_ task delete --force "$id" >/dev/null 2>&1
        fi
        ctr_ container delete "$id" >/dev/null 2>&1
        # ctr's default cgroup for a container run without --cgroup: /k8s.io/<id>.
        find /sys/fs/cgroup -depth -type d -path "*/k8s.io/$id" -exec rmdir {} + 2>/dev/null || true
    done
    find /sys/fs/cgroup -maxdepth 2 -type d -name k8s.io -exec rmdir {} + 2>/dev/null || true
    CTRD_CONTAINERS=()
    [ -z "${CTRD_PID:-}" ] || { kill "$CTRD_PID"; wait "$CTRD_PID"; } 2>/dev/null
    CTRD_PID=
    # runc leaves the empty kubepods cgroups behind in every hierarchy.
    find /sys/fs/cgroup -depth -type d -path '*kubepods*' -exec rmdir {} + 2>/dev/null || true
}

# hex N: N random lowercase hex digits (a uuid has 32: take as many as needed; container
# ids are 64, and attribution accepts only the runtimes' shape).
hex() {
    local h=
    while [ ${#h} -lt "$1" ]; do h=$h$(tr -d '-' </proc/sys/kernel/random/uuid); done
    printf '%s' "${h:0:$1}"
}

# busybox_rootfs DIR: a busybox-static root filesystem.
busybox_rootfs() {
    mkdir -p "$1/bin"
    cp "$(command -v busybox)" "$1/bin/busybox"
    chroot "$1" /bin/busybox --install -s /bin
}

# pod_container NAMESPACE POD NAME [IMAGE]: runs `sleep` as container NAME of pod
# NAMESPACE/POD in $NETNS with the CRI annotations kubelet would set (and IMAGE as
# containerd's CRI plugin annotates it, io.kubernetes.cri.image-name), in a kubepods cgroup
# (cgroupfs driver naming). Sets POD_ID.
pod_container() {
    local rootfs=$CTRD_DIR/rootfs h uid image=()
    [ -d "$rootfs/bin" ] || busybox_rootfs "$rootfs"
    POD_ID=$(hex 64)
    h=$(hex 32)
    uid=${h:0:8}-${h:8:4}-${h:12:4}-${h:16:4}-${h:20:12}
    [ -z "${4:-}" ] || image=(--annotation "io.kubernetes.cri.image-name=$4")
    ctr_ run -d --null-io --with-ns "network:/var/run/netns/$NETNS" "${image[@]}" \
        --annotation "io.kubernetes.cri.sandbox-name=$2" \
        --annotation "io.kubernetes.cri.sandbox-namespace=$1" \
        --annotation "io.kubernetes.cri.container-name=$3" \
        --annotation "io.kubernetes.cri.sandbox-id=$POD_ID" \
        --annotation io.kubernetes.cri.container-type=container \
        --cgroup "/kubepods/besteffort/pod$uid/$POD_ID" \
        --rootfs "$rootfs" "$POD_ID" /bin/sleep 3600 ||
        fail "ctr run (pod container) failed"
    CTRD_CONTAINERS+=("$POD_ID")
}

# pod_call EXEC_ID QUERY [refused]: a v1 GET from inside the pod container (busybox wget);
# with `refused` the fake IMDS enforces IMDSv2 and the call must fail (401).
pod_call() {
    if ctr_ task exec --exec-id "$1" "$POD_ID" /bin/wget -q -O /dev/null \
        "http://$IMDS/latest/meta-data/instance-id?$2"; then
        [ "${3:-}" != refused ] || fail "wget in the pod container was not refused"
    else
        [ "${3:-}" = refused ] || fail "wget in the pod container failed"
    fi
}

# host_call QUERY [refused]: a v1 GET by curl, a process of the host (in $NETNS); with
# `refused` it must get an HTTP error (curl -f: exit 22).
host_call() {
    local rc=0
    ip netns exec "$NETNS" curl -sf -m 5 -o /dev/null \
        "http://$IMDS/latest/meta-data/instance-id?$1" || rc=$?
    case "$rc,${2:-}" in
    0, | 22,refused) ;;
    *) fail "curl to the fake IMDS: exit $rc (${2:-answered} expected)" ;;
    esac
}

# wait_line FILE NEEDLE [SECONDS]: the line of FILE that contains NEEDLE, once there.
wait_line() {
    local file=$1 needle=$2 secs=${3:-10}
    wait_until "$secs" grep -qF -- "$needle" "$file" || return 1
    grep -F -- "$needle" "$file" | head -1
}

# unit_caps: the unit's AmbientCapabilities as a comma list for capsh (cap_bpf,...).
unit_caps() {
    sed -n 's/^AmbientCapabilities=//p' "$REPO/deploy/systemd/imds-snoop.service" | tail -1 |
        tr 'A-Z' 'a-z' | tr -s ' ' '\n' | grep . | paste -sd, -
}
