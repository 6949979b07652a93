"""The BGP process: os-ken's BGPSpeaker driven by JSON lines.

Run as ``python -m speaker.bgp_process``. One process holds one BGP speaker
(os-ken's core is a per-process singleton), in one of two roles:

- ``speaker``: on a node. Originates a Type-3 (IMET) route per VNI and a
  Type-2 (MAC/IP) route per local MAC; reports the routes of other nodes.
- ``reflector``: the route reflector. Every neighbour is a route reflector
  client; it originates nothing and reports every route it reflects.

Importing this module imports neither eventlet's monkey patching nor os_ken:
``main()`` sets ``OSKEN_HUB_TYPE=eventlet`` and calls
``eventlet.monkey_patch()`` first (os-ken's native hub stalls after a few
hundred routes), then imports os_ken. The agent imports only the protocol
helpers, or nothing at all (see ``speaker.bgp_client``).

Protocol
========

stdin: one JSON object per line, a command. stdout: one JSON object per line,
a reply or an event. stderr: logs. Commands are applied one at a time, in
order; each gets exactly one reply::

    {"id": 7, "op": "mac_add", "vni": 100, "mac": "aa:bb:cc:00:00:01"}
    {"reply": 7, "ok": true, "result": true}
    {"reply": 8, "ok": false, "error": "vni 5 was not added"}

A line that is not a JSON object with an int ``id`` and a str ``op`` gets
``{"reply": <id or null>, "ok": false, "error": ...}``.

Commands (``op`` and its fields; results in brackets):

``start``
    ``router_id`` (IPv4: the node's VTEP address), ``asn`` (1..65535),
    ``role`` ("speaker" | "reflector"), ``cluster_id`` (IPv4, reflector
    only, defaults to router_id), ``listen_host`` (optional, default all
    IPv4 addresses), ``listen_port`` (default 179; 0 = do not listen),
    ``hold_time`` (default 9; 0 or >= 3), ``keepalive`` (optional; os-ken
    always uses hold_time // 3, anything else is refused),
    ``connect_retry`` (default 1: seconds between attempts to connect to
    an active/both peer; os-ken's own 30 s delays every re-connection),
    ``restart_grace`` (seconds a peer's routes are kept after its session
    closes, for a restarting agent; default 0 = upstream behaviour; a
    hold-timer expiry still withdraws at once). [null]
    Must come first; a second start is an error. A start that fails (for
    example, the address cannot be bound) leaves the process unusable:
    close it and start another.
``peer_add``
    ``address``, ``connect_mode`` ("active" | "passive" | "both", default
    "both"), ``password`` (optional str, TCP MD5). iBGP (remote AS = asn),
    L2VPN EVPN only. In the reflector role every peer is a route reflector
    client. os-ken has no dynamic neighbours: a reflector accepts only the
    peers it is told about. Adding an existing peer with the same settings
    is a no-op; with other settings, an error. [true if added, false if it
    already existed]
``peer_del``
    ``address``. Closes the session and withdraws every route learned from
    that peer (see ``osken_compat.delete_neighbor``). [false if unknown]
``vni_add``
    ``vni`` (1..16777215), ``rd_index`` (0..65535, unique per process).
    Speaker role only (as is ``mac_add``).
    Creates the EVPN VRF RD ``<router_id>:<rd_index>``, import/export RT
    ``<asn>:<vni>``, and originates its Type-3 route: ethernet tag 0,
    originator = next hop = router_id, PMSI tunnel type 6 (ingress
    replication) with the VNI, and the VXLAN encapsulation extended
    community. Same VNI and rd_index again is a no-op. [true | false]
``vni_del``
    ``vni``. Withdraws that VNI's Type-2 and Type-3 routes, deletes the
    VRF. [false if unknown]
``mac_add``
    ``vni``, ``mac``, ``ip`` (optional). A Type-2 route in the VNI's VRF:
    ethernet tag 0, ESI 0, VNI label = vni, next hop = router_id, VXLAN
    encapsulation community. The route is keyed by (mac, ip). ``seq``
    (optional, default 0): the MAC mobility sequence number; above 0 the
    route carries the MAC Mobility extended community (RFC 7432 15), so it
    wins over an older announcement of the MAC from another node. Adding
    again with another seq re-announces it. [true | false]
``mac_del``
    ``vni``, ``mac``, ``ip`` (optional, as added). Withdraws it.
    [false if unknown]
``peers``
    [list of {"address", "state" (os-ken's FSM name: "Idle", "Connect",
    "Active", "OpenSent", "OpenConfirm", "Established"), "uptime" (seconds
    or null), "received" (routes now held from the peer), "sent" (routes
    advertised to it and not withdrawn), "updates_received",
    "updates_sent" (UPDATE messages, counted over the process life)}]
``rib``
    [list of ``mac``/``flood`` events with action "add": every current best
    EVPN route learned from a peer, for reconciliation]
``stop``
    Shuts the speaker down, replies, and exits 0. End of stdin does the
    same without a reply.

Events (no ``reply`` key), in the order os-ken produced them. The first
line the process writes is ``{"event": "ready", "pid": N}``, once os-ken
is imported (that takes 0.5 s to several seconds on a busy machine)::

    {"event": "mac", "action": "add"|"del", "vni": N, "mac": "aa:..", "seq": N,
     "ip": "10.0.0.5"|null, "vtep": "<next hop>"}
    {"event": "flood", "action": "add"|"del", "vni": N, "vtep": "<ip>"}
    {"event": "peer", "address": "<ip>", "state": "up"|"down"}

``mac`` comes from a Type-2 best path: VNI from the NLRI label (not os-ken's
``ev.label``), vtep = next hop. ``flood`` comes from a Type-3 best path: VNI
and vtep from the PMSI tunnel attribute (type 22), vtep falling back to the
originator IP. Events cover every VNI (filter in the agent) and are emitted
in both roles for routes learned from peers; routes this process originates,
and routes whose vtep is our own router_id, produce none. An "add" may
repeat for a route already added, without a "del" in between, when its
best path changes (the same route from two reflectors): treat adds as
idempotent. A MAC that moves between nodes is two routes (each node has
its own RD): an "add" with the new vtep, and a "del" with the old one, in
either order; key the FDB on (vni, mac, vtep).
"""

import dataclasses
import ipaddress
import json
import logging
import os
import re
import stat
import sys
import time
import warnings

LOG = logging.getLogger('megalos.bgp_process')

ROLE_SPEAKER = 'speaker'
ROLE_REFLECTOR = 'reflector'
ROLES = (ROLE_SPEAKER, ROLE_REFLECTOR)
CONNECT_MODES = ('active', 'passive', 'both')

MAX_VNI = 2 ** 24 - 1
MAX_RD_INDEX = 2 ** 16 - 1
MAX_ASN = 2 ** 16 - 1  # the RT <asn>:<vni> is a 2-octet-AS route target

# os-ken route type names and the PMSI tunnel attribute type (RFC 6514).
TYPE2 = 'mac_ip_adv'
TYPE3 = 'multicast_etag'
PATH_ATTR_PMSI_TUNNEL = 22
PATH_ATTR_EXTENDED_COMMUNITIES = 16

_MAC_RE = re.compile(r'^[0-9a-f]{2}(:[0-9a-f]{2}){5}$')


class ProtocolError(Exception):
    """A command that cannot be applied; its message goes into the reply."""


# --- pure protocol functions --------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Command:
    id: int
    op: str
    args: dict


def parse_command(line):
    """A ``Command`` from one input line (bytes or str).

    Raises ``ProtocolError``; its ``command_id`` attribute holds the id when
    one could be read, so the error can still be answered.
    """
    try:
        message = json.loads(line)
    except ValueError as e:
        raise _protocol_error('not JSON: %s' % e, None)
    if not isinstance(message, dict):
        raise _protocol_error('a command must be a JSON object', None)
    command_id = message.get('id')
    if not isinstance(command_id, int) or isinstance(command_id, bool):
        raise _protocol_error('"id" must be an int', None)
    op = message.get('op')
    if not isinstance(op, str):
        raise _protocol_error('"op" must be a string', command_id)
    args = {k: v for k, v in message.items() if k not in ('id', 'op')}
    return Command(command_id, op, args)


def _protocol_error(message, command_id):
    error = ProtocolError(message)
    error.command_id = command_id
    return error


def reply_ok(command_id, result=None):
    return {'reply': command_id, 'ok': True, 'result': result}


def reply_error(command_id, message):
    return {'reply': command_id, 'ok': False, 'error': message}


def encode_line(message):
    """One output line, as bytes."""
    return (json.dumps(message, separators=(',', ':')) + '\n').encode()


def _field(args, name, kind, default=dataclasses.MISSING):
    if name not in args or args[name] is None:
        if default is dataclasses.MISSING:
            raise ProtocolError('missing "%s"' % name)
        return default
    value = args[name]
    if kind is int and isinstance(value, bool):
        raise ProtocolError('"%s" must be an int' % name)
    if not isinstance(value, kind):
        raise ProtocolError('"%s" must be %s' % (
            name, {int: 'an int', str: 'a string'}.get(kind, kind.__name__)))
    return value


def _int_in(args, name, low, high, default=dataclasses.MISSING):
    value = _field(args, name, int, default)
    if not low <= value <= high:
        raise ProtocolError('"%s" must be in %d..%d, not %d'
                            % (name, low, high, value))
    return value


def _ipv4(args, name, default=dataclasses.MISSING):
    value = _field(args, name, str, default)
    if value is None:
        return None
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ProtocolError('"%s" must be an IPv4 address, not %r'
                            % (name, value)) from None


def _ip(args, name, default=dataclasses.MISSING):
    value = _field(args, name, str, default)
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ProtocolError('"%s" must be an IP address, not %r'
                            % (name, value)) from None


@dataclasses.dataclass(frozen=True)
class StartConfig:
    router_id: str
    asn: int
    role: str
    cluster_id: str | None
    listen_host: str | None
    listen_port: int
    hold_time: int
    connect_retry: int = 1
    restart_grace: float = 0.0


def parse_start(args):
    role = _field(args, 'role', str, ROLE_SPEAKER)
    if role not in ROLES:
        raise ProtocolError('"role" must be one of %s, not %r'
                            % (', '.join(ROLES), role))
    router_id = _ipv4(args, 'router_id')
    cluster_id = _ipv4(args, 'cluster_id', None)
    if role == ROLE_SPEAKER:
        cluster_id = None
    hold_time = _int_in(args, 'hold_time', 0, 65535, 9)
    if 0 < hold_time < 3:
        raise ProtocolError('"hold_time" must be 0 or at least 3')
    keepalive = _field(args, 'keepalive', int, None)
    if keepalive is not None and keepalive != hold_time // 3:
        raise ProtocolError(
            'os-ken sends keepalives every hold_time // 3 = %d s; '
            '"keepalive" %d cannot be honoured' % (hold_time // 3, keepalive))
    return StartConfig(
        router_id=router_id,
        asn=_int_in(args, 'asn', 1, MAX_ASN),
        role=role,
        cluster_id=cluster_id,
        listen_host=_ip(args, 'listen_host', None),
        listen_port=_int_in(args, 'listen_port', 0, 65535, 179),
        hold_time=hold_time,
        connect_retry=_int_in(args, 'connect_retry', 1, 3600, 1),
        restart_grace=float(_int_in(args, 'restart_grace', 0, 3600, 0)),
    )


@dataclasses.dataclass(frozen=True)
class PeerConfig:
    address: str
    connect_mode: str
    password: str | None


def parse_peer(args):
    mode = _field(args, 'connect_mode', str, 'both')
    if mode not in CONNECT_MODES:
        raise ProtocolError('"connect_mode" must be one of %s, not %r'
                            % (', '.join(CONNECT_MODES), mode))
    password = _field(args, 'password', str, None)
    return PeerConfig(_ip(args, 'address'), mode, password or None)


def parse_address(args):
    return _ip(args, 'address')


def parse_vni(args):
    return _int_in(args, 'vni', 1, MAX_VNI)


def parse_rd_index(args):
    return _int_in(args, 'rd_index', 0, MAX_RD_INDEX)


def parse_mac(args):
    """(vni, mac, ip) of a mac_add/mac_del; mac lower-case, ip or None."""
    mac = _field(args, 'mac', str).lower()
    if not _MAC_RE.match(mac):
        raise ProtocolError('"mac" must look like aa:bb:cc:dd:ee:ff, not %r'
                            % mac)
    return parse_vni(args), mac, _ip(args, 'ip', None)


def route_distinguisher(router_id, rd_index):
    """Type-1 RD. The VNI cannot be the number: it is 24 bits, this is 16."""
    return '%s:%d' % (router_id, rd_index)


def route_target(asn, vni):
    """FRR imports by an RT whose local part is the VNI."""
    return '%d:%d' % (asn, vni)


def mobility_seq(path):
    """The MAC mobility sequence number of a Type-2 path (0 when it has none)."""
    communities = path.get_pattr(PATH_ATTR_EXTENDED_COMMUNITIES)
    for community in getattr(communities, 'communities', None) or ():
        if community.__class__.__name__ == 'BGPEvpnMacMobilityExtendedCommunity':
            return int(community.sequence_number)
    return 0


def path_event(path, is_withdraw, own_router_id=None):
    """The ``mac``/``flood`` event for an os-ken EVPN path, or None.

    ``path`` needs ``nlri`` (with ``ROUTE_TYPE_NAME``), ``nexthop`` and
    ``get_pattr(type)``: an os-ken ``EvpnPath`` or any stand-in. Paths of
    other route types, without a VNI, or pointing at ``own_router_id`` give
    None.
    """
    nlri = path.nlri
    kind = getattr(nlri, 'ROUTE_TYPE_NAME', None)
    action = 'del' if is_withdraw else 'add'
    if kind == TYPE2:
        vtep = path.nexthop
        if vtep == own_router_id or nlri.vni is None:
            return None
        return {'event': 'mac', 'action': action, 'vni': nlri.vni,
                'mac': nlri.mac_addr, 'ip': nlri.ip_addr or None,
                'vtep': vtep, 'seq': mobility_seq(path)}
    if kind == TYPE3:
        pmsi = path.get_pattr(PATH_ATTR_PMSI_TUNNEL)
        if pmsi is None or not pmsi.vni:
            LOG.warning('ignoring Type-3 route without a PMSI VNI: %s',
                        getattr(nlri, 'prefix', nlri))
            return None
        vtep = (getattr(pmsi.tunnel_id, 'tunnel_endpoint_ip', None)
                or nlri.ip_addr)
        if vtep == own_router_id:
            return None
        return {'event': 'flood', 'action': action, 'vni': pmsi.vni,
                'vtep': vtep}
    return None


def peer_event(address, up):
    return {'event': 'peer', 'address': address,
            'state': 'up' if up else 'down'}


def peer_summary(address, state, established_at, received, sent,
                 updates_received, updates_sent, now):
    """One item of the ``peers`` result."""
    established = state == 'Established'
    return {
        'address': address,
        'state': state,
        'uptime': round(now - established_at, 3)
        if established and established_at else None,
        'received': received if established else 0,
        'sent': sent if established else 0,
        'updates_received': updates_received,
        'updates_sent': updates_sent,
    }


# --- the service: commands applied to an os-ken BGPSpeaker --------------------

@dataclasses.dataclass
class _Vni:
    rd_index: int
    route_dist: str
    macs: dict = dataclasses.field(default_factory=dict)  # (mac, ip) -> mobility seq


class BgpService:
    """Applies commands to one os-ken ``BGPSpeaker``; reports its events.

    ``osken`` is a namespace of the os-ken modules (imported by ``main``
    after monkey patching); ``emit`` takes one event dict.
    """

    def __init__(self, osken, emit):
        self._osken = osken
        self._emit = emit
        self._speaker = None
        self._config = None
        self._peers = {}
        self._vnis = {}
        self.stopped = False

    def handle(self, command):
        """The reply dict for one ``Command``."""
        handler = getattr(self, 'op_' + command.op, None)
        if handler is None:
            return reply_error(command.id, 'unknown op %r' % command.op)
        if command.op != 'start' and self._speaker is None:
            return reply_error(command.id, 'not started')
        try:
            return reply_ok(command.id, handler(command.args))
        except ProtocolError as e:
            return reply_error(command.id, str(e))
        except Exception as e:  # os-ken reports bad input as exceptions
            LOG.exception('%s failed', command.op)
            return reply_error(command.id, '%s: %s' % (type(e).__name__, e))

    # commands

    def op_start(self, args):
        if self._speaker is not None:
            raise ProtocolError('already started')
        config = parse_start(args)
        bgpspeaker = self._osken.bgpspeaker
        hosts = ([config.listen_host] if config.listen_host
                 else bgpspeaker.DEFAULT_BGP_SERVER_HOSTS[:1])
        self._config = config
        self._speaker = bgpspeaker.BGPSpeaker(
            as_number=config.asn,
            router_id=config.router_id,
            bgp_server_hosts=hosts,
            bgp_server_port=config.listen_port,
            best_path_change_handler=self._on_best_path_change,
            peer_up_handler=self._on_peer_up,
            peer_down_handler=self._on_peer_down,
            cluster_id=config.cluster_id,
        )
        self._osken.compat.set_connect_retry(config.connect_retry)
        if config.role == ROLE_REFLECTOR:
            self._osken.compat.patch_evpn_next_hop_local()
            self._osken.compat.patch_evpn_nlri_wire_cache()
        if config.restart_grace:
            self._osken.compat.enable_restart_grace(config.restart_grace)
        if config.listen_port and not self._wait_listening():
            raise ProtocolError('cannot listen on %s port %d (see log)'
                                % (hosts[0], config.listen_port))
        LOG.info('started %s %s AS %d', config.role, config.router_id,
                 config.asn)
        return None

    def _wait_listening(self, timeout=2.0):
        core = self._osken.CORE_MANAGER.get_core_service()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if getattr(core, 'listen_sockets', None):
                return True
            self._osken.sleep(0.01)
        return False

    def op_peer_add(self, args):
        peer = parse_peer(args)
        known = self._peers.get(peer.address)
        if known == peer:
            return False
        if known is not None:
            raise ProtocolError('peer %s exists with other settings; '
                                'delete it first' % peer.address)
        compat = self._osken.compat
        self._speaker.neighbor_add(
            address=peer.address,
            remote_as=self._config.asn,
            enable_ipv4=False,
            enable_evpn=True,
            password=peer.password,
            is_route_reflector_client=self._config.role == ROLE_REFLECTOR,
            connect_mode=compat.connect_mode(peer.connect_mode),
        )
        # No yield since neighbor_add: the session cannot have started.
        compat.set_hold_time(peer.address, self._config.hold_time)
        self._peers[peer.address] = peer
        return True

    def op_peer_del(self, args):
        address = parse_address(args)
        if self._peers.pop(address, None) is None:
            return False
        self._osken.compat.delete_neighbor(self._speaker, address)
        return True

    def op_vni_add(self, args):
        self._check_originates()
        vni, rd_index = parse_vni(args), parse_rd_index(args)
        known = self._vnis.get(vni)
        if known is not None:
            if known.rd_index != rd_index:
                raise ProtocolError('vni %d already has rd_index %d'
                                    % (vni, known.rd_index))
            return False
        for other_vni, other in self._vnis.items():
            if other.rd_index == rd_index:
                raise ProtocolError('rd_index %d is used by vni %d'
                                    % (rd_index, other_vni))
        bgpspeaker = self._osken.bgpspeaker
        route_dist = route_distinguisher(self._config.router_id, rd_index)
        rt = route_target(self._config.asn, vni)
        # Export only: what we receive is reported from the global EVPN table
        # (``_on_best_path_change``) and the agent filters it by VNI, so
        # importing every received route into a VRF as well would only cost
        # (a fifth of this process's CPU for 10k MACs) and memory.
        self._speaker.vrf_add(route_dist=route_dist, import_rts=[],
                              export_rts=[rt],
                              route_family=bgpspeaker.RF_L2_EVPN)
        try:
            self._speaker.evpn_prefix_add(
                route_type=bgpspeaker.EVPN_MULTICAST_ETAG_ROUTE,
                route_dist=route_dist,
                ethernet_tag_id=0,
                ip_addr=self._config.router_id,
                vni=vni,
                next_hop=self._config.router_id,
                tunnel_type=bgpspeaker.TUNNEL_TYPE_VXLAN,
                pmsi_tunnel_type=bgpspeaker.PMSI_TYPE_INGRESS_REP,
            )
        except Exception:
            self._speaker.vrf_del(route_dist)
            raise
        self._vnis[vni] = _Vni(rd_index, route_dist)
        return True

    def op_vni_del(self, args):
        vni = parse_vni(args)
        known = self._vnis.pop(vni, None)
        if known is None:
            return False
        bgpspeaker = self._osken.bgpspeaker
        for mac, ip in sorted(known.macs, key=str):
            self._withdraw_mac(known.route_dist, mac, ip)
        self._speaker.evpn_prefix_del(
            route_type=bgpspeaker.EVPN_MULTICAST_ETAG_ROUTE,
            route_dist=known.route_dist, ethernet_tag_id=0,
            ip_addr=self._config.router_id)
        self._speaker.vrf_del(known.route_dist)
        return True

    def op_mac_add(self, args):
        self._check_originates()
        vni, mac, ip = parse_mac(args)
        seq = _int_in(args, 'seq', 0, 2 ** 32 - 1, 0)
        known = self._vni(vni)
        if known.macs.get((mac, ip)) == seq:
            return False
        bgpspeaker = self._osken.bgpspeaker
        # A sequence number (RFC 7432 MAC mobility) only once the MAC has moved:
        # the route then wins over the one its old node may still announce.
        mobility = {'mac_mobility': seq} if seq else {}
        self._speaker.evpn_prefix_add(
            route_type=bgpspeaker.EVPN_MAC_IP_ADV_ROUTE,
            route_dist=known.route_dist,
            esi=0,
            ethernet_tag_id=0,
            mac_addr=mac,
            ip_addr=ip,
            vni=vni,
            next_hop=self._config.router_id,
            tunnel_type=bgpspeaker.TUNNEL_TYPE_VXLAN,
            **mobility,
        )
        known.macs[(mac, ip)] = seq
        return True

    def op_mac_del(self, args):
        vni, mac, ip = parse_mac(args)
        known = self._vni(vni)
        if (mac, ip) not in known.macs:
            return False
        self._withdraw_mac(known.route_dist, mac, ip)
        del known.macs[(mac, ip)]
        return True

    def _check_originates(self):
        if self._config.role == ROLE_REFLECTOR:
            raise ProtocolError('the reflector originates no routes')

    def _vni(self, vni):
        known = self._vnis.get(vni)
        if known is None:
            raise ProtocolError('vni %d was not added' % vni)
        return known

    def _withdraw_mac(self, route_dist, mac, ip):
        self._speaker.evpn_prefix_del(
            route_type=self._osken.bgpspeaker.EVPN_MAC_IP_ADV_ROUTE,
            route_dist=route_dist, ethernet_tag_id=0, mac_addr=mac,
            ip_addr=ip)

    def op_peers(self, args):
        core = self._osken.CORE_MANAGER.get_core_service()
        counters = self._osken.PeerCounterNames
        now = time.time()
        result = []
        for peer in core.peer_manager.iterpeers:
            if peer.ip_address not in self._peers:
                continue  # deleted: os-ken keeps nothing we should report
            sent = sum(1 for r in peer.adj_rib_out.values()
                       if not r.path.is_withdraw and not r.filtered)
            result.append(peer_summary(
                address=peer.ip_address,
                state=peer.state.bgp_state,
                established_at=peer.state._established_time,
                received=len(peer.adj_rib_in),
                sent=sent,
                updates_received=peer.state.get_count(counters.RECV_UPDATES),
                updates_sent=peer.state.get_count(counters.SENT_UPDATES),
                now=now,
            ))
        return sorted(result, key=lambda p: p['address'])

    def op_rib(self, args):
        core = self._osken.CORE_MANAGER.get_core_service()
        table = core.table_manager.get_global_table_by_route_family(
            self._osken.RF_L2_EVPN)
        events = []
        for dest in list(table.values()):
            path = dest.best_path
            if path is None or path.source is None:
                continue
            event = path_event(path, False, self._config.router_id)
            if event is not None:
                events.append(event)
        return events

    def op_stop(self, args):
        self.stop()
        return None

    def stop(self):
        if self.stopped:
            return
        self.stopped = True
        if self._speaker is not None:
            self._speaker.shutdown()

    # os-ken callbacks (run in os-ken's green threads)

    def _on_best_path_change(self, ev):
        router_id = self._config.router_id if self._config else None
        event = path_event(ev.path, ev.is_withdraw, router_id)
        if event is not None:
            self._emit(event)

    def _on_peer_up(self, address, remote_as):
        self._emit(peer_event(address, True))

    def _on_peer_down(self, address, remote_as):
        self._emit(peer_event(address, False))


# --- I/O -------------------------------------------------------------------------

class LineWriter:
    """Writes messages to a file descriptor from one green thread, in order.

    Emitting never blocks the hub: a slow reader delays only the writer
    (the fd should be non-blocking). Once the reader is gone (EPIPE), the
    rest is dropped: eventlet's green ``os.write`` would retry EPIPE
    forever, so this uses the original ``os.write``.
    """

    MAX_LINES_PER_WRITE = 256

    def __init__(self, fd, eventlet):
        from eventlet import hubs, patcher
        self._fd = fd
        self._write = patcher.original('os').write
        self._wait_writable = lambda: hubs.trampoline(fd, write=True)
        self._broken = False
        self._queue = eventlet.queue.Queue()
        self._thread = eventlet.spawn(self._run)

    def emit(self, message):
        self._queue.put(encode_line(message))

    def drain(self):
        """Wait until everything emitted so far is written (or dropped)."""
        self._queue.join()

    def _run(self):
        while True:
            lines = [self._queue.get()]
            # What queued up meanwhile goes in the same write: one system
            # call per burst of events, not per event.
            while len(lines) < self.MAX_LINES_PER_WRITE and not self._queue.empty():
                lines.append(self._queue.get_nowait())
            try:
                if not self._broken:
                    self._write_all(b''.join(lines))
            except OSError as e:
                self._broken = True
                LOG.error('cannot write to stdout, dropping output: %s', e)
            finally:
                for _ in lines:
                    self._queue.task_done()

    def _write_all(self, data):
        view = memoryview(data)
        while view:
            try:
                view = view[self._write(self._fd, view):]
            except BlockingIOError:
                self._wait_writable()


def _make_nonblocking_if_private(fd):
    """O_NONBLOCK on our stdout pipe, so a full pipe never blocks the hub.

    Only when it is a pipe not shared with stderr (O_NONBLOCK belongs to the
    open file, and logging does not expect EAGAIN).
    """
    out = os.fstat(fd)
    if not stat.S_ISFIFO(out.st_mode):
        return
    try:
        err = os.fstat(2)
    except OSError:
        err = None
    if err is not None and (err.st_dev, err.st_ino) == (out.st_dev, out.st_ino):
        return
    os.set_blocking(fd, False)


def serve(service, writer, in_fd=0):
    """Read commands from ``in_fd`` and apply them until stop or EOF."""
    pending = b''
    while not service.stopped:
        chunk = os.read(in_fd, 65536)  # green
        if not chunk:
            LOG.info('stdin closed: stopping')
            service.stop()
            return
        pending += chunk
        while b'\n' in pending and not service.stopped:
            line, pending = pending.split(b'\n', 1)
            if not line.strip():
                continue
            try:
                command = parse_command(line)
            except ProtocolError as e:
                writer.emit(reply_error(e.command_id, str(e)))
                continue
            writer.emit(service.handle(command))


class _OsKen:
    """The os-ken names the service uses, imported after monkey patching."""

    def __init__(self, eventlet):
        from os_ken.lib.packet.bgp import RF_L2_EVPN
        from os_ken.services.protocols.bgp import bgpspeaker
        from os_ken.services.protocols.bgp.core_manager import CORE_MANAGER
        from os_ken.services.protocols.bgp.peer import PeerCounterNames

        from speaker import osken_compat

        osken_compat.apply_all()
        self.compat = osken_compat
        self.bgpspeaker = bgpspeaker
        self.CORE_MANAGER = CORE_MANAGER
        self.PeerCounterNames = PeerCounterNames
        self.RF_L2_EVPN = RF_L2_EVPN
        self.sleep = eventlet.sleep


def main():
    os.environ['OSKEN_HUB_TYPE'] = 'eventlet'
    warnings.filterwarnings('ignore', message=r'(?s).*Eventlet is deprecated')
    import eventlet
    eventlet.monkey_patch()
    import eventlet.queue

    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get('MEGALOS_BGP_LOG_LEVEL', 'INFO').upper(),
        format='%(asctime)s bgp[%(process)d] %(levelname)s %(name)s: '
               '%(message)s')
    if LOG.getEffectiveLevel() > logging.DEBUG:
        # One INFO line per API call, neighbour passwords included.
        logging.getLogger('bgpspeaker.api.base').setLevel(logging.WARNING)
    _make_nonblocking_if_private(1)
    writer = LineWriter(1, eventlet)
    service = BgpService(_OsKen(eventlet), writer.emit)
    writer.emit({'event': 'ready', 'pid': os.getpid()})
    try:
        serve(service, writer)
    finally:
        service.stop()
        writer.drain()
    return 0


if __name__ == '__main__':
    sys.exit(main())
