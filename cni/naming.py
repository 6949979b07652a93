"""Host device names and MAC addresses, derived so that DEL, CHECK and GC need no saved state.

VNIs are unique cluster-wide (Kathara guarantees it), so a name derived from the VNI is the
same LAN on every node. A pod port's name is derived from (container id, ifname), the key the
runtime gives on every verb.
"""
from __future__ import annotations

import hashlib
import os

from base.primitives import is_vni

IFNAMSIZ = 15
VTEP_PREFIX = "mgvx"
BRIDGE_PREFIX = "mgbr"
PORT_PREFIX = "mgp"


def vtep_name(vni: int) -> str:
    """'mgvx' + decimal VNI: at most 12 characters, readable in `ip link`."""
    return f"{VTEP_PREFIX}{vni}"


def bridge_name(vni: int) -> str:
    return f"{BRIDGE_PREFIX}{vni}"


def vni_of_device(name: str) -> int | None:
    """The VNI a 'mgvx<vni>'/'mgbr<vni>' name stands for, else None."""
    for prefix in (VTEP_PREFIX, BRIDGE_PREFIX):
        digits = name[len(prefix):]
        if name.startswith(prefix) and digits.isascii() and digits.isdigit() and digits[0] != "0":
            vni = int(digits)
            if is_vni(vni):
                return vni
    return None


def port_name(container_id: str, ifname: str) -> str:
    """Host end of a pod's veth: 'mgp' + 12 hex digits of sha256(container id / ifname)."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return f"{PORT_PREFIX}{digest[:IFNAMSIZ - len(PORT_PREFIX)]}"


def is_port_name(name: str) -> bool:
    return name.startswith(PORT_PREFIX) and len(name) == IFNAMSIZ


def _local_mac(raw: bytes) -> str:
    octets = bytearray(raw[:6])
    octets[0] = (octets[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in octets)


def random_mac() -> str:
    return _local_mac(os.urandom(6))


def derived_mac(*parts: object) -> str:
    """A stable locally administered MAC from the given parts (bridges, host ports)."""
    return _local_mac(hashlib.sha256("/".join(map(str, parts)).encode()).digest())
