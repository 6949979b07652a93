"""`megalos-reflector`: the route reflector (os-ken in reflector role) and its state socket.

Peers come from the Kubernetes API (--peers-from-k8s: the Ready nodes, followed as they come and
go), a static list and/or CIDRs on the command line (os-ken has no dynamic neighbours: every
address of a CIDR is added as a passive peer), and can be added and removed at runtime through the
state socket (the API's POST/DELETE /api/v1/nodes). A removed peer's routes are withdrawn
everywhere (bgp.osken_compat cleans os-ken's RIB). With --lans-from-k8s the reflector also
watches NetworkAttachmentDefinitions and pods, for the LAN view (state op `lans`).
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import signal
import sys
import threading

from base import logs, secrets
from base import metrics as metrics_endpoint
from bgp.client import BgpError
from bgp.peer_rules import DEFAULT_PER_CLIENT
from bgp.protocol import MAX_ROUTES_PER_PEER
from reflector.metrics import DEFAULT_PORT as METRICS_PORT
from reflector.metrics import ReflectorMetrics
from reflector.protocol import DEFAULT_SOCKET
from reflector.route_reflector import Reflector, ReflectorConfig
from reflector.state_server import (DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT, StateServer,
                                    StateService)

log = logging.getLogger("megalos.reflector")
MAX_CIDR_PEERS = 4096


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megalos-reflector", description=__doc__.splitlines()[0])
    p.add_argument("--router-id", default="", help="BGP identifier (IPv4; default: derived from "
                   "--listen-host into 0.0.0.0/8, never a node's address, as a reflector beside "
                   "its node's agent needs: see reflector.discovery.reflector_router_id)")
    p.add_argument("--listen-host", default="", help="BGP listen address (default: router id)")
    p.add_argument("--bgp-port", type=int, default=179)
    p.add_argument("--asn", type=int, default=65000)
    p.add_argument("--cluster-id", default="10.0.0.1", help="route reflector cluster id "
                   "(the original Megalos used %(default)s)")
    p.add_argument("--peer", action="append", default=[], metavar="[NAME=]IP",
                   help="a node, optionally named for the API (repeat)")
    p.add_argument("--peer-cidr", action="append", default=[], metavar="CIDR",
                   help=f"accept every address of this network as a peer (at most {MAX_CIDR_PEERS})")
    p.add_argument("--hold-time", type=int, default=9)
    p.add_argument("--restart-grace", type=int, default=-1,
                   help="seconds a node's routes are kept after its session closes, so a "
                   "restarting agent does not interrupt traffic (default: hold time - 1, so a "
                   "dead node is still withdrawn within the hold time; a silent node whose hold "
                   "timer expires is withdrawn at once)")
    secrets.add_md5_password_option(p)
    p.add_argument("--max-routes-per-peer", type=int, default=DEFAULT_PER_CLIENT, metavar="N",
                   help="routes a node may have here; past it its session is closed (Cease, "
                   "Maximum Number of Prefixes Reached), its routes withdrawn, and it is held "
                   "off 30 s, doubling at each new cut up to 10 min (default %(default)s: a "
                   "node's default MAC limit, and as many LANs; 0: no limit)")
    p.add_argument("--peers-from-k8s", action="store_true",
                   help="peer with the Ready nodes, read (and watched) from the Kubernetes API, "
                   "at each node's VTEP address (annotation megalos.io/vtep-ip, else its first "
                   "InternalIP); names them after the nodes")
    p.add_argument("--node-selector", default="", metavar="SELECTOR",
                   help="with --peers-from-k8s: only the nodes with these labels (a label "
                   "selector, e.g. the agent DaemonSet's kubernetes.io/os=linux)")
    p.add_argument("--not-ready-grace", type=float, default=None, metavar="SECONDS",
                   help="with --peers-from-k8s: how long a node that stops being Ready stays a "
                   "peer (default 300: as long as Kubernetes waits before evicting its pods, which "
                   "may still be running; a kubelet that misses heartbeats must not cut their "
                   "LANs, and a node that is really down loses its routes at its BGP hold time "
                   "anyway); deleted nodes go at once")
    p.add_argument("--lans-from-k8s", action="store_true",
                   help="watch NetworkAttachmentDefinitions and pods (Multus annotations) for "
                   "the LAN view (GET /api/v1/lans)")
    p.add_argument("--kubeconfig", default=None, help="for --peers-from-k8s/--lans-from-k8s: "
                   "a kubeconfig file (default: the pod's ServiceAccount, else $KUBECONFIG or "
                   "~/.kube/config)")
    p.add_argument("--state-socket", default=DEFAULT_SOCKET)
    metrics_endpoint.add_arguments(p, METRICS_PORT)
    p.add_argument("--state-max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                   metavar="N", help="connections to the state socket served at once; more "
                   "wait (default %(default)s: the API holds one per gunicorn thread and one "
                   "per worker, MEGALOS_API_WORKERS x (MEGALOS_API_THREADS + 1), 34 by default)")
    p.add_argument("--state-read-timeout", type=float, default=DEFAULT_READ_TIMEOUT,
                   metavar="SECONDS", help="a state-socket client must send each request whole "
                   "within this of connecting or of its previous reply, else it is disconnected "
                   "(default %(default)s)")
    p.add_argument("--log-level", default="INFO")
    return p


def split_peer(raw: str) -> tuple[str, str | None]:
    """'node-1=192.0.2.5' -> ('192.0.2.5', 'node-1'); '192.0.2.5' -> ('192.0.2.5', None)."""
    name, sep, address = raw.rpartition("=")
    return str(ipaddress.ip_address(address)), (name or None) if sep else None


def peer_addresses(peers: list[str], cidrs: list[str], router_id: str) -> list[str]:
    """Static peers plus every host address of each CIDR, minus ourselves; validated."""
    found: dict[str, None] = {}
    for raw in peers:
        found[split_peer(raw)[0]] = None
    for raw in cidrs:
        net = ipaddress.ip_network(raw, strict=False)
        if net.num_addresses > MAX_CIDR_PEERS + 2:
            raise ValueError(f"--peer-cidr {raw} has {net.num_addresses} addresses; "
                             f"at most {MAX_CIDR_PEERS} are supported")
        for host in (net.hosts() if net.num_addresses > 2 else net):
            found[str(host)] = None
    found.pop(router_id, None)
    return list(found)


def reflector_config(args) -> ReflectorConfig:
    """The BGP settings from checked arguments (check_args first)."""
    return ReflectorConfig(
        router_id=args.router_id, asn=args.asn, cluster_id=args.cluster_id,
        listen_host=args.listen_host, bgp_port=args.bgp_port, hold_time=args.hold_time,
        restart_grace=args.restart_grace if args.restart_grace >= 0 else max(args.hold_time - 1, 0),
        md5_password=args.md5_password, max_routes_per_peer=args.max_routes_per_peer)


def check_args(args) -> None:
    """Fill in the router id (derived from the listen address when not given) and check the
    options that go together; ValueError says what is wrong."""
    if not args.router_id:
        if not args.listen_host:
            raise ValueError("give --router-id or --listen-host")
        from reflector.discovery import reflector_router_id
        args.router_id = reflector_router_id(args.listen_host)
    if ipaddress.ip_address(args.router_id).version != 4:
        raise ValueError(f"--router-id {args.router_id} is not an IPv4 address")
    k8s_only = [name for name, given in (("--node-selector", args.node_selector),
                                         ("--not-ready-grace", args.not_ready_grace is not None))
                if given]
    if k8s_only and not args.peers_from_k8s:
        raise ValueError(f"{' and '.join(k8s_only)} need --peers-from-k8s")
    if args.not_ready_grace is not None and args.not_ready_grace < 0:
        raise ValueError("--not-ready-grace must be >= 0")
    if not 0 <= args.max_routes_per_peer <= MAX_ROUTES_PER_PEER:
        raise ValueError(f"--max-routes-per-peer must be in 0..{MAX_ROUTES_PER_PEER}")
    if args.state_max_connections < 1:
        raise ValueError("--state-max-connections must be at least 1")
    if not (math.isfinite(args.state_read_timeout) and args.state_read_timeout > 0):
        raise ValueError("--state-read-timeout must be a number of seconds > 0")


def watch_kubernetes(args, reflector: Reflector) -> list:
    """Start the watchers the options ask for; the started ones (each has stop())."""
    if not (args.peers_from_k8s or args.lans_from_k8s):
        return []
    from kubernetes import client as k8s_client

    from kube.client import api_client
    from reflector.discovery import DEFAULT_NOT_READY_GRACE, LanWatcher, NodeWatcher, PeerSync
    api = api_client(args.kubeconfig)
    watchers = []
    if args.peers_from_k8s:
        grace = DEFAULT_NOT_READY_GRACE if args.not_ready_grace is None else args.not_ready_grace
        sync = PeerSync(reflector.add_node, reflector.remove_node, reflector.name_node)
        watchers.append(NodeWatcher(k8s_client.CoreV1Api(api), sync,
                                    label_selector=args.node_selector, not_ready_grace=grace))
    if args.lans_from_k8s:
        watchers.append(LanWatcher(api, reflector.state))
    for watcher in watchers:
        watcher.start()
    return watchers


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        check_args(args)
        peers = peer_addresses(args.peer, args.peer_cidr, args.router_id)
    except ValueError as exc:
        print(f"megalos-reflector: {exc}", file=sys.stderr)
        return 2
    reflector = Reflector(reflector_config(args))
    try:
        reflector.start()
    except BgpError as exc:
        print(f"megalos-reflector: {exc}", file=sys.stderr)
        reflector.close()
        return 1
    named = dict(split_peer(raw) for raw in args.peer)
    cidr_peers = set(peers) - set(named)
    reflector.static_peers = set(peers)
    for address, name in named.items():
        if name:
            reflector.state.name_node(address, name)
    for address in peers:
        reflector.add_peer(address, passive=address in cidr_peers)
    try:
        watchers = watch_kubernetes(args, reflector)
    except Exception as exc:  # noqa: BLE001 - no kubeconfig, unreadable ServiceAccount token...
        print(f"megalos-reflector: the Kubernetes API: {exc}", file=sys.stderr)
        reflector.close()
        return 2
    metrics = ReflectorMetrics(reflector) if args.metrics_port else None  # 0: nothing measured
    try:
        server = StateServer(args.state_socket, StateService(reflector),
                             observe=metrics.observe_request if metrics else None,
                             max_connections=args.state_max_connections,
                             read_timeout=args.state_read_timeout)
    except (RuntimeError, OSError) as exc:
        print(f"megalos-reflector: {exc}", file=sys.stderr)
        for watcher in watchers:
            watcher.stop()
        reflector.close()
        return 1
    server.start()
    endpoint = metrics_endpoint.serve(args, metrics.registry, "megalos-reflector") if metrics else None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("reflector %s: %d static peers%s, state socket %s", args.router_id, len(peers),
             ", nodes from the Kubernetes API" if args.peers_from_k8s else "", args.state_socket)
    print(f"megalos-reflector ready on {args.state_socket}", flush=True)
    while not stop.wait(1.0):
        if not reflector.bgp.alive:
            log.error("the BGP process died")
            break
    for watcher in watchers:
        watcher.stop()
    if endpoint:
        endpoint.stop()
    server.stop()
    reflector.close()
    return 0 if stop.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
