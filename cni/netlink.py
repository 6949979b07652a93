"""Route netlink for the node agent: a small message codec and a plain AF_NETLINK socket.

The one netlink stack of the agent: the datapath (links, a port's FDB entries), the FDB writer
(speaker.fdb: VTEP entries in batches, dumps for reconcile) and the MAC watch (speaker.macwatch:
FDB events) all speak through it. pyroute2 serves only the tests, as the reference encoder.

Why not pyroute2 (measured on this machine): a request through pyroute2 0.9's synchronous
IPRoute costs ~1 ms, most of it its asyncio machinery; the same request on a plain socket
~0.05 ms. pyroute2's message classes alone are slow too: encoding the veth request takes
~0.4 ms, decoding one link message ~0.25 ms (it decodes every statistics block), one FDB entry
~0.1 ms (a VTEP holding 10k remote MACs is 20k entries to read). The codec below builds the
few requests the agent sends and reads the few attributes it needs, in ~0.01-0.02 ms each
(a few us for an FDB entry); tests/test_netlink.py checks its bytes against pyroute2's encoder.

The codec (the `attr`/`*_body` builders and the parsers) is pure: bytes in, bytes or values
out. `Netlink` is the socket: one request and its replies, a batch of requests many per
datagram, a dump, or the events of multicast groups; the kernel's refusal as `NetlinkError`
(an OSError carrying the errno, what cni.plugin maps to CNI codes). Requests use the kernel's
strict checking (NETLINK_GET_STRICT_CHK), which also makes dumps filterable by the kernel: the
links of one bridge, the FDB entries of one port or one VTEP.

One module of ~500 lines, on purpose: the codec and the socket share the kernel ABI (the
constants and structs every user imports from here); the codec comes first and knows no
socket, the `Netlink` class at the end does all the I/O.
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["NetlinkError", "Netlink", "Link", "FdbEntry", "Address", "Request", "attr",
           "link_body", "fdb_body", "fdb_events"]

# -- kernel ABI: linux/netlink.h, rtnetlink.h, if_link.h, neighbour.h, if_addr.h ---------------
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10         # errors carry the request's header only, not the whole request
NETLINK_EXT_ACK = 11         # errors carry the kernel's message ("extack")
NETLINK_GET_STRICT_CHK = 12  # dump requests are validated, and their filters honoured
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_ECHO = 0x1, 0x2, 0x4, 0x8
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
NLM_F_ACK_TLVS = 0x200       # on an error: extack attributes follow
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF
NLA_F_NESTED = 0x8000

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_GETADDR = 22
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTMGRP_NEIGH = 0x4           # the multicast group of neighbour (and FDB) events
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
AF_BRIDGE = 7
IFF_UP = 0x1
NTF_SELF, NTF_MASTER, NTF_EXT_LEARNED, NTF_STICKY = 0x02, 0x04, 0x10, 0x40
NUD_REACHABLE, NUD_NOARP, NUD_PERMANENT = 0x02, 0x40, 0x80

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_PROTINFO, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD = 12, 18, 20, 28
IFLA_BRPORT_LEARNING = 8
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BR_NF_CALL_IPTABLES, IFLA_BR_NF_CALL_IP6TABLES, IFLA_BR_NF_CALL_ARPTABLES = 36, 37, 38
IFLA_BR_FDB_N_LEARNED, IFLA_BR_FDB_MAX_LEARNED = 48, 49  # Linux 6.8+; older kernels ignore them
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING = 1, 3, 4, 7
IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6 = 15, 17
NDA_DST, NDA_LLADDR, NDA_MASTER = 1, 2, 9
IFA_ADDRESS = 1

_HEADER = struct.Struct("=IHHII")    # nlmsghdr: length, type, flags, sequence, port id
_ATTR = struct.Struct("=HH")         # nlattr: length, type
_IFINFO = struct.Struct("=BxHiII")   # ifinfomsg: family, type, index, flags, change
_NDMSG = struct.Struct("=B3xiHBB")   # ndmsg: family, ifindex, state, flags, type
_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_SOCK_FPROG = struct.Struct("@HP")     # struct sock_fprog: length, pointer to the program
_IFADDR = struct.Struct("=BBBBI")    # ifaddrmsg: family, prefix length, flags, scope, index
_LLADDR = _ATTR.pack(_ATTR.size + 6, NDA_LLADDR)  # the header of a MAC attribute
_ERROR = struct.Struct("=i")
_U32 = struct.Struct("=I")
_BE16 = struct.Struct("!H")
_RECV_SIZE = 1 << 16  # the kernel fills at most ~32 KiB per read
_ACK_SIZE = 1024      # what one ACK (or error with its extack) takes of the receive buffer


# -- building requests ----------------------------------------------------------------------
def attr(kind: int, value: bytes | str | int | list) -> bytes:
    """One attribute. bytes go as they are, str NUL-terminated, int as u32, a list of
    attributes nested."""
    if isinstance(value, str):
        payload = value.encode() + b"\0"
    elif isinstance(value, int):
        payload = _U32.pack(value)
    elif isinstance(value, list):
        payload = b"".join(value)
    else:
        payload = bytes(value)
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ip(text: str) -> bytes:
    """An IPv4 or IPv6 address, packed (inet_pton: ~0.3 us, ipaddress ~3 us; the FDB writer
    packs one per remote MAC)."""
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def u8(value: int) -> bytes:
    return bytes((value,))


def be16(value: int) -> bytes:
    return _BE16.pack(value)


def link_body(index: int = 0, name: str = "", up: bool = False, attrs: list | None = None) -> bytes:
    """An ifinfomsg addressing a link by index or name (`up`: set IFF_UP), with attributes."""
    flags = IFF_UP if up else 0
    return (_IFINFO.pack(0, 0, index, flags, flags) + (attr(IFLA_IFNAME, name) if name else b"")
            + b"".join(attrs or []))


def linkinfo(kind: str, data: list) -> bytes:
    return attr(IFLA_LINKINFO, [attr(IFLA_INFO_KIND, kind), attr(IFLA_INFO_DATA, data)])


def addr_body(index: int = 0) -> bytes:
    return _IFADDR.pack(0, 0, 0, 0, index)


def message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HEADER.pack(_HEADER.size + len(body), msg_type, flags, seq, 0) + body


# -- reading replies ------------------------------------------------------------------------
def attributes(data: bytes, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """Netlink attributes in data[start:end], by type (the last one wins); values unparsed."""
    end = len(data) if end is None else end
    found = {}
    while start + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < _ATTR.size or start + length > end:
            break
        found[kind & NLA_TYPE_MASK] = data[start + _ATTR.size:start + length]
        start += (length + 3) & ~3
    return found


def _u32(attrs: dict, kind: int) -> int:
    value = attrs.get(kind)
    return _U32.unpack(value[:4])[0] if value is not None and len(value) >= 4 else 0


def _text(value: bytes | None) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace") if value else ""


def _mac_text(value: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in value) if value else ""


@dataclass(frozen=True)
class Link:
    """The parts of an RTM_NEWLINK message the datapath reads."""

    index: int
    flags: int
    name: str
    mtu: int
    master: int      # 0: not enslaved
    peer: int        # IFLA_LINK: a veth's peer ifindex (in the peer's netns); 0 if none
    address: str
    kind: str        # IFLA_INFO_KIND: 'bridge', 'vxlan', 'veth'; '' for none
    alias: str = ""  # IFLA_IFALIAS ('ip link set DEV alias TEXT'); '' for none
    info: dict = field(default_factory=dict, compare=False)  # IFLA_INFO_DATA, raw by type

    @classmethod
    def parse(cls, msg: bytes) -> "Link":
        _, _, index, flags, _ = _IFINFO.unpack_from(msg, _HEADER.size)
        attrs = attributes(msg, _HEADER.size + _IFINFO.size)
        nested = attributes(attrs.get(IFLA_LINKINFO, b""))
        return cls(index=index, flags=flags, name=_text(attrs.get(IFLA_IFNAME)),
                   mtu=_u32(attrs, IFLA_MTU), master=_u32(attrs, IFLA_MASTER),
                   peer=_u32(attrs, IFLA_LINK), address=_mac_text(attrs.get(IFLA_ADDRESS)),
                   kind=_text(nested.get(IFLA_INFO_KIND)), alias=_text(attrs.get(IFLA_IFALIAS)),
                   info=attributes(nested.get(IFLA_INFO_DATA, b"")))

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    def vxlan(self) -> tuple[int, int, str]:
        """(VNI, UDP port, local address) of a VXLAN device."""
        local = self.info.get(IFLA_VXLAN_LOCAL) or self.info.get(IFLA_VXLAN_LOCAL6)
        port = self.info.get(IFLA_VXLAN_PORT)
        return (_u32(self.info, IFLA_VXLAN_ID), _BE16.unpack(port[:2])[0] if port else 0,
                str(ipaddress.ip_address(bytes(local))) if local else "")


# -- bridge FDB entries: one struct, one encoder, one parser ---------------------------------
class FdbEntry(NamedTuple):
    """One bridge FDB entry (an AF_BRIDGE neighbour): what a request writes, and what a dump
    or an event reads. A NamedTuple: a VTEP's dump makes 20k of them for 10k remote MACs."""

    ifindex: int     # the port (or the VXLAN device, for its `self` entries)
    mac: str = ""    # NDA_LLADDR; '' if none
    dst: str = ""    # NDA_DST: a VXLAN entry's remote VTEP; '' if none
    state: int = 0   # NUD_*
    flags: int = 0   # NTF_*
    master: int = 0  # NDA_MASTER: the bridge, on entries of the bridge's own FDB; 0 if none

    @classmethod
    def parse(cls, msg: bytes) -> "FdbEntry | None":
        """The entry of one neighbour message; None if it is not an AF_BRIDGE one."""
        return _fdb_entry(msg, 0, len(msg))


def fdb_body(entry: FdbEntry) -> bytes:
    """The ndmsg of a request about `entry`, with the attributes it sets (MAC, destination,
    master). As a dump's filter: the port's ifindex, or the bridge as `master`, alone."""
    ifindex, lladdr, dst, state, flags, master = entry
    body = _NDMSG.pack(AF_BRIDGE, ifindex, state, flags, 0)
    if lladdr:  # attr() spelled out for the two fixed-size ones: 20k requests for 10k MACs
        body += _LLADDR + mac(lladdr) + b"\0\0"
    if dst:
        packed = ip(dst)
        body += _ATTR.pack(_ATTR.size + len(packed), NDA_DST) + packed
    if master:
        body += attr(NDA_MASTER, master)
    return body


# The same rule in the kernel, as a classic BPF program run on each event before it is queued
# (SO_ATTACH_FILTER): a node's agent installs two VTEP entries (`self`) per remote MAC, and
# reading and dropping their events was two thirds of its MAC watch (10k MACs: ~0.1 s of CPU).
# (code, jt, jf, k): load a byte of the ndmsg, test it, keep the message (all of it) or drop it.
_LDB, _JEQ, _JSET, _RET = 0x30, 0x15, 0x45, 0x06
_NDM_FAMILY, _NDM_FLAGS = _HEADER.size, _HEADER.size + 10
_NDM_STATE_LOW = _HEADER.size + (8 if sys.byteorder == "little" else 9)   # the u16's low byte
BRIDGE_ENTRY_FILTER = (
    (_LDB, 0, 0, _NDM_FAMILY), (_JEQ, 0, 5, AF_BRIDGE),              # not AF_BRIDGE: drop
    (_LDB, 0, 0, _NDM_STATE_LOW), (_JSET, 3, 0, NUD_PERMANENT),      # little-endian state
    (_LDB, 0, 0, _NDM_FLAGS), (_JSET, 1, 0, NTF_SELF),
    (_RET, 0, 0, 0xFFFFFFFF), (_RET, 0, 0, 0))


def bridge_entry(ifindex: int, state: int, flags: int) -> bool:
    """A `want` filter: an entry of a bridge's own table for a MAC behind one of its ports
    (static or learned), neither a port's own address (permanent) nor an entry of a device's
    own table (`self`: a VTEP's remote MACs)."""
    return not state & NUD_PERMANENT and not flags & NTF_SELF


Want = Callable[[int, int, int], bool]  # want(ifindex, state, flags): read this entry?


def _fdb_entry(data: bytes, at: int, end: int, want: Want | None = None) -> FdbEntry | None:
    """The FdbEntry of the neighbour message in data[at:end]; None if it is not AF_BRIDGE or
    `want` refuses it (its attributes are then never read). Plain struct reads: ~2 us an entry,
    against ~5 through `attributes` and a dataclass and ~100 with pyroute2."""
    family, ifindex, state, flags, _ = _NDMSG.unpack_from(data, at + _HEADER.size)
    if family != AF_BRIDGE or (want is not None and not want(ifindex, state, flags)):
        return None
    mac = dst = ""
    master = 0
    at += _HEADER.size + _NDMSG.size
    while at + _ATTR.size <= end:
        alen, atype = _ATTR.unpack_from(data, at)
        if alen < _ATTR.size:
            break
        if atype == NDA_LLADDR and alen == 10:
            mac = data[at + 4:at + 10].hex(":")
        elif atype == NDA_MASTER and alen == 8:
            master = _U32.unpack_from(data, at + 4)[0]
        elif atype == NDA_DST and alen in (8, 20):
            dst = socket.inet_ntop(socket.AF_INET if alen == 8 else socket.AF_INET6,
                                   data[at + 4:at + alen])
        at += (alen + 3) & ~3
    return FdbEntry(ifindex, mac, dst, state, flags, master)


def fdb_events(data: bytes, want: Want | None = None) -> Iterator[tuple[bool, FdbEntry]]:
    """(present, entry) for each bridge FDB change in one datagram read from an RTMGRP_NEIGH
    socket: RTM_NEWNEIGH present, RTM_DELNEIGH gone. Other neighbours (ARP, NDP) and the
    entries `want` refuses are skipped unread. A watch sees every FDB change of its node
    (20,000 for 10k remote MACs, the agent's own installs included)."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind = _HEADER.unpack_from(data, offset)[:2]
        if length < _HEADER.size or offset + length > len(data):
            return
        if kind in (RTM_NEWNEIGH, RTM_DELNEIGH) and length >= _HEADER.size + _NDMSG.size:
            entry = _fdb_entry(data, offset, offset + length, want)
            if entry is not None:
                yield kind == RTM_NEWNEIGH, entry
        offset += (length + 3) & ~3


# One request of a batch (Netlink.batch): (message type, flags beyond NLM_F_REQUEST |
# NLM_F_ACK, body). A plain tuple: a NamedTuple's constructor would add a quarter to the
# encoding of each FDB request (~0.7 us), and 10k remote MACs are 20k requests.
Request = tuple[int, int, bytes]


@dataclass(frozen=True)
class Address:
    index: int
    scope: int
    address: str

    @classmethod
    def parse(cls, msg: bytes) -> "Address":
        _, _, _, scope, index = _IFADDR.unpack_from(msg, _HEADER.size)
        value = attributes(msg, _HEADER.size + _IFADDR.size).get(IFA_ADDRESS)
        return cls(index, scope, str(ipaddress.ip_address(bytes(value))) if value else "")


# -- errors ---------------------------------------------------------------------------------
class NetlinkError(OSError):
    """The kernel refused a request: `errno` (also as `code`, pyroute2's name for it) and its
    text, with the kernel's own message (extack) when it gives one."""

    def __init__(self, code: int, text: str = ""):
        super().__init__(code, text or os.strerror(code))

    @property
    def code(self) -> int:
        return self.errno


def error_of(msg: bytes) -> NetlinkError | None:
    """The error an NLMSG_ERROR (or a dump's NLMSG_DONE) carries; None for an ACK."""
    length, _, flags, _, _ = _HEADER.unpack_from(msg)
    code = -_ERROR.unpack_from(msg, _HEADER.size)[0] if length >= _HEADER.size + 4 else 0
    if not code:
        return None
    text = os.strerror(code)
    if flags & NLM_F_ACK_TLVS:  # with NETLINK_CAP_ACK: the error, the request's header, TLVs
        extack = _text(attributes(msg, _HEADER.size + 4 + _HEADER.size).get(NLMSGERR_ATTR_MSG))
        text = f"{text}: {extack}" if extack else text
    return NetlinkError(code, text)


# -- the socket -----------------------------------------------------------------------------
class Netlink:
    """A NETLINK_ROUTE socket in the network namespace of the thread that made it.

    Not thread-safe: one request at a time (its users hold a lock around it). `groups`: the
    multicast groups whose events `receive` reads (RTMGRP_NEIGH); `rcvbuf`: a receive buffer
    of at least that many bytes, for bursts of events or of a batch's ACKs.
    """

    def __init__(self, groups: int = 0, rcvbuf: int = 0):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        try:
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
                self._sock.setsockopt(SOL_NETLINK, option, 1)
            if rcvbuf:
                try:  # past net.core.rmem_max (needs CAP_NET_ADMIN)
                    self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
                except OSError:
                    self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._sock.bind((0, groups))
            # The ACKs of one batch datagram are queued before any is read: what fits.
            self._acks_fit = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // _ACK_SIZE
        except OSError:
            self._sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def keep_only(self, program: Sequence[tuple[int, int, int, int]]) -> None:
        """Have the kernel drop the events that classic BPF `program` refuses before they are
        queued (SO_ATTACH_FILTER; e.g. BRIDGE_ENTRY_FILTER)."""
        code = b"".join(_SOCK_FILTER.pack(*instruction) for instruction in program)
        buffer = ctypes.create_string_buffer(code, len(code))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                              _SOCK_FPROG.pack(len(program), ctypes.addressof(buffer)))

    def __enter__(self) -> "Netlink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, msg_type: int, flags: int, body: bytes) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._sock.send(message(msg_type, flags, self._seq, body))
        return self._seq

    def _received(self):
        """(datagram, offset, length, type, sequence) of each message the socket reads, with
        no end: the caller stops when it has what it waits for."""
        while True:
            data = self._sock.recv(_RECV_SIZE)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise NetlinkError(errno.EBADMSG, "truncated netlink message")
                yield data, offset, length, kind, seq
                offset += (length + 3) & ~3

    def _replies(self, seq: int):
        """Yield each message answering request `seq` (bytes) until its ACK or NLMSG_DONE;
        raise the kernel's error as NetlinkError."""
        for data, offset, length, kind, msg_seq in self._received():
            if msg_seq != seq:
                continue  # a late answer to an earlier request
            msg = data[offset:offset + length]
            if kind in (NLMSG_ERROR, NLMSG_DONE):
                error = error_of(msg)
                if error is not None:
                    raise error
                return
            yield msg

    def request(self, msg_type: int, body: bytes, flags: int = 0) -> list[bytes]:
        """Send one request and wait for its ACK; the messages the kernel sent before it (the
        object asked for, or with NLM_F_ECHO the notification of what the request made)."""
        return list(self._replies(self._send(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, body)))

    def dump(self, msg_type: int, body: bytes):
        """Yield every message of a dump. Stop early only on a socket used for nothing else
        (the unread rest of the dump stays queued on it)."""
        yield from self._replies(self._send(msg_type, NLM_F_REQUEST | NLM_F_DUMP, body))

    def batch(self, requests: Sequence[Request], per_send: int = 256) -> dict[int, int]:
        """Send the requests up to `per_send` to a datagram (fewer if their ACKs would not fit
        the receive buffer), each with its own ACK, and wait for every ACK; {position in
        requests: errno} of those the kernel refused. The kernel takes the requests of a
        datagram one by one: a refused one does not stop the others. Measured for FDB
        entries (bench/fdb.py): ~10 us of CPU a request, the kernel's share included, against
        ~1 ms through pyroute2's IPRoute."""
        per_send = max(1, min(per_send, self._acks_fit))
        errors: dict[int, int] = {}
        for start in range(0, len(requests), per_send):
            chunk = requests[start:start + per_send]
            if self._seq + len(chunk) > 0xFFFFFFFF:
                self._seq = 0
            first = self._seq + 1
            self._sock.send(b"".join(message(kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq, body)
                                     for seq, (kind, flags, body) in enumerate(chunk, first)))
            self._seq = last = first + len(chunk) - 1
            waiting = len(chunk)
            for data, offset, _, kind, seq in self._received():
                if kind == NLMSG_ERROR and first <= seq <= last:
                    code = -_ERROR.unpack_from(data, offset + _HEADER.size)[0]
                    if code:
                        errors[start + seq - first] = code
                    waiting -= 1
                    if not waiting:
                        break
        return errors

    def receive(self, timeout: float | None = None) -> bytes:
        """One datagram of the events of this socket's `groups` (read it with fdb_events);
        b'' if none came within `timeout` seconds. OSError ENOBUFS: the kernel dropped events
        (the receive buffer was full). For event sockets only: the timeout stays set."""
        self._sock.settimeout(timeout)
        try:
            return self._sock.recv(_RECV_SIZE)
        except TimeoutError:
            return b""

    # -- links -----------------------------------------------------------------------------
    def link(self, name: str = "", index: int = 0) -> Link | None:
        """One link by name or index; None if there is no such link."""
        try:
            (reply,) = self.request(RTM_GETLINK, link_body(index=index, name=name))
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        return Link.parse(reply)

    def links(self, master: int = 0):
        """Every link, or (filtered by the kernel) the ports of bridge `master`."""
        body = link_body(attrs=[attr(IFLA_MASTER, master)] if master else [])
        return (Link.parse(msg) for msg in self.dump(RTM_GETLINK, body))

    def create_link(self, name: str, body: bytes) -> int:
        """Create link `name` (never replacing one) from an ifinfomsg body; its ifindex."""
        for reply in self.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO):
            if _HEADER.unpack_from(reply)[1] == RTM_NEWLINK:  # the echo (kernel 6.1 and later)
                link = Link.parse(reply)
                if link.name == name:
                    return link.index
        link = self.link(name=name)  # older kernels: ask
        if link is None:
            raise NetlinkError(errno.ENODEV, f"{name} vanished right after its creation")
        return link.index

    def set_link(self, body: bytes) -> None:
        self.request(RTM_NEWLINK, body)

    def set_bridge_port_learning(self, index: int, learning: bool) -> None:
        """Turn MAC learning of bridge port `index` on or off (`bridge link set learning`)."""
        body = (_IFINFO.pack(AF_BRIDGE, 0, index, 0, 0)
                + attr(IFLA_PROTINFO | NLA_F_NESTED, [attr(IFLA_BRPORT_LEARNING, u8(int(learning)))]))
        self.request(RTM_SETLINK, body)

    def delete_link(self, name: str = "", index: int = 0) -> bool:
        """Delete a link; False if it was already gone."""
        try:
            self.request(RTM_DELLINK, link_body(index=index, name=name))
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise

    # -- bridge FDB, addresses -------------------------------------------------------------
    def fdb(self, port: int, want: Want | None = None) -> Iterator[FdbEntry]:
        """The FDB entries on one bridge port, or of one VXLAN device (filtered by the kernel);
        with `want`, only those it accepts (the others are never parsed)."""
        for msg in self.dump(RTM_GETNEIGH, fdb_body(FdbEntry(port))):
            entry = _fdb_entry(msg, 0, len(msg), want)
            if entry is not None:
                yield entry

    def fdb_get(self, bridge: int, lladdr: str) -> FdbEntry | None:
        """The entry of `lladdr` in bridge `bridge`'s own FDB (`bridge fdb get`), or None."""
        try:
            (reply,) = self.request(RTM_GETNEIGH, fdb_body(FdbEntry(0, lladdr, master=bridge)))
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                return None
            raise
        return FdbEntry.parse(reply)

    def fdb_replace(self, entry: FdbEntry) -> None:
        """`bridge fdb replace`: write the entry, whether or not it exists."""
        self.request(RTM_NEWNEIGH, fdb_body(entry), NLM_F_CREATE | NLM_F_REPLACE)

    def addresses(self, index: int = 0):
        """Every address, or (filtered by the kernel) those of link `index`."""
        return (Address.parse(msg) for msg in self.dump(RTM_GETADDR, addr_body(index)))
