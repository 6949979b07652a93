"""`make demo`: an emulated cluster on this machine, a small Kathara-style lab wired by `megalos`.

Nodes and pods are network namespaces. A control-plane node runs `megalos-reflector`; every
worker node runs `megalos-agent` (its EVPN speaker peers with the reflector). The pods are
attached by calling the installed `megalos` plugin exactly as a runtime does (env + stdin),
with the NADs Kathara's own code generates. LANs span nodes. Everything is removed on exit,
Ctrl-C included.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import secrets
import subprocess
import sys
import tempfile
import time

from lab.api_server import ApiServer

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


def megalosctl(api, *args: str) -> int:
    """Run the command-line client against the demo's API, as a user would."""
    print(f"    $ megalosctl {' '.join(args)}", flush=True)
    env = {**os.environ, "MEGALOS_API": api.url}
    proc = subprocess.run([sys.executable, "-m", "api.cli", *args], env=env, text=True,
                          capture_output=True)
    for line in (proc.stdout + proc.stderr).rstrip().splitlines():
        print(f"      {line}")
    return proc.returncode


def run(node_count: int) -> int:
    links: dict[str, list[str]] = {}
    for device, lans in LAB.items():
        for lan in lans:
            links.setdefault(lan, []).append(device)
    _, nads = lab_nads(links, lab_name="megalos-demo")
    with Cluster() as cluster, tempfile.TemporaryDirectory() as bin_dir, \
            contextlib.ExitStack() as stack:
        step(f"emulated cluster {cluster.prefix}: a control-plane node and {node_count} worker(s)")
        control = cluster.add_node("control")
        nodes = [cluster.add_node(f"node{i + 1}") for i in range(node_count)]
        control.start_reflector(*[arg for n in nodes for arg in ("--peer", f"{n.name}={n.ip}")])
        print(f"    control: megalos-reflector (BGP route reflector) at {control.ip}")
        for node in nodes:
            node.start_agent("--reflector", control.ip)
            print(f"    {node.name}: VTEP {node.ip}, megalos-agent on {node.socket}")
        api = ApiServer(control.socket, token=secrets.token_hex(8)).start()
        stack.callback(api.stop)
        print(f"    control: REST API (gunicorn) at {api.url}")
        runtime = Runtime(bin_dir)
        placement = plan([n.name for n in nodes])
        addresses: dict[tuple[str, str], str] = {}
        macs: list[str] = []
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
                macs.append(mac)
                print(f"    {device:4} net{index} on {node.name}: LAN {lan} (VNI {nad.config['vxlanId']}), "
                      f"MAC {mac}, {ip}  [{(time.perf_counter() - started) * 1000:.0f} ms]")
        step("waiting for the EVPN control plane to converge (the reflector knows every MAC)")
        if megalosctl(api, "wait", *[arg for mac in macs for arg in ("--mac", mac)],
                      "--timeout", "30") != 0:
            print("    the reflector did not see every MAC within 30 s", file=sys.stderr)
            return 1
        step("who reaches whom (ping over each LAN)")
        ok = True
        for lan, members in sorted(links.items()):
            for src, dst in itertools.permutations(members, 2):
                pod = cluster.nodes[placement[src]].pods[src]
                reached = pod.ping(addresses[(dst, lan)], count=1, timeout=2)
                where = "same node" if placement[src] == placement[dst] else "across nodes"
                print(f"    {'ok ' if reached else '!! '} LAN {lan}: {src} ({placement[src]}) -> "
                      f"{dst} ({placement[dst]}), {where}")
                ok &= reached
        pc1 = cluster.nodes[placement["pc1"]].pods["pc1"]
        isolated = not pc1.ping(addresses[("pc2", "C")], count=1, timeout=1)
        print(f"    {'ok ' if isolated else '!! '} pc1 (LAN A) cannot reach pc2 (LAN C): LANs are isolated")
        step("the cluster through the API: LANs, one LAN's MAC table, the BGP peers")
        megalosctl(api, "vnis")
        megalosctl(api, "vni", str(nads["A"].config["vxlanId"]))
        megalosctl(api, "nodes")
        step("each node's VTEP forwarding entries (bridge fdb), programmed from BGP")
        for node in nodes:
            for entry in node.fdb():
                if entry.get("dst") and entry["ifname"].startswith("mgvx"):
                    kind = "flood" if entry["mac"] == "00:00:00:00:00:00" else "mac  "
                    print(f"    {node.name}: {entry['ifname']:13} {kind} {entry['mac']} -> VTEP {entry['dst']}")
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
    parser.add_argument("--nodes", type=int, default=3, help="worker nodes (default %(default)s)")
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
