"""Bearer-token authorisation: of every read under /api/v1 (the LANs, MACs, nodes, VNIs, events,
the map: which labs exist, their pods and MACs), unless the operator opts out, and of the calls
that change the cluster (POST/DELETE), always.

Open to anyone who reaches the server: /healthz and /readyz (probes), /metrics (scrapers send no
token; it holds counts and node addresses, nothing of a lab: docs/api.md), the OpenAPI document,
and the map's page at / and its files (they hold no data; the page sends the token it is given).
READS_NEED_TOKEN false (MEGALOS_API_READS_NEED_TOKEN=0) opens the reads: an explicit choice.
With no token configured on the server, whatever needs one is refused outright (403): there is no
"open" mode to fall into by forgetting a Secret."""
from __future__ import annotations

import functools
import hmac

from flask import Flask, current_app, request

from api.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="megalos"'}


NO_TOKEN = {
    "change": "mutating calls are disabled: the server has no API token "
              "(set MEGALOS_API_TOKEN or MEGALOS_API_TOKEN_FILE)",
    "read": "reads need the API token and the server has none (set MEGALOS_API_TOKEN or "
            "MEGALOS_API_TOKEN_FILE, or open the reads with MEGALOS_API_READS_NEED_TOKEN=0)",
}


def check(authorization: str | None, token: str | None, call: str = "change") -> None:
    """Raise ApiError 403 (no token on the server) or 401 (missing or wrong) unless allowed;
    `call` ("change" or "read") says what the 403 refuses."""
    if not token:
        raise ApiError(403, NO_TOKEN[call])
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'", CHALLENGE)
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "wrong bearer token", CHALLENGE)


def token_required(view):
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        check(request.headers.get("Authorization"), current_app.config["API_TOKEN"])
        return view(*args, **kwargs)
    return wrapped


# The views anyone may read (see the module); a read of any other, present or added later (or of
# no view: a 404 is no way to learn which paths exist), needs the token.
OPEN_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "health.metrics",
                            "openapi.document", "map.page", "map.asset"})


def protect_reads(app: Flask) -> None:
    """With READS_NEED_TOKEN, every GET or HEAD but of OPEN_ENDPOINTS checks the token."""
    @app.before_request
    def check_read():
        if (current_app.config["READS_NEED_TOKEN"] and request.method in ("GET", "HEAD")
                and request.endpoint not in OPEN_ENDPOINTS):
            check(request.headers.get("Authorization"), current_app.config["API_TOKEN"], "read")
