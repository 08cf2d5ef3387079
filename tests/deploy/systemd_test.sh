#!/usr/bin/env bash
# The systemd unit under a real systemd: Debian's systemd 252 booted as PID 1 of new pid,
# mount, cgroup, uts and ipc namespaces inside a network namespace of ours (the way a
# container manager runs it), with its own /run, a copy of /etc, an empty /usr/local/bin,
# /var/log and /var/lib, and a unit directory holding only stub targets. deploy/install.sh runs in
# there exactly as a node owner runs it, and the service runs with every setting of
# deploy/systemd/imds-snoop.service (User=, capabilities, seccomp filter, ProtectSystem=...).
#
#   tests/deploy/systemd_test.sh BINARY
#
# Nothing outside the namespaces changes: /etc, /run, /var/log, /usr/local/bin and the unit
# directories are private copies or tmpfs; the manager's cgroup is a child of ours that is
# removed at the end.
#
# Checks: install.sh installs, creates the user, enables and starts (start returns once
# READY=1 came, i.e. once attached); the process runs as imds-snoop with exactly the unit's
# capabilities, no-new-privs and a seccomp filter; `imds-snoop check` sees the ready file;
# a v1 call is logged to /var/log/imds/imds-trace.log with its caller and ` -> 200`, and
# with the fake IMDS enforcing IMDSv2 a v1 call with ` -> 401` and a token flow with
# ` -> 200` (the statuses need the unit's CAP_NET_ADMIN); hop-limit evidence: with IMDS
# moved behind the node (the manager's namespace) answering token PUTs with TTL 1 and a
# "pod" namespace routed through the node, the node's token PUT is answered (` -> 200`,
# net:host) and the pod's is logged `imdsv2 token response dropped (hop limit)` (net:other:
# the unit learnt the node's namespace from pid 1); a second install
# restarts nothing; Restart=on-failure brings it back after SIGKILL; a start that cannot
# attach (CAP_BPF taken away) fails `systemctl start` instead of reporting active; stop is
# clean (exit 0, ready file gone); metrics are off in the unit and the drop-in its header
# documents serves them on loopback, counting a call; --uninstall stops, disables and removes everything.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

binary=$(realpath "${1:?usage: systemd_test.sh BINARY}")
require_root
SYSTEMD=/usr/lib/systemd/systemd
[ -x "$SYSTEMD" ] || fail "no $SYSTEMD: install Debian's systemd package"
require_tools unshare nsenter setsid ip curl python3 systemctl capsh

scratch_dir systemd
dir=$SCRATCH
netns_up "$dir"

# The manager's cgroup: a child of the cgroup v2 hierarchy (the unified one on hybrid hosts).
cg_root=/sys/fs/cgroup
[ -f "$cg_root/cgroup.controllers" ] || cg_root=/sys/fs/cgroup/unified
[ -f "$cg_root/cgroup.controllers" ] || fail "no cgroup v2 hierarchy mounted"
CG=$cg_root/imds-snoop-systemd-test-$$
mkdir "$CG"
cg_empty() { ! find "$CG" -name cgroup.procs -exec cat {} + | grep -q .; }
cg_remove() {
    wait_until 10 cg_empty || true
    find "$CG" -depth -type d -exec rmdir {} +
}
on_exit cg_remove

# What PID 1 sees: set up inside the new namespaces, then exec systemd.
cat >"$dir/boot.sh" <<'EOF'
#!/bin/sh
set -eu
dir=$1
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
cp -a /etc "$dir/etc"
mount --bind "$dir/etc" /etc
# The scratch directory lives under /var/lib, which becomes an empty tmpfs below (install.sh
# may create /var/lib/imds-snoop): keep it reachable at its own path on top of that.
mkdir /run/scratch
mount --bind "$dir" /run/scratch
for d in /etc/systemd/system /usr/lib/systemd/system /usr/lib/systemd/system-generators \
    /etc/systemd/system-generators /usr/local/bin /var/log /var/lib; do
    mkdir -p "$d"
    mount -t tmpfs -o mode=0755 tmpfs "$d"
done
mkdir -p "$dir"
mount --move /run/scratch "$dir"
rmdir /run/scratch
# Stub targets: the unit's default dependencies (sysinit, basic, shutdown) and its
# WantedBy= target exist but pull nothing in (no udev, no tmpfiles, no journald).
for t in sysinit basic shutdown multi-user default local-fs; do
    printf '[Unit]\nDescription=stub %s\nDefaultDependencies=no\n' "$t" >/usr/lib/systemd/system/$t.target
done
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
export container=imds-snoop-test
exec /usr/lib/systemd/systemd --system --unit=default.target --log-target=console \
    --log-level=notice --show-status=no
EOF
chmod 0755 "$dir/boot.sh"

# shellcheck disable=SC2016
setsid sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "$CG" \
    ip netns exec "$NETNS" unshare --pid --fork --kill-child --mount --cgroup --uts --ipc \
    --mount-proc "$dir/boot.sh" "$dir" >"$dir/systemd.log" 2>&1 </dev/null &
# --kill-child: killing unshare kills the namespace's PID 1, and with it everything inside.
on_exit "kill -KILL $!"

# PID 1 of the new namespace, from our side.
sd_pid() {
    local u
    u=$(pgrep -f "unshare --pid --fork --kill-child .*--mount-proc $dir/boot.sh" | head -1)
    [ -n "$u" ] && pgrep -P "$u" | head -1
}
wait_until 10 sd_pid || fail "systemd did not start: $(cat "$dir/systemd.log")"
SD=$(sd_pid)
on_exit "kill -KILL $SD"
in_ns() { nsenter -t "$SD" -m -p -u -i -C -n -- "$@"; }
sd_up() {
    local state
    state=$(in_ns systemctl is-system-running 2>/dev/null) || true
    [ "$state" = running ] || [ "$state" = degraded ]
}
wait_until 20 sd_up || fail "systemd in the namespace did not come up: $(tail -20 "$dir/systemd.log")"
ok "systemd $(in_ns systemctl --version | head -1 | cut -d' ' -f2) is PID 1 of a private namespace ($(in_ns systemctl is-system-running || true))"

# Service output: no journald in here, so a runtime drop-in (in /run, which install.sh
# does not own) sends it to a file; and a short RestartSec for the restart check.
in_ns mkdir -p /run/systemd/system/imds-snoop.service.d
in_ns sh -c "printf '[Service]\nStandardOutput=append:$dir/service.out\nStandardError=append:$dir/service.err\nRestartSec=1s\n' >/run/systemd/system/imds-snoop.service.d/50-test.conf"

# What --uninstall must restore exactly: whatever this machine's /etc had (with or without
# /etc/sysusers.d, say), and the install's other targets.
# (The test's own scratch directory, under /var/lib, is not part of it.)
snapshot="find /etc /usr/local/bin /var/lib -path '$dir' -prune -o ! -name '*-' ! -name .pwd.lock -printf '%p %y %m %l\\n' | sort; cat /etc/passwd /etc/group"
before=$(in_ns sh -c "$snapshot")

# 1. install.sh as a node owner runs it.
t0=$SECONDS
in_ns "$REPO/deploy/install.sh" --binary "$binary" >"$dir/install1.out" 2>&1 ||
    fail "install.sh failed: $(cat "$dir/install1.out"; tail -5 "$dir/service.err" 2>/dev/null; grep imds-snoop "$dir/systemd.log" | tail -5)"
in_ns systemctl is-active --quiet imds-snoop.service || fail "not active after install"
in_ns systemctl is-enabled --quiet imds-snoop.service || fail "not enabled after install"
[ -s "$dir/service.err" ] && grep -q 'attached' "$dir/service.err" || fail "no 'attached' on stderr"
ok "install.sh: installed, enabled, started in $((SECONDS - t0))s (start returned after READY=1)"

main_pid() { in_ns systemctl show -P MainPID imds-snoop.service; }
pid=$(main_pid)
# MainPID is in the namespace's pid space; its status from inside.
status=$(in_ns cat "/proc/$pid/status")
uid=$(in_ns id -u imds-snoop)
grep -qP "^Uid:\t$uid\t" <<<"$status" || fail "not running as imds-snoop ($uid): $(grep ^Uid <<<"$status")"
# Capability masks as sorted name lists, compared with the unit's AmbientCapabilities=.
want=$(unit_caps | tr ',' '\n' | sort | paste -sd, -)
for f in CapEff CapPrm CapAmb CapBnd; do
    got=$(capsh --decode="$(awk -v f="$f:" '$1 == f {print $2}' <<<"$status")" |
        sed 's/^[^=]*=//' | tr ',' '\n' | sort | paste -sd, -)
    [ "$got" = "$want" ] || fail "$f is $got, want $want"
done
grep -qP '^NoNewPrivs:\t1$' <<<"$status" || fail "no-new-privs is off"
grep -qP '^Seccomp:\t2$' <<<"$status" || fail "no seccomp filter"
ok "runs as imds-snoop (uid $uid) with CapEff=CapPrm=CapAmb=CapBnd=$want only, no-new-privs, seccomp filter"

in_ns /usr/local/bin/imds-snoop check --ready-file /run/imds-snoop/ready ||
    fail "imds-snoop check: not ready"
ok "imds-snoop check --ready-file /run/imds-snoop/ready: ready"

# 2. A v1 call from a process of this "node" (in the manager's pid namespace, so the
#    daemon's /proc shows it, and in a scope of the manager, as a node's processes are: the
#    response program sees the cgroup tree of the unit's /sys/fs/cgroup, which is the
#    manager's cgroup namespace, and nsenter alone leaves a process outside it).
in_unit() { in_ns systemd-run --scope --quiet --collect -- "$@"; }
in_unit sh -c "curl -sf -m 5 -o /dev/null 'http://$IMDS/latest/meta-data/instance-id?systemd-v1'" ||
    fail "curl in the namespace failed"
wait_until 10 in_ns grep -qF '?systemd-v1' /var/log/imds/imds-trace.log ||
    fail "call not logged: $(in_ns cat /var/log/imds/imds-trace.log 2>&1)"
line=$(in_ns grep -F '?systemd-v1' /var/log/imds/imds-trace.log)
[[ $line == *"[WARNING] imdsv1(!) (pid:"*":curl argv:curl -sf -m 5 -o /dev/null http://$IMDS/latest/meta-data/instance-id?systemd-v1) called by -> (pid:"*":sh argv:"*"sh -c curl"* ]] ||
    fail "line lacks caller and parent: $line"
owner=$(in_ns stat -c %U /var/log/imds/imds-trace.log)
[ "$owner" = imds-snoop ] || fail "trace log owned by $owner"
expect_status "$line" 200 "v1 call under the unit's privileges"
if grep -q 'response statuses are not traced' "$dir/service.err"; then
    fail "the unit cannot trace statuses: $(grep 'response statuses' "$dir/service.err")"
fi
ok "v1 call logged in /var/log/imds/imds-trace.log with caller curl, parent sh and status -> 200"

# 2a. The node's network namespace (the manager's, our $NETNS) is known to the daemon
#     through the unit's ExecStartPre=+, and the log starts with the start marker.
node_netns=$(stat -L -c %i "/var/run/netns/$NETNS")
grep -qF "host network namespace: $node_netns (/run/imds-snoop/host-netns)" "$dir/service.err" ||
    fail "the daemon did not get the node's network namespace ($node_netns): $(grep -i 'network namespace' "$dir/service.err")"
first=$(in_ns head -1 /var/log/imds/imds-trace.log)
[[ $first == *"] [INFO] imds-snoop started (version "*", drop hook tp_btf/kfree_skb ("*"), statuses traced, host network namespace $node_netns (/run/imds-snoop/host-netns))" ]] ||
    fail "the trace log does not start with the start marker (drop hook, statuses traced, node namespace): $first"
ok "node network namespace $node_netns known to the daemon (ExecStartPre=+ wrote it down); trace log starts with the start marker (statuses traced, drop hook attached)"

# 2b. http_tokens=required (the fake IMDS refuses v1): the same unit logs the refusal as
#     ` -> 401`, and a token flow as ` -> 200`, under exactly the unit's privileges.
fake_imds_start --require-v2
code=$(in_unit sh -c "curl -s -m 5 -o /dev/null -w '%{http_code}' 'http://$IMDS/latest/meta-data/instance-id?systemd-enforced'") || true
[ "$code" = 401 ] || fail "the enforcing fake IMDS answered the v1 call $code"
wait_until 10 in_ns grep -qF '?systemd-enforced' /var/log/imds/imds-trace.log ||
    fail "enforced v1 call not logged: $(in_ns tail -3 /var/log/imds/imds-trace.log)"
line=$(in_ns grep -F '?systemd-enforced' /var/log/imds/imds-trace.log)
[[ $line == *"[WARNING] imdsv1(!) (pid:"* ]] || fail "not logged as v1: $line"
expect_status "$line" 401 "v1 call under enforcement"
in_unit sh -c "T=\$(curl -sf -m 5 -A systemd-put -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' 'http://$IMDS/latest/api/token') && curl -sf -m 5 -o /dev/null -H \"X-aws-ec2-metadata-token: \$T\" 'http://$IMDS/latest/meta-data/instance-id?systemd-v2'" ||
    fail "token flow against the enforcing fake IMDS failed"
wait_until 10 in_ns grep -qF 'req details: get /latest/meta-data/instance-id?systemd-v2 http' /var/log/imds/imds-trace.log ||
    fail "v2 call not logged"
put=$(in_ns grep -F 'user-agent: systemd-put,' /var/log/imds/imds-trace.log)
[[ $put == *"[INFO] imdsv2(token) (pid:"* ]] || fail "token PUT not logged as such: $put"
expect_status "$put" 200 "token PUT under enforcement"
v2=$(in_ns grep -F 'req details: get /latest/meta-data/instance-id?systemd-v2 http' /var/log/imds/imds-trace.log)
expect_status "$v2" 200 "v2 call under enforcement"
fake_imds_start
ok "http_tokens=required: v1 call logged -> 401, token PUT and v2 call -> 200"

# 2c. Hop limit 1, under the unit's privileges: IMDS behind the node answers token PUTs with
#     TTL 1 (lib.sh's routed_up). The node's own PUT crosses one link and is answered; the
#     pod's reply dies in the node's forwarding path, and the unit's drop hook logs it. The
#     pod's curl runs in the manager's pid and mount namespaces (so the daemon's /proc shows
#     it) with the pod's network namespace (nsenter opens it before entering the others).
routed_up --ttl 1
trace=/proc/$SD/root/var/log/imds/imds-trace.log
in_pod() {
    nsenter -t "$SD" -m -p -u -i -C --net="/var/run/netns/$POD_NETNS" -- \
        systemd-run --scope --quiet --collect -- "$@"
}
expect_node_put systemd-node-put "$trace" in_unit
line=$(expect_hop_drop systemd-pod-put "$trace" in_pod)
if grep -q 'hop-limit drops are not traced' "$dir/service.err"; then
    fail "the unit cannot trace hop-limit drops: $(grep 'hop-limit drops' "$dir/service.err")"
fi
fake_imds_start
ok "hop limit 1: the node's token PUT -> 200 (net:host), the routed pod's logged '$DROPPED_LABEL' (net:other): $(cut -c1-80 <<<"$line")..."

# 3. A second install: nothing changes, nothing restarts.
in_ns "$REPO/deploy/install.sh" --binary "$binary" >"$dir/install2.out" 2>&1 ||
    fail "second install.sh failed: $(cat "$dir/install2.out")"
[ "$(main_pid)" = "$pid" ] || fail "a second install restarted the service"
grep -q 'unchanged: imds-snoop.service running' "$dir/install2.out" || fail "$(cat "$dir/install2.out")"
ok "second install.sh: nothing changed, same MainPID"

# 4. Restart=on-failure.
in_ns kill -KILL "$pid"
restarted() {
    [ "$(in_ns systemctl show -P NRestarts imds-snoop.service)" = 1 ] &&
        in_ns systemctl is-active --quiet imds-snoop.service
}
wait_until 15 restarted ||
    fail "not restarted after SIGKILL: $(in_ns systemctl show -p ActiveState -p SubState -p NRestarts imds-snoop.service)"
ok "Restart=on-failure: back after SIGKILL (NRestarts=1, new MainPID $(main_pid))"

# 4b. The report sees the SIGKILL: a start after trace lines with no stop marker between
#     is a gap, so no SAFE for this node.
wait_until 10 sh -c "[ \$(nsenter -t $SD -m cat /var/log/imds/imds-trace.log | grep -c 'imds-snoop started') = 2 ]" ||
    fail "no second start marker after the restart"
verdict=$(in_ns /usr/local/bin/imds-snoop report --min-window 0 /var/log/imds/ | tail -1)
[[ $verdict == *"(incomplete: a gap in the log: the daemon started again at "*" without having stopped (killed or crashed)"* ]] ||
    fail "the report does not see the gap the SIGKILL left: $verdict"
ok "report after SIGKILL: $(cut -c1-150 <<<"$verdict")..."

# 5. A start that cannot attach fails: Type=notify means active = attached.
in_ns sh -c "printf '[Service]\nAmbientCapabilities=\nAmbientCapabilities=CAP_PERFMON CAP_DAC_READ_SEARCH\nRestart=no\n' >/run/systemd/system/imds-snoop.service.d/60-nobpf.conf"
in_ns systemctl daemon-reload
if in_ns systemctl restart imds-snoop.service 2>"$dir/restart.err"; then
    fail "systemctl restart succeeded without CAP_BPF"
fi
state=$(in_ns systemctl show -P ActiveState imds-snoop.service)
[ "$state" != active ] || fail "active without CAP_BPF"
in_ns rm /run/systemd/system/imds-snoop.service.d/60-nobpf.conf
in_ns systemctl daemon-reload
in_ns systemctl restart imds-snoop.service || fail "restart with the unit's capabilities failed"
ok "without CAP_BPF 'systemctl restart' fails (state $state); with the unit's set it is active again"

# 5b. Metrics: off in the unit as shipped; on with the drop-in its header comment documents
#     (read from there, so the documentation is what is tested).
unit=$REPO/deploy/systemd/imds-snoop.service
if grep '^ExecStart=' "$unit" | grep -q -- --metrics-addr; then fail "metrics on by default"; fi
awk '/^# Metrics \(Prometheus/ {m = 1}
     m && !/^#/ {m = 0}
     m && /-> *\[Service\]/ {s = 1; print "[Service]"; next}
     m && s {sub(/^# */, ""); print}' "$unit" >"$dir/70-metrics.conf"
metrics_url=$(sed -n 's/.*--metrics-addr \([^ ]*\).*/http:\/\/\1\/metrics/p' "$dir/70-metrics.conf")
[ -n "$metrics_url" ] || fail "no metrics drop-in in the header of $unit"
in_ns cp "$dir/70-metrics.conf" /run/systemd/system/imds-snoop.service.d/70-metrics.conf
in_ns systemctl daemon-reload
in_ns systemctl restart imds-snoop.service || fail "restart with the metrics drop-in failed: $(tail -5 "$dir/service.err")"
in_ns sh -c "curl -sf -m 5 -o /dev/null 'http://$IMDS/latest/meta-data/instance-id?systemd-metrics'" ||
    fail "curl in the namespace failed"
wait_until 10 in_ns grep -qF '?systemd-metrics' /var/log/imds/imds-trace.log || fail "call not logged"
logged=$(in_ns grep -cF '?systemd-metrics' /var/log/imds/imds-trace.log)
scrape=$(in_ns python3 "$REPO/tests/e2e/scrape_metrics.py" "$metrics_url") ||
    fail "scraping $metrics_url failed: $(tail -5 "$dir/service.err")"
python3 - "$scrape" "$logged" <<'EOF' || fail "metrics: $scrape"
import json, sys
samples = json.loads(sys.argv[1])["samples"]
got = sum(v for n, l, v in samples
          if n == "imds_snoop_requests_total" and l["class"] == "v1" and l["comm"] == "curl")
assert got == int(sys.argv[2]), (got, sys.argv[2])
# The labels a fleet aggregates by; no pod label (bounded by workload instead).
want = {"class", "status", "host_network", "namespace", "workload", "container", "image", "comm"}
for n, l, v in samples:
    if n == "imds_snoop_requests_total":
        assert set(l) == want, l
starts = [v for n, l, v in samples if n == "imds_snoop_window_start_seconds"]
import time
assert len(starts) == 1 and 1.7e9 < starts[0] <= time.time(), starts
EOF
in_ns rm /run/systemd/system/imds-snoop.service.d/70-metrics.conf
in_ns systemctl daemon-reload
in_ns systemctl restart imds-snoop.service || fail "restart without the metrics drop-in failed"
ok "metrics: off as shipped; the documented drop-in serves $metrics_url, counting the logged v1 call"

# 6. A clean stop.
pid=$(main_pid)
in_ns systemctl stop imds-snoop.service
[ "$(in_ns systemctl show -P ExecMainStatus imds-snoop.service)" = 0 ] || fail "stop: exit status not 0"
in_ns test ! -e /run/imds-snoop/ready || fail "ready file left after stop"
grep -q 'detached, log flushed' "$dir/service.err" || fail "no clean-exit message"
last=$(in_ns tail -1 /var/log/imds/imds-trace.log)
[[ $last == *"] [INFO] imds-snoop stopped (version "* ]] || fail "the trace log does not end with the stop marker: $last"
ok "systemctl stop: exit 0, 'detached, log flushed', stop marker last in the trace log, ready file removed"
in_ns systemctl start imds-snoop.service

# 7. Uninstall: stopped, disabled, everything removed but the trace logs.
in_ns "$REPO/deploy/install.sh" --uninstall >"$dir/uninstall.out" 2>&1 ||
    fail "install.sh --uninstall failed: $(cat "$dir/uninstall.out")"
if in_ns systemctl is-active --quiet imds-snoop.service; then fail "still active after uninstall"; fi
after=$(in_ns sh -c "$snapshot")
if [ "$after" != "$before" ]; then
    diff <(echo "$before") <(echo "$after") >&2 || true
    fail "--uninstall left /etc, /usr/local/bin or /var/lib different from before the install"
fi
in_ns test -f /var/log/imds/imds-trace.log || fail "--uninstall removed the trace log"
in_ns "$REPO/deploy/install.sh" --uninstall --purge >"$dir/purge.out" 2>&1 || fail "--purge failed"
in_ns test ! -e /var/log/imds || fail "--purge left /var/log/imds"
ok "--uninstall: stopped, disabled, /etc, /usr/local/bin and /var/lib as before, logs kept; --purge removes them"

echo "systemd_test: $PASSED passed, 0 failed"
