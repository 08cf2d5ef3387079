#!/usr/bin/env bash
# Installs imds-snoop as a systemd service, or removes it. Idempotent: running it again
# changes nothing and restarts nothing unless a file changed.
#
#   sudo ./install.sh                  install (or update), enable and start
#   sudo ./install.sh --uninstall      stop, disable, remove everything it installed
#                                      (trace logs in /var/log/imds are kept ...)
#   sudo ./install.sh --uninstall --purge   (... unless --purge)
#
# Options:
#   --binary PATH   the imds-snoop binary (default: ./imds-snoop next to this script, as in
#                   a release tarball; in a checkout, target/<arch>-unknown-linux-musl/release/
#                   then target/release/)
#   --root DIR      install into DIR instead of / (also: DESTDIR=DIR): no systemctl start,
#                   no root needed beyond writing DIR. For packaging and tests.
#   --no-start      install and enable, but do not start (or restart) the service
#
# What it installs (and --uninstall removes):
#   /usr/local/bin/imds-snoop
#   /etc/systemd/system/imds-snoop.service   (+ its enablement in multi-user.target.wants,
#                                             + any drop-ins in imds-snoop.service.d/)
#   /etc/sysusers.d/imds-snoop.conf           and the system user/group `imds-snoop`
#   /var/lib/imds-snoop/created-dirs          the directories this script had to create
#                                             (e.g. /etc/sysusers.d on a machine without
#                                             it); --uninstall removes those that are
#                                             empty then, and never one that existed before
# At run time systemd creates /var/log/imds (LogsDirectory) and /run/imds-snoop.
#
# Without a running systemd (a container, an image build, a chroot) it installs and enables
# the unit offline (`systemctl --root`) and says that it did not start it.
set -euo pipefail

readonly NAME=imds-snoop
readonly USER_NAME=imds-snoop

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${DESTDIR:-}
binary=
mode=install
purge=0
start=1

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --binary=*) binary=${1#*=}; shift ;;
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --root=*) root=${1#*=}; shift ;;
    --uninstall) mode=uninstall; shift ;;
    --purge) purge=1; shift ;;
    --no-start) start=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[ "$purge" = 0 ] || [ "$mode" = uninstall ] || die "--purge goes with --uninstall"

# Paths inside the target root ("" is the running system).
if [ -n "$root" ]; then
    [ -d "$root" ] || die "--root/DESTDIR $root is not a directory"
    root=$(cd "$root" && pwd)
    [ "$root" != / ] || root=
fi
readonly bin_path=/usr/local/bin/$NAME
readonly unit_path=/etc/systemd/system/$NAME.service
readonly dropin_dir=/etc/systemd/system/$NAME.service.d
readonly wants_link=/etc/systemd/system/multi-user.target.wants/$NAME.service
readonly sysusers_path=/etc/sysusers.d/$NAME.conf
readonly wants_dir=/etc/systemd/system/multi-user.target.wants
readonly state_dir=/var/lib/$NAME
readonly created_list=$state_dir/created-dirs
readonly log_dir=/var/log/imds
readonly run_dir=/run/$NAME

if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
    die "needs root (or --root DIR to install into a directory)"
fi

# systemctl talks to the running manager only for the real system with systemd as init.
systemd_running() {
    [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}
systemctl_offline() {
    command -v systemctl >/dev/null 2>&1 || {
        say "systemctl not found: skipping '$*' (enable the unit by hand where it runs)"
        return 0
    }
    systemctl --root="${root:-/}" "$@"
}

# make_dir DIR: creates DIR (a path on the target system) and any missing parents, and
# appends each directory it created to $created_list, parents first, so that --uninstall
# removes exactly what the install added and nothing that was there before.
make_dir() {
    local dir=$1 missing=() d
    d=$dir
    while [ -n "$d" ] && [ "$d" != / ] && [ ! -d "$root$d" ]; do
        missing=("$d" "${missing[@]}")
        d=$(dirname "$d")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    mkdir -p "$root$dir"
    # The list's own directory may be among those created: make it first, then record.
    [ -d "$root$state_dir" ] || make_dir "$state_dir"
    for d in "${missing[@]}"; do
        printf '%s\n' "$d" >>"$root$created_list"
    done
}

# remove_created_dirs: removes the directories in $created_list, deepest first, where they
# are empty now (a directory that something else has put files in since stays).
remove_created_dirs() {
    [ -f "$root$created_list" ] || return 0
    local dirs d
    mapfile -t dirs < <(LC_ALL=C sort -ru "$root$created_list")
    rm -f -- "$root$created_list"
    for d in "${dirs[@]}"; do
        case "$d" in /?*) ;; *) continue ;; esac # only absolute paths below /
        [ -d "$root$d" ] && [ ! -L "$root$d" ] || continue
        if rmdir -- "$root$d" 2>/dev/null; then
            say "removed: $d (created by the install)"
        else
            say "kept: $d (created by the install, not empty now)"
        fi
    done
}

changed=0
# install_file SRC DST MODE: copies only when the content or mode differs (atomic rename,
# so a running binary is replaced, never rewritten in place).
install_file() {
    local src=$1 dst=$root$2 mode=$3
    if [ -f "$dst" ] && cmp -s "$src" "$dst" &&
        [ "$(stat -c %a "$dst")" = "$(printf '%o' "$((8#$mode))")" ]; then
        say "unchanged: $2"
        return 0
    fi
    make_dir "$(dirname "$2")"
    install -m "$mode" "$src" "$dst.install-tmp"
    mv -f "$dst.install-tmp" "$dst"
    say "installed: $2"
    changed=1
}

user_exists() {
    grep -q "^$USER_NAME:" "$root/etc/passwd" 2>/dev/null
}
group_exists() {
    grep -q "^$USER_NAME:" "$root/etc/group" 2>/dev/null
}

create_user() {
    if user_exists; then
        say "unchanged: user $USER_NAME"
        return 0
    fi
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers --root="${root:-/}" "$root$sysusers_path"
    elif command -v useradd >/dev/null 2>&1; then
        useradd ${root:+--prefix "$root"} --system --user-group --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin \
            --comment "imds-snoop IMDS call tracer" "$USER_NAME"
    else
        die "neither systemd-sysusers nor useradd found: cannot create user $USER_NAME"
    fi
    user_exists || die "user $USER_NAME was not created"
    say "created: user $USER_NAME"
}

remove_user() {
    if user_exists; then
        userdel ${root:+--prefix "$root"} "$USER_NAME"
        say "removed: user $USER_NAME"
    fi
    if group_exists; then
        groupdel ${root:+--prefix "$root"} "$USER_NAME"
        say "removed: group $USER_NAME"
    fi
}

find_binary() {
    if [ -n "$binary" ]; then
        [ -f "$binary" ] || die "--binary $binary: no such file"
        echo "$binary"
        return
    fi
    local arch candidates c
    arch=$(uname -m)
    candidates=(
        "$here/$NAME"
        "$here/../target/$arch-unknown-linux-musl/release/$NAME"
        "$here/../target/release/$NAME"
    )
    for c in "${candidates[@]}"; do
        if [ -f "$c" ]; then
            echo "$c"
            return
        fi
    done
    die "no imds-snoop binary: pass --binary PATH (looked for: ${candidates[*]})"
}

do_install() {
    local src version
    src=$(find_binary)
    # It must run here (right architecture, not a truncated download).
    version=$("$src" --version 2>&1) || die "$src does not run here: $version"
    [ -f "$here/systemd/$NAME.service" ] || die "missing $here/systemd/$NAME.service"
    say "installing $version from $src${root:+ into $root}"

    install_file "$src" "$bin_path" 755
    install_file "$here/systemd/$NAME.sysusers" "$sysusers_path" 644
    install_file "$here/systemd/$NAME.service" "$unit_path" 644
    create_user

    if systemd_running; then
        if [ "$changed" = 1 ]; then
            systemctl daemon-reload
        fi
        if systemctl is-enabled --quiet "$NAME.service" 2>/dev/null; then
            say "unchanged: $NAME.service enabled"
        else
            make_dir "$wants_dir"
            systemctl enable "$NAME.service"
        fi
        if [ "$start" = 0 ]; then
            say "--no-start: not starting $NAME.service"
        elif systemctl is-active --quiet "$NAME.service"; then
            if [ "$changed" = 1 ]; then
                say "restarting $NAME.service (files changed)"
                systemctl restart "$NAME.service" || start_failed
            else
                say "unchanged: $NAME.service running"
            fi
        else
            say "starting $NAME.service (returns once the kernel program is attached)"
            systemctl start "$NAME.service" || start_failed
        fi
        systemctl --no-pager --lines=0 status "$NAME.service" || true
        say "done: trace log $log_dir/imds-trace.log"
    else
        if [ -L "$root$wants_link" ]; then
            say "unchanged: $NAME.service enabled"
        else
            make_dir "$wants_dir"
            systemctl_offline enable "$NAME.service"
        fi
        if [ -n "$root" ]; then
            say "installed into $root: not starting anything"
        else
            say "systemd is not running here (no /run/systemd/system): skipping systemctl start;" \
                "the unit is enabled and starts at the next boot"
        fi
    fi
}

start_failed() {
    systemctl --no-pager --lines=20 status "$NAME.service" >&2 || true
    die "$NAME.service did not start: see \`journalctl -u $NAME.service\`"
}

# created_by_install DIR: whether DIR is in $created_list.
created_by_install() {
    [ -f "$root$created_list" ] && grep -qxF -- "$1" "$root$created_list"
}

do_uninstall() {
    # `systemctl disable` removes the wants directory when it leaves it empty, even one
    # that was there before the install: note it (and its mode) to put it back.
    local wants_mode=
    if [ -d "$root$wants_dir" ] && ! created_by_install "$wants_dir"; then
        wants_mode=$(stat -c %a "$root$wants_dir")
    fi
    if systemd_running; then
        if systemctl cat "$NAME.service" >/dev/null 2>&1; then
            systemctl disable --now "$NAME.service" || true
        fi
    elif [ -e "$root$unit_path" ] || [ -L "$root$wants_link" ]; then
        systemctl_offline disable "$NAME.service" || true
    fi
    if [ -n "$wants_mode" ] && [ ! -d "$root$wants_dir" ]; then
        mkdir -m "$wants_mode" -- "$root$wants_dir"
        say "kept: $wants_dir (there before the install; systemctl disable had removed it)"
    fi
    local p
    for p in "$wants_link" "$unit_path" "$dropin_dir" "$bin_path" "$sysusers_path" "$run_dir"; do
        if [ -e "$root$p" ] || [ -L "$root$p" ]; then
            rm -rf -- "$root$p"
            say "removed: $p"
        fi
    done
    remove_user
    remove_created_dirs
    if systemd_running; then
        systemctl daemon-reload
        systemctl reset-failed "$NAME.service" 2>/dev/null || true
    fi
    if [ -d "$root$log_dir" ]; then
        if [ "$purge" = 1 ]; then
            rm -rf -- "$root$log_dir"
            say "removed: $log_dir (--purge)"
        else
            say "kept: $log_dir (trace logs; --uninstall --purge removes them)"
        fi
    fi
    say "uninstalled"
}

case "$mode" in
install) do_install ;;
uninstall) do_uninstall ;;
esac
