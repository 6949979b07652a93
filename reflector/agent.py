"""`megalos-reflector`: the route reflector (os-ken in reflector role) and its state socket.

Peers come from a static list and/or CIDRs on the command line (os-ken has no dynamic
neighbours: every address of a CIDR is added as a passive peer), and can be added and removed at
runtime through the state socket (the API's POST/DELETE /api/v1/nodes). A removed peer's routes
are withdrawn everywhere (speaker.osken_compat cleans os-ken's RIB).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import socketserver
import sys
import threading
import time

from reflector.protocol import DEFAULT_SOCKET, VERSION, encode
from reflector.state import ReflectorState
from speaker.bgp_client import BgpError, BgpProcess

log = logging.getLogger("megalos.reflector")
MAX_CIDR_PEERS = 4096


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megalos-reflector", description=__doc__.splitlines()[0])
    p.add_argument("--router-id", required=True, help="this reflector's address (IPv4)")
    p.add_argument("--listen-host", default="", help="BGP listen address (default: router id)")
    p.add_argument("--bgp-port", type=int, default=179)
    p.add_argument("--asn", type=int, default=65000)
    p.add_argument("--cluster-id", default="10.0.0.1", help="route reflector cluster id "
                   "(the original Megalos used %(default)s)")
    p.add_argument("--peer", action="append", default=[], metavar="IP", help="a node (repeat)")
    p.add_argument("--peer-cidr", action="append", default=[], metavar="CIDR",
                   help=f"accept every address of this network as a peer (at most {MAX_CIDR_PEERS})")
    p.add_argument("--hold-time", type=int, default=9)
    p.add_argument("--md5-password", default="")
    p.add_argument("--state-socket", default=DEFAULT_SOCKET)
    p.add_argument("--log-level", default="INFO")
    return p


def peer_addresses(peers: list[str], cidrs: list[str], router_id: str) -> list[str]:
    """Static peers plus every host address of each CIDR, minus ourselves; validated."""
    found: dict[str, None] = {}
    for raw in peers:
        found[str(ipaddress.ip_address(raw))] = None
    for raw in cidrs:
        net = ipaddress.ip_network(raw, strict=False)
        if net.num_addresses > MAX_CIDR_PEERS + 2:
            raise ValueError(f"--peer-cidr {raw} has {net.num_addresses} addresses; "
                             f"at most {MAX_CIDR_PEERS} are supported")
        for host in (net.hosts() if net.num_addresses > 2 else net):
            found[str(host)] = None
    found.pop(router_id, None)
    return list(found)


class Reflector:
    def __init__(self, args):
        self.args = args
        self.state = ReflectorState()
        self.peers: set[str] = set()
        self.started = time.time()
        self.bgp = BgpProcess(on_event=self._on_event, name="reflector-bgp")
        self.bgp.call("start", router_id=args.router_id, asn=args.asn, role="reflector",
                      cluster_id=args.cluster_id, listen_host=args.listen_host or args.router_id,
                      listen_port=args.bgp_port, hold_time=args.hold_time)

    def _on_event(self, event: dict) -> None:
        if event.get("event") == "peer":
            log.info("peer %s %s", event.get("address"), event.get("state"))
            return
        self.state.apply(event)

    def add_peer(self, address: str, passive: bool = False) -> bool:
        address = str(ipaddress.ip_address(address))
        extra = {"password": self.args.md5_password} if self.args.md5_password else {}
        added = self.bgp.call("peer_add", address=address,
                              connect_mode="passive" if passive else "both", **extra)
        self.peers.add(address)
        return bool(added)

    def remove_peer(self, address: str) -> bool:
        address = str(ipaddress.ip_address(address))
        removed = self.bgp.call("peer_del", address=address)
        self.peers.discard(address)
        self.state.forget_vtep(address)
        return bool(removed)

    def close(self) -> None:
        self.bgp.close()

    # -- the state socket ----------------------------------------------------------------------
    def answer(self, request: dict):
        op = request.get("op")
        if op == "hello":
            return {"version": VERSION, "router_id": self.args.router_id, "started": self.started}
        if op == "totals":
            return {**self.state.totals(), "peers": len(self.peers)}
        if op == "vnis":
            return self.state.vni_summary()
        if op == "vni":
            detail = self.state.vni_detail(int(request["vni"]))
            if detail is None:
                raise LookupError(f"unknown VNI {request['vni']}")
            return detail
        if op == "mac":
            return self.state.where_is(str(request["mac"]))
        if op == "peers":
            return self.bgp.call("peers")
        if op == "events":
            return self.state.changes_since(int(request.get("since", 0)),
                                            min(float(request.get("timeout", 0)), 60.0),
                                            int(request.get("limit", 1000)))
        if op == "peer_add":
            return self.add_peer(request["address"])
        if op == "peer_del":
            return self.remove_peer(request["address"])
        raise ValueError(f"unknown op {op!r}")


class _StateHandler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
                if request.get("v") != VERSION:
                    raise ValueError(f"protocol version {request.get('v')!r} is not {VERSION}")
                reply = {"v": VERSION, "ok": True, "result": self.server.reflector.answer(request)}
            except LookupError as exc:
                reply = {"v": VERSION, "ok": False, "error": str(exc).strip("'\""), "status": 404}
            except (ValueError, TypeError, KeyError) as exc:
                reply = {"v": VERSION, "ok": False, "error": f"bad request: {exc}", "status": 400}
            except BgpError as exc:
                reply = {"v": VERSION, "ok": False, "error": str(exc), "status": 503}
            self.wfile.write(encode(reply))


class StateServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, reflector: Reflector):
        self.reflector = reflector
        if os.path.exists(path):
            os.unlink(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        super().__init__(path, _StateHandler)
        os.chmod(path, 0o660)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        peers = peer_addresses(args.peer, args.peer_cidr, args.router_id)
    except ValueError as exc:
        print(f"megalos-reflector: {exc}", file=sys.stderr)
        return 2
    try:
        reflector = Reflector(args)
    except BgpError as exc:
        print(f"megalos-reflector: {exc}", file=sys.stderr)
        return 1
    cidr_peers = set(peers) - set(args.peer)
    for address in peers:
        reflector.add_peer(address, passive=address in cidr_peers)
    server = StateServer(args.state_socket, reflector)
    threading.Thread(target=server.serve_forever, name="state-server", daemon=True).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("reflector %s: %d peers, state socket %s", args.router_id, len(peers), args.state_socket)
    print(f"megalos-reflector ready on {args.state_socket}", flush=True)
    while not stop.wait(1.0):
        if not reflector.bgp.alive:
            log.error("the BGP process died")
            break
    server.shutdown()
    server.server_close()
    reflector.close()
    try:
        os.unlink(args.state_socket)
    except FileNotFoundError:
        pass
    return 0 if stop.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
