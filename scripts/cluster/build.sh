#!/usr/bin/env bash
# Builds the cluster's Go binaries from their modules (the Go module proxy), once per version,
# into $MEGALOS_K8S_CACHE/<what>-<version>/bin. A directory that exists is complete (it is
# renamed into place at the end), so a second run does nothing.
#
#   scripts/cluster/build.sh kubernetes|multus|all
#
# Kubernetes cannot be `go install`ed (its go.mod replaces k8s.io/<staging> by ./staging/...):
# a scratch module requires k8s.io/kubernetes and replaces each staging module by its release.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
cache="${MEGALOS_K8S_CACHE:-/var/cache/megalos-k8s}"
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS=-mod=mod GOTOOLCHAIN=local
export CGO_ENABLED=0 GOPATH="$cache/go/path"
PATH="/usr/local/go/bin:$PATH"
log() { echo "build: $*" >&2; }

# The binaries the cluster runs (cluster.sh), and nothing else.
KUBERNETES_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

kubernetes() {
  local dest="$cache/kubernetes-$KUBERNETES_VERSION"
  [ -d "$dest/bin" ] && return 0
  local work; work="$(mktemp -d "$cache/.build-kubernetes.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  local start=$SECONDS
  go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" >"$work/download.json"
  local upstream_mod
  upstream_mod="$(sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p' "$work/download.json")"
  {
    echo "module megalos.invalid/kubernetes-build"
    echo
    sed -n 's/^go \(.*\)/go \1/p; s/^godebug \(.*\)/godebug \1/p' "$upstream_mod"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    sed -n "s#^\t\(k8s.io/[a-z-]*\) => ./staging/src/.*#\t\1 => \1 $KUBERNETES_STAGING_VERSION#p" "$upstream_mod"
    echo ")"
  } >"$work/go.mod"
  # What hack/lib/version.sh stamps, so `kubectl version` and the node report the release.
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local x="-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
  x+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  x+=" -X k8s.io/component-base/version.gitTreeState=clean"
  x+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
  x+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  mkdir -p "$work/bin"
  log "kubernetes $KUBERNETES_VERSION: ${KUBERNETES_COMMANDS[*]}"
  (cd "$work" && go build -trimpath -ldflags="-s -w $x" -o "$work/bin/" \
      "${KUBERNETES_COMMANDS[@]/#/k8s.io/kubernetes/cmd/}")
  mkdir -p "$dest" && mv "$work/bin" "$dest/bin"
  log "kubernetes $KUBERNETES_VERSION built in $((SECONDS - start)) s: $(du -sh "$dest/bin" | cut -f1)"
}

multus() {
  local dest="$cache/multus-$MULTUS_VERSION"
  [ -d "$dest/bin" ] && return 0
  local work; work="$(mktemp -d "$cache/.build-multus.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  local start=$SECONDS
  printf 'module megalos.invalid/multus-build\n\ngo 1.24\n\nrequire %s %s\n' \
    "$MULTUS_MODULE" "$MULTUS_VERSION" >"$work/go.mod"
  mkdir -p "$work/bin"
  log "multus $MULTUS_VERSION (thin plugin)"
  (cd "$work" && go build -trimpath -ldflags="-s -w" -o "$work/bin/multus" \
      "$MULTUS_MODULE/cmd/multus")
  mkdir -p "$dest" && mv "$work/bin" "$dest/bin"
  log "multus $MULTUS_VERSION built in $((SECONDS - start)) s: $(du -sh "$dest/bin" | cut -f1)"
}

mkdir -p "$cache"
case "${1:-all}" in
  kubernetes) kubernetes ;;
  multus) multus ;;
  all) kubernetes; multus ;;
  *) echo "usage: $0 kubernetes|multus|all" >&2; exit 2 ;;
esac
