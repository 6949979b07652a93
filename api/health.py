"""/healthz (the process serves), /readyz (the reflector answers) and /metrics (Prometheus)."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from api.metrics import ReflectorCollector, exposition
from api.state import reflector

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    hello = reflector().call("hello")  # ReflectorUnavailable -> 503 through the error handlers
    return jsonify(status="ready", reflector={"router_id": hello.get("router_id"),
                                              "version": hello.get("version")})


@bp.get("/metrics")
def metrics():
    """Always 200: a reflector that does not answer is megalos_reflector_up 0, not a failed scrape."""
    collectors = [ReflectorCollector(reflector()),
                  *current_app.extensions["megalos.metrics"].collectors()]
    body, content_type = exposition(collectors, request.headers.get("Accept", ""))
    return Response(body, content_type=content_type)
