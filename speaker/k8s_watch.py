"""Kubernetes list-then-watch, and where the route reflectors are: what a node agent needs from
the API server (and what the reflector builds its own watches on).

`ListWatch` lists one kind of object to get the full state and a resourceVersion, watches from
there, resumes from the last resourceVersion seen when the stream ends, lists again on 410 Gone
(the version is too old: events were missed), and retries with capped exponential backoff on any
other failure. Callbacks run on the watcher's thread; an exception in one is logged and does not
stop the watch.

`ReflectorFinder` (node side) lists, then watches, the EndpointSlices of the reflectors' headless
Service, so a node agent follows reflectors that move instead of holding addresses fixed at its
start; `ReflectorPeers` turns what it finds into the node speaker's add_reflector and
remove_reflector calls. The pure part (EndpointSlices -> reflector endpoints) takes plain dicts in
the API's JSON form and is tested with plain values.

Speaker-level on purpose: the node agent may not import `reflector` (setup.cfg's layers), and the
reflector's node and LAN watchers (reflector/discovery.py) are built on `ListWatch`.
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

DEFAULT_REFLECTOR_SERVICE = "megalos/megalos-reflector"
DEFAULT_BGP_PORT_NAME = "bgp"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # set by the EndpointSlice controller
HTTP_GONE = 410
MIN_HEALTHY_WATCH = 1.0  # seconds: a watch that ends sooner with no event counts as a failure


def canonical_ip(raw: object) -> str:
    """The canonical text of an IP address, or "" when `raw` is not one."""
    if not isinstance(raw, str):
        return ""
    try:
        return str(ipaddress.ip_address(raw.strip()))
    except ValueError:
        return ""


def object_name(obj: Mapping) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


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
                ip = canonical_ip(raw)
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
        self.slices = {object_name(item): item for item in items}
        self._emit(always=True)

    def _event(self, kind: str, obj: dict) -> None:
        if kind == "DELETED":
            self.slices.pop(object_name(obj), None)
        else:
            self.slices[object_name(obj)] = obj
        self._emit()

    def _emit(self, always: bool = False) -> None:
        endpoints = reflector_endpoints(self.slices.values(), self.port_name)
        if endpoints == self.endpoints and not always:
            return
        self.endpoints = endpoints
        self.on_change(list(endpoints))


class ReflectorPeers:
    """Turns the reflector endpoints a `ReflectorFinder` reports into `add(address)` and
    `remove(address)` calls (the node speaker's add_reflector/remove_reflector), remembering what
    it asked for. Addresses in `static` (the agent's --reflector) are never added or removed."""

    def __init__(self, add: Callable[[str], object], remove: Callable[[str], object],
                 static: Iterable[str] = ()):
        self._add, self._remove = add, remove
        self.static = {canonical_ip(a) or a for a in static}
        self.current: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, endpoints: Iterable[ReflectorEndpoint]) -> None:
        with self._lock:
            wanted = {e.address for e in endpoints} - self.static
            for address in sorted(self.current - wanted):
                log.info("reflector %s left the Service's endpoints", address)
                self._remove(address)
            for address in sorted(wanted - self.current):
                log.info("reflector %s found in the Service's endpoints", address)
                self._add(address)
            self.current = wanted


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
