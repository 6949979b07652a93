"""The reflector's state socket: the ops of reflector.protocol answered from the reflector's state
and its BGP process (one JSON request per line, one reply per line; errors carry an HTTP-like
status the API passes on).

Bounded, so that no client (a stuck one, a burst, one that is not the API) can exhaust the
reflector: at most `max_connections` connections are served at once (one thread each; the next
wait in the listen backlog, never as threads); each request line must arrive whole within
`read_timeout` seconds of the previous reply (or of connecting: an idle connection is closed
then, and the API's client reconnects), and a reply must be taken within as long; a line is at
most MAX_REQUEST bytes (longer: an error with status 413, and the connection is closed) and is
parsed by base.bounded_json (nesting: 400).
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import time

from base import bounded_json
from base.unix_server import UnixServer
from bgp.client import BgpError
from reflector.protocol import OPS, VERSION, RawJson, encode, encode_ok
from reflector.route_reflector import Reflector

log = logging.getLogger("megalos.reflector")
MAX_REQUEST = 64 * 1024  # bytes in a request line; the API's largest is well under 1 KiB
DEFAULT_MAX_CONNECTIONS = 64  # the API's: workers x threads (2 x 16) + a map watcher per worker
DEFAULT_READ_TIMEOUT = 30.0


class StateService:
    """The result of each op, or an exception: LookupError (404), ValueError/TypeError/KeyError
    (400), BgpError (503)."""

    def __init__(self, reflector: Reflector):
        self.reflector = reflector
        self.state = reflector.state

    def answer(self, request: dict):
        """The result of one request (see reflector.protocol for the ops)."""
        op = request.get("op")
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}")
        return getattr(self, f"_answer_{op}")(request)

    def _answer_hello(self, request: dict):
        return {"version": VERSION, "router_id": self.reflector.config.router_id,
                "started": self.reflector.started, "ops": list(OPS)}

    def _answer_totals(self, request: dict):
        return {**self.state.totals(), "peers": len(self.reflector.peers)}

    def _answer_vnis(self, request: dict):
        return self.state.vni_summary(request.get("limit"), _cursor(request),
                                      self._vtep_filter(request))

    def _answer_vni(self, request: dict):
        vni = _int(request, "vni")
        detail = self.state.vni_detail_json(vni, request.get("limit"), _cursor(request),
                                            self._vtep_filter(request))
        if detail is None:
            raise LookupError(f"unknown VNI {vni}")
        return RawJson(detail)

    def _answer_mac(self, request: dict):
        vni = request.get("vni")
        return self.state.where_is(str(request["mac"]).lower(),
                                   None if vni is None else _int(request, "vni"),
                                   self._vtep_filter(request))

    def _answer_peers(self, request: dict):
        peers = [peer.json() for peer in self.reflector.peer_summaries()]
        for peer in peers:
            peer["name"] = self.state.node_names.get(peer["address"])
        return peers

    def _answer_events(self, request: dict):
        since, timeout = _int(request, "since", 0), float(request.get("timeout") or 0)
        if since < 0 or not 0 <= timeout <= 3600:
            raise ValueError("since must be >= 0 and timeout a number of seconds >= 0")
        vni = request.get("vni")
        return self.state.changes_since(since, min(timeout, 60.0), request.get("limit", 1000),
                                        None if vni is None else _int(request, "vni"))

    def _answer_lans(self, request: dict):
        namespace = request.get("namespace")
        if namespace is not None and not (isinstance(namespace, str) and namespace):
            raise ValueError("namespace must be a non-empty string")
        return self.state.lans(namespace)

    def _answer_peer_add(self, request: dict):
        address = _peer_address(request)
        if address == self.reflector.config.router_id:
            raise ValueError(f"{address} is the reflector itself")
        name = request.get("name")
        if name is not None and not (isinstance(name, str) and 0 < len(name) <= 253):
            raise ValueError("a node name is a string of 1 to 253 characters")
        added = self.reflector.add_peer(address)
        if name is not None:
            self.state.name_node(address, name)
        return added

    def _answer_peer_del(self, request: dict):
        address = str(ipaddress.ip_address(str(request["address"])))
        removed = self.reflector.remove_peer(address)
        self.state.name_node(address, None)
        return removed

    def _vtep_filter(self, request: dict) -> str | None:
        """The VTEP address a query is narrowed to: `vtep` (an address) and/or `node` (a name;
        both: rows must match both)."""
        vtep, node = request.get("vtep"), request.get("node")
        vtep = str(ipaddress.ip_address(vtep)) if vtep else None
        if not node:
            return vtep
        named = self.state.node_address(node)
        if named is None or (vtep and vtep != named):
            return f"no such node {node}"  # matches no row
        return named


def _int(request: dict, key: str, default=None) -> int:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer")
    return value


def _cursor(request: dict) -> str | None:
    cursor = request.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise ValueError("cursor must be a string")
    return cursor or None


def _peer_address(request: dict) -> str:
    address = ipaddress.ip_address(str(request["address"]))
    if (address.is_multicast or address.is_unspecified or address.is_loopback
            or address.is_link_local or address.is_reserved):
        raise ValueError(f"{address} cannot be a BGP peer")
    return str(address)


class RequestTooLong(ValueError):
    pass


def read_line(sock: socket.socket, buffer: bytearray, timeout: float) -> bytes | None:
    """The next line from `sock` (bytes already received are kept in `buffer`); None at EOF.
    TimeoutError when it has not arrived whole within `timeout` seconds in all (a client
    trickling bytes gets no more time); RequestTooLong past MAX_REQUEST bytes."""
    end = time.monotonic() + timeout
    while True:
        newline = buffer.find(b"\n")
        if newline > MAX_REQUEST or (newline < 0 and len(buffer) > MAX_REQUEST):
            raise RequestTooLong(f"a request is at most {MAX_REQUEST} bytes")
        if newline >= 0:
            line = bytes(buffer[:newline + 1])
            del buffer[:newline + 1]
            return line
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(1 << 16)
        if not chunk:
            return None
        buffer += chunk


class _StateHandler(socketserver.BaseRequestHandler):
    server: "StateServer"

    def handle(self):
        buffer = bytearray()
        while True:
            try:
                line = read_line(self.request, buffer, self.server.read_timeout)
            except RequestTooLong as exc:
                self.observe(None, 413)
                self.send(_failed(f"bad request: {exc}", 413))
                return
            except OSError:  # silent past the read timeout, or gone
                return
            if line is None:
                return
            op, status, reply = self.reply(line)
            self.observe(op, status)
            if not self.send(reply):
                return

    def observe(self, op, status: int) -> None:
        if self.server.observe is not None:
            self.server.observe(op, status)

    def send(self, reply: bytes | dict) -> bool:
        """Send a reply (taken within the read timeout); False if the client is gone."""
        try:
            self.request.settimeout(self.server.read_timeout)
            self.request.sendall(reply if isinstance(reply, bytes) else encode(reply))
        except OSError:
            return False
        return True

    def reply(self, line: bytes) -> tuple[object, int, bytes | dict]:
        """(the request's op, or None; the status; the reply)."""
        op = None
        try:
            request = bounded_json.loads(line, MAX_REQUEST, what="the request")
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            op = request.get("op")
            if request.get("v") != VERSION:
                raise ValueError(f"protocol version {request.get('v')!r} is not {VERSION}")
            return op, 200, encode_ok(self.server.service.answer(request))
        except KeyError as exc:  # before LookupError, of which it is one
            return op, 400, _failed(f"bad request: missing {exc}", 400)
        except LookupError as exc:
            return op, 404, _failed(str(exc).strip("'\""), 404)
        except (ValueError, TypeError) as exc:
            return op, 400, _failed(f"bad request: {exc}", 400)
        except BgpError as exc:
            return op, 503, _failed(str(exc), 503)
        except Exception as exc:  # a bug: answer it rather than drop the connection
            log.exception("state socket request %r", line[:200])
            return op, 500, _failed(f"reflector error: {exc}", 500)


def _failed(error: str, status: int) -> dict:
    return {"v": VERSION, "ok": False, "error": error, "status": status}


class StateServer(UnixServer):
    """The state socket: readable and writable by the reflector's user and group (the API);
    `observe(op, status)`, if given, hears of every request."""

    def __init__(self, path: str, service: StateService, observe=None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 read_timeout: float = DEFAULT_READ_TIMEOUT):
        self.service = service
        self.observe = observe  # observe(op, status) of every request (the reflector's metrics)
        self.read_timeout = read_timeout
        super().__init__(path, _StateHandler, mode=0o660, name="state-server",
                         max_connections=max_connections)
