"""CNI ADD/DEL latency: the `megalos` shims (C and Python, through the agent) against the
reference `bridge` plugin.

    .venv/bin/python -m bench.cni_latency [--pods 50] [--runs 3] [--agent-arg=--metrics-port=0]

Every plugin is exec'd exactly as a runtime does (CNI_* environment, config on stdin, the whole
exec timed) from inside one emulated node's network namespace, on fresh pod namespaces: per pod,
the C shim attaches `net0`, the Python shim `net1`, bridge `eth1`, interleaved so that load
changes hit all alike. Also timed, to show where our time goes: the interpreter start alone
(`python3 -IS -c pass`, the floor of any Python plugin) and the agent's share (the request sent
over the agent's socket from this process: no exec). Each run uses a fresh emulated node; with
--runs N the table gives, per series, the median over the runs of p50 and of p99 (the machine is
shared: one run can be unlucky). Prints a table; writes the figures to bench/results/.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cni import shim
from lab.cluster import Cluster
from lab.runtime import Runtime, kathara_conf, shim_kinds

REFERENCE_PLUGIN = Path("/usr/lib/cni/bridge")
FLOOR = ["/usr/bin/python3", "-IS", "-c", "pass"]
RESULTS = Path(__file__).resolve().parent / "results"
VNI = 4242
CLONE_NEWNET = 0x40000000


@dataclass
class Series:
    """One timed operation over every pod: latencies in ms, and the failures seen."""

    name: str
    ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile (with 50 samples, p99 is the slowest one)."""
        ordered = sorted(self.ms)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    def summary(self) -> dict:
        return {"samples": len(self.ms), "p50_ms": round(self.percentile(50), 2),
                "p99_ms": round(self.percentile(99), 2), "mean_ms": round(statistics.fmean(self.ms), 2),
                "errors": len(self.errors), "first_error": self.errors[0] if self.errors else "",
                "ms": [round(ms, 2) for ms in self.ms]}


@contextmanager
def inside(netns_path: str):
    """Run this thread (and the processes it forks) in `netns_path`, as a node's runtime would."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns_path}")
        yield
    finally:
        if libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the bench's own namespace")
        os.close(target)
        os.close(home)


def cni_env(command: str, container_id: str, netns: str, ifname: str, cni_path: str,
            **extra: str) -> dict:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
            "CNI_PATH": cni_path, "CNI_ARGS": "IgnoreUnknown=true;K8S_POD_NAMESPACE=bench", **extra}


def timed_exec(series: Series, argv: list[str], env: dict | None = None, stdin: str = "") -> None:
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin.encode(), env=env, capture_output=True)
    series.ms.append((time.perf_counter() - start) * 1000)
    if proc.returncode != 0:
        series.errors.append(f"exit {proc.returncode}: {proc.stdout.decode().strip()}")


def timed_forward(series: Series, env: dict, stdin: str) -> None:
    """The shim's work minus its exec: one request over the agent's socket, from this process."""
    start = time.perf_counter()
    code, out = shim.forward(env, stdin)
    series.ms.append((time.perf_counter() - start) * 1000)
    if code != 0:
        series.errors.append(f"exit {code}: {out}")


def run(pods: int, bin_dir: Path, agent_args: tuple[str, ...] = ()) -> dict:
    started = machine()
    shims = {kind: Runtime(bin_dir / kind, shim=kind) for kind in SHIMS}  # as the DaemonSet does
    conf = json.dumps(kathara_conf("bench", VNI, "1.0.0"))
    ref_conf = json.dumps({"cniVersion": "1.0.0", "name": "ref", "type": "bridge",
                           "bridge": f"ref{uuid.uuid4().hex[:8]}"})
    series = {name: Series(name) for name in LABELS}
    with Cluster() as cluster:
        node = cluster.add_node("n1")
        node.start_agent(*agent_args)
        sandboxes = [node.add_pod(f"p{i}").netns_path for i in range(pods)]
        node_ns = str(Path("/var/run/netns") / node.netns)
        socket = {"MEGALOS_AGENT_SOCKET": node.socket}
        plugins = {  # series prefix -> (argv, config, ifname, CNI_PATH, extra environment)
            "bridge": ([str(REFERENCE_PLUGIN)], ref_conf, "eth1", str(REFERENCE_PLUGIN.parent), {}),
            **{f"megalos_{kind}": ([str(rt.bin_dir / rt.plugin)], conf, IFNAMES[kind],
                                   str(rt.bin_dir), socket) for kind, rt in shims.items()},
        }

        def exec_plugin(prefix: str, command: str, i: int) -> None:
            argv, stdin, ifname, cni_path, extra = plugins[prefix]
            env = cni_env(command, f"bench-{i}", sandboxes[i], ifname, cni_path, **extra)
            timed_exec(series[f"{prefix}_{command.lower()}"], argv, env, stdin)

        def forward(command: str, i: int) -> None:
            env = cni_env(command, f"bench-{i}", sandboxes[i], IFNAMES["c"], "/opt/cni/bin",
                          **socket)
            timed_forward(series[f"agent_{command.lower()}"], env, conf)

        with inside(node_ns):
            # Interleaved per pod, so a change of load on the machine hits every series alike.
            for i in range(pods):
                timed_exec(series["floor"], FLOOR)
                for kind in SHIMS:
                    timed_exec(series[f"megalos_{kind}_version"], plugins[f"megalos_{kind}"][0],
                               {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "VERSION", **socket}, conf)
                for prefix in plugins:
                    exec_plugin(prefix, "ADD", i)
            for i in range(pods):
                for prefix in plugins:
                    exec_plugin(prefix, "DEL", i)
            # Again without our exec: what the agent itself takes, on the same node state.
            for i in range(pods):
                forward("ADD", i)
                exec_plugin("bridge", "ADD", i)
            for i in range(pods):
                forward("DEL", i)
                exec_plugin("bridge", "DEL", i)
    started["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    return {"pods": pods, "agent_args": list(agent_args), "machine": started,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "series": {name: s.summary() for name, s in series.items()}}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu,
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "python": platform.python_version()}


SHIMS = ("c", "python")
IFNAMES = {"c": "net0", "python": "net1"}
LABELS = {
    "floor": "python3 -IS -c pass (floor)",
    "megalos_c_version": "megalos C VERSION (exec; the shim answers)",
    "megalos_c_add": "megalos C ADD",
    "megalos_c_del": "megalos C DEL",
    "megalos_python_version": "megalos Python VERSION (exec; the shim answers)",
    "megalos_python_add": "megalos Python ADD",
    "megalos_python_del": "megalos Python DEL",
    "agent_add": "  agent side of ADD (socket, no exec)",
    "agent_del": "  agent side of DEL (socket, no exec)",
    "bridge_add": "bridge ADD (reference, no IPAM)",
    "bridge_del": "bridge DEL (reference, no IPAM)",
}


def combine(reports: list[dict]) -> dict:
    """Per series: the median over the runs of p50 and of p99, and each run's p50."""
    combined = {}
    for name in LABELS:
        runs = [r["series"][name] for r in reports]
        combined[name] = {"p50_ms": round(statistics.median(s["p50_ms"] for s in runs), 2),
                          "p99_ms": round(statistics.median(s["p99_ms"] for s in runs), 2),
                          "p50_per_run": [s["p50_ms"] for s in runs],
                          "errors": sum(s["errors"] for s in runs)}
    return combined


def table(report: dict) -> str:
    runs = len(report["runs"])
    head = f"CNI latency, {report['pods']} pods, {runs} run(s), ms"
    rows = [f"{head:<40}{'p50':>8} {'p99':>8} {'errors':>7}   p50 per run"]
    for name, label in LABELS.items():
        s = report["combined"][name]
        per_run = ", ".join(f"{v:.1f}" for v in s["p50_per_run"])
        rows.append(f"{label:<40}{s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['errors']:>7}"
                    f"   {per_run}")
    ours = report["combined"]["megalos_c_add"]["p50_ms"]
    ref = report["combined"]["bridge_add"]["p50_ms"]
    rows.append(f"target (C shim ADD p50 <= bridge ADD p50): {'met' if ours <= ref else 'NOT met'} "
                f"({ours:.2f} vs {ref:.2f} ms)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cni_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                        help="an option for megalos-agent (repeat), e.g. --agent-arg=--metrics-port=0")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.cni_latency: needs root (network namespaces)", file=sys.stderr)
        return 1
    if not os.access(REFERENCE_PLUGIN, os.X_OK):
        print(f"bench.cni_latency: {REFERENCE_PLUGIN} missing (apt-get install containernetworking-plugins)",
              file=sys.stderr)
        return 1
    if "c" not in shim_kinds():
        print("bench.cni_latency: no C compiler (cc) to build the C shim", file=sys.stderr)
        return 1
    reports = []
    for number in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="megalos-bench-bin-") as bin_dir:
            reports.append(run(args.pods, Path(bin_dir), tuple(args.agent_arg)))
        c_add = reports[-1]["series"]["megalos_c_add"]["p50_ms"]
        print(f"run {number}/{args.runs}: C ADD p50 {c_add} ms, bridge ADD p50 "
              f"{reports[-1]['series']['bridge_add']['p50_ms']} ms, load "
              f"{' '.join(reports[-1]['machine']['loadavg_at_start'])}", flush=True)
    report = {"pods": args.pods, "agent_args": args.agent_arg, "runs": reports,
              "combined": combine(reports)}
    print(table(report))
    for number, one in enumerate(reports, 1):
        for name, s in one["series"].items():
            if s["errors"]:
                print(f"run {number} {name}: {s['errors']} failed, first: {s['first_error']}",
                      file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cni_latency-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
