"""The node speaker (speaker.node) built normally, with its BGP process, FDB, MAC watch and
datapath replaced by recorders: local changes in, BGP commands out; routes in, FDB entries out.
The real processes and kernel are exercised end to end in test_evpn_e2e.py and test_faults.py."""
from __future__ import annotations

import types

import pytest

from base.tenancy import VniClaim
from bgp.client import BgpError
from bgp.protocol import (ADD, DEL, MacAdd, MacDel, MacRoute, PeerAdd, PeerDel, PeerState, Reply,
                          Start, VtepAdd, VtepDel, VtepRoute)
from speaker.config import NodeConfig
from speaker.evpn_state import FloodEntry, MacEntry
from speaker.node import (LocalMac, LocalVtep, NodeSpeaker, Received, ReflectorChange)

ME, OTHER, THIRD = "192.0.2.2", "192.0.2.3", "192.0.2.4"
MAC, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


class Bgp:
    """Records every command; `fail` makes calls raise as a dead process's would."""

    def __init__(self, on_event=None, name=""):
        self.on_event, self.commands, self.fail, self.alive = on_event, [], False, True

    def call(self, command, timeout=10):
        if self.fail:
            raise BgpError("gone")
        self.commands.append(command)
        return True

    def call_many(self, commands, timeout=10):
        if self.fail:
            raise BgpError("gone")
        self.commands.extend(commands)
        return [Reply(i, True, True) for i, _ in enumerate(commands)]

    def close(self):
        pass


class Fdb:
    def __init__(self):
        self.installed, self.removed, self.kernel = [], [], {}

    def install(self, entries):
        self.installed += sorted(entries, key=repr)
        return len(entries)

    def remove(self, entries):
        self.removed += sorted(entries, key=repr)
        return len(entries)

    def current(self, vni):
        return set(self.kernel.get(vni, ()))

    def local_macs(self, vni):
        return set()

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
        return [types.SimpleNamespace(macs=self.local.get(vni, []), pod_id=self.pod)]


class Watch:
    def __init__(self, on_mac):
        self.on_mac, self.running = on_mac, False

    def start(self):
        self.running = True

    def stop(self):
        self.running = False


@pytest.fixture
def node():
    speaker = NodeSpeaker(NodeConfig(reflectors=("10.0.0.9",), md5_password="pw", settle=0,
                                     withdraw_delay=0),
                          Datapath({100: [MAC]}), Fdb(), spawn_bgp=Bgp, watch_macs=Watch)
    yield speaker


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
        Start(router_id=ME, asn=65000, listen_host=ME, listen_port=179, hold_time=9),
        PeerAdd("10.0.0.9", "passive", "pw"), VtepAdd(100, 1), MacAdd(100, MAC)]
    assert node.not_ready() == ""


def test_local_changes_become_commands_in_one_batch(node):
    node._start_bgp()
    node.bgp.commands.clear()
    node._process([LocalVtep(200, True), LocalMac(200, MAC2, True), LocalMac(300, MAC2, True)])
    assert node.bgp.commands == [VtepAdd(200, 1), MacAdd(200, MAC2)]  # 300 is not local: nothing
    node.datapath.local = {}  # the LAN is gone from the kernel
    node._process([LocalMac(200, MAC2, False), LocalVtep(200, False)])
    assert node.bgp.commands[2:] == [MacDel(200, MAC2), VtepDel(200)]


def test_a_learned_mac_that_ages_out_stays_while_its_pod_owns_it(node):
    node._start_bgp()
    node._process([LocalVtep(100, True), LocalMac(100, MAC, True)])
    node.bgp.commands.clear()
    node._process([LocalMac(100, MAC, False, learned=True)])  # aged out of the bridge
    assert node.bgp.commands == []
    node._process([LocalMac(100, MAC2, True, learned=True), LocalMac(100, MAC2, False, learned=True)])
    assert node.bgp.commands == [MacAdd(100, MAC2), MacDel(100, MAC2)]


def test_received_routes_of_local_vnis_are_programmed(node):
    node._start_bgp()
    node._process([Received(VtepRoute(ADD, 100, OTHER)), Received(MacRoute(ADD, 100, MAC2, OTHER)),
                   Received(MacRoute(ADD, 555, MAC2, OTHER))])
    assert node.fdb.installed == []  # VNI 100 is not local yet: kept, not programmed
    node._process([LocalVtep(100, True)])
    assert node.fdb.installed == [FloodEntry(100, OTHER), MacEntry(100, MAC2, OTHER)]
    node._process([Received(MacRoute(ADD, 100, "02:00:00:00:00:09", ME))])  # our own: ignored
    assert len(node.fdb.installed) == 2


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
