"""Host device names and MAC addresses, derived so that DEL, CHECK and GC need no saved state.

VNIs are unique cluster-wide (Kathara guarantees it), so a name derived from the VNI is the
same LAN on every node. A pod port's name is derived from (container id, ifname), the key the
runtime gives on every verb.
"""
from __future__ import annotations

import hashlib
import os

from base.primitives import is_vni
from base.tenancy import Tenant, VniClaim, parse_namespace

IFNAMSIZ = 15
VTEP_PREFIX = "mgvx"
BRIDGE_PREFIX = "mgbr"
PORT_PREFIX = "mgp"
# Devices Megalos made carry one of these aliases ('ip link' shows them): the sweep and the
# last DEL delete only marked devices, GC only the ports marked with its network. After the
# mark, separated by a space, what the device records of its owner: a bridge its VNI's claim
# (`ns=<namespace> since=<ms>`), a pod port its pod (`pod=<namespace>/<pod name>`).
BRIDGE_MARK = "megalos:bridge"
VTEP_MARK = "megalos:vtep"
PORT_MARK = "megalos:port:"
MAX_ALIAS = 254  # bytes: the kernel's IFALIASZ (256) holds the text and the NUL we send
_POD_FIELD = " pod="

# The kernel's dev_valid_name refuses '/', ':' and isspace() bytes (its ctype counts 0xA0, a
# UTF-8 continuation byte, as a space); '%' makes a name a template the kernel fills in.
_IFNAME_BAD_BYTES = frozenset(b"/:% \t\n\v\f\r\xa0")


def ifname_problem(name: str) -> str:
    """Why `name` cannot be an interface name, checked in bytes as the kernel checks it; ''
    if it can be one."""
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8 text"
    if not raw:
        return "empty"
    if len(raw) > IFNAMSIZ:
        return f"{len(raw)} bytes long: the kernel allows {IFNAMSIZ}"
    if raw in (b".", b".."):
        return "'.' and '..' are not device names"
    if _IFNAME_BAD_BYTES.intersection(raw):
        return "'/', ':', '%' and whitespace are not allowed in a device name"
    return ""


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


def has_mark(alias: str, mark: str) -> bool:
    """Whether a device's alias is `mark`, alone or followed by what it records."""
    return alias == mark or alias.startswith(mark + " ")


def bridge_mark(claim: VniClaim | None) -> str:
    """A bridge's alias: its mark and, when its VNI is claimed, the claim."""
    if claim is None:
        return BRIDGE_MARK
    return f"{BRIDGE_MARK} ns={claim.namespace} since={claim.since}"


def bridge_claim(alias: str) -> VniClaim | None:
    """The claim a bridge records (bridge_mark), None if none (an older agent's bridge) or if
    it cannot be read."""
    if not alias.startswith(BRIDGE_MARK + " "):
        return None
    fields = dict(item.partition("=")[::2] for item in alias[len(BRIDGE_MARK) + 1:].split(" "))
    try:
        return VniClaim(int(fields["since"]), parse_namespace(fields["ns"]))
    except (KeyError, ValueError):
        return None


def port_mark(network: str, tenant: Tenant | None = None) -> str:
    """A pod port's alias: 'megalos:port:' and its network's name (for a name too long for an
    alias, '#' (no network name has one) and the name's sha256), then its pod when the request
    named one: ' pod=<namespace>/<pod name>', or ' pod=#<pod id>' if that is too long (or
    nothing, after a network name of more than 236 bytes)."""
    mark = PORT_MARK + network
    if len(mark.encode()) > MAX_ALIAS:
        mark = f"{PORT_MARK}#{hashlib.sha256(network.encode()).hexdigest()}"
    if tenant is None or not tenant.pod:
        return mark
    for pod in (tenant.pod_text, f"#{tenant.pod_id}"):
        alias = f"{mark}{_POD_FIELD}{pod}"
        if len(alias.encode()) <= MAX_ALIAS:
            return alias
    return mark


def split_port_alias(alias: str) -> tuple[str, str]:
    """(the network's mark, the pod: 'namespace/name', '#<pod id>' or '') of a port's alias."""
    mark, _, pod = alias.partition(_POD_FIELD)
    return mark, pod


def _local_mac(raw: bytes) -> str:
    octets = bytearray(raw[:6])
    octets[0] = (octets[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in octets)


def random_mac() -> str:
    return _local_mac(os.urandom(6))


def derived_mac(*parts: object) -> str:
    """A stable locally administered MAC from the given parts (bridges, host ports)."""
    return _local_mac(hashlib.sha256("/".join(map(str, parts)).encode()).digest())
