#!/usr/bin/env bash
# Installs the Debian packages Megalos's demo, tests and benchmarks need (idempotent; root).
#   scripts/install-deps.sh        what `make test` needs
#   scripts/install-deps.sh k8s    what `make image` and `make test-k8s` need besides
set -euo pipefail
packages=(
  iproute2 iputils-ping          # namespaces, veth, bridge, VXLAN; reachability checks
  gcc libc6-dev                  # the compiled CNI shim (cni/shim.c, linked static)
  frr                            # the original Megalos control plane: the interop peer
  containernetworking-plugins    # reference CNI plugins (bridge) for the benchmark
  # libcni (tests/libcni): from the Go module proxy, built with the machine's Go (/usr/local/go)
  nftables iptables              # partition tests
  tcpdump iperf3 wrk             # debugging and benchmarks
  chromium chromium-driver fonts-dejavu-core  # the LAN map's browser tests (driven by Playwright)
)
k8s_packages=(
  buildah debootstrap            # k8s/Dockerfile without a Docker engine; a Debian base image
  containerd runc etcd-server    # the one-node cluster's runtime and store (scripts/cluster.sh)
  openssl util-linux iptables    # its certificates; nsenter/unshare; kube-proxy's rules
)
if [ "${1:-}" = k8s ]; then
  packages=("${k8s_packages[@]}")
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (network namespaces and apt need it)" >&2
  exit 1
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "${1:-}" = k8s ]; then
  # Kubernetes 1.34 and Multus need Go 1.24 or later: the machine's /usr/local/go (Debian's
  # golang-go is 1.19).
  go=/usr/local/go/bin/go
  if ! [ -x "$go" ] || ! "$go" version | grep -Eq 'go1\.(2[4-9]|[3-9][0-9])'; then
    echo "install-deps: Go 1.24 or later is needed at $go (found: $("$go" version 2>&1 || true))" >&2
    exit 1
  fi
fi
