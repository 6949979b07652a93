"""The reflector's state socket protocol, version 1: one JSON request per line, one reply per line.

    -> {"v": 1, "op": "vnis"}
    <- {"v": 1, "ok": true, "result": [...]}
    <- {"v": 1, "ok": false, "error": "unknown VNI 7", "status": 404}

Ops: hello, totals, vnis, vni {vni}, mac {mac}, peers, events {since, timeout, limit},
peer_add {address}, peer_del {address}. A client (the API) keeps one connection per thread.
This module is the only thing the API imports from the reflector: the client side, stdlib only.
"""
from __future__ import annotations

import json
import socket
import threading

VERSION = 1
DEFAULT_SOCKET = "/run/megalos/reflector.sock"


class ReflectorUnavailable(Exception):
    """The reflector does not answer (not running, or the socket is wrong)."""


class ReflectorError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def encode(message: dict) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


class StateClient:
    """A thread-safe client: one connection per thread, reconnecting once on a broken socket."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 5.0):
        self.path = path
        self.timeout = timeout
        self._local = threading.local()

    def _connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise ReflectorUnavailable(f"reflector state socket {self.path}: {exc.strerror or exc}") from None
        self._local.sock, self._local.file = sock, sock.makefile("rb")
        return sock

    def close(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock:
            self._local.file.close()
            sock.close()
            self._local.sock = None

    def call(self, op: str, timeout: float | None = None, **args):
        for attempt in (1, 2):
            sock = getattr(self._local, "sock", None) or self._connect()
            try:
                sock.settimeout(self.timeout + (timeout or 0))
                sock.sendall(encode({"v": VERSION, "op": op, **args}))
                line = self._local.file.readline()
                if not line:
                    raise ConnectionResetError("reflector closed the connection")
                break
            except OSError as exc:
                self.close()
                if attempt == 2:
                    raise ReflectorUnavailable(f"reflector state socket {self.path}: {exc}") from None
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ReflectorError(reply.get("error", "unknown error"), reply.get("status", 400))
        return reply.get("result")
