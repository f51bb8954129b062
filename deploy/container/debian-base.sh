#!/usr/bin/env bash
# A Debian 12 base image with Python, built from Debian's packages (no container registry needed):
# debootstrap a minimal root file system and import it into the container engine. The CPU image
# builds on it offline: `make image-cpu CPU_BASE_IMAGE=localhost/convnet-base:bookworm`.
# Skipped when the image exists already (REBUILD=1 builds it again). About 80 s; needs root.
#
#   deploy/container/debian-base.sh [IMAGE]     # default localhost/convnet-base:bookworm
set -euo pipefail
image=${1:-localhost/convnet-base:bookworm}
engine=${CONTAINER_ENGINE:-podman}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ "${REBUILD:-0}" != 1 ] && "$engine" image inspect "$image" > /dev/null 2>&1; then
    echo "$image: exists"
    exit 0
fi
command -v debootstrap > /dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root" "$root.log"' EXIT
# python3-venv: the image's virtual environment; passwd: useradd for its user; curl for debugging.
debootstrap --variant=minbase --include=python3,python3-venv,passwd,curl,ca-certificates \
    bookworm "$root" "$mirror" > "$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$engine" import --change 'CMD ["/bin/bash"]' - "$image" > "$root.log" 2>&1 \
    || { cat "$root.log" >&2; exit 1; }
rm -f "$root.log"
echo "$image: built ($("$engine" image inspect --format '{{.Size}}' "$image") bytes)"
