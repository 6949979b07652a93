"""Every error is a JSON body {"error": "...", "status": N}; nothing escapes as an HTML page or a
traceback. The reflector's failures map to HTTP: down -> 503, unknown -> 404, its own bug -> 502."""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from reflector.protocol import ReflectorError, ReflectorUnavailable

log = logging.getLogger("megalos.api")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict | None = None):
    response = jsonify(error=message, status=status)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _api_error(exc: ApiError):
    return error_response(exc.status, exc.message, exc.headers)


def _http_error(exc: HTTPException):
    # Keep what the exception says about the protocol (Allow on a 405), not its HTML body.
    headers = {k: v for k, v in exc.get_headers() if k.lower() not in ("content-type", "content-length")}
    return error_response(exc.code or 500, exc.description or exc.name, headers)


def _reflector_unavailable(exc: ReflectorUnavailable):
    return error_response(503, f"the reflector is not answering: {exc}", {"Retry-After": "5"})


def _reflector_error(exc: ReflectorError):
    if exc.status in (400, 404, 503):
        return error_response(exc.status, str(exc))
    log.error("reflector error: %s", exc)
    return error_response(502, f"the reflector failed: {exc}")


def _unexpected(exc: Exception):
    log.exception("unhandled error")
    return error_response(500, "internal error (see the API server's log)")


def register(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ReflectorUnavailable, _reflector_unavailable)
    app.register_error_handler(ReflectorError, _reflector_error)
    app.register_error_handler(Exception, _unexpected)
