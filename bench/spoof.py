"""A spoofing pod: the agents' and the reflector's memory while one pod sends frames from 100k
source MACs, and whether another lab's LAN keeps working meanwhile.

    .venv/bin/python -m bench.spoof [--macs 100000] [--watch 90] [--no-bridge-cap] [--note TEXT]

A reflector and two nodes (lab.cluster). On the spoofed LAN, the spoofing pod on n1 and one pod
on n2 (so n2 programs whatever n1 announces); on another LAN, one pod on each node pinging the
other 20 times a second for the whole run. The spoofing pod sends one minimal frame from each of
`--macs` source addresses (lab.spoof, to its bridge's own address: nothing is flooded), as fast
as one raw socket sends. Memory is the RSS of each daemon and its BGP process, sampled every
second for `--watch` seconds after the flood (peak and final); also the MACs the reflector
holds, the entries n2's VTEP got, and what n1's bridge learned. `--no-bridge-cap` lifts the
kernel's cap on the spoofed bridge (fdb_max_learned, as on kernels before 6.8), so every frame
reaches the agent's MAC watch. Run from a checkout of older code to measure it (the options
given to the agents are the defaults). Results: printed, and JSON in bench/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.evpn import cpu_seconds, git_head, loadavg, machine, print_table, rss_mib, write_results
from bench.flood import cpu_used, ping_result, sample, start_ping, watch_memory
from cni import naming, netlink
from cni.netns import netlink_in
from lab.cluster import Cluster, Node, unique_prefix, wait_for
from lab.runtime import Runtime
from lab.spoof import bridge_mac, spoof, spoofed_macs
from reflector.protocol import StateClient

SPOOFED_VNI, OTHER_VNI = 72000, 72001


def vtep_entries(node: Node, vni: int) -> int:
    """Remote unicast entries (`self dst`) on the VNI's VTEP."""
    out = node.run("bridge", "-j", "fdb", "show", "dev", naming.vtep_name(vni), check=False).stdout
    return sum(1 for e in json.loads(out or "[]") if e.get("dst") and e["mac"] != "00:00:00:00:00:00")


def learned_on_bridge(node: Node, vni: int) -> int:
    out = node.run("bridge", "-j", "fdb", "show", "br", naming.bridge_name(vni), check=False).stdout
    return sum(1 for e in json.loads(out or "[]")
               if e["ifname"].startswith(naming.PORT_PREFIX) and not e.get("state"))


def lift_bridge_cap(node: Node, vni: int) -> None:
    """fdb_max_learned 0 (no cap) on the VNI's bridge, as a kernel without the setting has it."""
    with netlink_in(f"/var/run/netns/{node.netns}") as nl:
        bridge = nl.link(name=naming.bridge_name(vni))
        nl.set_link(netlink.link_body(index=bridge.index, attrs=[
            netlink.linkinfo("bridge", [netlink.attr(netlink.IFLA_BR_FDB_MAX_LEARNED, 0)])]))


def run(runtime: Runtime, macs: int, watch: float, bridge_cap: bool) -> dict:
    with Cluster(prefix=unique_prefix("mgs")) as cluster:
        rr = cluster.add_node("rr")
        n1, n2 = cluster.add_node("n1"), cluster.add_node("n2")
        rr.start_reflector("--peer", n1.ip, "--peer", n2.ip)
        for node in (n1, n2):
            node.start_agent("--reflector", rr.ip)
        spoofer = runtime.add_kathara_pod(n1, "spoofer", SPOOFED_VNI, "02:72:00:00:00:01")
        runtime.add_kathara_pod(n2, "far", SPOOFED_VNI, "02:72:00:00:00:02")
        a = runtime.add_kathara_pod(n1, "a", OTHER_VNI, "02:72:00:00:01:01")
        b = runtime.add_kathara_pod(n2, "b", OTHER_VNI, "02:72:00:00:01:02")
        a.set_ip("net0", "10.72.0.1/24")
        b.set_ip("net0", "10.72.0.2/24")
        if not wait_for(lambda: a.ping("10.72.0.2"), timeout=30, interval=0.5):
            raise RuntimeError("the other LAN does not work before the flood")
        if not bridge_cap:
            lift_bridge_cap(n1, SPOOFED_VNI)
        time.sleep(2)
        daemons = {"reflector": rr, "n1": n1, "n2": n2}
        before, cpu_before = sample(daemons, rss_mib), sample(daemons, cpu_seconds)
        flow = start_ping(a.netns, "10.72.0.2", watch)
        time.sleep(1)
        t0 = time.monotonic()
        spoof(spoofer, spoofed_macs(macs), dst=bridge_mac(n1, SPOOFED_VNI))
        sent_s = time.monotonic() - t0
        state = StateClient(rr.socket)
        peak, timeline = watch_memory(daemons, t0, watch, state)
        after, cpu_after = sample(daemons, rss_mib), sample(daemons, cpu_seconds)
        ping = ping_result(flow, watch)
        log_lines = n1.log_path.read_text().splitlines()
        return {
            "macs_sent": macs, "send_s": round(sent_s, 2), "watch_s": watch, "bridge_cap": bridge_cap,
            "rss_before_mib": before, "rss_peak_mib": peak, "rss_after_mib": after,
            "cpu_s": cpu_used(cpu_before, cpu_after),
            "reflector_macs": state.call("totals")["macs"],
            "n2_vtep_entries": vtep_entries(n2, SPOOFED_VNI),
            "n1_bridge_learned": learned_on_bridge(n1, SPOOFED_VNI),
            "other_lan_ping": ping,
            "agent_log_lines": len(log_lines),
            "agent_refusal_lines": sum("not announced" in line for line in log_lines),
            "timeline": timeline,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spoof", description=__doc__.splitlines()[0])
    p.add_argument("--macs", type=int, default=100_000, help="source MACs the pod sends from")
    p.add_argument("--watch", type=float, default=90.0, help="seconds of sampling after the flood starts")
    p.add_argument("--no-bridge-cap", action="store_true",
                   help="lift the kernel's cap on the spoofed bridge (a kernel before 6.8)")
    p.add_argument("--note", default="", help="stored with the results (what code ran)")
    p.add_argument("--out", default="", help="results file (default bench/results/spoof-<time>.json)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.spoof needs root (network namespaces)", file=sys.stderr)
        return 2
    report = {"machine": machine(), "git": git_head(), "note": args.note,
              "command": " ".join(["python -m bench.spoof", *(sys.argv[1:] if argv is None else argv)])}
    with tempfile.TemporaryDirectory(prefix="mgs-cni-") as bin_dir:
        report["result"] = r = run(Runtime(Path(bin_dir)), args.macs, args.watch, not args.no_bridge_cap)
    report["loadavg_at_end"] = loadavg()
    rows = [(where, label, r["rss_before_mib"][where].get(label), r["rss_peak_mib"].get(where, {}).get(label),
             r["rss_after_mib"][where].get(label), r["cpu_s"].get(where, {}).get(label))
            for where in r["rss_before_mib"] for label in r["rss_before_mib"][where]]
    print_table(f"{args.macs} spoofed source MACs on n1 ({r['send_s']} s to send); RSS MiB, CPU s",
                rows, ("where", "process", "before", "peak", f"after {args.watch:.0f} s", "CPU s"))
    ping = r["other_lan_ping"]
    print(f"\n  reflector MACs {r['reflector_macs']}, n2 VTEP entries {r['n2_vtep_entries']}, "
          f"n1 bridge learned {r['n1_bridge_learned']}, agent log lines {r['agent_log_lines']} "
          f"({r['agent_refusal_lines']} refusals)")
    print(f"  other LAN: {ping['received']}/{ping['transmitted']} pings answered "
          f"({ping['loss_pct']} % lost), rtt min/avg/max {ping['rtt_min_avg_max_ms']} ms")
    write_results(report, args.out, "spoof")
    return 0


if __name__ == "__main__":
    sys.exit(main())
