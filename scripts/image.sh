#!/usr/bin/env bash
# The container images, built without a Docker engine or a registry (buildah, Debian's), kept in
# a private buildah store, and written as archives that containerd imports:
#
#   scripts/image.sh megalos   k8s/Dockerfile as it is -> $cache/images/megalos.tar
#   scripts/image.sh device    a Kathara device (bash, iproute2, ping) -> $cache/images/device.tar
#   scripts/image.sh pause     the pod sandbox's first process -> $cache/images/pause.tar
#   scripts/image.sh all       the three
#   scripts/image.sh names     the image names, as shell assignments
#   scripts/image.sh clean     remove the store and the archives
#
# The Dockerfile's base (ARG PYTHON_IMAGE, python:3.11-slim-bookworm) is pulled when a registry
# answers; otherwise a local one is built from Debian's packages (debootstrap, then
# scripts/image/python.Containerfile) and passed through the same ARG.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${MEGALOS_K8S_CACHE:-/var/cache/megalos-k8s}"
images="$cache/images"
store="$cache/containers"
runroot="/run/megalos-k8s/containers"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
version="$(sed -n 's/^version = //p' "$root/setup.cfg")"

DEFAULT_PYTHON_IMAGE="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$root/k8s/Dockerfile")"
# The local bases carry a revision: a change to how they are made gets a new tag, so that a
# machine's cache of the old ones is not reused.
DEBIAN_IMAGE=localhost/megalos/debian:bookworm-r2
LOCAL_PYTHON_IMAGE=localhost/megalos/python:3.11-bookworm-r2
MEGALOS_IMAGE="localhost/megalos/megalos:$version"
DEVICE_IMAGE=localhost/megalos/kathara-device:bookworm
PAUSE_IMAGE=localhost/megalos/pause:1

log() { echo "image: $*" >&2; }
b() { buildah --root "$store" --runroot "$runroot" --storage-driver overlay "$@"; }
have() { b inspect --type image "$1" >/dev/null 2>&1; }
archive() {  # name image: the archive containerd imports, named as the manifests name it
  mkdir -p "$images"
  rm -f "$images/$1.tar"
  b push -q "$2" "docker-archive:$images/$1.tar:$2" >/dev/null
  log "$2 -> $images/$1.tar ($(du -m "$images/$1.tar" | cut -f1) MB)"
}

debian() {  # debootstrap --variant=minbase, as an image
  have "$DEBIAN_IMAGE" && return 0
  command -v debootstrap >/dev/null || { log "debootstrap is missing (scripts/install-deps.sh)"; exit 1; }
  log "building $DEBIAN_IMAGE with debootstrap from $mirror"
  local ctr mnt
  ctr="$(b from scratch)"
  mnt="$(b mount "$ctr")"
  if ! debootstrap --variant=minbase bookworm "$mnt" "$mirror" >"$images.debootstrap.log" 2>&1; then
    tail -20 "$images.debootstrap.log" >&2
    b umount "$ctr" >/dev/null; b rm "$ctr" >/dev/null
    exit 1
  fi
  # As Debian's official images: apt keeps no downloaded package and no package cache (the two
  # .bin files every `apt-get update` writes: 69 MB in each image that installs a package),
  # fetches no translation, and dpkg installs no documentation.
  cat >"$mnt/etc/apt/apt.conf.d/90slim" <<'CONF'
APT::Keep-Downloaded-Packages "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
CONF
  printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
    'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' \
    'path-exclude=/usr/share/locale/*' >"$mnt/etc/dpkg/dpkg.cfg.d/90slim"
  rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/apt/*.bin "$mnt"/var/cache/apt/archives/*.deb \
         "$mnt"/usr/share/doc/* "$mnt"/usr/share/man/* "$mnt"/usr/share/locale/* \
         "$mnt"/var/log/*.log "$mnt"/var/log/apt/*
  b umount "$ctr" >/dev/null
  b config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
           --cmd /bin/bash "$ctr"
  b commit -q --rm "$ctr" "$DEBIAN_IMAGE" >/dev/null
}

from_containerfile() {  # image containerfile: FROM the local Debian image
  have "$1" && return 0
  debian
  log "building $1 from $2"
  local context
  context="$(mktemp -d)"
  mkdir "$context/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$context/ca-certificates/" 2>/dev/null || true
  b bud -q --network host --layers --force-rm --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
        -f "$2" -t "$1" "$context" >/dev/null
  rm -rf "$context"
}

python_base() {  # prints the base to pass as PYTHON_IMAGE
  have "$DEFAULT_PYTHON_IMAGE" && { echo "$DEFAULT_PYTHON_IMAGE"; return; }
  if ! have "$LOCAL_PYTHON_IMAGE"; then
    if timeout 60 "$0" _pull "$DEFAULT_PYTHON_IMAGE" >/dev/null 2>&1; then
      echo "$DEFAULT_PYTHON_IMAGE"
      return
    fi
    log "$DEFAULT_PYTHON_IMAGE cannot be pulled: building $LOCAL_PYTHON_IMAGE from Debian's packages"
    from_containerfile "$LOCAL_PYTHON_IMAGE" "$root/scripts/image/python.Containerfile"
  fi
  echo "$LOCAL_PYTHON_IMAGE"
}

megalos() {  # k8s/Dockerfile, unchanged, from the repository root (.dockerignore applies)
  local base start=$SECONDS
  base="$(python_base)"
  log "building $MEGALOS_IMAGE from k8s/Dockerfile (PYTHON_IMAGE=$base)"
  # The build stage first: its image ID keys the final stage's install step (k8s/Dockerfile,
  # BUILD_STAGE_ID), which buildah's cache would otherwise reuse with the old wheels.
  local stage_id
  stage_id="$(mktemp)"
  b bud -q --network host --layers --force-rm --build-arg "PYTHON_IMAGE=$base" --target build \
        --iidfile "$stage_id" -f "$root/k8s/Dockerfile" "$root" >/dev/null
  b bud -q --network host --layers --force-rm --build-arg "PYTHON_IMAGE=$base" \
        --build-arg "BUILD_STAGE_ID=$(cat "$stage_id")" \
        -f "$root/k8s/Dockerfile" -t "$MEGALOS_IMAGE" "$root" >/dev/null
  rm -f "$stage_id"
  log "$MEGALOS_IMAGE built in $((SECONDS - start)) s, $(size "$MEGALOS_IMAGE")"
  archive megalos "$MEGALOS_IMAGE"
}

size() {  # an image's size, unpacked, as buildah reports it ("568 MB")
  b images --json "$1" | sed -n 's/.*"size": "\(.*\)".*/\1/p' | head -1
}

device() {
  from_containerfile "$DEVICE_IMAGE" "$root/scripts/image/device.Containerfile"
  archive device "$DEVICE_IMAGE"
}

pause_image() {
  if ! have "$PAUSE_IMAGE"; then
    local work ctr
    work="$(mktemp -d)"
    cc -O2 -static -o "$work/pause" "$root/scripts/image/pause.c"
    ctr="$(b from scratch)"
    b copy "$ctr" "$work/pause" /pause >/dev/null
    b config --entrypoint '["/pause"]' "$ctr"
    b commit -q --rm "$ctr" "$PAUSE_IMAGE" >/dev/null
    rm -rf "$work"
  fi
  archive pause "$PAUSE_IMAGE"
}

mkdir -p "$images" "$runroot"
case "${1:-all}" in
  megalos) megalos ;;
  device) device ;;
  pause) pause_image ;;
  all) pause_image; device; megalos ;;
  names) printf 'MEGALOS_IMAGE=%s\nDEVICE_IMAGE=%s\nPAUSE_IMAGE=%s\n' \
           "$MEGALOS_IMAGE" "$DEVICE_IMAGE" "$PAUSE_IMAGE" ;;
  size) size "${2:-$MEGALOS_IMAGE}"; echo ;;
  _pull) b pull -q "$2" ;;
  clean) b rmi -af >/dev/null 2>&1 || true; rm -rf "$store" "$images" "$runroot" ;;
  *) echo "usage: $0 megalos|device|pause|all|names|size|clean" >&2; exit 2 ;;
esac
