"""The agent's UNIX socket where the `megalos` shim delivers CNI requests (see cni/shim.py).

One thread per request; the socket is root-only (0600) because a request creates devices.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading

from cni import spec

log = logging.getLogger(__name__)
MAX_REQUEST = 1 << 20


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        data = self.rfile.read(MAX_REQUEST + 1)
        env: dict = {}
        try:
            if len(data) > MAX_REQUEST:
                raise ValueError(f"request larger than {MAX_REQUEST} bytes")
            request = json.loads(data)
            if not isinstance(request.get("env"), dict) or not isinstance(request.get("stdin"), str):
                raise ValueError("env must be an object and stdin a string")
            env = request["env"]
            code, out = self.server.handle_cni(env, request["stdin"])
        except (ValueError, AttributeError) as exc:
            err = spec.CniError(spec.ERR_IO, "malformed request from the megalos shim", str(exc))
            code, out = 1, json.dumps(err.to_json())
        log.info("CNI %s %s/%s -> exit %d", env.get("CNI_COMMAND", "?"),
                 env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", ""), code)
        self.wfile.write(json.dumps({"exit": code, "stdout": out}).encode())


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
