"""reflector.state with plain values: events in, tables, pages and change logs out. No sockets."""
from __future__ import annotations

import threading
import time
from collections import deque

import pytest

from bgp.protocol import ADD, DEL, MAX_SEQ, MacRoute, VtepRoute
from reflector.state import ReflectorState

V1, V2 = 70000, 70001
A, B = "192.0.2.2", "192.0.2.3"


def flood(state, vni, vtep, add=True, now=0.0):
    return state.apply(VtepRoute(ADD if add else DEL, vni, vtep), now)


def mac(state, vni, address, vtep, ip=None, add=True, now=0.0):
    return state.apply(MacRoute(ADD if add else DEL, vni, address, vtep, ip), now)


def m(i: int) -> str:
    return f"02:00:00:00:{i >> 8:02x}:{i & 0xff:02x}"


@pytest.fixture
def state():
    return ReflectorState()


def test_flood_routes_make_a_vnis_vtep_list(state):
    assert flood(state, V1, A) and flood(state, V1, B)
    assert not flood(state, V1, A)  # the same route again changes nothing
    assert state.vni_detail(V1)["vteps"] == [{"address": A, "node": None},
                                             {"address": B, "node": None}]
    assert flood(state, V1, A, add=False) and flood(state, V1, B, add=False)
    assert state.vni_detail(V1) is None  # a VNI with nothing left is gone
    assert not flood(state, V1, A, add=False)  # withdrawing what is not there: nothing
    assert state.vteps == {}


def test_a_mac_record_keeps_first_seen_and_moves_last_changed(state):
    assert mac(state, V1, m(1), A, now=10.0)
    assert not mac(state, V1, m(1), A, now=11.0)  # duplicate
    assert mac(state, V1, m(1), A, ip="10.0.0.1", now=12.0)  # its MAC/IP route
    [row] = state.vni_detail(V1)["macs"]
    assert row == {"vni": V1, "mac": m(1), "vtep": A, "node": None, "ip": "10.0.0.1",
                   "ips": ["10.0.0.1"], "first_seen": 10.0, "last_changed": 12.0, "pod": None}
    assert mac(state, V1, m(1), A, add=False, now=13.0)  # the MAC-only route goes: the IP stays
    [row] = state.vni_detail(V1)["macs"]
    assert (row["ip"], row["first_seen"], row["last_changed"]) == ("10.0.0.1", 10.0, 13.0)
    assert not mac(state, V1, m(1), A, ip="10.9.9.9", add=False)  # not a route it has
    assert mac(state, V1, m(1), A, ip="10.0.0.1", add=False, now=14.0)
    assert state.vni_detail(V1) is None
    assert state.where_is(m(1)) == [] and state.where == {}


def test_a_mac_seen_on_two_vteps_has_two_rows(state):
    mac(state, V1, m(1), A, now=1.0)
    mac(state, V1, m(1), B, now=2.0)
    mac(state, V2, m(1), A, now=3.0)
    rows = state.where_is(m(1))
    assert [(r["vni"], r["vtep"]) for r in rows] == [(V1, A), (V1, B), (V2, A)]
    assert [(r["vni"], r["vtep"]) for r in state.where_is(m(1), vni=V1)] == [(V1, A), (V1, B)]
    assert [(r["vni"], r["vtep"]) for r in state.where_is(m(1), vtep=B)] == [(V1, B)]
    assert state.vni_summary()["vnis"][0] == {"vni": V1, "vteps": 0, "macs": 1,  # distinct MACs
                                              "owner": None, "others": []}
    assert state.where_is(m(2)) == []


def test_vni_summary_pages_and_filters(state):
    for vni in range(1, 8):
        flood(state, vni, A)
        if vni % 2:
            flood(state, vni, B)
            mac(state, vni, m(vni), B)
    page = state.vni_summary(limit=3)
    assert [v["vni"] for v in page["vnis"]] == [1, 2, 3] and page["total"] == 7
    seen, cursor = [], None
    while True:
        page = state.vni_summary(limit=3, cursor=cursor)
        seen += [v["vni"] for v in page["vnis"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == list(range(1, 8))
    only_b = state.vni_summary(vtep=B)
    assert [v["vni"] for v in only_b["vnis"]] == [1, 3, 5, 7] and only_b["total"] == 4
    assert only_b["vnis"][0] == {"vni": 1, "vteps": 2, "macs": 1, "owner": None, "others": []}
    assert state.vni_summary(limit=7)["next"] is None
    with pytest.raises(ValueError):
        state.vni_summary(cursor="seven")
    with pytest.raises(ValueError):
        state.vni_summary(limit=0)


def test_a_large_mac_table_pages_in_order_each_row_once(state):
    flood(state, V1, A)
    for i in range(2500):
        mac(state, V1, m(i), A if i % 3 else B)
    rows, cursor, pages = [], None, 0
    while True:
        page = state.vni_detail(V1, limit=1000, cursor=cursor)
        rows += [(r["mac"], r["vtep"]) for r in page["macs"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert pages == 3 and page["mac_count"] == 2500
    assert rows == sorted(rows) and len(set(rows)) == 2500
    only_b = state.vni_detail(V1, vtep=B)["macs"]
    assert len(only_b) == 834 and {r["vtep"] for r in only_b} == {B}
    assert state.vni_detail(V1, limit=2500)["next"] is None


def test_a_page_cursor_survives_the_removal_of_its_row(state):
    for i in range(6):
        mac(state, V1, m(i), A)
    first = state.vni_detail(V1, limit=3)
    assert first["next"] == f"{m(2)}@{A}"
    mac(state, V1, m(2), A, add=False)  # the cursor's own row goes
    mac(state, V1, m(1), B)  # and a row appears before it
    rest = state.vni_detail(V1, limit=3, cursor=first["next"])
    assert [r["mac"] for r in rest["macs"]] == [m(3), m(4), m(5)]


@pytest.mark.parametrize("cursor", ["no-at-sign", "@192.0.2.2", "02:00:00:00:00:01@"])
def test_a_malformed_mac_cursor_is_refused(state, cursor):
    mac(state, V1, m(1), A)
    with pytest.raises(ValueError):
        state.vni_detail(V1, cursor=cursor)


def test_changes_are_logged_with_sequence_numbers(state):
    flood(state, V1, A, now=1.0)
    mac(state, V1, m(1), A, now=2.0)
    mac(state, V2, m(2), B, ip="10.0.0.2", now=3.0)
    log = state.changes_since(0)
    assert [c["seq"] for c in log["changes"]] == [1, 2, 3] and log["seq"] == 3
    assert log["changes"][2] == {"seq": 3, "time": 3.0, "type": "mac", "action": "add",
                                 "vni": V2, "mac": m(2), "vtep": B, "ip": "10.0.0.2"}
    assert log["next"] == 3 and not log["truncated"]
    assert [c["seq"] for c in state.changes_since(1)["changes"]] == [2, 3]
    two = state.changes_since(0, limit=2)
    assert [c["seq"] for c in two["changes"]] == [1, 2] and two["next"] == 2
    of_v2 = state.changes_since(0, vni=V2)
    assert [c["seq"] for c in of_v2["changes"]] == [3] and of_v2["next"] == 3
    nothing = state.changes_since(3)
    assert nothing["changes"] == [] and nothing["next"] == 3


def test_a_long_poll_returns_when_a_change_comes(state):
    threading.Timer(0.2, lambda: mac(state, V1, m(1), A)).start()
    started = time.monotonic()
    log = state.changes_since(0, timeout=5.0)
    assert 0.1 < time.monotonic() - started < 2.0
    assert [c["mac"] for c in log["changes"]] == [m(1)]


def test_a_long_poll_ignores_changes_outside_its_vni_and_times_out(state):
    threading.Timer(0.1, lambda: mac(state, V2, m(1), A)).start()
    started = time.monotonic()
    log = state.changes_since(0, timeout=0.5, vni=V1)
    assert 0.45 < time.monotonic() - started < 2.0
    assert log["changes"] == [] and log["next"] == 1 and log["seq"] == 1


def test_a_trimmed_log_or_a_restarted_reflector_says_truncated():
    state = ReflectorState(max_log=3)
    for i in range(5):
        mac(state, V1, m(i), A)
    old = state.changes_since(0)
    assert old["truncated"] and [c["seq"] for c in old["changes"]] == [3, 4, 5]
    assert not state.changes_since(2)["truncated"]
    # A client that knew seq 900 of an earlier life of the reflector: everything, flagged.
    reset = state.changes_since(900, timeout=5.0)
    assert reset["truncated"] and [c["seq"] for c in reset["changes"]] == [3, 4, 5]


class CountingLog(deque):
    """The change log, counting the entries anyone walks through."""
    walked = 0

    def __iter__(self):
        for entry in super().__iter__():
            self.walked += 1
            yield entry

    def __reversed__(self):
        for entry in super().__reversed__():
            self.walked += 1
            yield entry


def test_a_long_poll_on_a_quiet_vni_examines_each_change_once(state):
    """The attack: long polls filtered to a VNI with no changes, held open while changes pour
    in. Before, each change made every such waiter rescan all the changes since its `since`,
    under the lock the intake needs: 20 rounds of 100 changes cost one waiter 21,000 entries
    walked (quadratic); now it resumes where it stopped: 2,000, once each."""
    state.log = CountingLog()
    start = state.seq
    result = {}
    waiter = threading.Thread(target=lambda: result.update(
        state.changes_since(start, timeout=60.0, vni=V2, limit=10)))
    waiter.start()
    for batch in range(20):
        seen = state.log.walked
        with state.changed:  # one batch, then let the waiter look at it
            for i in range(100):
                mac(state, V1, m(batch * 100 + i), A)
        deadline = time.monotonic() + 30
        while state.log.walked == seen and time.monotonic() < deadline:
            time.sleep(0.005)
    mac(state, V2, m(9999), B)  # the change the waiter waits for
    waiter.join(30)
    assert [c["mac"] for c in result["changes"]] == [m(9999)] and not result["truncated"]
    assert result["next"] == state.seq == start + 2001
    assert state.log.walked <= 2001 + 20, state.log.walked


def test_a_waiter_that_falls_behind_a_trimmed_log_says_truncated():
    """Resuming, a waiter whose next unread change left the log while it waited (more changes
    than the log keeps came at once) says so; one that had read everything loses nothing."""
    state = ReflectorState(max_log=10)
    result = {}
    waiter = threading.Thread(target=lambda: result.update(
        state.changes_since(0, timeout=2.0, vni=V2)))
    waiter.start()
    time.sleep(0.2)
    with state.changed:
        for i in range(25):
            mac(state, V1, m(i), A)
    waiter.join(10)
    assert result["changes"] == [] and result["truncated"] and result["next"] == 25
    read_all = state.changes_since(25, timeout=0.3, vni=V2)
    assert not read_all["truncated"]


def test_forgetting_a_vtep_withdraws_what_it_announced(state):
    flood(state, V1, A)
    flood(state, V1, B)
    mac(state, V1, m(1), A)
    mac(state, V1, m(1), A, ip="10.0.0.1")
    mac(state, V1, m(2), B)
    state.forget_vtep(A)
    assert state.vni_detail(V1)["vteps"] == [{"address": B, "node": None}]
    assert [r["mac"] for r in state.vni_detail(V1)["macs"]] == [m(2)]
    assert state.where_is(m(1)) == []
    actions = [(c["type"], c["action"]) for c in state.changes_since(5)["changes"]]
    assert actions == [("vtep", "del"), ("mac", "del"), ("mac", "del")]


def test_node_names_show_next_to_their_vteps(state):
    flood(state, V1, A)
    mac(state, V1, m(1), A)
    state.name_node(A, "node-a")
    assert state.vni_detail(V1)["vteps"] == [{"address": A, "node": "node-a"}]
    assert state.where_is(m(1))[0]["node"] == "node-a"
    assert state.node_address("node-a") == A and state.node_address("other") is None
    state.name_node(A, None)
    assert state.vni_detail(V1)["macs"][0]["node"] is None


def test_totals(state):
    flood(state, V1, A)
    flood(state, V2, B)
    mac(state, V1, m(1), A)
    mac(state, V1, m(1), B)
    mac(state, V2, m(1), B)
    totals = state.totals()
    assert (totals["vnis"], totals["vteps"], totals["macs"], totals["seq"]) == (2, 2, 2, 5)


def test_the_json_page_is_the_page_encoded_and_follows_changes(state):
    """vni_detail_json serves the large tables from kept row encodings: they must never be
    stale (a route or a node name changed)."""
    import json
    flood(state, V1, A)
    for i in range(30):
        mac(state, V1, m(i), A if i % 2 else B, now=float(i))
    assert json.loads(state.vni_detail_json(V1, limit=10)) == state.vni_detail(V1, limit=10)
    cursor = state.vni_detail(V1, limit=10)["next"]
    assert (json.loads(state.vni_detail_json(V1, limit=10, cursor=cursor, vtep=A))
            == state.vni_detail(V1, limit=10, cursor=cursor, vtep=A))
    mac(state, V1, m(1), A, ip="10.0.0.1", now=99.0)
    state.name_node(B, "node-b")
    page = json.loads(state.vni_detail_json(V1))
    assert page == state.vni_detail(V1)
    assert page["macs"][1]["ip"] == "10.0.0.1" and page["macs"][1]["last_changed"] == 99.0
    assert page["macs"][0]["node"] == "node-b"
    assert state.vni_detail_json(V2) is None


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def claim(state, clock, vtep, seq, mac_=None, vni=V1, add=True):
    return state.apply(MacRoute(ADD if add else DEL, vni, mac_ or m(1), vtep, None, seq), clock.now)


def test_a_mac_fought_over_is_frozen_after_five_moves_and_thawed_later():
    clock = Clock()
    state = ReflectorState(clock=clock)
    claim(state, clock, A, 0)
    for seq in range(1, 5):                     # B, A, B, A outbid each other: 4 moves
        clock.now += 1
        claim(state, clock, B if seq % 2 else A, seq)
    assert state.vni_detail(V1)["frozen"] == []
    clock.now += 1
    claim(state, clock, B, 5)                   # the 5th move within 180 s
    [row] = state.vni_detail(V1)["frozen"]
    assert row == {"mac": m(1), "reason": "moved 5 times within 180 s", "since": 1005.0,
                   "until": 1305.0, "vteps": [A, B]}
    assert state.counters["mac_frozen"] == 1
    claim(state, clock, A, 6)                   # frozen: not counted as a move
    assert state.counters["mac_frozen"] == 1
    import json
    assert json.loads(state.vni_detail_json(V1))["frozen"] == [row]
    clock.now = 1306.0                          # the freeze is over
    assert state.vni_detail(V1)["frozen"] == []


def test_claims_without_a_higher_sequence_number_are_no_moves():
    clock = Clock()
    state = ReflectorState(clock=clock)
    for i in range(10):
        claim(state, clock, A if i % 2 else B, 0)   # a MAC on two VTEPs, neither outbids
    for seq in range(3, 10):
        claim(state, clock, A, seq)                 # one move, then the holder itself
    assert state.vni_detail(V1)["frozen"] == [] and state.counters["mac_frozen"] == 0


def test_a_mac_at_the_highest_sequence_number_is_frozen_while_announced():
    clock = Clock()
    state = ReflectorState(clock=clock)
    claim(state, clock, A, 0)
    claim(state, clock, B, MAX_SEQ)              # nobody can outbid it
    assert state.vni_detail(V1)["frozen"] == [{"mac": m(1), "reason": "highest sequence number",
                                                "since": 1000.0, "until": None, "vteps": [A, B]}]
    assert state.counters["mac_frozen"] == 1
    clock.now += 10_000
    assert len(state.vni_detail(V1)["frozen"]) == 1  # no timer: as long as it is announced
    claim(state, clock, B, MAX_SEQ, add=False)
    assert state.vni_detail(V1)["frozen"] == []
    claim(state, clock, A, MAX_SEQ)
    claim(state, clock, A, 7)                    # announced again, lower: over
    assert state.vni_detail(V1)["frozen"] == []


def test_a_mac_gone_everywhere_is_forgotten_by_the_detector():
    clock = Clock()
    state = ReflectorState(clock=clock)
    for seq in range(6):
        claim(state, clock, A if seq % 2 else B, seq)
    assert state.vni_detail(V1)["frozen"]
    claim(state, clock, A, 5, add=False)
    claim(state, clock, B, 4, add=False)
    claim(state, clock, A, 0)
    assert state.vni_detail(V1)["frozen"] == []


def test_the_lan_view_shows_frozen_macs_and_members():
    import json
    clock = Clock()
    state = ReflectorState(clock=clock)
    config = json.dumps({"cniVersion": "0.3.0", "name": "a", "type": "megalos", "vxlanId": V1})
    state.lan_reset("nads", [{"metadata": {"name": "kathara-a", "namespace": "lab1",
                                           "labels": {"name": "A"}}, "spec": {"config": config}}])
    status = [{"name": "lab1/kathara-a", "interface": "net0", "mac": m(1), "dns": {}}]
    state.lan_reset("pods", [{"metadata": {"name": "pc1", "namespace": "lab1", "annotations": {
        "k8s.v1.cni.cncf.io/network-status": json.dumps(status)}}, "spec": {"nodeName": "n1"}}])
    claim(state, clock, A, 0)
    claim(state, clock, B, MAX_SEQ, mac_=m(2))    # not a member's MAC: still the LAN's problem
    [lan] = state.lans("lab1")["lans"]
    assert lan["frozen_macs"] == [m(2)] and lan["members"][0]["frozen"] is False
    claim(state, clock, B, MAX_SEQ)
    [lan] = state.lans("lab1")["lans"]
    assert lan["frozen_macs"] == [m(1), m(2)] and lan["members"][0]["frozen"] is True
