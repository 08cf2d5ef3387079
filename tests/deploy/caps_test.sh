#!/usr/bin/env bash
# Which capabilities the daemon needs, proven by running the real binary and kernel program
# with exactly those capabilities and no others, against real callers: a host process and a
# container of a real containerd (with the CRI annotations of a pod), both calling a fake
# IMDS in a network namespace of ours.
#
#   tests/deploy/caps_test.sh BINARY
#
# The systemd unit's set (deploy/systemd/imds-snoop.service, AmbientCapabilities=, read from
# the file) as an unprivileged user with no-new-privs, as systemd runs it (capsh gives the
# same uid, ambient set and no-new-privs):
#   1. the full set attaches and attributes both calls, pod and container names included,
#      each with its response status (` -> 200`); and hop-limit evidence: with the fake
#      IMDS behind the node answering token PUTs with TTL 1 and a "pod" namespace routed
#      through the node (lib.sh's routed_up; --host-netns names the node's namespace), the
#      node's token PUT is answered (` -> 200`, net:host) and the pod's is logged
#      `imdsv2 token response dropped (hop limit)` (net:other): the drop hook works under
#      exactly these privileges;
#   2. each capability taken away breaks something: CAP_BPF and CAP_PERFMON -> no attach
#      (the daemon exits non-zero and never becomes ready); CAP_NET_ADMIN -> attached, but
#      no line has a status (the cgroup_skb response program cannot be attached), and
#      stderr says it is CAP_NET_ADMIN that is missing; CAP_DAC_READ_SEARCH -> the pod and
#      container names are missing (containerd's bundles are root-only);
#   3. none of CAP_SYS_PTRACE, CAP_SYS_RESOURCE, CAP_SYS_ADMIN is in the set.
# The DaemonSet's set (deploy/kubernetes/daemonset.yaml's capabilities.add, read from the
# file; it runs as uid 0 with every other capability dropped; SYS_RESOURCE, there only for
# pre-5.11 kernels, is left out: this machine's bounding set lacks it):
#   4. with the fake IMDS enforcing IMDSv2 (http_tokens=required), uid 0 with exactly that
#      set attributes both calls, pod names included, each logged ` -> 401`, and logs the
#      pod's token PUT dropped at the node, as in 1;
#   5. the same without NET_ADMIN: the calls are logged without a status.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

binary=$(realpath "${1:?usage: caps_test.sh BINARY}")
require_root
require_tools capsh setpriv ip curl python3

scratch_dir caps
dir=$SCRATCH
chmod 0755 "$dir"
# The daemon runs as nobody: from a copy in the scratch directory, since the checkout may
# sit below a directory nobody cannot search (a clone under /root, mode 0700).
install -m 0755 "$binary" "$dir/imds-snoop"
binary=$dir/imds-snoop
netns_up "$dir"
routed_up --ttl 1
mkdir -m 0755 "$dir/containerd"
containerd_start "$dir/containerd"
pod_container shop web-1 app docker.io/library/busybox:1.36

UNIT_CAPS=$(unit_caps)
[ -n "$UNIT_CAPS" ] || fail "no AmbientCapabilities= in the unit"
note "unit capabilities: $UNIT_CAPS"
for forbidden in cap_sys_ptrace cap_sys_resource cap_sys_admin cap_dac_override; do
    case ",$UNIT_CAPS," in *",$forbidden,"*) fail "the unit grants $forbidden" ;; esac
done
grep -q "^CapabilityBoundingSet=$(sed -n 's/^AmbientCapabilities=//p' \
    "$REPO/deploy/systemd/imds-snoop.service")\$" "$REPO/deploy/systemd/imds-snoop.service" ||
    fail "CapabilityBoundingSet= differs from AmbientCapabilities="
ok "unit grants only $UNIT_CAPS (no sys_ptrace, sys_resource, sys_admin, dac_override)"

DAEMON_PID=
stop_daemon() {
    [ -n "$DAEMON_PID" ] || return 0
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=
}
on_exit stop_daemon

# run_daemon TAG USER CAPS: starts the daemon as USER (nobody: no-new-privs + ambient CAPS;
# root: bounding set CAPS) with its files in $dir/TAG; waits until ready or exited.
# Returns 0 once ready, 1 when it exited first (DAEMON_RC holds its exit code).
run_daemon() {
    local tag=$1 user=$2 caps=$3 d=$dir/$1 iab
    mkdir -p "$d"
    [ "$user" = root ] || chown nobody:nogroup "$d"
    local args=(--log-file "$d/trace.log" --ready-file "$d/ready" --containerd-root "$CTRD_TASKS"
        --host-netns "/var/run/netns/$NETNS")
    if [ "$user" = nobody ]; then
        iab=$(tr ',' '\n' <<<"$caps" | grep . | sed 's/^/^/' | paste -sd, -)
        capsh --no-new-privs --gid=65534 --groups=65534 --cap-uid=65534 ${iab:+--iab="$iab"} \
            --shell="$binary" -- "${args[@]}" >"$d/stdout" 2>"$d/stderr" &
    else
        setpriv --bounding-set="-all$(tr ',' '\n' <<<"$caps" | grep . | sed 's/^cap_/,+/' | tr -d '\n')" --inh-caps=-all \
            -- "$binary" "${args[@]}" >"$d/stdout" 2>"$d/stderr" &
    fi
    DAEMON_PID=$!
    ready_or_gone() { [ -s "$d/ready" ] || ! kill -0 "$DAEMON_PID" 2>/dev/null; }
    wait_until 20 ready_or_gone || true
    if [ -s "$d/ready" ]; then
        local got
        got=$(awk '/^CapEff:/ {print $2}' "/proc/$DAEMON_PID/status")
        note "$tag: ready (uid $(awk '/^Uid:/ {print $2}' "/proc/$DAEMON_PID/status"), CapEff $got)"
        return 0
    fi
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        stop_daemon
        fail "$tag: neither ready nor exited within 20 s: $(tail -3 "$d/stderr")"
    fi
    DAEMON_RC=0
    wait "$DAEMON_PID" || DAEMON_RC=$?
    DAEMON_PID=
    return 1
}

# calls_attributed TAG STATUS [refused]: a host call and a pod call, both logged with their
# caller and response status STATUS (200; 401 when the fake IMDS enforces IMDSv2; `none`:
# the line must have no status); `refused`: the fake IMDS enforces IMDSv2 (implied by 401).
# Prints the pod line.
calls_attributed() {
    local tag=$1 want=$2 log=$dir/$1/trace.log line refused=${3:-}
    [ "$want" != 401 ] || refused=refused
    host_call "$tag-host" $refused
    line=$(wait_line "$log" "?$tag-host") || fail "$tag: host call not logged: $(cat "$log" 2>/dev/null)"
    [[ $line == *"imdsv1(!) (pid:"*":curl argv:curl -sf -m 5 -o /dev/null http://$IMDS/latest/meta-data/instance-id?$tag-host) called by -> (pid:"* ]] ||
        fail "$tag: host call line lacks the caller: $line"
    expect_status "$line" "${want/none/}" "$tag: host call"
    pod_call "$tag" "$tag-pod" $refused
    line=$(wait_line "$log" "?$tag-pod") || fail "$tag: pod call not logged: $(cat "$log")"
    [[ $line == *":wget argv:/bin/wget -q -O /dev/null http://$IMDS/latest/meta-data/instance-id?$tag-pod"* ]] ||
        fail "$tag: pod call line lacks the caller: $line"
    [[ $line == *"container:${POD_ID:0:12}"* ]] || fail "$tag: pod call line lacks the container id: $line"
    expect_status "$line" "${want/none/}" "$tag: pod call"
    echo "$line"
}

without() { tr ',' '\n' <<<"$UNIT_CAPS" | grep -vx "$1" | paste -sd, -; }

# 1. The unit's set.
run_daemon unit nobody "$UNIT_CAPS" || fail "unit set: daemon exited ($DAEMON_RC): $(tail -5 "$dir/unit/stderr")"
line=$(calls_attributed unit 200)
[[ $line == *"pod:shop/web-1 container-name:app image:docker.io/library/busybox:1.36 workload~:web "* ]] ||
    fail "unit set: no pod name, image or workload: $line"
! grep -q 'statuses are not traced' "$dir/unit/stderr" || fail "unit set: $(grep statuses "$dir/unit/stderr")"
ok "unit set ($UNIT_CAPS) as an unprivileged user: attached, host and pod calls attributed with pod names, image and workload, and -> 200"
expect_node_put unit-node-put "$dir/unit/trace.log" ip netns exec "$NETNS"
expect_hop_drop unit-pod-put "$dir/unit/trace.log" ip netns exec "$POD_NETNS" >/dev/null
stop_daemon
ok "unit set: hop limit 1: the node's token PUT -> 200 (net:host), the routed pod's logged '$DROPPED_LABEL' (net:other)"

# 2. Each one taken away.
for cap in $(tr ',' ' ' <<<"$UNIT_CAPS"); do
    set_=$(without "$cap")
    case $cap in
    cap_bpf | cap_perfmon)
        if run_daemon "no-$cap" nobody "$set_"; then
            stop_daemon
            fail "without $cap the daemon still attached: $cap is not needed"
        fi
        [ "$DAEMON_RC" != 0 ] || fail "without $cap the daemon exited 0"
        ok "without $cap: no attach, exit $DAEMON_RC ($(grep -o 'ERROR.*' "$dir/no-$cap/stderr" | cut -c1-110))"
        ;;
    cap_net_admin)
        run_daemon "no-$cap" nobody "$set_" || fail "without $cap: exited ($DAEMON_RC)"
        calls_attributed "no-$cap" none >/dev/null
        why=$(grep -o 'response statuses are not traced: this process lacks CAP_NET_ADMIN.*' \
            "$dir/no-$cap/stderr" | head -1)
        [ -n "$why" ] || fail "without $cap: stderr does not name CAP_NET_ADMIN: $(cat "$dir/no-$cap/stderr")"
        grep -q '\] \[WARNING\] imds-snoop statuses not traced from now (this process lacks CAP_NET_ADMIN' \
            "$dir/no-$cap/trace.log" || fail "without $cap: the trace log does not say statuses are not traced: $(head -3 "$dir/no-$cap/trace.log")"
        stop_daemon
        ok "without $cap: attached, but the calls have no status; stderr and trace log say why: ${why:0:90}"
        ;;
    cap_dac_read_search)
        run_daemon "no-$cap" nobody "$set_" || fail "without $cap: exited ($DAEMON_RC)"
        line=$(calls_attributed "no-$cap" 200)
        if [[ $line == *"pod:shop/web-1"* ]]; then
            fail "without $cap the pod name is still found: $cap is not needed"
        fi
        stop_daemon
        ok "without $cap: attached, but the pod call has no pod name (containerd bundles unreadable)"
        ;;
    *) fail "no check says why the unit needs $cap" ;;
    esac
done

# 4. The DaemonSet's set, read from the manifest (SYS_RESOURCE left out, see above), as
#    uid 0, against an IMDS that enforces IMDSv2.
DS_CAPS=$(sed -n '/^ *add:$/,/^ *[a-z][a-zA-Z]*:/p' "$REPO/deploy/kubernetes/daemonset.yaml" |
    sed -n 's/^ *- \([A-Z_]*\)$/cap_\1/p' | tr 'A-Z' 'a-z' | grep -vx cap_sys_resource | paste -sd, -)
case ",$DS_CAPS," in *,cap_bpf,*cap_perfmon,*cap_net_admin,*) ;; *) fail "DaemonSet capabilities.add: $DS_CAPS" ;; esac
note "DaemonSet capabilities (without sys_resource): $DS_CAPS"
fake_imds_start --require-v2 --ttl 1
run_daemon daemonset root "$DS_CAPS" ||
    fail "daemonset set: daemon exited ($DAEMON_RC): $(tail -5 "$dir/daemonset/stderr")"
line=$(calls_attributed daemonset 401)
[[ $line == *"pod:shop/web-1 container-name:app"* ]] || fail "daemonset set: no pod name: $line"
ok "uid 0 with only $DS_CAPS, IMDSv2 enforced: host and pod calls attributed with pod names and -> 401"
expect_node_put daemonset-node-put "$dir/daemonset/trace.log" ip netns exec "$NETNS"
expect_hop_drop daemonset-pod-put "$dir/daemonset/trace.log" ip netns exec "$POD_NETNS" >/dev/null
stop_daemon
ok "daemonset set: hop limit 1: the node's token PUT -> 200 (net:host), the routed pod's logged '$DROPPED_LABEL' (net:other)"

# 5. The DaemonSet's set without NET_ADMIN: the statuses are gone.
run_daemon daemonset-no-net-admin root "$(tr ',' '\n' <<<"$DS_CAPS" | grep -vx cap_net_admin | paste -sd, -)" ||
    fail "daemonset set without NET_ADMIN: exited ($DAEMON_RC)"
calls_attributed daemonset-no-net-admin none refused >/dev/null
grep -q 'lacks CAP_NET_ADMIN' "$dir/daemonset-no-net-admin/stderr" ||
    fail "without NET_ADMIN stderr does not say so: $(cat "$dir/daemonset-no-net-admin/stderr")"
stop_daemon
ok "uid 0 without NET_ADMIN: calls logged without their status (-> 401 lost), stderr names CAP_NET_ADMIN"

echo "caps_test: $PASSED passed, 0 failed"
