"""The agent's handle on its BGP process (bgp.process): plain threads, no eventlet, no os-ken.

`BgpProcess` starts the process, sends typed commands (bgp.protocol) and waits for their
replies, and hands every event to `on_event` from its reader thread::

    with BgpProcess(on_event=queue.put) as bgp:
        bgp.call(Start(router_id="10.0.0.11", asn=65000))
        bgp.call(PeerAdd("10.0.0.1", connect_mode="passive"))
        bgp.call(VtepAdd(vni=100, rd_index=1))
"""
from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

from bgp.protocol import (Command, ProtocolError, Ready, Reply, Stop, decode_event, decode_route_line,
                          encode_commands, is_route_line)

log = logging.getLogger(__name__)

PROCESS_MODULE = "bgp.process"
READ_SIZE = 1 << 16


class BgpError(Exception):
    """A command failed, timed out, or the BGP process is gone."""


class _Batch:
    """The replies one call waits for, set once the last has come (or the process is gone): one
    event per batch, not per command (3,333 of them were 5 % of a node agent's CPU)."""
    __slots__ = ("done", "left", "replies")

    def __init__(self, count: int):
        self.done = threading.Event()
        self.left = count
        self.replies: list[Reply | None] = [None] * count

    def answer(self, index: int, reply: Reply) -> None:
        """Record reply `index` (under BgpProcess._lock)."""
        if self.replies[index] is None:
            self.replies[index] = reply
            self.left -= 1
            if not self.left:
                self.done.set()


class BgpProcess:
    """One BGP process and the pipes to it.

    `argv_prefix` runs it through another command (e.g. `ip netns exec ns1`). `on_event(event)`
    is called from the reader thread, one event at a time, in the order the process wrote them;
    it should not block for long (the process buffers meanwhile). Calls made before the process is
    ready (os-ken imported) first wait up to `startup_timeout` s for it; their own timeout starts
    then.
    """

    def __init__(self, on_event: Callable | None = None, argv_prefix: Sequence[str] = (),
                 python: str = sys.executable, env: dict | None = None, stderr=None,
                 name: str = "bgp", startup_timeout: float = 60):
        self.name = name
        self._on_event = on_event
        self._startup_timeout = startup_timeout
        self._ready = threading.Event()  # the process said "ready", or died
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[_Batch, int]] = {}  # command id -> its batch and place
        self._lock = threading.Lock()        # guards _pending and _exit_reason
        self._write_lock = threading.Lock()  # one batch of lines at a time
        self._exit_reason: str | None = None
        # Its own session: a signal to the agent's process group (Ctrl-C, a runtime stopping the
        # agent) must not kill BGP under the agent's feet; the agent closes it, and end of stdin
        # stops it if the agent dies.
        self._process = subprocess.Popen(
            [*argv_prefix, python, "-m", PROCESS_MODULE], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=stderr, env=env, start_new_session=True)
        self._reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._exit_reason is None and self._process.poll() is None

    def call(self, command: Command, timeout: float = 10):
        """Send one command; its result. BgpError when it failed, timed out or the process is gone."""
        reply = self.call_many([command], timeout)[0]
        if not reply.ok:
            raise BgpError(f"{self.name}: {command.op} failed: {reply.error}")
        return reply.result

    def call_many(self, commands: Sequence[Command], timeout: float = 10) -> list[Reply]:
        """Send `commands` in one write and wait for every reply; the replies, in order, each
        result typed. The process applies them back to back, which lets it pack their routes into
        few UPDATEs. A command that failed is a Reply with ok False; BgpError only when the batch
        could not be sent, a reply did not come within `timeout` (for the whole batch), or the
        process is gone."""
        if not commands:
            return []
        batch = _Batch(len(commands))
        with self._lock:
            if self._exit_reason is not None:
                raise BgpError(f"{self.name}: {self._exit_reason}")
            ids = [next(self._ids) for _ in commands]
            self._pending.update((command_id, (batch, i)) for i, command_id in enumerate(ids))
        try:
            with self._write_lock:
                self._process.stdin.write(encode_commands(zip(ids, commands)))
                self._process.stdin.flush()
        except (OSError, ValueError) as exc:
            self._forget(ids)
            raise BgpError(f"{self.name}: cannot send {commands[0].op}: {exc}") from None
        if not self._ready.wait(self._startup_timeout):
            self._forget(ids)
            raise BgpError(f"{self.name}: not ready within {self._startup_timeout} s")
        if not batch.done.wait(timeout):
            self._forget(ids)
            late = next(c for c, r in zip(commands, batch.replies) if r is None)
            raise BgpError(f"{self.name}: no reply to {late.op} within {timeout} s")
        return [Reply(reply.id, True, command.decode_result(reply.result)) if reply.ok else reply
                for command, reply in zip(commands, batch.replies)]

    def _forget(self, ids: list[int]) -> None:
        with self._lock:
            for command_id in ids:
                self._pending.pop(command_id, None)

    def close(self, timeout: float = 5) -> None:
        """Stop the process (`stop`, then end of stdin, then SIGKILL)."""
        if self._process.poll() is None and self._exit_reason is None:
            try:
                self.call(Stop(), timeout=timeout)
            except BgpError as exc:
                log.warning("%s: stop: %s", self.name, exc)
        try:
            with self._write_lock:
                self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s: killing pid %d", self.name, self._process.pid)
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit; its return code."""
        return self._process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the process (tests: a node that dies without a word)."""
        self._process.kill()
        self._process.wait()
        self._reader.join(5)

    def __enter__(self) -> "BgpProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the reader thread ------------------------------------------------------------------------
    def _read(self) -> None:
        """Dispatch each line the process writes, reading what the pipe holds at a time (a line
        at a time cost a node agent ~10 us a line: 10k lines for 10k MACs)."""
        stdout, rest = self._process.stdout, b""
        try:
            while chunk := stdout.read1(READ_SIZE):
                *lines, rest = (rest + chunk).split(b"\n")
                for raw in lines:
                    self._dispatch(raw)
            if rest:
                self._dispatch(rest)
        except (OSError, ValueError) as exc:
            log.error("%s: reading stdout: %s", self.name, exc)
        try:
            reason = f"process exited with code {self._process.wait(5)}"
        except subprocess.TimeoutExpired:
            reason = "process closed its output"
        self._fail_pending(reason)

    def _dispatch(self, raw: bytes) -> None:
        if is_route_line(raw):
            try:
                self._deliver(decode_route_line(raw))
            except ProtocolError as exc:
                log.warning("%s: %s: %r", self.name, exc, raw[:200])
            return
        try:
            message = json.loads(raw)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError:
            log.error("%s: not a JSON object: %r", self.name, raw[:200])
            return
        if "reply" in message:
            reply = Reply(message["reply"], bool(message.get("ok")), message.get("result"),
                          str(message.get("error") or ""))
            with self._lock:
                waiting = self._pending.pop(reply.id, None)
                if waiting is not None:
                    waiting[0].answer(waiting[1], reply)
            if waiting is None:
                log.warning("%s: unexpected reply %r", self.name, message)
            return
        try:
            event = decode_event(message)
        except ProtocolError as exc:
            log.warning("%s: %s: %r", self.name, exc, message)
            return
        if isinstance(event, Ready):
            self._ready.set()
        else:
            self._deliver(event)

    def _deliver(self, event) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("%s: on_event failed for %r", self.name, event)

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            self._exit_reason = reason
            pending, self._pending = self._pending, {}
            for batch, index in pending.values():
                batch.answer(index, Reply(None, False, error=reason))
        self._ready.set()
