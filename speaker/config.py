"""The node speaker's settings, built once from the agent's command line and never changed."""
from __future__ import annotations

from dataclasses import dataclass, field

from bgp import mobility
from bgp.peer_rules import DEFAULT_PER_REFLECTOR
from bgp.protocol import MAX_ROUTES_PER_PEER
from speaker.mac_limits import DEFAULT_PER_NODE, DEFAULT_PER_PORT


@dataclass(frozen=True)
class NodeConfig:
    asn: int = 65000
    hold_time: int = 9
    bgp_port: int = 179              # where the node's BGP process listens (reflectors dial it)
    connect_mode: str = "passive"    # passive: our reflectors dial the nodes
    md5_password: str = field(default="", repr=False)  # TCP MD5 (--md5-password-file): never logged
    reflectors: tuple[str, ...] = ()  # given on the command line (--reflector)
    reconcile_interval: float = 30.0  # seconds between full kernel/BGP reconciliations
    stale_time: float = 60.0          # seconds remote entries are kept while no reflector is up
    settle: float = 3.0               # seconds after sessions return before removals resume
    withdraw_delay: float = 0.2       # a withdrawal and its replacement may come in two UPDATEs
    max_macs_per_port: int = DEFAULT_PER_PORT  # local MACs announced per pod port...
    max_macs_per_node: int = DEFAULT_PER_NODE  # ...and per node (speaker.mac_limits)
    dup_max_moves: int = mobility.DEFAULT_MAX_MOVES  # moves within dup_time freeze a MAC
    dup_time: float = mobility.DEFAULT_WINDOW
    dup_freeze: float | None = mobility.DEFAULT_FREEZE  # seconds; None: until the agent restarts
    max_routes_per_peer: int = DEFAULT_PER_REFLECTOR  # from a reflector (bgp.peer_rules; 0: none)
    bgp_timeout: float = 10.0         # seconds a batch of BGP commands may take before a retry
    mac_backlog: int = 8192           # learned-MAC events waiting for the worker, at most

    def __post_init__(self):
        if self.max_macs_per_port < 1 or self.max_macs_per_node < 1:
            raise ValueError("the MAC limits must be at least 1")
        mobility.check_settings(self.dup_max_moves, self.dup_time, self.dup_freeze)
        if self.bgp_timeout <= 0 or self.mac_backlog < 1:
            raise ValueError("the BGP timeout and the MAC event backlog must be positive")
        if not 0 <= self.max_routes_per_peer <= MAX_ROUTES_PER_PEER:
            raise ValueError(f"the route limit per peer must be in 0..{MAX_ROUTES_PER_PEER}")

    @classmethod
    def from_args(cls, args) -> "NodeConfig":
        return cls(asn=args.asn, hold_time=args.hold_time, bgp_port=args.bgp_port,
                   connect_mode=args.connect_mode, md5_password=args.md5_password,
                   reflectors=tuple(args.reflector), reconcile_interval=args.reconcile_interval,
                   stale_time=args.stale_time, max_macs_per_port=args.max_macs_per_port,
                   max_macs_per_node=args.max_macs_per_node, dup_max_moves=args.dup_max_moves,
                   dup_time=args.dup_time, dup_freeze=args.dup_freeze, bgp_timeout=args.bgp_timeout,
                   max_routes_per_peer=args.max_routes_per_peer)
