"""Gunicorn settings for the Megalos API:  gunicorn -c api/gunicorn.conf.py

    MEGALOS_API_BIND      where to listen (default 127.0.0.1:8080; several: comma-separated)
    MEGALOS_API_WORKERS   worker processes (default 2)
    MEGALOS_API_THREADS   threads per worker (default 16; each long poll holds one)
    MEGALOS_API_ACCESS_LOG  "-" for stdout, a path, or unset for none
    MEGALOS_API_CONTROL_SOCKET  gunicorn's control socket (gunicornc); unset: none (its default
                          path is one per user, which two servers on a host would fight over)

and the app's own (api.settings): MEGALOS_REFLECTOR_SOCKET, MEGALOS_API_TOKEN[_FILE], ...
gthread workers: a request blocked on the reflector (a long poll) holds a thread, not a process.
"""
import os
import shutil
import tempfile

from api import metrics

wsgi_app = "api:create_app()"
bind = [b.strip() for b in os.environ.get("MEGALOS_API_BIND", "127.0.0.1:8080").split(",") if b.strip()]
worker_class = "gthread"
workers = int(os.environ.get("MEGALOS_API_WORKERS", "2"))
threads = int(os.environ.get("MEGALOS_API_THREADS", "16"))
timeout = 60            # heartbeat: a gthread worker keeps beating while its threads wait
graceful_timeout = 35   # longer than the longest long poll (30 s)
keepalive = 5
accesslog = os.environ.get("MEGALOS_API_ACCESS_LOG") or None
proc_name = "megalos-api"
control_socket = os.environ.get("MEGALOS_API_CONTROL_SOCKET", "")
control_socket_disable = not control_socket
if not control_socket:
    del control_socket

_made_metrics_dir = []


def on_starting(server):
    """Give the workers a directory for their request metrics (api.metrics), empty at start."""
    directory = os.environ.get("MEGALOS_API_METRICS_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        metrics.clear(directory)
    else:
        directory = tempfile.mkdtemp(prefix="megalos-api-metrics-")
        os.environ["MEGALOS_API_METRICS_DIR"] = directory
        _made_metrics_dir.append(directory)


def on_exit(server):
    for directory in _made_metrics_dir:
        shutil.rmtree(directory, ignore_errors=True)
