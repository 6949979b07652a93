"""Local MACs the bridges learn from pod traffic (a pod that changes its own MAC), from netlink.

AF_BRIDGE RTM_NEWNEIGH/RTM_DELNEIGH events on Megalos pod ports only: a port's own address
(permanent) and entries on the VTEP (remote MACs) are not local pods.
"""
from __future__ import annotations

import logging
import threading

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_NEIGH
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT

from cni import naming

log = logging.getLogger(__name__)
AF_BRIDGE = 7


class MacWatch:
    """Calls on_mac(vni, mac, present) for MACs learned or forgotten on pod ports."""

    def __init__(self, on_mac):
        self.on_mac = on_mac
        self._ipr = self._names = None  # made in the watching thread: pyroute2's sync sockets
        self._ready = threading.Event()  # belong to the thread (event loop) that made them
        self._vni_of_port: dict[int, int | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="macwatch", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def stop(self) -> None:
        self._stop.set()
        for sock in (self._ipr, self._names):
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
        self._ipr = IPRoute(groups=RTMGRP_NEIGH)
        self._ipr.bind(groups=RTMGRP_NEIGH)
        self._names = IPRoute(groups=0)  # link lookups, never mixed with the event socket
        self._ready.set()
        while not self._stop.is_set():
            try:
                messages = self._ipr.get()
            except Exception:
                if not self._stop.is_set():
                    log.exception("MAC watch stopped")
                return
            for msg in messages:
                if msg["family"] != AF_BRIDGE or msg["state"] & NUD_PERMANENT:
                    continue
                vni = self._port_vni(msg["ifindex"], msg.get_attr("NDA_MASTER"))
                mac = msg.get_attr("NDA_LLADDR")
                if vni is None or not mac:
                    continue
                self.on_mac(vni, mac, msg["event"] == "RTM_NEWNEIGH")
