"""A rogue BGP peer: a real process that speaks raw BGP on a real TCP session, for the tests and
benchmarks of what a peer may send us (issue 10).

Run in a node's namespace, it either listens for the peer to dial it (our reflector dials the
nodes) or dials the peer (a node listens for its reflectors), completes the OPEN/KEEPALIVE
exchange (EVPN only), and then sends what it is told: EVPN UPDATEs built by bgp.evpn_wire, as
many and as fast as asked, with any next hop, originator, tunnel endpoint or sequence number.
Like a real speaker it sends everything it announced again on each new session. It reports
what happens on stdout, one JSON object per line: ``established``, ``notification`` (code,
subcode, data in hex: what the other side said when it closed the session), ``closed``, ``sent``.

    python -m lab.rogue_bgp --router-id 192.0.2.9 --peer 192.0.2.1 --listen 192.0.2.9 [--port 179]
    python -m lab.rogue_bgp --router-id 192.0.2.9 --peer 192.0.2.3 --connect [--port 179]
      [--asn 65000] [--hold-time 9] [--md5-password-file FILE]

Commands on stdin, one JSON object per line::

    {"op": "macs", "vni": 100, "count": 100000, "next_hop": "192.0.2.9", "seq": null, "tag": 1}
    {"op": "vtep", "vni": 100, "next_hop": "192.0.2.9", "originator": "192.0.2.9",
     "endpoint": "192.0.2.9"}

`RoguePeer` runs one and reads its reports.
"""
from __future__ import annotations

import argparse
import json
import queue
import socket
import struct
import subprocess
import sys
import threading
import time

from bgp import evpn_wire

TCP_MD5SIG = 14  # linux/tcp.h
OPEN, UPDATE, NOTIFICATION, KEEPALIVE = 1, 2, 3, 4


def _message(kind: int, body: bytes = b"") -> bytes:
    return evpn_wire.HEADER.pack(evpn_wire.MARKER, 19 + len(body), kind) + body


def open_message(asn: int, hold_time: int, router_id: str) -> bytes:
    """An OPEN offering L2VPN EVPN (multiprotocol capability) and route refresh."""
    capabilities = (struct.pack("!BBHBB", 1, 4, evpn_wire.AFI_L2VPN, 0, evpn_wire.SAFI_EVPN)
                    + struct.pack("!BB", 2, 0))
    params = struct.pack("!BB", 2, len(capabilities)) + capabilities
    return _message(OPEN, struct.pack("!BHH4sB", 4, asn, hold_time, socket.inet_aton(router_id),
                                      len(params)) + params)


def set_md5(sock: socket.socket, peer: str, password: str) -> None:
    """TCP MD5 (RFC 2385) with `peer`, as the kernel's struct tcp_md5sig wants it."""
    key = password.encode()
    address = struct.pack("=H", socket.AF_INET) + struct.pack("!H4s", 0, socket.inet_aton(peer))
    sock.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG,
                    address.ljust(128, b"\0") + struct.pack("=BBHi", 0, 0, len(key), 0)
                    + key.ljust(80, b"\0"))


def mac_updates(vni: int, count: int, next_hop: str, router_id: str, asn: int, tag: int = 1,
                seq: int | None = None, rd_index: int = 1) -> list[bytes]:
    """UPDATEs announcing `count` MACs (02:<tag>:<counter>) in `vni` behind `next_hop`."""
    rd = evpn_wire.route_distinguisher(router_id, rd_index)
    nlris = [evpn_wire.mac_nlri(rd, f"02:{tag:02x}:" + (i.to_bytes(4, "big").hex(":")), vni)
             for i in range(count)]
    return evpn_wire.announcements(next_hop, nlris, evpn_wire.extended_communities(asn, vni, seq))


def vtep_updates(vni: int, next_hop: str, originator: str, endpoint: str, router_id: str,
                 asn: int, rd_index: int = 1) -> list[bytes]:
    rd = evpn_wire.route_distinguisher(router_id, rd_index)
    return evpn_wire.announcements(next_hop, [evpn_wire.imet_nlri(rd, originator)],
                                   evpn_wire.extended_communities(asn, vni),
                                   evpn_wire.pmsi_ingress_replication(vni, endpoint))


class Speaker:
    """The process's one session at a time, and everything it announced."""

    def __init__(self, args):
        self.args = args
        self.password = ""
        if args.md5_password_file:
            with open(args.md5_password_file, encoding="utf-8") as f:
                self.password = f.read().rstrip("\n")
        self.table: list[bytes] = []          # every UPDATE announced, sent again on each session
        self.lock = threading.Lock()
        self._reporting = threading.Lock()    # one report a line: threads report at once
        self.sock: socket.socket | None = None
        self.established = False

    def report(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, "time": time.time(), **fields}) + "\n"
        with self._reporting:  # print() writes the text and the newline apart: lines interleaved
            sys.stdout.write(line)
            sys.stdout.flush()

    def announce(self, updates: list[bytes]) -> None:
        with self.lock:
            self.table += updates
            if self.established:
                self._send(updates)

    def _send(self, updates: list[bytes]) -> None:
        try:
            self.sock.sendall(b"".join(updates))
            self.report("sent", updates=len(updates))
        except OSError as exc:
            self.report("send_failed", error=str(exc))

    def connections(self):
        """Each session's socket, for ever (listen: the peer's next connection; connect: dial
        again a second after a session ends)."""
        args = self.args
        if args.connect:
            while True:
                sock = socket.socket()
                if self.password:
                    set_md5(sock, args.peer, self.password)
                try:
                    sock.connect((args.peer, args.port))
                except OSError as exc:
                    self.report("connect_failed", error=str(exc))
                    sock.close()
                    time.sleep(1)
                    continue
                yield sock
                time.sleep(1)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.password:
            set_md5(listener, args.peer, self.password)
        listener.bind((args.listen, args.port))
        listener.listen(4)
        self.report("listening", port=args.port)
        while True:
            sock, (address, _) = listener.accept()
            if address != args.peer:
                sock.close()
                continue
            yield sock

    def session(self, sock: socket.socket) -> None:
        args = self.args
        self.sock = sock
        sock.sendall(open_message(args.asn, args.hold_time, args.router_id))
        keepalives = threading.Thread(target=self._keepalives, args=(sock,), daemon=True)
        keepalives.start()
        buffer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                buffer += data
                while len(buffer) >= 19 and len(buffer) >= int.from_bytes(buffer[16:18], "big"):
                    length = int.from_bytes(buffer[16:18], "big")
                    message, buffer = buffer[:length], buffer[length:]
                    self._handle(sock, message)
        except OSError as exc:
            self.report("error", error=str(exc))
        finally:
            with self.lock:
                self.established = False
            sock.close()
            self.report("closed")

    def _handle(self, sock: socket.socket, message: bytes) -> None:
        kind = message[18]
        if kind == OPEN:
            with self.lock:
                sock.sendall(_message(KEEPALIVE))
        elif kind == KEEPALIVE and not self.established:
            with self.lock:
                self.established = True
                self.report("established")
                if self.table:
                    self._send(self.table)
        elif kind == NOTIFICATION:
            self.report("notification", code=message[19], subcode=message[20], data=message[21:].hex())

    def _keepalives(self, sock: socket.socket) -> None:
        while sock.fileno() >= 0:
            time.sleep(max(1, self.args.hold_time // 3))
            try:
                with self.lock:  # never inside another message
                    sock.sendall(_message(KEEPALIVE))
            except OSError:
                return

    def commands(self) -> None:
        args = self.args
        for line in sys.stdin:
            if not line.strip():
                continue
            command = json.loads(line)
            op = command.pop("op")
            if op == "macs":
                updates = mac_updates(router_id=args.router_id, asn=args.asn, **command)
            elif op == "vtep":
                updates = vtep_updates(router_id=args.router_id, asn=args.asn, **command)
            else:
                self.report("error", error=f"unknown op {op!r}")
                continue
            self.announce(updates)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.rogue_bgp", description=__doc__.splitlines()[0])
    p.add_argument("--router-id", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--listen", default="", metavar="ADDRESS", help="wait for the peer to dial here")
    p.add_argument("--connect", action="store_true", help="dial the peer")
    p.add_argument("--port", type=int, default=179)
    p.add_argument("--asn", type=int, default=65000)
    p.add_argument("--hold-time", type=int, default=9)
    p.add_argument("--md5-password-file", default="")
    args = p.parse_args(argv)
    if bool(args.listen) == args.connect:
        p.error("give exactly one of --listen ADDRESS and --connect")
    speaker = Speaker(args)
    threading.Thread(target=speaker.commands, daemon=True).start()
    for sock in speaker.connections():
        speaker.session(sock)
    return 0


class RoguePeer:
    """A rogue peer process in a namespace (`netns`), its reports gathered as they come."""

    def __init__(self, netns: str, *args: str):
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "lab.rogue_bgp", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.reports: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.reports.put(json.loads(line))

    def send(self, op: str, **fields) -> None:
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()

    def wait_for(self, event: str, timeout: float = 15.0, **fields) -> dict:
        """The first report of `event` (with these fields) not waited for before."""
        deadline = time.monotonic() + timeout
        while True:
            for i, report in enumerate(self.seen):
                if report["event"] == event and fields.items() <= report.items():
                    return self.seen.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event} {fields} within {timeout} s; saw {self.seen}")
            try:
                self.seen.append(self.reports.get(timeout=left))
            except queue.Empty:
                pass

    def events(self, event: str) -> list[dict]:
        """Every report of `event` so far (not waited for), without waiting."""
        while True:
            try:
                self.seen.append(self.reports.get_nowait())
            except queue.Empty:
                break
        return [r for r in self.seen if r["event"] == event]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def __enter__(self) -> "RoguePeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
