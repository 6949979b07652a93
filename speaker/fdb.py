"""The VTEP forwarding tables, over netlink: remote MACs and flood lists, as zebra programs them.

A remote MAC is two entries: `self dst <vtep>` on the VXLAN device (where to tunnel it) and
`master extern_learn` on the bridge (so the bridge forwards known remote unicast to the VTEP
port instead of flooding every local pod). Unicast uses replace (a second append of the same MAC
is silently ignored); the flood list is one 00:00:00:00:00:00 entry per remote VTEP, appended.

The requests are built by the pure functions below and sent through cni.netlink, many to a
datagram (10k remote MACs are 20k requests: ~10 us of CPU each batched, ~1 ms each through
pyroute2's IPRoute); reconcile reads the tables back with dumps the kernel filters to one
device (bench/fdb.py measures both).
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterator

from base.primitives import ZERO_MAC
from cni import naming
from cni.netlink import (NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NTF_EXT_LEARNED, NTF_MASTER,
                         NTF_SELF, NUD_NOARP, NUD_PERMANENT, NUD_REACHABLE, RTM_DELNEIGH,
                         RTM_NEWNEIGH, FdbEntry, Netlink, Request, bridge_entry, fdb_body)
from speaker.evpn_state import FloodEntry, MacEntry

log = logging.getLogger(__name__)
_STATIC = NUD_NOARP | NUD_PERMANENT
_INSTALLED = (errno.EEXIST,)                        # refusals that mean "it is there"
_GONE = (errno.ENOENT, errno.ENODEV, errno.EINVAL)  # refusals that mean "it is not there"
_BATCH_RCVBUF = 1 << 20  # the ACKs of 256 requests to a datagram (~850 bytes each) fit


def install_requests(vtep: int, entry: MacEntry | FloodEntry) -> list[Request]:
    """The requests that write `entry` on the VTEP with ifindex `vtep`: for a flood entry,
    `bridge fdb append 00:00:00:00:00:00 dev VTEP dst IP self permanent`; for a MAC,
    `bridge fdb replace MAC dev VTEP dst IP self permanent` and
    `bridge fdb replace MAC dev VTEP master extern_learn`."""
    if isinstance(entry, FloodEntry):
        return [(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_APPEND,
                 fdb_body(FdbEntry(vtep, ZERO_MAC, entry.vtep, _STATIC, NTF_SELF)))]
    return [(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE,
             fdb_body(FdbEntry(vtep, entry.mac, entry.vtep, _STATIC, NTF_SELF))),
            (RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE,
             fdb_body(FdbEntry(vtep, entry.mac, "", NUD_NOARP | NUD_REACHABLE,
                               NTF_MASTER | NTF_EXT_LEARNED)))]


def remove_requests(vtep: int, entry: MacEntry | FloodEntry) -> list[Request]:
    """The requests that delete what install_requests writes (a flood entry: only the one
    destination, the other VTEPs of the flood list stay)."""
    if isinstance(entry, FloodEntry):
        return [(RTM_DELNEIGH, 0, fdb_body(FdbEntry(vtep, ZERO_MAC, entry.vtep, _STATIC, NTF_SELF)))]
    return [(RTM_DELNEIGH, 0, fdb_body(FdbEntry(vtep, entry.mac, entry.vtep, _STATIC, NTF_SELF))),
            (RTM_DELNEIGH, 0, fdb_body(FdbEntry(vtep, entry.mac, "", _STATIC, NTF_MASTER)))]


def _vtep_entry(ifindex: int, state: int, flags: int) -> bool:
    """A `want` filter for a VTEP's dump: its own (`self`) entries, not the bridge's."""
    return bool(flags & NTF_SELF)


class VtepFdb:
    """Remote MACs and flood entries on the node's VTEPs, and what the bridges hold locally.

    One netlink socket, in the network namespace of the thread that made the VtepFdb; one
    call at a time uses it (a lock). Entries of a VNI with no VTEP here are skipped.
    """

    def __init__(self):
        self._nl = Netlink(rcvbuf=_BATCH_RCVBUF)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._nl.close()

    def install(self, entries) -> int:
        """Write the entries whose VNI has a VTEP here; how many were written."""
        return self._write(entries, install_requests, _INSTALLED, "install")

    def remove(self, entries) -> int:
        """Delete the entries; 'already gone' (or the whole VTEP gone) counts as removed."""
        return self._write(entries, remove_requests, _GONE, "remove")

    def _write(self, entries, build, fine: tuple, what: str) -> int:
        """Send the requests `build` makes for each entry in one batch; how many entries had
        every request done (or refused with an errno in `fine`)."""
        with self._lock:
            requests, owners = [], []
            for vtep, entry in self._on_vteps(entries):
                for request in build(vtep, entry):
                    requests.append(request)
                    owners.append(entry)
            errors = self._nl.batch(requests)
        failed = set()
        for position, code in errors.items():
            if code in fine:
                continue
            failed.add(owners[position])
            if code != errno.ENODEV:  # ENODEV: the VTEP went away meanwhile (its LAN's last DEL)
                log.warning("FDB %s %s: %s", what, owners[position], os.strerror(code))
        return len(set(owners) - failed)

    def _vtep(self, vni: int) -> int | None:
        link = self._nl.link(name=naming.vtep_name(vni))
        return link.index if link is not None and link.kind == "vxlan" else None

    def _on_vteps(self, entries):
        """(VTEP ifindex, entry) for the entries whose VNI has a VTEP here; one lookup per VNI."""
        vteps: dict[int, int | None] = {}
        for entry in entries:
            if entry.vni not in vteps:
                vteps[entry.vni] = self._vtep(entry.vni)
            if vteps[entry.vni] is not None:
                yield vteps[entry.vni], entry

    def current(self, vni: int) -> set:
        """The remote entries the VNI's VTEP holds now (its `self` entries with a destination),
        from a dump the kernel filters to the VTEP."""
        with self._lock:
            vtep = self._vtep(vni)
            if vtep is None:
                return set()
            return {FloodEntry(vni, e.dst) if e.mac == ZERO_MAC else MacEntry(vni, e.mac, e.dst)
                    for e in self._nl.fdb(vtep, _vtep_entry) if e.dst}

    def local_macs(self, vni: int) -> Iterator[tuple[str, int, bool]]:
        """(mac, port ifindex, static) of each MAC the VNI's bridge has on a pod port: static
        (recorded at ADD: the pods' own) and learned. Streamed (a spoofing pod's port may hold
        100k entries where the kernel does not cap learning) from one dump of the bridge's ports
        and one of each pod port's entries, filtered by the kernel: the VTEP's entries (the
        remote MACs) are never read. Consume it before any other call on this object (it holds
        the lock)."""
        with self._lock:
            bridge = self._nl.link(name=naming.bridge_name(vni))
            if bridge is None:
                return
            ports = [link.index for link in self._nl.links(master=bridge.index)
                     if naming.is_port_name(link.name)]
            for port in ports:
                for e in self._nl.fdb(port, bridge_entry):
                    if e.master == bridge.index and e.mac:
                        yield e.mac, port, bool(e.state & NUD_NOARP)
