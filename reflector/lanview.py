"""The LAN view: which pod interfaces are on which Megalos LAN, and whether the reflector has every
one of their MACs. Pure logic: plain dicts in the Kubernetes API's JSON form, no client.

What Kubernetes says, and who writes it:

- a NetworkAttachmentDefinition per LAN (Kathara: one per collision domain, label `name` = the
  lab's link name), whose `spec.config` names the plugin `megalos` and the LAN's VNI `vxlanId`;
- on each pod, the networks it asks for (`k8s.v1.cni.cncf.io/networks`, written by Kathara: NAD
  name, namespace, interface, and `mac` when the lab fixes one), and once Multus has attached them,
  what it got (`k8s.v1.cni.cncf.io/network-status`, written by Multus from each ADD's result:
  network "namespace/name", interface, MAC).

A LAN's members are the pod interfaces on its NAD: attached ones from the network status, and
requested ones that are not attached yet (a pod still being created). The LAN has converged when
every member is attached and its MAC is in the reflector's MAC table for the LAN's VNI: every node
of the LAN can then forward to every member.

`LanTable` holds the parsed objects; reflector.discovery.LanWatcher feeds it from list/watch of
NADs and pods, under the ReflectorState's lock, and `ReflectorState.lans` reads it with the MAC
tables.

Annotations and NAD configs are written by the labs' authors: they are parsed within bounds
(base.bounded_json: an annotation at most Kubernetes's own 256 KiB, a config at most the CNI
plugin's 1 MiB, nesting at most 64 deep). An object whose JSON is not within them, or is not JSON,
is left out of the view, as if absent, and logged at a bounded rate: one such pod or NAD never
stops the others from being listed.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from base.bounded_json import BadJson, loads
from base.logs import LogLimiter
from base.primitives import canonical_mac, is_vni
from cni.shim import MAX_STDIN as MAX_CONFIG  # a config larger than this, the plugin refuses

log = logging.getLogger("megalos.reflector")

PLUGIN_TYPE = "megalos"
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
OLD_NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/networks-status"  # Multus before 3.7
LINK_LABEL = "name"  # Kathara's label on a NAD: the lab's collision domain
_ENDED = ("Succeeded", "Failed")  # the pod's sandbox is gone, and with it its interfaces
MAX_ANNOTATION = 256 * 1024  # Kubernetes's limit for all of an object's annotations together


# -- NetworkAttachmentDefinitions ----------------------------------------------------------------
@dataclass(frozen=True)
class LanDefinition:
    """A NAD whose config is (or, in a plugin list, contains) the megalos plugin."""
    namespace: str
    name: str
    vni: int
    link: str | None = None  # Kathara's link name (label `name`)

    @property
    def network(self) -> str:
        """How Multus names the network in a pod's network status."""
        return f"{self.namespace}/{self.name}"


def _megalos_config(raw: object) -> Mapping | None:
    """The megalos plugin's config in a NAD's `spec.config`; BadJson if that is not JSON within
    bounds. Empty is no config here (Multus then reads a file on the node)."""
    if isinstance(raw, str):
        if not raw.strip():
            return None
        raw = loads(raw, MAX_CONFIG, what="spec.config")
    if not isinstance(raw, Mapping):
        return None
    if raw.get("type") == PLUGIN_TYPE:
        return raw
    plugins = raw.get("plugins")
    if isinstance(plugins, list):  # a conflist: the megalos plugin may be one of several
        return next((p for p in plugins if isinstance(p, Mapping) and p.get("type") == PLUGIN_TYPE),
                    None)
    return None


def nad_lan(nad: Mapping) -> LanDefinition | None:
    """The LAN a NetworkAttachmentDefinition defines; None for another plugin's NAD, or one whose
    VNI the plugin would refuse (not an integer in 1..16777215); BadJson for a config that is not
    JSON within bounds."""
    metadata = nad.get("metadata") or {}
    config = _megalos_config((nad.get("spec") or {}).get("config"))
    if config is None:
        return None
    vni = config.get("vxlanId")
    if not is_vni(vni):
        return None
    link = (metadata.get("labels") or {}).get(LINK_LABEL)
    return LanDefinition(str(metadata.get("namespace") or ""), str(metadata.get("name") or ""),
                         vni, link if isinstance(link, str) else None)


# -- pods ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attachment:
    """One pod interface on a secondary network, as Multus reported it."""
    network: str      # "namespace/name" of the NAD
    interface: str
    mac: str          # lower case with colons; "" when Multus reported none


@dataclass(frozen=True)
class Request:
    """One network selection element of the pod's `networks` annotation."""
    network: str               # "namespace/name"
    interface: str | None      # None: Multus picks one (net1, net2, ...)
    mac: str | None


@dataclass(frozen=True)
class PodLans:
    """What the LAN view needs from one pod."""
    namespace: str
    name: str
    node: str                          # spec.nodeName, "" while not scheduled
    attached: tuple[Attachment, ...]
    requested: tuple[Request, ...]


def _qualified(network: str, namespace: str) -> str:
    return network if "/" in network else f"{namespace}/{network}"


def _json_list(raw: object, what: str) -> list | None:
    """The list in an annotation, None if it holds something else; BadJson if not JSON."""
    if not isinstance(raw, str):
        return None
    value = loads(raw, MAX_ANNOTATION, what=what)
    return value if isinstance(value, list) else None


def network_status(pod: Mapping) -> list[Attachment]:
    """The secondary networks Multus attached (entries marked `default` are the primary network,
    and entries without an interface name say nothing about a pod port: both skipped); BadJson
    for an annotation that is not JSON within bounds."""
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    namespace = str(metadata.get("namespace") or "")
    entries = _json_list(annotations.get(NETWORK_STATUS_ANNOTATION), NETWORK_STATUS_ANNOTATION)
    if entries is None:
        entries = _json_list(annotations.get(OLD_NETWORK_STATUS_ANNOTATION),
                             OLD_NETWORK_STATUS_ANNOTATION) or []
    found = []
    for entry in entries:
        if not isinstance(entry, Mapping) or entry.get("default") is True:
            continue
        name, interface = entry.get("name"), entry.get("interface")
        if not (isinstance(name, str) and name and isinstance(interface, str) and interface):
            continue
        found.append(Attachment(_qualified(name, namespace), interface,
                                canonical_mac(entry.get("mac"))))
    return found


def network_requests(pod: Mapping) -> list[Request]:
    """The pod's network selection elements: the JSON list form (what Kathara writes) or the short
    text form `[namespace/]name[@interface]`, comma-separated; BadJson for JSON (text starting
    with `[` or `{`) that is malformed or not within bounds (Multus refuses such a pod too)."""
    metadata = pod.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "")
    raw = (metadata.get("annotations") or {}).get(NETWORKS_ANNOTATION)
    if not isinstance(raw, str) or not raw.strip():
        return []
    if raw.lstrip().startswith(("[", "{")):
        elements = _json_list(raw, NETWORKS_ANNOTATION) or []
    else:
        if len(raw) > MAX_ANNOTATION:
            raise BadJson(f"{NETWORKS_ANNOTATION} is larger than {MAX_ANNOTATION} bytes")
        elements = []
        for item in raw.split(","):
            name, _, interface = item.strip().partition("@")
            if name:
                elements.append({"name": name, **({"interface": interface} if interface else {})})
    requests = []
    for element in elements:
        if not isinstance(element, Mapping) or not isinstance(element.get("name"), str):
            continue
        element_namespace = element.get("namespace")
        if not isinstance(element_namespace, str) or not element_namespace:
            element_namespace = namespace
        interface = element.get("interface")
        mac = canonical_mac(element.get("mac"))
        requests.append(Request(_qualified(element["name"], element_namespace),
                                interface if isinstance(interface, str) and interface else None,
                                mac or None))
    return requests


def pod_lans(pod: Mapping) -> PodLans | None:
    """A pod's requested and attached secondary networks; None when it has neither, or when it
    has ended (Succeeded, Failed: its sandbox, and with it every interface, is gone); BadJson
    when one of its Multus annotations is not JSON within bounds."""
    if (pod.get("status") or {}).get("phase") in _ENDED:
        return None
    attached, requested = network_status(pod), network_requests(pod)
    if not (attached or requested):
        return None
    metadata = pod.get("metadata") or {}
    return PodLans(str(metadata.get("namespace") or ""), str(metadata.get("name") or ""),
                   str((pod.get("spec") or {}).get("nodeName") or ""), tuple(attached),
                   tuple(requested))


# -- members and the view ------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    namespace: str      # the pod's
    pod: str
    interface: str | None
    mac: str | None
    node: str
    attached: bool      # Multus reported the interface; False: requested, not attached yet


def pod_members(pod: PodLans, network: str) -> list[Member]:
    """The pod's interfaces on one network: attached ones, then requested ones not attached yet
    (matched by interface name; requests without one by count)."""
    attached = [a for a in pod.attached if a.network == network]
    requested = [r for r in pod.requested if r.network == network]
    members = [Member(pod.namespace, pod.name, a.interface, a.mac or None, pod.node, True)
               for a in attached]
    names = {a.interface for a in attached}
    named = {r.interface for r in requested if r.interface}
    for request in requested:
        if request.interface and request.interface not in names:
            members.append(Member(pod.namespace, pod.name, request.interface, request.mac,
                                  pod.node, False))
    unnamed = [r for r in requested if not r.interface]
    spare = len([a for a in attached if a.interface not in named])  # attached for unnamed ones
    for request in unnamed[spare:]:
        members.append(Member(pod.namespace, pod.name, None, request.mac, pod.node, False))
    return members


def lan_view(lan: LanDefinition, members: Iterable[Member],
             announced: Callable[[int, str], list[str]], claims: Iterable = ()) -> dict:
    """One LAN for the API: its members, each with the VTEPs announcing its MAC in the LAN's VNI
    (`announced(vni, mac)`), `converged`: every member attached and announced, and who owns the
    VNI (`claims`: base.tenancy.VniClaim, one per namespace, the owner first): `vni_owner`, the
    owner's namespace (None while nobody claims the VNI), `vni_claimed_by`, every namespace
    claiming it (more than one: two namespaces on one wire)."""
    rows = []
    for m in sorted(members, key=lambda m: (m.namespace, m.pod, m.interface or "", m.mac or "")):
        vteps = announced(lan.vni, m.mac) if m.mac else []
        rows.append({"pod": m.pod, "namespace": m.namespace, "interface": m.interface,
                     "mac": m.mac, "node": m.node or None, "attached": m.attached,
                     "vteps": vteps, "announced": bool(vteps)})
    claimed_by = [claim.namespace for claim in claims]
    return {"namespace": lan.namespace, "name": lan.name, "link": lan.link, "vni": lan.vni,
            "members": rows, "converged": all(r["attached"] and r["announced"] for r in rows),
            "vni_owner": claimed_by[0] if claimed_by else None, "vni_claimed_by": claimed_by}


class LanTable:
    """The parsed NADs and pods, indexed for the view. Not thread-safe: ReflectorState's lock
    guards it. `watching` says someone feeds it; `synced` which kinds have been listed; an object
    with bad JSON (see the module) is left out and logged."""

    KINDS = ("nads", "pods")

    def __init__(self):
        self.warnings = LogLimiter(log)  # a tenant chooses how many bad objects, not how many lines
        self.watching = False
        self.synced = {kind: False for kind in self.KINDS}
        self.lans: dict[tuple[str, str], LanDefinition] = {}
        self.pods: dict[tuple[str, str], PodLans] = {}
        self._users: dict[str, set[tuple[str, str]]] = {}  # network -> pods asking or attached

    @staticmethod
    def _key(obj: Mapping) -> tuple[str, str]:
        metadata = obj.get("metadata") or {}
        return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")

    def reset(self, kind: str, items: Iterable[Mapping]) -> None:
        """The full list of one kind (after a (re)list): replaces what was known of it."""
        if kind == "nads":
            self.lans = {}
        else:
            self.pods, self._users = {}, {}
        for item in items:
            self.event(kind, "ADDED", item)
        self.synced[kind] = True

    def event(self, kind: str, event_type: str, obj: Mapping) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        key = self._key(obj)
        parse = nad_lan if kind == "nads" else pod_lans
        try:
            parsed = None if event_type == "DELETED" else parse(obj)
        except BadJson as exc:
            parsed = None
            version = (obj.get("metadata") or {}).get("resourceVersion")
            self.warnings.warning(f"bad-{kind}", "LAN view: %s %s/%s left out: %s", kind[:-1],
                                  *key, exc, key=(kind, *key, version))
        if kind == "nads":
            if parsed is None:
                self.lans.pop(key, None)
            else:
                self.lans[key] = parsed
            return
        self._forget_pod(key)
        if parsed is not None:
            self.pods[key] = parsed
            for network in ({a.network for a in parsed.attached}
                            | {r.network for r in parsed.requested}):
                self._users.setdefault(network, set()).add(key)

    def _forget_pod(self, key: tuple[str, str]) -> None:
        pod = self.pods.pop(key, None)
        if pod is None:
            return
        for network in {a.network for a in pod.attached} | {r.network for r in pod.requested}:
            users = self._users.get(network)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._users[network]

    def view(self, namespace: str | None, announced: Callable[[int, str], list[str]],
             claimants: Callable[[int], list] = lambda vni: []) -> list[dict]:
        """The LANs of `namespace` (every namespace when None), by namespace and name;
        `claimants(vni)`: the VNI's claims, owner first (lan_view)."""
        rows = []
        for key in sorted(self.lans):
            if namespace is not None and key[0] != namespace:
                continue
            lan = self.lans[key]
            members = [m for pod_key in self._users.get(lan.network, ())
                       for m in pod_members(self.pods[pod_key], lan.network)]
            rows.append(lan_view(lan, members, announced, claimants(lan.vni)))
        return rows
