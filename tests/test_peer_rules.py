"""bgp.peer_rules with plain values, and the UPDATEs bgp.evpn_wire builds for a peer made of
bytes (lab.rogue_bgp) read back by os-ken's own parser. The rules on real sessions, as a rogue
peer tries them: test_tenant_bgp.py."""
from __future__ import annotations

import pytest
from os_ken.lib.packet import bgp as bgp_packet
from os_ken.services.protocols.bgp.utils import bgp as bgp_utils

from bgp import evpn_wire
from bgp.events import route_event as path_event
from bgp.peer_rules import DEFAULT_PER_CLIENT, NODE_MAC_LIMIT, Backoff, refusal
from bgp.protocol import MAX_SEQ, MacRoute, VtepRoute
from speaker.mac_limits import DEFAULT_PER_NODE
from test_osken_compat import _rr_client_peer

PEER = "192.0.2.21"


def test_a_clients_routes_must_name_its_own_vtep():
    assert refusal(PEER, PEER) == ""
    assert refusal(PEER, PEER, PEER, PEER) == ""
    assert refusal(PEER, PEER, originator=PEER) == ""            # no PMSI endpoint: not checked
    assert refusal(PEER, "192.0.2.22") == "next hop 192.0.2.22 is not the peer's own address"
    assert refusal(PEER, PEER, "192.0.2.22", PEER).startswith("originator 192.0.2.22")
    assert refusal(PEER, PEER, PEER, "192.0.2.22").startswith("tunnel endpoint 192.0.2.22")
    # Addresses no node has, even from a peer that has them (the rule of base.primitives).
    assert refusal("127.0.0.1", "127.0.0.1") == "next hop 127.0.0.1 is a loopback address, not a node's"
    for bad, kind in (("0.0.0.0", "unspecified"), ("224.0.0.5", "multicast"),
                      ("169.254.1.1", "link-local"), ("255.255.255.255", "broadcast")):
        assert kind in refusal(PEER, PEER, PEER, bad)
    assert refusal("fd00::21", "fd00::21") == ""
    assert refusal("fd00::21", "FD00:0::21") == ""                 # compared as addresses


def test_the_default_limit_holds_a_node_at_its_mac_limit_and_as_many_lans():
    assert NODE_MAC_LIMIT == DEFAULT_PER_NODE
    assert DEFAULT_PER_CLIENT == 2 * DEFAULT_PER_NODE


def test_the_backoff_doubles_then_starts_over_after_a_quiet_while():
    backoff = Backoff(first=30, longest=600)
    assert backoff.wait(PEER, 0) == 0
    assert backoff.cut(PEER, 0) == 30
    assert backoff.wait(PEER, 10) == 20 and backoff.wait(PEER, 30) == 0
    assert [backoff.cut(PEER, t) for t in (40, 200, 500, 1200, 2000)] == [60, 120, 240, 480, 600]
    assert backoff.wait("192.0.2.99", 2000) == 0                  # per peer
    assert backoff.cut(PEER, 2600) == 600                         # 600 s after its back-off: not yet
    assert backoff.cut(PEER, 3201 + 600 + 1) == 30                # then quiet for longer: over
    assert Backoff(first=900).cut(PEER, 0) == 900                 # longest is at least first
    with pytest.raises(ValueError):
        Backoff(first=0)


def _parsed(messages):
    found = []
    for raw in messages:
        assert len(raw) <= 4096
        message, _, rest = bgp_packet.BGPMessage.parser(raw)
        assert rest == b""
        found.append(message)
    return found


def test_built_mac_routes_are_what_osken_reads(monkeypatch):
    rd = evpn_wire.route_distinguisher(PEER, 7)
    nlris = [evpn_wire.mac_nlri(rd, f"02:00:00:00:01:{i:02x}", 4242, ip) for i, ip in
             ((1, None), (2, "10.0.0.2"), (3, "fd00::3"))]
    nlris += [evpn_wire.mac_nlri(rd, f"02:00:00:00:02:{i % 256:02x}", 4242) for i in range(300)]
    messages = evpn_wire.announcements(PEER, nlris, evpn_wire.extended_communities(65000, 4242, MAX_SEQ))
    assert len(messages) > 1                                       # 303 routes do not fit in one
    source = _rr_client_peer(monkeypatch, PEER)
    events = []
    for message in _parsed(messages):
        reach = message.pathattr_map[bgp_packet.BGP_ATTR_TYPE_MP_REACH_NLRI]
        assert reach.next_hop == PEER and all(n.route_dist == f"{PEER}:7" for n in reach.nlri)
        paths = [bgp_utils.create_path(source, n, pattrs=message.pathattr_map, nexthop=reach.next_hop)
                 for n in reach.nlri]
        events += [path_event(p, False) for p in paths]
        update = evpn_wire.parse_update(bytes(message.serialize()))  # and our own reader agrees
        assert [evpn_wire.route_event(n, update, False) for n in update.reach] == events[-len(paths):]
    assert events[:3] == [MacRoute("add", 4242, "02:00:00:00:01:01", PEER, None, MAX_SEQ),
                          MacRoute("add", 4242, "02:00:00:00:01:02", PEER, "10.0.0.2", MAX_SEQ),
                          MacRoute("add", 4242, "02:00:00:00:01:03", PEER, "fd00::3", MAX_SEQ)]
    assert len(events) == 303


def test_a_built_vtep_route_names_its_originator_and_endpoint(monkeypatch):
    rd = evpn_wire.route_distinguisher(PEER, 1)
    [raw] = evpn_wire.announcements(PEER, [evpn_wire.imet_nlri(rd, "192.0.2.31")],
                                    evpn_wire.extended_communities(65000, 77),
                                    evpn_wire.pmsi_ingress_replication(77, "192.0.2.32"))
    [message] = _parsed([raw])
    reach = message.pathattr_map[bgp_packet.BGP_ATTR_TYPE_MP_REACH_NLRI]
    path = bgp_utils.create_path(_rr_client_peer(monkeypatch, PEER), reach.nlri[0],
                                 pattrs=message.pathattr_map, nexthop=reach.next_hop)
    assert path_event(path, False) == VtepRoute("add", 77, "192.0.2.32")
    assert reach.nlri[0].ip_addr == "192.0.2.31"
    update = evpn_wire.parse_update(raw)
    assert evpn_wire.imet_claims(update.reach[0], update) == ("192.0.2.31", "192.0.2.32")
    mac = evpn_wire.parse_update(evpn_wire.announcements(PEER, [evpn_wire.mac_nlri(rd, "02:00:00:00:00:01", 77)])[0])
    assert evpn_wire.imet_claims(mac.reach[0], mac) == (None, None)
