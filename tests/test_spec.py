"""cni/spec.py with plain values: environment, CNI_ARGS, versions, verbs, result shapes, errors."""
from __future__ import annotations

import json

import pytest

from base.tenancy import Tenant
from cni import shim, spec
from cni.spec import CniError, Interface
from tests.conftest import ALL_VERSIONS

NETNS = "/var/run/netns/pod1"


def env(command="ADD", **overrides) -> dict:
    """A complete, valid environment for `command`; an override of None removes the variable."""
    base = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c0ffee-1", "CNI_NETNS": NETNS,
            "CNI_IFNAME": "net0", "CNI_PATH": "/opt/cni/bin",
            "CNI_ARGS": "IgnoreUnknown=true;K8S_POD_NAME=pc1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def error_of(call, *args) -> CniError:
    with pytest.raises(CniError) as info:
        call(*args)
    return info.value


# -- parse_environment ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_attachment_verbs_read_every_variable(command):
    inv = spec.parse_environment(env(command))
    assert inv == spec.Invocation(command=command, container_id="c0ffee-1", netns=NETNS,
                                  ifname="net0", path="/opt/cni/bin",
                                  args={"IgnoreUnknown": "true", "K8S_POD_NAME": "pc1"})


@pytest.mark.parametrize("command", ["VERSION", "STATUS", "GC"])
def test_node_wide_verbs_need_only_the_command(command):
    assert spec.parse_environment({"CNI_COMMAND": command}) == spec.Invocation(command=command)
    inv = spec.parse_environment(env(command, CNI_IFNAME="much/too/long/name", CNI_NETNS="relative"))
    assert inv == spec.Invocation(command=command, path="/opt/cni/bin")


def test_del_does_not_need_a_netns():
    """The runtime may DEL after the netns is gone, and then sends no CNI_NETNS."""
    assert spec.parse_environment(env("DEL", CNI_NETNS=None)).netns == ""
    assert spec.parse_environment(env("DEL", CNI_NETNS="")).netns == ""


@pytest.mark.parametrize("variables, fragment", [
    ({"CNI_COMMAND": None}, "CNI_COMMAND is not set"),
    ({"CNI_COMMAND": ""}, "CNI_COMMAND is not set"),
    ({"CNI_COMMAND": "add"}, "unknown CNI_COMMAND 'add'"),
    ({"CNI_COMMAND": "UPDATE"}, "unknown CNI_COMMAND 'UPDATE'"),
    ({"CNI_CONTAINERID": None}, "CNI_CONTAINERID is required"),
    ({"CNI_CONTAINERID": ""}, "CNI_CONTAINERID is required"),
    ({"CNI_CONTAINERID": "-leading-dash"}, "CNI_CONTAINERID '-leading-dash' is not valid"),
    ({"CNI_CONTAINERID": "a/b"}, "CNI_CONTAINERID 'a/b' is not valid"),
    ({"CNI_CONTAINERID": "a b"}, "is not valid"),
    ({"CNI_NETNS": None}, "CNI_NETNS is required for ADD"),
    ({"CNI_NETNS": "var/run/netns/x"}, "must be an absolute path"),
    ({"CNI_IFNAME": None}, "CNI_IFNAME is required"),
    ({"CNI_IFNAME": "x" * 16}, "16 bytes long: the kernel allows 15"),
    ({"CNI_IFNAME": "net/0"}, "not a valid interface name"),
    ({"CNI_IFNAME": "net:0"}, "not a valid interface name"),
    ({"CNI_IFNAME": "net 0"}, "not a valid interface name"),
    ({"CNI_IFNAME": "net\t0"}, "not a valid interface name"),
    ({"CNI_IFNAME": "."}, "not a valid interface name"),
    ({"CNI_IFNAME": ".."}, "not a valid interface name"),
])
def test_each_bad_variable_is_code_4_naming_it(variables, fragment):
    error = error_of(spec.parse_environment, env("ADD", **variables))
    assert error.code == spec.ERR_INVALID_ENV == 4
    assert fragment in error.msg


@pytest.mark.parametrize("command", ["DEL", "CHECK"])
@pytest.mark.parametrize("variables", [
    {"CNI_CONTAINERID": None}, {"CNI_IFNAME": None}, {"CNI_IFNAME": "y" * 16},
    {"CNI_NETNS": "relative/path"}, {"CNI_CONTAINERID": "_x"},
])
def test_del_and_check_validate_like_add(command, variables):
    assert error_of(spec.parse_environment, env(command, **variables)).code == 4


def test_check_needs_a_netns():
    error = error_of(spec.parse_environment, env("CHECK", CNI_NETNS=None))
    assert error.code == 4 and "CNI_NETNS is required for CHECK" in error.msg


def test_unknown_command_lists_the_verbs():
    error = error_of(spec.parse_environment, env("FROB"))
    assert all(verb in error.details for verb in spec.VERBS)


def test_ifname_of_exactly_15_characters_is_fine():
    assert spec.parse_environment(env(CNI_IFNAME="x" * 15)).ifname == "x" * 15


@pytest.mark.parametrize("ifname, fragment", [
    ("é" * 8, "16 bytes long: the kernel allows 15"),      # 8 characters, 16 bytes
    ("net0" + "€" * 4, "16 bytes long"),
    ("net%d", "'%'"),                                      # a template: the kernel picks the name
    ("%", "'%'"),
    ("netà", "whitespace"),                                # UTF-8 C3 A0: the kernel's isspace(0xA0)
    ("net\x0b0", "whitespace"),
    ("net\r", "whitespace"),
    ("net\udcff", "not UTF-8 text"),                       # a stray byte from the environment
])
def test_ifname_is_checked_in_bytes_as_the_kernel_does(ifname, fragment):
    error = error_of(spec.parse_environment, env(CNI_IFNAME=ifname))
    assert error.code == 4 and fragment in error.msg, error.msg


@pytest.mark.parametrize("ifname", ["é" * 7 + "x", "eth0", "net-1.2_x", "ünï"])
def test_ifname_of_up_to_15_bytes_is_fine(ifname):
    assert spec.parse_environment(env(CNI_IFNAME=ifname)).ifname == ifname


def test_other_variables_are_ignored():
    assert spec.parse_environment({**env(), "PATH": "/bin", "HOME": "/root"}) == spec.parse_environment(env())


def test_container_id_with_a_trailing_newline_is_rejected():
    assert error_of(spec.parse_environment, env(CNI_CONTAINERID="c1\n")).code == 4


# -- parse_cni_args ---------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("", {}),
    (None, {}),
    (";", {}),
    (";;;", {}),
    ("IgnoreUnknown=true", {"IgnoreUnknown": "true"}),
    ("IgnoreUnknown=true;K8S_POD_NAMESPACE=lab;K8S_POD_NAME=pc1;"
     "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;MAC=02:aa:00:00:00:01",
     {"IgnoreUnknown": "true", "K8S_POD_NAMESPACE": "lab", "K8S_POD_NAME": "pc1",
      "K8S_POD_INFRA_CONTAINER_ID": "abc", "K8S_POD_UID": "u-1", "MAC": "02:aa:00:00:00:01"}),
    ("novalue", {}),
    ("A=1;garbage;B=2", {"A": "1", "B": "2"}),
    ("A=1;;B=2;", {"A": "1", "B": "2"}),
    ("=orphan", {}),
    (" =orphan", {}),
    ("MAC=", {"MAC": ""}),
    ("A=b=c", {"A": "b=c"}),
    (" A = 1 ; B=2 ", {"A": "1", "B": "2"}),
    ("A=1;A=2", {"A": "2"}),
])
def test_cni_args(raw, expected):
    assert spec.parse_cni_args(raw) == expected


# -- versions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_each_supported_version_is_taken_as_is(version):
    assert spec.negotiate_version({"cniVersion": version}) == version


def test_supported_versions_are_the_spec_releases_in_order():
    assert spec.SUPPORTED_VERSIONS == ALL_VERSIONS
    assert spec.LATEST_VERSION == "1.1.0"
    assert sorted(ALL_VERSIONS, key=spec.version_tuple) == list(ALL_VERSIONS)


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "0.3", "1.2.0", "2.0.0", "", "latest", "1.1.0 "])
def test_unsupported_version_is_code_1_listing_the_supported_ones(version):
    error = error_of(spec.negotiate_version, {"cniVersion": version})
    assert error.code == spec.ERR_INCOMPATIBLE_VERSION == 1
    assert error.msg == f"cniVersion {version} is not supported"
    assert all(v in error.details for v in ALL_VERSIONS)


def test_missing_version_is_an_invalid_config():
    error = error_of(spec.negotiate_version, {"name": "lan"})
    assert error.code == 7 and "cniVersion is missing" in error.msg


@pytest.mark.parametrize("value", [1, 1.0, True, ["1.0.0"], {"v": "1.0.0"}])
def test_non_string_version_is_an_invalid_config(value):
    error = error_of(spec.negotiate_version, {"cniVersion": value})
    assert error.code == 7 and "must be a string" in error.msg


@pytest.mark.parametrize("versions, chosen", [
    (["0.3.0"], "0.3.0"),
    (["0.3.0", "1.0.0", "0.4.0"], "1.0.0"),
    (["1.1.0", "0.3.1"], "1.1.0"),
    (["9.9.9", "0.4.0", "0.2.0"], "0.4.0"),
    (["0.3.1", 7, None, {"x": 1}, "1.0.0"], "1.0.0"),
])
def test_cni_versions_list_picks_the_highest_supported(versions, chosen):
    assert spec.negotiate_version({"cniVersions": versions}) == chosen


@pytest.mark.parametrize("versions", [[], ["0.2.0"], ["2.0.0", "0.1.0"], [1, 2]])
def test_cni_versions_list_without_a_supported_one_is_code_1(versions):
    error = error_of(spec.negotiate_version, {"cniVersions": versions})
    assert error.code == 1 and "cniVersions" in error.msg


def test_cni_version_wins_over_cni_versions():
    assert spec.negotiate_version({"cniVersion": "0.4.0", "cniVersions": ["1.1.0"]}) == "0.4.0"


def test_cni_versions_that_is_not_a_list_is_ignored():
    assert error_of(spec.negotiate_version, {"cniVersions": "1.1.0"}).code == 7


@pytest.mark.parametrize("text, expected", [("0.3.0", (0, 3, 0)), ("1.1.0", (1, 1, 0)), ("10", (10,))])
def test_version_tuple(text, expected):
    assert spec.version_tuple(text) == expected


@pytest.mark.parametrize("text", ["", "1..0", "a.b.c", "1.0.0-rc1", None, 1])
def test_malformed_version_tuple_is_code_1(text):
    assert error_of(spec.version_tuple, text).code == 1


# -- verb_allowed -----------------------------------------------------------------------------
FIRST_VERSION = {"ADD": "0.3.0", "DEL": "0.3.0", "VERSION": "0.3.0", "CHECK": "0.4.0",
                 "STATUS": "1.1.0", "GC": "1.1.0"}


@pytest.mark.parametrize("verb", spec.VERBS)
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_verb_allowed(verb, version):
    allowed = spec.version_tuple(version) >= spec.version_tuple(FIRST_VERSION[verb])
    if allowed:
        spec.verb_allowed(verb, version)
        return
    error = error_of(spec.verb_allowed, verb, version)
    assert error.code == 1
    assert verb in error.msg and version in error.msg and FIRST_VERSION[verb] in error.msg


# -- shape_result -----------------------------------------------------------------------------
HOST = Interface(name="mgp0123456789ab", mac="02:00:00:00:00:01", mtu=1450)
POD = Interface(name="net0", mac="02:aa:00:00:00:01", sandbox=NETNS, mtu=1450)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_shape_result_for_every_version(version):
    result = spec.shape_result(version, [HOST, POD])
    expected = {
        "0.3.0": {"ips": [], "dns": {}}, "0.3.1": {"ips": [], "dns": {}},
        "0.4.0": {"ips": [], "dns": {}}, "1.0.0": {}, "1.1.0": {},
    }[version]
    mtu = {"mtu": 1450} if version == "1.1.0" else {}
    assert result == {
        "cniVersion": version,
        "interfaces": [{"name": HOST.name, "mac": HOST.mac, **mtu},
                       {"name": "net0", "mac": POD.mac, "sandbox": NETNS, **mtu}],
        **expected,
    }
    assert json.loads(json.dumps(result)) == result


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_shape_result_leaves_out_empty_sandbox_and_mtu(version):
    result = spec.shape_result(version, [Interface(name="a", mac="02:00:00:00:00:02")])
    assert result["interfaces"] == [{"name": "a", "mac": "02:00:00:00:00:02"}]


def test_shape_result_keeps_the_interface_order():
    names = [itf["name"] for itf in spec.shape_result("1.0.0", [POD, HOST])["interfaces"]]
    assert names == ["net0", HOST.name]


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_version_result(version):
    assert spec.version_result(version) == {"cniVersion": version, "supportedVersions": list(ALL_VERSIONS)}


def test_version_result_defaults_to_the_latest():
    assert spec.version_result()["cniVersion"] == "1.1.0"


# -- decode_config ----------------------------------------------------------------------------
@pytest.mark.parametrize("stdin", ["", "   ", "{", "{'a': 1}", "nope", "{\"a\": }", None])
def test_config_that_is_not_json_is_code_6(stdin):
    error = error_of(spec.decode_config, stdin)
    assert error.code == spec.ERR_DECODE == 6 and "not valid JSON" in error.msg


@pytest.mark.parametrize("stdin", ["[]", "[{\"cniVersion\": \"1.0.0\"}]", "1", "\"x\"", "null", "true"])
def test_config_that_is_not_an_object_is_code_6(stdin):
    error = error_of(spec.decode_config, stdin)
    assert error.code == 6 and "JSON object" in error.msg


def test_decode_config():
    conf = spec.decode_config('{"cniVersion": "1.0.0", "vxlanId": 5}')
    assert conf == {"cniVersion": "1.0.0", "vxlanId": 5}


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize("stdin", [
    nested(100_000),                                                     # json.loads: RecursionError
    '{"a": ' + nested(shim.MAX_DEPTH) + "}",                             # one level too many
    '{"cniVersion": "1.0.0", "prevResult": {"interfaces": ' + nested(70) + "}}",
    '{"cniVersion": "1.0.0", "runtimeConfig": ' + '{"a": ' * 70 + "1" + "}" * 70 + "}",
    '{"cniVersion": "1.0.0", "args": {"cni": ' + nested(70) + "}}",
    '{"a": ' + nested(70),                                               # deep and malformed
])
def test_deeply_nested_config_is_code_6(stdin):
    error = error_of(spec.decode_config, stdin)
    assert (error.code, error.msg) == (6, "the network configuration nests arrays and objects more than 64 deep")


def test_nesting_up_to_the_limit_and_brackets_in_strings_are_fine():
    assert spec.decode_config('{"a": ' + nested(shim.MAX_DEPTH - 1) + "}")["a"]
    text = "[{" * 1000 + '\\"' + "\\\\"
    assert spec.decode_config(json.dumps({"a": text}))["a"] == text


@pytest.mark.parametrize("size", [shim.MAX_STDIN + 1, 4 * shim.MAX_STDIN])
def test_config_larger_than_the_shims_limit_is_code_6(size):
    stdin = '{"padding": "' + "x" * (size - 15) + '"}'
    assert len(stdin) >= size
    error = error_of(spec.decode_config, stdin)
    assert (error.code, error.msg) == (6, "the network configuration is larger than 1048576 bytes")


def test_config_of_exactly_the_limit_is_decoded():
    stdin = '{"padding": "' + "é" * ((shim.MAX_STDIN - 15) // 2) + '"}'
    assert len(stdin.encode()) <= shim.MAX_STDIN
    assert spec.decode_config(stdin)["padding"]


# -- CniError ---------------------------------------------------------------------------------
def test_error_json_without_details():
    error = CniError(7, "vxlanId is required")
    assert error.to_json("0.3.0") == {"cniVersion": "0.3.0", "code": 7, "msg": "vxlanId is required"}
    assert str(error) == "vxlanId is required"


def test_error_json_with_details_and_default_version():
    body = CniError(1, "cniVersion 9 is not supported", "supported: 1.1.0").to_json()
    assert body == {"cniVersion": "1.1.0", "code": 1, "msg": "cniVersion 9 is not supported",
                    "details": "supported: 1.1.0"}
    assert json.loads(json.dumps(body)) == body


def test_error_codes_are_the_spec_ones():
    assert (spec.ERR_INCOMPATIBLE_VERSION, spec.ERR_UNSUPPORTED_FIELD, spec.ERR_UNKNOWN_CONTAINER,
            spec.ERR_INVALID_ENV, spec.ERR_IO, spec.ERR_DECODE, spec.ERR_INVALID_CONFIG,
            spec.ERR_TRY_AGAIN_LATER, spec.ERR_NOT_AVAILABLE) == (1, 2, 3, 4, 5, 6, 7, 11, 50)
    ours = (spec.ERR_DATAPATH, spec.ERR_CHECK_FAILED, spec.ERR_INTERFACE_EXISTS, spec.ERR_VNI_CONFLICT)
    assert all(code >= 100 for code in ours) and len(set(ours)) == len(ours)


# -- who asks: K8S_POD_NAMESPACE and K8S_POD_NAME ----------------------------------------------
def test_the_tenant_comes_from_the_kubernetes_args():
    assert spec.tenant({"K8S_POD_NAMESPACE": "lab", "K8S_POD_NAME": "pc1"}) == Tenant("lab", "pc1")
    assert spec.tenant({}) == Tenant("", "")          # a runtime that sends neither
    assert spec.tenant({"K8S_POD_NAME": "pc1"}) == Tenant("", "pc1")


@pytest.mark.parametrize("args", [{"K8S_POD_NAMESPACE": "Lab"}, {"K8S_POD_NAMESPACE": "a" * 64},
                                  {"K8S_POD_NAME": "pc 1"}, {"K8S_POD_NAME": "pc1;MAC=x"},
                                  {"K8S_POD_NAMESPACE": "lab", "K8S_POD_NAME": "Pc1"}])
def test_a_name_kubernetes_would_not_allow_is_code_4(args):
    with pytest.raises(CniError) as error:
        spec.tenant(args)
    assert error.value.code == spec.ERR_INVALID_ENV and "CNI_ARGS" in error.value.msg
