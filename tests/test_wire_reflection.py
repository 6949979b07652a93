"""The wire path (bgp.osken_fastpath) against os-ken's own path, on real sessions.

One scenario, run with every BGP process on the wire path (the reflector reflects, the nodes
report received routes and originate their own as bytes: bgp.osken_origin), with it off
(``MEGALOS_WIRE_PATH=0``: os-ken's own path), and with the nodes originating through os-ken's
API while the rest stays on the wire path (``MEGALOS_WIRE_ORIGIN=0``): announcements with and without IPs, a MAC moving between nodes (mobility sequence
numbers), the claims routes carry (bgp.claims: a VNI's namespace, a VNI changing hands, a MAC's
pod), withdrawals, a node that joins late (it must get the whole table), a route refresh (a
node that adds a VRF asks for one), a node that dies. What every node and the reflector end up
with (events folded into state, ``rib``, ``peers``) must be the same every way. The codec's
bytes are checked against os-ken in test_evpn_wire.py and test_osken_origin.py.
"""
from __future__ import annotations

import json
import os
import threading

import pytest

from bgp.client import BgpProcess
from bgp.protocol import (MacAdd, MacDel, MacRoute, PeerAdd, Peers, PeerState, Rib, Start, VtepAdd,
                          VtepRoute, event_json)
from base.tenancy import VniClaim
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
        self.claims: dict[str, object] = {}   # "vni vtep" or "vni mac" -> namespace or pod
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
                key = f"{event.vni} {event.vtep if isinstance(event, VtepRoute) else event.mac}"
                claim = event.claim if isinstance(event, VtepRoute) else event.pod
                if event.added and claim:
                    self.claims[key] = claim
                else:
                    self.claims.pop(key, None)

    def macs(self) -> dict:
        with self.lock:
            return {f"{vni} {mac}": self.remote.winner(vni, mac) for vni, mac in self.remote.macs}

    def claimed(self) -> dict:
        with self.lock:
            return dict(self.claims)

    def floods(self) -> dict:
        with self.lock:
            return {vni: sorted(vteps) for vni, vteps in self.remote.floods.items()}


def mac(i: int) -> str:
    return f"02:77:00:00:{i >> 8:02x}:{i & 255:02x}"


def pod(i: int) -> str | None:
    """One MAC in four is held by a pod (the others were learned from traffic)."""
    return f"{i:012x}" if i % 4 == 0 else None


def ip(i: int) -> str | None:
    """Two MACs in three also announce an IP."""
    return f"10.7.0.{i}" if i % 3 else None


WIRE, OSKEN, OSKEN_ORIGIN = {}, {"MEGALOS_WIRE_PATH": "0"}, {"MEGALOS_WIRE_ORIGIN": "0"}


def _scenario(env: dict) -> dict:
    """Run it with the BGP processes' environment `env`; what each party ends up with."""
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
            node.bgp.call(VtepAdd(VNI, 1, "lab-a", 1_700_000_000_000))
        a.bgp.call_many([MacAdd(VNI, mac(i), ip(i), pod=pod(i)) for i in range(1, 121)])
        b.bgp.call_many([MacAdd(VNI, mac(500 + i)) for i in range(40)])
        wait_until(lambda: len(b.macs()) == 120 and len(a.macs()) == 40, 20, "first routes")
        # Withdrawals, and a MAC moving from b to a (the new owner outbids with a sequence number).
        a.bgp.call_many([MacDel(VNI, mac(i), ip(i)) for i in range(1, 21)])
        a.bgp.call(MacAdd(VNI, mac(500), seq=1))
        b.bgp.call(MacDel(VNI, mac(500)))
        wait_until(lambda: len(b.macs()) == 101 and a.macs().get(f"{VNI} {mac(500)}") is None
                   and len(a.macs()) == 39, 20, "withdrawals and the move")
        # A node that joins late gets the whole table, and sends what it originated before its
        # session came up; then asks for a refresh (a new VRF, on os-ken's path).
        c.bgp.call(VtepAdd(OTHER_VNI, 2, "lab-c", 2))
        c.bgp.call(MacAdd(OTHER_VNI, mac(900)))
        c.bgp.call(PeerAdd(rr_node.ip, connect_mode="passive"))
        rr.bgp.call(PeerAdd(c_node.ip, connect_mode="active"))
        wait_until(lambda: len(c.macs()) == 140, 20, "the late node's table")
        wait_until(lambda: f"{OTHER_VNI} {mac(900)}" in a.macs(), 20, "c's route")
        c.bgp.call(VtepAdd(VNI, 3))
        assert c.bgp.call(VtepAdd(OTHER_VNI, 2, "lab-d", 3)) is True     # the VNI changed hands
        wait_until(lambda: a.claims.get(f"{OTHER_VNI} {c_node.ip}") == VniClaim(3, "lab-d"), 20,
                   "c's new claim")
        refreshed = {p.address: p for p in rr.bgp.call(Peers())}
        # A node that dies: its routes go everywhere.
        b.bgp.kill()
        wait_until(lambda: len(c.macs()) == 101 and len(a.macs()) == 1, 20, "b's routes withdrawn")
        wait_until(lambda: len(rr.macs()) == 101 + 1, 20, "the reflector's view")
        peers = rr.bgp.call(Peers())
        return {
            "a": (a.macs(), a.floods(), a.claimed()), "c": (c.macs(), c.floods(), c.claimed()),
            "rr": (rr.macs(), rr.floods(), rr.claimed()),
            "rr_state": rr.state.totals() | {"seq": None, "epoch": None},
            "rib": sorted(json.dumps(event_json(e), sort_keys=True) for e in rr.bgp.call(Rib())),
            "peers": [(p.address, p.state, p.received, p.sent) for p in peers],
            "refreshed": {k: (p.received, p.sent) for k, p in refreshed.items()},
        }
    finally:
        for speaker in speakers:
            speaker.bgp.close()
        cluster.destroy()


@pytest.fixture(scope="module")
def on_the_wire() -> dict:
    return _scenario(WIRE)


def test_the_wire_path_ends_where_osken_ends(on_the_wire):
    wire, osken = on_the_wire, _scenario(OSKEN)
    assert wire == osken
    macs_at_c, floods_at_c, claims_at_c = wire["c"]
    assert macs_at_c[f"4200 {mac(500)}"] == "192.0.2.2"          # moved to a
    assert floods_at_c == {VNI: ["192.0.2.2"]}                     # b's flood entry gone
    assert len(wire["rib"]) == 101 + 1 + 1 + 2     # MACs (a's, c's), IMET routes (a's, c's two)
    # The claims crossed the reflector both ways: a's VNI claim, the pods of its MACs.
    assert claims_at_c[f"{VNI} 192.0.2.2"] == VniClaim(1_700_000_000_000, "lab-a")
    assert {k: v for k, v in claims_at_c.items() if ":" in k} == {
        f"{VNI} {mac(i)}": pod(i) for i in range(21, 121) if pod(i)}
    assert wire["a"][2][f"{OTHER_VNI} 192.0.2.4"] == VniClaim(3, "lab-d")
    assert sum('"namespace":"lab-a"' in r.replace(" ", "") for r in wire["rib"]) == 1


def test_origination_on_the_wire_ends_where_osken_origination_ends(on_the_wire):
    assert _scenario(OSKEN_ORIGIN) == on_the_wire
