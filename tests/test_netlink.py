"""cni/netlink.py: the codec against pyroute2's (bytes in, bytes out), then the socket in a
private network namespace."""
from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from cni import netlink as nl
from cni import netns
from cni.netlink import (IFLA_ADDRESS, IFLA_MASTER, IFLA_MTU, IFLA_NET_NS_FD, NDA_LLADDR, Address,
                         FdbEntry, Link, NetlinkError, attr, be16, ip, link_body, linkinfo,
                         mac, u8)

SEQ, FLAGS = 77, nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL


def pyroute2_bytes(msg, msg_type: int, flags: int = FLAGS) -> bytes:
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = SEQ
    msg.encode()
    return bytes(msg.data)


def ours(msg_type: int, body: bytes, flags: int = FLAGS) -> bytes:
    return nl.message(msg_type, flags, SEQ, body)


def pyroute2_link(attrs: list, index: int = 0, up: bool = False):
    msg = ifinfmsg()
    msg["index"] = index
    if up:
        msg["flags"] = msg["change"] = 1
    msg["attrs"] = attrs
    return msg


# -- the codec builds what pyroute2 builds --------------------------------------------------------
def test_bridge_request():
    theirs = pyroute2_link(up=True, attrs=[
        ("IFLA_IFNAME", "mgbr100"), ("IFLA_ADDRESS", "02:11:22:33:44:55"),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge"), ("IFLA_INFO_DATA", {"attrs": [
            ("IFLA_BR_NF_CALL_IPTABLES", 0), ("IFLA_BR_NF_CALL_IP6TABLES", 0),
            ("IFLA_BR_NF_CALL_ARPTABLES", 0)]})]})])
    body = link_body(name="mgbr100", up=True, attrs=[
        attr(IFLA_ADDRESS, mac("02:11:22:33:44:55")),
        linkinfo("bridge", [attr(nl.IFLA_BR_NF_CALL_IPTABLES, u8(0)),
                            attr(nl.IFLA_BR_NF_CALL_IP6TABLES, u8(0)),
                            attr(nl.IFLA_BR_NF_CALL_ARPTABLES, u8(0))])])
    assert ours(nl.RTM_NEWLINK, body) == pyroute2_bytes(theirs, nl.RTM_NEWLINK)


@pytest.mark.parametrize("local, local_attr, local_name", [
    ("10.0.0.1", nl.IFLA_VXLAN_LOCAL, "IFLA_VXLAN_LOCAL"),
    ("fd00::1", nl.IFLA_VXLAN_LOCAL6, "IFLA_VXLAN_LOCAL6"),
])
def test_vxlan_request(local, local_attr, local_name):
    theirs = pyroute2_link(up=True, attrs=[
        ("IFLA_IFNAME", "mgvx16777215"), ("IFLA_ADDRESS", "02:00:00:00:00:01"), ("IFLA_MTU", 1450),
        ("IFLA_MASTER", 4), ("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": [
                ("IFLA_VXLAN_ID", 16777215), ("IFLA_VXLAN_LINK", 2), (local_name, local),
                ("IFLA_VXLAN_LEARNING", 0), ("IFLA_VXLAN_PORT", 4789)]})]})])
    body = link_body(name="mgvx16777215", up=True, attrs=[
        attr(IFLA_ADDRESS, mac("02:00:00:00:00:01")), attr(IFLA_MTU, 1450), attr(IFLA_MASTER, 4),
        linkinfo("vxlan", [attr(nl.IFLA_VXLAN_ID, 16777215), attr(nl.IFLA_VXLAN_LINK, 2),
                           attr(local_attr, ip(local)), attr(nl.IFLA_VXLAN_LEARNING, u8(0)),
                           attr(nl.IFLA_VXLAN_PORT, be16(4789))])])
    assert ours(nl.RTM_NEWLINK, body) == pyroute2_bytes(theirs, nl.RTM_NEWLINK)


def test_veth_request_with_its_peer_in_another_netns():
    theirs = pyroute2_link(up=True, attrs=[
        ("IFLA_IFNAME", "mgp0123456789ab"), ("IFLA_ADDRESS", "02:aa:00:00:00:01"), ("IFLA_MTU", 1450),
        ("IFLA_MASTER", 9), ("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": [
                ("IFLA_IFNAME", "net0"), ("IFLA_NET_NS_FD", 12), ("IFLA_ADDRESS", "02:aa:00:00:00:02"),
                ("IFLA_MTU", 1450)]})]})]})])
    body = link_body(name="mgp0123456789ab", up=True, attrs=[
        attr(IFLA_ADDRESS, mac("02:aa:00:00:00:01")), attr(IFLA_MTU, 1450), attr(IFLA_MASTER, 9),
        linkinfo("veth", [attr(nl.VETH_INFO_PEER, link_body(name="net0", attrs=[
            attr(IFLA_NET_NS_FD, 12), attr(IFLA_ADDRESS, mac("02:aa:00:00:00:02")),
            attr(IFLA_MTU, 1450)]))])])
    assert ours(nl.RTM_NEWLINK, body) == pyroute2_bytes(theirs, nl.RTM_NEWLINK)


def test_small_link_requests():
    assert ours(nl.RTM_NEWLINK, link_body(name="net0", up=True)) == \
        pyroute2_bytes(pyroute2_link([("IFLA_IFNAME", "net0")], up=True), nl.RTM_NEWLINK)
    assert ours(nl.RTM_GETLINK, link_body(index=42)) == \
        pyroute2_bytes(pyroute2_link([], index=42), nl.RTM_GETLINK)
    assert ours(nl.RTM_GETLINK, link_body(attrs=[attr(IFLA_MASTER, 7)]), nl.NLM_F_DUMP) == \
        pyroute2_bytes(pyroute2_link([("IFLA_MASTER", 7)]), nl.RTM_GETLINK, nl.NLM_F_DUMP)


def test_fdb_requests():
    theirs = ndmsg()
    theirs["family"] = nl.AF_BRIDGE
    theirs["ifindex"] = 9
    theirs["state"] = nl.NUD_NOARP
    theirs["flags"] = nl.NTF_MASTER
    theirs["attrs"] = [("NDA_LLADDR", "02:aa:00:00:00:02")]
    body = nl.neigh_body(9, state=nl.NUD_NOARP, flags=nl.NTF_MASTER,
                         attrs=[attr(NDA_LLADDR, mac("02:aa:00:00:00:02"))])
    assert ours(nl.RTM_NEWNEIGH, body) == pyroute2_bytes(theirs, nl.RTM_NEWNEIGH)
    dump = ndmsg()
    dump["family"] = nl.AF_BRIDGE
    dump["ifindex"] = 9
    assert ours(nl.RTM_GETNEIGH, nl.neigh_body(9), nl.NLM_F_DUMP) == \
        pyroute2_bytes(dump, nl.RTM_GETNEIGH, nl.NLM_F_DUMP)


def test_address_dump_request():
    theirs = ifaddrmsg()
    theirs["index"] = 3
    assert ours(nl.RTM_GETADDR, nl.addr_body(3), nl.NLM_F_DUMP) == \
        pyroute2_bytes(theirs, nl.RTM_GETADDR, nl.NLM_F_DUMP)


# -- the codec reads what pyroute2 writes ---------------------------------------------------------
def test_link_parse():
    data = pyroute2_bytes(pyroute2_link(index=5, up=True, attrs=[
        ("IFLA_IFNAME", "mgvx100"), ("IFLA_ADDRESS", "02:00:00:00:00:0a"), ("IFLA_MTU", 1450),
        ("IFLA_MASTER", 4), ("IFLA_LINK", 3), ("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "vxlan"), ("IFLA_INFO_DATA", {"attrs": [
                ("IFLA_VXLAN_ID", 100), ("IFLA_VXLAN_LOCAL", "10.1.2.3"),
                ("IFLA_VXLAN_PORT", 8472)]})]})]), nl.RTM_NEWLINK)
    link = Link.parse(data)
    assert (link.index, link.up, link.name, link.mtu, link.master, link.peer, link.address,
            link.kind) == (5, True, "mgvx100", 1450, 4, 3, "02:00:00:00:00:0a", "vxlan")
    assert link.vxlan() == (100, 8472, "10.1.2.3")


def test_link_parse_without_optional_attributes():
    link = Link.parse(pyroute2_bytes(pyroute2_link([("IFLA_IFNAME", "lo")], index=1), nl.RTM_NEWLINK))
    assert (link.name, link.mtu, link.master, link.peer, link.address, link.kind, link.up) == \
        ("lo", 0, 0, 0, "", "", False)
    assert link.vxlan() == (0, 0, "")


def test_fdb_entry_and_address_parse():
    entry = ndmsg()
    entry["family"] = nl.AF_BRIDGE
    entry["ifindex"] = 9
    entry["state"] = nl.NUD_NOARP
    entry["attrs"] = [("NDA_LLADDR", "02:aa:00:00:00:02"), ("NDA_MASTER", 4)]
    assert FdbEntry.parse(pyroute2_bytes(entry, nl.RTM_NEWNEIGH)) == \
        FdbEntry(9, nl.NUD_NOARP, 0, "02:aa:00:00:00:02", 4)
    addr = ifaddrmsg()
    addr["family"] = 10
    addr["index"] = 2
    addr["attrs"] = [("IFA_ADDRESS", "fd00::7")]
    assert Address.parse(pyroute2_bytes(addr, 20)) == Address(2, 0, "fd00::7")


def _neigh(msg_type: int, ifindex: int, state: int, flags: int = 0, attrs: list | None = None) -> bytes:
    entry = ndmsg()
    entry["family"] = nl.AF_BRIDGE
    entry["ifindex"] = ifindex
    entry["state"] = state
    entry["flags"] = flags
    entry["attrs"] = attrs or []
    return pyroute2_bytes(entry, msg_type, 0)


def test_fdb_events_of_a_datagram():
    learned = _neigh(nl.RTM_NEWNEIGH, 9, 0x02, attrs=[("NDA_LLADDR", "02:aa:00:00:00:02"),
                                                      ("NDA_MASTER", 4)])
    remote4 = _neigh(nl.RTM_NEWNEIGH, 7, nl.NUD_NOARP, nl.NTF_SELF,
                     [("NDA_LLADDR", "02:bb:00:00:00:01"), ("NDA_DST", "192.0.2.8")])
    remote6 = _neigh(nl.RTM_DELNEIGH, 7, nl.NUD_NOARP, nl.NTF_SELF,
                     [("NDA_LLADDR", "02:bb:00:00:00:02"), ("NDA_DST", "fd00::8")])
    link = pyroute2_bytes(pyroute2_link([("IFLA_IFNAME", "x")], index=3), nl.RTM_NEWLINK, 0)
    events = list(nl.fdb_events(learned + link + remote4 + remote6))
    assert events == [
        nl.FdbEvent(True, nl.AF_BRIDGE, 9, 0x02, 0, "02:aa:00:00:00:02", 4, ""),
        nl.FdbEvent(True, nl.AF_BRIDGE, 7, nl.NUD_NOARP, nl.NTF_SELF, "02:bb:00:00:00:01", 0,
                    "192.0.2.8"),
        nl.FdbEvent(False, nl.AF_BRIDGE, 7, nl.NUD_NOARP, nl.NTF_SELF, "02:bb:00:00:00:02", 0,
                    "fd00::8")]
    selected = nl.fdb_events(learned + remote4, lambda family, ifindex, state, flags: ifindex == 7)
    assert [e.mac for e in selected] == ["02:bb:00:00:00:01"]
    assert list(nl.fdb_events(learned + remote4[:-3])) == events[:1]  # a truncated message ends it


def test_mac_watch_keeps_only_learned_pod_entries():
    from speaker.macwatch import parse_neigh_events
    learned = _neigh(nl.RTM_DELNEIGH, 9, 0x02, attrs=[("NDA_LLADDR", "02:aa:00:00:00:02"),
                                                      ("NDA_MASTER", 4)])
    own = _neigh(nl.RTM_NEWNEIGH, 9, nl.NUD_PERMANENT, attrs=[("NDA_LLADDR", "02:aa:00:00:00:09")])
    remote = _neigh(nl.RTM_NEWNEIGH, 7, nl.NUD_NOARP, nl.NTF_SELF,
                    [("NDA_LLADDR", "02:bb:00:00:00:01"), ("NDA_DST", "192.0.2.8")])
    no_master = _neigh(nl.RTM_NEWNEIGH, 9, 0x02, attrs=[("NDA_LLADDR", "02:aa:00:00:00:03")])
    pod_own = _neigh(nl.RTM_NEWNEIGH, 9, nl.NUD_NOARP, nl.NTF_MASTER,
                     [("NDA_LLADDR", "02:aa:00:00:00:04"), ("NDA_MASTER", 4)])
    assert list(parse_neigh_events(own + learned + remote + no_master + pod_own)) == [
        (False, 9, 4, "02:aa:00:00:00:02", False), (True, 9, None, "02:aa:00:00:00:03", False),
        (True, 9, 4, "02:aa:00:00:00:04", True)]


def test_attribute_walk_stops_at_garbage():
    good = attr(3, "ab") + attr(4, 1500)
    assert nl.attributes(good) == {3: b"ab\0", 4: (1500).to_bytes(4, "little")}
    assert nl.attributes(good + b"\x02\x00") == nl.attributes(good)      # a truncated header
    assert nl.attributes(good + b"\xff\x00\x05\x00") == nl.attributes(good)  # a length past the end


def test_error_messages():
    ack = nl.message(nl.NLMSG_ERROR, 0, SEQ, (0).to_bytes(4, "little", signed=True) + b"\0" * 16)
    assert nl.error_of(ack) is None
    plain = nl.message(nl.NLMSG_ERROR, 0, SEQ, (-errno.EEXIST).to_bytes(4, "little", signed=True)
                       + b"\0" * 16)
    error = nl.error_of(plain)
    assert isinstance(error, NetlinkError) and error.code == errno.EEXIST
    extack = nl.message(nl.NLMSG_ERROR, nl.NLM_F_ACK_TLVS, SEQ,
                        (-errno.EINVAL).to_bytes(4, "little", signed=True) + b"\0" * 16
                        + attr(nl.NLMSGERR_ATTR_MSG, "Unknown device type"))
    assert nl.error_of(extack).args == (errno.EINVAL, "Invalid argument: Unknown device type")


# -- the socket, in a namespace of its own --------------------------------------------------------
@pytest.fixture
def private_netlink():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    name = f"mgtnl{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    fd = netns.open_fd(f"/var/run/netns/{name}")
    try:
        sock = netns.open_netlink(fd)
    finally:
        os.close(fd)
    try:
        yield sock, name
    finally:
        sock.close()
        subprocess.run(["ip", "netns", "del", name], check=False)



@pytest.mark.root
def test_socket_requests(private_netlink):
    sock, name = private_netlink
    assert sock.link(name="nosuch0") is None and sock.link(index=999999) is None
    bridge = sock.create_link("br0", link_body(name="br0", up=True, attrs=[linkinfo("bridge", [])]))
    assert sock.link(name="br0").index == bridge and sock.link(index=bridge).kind == "bridge"
    with pytest.raises(NetlinkError) as exists:
        sock.create_link("br0", link_body(name="br0", attrs=[linkinfo("bridge", [])]))
    assert exists.value.code == errno.EEXIST
    port = sock.create_link("v0", link_body(name="v0", up=True, attrs=[
        attr(IFLA_MASTER, bridge),
        linkinfo("veth", [attr(nl.VETH_INFO_PEER, link_body(name="v1"))])]))
    assert [link.name for link in sock.links(master=bridge)] == ["v0"]  # filtered by the kernel
    assert {link.name for link in sock.links()} >= {"lo", "br0", "v0", "v1"}
    sock.fdb_replace(port, "02:aa:00:00:00:09", state=nl.NUD_NOARP, flags=nl.NTF_MASTER)
    entries = list(sock.fdb(port))
    assert entries and {e.ifindex for e in entries} == {port}  # filtered by the kernel
    assert any(e.mac == "02:aa:00:00:00:09" and e.master == bridge and e.state == nl.NUD_NOARP
               for e in entries)
    assert sock.delete_link(name="v0") is True and sock.delete_link(name="v0") is False
    assert sock.link(name="v1") is None  # the peer went with it
    assert list(sock.links(master=bridge)) == []
    subprocess.run(["ip", "-n", name, "addr", "add", "10.9.9.1/24", "dev", "br0"], check=True)
    assert [a.address for a in sock.addresses(bridge) if a.scope == 0] == ["10.9.9.1"]
    assert {a.index for a in sock.addresses(bridge)} == {bridge}  # filtered by the kernel


@pytest.mark.root
def test_socket_errors_carry_the_kernels_message(private_netlink):
    sock, _ = private_netlink
    with pytest.raises(NetlinkError) as bad:
        sock.create_link("x0", link_body(name="x0", attrs=[linkinfo("nosuchkind", [])]))
    assert bad.value.code in (errno.EOPNOTSUPP, errno.EINVAL)
    assert sock.link(name="lo").name == "lo"  # the socket still works after an error


@pytest.mark.root
def test_event_socket_in_a_namespace_sees_its_fdb_and_port_learning_switches(private_netlink):
    """netns.socket_in: an RTMGRP_NEIGH socket made in the namespace hears its FDB changes
    (and only those); set_bridge_port_learning shows in `ip -d link`."""
    import json
    import socket
    sock, name = private_netlink
    events = netns.socket_in(f"/var/run/netns/{name}", socket.AF_NETLINK, socket.SOCK_RAW,
                             socket.NETLINK_ROUTE)
    try:
        events.bind((0, nl.RTMGRP_NEIGH))
        events.settimeout(5)
        bridge = sock.create_link("br0", link_body(name="br0", up=True, attrs=[linkinfo("bridge", [])]))
        port = sock.create_link("v0", link_body(name="v0", up=True, attrs=[
            attr(IFLA_MASTER, bridge), linkinfo("veth", [attr(nl.VETH_INFO_PEER, link_body(name="v1"))])]))
        sock.fdb_replace(port, "02:aa:00:00:00:0a", state=nl.NUD_NOARP, flags=nl.NTF_MASTER)
        seen = []
        while not any(e.mac == "02:aa:00:00:00:0a" for e in seen):
            seen += nl.fdb_events(events.recv(1 << 16))
        assert [e for e in seen if e.mac == "02:aa:00:00:00:0a"][0].ifindex == port
    finally:
        events.close()

    def learning() -> bool:
        out = subprocess.run(["ip", "-n", name, "-j", "-d", "link", "show", "v0"],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)[0]["linkinfo"]["info_slave_data"]["learning"]
    assert learning() is True  # the kernel's default
    sock.set_bridge_port_learning(port, False)
    assert learning() is False
    sock.set_bridge_port_learning(port, True)
    assert learning() is True
