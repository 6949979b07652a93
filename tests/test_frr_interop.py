"""Interoperability with FRR, the original Megalos control plane (Debian frr 8.4, lab/frr.py).

(a) Our reflector serving an FRR worker (`advertise-all-vni`) next to one of our nodes: pods on
    the same VNI reach each other both ways, and each side's VTEP holds the other's MAC and flood
    entry the way zebra programs them (`self dst` on the VTEP, `extern_learn` on the bridge).
(b) Our speakers behind an FRR route reflector configured like the original master (listen range,
    cluster-id 10.0.0.1): pods on two of our nodes reach each other, and a deleted pod's MAC
    disappears from the other node.

Our routes carry claims (bgp.claims: extended communities FRR does not know): FRR installs them
as a worker all the same (a), reflects them unchanged (b: a third node of ours refuses another
namespace the VNI), and its own routes claim nothing (a: the reflector sees no owner for them).
"""
from __future__ import annotations

import time

import pytest

from cni import naming
from lab import frr
from lab.frr import Frr
from lab.runtime import kathara_conf
from reflector.protocol import StateClient

NAMESPACE = "lab-frr"  # what Multus would send for the pods of one Kathara lab

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not frr.available(), reason="FRR (zebra, bgpd, vtysh) not installed")]

VNI = 70200
ZERO = "00:00:00:00:00:00"


@pytest.fixture
def daemons():
    """FRR instances started by a test, stopped before the cluster goes away."""
    started: list[Frr] = []
    yield started
    for instance in started:
        instance.stop()


def add(runtime, node, pod, mac, vni=VNI, namespace=NAMESPACE):
    return runtime.call("ADD", kathara_conf("lan", vni), container_id=f"c-{pod.name}",
                        netns=pod.netns_path, ifname="net0", socket=node.socket,
                        args=f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod.name};MAC={mac}")


def attach(runtime, node, pod, mac, vni=VNI):
    reply = add(runtime, node, pod, mac, vni)
    assert reply.code == 0, reply


def detach(runtime, node, pod):
    reply = runtime.call("DEL", kathara_conf("lan", VNI), container_id=f"c-{pod.name}",
                         netns=pod.netns_path, ifname="net0", socket=node.socket)
    assert reply.code == 0, reply


def vtep_entries(node) -> dict[str, set[str]]:
    """{mac: {remote VTEPs}} of the `self dst` entries on the VNI's VTEP (00:00.. = flood list)."""
    return vtep_entries_of(node, VNI)


def vtep_entries_of(node, vni: int) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for entry in node.fdb(naming.vtep_name(vni)):
        if entry.get("dst") and "self" in entry.get("flags", ()):
            found.setdefault(entry["mac"], set()).add(entry["dst"])
    return found


def bridge_extern(node) -> set[str]:
    """MACs the bridge sends to the VTEP port because of EVPN (`master extern_learn`)."""
    return {e["mac"] for e in node.fdb(naming.vtep_name(VNI))
            if "extern_learn" in e.get("flags", ()) and e.get("master")}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def expect_remote(node, remote, macs: dict[str, str], timeout: float = 15.0) -> None:
    """`node`'s VTEP floods to `remote` and tunnels each MAC to the given VTEP address."""
    def ok():
        have = vtep_entries(node)
        return remote.ip in have.get(ZERO, ()) and all(have.get(m) == {ip} for m, ip in macs.items())
    wait_for(ok, timeout, f"{node.name}: flood to {remote.name} and MACs {macs}")
    wait_for(lambda: set(macs) <= bridge_extern(node), 5, f"{node.name}: extern_learn {set(macs)}")


def pingable(a, b, a_ip, b_ip) -> None:
    # The first ping of each direction may still lose its ARP to a route on its way.
    assert a.ping(b_ip, count=3, timeout=2) or a.ping(b_ip, count=3, timeout=2), "a -> b"
    assert b.ping(a_ip, count=3, timeout=2), "b -> a"


def test_our_reflector_serves_an_frr_worker(runtime, cluster, daemons):
    rr, n_frr, n_ours = cluster.add_node("rr"), cluster.add_node("nf"), cluster.add_node("no")
    # The reflector dials out to every peer: FRR's 120 s ConnectRetry never comes into play.
    rr.start_reflector("--peer", n_frr.ip, "--peer", n_ours.ip)
    daemons.append(worker := Frr.worker(n_frr, rr.ip))
    n_frr.start_agent()                        # datapath only: zebra/bgpd are the control plane
    n_ours.start_agent("--reflector", rr.ip)
    a, b = n_frr.add_pod("a"), n_ours.add_pod("b")
    mac_a, mac_b = "02:00:00:f0:00:0a", "02:00:00:f0:00:0b"
    attach(runtime, n_frr, a, mac_a)
    attach(runtime, n_ours, b, mac_b)

    # zebra took our agent's VTEP and bridge as the VNI, and the pod port's MAC as local.
    vni = wait_for(lambda: worker.vnis().get(VNI), 10, "zebra to learn the VNI")
    assert vni["vxlanInterface"] == naming.vtep_name(VNI)
    assert vni["vtepIp"] == n_frr.ip
    wait_for(lambda: worker.evpn_macs(VNI).get(mac_a, {}).get("type") == "local", 10,
             "zebra to see the pod MAC as local")

    expect_remote(n_frr, n_ours, {mac_b: n_ours.ip})     # programmed by zebra
    expect_remote(n_ours, n_frr, {mac_a: n_frr.ip})      # programmed by our speaker
    remote = worker.evpn_macs(VNI).get(mac_b, {})
    assert remote.get("type") == "remote" and remote.get("remoteVtep") == n_ours.ip

    a.set_ip("net0", "10.20.0.1/24")
    b.set_ip("net0", "10.20.0.2/24")
    pingable(a, b, "10.20.0.1", "10.20.0.2")

    # The reflector's state socket sees both VTEPs and both MACs, FRR's included.
    detail = StateClient(rr.socket).call("vni", vni=VNI)
    assert {v["address"] for v in detail["vteps"]} == {n_frr.ip, n_ours.ip}
    assert {m["mac"]: m["vtep"] for m in detail["macs"]} == {mac_a: n_frr.ip, mac_b: n_ours.ip}
    # Our routes claim the VNI and name the pod; FRR's claim nothing (no owner for them).
    assert [(c["namespace"], c["vteps"]) for c in detail["claims"]] == [(NAMESPACE, [n_ours.ip])]
    assert {m["mac"]: bool(m["pod"]) for m in detail["macs"]} == {mac_a: False, mac_b: True}

    # A second pod behind FRR, then its deletion: zebra advertises and withdraws, we follow.
    c = n_frr.add_pod("c")
    mac_c = "02:00:00:f0:00:0c"
    attach(runtime, n_frr, c, mac_c)
    expect_remote(n_ours, n_frr, {mac_a: n_frr.ip, mac_c: n_frr.ip})
    detach(runtime, n_frr, c)
    wait_for(lambda: mac_c not in vtep_entries(n_ours) and mac_c not in bridge_extern(n_ours), 10,
             f"{mac_c} to leave {n_ours.name}")
    assert vtep_entries(n_ours).get(mac_a) == {n_frr.ip}


def test_our_speakers_behind_an_frr_reflector(runtime, cluster, daemons):
    rr, n1, n2 = cluster.add_node("rr"), cluster.add_node("n1"), cluster.add_node("n2")
    daemons.append(reflector := Frr.reflector(rr))  # listen range 0.0.0.0/0: any peer accepted
    # FRR stays passive towards listen-range peers: our nodes must dial (the agent's default is
    # passive, for our own reflector which dials the nodes).
    for node in (n1, n2):
        node.start_agent("--reflector", rr.ip, "--connect-mode", "active")
    reflector.wait_established(2, timeout=20)
    a, b, b2 = n1.add_pod("a"), n2.add_pod("b"), n2.add_pod("b2")
    mac_a, mac_b, mac_b2 = "02:00:00:f1:00:0a", "02:00:00:f1:00:0b", "02:00:00:f1:00:2b"
    attach(runtime, n1, a, mac_a)
    attach(runtime, n2, b, mac_b)
    attach(runtime, n2, b2, mac_b2)

    expect_remote(n1, n2, {mac_b: n2.ip, mac_b2: n2.ip})
    expect_remote(n2, n1, {mac_a: n1.ip})
    # FRR reflected the routes unchanged: the VTEPs are our nodes, the RT carries the VNI.
    evpn = reflector.vtysh("show bgp l2vpn evpn")
    for mac in (mac_a, mac_b, mac_b2):
        assert f"[{mac}]" in evpn
    a.set_ip("net0", "10.21.0.1/24")
    b.set_ip("net0", "10.21.0.2/24")
    pingable(a, b, "10.21.0.1", "10.21.0.2")

    # A MAC deletion goes n2 -> FRR -> n1: b2's entries go, b's and the flood entry stay.
    detach(runtime, n2, b2)
    wait_for(lambda: mac_b2 not in vtep_entries(n1) and mac_b2 not in bridge_extern(n1), 10,
             f"{mac_b2} to leave {n1.name}")
    have = vtep_entries(n1)
    assert have.get(mac_b) == {n2.ip} and n2.ip in have.get(ZERO, ())
    assert f"[{mac_b2}]" not in reflector.vtysh("show bgp l2vpn evpn")
    assert a.ping("10.21.0.2", count=1)

    # FRR reflected our claims as they were: a third node, which has heard n1 (a MAC n1
    # announces later reached it), refuses another namespace the VNI, naming the owner.
    n3 = cluster.add_node("n3")
    n3.start_agent("--reflector", rr.ip, "--connect-mode", "active")
    reflector.wait_established(3, timeout=20)
    attach(runtime, n3, n3.add_pod("w3"), "02:00:00:f1:00:3c", vni=VNI + 1)
    attach(runtime, n1, n1.add_pod("w1"), "02:00:00:f1:00:1c", vni=VNI + 1)
    wait_for(lambda: vtep_entries_of(n3, VNI + 1).get("02:00:00:f1:00:1c") == {n1.ip}, 15,
             "n3 to hear n1 through FRR")
    reply = add(runtime, n3, n3.add_pod("x"), "02:00:00:f1:00:3d", namespace="lab-other")
    assert reply.code == 1 and f"VNI {VNI} belongs to namespace {NAMESPACE}" in reply.stdout, reply
    assert naming.bridge_name(VNI) not in n3.link_names()
