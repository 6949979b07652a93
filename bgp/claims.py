"""The claims our routes carry, as BGP extended communities (8 octets each). Pure logic.

A node's VTEP route (Type-3) for a VNI carries the claim of the namespace whose pods use the VNI
on that node; a MAC route (Type-2) carries the pod that holds the MAC (base.tenancy). Routes of
FRR nodes, of older agents, and MACs a bridge learned from traffic carry none: they claim
nothing.

Every community here has type 0x8C: transitive (RFC 4360: bit 0x40 clear), in the range RFC 7153
keeps for experimental use (0x80-0x8F), above the three types flow spec took there (0x80-0x82,
RFC 7674), which are the only ones FRR 8.4 and os-ken parse in that range. FRR passes a
transitive extended community it does not know to the peers it reflects to and otherwise
ignores it; os-ken keeps it as BGPUnknownExtendedCommunity and sends it on
(tests/test_claims.py, tests/test_frr_interop.py). The sub-type says what the six value octets
hold:

    0x01        the claim's time: ms since the epoch (48 bits); a VTEP route with it claims
                its VNI for the namespace in the parts below (none: the unnamed namespace)
    0x10..0x1a  the namespace name, six octets per part (part i is sub-type 0x10 + i),
                NUL-padded: 63 characters at most, so 11 parts
    0x02        a MAC route's pod: 48 bits of blake2b("namespace/device")

A route whose claim cannot be read (a part missing or repeated, a name that is no namespace)
claims nothing; the caller may log it.
"""
from __future__ import annotations

import struct

from base.tenancy import MAX_NAMESPACE, MAX_SINCE, VniClaim, parse_namespace, parse_pod_id

TYPE = 0x8C
SUBTYPE_SINCE = 0x01
SUBTYPE_POD = 0x02
SUBTYPE_NAMESPACE = 0x10
PART = 6
MAX_PARTS = -(-MAX_NAMESPACE // PART)   # 11


def _community(subtype: int, value: bytes) -> bytes:
    return bytes((TYPE, subtype)) + value.ljust(PART, b"\0")


def vtep_claim(claim: VniClaim) -> list[bytes]:
    """The communities of a VTEP route claiming its VNI."""
    if not 0 <= claim.since <= MAX_SINCE:
        raise ValueError(f"a claim's time is 0..{MAX_SINCE} ms, not {claim.since}")
    name = parse_namespace(claim.namespace).encode()
    return [_community(SUBTYPE_SINCE, claim.since.to_bytes(PART, "big"))] + [
        _community(SUBTYPE_NAMESPACE + i, name[at:at + PART])
        for i, at in enumerate(range(0, len(name), PART))]


def mac_holder(pod: str) -> list[bytes]:
    """The community of a MAC route held by pod `pod` (its base.tenancy.pod_id)."""
    return [_community(SUBTYPE_POD, bytes.fromhex(parse_pod_id(pod)))]


def ours(communities: bytes) -> dict[int, bytes]:
    """{sub-type: value} of our communities in an EXTENDED_COMMUNITIES attribute's value; a
    sub-type seen twice maps to b'' (unreadable)."""
    found: dict[int, bytes] = {}
    for at in range(0, len(communities) - 7, 8):
        if communities[at] == TYPE:
            subtype = communities[at + 1]
            found[subtype] = b"" if subtype in found else communities[at + 2:at + 8]
    return found


def read_vni_claim(found: dict[int, bytes]) -> VniClaim | None:
    """The claim of a VTEP route (`ours` of its communities), or None: none, or unreadable."""
    since = found.get(SUBTYPE_SINCE)
    if not since:
        return None
    parts = [found.get(SUBTYPE_NAMESPACE + i) for i in range(MAX_PARTS)]
    count = next((i for i, part in enumerate(parts) if part is None), MAX_PARTS)
    if any(part is not None for part in parts[count:]) or b"" in parts[:count]:
        return None
    raw = b"".join(parts[:count])
    name = raw.rstrip(b"\0")
    if b"\0" in name or (count and len(raw) - len(name) >= PART):
        return None  # a NUL inside the name, or a part of padding only
    try:
        return VniClaim(int.from_bytes(since, "big"), parse_namespace(name.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        return None


def read_pod(found: dict[int, bytes]) -> str | None:
    """The pod a MAC route is held by (12 hex digits), or None."""
    value = found.get(SUBTYPE_POD)
    return value.hex() if value else None


def from_osken(communities) -> dict[int, bytes]:
    """`ours` of an os-ken BGPPathAttributeExtendedCommunities (os-ken parses a community it does
    not know into BGPUnknownExtendedCommunity: `type` and the seven octets after it, `value`)."""
    listed = getattr(communities, "communities", None) or ()
    return ours(b"".join(struct.pack("!B7s", c.type, c.value) for c in listed
                         if getattr(c, "type", None) == TYPE and isinstance(getattr(c, "value", None), bytes)))
