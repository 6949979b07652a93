"""The API's Prometheus metrics: request metrics per endpoint, and the reflector's figures read
through its state socket. No Flask here.

Under gunicorn, several worker processes answer requests and any one of them answers a scrape:
prometheus_client's multiprocess mode adds them up. api/gunicorn.conf.py names a directory in
PROMETHEUS_MULTIPROC_DIR before any worker starts; each worker's metrics then live in files
there, and a scrape reads them all (those of exited workers too, so counters never go back while
the server runs). Without that variable (the Flask test client, one process) they live in
memory. prometheus_client decides which when it is first imported, hence the variable, not a
setting.

Per endpoint: a latency histogram, and responses by status class.
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from reflector.protocol import ReflectorError, ReflectorUnavailable

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def status_class(status: int) -> str:
    """200 -> "2xx"; anything out of range is counted with its nearest class."""
    return f"{min(max(status // 100, 1), 5)}xx"


class RequestMetrics:
    """Request metrics for the endpoints named up front (each is shown from the start, at 0).
    `directory`: the multiprocess directory (default: $PROMETHEUS_MULTIPROC_DIR, if any)."""

    def __init__(self, endpoints: list[str], directory: str | None = None):
        self.endpoints = frozenset(endpoints)
        self.directory = directory if directory is not None else os.environ.get(MULTIPROCESS_ENV)
        # registry=None: not in prometheus_client's global registry; each scrape gathers them.
        self.duration = Histogram("megalos_api_request_duration_seconds",
                                  "Time to answer an API request, by endpoint.", ["endpoint"],
                                  buckets=BUCKETS, registry=None)
        self.responses = Counter("megalos_api_requests",
                                 "API responses, by endpoint and status class.",
                                 ["endpoint", "code"], registry=None)
        for endpoint in sorted(self.endpoints):
            self.duration.labels(endpoint)

    def observe(self, endpoint: str, seconds: float, status: int) -> None:
        if endpoint not in self.endpoints:
            return
        self.duration.labels(endpoint).observe(seconds)
        self.responses.labels(endpoint, status_class(status)).inc()

    def collectors(self) -> list:
        """What a scrape reads: every worker's files, or this process's metrics."""
        if self.directory:
            return [MultiProcessCollector(None, path=self.directory)]
        return [self.duration, self.responses]


class ReflectorCollector:
    """The reflector's figures, asked for on its state socket at each scrape. A reflector that
    does not answer is `megalos_reflector_up 0`, not a failed scrape."""

    def __init__(self, client):
        self.client = client

    def collect(self):
        try:
            totals, peers = self.client.call("totals"), self.client.call("peers")
        except (ReflectorUnavailable, ReflectorError):
            yield GaugeMetricFamily("megalos_reflector_up",
                                    "Whether the reflector answers on its state socket.", value=0)
            return
        yield GaugeMetricFamily("megalos_reflector_up",
                                "Whether the reflector answers on its state socket.", value=1)
        established = [p for p in peers if p.get("state") == "Established"]
        yield GaugeMetricFamily("megalos_bgp_peers", "BGP peers (nodes) configured on the "
                                "reflector.", value=len(peers))
        yield GaugeMetricFamily("megalos_bgp_peers_established", "BGP peers in state "
                                "Established.", value=len(established))
        yield GaugeMetricFamily("megalos_bgp_routes", "EVPN routes the reflector holds from its "
                                "peers.", value=sum(p.get("received") or 0 for p in peers))
        for name, key, documentation in (
                ("megalos_bgp_routes_received", "received", "EVPN routes held from each peer."),
                ("megalos_bgp_routes_sent", "sent", "EVPN routes advertised to each peer.")):
            family = GaugeMetricFamily(name, documentation, labels=["peer"])
            for peer in peers:
                family.add_metric([peer["address"]], peer.get(key) or 0)
            yield family
        yield GaugeMetricFamily("megalos_vnis", "VNIs (LANs) known to the reflector.",
                                value=totals["vnis"])
        yield GaugeMetricFamily("megalos_vteps", "Distinct VTEPs hosting at least one VNI.",
                                value=totals["vteps"])
        yield GaugeMetricFamily("megalos_macs", "MAC addresses announced, counted once per VNI.",
                                value=totals["macs"])
        yield CounterMetricFamily("megalos_state_changes", "Changes in the reflector's change "
                                  "log.", value=totals["seq"])


def exposition(collectors: list, accept: str) -> tuple[bytes, str]:
    """(body, content type) of one scrape: the text format, or OpenMetrics when the scraper
    asks for it (prometheus_client's content negotiation)."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type
