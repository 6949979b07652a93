"""/api/v1/vnis: the LANs (VNIs) the reflector knows, with their VTEPs and MAC tables."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from api import params
from api.state import reflector

bp = Blueprint("vnis", __name__, url_prefix="/api/v1/vnis")


def _page(args) -> dict:
    config = current_app.config
    return {"limit": params.limit(args.get("limit"), config["PAGE_LIMIT"], config["MAX_PAGE_LIMIT"]),
            "cursor": params.cursor(args.get("cursor")), **params.vtep_filter(args)}


@bp.get("")
def list_vnis():
    """Each VNI with its VTEP count and MAC count, by VNI; filters: vtep=, node=."""
    return jsonify(reflector().call("vnis", **_page(request.args)))


@bp.get("/<vni>")
def show_vni(vni: str):
    """A VNI's VTEPs (address and node name) and a page of its MAC table; filters: vtep=, node=.
    The reflector's JSON is passed through as it is: a 1000-row page is not decoded and encoded
    again here (see docs/benchmarks.md, API)."""
    table = reflector().call_raw("vni", vni=params.vni(vni), **_page(request.args))
    return Response(table + b"\n", content_type="application/json")
