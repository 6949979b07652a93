"""/api/v1/macs/{mac}: where a MAC is announced (a MAC on two nodes gives two rows)."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from api import params
from api.errors import ApiError
from api.state import reflector

bp = Blueprint("macs", __name__, url_prefix="/api/v1/macs")


@bp.get("/<mac>")
def show_mac(mac: str):
    mac = params.mac(mac)
    query = params.vtep_filter(request.args)
    if request.args.get("vni") is not None:
        query["vni"] = params.vni(request.args["vni"])
    rows = reflector().call("mac", mac=mac, **query)
    if not rows:
        scope = " with these filters" if query else ""
        raise ApiError(404, f"MAC {mac} is not announced{scope}")
    return jsonify(mac=mac, locations=rows)
