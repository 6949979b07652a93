"""The reflector's state socket protocol, version 1: one JSON request per line, one reply per line.

    -> {"v": 1, "op": "vnis", "limit": 100}
    <- {"v": 1, "ok": true, "result": {...}}
    <- {"v": 1, "ok": false, "error": "unknown VNI 7", "status": 404}

Ops (arguments; result):

- ``hello``: {version, router_id, started, ops}
- ``totals``: {vnis, vteps, macs, seq, epoch, peers}
- ``vnis`` {limit?, cursor?, vtep?, node?}: {vnis: [{vni, vteps, macs}], total, next}
- ``vni`` {vni, limit?, cursor?, vtep?, node?}: {vni, vteps: [{address, node}], mac_count,
  macs: [{vni, mac, vtep, ip, ips, first_seen, last_changed}], next}; 404 if unknown
- ``mac`` {mac, vni?, vtep?, node?}: [{vni, mac, vtep, ip, ips, first_seen, last_changed}]
  (empty if unknown)
- ``peers``: [{address, name, state, uptime, received, sent, updates_received, updates_sent}]
- ``events`` {since, timeout (s, at most 60), limit?, vni?}: {seq, epoch, changes, next,
  truncated}
- ``lans`` {namespace?}: {namespace, watching, synced, converged, lans: [{namespace, name, link,
  vni, members: [{pod, namespace, interface, mac, node, attached, vteps, announced}],
  converged}]}: the LANs (megalos NetworkAttachmentDefinitions) of a namespace, or of all, with
  the pod interfaces on each and whether each one's MAC is in the VNI's MAC table (see
  reflector.lanview); ``watching`` false when the reflector does not watch the Kubernetes API
  for LANs (no --lans-from-k8s), ``synced`` once NADs and pods have both been listed
- ``peer_add`` {address, name?}: true if added, false if it was already a peer
- ``peer_del`` {address}: true if removed, false if it was not a peer

Paged results carry ``next``: the ``cursor`` of the following page, null on the last one.
``node`` filters by node name (as given to peer_add), ``vtep`` by address. Statuses in errors:
400 bad request, 404 unknown, 413 a request line over 64 KiB (then the connection is closed),
500 the reflector failed, 503 its BGP process failed. The server closes a connection that sends
no whole request within its read timeout (30 s by default); the client reconnects.

This module is the only thing the API imports from the reflector: the client side, stdlib only.
"""
from __future__ import annotations

import json
import socket
import threading

VERSION = 1
DEFAULT_SOCKET = "/run/megalos/reflector.sock"
OPS = ("hello", "totals", "vnis", "vni", "mac", "peers", "events", "lans", "peer_add",
       "peer_del")


class ReflectorUnavailable(Exception):
    """The reflector does not answer (not running, or the socket is wrong)."""


class ReflectorError(Exception):
    """The reflector answered with an error; `status` is an HTTP-like code (400, 404, 500, 503)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class RawJson(str):
    """A result that is JSON text already (the reflector's large tables, built from kept row
    encodings): sent as it is, and handed by `StateClient.call_raw` to the API as it is."""


# A successful reply is exactly these bytes, the result's JSON, and "}\n": call_raw relies on it.
OK_PREFIX = b'{"v":%d,"ok":true,"result":' % VERSION


def encode(message: dict) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def encode_ok(result) -> bytes:
    text = result if isinstance(result, RawJson) else json.dumps(result, separators=(",", ":"))
    return OK_PREFIX + text.encode() + b"}\n"


class StateClient:
    """A thread-safe client: one connection per thread, reconnecting once on a broken socket
    (not after a timeout: a reflector that is slow is not made slower by asking twice).

    `timeout` bounds each reply; an op's own ``timeout`` argument (the events long poll) is sent
    to the reflector and added to it.
    """

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
        # A large buffer: a page of a big table arrives in a few reads, not one per 8 KiB.
        self._local.sock, self._local.file = sock, sock.makefile("rb", buffering=1 << 18)
        return sock

    def close(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock:
            self._local.file.close()
            sock.close()
            self._local.sock = None

    def call(self, op: str, **args):
        """The op's result, decoded."""
        return self._result(self._exchange(op, args), raw=False)

    def call_raw(self, op: str, **args) -> bytes:
        """The op's result as the JSON text the reflector sent (nothing decoded or re-encoded:
        the API passes large tables through)."""
        return self._result(self._exchange(op, args), raw=True)

    def _exchange(self, op: str, args: dict) -> bytes:
        wait = float(args.get("timeout") or 0)
        request = encode({"v": VERSION, "op": op, **args})
        for attempt in (1, 2):
            sock = getattr(self._local, "sock", None) or self._connect()
            try:
                sock.settimeout(self.timeout + wait)
                sock.sendall(request)
                line = self._local.file.readline()
                if not line:
                    raise ConnectionResetError("reflector closed the connection")
                return line
            except OSError as exc:
                self.close()
                if attempt == 2 or isinstance(exc, TimeoutError):
                    raise ReflectorUnavailable(f"reflector state socket {self.path}: {exc}") from None
        raise AssertionError("unreachable")

    def _result(self, line: bytes, raw: bool):
        if raw and line.startswith(OK_PREFIX) and line.endswith(b"}\n"):
            return line[len(OK_PREFIX):-2]
        try:
            reply = json.loads(line)
        except ValueError:
            self.close()
            raise ReflectorUnavailable(f"reflector state socket {self.path}: not JSON: {line[:80]!r}") from None
        if not reply.get("ok"):
            raise ReflectorError(reply.get("error", "unknown error"), reply.get("status", 400))
        result = reply.get("result")
        return json.dumps(result, separators=(",", ":")).encode() if raw else result
