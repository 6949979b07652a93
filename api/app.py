"""The Flask app: settings, the reflector client, blueprints, error handlers, request metrics."""
from __future__ import annotations

import os
import re
import threading
import time

from flask import Flask, g, request

from api import auth, errors, events, health, lans, macs, maps, nodes, openapi, settings, vnis
from api.metrics import RequestMetrics
from api.state import make_client

UNMATCHED = "unmatched"


def create_app(config: dict | None = None) -> Flask:
    """The app (see the api package): settings from the environment when `config` is None."""
    app = Flask(__name__, static_folder=None)
    app.config.from_mapping(settings.DEFAULTS)
    app.config.from_mapping(settings.from_env(os.environ) if config is None else config)
    app.json.sort_keys = False  # keep the documented field order; cheaper on large tables

    app.extensions["megalos.reflector"] = make_client(app.config)
    app.extensions["megalos.waiters"] = threading.BoundedSemaphore(app.config["EVENTS_MAX_WAITERS"])
    for blueprint in (vnis.bp, macs.bp, nodes.bp, lans.bp, events.bp, health.bp, openapi.bp):
        app.register_blueprint(blueprint)
    maps.register(app)
    errors.register(app)
    _measure_requests(app)
    # After the clock starts: refused bodies and reads are measured too.
    app.before_request(errors.refuse_large_bodies)
    auth.protect_reads(app)
    return app


def endpoint_label(rule: str) -> str:
    """"/api/v1/vnis/<vni>" -> "/api/v1/vnis/{vni}": the path template, as in the OpenAPI document."""
    return re.sub(r"<(?:[^>:]+:)?([^>]+)>", r"{\1}", rule)


def _measure_requests(app: Flask) -> None:
    labels = {rule.rule: endpoint_label(rule.rule) for rule in app.url_map.iter_rules()}
    metrics = RequestMetrics([*labels.values(), UNMATCHED])
    app.extensions["megalos.metrics"] = metrics

    @app.before_request
    def start_clock():
        g.started = time.perf_counter()

    @app.after_request
    def observe(response):
        started = g.get("started")
        if started is not None:
            rule = request.url_rule
            metrics.observe(labels.get(rule.rule, UNMATCHED) if rule else UNMATCHED,
                            time.perf_counter() - started, response.status_code)
        return response
