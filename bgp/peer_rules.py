"""What a BGP peer may send us, as rules on plain values. Pure logic: no os-ken, no clock of its
own (bgp.osken_guard and bgp.osken_fastpath apply these on the two paths a route can take).

- **A client's routes name its own VTEP** (the reflector role). A node's peering address is its
  VTEP address (the agent's router id, next hop and Type-3 originator; the reflector peers with
  the node at that address), so a route from a client whose next hop, Type-3 originator or PMSI
  tunnel endpoint is anything else claims another node's MACs or LANs, or points the cluster's
  tunnels at an address no node has (`base.primitives.vtep_address`). Such routes are refused
  and treated as withdrawn (RFC 7606): the client's earlier announcement of the same route goes.
- **A route limit per peer**: a peer holding more routes than the limit is cut (NOTIFICATION
  Cease / Maximum Number of Prefixes Reached, RFC 4486 subcode 1) and may reconnect only after a
  back-off. The defaults are generous for labs: a reflector holds at most a node's MAC limit and
  as many VTEP routes from each node; a node holds at most what the whole cluster may.
"""
from __future__ import annotations

from base.primitives import vtep_address

NODE_MAC_LIMIT = 4096  # speaker.mac_limits.DEFAULT_PER_NODE (checked by tests/test_peer_rules.py)
# Reflector, per client: the node's MAC limit, and as many VTEP routes (one per LAN with a pod
# port on the node: a LAN needs a pod port, whose own MAC counts toward the MAC limit).
DEFAULT_PER_CLIENT = 2 * NODE_MAC_LIMIT
# Node, per reflector: everything the cluster may announce, 16 nodes at their MAC limit (or a
# class of a few hundred small labs).
DEFAULT_PER_REFLECTOR = 16 * NODE_MAC_LIMIT
FIRST_BACKOFF = 30.0   # seconds; doubled at each cut
LONGEST_BACKOFF = 600.0


def refusal(peer: str, next_hop: str | None = None, originator: str | None = None,
            endpoint: str | None = None) -> str:
    """Why a reflector refuses a route from client `peer` (its canonical address), or "". Every
    address the route gives as its VTEP (`next_hop`; a Type-3's `originator` and PMSI tunnel
    `endpoint`, when it has them) must be a node's unicast address and the client's own."""
    for what, address in (("next hop", next_hop), ("originator", originator),
                          ("tunnel endpoint", endpoint)):
        if address is None:
            continue
        try:
            text = vtep_address(address)
        except ValueError as exc:
            return f"{what} {exc}"
        if text != peer:
            return f"{what} {text} is not the peer's own address"
    return ""


class Backoff:
    """How long a peer cut for its routes waits before its next session.

    The first cut costs `first` seconds, each further cut twice the one before, up to
    `longest` (at least `first`). A peer that stays within its limit for `longest` seconds after
    its back-off starts again from `first`. Why: a node whose pod stopped flooding (its agent's
    MAC limits hold it since) comes back within half a minute; a peer that floods again and again
    costs the reflector one limit's worth of routes every ten minutes, and its LANs, not others'.
    `now` is given by the caller (a monotonic clock)."""

    def __init__(self, first: float = FIRST_BACKOFF, longest: float = LONGEST_BACKOFF):
        if first <= 0:
            raise ValueError(f"the back-off must be positive, not {first}")
        self.first = first
        self.longest = max(longest, first)
        self._cuts: dict[str, tuple[int, float]] = {}  # peer -> (cuts in a row, back-off ends)

    def cut(self, peer: str, now: float) -> float:
        """Record a cut of `peer`; the seconds it must wait."""
        cuts, ends = self._cuts.get(peer, (0, now))
        if now - ends > self.longest:
            cuts = 0
        wait = min(self.first * 2 ** cuts, self.longest)
        self._cuts[peer] = (cuts + 1, now + wait)
        return wait

    def wait(self, peer: str, now: float) -> float:
        """Seconds `peer` must still wait before a session (0: it may have one)."""
        _, ends = self._cuts.get(peer, (0, now))
        return max(0.0, ends - now)
