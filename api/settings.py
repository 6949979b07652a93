"""The API's configuration: defaults, and the environment a deployment sets them with.

    MEGALOS_REFLECTOR_SOCKET       the reflector's state socket (default /run/megalos/reflector.sock)
    MEGALOS_API_TOKEN              the bearer token, or
    MEGALOS_API_TOKEN_FILE         a file holding it (a mounted Secret); neither: every call that
                                   needs the token is refused (403)
    MEGALOS_API_READS_NEED_TOKEN   0: reads under /api/v1 are open to anyone who reaches the
                                   server, an explicit opt-out (default 1: they need the token)
    MEGALOS_API_EVENTS_MAX_TIMEOUT the longest long poll, seconds (default 30)
    MEGALOS_API_PAGE_LIMIT         rows in a page when the client gives no limit (default 1000)

Gunicorn's own settings (bind, workers, threads) are read in api/gunicorn.conf.py.
"""
from __future__ import annotations

from reflector.protocol import DEFAULT_SOCKET

DEFAULTS = {
    "REFLECTOR_SOCKET": DEFAULT_SOCKET,
    "REFLECTOR_TIMEOUT": 5.0,        # seconds for one reply (a long poll adds its own wait)
    "API_TOKEN": None,               # None: whatever needs the token is refused with 403
    "READS_NEED_TOKEN": True,        # False: GETs under /api/v1 are open (api.auth)
    "MAX_CONTENT_LENGTH": 64 * 1024,  # Flask's: a larger request body is refused with 413
    "PAGE_LIMIT": 1000,              # rows in a page when the client gives no limit
    "MAX_PAGE_LIMIT": 10_000,
    "EVENTS_MAX_TIMEOUT": 30.0,      # a long poll never waits longer than this
    "EVENTS_MAX_WAITERS": 8,         # concurrent long polls per worker; more are answered at once
    "STATE_CLIENT": None,            # a StateClient-compatible object (tests); None: StateClient
}


class SettingsError(Exception):
    pass


def read_token_file(path: str, what: str = "MEGALOS_API_TOKEN_FILE") -> str:
    """The token in the first line of a file (a mounted Secret); SettingsError if there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise SettingsError(f"{what} {path} is empty")
    return token


def read_token(environ) -> str | None:
    """MEGALOS_API_TOKEN, else the first line of MEGALOS_API_TOKEN_FILE; empty means none."""
    token = environ.get("MEGALOS_API_TOKEN", "").strip()
    path = environ.get("MEGALOS_API_TOKEN_FILE", "")
    if not token and path:
        token = read_token_file(path)
    return token or None


def from_env(environ) -> dict:
    """The settings a deployment gives through the environment (only those it gives)."""
    settings: dict = {"API_TOKEN": read_token(environ)}
    reads = environ.get("MEGALOS_API_READS_NEED_TOKEN", "").strip().lower()
    if reads:
        if reads not in ("0", "1", "true", "false", "yes", "no"):
            raise SettingsError("MEGALOS_API_READS_NEED_TOKEN must be 1 or 0")
        settings["READS_NEED_TOKEN"] = reads in ("1", "true", "yes")
    if environ.get("MEGALOS_REFLECTOR_SOCKET"):
        settings["REFLECTOR_SOCKET"] = environ["MEGALOS_REFLECTOR_SOCKET"]
    if environ.get("MEGALOS_API_PAGE_LIMIT"):
        try:
            settings["PAGE_LIMIT"] = int(environ["MEGALOS_API_PAGE_LIMIT"])
        except ValueError:
            raise SettingsError("MEGALOS_API_PAGE_LIMIT must be a whole number") from None
        if not 1 <= settings["PAGE_LIMIT"] <= DEFAULTS["MAX_PAGE_LIMIT"]:
            raise SettingsError(f"MEGALOS_API_PAGE_LIMIT must be in 1..{DEFAULTS['MAX_PAGE_LIMIT']}")
    if environ.get("MEGALOS_API_EVENTS_MAX_TIMEOUT"):
        try:
            settings["EVENTS_MAX_TIMEOUT"] = float(environ["MEGALOS_API_EVENTS_MAX_TIMEOUT"])
        except ValueError:
            raise SettingsError("MEGALOS_API_EVENTS_MAX_TIMEOUT must be a number of seconds") from None
    return settings
