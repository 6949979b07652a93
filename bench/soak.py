"""`python -m bench.soak [SECONDS]`: the long churn soak of tests/test_faults.py (default 300 s).

Pods are created and deleted (a fifth by deleting their netns without a DEL) on three nodes and
three LANs behind two reflectors while a steady flow runs; afterwards nothing may be left: no
device, no FDB entry, no route, no frame of the flow lost. It is a test marked `slow`, run here
with its duration; the verdict is pytest's.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    seconds = argv[0] if argv else "300"
    env = {**os.environ, "MEGALOS_LONG_SOAK_SECONDS": seconds}
    return subprocess.call([sys.executable, "-m", "pytest", "-m", "slow", "-q", "-s",
                            "tests/test_faults.py::test_churn_soak_long"], cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main())
