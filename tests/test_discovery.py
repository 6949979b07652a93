"""Peer discovery (reflector.discovery, speaker.reflectors, and kube.watch under both): pure logic with plain
values, and the list/watch loops against an API server speaking the Kubernetes protocol (kmock's
in-memory emulator: HTTP lists, watch streams, creates, merge patches, deletes; there is no
kube-apiserver to be had here).

The emulator (lab.multus.ApiServerEmulator) runs on an asyncio loop in a background thread; the
code under test uses the official (synchronous) client from its own thread, as it does in the
reflector and the agent.
"""
from __future__ import annotations

import random
import threading
import time

import pytest

kmock = pytest.importorskip("kmock")
from kubernetes import client as k8s_client  # noqa: E402

from lab.cluster import wait_until  # noqa: E402
from lab.multus import ApiServerEmulator  # noqa: E402
from reflector import discovery  # noqa: E402
from reflector.discovery import (  # noqa: E402
    NodePeer, NodeWatcher, PeerSync, desired_peers, diff_peers, keep_in_grace, node_is_ready,
    node_peer, node_vtep_address, reflector_router_id)
from kube.client import api_client  # noqa: E402
from kube.watch import Backoff  # noqa: E402
from speaker.reflectors import (  # noqa: E402
    SERVICE_NAME_LABEL, ReflectorEndpoint, ReflectorFinder, ReflectorPeers, parse_service_ref,
    reflector_endpoints)

NODES = "v1/nodes"
SLICES = "discovery.k8s.io/v1/endpointslices"


# -- object builders -----------------------------------------------------------------------------
def node(name: str, ip: str = "", ready: str | None = "True", *, annotation: str | None = None,
         external: str = "", rv: str = "1") -> dict:
    addresses = [{"type": "Hostname", "address": name}]
    if ip:
        addresses.append({"type": "InternalIP", "address": ip})
    if external:
        addresses.append({"type": "ExternalIP", "address": external})
    conditions = [{"type": "MemoryPressure", "status": "False"}]
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready})
    metadata: dict = {"name": name, "resourceVersion": rv}
    if annotation is not None:
        metadata["annotations"] = {discovery.VTEP_ANNOTATION: annotation}
    return {"apiVersion": "v1", "kind": "Node", "metadata": metadata,
            "status": {"addresses": addresses, "conditions": conditions}}


def endpoint_slice(name: str, *addresses: str, port: int = 1790, port_name: str = "bgp",
                   ready: bool | None = True, service: str = "megalos-reflector",
                   address_type: str = "IPv4") -> dict:
    endpoints = []
    for address in addresses:
        conditions = {} if ready is None else {"ready": ready}
        endpoints.append({"addresses": [address], "conditions": conditions,
                          "nodeName": f"node-{address}"})
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "megalos", "resourceVersion": "1",
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": address_type, "endpoints": endpoints,
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}


# -- pure logic: nodes ---------------------------------------------------------------------------
def test_vtep_address_is_the_first_internal_ip():
    assert node_vtep_address(node("a", "10.0.0.1")) == ("10.0.0.1", "InternalIP", "")


def test_vtep_annotation_overrides_the_internal_ip():
    assert node_vtep_address(node("a", "10.0.0.1", annotation=" 192.168.7.1")) == \
        ("192.168.7.1", "annotation", "")


def test_invalid_vtep_annotation_falls_back_and_says_why():
    ip, source, problem = node_vtep_address(node("a", "10.0.0.1", annotation="eth1"))
    assert (ip, source) == ("10.0.0.1", "InternalIP")
    assert "not an IP address" in problem and "eth1" in problem


def test_vtep_external_ip_when_no_internal_ip_and_ipv6_normalised():
    assert node_vtep_address(node("a", external="2001:DB8:0::7")) == \
        ("2001:db8::7", "ExternalIP", "")
    assert node_vtep_address(node("a")) == ("", "", "")
    assert node_vtep_address({}) == ("", "", "")


@pytest.mark.parametrize("status, ready", [("True", True), ("False", False),
                                           ("Unknown", False), (None, False)])
def test_node_readiness_follows_the_ready_condition(status, ready):
    assert node_is_ready(node("a", "10.0.0.1", ready=status)) is ready


def test_node_peer_from_a_node_object():
    assert node_peer(node("w1", "10.0.0.5", annotation="10.9.9.9")) == \
        NodePeer("w1", "10.9.9.9", True, "annotation", "")


def test_desired_peers_are_ready_nodes_with_an_address():
    peers = [NodePeer("a", "10.0.0.1", True), NodePeer("b", "10.0.0.2", False),
             NodePeer("c", "", True), NodePeer("d", "10.0.0.4", True)]
    assert desired_peers(peers) == {"10.0.0.1": "a", "10.0.0.4": "d"}


def test_two_nodes_with_one_address_the_first_name_keeps_it(caplog):
    peers = [NodePeer("zeta", "10.0.0.1", True), NodePeer("alpha", "10.0.0.1", True)]
    assert desired_peers(peers) == {"10.0.0.1": "alpha"}
    assert "both have VTEP address 10.0.0.1" in caplog.text


def test_diff_peers():
    old = {"10.0.0.1": "a", "10.0.0.2": "b", "10.0.0.3": "c"}
    new = {"10.0.0.1": "a-renamed", "10.0.0.3": "c", "10.0.0.9": "b"}  # b moved address
    diff = diff_peers(old, new)
    assert diff.added == {"10.0.0.9": "b"}
    assert diff.removed == {"10.0.0.2": "b"}
    assert not diff_peers(old, dict(old))
    assert diff_peers({}, new).added == new and diff_peers(old, {}).removed == old


class Recorder:
    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[tuple[str, str]] = []
        self.fail = set(fail)

    def add(self, ip):
        self.calls.append(("add", ip))
        if ip in self.fail:
            raise RuntimeError(f"BGP process refused {ip}")

    def remove(self, ip):
        self.calls.append(("remove", ip))


def test_peer_sync_adds_removes_and_retries_failed_adds():
    rec = Recorder(fail={"10.0.0.2"})
    sync = PeerSync(rec.add, rec.remove)
    sync({"10.0.0.1": "a", "10.0.0.2": "b"})
    assert sync.applied == {"10.0.0.1": "a"}
    rec.fail.clear()
    rec.calls.clear()
    sync({"10.0.0.1": "a", "10.0.0.2": "b"})       # same map: the failed add is retried
    assert rec.calls == [("add", "10.0.0.2")]
    rec.calls.clear()
    sync({"10.0.0.3": "a", "10.0.0.2": "b"})       # a moved: removal first, then addition
    assert rec.calls == [("remove", "10.0.0.1"), ("add", "10.0.0.3")]
    assert sync.applied == {"10.0.0.2": "b", "10.0.0.3": "a"}


def test_peer_sync_never_removes_peers_it_did_not_add():
    rec = Recorder()
    sync = PeerSync(rec.add, rec.remove)
    sync({})
    assert rec.calls == []  # a static --peer of the reflector stays


def test_peer_sync_tells_the_node_names():
    rec, names = Recorder(fail={"10.0.0.2"}), []
    sync = PeerSync(rec.add, rec.remove, lambda ip, name: names.append((ip, name)))
    sync({"10.0.0.1": "a", "10.0.0.2": "b"})
    assert names == [("10.0.0.1", "a")]  # not b: its add failed
    names.clear()
    sync({"10.0.0.1": "a-renamed"})
    assert names == [("10.0.0.1", "a-renamed")]
    names.clear()
    sync({"10.0.0.1": "a-renamed"})
    assert names == []  # nothing changed: nothing said
    sync({})
    assert names == [("10.0.0.1", None)]
    broken = PeerSync(rec.add, rec.remove, lambda ip, name: 1 / 0)
    assert broken({"10.0.0.7": "g"}).added and broken.applied == {"10.0.0.7": "g"}


def test_not_ready_nodes_keep_their_peering_for_the_grace():
    nodes = {"a": NodePeer("a", "10.0.0.1", False), "b": NodePeer("b", "10.0.0.2", True),
             "c": NodePeer("c", "10.0.0.9", False), "d": NodePeer("d", "10.0.0.4", False)}
    previous = {"10.0.0.1": "a", "10.0.0.2": "b", "10.0.0.3": "c", "10.0.0.5": "gone"}
    since = {"a": 100.0, "c": 100.0, "d": 100.0}
    desired = desired_peers(nodes.values())
    assert desired == {"10.0.0.2": "b"}
    # a: NotReady for 10 s of 30, kept; c: its address changed; gone: deleted; d: never a peer.
    assert keep_in_grace(desired, previous, nodes, since, 110.0, 30.0) == \
        {"10.0.0.2": "b", "10.0.0.1": "a"}
    assert keep_in_grace(desired, previous, nodes, since, 130.0, 30.0) == {"10.0.0.2": "b"}
    assert keep_in_grace(desired, previous, nodes, {}, 110.0, 30.0) == {"10.0.0.2": "b"}
    taken = {"10.0.0.1": "z", "10.0.0.2": "b"}  # another Ready node has a's address now
    assert keep_in_grace(taken, previous, nodes, since, 110.0, 30.0) == taken


def test_reflector_peers_follow_the_endpoints_but_not_the_static_ones():
    calls = []
    peers = ReflectorPeers(lambda ip: calls.append(("add", ip)),
                           lambda ip: calls.append(("remove", ip)), static=["10.0.0.9"])
    peers([ReflectorEndpoint("10.0.0.1", 1790), ReflectorEndpoint("10.0.0.9", 1790)])
    assert calls == [("add", "10.0.0.1")]
    calls.clear()
    peers([ReflectorEndpoint("10.0.0.2", 1790), ReflectorEndpoint("10.0.0.1", 1790)])
    assert calls == [("add", "10.0.0.2")]
    calls.clear()
    peers([ReflectorEndpoint("10.0.0.3", 1790)])
    assert calls == [("remove", "10.0.0.1"), ("remove", "10.0.0.2"), ("add", "10.0.0.3")]
    calls.clear()
    peers([])
    assert calls == [("remove", "10.0.0.3")] and peers.current == set()


def test_reflector_router_id_is_never_a_node_address():
    assert reflector_router_id("10.1.2.3") == "0.1.2.3"
    assert reflector_router_id("192.168.56.11") == "0.168.56.11"
    for _ in range(200):
        ip = ".".join(str(random.randint(1, 223)) for _ in range(3)) + f".{random.randint(1, 254)}"
        router_id = reflector_router_id(ip)
        assert router_id != ip and router_id.startswith("0.") and router_id != "0.0.0.0"
    with pytest.raises(ValueError, match="IPv4"):
        reflector_router_id("2001:db8::1")
    with pytest.raises(ValueError, match="0.0.0.0"):
        reflector_router_id("10.0.0.0")


# -- pure logic: reflectors ----------------------------------------------------------------------
def test_parse_service_ref():
    assert parse_service_ref("megalos/megalos-reflector") == ("megalos", "megalos-reflector")
    assert parse_service_ref("rr") == ("megalos", "rr")
    for bad in ("", "megalos/", "a/b/c"):
        with pytest.raises(ValueError):
            parse_service_ref(bad)


def test_reflector_endpoints_from_slices():
    slices = [endpoint_slice("s1", "10.0.0.2", "10.0.0.1"),
              endpoint_slice("s2", "10.0.0.3", ready=False),            # not ready: skipped
              endpoint_slice("s3", "10.0.0.4", ready=None),             # unknown means ready
              endpoint_slice("s4", "10.0.0.1"),                         # duplicate
              endpoint_slice("s5", "rr.example", address_type="FQDN"),  # not an address
              endpoint_slice("s6", "fd00::1", port=1791, port_name="other",
                             address_type="IPv6")]                      # the only port: taken
    terminating = endpoint_slice("s7", "10.0.0.7")
    terminating["endpoints"][0]["conditions"] = {"ready": True, "terminating": True}
    slices.append(terminating)
    no_port = endpoint_slice("s8", "10.0.0.8")
    no_port["ports"] = []
    slices.append(no_port)
    assert reflector_endpoints(slices) == [
        ReflectorEndpoint("10.0.0.1", 1790), ReflectorEndpoint("10.0.0.2", 1790),
        ReflectorEndpoint("10.0.0.4", 1790), ReflectorEndpoint("fd00::1", 1791)]
    assert reflector_endpoints(slices)[0].node == "node-10.0.0.1"


def test_backoff_grows_caps_and_resets():
    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(6)]
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings))
    backoff.reset()
    assert backoff.next() <= 1.0


# -- an API server speaking the Kubernetes protocol ----------------------------------------------
# kmock's KubernetesEmulator on a loop in a background thread, driven from these sync tests.
@pytest.fixture
def api():
    with ApiServerEmulator() as server:
        yield server




class Changes:
    """Collects the maps a watcher hands to on_change (thread-safe)."""

    def __init__(self):
        self.seen: list = []
        self._lock = threading.Lock()

    def __call__(self, value):
        with self._lock:
            self.seen.append(value)

    @property
    def last(self):
        with self._lock:
            return self.seen[-1] if self.seen else None


def fast(**extra) -> dict:
    return {"backoff": Backoff(base=0.05, cap=0.2), "request_timeout": 5.0, **extra}


@pytest.fixture
def node_watcher(api):
    started: list[NodeWatcher] = []

    def make(on_change, **options):
        watcher = NodeWatcher(k8s_client.CoreV1Api(api.api_client), on_change, **fast(**options))
        watcher.start()
        started.append(watcher)
        return watcher
    yield make
    for watcher in started:
        watcher.stop()


# -- NodeWatcher against the emulator ------------------------------------------------------------
def test_nodes_added_not_ready_annotated_and_deleted(api, node_watcher):
    api.request("POST", "/api/v1/nodes", node("cp1", "10.0.0.1"))
    api.request("POST", "/api/v1/nodes", node("w1", "10.0.0.2"))
    api.request("POST", "/api/v1/nodes", node("w2", "10.0.0.3", ready="False"))
    rec = Recorder()
    sync = PeerSync(rec.add, rec.remove)
    changes = Changes()

    def on_change(desired):
        changes(desired)
        sync(desired)
    watcher = node_watcher(on_change)
    assert watcher.synced.wait(5)
    wait_until(lambda: changes.last == {"10.0.0.1": "cp1", "10.0.0.2": "w1"}, what="initial list")

    api.request("POST", "/api/v1/nodes", node("w3", "10.0.0.4"))
    wait_until(lambda: "10.0.0.4" in (changes.last or {}), what="added node")

    api.request("PATCH", "/api/v1/nodes/w2",
                {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    wait_until(lambda: (changes.last or {}).get("10.0.0.3") == "w2", what="node became Ready")

    api.request("PATCH", "/api/v1/nodes/w1",
                {"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})
    wait_until(lambda: "10.0.0.2" not in changes.last, what="NotReady node removed")

    api.request("PATCH", "/api/v1/nodes/w3",
                {"metadata": {"annotations": {discovery.VTEP_ANNOTATION: "192.168.9.4"}}})
    wait_until(lambda: changes.last.get("192.168.9.4") == "w3" and "10.0.0.4" not in changes.last,
             what="annotation override")

    api.request("DELETE", "/api/v1/nodes/cp1")
    wait_until(lambda: "10.0.0.1" not in changes.last, what="deleted node removed")

    assert changes.last == {"10.0.0.3": "w2", "192.168.9.4": "w3"}
    assert sync.applied == changes.last
    assert ("remove", "10.0.0.4") in rec.calls and ("add", "192.168.9.4") in rec.calls
    assert rec.calls.index(("remove", "10.0.0.4")) < rec.calls.index(("add", "192.168.9.4"))
    assert watcher.list_watch.lists == 1  # one list, then everything came from the watch


def test_unchanged_peers_are_not_reported_again(api, node_watcher):
    api.request("POST", "/api/v1/nodes", node("w1", "10.0.0.2"))
    changes = Changes()
    watcher = node_watcher(changes)
    wait_until(lambda: changes.last == {"10.0.0.2": "w1"}, what="initial list")
    count = len(changes.seen)
    api.request("PATCH", "/api/v1/nodes/w1", {"metadata": {"labels": {"role": "x"}}})
    api.request("POST", "/api/v1/nodes", node("w9", "10.0.0.9", ready="False"))
    api.request("POST", "/api/v1/nodes", node("w8", "10.0.0.8"))
    wait_until(lambda: "10.0.0.8" in changes.last, what="a real change")
    assert len(changes.seen) == count + 1
    assert watcher.nodes["w9"].ready is False


def test_watch_410_gone_relists_and_drops_nodes_deleted_meanwhile(api, node_watcher):
    api.request("POST", "/api/v1/nodes", node("w1", "10.0.0.2", rv="10"))
    # The first list is stale (w-old was deleted since) and the first watch says 410 Gone.
    stale = {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "5"},
             "items": [node("w1", "10.0.0.2", rv="3"), node("w-old", "10.0.0.66", rv="4")]}
    gone = {"type": "ERROR", "object": {
        "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410,
        "reason": "Expired", "message": "too old resource version: 5 (10)"}}
    api.run(lambda km: km[kmock.action.LIST, kmock.resource(NODES)][:1] << stale)
    api.run(lambda km: km[kmock.action.WATCH, kmock.resource(NODES)][:1] << (gone,))
    changes = Changes()
    watcher = node_watcher(changes)
    wait_until(lambda: watcher.list_watch.lists == 2, what="relist after 410")
    wait_until(lambda: changes.last == {"10.0.0.2": "w1"}, what="state from the relist")
    assert {"10.0.0.2": "w1", "10.0.0.66": "w-old"} in changes.seen
    watches = api.requests("GET", "/api/v1/nodes")
    watch_rvs = [r.params.get("resourceVersion") for r in watches if r.params.get("watch")]
    assert watch_rvs[0] == "5"  # watched from the (stale) list's version, which then expired
    api.request("POST", "/api/v1/nodes", node("w2", "10.0.0.3"))
    wait_until(lambda: "10.0.0.3" in changes.last, what="events after the relist")


def test_watch_resumes_from_the_last_resource_version(api, node_watcher):
    api.request("POST", "/api/v1/nodes", node("w1", "10.0.0.2", rv="7"))
    # The first watch stream delivers one event and ends (as the API server does at its
    # timeoutSeconds); the next one must resume from that event's resourceVersion, not relist.
    event = {"type": "ADDED", "object": node("w5", "10.0.0.5", rv="42")}
    api.run(lambda km: km[kmock.action.WATCH, kmock.resource(NODES)][:1] << (event,))
    changes = Changes()
    watcher = node_watcher(changes)
    wait_until(lambda: len([r for r in api.requests("GET", "/api/v1/nodes")
                          if r.params.get("watch")]) >= 2, what="second watch")
    watches = [r for r in api.requests("GET", "/api/v1/nodes") if r.params.get("watch")]
    assert watches[1].params.get("resourceVersion") == "42"
    assert watches[0].params.get("allowWatchBookmarks") == "true"
    assert "timeoutSeconds" in watches[0].params
    assert watcher.list_watch.lists == 1
    wait_until(lambda: changes.last == {"10.0.0.2": "w1", "10.0.0.5": "w5"}, what="both nodes")


def test_api_errors_are_retried_with_backoff(api, node_watcher):
    api.request("POST", "/api/v1/nodes", node("w1", "10.0.0.2"))
    forbidden = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                 "reason": "Forbidden", "message": "nodes is forbidden"}
    api.run(lambda km: km[kmock.action.LIST, kmock.resource(NODES)][:2] << 403 << forbidden)
    api.run(lambda km: km[kmock.action.WATCH, kmock.resource(NODES)][:1] << 500)
    changes = Changes()
    watcher = node_watcher(changes)
    wait_until(lambda: changes.last == {"10.0.0.2": "w1"}, what="list after two 403s")
    wait_until(lambda: len([r for r in api.requests("GET", "/api/v1/nodes")
                          if r.params.get("watch")]) >= 2, what="watch after a 500")
    api.request("POST", "/api/v1/nodes", node("w2", "10.0.0.3"))
    wait_until(lambda: "10.0.0.3" in changes.last, what="events after the errors")
    assert watcher.list_watch.lists == 1


def test_a_failing_callback_does_not_stop_the_watch(api, node_watcher):
    calls = Changes()

    def on_change(desired):
        calls(desired)
        if len(calls.seen) == 1:
            raise RuntimeError("BGP process busy")
    node_watcher(on_change)
    wait_until(lambda: calls.seen, what="first call")
    api.request("POST", "/api/v1/nodes", node("w1", "10.0.0.2"))
    wait_until(lambda: calls.last == {"10.0.0.2": "w1"}, what="second call")


def test_stop_interrupts_a_blocked_watch(api, node_watcher):
    watcher = node_watcher(Changes())
    assert watcher.synced.wait(5)
    wait_until(lambda: any(r.params.get("watch") for r in api.requests("GET", "/api/v1/nodes")),
             what="watch started")
    started = time.monotonic()
    watcher.stop(timeout=5)
    assert not watcher.list_watch._thread.is_alive()
    assert time.monotonic() - started < 3


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_not_ready_node_stays_a_peer_for_the_grace(api, node_watcher):
    api.request("POST", "/api/v1/nodes", node("w1", "10.0.0.2"))
    api.request("POST", "/api/v1/nodes", node("w2", "10.0.0.3"))
    api.request("POST", "/api/v1/nodes", node("w3", "10.0.0.4", ready="False"))
    clock, changes = Clock(), Changes()
    watcher = node_watcher(changes, not_ready_grace=30.0, clock=clock)
    wait_until(lambda: changes.last == {"10.0.0.2": "w1", "10.0.0.3": "w2"}, what="initial list")
    api.request("PATCH", "/api/v1/nodes/w1",
                {"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})
    wait_until(lambda: not watcher.nodes["w1"].ready, what="w1 NotReady")
    clock.now += 29
    watcher.expire()
    assert changes.last == {"10.0.0.2": "w1", "10.0.0.3": "w2"}  # a kubelet hiccup: kept
    api.request("PATCH", "/api/v1/nodes/w1",
                {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    wait_until(lambda: watcher.nodes["w1"].ready, what="w1 Ready again")
    clock.now += 60
    watcher.expire()
    assert "10.0.0.2" in changes.last  # recovered in time: the grace starts afresh next time
    api.request("PATCH", "/api/v1/nodes/w1",
                {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    wait_until(lambda: not watcher.nodes["w1"].ready, what="w1 NotReady again")
    clock.now += 31
    wait_until(lambda: changes.last == {"10.0.0.3": "w2"}, what="the grace thread drops w1")
    api.request("DELETE", "/api/v1/nodes/w2")  # deleted: no grace
    wait_until(lambda: changes.last == {}, what="w2 deleted")
    assert "10.0.0.4" not in str(changes.seen)  # never Ready: never peered


def test_node_watcher_passes_a_label_selector(api, node_watcher):
    watcher = node_watcher(Changes(), label_selector="megalos.io/peer=true")
    assert watcher.synced.wait(5)
    lists = api.requests("GET", "/api/v1/nodes")
    assert lists[0].params.get("labelSelector") == "megalos.io/peer=true"


# -- ReflectorFinder against the emulator ----------------------------------------------------------
SLICE_PATH = "/apis/discovery.k8s.io/v1/namespaces/megalos/endpointslices"


def test_reflector_finder_lists_the_service_endpoints(api):
    api.request("POST", SLICE_PATH, endpoint_slice("megalos-reflector-abcde", "10.0.0.1",
                                                   "10.0.0.2"))
    finder = ReflectorFinder(k8s_client.DiscoveryV1Api(api.api_client), "megalos/megalos-reflector")
    assert finder.find() == [ReflectorEndpoint("10.0.0.1", 1790),
                             ReflectorEndpoint("10.0.0.2", 1790)]
    request = api.requests("GET", SLICE_PATH)[-1]
    assert request.params.get("labelSelector") == "kubernetes.io/service-name=megalos-reflector"


def test_reflector_finder_follows_reflectors_that_move(api):
    api.request("POST", SLICE_PATH, endpoint_slice("megalos-reflector-abcde", "10.0.0.1"))
    changes = Changes()
    finder = ReflectorFinder(k8s_client.DiscoveryV1Api(api.api_client), on_change=changes, **fast())
    finder.start()
    try:
        wait_until(lambda: changes.last == [ReflectorEndpoint("10.0.0.1", 1790)], what="first list")
        api.request("PATCH", f"{SLICE_PATH}/megalos-reflector-abcde",
                    {"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                                   {"addresses": ["10.0.0.5"], "conditions": {"ready": True}}]})
        wait_until(lambda: len(changes.last) == 2, what="second reflector")
        api.request("POST", SLICE_PATH, endpoint_slice("megalos-reflector-fghij", "10.0.0.6"))
        wait_until(lambda: len(changes.last) == 3, what="second slice")
        api.request("DELETE", f"{SLICE_PATH}/megalos-reflector-abcde")
        wait_until(lambda: changes.last == [ReflectorEndpoint("10.0.0.6", 1790)], what="slice gone")
    finally:
        finder.stop()


def test_api_client_from_a_kubeconfig(api, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{api.url}"}}}}]
users: [{{name: u, user: {{token: t0ken}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    api.request("POST", "/api/v1/nodes", node("w1", "10.0.0.2"))
    core = k8s_client.CoreV1Api(api_client(str(kubeconfig)))
    assert [n.metadata.name for n in core.list_node().items] == ["w1"]
    assert api.requests("GET", "/api/v1/nodes")[-1].headers.get("Authorization") == "Bearer t0ken"


# -- the programs' options and the node speaker's side ---------------------------------------------
def reflector_args(*argv):
    from reflector.main import build_parser, check_args
    args = build_parser().parse_args(list(argv))
    check_args(args)
    return args


def test_reflector_router_id_defaults_to_one_derived_from_the_listen_address():
    assert reflector_args("--listen-host", "10.1.2.3").router_id == "0.1.2.3"
    assert reflector_args("--router-id", "192.0.2.1").router_id == "192.0.2.1"
    for argv, message in ((["--peer", "10.0.0.1"], "--router-id or --listen-host"),
                          (["--router-id", "2001:db8::1"], "not an IPv4"),
                          (["--listen-host", "10.0.0.0"], "0.0.0.0"),
                          (["--listen-host", "10.0.0.1", "--not-ready-grace", "5"],
                           "need --peers-from-k8s"),
                          (["--listen-host", "10.0.0.1", "--node-selector", "a=b"],
                           "need --peers-from-k8s"),
                          (["--listen-host", "10.0.0.1", "--peers-from-k8s",
                            "--not-ready-grace", "-1"], ">= 0")):
        with pytest.raises(ValueError, match=message):
            reflector_args(*argv)


def test_discovered_nodes_never_remove_static_peers_nor_peer_the_router_id():
    from bgp.protocol import Start
    from reflector.route_reflector import Reflector, ReflectorConfig

    class Bgp:
        def __init__(self, on_event, name):
            self.calls = []

        def call(self, command):
            if not isinstance(command, Start):
                self.calls.append((command.op, command.address))
            return True
    reflector = Reflector(ReflectorConfig("192.0.2.1"), spawn_bgp=Bgp)
    reflector.start()
    reflector.static_peers = {"192.0.2.7"}
    sync = PeerSync(reflector.add_node, reflector.remove_node, reflector.name_node)
    reflector.state.name_node("192.0.2.7", "static-7")
    sync({"192.0.2.1": "self", "192.0.2.7": "n7", "192.0.2.8": "n8"})
    assert ("peer_add", "192.0.2.1") not in reflector.bgp.calls
    assert reflector.state.node_names["192.0.2.8"] == "n8"
    sync({})
    assert ("peer_del", "192.0.2.7") not in reflector.bgp.calls  # given with --peer: stays
    assert ("peer_del", "192.0.2.8") in reflector.bgp.calls
    assert reflector.state.node_names == {"192.0.2.7": "n7"}  # the static peer keeps a name
