"""base.logs.LogLimiter with a fake clock: what a flood of one event writes."""
from __future__ import annotations

import logging

from base.logs import LogLimiter


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_flood_of_one_kind_writes_one_line_per_interval_and_counts_the_rest(caplog):
    clock = Clock()
    limiter = LogLimiter(logging.getLogger("t"), interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, "t"):
        written = [limiter.warning("spoof", "refused %s", i) for i in range(100_000)]
        assert written.count(True) == 1 and caplog.messages == ["refused 0"]
        assert limiter.warning("other", "another kind") is True  # kinds are limited apart
        clock.now += 10
        limiter.warning("spoof", "refused %s", "x")
    assert caplog.messages[-1] == "refused x (and 99999 more like it in the last 10 s)"


def test_a_key_is_written_once_while_remembered_and_memory_stays_bounded(caplog):
    clock = Clock()
    limiter = LogLimiter(logging.getLogger("t"), interval=0, remember=3, clock=clock)
    with caplog.at_level(logging.WARNING, "t"):
        assert limiter.warning("route", "bad %s", "r1", key="r1")
        assert not limiter.warning("route", "bad %s", "r1", key="r1")
        for k in range(10_000):
            limiter.warning("route", "bad %s", k, key=k)
        assert len(limiter._seen) == 3
        assert limiter.warning("route", "bad %s", "r1", key="r1")  # forgotten long ago
        limiter.forget("r1")
        assert limiter.warning("route", "bad %s", "r1", key="r1")
