#!/usr/bin/env bash
# Builds the imds-snoop image from deploy/container/Containerfile with buildah (Debian's
# package; no daemon, no registry, vfs storage in a scratch directory) into an OCI archive.
#
#   deploy/container/build.sh --binary PATH [--binary PATH] [--arch amd64|arm64]
#                             [--version V] [--output FILE]
#
# --binary   the static musl binary (target/<arch>-unknown-linux-musl/release/imds-snoop or
#            the one in a release tarball). Given once per architecture (x86_64 and
#            aarch64), the archive holds one image reference for all of them: an OCI image
#            index with one manifest per architecture (buildah manifest create/add/push),
#            which containerd and registries resolve to the node's architecture.
# --arch     image architecture, with one --binary only (default: from the binary's ELF
#            header)
# --version  image tag (default: the binary's --version, when it runs here)
# --output   default target/image/imds-snoop-<version>-<arch>.oci.tar, or with several
#            binaries target/image/imds-snoop-<version>.oci.tar
#
# Load the archive where it runs: `ctr -n k8s.io images import --all-platforms FILE`, or
# push it: `skopeo copy --all oci-archive:FILE docker://<registry>/imds-snoop:<version>`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
binaries=() arch= version= output=
while [ $# -gt 0 ]; do
    case "$1" in
    --binary) binaries+=("$2"); shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
die() { echo "build.sh: error: $*" >&2; exit 1; }
[ ${#binaries[@]} -gt 0 ] || die "--binary PATH is required"
[ -z "$arch" ] || [ ${#binaries[@]} = 1 ] || die "--arch goes with one --binary only"
command -v buildah >/dev/null || die "buildah is not installed (Debian: apt-get install buildah)"

# Each binary: static ELF; its architecture (Debian/OCI name) from the ELF header.
arches=()
for binary in "${binaries[@]}"; do
    [ -f "$binary" ] || die "$binary: no such file"
    # A FROM scratch image must get a static binary: no loader, no libc in there.
    if head -c 4 "$binary" | cmp -s - <(printf '\177ELF'); then :; else die "$binary is not an ELF file"; fi
    a=$arch
    if [ -z "$a" ]; then
        # e_machine at offset 18: 0x3e x86-64, 0xb7 aarch64.
        case $(od -An -tx1 -j18 -N1 "$binary" | tr -d ' ') in
        3e) a=amd64 ;;
        b7) a=arm64 ;;
        *) die "cannot tell the architecture of $binary: pass --arch" ;;
        esac
    fi
    for seen in "${arches[@]}"; do
        [ "$seen" != "$a" ] || die "two binaries for $a"
    done
    arches+=("$a")
    # A dynamically linked ELF names its loader in a PT_INTERP segment.
    if grep -qaF -e /lib64/ld-linux -e /lib/ld-linux -e /lib/ld-musl "$binary"; then
        die "$binary is dynamically linked: build the musl target (cargo xtask dist)"
    fi
done
if [ -z "$version" ]; then
    # The first binary that runs here (the others may be another architecture's).
    for binary in "${binaries[@]}"; do
        version=$("$binary" --version 2>/dev/null | awk '{print $2}') || version=
        [ -z "$version" ] || break
    done
    [ -n "$version" ] || version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
fi
if [ ${#binaries[@]} = 1 ]; then
    output=${output:-$repo/target/image/imds-snoop-$version-${arches[0]}.oci.tar}
else
    output=${output:-$repo/target/image/imds-snoop-$version.oci.tar}
fi
mkdir -p "$(dirname "$output")"
output=$(cd "$(dirname "$output")" && pwd)/$(basename "$output")

work=$(mktemp -d "${TMPDIR:-/tmp}/imds-snoop-image.XXXXXX")
cleanup() {
    buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs rmi --all >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

b=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
tag=localhost/imds-snoop:$version
# One image per architecture (FROM scratch + COPY: nothing runs, so no emulation is needed
# to build a foreign architecture's image).
images=()
for i in "${!binaries[@]}"; do
    a=${arches[$i]}
    mkdir "$work/context-$a"
    install -m 0755 "${binaries[$i]}" "$work/context-$a/imds-snoop"
    image=$tag
    [ ${#binaries[@]} = 1 ] || image=$tag-$a
    "${b[@]}" build --quiet --platform "linux/$a" --format oci --timestamp 0 \
        -f "$here/Containerfile" -t "$image" "$work/context-$a" >/dev/null
    images+=("$image")
done
rm -f "$output"
if [ ${#binaries[@]} = 1 ]; then
    "${b[@]}" push --quiet "$tag" "oci-archive:$output:imds-snoop:$version"
else
    # One reference for every architecture: an OCI image index.
    "${b[@]}" manifest create "$tag" >/dev/null
    for image in "${images[@]}"; do
        "${b[@]}" manifest add "$tag" "containers-storage:$image" >/dev/null
    done
    "${b[@]}" manifest push --quiet --all --format oci "$tag" "oci-archive:$output:imds-snoop:$version"
fi
echo "$output"
