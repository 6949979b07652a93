"""The OpenAPI 3 document of the API, written by hand (the endpoints follow it; the schema test
checks them against it with schemathesis), served at /api/v1/openapi.json."""
from __future__ import annotations

from flask import Blueprint, jsonify

from base.primitives import MAX_VNI

bp = Blueprint("openapi", __name__)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return {"$ref": f"#/components/responses/{description}"}


def _nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


_INT = {"type": "integer", "minimum": 0}
_MAP_STATE = {"type": "string", "enum": ["converged", "converging", "trouble"]}
_IP = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
       "description": "an IPv4 or IPv6 address", "example": "192.0.2.2"}
_TIME = {"type": "number", "description": "Unix time, seconds"}
_NODE_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
              "maxLength": 253, "example": "node-1"}
_NAMESPACE = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
              "maxLength": 63, "example": "sebje0xn5pjx6sqombfcfg"}
# A namespace as a VNI's claim names it: '' is the namespace of requests that name none.
_CLAIMANT = {"type": "string", "pattern": r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$",
             "maxLength": 63, "example": "sebje0xn5pjx6sqombfcfg"}
_OWNER = _nullable({**_CLAIMANT, "description": "the namespace that owns the VNI (the earliest "
                    "claim: docs/architecture.md, Tenancy); null while none claims it"})

_PARAMETERS = {
    "vni": {"name": "vni", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_VNI}},
    "mac": {"name": "mac", "in": "path", "required": True,
            "description": "colons or hyphens, either case",
            "schema": {"type": "string", "pattern": r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$",
                       "example": "02:00:00:00:00:0a"}},
    "address": {"name": "address", "in": "path", "required": True, "schema": _IP},
    "limit": {"name": "limit", "in": "query", "description": "rows in a page (default 1000)",
              "schema": {"type": "integer", "minimum": 1, "maximum": 10_000}},
    # Cursors are the `next` of the previous page: pass them back as they are. Their patterns
    # are given so that a generated one is well-formed, not as something to build them from.
    "vniCursor": {"name": "cursor", "in": "query", "description": "the `next` of the previous page",
                  "schema": {"type": "string", "pattern": r"^[0-9]{1,8}$"}},
    "macCursor": {"name": "cursor", "in": "query", "description": "the `next` of the previous page",
                  "schema": {"type": "string", "maxLength": 200,
                             "pattern": r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}@[0-9a-fA-F.:]+$"}},
    "vtep": {"name": "vtep", "in": "query", "description": "only this VTEP's rows (an address)",
             "schema": _IP},
    "node": {"name": "node", "in": "query", "description": "only this node's rows (its name, as"
             " given to POST /api/v1/nodes; with `vtep` too, rows must match both)",
             "schema": _NODE_NAME},
    "vniFilter": {"name": "vni", "in": "query", "description": "only this VNI",
                  "schema": {"type": "integer", "minimum": 1, "maximum": MAX_VNI}},
    "namespace": {"name": "namespace", "in": "query", "description": "only this namespace's "
                  "LANs (a Kathara lab's namespace is its hash, lower case)", "schema": _NAMESPACE},
    "since": {"name": "since", "in": "query", "description": "changes after this sequence "
              "number (default 0)", "schema": {**_INT, "maximum": 2 ** 53 - 1}},
    "mapSince": {"name": "since", "in": "query", "description": "the `version` of the map the "
                 "client has: wait (up to `timeout`) for another one",
                 "schema": {"type": "string", "pattern": r"^[0-9a-f]{1,64}$"}},
    "timeout": {"name": "timeout", "in": "query", "description": "seconds to wait for a change "
                "(default 0; the server shortens waits over its maximum, 30 s by default)",
                "schema": {"type": "number", "minimum": 0}},
}


def _params(*names: str) -> list[dict]:
    return [{"$ref": f"#/components/parameters/{name}"} for name in names]


_SCHEMAS = {
    "Error": {"type": "object", "required": ["error", "status"],
              "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
    "VniSummary": {"type": "object", "required": ["vni", "vteps", "macs", "owner", "others"],
                   "properties": {"vni": {"type": "integer"},
                                  "vteps": {**_INT, "description": "VTEPs hosting the VNI"},
                                  "macs": {**_INT, "description": "distinct MACs announced"},
                                  "owner": _OWNER,
                                  "others": {"type": "array", "items": _CLAIMANT, "description":
                                             "other namespaces claiming the VNI too (a "
                                             "collision: they share its wire)"}}},
    "VniClaim": {"type": "object", "required": ["namespace", "since", "vteps"],
                 "properties": {"namespace": _CLAIMANT,
                                "since": {**_INT, "description": "when the namespace first used "
                                          "the VNI, ms since the epoch"},
                                "vteps": {"type": "array", "items": _IP,
                                          "description": "the VTEPs claiming it for it"}}},
    "VniList": {"type": "object", "required": ["vnis", "total", "next"],
                "properties": {"vnis": {"type": "array", "items": _ref("VniSummary")},
                               "total": {**_INT, "description": "VNIs matching the filter"},
                               "next": _nullable({"type": "string"})}},
    "Vtep": {"type": "object", "required": ["address", "node"],
             "properties": {"address": _IP, "node": _nullable({"type": "string"})}},
    "MacEntry": {"type": "object",
                 "required": ["vni", "mac", "vtep", "node", "ip", "ips", "first_seen", "last_changed"],
                 "properties": {"vni": {"type": "integer"}, "mac": {"type": "string"},
                                "vtep": _IP, "node": _nullable({"type": "string"}),
                                "ip": _nullable({"type": "string"}),
                                "ips": {"type": "array", "items": {"type": "string"}},
                                "first_seen": _TIME, "last_changed": _TIME,
                                "pod": _nullable({"type": "string", "pattern": "^[0-9a-f]{12}$",
                                                  "description": "the pod holding the MAC, as "
                                                  "its route names it (a hash of namespace and "
                                                  "device); null: none named"})}},
    "VniDetail": {"type": "object", "required": ["vni", "vteps", "owner", "claims", "mac_count",
                                                 "macs", "next"],
                  "properties": {"vni": {"type": "integer"},
                                 "vteps": {"type": "array", "items": _ref("Vtep")},
                                 "owner": _OWNER,
                                 "claims": {"type": "array", "items": _ref("VniClaim"),
                                            "description": "one per namespace claiming the VNI, "
                                            "the owner first; more than one is a collision"},
                                 "mac_count": {**_INT, "description": "distinct MACs in the VNI"},
                                 "macs": {"type": "array", "items": _ref("MacEntry")},
                                 "next": _nullable({"type": "string"}),
                                 "frozen": {"type": "array", "items": _ref("FrozenMac"),
                                            "description": "MACs of the VNI frozen by duplicate "
                                            "detection (all of them, whatever the page)"}}},
    "FrozenMac": {"type": "object", "required": ["mac", "reason", "since", "until", "vteps"],
                  "properties": {"mac": {"type": "string"},
                                 "reason": {"type": "string", "example": "moved 5 times within "
                                            "180 s", "description": "or \"highest sequence "
                                            "number\" (RFC 7432 MAC mobility: nobody can outbid "
                                            "it)"},
                                 "since": _TIME,
                                 "until": _nullable({**_TIME, "description": "null: while it "
                                                     "is announced at that sequence number"}),
                                 "vteps": {"type": "array", "items": _IP,
                                           "description": "the VTEPs announcing it now"}}},
    "MacLocations": {"type": "object", "required": ["mac", "locations"],
                     "properties": {"mac": {"type": "string"},
                                    "locations": {"type": "array", "minItems": 1,
                                                  "items": _ref("MacEntry")}}},
    "Node": {"type": "object",
             "required": ["address", "name", "state", "uptime", "received", "sent"],
             "properties": {"address": _IP, "name": _nullable({"type": "string"}),
                            "state": {"type": "string", "example": "Established",
                                      "description": "the BGP FSM state"},
                            "uptime": _nullable({"type": "number", "description": "seconds "
                                                 "Established, null when not"}),
                            "received": {**_INT, "description": "routes held from the node"},
                            "sent": {**_INT, "description": "routes advertised to it"},
                            "updates_received": _INT, "updates_sent": _INT}},
    "NodeList": {"type": "object", "required": ["nodes"],
                 "properties": {"nodes": {"type": "array", "items": _ref("Node")}}},
    "NewNode": {"type": "object", "required": ["address"], "additionalProperties": False,
                "properties": {"address": _IP, "name": _NODE_NAME}},
    "NodeAdded": {"type": "object", "required": ["address", "name", "added"],
                  "properties": {"address": _IP, "name": _nullable({"type": "string"}),
                                 "added": {"type": "boolean"}}},
    "Change": {"type": "object", "required": ["seq", "time", "type", "action", "vni", "vtep"],
               "properties": {"seq": {"type": "integer"}, "time": _TIME,
                              "type": {"type": "string", "enum": ["vtep", "mac"]},
                              "action": {"type": "string", "enum": ["add", "del"]},
                              "vni": {"type": "integer"}, "vtep": _IP,
                              "mac": {"type": "string"}, "ip": _nullable({"type": "string"}),
                              "namespace": {**_CLAIMANT, "description": "a VTEP's claim on "
                                            "the VNI"}}},
    "Events": {"type": "object", "required": ["seq", "epoch", "changes", "next", "truncated"],
               "properties": {"seq": {**_INT, "description": "the latest sequence number"},
                              "epoch": {**_TIME, "description": "when this reflector's log "
                                        "began: another value means the reflector restarted"},
                              "changes": {"type": "array", "items": _ref("Change")},
                              "next": {**_INT, "description": "the `since` of the next call"},
                              "truncated": {"type": "boolean", "description": "changes were "
                                            "lost (log trimmed, or the reflector restarted): "
                                            "read the tables again"}}},
    "LanMember": {"type": "object",
                  "required": ["pod", "namespace", "interface", "mac", "node", "attached", "vteps",
                               "announced"],
                  "properties": {"pod": {"type": "string"}, "namespace": {"type": "string"},
                                 "interface": _nullable({"type": "string", "example": "net0",
                                                         "description": "null: requested without "
                                                         "a name, not attached yet"}),
                                 "mac": _nullable({"type": "string",
                                                   "example": "02:00:00:00:00:0a"}),
                                 "node": _nullable({"type": "string", "description": "the pod's "
                                                    "node (spec.nodeName)"}),
                                 "attached": {"type": "boolean", "description": "Multus reported "
                                              "the interface (network-status); false: requested "
                                              "(networks annotation), not attached yet"},
                                 "vteps": {"type": "array", "items": _IP, "description":
                                           "the VTEPs announcing the MAC in the LAN's VNI"},
                                 "announced": {"type": "boolean", "description": "the MAC is in "
                                               "the VNI's MAC table"},
                                 "frozen": {"type": "boolean", "description": "the MAC is frozen "
                                            "by duplicate detection"}}},
    "Lan": {"type": "object",
            "required": ["namespace", "name", "link", "vni", "members", "converged"],
            "properties": {"namespace": {"type": "string"},
                           "name": {"type": "string", "description": "the "
                                    "NetworkAttachmentDefinition"},
                           "link": _nullable({"type": "string", "description": "Kathara's link "
                                              "(collision domain) name: the NAD's label `name`"}),
                           "vni": {"type": "integer", "minimum": 1, "maximum": MAX_VNI},
                           "members": {"type": "array", "items": _ref("LanMember")},
                           "converged": {"type": "boolean", "description": "every member "
                                         "attached and its MAC announced"},
                           "vni_owner": _OWNER,
                           "vni_claimed_by": {"type": "array", "items": _CLAIMANT,
                                              "description": "every namespace claiming the VNI, "
                                              "the owner first"},
                           "frozen_macs": {"type": "array", "items": {"type": "string"},
                                           "description": "MACs of the LAN's VNI frozen by "
                                           "duplicate detection (members' or not)"}}},
    "LanList": {"type": "object",
                "required": ["namespace", "watching", "synced", "converged", "lans"],
                "properties": {"namespace": _nullable({"type": "string"}),
                               "watching": {"type": "boolean", "description": "the reflector "
                                            "watches the Kubernetes API for LANs "
                                            "(--lans-from-k8s)"},
                               "synced": {"type": "boolean", "description": "NADs and pods have "
                                          "both been listed"},
                               "converged": {"type": "boolean", "description": "synced, and "
                                             "every LAN converged"},
                               "lans": {"type": "array", "items": _ref("Lan")}}},
    "MapLan": {"type": "object",
               "required": ["id", "namespace", "name", "link", "vni", "state", "missing",
                            "problems", "nodes", "vteps", "members", "frozen_macs",
                            "vni_shared_with"],
               "properties": {"id": {"type": "string", "description": "namespace/name"},
                              "namespace": {"type": "string"}, "name": {"type": "string"},
                              "link": _nullable({"type": "string"}),
                              "vni": {"type": "integer", "minimum": 1, "maximum": MAX_VNI},
                              "state": _MAP_STATE,
                              "missing": {**_INT, "description": "attachments and routes "
                                          "(members' MACs, hosting nodes' VTEPs) still awaited"},
                              "problems": {"type": "array", "items": {"type": "string"}},
                              "nodes": {"type": "array", "items": {"type": "string"},
                                        "description": "the nodes hosting a member"},
                              "vteps": {"type": "array", "items": _IP,
                                        "description": "the VNI's flood list at the reflector"},
                              "members": {"type": "array", "items": {"type": "object"}},
                              "frozen_macs": {"type": "array", "items": {"type": "string"},
                                              "description": "MACs frozen by duplicate detection"},
                              "vni_owner": _OWNER,
                              "vni_shared_with": {"type": "array", "items": {"type": "string"},
                                                  "description": "LANs of other namespaces this "
                                                  "one shares its VNI with: the owner's (this LAN "
                                                  "cannot attach), those claiming it too (one "
                                                  "wire), or, while nobody claims it, every other "
                                                  "namespace's LAN on it"}}},
    "LanMap": {"type": "object",
               "required": ["version", "namespace", "watching", "synced", "reflector",
                            "namespaces", "summary", "nodes", "devices", "lans"],
               "properties": {"version": {"type": "string", "description": "pass it back as "
                                          "`since` to wait for a change"},
                              "namespace": _nullable({"type": "string"}),
                              "watching": {"type": "boolean"}, "synced": {"type": "boolean"},
                              "reflector": {"type": "object"},
                              "namespaces": {"type": "array", "items": {"type": "object"}},
                              "summary": {"type": "object"},
                              "nodes": {"type": "array", "items": {"type": "object"}},
                              "devices": {"type": "array", "items": {"type": "object"}},
                              "lans": {"type": "array", "items": _ref("MapLan")},
                              "changed": {"type": "boolean", "description": "false (and "
                                          "nothing else but `version`): no change within "
                                          "`timeout`"}}},
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Ready": {"type": "object", "required": ["status", "reflector"],
              "properties": {"status": {"type": "string"},
                             "reflector": {"type": "object", "properties": {
                                 "router_id": {"type": "string"}, "version": {"type": "integer"}}}}},
}

_ERROR = {"content": {"application/json": {"schema": _ref("Error")}}}
_RESPONSES = {
    "BadRequest": {"description": "malformed VNI, MAC, address, parameter or body", **_ERROR},
    "Unauthorized": {"description": "missing or wrong bearer token", **_ERROR},
    "Forbidden": {"description": "the server has no API token: the calls that need one are "
                                 "refused", **_ERROR},
    "TooLarge": {"description": "the request body is larger than the server takes (64 KiB)",
                 **_ERROR},
    "NotFound": {"description": "unknown VNI, MAC or node", **_ERROR},
    "BadGateway": {"description": "the reflector failed to answer a request", **_ERROR},
    "Unavailable": {"description": "the reflector is not answering (or its BGP process failed)",
                    **_ERROR},
}
# gunicorn answers a request line over 4094 bytes (its limit_request_line) itself, in HTML,
# before the app sees it: a query string that long is no request of ours.
_LINE_TOO_LONG = {"414": {"description": "the request line is longer than 4094 bytes: refused by "
                                         "the HTTP server (gunicorn) before the API reads it",
                          "content": {"text/html": {"schema": {"type": "string"}}}}}
_UPSTREAM = {**_LINE_TOO_LONG, "502": _error("BadGateway"), "503": _error("Unavailable")}


_TOKEN = {"401": _error("Unauthorized"), "403": _error("Forbidden")}


def _get(summary: str, ok: dict, parameters=(), not_found: bool = False, bad: bool = True) -> dict:
    """A read of the cluster's data: it needs the token unless the operator opened reads."""
    responses = {"200": ok, **_TOKEN, **_UPSTREAM}
    if bad:
        responses["400"] = _error("BadRequest")
    if not_found:
        responses["404"] = _error("NotFound")
    return {"get": {"summary": summary, "security": [{"bearer": []}],
                    "parameters": list(parameters), "responses": responses}}


_MUTATING = {"400": _error("BadRequest"), **_TOKEN, "413": _error("TooLarge"), **_UPSTREAM}

DOCUMENT = {
    "openapi": "3.0.3",
    "info": {"title": "Megalos API", "version": "1.0.0",
             "description": "The route reflector's view of a Megalos cluster: VNIs (pod LANs), "
                            "their VTEPs and MAC tables, the BGP peers (nodes), the LANs of "
                            "Kathara labs with their pods, and a change log to wait on. "
                            "Reads need a bearer token unless the operator opened them "
                            "(MEGALOS_API_READS_NEED_TOKEN=0); POST and DELETE always do. "
                            "Errors are {\"error\", \"status\"}."},
    "paths": {
        "/api/v1/vnis": _get("Each VNI with its VTEP and MAC counts, by VNI",
                             _json("a page of VNIs", _ref("VniList")),
                             _params("limit", "vniCursor", "vtep", "node")),
        "/api/v1/vnis/{vni}": _get("A VNI's VTEPs and a page of its MAC table (by MAC, then VTEP)",
                                   _json("the VNI", _ref("VniDetail")),
                                   _params("vni", "limit", "macCursor", "vtep", "node"),
                                   not_found=True),
        "/api/v1/macs/{mac}": _get("Where a MAC is announced: one row per VNI and VTEP",
                                   _json("the MAC's locations", _ref("MacLocations")),
                                   _params("mac", "vniFilter", "vtep", "node"), not_found=True),
        "/api/v1/nodes": {
            **_get("The reflector's BGP peers", _json("the peers", _ref("NodeList")), bad=False),
            "post": {"summary": "Make an address a peer (a node) of the reflector",
                     "security": [{"bearer": []}],
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": _ref("NewNode")}}},
                     "responses": {
                         "201": {**_json("added", _ref("NodeAdded")),
                                 "headers": {"Location": {"schema": {"type": "string"}}}},
                         "200": {**_json("it was already a peer (its name is updated)",
                                         _ref("NodeAdded")),
                                 "headers": {"Location": {"schema": {"type": "string"}}}},
                         **_MUTATING}},
        },
        "/api/v1/nodes/{address}": {
            **_get("One peer", _json("the peer", _ref("Node")), _params("address"),
                   not_found=True),
            "delete": {"summary": "Remove a peer; its routes are withdrawn everywhere",
                       "security": [{"bearer": []}], "parameters": _params("address"),
                       "responses": {"204": {"description": "removed"},
                                     "404": _error("NotFound"), **_MUTATING}},
        },
        "/api/v1/lans": _get("The LANs (megalos NetworkAttachmentDefinitions) of a namespace, "
                             "with the pod interfaces on each and whether it has converged",
                             _json("the LANs", _ref("LanList")), _params("namespace")),
        "/api/v1/map": _get("The LAN map of a namespace (or of all): devices, LANs with a state, "
                            "nodes; with `since`, waits up to `timeout` s for another version",
                            _json("the map, or {version, changed: false} after the wait",
                                  {"oneOf": [_ref("LanMap"), {
                                      "type": "object", "required": ["version", "changed"],
                                      "properties": {"version": {"type": "string"},
                                                     "changed": {"type": "boolean"}}}]}),
                            _params("namespace", "mapSince", "timeout")),
        "/api/v1/events": _get("Changes after `since`, waiting up to `timeout` s for one",
                               _json("changes", _ref("Events")),
                               _params("since", "timeout", "limit", "vniFilter")),
        "/healthz": {"get": {"summary": "The API process serves",
                             "responses": {"200": _json("serving", _ref("Health")),
                                           **_LINE_TOO_LONG}}},
        "/readyz": {"get": {"summary": "The reflector answers",
                            "responses": {"200": _json("ready", _ref("Ready")),
                                          **_UPSTREAM}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (text format 0.0.4; OpenMetrics "
                                        "when the Accept header asks for it)",
                             "responses": {"200": {"description": "metrics", "content": {
                                 "text/plain": {"schema": {"type": "string"}},
                                 "application/openmetrics-text": {"schema": {"type": "string"}}}},
                                           **_LINE_TOO_LONG}}},
        "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {
            "200": _json("the OpenAPI document", {"type": "object"}), **_LINE_TOO_LONG}}},
    },
    "components": {
        "schemas": _SCHEMAS,
        "parameters": _PARAMETERS,
        "responses": _RESPONSES,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}


@bp.get("/api/v1/openapi.json")
def document():
    return jsonify(DOCUMENT)
