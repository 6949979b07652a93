"""`make demo`: an emulated cluster on this machine, a small Kathara lab wired by `megalos`, and
the LAN map to watch it.

Nodes and pods are network namespaces. A control-plane node runs an API server (an emulated
one), `megalos-reflector` and the REST API with the LAN map; every worker node runs
`megalos-agent` (its EVPN speaker peers with the reflector). The lab's NADs and pods are what
Kathara's own code makes; each pod is attached as Multus does, calling the installed `megalos`
plugin (env + stdin). LANs span nodes. The lab then stays up, the map live, until Enter or
Ctrl-C (--exit: run through and exit; so does a run whose stdin is not a terminal). Everything
is removed on exit.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

from demo.lab import LAB, addresses, lab_conf, plan
from lab.labrun import RunningLab


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def megalosctl(api, *args: str) -> int:
    """Run the command-line client against the demo's API, as a user would."""
    print(f"    $ megalosctl {' '.join(args)}", flush=True)
    env = {**os.environ, "MEGALOS_API": api.url, "MEGALOS_API_TOKEN": api.token}
    proc = subprocess.run([sys.executable, "-m", "api.cli", *args], env=env, text=True,
                          capture_output=True)
    for line in (proc.stdout + proc.stderr).rstrip().splitlines():
        print(f"      {line}")
    return proc.returncode


def hold(page: str, run_through: bool) -> None:
    """Keep the lab up until Enter or Ctrl-C, unless asked not to or nobody can press Enter."""
    if run_through:
        return
    if not sys.stdin.isatty():
        print("    (stdin is not a terminal: not waiting for Enter; --exit says so explicitly)")
        return
    step(f"the lab is up: the LAN map is at {page} (press Enter or Ctrl-C to tear it down)")
    try:
        input()
    except (KeyboardInterrupt, EOFError):
        print()


def run(node_count: int, run_through: bool, port: int | None) -> int:
    with RunningLab(lab_conf(), nodes=node_count, api_port=port) as lab:
        step(f"emulated cluster {lab.cluster.prefix}: a control-plane node and {node_count} worker(s)")
        print(f"    control: megalos-reflector (BGP route reflector) at {lab.control.ip}, "
              "watching the lab's NADs and pods in an emulated Kubernetes API server")
        for node in lab.nodes:
            print(f"    {node.name}: VTEP {node.ip}, megalos-agent on {node.socket}")
        print(f"    control: REST API (gunicorn) at {lab.api.url}; reads need its token: "
              f"export MEGALOS_API_TOKEN={lab.api.token}")
        step(f"the LAN map: {lab.api.page_url()} (open it now to watch the devices arrive; the "
             "link hands the page the token)")
        placement = plan([n.name for n in lab.nodes])
        ips = addresses()
        vnis = {link: json.loads(nad["spec"]["config"])["vxlanId"]
                for link, nad in lab.kathara.nads.items()}
        step("attaching devices: Kathara's pods, one CNI ADD per interface as Multus does "
             "(netN = lab ethN)")
        for device, lans in LAB.items():
            started = time.perf_counter()
            attached = lab.attach(device, placement[device])
            took = (time.perf_counter() - started) * 1000
            for index, lan in enumerate(lans):
                ifname = f"net{index}"
                attached.netns.set_ip(ifname, f"{ips[(device, lan)]}/24")
                print(f"    {device:4} {ifname} on {attached.node.name}: LAN {lan} "
                      f"(VNI {vnis[lan]}), MAC {attached.mac(ifname)}, {ips[(device, lan)]}")
            print(f"         pod {attached.name}: {len(lans)} ADD(s) in {took:.0f} ms")
        step("waiting for the EVPN control plane to converge (the reflector knows every MAC)")
        macs = [lab.devices[d].mac(f"net{i}") for d, lans in LAB.items() for i in range(len(lans))]
        if megalosctl(lab.api, "wait", *[arg for mac in macs for arg in ("--mac", mac)],
                      "--timeout", "30") != 0:
            print("    the reflector did not see every MAC within 30 s", file=sys.stderr)
            return 1
        step("who reaches whom (ping over each LAN)")
        ok = True
        links: dict[str, list[str]] = {}
        for device, lans in LAB.items():
            for lan in lans:
                links.setdefault(lan, []).append(device)
        for lan, members in sorted(links.items()):
            for src, dst in itertools.permutations(members, 2):
                reached = lab.devices[src].netns.ping(ips[(dst, lan)], count=1, timeout=2)
                where = "same node" if placement[src] == placement[dst] else "across nodes"
                print(f"    {'ok ' if reached else '!! '} LAN {lan}: {src} ({placement[src]}) -> "
                      f"{dst} ({placement[dst]}), {where}")
                ok &= reached
        isolated = not lab.devices["pc1"].netns.ping(ips[("pc2", "C")], count=1, timeout=1)
        print(f"    {'ok ' if isolated else '!! '} pc1 (LAN A) cannot reach pc2 (LAN C): LANs are isolated")
        step("the cluster through the API: the lab's LANs, one LAN's MAC table, the BGP peers")
        megalosctl(lab.api, "lans", "--namespace", lab.kathara.namespace)
        megalosctl(lab.api, "vni", str(vnis["A"]))
        megalosctl(lab.api, "nodes")
        step("each node's VTEP forwarding entries (bridge fdb), programmed from BGP")
        for node in lab.nodes:
            for entry in node.fdb():
                if entry.get("dst") and entry["ifname"].startswith("mgvx"):
                    kind = "flood" if entry["mac"] == "00:00:00:00:00:00" else "mac  "
                    print(f"    {node.name}: {entry['ifname']:13} {kind} {entry['mac']} -> VTEP {entry['dst']}")
        hold(lab.api.page_url(), run_through)
        step("detaching: the pods go, Multus-style CNI DEL for every interface")
        for device in LAB:
            lab.detach(device)
        left = [n for node in lab.nodes for n in node.link_names() if n.startswith("mg")]
        print(f"    devices left on the nodes: {left or 'none'}")
        step("cleaning up namespaces")
        return 0 if ok and isolated and not left else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3, help="worker nodes (default %(default)s)")
    parser.add_argument("--exit", action="store_true",
                        help="run through and exit, without keeping the lab up for the map")
    parser.add_argument("--port", type=int, default=None,
                        help="the API's (and the map's) port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the demo needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    try:
        return run(args.nodes, args.exit, args.port)
    except KeyboardInterrupt:
        print("\ninterrupted: everything was cleaned up", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
