"""The API served for real, for tests and benchmarks: gunicorn with api/gunicorn.conf.py on a free
loopback port, in a process group of its own, stopped (and its metrics directory removed) on exit.

Reads need the token, as in a deployment: the server gets `token`, a random one when not given
("": none at all), and `request(path)` carries it; so does `page_url()` for the map.

    with ApiServer(reflector_socket) as api:
        urllib.request.urlopen(api.request("/api/v1/vnis"))
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from base.processes import stop_process_group

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "api" / "gunicorn.conf.py"
INHERITED_NOT = {"MEGALOS_API_METRICS_DIR", "PROMETHEUS_MULTIPROC_DIR", "MEGALOS_API_TOKEN_FILE"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    def __init__(self, reflector_socket: str, token: str | None = None, workers: int = 2,
                 threads: int = 8, env: dict | None = None, log_path: str | None = None):
        self.reflector_socket = reflector_socket
        self.token = secrets.token_hex(16) if token is None else token
        self.workers, self.threads = workers, threads
        self.extra_env = env or {}
        self._own_log = log_path is None  # a temporary log, removed by stop()
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="megalos-api-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, wait: float = 30.0, port: int | None = None) -> "ApiServer":
        """Serve on `port`, or on a free one (tried three times: another program may take a free
        port before gunicorn binds it)."""
        for _ in range(1 if port else 3):
            bind = port or free_port()
            # Nothing of this machine's own settings: a metrics directory or token file of its
            # own is given through `env`.
            env = {k: v for k, v in os.environ.items() if k not in INHERITED_NOT}
            env.update({"MEGALOS_API_BIND": f"127.0.0.1:{bind}",
                        "MEGALOS_REFLECTOR_SOCKET": self.reflector_socket,
                        "MEGALOS_API_WORKERS": str(self.workers),
                        "MEGALOS_API_THREADS": str(self.threads), **self.extra_env})
            env["MEGALOS_API_TOKEN"] = self.token
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "gunicorn", "-c", str(CONFIG)], env=env, cwd=REPO,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.url = f"http://127.0.0.1:{bind}"
            if self._wait_serving(wait):
                return self
        raise RuntimeError(f"gunicorn did not serve: {self.log()[-3000:]}")

    def _wait_serving(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as reply:
                    if reply.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        self._stop_process(5.0)
        return False

    @property
    def auth(self) -> dict:
        """The Authorization header of a client that has the token."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def request(self, path: str, **kw) -> urllib.request.Request:
        """A request for `path` with the token (for urllib.request.urlopen)."""
        return urllib.request.Request(self.url + path, headers={**self.auth, **kw.pop("headers", {})},
                                      **kw)

    def page_url(self, query: str = "") -> str:
        """The map's page (with `query`), handing it the token in the fragment, which the
        browser never sends to the server."""
        return (f"{self.url}/" + (f"?{query}" if query else "")
                + (f"#token={self.token}" if self.token else ""))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None:
            return
        self._stop_process(timeout)
        if self._own_log:
            self.log_path.unlink(missing_ok=True)

    def _stop_process(self, timeout: float) -> None:
        stop_process_group(self.process, timeout=timeout)
        self.process = None

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
