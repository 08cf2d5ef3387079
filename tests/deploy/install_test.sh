#!/usr/bin/env bash
# deploy/install.sh in a scratch root (its --root/DESTDIR mode): nothing on this machine
# outside the scratch directory is touched.
#
#   tests/deploy/install_test.sh BINARY
#
# Checks: install puts the binary, unit and sysusers entry in place with the right modes,
# creates the service user and enables the unit (multi-user.target.wants symlink); a second
# install changes nothing; a new binary is picked up; --uninstall leaves the scratch root
# exactly as it was before (file list, modes and contents), apart from the backup files
# that shadow's and systemd's user tools write on every Linux system (/etc/passwd- ...).
set -euo pipefail

binary=${1:?usage: install_test.sh BINARY}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
install_sh=$here/../../deploy/install.sh
unit_src=$here/../../deploy/systemd/imds-snoop.service

fail() {
    echo "install_test: FAILED: $*" >&2
    exit 1
}
ok() { echo "install_test: ok: $*"; }

scratch=$(mktemp -d "${TMPDIR:-/tmp}/imds-install-test.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# A system root with only the account databases in /etc. With "full", also the directories
# a systemd system usually has; without, install.sh must create what it needs and
# --uninstall must remove exactly those again (a machine without /etc/sysusers.d is real).
make_root() {
    root=$scratch/$1
    mkdir -p "$root/etc"
    if [ "$1" = full ]; then
        mkdir -p "$root"/etc/systemd/system/multi-user.target.wants "$root"/etc/sysusers.d \
            "$root"/usr/local/bin "$root"/var/log "$root"/var/lib
    fi
    printf 'root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    printf 'root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n' >"$root/etc/shadow"
    printf 'root:*::\nnogroup:*::\n' >"$root/etc/gshadow"
    chmod 0640 "$root/etc/shadow" "$root/etc/gshadow"
}

# The state of the root: every path with type and mode, and the content of files and links.
snapshot() {
    (cd "$root" && find . \
        ! -path './etc/passwd-' ! -path './etc/group-' ! -path './etc/shadow-' \
        ! -path './etc/gshadow-' ! -path './etc/.pwd.lock' -printf '%p %y %m %l\n' |
        LC_ALL=C sort)
    (cd "$root" && find . -type f \
        ! -path './etc/passwd-' ! -path './etc/group-' ! -path './etc/shadow-' \
        ! -path './etc/gshadow-' ! -path './etc/.pwd.lock' -exec sha256sum {} + |
        LC_ALL=C sort -k2)
}

run_install() {
    "$install_sh" --root "$root" "$@" >"$scratch/out" 2>&1 || {
        cat "$scratch/out" >&2
        fail "install.sh $* exited non-zero"
    }
}

passed=0
for kind in bare full; do
    make_root "$kind"
    before=$(snapshot)
    # 1. First install.
    run_install --binary "$binary"
    cmp -s "$binary" "$root/usr/local/bin/imds-snoop" || fail "binary not installed"
    [ "$(stat -c %a "$root/usr/local/bin/imds-snoop")" = 755 ] || fail "binary mode"
    cmp -s "$unit_src" "$root/etc/systemd/system/imds-snoop.service" || fail "unit not installed"
    [ "$(stat -c %a "$root/etc/systemd/system/imds-snoop.service")" = 644 ] || fail "unit mode"
    [ -f "$root/etc/sysusers.d/imds-snoop.conf" ] || fail "sysusers entry not installed"
    link=$root/etc/systemd/system/multi-user.target.wants/imds-snoop.service
    [ "$(readlink "$link")" = /etc/systemd/system/imds-snoop.service ] ||
        fail "not enabled: $link -> $(readlink "$link" || echo missing)"
    grep -q '^imds-snoop:x:[0-9]*:[0-9]*:.*:/nonexistent:/usr/sbin/nologin$' "$root/etc/passwd" ||
        fail "no system user imds-snoop in etc/passwd: $(cat "$root/etc/passwd")"
    uid=$(awk -F: '$1 == "imds-snoop" {print $3}' "$root/etc/passwd")
    [ "$uid" -lt 1000 ] || fail "imds-snoop uid $uid is not a system uid"
    grep -q '^imds-snoop:' "$root/etc/group" || fail "no group imds-snoop"
    grep -q 'not starting anything' "$scratch/out" || fail "a --root install must not start anything"
    ok "$kind root: first install: binary, unit, sysusers entry, user uid $uid, enabled"

    # 2. Second install: nothing changes.
    after_first=$(snapshot)
    run_install --binary "$binary"
    [ "$(snapshot)" = "$after_first" ] || fail "a second install changed the root"
    if grep -E 'installed:|created:' "$scratch/out"; then
        fail "a second install reported changes"
    fi
    ok "$kind root: second install: no change"

    # 3. An updated binary is picked up (and only it).
    cp "$binary" "$scratch/imds-snoop-new"
    printf 'x' >>"$scratch/imds-snoop-new" # still runs: trailing bytes after the ELF
    run_install --binary "$scratch/imds-snoop-new"
    cmp -s "$scratch/imds-snoop-new" "$root/usr/local/bin/imds-snoop" || fail "update not installed"
    [ "$(grep -c 'installed:' "$scratch/out")" = 1 ] || fail "update: $(cat "$scratch/out")"
    ok "$kind root: update: new binary installed, nothing else"

    # 4. Uninstall: back to the exact state before the first install.
    run_install --uninstall
    after=$(snapshot)
    if [ "$after" != "$before" ]; then
        diff <(echo "$before") <(echo "$after") >&2 || true
        fail "--uninstall left the root different from before the install"
    fi
    ok "$kind root: uninstall: root identical to before the install"

    # 5. Uninstall again: harmless.
    run_install --uninstall
    [ "$(snapshot)" = "$before" ] || fail "a second --uninstall changed the root"
    ok "$kind root: second uninstall: no change"

    # 6. Refusals: a missing binary, an unknown flag.
    if "$install_sh" --root "$root" --binary "$scratch/nope" >"$scratch/out" 2>&1; then
        fail "install with a missing binary succeeded"
    fi
    grep -q 'no such file' "$scratch/out" || fail "missing binary message: $(cat "$scratch/out")"
    if "$install_sh" --root "$root" --frobnicate >"$scratch/out" 2>&1; then
        fail "unknown flag accepted"
    fi
    [ "$(snapshot)" = "$before" ] || fail "a refused install changed the root"
    ok "$kind root: refusals: missing binary, unknown flag; root untouched"

    passed=$((passed + 6))
done

# 6b. A directory the install created but that holds someone else's file at uninstall stays.
make_root bare
run_install --binary "$binary"
touch "$root/etc/sysusers.d/other.conf"
run_install --uninstall
[ -f "$root/etc/sysusers.d/other.conf" ] || fail "--uninstall removed another package's file"
grep -q 'kept: /etc/sysusers.d (created by the install, not empty now)' "$scratch/out" ||
    fail "no 'kept' message: $(cat "$scratch/out")"
[ ! -e "$root/usr/local/bin" ] || fail "--uninstall left /usr/local/bin, which it created"
ok "a created directory that is not empty at uninstall stays (and is named), the others go"
passed=$((passed + 1))

# 7. The real paths (no --root) on a machine where systemd is not running (a container,
#    an image build): needs root; done in a private mount namespace whose /etc is a copy
#    and whose /usr/local/bin, /run and /var/lib are empty tmpfs, so this machine is not
#    touched. Uninstall leaves /etc, /usr/local/bin and /var/lib as they were.
if [ "$(id -u)" = 0 ]; then
    cat >"$scratch/nosystemd.sh" <<'EOF2'
set -eu
scratch=$1 install_sh=$2 binary=$3
mount --make-rprivate /
cp -a /etc "$scratch/etc-copy"
mount --bind "$scratch/etc-copy" /etc
mount -t tmpfs tmpfs /usr/local/bin
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/lib
state() { find /etc /usr/local/bin /var/lib ! -name "*-" ! -name .pwd.lock -printf "%p %y %m %l\n" | sort; }
state >"$scratch/ns-before"
"$install_sh" --binary "$binary" >"$scratch/ns1.out" 2>&1
"$install_sh" --binary "$binary" >"$scratch/ns2.out" 2>&1
test -x /usr/local/bin/imds-snoop
test -L /etc/systemd/system/multi-user.target.wants/imds-snoop.service
grep -q '^imds-snoop:' /etc/passwd
"$install_sh" --uninstall >"$scratch/ns3.out" 2>&1
test ! -e /usr/local/bin/imds-snoop
test ! -e /etc/systemd/system/imds-snoop.service
test ! -e /etc/systemd/system/multi-user.target.wants/imds-snoop.service
! grep -q '^imds-snoop:' /etc/passwd
state | diff "$scratch/ns-before" - >"$scratch/ns4.out"
EOF2
    unshare --mount sh "$scratch/nosystemd.sh" "$scratch" "$install_sh" "$binary" ||
        fail "install without a running systemd: $(cat "$scratch"/ns*.out 2>/dev/null)"
    grep -q 'systemd is not running here .*skipping systemctl start' "$scratch/ns1.out" ||
        fail "no 'systemd is not running' message: $(cat "$scratch/ns1.out")"
    if grep -E 'installed:|created:' "$scratch/ns2.out"; then fail "second install changed files"; fi
    ok "real paths without a running systemd: installed and enabled offline, says it did not start; second run no change; uninstalled, /etc as before"
    passed=$((passed + 1))
else
    echo "install_test: *** SKIPPED (not root): install to the real paths without systemd ***"
fi

echo "install_test: $passed passed, 0 failed"
