"""The registry of what Megalos replaced in os-ken: each replacement is made once, and the
upstream object stays reachable (`original`) for the patch that wraps it and for the tests that
check upstream still behaves the way a fix assumes."""
from __future__ import annotations

from typing import Any

_ORIGINALS: dict[tuple[Any, str], Any] = {}  # (owner, attribute name) -> the upstream object


def original(owner: Any, name: str) -> Any:
    """The upstream `owner.name` as it was before we replaced it."""
    return _ORIGINALS.get((owner, name), getattr(owner, name))


def replace(owner: Any, name: str, replacement: Any) -> bool:
    """Set `owner.name = replacement` once, remembering the upstream value; False if done already."""
    key = (owner, name)
    if key in _ORIGINALS:
        return False
    _ORIGINALS[key] = getattr(owner, name)
    setattr(owner, name, replacement)
    return True
