"""The wire protocol between an agent (the node agent or the reflector) and its BGP process.

Commands, replies and events are typed here, and encoded and decoded here only; both sides import
this module (standard library and base.primitives only: the agent never loads os-ken).

The process reads commands on stdin and writes replies and events on stdout, one JSON object
per line. Each command gets exactly one reply, in order::

    -> {"id": 7, "op": "mac_add", "vni": 100, "mac": "aa:bb:cc:00:00:01"}
    <- {"reply": 7, "ok": true, "result": true}
    <- {"reply": 8, "ok": false, "error": "vni 5 was not added"}

Events carry no "reply" key; the first line the process writes is `{"event": "ready", "pid": N}`
once os-ken is imported. A command that cannot be decoded gets an error reply with its id when
the id could be read (else null). The commands, and what their results are, are the classes
below; `Start` must come first.

Two kinds of EVPN route, one name each from the CNI verb to the API:
- the VTEP route (EVPN Type-3, inclusive multicast Ethernet tag): "the VTEP at this address takes
  part in this VNI"; a node originates one per local VNI (`VtepAdd`), receivers put the VTEP on
  the VNI's flood list, the reflector lists it as one of the VNI's VTEPs;
- the MAC route (EVPN Type-2): "this MAC of this VNI is behind this VTEP".

Why one module of ~600 lines: it is the whole contract between two processes, every command,
event and field check side by side, so that a change to one is read with all the others; it
holds definitions only (frozen dataclasses and their decoders), no behaviour.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any, ClassVar

from base.primitives import MAX_VNI, normalize_mac, parse_vni
from base.tenancy import MAX_SINCE, VniClaim, parse_namespace, parse_pod_id
from base.secrets import MAX_MD5_PASSWORD

ROLE_SPEAKER, ROLE_REFLECTOR = "speaker", "reflector"
ROLES = (ROLE_SPEAKER, ROLE_REFLECTOR)
CONNECT_MODES = ("active", "passive", "both")
MAX_RD_INDEX = 2**16 - 1
MAX_ASN = 2**16 - 1       # the RT <asn>:<vni> is a 2-octet-AS route target
MAX_SEQ = 2**32 - 1       # the MAC mobility sequence number is 32 bits
MAX_ROUTES_PER_PEER = 10_000_000
ADD, DEL = "add", "del"
ROUTE_LIMIT = "route_limit"  # PeerState.reason: the peer sent more routes than it may


class ProtocolError(ValueError):
    """A line or a command that cannot be applied; `command_id` is its id when one was read."""

    def __init__(self, message: str, command_id: int | None = None):
        super().__init__(message)
        self.command_id = command_id


# -- field checks (each raises ProtocolError naming the field) -----------------------------------
_MISSING = object()


def _field(args: dict, name: str, kind: type, default: Any = _MISSING) -> Any:
    value = args.get(name)
    if value is None:
        if default is _MISSING:
            raise ProtocolError(f'missing "{name}"')
        return default
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ProtocolError(f'"{name}" must be {"an int" if kind is int else "a string"}')
    return value


def _int_in(args: dict, name: str, low: int, high: int, default: Any = _MISSING) -> int:
    value = _field(args, name, int, default)
    if not low <= value <= high:
        raise ProtocolError(f'"{name}" must be in {low}..{high}, not {value}')
    return value


# Addresses already checked: a cluster has few VTEPs and every route event names one, so parsing
# each anew was most of an event's decoding cost at the reflector (bounded: cleared when full).
_CHECKED_IPS: dict[str, tuple[str, int]] = {}
_MAX_CHECKED_IPS = 4096


def _ip(args: dict, name: str, default: Any = _MISSING, version: int | None = None) -> str | None:
    value = _field(args, name, str, default)
    if value is None:
        return None
    checked = _CHECKED_IPS.get(value)
    if checked is None:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            address = None
        if address is not None:
            if len(_CHECKED_IPS) >= _MAX_CHECKED_IPS:
                _CHECKED_IPS.clear()
            checked = _CHECKED_IPS[value] = (str(address), address.version)
    if checked is None or (version and checked[1] != version):
        kind = f"an IPv{version} address" if version else "an IP address"
        raise ProtocolError(f'"{name}" must be {kind}, not {value!r}')
    return checked[0]


def _vni(args: dict) -> int:
    try:
        return parse_vni(_field(args, "vni", int))
    except ValueError:
        raise ProtocolError(f'"vni" must be in 1..{MAX_VNI}, not {args.get("vni")}') from None


def _action(args: dict) -> str:
    action = _field(args, "action", str)
    if action not in (ADD, DEL):
        raise ProtocolError(f'"action" must be {ADD} or {DEL}, not {action!r}')
    return action


_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _claim(args: dict) -> tuple[str | None, int]:
    """(namespace, since) of a VTEP route's claim: (None, 0) when it claims nothing."""
    namespace = _field(args, "namespace", str, None)
    if namespace is None:
        return None, 0
    try:
        return parse_namespace(namespace), _int_in(args, "since", 0, MAX_SINCE)
    except ValueError as exc:
        raise ProtocolError(f'"namespace": {exc}') from None


def _pod(args: dict) -> str | None:
    pod = _field(args, "pod", str, None)
    try:
        return None if pod is None else parse_pod_id(pod)
    except ValueError as exc:
        raise ProtocolError(f'"pod": {exc}') from None


def _vni_claim(namespace: str | None, since: int) -> VniClaim | None:
    return None if namespace is None else VniClaim(since, namespace)
MAX_TEXT = 300


def _short_text(args: dict, name: str) -> str:
    value = _field(args, name, str, "")
    if len(value) > MAX_TEXT:
        raise ProtocolError(f'"{name}" must be at most {MAX_TEXT} characters')
    return value


def _mac(args: dict) -> str:
    raw = _field(args, "mac", str)
    if _CANONICAL_MAC.fullmatch(raw):  # what our own process writes: nothing to normalise
        return raw
    try:
        return normalize_mac(raw)
    except ValueError as exc:
        raise ProtocolError(f'"mac": {exc}') from None


# -- commands ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    op: ClassVar[str]

    @classmethod
    def decode(cls, args: dict) -> "Command":
        """The command from a message's fields, every one checked."""
        return cls()

    @staticmethod
    def decode_result(raw: Any) -> Any:
        """The typed result from a reply's "result" (the client's side)."""
        return raw


@dataclass(frozen=True)
class Start(Command):
    """Start os-ken's speaker. `router_id`: the node's VTEP address (IPv4: FRR reads the VTEP
    from it). `cluster_id`: reflector role only (defaults to router_id). `listen_port` 0: do not
    listen. `hold_time` 0 or >= 3 (os-ken sends keepalives every hold_time // 3 s).
    `connect_retry`: seconds between attempts to connect to an active/both peer (os-ken's own
    30 s delays every re-connection). `restart_grace`: seconds a peer's routes are kept after its
    session closes (0: upstream behaviour; a hold-timer expiry still withdraws at once).
    `max_routes_per_peer` (0: no limit): a peer holding more routes here is sent a NOTIFICATION
    (Cease, Maximum Number of Prefixes Reached), its routes are dropped and it may come back only
    after `route_limit_backoff` seconds, doubled at each new cut (bgp.client_routes.Backoff).
    Result: None. A start that fails leaves the process unusable: close it."""
    op: ClassVar[str] = "start"
    router_id: str
    asn: int
    role: str = ROLE_SPEAKER
    cluster_id: str | None = None
    listen_host: str | None = None
    listen_port: int = 179
    hold_time: int = 9
    connect_retry: int = 1
    restart_grace: int = 0
    max_routes_per_peer: int = 0
    route_limit_backoff: int = 30

    @classmethod
    def decode(cls, args: dict) -> "Start":
        role = _field(args, "role", str, ROLE_SPEAKER)
        if role not in ROLES:
            raise ProtocolError(f'"role" must be one of {", ".join(ROLES)}, not {role!r}')
        hold_time = _int_in(args, "hold_time", 0, 65535, 9)
        if 0 < hold_time < 3:
            raise ProtocolError('"hold_time" must be 0 or at least 3')
        keepalive = _field(args, "keepalive", int, None)
        if keepalive is not None and keepalive != hold_time // 3:
            raise ProtocolError(f"os-ken sends keepalives every hold_time // 3 = {hold_time // 3} s; "
                                f'"keepalive" {keepalive} cannot be honoured')
        return cls(router_id=_ip(args, "router_id", version=4), asn=_int_in(args, "asn", 1, MAX_ASN),
                   role=role,
                   cluster_id=_ip(args, "cluster_id", None, 4) if role == ROLE_REFLECTOR else None,
                   listen_host=_ip(args, "listen_host", None),
                   listen_port=_int_in(args, "listen_port", 0, 65535, 179), hold_time=hold_time,
                   connect_retry=_int_in(args, "connect_retry", 1, 3600, 1),
                   restart_grace=_int_in(args, "restart_grace", 0, 3600, 0),
                   max_routes_per_peer=_int_in(args, "max_routes_per_peer", 0, MAX_ROUTES_PER_PEER, 0),
                   route_limit_backoff=_int_in(args, "route_limit_backoff", 1, 3600, 30))


@dataclass(frozen=True)
class PeerAdd(Command):
    """An iBGP, L2VPN-EVPN-only peer (a route reflector client in the reflector role). os-ken has
    no dynamic neighbours: only peers it is told about are accepted. The same peer again with the
    same settings is a no-op, with other settings an error. Result: True if added."""
    op: ClassVar[str] = "peer_add"
    address: str
    connect_mode: str = "both"
    password: str | None = dataclasses.field(default=None, repr=False)  # TCP MD5: never logged

    @classmethod
    def decode(cls, args: dict) -> "PeerAdd":
        mode = _field(args, "connect_mode", str, "both")
        if mode not in CONNECT_MODES:
            raise ProtocolError(f'"connect_mode" must be one of {", ".join(CONNECT_MODES)}, '
                                f"not {mode!r}")
        password = _field(args, "password", str, None) or None
        if password is not None and len(password.encode()) > MAX_MD5_PASSWORD:
            raise ProtocolError(f'"password" must be at most {MAX_MD5_PASSWORD} octets')
        return cls(_ip(args, "address"), mode, password)


@dataclass(frozen=True)
class PeerDel(Command):
    """Close the session and withdraw every route learned from the peer. Result: False if unknown."""
    op: ClassVar[str] = "peer_del"
    address: str

    @classmethod
    def decode(cls, args: dict) -> "PeerDel":
        return cls(_ip(args, "address"))


@dataclass(frozen=True)
class VtepAdd(Command):
    """Take part in a VNI (speaker role): an EVPN VRF with RD <router_id>:<rd_index> (a VNI above
    65535 cannot be a Type-1 RD number) and export RT <asn>:<vni>, and its VTEP route (Type-3:
    ethernet tag 0, originator = next hop = router_id, PMSI tunnel type 6 with the VNI, the VXLAN
    encapsulation community). With `namespace` (and `since`) the route claims the VNI for that
    namespace (bgp.claims). The same again is a no-op; the same VNI with another claim announces
    the route again with it. Result: True if added (or announced again)."""
    op: ClassVar[str] = "vtep_add"
    vni: int
    rd_index: int
    namespace: str | None = None
    since: int = 0

    @property
    def claim(self) -> VniClaim | None:
        return _vni_claim(self.namespace, self.since)

    @classmethod
    def decode(cls, args: dict) -> "VtepAdd":
        return cls(_vni(args), _int_in(args, "rd_index", 0, MAX_RD_INDEX), *_claim(args))


@dataclass(frozen=True)
class VtepDel(Command):
    """Withdraw the VNI's VTEP route and MAC routes, delete its VRF. Result: False if unknown."""
    op: ClassVar[str] = "vtep_del"
    vni: int

    @classmethod
    def decode(cls, args: dict) -> "VtepDel":
        return cls(_vni(args))


@dataclass(frozen=True)
class MacAdd(Command):
    """A MAC route (Type-2) in the VNI's VRF, keyed by (mac, ip): ethernet tag 0, ESI 0, label =
    VNI, next hop = router_id. `seq` > 0 adds the MAC Mobility community (RFC 7432 15): the route
    then wins over an older announcement of the MAC from another node; adding it again with
    another seq re-announces it. `pod` (base.tenancy.pod_id): the route says that pod holds the
    MAC (bgp.claims); another pod re-announces it. Result: True if announced (again)."""
    op: ClassVar[str] = "mac_add"
    vni: int
    mac: str
    ip: str | None = None
    seq: int = 0
    pod: str | None = None

    @classmethod
    def decode(cls, args: dict) -> "MacAdd":
        return cls(_vni(args), _mac(args), _ip(args, "ip", None), _int_in(args, "seq", 0, MAX_SEQ, 0),
                   _pod(args))


@dataclass(frozen=True)
class MacDel(Command):
    """Withdraw a MAC route (`ip` as added). Result: False if unknown."""
    op: ClassVar[str] = "mac_del"
    vni: int
    mac: str
    ip: str | None = None

    @classmethod
    def decode(cls, args: dict) -> "MacDel":
        return cls(_vni(args), _mac(args), _ip(args, "ip", None))


@dataclass(frozen=True)
class PeerSummary:
    """One peer as `Peers` reports it. `state` is os-ken's FSM name ("Idle", "Connect", "Active",
    "OpenSent", "OpenConfirm", "Established"); `uptime` seconds or None; `received`: routes held
    from the peer now; `sent`: routes advertised to it and not withdrawn; UPDATE messages counted
    over the process's life."""
    address: str
    state: str
    uptime: float | None
    received: int
    sent: int
    updates_received: int
    updates_sent: int

    @property
    def established(self) -> bool:
        return self.state == "Established"

    def json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Peers(Command):
    """Result: [PeerSummary], by address."""
    op: ClassVar[str] = "peers"

    @staticmethod
    def decode_result(raw: Any) -> list[PeerSummary]:
        return [PeerSummary(**item) for item in raw]


@dataclass(frozen=True)
class Rib(Command):
    """Result: every current best EVPN route learned from a peer, as "add" route events."""
    op: ClassVar[str] = "rib"

    @staticmethod
    def decode_result(raw: Any) -> list:
        return [decode_event(item) for item in raw]


@dataclass(frozen=True)
class OriginatedRoutes:
    """What a speaker's BGP process originates: {vni: rd_index} of its VTEP routes and
    {(vni, mac, ip): seq} of its MAC routes."""
    vteps: dict[int, int]
    macs: dict[tuple[int, str, str | None], int]


@dataclass(frozen=True)
class Originated(Command):
    """Result: OriginatedRoutes, what the process announces now (the agent reconciles against
    it: what it sent may not be what the process holds after a timeout or a refusal)."""
    op: ClassVar[str] = "originated"

    @staticmethod
    def decode_result(raw: Any) -> OriginatedRoutes:
        try:
            vteps = {_vni(item): _int_in(item, "rd_index", 0, MAX_RD_INDEX) for item in raw["vteps"]}
            macs = {(_vni(item), _mac(item), _ip(item, "ip", None)): _int_in(item, "seq", 0, MAX_SEQ)
                    for item in raw["macs"]}
        except (KeyError, TypeError, AttributeError):
            raise ProtocolError(f"malformed originated result: {str(raw)[:200]}") from None
        return OriginatedRoutes(vteps, macs)


@dataclass(frozen=True)
class Stop(Command):
    """Shut the speaker down, reply, exit 0 (end of stdin does the same without a reply)."""
    op: ClassVar[str] = "stop"


COMMANDS: dict[str, type[Command]] = {cls.op: cls for cls in (
    Start, PeerAdd, PeerDel, VtepAdd, VtepDel, MacAdd, MacDel, Peers, Rib, Originated, Stop)}


def encode_commands(numbered: Iterable[tuple[int, Command]]) -> bytes:
    """The lines of (id, command) pairs."""
    return b"".join(_line({"id": command_id, "op": c.op, **_fields(c)}) for command_id, c in numbered)


def decode_command(line: bytes | str) -> tuple[int, Command]:
    """(id, command) of one input line; ProtocolError (with the id when one was read)."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a command must be a JSON object")
    command_id = message.get("id")
    if not isinstance(command_id, int) or isinstance(command_id, bool):
        raise ProtocolError('"id" must be an int')
    op = message.get("op")
    if not isinstance(op, str):
        raise ProtocolError('"op" must be a string', command_id)
    kind = COMMANDS.get(op)
    if kind is None:
        raise ProtocolError(f"unknown op {op!r}", command_id)
    try:
        return command_id, kind.decode(message)
    except ProtocolError as exc:
        raise ProtocolError(str(exc), command_id) from None


# -- replies -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    id: int | None
    ok: bool
    result: Any = None
    error: str = ""

    def encode(self) -> bytes:
        if self.ok:
            return _line({"reply": self.id, "ok": True, "result": self.result})
        return _line({"reply": self.id, "ok": False, "error": self.error})


# -- events --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MacRoute:
    """A MAC route (Type-2) learned from a peer was added or withdrawn. `vtep` is its next hop,
    `seq` its MAC mobility sequence number (0 without the community). A MAC that moves is two
    routes (each node has its own RD): an add from the new VTEP, a del from the old, in either
    order: key forwarding state on (vni, mac, vtep). An add may repeat without a del between (the
    same route from two reflectors): adds are idempotent. `pod`: the pod holding the MAC
    (bgp.claims), None when the route names none."""
    event: ClassVar[str] = "mac"
    action: str
    vni: int
    mac: str
    vtep: str
    ip: str | None = None
    seq: int = 0
    pod: str | None = None

    @property
    def added(self) -> bool:
        return self.action == ADD

    @classmethod
    def decode(cls, message: dict) -> "MacRoute":
        return cls(_action(message), _vni(message), _mac(message), _ip(message, "vtep"),
                   _ip(message, "ip", None), _int_in(message, "seq", 0, MAX_SEQ, 0), _pod(message))


@dataclass(frozen=True)
class VtepRoute:
    """A VTEP route (Type-3) learned from a peer was added or withdrawn: `vtep` takes part in
    `vni` (from the PMSI attribute, as FRR reads it). With `namespace` (and `since`) it claims
    the VNI for that namespace (bgp.claims); a withdrawal carries no claim."""
    event: ClassVar[str] = "vtep"
    action: str
    vni: int
    vtep: str
    namespace: str | None = None
    since: int = 0

    @property
    def added(self) -> bool:
        return self.action == ADD

    @property
    def claim(self) -> VniClaim | None:
        return _vni_claim(self.namespace, self.since)

    @classmethod
    def decode(cls, message: dict) -> "VtepRoute":
        return cls(_action(message), _vni(message), _ip(message, "vtep"), *_claim(message))


@dataclass(frozen=True)
class PeerState:
    """A session came up or went down. `reason` says why we closed it ourselves: ROUTE_LIMIT
    (the peer sent more routes than Start.max_routes_per_peer), else ""."""
    event: ClassVar[str] = "peer"
    address: str
    up: bool
    reason: str = ""

    @classmethod
    def decode(cls, message: dict) -> "PeerState":
        up = message.get("up")
        if not isinstance(up, bool):
            raise ProtocolError('"up" must be true or false')
        return cls(_ip(message, "address"), up, _short_text(message, "reason"))


@dataclass(frozen=True)
class RoutesRefused:
    """Routes of one UPDATE from `peer` were refused and treated as withdrawn (RFC 7606): a
    reflector takes a client's routes only with the client's own address as their VTEP.
    `routes`: how many; `reason`: why the first of them was (one event per UPDATE at most, so
    a peer sending many pays for them, not the pipe)."""
    event: ClassVar[str] = "refused"
    peer: str
    routes: int
    reason: str

    @classmethod
    def decode(cls, message: dict) -> "RoutesRefused":
        return cls(_ip(message, "peer"), _int_in(message, "routes", 1, 2**31 - 1),
                   _short_text(message, "reason"))


@dataclass(frozen=True)
class Ready:
    """The process has imported os-ken and reads commands."""
    event: ClassVar[str] = "ready"
    pid: int

    @classmethod
    def decode(cls, message: dict) -> "Ready":
        return cls(_int_in(message, "pid", 1, 2**31 - 1))


Route = MacRoute | VtepRoute
Event = MacRoute | VtepRoute | PeerState | RoutesRefused | Ready
EVENTS: dict[str, type] = {cls.event: cls for cls in (MacRoute, VtepRoute, PeerState, RoutesRefused,
                                                      Ready)}


def event_json(event: Event) -> dict:
    return {"event": event.event, **_fields(event)}


# Route events are most of the pipe (10,000 for 10k MACs at the reflector). Each is one line of
# tab-separated fields, in the order of its class's, led by "M" or "V", instead of a JSON object:
# a third of the cost of writing and reading one. Their fields hold no tab or newline (numbers,
# MACs, addresses, hex, DNS labels), and the reader checks every one as decode_event does. Any
# other line is a JSON object.
_ROUTE_KINDS: dict[str, type] = {"M": MacRoute, "V": VtepRoute}
_INT_FIELDS = frozenset(("vni", "seq", "since"))


def encode_event(event: Event) -> bytes:
    kind = type(event)
    if kind is MacRoute:   # the fields in MacRoute's order, None as ""
        return (f"M\t{event.action}\t{event.vni}\t{event.mac}\t{event.vtep}\t{event.ip or ''}"
                f"\t{event.seq}\t{event.pod or ''}\n").encode()
    if kind is VtepRoute:
        # A claim's namespace is led by "=": the unnamed namespace ('') is a claim, None is none.
        claim = "" if event.namespace is None else f"={event.namespace}"
        return f"V\t{event.action}\t{event.vni}\t{event.vtep}\t{claim}\t{event.since}\n".encode()
    return _line(event_json(event))


def is_route_line(line: bytes) -> bool:
    """Whether `line` is a route event in the compact form (else a JSON object)."""
    return line[:1] in (b"M", b"V")


def decode_route_line(line: bytes) -> Route:
    """The route event of one compact line, every field checked; ProtocolError if malformed."""
    try:
        tag, *values = line.decode("ascii").rstrip("\n").split("\t")
    except UnicodeDecodeError:
        raise ProtocolError("a route event is ASCII") from None
    kind = _ROUTE_KINDS.get(tag)
    if kind is None:
        raise ProtocolError(f"unknown route event {tag!r}")
    names = _FIELD_NAMES.get(kind) or _field_names(kind)
    if len(values) != len(names):
        raise ProtocolError(f"a {kind.event} event has {len(names)} fields, not {len(values)}")
    message: dict[str, Any] = {name: text for name, text in zip(names, values) if text}
    if "namespace" in message:
        if message["namespace"][0] != "=":
            raise ProtocolError(f'malformed {kind.event} event: "namespace" must start with "="')
        message["namespace"] = message["namespace"][1:]
    for name in _INT_FIELDS.intersection(message):
        text = message[name]
        if not text.isdigit():
            raise ProtocolError(f'malformed {kind.event} event: "{name}" must be an int')
        message[name] = int(text)
    try:
        return kind.decode(message)
    except ProtocolError as exc:
        raise ProtocolError(f"malformed {kind.event} event: {exc}") from None


def decode_event(message: dict) -> Event:
    """The event of one decoded line, every field checked (a route's fields come from BGP peers
    through the process); ProtocolError for an unknown or malformed one."""
    kind = EVENTS.get(message.get("event"))
    if kind is None:
        raise ProtocolError(f"unknown event {message.get('event')!r}")
    try:
        return kind.decode(message)
    except ProtocolError as exc:
        raise ProtocolError(f"malformed {kind.event} event: {exc}") from None


# -- helpers -------------------------------------------------------------------------------------
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(kind))
    return names


def _fields(obj) -> dict:
    names = _FIELD_NAMES.get(type(obj)) or _field_names(type(obj))
    return {name: getattr(obj, name) for name in names}


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps with options builds one per call


def _line(message: dict) -> bytes:
    return (_ENCODER.encode(message) + "\n").encode()


def route_distinguisher(router_id: str, rd_index: int) -> str:
    """A Type-1 RD. The VNI cannot be its number: the VNI is 24 bits, the number 16."""
    return f"{router_id}:{rd_index}"


def route_target(asn: int, vni: int) -> str:
    """FRR imports a route into a VNI by an RT whose local part is the VNI."""
    return f"{asn}:{vni}"

