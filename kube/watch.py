"""Kubernetes list-then-watch: what every watcher of ours is built on (the node agent's reflector
finder, the reflector's node and LAN watchers).

`ListWatch` lists one kind of object to get the full state and a resourceVersion, watches from
there, resumes from the last resourceVersion seen when the stream ends, lists again on 410 Gone
(the version is too old: events were missed), and retries with capped exponential backoff on any
other failure. Callbacks run on the watcher's thread; an exception in one is logged and does not
stop the watch.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping

from kubernetes import client as k8s_client
from kubernetes import watch as k8s_watch

log = logging.getLogger(__name__)

HTTP_GONE = 410
MIN_HEALTHY_WATCH = 1.0  # seconds: a watch that ends sooner with no event counts as a failure


def object_name(obj: Mapping) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


# -- the loop ------------------------------------------------------------------------------------
class Backoff:
    """Capped exponential backoff with jitter: the n-th delay is in [c/2, c], c = min(cap, base * 2**n)."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None):
        self.base, self.cap = base, cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** self.failures))
        self.failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


def _is_gone(exc: BaseException) -> bool:
    return isinstance(exc, k8s_client.ApiException) and exc.status == HTTP_GONE


class ListWatch:
    """List then watch one kind of object, forever, on a thread of its own.

    `list_fn` is a list method of the official client (e.g. `CoreV1Api.list_node`), called with
    `kwargs` (namespace, label selector, ...). `on_reset(items)` gets the full list (a list of
    dicts) after every (re)list; `on_event(type, obj)` each ADDED/MODIFIED/DELETED event.
    """

    def __init__(self, name: str, list_fn: Callable, on_reset: Callable[[list[dict]], None],
                 on_event: Callable[[str, dict], None], *, kwargs: Mapping | None = None,
                 timeout_seconds: int = 300, request_timeout: float = 10.0,
                 backoff: Backoff | None = None):
        self.name = name
        self._list_fn = list_fn
        self._on_reset = on_reset
        self._on_event = on_event
        self._kwargs = dict(kwargs or {})
        self.timeout_seconds = timeout_seconds     # server side: the API server ends the watch
        self.request_timeout = request_timeout     # client side: connect, and reads past that
        self.backoff = backoff or Backoff()
        self.resource_version: str | None = None
        self.synced = threading.Event()            # set after the first successful list
        self.lists = 0                             # (re)lists done, for logs and tests
        self._stopping = threading.Event()
        self._watch: k8s_watch.Watch | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- life cycle
    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name=f"watch-{self.name}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._watch is not None:
                    # Shuts the socket down, which unblocks the reading thread; repeated because
                    # a watch whose response has not arrived yet has no socket to shut down.
                    self._watch.stop()
            thread = self._thread
            if thread is None or thread is threading.current_thread() or not thread.is_alive():
                return
            thread.join(0.05)
            if time.monotonic() >= deadline:
                log.warning("%s: the watch thread did not stop within %.0f s", self.name, timeout)
                return

    # -- the loop
    def run(self) -> None:
        gone_in_a_row = 0
        while not self._stopping.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                started = time.monotonic()
                events = self._watch_once()
                gone_in_a_row = 0
                if events or time.monotonic() - started >= MIN_HEALTHY_WATCH:
                    self.backoff.reset()
                    continue
                failure = "the watch ended at once with no event"  # do not spin on it
            except Exception as exc:  # noqa: BLE001 - every failure is retried
                if self._stopping.is_set():
                    break
                if isinstance(exc, Gone) or _is_gone(exc):
                    log.info("%s: resourceVersion %s expired; listing again", self.name,
                             self.resource_version)
                    self.resource_version = None
                    gone_in_a_row += 1
                    if gone_in_a_row == 1:
                        continue  # relist at once; a server that keeps answering 410 backs off
                failure = _describe(exc)
            delay = self.backoff.next()
            log.warning("%s: %s; retrying in %.1f s", self.name, failure, delay)
            self._stopping.wait(delay)

    def _list(self) -> None:
        response = self._list_fn(**self._kwargs, _preload_content=False,
                                 _request_timeout=self.request_timeout)
        try:
            body = decode_list(response.data)
        finally:
            response.release_conn()
        items = [item for item in body.get("items") or [] if isinstance(item, dict)]
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion") or ""
        self.lists += 1
        log.debug("%s: listed %d objects at resourceVersion %s", self.name, len(items),
                  self.resource_version)
        _safely(self.name, self._on_reset, items)
        self.synced.set()

    def _watch_once(self) -> int:
        """Watch from the current resourceVersion until the stream ends; the number of events."""
        watch = k8s_watch.Watch()
        with self._lock:
            if self._stopping.is_set():
                return 0
            self._watch = watch
        kwargs = dict(self._kwargs, allow_watch_bookmarks=True,
                      timeout_seconds=self.timeout_seconds,
                      _request_timeout=(self.request_timeout,
                                        self.timeout_seconds + self.request_timeout))
        if self.resource_version:
            kwargs["resource_version"] = self.resource_version
        events = 0
        try:
            for event in watch.stream(self._list_fn, **kwargs):
                if self._stopping.is_set():
                    break
                kind = event.get("type")
                obj = event.get("raw_object")
                if not isinstance(obj, dict):
                    continue
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if kind == "ERROR":  # the client raises on 410 itself; any other ERROR too
                    raise Gone() if obj.get("code") == HTTP_GONE else RuntimeError(obj)
                if version:
                    self.resource_version = version
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    events += 1
                    _safely(self.name, self._on_event, kind, obj)
        finally:
            with self._lock:
                self._watch = None
        return events


def decode_list(data: bytes) -> dict:
    body = json.loads(data)
    if not isinstance(body, dict):
        raise ValueError("a list response is a JSON object")
    return body


def _describe(exc: BaseException) -> str:
    if isinstance(exc, k8s_client.ApiException):
        hint = " (check the ServiceAccount's RBAC)" if exc.status in (401, 403) else ""
        return f"API error {exc.status} {exc.reason}{hint}"
    return f"{exc.__class__.__name__}: {exc}"


def _safely(name: str, callback: Callable, *args) -> None:
    try:
        callback(*args)
    except Exception:  # noqa: BLE001 - a callback must not end the watch
        log.exception("%s: callback %r failed", name, callback)
