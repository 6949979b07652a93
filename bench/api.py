"""API benchmark: GET /api/v1/vnis/{vni} of a 10,000-MAC VNI, latency and requests/s with wrk.

    .venv/bin/python -m bench.api [--macs 10000] [--nodes 4] [--duration 15] [--connections 8]

Needs root (network namespaces) and wrk (Debian package). Not a test: it prints figures.

How the MACs get there: the way they do in a cluster, as BGP routes. An emulated cluster
(lab.cluster) runs a real reflector (megalos-reflector, with its state socket) and, on each of
`--nodes` node namespaces, a real BGP speaker process (bgp.process, driven through
bgp.client exactly as the node agent drives it) that announces the VNI (Type-3) and its
share of the MACs, each with an IP (Type-2 MAC/IP routes), in one batch (`call_many`). No pods
or VTEP devices are made (10,000 pods would measure the CNI path, not the API): the reflector
cannot tell the difference, it sees the same UPDATEs. The load time is reported too.

Then gunicorn serves the API (api/gunicorn.conf.py: gthread, 2 workers) on a free loopback
port, and wrk measures, for several page sizes, p50/p99 latency and requests/s. All traffic is
on 127.0.0.1 and inside the namespaces; every run is bounded in time and cleans up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import urllib.request

from bgp.client import BgpProcess
from bgp.protocol import MacAdd, PeerAdd, Start, VtepAdd
from lab.api_server import ApiServer
from lab.cluster import Cluster
from reflector.protocol import StateClient

VNI = 70400


def mac_of(node: int, i: int) -> str:
    return f"02:{node:02x}:00:{i >> 16 & 0xff:02x}:{i >> 8 & 0xff:02x}:{i & 0xff:02x}"


def load_macs(cluster: Cluster, rr, count: int, nodes: int, timeout: float = 300.0) -> dict:
    """Announce `count` MACs in VNI from `nodes` speakers; wait until the reflector has them."""
    speakers, processes = [], []
    for n in range(nodes):
        node = cluster.add_node(f"s{n + 1}")
        speakers.append(node)
    rr.start_reflector(*[arg for node in speakers for arg in ("--peer", node.ip)])
    state = StateClient(rr.socket)
    started = time.monotonic()
    for n, node in enumerate(speakers):
        bgp = BgpProcess(argv_prefix=["ip", "netns", "exec", node.netns], name=f"bench-{node.name}",
                         stderr=subprocess.DEVNULL)
        processes.append(bgp)
        bgp.call(Start(router_id=node.ip, asn=65000, listen_host=node.ip, listen_port=179,
                       hold_time=30))
        bgp.call(PeerAdd(rr.ip, "passive"))
        bgp.call(VtepAdd(VNI, 1))
        share = range(n, count, nodes)
        bgp.call_many([MacAdd(VNI, mac_of(n + 1, i), f"10.{64 + (i >> 16)}.{i >> 8 & 0xff}.{i & 0xff}")
                       for i in share], timeout=120)
    announced = time.monotonic()
    deadline = started + timeout
    macs = 0
    while time.monotonic() < deadline:
        macs = state.call("totals")["macs"]
        if macs >= count:
            break
        time.sleep(0.5)
    loaded = time.monotonic()
    if macs < count:
        raise RuntimeError(f"the reflector has {macs} of {count} MACs after {timeout} s")
    return {"processes": processes, "announce_s": announced - started, "load_s": loaded - started}


def wrk(url: str, duration: int, connections: int, token: str) -> dict:
    threads = min(2, connections)  # wrk needs a connection per thread
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
                          "--timeout", "5s", "-H", f"Authorization: Bearer {token}", url],
                         capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    def ms(label):
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50_ms": ms("50%"), "p99_ms": ms("99%"),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "non_2xx": int(errors.group(1)) if errors else 0, "raw": out}


def body_size(url: str, token: str) -> tuple[int, int]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        raw = reply.read()
    return len(raw), len(json.loads(raw)["macs"])


def measure(api: ApiServer, limit: str, args, workers: int, threads: int) -> dict:
    url = f"{api.url}/api/v1/vnis/{VNI}" + ("" if limit == "default" else f"?limit={limit}")
    size, rows = body_size(url, api.token)
    wrk(url, 3, args.connections, api.token)  # warm up: connections, caches, the sorted keys
    runs = sorted((wrk(url, args.duration, args.connections, api.token)
                   for _ in range(args.repeat)), key=lambda run: run["rps"])
    figures = runs[len(runs) // 2]
    all_runs = ", ".join(f"{run['rps']:.0f}" for run in runs)
    print(f"{workers}x{threads} limit={limit:>7} rows={rows:>5} body={size / 1024:7.1f} KiB  "
          f"p50={figures['p50_ms']:6.2f} ms  p99={figures['p99_ms']:6.2f} ms  "
          f"{figures['rps']:7.1f} req/s  non-2xx={figures['non_2xx']}  (runs: {all_runs} req/s)",
          flush=True)
    return {"server": f"{workers}x{threads}", "limit": limit, "rows": rows, "bytes": size,
            **{k: v for k, v in figures.items() if k != "raw"}}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python "
            f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.splitlines()[0])
    p.add_argument("--macs", type=int, default=10_000)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--servers", default="2x16", help="gunicorn workers x threads to measure, "
                   "comma-separated (default %(default)s)")
    p.add_argument("--repeat", type=int, default=1, help="wrk runs per case; the median (by "
                   "requests/s) is reported")
    p.add_argument("--limits", default="default,100,10000",
                   help="page sizes to measure (default: the server's default page)")
    args = p.parse_args(argv)
    if os.geteuid() != 0 or not shutil.which("wrk"):
        print("bench.api needs root (network namespaces) and wrk", file=sys.stderr)
        return 2
    print(f"machine: {machine()}", flush=True)
    results = []
    with Cluster() as cluster:
        rr = cluster.add_node("rr")
        load = load_macs(cluster, rr, args.macs, args.nodes)
        print(f"loaded {args.macs} MACs from {args.nodes} speakers: announced in "
              f"{load['announce_s']:.1f} s, all in the reflector after {load['load_s']:.1f} s",
              flush=True)
        try:
            for server in args.servers.split(","):
                workers, threads = (int(x) for x in server.split("x"))
                with ApiServer(rr.socket, workers=workers, threads=threads) as api:
                    for limit in args.limits.split(","):
                        results.append(measure(api, limit, args, workers, threads))
        finally:
            for bgp in load["processes"]:
                bgp.close()
    print(f"wrk -t{min(2, args.connections)} -c{args.connections} -d{args.duration}s --latency "
          f"-H 'Authorization: Bearer TOKEN' http://127.0.0.1:PORT/api/v1/vnis/{VNI}[?limit=N]; "
          "load average now "
          f"{os.getloadavg()[0]:.2f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
