"""Every fix Megalos makes to os-ken 4.2.2's behaviour, and the helpers that replace a broken or
missing API. The fixes for its per-route costs are in bgp.osken_throughput; both record what they
replace in bgp.osken_patch.

Each function applies exactly one fix, is idempotent, and says in its docstring what is wrong
upstream and how we measured it. The tests in tests/test_osken_compat.py assert that the
*unpatched* upstream code still behaves the way each fix assumes, so an os-ken upgrade that fixes
(or moves) something makes a test fail instead of silently double-patching.

Import only in the BGP process, after OSKEN_HUB_TYPE=eventlet is set and eventlet.monkey_patch()
ran (importing os_ken fixes the hub type). The agent side never imports it (setup.cfg's contract).

Fixes that patch os-ken in place (`apply_all` applies them, and bgp.osken_throughput's, once, at
start-up, before the BGPSpeaker exists):

- `patch_md5_str_password`: TCP MD5 needs a bytes key.
- `patch_peer_up_address`: peer_up_handler gets the router id.
- `patch_route_refresh_without_med`: a ROUTE-REFRESH kills the session.
- `patch_originator_id_loop_check`: our own routes reflected back are kept.
- `patch_pending_paths_replaced`: a route announced twice before its destination is processed
  keeps the first version, and a stale copy that outlives its withdrawal.

Reflector role only (`apply_reflector_fixes`): `patch_evpn_next_hop_local` (EVPN routes whose VTEP
is the session's local address are dropped) and the NLRI wire cache; `enable_restart_grace`
(os-ken has no graceful restart: keep a peer's routes a while when its session closes).

Helpers: `delete_neighbor` (neighbor_del leaves the peer's routes in the RIB), `connect_mode`
(compared with `is`), `set_hold_time` and `set_connect_retry` (not settable through BGPSpeaker),
`originate_evpn` (evpn_prefix_add with extended communities of our own: the claims of
bgp.claims).

Why one module of ~430 lines: one short function per fix, each with its measurement, listed
above; tests/test_osken_compat.py mirrors it fix by fix. The throughput fixes live apart
(bgp.osken_throughput).
"""
from __future__ import annotations

import logging

from os_ken.lib import sockopt
from os_ken.lib.packet.bgp import (BGP_ATTR_TYPE_EXTENDED_COMMUNITIES, BGP_ATTR_TYPE_MP_REACH_NLRI,
                                    BGP_ATTR_TYPE_ORIGINATOR_ID, RF_L2_EVPN,
                                    BGPPathAttributeExtendedCommunities, _ExtendedCommunity)
from os_ken.services.protocols.bgp import bgpspeaker
from os_ken.services.protocols.bgp import peer as bgp_peer
from os_ken.services.protocols.bgp.core_manager import CORE_MANAGER
from os_ken.services.protocols.bgp.core_managers import peer_manager
from os_ken.services.protocols.bgp.core_managers.peer_manager import PeerManager
from os_ken.services.protocols.bgp.info_base.base import Destination
from os_ken.services.protocols.bgp.info_base.vrf import VrfDest
from os_ken.services.protocols.bgp.info_base.vrfevpn import VrfEvpnTable
from os_ken.services.protocols.bgp.peer import Peer
from os_ken.services.protocols.bgp.rtconf import neighbors
from os_ken.services.protocols.bgp.rtconf.base import HOLD_TIME

from bgp import osken_throughput
from bgp.osken_patch import original, replace

log = logging.getLogger(__name__)

# --- TCP MD5 with a str password --------------------------------------------

def _set_tcp_md5sig_any_key(sock, addr, key):
    if isinstance(key, str):
        key = key.encode()
    return original(sockopt, 'set_tcp_md5sig')(sock, addr, key)


def patch_md5_str_password() -> bool:
    """Accept a ``str`` MD5 password.

    ``os_ken.lib.sockopt.set_tcp_md5sig`` packs the key with ``struct``
    ``'80s'``, which takes only ``bytes``: a ``str`` password raises
    ``struct.error`` when the peer is added. A ``bytes`` password gets
    further but then ``neighbor_state_get`` cannot serialise the neighbour
    settings and ``neighbor_del`` clears the key with the ``str`` ``''``
    and fails. Encoding ``str`` keys (UTF-8) at the one place they reach the
    socket makes a ``str`` password work everywhere.
    """
    return replace(sockopt, 'set_tcp_md5sig', _set_tcp_md5sig_any_key)


# --- peer up: the address, not the router id ---------------------------------

def _notify_peer_up_with_address(self, peer):
    if self._peer_up_handler:
        self._peer_up_handler(peer.ip_address, peer.remote_as)


def patch_peer_up_address() -> bool:
    """Give ``peer_up_handler`` the peer's address, as ``peer_down_handler``.

    ``BGPSpeaker._notify_peer_up`` passes the BGP identifier from the
    peer's OPEN (its router id) while ``_notify_peer_down`` passes the
    configured address: up and down events would name a peer differently
    whenever router id and peering address differ.
    """
    return replace(bgpspeaker.BGPSpeaker, '_notify_peer_up',
                    _notify_peer_up_with_address)


def _clone_path_keeping_absent_med(path, med):
    if not med:
        return path  # no MED configured for the neighbour: nothing to set
    return original(peer_manager, 'clone_path_and_update_med_for_target_neighbor')(path, med)


def patch_route_refresh_without_med() -> bool:
    """Answer a ROUTE-REFRESH for paths that carry no MED without dropping the session.

    ``PeerManager.resend_sent`` re-sends every route already sent to the peer and, for a path
    without a MED, calls ``clone_path_and_update_med_for_target_neighbor(path, peer.med)``,
    which asserts that the MED is set. EVPN routes have none, so the reflector's answer to a
    refresh raised AssertionError and it reset the session. A node's speaker sends a refresh
    each time it adds a VRF (a pod on a new LAN): every such ADD flapped the node's session
    and, on the other nodes, withdrew and re-learned all of its MACs.
    """
    return replace(peer_manager, 'clone_path_and_update_med_for_target_neighbor',
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


def patch_evpn_next_hop_local() -> bool:
    """Accept EVPN routes whose next hop is the address this session is bound to.

    ``Peer._validate_update_msg`` drops an UPDATE whose MP_REACH next hop equals the local
    address of the session (a loop guard for IP routes). An EVPN next hop is a VTEP: in
    Kubernetes the reflector runs in the host network of a node whose agent announces that
    node's address as its VTEP, so the reflector threw away every route of its own node and
    LANs through that node broke whenever no second reflector carried them. Reflector role
    only: a node must keep dropping its own routes that a reflector (FRR does) sends back.
    """
    return replace(bgp_peer.Peer, '_validate_update_msg', _validate_update_msg_vtep_next_hop)


def _is_looped_path_attrs_own_originator(self, update_msg):
    originator = update_msg.pathattr_map.get(BGP_ATTR_TYPE_ORIGINATOR_ID)
    if originator is not None and originator.value == self._common_conf.router_id:
        log.debug('ignoring an UPDATE from %s: it reflects our own routes', self.ip_address)
        return True
    return original(Peer, '_is_looped_path_attrs')(self, update_msg)


def patch_originator_id_loop_check() -> bool:
    """Ignore routes whose ORIGINATOR_ID is our own router id (RFC 4456, section 8).

    ``Peer._is_looped_path_attrs`` compares the ORIGINATOR_ID with the *peer's* BGP
    identifier (``recv_open_msg.bgp_identifier``), so our own routes reflected back to us
    are kept. FRR's reflector sends a client's routes back to it (one update group for all
    clients). A node drops them today only because its next-hop check refuses its own
    address (``patch_evpn_next_hop_local`` is reflector-only for that reason); kept in the RIB,
    the reflected copy became the best path when we withdrew ours and the withdrawal was never
    sent: deleted pods' MACs stayed announced behind an FRR reflector.
    """
    return replace(Peer, '_is_looped_path_attrs', _is_looped_path_attrs_own_originator)


def _same_origin(dest, pending, newer) -> bool:
    """Whether `newer` replaces `pending` in `dest`, by the destination's own rule (its
    _remove_old_paths and _remove_withdrawals): the source, or in a VRF the path's puid."""
    if isinstance(dest, VrfDest):
        return pending.puid == newer.puid
    return pending.source == newer.source


def _add_new_path_replacing_pending(self, new_path):
    original(Destination, 'add_new_path')(self, new_path)
    self._new_path_list[:-1] = [p for p in self._new_path_list[:-1]
                                if not _same_origin(self, p, new_path)]


def _add_withdraw_cancelling_pending(self, withdraw):
    original(Destination, 'add_withdraw')(self, withdraw)
    self._new_path_list[:] = [p for p in self._new_path_list if not _same_origin(self, p, withdraw)]


def patch_pending_paths_replaced() -> bool:
    """A path (or a withdrawal) replaces the path of the same origin still waiting in its
    destination's list of new paths.

    ``Destination.add_new_path`` appends to ``_new_path_list`` and the destination is processed
    later (``_process_paths``): a known path is replaced by a new one of the same source
    (``_remove_old_paths``), but two new ones of the same source both become known paths, and
    the best-path run keeps the first. A route originated twice in one slice of the hub (a MAC
    announced when the bridge learned it, then again naming its pod) went out with the first
    version; worse, a withdrawal removes one known path of its source only, so the other copy
    stayed announced after the route was withdrawn. A withdrawal queued after a new path is
    processed before it (``_remove_withdrawals`` runs first) and was lost the same way: here it
    cancels the pending path. The rule for "the same origin" is each destination's own.
    """
    replaced = replace(Destination, 'add_new_path', _add_new_path_replacing_pending)
    return replace(Destination, 'add_withdraw', _add_withdraw_cancelling_pending) or replaced


def apply_all() -> None:
    """Apply every in-place fix of every role (idempotent)."""
    patch_originator_id_loop_check()
    patch_pending_paths_replaced()
    patch_route_refresh_without_med()
    patch_md5_str_password()
    patch_peer_up_address()
    osken_throughput.patch_rib_identity_compare()
    osken_throughput.patch_route_family_str()
    osken_throughput.patch_update_packing()


def apply_reflector_fixes() -> None:
    """The fixes of the reflector role (idempotent): a node must keep dropping its own routes
    that a reflector sends back, and a node's VRFs may change a received NLRI."""
    patch_evpn_next_hop_local()
    osken_throughput.patch_evpn_nlri_wire_cache()


# --- helpers -----------------------------------------------------------------

def delete_neighbor(speaker, address: str) -> bool:
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


def connect_mode(name: str):
    """The os-ken constant for 'active', 'passive' or 'both'.

    os-ken compares ``connect_mode`` with ``is`` (``Peer._on_update_connect_mode``,
    ``CoreService`` on incoming connections): a 'passive' string read from
    JSON is a different object than ``CONNECT_MODE_PASSIVE`` and silently
    behaves as 'both'. Pass the library's own object.
    """
    try:
        return _CONNECT_MODES[name]
    except KeyError:
        raise ValueError(f"connect_mode must be one of {', '.join(sorted(_CONNECT_MODES))}, "
                         f"not {name!r}") from None


def set_hold_time(address: str, hold_time: int) -> None:
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
        raise ValueError(f"hold time must be 0 or at least 3 s, not {hold_time}")
    conf = CORE_MANAGER.neighbors_conf.get_neighbor_conf(address)
    if conf is None:
        raise ValueError(f"no neighbor {address}")
    conf._settings[HOLD_TIME] = hold_time


def set_connect_retry(seconds: int) -> None:
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
        raise ValueError(f"connect retry must be at least 1 s, not {seconds}")
    CORE_MANAGER.common_conf._settings['bgp_conn_retry_time'] = seconds


# --- extended communities of our own on the routes we originate ---------------

_ORIGINATING: dict = {}  # while originate_evpn runs: route_dist and the communities to add


def _insert_with_our_communities(self, path):
    """VrfEvpnTable.insert, adding the communities `originate_evpn` was given to the path it
    inserts (only that VRF's, and not to a withdrawal)."""
    extra = _ORIGINATING.get("communities")
    if extra and not path.is_withdraw and path.nlri.route_dist == _ORIGINATING["route_dist"]:
        attrs = path._path_attr_map  # the path's own map: `pathattr_map` is a copy
        have = attrs.get(BGP_ATTR_TYPE_EXTENDED_COMMUNITIES)
        attrs[BGP_ATTR_TYPE_EXTENDED_COMMUNITIES] = BGPPathAttributeExtendedCommunities(
            communities=list(have.communities if have else ()) + list(extra))
    return original(VrfEvpnTable, 'insert')(self, path)


def originate_evpn(speaker, communities: list[bytes], **route) -> None:
    """``speaker.evpn_prefix_add(**route)``, the route also carrying ``communities`` (extended
    communities, 8 octets each, after os-ken's own).

    ``BGPSpeaker.evpn_prefix_add`` takes no communities: ``VrfTable.insert_vrf_path`` builds the
    route's EXTENDED_COMMUNITIES from the VRF's export RTs, the encapsulation and the MAC
    mobility sequence only, and ``TableCoreManager.update_vrf_table`` passes nothing else on.
    The new path goes into the VRF table through ``VrfEvpnTable.insert`` (inherited from
    ``Table``), before any best-path run or export sees it: that is where ours are added. The
    path keeps them when it is copied into the global table and sent (os-ken keeps a community
    it does not know as BGPUnknownExtendedCommunity and serialises it back as it was).
    ``evpn_prefix_add`` does not yield to the hub between the call and the insert (no I/O), so
    no other origination can run while ours are pending.
    """
    parsed = [_ExtendedCommunity.parse(bytes(value))[0] for value in communities]
    replace(VrfEvpnTable, 'insert', _insert_with_our_communities)
    _ORIGINATING.update(route_dist=route["route_dist"], communities=parsed)
    try:
        speaker.evpn_prefix_add(**route)
    finally:
        _ORIGINATING.clear()


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


# Called with the peer after a deferred cleanup of its learned paths: routes kept outside
# os-ken's RIB (bgp.osken_fastpath) are cleaned the same way.
LEARNED_PATH_CLEANERS: list = []


def _clean_learned_paths(table_manager, peer):
    """What upstream's cleanup does for paths *learned from* the peer: drop those older than
    its current version (those it did not announce again since)."""
    for table in table_manager._global_tables.values():
        for dest in table.values():
            if dest.remove_old_paths_from_source(peer):
                table._signal_bus.dest_changed(dest)
    for clean in LEARNED_PATH_CLEANERS:
        clean(peer)


def withdraw_at_once(peer) -> None:
    """The session `peer` is about to lose gets no restart grace: we close it ourselves
    (bgp.osken_guard: too many routes), so its routes go at once."""
    peer._megalos_withdraw_at_once = True


def _on_peer_down_with_grace(self, peer):
    """Clean the peer's routes now after a hold-timer expiry (or a session we cut), later after
    a closed session."""
    reason = getattr(peer, '_megalos_lost_reason', '')
    at_once = getattr(peer, '_megalos_withdraw_at_once', False)
    peer._megalos_withdraw_at_once = False
    seconds = _restart_grace['seconds']
    if not seconds or at_once or reason.startswith(HOLD_TIMER_EXPIRED_REASON):
        return original(PeerManager, 'on_peer_down')(self, peer)
    log.info('peer %s closed its session: keeping its routes %.0f s for a restart',
             peer.ip_address, seconds)
    # Sent-route records must go now: deferred, they would erase what the next session sent.
    _forget_sent_routes(self._table_manager, peer)
    from os_ken.lib import hub
    hub.spawn_after(seconds, _clean_learned_paths, self._table_manager, peer)


def enable_restart_grace(seconds: float) -> None:
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
        raise ValueError(f"restart grace must be >= 0, not {seconds}")
    _restart_grace['seconds'] = seconds
    replace(Peer, 'connection_lost', _connection_lost_remembering_reason)
    replace(PeerManager, 'on_peer_down', _on_peer_down_with_grace)
