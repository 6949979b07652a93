"""bgp.evpn_wire against os-ken: the reflector's wire path must send the bytes os-ken's own
path sends (``Peer._construct_update`` for a route reflector client) and report the events
``bgp.events.route_event`` reports for the paths os-ken parses from the same message."""
from __future__ import annotations

import socket

import pytest
from os_ken.lib.packet import bgp as bgp_packet
from os_ken.services.protocols.bgp.model import OutgoingRoute
from os_ken.services.protocols.bgp.utils import bgp as bgp_utils

from base.tenancy import VniClaim
from bgp import claims, evpn_wire
from bgp.events import route_event as path_event
from test_osken_compat import _attrs, _rr_client_peer, imet_route, mac_route

SOURCE = '192.0.2.21'  # the client that sent the UPDATE


def _mobility(seq):
    return bgp_packet.BGPEvpnMacMobilityExtendedCommunity(subtype=0, flags=0, sequence_number=seq)


def _sent_by_a_node(paths, extra=(), communities=()):
    """An UPDATE as a node's speaker sends it (os-ken's attribute order, one attribute set)."""
    attrs = dict(paths[0].pathattr_map)
    ext = attrs[bgp_packet.BGP_ATTR_TYPE_EXTENDED_COMMUNITIES]
    ext = bgp_packet.BGPPathAttributeExtendedCommunities(ext.communities + list(communities))
    listed = [bgp_packet.BGPPathAttributeMpReachNLRI(25, 70, paths[0].nexthop, [p.nlri for p in paths]),
              attrs[bgp_packet.BGP_ATTR_TYPE_ORIGIN], attrs[bgp_packet.BGP_ATTR_TYPE_AS_PATH],
              *extra, bgp_packet.BGPPathAttributeLocalPref(100), ext]
    pmsi = attrs.get(bgp_packet.BGP_ATTR_TYEP_PMSI_TUNNEL_ATTRIBUTE)
    if pmsi:
        listed.append(pmsi)
    return bytes(bgp_packet.BGPUpdate(path_attributes=listed).serialize())


def _ours(values):
    """Our communities (bgp.claims) as os-ken objects: as os-ken parses them off the wire."""
    return [bgp_packet._ExtendedCommunity.parse(value)[0] for value in values]


VARIANTS = {
    'type-2': lambda: _sent_by_a_node([mac_route(i) for i in range(5)]),
    'type-2 with IPs': lambda: _sent_by_a_node([mac_route(1, ip='10.0.0.1'), mac_route(2, ip='fd00::2')]),
    'type-2 moved (MAC mobility)': lambda: _sent_by_a_node([mac_route(3)], communities=[_mobility(7)]),
    'type-3': lambda: _sent_by_a_node([imet_route(100)]),
    'type-3 claiming its VNI': lambda: _sent_by_a_node(
        [imet_route(100)], communities=_ours(claims.vtep_claim(VniClaim(1_700_000_000_000, 'kathara-lab')))),
    'type-2 held by a pod, moved': lambda: _sent_by_a_node(
        [mac_route(5)], communities=[_mobility(2), *_ours(claims.mac_holder('0123456789ab'))]),
    'with MED, communities and a cluster list': lambda: _sent_by_a_node(
        [mac_route(4, vni=4242)],
        extra=[bgp_packet.BGPPathAttributeMultiExitDisc(5),
               bgp_packet.BGPPathAttributeCommunities([0xFFFF0001]),
               bgp_packet.BGPPathAttributeClusterList(['10.9.9.9'])]),
    'many routes': lambda: _sent_by_a_node([mac_route(i, ip='10.1.%d.%d' % (i // 250, i % 250 + 1))
                                           for i in range(120)]),
}


def _osken_reflects(monkeypatch, raw):
    """What os-ken sends another client for each route of `raw` (one UPDATE per route), and the
    paths it made."""
    source = _rr_client_peer(monkeypatch, SOURCE)
    client = _rr_client_peer(monkeypatch)
    message, _, rest = bgp_packet.BGPMessage.parser(raw)
    assert rest == b''
    reach = message.pathattr_map[bgp_packet.BGP_ATTR_TYPE_MP_REACH_NLRI]
    paths = [bgp_utils.create_path(source, nlri, pattrs=message.pathattr_map, nexthop=reach.next_hop)
             for nlri in reach.nlri]
    sent = [bytes(client._construct_update(OutgoingRoute(p)).serialize()) for p in paths]
    cluster_id = socket.inet_aton(client._common_conf.cluster_id)
    return paths, sent, cluster_id, client._common_conf.local_pref


@pytest.mark.parametrize('variant', VARIANTS)
def test_reflected_bytes_are_what_osken_sends(monkeypatch, variant):
    raw = VARIANTS[variant]()
    paths, expected, cluster_id, local_pref = _osken_reflects(monkeypatch, raw)
    update = evpn_wire.parse_update(raw)
    assert update is not None
    assert len(update.reach) == len(paths)
    out = evpn_wire.reflected(update, socket.inet_aton(SOURCE), cluster_id, local_pref)
    assert [out.updates([nlri])[0] for nlri in update.reach] == expected  # route by route
    packed = out.updates(update.reach)                                      # packed
    assert all(len(m) <= 4096 for m in packed)
    parsed = [bgp_packet.BGPMessage.parser(m)[0] for m in packed]
    nlris = [n for m in parsed for n in m.pathattr_map[bgp_packet.BGP_ATTR_TYPE_MP_REACH_NLRI].nlri]
    assert [n.formatted_nlri_str for n in nlris] == [p.nlri.formatted_nlri_str for p in paths]


@pytest.mark.parametrize('variant', VARIANTS)
def test_events_and_keys_are_what_osken_reports(monkeypatch, variant):
    raw = VARIANTS[variant]()
    paths, _, _, _ = _osken_reflects(monkeypatch, raw)
    update = evpn_wire.parse_update(raw)
    for nlri, path in zip(update.reach, paths):
        for withdraw in (False, True):
            assert evpn_wire.route_event(nlri, update, withdraw) == path_event(path, withdraw)
    keys = {evpn_wire.route_key(n) for n in update.reach}
    assert len(keys) == len({p.nlri.formatted_nlri_str for p in paths})


def test_claims_are_reported_on_both_paths(monkeypatch):
    """The variants above compare the two paths; here, what they agree on."""
    for variant, expected in (('type-3 claiming its VNI', ('kathara-lab', 1_700_000_000_000)),
                              ('type-2 held by a pod, moved', '0123456789ab'),
                              ('type-3', (None, 0)), ('type-2', None)):
        raw = VARIANTS[variant]()
        update = evpn_wire.parse_update(raw)
        event = evpn_wire.route_event(update.reach[0], update, False)
        got = event.pod if hasattr(event, 'pod') else (event.namespace, event.since)
        assert got == expected, variant
        withdrawn = evpn_wire.route_event(update.reach[0], update, True)
        assert getattr(withdrawn, 'pod', None) is None and getattr(withdrawn, 'namespace', None) is None


def test_the_key_ignores_labels_and_esi_as_osken_does():
    one = bytes(mac_route(1, vni=100).nlri.serialize())
    other_vni = bytes(mac_route(1, vni=200).nlri.serialize())
    assert one != other_vni and evpn_wire.route_key(one) == evpn_wire.route_key(other_vni)
    assert mac_route(1, vni=100).nlri.formatted_nlri_str == mac_route(1, vni=200).nlri.formatted_nlri_str
    assert evpn_wire.route_key(one) != evpn_wire.route_key(bytes(mac_route(2).nlri.serialize()))


def test_withdrawals_are_what_osken_sends(monkeypatch):
    client = _rr_client_peer(monkeypatch)
    nlris = [mac_route(i).nlri for i in range(3)] + [imet_route().nlri]
    wire = [bytes(n.serialize()) for n in nlris]
    for nlri, raw in zip(nlris, wire):
        path = mac_route(0).__class__(None, nlri, 1, is_withdraw=True)
        assert evpn_wire.withdrawals([raw]) == [bytes(client._construct_update(OutgoingRoute(path)).serialize())]
    (packed,) = evpn_wire.withdrawals(wire)
    message = bgp_packet.BGPMessage.parser(packed)[0]
    unreach = message.pathattr_map[bgp_packet.BGP_ATTR_TYPE_MP_UNREACH_NLRI]
    assert [n.formatted_nlri_str for n in unreach.withdrawn_routes] == [n.formatted_nlri_str for n in nlris]


def test_a_received_withdrawal_parses():
    raw = bytes(bgp_packet.BGPUpdate(path_attributes=[bgp_packet.BGPPathAttributeMpUnreachNLRI(
        25, 70, [mac_route(1).nlri, imet_route().nlri])]).serialize())
    update = evpn_wire.parse_update(raw)
    assert update.reach == [] and len(update.unreach) == 2


def test_anything_else_is_left_to_osken():
    ipv4 = bgp_packet.BGPUpdate(
        path_attributes=[bgp_packet.BGPPathAttributeOrigin(0), bgp_packet.BGPPathAttributeAsPath([]),
                         bgp_packet.BGPPathAttributeNextHop('192.0.2.1')],
        nlri=[bgp_packet.IPAddrPrefix(24, '10.0.0.0')])
    type5 = bgp_packet.EvpnIpPrefixNLRI(route_dist='1.1.1.1:1', ethernet_tag_id=0, ip_prefix='10.0.0.0/24',
                                        gw_ip_addr='0.0.0.0', vni=5,
                                        esi=bgp_packet.EvpnArbitraryEsi(b'\0' * 9))
    type5_update = bgp_packet.BGPUpdate(path_attributes=[
        bgp_packet.BGPPathAttributeMpReachNLRI(25, 70, '192.0.2.1', [type5]),
        bgp_packet.BGPPathAttributeOrigin(0), bgp_packet.BGPPathAttributeAsPath([])])
    no_origin = bgp_packet.BGPUpdate(path_attributes=[
        bgp_packet.BGPPathAttributeMpReachNLRI(25, 70, '192.0.2.1', [mac_route(1).nlri]),
        bgp_packet.BGPPathAttributeAsPath([])])
    with_originator = _sent_by_a_node([mac_route(1)], extra=[bgp_packet.BGPPathAttributeOriginatorId('1.2.3.4')])
    keepalive = bytes(bgp_packet.BGPKeepAlive().serialize())
    for message in (ipv4, type5_update, no_origin):
        assert evpn_wire.parse_update(bytes(message.serialize())) is None
    assert evpn_wire.parse_update(with_originator).attributes[evpn_wire.ORIGINATOR_ID] == (
        0x80, socket.inet_aton('1.2.3.4'))  # what a node receives from a reflector
    assert evpn_wire.parse_update(keepalive) is None
    good = _sent_by_a_node([mac_route(1)])
    mp_reach_end = 23 + 3 + good[25]
    for cut in range(24, mp_reach_end):  # cut inside MP_REACH (its NLRI): os-ken's to refuse
        broken = good[:16] + cut.to_bytes(2, 'big') + good[18:cut]
        broken = broken[:21] + (cut - 23).to_bytes(2, 'big') + broken[23:]
        assert evpn_wire.parse_update(broken) is None
