"""What the daemons' metrics endpoints share: prometheus_client's HTTP server for one registry,
the two command-line options that place it, and the metric families built from plain values
(events counted in a collections.Counter, BGP sessions by state).

The daemons' own collectors (speaker.metrics, reflector.metrics) read their state when scraped:
a level costs nothing between scrapes. The BGP process never imports this module (an
import-linter contract).
"""
from __future__ import annotations

import argparse
import logging
from collections import Counter
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)

# RFC 4271's session states, as os-ken names them: each is reported, zero or not, so an alert on
# `{state!="Established"} > 0` has a series to look at from the first scrape on.
BGP_STATES = ("Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established")


def add_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--metrics-port", type=int, default=default_port, metavar="PORT",
                        help="serve Prometheus metrics over HTTP on this port (default "
                        "%(default)s; 0: no metrics endpoint)")
    parser.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDRESS",
                        help="the address the metrics endpoint listens on (default %(default)s: "
                        "this host only; give the node's address, or 0.0.0.0, for Prometheus)")


class MetricsServer:
    """prometheus_client's HTTP server (any path answers with the metrics; /favicon.ico 200
    empty), one thread per request, in a daemon thread of its own."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        self._httpd, self._thread = start_http_server(port, host, registry)

    @property
    def port(self) -> int:
        return self._httpd.server_port

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def serve(args: argparse.Namespace, registry: CollectorRegistry, name: str) -> MetricsServer | None:
    """The endpoint the options ask for, or None (--metrics-port 0, or the port cannot be had:
    logged, and the daemon serves on without metrics; its CNI or BGP work matters more)."""
    if args.metrics_port == 0:
        return None
    try:
        server = MetricsServer(registry, args.metrics_host, args.metrics_port)
    except OSError as exc:
        log.error("%s: no metrics endpoint on %s port %d: %s", name, args.metrics_host,
                  args.metrics_port, exc.strerror or exc)
        return None
    log.info("%s: metrics on http://%s:%d/metrics", name, args.metrics_host, server.port)
    return server


def events_family(name: str, documentation: str, counts: Counter) -> CounterMetricFamily:
    """`<name>_total{event="..."}`, one sample per key of `counts` (a collections.Counter other
    threads add to: copied first, which is atomic for a plain Counter of str keys)."""
    family = CounterMetricFamily(name, documentation, labels=["event"])
    for event, value in sorted(dict(counts).items()):
        family.add_metric([event], value)
    return family


def sessions_family(name: str, documentation: str, states: Iterable[str]) -> GaugeMetricFamily:
    """`<name>{state="..."}`: how many sessions are in each state, every BGP state present."""
    counts = Counter({state: 0 for state in BGP_STATES})
    counts.update(states)
    family = GaugeMetricFamily(name, documentation, labels=["state"])
    for state, value in counts.items():
        family.add_metric([state], value)
    return family


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
