"""os-ken's EVPN paths and peers as the protocol's events and summaries (the BGP process's side).

The attribute names read here are os-ken's (tests/test_bgp.py checks them on objects parsed from
the wire): a Type-2's VNI is its NLRI's `vni` (os-ken's `ev.label` is wrong for VXLAN), its VTEP
the path's next hop; a Type-3's VNI and VTEP are in the PMSI tunnel attribute (type 22), as FRR
reads them. No os-ken import: paths are duck-typed, so the translation is tested with plain values.
"""
from __future__ import annotations

import logging

from bgp import claims
from bgp.protocol import ADD, DEL, MacRoute, PeerSummary, VtepRoute

log = logging.getLogger(__name__)

TYPE2 = "mac_ip_adv"          # os-ken's ROUTE_TYPE_NAME of a Type-2 NLRI
TYPE3 = "multicast_etag"      # and of a Type-3
PATH_ATTR_EXTENDED_COMMUNITIES = 16
PATH_ATTR_PMSI_TUNNEL = 22    # RFC 6514


def mobility_seq(path) -> int:
    """The MAC mobility sequence number of a Type-2 path (0 when it has none)."""
    communities = path.get_pattr(PATH_ATTR_EXTENDED_COMMUNITIES)
    for community in getattr(communities, "communities", None) or ():
        if community.__class__.__name__ == "BGPEvpnMacMobilityExtendedCommunity":
            return int(community.sequence_number)
    return 0


def _claims(path) -> dict[int, bytes]:
    """Our communities on a path (bgp.claims), by sub-type."""
    return claims.from_osken(path.get_pattr(PATH_ATTR_EXTENDED_COMMUNITIES))


def route_event(path, is_withdraw: bool, own_router_id: str | None = None) -> MacRoute | VtepRoute | None:
    """The route event of an os-ken EVPN path (`nlri` with ROUTE_TYPE_NAME, `nexthop`,
    `get_pattr(type)`), or None: other route types, no VNI, or our own VTEP."""
    nlri = path.nlri
    kind = getattr(nlri, "ROUTE_TYPE_NAME", None)
    action = DEL if is_withdraw else ADD
    if kind == TYPE2:
        vtep = path.nexthop
        if vtep == own_router_id or nlri.vni is None:
            return None
        pod = None if is_withdraw else claims.read_pod(_claims(path))
        return MacRoute(action, nlri.vni, nlri.mac_addr, vtep, nlri.ip_addr or None, mobility_seq(path),
                        pod)
    if kind == TYPE3:
        pmsi = path.get_pattr(PATH_ATTR_PMSI_TUNNEL)
        if pmsi is None or not pmsi.vni:
            log.warning("ignoring a Type-3 route without a PMSI VNI: %s", getattr(nlri, "prefix", nlri))
            return None
        vtep = getattr(pmsi.tunnel_id, "tunnel_endpoint_ip", None) or nlri.ip_addr
        if vtep == own_router_id:
            return None
        claim = None if is_withdraw else claims.read_vni_claim(_claims(path))
        return VtepRoute(action, pmsi.vni, vtep, *((claim.namespace, claim.since) if claim else ()))
    return None


def peer_summary(address: str, state: str, established_at: float | None, received: int, sent: int,
                 updates_received: int, updates_sent: int, now: float) -> PeerSummary:
    """One item of the `peers` result; route counts are 0 unless the session is Established."""
    established = state == "Established"
    return PeerSummary(
        address=address, state=state,
        uptime=round(now - established_at, 3) if established and established_at else None,
        received=received if established else 0, sent=sent if established else 0,
        updates_received=updates_received, updates_sent=updates_sent)
