#!/usr/bin/env bash
# A one-node Kubernetes cluster from upstream parts, for `make test-k8s` and for a person:
#
#   scripts/cluster.sh up       build what is missing (cached by version), start, wait for Ready
#   scripts/cluster.sh down     stop every process and remove everything `up` made
#   scripts/cluster.sh status   is it up; where its kubeconfig is
#   scripts/cluster.sh kubectl ARGS...   kubectl against it
#
# Parts: etcd (Debian), kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
# kube-proxy (k8s.io/kubernetes at the version in scripts/cluster/versions.env, built by
# scripts/cluster/build.sh), containerd + runc (Debian), the reference bridge + host-local plugins
# (Debian) as the pods' primary network, Multus (thin plugin, built from its module) calling the
# plugins of NetworkAttachmentDefinitions.
#
# Isolation (the machine is shared): the whole node lives in its own network namespace
# ($NAME), reached from the host over one veth pair at 198.19.253.1 (host) / .2 (node); the node
# has no default route, so nothing it runs can send a packet off this machine. Its daemons run
# in a private mount namespace where /opt/cni/bin, /etc/cni/net.d, /var/lib/cni, /var/log/pods,
# /var/log/containers, /run/netns, /run/containerd and /run/megalos are private directories, so
# nothing is written into the host's. Every process is in the cgroup /$NAME (the kubelet's
# cgroupRoot too), which is how `down` finds and stops all of them.
set -Eeuo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
. "$repo/scripts/cluster/versions.env"

NAME="${MEGALOS_K8S_NAME:-megk8s}"              # never mg*: those belong to the emulated tests
cache="${MEGALOS_K8S_CACHE:-/var/cache/megalos-k8s}"
state="/var/lib/megalos-k8s/$NAME"              # certificates, configs, data, logs
run="/run/megalos-k8s/$NAME"                    # the mount namespace, pid files, sockets
kbin="$cache/kubernetes-$KUBERNETES_VERSION/bin"
mbin="$cache/multus-$MULTUS_VERSION/bin"
HOST_IF="$NAME-h" NODE_IF="$NAME-n"
HOST_IP=198.19.253.1 NODE_IP=198.19.253.2 LINK_CIDR=198.19.253.0/30
SERVICE_CIDR=10.96.0.0/16 POD_CIDR=10.244.0.0/24 API_SERVICE_IP=10.96.0.1
NODE_NAME="$NAME-node"
API="https://$NODE_IP:6443"
PRIVATE_DIRS=(/opt/cni/bin /etc/cni/net.d /var/lib/cni /var/log/pods /var/log/containers
              /run/netns /run/containerd /run/megalos)
# Kernel settings the kubelet changes at start (setupKernelTunables); `down` puts them back.
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
                 kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
CONTAINERD_SOCK="$run/containerd/containerd.sock"
eval "$("$repo/scripts/image.sh" names)"        # MEGALOS_IMAGE, DEVICE_IMAGE, PAUSE_IMAGE

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }
in_node() { nsenter --mount="$run/ns/mnt" --net="/run/netns/$NAME" -- "$@"; }
kctl() { "$kbin/kubectl" --kubeconfig "$state/admin.kubeconfig" "$@"; }
is_up() { [ -e "$run/ns/mnt" ] || [ -e "/run/netns/$NAME" ]; }

wait_until() {  # seconds what command...: polls until the command succeeds
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out waiting for $what; logs in $state/logs"
      return 1
    fi
    sleep 1
  done
}

# -- processes -------------------------------------------------------------------------------
cgroups() { ls -d /sys/fs/cgroup/*/"$NAME" 2>/dev/null || true; }

make_cgroups() {  # /$NAME in every hierarchy (the kubelet checks), /$NAME/system for the daemons
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [ -e "$hierarchy/cgroup.procs" ] || continue
    mkdir -p "$hierarchy$NAME"
    if [ -e "$hierarchy/cpuset.cpus" ]; then  # an empty cpuset admits no process
      cat "$hierarchy/cpuset.cpus" >"$hierarchy$NAME/cpuset.cpus"
      cat "$hierarchy/cpuset.mems" >"$hierarchy$NAME/cpuset.mems"
    fi
  done
  mkdir -p "/sys/fs/cgroup/pids/$NAME/system"
}

start() {  # name command...: a daemon in the node, in the cgroup, logging to logs/<name>.log
  local name="$1"
  shift
  setsid nsenter --mount="$run/ns/mnt" --net="/run/netns/$NAME" -- \
    sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "/sys/fs/cgroup/pids/$NAME/system" "$@" \
    >>"$state/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
}

stop_all() {  # every process in the cgroup tree, whatever started it; the kubelet first
  local pids attempt
  [ -f "$run/kubelet.pid" ] && kill "$(cat "$run/kubelet.pid")" 2>/dev/null || true
  for attempt in $(seq 1 50); do
    pids="$(find "/sys/fs/cgroup/pids/$NAME" -name cgroup.procs -exec cat {} + 2>/dev/null || true)"
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.2
  done
  die "processes left in /sys/fs/cgroup/pids/$NAME: $pids"
}

# -- network and mount namespaces -------------------------------------------------------------
make_netns() {
  if ip route show | grep -q "^${LINK_CIDR%/*}"; then
    die "198.19.253.0/30 is already routed on this machine: another cluster? ($(ip route show $LINK_CIDR))"
  fi
  ip netns add "$NAME"
  ip link add "$HOST_IF" type veth peer name "$NODE_IF" netns "$NAME"
  ip addr add "$HOST_IP/30" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  ip -n "$NAME" link set lo up
  ip -n "$NAME" addr add "$NODE_IP/30" dev "$NODE_IF"
  ip -n "$NAME" link set "$NODE_IF" up
  # Service addresses go through kube-proxy's DNAT, which runs after the route lookup of a local
  # socket: they need a route, and one that leads nowhere when nothing translates them.
  ip -n "$NAME" route add "$SERVICE_CIDR" dev lo
  ip netns exec "$NAME" sysctl -qw net.ipv4.ip_forward=1
}

make_mountns() {
  local dir created=()
  mkdir -p "$run/ns"
  mount --bind "$run/ns" "$run/ns"          # a namespace file must sit on a private mount
  mount --make-private "$run/ns"
  touch "$run/ns/mnt"
  for dir in "${PRIVATE_DIRS[@]}"; do
    local missing="$dir"  # the mount point and each parent that does not exist yet, deepest first
    while [ ! -d "$missing" ]; do
      created+=("$missing")
      missing="$(dirname "$missing")"
    done
    mkdir -p "$dir" "$state/root$dir"
  done
  printf '%s\n' "${created[@]}" >"$state/created-dirs"
  # Slave: the host's mounts appear inside. Shared inside: what containerd pins (pod network
  # namespaces) reaches the agent's HostToContainer mount of /var/run/netns.
  unshare --mount="$run/ns/mnt" --propagation slave sh -c '
    mount --make-rshared /
    state="$1"; shift
    for dir in "$@"; do mount --bind "$state/root$dir" "$dir" && mount --make-shared "$dir"; done
  ' sh "$state" "${PRIVATE_DIRS[@]}"
}

# -- certificates and kubeconfigs -------------------------------------------------------------
pki() {
  local p="$state/pki"
  mkdir -p "$p"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj "/CN=$NAME-ca" -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$p/sa.key"
  openssl ec -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  cert apiserver kube-apiserver "" serverAuth \
    "IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth
  cert admin megalos-admin system:masters clientAuth
  cert controller-manager system:kube-controller-manager "" clientAuth
  cert scheduler system:kube-scheduler "" clientAuth
  cert kubelet "system:node:$NODE_NAME" system:nodes clientAuth
  cert kubelet-serving "$NODE_NAME" "" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
  cert kube-proxy system:kube-proxy "" clientAuth
  cert multus multus "" clientAuth
}

cert() {  # name CN O usage [SANs]
  local p="$state/pki"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$2${3:+/O=$3}" \
    -keyout "$p/$1.key" -out "$p/$1.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$4"
    [ -n "${5:-}" ] && echo "subjectAltName=$5"
  } >"$p/$1.ext"
  openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 7 \
    -extfile "$p/$1.ext" -out "$p/$1.crt" 2>/dev/null
}

kubeconfig() {  # name: $state/<name>.kubeconfig with the client certificate of the same name
  cat >"$state/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: $NAME
    cluster: {server: "$API", certificate-authority: "$state/pki/ca.crt"}
users:
  - name: $1
    user: {client-certificate: "$state/pki/$1.crt", client-key: "$state/pki/$1.key"}
contexts:
  - name: $NAME
    context: {cluster: $NAME, user: $1}
current-context: $NAME
EOF
}

# -- configuration files ----------------------------------------------------------------------
configs() {
  local c
  for c in admin controller-manager scheduler kubelet kube-proxy multus; do kubeconfig "$c"; done
  cat >"$state/containerd.toml" <<EOF
version = 2
root = "$state/containerd"
state = "$run/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$run/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$state/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE in this sandbox: without this every pod sandbox fails with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
EOF
  cat >"$state/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 and no systemd here: cgroupfs, under a root of our own that \`down\` removes.
cgroupDriver: cgroupfs
cgroupRoot: /$NAME
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
podLogsDir: /var/log/pods
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$state/pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$state/pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$state/pki/kubelet-serving.key"
# A shared machine's disk: evict only when it is really full.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
  cat >"$state/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: "$state/kube-proxy.kubeconfig"}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {maxPerCore: 0}
EOF
  # Multus (thin) is the runtime's network: it calls the bridge list for every pod's eth0, then
  # the NetworkAttachmentDefinitions the pod's annotation selects. The cluster network is named,
  # not given as a path: Multus 4.2.3 re-encodes a .conflist path's plugins through its own types
  # (LoadDelegateNetConfFromConfList), which drops the bridge's and host-local's settings, and
  # every DEL then fails with "no IP ranges specified". A name is read from conf_dir as written.
  cat >"$state/root/etc/cni/net.d/10-pods.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "pods",
  "plugins": [
    {"type": "bridge", "bridge": "$NAME-pods", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "loopback"}
  ]
}
EOF
  cat >"$state/root/etc/cni/net.d/00-multus.conf" <<EOF
{
  "cniVersion": "0.3.1",
  "name": "multus-cni-network",
  "type": "multus",
  "kubeconfig": "$state/multus.kubeconfig",
  "confDir": "/etc/cni/net.d",
  "cniDir": "/var/lib/cni/multus",
  "binDir": "/opt/cni/bin",
  "logFile": "$state/logs/multus.log",
  "logLevel": "verbose",
  "clusterNetwork": "pods"
}
EOF
}

install_cni_plugins() {
  local plugin
  for plugin in bridge host-local loopback; do
    cp "/usr/lib/cni/$plugin" "$state/root/opt/cni/bin/$plugin"
  done
  cp "$mbin/multus" "$state/root/opt/cni/bin/multus"
}

# -- up / down --------------------------------------------------------------------------------
up() {
  [ "$(id -u)" -eq 0 ] || die "needs root"
  if is_up; then
    kctl get --raw /readyz >/dev/null 2>&1 && die "already up (scripts/cluster.sh down first)"
    log "removing what an earlier run of $NAME left (its API server does not answer)"
    down
  fi
  local t0=$SECONDS
  "$repo/scripts/cluster/build.sh" all
  [ -f "$cache/images/pause.tar" ] || "$repo/scripts/image.sh" pause
  [ -f "$cache/images/device.tar" ] || "$repo/scripts/image.sh" device
  [ -f "$cache/images/megalos.tar" ] || "$repo/scripts/image.sh" megalos
  log "starting $NAME (Kubernetes $KUBERNETES_VERSION)"
  mkdir -p "$state/logs" "$run"
  trap 'log "up failed: stopping what was started"; down || true' ERR
  make_netns
  make_mountns
  make_cgroups
  pki
  configs
  install_cni_plugins

  start etcd etcd --name "$NAME" --data-dir "$state/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$NAME=http://127.0.0.1:2380"
  local p="$state/pki"
  start kube-apiserver "$kbin/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 --advertise-address="$NODE_IP" --secure-port=6443 \
    --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true \
    --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --client-ca-file="$p/ca.crt" --tls-cert-file="$p/apiserver.crt" \
    --tls-private-key-file="$p/apiserver.key" \
    --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$p/apiserver-kubelet-client.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --audit-policy-file="$repo/scripts/cluster/audit-policy.yaml" \
    --audit-log-path="$state/logs/audit.log" --profiling=false
  start containerd containerd --config "$state/containerd.toml"
  wait_until 120 "the API server" kctl get --raw /readyz
  start kube-controller-manager "$kbin/kube-controller-manager" \
    --kubeconfig="$state/controller-manager.kubeconfig" --leader-elect=false \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR" \
    --authentication-kubeconfig="$state/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$state/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --profiling=false
  start kube-scheduler "$kbin/kube-scheduler" --kubeconfig="$state/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 \
    --authentication-kubeconfig="$state/scheduler.kubeconfig" \
    --authorization-kubeconfig="$state/scheduler.kubeconfig" --profiling=false
  wait_until 60 "containerd" in_node ctr --address "$CONTAINERD_SOCK" version
  local image
  for image in pause device megalos; do
    in_node ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --no-unpack \
      "$cache/images/$image.tar" >/dev/null
  done
  save_sysctls
  start kubelet "$kbin/kubelet" --config="$state/kubelet.yaml" \
    --kubeconfig="$state/kubelet.kubeconfig" --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" --root-dir="$state/kubelet"
  start kube-proxy "$kbin/kube-proxy" --config="$state/kube-proxy.yaml"
  kctl apply -f "$repo/scripts/cluster/nad-crd.yaml" -f "$repo/scripts/cluster/multus-rbac.yaml" >/dev/null
  wait_until 120 "node $NODE_NAME Ready" kctl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  wait_until 60 "the default ServiceAccount" kctl -n default get serviceaccount default
  trap - ERR
  log "up in $((SECONDS - t0)) s: export KUBECONFIG=$state/admin.kubeconfig"
}

save_sysctls() {
  [ -f "$state/sysctls" ] || sysctl "${KUBELET_SYSCTLS[@]}" | sed 's/ = /=/' >"$state/sysctls"
}

down() {
  [ "$(id -u)" -eq 0 ] || die "needs root"
  local hierarchy dir
  local t0=$SECONDS
  if [ -d "/sys/fs/cgroup/pids/$NAME" ]; then
    stop_all
    log "processes stopped in $((SECONDS - t0)) s"
  fi
  [ -f "$state/sysctls" ] && sysctl -qw $(cat "$state/sysctls") || true
  for hierarchy in $(cgroups); do
    find "$hierarchy" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$hierarchy" ] && log "left behind: $hierarchy"
  done
  if mountpoint -q "$run/ns" 2>/dev/null; then
    umount "$run/ns/mnt" 2>/dev/null || true
    umount "$run/ns"
  fi
  [ -e "/run/netns/$NAME" ] && ip netns del "$NAME"
  ip link show "$HOST_IF" >/dev/null 2>&1 && ip link del "$HOST_IF"
  if [ -f "$state/created-dirs" ]; then
    while read -r dir; do
      [ -n "$dir" ] && rmdir "$dir" 2>/dev/null || true
    done <"$state/created-dirs"
  fi
  rm -rf "$state" "$run"  # containerd's unpacked images: the slow part (about 30 s under load)
  rmdir /var/lib/megalos-k8s /run/megalos-k8s 2>/dev/null || true
  left_behind || die "down: something of $NAME is left (above)"
  log "down: $NAME removed in $((SECONDS - t0)) s"
}

left_behind() {  # fails naming whatever of this cluster still exists
  local left=()
  [ -z "$(cgroups)" ] || left+=("cgroups: $(cgroups | tr '\n' ' ')")
  [ ! -e "/run/netns/$NAME" ] || left+=("network namespace $NAME")
  ! ip link show "$HOST_IF" >/dev/null 2>&1 || left+=("link $HOST_IF")
  ! grep -q "megalos-k8s/$NAME" /proc/self/mountinfo || left+=("mounts under $run")
  [ ! -e "$state" ] || left+=("$state")
  [ ! -e "$run" ] || left+=("$run")
  [ ${#left[@]} -eq 0 ] && return 0
  printf 'cluster: left behind: %s\n' "${left[@]}" >&2
  return 1
}

status() {
  if is_up && kctl get --raw /readyz >/dev/null 2>&1; then
    echo "up: KUBECONFIG=$state/admin.kubeconfig"
    kctl get nodes -o wide
  else
    echo "down"
    return 1
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  kubeconfig) echo "$state/admin.kubeconfig" ;;
  env) printf '%s\n' "KUBECONFIG=$state/admin.kubeconfig" "KUBECTL=$kbin/kubectl" \
         "NODE_NAME=$NODE_NAME" "NODE_IP=$NODE_IP" "STATE=$state" "MEGALOS_IMAGE=$MEGALOS_IMAGE" \
         "DEVICE_IMAGE=$DEVICE_IMAGE" ;;
  kubectl) shift; kctl "$@" ;;
  exec) shift; in_node "$@" ;;
  *) echo "usage: $0 up|down|status|env|kubeconfig|kubectl ARGS|exec COMMAND" >&2; exit 2 ;;
esac
