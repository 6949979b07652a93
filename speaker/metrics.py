"""The node agent's Prometheus metrics (`megalos-agent --metrics-port`, default 9470).

A flow is measured where it happens: each CNI request, by verb and result code, in one latency
histogram (cni.server calls `observe_cni`). A level is read from the node speaker when scraped
(`NodeCollector`): nothing is counted on the speaker's hot paths. The speaker's state belongs to
its worker thread; the collector reads lengths and copies of plain dicts and sets, which CPython
makes without letting another thread in, so a scrape never sees a dict change under it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector

from base.metrics import events_family, gauge, sessions_family
from bgp.client import BgpError
from bgp.protocol import Peers
from cni import spec

log = logging.getLogger(__name__)

DEFAULT_PORT = 9470
# The agent's own time for one request (the shim's exec and socket come on top): ADD ~1-3 ms,
# DEL ~20 ms (the kernel's veth teardown), a slow netlink or a waiting VNI lock beyond.
CNI_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SESSIONS_TIMEOUT = 2.0  # seconds a scrape waits for the BGP process's peer list


def cni_result_code(exit_code: int, stdout: str) -> int:
    """The CNI result code of an answer: 0 for success, else the error JSON's `code` (-1 when
    the answer has none, which would be a bug)."""
    if exit_code == 0:
        return 0
    try:
        code = json.loads(stdout)["code"]
    except (ValueError, KeyError, TypeError):
        return -1
    return code if isinstance(code, int) else -1


def cni_verb(command: str) -> str:
    """The verb as a label: one of the spec's, else "unknown" (a label never takes a value from
    a request unchecked: a malformed one must not make new series)."""
    return command if command in spec.VERBS else "unknown"


@dataclass(frozen=True)
class NodeLevels:
    """What the node speaker holds at one moment, in plain values."""
    lans: int                   # local VNIs: a VTEP here, its VTEP route announced
    local_macs: int             # pod MACs of this node announced in BGP
    remote_macs: int            # MACs of other nodes programmed into the local VTEPs
    remote_vteps: int           # other nodes' VTEPs on the flood list of a local VNI
    backlog: int                # messages waiting for the worker (changes, received routes)
    withdrawals_pending: int    # withdrawn entries waiting before they leave the FDB
    bgp_up: bool                # the BGP process runs
    sessions: list[str] | None  # each reflector session's state; None: BGP did not answer
    events: dict[str, int] = field(default_factory=dict)


def read_levels(speaker) -> NodeLevels:
    """The levels of a live NodeSpeaker (speaker.node); asks its BGP process for the sessions."""
    local = set(speaker.rd_index.copy())
    announced = speaker.announced.copy()
    floods = speaker.remote.floods.copy()
    remote_macs = sum(1 for key in list(speaker.remote.macs)
                      if key[0] in local and key not in announced)
    remote_vteps = set().union(*[floods[vni] for vni in local if vni in floods])
    bgp = speaker.bgp
    sessions = None
    if bgp is not None and bgp.alive:
        try:
            sessions = [peer.state for peer in bgp.call(Peers(), timeout=SESSIONS_TIMEOUT)]
        except BgpError as exc:
            log.warning("metrics: no session states from the BGP process: %s", exc)
    return NodeLevels(lans=len(local), local_macs=len(announced), remote_macs=remote_macs,
                      remote_vteps=len(remote_vteps), backlog=speaker.backlog(),
                      withdrawals_pending=len(speaker.pending),
                      bgp_up=bgp is not None and bgp.alive, sessions=sessions,
                      events=dict(speaker.counters))


def families(levels: NodeLevels) -> list:
    """The metric families of `levels` (pure: tested with plain values)."""
    found = [
        gauge("megalos_node_lans", "LANs (VNIs) with a VTEP on this node, announced in BGP.",
              levels.lans),
        gauge("megalos_node_local_macs", "Pod MACs on this node announced in BGP.",
              levels.local_macs),
        gauge("megalos_node_remote_macs", "Other nodes' MACs programmed into this node's VTEPs.",
              levels.remote_macs),
        gauge("megalos_node_remote_vteps", "Other nodes' VTEPs on the flood list of a LAN here.",
              levels.remote_vteps),
        gauge("megalos_node_backlog", "Messages waiting for the speaker's worker (local changes "
              "to announce, received routes to program).", levels.backlog),
        gauge("megalos_node_withdrawals_pending", "Withdrawn entries waiting before they leave "
              "the FDB (withdraw delay, stale time, settle).", levels.withdrawals_pending),
        gauge("megalos_node_bgp_up", "Whether the node's BGP process runs.", int(levels.bgp_up)),
        events_family("megalos_node_events", "Events of the node speaker, by name "
                      "(bgp_command_failed, session_up, session_down, ...).", levels.events),
    ]
    if levels.sessions is not None:
        found.append(sessions_family("megalos_node_bgp_sessions",
                                     "Reflector sessions of this node, by BGP state.",
                                     levels.sessions))
    return found


class NodeCollector:
    """Reads a NodeSpeaker at each scrape."""

    def __init__(self, speaker):
        self.speaker = speaker

    def collect(self):
        return families(read_levels(self.speaker))


class AgentMetrics:
    """The agent's registry: the CNI histogram, the process's own figures and, with a control
    plane (`speaker`), the node speaker's levels."""

    def __init__(self, speaker=None):
        self.registry = CollectorRegistry()
        self.cni = Histogram("megalos_cni_request_duration_seconds",
                             "Time the agent took to answer a CNI request, by verb and CNI "
                             "result code (0: success).", ["verb", "code"], buckets=CNI_BUCKETS,
                             registry=self.registry)
        ProcessCollector(registry=self.registry)
        if speaker is not None:
            self.registry.register(NodeCollector(speaker))

    def observe_cni(self, command: str, exit_code: int, stdout: str, seconds: float) -> None:
        """cni.server's hook, once per request."""
        self.cni.labels(cni_verb(command), str(cni_result_code(exit_code, stdout))).observe(seconds)
