"""How many local MACs the node announces: a cap per pod port and per node. Pure logic.

A pod that sends frames from many source addresses (spoofing, broken, or a lab device bridging
a large LAN) makes its bridge learn each one; without a cap each became a BGP route held by
every node and reflector. Beyond a cap a learned MAC is refused: not announced, and remembered
only in a bounded record (so it is counted and logged once while the record holds it).

A pod's own MAC (given at ADD: a static entry on its port) counts toward both caps but is never
refused: a new pod is never left unreachable because another pod filled the node. Own MACs are
at most one per pod interface, which the number of pods on a node already bounds; beyond the
node cap, only own MACs are announced.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable

PORT_LIMIT = "port_limit"
NODE_LIMIT = "node_limit"
DEFAULT_PER_PORT = 64
DEFAULT_PER_NODE = 4096
REFUSED_RECORD = 1024


class MacLimits:
    """The local MACs admitted for announcement, by key ((vni, mac) for the agent) and port
    (a bridge port's ifindex; None while unknown: an ADD names no port, the MAC watch's event
    for the same entry does)."""

    def __init__(self, per_port: int = DEFAULT_PER_PORT, per_node: int = DEFAULT_PER_NODE,
                 record: int = REFUSED_RECORD):
        if per_port < 1 or per_node < 1:
            raise ValueError(f"MAC limits must be at least 1 (per port {per_port}, per node {per_node})")
        self.per_port = per_port
        self.per_node = per_node
        self.record = record
        self._port: dict[Hashable, int | None] = {}   # admitted key -> its port
        self._own: set[Hashable] = set()
        self._on_port: Counter[int] = Counter()
        self.refused: OrderedDict[Hashable, str] = OrderedDict()  # key -> the cap it hit

    def __len__(self) -> int:
        return len(self._port)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._port

    def on_port(self, port: int) -> int:
        return self._on_port[port]

    def admit(self, key: Hashable, port: int | None, own: bool) -> str:
        """Count `key` as announced from `port`: "" if it may be, else the cap it hits
        (PORT_LIMIT, NODE_LIMIT). A key admitted before stays admitted (its port is updated
        when the new one has room: a MAC moving between two pods of one node)."""
        if key in self._port:
            if own:
                self._own.add(key)
            if port is not None and port != self._port[key] and (
                    key in self._own or self._on_port[port] < self.per_port):
                self._count(key, -1)
                self._port[key] = port
                self._count(key, +1)
            return ""
        if not own:
            if port is not None and self._on_port[port] >= self.per_port:
                return self._refuse(key, PORT_LIMIT)
            if len(self._port) >= self.per_node:
                return self._refuse(key, NODE_LIMIT)
        self.refused.pop(key, None)
        self._port[key] = port
        self._count(key, +1)
        if own:
            self._own.add(key)
        return ""

    def release(self, key: Hashable) -> bool:
        """The MAC is gone (or no longer announced): its place is free; whether it held one."""
        self.refused.pop(key, None)
        self._own.discard(key)
        if key not in self._port:
            return False
        self._count(key, -1)
        del self._port[key]
        return True

    def _count(self, key: Hashable, step: int) -> None:
        port = self._port[key]
        if port is None:
            return
        self._on_port[port] += step
        if self._on_port[port] <= 0:
            del self._on_port[port]

    def _refuse(self, key: Hashable, why: str) -> str:
        self.refused[key] = why
        self.refused.move_to_end(key)
        if len(self.refused) > self.record:
            self.refused.popitem(last=False)
        return why
