"""Local MACs the bridges learn from pod traffic (a pod that changes its own MAC), from netlink.

AF_BRIDGE RTM_NEWNEIGH/RTM_DELNEIGH events on Megalos pod ports only: a port's own address
(permanent) and entries on the VTEP (remote MACs) are not local pods.
"""
from __future__ import annotations

import errno
import logging
import socket
import threading

from pyroute2 import IPRoute

from cni import naming
from cni.netlink import (AF_BRIDGE, NTF_SELF, NUD_NOARP, NUD_PERMANENT, RTMGRP_NEIGH, SO_RCVBUFFORCE,
                         fdb_events)

log = logging.getLogger(__name__)


def _local_entry(family: int, ifindex: int, state: int, flags: int) -> bool:
    return family == AF_BRIDGE and not state & NUD_PERMANENT and not flags & NTF_SELF


def parse_neigh_events(data: bytes):
    """(present, ifindex, master ifindex or None, mac, static) per AF_BRIDGE neighbour message in
    one netlink datagram that is neither permanent (a port's own address) nor a `self` entry
    (the VTEP's remote entries). `static`: the entry ADD records for a pod's own MAC."""
    for event in fdb_events(data, _local_entry):
        if event.mac:
            yield event.present, event.ifindex, event.master or None, event.mac, bool(event.state & NUD_NOARP)


class MacWatch:
    """Calls on_mac(vni, mac, present, port ifindex, static) for MACs learned or forgotten on
    pod ports. Memory stays bounded whatever a pod sends: one datagram at a time, a cache of
    port VNIs (at most 4096 ports); what on_mac does with a flood is the caller's to bound."""

    def __init__(self, on_mac):
        self.on_mac = on_mac
        self._sock = None
        self._names = None  # made in the watching thread: pyroute2's sync sockets
        self._ready = threading.Event()  # belong to the thread (event loop) that made them
        self._vni_of_port: dict[int, int | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="macwatch", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def stop(self) -> None:
        self._stop.set()
        for sock in (self._sock, self._names):
            try:
                if sock is not None:
                    sock.close()
            except Exception:
                pass

    def _bridge_vni(self, index: int) -> int | None:
        try:
            bridge = self._names.get_links(index)[0]
        except Exception:
            return None
        return naming.vni_of_device(bridge.get_attr("IFLA_IFNAME") or "")

    def _port_vni(self, index: int, master: int | None) -> int | None:
        """The VNI whose bridge a pod port belongs to (cached: a port never changes bridge)."""
        if index in self._vni_of_port:
            return self._vni_of_port[index]
        try:
            link = self._names.get_links(index)[0]
        except Exception:
            # The port is gone (its pod's netns was deleted): its entries are being flushed.
            # The VTEP never goes before its bridge, so an entry on a vanished device of a
            # Megalos bridge was a pod's.
            return self._bridge_vni(master) if master else None
        vni = None
        if naming.is_port_name(link.get_attr("IFLA_IFNAME") or "") and link.get_attr("IFLA_MASTER"):
            vni = self._bridge_vni(link.get_attr("IFLA_MASTER"))
        if len(self._vni_of_port) > 4096:  # ports come and go: keep the cache bounded
            self._vni_of_port.clear()
        self._vni_of_port[index] = vni
        return vni

    def _run(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:  # a burst of learned (or installed) entries must not overflow it
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self._sock.bind((0, RTMGRP_NEIGH))
        self._sock.settimeout(1.0)
        self._names = IPRoute(groups=0)  # link lookups, never mixed with the event socket
        self._ready.set()
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # events lost; the watch itself goes on
                    log.warning("MAC watch: netlink events lost (receive buffer full)")
                    continue
                if not self._stop.is_set():
                    log.exception("MAC watch stopped")
                return
            for present, ifindex, master, mac, static in parse_neigh_events(data):
                vni = self._port_vni(ifindex, master)
                if vni is not None:
                    self.on_mac(vni, mac, present, ifindex, static)
