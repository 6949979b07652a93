"""The reflector's view of the cluster, built from the routes it reflects. Pure logic, in memory.

VNIs, the VTEPs hosting each (from Type-3 routes), MAC tables (from Type-2 routes: where, since
when, last change), and a bounded log of changes with sequence numbers so clients can wait for
convergence (`changes_since`). Nothing is stored on disk: after a restart the routes come back
from the speakers and so does this state.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class MacRecord:
    vni: int
    mac: str
    vtep: str
    ip: str | None
    first_seen: float
    last_changed: float

    def json(self) -> dict:
        return {"vni": self.vni, "mac": self.mac, "vtep": self.vtep, "ip": self.ip,
                "first_seen": self.first_seen, "last_changed": self.last_changed}


@dataclass
class ReflectorState:
    max_log: int = 100_000
    vteps: dict = field(default_factory=dict)       # vni -> {vtep ip}
    macs: dict = field(default_factory=dict)        # (vni, mac) -> {vtep ip: MacRecord}
    node_names: dict = field(default_factory=dict)  # vtep ip -> node name (from discovery)
    seq: int = 0
    log: deque = field(default_factory=deque)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def apply(self, event: dict, now: float | None = None) -> None:
        """Fold one BGP event (see speaker.bgp_process) into the state."""
        now = time.time() if now is None else now
        kind, vni, vtep = event.get("event"), event.get("vni"), event.get("vtep")
        if kind not in ("mac", "flood") or vni is None or not vtep:
            return
        add = event.get("action") == "add"
        with self.changed:
            if kind == "flood":
                vteps = self.vteps.setdefault(vni, set())
                if add == (vtep in vteps):
                    return
                (vteps.add if add else vteps.discard)(vtep)
                if not vteps:
                    del self.vteps[vni]
                self._record({"type": "vtep", "action": "add" if add else "del", "vni": vni,
                              "vtep": vtep}, now)
                return
            key = (vni, event["mac"])
            records = self.macs.setdefault(key, {})
            if add:
                old = records.get(vtep)
                if old and old.ip == event.get("ip"):
                    return
                records[vtep] = MacRecord(vni, event["mac"], vtep, event.get("ip"),
                                          old.first_seen if old else now, now)
            else:
                if records.pop(vtep, None) is None:
                    if not records:
                        del self.macs[key]
                    return
                if not records:
                    del self.macs[key]
            self._record({"type": "mac", "action": "add" if add else "del", "vni": vni,
                          "mac": event["mac"], "vtep": vtep, "ip": event.get("ip")}, now)

    def _record(self, change: dict, now: float) -> None:
        self.seq += 1
        self.log.append({"seq": self.seq, "time": now, **change})
        while len(self.log) > self.max_log:
            self.log.popleft()
        self.changed.notify_all()

    def forget_vtep(self, vtep: str, now: float | None = None) -> None:
        """A peer left: drop what it announced (os-ken's withdrawals normally do this first)."""
        now = time.time() if now is None else now
        for vni in [v for v, vteps in self.vteps.items() if vtep in vteps]:
            self.apply({"event": "flood", "action": "del", "vni": vni, "vtep": vtep}, now)
        for vni, mac in [k for k, r in self.macs.items() if vtep in r]:
            self.apply({"event": "mac", "action": "del", "vni": vni, "mac": mac, "vtep": vtep}, now)

    # -- queries (callers hold no lock: each takes a consistent snapshot) -------------------------
    def vni_summary(self) -> list[dict]:
        with self.changed:
            vnis = set(self.vteps) | {vni for vni, _ in self.macs}
            counts: dict[int, int] = {}
            for vni, _ in self.macs:
                counts[vni] = counts.get(vni, 0) + 1
            return [{"vni": vni, "vteps": len(self.vteps.get(vni, ())), "macs": counts.get(vni, 0)}
                    for vni in sorted(vnis)]

    def vni_detail(self, vni: int) -> dict | None:
        with self.changed:
            if vni not in self.vteps and not any(v == vni for v, _ in self.macs):
                return None
            vteps = [{"address": ip, "node": self.node_names.get(ip)}
                     for ip in sorted(self.vteps.get(vni, ()))]
            macs = [record.json() for (v, _), records in sorted(self.macs.items()) if v == vni
                    for record in records.values()]
            return {"vni": vni, "vteps": vteps, "macs": macs}

    def where_is(self, mac: str) -> list[dict]:
        with self.changed:
            return [record.json() for (_, m), records in sorted(self.macs.items()) if m == mac
                    for record in records.values()]

    def changes_since(self, since: int, timeout: float = 0.0, limit: int = 1000) -> dict:
        """Changes with seq > since; waits up to `timeout` s for the first one (long poll)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.seq <= since:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            oldest = self.log[0]["seq"] if self.log else self.seq + 1
            changes = [c for c in self.log if c["seq"] > since][:limit]
            return {"seq": self.seq, "changes": changes, "truncated": since + 1 < oldest and since < self.seq}

    def totals(self) -> dict:
        with self.changed:
            return {"vnis": len(set(self.vteps) | {v for v, _ in self.macs}),
                    "vteps": len({ip for vteps in self.vteps.values() for ip in vteps}),
                    "macs": sum(len(r) for r in self.macs.values()), "seq": self.seq}
