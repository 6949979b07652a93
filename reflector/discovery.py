"""What the reflector learns from the Kubernetes API: its BGP peers (the nodes) and the LAN table
(NetworkAttachmentDefinitions and pods), each watched with kube.watch's list-then-watch loop.

`NodeWatcher` lists, then watches, the Node objects and keeps the set of BGP peers the reflector
should have: one per Ready node, at the node's VTEP address (the annotation `megalos.io/vtep-ip`
when set, else the node's first InternalIP, as the kubelet's `status.hostIP` that the node agent
uses as `--vtep-ip`). A node that stops being Ready stays a peer for a grace time (see
`keep_in_grace`); `PeerSync` turns the maps into add/remove calls, with the nodes' names.

`LanWatcher` lists, then watches, the NetworkAttachmentDefinitions and the pods of every
namespace and feeds them to the reflector's LAN table (reflector.lanview).

The pure parts (a Node object -> `NodePeer`, peers -> desired map, the grace, the diff of two
maps) take plain dicts in the API's JSON form and are tested with plain values. Callbacks run on
the watchers' threads; an exception in one is logged and does not stop the watch.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial

from kubernetes import client as k8s_client

from base.primitives import canonical_ip
from kube.watch import ListWatch

log = logging.getLogger(__name__)

VTEP_ANNOTATION = "megalos.io/vtep-ip"
# How long a node that stopped being Ready stays a peer. Kubernetes itself waits as long before
# evicting the pods of a NotReady node (the default tolerationSeconds of the not-ready and
# unreachable taints): until then those pods may well be running, and their LANs must keep
# working. A node that is really gone loses its routes sooner anyway: its BGP session's hold
# timer expires.
DEFAULT_NOT_READY_GRACE = 300.0
NAD_GROUP, NAD_VERSION, NAD_PLURAL = "k8s.cni.cncf.io", "v1", "network-attachment-definitions"


# -- pure logic: nodes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NodePeer:
    """What the reflector needs from one Node object."""
    name: str
    ip: str          # the VTEP address ("" when the node has none we can use)
    ready: bool
    source: str = ""  # where `ip` came from: "annotation", "InternalIP", "ExternalIP" or ""
    problem: str = ""  # why the annotation was ignored, if it was


def node_vtep_address(node: Mapping) -> tuple[str, str, str]:
    """(address, source, problem) of a Node's VTEP.

    The annotation wins when it holds an IP address; otherwise the first InternalIP, then the
    first ExternalIP: the order in which the kubelet picks `status.hostIP`, so the reflector and
    the node agent (`--vtep-ip $(HOST_IP)`) agree on nodes without the annotation.
    """
    metadata = node.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    problem = ""
    raw = annotations.get(VTEP_ANNOTATION)
    if raw is not None:
        ip = canonical_ip(raw)
        if ip:
            return ip, "annotation", ""
        problem = f"annotation {VTEP_ANNOTATION}={raw!r} is not an IP address; ignored"
    addresses = (node.get("status") or {}).get("addresses") or []
    for kind in ("InternalIP", "ExternalIP"):
        for entry in addresses:
            if isinstance(entry, Mapping) and entry.get("type") == kind:
                ip = canonical_ip(entry.get("address"))
                if ip:
                    return ip, kind, problem
    return "", "", problem


def node_is_ready(node: Mapping) -> bool:
    """The Ready condition is "True" (Unknown, False or missing all mean not ready)."""
    for condition in (node.get("status") or {}).get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def node_peer(node: Mapping) -> NodePeer:
    """A Node object (the API's JSON form) -> name, VTEP address, readiness."""
    name = str((node.get("metadata") or {}).get("name") or "")
    ip, source, problem = node_vtep_address(node)
    return NodePeer(name=name, ip=ip, ready=node_is_ready(node), source=source, problem=problem)


def desired_peers(nodes: Iterable[NodePeer]) -> dict[str, str]:
    """{VTEP address: node name} of the nodes that should be BGP peers: Ready, with an address.

    Two nodes claiming one address is a misconfiguration; the first name in sort order keeps it
    (stable across restarts) and the clash is logged.
    """
    peers: dict[str, str] = {}
    for peer in sorted(nodes, key=lambda p: p.name):
        if not (peer.ready and peer.ip):
            continue
        if peer.ip in peers:
            log.warning("nodes %s and %s both have VTEP address %s; %s is not peered",
                        peers[peer.ip], peer.name, peer.ip, peer.name)
            continue
        peers[peer.ip] = peer.name
    return peers


@dataclass(frozen=True)
class PeerDiff:
    added: dict[str, str] = field(default_factory=dict)    # ip -> node name
    removed: dict[str, str] = field(default_factory=dict)  # ip -> node name it had

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


def diff_peers(old: Mapping[str, str], new: Mapping[str, str]) -> PeerDiff:
    """What to add and remove to go from `old` to `new` ({ip: node name} both).

    Only addresses matter to BGP: a node renamed at the same address is no change, and a node
    whose address changed is one removal plus one addition.
    """
    return PeerDiff(added={ip: new[ip] for ip in new if ip not in old},
                    removed={ip: old[ip] for ip in old if ip not in new})


def reflector_router_id(listen_ip: str) -> str:
    """A BGP identifier for a reflector that runs in its node's network namespace.

    The reflector shares its node's address with that node's agent, whose router id *is* the
    address (it must be: the VTEP address). Two iBGP speakers with one identifier break: FRR
    refuses the OPEN ("bad OPEN, wrong router identifier") and os-ken drops every route whose
    ORIGINATOR_ID equals the identifier of the peer it came from, so every MAC of the reflector's
    own node would be lost. This keeps the low 24 bits in 0.0.0.0/8, which no node can have
    (never assigned to an interface) and which FRR and os-ken accept (non-zero, not class D/E).
    """
    address = ipaddress.ip_address(listen_ip)
    if address.version != 4:
        raise ValueError(f"{listen_ip} is not IPv4: give the reflector an explicit --router-id")
    router_id = ipaddress.IPv4Address(int(address) & 0x00FFFFFF)
    if int(router_id) == 0:
        raise ValueError(f"{listen_ip} gives router id 0.0.0.0: give an explicit --router-id")
    return str(router_id)


def keep_in_grace(desired: Mapping[str, str], previous: Mapping[str, str],
                  nodes: Mapping[str, NodePeer], not_ready_since: Mapping[str, float],
                  now: float, grace: float) -> dict[str, str]:
    """`desired` plus the peers of `previous` whose node still exists at the same address but has
    not been Ready for less than `grace` seconds.

    A kubelet that misses a few heartbeats (a busy node, an API server partition) makes its node
    NotReady while the node's agent and BGP session are fine; withdrawing its routes then would cut
    every LAN through that node for nothing. The grace only keeps peers: a node never seen Ready
    is not peered, and a deleted node (gone from `nodes`) or one whose address changed is not kept.
    """
    kept = dict(desired)
    for ip, name in previous.items():
        node = nodes.get(name)
        if ip in kept or node is None or node.ready or node.ip != ip:
            continue
        since = not_ready_since.get(name)
        if since is not None and now - since < grace:
            kept[ip] = name
    return kept


# -- the node watcher ----------------------------------------------------------------------------
class NodeWatcher:
    """Keeps the reflector's peers equal to the Ready nodes' VTEP addresses.

    `on_change(desired)` is called with the full {ip: node name} map after every (re)list and
    whenever it changes; a `PeerSync` turns those maps into add/remove calls. With
    `not_ready_grace` > 0, a peer whose node stops being Ready stays in the map that long (a
    thread of its own re-checks every second); 0 drops it at once.
    """

    def __init__(self, core_api: k8s_client.CoreV1Api,
                 on_change: Callable[[dict[str, str]], None], *, label_selector: str = "",
                 not_ready_grace: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 **list_watch_options):
        self.on_change = on_change
        self.not_ready_grace = not_ready_grace
        self.nodes: dict[str, NodePeer] = {}
        self.not_ready_since: dict[str, float] = {}
        self.desired: dict[str, str] = {}
        self._clock = clock
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._timer: threading.Thread | None = None
        kwargs = {"label_selector": label_selector} if label_selector else {}
        self.list_watch = ListWatch("nodes", core_api.list_node, self._reset, self._event,
                                    kwargs=kwargs, **list_watch_options)

    def start(self) -> threading.Thread:
        thread = self.list_watch.start()
        if self.not_ready_grace > 0:
            self._timer = threading.Thread(target=self._expire_loop, name="nodes-grace",
                                           daemon=True)
            self._timer.start()
        return thread

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.list_watch.stop(timeout)
        if self._timer is not None:
            self._timer.join(timeout)

    @property
    def synced(self) -> threading.Event:
        return self.list_watch.synced

    def expire(self) -> None:
        """Drop the peers whose grace is over (the grace thread calls this every second; it
        costs nothing while no peer's node is NotReady)."""
        with self._lock:
            if any(not node.ready for node in map(self.nodes.get, self.desired.values())
                   if node is not None):
                self._emit()

    def _expire_loop(self) -> None:
        while not self._stopping.wait(1.0):
            if self.synced.is_set():
                self.expire()

    def _reset(self, items: list[dict]) -> None:
        with self._lock:
            self.nodes = {}
            for item in items:
                self._store(node_peer(item))
            for name in set(self.not_ready_since) - set(self.nodes):
                del self.not_ready_since[name]
            self._emit(always=True)

    def _event(self, kind: str, obj: dict) -> None:
        peer = node_peer(obj)
        with self._lock:
            if kind == "DELETED":
                self.nodes.pop(peer.name, None)
                self.not_ready_since.pop(peer.name, None)
            else:
                self._store(peer)
            self._emit()

    def _store(self, peer: NodePeer) -> None:
        previous = self.nodes.get(peer.name)
        if peer.problem and (previous is None or previous.problem != peer.problem):
            log.warning("node %s: %s", peer.name, peer.problem)
        if not peer.name:
            return
        if peer.ready:
            self.not_ready_since.pop(peer.name, None)
        elif peer.name not in self.not_ready_since:
            self.not_ready_since[peer.name] = self._clock()
            if self.not_ready_grace > 0 and self.desired.get(peer.ip) == peer.name:
                log.warning("node %s is not Ready; it stays a peer for %.0f s unless it recovers",
                            peer.name, self.not_ready_grace)
        self.nodes[peer.name] = peer

    def _emit(self, always: bool = False) -> None:
        desired = desired_peers(self.nodes.values())
        if self.not_ready_grace > 0:
            desired = keep_in_grace(desired, self.desired, self.nodes, self.not_ready_since,
                                    self._clock(), self.not_ready_grace)
        if desired == self.desired and not always:
            return
        self.desired = desired
        self.on_change(dict(desired))


class PeerSync:
    """Applies desired peer maps as add/remove calls, remembering what was applied.

    Only peers this object added are ever removed (static peers given on the command line are
    left alone). A failed call is logged and retried at the next map: a failed add is not
    recorded as applied, a failed remove stays applied. Removals go first, so a node whose
    address changed is never peered twice. `name(ip, node name or None)`, if given, is told
    each applied peer's node name when it is added or renamed, and None when it is removed.
    """

    def __init__(self, add: Callable[[str], object], remove: Callable[[str], object],
                 name: Callable[[str, str | None], object] | None = None):
        self._add, self._remove, self._name = add, remove, name
        self.applied: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, desired: Mapping[str, str]) -> PeerDiff:
        with self._lock:
            diff = diff_peers(self.applied, desired)
            for ip, name in sorted(diff.removed.items()):
                try:
                    self._remove(ip)
                except Exception:  # noqa: BLE001
                    log.exception("removing peer %s (node %s) failed; retrying later", ip, name)
                    continue
                log.info("peer %s removed (node %s)", ip, name)
                del self.applied[ip]
                self._tell_name(ip, None)
            for ip, name in sorted(diff.added.items()):
                try:
                    self._add(ip)
                except Exception:  # noqa: BLE001
                    log.exception("adding peer %s (node %s) failed; retrying later", ip, name)
                    continue
                log.info("peer %s added (node %s)", ip, name)
                self.applied[ip] = name
                self._tell_name(ip, name)
            for ip, name in desired.items():  # renames at the same address
                if ip in self.applied and self.applied[ip] != name:
                    self.applied[ip] = name
                    self._tell_name(ip, name)
            return diff

    def _tell_name(self, ip: str, name: str | None) -> None:
        if self._name is None:
            return
        try:
            self._name(ip, name)
        except Exception:  # noqa: BLE001
            log.exception("naming peer %s %r failed", ip, name)


# -- the LAN watcher -----------------------------------------------------------------------------
class LanWatcher:
    """Feeds the LAN table from the API server: NetworkAttachmentDefinitions (group
    k8s.cni.cncf.io, version v1) and pods, of every namespace, each listed then watched.

    `table` takes `lan_reset(kind, items)` and `lan_event(kind, event type, object)`, kind being
    "nads" or "pods" (a ReflectorState). Needs get/list/watch on both resources, cluster-wide.
    """

    def __init__(self, api_client: k8s_client.ApiClient, table, **list_watch_options):
        custom = k8s_client.CustomObjectsApi(api_client)
        core = k8s_client.CoreV1Api(api_client)
        self.watches = [
            ListWatch(NAD_PLURAL, custom.list_cluster_custom_object,
                      partial(table.lan_reset, "nads"), partial(table.lan_event, "nads"),
                      kwargs={"group": NAD_GROUP, "version": NAD_VERSION, "plural": NAD_PLURAL},
                      **list_watch_options),
            ListWatch("pods", core.list_pod_for_all_namespaces,
                      partial(table.lan_reset, "pods"), partial(table.lan_event, "pods"),
                      **list_watch_options),
        ]

    def start(self) -> None:
        for watch in self.watches:
            watch.start()

    def stop(self, timeout: float = 5.0) -> None:
        for watch in self.watches:
            watch.stop(timeout)

    def wait_synced(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for watch in self.watches:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not watch.synced.wait(left):
                return False
        return True
