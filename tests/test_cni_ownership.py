"""GC and the sweep touch only what they own: the devices Megalos made (marked with an alias),
and for GC only the ports of its own network. Each case as someone sharing the node would hit it:
another network on the same VNI, another program's mgbr<N>/mgvx<N>, an older agent's devices."""
from __future__ import annotations

import pytest

from cni import naming
from lab.cluster import sh, wait_until
from lab.runtime import kathara_conf

pytestmark = pytest.mark.root
VNI = 4343


def conf(network: str, vni: int = VNI, **extra) -> dict:
    return kathara_conf(network, vni, "1.1.0", **extra)


def add(runtime, node, pod, network: str, vni: int = VNI) -> str:
    reply = runtime.call("ADD", conf(network, vni), container_id=f"c-{pod.name}", netns=pod.netns_path,
                         ifname="net0", socket=node.socket)
    assert reply.code == 0, reply
    return naming.port_name(f"c-{pod.name}", "net0")


def gc(runtime, node, network: str, keep: list, key: str = "cni.dev/valid-attachments") -> None:
    attachments = [{"containerID": f"c-{pod.name}", "ifname": "net0"} for pod in keep]
    reply = runtime.call("GC", conf(network, **{key: attachments}), socket=node.socket)
    assert reply.code == 0, reply


def aliases(node) -> dict[str, str]:
    """Megalos-named devices -> their alias ('' for none)."""
    return {link["ifname"]: link.get("ifalias", "") for link in node.links()
            if link["ifname"].startswith("mg")}


def clear_aliases(node, *names: str) -> None:
    """Make devices look as an agent made them before devices were marked."""
    for name in names:
        node.run("ip", "link", "set", "dev", name, "alias", "")


def test_what_megalos_makes_is_marked(runtime, node):
    port = add(runtime, node, node.add_pod("a1"), "lan_a")
    marks = aliases(node)
    # The bridge also records its VNI's owner: the unnamed namespace (no K8S_POD_NAMESPACE here).
    claim = naming.bridge_claim(marks.pop(naming.bridge_name(VNI)))
    assert claim is not None and claim.namespace == ""
    assert marks == {naming.vtep_name(VNI): "megalos:vtep", port: "megalos:port:lan_a"}


def test_gc_of_one_network_leaves_another_networks_ports_alone(runtime, node):
    """Two networks (two NADs) on one VNI: each GC lists only its own attachments, so the other
    network's ports are not stale to it."""
    a1, a2, b1 = node.add_pod("a1"), node.add_pod("a2"), node.add_pod("b1")
    ports = {pod.name: add(runtime, node, pod, network)
             for pod, network in ((a1, "lan_a"), (a2, "lan_a"), (b1, "lan_b"))}
    gc(runtime, node, "lan_a", [a1])
    assert set(aliases(node)) == {naming.bridge_name(VNI), naming.vtep_name(VNI), ports["a1"], ports["b1"]}
    gc(runtime, node, "lan_b", [])
    assert set(aliases(node)) == {naming.bridge_name(VNI), naming.vtep_name(VNI), ports["a1"]}
    gc(runtime, node, "lan_a", [])
    assert aliases(node) == {}


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_takes_either_spelling_of_the_attachment_list(runtime, node, key):
    a1, a2 = node.add_pod("a1"), node.add_pod("a2")
    kept, _ = add(runtime, node, a1, "lan_a"), add(runtime, node, a2, "lan_a")
    gc(runtime, node, "lan_a", [a1], key=key)
    assert set(aliases(node)) == {naming.bridge_name(VNI), naming.vtep_name(VNI), kept}


def test_long_network_names_are_marked_by_their_digest(runtime, node):
    network = "n" * 300
    port = add(runtime, node, node.add_pod("a1"), network)
    assert aliases(node)[port] == naming.port_mark(network) and len(naming.port_mark(network)) < 255
    gc(runtime, node, network, [])
    assert aliases(node) == {}


def test_ports_an_older_agent_made_are_left_to_del_and_marked_by_gc(runtime, node):
    """An unmarked port's network is unknown: no GC removes it until the runtime lists it as
    valid for a network (GC then marks it); DEL removes it whatever its mark."""
    a1, a2, a3 = node.add_pod("a1"), node.add_pod("a2"), node.add_pod("a3")
    old, other, third = (add(runtime, node, pod, "lan_a") for pod in (a1, a2, a3))
    clear_aliases(node, old, third)
    gc(runtime, node, "lan_a", [a2])
    assert aliases(node)[old] == "" and third in aliases(node)
    gc(runtime, node, "lan_a", [a1, a2])
    assert aliases(node)[old] == "megalos:port:lan_a"
    gc(runtime, node, "lan_a", [a2])
    assert old not in aliases(node) and third in aliases(node)
    reply = runtime.call("DEL", conf("lan_a"), container_id="c-a3", netns=a3.netns_path, ifname="net0",
                         socket=node.socket)
    assert reply.code == 0 and third not in aliases(node), reply
    assert set(aliases(node)) == {naming.bridge_name(VNI), naming.vtep_name(VNI), other}


def foreign_lan(node, vni: int) -> set[str]:
    """A bridge and a VXLAN device named as Megalos names them, made by another program."""
    bridge, vtep = naming.bridge_name(vni), naming.vtep_name(vni)
    node.run("ip", "link", "add", bridge, "type", "bridge")
    node.run("ip", "link", "add", vtep, "type", "vxlan", "id", str(vni), "local", node.ip,
             "dstport", "4789", "dev", "eth0", "nolearning")
    node.run("ip", "link", "set", vtep, "master", bridge, "up")
    node.run("ip", "link", "set", bridge, "up")
    return {bridge, vtep}


def vanish(pod) -> None:
    """The pod's netns goes without a DEL: the kernel takes its veth, the LAN is left empty."""
    sh("ip", "netns", "del", pod.netns)


def test_the_sweep_deletes_only_what_megalos_made(runtime, cluster):
    """Another program's mgbr77/mgvx77 (no pod port, as an empty LAN looks) survive sweeps that
    remove a real empty LAN, and an ADD on VNI 77 says whose they are instead of using them."""
    node = cluster.add_node("n1")
    node.start_agent("--sweep-interval", "0.2")
    theirs = foreign_lan(node, 77)
    pod = node.add_pod("gone")
    add(runtime, node, pod, "lan_a")
    vanish(pod)
    wait_until(lambda: naming.bridge_name(VNI) not in aliases(node), timeout=20, what="the empty LAN swept")
    assert set(aliases(node)) == theirs and set(aliases(node).values()) == {""}

    other = node.add_pod("p77")
    reply = runtime.call("ADD", conf("lan_x", 77), container_id="c-p77", netns=other.netns_path,
                         ifname="net0", socket=node.socket)
    assert reply.json["code"] == 103, reply
    assert reply.json["msg"] == ("mgbr77 exists but Megalos did not make it (its alias is empty, not "
                                 "megalos:bridge): remove or rename it")
    assert set(aliases(node)) == theirs and "net0" not in other.run("ip", "-br", "link").stdout


def test_an_upgraded_agent_marks_what_the_older_one_made_and_nothing_else(runtime, cluster):
    """An older agent left an empty LAN (its pod vanished) and a LAN with a pod, unmarked. The
    new agent proves them its own (name, no alias, the MAC Megalos derives for the VNI and VTEP
    address), marks them, sweeps the empty one, and removes the other at its last DEL; a
    look-alike LAN with other MACs is never marked and never removed."""
    node = cluster.add_node("n1")
    node.start_agent()
    empty, busy = node.add_pod("empty"), node.add_pod("busy")
    add(runtime, node, empty, "lan_e", vni=91)
    busy_port = add(runtime, node, busy, "lan_b", vni=93)
    node.stop_agent()
    clear_aliases(node, *aliases(node))  # as the older agent left them
    vanish(empty)
    theirs = foreign_lan(node, 92)

    node.start_agent("--sweep-interval", "0.2")
    wait_until(lambda: naming.bridge_name(91) not in aliases(node), timeout=20,
               what="the older empty LAN swept")
    assert aliases(node) == {naming.bridge_name(93): "megalos:bridge", naming.vtep_name(93): "megalos:vtep",
                             busy_port: "", **{name: "" for name in theirs}}
    reply = runtime.call("DEL", conf("lan_b", 93), container_id="c-busy", netns=busy.netns_path,
                         ifname="net0", socket=node.socket)
    assert reply.code == 0, reply
    assert aliases(node) == {name: "" for name in theirs}
