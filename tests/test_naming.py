"""cni/naming.py with plain values: device names from VNIs and attachments, generated MACs."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from base.primitives import MAX_VNI, host_mac
from base.tenancy import Tenant, VniClaim
from cni import naming

vnis = st.integers(min_value=1, max_value=MAX_VNI)
# Every VNI with 1..8 decimal digits at both ends of its digit count, plus the extremes.
EDGE_VNIS = sorted({1, MAX_VNI} | {10 ** d for d in range(8) if 10 ** d <= MAX_VNI}
                   | {10 ** d - 1 for d in range(1, 8)})
container_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,80}\Z")
ifnames = st.from_regex(r"\A[A-Za-z0-9_\-]{1,15}\Z")


def is_unicast_local(mac: str) -> bool:
    first = int(mac[:2], 16)
    return not first & 1 and bool(first & 2)


# -- VTEP and bridge names --------------------------------------------------------------------
@pytest.mark.parametrize("vni", EDGE_VNIS)
def test_names_fit_the_kernel_limit_at_every_digit_count(vni):
    for name in (naming.vtep_name(vni), naming.bridge_name(vni)):
        assert len(name) <= naming.IFNAMSIZ == 15
        assert name.endswith(str(vni))
    assert naming.vtep_name(vni) != naming.bridge_name(vni)


def test_longest_names_are_those_of_the_largest_vni():
    assert naming.vtep_name(MAX_VNI) == "mgvx16777215"
    assert naming.bridge_name(MAX_VNI) == "mgbr16777215"


@given(vnis)
def test_names_fit_and_round_trip(vni):
    for name in (naming.vtep_name(vni), naming.bridge_name(vni)):
        assert len(name) <= 15
        assert naming.vni_of_device(name) == vni
        assert not naming.is_port_name(name)


@given(vnis, vnis)
def test_distinct_vnis_have_distinct_names(a, b):
    if a != b:
        assert naming.vtep_name(a) != naming.vtep_name(b)
        assert naming.bridge_name(a) != naming.bridge_name(b)


@pytest.mark.parametrize("name", [
    "", "mgvx", "mgbr", "mgvx0", "mgbr0", "mgvx007", "mgvx16777216", "mgbr99999999", "mgvx-1",
    "mgvx+1", "mgvx 1", "mgvx1a", "mgvx0x10", "mgvx1.0", "eth0", "lo", "vxlan100", "MGVX1",
    "kt-lan-abcdef", "mgp0123456789ab",
])
def test_other_device_names_have_no_vni(name):
    assert naming.vni_of_device(name) is None


def test_non_ascii_digits_are_not_a_vni():
    assert naming.vni_of_device("mgvx\u00b2") is None  # superscript two: isdigit(), int() fails


def test_fullwidth_digits_are_not_a_vni():
    assert naming.vni_of_device("mgbr\uff11") is None


# -- pod port names ---------------------------------------------------------------------------
@given(container_ids, ifnames)
def test_port_names_are_15_characters_and_stable(container_id, ifname):
    name = naming.port_name(container_id, ifname)
    assert len(name) == 15 and name.startswith(naming.PORT_PREFIX)
    assert naming.is_port_name(name)
    assert int(name[len(naming.PORT_PREFIX):], 16) >= 0  # hex digits
    assert naming.port_name(container_id, ifname) == name
    assert naming.vni_of_device(name) is None


@given(st.lists(st.tuples(container_ids, ifnames), min_size=2, max_size=50, unique=True))
def test_port_names_are_distinct_per_attachment(attachments):
    names = {naming.port_name(cid, ifname) for cid, ifname in attachments}
    assert len(names) == len(attachments)


def test_port_name_depends_on_both_container_and_ifname():
    base = naming.port_name("c1", "net0")
    assert base == naming.port_name("c1", "net0")
    assert len({base, naming.port_name("c1", "net1"), naming.port_name("c2", "net0"),
                naming.port_name("net0", "c1")}) == 4


def test_port_name_is_pinned():
    """DEL, CHECK and GC after an agent upgrade find ports made before it: the name must not drift."""
    assert naming.port_name("c-p1", "net0") == "mgp" + hashlib.sha256(b"c-p1/net0").hexdigest()[:12]


@pytest.mark.parametrize("name, expected", [
    ("mgp0123456789ab", True), ("mgp0123456789a", False), ("mgp0123456789abc", False),
    ("mgvx16777215", False), ("eth0", False), ("", False),
])
def test_is_port_name(name, expected):
    assert naming.is_port_name(name) is expected


def test_random_macs_are_unicast_locally_administered_and_differ():
    macs = {naming.random_mac() for _ in range(200)}
    assert len(macs) == 200
    for mac in macs:
        assert host_mac(mac) == mac
        assert is_unicast_local(mac)


@given(st.lists(st.one_of(st.text(max_size=20), st.integers()), max_size=4))
def test_derived_macs_are_stable_unicast_and_locally_administered(parts):
    mac = naming.derived_mac(*parts)
    assert mac == naming.derived_mac(*parts)
    assert host_mac(mac) == mac
    assert is_unicast_local(mac)


def test_derived_macs_differ_by_parts():
    macs = {naming.derived_mac("bridge", vni, "192.0.2.1") for vni in range(1, 500)}
    macs |= {naming.derived_mac("vtep", vni, "192.0.2.1") for vni in range(1, 500)}
    macs |= {naming.derived_mac("bridge", 1, "192.0.2.2")}
    assert len(macs) == 999


@pytest.mark.parametrize("network", ["lan_a", "0", "x" * (naming.MAX_ALIAS - len(naming.PORT_MARK))])
def test_port_mark_names_the_network(network):
    assert naming.port_mark(network) == "megalos:port:" + network


@given(st.text(min_size=1, max_size=400))
def test_port_marks_fit_an_alias_and_differ_by_network(network):
    mark = naming.port_mark(network)
    assert len(mark.encode()) <= naming.MAX_ALIAS and mark.startswith(naming.PORT_MARK)
    assert mark != naming.port_mark(network + "x")


def test_a_port_records_its_pod_after_its_network():
    alias = naming.port_mark("lan_a", Tenant("lab", "kathara-pc1-5d8f7b9c4a-x2x7q"))
    assert alias == "megalos:port:lan_a pod=lab/kathara-pc1-5d8f7b9c4a-x2x7q"
    assert naming.split_port_alias(alias) == ("megalos:port:lan_a", "lab/kathara-pc1-5d8f7b9c4a-x2x7q")
    assert naming.split_port_alias("megalos:port:lan_a") == ("megalos:port:lan_a", "")
    assert naming.port_mark("lan_a", Tenant("lab")) == "megalos:port:lan_a"  # no pod named
    # Too long for the name: the pod id; too long even for that: the network's mark alone.
    tenant = Tenant("n" * 63, "p" * 253)
    alias = naming.port_mark("lan_a", tenant)
    assert alias == f"megalos:port:lan_a pod=#{tenant.pod_id}"
    network = "x" * (naming.MAX_ALIAS - len(naming.PORT_MARK) - 5)
    assert naming.port_mark(network, tenant) == naming.port_mark(network)


@given(st.text(min_size=1, max_size=300), st.from_regex(r"[a-z0-9]{1,63}", fullmatch=True),
       st.from_regex(r"[a-z0-9][-a-z0-9.]{0,251}[a-z0-9]", fullmatch=True))
def test_a_port_alias_fits_and_keeps_its_network_mark(network, namespace, pod):
    alias = naming.port_mark(network, Tenant(namespace, pod))
    assert len(alias.encode()) <= naming.MAX_ALIAS
    assert naming.split_port_alias(alias)[0] == naming.port_mark(network)


def test_a_bridge_records_its_vni_s_claim():
    claim = VniClaim(1_700_000_000_000, "lab-a")
    alias = naming.bridge_mark(claim)
    assert alias == "megalos:bridge ns=lab-a since=1700000000000"
    assert naming.bridge_claim(alias) == claim and naming.has_mark(alias, naming.BRIDGE_MARK)
    assert naming.bridge_claim(naming.bridge_mark(VniClaim(5, ""))) == VniClaim(5, "")
    assert naming.bridge_mark(None) == naming.BRIDGE_MARK and naming.bridge_claim(naming.BRIDGE_MARK) is None
    for unreadable in ("megalos:bridge ns=Lab since=1", "megalos:bridge ns=lab", "megalos:bridge x",
                       "megalos:bridge ns=lab since=x"):
        assert naming.bridge_claim(unreadable) is None, unreadable
    assert not naming.has_mark("megalos:bridged", naming.BRIDGE_MARK)


def test_a_long_network_name_is_marked_by_a_digest_no_name_can_spell():
    network = "x" * (naming.MAX_ALIAS - len(naming.PORT_MARK) + 1)
    assert naming.port_mark(network) == "megalos:port:#" + hashlib.sha256(network.encode()).hexdigest()


@pytest.mark.parametrize("name", ["eth0", "net15", "x" * 15, "é" * 7, "a.b-c_d", "ü"])
def test_good_interface_names(name):
    assert naming.ifname_problem(name) == ""


@pytest.mark.parametrize("name", ["", "x" * 16, "é" * 8, ".", "..", "a/b", "a:b", "a b", "a\tb", "a\nb",
                                  "a\vb", "a\fb", "a\rb", "à", "eth%d", "%", "\udcff"])
def test_bad_interface_names(name):
    assert naming.ifname_problem(name)
