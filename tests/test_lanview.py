"""The LAN view (reflector.lanview): NADs and pods' Multus annotations parsed with plain values,
members and convergence against a MAC table, then the reflector's LAN watcher
(reflector.discovery.LanWatcher) against an API server speaking the Kubernetes protocol (kmock's
emulator, lab.multus.ApiServerEmulator), feeding a ReflectorState as in the reflector."""
from __future__ import annotations

import json

import pytest

from base.bounded_json import BadJson
from bgp.protocol import MacRoute
from lab.cluster import wait_until
from base.tenancy import VniClaim
from reflector.lanview import (
    NETWORK_STATUS_ANNOTATION, NETWORKS_ANNOTATION, OLD_NETWORK_STATUS_ANNOTATION, Attachment,
    LanDefinition, LanTable, Member, PodLans, Request, lan_view, nad_lan, network_requests,
    network_status, pod_lans, pod_members)
from reflector.state import ReflectorState

NS = "lab1"
MAC_A, MAC_B = "02:00:00:00:0a:01", "02:00:00:00:0a:02"


def nad(name: str, config, namespace: str = NS, link: str | None = None) -> dict:
    labels = {"app": "kathara", **({"name": link} if link else {})}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                         "resourceVersion": "1"},
            "spec": {"config": config if isinstance(config, str) else json.dumps(config)}}


def megalos(vni, **extra) -> dict:
    return {"cniVersion": "0.3.0", "name": "a", "type": "megalos", "vxlanId": vni, **extra}


def pod(name: str, node: str = "n1", *, status: list | None = None, networks=None,
        namespace: str = NS, phase: str = "Running", old_status: bool = False) -> dict:
    annotations = {}
    if networks is not None:
        annotations[NETWORKS_ANNOTATION] = networks if isinstance(networks, str) \
            else json.dumps(networks)
    if status is not None:
        key = OLD_NETWORK_STATUS_ANNOTATION if old_status else NETWORK_STATUS_ANNOTATION
        annotations[key] = json.dumps(status)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations,
                         "resourceVersion": "1", "uid": f"uid-{name}"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": phase}}


def primary() -> dict:
    """The primary network's entry, as Multus writes it first."""
    return {"name": "cbr0", "interface": "eth0", "ips": ["10.244.1.5"], "mac": "0a:58:0a:f4:01:05",
            "default": True, "dns": {}}


def status(network: str, interface: str, mac: str) -> dict:
    return {"name": network, "interface": interface, "mac": mac, "dns": {}}


# -- NADs ----------------------------------------------------------------------------------------
def test_a_kathara_nad_is_a_lan_with_its_link_name():
    from lab.multus import kathara_lab
    lab = kathara_lab('pc1[0]="A"\npc2[0]="A"\n')
    definition = lab.nads["A"]
    lan = nad_lan(definition)
    assert lan == LanDefinition(lab.namespace, "kathara-a",
                                json.loads(definition["spec"]["config"])["vxlanId"], "A")
    assert lan.network == f"{lab.namespace}/kathara-a"


@pytest.mark.parametrize("config, vni", [
    (megalos(7), 7),
    ({"cniVersion": "1.0.0", "name": "l", "plugins": [{"type": "tuning"}, megalos(9)]}, 9),
    (megalos(2 ** 24 - 1), 2 ** 24 - 1),
])
def test_megalos_nads(config, vni):
    assert nad_lan(nad("l", config, link="L")).vni == vni


@pytest.mark.parametrize("config", [
    {"cniVersion": "0.3.1", "name": "m", "type": "macvlan", "master": "eth0"},
    megalos(0), megalos(2 ** 24), megalos("7"), megalos(True), {"type": "megalos"},
    "", " ", {"plugins": "x"},
])
def test_other_or_broken_nads_are_no_lan(config):
    assert nad_lan(nad("x", config)) is None


DEEP = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on it


@pytest.mark.parametrize("config, message", [
    ("not json", "spec.config is not valid JSON"),
    ('{"type": "megalos", "vxlanId": 7, "x": %s}' % DEEP, "spec.config nests"),
    ('{"type": "megalos", "vxlanId": 7, "x": "%s"}' % ("a" * (1 << 20)), "spec.config is larger"),
])
def test_a_nad_whose_config_is_not_json_within_bounds_is_bad_json(config, message):
    with pytest.raises(BadJson, match=message):
        nad_lan(nad("x", config))


# -- pods ----------------------------------------------------------------------------------------
def test_network_status_skips_the_primary_network_and_normalises():
    p = pod("p", status=[primary(), status(f"{NS}/lan-a", "net0", MAC_A.upper()),
                         status("lan-b", "net1", MAC_B.replace(":", "-")),  # no namespace
                         {"name": f"{NS}/no-iface", "mac": MAC_A}])
    assert network_status(p) == [Attachment(f"{NS}/lan-a", "net0", MAC_A),
                                 Attachment(f"{NS}/lan-b", "net1", MAC_B)]


def test_network_status_of_older_multus_and_malformed_ones():
    assert network_status(pod("p", status=[status("x/l", "net0", MAC_A)], old_status=True)) == \
        [Attachment("x/l", "net0", MAC_A)]
    broken = pod("p")
    broken["metadata"]["annotations"][NETWORK_STATUS_ANNOTATION] = "{not json"
    with pytest.raises(BadJson, match="network-status is not valid JSON"):
        network_status(broken)
    assert network_status({}) == []
    

def test_network_requests_in_both_forms():
    kathara = [{"name": "kathara-a", "namespace": NS, "interface": "net0", "kathara.link": "A",
                "mac": "02:00:00:00:0A:01"}, {"name": "kathara-b", "interface": "net1"}]
    assert network_requests(pod("p", networks=kathara)) == [
        Request(f"{NS}/kathara-a", "net0", MAC_A), Request(f"{NS}/kathara-b", "net1", None)]
    assert network_requests(pod("p", networks="other/lan-a@eth7, lan-b")) == [
        Request("other/lan-a", "eth7", None), Request(f"{NS}/lan-b", None, None)]
    with pytest.raises(BadJson, match="networks is not valid JSON"):
        network_requests(pod("p", networks="[{broken"))
    assert network_requests(pod("p")) == []


def hostile(name: str, key: str, value: str) -> dict:
    """A pod whose author wrote `value` into a Multus annotation."""
    p = pod(name, status=[status(f"{NS}/lan-a", "net0", MAC_B)])
    p["metadata"]["annotations"][key] = value
    return p


@pytest.mark.parametrize("key, value, message", [
    (NETWORKS_ANNOTATION, DEEP, "networks nests arrays and objects more than 64 deep"),
    (NETWORK_STATUS_ANNOTATION, DEEP, "network-status nests"),
    (OLD_NETWORK_STATUS_ANNOTATION, "[" + DEEP, "networks-status nests"),
    (NETWORKS_ANNOTATION, json.dumps([{"name": "x" * 300_000}]), "networks is larger"),
    (NETWORKS_ANNOTATION, "lan-a," * 50_000, "networks is larger"),
])
def test_a_pod_whose_annotations_are_not_json_within_bounds_is_bad_json(key, value, message):
    victim = hostile("p", key, value)
    if key == OLD_NETWORK_STATUS_ANNOTATION:
        del victim["metadata"]["annotations"][NETWORK_STATUS_ANNOTATION]
    with pytest.raises(BadJson, match=message):
        pod_lans(victim)


def test_one_hostile_pod_or_nad_does_not_stop_the_lan_view_from_syncing(caplog):
    """Before: json.loads raised RecursionError on the first such pod, the table's reset ended
    there, and the view never said `synced` (nor listed the pods after it)."""
    state = ReflectorState()
    state.lan_reset("nads", [nad("lan-a", megalos(100), link="A"),
                             nad("evil", '{"type": "megalos", "vxlanId": 5, "x": %s}' % DEEP)])
    many = [hostile(f"evil-{i}", NETWORKS_ANNOTATION, DEEP) for i in range(50)]
    state.lan_reset("pods", [*many, pod("p1", status=[status(f"{NS}/lan-a", "net0", MAC_A)])])
    view = state.lans(NS)
    assert view["synced"] and [lan["name"] for lan in view["lans"]] == ["lan-a"]
    assert [m["pod"] for m in view["lans"][0]["members"]] == ["p1"]
    # A pod that was fine and turns hostile leaves the view; it comes back once it is fine again.
    state.lan_event("pods", "MODIFIED", hostile("p1", NETWORK_STATUS_ANNOTATION, DEEP))
    assert state.lans(NS)["lans"][0]["members"] == []
    state.lan_event("pods", "MODIFIED", pod("p1", status=[status(f"{NS}/lan-a", "net0", MAC_A)]))
    assert len(state.lans(NS)["lans"][0]["members"]) == 1
    # Logged at a bounded rate: one line for the NAD, one for the 51 pods (the rest held back).
    lines = [r.getMessage() for r in caplog.records if "LAN view" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "nad lab1/evil left out: spec.config nests" in lines[0]
    assert "pod lab1/evil-0 left out" in lines[1]


def test_pods_without_secondary_networks_or_ended_are_left_out():
    assert pod_lans(pod("p")) is None
    assert pod_lans(pod("p", status=[primary()])) is None
    done = pod("p", status=[status("x/l", "net0", MAC_A)], phase="Succeeded")
    assert pod_lans(done) is None
    assert pod_lans(pod("p", node="n7", networks="l")) == PodLans(
        NS, "p", "n7", (), (Request(f"{NS}/l", None, None),))


def test_members_are_attached_interfaces_then_requested_ones_not_attached_yet():
    net = f"{NS}/l"
    attached = PodLans(NS, "p", "n1", (Attachment(net, "net0", MAC_A), Attachment(net, "net3", "")),
                       (Request(net, "net0", MAC_A), Request(net, "net1", MAC_B),
                        Request(net, None, None), Request(net, None, None),
                        Request("x/other", "net9", None)))
    members = pod_members(attached, net)
    assert members == [
        Member(NS, "p", "net0", MAC_A, "n1", True),
        Member(NS, "p", "net3", None, "n1", True),    # attached: stands for one unnamed request
        Member(NS, "p", "net1", MAC_B, "n1", False),  # asked for by name, not there yet
        Member(NS, "p", None, None, "n1", False)]     # the second unnamed request


# -- the view ------------------------------------------------------------------------------------
def test_a_lan_converges_when_every_member_is_attached_and_announced():
    lan = LanDefinition(NS, "kathara-a", 100, "A")
    table = {(100, MAC_A): ["192.0.2.2"], (100, MAC_B): ["192.0.2.3", "192.0.2.4"]}

    def announced(vni, mac):
        return table.get((vni, mac), [])
    members = [Member(NS, "b", "net0", MAC_B, "n2", True),
               Member(NS, "a", "net0", MAC_A, "n1", True)]
    view = lan_view(lan, members, announced)
    assert view == {"namespace": NS, "name": "kathara-a", "link": "A", "vni": 100,
                    "converged": True, "vni_owner": None, "vni_claimed_by": [],
                    "members": [
                        {"pod": "a", "namespace": NS, "interface": "net0", "mac": MAC_A,
                         "node": "n1", "attached": True, "vteps": ["192.0.2.2"], "announced": True},
                        {"pod": "b", "namespace": NS, "interface": "net0", "mac": MAC_B,
                         "node": "n2", "attached": True, "vteps": ["192.0.2.3", "192.0.2.4"],
                         "announced": True}]}
    del table[(100, MAC_B)]
    assert lan_view(lan, members, announced)["converged"] is False
    pending = [Member(NS, "a", "net0", MAC_A, "", False)]  # requested, MAC known elsewhere
    row = lan_view(lan, pending, announced)
    assert row["converged"] is False and row["members"][0]["node"] is None
    assert lan_view(lan, [], announced)["converged"] is True
    claimed = lan_view(lan, members, announced, [VniClaim(1, "other"), VniClaim(2, NS)])
    assert (claimed["vni_owner"], claimed["vni_claimed_by"]) == ("other", ["other", NS])


def test_the_table_follows_events_and_resets():
    table = LanTable()
    assert table.view(None, lambda v, m: []) == []
    table.reset("nads", [nad("lan-a", megalos(100), link="A"), nad("mv", {"type": "macvlan"}),
                         nad("lan-b", megalos(200), namespace="lab2")])
    table.reset("pods", [pod("p1", status=[primary(), status(f"{NS}/lan-a", "net0", MAC_A)]),
                         pod("p2", networks=[{"name": "lan-a", "interface": "net0"}])])
    assert table.synced == {"nads": True, "pods": True}
    view = table.view(NS, lambda v, m: [])
    assert [(lan["name"], [(m["pod"], m["attached"]) for m in lan["members"]]) for lan in view] \
        == [("lan-a", [("p1", True), ("p2", False)])]
    assert [lan["name"] for lan in table.view(None, lambda v, m: [])] == ["lan-a", "lan-b"]
    # p2 gets attached; p1 moves to another network; a pod of lab2 joins lan-b.
    table.event("pods", "MODIFIED", pod("p2", status=[status(f"{NS}/lan-a", "net0", MAC_B)]))
    table.event("pods", "MODIFIED", pod("p1", status=[status(f"{NS}/lan-x", "net0", MAC_A)]))
    table.event("pods", "ADDED", pod("q", namespace="lab2",
                                     status=[status("lab2/lan-b", "net0", MAC_A)]))
    members = table.view(NS, lambda v, m: [])[0]["members"]
    assert [(m["pod"], m["mac"], m["attached"]) for m in members] == [("p2", MAC_B, True)]
    assert table.view("lab2", lambda v, m: [])[0]["members"][0]["pod"] == "q"
    table.event("pods", "DELETED", pod("p2"))
    table.event("nads", "DELETED", nad("lan-b", megalos(200), namespace="lab2"))
    assert table.view(NS, lambda v, m: [])[0]["members"] == []
    assert table.view("lab2", lambda v, m: []) == []
    # A NAD that turns into another plugin's stops being a LAN.
    table.event("nads", "MODIFIED", nad("lan-a", {"type": "macvlan"}))
    assert table.view(None, lambda v, m: []) == []
    table.reset("pods", [])
    assert table.pods == {} and table._users == {}
    with pytest.raises(ValueError):
        table.event("services", "ADDED", {})


def test_the_state_checks_members_against_its_mac_tables():
    state = ReflectorState()
    assert state.lans(NS) == {"namespace": NS, "watching": False, "synced": False,
                              "converged": False, "lans": []}
    state.lan_reset("nads", [nad("lan-a", megalos(100), link="A")])
    state.lan_reset("pods", [pod("p1", status=[status(f"{NS}/lan-a", "net0", MAC_A)]),
                             pod("p2", "n2", status=[status(f"{NS}/lan-a", "net0", MAC_B)])])
    view = state.lans(NS)
    assert view["watching"] and view["synced"] and not view["converged"]
    for mac, vtep in ((MAC_A, "192.0.2.2"), (MAC_B, "192.0.2.3")):
        assert not state.lans(NS)["lans"][0]["converged"]
        state.apply(MacRoute("add", 100, mac, vtep))
    view = state.lans(NS)
    assert view["converged"] and view["lans"][0]["converged"]
    assert [m["vteps"] for m in view["lans"][0]["members"]] == [["192.0.2.2"], ["192.0.2.3"]]
    state.apply(MacRoute("add", 999, MAC_A, "192.0.2.9"))
    state.apply(MacRoute("del", 100, MAC_A, "192.0.2.2"))
    assert not state.lans(NS)["converged"]  # announced in another VNI does not count
    assert state.lans("elsewhere")["lans"] == [] and state.lans("elsewhere")["converged"]


# -- the LAN watcher against an API server -------------------------------------------------------
kmock = pytest.importorskip("kmock")


@pytest.fixture
def api():
    from lab.multus import ApiServerEmulator
    with ApiServerEmulator() as server:
        yield server




def members(state, namespace=NS):
    return {lan["name"]: sorted((m["pod"], m["interface"], m["mac"], m["attached"])
                                for m in lan["members"])
            for lan in state.lans(namespace)["lans"]}


def test_the_lan_watcher_feeds_the_state_from_nads_and_pods(api):
    from lab.multus import kathara_lab
    from reflector.discovery import LanWatcher
    from kube.watch import Backoff
    lab = kathara_lab('pc1[0]="A/02:00:00:00:0a:01"\nr1[0]="A"\nr1[1]="B"\npc2[0]="B"\n')
    ns = lab.namespace
    api.create(lab.nads["A"])
    api.create(nad("macvlan", {"cniVersion": "0.3.1", "type": "macvlan"}, namespace=ns))
    pc1 = lab.pod("pc1", "n1")
    api.create(pc1)
    state = ReflectorState()
    watcher = LanWatcher(api.api_client, state, backoff=Backoff(base=0.05, cap=0.2),
                         request_timeout=5.0)
    watcher.start()
    try:
        assert watcher.wait_synced(5)
        assert state.lans(ns)["synced"]
        # pc1 is created, not attached yet: a member of A by its request (interface, fixed MAC).
        assert members(state, ns) == {
            "kathara-a": [(pc1["metadata"]["name"], "net0", MAC_A, False)]}
        api.create(lab.nads["B"])
        r1 = lab.pod("r1", "n2")
        api.create(r1)
        wait_until(lambda: len(members(state, ns).get("kathara-b", [])) == 1, what="B and r1")
        # Multus attaches pc1 and writes its network status.
        pc1["metadata"]["annotations"][NETWORK_STATUS_ANNOTATION] = json.dumps(
            [primary(), status(f"{ns}/kathara-a", "net0", MAC_A)])
        api.replace(pc1)
        wait_until(lambda: (pc1["metadata"]["name"], "net0", MAC_A, True) in
                 members(state, ns)["kathara-a"], what="pc1 attached")
        assert not state.lans(ns)["converged"]
        state.apply(MacRoute("add", nad_lan(lab.nads["A"]).vni, MAC_A, "192.0.2.2"))
        a = next(lan for lan in state.lans(ns)["lans"] if lan["name"] == "kathara-a")
        assert [m["announced"] for m in a["members"]] == [True, False]  # r1 not attached yet
        api.delete(r1)
        wait_until(lambda: members(state, ns)["kathara-a"] == [
            (pc1["metadata"]["name"], "net0", MAC_A, True)], what="r1 gone")
        assert next(lan for lan in state.lans(ns)["lans"] if lan["name"] == "kathara-a")[
            "converged"]
        api.delete(lab.nads["B"])
        wait_until(lambda: "kathara-b" not in members(state, ns), what="B gone")
        assert "macvlan" not in members(state, ns)
    finally:
        watcher.stop()
    nads = "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions"
    lists = [r for r in api.requests("GET", nads) if not r.params.get("watch")]
    assert lists, "NADs are listed cluster-wide"
    assert any(not r.params.get("watch") for r in api.requests("GET", "/api/v1/pods"))


def test_a_hostile_pod_in_the_api_server_does_not_stop_the_lan_watcher(api):
    """A lab's author puts 100k nested brackets in a pod's `networks` annotation: the watcher
    still syncs, and the other lab's LAN and pods are listed."""
    from lab.multus import kathara_lab
    from reflector.discovery import LanWatcher
    from kube.watch import Backoff
    lab = kathara_lab('pc1[0]="A"\n')
    api.create(lab.nads["A"])
    evil = lab.pod("pc1", "n1")
    evil["metadata"]["name"] = "evil"
    evil["metadata"]["annotations"][NETWORKS_ANNOTATION] = DEEP
    api.create(evil)
    api.create(lab.pod("pc1", "n1"))
    state = ReflectorState()
    watcher = LanWatcher(api.api_client, state, backoff=Backoff(base=0.05, cap=0.2),
                         request_timeout=5.0)
    watcher.start()
    try:
        assert watcher.wait_synced(10) and state.lans(lab.namespace)["synced"]
        assert [m[0] for m in members(state, lab.namespace)["kathara-a"]] == [
            lab.pod("pc1", "n1")["metadata"]["name"]]
    finally:
        watcher.stop()
