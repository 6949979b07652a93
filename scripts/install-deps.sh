#!/usr/bin/env bash
# Installs the Debian packages Megalos's demo, tests and benchmarks need (idempotent; root).
set -euo pipefail
packages=(
  iproute2 iputils-ping          # namespaces, veth, bridge, VXLAN; reachability checks
  gcc libc6-dev                  # the compiled CNI shim (cni/shim.c, linked static)
  frr                            # the original Megalos control plane: the interop peer
  containernetworking-plugins    # reference CNI plugins (bridge) for the benchmark
  golang-go golang-github-appc-cni-dev  # libcni, what Multus uses: the test driver is built from it
  nftables iptables              # partition tests
  tcpdump iperf3 wrk             # debugging and benchmarks
  chromium chromium-driver fonts-dejavu-core  # the LAN map's browser tests (driven by Playwright)
)
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
