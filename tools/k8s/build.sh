#!/usr/bin/env bash
# Builds the tests' Kubernetes control plane from Go modules, once per machine and version:
#   ${QWEN_IMAGE_K8S_CACHE:-${XDG_CACHE_HOME:-~/.cache}/qwen-image-serving}/k8s-<version>/
#     bin/          kube-apiserver kube-controller-manager kube-scheduler etcd kwok
#     kwok-stages/  kwok's own node and pod stages (nodes Ready, pods Running and Ready)
#     crds/         the CRDs of ServiceMonitor, ScaledObject and HTTPRoute (crds.txt)
# Idempotent: when that folder was built from this go.mod/go.sum/crds.txt, it only prints
# the bin folder. The bin folder is the last line on stdout; progress and timing go to stderr.
# Go's module and build caches (GOMODCACHE, GOCACHE) make a rebuild after a bump cheap.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The version a go.mod requires of a module, in either `require` form.
mod_version() { awk -v m="$1" '$1 == "require" { $1 = "" ; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$2"; }
kube_version="$(mod_version k8s.io/kubernetes "$here/go.mod")"
etcd_version="$(mod_version go.etcd.io/etcd/server/v3 "$here/go.mod")"
kwok_version="$(mod_version sigs.k8s.io/kwok "$here/kwok/go.mod")"
cache_root="${QWEN_IMAGE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qwen-image-serving}"
dest="$cache_root/k8s-$kube_version"
binaries=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)
# The stamp names what the folder was built from; any change to these rebuilds it.
stamp="$(cat "$here"/go.mod "$here"/go.sum "$here"/kwok/go.mod "$here"/kwok/go.sum \
  "$here"/cmd/etcd/main.go "$here"/crds.txt "$here"/build.sh | sha256sum | cut -c1-16)"

built() {
  [[ "$(cat "$dest/.stamp" 2>/dev/null)" == "$stamp" ]] || return 1
  local b
  for b in "${binaries[@]}"; do [[ -x "$dest/bin/$b" ]] || return 1; done
}

mkdir -p "$dest"
exec 9>"$dest/.lock"
flock 9 # one build at a time per version; a waiter finds the folder built
if built; then
  echo "$dest/bin"
  exit 0
fi

start=$SECONDS
stage="$(mktemp -d "$dest/.build.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/kwok-stages" "$stage/crds"
export CGO_ENABLED=0 GOWORK=off # static binaries, as Kubernetes releases them
echo "building Kubernetes $kube_version, etcd $etcd_version, kwok $kwok_version into $dest" >&2

# Without these the binaries report v0.0.0-master, which Helm's kubeVersion check rejects.
kube_ldflags="-s -w"
minor="${kube_version#v1.}"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*}"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
(cd "$here" && go build -trimpath -ldflags="$kube_ldflags" -o "$stage/bin/" tool ./cmd/etcd)
(cd "$here/kwok" && go build -trimpath \
  -ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${kwok_version#v}" -o "$stage/bin/" tool)

# kwok's default stages, as kwokctl configures them, from the module just built.
kwok_dir="$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
cp "$kwok_dir"/kustomize/stage/node/fast/node-initialize.yaml \
  "$kwok_dir"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
  "$kwok_dir"/kustomize/stage/pod/fast/pod-{ready,complete,delete}.yaml "$stage/kwok-stages/"

# CRDs from their projects' modules, checked against the hashes pinned in crds.txt.
while read -r module version sum file; do
  [[ -z "$module" || "$module" == \#* ]] && continue
  info="$(cd "$stage" && GOFLAGS= go mod download -json "$module@$version")"
  got_sum="$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",*$/\1/p' <<<"$info")"
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p' <<<"$info")"
  if [[ "$got_sum" != "$sum" ]]; then
    echo "$module@$version: hash $got_sum, crds.txt pins $sum" >&2
    exit 1
  fi
  cp "$dir/$file" "$stage/crds/"
done <"$here/crds.txt"

rm -rf "$dest/bin" "$dest/kwok-stages" "$dest/crds"
mv "$stage/bin" "$stage/kwok-stages" "$stage/crds" "$dest/"
echo "$stamp" >"$dest/.stamp"
echo "built in $((SECONDS - start)) s" >&2
echo "$dest/bin"
