"""speaker/macwatch.py on a real bridge: the MACs of pod ports come and go, nothing else does."""
from __future__ import annotations

import socket
import threading

import pytest

from cni import netns
from cni.netlink import (BRIDGE_ENTRY_FILTER, NTF_SELF, RTMGRP_NEIGH, Netlink, bridge_entry,
                         fdb_events)
from lab.cluster import wait_until
from speaker.evpn_state import MacEntry
from speaker.fdb import VtepFdb
from speaker.macwatch import MacWatch

pytestmark = pytest.mark.root
VNI = 5300
POD_MAC, SELF_SET_MAC = "02:aa:00:00:00:01", "02:aa:00:00:09:09"


class Seen:
    """What the watch reported: (vni, mac, present), in order; and whether each MAC's entry
    was static (ADD's) when present."""

    def __init__(self):
        self.events: list[tuple] = []
        self.static: dict[str, bool] = {}
        self._lock = threading.Lock()

    def __call__(self, vni: int, mac: str, present: bool, port: int, static: bool) -> None:
        assert port > 0
        with self._lock:
            self.events.append((vni, mac, present))
            if present:
                self.static[mac] = static

    def has(self, *wanted: tuple) -> bool:
        with self._lock:
            return all(event in self.events for event in wanted)


@pytest.fixture
def watched(bare_node):
    """(the bare node, its LAN, what the watch reports): a MacWatch running in the node's
    namespace, on a LAN made as an ADD makes it."""
    datapath = bare_node.datapath
    lan, _ = datapath.ensure_lan(VNI, 4789, datapath.default_underlay)
    seen = Seen()
    watch = MacWatch(seen)
    netns.made_in(bare_node.netns_path, watch.start)
    try:
        yield bare_node, lan, seen
    finally:
        watch.stop()


def send_frame(netns_path: str, ifname: str, source: str) -> None:
    """One broadcast frame from `source`, as a pod that set its own MAC would send."""
    sock = netns.socket_in(netns_path, socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((ifname, 0))
        sock.send(b"\xff" * 6 + bytes.fromhex(source.replace(":", "")) + b"\x88\xb5" + bytes(46))
    finally:
        sock.close()


def test_pod_macs_come_and_go_with_their_port(watched):
    bare, lan, seen = watched
    node = bare.node
    # Not pod MACs: a port of another bridge, a remote MAC on the VTEP (and its extern_learn
    # entry on the VTEP's bridge port).
    node.run("ip", "link", "add", "mgtother0", "type", "bridge")
    node.run("ip", "link", "add", "mgp0123456789ab", "master", "mgtother0", "type", "veth",
             "peer", "name", "mgtpeer0")
    node.run("bridge", "fdb", "add", "02:ee:00:00:00:01", "dev", "mgp0123456789ab", "master",
             "static")
    fdb = netns.made_in(bare.netns_path, VtepFdb)
    try:
        assert fdb.install([MacEntry(VNI, "02:bb:00:00:00:01", "192.0.2.7")]) == 1
    finally:
        fdb.close()

    pod = node.add_pod("p0")
    port = bare.attach(lan, pod, POD_MAC)  # ADD's static entry
    wait_until(lambda: seen.has((VNI, POD_MAC, True)), what="the pod's MAC")
    send_frame(pod.netns_path, "eth0", SELF_SET_MAC)  # learned by the bridge
    wait_until(lambda: seen.has((VNI, SELF_SET_MAC, True)), what="the learned MAC")

    node.run("ip", "link", "del", port)  # the pod is gone: the bridge flushes the port's MACs
    wait_until(lambda: seen.has((VNI, POD_MAC, False), (VNI, SELF_SET_MAC, False)),
               what="the MACs gone with their port")
    assert {mac for _, mac, _ in seen.events} == {POD_MAC, SELF_SET_MAC}
    assert seen.static == {POD_MAC: True, SELF_SET_MAC: False}


def test_a_port_the_watch_never_saw_still_reports_its_macs_gone(bare_node):
    """A pod port made (and its MAC learned) before the watch started, then deleted: the
    flushed entries name a port that no longer exists; its bridge still gives the VNI."""
    node, datapath = bare_node.node, bare_node.datapath
    lan, _ = datapath.ensure_lan(VNI, 4789, datapath.default_underlay)
    port = bare_node.attach(lan, node.add_pod("p0"), POD_MAC)
    seen = Seen()
    watch = MacWatch(seen)
    netns.made_in(bare_node.netns_path, watch.start)
    try:
        node.run("ip", "link", "del", port)
        wait_until(lambda: seen.has((VNI, POD_MAC, False)), what="the pod's MAC gone")
        assert seen.events == [(VNI, POD_MAC, False)]
    finally:
        watch.stop()


def test_the_kernel_filter_keeps_what_bridge_entry_keeps(bare_node):
    """BRIDGE_ENTRY_FILTER (the watch's socket filter) passes exactly the events bridge_entry
    wants: the VTEP's `self` entries and the ports' own (permanent) addresses never reach us."""
    node, datapath = bare_node.node, bare_node.datapath
    lan, _ = datapath.ensure_lan(VNI, 4789, datapath.default_underlay)
    filtered, everything = (netns.made_in(bare_node.netns_path,
                                          lambda: Netlink(groups=RTMGRP_NEIGH, rcvbuf=1 << 20))
                            for _ in range(2))
    try:
        filtered.keep_only(BRIDGE_ENTRY_FILTER)
        fdb = netns.made_in(bare_node.netns_path, VtepFdb)
        try:
            assert fdb.install([MacEntry(VNI, f"02:bb:00:00:00:{i:02x}", "192.0.2.7")
                                for i in range(1, 4)]) == 3
        finally:
            fdb.close()
        bare_node.attach(lan, node.add_pod("p0"), POD_MAC)

        def events(sock, until) -> list:
            found = []
            while not any(until(entry) for entry in found):
                found += [entry for _, entry in fdb_events(sock.receive(timeout=5) or pytest.fail("no event"))]
            return found

        pod_entry = lambda entry: entry.mac == POD_MAC and not entry.flags & NTF_SELF  # noqa: E731
        every = events(everything, pod_entry)
        kept = events(filtered, pod_entry)
        assert any(e.flags & NTF_SELF for e in every)            # the kernel does send them
        assert kept == [e for e in every if bridge_entry(e.ifindex, e.state, e.flags)]
    finally:
        filtered.close()
        everything.close()
