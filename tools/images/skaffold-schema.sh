#!/usr/bin/env bash
# Fetches the JSON schema of skaffold.yaml's apiVersion from skaffold's own Go module (through
# the Go module proxy; no skaffold binary is built) into
#   ${XDG_CACHE_HOME:-~/.cache}/qwen-image-serving/skaffold-<version>/<apiVersion>.json
# and prints that path. tests/chart/test_chart_skaffold.py validates skaffold.yaml with it.
# v2.16.1 is the newest skaffold release the module proxy serves here; its newest schema is
# v4beta13, which later skaffold releases read as well.
set -euo pipefail

version=v2.16.1
api="$(sed -n 's|^apiVersion: skaffold/||p' "$(dirname "${BASH_SOURCE[0]}")/../../skaffold.yaml")"
dest="${XDG_CACHE_HOME:-$HOME/.cache}/qwen-image-serving/skaffold-$version/$api.json"
if [[ ! -f "$dest" ]]; then
  dir="$(GOFLAGS=-mod=mod go mod download -json "github.com/GoogleContainerTools/skaffold/v2@$version" \
    | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  mkdir -p "$(dirname "$dest")"
  cp "$dir/docs-v2/content/en/schemas/$api.json" "$dest.tmp"
  mv "$dest.tmp" "$dest"
fi
echo "$dest"
