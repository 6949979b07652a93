"""The BGP process: `python -m bgp.process`, os-ken's BGPSpeaker driven by bgp.protocol's JSON lines.

One process holds one BGP speaker (os-ken's core is a per-process singleton), in one of two roles:
`speaker` on a node (originates a VTEP route per local VNI and a MAC route per local MAC; reports
the routes of other nodes) or `reflector` (every peer is a route reflector client; it originates
nothing and reports every route it reflects). Routes this process originates, and routes whose
VTEP is its own router id, produce no events. Events cover every VNI: the agent filters.

A process of its own because os-ken needs eventlet's monkey patching (its native hub stalls
after a few hundred routes) and pyroute2 does not work in a patched process. Importing this
module loads neither: `main()` sets OSKEN_HUB_TYPE=eventlet and patches first, then imports
os-ken. Commands are applied one at a time, in order; the routes the commands of one read
originate go out together (`BgpService.flush`); events are written in bursts.
"""
from __future__ import annotations

import logging
import os
import stat
import sys
import warnings

from bgp.protocol import ProtocolError, Ready, Reply, decode_command, encode_event

log = logging.getLogger("megalos.bgp.process")


class LineWriter:
    """Writes lines to a file descriptor from one green thread, in order.

    Emitting never blocks the hub: a slow reader delays only the writer (the fd should be
    non-blocking). Once the reader is gone (EPIPE), the rest is dropped: eventlet's green
    `os.write` would retry EPIPE forever, so this uses the original `os.write`.
    """

    MAX_LINES_PER_WRITE = 256

    def __init__(self, fd: int, eventlet):
        from eventlet import hubs, patcher
        self._fd = fd
        self._write = patcher.original("os").write
        self._wait_writable = lambda: hubs.trampoline(fd, write=True)
        self._broken = False
        self._queue = eventlet.queue.Queue()
        self._thread = eventlet.spawn(self._run)

    def emit(self, line: bytes) -> None:
        self._queue.put(line)

    def drain(self) -> None:
        """Wait until everything emitted so far is written (or dropped)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            lines = [self._queue.get()]
            # What queued up meanwhile goes in the same write: one system call per burst.
            while len(lines) < self.MAX_LINES_PER_WRITE and not self._queue.empty():
                lines.append(self._queue.get_nowait())
            try:
                if not self._broken:
                    self._write_all(b"".join(lines))
            except OSError as exc:
                self._broken = True
                log.error("cannot write to stdout, dropping output: %s", exc)
            finally:
                for _ in lines:
                    self._queue.task_done()

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self._write(self._fd, view):]
            except BlockingIOError:
                self._wait_writable()


def make_nonblocking_if_private(fd: int) -> None:
    """O_NONBLOCK on our stdout pipe, so a full pipe never blocks the hub; only when it is a pipe
    not shared with stderr (O_NONBLOCK belongs to the open file; logging does not expect EAGAIN)."""
    out = os.fstat(fd)
    if not stat.S_ISFIFO(out.st_mode):
        return
    try:
        err = os.fstat(2)
    except OSError:
        err = None
    if err is not None and (err.st_dev, err.st_ino) == (out.st_dev, out.st_ino):
        return
    os.set_blocking(fd, False)


def serve(service, writer: LineWriter, in_fd: int = 0) -> None:
    """Read commands from `in_fd` and apply them until stop or end of input."""
    pending = b""
    while not service.stopped:
        chunk = os.read(in_fd, 65536)  # green
        if not chunk:
            log.info("stdin closed: stopping")
            service.stop()
            return
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if service.stopped:
                break
            if not line.strip():
                continue
            try:
                command_id, command = decode_command(line)
            except ProtocolError as exc:
                writer.emit(Reply(exc.command_id, False, error=str(exc)).encode())
                continue
            writer.emit(service.handle(command_id, command).encode())
        service.flush()  # the end of what one read brought: its routes go out together


class OsKen:
    """The os-ken names the service uses, imported after monkey patching."""

    def __init__(self, eventlet):
        from os_ken.lib.packet.bgp import RF_L2_EVPN
        from os_ken.services.protocols.bgp import bgpspeaker
        from os_ken.services.protocols.bgp.core_manager import CORE_MANAGER
        from os_ken.services.protocols.bgp.peer import PeerCounterNames

        from bgp import osken_compat, osken_fastpath, osken_guard, osken_origin
        from bgp.peer_rules import Backoff

        osken_compat.apply_all()
        osken_fastpath.apply_both_roles()
        osken_guard.apply()
        self.compat = osken_compat
        self.fastpath = osken_fastpath
        self.origin = osken_origin
        self.guard = osken_guard
        self.Backoff = Backoff
        self.bgpspeaker = bgpspeaker
        self.CORE_MANAGER = CORE_MANAGER
        self.PeerCounterNames = PeerCounterNames
        self.RF_L2_EVPN = RF_L2_EVPN
        self.sleep = eventlet.sleep


def main() -> int:
    os.environ["OSKEN_HUB_TYPE"] = "eventlet"
    # Peers are addresses, never names: eventlet's green resolver (dnspython, and through it
    # cryptography) is ~17 MiB of every BGP process for nothing (tests/test_bgp.py).
    os.environ["EVENTLET_NO_GREENDNS"] = "yes"
    warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")
    import eventlet
    eventlet.monkey_patch()
    import eventlet.queue

    from bgp.service import BgpService

    logging.basicConfig(stream=sys.stderr, level=os.environ.get("MEGALOS_BGP_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s bgp[%(process)d] %(levelname)s %(name)s: %(message)s")
    # One INFO line per API call, neighbour (TCP MD5) passwords included: never, whatever the level.
    logging.getLogger("bgpspeaker.api.base").setLevel(logging.WARNING)
    make_nonblocking_if_private(1)
    writer = LineWriter(1, eventlet)
    service = BgpService(OsKen(eventlet), lambda event: writer.emit(encode_event(event)))
    writer.emit(encode_event(Ready(os.getpid())))
    try:
        serve(service, writer)
    finally:
        service.stop()
        writer.drain()
    return 0


if __name__ == "__main__":
    sys.exit(main())
