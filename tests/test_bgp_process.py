"""The BGP process: protocol functions, the client, and real BGP sessions.

The session tests run a route reflector and two node speakers, each BGP
process in its own network namespace, joined by veth pairs to a bridge in an
"underlay" namespace. Everything is created inside namespaces named with a
per-run prefix and removed even when a test fails.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types

import pytest

from speaker import bgp_process as bp
from speaker.bgp_client import BgpError, BgpProcess

ASN = 65000
HOLD = 3
BIG_VNI = 16777215  # above 65535: cannot be an RD number
SMALL_VNI = 100


# --- pure protocol functions -------------------------------------------------------

def test_importing_does_not_load_eventlet_or_os_ken():
    code = ('import sys, speaker.bgp_process, speaker.bgp_client; '
            'print(sorted(m for m in ("eventlet", "os_ken") '
            'if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == '[]'


def test_parse_command():
    command = bp.parse_command(b'{"id": 3, "op": "mac_add", "vni": 5}')
    assert command == bp.Command(3, 'mac_add', {'vni': 5})


@pytest.mark.parametrize('line, command_id, message', [
    (b'{nope', None, 'not JSON'),
    (b'[1, 2]', None, 'JSON object'),
    (b'{"op": "peers"}', None, '"id"'),
    (b'{"id": true, "op": "peers"}', None, '"id"'),
    (b'{"id": 4}', 4, '"op"'),
])
def test_parse_command_rejects(line, command_id, message):
    with pytest.raises(bp.ProtocolError, match=message) as error:
        bp.parse_command(line)
    assert error.value.command_id == command_id


def test_replies_and_lines():
    assert bp.reply_ok(1, [1]) == {'reply': 1, 'ok': True, 'result': [1]}
    assert bp.reply_error(2, 'x') == {'reply': 2, 'ok': False, 'error': 'x'}
    line = bp.encode_line({'event': 'peer', 'address': '192.0.2.1'})
    assert line.endswith(b'\n') and line.count(b'\n') == 1
    assert json.loads(line) == {'event': 'peer', 'address': '192.0.2.1'}


def test_parse_start_defaults():
    config = bp.parse_start({'router_id': '192.0.2.11', 'asn': ASN})
    assert config == bp.StartConfig(
        router_id='192.0.2.11', asn=ASN, role='speaker', cluster_id=None,
        listen_host=None, listen_port=179, hold_time=9)


def test_parse_start_reflector():
    config = bp.parse_start({
        'router_id': '192.0.2.1', 'asn': ASN, 'role': 'reflector',
        'cluster_id': '10.255.0.1', 'listen_host': '192.0.2.1',
        'listen_port': 0, 'hold_time': 3, 'keepalive': 1})
    assert config.cluster_id == '10.255.0.1'
    assert (config.listen_port, config.hold_time) == (0, 3)


@pytest.mark.parametrize('change, message', [
    ({'role': 'router'}, '"role"'),
    ({'router_id': 'fd00::1'}, 'IPv4'),
    ({'router_id': None}, 'missing "router_id"'),
    ({'asn': 70000}, '"asn"'),
    ({'asn': '65000'}, 'an int'),
    ({'hold_time': 2}, 'at least 3'),
    ({'hold_time': 9, 'keepalive': 1}, 'hold_time // 3'),
    ({'listen_host': 'node-1'}, 'IP address'),
])
def test_parse_start_rejects(change, message):
    args = {'router_id': '192.0.2.11', 'asn': ASN, **change}
    with pytest.raises(bp.ProtocolError, match=message):
        bp.parse_start(args)


def test_parse_peer():
    assert bp.parse_peer({'address': '192.0.2.1'}) == bp.PeerConfig(
        '192.0.2.1', 'both', None)
    assert bp.parse_peer({'address': '192.0.2.1', 'connect_mode': 'passive',
                          'password': 's'}).password == 's'
    with pytest.raises(bp.ProtocolError, match='connect_mode'):
        bp.parse_peer({'address': '192.0.2.1', 'connect_mode': 'Passive'})


def test_parse_mac():
    assert bp.parse_mac({'vni': BIG_VNI, 'mac': 'AA:BB:CC:00:00:01'}) == (
        BIG_VNI, 'aa:bb:cc:00:00:01', None)
    assert bp.parse_mac({'vni': 1, 'mac': '02:00:00:00:00:01',
                         'ip': 'fd00::0:1'})[2] == 'fd00::1'
    for bad in ({'vni': 0, 'mac': '02:00:00:00:00:01'},
                {'vni': BIG_VNI + 1, 'mac': '02:00:00:00:00:01'},
                {'vni': 1, 'mac': '02-00-00-00-00-01'},
                {'vni': 1, 'mac': '02:00:00:00:00:01', 'ip': '10.0.0.300'}):
        with pytest.raises(bp.ProtocolError):
            bp.parse_mac(bad)


def test_route_distinguisher_and_target():
    assert bp.route_distinguisher('192.0.2.11', 7) == '192.0.2.11:7'
    assert bp.route_target(ASN, BIG_VNI) == '65000:16777215'


def _fake_path(kind, nexthop='192.0.2.11', **nlri):
    pmsi = nlri.pop('pmsi', None)
    return types.SimpleNamespace(
        nlri=types.SimpleNamespace(ROUTE_TYPE_NAME=kind, **nlri),
        nexthop=nexthop,
        get_pattr=lambda kind: pmsi if kind == bp.PATH_ATTR_PMSI_TUNNEL
        else None)


def test_path_event_type2():
    path = _fake_path(bp.TYPE2, vni=BIG_VNI, mac_addr='02:00:00:00:00:01',
                      ip_addr=None)
    assert bp.path_event(path, False, '192.0.2.21') == {
        'event': 'mac', 'action': 'add', 'vni': BIG_VNI,
        'mac': '02:00:00:00:00:01', 'ip': None, 'vtep': '192.0.2.11', 'seq': 0}
    assert bp.path_event(path, True, None)['action'] == 'del'
    assert bp.path_event(path, False, '192.0.2.11') is None  # our own


def test_path_event_type3_reads_pmsi():
    pmsi = types.SimpleNamespace(vni=SMALL_VNI, tunnel_id=types.SimpleNamespace(
        tunnel_endpoint_ip='192.0.2.12'))
    path = _fake_path(bp.TYPE3, ip_addr='192.0.2.11', pmsi=pmsi)
    assert bp.path_event(path, False, '192.0.2.21') == {
        'event': 'flood', 'action': 'add', 'vni': SMALL_VNI,
        'vtep': '192.0.2.12'}
    no_pmsi = _fake_path(bp.TYPE3, ip_addr='192.0.2.11')
    assert bp.path_event(no_pmsi, False, None) is None
    assert bp.path_event(_fake_path('ip_prefix'), False, None) is None


def test_path_event_with_os_ken_objects_as_received():
    """The attribute names path_event reads, on objects parsed from the wire."""
    from os_ken.lib import type_desc
    from os_ken.lib.packet import bgp

    def received(nlri):
        parsed, rest = bgp.EvpnNLRI.parser(nlri.serialize())
        assert rest == b''
        return parsed

    mac = received(bgp.EvpnMacIPAdvertisementNLRI(
        route_dist='192.0.2.11:1', ethernet_tag_id=0,
        mac_addr='02:00:00:00:00:01', ip_addr='10.0.0.1', vni=BIG_VNI,
        esi=bgp.EvpnArbitraryEsi(type_desc.Int9.from_user(0))))
    imet = received(bgp.EvpnInclusiveMulticastEthernetTagNLRI(
        route_dist='192.0.2.11:1', ethernet_tag_id=0, ip_addr='192.0.2.11'))
    pmsi, _ = bgp._PathAttribute.parser(bgp.BGPPathAttributePmsiTunnel(
        pmsi_flags=0, tunnel_type=6, vni=BIG_VNI,
        tunnel_id=bgp.PmsiTunnelIdIngressReplication('192.0.2.11')
    ).serialize())
    assert pmsi.type == bp.PATH_ATTR_PMSI_TUNNEL

    def path(nlri, attrs):
        return types.SimpleNamespace(nlri=nlri, nexthop='192.0.2.11',
                                     get_pattr=attrs.get)

    assert bp.path_event(path(mac, {}), False) == {
        'event': 'mac', 'action': 'add', 'vni': BIG_VNI,
        'mac': '02:00:00:00:00:01', 'ip': '10.0.0.1', 'vtep': '192.0.2.11',
        'seq': 0}
    communities, _ = bgp._PathAttribute.parser(
        bgp.BGPPathAttributeExtendedCommunities(communities=[
            bgp.BGPEncapsulationExtendedCommunity.from_str('vxlan'),
            bgp.BGPEvpnMacMobilityExtendedCommunity(
                subtype=bgp._ExtendedCommunity.SUBTYPE_EVPN_MAC_MOBILITY,
                flags=0, sequence_number=7),
        ]).serialize())
    assert communities.type == bp.PATH_ATTR_EXTENDED_COMMUNITIES
    moved = bp.path_event(path(mac, {communities.type: communities}), False)
    assert moved['seq'] == 7
    assert bp.path_event(path(imet, {pmsi.type: pmsi}), True) == {
        'event': 'flood', 'action': 'del', 'vni': BIG_VNI,
        'vtep': '192.0.2.11'}


def test_peer_event_and_summary():
    assert bp.peer_event('192.0.2.1', False) == {
        'event': 'peer', 'address': '192.0.2.1', 'state': 'down'}
    up = bp.peer_summary('192.0.2.1', 'Established', 100.0, 3, 2, 5, 4,
                         now=112.5)
    assert up == {'address': '192.0.2.1', 'state': 'Established',
                  'uptime': 12.5, 'received': 3, 'sent': 2,
                  'updates_received': 5, 'updates_sent': 4}
    down = bp.peer_summary('192.0.2.1', 'Active', 0, 3, 2, 5, 4, now=1.0)
    assert (down['uptime'], down['received'], down['sent']) == (None, 0, 0)


# --- the client, against processes that are not BGP speakers ---------------------

def test_client_fails_pending_calls_when_the_process_dies():
    bgp = BgpProcess(argv_prefix=['sh', '-c', 'sleep 0.5; exit 3', 'sh'])
    started = time.monotonic()
    with pytest.raises(BgpError, match='exited with code 3'):
        bgp.call('peers', timeout=10)
    assert time.monotonic() - started < 3
    with pytest.raises(BgpError, match='exited'):
        bgp.call('peers')
    bgp.close()


def test_process_errors_and_stop():
    events = []
    with BgpProcess(on_event=events.append) as bgp:
        with pytest.raises(BgpError, match='not started'):
            bgp.call('peers')
        with pytest.raises(BgpError, match='unknown op'):
            bgp.call('fly')
        with pytest.raises(BgpError, match='"asn"'):
            bgp.call('start', router_id='192.0.2.11')
        with pytest.raises(BgpError, match=r'hold_time // 3'):
            bgp.call('start', router_id='192.0.2.11', asn=ASN, keepalive=2)
        # No listening: nothing is created in this (root) namespace.
        assert bgp.call('start', router_id='192.0.2.11', asn=ASN,
                        listen_port=0) is None
        with pytest.raises(BgpError, match='already started'):
            bgp.call('start', router_id='192.0.2.11', asn=ASN, listen_port=0)
        with pytest.raises(BgpError, match='vni 5 was not added'):
            bgp.call('mac_add', vni=5, mac='02:00:00:00:00:01')
        assert bgp.call('vni_add', vni=5, rd_index=1) is True
        assert bgp.call('vni_add', vni=5, rd_index=1) is False
        with pytest.raises(BgpError, match='rd_index 1 is used by vni 5'):
            bgp.call('vni_add', vni=6, rd_index=1)
        assert bgp.call_many('mac_add', [
            {'vni': 5, 'mac': '02:00:00:00:00:%02x' % i} for i in range(3)
        ]) == [True, True, True]
        assert bgp.call('mac_del', vni=5, mac='02:00:00:00:00:09') is False
        assert bgp.call('rib') == []  # own routes are not reported
        assert bgp.call('peers') == []
        assert bgp.call('vni_del', vni=5) is True
        assert bgp.call('stop') is None
        assert bgp.wait(5) == 0
    assert events == []


def test_process_exits_when_its_agent_is_gone():
    """Replies to a closed stdout are dropped; end of stdin stops it."""
    process = subprocess.Popen(
        [sys.executable, '-m', 'speaker.bgp_process'], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        process.stdin.write(b'{"id": 1, "op": "start", "asn": 65000, '
                            b'"router_id": "192.0.2.11", "listen_port": 0}\n')
        process.stdin.flush()
        assert json.loads(process.stdout.readline())['event'] == 'ready'
        assert json.loads(process.stdout.readline())['ok'] is True
        process.stdout.close()
        process.stdin.write(b'{"id": 2, "op": "peers"}\n' * 3)  # -> EPIPE
        process.stdin.flush()
        time.sleep(0.2)
        process.stdin.close()
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()


# --- real sessions ------------------------------------------------------------------

PREFIX = 'mgb%d' % (os.getpid() % 100000)
UNDERLAY = PREFIX + 'u'
NODES = {'rr': '192.0.2.1', 'a': '192.0.2.11', 'b': '192.0.2.21'}
RR, A, B = NODES['rr'], NODES['a'], NODES['b']


def _ip(*args):
    subprocess.run(['ip', *args], check=True, capture_output=True)


def _delete_namespaces():
    for ns in [UNDERLAY] + [PREFIX + name for name in NODES]:
        subprocess.run(['ip', 'netns', 'del', ns], capture_output=True)


@pytest.fixture(scope='module')
def underlay():
    """Namespaces rr, a, b on one bridge (in the underlay namespace)."""
    if os.geteuid() != 0:
        pytest.skip('needs root for network namespaces')
    _delete_namespaces()
    try:
        _ip('netns', 'add', UNDERLAY)
        bridge = PREFIX + 'br'
        _ip('-n', UNDERLAY, 'link', 'add', bridge, 'type', 'bridge')
        _ip('-n', UNDERLAY, 'link', 'set', bridge, 'up')
        for name, address in NODES.items():
            ns, outer, inner = PREFIX + name, PREFIX + name + '0', \
                PREFIX + name + '1'
            _ip('netns', 'add', ns)
            _ip('-n', ns, 'link', 'set', 'lo', 'up')
            _ip('-n', UNDERLAY, 'link', 'add', outer, 'type', 'veth',
                'peer', 'name', inner, 'netns', ns)
            _ip('-n', UNDERLAY, 'link', 'set', outer, 'master', bridge, 'up')
            _ip('-n', ns, 'addr', 'add', address + '/24', 'dev', inner)
            _ip('-n', ns, 'link', 'set', inner, 'up')
        yield
    finally:
        _delete_namespaces()


class Events:
    """Events of one BGP process, waited on from the test thread."""

    def __init__(self):
        self._items = []
        self._changed = threading.Condition()

    def __call__(self, event):
        with self._changed:
            self._items.append(event)
            self._changed.notify_all()

    def all(self):
        with self._changed:
            return list(self._items)

    def clear(self):
        with self._changed:
            self._items.clear()

    def wait_for(self, *wanted, timeout=10):
        """Wait until every ``wanted`` event (a dict subset) has arrived."""
        def missing():
            return [w for w in wanted
                    if not any(w.items() <= e.items() for e in self._items)]
        with self._changed:
            if not self._changed.wait_for(lambda: not missing(), timeout):
                raise AssertionError('missing %s\nafter %s'
                                     % (missing(), self._items))


class Node:
    """One BGP process in its namespace, with its events."""

    def __init__(self, name):
        self.name = name
        self.address = NODES[name]
        self.events = Events()
        self.bgp = BgpProcess(on_event=self.events, name=name, argv_prefix=[
            'ip', 'netns', 'exec', PREFIX + name])

    def call(self, op, **args):
        return self.bgp.call(op, **args)

    def start_speaker(self, password=None):
        """Start as a node speaker, passive towards the reflector."""
        self.call('start', router_id=self.address, asn=ASN, role='speaker',
                  listen_host=self.address, hold_time=HOLD, keepalive=1)
        self.call('peer_add', address=RR, connect_mode='passive',
                  password=password)


PEER_UP = {'event': 'peer', 'state': 'up'}


@pytest.fixture
def cluster(underlay):
    """A reflector (dials out) and speakers a and b (passive), Established.

    The a <-> reflector session uses a TCP MD5 password.
    """
    nodes = {name: Node(name) for name in NODES}  # processes start at once
    rr, a, b = nodes['rr'], nodes['a'], nodes['b']
    try:
        rr.call('start', router_id=RR, asn=ASN, role='reflector',
                cluster_id='10.255.0.1', listen_host=RR, hold_time=HOLD,
                keepalive=1, connect_retry=1)
        a.start_speaker(password='megalos')
        b.start_speaker()
        rr.call('peer_add', address=A, connect_mode='active',
                password='megalos')
        rr.call('peer_add', address=B, connect_mode='active')
        rr.events.wait_for({**PEER_UP, 'address': A},
                           {**PEER_UP, 'address': B})
        a.events.wait_for({**PEER_UP, 'address': RR})
        b.events.wait_for({**PEER_UP, 'address': RR})
        yield nodes
    finally:
        closing = [threading.Thread(target=node.bgp.close)
                   for node in nodes.values()]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join()


def mac(i):
    return '02:00:00:00:00:%02x' % i


def mac_event(action, vni, i, vtep, ip=None, seq=0):
    return {'event': 'mac', 'action': action, 'vni': vni, 'mac': mac(i),
            'ip': ip, 'vtep': vtep, 'seq': seq}


def flood_event(action, vni, vtep):
    return {'event': 'flood', 'action': action, 'vni': vni, 'vtep': vtep}


def routes_of(node, vtep):
    return [e for e in node.events.all()
            if e['event'] in ('mac', 'flood') and e['vtep'] == vtep]


def by_json(events):
    return sorted(events, key=json.dumps)


@pytest.mark.root
def test_routes_propagate_through_the_reflector(cluster):
    rr, a, b = cluster['rr'], cluster['a'], cluster['b']
    assert a.call('vni_add', vni=BIG_VNI, rd_index=1) is True
    assert a.call('vni_add', vni=SMALL_VNI, rd_index=2) is True
    assert b.call('vni_add', vni=BIG_VNI, rd_index=1) is True
    assert a.bgp.call_many('mac_add', [
        {'vni': BIG_VNI, 'mac': mac(1), 'ip': '10.0.0.1'},
        {'vni': BIG_VNI, 'mac': mac(2)}]) == [True, True]
    assert a.call('mac_add', vni=BIG_VNI, mac=mac(2)) is False  # no-op
    assert a.call('mac_add', vni=SMALL_VNI, mac=mac(3)) is True
    from_a = [flood_event('add', BIG_VNI, A), flood_event('add', SMALL_VNI, A),
              mac_event('add', BIG_VNI, 1, A, ip='10.0.0.1'),
              mac_event('add', BIG_VNI, 2, A),
              mac_event('add', SMALL_VNI, 3, A)]
    from_b = [flood_event('add', BIG_VNI, B)]
    b.events.wait_for(*from_a)
    a.events.wait_for(*from_b)
    # The reflector reports every route it reflects.
    rr.events.wait_for(*from_a, *from_b)
    # Nobody hears about its own routes.
    assert routes_of(a, A) == [] and routes_of(b, B) == []

    # rib: the best routes learned from peers, as "add" events.
    assert by_json(b.call('rib')) == by_json(from_a)
    assert by_json(rr.call('rib')) == by_json(from_a + from_b)
    assert a.call('rib') == from_b
    with pytest.raises(BgpError, match='reflector originates no routes'):
        rr.call('vni_add', vni=SMALL_VNI, rd_index=1)

    peers = rr.call('peers')
    assert [p['address'] for p in peers] == [A, B]
    for peer in peers:
        assert set(peer) == {'address', 'state', 'uptime', 'received',
                             'sent', 'updates_received', 'updates_sent'}
        assert peer['state'] == 'Established'
        assert 0 < peer['uptime'] < 60
    from_peer = {p['address']: p for p in peers}
    assert (from_peer[A]['received'], from_peer[A]['sent']) == (5, 1)
    assert (from_peer[B]['received'], from_peer[B]['sent']) == (1, 5)
    # Packed: MACs 1 and 2 (sent together, equal attributes) share an UPDATE.
    assert from_peer[A]['updates_received'] < 5
    [to_rr] = b.call('peers')
    assert (to_rr['address'], to_rr['received'], to_rr['sent']) == (RR, 5, 1)

    assert a.call('mac_del', vni=BIG_VNI, mac=mac(1), ip='10.0.0.1') is True
    b.events.wait_for(mac_event('del', BIG_VNI, 1, A, ip='10.0.0.1'))
    rr.events.wait_for(mac_event('del', BIG_VNI, 1, A, ip='10.0.0.1'))
    assert a.call('mac_del', vni=BIG_VNI, mac=mac(1), ip='10.0.0.1') is False


@pytest.mark.root

def test_mac_mobility_sequence_number_reaches_the_other_side(cluster):
    a, b = cluster['a'], cluster['b']
    assert a.call('vni_add', vni=SMALL_VNI, rd_index=7) is True
    assert a.call('mac_add', vni=SMALL_VNI, mac=mac(9)) is True
    b.events.wait_for(mac_event('add', SMALL_VNI, 9, A))
    # Announcing again with a sequence number re-announces the route with it.
    assert a.call('mac_add', vni=SMALL_VNI, mac=mac(9), seq=3) is True
    assert a.call('mac_add', vni=SMALL_VNI, mac=mac(9), seq=3) is False
    b.events.wait_for(mac_event('add', SMALL_VNI, 9, A, seq=3))

def test_vni_del_withdraws_all_its_routes(cluster):
    a, b = cluster['a'], cluster['b']
    a.call('vni_add', vni=BIG_VNI, rd_index=1)
    a.call('vni_add', vni=SMALL_VNI, rd_index=2)
    a.bgp.call_many('mac_add', [{'vni': BIG_VNI, 'mac': mac(i)}
                                for i in range(3)])
    b.events.wait_for(flood_event('add', SMALL_VNI, A),
                      *[mac_event('add', BIG_VNI, i, A) for i in range(3)])
    assert a.call('vni_del', vni=BIG_VNI) is True
    b.events.wait_for(flood_event('del', BIG_VNI, A),
                      *[mac_event('del', BIG_VNI, i, A) for i in range(3)])
    assert b.call('rib') == [flood_event('add', SMALL_VNI, A)]
    assert a.call('vni_del', vni=BIG_VNI) is False
    with pytest.raises(BgpError, match='not added'):
        a.call('mac_add', vni=BIG_VNI, mac=mac(1))


@pytest.mark.root
def test_peer_del_on_reflector_withdraws_that_peers_routes(cluster):
    rr, a, b = cluster['rr'], cluster['a'], cluster['b']
    a.call('vni_add', vni=BIG_VNI, rd_index=1)
    a.call('mac_add', vni=BIG_VNI, mac=mac(1))
    b.call('vni_add', vni=BIG_VNI, rd_index=1)
    b.events.wait_for(flood_event('add', BIG_VNI, A),
                      mac_event('add', BIG_VNI, 1, A))
    rr.events.wait_for(flood_event('add', BIG_VNI, B))
    assert rr.call('peer_del', address=A) is True  # the MD5 peer
    b.events.wait_for(flood_event('del', BIG_VNI, A),
                      mac_event('del', BIG_VNI, 1, A))
    rr.events.wait_for({'event': 'peer', 'address': A, 'state': 'down'},
                       mac_event('del', BIG_VNI, 1, A))
    a.events.wait_for({'event': 'peer', 'address': RR, 'state': 'down'})
    assert [p['address'] for p in rr.call('peers')] == [B]
    assert rr.call('rib') == [flood_event('add', BIG_VNI, B)]
    assert rr.call('peer_del', address=A) is False


def _originate(node):
    node.call('vni_add', vni=BIG_VNI, rd_index=1)
    node.call('mac_add', vni=BIG_VNI, mac=mac(1))


@pytest.mark.root
def test_killed_speaker_is_withdrawn_and_comes_back(cluster):
    rr, b = cluster['rr'], cluster['b']
    _originate(cluster['a'])
    learned = [mac_event('add', BIG_VNI, 1, A), flood_event('add', BIG_VNI, A)]
    b.events.wait_for(*learned)
    cluster['a'].bgp.kill()  # the kernel closes its TCP session at once
    started = time.monotonic()
    b.events.wait_for(mac_event('del', BIG_VNI, 1, A),
                      flood_event('del', BIG_VNI, A), timeout=HOLD)
    assert time.monotonic() - started < HOLD
    rr.events.wait_for({'event': 'peer', 'address': A, 'state': 'down'})

    # A new process on the node: the reflector dials it again by itself.
    b.events.clear()
    a = cluster['a'] = Node('a')
    a.start_speaker(password='megalos')
    a.events.wait_for({**PEER_UP, 'address': RR})
    _originate(a)
    b.events.wait_for(*learned)


@pytest.mark.root
def test_silent_speaker_is_withdrawn_after_the_hold_time(cluster):
    _originate(cluster['a'])
    b = cluster['b']
    b.events.wait_for(mac_event('add', BIG_VNI, 1, A))
    os.kill(cluster['a'].bgp.pid, signal.SIGSTOP)  # no FIN, no keepalives
    try:
        started = time.monotonic()
        b.events.wait_for(mac_event('del', BIG_VNI, 1, A),
                          flood_event('del', BIG_VNI, A), timeout=HOLD + 4)
        # The last keepalive came up to 1 s before the stop: expiry after
        # 2..3 s, then the withdrawal travels through the reflector.
        elapsed = time.monotonic() - started
        assert HOLD - 1.5 < elapsed < HOLD + 3
    finally:
        cluster['a'].bgp.kill()
