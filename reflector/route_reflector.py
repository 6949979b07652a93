"""The route reflector: its BGP process (os-ken in the reflector role), its peers, and the state
the reflected routes build (reflector.state).

Peers are nodes. The reflector dials them (they listen): sessions come back about 1 s after a
restart on either side, and two sides dialling at once cannot collide (os-ken drops both
connections of a collision and waits its full retry time). A removed peer's routes are withdrawn
everywhere (bgp.osken_compat.delete_neighbor cleans os-ken's RIB).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from base.logs import LogLimiter
from base.primitives import normalize_ip
from bgp.client import BgpProcess
from bgp.peer_rules import DEFAULT_PER_CLIENT
from bgp.protocol import (ROLE_REFLECTOR, ROUTE_LIMIT, MacRoute, PeerAdd, PeerDel, Peers,
                          PeerState, PeerSummary, RoutesRefused, Start, VtepRoute)
from reflector.state import ReflectorState

log = logging.getLogger("megalos.reflector")
REASONS = {ROUTE_LIMIT: " (it sent more routes than --max-routes-per-peer; its routes are "
                        "withdrawn, and it gets no session until its back-off ends)"}


@dataclass(frozen=True)
class ReflectorConfig:
    """What the reflector's BGP process is started with (from the command line, once)."""
    router_id: str
    asn: int = 65000
    cluster_id: str = "10.0.0.1"
    listen_host: str = ""       # default: the router id
    bgp_port: int = 179
    hold_time: int = 9
    restart_grace: int = 8      # seconds a node's routes outlive its closed session
    md5_password: str = field(default="", repr=False)  # TCP MD5 with every node; never logged
    max_routes_per_peer: int = DEFAULT_PER_CLIENT      # 0: no limit (bgp.peer_rules)

    def start_command(self) -> Start:
        return Start(router_id=self.router_id, asn=self.asn, role=ROLE_REFLECTOR,
                     cluster_id=self.cluster_id, listen_host=self.listen_host or self.router_id,
                     listen_port=self.bgp_port, hold_time=self.hold_time,
                     restart_grace=self.restart_grace, max_routes_per_peer=self.max_routes_per_peer)


class Reflector:
    """`start()` spawns the BGP process (`spawn_bgp(on_event=..., name=...)`, BgpProcess by
    default) and starts it; nothing happens before."""

    def __init__(self, config: ReflectorConfig, state: ReflectorState | None = None,
                 spawn_bgp: Callable[..., BgpProcess] = BgpProcess):
        self.config = config
        self.state = state or ReflectorState()
        self.peers: set[str] = set()
        self.static_peers: set[str] = set()  # from the command line: discovery never removes them
        self.started = time.time()
        self._spawn_bgp = spawn_bgp
        self.bgp: BgpProcess | None = None
        # Events worth counting, by name: exported as metrics. The state counts its own
        # (mac_frozen) in the same Counter.
        self.counters: Counter[str] = self.state.counters
        self._refusals = LogLimiter(log)

    def start(self) -> None:
        self.bgp = self._spawn_bgp(on_event=self.on_event, name="reflector-bgp")
        self.bgp.call(self.config.start_command())

    def close(self) -> None:
        if self.bgp is not None:
            self.bgp.close()

    def on_event(self, event) -> None:
        """From the BGP process's reader thread: routes go into the state."""
        if isinstance(event, (MacRoute, VtepRoute)):
            self.state.apply(event)
        elif isinstance(event, RoutesRefused):
            self.counters["routes_refused"] += event.routes
            self._refusals.warning("refused", "routes from %s refused (treated as withdrawn): %s",
                                   event.peer, event.reason)
        elif isinstance(event, PeerState):
            log.info("peer %s %s", event.address, "up" if event.up else "down")
            self.counters["session_up" if event.up else "session_down"] += 1
            if event.reason:  # we closed the session
                log.warning("peer %s closed: %s%s", event.address, event.reason,
                            REASONS.get(event.reason, ""))
                self.counters[f"peer_{event.reason}"] += 1

    def add_peer(self, address: str, passive: bool = False) -> bool:
        """Peer with a node (dialling it, unless `passive`); True if it was not a peer yet."""
        address = normalize_ip(address)
        added = self.bgp.call(PeerAdd(address, "passive" if passive else "active",
                                      self.config.md5_password or None))
        self.peers.add(address)
        return bool(added)

    def remove_peer(self, address: str) -> bool:
        address = normalize_ip(address)
        removed = self.bgp.call(PeerDel(address))
        self.peers.discard(address)
        self.state.forget_vtep(address)
        return bool(removed)

    def peer_summaries(self) -> list[PeerSummary]:
        return self.bgp.call(Peers())

    # -- peers from the Kubernetes API (reflector.discovery.PeerSync calls these) ----------------
    def add_node(self, address: str) -> bool:
        if address == self.config.router_id:
            log.warning("node %s has the reflector's router id; not peered (give the reflector "
                        "another --router-id, or leave it unset)", address)
            return False
        return self.add_peer(address)

    def remove_node(self, address: str) -> bool:
        if address in self.static_peers:
            log.info("%s left the nodes but stays a peer: it was given with --peer", address)
            return False
        return self.remove_peer(address)

    def name_node(self, address: str, name: str | None) -> None:
        if name is None and address in self.static_peers:
            return
        self.state.name_node(address, name)
