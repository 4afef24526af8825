#!/usr/bin/env bash
# One image from its Dockerfile with podman, as build.sh and skaffold's `podman` profile run it:
#   tools/images/podman-build.sh DOCKERFILE [IMAGE [PODMAN-BUILD-ARGS...]]
# IMAGE defaults to $IMAGE and the image is pushed when PUSH_IMAGE=true: the contract of
# skaffold's custom builder, which also runs this from the repository root.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dockerfile="$1"
image="${2:-${IMAGE:?IMAGE or a second argument names the image}}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
# Builds trust the certificate authorities this machine trusts (a TLS-inspecting proxy's
# too); the bundle is mounted for the build's steps only and is not part of the image.
build=(podman build --layers -f "$dockerfile" -t "$image")
ca=/etc/ssl/certs/ca-certificates.crt
[[ -f "$ca" ]] && build+=(--volume "$ca:$ca:ro")
"${build[@]}" "${@:3}" "$here/../.."
if [[ "${PUSH_IMAGE:-false}" == true ]]; then
  podman push "$image"
fi
