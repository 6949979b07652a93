"""Across two emulated nodes, with flood and MAC entries put in by the test (no control plane):
pods reach each other over VXLAN, full-size frames included (IPv4 and IPv6 underlays)."""
from __future__ import annotations

import pytest

from cni import naming
from lab.cluster import Cluster
from lab.runtime import kathara_conf

pytestmark = pytest.mark.root
VNI = 70000


@pytest.fixture(params=[False, True], ids=["ipv4-underlay", "ipv6-underlay"])
def two_nodes(request):
    with Cluster(ipv6=request.param) as cluster:
        nodes = [cluster.add_node("n1"), cluster.add_node("n2")]
        for node in nodes:
            node.start_agent()
        yield cluster, nodes


def attach(runtime, node, pod, mac):
    reply = runtime.call("ADD", kathara_conf("lan", VNI), container_id=f"c-{pod.name}",
                         netns=pod.netns_path, ifname="net0", args=f"MAC={mac}", socket=node.socket)
    assert reply.code == 0, reply
    return reply.json


def test_pods_on_two_nodes_talk_over_vxlan(runtime, two_nodes):
    cluster, (n1, n2) = two_nodes
    a, b = n1.add_pod("a"), n2.add_pod("b")
    attach(runtime, n1, a, "02:00:00:00:0a:01")
    attach(runtime, n2, b, "02:00:00:00:0b:01")
    a.set_ip("net0", "10.2.0.1/24")
    b.set_ip("net0", "10.2.0.2/24")
    vtep = naming.vtep_name(VNI)
    # Without flood entries ARP cannot cross: the LAN must not work yet.
    assert not a.ping("10.2.0.2", timeout=1)
    for here, there, remote_mac in ((n1, n2, "02:00:00:00:0b:01"), (n2, n1, "02:00:00:00:0a:01")):
        here.run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", vtep, "dst", there.ip,
                 "self", "permanent")
        here.run("bridge", "fdb", "replace", remote_mac, "dev", vtep, "dst", there.ip, "self", "permanent")
    assert a.ping("10.2.0.2", count=3)
    overlay_mtu = 1450 if not cluster.ipv6 else 1430
    assert a.link("net0")["mtu"] == overlay_mtu
    # A frame of the full overlay MTU, Don't Fragment: it crosses whole, or not at all.
    payload = overlay_mtu - 28
    assert a.ping("10.2.0.2", size=payload, dont_fragment=True, count=2)
    assert not a.ping("10.2.0.2", size=payload + 1, dont_fragment=True, timeout=1)


def test_different_vnis_on_two_nodes_stay_apart(runtime, two_nodes):
    cluster, (n1, n2) = two_nodes
    a, b = n1.add_pod("a"), n2.add_pod("b")
    attach(runtime, n1, a, "02:00:00:00:0a:02")
    reply = runtime.call("ADD", kathara_conf("other", VNI + 1), container_id="c-b", netns=b.netns_path,
                         ifname="net0", args="MAC=02:00:00:00:0b:02", socket=n2.socket)
    assert reply.code == 0, reply
    a.set_ip("net0", "10.3.0.1/24")
    b.set_ip("net0", "10.3.0.2/24")
    # Flood towards the other node on each side: frames arrive tagged with another VNI and die.
    n1.run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", naming.vtep_name(VNI), "dst", n2.ip,
           "self", "permanent")
    n2.run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", naming.vtep_name(VNI + 1), "dst",
           n1.ip, "self", "permanent")
    assert not a.ping("10.3.0.2", timeout=1)
