"""The node speaker's settings, built once from the agent's command line and never changed."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeConfig:
    asn: int = 65000
    hold_time: int = 9
    bgp_port: int = 179              # where the node's BGP process listens (reflectors dial it)
    connect_mode: str = "passive"    # passive: our reflectors dial the nodes
    md5_password: str = ""
    reflectors: tuple[str, ...] = ()  # given on the command line (--reflector)
    reconcile_interval: float = 30.0  # seconds between full kernel/BGP reconciliations
    stale_time: float = 60.0          # seconds remote entries are kept while no reflector is up
    settle: float = 3.0               # seconds after sessions return before removals resume
    withdraw_delay: float = 0.2       # a withdrawal and its replacement may come in two UPDATEs

    @classmethod
    def from_args(cls, args) -> "NodeConfig":
        return cls(asn=args.asn, hold_time=args.hold_time, bgp_port=args.bgp_port,
                   connect_mode=args.connect_mode, md5_password=args.md5_password,
                   reflectors=tuple(args.reflector), reconcile_interval=args.reconcile_interval,
                   stale_time=args.stale_time)
