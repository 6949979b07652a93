"""Many CNI requests at once against one agent, as kubelet sends them when a lab starts or stops.

Each ADD/DEL is a raw exec of the installed shim from its own thread. Afterwards every pod has
what it was given, and once all is deleted nothing is left: no mgp*/mgvx*/mgbr* in the node,
nothing but `lo` in the pods, no static FDB entry.
"""
from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cni import naming, shim
from lab.runtime import kathara_conf

pytestmark = pytest.mark.root
VNI = 5000
MEGALOS = ("mgp", "mgvx", "mgbr")


def pod_mac(index: int) -> str:
    return f"02:cc:00:00:{index >> 8:02x}:{index & 0xff:02x}"


def add(runtime, node, pod, index: int, vni: int = VNI):
    return runtime.call("ADD", kathara_conf(f"lan{vni}", vni, "1.1.0"), container_id=f"c-{pod.name}",
                        netns=pod.netns_path, ifname="net0", args=f"IgnoreUnknown=true;MAC={pod_mac(index)}",
                        socket=node.socket)


def delete(runtime, node, pod, vni: int = VNI):
    return runtime.call("DEL", kathara_conf(f"lan{vni}", vni, "1.1.0"), container_id=f"c-{pod.name}",
                        netns=pod.netns_path, ifname="net0", socket=node.socket)


def run_all(calls) -> list:
    """Run every zero-argument call at once, each in its own thread; their results in order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def megalos_links(node) -> set[str]:
    return {name for name in node.link_names() if name.startswith(MEGALOS)}


def pod_links(pod) -> set[str]:
    return {link["ifname"] for link in json.loads(pod.run("ip", "-j", "link", "show").stdout)}


def static_fdb(node) -> dict[str, str]:
    """MAC -> port of every static (not permanent) entry on a Megalos bridge."""
    return {e["mac"]: e["ifname"] for e in node.fdb()
            if e.get("state") == "static" and str(e.get("master", "")).startswith("mgbr")}


def assert_all_ok(replies) -> None:
    failed = [str(reply) for reply in replies if reply.code != 0]
    assert not failed, f"{len(failed)} of {len(replies)} failed: {failed[:5]}"


def assert_nothing_left(node, pods) -> None:
    assert megalos_links(node) == set()
    assert static_fdb(node) == {}
    for pod in pods:
        assert pod_links(pod) == {"lo"}, pod.name
    assert "Traceback" not in node.log_path.read_text()


def assert_attached(node, pods_by_vni: dict) -> None:
    """Every pod has net0 with its MAC, its port is on its VNI's bridge, its MAC is in the FDB."""
    links = {link["ifname"]: link for link in node.links()}
    fdb = static_fdb(node)
    expected = {naming.vtep_name(v) for v in pods_by_vni} | {naming.bridge_name(v) for v in pods_by_vni}
    for vni, pods in pods_by_vni.items():
        for index, pod in pods:
            port = naming.port_name(f"c-{pod.name}", "net0")
            expected.add(port)
            assert links[port].get("master") == naming.bridge_name(vni), port
            assert pod.link("net0")["address"] == pod_mac(index)
            assert fdb[pod_mac(index)] == port
        assert links[naming.vtep_name(vni)].get("master") == naming.bridge_name(vni)
    assert megalos_links(node) == expected
    assert len(fdb) == sum(len(pods) for pods in pods_by_vni.values())


def test_50_concurrent_add_del_pairs_on_one_vni(runtime, node):
    """Each thread adds its pod then deletes it: ADDs race the DEL that drops the LAN."""
    pods = [node.add_pod(f"p{i}") for i in range(50)]

    def pair(index, pod):
        return add(runtime, node, pod, index), delete(runtime, node, pod)

    results = run_all([lambda i=i, pod=pod: pair(i, pod) for i, pod in enumerate(pods)])
    assert_all_ok([reply for pair_ in results for reply in pair_])
    for added, _ in results:
        assert added.json["interfaces"][1]["mtu"] == 1450
    assert_nothing_left(node, pods)


def test_concurrent_adds_then_concurrent_dels_on_one_vni(runtime, node):
    pods = [node.add_pod(f"p{i}") for i in range(30)]
    assert_all_ok(run_all([lambda i=i, pod=pod: add(runtime, node, pod, i) for i, pod in enumerate(pods)]))
    assert_attached(node, {VNI: list(enumerate(pods))})
    a, b = pods[0], pods[-1]
    a.set_ip("net0", "10.9.0.1/24")
    b.set_ip("net0", "10.9.0.2/24")
    assert a.ping("10.9.0.2", count=2)

    assert_all_ok(run_all([lambda pod=pod: delete(runtime, node, pod) for pod in pods]))
    assert_nothing_left(node, pods)


def test_concurrent_adds_on_several_vnis(runtime, node):
    vnis = [101, 102, 103, 104, 105]
    pods_by_vni = {vni: [(i, node.add_pod(f"v{vni}p{i}")) for i in range(6)] for vni in vnis}
    calls = [lambda vni=vni, i=i, pod=pod: add(runtime, node, pod, vni * 10 + i, vni)
             for vni, pods in pods_by_vni.items() for i, pod in pods]
    assert_all_ok(run_all(calls))
    assert_attached(node, {vni: [(vni * 10 + i, pod) for i, pod in pods]
                           for vni, pods in pods_by_vni.items()})

    calls = [lambda vni=vni, pod=pod: delete(runtime, node, pod, vni)
             for vni, pods in pods_by_vni.items() for _, pod in pods]
    assert_all_ok(run_all(calls))
    assert_nothing_left(node, [pod for pods in pods_by_vni.values() for _, pod in pods])


def test_concurrent_repeated_add_and_del_of_one_attachment(runtime, node):
    """Retries from a confused runtime: one ADD wins, the others say it exists; DELs all succeed."""
    pod = node.add_pod("p")
    replies = run_all([lambda: add(runtime, node, pod, 1) for _ in range(8)])
    assert sorted(reply.code for reply in replies) == [0] + [1] * 7, [str(r) for r in replies]
    assert {reply.json["code"] for reply in replies if reply.code} == {102}
    assert_attached(node, {VNI: [(1, pod)]})
    assert_all_ok(run_all([lambda: delete(runtime, node, pod) for _ in range(8)]))
    assert_nothing_left(node, [pod])


def test_del_time_does_not_grow_with_the_lan(runtime, node):
    pods = [node.add_pod(f"p{i}") for i in range(50)]
    assert_all_ok(run_all([lambda i=i, pod=pod: add(runtime, node, pod, i) for i, pod in enumerate(pods)]))

    def timed_delete(pod) -> float:
        start = time.monotonic()
        assert delete(runtime, node, pod).code == 0
        return time.monotonic() - start

    crowded = statistics.median(timed_delete(pod) for pod in pods[:3])  # 47..49 ports stay
    keep = [{"containerID": f"c-{pod.name}", "ifname": "net0"} for pod in pods[-4:]]
    gc = runtime.call("GC", kathara_conf(f"lan{VNI}", VNI, "1.1.0", **{"cni.dev/valid-attachments": keep}),
                      socket=node.socket)  # one request instead of 43 slow DELs
    assert gc.code == 0, gc
    sparse = statistics.median(timed_delete(pod) for pod in pods[-4:-1])  # 1..3 ports stay
    assert delete(runtime, node, pods[-1]).code == 0
    assert_nothing_left(node, pods)
    assert crowded < 5 * sparse, (crowded, sparse)


def test_burst_of_connections_is_served(node):
    """100 requests arriving together, as shim.forward() makes them (no process start to stagger)."""
    start = threading.Barrier(100)

    def status():  # STATUS: a verb the agent answers (the shim answers VERSION itself)
        start.wait()
        return shim.forward({"CNI_COMMAND": "STATUS", shim.SOCKET_ENV: node.socket},
                            json.dumps(kathara_conf(f"lan{VNI}", VNI, "1.1.0")))

    results = run_all([status] * 100)
    refused = [out for code, out in results if code != 0]
    assert not refused, f"{len(refused)} of 100 refused: {refused[0]}"
