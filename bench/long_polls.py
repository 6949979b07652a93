"""Event intake of the reflector's state while long polls wait on a VNI that never changes.

    .venv/bin/python -m bench.long_polls [--routes 20000] [--waiters 0,16] [--log 100000]
                                         [--repeat 3] [--note TEXT]

What is measured: routes folded into a ReflectorState (`apply`, what the reflector does with
every route its BGP process reflects) per second, while `--waiters` threads long-poll
`changes_since` filtered to a VNI that has no changes (what `GET /api/v1/events?vni=N&timeout=30`
becomes in the reflector: one state-socket thread per poll), each poll as long as the API allows
(30 s, longer than the run). The log first holds `--log` changes (a busy reflector's full log).
In process, no sockets: the cost measured is the state lock's, which the socket only adds to.
Prints a table; writes the figures to bench/results/.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

from bench.cni_latency import RESULTS, machine
from bgp.protocol import ADD, MacRoute
from reflector.state import ReflectorState

BUSY_VNI, QUIET_VNI, VTEP = 70500, 70599, "192.0.2.2"
POLL = 30.0  # the API's longest long poll (MEGALOS_API_EVENTS_MAX_TIMEOUT)


def mac(i: int) -> str:
    return f"02:00:{i >> 24 & 0xff:02x}:{i >> 16 & 0xff:02x}:{i >> 8 & 0xff:02x}:{i & 0xff:02x}"


def intake(routes: int, waiters: int, log: int) -> float:
    """Routes per second folded into a state whose log holds `log` changes, with `waiters`
    long polls on the quiet VNI."""
    state = ReflectorState(max_log=log)
    for i in range(log):
        state.apply(MacRoute(ADD, BUSY_VNI, mac(i), VTEP), now=0.0)
    stop = threading.Event()

    def wait():
        since = state.seq
        while not stop.is_set():
            since = state.changes_since(since, timeout=POLL, vni=QUIET_VNI)["next"]

    threads = [threading.Thread(target=wait, daemon=True) for _ in range(waiters)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # every poll is waiting
    started = time.perf_counter()
    for i in range(log, log + routes):
        state.apply(MacRoute(ADD, BUSY_VNI, mac(i), VTEP), now=0.0)
    elapsed = time.perf_counter() - started
    stop.set()
    state.apply(MacRoute(ADD, QUIET_VNI, mac(0), VTEP), now=0.0)  # wakes every poll to its end
    for thread in threads:
        thread.join(POLL)
    return routes / elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.long_polls",
                                description=__doc__.splitlines()[0])
    p.add_argument("--routes", type=int, default=20_000)
    p.add_argument("--waiters", default="0,16", help="long polls to measure with, comma-separated")
    p.add_argument("--log", type=int, default=100_000, help="changes in the log at the start "
                   "(the reflector keeps 100,000)")
    p.add_argument("--repeat", type=int, default=3, help="runs per case, interleaved; the median "
                   "is reported")
    p.add_argument("--note", default="", help="a word about the run, kept with the figures")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.waiters.split(",")]
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "routes": args.routes, "log": args.log, "note": args.note, "runs": {}}
    for _ in range(args.repeat):  # interleaved: a change of load hits every case alike
        for waiters in counts:
            rate = intake(args.routes, waiters, args.log)
            report["runs"].setdefault(str(waiters), []).append(round(rate))
            print(f"  {waiters:>3} waiters: {rate:9.0f} routes/s", flush=True)
    report["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    print(f"\n{args.routes} routes into a log of {args.log}, load average "
          f"{' '.join(report['machine']['loadavg_at_start'])} -> {' '.join(report['loadavg_at_end'])}")
    print("| long polls on a quiet VNI | routes/s (median) | runs |\n| --- | --- | --- |")
    for waiters, runs in report["runs"].items():
        print(f"| {waiters} | {statistics.median(runs):.0f} | {', '.join(map(str, runs))} |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"long_polls-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
