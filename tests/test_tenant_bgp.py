"""Issue 10, the BGP processes and the reflector, as a rogue peer tries them: real BGP processes
in a namespace cluster, and a rogue peer that is a real process speaking raw BGP on a real TCP
session (lab.rogue_bgp), announcing what no node may: more routes than its limit, routes naming
another node's VTEP or an address no node has, a MAC at the highest sequence number, a MAC
fought over; and a peer without the cluster's TCP MD5 password. The route checks run on both
paths a received route can take (the wire path, and os-ken's with MEGALOS_WIRE_PATH=0)."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from bgp.client import BgpProcess
from cni import naming
from bgp.protocol import (MAX_SEQ, ROUTE_LIMIT, MacAdd, MacRoute, PeerAdd, PeerState, Rib,
                          RoutesRefused, Start, VtepAdd, VtepRoute)
from lab.cluster import Cluster, unique_prefix, wait_until
from lab.rogue_bgp import RoguePeer
from reflector.protocol import StateClient
from reflector.route_reflector import Reflector, ReflectorConfig
from tests.test_evpn_e2e import attach, remote_macs

pytestmark = pytest.mark.root
ASN, HOLD, VNI = 65000, 3, 3100
CEASE, MAX_PREFIXES, CONNECTION_REJECTED = 6, 1, 5


@pytest.fixture(params=["wire path", "os-ken path"])
def bgp_env(request) -> dict:
    """The BGP processes' environment: the wire path (bgp.osken_fastpath) on, or off."""
    return {**os.environ, **({} if request.param == "wire path" else {"MEGALOS_WIRE_PATH": "0"})}


@pytest.fixture
def cluster():
    with Cluster(prefix=unique_prefix("mgr")) as c:
        yield c


class Bgp:
    """One BGP process in a node's namespace, its events kept."""

    def __init__(self, node, env: dict, **start):
        self.node = node
        self.events: list = []
        self.changed = threading.Condition()
        self.process = BgpProcess(on_event=self._on_event, name=node.name, env=env,
                                  argv_prefix=["ip", "netns", "exec", node.netns])
        self.process.call(Start(router_id=node.ip, asn=ASN, listen_host=node.ip, hold_time=HOLD,
                                connect_retry=1, **start))

    def _on_event(self, event) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait(self, predicate, what: str, timeout: float = 20):
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.events), timeout):
                raise AssertionError(f"{self.node.name}: no {what} within {timeout} s; events "
                                     f"{self.events[-20:]}")

    def routes(self, vtep: str) -> dict:
        """The routes of `vtep` held now, folded from the events: {(kind, vni, mac): event}."""
        held = {}
        with self.changed:
            for event in self.events:
                if isinstance(event, (MacRoute, VtepRoute)) and event.vtep == vtep:
                    key = (event.event, event.vni, getattr(event, "mac", None))
                    if event.added:
                        held[key] = event
                    else:
                        held.pop(key, None)
        return held

    def up(self, address: str) -> bool:
        with self.changed:
            states = [e.up for e in self.events if isinstance(e, PeerState) and e.address == address]
        return bool(states) and states[-1]

    def close(self) -> None:
        self.process.close()


def reflector_and_nodes(cluster, env, **start):
    """A reflector (dialling) and nodes a and b, Established; a announces one MAC."""
    rr_node, a_node, b_node = (cluster.add_node(n) for n in ("rr", "a", "b"))
    rr = Bgp(rr_node, env, role="reflector", cluster_id="10.255.0.1", **start)
    a, b = Bgp(a_node, env), Bgp(b_node, env)
    for node in (a, b):
        node.process.call(PeerAdd(rr_node.ip, "passive"))
        rr.process.call(PeerAdd(node.node.ip, "active"))
    wait_until(lambda: rr.up(a_node.ip) and rr.up(b_node.ip), 20, "sessions a, b")
    a.process.call(VtepAdd(VNI, 1))
    a.process.call(MacAdd(VNI, "02:aa:00:00:00:01"))
    b.wait(lambda evs: any(getattr(e, "mac", "") == "02:aa:00:00:00:01" for e in evs), "a's MAC")
    return rr, a, b


def a_client_that_floods(cluster, rr, limit: int) -> tuple:
    """The rogue node: a reflector client that listens like a node; Established."""
    rogue_node = cluster.add_node("rogue")
    rogue = RoguePeer(rogue_node.netns, "--router-id", rogue_node.ip, "--peer", rr.node.ip,
                      "--listen", rogue_node.ip, "--hold-time", str(HOLD))
    rr.process.call(PeerAdd(rogue_node.ip, "active"))
    rogue.wait_for("established", 20)
    return rogue_node, rogue


def limit_data(limit: int) -> str:
    """RFC 4486's data for Cease / Maximum Number of Prefixes Reached: AFI, SAFI, the limit."""
    return (25).to_bytes(2, "big").hex() + "46" + limit.to_bytes(4, "big").hex()


def test_a_client_past_its_route_limit_is_cut_and_held_off_while_others_carry_on(cluster, bgp_env):
    limit, backoff = 60, 4
    rr, a, b = reflector_and_nodes(cluster, bgp_env, max_routes_per_peer=limit,
                                   route_limit_backoff=backoff)
    rogue_node, rogue = a_client_that_floods(cluster, rr, limit)
    try:
        ip = rogue_node.ip
        rogue.send("vtep", vni=VNI, next_hop=ip, originator=ip, endpoint=ip)
        rogue.send("macs", vni=VNI, count=40, next_hop=ip, tag=1)
        b.wait(lambda _: len(b.routes(ip)) == 41, "the rogue's first 41 routes")  # under the limit

        rogue.send("macs", vni=VNI, count=100_000, next_hop=ip, tag=2)
        cut = rogue.wait_for("notification", 20)
        assert (cut["code"], cut["subcode"], cut["data"]) == (CEASE, MAX_PREFIXES, limit_data(limit))
        rr.wait(lambda evs: PeerState(ip, False, ROUTE_LIMIT) in evs, "the reason, reported")
        b.wait(lambda _: not b.routes(ip), "the rogue's routes withdrawn")
        assert [e for e in rr.process.call(Rib()) if e.vtep == ip] == []
        # Nobody got more of the flood than one UPDATE's worth (~115 routes) past the limit.
        flood = {e.mac for e in b.events if isinstance(e, MacRoute) and e.mac.startswith("02:02:")}
        assert len(flood) <= limit - 41 + 130

        # Other nodes carry on: a's routes stay, new ones pass.
        a.process.call(MacAdd(VNI, "02:aa:00:00:00:02"))
        b.wait(lambda _: {("mac", VNI, "02:aa:00:00:00:01"), ("mac", VNI, "02:aa:00:00:00:02")}
               <= b.routes(a.node.ip).keys(), "a's MACs after the cut")
        assert rr.up(a.node.ip) and rr.up(b.node.ip)

        # No session before the back-off is over; then the rogue announces it all again: cut again.
        again = rogue.wait_for("established", 30)
        assert again["time"] - cut["time"] >= backoff - 1
        second = rogue.wait_for("notification", 20)
        assert (second["code"], second["subcode"]) == (CEASE, MAX_PREFIXES)
    finally:
        rogue.close()
        for bgp in (rr, a, b):
            bgp.close()


def test_a_reflector_past_a_nodes_route_limit_is_cut_and_refused_until_its_backoff_ends(cluster, bgp_env):
    limit, backoff = 50, 4
    node = cluster.add_node("n")
    rogue_node = cluster.add_node("rogue")  # a rogue reflector: nodes listen, reflectors dial
    n = Bgp(node, bgp_env, max_routes_per_peer=limit, route_limit_backoff=backoff)
    rogue = RoguePeer(rogue_node.netns, "--router-id", rogue_node.ip, "--peer", node.ip,
                      "--connect", "--hold-time", str(HOLD))
    try:
        n.process.call(PeerAdd(rogue_node.ip, "passive"))
        rogue.wait_for("established", 20)
        ip = rogue_node.ip
        rogue.send("macs", vni=VNI, count=30, next_hop=ip, tag=1)
        n.wait(lambda _: len(n.routes(ip)) == 30, "30 routes")
        rogue.send("macs", vni=VNI, count=100_000, next_hop=ip, tag=2)
        cut = rogue.wait_for("notification", 20, subcode=MAX_PREFIXES)
        assert (cut["code"], cut["data"]) == (CEASE, limit_data(limit))
        n.wait(lambda evs: PeerState(ip, False, ROUTE_LIMIT) in evs, "the reason, reported")
        n.wait(lambda _: not n.routes(ip), "the routes withdrawn")
        assert n.process.call(Rib()) == []
        # The rogue dials again at once, and again: refused (Cease / Connection Rejected) until
        # its back-off is over.
        refused = rogue.wait_for("notification", 20, subcode=CONNECTION_REJECTED)
        assert refused["code"] == CEASE
        again = rogue.wait_for("established", 30)
        assert again["time"] - cut["time"] >= backoff - 1
        rogue.wait_for("notification", 20, subcode=MAX_PREFIXES)   # it floods again: cut again
    finally:
        rogue.close()
        n.close()


def test_a_client_may_announce_only_its_own_vtep(cluster, bgp_env):
    rr, a, b = reflector_and_nodes(cluster, bgp_env)
    rogue_node, rogue = a_client_that_floods(cluster, rr, 0)
    a_ip, ip = a.node.ip, rogue_node.ip
    try:
        rogue.send("vtep", vni=VNI, next_hop=ip, originator=ip, endpoint=ip)              # fine
        rogue.send("macs", vni=VNI, count=5, next_hop=a_ip, tag=1)                        # a's VTEP
        rogue.send("macs", vni=VNI, count=5, next_hop="127.0.0.1", tag=2)                 # no node
        rogue.send("vtep", vni=VNI + 1, next_hop=ip, originator=ip, endpoint=a_ip, rd_index=2)
        rogue.send("vtep", vni=VNI + 2, next_hop=ip, originator=a_ip, endpoint=ip, rd_index=3)
        rogue.send("macs", vni=VNI, count=3, next_hop=ip, tag=3)                          # fine
        b.wait(lambda _: len(b.routes(ip)) == 4, "the rogue's own routes")
        refused = lambda: sum(e.routes for e in rr.events if isinstance(e, RoutesRefused))  # noqa: E731
        rr.wait(lambda _: refused() == 12, "12 routes refused")
        reasons = {e.reason for e in rr.events if isinstance(e, RoutesRefused)}
        assert reasons == {f"next hop {a_ip} is not the peer's own address",
                           "next hop 127.0.0.1 is a loopback address, not a node's",
                           f"tunnel endpoint {a_ip} is not the peer's own address",
                           f"originator {a_ip} is not the peer's own address"}
        assert all(e.peer == ip for e in rr.events if isinstance(e, RoutesRefused))
        # b got nothing naming a's VTEP or a loopback from the rogue, and nothing in the other VNIs.
        assert set(b.routes(ip)) == {("vtep", VNI, None)} | {("mac", VNI, f"02:03:00:00:00:0{i}")
                                                             for i in range(3)}
        assert set(b.routes(a_ip)) == {("vtep", VNI, None), ("mac", VNI, "02:aa:00:00:00:01")}
        assert not b.routes("127.0.0.1")
        # A refused route is treated as withdrawn: the rogue's earlier announcement of it goes.
        rogue.send("macs", vni=VNI, count=3, next_hop=a_ip, tag=3)
        b.wait(lambda _: set(b.routes(ip)) == {("vtep", VNI, None)}, "the MACs withdrawn")
        rr.wait(lambda _: refused() == 15, "3 more refused")
        rib = rr.process.call(Rib())
        assert {(e.event, e.vtep) for e in rib} == {("vtep", ip), ("vtep", a_ip), ("mac", a_ip)}
    finally:
        rogue.close()
        for bgp in (rr, a, b):
            bgp.close()


def spawn_in(node):
    return lambda **kw: BgpProcess(argv_prefix=["ip", "netns", "exec", node.netns], **kw)


def test_the_reflector_counts_and_logs_what_it_refuses_and_cuts_at_once(cluster, caplog):
    rr_node, rogue_node = cluster.add_node("rr"), cluster.add_node("rogue")
    other = cluster.add_node("other")  # an address the rogue claims
    config = ReflectorConfig(router_id=rr_node.ip, hold_time=HOLD, restart_grace=60,
                             max_routes_per_peer=30)
    reflector = Reflector(config, spawn_bgp=spawn_in(rr_node))
    rogue = RoguePeer(rogue_node.netns, "--router-id", rogue_node.ip, "--peer", rr_node.ip,
                      "--listen", rogue_node.ip, "--hold-time", str(HOLD))
    try:
        reflector.start()
        reflector.add_peer(rogue_node.ip)
        rogue.wait_for("established", 20)
        ip = rogue_node.ip
        for tag in range(1, 4):  # three UPDATEs refused: one warning
            rogue.send("macs", vni=VNI, count=5, next_hop=other.ip, tag=tag)
        rogue.send("macs", vni=VNI, count=20, next_hop=ip, tag=4)
        wait_until(lambda: reflector.state.totals()["macs"] == 20, 20, "the good routes")
        assert reflector.counters["routes_refused"] == 15
        warnings = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert warnings == [f"routes from {ip} refused (treated as withdrawn): next hop {other.ip} "
                            f"is not the peer's own address"]
        rogue.send("macs", vni=VNI, count=20, next_hop=ip, tag=5)   # 40 > 30
        rogue.wait_for("notification", 20)
        # Withdrawn at once, though the reflector keeps a closed session's routes 60 s.
        wait_until(lambda: reflector.state.totals()["macs"] == 0, 20, "the routes withdrawn")
        assert reflector.counters["peer_route_limit"] == 1
        assert any(f"peer {ip} closed: route_limit" in r.getMessage() for r in caplog.records)
    finally:
        rogue.close()
        reflector.close()


def test_the_reflector_shows_a_mac_at_the_highest_sequence_number_or_fought_over_as_frozen(cluster):
    rr_node, a_node, rogue_node = (cluster.add_node(n) for n in ("rr", "a", "rogue"))
    reflector = Reflector(ReflectorConfig(router_id=rr_node.ip, hold_time=HOLD),
                          spawn_bgp=spawn_in(rr_node))
    rogue = RoguePeer(rogue_node.netns, "--router-id", rogue_node.ip, "--peer", rr_node.ip,
                      "--listen", rogue_node.ip, "--hold-time", str(HOLD))
    a = Bgp(a_node, dict(os.environ))
    try:
        reflector.start()
        reflector.add_peer(rogue_node.ip)
        reflector.add_peer(a_node.ip)
        a.process.call(PeerAdd(rr_node.ip, "passive"))
        rogue.wait_for("established", 20)
        ip = rogue_node.ip
        rogue.send("macs", vni=VNI, count=1, next_hop=ip, tag=9, seq=MAX_SEQ)
        frozen = lambda: {f["mac"]: f for f in reflector.state.vni_detail(VNI)["frozen"]}  # noqa: E731
        wait_until(lambda: reflector.state.vni_detail(VNI) and frozen(), 20, "the unbeatable MAC")
        [unbeatable] = frozen().values()
        assert (unbeatable["mac"], unbeatable["reason"], unbeatable["vteps"]) == \
            ("02:09:00:00:00:00", "highest sequence number", [ip])

        # Two claims of one MAC outbidding each other: frozen after the 5th move.
        a.process.call(VtepAdd(VNI, 1))
        fought = "02:0a:00:00:00:00"
        for seq in range(1, 7):
            if seq % 2:
                a.process.call(MacAdd(VNI, fought, seq=seq))
                where = a_node.ip
            else:
                rogue.send("macs", vni=VNI, count=1, next_hop=ip, tag=10, seq=seq)
                where = ip
            wait_until(lambda: any(r["vtep"] == where and r["last_changed"] for r in
                                   reflector.state.where_is(fought)), 20, f"claim {seq}")
            wait_until(lambda: reflector.state.macs[VNI][fought][where].seq == seq, 20, "its seq")
            if seq < 6:
                assert fought not in frozen()
        assert frozen()[fought]["reason"] == "moved 5 times within 180 s"
        assert frozen()[fought]["vteps"] == sorted([a_node.ip, ip])
        assert reflector.counters["mac_frozen"] == 2
    finally:
        rogue.close()
        a.close()
        reflector.close()


def command_lines(*nodes) -> list[bytes]:
    """The command line of every process in the nodes' namespaces."""
    found = []
    for node in nodes:
        for pid in node.run("ip", "netns", "pids", node.netns, check=False).stdout.split():
            try:
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                pass  # gone meanwhile
    return found


def test_md5_from_a_mounted_file_keeps_out_a_peer_without_the_password(cluster):
    rr, n1, rogue_node = (cluster.add_node(n) for n in ("rr", "n1", "rogue"))
    password = "m3galos-s3cret"
    secret = cluster.run_dir / "md5-password"
    secret.write_text(password + "\n")  # as `kubectl create secret --from-file` keeps it
    secret.chmod(0o600)
    wrong = cluster.run_dir / "wrong"
    wrong.write_text("not-the-password")
    rr.start_reflector("--peer", n1.ip, "--peer", rogue_node.ip, "--md5-password-file", str(secret),
                       "--hold-time", str(HOLD))
    n1.start_agent("--reflector", rr.ip, "--md5-password-file", str(secret),
                   "--hold-time", str(HOLD))
    state = StateClient(rr.socket)
    established = lambda address: any(p["address"] == address and p["state"] == "Established"  # noqa: E731
                                      for p in state.call("peers"))
    wait_until(lambda: established(n1.ip), 30, "n1's session, with TCP MD5")

    rogue_args = ("--router-id", rogue_node.ip, "--peer", rr.ip, "--listen", rogue_node.ip,
                  "--hold-time", str(HOLD))
    for key in ((), ("--md5-password-file", str(wrong))):  # no password, a wrong one
        with RoguePeer(rogue_node.netns, *rogue_args, *key) as rogue:
            rogue.wait_for("listening")
            time.sleep(8)  # the reflector dials it every ~2 s meanwhile
            assert rogue.events("established") == [] and not established(rogue_node.ip)
    with RoguePeer(rogue_node.netns, *rogue_args, "--md5-password-file", str(secret)) as rogue:
        rogue.wait_for("established", 30)                       # the same peer, with the password
    # The password is on no command line and in no log.
    daemons = [line for line in command_lines(rr, n1) if b"--md5-password-file" in line
               or b"bgp.process" in line]
    assert len(daemons) == 4  # the agent and the reflector, and their BGP processes
    assert not [line for line in command_lines(rr, n1) if password.encode() in line]
    for log in (rr.log_path, n1.log_path):
        assert password not in log.read_text()


def test_a_rogue_reflectors_routes_naming_no_node_never_reach_a_nodes_kernel(cluster, runtime):
    """The reflector refuses them from a client (above); a node checks what its reflectors send
    (speaker.node): behind a rogue reflector, a loopback tunnel endpoint never reaches the VTEP,
    and past the node's route limit the rogue is cut."""
    node, rogue_node = cluster.add_node("n"), cluster.add_node("rogue")
    node.start_agent("--reflector", rogue_node.ip, "--hold-time", str(HOLD),
                     "--max-routes-per-peer", "100")
    pod = node.add_pod("p")
    attach(runtime, node, pod, VNI, "02:31:00:00:00:01")
    with RoguePeer(rogue_node.netns, "--router-id", rogue_node.ip, "--peer", node.ip,
                   "--connect", "--hold-time", str(HOLD)) as rogue:
        rogue.wait_for("established", 30)
        rogue.send("vtep", vni=VNI, next_hop="127.0.0.1", originator="127.0.0.1", endpoint="127.0.0.1")
        rogue.send("macs", vni=VNI, count=3, next_hop="127.0.0.1", tag=0x31)
        rogue.send("macs", vni=VNI, count=2, next_hop=rogue_node.ip, tag=0x32, rd_index=2)  # fine
        wait_until(lambda: len(remote_macs(node, VNI)) == 2, 20, "the rogue's acceptable MACs")
        assert set(remote_macs(node, VNI).values()) == {rogue_node.ip}
        assert "127.0.0.1" not in json.dumps(node.fdb(naming.vtep_name(VNI)))
        assert "tunnel endpoint 127.0.0.1 is a loopback address, not a node's" in node.log_path.read_text()
        rogue.send("macs", vni=VNI, count=200, next_hop=rogue_node.ip, tag=0x33, rd_index=3)
        rogue.wait_for("notification", 20, code=CEASE, subcode=MAX_PREFIXES)
        wait_until(lambda: "closed: route_limit" in node.log_path.read_text(), 20, "the agent's log")
