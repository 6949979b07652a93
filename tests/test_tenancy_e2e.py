"""A VNI belongs to one namespace, a MAC to one pod, tried the way a hostile (or unlucky) tenant
would, on the namespace cluster: a reflector and three nodes running megalos-agent, real BGP, pods
attached through the installed shim with the CNI_ARGS Multus sends (K8S_POD_NAMESPACE,
K8S_POD_NAME, MAC), no Kubernetes API: the claims travel with the routes (bgp.claims).

A check on another node depends on what that node has heard. `heard(origin, node)` makes sure:
once the reflector holds a route, a route `origin` announces after it reaches `node` after it
too (one reflector, one TCP session to each node, one worker per agent: all in order), so the
test waits for a MAC of a later pod on a VNI `node` hosts.
"""
from __future__ import annotations

import itertools
import urllib.error
import urllib.request
import json
import time

import pytest

from cni import naming
from lab.cluster import Cluster, sh, wait_until
from lab.runtime import kathara_conf
from reflector.protocol import StateClient

pytestmark = pytest.mark.root
HOLD = 3
BARRIER = 77000   # the VNI of `heard`'s pods: every node hosts one
_serial = itertools.count(1)


def mac(n: int) -> str:
    return f"02:7e:00:00:{n >> 8:02x}:{n & 255:02x}"


def args(namespace: str, pod: str, pod_mac: str) -> str:
    named = f"K8S_POD_NAMESPACE={namespace};" if namespace is not None else ""
    return f"IgnoreUnknown=true;{named}K8S_POD_NAME={pod};MAC={pod_mac}" if pod else \
        f"IgnoreUnknown=true;{named}MAC={pod_mac}"


class Tenants:
    """The cluster, and ADD/DEL as Multus calls them."""

    def __init__(self, runtime, cluster, rr, nodes):
        self.runtime, self.cluster, self.rr, self.nodes = runtime, cluster, rr, nodes
        self.state = StateClient(rr.socket)

    def add(self, node, vni: int, namespace: str | None, pod: str, pod_mac: str, netns=None):
        netns = netns or node.add_pod(f"p{next(_serial)}")
        reply = self.runtime.call("ADD", kathara_conf(f"lan{vni}", vni), container_id=f"c-{netns.netns}",
                                  netns=netns.netns_path, ifname="net0", socket=node.socket,
                                  args=args(namespace, pod, pod_mac))
        return reply, netns

    def attach(self, node, vni, namespace, pod, pod_mac):
        reply, netns = self.add(node, vni, namespace, pod, pod_mac)
        assert reply.code == 0, reply
        return netns

    def detach(self, node, netns, vni):
        reply = self.runtime.call("DEL", kathara_conf(f"lan{vni}", vni), container_id=f"c-{netns.netns}",
                                  netns=netns.netns_path, ifname="net0", socket=node.socket)
        assert reply.code == 0, reply

    def vni(self, vni: int) -> dict:
        try:
            return self.state.call("vni", vni=vni)
        except Exception:
            return {}

    def taken_over(self, node, vni: int, since: float, timeout: float = 30) -> float:
        """Retry lab-b's ADD on `node` until it is accepted (each refusal must leave nothing); the
        seconds since `since`."""
        while True:
            reply, _ = self.add(node, vni, "lab-b", "pc1", mac(0x6000 + vni % 256))
            if reply.code == 0:
                return time.monotonic() - since
            assert error(reply)["code"] == 104 and time.monotonic() < since + timeout, reply
            assert naming.bridge_name(vni) not in node.link_names()
            time.sleep(0.05)

    def heard(self, origin, node) -> None:
        """`node` has processed every route the reflector held from `origin` before this call."""
        pod_mac = mac(0x8000 + next(_serial))
        self.attach(origin, BARRIER, "barrier", f"b{next(_serial)}", pod_mac)
        wait_until(lambda: remote_macs(node, BARRIER).get(pod_mac) == origin.ip, 20,
                   f"{node.name} to hear {origin.name}")


def remote_macs(node, vni: int) -> dict[str, str]:
    """{mac: VTEP} of the node's VTEP `self dst` entries (none if it has no VTEP for the VNI)."""
    if naming.vtep_name(vni) not in node.link_names():
        return {}
    return {e["mac"]: e["dst"] for e in node.fdb(naming.vtep_name(vni))
            if e.get("dst") and e["mac"] != "00:00:00:00:00:00"}


def ports(node, vni: int) -> list[dict]:
    """The pod ports on the VNI's bridge, with their aliases."""
    return [link for link in node.links() if link.get("master") == naming.bridge_name(vni)
            and naming.is_port_name(link["ifname"])]


def bridge_entry(node, vni: int, pod_mac: str) -> str | None:
    """The port the VNI's bridge sends `pod_mac` to."""
    return next((e.get("ifname") for e in node.fdb() if e["mac"] == pod_mac
                 and e.get("master") == naming.bridge_name(vni)), None)


def error(reply) -> dict:
    assert reply.code == 1, reply
    return json.loads(reply.stdout)


def send_from(netns, source_mac: str, count: int = 5) -> None:
    """Frames with source `source_mac` out of the pod's net0, as a spoofing pod sends them."""
    netns.run("python3", "-c", f"""
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("net0", 0))
for _ in range({count}):
    s.send(bytes.fromhex("ffffffffffff" + "{source_mac.replace(':', '')}" + "88b5") + bytes(50))
""")


@pytest.fixture(scope="module")
def tenants(runtime):
    with Cluster() as cluster:
        rr = cluster.add_node("rr")
        nodes = [cluster.add_node(f"n{i}") for i in (1, 2, 3)]
        rr.start_reflector(*[arg for n in nodes for arg in ("--peer", n.ip)], "--hold-time", str(HOLD))
        for node in nodes:
            node.start_agent("--reflector", rr.ip, "--hold-time", str(HOLD), "--sweep-interval", "1")
        world = Tenants(runtime, cluster, rr, nodes)
        for node in nodes:  # every node hosts the barrier VNI
            world.attach(node, BARRIER, "barrier", f"base-{node.name}", mac(0x7000 + len(node.name)
                                                                            + nodes.index(node)))
        yield world


def test_a_second_namespace_cannot_join_a_vni_on_the_same_node(tenants):
    n1 = tenants.nodes[0]
    vni = 77001
    tenants.attach(n1, vni, "lab-a", "pc1", mac(1))
    before = {link["ifname"] for link in n1.links()}
    reply, intruder = tenants.add(n1, vni, "lab-b", "pc1", mac(2))
    body = error(reply)
    assert body["code"] == 104
    assert f"VNI {vni} belongs to namespace lab-a" in body["msg"] and "on this node" in body["msg"]
    assert "namespace lab-b cannot attach" in body["msg"]
    # Nothing left: no port, no interface in the pod, the bridge still lab-a's alone.
    assert {link["ifname"] for link in n1.links()} == before
    assert "net0" not in intruder.run("ip", "-o", "link").stdout
    assert len(ports(n1, vni)) == 1 and "pod=lab-a/pc1" in ports(n1, vni)[0]["ifalias"]
    bridge = next(link for link in n1.links() if link["ifname"] == naming.bridge_name(vni))
    assert bridge["ifalias"].startswith("megalos:bridge ns=lab-a since=")
    # The owner itself comes in, on this node as on another.
    tenants.attach(n1, vni, "lab-a", "pc2", mac(3))


def test_a_second_namespace_cannot_join_a_vni_on_another_node(tenants):
    n1, n2, _ = tenants.nodes
    vni = 77002
    tenants.attach(n1, vni, "lab-a", "pc1", mac(11))
    wait_until(lambda: tenants.vni(vni).get("owner") == "lab-a", 20, "the reflector to see the claim")
    tenants.heard(n1, n2)
    reply, _ = tenants.add(n2, vni, "lab-b", "pc1", mac(12))
    body = error(reply)
    assert body["code"] == 104
    assert f"VNI {vni} belongs to namespace lab-a" in body["msg"] and f"behind VTEP {n1.ip}" in body["msg"]
    assert naming.bridge_name(vni) not in n2.link_names()   # nothing made
    # A namespace that names none (a runtime without K8S_POD_NAMESPACE) is another namespace.
    reply, _ = tenants.add(n2, vni, None, "pc9", mac(13))
    assert error(reply)["code"] == 104 and "the unnamed namespace" in error(reply)["msg"]
    # lab-a spreads to n2: its claim there is as old as on n1.
    tenants.attach(n2, vni, "lab-a", "pc2", mac(14))
    wait_until(lambda: len(tenants.vni(vni).get("claims", [{}])[0].get("vteps", [])) == 2, 20,
               "both VTEPs to claim the VNI")
    (claim,) = tenants.vni(vni)["claims"]
    assert claim["namespace"] == "lab-a" and claim["vteps"] == [n1.ip, n2.ip]


def test_ownership_ends_when_the_owners_last_port_is_gone_everywhere(tenants):
    n1, n2, n3 = tenants.nodes
    vni = 77003
    first = tenants.attach(n1, vni, "lab-a", "pc1", mac(21))
    second = tenants.attach(n2, vni, "lab-a", "pc2", mac(22))
    wait_until(lambda: len((tenants.vni(vni).get("claims") or [{}])[0].get("vteps", [])) == 2, 20,
               "both claims at the reflector")
    tenants.heard(n2, n3)
    assert error(tenants.add(n3, vni, "lab-b", "pc1", mac(23))[0])["code"] == 104
    tenants.detach(n1, first, vni)             # one of two gone: lab-a still owns the VNI
    wait_until(lambda: (tenants.vni(vni).get("claims") or [{}])[0].get("vteps") == [n2.ip], 20,
               "n1's claim to go")
    tenants.heard(n1, n3)
    assert error(tenants.add(n3, vni, "lab-b", "pc1", mac(23))[0])["code"] == 104
    # The last one goes without a DEL (its netns deleted, as when a node's runtime loses a pod):
    # n2's sweep removes the LAN, its VTEP route is withdrawn, and lab-b may take the VNI.
    n2.pods.pop(second.name)
    gone = time.monotonic()
    sh("ip", "netns", "del", second.netns)
    print(f"VNI free for another namespace {tenants.taken_over(n3, vni, gone):.2f} s after its last "
          "pod went without a DEL (sweep every 1 s)")
    wait_until(lambda: tenants.vni(vni).get("owner") == "lab-b", 20, "the new owner at the reflector")


def test_a_vni_is_free_soon_after_its_owners_last_del(tenants):
    n1, n2, _ = tenants.nodes
    vni = 77007
    only = tenants.attach(n1, vni, "lab-a", "pc1", mac(61))
    wait_until(lambda: tenants.vni(vni).get("owner") == "lab-a", 20, "the claim at the reflector")
    tenants.heard(n1, n2)
    assert error(tenants.add(n2, vni, "lab-b", "pc1", mac(62))[0])["code"] == 104
    gone = time.monotonic()
    tenants.detach(n1, only, vni)
    print(f"VNI free for another namespace {tenants.taken_over(n2, vni, gone):.2f} s after its "
          "owner's last DEL")


def test_a_pod_cannot_claim_another_pods_mac(tenants):
    n1, n2, _ = tenants.nodes
    vni = 77004
    tenants.attach(n1, vni, "lab-a", "pc1", mac(31))
    holder = ports(n1, vni)[0]["ifname"]
    reply, intruder = tenants.add(n1, vni, "lab-a", "pc2", mac(31))
    body = error(reply)
    assert body["code"] == 105
    assert f"MAC {mac(31)} on VNI {vni} is held by pod lab-a/pc1 on this node" in body["msg"]
    assert "pod lab-a/pc2 cannot take it" in body["msg"]
    assert "net0" not in intruder.run("ip", "-o", "link").stdout
    assert [p["ifname"] for p in ports(n1, vni)] == [holder] and bridge_entry(n1, vni, mac(31)) == holder
    # On another node: the MAC route names the pod that holds it.
    wait_until(lambda: any(m["mac"] == mac(31) and m["pod"] for m in tenants.vni(vni).get("macs", [])),
               20, "the MAC at the reflector, naming its pod")
    tenants.heard(n1, n2)
    for pod in ("pc2", ""):   # another device; a request that names no pod
        body = error(tenants.add(n2, vni, "lab-a", pod, mac(31))[0])
        assert body["code"] == 105 and f"behind VTEP {n1.ip}" in body["msg"], body
    assert naming.bridge_name(vni) not in n2.link_names()


def test_a_device_made_again_takes_its_mac_over(tenants):
    """A Kathara device is a Deployment's pod: made again, it has a new name (another suffix),
    and Kubernetes may start it before the old one is gone, on another node or the same."""
    n1, n2, n3 = tenants.nodes
    vni = 77005
    device_mac = mac(41)
    old = tenants.attach(n1, vni, "lab-a", "kathara-pc1-5d8f7b9c4a-x2x7q", device_mac)
    tenants.attach(n3, vni, "lab-a", "kathara-r1-5d8f7b9c4a-aaaaa", mac(42))   # watches from n3
    wait_until(lambda: remote_macs(n3, vni).get(device_mac) == n1.ip, 20, "n3 to reach pc1 on n1")
    tenants.heard(n1, n2)
    new = tenants.attach(n2, vni, "lab-a", "kathara-pc1-7c6d5b4a9b-k8s2p", device_mac)
    wait_until(lambda: remote_macs(n3, vni).get(device_mac) == n2.ip, 20, "n3 to follow pc1 to n2")
    tenants.detach(n1, old, vni)
    # Made again on the same node while the second copy still runs: the entry moves to it.
    third = tenants.attach(n2, vni, "lab-a", "kathara-pc1-7c6d5b4a9b-zzzzz", device_mac)
    newest = next(p["ifname"] for p in ports(n2, vni) if p["ifname"] == naming.port_name(
        f"c-{third.netns}", "net0"))
    assert bridge_entry(n2, vni, device_mac) == newest
    tenants.detach(n2, new, vni)
    time.sleep(1)  # a withdrawal would have reached n3 by now (it does not come)
    assert remote_macs(n3, vni).get(device_mac) == n2.ip


def test_a_pod_sending_from_another_pods_mac_takes_nothing(tenants):
    n1, n2, n3 = tenants.nodes
    vni = 77006
    victim = mac(51)
    tenants.attach(n1, vni, "lab-a", "pc1", victim)
    neighbour = tenants.attach(n1, vni, "lab-a", "pc2", mac(52))
    faraway = tenants.attach(n2, vni, "lab-a", "pc3", mac(53))
    tenants.attach(n3, vni, "lab-a", "pc4", mac(54))
    wait_until(lambda: remote_macs(n3, vni).get(victim) == n1.ip
               and remote_macs(n2, vni).get(victim) == n1.ip, 20, "everyone to reach pc1 on n1")
    victim_port = bridge_entry(n1, vni, victim)
    # Same node: the pod's entry is sticky; a frame from its MAC on another port does not move it.
    send_from(neighbour, victim)
    time.sleep(0.3)
    assert bridge_entry(n1, vni, victim) == victim_port
    # Another node: its bridge learns the MAC on the spoofing port; its agent does not announce it.
    send_from(faraway, victim)
    wait_until(lambda: f"MAC {victim}, held by a pod behind {n1.ip}" in n2.log_path.read_text(), 20,
               "n2's agent to refuse the learned MAC")
    tenants.heard(n2, n3)
    assert remote_macs(n3, vni).get(victim) == n1.ip
    assert [m["vtep"] for m in tenants.vni(vni)["macs"] if m["mac"] == victim] == [n1.ip]


# -- two Kathara labs on one VNI, on Kubernetes ---------------------------------------------------
# Kathara allots a lab's VNIs from a hash of its link names, avoiding those of the NADs it finds;
# two labs started at once (or by two users of one cluster) with the same link names get the
# same VNIs. Here both labs are what Kathara's own code makes (lab.multus.kathara_lab), attached
# by the Multus harness through the API server emulator; the reflector watches NADs and pods.
TWO_LABS = """\
pc1[0]="A"
pc2[0]="A"
pc3[0]="B"
pc4[0]="B"
"""


def get(api, path: str):
    """GET `path` of the API (lab.api_server.ApiServer), with its token: reads need it."""
    with urllib.request.urlopen(api.request(path), timeout=10) as reply:
        return json.loads(reply.read())


def owner(api, vni: int) -> str | None:
    """The VNI's owner as the API says it (None too while the VNI is unknown: 404)."""
    try:
        return get(api, f"/api/v1/vnis/{vni}")["owner"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def test_two_kathara_labs_on_one_vni_get_a_clear_error_and_the_api_shows_it(runtime):
    pytest.importorskip("kmock")
    from lab.labrun import RunningLab
    from lab.multus import Multus, MultusError, kathara_lab

    with RunningLab(TWO_LABS, nodes=3, runtime=runtime) as first:
        n1, n2, n3 = (first.node(f"node{i}") for i in (1, 2, 3))
        first.attach("pc1", "node1")
        first.attach("pc2", "node2")
        first.attach("pc3", "node3")
        second = kathara_lab(TWO_LABS)
        vni = json.loads(second.nads["A"]["spec"]["config"])["vxlanId"]
        assert vni == json.loads(first.kathara.nads["A"]["spec"]["config"])["vxlanId"]
        assert second.namespace != first.kathara.namespace
        for nad in second.nads.values():
            first.kube.create(nad)
        multus = Multus(first.runtime, second.nads)
        lans = "/api/v1/lans"
        wait_until(lambda: next(lan for lan in get(first.api, f"{lans}?namespace={first.kathara.namespace}")["lans"]
                                if lan["link"] == "A")["vni_owner"] == first.kathara.namespace,
                   30, "the first lab's claim at the reflector")
        # node3 has heard node1's claim once it has a MAC node1 announced later, on LAN B.
        pc4 = first.attach("pc4", "node1")
        wait_until(lambda: pc4.mac("net0") in {e["mac"] for e in n3.fdb(naming.vtep_name(
            json.loads(first.kathara.nads["B"]["spec"]["config"])["vxlanId"]))}, 30, "node3 to hear node1")

        def attach_second(device, node):
            pod = second.pod(device, node.name)
            first.kube.create(pod)
            try:
                return multus.add(pod, node, node.add_pod(f"l2-{device}-{next(_serial)}"))
            except MultusError as exc:
                first.kube.delete(pod)
                return str(exc)

        for node, where in ((n1, "on this node"), (n3, "behind VTEP")):
            refused = attach_second("pc1", node)
            assert isinstance(refused, str) and '"code": 104' in refused, refused
            assert f"VNI {vni} belongs to namespace {first.kathara.namespace}" in refused
            assert where in refused and f"namespace {second.namespace} cannot attach" in refused
        assert naming.bridge_name(vni) not in n3.link_names()   # nothing made on node3

        # The API: the second lab's LAN names the owner; the map puts it in trouble, not the first.
        theirs = next(lan for lan in get(first.api, f"{lans}?namespace={second.namespace}")["lans"]
                      if lan["link"] == "A")
        assert (theirs["vni_owner"], theirs["vni_claimed_by"]) == (first.kathara.namespace,
                                                                   [first.kathara.namespace])
        lan_map = {lan["id"]: lan for lan in get(first.api, "/api/v1/map")["lans"]}
        blocked = lan_map[f"{second.namespace}/{second.nads['A']['metadata']['name']}"]
        assert blocked["state"] == "trouble" and blocked["vni_owner"] == first.kathara.namespace
        assert f"VNI {vni} belongs to namespace {first.kathara.namespace}: this LAN's pods cannot " \
               "attach" in blocked["problems"]
        owned = lan_map[f"{first.kathara.namespace}/{first.kathara.nads['A']['metadata']['name']}"]
        assert owned["vni_shared_with"] == [] and not any("VNI" in p for p in owned["problems"])
        detail = get(first.api, f"/api/v1/vnis/{vni}")
        assert detail["owner"] == first.kathara.namespace and len(detail["claims"]) == 1

        # The first lab goes: the second one's pods attach (Kubernetes retries a failed sandbox).
        for device in ("pc1", "pc2"):
            first.detach(device)
        attached = wait_until(lambda: not isinstance(got := attach_second("pc1", n3), str) and got,
                              30, "the second lab to attach once the first is gone")
        assert attached.attachments[0].reply.code == 0
        wait_until(lambda: owner(first.api, vni) == second.namespace, 30,
                   "the second lab to own the VNI")
