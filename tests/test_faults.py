"""Faults, with measurements: two reflectors and three nodes in namespaces, steady ping flows.

Each test states its target (docs/operations.md) and asserts the measured figure against it.
Timers are short (hold 3 s) to keep the suite fast; the mechanisms are the same at 9 s.
"""
from __future__ import annotations

import os
import random
import subprocess
import time

import pytest

from cni import naming
from lab.cluster import Cluster
from lab.runtime import kathara_conf
from reflector.protocol import StateClient
from tests.test_evpn_e2e import attach, detach, flood_list, logs, remote_macs, wait_for

pytestmark = pytest.mark.root
HOLD = 3
STALE = 8       # nodes keep remote entries this long with no reflector reachable
GRACE = 10      # reflectors keep a closed session's routes this long (a restarting agent)
SWEEP = 1       # seconds between the agents' sweeps for pods gone without a DEL


class Flow:
    """A steady ping from one pod to an address: 20 packets a second, counted at the end."""

    def __init__(self, pod, address: str, seconds: float):
        count = int(seconds * 20)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", pod.netns, "ping", "-n", "-q", "-i", "0.05", "-W", "1",
             "-c", str(count), address], stdout=subprocess.PIPE, text=True)

    def result(self) -> tuple[int, int]:
        out, _ = self.proc.communicate(timeout=120)
        line = next(line for line in out.splitlines() if "packets transmitted" in line)
        sent, received = (int(line.split()[i]) for i in (0, 3))
        return sent, received


def agent_args(reflectors) -> list[str]:
    return [*[a for rr in reflectors for a in ("--reflector", rr.ip)], "--hold-time", str(HOLD),
            "--stale-time", str(STALE), "--sweep-interval", str(SWEEP)]


def reflector_args(nodes) -> list[str]:
    return [*[a for n in nodes for a in ("--peer", n.ip)], "--hold-time", str(HOLD),
            "--restart-grace", str(GRACE)]


@pytest.fixture(scope="module")
def faults():
    with Cluster() as cluster:
        rr1, rr2 = cluster.add_node("rr1"), cluster.add_node("rr2")
        nodes = [cluster.add_node(f"n{i}") for i in (1, 2, 3)]
        for rr in (rr1, rr2):
            rr.start_reflector(*reflector_args(nodes))
        for node in nodes:
            node.start_agent(*agent_args((rr1, rr2)))
        yield cluster, (rr1, rr2), nodes


def pair(runtime, n1, n2, vni: int, tag: int):
    """Two pods on one LAN, on two nodes, addressed and known on both sides."""
    a, b = n1.add_pod(f"a{tag}"), n2.add_pod(f"b{tag}")
    mac_a, mac_b = f"02:20:00:00:{tag:02x}:0a", f"02:20:00:00:{tag:02x}:0b"
    attach(runtime, n1, a, vni, mac_a)
    attach(runtime, n2, b, vni, mac_b)
    a.set_ip("net0", f"10.20.{tag}.1/24")
    b.set_ip("net0", f"10.20.{tag}.2/24")
    assert wait_for(lambda: remote_macs(n1, vni).get(mac_b) == n2.ip), logs(n1)
    assert wait_for(lambda: remote_macs(n2, vni).get(mac_a) == n1.ip), logs(n2)
    assert a.ping(f"10.20.{tag}.2", count=2)
    return a, b, f"10.20.{tag}.2"


def test_restarting_one_of_two_reflectors_loses_no_frame(runtime, faults):
    _, (rr1, _), (n1, n2, _) = faults
    a, _, address = pair(runtime, n1, n2, 2001, 1)
    flow = Flow(a, address, seconds=8)
    time.sleep(1)
    rr1.stop_agent()
    time.sleep(1)
    rr1.start_reflector(*reflector_args(faults[2]))
    sent, received = flow.result()
    assert received == sent, f"{sent - received} of {sent} frames lost"  # target: 0
    # The restarted reflector learned everything again.
    assert wait_for(lambda: StateClient(rr1.socket).call("totals")["macs"] >= 2)


def test_no_reflector_at_all_keeps_forwarding_then_refreshes(runtime, faults):
    _, (rr1, rr2), (n1, n2, _) = faults
    a, _, address = pair(runtime, n1, n2, 2002, 2)
    flow = Flow(a, address, seconds=7)
    time.sleep(0.5)
    for rr in (rr1, rr2):
        rr.stop_agent()
    time.sleep(STALE / 2)  # both down, less than the stale time: entries kept
    assert "02:20:00:00:02:0b" in remote_macs(n1, 2002)
    for rr in (rr1, rr2):
        rr.start_reflector(*reflector_args(faults[2]))
    sent, received = flow.result()
    assert received == sent, f"{sent - received} of {sent} frames lost"
    time.sleep(STALE)  # past the stale time: the sessions are back, nothing was removed
    assert remote_macs(n1, 2002).get("02:20:00:00:02:0b") == n2.ip


def test_agent_restart_loses_under_one_percent(runtime, faults):
    _, (rr1, rr2), (n1, n2, _) = faults
    a, _, address = pair(runtime, n1, n2, 2003, 3)
    flow = Flow(a, address, seconds=10)
    time.sleep(1)
    n2.stop_agent()
    n2.start_agent(*agent_args((rr1, rr2)))
    sent, received = flow.result()
    assert (sent - received) / sent < 0.01, f"{sent - received} of {sent} frames lost"


def test_pods_gone_without_del_are_swept_everywhere(runtime, faults):
    _, _, (n1, n2, n3) = faults
    keep, lone = n1.add_pod("keep4"), n3.add_pod("lone4")
    neighbour = n3.add_pod("nb4")
    attach(runtime, n1, keep, 2004, "02:20:00:00:04:01")
    attach(runtime, n3, lone, 2004, "02:20:00:00:04:03")
    attach(runtime, n3, neighbour, 2005, "02:20:00:00:05:03")  # another LAN on n3
    assert wait_for(lambda: remote_macs(n1, 2004).get("02:20:00:00:04:03") == n3.ip)
    gone = time.monotonic()
    subprocess.run(["ip", "netns", "del", lone.netns], check=True)  # no DEL: a lost pod
    assert wait_for(lambda: "02:20:00:00:04:03" not in remote_macs(n1, 2004), timeout=SWEEP + 5), \
        logs(n3)
    assert wait_for(lambda: n3.ip not in flood_list(n1, 2004), timeout=SWEEP + 5), logs(n3)
    assert wait_for(lambda: naming.vtep_name(2004) not in n3.link_names(), timeout=SWEEP + 3)
    print(f"lost pod withdrawn everywhere in {time.monotonic() - gone:.1f} s")
    assert naming.vtep_name(2005) in n3.link_names()  # other LANs untouched
    assert StateClient(faults[1][0].socket).call("mac", mac="02:20:00:00:04:03") == []


def test_partitioned_node_is_withdrawn_after_hold_time_and_comes_back(runtime, faults):
    _, _, (n1, _, n3) = faults
    a, b, address = pair(runtime, n1, n3, 2006, 6)
    rules = [("INPUT", "--dport"), ("OUTPUT", "--sport")]
    for chain, port in rules:
        n3.run("iptables", "-A", chain, "-p", "tcp", port, "179", "-j", "DROP")
    cut = time.monotonic()
    try:
        assert wait_for(lambda: "02:20:00:00:06:0b" not in remote_macs(n1, 2006),
                        timeout=HOLD + 4, interval=0.05), logs(n1)
        withdrawn = time.monotonic() - cut
        print(f"partitioned node withdrawn after {withdrawn:.2f} s (hold time {HOLD} s)")
        assert withdrawn <= HOLD + 1  # target: hold time plus at most 1 s
        # The partitioned node keeps its own view (no reflector: stale time).
        assert remote_macs(n3, 2006).get("02:20:00:00:06:0a") == n1.ip
    finally:
        for chain, port in rules:
            n3.run("iptables", "-D", chain, "-p", "tcp", port, "179", "-j", "DROP")
    assert wait_for(lambda: remote_macs(n1, 2006).get("02:20:00:00:06:0b") == n3.ip, timeout=15), \
        logs(n1, n3)
    assert a.ping(address, count=2)


SOAK_SECONDS = float(os.environ.get("MEGALOS_SOAK_SECONDS", "20"))


CHURN_VNIS = (2011, 2012, 2013)


def pod_ports(node) -> set[str]:
    return {n for n in node.link_names() if n.startswith(naming.PORT_PREFIX)}


def churn(runtime, faults, seconds: float) -> int:
    """Create and delete pods on random nodes and LANs while a steady flow runs; then check that
    nothing leaked: no device, no FDB entry (the churned LANs' VTEPs are gone everywhere), no
    route (the reflector knows none of the churned MACs or LANs)."""
    _, (rr1, _), nodes = faults
    a, _, address = pair(runtime, nodes[0], nodes[1], 2010, 10)
    before = {node.name: pod_ports(node) for node in nodes}
    flow = Flow(a, address, seconds=seconds + 2)
    rng = random.Random(7)
    live: dict[str, tuple] = {}
    deadline = time.monotonic() + seconds
    serial = 0
    while time.monotonic() < deadline:
        if live and (len(live) > 12 or rng.random() < 0.45):
            node, pod, vni = live.pop(rng.choice(sorted(live)))
            if rng.random() < 0.2:  # a lost DEL: the pod's netns just vanishes
                subprocess.run(["ip", "netns", "del", pod.netns], check=True)
            else:
                detach(runtime, node, pod, vni)
                subprocess.run(["ip", "netns", "del", pod.netns], check=True)
        else:
            serial += 1
            node, vni = rng.choice(nodes), rng.choice(CHURN_VNIS)
            pod = node.add_pod(f"c{serial}")
            attach(runtime, node, pod, vni, f"02:21:00:00:{serial // 256:02x}:{serial % 256:02x}")
            live[pod.name] = (node, pod, vni)
    sent, received = flow.result()
    for node, pod, vni in live.values():
        detach(runtime, node, pod, vni)
    state = StateClient(rr1.socket)
    churned = [f"02:21:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(1, serial + 1)]

    def leftovers() -> list[str]:
        found = [f"{node.name}: ports {sorted(pod_ports(node) - before[node.name])}"
                 for node in nodes if pod_ports(node) != before[node.name]]
        found += [f"{node.name}: {naming.vtep_name(v)}" for node in nodes for v in CHURN_VNIS
                  if naming.vtep_name(v) in node.link_names()]
        found += [f"route {m}" for m in churned if state.call("mac", mac=m)]
        known = {row["vni"] for row in state.call("vnis")["vnis"]}
        found += [f"LAN {v} in the reflector" for v in CHURN_VNIS if v in known]
        return found

    assert wait_for(lambda: not leftovers(), timeout=SWEEP + 15), leftovers()
    assert received == sent, f"{sent - received} of {sent} frames of the steady flow lost"
    return serial


def test_churn_soak_leaves_nothing_behind(runtime, faults):
    created = churn(runtime, faults, SOAK_SECONDS)
    assert created > 5


@pytest.mark.slow
def test_churn_soak_long(runtime, faults):
    """`pytest -m slow -k soak_long` (MEGALOS_SOAK_SECONDS, default 300 here): the long soak."""
    churn(runtime, faults, float(os.environ.get("MEGALOS_LONG_SOAK_SECONDS", "300")))
