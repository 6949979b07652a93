"""EVPN UPDATE messages as bytes: what the reflector's wire path reads and writes. Pure logic.

Our use of BGP is narrow: iBGP, L2VPN EVPN, Type-2 (MAC/IP) and Type-3 (IMET) routes, one
originator per MAC. For that, a reflector need not turn every received NLRI into os-ken's path,
destination and outgoing-route objects and back into bytes: it can split the message, keep each
NLRI's bytes under its RIB key, and send the other clients one UPDATE built once for all of them
(``bgp.osken_fastpath`` does, inside os-ken's sessions). This module is the codec; it knows
nothing of sockets or os-ken, and ``tests/test_evpn_wire.py`` checks it byte for byte against
os-ken's own parser and UPDATE builder.

A node's own routes go out the same way (``bgp.osken_origin``): ``originated`` gives the
attributes os-ken's path would send them with, and the NLRI builders below their bytes.

Anything outside that narrow use (another address family or route type, IPv4 NLRI, a malformed
attribute) makes ``parse_update`` return None: the caller hands the message to os-ken, which
handles or refuses it as before.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from functools import cached_property

from bgp import claims
from bgp.protocol import ADD, DEL, MacRoute, VtepRoute

MARKER = b"\xff" * 16
MSG_UPDATE = 2
HEADER = struct.Struct("!16sHB")
MAX_MESSAGE = 4096                       # RFC 4271

ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF = 1, 2, 3, 4, 5
COMMUNITIES, ORIGINATOR_ID, CLUSTER_LIST = 8, 9, 10
MP_REACH, MP_UNREACH, EXT_COMMUNITIES, PMSI_TUNNEL = 14, 15, 16, 22
OPTIONAL, TRANSITIVE, EXTENDED_LENGTH = 0x80, 0x40, 0x10
ORIGIN_IGP, ORIGIN_INCOMPLETE = 0, 2

AFI_L2VPN, SAFI_EVPN = 25, 70
TYPE2, TYPE3 = 2, 3
PMSI_INGRESS_REPLICATION = 6
_EVPN_AFI_SAFI = struct.pack("!HB", AFI_L2VPN, SAFI_EVPN)
# Attributes os-ken copies into a reflected UPDATE (besides MP_REACH, which it rebuilds, and
# LOCAL_PREF, which it replaces by its own), and the ORIGINATOR_ID a node receives: anything
# else sends the message to os-ken.
_CARRIED = {ORIGIN, AS_PATH, MED, LOCAL_PREF, COMMUNITIES, ORIGINATOR_ID, CLUSTER_LIST, MP_REACH,
            MP_UNREACH, EXT_COMMUNITIES, PMSI_TUNNEL}


@dataclass
class EvpnUpdate:
    """A received UPDATE: its path attributes by type (flags, value) and its EVPN NLRIs."""

    attributes: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    next_hop: bytes = b""
    reach: list[bytes] = field(default_factory=list)     # each NLRI: type, length, value
    unreach: list[bytes] = field(default_factory=list)

    @cached_property
    def next_hop_text(self) -> str:
        family = socket.AF_INET if len(self.next_hop) == 4 else socket.AF_INET6
        return socket.inet_ntop(family, self.next_hop)

    @cached_property
    def mac_facts(self) -> tuple[int, str | None]:
        """(MAC mobility sequence number, pod) of its Type-2 routes: read once for all of them."""
        return mobility_seq(self), claims.read_pod(_claims(self))


def _nlris(data: bytes) -> list[bytes] | None:
    """Type-2 and Type-3 NLRIs, each checked for a length os-ken parses the same way."""
    found, at = [], 0
    while at < len(data):
        if at + 2 > len(data):
            return None
        kind, length = data[at], data[at + 1]
        value = data[at + 2:at + 2 + length]
        if len(value) != length or not _well_formed(kind, value):
            return None
        found.append(data[at:at + 2 + length])
        at += 2 + length
    return found


def _well_formed(kind: int, value: bytes) -> bool:
    if kind == TYPE2:  # RD 8, ESI 10, tag 4, MAC length 1 + 6, IP length 1 + 0/4/16, labels 3/6
        if len(value) < 30 or value[22] != 48:
            return False
        ip_bits = value[29]
        return ip_bits in (0, 32, 128) and len(value) - 30 - ip_bits // 8 in (3, 6)
    if kind == TYPE3:  # RD 8, tag 4, IP length 1 + 4/16
        return len(value) >= 13 and value[12] in (32, 128) and len(value) == 13 + value[12] // 8
    return False


def parse_update(msg: bytes) -> EvpnUpdate | None:
    """An UPDATE carrying only EVPN Type-2/Type-3 routes, or None (not one: os-ken's to handle)."""
    if len(msg) < 23 or msg[18] != MSG_UPDATE:
        return None
    withdrawn = struct.unpack_from("!H", msg, 19)[0]
    if withdrawn:
        return None
    attrs_end = 23 + struct.unpack_from("!H", msg, 21)[0]
    if attrs_end != len(msg):      # IPv4 NLRI after the attributes (or a bad length)
        return None
    update, at = EvpnUpdate(), 23
    while at < attrs_end:
        if at + 3 > attrs_end:
            return None
        flags, kind = msg[at], msg[at + 1]
        if flags & EXTENDED_LENGTH:
            if at + 4 > attrs_end:
                return None
            length, at = struct.unpack_from("!H", msg, at + 2)[0], at + 4
        else:
            length, at = msg[at + 2], at + 3
        value = msg[at:at + length]
        at += length
        if len(value) != length or kind not in _CARRIED or kind in update.attributes:
            return None
        update.attributes[kind] = (flags, value)
    reach = update.attributes.get(MP_REACH)
    unreach = update.attributes.get(MP_UNREACH)
    if reach is None and unreach is None:
        return None
    if reach is not None:
        value = reach[1]
        if value[:3] != _EVPN_AFI_SAFI or len(value) < 5:
            return None
        hop_length = value[3]
        if hop_length not in (4, 16) or len(value) < 5 + hop_length:
            return None
        update.next_hop = value[4:4 + hop_length]
        nlris = _nlris(value[5 + hop_length:])
        if nlris is None or ORIGIN not in update.attributes or AS_PATH not in update.attributes:
            return None  # os-ken ignores (and logs) an UPDATE without its mandatory attributes
        update.reach = nlris
    if unreach is not None:
        if unreach[1][:3] != _EVPN_AFI_SAFI:
            return None
        nlris = _nlris(unreach[1][3:])
        if nlris is None:
            return None
        update.unreach = nlris
    return update


def route_key(nlri: bytes) -> bytes:
    """What names a route in the RIB, as os-ken's prefix text does: the route type, RD, tag, MAC
    and IP of a Type-2 (not its ESI and labels); all of a Type-3."""
    if nlri[0] == TYPE2:
        return nlri[:1] + nlri[2:10] + nlri[20:32 + nlri[31] // 8]
    return nlri[:1] + nlri[2:]


# -- building -------------------------------------------------------------------------------------

def attribute(flags: int, kind: int, value: bytes) -> bytes:
    """One path attribute; the extended-length flag set exactly when needed, as os-ken does."""
    if len(value) > 255:
        return struct.pack("!BBH", flags | EXTENDED_LENGTH, kind, len(value)) + value
    return struct.pack("!BBB", flags & ~EXTENDED_LENGTH, kind, len(value)) + value


def message(attributes: bytes) -> bytes:
    """An UPDATE with no withdrawn IPv4 routes and no IPv4 NLRI."""
    return HEADER.pack(MARKER, 23 + len(attributes), MSG_UPDATE) + struct.pack("!HH", 0, len(attributes)) \
        + attributes


def _reach(next_hop: bytes, nlris: list[bytes]) -> bytes:
    return attribute(OPTIONAL, MP_REACH, _EVPN_AFI_SAFI + bytes([len(next_hop)]) + next_hop + b"\0"
                     + b"".join(nlris))


def _chunks(nlris: list[bytes], room: int):
    """NLRIs in runs whose octets fit in `room` (an NLRI is at most 2 + 255 octets)."""
    run, size = [], 0
    for nlri in nlris:
        if run and size + len(nlri) > room:
            yield run
            run, size = [], 0
        run.append(nlri)
        size += len(nlri)
    if run:
        yield run


@dataclass(frozen=True)
class Reflected:
    """The attributes around a run of NLRIs (``originated``: a node's own). For a reflector, what
    it adds around the NLRIs of one received UPDATE (os-ken's ``Peer._construct_update`` for a
    route reflector client, in its attribute order): ORIGINATOR_ID and CLUSTER_LIST before
    MP_REACH, then ORIGIN, AS_PATH, MED, our LOCAL_PREF, COMMUNITIES, EXTENDED COMMUNITIES and,
    with them, the PMSI tunnel."""

    before: bytes
    after: bytes
    next_hop: bytes

    def updates(self, nlris: list[bytes]) -> list[bytes]:
        """UPDATE messages announcing `nlris`, as few as fit in 4096 octets each."""
        fixed = 23 + len(self.before) + len(self.after) + 4 + 5 + len(self.next_hop)
        return [message(self.before + _reach(self.next_hop, run) + self.after)
                for run in _chunks(nlris, MAX_MESSAGE - fixed)]


def reflected(update: EvpnUpdate, originator: bytes, cluster_id: bytes, local_pref: int) -> Reflected:
    """The attributes to send `update`'s routes with to the other clients. `originator`: the
    client's address (os-ken's ORIGINATOR_ID when the UPDATE has none), `cluster_id`: ours."""
    attrs = update.attributes
    before = attribute(OPTIONAL, ORIGINATOR_ID, originator)
    clusters = attrs.get(CLUSTER_LIST, (0, b""))[1]
    listed = {clusters[i:i + 4] for i in range(0, len(clusters), 4)}
    before += attribute(OPTIONAL, CLUSTER_LIST,
                        clusters if cluster_id in listed else cluster_id + clusters)
    after = attribute(TRANSITIVE, ORIGIN, attrs[ORIGIN][1])
    after += attribute(TRANSITIVE, AS_PATH, attrs[AS_PATH][1])
    if MED in attrs:
        after += attribute(OPTIONAL, MED, attrs[MED][1])
    after += attribute(TRANSITIVE, LOCAL_PREF, struct.pack("!I", local_pref))
    if COMMUNITIES in attrs:
        after += attribute(OPTIONAL | TRANSITIVE, COMMUNITIES, attrs[COMMUNITIES][1])
    if EXT_COMMUNITIES in attrs:
        after += attribute(OPTIONAL | TRANSITIVE, EXT_COMMUNITIES, attrs[EXT_COMMUNITIES][1])
        if PMSI_TUNNEL in attrs:
            after += attribute(OPTIONAL | TRANSITIVE, PMSI_TUNNEL, attrs[PMSI_TUNNEL][1])
    return Reflected(before, after, update.next_hop)


# -- originating (a node's own routes: bgp.osken_origin; a peer made of bytes: lab.rogue_bgp) -----

def route_distinguisher(router_id: str, number: int) -> bytes:
    """A Type-1 RD, `<router id>:<number>`."""
    return struct.pack("!H4sH", 1, socket.inet_aton(router_id), number)


def mac_nlri(rd: bytes, mac: str, vni: int, ip: str | None = None) -> bytes:
    """A Type-2 NLRI: ESI 0, ethernet tag 0, the VNI as its one label."""
    address = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip) if ip else b""
    value = (rd + bytes(10) + bytes(4) + b"\x30" + bytes.fromhex(mac.replace(":", ""))
             + bytes([8 * len(address)]) + address + vni.to_bytes(3, "big"))
    return bytes([TYPE2, len(value)]) + value


def imet_nlri(rd: bytes, originator: str) -> bytes:
    """A Type-3 NLRI: ethernet tag 0, the originating router's (IPv4) address."""
    value = rd + bytes(4) + b"\x20" + socket.inet_aton(originator)
    return bytes([TYPE3, len(value)]) + value


def extended_communities(asn: int, vni: int, seq: int | None = None) -> bytes:
    """What a node's routes carry, in os-ken's order (``VrfTable.insert_vrf_path``): the route
    target `<asn>:<vni>` (2-octet AS), the VXLAN encapsulation and, for a MAC that moved, the MAC
    mobility sequence number."""
    value = struct.pack("!BBHI", 0x00, 0x02, asn, vni) + struct.pack("!BBIH", 0x03, 0x0C, 0, 8)
    if seq is not None:
        value += struct.pack("!BBBBI", 0x06, 0x00, 0, 0, seq)
    return value


def pmsi_ingress_replication(vni: int, endpoint: str) -> bytes:
    """A PMSI tunnel attribute's value: ingress replication to `endpoint`, the VNI as label."""
    return bytes([0, PMSI_INGRESS_REPLICATION]) + vni.to_bytes(3, "big") + socket.inet_aton(endpoint)


def originated(next_hop: str, communities: bytes = b"", pmsi: bytes | None = None,
               local_pref: int = 100, origin: int = ORIGIN_INCOMPLETE) -> Reflected:
    """The attributes of routes an iBGP speaker originates, as os-ken's ``Peer._construct_update``
    sends them to an iBGP peer: MP_REACH, ORIGIN (os-ken's VRF routes are INCOMPLETE), an empty
    AS_PATH, LOCAL_PREF, the extended communities and the PMSI tunnel (nothing before MP_REACH:
    no reflection)."""
    after = attribute(TRANSITIVE, ORIGIN, bytes([origin])) + attribute(TRANSITIVE, AS_PATH, b"")
    after += attribute(TRANSITIVE, LOCAL_PREF, struct.pack("!I", local_pref))
    if communities:
        after += attribute(OPTIONAL | TRANSITIVE, EXT_COMMUNITIES, communities)
    if pmsi is not None:
        after += attribute(OPTIONAL | TRANSITIVE, PMSI_TUNNEL, pmsi)
    return Reflected(b"", after, socket.inet_aton(next_hop))


def announcements(next_hop: str, nlris: list[bytes], communities: bytes = b"",
                  pmsi: bytes | None = None) -> list[bytes]:
    """UPDATE messages announcing `nlris` from an iBGP client (ORIGIN IGP), as few as fit in 4096
    octets each."""
    return originated(next_hop, communities, pmsi, origin=ORIGIN_IGP).updates(nlris)


def withdrawals(nlris: list[bytes]) -> list[bytes]:
    """UPDATE messages withdrawing `nlris` (MP_UNREACH only)."""
    room = MAX_MESSAGE - 23 - 4 - 3
    return [message(attribute(OPTIONAL, MP_UNREACH, _EVPN_AFI_SAFI + b"".join(run)))
            for run in _chunks(nlris, room)]


# -- what a route means to the agents -------------------------------------------------------------

def mobility_seq(update: EvpnUpdate) -> int:
    """The MAC Mobility sequence number (RFC 7432 7.7: type 0x06, subtype 0x00), 0 if none."""
    value = update.attributes.get(EXT_COMMUNITIES, (0, b""))[1]
    for at in range(0, len(value) - 7, 8):
        if value[at] == 0x06 and value[at + 1] == 0x00:
            return struct.unpack_from("!I", value, at + 4)[0]
    return 0


def _claims(update: EvpnUpdate) -> dict[int, bytes]:
    """Our communities in the UPDATE (bgp.claims), by sub-type."""
    return claims.ours(update.attributes.get(EXT_COMMUNITIES, (0, b""))[1])


def _ip_text(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def imet_claims(nlri: bytes, update: EvpnUpdate) -> tuple[str | None, str | None]:
    """The VTEP addresses a route names besides its next hop: a Type-3's originator and PMSI
    tunnel endpoint (ingress replication only; None when absent); (None, None) for a Type-2."""
    if nlri[0] != TYPE3:
        return None, None
    pmsi = update.attributes.get(PMSI_TUNNEL, (0, b""))[1]
    endpoint = pmsi[5:] if len(pmsi) >= 5 and pmsi[1] == PMSI_INGRESS_REPLICATION else b""
    return _ip_text(nlri[15:]), _ip_text(endpoint) if len(endpoint) in (4, 16) else None


def route_event(nlri: bytes, update: EvpnUpdate, withdraw: bool) -> MacRoute | VtepRoute | None:
    """The agent's route event for one route (``bgp.events.route_event`` of the path os-ken would
    have made from it); `update` is the one that announced it."""
    action = DEL if withdraw else ADD
    value = nlri[2:]
    if nlri[0] == TYPE2:
        ip_bytes = value[29] // 8
        vni = int.from_bytes(value[30 + ip_bytes:33 + ip_bytes], "big")
        ip = _ip_text(value[30:30 + ip_bytes]) if ip_bytes else None
        seq, pod = update.mac_facts
        return MacRoute(action, vni, value[23:29].hex(":"), update.next_hop_text, ip, seq,
                        None if withdraw else pod)
    pmsi = update.attributes.get(PMSI_TUNNEL)
    if pmsi is None or len(pmsi[1]) < 5:
        return None
    vni = int.from_bytes(pmsi[1][2:5], "big")
    if not vni:
        return None
    endpoint = pmsi[1][5:]
    vtep = (_ip_text(endpoint) if pmsi[1][1] == PMSI_INGRESS_REPLICATION and len(endpoint) in (4, 16)
            else _ip_text(value[13:]))
    claim = None if withdraw else claims.read_vni_claim(_claims(update))
    return VtepRoute(action, vni, vtep, *((claim.namespace, claim.since) if claim else ()))
