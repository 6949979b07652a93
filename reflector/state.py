"""The reflector's view of the cluster, built from the routes it reflects. Pure logic, in memory.

VNIs, the VTEPs hosting each (from Type-3 routes) and the claims they carry (which namespace
owns the VNI, and any other that claims it too: base.tenancy), MAC tables (from Type-2 routes:
where, since when, last change, the pod holding the MAC), node names (given with
POST /api/v1/nodes, or from the Node objects with --peers-from-k8s), a bounded log of changes with sequence numbers so clients can wait for
convergence (`changes_since`), and the LAN table (reflector.lanview: which pod interfaces are on
which LAN, from the Kubernetes API with --lans-from-k8s), read together with the MAC tables.
Nothing is stored on disk: after a restart the routes come back from the speakers and so does this
state (the change log starts again from 1 under a new `epoch`; the LAN table is listed again).

MAC mobility is watched as the nodes see it (bgp.mobility, FRR's duplicate detection): a MAC
that moves between VTEPs `max_moves` times within the window (a claim from another VTEP with a
higher sequence number), or that is announced at the highest sequence number (nobody can
outbid it: the race a rogue node wins by starting there), is frozen, and shown so in its VNI
(`frozen`) and its LANs (`frozen_macs`, and each member's `frozen`). The reflector does not
change what it reflects: the nodes pin a frozen MAC where it was.

Tables are read a page at a time: a page is `limit` rows after a `cursor`, the cursor being the
key of the last row of the previous page (`str(vni)` for the VNI list, `"<mac>@<vtep>"` for a MAC
table). Keys are kept sorted per VNI and re-sorted only after a change, so reading a page of a
10,000-MAC table costs the page, not the table.

Why one module of ~470 lines: the VNI, MAC, claim and mobility tables are updated together
under one lock by each route, and the change log must record each change in that same step;
the LAN table, which is read with them but fed by Kubernetes, is reflector.lanview.
"""
from __future__ import annotations

import bisect
import itertools
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from base.tenancy import VniClaim
from bgp.mobility import DuplicateDetector
from bgp.protocol import MAX_SEQ, MacRoute, VtepRoute
from reflector.lanview import LanTable

MAX_PAGE = 10_000


@dataclass
class MacRecord:
    """One MAC as announced by one VTEP. `routes` holds the IPs of its Type-2 routes (None for the
    MAC-only route); the record lives while at least one of them does."""
    vni: int
    mac: str
    vtep: str
    routes: set
    first_seen: float
    last_changed: float
    pod: str | None = None   # the pod its route names (bgp.claims), None if none
    seq: int = 0  # the MAC mobility sequence number this VTEP announced last
    _text: tuple | None = field(default=None, repr=False, compare=False)  # (node, JSON text)

    def touch(self, now: float) -> None:
        self.last_changed = now
        self._text = None

    def encoded(self, node: str | None = None) -> str:
        """json(node) as JSON text, kept until the record (or the node's name) changes: a page of
        a large table is then a join of strings, not an encoding of every row."""
        if self._text is None or self._text[0] != node:
            self._text = (node, json.dumps(self.json(node), separators=(",", ":")))
        return self._text[1]

    @property
    def ips(self) -> list[str]:
        return sorted(ip for ip in self.routes if ip)

    def json(self, node: str | None = None) -> dict:
        ips = self.ips
        return {"vni": self.vni, "mac": self.mac, "vtep": self.vtep, "node": node,
                "ip": ips[0] if ips else None, "ips": ips, "first_seen": self.first_seen,
                "last_changed": self.last_changed, "pod": self.pod}


def mac_cursor(mac: str, vtep: str) -> str:
    return f"{mac}@{vtep}"


def parse_mac_cursor(cursor: str) -> tuple[str, str]:
    mac, sep, vtep = cursor.partition("@")
    if not sep or not mac or not vtep:
        raise ValueError(f"malformed cursor {cursor!r}")
    return mac, vtep


def parse_vni_cursor(cursor: str) -> int:
    try:
        return int(cursor)
    except ValueError:
        raise ValueError(f"malformed cursor {cursor!r}") from None


def page_limit(limit) -> int:
    limit = MAX_PAGE if limit is None else int(limit)
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be in 1..{MAX_PAGE}, not {limit}")
    return limit


@dataclass
class ReflectorState:
    max_log: int = 100_000
    vteps: dict = field(default_factory=dict)       # vni -> {vtep ip}
    claims: dict = field(default_factory=dict)      # vni -> {vtep ip -> VniClaim its route carries}
    macs: dict = field(default_factory=dict)        # vni -> {mac -> {vtep ip -> MacRecord}}
    where: dict = field(default_factory=dict)       # mac -> {vni}
    node_names: dict = field(default_factory=dict)  # node address -> name (POST /api/v1/nodes)
    epoch: float = field(default_factory=time.time)  # tells one life of the change log from another
    seq: int = 0
    log: deque = field(default_factory=deque)
    changed: threading.Condition = field(default_factory=threading.Condition)
    _order: dict = field(default_factory=dict)      # vni -> sorted [(mac, vtep)], dropped on change
    lan_table: LanTable = field(default_factory=LanTable)  # NADs and pods (reflector.lanview)
    moves: DuplicateDetector = field(default_factory=DuplicateDetector)  # keys (vni, mac)
    unbeatable: dict = field(default_factory=dict)  # (vni, mac) -> since when at the highest seq
    counters: Counter = field(default_factory=Counter)  # "mac_frozen" (the Reflector's Counter)
    clock: Callable[[], float] = field(default=time.time, repr=False)  # wall clock: API times
    _expired_at: float = 0.0

    # -- changes ----------------------------------------------------------------------------------
    def apply(self, route: MacRoute | VtepRoute, now: float | None = None) -> bool:
        """Fold one reflected route (bgp.protocol) into the state; True if it changed it."""
        now = self.clock() if now is None else now
        with self.changed:
            if isinstance(route, VtepRoute):
                return self._apply_vtep(route.vni, route.vtep, route.added, now, route.claim)
            return self._apply_mac(route.vni, route.mac, route.vtep, route.ip, route.added, now,
                                   route.pod, route.seq)

    def _apply_vtep(self, vni: int, vtep: str, add: bool, now: float,
                    claim: VniClaim | None = None) -> bool:
        vteps = self.vteps.setdefault(vni, set())
        claims = self.claims.setdefault(vni, {})
        reclaimed = add and claims.get(vtep) != claim
        if claim is not None and add:
            claims[vtep] = claim
        else:
            claims.pop(vtep, None)
        if not claims:
            del self.claims[vni]
        if add == (vtep in vteps) and not reclaimed:
            if not vteps:
                del self.vteps[vni]
            return False
        (vteps.add if add else vteps.discard)(vtep)
        if not vteps:
            del self.vteps[vni]
        change = {"type": "vtep", "action": "add" if add else "del", "vni": vni, "vtep": vtep}
        if claim is not None and add:
            change["namespace"] = claim.namespace
        self._record(change, now)
        return True

    def _apply_mac(self, vni: int, mac: str, vtep: str, ip: str | None, add: bool,
                   now: float, pod: str | None = None, seq: int = 0) -> bool:
        table = self.macs.get(vni, {})
        records = table.get(mac, {})
        record = records.get(vtep)
        if add:
            self._follow_moves(vni, mac, vtep, seq, records, now)
            if record is not None and ip in record.routes and record.pod == pod:
                if record.seq != seq:
                    record.seq = seq
                    self._follow_sequence(vni, mac, seq, now)
                return False
            if record is None:
                record = MacRecord(vni, mac, vtep, set(), now, now, pod)
                self.macs.setdefault(vni, {}).setdefault(mac, {})[vtep] = record
                self.where.setdefault(mac, set()).add(vni)
                self._order.pop(vni, None)
            record.routes.add(ip)
            record.pod = pod
            record.seq = seq
            record.touch(now)
            self._follow_sequence(vni, mac, seq, now)
        else:
            if record is None or ip not in record.routes:
                return False
            record.routes.discard(ip)
            record.touch(now)
            if not record.routes:
                self._drop(vni, mac, vtep)
                self._follow_sequence(vni, mac, 0, now)
        self._record({"type": "mac", "action": "add" if add else "del", "vni": vni, "mac": mac,
                      "vtep": vtep, "ip": ip}, now)
        return True

    def _drop(self, vni: int, mac: str, vtep: str) -> None:
        records = self.macs[vni][mac]
        del records[vtep]
        self._order.pop(vni, None)
        if records:
            return
        del self.macs[vni][mac]
        if not self.macs[vni]:
            del self.macs[vni]
        self.where[mac].discard(vni)
        if not self.where[mac]:
            del self.where[mac]
        self.moves.clear((vni, mac))  # gone everywhere: no duplicate any more

    # -- MAC mobility: duplicates and the sequence-number race ------------------------------------
    def _follow_moves(self, vni: int, mac: str, vtep: str, seq: int, records: dict,
                      now: float) -> None:
        """A claim from `vtep` that outbids the MAC's current holder (another VTEP) is a move."""
        if not records or (len(records) == 1 and vtep in records):
            return  # nearly always: a new MAC, or its one VTEP again
        holder = max(records.values(), key=lambda r: (r.seq, r.last_changed), default=None)
        if holder is None or holder.vtep == vtep or seq <= holder.seq:
            return
        self._expire(now)
        if self.moves.move((vni, mac), now) is not None:
            self.counters["mac_frozen"] += 1

    def _follow_sequence(self, vni: int, mac: str, seq: int, now: float) -> None:
        """Whether a VTEP announces the MAC at the highest sequence number, which cannot be
        outbid: frozen while one does. `seq`: the one just announced (0 for a withdrawal)."""
        key = (vni, mac)
        if seq < MAX_SEQ and key not in self.unbeatable:
            return  # nearly always: nothing to look at
        at_max = any(r.seq >= MAX_SEQ for r in self.macs.get(vni, {}).get(mac, {}).values())
        if at_max and key not in self.unbeatable:
            self.unbeatable[key] = now
            self.counters["mac_frozen"] += 1
        elif not at_max:
            self.unbeatable.pop(key, None)

    def _expire(self, now: float) -> None:
        if now - self._expired_at >= 1.0 or now < self._expired_at:
            self.moves.expire(now)
            self._expired_at = now

    def _frozen(self, vni: int, now: float) -> dict[str, dict]:
        """The VNI's frozen MACs: mac -> {mac, reason, since, until, vteps}."""
        self._expire(now)
        rows = {}
        table = self.macs.get(vni, {})
        for (at, mac), freeze in self.moves.frozen_keys().items():
            if at == vni:
                rows[mac] = {"mac": mac, "reason": f"moved {freeze.moves} times within "
                             f"{self.moves.window:.0f} s", "since": freeze.since,
                             "until": freeze.until, "vteps": sorted(table.get(mac, ()))}
        for (at, mac), since in self.unbeatable.items():
            if at == vni:
                rows[mac] = {"mac": mac, "reason": "highest sequence number", "since": since,
                             "until": None, "vteps": sorted(table.get(mac, ()))}
        return dict(sorted(rows.items()))

    def _record(self, change: dict, now: float) -> None:
        """Log a change under the next sequence number (consecutive: changes_since counts on it)."""
        self.seq += 1
        self.log.append({"seq": self.seq, "time": now, **change})
        while len(self.log) > self.max_log:
            self.log.popleft()
        self.changed.notify_all()

    def forget_vtep(self, vtep: str, now: float | None = None) -> None:
        """A peer left: drop what it announced (os-ken's withdrawals normally do this first)."""
        now = self.clock() if now is None else now
        with self.changed:
            for vni in [v for v, vteps in self.vteps.items() if vtep in vteps]:
                self._apply_vtep(vni, vtep, False, now)
            doomed = [(vni, mac, ip) for vni, table in self.macs.items()
                      for mac, records in table.items() if vtep in records
                      for ip in records[vtep].routes]
            for vni, mac, ip in doomed:
                self._apply_mac(vni, mac, vtep, ip, False, now)

    def name_node(self, address: str, name: str | None) -> None:
        with self.changed:
            if name:
                self.node_names[address] = name
            else:
                self.node_names.pop(address, None)

    def node_address(self, name: str) -> str | None:
        with self.changed:
            return next((ip for ip, named in self.node_names.items() if named == name), None)

    # -- the LAN table (fed by reflector.discovery.LanWatcher) ------------------------------------
    def lan_reset(self, kind: str, items: list) -> None:
        """Every object of one kind ("nads" or "pods"), after a (re)list."""
        with self.changed:
            self.lan_table.watching = True
            self.lan_table.reset(kind, items)

    def lan_event(self, kind: str, event_type: str, obj: dict) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) of a NAD or a pod."""
        with self.changed:
            self.lan_table.event(kind, event_type, obj)

    # -- queries (callers hold no lock: each takes a consistent snapshot) -------------------------
    def _vnis(self) -> list[int]:
        return sorted(set(self.vteps) | set(self.macs))

    def claimants(self, vni: int) -> list[VniClaim]:
        """One claim per namespace claiming the VNI (its earliest), the owner first (caller
        holds the lock)."""
        first: dict[str, VniClaim] = {}
        for claim in self.claims.get(vni, {}).values():
            if claim.namespace not in first or claim < first[claim.namespace]:
                first[claim.namespace] = claim
        return sorted(first.values())

    def _claims_json(self, vni: int) -> list[dict]:
        """The VNI's claims, owner first: namespace, since, and the VTEPs claiming it for it."""
        vteps = self.claims.get(vni, {})
        return [{**claim.json(), "vteps": sorted(v for v, c in vteps.items()
                                                 if c.namespace == claim.namespace)}
                for claim in self.claimants(vni)]

    def vni_summary(self, limit: int | None = None, cursor: str | None = None,
                    vtep: str | None = None) -> dict:
        """A page of {vni, vteps, macs (distinct MACs)}, VNIs in order; `vtep` keeps the VNIs
        that VTEP takes part in (hosts or announces a MAC in)."""
        limit = page_limit(limit)
        with self.changed:
            vnis = self._vnis()
            if vtep:
                vnis = [vni for vni in vnis if vtep in self.vteps.get(vni, ())
                        or any(vtep in records for records in self.macs.get(vni, {}).values())]
            total = len(vnis)
            start = bisect.bisect_right(vnis, parse_vni_cursor(cursor)) if cursor else 0
            page = vnis[start:start + limit]
            items = []
            for vni in page:
                claims = [c.namespace for c in self.claimants(vni)]
                items.append({"vni": vni, "vteps": len(self.vteps.get(vni, ())),
                              "macs": len(self.macs.get(vni, ())),
                              "owner": claims[0] if claims else None, "others": claims[1:]})
            more = start + limit < len(vnis)
            return {"vnis": items, "total": total, "next": str(page[-1]) if more else None}

    def _sorted_keys(self, vni: int) -> list[tuple[str, str]]:
        keys = self._order.get(vni)
        if keys is None:
            keys = sorted((mac, vtep) for mac, records in self.macs.get(vni, {}).items()
                          for vtep in records)
            self._order[vni] = keys
        return keys

    def vni_detail(self, vni: int, limit: int | None = None, cursor: str | None = None,
                   vtep: str | None = None) -> dict | None:
        """The VNI's VTEPs (all of them) and a page of its MAC table (ordered by MAC, then VTEP;
        only `vtep`'s rows if given). None if the VNI is unknown."""
        return self._detail(vni, limit, cursor, vtep, MacRecord.json)

    def vni_detail_json(self, vni: int, limit: int | None = None, cursor: str | None = None,
                        vtep: str | None = None) -> str | None:
        """vni_detail as JSON text, built from the rows' kept encodings."""
        detail = self._detail(vni, limit, cursor, vtep, MacRecord.encoded)
        if detail is None:
            return None
        return ('{"vni":%d,"vteps":%s,"owner":%s,"claims":%s,"mac_count":%d,"macs":[%s],"next":%s,'
                '"frozen":%s}') % (
            detail["vni"], json.dumps(detail["vteps"], separators=(",", ":")),
            json.dumps(detail["owner"]), json.dumps(detail["claims"], separators=(",", ":")),
            detail["mac_count"], ",".join(detail["macs"]), json.dumps(detail["next"]),
            json.dumps(detail["frozen"], separators=(",", ":")))

    def _detail(self, vni: int, limit: int | None, cursor: str | None, vtep: str | None, row):
        limit = page_limit(limit)
        after = parse_mac_cursor(cursor) if cursor else None
        with self.changed:
            if vni not in self.vteps and vni not in self.macs:
                return None
            table = self.macs.get(vni, {})
            keys = self._sorted_keys(vni)
            start = bisect.bisect_right(keys, after) if after else 0
            if vtep:
                rows = (keys[i] for i in range(start, len(keys)) if keys[i][1] == vtep)
                page = list(itertools.islice(rows, limit + 1))
            else:
                page = keys[start:start + limit + 1]
            more = len(page) > limit
            page = page[:limit]
            claims = self._claims_json(vni)
            return {
                "vni": vni,
                "vteps": [{"address": ip, "node": self.node_names.get(ip)}
                          for ip in sorted(self.vteps.get(vni, ()))],
                "owner": claims[0]["namespace"] if claims else None,
                "claims": claims,
                "mac_count": len(table),
                "macs": [row(table[mac][at], self.node_names.get(at)) for mac, at in page],
                "next": mac_cursor(*page[-1]) if more else None,
                "frozen": list(self._frozen(vni, self.clock()).values()),
            }

    def where_is(self, mac: str, vni: int | None = None, vtep: str | None = None) -> list[dict]:
        """Every VNI and VTEP a MAC is announced in (a MAC on two nodes gives two rows)."""
        with self.changed:
            rows = []
            for at_vni in sorted(self.where.get(mac, ())):
                if vni is not None and at_vni != vni:
                    continue
                records = self.macs[at_vni][mac]
                rows += [records[ip].json(self.node_names.get(ip)) for ip in sorted(records)
                         if not vtep or ip == vtep]
            return rows

    def changes_since(self, since: int, timeout: float = 0.0, limit: int = 1000,
                      vni: int | None = None) -> dict:
        """Changes with seq > since (of `vni` only, if given); waits up to `timeout` s for the
        first one (long poll). `next` is the `since` of the following call. `truncated` says
        changes were lost: `since` is from another life of the reflector (since > seq), or
        changes after it left the log before they were read; the caller should read the tables
        again.

        A waiter resumes where its previous look stopped: each change is examined once per
        waiter, however long the log (a poll filtered to a quiet VNI used to rescan everything
        after `since` on every change, under the lock every intake needs)."""
        limit = page_limit(limit)
        deadline = time.monotonic() + timeout
        with self.changed:
            reset = since > self.seq
            examined, truncated, changes = (0 if reset else since), reset, []
            while True:
                oldest = self.log[0]["seq"] if self.log else self.seq + 1
                if examined + 1 < oldest:  # what came after `examined` has left the log
                    examined, truncated = oldest - 1, True
                for change in self._after(examined):
                    if len(changes) == limit:
                        break
                    examined = change["seq"]
                    if vni is None or change.get("vni") == vni:
                        changes.append(change)
                left = deadline - time.monotonic()
                if changes or reset or left <= 0:
                    break
                self.changed.wait(left)
            return {"seq": self.seq, "epoch": self.epoch, "changes": changes, "next": examined,
                    "truncated": truncated}

    def _after(self, seq: int) -> Iterable[dict]:
        """The logged changes with a sequence number above `seq`, in order, reached from the
        nearer end of the log (sequence numbers in it are consecutive: see _record)."""
        newer = min(self.seq - seq, len(self.log))
        if newer <= 0:
            return ()
        if newer > len(self.log) // 2:
            return itertools.islice(self.log, len(self.log) - newer, None)
        return reversed(list(itertools.islice(reversed(self.log), newer)))

    def _announced(self, vni: int, mac: str) -> list[str]:
        return sorted(self.macs.get(vni, {}).get(mac, {}))

    def lans(self, namespace: str | None = None) -> dict:
        """The LANs of a namespace (all when None) with their members, each member's MAC checked
        against the VNI's MAC table. `watching`: LANs are fed from the Kubernetes API at all;
        `synced`: NADs and pods have both been listed; `converged`: synced, and every LAN is."""
        with self.changed:
            table = self.lan_table
            lans = table.view(namespace, self._announced, self.claimants)
            now = self.clock()
            for lan in lans:
                frozen = self._frozen(lan["vni"], now)
                lan["frozen_macs"] = list(frozen)
                for member in lan["members"]:
                    member["frozen"] = member["mac"] in frozen
            synced = table.watching and all(table.synced.values())
            return {"namespace": namespace, "watching": table.watching, "synced": synced,
                    "converged": synced and all(lan["converged"] for lan in lans), "lans": lans}

    def totals(self) -> dict:
        with self.changed:
            return {"vnis": len(self._vnis()),
                    "vteps": len({ip for vteps in self.vteps.values() for ip in vteps}),
                    "macs": sum(len(table) for table in self.macs.values()),
                    "seq": self.seq, "epoch": self.epoch}
