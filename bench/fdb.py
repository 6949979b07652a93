"""The VTEP FDB writer (speaker.fdb.VtepFdb) on a real VTEP: batched writes, reconcile reads.

    .venv/bin/python -m bench.fdb [--macs 10000] [--vteps 100] [--local 10000] [--runs 5]

One emulated node (lab.cluster), its LAN made by cni.datapath as an ADD makes it, 10 pod ports
holding --local static MACs between them (what ADD records). Timed, in order: install of --macs
remote MACs (two requests each: `self dst` on the VTEP, `master extern_learn` on the bridge) and
one flood entry per remote VTEP; the same install again (every entry exists: replaced);
current(vni) and local_macs(vni), the reads of a reconcile, each the median of --runs; remove;
remove again (every entry already gone). Wall-clock and CPU time (user + system of this
process, the kernel's share of each request included: the figure to compare on a loaded
machine). Each figure is checked (what current() and local_macs() return, what install and
remove count). Prints a table; writes bench/results/.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.cni_latency import RESULTS, inside, machine
from cni import naming, netns
from cni.datapath import Datapath
from lab.cluster import Cluster
from speaker.evpn_state import FloodEntry, MacEntry
from speaker.fdb import VtepFdb

VNI = 4343
PORTS = 10


def mac(kind: int, i: int) -> str:
    return f"02:{kind:02x}:00:{i >> 16 & 0xff:02x}:{i >> 8 & 0xff:02x}:{i & 0xff:02x}"


def remote_entries(vni: int, macs: int, vteps: int) -> list:
    addresses = [f"198.51.{100 + v // 250}.{1 + v % 250}" for v in range(vteps)]
    return ([MacEntry(vni, mac(0xbe, i), addresses[i % vteps]) for i in range(macs)]
            + [FloodEntry(vni, address) for address in addresses])


def add_local_macs(node, ports: list[str], count: int) -> set:
    """`count` static MACs spread over the pod ports (one `bridge -batch`)."""
    macs = {mac(0x1c, i): ports[i % len(ports)] for i in range(count)}
    with tempfile.NamedTemporaryFile("w", suffix=".batch") as batch:
        batch.writelines(f"fdb add {m} dev {port} master static\n" for m, port in macs.items())
        batch.flush()
        node.run("bridge", "-batch", batch.name)
    return set(macs)


class Timer:
    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.errors: list[str] = []

    def once(self, name: str, call, requests: int = 0):
        return self.median(name, call, 1, requests)

    def median(self, name: str, call, runs: int, requests: int = 0):
        """call() `runs` times; the median of the wall-clock and of the CPU times (this
        process's user + system: the kernel handles a netlink request in the sender's system
        call, so the CPU time counts it too, and it varies less with the machine's load)."""
        wall, cpu, value = [], [], None
        for _ in range(runs):
            start, start_cpu = time.perf_counter(), time.process_time()
            value = call()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        row = {"ms": round(statistics.median(wall) * 1000, 1),
               "cpu_ms": round(statistics.median(cpu) * 1000, 1),
               "runs_ms": [round(s * 1000, 1) for s in wall]}
        if requests:
            row["requests"] = requests
            row["us_per_request"] = round(statistics.median(wall) * 1e6 / requests, 1)
            row["cpu_us_per_request"] = round(statistics.median(cpu) * 1e6 / requests, 1)
        self.rows[name] = row
        return value

    def check(self, what: str, ok: bool) -> None:
        if not ok:
            self.errors.append(what)


def run(macs: int, vteps: int, local: int, runs: int) -> dict:
    timer = Timer()
    started = machine()
    entries = remote_entries(VNI, macs, vteps)
    wanted = set(entries)
    requests = 2 * macs + vteps
    with Cluster() as cluster:
        node = cluster.add_node("n1")
        pods = [node.add_pod(f"p{i}") for i in range(PORTS)]
        with inside(f"/var/run/netns/{node.netns}"):
            datapath = Datapath(vtep_ip=node.ip)
            fdb = VtepFdb()
            try:
                lan, _ = datapath.ensure_lan(VNI, 4789, datapath.default_underlay)
                ports = [naming.port_name(pod.name, "eth0") for pod in pods]
                for i, (pod, port) in enumerate(zip(pods, ports)):
                    with netns.opened(pod.netns_path) as fd:
                        datapath.add_port(lan, port, fd, "eth0", mac(0x2a, i), "bench")
                local_macs = add_local_macs(node, ports, local) | {mac(0x2a, i) for i in range(PORTS)}

                count = timer.once("install", lambda: fdb.install(entries), requests)
                timer.check(f"install counted {count} of {len(entries)}", count == len(entries))
                count = timer.once("install again (replace)", lambda: fdb.install(entries), requests)
                timer.check(f"install again counted {count}", count == len(entries))
                have = timer.median("current(vni)", lambda: fdb.current(VNI), runs)
                timer.check(f"current() returned {len(have)} of {len(wanted)} entries", have == wanted)
                found = timer.median("local_macs(vni)", lambda: {m for m, _, _ in fdb.local_macs(VNI)}, runs)
                timer.check(f"local_macs() returned {len(found)} of {len(local_macs)}",
                            found == local_macs)
                count = timer.once("remove", lambda: fdb.remove(entries), requests)
                timer.check(f"remove counted {count}", count == len(entries))
                count = timer.once("remove again (already gone)", lambda: fdb.remove(entries),
                                   requests)
                timer.check(f"remove again counted {count}", count == len(entries))
                timer.check("entries left after remove", fdb.current(VNI) == set())
            finally:
                fdb.close()
                datapath.close()
    started["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    return {"macs": macs, "vteps": vteps, "local_macs": len(local_macs), "runs": runs,
            "machine": started, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rows": timer.rows, "errors": timer.errors}


def table(report: dict) -> str:
    head = (f"VtepFdb, {report['macs']} remote MACs on {report['vteps']} VTEPs, "
            f"{report['local_macs']} local MACs")
    lines = [f"{head:<60}{'ms':>9} {'us/request':>11} {'CPU ms':>9} {'us/request':>11}"]
    for name, row in report["rows"].items():
        per = f"{row['us_per_request']:.1f}" if "us_per_request" in row else ""
        cpu_per = f"{row['cpu_us_per_request']:.1f}" if "cpu_us_per_request" in row else ""
        lines.append(f"  {name:<58}{row['ms']:>9.1f} {per:>11} {row['cpu_ms']:>9.1f} {cpu_per:>11}")
    m = report["machine"]
    lines.append(f"load average {' '.join(m['loadavg_at_start'])} -> {' '.join(m['loadavg_at_end'])}"
                 f"; {m['nproc']} cores, {m['cpu']}, kernel {m['kernel']}, Python {m['python']}")
    lines += [f"ERROR: {e}" for e in report["errors"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fdb", description=__doc__.splitlines()[0])
    parser.add_argument("--macs", type=int, default=10_000)
    parser.add_argument("--vteps", type=int, default=100)
    parser.add_argument("--local", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    report = run(args.macs, args.vteps, args.local, args.runs)
    print(table(report))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"fdb-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {path}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
