"""FRR (zebra + bgpd) inside an emulated node's namespace: the original Megalos control plane.

The original Megalos ran FRR everywhere: workers with `advertise-all-vni` peering with a route
reflector (iBGP AS 65000, timers 3/9, L2VPN EVPN only, cluster-id 10.0.0.1, any peer accepted).
This module builds those configurations and runs the daemons in a node of `lab.cluster`, so
tests and benchmarks can put a real FRR peer on either side of our speakers and reflector::

    rr = cluster.add_node("rr")
    frr = Frr.reflector(rr)                  # listen range: any peer accepted
    node.start_agent("--reflector", rr.ip)   # our speaker behind it

    worker = Frr.worker(n1, reflector=rr.ip) # FRR worker; pods via our agent without --reflector
    n1.start_agent()

On a worker, zebra learns each VNI from a VXLAN device enslaved to a bridge (any name: it reads
the kind, VNI and local address), so `megalos-agent` started *without* `--reflector` provides
the very datapath our speakers use (mgvx<VNI>/mgbr<VNI>, pod veths) and zebra does the rest:
it advertises the MACs the bridge holds on pod ports and installs remote ones (`self dst` on the
VTEP plus `master extern_learn` on the bridge) and the flood list.

Every node gets a private run directory (config, pid files, zserv and vty sockets, log) owned
by the `frr` user, outside the cluster's run dir (which `Cluster.destroy` empties file by file),
named with the cluster prefix and removed by `stop()`.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from lab.cluster import RUN_DIR, Node, sh

FRR_BIN = Path("/usr/lib/frr")
ASN = 65000
CLUSTER_ID = "10.0.0.1"          # the original route reflector's cluster id
KEEPALIVE, HOLD_TIME = 3, 9       # the original timers
PEER_GROUP = "megalos"


def available() -> bool:
    """True when zebra, bgpd and vtysh are installed (Debian package `frr`)."""
    return all(os.access(p, os.X_OK) for p in (FRR_BIN / "zebra", FRR_BIN / "bgpd")) \
        and shutil.which("vtysh") is not None


# -- configurations (pure text) ---------------------------------------------------------------

def worker_config(router_id: str, reflectors: list[str], asn: int = ASN,
                  connect_retry: int | None = None) -> str:
    """A worker as the original ran it: router-id = node IP, the reflector(s), advertise-all-vni.

    `connect_retry` (seconds) is not in the original; FRR's default is 120 s, which matters when
    the reflector only listens (see design.md, "FRR interop facts").
    """
    lines = ["frr defaults traditional", f"hostname worker-{router_id}", "!",
             f"router bgp {asn}", f" bgp router-id {router_id}", " no bgp default ipv4-unicast"]
    for rr in reflectors:
        lines += [f" neighbor {rr} remote-as {asn}", f" neighbor {rr} timers {KEEPALIVE} {HOLD_TIME}"]
        if connect_retry is not None:
            lines.append(f" neighbor {rr} timers connect {connect_retry}")
    lines += [" !", " address-family l2vpn evpn"]
    lines += [f"  neighbor {rr} activate" for rr in reflectors]
    lines += ["  advertise-all-vni", " exit-address-family", "exit", "!", ""]
    return "\n".join(lines)


def reflector_config(router_id: str, peers: list[str] = (), listen_range: str | None = "0.0.0.0/0",
                     asn: int = ASN, cluster_id: str = CLUSTER_ID) -> str:
    """The original route reflector: every peer a route-reflector client, L2VPN EVPN only.

    `listen_range` accepts any peer (the original used one; FRR stays passive towards them);
    `peers` are configured explicitly as well, so the reflector also dials out.
    """
    lines = ["frr defaults traditional", f"hostname rr-{router_id}", "!",
             f"router bgp {asn}", f" bgp router-id {router_id}", f" bgp cluster-id {cluster_id}",
             " no bgp default ipv4-unicast",
             f" neighbor {PEER_GROUP} peer-group", f" neighbor {PEER_GROUP} remote-as {asn}",
             f" neighbor {PEER_GROUP} timers {KEEPALIVE} {HOLD_TIME}"]
    if listen_range:
        lines.append(f" bgp listen range {listen_range} peer-group {PEER_GROUP}")
    lines += [f" neighbor {peer} peer-group {PEER_GROUP}" for peer in peers]
    lines += [" !", " address-family l2vpn evpn", f"  neighbor {PEER_GROUP} activate",
              f"  neighbor {PEER_GROUP} route-reflector-client", " exit-address-family", "exit",
              "!", ""]
    return "\n".join(lines)


# -- the daemons -------------------------------------------------------------------------------

class Frr:
    """zebra and bgpd running in `node`'s namespace with a private run directory."""

    DAEMONS = ("zebra", "bgpd")

    def __init__(self, node: Node, bgpd_config: str, log_level: str = "informational"):
        self.node = node
        self.bgpd_config = bgpd_config
        self.log_level = log_level
        self.dir = RUN_DIR / f"{node.cluster.prefix}-frr-{node.name}"
        self.procs: dict[str, subprocess.Popen] = {}

    # constructors in the two roles of the original
    @classmethod
    def worker(cls, node: Node, reflector: str | list[str], start: bool = True, **kw) -> "Frr":
        reflectors = [reflector] if isinstance(reflector, str) else list(reflector)
        frr = cls(node, worker_config(node.ip, reflectors, **kw))
        return frr.start() if start else frr

    @classmethod
    def reflector(cls, node: Node, peers: list[str] = (), start: bool = True, **kw) -> "Frr":
        frr = cls(node, reflector_config(node.ip, list(peers), **kw))
        return frr.start() if start else frr

    @property
    def zserv(self) -> Path:
        return self.dir / "zserv.api"

    @property
    def log_path(self) -> Path:
        return self.dir / "frr.log"

    def start(self, wait: float = 10.0) -> "Frr":
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        frr = pwd.getpwnam("frr")
        os.chown(self.dir, frr.pw_uid, frr.pw_gid)
        configs = {"zebra": f"hostname {self.node.name}\n", "bgpd": self.bgpd_config}
        for daemon in self.DAEMONS:
            path = self.dir / f"{daemon}.conf"
            path.write_text(configs[daemon])
            os.chown(path, frr.pw_uid, frr.pw_gid)
        try:
            self._spawn("zebra", wait, ready=self.zserv)
            self._spawn("bgpd", wait, ready=self.dir / "bgpd.vty")
        except Exception:
            self.stop()
            raise
        return self

    def _spawn(self, daemon: str, wait: float, ready: Path) -> None:
        argv = ["ip", "netns", "exec", self.node.netns, str(FRR_BIN / daemon),
                "-u", "frr", "-g", "frr", "--vty_socket", str(self.dir), "-z", str(self.zserv),
                "-f", str(self.dir / f"{daemon}.conf"), "-i", str(self.dir / f"{daemon}.pid"),
                "-P", "0", "--log", f"file:{self.log_path}", "--log-level", self.log_level]
        out = open(self.dir / f"{daemon}.out", "ab")
        # `ip netns exec` execs the daemon: the Popen pid is the daemon's pid.
        self.procs[daemon] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True)
        out.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.procs[daemon].poll() is not None:
                raise RuntimeError(f"{daemon} on {self.node.name} exited: {self.tail()}")
            if ready.exists():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{daemon} on {self.node.name} not ready within {wait} s: {self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        text = ""
        for path in [self.log_path, *(self.dir / f"{d}.out" for d in self.DAEMONS)]:
            if path.exists():
                text += f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"
        return text

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items() if proc.poll() is None}

    def stop(self, timeout: float = 5.0) -> None:
        for daemon in reversed(self.DAEMONS):
            proc = self.procs.pop(daemon, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- looking inside --------------------------------------------------------------------
    def vtysh(self, *commands: str, check: bool = True) -> str:
        argv = ["vtysh", "--vty_socket", str(self.dir)]
        for command in commands:
            argv += ["-c", command]
        return sh(*argv, check=check, netns=self.node.netns).stdout

    def show(self, command: str):
        """A `show ... json` command, parsed."""
        out = self.vtysh(f"{command} json")
        return json.loads(out) if out.strip() else {}

    def established(self) -> set[str]:
        """Addresses of the BGP neighbours in state Established."""
        neighbors = self.show("show bgp neighbors")
        return {addr for addr, info in neighbors.items()
                if isinstance(info, dict) and info.get("bgpState") == "Established"}

    def wait_established(self, count: int, timeout: float = 30.0) -> set[str]:
        deadline = time.monotonic() + timeout
        while True:
            up = self.established()
            if len(up) >= count:
                return up
            if time.monotonic() > deadline:
                raise TimeoutError(f"FRR on {self.node.name}: {len(up)}/{count} sessions up "
                                   f"({sorted(up)})\n{self.tail()}")
            time.sleep(0.2)

    def vnis(self) -> dict:
        """zebra's view of the VNIs (`show evpn vni detail`): {vni: detail}."""
        out = self.vtysh("show evpn vni detail json")
        data = json.loads(out) if out.strip() else {}
        if isinstance(data, list):  # one VNI: some versions print a list
            return {int(d["vni"]): d for d in data}
        if "vni" in data:
            return {int(data["vni"]): data}
        return {int(k): v for k, v in data.items()}

    def evpn_macs(self, vni: int) -> dict:
        """zebra's MAC table of a VNI: {mac: {"type": "local"|"remote", ...}}."""
        data = self.show(f"show evpn mac vni {vni}")
        return data.get("macs", {}) if isinstance(data, dict) else {}
