"""The LAN map's document: what the page (api/static/map) draws, folded from what the reflector
knows. Pure: plain values in (the state socket's `lans` and `peers` results and the VNIs' flood
lists), plain values out; api.mapwatch reads them, api.maps serves the result.

A LAN's state, from what the reflector holds (it cannot see the nodes' forwarding tables, but a
node Established with it receives every route it holds):

- **trouble**: a node hosting one of its members has no Established BGP session with the
  reflector (or is no peer of it at all); a MAC of it is frozen by duplicate detection; its VNI
  belongs to another namespace (base.tenancy: this LAN's pods cannot attach), or is claimed by
  another namespace too (two labs on one wire, after a race), or, while nobody claims it yet, is
  also defined by a LAN of another namespace (the first to attach a pod will own it);
- **converging**, with `missing` = the routes and attachments still awaited: a member Multus has
  not attached yet, a member's MAC not announced (or announced only by another node's VTEP), a
  hosting node's VTEP not in the VNI's flood list (no Type-3 from it yet);
- **converged**: none of those.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field

from base.tenancy import device_name

CONVERGED, CONVERGING, TROUBLE = "converged", "converging", "trouble"
_RANK = {CONVERGED: 0, CONVERGING: 1, TROUBLE: 2}
ESTABLISHED = "Established"
# Kathara names a device's Deployment kathara-<device> (Kathara 3.8:
# KubernetesMachine.get_deployment_name).
_KATHARA_PREFIX = "kathara-"


@dataclass(frozen=True)
class Sources:
    """What the map is made of, as api.mapwatch last read it."""
    lans: dict                               # the `lans` op's result, every namespace
    peers: tuple = ()                        # ({address, name, state}, ...) of the `peers` op
    floods: dict = field(default_factory=dict)  # vni -> (VTEP address, ...): the VNI's Type-3s
    router_id: str | None = None


def worst(states) -> str:
    return max(states, key=_RANK.__getitem__, default=CONVERGED)


def device_label(pod: str) -> str:
    """kathara-pc1-2ca953a5f3-93e59 -> pc1: a Deployment's pod without the ReplicaSet and pod
    suffixes and Kathara's prefix; any other name as it is."""
    base = device_name(pod)
    return base[len(_KATHARA_PREFIX):] if base.startswith(_KATHARA_PREFIX) and base != pod else base


def lan_id(lan: dict) -> str:
    return f"{lan['namespace']}/{lan['name']}"


def device_id(member: dict) -> str:
    return f"{member['namespace']}/{member['pod']}"


class _Nodes:
    """Nodes by name (the pods' spec.nodeName, the peers' names) or, for unnamed peers, address."""

    def __init__(self, peers):
        self.rows: dict[str, dict] = {}
        for peer in sorted(peers, key=lambda p: (p.get("name") or p["address"])):
            node_id = peer.get("name") or peer["address"]
            self.rows[node_id] = {"id": node_id, "name": peer.get("name"),
                                  "address": peer["address"], "state": peer["state"],
                                  "up": peer["state"] == ESTABLISHED, "devices": [], "lans": []}

    def get(self, name: str) -> dict:
        """The node a pod runs on; one the reflector does not peer with is `unknown`."""
        if name not in self.rows:
            self.rows[name] = {"id": name, "name": name, "address": None, "state": "unknown",
                               "up": False, "devices": [], "lans": []}
        return self.rows[name]

    def problem(self, name: str) -> str | None:
        node = self.rows[name]
        if node["address"] is None:
            return f"node {name} is not a BGP peer of the reflector"
        if not node["up"]:
            return f"node {name}: BGP session {node['state']}"
        return None


def _lan_state(lan: dict, nodes: _Nodes, flood: tuple, shared: list[str]) -> dict:
    """One LAN of the map: its members, hosting nodes, state, what is missing and why."""
    problems, trouble, missing = [], False, 0
    hosting = sorted({m["node"] for m in lan["members"] if m.get("node")})
    for name in hosting:
        why = nodes.problem(name)
        if why:
            problems.append(why)
            trouble = True
    frozen = sorted({*(lan.get("frozen_macs") or ()),
                     *(m["mac"] for m in lan["members"] if m.get("frozen") and m.get("mac"))})
    for mac in frozen:
        problems.append(f"MAC {mac} frozen by duplicate detection")
        trouble = True
    owner = lan.get("vni_owner")
    if owner is not None and owner != lan["namespace"]:
        problems.append(f"VNI {lan['vni']} belongs to {_namespace(owner)}: this LAN's pods "
                        "cannot attach")
        trouble = True
    elif shared:
        why = ("two namespaces on one wire" if owner is not None
               else "the first namespace to attach a pod owns it")
        problems += [f"VNI {lan['vni']} is also {'claimed' if owner else 'defined'} by {other}: {why}"
                     for other in shared]
        trouble = True
    for m in lan["members"]:
        who = f"{device_label(m['pod'])} {m.get('interface') or '(interface not named yet)'}"
        address = nodes.rows[m["node"]]["address"] if m.get("node") else None
        if not m["attached"]:
            problems.append(f"{who}: not attached yet")
        elif not m.get("mac"):
            problems.append(f"{who}: Multus reported no MAC")
        elif not m["announced"]:
            problems.append(f"{who}: MAC {m['mac']} not announced")
        elif address and address not in m["vteps"]:
            problems.append(f"{who}: MAC {m['mac']} announced by {', '.join(m['vteps'])}, "
                            f"not by its node's VTEP {address}")
        else:
            continue
        missing += 1
    for name in hosting:
        address = nodes.rows[name]["address"]
        if address and address not in flood:
            problems.append(f"node {name}: VTEP {address} not in the VNI's flood list")
            missing += 1
    state = TROUBLE if trouble else CONVERGING if missing else CONVERGED
    return {"id": lan_id(lan), "namespace": lan["namespace"], "name": lan["name"],
            "link": lan.get("link"), "vni": lan["vni"], "state": state, "missing": missing,
            "problems": problems, "nodes": hosting, "vteps": list(flood),
            "members": [{"device": device_id(m), "interface": m.get("interface"),
                         "mac": m.get("mac")} for m in lan["members"]],
            "frozen_macs": frozen, "vni_owner": owner, "vni_shared_with": shared}


def _namespace(name: str) -> str:
    return f"namespace {name}" if name else "the unnamed namespace"


def _shared_vnis(lans: list[dict]) -> dict[str, list[str]]:
    """LAN id -> the LANs of other namespaces this LAN shares its VNI with, as the VNI's claims
    say (reflector.lanview: `vni_owner`, `vni_claimed_by`): the owner's LANs for a LAN of
    another namespace (it cannot attach); for the owner's, the LANs of the namespaces that claim
    the VNI too (on one wire with it; a namespace merely defining the VNI is refused its ADDs);
    while nobody claims the VNI, every other namespace's LAN on it (Kathara's VNIs are unique
    cluster-wide: the first to attach a pod owns the VNI)."""
    by_vni = defaultdict(list)
    for lan in lans:
        by_vni[lan["vni"]].append(lan)
    shared = {}
    for same in by_vni.values():
        for lan in same:
            owner, claimed = lan.get("vni_owner"), set(lan.get("vni_claimed_by") or ())
            if owner is None:
                peers = [o for o in same if o["namespace"] != lan["namespace"]]
            elif owner == lan["namespace"]:
                peers = [o for o in same if o["namespace"] != owner and o["namespace"] in claimed]
            else:
                peers = [o for o in same if o["namespace"] == owner]
            shared[lan_id(lan)] = [lan_id(o) for o in peers]
    return shared


def build(sources: Sources, namespace: str | None = None) -> dict:
    """The map of one namespace (a Kathara lab), or of every namespace when None."""
    every = sources.lans.get("lans") or []
    shared = _shared_vnis(every)
    nodes = _Nodes(sources.peers)
    for lan in every:
        for m in lan["members"]:
            if m.get("node"):
                nodes.get(m["node"])
    all_lans = [_lan_state(lan, nodes, tuple(sources.floods.get(lan["vni"], ())), shared[lan_id(lan)])
                for lan in every]
    chosen = [(raw, lan) for raw, lan in zip(every, all_lans)
              if namespace is None or lan["namespace"] == namespace]

    devices: dict[str, dict] = {}
    for raw, lan in chosen:
        for m in raw["members"]:
            key = device_id(m)
            device = devices.setdefault(key, {
                "id": key, "namespace": m["namespace"], "pod": m["pod"],
                "label": device_label(m["pod"]), "node": m.get("node"), "interfaces": []})
            device["interfaces"].append({
                "name": m.get("interface"), "mac": m.get("mac"), "lan": lan["id"],
                "attached": m["attached"], "announced": m["announced"], "vteps": m["vteps"]})
    for device in devices.values():
        device["interfaces"].sort(key=lambda i: (i["name"] is None, i["name"] or "", i["lan"]))
        node = nodes.rows.get(device["node"]) if device["node"] else None
        pending = any(not (i["attached"] and i["announced"]) for i in device["interfaces"])
        device["state"] = (TROUBLE if node is not None and not node["up"]
                           else CONVERGING if pending or node is None else CONVERGED)
        if node is not None:
            node["devices"].append(device["id"])
    for _, lan in chosen:
        for name in lan["nodes"]:
            nodes.rows[name]["lans"].append(lan["id"])

    lans = [lan for _, lan in chosen]
    counts = {state: sum(1 for lan in lans if lan["state"] == state)
              for state in (CONVERGED, CONVERGING, TROUBLE)}
    doc = {
        "namespace": namespace,
        "watching": bool(sources.lans.get("watching")),
        "synced": bool(sources.lans.get("synced")),
        "reflector": {"router_id": sources.router_id},
        "namespaces": _namespaces(all_lans, every),
        "summary": {"devices": len(devices),
                    "interfaces": sum(len(d["interfaces"]) for d in devices.values()),
                    "lans": len(lans), "nodes": len(nodes.rows), **counts},
        "nodes": sorted(nodes.rows.values(), key=lambda n: n["id"]),
        "devices": sorted(devices.values(), key=lambda d: d["id"]),
        "lans": lans,
    }
    doc["version"] = version(doc)
    return doc


def _namespaces(lans: list[dict], raw: list[dict]) -> list[dict]:
    """Every namespace with LANs, for the page's picker: its LAN and device counts, worst state."""
    rows: dict[str, dict] = {}
    for lan, source in zip(lans, raw):
        row = rows.setdefault(lan["namespace"], {"name": lan["namespace"], "lans": 0,
                                                 "devices": set(), "state": CONVERGED})
        row["lans"] += 1
        row["devices"].update(device_id(m) for m in source["members"])
        row["state"] = worst((row["state"], lan["state"]))
    return [{**row, "devices": len(row["devices"])} for _, row in sorted(rows.items())]


def version(doc: dict) -> str:
    """A digest of the document (without its own version): equal documents, equal versions,
    whichever worker built them."""
    body = {k: v for k, v in doc.items() if k != "version"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()
