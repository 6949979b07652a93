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
