"""End to end, as on a Kubernetes cluster running Kathara: a small lab (lab.conf syntax, one device
with a fixed MAC) turned into NetworkAttachmentDefinitions and pods by Kathara's own Kubernetes
manager code, attached by a harness playing Multus (lab.multus) on emulated nodes, with
everything found through an API server (kmock's emulator) the way the manifests in k8s/ set it up:

- the API server listens inside the control-plane node, as a real one would;
- the reflector runs there too, with the Deployment's arguments: BGP on 1790, router id derived
  from its address, peers = the Ready Node objects (--peers-from-k8s), LAN view from the NADs
  and pods (--lans-from-k8s);
- every agent finds the reflector in the EndpointSlices of megalos/megalos-reflector
  (--reflector-service);
- the REST API is gunicorn on the reflector's state socket.

Checked: pings on each LAN, isolation between LANs, the fixed MAC, and GET /api/v1/lans (and
`megalosctl lans`) showing every member, converged; then a device going away and coming back.

Last, the manifests' exact layout (the reflector in a node's own network, beside that node's
agent): upstream os-ken refuses routes whose next hop is the session's own local address, which
lost that node's MACs; bgp/osken_compat.py accepts them for EVPN.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from lab.api_server import ApiServer
from cni import naming
from lab.cluster import REPO, Cluster, Node
from lab.cluster import wait_for as poll
from lab.labrun import PROXY_VARIABLES
from lab.multus import NETWORK_STATUS, ApiServerEmulator, Multus, kathara_lab
from reflector.protocol import StateClient

pytestmark = pytest.mark.root
pytest.importorskip("kmock")

HOLD = 3
FIXED_MAC = "02:00:00:4b:00:01"
# Three devices, three LANs: A and C cross nodes, B stays on n2.
LAB_CONF = f"""\
pc1[0]="A/{FIXED_MAC}"
pc1[1]="C"
r1[0]="A"
r1[1]="B"
pc2[0]="B"
pc2[1]="C"
"""
PLACEMENT = {"pc1": "n1", "r1": "n2", "pc2": "n2"}
# Addresses per device and lab interface: one subnet per LAN (A 10.0.1, B 10.0.2, C 10.0.3).
ADDRESSES = {("pc1", "net0"): "10.0.1.1", ("r1", "net0"): "10.0.1.2",
             ("r1", "net1"): "10.0.2.2", ("pc2", "net0"): "10.0.2.3",
             ("pc1", "net1"): "10.0.3.1", ("pc2", "net1"): "10.0.3.3"}


wait_for = functools.partial(poll, timeout=30.0, interval=0.2)  # slower steps here


def get(api: ApiServer, path: str):
    """A read of the API, with its token."""
    with urllib.request.urlopen(api.request(path), timeout=10) as reply:
        return json.loads(reply.read())


def node_object(node: Node) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": {"kubernetes.io/os": "linux"}},
            "status": {"addresses": [{"type": "InternalIP", "address": node.ip},
                                     {"type": "Hostname", "address": node.name}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def reflector_slice(*nodes: Node) -> dict:
    """What the EndpointSlice controller makes for the headless Service megalos-reflector."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "megalos-reflector-x7k2p", "namespace": "megalos",
                         "labels": {"kubernetes.io/service-name": "megalos-reflector"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [n.ip], "conditions": {"ready": True}, "nodeName": n.name}
                          for n in nodes],
            "ports": [{"name": "bgp", "port": 1790, "protocol": "TCP"}]}


class Lab:
    """The running lab: the cluster, the API server, the processes, the attached devices."""

    def __init__(self, cluster, kube, control, api, kathara, multus, devices):
        self.cluster, self.kube, self.control, self.api = cluster, kube, control, api
        self.kathara, self.multus, self.devices = kathara, multus, devices

    def lans(self) -> dict:
        return get(self.api, f"/api/v1/lans?namespace={self.kathara.namespace}")

    def device(self, name: str):
        return self.devices[name]

    def ping(self, src: str, dst: str, ifname: str) -> bool:
        return self.devices[src].netns.ping(ADDRESSES[(dst, ifname)], count=2, timeout=2)


def logs(*paths, tail: int = 3000) -> str:
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-tail:]}" for p in paths if p)


def start_control_plane(cluster: Cluster, host: Node, nodes: list[Node]):
    """The API server and the reflector in `host`'s network, the agents of `nodes` (which may
    include `host`); (API server, reflector node handle) once every node is an Established peer,
    named after its Node object."""
    kube = ApiServerEmulator(netns=host.netns, host=host.ip)
    kubeconfig = str(kube.kubeconfig(cluster.run_dir / "kubeconfig"))
    for node in nodes:
        kube.create(node_object(node))
    kube.create(reflector_slice(host))
    for node in nodes:
        node.start_agent("--reflector-service", "megalos/megalos-reflector",
                         "--kubeconfig", kubeconfig, "--hold-time", str(HOLD))
    control = Node("control", host.netns, host.ip, cluster)  # the reflector's pod
    control.socket = str(cluster.run_dir / "reflector.sock")
    control._spawn("reflector.main", [  # the Deployment's arguments: no --router-id
        "--listen-host", host.ip, "--bgp-port", "1790", "--peers-from-k8s",
        "--node-selector", "kubernetes.io/os=linux", "--lans-from-k8s",
        "--kubeconfig", kubeconfig, "--hold-time", str(HOLD),
        "--state-socket", control.socket], control.socket, 20.0)
    state = StateClient(control.socket)
    want = sorted((n.ip, n.name, "Established") for n in nodes)
    established = wait_for(lambda: sorted((p["address"], p["name"], p["state"])
                                          for p in state.call("peers")) == want, timeout=30)
    assert established, (state.call("peers"), logs(control.log_path, *(n.log_path for n in nodes)))
    assert state.call("hello")["router_id"] == "0." + host.ip.split(".", 1)[1]
    return kube, control


def stop_control_plane(kube, control, nodes) -> None:
    control.stop_agent()
    for node in nodes:
        node.stop_agent()  # their watches end before the API server does
    kube.close()


@pytest.fixture(scope="module")
def lab(runtime):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with pytest.MonkeyPatch.context() as env, Cluster() as cluster:
        for name in PROXY_VARIABLES:  # the processes reach the API server directly
            env.delenv(name, raising=False)
        cp, n1, n2 = (cluster.add_node(name) for name in ("cp", "n1", "n2"))
        kube, control = start_control_plane(cluster, cp, [n1, n2])
        try:
            kathara = kathara_lab(LAB_CONF)
            for nad in kathara.nads.values():
                kube.create(nad)
            multus = Multus(runtime, kathara.nads)
            devices = {}
            for device, node_name in PLACEMENT.items():
                node = cluster.nodes[node_name]
                pod = kathara.pod(device, node_name)
                kube.create(pod)  # scheduled, not attached yet
                devices[device] = multus.add(pod, node, node.add_pod(device))
                kube.replace(pod)  # Multus wrote network-status
            for (device, ifname), address in ADDRESSES.items():
                devices[device].netns.set_ip(ifname, f"{address}/24")
            with ApiServer(control.socket) as api:
                yield Lab(cluster, kube, control, api, kathara, multus, devices)
        finally:
            stop_control_plane(kube, control, [n1, n2])


def lan_by_link(view: dict) -> dict:
    return {lan["link"]: lan for lan in view["lans"]}


def test_kathara_asked_for_what_the_lab_says(lab):
    pc1 = lab.device("pc1").object
    networks = json.loads(pc1["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"])
    assert [(e["name"], e["interface"], e.get("mac")) for e in networks] == [
        ("kathara-a", "net0", FIXED_MAC), ("kathara-c", "net1", None)]
    assert all(e["namespace"] == lab.kathara.namespace for e in networks)
    (a_call, c_call) = lab.device("pc1").attachments
    assert a_call.cni_args.endswith(f";MAC={FIXED_MAC}") and "MAC=" not in c_call.cni_args
    assert a_call.cni_args.startswith(
        f"IgnoreUnknown=true;K8S_POD_NAMESPACE={lab.kathara.namespace};"
        f"K8S_POD_NAME={pc1['metadata']['name']};")
    assert a_call.config == lab.kathara.nads["A"]["spec"]["config"]  # Kathara's text, as it is


def test_the_fixed_mac_is_the_pods_and_multus_reports_it(lab):
    pc1 = lab.device("pc1")
    assert pc1.netns.link("net0")["address"] == FIXED_MAC
    assert pc1.mac("net0") == FIXED_MAC
    status = json.loads(pc1.object["metadata"]["annotations"][NETWORK_STATUS])
    assert [(s["name"], s["interface"]) for s in status] == [
        (f"{lab.kathara.namespace}/kathara-a", "net0"),
        (f"{lab.kathara.namespace}/kathara-c", "net1")]
    assert status[1]["mac"] == pc1.netns.link("net1")["address"]


def test_each_lan_reaches_its_devices_and_only_them(lab):
    assert wait_for(lambda: lab.ping("pc1", "r1", "net0"), timeout=15)  # A, across nodes
    assert lab.ping("r1", "pc1", "net0")
    assert lab.ping("r1", "pc2", "net0") and lab.ping("pc2", "r1", "net1")  # B, on n2 only
    assert lab.ping("pc1", "pc2", "net1") and lab.ping("pc2", "pc1", "net1")  # C, across nodes
    # pc2 is not on A: an A address on it is out of pc1's reach over A, though pc2 and pc1
    # share C (same nodes, same VTEPs: the VNIs keep the LANs apart).
    pc2 = lab.device("pc2").netns
    pc2.set_ip("net0", "10.0.1.99/24")
    try:
        assert not lab.device("pc1").netns.ping("10.0.1.99", count=2, timeout=1)
    finally:
        pc2.run("ip", "addr", "del", "10.0.1.99/24", "dev", "net0")
    n1 = lab.cluster.nodes["n1"]
    vni_b = json.loads(lab.kathara.nads["B"]["spec"]["config"])["vxlanId"]
    assert naming.vtep_name(vni_b) not in n1.link_names()  # B never reached n1


def test_the_lan_view_shows_every_member_converged(lab):
    view = wait_for(lambda: (lambda v: v if v["converged"] else None)(lab.lans()), timeout=30)
    assert view, (lab.lans(), logs(lab.control.log_path))
    assert view["namespace"] == lab.kathara.namespace and view["watching"] and view["synced"]
    lans = lan_by_link(view)
    assert sorted(lans) == ["A", "B", "C"]
    nodes = {n.name: n.ip for n in lab.cluster.nodes.values() if n.name != "cp"}
    for link, lan in lans.items():
        nad = lab.kathara.nads[link]
        assert lan["name"] == nad["metadata"]["name"]
        assert lan["vni"] == json.loads(nad["spec"]["config"])["vxlanId"]
        assert lan["converged"]
        for member in lan["members"]:
            device = next(d for d in lab.devices.values() if d.name == member["pod"])
            assert member["node"] == device.node.name and member["attached"]
            assert member["mac"] == device.mac(member["interface"])
            assert member["vteps"] == [nodes[member["node"]]]  # announced by its own node
    members = {link: sorted((m["pod"].split("-")[1], m["interface"]) for m in lan["members"])
               for link, lan in lans.items()}
    assert members == {"A": [("pc1", "net0"), ("r1", "net0")],
                       "B": [("pc2", "net0"), ("r1", "net1")],
                       "C": [("pc1", "net1"), ("pc2", "net1")]}
    fixed = next(m for m in lans["A"]["members"] if m["interface"] == "net0"
                 and m["pod"] == lab.device("pc1").name)
    assert fixed["mac"] == FIXED_MAC
    # The peers carry the nodes' names (from the Node objects).
    peers = get(lab.api, "/api/v1/nodes")["nodes"]
    assert sorted((p["address"], p["name"]) for p in peers) == sorted(
        (ip, name) for name, ip in nodes.items())


def test_megalosctl_lans(lab):
    def ctl(*argv):
        proc = subprocess.run([sys.executable, "-m", "api.cli", "--server", lab.api.url, "lans",
                               "--namespace", lab.kathara.namespace, *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "MEGALOS_API_TOKEN": lab.api.token})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    table = ctl().splitlines()
    assert table[0].split() == ["LAN", "LINK", "VNI", "MEMBERS", "CONVERGED"]
    assert sorted(line.split()[1] for line in table[1:4]) == ["A", "B", "C"]
    assert all(line.split()[3:] == ["2/2", "yes"] for line in table[1:4])
    assert any(FIXED_MAC in line for line in table)
    assert json.loads(ctl("-o", "json"))["converged"] is True


def test_a_device_that_goes_is_no_member_once_its_pod_is_gone(lab):
    """pc2's pod is deleted: the kubelet tears its sandbox down (CNI DEL through Multus) while the
    object still exists, then the object goes; then the device is started again."""
    pc2 = lab.device("pc2")
    lab.multus.delete(pc2)
    lab.kube.replace(pc2.object)  # still there, being deleted: its status names the old MACs
    not_converged = wait_for(lambda: (lambda v: v if not lan_by_link(v)["B"]["converged"]
                                      else None)(lab.lans()), timeout=20)
    assert not_converged, lab.lans()
    assert lan_by_link(not_converged)["A"]["converged"]  # pc2 was never on A
    assert not lan_by_link(not_converged)["C"]["converged"]
    lab.kube.delete(pc2.object)
    after = wait_for(lambda: (lambda v: v if v["converged"] else None)(lab.lans()), timeout=20)
    assert after, lab.lans()
    assert [len(lan_by_link(after)[link]["members"]) for link in "ABC"] == [2, 1, 1]
    # The device comes back (a new pod on the same node): every LAN converges with it again.
    node = lab.cluster.nodes[PLACEMENT["pc2"]]
    pod = lab.kathara.pod("pc2", node.name)
    lab.kube.create(pod)
    back = lab.multus.add(pod, node, pc2.netns)
    lab.kube.replace(pod)
    lab.devices["pc2"] = back
    final = wait_for(lambda: (lambda v: v if v["converged"] and all(
        len(lan["members"]) == 2 for lan in v["lans"]) else None)(lab.lans()), timeout=20)
    assert final, lab.lans()
    for (device, ifname), address in ADDRESSES.items():
        if device == "pc2":
            back.netns.set_ip(ifname, f"{address}/24")
    # The new pod has new random MACs, which the ARP caches of pc1 and r1 do not know yet: pc2
    # speaks first (its ARP requests refresh their entries), then both ways work.
    assert wait_for(lambda: lab.ping("pc2", "pc1", "net1"), timeout=15)  # C, across nodes
    assert wait_for(lambda: lab.ping("pc2", "r1", "net1"), timeout=15)   # B, on n2
    assert lab.ping("pc1", "pc2", "net1") and lab.ping("r1", "pc2", "net0")


def test_agents_follow_the_reflector_service(lab):
    """The reflector's EndpointSlice goes (the Service lost its endpoints) and comes back: the
    agents stop peering with the reflector, the LANs keep forwarding meanwhile (the agents keep
    what they know while no reflector is reachable), then sessions and the view come back."""
    state = StateClient(lab.control.socket)
    slice_ = reflector_slice(lab.cluster.nodes["cp"])
    lab.kube.delete(slice_)
    gone = wait_for(lambda: all(p["state"] != "Established" for p in state.call("peers")),
                    timeout=20)
    assert gone, state.call("peers")
    assert lab.ping("pc1", "r1", "net0") and lab.ping("pc1", "pc2", "net1")
    lab.kube.create(slice_)
    back = wait_for(lambda: all(p["state"] == "Established" for p in state.call("peers")),
                    timeout=30)
    assert back, state.call("peers")
    assert wait_for(lambda: lab.lans()["converged"], timeout=20), lab.lans()
    assert lab.ping("pc1", "r1", "net0")
    for node in ("n1", "n2"):
        text = lab.cluster.nodes[node].log_path.read_text()
        assert "left the Service's endpoints" in text and "reflector %s removed" % \
            lab.cluster.nodes["cp"].ip in text


def test_a_reflector_beside_its_nodes_agent_learns_that_nodes_macs(runtime):
    """The manifests' layout: the reflector (hostNetwork) shares n1's address with n1's agent.
    Its router id is derived (not n1's), n1's agent finds it at its own address; both sessions
    come up. Each node attaches a pod to one LAN: the reflector must hold both MACs, and the
    pods must reach each other (with one reflector, n1's MACs reach n2 only through it)."""
    with pytest.MonkeyPatch.context() as env, Cluster() as cluster:
        for name in PROXY_VARIABLES:
            env.delenv(name, raising=False)
        n1, n2 = cluster.add_node("n1"), cluster.add_node("n2")
        kube, control = start_control_plane(cluster, n1, [n1, n2])
        try:
            macs = {"n1": "02:00:00:4b:01:01", "n2": "02:00:00:4b:01:02"}
            pods = {}
            for node, address in ((n1, "10.9.0.1/24"), (n2, "10.9.0.2/24")):
                pod = pods[node.name] = node.add_pod("p")
                reply = runtime.call("ADD", {"cniVersion": "0.3.0", "name": "lan",
                                             "type": "megalos", "vxlanId": 4711},
                                     container_id=f"c-{pod.netns}", netns=pod.netns_path,
                                     ifname="net0", args=f"MAC={macs[node.name]}",
                                     socket=node.socket)
                assert reply.code == 0, reply
                pod.set_ip("net0", address)
            state = StateClient(control.socket)
            held = wait_for(lambda: all(state.call("mac", mac=mac, vni=4711)
                                        for mac in macs.values()), timeout=10)
            assert held, (state.call("vni", vni=4711), logs(control.log_path))
            assert pods["n2"].ping("10.9.0.1", count=2, timeout=2)
        finally:
            stop_control_plane(kube, control, [n1, n2])
