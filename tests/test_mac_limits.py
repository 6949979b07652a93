"""speaker.mac_limits.MacLimits with plain values: a spoofing pod's MACs in, what is announced out."""
from __future__ import annotations

import pytest

from speaker.mac_limits import NODE_LIMIT, PORT_LIMIT, MacLimits


def key(i: int, vni: int = 100) -> tuple[int, str]:
    return vni, f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def test_defaults_are_64_per_port_and_4096_per_node():
    limits = MacLimits()
    assert (limits.per_port, limits.per_node) == (64, 4096)


def test_a_spoofing_port_gets_its_cap_and_the_rest_is_refused_with_bounded_memory():
    limits = MacLimits(per_port=64, per_node=4096, record=1024)
    verdicts = [limits.admit(key(i), port=7, own=False) for i in range(100_000)]
    assert verdicts[:64] == [""] * 64 and set(verdicts[64:]) == {PORT_LIMIT}
    assert len(limits) == 64 and limits.on_port(7) == 64
    assert len(limits.refused) == 1024  # the record of refusals is bounded
    # Another pod's port on the same node is unaffected.
    assert limits.admit(key(1, vni=200), port=8, own=False) == ""


def test_the_node_cap_holds_across_ports():
    limits = MacLimits(per_port=3, per_node=5)
    verdicts = [limits.admit(key(i), port=i // 3, own=False) for i in range(9)]
    assert verdicts == ["", "", "", "", "", NODE_LIMIT, NODE_LIMIT, NODE_LIMIT, NODE_LIMIT]
    assert limits.refused[key(5)] == NODE_LIMIT


def test_own_macs_count_but_are_never_refused():
    limits = MacLimits(per_port=2, per_node=3)
    assert limits.admit(key(0), port=1, own=True) == ""   # the pod's own, from its ADD
    assert limits.admit(key(1), port=1, own=False) == ""
    assert limits.admit(key(2), port=1, own=False) == PORT_LIMIT  # the own MAC took a place
    assert limits.admit(key(3), port=2, own=False) == ""
    assert limits.admit(key(4), port=3, own=False) == NODE_LIMIT
    # At the node limit a new pod's own MAC still goes out (beyond the cap: only own MACs).
    assert limits.admit(key(5), port=3, own=True) == "" and len(limits) == 4


def test_an_add_without_port_takes_the_port_its_mac_watch_event_names():
    limits = MacLimits(per_port=1, per_node=10)
    assert limits.admit(key(0), port=None, own=True) == ""   # CNI ADD: no port known
    assert limits.admit(key(0), port=4, own=True) == ""      # the static entry's event
    assert limits.on_port(4) == 1
    assert limits.admit(key(1), port=4, own=False) == PORT_LIMIT


def test_released_macs_free_their_place_and_leave_the_record():
    limits = MacLimits(per_port=1, per_node=10)
    limits.admit(key(0), port=1, own=False)
    assert limits.admit(key(1), port=1, own=False) == PORT_LIMIT and key(1) in limits.refused
    assert limits.release(key(0)) is True and limits.on_port(1) == 0
    assert limits.admit(key(1), port=1, own=False) == "" and key(1) not in limits.refused
    assert limits.release(key(9)) is False


def test_a_mac_moving_between_ports_follows_only_into_room():
    limits = MacLimits(per_port=1, per_node=10)
    limits.admit(key(0), port=1, own=False)
    limits.admit(key(1), port=2, own=False)
    assert limits.admit(key(0), port=2, own=False) == ""  # still admitted, stays counted on 1
    assert (limits.on_port(1), limits.on_port(2)) == (1, 1)
    limits.release(key(1))
    limits.admit(key(0), port=2, own=False)
    assert (limits.on_port(1), limits.on_port(2)) == (0, 1)


@pytest.mark.parametrize("per_port, per_node", [(0, 10), (10, 0), (-1, 5)])
def test_limits_below_one_are_refused(per_port, per_node):
    with pytest.raises(ValueError):
        MacLimits(per_port, per_node)
