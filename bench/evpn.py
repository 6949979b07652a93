"""EVPN convergence and scale, ours against FRR (the original Megalos control plane).

    .venv/bin/python -m bench.evpn convergence   # ADD on node A -> FDB entry on node B, 100 pods
    .venv/bin/python -m bench.evpn scale         # 10,000 MACs from 3 nodes through the reflector
    .venv/bin/python -m bench.evpn all
      [--setups ours,frr-rr,frr] [--pods N] [--macs N] [--nodes N] [--timeout S]
      [--profile DIR (py-spy of the reflector and n1: flame graphs and summaries)] [--keep-logs DIR] [--note TEXT]

Each run builds emulated clusters (lab.cluster: namespaces as nodes) in three set-ups:

- `ours`: megalos-reflector + megalos-agent on every node;
- `frr-rr`: FRR's bgpd as the route reflector, configured like the original master (lab.frr),
  our agents behind it (they dial it: `--connect-mode active`);
- `frr`: FRR end to end, the original Megalos (FRR workers with `advertise-all-vni`; the agent
  runs without a control plane, only to make the same devices and pod veths).

Timing is taken from netlink, not by polling: a raw NETLINK_ROUTE socket opened inside each
node's namespace receives every RTM_NEWNEIGH/RTM_DELNEIGH, and the time an entry `MAC dev
mgvx<VNI> dst VTEP self` first appears is the time it was installed (to the scheduling of this
process). MACs for the scale run are injected the way a LAN produces them: each pod sends one
frame per MAC from distinct source addresses (to the bridge's own address, so nothing is
flooded), and the bridge learns them; the agent's MAC watch (or zebra) announces them. Memory is
the RSS of every process in the reflector's and the nodes' namespaces (agent + its BGP process;
zebra + bgpd). Results are printed and written as JSON to bench/results/.

Why one module of ~700 lines: the three set-ups share one harness (clusters, injection, the
netlink timer, RSS, profiles) and differ in a few lines each; split, every part would import
every other and a reader would lose the one place where a figure is produced.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from base.primitives import ZERO_MAC
from bench import flame
from cni import naming
from cni.netlink import NTF_SELF, RTMGRP_NEIGH, SO_RCVBUFFORCE, fdb_events
from cni.netns import socket_in
from lab import frr as frr_lab
from lab.cluster import Cluster, Node, sh, unique_prefix
from lab.frr import Frr
from lab.runtime import Runtime, kathara_conf
from lab.spoof import frame_sender

RESULTS = Path(__file__).resolve().parent / "results"
MODULE_LABELS = {"speaker.agent": "agent", "bgp.process": "bgp", "reflector.main": "reflector"}
SETUPS = ("ours", "frr-rr", "frr")
VNI = 71000
# The scale run's MACs come from one pod per node: above the agents' default MAC limits
# (speaker.mac_limits), which this benchmark is not about.
AGENT_LIMITS = ("--max-macs-per-port", "1000000", "--max-macs-per-node", "1000000")

class FdbWatch:
    """Remote entries (`self`, with a destination) appearing on one VTEP, with their times.

    `macs[mac] = (vtep, first time seen)`; `floods = {vtep}`. Waiters use `wait_for`.
    """

    def __init__(self, node: Node, vtep: str):
        self.node = node
        self.vtep = vtep
        self.ifindex = 0
        self.macs: dict[str, tuple[str, float]] = {}
        self.gone: dict[str, float] = {}           # mac -> time its entry was deleted
        self.floods: set[str] = set()
        self.overflows = 0
        self.cond = threading.Condition()
        self.sock = socket_in(f"/var/run/netns/{node.netns}", socket.AF_NETLINK, socket.SOCK_RAW,
                              socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self.sock.bind((0, RTMGRP_NEIGH))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fdbwatch-{node.name}", daemon=True)
        self._thread.start()

    def attach(self) -> None:
        """Resolve the VTEP's ifindex (once it exists) and load what it already holds."""
        link = json.loads(self.node.run("ip", "-j", "link", "show", "dev", self.vtep).stdout)[0]
        with self.cond:
            self.ifindex = link["ifindex"]
        self.resync()

    def resync(self) -> None:
        """Read the table (at start, and after lost events): what appeared or vanished meanwhile
        is timed now."""
        now = time.monotonic()
        entries = json.loads(self.node.run("bridge", "-j", "fdb", "show", "dev", self.vtep).stdout
                             or "[]")
        floods, macs = set(), {}
        for e in entries:
            if e.get("dst") and "self" in e.get("flags", ()):
                if e["mac"] == ZERO_MAC:
                    floods.add(e["dst"])
                else:
                    macs[e["mac"]] = e["dst"]
        with self.cond:
            self.floods = floods
            for mac in [m for m in self.macs if m not in macs]:
                del self.macs[mac]
                self.gone[mac] = now
            for mac, dst in macs.items():
                if self.macs.get(mac, (None,))[0] != dst:
                    self.macs[mac] = (dst, now)
                    self.gone.pop(mac, None)
            self.cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def wait_for(self, predicate, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # lost events: read the table again
                    self.overflows += 1
                    if self.ifindex:
                        self.resync()
                    continue
                return
            self._parse(data, time.monotonic())

    def _vtep_entry(self, ifindex: int, state: int, flags: int) -> bool:
        return ifindex == self.ifindex and bool(flags & NTF_SELF)

    def _parse(self, data: bytes, now: float) -> None:
        changed = False
        with self.cond:
            if not self.ifindex:
                return
            for present, entry in fdb_events(data, self._vtep_entry):
                if entry.mac and entry.dst:
                    changed = True
                    self._apply(present, entry.mac, entry.dst, now)
            if changed:
                self.cond.notify_all()

    def _apply(self, present: bool, mac: str, dst: str, now: float) -> None:
        if mac == ZERO_MAC:
            (self.floods.add if present else self.floods.discard)(dst)
        elif present:
            if mac not in self.macs:
                self.macs[mac] = (dst, now)
                self.gone.pop(mac, None)
        elif self.macs.get(mac, (None,))[0] == dst:
            del self.macs[mac]
            self.gone[mac] = now


# -- memory ---------------------------------------------------------------------------------------

def command_lines(netns: str) -> dict[int, list[str]]:
    """The argv of every process in a namespace, by pid (a process gone meanwhile: left out)."""
    found: dict[int, list[str]] = {}
    for pid in sh("ip", "netns", "pids", netns, check=False).stdout.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        found[int(pid)] = [w.decode() for w in argv if w]
    return found


def processes_in(netns: str) -> dict[str, int]:
    """Every process in a namespace by a short label (agent, bgp, zebra, bgpd...): its pid."""
    found: dict[str, int] = {}
    for pid, words in command_lines(netns).items():
        label = Path(words[0]).name if words else str(pid)
        if "-m" in words:
            module = words[words.index("-m") + 1]
            label = MODULE_LABELS.get(module, module.rsplit(".", 1)[-1])
        key = label
        n = 2
        while key in found:
            key, n = f"{label}{n}", n + 1
        found[key] = pid
    return found


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return round(rss / 1024, 1)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def measure_in(netns: str, measure) -> dict[str, float]:
    """measure(pid) of every process in a namespace, by label (a process gone meanwhile: left out)."""
    found: dict[str, float] = {}
    for label, pid in processes_in(netns).items():
        try:
            found[label] = measure(pid)
        except OSError:
            continue
    return found


# -- a cluster in one of the three set-ups ----------------------------------------------------------

@dataclass
class Testbed:
    setup: str
    n_nodes: int
    runtime: Runtime
    cluster: Cluster = None
    rr: Node = None
    nodes: list = field(default_factory=list)
    frr: list = field(default_factory=list)
    watches: dict = field(default_factory=dict)
    pods: dict = field(default_factory=dict)       # node name -> [pod]
    keep_logs: Path | None = None                  # copy the daemons' logs here at the end

    def __enter__(self):
        self.cluster = Cluster(prefix=unique_prefix("mgb"))
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for watch in self.watches.values():
            watch.close()
        if self.keep_logs:
            self.save_logs(self.keep_logs / f"{self.setup}-{self.cluster.prefix}")
        for instance in self.frr:
            instance.stop()
        self.cluster.destroy()

    def save_logs(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for path in self.cluster.run_dir.glob("*.log"):
            (directory / path.name).write_bytes(path.read_bytes())
        for instance in self.frr:
            if instance.log_path.exists():
                (directory / f"frr-{instance.node.name}.log").write_bytes(instance.log_path.read_bytes())

    def _build(self) -> None:
        c = self.cluster
        self.rr = c.add_node("rr")
        self.nodes = [c.add_node(f"n{i + 1}") for i in range(self.n_nodes)]
        ips = [n.ip for n in self.nodes]
        if self.setup == "ours":
            self.rr.start_reflector(*[a for ip in ips for a in ("--peer", ip)])
        else:
            self.frr.append(Frr.reflector(self.rr))        # listen range, like the original
        for node in self.nodes:
            if self.setup == "frr":
                self.frr.append(Frr.worker(node, self.rr.ip))
                node.start_agent()                          # datapath only
            elif self.setup == "frr-rr":
                node.start_agent("--reflector", self.rr.ip, "--connect-mode", "active", *AGENT_LIMITS)
            else:
                node.start_agent("--reflector", self.rr.ip, *AGENT_LIMITS)
            self.watches[node.name] = FdbWatch(node, naming.vtep_name(VNI))
            self.pods[node.name] = []

    def add_pod(self, node: Node, mac: str) -> tuple[float, float]:
        """A pod on the VNI with `mac`; (ADD start, ADD return) in monotonic time."""
        pod = node.add_pod(f"p{len(self.pods[node.name])}")
        t0 = time.monotonic()
        reply = self.runtime.call("ADD", kathara_conf("bench", VNI), container_id=f"c-{pod.netns}",
                                  netns=pod.netns_path, ifname="net0", args=f"MAC={mac}",
                                  socket=node.socket)
        t1 = time.monotonic()
        if reply.code != 0:
            raise RuntimeError(f"ADD on {node.name}: {reply}")
        self.pods[node.name].append(pod)
        watch = self.watches[node.name]
        if not watch.ifindex:
            watch.attach()
        return t0, t1

    def wait_mesh(self, timeout: float = 120.0) -> float:
        """Every node floods to every other node and knows every pod MAC; returns seconds."""
        t0 = time.monotonic()
        for node in self.nodes:
            others = {n.ip for n in self.nodes if n is not node}
            want = {f"02:bb:00:00:00:{i + 1:02x}" for i, n in enumerate(self.nodes) if n is not node}
            ok = self.watches[node.name].wait_for(
                lambda w: others <= w.floods and want <= set(w.macs),
                max(0.1, timeout - (time.monotonic() - t0)))
            if not ok:
                raise TimeoutError(f"{self.setup}: {node.name} has floods "
                                   f"{sorted(self.watches[node.name].floods)}, want {sorted(others)}"
                                   f"{self.logs()}")
        return time.monotonic() - t0

    def first_pods(self) -> None:
        for i, node in enumerate(self.nodes):
            self.add_pod(node, f"02:bb:00:00:00:{i + 1:02x}")

    def logs(self) -> str:
        text = ""
        for node in [self.rr, *self.nodes]:
            if node.log_path and node.log_path.exists():
                text += f"\n--- {node.name}\n{node.log_path.read_text()[-2000:]}"
        for instance in self.frr:
            text += f"\n--- FRR {instance.node.name}\n{instance.tail(1500)}"
        return text

    def memory(self) -> dict:
        return {"reflector": measure_in(self.rr.netns, rss_mib),
                "nodes": {n.name: measure_in(n.netns, rss_mib) for n in self.nodes}}

    def cpu(self) -> dict:
        return {"reflector": measure_in(self.rr.netns, cpu_seconds),
                "nodes": {n.name: measure_in(n.netns, cpu_seconds) for n in self.nodes}}


def cpu_spent(before: dict, after: dict) -> dict:
    """CPU seconds each process used between two `Testbed.cpu()` readings, and their total."""
    def diff(a: dict, b: dict) -> dict:
        return {k: round(b[k] - a.get(k, 0.0), 2) for k in b}
    spent = {"reflector": diff(before["reflector"], after["reflector"]),
             "nodes": {n: diff(before["nodes"].get(n, {}), c) for n, c in after["nodes"].items()}}
    spent["total"] = round(sum(spent["reflector"].values())
                           + sum(v for c in spent["nodes"].values() for v in c.values()), 2)
    return spent


def scale_medians(results: list[dict]) -> dict:
    """Per set-up, the median over its rounds of the installation and withdrawal times (a
    round that did not finish counts as missing) and of the CPU seconds spent installing."""
    def median(values: list) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 3) if present else None
    by_setup: dict[str, list[dict]] = {}
    for r in results:
        by_setup.setdefault(r["setup"], []).append(r)
    return {setup: {"rounds": len(rs),
                    "installed_s": median([r["all_installed_s"] for r in rs]),
                    "withdrawn_s": median([r.get("all_withdrawn_s") for r in rs]),
                    "all_cpu_s": median([r["cpu_install_s"]["total"] for r in rs])}
            for setup, rs in by_setup.items()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p90_ms": round(percentile(ms, 90), 1),
            "p99_ms": round(percentile(ms, 99), 1), "max_ms": round(max(ms), 1) if ms else None,
            "min_ms": round(min(ms), 1) if ms else None,
            "mean_ms": round(statistics.fmean(ms), 1) if ms else None}


# -- convergence ------------------------------------------------------------------------------------

def convergence(setup: str, runtime: Runtime, pods: int, gap: float, keep_logs: Path | None = None) -> dict:
    """Pods added one at a time on node A; time from ADD's return to the entry on node B."""
    with Testbed(setup, 2, runtime, keep_logs=keep_logs) as bed:
        a, b = bed.nodes
        bed.first_pods()
        mesh = bed.wait_mesh()
        watch = bed.watches[b.name]
        after_return, after_start, add_time, missing = [], [], [], []
        for i in range(pods):
            mac = f"02:cc:00:00:{i // 256:02x}:{i % 256:02x}"
            t0, t1 = bed.add_pod(a, mac)
            if not watch.wait_for(lambda w: mac in w.macs, 10.0):
                missing.append(mac)
                continue
            seen = watch.macs[mac][1]
            after_return.append(seen - t1)   # negative: B had it before A's ADD returned
            after_start.append(seen - t0)
            add_time.append(t1 - t0)
            time.sleep(gap)
        early = sum(1 for v in after_return if v < 0)
        return {"setup": setup, "pods": pods, "mesh_ready_s": round(mesh, 2), "loadavg_after": loadavg(),
                "add_return_to_fdb": summary(after_return),
                "add_return_to_fdb_clamped": summary([max(0.0, v) for v in after_return]),
                "add_start_to_fdb": summary(after_start),
                "add_duration": summary(add_time),
                "fdb_before_add_returned": early, "missing": missing,
                "netlink_overflows": watch.overflows}


# -- scale --------------------------------------------------------------------------------------------

def inject_macs(bed: Testbed, per_node: list[int]) -> list[list[str]]:
    """Each node's first pod sends one frame per new source MAC; returns the MACs per node."""
    senders, frames, macs = [], [], []
    for i, node in enumerate(bed.nodes):
        pod = bed.pods[node.name][0]
        bridge = json.loads(node.run("ip", "-j", "link", "show", "dev",
                                     naming.bridge_name(VNI)).stdout)[0]["address"]
        dst = bytes.fromhex(bridge.replace(":", ""))
        these = [f"02:{i + 0x10:02x}:{(k >> 16) & 0xff:02x}:{(k >> 8) & 0xff:02x}:{k & 0xff:02x}:01"
                 for k in range(per_node[i])]
        macs.append(these)
        senders.append(frame_sender(pod.netns, "net0"))
        frames.append([dst + bytes.fromhex(m.replace(":", "")) + b"\x88\xb5" + bytes(46) for m in these])
    # Interleave the nodes so they start together.
    for k in range(max(per_node)):
        for sender, node_frames in zip(senders, frames):
            if k < len(node_frames):
                sender.send(node_frames[k])
    for sender in senders:
        sender.close()
    return macs


def flush_macs(bed: Testbed) -> None:
    """Forget the learned MACs on every first pod's port (as when those hosts go silent)."""
    for node in bed.nodes:
        pod = bed.pods[node.name][0]
        port = naming.port_name(f"c-{pod.netns}", "net0")
        node.run("bridge", "fdb", "flush", "dev", port, "master", "dynamic")


def python_pids(netns: str) -> dict[str, int]:
    """{module: pid} of the Python processes run with -m (agent, BGP process, reflector)."""
    return {words[words.index("-m") + 1]: pid
            for pid, words in command_lines(netns).items() if "-m" in words}


PROFILE_RATE = 200  # samples per second


@dataclass
class Spy:
    """One py-spy recording of one process, and its CPU count when the recording started."""

    proc: subprocess.Popen
    raw: Path
    pid: int
    cpu_before: float


def start_profiles(bed: Testbed, directory: Path, phase: str, seconds: float) -> list[Spy]:
    """py-spy (sampling, non-blocking) on the reflector's and the first node's Python processes."""
    directory.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    spies = []
    for node in (bed.rr, bed.nodes[0]):
        for module, pid in python_pids(node.netns).items():
            raw = directory / f"{bed.setup}-{node.name}-{module}-{phase}.txt"
            proc = subprocess.Popen(
                [str(spy), "record", "--nonblocking", "-r", str(PROFILE_RATE), "-d", str(int(seconds)),
                 "-f", "raw", "-o", str(raw), "-p", str(pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            spies.append(Spy(proc, raw, pid, cpu_seconds(pid)))
    time.sleep(1.0)  # py-spy attaches
    return spies


def stop_profiles(spies: list[Spy]) -> dict[str, float]:
    """Stop the recordings; write each one's flame graph and text summary (the kernel's CPU
    seconds over the recording shared out by samples). Returns {recording: CPU seconds}."""
    cpu = {}
    for spy in spies:
        spent = cpu_seconds(spy.pid) - spy.cpu_before
        spy.proc.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
        spy.proc.wait(30)
        if spy.raw.exists():
            flame.write_reports(spy.raw, spy.raw.stem, round(spent, 2), PROFILE_RATE)
            cpu[spy.raw.stem] = round(spent, 2)
    return cpu


def scale(setup: str, runtime: Runtime, total: int, n_nodes: int, timeout: float,
          withdraw: bool, profile: Path | None = None, keep_logs: Path | None = None) -> dict:
    with Testbed(setup, n_nodes, runtime, keep_logs=keep_logs) as bed:
        bed.first_pods()
        mesh = bed.wait_mesh()
        time.sleep(1.0)  # let start-up work settle before the baseline
        baseline = bed.memory()
        load_before = loadavg()
        per_node = [total // n_nodes + (1 if i < total % n_nodes else 0) for i in range(n_nodes)]
        spies = start_profiles(bed, profile, "install", timeout) if profile else []
        cpu_before = bed.cpu()
        t0 = time.monotonic()
        macs = inject_macs(bed, per_node)
        injected = time.monotonic() - t0
        done: dict[str, float | None] = {}
        partial: dict[str, str] = {}               # node -> "installed/expected" at the timeout
        for i, node in enumerate(bed.nodes):
            want = {m for j, ms in enumerate(macs) if j != i for m in ms}
            watch = bed.watches[node.name]
            left = max(0.1, timeout - (time.monotonic() - t0))
            if watch.wait_for(lambda w: want <= w.macs.keys(), left):
                done[node.name] = round(max(watch.macs[m][1] for m in want) - t0, 3)
            else:
                have = len(want & watch.macs.keys())
                done[node.name] = None
                partial[node.name] = f"{have}/{len(want)}"
                print(f"  {setup}: {node.name} has {have}/{len(want)} after {timeout} s", file=sys.stderr)
        complete = all(v is not None for v in done.values())
        result = {"setup": setup, "macs": total, "nodes": n_nodes, "mesh_ready_s": round(mesh, 2),
                  "loadavg_before": load_before,
                  "inject_s": round(injected, 3),
                  "all_installed_s": max(done.values()) if complete else None,
                  "per_node_s": done, "incomplete_at_timeout": partial, "timeout_s": timeout,
                  "memory_before_mib": baseline}
        time.sleep(0.5)
        result["memory_after_mib"] = bed.memory()
        cpu_installed = bed.cpu()
        result["cpu_install_s"] = cpu_spent(cpu_before, cpu_installed)
        if spies:
            result["profiled_cpu_s"] = stop_profiles(spies)
            spies = start_profiles(bed, profile, "withdraw", timeout)
            cpu_installed = bed.cpu()
        if withdraw and complete:
            t1 = time.monotonic()
            flush_macs(bed)
            gone, left_over = {}, {}
            for i, node in enumerate(bed.nodes):
                want = {m for j, ms in enumerate(macs) if j != i for m in ms}
                watch = bed.watches[node.name]
                left = max(0.1, timeout - (time.monotonic() - t1))
                if watch.wait_for(lambda w: not (want & w.macs.keys()), left):
                    gone[node.name] = round(max(watch.gone.get(m, t1) for m in want) - t1, 3)
                else:
                    gone[node.name] = None
                    left_over[node.name] = f"{len(want & watch.macs.keys())}/{len(want)}"
                    print(f"  {setup}: {node.name} still has {len(want & watch.macs.keys())} "
                          f"withdrawn MACs after {timeout} s", file=sys.stderr)
            result["withdraw_per_node_s"] = gone
            result["withdraw_left_at_timeout"] = left_over
            finished = all(v is not None for v in gone.values())
            result["all_withdrawn_s"] = max(gone.values()) if finished else None
            time.sleep(0.5)
            result["cpu_withdraw_s"] = cpu_spent(cpu_installed, bed.cpu())
        result["netlink_overflows"] = sum(w.overflows for w in bed.watches.values())
        if spies:
            result["profiled_cpu_s"].update(stop_profiles(spies))
        return result


# -- the command line ---------------------------------------------------------------------------------

def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    frr_version = next((line.strip() for line in sh(str(frr_lab.FRR_BIN / "bgpd"), "--version",
                                                     check=False).stdout.splitlines()
                        if line.strip()), None) if frr_lab.available() else None
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu,
            "loadavg_at_start": loadavg(),
            "python": platform.python_version(), "frr": frr_version,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def git_head() -> str:
    """The commit the measured code is at, '+dirty' when the work tree differs."""
    repo = Path(__file__).resolve().parent.parent
    head = sh("git", "-C", str(repo), "rev-parse", "--short", "HEAD", check=False).stdout.strip()
    dirty = sh("git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "speaker",
               "reflector", "cni", check=False).stdout.strip()
    return f"{head}+dirty" if head and dirty else head or "unknown"


def loadavg() -> list[float]:
    """The machine is shared: other work running meanwhile shows here."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def print_table(title: str, rows: list[tuple], headers: tuple) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in (headers, *rows):
        print("  " + "  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.evpn", description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", choices=("convergence", "scale", "all"), default="all")
    p.add_argument("--setups", default=",".join(SETUPS),
                   help="comma-separated among %s (default: all)" % ", ".join(SETUPS))
    p.add_argument("--pods", type=int, default=100, help="convergence: pods added on node A")
    p.add_argument("--gap", type=float, default=0.05, help="convergence: pause between pods (s)")
    p.add_argument("--macs", type=int, default=10000, help="scale: MACs in total")
    p.add_argument("--nodes", type=int, default=3, help="scale: nodes injecting MACs")
    p.add_argument("--timeout", type=float, default=180.0, help="scale: give up after (s)")
    p.add_argument("--no-withdraw", action="store_true", help="scale: skip the withdrawal phase")
    p.add_argument("--repeat", type=int, default=1,
                   help="scale: rounds, the set-ups interleaved in each; medians reported")
    p.add_argument("--profile", default="", metavar="DIR",
                   help="scale: record py-spy profiles of the reflector and node n1 into DIR")
    p.add_argument("--note", default="", help="a note stored with the results (what code ran)")
    p.add_argument("--keep-logs", default="", metavar="DIR",
                   help="copy the agents', reflectors' and FRR logs into DIR before tearing down")
    p.add_argument("--out", default="", help="results file (default bench/results/evpn-<what>-<time>.json)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.evpn needs root (network namespaces)", file=sys.stderr)
        return 2
    setups = [s for s in args.setups.split(",") if s]
    if any(s not in SETUPS for s in setups):
        p.error(f"unknown set-up in {args.setups!r}")
    if not frr_lab.available():
        print("FRR is not installed: running only 'ours'", file=sys.stderr)
        setups = [s for s in setups if s == "ours"]
    keep_logs = Path(args.keep_logs) if args.keep_logs else None
    report = {"machine": machine(), "command": " ".join(["python -m bench.evpn",
                                                   *(sys.argv[1:] if argv is None else argv)]),
              "note": args.note, "git": git_head()}
    with tempfile.TemporaryDirectory(prefix="mgb-cni-") as bin_dir:
        runtime = Runtime(Path(bin_dir))
        if args.what in ("convergence", "all"):
            report["convergence"] = []
            for setup in setups:
                print(f"convergence: {setup} ...", flush=True)
                report["convergence"].append(convergence(setup, runtime, args.pods, args.gap, keep_logs))
            print_table(f"Convergence: ADD returns on node A -> `self dst` entry on node B "
                        f"({args.pods} pods; ms; negative = B had it before A's ADD returned)",
                        [(r["setup"], r["add_return_to_fdb"]["p50_ms"], r["add_return_to_fdb"]["p99_ms"],
                          r["add_return_to_fdb_clamped"]["p50_ms"], r["add_return_to_fdb_clamped"]["p99_ms"],
                          r["add_start_to_fdb"]["p50_ms"], r["add_start_to_fdb"]["p99_ms"],
                          r["add_duration"]["p50_ms"], r["fdb_before_add_returned"], len(r["missing"]))
                         for r in report["convergence"]],
                        ("set-up", "p50", "p99", "p50 (>=0)", "p99 (>=0)", "from ADD start p50", "p99",
                         "ADD p50", "before return", "missing"))
        if args.what in ("scale", "all"):
            report["scale"] = []
            for round_ in range(1, args.repeat + 1):
                for setup in setups:
                    print(f"scale: {setup} (round {round_}/{args.repeat}) ...", flush=True)
                    profile = Path(args.profile) if args.profile else None
                    if profile and args.repeat > 1:
                        profile /= f"round{round_}"
                    result = scale(setup, runtime, args.macs, args.nodes, args.timeout,
                                   not args.no_withdraw, profile, keep_logs)
                    report["scale"].append({"round": round_, **result})
            rows = []
            for r in report["scale"]:
                mem, cpu = r["memory_after_mib"], r["cpu_install_s"]
                rows.append((r["setup"], r["round"], r["all_installed_s"], r.get("all_withdrawn_s"),
                             round(sum(mem["reflector"].values()), 1),
                             round(max(sum(m.values()) for m in mem["nodes"].values()), 1),
                             round(sum(cpu["reflector"].values()), 1),
                             round(max(sum(c.values()) for c in cpu["nodes"].values()), 1), cpu["total"]))
            print_table(f"Scale: {args.macs} MACs from {args.nodes} nodes through the reflector",
                        rows, ("set-up", "round", "installed s", "withdrawn s", "reflector MiB",
                               "node MiB (max)", "reflector CPU s", "node CPU s (max)", "all CPU s"))
            report["scale_medians"] = scale_medians(report["scale"])
            if args.repeat > 1:
                print_table("Medians over the rounds",
                            [(setup, m["installed_s"], m["withdrawn_s"], m["all_cpu_s"])
                             for setup, m in report["scale_medians"].items()],
                            ("set-up", "installed s", "withdrawn s", "all CPU s"))
            medians = report["scale_medians"]
            if medians.get("ours", {}).get("installed_s") and medians.get("frr-rr", {}).get("installed_s"):
                report["scale_ratio_ours_over_frr_rr"] = round(
                    medians["ours"]["installed_s"] / medians["frr-rr"]["installed_s"], 2)
                print(f"  ours / frr-rr installation time (medians): "
                      f"{report['scale_ratio_ours_over_frr_rr']}")
    write_results(report, args.out, f"evpn-{args.what}")
    return 0


def write_results(report: dict, out: str, name: str) -> Path:
    """The report as JSON in `out`, or bench/results/<name>-<time>.json; says where."""
    RESULTS.mkdir(exist_ok=True)
    path = Path(out) if out else RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nresults: {path}")
    return path


if __name__ == "__main__":
    sys.exit(main())
