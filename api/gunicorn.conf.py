"""Gunicorn settings for the Megalos API:  gunicorn -c api/gunicorn.conf.py

    MEGALOS_API_BIND      where to listen (default 127.0.0.1:8080; several: comma-separated)
    MEGALOS_API_WORKERS   worker processes (default 2)
    MEGALOS_API_THREADS   threads per worker (default 16; each long poll holds one)
    MEGALOS_API_ACCESS_LOG  "-" for stdout, a path, or unset for none
    MEGALOS_API_CONTROL_SOCKET  gunicorn's control socket (gunicornc); unset: none (its default
                          path is one per user, which two servers on a host would fight over)
    PROMETHEUS_MULTIPROC_DIR  the workers' request metrics (default: a temporary directory,
                          removed at exit; a given one is emptied at start)

and the app's own (api.settings): MEGALOS_REFLECTOR_SOCKET, MEGALOS_API_TOKEN[_FILE], ...
gthread workers: a request blocked on the reflector (a long poll) holds a thread, not a process.
"""
import glob
import os
import shutil
import sys
import tempfile

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # api.metrics reads it; importing that here would
                                               # load prometheus_client before it is set

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

_made_metrics_dir: list[str] = []


def on_starting(server):
    """prometheus_client's multiprocess mode (api.metrics): a directory for the workers' metric
    files, empty at start, named in PROMETHEUS_MULTIPROC_DIR before any worker starts (that
    variable, read when prometheus_client is first imported, is what turns the mode on). Given
    (PROMETHEUS_MULTIPROC_DIR, or MEGALOS_API_METRICS_DIR, its earlier name): emptied and kept;
    otherwise a temporary one, removed at exit."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess directory "
                           "was set (preload_app?): each worker would count only its own requests")
    directory = os.environ.get(MULTIPROCESS_ENV) or os.environ.get("MEGALOS_API_METRICS_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for path in glob.glob(os.path.join(directory, "*.db")):
            os.unlink(path)
    else:
        directory = tempfile.mkdtemp(prefix="megalos-api-metrics-")
        _made_metrics_dir.append(directory)
    os.environ[MULTIPROCESS_ENV] = directory
    server.log.info("request metrics of the workers in %s", directory)


def child_exit(server, worker):
    """A worker exited: its live gauges go (its counters and histograms stay in the sums)."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    for directory in _made_metrics_dir:
        shutil.rmtree(directory, ignore_errors=True)
