"""The agent's UNIX socket where the `megalos` shim delivers CNI requests.

The wire protocol is described in cni/shim.py, whose `encode_request`/`decode_reply` are the
shim's side; `decode_request`/`encode_reply` here are the agent's (bytes in, values out: tested
without a socket). The socket is root-only (0600) because a request creates devices.

Bounded, so that no client (a stuck one, a hostile one, a burst) can exhaust the agent: one
thread per request, at most `workers` at once (the next connections wait in the listen
backlog, their shims with them, up to the shim's timeout); a request must arrive within
`read_timeout` seconds (else code 5); each verb has `deadline` seconds: the VNI's lock is not
waited for beyond it (code 11, nothing changed), and a verb still running then is answered
code 11 by the deadline watchdog while it goes on to its end in the agent.
"""
from __future__ import annotations

import heapq
import itertools
import json
import logging
import socket
import socketserver
import threading
import time

from base.unix_server import UnixServer
from cni import shim, spec

log = logging.getLogger(__name__)
MAX_REQUEST = len(shim.MAGIC) + shim.MAX_ENV + shim.MAX_STDIN
DEFAULT_WORKERS = 32
DEFAULT_READ_TIMEOUT = 5.0
DEFAULT_DEADLINE = 60.0  # below the shim's own timeout (120 s): the agent's answer comes first


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


def _error(code: int, msg: str, details: str = "") -> tuple[int, str]:
    return 1, json.dumps(spec.CniError(code, msg, details).to_json())


def _receive(sock: socket.socket, limit: int, timeout: float) -> bytes:
    """What the client sends until EOF, at most `limit` bytes; TimeoutError if it takes longer
    than `timeout` seconds in all (a client trickling bytes gets no more time)."""
    end = time.monotonic() + timeout
    chunks, size = [], 0
    while size < limit:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(min(1 << 16, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _verb(env: dict) -> str:
    return " ".join(filter(None, (env.get("CNI_COMMAND", "?"), "/".join(
        filter(None, (env.get("CNI_CONTAINERID"), env.get("CNI_IFNAME")))))))


class _Answer:
    """The one answer a connection gets: its verb's, or the watchdog's at the deadline."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._lock = threading.Lock()
        self._sent = False

    def send(self, data: bytes) -> bool:
        """Send `data` and end the connection's write side; False if it was answered already."""
        with self._lock:
            if self._sent:
                return False
            self._sent = True
        try:
            self.sock.sendall(data)
            self.sock.shutdown(socket.SHUT_WR)  # the shim reads to EOF
        except OSError:  # the shim gave up waiting
            pass
        return True


class _Deadlines:
    """One thread that answers each verb still running at its deadline: code 11."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list = []  # (deadline, tie-break, answer, verb)
        self._order = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cni-deadlines", daemon=True)
        self._thread.start()

    def watch(self, deadline: float, answer: _Answer, verb: str) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), answer, verb))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._closed:
                    return
                _, _, answer, verb = heapq.heappop(self._heap)
            late = _error(spec.ERR_TRY_AGAIN_LATER, f"{verb} did not finish within its deadline",
                          "the agent finishes it (or undoes it) on its own; try again later")
            if answer.send(encode_reply(*late)):
                log.warning("CNI %s still running at its deadline: answered code 11", verb)


class _Handler(socketserver.BaseRequestHandler):
    server: "CniServer"

    def handle(self):
        started = time.perf_counter()
        deadline = time.monotonic() + self.server.deadline
        answer = _Answer(self.request)
        env: dict = {}
        try:
            data = _receive(self.request, MAX_REQUEST + 1, self.server.read_timeout)
            if len(data) > MAX_REQUEST:
                raise ValueError(f"request larger than {MAX_REQUEST} bytes")
            env, stdin = decode_request(data)
            text = stdin.decode("utf-8")
        except TimeoutError:
            code, out = _error(spec.ERR_IO, "the request did not arrive in time",
                               f"not all of it within {self.server.read_timeout:g} s")
        except UnicodeDecodeError as exc:
            code, out = _error(spec.ERR_DECODE, "the network configuration is not UTF-8", str(exc))
        except ValueError as exc:
            code, out = _error(spec.ERR_IO, "malformed request from the megalos shim", str(exc))
        except OSError:  # the client went away
            return
        else:
            self.request.settimeout(self.server.read_timeout)  # for the answer, too
            self.server.deadlines.watch(deadline, answer, _verb(env))
            code, out = self.server.handle_cni(env, text, deadline)
        if answer.send(encode_reply(code, out)):
            log.info("CNI %s -> exit %d", _verb(env), code)
        else:
            log.warning("CNI %s -> exit %d, after its deadline (the shim was told to try again)",
                        _verb(env), code)
            code, out = _error(spec.ERR_TRY_AGAIN_LATER, "deadline")  # what the shim was told
        if self.server.observe is not None:
            self.server.observe(env.get("CNI_COMMAND", ""), code, out, time.perf_counter() - started)


class CniServer(UnixServer):
    """The agent's CNI socket, root-only: `handle_cni(env, stdin text, deadline)` -> (exit code,
    stdout), `deadline` a time.monotonic() value; `observe(CNI_COMMAND, exit code, stdout,
    seconds)`, if given, hears of every answer (the agent's metrics)."""

    def __init__(self, path: str, handle_cni, workers: int = DEFAULT_WORKERS,
                 read_timeout: float = DEFAULT_READ_TIMEOUT, deadline: float = DEFAULT_DEADLINE,
                 observe=None):
        self.handle_cni = handle_cni
        self.observe = observe
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.deadlines = _Deadlines()
        try:
            super().__init__(path, _Handler, mode=0o600, name="cni-server", max_connections=workers)
        except BaseException:
            self.deadlines.close()
            raise

    def stop(self) -> None:
        super().stop()
        self.deadlines.close()
