"""What a flood costs the daemons, as bench.spoof and bench.rogue_peer measure it: each daemon's
processes sampled in their namespaces (RSS every second: peak and timeline; CPU over the run),
and a ping flow on another lab's LAN that must keep working meanwhile.

`daemons` maps a name ("reflector", "n1", ...) to the lab.cluster.Node it runs in.
"""
from __future__ import annotations

import subprocess
import time

from bench.evpn import measure_in, rss_mib

PING_INTERVAL = 0.05  # 20 pings a second for the whole run


def sample(daemons: dict, measure) -> dict:
    """{daemon: {process label: value}} of `measure` (bench.evpn.rss_mib, cpu_seconds)."""
    return {where: measure_in(node.netns, measure) for where, node in daemons.items()}


def cpu_used(before: dict, after: dict) -> dict:
    """CPU seconds each process used between two `sample(daemons, cpu_seconds)`."""
    return {w: {k: round(v - before.get(w, {}).get(k, 0.0), 1) for k, v in p.items()}
            for w, p in after.items()}


def watch_memory(daemons: dict, t0: float, seconds: float, state) -> tuple[dict, list]:
    """Sample RSS every second until `seconds` after `t0`: (peak per process, timeline with the
    MACs the reflector holds, read through `state`, a reflector.protocol.StateClient)."""
    peak: dict = {}
    timeline = []
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        now = sample(daemons, rss_mib)
        for where, procs in now.items():
            for label, mib in procs.items():
                peak.setdefault(where, {})[label] = max(mib, peak.get(where, {}).get(label, 0.0))
        timeline.append({"t": round(time.monotonic() - t0, 1), "reflector_macs": state.call("totals")["macs"],
                         "mib": {w: round(sum(p.values()), 1) for w, p in now.items()}})
    return peak, timeline


def start_ping(netns: str, address: str, seconds: float) -> subprocess.Popen:
    """A ping flow from a pod (its netns) for about `seconds` (+10)."""
    count = int((seconds + 10) / PING_INTERVAL)
    return subprocess.Popen(["ip", "netns", "exec", netns, "ping", "-n", "-q", "-i",
                             str(PING_INTERVAL), "-c", str(count), "-W", "1", address],
                            stdout=subprocess.PIPE, text=True)


def ping_result(flow: subprocess.Popen, seconds: float) -> dict:
    """What the flow of `start_ping` got: transmitted, received, loss, rtt."""
    out, _ = flow.communicate(timeout=seconds + 60)
    summary = next(line for line in out.splitlines() if "packets transmitted" in line)
    transmitted, received = (int(summary.split()[i]) for i in (0, 3))
    rtt = next((line.split("=")[1].split("/") for line in out.splitlines() if line.startswith("rtt")), None)
    return {"transmitted": transmitted, "received": received,
            "loss_pct": round(100 * (1 - received / transmitted), 2) if transmitted else None,
            "rtt_min_avg_max_ms": rtt[:3] if rtt else None}
