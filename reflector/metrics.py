"""The reflector's Prometheus metrics (`megalos-reflector --metrics-port`, default 9471).

Levels are read when scraped (`ReflectorCollector`: the state's totals under its lock, the BGP
process's peer list); the one flow, requests on the state socket by op and status, is counted by
reflector.state_server through `observe_request`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prometheus_client.core import CounterMetricFamily

from base.metrics import events_family, gauge, sessions_family
from bgp.client import BgpError
from reflector.protocol import OPS

log = logging.getLogger(__name__)

DEFAULT_PORT = 9471


@dataclass(frozen=True)
class ReflectorLevels:
    """What the reflector holds at one moment, in plain values."""
    vnis: int
    vteps: int                  # distinct VTEPs hosting at least one VNI
    macs: int                   # MACs, counted once per VNI
    changes: int                # the change log's sequence number
    bgp_up: bool
    sessions: list[str] | None  # each peer's BGP state; None: the BGP process did not answer
    events: dict[str, int] = field(default_factory=dict)


def read_levels(reflector) -> ReflectorLevels:
    """The levels of a live Reflector (reflector.route_reflector)."""
    totals = reflector.state.totals()
    bgp = reflector.bgp
    sessions = None
    if bgp is not None and bgp.alive:
        try:
            sessions = [peer.state for peer in reflector.peer_summaries()]
        except BgpError as exc:
            log.warning("metrics: no session states from the BGP process: %s", exc)
    return ReflectorLevels(vnis=totals["vnis"], vteps=totals["vteps"], macs=totals["macs"],
                           changes=totals["seq"], bgp_up=bgp is not None and bgp.alive,
                           sessions=sessions, events=dict(reflector.counters))


def families(levels: ReflectorLevels) -> list:
    """The metric families of `levels` (pure: tested with plain values)."""
    found = [
        gauge("megalos_reflector_vnis", "VNIs (LANs) with at least one VTEP route.", levels.vnis),
        gauge("megalos_reflector_vteps", "Distinct VTEPs hosting at least one VNI.", levels.vteps),
        gauge("megalos_reflector_macs", "MACs announced, counted once per VNI.", levels.macs),
        CounterMetricFamily("megalos_reflector_changes", "Changes recorded in the change log "
                            "(its sequence number; starts again with the reflector).",
                            value=levels.changes),
        gauge("megalos_reflector_bgp_up", "Whether the reflector's BGP process runs.",
              int(levels.bgp_up)),
        events_family("megalos_reflector_events", "Events of the reflector, by name "
                      "(session_up, session_down, ...).", levels.events),
    ]
    if levels.sessions is not None:
        found.append(sessions_family("megalos_reflector_bgp_sessions",
                                     "The reflector's sessions with nodes, by BGP state.",
                                     levels.sessions))
    return found


class ReflectorCollector:
    """Reads a Reflector at each scrape."""

    def __init__(self, reflector):
        self.reflector = reflector

    def collect(self):
        return families(read_levels(self.reflector))


class ReflectorMetrics:
    """The reflector's registry: its levels, the state socket's requests, the process's own
    figures."""

    def __init__(self, reflector):
        self.registry = CollectorRegistry()
        self.requests = Counter("megalos_reflector_state_requests",
                                "Requests on the state socket, by op and status (200, or the "
                                "error's HTTP-like status).", ["op", "status"],
                                registry=self.registry)
        ProcessCollector(registry=self.registry)
        self.registry.register(ReflectorCollector(reflector))

    def observe_request(self, op, status: int) -> None:
        """reflector.state_server's hook, once per request."""
        self.requests.labels(op if op in OPS else "unknown", str(status)).inc()
