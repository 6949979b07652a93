"""The agent's UNIX socket where the `megalos` shim delivers CNI requests.

The wire protocol is described in cni/shim.py, whose `encode_request`/`decode_reply` are the
shim's side; `decode_request`/`encode_reply` here are the agent's (bytes in, values out: tested
without a socket). One thread per request; the socket is root-only (0600) because a request
creates devices.
"""
from __future__ import annotations

import json
import logging
import socketserver

from base.unix_server import UnixServer
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


class CniServer(UnixServer):
    """The agent's CNI socket, root-only: `handle_cni(env, stdin text)` -> (exit code, stdout)."""

    def __init__(self, path: str, handle_cni):
        self.handle_cni = handle_cni
        super().__init__(path, _Handler, mode=0o600, name="cni-server")
