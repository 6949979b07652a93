"""The node speaker (speaker.node) built normally, with its BGP process, FDB, MAC watch and
datapath replaced by recorders: local changes in, BGP commands out; routes in, FDB entries out.
The real processes and kernel are exercised end to end in test_evpn_e2e.py, test_faults.py and
test_tenant_node.py."""
from __future__ import annotations

import logging
import types

import pytest

from base.tenancy import VniClaim
from bgp.client import BgpError
from bgp.peer_rules import DEFAULT_PER_REFLECTOR
from bgp.protocol import (ADD, DEL, MAX_SEQ, MacAdd, MacDel, MacRoute, Originated, OriginatedRoutes,
                          PeerAdd, PeerDel, PeerState, Reply, ROUTE_LIMIT, Start, VtepAdd, VtepDel,
                          VtepRoute)
from speaker.config import NodeConfig
from speaker.evpn_state import FloodEntry, MacEntry
from speaker.node import (LocalMac, LocalVtep, NodeSpeaker, Received, ReflectorChange)

ME, OTHER, THIRD = "192.0.2.2", "192.0.2.3", "192.0.2.4"
MAC, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


class Bgp:
    """Records every command and keeps what it originates, as the BGP process does (a MacAdd of
    an unknown VNI or with a sequence number beyond 32 bits is refused, as the process's decoder
    refuses it). `fail`: calls raise as a dead process's would; `refuse`: commands refused once
    each; `time_out`: how many batches get no reply (nothing applied)."""

    def __init__(self, on_event=None, name=""):
        self.on_event, self.commands, self.fail, self.alive = on_event, [], False, True
        self.refuse: list = []
        self.time_out = 0
        self.vteps: dict[int, int] = {}
        self.macs: dict[tuple[int, str], int] = {}

    def call(self, command, timeout=10):
        reply = self.call_many([command], timeout)[0]
        if not reply.ok:
            raise BgpError(reply.error)
        return reply.result

    def call_many(self, commands, timeout=10):
        if self.fail:
            raise BgpError("gone")
        if self.time_out:
            self.time_out -= 1
            raise BgpError(f"no reply within {timeout} s")
        replies = []
        for i, command in enumerate(commands):
            self.commands.append(command)
            if command in self.refuse:
                self.refuse.remove(command)
                replies.append(Reply(i, False, error="refused"))
                continue
            result = self._apply(command)
            replies.append(Reply(i, False, error=result) if isinstance(result, str) else Reply(i, True, result))
        return replies

    def _apply(self, command):
        if isinstance(command, VtepAdd):
            self.vteps[command.vni] = command.rd_index
        elif isinstance(command, VtepDel):
            self.vteps.pop(command.vni, None)
            self.macs = {k: v for k, v in self.macs.items() if k[0] != command.vni}
        elif isinstance(command, MacAdd):
            if not 0 <= command.seq <= MAX_SEQ:
                return f'"seq" must be in 0..{MAX_SEQ}, not {command.seq}'
            if command.vni not in self.vteps:
                return f"vni {command.vni} was not added"
            self.macs[(command.vni, command.mac)] = command.seq
        elif isinstance(command, MacDel):
            self.macs.pop((command.vni, command.mac), None)
        elif isinstance(command, Originated):
            return OriginatedRoutes(dict(self.vteps), {(v, m, None): seq for (v, m), seq in self.macs.items()})
        return True

    def close(self):
        pass


class Fdb:
    def __init__(self):
        self.installed, self.removed, self.kernel, self.local = [], [], {}, {}

    def install(self, entries):
        self.installed += sorted(entries, key=repr)
        return len(entries)

    def remove(self, entries):
        self.removed += sorted(entries, key=repr)
        return len(entries)

    def current(self, vni):
        return set(self.kernel.get(vni, ()))

    def local_macs(self, vni):
        return ((mac, port, static) for mac, (port, static) in self.local.get(vni, {}).items())

    def close(self):
        pass


class Datapath:
    def __init__(self, lans=None, claims=None, pod=None):
        self.default_underlay = types.SimpleNamespace(ip=ME)
        self.local = lans or {}  # vni -> [pod MACs]
        self.claims = claims or {}  # vni -> the claim its bridge records
        self.pod = pod  # the pod id of every port

    def lans(self):
        return list(self.local)

    def lan(self, vni):
        return object() if vni in self.local else None

    def lan_claim(self, vni):
        return (7, self.claims.get(vni)) if vni in self.local else None

    def ports(self, vni):
        return [types.SimpleNamespace(index=5, macs=self.local.get(vni, []), pod_id=self.pod)]


class Watch:
    def __init__(self, on_mac):
        self.on_mac, self.running = on_mac, False

    def start(self):
        self.running = True

    def stop(self):
        self.running = False


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_node(**settings) -> NodeSpeaker:
    config = NodeConfig(reflectors=("10.0.0.9",), md5_password="pw", settle=0, withdraw_delay=0,
                        **settings)
    return NodeSpeaker(config, Datapath({100: [MAC]}), Fdb(), spawn_bgp=Bgp, watch_macs=Watch,
                       clock=Clock())


@pytest.fixture
def node():
    yield make_node()


def drain(speaker):
    items = []
    while not speaker._queue.empty():
        items.append(speaker._queue.get_nowait())
    speaker._process(items)


def test_nothing_runs_before_start(node):
    assert node.bgp is None and not node._macwatch.running and node._queue.empty()
    assert node.not_ready() == "the BGP process is not running"


def test_start_peers_and_announces_what_the_kernel_holds(node):
    node._start_bgp()
    node._read_kernel()
    drain(node)
    assert node.bgp.commands == [
        Start(router_id=ME, asn=65000, listen_host=ME, listen_port=179, hold_time=9,
              max_routes_per_peer=DEFAULT_PER_REFLECTOR),
        PeerAdd("10.0.0.9", "passive", "pw"), VtepAdd(100, 1), MacAdd(100, MAC)]
    assert node.not_ready() == ""


def test_local_changes_become_commands_in_one_batch(node):
    node._start_bgp()
    node.bgp.commands.clear()
    node._process([LocalVtep(200, True), LocalMac(200, MAC2, True), LocalMac(300, MAC2, True)])
    assert node.bgp.commands == [VtepAdd(200, 1), MacAdd(200, MAC2)]  # 300 is not local: nothing
    assert node.rd_index == {200: 1} and node.announced == {(200, MAC2): 0}
    node.datapath.local = {}  # the LAN is gone from the kernel
    node._process([LocalMac(200, MAC2, False), LocalVtep(200, False)])
    assert node.bgp.commands[2:] == [VtepDel(200)]  # which withdraws the VNI's MAC routes
    assert node.rd_index == {} and node.announced == {}


def test_a_learned_mac_that_ages_out_stays_while_its_pod_owns_it(node):
    node._start_bgp()
    node._process([LocalVtep(100, True), LocalMac(100, MAC, True)])
    node.bgp.commands.clear()
    node._process([LocalMac(100, MAC, False, learned=True)])  # aged out of the bridge
    assert node.bgp.commands == []
    node._process([LocalMac(100, MAC2, True, learned=True)])
    node._process([LocalMac(100, MAC2, False, learned=True)])
    assert node.bgp.commands == [MacAdd(100, MAC2), MacDel(100, MAC2)]
    node._process([LocalMac(100, MAC2, True, learned=True), LocalMac(100, MAC2, False, learned=True)])
    assert node.bgp.commands[2:] == []  # came and went within one batch: nothing to say


def test_received_routes_of_local_vnis_are_programmed(node):
    node._start_bgp()
    node._process([Received(VtepRoute(ADD, 100, OTHER)), Received(MacRoute(ADD, 100, MAC2, OTHER)),
                   Received(MacRoute(ADD, 555, MAC2, OTHER))])
    assert node.fdb.installed == []  # VNI 100 is not local yet: kept, not programmed
    node._process([LocalVtep(100, True)])
    assert node.fdb.installed == [FloodEntry(100, OTHER), MacEntry(100, MAC2, OTHER)]
    node._process([Received(MacRoute(ADD, 100, "02:00:00:00:00:09", ME))])  # our own: refused
    assert len(node.fdb.installed) == 2 and node.counters["route_refused_bad_vtep"] == 1


def test_a_moved_mac_outbids_the_old_location(node):
    node._start_bgp()
    node._process([LocalVtep(100, True), Received(MacRoute(ADD, 100, MAC2, OTHER, seq=4))])
    node.bgp.commands.clear()
    node._process([LocalMac(100, MAC2, True)])
    assert node.bgp.commands == [MacAdd(100, MAC2, seq=5)]
    node._process([LocalMac(100, MAC2, False)])  # gone from here: forward to where it lives
    assert node.fdb.installed[-1] == MacEntry(100, MAC2, OTHER)


def test_withdrawals_wait_while_no_reflector_is_up(node):
    node._start_bgp()
    node._process([LocalVtep(100, True), Received(PeerState("10.0.0.9", True)),
                   Received(VtepRoute(ADD, 100, THIRD))])
    node._process([Received(VtepRoute(DEL, 100, THIRD))])
    node._housekeeping()
    assert node.fdb.removed == [FloodEntry(100, THIRD)]
    node._process([Received(VtepRoute(ADD, 100, OTHER)), Received(PeerState("10.0.0.9", False)),
                   Received(VtepRoute(DEL, 100, OTHER))])
    node._housekeeping()
    assert node.fdb.removed == [FloodEntry(100, THIRD)]  # kept: stale_time has not passed


def test_a_reflector_cut_for_its_routes_is_counted_and_logged(node, caplog):
    node._start_bgp()
    node._process([Received(PeerState("10.0.0.9", True)),
                   Received(PeerState("10.0.0.9", False, ROUTE_LIMIT))])
    assert node.counters["peer_route_limit"] == 1 and node.peers_up == set()
    assert "reflector 10.0.0.9 closed: route_limit" in caplog.text
    node._process([Received(PeerState("10.0.0.9", True)), Received(PeerState("10.0.0.9", False))])
    assert node.counters["peer_route_limit"] == 1


def test_reflectors_are_added_and_removed_at_runtime(node):
    node._start_bgp()
    node.bgp.commands.clear()
    node.add_reflector("10.0.0.1")
    node.add_reflector("10.0.0.1")
    node.add_reflector("10.0.0.9")  # given on the command line, already peered
    drain(node)
    assert node.bgp.commands == [PeerAdd("10.0.0.1", "passive", "pw")]
    assert node.reflectors == ["10.0.0.9", "10.0.0.1"]
    assert node.config.reflectors == ("10.0.0.9",)  # the configuration never changes
    node._peer_state("10.0.0.1", True)
    node.remove_reflector("10.0.0.1")
    drain(node)
    assert node.bgp.commands[-1] == PeerDel("10.0.0.1")
    assert node.peers_up == set() and node.all_down_since is not None
    node.bgp.fail = True  # the BGP process died: a restarted one peers from the list
    node.add_reflector("10.0.0.2")
    drain(node)
    assert node.reflectors == ["10.0.0.9", "10.0.0.2"]
    node.bgp.alive = False
    node._housekeeping()  # restarts it: peers with exactly the reflectors known now
    assert node.bgp.commands[1:] == [PeerAdd("10.0.0.9", "passive", "pw"),
                                     PeerAdd("10.0.0.2", "passive", "pw")]


def test_reconcile_repairs_the_vtep_and_requeues_lost_announcements(node):
    node._start_bgp()
    node._process([LocalVtep(100, True), Received(VtepRoute(ADD, 100, OTHER))])
    node.fdb.installed.clear()
    node.fdb.kernel[100] = {FloodEntry(100, THIRD)}  # stale; the flood entry to OTHER is missing
    node.reconcile()
    assert node.fdb.installed == [FloodEntry(100, OTHER)]
    assert node.fdb.removed == [FloodEntry(100, THIRD)]


def spoofed(i: int) -> str:
    return f"02:5f:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def started(**settings) -> NodeSpeaker:
    speaker = make_node(**settings)
    speaker.datapath.local[200] = []
    speaker.fdb.local = {100: {MAC: (5, True)}}
    speaker._start_bgp()
    speaker._process([LocalVtep(100, True), LocalVtep(200, True), LocalMac(100, MAC, True)])
    speaker.bgp.commands.clear()
    return speaker


# -- item 1: a pod spoofing source MACs ---------------------------------------------------------
def test_a_spoofing_pod_gets_its_port_limit_announced_and_the_rest_refused_once(caplog):
    node = started()
    with caplog.at_level(logging.WARNING, "speaker.node"):
        for i in range(10_000):  # what the MAC watch reports for 10k source MACs on port 7
            node._mac_seen(100, spoofed(i), True, 7, False)
        drain(node)
        for i in range(10_000):  # the same frames again (the bridge re-learns after ageing)
            node._mac_seen(100, spoofed(i), True, 7, False)
        drain(node)
    adds = [c for c in node.bgp.commands if isinstance(c, MacAdd)]
    assert adds == [MacAdd(100, spoofed(i)) for i in range(64)]
    assert len(node.announced) == 65  # the pod's own MAC and 64 of the spoofed ones
    # Every refusal counted once while the bounded record holds it; the log is not flooded.
    assert 10_000 - 64 <= node.counters["mac_refused_port_limit"] <= 2 * 10_000 - 64 - 1024
    assert len(node.limits.refused) == 1024
    assert len([m for m in caplog.messages if "not announced" in m]) == 1
    # Another pod on the node, another port: announced as before.
    node._mac_seen(200, MAC2, True, 8, False)
    drain(node)
    assert node.bgp.commands[-1] == MacAdd(200, MAC2)


def test_the_node_limit_refuses_learned_macs_but_never_a_pods_own():
    node = started(max_macs_per_port=64, max_macs_per_node=100)
    for port in (7, 8):
        for i in range(64):
            node._mac_seen(100, spoofed(port * 1000 + i), True, port, False)
    drain(node)
    assert len(node.announced) == 100 and node.counters["mac_refused_node_limit"] == 29
    node.mac_added(200, MAC2)  # a new pod's own MAC, from its ADD: still announced
    node._mac_seen(200, MAC2, True, 9, True)  # ... and its static entry's event
    drain(node)
    assert (200, MAC2) in node.announced and node.limits.on_port(9) == 1
    # The own MAC took the node beyond its limit: one spoofed MAC ageing out frees no place,
    # two do.
    node._mac_seen(100, spoofed(7000), False, 7, False)
    node._mac_seen(100, spoofed(9000), True, 9, False)
    drain(node)
    assert (100, spoofed(7000)) not in node.announced and (100, spoofed(9000)) not in node.announced
    node._mac_seen(100, spoofed(7001), False, 7, False)
    node._mac_seen(100, spoofed(9000), False, 9, False)  # aged out, from the record
    node._mac_seen(100, spoofed(9000), True, 9, False)
    drain(node)
    assert (100, spoofed(9000)) in node.announced and len(node.announced) == 100


def test_a_flood_of_mac_events_waits_in_a_bounded_backlog_then_the_kernel_is_read_again():
    node = started(mac_backlog=1000)
    for i in range(100_000):  # the worker is busy: nothing drains meanwhile
        node._mac_seen(100, spoofed(i), True, 7, False)
    assert node._queue.qsize() == 1000
    drain(node)
    assert node.counters["mac_events_dropped"] == 99_000 and node._reread_local
    assert len(node.announced) == 65
    # What the kernel holds once the burst is over: the first 32 and 100 of the dropped ones.
    kernel = [spoofed(i) for i in (*range(32), *range(50_000, 50_100))]
    node.fdb.local[100] = {MAC: (5, True), **{m: (7, False) for m in kernel}}
    node._housekeeping()
    assert not node._reread_local
    assert {k for k in node.announced if k[0] == 100} == {(100, m) for m in [MAC, *kernel[:64]]}
    assert MacDel(100, spoofed(40)) in node.bgp.commands  # announced, gone from the kernel


# -- item 2: routes checked before they reach the kernel ------------------------------------------
@pytest.mark.parametrize("vtep", ["127.0.0.1", "0.0.0.0", "224.0.0.5", "169.254.10.1",
                                  "255.255.255.255", "::1", "fe80::1", ME])
def test_a_route_with_a_tunnel_endpoint_no_node_can_have_never_reaches_the_kernel(vtep, caplog):
    node = started()
    with caplog.at_level(logging.WARNING, "speaker.node"):
        for _ in range(3):  # a rogue peer announcing the same routes again and again
            node._process([Received(VtepRoute(ADD, 100, vtep)), Received(MacRoute(ADD, 100, MAC2, vtep))])
    assert node.fdb.installed == [] and node.remote.macs == {} and node.remote.floods == {}
    assert node.counters["route_refused_bad_vtep"] == 6
    logged = [m for m in caplog.messages if "refused the" in m]
    assert len(logged) == 1 and vtep.split(":")[0] in logged[0]  # once per route, rate-limited
    node._process([Received(MacRoute(DEL, 100, MAC2, vtep))])  # its withdrawal: nothing to do
    assert node.counters["route_refused_bad_vtep"] == 6
    node._process([Received(MacRoute(ADD, 100, MAC2, OTHER))])  # a real node's route: programmed
    assert node.fdb.installed == [MacEntry(100, MAC2, OTHER)]


def test_a_claim_that_cannot_be_outbid_is_met_not_lost():
    node = started()
    node._process([Received(MacRoute(ADD, 100, MAC2, OTHER, seq=MAX_SEQ))])
    node._process([LocalMac(100, MAC2, True)])  # the pod owning the MAC comes here
    assert node.bgp.commands == [MacAdd(100, MAC2, seq=MAX_SEQ)]
    assert node.announced[(100, MAC2)] == MAX_SEQ and node.pending_announcements == 0
    assert node.counters["mac_seq_exhausted"] == 1


# -- item 3: duplicate MACs ----------------------------------------------------------------------
def test_a_mac_claimed_back_and_forth_by_two_nodes_is_frozen_then_released(caplog):
    node = started(dup_max_moves=5, dup_time=180, dup_freeze=60)
    claims = [OTHER, THIRD] * 5
    with caplog.at_level(logging.WARNING, "speaker.node"):
        for seq, vtep in enumerate(claims[:6], start=1):  # the first claim is no move
            node.datapath.clock = node._clock.now = node._clock.now + 1
            node._process([Received(MacRoute(ADD, 200, MAC2, vtep, seq=seq))])
    moves = [e.vtep for e in node.fdb.installed]
    assert moves == [OTHER, THIRD, OTHER, THIRD, OTHER]  # followed 4 moves; the 5th froze it
    assert node.counters["mac_duplicate_frozen"] == 1 and node.remote.pins == {(200, MAC2): OTHER}
    assert any("duplicate MAC 02:00:00:00:00:02 on VNI 200: 5 moves" in m for m in caplog.messages)
    for seq, vtep in enumerate(claims[6:], start=7):  # further claims are not followed
        node._process([Received(MacRoute(ADD, 200, MAC2, vtep, seq=seq))])
    assert len(node.fdb.installed) == 5
    node._clock.now += 61
    node._housekeeping()  # released: the latest claim (THIRD, seq 10) wins again
    assert node.fdb.installed[-1] == MacEntry(200, MAC2, THIRD)
    assert node.counters["mac_duplicate_released"] == 1 and node.remote.pins == {}


def test_a_frozen_mac_is_no_longer_outbid_by_this_node():
    node = started(dup_max_moves=3, dup_freeze=30)
    for seq in (2, 4, 6):  # a node elsewhere and a pod here keep claiming the MAC
        node._process([Received(MacRoute(ADD, 200, MAC2, OTHER, seq=seq))])
        node._process([LocalMac(200, MAC2, True, learned=True, port=7)])  # outbids: a move
        node._process([LocalMac(200, MAC2, False, learned=True, port=7)])
    assert node.duplicates.frozen((200, MAC2)) and node.counters["mac_duplicate_frozen"] == 1
    assert [c.seq for c in node.bgp.commands if isinstance(c, MacAdd)] == [3, 5]  # the 3rd froze it
    node._process([Received(MacRoute(ADD, 200, MAC2, OTHER, seq=8))])
    node._process([LocalMac(200, MAC2, True, learned=True, port=7)])
    assert [c.seq for c in node.bgp.commands if isinstance(c, MacAdd)] == [3, 5]  # no new bid
    assert (200, MAC2) in node.held and (200, MAC2) not in node.announced
    assert node.fdb.installed[-1] == MacEntry(200, MAC2, OTHER)  # forwarded where it was frozen
    node._clock.now += 31
    node._housekeeping()  # released: the local claim is made again, and wins
    assert node.bgp.commands[-1] == MacAdd(200, MAC2, seq=9) and (200, MAC2) in node.announced


# -- item 6: nothing announced is lost -------------------------------------------------------------
def test_a_refused_announcement_is_retried_and_recorded_only_once_accepted():
    node = started()
    node.bgp.refuse = [MacAdd(100, MAC2)]
    node._process([LocalMac(100, MAC2, True)])
    assert (100, MAC2) not in node.announced and node.pending_announcements == 1
    assert node.counters["bgp_command_failed"] == 1
    node._process([])
    assert node.bgp.commands == [MacAdd(100, MAC2)]  # not before its backoff
    node._clock.now += 0.5
    node._process([])
    assert node.bgp.commands == [MacAdd(100, MAC2)] * 2
    assert node.announced[(100, MAC2)] == 0 and node.pending_announcements == 0


def test_a_batch_that_times_out_is_retried_with_a_bounded_backoff():
    node = started()
    node.bgp.time_out = 20
    node._process([LocalVtep(300, True), LocalMac(300, MAC2, True)])
    delays = []
    while node.bgp.time_out:
        when, delay = node.ledger._retry[(300, "")]
        delays.append(delay)
        node._clock.now = when
        node._process([])
    assert delays[:7] == [0.5, 1, 2, 4, 8, 16, 30] and max(delays) == 30
    assert 300 not in node.rd_index and node.pending_announcements == 2  # the MAC waits for its VNI
    node._clock.now += 30
    node._process([])
    node._process([])
    assert node.rd_index[300] and node.announced[(300, MAC2)] == 0
    assert node.pending_announcements == 0


def test_a_withdrawal_that_fails_is_retried_too():
    node = started()
    node.bgp.refuse = [MacDel(100, MAC)]
    node._process([LocalMac(100, MAC, False)])
    assert (100, MAC) in node.announced
    node._clock.now += 1
    node._process([LocalMac(100, MAC2, True)])  # the next batch carries the retry
    assert (100, MAC) not in node.announced and (100, MAC) not in node.bgp.macs


def test_reconcile_repairs_what_the_bgp_process_holds_against_what_should_be_announced():
    node = started()
    node._process([LocalMac(100, MAC2, True)])
    node.fdb.local[100][MAC2] = (6, True)
    del node.bgp.macs[(100, MAC2)]                  # lost in the process (no reply said so)
    node.bgp.macs[(100, "02:00:00:00:00:77")] = 0   # a withdrawal it never applied
    node.bgp.vteps[555] = 9                          # a VNI that is no longer local
    node.bgp.commands.clear()
    node.reconcile()
    assert set(node.bgp.commands) == {Originated(), MacAdd(100, MAC2), MacDel(100, "02:00:00:00:00:77"),
                                      VtepDel(555)}
    assert node.bgp.vteps == {100: 1, 200: 2}
    assert node.bgp.macs == {(100, MAC): 0, (100, MAC2): 0}
    assert node.counters["bgp_reconcile_repaired"] == 3


# -- claims (base.tenancy): what CNI ADDs are checked against, what routes carry -----------------
LAB, OTHER_LAB = VniClaim(1000, "lab"), VniClaim(500, "other-lab")
POD, POD2 = "0123456789ab", "ba9876543210"


def test_the_vtep_route_carries_the_claim_its_bridge_records(node):
    node.datapath.claims[100] = LAB
    node._start_bgp()
    node.bgp.commands.clear()
    node._process([LocalVtep(100, True)])
    assert node.bgp.commands == [VtepAdd(100, 1, "lab", 1000)]
    node._process([LocalVtep(100, True)])  # the same LAN again: nothing
    # The LAN went and came back for another namespace before the removal was seen.
    node.datapath.claims[100] = OTHER_LAB
    node._process([LocalVtep(100, False), LocalVtep(100, True)])
    assert node.bgp.commands[1:] == [VtepAdd(100, 1, "other-lab", 500)]


def test_claims_of_other_nodes_are_known_until_their_vtep_has_left(node):
    node._start_bgp()
    node._process([Received(PeerState("10.0.0.9", True)),
                   Received(VtepRoute(ADD, 100, OTHER, "lab", 1000)),
                   Received(VtepRoute(ADD, 100, THIRD, "other-lab", 500)),
                   Received(VtepRoute(ADD, 200, THIRD))])  # an FRR node's: no claim
    assert node.vni_claims(100) == [(OTHER, LAB), (THIRD, OTHER_LAB)]
    assert node.vni_claims(200) == []
    node._process([Received(VtepRoute(ADD, 100, THIRD))])  # announced again without one
    assert node.vni_claims(100) == [(OTHER, LAB)]
    node._process([Received(VtepRoute(DEL, 100, OTHER))])
    assert node.vni_claims(100) == [(OTHER, LAB)]  # until the removal is due, as its flood entry
    node._housekeeping()
    assert node.vni_claims(100) == [] and node.claims == {}


def test_a_claim_outlives_a_reflector_outage(node):
    node._start_bgp()
    node._process([Received(PeerState("10.0.0.9", True)),
                   Received(VtepRoute(ADD, 100, OTHER, "lab", 1000))])
    node._process([Received(PeerState("10.0.0.9", False)), Received(VtepRoute(DEL, 100, OTHER))])
    node._housekeeping()
    assert node.vni_claims(100) == [(OTHER, LAB)]  # os-ken withdrew it; the VNI is not free


def test_mac_holder_is_the_pod_of_the_winning_route(node):
    node._start_bgp()
    node._process([Received(MacRoute(ADD, 100, MAC2, OTHER, pod=POD))])
    assert node.mac_holder(100, MAC2) == (OTHER, POD)
    node._process([Received(MacRoute(ADD, 100, MAC2, THIRD, seq=1))])  # it moved; learned there
    assert node.mac_holder(100, MAC2) == (THIRD, None)
    assert node.mac_holder(100, MAC) is None


def test_mac_routes_name_their_pod_and_a_learned_mac_held_elsewhere_is_not_announced(node):
    node._start_bgp()
    node._process([LocalVtep(100, True), Received(MacRoute(ADD, 100, MAC2, OTHER, pod=POD2))])
    node.bgp.commands.clear()
    node._process([LocalMac(100, MAC2, True, learned=True)])  # a frame from another pod's MAC
    assert node.bgp.commands == [] and node.counters["mac_held_elsewhere"] == 1
    node._process([LocalMac(100, "02:00:00:00:00:07", True, learned=True)])  # nobody's: announced
    node._process([LocalMac(100, MAC, True, pod=POD)])
    assert node.bgp.commands == [MacAdd(100, "02:00:00:00:00:07"), MacAdd(100, MAC, pod=POD)]
    # A MAC the bridge learned first, then an ADD gave it to its pod: announced again, named.
    node._process([LocalMac(100, "02:00:00:00:00:07", True, pod=POD)])
    assert node.bgp.commands[-1] == MacAdd(100, "02:00:00:00:00:07", pod=POD)
    # The same pod came back here (a device made again): outbids the other node, named.
    node._process([LocalMac(100, MAC2, True, pod=POD2)])
    assert node.bgp.commands[-1] == MacAdd(100, MAC2, seq=1, pod=POD2)


def test_the_kernel_read_at_start_names_each_mac_s_pod(node):
    node.datapath.pod = POD
    node._start_bgp()
    node._read_kernel()
    drain(node)
    assert node.bgp.commands[-1] == MacAdd(100, MAC, pod=POD)
