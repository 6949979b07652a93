"""What the node should announce, what its BGP process accepted, and the commands that bring the
second to the first. Pure logic (no process, no clock of its own).

An announcement (or a withdrawal) counts as made only once the BGP process accepted it: its
`Reply` said ok. A command refused, timed out or lost with the process is retried, 0.5 s after
the failure and then doubling up to 30 s. What the process originates (`Originated`) can replace
what the ledger believes it accepted, after which the difference is sent again. Targets are
(vni, VTEP_ROUTE) for a VNI's VTEP route and (vni, mac) for a MAC route.

A VTEP route also carries its VNI's claim (base.tenancy: which namespace owns the LAN) and a MAC
route the pod that holds the MAC (bgp.claims): a new claim or pod is announced again, with the
same RD number or sequence number. `Originated` reports RD and sequence numbers only: where they
match, the claim and pod last accepted are taken as held.
"""
from __future__ import annotations

from base.tenancy import VniClaim
from bgp.protocol import Command, MacAdd, MacDel, OriginatedRoutes, VtepAdd, VtepDel

VTEP_ROUTE = ""
RETRY_FIRST, RETRY_MAX = 0.5, 30.0
MAX_RD_INDEX = 2**16 - 1

Key = tuple[int, str]


class Ledger:
    def __init__(self):
        self.vnis: dict[int, int] = {}         # should be announced: local VNI -> RD number
        self.macs: dict[Key, int] = {}         # ... local (vni, mac) -> mobility seq
        self.claims: dict[int, VniClaim] = {}  # ... local VNI -> its claim (none: unclaimed)
        self.pods: dict[Key, str] = {}         # ... local (vni, mac) -> the pod holding it
        self.rd_index: dict[int, int] = {}     # accepted by the BGP process
        self.announced: dict[Key, int] = {}
        self.claims_accepted: dict[int, VniClaim] = {}
        self.pods_accepted: dict[Key, str] = {}
        self._dirty: set[Key] = set()          # targets that may differ
        self._retry: dict[Key, tuple[float, float]] = {}  # target -> (when, delay)

    @property
    def pending(self) -> int:
        """Targets whose last command failed and that wait for a retry."""
        return len(self._retry)

    # -- what should be announced ------------------------------------------------------------
    def add_vni(self, vni: int, claim: VniClaim | None = None) -> None:
        if vni in self.vnis:
            if claim != self.claims.get(vni):  # the LAN went and came back for another owner
                _set(self.claims, vni, claim)
                self._dirty.add((vni, VTEP_ROUTE))
            return
        _set(self.claims, vni, claim)
        used = set(self.vnis.values()) | set(self.rd_index.values())
        self.vnis[vni] = self.rd_index.get(vni) or next(i for i in range(1, MAX_RD_INDEX + 1) if i not in used)
        self._dirty.add((vni, VTEP_ROUTE))

    def remove_vni(self, vni: int) -> None:
        """The VNI and its MACs (withdrawn with its VTEP route)."""
        if self.vnis.pop(vni, None) is None:
            return
        self.claims.pop(vni, None)
        for key in [k for k in self.macs if k[0] == vni]:
            del self.macs[key]
            self.pods.pop(key, None)
        self._dirty.add((vni, VTEP_ROUTE))

    def set_mac(self, key: Key, seq: int, pod: str | None = None) -> None:
        self.macs[key] = seq
        _set(self.pods, key, pod)
        self._dirty.add(key)

    def drop_mac(self, key: Key) -> bool:
        """Whether it was to be announced."""
        if self.macs.pop(key, None) is None:
            return False
        self.pods.pop(key, None)
        self._dirty.add(key)
        return True

    # -- to the BGP process ------------------------------------------------------------------
    def commands(self, now: float) -> list[Command]:
        """The commands for the targets that changed and the retries due: VTEP routes added
        first, then MAC routes (those of a VNI whose VTEP route is not accepted yet wait for
        it), then VTEP routes withdrawn (which withdraws their MAC routes)."""
        self._dirty.update(target for target, (when, _) in self._retry.items() if when <= now)
        dirty, self._dirty = sorted(self._dirty), set()
        adds, changes, removals = [], [], []
        for vni, mac in dirty:
            if mac != VTEP_ROUTE:
                continue
            want, have = self.vnis.get(vni), self.rd_index.get(vni)
            claim = self.claims.get(vni)
            if want == have and (want is None or claim == self.claims_accepted.get(vni)):
                self._retry.pop((vni, mac), None)
            elif want is None or (have is not None and have != want):  # gone, or another RD number
                removals.append(VtepDel(vni))
                if want is not None:
                    self._dirty.add((vni, mac))
            else:  # new, or the same with another claim
                adds.append(VtepAdd(vni, want, *((claim.namespace, claim.since) if claim else ())))
        adding = {command.vni for command in adds}
        removing = {command.vni for command in removals}
        for vni, mac in dirty:
            if mac == VTEP_ROUTE:
                continue
            want, have = self.macs.get((vni, mac)), self.announced.get((vni, mac))
            pod = self.pods.get((vni, mac))
            if want == have and (want is None or pod == self.pods_accepted.get((vni, mac))):
                self._retry.pop((vni, mac), None)
            elif vni in removing or (vni not in self.rd_index and vni not in adding):
                continue  # withdrawn with its VTEP route, or waits for it (accepting it marks the MAC again)
            elif want is not None:
                changes.append(MacAdd(vni, mac, seq=want, pod=pod))
            else:
                changes.append(MacDel(vni, mac))
        return adds + changes + removals

    def accepted(self, command: Command) -> None:
        self._retry.pop(self.target(command), None)
        if isinstance(command, VtepAdd):
            self.rd_index[command.vni] = command.rd_index
            _set(self.claims_accepted, command.vni, command.claim)
            self._dirty.update(k for k in self.macs if k[0] == command.vni and k not in self.announced)
        elif isinstance(command, VtepDel):
            self.rd_index.pop(command.vni, None)
            self.claims_accepted.pop(command.vni, None)
            self.announced = {k: seq for k, seq in self.announced.items() if k[0] != command.vni}
            self.pods_accepted = {k: pod for k, pod in self.pods_accepted.items() if k[0] != command.vni}
        elif isinstance(command, MacAdd):
            self.announced[(command.vni, command.mac)] = command.seq
            _set(self.pods_accepted, (command.vni, command.mac), command.pod)
        elif isinstance(command, MacDel):
            self.announced.pop((command.vni, command.mac), None)
            self.pods_accepted.pop((command.vni, command.mac), None)

    def failed(self, command: Command, now: float) -> None:
        target = self.target(command)
        delay = min(self._retry[target][1] * 2, RETRY_MAX) if target in self._retry else RETRY_FIRST
        self._retry[target] = (now + delay, delay)

    def lost(self) -> None:
        """The BGP process is new: it holds nothing, everything is to be sent again."""
        self.rd_index, self.announced, self._retry = {}, {}, {}
        self.claims_accepted, self.pods_accepted = {}, {}
        self._mark_all()

    def originated(self, routes: OriginatedRoutes) -> int:
        """What the BGP process says it originates becomes what it accepted, and every
        difference with what should be announced is to be sent; how many routes it held other
        than the ledger believed."""
        macs = {(vni, mac): seq for (vni, mac, ip), seq in routes.macs.items() if ip is None}
        differ = len(set(routes.vteps.items()) ^ set(self.rd_index.items())) \
            + len(set(macs.items()) ^ set(self.announced.items()))
        self.claims_accepted = {vni: claim for vni, claim in self.claims_accepted.items()
                                if routes.vteps.get(vni) == self.rd_index.get(vni)}
        self.pods_accepted = {key: pod for key, pod in self.pods_accepted.items()
                              if key in macs and macs[key] == self.announced.get(key)}
        self.rd_index, self.announced = dict(routes.vteps), macs
        self._mark_all()
        return differ

    def _mark_all(self) -> None:
        self._dirty.update((vni, VTEP_ROUTE) for vni in set(self.vnis) | set(self.rd_index))
        self._dirty.update(set(self.macs) | set(self.announced))

    @staticmethod
    def target(command: Command) -> Key:
        return command.vni, getattr(command, "mac", VTEP_ROUTE)


def _set(table: dict, key, value) -> None:
    """table[key] = value, or no entry for None (most VNIs have no claim in a one-tenant lab)."""
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value
