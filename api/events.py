"""/api/v1/events: the change log, for waiting on convergence (a bounded long poll)."""
from __future__ import annotations

import threading

from flask import Blueprint, current_app, jsonify, request

from api import params
from api.state import reflector

bp = Blueprint("events", __name__, url_prefix="/api/v1/events")


def _waiters() -> threading.BoundedSemaphore:
    return current_app.extensions["megalos.waiters"]


@bp.get("")
def list_events():
    """Changes with seq > since; with timeout=S waits up to S seconds (capped) for the first one.
    Each long poll holds a worker thread: beyond EVENTS_MAX_WAITERS at once they answer at once."""
    args, config = request.args, current_app.config
    query = {"since": params.since(args.get("since")),
             "limit": params.limit(args.get("limit"), config["PAGE_LIMIT"], config["MAX_PAGE_LIMIT"])}
    if args.get("vni") is not None:
        query["vni"] = params.vni(args["vni"])
    timeout = params.seconds(args.get("timeout"), config["EVENTS_MAX_TIMEOUT"])
    waiters = _waiters()
    waiting = timeout > 0 and waiters.acquire(blocking=False)
    try:
        return jsonify(reflector().call("events", timeout=timeout if waiting else 0, **query))
    finally:
        if waiting:
            waiters.release()
