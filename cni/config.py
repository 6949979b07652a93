"""The network configuration: Kathara's NAD config unchanged, plus Megalos's optional fields.

Validated once, up front, into one frozen `NetConf`; unknown keys are ignored, as the spec asks.
Kathara sends exactly {"cniVersion", "name", "type": "megalos", "suffix", "vxlanId"}.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from base.primitives import MAX_VNI, host_mac
from cni import naming, shim
from cni.spec import ERR_INVALID_CONFIG, CniError, negotiate_version

DEFAULT_VXLAN_PORT = 4789
STANDARD_VXLAN_PORTS = (4789, 8472)  # IANA's, and the Linux default (the original Megalos's)
DEFAULT_AGENT_SOCKET = shim.DEFAULT_SOCKET
MIN_MTU = 68
# GC's list of attachments still valid: the spec's name, and the one it used until 2024
# (libcni sends both: containernetworking/cni#1101).
ATTACHMENT_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")

_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class NetConf:
    cni_version: str
    name: str
    vni: int
    suffix: str = ""
    master: str = ""            # underlay device; its address is the VTEP's local IP
    mtu: int = 0                # 0: underlay MTU minus the VXLAN overhead
    vxlan_port: int = DEFAULT_VXLAN_PORT
    agent_socket: str = DEFAULT_AGENT_SOCKET
    runtime_mac: str = ""       # runtimeConfig.mac (the `mac` capability)
    prev_result: dict | None = None
    valid_attachments: tuple | None = None  # GC: ((container id, ifname), ...); None: no list


def _invalid(msg: str) -> CniError:
    return CniError(ERR_INVALID_CONFIG, msg)


def _integer(conf: dict, key: str, low: int, high: int, default: int | None = None) -> int:
    value = conf.get(key, default)
    if value is None:
        raise _invalid(f"{key} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{key} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise _invalid(f"{key} {value} is out of range ({low}..{high})")
    return value


def _string(conf: dict, key: str) -> str:
    value = conf.get(key, "")
    if not isinstance(value, str):
        raise _invalid(f"{key} must be a string, not {value!r}")
    return value


def _valid_attachments(conf: dict) -> tuple | None:
    """The attachments GC must keep, from either key (both: all they name); None if neither."""
    if not any(key in conf for key in ATTACHMENT_KEYS):
        return None
    pairs: dict = {}
    for key in ATTACHMENT_KEYS:
        raw = conf.get(key, [])
        if not isinstance(raw, list):
            raise _invalid(f"{key} must be a list")
        for item in raw:
            if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                    or not isinstance(item.get("ifname"), str):
                raise _invalid(f"{key} entry {item!r} needs containerID and ifname")
            pairs[item["containerID"], item["ifname"]] = None
    return tuple(pairs)


def _agent_socket(conf: dict) -> str:
    path = _string(conf, "agentSocket")
    if not path:
        return DEFAULT_AGENT_SOCKET
    if not shim.socket_allowed(path.encode("utf-8", "surrogatepass")):
        raise _invalid(f"{shim.SOCKET_RULE}, not {path!r}")
    return path


def parse_netconf(conf: dict) -> NetConf:
    """Validate a decoded network config; errors say which field is wrong and why."""
    version = negotiate_version(conf)
    name = conf.get("name")
    if not isinstance(name, str) or not _NETWORK_NAME.fullmatch(name):
        raise _invalid(f"name {name!r} is not a valid network name "
                       "(letters, digits, '_', '.', '-'; starting with a letter or digit)")
    if conf.get("type", "megalos") != "megalos":
        raise _invalid(f"type {conf.get('type')!r} is not megalos")
    vni = _integer(conf, "vxlanId", 1, MAX_VNI)
    master = _string(conf, "master")
    if master and (problem := naming.ifname_problem(master)):
        raise _invalid(f"master {master!r} is not a valid interface name: {problem}")
    mtu = _integer(conf, "mtu", MIN_MTU, 65535, default=0) if conf.get("mtu") else 0
    port = _integer(conf, "vxlanPort", 1, 65535, default=DEFAULT_VXLAN_PORT)
    socket_path = _agent_socket(conf)
    runtime = conf.get("runtimeConfig") or {}
    if not isinstance(runtime, dict):
        raise _invalid("runtimeConfig must be an object")
    runtime_mac = ""
    if runtime.get("mac"):
        try:
            runtime_mac = host_mac(runtime["mac"])
        except ValueError as exc:
            raise _invalid(f"runtimeConfig.mac: {exc}") from None
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise _invalid("prevResult must be an object")
    return NetConf(cni_version=version, name=name, vni=vni, suffix=_string(conf, "suffix"),
                   master=master, mtu=mtu, vxlan_port=port, agent_socket=socket_path,
                   runtime_mac=runtime_mac, prev_result=prev,
                   valid_attachments=_valid_attachments(conf))
