"""The reflector's state socket under clients that do not play along: silent or trickling ones,
more connections than it serves, a line that never ends, nesting that json.loads cannot take.
The server is the real one (reflector/state_server.py) in front of a Reflector whose BGP process
is a stand-in; the well-behaved client is the API's (reflector.protocol.StateClient)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time

import pytest

from reflector.protocol import StateClient
from reflector.route_reflector import Reflector, ReflectorConfig
from reflector.state_server import MAX_REQUEST, StateServer, StateService
from tests.test_api import StandInBgp
from tests.conftest import until_eof
from tests.test_cni_server import connect


@pytest.fixture
def serve():
    node = Reflector(ReflectorConfig("192.0.2.1"), spawn_bgp=StandInBgp)
    node.start()
    directory = tempfile.mkdtemp(prefix="mgst", dir="/tmp")  # AF_UNIX paths stop at 108 bytes
    servers = []

    def start(**options) -> StateServer:
        server = StateServer(os.path.join(directory, f"s{len(servers)}.sock"), StateService(node),
                             **options)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    shutil.rmtree(directory, ignore_errors=True)


def ask(sock: socket.socket, line: bytes) -> dict:
    sock.sendall(line)
    return json.loads(sock.makefile("rb").readline())


def test_a_silent_client_is_disconnected_and_its_slot_freed(serve):
    """One slot, taken by a client that says nothing: without the read timeout it would hold
    it forever (and recv below would wait the full 20 s, then fail)."""
    server = serve(max_connections=1, read_timeout=0.3)
    with connect(server.path) as silent:
        assert until_eof(silent) == b""
    assert StateClient(server.path, timeout=20).call("hello")["router_id"] == "192.0.2.1"


def test_a_trickling_client_gets_no_more_time(serve):
    """A byte every 0.1 s never lets a per-read timeout of 0.5 s expire: the limit is on the
    whole request, so the server hangs up on it."""
    server = serve(read_timeout=0.5)
    cut_off = False
    with connect(server.path) as slow:
        try:
            for byte in b'{"v": 1, "op": "hello"' * 10:  # 20 s of trickling, never a newline
                slow.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            cut_off = True
    assert cut_off


def test_connections_beyond_the_bound_wait_and_threads_stay_bounded(serve):
    """40 clients connect and stay silent, the server serves 4 at once: never more than 4
    handler threads (before: one each, for as long as the client liked); once the silent ones
    are cut off, a real client is answered."""
    server = serve(max_connections=4, read_timeout=0.5)
    before = threading.active_count()
    silent = [connect(server.path) for _ in range(40)]
    try:
        time.sleep(0.3)
        assert threading.active_count() - before <= 4
        client = StateClient(server.path, timeout=60)  # waits its turn in the backlog
        assert client.call("totals")["vnis"] == 0
        client.close()
    finally:
        for sock in silent:
            sock.close()


def test_a_line_that_never_ends_is_refused_not_buffered(serve):
    """10 MiB without a newline: the server stops reading past MAX_REQUEST, answers 413 and
    hangs up (before: it kept every byte, waiting for the end of the line)."""
    server = serve()
    with connect(server.path) as sock:
        sender = threading.Thread(target=lambda: _send_quietly(sock, b"[" * (10 << 20)))
        sender.start()
        reply = json.loads(until_eof(sock))
        sender.join(20)
    assert reply["status"] == 413 and f"at most {MAX_REQUEST} bytes" in reply["error"]


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:  # the server hung up, as it should
        pass


def test_deep_nesting_is_a_400_and_the_connection_goes_on(serve):
    """json.loads raised RecursionError on it: the server answered 500 and logged a traceback."""
    server = serve()
    with connect(server.path) as sock:
        reply = ask(sock, b'{"v": 1, "op": "hello", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}\n")
        assert reply["status"] == 400 and "nests arrays and objects" in reply["error"]
        assert ask(sock, b'{"v": 1, "op": "hello"}\n')["ok"]


def test_the_reflectors_options_for_its_state_socket():
    from reflector.main import build_parser, check_args
    base = ["--router-id", "192.0.2.1"]
    args = build_parser().parse_args(base)
    assert (args.state_max_connections, args.state_read_timeout) == (64, 30.0)
    for argv, message in ((["--state-max-connections", "0"], "at least 1"),
                          (["--state-read-timeout", "0"], "> 0"),
                          (["--state-read-timeout", "nan"], "> 0"),
                          (["--state-read-timeout", "inf"], "> 0")):
        with pytest.raises(ValueError, match=message):
            check_args(build_parser().parse_args(base + argv))


def test_the_apis_client_reconnects_after_an_idle_disconnect(serve):
    server = serve(read_timeout=0.2)
    client = StateClient(server.path, timeout=20)
    for _ in range(3):
        assert client.call("hello")["router_id"] == "192.0.2.1"
        time.sleep(0.5)  # the server has closed the idle connection
    client.close()
