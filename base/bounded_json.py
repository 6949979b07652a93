"""JSON that others write (an API body, a state-socket request, a pod's Multus annotations, a
NAD's config), parsed within bounds: never a RecursionError or a MemoryError, always BadJson.

`json.loads` recurses once per nested array or object, so 100k `[` raise RecursionError, which is
no ValueError and escapes every `except ValueError`; and it allocates in proportion to the text.
`loads` refuses a text over `max_size` bytes (JsonTooLarge) and one that nests arrays and objects
more than `max_depth` deep anywhere (BadJson) before `json.loads` sees it. The depth rule is the
CNI shim's (cni/shim.py `too_deep`, which must stay in the shim: it imports nothing of ours); the
two are held to the same answer on any bytes by tests/test_bounded_json.py.
"""
from __future__ import annotations

import json
import re

MAX_DEPTH = 64  # a real config, annotation or request nests fewer than 10
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)  # a string, or one left unterminated
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_OPEN = frozenset(b"[{")


class BadJson(ValueError):
    """Not JSON, or nested deeper than allowed."""


class JsonTooLarge(BadJson):
    """Longer than allowed."""


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest more than `limit` deep anywhere in `data` (brackets in
    strings do not count; well-formed or not)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _STRING.sub(b"", data).translate(None, _NOT_BRACKET):
        if byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads(text: str | bytes, max_size: int, max_depth: int = MAX_DEPTH, what: str = "JSON"):
    """The value of `text`; BadJson (JsonTooLarge for the size) naming `what` otherwise."""
    if len(text) > max_size:  # a str of more than max_size characters has more bytes too
        raise JsonTooLarge(f"{what} is larger than {max_size} bytes")
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(data) > max_size:
        raise JsonTooLarge(f"{what} is larger than {max_size} bytes")
    if too_deep(data, max_depth):
        raise BadJson(f"{what} nests arrays and objects more than {max_depth} deep")
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BadJson(f"{what} is not valid JSON: {exc}") from None
