"""Every CNI verb, across every spec version, by raw exec of the installed shim, on namespaces."""
from __future__ import annotations

import pytest

from cni import naming
from lab.runtime import kathara_conf
from tests.conftest import ALL_VERSIONS

pytestmark = pytest.mark.root
VNI = 16777215  # the largest: above 65535 on purpose


def add(runtime, node, pod, version="1.1.0", ifname="net0", vni=VNI, args="", **extra):
    return runtime.call("ADD", kathara_conf("lan_a", vni, version, **extra),
                        container_id=f"c-{pod.name}", netns=pod.netns_path, ifname=ifname,
                        args=args, socket=node.socket)


def delete(runtime, node, pod, version="1.1.0", ifname="net0", vni=VNI, netns=None):
    return runtime.call("DEL", kathara_conf("lan_a", vni, version), container_id=f"c-{pod.name}",
                        netns=pod.netns_path if netns is None else netns, ifname=ifname,
                        socket=node.socket)


def megalos_links(node) -> set[str]:
    return {n for n in node.link_names() if n.startswith("mg")}


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_add_then_del_in_every_version(runtime, node, version):
    pod = node.add_pod("p1")
    reply = add(runtime, node, pod, version, args="IgnoreUnknown=true;K8S_POD_NAME=p1;MAC=02:aa:00:00:00:01")
    assert reply.code == 0, reply
    result = reply.json
    assert result["cniVersion"] == version
    host, inside = result["interfaces"]
    assert host["name"] == naming.port_name("c-p1", "net0") and "sandbox" not in host
    assert inside == {"name": "net0", "mac": "02:aa:00:00:00:01", "sandbox": pod.netns_path,
                      **({"mtu": 1450} if version == "1.1.0" else {})}
    assert ("ips" in result) == (version < "1.0.0")
    link = pod.link("net0")
    assert link["address"] == "02:aa:00:00:00:01" and link["mtu"] == 1450
    assert "UP" in link["flags"]
    assert megalos_links(node) == {naming.vtep_name(VNI), naming.bridge_name(VNI), host["name"]}
    vtep = next(link for link in node.links() if link["ifname"] == naming.vtep_name(VNI))
    data = vtep["linkinfo"]["info_data"]
    assert (data["id"], data["port"], data["local"], data["learning"]) == (VNI, 4789, node.ip, False)
    port = vtep["linkinfo"]["info_slave_data"]  # the bridge learns nothing from the VTEP
    assert (vtep["linkinfo"]["info_slave_kind"], port["learning"]) == ("bridge", False)
    static = [e for e in node.fdb(host["name"]) if "static" in e.get("state", "")]
    assert [e["mac"] for e in static] == ["02:aa:00:00:00:01"]

    assert delete(runtime, node, pod, version).code == 0
    assert megalos_links(node) == set()
    assert "net0" not in pod.run("ip", "-br", "link").stdout
    again = delete(runtime, node, pod, version)
    assert again.code == 0, again


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_check_in_every_version(runtime, node, version):
    pod = node.add_pod("p1")
    assert add(runtime, node, pod, version, args="MAC=02:aa:00:00:00:02").code == 0
    check = runtime.call("CHECK", kathara_conf("lan_a", VNI, version), container_id="c-p1",
                         netns=pod.netns_path, ifname="net0", args="MAC=02:aa:00:00:00:02",
                         socket=node.socket)
    if version < "0.4.0":
        assert check.code == 1 and check.json["code"] == 1, check
        return
    assert check.code == 0, check
    pod.run("ip", "link", "set", "net0", "mtu", "1400")
    broken = runtime.call("CHECK", kathara_conf("lan_a", VNI, version), container_id="c-p1",
                          netns=pod.netns_path, ifname="net0", args="MAC=02:aa:00:00:00:02",
                          socket=node.socket)
    assert broken.code == 1 and broken.json["code"] == 101
    assert "MTU 1400" in broken.json["msg"]


def test_check_compares_mac_with_prev_result(runtime, node):
    pod = node.add_pod("p1")
    result = add(runtime, node, pod, "1.0.0").json
    conf = kathara_conf("lan_a", VNI, "1.0.0", prevResult=result)
    assert runtime.call("CHECK", conf, container_id="c-p1", netns=pod.netns_path, ifname="net0",
                        socket=node.socket).code == 0
    pod.run("ip", "link", "set", "net0", "address", "02:bb:00:00:00:09")
    reply = runtime.call("CHECK", conf, container_id="c-p1", netns=pod.netns_path, ifname="net0",
                         socket=node.socket)
    assert reply.json["code"] == 101 and "02:bb:00:00:00:09" in reply.json["msg"]


@pytest.mark.parametrize("check_mac", ["02:AA:00:00:00:05", "02-aa-00-00-00-05", "02:aA:00:00:00:05"])
def test_check_reads_the_mac_argument_as_add_does(runtime, node, check_mac):
    """The runtime passes the same MAC= to ADD and CHECK; any spelling ADD accepts, CHECK
    compares as the same address."""
    pod = node.add_pod("p1")
    assert add(runtime, node, pod, args="MAC=02-AA-00-00-00-05").code == 0
    assert pod.link("net0")["address"] == "02:aa:00:00:00:05"
    check = runtime.call("CHECK", kathara_conf("lan_a", VNI, "1.1.0"), container_id="c-p1",
                         netns=pod.netns_path, ifname="net0", args=f"MAC={check_mac}", socket=node.socket)
    assert check.code == 0, check


def test_check_of_missing_attachment_fails(runtime, node):
    pod = node.add_pod("p1")
    assert add(runtime, node, pod, "1.0.0").code == 0
    reply = runtime.call("CHECK", kathara_conf("lan_a", VNI, "1.0.0"), container_id="c-p1",
                         netns=pod.netns_path, ifname="net7", socket=node.socket)
    assert reply.json["code"] == 101 and "missing" in reply.json["msg"]


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_version_and_status(runtime, node, version):
    reply = runtime.call("VERSION", {"cniVersion": version}, socket=node.socket)
    assert reply.code == 0
    assert reply.json == {"cniVersion": version, "supportedVersions": list(ALL_VERSIONS)}
    status = runtime.call("STATUS", kathara_conf("lan_a", VNI, version), socket=node.socket)
    if version == "1.1.0":
        assert status.code == 0 and status.stdout.strip() == "", status
    else:
        assert status.json["code"] == 1, status


def test_status_without_agent_is_code_50(runtime, tmp_path):
    status = runtime.call("STATUS", kathara_conf("lan_a", VNI, "1.1.0"), socket=str(tmp_path / "no.sock"))
    assert status.code == 1 and status.json["code"] == 50


def test_add_without_agent_is_code_11_naming_the_socket(runtime, tmp_path):
    sock = str(tmp_path / "gone.sock")
    reply = runtime.call("ADD", kathara_conf("lan_a", VNI), container_id="c1", netns="/var/run/netns/x",
                         ifname="net0", socket=sock)
    assert reply.code == 1 and reply.json["code"] == 11 and sock in reply.json["msg"]
    assert reply.json["cniVersion"] == "0.3.0"


def test_gc_removes_attachments_not_listed(runtime, node):
    pods = [node.add_pod(f"p{i}") for i in range(3)]
    for pod in pods:
        assert add(runtime, node, pod).code == 0
    keep = [{"containerID": "c-p0", "ifname": "net0"}, {"containerID": "c-p2", "ifname": "net0"}]
    reply = runtime.call("GC", kathara_conf("lan_a", VNI, "1.1.0", **{"cni.dev/valid-attachments": keep}),
                         socket=node.socket)
    assert reply.code == 0, reply
    assert megalos_links(node) == {naming.vtep_name(VNI), naming.bridge_name(VNI),
                                   naming.port_name("c-p0", "net0"), naming.port_name("c-p2", "net0")}
    assert "net0" not in pods[1].run("ip", "-br", "link").stdout
    reply = runtime.call("GC", kathara_conf("lan_a", VNI, "1.1.0", **{"cni.dev/valid-attachments": []}),
                         socket=node.socket)
    assert reply.code == 0 and megalos_links(node) == set()


def test_two_pods_on_one_lan_talk_and_other_lans_do_not(runtime, node):
    a, b, c = (node.add_pod(n) for n in ("a", "b", "c"))
    assert add(runtime, node, a, vni=100).code == 0
    assert add(runtime, node, b, vni=100).code == 0
    assert add(runtime, node, c, vni=200).code == 0
    a.set_ip("net0", "10.1.0.1/24")
    b.set_ip("net0", "10.1.0.2/24")
    c.set_ip("net0", "10.1.0.3/24")
    assert a.ping("10.1.0.2", count=2)
    assert not a.ping("10.1.0.3", timeout=1)
    assert not c.ping("10.1.0.2", timeout=1)


def test_del_when_netns_is_already_gone(runtime, node, cluster):
    pod = node.add_pod("p1")
    assert add(runtime, node, pod).code == 0
    pod.run("true")
    import subprocess
    subprocess.run(["ip", "netns", "del", pod.netns], check=True)
    reply = delete(runtime, node, pod)
    assert reply.code == 0, reply
    assert megalos_links(node) == set()
    assert delete(runtime, node, pod, netns="").code == 0


def test_last_del_keeps_lan_while_a_pod_remains(runtime, node):
    a, b = node.add_pod("a"), node.add_pod("b")
    assert add(runtime, node, a).code == 0 and add(runtime, node, b).code == 0
    assert delete(runtime, node, a).code == 0
    assert naming.vtep_name(VNI) in node.link_names()
    assert delete(runtime, node, b).code == 0
    assert megalos_links(node) == set()


def test_mac_from_runtime_config_wins(runtime, node):
    pod = node.add_pod("p1")
    reply = add(runtime, node, pod, args="MAC=02:aa:00:00:00:05",
                runtimeConfig={"mac": "02:AA:00:00:00:06"})
    assert reply.json["interfaces"][1]["mac"] == "02:aa:00:00:00:06"
    assert pod.link("net0")["address"] == "02:aa:00:00:00:06"


def test_mtu_and_port_options(runtime, node):
    pod = node.add_pod("p1")
    reply = add(runtime, node, pod, mtu=1400, vxlanPort=8472)
    assert reply.code == 0, reply
    assert pod.link("net0")["mtu"] == 1400
    vtep = next(link for link in node.links() if link["ifname"] == naming.vtep_name(VNI))
    assert vtep["linkinfo"]["info_data"]["port"] == 8472


def test_kathara_nads_work_unchanged(runtime, node):
    """The exact spec.config strings Kathara's own code writes, fed to the plugin as-is."""
    from lab.kathara import lab_nads
    _, nads = lab_nads({"A": ["pc1", "pc2"], "lan_b": ["pc1"]})
    pod = node.add_pod("pc1")
    for index, nad in enumerate(sorted(nads.values(), key=lambda n: n.link)):
        reply = runtime.call("ADD", nad.raw_config, container_id="c-pc1", netns=pod.netns_path,
                             ifname=f"net{index}", args="IgnoreUnknown=true;K8S_POD_NAMESPACE=lab;K8S_POD_NAME=pc1",
                             socket=node.socket)
        assert reply.code == 0, reply
        assert naming.vtep_name(nad.config["vxlanId"]) in node.link_names()
    for index, nad in enumerate(sorted(nads.values(), key=lambda n: n.link)):
        assert runtime.call("DEL", nad.raw_config, container_id="c-pc1", netns=pod.netns_path,
                            ifname=f"net{index}", socket=node.socket).code == 0
    assert megalos_links(node) == set()


def test_agent_start_turns_off_learning_an_earlier_version_left_on(runtime, node):
    """VTEPs made before bridge learning went off on them learn until the agent restarts."""
    pod = node.add_pod("p1")
    assert add(runtime, node, pod).code == 0
    vtep = naming.vtep_name(VNI)

    def learning() -> bool:
        link = next(link for link in node.links() if link["ifname"] == vtep)
        return link["linkinfo"]["info_slave_data"]["learning"]
    node.run("bridge", "link", "set", "dev", vtep, "learning", "on")
    assert learning() is True
    node.stop_agent()
    node.start_agent()
    assert learning() is False
    assert delete(runtime, node, pod).code == 0
