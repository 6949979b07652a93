"""Request values normalised and checked, apart from any request object: plain strings in, plain
values out, ApiError(400) for anything malformed."""
from __future__ import annotations

import ipaddress
import math
import re

from api.errors import ApiError
from base.bounded_json import BadJson, loads
from base.primitives import MAX_VNI, normalize_mac

_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a Kubernetes node name
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # an RFC 1123 label
MAX_CURSOR = 200
MAX_SEQ = 2 ** 53 - 1  # what JSON clients handle exactly


def _whole(raw: str) -> bool:
    """Plain ASCII digits, short enough to be a number we use (int() refuses > 4300 digits)."""
    return raw.isascii() and raw.isdecimal() and len(raw) <= 16


def vni(raw: str) -> int:
    if not _whole(raw) or not 1 <= int(raw) <= MAX_VNI:
        raise ApiError(400, f"malformed VNI {raw!r}: an integer in 1..{MAX_VNI}")
    return int(raw)


def mac(raw: str) -> str:
    """aa:bb:cc:dd:ee:ff (colons or hyphens, either case) -> lower case with colons."""
    try:
        return normalize_mac(raw)
    except ValueError:
        raise ApiError(400, f"malformed MAC {raw!r}: six hex octets, like 02:00:00:00:00:0a") from None


def address(raw, what: str = "address") -> str:
    if not isinstance(raw, str):
        raise ApiError(400, f"{what} must be an IP address string")
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ApiError(400, f"malformed {what} {raw!r}: an IPv4 or IPv6 address") from None


def node_name(raw) -> str:
    if not isinstance(raw, str) or not _NODE_NAME.match(raw):
        raise ApiError(400, f"malformed node name {raw!r}: lower-case letters, digits, '-' and "
                            "'.', at most 253 characters")
    return raw


def namespace(raw: str) -> str:
    if not _NAMESPACE.fullmatch(raw):
        raise ApiError(400, f"malformed namespace {raw!r}: lower-case letters, digits and '-', "
                            "at most 63 characters")
    return raw


def limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if not _whole(raw) or not 1 <= int(raw) <= maximum:
        raise ApiError(400, f"malformed limit {raw!r}: an integer in 1..{maximum}")
    return int(raw)


def cursor(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not raw or len(raw) > MAX_CURSOR:
        raise ApiError(400, "malformed cursor: pass back the `next` of the previous page")
    return raw


def since(raw: str | None) -> int:
    if raw is None:
        return 0
    if not _whole(raw) or int(raw) > MAX_SEQ:
        raise ApiError(400, f"malformed since {raw!r}: a sequence number in 0..{MAX_SEQ}")
    return int(raw)


def seconds(raw: str | None, maximum: float) -> float:
    """A wait in seconds, capped at `maximum` (a longer one is not an error: it is shortened)."""
    if raw is None:
        return 0.0
    try:
        value = float(raw) if len(raw) <= 32 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ApiError(400, f"malformed timeout {raw!r}: seconds >= 0")
    return min(value, maximum)


def vtep_filter(args) -> dict:
    """The `vtep` (address) and `node` (name) filters of a query, as reflector request fields;
    given both, rows must match both."""
    query = {}
    if args.get("vtep") is not None:
        query["vtep"] = address(args["vtep"], "vtep")
    if args.get("node") is not None:
        query["node"] = node_name(args["node"])
    return query


def json_body(raw: bytes):
    """A request body's JSON value (its size bounded as it was read: api.errors.read_body); 400
    when it is not JSON or nests too deep (base.bounded_json: never a RecursionError)."""
    try:
        return loads(raw, len(raw), what="the request body")
    except BadJson as exc:
        raise ApiError(400, str(exc)) from None
