"""The wire path (bgp.osken_fastpath) against os-ken's own path, on real sessions.

One scenario, run twice, with every BGP process on the wire path (the reflector reflects, the
nodes report, received routes as bytes) and with it off (``MEGALOS_WIRE_PATH=0``: os-ken's own
path): announcements with and without IPs, a MAC moving between nodes (mobility sequence
numbers), withdrawals, a node that joins late (it must get the whole table), a route refresh (a
node that adds a VRF asks for one), a node that dies. What every node and the reflector end up
with (events folded into state, ``rib``, ``peers``) must be the same both ways. The codec's
bytes are checked against os-ken in test_evpn_wire.py.
"""
from __future__ import annotations

import json
import os
import threading

import pytest

from bgp.client import BgpProcess
from bgp.protocol import MacAdd, MacDel, PeerAdd, Peers, PeerState, Rib, Start, VtepAdd, event_json
from lab.cluster import Cluster, unique_prefix, wait_until
from reflector.state import ReflectorState
from speaker.evpn_state import RemoteRoutes

ASN, HOLD, VNI, OTHER_VNI = 65000, 3, 4200, 4201

pytestmark = pytest.mark.root


class Speaker:
    """One BGP process in a node's namespace; its events folded as the agents fold them."""

    def __init__(self, node, role: str, env: dict | None = None):
        self.node = node
        self.remote = RemoteRoutes()
        self.state = ReflectorState()
        self.lock = threading.Lock()
        self.peers_up: set[str] = set()
        self.bgp = BgpProcess(on_event=self._on_event, name=node.name,
                              argv_prefix=["ip", "netns", "exec", node.netns],
                              env={**os.environ, **(env or {})})
        self.bgp.call(Start(router_id=node.ip, asn=ASN, role=role, listen_host=node.ip,
                            hold_time=HOLD, connect_retry=1,
                            cluster_id="10.255.0.1" if role == "reflector" else None))

    def _on_event(self, event) -> None:
        with self.lock:
            if isinstance(event, PeerState):
                (self.peers_up.add if event.up else self.peers_up.discard)(event.address)
            else:
                self.remote.apply(event)
                self.state.apply(event, now=0.0)

    def macs(self) -> dict:
        with self.lock:
            return {f"{vni} {mac}": self.remote.winner(vni, mac) for vni, mac in self.remote.macs}

    def floods(self) -> dict:
        with self.lock:
            return {vni: sorted(vteps) for vni, vteps in self.remote.floods.items()}


def mac(i: int) -> str:
    return f"02:77:00:00:{i >> 8:02x}:{i & 255:02x}"


def ip(i: int) -> str | None:
    """Two MACs in three also announce an IP."""
    return f"10.7.0.{i}" if i % 3 else None


def _scenario(wire: bool) -> dict:
    """Run it; what each party ends up with."""
    env = {} if wire else {"MEGALOS_WIRE_PATH": "0"}
    cluster = Cluster(prefix=unique_prefix("mgw"))
    speakers = []
    try:
        rr_node, a_node, b_node, c_node = (cluster.add_node(n) for n in ("rr", "a", "b", "c"))
        rr = Speaker(rr_node, "reflector", env)
        a, b, c = (Speaker(n, "speaker", env) for n in (a_node, b_node, c_node))
        speakers = [rr, a, b, c]
        for node in (a, b):
            node.bgp.call(PeerAdd(rr_node.ip, connect_mode="passive"))
            rr.bgp.call(PeerAdd(node.node.ip, connect_mode="active"))
        wait_until(lambda: {a_node.ip, b_node.ip} <= rr.peers_up, 20, "sessions a, b")
        for node in (a, b):
            node.bgp.call(VtepAdd(VNI, 1))
        a.bgp.call_many([MacAdd(VNI, mac(i), ip(i)) for i in range(1, 121)])
        b.bgp.call_many([MacAdd(VNI, mac(500 + i)) for i in range(40)])
        wait_until(lambda: len(b.macs()) == 120 and len(a.macs()) == 40, 20, "first routes")
        # Withdrawals, and a MAC moving from b to a (the new owner outbids with a sequence number).
        a.bgp.call_many([MacDel(VNI, mac(i), ip(i)) for i in range(1, 21)])
        a.bgp.call(MacAdd(VNI, mac(500), seq=1))
        b.bgp.call(MacDel(VNI, mac(500)))
        wait_until(lambda: len(b.macs()) == 101 and a.macs().get(f"{VNI} {mac(500)}") is None
                   and len(a.macs()) == 39, 20, "withdrawals and the move")
        # A node that joins late gets the whole table; then asks for a refresh (a new VRF).
        c.bgp.call(PeerAdd(rr_node.ip, connect_mode="passive"))
        rr.bgp.call(PeerAdd(c_node.ip, connect_mode="active"))
        wait_until(lambda: len(c.macs()) == 140, 20, "the late node's table")
        c.bgp.call(VtepAdd(OTHER_VNI, 2))
        c.bgp.call(MacAdd(OTHER_VNI, mac(900)))
        wait_until(lambda: f"{OTHER_VNI} {mac(900)}" in a.macs(), 20, "c's route")
        refreshed = {p.address: p for p in rr.bgp.call(Peers())}
        # A node that dies: its routes go everywhere.
        b.bgp.kill()
        wait_until(lambda: len(c.macs()) == 101 and len(a.macs()) == 1, 20, "b's routes withdrawn")
        wait_until(lambda: len(rr.macs()) == 101 + 1, 20, "the reflector's view")
        peers = rr.bgp.call(Peers())
        return {
            "a": (a.macs(), a.floods()), "c": (c.macs(), c.floods()), "rr": (rr.macs(), rr.floods()),
            "rr_state": rr.state.totals() | {"seq": None, "epoch": None},
            "rib": sorted(json.dumps(event_json(e), sort_keys=True) for e in rr.bgp.call(Rib())),
            "peers": [(p.address, p.state, p.received, p.sent) for p in peers],
            "refreshed": {k: (p.received, p.sent) for k, p in refreshed.items()},
        }
    finally:
        for speaker in speakers:
            speaker.bgp.close()
        cluster.destroy()


def test_the_wire_path_ends_where_osken_ends():
    wire, osken = _scenario(wire=True), _scenario(wire=False)
    assert wire == osken
    macs_at_c, floods_at_c = wire["c"]
    assert macs_at_c[f"4200 {mac(500)}"] == "192.0.2.2"          # moved to a
    assert floods_at_c == {VNI: ["192.0.2.2"]}                     # b's flood entry gone
    assert len(wire["rib"]) == 101 + 1 + 1 + 1                     # MACs, a's, c's IMET routes
