"""What a peer may send us, enforced inside os-ken (the rules are bgp.peer_rules').

- **The route limit** (both roles): the routes held from a peer are those of the wire path's
  table (``bgp.osken_fastpath``) and of os-ken's adj-RIB-in (whatever the wire path declines, and
  everything when it is off). Past the limit the peer is sent a NOTIFICATION Cease / Maximum
  Number of Prefixes Reached (RFC 4486 subcode 1, with AFI, SAFI and the limit as data), the
  session closes, its routes are withdrawn at once (not after the reflector's restart grace),
  the BGP process reports ``PeerState(reason=ROUTE_LIMIT)``, and the peer gets no session
  before its back-off ends: we do not dial it, and refuse its connections (Cease / Connection
  Rejected). os-ken's own ``max_prefixes`` only logs, and counts every prefix ever received, not
  those held (tests/test_osken_compat.py checks both).
- **The VTEP rule** (reflector role), on os-ken's path: the EVPN routes of an UPDATE whose next
  hop, Type-3 originator or PMSI tunnel endpoint is not the client's own address are taken out
  and withdrawn instead (RFC 7606's treat-as-withdraw); the BGP process reports
  ``RoutesRefused``. The wire path applies the same rule to what it takes.

Hooks (each a wrapper of one os-ken method, ``bgp.osken_patch``): ``Peer._handle_update_msg``
(count after each UPDATE os-ken handled), ``Peer._extract_and_handle_mpbgp_new_paths`` (the
VTEP rule), ``Peer._connect_tcp`` (wait out the back-off before dialling),
``CoreService.start_protocol`` (refuse a connection during it) and ``BgpProtocol.connection_lost``
(a session that ends empties the peer's adj-RIB-in: upstream keeps every route a peer ever sent
there, sessions after sessions, though its RIB drops them).
"""
from __future__ import annotations

import logging
import struct
import time

from os_ken.lib.packet.bgp import (BGP_ATTR_TYPE_MP_REACH_NLRI, BGP_ATTR_TYEP_PMSI_TUNNEL_ATTRIBUTE,
                                   BGP_ERROR_CEASE, BGP_ERROR_SUB_CONNECTION_RESET,
                                   BGP_ERROR_SUB_MAXIMUM_NUMBER_OF_PREFIXES_REACHED, RF_L2_EVPN,
                                   BGPNotification, BGPPathAttributeMpUnreachNLRI,
                                   MaxPrefixReached)
from os_ken.services.protocols.bgp.core import CoreService
from os_ken.services.protocols.bgp.peer import Peer
from os_ken.services.protocols.bgp.speaker import BgpProtocol

from bgp import osken_compat as compat
from bgp.osken_patch import original, replace
from bgp.peer_rules import Backoff, refusal
from bgp.protocol import ROUTE_LIMIT, RoutesRefused

LOG = logging.getLogger(__name__)
TYPE2, TYPE3 = "mac_ip_adv", "multicast_etag"  # os-ken's ROUTE_TYPE_NAME of Type-2 and Type-3


class RouteLimitReached(MaxPrefixReached):
    """Raised in the receive path: the NOTIFICATION (with its data) is already sent, so the
    protocol only closes the socket (SEND_ERROR False) and the session ends."""
    SEND_ERROR = False


class PeerGuard:
    """The route limit and the VTEP rule of one BGP process. `emit` takes its events; `limit` 0:
    none; `check_vteps`: the reflector role. `wire` is the wire path's table, once enabled."""

    def __init__(self, emit, limit: int, backoff: Backoff, check_vteps: bool,
                 clock=time.monotonic):
        self.emit = emit
        self.limit = limit
        self.backoff = backoff
        self.check_vteps = check_vteps
        self.clock = clock
        self.wire = None
        self.reasons: dict[str, str] = {}  # peer -> why we closed its session (for PeerState)

    # -- the route limit ------------------------------------------------------------------------
    def held(self, peer: Peer) -> int:
        """Routes held from `peer`: os-ken's adj-RIB-in and the wire path's table."""
        wire = self.wire.received.get(peer.ip_address, 0) if self.wire is not None else 0
        return len(peer._adj_rib_in) + wire

    def check_limit(self, peer: Peer) -> None:
        """Cut `peer` (raising RouteLimitReached) if it holds more routes than the limit."""
        if not self.limit:
            return
        held = self.held(peer)
        if held > self.limit:
            self.cut(peer, held)

    def cut(self, peer: Peer, held: int) -> None:
        address = peer.ip_address
        wait = self.backoff.cut(address, self.clock())
        LOG.error("peer %s sent %d routes, more than its limit of %d: session closed, its routes "
                  "withdrawn, no new session for %.0f s", address, held, self.limit, wait)
        self.reasons[address] = ROUTE_LIMIT
        compat.withdraw_at_once(peer)
        protocol = peer._protocol
        if protocol is not None and protocol.started:
            data = struct.pack("!HBI", RF_L2_EVPN.afi, RF_L2_EVPN.safi, min(self.limit, 2**32 - 1))
            protocol._send_with_lock(BGPNotification(
                BGP_ERROR_CEASE, BGP_ERROR_SUB_MAXIMUM_NUMBER_OF_PREFIXES_REACHED, data))
        raise RouteLimitReached(f"{held} routes held, limit {self.limit}")

    def down_reason(self, address: str) -> str:
        """Why we closed `address`'s session ("" if we did not), once."""
        return self.reasons.pop(address, "")

    def wait(self, address: str) -> float:
        return self.backoff.wait(address, self.clock())

    # -- the VTEP rule --------------------------------------------------------------------------
    def refused(self, address: str, next_hop: str, routes, claims) -> tuple[list, str]:
        """The routes of one UPDATE from client `address` that break the VTEP rule, and why the
        first did. `claims(route)` gives a route's (originator, endpoint); the next hop is the
        UPDATE's, checked once."""
        why = refusal(address, next_hop)
        if why:
            return list(routes), why
        refused, first = [], ""
        for route in routes:
            originator, endpoint = claims(route)
            if originator is None and endpoint is None:
                continue
            why = refusal(address, originator=originator, endpoint=endpoint)
            if why:
                refused.append(route)
                first = first or why
        return refused, first

    def report_refused(self, address: str, count: int, why: str) -> None:
        if count:
            self.emit(RoutesRefused(address, count, why[:300]))


# -- the hooks --------------------------------------------------------------------------------------

_guards: dict[str, PeerGuard] = {}


def _handle_update_msg_counted(self, update_msg):
    original(Peer, "_handle_update_msg")(self, update_msg)
    guard = _guards.get("on")
    if guard is not None:
        guard.check_limit(self)


def _osken_claims(pmsi):
    endpoint = getattr(getattr(pmsi, "tunnel_id", None), "tunnel_endpoint_ip", None)

    def claims(nlri):
        if getattr(nlri, "ROUTE_TYPE_NAME", None) != TYPE3:
            return None, None
        return nlri.ip_addr, endpoint
    return claims


def _new_paths_of_own_vtep(self, update_msg):
    """Upstream, with a reflector's VTEP rule: refused EVPN routes are withdrawn instead."""
    upstream = original(Peer, "_extract_and_handle_mpbgp_new_paths")
    guard = _guards.get("on")
    mp_reach = update_msg.pathattr_map.get(BGP_ATTR_TYPE_MP_REACH_NLRI)
    if guard is None or not guard.check_vteps or mp_reach is None \
            or mp_reach.route_family != RF_L2_EVPN or not mp_reach.nlri:
        return upstream(self, update_msg)
    pmsi = update_msg.pathattr_map.get(BGP_ATTR_TYEP_PMSI_TUNNEL_ATTRIBUTE)
    refused, why = guard.refused(self.ip_address, mp_reach.next_hop, mp_reach.nlri,
                                 _osken_claims(pmsi))
    if not refused:
        return upstream(self, update_msg)
    guard.report_refused(self.ip_address, len(refused), why)
    held = [nlri for nlri in refused if nlri.formatted_nlri_str in self._adj_rib_in]
    if held:  # what the peer announced before goes (a withdrawal of anything else is a no-op)
        self._extract_and_handle_mpbgp_withdraws(BGPPathAttributeMpUnreachNLRI(
            RF_L2_EVPN.afi, RF_L2_EVPN.safi, held))
    refused_ids = {id(nlri) for nlri in refused}
    accepted = [nlri for nlri in mp_reach.nlri if id(nlri) not in refused_ids]
    if not accepted:
        return None
    everything, mp_reach.nlri = mp_reach.nlri, accepted
    try:
        return upstream(self, update_msg)
    finally:
        mp_reach.nlri = everything


def _connect_tcp_after_backoff(self, peer_addr, conn_handler, time_out=None,
                               bind_address=None, password=None):
    """Upstream ``Activity._connect_tcp``, once the peer's back-off is over (the connect loop's
    green thread sleeps it out: one wait, not a retry every second)."""
    guard = _guards.get("on")
    wait = guard.wait(self.ip_address) if guard is not None else 0
    if wait:
        LOG.info("peer %s: next session in %.0f s (route limit)", self.ip_address, wait)
        self.pause(wait)
    return original(Peer, "_connect_tcp")(self, peer_addr, conn_handler, time_out=time_out,
                                          bind_address=bind_address, password=password)


def _start_protocol_after_backoff(self, socket):
    """Upstream ``CoreService.start_protocol``; a peer in its back-off is refused (Cease /
    Connection Rejected) before any OPEN."""
    guard = _guards.get("on")
    if guard is not None:
        address = self.get_remotename(socket)[0]
        if guard.wait(address):
            LOG.info("refusing a connection from %s: in its back-off (route limit)", address)
            # RFC 4486 subcode 5, "Connection Rejected" (os-ken calls it CONNECTION_RESET)
            self.build_protocol(socket).send_notification(BGP_ERROR_CEASE,
                                                          BGP_ERROR_SUB_CONNECTION_RESET)
            return
    return original(CoreService, "start_protocol")(self, socket)


def _connection_lost_emptying_adj_rib_in(self, reason):
    peer = self._peer
    version = getattr(peer, "version_num", None)
    original(BgpProtocol, "connection_lost")(self, reason)
    if peer is not None and peer.version_num != version:  # the peer's session ended
        peer._adj_rib_in.clear()


def apply() -> None:
    """Install the hooks (idempotent; before the speaker starts: its server keeps the bound
    ``start_protocol`` it started with). They do nothing until `enable`."""
    replace(Peer, "_handle_update_msg", _handle_update_msg_counted)
    replace(Peer, "_extract_and_handle_mpbgp_new_paths", _new_paths_of_own_vtep)
    replace(Peer, "_connect_tcp", _connect_tcp_after_backoff)
    replace(CoreService, "start_protocol", _start_protocol_after_backoff)
    replace(BgpProtocol, "connection_lost", _connection_lost_emptying_adj_rib_in)


def enable(emit, limit: int, backoff: Backoff, check_vteps: bool) -> PeerGuard:
    """Enforce `limit` routes per peer (0: none) and, with `check_vteps`, the VTEP rule (after
    `apply`, before sessions start)."""
    apply()
    guard = _guards["on"] = PeerGuard(emit, limit, backoff, check_vteps)
    return guard
