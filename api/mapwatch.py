"""Follows the reflector for the LAN map: one watcher per API worker process, shared by every page
that worker serves, so the reflector's load does not grow with the number of open maps.

The reflector's change log records MAC and VTEP changes but not pods coming and going nor BGP
sessions going up and down; so the watcher waits on the change log (waking at once on a MAC or
VTEP change) for at most POLL seconds, then reads the LAN table and the peers again. A change of
either kind reaches the pages within POLL seconds plus one read. The VNIs' flood lists are read
once (one `vni` call per LAN's VNI) and then kept up to date from the change log's VTEP changes.

The watcher runs only while pages ask: IDLE seconds after the last request it stops, and the next
request starts it again (with a fresh read: nothing stale is served).
"""
from __future__ import annotations

import logging
import threading
import time

from api.mapview import Sources
from reflector.protocol import ReflectorError, ReflectorUnavailable

log = logging.getLogger("megalos.api.map")
POLL = 0.5       # seconds between reads of the LAN table and the peers (not in the change log)
MIN_GAP = 0.2    # seconds between two reads however busy the change log is
IDLE = 60.0      # seconds without a request before the watcher stops
CHANGES = 1000   # change-log entries per read


class MapWatcher:
    """The latest Sources of the map, `generation` counting its changes, `error` when the last
    read failed (the reflector is not answering)."""

    def __init__(self, client, poll: float = POLL, idle: float = IDLE, min_gap: float = MIN_GAP):
        self.client = client
        self.poll, self.idle, self.min_gap = poll, idle, min_gap
        self.sources: Sources | None = None
        self.error: str | None = None
        self.generation = 0
        self.changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._last_asked = 0.0

    # -- for request handlers -------------------------------------------------------------------
    def current(self, wait: float) -> tuple[Sources, int]:
        """The latest Sources and their generation, starting the watcher if it sleeps and waiting
        up to `wait` s for its first read. Raises ReflectorUnavailable when there is nothing to
        serve (the reflector does not answer)."""
        deadline = time.monotonic() + wait
        with self.changed:
            self._last_asked = time.monotonic()
            if self._thread is None:
                self.sources, self.error = None, None
                self._thread = threading.Thread(target=self._run, name="map-watcher",
                                                daemon=True)
                self._thread.start()
            while self.sources is None and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            if self.error is not None:
                raise ReflectorUnavailable(self.error)
            if self.sources is None:
                raise ReflectorUnavailable("the reflector did not answer in time")
            return self.sources, self.generation

    def wait_change(self, generation: int, timeout: float) -> None:
        """Return when the generation moves past `generation` (or an error), or after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.generation == generation and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.changed.wait(left)

    # -- the watcher thread ---------------------------------------------------------------------
    def _run(self) -> None:
        reader = _Reader(self.client)
        wait = 0.0
        while True:
            with self.changed:
                if time.monotonic() - self._last_asked > self.idle:
                    self._thread = None
                    return
            started = time.monotonic()
            try:
                sources, busy = reader.read(wait)
                self._publish(sources, None)
                wait = 0.0 if busy else self.poll
            except (ReflectorUnavailable, ReflectorError) as exc:
                reader.reset()
                self._publish(None, str(exc))
                time.sleep(self.poll)
                wait = 0.0
            except Exception:  # noqa: BLE001 - a bug: say so, keep serving what we had
                log.exception("map watcher")
                reader.reset()
                time.sleep(self.poll)
            time.sleep(max(0.0, self.min_gap - (time.monotonic() - started)))

    def _publish(self, sources: Sources | None, error: str | None) -> None:
        with self.changed:
            if error is not None:
                if error != self.error:
                    self.error = error
                    self.generation += 1
                    self.changed.notify_all()
                return
            if sources != self.sources or self.error is not None:
                self.sources, self.error = sources, None
                self.generation += 1
                self.changed.notify_all()


class _Reader:
    """One pass over the reflector: wait on the change log, then read what the map needs."""

    def __init__(self, client):
        self.client = client
        self.reset()

    def reset(self) -> None:
        self.epoch = None
        self.since = 0
        self.floods: dict[int, set[str]] = {}
        self.router_id: str | None = None

    def read(self, wait: float) -> tuple[Sources, bool]:
        """(Sources, busy): busy when the change log holds more than one read took in."""
        busy = False
        if self.epoch is None:
            totals = self.client.call("totals")
            self.epoch, self.since = totals["epoch"], totals["seq"]
            self.router_id = self.client.call("hello").get("router_id")
        else:
            log_part = self.client.call("events", since=self.since, timeout=wait, limit=CHANGES)
            if log_part["truncated"] or log_part["epoch"] != self.epoch:
                self.reset()  # changes were lost: read the flood lists again
                return self.read(0.0)
            for change in log_part["changes"]:
                flood = self.floods.get(change["vni"])
                if change["type"] == "vtep" and flood is not None:
                    (flood.add if change["action"] == "add" else flood.discard)(change["vtep"])
            self.since = log_part["next"]
            busy = self.since < log_part["seq"]
        lans = self.client.call("lans")
        peers = tuple({"address": p["address"], "name": p.get("name"), "state": p["state"]}
                      for p in self.client.call("peers"))
        for vni in {lan["vni"] for lan in lans["lans"]} - set(self.floods):
            self.floods[vni] = self._flood(vni)
        floods = {vni: tuple(sorted(vteps)) for vni, vteps in self.floods.items()}
        return Sources(lans, peers, floods, self.router_id), busy

    def _flood(self, vni: int) -> set[str]:
        try:
            detail = self.client.call("vni", vni=vni, limit=1)
        except ReflectorError as exc:
            if exc.status == 404:
                return set()
            raise
        return {vtep["address"] for vtep in detail["vteps"]}
