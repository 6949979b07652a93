"""bgp.mobility.DuplicateDetector with plain values: moves in, frozen MACs out."""
from __future__ import annotations

import pytest

from bgp.mobility import DEFAULT_FREEZE, DuplicateDetector, Freeze, check_settings

KEY = (100, "02:00:00:00:00:01")


def test_defaults_are_frrs_five_moves_in_180_s_and_a_freeze_of_the_fdb_ageing_time():
    detector = DuplicateDetector()
    assert (detector.max_moves, detector.window, detector.freeze) == (5, 180.0, 300.0)


def test_the_fifth_move_within_the_window_freezes_the_mac():
    detector = DuplicateDetector()
    assert [detector.move(KEY, t) for t in (0, 10, 20, 30)] == [None] * 4
    assert detector.frozen(KEY) is None
    assert detector.move(KEY, 40) == Freeze(KEY, since=40, until=40 + DEFAULT_FREEZE, moves=5)
    assert detector.frozen(KEY).until == 340
    assert detector.move(KEY, 41) is None  # a frozen MAC does not move: nothing counted


def test_moves_older_than_the_window_do_not_count():
    detector = DuplicateDetector(max_moves=3, window=60)
    for t in (0, 50, 100, 150, 200):  # never 3 within 60 s
        assert detector.move(KEY, t) is None
    assert detector.move(KEY, 205) is not None  # 150, 200, 205


def test_each_mac_is_counted_on_its_own():
    detector = DuplicateDetector(max_moves=2)
    other = (100, "02:00:00:00:00:02")
    assert detector.move(KEY, 0) is None and detector.move(other, 1) is None
    assert detector.move(KEY, 2) is not None
    assert detector.frozen(other) is None and detector.frozen((101, KEY[1])) is None


def test_a_freeze_ends_after_the_freeze_time_and_counting_starts_again():
    detector = DuplicateDetector(max_moves=2, freeze=30)
    detector.move(KEY, 0)
    detector.move(KEY, 1)
    assert detector.expire(30) == [] and detector.frozen(KEY)
    assert detector.expire(31) == [KEY] and detector.frozen(KEY) is None
    assert detector.move(KEY, 32) is None  # from zero: the moves before the freeze are gone
    assert detector.move(KEY, 33) is not None


def test_a_permanent_freeze_lasts_until_cleared():
    detector = DuplicateDetector(max_moves=2, freeze=None)
    detector.move(KEY, 0)
    assert detector.move(KEY, 1).until is None
    assert detector.expire(10**9) == [] and detector.frozen_keys().keys() == {KEY}
    assert detector.clear(KEY) is True and detector.frozen(KEY) is None
    assert detector.clear(KEY) is False


def test_memory_stays_bounded_under_a_flood_of_moving_macs():
    detector = DuplicateDetector(max_moves=5, window=180, max_tracked=1000)
    for i in range(100_000):  # 100k MACs each moving once (a spoofing pod's)
        detector.move((100, i), now=i / 1000)
    assert len(detector._moves) == 1000
    detector.expire(1000)  # the window has passed for all of them
    assert len(detector._moves) == 0
    for i in range(20):  # one MAC moving forever keeps at most max_moves times
        detector.clear(KEY)
        for t in range(4):
            detector.move(KEY, 2000 + i * 10 + t)
        assert len(detector._moves[KEY]) <= 5


@pytest.mark.parametrize("max_moves, window, freeze", [
    (1, 180, 300), (1001, 180, 300), (5, 1, 300), (5, 1801, 300), (5, 180, 29), (5, 180, 3601)])
def test_settings_outside_frrs_ranges_are_refused(max_moves, window, freeze):
    with pytest.raises(ValueError):
        check_settings(max_moves, window, freeze)
    with pytest.raises(ValueError):
        DuplicateDetector(max_moves, window, freeze)


def test_frozen_macs_are_bounded_too():
    detector = DuplicateDetector(max_moves=2, max_tracked=10)
    for i in range(100):
        detector.move((100, i), now=0)
        detector.move((100, i), now=1)
    assert len(detector.frozen_keys()) == 10
