#!/usr/bin/env bash
# Builds both images from their Dockerfiles with podman, for machines without a Docker engine
# or a reachable registry (`make images`; tests/images runs what it builds):
#   tools/images/build.sh [TAG]     (default dev: qwen-image-router:TAG, qwen-image-worker:TAG)
# Installs podman, runc and mmdebstrap from Debian when missing (as root), makes the base
# image available (base.sh), and builds each with podman-build.sh. The worker's
# FlashAttention-3 stage is tagged (qwen-image-worker-fa3:TAG) so that pruning dangling
# images keeps it; uv's and FA3's downloads stay in podman's build cache between builds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."
tag="${1:-dev}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
log() { echo "images: $*" >&2; }

missing=()
for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    log "needs ${missing[*]}: install them (Debian: apt-get install ${missing[*]})"
    exit 1
  fi
  log "installing ${missing[*]} with apt-get"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
"$here/base.sh"

start=$SECONDS
"$here/podman-build.sh" services/router/Dockerfile "qwen-image-router:$tag"
log "router built ($((SECONDS - start)) s)"
"$here/podman-build.sh" services/gpu-worker/Dockerfile "qwen-image-worker-fa3:$tag" --target fa3
"$here/podman-build.sh" services/gpu-worker/Dockerfile "qwen-image-worker:$tag"
log "router and worker built ($((SECONDS - start)) s)"
podman images --filter reference='qwen-image-*' >&2
