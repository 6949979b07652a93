"""What the node learned from BGP, and the VTEP forwarding entries it implies. Pure logic.

Routes of every VNI are kept, local or not, so a VNI that appears later is programmed at once.
A MAC announced by several VTEPs (a pod moved, or the old node has not withdrawn yet) resolves
to one: highest MAC-mobility sequence number, then the most recently announced.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from bgp.protocol import MacRoute, VtepRoute


@dataclass(frozen=True, order=True)
class MacEntry:
    """A remote unicast MAC: `bridge fdb replace MAC dev mgvx<vni> dst VTEP` (+ extern_learn)."""

    vni: int
    mac: str
    vtep: str


@dataclass(frozen=True, order=True)
class FloodEntry:
    """A remote VTEP on the VNI's flood list: `bridge fdb append 00:00:00:00:00:00 ... dst VTEP`."""

    vni: int
    vtep: str


@dataclass
class _Announcement:
    seq: int
    ip: str | None
    order: int
    pod: str | None = None   # the pod the route says holds the MAC (bgp.claims)


@dataclass
class RemoteRoutes:
    """Routes learned from peers: {(vni, mac): {vtep: announcement}} and {vni: {vtep}}.

    `pins` holds frozen duplicates (bgp.mobility): a pinned MAC stays with its VTEP whatever
    newer claims arrive, for as long as that VTEP announces it (then with the one left)."""

    macs: dict = field(default_factory=dict)
    floods: dict = field(default_factory=dict)
    pins: dict = field(default_factory=dict)  # (vni, mac) -> vtep
    _clock: itertools.count = field(default_factory=itertools.count)

    def winner(self, vni: int, mac: str) -> str | None:
        candidates = self.macs.get((vni, mac))
        if not candidates:
            return None
        pinned = self.pins.get((vni, mac))
        return pinned if pinned in candidates else self._best(candidates)

    def holder(self, vni: int, mac: str) -> tuple[str, str | None] | None:
        """(VTEP, pod it names or None) of the route that wins for the MAC; None if none."""
        vtep = self.winner(vni, mac)
        return None if vtep is None else (vtep, self.macs[(vni, mac)][vtep].pod)

    def max_seq(self, vni: int, mac: str) -> int:
        return max((a.seq for a in self.macs.get((vni, mac), {}).values()), default=0)

    def seq(self, vni: int, mac: str, vtep: str | None) -> int:
        """The sequence number `vtep` announces the MAC with (0 when it does not)."""
        announcement = self.macs.get((vni, mac), {}).get(vtep)
        return announcement.seq if announcement else 0

    def pin(self, vni: int, mac: str, vtep: str | None) -> None:
        """Keep the MAC with `vtep` (None: follow the sequence numbers again)."""
        if vtep is None:
            self.pins.pop((vni, mac), None)
        else:
            self.pins[(vni, mac)] = vtep

    def apply(self, route: MacRoute | VtepRoute) -> tuple[list, list]:
        """Fold one received route in; returns (entries to add, entries to remove) for the kernel."""
        vni, vtep = route.vni, route.vtep
        if isinstance(route, VtepRoute):
            vteps = self.floods.setdefault(vni, set())
            present = vtep in vteps
            if route.added:
                vteps.add(vtep)
            else:
                vteps.discard(vtep)
                if not vteps:
                    del self.floods[vni]
            entry = FloodEntry(vni, vtep)
            if route.added and not present:
                return [entry], []
            if not route.added and present:
                return [], [entry]
            return [], []
        mac = route.mac
        before = self.winner(vni, mac)
        candidates = self.macs.setdefault((vni, mac), {})
        if route.added:
            candidates[vtep] = _Announcement(route.seq, route.ip, next(self._clock), route.pod)
        else:
            candidates.pop(vtep, None)
            if not candidates:
                del self.macs[(vni, mac)]
            if self.pins.get((vni, mac)) == vtep:  # a frozen MAC stays with the one left
                self.pin(vni, mac, self._best(candidates))
        after = self.winner(vni, mac)
        if before == after:
            return [], []
        adds = [MacEntry(vni, mac, after)] if after else []
        removes = [MacEntry(vni, mac, before)] if before and not after else []
        return adds, removes  # a replace needs no delete of the old VTEP's entry

    @staticmethod
    def _best(candidates: dict) -> str | None:
        if not candidates:
            return None
        return max(candidates.items(), key=lambda kv: (kv[1].seq, kv[1].order))[0]

    def wants(self, entry) -> bool:
        """Whether `entry` is in desired(entry.vni), without building that set."""
        if isinstance(entry, FloodEntry):
            return entry.vtep in self.floods.get(entry.vni, ())
        return self.winner(entry.vni, entry.mac) == entry.vtep

    def desired(self, vni: int) -> set:
        """Every entry the VNI's VTEP should hold."""
        entries = {FloodEntry(vni, vtep) for vtep in self.floods.get(vni, ())}
        for (v, mac) in self.macs:
            if v == vni:
                entries.add(MacEntry(vni, mac, self.winner(vni, mac)))
        return entries

    def mac_count(self) -> int:
        return len(self.macs)
