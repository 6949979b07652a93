"""The values of the domain, parsed and normalised in one place: VNIs, MAC and IP addresses.

Every layer (the CNI plugin, the BGP process, the reflector, the API) checks the same things the
same way: a VNI is an integer in 1..2^24-1; a MAC is six hex octets written with colons or
hyphens in either case, normalised to lower case with colons; an IP address is normalised to its
canonical text. Parsers raise ValueError with a message fit for a user; nothing here logs.
"""
from __future__ import annotations

import ipaddress
import re

MAX_VNI = 2**24 - 1          # VXLAN's 24-bit network identifier; 0 is not a VNI
ZERO_MAC = "00:00:00:00:00:00"  # the flood entry's MAC in a VTEP's forwarding table

_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$", re.IGNORECASE)


def is_vni(value: object) -> bool:
    """An int (not a bool) in 1..MAX_VNI."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_VNI


def parse_vni(value: object) -> int:
    if not is_vni(value):
        raise ValueError(f"a VNI is an integer in 1..{MAX_VNI}, not {value!r}")
    return value


def normalize_mac(value: object) -> str:
    """'AA-BB-cc:dd:ee:ff' -> 'aa:bb:cc:dd:ee:ff'; ValueError when `value` is not a MAC."""
    if not isinstance(value, str):
        raise ValueError(f"a MAC address must be a string, not {value!r}")
    if not _MAC.match(value.strip()):
        raise ValueError(f"{value!r} is not a MAC address (expected six hex pairs, aa:bb:cc:dd:ee:ff)")
    return value.strip().lower().replace("-", ":")


def canonical_mac(value: object) -> str:
    """normalize_mac, or "" when `value` is not a MAC (for data read from other systems)."""
    try:
        return normalize_mac(value)
    except ValueError:
        return ""


def is_unicast_mac(mac: str) -> bool:
    """A normalised MAC a host can own: not multicast or broadcast, not all zeros."""
    return not int(mac[:2], 16) & 1 and mac != ZERO_MAC


def host_mac(value: object) -> str:
    """A normalised MAC a pod interface can have (unicast, not zero); ValueError says why not."""
    mac = normalize_mac(value)
    if mac == ZERO_MAC:
        raise ValueError(f"{ZERO_MAC} is not a usable MAC address")
    if not is_unicast_mac(mac):
        raise ValueError(f"{value!r} is a multicast/broadcast MAC address: a pod needs a unicast one")
    return mac


def normalize_ip(value: object) -> str:
    """The canonical text of an IPv4 or IPv6 address; ValueError when `value` is not one."""
    if not isinstance(value, str):
        raise ValueError(f"an IP address is a string, not {value!r}")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def canonical_ip(value: object) -> str:
    """normalize_ip, or "" when `value` is not an address (for data read from other systems)."""
    try:
        return normalize_ip(value)
    except ValueError:
        return ""


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host on this network": never a destination
_LIMITED_BROADCAST = ipaddress.ip_address("255.255.255.255")


def _not_a_node(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Why `address` cannot be another node's unicast address, or ""."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return _not_a_node(address.ipv4_mapped)  # ::ffff:127.0.0.1 is a loopback address too
    for bad, kind in ((address.is_unspecified, "unspecified"), (address.is_loopback, "loopback"),
                      (address.is_multicast, "multicast"), (address.is_link_local, "link-local"),
                      (address == _LIMITED_BROADCAST, "broadcast"),
                      (address.version == 4 and address in _THIS_NETWORK, "'this network' (0.0.0.0/8)")):
        if bad:
            return kind
    return ""


def vtep_address(value: object, own: str = "") -> str:
    """The canonical text of a tunnel endpoint a route may name: another node's unicast address.

    Not loopback, unspecified (or in 0.0.0.0/8), multicast, link-local, the IPv4 broadcast
    address, nor `own` (this node's VTEP: a route claiming it would loop frames back to us).
    ValueError says which rule the address breaks. The kernel would accept any of them as a
    VXLAN destination, which is why a received route must be checked before it gets there."""
    text = normalize_ip(value)
    kind = _not_a_node(ipaddress.ip_address(text))
    if kind:
        raise ValueError(f"{text} is a {kind} address, not a node's")
    if own and text == canonical_ip(own):
        raise ValueError(f"{text} is this node's own VTEP")
    return text
