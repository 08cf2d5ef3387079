#!/usr/bin/env bash
# Builds the imds-snoop image from deploy/container/Containerfile with buildah (Debian's
# package; no daemon, no registry, vfs storage in a scratch directory) into an OCI archive.
#
#   deploy/container/build.sh --binary PATH [--arch amd64|arm64] [--version V] [--output FILE]
#
# --binary   the static musl binary (target/<arch>-unknown-linux-musl/release/imds-snoop or
#            the one in a release tarball)
# --arch     image architecture (default: from the binary's ELF header)
# --version  image tag (default: the binary's --version, when it runs here)
# --output   default target/image/imds-snoop-<version>-<arch>.oci.tar
#
# Load the archive where it runs: `ctr -n k8s.io images import FILE`, or push it:
# `skopeo copy oci-archive:FILE docker://<registry>/imds-snoop:<version>`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
binary= arch= version= output=
while [ $# -gt 0 ]; do
    case "$1" in
    --binary) binary=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
die() { echo "build.sh: error: $*" >&2; exit 1; }
[ -n "$binary" ] || die "--binary PATH is required"
[ -f "$binary" ] || die "$binary: no such file"
command -v buildah >/dev/null || die "buildah is not installed (Debian: apt-get install buildah)"

# A FROM scratch image must get a static binary: no loader, no libc in there.
if head -c 4 "$binary" | cmp -s - <(printf '\177ELF'); then :; else die "$binary is not an ELF file"; fi
if [ -z "$arch" ]; then
    # e_machine at offset 18: 0x3e x86-64, 0xb7 aarch64.
    case $(od -An -tx1 -j18 -N1 "$binary" | tr -d ' ') in
    3e) arch=amd64 ;;
    b7) arch=arm64 ;;
    *) die "cannot tell the architecture of $binary: pass --arch" ;;
    esac
fi
# A dynamically linked ELF names its loader in a PT_INTERP segment.
if grep -qaF -e /lib64/ld-linux -e /lib/ld-linux -e /lib/ld-musl "$binary"; then
    die "$binary is dynamically linked: build the musl target (cargo xtask dist)"
fi
if [ -z "$version" ]; then
    version=$("$binary" --version 2>/dev/null | awk '{print $2}') ||
        version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
    [ -n "$version" ] || version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
fi
output=${output:-$repo/target/image/imds-snoop-$version-$arch.oci.tar}
mkdir -p "$(dirname "$output")"
output=$(cd "$(dirname "$output")" && pwd)/$(basename "$output")

work=$(mktemp -d "${TMPDIR:-/tmp}/imds-snoop-image.XXXXXX")
cleanup() {
    buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs rmi --all >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/context"
install -m 0755 "$binary" "$work/context/imds-snoop"

b=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
tag=localhost/imds-snoop:$version
"${b[@]}" build --quiet --platform "linux/$arch" --format oci --timestamp 0 \
    -f "$here/Containerfile" -t "$tag" "$work/context" >/dev/null
rm -f "$output"
"${b[@]}" push --quiet "$tag" "oci-archive:$output:imds-snoop:$version"
echo "$output"
