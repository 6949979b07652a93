"""Bearer-token authorisation of the calls that change the cluster (POST/DELETE), and of reads when
the operator asks for it.

Reads are open by default (the server binds to 127.0.0.1 unless told otherwise); with
READS_NEED_TOKEN (MEGALOS_API_READS_NEED_TOKEN=1) every /api/v1 read but the OpenAPI document
needs the token too. The page at / and its files stay open: they hold no data, and the page sends
the token it is given. With no token configured on the server, mutating calls are refused outright
(403): there is no "open" mode to fall into by forgetting a Secret."""
from __future__ import annotations

import functools
import hmac

from flask import Flask, current_app, request

from api.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="megalos"'}


def check(authorization: str | None, token: str | None) -> None:
    """Raise ApiError 403 (no token on the server) or 401 (missing or wrong) unless allowed."""
    if not token:
        raise ApiError(403, "mutating calls are disabled: the server has no API token "
                            "(set MEGALOS_API_TOKEN or MEGALOS_API_TOKEN_FILE)")
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


OPEN_READS = ("/api/v1/openapi.json",)


def protect_reads(app: Flask) -> None:
    """With READS_NEED_TOKEN, every read under /api/v1/ (but OPEN_READS) checks the token."""
    @app.before_request
    def check_read():
        if (current_app.config["READS_NEED_TOKEN"] and request.path.startswith("/api/v1/")
                and request.path not in OPEN_READS and request.method in ("GET", "HEAD")):
            check(request.headers.get("Authorization"), current_app.config["API_TOKEN"])
