"""cni/netlink.py: the codec against pyroute2's (bytes in, bytes out), then the socket in a
private network namespace. pyroute2 is here as the reference encoder only: the product never
imports it (an import-linter contract in setup.cfg)."""
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
from cni.netlink import (IFLA_ADDRESS, IFLA_MASTER, IFLA_MTU, IFLA_NET_NS_FD, Address, FdbEntry,
                         Link, Netlink, NetlinkError, attr, be16, fdb_body, ip, link_body,
                         linkinfo, mac, u8)

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


def pyroute2_neigh(ifindex: int, state: int = 0, flags: int = 0, attrs: list | None = None):
    msg = ndmsg()
    msg["family"] = nl.AF_BRIDGE
    msg["ifindex"] = ifindex
    msg["state"] = state
    msg["flags"] = flags
    msg["attrs"] = attrs or []
    return msg


@pytest.mark.parametrize("entry, attrs", [
    (FdbEntry(9, "02:aa:00:00:00:02", state=nl.NUD_NOARP, flags=nl.NTF_MASTER),
     [("NDA_LLADDR", "02:aa:00:00:00:02")]),
    (FdbEntry(7, "02:bb:00:00:00:01", "192.0.2.8", nl.NUD_NOARP | nl.NUD_PERMANENT, nl.NTF_SELF),
     [("NDA_LLADDR", "02:bb:00:00:00:01"), ("NDA_DST", "192.0.2.8")]),
    (FdbEntry(7, "00:00:00:00:00:00", "fd00::8", nl.NUD_PERMANENT, nl.NTF_SELF),
     [("NDA_LLADDR", "00:00:00:00:00:00"), ("NDA_DST", "fd00::8")]),
    (FdbEntry(0, master=4), [("NDA_MASTER", 4)]),  # a dump filter: the FDB of one bridge
])
def test_fdb_requests(entry, attrs):
    theirs = pyroute2_neigh(entry.ifindex, entry.state, entry.flags, attrs)
    assert ours(nl.RTM_NEWNEIGH, fdb_body(entry)) == pyroute2_bytes(theirs, nl.RTM_NEWNEIGH)


def test_fdb_dump_request():
    assert ours(nl.RTM_GETNEIGH, fdb_body(FdbEntry(9)), nl.NLM_F_DUMP) == \
        pyroute2_bytes(pyroute2_neigh(9), nl.RTM_GETNEIGH, nl.NLM_F_DUMP)


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
    entry = pyroute2_neigh(9, nl.NUD_NOARP, attrs=[("NDA_LLADDR", "02:aa:00:00:00:02"),
                                                  ("NDA_MASTER", 4)])
    assert FdbEntry.parse(pyroute2_bytes(entry, nl.RTM_NEWNEIGH)) == \
        FdbEntry(9, "02:aa:00:00:00:02", "", nl.NUD_NOARP, 0, 4)
    arp = pyroute2_neigh(9, attrs=[("NDA_LLADDR", "02:aa:00:00:00:02")])
    arp["family"] = 2
    assert FdbEntry.parse(pyroute2_bytes(arp, nl.RTM_NEWNEIGH)) is None  # not a bridge entry
    addr = ifaddrmsg()
    addr["family"] = 10
    addr["index"] = 2
    addr["attrs"] = [("IFA_ADDRESS", "fd00::7")]
    assert Address.parse(pyroute2_bytes(addr, 20)) == Address(2, 0, "fd00::7")


def _neigh(msg_type: int, ifindex: int, state: int, flags: int = 0, attrs: list | None = None) -> bytes:
    return pyroute2_bytes(pyroute2_neigh(ifindex, state, flags, attrs), msg_type, 0)


def test_fdb_events_of_a_datagram():
    learned = _neigh(nl.RTM_NEWNEIGH, 9, 0x02, attrs=[("NDA_LLADDR", "02:aa:00:00:00:02"),
                                                      ("NDA_MASTER", 4)])
    remote4 = _neigh(nl.RTM_NEWNEIGH, 7, nl.NUD_NOARP, nl.NTF_SELF,
                     [("NDA_LLADDR", "02:bb:00:00:00:01"), ("NDA_DST", "192.0.2.8")])
    remote6 = _neigh(nl.RTM_DELNEIGH, 7, nl.NUD_NOARP, nl.NTF_SELF,
                     [("NDA_LLADDR", "02:bb:00:00:00:02"), ("NDA_DST", "fd00::8")])
    arp = pyroute2_neigh(3, 0x02, attrs=[("NDA_LLADDR", "02:cc:00:00:00:01")])
    arp["family"] = 2
    arp = pyroute2_bytes(arp, nl.RTM_NEWNEIGH, 0)
    link = pyroute2_bytes(pyroute2_link([("IFLA_IFNAME", "x")], index=3), nl.RTM_NEWLINK, 0)
    events = list(nl.fdb_events(learned + link + arp + remote4 + remote6))
    assert events == [
        (True, FdbEntry(9, "02:aa:00:00:00:02", "", 0x02, 0, 4)),
        (True, FdbEntry(7, "02:bb:00:00:00:01", "192.0.2.8", nl.NUD_NOARP, nl.NTF_SELF)),
        (False, FdbEntry(7, "02:bb:00:00:00:02", "fd00::8", nl.NUD_NOARP, nl.NTF_SELF))]
    selected = nl.fdb_events(learned + remote4, lambda ifindex, state, flags: ifindex == 7)
    assert [e.mac for _, e in selected] == ["02:bb:00:00:00:01"]
    assert list(nl.fdb_events(learned + remote4[:-3])) == events[:1]  # a truncated message ends it


def test_bridge_entry_keeps_static_and_learned_entries_of_the_bridge_only():
    learned = _neigh(nl.RTM_DELNEIGH, 9, 0x02, attrs=[("NDA_LLADDR", "02:aa:00:00:00:02"),
                                                      ("NDA_MASTER", 4)])
    static = _neigh(nl.RTM_NEWNEIGH, 9, nl.NUD_NOARP, attrs=[("NDA_LLADDR", "02:aa:00:00:00:04"),
                                                              ("NDA_MASTER", 4)])
    own = _neigh(nl.RTM_NEWNEIGH, 9, nl.NUD_PERMANENT, attrs=[("NDA_LLADDR", "02:aa:00:00:00:09")])
    remote = _neigh(nl.RTM_NEWNEIGH, 7, nl.NUD_NOARP, nl.NTF_SELF,
                    [("NDA_LLADDR", "02:bb:00:00:00:01"), ("NDA_DST", "192.0.2.8")])
    assert [(present, e.mac) for present, e in nl.fdb_events(learned + own + remote + static,
                                                              nl.bridge_entry)] == [
        (False, "02:aa:00:00:00:02"), (True, "02:aa:00:00:00:04")]


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
    assert isinstance(error, NetlinkError) and error.code == error.errno == errno.EEXIST
    assert isinstance(error, OSError) and not isinstance(error, FileExistsError)
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
    sock.fdb_replace(FdbEntry(port, "02:aa:00:00:00:09", state=nl.NUD_NOARP, flags=nl.NTF_MASTER))
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
    """An RTMGRP_NEIGH Netlink made in the namespace hears its FDB changes (and only those);
    set_bridge_port_learning shows in `ip -d link`."""
    import json
    sock, name = private_netlink
    events = netns.made_in(f"/var/run/netns/{name}", lambda: Netlink(groups=nl.RTMGRP_NEIGH))
    try:
        assert events.receive(timeout=0.05) == b""  # nothing happened yet
        bridge = sock.create_link("br0", link_body(name="br0", up=True, attrs=[linkinfo("bridge", [])]))
        port = sock.create_link("v0", link_body(name="v0", up=True, attrs=[
            attr(IFLA_MASTER, bridge), linkinfo("veth", [attr(nl.VETH_INFO_PEER, link_body(name="v1"))])]))
        sock.fdb_replace(FdbEntry(port, "02:aa:00:00:00:0a", state=nl.NUD_NOARP, flags=nl.NTF_MASTER))
        seen = []
        while not any(e.mac == "02:aa:00:00:00:0a" for _, e in seen):
            data = events.receive(timeout=5)
            assert data, "no FDB event within 5 s"
            seen += nl.fdb_events(data)
        assert [(present, e.ifindex, e.master) for present, e in seen
                if e.mac == "02:aa:00:00:00:0a"] == [(True, port, bridge)]
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


def _vxlan(sock: Netlink, name: str, vni: int) -> int:
    return sock.create_link(name, link_body(name=name, up=True, attrs=[
        linkinfo("vxlan", [attr(nl.IFLA_VXLAN_ID, vni), attr(nl.IFLA_VXLAN_LOCAL, ip("192.0.2.1")),
                           attr(nl.IFLA_VXLAN_LEARNING, u8(0)), attr(nl.IFLA_VXLAN_PORT, be16(4789))])]))


def _remote(vtep: int, i: int) -> FdbEntry:
    return FdbEntry(vtep, f"02:bb:00:00:{i >> 8:02x}:{i & 0xff:02x}", f"198.51.100.{1 + i % 200}",
                    nl.NUD_NOARP | nl.NUD_PERMANENT, nl.NTF_SELF)


@pytest.mark.root
def test_batch_acks_each_request_and_reports_the_refused_by_position(private_netlink):
    """A batch larger than one datagram; refusals in the middle stop nothing; a dump filtered
    to the VTEP reads back exactly what the batch wrote."""
    sock, _ = private_netlink
    vtep = _vxlan(sock, "vx0", 100)
    entries = [_remote(vtep, i) for i in range(600)]
    requests = [(nl.RTM_NEWNEIGH, nl.NLM_F_CREATE | nl.NLM_F_REPLACE, fdb_body(e))
                for e in entries]
    requests[5] = (nl.RTM_NEWNEIGH, nl.NLM_F_CREATE, fdb_body(entries[5]._replace(ifindex=999999)))
    requests[300] = (nl.RTM_DELNEIGH, 0, fdb_body(_remote(vtep, 1000)))  # never there
    assert sock.batch(requests) == {5: errno.ENODEV, 300: errno.ENOENT}
    written = set(entries) - {entries[5], entries[300]}
    assert set(sock.fdb(vtep, lambda ifindex, state, flags: bool(flags & nl.NTF_SELF))) == written
    assert sock.link(name="vx0").index == vtep  # single requests still pair with their answers
    deletes = [(nl.RTM_DELNEIGH, 0, fdb_body(e)) for e in entries]
    assert sock.batch(deletes) == {5: errno.ENOENT, 300: errno.ENOENT}
    assert not any(e.flags & nl.NTF_SELF for e in sock.fdb(vtep))


@pytest.mark.root
def test_batch_sends_no_more_than_the_receive_buffer_holds_acks_of(private_netlink):
    """With a small receive buffer the ACKs of 256 requests would overflow it (the kernel drops
    them: ENOBUFS): the batch sends fewer per datagram instead."""
    _, name = private_netlink
    small = netns.made_in(f"/var/run/netns/{name}", lambda: Netlink(rcvbuf=16384))
    try:
        vtep = _vxlan(small, "vx1", 101)
        entries = [_remote(vtep, i) for i in range(300)]
        assert small.batch([(nl.RTM_NEWNEIGH, nl.NLM_F_CREATE, fdb_body(e)) for e in entries]) == {}
        assert len(list(small.fdb(vtep, lambda ifindex, state, flags: bool(flags & nl.NTF_SELF)))) == 300
    finally:
        small.close()
