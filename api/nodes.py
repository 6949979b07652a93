"""/api/v1/nodes: the reflector's BGP peers (the nodes); adding and removing one needs the token."""
from __future__ import annotations

from flask import Blueprint, jsonify, url_for

from api import params
from api.auth import token_required
from api.errors import ApiError, read_body
from api.state import reflector

bp = Blueprint("nodes", __name__, url_prefix="/api/v1/nodes")


@bp.get("")
def list_nodes():
    """Peers: address, name, BGP state, uptime (s), routes received and sent."""
    return jsonify(nodes=reflector().call("peers"))


@bp.get("/<address>")
def show_node(address: str):
    address = params.address(address)
    for peer in reflector().call("peers"):
        if peer["address"] == address:
            return jsonify(peer)
    raise ApiError(404, f"{address} is not a peer of the reflector")


@bp.post("")
@token_required
def add_node():
    """{"address": ip, "name": optional node name}: 201 if added, 200 if it was already a peer."""
    body = params.json_body(read_body())
    if not isinstance(body, dict) or "address" not in body:
        raise ApiError(400, 'the body must be a JSON object {"address": "<ip>"} '
                            '(and optionally "name")')
    unknown = set(body) - {"address", "name"}
    if unknown:
        raise ApiError(400, f"unknown fields: {', '.join(sorted(unknown))}")
    node = {"address": params.address(body["address"])}
    if "name" in body:
        node["name"] = params.node_name(body["name"])
    added = reflector().call("peer_add", **node)
    response = jsonify(address=node["address"], name=node.get("name"), added=bool(added))
    response.status_code = 201 if added else 200
    response.headers["Location"] = url_for("nodes.show_node", address=node["address"])
    return response


@bp.delete("/<address>")
@token_required
def remove_node(address: str):
    """204 once removed (its routes are withdrawn everywhere); 404 if it was not a peer."""
    address = params.address(address)
    if not reflector().call("peer_del", address=address):
        raise ApiError(404, f"{address} is not a peer of the reflector")
    return "", 204
