"""Every fix Megalos applies to os-ken 4.2.2, in one place.

Each function applies exactly one fix, is idempotent, and says in its
docstring what is wrong upstream and how we measured it. The tests in
``tests/test_osken_compat.py`` assert that the *unpatched* upstream code still
behaves the way each fix assumes, so an os-ken upgrade that fixes (or moves)
something makes a test fail instead of silently double-patching.

Import this module only in the BGP process, after ``OSKEN_HUB_TYPE=eventlet``
is set and ``eventlet.monkey_patch()`` ran (importing os_ken fixes the hub
type). The agent must never import it: it imports os_ken.

Fixes that patch os-ken code in place (call once, at start-up, before the
``BGPSpeaker`` exists; ``apply_all`` does all of them):

- ``patch_rib_identity_compare``: RIB queues compare nodes with ``==``.
- ``patch_route_family_str``: ``str(route_family)`` costs 0.45 ms, per route.
- ``patch_update_packing``: one route per BGP UPDATE.
- ``patch_md5_str_password``: TCP MD5 needs a ``bytes`` key.
- ``patch_peer_up_address``: ``peer_up_handler`` gets the router id.
- ``patch_route_refresh_without_med``: a ROUTE-REFRESH kills the session.
- ``patch_evpn_next_hop_local`` (reflector only, not in ``apply_all``): EVPN routes whose
  VTEP is the session's local address are dropped.
- ``patch_originator_id_loop_check``: our own routes reflected back are kept.
- ``patch_evpn_nlri_wire_cache`` (reflector only, not in ``apply_all``): every reflected
  NLRI is serialised again for each client and its prefix text formatted over and over.
- ``enable_restart_grace`` (reflector only, not in ``apply_all``): os-ken has no
  graceful restart; keep a peer's routes a while when its session closes.

Helpers used instead of a broken or missing API:

- ``delete_neighbor``: ``neighbor_del`` leaves the peer's routes in the RIB.
- ``connect_mode``: ``connect_mode`` is compared with ``is``.
- ``set_hold_time``: the hold time is not settable through ``BGPSpeaker``.
- ``set_connect_retry``: nor the 30 s pause between connection attempts.
"""

import logging

from os_ken.lib import sockopt
from os_ken.lib.packet.bgp import (
    BGP_ATTR_TYPE_ORIGINATOR_ID,
    BGP_ATTR_TYPE_MP_REACH_NLRI,
    BGP_ATTR_TYPE_MP_UNREACH_NLRI,
    RF_L2_EVPN,
    BGPRouteRefresh,
    EvpnNLRI,
    BGPUpdate,
    RouteFamily,
)
from os_ken.services.protocols.bgp import bgpspeaker
from os_ken.services.protocols.bgp import peer as bgp_peer
from os_ken.services.protocols.bgp.core_manager import CORE_MANAGER
from os_ken.services.protocols.bgp.info_base.ipv4 import Ipv4Path
from os_ken.services.protocols.bgp.core_managers import peer_manager
from os_ken.services.protocols.bgp.core_managers.peer_manager import PeerManager
from os_ken.services.protocols.bgp.model import OutgoingRoute, SentRoute
from os_ken.services.protocols.bgp.peer import Peer, PeerCounterNames
from os_ken.services.protocols.bgp.rtconf import neighbors
from os_ken.services.protocols.bgp.rtconf.base import HOLD_TIME
from os_ken.services.protocols.bgp.utils.circlist import CircularListType

LOG = logging.getLogger(__name__)

# Routes per UPDATE (FRR packs about 100). Measured here, 10k MACs from a
# speaker through the reflector to another speaker, all other fixes on:
# 13.0 s -> 6.9 s to learn them, 13.5 s -> 3.0 s to withdraw them.
MAX_ROUTES_PER_UPDATE = 64
# RFC 4271 caps a BGP message at 4096 octets; keep a margin for our estimate.
MAX_UPDATE_OCTETS = 4096 - 96
# The longest EVPN NLRI (Type-5 with IPv6 prefix and gateway): counting this
# instead of serialising each NLRI twice saves ~20% of the sender's CPU.
_EVPN_NLRI_MAX_OCTETS = 2 + 8 + 10 + 4 + 1 + 16 + 16 + 3

# (owner, attribute name) -> the upstream object we replaced.
_ORIGINALS = {}


def original(owner, name):
    """The upstream ``owner.name`` as it was before we patched it."""
    return _ORIGINALS.get((owner, name), getattr(owner, name))


def _replace(owner, name, replacement):
    """Set ``owner.name = replacement`` once, remembering the upstream value."""
    key = (owner, name)
    if key in _ORIGINALS:
        return False
    _ORIGINALS[key] = getattr(owner, name)
    setattr(owner, name, replacement)
    return True


def is_patched(owner, name):
    return (owner, name) in _ORIGINALS


# --- RIB: identity instead of equality --------------------------------------

def _node_is_on_list_by_identity(self, node):
    next_ = self.node_next(node)
    if next_ is node or next_ is None:
        assert self.node_prev(node) is next_
        return False
    return True


def patch_rib_identity_compare():
    """Compare circular-list nodes by identity.

    ``CircularListType.node_is_on_list`` (os_ken/.../bgp/utils/circlist.py)
    tests ``next == node``. The nodes are RIB destinations and outgoing
    routes whose equality goes through ``str()``: about 70% of the CPU of
    receiving routes. A node is on a list unless it links to itself, which
    is a question of identity. Measured: 10k MACs received 62 s -> 14.5 s.
    """
    return _replace(CircularListType, 'node_is_on_list',
                    _node_is_on_list_by_identity)


# --- UPDATE packing ---------------------------------------------------------

def _mp_attribute(update):
    """(index, attribute) of the MP_REACH/MP_UNREACH attribute, or None."""
    for index, attr in enumerate(update.path_attributes):
        if attr.type in (BGP_ATTR_TYPE_MP_REACH_NLRI,
                         BGP_ATTR_TYPE_MP_UNREACH_NLRI):
            return index, attr
    return None


def _packing_key(update):
    """What must be equal for two single-route UPDATEs to share one message.

    Returns (key, octets without the NLRI), or (None, 0) when the UPDATE is
    not an MP-BGP one (plain IPv4 unicast is sent as upstream does).
    """
    if update.withdrawn_routes or update.nlri:
        return None, 0
    found = _mp_attribute(update)
    if found is None:
        return None, 0
    index, mp_attr = found
    others = b''.join(bytes(attr.serialize())
                      for i, attr in enumerate(update.path_attributes)
                      if i != index)
    if mp_attr.type == BGP_ATTR_TYPE_MP_REACH_NLRI:
        head = ('reach', index, mp_attr.afi, mp_attr.safi,
                tuple(mp_attr.next_hop_list))
        nexthop_octets = 16 * len(mp_attr.next_hop_list)
    else:
        head = ('unreach', index, mp_attr.afi, mp_attr.safi)
        nexthop_octets = 0
    # BGP header 19 + two length fields 4 + MP attribute header and fields 12.
    return (head, others), 35 + nexthop_octets + len(others)


def _mp_nlri_list(mp_attr):
    if mp_attr.type == BGP_ATTR_TYPE_MP_REACH_NLRI:
        return mp_attr.nlri
    return mp_attr.withdrawn_routes


def _nlri_octets(mp_attr, nlri):
    """An upper bound of the octets ``nlri`` takes in the message."""
    if (mp_attr.afi, mp_attr.safi) == (RF_L2_EVPN.afi, RF_L2_EVPN.safi):
        return _EVPN_NLRI_MAX_OCTETS * len(nlri)
    return sum(len(n.serialize()) for n in nlri)


class _UpdatePacker:
    """Merges consecutive single-route UPDATEs whose attributes are equal."""

    def __init__(self, peer):
        self._peer = peer
        self._key = None
        self._update = None
        self._nlri = None
        self._octets = 0
        self._count = 0

    def add(self, update):
        key, base_octets = _packing_key(update)
        if key is None:
            self.flush()
            self._send(update)
            return
        mp_attr = _mp_attribute(update)[1]
        nlri = _mp_nlri_list(mp_attr)
        nlri_octets = _nlri_octets(mp_attr, nlri)
        if (self._update is not None and key == self._key
                and self._count < MAX_ROUTES_PER_UPDATE
                and self._octets + nlri_octets <= MAX_UPDATE_OCTETS):
            self._nlri.extend(nlri)
            self._octets += nlri_octets
            self._count += len(nlri)
            return
        self.flush()
        self._key = key
        self._update = update
        self._nlri = nlri
        self._octets = base_octets + nlri_octets
        self._count = len(nlri)

    def extend(self, nlri):
        """Append one more NLRI to the open UPDATE; False if none is open or it is full."""
        if self._update is None or self._count >= MAX_ROUTES_PER_UPDATE:
            return False
        octets = _nlri_octets(_mp_attribute(self._update)[1], [nlri])
        if self._octets + octets > MAX_UPDATE_OCTETS:
            return False
        self._nlri.append(nlri)
        self._octets += octets
        self._count += 1
        return True

    def flush(self):
        if self._update is None:
            return
        update, self._update = self._update, None
        self._send(update)

    def _send(self, update):
        peer = self._peer
        if peer._protocol is None:
            # The session went down while we were sending; the routes are
            # sent again with the initial UPDATEs of the next session.
            return
        peer._protocol.send(update)
        peer.state.incr(PeerCounterNames.SENT_UPDATES)


def _update_signature(path):
    """All that ``Peer._construct_update`` reads of ``path`` except its NLRI.

    Two paths with the same signature make UPDATEs that differ only in the
    NLRI, so the second one's NLRI can join the first's UPDATE without
    building (and serialising, to compare) a message of its own. The routes
    a reflector sends are mostly such runs: the paths made from one received
    UPDATE hold the same attribute objects (each path in a copy of the
    message's attribute dict). The path's class stands for its route family.
    None for IPv4 unicast (not MP-BGP: sent as upstream does).
    """
    if path.is_withdraw:
        return (True, type(path))
    if isinstance(path, Ipv4Path):
        return None
    return (False, type(path), id(path.source), path.nexthop,
            tuple(map(id, path._path_attr_map.values())))


def _shortcut_allowed(peer):
    """Per-peer options that make an UPDATE depend on more than the signature
    (attribute maps, SoO lists: we set neither) rule the shortcut out."""
    return not (peer._attribute_maps or peer._neigh_conf.soo_list)


def _send_outgoing_routes(peer, outgoing_routes):
    """``Peer._send_outgoing_route`` for several routes, packed.

    The bookkeeping per route (out filter, Adj-RIB-out, signal, sent route)
    is upstream's; only the UPDATE messages are merged. A route whose
    ``_update_signature`` equals the previous one's only adds its NLRI.
    """
    packer = _UpdatePacker(peer)
    table_manager = peer._core_service.table_manager
    last_path, last_signature = None, None  # last_path keeps the objects of the ids alive
    shortcut = _shortcut_allowed(peer)
    for outgoing_route in outgoing_routes:
        path = outgoing_route.path
        block, blocked_cause = peer._apply_out_filter(path)
        sent_route = SentRoute(path, peer, block)
        peer._adj_rib_out[path.nlri.formatted_nlri_str] = sent_route
        peer._signal_bus.adj_rib_out_changed(peer, sent_route)
        if block:
            LOG.debug('prefix %s is not sent by filter %s',
                      path.nlri, blocked_cause)
        elif peer._protocol is not None:
            signature = _update_signature(path) if shortcut else None
            if signature is None or signature != last_signature or not packer.extend(path.nlri):
                packer.add(peer._construct_update(outgoing_route))
                last_path, last_signature = path, signature
        if not path.is_withdraw and not outgoing_route.for_route_refresh:
            table_manager.remember_sent_route(sent_route)
    packer.flush()


def _process_outgoing_msg_list_packed(self):
    """Upstream ``Peer._process_outgoing_msg_list``, routes taken in batches."""
    pending = None
    while True:
        outgoing_msg, pending = pending, None
        if outgoing_msg is None and self._protocol is not None:
            outgoing_msg = self.outgoing_msg_list.pop_first()
        if outgoing_msg is None:
            self.outgoing_msg_event.clear()
            self.outgoing_msg_event.wait()
            continue

        if isinstance(outgoing_msg, OutgoingRoute):
            batch = [outgoing_msg]
            while len(batch) < MAX_ROUTES_PER_UPDATE:
                following = self.outgoing_msg_list.pop_first()
                if following is None:
                    break
                if not isinstance(following, OutgoingRoute):
                    pending = following
                    break
                batch.append(following)
            _send_outgoing_routes(self, batch)
        elif isinstance(outgoing_msg, BGPRouteRefresh):
            self._send_outgoing_route_refresh_msg(outgoing_msg)
        elif isinstance(outgoing_msg, BGPUpdate):
            # End-of-RIB markers are queued as plain UPDATEs.
            self._protocol.send(outgoing_msg)
            self.state.incr(PeerCounterNames.SENT_UPDATES)
        else:
            raise AssertionError('Peer cannot process object: %s in its '
                                 'outgoing queue' % (outgoing_msg,))


def patch_update_packing():
    """Send up to 64 consecutive routes with equal attributes per UPDATE.

    Upstream ``Peer._process_outgoing_msg_list`` pops one ``OutgoingRoute``
    at a time and ``_send_outgoing_route`` builds one UPDATE per route (see
    its "TODO(PH): optimized by sending several prefixes per update"). We
    pop up to 64 queued routes, do upstream's per-route bookkeeping, build
    each UPDATE with upstream's ``_construct_update``, and merge consecutive
    MP-BGP UPDATEs whose other attributes serialise to the same bytes (never
    above 4096 octets). Order on the wire is preserved. Measured: see
    ``MAX_ROUTES_PER_UPDATE`` (an earlier prototype: 14.7 s -> 6.8 s,
    reflector memory 150 MB -> 90 MB, and FRR 8.4 accepted its UPDATEs).
    Applies to peers started after the call.
    """
    return _replace(Peer, '_process_outgoing_msg_list',
                    _process_outgoing_msg_list_packed)


# --- RouteFamily str() ---------------------------------------------------------

def _route_family_str_cached(self):
    try:
        return self._megalos_str
    except AttributeError:
        text = _ORIGINALS[(RouteFamily, '__str__')](self)
        self._megalos_str = text  # '_' names are left out of stringify
        return text


def patch_route_family_str():
    """Compute ``str(RouteFamily)`` once per route family object.

    ``TableCoreManager.import_single_vpn_path_to_all_vrfs`` builds a key with
    ``str(route_family)`` for every best-path change, on every node and on
    the reflector. ``RouteFamily`` inherits ``StringifyMixin.__str__``,
    which walks the object with ``inspect.getmembers``: ~0.45 ms a call,
    a third of a speaker's CPU per originated route (profiled: 4.7 s of
    14 s for 5000 MACs added and withdrawn; 10k MACs through the reflector:
    8.6 s -> 6.9 s to learn, 4.4 s -> 3.0 s to withdraw). The text is the
    same; route families are immutable singletons, so caching it is safe.
    """
    return _replace(RouteFamily, '__str__', _route_family_str_cached)


# --- TCP MD5 with a str password --------------------------------------------

def _set_tcp_md5sig_any_key(sock, addr, key):
    if isinstance(key, str):
        key = key.encode()
    return _ORIGINALS[(sockopt, 'set_tcp_md5sig')](sock, addr, key)


def patch_md5_str_password():
    """Accept a ``str`` MD5 password.

    ``os_ken.lib.sockopt.set_tcp_md5sig`` packs the key with ``struct``
    ``'80s'``, which takes only ``bytes``: a ``str`` password raises
    ``struct.error`` when the peer is added. A ``bytes`` password gets
    further but then ``neighbor_state_get`` cannot serialise the neighbour
    settings and ``neighbor_del`` clears the key with the ``str`` ``''``
    and fails. Encoding ``str`` keys (UTF-8) at the one place they reach the
    socket makes a ``str`` password work everywhere.
    """
    return _replace(sockopt, 'set_tcp_md5sig', _set_tcp_md5sig_any_key)


# --- peer up: the address, not the router id ---------------------------------

def _notify_peer_up_with_address(self, peer):
    if self._peer_up_handler:
        self._peer_up_handler(peer.ip_address, peer.remote_as)


def patch_peer_up_address():
    """Give ``peer_up_handler`` the peer's address, as ``peer_down_handler``.

    ``BGPSpeaker._notify_peer_up`` passes the BGP identifier from the
    peer's OPEN (its router id) while ``_notify_peer_down`` passes the
    configured address: up and down events would name a peer differently
    whenever router id and peering address differ.
    """
    return _replace(bgpspeaker.BGPSpeaker, '_notify_peer_up',
                    _notify_peer_up_with_address)


def _clone_path_keeping_absent_med(path, med):
    if not med:
        return path  # no MED configured for the neighbour: nothing to set
    return original(peer_manager, 'clone_path_and_update_med_for_target_neighbor')(path, med)


def patch_route_refresh_without_med():
    """Answer a ROUTE-REFRESH for paths that carry no MED without dropping the session.

    ``PeerManager.resend_sent`` re-sends every route already sent to the peer and, for a path
    without a MED, calls ``clone_path_and_update_med_for_target_neighbor(path, peer.med)``,
    which asserts that the MED is set. EVPN routes have none, so the reflector's answer to a
    refresh raised AssertionError and it reset the session. A node's speaker sends a refresh
    each time it adds a VRF (a pod on a new LAN): every such ADD flapped the node's session
    and, on the other nodes, withdrew and re-learned all of its MACs.
    """
    return _replace(peer_manager, 'clone_path_and_update_med_for_target_neighbor',
                    _clone_path_keeping_absent_med)


def _validate_update_msg_vtep_next_hop(self, update_msg):
    validate = original(bgp_peer.Peer, '_validate_update_msg')
    mp_reach = update_msg.get_path_attr(BGP_ATTR_TYPE_MP_REACH_NLRI)
    local = self._host_bind_ip
    if (mp_reach is None or mp_reach.route_family != RF_L2_EVPN
            or not local or mp_reach.next_hop != local):
        return validate(self, update_msg)
    self._host_bind_ip = None  # no yield until restored: eventlet switches only on I/O
    try:
        return validate(self, update_msg)
    finally:
        self._host_bind_ip = local


def patch_evpn_next_hop_local():
    """Accept EVPN routes whose next hop is the address this session is bound to.

    ``Peer._validate_update_msg`` drops an UPDATE whose MP_REACH next hop equals the local
    address of the session (a loop guard for IP routes). An EVPN next hop is a VTEP: in
    Kubernetes the reflector runs in the host network of a node whose agent announces that
    node's address as its VTEP, so the reflector threw away every route of its own node and
    LANs through that node broke whenever no second reflector carried them. Reflector role
    only: a node must keep dropping its own routes that a reflector (FRR does) sends back.
    """
    return _replace(bgp_peer.Peer, '_validate_update_msg', _validate_update_msg_vtep_next_hop)


def _is_looped_path_attrs_own_originator(self, update_msg):
    originator = update_msg.pathattr_map.get(BGP_ATTR_TYPE_ORIGINATOR_ID)
    if originator is not None and originator.value == self._common_conf.router_id:
        LOG.debug('ignoring an UPDATE from %s: it reflects our own routes', self.ip_address)
        return True
    return original(Peer, '_is_looped_path_attrs')(self, update_msg)


def patch_originator_id_loop_check():
    """Ignore routes whose ORIGINATOR_ID is our own router id (RFC 4456, section 8).

    ``Peer._is_looped_path_attrs`` compares the ORIGINATOR_ID with the *peer's* BGP
    identifier (``recv_open_msg.bgp_identifier``), so our own routes reflected back to us
    are kept. FRR's reflector sends a client's routes back to it (one update group for all
    clients). A node drops them today only because its next-hop check refuses its own
    address (``patch_evpn_next_hop_local`` is reflector-only for that reason); kept in the RIB,
    the reflected copy became the best path when we withdrew ours and the withdrawal was never
    sent: deleted pods' MACs stayed announced behind an FRR reflector.
    """
    return _replace(Peer, '_is_looped_path_attrs', _is_looped_path_attrs_own_originator)


# --- reflector: received EVPN NLRIs keep their wire bytes ----------------------------

def _evpn_parser_keeping_wire(cls, buf):
    nlri, rest = _ORIGINALS[(EvpnNLRI, 'parser')].__func__(cls, buf)
    nlri._megalos_wire = bytes(buf[:len(buf) - len(rest)])  # '_' names stay out of str()
    return nlri, rest


def _evpn_serialize_from_wire(self):
    wire = self.__dict__.get('_megalos_wire')
    if wire is None:
        return _ORIGINALS[(EvpnNLRI, 'serialize')](self)
    return wire


def _evpn_prefix_cached(self):
    """The prefix text of a received NLRI (its RIB key), formatted once."""
    cached = self.__dict__.get('_megalos_prefix')
    if cached is None:
        cached = _ORIGINALS[(EvpnNLRI, 'prefix')].fget(self)
        if '_megalos_wire' in self.__dict__:
            self._megalos_prefix = cached
    return cached


def patch_evpn_nlri_wire_cache():
    """Send a received EVPN NLRI as the bytes it arrived in; format its prefix once.

    A reflector forwards every NLRI unchanged to each other client, and os-ken
    serialises it again for each (``EvpnNLRI.serialize``: 14 % of the reflector's
    CPU for 10k MACs) and formats its prefix text (the RIB and Adj-RIB keys) over
    and over. A parsed NLRI now keeps its wire bytes; ``serialize`` returns them
    and ``prefix`` is computed once for it. NLRIs made locally (no wire bytes) go
    through upstream's code. Reflector role only: there nothing changes a received
    NLRI (no VRF imports them); a node's VRFs may.
    """
    changed = _replace(EvpnNLRI, 'parser', classmethod(_evpn_parser_keeping_wire))
    changed |= _replace(EvpnNLRI, 'serialize', _evpn_serialize_from_wire)
    # the property object itself, not what getattr on the class would give for a classmethod
    changed |= _replace(EvpnNLRI, 'prefix', property(_evpn_prefix_cached))
    return changed


def apply_all():
    """Apply every in-place fix (idempotent). Reflector-only fixes are applied by the BGP
    process at start in that role: ``patch_evpn_next_hop_local``,
    ``patch_evpn_nlri_wire_cache``, ``enable_restart_grace``."""
    patch_originator_id_loop_check()
    patch_route_refresh_without_med()
    patch_rib_identity_compare()
    patch_route_family_str()
    patch_update_packing()
    patch_md5_str_password()
    patch_peer_up_address()


# --- helpers -----------------------------------------------------------------

def delete_neighbor(speaker, address):
    """``speaker.neighbor_del(address)`` that also removes the peer's routes.

    Upstream ``neighbor_del`` disables the neighbour, whose
    ``on_update_enabled`` stops the protocol and sets ``_protocol = None``
    before ``connection_lost`` can run; so the version bump and
    ``PeerManager.on_peer_down`` (which cleans the peer's paths) never
    happen and the routes stay in the RIB (and at every peer we reflected
    them to) forever. We do what ``connection_lost`` would: bump the peer's
    version and run ``table_manager.clean_stale_routes(peer)``, which
    withdraws every path from this peer with an older version.

    Returns False when no such neighbour was configured.
    """
    core = CORE_MANAGER.get_core_service()
    peer = core.peer_manager.get_by_addr(address)
    if peer is None:
        return False
    speaker.neighbor_del(address)
    peer.version_num += 1
    core.table_manager.clean_stale_routes(peer)
    return True


_CONNECT_MODES = {
    'active': neighbors.CONNECT_MODE_ACTIVE,
    'passive': neighbors.CONNECT_MODE_PASSIVE,
    'both': neighbors.CONNECT_MODE_BOTH,
}


def connect_mode(name):
    """The os-ken constant for 'active', 'passive' or 'both'.

    os-ken compares ``connect_mode`` with ``is`` (``Peer._on_update_connect_mode``,
    ``CoreService`` on incoming connections): a 'passive' string read from
    JSON is a different object than ``CONNECT_MODE_PASSIVE`` and silently
    behaves as 'both'. Pass the library's own object.
    """
    try:
        return _CONNECT_MODES[name]
    except KeyError:
        raise ValueError('connect_mode must be one of %s, not %r'
                         % (', '.join(sorted(_CONNECT_MODES)), name)) from None


def set_hold_time(address, hold_time):
    """Set the hold time we offer to neighbour ``address``.

    ``BGPSpeaker.neighbor_add`` has no hold time argument (the default is
    40 s) and os-ken's validator refuses anything under 10 s, while RFC 4271
    allows 3 s and fast failure detection needs it. The OPEN message reads
    the neighbour configuration when the connection is made, so call this
    right after ``neighbor_add``, before yielding to the hub. The keepalive
    interval is not configurable: os-ken sends one every negotiated hold
    time // 3 seconds.
    """
    hold_time = int(hold_time)
    if hold_time != 0 and hold_time < 3:
        raise ValueError('hold time must be 0 or at least 3 s, not %d'
                         % hold_time)
    conf = CORE_MANAGER.neighbors_conf.get_neighbor_conf(address)
    if conf is None:
        raise ValueError('no neighbor %s' % address)
    conf._settings[HOLD_TIME] = hold_time


def set_connect_retry(seconds):
    """Set how long os-ken waits between attempts to open a session (default 30 s).

    ``BGPSpeaker`` has no argument for it and the validator refuses anything under 10 s. The
    reflector dials its nodes: with 30 s a restarted agent waited up to half a minute for its
    session, while its routes were withdrawn everywhere. The connect loop reads the value on
    every pause, so setting it after the speaker started applies to all peers.

    Note that ``Peer._connect_loop`` pauses this long after *every* attempt,
    successful or not, before it looks again: a dropped session is dialled
    again at most (this + 1) s later.
    """
    seconds = int(seconds)
    if seconds < 1:
        raise ValueError('connect retry must be at least 1 s, not %d' % seconds)
    CORE_MANAGER.common_conf._settings['bgp_conn_retry_time'] = seconds


# --- restart grace (reflector role) -------------------------------------------

HOLD_TIMER_EXPIRED_REASON = 'Negotiated hold time'
_restart_grace = {'seconds': 0.0}


def _connection_lost_remembering_reason(self, reason):
    self._megalos_lost_reason = reason or ''
    return original(Peer, 'connection_lost')(self, reason)


def _forget_sent_routes(table_manager, peer):
    """What upstream's cleanup does for routes *sent to* the peer: they died with the session."""
    for table in table_manager._global_tables.values():
        for dest in table.values():
            dest.remove_sent_route(peer)


def _clean_learned_paths(table_manager, peer):
    """What upstream's cleanup does for paths *learned from* the peer: drop those older than
    its current version (those it did not announce again since)."""
    for table in table_manager._global_tables.values():
        for dest in table.values():
            if dest.remove_old_paths_from_source(peer):
                table._signal_bus.dest_changed(dest)


def _on_peer_down_with_grace(self, peer):
    """Clean the peer's routes now after a hold-timer expiry, later after a closed session."""
    reason = getattr(peer, '_megalos_lost_reason', '')
    seconds = _restart_grace['seconds']
    if not seconds or reason.startswith(HOLD_TIMER_EXPIRED_REASON):
        return original(PeerManager, 'on_peer_down')(self, peer)
    LOG.info('peer %s closed its session: keeping its routes %.0f s for a restart',
             peer.ip_address, seconds)
    # Sent-route records must go now: deferred, they would erase what the next session sent.
    _forget_sent_routes(self._table_manager, peer)
    from os_ken.lib import hub
    hub.spawn_after(seconds, _clean_learned_paths, self._table_manager, peer)


def enable_restart_grace(seconds):
    """Keep a peer's routes ``seconds`` after its session *closes*; not after a hold expiry.

    Upstream, ``Peer.connection_lost`` bumps the peer's version and
    ``PeerManager.on_peer_down`` withdraws every route of the peer at once,
    everywhere. A node agent that restarts closes its session and is back a
    few seconds later with the same routes: without this, every other node
    lost its MACs meanwhile and the traffic of existing pods stopped. The
    cleanup is the upstream one, deferred: it removes only paths older than
    the peer's current version, so what the restarted peer announced again
    stays, and what it did not is withdrawn when the grace ends. A peer that
    goes silent (hold timer expiry: partition, frozen node) is cleaned at
    once, as upstream does; a dead one after at most ``seconds``.
    """
    seconds = float(seconds)
    if seconds < 0:
        raise ValueError('restart grace must be >= 0, not %s' % seconds)
    _restart_grace['seconds'] = seconds
    _replace(Peer, 'connection_lost', _connection_lost_remembering_reason)
    _replace(PeerManager, 'on_peer_down', _on_peer_down_with_grace)
