"""The CNI specification side: versions, environment, CNI_ARGS, errors and result shapes.

Pure logic (no netlink, no sockets) so every rule of the spec is tested with plain values.
Spec reference: CNI 1.1.0, with the older result shapes of 0.3.0 to 1.0.0.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from base.bounded_json import too_deep
from base.tenancy import Tenant, parse_namespace, parse_pod_name
from cni import naming, shim

SUPPORTED_VERSIONS = shim.SUPPORTED_VERSIONS  # the shim answers VERSION itself
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
VERBS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")

# Well-known error codes (CNI spec "Error" section), then ours (100+).
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50
ERR_DATAPATH = 100          # a netlink operation failed
ERR_CHECK_FAILED = 101      # CHECK found the attachment different from what ADD made
ERR_INTERFACE_EXISTS = 102  # CNI_IFNAME already exists in the pod, or the attachment exists
ERR_VNI_CONFLICT = 103      # the VNI is already set up with different VXLAN parameters
ERR_VNI_OWNED = 104         # the VNI belongs to another namespace (base.tenancy)
ERR_MAC_HELD = 105          # the MAC is held by another pod on the LAN

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class CniError(Exception):
    """An error the plugin reports to the runtime as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str = LATEST_VERSION) -> dict:
        body = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            body["details"] = self.details
        return body


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.4.0' -> (0, 4, 0); raises CniError for anything that is not a dotted version."""
    try:
        return tuple(int(part) for part in version.split("."))
    except (AttributeError, ValueError):
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"malformed cniVersion {version!r}") from None


def negotiate_version(conf: dict) -> str:
    """The config's cniVersion, or the highest supported one from a `cniVersions` list."""
    version = conf.get("cniVersion")
    if version is None and isinstance(conf.get("cniVersions"), list):
        known = [v for v in conf["cniVersions"] if v in SUPPORTED_VERSIONS]
        if not known:
            raise CniError(ERR_INCOMPATIBLE_VERSION,
                           f"none of cniVersions {conf['cniVersions']!r} is supported",
                           f"supported: {', '.join(SUPPORTED_VERSIONS)}")
        return max(known, key=version_tuple)
    if version is None:
        raise CniError(ERR_INVALID_CONFIG, "cniVersion is missing from the network config")
    if not isinstance(version, str):
        raise CniError(ERR_INVALID_CONFIG, f"cniVersion must be a string, not {version!r}")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    return version


def verb_allowed(verb: str, version: str) -> None:
    """CHECK exists from 0.4.0, STATUS and GC from 1.1.0 (as the reference skel enforces)."""
    first = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}.get(verb)
    if first and version_tuple(version) < version_tuple(first):
        raise CniError(ERR_INCOMPATIBLE_VERSION,
                       f"config version {version} does not allow {verb} (needs {first} or later)")


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS 'K1=V1;K2=V2' -> dict. Elements without '=' are ignored, never fatal."""
    args: dict[str, str] = {}
    for element in (raw or "").split(";"):
        key, sep, value = element.partition("=")
        if sep and key.strip():
            args[key.strip()] = value.strip()
    return args


@dataclass(frozen=True)
class Invocation:
    """What the runtime told us through the environment."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: str = ""
    args: dict = field(default_factory=dict)


def validate_ifname(ifname: str) -> str:
    if not ifname:
        raise CniError(ERR_INVALID_ENV, "CNI_IFNAME is required")
    if problem := naming.ifname_problem(ifname):
        raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME {ifname!r} is not a valid interface name: {problem}")
    return ifname


def parse_environment(env: dict) -> Invocation:
    """Validate the CNI_* variables each verb needs (error code 4 when one is wrong)."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(ERR_INVALID_ENV, "CNI_COMMAND is not set")
    if command not in VERBS:
        raise CniError(ERR_INVALID_ENV, f"unknown CNI_COMMAND {command!r}",
                       f"expected one of {', '.join(VERBS)}")
    if command in ("VERSION", "STATUS", "GC"):
        return Invocation(command=command, path=env.get("CNI_PATH", ""))
    container_id = env.get("CNI_CONTAINERID", "")
    if not container_id:
        raise CniError(ERR_INVALID_ENV, "CNI_CONTAINERID is required")
    if not _CONTAINER_ID.fullmatch(container_id):
        raise CniError(ERR_INVALID_ENV, f"CNI_CONTAINERID {container_id!r} is not valid "
                       "(letters, digits, '_', '.', '-'; starting with a letter or digit)")
    netns = env.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not netns:
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS is required for {command}")
    if netns and not netns.startswith("/"):
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS {netns!r} must be an absolute path")
    return Invocation(command=command, container_id=container_id, netns=netns,
                      ifname=validate_ifname(env.get("CNI_IFNAME", "")),
                      path=env.get("CNI_PATH", ""),
                      args=parse_cni_args(env.get("CNI_ARGS", "")))


def tenant(args: dict) -> Tenant:
    """Who a request comes from: CNI_ARGS K8S_POD_NAMESPACE and K8S_POD_NAME (Multus and
    kubelet's runtimes send both; '' for one not sent). Code 4 for one that is not a Kubernetes
    name: the namespace is who owns a LAN, it must not be ambiguous."""
    try:
        namespace = parse_namespace(args.get("K8S_POD_NAMESPACE", ""))
        pod = args.get("K8S_POD_NAME", "")
        return Tenant(namespace, pod and parse_pod_name(pod))
    except ValueError as exc:
        raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: {exc}") from None


def decode_config(stdin: str) -> dict:
    """The network config from stdin: a JSON object, or error code 6. The limits are the
    shim's (cni/shim.py), the depth checked by base.bounded_json's rule, which is the shim's:
    json.loads never recurses deeper than they allow."""
    if not isinstance(stdin, str):
        raise CniError(ERR_DECODE, "network config on stdin is not valid JSON", "no text")
    data = stdin.encode("utf-8", "surrogatepass")
    if len(data) > shim.MAX_STDIN:
        raise CniError(ERR_DECODE, shim.TOO_LARGE)
    if too_deep(data, shim.MAX_DEPTH):
        raise CniError(ERR_DECODE, shim.TOO_DEEP)
    try:
        conf = json.loads(stdin)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise CniError(ERR_DECODE, "network config on stdin is not valid JSON", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(ERR_DECODE, "network config on stdin must be a JSON object")
    return conf


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str
    sandbox: str = ""
    mtu: int = 0


def shape_result(version: str, interfaces: list[Interface]) -> dict:
    """An ADD result in the shape `version` defines (no IPs: Megalos is pure L2).

    0.3.x and 0.4.0 carry `ips` and `dns` keys; 1.1.0 adds `mtu` to interfaces.
    """
    with_mtu = version_tuple(version) >= (1, 1, 0)
    shaped = []
    for itf in interfaces:
        entry = {"name": itf.name, "mac": itf.mac}
        if itf.sandbox:
            entry["sandbox"] = itf.sandbox
        if with_mtu and itf.mtu:
            entry["mtu"] = itf.mtu
        shaped.append(entry)
    result = {"cniVersion": version, "interfaces": shaped}
    if version_tuple(version) < (1, 0, 0):
        result["ips"] = []
        result["dns"] = {}
    return result


def version_result(version: str = LATEST_VERSION) -> dict:
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}
