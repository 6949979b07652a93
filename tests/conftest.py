"""Shared fixtures: an emulated cluster per test, a node with a bare datapath, a CNI bin dir with
the installed shim, and a fake agent socket for the shim's tests."""
from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass

import pytest

from cni import naming, netns
from cni.datapath import Datapath
from lab.cluster import Cluster, Node, Pod
from lab.runtime import Runtime, shim_kinds

ALL_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
ANSWER_OK = b'0\n{"cniVersion": "0.3.0", "interfaces": []}'  # exit code, newline, the plugin's stdout
# Modules whose tests run through both shims (C and Python, identical behaviour expected);
# every other test that takes `runtime` runs through the C shim only, what the DaemonSet installs.
BOTH_SHIMS = {"test_cni_verbs", "test_cni_bad_input"}


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    if "shim_kind" in metafunc.fixturenames:  # the test uses the `runtime` fixture
        kinds = shim_kinds()  # ('c', 'python'), or ('python',) without a C compiler
        if metafunc.module.__name__.rsplit(".", 1)[-1] not in BOTH_SHIMS:
            kinds = kinds[:1]
        metafunc.parametrize("shim_kind", kinds, scope="session")


@pytest.fixture(scope="session")
def runtime(tmp_path_factory, shim_kind) -> Runtime:
    """A CNI bin dir holding `megalos` as the DaemonSet installs it, of the given shim kind."""
    return Runtime(tmp_path_factory.mktemp(f"cni-bin-{shim_kind}"), shim=shim_kind)


@pytest.fixture
def cluster():
    with Cluster() as c:
        yield c


@pytest.fixture
def node(cluster):
    """One emulated node running megalos-agent (no control plane)."""
    n = cluster.add_node("n1")
    n.start_agent()
    return n


@dataclass
class BareNode:
    """One emulated node with no agent, and a cni.datapath.Datapath made in its namespace, for
    tests that drive the netlink parts themselves. Deletions open a socket of their own in the
    calling thread's namespace: delete with `ip`."""

    node: Node
    netns_path: str
    datapath: Datapath

    def attach(self, lan, pod: Pod, mac: str) -> str:
        """Attach `pod` (eth0, MAC `mac`) to the LAN as ADD does; the host port's name."""
        port = naming.port_name(pod.name, "eth0")
        with netns.opened(pod.netns_path) as fd:
            self.datapath.add_port(lan, port, fd, "eth0", mac, "mgtest")
        return port


@pytest.fixture
def bare_node(cluster):
    n = cluster.add_node("n1")
    path = f"/var/run/netns/{n.netns}"
    datapath = netns.made_in(path, lambda: Datapath(vtep_ip=n.ip))
    try:
        yield BareNode(n, path, datapath)
    finally:
        datapath.close()


class FakeAgent:
    """A stand-in for megalos-agent's socket: records each request's raw bytes and answers
    `reply(request)` (bytes in the agent's wire format; None: never answers).

    close() wakes the accept loop (shutdown) and waits for it before it releases the socket's
    descriptor. Closing first let a loop that was just entering accept() do so on the number
    the next test's socket then reused, and answer that test's shim: a shim got another fake's
    answer, once in a few full runs."""

    def __init__(self, path: str, reply=lambda request: ANSWER_OK, backlog: int = 64,
                 serve: bool = True):
        self.path = path
        self.reply = reply
        self.requests: list[bytes] = []
        self.release = threading.Event()  # lets a connection that never answers finish
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(backlog)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        if serve:
            self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
            request = b"".join(chunks)
            self.requests.append(request)
            answer = self.reply(request)
            if answer is None:
                self.release.wait(10)
                return
            try:
                conn.sendall(answer)
            except BrokenPipeError:  # the shim gave up waiting (a timeout test)
                pass

    @property
    def last(self) -> tuple[dict, bytes]:
        """(env, stdin) of the last request, decoded by the agent's own decoder."""
        from cni.server import decode_request
        return decode_request(self.requests[-1])

    def close(self):
        self.release.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # a blocked accept() returns EINVAL
        except OSError:
            pass
        if self.thread.is_alive():
            self.thread.join(10)
        self.sock.close()


def until_eof(sock: socket.socket) -> bytes:
    """What the server sent until it hung up (having left bytes of ours unread, its end
    reads as a reset once its reply has been read)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
