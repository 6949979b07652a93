"""A rogue BGP peer announcing 100k routes: the reflector's and the nodes' memory, and whether
another lab's LAN keeps working meanwhile.

    .venv/bin/python -m bench.rogue_peer [--routes 100000] [--at reflector,node] [--watch 60] [--note TEXT]

A reflector (megalos-reflector) and two nodes (megalos-agent) in lab.cluster, with a pod on each
node on one LAN pinging the other 20 times a second for the whole run. The rogue is
lab.rogue_bgp, a real process speaking raw BGP, announcing `--routes` MAC routes (its own VTEP as
next hop: nothing but their number is wrong) as fast as its socket takes them:

- `reflector`: the rogue is a node, one of the reflector's peers (the reflector dials it);
- `node`: the rogue is a reflector of node n1 (n1's agent runs with a second `--reflector`; the
  rogue dials it, as our reflectors do).

Memory is the RSS of each daemon and its BGP process, sampled every second for `--watch` seconds
from the start of the flood (peak and final); also the routes the reflector holds, what the
rogue heard back (a NOTIFICATION and when it got a session again), and the ping flow. The
daemons run with their default options. Run from a checkout of older code to measure it (that
code needs lab/rogue_bgp.py and bgp/evpn_wire.py's builders copied in). Results: printed, and
JSON in bench/results/.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from bench.evpn import cpu_seconds, git_head, loadavg, machine, print_table, rss_mib, write_results
from bench.flood import cpu_used, ping_result, sample, start_ping, watch_memory
from lab.cluster import Cluster, unique_prefix, wait_for
from lab.rogue_bgp import RoguePeer
from lab.runtime import Runtime
from reflector.protocol import StateClient

ROGUE_VNI, OTHER_VNI = 73000, 73001
TARGETS = ("reflector", "node")


def run(runtime: Runtime, at: str, routes: int, watch: float) -> dict:
    with Cluster(prefix=unique_prefix("mgq")) as cluster:
        rr, n1, n2, rogue_node = (cluster.add_node(n) for n in ("rr", "n1", "n2", "rogue"))
        peers = [n1.ip, n2.ip] + ([rogue_node.ip] if at == "reflector" else [])
        rr.start_reflector(*[a for ip in peers for a in ("--peer", ip)])
        n1.start_agent("--reflector", rr.ip, *(("--reflector", rogue_node.ip) if at == "node" else ()))
        n2.start_agent("--reflector", rr.ip)
        a = runtime.add_kathara_pod(n1, "a", OTHER_VNI, "02:73:00:00:01:01")
        b = runtime.add_kathara_pod(n2, "b", OTHER_VNI, "02:73:00:00:01:02")
        a.set_ip("net0", "10.73.0.1/24")
        b.set_ip("net0", "10.73.0.2/24")
        if not wait_for(lambda: a.ping("10.73.0.2"), timeout=30, interval=0.5):
            raise RuntimeError("the other LAN does not work before the flood")
        rogue_args = ["--router-id", rogue_node.ip]
        rogue_args += (["--peer", rr.ip, "--listen", rogue_node.ip] if at == "reflector"
                       else ["--peer", n1.ip, "--connect"])
        rogue = RoguePeer(rogue_node.netns, *rogue_args)
        try:
            rogue.wait_for("established", 60)
            time.sleep(2)
            daemons = {"reflector": rr, "n1": n1, "n2": n2}
            before, cpu_before = sample(daemons, rss_mib), sample(daemons, cpu_seconds)
            flow = start_ping(a.netns, "10.73.0.2", watch)
            time.sleep(1)
            t0, wall0 = time.monotonic(), time.time()
            rogue.send("macs", vni=ROGUE_VNI, count=routes, next_hop=rogue_node.ip, tag=0x73)
            peak, timeline = watch_memory(daemons, t0, watch, StateClient(rr.socket))
            after, cpu_after = sample(daemons, rss_mib), sample(daemons, cpu_seconds)
            ping = ping_result(flow, watch)
            heard = {event: [dict(r, t=round(r["time"] - wall0, 1)) for r in rogue.events(event)]
                     for event in ("notification", "established")}
        finally:
            rogue.close()
        return {
            "at": at, "routes_sent": routes, "watch_s": watch,
            "rss_before_mib": before, "rss_peak_mib": peak, "rss_after_mib": after,
            "cpu_s": cpu_used(cpu_before, cpu_after),
            "reflector_macs": timeline[-1]["reflector_macs"] if timeline else None,
            "rogue_heard": {"notifications": [(r["code"], r["subcode"], r["t"]) for r in heard["notification"]],
                            "sessions_again_at_s": [r["t"] for r in heard["established"]]},
            "other_lan_ping": ping,
            "timeline": timeline,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rogue_peer", description=__doc__.splitlines()[0])
    p.add_argument("--routes", type=int, default=100_000, help="MAC routes the rogue announces")
    p.add_argument("--at", default=",".join(TARGETS), help=f"where the rogue peers: {', '.join(TARGETS)}")
    p.add_argument("--watch", type=float, default=60.0, help="seconds of sampling after the flood starts")
    p.add_argument("--note", default="", help="stored with the results (what code ran)")
    p.add_argument("--out", default="", help="results file (default bench/results/rogue_peer-<time>.json)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.rogue_peer needs root (network namespaces)", file=sys.stderr)
        return 2
    targets = [t for t in args.at.split(",") if t]
    if any(t not in TARGETS for t in targets):
        p.error(f"--at: among {', '.join(TARGETS)}")
    report = {"machine": machine(), "command": " ".join(["python -m bench.rogue_peer",
                                                       *(sys.argv[1:] if argv is None else argv)]),
              "note": args.note, "git": git_head(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="mgq-cni-") as bin_dir:
        runtime = Runtime(bin_dir)
        for at in targets:
            print(f"rogue peer at the {at} ...", flush=True)
            report["runs"].append({"loadavg_before": loadavg(), **run(runtime, at, args.routes, args.watch)})
    rows = []
    for r in report["runs"]:
        for where in ("reflector", "n1", "n2"):
            rows.append((r["at"], where, round(sum(r["rss_before_mib"][where].values()), 1),
                         round(sum(r["rss_peak_mib"].get(where, {}).values()), 1),
                         round(sum(r["rss_after_mib"][where].values()), 1),
                         round(sum(r["cpu_s"][where].values()), 1)))
    print_table(f"A rogue peer announcing {args.routes} routes: RSS (MiB, daemon + BGP process)",
                rows, ("rogue at", "where", "before", "peak", "after", "CPU s"))
    for r in report["runs"]:
        ping = r["other_lan_ping"]
        print(f"  {r['at']}: rogue heard {r['rogue_heard']}; reflector holds {r['reflector_macs']} "
              f"MACs; other LAN: {ping['received']}/{ping['transmitted']} pings")
    write_results(report, args.out, "rogue_peer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
