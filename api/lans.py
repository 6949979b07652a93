"""/api/v1/lans: the LANs (megalos NetworkAttachmentDefinitions) of a namespace (a Kathara lab),
each with the pod interfaces on it and whether the reflector has all of their MACs."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from api import params
from api.state import reflector

bp = Blueprint("lans", __name__, url_prefix="/api/v1/lans")


@bp.get("")
def list_lans():
    """Filter: namespace= (every namespace without it). `watching` is false when the reflector
    does not watch the Kubernetes API for LANs (then `lans` is empty)."""
    query = {}
    if request.args.get("namespace") is not None:
        query["namespace"] = params.namespace(request.args["namespace"])
    return jsonify(reflector().call("lans", **query))
