"""Issue 10, the node agent, as a hostile tenant would try it: a reflector and three nodes running
megalos-agent in namespaces, real BGP sessions, pods attached through the installed shim; a
spoofing pod (frames from many source MACs, lab.spoof), a rogue node whose BGP process
announces tunnel endpoints no node can have or an unbeatable sequence number, two pods fighting
over one MAC, and a BGP process killed under the agent. Each test uses its own VNIs."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from bgp.client import BgpProcess
from bgp.protocol import MAX_SEQ, MacAdd, PeerAdd, Start, VtepAdd
from cni import naming, netlink
from cni.netns import netlink_in
from lab.cluster import Cluster, wait_for, wait_until
from lab.spoof import bridge_mac, spoof, spoofed_macs
from reflector.protocol import StateClient
from tests.test_evpn_e2e import attach, logs, remote_macs

pytestmark = pytest.mark.root
HOLD = 3
PER_PORT, PER_NODE = 16, 40  # small limits: the test floods past them quickly
AGENT_ARGS = ("--hold-time", str(HOLD), "--max-macs-per-port", str(PER_PORT),
              "--max-macs-per-node", str(PER_NODE), "--dup-max-moves", "3", "--dup-time", "60",
              "--dup-freeze", "30", "--bgp-timeout", "2", "--reconcile-interval", "120")


@pytest.fixture(scope="module")
def lab():
    with Cluster() as cluster:
        rr = cluster.add_node("rr")
        nodes = [cluster.add_node(f"n{i}") for i in (1, 2, 3)]
        rogue = cluster.add_node("rogue")  # a node whose BGP process the attacker controls
        peers = [arg for n in (*nodes, rogue) for arg in ("--peer", n.ip)]
        rr.start_reflector(*peers, "--hold-time", str(HOLD))
        for node in nodes:
            node.start_agent("--reflector", rr.ip, *AGENT_ARGS)
        yield cluster, rr, nodes, rogue


def log_of(node) -> str:
    return node.log_path.read_text()


def learned_on_bridge(node, vni: int) -> int:
    """Entries the VNI's bridge learned from pod traffic (neither static nor permanent)."""
    return sum(1 for e in node.fdb() if e.get("master") == naming.bridge_name(vni)
               and e["ifname"].startswith(naming.PORT_PREFIX) and not e.get("state"))


def test_a_spoofing_pod_gets_its_port_limit_announced_and_other_lans_keep_working(runtime, lab):
    _, _, (n1, n2, _), _ = lab
    spoofer, peer = n1.add_pod("sp"), n2.add_pod("sp")
    attach(runtime, n1, spoofer, 2001, "02:20:00:00:00:01")
    attach(runtime, n2, peer, 2001, "02:20:00:00:00:02")
    a, b = n1.add_pod("ok"), n2.add_pod("ok")  # another lab's LAN on the same nodes
    attach(runtime, n1, a, 2002, "02:20:00:00:00:0a")
    attach(runtime, n2, b, 2002, "02:20:00:00:00:0b")
    a.set_ip("net0", "10.20.0.1/24")
    b.set_ip("net0", "10.20.0.2/24")
    wait_until(lambda: remote_macs(n2, 2001).get("02:20:00:00:00:01") == n1.ip, what="the spoofer's own MAC")

    spoof(spoofer, spoofed_macs(2000), dst=bridge_mac(n1, 2001))
    assert a.ping("10.20.0.2", count=3)  # the other LAN works during the flood
    announced = lambda: {m for m in remote_macs(n2, 2001) if m.startswith("02:5f")}  # noqa: E731
    # The port's limit counts the pod's own MAC: PER_PORT - 1 spoofed ones are announced.
    wait_until(lambda: len(announced()) == PER_PORT - 1, timeout=15, what="the spoofed MACs")
    time.sleep(2)  # nothing more comes
    assert len(announced()) == PER_PORT - 1, logs(n1)
    assert remote_macs(n2, 2001).get("02:20:00:00:00:01") == n1.ip  # the pod's own MAC stays
    assert "not announced: port limit of 16 reached" in log_of(n1)
    assert log_of(n1).count("not announced") <= 2  # rate-limited, whatever the flood
    # The kernel learned at most the node limit (fdb_max_learned, this kernel has it).
    assert learned_on_bridge(n1, 2001) <= PER_NODE
    # A new pod of the spoofer's LAN is still announced: its own MAC is never refused.
    late = n1.add_pod("sp2")
    attach(runtime, n1, late, 2001, "02:20:00:00:00:03")
    wait_until(lambda: remote_macs(n2, 2001).get("02:20:00:00:00:03") == n1.ip, what="a new pod's MAC")
    assert a.ping("10.20.0.2", count=2)


def rogue_bgp(rogue, rr, router_id: str) -> BgpProcess:
    """The attacker's BGP process on the rogue node (a reflector client like any node)."""
    bgp = BgpProcess(argv_prefix=["ip", "netns", "exec", rogue.netns], name="rogue")
    bgp.call(Start(router_id=router_id, asn=65000, listen_host=rogue.ip, hold_time=HOLD))
    bgp.call(PeerAdd(rr.ip, "passive"))
    return bgp


def test_routes_naming_a_loopback_or_multicast_tunnel_endpoint_never_reach_the_kernel(runtime, lab):
    _, rr, (n1, _, _), rogue = lab
    victim = n1.add_pod("v")
    attach(runtime, n1, victim, 2010, "02:21:00:00:00:01")
    with rogue_bgp(rogue, rr, router_id="127.0.0.1") as bgp:  # every route it sends names 127.0.0.1
        bgp.call(VtepAdd(2010, 1))
        bgp.call(MacAdd(2010, "02:21:00:00:00:66"))
        # The reflector refuses them first (a client's routes must name its own address); the
        # node's own check, behind a rogue reflector: test_tenant_bgp.py.
        wait_until(lambda: f"routes from {rogue.ip} refused (treated as withdrawn): next hop "
                   "127.0.0.1 is a loopback address" in log_of(rr), timeout=15,
                   what="the reflector refusing the rogue routes")
        assert StateClient(rr.socket).call("mac", mac="02:21:00:00:00:66") == []
        vtep = naming.vtep_name(2010)
        assert not [e for e in n1.fdb(vtep) if e.get("dst") == "127.0.0.1"], n1.fdb(vtep)


def test_a_claim_at_the_highest_sequence_number_does_not_win_forever(runtime, lab):
    _, rr, (n1, n2, _), rogue = lab
    mac = "02:22:00:00:00:01"
    watcher = n2.add_pod("w")
    attach(runtime, n2, watcher, 2020, "02:22:00:00:00:02")
    with rogue_bgp(rogue, rr, router_id=rogue.ip) as bgp:
        bgp.call(VtepAdd(2020, 1))
        bgp.call(MacAdd(2020, mac, seq=MAX_SEQ))  # the attacker claims the MAC first, unbeatably
        wait_until(lambda: remote_macs(n2, 2020).get(mac) == rogue.ip, timeout=15, what="the rogue claim")
        owner = n1.add_pod("own")  # the pod that owns the MAC comes up
        attach(runtime, n1, owner, 2020, mac)
        wait_until(lambda: remote_macs(n2, 2020).get(mac) == n1.ip, timeout=10,
                   what="the owner's announcement winning")
        assert "cannot be outbid" in log_of(n1)


def bgp_pid(node) -> int | None:
    """The agent's BGP process (its child running bgp.process), None while it has none."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == node.agent.pid and b"bgp.process" in cmdline:
            return int(entry.name)
    return None


def test_announcements_survive_a_bgp_process_stopped_then_killed(runtime, lab):
    _, _, (n1, n2, _), _ = lab
    a, b = n1.add_pod("k"), n2.add_pod("k")
    attach(runtime, n1, a, 2030, "02:23:00:00:00:01")
    attach(runtime, n2, b, 2030, "02:23:00:00:00:02")
    # A MAC the pod takes itself: only the MAC watch knows it (no ADD announces it).
    a.run("ip", "link", "set", "net0", "address", "02:23:00:00:00:aa")
    spoof(a, ["02:23:00:00:00:aa"], dst=bridge_mac(n1, 2030))
    wait_until(lambda: remote_macs(n2, 2030).get("02:23:00:00:00:aa") == n1.ip, what="the learned MAC")
    pid = wait_until(lambda: bgp_pid(n1), what="the BGP process")
    os.kill(pid, signal.SIGSTOP)  # a BGP process that answers nothing...
    try:
        c = n1.add_pod("k2")
        attach(runtime, n1, c, 2030, "02:23:00:00:00:03")
        time.sleep(3)  # ...for longer than --bgp-timeout: the batch fails, and waits for a retry
    finally:
        os.kill(pid, signal.SIGKILL)  # ...then dies: the agent starts another one
    wait_until(lambda: bgp_pid(n1) not in (None, pid), timeout=10, what="a new BGP process")
    # Everything comes back, the learned MAC too, well before any reconciliation (120 s).
    every = {"02:23:00:00:00:aa", "02:23:00:00:00:03", "02:23:00:00:00:01"}
    assert wait_for(lambda: every <= set(remote_macs(n2, 2030)), timeout=20), \
        (every - set(remote_macs(n2, 2030)), logs(n1))


def test_two_pods_claiming_one_mac_from_two_nodes_freeze_it(runtime, lab):
    _, _, (n1, n2, n3), _ = lab
    mac = "02:24:00:00:00:99"
    p1, p2, watcher = n1.add_pod("d"), n2.add_pod("d"), n3.add_pod("d")
    for node, pod, own in ((n1, p1, "01"), (n2, p2, "02"), (n3, watcher, "03")):
        attach(runtime, node, pod, 2040, f"02:24:00:00:00:{own}")
    pods = {n1.ip: (n1, p1), n2.ip: (n2, p2)}

    def claim(vtep: str) -> None:
        """The pod takes the MAC: its link bounces (the bridge forgets what it learned on the
        port) and it sends from the MAC until the bridge has learned it again: a new claim."""
        node, pod = pods[vtep]
        port = naming.port_name(f"c-{pod.netns}", "net0")
        pod.run("ip", "link", "set", "net0", "down")
        pod.run("ip", "link", "set", "net0", "up")
        wait_until(lambda: spoof(pod, [mac], dst=bridge_mac(node, 2040)) and any(
            e["mac"] == mac and e["ifname"] == port for e in node.fdb()), interval=0.1,
            what=f"{node.name}'s bridge learning the MAC")

    seen = []
    for vtep in [n1.ip, n2.ip] * 5:
        claim(vtep)
        wait_for(lambda: remote_macs(n3, 2040).get(mac) == vtep, timeout=3)
        seen.append(remote_macs(n3, 2040).get(mac))
    frozen = [n.name for n in (n1, n2, n3) if "duplicate MAC 02:24:00:00:00:99 on VNI 2040" in log_of(n)]
    assert frozen, (seen, logs(n1, n2, n3))
    # Claims are followed at first (n1, n2, n1: 2 moves); at its 3rd move a claimer freezes
    # the MAC and stops claiming it, and the MAC stays where it is.
    assert seen[:3] == [n1.ip, n2.ip, n1.ip] and len(set(seen[3:])) == 1, (seen, frozen)


def test_the_fdb_reads_what_reconciliation_compares(runtime, lab):
    """From the kernel: {mac: (port, static)} of the pod ports, and the VTEP's remote entries
    (not the bridge's learned ones, however many)."""
    _, _, (_, n2, n3), _ = lab
    pod, remote = n3.add_pod("fdb"), n2.add_pod("fdb")
    attach(runtime, n3, pod, 2050, "02:25:00:00:00:01")
    attach(runtime, n2, remote, 2050, "02:25:00:00:00:02")
    wait_until(lambda: remote_macs(n3, 2050), what="the remote MAC")
    spoof(pod, spoofed_macs(3, tag=0x25, start=16), dst=bridge_mac(n3, 2050))
    port = json.loads(n3.run("ip", "-j", "link", "show", "dev",
                             naming.port_name(f"c-{pod.netns}", "net0")).stdout)[0]["ifindex"]
    code = ("import json; from speaker.fdb import VtepFdb; f = VtepFdb(); "
            "print(json.dumps([sorted(f.local_macs(2050)), sorted(map(repr, f.current(2050)))]))")
    local, current = json.loads(n3.run(sys.executable, "-c", code).stdout)
    assert local == [["02:25:00:00:00:01", port, True],
                     *([m, port, False] for m in spoofed_macs(3, tag=0x25, start=16))]
    assert current == [f"FloodEntry(vni=2050, vtep='{n2.ip}')",
                       f"MacEntry(vni=2050, mac='02:25:00:00:00:02', vtep='{n2.ip}')"]


def bridge_cap(node, vni: int) -> int | None:
    """The bridge's fdb_max_learned, None if the kernel does not report it."""
    with netlink_in(f"/var/run/netns/{node.netns}") as nl:
        value = nl.link(name=naming.bridge_name(vni)).info.get(netlink.IFLA_BR_FDB_MAX_LEARNED)
    return None if value is None else int.from_bytes(value[:4], sys.byteorder)


def test_bridges_an_earlier_agent_made_are_capped_at_start(runtime, lab):
    _, rr, (_, _, n3), _ = lab
    pod = n3.add_pod("cap")
    attach(runtime, n3, pod, 2060, "02:26:00:00:00:01")
    assert bridge_cap(n3, 2060) == PER_NODE  # made capped
    with netlink_in(f"/var/run/netns/{n3.netns}") as nl:  # as an agent before the cap made it
        bridge = nl.link(name=naming.bridge_name(2060))
        nl.set_link(netlink.link_body(index=bridge.index, attrs=[
            netlink.linkinfo("bridge", [netlink.attr(netlink.IFLA_BR_FDB_MAX_LEARNED, 0)])]))
    assert bridge_cap(n3, 2060) == 0
    n3.stop_agent()
    n3.start_agent("--reflector", rr.ip, *AGENT_ARGS)
    assert bridge_cap(n3, 2060) == PER_NODE
    assert f"bridge learning capped at {PER_NODE} MACs on {naming.bridge_name(2060)}" in log_of(n3)
