"""`python -m bench [NAME ...]`: run the benchmarks registered below (all by default), with defaults."""
from __future__ import annotations

import importlib
import sys

# Modules of bench/, each with main(argv) -> exit code.
BENCHES = ("cni_latency", "evpn", "api", "map", "soak", "spoof", "rogue_peer", "long_polls", "fdb")


def main(argv: list[str] | None = None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown bench {', '.join(unknown)}; known: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    worst = 0
    for name in names:
        print(f"== bench.{name}", flush=True)
        worst = max(worst, importlib.import_module(f"bench.{name}").main([]))
    return worst


if __name__ == "__main__":
    sys.exit(main())
