"""`megalos-agent`, the node agent: serves CNI requests and runs the node's EVPN speaker.

Start-up order matters for continuity: the datapath is read first, then the control plane,
then the CNI socket opens, so no ADD is served before the agent knows the kernel state.
"""
from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading

from base import logs, secrets
from base import metrics as metrics_endpoint
from bgp import mobility
from bgp.peer_rules import DEFAULT_PER_REFLECTOR
from cni.config import DEFAULT_AGENT_SOCKET, STANDARD_VXLAN_PORTS
from cni.datapath import Datapath, DatapathError
from cni.plugin import Announcements, Plugin
from cni.server import DEFAULT_DEADLINE, DEFAULT_READ_TIMEOUT, DEFAULT_WORKERS, CniServer
from speaker.mac_limits import DEFAULT_PER_NODE, DEFAULT_PER_PORT
from speaker.metrics import DEFAULT_PORT as METRICS_PORT
from speaker.metrics import AgentMetrics

log = logging.getLogger("megalos.agent")


def port_list(text: str) -> tuple[int, ...]:
    """'4789,8472' -> (4789, 8472): UDP ports, 1..65535."""
    try:
        ports = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ports") from None
    if not all(1 <= port <= 65535 for port in ports):
        raise argparse.ArgumentTypeError(f"{text!r}: ports go from 1 to 65535")
    return ports


def positive(kind):
    """An argparse type: `kind` (int, float) above 0."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number above 0")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megalos-agent", description=__doc__.splitlines()[0])
    p.add_argument("--vtep-ip", default="", help="this node's VTEP address (default: the underlay "
                   "device's first address)")
    p.add_argument("--underlay-dev", default="", help="device VXLAN traffic leaves by")
    p.add_argument("--socket", default=DEFAULT_AGENT_SOCKET, help="CNI request socket "
                   "(default %(default)s)")
    p.add_argument("--cni-workers", type=positive(int), default=DEFAULT_WORKERS, metavar="N",
                   help="CNI requests served at once (default %(default)s); more wait, their "
                   "shims with them, up to the shim's timeout")
    p.add_argument("--cni-read-timeout", type=positive(float), default=DEFAULT_READ_TIMEOUT, metavar="S",
                   help="seconds a client has to send its whole request (default %(default)s)")
    p.add_argument("--cni-deadline", type=positive(float), default=DEFAULT_DEADLINE, metavar="S",
                   help="seconds a CNI verb may take; then its shim gets code 11 (try again "
                   "later) while the agent finishes or undoes it (default %(default)s)")
    p.add_argument("--vxlan-ports", type=port_list, default=STANDARD_VXLAN_PORTS, metavar="PORT,...",
                   help="the VXLAN UDP ports a network config may ask for with vxlanPort (it "
                   "opens a host port); default: the two standard ones, 4789,8472")
    p.add_argument("--reflector", action="append", default=[], metavar="IP",
                   help="route reflector address (repeat for several); none (and no "
                   "--reflector-service): no control plane")
    p.add_argument("--reflector-service", default="", metavar="NAMESPACE/NAME",
                   help="find the reflectors in the EndpointSlices of this (headless) Service "
                   "and follow them as they move (list + watch of the Kubernetes API); with "
                   "--reflector too, those stay peers whatever the Service says")
    p.add_argument("--kubeconfig", default=None, help="for --reflector-service: a kubeconfig "
                   "file (default: the pod's ServiceAccount, else $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--asn", type=int, default=65000)
    p.add_argument("--hold-time", type=int, default=9)
    p.add_argument("--keepalive", type=int, default=3)
    p.add_argument("--bgp-port", type=int, default=179, help="reflectors' BGP port")
    p.add_argument("--connect-mode", choices=("passive", "active", "both"), default="passive",
                   help="who opens BGP sessions: passive = our reflectors dial the nodes (fast "
                   "reconnects, no collisions); active for an FRR reflector with a listen range")
    secrets.add_md5_password_option(p)
    p.add_argument("--reconcile-interval", type=float, default=30.0,
                   help="seconds between full kernel/BGP reconciliations")
    p.add_argument("--stale-time", type=float, default=60.0,
                   help="seconds remote entries are kept while no reflector is reachable")
    p.add_argument("--sweep-interval", type=float, default=10.0,
                   help="seconds between sweeps for LANs whose pods vanished without a DEL")
    metrics_endpoint.add_arguments(p, METRICS_PORT)
    limits = p.add_argument_group("limits (multi-tenant clusters: docs/operations.md)")
    limits.add_argument("--max-macs-per-port", type=positive(int), default=DEFAULT_PER_PORT, metavar="N",
                        help="MACs a pod port may have announced (its own and those the bridge "
                        "learns from its traffic; beyond: not announced, logged, counted; "
                        "default %(default)s)")
    limits.add_argument("--max-macs-per-node", type=positive(int), default=DEFAULT_PER_NODE, metavar="N",
                        help="MACs the node may announce, and what each LAN's bridge learns at "
                        "most (Linux 6.8+); pods' own MACs are never refused (default %(default)s)")
    limits.add_argument("--dup-max-moves", type=int, default=mobility.DEFAULT_MAX_MOVES, metavar="N",
                        help="moves of a MAC within --dup-time that make it a frozen duplicate "
                        "(FRR's dup-addr-detection; default %(default)s)")
    limits.add_argument("--dup-time", type=float, default=mobility.DEFAULT_WINDOW, metavar="S",
                        help="seconds (default %(default)s)")
    limits.add_argument("--dup-freeze", type=freeze_time, default=mobility.DEFAULT_FREEZE,
                        metavar="S|permanent", help="how long a duplicate MAC stays frozen "
                        "(default %(default)s s; permanent: until the agent restarts)")
    limits.add_argument("--max-routes-per-peer", type=int, default=DEFAULT_PER_REFLECTOR,
                        metavar="N", help="routes a reflector may have here; past it its session "
                        "is closed (Cease, Maximum Number of Prefixes Reached), its routes "
                        "withdrawn, and it is held off 30 s, doubling at each new cut up to 10 "
                        "min (default %(default)s: 16 nodes at their MAC limit; 0: no limit)")
    limits.add_argument("--bgp-timeout", type=positive(float), default=10.0, metavar="S",
                        help="seconds the BGP process has to accept a batch of announcements; "
                        "then they are retried (default %(default)s)")
    p.add_argument("--log-level", default="INFO")
    return p


def freeze_time(text: str) -> float | None:
    """'permanent' -> None, else seconds."""
    if text == "permanent":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither seconds nor 'permanent'") from None


def follow_reflectors(args, speaker):
    """Watch the reflectors' Service (--reflector-service) and peer with its endpoints as they
    come and go; the started ReflectorFinder. The endpoints' BGP port is not used: the speaker
    only listens (connect mode passive), the reflectors dial it."""
    from kubernetes import client as k8s_client

    from kube.client import api_client
    from speaker.reflectors import ReflectorFinder, ReflectorPeers, parse_service_ref
    parse_service_ref(args.reflector_service)  # a malformed name fails here, not in the watch
    if args.connect_mode != "passive":
        log.warning("--reflector-service with --connect-mode %s: the speaker dials reflectors on "
                    "TCP 179, not on the Service's port; ours listen elsewhere (1790) and dial the "
                    "nodes themselves (use passive)", args.connect_mode)
    peers = ReflectorPeers(speaker.add_reflector, speaker.remove_reflector, list(args.reflector))
    finder = ReflectorFinder(k8s_client.DiscoveryV1Api(api_client(args.kubeconfig)),
                             args.reflector_service, peers)
    finder.start()
    return finder


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    if not (args.vtep_ip or args.underlay_dev):
        print("megalos-agent: give --vtep-ip or --underlay-dev", file=sys.stderr)
        return 2
    from speaker.config import NodeConfig
    try:
        config = NodeConfig.from_args(args)
    except ValueError as exc:
        print(f"megalos-agent: {exc}", file=sys.stderr)
        return 2
    try:
        datapath = Datapath(vtep_ip=args.vtep_ip, underlay_dev=args.underlay_dev,
                            max_learned=config.max_macs_per_node)
    except DatapathError as exc:
        print(f"megalos-agent: {exc}", file=sys.stderr)
        return 1
    underlay = datapath.default_underlay
    if marked := datapath.mark_legacy_devices():
        log.info("marked as Megalos's (made by an older agent): %s", ", ".join(marked))
    limited = datapath.limit_learning()
    if limited is None:
        log.warning("this kernel cannot cap what a bridge learns (fdb_max_learned, Linux 6.8+): "
                    "a pod spoofing source MACs fills its bridge's FDB; the agent still announces "
                    "at most %d MACs per port and %d per node", config.max_macs_per_port,
                    config.max_macs_per_node)
    elif limited:
        log.info("bridge learning capped at %d MACs on %s", config.max_macs_per_node, ", ".join(limited))
    if vteps := datapath.stop_vtep_learning():
        log.info("bridge learning off on %s", ", ".join(vteps))
    log.info("underlay %s, VTEP %s, overlay MTU %d", underlay.name, underlay.ip, underlay.overlay_mtu)

    events: Announcements = Announcements()
    not_ready = lambda: ""  # noqa: E731
    speaker = finder = None
    if args.reflector or args.reflector_service:
        from speaker.fdb import VtepFdb
        from speaker.node import NodeSpeaker
        speaker = NodeSpeaker(config, datapath, VtepFdb())
        events, not_ready = speaker, speaker.not_ready
        speaker.start()
    if args.reflector_service:
        try:
            finder = follow_reflectors(args, speaker)
        except Exception as exc:  # noqa: BLE001 - a bad Service name, no kubeconfig...
            print(f"megalos-agent: --reflector-service: {exc}", file=sys.stderr)
            speaker.stop()
            return 2

    metrics = AgentMetrics(speaker) if args.metrics_port else None  # 0: nothing measured
    plugin = Plugin(datapath, events, not_ready, args.vxlan_ports)
    try:
        server = CniServer(args.socket, plugin.handle, args.cni_workers, args.cni_read_timeout,
                           args.cni_deadline, metrics.observe_cni if metrics else None)
    except (RuntimeError, OSError) as exc:
        print(f"megalos-agent: {exc}", file=sys.stderr)
        if finder:
            finder.stop()
        if speaker:
            speaker.stop()
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    endpoint = metrics_endpoint.serve(args, metrics.registry, "megalos-agent") if metrics else None
    log.info("serving CNI requests on %s", args.socket)
    print(f"megalos-agent ready on {args.socket}", flush=True)
    while not stop.wait(args.sweep_interval):
        try:
            plugin.sweep()
        except Exception:
            log.exception("sweep failed; retrying at the next interval")
    log.info("stopping")
    if endpoint:
        endpoint.stop()
    server.stop()
    if finder:
        finder.stop()
    if speaker:
        speaker.stop()
    datapath.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
