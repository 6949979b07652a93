"""os-ken's per-route costs, cut where our use is narrow (EVPN only, iBGP, one originator per
MAC). Each function applies one change, is idempotent, and says in its docstring what upstream
does and what we measured; tests/test_osken_compat.py checks upstream still behaves that way and
that each change sends the same routes (byte for byte where it matters).

Applied by bgp.osken_compat.apply_all (every role) and apply_reflector_fixes (reflector role:
`patch_evpn_nlri_wire_cache`). Import only in the BGP process, after eventlet's monkey patching.
"""
from __future__ import annotations

import logging

from os_ken.lib.packet.bgp import (BGP_ATTR_TYPE_MP_REACH_NLRI, BGP_ATTR_TYPE_MP_UNREACH_NLRI,
                                   RF_L2_EVPN, BGPRouteRefresh, BGPUpdate, EvpnNLRI, RouteFamily)
from os_ken.services.protocols.bgp.info_base.ipv4 import Ipv4Path
from os_ken.services.protocols.bgp.model import OutgoingRoute, SentRoute
from os_ken.services.protocols.bgp.peer import Peer, PeerCounterNames
from os_ken.services.protocols.bgp.utils.circlist import CircularListType

from bgp.osken_patch import original, replace

log = logging.getLogger(__name__)

# Routes per UPDATE (FRR packs about 100). Measured here, 10k MACs from a
# speaker through the reflector to another speaker, all other fixes on:
# 13.0 s -> 6.9 s to learn them, 13.5 s -> 3.0 s to withdraw them.
MAX_ROUTES_PER_UPDATE = 64
# RFC 4271 caps a BGP message at 4096 octets; keep a margin for our estimate.
MAX_UPDATE_OCTETS = 4096 - 96
# The longest EVPN NLRI (Type-5 with IPv6 prefix and gateway): counting this
# instead of serialising each NLRI twice saves ~20% of the sender's CPU.
_EVPN_NLRI_MAX_OCTETS = 2 + 8 + 10 + 4 + 1 + 16 + 16 + 3


# --- RIB: identity instead of equality --------------------------------------

def _node_is_on_list_by_identity(self, node):
    next_ = self.node_next(node)
    if next_ is node or next_ is None:
        assert self.node_prev(node) is next_
        return False
    return True


def patch_rib_identity_compare() -> bool:
    """Compare circular-list nodes by identity.

    ``CircularListType.node_is_on_list`` (os_ken/.../bgp/utils/circlist.py)
    tests ``next == node``. The nodes are RIB destinations and outgoing
    routes whose equality goes through ``str()``: about 70% of the CPU of
    receiving routes. A node is on a list unless it links to itself, which
    is a question of identity. Measured: 10k MACs received 62 s -> 14.5 s.
    """
    return replace(CircularListType, 'node_is_on_list',
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
            log.debug('prefix %s is not sent by filter %s',
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
            raise AssertionError(f"Peer cannot process object: {outgoing_msg} in its outgoing queue")


def patch_update_packing() -> bool:
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
    return replace(Peer, '_process_outgoing_msg_list',
                    _process_outgoing_msg_list_packed)


# --- RouteFamily str() ---------------------------------------------------------

def _route_family_str_cached(self):
    try:
        return self._megalos_str
    except AttributeError:
        text = original(RouteFamily, '__str__')(self)
        self._megalos_str = text  # '_' names are left out of stringify
        return text


def patch_route_family_str() -> bool:
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
    return replace(RouteFamily, '__str__', _route_family_str_cached)


# --- reflector: received EVPN NLRIs keep their wire bytes ----------------------------

def _evpn_parser_keeping_wire(cls, buf):
    nlri, rest = original(EvpnNLRI, 'parser').__func__(cls, buf)
    nlri._megalos_wire = bytes(buf[:len(buf) - len(rest)])  # '_' names stay out of str()
    return nlri, rest


def _evpn_serialize_from_wire(self):
    wire = self.__dict__.get('_megalos_wire')
    if wire is None:
        return original(EvpnNLRI, 'serialize')(self)
    return wire


def _evpn_prefix_cached(self):
    """The prefix text of a received NLRI (its RIB key), formatted once."""
    cached = self.__dict__.get('_megalos_prefix')
    if cached is None:
        cached = original(EvpnNLRI, 'prefix').fget(self)
        if '_megalos_wire' in self.__dict__:
            self._megalos_prefix = cached
    return cached


def patch_evpn_nlri_wire_cache() -> bool:
    """Send a received EVPN NLRI as the bytes it arrived in; format its prefix once.

    A reflector forwards every NLRI unchanged to each other client, and os-ken
    serialises it again for each (``EvpnNLRI.serialize``: 14 % of the reflector's
    CPU for 10k MACs) and formats its prefix text (the RIB and Adj-RIB keys) over
    and over. A parsed NLRI now keeps its wire bytes; ``serialize`` returns them
    and ``prefix`` is computed once for it. NLRIs made locally (no wire bytes) go
    through upstream's code. Reflector role only: there nothing changes a received
    NLRI (no VRF imports them); a node's VRFs may.
    """
    changed = replace(EvpnNLRI, 'parser', classmethod(_evpn_parser_keeping_wire))
    changed |= replace(EvpnNLRI, 'serialize', _evpn_serialize_from_wire)
    # the property object itself, not what getattr on the class would give for a classmethod
    changed |= replace(EvpnNLRI, 'prefix', property(_evpn_prefix_cached))
    return changed
