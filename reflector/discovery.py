"""Peer discovery through the Kubernetes API: nodes for the reflector, reflectors for the nodes.

`NodeWatcher` (reflector side) lists, then watches, the Node objects and keeps the set of BGP
peers the reflector should have: one per Ready node, at the node's VTEP address (the annotation
`megalos.io/vtep-ip` when set, else the node's first InternalIP, as the kubelet's `status.hostIP`
that the node agent uses as `--vtep-ip`). `ReflectorFinder` (node side) lists, then watches, the
EndpointSlices of the reflectors' headless Service, so a node agent follows reflectors that move
instead of holding addresses fixed at its start.

Both are the same list-then-watch loop (`ListWatch`): list to get the full state and a
resourceVersion, watch from there, resume from the last resourceVersion seen when the stream ends,
list again on 410 Gone (the version is too old: events were missed), and retry with capped
exponential backoff on any other failure. The pure parts (a Node object -> `NodePeer`, peers ->
desired map, the diff of two maps, EndpointSlices -> reflector endpoints) take plain dicts in the
API's JSON form and are tested with plain values.

Callbacks run on the watcher's thread; an exception in one is logged and does not stop the watch.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

log = logging.getLogger(__name__)

VTEP_ANNOTATION = "megalos.io/vtep-ip"
DEFAULT_REFLECTOR_SERVICE = "megalos/megalos-reflector"
DEFAULT_BGP_PORT_NAME = "bgp"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # set by the EndpointSlice controller
HTTP_GONE = 410
MIN_HEALTHY_WATCH = 1.0  # seconds: a watch that ends sooner with no event counts as a failure


# -- pure logic: nodes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NodePeer:
    """What the reflector needs from one Node object."""
    name: str
    ip: str          # the VTEP address ("" when the node has none we can use)
    ready: bool
    source: str = ""  # where `ip` came from: "annotation", "InternalIP", "ExternalIP" or ""
    problem: str = ""  # why the annotation was ignored, if it was


def _normalise_ip(raw: object) -> str:
    """The canonical text of an IP address, or "" when `raw` is not one."""
    if not isinstance(raw, str):
        return ""
    try:
        return str(ipaddress.ip_address(raw.strip()))
    except ValueError:
        return ""


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
        ip = _normalise_ip(raw)
        if ip:
            return ip, "annotation", ""
        problem = f"annotation {VTEP_ANNOTATION}={raw!r} is not an IP address; ignored"
    addresses = (node.get("status") or {}).get("addresses") or []
    for kind in ("InternalIP", "ExternalIP"):
        for entry in addresses:
            if isinstance(entry, Mapping) and entry.get("type") == kind:
                ip = _normalise_ip(entry.get("address"))
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


# -- pure logic: reflectors ----------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class ReflectorEndpoint:
    address: str
    port: int
    node: str = field(default="", compare=False)


def parse_service_ref(ref: str, default_namespace: str = "megalos") -> tuple[str, str]:
    """"namespace/name" (or "name") -> (namespace, name)."""
    namespace, _, name = ref.strip().rpartition("/")
    namespace = namespace or default_namespace
    if not name or "/" in namespace:
        raise ValueError(f"{ref!r} is not NAMESPACE/SERVICE")
    return namespace, name


def _slice_port(endpoint_slice: Mapping, port_name: str) -> int | None:
    ports = [p for p in endpoint_slice.get("ports") or [] if isinstance(p, Mapping)]
    for port in ports:
        if port.get("name") == port_name and isinstance(port.get("port"), int):
            return port["port"]
    if len(ports) == 1 and isinstance(ports[0].get("port"), int):
        return ports[0]["port"]  # a single unnamed or differently named port
    return None


def reflector_endpoints(slices: Iterable[Mapping],
                        port_name: str = DEFAULT_BGP_PORT_NAME) -> list[ReflectorEndpoint]:
    """The reflectors' BGP endpoints in EndpointSlices (sorted, without duplicates).

    An endpoint counts unless it is explicitly not ready or terminating (the EndpointSlice API
    says a missing `ready` means ready). FQDN slices and slices without the BGP port are skipped.
    """
    found: set[ReflectorEndpoint] = set()
    for endpoint_slice in slices:
        if endpoint_slice.get("addressType") not in ("IPv4", "IPv6"):
            continue
        port = _slice_port(endpoint_slice, port_name)
        if port is None:
            continue
        for endpoint in endpoint_slice.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            for raw in endpoint.get("addresses") or []:
                ip = _normalise_ip(raw)
                if ip:
                    found.add(ReflectorEndpoint(ip, port, str(endpoint.get("nodeName") or "")))
    return sorted(found)


# -- the list-then-watch loop --------------------------------------------------------------------
class Backoff:
    """Capped exponential backoff with jitter: the n-th delay is in [c/2, c], c = min(cap, base * 2**n)."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None):
        self.base, self.cap = base, cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** self.failures))
        self.failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


def _is_gone(exc: BaseException) -> bool:
    return isinstance(exc, k8s_client.ApiException) and exc.status == HTTP_GONE


class ListWatch:
    """List then watch one kind of object, forever, on a thread of its own.

    `list_fn` is a list method of the official client (e.g. `CoreV1Api.list_node`), called with
    `kwargs` (namespace, label selector, ...). `on_reset(items)` gets the full list (a list of
    dicts) after every (re)list; `on_event(type, obj)` each ADDED/MODIFIED/DELETED event.
    """

    def __init__(self, name: str, list_fn: Callable, on_reset: Callable[[list[dict]], None],
                 on_event: Callable[[str, dict], None], *, kwargs: Mapping | None = None,
                 timeout_seconds: int = 300, request_timeout: float = 10.0,
                 backoff: Backoff | None = None):
        self.name = name
        self._list_fn = list_fn
        self._on_reset = on_reset
        self._on_event = on_event
        self._kwargs = dict(kwargs or {})
        self.timeout_seconds = timeout_seconds     # server side: the API server ends the watch
        self.request_timeout = request_timeout     # client side: connect, and reads past that
        self.backoff = backoff or Backoff()
        self.resource_version: str | None = None
        self.synced = threading.Event()            # set after the first successful list
        self.lists = 0                             # (re)lists done, for logs and tests
        self._stopping = threading.Event()
        self._watch: k8s_watch.Watch | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- life cycle
    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name=f"watch-{self.name}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._watch is not None:
                    # Shuts the socket down, which unblocks the reading thread; repeated because
                    # a watch whose response has not arrived yet has no socket to shut down.
                    self._watch.stop()
            thread = self._thread
            if thread is None or thread is threading.current_thread() or not thread.is_alive():
                return
            thread.join(0.05)
            if time.monotonic() >= deadline:
                log.warning("%s: the watch thread did not stop within %.0f s", self.name, timeout)
                return

    # -- the loop
    def run(self) -> None:
        gone_in_a_row = 0
        while not self._stopping.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                started = time.monotonic()
                events = self._watch_once()
                gone_in_a_row = 0
                if events or time.monotonic() - started >= MIN_HEALTHY_WATCH:
                    self.backoff.reset()
                    continue
                failure = "the watch ended at once with no event"  # do not spin on it
            except Exception as exc:  # noqa: BLE001 - every failure is retried
                if self._stopping.is_set():
                    break
                if isinstance(exc, Gone) or _is_gone(exc):
                    log.info("%s: resourceVersion %s expired; listing again", self.name,
                             self.resource_version)
                    self.resource_version = None
                    gone_in_a_row += 1
                    if gone_in_a_row == 1:
                        continue  # relist at once; a server that keeps answering 410 backs off
                failure = _describe(exc)
            delay = self.backoff.next()
            log.warning("%s: %s; retrying in %.1f s", self.name, failure, delay)
            self._stopping.wait(delay)

    def _list(self) -> None:
        response = self._list_fn(**self._kwargs, _preload_content=False,
                                 _request_timeout=self.request_timeout)
        try:
            body = _json(response.data)
        finally:
            response.release_conn()
        items = [item for item in body.get("items") or [] if isinstance(item, dict)]
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion") or ""
        self.lists += 1
        log.debug("%s: listed %d objects at resourceVersion %s", self.name, len(items),
                  self.resource_version)
        _safely(self.name, self._on_reset, items)
        self.synced.set()

    def _watch_once(self) -> int:
        """Watch from the current resourceVersion until the stream ends; the number of events."""
        watch = k8s_watch.Watch()
        with self._lock:
            if self._stopping.is_set():
                return 0
            self._watch = watch
        kwargs = dict(self._kwargs, allow_watch_bookmarks=True,
                      timeout_seconds=self.timeout_seconds,
                      _request_timeout=(self.request_timeout,
                                        self.timeout_seconds + self.request_timeout))
        if self.resource_version:
            kwargs["resource_version"] = self.resource_version
        events = 0
        try:
            for event in watch.stream(self._list_fn, **kwargs):
                if self._stopping.is_set():
                    break
                kind = event.get("type")
                obj = event.get("raw_object")
                if not isinstance(obj, dict):
                    continue
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if kind == "ERROR":  # the client raises on 410 itself; any other ERROR too
                    raise Gone() if obj.get("code") == HTTP_GONE else RuntimeError(obj)
                if version:
                    self.resource_version = version
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    events += 1
                    _safely(self.name, self._on_event, kind, obj)
        finally:
            with self._lock:
                self._watch = None
        return events


def _json(data: bytes) -> dict:
    body = json.loads(data)
    if not isinstance(body, dict):
        raise ValueError("a list response is a JSON object")
    return body


def _describe(exc: BaseException) -> str:
    if isinstance(exc, k8s_client.ApiException):
        hint = " (check the ServiceAccount's RBAC)" if exc.status in (401, 403) else ""
        return f"API error {exc.status} {exc.reason}{hint}"
    return f"{exc.__class__.__name__}: {exc}"


def _safely(name: str, callback: Callable, *args) -> None:
    try:
        callback(*args)
    except Exception:  # noqa: BLE001 - a callback must not end the watch
        log.exception("%s: callback %r failed", name, callback)


# -- the reflector's node watcher ----------------------------------------------------------------
class NodeWatcher:
    """Keeps the reflector's peers equal to the Ready nodes' VTEP addresses.

    `on_change(desired)` is called with the full {ip: node name} map after every (re)list and
    whenever it changes; a `PeerSync` turns those maps into add/remove calls.
    """

    def __init__(self, core_api: k8s_client.CoreV1Api,
                 on_change: Callable[[dict[str, str]], None], *, label_selector: str = "",
                 **list_watch_options):
        self.on_change = on_change
        self.nodes: dict[str, NodePeer] = {}
        self.desired: dict[str, str] = {}
        kwargs = {"label_selector": label_selector} if label_selector else {}
        self.list_watch = ListWatch("nodes", core_api.list_node, self._reset, self._event,
                                    kwargs=kwargs, **list_watch_options)

    def start(self) -> threading.Thread:
        return self.list_watch.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.list_watch.stop(timeout)

    @property
    def synced(self) -> threading.Event:
        return self.list_watch.synced

    def _reset(self, items: list[dict]) -> None:
        self.nodes = {}
        for item in items:
            self._store(node_peer(item))
        self._emit(always=True)

    def _event(self, kind: str, obj: dict) -> None:
        peer = node_peer(obj)
        if kind == "DELETED":
            self.nodes.pop(peer.name, None)
        else:
            self._store(peer)
        self._emit()

    def _store(self, peer: NodePeer) -> None:
        previous = self.nodes.get(peer.name)
        if peer.problem and (previous is None or previous.problem != peer.problem):
            log.warning("node %s: %s", peer.name, peer.problem)
        if peer.name:
            self.nodes[peer.name] = peer

    def _emit(self, always: bool = False) -> None:
        desired = desired_peers(self.nodes.values())
        if desired == self.desired and not always:
            return
        self.desired = desired
        self.on_change(dict(desired))


class PeerSync:
    """Applies desired peer maps as add/remove calls, remembering what was applied.

    Only peers this object added are ever removed (static peers given on the command line are
    left alone). A failed call is logged and retried at the next map: a failed add is not
    recorded as applied, a failed remove stays applied. Removals go first, so a node whose
    address changed is never peered twice.
    """

    def __init__(self, add: Callable[[str], object], remove: Callable[[str], object]):
        self._add, self._remove = add, remove
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
            for ip, name in sorted(diff.added.items()):
                try:
                    self._add(ip)
                except Exception:  # noqa: BLE001
                    log.exception("adding peer %s (node %s) failed; retrying later", ip, name)
                    continue
                log.info("peer %s added (node %s)", ip, name)
                self.applied[ip] = name
            for ip, name in desired.items():  # renames at the same address
                if ip in self.applied:
                    self.applied[ip] = name
            return diff


# -- the node agent's reflector finder -----------------------------------------------------------
class ReflectorFinder:
    """The reflectors' BGP endpoints, from the EndpointSlices of their headless Service.

    `find()` lists once; `start()` lists and watches, calling `on_change(endpoints)` after every
    (re)list and whenever the set changes. Needs get/list/watch on endpointslices in the
    Service's namespace, nothing else.
    """

    def __init__(self, discovery_api: k8s_client.DiscoveryV1Api,
                 service: str = DEFAULT_REFLECTOR_SERVICE,
                 on_change: Callable[[list[ReflectorEndpoint]], None] | None = None, *,
                 port_name: str = DEFAULT_BGP_PORT_NAME, **list_watch_options):
        self.namespace, self.service = parse_service_ref(service)
        self.port_name = port_name
        self.on_change = on_change or (lambda endpoints: None)
        self.slices: dict[str, dict] = {}
        self.endpoints: list[ReflectorEndpoint] = []
        self._api = discovery_api
        self._kwargs = {"namespace": self.namespace,
                        "label_selector": f"{SERVICE_NAME_LABEL}={self.service}"}
        self.list_watch = ListWatch(f"endpointslices of {self.namespace}/{self.service}",
                                    discovery_api.list_namespaced_endpoint_slice,
                                    self._reset, self._event, kwargs=self._kwargs,
                                    **list_watch_options)

    def find(self) -> list[ReflectorEndpoint]:
        response = self._api.list_namespaced_endpoint_slice(**self._kwargs, _preload_content=False,
                                                            _request_timeout=10.0)
        try:
            body = _json(response.data)
        finally:
            response.release_conn()
        return reflector_endpoints(body.get("items") or [], self.port_name)

    def start(self) -> threading.Thread:
        return self.list_watch.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.list_watch.stop(timeout)

    @property
    def synced(self) -> threading.Event:
        return self.list_watch.synced

    def _reset(self, items: list[dict]) -> None:
        self.slices = {_name(item): item for item in items}
        self._emit(always=True)

    def _event(self, kind: str, obj: dict) -> None:
        if kind == "DELETED":
            self.slices.pop(_name(obj), None)
        else:
            self.slices[_name(obj)] = obj
        self._emit()

    def _emit(self, always: bool = False) -> None:
        endpoints = reflector_endpoints(self.slices.values(), self.port_name)
        if endpoints == self.endpoints and not always:
            return
        self.endpoints = endpoints
        self.on_change(list(endpoints))


def _name(obj: Mapping) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


# -- the API client ------------------------------------------------------------------------------
def api_client(kubeconfig: str | None = None) -> k8s_client.ApiClient:
    """An API client: in-cluster (the pod's ServiceAccount) unless a kubeconfig is given or the
    process runs outside a pod, then the kubeconfig (`$KUBECONFIG`, `~/.kube/config`)."""
    configuration = k8s_client.Configuration()
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s_client.ApiClient(configuration)
        except k8s_config.ConfigException:
            pass
    k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return k8s_client.ApiClient(configuration)
