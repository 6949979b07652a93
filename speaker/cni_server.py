"""The agent's UNIX socket where the `megalos` shim delivers CNI requests.

The wire protocol is described in cni/shim.py, whose `encode_request`/`decode_reply` are the
shim's side; `decode_request`/`encode_reply` here are the agent's (bytes in, values out: tested
without a socket). One thread per request; the socket is root-only (0600) because a request
creates devices.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading

from cni import shim, spec

log = logging.getLogger(__name__)
MAX_REQUEST = len(shim.MAGIC) + shim.MAX_ENV + shim.MAX_STDIN


def decode_request(data: bytes) -> tuple[dict, bytes]:
    """(the CNI_* variables, stdin) of one request; ValueError says what is wrong with it."""
    if not data.startswith(shim.MAGIC):
        raise ValueError("not a megalos shim request (no CNI1 header)")
    env: dict = {}
    start = len(shim.MAGIC)
    while True:
        end = data.find(b"\0", start)
        if end < 0:
            raise ValueError("the variables are not terminated by an empty entry")
        if end == start:
            return env, data[end + 1:]
        name, equals, value = data[start:end].partition(b"=")
        if not equals or not name.startswith(b"CNI_"):
            raise ValueError(f"not a CNI_* variable: {data[start:end][:40]!r}")
        # The first one wins, as for getenv(3) and os.environ.
        env.setdefault(name.decode("utf-8", "surrogateescape"),
                       value.decode("utf-8", "surrogateescape"))
        start = end + 1


def encode_reply(code: int, stdout: str) -> bytes:
    return b"%d\n" % code + stdout.encode("utf-8", "surrogateescape")


def _error(code: int, msg: str, details: str) -> tuple[int, str]:
    return 1, json.dumps(spec.CniError(code, msg, details).to_json())


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        data = self.rfile.read(MAX_REQUEST + 1)
        env: dict = {}
        try:
            if len(data) > MAX_REQUEST:
                raise ValueError(f"request larger than {MAX_REQUEST} bytes")
            env, stdin = decode_request(data)
        except ValueError as exc:
            code, out = _error(spec.ERR_IO, "malformed request from the megalos shim", str(exc))
        else:
            try:
                text = stdin.decode("utf-8")
            except UnicodeDecodeError as exc:
                code, out = _error(spec.ERR_DECODE, "the network configuration is not UTF-8",
                                   str(exc))
            else:
                code, out = self.server.handle_cni(env, text)
        log.info("CNI %s %s/%s -> exit %d", env.get("CNI_COMMAND", "?"),
                 env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", ""), code)
        self.wfile.write(encode_reply(code, out))


class CniServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = socket.SOMAXCONN  # socketserver's default of 5 refuses a burst of ADDs

    def __init__(self, path: str, handle_cni):
        self.path = path
        self.handle_cni = handle_cni
        _remove_stale(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        old = os.umask(0o177)
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="cni-server", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _remove_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to start beside a live agent."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise RuntimeError(f"another megalos agent is already serving {path}")
