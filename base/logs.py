"""The one log format of every Megalos daemon (the agent, the reflector), on stderr."""
from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure(level: str) -> None:
    """Log at `level` (a name such as INFO, any case); ValueError for an unknown level."""
    logging.basicConfig(level=level.upper(), format=FORMAT)
