"""/healthz (the process serves), /readyz (the reflector answers) and /metrics (Prometheus)."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from api.metrics import gauge
from api.state import reflector
from reflector.protocol import ReflectorError, ReflectorUnavailable

bp = Blueprint("health", __name__)
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    hello = reflector().call("hello")  # ReflectorUnavailable -> 503 through the error handlers
    return jsonify(status="ready", reflector={"router_id": hello.get("router_id"),
                                              "version": hello.get("version")})


@bp.get("/metrics")
def metrics():
    """Always 200: a reflector that does not answer is megalos_reflector_up 0, not a failed scrape."""
    try:
        totals, peers = reflector().call("totals"), reflector().call("peers")
        up = 1
    except (ReflectorUnavailable, ReflectorError):
        totals, peers, up = None, [], 0
    lines = gauge("megalos_reflector_up", "Whether the reflector answers on its state socket.",
                  [({}, up)])
    if totals is not None:
        established = [p for p in peers if p.get("state") == "Established"]
        lines += gauge("megalos_bgp_peers", "BGP peers (nodes) configured on the reflector.",
                       [({}, len(peers))])
        lines += gauge("megalos_bgp_peers_established", "BGP peers in state Established.",
                       [({}, len(established))])
        lines += gauge("megalos_bgp_routes", "EVPN routes the reflector holds from its peers.",
                       [({}, sum(p.get("received") or 0 for p in peers))])
        lines += gauge("megalos_bgp_routes_received", "EVPN routes held from each peer.",
                       [({"peer": p["address"]}, p.get("received") or 0) for p in peers])
        lines += gauge("megalos_bgp_routes_sent", "EVPN routes advertised to each peer.",
                       [({"peer": p["address"]}, p.get("sent") or 0) for p in peers])
        lines += gauge("megalos_vnis", "VNIs (LANs) known to the reflector.", [({}, totals["vnis"])])
        lines += gauge("megalos_vteps", "Distinct VTEPs hosting at least one VNI.",
                       [({}, totals["vteps"])])
        lines += gauge("megalos_macs", "MAC addresses announced, counted once per VNI.",
                       [({}, totals["macs"])])
        lines += ["# HELP megalos_state_changes_total Changes in the reflector's change log.",
                  "# TYPE megalos_state_changes_total counter",
                  f"megalos_state_changes_total {totals['seq']}"]
    lines += current_app.extensions["megalos.metrics"].exposition()
    return Response("\n".join(lines) + "\n", mimetype=None, content_type=PROMETHEUS_TEXT)
