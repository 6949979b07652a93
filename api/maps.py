"""The LAN map: the page at / (static files of this package, drawn by our own JavaScript: no build
step, nothing fetched from elsewhere) and its data, GET /api/v1/map, a long poll.

    GET /api/v1/map?namespace=NS                      the map now (api.mapview)
    GET /api/v1/map?namespace=NS&since=V&timeout=S    the map once its version differs from V,
                                                      or {"version": V, "changed": false} after S s

A long poll rather than server-sent events: the page sends the API token in an Authorization
header, which EventSource cannot do (the token would go in the URL, and into access logs); and a
bounded long poll holds a gunicorn thread only while it waits, never more than EVENTS_MAX_WAITERS
per worker (beyond that it answers at once and the page waits a second before asking again).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request, send_from_directory

from api import mapview, params
from api.errors import ApiError
from api.mapwatch import MapWatcher

STATIC = Path(__file__).resolve().with_name("static") / "map"
_VERSION = re.compile(r"^[0-9a-f]{1,64}$")
# The page loads its own script and style only; it talks to this server only.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

bp = Blueprint("map", __name__)


def register(app) -> None:
    """The blueprint, and the app's watcher (it starts with the first map request)."""
    app.register_blueprint(bp)
    app.extensions["megalos.map"] = MapWatcher(app.extensions["megalos.reflector"])


def watcher() -> MapWatcher:
    return current_app.extensions["megalos.map"]


@bp.get("/")
def page():
    response = send_from_directory(STATIC, "index.html")
    response.headers.update(PAGE_HEADERS)
    return response


@bp.get("/map/<name>")
def asset(name: str):
    if name not in ("map.js", "map.css"):
        raise ApiError(404, f"no such file {name!r}")
    response = send_from_directory(STATIC, name)
    response.headers.update(PAGE_HEADERS)
    return response


def _since(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not _VERSION.match(raw):
        raise ApiError(400, f"malformed since {raw!r}: the `version` of a previous answer")
    return raw


@bp.get("/api/v1/map")
def show_map():
    """The map of `namespace` (every namespace without it); with `since`, waits up to `timeout`
    seconds for a version other than `since`."""
    args, config = request.args, current_app.config
    namespace = params.namespace(args["namespace"]) if args.get("namespace") is not None else None
    since = _since(args.get("since"))
    timeout = params.seconds(args.get("timeout"), config["EVENTS_MAX_TIMEOUT"])
    watch = watcher()
    waiters = current_app.extensions["megalos.waiters"]
    waiting = since is not None and timeout > 0 and waiters.acquire(blocking=False)
    deadline = time.monotonic() + (timeout if waiting else 0)
    try:
        while True:
            sources, generation = watch.current(config["REFLECTOR_TIMEOUT"])
            doc = mapview.build(sources, namespace)
            if doc["version"] != since:
                return jsonify(doc)
            left = deadline - time.monotonic()
            if left <= 0:
                return jsonify(version=since, changed=False)
            watch.wait_change(generation, left)
    finally:
        if waiting:
            waiters.release()
