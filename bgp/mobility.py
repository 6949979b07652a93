"""Duplicate MAC detection, as FRR's `dup-addr-detection`: a MAC that moves `max_moves` times
within `window` seconds is frozen. Pure logic (no os-ken, no clock of its own): the node agent
and the reflector feed it the moves they see and read what is frozen.

A move is a MAC taking a new location because of a newer claim (RFC 7432 MAC mobility: a
higher sequence number, or a node outbidding the one it saw). Two hosts claiming one MAC, by
mistake (two lab devices given the same address) or on purpose, make every node follow each
claim and the sequence number climb until it cannot be outbid; frozen, the MAC stays where it
was, the claims stop being outbid, and the duplicate is reported.

Defaults are FRR's (5 moves within 180 s). FRR freezes for a time (30..3600 s) or permanently;
ours defaults to 300 s, the Linux bridge's FDB ageing time: a conflict that lasts is frozen again
after `max_moves` more moves (a handful of flaps per freeze), one that was transient (a device
restarted twice in a row) heals without anyone clearing it, and nothing needs an operator's
command, which Megalos does not have yet.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass

DEFAULT_MAX_MOVES = 5
DEFAULT_WINDOW = 180.0
DEFAULT_FREEZE = 300.0
MAX_TRACKED = 65536  # keys with moves in their window; the oldest are forgotten beyond it


@dataclass(frozen=True)
class Freeze:
    """A MAC found duplicate: `moves` moves within the window, frozen from `since` until
    `until` (None: until cleared)."""
    key: Hashable
    since: float
    until: float | None
    moves: int


def check_settings(max_moves: int, window: float, freeze: float | None) -> None:
    """ValueError unless the settings are FRR's ranges (max-moves 2..1000, time 2..1800 s,
    freeze 30..3600 s or None for permanent)."""
    if not 2 <= max_moves <= 1000:
        raise ValueError(f"max moves must be in 2..1000, not {max_moves}")
    if not 2 <= window <= 1800:
        raise ValueError(f"the detection time must be in 2..1800 s, not {window}")
    if freeze is not None and not 30 <= freeze <= 3600:
        raise ValueError(f"the freeze time must be in 30..3600 s (or permanent), not {freeze}")


class DuplicateDetector:
    """Counts moves per key (any hashable: the agent uses (vni, mac)); `now` is given by the
    caller (a monotonic clock) to every call. Memory: at most `max_moves` times per key with
    moves in the last `window` seconds, at most `max_tracked` such keys, and at most
    `max_tracked` frozen keys (beyond, MACs keep moving: a cap, not a way to freeze them all)."""

    def __init__(self, max_moves: int = DEFAULT_MAX_MOVES, window: float = DEFAULT_WINDOW,
                 freeze: float | None = DEFAULT_FREEZE, max_tracked: int = MAX_TRACKED):
        check_settings(max_moves, window, freeze)
        self.max_moves = max_moves
        self.window = window
        self.freeze = freeze
        self.max_tracked = max_tracked
        self._moves: OrderedDict[Hashable, deque] = OrderedDict()  # by time of the last move
        self._frozen: dict[Hashable, Freeze] = {}

    def move(self, key: Hashable, now: float) -> Freeze | None:
        """Record a move of `key`; the Freeze if this move made it a duplicate. A frozen key's
        moves are not counted (it does not move)."""
        if key in self._frozen:
            return None
        self._forget_before(now - self.window)
        times = self._moves.pop(key, None) or deque(maxlen=self.max_moves)
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.max_moves and len(self._frozen) < self.max_tracked:
            until = None if self.freeze is None else now + self.freeze
            self._frozen[key] = freeze = Freeze(key, now, until, len(times))
            return freeze
        self._moves[key] = times
        if len(self._moves) > self.max_tracked:
            self._moves.popitem(last=False)
        return None

    def frozen(self, key: Hashable) -> Freeze | None:
        return self._frozen.get(key)

    def frozen_keys(self) -> dict[Hashable, Freeze]:
        return dict(self._frozen)

    def expire(self, now: float) -> list[Hashable]:
        """Release the keys whose freeze is over (they follow moves again, counted from zero);
        the keys released."""
        self._forget_before(now - self.window)
        over = [key for key, f in self._frozen.items() if f.until is not None and f.until <= now]
        for key in over:
            del self._frozen[key]
        return over

    def clear(self, key: Hashable) -> bool:
        """Forget `key` (an operator cleared it, or the MAC is gone everywhere); whether it was
        frozen."""
        self._moves.pop(key, None)
        return self._frozen.pop(key, None) is not None

    def _forget_before(self, oldest: float) -> None:
        while self._moves:
            key, times = next(iter(self._moves.items()))
            if times[-1] > oldest:
                return
            del self._moves[key]
