"""The node's EVPN speaker: announces local LANs and MACs, programs remote ones into the VTEPs.

One worker thread applies everything in order: local changes (from CNI verbs and the MAC
watch) become BGP commands; BGP events become VTEP FDB entries. Between batches it drains the
queue, so a burst of routes turns into one batch of BGP commands and one pass over netlink.

Continuity (os-ken has no graceful restart, so the agent provides its own):
- on start the kernel is read first (local LANs and MACs are re-announced) and remote FDB
  entries are left in place; they are reconciled against BGP only once a reflector session has
  been up for `settle` seconds;
- a restarting agent's routes are kept by the reflector for a grace time (see
  speaker.osken_compat.enable_restart_grace), so other nodes do not drop its MACs;
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

from cni.plugin import LanEvents
from speaker.bgp_client import BgpError, BgpProcess
from speaker.evpn_state import MacEntry, RemoteRoutes
from speaker.fdb import VtepFdb
from speaker.macwatch import MacWatch

log = logging.getLogger(__name__)


class NodeSpeaker(LanEvents):
    def __init__(self, datapath, args, settle: float = 3.0, withdraw_delay: float = 0.2):
        self.datapath = datapath
        self.router_id = datapath.default_underlay.ip
        self.args = args
        self.settle = settle
        self.stale_time = getattr(args, "stale_time", 60.0)
        self.withdraw_delay = withdraw_delay
        self.remote = RemoteRoutes()
        self.fdb = VtepFdb()
        self.rd_index: dict[int, int] = {}       # local VNI -> RD number
        self.announced: dict[tuple[int, str], int] = {}  # local (vni, mac) in BGP -> mobility seq
        self.peers_up: set[str] = set()
        self.up_since: float | None = None     # when the first session came up
        self.all_down_since: float | None = time.monotonic()
        self._static_now: dict[int, set] = {}   # VNI -> pod MACs, read once per batch
        self.pending: dict = {}                # entry -> when its withdrawal was seen
        self.bgp: BgpProcess | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="speaker", daemon=True)
        self._macwatch = MacWatch(lambda vni, mac, present: self._queue.put(
            ("learned", vni, mac, present)))
        self._last_reconcile = 0.0

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn_bgp()
        self._macwatch.start()
        self._read_kernel()
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(("stop",))
        self._worker.join(timeout=5)
        self._macwatch.stop()
        if self.bgp:
            self.bgp.close()
        self.fdb.close()

    def not_ready(self) -> str:
        if self.bgp is None or not self.bgp.alive:
            return "the BGP process is not running"
        return ""

    def _spawn_bgp(self) -> None:
        self.bgp = BgpProcess(on_event=lambda event: self._queue.put(("bgp", event)), name="speaker-bgp")
        a = self.args
        self.bgp.call("start", router_id=self.router_id, asn=a.asn, role="speaker",
                      listen_host=self.router_id, listen_port=a.bgp_port,
                      hold_time=a.hold_time)
        for reflector in a.reflector:
            extra = {"password": a.md5_password} if a.md5_password else {}
            self.bgp.call("peer_add", address=reflector, connect_mode=a.connect_mode, **extra)
        self.peers_up.clear()

    def _read_kernel(self) -> None:
        """Queue the kernel's local LANs and pod MACs for announcement (start, BGP restart)."""
        for vni in self.datapath.lans():
            self._queue.put(("lan", vni, True))
            for port in self.datapath.ports(vni):
                for mac in port.macs:
                    self._queue.put(("mac", vni, mac, True))

    # -- LanEvents: called by CNI verbs (agent threads) ---------------------------------------
    def lan_added(self, vni: int) -> None:
        self._queue.put(("lan", vni, True))

    def lan_removed(self, vni: int) -> None:
        self._queue.put(("lan", vni, False))

    def mac_added(self, vni: int, mac: str) -> None:
        self._queue.put(("mac", vni, mac, True))

    def mac_removed(self, vni: int, mac: str) -> None:
        self._queue.put(("mac", vni, mac, False))

    # -- reflectors that come and go (the agent's --reflector-service) -------------------------
    def add_reflector(self, address: str) -> None:
        """Peer with one more reflector. Our speaker is passive (reflectors dial the nodes), but
        os-ken refuses a connection from an address it was not told about."""
        self._queue.put(("reflector", address, True))

    def remove_reflector(self, address: str) -> None:
        """Stop peering with a reflector; routes learned only from it are withdrawn."""
        self._queue.put(("reflector", address, False))

    def _reflector(self, address: str, present: bool) -> None:
        """On the worker. `args.reflector` is the live list: a restarted BGP process
        (`_spawn_bgp`) peers with exactly the reflectors known then."""
        reflectors = self.args.reflector
        if present == (address in reflectors):
            return
        try:
            if present:
                reflectors.append(address)
                extra = {"password": self.args.md5_password} if self.args.md5_password else {}
                self.bgp.call("peer_add", address=address, connect_mode=self.args.connect_mode,
                              **extra)
            else:
                reflectors.remove(address)
                self.bgp.call("peer_del", address=address)
                if address in self.peers_up:  # os-ken reports no "down" for a deleted peer
                    self._peer_event(address, False)
        except BgpError as exc:  # a dead BGP process is respawned with the list as it is now
            log.warning("reflector %s: BGP %s failed: %s", address,
                        "peer_add" if present else "peer_del", exc)
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
        commands: list[tuple[str, dict]] = []
        adds, removes = [], []
        for item in items:
            kind = item[0]
            if kind == "stop":
                return
            if kind == "lan":
                self._local_lan(item[1], item[2], commands, adds)
            elif kind in ("mac", "learned"):
                self._local_mac(kind, item[1], item[2], item[3], commands, adds)
            elif kind == "bgp":
                self._bgp_event(item[1], adds, removes)
            elif kind == "reflector":
                self._reflector(item[1], item[2])
        self._send(commands)
        self._program(adds, removes)

    def _local_lan(self, vni: int, present: bool, commands: list, adds: list) -> None:
        if present and vni not in self.rd_index:
            used = set(self.rd_index.values())
            self.rd_index[vni] = next(i for i in range(1, 65536) if i not in used)
            commands.append(("vni_add", {"vni": vni, "rd_index": self.rd_index[vni]}))
            adds.extend(self.remote.desired(vni))  # routes kept from before the VNI was local
        elif not present and vni in self.rd_index and self.datapath.lan(vni) is None:
            del self.rd_index[vni]
            self.announced = {k: seq for k, seq in self.announced.items() if k[0] != vni}
            commands.append(("vni_del", {"vni": vni}))

    def _local_mac(self, kind: str, vni: int, mac: str, present: bool, commands: list,
                   adds: list) -> None:
        key = (vni, mac)
        if kind == "mac":  # a pod port came or went: read the VNI's pod MACs again
            self._static_now.pop(vni, None)
        if present and key not in self.announced and vni in self.rd_index:
            # Seen elsewhere before: the MAC moved here, so outbid every other announcement.
            seq = self.remote.max_seq(vni, mac) + 1 if self.remote.winner(vni, mac) else 0
            self.announced[key] = seq
            commands.append(("mac_add", {"vni": vni, "mac": mac, "seq": seq}))
        elif not present and key in self.announced:
            if kind == "learned" and self._is_static(vni, mac):
                return  # aged out of the bridge, but the pod still owns it (added at ADD)
            del self.announced[key]
            commands.append(("mac_del", {"vni": vni, "mac": mac}))
            winner = self.remote.winner(vni, mac)
            if winner:  # the MAC lives on elsewhere (it moved): forward there now
                adds.append(MacEntry(vni, mac, winner))

    def _is_static(self, vni: int, mac: str) -> bool:
        if vni not in self._static_now:  # reset by _process: one read per VNI and batch
            self._static_now[vni] = {m for port in self.datapath.ports(vni) for m in port.macs}
        return mac in self._static_now[vni]

    def _bgp_event(self, event: dict, adds: list, removes: list) -> None:
        if event.get("event") == "peer":
            self._peer_event(event["address"], event["state"] == "up")
            return
        if event.get("event") not in ("mac", "flood") or event.get("vtep") == self.router_id:
            return
        a, r = self.remote.apply(event)
        adds.extend(a)
        removes.extend(r)

    def _peer_event(self, address: str, up: bool) -> None:
        log.info("reflector %s %s", address, "up" if up else "down")
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
        """Consecutive commands of one kind go as one batch (packed into few UPDATEs)."""
        i = 0
        while i < len(commands):
            op = commands[i][0]
            j = i
            while j < len(commands) and commands[j][0] == op:
                j += 1
            try:
                self.bgp.call_many(op, [args for _, args in commands[i:j]], timeout=30)
            except BgpError as exc:
                log.warning("BGP %s failed: %s", op, exc)
            i = j

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
                and now - self.all_down_since < self.stale_time:
            return []  # no reflector reachable: keep forwarding on what we know
        if self.peers_up and self.up_since is not None and now - self.up_since < self.settle:
            return []  # sessions just came back: the reflectors may not have relearned it all
        due = []
        for entry, since in list(self.pending.items()):
            if self.peers_up and now - since < self.withdraw_delay:
                continue
            del self.pending[entry]
            if not self.remote.wants(entry):
                due.append(entry)
        return due

    # -- periodic work -------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self._stop.is_set():
            return
        if self.bgp is not None and not self.bgp.alive:
            log.error("BGP process died; restarting it and re-announcing local state")
            self.rd_index.clear()
            self.announced.clear()
            self._spawn_bgp()
            self._read_kernel()
            return
        due = self._due_removals(now)
        if due:
            self.fdb.remove(due)
        interval = getattr(self.args, "reconcile_interval", 30.0)
        if self.up_since is not None and now - self.up_since > self.settle \
                and now - self._last_reconcile > interval and not self.pending:
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
                self._queue.put(("lan", vni, True))
            kernel = self.fdb.local_macs(vni)
            for mac in kernel:
                if (vni, mac) not in self.announced:
                    self._queue.put(("mac", vni, mac, True))
            for v, mac in list(self.announced):
                if v == vni and mac not in kernel:  # its port went without a DEL
                    self._queue.put(("learned", vni, mac, False))
        for vni in set(self.rd_index) - lans:  # the LAN went without a DEL
            self._queue.put(("lan", vni, False))
