"""Where the route reflectors are: the node agent follows the EndpointSlices of their headless
Service, so it peers with reflectors that move instead of addresses fixed at its start.

`ReflectorFinder` lists, then watches, the Service's EndpointSlices (a `kube.watch.ListWatch`);
`ReflectorPeers` turns what it finds into the node speaker's add_reflector and remove_reflector
calls. The pure part (EndpointSlices -> reflector endpoints) takes plain dicts in the API's JSON
form and is tested with plain values.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from kubernetes import client as k8s_client

from base.primitives import canonical_ip
from kube.watch import ListWatch, decode_list, object_name

log = logging.getLogger(__name__)

DEFAULT_REFLECTOR_SERVICE = "megalos/megalos-reflector"
DEFAULT_BGP_PORT_NAME = "bgp"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # set by the EndpointSlice controller


# -- pure logic ----------------------------------------------------------------------------------
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


# -- the finder -------------------------------------------------------------------------------------
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
            body = decode_list(response.data)
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
