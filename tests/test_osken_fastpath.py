"""bgp.osken_fastpath.WireTable's table with stand-in peers: who gets what, and when.

The same behaviour on real sessions, against os-ken's own path: test_wire_reflection.py."""
from __future__ import annotations

from os_ken.lib.packet import bgp as bgp_packet

from bgp import evpn_wire, osken_fastpath
from bgp.osken_fastpath import WireTable
from test_osken_compat import mac_route

CLUSTER = "10.255.0.1"


class FakePeer:
    def __init__(self, address: str, established: bool = True):
        self.ip_address = address
        self.version_num = 1
        self.established = established
        self.queued: list[bytes] = []
        self.counts: dict[str, int] = {}
        self.state = self

    def incr(self, name, by=1):
        self.counts[name] = self.counts.get(name, 0) + by

    def in_established(self):
        return self.established

    def is_mpbgp_cap_valid(self, family):
        return True

    def enque_outgoing_msg(self, message):
        self.queued.append(message.serialize())

    def taken(self) -> list[tuple[str, list[str]]]:
        """('reach'|'unreach', [route prefixes]) of each queued UPDATE; clears the queue."""
        found = []
        for raw in self.queued:
            attrs = bgp_packet.BGPMessage.parser(raw)[0].pathattr_map
            reach = attrs.get(bgp_packet.BGP_ATTR_TYPE_MP_REACH_NLRI)
            nlris = reach.nlri if reach else attrs[bgp_packet.BGP_ATTR_TYPE_MP_UNREACH_NLRI].withdrawn_routes
            found.append(("reach" if reach else "unreach", [n.prefix for n in nlris]))
        self.queued.clear()
        return found


def _update(indexes, withdraw=False, clusters=(), originator=None):
    nlris = [mac_route(i).nlri for i in indexes]
    if withdraw:
        attrs = [bgp_packet.BGPPathAttributeMpUnreachNLRI(25, 70, nlris)]
    else:
        path = mac_route(indexes[0])
        attrs = [bgp_packet.BGPPathAttributeMpReachNLRI(25, 70, path.nexthop, nlris),
                 *path.pathattr_map.values()]
        if clusters:
            attrs.append(bgp_packet.BGPPathAttributeClusterList(list(clusters)))
        if originator:
            attrs.append(bgp_packet.BGPPathAttributeOriginatorId(originator))
    return bytes(bgp_packet.BGPUpdate(path_attributes=attrs).serialize())


def _prefixes(indexes):
    return [mac_route(i).nlri.prefix for i in indexes]


def _table(*peers, router_id="192.0.2.1", reflect=True):
    events = []
    return WireTable(events.append, router_id, CLUSTER, 100, lambda: peers, reflect), events


def test_a_client_update_goes_once_to_every_other_established_client():
    a, b, c, down = FakePeer("192.0.2.11"), FakePeer("192.0.2.12"), FakePeer("192.0.2.13"), \
        FakePeer("192.0.2.14", established=False)
    table, events = _table(a, b, c, down)
    assert table.receive(a, _update([1, 2, 3]))
    assert b.taken() == c.taken() == [("reach", _prefixes([1, 2, 3]))]
    assert a.queued == down.queued == []
    assert [e.action for e in events] == ["add"] * 3
    assert a.counts == {"recv_updates": 1, "recv_prefixes": 3}
    assert table.received == {"192.0.2.11": 3} and table.sent_to("192.0.2.12") == 3
    assert table.receive(a, _update([2], withdraw=True))
    assert b.taken() == [("unreach", _prefixes([2]))]
    assert events[-1].action == "del" and events[-1].mac == mac_route(2).nlri.mac_addr
    assert table.receive(a, _update([9], withdraw=True))  # unknown: nothing to send
    assert b.queued == [] and len(events) == 4


def test_our_cluster_id_in_the_cluster_list_is_a_loop():
    a, b = FakePeer("192.0.2.11"), FakePeer("192.0.2.12")
    table, events = _table(a, b)
    assert table.receive(a, _update([1], clusters=["10.9.9.9", CLUSTER]))
    assert b.queued == events == [] and table.best == {}


def test_two_clients_with_one_route_the_other_takes_over():
    a, b, c = FakePeer("192.0.2.12"), FakePeer("192.0.2.11"), FakePeer("192.0.2.13")
    table, events = _table(a, b, c)
    table.receive(a, _update([1]))
    table.receive(b, _update([1]))  # lower address: the better one
    assert c.taken() == [("reach", _prefixes([1]))] * 2 and a.taken() == [("reach", _prefixes([1]))]
    assert table.received == {"192.0.2.12": 1, "192.0.2.11": 1}
    b.queued.clear()
    table.receive(b, _update([1], withdraw=True))  # a's announcement is back in force
    assert c.taken() == [("reach", _prefixes([1]))] and b.taken() == [("reach", _prefixes([1]))]
    assert table.best[evpn_wire.route_key(bytes(mac_route(1).nlri.serialize()))].source is a
    table.receive(a, _update([1], withdraw=True))
    assert c.taken() == [("unreach", _prefixes([1]))] and table.best == {} and table.others == {}
    assert [e.action for e in events] == ["add", "add", "add", "del"]


def test_stale_routes_go_and_those_announced_again_stay():
    a, b = FakePeer("192.0.2.11"), FakePeer("192.0.2.12")
    table, events = _table(a, b)
    table.receive(a, _update([1, 2, 3]))
    a.version_num += 1             # the session went down and came back (os-ken bumps it)
    table.receive(a, _update([2]))  # announced again in the new session
    b.queued.clear()
    table.clean_stale(a)
    assert b.taken() == [("unreach", _prefixes([1, 3]))]
    assert [bytes(r.nlri) for r in table.best.values()] == [bytes(mac_route(2).nlri.serialize())]


def test_the_table_for_a_new_peer_leaves_out_its_own_routes():
    a, b, c = FakePeer("192.0.2.11"), FakePeer("192.0.2.12"), FakePeer("192.0.2.13", established=False)
    table, _ = _table(a, b, c)
    table.receive(a, _update([1, 2]))
    table.receive(b, _update([5]))
    a.queued.clear()
    table.send_table(c)
    assert sorted(c.taken()) == [("reach", _prefixes([1, 2])), ("reach", _prefixes([5]))]
    table.send_table(a)
    assert a.taken() == [("reach", _prefixes([5]))]


def test_a_reflector_leaves_an_update_with_an_originator_id_to_osken():
    a, b = FakePeer("192.0.2.11"), FakePeer("192.0.2.12")
    table, events = _table(a, b)
    assert not table.receive(a, _update([1], originator="10.1.1.1"))
    assert b.queued == events == [] and a.counts == {}


def test_a_node_reports_and_sends_nothing():
    rr1, rr2 = FakePeer("192.0.2.1"), FakePeer("192.0.2.2")
    node, events = _table(rr1, rr2, router_id="192.0.2.50", reflect=False)
    assert node.receive(rr1, _update([1, 2], originator="192.0.2.11", clusters=["10.0.0.1"]))
    assert node.receive(rr2, _update([1], originator="192.0.2.11", clusters=["10.0.0.1"]))
    assert rr1.queued == rr2.queued == []
    assert [(e.action, e.vtep) for e in events] == [("add", "192.0.2.11")] * 2
    assert node.sent_to("192.0.2.1") == 0 and node.received == {"192.0.2.1": 2, "192.0.2.2": 1}
    node.receive(rr1, _update([1], withdraw=True))  # still announced by the other reflector
    assert len(events) == 3 and events[-1].action == "add"
    node.receive(rr2, _update([1], withdraw=True))
    assert events[-1].action == "del" and len(node.events()) == 1


def test_a_node_drops_its_own_routes_coming_back():
    rr = FakePeer("192.0.2.1")
    node, events = _table(rr, router_id=mac_route(1).nexthop, reflect=False)  # our next hop
    assert node.receive(rr, _update([1]))
    node2, events2 = _table(rr, router_id="192.0.2.50", reflect=False)
    assert node2.receive(rr, _update([1], originator="192.0.2.50"))  # FRR reflects it back
    assert events == events2 == [] and node.best == node2.best == {}


class FakeProtocol:
    """What ``_data_received_wire`` and upstream's ``_data_received`` use of a BgpProtocol."""

    def __init__(self, peer):
        self._recv_buff = b""
        self._peer = peer
        self._expiry = None
        self.handled = []  # message types os-ken handled

    def pause(self, seconds):
        pass

    def _handle_msg(self, msg):
        self.handled.append(msg.type)


def test_every_update_of_a_read_is_offered_to_the_wire_path(monkeypatch):
    """A read holds whatever the socket had: keepalives between UPDATEs must not carry the
    UPDATEs after them into os-ken (whose RIB does not hold these routes)."""
    rr, other = FakePeer("192.0.2.1"), FakePeer("192.0.2.9")
    node, events = _table(rr, other, router_id="192.0.2.50", reflect=False)
    monkeypatch.setitem(osken_fastpath._tables, "on", node)
    keepalive = bytes(bgp_packet.BGPKeepAlive().serialize())
    stream = keepalive + _update([1, 2]) + keepalive + _update([1], withdraw=True) + _update([3])
    for size in (len(stream), 1, 19, 100):
        protocol = FakeProtocol(rr)
        node.best.clear()
        events.clear()
        for at in range(0, len(stream), size):
            osken_fastpath._data_received_wire(protocol, stream[at:at + size])
        assert protocol.handled == [bgp_packet.BGP_MSG_KEEPALIVE] * 2 and protocol._recv_buff == b""
        assert [(e.action, e.mac[-2:]) for e in events] == [
            ("add", "01"), ("add", "02"), ("del", "01"), ("add", "03")]


def test_attribute_maps_are_copied_as_upstream_copies_them():
    from collections import OrderedDict
    from copy import copy as upstream_copy

    from os_ken.services.protocols.bgp.info_base import base as path_base

    osken_fastpath.apply_both_roles()
    osken_fastpath.apply_both_roles()  # idempotent
    assert path_base.copy is osken_fastpath._copy_attribute_map
    path = mac_route(1)
    attrs = path.pathattr_map  # goes through the patched copy
    assert type(attrs) is type(path._path_attr_map) and attrs == path._path_attr_map
    assert attrs is not path._path_attr_map and list(attrs) == list(path._path_attr_map)
    for value in (OrderedDict([(2, 'b'), (1, 'a')]), {1: 2}, [1, 2], {1, 2}):
        ours, theirs = osken_fastpath._copy_attribute_map(value), upstream_copy(value)
        assert type(ours) is type(theirs) and ours == theirs and ours is not value
        if isinstance(value, dict):
            assert list(ours) == list(theirs)
