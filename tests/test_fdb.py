"""speaker/fdb.py: the request builders against pyroute2's encoder (bytes in, bytes out), then
VtepFdb on a real VTEP and bridge, made by the datapath in an emulated node's namespace."""
from __future__ import annotations

import logging
import socket

import pytest
from pyroute2.netlink import NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_DELNEIGH, RTM_NEWNEIGH
from pyroute2.netlink.rtnl.ndmsg import (NTF_EXT_LEARNED, NTF_MASTER, NTF_SELF, NUD_NOARP,
                                         NUD_PERMANENT, NUD_REACHABLE, ndmsg)

from base.primitives import ZERO_MAC
from cni import naming, netlink, netns
from speaker.evpn_state import FloodEntry, MacEntry
from speaker.fdb import VtepFdb, install_requests, remove_requests

SEQ = 42
VNI, OTHER_VNI = 5100, 5200
MAC, MAC2 = "02:bb:00:00:00:01", "02:bb:00:00:00:02"


# -- the requests, byte for byte what pyroute2 encodes ------------------------------------------
def pyroute2_request(msg_type: int, flags: int, ifindex: int, state: int, ntf: int,
                     attrs: list) -> bytes:
    msg = ndmsg()
    msg["family"] = socket.AF_BRIDGE
    msg["ifindex"] = ifindex
    msg["state"] = state
    msg["flags"] = ntf
    msg["attrs"] = attrs
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
    msg["header"]["sequence_number"] = SEQ
    msg.encode()
    return bytes(msg.data)


def ours(requests) -> list[bytes]:
    """The messages Netlink.batch sends for `requests` (one sequence number for all here)."""
    return [netlink.message(kind, netlink.NLM_F_REQUEST | netlink.NLM_F_ACK | flags, SEQ, body)
            for kind, flags, body in requests]


@pytest.mark.parametrize("vtep", ["192.0.2.7", "fd00::7"])
def test_install_of_a_remote_mac_is_self_dst_and_master_extern_learn(vtep):
    assert ours(install_requests(9, MacEntry(VNI, MAC, vtep))) == [
        pyroute2_request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, 9, NUD_NOARP | NUD_PERMANENT,
                         NTF_SELF, [("NDA_LLADDR", MAC), ("NDA_DST", vtep)]),
        pyroute2_request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, 9, NUD_NOARP | NUD_REACHABLE,
                         NTF_MASTER | NTF_EXT_LEARNED, [("NDA_LLADDR", MAC)])]


def test_install_of_a_flood_entry_appends_the_zero_mac():
    assert ours(install_requests(9, FloodEntry(VNI, "192.0.2.7"))) == [
        pyroute2_request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_APPEND, 9, NUD_NOARP | NUD_PERMANENT,
                         NTF_SELF, [("NDA_LLADDR", ZERO_MAC), ("NDA_DST", "192.0.2.7")])]


def test_remove_deletes_what_install_writes():
    assert ours(remove_requests(9, MacEntry(VNI, MAC, "192.0.2.7"))) == [
        pyroute2_request(RTM_DELNEIGH, 0, 9, NUD_NOARP | NUD_PERMANENT, NTF_SELF,
                         [("NDA_LLADDR", MAC), ("NDA_DST", "192.0.2.7")]),
        pyroute2_request(RTM_DELNEIGH, 0, 9, NUD_NOARP | NUD_PERMANENT, NTF_MASTER,
                         [("NDA_LLADDR", MAC)])]
    assert ours(remove_requests(9, FloodEntry(VNI, "fd00::7"))) == [
        pyroute2_request(RTM_DELNEIGH, 0, 9, NUD_NOARP | NUD_PERMANENT, NTF_SELF,
                         [("NDA_LLADDR", ZERO_MAC), ("NDA_DST", "fd00::7")])]


# -- VtepFdb on a real VTEP ---------------------------------------------------------------------
@pytest.fixture
def lan(bare_node):
    """(node, VtepFdb made in the node's namespace) with the LAN of VNI made as an ADD makes it."""
    datapath = bare_node.datapath
    datapath.ensure_lan(VNI, 4789, datapath.default_underlay)
    fdb = netns.made_in(bare_node.netns_path, VtepFdb)
    try:
        yield bare_node.node, fdb
    finally:
        fdb.close()


def kernel_fdb(node, vni: int = VNI) -> set:
    """What `bridge fdb show dev mgvx<vni>` lists but the VTEP's own address: (MAC, dst or
    'master', flags) per entry."""
    return {(e["mac"], e.get("dst") or "master", tuple(sorted(e.get("flags", []))))
            for e in node.fdb(naming.vtep_name(vni)) if e.get("dst") or e.get("state") != "permanent"}


@pytest.mark.root
def test_install_writes_both_entries_and_current_reads_them_back(lan):
    node, fdb = lan
    entries = {MacEntry(VNI, MAC, "192.0.2.7"), MacEntry(VNI, MAC2, "192.0.2.8"),
               FloodEntry(VNI, "192.0.2.7"), FloodEntry(VNI, "192.0.2.8")}
    assert fdb.install(entries) == 4
    assert kernel_fdb(node) == {
        (MAC, "192.0.2.7", ("self",)), (MAC, "master", ("extern_learn",)),
        (MAC2, "192.0.2.8", ("self",)), (MAC2, "master", ("extern_learn",)),
        (ZERO_MAC, "192.0.2.7", ("self",)), (ZERO_MAC, "192.0.2.8", ("self",))}
    assert fdb.current(VNI) == entries
    assert fdb.install(entries) == 4  # again: every entry is there already
    assert fdb.current(VNI) == entries


@pytest.mark.root
def test_install_replaces_a_mac_that_moved_to_another_vtep(lan):
    node, fdb = lan
    assert fdb.install([MacEntry(VNI, MAC, "192.0.2.7")]) == 1
    assert fdb.install([MacEntry(VNI, MAC, "192.0.2.9")]) == 1
    assert fdb.current(VNI) == {MacEntry(VNI, MAC, "192.0.2.9")}
    assert (MAC, "192.0.2.7", ("self",)) not in kernel_fdb(node)


@pytest.mark.root
def test_remove_and_remove_again(lan, caplog):
    node, fdb = lan
    a, b = FloodEntry(VNI, "192.0.2.7"), FloodEntry(VNI, "192.0.2.8")
    mac = MacEntry(VNI, MAC, "192.0.2.7")
    assert fdb.install([a, b, mac]) == 3
    assert fdb.remove([a, mac]) == 2
    assert fdb.current(VNI) == {b}  # one destination of the flood list goes, not the others
    assert kernel_fdb(node) == {(ZERO_MAC, "192.0.2.8", ("self",))}
    with caplog.at_level(logging.WARNING, logger="speaker.fdb"):
        assert fdb.remove([a, mac]) == 2  # already gone: fine
    assert caplog.records == []


@pytest.mark.root
def test_entries_of_a_vni_without_a_vtep_here_are_skipped(lan):
    _, fdb = lan
    assert fdb.install([MacEntry(OTHER_VNI, MAC, "192.0.2.7")]) == 0
    assert fdb.remove([MacEntry(OTHER_VNI, MAC, "192.0.2.7")]) == 0
    assert fdb.current(OTHER_VNI) == set() and list(fdb.local_macs(OTHER_VNI)) == []


@pytest.mark.root
def test_a_vtep_that_disappears_mid_batch(bare_node, lan, caplog):
    """The VTEP of one VNI is deleted after its lookup, before the batch is sent (its LAN's
    last DEL, racing): its entries are not written, quietly; the other VNI's are."""
    node, fdb = lan
    datapath = bare_node.datapath
    datapath.ensure_lan(OTHER_VNI, 4789, datapath.default_underlay)
    doomed = [MacEntry(OTHER_VNI, f"02:cc:00:00:00:{i:02x}", "192.0.2.7") for i in range(3)]
    kept = [MacEntry(VNI, f"02:dd:00:00:00:{i:02x}", "192.0.2.7") for i in range(3)]

    def entries():
        yield doomed[0]  # VtepFdb looks mgvx<OTHER_VNI> up here
        node.run("ip", "link", "del", naming.vtep_name(OTHER_VNI))
        yield from doomed[1:]
        yield from kept

    with caplog.at_level(logging.WARNING, logger="speaker.fdb"):
        assert fdb.install(entries()) == len(kept)
    assert caplog.records == []
    assert fdb.current(VNI) == set(kept)
    assert fdb.current(OTHER_VNI) == set()
    assert fdb.remove(doomed + kept) == len(kept)  # a VTEP that is gone holds nothing to remove


@pytest.mark.root
def test_local_macs_are_the_bridges_static_and_learned_macs_on_pod_ports(bare_node, lan):
    node, fdb = lan
    lan_devices = bare_node.datapath.lan(VNI)
    ports = [bare_node.attach(lan_devices, node.add_pod(f"p{i}"), f"02:aa:00:00:00:0{i}")
             for i in range(2)]
    node.run("bridge", "fdb", "add", "02:aa:00:00:01:00", "dev", ports[1], "master", "dynamic")
    # Not local: a remote MAC (on the VTEP), a port's own address, a port of another bridge.
    assert fdb.install([MacEntry(VNI, MAC, "192.0.2.7")]) == 1
    node.run("ip", "link", "add", "mgtother0", "type", "bridge")
    node.run("ip", "link", "add", "mgp0123456789ab", "master", "mgtother0", "type", "veth",
             "peer", "name", "mgtpeer0")
    node.run("bridge", "fdb", "add", "02:ee:00:00:00:01", "dev", "mgp0123456789ab", "master",
             "static")
    index = {port: int(node.run("cat", f"/sys/class/net/{port}/ifindex").stdout) for port in ports}
    # (MAC, its port, static): the pods' own MACs are the entries ADD recorded.
    assert sorted(fdb.local_macs(VNI)) == [("02:aa:00:00:00:00", index[ports[0]], True),
                                           ("02:aa:00:00:00:01", index[ports[1]], True),
                                           ("02:aa:00:00:01:00", index[ports[1]], False)]
    node.run("ip", "link", "del", ports[0])
    assert {mac for mac, _, _ in fdb.local_macs(VNI)} == {"02:aa:00:00:00:01", "02:aa:00:00:01:00"}
