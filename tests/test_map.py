"""The LAN map without a browser: the document (api.mapview) from plain values, then the page and
GET /api/v1/map through the app (Flask's test client) in front of a real state socket and
ReflectorState (tests/test_api.py's reflector, its BGP process a stand-in): the long poll wakes on
MAC and VTEP changes, on pods coming and going and on BGP sessions, and reads need the token.
tests/test_map_browser.py drives the page itself in Chromium against the namespace cluster."""
from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from api import create_app
from api.mapview import CONVERGED, CONVERGING, TROUBLE, Sources, build, device_label
from api.mapwatch import MapWatcher
from bgp.protocol import ADD, DEL, MacRoute, VtepRoute
from lab.cluster import wait_until
from tests.test_api import TOKEN, StandInBgp, authorised, reflector  # noqa: F401 - a fixture

N1, N2 = "192.0.2.2", "192.0.2.3"
MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def member(pod, node, mac, interface="net0", namespace="lab1", attached=True, vteps=None):
    vteps = [] if vteps is None else vteps
    return {"pod": pod, "namespace": namespace, "interface": interface, "mac": mac, "node": node,
            "attached": attached, "vteps": vteps, "announced": bool(vteps)}


def lan(name, vni, members, namespace="lab1", link=None):
    return {"namespace": namespace, "name": name, "link": link, "vni": vni, "members": members,
            "converged": all(m["attached"] and m["announced"] for m in members)}


def sources(lans, peers=None, floods=None):
    peers = [{"address": N1, "name": "n1", "state": "Established"},
             {"address": N2, "name": "n2", "state": "Established"}] if peers is None else peers
    return Sources({"namespace": None, "watching": True, "synced": True, "lans": lans},
                   tuple(peers), floods if floods is not None else {100: (N1, N2)}, "0.0.2.1")


def two_node_lan(**overrides):
    members = [member("kathara-pc1-2ca953a5f3-93e59", "n1", MAC1, vteps=[N1]),
               member("kathara-r1-5b7d9c8f4-q2w3e", "n2", MAC2, vteps=[N2])]
    return lan("kathara-a", 100, members, link="A", **overrides)


# -- the document --------------------------------------------------------------------------------
@pytest.mark.parametrize("pod, label", [
    ("kathara-pc1-2ca953a5f3-93e59", "pc1"), ("kathara-r-1-b7d9c8f4-q2w3e", "r-1"),
    ("web-7d4b9c8f6d-x2k9p", "web"), ("kathara-solo", "kathara-solo"), ("pc1", "pc1")])
def test_device_labels_drop_the_deployment_suffixes_and_katharas_prefix(pod, label):
    assert device_label(pod) == label


def test_a_lan_whose_routes_are_all_held_has_converged():
    doc = build(sources([two_node_lan()]))
    (a,) = doc["lans"]
    assert (a["id"], a["state"], a["missing"], a["problems"]) == ("lab1/kathara-a", CONVERGED, 0, [])
    assert a["nodes"] == ["n1", "n2"] and a["vteps"] == [N1, N2] and a["link"] == "A"
    assert [d["label"] for d in doc["devices"]] == ["pc1", "r1"]
    pc1 = doc["devices"][0]
    assert pc1["node"] == "n1" and pc1["state"] == CONVERGED
    assert pc1["interfaces"] == [{"name": "net0", "mac": MAC1, "lan": "lab1/kathara-a",
                                  "attached": True, "announced": True, "vteps": [N1]}]
    assert [(n["id"], n["up"], n["devices"], n["lans"]) for n in doc["nodes"]] == [
        ("n1", True, [pc1["id"]], ["lab1/kathara-a"]),
        ("n2", True, [doc["devices"][1]["id"]], ["lab1/kathara-a"])]
    assert doc["summary"] == {"devices": 2, "interfaces": 2, "lans": 1, "nodes": 2,
                              CONVERGED: 1, CONVERGING: 0, TROUBLE: 0}
    assert doc["namespaces"] == [{"name": "lab1", "lans": 1, "devices": 2, "state": CONVERGED}]
    assert doc["reflector"] == {"router_id": "0.0.2.1"}


def test_a_lan_converging_counts_what_is_missing():
    members = [member("pc1", "n1", MAC1),                           # not announced
               member("pc2", "n1", None, interface=None, attached=False),  # not attached
               member("pc3", "n2", MAC2, vteps=[N1])]               # announced by n1, not n2
    doc = build(sources([lan("l", 100, members)], floods={100: (N1,)}))  # n2 sent no Type-3
    (a,) = doc["lans"]
    assert a["state"] == CONVERGING and a["missing"] == 4
    assert a["problems"] == [
        f"pc1 net0: MAC {MAC1} not announced",
        "pc2 (interface not named yet): not attached yet",
        f"pc3 net0: MAC {MAC2} announced by {N1}, not by its node's VTEP {N2}",
        f"node n2: VTEP {N2} not in the VNI's flood list"]
    assert {d["label"]: d["state"] for d in doc["devices"]} == {
        "pc1": CONVERGING, "pc2": CONVERGING, "pc3": CONVERGED}


def test_a_node_without_a_session_puts_its_lans_in_trouble():
    peers = [{"address": N1, "name": "n1", "state": "Established"},
             {"address": N2, "name": "n2", "state": "Active"}]
    doc = build(sources([two_node_lan()], peers=peers))
    assert doc["lans"][0]["state"] == TROUBLE
    assert doc["lans"][0]["problems"] == ["node n2: BGP session Active"]
    assert {n["id"]: n["up"] for n in doc["nodes"]} == {"n1": True, "n2": False}
    assert {d["label"]: d["state"] for d in doc["devices"]} == {"pc1": CONVERGED, "r1": TROUBLE}
    # A pod on a node the reflector does not peer with at all.
    stray = lan("b", 200, [member("pc9", "n9", MAC1, vteps=["192.0.2.9"])])
    doc = build(sources([stray], floods={200: ("192.0.2.9",)}))
    assert doc["lans"][0]["problems"] == ["node n9 is not a BGP peer of the reflector"]
    assert [(n["id"], n["address"], n["state"]) for n in doc["nodes"]][-1] == ("n9", None, "unknown")


def test_a_vni_in_two_namespaces_and_frozen_macs_are_trouble():
    other = lan("kathara-x", 100, [], namespace="lab2")
    same_ns = lan("alias", 100, [])  # the same namespace naming its own VNI twice: its choice
    doc = build(sources([two_node_lan(), other, same_ns]))
    states = {x["id"]: (x["state"], x["vni_shared_with"]) for x in doc["lans"]}
    assert states == {"lab1/kathara-a": (TROUBLE, ["lab2/kathara-x"]),
                      "lab2/kathara-x": (TROUBLE, ["lab1/kathara-a", "lab1/alias"]),
                      "lab1/alias": (TROUBLE, ["lab2/kathara-x"])}
    assert ("VNI 100 is also defined by lab2/kathara-x: the first namespace to attach a pod owns "
            "it") in doc["lans"][0]["problems"]
    # The fields issue 10's duplicate detection will fill: a member's `frozen`, a LAN's list.
    frozen = two_node_lan()
    frozen["members"][0]["frozen"] = True
    frozen["frozen_macs"] = [MAC2]
    (a,) = build(sources([frozen]))["lans"]
    assert a["state"] == TROUBLE and a["frozen_macs"] == [MAC1, MAC2]
    assert a["problems"] == [f"MAC {MAC1} frozen by duplicate detection",
                             f"MAC {MAC2} frozen by duplicate detection"]


def test_the_vni_s_claims_say_who_shares_it():
    """A VNI that lab1 owns: lab2's LAN on it cannot attach (trouble, naming the owner), lab1's
    is fine (lab2 is refused, not on the wire). A VNI claimed by both (a race): both in trouble."""
    def claimed(row, owner, *others):
        return {**row, "vni_owner": owner, "vni_claimed_by": [owner, *others]}
    ours = claimed(two_node_lan(), "lab1")
    theirs = claimed(lan("kathara-x", 100, [], namespace="lab2"), "lab1")
    doc = build(sources([ours, theirs]))
    got = {x["id"]: (x["state"], x["vni_owner"], x["vni_shared_with"], x["problems"])
           for x in doc["lans"]}
    assert got == {
        "lab1/kathara-a": (CONVERGED, "lab1", [], []),
        "lab2/kathara-x": (TROUBLE, "lab1", ["lab1/kathara-a"],
                           ["VNI 100 belongs to namespace lab1: this LAN's pods cannot attach"])}
    doc = build(sources([claimed(two_node_lan(), "lab1", "lab2"),
                         claimed(lan("kathara-x", 100, [], namespace="lab2"), "lab1", "lab2")]))
    a, x = doc["lans"]
    assert (a["state"], a["vni_shared_with"]) == (TROUBLE, ["lab2/kathara-x"])
    assert a["problems"] == ["VNI 100 is also claimed by lab2/kathara-x: two namespaces on one wire"]
    assert (x["state"], x["vni_shared_with"]) == (TROUBLE, ["lab1/kathara-a"])


def test_one_namespace_keeps_the_picker_of_all():
    lab2 = lan("kathara-b", 200, [member("kathara-pc7-2ca953a5f3-93e59", "n2", MAC2,
                                         namespace="lab2")], namespace="lab2")
    doc = build(sources([two_node_lan(), lab2], floods={100: (N1, N2)}), "lab2")
    assert doc["namespace"] == "lab2" and [x["id"] for x in doc["lans"]] == ["lab2/kathara-b"]
    assert [d["label"] for d in doc["devices"]] == ["pc7"]
    assert doc["lans"][0]["state"] == CONVERGING  # no flood entry from n2 for VNI 200
    assert [(n["name"], n["state"]) for n in doc["namespaces"]] == [("lab1", CONVERGED),
                                                                     ("lab2", CONVERGING)]
    assert {n["id"]: n["devices"] for n in doc["nodes"]} == {"n1": [], "n2": ["lab2/" + lab2[
        "members"][0]["pod"]]}


def test_the_version_follows_the_content():
    one, two = build(sources([two_node_lan()])), build(sources([two_node_lan()]))
    assert one["version"] == two["version"] and len(one["version"]) == 20
    moved = two_node_lan()
    moved["members"][1]["vteps"] = []
    moved["members"][1]["announced"] = False
    assert build(sources([moved]))["version"] != one["version"]
    assert build(sources([two_node_lan()]), "lab1")["version"] != one["version"]


# -- the app -------------------------------------------------------------------------------------
def nad(name, vni, namespace="lab1", link=None):
    config = json.dumps({"cniVersion": "0.3.0", "name": name, "type": "megalos", "vxlanId": vni})
    return {"metadata": {"name": name, "namespace": namespace, "labels": {"name": link or name}},
            "spec": {"config": config}}


def pod(name, mac, node="n1", network="lab1/kathara-a"):
    status = [{"name": network, "interface": "net0", "mac": mac, "dns": {}}]
    return {"metadata": {"name": name, "namespace": "lab1", "annotations": {
        "k8s.v1.cni.cncf.io/network-status": json.dumps(status)}},
        "spec": {"nodeName": node}, "status": {"phase": "Running"}}


@pytest.fixture
def lab(reflector):  # noqa: F811 - the fixture imported above
    """The reflector fixture's VNI 100 (VTEP 192.0.2.2, MAC 02:00:00:00:00:01) as LAN A of lab1,
    with pc1 on n1 (192.0.2.2, Established)."""
    reflector.state.name_node(N1, "n1")
    reflector.state.lan_reset("nads", [nad("kathara-a", 100, link="A")])
    reflector.state.lan_reset("pods", [pod("pc1", MAC1)])
    return reflector


@pytest.fixture
def client(lab):
    return authorised(create_app({"REFLECTOR_SOCKET": lab.socket, "API_TOKEN": TOKEN}))


def timed_get(client, url, **kw):
    started = time.monotonic()
    reply = client.get(url, **kw)
    return reply, time.monotonic() - started


def test_the_page_and_its_files_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert b'<script src="/map/map.js">' in page.data
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    script = client.get("/map/map.js")
    assert script.status_code == 200 and script.mimetype in ("text/javascript",
                                                             "application/javascript")
    assert client.get("/map/map.css").mimetype == "text/css"
    missing = client.get("/map/secret.py")
    assert missing.status_code == 404 and missing.json["status"] == 404
    assert client.get("/map/../app.py").status_code == 404


def test_the_map_of_a_lab(client):
    doc = client.get("/api/v1/map").json
    assert doc["watching"] and doc["synced"]
    assert [(x["id"], x["state"], x["vteps"]) for x in doc["lans"]] == [
        ("lab1/kathara-a", CONVERGED, [N1])]
    assert [(n["id"], n["state"], n["devices"]) for n in doc["nodes"]] == [
        ("n1", "Established", ["lab1/pc1"])]
    assert client.get("/api/v1/map?namespace=lab1").json["lans"] == doc["lans"]
    assert client.get("/api/v1/map?namespace=other").json["lans"] == []
    assert client.get("/api/v1/map?namespace=Bad_NS").status_code == 400
    assert client.get("/api/v1/map?since=zz&timeout=1").status_code == 400


def test_the_long_poll_times_out_unchanged(client):
    version = client.get("/api/v1/map").json["version"]
    reply, took = timed_get(client, f"/api/v1/map?since={version}&timeout=0.6")
    assert reply.json == {"version": version, "changed": False} and 0.5 < took < 5
    reply, took = timed_get(client, "/api/v1/map?since=0123&timeout=5")  # another version: at once
    assert reply.json["version"] == version and took < 2


def later(seconds, action):
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


@pytest.mark.parametrize("change, expect", [
    # a MAC announced (in the change log): pc2's LAN converges
    ("mac", lambda doc: doc["lans"][0]["state"] == CONVERGED and len(doc["devices"]) == 2),
    # a pod deleted (not in the change log: the watcher reads the LAN table again)
    ("pod", lambda doc: doc["devices"] == []),
    # n1's BGP session drops (not in the change log either)
    ("peer", lambda doc: doc["lans"][0]["state"] == TROUBLE and not doc["nodes"][0]["up"]),
    # n1's VTEP leaves the VNI's flood list (a VTEP change of the change log)
    ("flood", lambda doc: doc["lans"][0]["vteps"] == [] and doc["lans"][0]["missing"] == 1),
])
def test_the_long_poll_answers_within_a_second_of_a_change(client, lab, change, expect):
    if change == "mac":
        lab.state.lan_event("pods", "ADDED", pod("pc2", MAC2))
    version = client.get("/api/v1/map").json["version"]
    actions = {
        "mac": lambda: lab.state.apply(MacRoute(ADD, 100, MAC2, N1)),
        "pod": lambda: lab.state.lan_event("pods", "DELETED", pod("pc1", MAC1)),
        "peer": lambda: lab.bgp.peers.update(
            {N1: dataclasses.replace(lab.bgp.peers[N1], state="Active", uptime=None)}),
        "flood": lambda: lab.state.apply(VtepRoute(DEL, 100, N1)),
    }
    timer = later(0.3, actions[change])
    reply, took = timed_get(client, f"/api/v1/map?since={version}&timeout=10")
    timer.join()
    doc = reply.json
    assert doc["version"] != version and expect(doc), doc
    assert took < 0.3 + 1.0, took  # POLL (0.5 s) plus one read, with room for a loaded machine


def test_reads_need_the_token_and_the_page_stays_open(lab):
    client = create_app({"REFLECTOR_SOCKET": lab.socket, "API_TOKEN": TOKEN}).test_client()
    assert client.get("/").status_code == 200 and client.get("/map/map.js").status_code == 200
    assert client.get("/api/v1/openapi.json").status_code == 200
    for path in ("/api/v1/map", "/api/v1/vnis", "/api/v1/lans", "/api/v1/nodes"):
        refused = client.get(path)
        assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers, path
        assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    from api import settings
    assert settings.from_env({"MEGALOS_API_READS_NEED_TOKEN": "1"})["READS_NEED_TOKEN"] is True
    with pytest.raises(settings.SettingsError):
        settings.from_env({"MEGALOS_API_READS_NEED_TOKEN": "maybe"})


def test_a_reflector_that_is_not_there_gives_503():
    client = authorised(create_app({"REFLECTOR_SOCKET": "/nonexistent/megalos.sock",
                                    "API_TOKEN": TOKEN, "REFLECTOR_TIMEOUT": 0.5}))
    reply = client.get("/api/v1/map")
    assert reply.status_code == 503 and "not answering" in reply.json["error"]


def test_the_watcher_sleeps_when_nobody_asks_and_wakes_fresh(lab):
    from reflector.protocol import StateClient
    watcher = MapWatcher(StateClient(lab.socket), poll=0.1, idle=0.3)
    first, generation = watcher.current(5)
    assert first.lans["lans"][0]["members"][0]["pod"] == "pc1"
    wait_until(lambda: watcher._thread is None, timeout=5, what="the idle watcher to stop")
    lab.state.lan_event("pods", "DELETED", pod("pc1", MAC1))
    again, _ = watcher.current(5)  # a fresh read, not the stale one
    assert again.lans["lans"][0]["members"] == []
    assert watcher._thread is not None
