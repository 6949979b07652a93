"""bgp.osken_origin against os-ken: a node's routes kept as bytes must go out as the bytes os-ken's
own path sends for them (``evpn_prefix_add`` into a VRF, then ``Peer._construct_update`` to an
iBGP peer, packed by bgp.osken_throughput), withdrawals included; and the table must keep what a
burst of commands leaves, send it whole to a new peer, and count it.

The os-ken side runs in a process of its own (eventlet, a real BGPSpeaker and neighbour), through
bgp.service.OskenOrigin, the path the service takes with ``MEGALOS_WIRE_ORIGIN=0``. The end
state on real sessions, both ways, is checked in test_wire_reflection.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from os_ken.lib.packet.bgp import RF_L2_EVPN

from base.tenancy import VniClaim
from bgp import claims, evpn_wire, osken_fastpath
from bgp.osken_origin import OriginTable
from test_osken_compat import _rr_client_peer
from test_osken_fastpath import FakePeer

ROUTER, PEER = "192.0.2.1", "192.0.2.2"
RD1, RD2 = f"{ROUTER}:1", f"{ROUTER}:2"

# (VNI, MAC, IP, mobility sequence number or None, pod or None), originated in this order.
MACS = [(100, f"02:00:00:00:01:{i:02x}", None, None, None) for i in range(40)]   # one attribute set
MACS += [
    (100, "02:00:00:00:02:01", "10.0.0.1", None, None),
    (100, "02:00:00:00:02:02", "fd00::2", None, None),
    (100, "02:00:00:00:02:03", None, 7, None),
    (100, "02:00:00:00:02:04", "10.0.0.4", 2, "0123456789ab"),
    (200, "02:00:00:00:02:05", None, None, "00000000beef"),
    (200, "02:00:00:00:02:06", None, 4294967295, None),
]
VTEPS = [(RD1, 100, VniClaim(1_700_000_000_000, "kathara-lab")), (RD2, 200, None)]

# Both paths take the same calls. os-ken's sends as it goes; each of its routes' UPDATEs is then
# built by os-ken for the neighbour: alone, withdrawn, and packed (bgp.osken_throughput) in the
# order the wire table sends them.
SCRIPT = r"""
import json, os, sys, warnings
warnings.filterwarnings('ignore')
os.environ['OSKEN_HUB_TYPE'] = 'eventlet'
import eventlet
eventlet.monkey_patch()
import eventlet.queue
from bgp.process import OsKen
from bgp.protocol import Start
from bgp.service import OskenOrigin
from bgp import evpn_wire, osken_origin, osken_throughput
from os_ken.lib.packet.bgp import RF_L2_EVPN, EvpnNLRI
from os_ken.services.protocols.bgp.model import OutgoingRoute

router, peer_address, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
osken = OsKen(eventlet)
speaker = osken.bgpspeaker.BGPSpeaker(as_number=65000, router_id=router, bgp_server_port=0)
speaker.neighbor_add(peer_address, 65000, enable_ipv4=False, enable_evpn=True,
                     connect_mode=osken.compat.connect_mode('passive'))
core = osken.CORE_MANAGER.get_core_service()
peer = core.peer_manager.get_by_addr(peer_address)
wire = osken_origin.OriginTable(router, 65000, 100, lambda: [])
for origin in (OskenOrigin(osken, speaker, Start(router_id=router, asn=65000)), wire):
    for call, args in calls:
        if call in ('vtep', 'mac'):
            args = args[:-1] + [[bytes.fromhex(c) for c in args[-1]]]
        getattr(origin, call)(*args)
eventlet.sleep(0.5)
table = core.table_manager.get_global_table_by_route_family(RF_L2_EVPN)
paths = {d.best_path.nlri.formatted_nlri_str: d.best_path for d in table.values() if d.best_path}
order = [EvpnNLRI.parser(nlri)[0].formatted_nlri_str for nlri, _ in wire.routes.values()]


class Recording:
    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(bytes(message.serialize()).hex())

    def is_four_octet_as_number_cap_valid(self):
        return True


def built(path):
    return bytes(peer._construct_update(OutgoingRoute(path)).serialize()).hex()


peer._protocol = Recording()
by_osken = {'single': {k: built(p) for k, p in paths.items()},
            'withdrawn': {k: built(p.clone(for_withdrawal=True)) for k, p in paths.items()}}
peer.state.bgp_state = 'Established'   # os-ken's packer sends on a session only
osken_throughput._send_outgoing_routes(peer, [OutgoingRoute(paths[k]) for k in order])
by_osken['packed'] = peer._protocol.sent
peer._protocol = None
routes = list(wire.routes.values())
ours = {'single': {k: a.updates([n])[0].hex() for k, (n, a) in zip(order, routes)},
        'withdrawn': {k: evpn_wire.withdrawals([n])[0].hex() for k, (n, a) in zip(order, routes)},
        'packed': [m.hex() for m in wire._updates(routes)]}
print(json.dumps({'osken': by_osken, 'wire': ours}))
speaker.shutdown()
"""


def _calls() -> list:
    """The OriginTable / OskenOrigin calls that originate VTEPS and MACS."""
    calls = []
    for rd, vni, claim in VTEPS:
        calls.append(("vrf_add", [rd, vni]))
        calls.append(("vtep", [rd, vni, [c.hex() for c in (claims.vtep_claim(claim) if claim else [])]]))
    for vni, mac, ip, seq, pod in MACS:
        rd = RD1 if vni == 100 else RD2
        calls.append(("mac", [rd, vni, mac, ip, seq,
                              [c.hex() for c in (claims.mac_holder(pod) if pod else [])]]))
    return calls


@pytest.fixture(scope="module")
def both_paths() -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, ROUTER, PEER, json.dumps(_calls())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_route_is_sent_as_osken_sends_it(both_paths):
    osken, wire = both_paths["osken"]["single"], both_paths["wire"]["single"]
    assert len(osken) == len(MACS) + len(VTEPS)
    assert wire == osken


def test_a_burst_is_packed_as_osken_packs_it(both_paths):
    osken, wire = both_paths["osken"]["packed"], both_paths["wire"]["packed"]
    # the first 42 MACs (an IP is no attribute) in one UPDATE; every other route has attributes
    # of its own
    assert len(wire) == 1 + (len(MACS) - 42) + len(VTEPS)
    assert wire == osken


def test_withdrawals_are_what_osken_sends(both_paths):
    assert both_paths["wire"]["withdrawn"] == both_paths["osken"]["withdrawn"]


# --- the table with stand-in peers: what a burst sends, and to whom ----------------------------

def _table(*peers):
    table = OriginTable(ROUTER, 65000, 100, lambda: peers)
    table.vrf_add(RD1, 100)
    return table


def _mac(i: int) -> str:
    return f"02:00:00:00:03:{i:02x}"


def test_a_burst_goes_out_once_as_it_ended_to_established_peers_only():
    up, down = FakePeer(PEER), FakePeer("192.0.2.3", established=False)
    table = _table(up, down)
    table.vtep(RD1, 100, [])
    for i in range(5):
        table.mac(RD1, 100, _mac(i), None, None, [])
    table.mac(RD1, 100, _mac(1), None, 3, [])          # moved again before the burst went out
    table.withdraw_mac(RD1, _mac(2), None)              # announced and withdrawn: never sent
    assert up.queued == [] and table.sent_to(PEER) == 5
    table.flush()
    assert [kind for kind, _ in up.taken()] == ["reach", "reach", "reach"]   # IMET, MACs, mac 1
    assert down.queued == [] and table.sent_to(down.ip_address) == 0
    table.flush()
    assert up.queued == []                              # nothing changed since


def test_a_mac_moved_is_announced_again_with_its_sequence_number():
    peer = FakePeer(PEER)
    table = _table(peer)
    table.mac(RD1, 100, _mac(1), None, None, [])
    table.flush()
    peer.taken()
    table.mac(RD1, 100, _mac(1), None, 4, [])
    table.flush()
    [raw] = peer.queued
    assert evpn_wire.mobility_seq(evpn_wire.parse_update(raw)) == 4


def test_withdrawals_follow_announcements_and_name_what_was_sent():
    peer = FakePeer(PEER)
    table = _table(peer)
    table.mac(RD1, 100, _mac(1), "10.0.0.1", None, [])
    table.mac(RD1, 100, _mac(2), None, None, [])
    table.flush()
    peer.taken()
    table.withdraw_mac(RD1, _mac(1), "10.0.0.1")
    table.withdraw_mac(RD1, _mac(1), None)             # never announced: nothing
    table.mac(RD1, 100, _mac(3), None, None, [])
    table.flush()
    sent = [evpn_wire.parse_update(raw) for raw in peer.queued]
    assert [len(u.reach) for u in sent] == [1, 0] and [len(u.unreach) for u in sent] == [0, 1]
    assert sent[1].unreach == [evpn_wire.mac_nlri(evpn_wire.route_distinguisher(ROUTER, 1),
                                                  _mac(1), 100, "10.0.0.1")]
    assert table.sent_to(PEER) == 2


def test_a_peer_that_comes_up_gets_the_whole_table_packed():
    late = FakePeer(PEER, established=False)
    table = _table(late)
    table.vtep(RD1, 100, claims.vtep_claim(VniClaim(5, "lab")))
    for i in range(200):
        table.mac(RD1, 100, f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", None, None, [])
    table.mac(RD1, 100, _mac(1), None, None, claims.mac_holder("0123456789ab"))
    table.flush()
    assert late.queued == []
    late.established = True
    table.send_table(late)
    sent = [evpn_wire.parse_update(raw) for raw in late.queued]
    assert all(len(raw) <= 4096 for raw in late.queued)
    assert sum(len(u.reach) for u in sent) == 202 == table.sent_to(PEER)
    assert len(sent) == 1 + 2 + 1     # the IMET route, 200 MACs in two UPDATEs, the pod's MAC
    events = [evpn_wire.route_event(n, u, False) for u in sent for n in u.reach]
    assert events[0].claim == VniClaim(5, "lab") and events[-1].pod == "0123456789ab"


def test_a_vtep_withdrawn_with_its_macs():
    peer = FakePeer(PEER)
    table = _table(peer)
    table.vtep(RD1, 100, [])
    table.mac(RD1, 100, _mac(1), None, None, [])
    table.flush()
    peer.taken()
    table.withdraw_mac(RD1, _mac(1), None)
    table.withdraw_vtep(RD1)
    table.vrf_del(RD1)
    table.flush()
    [withdrawn] = [evpn_wire.parse_update(raw) for raw in peer.queued]
    assert (len(withdrawn.reach), [n[0] for n in withdrawn.unreach]) == (0, [evpn_wire.TYPE2, evpn_wire.TYPE3])
    assert table.routes == {} and table.sent_to(PEER) == 0


# --- os-ken's hooks: a session that comes up, a ROUTE-REFRESH --------------------------------

class _Session:
    """The protocol of an established EVPN session, as the hooks ask it."""

    def is_mbgp_cap_valid(self, family):
        return True

    def is_route_family_adv(self, family):
        return True

    def is_enhanced_rr_cap_valid(self):
        return False


@pytest.fixture
def node_peer(monkeypatch):
    """A real os-ken Peer (an iBGP neighbour) on a stand-in session, and the origin table the
    hooks of bgp.osken_fastpath serve, holding a VTEP route and a MAC route."""
    peer = _rr_client_peer(monkeypatch, PEER)
    peer._protocol = _Session()
    peer._peer_manager = SimpleNamespace(resend_sent=lambda family, to: None)
    table = OriginTable(ROUTER, 65000, 100, lambda: [peer])
    table.vrf_add(RD1, 100)
    table.vtep(RD1, 100, [])
    table.mac(RD1, 100, _mac(1), None, None, [])
    table.flush()                        # the session is not up yet: nothing sent
    monkeypatch.setitem(osken_fastpath._tables, "origin", table)
    return peer


def _queued(peer) -> list:
    sent = []
    while (message := peer.outgoing_msg_list.pop_first()) is not None:
        sent.append(evpn_wire.parse_update(message.serialize()))
    return sent


def test_a_session_that_comes_up_and_a_refresh_get_what_the_node_originates(node_peer):
    assert _queued(node_peer) == []
    node_peer.state.bgp_state = "Established"
    osken_fastpath._comm_all_best_paths_and_ours(node_peer, {})
    osken_fastpath._route_refresh_and_ours(node_peer, RF_L2_EVPN.afi, RF_L2_EVPN.safi)
    sent = _queued(node_peer)
    assert [[n[0] for n in u.reach] for u in sent] == [[evpn_wire.TYPE3], [evpn_wire.TYPE2]] * 2
