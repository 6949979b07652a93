"""The one log format of every Megalos daemon (the agent, the reflector), on stderr, and a
limiter for the lines a peer or a pod can make us write."""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure(level: str) -> None:
    """Log at `level` (a name such as INFO, any case); ValueError for an unknown level."""
    logging.basicConfig(level=level.upper(), format=FORMAT)


class LogLimiter:
    """Warnings about what others send us, at a rate they cannot choose.

    Per `kind`, at most one line every `interval` seconds; the lines held back meanwhile are
    counted and the next line says how many. With a `key`, a line is written once per key while
    the key is remembered (the last `remember` keys): a pod spoofing 100k MACs, or a peer
    resending one bad route, costs a few lines and bounded memory."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, remember: int = 1024,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval = interval
        self.remember = remember
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._seen: OrderedDict[Hashable, None] = OrderedDict()

    def warning(self, kind: str, message: str, *args, key: Hashable = None) -> bool:
        """Log `message % args` unless held back; whether it was written."""
        if key is not None:
            if key in self._seen:
                return False
            self._seen[key] = None
            if len(self._seen) > self.remember:
                self._seen.popitem(last=False)
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        if held:
            message += f" (and {held} more like it in the last {now - last:.0f} s)"
        self.logger.warning(message, *args)
        return True

    def forget(self, key: Hashable) -> None:
        """Log about `key` again next time (what it was about is over)."""
        self._seen.pop(key, None)
