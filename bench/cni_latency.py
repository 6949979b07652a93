"""CNI ADD/DEL latency: the `megalos` shim (through the agent) against the reference `bridge` plugin.

    .venv/bin/python -m bench.cni_latency [--pods 50]

Both plugins are exec'd exactly as a runtime does (CNI_* environment, config on stdin, the whole
exec timed) from inside one emulated node's network namespace, on fresh pod namespaces. Also
timed, to show where our time goes: the interpreter start alone (`python3 -IS -c pass`, the
floor of any Python plugin) and the agent's share (the shim's request sent over the agent's
socket from this process: no exec). Prints a table; writes the figures to bench/results/.
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
from lab.runtime import Runtime, kathara_conf

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


def run(pods: int, bin_dir: Path) -> dict:
    started = machine()
    ours = Runtime(bin_dir)  # installs the shim as the DaemonSet does
    plugin = str(bin_dir / ours.plugin)
    conf = json.dumps(kathara_conf("bench", VNI, "1.0.0"))
    ref_conf = json.dumps({"cniVersion": "1.0.0", "name": "ref", "type": "bridge",
                           "bridge": f"ref{uuid.uuid4().hex[:8]}"})
    series = {name: Series(name) for name in LABELS}
    with Cluster() as cluster:
        node = cluster.add_node("n1")
        node.start_agent()
        sandboxes = [node.add_pod(f"p{i}").netns_path for i in range(pods)]
        node_ns = str(Path("/var/run/netns") / node.netns)
        socket = {"MEGALOS_AGENT_SOCKET": node.socket}

        ref = ([str(REFERENCE_PLUGIN)], ref_conf, "eth1", str(REFERENCE_PLUGIN.parent), {})
        mine = ([plugin], conf, "net0", str(bin_dir), socket)

        def exec_plugin(name: str, command: str, i: int, argv, stdin, ifname, cni_path, extra):
            env = cni_env(command, f"bench-{i}", sandboxes[i], ifname, cni_path, **extra)
            timed_exec(series[name], argv, env, stdin)

        def forward(name: str, command: str, i: int) -> None:
            env = cni_env(command, f"bench-{i}", sandboxes[i], "net0", str(bin_dir), **socket)
            timed_forward(series[name], env, conf)

        with inside(node_ns):
            # Interleaved per pod, so a change of load on the machine hits every series alike.
            for i in range(pods):
                timed_exec(series["floor"], FLOOR)
                timed_exec(series["megalos_version"], [plugin],
                           {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "VERSION", **socket}, conf)
                exec_plugin("megalos_add", "ADD", i, *mine)
                exec_plugin("bridge_add", "ADD", i, *ref)
            for i in range(pods):
                exec_plugin("megalos_del", "DEL", i, *mine)
                exec_plugin("bridge_del", "DEL", i, *ref)
            # Again without our exec: what the agent itself takes, on the same node state.
            for i in range(pods):
                forward("agent_add", "ADD", i)
                exec_plugin("bridge_add", "ADD", i, *ref)
            for i in range(pods):
                forward("agent_del", "DEL", i)
                exec_plugin("bridge_del", "DEL", i, *ref)
    started["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    return {"pods": pods, "machine": started, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "series": {name: s.summary() for name, s in series.items()}}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu,
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "python": platform.python_version()}


LABELS = {
    "floor": "python3 -IS -c pass (floor)",
    "megalos_version": "megalos VERSION (exec shim -> agent)",
    "megalos_add": "megalos ADD (exec shim -> agent)",
    "megalos_del": "megalos DEL (exec shim -> agent)",
    "agent_add": "  agent side of ADD (socket, no exec)",
    "agent_del": "  agent side of DEL (socket, no exec)",
    "bridge_add": "bridge ADD (reference, no IPAM)",
    "bridge_del": "bridge DEL (reference, no IPAM)",
}


def table(report: dict) -> str:
    rows = [f"CNI latency, {report['pods']} pods, ms   {'p50':>8} {'p99':>8} {'errors':>7}"]
    for name, label in LABELS.items():
        s = report["series"][name]
        rows.append(f"{label:<38}{s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['errors']:>7}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cni_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=50)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.cni_latency: needs root (network namespaces)", file=sys.stderr)
        return 1
    if not os.access(REFERENCE_PLUGIN, os.X_OK):
        print(f"bench.cni_latency: {REFERENCE_PLUGIN} missing (apt-get install containernetworking-plugins)",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="megalos-bench-bin-") as bin_dir:
        report = run(args.pods, Path(bin_dir))
    print(table(report))
    for name, s in report["series"].items():
        if s["errors"]:
            print(f"{name}: {s['errors']} failed, first: {s['first_error']}", file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cni_latency-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
