"""The node's EVPN speaker: announces local LANs and MACs, programs remote ones into the VTEPs.

One worker thread applies everything in order: local changes (from CNI verbs and the MAC
watch) become BGP commands; BGP events become VTEP FDB entries. Between batches it drains the
queue, so a burst of routes turns into one batch of BGP commands and one pass over netlink.

Continuity (os-ken has no graceful restart, so the agent provides its own):
- on start the kernel is read first (local LANs and MACs are re-announced) and remote FDB
  entries are left in place; they are reconciled against BGP only once a reflector session has
  been up for `settle` seconds;
- a restarting agent's routes are kept by the reflector for a grace time (see
  bgp.osken_compat.enable_restart_grace), so other nodes do not drop its MACs;
- a withdrawn entry is removed after `withdraw_delay` seconds unless it is announced again
  meanwhile (a withdrawal and its replacement may arrive in separate UPDATEs);
- when every reflector session is down, removals wait `stale_time` seconds, and `settle`
  seconds more once a session is back (the reflectors relearn from the other nodes meanwhile).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from base.tenancy import VniClaim
from bgp.client import BgpError, BgpProcess
from bgp.protocol import (MacAdd, MacDel, MacRoute, PeerAdd, PeerDel, PeerState, Start, VtepAdd,
                          VtepDel, VtepRoute)
from cni.plugin import Announcements
from speaker.config import NodeConfig
from speaker.evpn_state import FloodEntry, MacEntry, RemoteRoutes
from speaker.macwatch import MacWatch

log = logging.getLogger(__name__)


# -- the worker's messages -----------------------------------------------------------------------
@dataclass(frozen=True)
class LocalVtep:
    """This node's VTEP joined (or left) a VNI: a LAN was created (or removed) here."""
    vni: int
    present: bool


@dataclass(frozen=True)
class LocalMac:
    """A pod MAC appeared (or went) on this node. `learned`: the bridge learned or aged it from
    traffic (the MAC watch), as opposed to a CNI verb or the kernel read at start. `pod`: the
    pod holding it (base.tenancy.pod_id), when known: its MAC route names it."""
    vni: int
    mac: str
    present: bool
    learned: bool = False
    pod: str | None = None


@dataclass(frozen=True)
class Received:
    """An event of the BGP process: a route of another node, or a session up or down."""
    event: MacRoute | VtepRoute | PeerState


@dataclass(frozen=True)
class ReflectorChange:
    """A reflector to peer with (or to stop peering with), found at run time."""
    address: str
    present: bool


_STOP = object()


class NodeSpeaker(Announcements):
    """`start()` spawns the BGP process (`spawn_bgp(on_event=..., name=...)`), the MAC watch
    (`watch_macs(on_mac)`) and the worker; nothing runs before. `fdb` is the VTEP forwarding
    table writer (speaker.fdb.VtepFdb); `datapath` is read for local LANs and pod MACs."""

    def __init__(self, config: NodeConfig, datapath, fdb, spawn_bgp: Callable[..., BgpProcess] = BgpProcess,
                 watch_macs: Callable = MacWatch):
        self.config = config
        self.datapath = datapath
        self.fdb = fdb
        self.router_id = datapath.default_underlay.ip
        self.reflectors: list[str] = list(config.reflectors)  # a restarted BGP process peers with these
        self.remote = RemoteRoutes()
        self.rd_index: dict[int, int] = {}                # local VNI -> RD number
        self.announced: dict[tuple[int, str], int] = {}   # local (vni, mac) in BGP -> mobility seq
        self.announced_pods: dict[tuple[int, str], str | None] = {}  # -> the pod its route names
        self.announced_claims: dict[int, VniClaim | None] = {}   # local VNI -> its route's claim
        # The claims other nodes' VTEP routes carry: {vni: {vtep: claim}}. A withdrawn claim
        # stays as long as its flood entry does (the removal waits as theirs: see the module
        # docstring), so a reflector outage does not make a VNI look free.
        self.claims: dict[int, dict[str, VniClaim]] = {}
        self._view = threading.Lock()  # `remote` and `claims`: CNI requests read them (ADD checks)
        self.peers_up: set[str] = set()
        self.up_since: float | None = None                # when the first session came up
        self.all_down_since: float | None = time.monotonic()
        self.pending: dict = {}                           # entry -> when its withdrawal was seen
        # Events worth counting, by name ("bgp_command_failed", ...): exported as metrics.
        self.counters: Counter[str] = Counter()
        self.bgp: BgpProcess | None = None
        self._static_now: dict[int, set] = {}             # VNI -> pod MACs, read once per batch
        self._spawn_bgp = spawn_bgp
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="speaker", daemon=True)
        self._macwatch = watch_macs(lambda vni, mac, present: self._queue.put(
            LocalMac(vni, mac, present, learned=True)))
        self._last_reconcile = 0.0

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._start_bgp()
        self._macwatch.start()
        self._read_kernel()
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(_STOP)
        self._worker.join(timeout=5)
        self._macwatch.stop()
        if self.bgp:
            self.bgp.close()
        self.fdb.close()

    def not_ready(self) -> str:
        if self.bgp is None or not self.bgp.alive:
            return "the BGP process is not running"
        return ""

    def backlog(self) -> int:
        """Messages waiting for the worker (the agent's metrics read it)."""
        return self._queue.qsize()

    def _start_bgp(self) -> None:
        self.bgp = self._spawn_bgp(on_event=lambda event: self._queue.put(Received(event)),
                                   name="speaker-bgp")
        self.bgp.call(Start(router_id=self.router_id, asn=self.config.asn, listen_host=self.router_id,
                            listen_port=self.config.bgp_port, hold_time=self.config.hold_time))
        for reflector in self.reflectors:
            self.bgp.call(self._peer(reflector))
        self.peers_up.clear()

    def _peer(self, address: str) -> PeerAdd:
        return PeerAdd(address, self.config.connect_mode, self.config.md5_password or None)

    def _read_kernel(self) -> None:
        """Queue the kernel's local LANs and pod MACs for announcement (start, BGP restart)."""
        for vni in self.datapath.lans():
            self._queue.put(LocalVtep(vni, True))
            for port in self.datapath.ports(vni):
                for mac in port.macs:
                    self._queue.put(LocalMac(vni, mac, True, pod=port.pod_id))

    # -- Announcements: called by CNI verbs (agent threads) -----------------------------------
    def vtep_added(self, vni: int) -> None:
        self._queue.put(LocalVtep(vni, True))

    def vtep_removed(self, vni: int) -> None:
        self._queue.put(LocalVtep(vni, False))

    def mac_added(self, vni: int, mac: str, pod: str | None = None) -> None:
        self._queue.put(LocalMac(vni, mac, True, pod=pod))

    def mac_removed(self, vni: int, mac: str) -> None:
        self._queue.put(LocalMac(vni, mac, False))

    # -- what other nodes claim: read by CNI ADDs (agent threads) ----------------------------------
    def vni_claims(self, vni: int) -> list[tuple[str, VniClaim]]:
        with self._view:
            return sorted(self.claims.get(vni, {}).items())

    def mac_holder(self, vni: int, mac: str) -> tuple[str, str | None] | None:
        with self._view:
            return self.remote.holder(vni, mac)

    # -- reflectors that come and go (the agent's --reflector-service) -------------------------
    def add_reflector(self, address: str) -> None:
        """Peer with one more reflector. Our speaker is passive (reflectors dial the nodes), but
        os-ken refuses a connection from an address it was not told about."""
        self._queue.put(ReflectorChange(address, True))

    def remove_reflector(self, address: str) -> None:
        """Stop peering with a reflector; routes learned only from it are withdrawn."""
        self._queue.put(ReflectorChange(address, False))

    def _reflector(self, change: ReflectorChange) -> None:
        """On the worker. `reflectors` is the live list: a restarted BGP process
        (`_start_bgp`) peers with exactly the reflectors known then."""
        address, present = change.address, change.present
        if present == (address in self.reflectors):
            return
        (self.reflectors.append if present else self.reflectors.remove)(address)
        try:
            if present:
                self.bgp.call(self._peer(address))
            else:
                self.bgp.call(PeerDel(address))
                if address in self.peers_up:  # os-ken reports no "down" for a deleted peer
                    self._peer_state(address, False)
        except BgpError as exc:  # a dead BGP process is restarted with the list as it is now
            log.warning("reflector %s: BGP %s failed: %s", address, "peer_add" if present else "peer_del", exc)
            return
        log.info("reflector %s %s", address, "added" if present else "removed")

    # -- the worker --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                items = [self._queue.get(timeout=0.1 if self.pending else 1.0)]
            except queue.Empty:
                items = []
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._process(items)
                self._housekeeping()
            except Exception:
                log.exception("speaker worker error; the next reconciliation repairs the state")

    def _process(self, items: list) -> None:
        self._static_now = {}
        commands: list = []
        adds, removes = [], []
        for item in items:
            if item is _STOP:
                return
            if isinstance(item, LocalVtep):
                self._local_vtep(item, commands, adds)
            elif isinstance(item, LocalMac):
                self._local_mac(item, commands, adds)
            elif isinstance(item, Received):
                self._received(item.event, adds, removes)
            elif isinstance(item, ReflectorChange):
                self._reflector(item)
        self._send(commands)
        self._program(adds, removes)

    def _vtep_add(self, vni: int) -> VtepAdd:
        """The VTEP route of a local VNI, with the claim its bridge records (base.tenancy)."""
        local = self.datapath.lan_claim(vni)
        claim = local[1] if local else None
        self.announced_claims[vni] = claim
        return VtepAdd(vni, self.rd_index[vni], *((claim.namespace, claim.since) if claim else ()))

    def _local_vtep(self, change: LocalVtep, commands: list, adds: list) -> None:
        vni = change.vni
        if change.present and vni not in self.rd_index:
            used = set(self.rd_index.values())
            self.rd_index[vni] = next(i for i in range(1, 65536) if i not in used)
            commands.append(self._vtep_add(vni))
            adds.extend(self.remote.desired(vni))  # routes kept from before the VNI was local
        elif change.present:
            claim = self.datapath.lan_claim(vni)
            if (claim[1] if claim else None) != self.announced_claims.get(vni):
                commands.append(self._vtep_add(vni))  # the LAN went and came back for another owner
        elif vni in self.rd_index and self.datapath.lan(vni) is None:
            del self.rd_index[vni]
            self.announced = {k: seq for k, seq in self.announced.items() if k[0] != vni}
            self.announced_pods = {k: pod for k, pod in self.announced_pods.items() if k[0] != vni}
            self.announced_claims.pop(vni, None)
            commands.append(VtepDel(vni))

    def _local_mac(self, change: LocalMac, commands: list, adds: list) -> None:
        vni, mac = change.vni, change.mac
        key = (vni, mac)
        if not change.learned:  # a pod port came or went: read the VNI's pod MACs again
            self._static_now.pop(vni, None)
        if change.present and change.learned and key not in self.announced \
                and (self.remote.holder(vni, mac) or (None, None))[1]:
            # A frame from a MAC another node's pod holds: the MAC watch learned it, no CNI verb
            # gave it to a pod here; announcing it would take that pod's traffic.
            log.warning("VNI %d: MAC %s, held by a pod behind %s, was seen on a port here: not "
                        "announced", vni, mac, self.remote.winner(vni, mac))
            self.counters["mac_held_elsewhere"] += 1
        elif change.present and vni in self.rd_index and (
                key not in self.announced
                or change.pod and change.pod != self.announced_pods.get(key)):
            # Seen elsewhere before: the MAC moved here, so outbid every other announcement.
            seq = self.announced.get(key)
            if seq is None:
                seq = self.remote.max_seq(vni, mac) + 1 if self.remote.winner(vni, mac) else 0
            self.announced[key] = seq
            self.announced_pods[key] = change.pod
            commands.append(MacAdd(vni, mac, seq=seq, pod=change.pod))
        elif not change.present and key in self.announced:
            if change.learned and self._is_static(vni, mac):
                return  # aged out of the bridge, but the pod still owns it (added at ADD)
            del self.announced[key]
            self.announced_pods.pop(key, None)
            commands.append(MacDel(vni, mac))
            winner = self.remote.winner(vni, mac)
            if winner:  # the MAC lives on elsewhere (it moved): forward there now
                adds.append(MacEntry(vni, mac, winner))

    def _is_static(self, vni: int, mac: str) -> bool:
        if vni not in self._static_now:  # reset by _process: one read per VNI and batch
            self._static_now[vni] = {m for port in self.datapath.ports(vni) for m in port.macs}
        return mac in self._static_now[vni]

    def _received(self, event, adds: list, removes: list) -> None:
        if isinstance(event, PeerState):
            self._peer_state(event.address, event.up)
            return
        if event.vtep == self.router_id:
            return
        with self._view:
            a, r = self.remote.apply(event)
            if isinstance(event, VtepRoute) and event.added:
                claims = self.claims.setdefault(event.vni, {})
                if event.claim is None:
                    claims.pop(event.vtep, None)
                else:
                    claims[event.vtep] = event.claim
                if not claims:
                    del self.claims[event.vni]
        adds.extend(a)
        removes.extend(r)

    def _peer_state(self, address: str, up: bool) -> None:
        log.info("reflector %s %s", address, "up" if up else "down")
        self.counters["session_up" if up else "session_down"] += 1
        if up:
            self.peers_up.add(address)
            if self.up_since is None:
                self.up_since = time.monotonic()
            self.all_down_since = None
        else:
            self.peers_up.discard(address)
            if not self.peers_up:
                self.up_since = None
                self.all_down_since = time.monotonic()

    def _send(self, commands: list) -> None:
        """Every command of a batch in one write: the BGP process packs their routes into few
        UPDATEs."""
        if not commands:
            return
        try:
            replies = self.bgp.call_many(commands, timeout=30)
        except BgpError as exc:
            log.warning("BGP batch of %d commands failed: %s", len(commands), exc)
            self.counters["bgp_command_failed"] += len(commands)
            return
        for command, reply in zip(commands, replies):
            if not reply.ok:
                log.warning("BGP %s failed: %s", command.op, reply.error)
                self.counters["bgp_command_failed"] += 1

    def _program(self, adds: list, removes: list) -> None:
        local = self.announced
        now = time.monotonic()
        adds = [e for e in adds if e.vni in self.rd_index
                and (e.vni, getattr(e, "mac", None)) not in local]
        for entry in removes:
            self.pending.setdefault(entry, now)
        for entry in adds:
            self.pending.pop(entry, None)
        if adds:
            self.fdb.install(adds)

    def _due_removals(self, now: float) -> list:
        """Withdrawn entries whose wait is over (see the module docstring), still not wanted."""
        if not self.peers_up and self.all_down_since is not None \
                and now - self.all_down_since < self.config.stale_time:
            return []  # no reflector reachable: keep forwarding on what we know
        if self.peers_up and self.up_since is not None and now - self.up_since < self.config.settle:
            return []  # sessions just came back: the reflectors may not have relearned it all
        due = []
        for entry, since in list(self.pending.items()):
            if self.peers_up and now - since < self.config.withdraw_delay:
                continue
            del self.pending[entry]
            if not self.remote.wants(entry):
                due.append(entry)
                if isinstance(entry, FloodEntry):
                    self._forget_claim(entry.vni, entry.vtep)
        return due

    def _forget_claim(self, vni: int, vtep: str) -> None:
        """A VTEP left the VNI for good: its claim goes (the VNI may be free now)."""
        with self._view:
            claims = self.claims.get(vni, {})
            if claims.pop(vtep, None) is not None and not claims:
                del self.claims[vni]

    # -- periodic work -------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self._stop.is_set():
            return
        if self.bgp is not None and not self.bgp.alive:
            log.error("BGP process died; restarting it and re-announcing local state")
            self.rd_index.clear()
            self.announced.clear()
            self.announced_pods.clear()
            self.announced_claims.clear()
            self._start_bgp()
            self._read_kernel()
            return
        due = self._due_removals(now)
        if due:
            self.fdb.remove(due)
        if self.up_since is not None and now - self.up_since > self.config.settle \
                and now - self._last_reconcile > self.config.reconcile_interval and not self.pending:
            self.reconcile()

    def reconcile(self) -> None:
        """Make every local VTEP hold exactly what BGP says, and BGP hold every local MAC."""
        self._last_reconcile = time.monotonic()
        local = self.announced
        for vni in list(self.rd_index):
            want = {e for e in self.remote.desired(vni) if (vni, getattr(e, "mac", None)) not in local}
            have = self.fdb.current(vni)
            if want - have:
                log.info("reconcile VNI %d: %d missing entries", vni, len(want - have))
                self.fdb.install(want - have)
            if have - want:
                log.info("reconcile VNI %d: %d stale entries", vni, len(have - want))
                self.fdb.remove(have - want)
        lans = set(self.datapath.lans())
        for vni in lans:
            if vni not in self.rd_index:
                self._queue.put(LocalVtep(vni, True))
            kernel = self.fdb.local_macs(vni)
            for mac in kernel:
                if (vni, mac) not in self.announced:
                    self._queue.put(LocalMac(vni, mac, True))
            for v, mac in list(self.announced):
                if v == vni and mac not in kernel:  # its port went without a DEL
                    self._queue.put(LocalMac(vni, mac, False, learned=True))
        for vni in set(self.rd_index) - lans:  # the LAN went without a DEL
            self._queue.put(LocalVtep(vni, False))
