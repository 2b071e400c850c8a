#!/usr/bin/env bash
# Builds the two container images from this checkout, with no registry:
#
#   mpctl-coordinator:TAG  the mpctl binary and the libraries it links, a
#                          non-root user (mpctl, 10001), state on the volume
#                          /var/lib/mpctl. Nothing else: no shell.
#   mpctl-agent:TAG        the same, plus /bin/sh (dash), coreutils and
#                          hostname, so command targets run; state on
#                          /var/lib/mpctl-agent. No python3 (see README).
#
# Each image is two layers: a base root filesystem assembled from this host's
# files (ldd of the binary, the shell and coreutils), written as a
# deterministic tarball and imported once per content hash
# (mpctl-base-{coordinator,agent}:HASH), and the stripped binary on top
# (docker build FROM the base, offline). A rebuild after a code change
# re-runs cargo, reuses the base and rebuilds only the top layer: seconds.
#
# Usage: deploy/build-images.sh [--tag TAG] [--binary PATH]
#   --tag TAG      image tag (default: dev)
#   --binary PATH  use this mpctl instead of `cargo build --release`
# Environment: MPCTL_IMAGE_CACHE (default: target/deploy): scratch space for
# assembling the root filesystems (removed after each build; the cache is
# the imported base image itself). Needs a Debian/Ubuntu host (dpkg lists
# coreutils' files) with docker, tar, ldd and strip.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

tag=dev
binary=
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "build-images.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

for tool in docker tar sha256sum ldd strip dpkg; do
    command -v "$tool" >/dev/null || { echo "build-images.sh: needs $tool on PATH" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "build-images.sh: the Docker daemon is not reachable (docker info failed)" >&2; exit 2; }

cache=${MPCTL_IMAGE_CACHE:-$repo/target/deploy}
mkdir -p "$cache"
started=$(date +%s)

if [ -z "$binary" ]; then
    echo "== cargo build --release -p mpctl-cli --bin mpctl"
    cargo build --release -p mpctl-cli --bin mpctl
    binary=$repo/target/release/mpctl
fi
[ -x "$binary" ] || { echo "build-images.sh: $binary is not an executable" >&2; exit 2; }

uid=10001
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Every shared object an executable needs (loader included), as ldd names it.
libs_of() {
    ldd "$1" | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}'
}

# Copies a host file into the root at its real path (merged /usr: /bin,
# /lib and /sbin are symlinks into /usr, as on Debian 12).
put() {
    local root=$1 src
    src=$(readlink -f "$2")
    mkdir -p "$root$(dirname "$src")"
    cp -p "$src" "$root$src"
}

# Copies a library under the name the loader looks for (its soname, which
# on the host is often a symlink), in its directory's real path.
put_lib() {
    local root=$1 dir
    dir=$(readlink -f "$(dirname "$2")")
    mkdir -p "$root$dir"
    cp -pL "$2" "$root$dir/$(basename "$2")"
}

skeleton() {
    local root=$1 data=$2
    mkdir -p "$root"/{usr/bin,usr/lib,usr/sbin,etc,tmp,home/mpctl,"${data#/}",usr/local/bin}
    # The host's top-level layout (merged /usr on Debian 12: symlinks).
    local d
    for d in bin lib lib64 sbin; do
        if [ -L "/$d" ]; then
            ln -s "$(readlink "/$d")" "$root/$d"
        elif [ -d "/$d" ]; then
            mkdir -p "$root/$d"
        fi
    done
    chmod 1777 "$root/tmp"
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nmpctl:x:%d:%d:mpctl:/home/mpctl:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' $uid $uid >"$root/etc/passwd"
    printf 'root:x:0:\nmpctl:x:%d:\nnogroup:x:65534:\n' $uid >"$root/etc/group"
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
    chown $uid:$uid "$root/home/mpctl" "$root/${data#/}"
    chmod 0750 "$root/home/mpctl" "$root/${data#/}"
}

# A tarball with sorted names, fixed times and numeric owners: the same
# inputs give the same bytes, so its hash names the base image.
pack() {
    tar --sort=name --mtime=@0 --numeric-owner --format=gnu \
        -C "$1" -cf "$2" .
}

base_coordinator() {
    local root=$work/coordinator
    skeleton "$root" /var/lib/mpctl
    for lib in $(libs_of "$binary"); do put_lib "$root" "$lib"; done
}

base_agent() {
    local root=$work/agent f
    skeleton "$root" /var/lib/mpctl-agent
    local progs=(/usr/bin/dash /usr/bin/hostname)
    while read -r f; do
        [ -f "$f" ] && [ -x "$f" ] && progs+=("$f")
    done < <(dpkg -L coreutils | grep -E '^/usr/s?bin/|^/bin/')
    for f in "${progs[@]}"; do
        put "$root" "$f"
        for lib in $(libs_of "$f" 2>/dev/null || true); do put_lib "$root" "$lib"; done
    done
    for lib in $(libs_of "$binary"); do put_lib "$root" "$lib"; done
    ln -s dash "$root/usr/bin/sh"
}

# Imports the base for $1 unless an image with its content hash exists.
base_image() {
    local part=$1 tarball hash
    "base_$part"
    tarball=$work/base-$part.tar
    pack "$work/$part" "$tarball"
    hash=$(sha256sum "$tarball" | cut -c1-16)
    base=mpctl-base-$part:$hash
    if docker image inspect "$base" >/dev/null 2>&1; then
        echo "== $base: cached"
    else
        echo "== $base: importing $(du -h "$tarball" | cut -f1) root filesystem"
        docker import "$tarball" "$base" >/dev/null
        # Older bases of this part are no longer needed.
        docker images --format '{{.Repository}}:{{.Tag}}' "mpctl-base-$part" | grep -vx "$base" |
            xargs -r docker rmi >/dev/null 2>&1 || true
    fi
}

# The top layer: the stripped binary (and, for the agent, the launcher shim).
context=$work/context
mkdir -p "$context"
strip --strip-debug -o "$context/mpctl" "$binary"
cp deploy/launcher-wait.sh "$context/mpctl-launcher-wait"
chmod 0755 "$context/mpctl" "$context/mpctl-launcher-wait"
version=$("$binary" --version | awk '{print $2}')

build() {
    local part=$1 dockerfile=$2
    base_image "$part"
    printf '%s\n' "FROM $base" "$dockerfile" >"$context/Dockerfile"
    echo "== mpctl-$part:$tag"
    # The classic builder: FROM a local image, never a registry.
    if ! DOCKER_BUILDKIT=0 docker build -q --label "org.opencontainers.image.version=$version" \
        -t "mpctl-$part:$tag" "$context" >"$work/build.log" 2>&1; then
        cat "$work/build.log" >&2
        exit 1
    fi
}

build coordinator "COPY mpctl /usr/local/bin/mpctl
ENV PATH=/usr/local/bin:/usr/bin
USER $uid:$uid
WORKDIR /home/mpctl
VOLUME /var/lib/mpctl
EXPOSE 7325 7326
ENTRYPOINT [\"/usr/local/bin/mpctl\"]
CMD [\"server\", \"--listen\", \"0.0.0.0:7325\", \"--data-dir\", \"/var/lib/mpctl\", \"--health-listen\", \"0.0.0.0:7326\", \"--authkey-file\", \"/run/secrets/authkey\"]"

build agent "COPY mpctl mpctl-launcher-wait /usr/local/bin/
ENV PATH=/usr/local/bin:/usr/bin HOME=/home/mpctl
USER $uid:$uid
WORKDIR /home/mpctl
VOLUME /var/lib/mpctl-agent
EXPOSE 7326
ENTRYPOINT [\"/usr/local/bin/mpctl\"]
CMD [\"launcher\", \"--dir\", \"/var/lib/mpctl-agent/launcher\", \"--persistent\"]"

# Dangling top layers of earlier builds.
docker image prune -f --filter label=org.opencontainers.image.version >/dev/null 2>&1 || true

echo "== built mpctl-coordinator:$tag and mpctl-agent:$tag ($version) in $(( $(date +%s) - started )) s"
docker images --format '   {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^   mpctl-(coordinator|agent):$tag " || true
