"""An emulated cluster on one machine: network namespaces as nodes and pods.

Used by the tests, the demo and the benchmarks. Every namespace carries the cluster's unique
prefix, and `Cluster.destroy()` (or `sweep(prefix)`) removes all of them, so runs sharing this
machine never collide. Nothing is created in the root namespace but the namespaces themselves:
the underlay is a bridge inside its own namespace, each node is joined to it by a veth.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from base.processes import stop_process_group

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = Path("/run/megalos-lab")
NETNS_DIR = Path("/var/run/netns")


def sh(*argv: str, check: bool = True, netns: str = "") -> subprocess.CompletedProcess:
    """Run a command (argv list: never a shell string), optionally inside a namespace."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    return subprocess.run(full, check=check, capture_output=True, text=True)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1):
    """Poll `predicate` until it returns something true, or `timeout` passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_until(predicate, timeout: float = 8.0, what: str = "condition", interval: float = 0.02):
    """wait_for that fails the test (AssertionError naming `what`) if `predicate` never holds."""
    value = wait_for(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"timed out waiting for {what}")
    return value


def unique_prefix(tag: str = "mgt") -> str:
    """A short prefix unique on this machine: namespace names stay readable and collision-free."""
    return f"{tag}{uuid.uuid4().hex[:6]}"


def sweep(prefix: str) -> None:
    """Kill processes started in, and delete every namespace named with, `prefix`."""
    names = [n.split()[0] for n in sh("ip", "netns", "list").stdout.splitlines() if n.strip()]
    for name in names:
        if name.startswith(prefix + "-"):
            pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", name, check=False)


_FETCH = ("import sys, urllib.request; "
          "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")


@dataclass
class Pod:
    name: str
    netns: str
    node: "Node"

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.netns)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(*argv, check=check, netns=self.netns)

    def set_ip(self, ifname: str, cidr: str) -> None:
        self.run("ip", "addr", "add", cidr, "dev", ifname)

    def ping(self, address: str, count: int = 1, size: int = 56, timeout: float = 2,
             dont_fragment: bool = False) -> bool:
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", str(timeout), "-s", str(size)]
        if dont_fragment:
            argv += ["-M", "do"]
        return self.run(*argv, address, check=False).returncode == 0

    def link(self, ifname: str) -> dict:
        out = self.run("ip", "-j", "-d", "link", "show", "dev", ifname).stdout
        return json.loads(out)[0]


@dataclass
class Node:
    name: str
    netns: str
    ip: str
    cluster: "Cluster"
    socket: str = ""
    agent: subprocess.Popen | None = None
    log_path: Path | None = None
    pods: dict = field(default_factory=dict)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(*argv, check=check, netns=self.netns)

    def add_pod(self, name: str) -> Pod:
        pod = Pod(name, f"{self.cluster.prefix}-{self.name}-{name}", self)
        sh("ip", "netns", "add", pod.netns)
        sh("ip", "link", "set", "lo", "up", netns=pod.netns)
        self.pods[name] = pod
        return pod

    def start_agent(self, *extra: str, wait: float = 15.0) -> None:
        """Run `megalos-agent` inside this node's namespace and wait until it serves CNI."""
        self.socket = str(self.cluster.run_dir / f"{self.name}.sock")
        self._spawn("speaker.agent", ["--vtep-ip", self.ip, "--socket", self.socket, *extra],
                    self.socket, wait)

    def start_reflector(self, *extra: str, wait: float = 15.0) -> None:
        """Run `megalos-reflector` inside this node's namespace (a control-plane node)."""
        self.socket = str(self.cluster.run_dir / f"{self.name}-state.sock")
        self._spawn("reflector.main", ["--router-id", self.ip, "--state-socket", self.socket, *extra],
                    self.socket, wait)

    def _spawn(self, module: str, args: list[str], ready_path: str, wait: float) -> None:
        self.log_path = self.cluster.run_dir / f"{self.name}-{module.split('.')[0]}.log"
        log = open(self.log_path, "ab")
        self.agent = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", module, *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise RuntimeError(f"{module} on {self.name} exited: {self.log_path.read_text()[-3000:]}")
            if os.path.exists(ready_path):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{module} on {self.name} did not open {ready_path} within {wait} s")

    def stop_agent(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.agent is None:
            return
        stop_process_group(self.agent, sig, timeout)
        self.agent = None

    def scrape(self, port: int, path: str = "/metrics") -> str:
        """What Prometheus would read from a daemon of this node listening on 127.0.0.1:`port`
        (fetched from inside the node's namespace)."""
        return self.run(sys.executable, "-c", _FETCH, f"http://127.0.0.1:{port}{path}").stdout

    def links(self) -> list[dict]:
        return json.loads(self.run("ip", "-j", "-d", "link", "show").stdout)

    def link_names(self) -> set[str]:
        return {link["ifname"] for link in self.links()}

    def fdb(self, dev: str = "") -> list[dict]:
        argv = ["bridge", "-j", "fdb", "show"] + (["dev", dev] if dev else [])
        return json.loads(self.run(*argv).stdout or "[]")


class Cluster:
    """Namespaces `<prefix>-ul` (the underlay switch) and `<prefix>-<node>` per node."""

    def __init__(self, prefix: str | None = None, ipv6: bool = False, underlay_mtu: int = 1500):
        self.prefix = prefix or unique_prefix()
        self.ipv6 = ipv6
        self.underlay_mtu = underlay_mtu
        self.nodes: dict[str, Node] = {}
        self.run_dir = RUN_DIR / self.prefix
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.underlay = f"{self.prefix}-ul"
        sh("ip", "netns", "add", self.underlay)
        sh("ip", "link", "add", "sw", "type", "bridge", netns=self.underlay)
        sh("ip", "link", "set", "sw", "up", netns=self.underlay)

    def address(self, n: int) -> str:
        return f"fd00:6d67::{n}" if self.ipv6 else f"192.0.2.{n}"

    def add_node(self, name: str) -> Node:
        n = len(self.nodes) + 1
        node = Node(name, f"{self.prefix}-{name}", self.address(n), self)
        sh("ip", "netns", "add", node.netns)
        port = f"p{n}"
        sh("ip", "link", "add", port, "mtu", str(self.underlay_mtu), "type", "veth", "peer", "name",
           "eth0", "mtu", str(self.underlay_mtu), "netns", node.netns, netns=self.underlay)
        sh("ip", "link", "set", port, "master", "sw", "up", netns=self.underlay)
        plen = "64" if self.ipv6 else "24"
        node.run("ip", "addr", "add", f"{node.ip}/{plen}", "dev", "eth0", *(["nodad"] if self.ipv6 else []))
        node.run("ip", "link", "set", "eth0", "up")
        node.run("ip", "link", "set", "lo", "up")
        self.nodes[name] = node
        return node

    def destroy(self) -> None:
        for node in self.nodes.values():
            try:
                node.stop_agent()
            except Exception:
                pass
        sweep(self.prefix)
        for path in self.run_dir.glob("*"):
            path.unlink(missing_ok=True)
        try:
            self.run_dir.rmdir()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()
