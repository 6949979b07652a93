"""The node's EVPN speaker: announces local LANs and MACs, programs remote ones into the VTEPs.

One worker thread applies everything in order: local changes (from CNI verbs and the MAC
watch) become BGP commands; BGP events become VTEP FDB entries. Between batches it drains the
queue, so a burst of routes turns into one batch of BGP commands and one pass over netlink.

Nothing announced is lost (speaker.ledger): what should be announced (`vnis`, `macs`) is kept
apart from what the BGP process accepted (`rd_index`, `announced`, updated from its replies
only). Each batch sends the difference for what changed; a command refused, timed out or lost
with the process is retried (0.5 s, doubling to 30 s) and counted; reconciliation asks the
process what it originates (`Originated`) and repairs the difference both ways.

What others send is bounded (docs/operations.md, "Multi-tenant clusters"):
- local MACs: at most `max_macs_per_port` per pod port and `max_macs_per_node` per node are
  announced (speaker.mac_limits; a pod's own MAC counts but is never refused); the MAC watch's
  events wait in a bounded backlog (beyond it they are dropped, counted, and the kernel is
  re-read once the burst is over);
- received routes: a tunnel endpoint that cannot be another node (base.primitives.vtep_address)
  is dropped before it reaches RemoteRoutes or the kernel, counted and logged once per route;
- duplicate MACs (bgp.mobility): a MAC that moves `dup_max_moves` times within `dup_time`
  seconds is frozen for `dup_freeze` seconds: the FDB keeps its entry and this node stops
  outbidding the other claims. A claim we cannot outbid (sequence number 2^32-1) is met with
  2^32-1 (receivers then take the latest) and counted, never sent as a command the BGP process
  refuses.
Events worth counting are in `counters` (exported as metrics); warnings about what pods and
peers send are rate-limited (base.logs.LogLimiter).

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

Why one module of ~680 lines: the worker is the one thread that orders local changes, received
routes and timers; each rule above is a short method on its state. What can stand alone already
does (speaker.ledger, speaker.mac_limits, speaker.evpn_state, bgp.mobility: pure, tested alone);
the rest reads and writes the worker's state in one pass and would only be split into modules
that call each other.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from base.logs import LogLimiter
from base.primitives import vtep_address
from base.tenancy import VniClaim
from bgp.client import BgpError, BgpProcess
from bgp.mobility import DuplicateDetector, Freeze
from bgp.protocol import MAX_SEQ, MacRoute, Originated, PeerAdd, PeerDel, PeerState, Start, VtepRoute
from cni.plugin import Announcements
from speaker.config import NodeConfig
from speaker.evpn_state import FloodEntry, MacEntry, RemoteRoutes
from speaker.ledger import Ledger
from speaker.mac_limits import MacLimits
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
    traffic (the MAC watch), as opposed to a CNI verb or the kernel read at start. `port`: the
    bridge port's ifindex when known; `static`: a static entry on it (the pod's own MAC); `pod`:
    the pod holding it (base.tenancy.pod_id), when known: its MAC route names it."""
    vni: int
    mac: str
    present: bool
    learned: bool = False
    port: int | None = None
    static: bool = False
    pod: str | None = None

    @property
    def own(self) -> bool:
        """The pod's own MAC (given at ADD), as opposed to one its traffic taught the bridge."""
        return not self.learned or self.static


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
    (`watch_macs(on_mac)`, on_mac(vni, mac, present, port, static)) and the worker; nothing runs
    before. `fdb` is the VTEP forwarding table writer (speaker.fdb.VtepFdb); `datapath` is read
    for local LANs and pod MACs."""

    def __init__(self, config: NodeConfig, datapath, fdb, spawn_bgp: Callable[..., BgpProcess] = BgpProcess,
                 watch_macs: Callable = MacWatch, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.datapath = datapath
        self.fdb = fdb
        self.router_id = datapath.default_underlay.ip
        self.reflectors: list[str] = list(config.reflectors)  # a restarted BGP process peers with these
        self.remote = RemoteRoutes()
        self.ledger = Ledger()  # what should be announced, what the BGP process accepted
        self.limits = MacLimits(config.max_macs_per_port, config.max_macs_per_node)
        self.duplicates = DuplicateDetector(config.dup_max_moves, config.dup_time, config.dup_freeze)
        self.held: dict[tuple[int, str], LocalMac] = {}   # local claims of frozen MACs, not announced
        # The claims other nodes' VTEP routes carry: {vni: {vtep: claim}}. A withdrawn claim
        # stays as long as its flood entry does (the removal waits as theirs: see the module
        # docstring), so a reflector outage does not make a VNI look free.
        self.claims: dict[int, dict[str, VniClaim]] = {}
        self._view = threading.Lock()  # `remote` and `claims`: CNI requests read them (ADD checks)
        self.peers_up: set[str] = set()
        self.up_since: float | None = None                # when the first session came up
        self.all_down_since: float | None = clock()
        self.pending: dict = {}                           # entry -> when its withdrawal was seen
        # Events worth counting, by name ("bgp_command_failed", ...): exported as metrics.
        self.counters: Counter[str] = Counter()
        self.bgp: BgpProcess | None = None
        self._clock = clock
        self._warn = LogLimiter(log, clock=clock)
        self._good_vteps: set[str] = set()                # tunnel endpoints _acceptable passed
        self._static_now: dict[int, set] = {}             # VNI -> pod MACs, read once per batch
        self._spawn_bgp = spawn_bgp
        self._queue: queue.Queue = queue.Queue()
        self._backlog_lock = threading.Lock()
        # Pod MACs an ADD recorded on its port and announced, not yet taken by the worker: a
        # remote entry for one would move the port's static entry onto the VTEP (the kernel's
        # extern_learn replace moves any entry), so none is installed meanwhile.
        self._adding: set[tuple[int, str]] = set()
        self._adding_lock = threading.Lock()
        self._backlog = 0                                 # learned-MAC events in the queue
        self._dropped = 0                                 # ... dropped since the worker last looked
        self._reread_local = False                        # events were dropped: read the kernel again
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="speaker", daemon=True)
        self._macwatch = watch_macs(self._mac_seen)
        self._last_reconcile = 0.0

    # What should be announced (local VNIs and MACs) and what the BGP process accepted.
    @property
    def vnis(self) -> dict[int, int]:
        return self.ledger.vnis

    @property
    def macs(self) -> dict[tuple[int, str], int]:
        return self.ledger.macs

    @property
    def rd_index(self) -> dict[int, int]:
        return self.ledger.rd_index

    @property
    def announced(self) -> dict[tuple[int, str], int]:
        return self.ledger.announced

    @property
    def pending_announcements(self) -> int:
        """Announcements (and withdrawals) the BGP process has not accepted yet and that wait
        for a retry: a gauge for the metrics."""
        return self.ledger.pending

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
                            listen_port=self.config.bgp_port, hold_time=self.config.hold_time,
                            max_routes_per_peer=self.config.max_routes_per_peer))
        for reflector in self.reflectors:
            self.bgp.call(self._peer(reflector))
        self.peers_up.clear()

    def _peer(self, address: str) -> PeerAdd:
        return PeerAdd(address, self.config.connect_mode, self.config.md5_password or None)

    def _read_kernel(self) -> None:
        """Queue the kernel's local LANs and pod MACs for announcement (start)."""
        for vni in self.datapath.lans():
            self._queue.put(LocalVtep(vni, True))
            for port in self.datapath.ports(vni):
                for mac in port.macs:
                    self._queue.put(LocalMac(vni, mac, True, port=port.index, pod=port.pod_id))

    # -- Announcements: called by CNI verbs (agent threads) -----------------------------------
    def vtep_added(self, vni: int) -> None:
        self._queue.put(LocalVtep(vni, True))

    def vtep_removed(self, vni: int) -> None:
        self._queue.put(LocalVtep(vni, False))

    def mac_added(self, vni: int, mac: str, pod: str | None = None) -> None:
        with self._adding_lock:
            self._adding.add((vni, mac))
        self._queue.put(LocalMac(vni, mac, True, pod=pod))

    def mac_removed(self, vni: int, mac: str) -> None:
        self._queue.put(LocalMac(vni, mac, False))

    # -- the MAC watch (its own thread) ------------------------------------------------------
    def _mac_seen(self, vni: int, mac: str, present: bool, port: int | None = None,
                  static: bool = False) -> None:
        """A bridge learned or forgot a MAC on a pod port. These are the events a pod controls
        (one per source address it sends from): at most `mac_backlog` wait for the worker; the
        rest are dropped and counted, and the worker reads the kernel again afterwards."""
        with self._backlog_lock:
            if self._backlog >= self.config.mac_backlog:
                self._dropped += 1
                return
            self._backlog += 1
        self._queue.put(LocalMac(vni, mac, present, learned=True, port=port, static=static))

    # -- what other nodes claim: read by CNI ADDs (agent threads) ------------------------------
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
                items = [self._queue.get(timeout=0.1 if self.pending or self.ledger.pending else 1.0)]
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
        adds, removes = [], []
        learned = 0
        for item in items:
            if item is _STOP:
                return
            if isinstance(item, LocalVtep):
                self._local_vtep(item, adds)
            elif isinstance(item, LocalMac):
                learned += item.learned
                self._local_mac(item, adds)
            elif isinstance(item, Received):
                self._received(item.event, adds, removes)
            elif isinstance(item, ReflectorChange):
                self._reflector(item)
        self._count_backlog(learned)
        self._sync()
        self._program(adds, removes)

    def _count_backlog(self, taken: int) -> None:
        with self._backlog_lock:
            self._backlog = max(0, self._backlog - taken)
            dropped, self._dropped = self._dropped, 0
        if dropped:
            self.counters["mac_events_dropped"] += dropped
            self._reread_local = True
            self._warn.warning("backlog", "MAC watch: %d learned-MAC events dropped (backlog of %d "
                               "full); the pod MACs are read from the kernel again", dropped,
                               self.config.mac_backlog)

    # -- local changes -------------------------------------------------------------------------
    def _local_vtep(self, change: LocalVtep, adds: list) -> None:
        vni = change.vni
        if change.present:
            local = self.datapath.lan_claim(vni)  # the claim its bridge records (base.tenancy)
            new = vni not in self.vnis
            self.ledger.add_vni(vni, local[1] if local else None)
            if new:
                # Routes kept from before the VNI was local, but none for a pod MAC of this node:
                # its ADD recorded it on the pod's port before announcing it, and its LocalMac may
                # come in the next batch; a remote entry would replace the port's static one.
                adds.extend(e for e in self.remote.desired(vni)
                            if not (isinstance(e, MacEntry) and self._is_static(vni, e.mac)))
        elif not change.present and vni in self.vnis and self.datapath.lan(vni) is None:
            for key in [k for k in (*self.macs, *self.held) if k[0] == vni]:
                self._forget_local(key)
            self.ledger.remove_vni(vni)

    def _local_mac(self, change: LocalMac, adds: list) -> None:
        vni, mac = change.vni, change.mac
        key = (vni, mac)
        if not change.learned:  # a pod port came or went: read the VNI's pod MACs again
            self._static_now.pop(vni, None)
            with self._adding_lock:
                self._adding.discard(key)
        if not change.present:
            if key not in self.macs and key not in self.held and key not in self.limits.refused:
                return
            if change.learned and self._is_static(vni, mac):
                return  # aged out of the bridge, but the pod still owns it (added at ADD)
            announced_here = key in self.macs
            self._forget_local(key)
            winner = self.remote.winner(vni, mac)
            if announced_here and winner:  # the MAC lives on elsewhere (it moved): forward there now
                adds.append(MacEntry(vni, mac, winner))
            return
        if vni not in self.vnis:
            return
        if key in self.macs:
            self.limits.admit(key, change.port, change.own)  # its port, now known
            if change.pod and change.pod != self.ledger.pods.get(key):  # another pod holds it now
                self.ledger.set_mac(key, self.macs[key], change.pod)
            return
        if key in self.held:
            return
        if change.learned and not change.static and (self.mac_holder(vni, mac) or (None, None))[1]:
            # A frame from a MAC another node's pod holds: the MAC watch learned it, no CNI verb
            # gave it to a pod here; announcing it would take that pod's traffic.
            self.counters["mac_held_elsewhere"] += 1
            self._warn.warning("held", "VNI %d: MAC %s, held by a pod behind %s, was seen on a port "
                               "here: not announced", vni, mac, self.remote.winner(vni, mac),
                               key=("held", key))
            return
        if not self._admit(key, change):
            return
        winner = self.remote.winner(vni, mac)
        seq = 0
        if winner:  # seen elsewhere before: the MAC moved here, so outbid every other claim
            if self.duplicates.frozen(key) or self._moved(key, winner):
                self.limits.release(key)
                self.held[key] = change  # frozen where it is: no outbidding, announced once released
                return
            seq = self._outbid(key)
        self.ledger.set_mac(key, seq, change.pod)

    def _admit(self, key: tuple[int, str], change: LocalMac) -> bool:
        """Whether the MAC fits in the limits; a refusal is counted and logged once."""
        known = key in self.limits.refused
        refused = self.limits.admit(key, change.port, change.own)
        if not refused:
            return True
        if not known:
            self.counters[f"mac_refused_{refused}"] += 1
            limit = self.limits.per_port if refused == "port_limit" else self.limits.per_node
            self._warn.warning(refused, "MAC %s on VNI %d (port %s) not announced: %s of %d "
                               "reached", key[1], key[0], change.port, refused.replace("_", " "), limit)
        return False

    def _forget_local(self, key: tuple[int, str]) -> None:
        self.limits.release(key)
        self.held.pop(key, None)
        self.ledger.drop_mac(key)

    def _outbid(self, key: tuple[int, str]) -> int:
        """The sequence number that wins over every claim heard for the MAC. Nothing wins over
        2^32-1: it is met with 2^32-1 (receivers take the latest of equal claims) and counted;
        the duplicate detection ends such a race."""
        top = self.remote.max_seq(*key)
        if top < MAX_SEQ:
            return top + 1
        self.counters["mac_seq_exhausted"] += 1
        self._warn.warning("seq", "MAC %s on VNI %d: another node claims it with sequence number "
                           "%d, which cannot be outbid; announcing it with the same number",
                           key[1], key[0], top, key=("seq", key))
        return MAX_SEQ

    def _is_static(self, vni: int, mac: str) -> bool:
        if vni not in self._static_now:  # reset by _process: one read per VNI and batch
            self._static_now[vni] = {m for port in self.datapath.ports(vni) for m in port.macs}
        return mac in self._static_now[vni]

    # -- duplicate MACs -----------------------------------------------------------------------
    def _moved(self, key: tuple[int, str], where: str) -> bool:
        """Count a move of the MAC (a newer claim takes it); whether this move froze it, in
        which case it stays `where` it is now ("local" or a VTEP)."""
        freeze = self.duplicates.move(key, self._clock())
        if freeze is None:
            return False
        self._frozen(key, freeze, where)
        return True

    def _frozen(self, key: tuple[int, str], freeze: Freeze, where: str) -> None:
        if where != "local":
            self.remote.pin(*key, where)
        self.counters["mac_duplicate_frozen"] += 1
        until = "until the agent restarts" if freeze.until is None else \
            f"for {freeze.until - freeze.since:.0f} s"
        self._warn.warning("duplicate", "duplicate MAC %s on VNI %d: %d moves within %.0f s; frozen "
                           "at %s %s (claims from elsewhere are no longer followed or outbid)",
                           key[1], key[0], freeze.moves, self.duplicates.window,
                           "this node" if where == "local" else where, until, key=("dup", key, freeze.since))

    def _release_frozen(self, now: float) -> None:
        adds = []
        for key in self.duplicates.expire(now):
            self.counters["mac_duplicate_released"] += 1
            log.info("duplicate MAC %s on VNI %d released: it follows moves again", key[1], key[0])
            pinned = self.remote.pins.get(key)
            self.remote.pin(*key, None)
            winner = self.remote.winner(*key)
            if winner and winner != pinned and key not in self.macs:
                adds.append(MacEntry(key[0], key[1], winner))
            claim = self.held.pop(key, None)
            if claim is not None:  # the local claim is made again (and outbids)
                self._local_mac(claim, adds)
        self._sync()
        if adds:
            self._program(adds, [])

    # -- received routes ------------------------------------------------------------------------
    def _received(self, event, adds: list, removes: list) -> None:
        if isinstance(event, PeerState):
            if event.reason:  # the BGP process closed the session (ROUTE_LIMIT)
                log.warning("reflector %s closed: %s (more routes than --max-routes-per-peer; held "
                            "off, then dialled again)", event.address, event.reason)
                self.counters[f"peer_{event.reason}"] += 1
            self._peer_state(event.address, event.up)
            return
        if not self._acceptable(event):
            return
        if isinstance(event, MacRoute) and event.added:
            self._claim_heard(event)
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

    def _acceptable(self, route: MacRoute | VtepRoute) -> bool:
        """A route naming a tunnel endpoint no other node can have is dropped before it reaches
        RemoteRoutes or the kernel: counted, and logged once per route. A cluster has few VTEPs
        and every route names one: each is checked once (parsing it was 15 % of the agent's CPU
        for 10k MACs)."""
        if route.vtep in self._good_vteps:
            return True
        try:
            vtep_address(route.vtep, own=self.router_id)
            if len(self._good_vteps) >= 4096:
                self._good_vteps.clear()
            self._good_vteps.add(route.vtep)
            return True
        except ValueError as exc:
            key = ("vtep", route.vni, getattr(route, "mac", None), route.vtep)
            if not route.added:
                self._warn.forget(key)
                return False
            self.counters["route_refused_bad_vtep"] += 1
            what = f"MAC route {route.mac}" if isinstance(route, MacRoute) else "VTEP route"
            self._warn.warning("bad_vtep", "refused the %s of VNI %d: tunnel endpoint %s", what,
                               route.vni, exc, key=key)
            return False

    def _claim_heard(self, route: MacRoute) -> None:
        """A node claims a MAC: a move when it takes the MAC from where it is now with a newer
        sequence number (from us, or from the VTEP we forward it to)."""
        key = (route.vni, route.mac)
        if self.duplicates.frozen(key):
            if key not in self.remote.pins and key not in self.macs:
                self.remote.pin(*key, self.remote.winner(*key) or route.vtep)
            return
        if key in self.macs:
            if route.seq > self.macs[key]:
                self._moved(key, "local")
            return
        current = self.remote.winner(*key)
        if current and current != route.vtep and route.seq > self.remote.seq(*key, current):
            self._moved(key, current)

    def _peer_state(self, address: str, up: bool) -> None:
        log.info("reflector %s %s", address, "up" if up else "down")
        self.counters["session_up" if up else "session_down"] += 1
        if up:
            self.peers_up.add(address)
            if self.up_since is None:
                self.up_since = self._clock()
            self.all_down_since = None
        else:
            self.peers_up.discard(address)
            if not self.peers_up:
                self.up_since = None
                self.all_down_since = self._clock()

    # -- announcements: what should be announced, to the BGP process ---------------------------
    def _sync(self) -> None:
        """Send what differs between what should be announced and what the BGP process
        accepted (for what changed, and the retries due), in one write: the process packs
        their routes into few UPDATEs. What it accepts is recorded, the rest retried."""
        if self.bgp is None:
            return
        commands = self.ledger.commands(self._clock())
        if not commands:
            return
        try:
            replies = self.bgp.call_many(commands, timeout=self.config.bgp_timeout)
        except BgpError as exc:
            log.warning("BGP batch of %d commands failed: %s; retrying", len(commands), exc)
            replies = [None] * len(commands)
        for command, reply in zip(commands, replies):
            if reply is not None and reply.ok:
                self.ledger.accepted(command)
                continue
            if reply is not None:
                log.warning("BGP %s failed: %s; retrying", command.op, reply.error)
            self.counters["bgp_command_failed"] += 1
            self.ledger.failed(command, self._clock())

    # -- the kernel --------------------------------------------------------------------------------
    def _program(self, adds: list, removes: list) -> None:
        now = self._clock()
        with self._adding_lock:
            adding = set(self._adding)
        adds = [e for e in adds if e.vni in self.vnis
                and (key := (e.vni, getattr(e, "mac", None))) not in self.macs and key not in adding]
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
        now = self._clock()
        if self._stop.is_set():
            return
        if self.bgp is not None and not self.bgp.alive:
            log.error("BGP process died; restarting it and announcing everything again")
            self.ledger.lost()
            self._start_bgp()
            self._sync()
            return
        self._release_frozen(now)
        due = self._due_removals(now)
        if due:
            self.fdb.remove(due)
        if self._reread_local and self._backlog == 0:
            self._reread_local = False
            self._reconcile_local_macs()
        if self.up_since is not None and now - self.up_since > self.config.settle \
                and now - self._last_reconcile > self.config.reconcile_interval and not self.pending:
            self.reconcile()

    def reconcile(self) -> None:
        """Make the BGP process announce exactly what should be, every local VTEP hold exactly
        what BGP says, and every local pod MAC be considered for announcement."""
        self._last_reconcile = self._clock()
        self._reconcile_bgp()
        for vni in list(self.vnis):
            want = {e for e in self.remote.desired(vni) if (vni, getattr(e, "mac", None)) not in self.macs}
            have = self.fdb.current(vni)
            if want - have:
                log.info("reconcile VNI %d: %d missing entries", vni, len(want - have))
                self.fdb.install(want - have)
            if have - want:
                log.info("reconcile VNI %d: %d stale entries", vni, len(have - want))
                self.fdb.remove(have - want)
        self._reconcile_local_macs()

    def _reconcile_bgp(self) -> None:
        """What the BGP process originates is what it accepted: take it as such, and send what
        differs from what should be announced."""
        try:
            originated = self.bgp.call(Originated(), timeout=self.config.bgp_timeout)
        except BgpError as exc:
            log.warning("reconcile: cannot read what the BGP process originates: %s", exc)
            return
        differ = self.ledger.originated(originated)
        if differ:
            log.info("reconcile: %d routes differ from what the BGP process originates", differ)
            self.counters["bgp_reconcile_repaired"] += differ
        self._sync()

    def _reconcile_local_macs(self) -> None:
        """Every pod MAC of the kernel considered for announcement, every announced one still
        there: after lost MAC watch events, a LAN or a port gone without a DEL. The kernel's
        entries are streamed and at most `max_macs_per_port` new learned ones per port kept:
        a port may hold 100k of them."""
        adds: list = []
        self._static_now = {}
        lans = set(self.datapath.lans())
        for vni in lans:
            if vni not in self.vnis:
                self._local_vtep(LocalVtep(vni, True), adds)
            ours = {mac for v, mac in (*self.macs, *self.held) if v == vni}
            still, new, learned = set(), [], Counter()
            for mac, port, static in self.fdb.local_macs(vni):
                if mac in ours:
                    still.add(mac)
                elif static or learned[port] < self.limits.per_port:
                    learned[port] += not static
                    new.append(LocalMac(vni, mac, True, learned=True, port=port, static=static))
            for mac in ours - still:  # its port went without a DEL (first: it frees a place)
                self._local_mac(LocalMac(vni, mac, False, learned=True), adds)
            for change in new:
                self._local_mac(change, adds)
        for vni in set(self.vnis) - lans:  # the LAN went without a DEL
            self._local_vtep(LocalVtep(vni, False), adds)
        self._sync()
        self._program(adds, [])
