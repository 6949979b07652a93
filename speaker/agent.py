"""`megalos-agent`, the node agent: serves CNI requests and runs the node's EVPN speaker.

Start-up order matters for continuity: the datapath is read first, then the control plane,
then the CNI socket opens, so no ADD is served before the agent knows the kernel state.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from cni.config import DEFAULT_AGENT_SOCKET
from cni.datapath import Datapath, DatapathError
from cni.plugin import LanEvents, Plugin
from speaker.cni_server import CniServer

log = logging.getLogger("megalos.agent")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megalos-agent", description=__doc__.splitlines()[0])
    p.add_argument("--vtep-ip", default="", help="this node's VTEP address (default: the underlay "
                   "device's first address)")
    p.add_argument("--underlay-dev", default="", help="device VXLAN traffic leaves by")
    p.add_argument("--socket", default=DEFAULT_AGENT_SOCKET, help="CNI request socket "
                   "(default %(default)s)")
    p.add_argument("--reflector", action="append", default=[], metavar="IP",
                   help="route reflector address (repeat for several); none: no control plane")
    p.add_argument("--asn", type=int, default=65000)
    p.add_argument("--hold-time", type=int, default=9)
    p.add_argument("--keepalive", type=int, default=3)
    p.add_argument("--bgp-port", type=int, default=179, help="reflectors' BGP port")
    p.add_argument("--connect-mode", choices=("passive", "active", "both"), default="passive",
                   help="who opens BGP sessions: passive = our reflectors dial the nodes (fast "
                   "reconnects, no collisions); active for an FRR reflector with a listen range")
    p.add_argument("--md5-password", default="", help="TCP MD5 password for BGP sessions")
    p.add_argument("--reconcile-interval", type=float, default=30.0,
                   help="seconds between full kernel/BGP reconciliations")
    p.add_argument("--stale-time", type=float, default=60.0,
                   help="seconds remote entries are kept while no reflector is reachable")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not (args.vtep_ip or args.underlay_dev):
        print("megalos-agent: give --vtep-ip or --underlay-dev", file=sys.stderr)
        return 2
    try:
        datapath = Datapath(vtep_ip=args.vtep_ip, underlay_dev=args.underlay_dev)
    except DatapathError as exc:
        print(f"megalos-agent: {exc}", file=sys.stderr)
        return 1
    underlay = datapath.default_underlay
    log.info("underlay %s, VTEP %s, overlay MTU %d", underlay.name, underlay.ip, underlay.overlay_mtu)

    events: LanEvents = LanEvents()
    not_ready = lambda: ""  # noqa: E731
    speaker = None
    if args.reflector:
        from speaker.node import NodeSpeaker
        speaker = NodeSpeaker(datapath, args)
        events, not_ready = speaker, speaker.not_ready
        speaker.start()

    plugin = Plugin(datapath, events, not_ready)
    try:
        server = CniServer(args.socket, plugin.handle)
    except (RuntimeError, OSError) as exc:
        print(f"megalos-agent: {exc}", file=sys.stderr)
        if speaker:
            speaker.stop()
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    log.info("serving CNI requests on %s", args.socket)
    print(f"megalos-agent ready on {args.socket}", flush=True)
    stop.wait()
    log.info("stopping")
    server.stop()
    if speaker:
        speaker.stop()
    datapath.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
