"""The BGP package: the protocol and the event translation with plain values, the client, the
process, and real BGP sessions.

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

from bgp import events
from bgp.client import BgpError, BgpProcess
from bgp.protocol import (ADD, DEL, MAX_SEQ, MacAdd, MacDel, MacRoute, Originated, OriginatedRoutes,
                          PeerAdd, PeerDel, Peers, PeerState, PeerSummary, ProtocolError, Ready,
                          Reply, Rib, Start, Stop, VtepAdd, VtepDel, VtepRoute, decode_command,
                          decode_event, decode_route_line, encode_commands, encode_event,
                          event_json, is_route_line, route_distinguisher, route_target)

ASN = 65000
HOLD = 3
BIG_VNI = 16777215  # above 65535: cannot be an RD number
SMALL_VNI = 100


# --- the protocol, with plain values ------------------------------------------------------

def test_importing_the_agent_side_does_not_load_eventlet_or_os_ken():
    code = ('import sys, bgp.process, bgp.client, bgp.protocol, bgp.events, bgp.service; '
            'print(sorted(m for m in ("eventlet", "os_ken") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == '[]'


def test_commands_round_trip_through_their_lines():
    commands = [Start(router_id='192.0.2.11', asn=ASN), PeerAdd('192.0.2.1', 'passive', 'pw'),
                PeerDel('192.0.2.1'), VtepAdd(BIG_VNI, 1), VtepDel(BIG_VNI),
                MacAdd(BIG_VNI, '02:00:00:00:00:01', '10.0.0.1', 7), MacDel(1, '02:00:00:00:00:01'),
                Peers(), Rib(), Stop(), VtepAdd(7, 2, 'lab-a', 1700000000000), VtepAdd(8, 3, '', 5),
                MacAdd(7, '02:00:00:00:00:02', pod='0123456789ab')]
    lines = encode_commands(enumerate(commands, 1)).splitlines()
    assert [decode_command(line) for line in lines] == list(enumerate(commands, 1))
    assert json.loads(lines[5]) == {'id': 6, 'op': 'mac_add', 'vni': BIG_VNI,
                                    'mac': '02:00:00:00:00:01', 'ip': '10.0.0.1', 'seq': 7,
                                    'pod': None}
    assert json.loads(lines[10])['namespace'] == 'lab-a' and commands[10].claim.since == 1700000000000
    assert commands[11].claim.namespace == '' and commands[3].claim is None


@pytest.mark.parametrize('line, command_id, message', [
    (b'{nope', None, 'not JSON'),
    (b'[1, 2]', None, 'JSON object'),
    (b'{"op": "peers"}', None, '"id"'),
    (b'{"id": true, "op": "peers"}', None, '"id"'),
    (b'{"id": 4}', 4, '"op"'),
    (b'{"id": 5, "op": "fly"}', 5, 'unknown op'),
    (b'{"id": 6, "op": "mac_add", "vni": 1}', 6, 'missing "mac"'),
    (b'{"id": 7, "op": "vtep_add", "vni": 1, "rd_index": 1, "namespace": "Lab"}', 7, 'namespace'),
    (b'{"id": 8, "op": "vtep_add", "vni": 1, "rd_index": 1, "namespace": "lab"}', 8, 'since'),
    (b'{"id": 9, "op": "vtep_add", "vni": 1, "rd_index": 1, "namespace": "lab", "since": -1}', 9,
     'since'),
    (b'{"id": 10, "op": "mac_add", "vni": 1, "mac": "02:00:00:00:00:01", "pod": "xyz"}', 10, 'pod'),
])
def test_decode_command_rejects(line, command_id, message):
    with pytest.raises(ProtocolError, match=message) as error:
        decode_command(line)
    assert error.value.command_id == command_id


def test_replies_are_lines():
    assert json.loads(Reply(1, True, [1]).encode()) == {'reply': 1, 'ok': True, 'result': [1]}
    line = Reply(2, False, error='x').encode()
    assert line.endswith(b'\n') and line.count(b'\n') == 1
    assert json.loads(line) == {'reply': 2, 'ok': False, 'error': 'x'}


def test_start_defaults():
    assert Start.decode({'router_id': '192.0.2.11', 'asn': ASN}) == Start(
        router_id='192.0.2.11', asn=ASN, role='speaker', cluster_id=None,
        listen_host=None, listen_port=179, hold_time=9)


def test_start_reflector():
    config = Start.decode({
        'router_id': '192.0.2.1', 'asn': ASN, 'role': 'reflector',
        'cluster_id': '10.255.0.1', 'listen_host': '192.0.2.1',
        'listen_port': 0, 'hold_time': 3, 'keepalive': 1})
    assert config.cluster_id == '10.255.0.1'
    assert (config.listen_port, config.hold_time) == (0, 3)
    speaker = Start.decode({'router_id': '192.0.2.1', 'asn': ASN, 'cluster_id': '10.255.0.1'})
    assert speaker.cluster_id is None  # a speaker has no cluster id


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
def test_start_rejects(change, message):
    args = {'router_id': '192.0.2.11', 'asn': ASN, **change}
    with pytest.raises(ProtocolError, match=message):
        Start.decode(args)


def test_peer_add():
    assert PeerAdd.decode({'address': '192.0.2.1'}) == PeerAdd('192.0.2.1', 'both', None)
    assert PeerAdd.decode({'address': '192.0.2.1', 'connect_mode': 'passive',
                           'password': 's'}).password == 's'
    with pytest.raises(ProtocolError, match='connect_mode'):
        PeerAdd.decode({'address': '192.0.2.1', 'connect_mode': 'Passive'})


def test_mac_commands_normalise_and_check():
    assert MacAdd.decode({'vni': BIG_VNI, 'mac': 'AA-BB-CC-00-00-01'}) == MacAdd(
        BIG_VNI, 'aa:bb:cc:00:00:01')
    assert MacDel.decode({'vni': 1, 'mac': '02:00:00:00:00:01', 'ip': 'fd00::0:1'}).ip == 'fd00::1'
    for bad in ({'vni': 0, 'mac': '02:00:00:00:00:01'},
                {'vni': BIG_VNI + 1, 'mac': '02:00:00:00:00:01'},
                {'vni': True, 'mac': '02:00:00:00:00:01'},
                {'vni': 1, 'mac': '02:00:00:00:01'},
                {'vni': 1, 'mac': '02:00:00:00:00:01', 'ip': '10.0.0.300'},
                {'vni': 1, 'mac': '02:00:00:00:00:01', 'seq': 2**32}):
        with pytest.raises(ProtocolError):
            MacAdd.decode(bad)


def test_events_round_trip_and_malformed_ones_are_refused():
    events = [MacRoute(ADD, BIG_VNI, '02:00:00:00:00:01', '192.0.2.11', '10.0.0.1', 3),
              VtepRoute(DEL, 1, 'fd00::1'), PeerState('192.0.2.1', True), Ready(42)]
    for event in events:
        line = encode_event(event)
        if is_route_line(line):   # route events are tab-separated fields, the rest JSON
            assert decode_route_line(line) == event == decode_event(event_json(event))
        else:
            assert decode_event(json.loads(line)) == event
    for bad in ({'event': 'mac', 'action': 'add', 'vni': 1, 'vtep': '192.0.2.1'},
                {'event': 'mac', 'action': 'add', 'vni': None, 'mac': '02:00:00:00:00:01',
                 'vtep': '192.0.2.1'},
                {'event': 'vtep', 'action': 'add', 'vni': 1, 'vtep': ''},
                {'event': 'vtep', 'action': 'maybe', 'vni': 1, 'vtep': '192.0.2.1'},
                {'event': 'peer', 'address': '192.0.2.1', 'up': 'yes'},
                {'event': 'flood'}, {}):
        with pytest.raises(ProtocolError):
            decode_event(bad)


def test_route_event_lines_are_checked_as_json_events_are():
    events = [MacRoute(ADD, 7, '02:00:00:00:00:01', 'fd00::1', None, 0, '0123456789ab'),
              VtepRoute(ADD, 7, '192.0.2.1', 'kathara-lab', 1_700_000_000_000), VtepRoute(DEL, 7, '192.0.2.1'),
              VtepRoute(ADD, 7, '192.0.2.1', '', 1_700_000_000_000)]  # the unnamed namespace's claim
    assert [decode_route_line(encode_event(e)) for e in events] == events
    assert encode_event(events[2]) == b'V\tdel\t7\t192.0.2.1\t\t0\n'
    assert encode_event(events[3]) == b'V\tadd\t7\t192.0.2.1\t=\t1700000000000\n'
    for bad in (b'M\tadd\t7\t02:00:00:00:00:01\t192.0.2.1\t\t0\n',        # a field missing
                b'M\tadd\t0\t02:00:00:00:00:01\t192.0.2.1\t\t0\t\n',      # VNI 0
                b'M\tadd\t-7\t02:00:00:00:00:01\t192.0.2.1\t\t0\t\n',
                b'M\tadd\t7\t02:00:00:00:00:01\t192.0.2.1\t\t\xd9\xa3\t\n',  # not ASCII
                b'M\tadd\t7\t02:00:00:00:00:01\t192.0.2.1\t\t 1\t\n',
                b'M\tadd\t7\tnot a mac\t192.0.2.1\t\t0\t\n',
                b'V\tmaybe\t7\t192.0.2.1\t\t0\n', b'V\tadd\t7\t\t\t0\n', b'X\tadd\n', b'\n',
                b'V\tadd\t7\t192.0.2.1\tlab\t1\n',                   # a namespace without its "="
                b'V\tadd\t7\t192.0.2.1\t=Lab!\t1\n'):
        with pytest.raises(ProtocolError):
            decode_route_line(bad)


def test_route_distinguisher_and_target():
    assert route_distinguisher('192.0.2.11', 7) == '192.0.2.11:7'
    assert route_target(ASN, BIG_VNI) == '65000:16777215'


def _fake_path(kind, nexthop='192.0.2.11', **nlri):
    pmsi = nlri.pop('pmsi', None)
    return types.SimpleNamespace(
        nlri=types.SimpleNamespace(ROUTE_TYPE_NAME=kind, **nlri),
        nexthop=nexthop,
        get_pattr=lambda kind: pmsi if kind == events.PATH_ATTR_PMSI_TUNNEL else None)


def test_route_event_type2():
    path = _fake_path(events.TYPE2, vni=BIG_VNI, mac_addr='02:00:00:00:00:01', ip_addr=None)
    assert events.route_event(path, False, '192.0.2.21') == MacRoute(
        ADD, BIG_VNI, '02:00:00:00:00:01', '192.0.2.11', None, 0)
    assert events.route_event(path, True, None).action == DEL
    assert events.route_event(path, False, '192.0.2.11') is None  # our own


def test_route_event_type3_reads_pmsi():
    pmsi = types.SimpleNamespace(vni=SMALL_VNI, tunnel_id=types.SimpleNamespace(
        tunnel_endpoint_ip='192.0.2.12'))
    path = _fake_path(events.TYPE3, ip_addr='192.0.2.11', pmsi=pmsi)
    assert events.route_event(path, False, '192.0.2.21') == VtepRoute(ADD, SMALL_VNI, '192.0.2.12')
    no_pmsi = _fake_path(events.TYPE3, ip_addr='192.0.2.11')
    assert events.route_event(no_pmsi, False, None) is None
    assert events.route_event(_fake_path('ip_prefix'), False, None) is None


def test_route_event_with_os_ken_objects_as_received():
    """The attribute names route_event reads, on objects parsed from the wire."""
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
    assert pmsi.type == events.PATH_ATTR_PMSI_TUNNEL

    def path(nlri, attrs):
        return types.SimpleNamespace(nlri=nlri, nexthop='192.0.2.11', get_pattr=attrs.get)

    assert events.route_event(path(mac, {}), False) == MacRoute(
        ADD, BIG_VNI, '02:00:00:00:00:01', '192.0.2.11', '10.0.0.1', 0)
    communities, _ = bgp._PathAttribute.parser(
        bgp.BGPPathAttributeExtendedCommunities(communities=[
            bgp.BGPEncapsulationExtendedCommunity.from_str('vxlan'),
            bgp.BGPEvpnMacMobilityExtendedCommunity(
                subtype=bgp._ExtendedCommunity.SUBTYPE_EVPN_MAC_MOBILITY,
                flags=0, sequence_number=7),
        ]).serialize())
    assert communities.type == events.PATH_ATTR_EXTENDED_COMMUNITIES
    moved = events.route_event(path(mac, {communities.type: communities}), False)
    assert moved.seq == 7
    assert events.route_event(path(imet, {pmsi.type: pmsi}), True) == VtepRoute(
        DEL, BIG_VNI, '192.0.2.11')


def test_peer_summary():
    up = events.peer_summary('192.0.2.1', 'Established', 100.0, 3, 2, 5, 4, now=112.5)
    assert up == PeerSummary(address='192.0.2.1', state='Established', uptime=12.5, received=3,
                             sent=2, updates_received=5, updates_sent=4)
    assert Peers.decode_result([up.json()]) == [up]
    down = events.peer_summary('192.0.2.1', 'Active', 0, 3, 2, 5, 4, now=1.0)
    assert (down.uptime, down.received, down.sent) == (None, 0, 0)


# --- the client, against processes that are not BGP speakers ---------------------

def test_client_fails_pending_calls_when_the_process_dies():
    bgp = BgpProcess(argv_prefix=['sh', '-c', 'sleep 0.5; exit 3', 'sh'])
    started = time.monotonic()
    with pytest.raises(BgpError, match='exited with code 3'):
        bgp.call(Peers(), timeout=10)
    assert time.monotonic() - started < 3
    with pytest.raises(BgpError, match='exited'):
        bgp.call(Peers())
    bgp.close()


class RawProcess:
    """A BGP process driven by raw lines, as a broken agent would drive it."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, '-m', 'bgp.process'], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert json.loads(self.process.stdout.readline()) == {'event': 'ready', 'pid': self.process.pid}

    def ask(self, line: bytes) -> dict:
        self.process.stdin.write(line + b'\n')
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self):
        self.process.kill()
        self.process.wait()


def test_process_answers_malformed_commands_with_errors():
    raw = RawProcess()
    try:
        assert raw.ask(b'{"id": 1, "op": "peers"}') == {'reply': 1, 'ok': False, 'error': 'not started'}
        assert raw.ask(b'{"id": 2, "op": "fly"}')['error'] == "unknown op 'fly'"
        assert '"asn"' in raw.ask(b'{"id": 3, "op": "start", "router_id": "192.0.2.11"}')['error']
        reply = raw.ask(b'{"id": 4, "op": "start", "router_id": "192.0.2.11", "asn": 65000, '
                        b'"keepalive": 2}')
        assert 'hold_time // 3' in reply['error'] and reply['reply'] == 4
        assert raw.ask(b'[]') == {'reply': None, 'ok': False, 'error': 'a command must be a JSON object'}
    finally:
        raw.close()


def test_process_states_and_stop():
    received = []
    with BgpProcess(on_event=received.append) as bgp:
        with pytest.raises(BgpError, match='not started'):
            bgp.call(Peers())
        # No listening: nothing is created in this (root) namespace.
        assert bgp.call(Start(router_id='192.0.2.11', asn=ASN, listen_port=0)) is None
        with pytest.raises(BgpError, match='already started'):
            bgp.call(Start(router_id='192.0.2.11', asn=ASN, listen_port=0))
        with pytest.raises(BgpError, match='vni 5 was not added'):
            bgp.call(MacAdd(5, '02:00:00:00:00:01'))
        assert bgp.call(VtepAdd(5, 1)) is True
        assert bgp.call(VtepAdd(5, 1)) is False
        with pytest.raises(BgpError, match='rd_index 1 is used by vni 5'):
            bgp.call(VtepAdd(6, 1))
        replies = bgp.call_many([MacAdd(5, f'02:00:00:00:00:{i:02x}') for i in range(3)]
                                + [MacAdd(7, '02:00:00:00:00:07')])
        assert [r.result for r in replies[:3]] == [True, True, True]
        assert not replies[3].ok and replies[3].error == 'vni 7 was not added'  # one failure
        assert bgp.call(MacDel(5, '02:00:00:00:00:09')) is False
        assert bgp.call(MacAdd(5, '02:00:00:00:00:01', seq=MAX_SEQ)) is True
        # What it originates, as the agent reconciles against it.
        assert bgp.call(Originated()) == OriginatedRoutes(
            vteps={5: 1}, macs={(5, '02:00:00:00:00:00', None): 0,
                                (5, '02:00:00:00:00:01', None): MAX_SEQ,
                                (5, '02:00:00:00:00:02', None): 0})
        assert bgp.call(Rib()) == []  # own routes are not reported
        assert bgp.call(Peers()) == []
        assert bgp.call(VtepDel(5)) is True
        assert bgp.call(Originated()) == OriginatedRoutes(vteps={}, macs={})
        assert bgp.call(Stop()) is None
        assert bgp.wait(5) == 0
    assert received == []


def test_process_exits_when_its_agent_is_gone():
    """Replies to a closed stdout are dropped; end of stdin stops it."""
    raw = RawProcess()
    process = raw.process
    try:
        assert raw.ask(b'{"id": 1, "op": "start", "asn": 65000, "router_id": "192.0.2.11", '
                       b'"listen_port": 0}')['ok'] is True
        process.stdout.close()
        process.stdin.write(b'{"id": 2, "op": "peers"}\n' * 3)  # -> EPIPE
        process.stdin.flush()
        time.sleep(0.2)
        process.stdin.close()
        assert process.wait(10) == 0
    finally:
        raw.close()


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
            self._items.append(event_json(event))
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

    def call(self, command):
        return self.bgp.call(command)

    def rib(self):
        return [event_json(route) for route in self.call(Rib())]

    def start_speaker(self, password=None):
        """Start as a node speaker, passive towards the reflector."""
        self.call(Start(router_id=self.address, asn=ASN, listen_host=self.address, hold_time=HOLD))
        self.call(PeerAdd(RR, 'passive', password))


PEER_UP = {'event': 'peer', 'up': True}
PEER_DOWN = {'event': 'peer', 'up': False}


@pytest.fixture
def cluster(underlay):
    """A reflector (dials out) and speakers a and b (passive), Established.

    The a <-> reflector session uses a TCP MD5 password.
    """
    nodes = {name: Node(name) for name in NODES}  # processes start at once
    rr, a, b = nodes['rr'], nodes['a'], nodes['b']
    try:
        rr.call(Start(router_id=RR, asn=ASN, role='reflector', cluster_id='10.255.0.1',
                      listen_host=RR, hold_time=HOLD, connect_retry=1))
        a.start_speaker(password='megalos')
        b.start_speaker()
        rr.call(PeerAdd(A, 'active', 'megalos'))
        rr.call(PeerAdd(B, 'active'))
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


def mac_event(action, vni, i, vtep, ip=None, seq=0, pod=None):
    return {'event': 'mac', 'action': action, 'vni': vni, 'mac': mac(i),
            'ip': ip, 'vtep': vtep, 'seq': seq, 'pod': pod}


def flood_event(action, vni, vtep, namespace=None, since=0):
    return {'event': 'vtep', 'action': action, 'vni': vni, 'vtep': vtep, 'namespace': namespace,
            'since': since}


def routes_of(node, vtep):
    return [e for e in node.events.all()
            if e['event'] in ('mac', 'vtep') and e['vtep'] == vtep]


def by_json(events):
    return sorted(events, key=json.dumps)


@pytest.mark.root
def test_routes_propagate_through_the_reflector(cluster):
    rr, a, b = cluster['rr'], cluster['a'], cluster['b']
    assert a.call(VtepAdd(BIG_VNI, 1)) is True
    assert a.call(VtepAdd(SMALL_VNI, 2)) is True
    assert b.call(VtepAdd(BIG_VNI, 1)) is True
    assert [r.result for r in a.bgp.call_many([MacAdd(BIG_VNI, mac(1), '10.0.0.1'),
                                               MacAdd(BIG_VNI, mac(2))])] == [True, True]
    assert a.call(MacAdd(BIG_VNI, mac(2))) is False  # no-op
    assert a.call(MacAdd(SMALL_VNI, mac(3))) is True
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
    assert by_json(b.rib()) == by_json(from_a)
    assert by_json(rr.rib()) == by_json(from_a + from_b)
    assert a.rib() == from_b
    with pytest.raises(BgpError, match='reflector originates no routes'):
        rr.call(VtepAdd(SMALL_VNI, 1))

    peers = [peer.json() for peer in rr.call(Peers())]
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
    [to_rr] = [peer.json() for peer in b.call(Peers())]
    assert (to_rr['address'], to_rr['received'], to_rr['sent']) == (RR, 5, 1)

    assert a.call(MacDel(BIG_VNI, mac(1), ip='10.0.0.1')) is True
    b.events.wait_for(mac_event('del', BIG_VNI, 1, A, ip='10.0.0.1'))
    rr.events.wait_for(mac_event('del', BIG_VNI, 1, A, ip='10.0.0.1'))
    assert a.call(MacDel(BIG_VNI, mac(1), ip='10.0.0.1')) is False


@pytest.mark.root

def test_mac_mobility_sequence_number_reaches_the_other_side(cluster):
    a, b = cluster['a'], cluster['b']
    assert a.call(VtepAdd(SMALL_VNI, 7)) is True
    assert a.call(MacAdd(SMALL_VNI, mac(9))) is True
    b.events.wait_for(mac_event('add', SMALL_VNI, 9, A))
    # Announcing again with a sequence number re-announces the route with it.
    assert a.call(MacAdd(SMALL_VNI, mac(9), seq=3)) is True
    assert a.call(MacAdd(SMALL_VNI, mac(9), seq=3)) is False
    b.events.wait_for(mac_event('add', SMALL_VNI, 9, A, seq=3))

def test_vni_del_withdraws_all_its_routes(cluster):
    a, b = cluster['a'], cluster['b']
    a.call(VtepAdd(BIG_VNI, 1))
    a.call(VtepAdd(SMALL_VNI, 2))
    a.bgp.call_many([MacAdd(BIG_VNI, mac(i)) for i in range(3)])
    b.events.wait_for(flood_event('add', SMALL_VNI, A),
                      *[mac_event('add', BIG_VNI, i, A) for i in range(3)])
    assert a.call(VtepDel(BIG_VNI)) is True
    b.events.wait_for(flood_event('del', BIG_VNI, A),
                      *[mac_event('del', BIG_VNI, i, A) for i in range(3)])
    assert b.rib() == [flood_event('add', SMALL_VNI, A)]
    assert a.call(VtepDel(BIG_VNI)) is False
    with pytest.raises(BgpError, match='not added'):
        a.call(MacAdd(BIG_VNI, mac(1)))


@pytest.mark.root
def test_peer_del_on_reflector_withdraws_that_peers_routes(cluster):
    rr, a, b = cluster['rr'], cluster['a'], cluster['b']
    a.call(VtepAdd(BIG_VNI, 1))
    a.call(MacAdd(BIG_VNI, mac(1)))
    b.call(VtepAdd(BIG_VNI, 1))
    b.events.wait_for(flood_event('add', BIG_VNI, A),
                      mac_event('add', BIG_VNI, 1, A))
    rr.events.wait_for(flood_event('add', BIG_VNI, B))
    assert rr.call(PeerDel(A)) is True  # the MD5 peer
    b.events.wait_for(flood_event('del', BIG_VNI, A),
                      mac_event('del', BIG_VNI, 1, A))
    rr.events.wait_for({**PEER_DOWN, 'address': A},
                       mac_event('del', BIG_VNI, 1, A))
    a.events.wait_for({**PEER_DOWN, 'address': RR})
    assert [p.address for p in rr.call(Peers())] == [B]
    assert rr.rib() == [flood_event('add', BIG_VNI, B)]
    assert rr.call(PeerDel(A)) is False


def _originate(node):
    node.call(VtepAdd(BIG_VNI, 1))
    node.call(MacAdd(BIG_VNI, mac(1)))


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
    rr.events.wait_for({**PEER_DOWN, 'address': A})

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


@pytest.mark.parametrize('raw', [None, {}, {'vteps': [], 'macs': [{'vni': 0, 'mac': 'x'}]},
                                 {'vteps': [{'vni': 5}], 'macs': []}, {'vteps': 7, 'macs': []}])
def test_a_malformed_originated_result_is_a_protocol_error(raw):
    with pytest.raises(ProtocolError):
        Originated.decode_result(raw)


def test_the_bgp_process_loads_no_dns_resolver():
    """Peers are addresses: eventlet's green resolver (dnspython and cryptography, ~17 MiB) is not
    loaded. Its C extensions would show in the process's memory maps."""
    with BgpProcess() as bgp:
        bgp.call(Start(router_id='192.0.2.12', asn=ASN, listen_port=0))
        maps = open(f'/proc/{bgp.pid}/maps').read()
        assert '/cryptography/' not in maps and '_cffi_backend' not in maps
