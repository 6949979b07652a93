"""A node's wire origination: the EVPN routes it originates kept as bytes and sent, a burst at a
time, as UPDATEs built once, through each peer's os-ken queue.

os-ken originates a route (``BGPSpeaker.evpn_prefix_add``) by validating its arguments, making
a VRF path, a VRF destination and a best-path run, copying the path into the global table for
another destination and best-path run, then an outgoing route, an Adj-RIB-out entry and an UPDATE
per route and peer, serialised to compare it with the next one: ~0.6 ms of CPU per MAC on this
machine, 2.2 s of a node's 3.3 s for 3,333 MACs. Our use is narrow (iBGP, EVPN Type-2/Type-3,
one originator per MAC, no import into our own VRFs), so the node keeps the routes it originates
here instead, by os-ken's RIB key, each with an attribute set shared by every route of the same
VNI, mobility sequence number and claim (bgp.claims), and sends what a burst of commands changed
as few UPDATEs as fit (``bgp.evpn_wire.originated``, checked byte for byte against os-ken's
``Peer._construct_update`` in tests/test_osken_origin.py).

os-ken stays the speaker: sessions, FSM, capabilities, timers and the outgoing queue (our UPDATEs
are queued as ``osken_fastpath.WireUpdate``, in order with what os-ken sends). With this table
on, os-ken holds no VRF and no route of ours; what it would answer from its tables, this table
answers (hooks in bgp.osken_fastpath): a session that comes up gets every route
(``Peer.comm_all_best_paths``), so does a peer asking for a ROUTE-REFRESH, and ``peers`` counts
the routes sent (``sent_to``). A route changed twice in one burst goes out once, as it ended;
one announced and withdrawn in the same burst not at all. Off with ``MEGALOS_WIRE_ORIGIN=0`` (or
``MEGALOS_WIRE_PATH=0``): bgp.service then originates through os-ken's API as before.
"""
from __future__ import annotations

import weakref

from os_ken.services.protocols.bgp.core_manager import CORE_MANAGER

from bgp import evpn_wire
from bgp import osken_fastpath as fastpath


class OriginTable:
    """The routes this node originates, by RIB key: (NLRI, attributes); and what changed since
    the last ``flush``, which sends it. The calls mirror bgp.service's use of os-ken's API."""

    def __init__(self, router_id: str, asn: int, local_pref: int, peers):
        self.router_id = router_id
        self.asn = asn
        self.local_pref = local_pref
        self.peers = peers                                  # () -> every os-ken Peer
        self.routes: dict[bytes, tuple[bytes, evpn_wire.Reflected]] = {}
        self._rds: dict[str, bytes] = {}                    # route_dist text -> RD octets
        self._pending: dict[bytes, tuple[bytes, evpn_wire.Reflected | None]] = {}
        self._unsent: set[bytes] = set()                    # pending keys no peer has had
        # One object per attribute set in use, so routes sharing it share one UPDATE.
        self._attributes: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    # -- what bgp.service originates -------------------------------------------------------------
    def vrf_add(self, route_dist: str, vni: int) -> None:
        """The VNI's RD; its route target is in each route's attributes."""
        router_id, _, number = route_dist.rpartition(":")
        self._rds[route_dist] = evpn_wire.route_distinguisher(router_id, int(number))

    def vrf_del(self, route_dist: str) -> None:
        self._rds.pop(route_dist, None)

    def vtep(self, route_dist: str, vni: int, communities: list[bytes]) -> None:
        """The VNI's Type-3 route (os-ken's: ingress replication to our router id)."""
        pmsi = evpn_wire.pmsi_ingress_replication(vni, self.router_id)
        self._announce(evpn_wire.imet_nlri(self._rds[route_dist], self.router_id),
                       self._attributes_of(vni, None, b"".join(communities), pmsi))

    def mac(self, route_dist: str, vni: int, mac: str, ip: str | None, seq: int | None,
            communities: list[bytes]) -> None:
        """A MAC's Type-2 route; `seq`: its MAC mobility sequence number (None: no community)."""
        self._announce(evpn_wire.mac_nlri(self._rds[route_dist], mac, vni, ip),
                       self._attributes_of(vni, seq, b"".join(communities)))

    def withdraw_mac(self, route_dist: str, mac: str, ip: str | None) -> None:
        self._withdraw(evpn_wire.route_key(evpn_wire.mac_nlri(self._rds[route_dist], mac, 0, ip)))

    def withdraw_vtep(self, route_dist: str) -> None:
        self._withdraw(evpn_wire.route_key(evpn_wire.imet_nlri(self._rds[route_dist], self.router_id)))

    def _attributes_of(self, vni: int, seq: int | None, ours: bytes,
                       pmsi: bytes | None = None) -> evpn_wire.Reflected:
        key = (vni, seq, ours, pmsi)
        found = self._attributes.get(key)
        if found is None:
            communities = evpn_wire.extended_communities(self.asn, vni, seq) + ours
            found = evpn_wire.originated(self.router_id, communities, pmsi, self.local_pref)
            self._attributes[key] = found
        return found

    def _announce(self, nlri: bytes, attributes: evpn_wire.Reflected) -> None:
        key = evpn_wire.route_key(nlri)
        if key not in self.routes and key not in self._pending:
            self._unsent.add(key)
        self.routes[key] = (nlri, attributes)
        self._pending[key] = (nlri, attributes)

    def _withdraw(self, key: bytes) -> None:
        route = self.routes.pop(key, None)
        if route is None:
            return
        if key in self._unsent:     # announced and withdrawn in one burst: nothing to send
            self._unsent.discard(key)
            self._pending.pop(key, None)
            return
        self._pending[key] = (route[0], None)

    # -- sending -----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Send what changed since the last call to every established peer: announcements by
        attribute set (in the order their first route changed), then withdrawals."""
        pending, self._pending = self._pending, {}
        self._unsent.clear()
        if not pending:
            return
        targets = fastpath.evpn_peers(self.peers())
        if not targets:
            return   # each gets the whole table when its session comes up
        messages = self._updates(pending.values())
        messages += evpn_wire.withdrawals([nlri for nlri, attributes in pending.values()
                                           if attributes is None])
        for peer in targets:
            for data in messages:
                peer.enque_outgoing_msg(fastpath.WireUpdate(data))

    def send_table(self, peer) -> None:
        """Every route to `peer` (its session came up, or it asked for a refresh)."""
        for data in self._updates(self.routes.values()):
            peer.enque_outgoing_msg(fastpath.WireUpdate(data))

    @staticmethod
    def _updates(routes) -> list[bytes]:
        runs: dict[int, tuple[evpn_wire.Reflected, list[bytes]]] = {}
        for nlri, attributes in routes:
            if attributes is not None:
                runs.setdefault(id(attributes), (attributes, []))[1].append(nlri)
        return [data for attributes, nlris in runs.values() for data in attributes.updates(nlris)]

    def sent_to(self, address: str) -> int:
        """Routes advertised to peer `address`: all of them while its session is up."""
        for peer in fastpath.evpn_peers(self.peers()):
            if peer.ip_address == address:
                return len(self.routes)
        return 0


def enable_origin(router_id: str, asn: int) -> OriginTable:
    """Originate on the wire path (call once the speaker exists and the wire path is on)."""
    table = OriginTable(router_id, asn, CORE_MANAGER.common_conf.local_pref,
                        lambda: CORE_MANAGER.get_core_service().peer_manager.iterpeers)
    fastpath.set_origin(table)
    return table
