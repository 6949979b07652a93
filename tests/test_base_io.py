"""base.unix_server and base.processes: the socket-file rule and stopping a process group."""
from __future__ import annotations

import os
import signal
import socket
import socketserver
import stat
import subprocess
import sys

import pytest

from base.processes import stop_process_group
from base.unix_server import UnixServer, remove_stale_socket


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())


def ask(path: str, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(line)
        return sock.makefile("rb").readline()


def test_serves_with_its_mode_and_removes_its_file(tmp_path):
    path = str(tmp_path / "s.sock")
    server = UnixServer(path, Echo, mode=0o660)
    server.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert ask(path, b"hello\n") == b"hello\n"
    finally:
        server.stop()
    assert not os.path.exists(path)


def test_a_dead_socket_file_is_replaced(tmp_path):
    path = str(tmp_path / "s.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays; nobody listens
    server = UnixServer(path, Echo)
    server.start()
    try:
        assert ask(path, b"x\n") == b"x\n"
    finally:
        server.stop()


def test_a_live_socket_is_never_taken_over(tmp_path):
    path = str(tmp_path / "s.sock")
    first = UnixServer(path, Echo)
    first.start()
    try:
        with pytest.raises(RuntimeError, match="already serving"):
            UnixServer(path, Echo)
        assert ask(path, b"still me\n") == b"still me\n"
    finally:
        first.stop()


def test_stop_before_start_does_not_hang(tmp_path):
    server = UnixServer(str(tmp_path / "s.sock"), Echo)
    server.stop()
    remove_stale_socket(str(tmp_path / "s.sock"))  # nothing left: a no-op


def spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdout=subprocess.PIPE)


def test_stop_process_group_terminates_the_group():
    process = spawn("import time; time.sleep(60)")
    assert stop_process_group(process, timeout=10) == -signal.SIGTERM


def test_stop_process_group_kills_what_ignores_the_signal():
    process = spawn("import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                    "print('ready', flush=True)\ntime.sleep(60)")
    assert process.stdout.readline() == b"ready\n"  # its handler is in place
    assert stop_process_group(process, timeout=0.5) == -signal.SIGKILL


def test_stop_process_group_of_an_exited_process_only_reaps_it():
    process = spawn("pass")
    process.wait()
    assert stop_process_group(process) == 0
