"""Malformed configs and environments, by raw exec of the installed shim against a live agent.

Each case must end in the spec's error JSON with the right code, a non-zero exit, no traceback
anywhere, and nothing left behind: no device in the node or the pod, no FDB entry.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from cni import naming, shim
from lab.runtime import CniReply, kathara_conf

pytestmark = pytest.mark.root
VNI = 4242
DROP = object()  # a config key or variable to leave out


def conf(version: str = "1.1.0", **changes) -> dict:
    base = kathara_conf("lan_a", VNI, version)
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


def exec_shim(runtime, env: dict, stdin: str) -> CniReply:
    """Exactly `env` (plus PATH) for the plugin, as a runtime builds it."""
    proc = subprocess.run([str(runtime.bin_dir / runtime.plugin)], input=stdin,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
                          capture_output=True, text=True, timeout=60)
    return CniReply(proc.returncode, proc.stdout, proc.stderr)


# -- states a case may need before it runs ----------------------------------------------------
def veth_in_pod(runtime, node, pod):
    """The pod already has a `net0` (a veth pair of its own)."""
    pod.run("ip", "link", "add", "net0", "type", "veth", "peer", "name", "other0")


# Who the requests come from (K8S_POD_NAMESPACE: a VNI belongs to one namespace).
LAB_ARGS = "IgnoreUnknown=true;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={pod}"


def vtep_on_default_port(runtime, node, pod):
    """VNI already set up on this node, by another pod of the namespace, with UDP port 4789."""
    other = node.add_pod("other")
    reply = runtime.call("ADD", conf(), container_id="c-other", netns=other.netns_path,
                         ifname="net0", socket=node.socket, args=LAB_ARGS.format(pod="other"))
    assert reply.code == 0, reply


def plain_file(runtime, node, pod):
    """A netns path that exists but is no namespace (a pin file left after its unmount)."""
    (node.cluster.run_dir / "not-a-netns").write_text("")


def fifo(runtime, node, pod):
    """A FIFO where the netns should be: opening it for reading blocks until a writer comes."""
    os.mkfifo(node.cluster.run_dir / "fifo")


def same_attachment(runtime, node, pod):
    """This very container/ifname was already added."""
    reply = runtime.call("ADD", conf(), container_id="c-bad", netns=pod.netns_path, ifname="net0",
                         socket=node.socket, args=LAB_ARGS.format(pod="p1"))
    assert reply.code == 0, reply


CASES = [
    # 4: the environment
    pytest.param({"CNI_COMMAND": DROP}, conf(), 4, None, id="env-no-command"),
    pytest.param({"CNI_COMMAND": ""}, conf(), 4, None, id="env-empty-command"),
    pytest.param({"CNI_COMMAND": "FROB"}, conf(), 4, None, id="env-unknown-verb"),
    pytest.param({"CNI_COMMAND": "add"}, conf(), 4, None, id="env-lowercase-verb"),
    pytest.param({"CNI_CONTAINERID": DROP}, conf(), 4, None, id="env-no-container-id"),
    pytest.param({"CNI_CONTAINERID": "-c1"}, conf(), 4, None, id="env-bad-container-id"),
    pytest.param({"CNI_IFNAME": DROP}, conf(), 4, None, id="env-no-ifname"),
    pytest.param({"CNI_IFNAME": "n" * 16}, conf(), 4, None, id="env-ifname-too-long"),
    pytest.param({"CNI_IFNAME": "net/0"}, conf(), 4, None, id="env-ifname-slash"),
    pytest.param({"CNI_IFNAME": ".."}, conf(), 4, None, id="env-ifname-dotdot"),
    pytest.param({"CNI_IFNAME": "é" * 8}, conf(), 4, None, id="env-ifname-16-bytes"),
    pytest.param({"CNI_IFNAME": "net%d"}, conf(), 4, None, id="env-ifname-template"),
    pytest.param({"CNI_IFNAME": "netà"}, conf(), 4, None, id="env-ifname-byte-0xa0"),
    pytest.param({"CNI_NETNS": "{nodens}"}, conf(), 4, None, id="netns-of-the-node"),
    pytest.param({"CNI_NETNS": "/proc/{agent}/ns/net"}, conf(), 4, None, id="netns-of-the-agent"),
    pytest.param({"CNI_NETNS": DROP}, conf(), 4, None, id="env-no-netns"),
    pytest.param({"CNI_NETNS": "var/run/netns/x"}, conf(), 4, None, id="env-relative-netns"),
    pytest.param({"CNI_COMMAND": "CHECK", "CNI_NETNS": DROP}, conf(), 4, None, id="env-check-no-netns"),
    pytest.param({"CNI_ARGS": "IgnoreUnknown=true;MAC=ff:ff:ff:ff:ff:ff"}, conf(), 4, None,
                 id="env-args-broadcast-mac"),
    # 6: stdin is not a JSON object
    pytest.param({}, "{not json", 6, None, id="decode-not-json"),
    pytest.param({}, "", 6, None, id="decode-empty"),
    pytest.param({}, json.dumps([conf()]), 6, None, id="decode-json-array"),
    pytest.param({}, "null", 6, None, id="decode-json-null"),
    pytest.param({}, "[" * 100_000 + "]" * 100_000, 6, None, id="decode-deep-array"),
    pytest.param({}, json.dumps(conf())[:-1] + ', "args": ' + '{"a": ' * 65 + "1" + "}" * 65 + "}", 6, None,
                 id="decode-deep-args"),
    pytest.param({}, json.dumps(conf(padding="x" * (1 << 20))), 6, None, id="decode-oversized"),
    # 7: the network config
    pytest.param({}, conf(vxlanId=DROP), 7, None, id="conf-no-vxlanid"),
    pytest.param({}, conf(vxlanId=0), 7, None, id="conf-zero-vxlanid"),
    pytest.param({}, conf(vxlanId=-5), 7, None, id="conf-negative-vxlanid"),
    pytest.param({}, conf(vxlanId=2**24), 7, None, id="conf-too-large-vxlanid"),
    pytest.param({}, conf(vxlanId="4242"), 7, None, id="conf-string-vxlanid"),
    pytest.param({}, conf(vxlanId=True), 7, None, id="conf-bool-vxlanid"),
    pytest.param({}, conf(name="-lan"), 7, None, id="conf-bad-name"),
    pytest.param({}, conf(name=DROP), 7, None, id="conf-no-name"),
    pytest.param({}, conf(type="bridge"), 7, None, id="conf-other-type"),
    pytest.param({}, conf(cniVersion=DROP), 7, None, id="conf-no-version"),
    pytest.param({}, conf(mtu=10), 7, None, id="conf-mtu-too-small"),
    pytest.param({}, conf(mtu="1400"), 7, None, id="conf-string-mtu"),
    pytest.param({}, conf(mtu=1451), 7, None, id="conf-mtu-above-underlay"),
    pytest.param({}, conf(mtu=9000), 7, None, id="conf-jumbo-mtu-above-underlay"),
    pytest.param({}, conf(vxlanPort=0), 7, None, id="conf-zero-port"),
    pytest.param({}, conf(vxlanPort=70000), 7, None, id="conf-too-large-port"),
    pytest.param({}, conf(vxlanPort="4789"), 7, None, id="conf-string-port"),
    pytest.param({}, conf(vxlanPort=5555), 7, None, id="conf-port-not-allowed"),
    pytest.param({}, conf(vxlanPort=22), 7, None, id="conf-port-ssh"),
    pytest.param({}, conf(agentSocket="/tmp/rogue.sock"), 7, None, id="conf-agent-socket-elsewhere"),
    pytest.param({}, conf(agentSocket="/run/megalos/../../tmp/rogue.sock"), 7, None,
                 id="conf-agent-socket-climbing-out"),
    pytest.param({}, conf(master="eth/0"), 7, None, id="conf-bad-master"),
    pytest.param({}, conf(master="m" * 16), 7, None, id="conf-master-too-long"),
    pytest.param({}, conf(master="nosuchdev0"), 7, None, id="conf-master-missing"),
    pytest.param({}, conf(master="lo"), 7, None, id="conf-master-without-address"),
    pytest.param({}, conf(runtimeConfig={"mac": "ff:ff:ff:ff:ff:ff"}), 7, None, id="conf-broadcast-mac"),
    pytest.param({}, conf(runtimeConfig={"mac": "not-a-mac"}), 7, None, id="conf-bad-mac"),
    pytest.param({}, conf(runtimeConfig="mac"), 7, None, id="conf-runtime-config-not-object"),
    pytest.param({}, conf(prevResult=[1]), 7, None, id="conf-prev-result-not-object"),
    # 1: versions
    pytest.param({}, conf("0.2.0"), 1, None, id="version-0.2.0"),
    pytest.param({}, conf("9.9.9"), 1, None, id="version-9.9.9"),
    pytest.param({}, conf(DROP, cniVersions=["0.1.0", "2.0.0"]), 1, None, id="version-list-none-known"),
    pytest.param({"CNI_COMMAND": "CHECK"}, conf("0.3.0"), 1, None, id="version-check-0.3.0"),
    pytest.param({"CNI_COMMAND": "CHECK"}, conf("0.3.1"), 1, None, id="version-check-0.3.1"),
    pytest.param({"CNI_COMMAND": "STATUS"}, conf("1.0.0"), 1, None, id="version-status-1.0.0"),
    pytest.param({"CNI_COMMAND": "GC"}, conf("0.4.0"), 1, None, id="version-gc-0.4.0"),
    # 3: the container is gone
    pytest.param({"CNI_NETNS": "/var/run/netns/{prefix}-gone"}, conf(), 3, None, id="netns-missing"),
    pytest.param({"CNI_NETNS": "{rundir}/not-a-netns"}, conf(), 3, plain_file, id="netns-not-a-netns"),
    pytest.param({"CNI_NETNS": "{rundir}/fifo"}, conf(), 3, fifo, id="netns-fifo"),
    pytest.param({"CNI_NETNS": "{rundir}"}, conf(), 3, None, id="netns-directory"),
    pytest.param({"CNI_NETNS": "/dev/null"}, conf(), 3, None, id="netns-device"),
    # 102, 103: the kernel already has something else
    pytest.param({}, conf(), 102, veth_in_pod, id="ifname-already-in-pod"),
    pytest.param({}, conf(), 102, same_attachment, id="attachment-exists"),
    pytest.param({}, conf(vxlanPort=8472), 103, vtep_on_default_port, id="vni-other-port"),
    pytest.param({}, conf(mtu=1400), 103, vtep_on_default_port, id="vni-other-mtu"),
    # a CHECK whose prevResult is malformed is a config error, not an internal one
    pytest.param({"CNI_COMMAND": "CHECK"}, conf(prevResult={"cniVersion": "1.1.0", "interfaces": 5}),
                 7, same_attachment, id="check-prev-result-interfaces-not-a-list"),
    pytest.param({"CNI_COMMAND": "CHECK", "CNI_ARGS": "MAC=ff:ff:ff:ff:ff:ff"}, conf(), 4, same_attachment,
                 id="check-args-broadcast-mac"),
    # GC without the list of attachments to keep would remove them all: refused, nothing removed
    pytest.param({"CNI_COMMAND": "GC"}, conf(), 7, same_attachment, id="gc-without-attachment-list"),
]


def is_group_mac(mac: str) -> bool:
    return len(mac) == 17 and bool(int(mac[:2], 16) & 1)


def snapshot(node, pod) -> tuple:
    """Node devices, pod devices, and the FDB entries someone added: not those the bridge learns,
    nor the multicast groups the kernel joins by itself (IPv6 autoconfiguration adds its
    33:33:ff:.. entries a while after a link comes up: later still on a loaded machine)."""
    fdb = {(e.get("mac"), e.get("ifname"), e.get("master"), e.get("state"))
           for e in node.fdb() if e.get("state") in ("static", "permanent")
           and not is_group_mac(e.get("mac", ""))}
    return node.link_names(), {link["ifname"] for link in json.loads(
        pod.run("ip", "-j", "link", "show").stdout)}, fdb


@pytest.mark.parametrize("variables, stdin, code, setup", CASES)
def test_bad_input_is_refused_cleanly(runtime, node, cluster, variables, stdin, code, setup):
    pod = node.add_pod("p1")
    if setup:
        setup(runtime, node, pod)
    before = snapshot(node, pod)
    log_before = node.log_path.read_text()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c-bad", "CNI_NETNS": pod.netns_path,
           "CNI_IFNAME": "net0", "CNI_PATH": str(runtime.bin_dir),
           "CNI_ARGS": LAB_ARGS.format(pod="p1"),
           "MEGALOS_AGENT_SOCKET": node.socket}
    env.update({k: v.format(prefix=cluster.prefix, rundir=cluster.run_dir, agent=node.agent.pid,
                            nodens=f"/var/run/netns/{node.netns}") if isinstance(v, str) else v
                for k, v in variables.items()})
    env = {k: v for k, v in env.items() if v is not DROP}

    reply = exec_shim(runtime, env, stdin if isinstance(stdin, str) else json.dumps(stdin))

    assert reply.code != 0, reply
    assert "Traceback" not in reply.stdout + reply.stderr and reply.stderr == "", reply
    assert reply.stdout.endswith("\n") and reply.stdout.count("\n") == 1, reply
    body = json.loads(reply.stdout)
    assert set(body) <= {"cniVersion", "code", "msg", "details"} and body["msg"], body
    assert body["code"] == code, body
    version = stdin.get("cniVersion") if isinstance(stdin, dict) else None
    if code != 4 and isinstance(version, str):
        assert body["cniVersion"] == version, body
    else:
        assert body["cniVersion"] in (version, "1.1.0"), body
    assert snapshot(node, pod) == before
    if not setup:
        assert not {n for n in node.link_names() if n.startswith(("mgp", "mgvx", "mgbr"))}
    assert "Traceback" not in node.log_path.read_text()[len(log_before):]


def test_messages_say_what_is_wrong(runtime, node):
    """A few messages checked word for word: what a user reads in `kubectl describe pod`."""
    pod = node.add_pod("p1")
    base = dict(container_id="c1", netns=pod.netns_path, ifname="net0", socket=node.socket)
    cases = [
        (conf(vxlanId=0), "vxlanId 0 is out of range (1..16777215)"),
        (conf(mtu=1451), "mtu 1451 is above what the underlay allows (1450: eth0 mtu 1500 minus "
                         "the VXLAN overhead)"),
        (conf(master="nosuchdev0"), "master: underlay device 'nosuchdev0' does not exist on this node"),
        (conf("9.9.9"), "cniVersion 9.9.9 is not supported"),
    ]
    for config, msg in cases:
        assert runtime.call("ADD", config, **base).json["msg"] == msg
    reply = runtime.call("ADD", conf(), **{**base, "netns": "/var/run/netns/nope-megalos"})
    assert reply.json["msg"] == "network namespace /var/run/netns/nope-megalos does not exist"


def test_del_of_bad_input_is_refused_too_but_del_of_unknown_is_fine(runtime, node):
    pod = node.add_pod("p1")
    base = dict(container_id="c1", netns=pod.netns_path, ifname="net0", socket=node.socket)
    assert runtime.call("DEL", conf(vxlanId=0), **base).json["code"] == 7
    assert runtime.call("DEL", "[]", **base).json["code"] == 6
    assert runtime.call("DEL", conf(), **{**base, "ifname": "x" * 16}).json["code"] == 4
    reply = runtime.call("DEL", conf(), **base)
    assert (reply.code, reply.stdout) == (0, ""), reply
    assert not {n for n in node.link_names() if n.startswith("mg")}


def test_add_with_a_vni_conflict_keeps_the_existing_lan_working(runtime, node):
    a, b = node.add_pod("a"), node.add_pod("b")
    assert runtime.call("ADD", conf(), container_id="c-a", netns=a.netns_path, ifname="net0",
                        socket=node.socket).code == 0
    reply = runtime.call("ADD", conf(vxlanPort=8472), container_id="c-b", netns=b.netns_path,
                         ifname="net0", socket=node.socket)
    assert reply.json["code"] == 103 and "4789" in reply.json["msg"] and "8472" in reply.json["msg"]
    vtep = next(link for link in node.links() if link["ifname"] == naming.vtep_name(VNI))
    assert vtep["linkinfo"]["info_data"]["port"] == 4789
    assert runtime.call("DEL", conf(), container_id="c-a", netns=a.netns_path, ifname="net0",
                        socket=node.socket).code == 0
    assert not {n for n in node.link_names() if n.startswith("mg")}


def test_messages_of_what_a_tenant_cannot_do(runtime, node):
    pod = node.add_pod("p1")
    base = dict(container_id="c1", netns=pod.netns_path, ifname="net0", socket=node.socket)
    reply = runtime.call("ADD", conf(vxlanPort=5555), **base)
    assert reply.json["msg"] == ("vxlanPort 5555 is not allowed on this node (allowed: 4789, 8472: "
                                 "megalos-agent --vxlan-ports)")
    reply = runtime.call("ADD", conf(), **{**base, "netns": f"/var/run/netns/{node.netns}"})
    assert reply.json["msg"] == (f"CNI_NETNS: /var/run/netns/{node.netns} is the node's own network "
                                 "namespace, not a pod's")
    reply = runtime.call("GC", conf(), socket=node.socket)
    assert reply.json["msg"] == ("GC needs the list of valid attachments (cni.dev/valid-attachments): "
                                 "without it every attachment of the network would look stale")


def test_a_fifo_for_a_netns_does_not_hold_up_the_lan(runtime, node, cluster):
    """The agent opens CNI_NETNS holding no lock and without blocking: a FIFO there (which an
    open for reading waits on until a writer comes) is refused at once, and the next ADD on the
    same LAN goes through."""
    os.mkfifo(cluster.run_dir / "fifo")
    reply = runtime.call("ADD", conf(), container_id="c-fifo", netns=str(cluster.run_dir / "fifo"),
                         ifname="net0", socket=node.socket, timeout=20)
    assert reply.json["code"] == 3 and "is not a network namespace" in reply.json["msg"], reply
    pod = node.add_pod("p1")
    reply = runtime.call("ADD", conf(), container_id="c1", netns=pod.netns_path, ifname="net0",
                         socket=node.socket, timeout=20)
    assert reply.code == 0, reply


def raw_request(socket_path: str, env: dict, stdin: bytes) -> tuple[int, dict]:
    """One request on the agent's socket as any client could send it, with no shim to filter it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        sock.sendall(shim.encode_request({k.encode(): v.encode() for k, v in env.items()}, stdin))
        sock.shutdown(socket.SHUT_WR)
        code, out = shim.decode_reply(b"".join(iter(lambda: sock.recv(65536), b"")))
    return code, json.loads(out)


REFUSED_BY_THE_SHIM = [
    (b"[" * 100_000 + b"]" * 100_000, 6, shim.TOO_DEEP),
    (json.dumps(conf())[:-1].encode() + b', "runtimeConfig": ' + b'{"a": ' * 70 + b"1" + b"}" * 70 + b"}",
     6, shim.TOO_DEEP),
    (json.dumps(conf(padding="x" * shim.MAX_STDIN)).encode(), 6, shim.TOO_LARGE),
    (json.dumps(conf(agentSocket="/tmp/rogue.sock")).encode(), 7,
     shim.SOCKET_RULE + ", not '/tmp/rogue.sock'"),
]


def test_the_agent_refuses_what_the_shim_refuses(node):
    """Without a shim in front (an older one, any client of the socket): code 6 or 7 from the
    agent itself, never a RecursionError as an internal error, and nothing made."""
    pod = node.add_pod("p1")
    before = node.link_names()
    for stdin, code, msg in REFUSED_BY_THE_SHIM:
        for command in ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"):
            env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": pod.netns_path,
                   "CNI_IFNAME": "net0"}
            exit_code, body = raw_request(node.socket, env, stdin)
            if command == "VERSION" and code == 7:
                assert exit_code == 0, body  # VERSION judges no more than that the config decodes
                continue
            assert (exit_code, body["code"], body["msg"]) == (1, code, msg), (command, body)
    assert node.link_names() == before
    assert "Traceback" not in node.log_path.read_text()


def test_vxlan_ports_come_from_the_agent_option(runtime, cluster):
    strict, wide = cluster.add_node("n1"), cluster.add_node("n2")
    strict.start_agent("--vxlan-ports", "4789")
    wide.start_agent("--vxlan-ports", "4789,5555")
    for node, port, allowed in [(strict, 8472, False), (strict, 4789, True), (wide, 5555, True),
                                (wide, 8472, False)]:
        pod = node.add_pod(f"p{port}")
        reply = runtime.call("ADD", conf(vxlanPort=port, vxlanId=port), container_id=f"c{port}",
                             netns=pod.netns_path, ifname="net0", socket=node.socket)
        if allowed:
            assert reply.code == 0, reply
            continue
        ports = "4789" if node is strict else "4789, 5555"
        assert reply.json["code"] == 7 and f"(allowed: {ports}:" in reply.json["msg"], reply
        assert not {n for n in node.link_names() if n.endswith(str(port))}
