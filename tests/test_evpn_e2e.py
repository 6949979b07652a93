"""End to end: a route reflector and three nodes running megalos-agent, real BGP over TCP between
namespaces, pods attached through the installed shim. Each test uses its own VNIs."""
from __future__ import annotations

import signal
import time

import pytest

from cni import naming
from lab.cluster import Cluster, wait_for
from lab.runtime import kathara_conf

pytestmark = pytest.mark.root
HOLD = 3  # short timers keep the suite fast; the defaults (9/3) are the original's
# The reflector keeps a closed session's routes this long (its default is hold time - 1, so
# a dead node is withdrawn within the hold time): a restarting agent is back within it, even
# on a loaded 2-core machine.
GRACE = 10


def logs(*nodes, tail: int = 2500) -> str:
    """The end of each node's agent/reflector log: the failure message of a convergence wait."""
    return "\n".join(f"--- {n.name}\n{n.log_path.read_text()[-tail:]}" for n in nodes)


def remote_macs(node, vni: int) -> dict[str, str]:
    """{mac: vtep} of the node's VTEP `self dst` unicast entries."""
    return {e["mac"]: e["dst"] for e in node.fdb(naming.vtep_name(vni))
            if e.get("dst") and e["mac"] != "00:00:00:00:00:00"} \
        if naming.vtep_name(vni) in node.link_names() else {}


def flood_list(node, vni: int) -> set[str]:
    if naming.vtep_name(vni) not in node.link_names():
        return set()
    return {e["dst"] for e in node.fdb(naming.vtep_name(vni)) if e["mac"] == "00:00:00:00:00:00"}


@pytest.fixture(scope="module")
def evpn():
    with Cluster() as cluster:
        rr = cluster.add_node("rr")
        nodes = [cluster.add_node(f"n{i}") for i in (1, 2, 3)]
        peers = [arg for n in nodes for arg in ("--peer", n.ip)]
        rr.start_reflector(*peers, "--hold-time", str(HOLD), "--restart-grace", str(GRACE))
        for node in nodes:
            node.start_agent("--reflector", rr.ip, "--hold-time", str(HOLD), "--stale-time", "60")
        yield cluster, rr, nodes


def attach(runtime, node, pod, vni, mac, ifname="net0"):
    reply = runtime.call("ADD", kathara_conf(f"lan{vni}", vni), container_id=f"c-{pod.netns}",
                         netns=pod.netns_path, ifname=ifname, args=f"MAC={mac}", socket=node.socket)
    assert reply.code == 0, reply
    return reply


def detach(runtime, node, pod, vni, ifname="net0"):
    reply = runtime.call("DEL", kathara_conf(f"lan{vni}", vni), container_id=f"c-{pod.netns}",
                         netns=pod.netns_path, ifname=ifname, socket=node.socket)
    assert reply.code == 0, reply


def test_pods_across_nodes_reach_each_other_and_lans_stay_apart(runtime, evpn):
    _, _, (n1, n2, n3) = evpn
    a, b, c = n1.add_pod("a1"), n2.add_pod("b1"), n3.add_pod("c1")
    attach(runtime, n1, a, 1001, "02:10:00:00:00:01")
    attach(runtime, n2, b, 1001, "02:10:00:00:00:02")
    attach(runtime, n3, c, 1002, "02:10:00:00:00:03")  # another LAN
    a.set_ip("net0", "10.10.0.1/24")
    b.set_ip("net0", "10.10.0.2/24")
    c.set_ip("net0", "10.10.0.3/24")
    # Announced at ADD: the MAC is known remotely before the pod sends a single frame.
    assert wait_for(lambda: remote_macs(n1, 1001).get("02:10:00:00:00:02") == n2.ip)
    assert wait_for(lambda: remote_macs(n2, 1001).get("02:10:00:00:00:01") == n1.ip)
    assert flood_list(n1, 1001) == {n2.ip} and flood_list(n2, 1001) == {n1.ip}
    assert a.ping("10.10.0.2", count=3)  # ARP (flooded by ingress replication), then unicast
    neigh = a.run("ip", "neigh", "show", "10.10.0.2").stdout
    assert "02:10:00:00:00:02" in neigh
    assert not a.ping("10.10.0.3", timeout=1)
    assert "02:10:00:00:00:03" not in remote_macs(n1, 1001)
    assert naming.vtep_name(1002) not in n1.link_names()


def test_del_removes_remote_entries_on_every_node(runtime, evpn):
    _, _, (n1, n2, n3) = evpn
    pods = [n.add_pod("d1") for n in (n1, n2, n3)]
    extra = n3.add_pod("d2")
    for i, (node, pod) in enumerate(zip((n1, n2, n3), pods)):
        attach(runtime, node, pod, 1010, f"02:11:00:00:00:0{i}")
    attach(runtime, n3, extra, 1010, "02:11:00:00:00:09")
    assert wait_for(lambda: all(len(remote_macs(n, 1010)) == (2 if n is n3 else 3)
                                for n in (n1, n2, n3)))
    # One of n3's two pods goes: its MAC leaves every node, n3 stays on the flood lists.
    detach(runtime, n3, pods[2], 1010)
    assert wait_for(lambda: all("02:11:00:00:00:02" not in remote_macs(n, 1010) for n in (n1, n2)))
    assert all(n3.ip in flood_list(n, 1010) for n in (n1, n2))
    assert all(remote_macs(n, 1010).get("02:11:00:00:00:09") == n3.ip for n in (n1, n2))
    # The last one goes: n3 leaves every flood list.
    detach(runtime, n3, extra, 1010)
    assert wait_for(lambda: all(n3.ip not in flood_list(n, 1010) and not
                                {"02:11:00:00:00:09"} & set(remote_macs(n, 1010)) for n in (n1, n2)),
                    timeout=5)
    for node, pod in zip((n1, n2), pods):
        detach(runtime, node, pod, 1010)


def test_mac_announced_from_traffic_when_a_pod_changes_its_mac(runtime, evpn):
    _, _, (n1, n2, _) = evpn
    a, b = n1.add_pod("m1"), n2.add_pod("m2")
    attach(runtime, n1, a, 1020, "02:12:00:00:00:01")
    attach(runtime, n2, b, 1020, "02:12:00:00:00:02")
    a.run("ip", "link", "set", "net0", "address", "02:12:00:00:00:aa")
    a.set_ip("net0", "10.12.0.1/24")
    b.set_ip("net0", "10.12.0.2/24")
    a.ping("10.12.0.2", count=2)  # the bridge learns the new MAC from this traffic
    assert wait_for(lambda: remote_macs(n2, 1020).get("02:12:00:00:00:aa") == n1.ip)
    assert a.ping("10.12.0.2", count=2)


def test_routes_of_a_vni_arrive_before_it_is_local(runtime, evpn):
    _, _, (n1, n2, _) = evpn
    a = n1.add_pod("v1")
    attach(runtime, n1, a, 1030, "02:13:00:00:00:01")
    time.sleep(1.0)  # n2 has heard the route, but hosts no pod of VNI 1030 yet
    b = n2.add_pod("v2")
    attach(runtime, n2, b, 1030, "02:13:00:00:00:02")
    assert wait_for(lambda: remote_macs(n2, 1030).get("02:13:00:00:00:01") == n1.ip, timeout=3)


def test_killed_agent_has_its_macs_withdrawn_everywhere(runtime, evpn):
    cluster, rr, (n1, n2, n3) = evpn
    victim = cluster.add_node("k1")
    victim.start_agent("--reflector", rr.ip, "--hold-time", str(HOLD))
    from reflector.protocol import StateClient
    StateClient(rr.socket).call("peer_add", address=victim.ip)
    pods = [n1.add_pod("k1"), victim.add_pod("k2")]
    attach(runtime, n1, pods[0], 1040, "02:14:00:00:00:01")
    attach(runtime, victim, pods[1], 1040, "02:14:00:00:00:02")
    assert wait_for(lambda: remote_macs(n1, 1040).get("02:14:00:00:00:02") == victim.ip, timeout=15)
    killed = time.monotonic()
    victim.stop_agent(sig=signal.SIGKILL)
    assert wait_for(lambda: "02:14:00:00:00:02" not in remote_macs(n1, 1040), timeout=GRACE + 3), \
        logs(rr, n1)
    assert time.monotonic() - killed < GRACE + 3  # the reflector's restart grace + slack
    assert victim.ip not in flood_list(n1, 1040)


def test_agent_restart_does_not_interrupt_traffic(runtime, evpn):
    _, rr, (n1, n2, _) = evpn
    a, b = n1.add_pod("r1"), n2.add_pod("r2")
    attach(runtime, n1, a, 1050, "02:15:00:00:00:01")
    attach(runtime, n2, b, 1050, "02:15:00:00:00:02")
    a.set_ip("net0", "10.15.0.1/24")
    b.set_ip("net0", "10.15.0.2/24")
    assert wait_for(lambda: remote_macs(n1, 1050).get("02:15:00:00:00:02") == n2.ip)
    assert a.ping("10.15.0.2", count=2)
    import subprocess
    flow = subprocess.Popen(["ip", "netns", "exec", a.netns, "ping", "-n", "-q", "-i", "0.05",
                             "-c", "120", "-W", "1", "10.15.0.2"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    n2.stop_agent()
    n2.start_agent("--reflector", rr.ip, "--hold-time", str(HOLD), "--stale-time", "60")
    out, _ = flow.communicate(timeout=30)
    summary = next(line for line in out.splitlines() if "packets transmitted" in line)
    sent, received = (int(summary.split()[i]) for i in (0, 3))
    assert received == sent, summary
    # After the restart both sides are announced again and reconciled.
    assert wait_for(lambda: remote_macs(n1, 1050).get("02:15:00:00:00:02") == n2.ip)
    assert wait_for(lambda: remote_macs(n2, 1050).get("02:15:00:00:00:01") == n1.ip)


def test_mac_moving_to_another_node_points_there_everywhere(runtime, evpn):
    """The pod is recreated on n2 before its old copy on n1 is deleted (as a rescheduled
    Kathara device may be): MAC mobility sequence numbers make the new location win."""
    _, _, (n1, n2, n3) = evpn
    mac = "02:16:00:00:00:01"
    watcher = n3.add_pod("w")
    attach(runtime, n3, watcher, 1060, "02:16:00:00:00:33")
    keeper = n1.add_pod("mv-keep")  # n1 stays on the LAN after the old copy goes
    attach(runtime, n1, keeper, 1060, "02:16:00:00:00:11")
    old = n1.add_pod("mv-old")
    attach(runtime, n1, old, 1060, mac)
    assert wait_for(lambda: remote_macs(n3, 1060).get(mac) == n1.ip)
    new = n2.add_pod("mv-new")
    attach(runtime, n2, new, 1060, mac)
    assert wait_for(lambda: remote_macs(n3, 1060).get(mac) == n2.ip)
    detach(runtime, n1, old, 1060)
    assert wait_for(lambda: remote_macs(n1, 1060).get(mac) == n2.ip), logs(n1, n2)
    time.sleep(1.0)  # the old node's withdrawal must not take the new location away
    assert remote_macs(n3, 1060).get(mac) == n2.ip
    new.set_ip("net0", "10.16.0.2/24")
    watcher.set_ip("net0", "10.16.0.3/24")
    assert watcher.ping("10.16.0.2", count=2)
