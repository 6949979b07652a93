"""Local MACs the bridges learn from pod traffic (a pod that changes its own MAC), from netlink.

AF_BRIDGE RTM_NEWNEIGH/RTM_DELNEIGH events (cni.netlink's event socket and parser) on Megalos
pod ports only: a port's own address (permanent) and a VTEP's entries (remote MACs, `self`)
are not local pods. A port's VNI is resolved as the datapath resolves it (cni.datapath.port_vni).
"""
from __future__ import annotations

import errno
import logging
import threading

from cni.datapath import bridge_vni, port_vni
from cni.netlink import BRIDGE_ENTRY_FILTER, NUD_NOARP, RTMGRP_NEIGH, Netlink, bridge_entry, fdb_events

log = logging.getLogger(__name__)
_EVENTS_RCVBUF = 32 << 20  # a burst of learned (or installed) entries must not overflow it
_PORT_CACHE = 4096


class MacWatch:
    """Calls on_mac(vni, mac, present, port ifindex, static) for MACs learned or forgotten on
    pod ports (`static`: the entry ADD records for a pod's own MAC). Memory stays bounded
    whatever a pod sends: one datagram at a time, a cache of port VNIs (at most 4096 ports);
    what on_mac does with a flood is the caller's to bound."""

    def __init__(self, on_mac):
        self.on_mac = on_mac
        self._events: Netlink | None = None
        self._links: Netlink | None = None  # lookups, never mixed with the event socket
        self._vni_of_port: dict[int, int | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="macwatch", daemon=True)

    def start(self) -> None:
        """Open the sockets, in the network namespace of the calling thread, and watch."""
        self._events = Netlink(groups=RTMGRP_NEIGH, rcvbuf=_EVENTS_RCVBUF)
        try:
            self._events.keep_only(BRIDGE_ENTRY_FILTER)  # bridge_entry's rule, in the kernel
            self._links = Netlink()
        except OSError:
            self._events.close()
            raise
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for sock in (self._events, self._links):
            if sock is not None:
                sock.close()

    def _port_vni(self, index: int, master: int) -> int | None:
        """The VNI whose bridge a pod port belongs to (cached: a port never changes bridge)."""
        if index in self._vni_of_port:
            return self._vni_of_port[index]
        port = self._links.link(index=index)
        if port is None:
            # The port is gone (its pod's netns was deleted): its entries are being flushed.
            # The VTEP never goes before its bridge, so an entry on a vanished device of a
            # Megalos bridge was a pod's.
            return bridge_vni(self._links, master)
        vni = port_vni(self._links, port)
        if len(self._vni_of_port) >= _PORT_CACHE:  # ports come and go: keep the cache bounded
            self._vni_of_port.clear()
        self._vni_of_port[index] = vni
        return vni

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._events.receive(timeout=1.0)
            except OSError as exc:
                if self._stop.is_set():
                    return
                if exc.errno == errno.ENOBUFS:  # events lost; the watch itself goes on
                    log.warning("MAC watch: netlink events lost (receive buffer full)")
                    continue
                log.exception("MAC watch stopped")
                return
            try:
                self._dispatch(data)
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("MAC watch: a port lookup failed; its events are skipped")

    def _dispatch(self, data: bytes) -> None:
        for present, entry in fdb_events(data, bridge_entry):
            vni = self._port_vni(entry.ifindex, entry.master) if entry.mac else None
            if vni is not None:
                self.on_mac(vni, entry.mac, present, entry.ifindex, bool(entry.state & NUD_NOARP))
