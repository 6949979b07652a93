"""cni/config.py with plain values: Kathara's NAD config, each field's validation, defaults."""
from __future__ import annotations

import json

import pytest

from base.primitives import MAX_VNI
from cni.config import DEFAULT_AGENT_SOCKET, DEFAULT_VXLAN_PORT, NetConf, parse_netconf
from cni.spec import CniError
from lab.kathara import lab_nads
from lab.runtime import kathara_conf
from tests.conftest import ALL_VERSIONS


def invalid(conf: dict) -> CniError:
    """The error parse_netconf raises for `conf`, asserting it is the spec's code 7."""
    with pytest.raises(CniError) as info:
        parse_netconf(conf)
    assert info.value.code == 7, info.value.msg
    return info.value


@pytest.fixture(scope="module")
def kathara_nads():
    _, nads = lab_nads({"A": ["pc1", "pc2"], "lan_b": ["pc1", "r1"], "Z9": ["r1"]})
    return nads


# -- Kathara's config, exactly as its Kubernetes manager writes it ----------------------------
def test_kathara_nads_parse_unchanged(kathara_nads):
    assert len(kathara_nads) == 3
    for nad in kathara_nads.values():
        assert set(nad.config) == {"cniVersion", "name", "type", "suffix", "vxlanId"}
        conf = parse_netconf(json.loads(nad.raw_config))
        assert conf == NetConf(cni_version="0.3.0", name=nad.link.lower(), vni=nad.config["vxlanId"],
                               suffix=nad.config["suffix"])
        assert 1 <= conf.vni <= MAX_VNI


def test_kathara_vnis_are_distinct(kathara_nads):
    vnis = [parse_netconf(nad.config).vni for nad in kathara_nads.values()]
    assert len(set(vnis)) == len(vnis)


def test_defaults():
    conf = parse_netconf(kathara_conf("lan_a", 100))
    assert (conf.mtu, conf.vxlan_port, conf.agent_socket, conf.master, conf.runtime_mac,
            conf.prev_result, conf.valid_attachments) == (0, 4789, "/run/megalos/agent.sock", "",
                                                          "", None, None)
    assert (DEFAULT_VXLAN_PORT, DEFAULT_AGENT_SOCKET) == (4789, "/run/megalos/agent.sock")


def test_kathara_link_names_pass_the_spec_name_rule():
    """Kathara lowercases the link name; libcni (in Multus) checks the same rule as parse_netconf
    before it runs the plugin, so a name refused here never reaches a plugin anyway."""
    _, nads = lab_nads({"LAN_1": ["pc1"], "x9": ["pc1"], "0": ["pc2"]})
    assert sorted(parse_netconf(nad.config).name for nad in nads.values()) == ["0", "lan_1", "x9"]


# -- versions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_every_version(version):
    assert parse_netconf(kathara_conf("lan_a", 7, version)).cni_version == version


def test_cni_versions_list():
    conf = kathara_conf("lan_a", 7)
    del conf["cniVersion"]
    conf["cniVersions"] = ["0.3.1", "1.0.0", "5.0.0"]
    assert parse_netconf(conf).cni_version == "1.0.0"


def test_unsupported_version_is_code_1():
    with pytest.raises(CniError) as info:
        parse_netconf(kathara_conf("lan_a", 7, "0.2.0"))
    assert info.value.code == 1


# -- each field -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "lan_a", "Lan-B.1", "9", "x" * 200])
def test_good_names(name):
    assert parse_netconf(kathara_conf(name, 1)).name == name


@pytest.mark.parametrize("name", [None, "", "-lan", ".lan", "lan a", "lan/a", "lan:a", 5, ["a"], True])
def test_bad_names(name):
    conf = kathara_conf("x", 1)
    conf["name"] = name
    assert invalid(conf).msg.startswith(f"name {name!r} is not a valid network name")


def test_missing_name():
    conf = kathara_conf("x", 1)
    del conf["name"]
    assert "name None" in invalid(conf).msg


@pytest.mark.parametrize("kind", ["bridge", "Megalos", "", None, 1])
def test_other_types_are_refused(kind):
    assert "is not megalos" in invalid(kathara_conf("lan", 1, type=kind)).msg


def test_missing_type_is_megalos():
    conf = kathara_conf("lan", 1)
    del conf["type"]
    assert parse_netconf(conf).vni == 1


@pytest.mark.parametrize("vni", [1, 2, 4095, 65535, 65536, 14282923, MAX_VNI])
def test_good_vnis(vni):
    assert parse_netconf(kathara_conf("lan", vni)).vni == vni


@pytest.mark.parametrize("value, msg", [
    (0, "vxlanId 0 is out of range (1..16777215)"),
    (-1, "vxlanId -1 is out of range (1..16777215)"),
    (2**24, "vxlanId 16777216 is out of range (1..16777215)"),
    (2**64, f"vxlanId {2**64} is out of range (1..16777215)"),
    ("100", "vxlanId must be an integer, not '100'"),
    (True, "vxlanId must be an integer, not True"),
    (False, "vxlanId must be an integer, not False"),
    (1.0, "vxlanId must be an integer, not 1.0"),
    ([1], "vxlanId must be an integer, not [1]"),
    ({}, "vxlanId must be an integer, not {}"),
    (None, "vxlanId is required"),
])
def test_bad_vnis(value, msg):
    assert invalid(kathara_conf("lan", value)).msg == msg


def test_missing_vni():
    conf = kathara_conf("lan", 1)
    del conf["vxlanId"]
    assert invalid(conf).msg == "vxlanId is required"


@pytest.mark.parametrize("master", ["eth0", "ens1f0np0", "bond0.100", "x" * 15, "", None])
def test_good_masters(master):
    conf = kathara_conf("lan", 1, **({} if master is None else {"master": master}))
    assert parse_netconf(conf).master == (master or "")


@pytest.mark.parametrize("master, msg", [
    ("x" * 16, f"master {'x' * 16!r} is not a valid interface name: 16 bytes long: the kernel allows 15"),
    ("é" * 8, f"master {'é' * 8!r} is not a valid interface name: 16 bytes long: the kernel allows 15"),
    ("eth/0", "master 'eth/0' is not a valid interface name: '/', ':', '%' and whitespace are not "
              "allowed in a device name"),
    ("eth:0", "master 'eth:0' is not a valid interface name: '/', ':', '%' and whitespace are not "
              "allowed in a device name"),
    ("eth 0", "master 'eth 0' is not a valid interface name: '/', ':', '%' and whitespace are not "
              "allowed in a device name"),
    ("eth%d", "master 'eth%d' is not a valid interface name: '/', ':', '%' and whitespace are not "
              "allowed in a device name"),
    (7, "master must be a string, not 7"),
    (["eth0"], "master must be a string, not ['eth0']"),
])
def test_bad_masters(master, msg):
    assert invalid(kathara_conf("lan", 1, master=master)).msg == msg


@pytest.mark.parametrize("mtu, expected", [(68, 68), (1400, 1400), (9000, 9000), (65535, 65535),
                                           (0, 0), (None, 0)])
def test_good_mtus(mtu, expected):
    assert parse_netconf(kathara_conf("lan", 1, mtu=mtu)).mtu == expected


@pytest.mark.parametrize("mtu, msg", [
    (67, "mtu 67 is out of range (68..65535)"),
    (-1, "mtu -1 is out of range (68..65535)"),
    (65536, "mtu 65536 is out of range (68..65535)"),
    ("1400", "mtu must be an integer, not '1400'"),
    (1400.5, "mtu must be an integer, not 1400.5"),
    (True, "mtu must be an integer, not True"),
    ([1400], "mtu must be an integer, not [1400]"),
])
def test_bad_mtus(mtu, msg):
    assert invalid(kathara_conf("lan", 1, mtu=mtu)).msg == msg


@pytest.mark.parametrize("port", [1, 4789, 8472, 65535])
def test_good_ports(port):
    assert parse_netconf(kathara_conf("lan", 1, vxlanPort=port)).vxlan_port == port


@pytest.mark.parametrize("port, msg", [
    (0, "vxlanPort 0 is out of range (1..65535)"),
    (65536, "vxlanPort 65536 is out of range (1..65535)"),
    (-4789, "vxlanPort -4789 is out of range (1..65535)"),
    ("4789", "vxlanPort must be an integer, not '4789'"),
    (True, "vxlanPort must be an integer, not True"),
    (4789.0, "vxlanPort must be an integer, not 4789.0"),
])
def test_bad_ports(port, msg):
    assert invalid(kathara_conf("lan", 1, vxlanPort=port)).msg == msg


@pytest.mark.parametrize("path", ["/run/megalos/agent.sock", "/run/megalos/other-agent_2.sock",
                                  "/run/megalos/..x", "/run/megalos/" + "y" * 90])
def test_agent_socket(path):
    assert parse_netconf(kathara_conf("lan", 1, agentSocket=path)).agent_socket == path
    assert parse_netconf(kathara_conf("lan", 1, agentSocket="")).agent_socket == DEFAULT_AGENT_SOCKET


@pytest.mark.parametrize("path", [
    "/tmp/evil.sock",                      # any socket a NAD's author could listen on
    "/run/x.sock", "run/megalos/x.sock", "/run/megalos", "/run/megalos/", "/run/megalos/.",
    "/run/megalos/..", "/run/megalos/../../tmp/evil.sock", "/run/megalos//agent.sock",
    "/run/megalos/sub/agent.sock", "/run/megalos/a b", "/run/megalos/agent.sock\u0000",
    "/run/megalos/ag\u00e9nt", "/run/megalos/\ud800", "//run/megalos/agent.sock",
    "/run/megalos/agent.sock/", "/var/run/megalos/agent.sock",
])
def test_agent_socket_outside_run_megalos_is_refused(path):
    msg = invalid(kathara_conf("lan", 1, agentSocket=path)).msg
    assert msg == ("agentSocket must be a socket in /run/megalos/ (/run/megalos/NAME, NAME of letters, "
                   "digits, '.', '_', '-'): the plugin talks only to the megalos agent, "
                   f"not {path!r}")


def test_agent_socket_must_be_a_string():
    assert invalid(kathara_conf("lan", 1, agentSocket=5)).msg == "agentSocket must be a string, not 5"


def test_suffix_must_be_a_string():
    assert parse_netconf(kathara_conf("lan", 1, suffix="HwFVUo")).suffix == "HwFVUo"
    assert invalid(kathara_conf("lan", 1, suffix=123456)).msg == "suffix must be a string, not 123456"


# -- runtimeConfig.mac (the `mac` capability) -------------------------------------------------
@pytest.mark.parametrize("mac, expected", [
    ("02:AA:00:00:00:06", "02:aa:00:00:00:06"), ("02-aa-00-00-00-07", "02:aa:00:00:00:07"),
    ("", ""), (None, ""),
])
def test_runtime_config_mac(mac, expected):
    conf = kathara_conf("lan", 1, runtimeConfig={"mac": mac, "ips": ["10.0.0.1/24"]})
    assert parse_netconf(conf).runtime_mac == expected


@pytest.mark.parametrize("mac, fragment", [
    ("02:aa:00:00:00", "is not a MAC address"),
    ("ff:ff:ff:ff:ff:ff", "multicast/broadcast"),
    ("01:00:5e:00:00:01", "multicast/broadcast"),
    ("00:00:00:00:00:00", "not a usable MAC address"),
    (123, "must be a string"),
    (["02:aa:00:00:00:01"], "must be a string"),
])
def test_bad_runtime_config_mac(mac, fragment):
    msg = invalid(kathara_conf("lan", 1, runtimeConfig={"mac": mac})).msg
    assert msg.startswith("runtimeConfig.mac: ") and fragment in msg


@pytest.mark.parametrize("runtime", [{}, None, [], {"portMappings": []}])
def test_empty_runtime_config(runtime):
    assert parse_netconf(kathara_conf("lan", 1, runtimeConfig=runtime)).runtime_mac == ""


@pytest.mark.parametrize("runtime", ["02:aa:00:00:00:01", 1, ["mac"], True])
def test_runtime_config_must_be_an_object(runtime):
    assert invalid(kathara_conf("lan", 1, runtimeConfig=runtime)).msg == "runtimeConfig must be an object"


# -- prevResult, GC's valid attachments -------------------------------------------------------
def test_prev_result():
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "net0", "mac": "02:aa:00:00:00:01"}]}
    assert parse_netconf(kathara_conf("lan", 1, "1.0.0", prevResult=prev)).prev_result == prev


@pytest.mark.parametrize("prev", [[], "x", 1])
def test_prev_result_must_be_an_object(prev):
    assert invalid(kathara_conf("lan", 1, prevResult=prev)).msg == "prevResult must be an object"


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_valid_attachments(key):
    """Either key: the spec's, and the one it named until 2024 (libcni sends both)."""
    keep = [{"containerID": "c1", "ifname": "net0"}, {"containerID": "c2", "ifname": "net1", "x": 1}]
    conf = parse_netconf(kathara_conf("lan", 1, "1.1.0", **{key: keep}))
    assert conf.valid_attachments == (("c1", "net0"), ("c2", "net1"))
    assert parse_netconf(kathara_conf("lan", 1, "1.1.0", **{key: []})).valid_attachments == ()


def test_valid_attachments_under_both_keys_are_all_kept():
    conf = parse_netconf(kathara_conf("lan", 1, "1.1.0", **{
        "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "net0"}],
        "cni.dev/attachments": [{"containerID": "c1", "ifname": "net0"},
                                {"containerID": "c2", "ifname": "net0"}]}))
    assert conf.valid_attachments == (("c1", "net0"), ("c2", "net0"))


def test_no_attachment_list_is_none_not_empty():
    """GC tells 'keep nothing' ([]) from 'no list' (refused: it would remove everything)."""
    assert parse_netconf(kathara_conf("lan", 1, "1.1.0")).valid_attachments is None


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
@pytest.mark.parametrize("attachments, fragment", [
    ({"containerID": "c1", "ifname": "net0"}, "must be a list"),
    ("c1/net0", "must be a list"),
    ([{"containerID": "c1"}], "needs containerID and ifname"),
    ([{"ifname": "net0"}], "needs containerID and ifname"),
    ([{"containerID": 1, "ifname": "net0"}], "needs containerID and ifname"),
    ([["c1", "net0"]], "needs containerID and ifname"),
    ([None], "needs containerID and ifname"),
])
def test_bad_valid_attachments(key, attachments, fragment):
    msg = invalid(kathara_conf("lan", 1, "1.1.0", **{key: attachments})).msg
    assert msg.startswith(key) and fragment in msg


# -- what the spec asks plugins to ignore -----------------------------------------------------
def test_unknown_keys_are_ignored():
    plain = parse_netconf(kathara_conf("lan", 42))
    noisy = parse_netconf(kathara_conf(
        "lan", 42, ipam={"type": "host-local"}, dns={"nameservers": ["10.0.0.1"]},
        capabilities={"mac": True}, args={"cni": {"x": 1}}, disableCheck=True, disableGC=True,
        foo=None, bar=[1, 2, {"x": "y"}], **{"k8s.v1.cni.cncf.io/x": "y", "": 0}))
    assert noisy == plain


def test_error_names_the_field_first():
    """The runtime shows `msg` to users: it must start with what is wrong."""
    for extra, field in [({"vxlanId": "x"}, "vxlanId"), ({"mtu": 1}, "mtu"), ({"vxlanPort": 0}, "vxlanPort"),
                         ({"master": 1}, "master"), ({"runtimeConfig": 1}, "runtimeConfig")]:
        conf = {**kathara_conf("lan", 1), **extra}
        assert invalid(conf).msg.startswith(field)
