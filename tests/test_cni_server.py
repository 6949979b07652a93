"""The agent's CNI socket under clients that do not play along: one that never sends, a burst
larger than the worker bound, a verb that outlives its deadline. The socket server is the real
one (cni/server.py) behind a stand-in plugin; the shims are exec'd as a runtime does."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from cni import install_shim, shim
from cni.plugin import Plugin
from cni.server import CniServer
from lab.runtime import shim_kinds
from tests.conftest import until_eof

CONF = json.dumps({"cniVersion": "1.1.0", "name": "lan_a", "type": "megalos", "vxlanId": 100})
ENV = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "net0"}


@pytest.fixture
def sockdir():
    path = tempfile.mkdtemp(prefix="mgsrv", dir="/tmp")  # short: AF_UNIX paths stop at 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Gate:
    """A stand-in for Plugin.handle that holds each request until `open()`: counts how many are
    inside at once."""

    def __init__(self, hold: float = 30):
        self.hold = hold
        self.opened = threading.Event()
        self.lock = threading.Lock()
        self.inside = self.most = self.done = 0

    def __call__(self, env, stdin, deadline):
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        self.opened.wait(self.hold)
        with self.lock:
            self.inside -= 1
            self.done += 1
        return 0, ""

    def open(self):
        self.opened.set()


@pytest.fixture
def serve(sockdir):
    servers = []

    def start(handle_cni, **options) -> CniServer:
        server = CniServer(os.path.join(sockdir, f"agent{len(servers)}.sock"), handle_cni, **options)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(path)
    return sock


def request(path: str, env: dict = ENV, stdin: str = CONF) -> tuple[int, dict | None]:
    with connect(path) as sock:
        sock.sendall(shim.encode_request({k.encode(): v.encode() for k, v in env.items()}, stdin.encode()))
        sock.shutdown(socket.SHUT_WR)
        code, out = shim.decode_reply(b"".join(iter(lambda: sock.recv(65536), b"")))
    return code, json.loads(out) if out else None


def test_a_client_that_never_sends_is_cut_off(serve):
    """A connection that sends nothing (or trickles) gets code 5 after the read timeout and
    frees its worker: with one worker, a real request is served right after."""
    server = serve(lambda env, stdin, deadline: (0, ""), workers=1, read_timeout=0.3)
    with connect(server.path) as silent:  # without the cut-off, recv would time out (20 s)
        code, out = shim.decode_reply(b"".join(iter(lambda: silent.recv(65536), b"")))
    body = json.loads(out)
    assert (code, body["code"], body["msg"]) == (1, 5, "the request did not arrive in time")
    assert body["details"] == "not all of it within 0.3 s"
    assert request(server.path) == (0, None)


def test_a_trickling_client_gets_no_more_time(serve):
    """A byte every 0.1 s never lets a per-read timeout of 0.5 s expire: the limit is on the
    whole request, so the server hangs up on it."""
    server = serve(lambda env, stdin, deadline: (0, ""), read_timeout=0.5)
    cut_off = False
    with connect(server.path) as slow:
        try:
            for byte in shim.MAGIC * 40:  # 20 s of trickling
                slow.sendall(bytes([byte]))
                time.sleep(0.1)
        except BrokenPipeError:
            cut_off = True
        answer = until_eof(slow)
    assert cut_off and json.loads(shim.decode_reply(answer)[1])["code"] == 5


def test_requests_beyond_the_worker_bound_wait_their_turn(serve):
    """40 clients at once, 4 workers: never more than 4 requests inside the plugin (nor many
    more threads), and every client is answered once the workers are free."""
    gate = Gate()
    server = serve(gate, workers=4)
    threads_before = threading.active_count()
    answers = []
    clients = [threading.Thread(target=lambda: answers.append(request(server.path))) for _ in range(40)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 10
    while gate.inside < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # time for a fifth to get in, if the bound did not hold
    assert gate.inside == 4
    assert threading.active_count() - threads_before <= 40 + 4 + 1  # the clients, the workers
    gate.open()
    for client in clients:
        client.join(20)
    assert answers == [(0, None)] * 40 and gate.most == 4


@pytest.mark.parametrize("kind", shim_kinds())
def test_a_shim_waits_for_a_busy_agent_then_gets_code_11(serve, sockdir, kind):
    gate = Gate()
    server = serve(gate, workers=1)
    busy = threading.Thread(target=request, args=(server.path,))
    busy.start()
    while gate.inside < 1:
        time.sleep(0.01)
    binary = install_shim.install(sockdir, name=f"megalos-{kind}", kind=kind)
    proc = subprocess.run([str(binary)], input=CONF.encode(), capture_output=True, timeout=30,
                          env={**ENV, shim.SOCKET_ENV: server.path, shim.TIMEOUT_ENV: "0.5"})
    gate.open()
    busy.join(20)
    body = json.loads(proc.stdout)
    assert (proc.returncode, body["code"]) == (1, 11)
    assert body["msg"] == f"megalos agent at {server.path} did not answer within 0.5 s"


@pytest.mark.parametrize("kind", shim_kinds())
def test_a_verb_past_its_deadline_is_answered_code_11_and_finishes(serve, sockdir, kind):
    """The shim hears at the deadline, while the verb still runs (nor at its own timeout); the
    verb goes on to its end in the agent."""
    gate = Gate()
    server = serve(gate, deadline=0.4)
    binary = install_shim.install(sockdir, name=f"megalos-{kind}", kind=kind)
    proc = subprocess.run([str(binary)], input=CONF.encode(), capture_output=True, timeout=30,
                          env={**ENV, shim.SOCKET_ENV: server.path})
    assert (gate.inside, gate.done) == (1, 0)  # answered while the verb is still running
    gate.open()
    body = json.loads(proc.stdout)
    assert (proc.returncode, body["code"], body["cniVersion"]) == (1, 11, "1.1.0")
    assert body["msg"] == "DEL c1/net0 did not finish within its deadline"
    deadline = time.monotonic() + 10
    while gate.done < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gate.done == 1


def test_a_verb_does_not_wait_for_its_vnis_lock_past_the_deadline():
    """A DEL whose VNI is held by a stuck request gives up at its deadline, changing nothing
    (this plugin has no datapath: reaching it would be an internal error)."""
    plugin = Plugin(datapath=None)
    with plugin.locks.hold(100):
        start = time.monotonic()
        code, out = plugin.handle(ENV, CONF, deadline=time.monotonic() + 0.3)
    body = json.loads(out)
    assert (code, body["code"]) == (1, 11) and 0.25 < time.monotonic() - start < 20
    assert body["msg"] == ("VNI 100 is busy: its lock was not free before this request's deadline; "
                           "nothing was changed")
    with plugin.locks.hold(100, deadline=time.monotonic()):  # free again: taken at once
        pass


def test_stopping_a_saturated_server_does_not_hang(sockdir):
    gate = Gate()
    server = CniServer(os.path.join(sockdir, "stop.sock"), gate, workers=1)
    server.start()

    def client():
        try:
            request(server.path)
        except OSError:  # those still in the backlog when the socket closes
            pass

    clients = [threading.Thread(target=client) for _ in range(3)]
    for client in clients:
        client.start()
    while gate.inside < 1:
        time.sleep(0.01)
    start = time.monotonic()
    server.stop()  # the accept loop waits for a free worker (30 s here): it must see the stop
    assert time.monotonic() - start < 15
    gate.open()
    for client in clients:
        client.join(20)
