"""Random network configs and CNI_ARGS through a live agent, the way the shim sends them.

Whatever comes in, what goes out is a result or the spec's error JSON (never a traceback, never
an "internal error"), and a DEL of whatever was added leaves the node as it found it.
"""
from __future__ import annotations

import itertools
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni import shim
from tests.conftest import ALL_VERSIONS

pytestmark = pytest.mark.root
# A soak: MEGALOS_PROPERTY_EXAMPLES=2000 explores new random cases; the default run is repeatable.
EXAMPLES = int(os.environ.get("MEGALOS_PROPERTY_EXAMPLES", "0"))

ABSENT = object()
ERROR_KEYS = {"cniVersion", "code", "msg", "details"}
RESULT_KEYS = {"cniVersion", "interfaces", "ips", "dns"}
MEGALOS = ("mgp", "mgvx", "mgbr")
KNOWN_KEYS = {"cniVersion", "cniVersions", "name", "type", "suffix", "vxlanId", "master", "mtu",
              "vxlanPort", "agentSocket", "runtimeConfig", "prevResult", "cni.dev/valid-attachments"}

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
           | st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
macs = st.builds(lambda b: ":".join(f"{x:02x}" for x in b), st.binary(min_size=6, max_size=6))
mac_texts = macs | st.sampled_from(["02:aa:00:00:00:01", "02-AA-00-00-00-02", "ff:ff:ff:ff:ff:ff",
                                    "00:00:00:00:00:00", "02:aa:00:00:00"]) | st.text(max_size=20)
env_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)


def key(good, bad=st.nothing(), absent: int = 1):
    """A known key: left out, a plausible value (most often), a wrong one, or any JSON value."""
    return st.one_of(*[st.just(ABSENT)] * absent, good, good, good, bad, json_values)


GOOD = {  # every key with a value parse_netconf accepts
    "cniVersion": st.sampled_from(ALL_VERSIONS),
    "name": st.sampled_from(["lan_a", "a", "Lan-B.1"]) | st.from_regex(r"\A[a-z0-9][a-z0-9_.\-]{0,20}\Z"),
    "type": st.just("megalos"),
    "suffix": st.text(max_size=8),
    "vxlanId": st.sampled_from([1, 4242, 16777215]) | st.integers(1, 2**24 - 1),
    "master": st.just("eth0"),
    "mtu": st.sampled_from([0, 68, 1400, 1450]) | st.integers(68, 1450),
    "vxlanPort": st.sampled_from([4789, 8472]) | st.integers(1, 65535),
    "runtimeConfig": st.fixed_dictionaries(
        {"mac": st.sampled_from(["02:aa:00:00:00:01", "02-AA-00-00-00-02"])}),
    "cni.dev/valid-attachments": st.lists(
        st.fixed_dictionaries({"containerID": env_text, "ifname": env_text}), max_size=2),
}
BAD = {
    "cniVersion": st.sampled_from(["0.2.0", "9.9.9", "", "1.1"]),
    "name": st.sampled_from(["-x", "", "a b", "a/b"]) | st.text(max_size=20),
    "type": st.text(max_size=8),
    "vxlanId": st.sampled_from([0, -1, 2**24, "42", True]) | st.integers(-2**70, 2**70),
    "master": st.sampled_from(["lo", "nosuchdev0", "eth/0", "x" * 16, "mgbr1"]) | st.text(max_size=16),
    "mtu": st.sampled_from([1, 67, 1451, 9000, 65536, "1400", True]),
    "vxlanPort": st.sampled_from([0, -1, 65536, "4789", False]),
    "runtimeConfig": st.fixed_dictionaries({"mac": mac_texts}) | st.lists(json_values, max_size=2),
    "cni.dev/valid-attachments": st.lists(json_values, min_size=1, max_size=2),
}
valid_configs = st.fixed_dictionaries(
    {k: GOOD[k] for k in ("cniVersion", "name", "vxlanId")},
    optional={k: v for k, v in GOOD.items() if k not in ("cniVersion", "name", "vxlanId")})
random_configs = st.fixed_dictionaries({
    "cniVersion": key(GOOD["cniVersion"], BAD["cniVersion"]),
    "cniVersions": st.one_of(*[st.just(ABSENT)] * 4, st.lists(
        st.sampled_from(ALL_VERSIONS + ("0.1.0", "2.0.0")) | json_values, max_size=4)),
    "name": key(GOOD["name"], BAD["name"]),
    "type": key(GOOD["type"], BAD["type"], absent=2),
    "suffix": key(GOOD["suffix"]),
    "vxlanId": key(GOOD["vxlanId"], BAD["vxlanId"]),
    "master": key(GOOD["master"], BAD["master"], absent=3),
    "mtu": key(GOOD["mtu"], BAD["mtu"], absent=2),
    "vxlanPort": key(GOOD["vxlanPort"], BAD["vxlanPort"], absent=2),
    "agentSocket": st.one_of(*[st.just(ABSENT)] * 6, st.sampled_from(["relative.sock", "", 5])),
    "runtimeConfig": key(GOOD["runtimeConfig"], BAD["runtimeConfig"], absent=2),
    "prevResult": st.one_of(*[st.just(ABSENT)] * 3, json_values, st.fixed_dictionaries({
        "cniVersion": st.sampled_from(ALL_VERSIONS), "interfaces": json_values | st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["net0", "x"]), "mac": mac_texts,
                                   "sandbox": st.sampled_from(["", "/var/run/netns/x"])}),
            max_size=2)})),
    "cni.dev/valid-attachments": key(GOOD["cni.dev/valid-attachments"], BAD["cni.dev/valid-attachments"],
                                     absent=3),
}).map(lambda conf: {k: v for k, v in conf.items() if v is not ABSENT})
configs = valid_configs | random_configs
extra_keys = st.dictionaries(st.text(max_size=10).filter(lambda k: k not in KNOWN_KEYS),
                             json_values, max_size=3)
cni_args = st.lists(st.one_of(
    env_text,
    st.builds("MAC={}".format, mac_texts),
    st.builds("{}={}".format, st.sampled_from(["IgnoreUnknown", "K8S_POD_NAME", "K8S_POD_NAMESPACE", ""])
              | env_text, env_text)), max_size=5).map(";".join)
verbs = st.sampled_from(["ADD"] * 6 + ["CHECK", "DEL", "GC", "STATUS", "VERSION"])
ifnames = st.sampled_from(["net0", "net1", "eth1", "n" * 15] * 3 + ["n" * 16, "net/0", "", ".."])


def assert_valid_output(verb: str, code: int, out: str) -> dict | None:
    """A result, an empty success, or the spec's error JSON; nothing else."""
    assert "Traceback" not in out, out
    if code == 0 and out == "":
        assert verb in ("DEL", "CHECK", "STATUS", "GC"), (verb, out)
        return None
    body = json.loads(out)
    assert isinstance(body, dict), out
    if code != 0:
        assert code == 1 and set(body) <= ERROR_KEYS and {"cniVersion", "code", "msg"} <= set(body), out
        assert isinstance(body["code"], int) and isinstance(body["cniVersion"], str), out
        assert isinstance(body["msg"], str) and body["msg"], out
        assert not body["msg"].startswith("internal error"), out  # an exception nobody expected
        return body
    if verb == "VERSION":
        assert body["supportedVersions"] == list(ALL_VERSIONS), out
        return body
    assert verb == "ADD" and set(body) <= RESULT_KEYS and body["cniVersion"] in ALL_VERSIONS, out
    host, pod = body["interfaces"]
    assert host["name"].startswith("mgp") and "sandbox" not in host and pod["sandbox"], out
    return body


def pod_links(pod) -> set[str]:
    return {link["ifname"] for link in json.loads(pod.run("ip", "-j", "link", "show").stdout)}


def test_random_configs_and_args_give_json_and_leave_nothing(node):
    pod = node.add_pod("p")
    start_links = node.link_names()
    assert not {n for n in start_links if n.startswith(MEGALOS)}
    serial = itertools.count()
    seen = {"ADD ok": 0, "errors": set()}

    @settings(max_examples=EXAMPLES or 60, deadline=None, derandomize=not EXAMPLES, database=None,
              suppress_health_check=list(HealthCheck))
    @given(conf=configs, extra=extra_keys, args=cni_args, verb=verbs, ifname=ifnames)
    def one_request(conf, extra, args, verb, ifname):
        config = {**extra, **conf}
        stdin = json.dumps(config)
        env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": f"c-prop-{next(serial)}",
               "CNI_NETNS": pod.netns_path, "CNI_IFNAME": ifname, "CNI_PATH": "/opt/cni/bin",
               "CNI_ARGS": args, shim.SOCKET_ENV: node.socket}
        code, out = shim.forward(env, stdin)
        body = assert_valid_output(verb, code, out)
        if code:
            seen["errors"].add(body["code"])
        if verb == "ADD" and code == 0:
            seen["ADD ok"] += 1
            assert ifname in pod_links(pod)
            check_version = body["cniVersion"]
            if check_version >= "0.4.0":
                check_code, check_out = shim.forward({**env, "CNI_COMMAND": "CHECK"}, stdin)
                assert_valid_output("CHECK", check_code, check_out)
            del_code, del_out = shim.forward({**env, "CNI_COMMAND": "DEL"}, stdin)
            assert (del_code, del_out) == (0, ""), del_out
        assert node.link_names() == start_links
        assert pod_links(pod) == {"lo"}

    one_request()
    assert "Traceback" not in node.log_path.read_text()
    assert seen["ADD ok"] >= 3, seen  # the generator must reach the datapath, not only validation
    assert {4, 7} <= seen["errors"], seen
