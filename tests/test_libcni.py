"""The plugin through libcni, the library Multus and containerd call plugins with.

tests/libcni/driver.go is built once per session against the libcni its go.mod pins (1.3.0,
from the Go module proxy; the module cache keeps it after the first build). libcni finds
`megalos` in the CNI bin dir, injects name, cniVersion, prevResult (from its own result cache),
runtimeConfig and GC's valid attachments, execs the shim (which reaches the node's agent through
MEGALOS_AGENT_SOCKET, inherited by the plugin), and parses the result: so these tests see the
plugin exactly as a libcni-based runtime does, STATUS and GC included.

The tests ask the driver what its libcni supports (versions, verbs, `cniVersions`) and assert what
a runtime built on it would see, so they also hold for an older libcni (Debian's 1.1.2 knows
spec versions up to 1.0.0 and has no STATUS or GC).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from cni import naming
from cni.spec import version_tuple
from lab.runtime import CniReply
from tests.conftest import ALL_VERSIONS

pytestmark = pytest.mark.root
VNI = 4242
DRIVER_DIR = Path(__file__).with_name("libcni")
GO = Path("/usr/local/go/bin/go")  # libcni 1.3 needs Go 1.21; Debian 12's golang-go is 1.19
MULTUS_ARGS = ("IgnoreUnknown=true;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={pod};"
               "K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID=0f2b6a4e")


@dataclass(frozen=True)
class Driver:
    path: Path
    info: dict  # what this libcni supports: {"supportedVersions": [...], "verbs": [...], ...}

    @property
    def versions(self) -> list[str]:
        return self.info["supportedVersions"]


@pytest.fixture(scope="session")
def cnidriver(tmp_path_factory) -> Driver:
    """tests/libcni/driver.go built once; skipped only when there is no Go toolchain at all."""
    go = str(GO) if GO.exists() else shutil.which("go")
    if go is None:
        pytest.skip(f"no Go toolchain (expected at {GO})")
    out = tmp_path_factory.mktemp("libcni")
    env = {**os.environ, "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "local"}
    if "HOME" not in env and "GOCACHE" not in env:
        env["GOCACHE"] = str(out / "gocache")
    binary = out / "cnidriver"
    build = subprocess.run([go, "build", "-o", str(binary), "."], cwd=DRIVER_DIR, env=env,
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"building {DRIVER_DIR}/driver.go failed:\n{build.stderr}")
    info = subprocess.run([str(binary), "-verb", "INFO"], capture_output=True, text=True, check=True)
    return Driver(binary, json.loads(info.stdout))


@dataclass
class Libcni:
    """One runtime's view: the driver, the CNI bin dir holding `megalos`, a private result cache."""

    driver: Driver
    bin_dir: Path
    work: Path

    @property
    def cache(self) -> Path:
        return self.work / "cache"

    def call(self, verb: str, conf: dict | str, container_id: str = "", netns: str = "",
             ifname: str = "", args: str = "", caps: dict | None = None, socket: str = "",
             valid: list[dict] | None = None) -> CniReply:
        conf_file = self.work / "net.conf"
        conf_file.write_text(conf if isinstance(conf, str) else json.dumps(conf))
        argv = [str(self.driver.path), "-verb", verb, "-conf", str(conf_file), "-id", container_id,
                "-netns", netns, "-ifname", ifname, "-args", args, "-path", str(self.bin_dir),
                "-cache", str(self.cache)]
        if caps is not None:
            argv += ["-cap", json.dumps(caps)]
        if valid is not None:
            argv += ["-valid", json.dumps(valid)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if socket:
            env["MEGALOS_AGENT_SOCKET"] = socket
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        return CniReply(proc.returncode, proc.stdout, proc.stderr)

    def cached(self, network: str, container_id: str, ifname: str) -> Path:
        return self.cache / "results" / f"{network}-{container_id}-{ifname}"


@pytest.fixture
def libcni(cnidriver, runtime, tmp_path) -> Libcni:
    return Libcni(cnidriver, runtime.bin_dir, tmp_path)


def megalos(vni: int = VNI, **extra) -> dict:
    """One plugin entry as Kathara writes it (name and cniVersion come from the list)."""
    return {"type": "megalos", "suffix": "abcdef", "vxlanId": vni, **extra}


def conflist(version: str | None, *plugins: dict, name: str = "lan_a", **top) -> dict:
    head = {"cniVersion": version} if version else {}
    return {**head, "name": name, "plugins": list(plugins) or [megalos()], **top}


def megalos_links(node) -> set[str]:
    return {n for n in node.link_names() if n.startswith("mg")}


def assert_attached(node, pod, interface: dict, mac: str, ifname: str = "net0", vni: int = VNI):
    """The result's sandbox interface, and the kernel, both show the pod attached to the VNI."""
    assert interface["name"] == ifname and interface["sandbox"] == pod.netns_path
    assert interface["mac"] == mac
    link = pod.link(ifname)
    assert (link["address"], link["mtu"], link["linkinfo"]["info_kind"]) == (mac, 1450, "veth")
    assert "UP" in link["flags"]
    port = naming.port_name(f"c-{pod.name}", ifname)
    host = next(link for link in node.links() if link["ifname"] == port)
    assert host["master"] == naming.bridge_name(vni) and host["mtu"] == 1450


def sandbox_interface(result: dict) -> dict:
    (inside,) = [itf for itf in result["interfaces"] if itf.get("sandbox")]
    return inside


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_add_check_del_in_every_version(libcni, node, version):
    pod = node.add_pod("p1")
    call = dict(container_id="c-p1", netns=pod.netns_path, ifname="net0", socket=node.socket)
    conf = conflist(version)
    if version not in libcni.driver.versions:
        return _assert_result_version_unknown_to_libcni(libcni, node, pod, conf, call, version)

    added = libcni.call("ADD", conf, args=MULTUS_ARGS.format(pod="p1", cid="c-p1"), **call)
    assert added.code == 0, added
    result = added.json
    assert result["cniVersion"] == version
    host, inside = result["interfaces"]
    assert host == {"name": naming.port_name("c-p1", "net0"), "mac": host["mac"]}
    assert_attached(node, pod, inside, inside["mac"])
    assert libcni.cached("lan_a", "c-p1", "net0").exists()

    checked = libcni.call("CHECK", conf, **call)
    if version < "0.4.0":  # libcni refuses before calling the plugin
        assert checked.code == 1 and checked.json["code"] == 0, checked
        assert "does not support the CHECK command" in checked.json["msg"]
    else:
        assert checked.code == 0, checked
        # The MAC is random: only libcni's cached prevResult tells CHECK what it should be.
        pod.run("ip", "link", "set", "net0", "address", "02:bb:00:00:00:09")
        broken = libcni.call("CHECK", conf, **call)
        assert broken.code == 1 and broken.json["code"] == 101, broken
        assert f"expected {inside['mac']}" in broken.json["msg"]

    deleted = libcni.call("DEL", conf, **call)
    assert deleted.code == 0 and deleted.stdout == "", deleted
    assert megalos_links(node) == set()
    assert "net0" not in pod.run("ip", "-br", "link").stdout
    assert not libcni.cached("lan_a", "c-p1", "net0").exists()
    again = libcni.call("DEL", conf, **call)
    assert again.code == 0, again


def _assert_result_version_unknown_to_libcni(libcni, node, pod, conf, call, version):
    """A config version newer than libcni: the plugin attaches the pod, libcni rejects the result.

    What a runtime on this libcni then does is DEL, which must clean up (no cached result).
    """
    added = libcni.call("ADD", conf, **call)
    assert added.code == 1 and added.json["code"] == 0, added
    assert f'unsupported CNI result version "{version}"' in added.json["msg"]
    assert "net0" in pod.run("ip", "-br", "link").stdout  # the plugin did its part
    assert libcni.call("DEL", conf, **call).code == 0
    assert megalos_links(node) == set() and "net0" not in pod.run("ip", "-br", "link").stdout
    assert libcni.call("DEL", conf, **call).code == 0


def test_conflist_with_cni_versions(libcni, node):
    """`cniVersions` beside `cniVersion`: a libcni that knows the key picks the highest version
    both sides support; an older one (this 1.1.2) uses `cniVersion`. Either way it works."""
    pod = node.add_pod("p1")
    call = dict(container_id="c-p1", netns=pod.netns_path, ifname="net0", socket=node.socket)
    conf = conflist("1.0.0", cniVersions=["0.4.0", "1.0.0", "1.1.0"])
    if libcni.driver.info["cniVersions"]:
        picked = max((v for v in conf["cniVersions"] if v in libcni.driver.versions), key=version_tuple)
    else:
        picked = conf["cniVersion"]
    added = libcni.call("ADD", conf, **call)
    assert added.code == 0, added
    assert added.json["cniVersion"] == picked
    assert_attached(node, pod, sandbox_interface(added.json), sandbox_interface(added.json)["mac"])
    assert libcni.call("CHECK", conf, **call).code == 0
    assert libcni.call("DEL", conf, **call).code == 0
    assert megalos_links(node) == set()


def test_conflist_with_only_cni_versions(libcni, node):
    pod = node.add_pod("p1")
    call = dict(container_id="c-p1", netns=pod.netns_path, ifname="net0", socket=node.socket)
    conf = conflist(None, cniVersions=["0.4.0", "1.0.0"])
    added = libcni.call("ADD", conf, **call)
    if libcni.driver.info["cniVersions"]:
        assert added.code == 0 and added.json["cniVersion"] == "1.0.0", added
        assert libcni.call("DEL", conf, **call).code == 0
    else:
        # libcni 1.1.2 ignores the key and injects "cniVersion": "": the plugin must refuse
        # cleanly (code 1, incompatible version) and leave nothing behind.
        assert added.code == 1 and added.json["code"] == 1, added
        assert megalos_links(node) == set()
        assert libcni.call("DEL", conf, **call).json["code"] == 1
    assert megalos_links(node) == set()


def test_mac_capability(libcni, node):
    """runtimeConfig.mac reaches the plugin only when its config declares the capability,
    and wins over CNI_ARGS MAC= (Multus sends both)."""
    declared, undeclared = node.add_pod("p1"), node.add_pod("p2")
    args = "IgnoreUnknown=true;MAC=02:aa:00:00:00:05"
    caps = {"mac": "02:AA:00:00:00:06"}
    with_cap = conflist("1.0.0", megalos(capabilities={"mac": True}))
    reply = libcni.call("ADD", with_cap, container_id="c-p1", netns=declared.netns_path,
                        ifname="net0", args=args, caps=caps, socket=node.socket)
    assert reply.code == 0, reply
    assert_attached(node, declared, sandbox_interface(reply.json), "02:aa:00:00:00:06")

    without = conflist("1.0.0")
    reply = libcni.call("ADD", without, container_id="c-p2", netns=undeclared.netns_path,
                        ifname="net0", args=args, caps=caps, socket=node.socket)
    assert reply.code == 0, reply
    assert_attached(node, undeclared, sandbox_interface(reply.json), "02:aa:00:00:00:05")

    for pod, conf in ((declared, with_cap), (undeclared, without)):
        call = dict(container_id=f"c-{pod.name}", netns=pod.netns_path, ifname="net0",
                    args=args, caps=caps, socket=node.socket)
        assert libcni.call("CHECK", conf, **call).code == 0
        assert libcni.call("DEL", conf, **call).code == 0
    assert megalos_links(node) == set()


def test_kathara_nads_as_multus_calls_them(libcni, node):
    """Kathara's exact spec.config strings, as single configs (libcni's *Network calls, which
    Multus makes for a NAD that is not a list), with Multus's CNI_ARGS and a lab-fixed MAC."""
    from lab.kathara import lab_nads
    _, nads = lab_nads({"A": ["pc1", "pc2"], "lan_b": ["pc1"]})
    pod = node.add_pod("pc1")
    ordered = sorted(nads.values(), key=lambda n: n.link)
    for index, nad in enumerate(ordered):
        validated = libcni.call("VALIDATE", nad.raw_config, socket=node.socket)
        assert validated.code == 0, validated
        mac = f"02:aa:00:00:01:0{index}"
        reply = libcni.call("ADD", nad.raw_config, container_id="c-pc1", netns=pod.netns_path,
                            ifname=f"net{index}", caps={"mac": mac},
                            args=MULTUS_ARGS.format(pod="pc1", cid="c-pc1") + f";MAC={mac}",
                            socket=node.socket)
        assert reply.code == 0, reply
        assert reply.json["cniVersion"] == "0.3.0"
        assert_attached(node, pod, sandbox_interface(reply.json), mac, ifname=f"net{index}",
                        vni=nad.config["vxlanId"])
    assert megalos_links(node) >= {naming.vtep_name(nad.config["vxlanId"]) for nad in ordered}
    for index, nad in enumerate(ordered):
        reply = libcni.call("DEL", nad.raw_config, container_id="c-pc1", netns=pod.netns_path,
                            ifname=f"net{index}", socket=node.socket)
        assert reply.code == 0, reply
    assert megalos_links(node) == set()


def test_version_info_and_validation(libcni, node):
    """GetVersionInfo execs VERSION; ValidateNetworkList checks the version and lists capabilities."""
    conf = conflist("1.0.0", megalos(capabilities={"mac": True}))
    info = libcni.call("VERSION", conf, socket=node.socket)
    assert info.code == 0 and info.json["supportedVersions"] == list(ALL_VERSIONS), info
    valid = libcni.call("VALIDATE", conf, socket=node.socket)
    assert valid.code == 0 and valid.json["capabilities"] == ["mac"], valid
    unsupported = libcni.call("VALIDATE", conflist("0.2.0"), socket=node.socket)
    assert unsupported.code == 1 and 'does not support config version "0.2.0"' in unsupported.json["msg"]


def _requires(libcni, verb: str):
    if verb not in libcni.driver.info["verbs"]:
        pytest.fail(f"this libcni (spec <= {libcni.driver.versions[-1]}) has no {verb}: "
                    "tests/libcni/go.mod pins one that has")


def test_status_through_libcni(libcni, node, tmp_path):
    """GetStatusNetworkList: 1.1.0 lists are asked (the agent answers: ready); older lists are
    not asked at all (libcni returns success without calling the plugin); no agent: code 50."""
    _requires(libcni, "STATUS")
    assert libcni.call("STATUS", conflist("1.1.0"), socket=node.socket).code == 0
    down = libcni.call("STATUS", conflist("1.1.0"), socket=str(tmp_path / "no-agent.sock"))
    assert down.code == 1 and down.json["code"] == 50, down
    assert libcni.call("STATUS", conflist("1.0.0"), socket=str(tmp_path / "no-agent.sock")).code == 0


def test_gc_through_libcni(libcni, node):
    """GCNetworkList injects cni.dev/valid-attachments: the attachments not listed go, the listed
    ones stay; with none valid, the LAN's devices go too."""
    _requires(libcni, "GC")
    pods = [node.add_pod(f"p{i}") for i in range(3)]
    conf = conflist("1.1.0")
    for pod in pods:
        reply = libcni.call("ADD", conf, container_id=f"c-{pod.name}", netns=pod.netns_path,
                            ifname="net0", socket=node.socket)
        assert reply.code == 0, reply
    keep = [{"containerID": "c-p0", "ifname": "net0"}, {"containerID": "c-p2", "ifname": "net0"}]
    reply = libcni.call("GC", conf, valid=keep, socket=node.socket)
    assert reply.code == 0, reply
    assert megalos_links(node) == {naming.vtep_name(VNI), naming.bridge_name(VNI),
                                   naming.port_name("c-p0", "net0"), naming.port_name("c-p2", "net0")}
    assert "net0" not in pods[1].run("ip", "-br", "link").stdout
    assert libcni.call("GC", conf, valid=[], socket=node.socket).code == 0
    assert megalos_links(node) == set()
