"""The VTEP forwarding tables, over netlink: remote MACs and flood lists, as zebra programs them.

A remote MAC is two entries: `self dst <vtep>` on the VXLAN device (where to tunnel it) and
`master extern_learn` on the bridge (so the bridge forwards known remote unicast to the VTEP
port instead of flooding every local pod). Unicast uses replace (a second append of the same MAC
is silently ignored); the flood list is one 00:00:00:00:00:00 entry per remote VTEP, appended.
"""
from __future__ import annotations

import errno
import threading

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import (NTF_EXT_LEARNED, NTF_MASTER, NTF_SELF, NUD_NOARP,
                                         NUD_PERMANENT, NUD_REACHABLE)

from cni import naming
from speaker.evpn_state import ZERO_MAC, FloodEntry, MacEntry


class VtepFdb:
    def __init__(self):
        self._ipr = IPRoute(groups=0)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._ipr.close()

    def _vtep_index(self, vni: int) -> int | None:
        found = self._ipr.link_lookup(ifname=naming.vtep_name(vni))
        return found[0] if found else None

    def install(self, entries) -> int:
        """Add entries whose VNI has a VTEP here; returns how many were written."""
        written = 0
        with self._lock:
            indexes: dict[int, int | None] = {}
            for entry in entries:
                index = indexes.setdefault(entry.vni, self._vtep_index(entry.vni))
                if index is None:
                    continue
                try:
                    self._install(index, entry)
                    written += 1
                except NetlinkError as exc:
                    if exc.code != errno.ENODEV:  # the VTEP went away meanwhile
                        raise
        return written

    def _install(self, index: int, entry) -> None:
        if isinstance(entry, FloodEntry):
            try:
                self._ipr.fdb("append", ifindex=index, lladdr=ZERO_MAC, dst=entry.vtep,
                              state=NUD_NOARP | NUD_PERMANENT, flags=NTF_SELF)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
            return
        self._ipr.fdb("replace", ifindex=index, lladdr=entry.mac, dst=entry.vtep,
                      state=NUD_NOARP | NUD_PERMANENT, flags=NTF_SELF)
        self._ipr.fdb("replace", ifindex=index, lladdr=entry.mac,
                      state=NUD_NOARP | NUD_REACHABLE, flags=NTF_MASTER | NTF_EXT_LEARNED)

    def remove(self, entries) -> int:
        removed = 0
        with self._lock:
            indexes: dict[int, int | None] = {}
            for entry in entries:
                index = indexes.setdefault(entry.vni, self._vtep_index(entry.vni))
                if index is None:
                    continue
                removed += self._remove(index, entry)
        return removed

    def _remove(self, index: int, entry) -> int:
        """Delete one entry; 'already gone' is fine."""
        mac = ZERO_MAC if isinstance(entry, FloodEntry) else entry.mac
        requests = [dict(dst=entry.vtep, flags=NTF_SELF)]
        if isinstance(entry, MacEntry):
            requests.append(dict(flags=NTF_MASTER))
        done = 0
        for request in requests:
            try:
                self._ipr.fdb("del", ifindex=index, lladdr=mac, state=NUD_NOARP | NUD_PERMANENT,
                              **request)
                done = 1
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                    raise
        return done

    def current(self, vni: int) -> set:
        """The remote entries the VNI's VTEP holds now (`self` entries with a destination)."""
        with self._lock:
            index = self._vtep_index(vni)
            if index is None:
                return set()
            entries = set()
            for msg in self._ipr.fdb("dump", ifindex=index):
                if msg["ifindex"] != index or not msg["flags"] & NTF_SELF:
                    continue
                mac, dst = msg.get_attr("NDA_LLADDR"), msg.get_attr("NDA_DST")
                if not dst:
                    continue
                entries.add(FloodEntry(vni, dst) if mac == ZERO_MAC else MacEntry(vni, mac, dst))
            return entries

    def local_macs(self, vni: int) -> set:
        """MACs the VNI's bridge has on pod ports: static (recorded at ADD) and learned."""
        with self._lock:
            found = self._ipr.link_lookup(ifname=naming.bridge_name(vni))
            if not found:
                return set()
            ports = {link["index"] for link in self._ipr.get_links()
                     if link.get_attr("IFLA_MASTER") == found[0]
                     and naming.is_port_name(link.get_attr("IFLA_IFNAME") or "")}
            return {msg.get_attr("NDA_LLADDR") for msg in self._ipr.fdb("dump")
                    if msg["ifindex"] in ports and msg.get_attr("NDA_MASTER") == found[0]
                    and not msg["state"] & NUD_PERMANENT}
