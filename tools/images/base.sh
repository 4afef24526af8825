#!/usr/bin/env bash
# Makes docker.io/library/python:3.11-slim available to podman: pulled where a registry is
# reachable, else built from Debian bookworm's packages (Python 3.11) with a venv at
# /usr/local, so `python` and `pip` on PATH behave as in the official image and the
# Dockerfiles build unchanged; like the official image it has Python's C headers. Its pip
# is upgraded (with the host's CA certificates, which the image does not keep) to one that
# uses the system trust store.
#   tools/images/base.sh
set -euo pipefail

image=docker.io/library/python:3.11-slim
log() { echo "images: $*" >&2; }
podman image exists "$image" && exit 0
if timeout 60 podman pull --quiet "$image" >/dev/null 2>&1; then
  exit 0
fi
log "$image cannot be pulled; building a stand-in from Debian bookworm"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
mmdebstrap --variant=minbase --include=python3.11,python3.11-venv,libpython3.11-dev,ca-certificates \
  --customize-hook='chroot "$1" python3.11 -m venv /usr/local' \
  --customize-hook='cp /etc/ssl/certs/ca-certificates.crt "$1/tmp/host-ca.crt"' \
  --customize-hook='chroot "$1" env -i PIP_CERT=/tmp/host-ca.crt /usr/local/bin/pip install \
    --quiet --no-cache-dir --upgrade pip' \
  --customize-hook='rm "$1/tmp/host-ca.crt"' \
  --customize-hook='rm -rf "$1"/root/.cache "$1"/var/lib/apt/lists/*' \
  bookworm "$rootfs/rootfs.tar" \
  "deb http://deb.debian.org/debian bookworm main" \
  "deb http://deb.debian.org/debian bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"
podman import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
  "$rootfs/rootfs.tar" "$image" >/dev/null
