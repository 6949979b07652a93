"""`make demo`: an emulated cluster on this machine, a small Kathara-style lab wired by `megalos`.

Nodes and pods are network namespaces; each node runs `megalos-agent`; the pods are attached by
calling the installed `megalos` plugin exactly as a runtime does (env + stdin). Everything is
removed on exit, Ctrl-C included.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

from lab.cluster import Cluster
from lab.kathara import lab_nads
from lab.runtime import Runtime

# The lab: devices and the collision domains (LANs) each interface is on, like a lab.conf.
LAB = {
    "r1": ["A", "B"],
    "r2": ["B", "C"],
    "pc1": ["A"],
    "pc2": ["C"],
    "pc3": ["A"],
}


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def plan(nodes: list[str]) -> dict[str, str]:
    """Spread the devices over the nodes round-robin, as a scheduler might."""
    return dict(zip(LAB, itertools.cycle(nodes)))


def run(node_count: int) -> int:
    links: dict[str, list[str]] = {}
    for device, lans in LAB.items():
        for lan in lans:
            links.setdefault(lan, []).append(device)
    _, nads = lab_nads(links, lab_name="megalos-demo")
    with Cluster() as cluster, tempfile.TemporaryDirectory() as bin_dir:
        step(f"emulated cluster {cluster.prefix}: {node_count} node(s) as network namespaces")
        nodes = [cluster.add_node(f"node{i + 1}") for i in range(node_count)]
        for node in nodes:
            node.start_agent()
            print(f"    {node.name}: VTEP {node.ip}, megalos-agent on {node.socket}")
        runtime = Runtime(bin_dir)
        placement = plan([n.name for n in nodes])
        addresses: dict[tuple[str, str], str] = {}
        lan_hosts = {lan: itertools.count(1) for lan in links}
        step("attaching devices: Multus-style CNI ADD per interface (netN = lab ethN)")
        for device, lans in LAB.items():
            node = cluster.nodes[placement[device]]
            pod = node.add_pod(device)
            for index, lan in enumerate(lans):
                nad = nads[lan]
                started = time.perf_counter()
                reply = runtime.call("ADD", nad.raw_config, container_id=f"demo-{device}",
                                     netns=pod.netns_path, ifname=f"net{index}",
                                     args=f"IgnoreUnknown=true;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={device}",
                                     socket=node.socket)
                if reply.code != 0:
                    print(f"    ADD {device} net{index} failed: {reply}", file=sys.stderr)
                    return 1
                lan_index = sorted(links).index(lan) + 1
                ip = f"10.{lan_index}.0.{next(lan_hosts[lan])}"
                pod.set_ip(f"net{index}", f"{ip}/24")
                addresses[(device, lan)] = ip
                mac = reply.json["interfaces"][1]["mac"]
                print(f"    {device:4} net{index} on {node.name}: LAN {lan} (VNI {nad.config['vxlanId']}), "
                      f"MAC {mac}, {ip}  [{(time.perf_counter() - started) * 1000:.0f} ms]")
        step("who reaches whom (ping over each LAN)")
        ok = True
        for lan, members in sorted(links.items()):
            for src, dst in itertools.permutations(members, 2):
                pod = cluster.nodes[placement[src]].pods[src]
                expected = placement[src] == placement[dst] or len(nodes) == 1
                reached = pod.ping(addresses[(dst, lan)], count=1, timeout=1)
                mark = "ok " if reached else "-- "
                print(f"    {mark} LAN {lan}: {src} ({placement[src]}) -> {dst} ({placement[dst]})")
                ok &= reached == expected or not expected
        pc1 = cluster.nodes[placement["pc1"]].pods["pc1"]
        isolated = not pc1.ping(addresses[("pc2", "C")], count=1, timeout=1)
        print(f"    {'ok ' if isolated else '!! '} pc1 (LAN A) cannot reach pc2 (LAN C): LANs are isolated")
        step("bridge MAC tables (bridge fdb) per node")
        for node in nodes:
            for entry in node.fdb():
                if entry.get("master", "").startswith("mgbr") and "static" in entry.get("state", ""):
                    print(f"    {node.name}: {entry['mac']} on {entry['ifname']} ({entry['master']})")
        step("detaching: CNI DEL for every interface")
        for device, lans in LAB.items():
            node = cluster.nodes[placement[device]]
            for index, lan in enumerate(lans):
                runtime.call("DEL", nads[lan].raw_config, container_id=f"demo-{device}",
                             netns=node.pods[device].netns_path, ifname=f"net{index}", socket=node.socket)
        left = [n for node in nodes for n in node.link_names() if n.startswith("mg")]
        print(f"    devices left on the nodes: {left or 'none'}")
        step("cleaning up namespaces")
        return 0 if ok and isolated and not left else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the demo needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    try:
        return run(args.nodes)
    except KeyboardInterrupt:
        print("\ninterrupted: everything was cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
