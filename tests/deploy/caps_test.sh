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
#   1. the full set attaches and attributes both calls, pod and container names included;
#   2. each capability taken away breaks something: CAP_BPF and CAP_PERFMON -> no attach
#      (the daemon exits non-zero and never becomes ready); CAP_DAC_READ_SEARCH -> the pod
#      and container names are missing (containerd's bundles are root-only);
#   3. none of CAP_SYS_PTRACE, CAP_SYS_RESOURCE, CAP_SYS_ADMIN is in the set.
# The DaemonSet's set (deploy/kubernetes/daemonset.yaml runs as uid 0 with capabilities
# dropped to BPF and PERFMON; SYS_RESOURCE is added there only for pre-5.11 kernels):
#   4. uid 0 with only CAP_BPF and CAP_PERFMON attributes both calls, pod names included.
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
mkdir -m 0755 "$dir/containerd"
containerd_start "$dir/containerd"
pod_container shop web-1 app

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
    local args=(--log-file "$d/trace.log" --ready-file "$d/ready" --containerd-root "$CTRD_TASKS")
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

# calls_attributed TAG: a host call and a pod call, both logged with their caller; prints
# the pod line.
calls_attributed() {
    local tag=$1 log=$dir/$1/trace.log line
    host_call "$tag-host"
    line=$(wait_line "$log" "?$tag-host") || fail "$tag: host call not logged: $(cat "$log" 2>/dev/null)"
    [[ $line == *"imdsv1(!) (pid:"*":curl argv:curl -sf -m 5 -o /dev/null http://$IMDS/latest/meta-data/instance-id?$tag-host) called by -> (pid:"* ]] ||
        fail "$tag: host call line lacks the caller: $line"
    pod_call "$tag" "$tag-pod"
    line=$(wait_line "$log" "?$tag-pod") || fail "$tag: pod call not logged: $(cat "$log")"
    [[ $line == *":wget argv:/bin/wget -q -O /dev/null http://$IMDS/latest/meta-data/instance-id?$tag-pod"* ]] ||
        fail "$tag: pod call line lacks the caller: $line"
    [[ $line == *"container:${POD_ID:0:12}"* ]] || fail "$tag: pod call line lacks the container id: $line"
    echo "$line"
}

without() { tr ',' '\n' <<<"$UNIT_CAPS" | grep -vx "$1" | paste -sd, -; }

# 1. The unit's set.
run_daemon unit nobody "$UNIT_CAPS" || fail "unit set: daemon exited ($DAEMON_RC): $(tail -5 "$dir/unit/stderr")"
line=$(calls_attributed unit)
[[ $line == *"pod:shop/web-1 container-name:app"* ]] || fail "unit set: no pod name: $line"
stop_daemon
ok "unit set ($UNIT_CAPS) as an unprivileged user: attached, host and pod calls attributed with pod names"

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
    cap_dac_read_search)
        run_daemon "no-$cap" nobody "$set_" || fail "without $cap: exited ($DAEMON_RC)"
        line=$(calls_attributed "no-$cap")
        if [[ $line == *"pod:shop/web-1"* ]]; then
            fail "without $cap the pod name is still found: $cap is not needed"
        fi
        stop_daemon
        ok "without $cap: attached, but the pod call has no pod name (containerd bundles unreadable)"
        ;;
    *) fail "no check says why the unit needs $cap" ;;
    esac
done

# 4. The DaemonSet's set: uid 0, CAP_BPF and CAP_PERFMON only.
run_daemon daemonset root "cap_bpf,cap_perfmon" ||
    fail "daemonset set: daemon exited ($DAEMON_RC): $(tail -5 "$dir/daemonset/stderr")"
line=$(calls_attributed daemonset)
[[ $line == *"pod:shop/web-1 container-name:app"* ]] || fail "daemonset set: no pod name: $line"
stop_daemon
ok "uid 0 with only cap_bpf,cap_perfmon: attached, host and pod calls attributed with pod names"

echo "caps_test: $PASSED passed, 0 failed"
