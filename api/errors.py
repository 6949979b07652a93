"""Every error is a JSON body {"error": "...", "status": N}; nothing escapes as an HTML page or a
traceback. The reflector's failures map to HTTP: down -> 503, unknown -> 404, its own bug -> 502.
A request body over MAX_CONTENT_LENGTH is 413."""
from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

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


def _too_large(exc: RequestEntityTooLarge):
    return error_response(413, "the request body is larger than "
                               f"{current_app.config['MAX_CONTENT_LENGTH']} bytes")


def refuse_large_bodies() -> None:
    """A body announced larger than MAX_CONTENT_LENGTH is refused before anything reads it (one
    sent without a length, chunked, is refused by read_body once it has been read that far)."""
    if (request.content_length or 0) > current_app.config["MAX_CONTENT_LENGTH"]:
        raise RequestEntityTooLarge()


def read_body() -> bytes:
    """The request body: at most MAX_CONTENT_LENGTH bytes, 413 when there are more. Werkzeug
    stops a chunked body at the limit without a word: one byte more says it went on."""
    body = request.get_data(cache=False)
    if (len(body) == current_app.config["MAX_CONTENT_LENGTH"] and request.content_length is None
            and request.environ["wsgi.input"].read(1)):
        raise RequestEntityTooLarge()
    return body


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
    app.register_error_handler(RequestEntityTooLarge, _too_large)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ReflectorUnavailable, _reflector_unavailable)
    app.register_error_handler(ReflectorError, _reflector_error)
    app.register_error_handler(Exception, _unexpected)
