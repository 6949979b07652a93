"""The app's link to the reflector: a StateClient (one connection per thread) kept on the app."""
from __future__ import annotations

from flask import current_app

from reflector.protocol import StateClient


def make_client(config) -> StateClient:
    return config["STATE_CLIENT"] or StateClient(config["REFLECTOR_SOCKET"], config["REFLECTOR_TIMEOUT"])


def reflector() -> StateClient:
    return current_app.extensions["megalos.reflector"]
